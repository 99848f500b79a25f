//! End to end: the `loadtest` binary (`headline`, `bigframes`, `hostile`
//! with one short attack, and `chaos` with its healthy stream alone)
//! against a tiny fake relay on 127.0.0.1 that damages one
//! frame on its way to every receiver. The run must fail (exit code 1) and
//! count exactly that damage; with no damage it must pass (exit code 0).

mod common;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use bitstream_wire::handshake;
use bitstream_wire::ws::{self, Side};
use common::run_with_results;

/// What the fake relay does to the source's `k`-th message (0-based).
#[derive(Clone, Copy, Debug)]
enum Defect {
    None,
    /// One byte of the payload flipped.
    Flip(usize),
    /// Not forwarded.
    Drop(usize),
    /// Forwarded twice.
    Duplicate(usize),
    /// Forwarded after the next one.
    Swap(usize),
    /// Messages `from..to` not forwarded to the channel's last `last`
    /// receivers to join (the relay skipping slow receivers forward).
    SkipLast {
        from: usize,
        to: usize,
        last: usize,
    },
    /// Before message `at`, the channel's last receiver to join is closed
    /// with 3008 (and gets nothing more).
    CloseLast(usize),
}

type Channels = Arc<Mutex<HashMap<String, Vec<TcpStream>>>>;

/// Starts the fake relay: `/stream/{ch}` joins a channel, `/source/{ch}`
/// sends to it, every message forwarded to each receiver in turn (after
/// `defect`).
fn fake_relay(defect: Defect) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let channels: Channels = Arc::default();
    thread::spawn(move || {
        for s in l.incoming().flatten() {
            let channels = channels.clone();
            thread::spawn(move || serve(s, channels, defect));
        }
    });
    addr
}

fn serve(mut s: TcpStream, channels: Channels, defect: Defect) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    let (req, n) = loop {
        let got = match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(got) => got,
        };
        buf.extend_from_slice(&chunk[..got]);
        if let Ok(Some(r)) = handshake::parse_request(&buf) {
            break r;
        }
    };
    buf.drain(..n);
    let key = req.ws_key.unwrap_or_default();
    if let Some(ch) = req.target.strip_prefix("/stream/") {
        // Joined before the answer, so the driver's first frame reaches it.
        let mut m = channels.lock().unwrap();
        m.entry(ch.to_owned())
            .or_default()
            .push(s.try_clone().unwrap());
        drop(m);
        let _ = s.write_all(&handshake::upgrade_response(&key));
        return; // the driver's receivers only read
    }
    let Some(ch) = req.target.strip_prefix("/source/") else {
        return;
    };
    let ch = ch.to_owned();
    let _ = s.write_all(&handshake::upgrade_response(&key));
    let mut k = 0usize;
    let mut held: Option<Vec<u8>> = None;
    loop {
        // Every whole client frame in the buffer (the driver sends unfragmented binary messages).
        while let Ok(Some(h)) = ws::parse_head(&buf, Side::Server) {
            let end = h.head_len + h.payload_len as usize;
            if buf.len() < end {
                break;
            }
            let mut payload: Vec<u8> = buf[h.head_len..end].to_vec();
            let mask = h.mask.unwrap_or([0; 4]);
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= mask[i % 4];
            }
            buf.drain(..end);
            if h.opcode != ws::OP_BINARY {
                continue;
            }
            let frame = ws::server_frame(ws::OP_BINARY, &payload);
            let mut out: Vec<&[u8]> = vec![&frame];
            let mut damaged;
            let held_now = held.take();
            match defect {
                Defect::Flip(at) if at == k => {
                    damaged = frame.clone();
                    let last = damaged.len() - 1;
                    damaged[last - 100] ^= 0x01;
                    out = vec![&damaged];
                }
                Defect::Drop(at) if at == k => out.clear(),
                Defect::Duplicate(at) if at == k => out.push(&frame),
                Defect::Swap(at) if at == k => {
                    held = Some(frame.clone());
                    out.clear();
                }
                _ => {}
            }
            if let Some(h) = &held_now {
                out.push(h);
            }
            let mut m = channels.lock().unwrap();
            let rs = m.entry(ch.clone()).or_default();
            if matches!(defect, Defect::CloseLast(at) if at == k) {
                if let Some(mut r) = rs.pop() {
                    let close = ws::server_frame(ws::OP_CLOSE, &ws::close_payload(3008, "slow"));
                    let _ = r.write_all(&close);
                }
            }
            let n = rs.len();
            for (i, r) in rs.iter_mut().enumerate() {
                if let Defect::SkipLast { from, to, last } = defect {
                    if (from..to).contains(&k) && i + last >= n {
                        continue;
                    }
                }
                for f in &out {
                    let _ = r.write_all(f);
                }
            }
            k += 1;
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(got) => buf.extend_from_slice(&chunk[..got]),
        }
    }
}

