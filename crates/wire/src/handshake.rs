//! The opening handshake (RFC 6455 §4) and the few plain HTTP/1.1 messages
//! around it, as pure functions over bytes: parsing a request head on the
//! server, building the `101` answer, building a client's request and
//! checking the server's answer. No I/O: the relay and the client read and
//! write with their own sockets.

use base64::Engine;
use thiserror::Error;

/// Why an HTTP head cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HeadError {
    /// The head is not valid HTTP/1.x.
    #[error("malformed HTTP head: {0}")]
    Malformed(String),
    /// A `101` answer without the `Sec-WebSocket-Accept` our key calls for.
    #[error("wrong Sec-WebSocket-Accept")]
    WrongAccept,
}

/// The parts of a request head the relay uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// HTTP method.
    pub method: String,
    /// Request target (path and query).
    pub target: String,
    /// `Sec-WebSocket-Key`, if this is a WebSocket upgrade.
    pub ws_key: Option<String>,
    /// `Sec-WebSocket-Version`.
    pub ws_version: Option<String>,
    /// True if `Upgrade: websocket` and `Connection: upgrade` are present.
    pub upgrade: bool,
    /// `Origin` (browsers send it with every WebSocket handshake).
    pub origin: Option<String>,
    /// `Authorization` (e.g. `Bearer <token>`).
    pub authorization: Option<String>,
    /// Every `X-Forwarded-For` line, joined with `, ` in order.
    pub forwarded_for: Option<String>,
    /// Every `Forwarded` (RFC 7239) line, joined with `, ` in order.
    pub forwarded: Option<String>,
    /// `Content-Length` (plain HTTP requests with a body).
    pub content_length: Option<String>,
    /// `Transfer-Encoding` (a chunked body is not accepted by the relay).
    pub transfer_encoding: Option<String>,
    /// `Last-Event-ID` (a reconnecting Server-Sent Events client).
    pub last_event_id: Option<String>,
}

/// Parses a complete request head out of `buf`: `Ok(None)` if more bytes
/// are needed, else the request and the head's length.
pub fn parse_request(buf: &[u8]) -> Result<Option<(Request, usize)>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; 48];
    let mut req = httparse::Request::new(&mut headers);
    let Some(n) = complete(req.parse(buf))? else {
        return Ok(None);
    };
    let header = |name: &str| header_value(req.headers, name);
    let has_token = |name: &str, token: &str| {
        header(name).is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    let upgrade = has_token("upgrade", "websocket") && has_token("connection", "upgrade");
    Ok(Some((
        Request {
            method: req.method.unwrap_or("").to_owned(),
            target: req.path.unwrap_or("").to_owned(),
            ws_key: header("sec-websocket-key").map(str::to_owned),
            ws_version: header("sec-websocket-version").map(str::to_owned),
            upgrade,
            origin: header("origin").map(str::to_owned),
            authorization: header("authorization").map(str::to_owned),
            forwarded_for: header_all(req.headers, "x-forwarded-for"),
            forwarded: header_all(req.headers, "forwarded"),
            content_length: header("content-length").map(str::to_owned),
            transfer_encoding: header("transfer-encoding").map(str::to_owned),
            last_event_id: header("last-event-id").map(str::to_owned),
        },
        n,
    )))
}

/// A server's answer to a client's handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// HTTP status (101 when the upgrade was accepted).
    pub status: u16,
    /// Length of the head; what follows is the body or the WebSocket stream.
    pub head_len: usize,
}

/// Parses a server's answer to a handshake sent with `key`: `Ok(None)` if
/// more bytes are needed. A `101` must carry the matching accept key.
pub fn parse_response(buf: &[u8], key: &str) -> Result<Option<Response>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let Some(head_len) = complete(resp.parse(buf))? else {
        return Ok(None);
    };
    let status = resp.code.unwrap_or(0);
    if status == 101
        && header_value(resp.headers, "sec-websocket-accept") != Some(accept_key(key).as_str())
    {
        return Err(HeadError::WrongAccept);
    }
    Ok(Some(Response { status, head_len }))
}

/// The head's length once it is complete, `None` while more bytes are needed.
fn complete(parsed: httparse::Result<usize>) -> Result<Option<usize>, HeadError> {
    match parsed {
        Ok(httparse::Status::Complete(n)) => Ok(Some(n)),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(HeadError::Malformed(e.to_string())),
    }
}

/// The trimmed value of header `name`, if present and UTF-8.
fn header_value<'h>(headers: &'h [httparse::Header<'_>], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .and_then(|h| std::str::from_utf8(h.value).ok())
        .map(str::trim)
}

