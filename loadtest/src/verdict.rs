//! The one pass/fail shape of every command: a [`Verdict`] is a list of
//! named checks, each with what was measured, the bound it had to meet and
//! whether it did. Every command builds one, prints it the same way (text,
//! JSON, the stderr lines) and exits 1 iff a check failed.

use std::fmt::Write as _;

use serde_json::{json, Value};

/// One named check: what was measured against which bound.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    /// What is checked, e.g. `phase 0 calm` or `20 Hz`.
    pub name: String,
    /// What was measured, in words and numbers.
    pub measured: String,
    /// What it had to be.
    pub bound: String,
    /// Whether the measurement met the bound.
    pub passed: bool,
}

impl Check {
    /// `FAIL NAME: MEASURED` or `ok NAME: MEASURED`: the line the reports
    /// and stderr carry.
    pub fn line(&self) -> String {
        format!(
            "{} {}: {}",
            if self.passed { "ok" } else { "FAIL" },
            self.name,
            self.measured
        )
    }

    /// [`Check::line`] with its bound: `FAIL NAME: MEASURED (bound: BOUND)`.
    pub fn line_with_bound(&self) -> String {
        format!("{} (bound: {})", self.line(), self.bound)
    }

    fn json(&self) -> Value {
        json!({"name": self.name, "measured": self.measured, "bound": self.bound, "passed": self.passed})
    }
}

/// Every check of a command (or of one run of it), in the order made.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Verdict {
    checks: Vec<Check>,
}

impl Verdict {
    /// No check yet (passes: add a check that fails on "nothing ran" where
    /// that matters).
    pub fn new() -> Self {
        Verdict::default()
    }

    /// Adds a check; returns `passed` (for callers that branch on it).
    pub fn check(
        &mut self,
        name: impl Into<String>,
        passed: bool,
        measured: impl Into<String>,
        bound: impl Into<String>,
    ) -> bool {
        self.checks.push(Check {
            name: name.into(),
            measured: measured.into(),
            bound: bound.into(),
            passed,
        });
        passed
    }

    /// Adds every check of `other`, its name after `prefix` (none if empty).
    pub fn absorb(&mut self, prefix: &str, other: Verdict) {
        for mut c in other.checks {
            if !prefix.is_empty() {
                c.name = format!("{prefix} {}", c.name);
            }
            self.checks.push(c);
        }
    }

    /// True iff every check passed.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.passed)
    }

    /// Every check, in order.
    pub fn checks(&self) -> &[Check] {
        &self.checks
    }

    /// The failed checks' lines (`FAIL NAME: MEASURED`), in order.
    pub fn failures(&self) -> Vec<String> {
        self.checks
            .iter()
            .filter(|c| !c.passed)
            .map(Check::line)
            .collect()
    }

    /// `OK` or `FAIL`.
    pub fn word(&self) -> &'static str {
        if self.passed() {
            "OK"
        } else {
            "FAIL"
        }
    }

    /// The process's exit code: 1 iff a check failed, else 0.
    pub fn exit_code(&self) -> i32 {
        i32::from(!self.passed())
    }

    /// The JSON form: `ok`, every check, and the failed checks' lines.
    pub fn json(&self) -> Value {
        json!({
            "ok": self.passed(),
            "checks": self.checks.iter().map(Check::json).collect::<Vec<_>>(),
            "failures": self.failures(),
        })
    }

    /// The stderr lines: `loadtest: OK|FAIL SUBJECT: DETAIL`, then one
    /// `loadtest:   FAIL NAME: MEASURED` per failed check.
    pub fn stderr(&self, subject: &str, detail: &str) -> String {
        let mut o = format!("loadtest: {} {subject}: {detail}", self.word());
        for f in self.failures() {
            let _ = write!(o, "\nloadtest:   {f}");
        }
        o
    }

    /// The text report's `result` lines: `result        OK: OK_TEXT`, or
    /// `result        FAIL (N failed check(s)):` and one line per failure
    /// with its bound.
    pub fn result_text(&self, ok_text: &str) -> String {
        if self.passed() {
            return format!("result        OK: {ok_text}\n");
        }
        let failed: Vec<&Check> = self.checks.iter().filter(|c| !c.passed).collect();
        let mut o = format!("result        FAIL ({} failed check(s)):\n", failed.len());
        for c in failed {
            let _ = writeln!(o, "  {}", c.line_with_bound());
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two(second: bool) -> Verdict {
        let mut v = Verdict::new();
        v.check("frames", true, "missing 0", "none missing");
        v.check("relay", second, "exited: signal 9", "still running");
        v
    }

    #[test]
    fn one_failed_check_fails_the_verdict_and_the_exit_code() {
        assert!(Verdict::new().passed());
        let ok = two(true);
        assert!(ok.passed());
        assert_eq!((ok.word(), ok.exit_code()), ("OK", 0));
        assert!(ok.failures().is_empty());
        let bad = two(false);
        assert!(!bad.passed());
        assert_eq!((bad.word(), bad.exit_code()), ("FAIL", 1));
        assert_eq!(bad.failures(), ["FAIL relay: exited: signal 9"]);
    }

    #[test]
    fn text_json_and_stderr_say_the_same() {
        let bad = two(false);
        let j = bad.json();
        assert_eq!(j["ok"], false);
        assert_eq!(j["checks"].as_array().map(Vec::len), Some(2));
        assert_eq!(j["checks"][1]["bound"], "still running");
        assert_eq!(j["checks"][0]["passed"], true);
        assert_eq!(j["failures"][0], "FAIL relay: exited: signal 9");
        assert_eq!(
            bad.stderr("headline against ours", "frames sent 3"),
            "loadtest: FAIL headline against ours: frames sent 3\nloadtest:   FAIL relay: exited: signal 9"
        );
        assert_eq!(
            bad.result_text("fine"),
            "result        FAIL (1 failed check(s)):\n  FAIL relay: exited: signal 9 (bound: still running)\n"
        );
        let ok = two(true);
        assert_eq!(ok.result_text("fine"), "result        OK: fine\n");
        assert_eq!(ok.stderr("x", "y"), "loadtest: OK x: y");
        assert_eq!(ok.json()["ok"], true);
    }

    #[test]
    fn absorbed_checks_keep_their_outcome_under_a_prefix() {
        let mut all = Verdict::new();
        all.absorb("round 1/2", two(true));
        all.absorb("round 2/2", two(false));
        all.absorb("", two(true));
        assert_eq!(all.checks().len(), 6);
        assert_eq!(all.failures(), ["FAIL round 2/2 relay: exited: signal 9"]);
        assert_eq!(all.checks()[4].name, "frames");
        assert!(!all.passed());
    }
}