/// What one `loadtest headline` run against a fake relay did.
struct Outcome {
    code: Option<i32>,
    stderr: String,
    /// [missing, duplicate, out_of_order, corrupted, delivered]
    counts: [u64; 5],
}

/// The healthy stream of these runs: 2 receivers of 64×64 at 50 fps.
const SMALL: [&str; 8] = [
    "--receivers",
    "2",
    "--width",
    "64",
    "--height",
    "64",
    "--fps",
    "50",
];

/// Runs `loadtest ARGS --url ws://FAKE --out DIR` through a fake relay
/// with `defect`: (exit code, stderr, its JSON result). Panics if it runs
/// longer than 30 s.
fn loadtest_through(defect: Defect, args: &[&str]) -> (Option<i32>, String, Option<Vec<u8>>) {
    let addr = fake_relay(defect);
    let url = format!("ws://{addr}");
    let mut all: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    all.extend([OsStr::new("--url"), OsStr::new(&url)]);
    // A run takes a few seconds; a driver that hangs fails the test.
    let tag = format!("integrity-{}", addr.port());
    run_with_results(&all, &tag, Duration::from_secs(30))
}

/// Runs `loadtest headline` for 0.5 s at 50 fps (25 frames of 64×64) to
/// 2 receivers through a fake relay with `defect`.
fn headline_through(defect: Defect) -> Outcome {
    let args = [
        &["headline"][..],
        &SMALL,
        &["--duration", "0.5", "--drain", "2"],
    ]
    .concat();
    let (code, stderr, json) = loadtest_through(defect, &args);
    let json = json.unwrap_or_else(|| panic!("no JSON result\n{stderr}"));
    let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
    let d = &v["delivery"];
    let n = |k: &str| d[k].as_u64().unwrap_or_else(|| panic!("{k} in {d}"));
    assert_eq!(v["source"]["frames_sent"], 25, "{stderr}");
    assert_eq!(v["connect"]["receivers_connected"], 2, "{stderr}");
    Outcome {
        code,
        counts: [
            n("missing_frames"),
            n("duplicate"),
            n("out_of_order"),
            n("corrupted"),
            n("delivered_frames"),
        ],
        stderr,
    }
}

/// The run failed with exactly `counts` ([missing, duplicate,
/// out-of-order, corrupt] over both receivers) and said so on stderr.
fn assert_fails_with(o: &Outcome, counts: [u64; 4]) {
    assert_eq!(&o.counts[..4], &counts, "{}", o.stderr);
    assert_eq!(o.code, Some(1), "{}", o.stderr);
    let line = format!(
        "missing {}, duplicate {}, out-of-order {}, corrupt {}",
        counts[0], counts[1], counts[2], counts[3]
    );
    assert!(
        o.stderr.lines().any(|l| l
            .starts_with("loadtest: FAIL headline against relay (ws://127.0.0.1:")
            && l.contains(&line)),
        "no FAIL line with `{line}`:\n{}",
        o.stderr
    );
}

#[test]
fn a_clean_relay_passes() {
    let o = headline_through(Defect::None);
    assert_eq!(o.counts, [0, 0, 0, 0, 50], "{}", o.stderr);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    assert!(o.stderr.contains("loadtest: OK headline"), "{}", o.stderr);
}

#[test]
fn a_flipped_byte_fails_the_run() {
    let o = headline_through(Defect::Flip(5));
    assert_fails_with(&o, [0, 0, 0, 2]);
    assert_eq!(o.counts[4], 48);
}

#[test]
fn a_dropped_frame_fails_the_run() {
    assert_fails_with(&headline_through(Defect::Drop(5)), [2, 0, 0, 0]);
}

#[test]
fn a_duplicated_frame_fails_the_run() {
    assert_fails_with(&headline_through(Defect::Duplicate(5)), [0, 2, 0, 0]);
}

#[test]
fn a_reordered_pair_fails_the_run() {
    assert_fails_with(&headline_through(Defect::Swap(5)), [0, 0, 2, 0]);
}

/// `loadtest hostile` with one short attack, 2 healthy receivers of 64×64
/// at 50 fps, through a fake relay with `defect`: (exit code, stderr).
fn hostile_through(defect: Defect) -> (Option<i32>, String) {
    let attack = ["--only", "oversized-signal", "--oversized-bytes", "64"];
    let phases = ["--calm", "0.5", "--phase", "0.5"];
    let args = [&["hostile"][..], &attack, &phases, &SMALL].concat();
    let (code, stderr, json) = loadtest_through(defect, &args);
    let v: serde_json::Value = serde_json::from_slice(&json.expect("a JSON result")).unwrap();
    assert_eq!(v["ok"], code == Some(0), "{stderr}");
    (code, stderr)
}

