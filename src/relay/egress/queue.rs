//! The rules of a peer's outbound queue, without a socket: what a frame
//! offered to a peer becomes (written, queued, skipped, dropped, or an
//! overflow that skips the peer forward), and how the queue shrinks as the
//! socket takes bytes. [`super::Egress`] runs these rules under its lock and
//! does the writing.

use std::collections::VecDeque;

use bytes::{Buf, Bytes};

use crate::relay::budget::LARGE;

/// What a queued chunk costs beyond its bytes (its slot in the deque, the
/// `Bytes` handle, the allocation header): charged against the bound, so a
/// flood of tiny frames cannot hold more memory than the bound says.
pub(crate) const CHUNK_OVERHEAD: usize = 64;

/// Chunks up to this size are copied when queued: a small frame cut from a
/// large read buffer would otherwise keep the whole buffer alive.
const COPY_BELOW: usize = 2048;

/// A queue's charge to the relay's memory budget moves in steps of this
/// many bytes, so a busy queue touches the shared counter rarely.
const GRANULE: usize = 4 * 1024;

/// A queued piece of a frame.
#[derive(Debug)]
struct Chunk {
    bytes: Bytes,
    /// Cut from a frame under [`LARGE`]: its bytes are charged to the memory
    /// budget by this queue (larger frames carry their own charge).
    small: bool,
}

/// Where a peer's stream stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Phase {
    /// Live frames are accepted.
    #[default]
    Live,
    /// The queue overflowed (or the peer just joined): live frames are
    /// dropped until a catch-up is queued.
    AwaitingResync,
    /// The peer is gone; nothing is accepted.
    Closed,
}

/// Whether the queue's front chunk is partly on the wire already.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Front {
    /// Not a byte of it is written (it may be dropped).
    #[default]
    Untouched,
    /// Partly written: it must be finished or the WebSocket stream breaks.
    Started,
}

/// What to do with a frame offered to the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Take it: write it now if the queue is empty, else queue it.
    Accept,
    /// Already covered by the peer's catch-up; not sent again.
    Skipped,
    /// Not sent: the peer awaits a catch-up, or (outside the live stream)
    /// the queue is full.
    Dropped,
    /// This frame overflowed the queue: the queue was dropped and the peer
    /// now awaits a catch-up.
    Overflow,
    /// The peer is closed.
    Closed,
}

/// What is left after writing as much as the socket took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Drain {
    /// Everything is written.
    Empty,
    /// Data is still queued (the socket would block).
    Pending,
    /// The queue is empty and the peer needs a catch-up.
    NeedsResync,
    /// The peer is closed.
    Closed,
}

/// A peer's outbound queue, bounded in bytes. See the module docs.
#[derive(Debug)]
pub(crate) struct Queue {
    chunks: VecDeque<Chunk>,
    /// Bytes queued plus [`CHUNK_OVERHEAD`] per chunk.
    queued: usize,
    /// What this queue holds that no frame's own charge covers: bytes of
    /// small chunks plus [`CHUNK_OVERHEAD`] per chunk.
    own: usize,
    /// What the memory budget is charged for this queue now: `own` rounded
    /// up to a [`GRANULE`] (see [`Queue::recharge`]).
    charged: usize,
    limit: usize,
    phase: Phase,
    front: Front,
    /// Live frames up to this channel sequence are covered by a catch-up.
    skip_upto: u64,
}

