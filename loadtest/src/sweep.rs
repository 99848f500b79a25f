//! `receivers-sweep`: the `receivers` run (N receivers on one channel, small
//! frames) at rising frame rates, each rate a full run of its own (fresh
//! channel, receivers connected anew), until one fails: the highest rate
//! at which every frame reached every receiver intact and in order with
//! p99 under the bound is the relay's small-message capacity.
//!
//! A rate that loses frames, has a receiver closed or misses the p99
//! bound ends the sweep: that is what is measured, not a defect. The
//! command fails (exit 1) when a frame arrives corrupt, twice or out of
//! order at any rate, when the relay exits, or when the capacity is below
//! `--require-hz` (default: the lowest rate, so a relay that passes no
//! rate fails).

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::relays::{self, RelayKind, RelayProc};
use crate::report::{self, opt};
use crate::run::{self, RunCfg, Summary};
use crate::verdict::Verdict;
use crate::{charts, Opts, Scenario};

/// One rate of a sweep.
pub struct Step {
    /// Frames per second asked for.
    pub rate: f64,
    /// The run.
    pub s: Summary,
    /// Every frame delivered and p99 under the bound.
    pub pass: bool,
    /// Why not, if not.
    pub why: String,
}

/// A whole sweep against one relay.
pub struct Sweep {
    /// The relay's name.
    pub label: String,
    /// The rates tried, in order.
    pub steps: Vec<Step>,
    /// The p99 bound, ms.
    pub bound_ms: f64,
}

impl Sweep {
    /// The highest rate that passed with every rate below it passing too.
    pub fn capacity(&self) -> Option<f64> {
        self.steps
            .iter()
            .take_while(|s| s.pass)
            .map(|s| s.rate)
            .last()
    }

    /// The sweep's checks: no frame damaged, duplicated or reordered at
    /// any rate, the relay running at every rate, and a capacity of at
    /// least `require` Hz. (A lost frame or a closed receiver only ends
    /// the sweep: that is what finds the capacity.)
    pub fn verdict(&self, require: f64) -> Verdict {
        let mut v = Verdict::new();
        for st in &self.steps {
            let s = &st.s;
            let at = format!("{} Hz", st.rate);
            v.check(
                at.clone(),
                s.duplicate + s.out_of_order + s.corrupted == 0,
                format!(
                    "duplicate {}, out-of-order {}, corrupt {}",
                    s.duplicate, s.out_of_order, s.corrupted
                ),
                "no frame duplicated, reordered or corrupt",
            );
            v.check(
                at,
                s.relay_exit.is_none(),
                s.relay_exit
                    .as_ref()
                    .map_or("relay still running".into(), |e| {
                        format!("relay exited: {e}")
                    }),
                "the relay runs to the end",
            );
        }
        let measured = match self.capacity() {
            None => format!(
                "no rate passed (first: {})",
                self.steps
                    .first()
                    .map_or("none run".into(), |s| s.why.clone())
            ),
            Some(c) if c < require => format!("{c} Hz below the required {require} Hz"),
            Some(c) => format!("{c} Hz"),
        };
        let ok = self.capacity().is_some_and(|c| c >= require);
        v.check("capacity", ok, measured, format!("at least {require} Hz"));
        v
    }
}

/// Judges one rate's run.
fn judge(s: &Summary, bound_ms: f64) -> (bool, String) {
    if !s.verdict().passed() {
        (false, s.integrity())
    } else if s.lat_ms[2] >= bound_ms {
        (
            false,
            format!("p99 {:.1} ms, not under {bound_ms} ms", s.lat_ms[2]),
        )
    } else {
        (true, String::new())
    }
}

