//! One peer must never hurt the others: a peer that floods control frames,
//! or never reads what it asked for, neither holds the relay's worker nor
//! escapes the slow-receiver clock.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bitstream_relay::protocol::{self, Header};
use bitstream_relay::ws;
use common::*;

/// A raw blocking WebSocket connection (no client library, no runtime),
/// made on a blocking thread so that a one-thread relay can answer it.
async fn raw_ws(t: &TestRelay, path: &str) -> TcpStream {
    let (addr, path) = (t.addr, path.to_owned());
    tokio::task::spawn_blocking(move || raw_ws_blocking(addr, &path))
        .await
        .unwrap()
}

fn raw_ws_blocking(addr: std::net::SocketAddr, path: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    let key = bitstream_relay::wire::handshake::client_key(7);
    s.write_all(&bitstream_relay::wire::handshake::client_request(
        "x", path, &key,
    ))
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).unwrap();
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s
}

/// A receiver that never reads, with a 4 KiB receive buffer so that what
/// the relay sends it piles up in the relay, not in the kernel.
async fn stuck_receiver(t: &TestRelay, path: &str) -> TcpStream {
    let (addr, path) = (t.addr, path.to_owned());
    tokio::task::spawn_blocking(move || {
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        sock.connect(&addr.into()).unwrap();
        let mut s: TcpStream = sock.into();
        let key = bitstream_relay::wire::handshake::client_key(9);
        s.write_all(&bitstream_relay::wire::handshake::client_request(
            "x", &path, &key,
        ))
        .unwrap();
        s
    })
    .await
    .unwrap()
}

/// How long a flood lasts at most (a stalled relay cannot stop it): a
/// generous deadline, since the tests stop their floods themselves.
const FLOOD_FOR: Duration = Duration::from_secs(30);

/// Sends empty pings back to back until `stop` (or [`FLOOD_FOR`]), from a
/// plain thread.
fn flood_pings(mut s: TcpStream, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let ping = ws::client_frame(ws::OP_PING, true, b"", [1, 2, 3, 4]);
        let batch: Vec<u8> = ping
            .iter()
            .copied()
            .cycle()
            .take(ping.len() * 512)
            .collect();
        let mut sent = 0;
        let started = Instant::now();
        while !stop.load(Ordering::Relaxed) && started.elapsed() < FLOOD_FOR {
            if s.write_all(&batch).is_err() {
                break;
            }
            sent += 512;
        }
        // Unblocks the thread draining this socket.
        let _ = s.shutdown(std::net::Shutdown::Both);
        sent
    })
}

/// Reads and drops whatever arrives, until the peer closes.
fn drain(mut s: TcpStream) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut last = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
            last = buf[..n].to_vec();
        }
        last
    })
}

/// `GET /healthz` over a fresh connection: how long the answer took.
async fn healthz_time(t: &TestRelay) -> Duration {
    let started = Instant::now();
    let (status, body) = http_get(t, "/healthz").await;
    assert_eq!(status, 200, "{body}");
    started.elapsed()
}

