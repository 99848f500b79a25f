//! The relay's side of the opening handshake: reading the request head
//! within a size limit, routing its path, and writing the answer.

#![deny(clippy::arithmetic_side_effects)]

use std::io;

use thiserror::Error;

use crate::relay::net::conn::Conn;

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

/// A malformed `resume=` or `epoch=` query parameter.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub(crate) enum ResumeError {
    /// `resume=` is not a frame seq.
    #[error("invalid resume: must be a frame seq, a decimal number 0-65535")]
    Seq,
    /// `epoch=` is not a stream epoch.
    #[error("invalid epoch: must be a stream epoch, 1-16 hexadecimal digits")]
    Epoch,
}

/// What a joining receiver asked for (`?epoch`, `?epoch=E&resume=SEQ`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Rejoin {
    /// Send a [`stream_mark`](bitstream_wire::protocol::stream_mark) before the catch-up or the resumed
    /// frames (the receiver asked with `epoch`).
    pub(crate) marks: bool,
    /// The last frame it had: its stream's epoch (`None`: a bare
    /// `resume=SEQ`, which names no stream) and its header seq.
    pub(crate) point: Option<(Option<u64>, u16)>,
}

/// What a receiver's request target asks of its join
/// (`/stream/cam?epoch=1f3a…&resume=41`): `epoch` (any value, or none)
/// asks for stream marks; `epoch=E` with `resume=SEQ` names the last frame
/// it had, header seq `SEQ` of stream `E`. A bare `resume=SEQ` names no
/// stream: it gets the full catch-up (the seq alone could belong to another
/// stream). Errors for a `resume=` that is not a decimal 0–65535 or an
/// `epoch=` value that is not 1–16 hex digits (the last of a repeated
/// parameter counts).
pub(crate) fn rejoin_of(target: &str) -> Result<Rejoin, ResumeError> {
    let Some((_, query)) = target.split('#').next().unwrap_or("").split_once('?') else {
        return Ok(Rejoin::default());
    };
    let last = |key: &str| {
        query
            .split('&')
            .rev()
            .find_map(|kv| match kv.split_once('=') {
                Some((k, v)) if k == key => Some(v),
                None if kv == key => Some(""),
                _ => None,
            })
    };
    let seq = match last("resume") {
        None => None,
        Some(v) if !v.is_empty() && v.len() <= 5 && v.bytes().all(|b| b.is_ascii_digit()) => {
            Some(v.parse::<u16>().map_err(|_| ResumeError::Seq)?)
        }
        Some(_) => return Err(ResumeError::Seq),
    };
    let epoch = match last("epoch") {
        None => None,
        Some("") => Some(None),
        Some(v) if v.len() <= 16 && v.bytes().all(|b| b.is_ascii_hexdigit()) => Some(Some(
            u64::from_str_radix(v, 16).map_err(|_| ResumeError::Epoch)?,
        )),
        Some(_) => return Err(ResumeError::Epoch),
    };
    Ok(Rejoin {
        marks: epoch.is_some(),
        point: seq.map(|s| (epoch.flatten(), s)),
    })
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
        let room = max.saturating_sub(buf.len()).min(chunk.len());
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
        let r = |t: &str| rejoin_of(t);
        let point = |epoch: Option<u64>, seq| Rejoin {
            marks: epoch.is_some(),
            point: Some((epoch, seq)),
        };
        assert_eq!(r("/stream/cam"), Ok(Rejoin::default()));
        assert_eq!(r("/stream/cam?token=x"), Ok(Rejoin::default()));
        assert_eq!(r("/stream/cam?resume=0"), Ok(point(None, 0)));
        assert_eq!(r("/stream?token=a&resume=65535"), Ok(point(None, 65535)));
        assert_eq!(r("/stream?resume=7#frag"), Ok(point(None, 7)));
        let marks = Rejoin {
            marks: true,
            point: None,
        };
        assert_eq!(r("/stream/cam?epoch"), Ok(marks));
        assert_eq!(r("/stream/cam?epoch="), Ok(marks));
        assert_eq!(
            r("/stream/cam?epoch=00ff&resume=9"),
            Ok(point(Some(255), 9))
        );
        assert_eq!(
            r("/stream/cam?resume=9&epoch=FFFFFFFFFFFFFFFF"),
            Ok(point(Some(u64::MAX), 9))
        );
        assert_eq!(r("/stream/cam?epochs=1"), Ok(Rejoin::default()));
        for bad in ["", "65536", "-1", "+1", "1x", " 1", "0x10", "999999"] {
            assert_eq!(
                r(&format!("/stream?resume={bad}")),
                Err(ResumeError::Seq),
                "{bad:?}"
            );
        }
        for bad in ["x", "+1", "0x1", "11112222333344445", "-1"] {
            assert_eq!(
                r(&format!("/stream?resume=1&epoch={bad}")),
                Err(ResumeError::Epoch),
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
