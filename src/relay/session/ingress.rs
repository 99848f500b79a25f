//! The read side of a peer's connection: the wire crate's
//! [`MessageReader`] fed from the peer's shared socket, with the large
//! buffers it holds charged to the relay's memory budget. All progress
//! lives in the reader, so [`Ingress::poll_next`] may return `Pending`
//! anywhere and be polled again later (the session's event loop polls it
//! between its other work).
//!
//! A message larger than a read chunk is charged in full as soon as its
//! head announces it, before its buffer is allocated; if the budget cannot
//! take it, the peer is closed with 1013 (try again later) and nothing is
//! allocated. Once complete, a message of [`LARGE`] bytes or more carries
//! its own charge (see [`charged`]) until its last reference is dropped.
//!
//! The rest of a message of [`BULK_FROM`] bytes or more is read on the
//! [bulk lane](crate::relay::resources::bulk) at a lower OS priority: the reader moves
//! there with the socket and comes back with the message. [`Ingress`]
//! polls that task's handle, which it keeps until the reader is back.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use bitstream_wire::reader::{Incoming, MessageReader, ReadError, WireMessage};
use bitstream_wire::ws;
use thiserror::Error;

use crate::relay::net::conn::Conn;
use crate::relay::resources::budget::{charged, Budget, Level, LARGE};
use crate::relay::resources::bulk::BULK_FROM;

