//! Flushing deferred frames a block of receivers at a time, in laps.
//!
//! A channel with more receivers than one roster block ([`BLOCK`], 256)
//! never writes a small frame (up to [`BATCH_MAX_BYTES`], 64 KiB) to all
//! of them in one go: its fan-out only queues
//! the frame (a refcount per receiver, no system call) and the shard's owner
//! (the source's task, or a shard worker) then flushes one block per *step*,
//! going round the shard's blocks like a clock hand and yielding to the
//! runtime between steps. Each step hands every receiver of the block all
//! it has queued in one `writev` (with `--egress-mode uring`, one
//! submission for the block).
//!
//! Why: one pass over 15,000 sockets takes ~150 ms of kernel time on a
//! core. Written frame by frame, a frame that arrives just after a pass
//! began waits for that pass to end and then for its own, so the last
//! receivers get it two passes late. Between steps the owner reads the
//! next frame as soon as it arrives and queues it on every receiver; the
//! hand goes on from where it is, so receivers ahead of it get both frames
//! in this lap and those behind it in the next: a frame reaches everyone
//! within one lap of arriving, and a relay that cannot keep up with one
//! write per frame per receiver sends several frames per write instead
//! of falling further behind.
//!
//! A *lap* is one visit to every block; queuing a frame restarts the count
//! (the hand goes once more all the way round from where it stands), and a
//! roster that changed under the lap (a join or a leave moves receivers
//! between blocks) makes it go all the way round the new roster. The owner
//! takes at most [`LAP_FRAMES`] frames per lap
//! ([`Channel::lap_allows`]): a source faster than the laps is then read
//! no faster than they go, and TCP pushes back on it as it would on a
//! relay writing frame by frame, instead of queues growing until
//! receivers are skipped forward.
//!
//! Larger frames go out frame by frame as before: their cost is in the
//! bytes, not the system calls, so coalescing gains little, and a lap's
//! worth of them queued per receiver would meet the egress bound.

use std::ops::Range;
use std::os::fd::RawFd;
use std::sync::Arc;

use super::roster::{Snapshot, BLOCK};
use super::{lock, Channel};
use crate::relay::channel::peer::Peer;
use crate::relay::egress::{writev_batch, Flush, BATCH, BATCH_MAX_BYTES};

/// Most frames an owner queues per lap (see the module docs): at most
/// 8 × 64 KiB queued per receiver by a lap.
pub(crate) const LAP_FRAMES: usize = 8;

/// Where one shard's laps stand (pure bookkeeping; [`Channel::lap_step`]
/// does the writing).
#[derive(Debug, Default)]
pub(super) struct Lap {
    /// The block the next step flushes.
    next: usize,
    /// Steps left in the lap (0: nothing deferred on this shard).
    left: usize,
    /// Blocks in the shard when the last frame was queued.
    blocks: usize,
    /// Steps since the last frame was queued.
    since_frame: usize,
    /// The roster the lap walks, while one is in progress (held so that a
    /// changed roster is told apart from a new one at the same address).
    roster: Option<Snapshot>,
}

impl Lap {
    /// A frame was just queued on every receiver of a shard of `blocks`
    /// blocks: a new lap from where the hand is.
    fn queued(&mut self, blocks: usize) {
        self.left = blocks;
        self.blocks = blocks;
        self.since_frame = 0;
    }

    /// True when another frame may be queued: no lap is in progress, the
    /// shard is one block (a burst goes out in the one step after it), or
    /// the last frame was queued long enough ago that at most
    /// [`LAP_FRAMES`] go into one lap.
    fn allows(&self) -> bool {
        self.left == 0 || self.blocks <= 1 || self.since_frame * LAP_FRAMES >= self.blocks
    }

    /// The block to flush next, of a roster of `blocks` blocks
    /// (`changed`: not the roster the lap was walking), moving the hand
    /// on; `None` when the lap is over.
    fn advance(&mut self, blocks: usize, changed: bool) -> Option<usize> {
        if changed && self.left > 0 {
            // Receivers may have moved between blocks: once round the new
            // roster (every receiver is somewhere in it).
            self.left = blocks;
        }
        if self.left == 0 {
            return None;
        }
        if blocks == 0 {
            self.left = 0;
            return None;
        }
        let i = self.next % blocks;
        self.next = (i + 1) % blocks;
        self.left -= 1;
        self.since_frame += 1;
        Some(i)
    }
}

