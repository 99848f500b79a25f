//! Plain HTTP endpoints that do more than answer from memory: they hold
//! the connection open ([`events`]: a channel's signal state and the
//! dashboard's stats as Server-Sent Events), read a request body
//! ([`input`]: `POST /input/{name}`), or need their own token rule
//! ([`turn`]: TURN credentials). Admission has already read the head,
//! routed it and checked the channel token where one applies.
//!
//! CORS: these endpoints are meant for pages of other origins too. Without
//! `--allowed-origins` every origin may use them (`Access-Control-Allow-Origin: *`);
//! with it, a request whose `Origin` is not listed is refused `403` (as a
//! WebSocket handshake is) and a listed one is echoed back.

pub(crate) mod events;
pub(crate) mod input;
pub(crate) mod turn;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bitstream_wire::handshake::Request;

use crate::relay::admission::{origin_allowed, reason, Refused};
use crate::relay::conn::Conn;
use crate::relay::handshake::{self, Route};
use crate::relay::state::Relay;
use crate::relay::stats::Refusal;

/// How long a short answer may take to write.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `req` if it is for one of these endpoints: `Ok(true)` when it
/// was answered, `Ok(false)` when it is not theirs, or the refusal.
pub(crate) async fn serve(
    relay: &Arc<Relay>,
    stream: &Conn,
    req: &Request,
    route: &Route,
    rest: Vec<u8>,
    client: IpAddr,
) -> Result<bool, Refused> {
    let kind = match route {
        Route::Events(_) | Route::Input(_) => route,
        Route::Other(p) if p == "/stats/events" || p == "/turn" => route,
        _ => return Ok(false),
    };
    let cors = cors(relay, req)?;
    if req.method == "OPTIONS" {
        let head = format!(
            "Access-Control-Allow-Methods: GET, POST, OPTIONS\r\nAccess-Control-Allow-Headers: Authorization, Content-Type, Last-Event-ID\r\nAccess-Control-Max-Age: 600\r\n{cors}"
        );
        reply(stream, 204, "text/plain", &head, b"").await;
        return Ok(true);
    }
    let method = if matches!(kind, Route::Input(_)) {
        "POST"
    } else {
        "GET"
    };
    if req.method != method {
        let head = format!("Allow: {method}, OPTIONS\r\n{cors}");
        reply(stream, 405, "text/plain", &head, b"method not allowed\n").await;
        return Ok(true);
    }
    match kind {
        Route::Events(name) => events::signal(relay, stream, req, name, client, &cors).await?,
        Route::Input(name) => input::serve(relay, stream, req, name, rest, client, &cors).await,
        Route::Other(p) if p == "/turn" => turn::serve(relay, stream, req, &cors).await?,
        _ => events::stats(relay, stream, &cors).await,
    }
    Ok(true)
}

/// The CORS header line for `req` (empty if it has no `Origin`), or a
/// `403` if its origin is not allowed.
fn cors(relay: &Relay, req: &Request) -> Result<String, Refused> {
    let allowed = &relay.config.allowed_origins;
    if !origin_allowed(allowed, req.origin.as_deref()) {
        return Err(Refused::new(
            Refusal::OriginForbidden,
            403,
            "origin not allowed",
        ));
    }
    Ok(match req.origin.as_deref() {
        _ if allowed.is_empty() => "Access-Control-Allow-Origin: *\r\n".to_owned(),
        // Allowed, so one of the listed origins: no CR/LF in it.
        Some(o) if !o.contains(['\r', '\n']) => {
            format!("Access-Control-Allow-Origin: {o}\r\nVary: Origin\r\n")
        }
        _ => String::new(),
    })
}

/// A complete response: `status`, extra header lines `head` (each ending
/// in CRLF) and `body`.
fn response(status: u16, content_type: &str, head: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n{head}\r\n",
        reason(status),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// Writes a complete response within [`ANSWER_TIMEOUT`] and ends the
/// connection's TLS session, if any.
async fn reply(stream: &Conn, status: u16, content_type: &str, head: &str, body: &[u8]) {
    let resp = response(status, content_type, head, body);
    let _ = tokio::time::timeout(ANSWER_TIMEOUT, handshake::write_all(stream, &resp)).await;
    stream.close_notify();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_carry_length_and_extra_headers() {
        let r = response(202, "text/plain", "X-A: b\r\n", b"ok\n");
        let text = String::from_utf8(r).unwrap();
        assert!(text.starts_with("HTTP/1.1 202 Accepted\r\n"));
        assert!(text.contains("Content-Length: 3\r\n"));
        assert!(text.ends_with("X-A: b\r\n\r\nok\n"));
    }
}
