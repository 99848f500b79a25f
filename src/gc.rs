//! The channel garbage collector: a dedicated OS thread that scans the
//! channel map's shards, drops the cached state of channels whose source has
//! been gone longer than the grace period, and removes channels that have
//! had no source and no receivers for longer than it.

use std::sync::{Arc, Weak};
use std::thread;
use std::time::Duration;

use crate::channel::clock_ms;
use crate::relay::Relay;

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sweep {
    /// Channels whose cached state expired.
    pub expired: usize,
    /// Channels removed.
    pub removed: usize,
}

/// One pass over every shard.
pub fn sweep(relay: &Relay) -> Sweep {
    let now = clock_ms();
    let grace = relay.config.grace_ms;
    let mut out = Sweep::default();
    for ch in relay.channels.iter() {
        if ch.expire_cache(now, grace) {
            out.expired += 1;
        }
    }
    relay.channels.retain(|_, ch| {
        // `retain` holds the shard's write lock, and attaching takes it too:
        // a member count of zero here cannot change under us.
        let keep = ch.members() > 0 || ch.idle_ms(now) < grace;
        if !keep {
            relay.retired.absorb(&ch.traffic.snapshot());
            out.removed += 1;
        }
        keep
    });
    out
}

/// Starts the GC thread; it stops when the relay is dropped or shuts down.
pub fn spawn(relay: &Arc<Relay>) -> std::io::Result<thread::JoinHandle<()>> {
    let weak: Weak<Relay> = Arc::downgrade(relay);
    let every = Duration::from_millis(relay.config.gc_interval_ms.max(10));
    thread::Builder::new()
        .name("relay-gc".into())
        .spawn(move || loop {
            thread::sleep(every);
            let Some(relay) = weak.upgrade() else { return };
            if relay.is_draining() {
                return;
            }
            let s = sweep(&relay);
            if s.expired + s.removed > 0 {
                tracing::debug!(
                    expired = s.expired,
                    removed = s.removed,
                    channels = relay.channels.len(),
                    "gc sweep"
                );
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use clap::Parser;

    #[test]
    fn removes_only_idle_channels_past_grace() {
        let relay = Relay::new(Config::parse_from(["x", "--grace-ms", "0"]));
        let busy = relay.attach("busy").unwrap();
        let idle = relay.attach("idle").unwrap();
        idle.traffic.frames_in.add(5);
        idle.detach();
        std::thread::sleep(Duration::from_millis(5));
        let s = sweep(&relay);
        assert_eq!(s.removed, 1);
        assert!(relay.channels.contains_key("busy"));
        assert!(!relay.channels.contains_key("idle"));
        assert_eq!(
            relay.summary().traffic.frames_in,
            5,
            "retired traffic is kept"
        );
        busy.detach();
    }

    #[test]
    fn drops_cached_state_once_the_source_is_gone_past_grace() {
        use crate::channel::Peer;
        use crate::conn::WireMessage;
        use crate::egress::{Egress, EgressMode};
        use crate::protocol;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let relay = Relay::new(Config::parse_from(["x", "--grace-ms", "20"]));
            let ch = relay.attach("kept").unwrap();
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let std_stream = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            std_stream.set_nonblocking(true).unwrap();
            let stream = std::sync::Arc::new(tokio::net::TcpStream::from_std(std_stream).unwrap());
            let peer = std::sync::Arc::new(Peer {
                id: 1,
                addr: listener.local_addr().unwrap(),
                egress: Egress::new(stream, 1 << 20, EgressMode::Direct),
            });
            assert!(ch.claim_source(&peer));
            let msg = protocol::pixels_keyframe(0, 0, 1, 1, &[1, 2, 3, 4]);
            let h = protocol::validate_source_message(&msg).unwrap();
            ch.publish(&h, &WireMessage::encode(crate::ws::OP_BINARY, &msg))
                .await
                .unwrap();
            assert!(!ch.catch_up().is_empty());
            // Within grace (source present, then just gone): kept.
            assert_eq!(sweep(&relay).expired, 0);
            ch.release_source(&peer);
            assert_eq!(sweep(&relay).expired, 0);
            std::thread::sleep(Duration::from_millis(40));
            assert_eq!(sweep(&relay).expired, 1);
            assert!(ch.catch_up().is_empty());
            // A member is still attached, so the channel itself stays.
            assert!(relay.channels.contains_key("kept"));
        });
    }

    #[test]
    fn keeps_channels_within_grace() {
        let relay = Relay::new(Config::parse_from(["x", "--grace-ms", "60000"]));
        relay.attach("a").unwrap().detach();
        assert_eq!(sweep(&relay).removed, 0);
        assert_eq!(relay.channels.len(), 1);
    }
}
