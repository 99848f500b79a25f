//! The relay's side of the opening handshake: reading the request head
//! within a size limit, routing its path, and writing the answer.

use std::io;

use thiserror::Error;

use crate::relay::conn::Conn;

use bitstream_wire::handshake::{parse_request, HeadError, Request};
use bitstream_wire::protocol::valid_channel_name;

/// The channel every alias path (`/source`, `/stream`, `/signal`, `/`) uses.
pub(crate) const DEFAULT_CHANNEL: &str = "default";

/// Where a request path leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    /// `/source/{name}` or `/source`.
    Source(String),
    /// `/stream/{name}` or `/stream`.
    Receiver(String),
    /// `/signal/{name}` or `/signal`.
    Signal(String),
    /// `/events/{name}` or `/events`: the channel's signal state as
    /// Server-Sent Events (plain HTTP).
    Events(String),
    /// `/input/{name}` or `/input`: one input for the channel's source,
    /// `POST`ed (plain HTTP).
    Input(String),
    /// `/`: the first connection on `default` is its source, the rest receive.
    Legacy,
    /// Any other path: served as plain HTTP (or 404).
    Other(String),
}

/// Why a request cannot be routed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub(crate) enum RouteError {
    /// The channel name breaks the 1–64 `[A-Za-z0-9._-]` rule.
    #[error("invalid channel name: must be 1-64 bytes of [A-Za-z0-9._-]")]
    BadName,
}

/// Routes a request target (query string ignored).
pub(crate) fn route(target: &str) -> Result<Route, RouteError> {
    let path = target.split(['?', '#']).next().unwrap_or("");
    if path == "/" {
        return Ok(Route::Legacy);
    }
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let head = parts.next().unwrap_or("");
    let name = parts.next();
    let make: fn(String) -> Route = match head {
        "source" => Route::Source,
        "stream" => Route::Receiver,
        "signal" => Route::Signal,
        "events" => Route::Events,
        "input" => Route::Input,
        _ => return Ok(Route::Other(path.to_owned())),
    };
    match name {
        None => Ok(make(DEFAULT_CHANNEL.to_owned())),
        Some(n) if valid_channel_name(n) => Ok(make(n.to_owned())),
        Some(_) => Err(RouteError::BadName),
    }
}

/// A malformed `resume=` query parameter.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid resume: must be a frame seq, a decimal number 0-65535")]
pub(crate) struct ResumeError;

/// The `resume=SEQ` of a receiver's request target (`/stream/cam?resume=41`):
/// the 16-bit header seq of the last frame the receiver had. `None` when
/// absent; an error for anything but a decimal 0–65535 (the last `resume=`
/// counts if repeated).
pub(crate) fn resume_of(target: &str) -> Result<Option<u16>, ResumeError> {
    let Some((_, query)) = target.split('#').next().unwrap_or("").split_once('?') else {
        return Ok(None);
    };
    let Some(v) = query
        .split('&')
        .rev()
        .find_map(|kv| kv.strip_prefix("resume="))
    else {
        return Ok(None);
    };
    if v.is_empty() || v.len() > 5 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ResumeError);
    }
    v.parse().map(Some).map_err(|_| ResumeError)
}

/// Why a request head could not be read.
#[derive(Debug, Error)]
pub(crate) enum RequestError {
    /// The socket failed or closed before the head was complete.
    #[error("socket error: {0}")]
    Io(#[from] io::Error),
    /// The head exceeded the size limit.
    #[error("request head over {0} bytes")]
    TooLarge(usize),
    /// The head is not valid HTTP/1.x.
    #[error("{0}")]
    Malformed(#[from] HeadError),
}

/// Reads a request head of at most `max` bytes; returns it and any bytes the
/// client sent after it (the start of its WebSocket stream).
pub(crate) async fn read_request(
    stream: &Conn,
    max: usize,
) -> Result<(Request, Vec<u8>), RequestError> {
    let mut buf = Vec::with_capacity(1024.min(max));
    loop {
        if let Some((req, n)) = parse_request(&buf)? {
            return Ok((req, buf.split_off(n)));
        }
        if buf.len() >= max {
            return Err(RequestError::TooLarge(max));
        }
        stream.readable().await?;
        let mut chunk = [0u8; 1024];
        let room = (max - buf.len()).min(chunk.len());
        match stream.try_read(&mut chunk[..room]) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Writes all of `bytes` to a connection (handshake-time only; not the
/// fan-out path), TLS ciphertext included.
pub(crate) async fn write_all(stream: &Conn, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        stream.writable().await?;
        match stream.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    while stream.flush_pending()? {
        stream.writable().await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_parameters() {
        assert_eq!(resume_of("/stream/cam"), Ok(None));
        assert_eq!(resume_of("/stream/cam?token=x"), Ok(None));
        assert_eq!(resume_of("/stream/cam?resume=0"), Ok(Some(0)));
        assert_eq!(resume_of("/stream?token=a&resume=65535"), Ok(Some(65535)));
        assert_eq!(resume_of("/stream?resume=7#frag"), Ok(Some(7)));
        for bad in ["", "65536", "-1", "+1", "1x", " 1", "0x10", "999999"] {
            assert_eq!(
                resume_of(&format!("/stream?resume={bad}")),
                Err(ResumeError),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn routes() {
        assert_eq!(route("/source/cam1"), Ok(Route::Source("cam1".into())));
        assert_eq!(route("/stream"), Ok(Route::Receiver("default".into())));
        assert_eq!(
            route("/signal/a.b-c_d?token=1"),
            Ok(Route::Signal("a.b-c_d".into()))
        );
        assert_eq!(route("/"), Ok(Route::Legacy));
        assert_eq!(route("/?x=1"), Ok(Route::Legacy));
        assert_eq!(route("/metrics"), Ok(Route::Other("/metrics".into())));
        assert_eq!(route("/events/cam"), Ok(Route::Events("cam".into())));
        assert_eq!(route("/input?token=x"), Ok(Route::Input("default".into())));
        assert_eq!(
            route("/stats/events"),
            Ok(Route::Other("/stats/events".into()))
        );
        assert_eq!(route("/stream/"), Err(RouteError::BadName));
        assert_eq!(route("/stream/a/b"), Err(RouteError::BadName));
        assert_eq!(route("/stream/bad%20name"), Err(RouteError::BadName));
        assert_eq!(
            route(&format!("/source/{}", "x".repeat(65))),
            Err(RouteError::BadName)
        );
    }
}
