//! Slow, dead and hostile peers: none of them may slow the source, hurt
//! other receivers, leak memory or crash the relay.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bitstream_relay::client::{Client, ClientError};
use bitstream_relay::codec;
use bitstream_relay::protocol::{self, FrameType, Header, InputType, HEADER_LEN};
use bitstream_relay::Refusal;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

/// A client whose socket has a tiny receive buffer (a small TCP window).
async fn small_window_client(t: &TestRelay, path: &str) -> Client {
    let sock = TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let stream = within(sock.connect(t.addr)).await.unwrap();
    within(Client::handshake(
        stream,
        &t.addr.to_string(),
        path,
        64 << 20,
    ))
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_never_reads_hurts_nobody() {
    let t = start(&["--egress-queue", "4000000", "--slow-timeout-ms", "1500"]).await;
    let stuck = small_window_client(&t, "/stream/hd").await;
    let mut healthy = Vec::new();
    for _ in 0..4 {
        healthy.push(connect(&t.url("/stream/hd")).await);
    }
    wait_receivers(&t, "hd", 5).await;
    let mut src = connect(&t.url("/source/hd")).await;
    let frames = 90u16;
    let readers: Vec<_> = healthy
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let mut seqs = Vec::new();
                while seqs.len() < frames as usize {
                    let m = c.recv_binary().await.expect("healthy receiver read");
                    assert_eq!(m.len(), HEADER_LEN + 640 * 360 * 4);
                    seqs.push(Header::parse(&m).unwrap().seq);
                }
                (seqs, c)
            })
        })
        .collect();
    // What the relay holds for clients, sampled while the stream runs (its
    // own gauge: the test process's RSS would count the tests running
    // beside this one).
    let peak = Arc::new(AtomicUsize::new(0));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = tokio::spawn({
        let (relay, peak, sampling) = (t.relay.clone(), peak.clone(), sampling.clone());
        async move {
            while sampling.load(Ordering::Relaxed) {
                peak.fetch_max(relay.summary().memory_bytes, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    });
    let frame = noise(640 * 360 * 4, 7);
    let mut tick = tokio::time::interval(Duration::from_millis(33));
    for i in 0..frames {
        tick.tick().await;
        src.send(&protocol::pixels_keyframe(
            i,
            i as u32 * 33,
            640,
            360,
            &frame,
        ))
        .await
        .unwrap();
    }
    let mut keep_alive = Vec::new();
    for r in readers {
        let (seqs, client) = within(r).await.unwrap();
        assert_eq!(
            seqs,
            (0..frames).collect::<Vec<_>>(),
            "every frame, in order"
        );
        keep_alive.push(client);
    }
    // The stuck receiver is closed as slow; its memory is released.
    eventually("stuck receiver closed as slow", || {
        t.relay
            .channel("hd")
            .is_some_and(|c| c.traffic.slow_closes >= 1 && c.receivers == 4)
    })
    .await;
    sampling.store(false, Ordering::Relaxed);
    sampler.await.unwrap();
    // 90 frames of 0.9 MB went through (83 MB); the stuck peer may hold at
    // most its queue bound (4 MB) plus the frame it is on, the channel its
    // cached keyframe and its resume ring (4 MiB), each healthy receiver
    // the frame it is written, the source its read buffer.
    let frame_bytes = 640 * 360 * 4 + HEADER_LEN;
    let ring = 4 << 20;
    let peak = peak.load(Ordering::Relaxed);
    assert!(
        peak <= 4_000_000 + ring + 8 * frame_bytes,
        "held {peak} bytes at the peak"
    );
    // Once the stuck peer's session has ended, its queue is released: what
    // remains is the channel's (keyframe, resume ring) and the source's
    // reuse buffer.
    eventually("the stuck peer's queue released", || {
        let c = t.relay.channel("hd").expect("channel");
        let channel_holds = c.cached_bytes + c.resume_ring_bytes;
        t.relay.summary().memory_bytes <= channel_holds + 2 * frame_bytes
    })
    .await;
    drop(stuck);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_receiver_ends_with_the_exact_current_state() {
    let t = start(&[
        "--egress-queue",
        "1000000",
        "--slow-max-skips",
        "100000",
        "--slow-timeout-ms",
        "60000",
    ])
    .await;
    let mut slow = small_window_client(&t, "/stream/burst").await;
    wait_receivers(&t, "burst", 1).await;
    let mut src = connect(&t.url("/source/burst")).await;
    let (w, h) = (320u16, 240u16);
    let len = w as usize * h as usize * 4;
    let mut cur = noise(len, 11);
    let mut state = serde_json::json!({});
    let reader = tokio::spawn(async move {
        // Read slowly during the burst, then fast until the state matches.
        let mut picture: Option<Vec<u8>> = None;
        let mut signal = serde_json::Value::Null;
        let mut n = 0u64;
        let mut target: Option<serde_json::Value> = None;
        loop {
            let m = slow.recv_binary().await.expect("throttled read");
            n += 1;
            let hd = Header::parse(&m).unwrap();
            match hd.frame_type() {
                FrameType::Pixels | FrameType::Keyframe => picture = Some(m[HEADER_LEN..].to_vec()),
                FrameType::DeltaPixels => {
                    codec::apply_delta(
                        picture.as_mut().expect("delta with no picture"),
                        &m[HEADER_LEN..],
                    )
                    .expect("delta applies");
                }
                FrameType::SignalSync => signal = serde_json::from_slice(&m[HEADER_LEN..]).unwrap(),
                FrameType::SignalDiff => {
                    let d: serde_json::Value = serde_json::from_slice(&m[HEADER_LEN..]).unwrap();
                    for (k, v) in d.as_object().unwrap() {
                        if v.is_null() {
                            signal.as_object_mut().unwrap().remove(k);
                        } else {
                            signal[k] = v.clone();
                        }
                    }
                }
                FrameType::Haptic => {
                    // The end marker carries the final picture and state.
                    let end: serde_json::Value = serde_json::from_slice(&m[HEADER_LEN..]).unwrap();
                    target = Some(end);
                }
                _ => {}
            }
            if let Some(end) = &target {
                if signal == end["state"]
                    && picture.as_ref().map(|p| codec_sum(p)) == end["sum"].as_u64()
                {
                    return (n, picture.unwrap(), signal);
                }
            }
            if n < 200 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    let mut sent = 0usize;
    let mut i = 0u16;
    src.send(&protocol::pixels_keyframe(0, 0, w, h, &cur))
        .await
        .unwrap();
    sent += len;
    while sent < 25_000_000 {
        i += 1;
        let mut next = cur.clone();
        let at = (i as usize * 7919) % (len - 40_000);
        next[at..at + 30_000].copy_from_slice(&noise(30_000, i as u64));
        let mut z = Vec::new();
        codec::encode_delta(&cur, &next, &mut z).unwrap();
        let m = protocol::delta_pixels(i, 0, w, h, &z);
        sent += m.len();
        src.send(&m).await.unwrap();
        cur = next;
        let key = format!("k{}", i % 13);
        state[&key] = i.into();
        src.send(&protocol::signal(
            true,
            i,
            0,
            serde_json::json!({ key: i }).to_string().as_bytes(),
        ))
        .await
        .unwrap();
        if i.is_multiple_of(50) {
            src.send(&protocol::pixels_keyframe(i, 0, w, h, &cur))
                .await
                .unwrap();
            sent += len;
        }
    }
    // The end marker: a live-only frame, so a skipped receiver may miss it;
    // resend it until the reader is done.
    let end = serde_json::json!({ "sum": codec_sum(&cur), "state": state }).to_string();
    let done = async {
        let mut reader = reader;
        loop {
            src.send(&protocol::frame(
                FrameType::Haptic,
                0,
                0,
                0,
                (0, 0),
                end.as_bytes(),
            ))
            .await
            .unwrap();
            tokio::select! {
                r = &mut reader => return r.unwrap(),
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    };
    let (_n, picture, signal) = within(done).await;
    assert_eq!(picture, cur, "exact current picture");
    assert_eq!(signal, state, "exact current signal state");
    let skips = t.relay.channel("burst").unwrap().traffic.slow_skips;
    assert!(
        skips >= 1,
        "the throttled receiver was never skipped forward"
    );
}

/// A cheap order-sensitive checksum of a picture.
fn codec_sum(p: &[u8]) -> u64 {
    p.iter()
        .fold(0u64, |a, &b| a.wrapping_mul(31).wrapping_add(b as u64))
}

#[tokio::test]
async fn slowloris_handshakes_time_out() {
    let t = start(&["--handshake-timeout-ms", "300"]).await;
    let mut s = tokio::net::TcpStream::connect(t.addr).await.unwrap();
    s.write_all(b"GET /stream/x HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    within(s.read_to_string(&mut out)).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    assert_eq!(t.relay.summary().refused(Refusal::HandshakeTimeout), 1);
    // A client that sends nothing at all is dropped too.
    let mut idle = tokio::net::TcpStream::connect(t.addr).await.unwrap();
    let mut buf = Vec::new();
    within(idle.read_to_end(&mut buf)).await.unwrap();
    eventually("connections released", || {
        t.relay.summary().connections == 0
    })
    .await;
}

#[tokio::test]
async fn per_ip_cap_holds() {
    let t = start(&["--max-connections-per-ip", "3"]).await;
    let a = connect(&t.url("/stream/ip")).await;
    let _b = connect(&t.url("/stream/ip")).await;
    let _c = connect(&t.url("/stream/ip")).await;
    match connect_err(&t.url("/stream/ip")).await {
        ClientError::Refused { status, body } => {
            assert_eq!(status, 503);
            assert!(body.contains("per_ip_limit"), "{body}");
        }
        e => panic!("unexpected {e}"),
    }
    a.close(1000).await.unwrap();
    eventually("slot freed", || t.relay.summary().connections == 2).await;
    let _d = connect(&t.url("/stream/ip")).await;
}

#[tokio::test]
async fn garbage_frames_close_only_their_sender() {
    let t = start(&[]).await;
    let mut r = connect(&t.url("/stream/g")).await;
    wait_receivers(&t, "g", 1).await;
    let mut src = connect(&t.url("/source/g")).await;
    // Unmasked frame, reserved bits, unknown opcode, bad UTF-8 close reason.
    for garbage in [
        &[0x82u8, 0x03, 1, 2, 3][..],
        &[0xF2, 0x80, 0, 0, 0, 0],
        &[0x83, 0x80, 0, 0, 0, 0],
    ] {
        let mut bad = connect(&t.url("/source/other")).await;
        bad.send_raw(garbage).await.unwrap();
        match within(bad.recv()).await {
            Err(ClientError::Closed(code, _)) => assert_eq!(code, 1002),
            other => panic!("expected 1002, got {other:?}"),
        }
    }
    let m = protocol::frame(FrameType::Haptic, 0, 1, 0, (0, 0), b"fine");
    src.send(&m).await.unwrap();
    assert_eq!(&within(r.recv_binary()).await.unwrap()[..], &m[..]);
    // A fresh channel still works.
    let mut r2 = connect(&t.url("/stream/fresh")).await;
    wait_receivers(&t, "fresh", 1).await;
    let mut s2 = connect(&t.url("/source/fresh")).await;
    s2.send(&m).await.unwrap();
    assert_eq!(&within(r2.recv_binary()).await.unwrap()[..], &m[..]);
}

#[tokio::test]
async fn input_floods_are_capped_and_abusers_closed() {
    let t = start(&[
        "--input-rate",
        "100",
        "--input-burst",
        "20",
        "--input-flood-drops",
        "1000000",
    ])
    .await;
    let mut src = connect(&t.url("/source/flood")).await;
    let mut r = connect(&t.url("/stream/flood")).await;
    wait_receivers(&t, "flood", 1).await;
    let started = std::time::Instant::now();
    let mut batch = Vec::new();
    for i in 0..5000u16 {
        batch.extend(bitstream_relay::ws::client_frame(
            bitstream_relay::ws::OP_BINARY,
            true,
            &protocol::pointer_input(InputType::Pointer, i, 0, i, i, 0),
            [1, 2, 3, 4],
        ));
    }
    r.send_raw(&batch).await.unwrap();
    eventually("all inputs processed", || {
        let c = t.relay.channel("flood").unwrap().traffic;
        c.inputs + c.dropped == 5000
    })
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    let c = t.relay.channel("flood").unwrap().traffic;
    let cap = 20.0 + 100.0 * elapsed + 1.0;
    assert!(
        (c.inputs as f64) <= cap,
        "{} inputs forwarded, cap {cap}",
        c.inputs
    );
    assert!(c.dropped >= 5000 - cap as u64);
    // The source got exactly the forwarded ones: the burst (the bucket
    // starts full) is the first 20 sent, and after it every forwarded input
    // comes in the order it was sent, once, and nothing else.
    let mut got = Vec::new();
    for _ in 0..c.inputs {
        let m = within(src.recv_binary()).await.unwrap();
        got.push(Header::parse(&m).unwrap().seq);
    }
    assert_eq!(
        got[..20],
        (0..20).collect::<Vec<u16>>()[..],
        "the burst, in order"
    );
    assert!(
        got.windows(2).all(|w| w[0] < w[1]),
        "forwarded inputs in send order, no duplicates: {got:?}"
    );
    assert!(got.iter().all(|&s| s < 5000));
    let extra = tokio::time::timeout(Duration::from_millis(300), src.recv_binary()).await;
    assert!(
        extra.is_err(),
        "an input the counters did not count: {extra:?}"
    );

    // With a flood threshold, the abuser is closed with 1008.
    let t = start(&[
        "--input-rate",
        "100",
        "--input-burst",
        "20",
        "--input-flood-drops",
        "100",
    ])
    .await;
    let _src = connect(&t.url("/source/flood")).await;
    let mut r = connect(&t.url("/stream/flood")).await;
    r.send_raw(&batch).await.unwrap();
    match within(r.recv()).await {
        Err(ClientError::Closed(code, reason)) => {
            assert_eq!((code, reason.as_str()), (1008, "input flood"))
        }
        other => panic!("expected a 1008 close, got {other:?}"),
    }
}

#[tokio::test]
async fn a_peer_closed_with_unread_input_still_gets_its_close_frame() {
    let t = start(&["--egress-queue", "100000000", "--slow-timeout-ms", "60000"]).await;
    let mut src = connect(&t.url("/source/unread")).await;
    // A receiver that is behind: frames wait in the relay's socket buffer.
    let mut r = small_window_client(&t, "/stream/unread").await;
    wait_receivers(&t, "unread", 1).await;
    for i in 0..20u16 {
        src.send(&protocol::frame(
            FrameType::Haptic,
            0,
            i,
            0,
            (0, 0),
            &noise(200_000, i as u64),
        ))
        .await
        .unwrap();
    }
    // Then it announces 1 GiB and keeps sending: the relay closes it with
    // 1009 while our bytes are unread on its side. Closing a socket with
    // unread input resets it and would throw away the frames and the close
    // frame still waiting in the relay's send buffer.
    let mut wire = vec![0x82u8, 0xFF, 0, 0, 0, 0, 0x40, 0, 0, 0, 1, 2, 3, 4];
    wire.extend(std::iter::repeat_n(0x55u8, 64 * 1024));
    r.send_raw(&wire).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let mut frames = 0;
    loop {
        match within(r.recv()).await {
            Ok(_) => frames += 1,
            Err(ClientError::Closed(code, _)) => {
                assert_eq!(code, 1009);
                break;
            }
            Err(e) => panic!("after {frames} frames: expected a 1009 close frame, got {e}"),
        }
    }
}
