//! The write side of a connection: a per-peer outbound [`queue`] bounded in
//! bytes, written with non-blocking (vectored) writes of shared `Bytes`.
//!
//! The fan-out calls [`Egress::send_live`] for every receiver back to back
//! from the task that read the frame, so the payload is still in cache when
//! it is written 64 times. A socket that takes the whole frame costs one
//! `write` and no queueing; whatever it does not take is queued (a refcount,
//! never a copy) and the peer's own task drains the queue with `writev`
//! when the socket is writable, coalescing queued frames into one syscall.
//!
//! A live frame may always follow a queue holding less than one more frame
//! of its size (one frame in flight plus the next), so frames larger than
//! the bound reach a receiver slightly slower than the stream every other
//! time. Beyond that, a receiver whose queue would exceed the bound is
//! *skipped forward*: its
//! queue is dropped (except a frame already half on the wire) and it is
//! marked for resynchronization; once its socket has drained, its task sends
//! it the channel's current catch-up state. Frames already covered by that
//! catch-up (sequence ≤ the catch-up's) are not sent twice.
//!
//! When frames arrive faster than they can be written one by one (a source
//! that already has the next frame buffered, a shard worker with more jobs
//! waiting), the fan-out *defers*: it queues the frame without writing and
//! [`Egress::flush`]es every receiver once the burst is queued, so each
//! receiver gets the whole burst in one `writev`. A relay that keeps up
//! never defers (bursts of one); one that falls behind spends one syscall
//! per receiver per burst instead of one per frame.
//!
//! The queue's own memory (small frames it copied or holds, and the cost of
//! each queued chunk) is charged to the relay's memory budget; large frames
//! carry their own charge. When the budget is nearly used (see
//! [`crate::relay::resources::budget`]), a receiver holding more than one frame queued
//! is skipped forward instead of queueing more (one still writing the
//! previous frame is not behind, and frees nothing by being skipped).

mod backlog;
mod depth;
mod queue;
mod uring;

use std::io::{self, IoSlice};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use bytes::Bytes;
use tokio::sync::futures::Notified;
use tokio::sync::Notify;

pub(crate) use backlog::Backlog;
use backlog::Place;
use depth::Depth;
pub(crate) use queue::{Drain, COPY_BELOW};
use queue::{Queue, Verdict};
pub(crate) use uring::{send_batch, writev_batch, BATCH, BATCH_MAX_BYTES};

use crate::relay::config::EgressMode;
use crate::relay::net::conn::{set_notsent_lowat, Conn};
use crate::relay::resources::budget::{Budget, Level};
use crate::relay::resources::clock::now_ms;

/// Most queued chunks handed to one `writev`.
const MAX_IOV: usize = 64;

/// What happened to a frame handed to [`Egress::send_live`] or [`Egress::send`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Written to the socket in full.
    Sent,
    /// Queued (in part or whole) behind earlier data.
    Queued,
    /// Queued to be written by the next [`Egress::flush`].
    Deferred,
    /// Not sent: covered by the peer's catch-up, awaiting one, queue full
    /// (outside the live stream), or the peer is closed.
    NotSent,
    /// This frame overflowed the queue: the queue was dropped and the peer
    /// marked for resynchronization.
    Overflow,
}

/// How the part of a frame the socket did not take is queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Push {
    /// A live frame, shared, never copied (see [`Queue::push_shared`]).
    Shared,
    /// Another frame (inputs, signaling): the rest as [`Queue::push_rest`] keeps it.
    Rest,
    /// A control frame on the control lane; `close` ends the stream.
    Control { close: bool },
}

/// What [`Egress::live`] did with a live frame.
#[derive(Debug)]
pub(crate) enum Live<'a> {
    /// Handled: sent, queued, deferred or not sent.
    Done(Outcome),
    /// Accepted with nothing queued ahead: the caller writes it to
    /// [`Write::fd`] and reports with [`Write::finish`].
    Write(Write<'a>),
}

