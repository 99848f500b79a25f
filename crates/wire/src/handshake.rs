//! The opening handshake (RFC 6455 §4) and the few plain HTTP/1.1 messages
//! around it, as pure functions over bytes: parsing a request head on the
//! server, building the `101` answer, building a client's request and
//! checking the server's answer. No I/O: the relay and the client read and
//! write with their own sockets.
//!
//! Request heads are parsed strictly (RFC 9112 §6.3): the relay and any
//! proxy in front of it must agree on what a request says, so a header
//! that frames the body or decides admission counts only when it is
//! unambiguous; see [`parse_request`].

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
    /// A header that must appear at most once appears more than once.
    #[error("repeated {0} header")]
    Repeated(&'static str),
    /// `Content-Length` is not `1*DIGIT` within `u64` (no sign, no spaces).
    #[error("malformed Content-Length: decimal digits only, below 2^64")]
    BadContentLength,
    /// `Transfer-Encoding` is not a list of transfer codings.
    #[error("malformed Transfer-Encoding")]
    BadTransferEncoding,
    /// Both `Transfer-Encoding` and `Content-Length`: the body's end is ambiguous.
    #[error("Transfer-Encoding and Content-Length together")]
    LengthAndEncoding,
    /// A header the relay reads has a value that is not UTF-8.
    #[error("{0} header is not valid UTF-8")]
    NotText(&'static str),
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
    /// `Content-Length` (plain HTTP requests with a body), validated: one
    /// header of decimal digits only, never beside `Transfer-Encoding`.
    pub content_length: Option<u64>,
    /// `Transfer-Encoding`, validated as a list of codings (a chunked body
    /// is not accepted by the relay).
    pub transfer_encoding: Option<String>,
    /// `Last-Event-ID` (a reconnecting Server-Sent Events client).
    pub last_event_id: Option<String>,
}

/// The headers a request may carry at most once, as they are named in
/// errors (matched without case). Each either frames the body
/// (`Content-Length`, `Transfer-Encoding`) or decides who the request is
/// from and what it may do; a proxy in front of the relay may read another
/// copy than the relay would, so no copy is chosen.
///
/// Identical duplicates are refused too: RFC 9112 §6.3 would let a server
/// fold `Content-Length: 19` twice into one, but no client the relay serves
/// sends a header twice, and refusing every duplicate is one rule with no
/// comparison to get wrong (e.g. `19` against `019`).
pub const SINGLE_HEADERS: [&str; 8] = [
    "Host",
    "Content-Length",
    "Transfer-Encoding",
    "Origin",
    "Authorization",
    "Upgrade",
    "Sec-WebSocket-Key",
    "Sec-WebSocket-Version",
];

/// Parses a complete request head out of `buf`: `Ok(None)` if more bytes
/// are needed, else the request and the head's length.
///
/// Refused (each a [`HeadError`] with a one-line reason) besides heads
/// that are not HTTP/1.x: any of [`SINGLE_HEADERS`] more than once (even
/// with the same value), a `Content-Length` that is not `1*DIGIT` within
/// `u64` (surrounding spaces and tabs aside: no sign, no inner space, no
/// overflow), a `Transfer-Encoding` that is not a list of codings, both of
/// them together, and a value of a header read here that is not UTF-8.
/// `Connection`, `X-Forwarded-For` and `Forwarded` are lists: every line
/// counts.
pub fn parse_request(buf: &[u8]) -> Result<Option<(Request, usize)>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; 48];
    let mut req = httparse::Request::new(&mut headers);
    let Some(n) = complete(req.parse(buf))? else {
        return Ok(None);
    };
    let h: &[httparse::Header<'_>] = req.headers;
    for name in SINGLE_HEADERS {
        single(h, name)?;
    }
    let owned = |name: &'static str| Ok::<_, HeadError>(single(h, name)?.map(str::to_owned));
    let content_length = single(h, "Content-Length")?
        .map(parse_content_length)
        .transpose()?;
    let transfer_encoding = single(h, "Transfer-Encoding")?;
    if transfer_encoding.is_some_and(|te| !valid_transfer_encoding(te)) {
        return Err(HeadError::BadTransferEncoding);
    }
    if transfer_encoding.is_some() && content_length.is_some() {
        return Err(HeadError::LengthAndEncoding);
    }
    let has_token = |list: Option<&str>, token: &str| {
        list.is_some_and(|v| {
            v.split(',')
                .any(|t| trim_ows(t).eq_ignore_ascii_case(token))
        })
    };
    let upgrade = has_token(single(h, "Upgrade")?, "websocket")
        && has_token(header_all(h, "connection").as_deref(), "upgrade");
    Ok(Some((
        Request {
            method: req.method.unwrap_or("").to_owned(),
            target: req.path.unwrap_or("").to_owned(),
            ws_key: owned("Sec-WebSocket-Key")?,
            ws_version: owned("Sec-WebSocket-Version")?,
            upgrade,
            origin: owned("Origin")?,
            authorization: owned("Authorization")?,
            forwarded_for: header_all(h, "x-forwarded-for"),
            forwarded: header_all(h, "forwarded"),
            content_length,
            transfer_encoding: transfer_encoding.map(str::to_owned),
            last_event_id: header_value(h, "last-event-id").map(str::to_owned),
        },
        n,
    )))
}