#[test]
fn hostile_passes_through_a_clean_relay() {
    let (code, stderr) = hostile_through(Defect::None);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("loadtest: OK hostile against relay"),
        "{stderr}"
    );
}

#[test]
fn hostile_fails_when_a_healthy_frame_is_lost() {
    // Frame 5 is sent 0.1 s into the calm phase.
    let (code, stderr) = hostile_through(Defect::Drop(5));
    assert_eq!(code, Some(1), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.starts_with("loadtest:   FAIL phase 0 calm: healthy frames delivered intact "))
        .unwrap_or_else(|| panic!("no FAIL line for the calm phase:\n{stderr}"));
    assert!(line.ends_with(" (2 not delivered, 0 corrupt)"), "{stderr}");
    assert!(
        stderr.contains("loadtest: FAIL hostile against relay"),
        "{stderr}"
    );
}

/// `loadtest chaos` with every hostile kind left out (the fake relay
/// speaks no more of the protocol than the stream), 0.5 s per phase and
/// 2 healthy receivers of 64×64 at 50 fps, through a fake relay with
/// `defect`: (exit code, stderr, JSON result).
fn chaos_through(defect: Defect) -> (Option<i32>, String, serde_json::Value) {
    let skip = ["--skip", "vanish,storm,staller,slowloris,garbage,flood"];
    let phases = ["--calm", "0.5", "--duration", "0.5", "--settle", "0.5"];
    let args = [&["chaos"][..], &skip, &phases, &SMALL].concat();
    let (code, stderr, json) = loadtest_through(defect, &args);
    let v: serde_json::Value = serde_json::from_slice(&json.expect("a JSON result")).unwrap();
    assert_eq!(v["ok"], code == Some(0), "{stderr}");
    assert_eq!(v["verdict"]["ok"], v["ok"], "{stderr}");
    (code, stderr, v)
}

#[test]
fn chaos_passes_through_a_clean_relay() {
    let (code, stderr, v) = chaos_through(Defect::None);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("loadtest: OK chaos against relay"),
        "{stderr}"
    );
    assert_eq!(v["healthy"]["corrupted"], 0, "{stderr}");
    assert_eq!(v["healthy"]["missing"], 0, "{stderr}");
    assert_eq!(v["verdict"]["failures"].as_array().map(Vec::len), Some(0));
}

#[test]
fn chaos_fails_when_a_healthy_frame_is_damaged_or_lost() {
    // Frame 5 is sent 0.1 s into the calm phase, to both receivers; how
    // many frames the phase has depends on the clock, so only the two
    // lost or damaged ones are counted.
    for (defect, corrupted, totals) in [
        (Defect::Flip(5), 2, ("corrupted", 2)),
        (Defect::Drop(5), 0, ("missing", 2)),
    ] {
        let (code, stderr, v) = chaos_through(defect);
        assert_eq!(code, Some(1), "{defect:?}: {stderr}");
        assert!(
            stderr.contains("loadtest: FAIL chaos against relay"),
            "{defect:?}: {stderr}"
        );
        let line = stderr
            .lines()
            .find_map(|l| l.strip_prefix("loadtest:   FAIL healthy delivery in calm: "))
            .unwrap_or_else(|| panic!("{defect:?}: no FAIL line for the calm phase:\n{stderr}"));
        let tail = format!(" frames intact ({corrupted} corrupted)");
        let (got, of) = line
            .strip_suffix(tail.as_str())
            .and_then(|l| l.split_once(" of "))
            .unwrap_or_else(|| panic!("{defect:?}: `{line}`"));
        let (got, of): (u64, u64) = (got.parse().unwrap(), of.parse().unwrap());
        assert_eq!(of - got, 2, "{defect:?}: `{line}`");
        assert_eq!(
            v["phases"][0]["delivered_intact"], got,
            "{defect:?}: {stderr}"
        );
        assert_eq!(v["healthy"][totals.0], totals.1, "{defect:?}: {stderr}");
        let failures = v["verdict"]["failures"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(
            failures.iter().any(|f| f
                .as_str()
                .is_some_and(|f| f.starts_with("FAIL healthy receivers: "))),
            "{defect:?}: {failures:?}"
        );
    }
}

/// `loadtest bigframes` scaled down: 4 receivers of 64×64 at 50 fps for
/// 0.5 s (25 frames), the last `slow` of them reading at half the stream's
/// rate, connected one at a time so the fake relay knows which they are:
/// (exit code, stderr, JSON result).
fn bigframes_through(defect: Defect, slow: usize) -> (Option<i32>, String, serde_json::Value) {
    let slow = slow.to_string();
    let args = [
        "bigframes",
        "--receivers",
        "4",
        "--slow",
        &slow,
        "--width",
        "64",
        "--height",
        "64",
        "--fps",
        "50",
        "--duration",
        "0.5",
        "--drain",
        "2",
        "--connect-batch",
        "1",
    ];
    let (code, stderr, json) = loadtest_through(defect, &args);
    let json = json.unwrap_or_else(|| panic!("no JSON result\n{stderr}"));
    let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(v["source"]["frames_sent"], 25, "{stderr}");
    assert_eq!(v["connect"]["receivers_connected"], 4, "{stderr}");
    (code, stderr, v)
}

/// [delivered, missing, skipped, jumps, duplicate, out-of-order, corrupt] of group `g`.
fn group(v: &serde_json::Value, g: usize) -> [u64; 7] {
    let g = &v["groups"][g];
    let n = |k: &str| g[k].as_u64().unwrap_or_else(|| panic!("{k} in {g}"));
    [
        n("delivered_frames"),
        n("missing"),
        n("skipped_allowed"),
        n("jumps"),
        n("duplicate"),
        n("out_of_order"),
        n("corrupted"),
    ]
}

#[test]
fn bigframes_passes_through_a_clean_relay() {
    let (code, stderr, v) = bigframes_through(Defect::None, 2);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        (
            v["groups"][0]["name"].as_str(),
            v["groups"][1]["name"].as_str()
        ),
        (Some("fast"), Some("slow"))
    );
    assert_eq!(group(&v, 0), [50, 0, 0, 0, 0, 0, 0], "{stderr}");
    assert_eq!(group(&v, 1), [50, 0, 0, 0, 0, 0, 0], "{stderr}");
    assert!(
        stderr.contains("loadtest: OK bigframes against relay"),
        "{stderr}"
    );
}

