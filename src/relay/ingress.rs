//! The read side of a peer's connection: the wire crate's
//! [`MessageReader`] fed from the peer's shared socket. All progress lives
//! in the reader, so [`next`] is cancel-safe (sessions `select!` on it).

use std::io;

use bitstream_wire::reader::{Incoming, MessageReader, ReadError};
use thiserror::Error;

use crate::relay::conn::Conn;

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
}

impl RecvError {
    /// The close code to send the peer, if the connection is still usable.
    pub(crate) fn close_code(&self) -> Option<u16> {
        match self {
            RecvError::Io(_) | RecvError::Eof => None,
            RecvError::Read(e) => Some(e.close_code()),
        }
    }
}

/// Bytes a connection may read before it gives its worker back once: a
/// large message arriving at full speed (fresh pages, faulted in and zeroed
/// as it is read) must not keep other connections waiting until it ends.
const YIELD_EVERY: usize = 1 << 20;

/// Reads until one message (or control frame) is complete.
pub(crate) async fn next(reader: &mut MessageReader, stream: &Conn) -> Result<Incoming, RecvError> {
    let mut since_yield = 0;
    loop {
        if let Some(msg) = reader.parse()? {
            return Ok(msg);
        }
        if since_yield >= YIELD_EVERY {
            since_yield = 0;
            tokio::task::yield_now().await;
        }
        stream.readable().await?;
        match stream.try_read_buf(reader.read_buf()) {
            Ok(0) => return Err(RecvError::Eof),
            Ok(n) => since_yield += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e.into()),
        }
    }
}