impl Channel {
    /// True when this channel's fan-out should only queue a frame of
    /// `len` bytes and leave the writing to laps of
    /// [`Channel::flush_step`]: it has more receivers than one block, and
    /// the frame is small.
    pub(crate) fn in_laps(&self, len: usize) -> bool {
        len <= BATCH_MAX_BYTES && self.receiver_count() > BLOCK
    }

    /// The shards the source's task flushes: all of them until shard
    /// workers start, then shard 0.
    fn own_shards(&self) -> Range<usize> {
        if self.workers.get().is_some() {
            0..1
        } else {
            0..self.receivers.len()
        }
    }

    /// One step of every lap the source's task owns (see the module docs);
    /// true while some lap has steps left.
    pub(crate) fn flush_step(&self) -> bool {
        let mut more = false;
        for k in self.own_shards() {
            more |= self.lap_step(k);
        }
        more
    }

    /// False while a lap of the source's task has taken its
    /// [`LAP_FRAMES`]: the next frame waits for a step.
    pub(crate) fn may_publish(&self) -> bool {
        self.own_shards().all(|k| self.lap_allows(k))
    }

    /// Finishes every lap at once (the source is leaving: what it sent
    /// goes out now).
    pub(crate) fn flush_deferred(&self) {
        for k in 0..self.receivers.len() {
            while self.lap_step(k) {}
        }
    }

    /// Starts a new lap of shard `k` from where its hand is: a frame was
    /// just queued on every receiver of `blocks`.
    pub(super) fn lap_frame_queued(&self, k: usize, blocks: &Snapshot) {
        let mut lap = lock(&self.laps[k]);
        lap.queued(blocks.len());
        lap.roster = Some(blocks.clone());
    }

    /// True when shard `k`'s owner may queue another frame (see
    /// [`Lap::allows`]).
    pub(super) fn lap_allows(&self, k: usize) -> bool {
        lock(&self.laps[k]).allows()
    }

    /// Flushes the block under shard `k`'s hand and moves the hand on;
    /// true while the lap has steps left.
    pub(super) fn lap_step(&self, k: usize) -> bool {
        let mut lap = lock(&self.laps[k]);
        if lap.left == 0 {
            return false;
        }
        let blocks = self.receivers[k].load();
        let changed = !lap.roster.as_ref().is_some_and(|r| Arc::ptr_eq(r, &blocks));
        if changed {
            lap.roster = Some(blocks.clone());
        }
        if let Some(i) = lap.advance(blocks.len(), changed) {
            self.flush_block(&blocks[i]);
        }
        if lap.left == 0 {
            // Nothing keeps leavers alive between laps.
            lap.roster = None;
        }
        lap.left > 0
    }

    /// Writes what is queued for every receiver of `block` (with
    /// `--egress-mode uring`, the first `writev` of each in one batch).
    fn flush_block(&self, block: &[Arc<Peer>]) {
        if !self.fanout.uring {
            for r in block {
                r.egress.flush();
            }
            return;
        }
        let mut batch: Vec<Flush<'_>> = Vec::with_capacity(BATCH.min(block.len()));
        for r in block {
            if let Some(f) = r.egress.begin_flush() {
                batch.push(f);
                if batch.len() == BATCH {
                    flush_batch(&mut batch);
                }
            }
        }
        flush_batch(&mut batch);
    }
}