#[test]
fn bigframes_allows_slow_receivers_to_be_skipped_forward() {
    // Frames 5, 6 and 7 never reach the 2 slow receivers: 6 skipped, in 2 jumps.
    let skip = Defect::SkipLast {
        from: 5,
        to: 8,
        last: 2,
    };
    let (code, stderr, v) = bigframes_through(skip, 2);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(group(&v, 0), [50, 0, 0, 0, 0, 0, 0], "{stderr}");
    assert_eq!(group(&v, 1), [44, 6, 6, 2, 0, 0, 0], "{stderr}");
    assert_eq!(v["delivery"]["skipped_by_slow_receivers"], 6, "{stderr}");
    assert_eq!(v["delivery"]["missing_frames"], 0, "{stderr}");
}

#[test]
fn bigframes_fails_when_a_full_speed_receiver_is_skipped() {
    // The same skip with only the last receiver slow: the third is a full-speed one.
    let skip = Defect::SkipLast {
        from: 5,
        to: 8,
        last: 2,
    };
    let (code, stderr, v) = bigframes_through(skip, 1);
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(group(&v, 0), [72, 3, 0, 1, 0, 0, 0], "{stderr}");
    assert_eq!(group(&v, 1), [22, 3, 3, 1, 0, 0, 0], "{stderr}");
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("loadtest: FAIL bigframes against relay")
                && l.contains("missing 3, duplicate 0, out-of-order 0, corrupt 0")
                && l.contains("skipped by slow receivers 3 (allowed)")),
        "{stderr}"
    );
}

#[test]
fn bigframes_fails_on_damage_at_slow_receivers() {
    // Each defect hits every receiver, the 2 slow ones included; gaps excuse none of it.
    // [delivered, duplicate, out-of-order, corrupt] over the 2 slow receivers.
    for (defect, slow, line) in [
        (
            Defect::Duplicate(5),
            [50, 2, 0, 0],
            "duplicate 4, out-of-order 0, corrupt 0",
        ),
        (
            Defect::Swap(5),
            [50, 0, 2, 0],
            "duplicate 0, out-of-order 4, corrupt 0",
        ),
        (
            Defect::Flip(5),
            [48, 0, 0, 2],
            "duplicate 0, out-of-order 0, corrupt 4",
        ),
    ] {
        let (code, stderr, v) = bigframes_through(defect, 2);
        assert_eq!(code, Some(1), "{defect:?}: {stderr}");
        let g = group(&v, 1);
        assert_eq!([g[0], g[4], g[5], g[6]], slow, "{defect:?}: {stderr}");
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with("loadtest: FAIL bigframes against relay")
                    && l.contains(&format!("missing 0, {line}"))),
            "{defect:?}: no FAIL line with `{line}`:\n{stderr}"
        );
    }
}

#[test]
fn bigframes_fails_when_the_relay_closes_a_slow_receiver() {
    let (code, stderr, v) = bigframes_through(Defect::CloseLast(10), 2);
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(
        v["groups"][1]["ended_early"]["closed by relay with 3008"], 1,
        "{stderr}"
    );
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("loadtest: FAIL bigframes against relay")
                && l.contains("ended early 1")),
        "{stderr}"
    );
}
