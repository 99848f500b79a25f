//! `POST /input/{name}`: one PROTOCOL.md input message as the request body
//! (binary), delivered to the channel's source like a WebSocket receiver's
//! input, with the same validation and the same rate (`--input-rate`,
//! `--input-burst`), counted per client address (IPv6: per /64) since a
//! plain HTTP client has no session to hold its bucket.
//!
//! Answers: `202` handed to the source, `400` not a valid input message,
//! `404` the channel has no source, `408` body not received within
//! `--handshake-timeout-ms`, `411` no `Content-Length` (chunked bodies are
//! not taken), `413` larger than `--max-input-message`, `429` over the
//! rate, `503` the source's queue is full. A repeated or malformed
//! `Content-Length`, or one beside a `Transfer-Encoding`, never gets here:
//! the head is refused `400` (see `bitstream_wire::handshake::parse_request`).

use std::io;
use std::sync::Arc;
use std::time::Instant;

use bitstream_wire::protocol;
use bitstream_wire::reader::WireMessage;
use bitstream_wire::ws;
use thiserror::Error;

use super::reply::reply;
use super::Asked;
use crate::relay::access::ratelimit::InputBuckets;
use crate::relay::net::conn::Conn;
use crate::relay::state::Relay;

/// Why an input was not delivered, and its status.
#[derive(Debug, Error)]
enum InputError {
    #[error("Content-Length required")]
    NoLength,
    #[error("input larger than {0} bytes")]
    TooLarge(usize),
    #[error("body not received in time")]
    Timeout,
    #[error("connection failed: {0}")]
    Io(#[from] io::Error),
    #[error("too many inputs, slow down")]
    RateLimited,
    #[error("invalid input message: {0}")]
    Invalid(#[from] protocol::ProtocolError),
    #[error("the channel has no source")]
    NoSource,
    #[error("the source is not taking inputs now")]
    SourceBusy,
}

impl InputError {
    fn status(&self) -> u16 {
        match self {
            InputError::NoLength => 411,
            InputError::TooLarge(_) => 413,
            InputError::Timeout => 408,
            InputError::Io(_) => 400,
            InputError::RateLimited => 429,
            InputError::Invalid(_) => 400,
            InputError::NoSource => 404,
            InputError::SourceBusy => 503,
        }
    }
}

/// Serves one `POST /input/{name}` (token and origin already checked).
pub(super) async fn serve(
    relay: &Arc<Relay>,
    buckets: &InputBuckets,
    stream: &Conn,
    asked: Asked<'_>,
    name: &str,
    rest: Vec<u8>,
) {
    let Asked { client, cors, .. } = asked;
    let (status, text) = match deliver(relay, buckets, stream, asked, name, rest).await {
        Ok(()) => (202, "accepted".to_owned()),
        Err(InputError::Io(_)) => return,
        Err(e) => {
            tracing::debug!(channel = name, %client, error = %e, "HTTP input refused");
            (e.status(), e.to_string())
        }
    };
    reply(
        stream,
        status,
        "text/plain",
        cors,
        format!("{text}\n").as_bytes(),
    )
    .await;
}

async fn deliver(
    relay: &Relay,
    buckets: &InputBuckets,
    stream: &Conn,
    Asked { req, client, .. }: Asked<'_>,
    name: &str,
    rest: Vec<u8>,
) -> Result<(), InputError> {
    let cfg = &relay.config;
    if req.transfer_encoding.is_some() {
        return Err(InputError::NoLength);
    }
    // Already strict: one Content-Length of digits only, never beside a
    // Transfer-Encoding (the head is refused `400` otherwise).
    let len = req.content_length.ok_or(InputError::NoLength)?;
    let len = usize::try_from(len)
        .ok()
        .filter(|&l| l <= cfg.max_input_message)
        .ok_or(InputError::TooLarge(cfg.max_input_message))?;
    let body = tokio::time::timeout(cfg.handshake_timeout(), read_body(stream, rest, len))
        .await
        .map_err(|_| InputError::Timeout)??;
    let ch = relay.channels.get(name).map(|c| c.clone());
    if !buckets.take(client, cfg.input_rate, cfg.input_burst, Instant::now()) {
        if let Some(ch) = &ch {
            ch.traffic.dropped.inc();
        }
        return Err(InputError::RateLimited);
    }
    if let Err(e) = protocol::validate_input_message(&body) {
        if let Some(ch) = &ch {
            ch.traffic.invalid.inc();
        }
        return Err(e.into());
    }
    let ch = ch.filter(|c| c.has_source()).ok_or(InputError::NoSource)?;
    if !ch.try_forward_input(&WireMessage::encode(ws::OP_BINARY, &body)) {
        return Err(if ch.has_source() {
            InputError::SourceBusy
        } else {
            InputError::NoSource
        });
    }
    Ok(())
}

/// Reads a body of exactly `len` bytes, starting with `rest` (what came
/// after the head); bytes after it are ignored.
async fn read_body(stream: &Conn, mut body: Vec<u8>, len: usize) -> Result<Vec<u8>, InputError> {
    body.truncate(len);
    body.reserve_exact(len - body.len());
    let mut chunk = [0u8; 4096];
    while body.len() < len {
        stream.readable().await?;
        let room = (len - body.len()).min(chunk.len());
        match stream.try_read(&mut chunk[..room]) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
            Ok(n) => body.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(body)
}