/// Why reading from a peer stopped.
#[derive(Debug, Error)]
pub(crate) enum RecvError {
    /// The socket failed.
    #[error("socket error: {0}")]
    Io(#[from] io::Error),
    /// The peer closed the TCP connection without a close frame.
    #[error("connection closed by peer")]
    Eof,
    /// The peer broke RFC 6455 or sent an over-size message.
    #[error("{0}")]
    Read(#[from] ReadError),
    /// The relay's memory budget cannot take the message the peer is sending.
    #[error("a {size}-byte message does not fit in --max-memory now")]
    OverBudget {
        /// Bytes the reader needed to hold.
        size: usize,
    },
    /// The bulk lane's read task failed (a bug; the peer is dropped).
    #[error("bulk read failed: {0}")]
    Bulk(String),
}

impl RecvError {
    /// The close code to send the peer, if the connection is still usable.
    pub(crate) fn close_code(&self) -> Option<u16> {
        match self {
            RecvError::Io(_) | RecvError::Eof | RecvError::Bulk(_) => None,
            RecvError::Read(e) => Some(e.close_code()),
            RecvError::OverBudget { .. } => Some(ws::CLOSE_TRY_AGAIN),
        }
    }
}

/// Bytes a connection may read before it gives its worker back once, so a
/// message arriving at full speed does not keep other connections waiting
/// until it ends (messages of [`BULK_FROM`] and more are read on the bulk
/// lane anyway). Not smaller: a yield sends the task behind every other
/// busy task, so a source of 1 MB frames yielding every 256 KiB got a
/// quarter of the turns it needs while peers flooded tiny messages
/// (`loadtest hostile`, silent-pingers phase: healthy p99 600–900 ms
/// against 23–73 ms with 1 MiB, alternating runs).
const TURN_BYTES: usize = 1 << 20;

/// What a bulk read hands back: the reader, and the message or the error.
type BulkRead = (MessageReader, Result<Incoming, RecvError>);

/// A peer's reader and what it is charged. See the module docs.
pub(crate) struct Ingress {
    /// The reader; a placeholder while it is away on the bulk lane.
    reader: MessageReader,
    memory: Arc<Budget>,
    /// What the reader's large buffers are charged now.
    charged: usize,
    /// The bulk lane, and the read it is doing for this peer, if any.
    bulk: Handle,
    away: Option<JoinHandle<BulkRead>>,
    /// Bytes read since the message being read began or the worker was
    /// last given back (see [`TURN_BYTES`]).
    turn: usize,
}

impl Drop for Ingress {
    fn drop(&mut self) {
        if let Some(task) = self.away.take() {
            task.abort();
        }
        self.memory.release(self.charged);
    }
}

impl Ingress {
    /// Reads through `reader`, charging `memory`, large messages on the
    /// `bulk` lane.
    pub(crate) fn new(reader: MessageReader, memory: Arc<Budget>, bulk: Handle) -> Self {
        Self {
            reader,
            memory,
            charged: 0,
            bulk,
            away: None,
            turn: 0,
        }
    }

    /// True if a whole frame is already buffered (see
    /// [`MessageReader::frame_ready`]).
    pub(crate) fn frame_ready(&self) -> bool {
        self.reader.frame_ready()
    }

    /// Drops whatever is buffered and its charge (the connection is closing).
    pub(crate) fn discard(&mut self) {
        if let Some(task) = self.away.take() {
            task.abort();
        }
        self.reader.discard();
        self.memory.release(std::mem::take(&mut self.charged));
    }

    /// The next message (or control frame) if one is complete or completes
    /// with what the socket holds; otherwise `cx` is woken when more may
    /// come. Gives the worker back once per
    /// [`TURN_BYTES`] read (waking itself at once).
    pub(crate) fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        stream: &Conn,
    ) -> Poll<Result<Incoming, RecvError>> {
        loop {
            if let Some(task) = self.away.as_mut() {
                let back = ready!(Pin::new(task).poll(cx));
                self.away = None;
                let (reader, msg) = back.map_err(|e| RecvError::Bulk(e.to_string()))?;
                self.reader = reader;
                self.turn = 0;
                return Poll::Ready(msg.map(|m| self.charge_message(m)));
            }
            if let Some(msg) = self.reader.parse()? {
                self.turn = 0;
                return Poll::Ready(Ok(self.charge_message(msg)));
            }
            self.charge_buffers()?;
            if self.reader.reading() >= BULK_FROM {
                let mut reader = std::mem::replace(&mut self.reader, placeholder());
                let stream = stream.clone();
                self.away = Some(self.bulk.spawn(async move {
                    let msg = read_message(&mut reader, &stream).await;
                    (reader, msg)
                }));
                continue;
            }
            if self.turn >= TURN_BYTES {
                self.turn = 0;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            ready!(stream.poll_read_ready(cx))?;
            match stream.try_read_buf(self.reader.read_buf()) {
                Ok(0) => return Poll::Ready(Err(RecvError::Eof)),
                Ok(n) => self.turn += n,
                // Readiness was cleared: the next poll_read_ready registers.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e.into())),
            }
        }
    }

    /// Charges the reader's large buffers before it allocates them; short
    /// of memory, it first gives up its buffers kept for reuse.
    fn charge_buffers(&mut self) -> Result<(), RecvError> {
        if self.charged > 0 && self.memory.level() != Level::Normal {
            self.reader.drop_spares();
        }
        let held = self.reader.held();
        if held == self.charged {
            return Ok(());
        }
        if !self.memory.resize_reader(self.charged, held) {
            self.memory.shed();
            return Err(RecvError::OverBudget { size: held });
        }
        self.charged = held;
        Ok(())
    }

    /// Gives a large message its own charge, for as long as it lives.
    fn charge_message(&self, msg: Incoming) -> Incoming {
        let charge = |m: WireMessage| {
            let len = m.wire.len();
            if len < LARGE {
                return m;
            }
            self.memory.force(len);
            WireMessage {
                wire: charged(m.wire, len, &self.memory),
                head_len: m.head_len,
            }
        };
        match msg {
            Incoming::Binary(m) => Incoming::Binary(charge(m)),
            Incoming::Text(m) => Incoming::Text(charge(m)),
            other => other,
        }
    }
}

/// An empty reader standing in for one away on the bulk lane.
fn placeholder() -> MessageReader {
    MessageReader::new(ws::Side::Server, 0, 0, &[])
}

/// Reads until `reader` has a message (on the bulk lane: its charge was
/// taken when the head arrived).
async fn read_message(reader: &mut MessageReader, stream: &Conn) -> Result<Incoming, RecvError> {
    let mut since_yield = 0;
    loop {
        if let Some(msg) = reader.parse()? {
            return Ok(msg);
        }
        read_turn(reader, stream, &mut since_yield).await?;
    }
}

/// One read of at most [`TURN_BYTES`], after giving the worker back if
/// this turn already read that much.
async fn read_turn(
    reader: &mut MessageReader,
    stream: &Conn,
    since_yield: &mut usize,
) -> Result<(), RecvError> {
    if *since_yield >= TURN_BYTES {
        *since_yield = 0;
        tokio::task::yield_now().await;
    }
    stream.readable().await?;
    match stream.try_read_buf(reader.read_buf()) {
        Ok(0) => Err(RecvError::Eof),
        Ok(n) => {
            *since_yield += n;
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
        Err(e) => Err(e.into()),
    }
}