impl Queue {
    /// An empty queue holding at most `limit` bytes (one frame more may be
    /// queued when the queue was empty: a frame is never refused for size alone).
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            chunks: VecDeque::new(),
            queued: 0,
            own: 0,
            charged: 0,
            limit,
            phase: Phase::Live,
            front: Front::Untouched,
            skip_upto: 0,
        }
    }

    /// Decides about a live frame of channel sequence `seq` and `len` bytes.
    /// On overflow the queue is dropped, except a front chunk already partly
    /// written, and the peer awaits a catch-up.
    pub(crate) fn offer_live(&mut self, len: usize, seq: u64) -> Verdict {
        match self.phase {
            Phase::Closed => return Verdict::Closed,
            Phase::AwaitingResync => return Verdict::Dropped,
            Phase::Live => {}
        }
        if seq <= self.skip_upto {
            return Verdict::Skipped;
        }
        // A live frame may always join a queue holding at most one frame of
        // its size: one frame in flight plus the next, so a receiver
        // slightly slower than a stream of frames larger than the bound gets
        // every other frame instead of being skipped each time.
        if !self.would_overflow(len) || self.queued <= len + CHUNK_OVERHEAD {
            return Verdict::Accept;
        }
        self.skip_forward();
        Verdict::Overflow
    }

    /// Drops the queue, except a front chunk already partly written, and
    /// marks the peer as awaiting a catch-up.
    pub(crate) fn skip_forward(&mut self) {
        let keep = match self.front {
            Front::Started => self.chunks.pop_front(),
            Front::Untouched => None,
        };
        self.chunks.clear();
        self.queued = 0;
        self.own = 0;
        if let Some(k) = keep {
            self.count_in(&k);
            self.chunks.push_back(k);
        } else {
            self.front = Front::Untouched;
        }
        if self.phase == Phase::Live {
            self.phase = Phase::AwaitingResync;
        }
    }

    /// Adds a chunk's bytes to the counters.
    fn count_in(&mut self, c: &Chunk) {
        self.queued += c.bytes.len() + CHUNK_OVERHEAD;
        self.own += CHUNK_OVERHEAD + if c.small { c.bytes.len() } else { 0 };
    }

    /// Decides about a frame outside the live sequence (control frames,
    /// inputs, signaling): dropped when the queue is full.
    pub(crate) fn offer(&mut self, len: usize) -> Verdict {
        if self.phase == Phase::Closed {
            Verdict::Closed
        } else if self.would_overflow(len) {
            Verdict::Dropped
        } else {
            Verdict::Accept
        }
    }

    fn would_overflow(&self, len: usize) -> bool {
        !self.chunks.is_empty() && self.queued + len + CHUNK_OVERHEAD > self.limit
    }

    /// True when nothing is queued (an accepted frame may go straight out).
    pub(crate) fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Queues what the socket did not take of an accepted frame: `written`
    /// bytes of it are already on the wire.
    pub(crate) fn push_rest(&mut self, frame: &Bytes, written: usize) {
        if self.chunks.is_empty() {
            self.front = if written > 0 {
                Front::Started
            } else {
                Front::Untouched
            };
        }
        let rest = &frame[written..];
        let chunk = Chunk {
            bytes: if rest.len() <= COPY_BELOW {
                Bytes::copy_from_slice(rest)
            } else {
                frame.slice(written..)
            },
            small: frame.len() < LARGE,
        };
        self.count_in(&chunk);
        self.chunks.push_back(chunk);
    }

    /// Queues a whole live frame that every receiver shares, without
    /// copying it even when small: deferred frames are written at the end of
    /// their burst, and consecutive small frames of one source share its
    /// read buffer, so they pin about their own size (a copy per receiver
    /// would cost an allocation and a copy per receiver per frame).
    pub(crate) fn push_shared(&mut self, frame: &Bytes) {
        if self.chunks.is_empty() {
            self.front = Front::Untouched;
        }
        let chunk = Chunk {
            bytes: frame.clone(),
            small: frame.len() < LARGE,
        };
        self.count_in(&chunk);
        self.chunks.push_back(chunk);
    }

    /// Marks the peer as awaiting a catch-up (a joiner, before it is listed).
    pub(crate) fn await_resync(&mut self) {
        if self.phase == Phase::Live {
            self.phase = Phase::AwaitingResync;
        }
    }

    /// Queues a catch-up covering live frames up to `upto` and ends a
    /// pending resynchronization. The catch-up may exceed the bound: it is
    /// the minimum the peer needs. False if the peer is closed.
    pub(crate) fn resync(&mut self, frames: &[Bytes], upto: u64) -> bool {
        if self.phase == Phase::Closed {
            return false;
        }
        self.phase = Phase::Live;
        self.skip_upto = upto;
        for f in frames {
            self.push_rest(f, 0);
        }
        true
    }

    /// The queued chunks, front first (for a vectored write).
    pub(crate) fn chunks(&self) -> impl Iterator<Item = &Bytes> {
        self.chunks.iter().map(|c| &c.bytes)
    }

    /// Removes `n` bytes the socket took from the front.
    pub(crate) fn consume(&mut self, mut n: usize) {
        self.queued = self.queued.saturating_sub(n);
        while n > 0 {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            let len = front.bytes.len();
            if front.small {
                self.own -= n.min(len);
            }
            if n >= len {
                n -= len;
                self.chunks.pop_front();
                self.queued = self.queued.saturating_sub(CHUNK_OVERHEAD);
                self.own -= CHUNK_OVERHEAD;
                self.front = Front::Untouched;
            } else {
                front.bytes.advance(n);
                self.front = Front::Started;
                n = 0;
            }
        }
    }

    /// Where the queue stands after a write.
    pub(crate) fn state(&self) -> Drain {
        match self.phase {
            Phase::Closed => Drain::Closed,
            _ if !self.chunks.is_empty() => Drain::Pending,
            Phase::AwaitingResync => Drain::NeedsResync,
            Phase::Live => Drain::Empty,
        }
    }

    /// Closes the peer and frees the queue; later offers return `Closed`.
    pub(crate) fn close(&mut self) {
        self.phase = Phase::Closed;
        self.chunks.clear();
        self.queued = 0;
        self.own = 0;
    }

    /// How the queue's charge to the memory budget must change: bytes to
    /// charge (positive) or give back (negative), in [`GRANULE`] steps.
    /// The caller applies it to the budget.
    pub(crate) fn recharge(&mut self) -> isize {
        let want = self.own.div_ceil(GRANULE) * GRANULE;
        let change = want as isize - self.charged as isize;
        self.charged = want;
        change
    }

    /// What the memory budget is charged for this queue now.
    pub(crate) fn charged(&self) -> usize {
        self.charged
    }

    /// Memory the queue holds now: bytes plus [`CHUNK_OVERHEAD`] per chunk.
    pub(crate) fn queued(&self) -> usize {
        self.queued
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What one queued chunk of `len` bytes is charged.
    const fn cost(len: usize) -> usize {
        len + CHUNK_OVERHEAD
    }

    fn frame(len: usize, tag: u8) -> Bytes {
        Bytes::from(vec![tag; len])
    }

    /// Everything queued, concatenated.
    fn contents(q: &Queue) -> Vec<u8> {
        q.chunks().flat_map(|c| c.iter().copied()).collect()
    }

    #[test]
    fn an_empty_queue_accepts_any_frame_and_queues_the_rest() {
        let mut q = Queue::new(10);
        let f = frame(100, 1);
        assert_eq!(q.offer_live(f.len(), 1), Verdict::Accept);
        q.push_rest(&f, 40);
        assert_eq!(q.queued(), cost(60));
        assert_eq!(q.state(), Drain::Pending);
    }

    #[test]
    fn overflow_drops_the_queue_and_awaits_a_catch_up() {
        let mut q = Queue::new(cost(60) + cost(30));
        q.push_rest(&frame(60, 1), 0);
        assert_eq!(q.offer_live(30, 2), Verdict::Accept);
        q.push_rest(&frame(30, 2), 0);
        assert_eq!(q.offer_live(1, 3), Verdict::Overflow);
        assert_eq!(q.queued(), 0);
        assert_eq!(q.state(), Drain::NeedsResync);
        // Until the catch-up, live frames are dropped; control frames pass.
        assert_eq!(q.offer_live(1, 4), Verdict::Dropped);
        assert_eq!(q.offer(2), Verdict::Accept);
    }

    #[test]
    fn frames_larger_than_the_bound_keep_one_in_flight_plus_the_next() {
        let mut q = Queue::new(1000);
        let big = frame(5000, 1);
        assert_eq!(q.offer_live(big.len(), 1), Verdict::Accept);
        q.push_rest(&big, 1000);
        // 4000 bytes of frame 1 still queued: frame 2 may follow it.
        assert_eq!(q.offer_live(big.len(), 2), Verdict::Accept);
        q.push_rest(&big, 0);
        // A third would mean two whole frames behind: skip forward.
        assert_eq!(q.offer_live(big.len(), 3), Verdict::Overflow);
        assert_eq!(contents(&q), vec![1; 4000], "the started frame stays");
        // Control frames still respect the plain bound.
        let mut q = Queue::new(1000);
        q.push_rest(&big, 0);
        assert_eq!(q.offer(5000), Verdict::Dropped);
    }

    #[test]
    fn tiny_frames_are_charged_their_overhead() {
        let mut q = Queue::new(4096);
        let mut n = 0;
        while q.offer(2) == Verdict::Accept {
            q.push_rest(&frame(2, 9), 0);
            n += 1;
        }
        // 2-byte pongs: the bound counts what they hold, not 2 bytes each.
        assert_eq!(n, 4096 / cost(2));
        assert!(q.queued() <= 4096);
    }

    #[test]
    fn small_chunks_are_copied_out_of_the_buffer_they_came_from() {
        let big = Bytes::from(vec![5u8; 100_000]);
        let small = big.slice(10..20);
        let mut q = Queue::new(1 << 20);
        q.push_rest(&small, 0);
        q.push_rest(&big.slice(0..50_000), 0);
        let chunks: Vec<&Bytes> = q.chunks().collect();
        let inside = |c: &Bytes| {
            let p = c.as_ptr() as usize;
            p >= big.as_ptr() as usize && p < big.as_ptr() as usize + big.len()
        };
        assert!(!inside(chunks[0]), "a 10-byte chunk must not pin 100 kB");
        assert!(inside(chunks[1]), "a large chunk is shared, not copied");
    }

    #[test]
    fn deferred_frames_are_shared_not_copied_and_charged_like_the_rest() {
        let burst = Bytes::from(vec![4u8; 3000]);
        let mut q = Queue::new(1 << 20);
        q.push_shared(&burst.slice(0..1000));
        q.push_shared(&burst.slice(1000..3000));
        let ptrs: Vec<*const u8> = q.chunks().map(|c| c.as_ptr()).collect();
        assert_eq!(ptrs, vec![burst.as_ptr(), burst[1000..].as_ptr()]);
        assert_eq!(q.queued(), cost(1000) + cost(2000));
        assert_eq!(q.own, cost(1000) + cost(2000));
        q.consume(1500);
        assert_eq!(contents(&q), vec![4u8; 1500]);
        assert_eq!(q.own, cost(1500));
    }

    #[test]
    fn a_half_written_front_frame_survives_an_overflow() {
        let mut q = Queue::new(cost(50) + cost(20));
        q.push_rest(&frame(80, 1), 30);
        q.push_rest(&frame(20, 2), 0);
        assert_eq!(q.offer_live(50, 3), Verdict::Overflow);
        // The rest of frame 1 stays, so the WebSocket stream stays valid.
        assert_eq!(contents(&q), vec![1; 50]);
        assert_eq!(q.queued(), cost(50));
        assert_eq!(q.state(), Drain::Pending);
        q.consume(50);
        assert_eq!(q.queued(), 0);
        assert_eq!(q.state(), Drain::NeedsResync);
    }

    #[test]
    fn an_untouched_front_frame_is_dropped_on_overflow() {
        let mut q = Queue::new(cost(80));
        q.push_rest(&frame(80, 1), 0);
        q.consume(0);
        assert_eq!(q.offer_live(50, 2), Verdict::Overflow);
        assert!(q.is_empty());
    }

    #[test]
    fn partial_writes_mark_the_front_started() {
        let mut q = Queue::new(1000);
        q.push_rest(&frame(10, 1), 0);
        q.push_rest(&frame(600, 2), 0);
        q.consume(15);
        assert_eq!(q.queued(), cost(595));
        assert_eq!(contents(&q), vec![2; 595]);
        assert_eq!(q.offer_live(300, 9), Verdict::Overflow);
        assert_eq!(contents(&q), vec![2; 595], "the started frame is kept");
    }

    #[test]
    fn resync_queues_the_catch_up_and_skips_what_it_covers() {
        let mut q = Queue::new(10);
        q.await_resync();
        assert_eq!(q.offer_live(5, 1), Verdict::Dropped);
        // A catch-up larger than the bound is still queued whole.
        assert!(q.resync(&[frame(30, 7), frame(4, 8)], 5));
        assert_eq!(q.queued(), cost(30) + cost(4));
        assert_eq!(q.offer_live(5, 5), Verdict::Skipped);
        assert_eq!(q.offer_live(5, 6), Verdict::Overflow);
    }

    #[test]
    fn control_frames_are_dropped_when_full_but_never_overflow() {
        let mut q = Queue::new(cost(8) + cost(2));
        q.push_rest(&frame(8, 1), 0);
        assert_eq!(q.offer(5), Verdict::Dropped);
        assert_eq!(q.offer(2), Verdict::Accept);
        assert_eq!(q.state(), Drain::Pending);
    }

    #[test]
    fn the_memory_charge_covers_small_chunks_and_moves_in_granules() {
        let mut q = Queue::new(1 << 30);
        // A large frame carries its own charge: only its chunk cost counts.
        q.push_rest(&frame(LARGE, 1), 0);
        assert_eq!(q.own, CHUNK_OVERHEAD);
        assert_eq!(q.recharge(), GRANULE as isize);
        assert_eq!(q.recharge(), 0, "nothing changed");
        // Small frames are charged in full.
        for _ in 0..10 {
            q.push_rest(&frame(3000, 2), 0);
        }
        assert_eq!(q.own, 11 * CHUNK_OVERHEAD + 30_000);
        let want = (11 * CHUNK_OVERHEAD + 30_000).div_ceil(GRANULE) * GRANULE;
        assert_eq!(q.recharge(), (want - GRANULE) as isize);
        assert_eq!(q.charged(), want);
        // Writing them out gives it back, a partial write included.
        q.consume(LARGE + 1500);
        assert_eq!(q.own, 10 * CHUNK_OVERHEAD + 28_500);
        q.consume(28_500);
        assert_eq!(q.own, 0);
        assert_eq!(q.recharge(), -(want as isize));
        q.push_rest(&frame(100, 3), 0);
        q.skip_forward();
        assert_eq!(q.own, 0, "a skipped queue holds nothing");
        q.push_rest(&frame(100, 3), 0);
        q.close();
        assert_eq!(q.own, 0);
    }

    #[test]
    fn closed_refuses_everything() {
        let mut q = Queue::new(10);
        q.push_rest(&frame(8, 1), 0);
        q.close();
        assert_eq!(q.queued(), 0);
        assert_eq!(q.offer(1), Verdict::Closed);
        assert_eq!(q.offer_live(1, 1), Verdict::Closed);
        assert!(!q.resync(&[frame(1, 1)], 1));
        assert_eq!(q.state(), Drain::Closed);
    }
}
