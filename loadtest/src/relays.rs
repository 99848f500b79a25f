//! Starting and stopping the relays under test, each pinned to one core.

use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::ValueEnum;

/// Which relay a run measures, and where its reports go (the options every
/// subcommand shares).
#[derive(clap::Args, Clone, Debug)]
pub struct TargetOpts {
    /// Relay base URL: ws://HOST:PORT (paths /source/{ch}, /stream/{ch}), or tcp://HOST:PORT for the plain-TCP reference.
    #[arg(long, default_value = "ws://127.0.0.1:9100")]
    pub url: String,
    /// Measure this relay process (CPU from /proc/PID/stat, RSS from /proc/PID/status).
    #[arg(long)]
    pub relay_pid: Option<u32>,
    /// Start this relay instead of using --url (pinned to --relay-cpu; the driver moves to --driver-cpu).
    #[arg(long, value_enum)]
    pub start: Option<RelayKind>,
    /// Output directory for the JSON and text reports.
    #[arg(long, default_value = "target/loadtest")]
    pub out: PathBuf,
    /// Pin the driver to this CPU (default: 1 when it starts relays, else unpinned).
    #[arg(long)]
    pub driver_cpu: Option<usize>,
    /// CPU for relays the driver starts (`--relay-cpu none` to leave them unpinned).
    #[arg(long, default_value = "0")]
    pub relay_cpu: String,
    /// bitstream-relay binary (default: next to this executable).
    #[arg(long)]
    pub relay_bin: Option<PathBuf>,
    /// baseline-relay binary (default: shared/baseline/target/release/baseline-relay, shared/ found next to the repository).
    #[arg(long)]
    pub baseline_bin: Option<PathBuf>,
    /// bun executable for the uWS peer (default: bun on PATH, else /tmp/bun/package/bin/bun).
    #[arg(long)]
    pub bun: Option<PathBuf>,
    /// The uWS peer's script (default: shared/peers/bun-relay/relay.js).
    #[arg(long)]
    pub bun_script: Option<PathBuf>,
    /// Name of the relay in reports (default: the --start kind, else "relay").
    #[arg(long)]
    pub label: Option<String>,
}

impl TargetOpts {
    /// Where the relays' executables are.
    pub fn paths(&self) -> Paths {
        Paths::find(
            self.relay_bin.clone(),
            self.baseline_bin.clone(),
            self.bun.clone(),
            self.bun_script.clone(),
        )
    }

    /// The CPU for relays the driver starts, if pinned.
    pub fn relay_cpu(&self) -> Option<usize> {
        self.relay_cpu.parse().ok()
    }

    /// The relay's name in reports.
    pub fn label(&self) -> String {
        self.label
            .clone()
            .or_else(|| self.start.map(|k| k.label().to_owned()))
            .unwrap_or_else(|| "relay".into())
    }

    /// Pins the driver: to --driver-cpu, else to CPU 1 when it starts relays.
    pub fn pin_driver(&self, starts: bool) {
        crate::sys::pin_driver(self.driver_cpu.or(starts.then_some(1)));
    }

    /// The relay under test: the one --start names, started now (sized for
    /// `per_channel` receivers per channel, with `extra` arguments, its log
    /// under `out/logs` tagged `tag`), else the one at --url / --relay-pid.
    /// None (and why, on stderr) if it cannot be started.
    pub fn under_test(&self, per_channel: usize, tag: &str, extra: &[String]) -> Option<UnderTest> {
        let mut u = UnderTest {
            url: self.url.clone(),
            pid: self.relay_pid,
            label: self.label(),
            proc: None,
        };
        if let Some(kind) = self.start {
            let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
            let log_dir = self.out.join("logs");
            let cpu = self.relay_cpu();
            let p = spawn(kind, &self.paths(), cpu, per_channel, &log_dir, tag, &extra)
                .map_err(|e| eprintln!("loadtest: {e}"))
                .ok()?;
            u.url = p.url.clone();
            u.pid = Some(p.pid);
            u.proc = Some(p);
        }
        Some(u)
    }
}

/// The relay a run measures.
pub struct UnderTest {
    /// Its base URL.
    pub url: String,
    /// Its process, if known (CPU, RSS, fds).
    pub pid: Option<u32>,
    /// Its name in reports.
    pub label: String,
    /// The process, if the driver started it.
    pub proc: Option<RelayProc>,
}

impl UnderTest {
    /// After the run: how a relay the driver started exited, if it did;
    /// then stops it.
    pub fn finish(&mut self) -> Option<String> {
        let p = self.proc.as_mut()?;
        let exit = p.exit_status();
        p.stop();
        exit
    }

    /// The log of a relay the driver started.
    pub fn log(&self) -> Option<&Path> {
        self.proc.as_ref().map(|p| p.log.as_path())
    }
}

/// A relay the driver can start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RelayKind {
    /// This project's relay (`target/release/bitstream-relay`).
    Ours,
    /// The baseline relay (`shared/baseline` next to the repository).
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

