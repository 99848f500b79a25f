//! End to end: the plain-TCP fan-out reference (`loadtest tcp-server`,
//! started by `--start tcp`) carries every frame, byte-exact and in order,
//! to every receiver, even at full speed and with its queues full: the
//! ceiling `loadtest compare` holds the relays to must not drop what it
//! is credited with.

mod common;

use common::run_loadtest;
use std::time::Duration;

#[test]
fn the_plain_tcp_reference_delivers_every_frame_at_full_speed() {
    let out = std::env::temp_dir().join(format!("loadtest-tcp-ref-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    let log = out.join("stderr.txt");
    let args = [
        "saturate",
        "--start",
        "tcp",
        "--receivers",
        "8",
        "--width",
        "256",
        "--height",
        "256",
        "--duration",
        "1",
        "--drain",
        "5",
        "--out",
    ];
    let mut all: Vec<std::ffi::OsString> = args.iter().map(Into::into).collect();
    all.push(out.clone().into_os_string());
    // A hung driver or server fails the test; nothing judges the duration.
    let status = run_loadtest(all, &log, Duration::from_secs(60));
    let stderr = std::fs::read_to_string(&log).unwrap_or_default();
    let json = std::fs::read_dir(&out)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "json"))
        .and_then(|p| std::fs::read(p).ok());
    let _ = std::fs::remove_dir_all(&out);
    let status = status.unwrap_or_else(|| panic!("loadtest did not end within 60 s:\n{stderr}"));
    assert_eq!(status.code(), Some(0), "{stderr}");
    let v: serde_json::Value =
        serde_json::from_slice(&json.unwrap_or_else(|| panic!("no JSON result\n{stderr}")))
            .unwrap();
    let sent = v["source"]["frames_sent"].as_u64().unwrap();
    let d = &v["delivery"];
    // Full speed fills every receiver's queue many times over in a second.
    assert!(sent > 100, "only {sent} frames sent:\n{stderr}");
    assert_eq!(d["delivered_frames"].as_u64(), Some(sent * 8), "{d}");
    assert_eq!(d["missing_frames"].as_u64(), Some(0), "{d}");
    assert_eq!(d["corrupted"].as_u64(), Some(0), "{d}");
    assert_eq!(d["out_of_order"].as_u64(), Some(0), "{d}");
}
