//! A source frame to every receiver, the same `Bytes` to each, in order.
//!
//! Fan-out of a big channel scales with cores: receivers are sharded by
//! peer id; the source's task writes shard 0 itself and, once the channel
//! has `--fanout-shard-min` receivers (and the runtime has more than one
//! worker), hands every frame to one worker task per other shard over a
//! bounded queue. A receiver always stays in its shard and a shard's frames
//! are handled by one task in order, so per-receiver order holds; the switch
//! to workers is one-way for the same reason.
//!
//! Bursts are written once per receiver (see [`crate::relay::egress`]): the
//! source's task defers while another whole frame is already buffered and
//! flushes after the last; a shard worker defers while more jobs wait.
//! Either ends a burst at [`Fanout::burst_max`] bytes per receiver (the
//! source's task sooner, when it gives the runtime a turn, see
//! [`crate::relay::session`]): a burst is queued for every receiver before
//! any of it is written, so one longer than a receiver's queue would skip
//! forward receivers that keep up.

use std::os::fd::RawFd;
use std::sync::atomic::{fence, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bitstream_wire::protocol::{self, FrameType, Header, ProtocolError};
use bitstream_wire::reader::WireMessage;
use bytes::Bytes;
use thiserror::Error;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TryRecvError;

use super::{lock, Channel};
use crate::relay::channel::cache::CacheError;
use crate::relay::egress::{send_batch, Live, Outcome, Write, BATCH, BATCH_MAX_BYTES, COPY_BELOW};
use crate::relay::resources::budget::Level;
use crate::relay::resources::bulk::Bulk;

/// How a channel spreads its fan-out over cores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fanout {
    /// Receiver shards (one per runtime worker; 1 disables sharding).
    pub(crate) shards: usize,
    /// Receivers at which the other shards move to their own tasks.
    pub(crate) shard_min: usize,
    /// Submit each frame's direct writes in batches through io_uring
    /// (`--egress-mode uring`).
    pub(crate) uring: bool,
    /// Longest a source's next message waits for its receivers
    /// (`--pace-wait-ms`, see [`super::pace`]; zero: never).
    pub(crate) pace_wait: Duration,
    /// Most bytes of frames a burst defers before it is written (half of
    /// `--egress-queue`): deferring queues a frame for every receiver at
    /// once, so a longer burst would overflow receivers that keep up.
    pub(crate) burst_max: usize,
}

impl Fanout {
    /// No sharding: the source's task writes every receiver.
    pub(crate) const SINGLE: Fanout = Fanout {
        shards: 1,
        shard_min: usize::MAX,
        uring: false,
        pace_wait: Duration::ZERO,
        burst_max: usize::MAX,
    };
}

/// One frame for a shard worker.
#[derive(Debug)]
pub(super) struct Job {
    frame: Bytes,
    seq: u64,
    len: u64,
}

/// Frames a shard worker may have queued before the source waits.
const SHARD_QUEUE: usize = 64;

/// Source messages of these types from this size up are checked and cached
/// on the bulk lane (see [`Channel::publish`]).
const OFFLOAD_FROM: usize = 256 * 1024;