/// The value of header `name` (one of [`SINGLE_HEADERS`]) without its
/// surrounding spaces and tabs, if present: an error if it is repeated or
/// not UTF-8.
fn single<'h>(
    headers: &'h [httparse::Header<'_>],
    name: &'static str,
) -> Result<Option<&'h str>, HeadError> {
    let mut found = headers.iter().filter(|h| h.name.eq_ignore_ascii_case(name));
    let Some(first) = found.next() else {
        return Ok(None);
    };
    if found.next().is_some() {
        return Err(HeadError::Repeated(name));
    }
    std::str::from_utf8(first.value)
        .map(|v| Some(trim_ows(v)))
        .map_err(|_| HeadError::NotText(name))
}

/// A `Content-Length` value (already without surrounding whitespace):
/// `1*DIGIT` (RFC 9110 §8.6) that fits in a `u64`.
fn parse_content_length(v: &str) -> Result<u64, HeadError> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HeadError::BadContentLength);
    }
    v.parse().map_err(|_| HeadError::BadContentLength)
}

/// Whether `v` is a `Transfer-Encoding` value (RFC 9112 §6.1, RFC 9110
/// §5.6): a comma-separated list of at least one coding, each a token with
/// optional `; name=value` parameters (value a token or a quoted string).
/// Empty list elements are ignored, as RFC 9110 §5.6.1 asks.
fn valid_transfer_encoding(v: &str) -> bool {
    let mut codings = 0;
    for element in split_outside_quotes(v, b',')
        .into_iter()
        .map(trim_ows)
        .filter(|e| !e.is_empty())
    {
        let mut parts = split_outside_quotes(element, b';').into_iter();
        if !parts.next().is_some_and(|c| is_token(trim_ows(c))) {
            return false;
        }
        for param in parts {
            let Some((name, value)) = param.split_once('=') else {
                return false;
            };
            let value = trim_ows(value);
            if !is_token(trim_ows(name)) || !(is_token(value) || is_quoted_string(value)) {
                return false;
            }
        }
        codings += 1;
    }
    codings > 0
}

/// `s` split at every `sep` that is not inside a quoted string (a quoted
/// `\"` does not end one).
fn split_outside_quotes(s: &str, sep: u8) -> Vec<&str> {
    let (mut parts, mut start, mut quoted, mut escaped) = (Vec::new(), 0, false, false);
    for (i, b) in s.bytes().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            _ if b == sep && !quoted => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

/// Whether `s` is an RFC 9110 §5.6.2 token (one or more `tchar`).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Whether `s` is exactly one RFC 9110 §5.6.4 quoted string.
fn is_quoted_string(s: &str) -> bool {
    let Some(inner) = s.strip_prefix('"') else {
        return false;
    };
    let mut bytes = inner.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'\\' if bytes.next().is_none() => return false,
            b'\\' => {}
            b'"' => return bytes.next().is_none(),
            _ => {}
        }
    }
    false
}

