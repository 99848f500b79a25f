//! What the end-to-end tests of the `loadtest` binary share.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Runs `loadtest ARGS`, its stderr into `log`, and waits for it: its exit
/// status, or None if it ran past `limit` (then it is killed). `limit`
/// only guards against a hung driver; no test judges how long a run took.
pub fn run_loadtest(
    args: impl IntoIterator<Item = impl AsRef<OsStr>>,
    log: &Path,
    limit: Duration,
) -> Option<ExitStatus> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("create the stderr log"))
        .spawn()
        .expect("run loadtest");
    let deadline = Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait().expect("wait for loadtest") {
            return Some(st);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `loadtest ARGS --out DIR` in a fresh temporary DIR named after
/// `tag` (removed afterwards) and waits up to `limit`: (exit code, stderr,
/// the JSON result if the run wrote one). Panics if it ran past `limit`.
#[allow(dead_code)] // not every test binary reads results
pub fn run_with_results(
    args: &[&OsStr],
    tag: &str,
    limit: Duration,
) -> (Option<i32>, String, Option<Vec<u8>>) {
    let out = std::env::temp_dir().join(format!("loadtest-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&out).expect("create the results folder");
    let log = out.join("stderr.txt");
    let mut all = args.to_vec();
    all.extend([OsStr::new("--out"), out.as_os_str()]);
    let status = run_loadtest(all, &log, limit);
    let stderr = std::fs::read_to_string(&log).unwrap_or_default();
    let json = std::fs::read_dir(&out)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "json"))
        .and_then(|p| std::fs::read(p).ok());
    let _ = std::fs::remove_dir_all(&out);
    let status = status.unwrap_or_else(|| {
        panic!(
            "loadtest did not end within {} s:\n{stderr}",
            limit.as_secs()
        )
    });
    (status.code(), stderr, json)
}
