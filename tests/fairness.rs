//! A source that always has its next frame ready does not keep the
//! relay's worker from its receivers' own tasks. With one runtime worker
//! (`--threads 1`, what a relay pinned to one core gets), a receiver whose
//! socket does not take a frame whole needs its task to write the rest;
//! were the source's task to keep the worker through a long burst, those
//! queues would overflow and receivers that keep up would be skipped
//! forward (saturate lost hundreds of frames a run that way).

mod common;

use bitstream_relay::protocol::{self, FrameType};
use common::process::{bin, Running};
use common::*;

/// Frames in the burst, and their size: 30 MiB per receiver, almost four
/// times the default 8 MiB egress queue.
const FRAMES: usize = 120;
const FRAME: usize = 256 * 1024;
const RECEIVERS: usize = 16;

/// The value of an unlabelled counter in a Prometheus scrape.
fn counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receivers_that_keep_up_get_every_frame_of_a_full_speed_source_on_one_worker() {
    let port = free_port();
    let mut cmd = bin();
    cmd.args(["--addr", &format!("127.0.0.1:{port}"), "--threads", "1"]);
    let relay = Running::start(cmd);
    relay.stderr.wait_for("relay listening");
    let base = format!("ws://127.0.0.1:{port}");

    let mut readers = Vec::new();
    for _ in 0..RECEIVERS {
        let mut c = connect(&format!("{base}/stream/burst")).await;
        readers.push(tokio::spawn(async move {
            let mut got = Vec::new();
            while got.last() != Some(&(FRAMES - 1)) {
                let m = within(c.recv_binary()).await.expect("receiver ended");
                assert_eq!(m.len(), 16 + FRAME);
                got.push(usize::from(m[16]));
            }
            got
        }));
    }

    // Every receiver is on the channel before the first frame.
    let start = tokio::time::Instant::now();
    while !get_metrics(port).await.contains(&format!(
        "relay_connections{{role=\"receiver\"}} {RECEIVERS}"
    )) {
        assert!(start.elapsed() < DEADLINE, "receivers did not register");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }

    let mut src = connect(&format!("{base}/source/burst")).await;
    for i in 0..FRAMES {
        let m = protocol::frame(
            FrameType::CompressedPixels,
            0,
            i as u16,
            0,
            (0, 0),
            &vec![i as u8; FRAME],
        );
        within(src.send(&m)).await.unwrap();
    }

    let all: Vec<usize> = (0..FRAMES).collect();
    for r in readers {
        assert_eq!(within(r).await.unwrap(), all, "every frame, in order");
    }
    let scrape = get_metrics(port).await;
    assert_eq!(counter(&scrape, "relay_slow_skips_total"), 0);
    drop(src);
}

/// `GET /metrics` over a plain socket.
async fn get_metrics(port: u16) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    within(s.read_to_string(&mut out)).await.unwrap();
    out
}
