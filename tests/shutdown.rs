//! The real binary: SIGTERM and SIGINT close every peer with 1001 and exit 0.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bitstream_relay::client::{Client, ClientError};
use common::{free_port, within};

fn spawn_relay(port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_bitstream-relay"))
        .args(["--addr", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn relay")
}

async fn connect_retrying(url: &str) -> Client {
    let start = Instant::now();
    loop {
        match Client::connect(url, 1 << 20).await {
            Ok(c) => return c,
            Err(e) if start.elapsed() < Duration::from_secs(20) => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("relay never came up: {e}"),
        }
    }
}

async fn check_signal(sig: i32) {
    let port = free_port();
    let mut child = spawn_relay(port);
    let base = format!("ws://127.0.0.1:{port}");
    let mut src = connect_retrying(&format!("{base}/source/x")).await;
    let mut r1 = connect_retrying(&format!("{base}/stream/x")).await;
    let mut r2 = connect_retrying(&format!("{base}/stream")).await;
    let mut sig_peer = connect_retrying(&format!("{base}/signal/x")).await;
    // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
    let rc = unsafe { libc::kill(child.id() as i32, sig) };
    assert_eq!(rc, 0);
    let sent = Instant::now();
    for c in [&mut src, &mut r1, &mut r2, &mut sig_peer] {
        match within(c.recv()).await {
            Err(ClientError::Closed(code, reason)) => {
                assert_eq!(code, 1001, "{reason}");
            }
            other => panic!("expected a 1001 close frame, got {other:?}"),
        }
    }
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(10),
            "relay did not exit within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "exit status {status:?}");
}

#[tokio::test]
async fn sigterm_closes_every_peer_with_1001_and_exits_0() {
    check_signal(libc::SIGTERM).await;
}

#[tokio::test]
async fn sigint_closes_every_peer_with_1001_and_exits_0() {
    check_signal(libc::SIGINT).await;
}

#[test]
fn help_lists_every_limit_with_its_default() {
    let out = Command::new(env!("CARGO_BIN_EXE_bitstream-relay"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for opt in [
        "--addr",
        "--max-receivers",
        "--max-channels",
        "--max-connections",
        "--max-message",
        "--max-signal-state",
        "--egress-queue",
        "--ping-interval-ms",
        "--keepalive-timeout-ms",
        "--grace-ms",
        "--handshake-timeout-ms",
    ] {
        assert!(help.contains(opt), "--help lacks {opt}");
    }
    assert!(help.contains("RELAY_MAX_RECEIVERS"));
    assert!(help.contains("[default: 20000]"));
}

#[test]
fn env_configures_the_relay() {
    let out = Command::new(env!("CARGO_BIN_EXE_bitstream-relay"))
        .env("RELAY_ADDR", "not-an-address")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not-an-address"));
}

#[test]
fn max_connections_is_capped_to_the_open_file_limit() {
    let port = free_port();
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -n 300 && exec {} --addr 127.0.0.1:{port} --max-connections 60000 --log-format json",
            env!("CARGO_BIN_EXE_bitstream-relay")
        ))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        use std::io::BufRead;
        if err.read_line(&mut line).unwrap_or(0) == 0 || line.contains("relay listening") {
            break;
        }
        lines.push(line);
    }
    let _ = child.kill();
    let _ = child.wait();
    let capped = lines.iter().find(|l| l.contains("capped"));
    let capped = capped.unwrap_or_else(|| panic!("no log line about the cap in {lines:?}"));
    assert!(capped.contains(r#""allowed":236"#), "{capped}");
}
