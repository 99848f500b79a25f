//! The rules of a peer's outbound queue, without a socket: what a frame
//! offered to a peer becomes (written, queued, skipped, dropped, or an
//! overflow that skips the peer forward), and how the queue shrinks as the
//! socket takes bytes. [`super::Egress`] runs these rules under its lock and
//! does the writing.
//!
//! **Invariant:** only the front chunk may be a partly written frame; every
//! chunk after it is a whole WebSocket frame (a frame is written straight
//! to the socket only when the queue is empty, so only what that write left
//! over is ever queued partly, and it is then the front). That is what lets
//! the *control lane* put a frame anywhere after the front.
//!
//! **Control lane:** pings, pongs and close frames go ahead of every queued
//! frame that has not started going out: after a partly written front (the
//! WebSocket stream must not interleave frames) and after the control
//! frames queued before them (they keep their order), before any untouched
//! bulk frame. The lane holds at most [`CONTROL_LANE`] bytes, counted in
//! the queue's bound and memory charge like any chunk; a full bulk queue
//! never refuses a control frame. A close frame also drops every untouched
//! bulk frame behind it (nothing may follow a close) and ends the stream.

use std::collections::VecDeque;

use bytes::{Buf, Bytes};

use crate::relay::resources::budget::LARGE;

/// What a queued chunk costs beyond its bytes (its slot in the deque, the
/// `Bytes` handle, the allocation header): charged against the bound, so a
/// flood of tiny frames cannot hold more memory than the bound says.
pub(crate) const CHUNK_OVERHEAD: usize = 64;

/// Frames up to this size are copied out of the buffer they were read into
/// before they are queued (once per receiver, or once for all receivers of
/// a live frame): cut from a large read buffer, a small frame would keep
/// the whole buffer alive.
pub(crate) const COPY_BELOW: usize = 2048;