/// A live frame accepted for a socket the caller writes itself (in a batch
/// with other receivers'). Holds the peer's lock, so nothing else writes to
/// the socket or queues ahead of the frame until [`Write::finish`].
#[derive(Debug)]
pub(crate) struct Write<'a> {
    egress: &'a Egress,
    q: MutexGuard<'a, Queue>,
    /// The socket to write the frame to.
    pub(crate) fd: std::os::fd::RawFd,
}

impl Write<'_> {
    /// Settles the frame after the caller's write returned `written`.
    pub(crate) fn finish(self, frame: &Bytes, written: io::Result<usize>) -> Outcome {
        self.egress
            .after_write(self.q, frame, Push::Shared, written)
    }

    /// Writes the frame with one non-blocking `send` (when no batch could
    /// be submitted) and settles it.
    pub(crate) fn write_now(self, frame: &Bytes) -> Outcome {
        let written = self.egress.stream.try_write(frame);
        self.finish(frame, written)
    }
}

/// A flush whose first `writev` the caller submits (in a batch with other
/// receivers'). Holds the peer's lock, which keeps the queued chunks that
/// [`Flush::iov`] points into alive and unchanged until [`Flush::finish`].
#[derive(Debug)]
pub(crate) struct Flush<'a> {
    egress: &'a Egress,
    q: MutexGuard<'a, Queue>,
    /// The socket to write to.
    pub(crate) fd: std::os::fd::RawFd,
    /// The queued chunks, front first (at most [`MAX_IOV`]).
    pub(crate) iov: Vec<libc::iovec>,
}

// SAFETY: the iovecs point into `Bytes` chunks owned by the locked queue
// (shared, immutable buffers); they are only read, under the lock.
unsafe impl Send for Flush<'_> {}

impl Flush<'_> {
    /// Settles the queue after the caller's `writev` returned `written`,
    /// writes on if the socket took everything offered, and leaves the rest
    /// to the peer's task.
    pub(crate) fn finish(mut self, written: io::Result<usize>) {
        match written {
            Ok(n) => self.q.consume(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => self.q.close(),
        }
        self.egress.flushed(self.q);
    }
}

/// A peer's outbound side. Shared (`Arc`) by the fan-out and the peer's task.
#[derive(Debug)]
pub(crate) struct Egress {
    mode: EgressMode,
    stream: Conn,
    queue: Mutex<Queue>,
    wake: Notify,
    /// The relay's memory budget.
    memory: Arc<Budget>,
    /// A receiver's channel's count of congested receivers, and this
    /// receiver's place in it (see [`Egress::track`]).
    backlog: OnceLock<Arc<Backlog>>,
    place: Place,
    /// What the socket may hold unsent in the kernel (see [`depth`]).
    depth: Depth,
}

impl Drop for Egress {
    fn drop(&mut self) {
        let q = self.queue.get_mut().unwrap_or_else(|e| e.into_inner());
        self.memory.release(q.charged());
        if let Some(b) = self.backlog.get() {
            self.place.clear(b);
        }
    }
}

impl Egress {
    /// An egress on `stream` whose queue holds at most `limit` bytes,
    /// charging what it holds to `memory`.
    pub(crate) fn new(
        stream: impl Into<Conn>,
        limit: usize,
        mode: EgressMode,
        memory: Arc<Budget>,
    ) -> Self {
        Self {
            mode,
            stream: stream.into(),
            queue: Mutex::new(Queue::new(limit)),
            wake: Notify::new(),
            memory,
            backlog: OnceLock::new(),
            place: Place::default(),
            depth: Depth::default(),
        }
    }

    /// Lets the socket's kernel depth (`TCP_NOTSENT_LOWAT`, set to `start`
    /// when it was accepted) grow to `full` once the peer keeps up (see
    /// [`depth`]).
    pub(crate) fn with_depth(mut self, start: u32, full: u32) -> Self {
        self.depth = Depth::new(start, full);
        self
    }

    /// Counts `n` bytes the socket took toward its depth (see [`depth`]);
    /// nothing, not even a clock read, once it has earned it or when the
    /// depth never changes.
    fn count_taken(&self, n: usize) {
        if n > 0 && self.depth.earning() {
            self.set_depth(self.depth.took(n, now_ms()));
        }
    }

