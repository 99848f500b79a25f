//! Strict HTTP framing over real sockets (issue 22, item 4): a request
//! whose framing (`Content-Length`, `Transfer-Encoding`) is repeated or
//! malformed, or that repeats a header the relay decides on (`Origin`,
//! `Authorization`, `Sec-WebSocket-Key`, `Host`), is refused `400` with a
//! one-line reason, never served by whichever copy came first.

mod common;

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use bitstream_relay::protocol;
use bitstream_relay::Refusal;
use common::{connect, start, within, TestRelay};
use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A valid `Sec-WebSocket-Key` (RFC 6455's example).
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// Sends `head` (a whole request head) and `body`; returns the status and
/// everything up to the end of the response head, plus the body of a
/// refusal (which closes the connection). A `101` is not read past its head.
async fn exchange(t: &TestRelay, head: &str, body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(t.addr).await.unwrap();
    let mut req = head.as_bytes().to_vec();
    req.extend_from_slice(body);
    s.write_all(&req).await.unwrap();
    let mut out = Vec::new();
    let mut chunk = [0u8; 1024];
    within(async {
        loop {
            let n = s.read(&mut chunk).await.unwrap_or(0);
            out.extend_from_slice(&chunk[..n]);
            let done_head = out.windows(4).any(|w| w == b"\r\n\r\n");
            if n == 0 || (done_head && out.starts_with(b"HTTP/1.1 101")) {
                break;
            }
        }
    })
    .await;
    let out = String::from_utf8_lossy(&out).into_owned();
    let status = out.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, out)
}

/// The one-line body of a response.
fn body_of(resp: &str) -> &str {
    resp.split_once("\r\n\r\n")
        .map_or("", |(_, b)| b.trim_end())
}

/// A `POST /input/{ch}` head with extra header lines `lines` (each ending
/// in CRLF).
fn post_head(ch: &str, lines: &str) -> String {
    format!(
        "POST /input/{ch} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n{lines}\r\n"
    )
}

