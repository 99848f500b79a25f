//! The read side of a peer's connection: the wire crate's
//! [`MessageReader`] fed from the peer's shared socket, with the large
//! buffers it holds charged to the relay's memory budget. All progress
//! lives in the reader, so [`Ingress::next`] is cancel-safe (sessions
//! `select!` on it).
//!
//! A message larger than a read chunk is charged in full as soon as its
//! head announces it, before its buffer is allocated; if the budget cannot
//! take it, the peer is closed with 1013 (try again later) and nothing is
//! allocated. Once complete, a message of [`LARGE`] bytes or more carries
//! its own charge (see [`charged`]) until its last reference is dropped.

use std::io;
use std::sync::Arc;

use bitstream_wire::reader::{Incoming, MessageReader, ReadError, WireMessage};
use bitstream_wire::ws;
use bytes::BufMut;
use thiserror::Error;
use tokio::net::TcpStream;

use crate::relay::budget::{charged, Budget, Level, LARGE};

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
}

impl RecvError {
    /// The close code to send the peer, if the connection is still usable.
    pub(crate) fn close_code(&self) -> Option<u16> {
        match self {
            RecvError::Io(_) | RecvError::Eof => None,
            RecvError::Read(e) => Some(e.close_code()),
            RecvError::OverBudget { .. } => Some(ws::CLOSE_TRY_AGAIN),
        }
    }
}

/// Bytes a connection reads at most in one turn (one read call) before it
/// gives its worker back: a large message arriving at full speed (fresh
/// pages, faulted in and zeroed as they are read, ~2.5 ns a byte here)
/// must not keep other connections waiting. A turn stays well under a
/// millisecond, so the runtime also polls for new socket events (every 61
/// turns) often enough for a healthy peer's frame or a health check to be
/// seen within tens of milliseconds while several peers upload at once.
const TURN_BYTES: usize = 256 * 1024;

/// A peer's reader and what it is charged. See the module docs.
pub(crate) struct Ingress {
    reader: MessageReader,
    memory: Arc<Budget>,
    /// What the reader's large buffers are charged now.
    charged: usize,
}

impl Drop for Ingress {
    fn drop(&mut self) {
        self.memory.release(self.charged);
    }
}

impl Ingress {
    /// Reads through `reader`, charging `memory`.
    pub(crate) fn new(reader: MessageReader, memory: Arc<Budget>) -> Self {
        Self {
            reader,
            memory,
            charged: 0,
        }
    }

    /// True if a whole frame is already buffered (see
    /// [`MessageReader::frame_ready`]).
    pub(crate) fn frame_ready(&self) -> bool {
        self.reader.frame_ready()
    }

    /// Drops whatever is buffered and its charge (the connection is closing).
    pub(crate) fn discard(&mut self) {
        self.reader.discard();
        self.memory.release(std::mem::take(&mut self.charged));
    }

    /// Reads until one message (or control frame) is complete.
    pub(crate) async fn next(&mut self, stream: &TcpStream) -> Result<Incoming, RecvError> {
        let mut since_yield = 0;
        loop {
            if let Some(msg) = self.reader.parse()? {
                return Ok(self.charge_message(msg));
            }
            self.charge_buffers()?;
            if since_yield >= TURN_BYTES {
                since_yield = 0;
                tokio::task::yield_now().await;
            }
            stream.readable().await?;
            match stream.try_read_buf(&mut self.reader.read_buf().limit(TURN_BYTES)) {
                Ok(0) => return Err(RecvError::Eof),
                Ok(n) => since_yield += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e.into()),
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
        if !self.memory.resize(self.charged, held) {
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