/// Runs `cfg` at each of `rates` until one fails (or all, with `all`);
/// `relay` is the process to watch for an exit, if the driver started it.
async fn sweep(
    cfg: &RunCfg,
    rates: &[f64],
    bound_ms: f64,
    all: bool,
    mut relay: Option<&mut RelayProc>,
) -> Sweep {
    let mut sw = Sweep {
        label: cfg.label.clone(),
        steps: Vec::new(),
        bound_ms,
    };
    for (i, &rate) in rates.iter().enumerate() {
        if i > 0 {
            // Let the relay let go of the last step's receivers.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let mut c = cfg.clone();
        c.fps = rate;
        eprintln!(
            "\n== receivers-sweep against {}: {} receivers at {rate} Hz ({}/{})",
            cfg.label,
            cfg.receivers,
            i + 1,
            rates.len()
        );
        let mut s = run::run(&c).await;
        if let Some(p) = relay.as_deref_mut() {
            s.relay_exit = p.exit_status();
        }
        let (pass, why) = judge(&s, bound_ms);
        eprintln!(
            "loadtest: {} Hz against {}: {} (delivered {:.3}%, p99 {:.1} ms, relay cpu {}%, driver cpu {}%){}",
            rate,
            cfg.label,
            if pass { "pass" } else { "FAIL" },
            s.delivered_fraction * 100.0,
            s.lat_ms[2],
            opt(s.relay_cpu_pct, 0),
            opt(s.driver_cpu_pct, 0),
            if pass { String::new() } else { format!(": {why}") }
        );
        let exited = s.relay_exit.is_some();
        sw.steps.push(Step { rate, s, pass, why });
        if exited || (!pass && !all) {
            break;
        }
    }
    sw
}

/// The text report of one sweep.
fn text(sw: &Sweep, cfg: &RunCfg) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "== receivers-sweep against {}: {} receivers on {} channel(s), {}×{} RGBA ({} B/msg), {} s per rate, pass = every frame intact at every receiver and p99 < {} ms\n",
        sw.label,
        cfg.receivers,
        cfg.channels,
        cfg.width,
        cfg.height,
        cfg.msg_bytes(),
        cfg.duration,
        sw.bound_ms
    );
    let _ = writeln!(
        o,
        "| rate Hz | sent fps | connected | delivered % | p50 ms | p99 ms | max ms | relay CPU % | relay peak RSS MB | driver CPU % | others CPU % | result |"
    );
    let _ = writeln!(
        o,
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    );
    for st in &sw.steps {
        let s = &st.s;
        let _ = writeln!(
            o,
            "| {} | {:.1} | {} | {:.3} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {} | {} |",
            st.rate,
            s.fps_achieved,
            s.receivers_connected,
            s.delivered_fraction * 100.0,
            s.lat_ms[0],
            s.lat_ms[2],
            s.lat_ms[4],
            opt(s.relay_cpu_pct, 1),
            opt(s.relay_hwm_mb.or(s.relay_rss_peak_mb), 1),
            opt(s.driver_cpu_pct, 0),
            opt(s.others_cpu_pct, 0),
            if st.pass {
                "pass".to_string()
            } else {
                format!("FAIL: {}", st.why)
            }
        );
    }
    let top = sw.steps.len() == sw.steps.iter().filter(|s| s.pass).count();
    let _ = writeln!(
        o,
        "\ncapacity      {} (highest rate with it and every rate below it passing{})",
        sw.capacity()
            .map_or("none: no rate passed".into(), |c| format!("{c} Hz")),
        if top && !sw.steps.is_empty() {
            "; every rate tried passed, so the capacity is at least this: add higher --rates"
        } else {
            ""
        }
    );
    o
}

fn json_of(sw: &Sweep, require: f64) -> Value {
    json!({
        "relay": sw.label,
        "p99_bound_ms": sw.bound_ms,
        "capacity_hz": sw.capacity(),
        "failures": sw.verdict(require).failures(),
        "verdict": sw.verdict(require).json(),
        "steps": sw.steps.iter().map(|st| {
            let mut j = report::json(&st.s);
            j["rate_hz"] = json!(st.rate);
            j["pass"] = json!(st.pass);
            j["why"] = json!(st.why);
            j
        }).collect::<Vec<_>>(),
    })
}

