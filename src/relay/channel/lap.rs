//! Flushing deferred frames a block of receivers at a time, in laps.
//!
//! A channel with more receivers than one roster block ([`BLOCK`], 256)
//! never writes a frame to all of them in one go: its fan-out only queues
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

use std::ops::Range;

use super::roster::{Snapshot, BLOCK};
use super::{lock, Channel};
use crate::relay::egress::{Flush, BATCH};

/// Most frames an owner queues per lap (see the module docs).
pub(crate) const LAP_FRAMES: usize = 4;

/// Where one shard's laps stand.
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

impl Channel {
    /// True when this channel's fan-out should only queue each frame and
    /// leave the writing to laps of [`Channel::flush_step`]: it has more
    /// receivers than one block.
    pub(crate) fn in_laps(&self) -> bool {
        self.receiver_count() > BLOCK
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
        lap.left = blocks.len();
        lap.blocks = blocks.len();
        lap.since_frame = 0;
        lap.roster = Some(blocks.clone());
    }

    /// True when shard `k`'s owner may queue another frame: no lap is in
    /// progress, or the last frame was queued long enough ago that at most
    /// [`LAP_FRAMES`] go into one lap.
    pub(super) fn lap_allows(&self, k: usize) -> bool {
        let lap = lock(&self.laps[k]);
        lap.left == 0 || (lap.since_frame + 1) * LAP_FRAMES > lap.blocks
    }

    /// Flushes the block under shard `k`'s hand and moves the hand on;
    /// true while the lap has steps left.
    pub(super) fn lap_step(&self, k: usize) -> bool {
        let mut lap = lock(&self.laps[k]);
        if lap.left == 0 {
            return false;
        }
        let blocks = self.receivers[k].load();
        if !lap
            .roster
            .as_ref()
            .is_some_and(|r| std::sync::Arc::ptr_eq(r, &blocks))
        {
            // Receivers may have moved between blocks: once more round
            // the new roster.
            lap.left = lap.left.max(blocks.len());
            lap.roster = Some(blocks.clone());
        }
        if blocks.is_empty() {
            lap.left = 0;
        } else {
            let i = lap.next % blocks.len();
            self.flush_block(&blocks[i]);
            lap.next = (i + 1) % blocks.len();
            lap.left -= 1;
            lap.since_frame += 1;
        }
        if lap.left == 0 {
            // Nothing keeps leavers alive between laps.
            lap.roster = None;
        }
        lap.left > 0
    }

    /// Writes what is queued for every receiver of `block` (with
    /// `--egress-mode uring`, the first `writev` of each in one batch).
    fn flush_block(&self, block: &[std::sync::Arc<crate::relay::peer::Peer>]) {
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
                    super::fanout::flush_batch(&mut batch);
                }
            }
        }
        super::fanout::flush_batch(&mut batch);
    }
}