/// A WebSocket upgrade of `path` with extra header lines `lines`.
fn upgrade_head(path: &str, lines: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n{lines}\r\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_content_lengths_are_refused_even_when_identical() {
    let t = start(&[]).await;
    let mut src = connect(&t.url("/source/cl")).await;
    let good = protocol::key_input(true, 1, 0, 65, 0);
    assert_eq!(good.len(), 19, "the issue's example body is 19 bytes");
    for lines in [
        "Content-Length: 19\r\nContent-Length: 0\r\n",
        "Content-Length: 0\r\nContent-Length: 19\r\n",
        "Content-Length: 19\r\nContent-Length: 19\r\n",
        "Content-Length: 19\r\ncontent-length: 19\r\n",
    ] {
        let (status, resp) = exchange(&t, &post_head("cl", lines), &good).await;
        assert_eq!(status, 400, "{lines:?}: {resp}");
        assert_eq!(body_of(&resp), "repeated Content-Length header", "{resp}");
    }
    // Nothing reached the source; one Content-Length still works.
    let one = post_head("cl", "Content-Length: 19\r\n");
    assert_eq!(exchange(&t, &one, &good).await.0, 202);
    assert_eq!(within(src.recv_binary()).await.unwrap().to_vec(), good);
    assert_eq!(t.relay.channel("cl").unwrap().traffic.inputs, 1);
    assert!(t.relay.summary().refused(Refusal::BadRequest) >= 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_is_digits_only() {
    let t = start(&[]).await;
    let _src = connect(&t.url("/source/len")).await;
    let good = protocol::key_input(true, 1, 0, 65, 0);
    for value in [
        "+19",
        " 19x",
        "-19",
        "1 9",
        "0x13",
        "19,19",
        "",
        "99999999999999999999999",
    ] {
        let lines = format!("Content-Length: {value}\r\n");
        let (status, resp) = exchange(&t, &post_head("len", &lines), &good).await;
        assert_eq!(status, 400, "{value:?}: {resp}");
        assert!(
            body_of(&resp).starts_with("malformed Content-Length"),
            "{value:?}: {resp}"
        );
    }
    // Surrounding whitespace is not part of the value (RFC 9110 §5.5).
    let lines = "Content-Length:  19 \r\n";
    assert_eq!(exchange(&t, &post_head("len", lines), &good).await.0, 202);
    // The largest u64 is a length, just too large for an input.
    let lines = format!("Content-Length: {}\r\n", u64::MAX);
    assert_eq!(exchange(&t, &post_head("len", &lines), b"").await.0, 413);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_encoding_on_input_is_never_a_body() {
    let t = start(&[]).await;
    let mut src = connect(&t.url("/source/te")).await;
    let good = protocol::key_input(true, 1, 0, 65, 0);
    // With a Content-Length beside it: which one frames the body is
    // exactly what a proxy and the relay could disagree on.
    for (lines, why) in [
        (
            "Transfer-Encoding: chunked\r\nContent-Length: 19\r\n",
            "Transfer-Encoding and Content-Length together",
        ),
        (
            "Content-Length: 19\r\nTransfer-Encoding: identity\r\n",
            "Transfer-Encoding and Content-Length together",
        ),
        (
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
            "repeated Transfer-Encoding header",
        ),
        (
            "Transfer-Encoding: chu nked\r\n",
            "malformed Transfer-Encoding",
        ),
    ] {
        let (status, resp) = exchange(&t, &post_head("te", lines), &good).await;
        assert_eq!(status, 400, "{lines:?}: {resp}");
        assert_eq!(body_of(&resp), why, "{lines:?}");
    }
    // A chunked body alone is still not taken: a length is required.
    let chunked = post_head("te", "Transfer-Encoding: chunked\r\n");
    assert_eq!(exchange(&t, &chunked, b"13\r\n").await.0, 411);
    // Nothing reached the source.
    let one = post_head("te", "Content-Length: 19\r\n");
    assert_eq!(exchange(&t, &one, &good).await.0, 202);
    assert_eq!(within(src.recv_binary()).await.unwrap().to_vec(), good);
    assert_eq!(t.relay.channel("te").unwrap().traffic.inputs, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_origins_on_an_upgrade_get_400_not_101() {
    let t = start(&["--allowed-origins", "https://a.example"]).await;
    for lines in [
        "Origin: https://a.example\r\nOrigin: https://evil.example\r\n",
        "Origin: https://evil.example\r\nOrigin: https://a.example\r\n",
        "Origin: https://a.example\r\nOrigin: https://a.example\r\n",
    ] {
        let head = upgrade_head("/stream/o", &format!("Sec-WebSocket-Key: {KEY}\r\n{lines}"));
        let (status, resp) = exchange(&t, &head, b"").await;
        assert_eq!(status, 400, "{lines:?}: {resp}");
        assert_eq!(body_of(&resp), "repeated Origin header");
    }
    // Also on the plain HTTP endpoints that check origins.
    let head = post_head(
        "o",
        "Origin: https://a.example\r\nOrigin: https://evil.example\r\nContent-Length: 0\r\n",
    );
    assert_eq!(exchange(&t, &head, b"").await.0, 400);
    // One allowed origin is upgraded, one forbidden is 403.
    let one = |o: &str| {
        upgrade_head(
            "/stream/o",
            &format!("Sec-WebSocket-Key: {KEY}\r\nOrigin: {o}\r\n"),
        )
    };
    assert_eq!(exchange(&t, &one("https://a.example"), b"").await.0, 101);
    assert_eq!(exchange(&t, &one("https://evil.example"), b"").await.0, 403);
}

/// A relay requiring HS256 tokens signed with `secret`.
async fn start_secured(secret: &str) -> TestRelay {
    let path: PathBuf =
        std::env::temp_dir().join(format!("relay-http-strict-{}-secret", std::process::id()));
    std::fs::write(&path, secret).unwrap();
    start(&["--jwt-secret-file", path.to_str().unwrap()]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_authorizations_get_400() {
    let secret = "test secret: 32 bytes or more, honestly";
    let t = start_secured(secret).await;
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let token = jsonwebtoken::encode(
        &Header::default(),
        &json!({"ch": "a", "role": "receiver", "exp": exp}),
        &EncodingKey::from_secret(secret.as_bytes()).unwrap(),
    )
    .unwrap();
    let valid = format!("Authorization: Bearer {token}\r\n");
    for lines in [
        format!("{valid}Authorization: Bearer not.a.token\r\n"),
        format!("Authorization: Bearer not.a.token\r\n{valid}"),
        format!("{valid}{valid}"),
    ] {
        let head = upgrade_head("/stream/a", &format!("Sec-WebSocket-Key: {KEY}\r\n{lines}"));
        let (status, resp) = exchange(&t, &head, b"").await;
        assert_eq!(status, 400, "{lines:?}: {resp}");
        assert_eq!(body_of(&resp), "repeated Authorization header");
    }
    let head = upgrade_head("/stream/a", &format!("Sec-WebSocket-Key: {KEY}\r\n{valid}"));
    assert_eq!(exchange(&t, &head, b"").await.0, 101);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_websocket_keys_or_hosts_get_400() {
    let t = start(&[]).await;
    let other = "AAAAAAAAAAAAAAAAAAAAAA==";
    for (lines, why) in [
        (
            format!("Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Key: {other}\r\n"),
            "repeated Sec-WebSocket-Key header",
        ),
        (
            format!("Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Key: {KEY}\r\n"),
            "repeated Sec-WebSocket-Key header",
        ),
        (
            format!("Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n"),
            "repeated Sec-WebSocket-Version header",
        ),
        (
            format!("Sec-WebSocket-Key: {KEY}\r\nHost: y\r\n"),
            "repeated Host header",
        ),
    ] {
        let (status, resp) = exchange(&t, &upgrade_head("/stream/k", &lines), b"").await;
        assert_eq!(status, 400, "{lines:?}: {resp}");
        assert_eq!(body_of(&resp), why);
    }
    // One of each is upgraded.
    let head = upgrade_head("/stream/k", &format!("Sec-WebSocket-Key: {KEY}\r\n"));
    let (status, resp) = exchange(&t, &head, b"").await;
    assert_eq!(status, 101, "{resp}");
    assert!(resp.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
}
