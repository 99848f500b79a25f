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

mod queue;

use std::io::{self, IoSlice};
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::Notify;

pub(crate) use queue::Drain;
use queue::{Queue, Verdict};

use crate::relay::config::EgressMode;
use crate::relay::conn::Conn;

/// Most queued chunks handed to one `writev`.
const MAX_IOV: usize = 64;

/// What happened to a frame handed to [`Egress::send_live`] or [`Egress::send`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Written to the socket in full.
    Sent,
    /// Queued (in part or whole) behind earlier data.
    Queued,
    /// Not sent: covered by the peer's catch-up, awaiting one, queue full
    /// (outside the live stream), or the peer is closed.
    NotSent,
    /// This frame overflowed the queue: the queue was dropped and the peer
    /// marked for resynchronization.
    Overflow,
}

/// A peer's outbound side. Shared (`Arc`) by the fan-out and the peer's task.
#[derive(Debug)]
pub(crate) struct Egress {
    mode: EgressMode,
    stream: Conn,
    queue: Mutex<Queue>,
    wake: Notify,
}

impl Egress {
    /// An egress on `stream` whose queue holds at most `limit` bytes.
    pub(crate) fn new(stream: impl Into<Conn>, limit: usize, mode: EgressMode) -> Self {
        Self {
            mode,
            stream: stream.into(),
            queue: Mutex::new(Queue::new(limit)),
            wake: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
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

    /// Resolves when the queue has data for the peer's task to drain.
    pub(crate) async fn wanted(&self) {
        self.wake.notified().await
    }

    /// Hands a live frame of channel sequence `seq` to this receiver.
    pub(crate) fn send_live(&self, frame: &Bytes, seq: u64) -> Outcome {
        let mut q = self.lock();
        match q.offer_live(frame.len(), seq) {
            Verdict::Accept => self.write_or_queue(q, frame),
            Verdict::Overflow => {
                drop(q);
                self.wake.notify_one();
                Outcome::Overflow
            }
            Verdict::Skipped | Verdict::Dropped | Verdict::Closed => Outcome::NotSent,
        }
    }

    /// Hands a frame outside the live sequence (control frames, inputs,
    /// signaling) to this peer; dropped if the queue is full.
    pub(crate) fn send(&self, frame: &Bytes) -> Outcome {
        let mut q = self.lock();
        match q.offer(frame.len()) {
            Verdict::Accept => self.write_or_queue(q, frame),
            _ => Outcome::NotSent,
        }
    }

    /// Writes an accepted frame straight to the socket when nothing is
    /// queued (direct mode), and queues whatever the socket did not take.
    fn write_or_queue(&self, mut q: MutexGuard<'_, Queue>, frame: &Bytes) -> Outcome {
        let was_empty = q.is_empty();
        let written = if was_empty && self.mode == EgressMode::Direct {
            match self.stream.try_write(frame) {
                Ok(n) if n == frame.len() => return Outcome::Sent,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                Err(_) => {
                    q.close();
                    return Outcome::NotSent;
                }
            }
        } else {
            0
        };
        q.push_rest(frame, written);
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
        if q.resync(&frames, upto) && was_empty && !frames.is_empty() {
            drop(q);
            self.wake.notify_one();
        }
    }

    /// Writes as much of the queue as the socket takes, without blocking.
    pub(crate) fn drain(&self) -> Drain {
        self.drain_counting().0
    }

    /// [`Egress::drain`], also telling how many bytes went out.
    pub(crate) fn drain_counting(&self) -> (Drain, usize) {
        let mut q = self.lock();
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
                Ok(true) => return (Drain::Pending, written),
                Err(_) => q.close(),
            }
        }
        (q.state(), written)
    }

    /// Marks the peer closed and frees its queue; later sends are not sent.
    pub(crate) fn close(&self) {
        self.lock().close();
    }

    /// Bytes queued now.
    pub(crate) fn queued_bytes(&self) -> usize {
        self.lock().queued()
    }
}
