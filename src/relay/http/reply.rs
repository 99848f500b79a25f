//! Plain HTTP answers every path shares: a refusal (what is counted and
//! what the client is told), the reason phrases, complete responses written
//! within a time limit, and the origin rule of `--allowed-origins`.

use std::time::Duration;

use bitstream_wire::handshake::{http_response, Request};

use crate::relay::access::auth::Denied;
use crate::relay::net::conn::Conn;
use crate::relay::net::handshake;
use crate::relay::resources::stats::Refusal;

/// How long a plain HTTP answer (health, metrics, a page, an endpoint's
/// reply) may take to write.
pub(crate) const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a refusal may take to write: a refused peer that does not read
/// holds its socket no longer than this.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(1);

/// A refused request: what is counted and what the client is told.
#[derive(Debug)]
pub(crate) struct Refused {
    /// How it is counted.
    pub(crate) why: Refusal,
    /// The HTTP status it is answered with.
    pub(crate) status: u16,
    /// The one-line body.
    pub(crate) text: String,
}

impl Refused {
    /// A refusal counted as `why`, answered with its usual status
    /// ([`Refusal::status`]) and `text`.
    pub(crate) fn new(why: Refusal, text: impl Into<String>) -> Self {
        Self::with_status(why, why.status(), text)
    }

    /// A refusal counted as `why` but answered with a more precise
    /// `status` (a `404` or `431` bad request).
    pub(crate) fn with_status(why: Refusal, status: u16, text: impl Into<String>) -> Self {
        Self {
            why,
            status,
            text: text.into(),
        }
    }
}

impl From<Refusal> for Refused {
    fn from(why: Refusal) -> Self {
        Refused::new(why, why.text())
    }
}

impl From<Denied> for Refused {
    fn from(d: Denied) -> Self {
        Refused::with_status(d.refusal(), d.status(), d.to_string())
    }
}

/// The reason phrase of the statuses the relay answers with.
pub(crate) fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    }
}

/// Writes a refusal: `status` with a one-line text body.
pub(crate) async fn answer(stream: &Conn, status: u16, text: &str) {
    let resp = http_response(
        status,
        reason(status),
        "text/plain",
        format!("{text}\n").as_bytes(),
    );
    let _ = tokio::time::timeout(REFUSAL_TIMEOUT, handshake::write_all(stream, &resp)).await;
    stream.close_notify();
}

/// A complete response: `status`, extra header lines `head` (each ending
/// in CRLF) and `body`.
pub(crate) fn response(status: u16, content_type: &str, head: &str, body: &[u8]) -> Vec<u8> {
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
pub(crate) async fn reply(stream: &Conn, status: u16, content_type: &str, head: &str, body: &[u8]) {
    let resp = response(status, content_type, head, body);
    let _ = tokio::time::timeout(ANSWER_TIMEOUT, handshake::write_all(stream, &resp)).await;
    stream.close_notify();
}

/// Whether a handshake from `origin` may proceed: every origin when
/// `allowed` is empty; otherwise one of `allowed` (scheme and host compared
/// without case, a trailing `/` ignored). A request without `Origin` comes
/// from no browser page (which always sends it) and is not checked.
pub(crate) fn origin_allowed(allowed: &[String], origin: Option<&str>) -> bool {
    let norm = |o: &str| o.trim().trim_end_matches('/').to_ascii_lowercase();
    match origin {
        _ if allowed.is_empty() => true,
        None => true,
        Some(o) => {
            let o = norm(o);
            allowed.iter().any(|a| norm(a) == o)
        }
    }
}

/// The CORS header lines for a request to an endpoint meant for pages of
/// other origins too (empty if it has no `Origin`), or a `403` if its
/// origin is not in `allowed`.
pub(crate) fn cors(allowed: &[String], req: &Request) -> Result<String, Refused> {
    if !origin_allowed(allowed, req.origin.as_deref()) {
        return Err(Refusal::OriginForbidden.into());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_matched_exactly_but_without_case() {
        let allowed = vec![
            "https://a.example".to_owned(),
            "https://b.example:8443/".to_owned(),
        ];
        assert!(origin_allowed(&[], Some("https://evil.example")));
        assert!(origin_allowed(&allowed, Some("https://a.example")));
        assert!(origin_allowed(&allowed, Some("HTTPS://A.example/")));
        assert!(origin_allowed(&allowed, Some("https://b.example:8443")));
        assert!(!origin_allowed(&allowed, Some("http://a.example")));
        assert!(!origin_allowed(&allowed, Some("https://a.example.evil")));
        assert!(!origin_allowed(&allowed, Some("https://b.example")));
        assert!(!origin_allowed(&allowed, Some("null")));
        assert!(origin_allowed(&allowed, None), "not a browser");
    }

    #[test]
    fn every_refusal_has_its_status_and_text() {
        for why in Refusal::ALL {
            let r = Refused::from(why);
            assert!((400..600).contains(&r.status), "{why:?}");
            assert_ne!(reason(r.status), "", "{why:?}");
            assert!(!r.text.is_empty(), "{why:?}");
        }
        assert_eq!(Refused::from(Refusal::SourceTaken).status, 409);
        assert_eq!(Refused::from(Denied::Forbidden).status, 403);
        assert_eq!(Refused::from(Denied::Expired).why, Refusal::TokenExpired);
    }
}
