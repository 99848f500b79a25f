//! The channel garbage collector: a dedicated OS thread that scans the
//! channel map's shards, drops the cached state of channels whose source has
//! been gone longer than the grace period, and removes channels that have
//! had no source and no receivers for longer than it.
//!
//! The grace period gives way to live channels: when the cached states
//! together hold more than 3/4 of `--max-cache-memory`, the states of
//! channels whose source has left are dropped at once, longest gone first,
//! until they hold 3/4 or less. Otherwise departed sources' last pictures
//! could fill the cache budget for the whole grace period and leave a live
//! channel without a cached picture for its joiners and skipped-forward
//! receivers (after `loadtest hostile`'s cached-state phase, 14 departed
//! sources held 480 MB of the 512 MiB).

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
    /// Channels whose cached state was dropped before its grace ended, to
    /// make room in the cache budget for live channels.
    pub(crate) evicted: usize,
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
    out.evicted = make_room(relay, now);
    out.removed = relay.retire_where(|ch| ch.members() == 0 && ch.idle_ms(now) >= grace);
    out
}

/// Drops the cached state of channels whose source has left, longest gone
/// first, while the cache budget is more than 3/4 used (see the module
/// docs); returns how many it dropped.
fn make_room(relay: &Relay, now: u64) -> usize {
    let cache = &relay.budgets.cache;
    let high = cache.limit() / 4 * 3;
    if cache.used() <= high {
        return 0;
    }
    let mut gone: Vec<_> = relay
        .channels
        .iter()
        .filter(|e| e.value().cached_bytes() > 0)
        .filter_map(|e| e.value().source_left_at().map(|t| (t, e.value().clone())))
        .collect();
    gone.sort_by_key(|(left, _)| *left);
    let mut dropped = 0;
    for (_, ch) in gone {
        if cache.used() <= high {
            break;
        }
        if ch.expire_cache(now, 0) {
            dropped += 1;
        }
    }
    dropped
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
            if s.expired + s.removed + s.evicted > 0 {
                tracing::debug!(
                    expired = s.expired,
                    evicted = s.evicted,
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
    use crate::relay::channel::Channel;
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
            let (ch, peer) = source_with_picture(&relay, "kept", 1, 1).await;
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

    /// A source on channel `name` that has published one `w`×`h` keyframe
    /// (cached), and the peer that is its source.
    async fn source_with_picture(
        relay: &Relay,
        name: &str,
        w: u16,
        h: u16,
    ) -> (Arc<Channel>, Arc<Peer>) {
        let ch = relay
            .attach(name, std::net::IpAddr::from([127, 0, 0, 1]))
            .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let std_stream = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        std_stream.set_nonblocking(true).unwrap();
        let stream = Arc::new(tokio::net::TcpStream::from_std(std_stream).unwrap());
        let peer = Arc::new(Peer {
            id: relay.next_peer_id(),
            egress: Egress::new(
                stream,
                1 << 20,
                Default::default(),
                Arc::new(crate::relay::resources::budget::Budget::new(usize::MAX)),
            ),
            marks: false,
        });
        assert!(ch.claim_source(&peer));
        let pixels = vec![7u8; usize::from(w) * usize::from(h) * 4];
        let msg = protocol::pixels_keyframe(0, 0, w, h, &pixels);
        ch.publish(
            &WireMessage::encode(ws::OP_BINARY, &msg),
            &relay.bulk,
            false,
        )
        .await
        .unwrap();
        assert!(ch.cached_bytes() >= pixels.len(), "{name} cached");
        (ch, peer)
    }

    /// Departed sources' pictures give way to live channels when the cache
    /// budget is more than 3/4 used: the longest gone first, only as many
    /// as needed, never a live channel's; within 3/4 the grace holds.
    #[test]
    fn a_full_cache_budget_drops_departed_sources_pictures_first() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let relay = Relay::new(Config::parse_from([
                "x",
                "--grace-ms",
                "600000",
                "--max-cache-memory",
                "10000",
            ]))
            .unwrap();
            // Three pictures of 2,800 bytes: about 8.5 KB, over 3/4 of 10 KB.
            let (oldest, p1) = source_with_picture(&relay, "oldest", 35, 20).await;
            let (newer, p2) = source_with_picture(&relay, "newer", 35, 20).await;
            let (live, _p3) = source_with_picture(&relay, "live", 35, 20).await;
            let t = now_ms() + 1_000;
            assert_eq!(sweep(&relay, t).evicted, 0, "every source is still there");
            oldest.release_source(&p1, t);
            newer.release_source(&p2, t + 10);
            let s = sweep(&relay, t + 20);
            assert_eq!(
                (s.expired, s.evicted),
                (0, 1),
                "within grace, one made room"
            );
            assert_eq!(oldest.cached_bytes(), 0, "the longest gone went first");
            assert!(newer.cached_bytes() > 0, "one was enough");
            assert!(live.cached_bytes() > 0, "a live channel keeps its picture");
            assert!(relay.budgets.cache.used() <= 7_500);
            assert_eq!(sweep(&relay, t + 30).evicted, 0, "within 3/4 now");
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
