//! One named channel: its source, receivers and signaling peers, its
//! catch-up state, and the fan-out.
//!
//! Readers never lock: the receiver list, the source slot and the catch-up
//! snapshot are all published through `ArcSwap`. Membership changes (join,
//! leave, source claim) serialize on a small mutex that the fan-out never
//! takes, and rebuild the receiver list copy-on-write.
//!
//! Fan-out of a big channel scales with cores: receivers are sharded by
//! peer id; the source's task writes shard 0 itself and, once the channel
//! has `--fanout-shard-min` receivers (and the runtime has more than one
//! worker), hands every frame to one worker task per other shard over a
//! bounded queue. A receiver always stays in its shard and a shard's frames
//! are handled by one task in order, so per-receiver order holds; the switch
//! to workers is one-way for the same reason.
//!
//! Ordering of a join against the live stream: the source stores the new
//! snapshot, then loads the receiver list; a joiner stores the new list, then
//! loads the snapshot under its own egress lock. With a `SeqCst` fence on
//! both sides at least one of them sees the other, and the per-receiver
//! `skip_upto` sequence removes the overlap, so a joiner gets every cacheable
//! frame exactly once: from the snapshot or live, never both, never neither.

use std::net::SocketAddr;
use std::sync::atomic::{fence, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use arc_swap::{ArcSwap, ArcSwapOption};
use bytes::Bytes;
use tokio::sync::mpsc;

use crate::cache::{CacheError, CacheWriter, CatchUp};
use crate::conn::WireMessage;
use crate::egress::{Egress, Outcome};
use crate::protocol::Header;
use crate::stats::{Refusal, Traffic};

/// Milliseconds since the relay's clock started (monotonic).
pub fn clock_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// The role a connection plays on its channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The one source of the channel.
    Source,
    /// A receiver of the channel's frames.
    Receiver,
    /// A WebRTC signaling peer.
    Signal,
    /// A `/echo` peer (conformance testing): every message comes back.
    Echo,
}

/// One connected peer, shared between its own task and the fan-out.
#[derive(Debug)]
pub struct Peer {
    /// Relay-unique id.
    pub id: u64,
    /// Remote address.
    pub addr: SocketAddr,
    /// Outbound side.
    pub egress: Egress,
}

/// How a channel spreads its fan-out over cores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fanout {
    /// Receiver shards (one per runtime worker; 1 disables sharding).
    pub shards: usize,
    /// Receivers at which the other shards move to their own tasks.
    pub shard_min: usize,
}

impl Default for Fanout {
    fn default() -> Self {
        Self {
            shards: 1,
            shard_min: usize::MAX,
        }
    }
}

/// One frame for a shard worker.
#[derive(Debug)]
struct Job {
    frame: Bytes,
    seq: u64,
    len: u64,
}

/// Frames a shard worker may have queued before the source waits.
const SHARD_QUEUE: usize = 64;

