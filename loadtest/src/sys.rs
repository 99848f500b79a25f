//! Linux process facts and knobs: CPU time and memory from /proc, CPU
//! affinity, the open-files limit.

use std::fs;

/// utime+stime of a whole process (all threads), in clock ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command: field 3 (state) is f[0]; utime is field 14, stime 15.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// CPU time spent in user and system mode by every process of the
/// machine, all CPUs together, in clock ticks (`/proc/stat`'s first line:
/// user + nice + system; interrupts, steal and idle left out).
pub fn machine_busy_ticks() -> Option<u64> {
    let s = fs::read_to_string("/proc/stat").ok()?;
    let l = s.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = l
        .split_whitespace()
        .skip(1)
        .take(3)
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    Some(v.iter().sum())
}

/// Clock ticks per second.
pub fn ticks_per_sec() -> f64 {
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// A `Vm*:` field of /proc/PID/status, in KiB.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Current resident set, KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

/// Peak resident set since the process started, KiB.
pub fn hwm_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM:")
}

/// `f` of every process in `pids`, added up: None if `pids` is empty or
/// any of them cannot be read (gone), so a sum never silently leaves one out.
pub fn sum_of(pids: &[u32], f: impl Fn(u32) -> Option<u64>) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&p| f(p)).sum()
}

/// Pins the calling thread (and the threads it creates later) to `cpu`.
pub fn pin_self(cpu: usize) -> Result<(), String> {
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(format!(
                "sched_setaffinity(cpu {cpu}): {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

/// Pins the driver to `cpu`, if given, saying how that went on stderr.
pub fn pin_driver(cpu: Option<usize>) {
    if let Some(cpu) = cpu {
        match pin_self(cpu) {
            Ok(()) => eprintln!("loadtest: driver pinned to CPU {cpu}"),
            Err(e) => eprintln!("loadtest: cannot pin the driver: {e}"),
        }
    }
}

/// Raises the soft open-files limit to the hard one; returns the soft limit in force.
pub fn raise_nofile() -> u64 {
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 1024;
        }
        if r.rlim_cur < r.rlim_max {
            let want = libc::rlimit {
                rlim_cur: r.rlim_max,
                rlim_max: r.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                return r.rlim_max as u64;
            }
        }
        r.rlim_cur as u64
    }
}

/// Samples a process's CPU time and memory.
#[derive(Debug, Clone, Copy)]
pub struct ProcSample {
    /// When (seconds since epoch).
    pub at: f64,
    /// utime+stime ticks.
    pub ticks: u64,
}

impl ProcSample {
    /// Takes a sample now.
    pub fn take(pid: u32) -> Option<Self> {
        Self::take_all(&[pid])
    }

    /// Takes a sample of several processes together (their CPU time added
    /// up; the nodes of a cluster); None if `pids` is empty or one is gone.
    pub fn take_all(pids: &[u32]) -> Option<Self> {
        Some(Self {
            at: crate::now_secs(),
            ticks: sum_of(pids, cpu_ticks)?,
        })
    }

    /// CPU use between two samples, in % of one core.
    pub fn cpu_pct_since(&self, earlier: &ProcSample) -> f64 {
        let dt = self.at - earlier.at;
        if dt <= 0.0 {
            return 0.0;
        }
        (self.ticks.saturating_sub(earlier.ticks)) as f64 / ticks_per_sec() / dt * 100.0
    }
}

/// A `TcpExt:` counter of /proc/net/netstat (system-wide), e.g. `ListenOverflows`.
pub fn tcpext(name: &str) -> Option<u64> {
    let s = fs::read_to_string("/proc/net/netstat").ok()?;
    let mut lines = s.lines().filter(|l| l.starts_with("TcpExt:"));
    let (h, v) = (lines.next()?, lines.next()?);
    let i = h.split_whitespace().position(|x| x == name)?;
    v.split_whitespace().nth(i)?.parse().ok()
}