/// Why a source message was refused (neither cached nor forwarded).
#[derive(Debug, Error)]
pub(crate) enum PublishError {
    /// It breaks PROTOCOL.md.
    #[error("{0}")]
    Invalid(#[from] ProtocolError),
    /// It does not fit the cached state (a bad delta, bad signal JSON, …).
    #[error("{0}")]
    Cache(#[from] CacheError),
    /// Checking it failed unexpectedly (a bug; the relay goes on).
    #[error("checking the message failed: {0}")]
    Check(String),
}

/// True for a message whose checks cost CPU in proportion to its size: a
/// large delta (ZRLE decoded to validate it, maybe folded into a keyframe)
/// or large signal JSON (parsed). Full frames cost a size check only.
fn costly(payload: &[u8]) -> bool {
    payload.len() >= OFFLOAD_FROM
        && Header::parse(payload).is_ok_and(|h| {
            matches!(
                h.frame_type(),
                FrameType::DeltaPixels | FrameType::SignalSync | FrameType::SignalDiff
            )
        })
}

/// True for the frame types a frame rate counts: pictures, not signal,
/// audio, haptics or pings.
fn is_picture(t: FrameType) -> bool {
    matches!(
        t,
        FrameType::Pixels
            | FrameType::CompressedPixels
            | FrameType::DeltaPixels
            | FrameType::Keyframe
            | FrameType::NeuralFrame
    )
}

impl Channel {
    /// Validates a source message and folds it into the catch-up state,
    /// then hands it to every receiver, in order, the same `Bytes` to each.
    /// On error the message is neither cached nor forwarded.
    ///
    /// A costly message is checked on the `bulk` lane's blocking threads
    /// (the source's task waits for it, so order holds): tens of
    /// milliseconds of ZRLE or JSON on a runtime worker would stall every
    /// other connection on it.
    ///
    /// With `more` (another message is already buffered, or the channel
    /// flushes in laps), receivers only queue it and the caller flushes
    /// with [`Channel::flush_step`].
    pub(crate) async fn publish(
        self: &Arc<Self>,
        msg: &WireMessage,
        bulk: &Bulk,
        more: bool,
    ) -> Result<(), PublishError> {
        let seq = if costly(msg.payload()) {
            let (ch, m) = (self.clone(), msg.clone());
            bulk.spawn_blocking(move || ch.check_and_cache(&m))
                .await
                .map_err(|e| PublishError::Check(e.to_string()))??
        } else {
            self.check_and_cache(msg)?
        };
        self.fan_out(msg, seq, more).await;
        Ok(())
    }

    /// Validates a source message and folds it into the cached state;
    /// returns its channel sequence.
    pub(super) fn check_and_cache(&self, msg: &WireMessage) -> Result<u64, PublishError> {
        let h = protocol::validate_source_message(msg.payload())?;
        self.lateness.note(h.timestamp);
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        self.cache_frame(&h, msg, seq)?;
        if is_picture(h.frame_type()) {
            self.traffic.pictures_in.inc();
        }
        Ok(seq)
    }

    /// Most bytes of frames a source's burst defers (see the module docs).
    pub(crate) fn burst_max(&self) -> usize {
        self.fanout.burst_max
    }

    /// Hands a checked message of channel sequence `seq` to every receiver.
    pub(super) async fn fan_out(self: &Arc<Self>, msg: &WireMessage, seq: u64, more: bool) {
        fence(Ordering::SeqCst);
        let len = msg.payload().len() as u64;
        // Queues share live frames: a small one is copied out of the
        // source's read buffer once here, not once per receiver that queues
        // it, so that it never keeps a larger buffer alive.
        let wire = if msg.wire.len() <= COPY_BELOW {
            Bytes::copy_from_slice(&msg.wire)
        } else {
            msg.wire.clone()
        };
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
                    let job = Job {
                        frame: wire.clone(),
                        seq,
                        len,
                    };
                    // A worker only ends with the channel, which we hold.
                    let _ = tx.send(job).await;
                }
                self.fan_shard(0, &wire, seq, len, more);
            }
            None => {
                for k in 0..self.receivers.len() {
                    self.fan_shard(k, &wire, seq, len, more);
                }
            }
        }
    }

    /// Folds a frame into the cached state and charges the state's growth
    /// to the budget; over the budget, the channel's cached state is dropped
    /// instead (the frame still goes out live).
    fn cache_frame(&self, h: &Header, msg: &WireMessage, seq: u64) -> Result<(), CacheError> {
        let mut w = lock(&self.writer);
        let snap = w.apply(h, msg, seq)?;
        // Every frame fanned out live, for `?resume=` (see `resume`).
        let anchor = h.frame_type() != FrameType::SignalSync;
        w.ring.push(h.seq, seq, &msg.wire, anchor);
        if let Some(uplink) = self.uplink.load().as_ref() {
            uplink.push(msg);
        }
        self.publish_sse(h, msg, seq);
        let charged = self.charged.load(Ordering::Relaxed);
        let size = w.size();
        // Caches stop growing first when the relay is short of memory.
        let room = size <= charged || self.budgets.memory.level() == Level::Normal;
        if room && self.budgets.cache.resize(charged, size) {
            self.charged.store(size, Ordering::Relaxed);
            if let Some(snap) = snap {
                self.cache.store(snap);
            }
        } else {
            w.shed();
            self.drop_cached(seq);
            self.traffic.cache_sheds.inc();
            if !room {
                self.budgets.memory.shed();
            }
            tracing::debug!(channel = %self.name, size, room, "cached state dropped: over --max-cache-memory, or --max-memory nearly used");
        }
        Ok(())
    }

    /// Hands a frame to every receiver of shard `k` (only queued, with
    /// `defer`).
    fn fan_shard(&self, k: usize, frame: &Bytes, seq: u64, len: u64, defer: bool) {
        let blocks = self.receivers[k].load();
        let mut tally = Tally::default();
        if self.fanout.uring && !defer && frame.len() <= BATCH_MAX_BYTES {
            // Receivers whose write waits for the batch, their locks held.
            let mut batch: Vec<Write<'_>> = Vec::with_capacity(BATCH.min(self.receiver_count()));
            for block in blocks.iter() {
                for r in block.iter() {
                    match r.egress.live(frame, seq, false, true) {
                        Live::Done(o) => tally.count(o),
                        Live::Write(w) => {
                            batch.push(w);
                            if batch.len() == BATCH {
                                write_batch(frame, &mut batch, &mut tally);
                            }
                        }
                    }
                }
            }
            write_batch(frame, &mut batch, &mut tally);
        } else {
            for block in blocks.iter() {
                for r in block.iter() {
                    tally.count(r.egress.send_live(frame, seq, defer));
                }
            }
        }
        if defer {
            self.lap_frame_queued(k, &blocks);
        }
        if tally.queued > 0 {
            self.traffic.queued.add(tally.queued);
        }
        if tally.skipped > 0 {
            self.traffic.slow_skips.add(tally.skipped);
        }
        if tally.delivered > 0 {
            self.traffic.frames_out.add(tally.delivered);
            self.traffic.bytes_out.add(tally.delivered * len);
        }
    }

    /// A shard worker's frame: written now, or (with `more` frames waiting
    /// and the burst under [`Fanout::burst_max`], or in laps) queued and
    /// the lap stepped once. `burst` counts the bytes the burst deferred.
    fn shard_job(&self, k: usize, job: &Job, more: bool, burst: &mut usize) {
        let laps = self.in_laps(job.frame.len());
        if !laps {
            *burst += job.frame.len();
        }
        let more = more && *burst < self.fanout.burst_max;
        if !more {
            *burst = 0;
        }
        let defer = more || laps;
        self.fan_shard(k, &job.frame, job.seq, job.len, defer);
        if defer && !more {
            self.lap_step(k);
        }
    }

    /// Spawns one worker task per shard but the first (once per channel).
    fn start_workers(self: &Arc<Self>) -> &Vec<mpsc::Sender<Job>> {
        self.workers.get_or_init(|| {
            (1..self.receivers.len())
                .map(|k| {
                    let (tx, rx) = mpsc::channel::<Job>(SHARD_QUEUE);
                    let weak = Arc::downgrade(self);
                    tokio::spawn(shard_worker(weak, k, rx));
                    tx
                })
                .collect()
        })
    }
}

