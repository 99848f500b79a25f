//! Reports: text and JSON for one run, the `compare` loop and its table.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::charts;
use crate::noise::Noise;
use crate::relays::{self, RelayKind};
use crate::run::{self, Group, Summary};
use crate::verdict::Verdict;
use crate::{Opts, Scenario};

/// UTC `YYYYMMDD-HHMMSS` now.
pub fn stamp() -> String {
    let (d, t) = utc_now();
    format!("{}-{}", d.replace('-', ""), t.replace(':', ""))
}

/// (YYYY-MM-DD, HH:MM:SS) in UTC.
pub fn utc_now() -> (String, String) {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        format!("{year:04}-{month:02}-{day:02}"),
        format!("{:02}:{:02}:{:02}", rem / 3600, rem / 60 % 60, rem % 60),
    )
}

/// `v` with `prec` decimals, or `-`.
pub fn opt(v: Option<f64>, prec: usize) -> String {
    v.map_or("-".into(), |x| format!("{x:.prec$}"))
}

/// KiB as MB.
pub fn mb(kib: Option<u64>) -> Option<f64> {
    kib.map(|k| k as f64 / 1024.0)
}

/// Writes `BASE.json` and `BASE.txt` in `out` and says so on stderr.
pub fn write_pair(out: &Path, base: &str, text: &str, json: &Value) {
    let j = out.join(format!("{base}.json"));
    match std::fs::create_dir_all(out)
        .and_then(|_| std::fs::write(&j, serde_json::to_string_pretty(json).unwrap_or_default()))
        .and_then(|_| std::fs::write(out.join(format!("{base}.txt")), text))
    {
        Ok(()) => eprintln!("loadtest: wrote {} and .txt", j.display()),
        Err(e) => eprintln!("loadtest: cannot write results: {e}"),
    }
}

/// The stderr lines that say whether a run kept every frame intact, once
/// and in order, with the count of each kind of failure either way: the
/// run's [`Verdict`] under `SCENARIO against RELAY (URL)[, round R/N]`.
pub fn verdict(s: &Summary, round: Option<(usize, usize)>) -> String {
    s.verdict().stderr(&run_subject(s, round), &s.integrity())
}

/// `SCENARIO against RELAY (URL)[, round R/N]`.
fn run_subject(s: &Summary, round: Option<(usize, usize)>) -> String {
    format!(
        "{} against {} ({}){}",
        s.scenario,
        s.label,
        s.url,
        round.map_or(String::new(), |(r, n)| format!(", round {r}/{n}"))
    )
}

/// One receiver group's JSON.
fn group_json(g: &Group) -> Value {
    json!({
        "name": g.name,
        "node": g.node.map(|n| n + 1),
        "gaps_allowed": g.gaps,
        "receivers": g.receivers,
        "read_limit_MBps": g.read_limit_mbps,
        "expected_frames": g.expected,
        "delivered_frames": g.delivered,
        "delivered_fraction": g.fraction,
        "per_receiver_fraction": {"min": g.per_rx_fraction[0], "median": g.per_rx_fraction[1], "max": g.per_rx_fraction[2]},
        "missing": g.counts.missing,
        "skipped_allowed": g.skipped,
        "jumps": g.counts.jumps,
        "duplicate": g.counts.duplicate,
        "out_of_order": g.counts.out_of_order,
        "corrupted": g.counts.corrupt,
        "receivers_with_last_frame": g.reached_last,
        "delivered_MBps": g.mbps,
        "latency_ms": {"p50": g.lat_ms[0], "p90": g.lat_ms[1], "p99": g.lat_ms[2], "p99_9": g.lat_ms[3], "max": g.lat_ms[4], "samples": g.lat_count},
        "ended_early": g.closed,
        "passed": g.expect().passes(&g.counts) && g.closed.is_empty(),
    })
}

