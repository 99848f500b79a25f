//! End to end: `loadtest cluster` with the real relay binary and a real
//! `nats-server`, one small round (a single relay, then nats-server and 3
//! relays with 2 receivers each): every frame delivered intact and in order
//! in both setups, and the receivers of every node, the two that only NATS
//! feeds included, got every frame.
//!
//! Needs `nats-server` (on PATH or /usr/sbin; `bash .ci/run` installs it):
//! without it the test fails, unless RELAY_SKIP_NATS=1 skips it on purpose
//! (loudly). Needs the relay next to the driver (`target/debug/bitstream-relay`,
//! which `cargo test --workspace` builds), or its path in LOADTEST_RELAY_BIN.

mod common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::run_loadtest;
use serde_json::Value;

/// The `nats-server` to use, or None when it is missing and the test is
/// skipped on purpose (said loudly); panics when it is missing otherwise.
fn nats_server() -> Option<PathBuf> {
    let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join("nats-server"))
        .chain([PathBuf::from("/usr/sbin/nats-server")])
        .find(|p| p.is_file());
    if found.is_some() {
        return found;
    }
    if std::env::var("RELAY_SKIP_NATS").as_deref() != Ok("1") {
        panic!("nats-server is not installed (`apt-get install nats-server`; `bash .ci/run` installs it): the cluster scenario cannot be tested; set RELAY_SKIP_NATS=1 to skip this test on purpose");
    }
    use std::io::Write;
    let bar = "=".repeat(64);
    let _ = writeln!(
        std::io::stderr(),
        "\n{bar}\nSKIPPED ON PURPOSE (RELAY_SKIP_NATS=1): nats-server not installed, loadtest cluster not checked\n{bar}\n"
    );
    None
}

/// The relay binary: LOADTEST_RELAY_BIN, else next to the driver.
fn relay_bin() -> PathBuf {
    let p = std::env::var_os("LOADTEST_RELAY_BIN").map_or_else(
        || Path::new(env!("CARGO_BIN_EXE_loadtest")).with_file_name("bitstream-relay"),
        PathBuf::from,
    );
    assert!(
        p.is_file(),
        "{} not found: build it with `cargo build --bin bitstream-relay` (`cargo test --workspace` does) or set LOADTEST_RELAY_BIN",
        p.display()
    );
    p
}

const FPS: u64 = 20;
const SECONDS: u64 = 2;
const RECEIVERS: u64 = 6;
const NODES: u64 = 3;

#[test]
fn a_small_cluster_round_delivers_every_frame_to_receivers_on_every_node() {
    let Some(nats) = nats_server() else { return };
    let relay = relay_bin();
    let out = std::env::temp_dir().join(format!("loadtest-cluster-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    let log = out.join("stderr.txt");
    let (fps, seconds) = (FPS.to_string(), SECONDS.to_string());
    let (receivers, nodes) = (RECEIVERS.to_string(), NODES.to_string());
    let args: Vec<&OsStr> = [
        "cluster",
        "--rounds",
        "1",
        "--seconds",
        &seconds,
        "--fps",
        &fps,
        "--width",
        "64",
        "--height",
        "64",
        "--receivers",
        &receivers,
        "--nodes",
        &nodes,
        "--drain",
        "5",
        "--relay-cpu",
        "none",
        "--driver-cpu",
        "none",
    ]
    .into_iter()
    .map(OsStr::new)
    .chain([
        OsStr::new("--relay-bin"),
        relay.as_os_str(),
        OsStr::new("--nats-server"),
        nats.as_os_str(),
        OsStr::new("--out"),
        out.as_os_str(),
    ])
    .collect();
    // A guard against a hung driver only (the run takes ~10 s).
    let status = run_loadtest(args, &log, Duration::from_secs(120));
    let stderr = std::fs::read_to_string(&log).unwrap_or_default();
    let results = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .map(|e| e.path().join("results.json"))
        .find(|p| p.is_file())
        .and_then(|p| std::fs::read(p).ok());
    let _ = std::fs::remove_dir_all(&out);
    let status = status.unwrap_or_else(|| panic!("loadtest cluster hung:\n{stderr}"));
    assert_eq!(status.code(), Some(0), "{stderr}");
    let v: Value = serde_json::from_slice(&results.expect("results.json")).unwrap();
    assert_eq!(v["failed"], false, "{stderr}");
    let runs = v["runs"].as_array().expect("runs");
    let setups: Vec<&str> = runs.iter().filter_map(|r| r["setup"].as_str()).collect();
    assert_eq!(setups, ["single", "cluster"], "{stderr}");

    let frames = FPS * SECONDS;
    for r in runs {
        let setup = r["setup"].as_str().unwrap();
        let d = &r["delivery"];
        assert_eq!(r["source"]["frames_sent"], frames, "{setup}: {stderr}");
        assert_eq!(
            r["connect"]["receivers_connected"], RECEIVERS,
            "{setup}: {stderr}"
        );
        // Every frame, intact, at every receiver, once and in order, and
        // every one of them hashed.
        assert_eq!(d["delivered_frames"], frames * RECEIVERS, "{setup}: {d}");
        assert_eq!(d["payloads_hashed"], frames * RECEIVERS, "{setup}: {d}");
        for k in ["missing_frames", "duplicate", "out_of_order", "corrupted"] {
            assert_eq!(d[k], 0, "{setup} {k}: {d}");
        }
    }

    let cluster = &runs[1];
    // One group per node, each with its share of the receivers and every
    // frame for each of them: nodes 2 and 3 got theirs through NATS.
    let groups = cluster["groups"].as_array().expect("groups");
    let names: Vec<&str> = groups.iter().filter_map(|g| g["name"].as_str()).collect();
    assert_eq!(names, ["node1", "node2", "node3"], "{stderr}");
    for g in groups {
        assert_eq!(g["receivers"], RECEIVERS / NODES, "{g}");
        assert_eq!(g["delivered_frames"], frames * RECEIVERS / NODES, "{g}");
    }
    assert_eq!(
        cluster["latency_by_place"]["remote"]["receivers"],
        RECEIVERS * 2 / NODES
    );
    // The nodes' own counters agree: n1 published every frame, n2 and n3
    // took every one from NATS.
    let metric = |node: usize, name: &str| -> f64 {
        cluster["nodes"][node]["metrics"]
            .as_array()
            .expect("metrics")
            .iter()
            .filter_map(Value::as_str)
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} of node {node}: {}", cluster["nodes"]))
    };
    assert!(metric(0, "relay_cluster_frames_out_total") >= frames as f64);
    for node in [1, 2] {
        assert!(metric(node, "relay_cluster_frames_in_total") >= frames as f64);
    }
    let msg = cluster["config"]["message_bytes"].as_u64().unwrap();
    let out_bytes = cluster["nats_server"]["traffic"]["out_bytes"]
        .as_u64()
        .expect("nats-server traffic");
    assert!(
        out_bytes >= 2 * frames * msg,
        "nats-server delivered {out_bytes} B, less than 2 × {frames} frames of {msg} B"
    );
}