/// Every value of header `name` (a header may be repeated), joined with
/// `, ` in the order received; `None` if there is none.
fn header_all(headers: &[httparse::Header<'_>], name: &str) -> Option<String> {
    let values: Vec<&str> = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
        .filter_map(|h| std::str::from_utf8(h.value).ok())
        .map(str::trim)
        .collect();
    (!values.is_empty()).then(|| values.join(", "))
}

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    let mut sha = sha1_smol::Sha1::new();
    sha.update(key.trim().as_bytes());
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha.digest().bytes())
}

/// A `Sec-WebSocket-Key` made from 16 bytes of `seed` (keys need to be
/// unpredictable only against caching proxies, not secret).
pub fn client_key(seed: u32) -> String {
    let mut k = [0u8; 16];
    for (i, b) in k.iter_mut().enumerate() {
        *b = (seed.rotate_left(i as u32 * 5) as u8) ^ (i as u8).wrapping_mul(31);
    }
    base64::engine::general_purpose::STANDARD.encode(k)
}

/// The `101 Switching Protocols` response completing a server handshake.
pub fn upgrade_response(key: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        accept_key(key)
    )
    .into_bytes()
}

/// A plain HTTP response with a body, closing the connection.
pub fn http_response(status: u16, reason: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// A client's opening handshake request for `path` on `host`.
pub fn client_request(host: &str, path: &str, key: &str) -> Vec<u8> {
    client_request_with_headers(host, path, key, &[])
}

/// [`client_request`] with extra header lines (e.g. `Authorization`,
/// `Origin`). Names and values are sent as given: they must not contain
/// CR or LF.
pub fn client_request_with_headers(
    host: &str,
    path: &str,
    key: &str,
    headers: &[(&str, &str)],
) -> Vec<u8> {
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    req.push_str("\r\n");
    req.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_accept_key() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn parses_upgrade_requests() {
        let raw = b"GET /stream/x HTTP/1.1\r\nHost: a\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: abc==\r\nSec-WebSocket-Version: 13\r\n\r\nrest";
        let (req, n) = parse_request(raw).unwrap().unwrap();
        assert!(req.upgrade);
        assert_eq!(req.ws_key.as_deref(), Some("abc=="));
        assert_eq!(req.target, "/stream/x");
        assert_eq!(&raw[n..], b"rest");
        assert!(parse_request(&raw[..20]).unwrap().is_none());
        assert!(parse_request(b"\x00\x01garbage\r\n\r\n").is_err());
        let (plain, _) = parse_request(b"GET /healthz HTTP/1.1\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!plain.upgrade);
        assert_eq!(plain.origin, None);
    }

    #[test]
    fn parses_the_headers_admission_uses() {
        let raw = b"GET /stream/x HTTP/1.1\r\nOrigin: https://a.example\r\nAuthorization: Bearer t.k.n\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-For: 10.0.0.2, 10.0.0.3\r\nForwarded: for=192.0.2.1\r\n\r\n";
        let (req, _) = parse_request(raw).unwrap().unwrap();
        assert_eq!(req.origin.as_deref(), Some("https://a.example"));
        assert_eq!(req.authorization.as_deref(), Some("Bearer t.k.n"));
        assert_eq!(
            req.forwarded_for.as_deref(),
            Some("10.0.0.1, 10.0.0.2, 10.0.0.3")
        );
        assert_eq!(req.forwarded.as_deref(), Some("for=192.0.2.1"));
        let with = client_request_with_headers("h", "/", "k", &[("Origin", "o")]);
        let (req, _) = parse_request(&with).unwrap().unwrap();
        assert_eq!(req.origin.as_deref(), Some("o"));
        assert!(req.upgrade);
    }

    #[test]
    fn a_client_request_is_answered_and_checked() {
        let key = client_key(12345);
        let req = client_request("h:1", "/stream/a", &key);
        let (parsed, n) = parse_request(&req).unwrap().unwrap();
        assert_eq!(n, req.len());
        assert!(parsed.upgrade);
        let mut answer = upgrade_response(parsed.ws_key.as_deref().unwrap());
        let head = answer.len();
        answer.extend_from_slice(b"\x81\x00");
        assert_eq!(
            parse_response(&answer, &key),
            Ok(Some(Response {
                status: 101,
                head_len: head
            }))
        );
        assert_eq!(parse_response(&answer[..10], &key), Ok(None));
        assert_eq!(
            parse_response(&answer, &client_key(1)),
            Err(HeadError::WrongAccept)
        );
        let refused = http_response(409, "Conflict", "text/plain", b"taken\n");
        let r = parse_response(&refused, &key).unwrap().unwrap();
        assert_eq!((r.status, &refused[r.head_len..]), (409, &b"taken\n"[..]));
    }
}