    /// Sets the socket's kernel depth, when [`depth`] says so.
    fn set_depth(&self, bytes: Option<u32>) {
        if let Some(b) = bytes {
            set_notsent_lowat(self.stream.tcp(), b);
        }
    }

    /// Makes this receiver count in its channel's `backlog` while its
    /// queue holds bytes (once; later calls are ignored).
    pub(crate) fn track(&self, backlog: &Arc<Backlog>) {
        let q = self.lock();
        if self.backlog.set(backlog.clone()).is_ok() {
            self.count(&q);
        }
    }

    /// Stops counting this receiver for good (it left its channel).
    pub(crate) fn untrack(&self) {
        let _q = self.lock();
        if let Some(b) = self.backlog.get() {
            self.place.clear(b);
        }
    }

    /// Brings this receiver's place in its channel's backlog up to date.
    fn count(&self, q: &Queue) {
        if let Some(b) = self.backlog.get() {
            // A closed queue is empty.
            self.place.update(b, !q.is_empty(), q.awaits_resync());
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Brings the queue's charge to the memory budget up to date (after
    /// anything that changed the queue).
    fn settle(&self, q: &mut Queue) {
        match q.recharge() {
            0 => {}
            n if n > 0 => self.memory.force(n as usize),
            n => self.memory.release(n.unsigned_abs()),
        }
        self.count(q);
    }

    /// True when the relay is so short of memory that a peer holding more
    /// than `allowed` bytes queued must not queue more.
    fn backlog_refused(&self, q: &Queue, allowed: usize) -> bool {
        q.queued() > allowed && self.memory.level() == Level::NoBacklog
    }

    /// Marks the peer as awaiting a catch-up: live frames are dropped until
    /// [`Egress::resync`] runs. A receiver is marked before it joins the list.
    pub(crate) fn mark_resync(&self) {
        self.lock().await_resync();
    }

    /// The socket this egress writes to.
    pub(crate) fn stream(&self) -> &Conn {
        &self.stream
    }

    /// A waiter that completes when the queue has data for the peer's task
    /// to drain (a permit is kept if nobody waits).
    pub(crate) fn wanted(&self) -> Notified<'_> {
        self.wake.notified()
    }

    /// Hands a live frame of channel sequence `seq` to this receiver; with
    /// `defer`, only queues it for the next [`Egress::flush`]. A queued
    /// frame is shared, never copied: a small one must not be cut from a
    /// larger buffer (the fan-out copies it out once, see [`COPY_BELOW`]).
    pub(crate) fn send_live(&self, frame: &Bytes, seq: u64, defer: bool) -> Outcome {
        match self.live(frame, seq, defer, false) {
            Live::Done(o) => o,
            Live::Write(w) => w.write_now(frame),
        }
    }

    /// [`Egress::send_live`], except that with `batch` (and `--egress-mode
    /// uring`, a plain socket and nothing queued) the write is left to the
    /// caller, who holds this peer's lock until it reports the result.
    pub(crate) fn live(&self, frame: &Bytes, seq: u64, defer: bool, batch: bool) -> Live<'_> {
        let mut q = self.lock();
        let verdict = match q.offer_live(frame.len(), seq) {
            // A receiver still writing the previous frame is not behind; one
            // holding more than a frame of this size is.
            Verdict::Accept if self.backlog_refused(&q, frame.len()) => {
                q.skip_forward();
                self.memory.shed();
                Verdict::Overflow
            }
            v => v,
        };
        Live::Done(match verdict {
            Verdict::Accept if defer => {
                q.push_shared(frame, 0);
                self.settle(&mut q);
                Outcome::Deferred
            }
            Verdict::Accept if batch && q.is_empty() && self.mode == EgressMode::Uring => {
                match self.stream.raw_fd() {
                    Some(fd) => {
                        return Live::Write(Write {
                            egress: self,
                            q,
                            fd,
                        })
                    }
                    None => self.write_or_queue(q, frame, Push::Shared),
                }
            }
            Verdict::Accept => self.write_or_queue(q, frame, Push::Shared),
            Verdict::Overflow => {
                self.settle(&mut q);
                drop(q);
                self.depth.skipped();
                self.wake.notify_one();
                Outcome::Overflow
            }
            Verdict::Skipped | Verdict::Dropped | Verdict::Closed => Outcome::NotSent,
        })
    }

