//! One way of copying memory for every process of a measurement.
//!
//! glibc (2.36 on these machines) copies and clears large blocks with
//! `rep movsb` / `rep stosb` on CPUs that advertise fast string moves. On
//! some of them (the AMD EPYC Zen 4 VMs these figures come from are among
//! them) that is several times slower than its vector loops. uWS (Bun)
//! copies every published message into each subscriber's buffer in user
//! space, so it pays this on every byte: on 2026-12-07 it needed 83 % of a
//! core for the headline with glibc's choice and 31 % with the vector loops
//! (p99 366 ms against 12 ms). Whether a peer pays depends on the machine's
//! CPU and glibc, not on the peer, which is why this driver and an
//! independent one found uWS at ~85 % and ~50 % of a core (issue 27).
//!
//! So the driver runs itself and every process it starts (relays, the
//! plain-TCP reference, nats-server, noise) with glibc told to use its
//! vector loops ([`TUNABLES`]): each relay at its best, whatever the CPU.
//! Where `GLIBC_TUNABLES` is already set it is left alone; set it empty to
//! measure glibc's own choice. It does nothing on other C libraries or
//! CPUs. A relay given by `--url` is measured as it was started.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;

/// The environment variable glibc reads its tunables from, at start.
const VAR: &str = "GLIBC_TUNABLES";

/// glibc's string moves and stores off for every size (vector loops).
pub const TUNABLES: &str =
    "glibc.cpu.x86_rep_movsb_threshold=0xffffffffffff:glibc.cpu.x86_rep_stosb_threshold=0xffffffffffff";

/// What to do with this process's environment.
#[derive(Debug, PartialEq, Eq)]
enum Plan {
    /// Already set (possibly empty): run as is.
    Keep,
    /// Unset: start again with [`TUNABLES`] (glibc reads them only at start).
    Restart,
}

fn plan(current: Option<&OsString>) -> Plan {
    match current {
        Some(_) => Plan::Keep,
        None => Plan::Restart,
    }
}

/// Re-executes this process with [`TUNABLES`] unless `GLIBC_TUNABLES` is
/// set. Returns when it is set, or when the re-exec failed (then says so
/// and goes on with glibc's own choice).
pub fn apply() {
    if plan(std::env::var_os(VAR).as_ref()) == Plan::Keep {
        return;
    }
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!(
                "loadtest: cannot find this executable to set {VAR} ({e}); copies as glibc chooses"
            );
            return;
        }
    };
    let e = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(VAR, TUNABLES)
        .exec();
    eprintln!("loadtest: cannot restart with {VAR} ({e}); copies as glibc chooses");
}

/// How this run's processes copy, for reports.
pub fn describe() -> String {
    match std::env::var(VAR) {
        Ok(v) if v == TUNABLES => "glibc vector copies".into(),
        Ok(v) if v.is_empty() => "glibc's own copies".into(),
        Ok(v) => format!("{VAR}={v}"),
        Err(_) => "glibc's own copies".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unset_variable_restarts_and_a_set_one_is_kept() {
        assert_eq!(plan(None), Plan::Restart);
        assert_eq!(plan(Some(&OsString::new())), Plan::Keep);
        assert_eq!(
            plan(Some(&OsString::from("glibc.cpu.hwcaps=-AVX2"))),
            Plan::Keep
        );
    }

    #[test]
    fn the_tunables_name_both_thresholds() {
        for part in TUNABLES.split(':') {
            let (name, value) = part.split_once('=').expect("name=value");
            assert!(name.starts_with("glibc.cpu.x86_rep_"), "{name}");
            assert!(u64::from_str_radix(value.trim_start_matches("0x"), 16).is_ok());
        }
        assert_eq!(TUNABLES.split(':').count(), 2);
    }
}