/// Most bytes of control frames (pings, pongs, close) the lane holds; more
/// are dropped (the session answers a burst of pings with one pong anyway).
pub(crate) const CONTROL_LANE: usize = 16 * 1024;

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
    /// A close frame is queued: what is queued still goes out, nothing new
    /// is accepted.
    Closing,
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
    /// The first `lane` chunks are the control lane: control frames, and
    /// possibly (at index 0) a partly written frame of any kind. Bulk
    /// frames follow.
    lane: usize,
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
            lane: 0,
            skip_upto: 0,
        }
    }

    /// Decides about a live frame of channel sequence `seq` and `len` bytes.
    /// On overflow the queue is dropped, except a front chunk already partly
    /// written, and the peer awaits a catch-up.
    pub(crate) fn offer_live(&mut self, len: usize, seq: u64) -> Verdict {
        match self.phase {
            Phase::Closed => return Verdict::Closed,
            Phase::AwaitingResync | Phase::Closing => return Verdict::Dropped,
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

    /// Drops the queue, except a front chunk already partly written and
    /// the control lane, and marks the peer as awaiting a catch-up.
    pub(crate) fn skip_forward(&mut self) {
        self.drop_bulk();
        if self.phase == Phase::Live {
            self.phase = Phase::AwaitingResync;
        }
    }

    /// Drops every chunk that is neither in the control lane nor partly
    /// written, and recounts what is left.
    fn drop_bulk(&mut self) {
        let keep = match self.front {
            Front::Started => self.lane.max(1),
            Front::Untouched => self.lane,
        };
        self.chunks.truncate(keep);
        self.queued = 0;
        self.own = 0;
        for i in 0..self.chunks.len() {
            let (bytes, small) = (self.chunks[i].bytes.len(), self.chunks[i].small);
            self.queued += bytes + CHUNK_OVERHEAD;
            self.own += CHUNK_OVERHEAD + if small { bytes } else { 0 };
        }
        if self.chunks.is_empty() {
            self.front = Front::Untouched;
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
        } else if self.phase == Phase::Closing || self.would_overflow(len) {
            Verdict::Dropped
        } else {
            Verdict::Accept
        }
    }

    /// Decides about a control frame (ping, pong, close) for the control
    /// lane: accepted whatever bulk is queued, while the lane has room.
    pub(crate) fn offer_control(&self, len: usize) -> Verdict {
        let in_lane: usize = self
            .chunks
            .iter()
            .take(self.lane)
            .map(|c| c.bytes.len())
            .sum();
        match self.phase {
            Phase::Closed => Verdict::Closed,
            Phase::Closing => Verdict::Dropped,
            _ if in_lane + len > CONTROL_LANE => Verdict::Dropped,
            _ => Verdict::Accept,
        }
    }

    /// Queues an accepted control frame in the control lane: after a partly
    /// written front and the control frames before it, ahead of every
    /// untouched bulk frame. `written` bytes of it are already on the wire
    /// (only possible when the queue was empty). A `close` frame drops the
    /// bulk behind it and ends the stream (what is queued before it still
    /// goes out).
    pub(crate) fn push_control(&mut self, frame: &Bytes, written: usize, close: bool) {
        if self.chunks.is_empty() {
            self.lane = 0;
            self.front = if written > 0 {
                Front::Started
            } else {
                Front::Untouched
            };
        }
        let at = match self.front {
            Front::Started => self.lane.max(1),
            Front::Untouched => self.lane,
        }
        .min(self.chunks.len());
        let chunk = Chunk {
            bytes: Bytes::copy_from_slice(&frame[written.min(frame.len())..]),
            small: frame.len() < LARGE,
        };
        self.count_in(&chunk);
        self.chunks.insert(at, chunk);
        self.lane = at + 1;
        if close {
            self.drop_bulk();
            self.mark_closing();
        }
    }

    /// A close frame went out or is queued: nothing new is accepted, what
    /// is queued still goes out.
    pub(crate) fn mark_closing(&mut self) {
        if self.phase != Phase::Closed {
            self.phase = Phase::Closing;
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
    /// bytes of it are already on the wire. A small rest is copied (see
    /// [`COPY_BELOW`]).
    pub(crate) fn push_rest(&mut self, frame: &Bytes, written: usize) {
        let rest = if frame.len() - written <= COPY_BELOW {
            Bytes::copy_from_slice(&frame[written..])
        } else {
            frame.slice(written..)
        };
        self.push_back(rest, frame.len(), written);
    }

    /// [`Queue::push_rest`] for a live frame every receiver shares, never
    /// copied even when small: the fan-out copied a small frame out of its
    /// read buffer once for all receivers (see
    /// [`crate::relay::channel::Channel::publish`]), and a copy per receiver
    /// would cost an allocation and a copy per receiver per frame.
    pub(crate) fn push_shared(&mut self, frame: &Bytes, written: usize) {
        self.push_back(frame.slice(written..), frame.len(), written);
    }

    /// Queues `rest`, the part of a `len`-byte frame after its first
    /// `written` bytes.
    fn push_back(&mut self, rest: Bytes, len: usize, written: usize) {
        if self.chunks.is_empty() {
            self.front = if written > 0 {
                Front::Started
            } else {
                Front::Untouched
            };
        }
        let chunk = Chunk {
            bytes: rest,
            small: len < LARGE,
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

    /// True from a skip forward (or a join) until its catch-up is queued.
    pub(crate) fn awaits_resync(&self) -> bool {
        self.phase == Phase::AwaitingResync
    }

    /// Queues a catch-up covering live frames up to `upto` and ends a
    /// pending resynchronization. The catch-up may exceed the bound: it is
    /// the minimum the peer needs. False if the peer is closed.
    pub(crate) fn resync(&mut self, frames: &[Bytes], upto: u64) -> bool {
        if matches!(self.phase, Phase::Closed | Phase::Closing) {
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
                self.lane = self.lane.saturating_sub(1);
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
            Phase::Live | Phase::Closing => Drain::Empty,
        }
    }

    /// Closes the peer and frees the queue; later offers return `Closed`.
    pub(crate) fn close(&mut self) {
        self.phase = Phase::Closed;
        self.chunks.clear();
        self.lane = 0;
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
    fn live_frames_are_shared_even_small_and_partly_written() {
        // The fan-out copied the frame out of its read buffer once; every
        // receiver's queue then holds that one copy.
        let frame = Bytes::from(vec![6u8; 1040]);
        let (mut a, mut b) = (Queue::new(1 << 20), Queue::new(1 << 20));
        a.push_shared(&frame, 0);
        b.push_shared(&frame, 40);
        assert_eq!(a.chunks().next().map(|c| c.as_ptr()), Some(frame.as_ptr()));
        assert_eq!(
            b.chunks().next().map(|c| c.as_ptr()),
            Some(frame[40..].as_ptr())
        );
        assert_eq!(b.queued(), cost(1000));
        assert_eq!(b.front, Front::Started);
    }

    #[test]
    fn deferred_frames_are_shared_not_copied_and_charged_like_the_rest() {
        let burst = Bytes::from(vec![4u8; 3000]);
        let mut q = Queue::new(1 << 20);
        q.push_shared(&burst.slice(0..1000), 0);
        q.push_shared(&burst.slice(1000..3000), 0);
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
    fn control_frames_go_ahead_of_untouched_bulk_in_order() {
        let mut q = Queue::new(1 << 20);
        q.push_rest(&frame(100, 1), 0);
        q.push_shared(&frame(100, 2), 0);
        q.push_control(&frame(3, 8), 0, false);
        q.push_control(&frame(4, 9), 0, false);
        let order: Vec<(usize, u8)> = q.chunks().map(|c| (c.len(), c[0])).collect();
        assert_eq!(order, vec![(3, 8), (4, 9), (100, 1), (100, 2)]);
        // Bulk queued later stays behind the lane.
        q.push_shared(&frame(10, 3), 0);
        q.push_control(&frame(5, 7), 0, false);
        let tags: Vec<u8> = q.chunks().map(|c| c[0]).collect();
        assert_eq!(tags, vec![8, 9, 7, 1, 2, 3]);
        // Writing the lane out empties it; the next control frame goes first again.
        q.consume(3 + 4 + 5);
        q.push_control(&frame(2, 6), 0, false);
        let tags: Vec<u8> = q.chunks().map(|c| c[0]).collect();
        assert_eq!(tags, vec![6, 1, 2, 3]);
        // Into an empty queue, partly written: it is the started front.
        let mut q = Queue::new(1 << 20);
        q.push_control(&frame(10, 4), 3, false);
        q.push_control(&frame(2, 5), 0, false);
        q.push_shared(&frame(20, 1), 0);
        q.push_control(&frame(2, 6), 0, false);
        let order: Vec<(usize, u8)> = q.chunks().map(|c| (c.len(), c[0])).collect();
        assert_eq!(order, vec![(7, 4), (2, 5), (2, 6), (20, 1)]);
    }

    #[test]
    fn a_started_front_frame_stays_first() {
        let mut q = Queue::new(1 << 20);
        q.push_rest(&frame(100, 1), 40);
        q.push_shared(&frame(50, 2), 0);
        q.push_control(&frame(3, 8), 0, false);
        let order: Vec<(usize, u8)> = q.chunks().map(|c| (c.len(), c[0])).collect();
        assert_eq!(order, vec![(60, 1), (3, 8), (50, 2)]);
        // A front started by a partial write of queued bulk is kept first too.
        let mut q = Queue::new(1 << 20);
        q.push_shared(&frame(100, 1), 0);
        q.push_shared(&frame(100, 2), 0);
        q.consume(30);
        q.push_control(&frame(3, 8), 0, false);
        q.push_control(&frame(3, 9), 0, false);
        let tags: Vec<u8> = q.chunks().map(|c| c[0]).collect();
        assert_eq!(tags, vec![1, 8, 9, 2]);
        // The lane and the started front survive a skip-forward.
        q.skip_forward();
        let order: Vec<(usize, u8)> = q.chunks().map(|c| (c.len(), c[0])).collect();
        assert_eq!(order, vec![(70, 1), (3, 8), (3, 9)]);
        assert_eq!(q.queued(), cost(70) + 2 * cost(3));
        q.consume(70 + 3);
        q.push_control(&frame(1, 5), 0, false);
        let tags: Vec<u8> = q.chunks().map(|c| c[0]).collect();
        assert_eq!(tags, vec![9, 5], "control order holds after the front went");
    }

    #[test]
    fn control_frames_are_charged_and_bounded_by_the_lane_not_the_queue() {
        let mut q = Queue::new(cost(100));
        q.push_rest(&frame(100, 1), 0);
        // The bulk bound is reached: other frames are refused, control is not.
        assert_eq!(q.offer(10), Verdict::Dropped);
        assert_eq!(q.offer_control(10), Verdict::Accept);
        q.push_control(&frame(10, 8), 0, false);
        assert_eq!(q.queued(), cost(100) + cost(10));
        assert_eq!(q.own, cost(100) + cost(10), "small frames charged in full");
        assert_eq!(q.recharge(), GRANULE as isize);
        let mut n = 1;
        while q.offer_control(125) == Verdict::Accept {
            q.push_control(&frame(125, 9), 0, false);
            n += 1;
        }
        assert!(n * 125 <= CONTROL_LANE + 125, "the lane is bounded");
        assert!(n > 100);
        q.consume(10);
        assert_eq!(q.offer_control(125), Verdict::Accept, "room again");
    }

    #[test]
    fn a_close_frame_drops_untouched_bulk_and_ends_the_stream() {
        let mut q = Queue::new(1 << 20);
        q.push_rest(&frame(100, 1), 10);
        q.push_shared(&frame(100, 2), 0);
        q.push_control(&frame(2, 8), 0, false);
        q.push_control(&frame(4, 9), 0, true);
        let order: Vec<(usize, u8)> = q.chunks().map(|c| (c.len(), c[0])).collect();
        assert_eq!(order, vec![(90, 1), (2, 8), (4, 9)]);
        assert_eq!(q.queued(), cost(90) + cost(2) + cost(4));
        assert_eq!(q.offer_live(10, 1), Verdict::Dropped);
        assert_eq!(q.offer(10), Verdict::Dropped);
        assert_eq!(q.offer_control(10), Verdict::Dropped);
        assert!(!q.resync(&[frame(5, 5)], 1));
        assert_eq!(q.state(), Drain::Pending);
        q.consume(96);
        assert_eq!(q.state(), Drain::Empty);
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
