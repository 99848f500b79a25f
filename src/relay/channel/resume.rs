//! WebSocket resume: a bounded per-channel replay ring of the frames most
//! recently fanned out, so a receiver that reconnects with
//! `/stream/{name}?resume=SEQ` gets exactly the frames after the one it last
//! had, instead of the whole catch-up state.
//!
//! The ring lives beside the [`CacheWriter`] under the channel's writer lock
//! ([`Writer`]): `cache_frame` already takes it once per frame, so the
//! fan-out takes no new lock. Every frame that is fanned out live is added,
//! in channel order, right after it was folded into the catch-up state.
//!
//! A resume uses the join mechanism of a catch-up, [`Egress::resync`] with
//! the ring's frames after the match and `upto` = the channel sequence of
//! the newest frame in the ring: read under the writer lock inside the
//! joiner's egress lock, it covers exactly the frames that reached the ring
//! before the joiner was listed, and later ones arrive live.
//!
//! `SEQ` is the 16-bit header `seq`, which wraps at 65,536: the ring picks
//! its *most recent* entry with that seq, and holds at most 65,536 entries,
//! so for a source that numbers its frames one by one no two entries share
//! a seq. A `SEQ` the ring does not hold (too old, never sent, the ring
//! emptied) gets the normal catch-up state: either way the receiver's state
//! is exact.
//!
//! Memory: at most `--resume-ring-bytes` (frame bytes plus
//! [`ENTRY_OVERHEAD`] per entry; the newest frame is always kept, even if
//! larger), and all rings together at most `--max-resume-memory`: every
//! ring's bound is the smaller of the two and an equal share of the total
//! among the channels that exist ([`RingPool`]). Without the shared bound,
//! 256 channels of small frames filled 4 MiB each (1 GiB, most of
//! `--max-memory`) and the relay spent its time faulting in fresh pages for
//! frames nobody asked to resume. Frames under [`LARGE`] are copied into the ring (a small frame
//! cut from a source's read buffer would pin the buffer) and charged to
//! `--max-memory` with their overhead; larger frames already carry their
//! own charge. While the relay is short of memory (its level is not
//! normal) the ring is emptied and stops recording: resumes then fall back
//! to catch-ups.
//!
//! [`Egress::resync`]: crate::relay::egress::Egress::resync

use std::collections::VecDeque;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bitstream_wire::protocol::{self, MarkKind, StreamMark};
use bitstream_wire::reader::WireMessage;
use bitstream_wire::ws;
use bytes::Bytes;
use crossbeam_utils::CachePadded;

use super::{lock, Channel};
use crate::relay::channel::cache::CacheWriter;
use crate::relay::channel::peer::Peer;
use crate::relay::resources::budget::{Budget, Level, LARGE};
use crate::relay::resources::clock::random_u64;

/// What one ring entry costs beyond its frame's bytes (counted in the
/// bound and, for small frames, in the memory charge).
pub(crate) const ENTRY_OVERHEAD: usize = 64;

/// Most entries the ring holds: one full turn of the 16-bit seq.
const MAX_ENTRIES: usize = 1 << 16;

/// The channel's writer state: the catch-up cache and the replay ring,
/// under one lock. Derefs to the [`CacheWriter`].
#[derive(Debug)]
pub(crate) struct Writer {
    /// The catch-up state.
    pub(crate) cache: CacheWriter,
    /// The replay ring for resumes: frames of the current stream only.
    pub(crate) ring: Ring,
    /// The current stream's epoch: the channel sequence it started after.
    pub(crate) epoch: u64,
}

impl Deref for Writer {
    type Target = CacheWriter;
    fn deref(&self) -> &CacheWriter {
        &self.cache
    }
}

impl DerefMut for Writer {
    fn deref_mut(&mut self) -> &mut CacheWriter {
        &mut self.cache
    }
}

/// One frame in the ring.
#[derive(Debug)]
struct Entry {
    /// Channel sequence.
    seq: u64,
    /// The protocol header's 16-bit seq.
    wire_seq: u16,
    /// A resume may start after it: every frame but a `SignalSync`, which
    /// no client names as its resume point, and which in a catch-up
    /// published by a cluster follower carries the seq of an older signal
    /// message than the picture before it (matching it would skip frames).
    anchor: bool,
    /// The frame as sent on the wire.
    frame: Bytes,
}

/// The bound every channel's replay ring shares: `--resume-ring-bytes` per
/// ring, `--max-resume-memory` over all rings, split equally among the
/// rings that exist. One per relay.
#[derive(Debug)]
pub(crate) struct RingPool {
    per_ring: usize,
    total: usize,
    rings: CachePadded<AtomicUsize>,
}