/// Submits the first `writev` of every flush of `batch` at once (or writes
/// each on its own where io_uring is unavailable) and settles each
/// receiver, releasing its lock.
fn flush_batch(batch: &mut Vec<Flush<'_>>) {
    if batch.is_empty() {
        return;
    }
    let writes: Vec<(RawFd, &[libc::iovec])> = batch.iter().map(|f| (f.fd, &f.iov[..])).collect();
    let mut results = Vec::with_capacity(writes.len());
    let submitted = writev_batch(&writes, &mut results);
    drop(writes);
    if submitted {
        for (f, r) in batch.drain(..).zip(results) {
            f.finish(r);
        }
    } else {
        for f in batch.drain(..) {
            f.finish(Ok(0));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// One thing that happens to a shard's lap.
    #[derive(Debug, Clone)]
    enum Event {
        /// A frame is queued on every receiver.
        Frame,
        /// The owner takes one step.
        Step,
        /// Receivers join or leave: the roster now has this many blocks
        /// (and is a new snapshot).
        Roster(usize),
    }

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            3 => Just(Event::Frame),
            6 => Just(Event::Step),
            1 => (0usize..12).prop_map(Event::Roster),
        ]
    }

    proptest! {
        /// Whatever happened before, once the lap is over every block of
        /// the roster as it then is was flushed after the last frame was
        /// queued and after the roster last changed: nothing deferred is
        /// left behind.
        #[test]
        fn a_finished_lap_flushed_every_block_after_the_last_frame(
            start in 1usize..12,
            events in proptest::collection::vec(event(), 0..200),
        ) {
            let mut lap = Lap::default();
            let mut blocks = start;
            let mut changed = false;
            // Per block: flushed since the last frame or roster change.
            let mut fresh = vec![true; blocks];
            for e in events {
                match e {
                    Event::Frame => {
                        lap.queued(blocks);
                        changed = false;
                        fresh = vec![false; blocks];
                    }
                    Event::Roster(n) => {
                        // Only a lap in progress has anything deferred.
                        blocks = n;
                        changed = true;
                        fresh = vec![lap.left == 0; blocks];
                    }
                    Event::Step => {
                        if let Some(i) = lap.advance(blocks, changed) {
                            prop_assert!(i < blocks);
                            fresh[i] = true;
                        }
                        changed = false;
                    }
                }
            }
            // Step to the end (never more than one round of the roster).
            let mut steps = 0;
            while let Some(i) = lap.advance(blocks, changed) {
                changed = false;
                prop_assert!(i < blocks);
                fresh[i] = true;
                steps += 1;
                prop_assert!(steps <= blocks, "the lap does not end");
            }
            prop_assert!(fresh.iter().all(|&f| f), "a block left unflushed: {fresh:?}");
        }

        /// A new lap from any hand position visits each block exactly once.
        #[test]
        fn a_lap_visits_each_block_once(blocks in 1usize..40, hand in 0usize..40) {
            let mut lap = Lap { next: hand, ..Lap::default() };
            lap.queued(blocks);
            let mut seen = vec![0; blocks];
            while let Some(i) = lap.advance(blocks, false) {
                seen[i] += 1;
            }
            prop_assert!(seen.iter().all(|&n| n == 1), "{seen:?}");
        }

        /// A source that always has a frame ready gets at most
        /// LAP_FRAMES + 1 frames into any lap's worth of steps, and is not
        /// held back much further: at least one frame per
        /// ceil(blocks / LAP_FRAMES) steps.
        #[test]
        fn a_flooding_source_gets_a_bounded_number_of_frames_per_lap(blocks in 2usize..70) {
            let mut lap = Lap::default();
            // The step count at which each frame was queued.
            let mut frames = Vec::new();
            let mut step = 0usize;
            while step < 20 * blocks {
                if lap.allows() {
                    lap.queued(blocks);
                    frames.push(step);
                } else {
                    prop_assert!(lap.advance(blocks, false).is_some());
                    step += 1;
                }
            }
            for (n, &at) in frames.iter().enumerate() {
                let within = frames[n..].iter().take_while(|&&s| s < at + blocks).count();
                prop_assert!(
                    within <= LAP_FRAMES + 1,
                    "{within} frames within {blocks} steps from step {at}"
                );
            }
            // One frame per ceil(blocks / LAP_FRAMES) steps.
            let per_lap = blocks / blocks.div_ceil(LAP_FRAMES);
            prop_assert!(
                frames.len() >= 19 * per_lap,
                "{} frames in 20 laps of {blocks} steps", frames.len()
            );
        }
    }

    /// With one block (a small channel), a burst is never held back: the
    /// frames of a burst are all queued before the one step that writes
    /// them.
    #[test]
    fn one_block_never_holds_a_burst_back() {
        let mut lap = Lap::default();
        for _ in 0..100 {
            assert!(lap.allows());
            lap.queued(1);
        }
        assert_eq!(lap.advance(1, false), Some(0));
        assert_eq!(lap.advance(1, false), None);
    }
}
