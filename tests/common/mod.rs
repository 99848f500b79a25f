//! Shared helpers for the end-to-end tests: an in-process relay on an
//! ephemeral 127.0.0.1 port, clients, and deadlines.

#![allow(dead_code)]

pub mod process;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bitstream_relay::client::{Client, ClientError};
use bitstream_relay::{Config, Relay, Server};
use clap::Parser;

/// Generous deadline for anything a test waits on (machines are noisy).
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A relay running in this process.
pub struct TestRelay {
    pub addr: SocketAddr,
    pub relay: Arc<Relay>,
}

impl TestRelay {
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }
}

/// Starts a relay on 127.0.0.1:0 with extra command-line flags.
pub async fn start(flags: &[&str]) -> TestRelay {
    let mut args = vec![
        "bitstream-relay",
        "--addr",
        "127.0.0.1:0",
        "--stats-interval-ms",
        "0",
    ];
    args.extend_from_slice(flags);
    let server = Server::bind(Config::parse_from(args)).await.expect("bind");
    let t = TestRelay {
        addr: server.local_addr(),
        relay: server.relay().clone(),
    };
    tokio::spawn(server.run());
    t
}

/// Connects a client, panicking with the error if it fails.
pub async fn connect(url: &str) -> Client {
    within(Client::connect(url, 64 << 20))
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"))
}

/// Connects a client expecting a refusal.
pub async fn connect_err(url: &str) -> ClientError {
    match within(Client::connect(url, 64 << 20)).await {
        Ok(_) => panic!("{url} was accepted"),
        Err(e) => e,
    }
}

/// Awaits `f` within [`DEADLINE`].
pub async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(DEADLINE, f).await.expect("timed out")
}

/// Polls `cond` until it holds or the deadline passes.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let start = tokio::time::Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until channel `name` has `n` receivers registered.
pub async fn wait_receivers(t: &TestRelay, name: &str, n: usize) {
    eventually(&format!("{n} receivers on {name}"), || {
        // A channel nobody published on goes with its last member.
        t.relay.channel(name).map_or(0, |c| c.receivers) == n
    })
    .await;
}

/// A plain `GET path` on a fresh connection: status and body.
pub async fn http_get(t: &TestRelay, path: &str) -> (u16, String) {
    http_get_with(t, path, &[]).await
}

/// [`http_get`] with extra request headers.
pub async fn http_get_with(t: &TestRelay, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    http_get_at(t.addr, path, headers).await
}

/// [`http_get_with`] on a relay at `addr` (e.g. one started as a process).
pub async fn http_get_at(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut head = format!("GET {path} HTTP/1.1\r\nHost: x\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    let mut out = String::new();
    within(s.read_to_string(&mut out)).await.unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The value of the unlabelled metric `name` in a `/metrics` scrape.
pub fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in metrics"))
}

/// Sends `frames` frames of `size` payload bytes on `src`, each filled
/// with its index (as a byte) and numbered by it.
pub async fn send_indexed_frames(src: &mut Client, frames: usize, size: usize) {
    use bitstream_relay::protocol::{self, FrameType};
    for i in 0..frames {
        let m = protocol::frame(
            FrameType::CompressedPixels,
            0,
            i as u16,
            0,
            (0, 0),
            &vec![i as u8; size],
        );
        within(src.send(&m)).await.unwrap();
    }
}

/// Deterministic pseudo-random bytes.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A file in the temp directory holding `contents`, unique per call.
pub fn temp_file(name: &str, contents: impl AsRef<[u8]>) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let path = std::env::temp_dir().join(format!(
        "relay-test-{}-{}-{name}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, contents).unwrap();
    path
}

/// A port that was free a moment ago (for tests that start the binary).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether a test that needs an outside tool may run. A missing tool fails
/// the test, unless `opt_out` (e.g. `RELAY_SKIP_BROWSER`) is set to 1, in
/// which case the test says loudly that it checked nothing and returns
/// false. Never a silent pass.
pub fn tool_available(found: bool, what: &str, opt_out: &str) -> bool {
    if found {
        return true;
    }
    if std::env::var(opt_out).as_deref() != Ok("1") {
        panic!("{what} is not installed (`bash .ci/run` installs it); set {opt_out}=1 to skip this test on purpose");
    }
    // Straight to fd 2: the test harness captures eprintln!.
    use std::io::Write;
    let bar = "=".repeat(64);
    let _ = writeln!(
        std::io::stderr(),
        "\n{bar}\nSKIPPED ON PURPOSE ({opt_out}=1): {what} not installed, nothing checked\n{bar}\n"
    );
    false
}
