//! `GET /events/{name}`: a channel's signal state as Server-Sent Events,
//! read with a plain TCP client: the folded events equal what a WebSocket
//! receiver reconstructs, a stream resumed with `Last-Event-ID` misses
//! nothing, a too-old id gets a fresh `sync`, and the limits, tokens and
//! CORS rules apply.

mod common;

use std::time::Duration;

use bitstream_relay::client::{Client, Receiver};
use bitstream_relay::protocol;
use bitstream_relay::wire::signal::{self, State};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::{connect, eventually, start, within, TestRelay};

/// One event as the client sees it.
#[derive(Debug, Clone)]
struct Event {
    id: u64,
    kind: String,
    data: String,
}

/// A minimal EventSource: a raw TCP connection and a line parser.
struct Sse {
    stream: TcpStream,
    buf: Vec<u8>,
    /// The response head.
    head: String,
}

impl Sse {
    async fn open(t: &TestRelay, path: &str, headers: &[(&str, &str)]) -> Sse {
        let mut stream = TcpStream::connect(t.addr).await.unwrap();
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut sse = Sse {
            stream,
            buf: Vec::new(),
            head: String::new(),
        };
        let end = loop {
            if let Some(i) = sse.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(sse.fill().await, "connection closed before the head");
        };
        sse.head = String::from_utf8_lossy(&sse.buf[..end]).into_owned();
        sse.buf.drain(..end);
        sse
    }

    fn status(&self) -> u16 {
        self.head[9..12].parse().unwrap()
    }

    /// Reads more; false at the end of the stream.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 8192];
        let n = within(self.stream.read(&mut chunk)).await.unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// The next event (comments and `retry:` skipped).
    async fn next(&mut self) -> Event {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..i + 2).collect();
                let text = String::from_utf8(block).unwrap();
                let (mut id, mut kind, mut data) = (None, None, Vec::new());
                for line in text.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        id = Some(v.parse().unwrap());
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        kind = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push(v.to_owned());
                    }
                }
                if let (Some(id), Some(kind)) = (id, kind) {
                    return Event {
                        id,
                        kind,
                        data: data.join("\n"),
                    };
                }
                continue;
            }
            assert!(self.fill().await, "stream ended");
        }
    }
}

/// Folds one event into `state`.
fn fold(state: &mut State, ev: &Event) {
    let obj = signal::parse(ev.data.as_bytes()).expect("event data is a JSON object");
    match ev.kind.as_str() {
        "sync" => signal::fold(state, false, obj),
        "diff" => signal::fold(state, true, obj),
        k => panic!("unexpected event {k}"),
    }
}

/// The `i`th diff of the test stream: sets one of 50 keys, deletes another.
fn diff(i: usize) -> Vec<u8> {
    if i.is_multiple_of(97) {
        // Pretty-printed: line breaks in the JSON.
        format!(
            "{{\n  \"k{}\": {i},\r\n  \"nested\": {{\"i\": {i}}}\n}}",
            i % 50
        )
        .into_bytes()
    } else {
        json!({ format!("k{}", i % 50): i, format!("k{}", (i + 7) % 50): null })
            .to_string()
            .into_bytes()
    }
}

fn as_value(s: &State) -> Value {
    Value::Object(s.clone())
}

