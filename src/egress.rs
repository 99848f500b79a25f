//! The write side of a connection: a per-peer outbound queue bounded in
//! bytes, written with non-blocking (vectored) writes of shared `Bytes`.
//!
//! The fan-out calls [`Egress::send_live`] for every receiver back to back
//! from the task that read the frame, so the payload is still in cache when
//! it is written 64 times. A socket that takes the whole frame costs one
//! `write` and no queueing; whatever it does not take is queued (a refcount,
//! never a copy) and the peer's own task drains the queue with `writev`
//! when the socket is writable, coalescing queued frames into one syscall.
//!
//! A receiver whose queue would exceed the bound is *skipped forward*: its
//! queue is dropped (except a frame already half on the wire) and it is
//! marked for resynchronization; once its socket has drained, its task sends
//! it the channel's current catch-up state. Frames already covered by that
//! catch-up (sequence ≤ `skip_upto`) are not sent twice.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Buf, Bytes};
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// Most queued chunks handed to one `writev`.
const MAX_IOV: usize = 64;

/// What happened to a frame handed to [`Egress::send_live`] or [`Egress::send`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Written to the socket in full.
    Sent,
    /// Queued (in part or whole) behind earlier data.
    Queued,
    /// Already covered by the peer's catch-up; not sent again.
    Skipped,
    /// Not sent: the peer awaits resynchronization or its queue is full.
    Dropped,
    /// This frame overflowed the queue: the queue was dropped and the peer
    /// marked for resynchronization.
    Overflow,
    /// The peer is closed.
    Closed,
}

/// What [`Egress::drain`] left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drain {
    /// Everything is written.
    Empty,
    /// The socket would block with data still queued.
    Pending,
    /// The queue is empty and the peer needs a catch-up.
    NeedsResync,
    /// The socket failed or the peer was closed.
    Closed,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Bytes>,
    queued: usize,
    /// The front chunk is partly written and must be finished.
    front_started: bool,
    closed: bool,
    needs_resync: bool,
    skip_upto: u64,
}

/// How frames reach the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum EgressMode {
    /// Written by the task that fans the frame out, back to back for every
    /// receiver; only what the socket does not take is queued (the default).
    #[default]
    Direct,
    /// Always queued; each peer's own task writes its queue with `writev`.
    /// Kept as the measured alternative (see `flamegraphs/README.md`).
    Queued,
}