/// A channel. See the module docs.
#[derive(Debug)]
pub struct Channel {
    /// The channel's name.
    pub name: Arc<str>,
    /// Traffic counters.
    pub traffic: Traffic,
    cache: ArcSwap<CatchUp>,
    writer: Mutex<CacheWriter>,
    receivers: Box<[ArcSwap<Vec<Arc<Peer>>>]>,
    receiver_count: AtomicUsize,
    fanout: Fanout,
    workers: OnceLock<Vec<mpsc::Sender<Job>>>,
    signal_peers: ArcSwap<Vec<Arc<Peer>>>,
    source: ArcSwapOption<Peer>,
    membership: Mutex<()>,
    seq: AtomicU64,
    /// Connections attached or attaching (the GC removes a channel only at 0).
    members: AtomicUsize,
    /// Last time a member left or the source left (`clock_ms`).
    last_left_ms: AtomicU64,
    /// When the source left, if there is none now (`clock_ms`, 0 = never had one).
    source_left_ms: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Channel {
    /// A new, empty channel.
    pub fn new(name: Arc<str>, max_signal_state: usize, fanout: Fanout) -> Self {
        let shards = fanout.shards.max(1);
        Self {
            name,
            traffic: Traffic::default(),
            cache: ArcSwap::from_pointee(CatchUp::default()),
            writer: Mutex::new(CacheWriter::new(max_signal_state)),
            receivers: (0..shards)
                .map(|_| ArcSwap::from_pointee(Vec::new()))
                .collect(),
            receiver_count: AtomicUsize::new(0),
            fanout: Fanout { shards, ..fanout },
            workers: OnceLock::new(),
            signal_peers: ArcSwap::from_pointee(Vec::new()),
            source: ArcSwapOption::empty(),
            membership: Mutex::new(()),
            seq: AtomicU64::new(0),
            members: AtomicUsize::new(0),
            last_left_ms: AtomicU64::new(clock_ms()),
            source_left_ms: AtomicU64::new(0),
        }
    }

    /// Counts a connection attaching (called under the map's shard lock).
    pub fn attach(&self) {
        self.members.fetch_add(1, Ordering::SeqCst);
    }

    /// Counts a connection leaving.
    pub fn detach(&self) {
        self.last_left_ms.store(clock_ms(), Ordering::Relaxed);
        self.members.fetch_sub(1, Ordering::SeqCst);
    }

    /// Connections attached now.
    pub fn members(&self) -> usize {
        self.members.load(Ordering::SeqCst)
    }

    /// Milliseconds since the last member left.
    pub fn idle_ms(&self, now: u64) -> u64 {
        now.saturating_sub(self.last_left_ms.load(Ordering::Relaxed))
    }

    /// True if a source is connected.
    pub fn has_source(&self) -> bool {
        self.source.load().is_some()
    }

    /// Receivers connected now.
    pub fn receiver_count(&self) -> usize {
        self.receiver_count.load(Ordering::Relaxed)
    }

    fn shard_of(&self, peer: &Peer) -> &ArcSwap<Vec<Arc<Peer>>> {
        &self.receivers[peer.id as usize % self.receivers.len()]
    }

    /// Bytes queued for this channel's receivers right now.
    pub fn egress_queued_bytes(&self) -> usize {
        let mut total = 0;
        for shard in self.receivers.iter() {
            total += shard
                .load()
                .iter()
                .map(|r| r.egress.queued_bytes())
                .sum::<usize>();
        }
        total
    }

    /// Signaling peers connected now.
    pub fn signal_peer_count(&self) -> usize {
        self.signal_peers.load().len()
    }

    /// The current catch-up snapshot.
    pub fn catch_up(&self) -> Arc<CatchUp> {
        self.cache.load_full()
    }

    /// Makes `peer` the source unless the channel has one. With `or_receive`
    /// (the legacy `/` path) a channel that has a source gets `None` back so
    /// the caller can join as a receiver instead.
    pub fn claim_source(&self, peer: &Arc<Peer>) -> bool {
        let _m = lock(&self.membership);
        if self.source.load().is_some() {
            return false;
        }
        self.source.store(Some(peer.clone()));
        true
    }

    /// Releases the source slot if `peer` holds it; the cached state is kept
    /// for the grace period so a returning source continues the channel.
    pub fn release_source(&self, peer: &Arc<Peer>) {
        let _m = lock(&self.membership);
        let cur = self.source.load();
        if cur.as_ref().is_some_and(|s| Arc::ptr_eq(s, peer)) {
            self.source.store(None);
            self.source_left_ms
                .store(clock_ms().max(1), Ordering::Relaxed);
        }
    }

    /// Adds a receiver (unless `max` are connected) and queues its catch-up.
    /// Anything already queued on its egress (the handshake response) goes first.
    pub fn add_receiver(&self, peer: &Arc<Peer>, max: usize) -> Result<(), Refusal> {
        peer.egress.mark_resync();
        {
            let _m = lock(&self.membership);
            if self.receiver_count() >= max {
                return Err(Refusal::ReceiverLimit);
            }
            Self::push_to(self.shard_of(peer), peer);
            self.receiver_count.fetch_add(1, Ordering::Relaxed);
        }
        fence(Ordering::SeqCst);
        self.resync(peer);
        Ok(())
    }

    /// Removes a receiver.
    pub fn remove_receiver(&self, peer: &Arc<Peer>) {
        if Self::remove_from(&self.membership, self.shard_of(peer), peer) {
            self.receiver_count.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Adds a signaling peer unless `max` are connected.
    pub fn add_signal_peer(&self, peer: &Arc<Peer>, max: usize) -> Result<(), Refusal> {
        let _m = lock(&self.membership);
        if self.signal_peers.load().len() >= max {
            return Err(Refusal::ReceiverLimit);
        }
        Self::push_to(&self.signal_peers, peer);
        Ok(())
    }

    /// Removes a signaling peer.
    pub fn remove_signal_peer(&self, peer: &Arc<Peer>) {
        Self::remove_from(&self.membership, &self.signal_peers, peer);
    }

    /// Publishes `list` with `peer` appended (copy-on-write). The caller
    /// holds the membership lock.
    fn push_to(list: &ArcSwap<Vec<Arc<Peer>>>, peer: &Arc<Peer>) {
        let cur = list.load();
        let mut next = Vec::with_capacity(cur.len() + 1);
        next.extend(cur.iter().cloned());
        next.push(peer.clone());
        list.store(Arc::new(next));
    }

    /// Removes `peer` from `list`; false if it was not there.
    fn remove_from(
        membership: &Mutex<()>,
        list: &ArcSwap<Vec<Arc<Peer>>>,
        peer: &Arc<Peer>,
    ) -> bool {
        let _m = lock(membership);
        let cur = list.load();
        if !cur.iter().any(|p| Arc::ptr_eq(p, peer)) {
            return false;
        }
        let next: Vec<Arc<Peer>> = cur
            .iter()
            .filter(|p| !Arc::ptr_eq(p, peer))
            .cloned()
            .collect();
        list.store(Arc::new(next));
        true
    }

    /// Sends `peer` the current catch-up state (join or skip-forward).
    pub fn resync(&self, peer: &Peer) {
        peer.egress.resync(|| {
            let snap = self.cache.load_full();
            (snap.frames(), snap.seq)
        });
        self.traffic.catchups.inc();
    }

    /// Folds a validated source message into the catch-up state, then hands
    /// it to every receiver, in order, the same `Bytes` to each. On error the
    /// message is neither cached nor forwarded.
    pub async fn publish(
        self: &Arc<Self>,
        h: &Header,
        msg: &WireMessage,
    ) -> Result<(), CacheError> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(snap) = lock(&self.writer).apply(h, msg, seq)? {
            self.cache.store(snap);
        }
        fence(Ordering::SeqCst);
        let len = msg.payload().len() as u64;
        self.traffic.frames_in.inc();
        self.traffic.bytes_in.add(len);
        let workers = match self.workers.get() {
            Some(w) => Some(w),
            None if self.fanout.shards > 1 && self.receiver_count() >= self.fanout.shard_min => {
                Some(self.start_workers())
            }
            None => None,
        };
        match workers {
            Some(workers) => {
                for tx in workers {
                    // A worker only ends with the channel, which we hold.
                    let _ = tx
                        .send(Job {
                            frame: msg.wire.clone(),
                            seq,
                            len,
                        })
                        .await;
                }
                self.fan_shard(0, &msg.wire, seq, len);
            }
            None => {
                for k in 0..self.receivers.len() {
                    self.fan_shard(k, &msg.wire, seq, len);
                }
            }
        }
        Ok(())
    }

    /// Hands a frame to every receiver of shard `k`.
    fn fan_shard(&self, k: usize, frame: &Bytes, seq: u64, len: u64) {
        let receivers = self.receivers[k].load_full();
        let mut delivered = 0u64;
        for r in receivers.iter() {
            match r.egress.send_live(frame, seq) {
                Outcome::Sent => delivered += 1,
                Outcome::Queued => {
                    delivered += 1;
                    self.traffic.queued.inc();
                }
                Outcome::Overflow => self.traffic.slow_skips.inc(),
                Outcome::Skipped | Outcome::Dropped | Outcome::Closed => {}
            }
        }
        if delivered > 0 {
            self.traffic.frames_out.add(delivered);
            self.traffic.bytes_out.add(delivered * len);
        }
    }

    /// Spawns one worker task per shard but the first (once per channel).
    fn start_workers(self: &Arc<Self>) -> &Vec<mpsc::Sender<Job>> {
        self.workers.get_or_init(|| {
            (1..self.receivers.len())
                .map(|k| {
                    let (tx, mut rx) = mpsc::channel::<Job>(SHARD_QUEUE);
                    let weak = Arc::downgrade(self);
                    tokio::spawn(async move {
                        while let Some(job) = rx.recv().await {
                            let Some(ch) = weak.upgrade() else { return };
                            ch.fan_shard(k, &job.frame, job.seq, job.len);
                        }
                    });
                    tx
                })
                .collect()
        })
    }

    /// Forwards a validated input to the source; false if there is none or
    /// its queue is full (the input is then dropped and counted).
    pub fn forward_input(&self, msg: &WireMessage) -> bool {
        let ok = match self.source.load().as_ref() {
            Some(src) => matches!(src.egress.send(&msg.wire), Outcome::Sent | Outcome::Queued),
            None => false,
        };
        if ok {
            self.traffic.inputs.inc();
        } else {
            self.traffic.dropped.inc();
        }
        ok
    }

    /// Broadcasts a signaling message to every signaling peer but `from`.
    pub fn broadcast_signal(&self, from: &Peer, msg: &WireMessage) {
        let peers = self.signal_peers.load_full();
        for p in peers.iter().filter(|p| p.id != from.id) {
            if !matches!(p.egress.send(&msg.wire), Outcome::Sent | Outcome::Queued) {
                self.traffic.dropped.inc();
            }
        }
        self.traffic.signal_messages.inc();
    }

    /// Drops the cached state if the source has been gone longer than
    /// `grace_ms`; returns true if it did.
    pub fn expire_cache(&self, now: u64, grace_ms: u64) -> bool {
        let _m = lock(&self.membership);
        let left = self.source_left_ms.load(Ordering::Relaxed);
        if self.source.load().is_some() || left == 0 || now.saturating_sub(left) < grace_ms {
            return false;
        }
        if self.cache.load().is_empty() {
            return false;
        }
        let mut w = lock(&self.writer);
        *w = CacheWriter::new(w.max_signal_state());
        self.cache.store(Arc::new(CatchUp {
            seq: self.seq.load(Ordering::Relaxed),
            ..CatchUp::default()
        }));
        true
    }
}