/// p99 and delivered % against the rate, one line per sweep (named `name`).
fn lines(sweeps: &[(String, &Sweep)]) -> (Vec<charts::Line>, Vec<charts::Line>) {
    let p99 = sweeps
        .iter()
        .map(|(n, sw)| {
            (
                n.clone(),
                sw.steps
                    .iter()
                    .map(|st| (st.rate, st.s.lat_ms[2]))
                    .collect(),
            )
        })
        .collect();
    let del = sweeps
        .iter()
        .map(|(n, sw)| {
            (
                n.clone(),
                sw.steps
                    .iter()
                    .map(|st| (st.rate, st.s.delivered_fraction * 100.0))
                    .collect(),
            )
        })
        .collect();
    (p99, del)
}

/// Each step's charts in `dir`, named `BASE-RATEhz-…`.
fn step_charts(dir: &Path, base: &str, sw: &Sweep) {
    for st in &sw.steps {
        charts::for_run(dir, &format!("{base}-{}hz", st.rate), &st.s);
    }
}

fn require_of(opts: &Opts) -> f64 {
    opts.require_hz
        .unwrap_or_else(|| opts.rates.first().copied().unwrap_or(0.0))
}

/// `loadtest receivers-sweep`: one sweep against the relay under test.
pub async fn single(opts: &Opts, nofile: u64) -> i32 {
    let mut cfg = opts.run_cfg(Scenario::ReceiversSweep, nofile);
    let per_ch = cfg.receivers.div_ceil(cfg.channels);
    let stamp = report::stamp();
    let Some(mut relay) = opts.target.under_test(per_ch, &stamp, &[]) else {
        return 2;
    };
    cfg.url = relay.url.clone();
    cfg.relay_pids = relay.pid.into_iter().collect();
    let sw = sweep(
        &cfg,
        &opts.rates,
        opts.max_p99_ms,
        opts.sweep_all,
        relay.proc.as_mut(),
    )
    .await;
    let _ = relay.finish();
    let t = text(&sw, &cfg);
    println!("{t}");
    let out = &opts.target.out;
    let base = format!("receivers-sweep-{}-{stamp}", sw.label);
    let require = require_of(opts);
    report::write_pair(out, &base, &t, &json_of(&sw, require));
    step_charts(out, &base, &sw);
    let (p, d) = lines(&[(sw.label.clone(), &sw)]);
    charts::sweep(
        &out.join(format!("{base}.svg")),
        &format!(
            "receivers-sweep against {}: {} receivers",
            sw.label, cfg.receivers
        ),
        &p,
        &d,
        sw.bound_ms,
    );
    verdict(&sw, require)
}

/// Says on stderr whether the sweep passed (and each failed check): its exit code.
fn verdict(sw: &Sweep, require: f64) -> i32 {
    let v = sw.verdict(require);
    let cap = sw.capacity().map_or("none".into(), |c| format!("{c} Hz"));
    eprintln!(
        "{}",
        v.stderr(
            &format!("receivers-sweep against {}", sw.label),
            &format!("capacity {cap} (p99 bound {} ms)", sw.bound_ms)
        )
    );
    v.exit_code()
}

/// `compare --scenario receivers-sweep`'s state: where its files go and
/// what its sweeps gave.
struct SweepCompare<'a> {
    opts: &'a Opts,
    paths: relays::Paths,
    cfg: RunCfg,
    per_ch: usize,
    dir: std::path::PathBuf,
    rounds: usize,
    /// (relay, round from 1, its sweep).
    done: Vec<(RelayKind, usize, Sweep)>,
    /// Every sweep's checks, under `receivers-sweep against RELAY, round R/N`.
    verdict: Verdict,
}