/// One line per receiver group (when there is more than one).
fn group_lines(o: &mut String, s: &Summary) {
    if s.groups.len() < 2 {
        return;
    }
    for g in &s.groups {
        let _ = writeln!(
            o,
            "group {:<7} {} receivers, read {}, {}: delivered {}/{} = {:.2}% (per receiver min {:.1}%, max {:.1}%), {} got the last frame; {}; {:.1} MB/s; latency ms p50 {:.2} p99 {:.2} max {:.2}; ended early: {}",
            g.name,
            g.receivers,
            g.read_limit_mbps
                .map_or("at full speed".into(), |m| format!("at most {m:.1} MB/s")),
            if g.gaps { "gaps allowed" } else { "every frame expected" },
            g.delivered,
            g.expected,
            g.fraction * 100.0,
            g.per_rx_fraction[0] * 100.0,
            g.per_rx_fraction[2] * 100.0,
            g.reached_last,
            if g.gaps {
                format!(
                    "skipped {} in {} jumps (allowed), duplicate {}, out-of-order {}, corrupt {}",
                    g.skipped, g.counts.jumps, g.counts.duplicate, g.counts.out_of_order, g.counts.corrupt
                )
            } else {
                g.counts.defects()
            },
            g.mbps,
            g.lat_ms[0],
            g.lat_ms[2],
            g.lat_ms[4],
            closed_text(&g.closed),
        );
    }
}

