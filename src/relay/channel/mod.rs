//! One named channel: its source, receivers and signaling peers, its
//! catch-up state, and the fan-out. The impl is spread by job:
//! [`membership`] (who is attached, in which role), [`catchup`] (the state a
//! joiner or a skipped-forward receiver is sent), [`fanout`] (a source frame
//! to every receiver, sharded over cores), [`lap`] (big channels' writes, a
//! block of receivers at a time), [`pace`] (a source no faster than most
//! of its receivers) and [`routing`] (inputs to the
//! source, signaling between peers); [`resume`] (the replay ring for
//! `?resume=` reconnects). Beside it, what a channel holds: its members as
//! [`peer`]s, the catch-up [`cache`] and the [`sse_hub`] of its
//! Server-Sent Events clients.
//!
//! Readers never lock: the receiver list, the source slot and the catch-up
//! snapshot are all published through `ArcSwap`. Membership changes (join,
//! leave, source claim) serialize on a small mutex that the fan-out never
//! takes, and rebuild the receiver list copy-on-write.
//!
//! Ordering of a join against the live stream: the source stores the new
//! snapshot, then loads the receiver list; a joiner stores the new list, then
//! loads the snapshot under its own egress lock. With a `SeqCst` fence on
//! both sides at least one of them sees the other, and the per-receiver
//! catch-up sequence removes the overlap, so a joiner gets every cacheable
//! frame exactly once: from the snapshot or live, never both, never neither.

mod bench;
pub(crate) mod cache;
mod catchup;
mod fanout;
mod lap;
mod membership;
#[cfg(test)]
mod model;
mod pace;
pub(crate) mod peer;
mod resume;
mod roster;
mod routing;
mod sse;
pub(crate) mod sse_hub;

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use arc_swap::{ArcSwap, ArcSwapOption};
use roster::Roster;
use tokio::sync::mpsc;

pub(crate) use fanout::{Fanout, PublishError};
pub(crate) use resume::RingPool;

use crate::relay::channel::cache::{CacheWriter, CatchUp};
use crate::relay::channel::peer::Peer;
use crate::relay::channel::sse_hub::SseHub;
use crate::relay::egress::Backlog;
use crate::relay::resources::budget::Budgets;
use crate::relay::resources::stats::Traffic;

/// Where a channel's accepted frames go besides its receivers: the
/// cluster's uplink while the source is on this node. The channel only
/// pushes; what happens to the frame is the implementor's business.
pub(crate) trait Forward: Send + Sync + std::fmt::Debug {
    /// Takes a frame the channel accepted (called under the channel's
    /// cache-writer lock, in sequence order; must not block).
    fn push(&self, msg: &bitstream_wire::reader::WireMessage);
}

impl<T: Forward> Forward for Arc<T> {
    fn push(&self, msg: &bitstream_wire::reader::WireMessage) {
        T::push(self, msg);
    }
}

/// A channel. See the module docs.
#[derive(Debug)]
pub(crate) struct Channel {
    /// The channel's name.
    pub(crate) name: Arc<str>,
    /// Who created it (the per-IP key), for `--max-channels-per-ip`.
    pub(crate) creator: Option<IpAddr>,
    /// Traffic counters.
    pub(crate) traffic: Traffic,
    /// Server-Sent Events clients of its signal state.
    pub(crate) sse: SseHub,
    cache: ArcSwap<CatchUp>,
    writer: Mutex<resume::Writer>,
    /// Where the cached state's memory is charged (the cache budget), and
    /// the relay's whole budget, which decides when caches stop growing.
    budgets: Budgets,
    /// Bytes charged to the cache budget now (changed under the writer lock).
    charged: AtomicUsize,
    /// Receivers, sharded by peer id (one shard per fan-out task).
    receivers: Box<[Roster]>,
    receiver_count: AtomicUsize,
    /// How many receivers hold queued frames while keeping up (see [`pace`]).
    backlog: Arc<Backlog>,
    /// The source's clock against the relay's (see [`pace`]).
    lateness: pace::Lateness,
    fanout: Fanout,
    workers: OnceLock<Vec<mpsc::Sender<fanout::Job>>>,
    signal_peers: Roster,
    source: ArcSwapOption<Peer>,
    /// Cluster mode, while the source is on this node: where its frames
    /// go to the other nodes (fed under the cache-writer lock).
    pub(crate) uplink: ArcSwapOption<Box<dyn Forward>>,
    membership: Mutex<()>,
    seq: AtomicU64,
    /// Per shard, where the flush of deferred frames stands (see [`lap`]).
    laps: Box<[Mutex<lap::Lap>]>,
    /// Connections attached or attaching (the GC removes a channel only at 0).
    members: AtomicUsize,
    /// Last time a member left or the source left (ms on the relay clock).
    last_left_ms: AtomicU64,
    /// When the source left, if there is none now (0 = never had one).
    source_left_ms: AtomicU64,
}

impl Drop for Channel {
    fn drop(&mut self) {
        self.budgets.cache.resize(*self.charged.get_mut(), 0);
        self.sse.clear();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Channel {
    /// A new, empty channel created at `now` (ms on the relay clock).
    pub(crate) fn new(
        name: Arc<str>,
        creator: Option<IpAddr>,
        budgets: Budgets,
        max_signal_state: usize,
        rings: Arc<resume::RingPool>,
        fanout: Fanout,
        now: u64,
    ) -> Self {
        let shards = fanout.shards.max(1);
        let start = resume::random_start();
        Self {
            name,
            creator,
            traffic: Traffic::default(),
            sse: SseHub::starting_at(start),
            cache: ArcSwap::from_pointee(CatchUp::default()),
            writer: Mutex::new(resume::Writer {
                cache: CacheWriter::new(max_signal_state, budgets.memory.clone()),
                ring: resume::Ring::new(rings, budgets.memory.clone()),
                epoch: start,
            }),
            budgets,
            charged: AtomicUsize::new(0),
            receivers: (0..shards).map(|_| Roster::default()).collect(),
            receiver_count: AtomicUsize::new(0),
            backlog: Arc::default(),
            lateness: pace::Lateness::default(),
            fanout: Fanout { shards, ..fanout },
            workers: OnceLock::new(),
            signal_peers: Roster::default(),
            source: ArcSwapOption::empty(),
            uplink: ArcSwapOption::empty(),
            membership: Mutex::new(()),
            seq: AtomicU64::new(start),
            laps: (0..shards).map(|_| Mutex::default()).collect(),
            members: AtomicUsize::new(0),
            last_left_ms: AtomicU64::new(now),
            source_left_ms: AtomicU64::new(0),
        }
    }

    /// True if a source is connected.
    pub(crate) fn has_source(&self) -> bool {
        self.source.load().is_some()
    }

    /// Receivers connected now.
    pub(crate) fn receiver_count(&self) -> usize {
        self.receiver_count.load(Ordering::Relaxed)
    }

    /// Signaling peers connected now.
    pub(crate) fn signal_peer_count(&self) -> usize {
        self.signal_peers.len()
    }

    /// Bytes queued for this channel's receivers right now.
    pub(crate) fn egress_queued_bytes(&self) -> usize {
        let mut total = 0;
        for shard in self.receivers.iter() {
            shard.for_each(|r| total += r.egress.queued_bytes());
        }
        total
    }
}
