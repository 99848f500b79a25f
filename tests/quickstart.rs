//! The quick start on the built binary: `demo` serves and publishes, a
//! receiver gets byte-valid frames in order; `pattern` publishes to a
//! running relay (and again after it restarts) and `watch` prints what it
//! measures.

mod common;

use bitstream_relay::client::Client;
use bitstream_relay::codec;
use bitstream_relay::protocol::{self, FrameType, HEADER_LEN};
use bitstream_relay::wire::signal;
use common::process::{bin, Running};
use common::*;

/// Reads `n` messages from a receiver, checks each is a valid protocol
/// message whose picture or signal applies, and returns the header seqs
/// of those that are not `SignalSync` (a catch-up's sync carries an older
/// seq) and the frame types seen.
async fn read_valid(rx: &mut Client, n: usize) -> (Vec<u16>, Vec<FrameType>) {
    let mut picture: Option<Vec<u8>> = None;
    let mut seqs = Vec::new();
    let mut kinds = Vec::new();
    for _ in 0..n {
        let msg = within(rx.recv_binary()).await.expect("a frame");
        let h = protocol::validate_source_message(&msg).expect("a valid message");
        let payload = &msg[HEADER_LEN..];
        match h.frame_type() {
            FrameType::Pixels => {
                assert_eq!(payload.len(), h.rgba_len());
                picture = Some(payload.to_vec());
            }
            FrameType::DeltaPixels => {
                let p = picture.as_mut().expect("a keyframe before the first delta");
                codec::apply_delta(p, payload).expect("the delta applies");
            }
            FrameType::SignalSync | FrameType::SignalDiff => {
                signal::parse(payload).expect("a JSON object");
            }
            other => panic!("unexpected {other:?}"),
        }
        if h.frame_type() != FrameType::SignalSync {
            seqs.push(h.seq);
        }
        if !kinds.contains(&h.frame_type()) {
            kinds.push(h.frame_type());
        }
    }
    (seqs, kinds)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_and_publishes_and_a_receiver_gets_frames_in_order() {
    let port = free_port();
    let mut cmd = relay_command(port);
    // Every picture a keyframe here; `pattern` below sends deltas.
    cmd.args([
        "demo",
        "--size",
        "64x36",
        "--fps",
        "30",
        "--encoding",
        "raw",
    ]);
    let mut demo = Running::start(cmd);
    let open = demo.stdout.wait_for("open ");
    assert!(
        open.contains(&format!("http://127.0.0.1:{port}/?channel=demo")),
        "{open}"
    );
    demo.stderr.wait_for("source joined");
    let mut rx = connect(&format!("ws://127.0.0.1:{port}/stream/demo")).await;
    let (seqs, kinds) = read_valid(&mut rx, 60).await;
    assert!(
        kinds.contains(&FrameType::Pixels) && !kinds.contains(&FrameType::DeltaPixels),
        "raw: {kinds:?}"
    );
    // After the catch-up, the live stream: every seq the next one.
    let live = &seqs[seqs.len() - 40..];
    for w in live.windows(2) {
        assert_eq!(w[1], w[0].wrapping_add(1), "in order, none lost: {seqs:?}");
    }
    assert!(demo.terminate().success(), "{:?}", demo.stderr.all());
}

/// Runs `watch URL --count n` and returns its lines.
fn watch(url: &str, n: u32) -> Vec<String> {
    let out = bin()
        .args(["watch", url, "--count", &n.to_string(), "--fail-on-error"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines().map(str::to_owned).collect()
}

/// The fps of a watch line (`fps 29.8  MB/s …`).
fn fps(line: &str) -> f64 {
    line.strip_prefix("fps ")
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no fps in {line:?}"))
}

/// The binary serving on `port`, without stats lines.
fn relay_command(port: u16) -> std::process::Command {
    let mut cmd = bin();
    cmd.args(["--addr", &format!("127.0.0.1:{port}")])
        .args(["--stats-interval-ms", "0"]);
    cmd
}

/// The relay serving on `port`, once it listens.
fn relay(port: u16) -> Running {
    let r = Running::start(relay_command(port));
    r.stderr.wait_for("relay listening");
    r
}

#[test]
fn pattern_publishes_across_a_relay_restart_and_watch_measures_it() {
    let port = free_port();
    let mut first = relay(port);
    let mut cmd = bin();
    cmd.args([
        "pattern",
        "--url",
        &format!("ws://127.0.0.1:{port}/source/pw"),
    ])
    .args(["--size", "48x27", "--fps", "20", "--encoding", "xor"]);
    let pattern = Running::start(cmd);
    first.stderr.wait_for("source joined");
    let url = format!("ws://127.0.0.1:{port}/stream/pw");
    let lines = watch(&url, 3);
    assert_eq!(lines.len(), 3, "{lines:?}");
    let last = &lines[2];
    assert!(fps(last) > 0.0, "{lines:?}");
    // The pattern publishes its clock: latency is absolute, in ms.
    assert!(
        last.contains("latency ") && !last.contains("latency -"),
        "{last}"
    );
    assert!(last.contains("errors 0"), "{last}");

    // The relay restarts; the pattern comes back by itself.
    assert!(first.terminate().success());
    let second = relay(port);
    second.stderr.wait_for("source joined");
    let lines = watch(&url, 2);
    assert!(fps(&lines[1]) > 0.0, "{lines:?}");
    assert!(
        pattern
            .stderr
            .all()
            .iter()
            .any(|l| l.contains("reconnected")),
        "{:?}",
        pattern.stderr.all()
    );
}

#[test]
fn watch_exits_1_when_nothing_listens() {
    let out = bin()
        .args(["watch", &format!("ws://127.0.0.1:{}/stream/x", free_port())])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot watch"), "{err}");
}
