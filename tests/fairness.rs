//! A source that always has its next frame ready does not keep the
//! relay's worker from its receivers' own tasks. With one runtime worker
//! (`--threads 1`, what a relay pinned to one core gets), a receiver whose
//! socket does not take a frame whole needs its task to write the rest;
//! were the source's task to keep the worker through a long burst, those
//! queues would overflow and receivers that keep up would be skipped
//! forward (saturate lost hundreds of frames a run that way).

mod common;

use std::net::SocketAddr;

use common::process::{bin, Running};
use common::*;

/// Frames in the burst, and their size: 30 MiB per receiver, almost four
/// times the 8 MiB egress queue this test sets (a starved receiver then
/// overflows it long before the burst ends).
const FRAMES: usize = 120;
const FRAME: usize = 256 * 1024;
const RECEIVERS: usize = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receivers_that_keep_up_get_every_frame_of_a_full_speed_source_on_one_worker() {
    let port = free_port();
    let mut cmd = bin();
    cmd.args(["--addr", &format!("127.0.0.1:{port}"), "--threads", "1"]);
    cmd.args(["--egress-queue", "8388608"]);
    let relay = Running::start(cmd);
    relay.stderr.wait_for("relay listening");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let base = format!("ws://{addr}");

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
    let receivers = r#"relay_connections{role="receiver"}"#;
    while metric(&http_get_at(addr, "/metrics", &[]).await.1, receivers) < RECEIVERS as u64 {
        assert!(start.elapsed() < DEADLINE, "receivers did not register");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }

    let mut src = connect(&format!("{base}/source/burst")).await;
    send_indexed_frames(&mut src, FRAMES, FRAME).await;

    let all: Vec<usize> = (0..FRAMES).collect();
    for r in readers {
        assert_eq!(within(r).await.unwrap(), all, "every frame, in order");
    }
    let (_, scrape) = http_get_at(addr, "/metrics", &[]).await;
    assert_eq!(metric(&scrape, "relay_slow_skips_total"), 0);
    drop(src);
}