impl SweepCompare<'_> {
    /// One whole sweep of `kind` against a fresh relay in `round` (0-based).
    async fn one(&mut self, kind: RelayKind, round: usize) {
        let at = format!(
            "receivers-sweep against {}, round {}/{}",
            kind.label(),
            round + 1,
            self.rounds
        );
        let tag = format!("receivers-sweep-r{}", round + 1);
        let cpu = self.opts.target.relay_cpu();
        let mut p = match relays::spawn(kind, &self.paths, cpu, self.per_ch, &self.dir, &tag, &[]) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("loadtest: {e}");
                self.verdict
                    .check(at, false, format!("could not start: {e}"), "starts");
                return;
            }
        };
        self.cfg.url = p.url.clone();
        self.cfg.relay_pids = vec![p.pid];
        self.cfg.label = kind.label().into();
        let o = self.opts;
        let sw = sweep(&self.cfg, &o.rates, o.max_p99_ms, o.sweep_all, Some(&mut p)).await;
        p.stop();
        drop(p);
        let t = text(&sw, &self.cfg);
        eprintln!("{t}");
        let base = format!("{}-{tag}", kind.label());
        let _ = std::fs::write(self.dir.join(format!("{base}.txt")), &t);
        step_charts(&self.dir, &base, &sw);
        self.verdict.absorb(&at, sw.verdict(require_of(o)));
        self.done.push((kind, round + 1, sw));
    }

    /// Writes the table, `results.json` and the sweep chart.
    fn write(&self, md: &str) {
        let (dir, o) = (&self.dir, self.opts);
        let _ = std::fs::write(dir.join("table.md"), md);
        let _ = std::fs::write(o.target.out.join("compare-receivers-sweep-latest.md"), md);
        let runs: Vec<Value> = self
            .done
            .iter()
            .map(|(_, r, sw)| {
                let mut j = json_of(sw, require_of(o));
                j["round"] = json!(r);
                j
            })
            .collect();
        let all =
            json!({"scenario": "receivers-sweep", "runs": runs, "verdict": self.verdict.json()});
        let _ = std::fs::write(
            dir.join("results.json"),
            serde_json::to_string_pretty(&all).unwrap_or_default(),
        );
        let named: Vec<(String, &Sweep)> = self
            .done
            .iter()
            .map(|(k, r, sw)| (format!("{} r{r}", k.label()), sw))
            .collect();
        let (p, d) = lines(&named);
        let title = format!(
            "receivers-sweep: {} receivers, every relay and round",
            self.cfg.receivers
        );
        charts::sweep(&dir.join("sweep.svg"), &title, &p, &d, o.max_p99_ms);
        eprintln!("loadtest: wrote {}", dir.join("table.md").display());
    }
}