/// `s` without leading and trailing spaces and tabs (HTTP's OWS).
fn trim_ows(s: &str) -> &str {
    s.trim_matches([' ', '\t'])
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

    /// A `POST /input` head with `lines` (each ending in CRLF).
    fn post(lines: &str) -> Vec<u8> {
        format!("POST /input/a HTTP/1.1\r\nHost: h\r\n{lines}\r\n").into_bytes()
    }

    #[test]
    fn every_single_header_repeated_is_refused_even_with_the_same_value() {
        for name in SINGLE_HEADERS {
            for second in [name.to_owned(), name.to_ascii_lowercase()] {
                let raw = format!(
                    "GET /stream/a HTTP/1.1\r\n{name}: 1\r\nX-Between: x\r\n{second}: 1\r\n\r\n"
                );
                assert_eq!(
                    parse_request(raw.as_bytes()),
                    Err(HeadError::Repeated(name)),
                    "{name}"
                );
            }
        }
        // Host is in the list because RFC 9112 §3.2 requires a 400 for it.
        let e = parse_request(&post("Host: i\r\n")).unwrap_err();
        assert_eq!(e.to_string(), "repeated Host header");
        // Lists may repeat: every line counts.
        let raw = b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: keep-alive\r\nConnection: Upgrade\r\nLast-Event-ID: 1\r\n\r\n";
        assert!(parse_request(raw).unwrap().unwrap().0.upgrade);
    }

    #[test]
    fn content_length_is_one_run_of_digits() {
        for (value, want) in [
            ("0", 0),
            ("19", 19),
            ("007", 7),
            ("  19 \t", 19),
            ("18446744073709551615", u64::MAX),
        ] {
            let (req, _) = parse_request(&post(&format!("Content-Length: {value}\r\n")))
                .unwrap()
                .unwrap();
            assert_eq!(req.content_length, Some(want), "{value:?}");
        }
        for value in [
            "+19",
            "-19",
            " 19x",
            "1 9",
            "1\t9",
            "",
            "0x13",
            "1e3",
            "19,19",
            "19;",
            "\u{661}",
            "18446744073709551616",
            "99999999999999999999999",
        ] {
            assert_eq!(
                parse_request(&post(&format!("Content-Length: {value}\r\n"))),
                Err(HeadError::BadContentLength),
                "{value:?}"
            );
        }
        let (req, _) = parse_request(&post("")).unwrap().unwrap();
        assert_eq!(req.content_length, None);
    }

    #[test]
    fn transfer_encoding_is_a_list_of_codings_and_never_beside_a_length() {
        for value in [
            "chunked",
            "gzip, chunked",
            "chunked,",
            "x;q=1",
            "x;q=\"a;b\"",
            "x ; a=\"b,\\\"c\"",
        ] {
            let (req, _) = parse_request(&post(&format!("Transfer-Encoding: {value}\r\n")))
                .unwrap()
                .unwrap();
            assert!(req.transfer_encoding.is_some(), "{value:?}");
        }
        for value in [
            "",
            ",",
            "chu nked",
            "chunked;",
            "x;q",
            "x;q=",
            "x;q=\"open",
            "@",
        ] {
            assert_eq!(
                parse_request(&post(&format!("Transfer-Encoding: {value}\r\n"))),
                Err(HeadError::BadTransferEncoding),
                "{value:?}"
            );
        }
        for lines in [
            "Transfer-Encoding: chunked\r\nContent-Length: 19\r\n",
            "Content-Length: 0\r\nTransfer-Encoding: identity\r\n",
        ] {
            assert_eq!(
                parse_request(&post(lines)),
                Err(HeadError::LengthAndEncoding),
                "{lines:?}"
            );
        }
    }

    #[test]
    fn heads_httparse_refuses_stay_refused() {
        for raw in [
            // Whitespace between a name and its colon (RFC 9112 §5.1).
            &b"POST / HTTP/1.1\r\nContent-Length : 19\r\n\r\n"[..],
            // Line folding (obs-fold, RFC 9112 §5.2).
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\n 9\r\n\r\n",
            b"GET / HTTP/1.1\r\nOrigin: a\r\n\tb\r\n\r\n",
            // A bare CR inside a value.
            b"GET / HTTP/1.1\r\nOrigin: a\rb\r\n\r\n",
        ] {
            assert!(
                matches!(parse_request(raw), Err(HeadError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
        let many: String = (0..49).map(|i| format!("X-{i}: v\r\n")).collect();
        let raw = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert!(matches!(
            parse_request(raw.as_bytes()),
            Err(HeadError::Malformed(_))
        ));
    }

    #[test]
    fn values_the_relay_reads_must_be_utf8() {
        assert_eq!(
            parse_request(b"GET / HTTP/1.1\r\nOrigin: https://\xffa.example\r\n\r\n"),
            Err(HeadError::NotText("Origin"))
        );
        assert_eq!(
            parse_request(b"GET / HTTP/1.1\r\nContent-Length: \xff\r\n\r\n"),
            Err(HeadError::NotText("Content-Length"))
        );
    }

    /// A header line for the property test: its name as sent, its value,
    /// and whether the value alone is valid for that header.
    fn header_line() -> impl proptest::strategy::Strategy<Value = (String, String, bool)> {
        use proptest::prelude::*;
        let case = |name: &'static str| {
            prop_oneof![
                Just(name.to_owned()),
                Just(name.to_ascii_lowercase()),
                Just(name.to_ascii_uppercase())
            ]
        };
        let length = prop_oneof![
            any::<u64>().prop_map(|n| (n.to_string(), true)),
            (0u64..100).prop_map(|n| (format!(" {n}\t"), true)),
            Just(("007".to_owned(), true)),
            Just(("+19".to_owned(), false)),
            Just(("19x".to_owned(), false)),
            Just(("1 9".to_owned(), false)),
            Just(("18446744073709551616".to_owned(), false)),
            Just((String::new(), false)),
        ];
        let encoding = prop_oneof![
            Just(("chunked".to_owned(), true)),
            Just(("gzip, chunked".to_owned(), true)),
            Just(("chu nked".to_owned(), false)),
            Just((",".to_owned(), false)),
        ];
        let text = "[a-z0-9.:/]{1,12}".prop_map(|v| (v, true));
        prop_oneof![
            (case("Content-Length"), length).prop_map(|(n, (v, ok))| (n, v, ok)),
            (case("Transfer-Encoding"), encoding).prop_map(|(n, (v, ok))| (n, v, ok)),
            (
                prop_oneof![
                    case("Origin"),
                    case("Authorization"),
                    case("Sec-WebSocket-Key")
                ],
                text.clone()
            )
                .prop_map(|(n, (v, ok))| (n, v, ok)),
            (case("X-Other"), text).prop_map(|(n, (v, ok))| (n, v, ok)),
        ]
    }

    proptest::proptest! {
        /// However framing and admission headers are ordered, cased and
        /// repeated, a head is accepted only when each says one thing, and
        /// then with exactly that value; an unambiguous valid head is never
        /// refused.
        #[test]
        fn repeated_or_malformed_framing_is_never_accepted(
            lines in proptest::collection::vec(header_line(), 0..8)
        ) {
            let mut raw = b"POST /input/a HTTP/1.1\r\n".to_vec();
            for (name, value, _) in &lines {
                raw.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
            }
            raw.extend_from_slice(b"\r\n");
            let of = |name: &str| -> Vec<&(String, String, bool)> {
                lines.iter().filter(|(n, _, _)| n.eq_ignore_ascii_case(name)).collect()
            };
            let (lengths, encodings) = (of("content-length"), of("transfer-encoding"));
            let unambiguous = ["content-length", "transfer-encoding", "origin", "authorization", "sec-websocket-key"]
                .iter()
                .all(|n| of(n).len() <= 1)
                && (lengths.is_empty() || encodings.is_empty());
            let valid = lines.iter().all(|(_, _, ok)| *ok);
            match parse_request(&raw) {
                Ok(Some((req, n))) => {
                    proptest::prop_assert_eq!(n, raw.len());
                    proptest::prop_assert!(unambiguous && valid, "accepted {:?}", lines);
                    let want = lengths.first().map(|(_, v, _)| v.trim().parse::<u64>().unwrap());
                    proptest::prop_assert_eq!(req.content_length, want);
                    let one = |name: &str| of(name).first().map(|(_, v, _)| v.clone());
                    proptest::prop_assert_eq!(req.transfer_encoding, one("transfer-encoding"));
                    proptest::prop_assert_eq!(req.origin, one("origin"));
                    proptest::prop_assert_eq!(req.authorization, one("authorization"));
                    proptest::prop_assert_eq!(req.ws_key, one("sec-websocket-key"));
                }
                Ok(None) => proptest::prop_assert!(false, "a complete head is partial"),
                Err(e) => proptest::prop_assert!(!(unambiguous && valid), "refused {:?}: {}", lines, e),
            }
        }
    }
}