impl RingPool {
    /// A pool with at most `per_ring` bytes in one ring and `total` over
    /// all of them (either 0 disables resumes).
    pub(crate) fn new(per_ring: usize, total: usize) -> Arc<Self> {
        Arc::new(Self {
            per_ring,
            total,
            rings: CachePadded::new(AtomicUsize::new(0)),
        })
    }

    /// What one ring may hold now (0: record nothing).
    fn limit(&self) -> usize {
        if self.per_ring == 0 {
            return 0;
        }
        let rings = self.rings.load(Ordering::Relaxed).max(1);
        self.per_ring.min(self.total / rings)
    }
}

/// The replay ring. See the module docs.
#[derive(Debug)]
pub(crate) struct Ring {
    entries: VecDeque<Entry>,
    /// Frame bytes plus [`ENTRY_OVERHEAD`] per entry.
    bytes: usize,
    /// What is charged to the memory budget: small frames' bytes plus
    /// [`ENTRY_OVERHEAD`] per entry.
    own: usize,
    pool: Arc<RingPool>,
    memory: Arc<Budget>,
}

impl Drop for Ring {
    fn drop(&mut self) {
        self.memory.release(self.own);
        self.pool.rings.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Ring {
    /// An empty ring in `pool`, charging `memory`.
    pub(crate) fn new(pool: Arc<RingPool>, memory: Arc<Budget>) -> Self {
        pool.rings.fetch_add(1, Ordering::Relaxed);
        Self {
            entries: VecDeque::new(),
            bytes: 0,
            own: 0,
            pool,
            memory,
        }
    }

    /// Records a frame fanned out live: header seq `wire_seq`, channel
    /// sequence `seq`. Evicts the oldest entries to stay in bounds.
    pub(crate) fn push(&mut self, wire_seq: u16, seq: u64, frame: &Bytes, anchor: bool) {
        let limit = self.pool.limit();
        if limit == 0 {
            if !self.entries.is_empty() {
                self.clear();
            }
            return;
        }
        if self.memory.level() != Level::Normal {
            self.clear();
            return;
        }
        let small = frame.len() < LARGE;
        let frame = if small {
            Bytes::copy_from_slice(frame)
        } else {
            frame.clone()
        };
        let cost = frame.len() + ENTRY_OVERHEAD;
        while !self.entries.is_empty()
            && (self.bytes + cost > limit || self.entries.len() >= MAX_ENTRIES)
        {
            self.pop_oldest();
        }
        let own = ENTRY_OVERHEAD + if small { frame.len() } else { 0 };
        self.memory.force(own);
        self.own += own;
        self.bytes += cost;
        self.entries.push_back(Entry {
            seq,
            wire_seq,
            anchor,
            frame,
        });
    }

    fn pop_oldest(&mut self) {
        if let Some(e) = self.entries.pop_front() {
            let len = e.frame.len();
            let own = ENTRY_OVERHEAD + if len < LARGE { len } else { 0 };
            self.memory.release(own);
            self.own -= own;
            self.bytes -= len + ENTRY_OVERHEAD;
        }
    }

    /// Empties the ring and gives its memory back.
    pub(crate) fn clear(&mut self) {
        self.entries.clear();
        self.memory.release(self.own);
        self.own = 0;
        self.bytes = 0;
    }

    /// The frames after the most recent anchor entry whose header seq is
    /// `wire_seq`, and the channel sequence they cover (the newest
    /// entry's); `None` if no entry has that seq.
    pub(crate) fn after(&self, wire_seq: u16) -> Option<(Vec<Bytes>, u64)> {
        let i = self
            .entries
            .iter()
            .rposition(|e| e.anchor && e.wire_seq == wire_seq)?;
        let upto = self.entries.back()?.seq;
        let frames = self
            .entries
            .range(i + 1..)
            .map(|e| e.frame.clone())
            .collect();
        Some((frames, upto))
    }

    /// Bytes the ring holds (frames plus per-entry overhead).
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

/// How far apart two streams' channel sequences start (at least), so that
/// an SSE id of one stream is never taken for one of another.
const EPOCH_STRIDE: u64 = 1 << 32;

/// A random channel sequence to start a new channel at: channels created
/// anew (after the GC, after a restart) never reuse an earlier one's
/// numbers, so resume points and SSE ids of an older incarnation are
/// never taken for this one's (except with odds of about 2^-30).
pub(crate) fn random_start() -> u64 {
    // Below 2^62: room for 2^29 streams of 2^33 frames each.
    (random_u64() >> 2).max(1)
}

/// A stream mark as the WebSocket frame that carries it.
fn mark_frame(mark: StreamMark) -> Bytes {
    WireMessage::encode(ws::OP_BINARY, &protocol::stream_mark(mark)).wire
}

impl Channel {
    /// Starts a new stream on the channel (a cluster follower changed or
    /// lost the stream it follows) named `epoch`, or a random one. See
    /// [`Channel::begin_stream_locked`].
    pub(crate) fn begin_stream(&self, epoch: Option<u64>) -> u64 {
        let _m = lock(&self.membership);
        self.begin_stream_locked(epoch)
    }

    /// Starts a new stream on the channel, the caller holding the
    /// membership lock: a source claimed it, or a cluster follower changed
    /// or lost the stream it follows. The channel sequence jumps ahead by a
    /// random stride and the new epoch is that sequence, unless the caller
    /// names it (a cluster follower takes the source node's epoch for a
    /// stream it follows from its first frame: its ring then holds the same
    /// frames as the source node's, so a receiver moving between nodes
    /// resumes); the replay ring
    /// and the SSE replay buffer are emptied, so no resume point or
    /// `Last-Event-ID` of an earlier stream is ever resumed with this one's
    /// frames (it gets a full catch-up). Receivers that asked for marks get
    /// a [`MarkKind::Changed`] mark as a live frame of the sequence it starts after,
    /// between the old stream's frames and the new one's (a joiner whose
    /// catch-up already names the new epoch skips it as covered, or drops
    /// it while awaiting its catch-up, which then names the new epoch).
    pub(crate) fn begin_stream_locked(&self, named: Option<u64>) -> u64 {
        let (epoch, start) = {
            let mut w = lock(&self.writer);
            let stride = EPOCH_STRIDE + (random_u64() % EPOCH_STRIDE);
            let start = self
                .seq
                .fetch_add(stride, Ordering::Relaxed)
                .wrapping_add(stride);
            let epoch = named.unwrap_or(start);
            w.epoch = epoch;
            w.ring.clear();
            self.sse.restart(start);
            (epoch, start)
        };
        let mark = mark_frame(StreamMark {
            epoch,
            kind: MarkKind::Changed,
        });
        for shard in self.receivers.iter() {
            shard.for_each(|r| {
                if r.marks {
                    r.egress.send_live(&mark, start, false);
                }
            });
        }
        epoch
    }

    /// The current stream's epoch.
    pub(crate) fn epoch(&self) -> u64 {
        lock(&self.writer).epoch
    }

    /// Sends a joining or skipped-forward receiver what it needs: if
    /// `point` (its last frame: the stream's epoch and the header seq)
    /// names the current stream and the ring still has that frame, the
    /// frames after it; otherwise the full catch-up state. Preceded by a
    /// stream mark if the peer asked for marks. Counted as a resume or a
    /// catch-up.
    pub(crate) fn resume_or_resync(&self, peer: &Peer, point: Option<(Option<u64>, u16)>) {
        let mut resumed = false;
        peer.egress.resync(|| {
            let w = lock(&self.writer);
            // Read before the frames: a mark never names a newer stream
            // than the frames after it (a later claim changes the epoch,
            // and a resume from an older one is a catch-up, never wrong).
            let epoch = w.epoch;
            let found = match point {
                Some((Some(e), seq)) if e == epoch => w.ring.after(seq),
                _ => None,
            };
            drop(w);
            let (mut frames, upto) = match found {
                Some(r) => {
                    resumed = true;
                    r
                }
                None => self.catch_up(),
            };
            if peer.marks {
                let kind = if resumed {
                    MarkKind::Resume
                } else {
                    MarkKind::CatchUp
                };
                frames.insert(0, mark_frame(StreamMark { epoch, kind }));
            }
            (frames, upto)
        });
        if resumed {
            self.traffic.resumes.inc();
        } else {
            self.traffic.catchups.inc();
            if let Some((epoch, seq)) = point {
                tracing::debug!(channel = %self.name, peer = peer.id, ?epoch, seq, "resume: another stream or seq not in the ring, full catch-up");
            }
        }
    }

    /// Bytes the replay ring holds now.
    pub(crate) fn resume_ring_bytes(&self) -> usize {
        lock(&self.writer).ring.bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(limit: usize) -> (Ring, Arc<Budget>) {
        let b = Arc::new(Budget::new(usize::MAX));
        (Ring::new(RingPool::new(limit, usize::MAX), b.clone()), b)
    }

    fn f(len: usize, tag: u8) -> Bytes {
        Bytes::from(vec![tag; len])
    }

    #[test]
    fn frames_after_a_seq_and_the_sequence_they_cover() {
        let (mut r, b) = ring(1 << 20);
        for i in 0..10u64 {
            r.push(100 + i as u16, i + 1, &f(10, i as u8), true);
        }
        let (frames, upto) = r.after(104).unwrap();
        assert_eq!(upto, 10);
        let tags: Vec<u8> = frames.iter().map(|x| x[0]).collect();
        assert_eq!(tags, vec![5, 6, 7, 8, 9]);
        assert_eq!(r.after(109).unwrap(), (vec![], 10), "up to date");
        assert!(r.after(99).is_none());
        assert_eq!(b.used(), 10 * (10 + ENTRY_OVERHEAD));
        drop(r);
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn the_oldest_go_first_and_the_newest_always_stays() {
        let (mut r, b) = ring(3 * (100 + ENTRY_OVERHEAD));
        for i in 0..5u16 {
            r.push(i, i as u64 + 1, &f(100, i as u8), true);
        }
        assert!(r.after(1).is_none(), "evicted");
        assert_eq!(r.after(2).unwrap().0.len(), 2);
        r.push(9, 6, &f(10_000, 9), true);
        assert_eq!(r.after(9).unwrap(), (vec![], 6));
        assert!(r.after(4).is_none());
        assert_eq!(b.used(), 10_000 + ENTRY_OVERHEAD);
        r.clear();
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn a_wrapped_seq_picks_the_most_recent_entry() {
        let (mut r, _) = ring(1 << 30);
        // Seq 65,535 then 0, 1, … : 65,540 frames, the ring keeps 65,536.
        for i in 0..65_540u64 {
            r.push((i + 65_535) as u16, i + 1, &f(1, 0), true);
        }
        // Seq 2 was sent twice (i = 3 and i = 65,539); the first is gone.
        assert_eq!(r.after(2).unwrap(), (vec![], 65_540));
        let (frames, _) = r.after(65_535).unwrap();
        assert_eq!(
            frames.len(),
            3,
            "the second 65,535 (i = 65,536), not the first"
        );
    }

    #[test]
    fn small_frames_are_copied_large_ones_shared_and_not_charged() {
        let (mut r, b) = ring(1 << 30);
        let buf = f(LARGE * 2, 1);
        r.push(1, 1, &buf.slice(0..10), true);
        r.push(2, 2, &buf.slice(0..LARGE), true);
        let e: Vec<&Entry> = r.entries.iter().collect();
        assert_ne!(e[0].frame.as_ptr(), buf.as_ptr(), "copied");
        assert_eq!(e[1].frame.as_ptr(), buf.as_ptr(), "shared");
        assert_eq!(b.used(), 10 + 2 * ENTRY_OVERHEAD);
    }

    #[test]
    fn a_signal_sync_is_never_where_a_resume_starts() {
        let (mut r, _) = ring(1 << 20);
        r.push(5, 1, &f(10, 1), true);
        r.push(6, 2, &f(10, 2), true);
        // A follower's catch-up: the picture, then a sync of an older seq.
        r.push(5, 3, &f(10, 3), false);
        r.push(7, 4, &f(10, 4), true);
        let (frames, upto) = r.after(5).unwrap();
        let tags: Vec<u8> = frames.iter().map(|x| x[0]).collect();
        assert_eq!(
            (tags, upto),
            (vec![2, 3, 4], 4),
            "after the frame, not the sync"
        );
    }

    #[test]
    fn a_disabled_ring_records_nothing() {
        let (mut r, b) = ring(0);
        r.push(1, 1, &f(10, 1), true);
        assert!(r.after(1).is_none());
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn rings_share_the_relay_wide_bound_equally() {
        let b = Arc::new(Budget::new(usize::MAX));
        let entry = 1000 + ENTRY_OVERHEAD;
        // 10 entries per ring at most, 12 over all rings.
        let pool = RingPool::new(10 * entry, 12 * entry);
        let mut one = Ring::new(pool.clone(), b.clone());
        for i in 0..20u16 {
            one.push(i, u64::from(i) + 1, &f(1000, 1), true);
        }
        assert_eq!(one.bytes(), 10 * entry, "alone: its own bound");
        let mut two = Ring::new(pool.clone(), b.clone());
        for i in 0..20u16 {
            one.push(i, u64::from(i) + 21, &f(1000, 1), true);
            two.push(i, u64::from(i) + 1, &f(1000, 2), true);
        }
        assert_eq!(one.bytes(), 6 * entry, "half of the total each");
        assert_eq!(two.bytes(), 6 * entry);
        assert_eq!(b.used(), 12 * entry);
        drop(two);
        for i in 0..20u16 {
            one.push(i, u64::from(i) + 41, &f(1000, 1), true);
        }
        assert_eq!(one.bytes(), 10 * entry, "alone again");
        assert_eq!(b.used(), 10 * entry);
    }

    #[test]
    fn no_total_records_nothing() {
        let b = Arc::new(Budget::new(usize::MAX));
        let mut r = Ring::new(RingPool::new(1 << 20, 0), b.clone());
        r.push(1, 1, &f(10, 1), true);
        assert!(r.after(1).is_none());
        assert_eq!(b.used(), 0);
    }
}