/// Sends sync + diffs `from..to` on `src`, folding them into `expected`.
async fn send_diffs(
    src: &mut bitstream_relay::client::Client,
    expected: &mut State,
    range: std::ops::Range<usize>,
) {
    for i in range {
        let d = diff(i);
        signal::fold(expected, true, signal::parse(&d).unwrap());
        src.send(&protocol::signal(true, i as u16, 0, &d))
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_folds_to_the_same_state_as_a_websocket_receiver() {
    let t = start(&[]).await;
    let mut src = connect(&t.url("/source/sig")).await;
    let mut expected = State::new();
    let sync = br#"{"title":"hello","k3":"x"}"#;
    src.send(&protocol::signal(false, 0, 0, sync))
        .await
        .unwrap();
    signal::fold(&mut expected, false, signal::parse(sync).unwrap());

    let mut sse = Sse::open(&t, "/events/sig", &[("Origin", "https://page.example")]).await;
    assert_eq!(sse.status(), 200, "{}", sse.head);
    assert!(sse.head.contains("Content-Type: text/event-stream"));
    assert!(sse.head.contains("Access-Control-Allow-Origin: *"));
    let mut rx = within(Receiver::connect(&t.url("/stream/sig")))
        .await
        .unwrap();
    eventually("SSE client counted", || {
        t.relay.channel("sig").is_some_and(|c| c.sse_clients == 1)
    })
    .await;

    let first = sse.next().await;
    assert_eq!(first.kind, "sync", "a stream starts with the whole state");
    let mut state = State::new();
    fold(&mut state, &first);
    let mut last_id = first.id;

    send_diffs(&mut src, &mut expected, 0..2000).await;
    while state != expected {
        let ev = sse.next().await;
        assert!(ev.id > last_id, "ids increase: {} after {last_id}", ev.id);
        last_id = ev.id;
        fold(&mut state, &ev);
    }
    within(async {
        while rx.signal() != &expected {
            rx.next().await;
        }
    })
    .await;
    assert_eq!(as_value(rx.signal()), as_value(&state));
    let m = common::http_get(&t, "/metrics").await.1;
    assert!(m.contains("relay_connections{role=\"sse\"} 1"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_stream_resumed_with_last_event_id_misses_nothing() {
    let t = start(&[]).await;
    let mut src = connect(&t.url("/source/resume")).await;
    let mut expected = State::new();
    src.send(&protocol::signal(false, 0, 0, b"{}"))
        .await
        .unwrap();

    let mut sse = Sse::open(&t, "/events/resume", &[]).await;
    let mut state = State::new();
    let first = sse.next().await;
    fold(&mut state, &first);
    send_diffs(&mut src, &mut expected, 0..100).await;
    let mut last = first.id;
    while state != expected {
        let ev = sse.next().await;
        last = ev.id;
        fold(&mut state, &ev);
    }
    drop(sse);
    eventually("SSE client gone", || {
        t.relay
            .channel("resume")
            .is_some_and(|c| c.sse_clients == 0)
    })
    .await;

    // 300 diffs while nobody listens; a receiver shows when the relay has
    // folded them all.
    send_diffs(&mut src, &mut expected, 100..400).await;
    let mut rx = within(Receiver::connect(&t.url("/stream/resume")))
        .await
        .unwrap();
    within(async {
        while rx.signal() != &expected {
            rx.next().await;
        }
    })
    .await;

    let id = last.to_string();
    let mut sse = Sse::open(&t, "/events/resume", &[("Last-Event-ID", &id)]).await;
    for n in 1..=300 {
        let ev = sse.next().await;
        assert_eq!(ev.kind, "diff", "resumed, not resynced");
        assert_eq!(ev.id, last + n, "every missed event, in order");
        fold(&mut state, &ev);
    }
    assert_eq!(as_value(&state), as_value(&expected));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_too_old_id_gets_a_fresh_sync() {
    let t = start(&["--sse-replay-events", "10"]).await;
    let mut src = connect(&t.url("/source/old")).await;
    let mut expected = State::new();
    src.send(&protocol::signal(false, 0, 0, b"{}"))
        .await
        .unwrap();
    let mut sse = Sse::open(&t, "/events/old", &[]).await;
    let first = sse.next().await;
    assert_eq!(first.kind, "sync");
    send_diffs(&mut src, &mut expected, 0..100).await;
    let mut state = State::new();
    fold(&mut state, &first);
    let mut last = first.id;
    while state != expected {
        let ev = sse.next().await;
        last = ev.id;
        fold(&mut state, &ev);
    }
    drop(sse);

    let old = first.id.to_string();
    let mut sse = Sse::open(&t, "/events/old", &[("Last-Event-ID", &old)]).await;
    let ev = sse.next().await;
    assert_eq!(ev.kind, "sync", "the buffer holds only the last 10");
    assert_eq!(ev.id, last);
    let mut fresh = State::new();
    fold(&mut fresh, &ev);
    assert_eq!(as_value(&fresh), as_value(&expected));

    // An id the buffer still covers is replayed.
    let recent = (last - 3).to_string();
    let mut sse = Sse::open(&t, "/events/old", &[("Last-Event-ID", &recent)]).await;
    for n in 1..=3 {
        let ev = sse.next().await;
        assert_eq!((ev.kind.as_str(), ev.id), ("diff", last - 3 + n));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_clients_count_against_the_receiver_limit() {
    let t = start(&["--max-receivers", "1", "--sse-heartbeat-ms", "50"]).await;
    let mut sse = Sse::open(&t, "/events/full", &[]).await;
    let ev = sse.next().await;
    // Ids are opaque numbers, random per channel.
    assert_eq!((ev.kind.as_str(), ev.data.as_str()), ("sync", "{}"));
    let second = Sse::open(&t, "/events/full", &[]).await;
    assert_eq!(second.status(), 503);
    // Heartbeats are comment lines.
    while !String::from_utf8_lossy(&sse.buf).contains(":\n\n") {
        assert!(sse.fill().await);
    }
    let (status, _) = common::http_get(&t, "/events/bad%20name").await;
    assert_eq!(status, 400);
    let resp = {
        let mut s = TcpStream::connect(t.addr).await.unwrap();
        s.write_all(b"POST /events/full HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        within(s.read_to_string(&mut out)).await.unwrap();
        out
    };
    assert!(resp.starts_with("HTTP/1.1 405"), "{resp}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_needs_a_receiver_token_and_an_allowed_origin() {
    let dir = std::env::temp_dir().join(format!("sse-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret = dir.join("secret");
    std::fs::write(&secret, "sse-test-secret-0123456789abcdef\n").unwrap();
    let secret_s = secret.to_str().unwrap();
    let t = start(&[
        "--jwt-secret-file",
        secret_s,
        "--allowed-origins",
        "https://ok.example",
    ])
    .await;
    let token = |role: &str| {
        let cfg = bitstream_relay::Config::default();
        let cfg = bitstream_relay::Config {
            jwt_secret_file: Some(secret.clone()),
            ..cfg
        };
        bitstream_relay::mint_token(
            &cfg,
            &bitstream_relay::TokenArgs {
                channels: vec!["tok".into()],
                roles: vec![role.into()],
                ttl: Duration::from_secs(600),
                sub: None,
            },
        )
        .unwrap()
    };
    assert_eq!(Sse::open(&t, "/events/tok", &[]).await.status(), 401);
    let src = format!("/events/tok?token={}", token("source"));
    assert_eq!(Sse::open(&t, &src, &[]).await.status(), 403);
    let ok = format!("/events/tok?token={}", token("receiver"));
    let bad_origin = [("Origin", "https://evil.example")];
    assert_eq!(Sse::open(&t, &ok, &bad_origin).await.status(), 403);
    let sse = Sse::open(&t, &ok, &[("Origin", "https://ok.example")]).await;
    assert_eq!(sse.status(), 200);
    assert!(sse
        .head
        .contains("Access-Control-Allow-Origin: https://ok.example"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Reads events until the folded state equals `expected`; the last id.
async fn read_until(sse: &mut Sse, state: &mut State, expected: &State) -> u64 {
    let mut last = 0;
    while state != expected {
        let ev = sse.next().await;
        last = ev.id;
        fold(state, &ev);
    }
    last
}

/// A `Last-Event-ID` names one stream: from a relay that restarted (its
/// channels created anew, numbered alike on the old code) or from before a
/// new source claimed the channel, it gets a fresh `sync`, never another
/// stream's events after a matching number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_from_another_stream_gets_a_fresh_sync() {
    /// A relay whose source sent `n` diffs to one listener: the listener,
    /// what it folded, the last id and the source.
    async fn listened(n: usize) -> (TestRelay, Sse, State, State, u64, Client) {
        let t = start(&[]).await;
        let mut src = connect(&t.url("/source/ids")).await;
        let mut expected = State::new();
        let mut sse = Sse::open(&t, "/events/ids", &[]).await;
        let mut state = State::new();
        fold(&mut state, &sse.next().await);
        send_diffs(&mut src, &mut expected, 0..n).await;
        let last = read_until(&mut sse, &mut state, &expected).await;
        (t, sse, state, expected, last, src)
    }
    // The first relay: an id after 50 diffs.
    let old_id = listened(50).await.4;
    // The relay "restarted": the same stream again, listened to from the start.
    let (t, mut sse, mut state, mut expected, before_claim, src) = listened(100).await;
    let old = old_id.to_string();
    let mut other = Sse::open(&t, "/events/ids", &[("Last-Event-ID", &old)]).await;
    assert_eq!(other.next().await.kind, "sync", "an id of the old relay");
    // A new source: ids from before its claim name the earlier stream.
    drop(src);
    eventually("source gone", || {
        t.relay.channel("ids").is_some_and(|c| !c.source)
    })
    .await;
    let mut src = connect(&t.url("/source/ids")).await;
    send_diffs(&mut src, &mut expected, 100..120).await;
    read_until(&mut sse, &mut state, &expected).await;
    let id = before_claim.to_string();
    let mut stale = Sse::open(&t, "/events/ids", &[("Last-Event-ID", &id)]).await;
    let first = stale.next().await;
    assert_eq!(first.kind, "sync", "an id of the earlier source's stream");
    let mut fresh = State::new();
    fold(&mut fresh, &first);
    assert_eq!(as_value(&fresh), as_value(&expected));
}

/// The relay process's resident set, in bytes (`None` where
/// `/proc/self/status` cannot be read).
fn rss() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Sets `TCP_MAXSEG` on a socket not yet connected.
fn set_mss(sock: &tokio::net::TcpSocket, mss: libc::c_int) {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid descriptor and an option value of the size given.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_MAXSEG,
            (&mss as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
}

/// 100 clients that never read, on a channel with a 1 MiB signal state:
/// they share one copy of the sync (the process grows by far less than 100
/// copies), and what they hold is charged to `--max-memory` for as long as
/// they hold it: after the state moved on, the old sync they are still
/// writing stays in the gauge until they go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_that_never_read_share_the_sync_and_are_charged() {
    const STATE: usize = 1 << 20;
    const WATCHERS: usize = 100;
    // No resume ring: it would hold (and charge) the source's message.
    let t = start(&[
        "--max-signal-state",
        "4194304",
        "--slow-timeout-ms",
        "60000",
        "--resume-ring-bytes",
        "0",
    ])
    .await;
    let mut src = connect(&t.url("/source/big")).await;
    let sync = json!({ "blob": "x".repeat(STATE) }).to_string();
    src.send(&protocol::signal(false, 0, 0, sync.as_bytes()))
        .await
        .unwrap();
    // A receiver with the state: the relay folded it and built its sync.
    let mut rx = within(Receiver::connect(&t.url("/stream/big")))
        .await
        .unwrap();
    within(async {
        while !rx.signal().contains_key("blob") {
            rx.next().await;
        }
    })
    .await;
    let rss_before = rss();

    let mut watchers = Vec::new();
    for _ in 0..WATCHERS {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        // A small window and segments of a real network (loopback's 64 KiB
        // ones let the kernel take megabytes): the relay's writes block.
        sock.set_recv_buffer_size(4096).unwrap();
        set_mss(&sock, 1400);
        let mut s = within(sock.connect(t.addr)).await.unwrap();
        s.write_all(b"GET /events/big HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        watchers.push(s);
    }
    eventually("every watcher counted", || {
        t.relay
            .channel("big")
            .is_some_and(|c| c.sse_clients == WATCHERS)
    })
    .await;
    // Let every stream's first write fill what the kernel takes and block.
    tokio::time::sleep(Duration::from_millis(500)).await;
    if let (Some(before), Some(now)) = (rss_before, rss()) {
        let grown = now.saturating_sub(before);
        assert!(
            grown < WATCHERS * STATE / 4,
            "{WATCHERS} watchers grew the process by {} MiB: private copies of the sync",
            grown >> 20
        );
    }

    // The state moves on (a reader gets the new sync, so the relay builds
    // it): the old sync lives on only in the watchers' unsent bytes.
    src.send(&protocol::signal(false, 1, 0, br#"{"small":1}"#))
        .await
        .unwrap();
    within(async {
        while !rx.signal().contains_key("small") {
            rx.next().await;
        }
    })
    .await;
    let mut reader = Sse::open(&t, "/events/big", &[]).await;
    let ev = reader.next().await;
    assert!(
        ev.kind == "sync" && ev.data == r#"{"small":1}"#,
        "the new state: {} of {} bytes",
        ev.kind,
        ev.data.len()
    );
    let held = t.relay.summary().memory_bytes;
    drop(watchers);
    eventually("the watchers gone", || {
        t.relay.channel("big").is_some_and(|c| c.sse_clients == 1)
    })
    .await;
    let left = t.relay.summary().memory_bytes;
    assert!(
        held.saturating_sub(left) >= STATE,
        "the watchers' unsent sync is charged until they go: {held} B with them, {left} B after"
    );
}
