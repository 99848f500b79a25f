//! Cluster mode end to end: a real `nats-server -js` on a free port and
//! several relays in this process, each with `--nats-url`. Skipped (loudly)
//! with RELAY_SKIP_NATS=1 when `nats-server` is not installed.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bitstream_relay::client::{Client, ClientError};
use bitstream_relay::codec;
use bitstream_relay::protocol::{self, FrameType, Header, InputType, HEADER_LEN};
use bitstream_relay::{ClusterError, Config, Server, StartError};
use clap::Parser;
use common::*;

/// A `nats-server` child process, killed when dropped.
struct Nats {
    child: Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Nats {
    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

fn nats_installed() -> bool {
    Command::new("nats-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Starts `nats-server` (with JetStream if `js`) on a free port, or `None`
/// when it is missing and RELAY_SKIP_NATS=1.
async fn nats(js: bool) -> Option<Nats> {
    if !tool_available(nats_installed(), "nats-server", "RELAY_SKIP_NATS") {
        return None;
    }
    // A port free a moment ago may be taken before the server binds it (by
    // another test's server or relay): then another one.
    for _ in 0..5 {
        if let Some(n) = try_nats_on(free_port(), js).await {
            return Some(n);
        }
    }
    panic!("nats-server did not start on any of 5 free ports");
}

/// Starts `nats-server` on `port`.
async fn nats_on(port: u16, js: bool) -> Nats {
    try_nats_on(port, js)
        .await
        .unwrap_or_else(|| panic!("nats-server did not start on port {port}"))
}

/// Starts `nats-server` on `port`; `None` if it exits first (the port was
/// taken). Returns once the server on that port is this one (checked by
/// its name: a test must never share another test's server).
async fn try_nats_on(port: u16, js: bool) -> Option<Nats> {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let name = format!(
        "relay-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let dir = std::env::temp_dir().join(format!("relay-nats-{}-{port}", std::process::id()));
    let mut cmd = Command::new("nats-server");
    cmd.args(["-a", "127.0.0.1", "-p", &port.to_string(), "-n", &name]);
    if js {
        cmd.args(["-js", "-sd", dir.to_str().unwrap()]);
    }
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nats-server");
    let mut n = Nats { child, port, dir };
    let start = tokio::time::Instant::now();
    while !answers_as(port, &name) {
        if n.child.try_wait().ok().flatten().is_some() {
            return None;
        }
        assert!(start.elapsed() < DEADLINE, "nats-server never listened");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Some(n)
}

/// Whether the NATS server on `port` is the one named `name`.
fn answers_as(port: u16, name: &str) -> bool {
    use std::io::Read;
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut info = [0u8; 4096];
    let len = s.read(&mut info).unwrap_or(0);
    String::from_utf8_lossy(&info[..len]).contains(&format!(r#""server_name":"{name}""#))
}

/// A relay of the cluster on `nats`, named `node`.
async fn node(nats: &Nats, node: &str, extra: &[&str]) -> TestRelay {
    let url = nats.url();
    let mut flags = vec!["--nats-url", &url, "--node-id", node];
    flags.extend_from_slice(extra);
    start(&flags).await
}

/// Receives the next binary message.
async fn recv(c: &mut Client) -> Vec<u8> {
    within(c.recv_binary()).await.expect("recv").to_vec()
}

/// Applies a received pixel message to a picture.
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

/// `GET /metrics` value of a counter (0 if absent).
async fn metric(t: &TestRelay, name: &str) -> u64 {
    let (_, body) = http_get(t, "/metrics").await;
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

#[tokio::test]
async fn frames_fan_out_across_nodes_byte_exact_and_in_order() {
    let Some(n) = nats(true).await else { return };
    // Receivers read one after another: queues hold the whole burst.
    let q = ["--egress-queue", "67108864"];
    let (a, b, c) = (
        node(&n, "a", &q).await,
        node(&n, "b", &q).await,
        node(&n, "c", &q).await,
    );
    let mut src = connect(&a.url("/source/fan")).await;
    let first = protocol::pixels_keyframe(0, 0, 2, 2, &[7u8; 16]);
    src.send(&first).await.unwrap();
    let mut rx = vec![
        connect(&a.url("/stream/fan")).await,
        connect(&b.url("/stream/fan")).await,
        connect(&b.url("/stream/fan")).await,
        connect(&c.url("/stream/fan")).await,
    ];
    // Each gets the keyframe: from the cache on a, from a catch-up fetched
    // from a on b and c (so they are subscribed from here on).
    for r in &mut rx {
        assert_eq!(recv(r).await, first);
    }
    let big = noise(640 * 600 * 4, 3); // 1.5 MB: more than one NATS message
    let mut sent = Vec::new();
    for i in 0..200u16 {
        let m = match i % 10 {
            3 => protocol::pixels_keyframe(i, i as u32, 640, 600, &big),
            5 => protocol::signal(true, i, 0, format!("{{\"k\":{i}}}").as_bytes()),
            _ => protocol::frame(
                FrameType::Haptic,
                0,
                i,
                i as u32,
                (0, 0),
                &noise(i as usize * 7, i as u64),
            ),
        };
        src.send(&m).await.unwrap();
        sent.push(m);
    }
    for (k, r) in rx.iter_mut().enumerate() {
        for (i, m) in sent.iter().enumerate() {
            let got = recv(r).await;
            if got != *m {
                let (_, metrics) = http_get(&b, "/metrics").await;
                let cl: Vec<_> = metrics
                    .lines()
                    .filter(|l| l.starts_with("relay_cluster"))
                    .collect();
                panic!(
                    "receiver {k}: message {i} differs or is out of order (got {} bytes, type {:?}, want {} bytes)\n{}",
                    got.len(),
                    Header::parse(&got).map(|h| h.frame_type()),
                    m.len(),
                    cl.join("\n")
                );
            }
        }
    }
    let json = http_get(&b, "/channels").await.1;
    assert!(json.contains(r#""source_node":"a""#), "{json}");
    assert!(metric(&b, "relay_cluster_fragments_in_total").await >= 20);
    assert!(metric(&a, "relay_cluster_frames_out_total").await >= 201);
    let (status, health) = http_get(&c, "/healthz").await;
    assert_eq!(status, 200);
    assert!(health.contains(r#""state":"connected""#), "{health}");
}

#[tokio::test]
async fn a_late_joiner_on_a_fresh_node_rebuilds_picture_and_signal_state() {
    let Some(n) = nats(true).await else { return };
    let (a, b) = (node(&n, "a", &[]).await, node(&n, "b", &[]).await);
    let mut src = connect(&a.url("/source/late")).await;
    let (w, h) = (64u16, 48u16);
    let mut cur = noise(w as usize * h as usize * 4, 5);
    src.send(&protocol::pixels_keyframe(0, 0, w, h, &cur))
        .await
        .unwrap();
    for i in 1..=200u16 {
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
    src.send(&protocol::signal(false, 0, 0, br#"{"title":"demo"}"#))
        .await
        .unwrap();
    src.send(&protocol::signal(true, 1, 0, br#"{"n":1}"#))
        .await
        .unwrap();
    eventually("all frames in on a", || {
        a.relay
            .channel("late")
            .is_some_and(|c| c.traffic.frames_in == 1 + 200 + 2)
    })
    .await;
    let mut r = connect(&b.url("/stream/late")).await;
    let mut picture = None;
    let mut state = None;
    while picture.as_ref() != Some(&cur) || state.is_none() {
        let m = recv(&mut r).await;
        match Header::parse(&m).unwrap().frame_type() {
            FrameType::SignalSync => {
                state = Some(serde_json::from_slice::<serde_json::Value>(&m[HEADER_LEN..]).unwrap())
            }
            _ => apply(&mut picture, &m),
        }
    }
    assert_eq!(state.unwrap(), serde_json::json!({"title": "demo", "n": 1}));
    // And it continues live from there.
    let mut next = cur.clone();
    next[0] ^= 0xFF;
    let mut z = Vec::new();
    codec::encode_delta(&cur, &next, &mut z).unwrap();
    src.send(&protocol::delta_pixels(999, 0, w, h, &z))
        .await
        .unwrap();
    apply(&mut picture, &recv(&mut r).await);
    assert_eq!(picture.unwrap(), next);
    assert!(metric(&b, "relay_cluster_catchup_fetches_total").await >= 1);
}

#[tokio::test]
async fn a_33mb_keyframe_crosses_nodes_and_serves_late_joiners_there() {
    let Some(n) = nats(true).await else { return };
    let (a, b, c) = (
        node(&n, "a", &[]).await,
        node(&n, "b", &[]).await,
        node(&n, "c", &[]).await,
    );
    let mut src = connect(&a.url("/source/uhd")).await;
    let small = protocol::pixels_keyframe(0, 0, 1, 1, &[1, 2, 3, 4]);
    src.send(&small).await.unwrap();
    let mut early = connect(&b.url("/stream/uhd")).await;
    assert_eq!(recv(&mut early).await, small);
    let rgba = noise(3840 * 2160 * 4, 9);
    let kf = protocol::pixels_keyframe(1, 1, 3840, 2160, &rgba);
    assert!(kf.len() > 33_000_000);
    src.send(&kf).await.unwrap();
    assert!(recv(&mut early).await == kf, "live 33 MB keyframe differs");
    // A late joiner on b gets it from b's cache; one on c (which never
    // carried the channel) through a catch-up from a.
    let mut late_b = connect(&b.url("/stream/uhd")).await;
    assert!(recv(&mut late_b).await == kf, "late joiner on b");
    let mut late_c = connect(&c.url("/stream/uhd")).await;
    assert!(recv(&mut late_c).await == kf, "late joiner on c");
    assert!(metric(&b, "relay_cluster_fragments_in_total").await >= 32);
}

#[tokio::test]
async fn a_second_source_on_another_node_is_refused_until_the_first_leaves() {
    let Some(n) = nats(true).await else { return };
    let (a, b) = (node(&n, "a", &[]).await, node(&n, "b", &[]).await);
    let first = connect(&a.url("/source/one")).await;
    match connect_err(&b.url("/source/one")).await {
        ClientError::Refused { status, body } => {
            assert_eq!(status, 409);
            assert!(body.contains("node a"), "{body}");
        }
        e => panic!("unexpected {e}"),
    }
    // The refused claim did not break the local slot on b.
    assert!(!b.relay.channel("one").is_some_and(|c| c.source));
    first.close(1000).await.unwrap();
    // Its claim is released when it leaves: b may publish now.
    let start = tokio::time::Instant::now();
    loop {
        match Client::connect(&b.url("/source/one"), 1 << 20).await {
            Ok(_) => break,
            Err(ClientError::Refused { status: 409, .. }) => {
                assert!(start.elapsed() < DEADLINE, "claim never released");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
}

#[tokio::test]
async fn inputs_from_receivers_on_other_nodes_reach_the_source_in_order() {
    let Some(n) = nats(true).await else { return };
    let (a, b) = (node(&n, "a", &[]).await, node(&n, "b", &[]).await);
    let mut src = connect(&a.url("/source/in")).await;
    let mut r1 = connect(&b.url("/stream/in")).await;
    let mut r2 = connect(&b.url("/stream/in")).await;
    wait_receivers(&b, "in", 2).await;
    for i in 0..100u16 {
        r1.send(&protocol::pointer_input(
            InputType::Pointer,
            i,
            0,
            i,
            2 * i,
            0,
        ))
        .await
        .unwrap();
        r2.send(&protocol::key_input(true, i, 0, 1000 + i, 0))
            .await
            .unwrap();
    }
    let (mut next1, mut next2) = (0u16, 0u16);
    while next1 < 100 || next2 < 100 {
        let m = recv(&mut src).await;
        let h = Header::parse(&m).unwrap();
        match h.input_type() {
            InputType::Pointer => {
                let p = protocol::parse_pointer(&m).unwrap();
                assert_eq!((h.seq, p.x, p.y), (next1, next1, 2 * next1));
                next1 += 1;
            }
            InputType::KeyDown => {
                assert_eq!(h.seq, next2);
                next2 += 1;
            }
            other => panic!("unexpected input {other:?}"),
        }
    }
    assert!(metric(&a, "relay_cluster_inputs_in_total").await >= 200);
}

#[tokio::test]
async fn a_nats_server_without_jetstream_is_a_clear_startup_error() {
    let Some(n) = nats(false).await else { return };
    let url = n.url();
    let cfg = Config::parse_from(["x", "--addr", "127.0.0.1:0", "--nats-url", &url]);
    match Server::bind(cfg).await {
        Err(e @ StartError::Cluster(_)) => {
            let text = e.to_string();
            assert!(text.contains("JetStream") && text.contains("-js"), "{text}");
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("started without JetStream"),
    }
    // And no server at all is one too, naming where it looked (without
    // credentials).
    let port = free_port();
    let url = format!("nats://user:secret@127.0.0.1:{port}");
    let cfg = Config::parse_from(["x", "--addr", "127.0.0.1:0", "--nats-url", &url]);
    let text = Server::bind(cfg).await.err().expect("no NATS").to_string();
    assert!(
        text.contains("cannot connect to NATS") && !text.contains("secret"),
        "{text}"
    );
}

#[tokio::test]
async fn frames_lost_on_the_way_are_repaired_by_a_catch_up_never_a_broken_chain() {
    let Some(n) = nats(true).await else { return };
    // A source-side queue towards NATS of about one delta: a burst (sent
    // in one write, so the relay reads it back to back) loses frames
    // there, and b must notice the gaps.
    let a = node(&n, "a", &["--cluster-uplink-queue", "300000"]).await;
    let b = node(&n, "b", &["--egress-queue", "67108864"]).await;
    let mut src = connect(&a.url("/source/gap")).await;
    let (w, h) = (250u16, 250u16);
    let mut cur = noise(w as usize * h as usize * 4, 1);
    src.send(&protocol::pixels_keyframe(0, 0, w, h, &cur))
        .await
        .unwrap();
    let mut r = connect(&b.url("/stream/gap")).await;
    let mut picture = None;
    apply(&mut picture, &recv(&mut r).await);
    assert_eq!(picture.as_ref(), Some(&cur));
    let delta = |cur: &mut Vec<u8>, i: u64| {
        let mut next = cur.clone();
        // Under 256 KiB: checked inline, not on the bulk lane.
        let at = (i as usize * 40_000) % (next.len() - 200_000);
        next[at..at + 200_000].copy_from_slice(&noise(200_000, i));
        let mut z = Vec::new();
        codec::encode_delta(cur, &next, &mut z).unwrap();
        *cur = next;
        protocol::delta_pixels(i as u16, 0, w, h, &z)
    };
    let mut burst = Vec::new();
    for i in 1..=60 {
        let m = delta(&mut cur, i);
        burst.extend(bitstream_relay::ws::client_frame(
            bitstream_relay::ws::OP_BINARY,
            true,
            &m,
            [1, 2, 3, 4],
        ));
    }
    src.send_raw(&burst).await.unwrap();
    // One more after a pause, so a loss at the very end is seen too.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let m = delta(&mut cur, 61);
    src.send(&m).await.unwrap();
    // Every message b's receiver gets applies cleanly (a delta on the wrong
    // picture would not decode to the source's), and it ends at the source's.
    while picture.as_ref() != Some(&cur) {
        apply(&mut picture, &recv(&mut r).await);
    }
    let dropped = metric(&a, "relay_cluster_uplink_dropped_total").await;
    let gaps = metric(&b, "relay_cluster_gaps_repaired_total").await;
    assert!(
        dropped > 0,
        "the burst lost nothing: this test checked no repair"
    );
    assert!(gaps >= 1, "{dropped} frames dropped, {gaps} gaps repaired");
}

#[tokio::test]
async fn signaling_peers_on_different_nodes_reach_each_other() {
    let Some(n) = nats(true).await else { return };
    let (a, b) = (node(&n, "a", &[]).await, node(&n, "b", &[]).await);
    let mut pa = connect(&a.url("/signal/room")).await;
    let mut pa2 = connect(&a.url("/signal/room")).await;
    let mut pb = connect(&b.url("/signal/room")).await;
    // Both nodes subscribe when their peer joins, before the handshake is
    // answered: a message sent now reaches the other node.
    pa.send_text(r#"{"offer":1}"#).await.unwrap();
    for p in [&mut pb, &mut pa2] {
        match within(p.recv()).await.unwrap() {
            bitstream_relay::client::Message::Text(t) => assert_eq!(t, r#"{"offer":1}"#),
            other => panic!("unexpected {other:?}"),
        }
    }
    for i in 0..50 {
        pb.send_text(&format!(r#"{{"candidate":{i}}}"#))
            .await
            .unwrap();
    }
    for i in 0..50 {
        match within(pa.recv()).await.unwrap() {
            bitstream_relay::client::Message::Text(t) => {
                assert_eq!(t, format!(r#"{{"candidate":{i}}}"#))
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Polls `/healthz` until its backplane state is `state`.
async fn wait_backplane(t: &TestRelay, state: &str) {
    let want = format!(r#""state":"{state}""#);
    let start = tokio::time::Instant::now();
    loop {
        let (status, body) = http_get(t, "/healthz").await;
        assert_eq!(status, 200, "a node without its backplane still serves");
        if body.contains(&want) {
            return;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "backplane never {state}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn relays_ride_out_a_nats_restart_and_the_stream_resumes_across_nodes() {
    let Some(n) = nats(true).await else { return };
    let (a, b) = (node(&n, "a", &[]).await, node(&n, "b", &[]).await);
    let mut src = connect(&a.url("/source/rs")).await;
    let mut local = connect(&a.url("/stream/rs")).await;
    let first = protocol::pixels_keyframe(0, 0, 1, 1, &[1, 1, 1, 1]);
    src.send(&first).await.unwrap();
    let mut r = connect(&b.url("/stream/rs")).await;
    assert_eq!(recv(&mut r).await, first);
    assert_eq!(recv(&mut local).await, first);
    let port = n.port;
    drop(n);
    wait_backplane(&a, "disconnected").await;
    wait_backplane(&b, "disconnected").await;
    // The source's node goes on serving its own receivers.
    let during = protocol::pixels_keyframe(1, 0, 1, 1, &[2, 2, 2, 2]);
    src.send(&during).await.unwrap();
    assert_eq!(recv(&mut local).await, during);
    let _n = nats_on(port, true).await;
    wait_backplane(&a, "connected").await;
    wait_backplane(&b, "connected").await;
    // b's receiver gets the source's state again: live, or repaired by a
    // catch-up once the next frame shows the gap; never anything older.
    let mut seen = 0u16;
    let mut resumed = false;
    for i in 2..200u16 {
        let m = protocol::pixels_keyframe(i, 0, 1, 1, &[i as u8; 4]);
        src.send(&m).await.unwrap();
        while let Ok(got) = tokio::time::timeout(Duration::from_millis(50), r.recv_binary()).await {
            let h = Header::parse(&got.unwrap()).unwrap();
            assert!(
                h.seq >= seen,
                "frames in order, nothing older ({} after {seen})",
                h.seq
            );
            seen = h.seq;
        }
        if seen == i {
            resumed = true;
            break;
        }
    }
    assert!(resumed, "the stream never resumed on b (last seen {seen})");
    assert!(metric(&b, "relay_cluster_reconnects_total").await >= 1);
}

/// A relay node run as the real binary (so it can die abruptly: SIGKILL),
/// killed when dropped.
struct ChildNode {
    child: Child,
    port: u16,
}

impl Drop for ChildNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ChildNode {
    fn url(&self, path: &str) -> String {
        format!("ws://127.0.0.1:{}{path}", self.port)
    }

    /// Kills the node with SIGKILL: no close frames, no claim released.
    fn kill(&mut self) {
        self.child.kill().expect("SIGKILL the node");
        self.child.wait().expect("reap the node");
    }
}

/// Starts the relay binary as node `id` of the cluster on `nats`; returns
/// once it listens (it connects to NATS before it binds).
async fn child_node(nats: &Nats, id: &str, extra: &[&str]) -> ChildNode {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_bitstream-relay"))
        .args(["--addr", &format!("127.0.0.1:{port}")])
        .args(["--nats-url", &nats.url(), "--node-id", id])
        .args(["--stats-interval-ms", "0"])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the relay binary");
    let node = ChildNode { child, port };
    eventually("the node binary listening", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
    .await;
    node
}

/// A delta frame that changes `cur` a little (seq `i`), applied to `cur`.
fn small_delta(cur: &mut Vec<u8>, i: u16, w: u16, h: u16) -> Vec<u8> {
    let mut next = cur.clone();
    let at = (i as usize * 523) % (next.len() - 64);
    next[at..at + 64].copy_from_slice(&noise(64, i as u64));
    let mut z = Vec::new();
    codec::encode_delta(cur, &next, &mut z).unwrap();
    *cur = next;
    protocol::delta_pixels(i, i as u32, w, h, &z)
}

/// Reads `r` until its picture is `want`: every `Picture` event's seq goes
/// into `seqs`.
async fn until_picture(
    r: &mut bitstream_relay::client::Receiver,
    want: &[u8],
    seqs: &mut Vec<u16>,
) {
    within(async {
        while r.picture().map(|p| &p.rgba[..]) != Some(want) {
            if let bitstream_relay::client::Event::Picture(h) = r.next().await {
                seqs.push(h.seq);
            }
        }
    })
    .await;
}

#[tokio::test]
async fn a_receivers_node_dies_and_it_goes_on_exactly_on_the_next_url() {
    let Some(n) = nats(true).await else { return };
    let a = node(&n, "a", &[]).await;
    let mut b = child_node(&n, "b", &[]).await;
    let (c, d) = (node(&n, "c", &[]).await, node(&n, "d", &[]).await);
    // The first connection tries the URLs in order: a dead one is skipped.
    let dead = format!("ws://127.0.0.1:{}/stream/fo", free_port());
    let first = bitstream_relay::client::Receiver::connect_any(&[dead, c.url("/stream/fo")])
        .await
        .expect("the second URL answers");
    assert_eq!(first.current_url(), c.url("/stream/fo"));
    drop(first);

    let mut src = connect(&a.url("/source/fo")).await;
    let (w, h) = (64u16, 48u16);
    let mut cur = noise(w as usize * h as usize * 4, 11);
    src.send(&protocol::pixels_keyframe(0, 0, w, h, &cur))
        .await
        .unwrap();
    // Two receivers on b: one whose next URL is c (which carries the
    // channel, so it can resume there), one whose next URL is d (which
    // never carried it: a full catch-up).
    let (on_b, on_c, on_d) = (
        b.url("/stream/fo"),
        c.url("/stream/fo"),
        d.url("/stream/fo"),
    );
    let mut resumer = bitstream_relay::client::Receiver::connect_any(&[&on_b, &on_c])
        .await
        .unwrap();
    let mut catcher = bitstream_relay::client::Receiver::connect_any(&[&on_b, &on_d])
        .await
        .unwrap();
    assert_eq!(resumer.current_url(), on_b);
    let mut watcher = connect(&on_c).await;
    let mut last = Vec::new();
    for i in 1..=30u16 {
        last = small_delta(&mut cur, i, w, h);
        src.send(&last).await.unwrap();
    }
    let mut seqs = Vec::new();
    until_picture(&mut resumer, &cur, &mut seqs).await;
    until_picture(&mut catcher, &cur, &mut seqs).await;
    // c holds every frame up to here (its own receiver has the last one).
    while recv(&mut watcher).await != last {}
    assert_eq!(resumer.resume_point(), Some(30));

    b.kill();
    for i in 31..=60u16 {
        src.send(&small_delta(&mut cur, i, w, h)).await.unwrap();
    }
    src.send(&protocol::signal(false, 61, 0, br#"{"after":"failover"}"#))
        .await
        .unwrap();
    // The resumer goes on from frame 31 on c: every frame once, in order.
    let mut after = Vec::new();
    until_picture(&mut resumer, &cur, &mut after).await;
    assert_eq!(resumer.current_url(), on_c);
    assert_eq!(
        after,
        (31..=60).collect::<Vec<u16>>(),
        "frames after the failover"
    );
    assert_eq!(
        (resumer.reconnects(), resumer.resumes, resumer.full_catchups),
        (1, 1, 0)
    );
    // The other rebuilds from d's catch-up, fetched from a.
    let mut ignored = Vec::new();
    until_picture(&mut catcher, &cur, &mut ignored).await;
    assert_eq!(catcher.current_url(), on_d);
    assert_eq!(
        (catcher.reconnects(), catcher.resumes, catcher.full_catchups),
        (1, 0, 1)
    );
    // Both keep receiving, in order, and fold the signal state.
    for i in 62..=70u16 {
        src.send(&small_delta(&mut cur, i, w, h)).await.unwrap();
    }
    for r in [&mut resumer, &mut catcher] {
        let mut more = Vec::new();
        until_picture(r, &cur, &mut more).await;
        assert_eq!(more, (62..=70).collect::<Vec<u16>>());
        assert_eq!(
            serde_json::to_value(r.signal()).unwrap(),
            serde_json::json!({"after": "failover"})
        );
        assert_eq!(r.undecodable, 0, "no delta was applied to a wrong picture");
    }
}

#[tokio::test]
async fn the_sources_node_dies_and_receivers_elsewhere_stay_and_get_the_stream_back() {
    let Some(n) = nats(true).await else { return };
    // A short lease: the dead node's claim frees 1.5 s after its last renewal.
    let lease = ["--cluster-lease-ms", "1500"];
    let mut a = child_node(&n, "a", &lease).await;
    let (b, c) = (node(&n, "b", &lease).await, node(&n, "c", &lease).await);
    let mut src =
        bitstream_relay::client::Source::connect_any(&[a.url("/source/sd"), c.url("/source/sd")])
            .await
            .unwrap();
    assert_eq!(src.current_url(), a.url("/source/sd"));
    let (w, h) = (32u16, 24u16);
    let mut cur = noise(w as usize * h as usize * 4, 21);
    src.send_picture(w, h, &cur).await.unwrap();
    // Plain clients: a close or an error would be seen as one.
    let mut on_b = connect(&b.url("/stream/sd")).await;
    let mut on_c = connect(&c.url("/stream/sd")).await;
    let (mut pic_b, mut pic_c) = (None, None);
    let step = |cur: &mut Vec<u8>, i: u64| {
        let at = (i as usize * 97) % (cur.len() - 32);
        cur[at..at + 32].copy_from_slice(&noise(32, i));
    };
    for i in 0..10 {
        step(&mut cur, i);
        src.send_picture(w, h, &cur).await.unwrap();
    }
    for (r, pic) in [(&mut on_b, &mut pic_b), (&mut on_c, &mut pic_c)] {
        while pic.as_ref() != Some(&cur) {
            apply(pic, &recv(r).await);
        }
    }

    a.kill();
    // The source finds its node gone, moves to c (refused there with 409
    // until a's lease runs out) and resends its picture: the stream goes
    // on for c's receiver and, over NATS, for b's.
    for i in 10..20 {
        step(&mut cur, i);
        within(src.send_picture(w, h, &cur)).await.unwrap();
    }
    assert_eq!(src.current_url(), c.url("/source/sd"));
    assert!(src.reconnects() >= 1);
    for (r, pic) in [(&mut on_b, &mut pic_b), (&mut on_c, &mut pic_c)] {
        while pic.as_ref() != Some(&cur) {
            // `recv` panics on a close: they stay connected throughout.
            apply(pic, &recv(r).await);
        }
    }
    let json = http_get(&b, "/channels").await.1;
    assert!(json.contains(r#""source_node":"c""#), "{json}");
}

#[tokio::test]
async fn a_frame_lost_at_the_end_of_a_burst_is_repaired_after_a_heartbeat() {
    let Some(n) = nats(true).await else { return };
    // A frame larger than a's queue towards NATS is always dropped there.
    let a = node(
        &n,
        "a",
        &[
            "--cluster-uplink-queue",
            "300000",
            "--cluster-heartbeat-ms",
            "200",
        ],
    )
    .await;
    let b = node(&n, "b", &["--egress-queue", "67108864"]).await;
    let mut src = connect(&a.url("/source/tail")).await;
    let (w, h) = (400u16, 300u16);
    let mut cur = noise(w as usize * h as usize * 4, 4);
    src.send(&protocol::pixels_keyframe(0, 0, w, h, &cur))
        .await
        .unwrap();
    let mut r = connect(&b.url("/stream/tail")).await;
    let mut picture = None;
    apply(&mut picture, &recv(&mut r).await);
    assert_eq!(picture.as_ref(), Some(&cur));
    for i in 1..=5u16 {
        src.send(&small_delta(&mut cur, i, w, h)).await.unwrap();
    }
    // The last frame of the burst: a delta of 400,000 noise bytes.
    let mut next = cur.clone();
    next[..400_000].copy_from_slice(&noise(400_000, 99));
    let mut z = Vec::new();
    codec::encode_delta(&cur, &next, &mut z).unwrap();
    assert!(z.len() > 300_000);
    cur = next;
    src.send(&protocol::delta_pixels(6, 6, w, h, &z))
        .await
        .unwrap();
    // Nothing follows it: only a heartbeat can tell b it is missing.
    while picture.as_ref() != Some(&cur) {
        apply(&mut picture, &recv(&mut r).await);
    }
    assert!(metric(&a, "relay_cluster_uplink_dropped_total").await >= 1);
    assert!(metric(&a, "relay_cluster_heartbeats_out_total").await >= 1);
    assert!(metric(&b, "relay_cluster_trailing_gaps_repaired_total").await >= 1);
}

#[tokio::test]
async fn a_second_relay_with_a_live_node_id_refuses_to_start_and_never_holds_its_channel() {
    let Some(n) = nats(true).await else { return };
    let lease = ["--cluster-lease-ms", "1500"];
    let a = node(&n, "twin", &lease).await;
    let _src = connect(&a.url("/source/z")).await;
    let url = n.url();
    let cfg = Config::parse_from([
        "x",
        "--addr",
        "127.0.0.1:0",
        "--stats-interval-ms",
        "0",
        "--nats-url",
        &url,
        "--node-id",
        "twin",
        "--cluster-lease-ms",
        "1500",
    ]);
    match within(Server::bind(cfg)).await {
        Err(e @ StartError::Cluster(ClusterError::NodeIdLive { .. })) => {
            let text = e.to_string();
            assert!(
                text.contains("\"twin\"") && text.contains("live"),
                "the error names the id: {text}"
            );
            // Told as soon as a renewal shows the other one alive, not
            // after waiting for it to lapse.
            assert!(text.contains("renewed it"), "{text}");
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(server) => {
            // Started: at the least it must not admit a second source of z.
            let b = TestRelay {
                addr: server.local_addr(),
                relay: server.relay().clone(),
            };
            tokio::spawn(server.run());
            match Client::connect(&b.url("/source/z"), 1 << 20).await {
                Ok(_) => panic!("both relays named twin admitted a source for channel z"),
                Err(e) => panic!("a second relay named twin started (its source got {e})"),
            }
        }
    }
    // The first one still holds its source, and a source elsewhere is refused.
    assert!(a.relay.channel("z").is_some_and(|c| c.source));
    let other = node(&n, "other", &lease).await;
    match connect_err(&other.url("/source/z")).await {
        ClientError::Refused { status, body } => {
            assert_eq!(status, 409);
            assert!(body.contains("node twin"), "{body}");
        }
        e => panic!("unexpected {e}"),
    }
}

#[tokio::test]
async fn a_node_restarted_at_once_with_its_id_starts_and_gets_its_channel_back() {
    let Some(n) = nats(true).await else { return };
    let lease = ["--cluster-lease-ms", "1500"];
    let mut first = child_node(&n, "phoenix", &lease).await;
    let src = Client::connect(&first.url("/source/z"), 1 << 20)
        .await
        .expect("source on the first process");
    // Killed: neither its presence nor its claim is released.
    first.kill();
    drop(src);
    let started = tokio::time::Instant::now();
    let second = child_node(&n, "phoenix", &lease).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "waited {:?} for the id to be free",
        started.elapsed()
    );
    // The dead process's claim frees a lease after its last renewal.
    loop {
        match Client::connect(&second.url("/source/z"), 1 << 20).await {
            Ok(_) => break,
            Err(ClientError::Refused { status: 409, .. }) => {
                assert!(started.elapsed() < DEADLINE, "claim never freed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
}

#[tokio::test]
async fn a_claim_held_by_another_process_of_this_node_id_is_not_taken_over() {
    let Some(n) = nats(true).await else { return };
    let a = node(&n, "twin", &[]).await;
    // Claims written as another process named twin would: one by a relay
    // that named only its node, one by a process with another instance id.
    let nc = async_nats::connect(n.url()).await.unwrap();
    for (channel, value) in [("z1", "twin"), ("z2", "twin@0123456789abcdef")] {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Expected-Last-Subject-Sequence", "0");
        let ack = nc
            .request_with_headers(
                format!("$KV.bitstream_relay_sources.{channel}"),
                headers,
                value.into(),
            )
            .await
            .unwrap();
        assert!(
            !String::from_utf8_lossy(&ack.payload).contains("error"),
            "{ack:?}"
        );
        match connect_err(&a.url(&format!("/source/{channel}"))).await {
            ClientError::Refused { status, body } => {
                assert_eq!(status, 409, "{body}");
                assert!(
                    body.contains("node twin, another process with this node id"),
                    "{body}"
                );
            }
            e => panic!("unexpected {e}"),
        }
    }
}

#[tokio::test]
async fn a_relay_stopped_cleanly_frees_its_node_id_at_once() {
    let Some(n) = nats(true).await else { return };
    let url = n.url();
    // The default lease: waiting for the presence to lapse would take 10 s.
    let cfg = || {
        Config::parse_from([
            "x",
            "--addr",
            "127.0.0.1:0",
            "--stats-interval-ms",
            "0",
            "--shutdown-grace-ms",
            "100",
            "--nats-url",
            &url,
            "--node-id",
            "calm",
        ])
    };
    let first = within(Server::bind(cfg())).await.expect("first start");
    let relay = first.relay().clone();
    let run = tokio::spawn(first.run());
    relay.begin_shutdown();
    within(run).await.unwrap().unwrap();
    let started = tokio::time::Instant::now();
    let _second = within(Server::bind(cfg())).await.expect("restart");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "restart waited {:?}",
        started.elapsed()
    );
}