    /// Hands a frame outside the live sequence (control frames, inputs,
    /// signaling) to this peer; dropped if the queue is full.
    pub(crate) fn send(&self, frame: &Bytes) -> Outcome {
        let mut q = self.lock();
        match q.offer(frame.len()) {
            Verdict::Accept if self.backlog_refused(&q, 0) => {
                self.memory.shed();
                Outcome::NotSent
            }
            Verdict::Accept => self.write_or_queue(q, frame, Push::Rest),
            _ => Outcome::NotSent,
        }
    }

    /// Hands a control frame (ping, pong, close: `close` true) to this peer
    /// on the control lane (see [`queue`]): it goes ahead of every queued
    /// frame that has not started going out, so a congested receiver still
    /// gets its pings in time. A close frame ends the stream: untouched
    /// frames behind it are dropped and nothing is accepted after it.
    pub(crate) fn send_control(&self, frame: &Bytes, close: bool) -> Outcome {
        let q = self.lock();
        if q.offer_control(frame.len()) != Verdict::Accept {
            return Outcome::NotSent;
        }
        self.write_or_queue(q, frame, Push::Control { close })
    }

    /// Writes an accepted frame straight to the socket when nothing is
    /// queued (direct mode), and queues whatever the socket did not take
    /// (as `push` says).
    fn write_or_queue(&self, q: MutexGuard<'_, Queue>, frame: &Bytes, push: Push) -> Outcome {
        let written = if q.is_empty() && self.mode.writes_directly() {
            self.stream.try_write(frame)
        } else {
            Ok(0)
        };
        self.after_write(q, frame, push, written)
    }

    /// Settles an accepted frame after `written` (what a non-blocking
    /// write of it returned): sent, or the rest queued as `push` says, or
    /// the peer closed on a write error.
    fn after_write(
        &self,
        mut q: MutexGuard<'_, Queue>,
        frame: &Bytes,
        push: Push,
        written: io::Result<usize>,
    ) -> Outcome {
        let was_empty = q.is_empty();
        if let Ok(n) = written {
            self.count_taken(n);
        }
        let written = match written {
            Ok(n) if n == frame.len() => {
                if push == (Push::Control { close: true }) {
                    q.mark_closing();
                }
                return Outcome::Sent;
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(_) => {
                q.close();
                self.settle(&mut q);
                return Outcome::NotSent;
            }
        };
        match push {
            Push::Shared => q.push_shared(frame, written),
            Push::Rest => q.push_rest(frame, written),
            Push::Control { close } => q.push_control(frame, written, close),
        }
        self.settle(&mut q);
        drop(q);
        if was_empty {
            self.wake.notify_one();
        }
        Outcome::Queued
    }

    /// Sends a catch-up ahead of any later live frame and ends a pending
    /// resynchronization. `catch_up` runs under this peer's lock and returns
    /// the frames and the live sequence they cover: loading the channel's
    /// snapshot inside the lock is what guarantees that no frame is both
    /// dropped as "awaiting resync" and missing from the snapshot.
    pub(crate) fn resync(&self, catch_up: impl FnOnce() -> (Vec<Bytes>, u64)) {
        let mut q = self.lock();
        let was_empty = q.is_empty();
        let (frames, upto) = catch_up();
        let resynced = q.resync(&frames, upto);
        self.settle(&mut q);
        if resynced && was_empty && !frames.is_empty() {
            drop(q);
            self.wake.notify_one();
        }
    }

    /// Writes what deferred sends queued, as far as the socket takes it,
    /// and leaves the rest to the peer's task.
    pub(crate) fn flush(&self) {
        self.flush_locked(self.lock());
    }

    /// [`Egress::flush`] on the queue its caller has locked.
    fn flush_locked(&self, q: MutexGuard<'_, Queue>) {
        if q.is_empty() {
            return;
        }
        if !self.mode.writes_directly() {
            // Written by the peer's own task only (e.g. TLS: never encrypt
            // on the fan-out's time).
            drop(q);
            self.wake.notify_one();
            return;
        }
        // One lock for the check and the write: flushes run for every
        // receiver after every burst.
        self.flushed(q);
    }

    /// Writes what a burst deferred, as [`Egress::drain_and_wake`], and
    /// counts what the socket took toward its depth (see [`depth`]).
    fn flushed(&self, q: MutexGuard<'_, Queue>) {
        let written = self.drain_and_wake(q);
        self.count_taken(written);
    }

    /// Writes as much of the locked queue as the socket takes and wakes the
    /// peer's task if anything is left for it (data, or a catch-up to send).
    fn drain_and_wake(&self, mut q: MutexGuard<'_, Queue>) -> usize {
        let (state, written) = self.drain_locked(&mut q);
        drop(q);
        match state {
            Drain::Empty | Drain::Closed => {}
            Drain::Pending | Drain::NeedsResync => self.wake.notify_one(),
        }
        written
    }

    /// [`Egress::flush`], except that with `--egress-mode uring`, a plain
    /// socket and at most [`BATCH_MAX_BYTES`] queued, the first `writev` is
    /// left to the caller (to submit in
    /// a batch with other receivers'), who holds this peer's lock until it
    /// reports the result with [`Flush::finish`].
    pub(crate) fn begin_flush(&self) -> Option<Flush<'_>> {
        let q = self.lock();
        if q.is_empty() {
            return None;
        }
        match self.stream.raw_fd() {
            Some(fd)
                if self.mode == EgressMode::Uring
                    && q.state() == Drain::Pending
                    && q.queued() <= BATCH_MAX_BYTES =>
            {
                let iov = q
                    .chunks()
                    .take(MAX_IOV)
                    .map(|c| libc::iovec {
                        iov_base: c.as_ptr() as *mut libc::c_void,
                        iov_len: c.len(),
                    })
                    .collect();
                Some(Flush {
                    egress: self,
                    q,
                    fd,
                    iov,
                })
            }
            _ => {
                self.flush_locked(q);
                None
            }
        }
    }

