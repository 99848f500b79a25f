//! Starting and stopping the relays under test, each pinned to one core.

use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::ValueEnum;

/// A relay the driver can start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RelayKind {
    /// This project's relay (`target/release/bitstream-relay`).
    Ours,
    /// The baseline relay (`/work/shared/baseline`).
    Baseline,
    /// The uWebSockets peer (`bun relay.js`).
    Bun,
    /// The plain-TCP fan-out reference inside this driver.
    Tcp,
}

impl RelayKind {
    /// Short name used in tables and file names.
    pub fn label(self) -> &'static str {
        match self {
            RelayKind::Ours => "ours",
            RelayKind::Baseline => "baseline",
            RelayKind::Bun => "uws-bun",
            RelayKind::Tcp => "plain-tcp",
        }
    }
}

/// Where the relays' executables are.
#[derive(Debug, Clone)]
pub struct Paths {
    /// bitstream-relay binary.
    pub relay_bin: PathBuf,
    /// baseline-relay binary.
    pub baseline_bin: PathBuf,
    /// bun executable.
    pub bun: PathBuf,
    /// relay.js of the bun peer.
    pub bun_script: PathBuf,
}

impl Paths {
    /// Why `kind` cannot be started, if it cannot.
    pub fn missing(&self, kind: RelayKind) -> Option<String> {
        let need: Vec<(&Path, &str)> = match kind {
            RelayKind::Ours => vec![(
                &self.relay_bin,
                "build it with `cargo build --release --bin bitstream-relay` or pass --relay-bin",
            )],
            RelayKind::Baseline => vec![(
                &self.baseline_bin,
                "build it with `cargo build --release --manifest-path /work/shared/baseline/Cargo.toml` or pass --baseline-bin",
            )],
            RelayKind::Bun => vec![
                (
                    &self.bun,
                    "see /work/shared/peers/bun-relay/README.md (npm pack @oven/bun-linux-x64) or pass --bun",
                ),
                (&self.bun_script, "pass --bun-script"),
            ],
            RelayKind::Tcp => vec![],
        };
        need.into_iter()
            .find(|(p, _)| !p.is_file())
            .map(|(p, how)| format!("{} not found: {how}", p.display()))
    }
}

/// A started relay; stopped (SIGTERM, then SIGKILL) on drop.
pub struct RelayProc {
    child: Child,
    /// Its process id.
    pub pid: u32,
    /// Base URL (`ws://127.0.0.1:PORT` or `tcp://127.0.0.1:PORT`).
    pub url: String,
    /// Its stdout+stderr.
    pub log: PathBuf,
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Starts `kind` on a free loopback port, pinned to `cpu` if given, sized for
/// `per_channel` receivers per channel, with `extra` arguments, and waits
/// until it accepts.
pub fn spawn(
    kind: RelayKind,
    paths: &Paths,
    cpu: Option<usize>,
    per_channel: usize,
    log_dir: &Path,
    tag: &str,
    extra: &[&str],
) -> Result<RelayProc, String> {
    if let Some(m) = paths.missing(kind) {
        return Err(m);
    }
    let port = free_port().map_err(|e| format!("no free port: {e}"))?;
    let addr = format!("127.0.0.1:{port}");
    let mut cmd = match kind {
        RelayKind::Ours => {
            let mut c = Command::new(&paths.relay_bin);
            c.args(["--addr", &addr, "--max-receivers", "100000"])
                .args(["--max-connections-per-ip", "100000"])
                .args(["--max-connections", "200000"]);
            c
        }
        RelayKind::Baseline => {
            let mut c = Command::new(&paths.baseline_bin);
            c.args(["--addr", &addr, "--max-receivers"])
                .arg((per_channel + 16).max(64).to_string());
            c
        }
        RelayKind::Bun => {
            let mut c = Command::new(&paths.bun);
            c.arg(&paths.bun_script).args(["--addr", &addr]);
            c
        }
        RelayKind::Tcp => {
            let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
            let mut c = Command::new(exe);
            c.args(["tcp-server", "--addr", &addr]);
            c
        }
    };
    cmd.args(extra);
    std::fs::create_dir_all(log_dir).map_err(|e| format!("{}: {e}", log_dir.display()))?;
    let log = log_dir.join(format!("{}-{tag}.log", kind.label()));
    let f = File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
    let f2 = f.try_clone().map_err(|e| e.to_string())?;
    cmd.stdin(Stdio::null()).stdout(f).stderr(f2);
    if let Some(cpu) = cpu {
        unsafe {
            cmd.pre_exec(move || {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(cpu, &mut set);
                if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", kind.label()))?;
    let mut p = RelayProc {
        pid: child.id(),
        child,
        url: match kind {
            RelayKind::Tcp => format!("tcp://{addr}"),
            _ => format!("ws://{addr}"),
        },
        log,
    };
    let sa: SocketAddr = addr.parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(st)) = p.child.try_wait() {
            return Err(format!(
                "{} exited at start ({st}); log {}:\n{}",
                kind.label(),
                p.log.display(),
                tail(&p.log)
            ));
        }
        if TcpStream::connect_timeout(&sa, Duration::from_millis(200)).is_ok() {
            break;
        }
        if Instant::now() > deadline {
            p.stop();
            return Err(format!(
                "{} did not listen on {addr} within 20 s",
                kind.label()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(200));
    Ok(p)
}

/// The last lines of a log file.
pub fn tail(p: &Path) -> String {
    let s = std::fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

impl RelayProc {
    /// True if the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Exit status, if it has exited.
    pub fn exit_status(&mut self) -> Option<String> {
        self.child.try_wait().ok().flatten().map(|s| s.to_string())
    }

    /// SIGTERM, up to 3 s to exit, then SIGKILL.
    pub fn stop(&mut self) {
        if !self.alive() {
            return;
        }
        unsafe {
            libc::kill(self.pid as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if !self.alive() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RelayProc {
    fn drop(&mut self) {
        self.stop();
    }
}
