//! The channel garbage collector: a dedicated OS thread that scans the
//! channel map's shards, drops the cached state of channels whose source has
//! been gone longer than the grace period, and removes channels that have
//! had no source and no receivers for longer than it.

use std::sync::{Arc, Weak};
use std::thread;
use std::time::Duration;

use crate::relay::resources::clock::now_ms;
use crate::relay::state::Relay;

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sweep {
    /// Channels whose cached state expired.
    pub(crate) expired: usize,
    /// Channels removed.
    pub(crate) removed: usize,
}

/// One pass over every shard at `now` (ms on the relay clock).
pub(crate) fn sweep(relay: &Relay, now: u64) -> Sweep {
    let grace = relay.config.grace_ms;
    let mut out = Sweep::default();
    for ch in relay.channels.iter() {
        if ch.expire_cache(now, grace) {
            out.expired += 1;
        }
    }
    out.removed = relay.retire_where(|ch| ch.members() == 0 && ch.idle_ms(now) >= grace);
    out
}

/// Starts the GC thread; it stops when the relay is dropped or shuts down.
pub(crate) fn spawn(relay: &Arc<Relay>) -> std::io::Result<thread::JoinHandle<()>> {
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
            let s = sweep(&relay, now_ms());
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
    use crate::relay::channel::peer::Peer;
    use crate::relay::config::Config;
    use crate::relay::egress::Egress;
    use bitstream_wire::protocol;
    use bitstream_wire::reader::WireMessage;
    use bitstream_wire::ws;
    use clap::Parser;

    #[test]
    fn removes_only_idle_channels_past_grace() {
        let relay = Relay::new(Config::parse_from(["x", "--grace-ms", "100"])).unwrap();
        let busy = relay
            .attach("busy", std::net::IpAddr::from([127, 0, 0, 1]))
            .unwrap();
        let idle = relay
            .attach("idle", std::net::IpAddr::from([127, 0, 0, 1]))
            .unwrap();
        idle.traffic.frames_in.add(5);
        let left = now_ms();
        idle.detach(left);
        assert_eq!(sweep(&relay, left + 99).removed, 0, "within grace");
        assert_eq!(sweep(&relay, left + 100).removed, 1);
        assert!(relay.channels.contains_key("busy"));
        assert!(!relay.channels.contains_key("idle"));
        assert_eq!(
            relay.summary().traffic.frames_in,
            5,
            "retired traffic is kept"
        );
        busy.detach(left);
    }

    #[test]
    fn drops_cached_state_once_the_source_is_gone_past_grace() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let relay = Relay::new(Config::parse_from(["x", "--grace-ms", "20"])).unwrap();
            let ch = relay
                .attach("kept", std::net::IpAddr::from([127, 0, 0, 1]))
                .unwrap();
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let std_stream = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            std_stream.set_nonblocking(true).unwrap();
            let stream = Arc::new(tokio::net::TcpStream::from_std(std_stream).unwrap());
            let peer = Arc::new(Peer {
                id: 1,
                egress: Egress::new(
                    stream,
                    1 << 20,
                    Default::default(),
                    Arc::new(crate::relay::resources::budget::Budget::new(usize::MAX)),
                ),
                marks: false,
            });
            assert!(ch.claim_source(&peer));
            let msg = protocol::pixels_keyframe(0, 0, 1, 1, &[1, 2, 3, 4]);
            ch.publish(
                &WireMessage::encode(ws::OP_BINARY, &msg),
                &relay.bulk,
                false,
            )
            .await
            .unwrap();
            assert!(ch.cached_bytes() > 0);
            // Source present, then just gone: kept within grace. (Made-up
            // times, well past the clock's start, where 0 means "never".)
            let t = now_ms() + 1_000;
            assert_eq!(sweep(&relay, t + 1000).expired, 0);
            ch.release_source(&peer, t);
            assert_eq!(sweep(&relay, t + 19).expired, 0);
            assert_eq!(sweep(&relay, t + 20).expired, 1);
            assert_eq!(ch.cached_bytes(), 0);
            // A member is still attached, so the channel itself stays.
            assert!(relay.channels.contains_key("kept"));
        });
    }

    #[test]
    fn keeps_channels_within_grace() {
        let relay = Relay::new(Config::parse_from(["x", "--grace-ms", "60000"])).unwrap();
        let t = now_ms();
        relay
            .attach("a", std::net::IpAddr::from([127, 0, 0, 1]))
            .unwrap()
            .detach(t);
        assert_eq!(sweep(&relay, t + 59_999).removed, 0);
        assert_eq!(relay.channels.len(), 1);
    }
}