/// Fans out shard `k`'s frames from `rx` until the channel is gone: takes
/// a frame when its lap allows (see [`super::lap`]) and steps the lap
/// between frames, yielding to the runtime after each step.
async fn shard_worker(weak: Weak<Channel>, k: usize, mut rx: mpsc::Receiver<Job>) {
    let mut burst = 0;
    loop {
        let Some(ch) = weak.upgrade() else { return };
        if ch.lap_allows(k) {
            match rx.try_recv() {
                Ok(job) => {
                    ch.shard_job(k, &job, !rx.is_empty(), &mut burst);
                    continue;
                }
                Err(TryRecvError::Disconnected) => return,
                Err(TryRecvError::Empty) => {}
            }
        }
        if ch.lap_step(k) {
            drop(ch);
            tokio::task::yield_now().await;
            continue;
        }
        drop(ch);
        // Nothing left to write: wait for the next frame.
        let Some(job) = rx.recv().await else { return };
        let Some(ch) = weak.upgrade() else { return };
        ch.shard_job(k, &job, !rx.is_empty(), &mut burst);
    }
}

/// What one shard's fan-out of a frame did, counted once at the end.
#[derive(Debug, Default)]
struct Tally {
    delivered: u64,
    queued: u64,
    skipped: u64,
}

impl Tally {
    fn count(&mut self, o: Outcome) {
        match o {
            Outcome::Sent | Outcome::Deferred => self.delivered += 1,
            Outcome::Queued => {
                self.delivered += 1;
                self.queued += 1;
            }
            Outcome::Overflow => self.skipped += 1,
            Outcome::NotSent => {}
        }
    }
}

/// Writes `frame` to every socket of `batch` with one io_uring submission
/// (or one `send` each where io_uring is unavailable) and settles each
/// receiver, releasing its lock.
fn write_batch(frame: &Bytes, batch: &mut Vec<Write<'_>>, tally: &mut Tally) {
    if batch.is_empty() {
        return;
    }
    let fds: Vec<RawFd> = batch.iter().map(|w| w.fd).collect();
    let mut results = Vec::with_capacity(fds.len());
    if send_batch(frame, &fds, &mut results) {
        for (w, r) in batch.drain(..).zip(results) {
            tally.count(w.finish(frame, r));
        }
    } else {
        for w in batch.drain(..) {
            tally.count(w.write_now(frame));
        }
    }
}