/// With one runtime worker, two peers sending pings back to back (never
/// over the ping rate here, so never closed) must not hold that worker:
/// health answers and another channel streams while they flood.
#[tokio::test(flavor = "current_thread")]
async fn a_ping_flood_holds_no_worker() {
    let t = start(&["--ping-rate", "100000000", "--ping-burst", "100000000"]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for _ in 0..2 {
        let s = raw_ws(&t, "/stream/flood").await;
        threads.push(drain(s.try_clone().unwrap()));
        threads.push(std::thread::spawn({
            let f = flood_pings(s, stop.clone());
            move || {
                f.join().unwrap();
                Vec::new()
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let mut r = connect(&t.url("/stream/healthy")).await;
    wait_receivers(&t, "healthy", 1).await;
    let mut src = connect(&t.url("/source/healthy")).await;
    for i in 0..30u16 {
        src.send(&protocol::pixels_keyframe(i, 0, 4, 4, &[i as u8; 64]))
            .await
            .unwrap();
        let m = within(r.recv_binary()).await.unwrap();
        assert_eq!(Header::parse(&m).unwrap().seq, i);
    }
    let worst = {
        let mut worst = Duration::ZERO;
        for _ in 0..5 {
            worst = worst.max(healthz_time(&t).await);
        }
        worst
    };
    // The healthy stream and the health checks were served *during* the
    // flood: a flood that held the worker would hold it until it stopped
    // by itself (FLOOD_FOR), and only then let them through.
    let flooding = threads.iter().all(|t| !t.is_finished());
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    assert!(
        flooding,
        "the flood ended ({took:?}) before 30 frames and 5 health checks were served"
    );
    assert!(worst < Duration::from_secs(5), "/healthz took {worst:?}");
    for th in threads {
        let _ = tokio::task::spawn_blocking(move || th.join()).await;
    }
}

/// Pings over the rate are not answered, and a flood closes the peer with
/// 1008; one pong answers a burst of pings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_flood_is_closed_with_1008() {
    let t = start(&[
        "--ping-rate",
        "10",
        "--ping-burst",
        "10",
        "--input-flood-drops",
        "1000",
    ])
    .await;
    let s = raw_ws(&t, "/stream/f").await;
    let reader = drain(s.try_clone().unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let flooder = flood_pings(s, stop.clone());
    let last = tokio::task::spawn_blocking(move || reader.join().unwrap())
        .await
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    let _ = tokio::task::spawn_blocking(move || flooder.join()).await;
    // The last bytes the relay sent end with its close frame: 1008 "ping flood".
    let close = ws::close_payload(ws::CLOSE_POLICY, "ping flood");
    assert!(
        last.ends_with(&close),
        "last bytes {:?} do not end with a 1008 close",
        &last[last.len().saturating_sub(32)..]
    );
}

/// A peer whose socket never takes our bytes is closed as slow even while
/// it keeps sending (so it is never silent), counted from when data first
/// queued: here only pongs queue, after a write that would block, so its
/// socket never becomes writable again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_reads_is_closed_as_slow_whatever_it_sends() {
    let t = start(&[
        "--slow-timeout-ms",
        "500",
        "--ping-rate",
        "100000000",
        "--ping-burst",
        "100000000",
    ])
    .await;
    let s = stuck_receiver(&t, "/stream/slow").await;
    wait_receivers(&t, "slow", 1).await;
    let stop = Arc::new(AtomicBool::new(false));
    let pinger = {
        let mut s = s.try_clone().unwrap();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let ping = ws::client_frame(ws::OP_PING, true, &[7u8; 125], [1, 2, 3, 4]);
            let started = Instant::now();
            while !stop.load(Ordering::Relaxed) && started.elapsed() < FLOOD_FOR {
                if s.write_all(&ping).is_err() {
                    break;
                }
            }
        })
    };
    eventually("the stuck peer closed as slow", || {
        t.relay
            .channel("slow")
            .is_some_and(|c| c.traffic.slow_closes >= 1 && c.receivers == 0)
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let _ = tokio::task::spawn_blocking(move || pinger.join()).await;
    drop(s);
}

/// A 10-byte `SignalDiff` on a ~1 MiB signal state costs the relay about
/// its own size, not a re-serialization of the state (which took ~4 ms per
/// diff in release before); a joiner still gets the exact folded state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_diff_on_a_large_signal_state_costs_its_own_size() {
    let t = start(&["--max-signal-state", "2000000"]).await;
    let mut src = connect(&t.url("/source/sig")).await;
    let mut expected = serde_json::Map::new();
    for i in 0..8000 {
        expected.insert(format!("key{i}"), serde_json::Value::from("x".repeat(120)));
    }
    let sync = serde_json::to_vec(&expected).unwrap();
    assert!(sync.len() > 1_000_000);
    src.send(&protocol::signal(false, 0, 0, &sync))
        .await
        .unwrap();
    let started = Instant::now();
    for i in 0..2000u32 {
        let diff = format!(r#"{{"n":{i}}}"#);
        src.send(&protocol::signal(true, i as u16, i, diff.as_bytes()))
            .await
            .unwrap();
    }
    eventually("every diff folded", || {
        t.relay
            .channel("sig")
            .is_some_and(|c| c.traffic.frames_in == 2001)
    })
    .await;
    let took = started.elapsed();
    // Generous: re-serializing 1 MiB per diff costs seconds for 2000 diffs.
    assert!(
        took < Duration::from_secs(5),
        "2000 tiny diffs took {took:?}"
    );
    expected.insert("n".into(), 1999.into());
    let mut r = connect(&t.url("/stream/sig")).await;
    let m = within(r.recv_binary()).await.unwrap();
    let h = Header::parse(&m).unwrap();
    assert_eq!(h.frame_type(), protocol::FrameType::SignalSync);
    let state: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&m[protocol::HEADER_LEN..]).unwrap();
    assert!(state == expected, "the joiner's state differs");
}

/// Receivers that join channels nobody publishes on, then leave, do not
/// fill the channel table: such a channel goes with its last member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_storm_leaves_no_channels_behind() {
    let t = start(&["--max-channels", "50", "--grace-ms", "600000"]).await;
    for round in 0..3 {
        let mut peers = Vec::new();
        for i in 0..50 {
            peers.push(connect(&t.url(&format!("/stream/r{round}c{i}"))).await);
        }
        assert_eq!(t.relay.summary().channels, 50);
        for p in peers {
            p.close(1000).await.unwrap();
        }
        eventually("the empty channels removed", || {
            t.relay.summary().channels == 0
        })
        .await;
    }
    // A real source still gets a channel at once.
    let _src = connect(&t.url("/source/real")).await;
    // ...and its channel stays for the grace period after it leaves.
    drop(_src);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(t.relay.summary().channels, 1);
}

/// Cached state over all channels stays within `--max-cache-memory`: the
/// channel that would pass it stops caching (its live frames still flow),
/// the others keep theirs, and room freed by an expired channel is used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_state_stays_within_the_cache_budget() {
    let t = start(&[
        "--max-cache-memory",
        "2500000",
        "--grace-ms",
        "200",
        "--gc-interval-ms",
        "50",
    ])
    .await;
    let picture = noise(640 * 400 * 4, 11);
    let mut live = connect(&t.url("/stream/c")).await;
    wait_receivers(&t, "c", 1).await;
    let mut sources = Vec::new();
    for name in ["a", "b", "c"] {
        let mut src = connect(&t.url(&format!("/source/{name}"))).await;
        src.send(&protocol::pixels_keyframe(1, 0, 640, 400, &picture))
            .await
            .unwrap();
        eventually(&format!("{name} took its frame"), || {
            t.relay
                .channel(name)
                .is_some_and(|c| c.traffic.frames_in == 1)
        })
        .await;
        sources.push(src);
    }
    let cached = |name: &str| t.relay.channel(name).map_or(0, |c| c.cached_bytes);
    assert!(cached("a") > 1_000_000 && cached("b") > 1_000_000);
    assert_eq!(cached("c"), 0, "over the budget: not cached");
    assert_eq!(t.relay.channel("c").unwrap().traffic.cache_sheds, 1);
    // Live delivery is not affected.
    let m = within(live.recv_binary()).await.unwrap();
    assert_eq!(&m[protocol::HEADER_LEN..], &picture[..]);
    // Channel a's source leaves; once its cache expires, c's next keyframe fits.
    let a = sources.remove(0);
    a.close(1000).await.unwrap();
    eventually("a's cache expired", || cached("a") == 0).await;
    sources[1]
        .send(&protocol::pixels_keyframe(2, 0, 640, 400, &picture))
        .await
        .unwrap();
    eventually("c cached again", || cached("c") > 1_000_000).await;
}

/// A receiver slower than the stream, but never stalled, stays connected:
/// the slow clock counts time without progress, not time behind. It is
/// skipped forward to the latest state instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_receiver_that_keeps_reading_is_not_closed() {
    let t = start(&[
        "--slow-timeout-ms",
        "1500",
        "--slow-max-skips",
        "1000",
        "--egress-queue",
        "200000",
    ])
    .await;
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let stream = within(sock.connect(t.addr)).await.unwrap();
    let mut slow = within(bitstream_relay::client::Client::handshake(
        stream,
        &t.addr.to_string(),
        "/stream/slowpoke",
        64 << 20,
    ))
    .await
    .unwrap();
    wait_receivers(&t, "slowpoke", 1).await;
    let mut src = connect(&t.url("/source/slowpoke")).await;
    let frame = noise(256 * 256 * 4, 5);
    let sender = tokio::spawn(async move {
        for i in 0..110u16 {
            src.send(&protocol::pixels_keyframe(i, 0, 256, 256, &frame))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        src
    });
    // Read a frame every 150 ms: about a third of the stream's rate.
    let mut got = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(5500) {
        let m = within(slow.recv_binary())
            .await
            .expect("the slow receiver was closed");
        got.push(Header::parse(&m).unwrap().seq);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let _src = sender.await.unwrap();
    let c = t.relay.channel("slowpoke").unwrap();
    assert_eq!(c.traffic.slow_closes, 0);
    assert_eq!(c.receivers, 1);
    assert!(c.traffic.slow_skips > 0, "it was skipped forward");
    assert!(got.windows(2).all(|w| w[0] < w[1]), "in order: {got:?}");
}

/// Samples the relay's memory charge every millisecond until dropped; the
/// highest value seen is in the returned cell.
fn watch_memory(
    t: &TestRelay,
) -> (
    Arc<std::sync::atomic::AtomicUsize>,
    tokio::task::JoinHandle<()>,
) {
    let peak = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (relay, p) = (t.relay.clone(), peak.clone());
    let task = tokio::spawn(async move {
        loop {
            p.fetch_max(relay.summary().memory_bytes, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    (peak, task)
}

/// A message larger than what `--max-memory` has left is refused with 1013
/// from its head, before the relay allocates for it; other channels go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_memory_budget_cannot_take_is_refused_with_1013() {
    let t = start(&["--max-memory", "4000000"]).await;
    let (peak, watcher) = watch_memory(&t);
    let mut src = connect(&t.url("/source/h")).await;
    let mut rx = connect(&t.url("/stream/h")).await;
    wait_receivers(&t, "h", 1).await;
    let picture = noise(64 * 64 * 4, 3);
    src.send(&protocol::pixels_keyframe(1, 0, 64, 64, &picture))
        .await
        .unwrap();
    assert_eq!(
        within(rx.recv_binary()).await.unwrap()[protocol::HEADER_LEN..],
        picture[..]
    );

    // The head of a 16 MiB message, and a little of its payload.
    let mut big = raw_ws(&t, "/source/big").await;
    let payload = vec![0u8; 16 << 20];
    let frame = ws::client_frame(ws::OP_BINARY, true, &payload, [1, 2, 3, 4]);
    let reply = tokio::task::spawn_blocking(move || {
        big.write_all(&frame[..64 * 1024]).unwrap();
        let mut head = [0u8; 4];
        big.read_exact(&mut head).unwrap();
        head
    });
    let head = within(reply).await.unwrap();
    assert_eq!(head[0], 0x80 | ws::OP_CLOSE, "a close frame");
    assert_eq!(u16::from_be_bytes([head[2], head[3]]), ws::CLOSE_TRY_AGAIN);
    assert!(t.relay.summary().memory_sheds >= 1);
    assert!(
        peak.load(Ordering::Relaxed) < 1 << 20,
        "nothing was charged for the refused message: peak {}",
        peak.load(Ordering::Relaxed)
    );

    src.send(&protocol::pixels_keyframe(2, 0, 64, 64, &picture))
        .await
        .unwrap();
    assert_eq!(
        within(rx.recv_binary()).await.unwrap()[protocol::HEADER_LEN..],
        picture[..]
    );
    watcher.abort();
}

/// Receivers that never read, on a channel of large frames, would hold
/// every frame in their queues; under `--max-memory` they are skipped
/// forward instead, the charge stays near the limit, and a healthy receiver
/// on another channel gets every frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_receivers_are_skipped_forward_when_memory_runs_short() {
    const LIMIT: usize = 6_000_000;
    const FRAME: usize = 200 * 1000;
    let t = start(&[
        "--max-memory",
        &LIMIT.to_string(),
        "--max-cache-memory",
        "1000000",
        "--egress-queue",
        "64000000",
        "--slow-timeout-ms",
        "60000",
        "--slow-max-skips",
        "1000000",
        // The resume ring would keep the latest 4 MiB of frames alive (its
        // own bounded, documented hold): this test measures the queues.
        "--resume-ring-bytes",
        "0",
    ])
    .await;
    let (peak, watcher) = watch_memory(&t);
    let mut stuck = Vec::new();
    for _ in 0..8 {
        stuck.push(stuck_receiver(&t, "/stream/x").await);
    }
    wait_receivers(&t, "x", 8).await;
    let mut healthy_src = connect(&t.url("/source/h")).await;
    let mut healthy = connect(&t.url("/stream/h")).await;
    wait_receivers(&t, "h", 1).await;
    let mut src = connect(&t.url("/source/x")).await;
    let picture = noise(FRAME, 5);
    let small = noise(100 * 100 * 4, 6);
    for i in 0..80u16 {
        src.send(&protocol::pixels_keyframe(i, 0, 250, 200, &picture))
            .await
            .unwrap();
        healthy_src
            .send(&protocol::pixels_keyframe(i, 0, 100, 100, &small))
            .await
            .unwrap();
        let m = within(healthy.recv_binary()).await.unwrap();
        assert_eq!(Header::parse(&m).unwrap().seq, i);
        assert_eq!(m[protocol::HEADER_LEN..], small[..]);
    }
    eventually("the stream reached the relay", || {
        t.relay
            .channel("x")
            .is_some_and(|c| c.traffic.frames_in == 80)
    })
    .await;
    let s = t.relay.summary();
    assert!(s.memory_sheds > 0, "nothing was shed");
    assert!(t.relay.channel("x").unwrap().traffic.slow_skips > 0);
    let peak = peak.load(Ordering::Relaxed);
    // Without the budget the 8 queues would hold all 80 frames (16 MB).
    assert!(
        peak <= LIMIT + 3 * (FRAME + 1024),
        "peak charge {peak} past the limit {LIMIT} plus the frames in flight"
    );
    drop(stuck);
    // What stays: x's cached keyframe, and the two read buffers each
    // source keeps for reuse.
    eventually("the stuck receivers' memory is given back", || {
        t.relay.summary().memory_bytes <= 3 * (FRAME + 1024) + 2 * (small.len() + 1024)
    })
    .await;
    watcher.abort();
}

/// Finding 4: a big keyframe, then rounds of unchanged deltas each followed
/// by a joiner that never reads. Each round used to fold a fresh copy of
/// the picture that its stalled joiner then pinned; now unchanged deltas
/// are not cached, every joiner shares the one cached keyframe, and the
/// relay's memory charge stays at about one picture.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_joiners_share_one_catch_up() {
    const W: u16 = 1280;
    const H: u16 = 720;
    let kf_len = W as usize * H as usize * 4;
    let t = start(&["--slow-timeout-ms", "60000"]).await;
    let (peak, watcher) = watch_memory(&t);
    let mut src = connect(&t.url("/source/big")).await;
    let picture = noise(kf_len, 21);
    src.send(&protocol::pixels_keyframe(0, 0, W, H, &picture))
        .await
        .unwrap();
    let mut same = Vec::new();
    bitstream_relay::codec::encode_delta(&picture, &picture, &mut same).unwrap();
    let mut joiners = Vec::new();
    for round in 0..6u16 {
        for i in 0..512u16 {
            src.send(&protocol::delta_pixels(round * 512 + i + 1, 0, W, H, &same))
                .await
                .unwrap();
        }
        joiners.push(stuck_receiver(&t, "/stream/big").await);
        wait_receivers(&t, "big", joiners.len()).await;
    }
    eventually("every delta reached the relay", || {
        t.relay
            .channel("big")
            .is_some_and(|c| c.traffic.frames_in == 1 + 6 * 512)
    })
    .await;
    let ch = t.relay.channel("big").unwrap();
    assert!(
        ch.cached_bytes < kf_len + 4096,
        "cached {}",
        ch.cached_bytes
    );
    assert_eq!(ch.traffic.catchups, 6);
    let peak = peak.load(Ordering::Relaxed);
    // One picture cached and shared by the six joiners' queues, plus the
    // source's read buffers kept for reuse (two pictures at most).
    assert!(
        peak <= 4 * (kf_len + 4096),
        "peak charge {peak} for six stalled joiners of a {kf_len}-byte picture"
    );
    watcher.abort();
    drop(joiners);
}

/// Finding 6: a `SignalSync` larger than `--max-signal-state` is refused
/// from its size, before any JSON is parsed (the cache's unit tests show the
/// order: oversized bytes that are not JSON at all get the size error); the
/// channel's state is unchanged and nothing stays charged but the source's
/// read buffers kept for reuse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_signal_sync_is_refused_before_parsing() {
    let t = start(&["--max-signal-state", "100000"]).await;
    let mut src = connect(&t.url("/source/s")).await;
    src.send(&protocol::signal(false, 1, 0, br#"{"a":1}"#))
        .await
        .unwrap();
    // 8 MiB of one flat object: parsing it would build ~700,000 entries.
    let mut json = Vec::with_capacity(8 << 20);
    json.push(b'{');
    let mut k = 0;
    while json.len() < (8 << 20) - 16 {
        json.extend_from_slice(format!("\"k{k}\":{k},").as_bytes());
        k += 1;
    }
    json.extend_from_slice(b"\"end\":0}");
    src.send(&protocol::signal(false, 2, 0, &json))
        .await
        .unwrap();
    eventually("the sync was refused", || {
        t.relay.channel("s").is_some_and(|c| c.traffic.invalid == 1)
    })
    .await;
    let mut rx = connect(&t.url("/stream/s")).await;
    let m = within(rx.recv_binary()).await.unwrap();
    assert_eq!(&m[protocol::HEADER_LEN..], br#"{"a":1}"#);
    let s = t.relay.summary();
    assert!(
        s.memory_bytes <= 2 * (json.len() + 1024),
        "charge {} after the refusal",
        s.memory_bytes
    );
}