/// `loadtest compare --scenario receivers-sweep`: a whole sweep against a
/// fresh relay per relay and round, the starting relay rotating each round.
pub async fn compare(rounds: usize, kinds: &[RelayKind], opts: &Opts, nofile: u64) -> i32 {
    let paths = opts.target.paths();
    let avail = report::available(kinds, &paths);
    if avail.is_empty() {
        eprintln!("loadtest: no relay to compare");
        return 2;
    }
    let cfg = opts.run_cfg(Scenario::ReceiversSweep, nofile);
    let dir = opts
        .target
        .out
        .join(format!("compare-receivers-sweep-{}", report::stamp()));
    let _ = std::fs::create_dir_all(&dir);
    let rounds = rounds.max(1);
    let mut c = SweepCompare {
        opts,
        paths,
        per_ch: cfg.receivers.div_ceil(cfg.channels),
        cfg,
        dir,
        rounds,
        done: Vec::new(),
        verdict: Verdict::new(),
    };
    for round in 0..rounds {
        for i in 0..avail.len() {
            c.one(avail[(i + round) % avail.len()], round).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let md = table(&c.cfg, opts, &avail, &c.done, rounds, &c.verdict.failures());
    println!("\n{md}");
    c.write(&md);
    let detail = format!("{} sweep(s) of {} relay(s)", c.done.len(), avail.len());
    eprintln!("{}", c.verdict.stderr("compare receivers-sweep", &detail));
    c.verdict.exit_code()
}

/// One cell of the compare table: `rate`'s p99, ✓ if it passed, ✗ with
/// the delivery if a frame was lost or a receiver closed; `-` if not run.
fn rate_cell(sw: &Sweep, rate: f64) -> String {
    match sw.steps.iter().find(|s| s.rate == rate) {
        None => "-".into(),
        Some(st) if st.pass => format!("✓ {:.0}", st.s.lat_ms[2]),
        Some(st) if !st.s.verdict().passed() => format!(
            "✗ {:.0} ({:.2}% delivered{})",
            st.s.lat_ms[2],
            st.s.delivered_fraction * 100.0,
            if st.s.ended_early() > 0 {
                format!(", {} closed", st.s.ended_early())
            } else {
                String::new()
            }
        ),
        Some(st) => format!("✗ {:.0}", st.s.lat_ms[2]),
    }
}

/// Per relay: the median capacity over the rounds, and each round's.
fn capacity_table(o: &mut String, kinds: &[RelayKind], done: &[(RelayKind, usize, Sweep)]) {
    let _ = writeln!(
        o,
        "\n| relay | capacity Hz, median of the rounds | per round |"
    );
    let _ = writeln!(o, "|---|---:|---|");
    for k in kinds {
        let caps: Vec<f64> = done
            .iter()
            .filter(|d| d.0 == *k)
            .map(|d| d.2.capacity().unwrap_or(0.0))
            .collect();
        if caps.is_empty() {
            continue;
        }
        let per_round: Vec<String> = caps.iter().map(|c| c.to_string()).collect();
        let med = report::median(caps);
        let _ = writeln!(o, "| {} | {med} | {} |", k.label(), per_round.join(", "));
    }
}

/// The compare table: per relay and round, each rate's p99 (✓ pass, ✗ fail) and the capacity.
fn table(
    cfg: &RunCfg,
    opts: &Opts,
    kinds: &[RelayKind],
    done: &[(RelayKind, usize, Sweep)],
    rounds: usize,
    failures: &[String],
) -> String {
    let mut o = String::new();
    let (date, time) = report::utc_now();
    let _ = writeln!(
        o,
        "### `receivers-sweep`: {} receivers, {}×{} RGBA ({} B/msg), {} s per rate, pass = every frame intact at every receiver and p99 < {} ms, {} rounds ({date} {time} UTC, relay pinned to CPU 0, driver to CPU 1; {})\n",
        cfg.receivers,
        cfg.width,
        cfg.height,
        cfg.msg_bytes(),
        cfg.duration,
        opts.max_p99_ms,
        rounds,
        crate::copies::describe()
    );
    let rates = &opts.rates;
    let _ = writeln!(
        o,
        "| relay | round | {} | capacity Hz |",
        rates
            .iter()
            .map(|r| format!("{r} Hz p99 ms"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let _ = writeln!(o, "|---|---:|{}---:|", "---:|".repeat(rates.len()));
    for (k, r, sw) in done {
        let cells: Vec<String> = rates.iter().map(|&rate| rate_cell(sw, rate)).collect();
        let _ = writeln!(
            o,
            "| {} | {r} | {} | {} |",
            k.label(),
            cells.join(" | "),
            match sw.capacity() {
                None => "none".into(),
                // Every rate tried passed: the capacity is at least the top one.
                Some(c) if sw.steps.iter().all(|s| s.pass) => format!("≥ {c}"),
                Some(c) => c.to_string(),
            }
        );
    }
    capacity_table(&mut o, kinds, done);
    let _ = writeln!(
        o,
        "\nCharts: `sweep.svg` (p99 and delivery against the rate, one line per relay and round), `RELAY-receivers-sweep-rN-RATEhz-timeline.svg` and `-latency-cdf.svg` per rate."
    );
    if !failures.is_empty() {
        let _ = writeln!(o, "\n**Failed**:\n");
        for f in failures {
            let _ = writeln!(o, "- {}", f.trim_start_matches("loadtest: "));
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run at `rate` Hz: every frame delivered, p99 `p99` ms; `edit` spoils it.
    fn step(rate: f64, p99: f64, edit: impl FnOnce(&mut Summary)) -> Step {
        let mut s = Summary {
            frames_sent: 50,
            lat_ms: [p99 / 2.0, p99, p99, p99, p99],
            ..Summary::default()
        };
        edit(&mut s);
        let (pass, why) = judge(&s, 200.0);
        Step { rate, s, pass, why }
    }

    fn sweep_of(steps: Vec<Step>) -> Sweep {
        Sweep {
            label: "relay".into(),
            steps,
            bound_ms: 200.0,
        }
    }

    #[test]
    fn the_capacity_is_the_last_rate_of_the_passing_run_from_the_bottom() {
        let sw = sweep_of(vec![
            step(5.0, 40.0, |_| {}),
            step(10.0, 199.9, |_| {}),
            step(20.0, 200.0, |_| {}), // the bound itself fails
            step(40.0, 50.0, |_| {}),  // a pass after a failure does not count
        ]);
        assert_eq!(
            sw.steps.iter().map(|s| s.pass).collect::<Vec<_>>(),
            [true, true, false, true]
        );
        assert_eq!(sw.capacity(), Some(10.0));
        assert!(sw.verdict(5.0).passed());
        assert_eq!(
            sw.verdict(20.0).failures(),
            ["FAIL capacity: 10 Hz below the required 20 Hz"]
        );
    }

    #[test]
    fn a_lost_frame_or_a_closed_receiver_ends_the_sweep_but_is_no_defect() {
        let sw = sweep_of(vec![
            step(5.0, 40.0, |_| {}),
            step(10.0, 40.0, |s| s.missing = 3),
            step(20.0, 40.0, |s| {
                s.receivers_ended
                    .insert("closed by relay with 3008".into(), 2);
            }),
        ]);
        assert_eq!(sw.capacity(), Some(5.0));
        assert!(!sw.steps[1].pass && !sw.steps[2].pass);
        assert!(sw.steps[1].why.contains("missing 3"), "{}", sw.steps[1].why);
        assert!(sw.verdict(5.0).passed());
    }

    #[test]
    fn damage_at_any_rate_fails_the_sweep() {
        for (edit, line) in [
            (
                (|s: &mut Summary| s.duplicate = 1) as fn(&mut Summary),
                "FAIL 20 Hz: duplicate 1, out-of-order 0, corrupt 0",
            ),
            (
                |s| s.out_of_order = 2,
                "FAIL 20 Hz: duplicate 0, out-of-order 2, corrupt 0",
            ),
            (
                |s| s.corrupted = 3,
                "FAIL 20 Hz: duplicate 0, out-of-order 0, corrupt 3",
            ),
            (
                |s| s.relay_exit = Some("signal 11".into()),
                "FAIL 20 Hz: relay exited: signal 11",
            ),
        ] {
            let sw = sweep_of(vec![step(5.0, 40.0, |_| {}), step(20.0, 40.0, edit)]);
            assert_eq!(sw.capacity(), Some(5.0));
            assert_eq!(sw.verdict(5.0).failures(), [line]);
        }
    }

    #[test]
    fn no_passing_rate_fails_the_sweep() {
        let sw = sweep_of(vec![step(5.0, 250.0, |_| {})]);
        assert_eq!(sw.capacity(), None);
        assert_eq!(
            sw.verdict(5.0).failures(),
            ["FAIL capacity: no rate passed (first: p99 250.0 ms, not under 200 ms)"]
        );
        assert_eq!(sweep_of(vec![]).verdict(5.0).failures().len(), 1);
    }
}