    /// Writes as much of the queue as the socket takes, without blocking.
    pub(crate) fn drain(&self) -> Drain {
        self.drain_counting().0
    }

    /// [`Egress::drain`], also telling how many bytes went out (counted
    /// toward the socket's depth, see [`depth`]).
    pub(crate) fn drain_counting(&self) -> (Drain, usize) {
        let (state, written) = self.drain_locked(&mut self.lock());
        self.count_taken(written);
        (state, written)
    }

    /// [`Egress::drain_counting`] on the queue its caller has locked.
    fn drain_locked(&self, q: &mut Queue) -> (Drain, usize) {
        let mut written = 0;
        while q.state() == Drain::Pending {
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            let mut n_iov = 0;
            for (slot, chunk) in iov.iter_mut().zip(q.chunks()) {
                *slot = IoSlice::new(chunk);
                n_iov += 1;
            }
            match self.stream.try_write_vectored(&iov[..n_iov]) {
                Ok(n) => {
                    written += n;
                    q.consume(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => q.close(),
            }
        }
        // A TLS session may still hold ciphertext of what was written.
        if q.state() == Drain::Empty {
            match self.stream.flush_pending() {
                Ok(false) => {}
                Ok(true) => {
                    self.settle(q);
                    return (Drain::Pending, written);
                }
                Err(_) => q.close(),
            }
        }
        self.settle(q);
        (q.state(), written)
    }

    /// Bench support ([`crate::bench`]): [`Egress::drain`] as if the socket
    /// took everything queued, without writing it (the bookkeeping of a
    /// drain, none of its I/O). Returns the bytes taken off the queue.
    pub(crate) fn drain_without_io(&self) -> usize {
        let mut q = self.lock();
        let n: usize = q.chunks().map(Bytes::len).sum();
        q.consume(n);
        self.settle(&mut q);
        n
    }

    /// Marks the peer closed and frees its queue; later sends are not sent.
    pub(crate) fn close(&self) {
        let mut q = self.lock();
        q.close();
        self.settle(&mut q);
    }

    /// Bytes queued now.
    pub(crate) fn queued_bytes(&self) -> usize {
        self.lock().queued()
    }
}
