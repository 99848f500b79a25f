//! End-to-end behaviour of the relay over real sockets on 127.0.0.1:
//! fan-out, fragmentation, isolation, routing, inputs, catch-up, limits.

mod common;

use bitstream_relay::client::{ClientError, Message};
use bitstream_relay::codec;
use bitstream_relay::protocol::{self, FrameType, Header, InputType, HEADER_LEN};
use bitstream_relay::ws;
use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message as TMessage;

/// A receiver on an independent WebSocket implementation (tungstenite).
async fn tungstenite_receiver(
    url: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let mut cfg = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default();
    cfg.max_message_size = Some(64 << 20);
    cfg.max_frame_size = Some(64 << 20);
    let (ws, _) = within(tokio_tungstenite::connect_async_with_config(
        url,
        Some(cfg),
        false,
    ))
    .await
    .expect("tungstenite connect");
    ws
}

async fn next_binary(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> Vec<u8> {
    loop {
        match within(ws.next())
            .await
            .expect("stream ended")
            .expect("read")
        {
            TMessage::Binary(b) => return b.to_vec(),
            TMessage::Ping(_) | TMessage::Pong(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn fans_out_byte_exact_to_every_receiver_in_order() {
    let t = start(&[]).await;
    let mut rx = Vec::new();
    for _ in 0..4 {
        rx.push(tungstenite_receiver(&t.url("/stream/fan")).await);
    }
    wait_receivers(&t, "fan", 4).await;
    let mut src = connect(&t.url("/source/fan")).await;
    let big = noise(1_500_000, 1);
    let msgs = vec![
        protocol::frame(FrameType::Haptic, 0, 1, 10, (0, 0), b""),
        protocol::frame(FrameType::AudioCompressed, 0, 2, 11, (0, 0), &big),
        protocol::frame(FrameType::NeuralLatent, 0, 3, 12, (0, 0), &noise(300, 2)),
        protocol::pixels_keyframe(4, 13, 500, 600, &noise(500 * 600 * 4, 3)),
    ];
    for m in &msgs {
        src.send(m).await.unwrap();
    }
    for r in &mut rx {
        for m in &msgs {
            assert_eq!(&next_binary(r).await, m);
        }
    }
    let s = t.relay.summary().traffic;
    assert_eq!(s.frames_in, 4);
    assert_eq!(s.frames_out, 16);
}

#[tokio::test]
async fn fragmented_messages_are_reassembled() {
    let t = start(&[]).await;
    let mut r = connect(&t.url("/stream/frag")).await;
    wait_receivers(&t, "frag", 1).await;
    let mut src = connect(&t.url("/source/frag")).await;
    let msg = protocol::frame(FrameType::NeuralFrame, 0, 9, 9, (0, 0), &noise(200_000, 4));
    let mut wire = ws::client_frame(ws::OP_BINARY, false, &msg[..10], [1, 2, 3, 4]);
    wire.extend(ws::client_frame(ws::OP_PING, true, b"hi", [4, 3, 2, 1]));
    wire.extend(ws::client_frame(
        ws::OP_CONTINUATION,
        false,
        &msg[10..100_000],
        [5, 6, 7, 8],
    ));
    wire.extend(ws::client_frame(
        ws::OP_CONTINUATION,
        true,
        &msg[100_000..],
        [9, 9, 9, 9],
    ));
    src.send_raw(&wire).await.unwrap();
    assert_eq!(&within(r.recv_binary()).await.unwrap()[..], &msg[..]);
}

#[tokio::test]
async fn channels_are_isolated() {
    let t = start(&[]).await;
    let mut a = connect(&t.url("/stream/a")).await;
    let mut b = connect(&t.url("/stream/b")).await;
    wait_receivers(&t, "a", 1).await;
    wait_receivers(&t, "b", 1).await;
    let mut sa = connect(&t.url("/source/a")).await;
    let mut sb = connect(&t.url("/source/b")).await;
    for i in 0..20u16 {
        sa.send(&protocol::frame(FrameType::Haptic, 0, i, 0, (0, 0), b"A"))
            .await
            .unwrap();
        sb.send(&protocol::frame(FrameType::Haptic, 0, i, 0, (0, 0), b"B"))
            .await
            .unwrap();
    }
    for i in 0..20u16 {
        let ma = within(a.recv_binary()).await.unwrap();
        let mb = within(b.recv_binary()).await.unwrap();
        assert_eq!(
            (Header::parse(&ma).unwrap().seq, &ma[HEADER_LEN..]),
            (i, &b"A"[..])
        );
        assert_eq!(
            (Header::parse(&mb).unwrap().seq, &mb[HEADER_LEN..]),
            (i, &b"B"[..])
        );
    }
}

#[tokio::test]
async fn default_aliases_and_legacy_root_share_the_default_channel() {
    let t = start(&[]).await;
    // First `/` connection becomes the source of `default`, the next receives.
    let mut legacy_src = connect(&t.url("/")).await;
    eventually("legacy source", || {
        t.relay.channel("default").is_some_and(|c| c.source)
    })
    .await;
    let mut legacy_rx = connect(&t.url("/")).await;
    let mut alias_rx = connect(&t.url("/stream")).await;
    wait_receivers(&t, "default", 2).await;
    // `/source` is refused: `default` already has its source.
    assert!(matches!(
        connect_err(&t.url("/source")).await,
        ClientError::Refused { status: 409, .. }
    ));
    let m = protocol::frame(FrameType::Haptic, 0, 1, 2, (0, 0), b"legacy");
    legacy_src.send(&m).await.unwrap();
    assert_eq!(&within(legacy_rx.recv_binary()).await.unwrap()[..], &m[..]);
    assert_eq!(&within(alias_rx.recv_binary()).await.unwrap()[..], &m[..]);
}

#[tokio::test]
async fn inputs_reach_the_source_in_order_and_bad_ones_do_not() {
    let t = start(&[]).await;
    let mut src = connect(&t.url("/source/in")).await;
    let mut r1 = connect(&t.url("/stream/in")).await;
    let mut r2 = connect(&t.url("/stream/in")).await;
    wait_receivers(&t, "in", 2).await;
    // Not inputs, unknown type, wrong size, truncated: none may be forwarded.
    r1.send(&protocol::frame(FrameType::Haptic, 0, 0, 0, (0, 0), b"x"))
        .await
        .unwrap();
    r1.send(&protocol::input(InputType::Unknown(0x7E), 0, 0, &[1, 2, 3]))
        .await
        .unwrap();
    r1.send(&protocol::input(InputType::KeyDown, 0, 0, &[1, 2, 3, 4]))
        .await
        .unwrap();
    r1.send(&[0x01, 0x01, 0]).await.unwrap();
    for i in 0..100u16 {
        r1.send(&protocol::pointer_input(
            InputType::Pointer,
            i,
            1,
            i,
            2 * i,
            0,
        ))
        .await
        .unwrap();
        r2.send(&protocol::key_input(true, i, 2, 1000 + i, 3))
            .await
            .unwrap();
    }
    let (mut next1, mut next2) = (0u16, 0u16);
    while next1 < 100 || next2 < 100 {
        let m = within(src.recv_binary()).await.unwrap();
        let h = protocol::validate_input_message(&m).expect("only valid inputs reach the source");
        match h.input_type() {
            InputType::Pointer => {
                let p = protocol::parse_pointer(&m).unwrap();
                assert_eq!((h.seq, p.x, p.y), (next1, next1, 2 * next1));
                next1 += 1;
            }
            InputType::KeyDown => {
                assert_eq!(h.seq, next2);
                assert_eq!(u16::from_le_bytes([m[16], m[17]]), 1000 + next2);
                next2 += 1;
            }
            other => panic!("unexpected input {other:?}"),
        }
    }
    let ch = t.relay.channel("in").unwrap().traffic;
    assert_eq!(ch.inputs, 200);
    assert_eq!(ch.invalid, 4);
}

/// Applies a received pixel message to a receiver's picture.
fn apply(picture: &mut Option<Vec<u8>>, msg: &[u8]) {
    let h = Header::parse(msg).unwrap();
    match h.frame_type() {
        FrameType::Pixels | FrameType::Keyframe => *picture = Some(msg[HEADER_LEN..].to_vec()),
        FrameType::DeltaPixels => codec::apply_delta(
            picture.as_mut().expect("delta before keyframe"),
            &msg[HEADER_LEN..],
        )
        .unwrap(),
        _ => {}
    }
}

#[tokio::test]
async fn late_joiner_rebuilds_the_current_picture_and_signal_state() {
    let t = start(&[]).await;
    let mut src = connect(&t.url("/source/late")).await;
    let (w, h) = (64u16, 48u16);
    let mut cur = noise(w as usize * h as usize * 4, 5);
    src.send(&protocol::pixels_keyframe(0, 0, w, h, &cur))
        .await
        .unwrap();
    for i in 1..=300u16 {
        let mut next = cur.clone();
        let at = (i as usize * 131) % next.len();
        next[at..(at + 40).min(cur.len())].fill(i as u8);
        let mut z = Vec::new();
        codec::encode_delta(&cur, &next, &mut z).unwrap();
        src.send(&protocol::delta_pixels(i, i as u32, w, h, &z))
            .await
            .unwrap();
        cur = next;
    }
    src.send(&protocol::signal(
        false,
        0,
        0,
        br#"{"title":"demo","gone":true}"#,
    ))
    .await
    .unwrap();
    let mut expected = serde_json::json!({"title": "demo"});
    for i in 0..2000u32 {
        let key = format!("k{}", i % 97);
        let diff = if i == 0 {
            serde_json::json!({ "gone": null, key.clone(): i })
        } else {
            serde_json::json!({ key.clone(): i })
        };
        expected[&key] = i.into();
        src.send(&protocol::signal(
            true,
            i as u16,
            i,
            diff.to_string().as_bytes(),
        ))
        .await
        .unwrap();
    }
    // Let the relay take all of it before the receiver joins.
    eventually("all frames in", || {
        t.relay
            .channel("late")
            .is_some_and(|c| c.traffic.frames_in == 1 + 300 + 1 + 2000)
    })
    .await;
    let mut r = connect(&t.url("/stream/late")).await;
    let mut picture = None;
    let mut state = None;
    while picture.as_ref() != Some(&cur) || state.is_none() {
        let m = within(r.recv_binary()).await.unwrap();
        match Header::parse(&m).unwrap().frame_type() {
            FrameType::SignalSync => {
                state = Some(serde_json::from_slice::<serde_json::Value>(&m[HEADER_LEN..]).unwrap())
            }
            FrameType::SignalDiff => panic!("catch-up sends the folded state as one SignalSync"),
            _ => apply(&mut picture, &m),
        }
    }
    assert_eq!(picture.unwrap(), cur);
    assert_eq!(state.unwrap(), expected);
    // And it continues live from there.
    let mut next = cur.clone();
    next[0] ^= 0xFF;
    let mut z = Vec::new();
    codec::encode_delta(&cur, &next, &mut z).unwrap();
    src.send(&protocol::delta_pixels(999, 0, w, h, &z))
        .await
        .unwrap();
    let m = within(r.recv_binary()).await.unwrap();
    let mut p = Some(cur);
    apply(&mut p, &m);
    assert_eq!(p.unwrap(), next);
}

#[tokio::test]
async fn receiver_limit_refuses_the_65th_while_64_keep_receiving() {
    let t = start(&["--max-receivers", "64"]).await;
    let mut rx = Vec::new();
    for _ in 0..64 {
        rx.push(connect(&t.url("/stream/lim")).await);
    }
    wait_receivers(&t, "lim", 64).await;
    match connect_err(&t.url("/stream/lim")).await {
        ClientError::Refused { status, body } => {
            assert_eq!(status, 503);
            assert!(body.contains("receiver limit"), "{body}");
        }
        e => panic!("unexpected {e}"),
    }
    let mut src = connect(&t.url("/source/lim")).await;
    let m = protocol::frame(FrameType::Haptic, 0, 7, 0, (0, 0), b"still here");
    src.send(&m).await.unwrap();
    for r in &mut rx {
        assert_eq!(&within(r.recv_binary()).await.unwrap()[..], &m[..]);
    }
    assert_eq!(
        t.relay
            .summary()
            .refused(bitstream_relay::Refusal::ReceiverLimit),
        1
    );
}

#[tokio::test]
async fn invalid_channel_names_are_refused_at_the_handshake() {
    let t = start(&[]).await;
    let long = format!("/stream/{}", "x".repeat(65));
    for path in [
        "/stream/",
        "/source/a%20b",
        "/signal/a/b",
        "/stream/caf\u{e9}",
        long.as_str(),
    ] {
        match connect_err(&t.url(path)).await {
            ClientError::Refused { status, .. } => assert_eq!(status, 400, "{path}"),
            e => panic!("{path}: unexpected {e}"),
        }
    }
    assert!(t.relay.summary().channels == 0, "no channel was created");
    assert!(matches!(
        connect_err(&t.url("/nope")).await,
        ClientError::Refused { status: 404, .. }
    ));
}

#[tokio::test]
async fn second_source_is_refused_and_a_returning_source_continues() {
    let t = start(&[]).await;
    let mut src = connect(&t.url("/source/s")).await;
    let mut r = connect(&t.url("/stream/s")).await;
    wait_receivers(&t, "s", 1).await;
    assert!(matches!(
        connect_err(&t.url("/source/s")).await,
        ClientError::Refused { status: 409, .. }
    ));
    let kf = protocol::pixels_keyframe(1, 0, 2, 2, &[7u8; 16]);
    src.send(&kf).await.unwrap();
    assert_eq!(&within(r.recv_binary()).await.unwrap()[..], &kf[..]);
    src.close(1000).await.unwrap();
    eventually("source gone", || !t.relay.channel("s").unwrap().source).await;
    // The receiver stays; a late joiner still gets the cached keyframe.
    let mut late = connect(&t.url("/stream/s")).await;
    assert_eq!(&within(late.recv_binary()).await.unwrap()[..], &kf[..]);
    let mut src2 = connect(&t.url("/source/s")).await;
    let m = protocol::frame(FrameType::Haptic, 0, 2, 0, (0, 0), b"back");
    src2.send(&m).await.unwrap();
    assert_eq!(&within(r.recv_binary()).await.unwrap()[..], &m[..]);
    assert_eq!(&within(late.recv_binary()).await.unwrap()[..], &m[..]);
}

#[tokio::test]
async fn invalid_source_messages_are_not_forwarded() {
    let t = start(&[]).await;
    let mut r = connect(&t.url("/stream/v")).await;
    wait_receivers(&t, "v", 1).await;
    let mut src = connect(&t.url("/source/v")).await;
    let mut bad_len = protocol::frame(FrameType::Haptic, 0, 0, 0, (0, 0), b"abc");
    bad_len[12] = 9;
    let mut reserved = protocol::frame(FrameType::Haptic, 0, 0, 0, (0, 0), b"abc");
    reserved[1] = 0x40;
    for bad in [
        vec![1, 2, 3],
        bad_len,
        reserved,
        protocol::pixels_keyframe(0, 0, 4, 4, &[0u8; 10]),
        protocol::frame(FrameType::Unknown(0x77), 0, 0, 0, (0, 0), b""),
        protocol::delta_pixels(0, 0, 2, 2, &[0x05, 0x00]),
        protocol::signal(true, 0, 0, b"not json"),
        protocol::pointer_input(InputType::Pointer, 0, 0, 1, 1, 0),
    ] {
        src.send(&bad).await.unwrap();
    }
    let good = protocol::frame(FrameType::Haptic, 0, 42, 0, (0, 0), b"good");
    src.send(&good).await.unwrap();
    assert_eq!(&within(r.recv_binary()).await.unwrap()[..], &good[..]);
    assert_eq!(t.relay.channel("v").unwrap().traffic.invalid, 8);
}

#[tokio::test]
async fn oversize_message_closes_that_peer_with_1009_only() {
    let t = start(&["--max-message", "100000"]).await;
    let mut r = connect(&t.url("/stream/big")).await;
    wait_receivers(&t, "big", 1).await;
    let mut bad = connect(&t.url("/source/big")).await;
    // Announce 10 MB but send only the head: the relay must not wait for it.
    let wire = ws::client_frame(ws::OP_BINARY, true, &vec![0u8; 10_000_000], [1, 2, 3, 4]);
    bad.send_raw(&wire[..14]).await.unwrap();
    match within(bad.recv()).await {
        Err(ClientError::Closed(code, _)) => assert_eq!(code, 1009),
        other => panic!("expected a 1009 close, got {other:?}"),
    }
    eventually("source slot free", || {
        !t.relay.channel("big").unwrap().source
    })
    .await;
    let mut src = connect(&t.url("/source/big")).await;
    let m = protocol::frame(FrameType::Haptic, 0, 1, 0, (0, 0), b"ok");
    src.send(&m).await.unwrap();
    assert_eq!(&within(r.recv_binary()).await.unwrap()[..], &m[..]);
}

#[tokio::test]
async fn signaling_text_is_broadcast_to_the_other_peers() {
    let t = start(&[]).await;
    let mut a = connect(&t.url("/signal/room")).await;
    let mut b = connect(&t.url("/signal/room")).await;
    let mut c = connect(&t.url("/signal/room")).await;
    eventually("3 signal peers", || {
        t.relay.channel("room").is_some_and(|c| c.signal_peers == 3)
    })
    .await;
    a.send_text(r#"{"sdp":"offer"}"#).await.unwrap();
    for p in [&mut b, &mut c] {
        assert_eq!(
            within(p.recv()).await.unwrap(),
            Message::Text(r#"{"sdp":"offer"}"#.into())
        );
    }
    b.send_text("answer").await.unwrap();
    assert_eq!(
        within(a.recv()).await.unwrap(),
        Message::Text("answer".into())
    );
    assert_eq!(
        within(c.recv()).await.unwrap(),
        Message::Text("answer".into())
    );
}

#[tokio::test]
async fn text_on_a_data_path_is_refused_with_1003() {
    let t = start(&[]).await;
    let mut src = connect(&t.url("/source/txt")).await;
    src.send_text("hello").await.unwrap();
    match within(src.recv()).await {
        Err(ClientError::Closed(code, _)) => assert_eq!(code, 1003),
        other => panic!("expected a 1003 close, got {other:?}"),
    }
}

#[tokio::test]
async fn silent_peers_are_dropped_and_answering_peers_kept() {
    let t = start(&["--ping-interval-ms", "100", "--keepalive-timeout-ms", "400"]).await;
    // A receiver whose client answers pings (our client does, in recv).
    let mut alive = connect(&t.url("/stream/ka")).await;
    // A receiver that completes the handshake and then never reads or answers.
    let silent = connect(&t.url("/stream/ka")).await;
    wait_receivers(&t, "ka", 2).await;
    let alive_task = tokio::spawn(async move {
        let r = alive.recv().await;
        (alive, r)
    });
    eventually("silent receiver dropped", || {
        t.relay.summary().keepalive_drops >= 1
    })
    .await;
    wait_receivers(&t, "ka", 1).await;
    let mut src = connect(&t.url("/source/ka")).await;
    let m = protocol::frame(FrameType::Haptic, 0, 1, 0, (0, 0), b"ping?");
    src.send(&m).await.unwrap();
    let (_alive, got) = within(alive_task).await.unwrap();
    assert_eq!(got.unwrap(), Message::Binary(m.into()));
    drop(silent);
}

#[tokio::test]
async fn plain_http_gets_an_answer() {
    let t = start(&[]).await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for (req, status) in [
        ("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", "200"),
        ("GET /stream/x HTTP/1.1\r\nHost: x\r\n\r\n", "426"),
        ("GET /nope HTTP/1.1\r\nHost: x\r\n\r\n", "404"),
        ("\x16\x03\x01garbage\r\n\r\n", "400"),
    ] {
        let mut s = tokio::net::TcpStream::connect(t.addr).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        within(s.read_to_string(&mut out)).await.unwrap();
        assert!(
            out.starts_with(&format!("HTTP/1.1 {status}")),
            "{req:?} -> {out}"
        );
    }
}

#[tokio::test]
async fn tungstenite_source_and_receiver_interoperate() {
    let t = start(&[]).await;
    let mut r = tungstenite_receiver(&t.url("/stream/tt")).await;
    wait_receivers(&t, "tt", 1).await;
    let mut s = tungstenite_receiver(&t.url("/source/tt")).await;
    let m = protocol::frame(FrameType::AudioPcm, 0, 1, 2, (2, 4800), &noise(70_000, 9));
    s.send(TMessage::Binary(m.clone().into())).await.unwrap();
    assert_eq!(next_binary(&mut r).await, m);
    r.send(TMessage::Binary(
        protocol::key_input(false, 5, 6, 65, 0).into(),
    ))
    .await
    .unwrap();
    assert_eq!(
        next_binary(&mut s).await,
        protocol::key_input(false, 5, 6, 65, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_fan_out_keeps_every_receiver_in_order_through_joins() {
    // Two shards, and the worker tasks start from the 4th receiver on.
    let t = start(&["--threads", "2", "--fanout-shard-min", "4"]).await;
    let frames = 400u16;
    let mut early = Vec::new();
    for _ in 0..6 {
        early.push(connect(&t.url("/stream/shard")).await);
    }
    wait_receivers(&t, "shard", 6).await;
    let mut src = connect(&t.url("/source/shard")).await;
    let spawn_reader = |mut c: bitstream_relay::client::Client| {
        tokio::spawn(async move {
            let mut seqs = Vec::new();
            loop {
                let m = c.recv_binary().await.expect("read");
                let seq = Header::parse(&m).unwrap().seq;
                seqs.push(seq);
                if seq == frames - 1 {
                    return seqs;
                }
            }
        })
    };
    let mut readers: Vec<_> = early.into_iter().map(spawn_reader).collect();
    for i in 0..frames {
        // Tiny keyframes: cacheable, so a joiner starts from the latest one.
        src.send(&protocol::pixels_keyframe(
            i,
            0,
            1,
            1,
            &[i as u8, 0, 0, 255],
        ))
        .await
        .unwrap();
        if i % 50 == 25 {
            readers.push(spawn_reader(connect(&t.url("/stream/shard")).await));
        }
    }
    for (n, r) in readers.into_iter().enumerate() {
        let seqs = within(r).await.unwrap();
        let first = seqs[0];
        assert_eq!(
            seqs,
            (first..frames).collect::<Vec<_>>(),
            "receiver {n}: gaps, duplicates or disorder"
        );
        if n < 6 {
            assert_eq!(first, 0, "early receiver {n} missed the start");
        }
    }
}

/// Reads one unmasked server frame's payload (binary or text; control
/// frames skipped) from a blocking socket.
fn read_server_message(s: &mut std::net::TcpStream) -> Vec<u8> {
    use std::io::Read;
    loop {
        let mut h = [0u8; 2];
        s.read_exact(&mut h).unwrap();
        let len = match h[1] & 0x7f {
            126 => {
                let mut b = [0u8; 2];
                s.read_exact(&mut b).unwrap();
                u64::from(u16::from_be_bytes(b))
            }
            127 => {
                let mut b = [0u8; 8];
                s.read_exact(&mut b).unwrap();
                u64::from_be_bytes(b)
            }
            n => u64::from(n),
        };
        let mut payload = vec![0u8; len as usize];
        s.read_exact(&mut payload).unwrap();
        if h[0] & 0x0f < 8 {
            return payload;
        }
    }
}

/// `--egress-mode uring`: the fan-out's writes go out in io_uring batches
/// (more receivers than one batch here), byte-exact and in order; then,
/// with only a receiver whose socket takes part of a frame (a 4 KiB
/// receive buffer, read only once 12 MB have been sent) left, the rest of
/// each write goes through its queue, nothing lost or reordered. Where
/// io_uring is unavailable the relay writes one `send` per socket and the
/// same must hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uring_egress_fans_out_byte_exact_and_in_order_past_full_sockets() {
    use std::io::{BufRead, BufReader};
    let t = start(&["--egress-mode", "uring", "--egress-queue", "64000000"]).await;
    let fast = 259usize;
    let msg = |i: u16, len: usize| {
        protocol::frame(
            FrameType::AudioCompressed,
            0,
            i,
            u32::from(i),
            (0, 0),
            &noise(len, u64::from(i)),
        )
    };
    let first: Vec<Vec<u8>> = (0..20u16)
        .map(|i| msg(i, 100 + 500 * usize::from(i)))
        .collect();
    // 12 MB of frames small enough to be batched (at most 64 KiB).
    let then: Vec<Vec<u8>> = (20..220u16).map(|i| msg(i, 60_000)).collect();
    let (addr, path) = (t.addr, "/stream/u".to_owned());
    let slow = tokio::task::spawn_blocking(move || {
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        sock.connect(&addr.into()).unwrap();
        let mut s: std::net::TcpStream = sock.into();
        let key = bitstream_relay::wire::handshake::client_key(3);
        std::io::Write::write_all(
            &mut s,
            &bitstream_relay::wire::handshake::client_request("x", &path, &key),
        )
        .unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut line = String::new();
        while line != "\r\n" {
            line.clear();
            r.read_line(&mut line).unwrap();
        }
        assert!(r.buffer().is_empty(), "no frame before the source starts");
        s
    })
    .await
    .unwrap();
    let mut readers = Vec::new();
    for _ in 0..fast {
        let mut c = connect(&t.url("/stream/u")).await;
        let n = first.len();
        readers.push(tokio::spawn(async move {
            let mut got = Vec::with_capacity(n);
            while got.len() < n {
                got.push(c.recv_binary().await.expect("read"));
            }
            got
        }));
    }
    wait_receivers(&t, "u", fast + 1).await;
    let mut src = connect(&t.url("/source/u")).await;
    for m in &first {
        src.send(m).await.unwrap();
    }
    for (n, r) in readers.into_iter().enumerate() {
        let got = within(r).await.unwrap();
        assert!(
            got == first,
            "receiver {n}: not the messages sent, in order"
        );
    }
    wait_receivers(&t, "u", 1).await;
    for m in &then {
        src.send(m).await.unwrap();
    }
    let expect: Vec<Vec<u8>> = first.iter().chain(&then).cloned().collect();
    let n = expect.len();
    let slow_got = within(tokio::task::spawn_blocking(move || {
        let mut s = slow;
        (0..n)
            .map(|_| read_server_message(&mut s))
            .collect::<Vec<_>>()
    }))
    .await
    .unwrap();
    assert!(
        slow_got == expect,
        "the slow receiver: not the messages sent, in order"
    );
    let ch = t.relay.channel("u").unwrap();
    assert!(
        ch.traffic.queued >= 1,
        "the slow socket's frames went through its queue"
    );
    assert_eq!(ch.traffic.slow_skips, 0);
    assert_eq!(ch.traffic.frames_out, 20 * (fast as u64 + 1) + 200);
}

/// A channel with more receivers than one roster block (256) flushes in
/// laps: the fan-out only queues each small frame and its owner (the
/// source's task, or a shard worker) writes a block of receivers at a time,
/// reading the source between blocks. Every receiver must still get every
/// frame byte-exact and in order, small frames (laps) and large ones
/// (written frame by frame) interleaved, while other receivers join and
/// leave (the roster changes under a lap), with shard workers (uring) and
/// with the source's task owning every shard (direct).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_channels_flush_in_laps_byte_exact_and_in_order_through_churn() {
    for (mode, shard_min) in [("uring", "300"), ("direct", "100000")] {
        let t = start(&[
            "--egress-mode",
            mode,
            "--fanout-shard-min",
            shard_min,
            "--egress-queue",
            "64000000",
        ])
        .await;
        let stayers = 520usize;
        let frames: std::sync::Arc<Vec<Vec<u8>>> = std::sync::Arc::new(
            (0..160u16)
                .map(|i| {
                    // Every 40th frame is over 64 KiB: written frame by frame.
                    let len = if i % 40 == 39 {
                        70_000
                    } else {
                        50 + 97 * usize::from(i % 30)
                    };
                    protocol::frame(
                        FrameType::AudioCompressed,
                        0,
                        i,
                        u32::from(i),
                        (0, 0),
                        &noise(len, u64::from(i)),
                    )
                })
                .collect(),
        );
        let mut readers = Vec::new();
        for _ in 0..stayers {
            let mut c = connect(&t.url("/stream/lap")).await;
            let want = frames.clone();
            readers.push(tokio::spawn(async move {
                for (i, m) in want.iter().enumerate() {
                    let got = c.recv_binary().await.expect("read");
                    if got != *m {
                        return Err(i);
                    }
                }
                Ok(())
            }));
        }
        wait_receivers(&t, "lap", stayers).await;
        // Receivers that join mid-stream, read a few frames and leave.
        let url = t.url("/stream/lap");
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ended = done.clone();
        let churn = tokio::spawn(async move {
            let (mut gaps, mut got) = (0, 0);
            let mut round = 0u64;
            let mut over = false;
            while !over && !ended.load(std::sync::atomic::Ordering::Relaxed) {
                round += 1;
                let mut batch = Vec::new();
                for _ in 0..20 {
                    batch.push(connect(&url).await);
                }
                for c in &mut batch {
                    if over {
                        break;
                    }
                    // A joiner gets the live stream from some frame on: its
                    // frames must follow one another.
                    let mut last: Option<u16> = None;
                    for _ in 0..(1 + round % 3) {
                        let next = c.recv_binary();
                        let Ok(m) =
                            tokio::time::timeout(std::time::Duration::from_secs(2), next).await
                        else {
                            over = true; // the stream is over
                            break;
                        };
                        let h = Header::parse(&m.expect("read")).expect("header");
                        if last.is_some_and(|l| h.seq != l + 1) {
                            gaps += 1;
                        }
                        last = Some(h.seq);
                        got += 1;
                    }
                }
                drop(batch);
            }
            (gaps, got)
        });
        let mut src = connect(&t.url("/source/lap")).await;
        for m in frames.iter() {
            src.send(m).await.unwrap();
            // Spread over a second or so, for the joiners to overlap.
            tokio::time::sleep(std::time::Duration::from_millis(6)).await;
        }
        for (n, r) in readers.into_iter().enumerate() {
            let got = within(r).await.unwrap();
            assert_eq!(
                got,
                Ok(()),
                "{mode}: receiver {n} got another frame at this index"
            );
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let (gaps, joined) = within(churn).await.unwrap();
        assert_eq!(gaps, 0, "{mode}: joiners saw frames out of sequence");
        assert!(joined > 0, "{mode}: no joiner got a frame");
        let ch = t.relay.channel("lap").unwrap();
        assert_eq!(ch.traffic.slow_skips, 0, "{mode}");
        assert_eq!(ch.traffic.frames_in, frames.len() as u64, "{mode}");
        assert!(
            ch.traffic.frames_out >= stayers as u64 * frames.len() as u64,
            "{mode}: {} frames out",
            ch.traffic.frames_out
        );
    }
}
