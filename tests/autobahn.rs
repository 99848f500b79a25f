//! WebSocket conformance: the Autobahn TestSuite cases 1–10 (through
//! `kosoku`, which runs Autobahn's case files on Python 3) against `/echo`,
//! which goes through the same reader and egress as sources and receivers.

mod common;

use std::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autobahn_cases_1_to_10_pass_against_echo() {
    let have_kosoku = Command::new("kosoku")
        .arg("--help")
        .output()
        .is_ok_and(|o| o.status.success());
    if !common::tool_available(
        have_kosoku,
        "kosoku (pip install kosoku)",
        "RELAY_SKIP_AUTOBAHN",
    ) {
        return;
    }
    let t = common::start(&["--echo-endpoint"]).await;
    let out_dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("autobahn");
    let _ = std::fs::remove_dir_all(&out_dir);
    let url = t.url("/echo");
    let dir = out_dir.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("kosoku")
            .args([url.as_str(), "-x", "12.*", "-x", "13.*", "-p", "4", "-o"])
            .arg(&dir)
            .output()
    })
    .await
    .unwrap()
    .expect("run kosoku");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "kosoku failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("index.json")).expect("index.json"))
            .expect("json");
    let mut cases = 0;
    for agent in index.as_object().unwrap().values() {
        for (case, result) in agent.as_object().unwrap() {
            cases += 1;
            let behavior = result["behavior"].as_str().unwrap_or("?");
            assert!(
                // Strict everywhere: invalid UTF-8 fails as it arrives (6.4.x).
                matches!(behavior, "OK" | "INFORMATIONAL"),
                "case {case}: {behavior}"
            );
            let close = result["behaviorClose"].as_str().unwrap_or("OK");
            assert!(
                matches!(close, "OK" | "INFORMATIONAL"),
                "case {case} close: {close}"
            );
        }
    }
    assert!(cases >= 300, "only {cases} cases ran");
}
