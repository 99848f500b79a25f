//! A source faster than most of its receivers is slowed to their pace
//! (`--pace-wait-ms`), instead of frames being dropped for all of them; a
//! receiver that cannot keep up is still skipped forward and never slows
//! the source for the rest.

mod common;

use std::time::Duration;

use bitstream_relay::client::Client;
use common::*;
use tokio::net::TcpSocket;
use tokio::task::JoinHandle;

/// Frames in the burst, and their size: 20 MiB, over the queue bound.
const FRAMES: usize = 40;
const FRAME: usize = 512 * 1024;
/// The egress queue bound these tests set: 8 MiB.
const QUEUE: &str = "8388608";

/// A receiver with a 64 KiB receive buffer (so the relay's queue, not the
/// kernel, holds what it has not read yet).
async fn small_window_receiver(t: &TestRelay, name: &str, seed: u32) -> Client {
    let sock = TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(64 * 1024).unwrap();
    let tcp = within(sock.connect(t.addr)).await.unwrap();
    within(Client::handshake_over(
        tcp,
        t.addr,
        seed,
        "127.0.0.1",
        &format!("/stream/{name}"),
        &[],
        64 << 20,
    ))
    .await
    .expect("handshake")
}

/// Reads frames, pausing `pause` after each, until frame `FRAMES - 1` or
/// 3 s without one: the indices it got (a frame's bytes all equal its
/// index).
fn read_slowly(mut c: Client, pause: Duration) -> JoinHandle<Vec<usize>> {
    tokio::spawn(async move {
        let mut got = Vec::new();
        while got.last() != Some(&(FRAMES - 1)) {
            let Ok(m) = tokio::time::timeout(Duration::from_secs(3), c.recv_binary()).await else {
                break;
            };
            let m = m.expect("the receiver was dropped");
            assert_eq!(m.len(), 16 + FRAME);
            let i = m[16] as usize;
            assert!(m[16..].iter().all(|b| *b as usize == i), "frame {i} intact");
            got.push(i);
            tokio::time::sleep(pause).await;
        }
        got
    })
}

/// Sends the burst as fast as the relay takes it.
async fn send_burst(t: &TestRelay, name: &str) {
    let mut src = connect(&t.url(&format!("/source/{name}"))).await;
    send_indexed_frames(&mut src, FRAMES, FRAME).await;
    // Held open until the receivers are done (the test's end drops it).
    tokio::spawn(async move { while src.recv().await.is_ok() {} });
}

/// Three receivers reading ~25 MB/s each, a burst of 20 MiB: what each got.
async fn three_slow_receivers(pace_ms: &str) -> (TestRelay, Vec<Vec<usize>>) {
    let t = start(&["--pace-wait-ms", pace_ms, "--egress-queue", QUEUE]).await;
    let mut tasks = Vec::new();
    for seed in 0..3 {
        let c = small_window_receiver(&t, "burst", seed).await;
        tasks.push(read_slowly(c, Duration::from_millis(20)));
    }
    wait_receivers(&t, "burst", 3).await;
    send_burst(&t, "burst").await;
    let mut got = Vec::new();
    for task in tasks {
        got.push(within(task).await.unwrap());
    }
    (t, got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_faster_than_all_its_receivers_is_slowed_and_every_frame_arrives() {
    // A long enough wait that the burst's frames never count as late.
    let (t, got) = three_slow_receivers("10000").await;
    let all: Vec<usize> = (0..FRAMES).collect();
    for g in &got {
        assert_eq!(g, &all, "every frame, in order");
    }
    let traffic = t.relay.channel("burst").unwrap().traffic;
    assert_eq!(traffic.slow_skips, 0);
    assert!(traffic.source_waits > 0, "the source waited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_pacing_the_same_burst_skips_them_forward() {
    let (t, got) = three_slow_receivers("0").await;
    let traffic = t.relay.channel("burst").unwrap().traffic;
    assert!(traffic.slow_skips > 0, "receivers were skipped forward");
    assert_eq!(traffic.source_waits, 0);
    assert!(got.iter().any(|g| g.len() < FRAMES), "frames were lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_never_reads_is_skipped_and_does_not_hold_the_source() {
    let t = start(&["--pace-wait-ms", "10000", "--egress-queue", QUEUE]).await;
    let mut tasks = Vec::new();
    for seed in 0..2 {
        let c = small_window_receiver(&t, "one-stalls", seed).await;
        tasks.push(read_slowly(c, Duration::from_millis(5)));
    }
    let _stalled = small_window_receiver(&t, "one-stalls", 9).await;
    wait_receivers(&t, "one-stalls", 3).await;
    // Were the source held for the stalled receiver, 40 frames would take
    // 400 s; `within` gives the whole burst 20 s.
    within(send_burst(&t, "one-stalls")).await;
    let all: Vec<usize> = (0..FRAMES).collect();
    for task in tasks {
        assert_eq!(within(task).await.unwrap(), all);
    }
    let traffic = t.relay.channel("one-stalls").unwrap().traffic;
    assert!(
        traffic.slow_skips >= 1,
        "the stalled receiver was skipped forward"
    );
}