/// `none`, or `closed by relay with 3008 ×4, ...`.
pub fn closed_text(m: &BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        return "none".into();
    }
    m.iter()
        .map(|(k, n)| format!("{k} ×{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The delivery totals of one run's JSON.
fn delivery_json(s: &Summary) -> Value {
    json!({
        "expected_frames": s.expected_frames,
        "delivered_frames": s.delivered_frames,
        "delivered_fraction": s.delivered_fraction,
        "per_receiver_fraction_min": s.per_rx_fraction[0],
        "per_receiver_fraction_median": s.per_rx_fraction[1],
        "receivers_with_every_frame": s.receivers_all_frames,
        "missing_frames": s.missing,
        "duplicate": s.duplicate,
        "out_of_order": s.out_of_order,
        "corrupted": s.corrupted,
        "payloads_hashed": s.checked,
        "non_test_messages": s.foreign,
        "receivers_ended_early": s.receivers_ended,
        "skipped_by_slow_receivers": s.skipped,
        "group_failures": s.group_failures,
    })
}

/// The relay process figures of one run's JSON.
fn relay_json(s: &Summary) -> Value {
    json!({
        "cpu_percent_of_one_core": s.relay_cpu_pct,
        "peak_rss_MB_vmhwm": s.relay_hwm_mb,
        "peak_rss_MB_sampled": s.relay_rss_peak_mb,
        "idle_rss_MB": s.relay_idle_rss_mb,
        "connected_rss_MB": s.relay_connected_rss_mb,
        "rss_per_connection_KiB": s.rss_per_conn_kib,
        "rss_per_connection_KiB_at_peak": s.rss_per_conn_peak_kib,
        "exit": s.relay_exit,
    })
}

/// The JSON result of one run.
pub fn json(s: &Summary) -> Value {
    json!({
        "scenario": s.scenario,
        "relay": s.label,
        "url": s.url,
        "config": {
            "receivers": s.receivers_target,
            "channels": s.channels,
            "width": s.width,
            "height": s.height,
            "fps": if s.fps_target > 0.0 { json!(s.fps_target) } else { json!("max") },
            "message_bytes": s.msg_bytes,
            "hash_every_nth_frame": s.check_every,
            "client": s.client,
        },
        "connect": {
            "receivers_connected": s.receivers_connected,
            "failures": s.connect_failures,
            "first_error": s.connect_error,
            "seconds": s.connect_secs,
            "listen_overflows_while_connecting": s.listen_overflows,
        },
        "source": {
            "frames_sent": s.frames_sent,
            "window_s": s.window_s,
            "fps_achieved": s.fps_achieved,
            "pacing_late_ms": {"p50": s.pacing_late_ms[0], "p99": s.pacing_late_ms[1], "max": s.pacing_late_ms[2]},
            "error": s.source_error,
        },
        "offered_MBps": {"per_receiver": s.offered_mbps_per_rx, "aggregate": s.offered_mbps_agg},
        "delivered_MBps": {
            "aggregate": s.delivered_mbps_agg,
            "aggregate_GBps": s.delivered_mbps_agg / 1000.0,
            "per_receiver_min": s.per_rx_mbps[0],
            "per_receiver_median": s.per_rx_mbps[1],
            "per_receiver_max": s.per_rx_mbps[2],
        },
        "delivery": delivery_json(s),
        "groups": s.groups.iter().map(group_json).collect::<Vec<_>>(),
        "timeline": s.timeline.iter().map(|k| json!({
            "t": k.t, "fps": k.fps, "delivered_MBps": k.mbps, "p50_ms": k.p50_ms, "p99_ms": k.p99_ms,
            "relay_cpu": k.relay_cpu, "rss_MB": k.rss_mb,
            "groups": k.groups.iter().map(|(m, p)| json!({"delivered_MBps": m, "p99_ms": p})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "latency_ms": {
            "p50": s.lat_ms[0], "p90": s.lat_ms[1], "p99": s.lat_ms[2], "p99_9": s.lat_ms[3],
            "max": s.lat_ms[4], "mean": s.lat_mean_ms, "samples": s.lat_count,
        },
        "relay_process": relay_json(s),
        "relay_processes": s.relay_processes,
        "watched_processes": s.watched.iter().map(|w| json!({
            "name": w.name, "cpu_percent_of_one_core": w.cpu_pct, "peak_rss_MB_sampled": w.rss_peak_mb,
        })).collect::<Vec<_>>(),
        "driver_cpu_percent_of_one_core": s.driver_cpu_pct,
        "other_processes_cpu_percent_of_one_core": s.others_cpu_pct,
        "integrity": {"failed": !s.verdict().passed(), "summary": s.integrity()},
        "verdict": s.verdict().json(),
        "notes": s.notes,
    })
}

/// The run's frames, receivers and source lines.
fn setup_lines(o: &mut String, s: &Summary) {
    let _ = writeln!(o, "== {} against {} ({})", s.scenario, s.label, s.url);
    let _ = writeln!(
        o,
        "frames        {}x{} RGBA Pixels+KEYFRAME, {} B per message, {} channel(s), target {}",
        s.width,
        s.height,
        s.msg_bytes,
        s.channels,
        if s.fps_target > 0.0 {
            format!("{} fps", s.fps_target)
        } else {
            "as fast as accepted".into()
        }
    );
    let _ = writeln!(
        o,
        "receivers     {}/{} connected in {:.1} s ({} listen-queue overflows, system-wide){}",
        s.receivers_connected,
        s.receivers_target,
        s.connect_secs,
        s.listen_overflows,
        s.connect_error.as_ref().map_or(String::new(), |e| format!(
            " ({} failed; first: {e})",
            s.connect_failures
        ))
    );
    let _ = writeln!(
        o,
        "source        {} frames in {:.2} s = {:.1} fps per channel ({}){}",
        s.frames_sent,
        s.window_s,
        s.fps_achieved,
        if s.fps_target > 0.0 {
            format!(
                "pacing lateness p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
                s.pacing_late_ms[0], s.pacing_late_ms[1], s.pacing_late_ms[2]
            )
        } else {
            "unpaced: each send awaited".into()
        },
        s.source_error
            .as_ref()
            .map_or(String::new(), |e| format!("; ERROR {e}"))
    );
}

/// What was offered and delivered, and every error.
fn delivery_lines(o: &mut String, s: &Summary) {
    let _ = writeln!(
        o,
        "offered       {:.1} MB/s per receiver, {:.1} MB/s aggregate",
        s.offered_mbps_per_rx, s.offered_mbps_agg
    );
    let _ = writeln!(
        o,
        "delivered     {:.1} MB/s aggregate ({:.3} GB/s); per receiver min {:.1} / median {:.1} / max {:.1} MB/s",
        s.delivered_mbps_agg,
        s.delivered_mbps_agg / 1000.0,
        s.per_rx_mbps[0],
        s.per_rx_mbps[1],
        s.per_rx_mbps[2]
    );
    let _ = writeln!(
        o,
        "delivery      {}/{} frames intact = {:.4}% (per receiver min {:.2}%, median {:.2}%); {} of {} receivers got every frame",
        s.delivered_frames,
        s.expected_frames,
        s.delivered_fraction * 100.0,
        s.per_rx_fraction[0] * 100.0,
        s.per_rx_fraction[1] * 100.0,
        s.receivers_all_frames,
        s.receivers_connected
    );
    let _ = writeln!(
        o,
        "errors        missing {}  duplicate {}  out-of-order {}  corrupted {}  (payloads hashed: {}; other messages: {})",
        s.missing, s.duplicate, s.out_of_order, s.corrupted, s.checked, s.foreign
    );
    if !s.receivers_ended.is_empty() {
        let _ = writeln!(o, "ended early   {:?}", s.receivers_ended);
    }
}

/// The relay's and the other processes' CPU and memory, and the notes.
fn process_lines(o: &mut String, s: &Summary) {
    let _ = writeln!(
        o,
        "relay         CPU {}% of one core; peak RSS {} MB (VmHWM), {} MB sampled; idle {} MB, connected {} MB{}",
        opt(s.relay_cpu_pct, 1),
        opt(s.relay_hwm_mb, 1),
        opt(s.relay_rss_peak_mb, 1),
        opt(s.relay_idle_rss_mb, 1),
        opt(s.relay_connected_rss_mb, 1),
        if s.relay_processes > 1 {
            format!(
                " (all {} relay processes added up; VmHWM: the sum of their peaks)",
                s.relay_processes
            )
        } else {
            String::new()
        }
    );
    for w in &s.watched {
        let _ = writeln!(
            o,
            "process       {}: CPU {}% of one core, peak RSS {} MB (sampled)",
            w.name,
            opt(w.cpu_pct, 1),
            opt(w.rss_peak_mb, 1)
        );
    }
    if s.rss_per_conn_kib.is_some() && s.scenario == "receivers" {
        let _ = writeln!(
            o,
            "rss/conn      {} KiB after connecting, {} KiB at peak (relay RSS over idle / receivers)",
            opt(s.rss_per_conn_kib, 2),
            opt(s.rss_per_conn_peak_kib, 2)
        );
    }
    let _ = writeln!(
        o,
        "driver        CPU {}% of one core (source thread + receivers; near 100% means the driver may be the limit)",
        opt(s.driver_cpu_pct, 1)
    );
    if let Some(c) = s.others_cpu_pct {
        let _ = writeln!(
            o,
            "others        CPU {c:.1}% of one core: every other process of the machine over the window{}",
            if c > 10.0 {
                " (the cores are shared: the figures above are suspect)"
            } else {
                ""
            }
        );
    }
    if let Some(e) = &s.relay_exit {
        let _ = writeln!(o, "relay EXITED  {e}");
    }
    for n in &s.notes {
        let _ = writeln!(o, "note          {n}");
    }
}

/// The human-readable report of one run.
pub fn text(s: &Summary) -> String {
    let mut o = String::new();
    setup_lines(&mut o, s);
    delivery_lines(&mut o, s);
    group_lines(&mut o, s);
    let _ = writeln!(
        o,
        "latency ms    p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  (mean {:.2}, {} samples; send→last byte read)",
        s.lat_ms[0], s.lat_ms[1], s.lat_ms[2], s.lat_ms[3], s.lat_ms[4], s.lat_mean_ms, s.lat_count
    );
    process_lines(&mut o, s);
    o.push_str(&s.verdict().result_text(if s.groups.iter().any(|g| g.gaps) {
        "every frame intact, once and in order, at every full-speed receiver; slow receivers got intact frames in increasing order (gaps allowed), none closed"
    } else {
        "every frame intact, once and in order, at every receiver"
    }));
    o
}

/// The median of `v` (NaN when empty).
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

struct Row {
    label: String,
    runs: usize,
    delivered: f64,
    mbps: f64,
    per_rx: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    cpu: f64,
    driver_cpu: f64,
    /// Per run, the other processes' CPU %, as `a, b, c`.
    others: String,
    rss: f64,
    rss_conn: f64,
    connected: f64,
}

impl Row {
    fn of(label: &str, v: &[Summary]) -> Row {
        let m = |f: &dyn Fn(&Summary) -> f64| median(v.iter().map(f).collect());
        Row {
            label: label.into(),
            runs: v.len(),
            delivered: m(&|s| s.delivered_fraction),
            mbps: m(&|s| s.delivered_mbps_agg),
            per_rx: m(&|s| s.per_rx_mbps[1]),
            p50: m(&|s| s.lat_ms[0]),
            p99: m(&|s| s.lat_ms[2]),
            p999: m(&|s| s.lat_ms[3]),
            cpu: m(&|s| s.relay_cpu_pct.unwrap_or(f64::NAN)),
            driver_cpu: m(&|s| s.driver_cpu_pct.unwrap_or(f64::NAN)),
            others: v
                .iter()
                .map(|s| opt(s.others_cpu_pct, 0))
                .collect::<Vec<_>>()
                .join(", "),
            rss: m(&|s| s.relay_hwm_mb.or(s.relay_rss_peak_mb).unwrap_or(f64::NAN)),
            rss_conn: m(&|s| s.rss_per_conn_kib.unwrap_or(f64::NAN)),
            connected: m(&|s| s.receivers_connected as f64),
        }
    }
    fn per_core(&self) -> f64 {
        self.mbps / (self.cpu / 100.0)
    }
}

fn ratio(a: f64, b: f64) -> String {
    if a.is_finite() && b.is_finite() && b != 0.0 {
        format!("{:.2}×", a / b)
    } else {
        "-".into()
    }
}

/// The Markdown table of medians, with ratios vs the uWS peer and the baseline.
fn table(scenario: Scenario, cfg: &run::RunCfg, rows: &[Row], rounds: usize) -> String {
    let mut o = String::new();
    let (date, time) = utc_now();
    let _ = writeln!(
        o,
        "### `{}`: {} receivers, {} channel(s), {}×{} RGBA ({} B/msg), {}, {} s × {} rounds ({date} {time} UTC, 2 cores: relay pinned to CPU 0, driver to CPU 1; {})\n",
        scenario.name(),
        cfg.receivers,
        cfg.channels,
        cfg.width,
        cfg.height,
        cfg.msg_bytes(),
        cfg.rate(),
        cfg.duration,
        rounds,
        crate::copies::describe()
    );
    let recv = scenario == Scenario::Receivers;
    let _ = writeln!(
        o,
        "| relay | runs | delivered | aggregate MB/s | per-receiver MB/s | p50 ms | p99 ms | p99.9 ms | relay CPU % | MB/s per core | peak RSS MB | driver CPU % | others CPU % |{}",
        if recv { " connected | RSS/conn KiB |" } else { "" }
    );
    let _ = writeln!(
        o,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|{}",
        if recv { "---:|---:|" } else { "" }
    );
    for r in rows {
        let _ = writeln!(
            o,
            "| {} | {} | {:.3}% | {:.1} | {:.1} | {:.2} | {:.2} | {:.2} | {:.1} | {:.0} | {:.1} | {:.0} | {} |{}",
            r.label,
            r.runs,
            r.delivered * 100.0,
            r.mbps,
            r.per_rx,
            r.p50,
            r.p99,
            r.p999,
            r.cpu,
            r.per_core(),
            r.rss,
            r.driver_cpu,
            r.others,
            if recv {
                format!(" {:.0} | {:.2} |", r.connected, r.rss_conn)
            } else {
                String::new()
            }
        );
    }
    ratio_table(&mut o, rows);
    o
}

/// Each row ÷ the uWS peer and the baseline (when they ran).
fn ratio_table(o: &mut String, rows: &[Row]) {
    let find = |l: &str| rows.iter().find(|r| r.label == l);
    let refs: Vec<&Row> = [RelayKind::Bun.label(), RelayKind::Baseline.label()]
        .iter()
        .filter_map(|l| find(l))
        .collect();
    if !refs.is_empty() {
        let _ = writeln!(
            o,
            "\nRatios (row ÷ reference; MB/s and MB/s per core: higher is better; CPU, latency, RSS: lower is better):\n"
        );
        let _ = writeln!(
            o,
            "| relay | vs | aggregate MB/s | relay CPU % | MB/s per core | p50 | p99 | peak RSS |"
        );
        let _ = writeln!(o, "|---|---|---:|---:|---:|---:|---:|---:|");
        for r in rows {
            for b in &refs {
                if b.label == r.label {
                    continue;
                }
                let _ = writeln!(
                    o,
                    "| {} | {} | {} | {} | {} | {} | {} | {} |",
                    r.label,
                    b.label,
                    ratio(r.mbps, b.mbps),
                    ratio(r.cpu, b.cpu),
                    ratio(r.per_core(), b.per_core()),
                    ratio(r.p50, b.p50),
                    ratio(r.p99, b.p99),
                    ratio(r.rss, b.rss)
                );
            }
        }
    }
}

/// Per relay and receiver group, medians over the runs (scenarios with a
/// slow group, e.g. `bigframes`): delivery, latency, how receivers ended,
/// the relay's peak RSS, and the runs that failed.
pub fn group_table(kinds: &[&str], results: &BTreeMap<&'static str, Vec<Summary>>) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "| relay | group | runs | receivers | read limit MB/s | frames delivered % | min per receiver % | got last frame | p50 ms | p99 ms | receivers closed (code × count, all runs) | relay peak RSS MB | relay CPU % | failed runs |"
    );
    let _ = writeln!(
        o,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|"
    );
    for k in kinds {
        let Some(v) = results.get(k) else { continue };
        let names: Vec<String> = v
            .first()
            .map(|s| s.groups.iter().map(|g| g.name.clone()).collect())
            .unwrap_or_default();
        for (gi, name) in names.iter().enumerate() {
            let gs: Vec<&Group> = v.iter().filter_map(|s| s.groups.get(gi)).collect();
            let m = |f: &dyn Fn(&Group) -> f64| median(gs.iter().map(|g| f(g)).collect());
            let mut closed: BTreeMap<String, u64> = BTreeMap::new();
            for g in &gs {
                for (why, n) in &g.closed {
                    *closed.entry(why.clone()).or_default() += n;
                }
            }
            let _ = writeln!(
                o,
                "| {k} | {name} | {} | {:.0} | {} | {:.2} | {:.2} | {:.1} | {:.2} | {:.2} | {} | {:.1} | {:.1} | {} |",
                gs.len(),
                m(&|g| g.receivers as f64),
                gs.first()
                    .and_then(|g| g.read_limit_mbps)
                    .map_or("full speed".into(), |r| format!("{r:.1}")),
                m(&|g| g.fraction * 100.0),
                m(&|g| g.per_rx_fraction[0] * 100.0),
                m(&|g| g.reached_last as f64),
                m(&|g| g.lat_ms[0]),
                m(&|g| g.lat_ms[2]),
                closed_text(&closed),
                median(
                    v.iter()
                        .map(|s| s.relay_hwm_mb.or(s.relay_rss_peak_mb).unwrap_or(f64::NAN))
                        .collect()
                ),
                median(v.iter().map(|s| s.relay_cpu_pct.unwrap_or(f64::NAN)).collect()),
                v.iter().filter(|s| !s.verdict().passed()).count(),
            );
        }
    }
    o
}

/// The relays of `kinds` that can be started (the others said on stderr).
pub fn available(kinds: &[RelayKind], paths: &relays::Paths) -> Vec<RelayKind> {
    let mut avail = Vec::new();
    for &k in kinds {
        match paths.missing(k) {
            Some(m) => eprintln!("loadtest: skipping {}: {m}", k.label()),
            None => avail.push(k),
        }
    }
    avail
}

/// `compare`'s state: where its files go and what its runs gave.
struct Compare<'a> {
    scenario: Scenario,
    rounds: usize,
    opts: &'a Opts,
    paths: relays::Paths,
    cfg: run::RunCfg,
    per_ch: usize,
    dir: std::path::PathBuf,
    results: BTreeMap<&'static str, Vec<Summary>>,
    /// Every run's JSON, with its round.
    all: Vec<Value>,
    /// Every run's checks, under `SCENARIO against RELAY, round R/N`.
    verdict: Verdict,
    /// Busy loops on the relay's CPU per run, and the bound on ours' p99
    /// over uWS's in each round (see [`crate::noise`]).
    noise: Option<(usize, f64)>,
}

impl Compare<'_> {
    /// Starts a fresh `kind` on the relays' CPU, its log tagged `tag`.
    fn start(&self, kind: RelayKind, tag: &str) -> Result<relays::RelayProc, String> {
        let cpu = self.opts.target.relay_cpu();
        relays::spawn(kind, &self.paths, cpu, self.per_ch, &self.dir, tag, &[])
    }

    /// A short run against `kind` before the first round, not counted: the
    /// first run of a compare pays for warming the machine up (the driver's
    /// memory, the kernel's socket and page caches): its relay, always the
    /// first one listed, had its worst p99 of all its rounds in round 1 in
    /// 28 of 53 compares run on 2026-12-06/07 (by chance: about 1 in 3).
    async fn warm_up(&mut self, kind: RelayKind) {
        let mut p = match self.start(kind, "warm-up") {
            Ok(p) => p,
            // Round 1 says why, and counts it.
            Err(_) => return,
        };
        eprintln!(
            "\n== compare {}: warming up against {} ({WARM_UP_SECS} s, not counted)",
            self.scenario.name(),
            kind.label()
        );
        let mut cfg = self.cfg.clone();
        cfg.url = p.url.clone();
        cfg.relay_pids = vec![p.pid];
        cfg.duration = cfg.duration.min(WARM_UP_SECS);
        cfg.progress = false;
        let _ = run::run(&cfg).await;
        p.stop();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    /// One run of `kind` in `round` (0-based): start it, run, stop it,
    /// write its text and charts, keep its summary and verdict.
    async fn one(&mut self, kind: RelayKind, round: usize) {
        let (name, rounds) = (self.scenario.name(), self.rounds);
        eprintln!(
            "\n== compare {name}: round {}/{rounds}: {}",
            round + 1,
            kind.label()
        );
        let at = format!(
            "{name} against {}, round {}/{rounds}",
            kind.label(),
            round + 1
        );
        let tag = format!("{name}-r{}", round + 1);
        let cpu = self.opts.target.relay_cpu();
        let mut p = match self.start(kind, &tag) {
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
        let noise = match self.noise {
            Some((n, _)) => match Noise::start(n, cpu, self.cfg.duration + 120.0) {
                Ok(noise) => Some(noise),
                Err(e) => {
                    self.verdict
                        .check(at, false, e, "the noisy neighbour starts");
                    return;
                }
            },
            None => None,
        };
        let mut s = run::run(&self.cfg).await;
        drop(noise);
        s.relay_exit = p.exit_status();
        if let Some(e) = &s.relay_exit {
            eprintln!(
                "loadtest: {} EXITED during the run ({e}); log {}:\n{}",
                kind.label(),
                p.log.display(),
                relays::tail(&p.log)
            );
        }
        p.stop();
        drop(p);
        let t = text(&s);
        eprintln!("{t}");
        eprintln!("{}", verdict(&s, Some((round + 1, rounds))));
        self.verdict.absorb(&at, s.verdict());
        let base = format!("{}-{tag}", kind.label());
        let _ = std::fs::write(self.dir.join(format!("{base}.txt")), &t);
        charts::for_run(&self.dir, &base, &s);
        let mut j = json(&s);
        j["round"] = json!(round + 1);
        self.all.push(j);
        self.results.entry(kind.label()).or_default().push(s);
    }

    /// With a noisy neighbour: in each round, ours' p99 against uWS's.
    fn check_noise(&mut self) {
        let Some((n, bound)) = self.noise else { return };
        let (Some(ours), Some(uws)) = (self.results.get("ours"), self.results.get("uws-bun"))
        else {
            return;
        };
        for (i, (a, b)) in ours.iter().zip(uws).enumerate() {
            let (pa, pb) = (a.lat_ms[2], b.lat_ms[2]);
            let ratio = pa / pb;
            self.verdict.check(
                format!(
                    "{} with {n} busy loop(s) on the relay's CPU, round {}: p99 ours ÷ uWS",
                    self.scenario.name(),
                    i + 1
                ),
                ratio <= bound,
                format!("{ratio:.2}× ({pa:.1} ms ÷ {pb:.1} ms)"),
                format!("≤ {bound}×"),
            );
        }
    }

    /// The latency CDF of every relay (and group) over all rounds: its
    /// number of lines.
    fn cdf(&self, avail: &[RelayKind]) -> usize {
        let mut lines = Vec::new();
        for k in avail {
            let runs = self.results.get(k.label()).map_or(&[][..], |v| v);
            for (name, h) in charts::merged_hists(runs) {
                let line = if name == "all" {
                    k.label().to_string()
                } else {
                    format!("{} {name}", k.label())
                };
                lines.push((line, h));
            }
        }
        charts::cdf(
            &self.dir.join("latency-cdf.svg"),
            &format!("{} latency CDF, all rounds", self.scenario.name()),
            &lines,
        );
        lines.len()
    }

    /// The Markdown report: the table, the group table, the charts, the failed runs.
    fn markdown(&self, avail: &[RelayKind]) -> String {
        let rows: Vec<Row> = avail
            .iter()
            .filter_map(|k| self.results.get(k.label()).map(|v| Row::of(k.label(), v)))
            .collect();
        let mut md = table(self.scenario, &self.cfg, &rows, self.rounds);
        if self.results.values().flatten().any(|s| s.groups.len() > 1) {
            let labels: Vec<&str> = avail.iter().map(|k| k.label()).collect();
            let _ = writeln!(
                md,
                "\nBy receiver group (medians over the runs; slow receivers may be skipped forward, so their gaps are allowed, nothing else):\n\n{}",
                group_table(&labels, &self.results)
            );
        }
        let lines = self.cdf(avail);
        let _ = writeln!(
            md,
            "\nCharts: `latency-cdf.svg` (one line per relay{}), `RELAY-{}-rN-timeline.svg` (throughput, latency, relay RSS per second of each run).",
            if lines > avail.len() { " and group" } else { "" },
            self.scenario.name()
        );
        let failures = self.verdict.failures();
        if !failures.is_empty() {
            let _ = writeln!(
                md,
                "\n**Failed runs** (not every frame intact, once and in order):\n"
            );
            for f in &failures {
                let _ = writeln!(md, "- {f}");
            }
        }
        md
    }

    /// Writes `table.md`, the `-latest.md` copy and `results.json`.
    fn write(&self, md: &str) {
        let md_path = self.dir.join("table.md");
        let _ = std::fs::write(&md_path, md);
        let latest = format!("compare-{}-latest.md", self.scenario.name());
        let _ = std::fs::write(self.opts.target.out.join(latest), md);
        let results = json!({ "scenario": self.scenario.name(), "runs": self.all, "verdict": self.verdict.json() });
        let json_path = self.dir.join("results.json");
        let _ = std::fs::write(
            &json_path,
            serde_json::to_string_pretty(&results).unwrap_or_default(),
        );
        eprintln!(
            "loadtest: wrote {} and {}",
            md_path.display(),
            json_path.display()
        );
    }
}

/// Seconds of the uncounted run before a compare's first round.
const WARM_UP_SECS: f64 = 3.0;

/// Runs `scenario` against each relay, `rounds` times in rotating order,
/// after one short uncounted run (see `Compare::warm_up`).
pub async fn compare(
    scenario: Scenario,
    rounds: usize,
    kinds: &[RelayKind],
    opts: &Opts,
    noise: Option<(usize, f64)>,
    nofile: u64,
) -> i32 {
    let paths = opts.target.paths();
    let avail = available(kinds, &paths);
    if avail.is_empty() {
        eprintln!("loadtest: no relay to compare");
        return 2;
    }
    let cfg = opts.run_cfg(scenario, nofile);
    let dir = opts
        .target
        .out
        .join(format!("compare-{}-{}", scenario.name(), stamp()));
    let _ = std::fs::create_dir_all(&dir);
    let mut c = Compare {
        scenario,
        rounds,
        opts,
        paths,
        per_ch: cfg.receivers.div_ceil(cfg.channels),
        cfg,
        dir,
        results: BTreeMap::new(),
        all: Vec::new(),
        verdict: Verdict::new(),
        noise,
    };
    c.warm_up(avail[avail.len() - 1]).await;
    for round in 0..rounds.max(1) {
        for i in 0..avail.len() {
            c.one(avail[(i + round) % avail.len()], round).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    c.check_noise();
    let md = c.markdown(&avail);
    println!("\n{md}");
    c.write(&md);
    let runs = c.all.len();
    eprintln!(
        "{}",
        c.verdict.stderr(
            &format!("compare {}", scenario.name()),
            &format!("{runs} run(s) of {} relay(s)", avail.len())
        )
    );
    c.verdict.exit_code()
}