/// A peer's outbound side. Shared (`Arc`) by the fan-out and the peer's task.
#[derive(Debug)]
pub struct Egress {
    mode: EgressMode,
    stream: Arc<TcpStream>,
    state: Mutex<State>,
    wake: Notify,
    limit: usize,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Egress {
    /// An egress on `stream` whose queue holds at most `limit` bytes.
    pub fn new(stream: Arc<TcpStream>, limit: usize, mode: EgressMode) -> Self {
        Self {
            mode,
            stream,
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            limit,
        }
    }

    /// Marks the peer as awaiting a catch-up: live frames are dropped until
    /// [`Egress::resync`] runs. A receiver is marked before it joins the list.
    pub fn mark_resync(&self) {
        lock(&self.state).needs_resync = true;
    }

    /// The socket this egress writes to.
    pub fn stream(&self) -> &Arc<TcpStream> {
        &self.stream
    }

    /// Resolves when the queue has data for the peer's task to drain.
    pub async fn wanted(&self) {
        self.wake.notified().await
    }

    /// Hands a live frame of channel sequence `seq` to this receiver.
    pub fn send_live(&self, frame: &Bytes, seq: u64) -> Outcome {
        let mut st = lock(&self.state);
        if st.closed {
            return Outcome::Closed;
        }
        if st.needs_resync {
            return Outcome::Dropped;
        }
        if seq <= st.skip_upto {
            return Outcome::Skipped;
        }
        if !st.queue.is_empty() && st.queued + frame.len() > self.limit {
            let keep = if st.front_started {
                st.queue.pop_front()
            } else {
                None
            };
            st.queue.clear();
            st.queued = 0;
            if let Some(front) = keep {
                st.queued = front.len();
                st.queue.push_back(front);
            } else {
                st.front_started = false;
            }
            st.needs_resync = true;
            drop(st);
            self.wake.notify_one();
            return Outcome::Overflow;
        }
        self.push_or_write(st, frame)
    }

    /// Hands a frame outside the live sequence (control frames, inputs,
    /// signaling) to this peer; dropped if the queue is full.
    pub fn send(&self, frame: &Bytes) -> Outcome {
        let st = lock(&self.state);
        if st.closed {
            return Outcome::Closed;
        }
        if !st.queue.is_empty() && st.queued + frame.len() > self.limit {
            return Outcome::Dropped;
        }
        self.push_or_write(st, frame)
    }

    fn push_or_write(&self, mut st: MutexGuard<'_, State>, frame: &Bytes) -> Outcome {
        if st.queue.is_empty() && self.mode == EgressMode::Direct {
            match self.stream.try_write(frame) {
                Ok(n) if n == frame.len() => return Outcome::Sent,
                Ok(n) => {
                    st.front_started = n > 0;
                    st.queued += frame.len() - n;
                    st.queue.push_back(frame.slice(n..));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    st.front_started = false;
                    st.queued += frame.len();
                    st.queue.push_back(frame.clone());
                }
                Err(_) => {
                    st.closed = true;
                    return Outcome::Closed;
                }
            }
            drop(st);
            self.wake.notify_one();
            Outcome::Queued
        } else {
            let was_empty = st.queue.is_empty();
            st.queued += frame.len();
            st.queue.push_back(frame.clone());
            drop(st);
            if was_empty {
                self.wake.notify_one();
            }
            Outcome::Queued
        }
    }

    /// Sends a catch-up ahead of any later live frame and ends a pending
    /// resynchronization. `catch_up` runs under this peer's lock and returns
    /// the frames and the live sequence they cover: loading the channel's
    /// snapshot inside the lock is what guarantees that no frame is both
    /// dropped as "awaiting resync" and missing from the snapshot. The
    /// catch-up may exceed the queue bound: it is the minimum the peer needs.
    pub fn resync(&self, catch_up: impl FnOnce() -> (Vec<Bytes>, u64)) {
        let mut st = lock(&self.state);
        if st.closed {
            return;
        }
        let (frames, upto) = catch_up();
        st.needs_resync = false;
        st.skip_upto = upto;
        let was_empty = st.queue.is_empty();
        for f in &frames {
            st.queued += f.len();
            st.queue.push_back(f.clone());
        }
        drop(st);
        if was_empty && !frames.is_empty() {
            self.wake.notify_one();
        }
    }

    /// Writes as much of the queue as the socket takes, without blocking.
    pub fn drain(&self) -> Drain {
        let mut st = lock(&self.state);
        loop {
            if st.closed {
                return Drain::Closed;
            }
            if st.queue.is_empty() {
                return if st.needs_resync {
                    Drain::NeedsResync
                } else {
                    Drain::Empty
                };
            }
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            let mut n_iov = 0;
            for (slot, chunk) in iov.iter_mut().zip(st.queue.iter()) {
                *slot = IoSlice::new(chunk);
                n_iov += 1;
            }
            match self.stream.try_write_vectored(&iov[..n_iov]) {
                Ok(mut n) => {
                    st.queued -= n;
                    while n > 0 {
                        let Some(front) = st.queue.front_mut() else {
                            break;
                        };
                        if n >= front.len() {
                            n -= front.len();
                            st.queue.pop_front();
                            st.front_started = false;
                        } else {
                            front.advance(n);
                            st.front_started = true;
                            n = 0;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Drain::Pending,
                Err(_) => {
                    st.closed = true;
                    st.queue.clear();
                    st.queued = 0;
                    return Drain::Closed;
                }
            }
        }
    }

    /// Marks the peer closed and frees its queue; later sends return `Closed`.
    pub fn close(&self) {
        let mut st = lock(&self.state);
        st.closed = true;
        st.queue.clear();
        st.queued = 0;
    }

    /// Bytes queued now.
    pub fn queued_bytes(&self) -> usize {
        lock(&self.state).queued
    }

    /// True while the peer waits for a catch-up.
    pub fn needs_resync(&self) -> bool {
        lock(&self.state).needs_resync
    }
}
