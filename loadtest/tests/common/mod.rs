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
