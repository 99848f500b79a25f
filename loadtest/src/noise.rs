//! A noisy neighbour (`compare --noise N`): N busy-loop processes pinned to
//! the relay's CPU for the length of each run, the same for every relay,
//! so the relay shares its core with work it does not control. Each is this
//! executable's hidden `spin` command, ended when the run ends.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::sys;

/// The busy loops of one run; killed when dropped.
pub struct Noise {
    children: Vec<Child>,
}

impl Noise {
    /// Starts `n` busy loops on `cpu` (unpinned if None), each ending by
    /// itself after `seconds` should the driver die first.
    pub fn start(n: usize, cpu: Option<usize>, seconds: f64) -> Result<Noise, String> {
        let exe = std::env::current_exe().map_err(|e| format!("current executable: {e}"))?;
        let mut children = Vec::with_capacity(n);
        for _ in 0..n {
            let mut c = Command::new(&exe);
            c.arg("spin").arg("--seconds").arg(format!("{seconds:.0}"));
            if let Some(cpu) = cpu {
                c.arg("--cpu").arg(cpu.to_string());
            }
            let child = c
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .map_err(|e| format!("start a busy loop: {e}"))?;
            children.push(child);
        }
        Ok(Noise { children })
    }
}

impl Drop for Noise {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The `spin` command: burns one core (pinned to `cpu` if given) for
/// `seconds`.
pub fn spin(cpu: Option<usize>, seconds: f64) -> i32 {
    if let Some(cpu) = cpu {
        if let Err(e) = sys::pin_self(cpu) {
            eprintln!("spin: {e}");
            return 1;
        }
    }
    let end = Instant::now() + Duration::from_secs_f64(seconds.max(0.0));
    let mut x = 1u64;
    while Instant::now() < end {
        for _ in 0..100_000 {
            x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
        }
    }
    0
}
