//! What the kernel may hold for a receiver that does not read: with
//! `--tcp-notsent-lowat`, a stalled receiver backs up in the relay's own
//! queue (counted, bounded by `--egress-queue`, skipped forward), not in
//! kernel memory every connection of the host shares.

mod common;

use bitstream_relay::client::Client;
use bitstream_relay::protocol::{self, FrameType};
use common::*;
use tokio::net::TcpSocket;

/// Bytes the relay queues for one receiver that never reads (its socket's
/// receive buffer small) after 4 MiB of frames, with `flags`.
async fn queued_for_a_stalled_receiver(flags: &[&str]) -> (usize, usize) {
    let mut args = vec!["--egress-queue", "67108864"];
    args.extend_from_slice(flags);
    let t = start(&args).await;
    let sock = TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(16 * 1024).unwrap();
    let stream = sock.connect(t.addr).await.unwrap();
    let _stalled = within(Client::handshake(stream, "x", "/stream/k", 1 << 20))
        .await
        .unwrap();
    wait_receivers(&t, "k", 1).await;
    let mut src = connect(&t.url("/source/k")).await;
    let payload = noise(64 * 1024, 3);
    let total = 64 * payload.len();
    for i in 0..64u16 {
        let m = protocol::frame(FrameType::AudioPcm, 0, i, 0, (2, 4800), &payload);
        src.send(&m).await.unwrap();
    }
    // Everything the source sent has been fanned out once the relay counts it.
    eventually("64 frames in", || {
        t.relay
            .channel("k")
            .is_some_and(|c| c.traffic.frames_in >= 64)
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let (_, metrics) = http_get(&t, "/metrics").await;
    let queued = metrics
        .lines()
        .find_map(|l| l.strip_prefix("relay_egress_queue_bytes "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .expect("relay_egress_queue_bytes in /metrics");
    (queued as usize, total)
}

#[tokio::test]
async fn a_stalled_receiver_backs_up_in_the_relay_not_in_the_kernel() {
    let (queued, total) = queued_for_a_stalled_receiver(&["--tcp-notsent-lowat", "16384"]).await;
    // The kernel holds at most the low-water mark unsent, plus what is in
    // flight to a 16 KiB receive window (and the frame that crossed the mark).
    assert!(
        queued >= total - 512 * 1024,
        "only {queued} of {total} bytes queued in the relay: the kernel took the rest"
    );
}

#[tokio::test]
async fn by_default_the_kernel_holds_at_most_about_a_mebibyte_unsent() {
    let (queued, total) = queued_for_a_stalled_receiver(&[]).await;
    assert!(
        queued >= total - 2 * 1024 * 1024,
        "only {queued} of {total} bytes queued in the relay: the kernel took the rest"
    );
}