/// The project's `shared/` folder (PROTOCOL.md, the baseline, the peers),
/// which sits next to the repository: the first folder named `shared` with
/// a PROTOCOL.md in it beside the current directory, the driver's
/// executable or (as built) this crate, or any folder above them; else
/// `../shared` from the repository this crate was built in.
pub fn shared_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let starts = [
        std::env::current_dir().ok(),
        std::env::current_exe().ok(),
        Some(manifest.to_path_buf()),
    ];
    starts
        .iter()
        .flatten()
        .flat_map(|p| p.ancestors())
        .map(|a| a.join("shared"))
        .find(|d| d.join("PROTOCOL.md").is_file())
        .unwrap_or_else(|| manifest.join("../../shared"))
}

/// `name` in a folder of `PATH`, if there is one.
pub fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

impl Paths {
    /// The given paths, the rest found: the relay next to the driver's
    /// executable, the baseline and the bun peer's script under
    /// [`shared_dir`], bun on `PATH` or where shared/peers/bun-relay's
    /// README unpacks it (`/tmp/bun/package/bin/bun`).
    pub fn find(
        relay_bin: Option<PathBuf>,
        baseline_bin: Option<PathBuf>,
        bun: Option<PathBuf>,
        bun_script: Option<PathBuf>,
    ) -> Self {
        let shared = shared_dir();
        Paths {
            relay_bin: relay_bin.unwrap_or_else(|| {
                std::env::current_exe()
                    .ok()
                    .and_then(|p| p.parent().map(|d| d.join("bitstream-relay")))
                    .unwrap_or_else(|| PathBuf::from("target/release/bitstream-relay"))
            }),
            baseline_bin: baseline_bin
                .unwrap_or_else(|| shared.join("baseline/target/release/baseline-relay")),
            bun: bun
                .or_else(|| on_path("bun"))
                .unwrap_or_else(|| PathBuf::from("/tmp/bun/package/bin/bun")),
            bun_script: bun_script.unwrap_or_else(|| shared.join("peers/bun-relay/relay.js")),
        }
    }

    /// Why `kind` cannot be started, if it cannot.
    pub fn missing(&self, kind: RelayKind) -> Option<String> {
        let shared = shared_dir();
        let need: Vec<(&Path, String)> = match kind {
            RelayKind::Ours => vec![(
                &self.relay_bin,
                "build it with `cargo build --release --bin bitstream-relay` or pass --relay-bin".into(),
            )],
            RelayKind::Baseline => vec![(
                &self.baseline_bin,
                format!(
                    "build it with `cargo build --release --manifest-path {}` or pass --baseline-bin",
                    shared.join("baseline/Cargo.toml").display()
                ),
            )],
            RelayKind::Bun => vec![
                (
                    &self.bun,
                    format!(
                        "see {} (npm pack @oven/bun-linux-x64) or pass --bun",
                        shared.join("peers/bun-relay/README.md").display()
                    ),
                ),
                (&self.bun_script, "pass --bun-script".into()),
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

/// A loopback port nothing listens on now.
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Starts `kind` on a free loopback port, pinned to `cpu` if given, sized for
/// `per_channel` receivers per channel, with `extra` arguments, waits
/// until it accepts and says so on stderr.
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
                .args(["--max-channels-per-ip", "100000"])
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
    let url = match kind {
        RelayKind::Tcp => format!("tcp://{addr}"),
        _ => format!("ws://{addr}"),
    };
    let log = log_dir.join(format!("{}-{tag}.log", kind.label()));
    let p = launch(cmd, kind.label(), port, url, cpu, log)?;
    eprintln!(
        "loadtest: started {} (pid {}) at {}{}",
        kind.label(),
        p.pid,
        p.url,
        if extra.is_empty() {
            String::new()
        } else {
            format!(" with {}", extra.join(" "))
        }
    );
    Ok(p)
}

/// Starts `cmd` (`name` in messages), pinned to `cpu` if given, its
/// stdout and stderr into `log`, and waits (up to 20 s) until it accepts
/// on loopback `port`; `url` is how clients reach it. Err (with the log's
/// tail) if it exits first or never listens.
pub fn launch(
    mut cmd: Command,
    name: &str,
    port: u16,
    url: String,
    cpu: Option<usize>,
    log: PathBuf,
) -> Result<RelayProc, String> {
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
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
        .map_err(|e| format!("cannot start {name}: {e}"))?;
    let mut p = RelayProc {
        pid: child.id(),
        child,
        url,
        log,
    };
    let sa = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(st)) = p.child.try_wait() {
            return Err(format!(
                "{name} exited at start ({st}); log {}:\n{}",
                p.log.display(),
                tail(&p.log)
            ));
        }
        if TcpStream::connect_timeout(&sa, Duration::from_millis(200)).is_ok() {
            break;
        }
        if Instant::now() > deadline {
            p.stop();
            return Err(format!("{name} did not listen on {sa} within 20 s"));
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

    /// Sends SIGTERM (if it still runs) and returns at once: stopping
    /// several processes, signal them all first, then [`RelayProc::stop`]
    /// each, so their shutdowns overlap.
    pub fn terminate(&mut self) {
        if self.alive() {
            unsafe {
                libc::kill(self.pid as libc::pid_t, libc::SIGTERM);
            }
        }
    }

    /// SIGTERM, up to 3 s to exit, then SIGKILL.
    pub fn stop(&mut self) {
        if !self.alive() {
            return;
        }
        self.terminate();
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
