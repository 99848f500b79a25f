//! Reports: text and JSON for one run, the `compare` loop and its table.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::charts;
use crate::relays::{self, RelayKind};
use crate::run::{self, Group, Summary};
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

/// The stderr line that says whether a run kept every frame intact, once
/// and in order, with the count of each kind of failure either way.
pub fn verdict(s: &Summary, round: Option<(usize, usize)>) -> String {
    format!(
        "loadtest: {} {} against {} ({}){}: {}",
        if s.failed() { "FAIL" } else { "OK" },
        s.scenario,
        s.label,
        s.url,
        round.map_or(String::new(), |(r, n)| format!(", round {r}/{n}")),
        s.integrity()
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
        "delivery": {
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
        },
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
        "relay_process": {
            "cpu_percent_of_one_core": s.relay_cpu_pct,
            "peak_rss_MB_vmhwm": s.relay_hwm_mb,
            "peak_rss_MB_sampled": s.relay_rss_peak_mb,
            "idle_rss_MB": s.relay_idle_rss_mb,
            "connected_rss_MB": s.relay_connected_rss_mb,
            "rss_per_connection_KiB": s.rss_per_conn_kib,
            "rss_per_connection_KiB_at_peak": s.rss_per_conn_peak_kib,
            "exit": s.relay_exit,
        },
        "relay_processes": s.relay_processes,
        "watched_processes": s.watched.iter().map(|w| json!({
            "name": w.name, "cpu_percent_of_one_core": w.cpu_pct, "peak_rss_MB_sampled": w.rss_peak_mb,
        })).collect::<Vec<_>>(),
        "driver_cpu_percent_of_one_core": s.driver_cpu_pct,
        "other_processes_cpu_percent_of_one_core": s.others_cpu_pct,
        "integrity": {"failed": s.failed(), "summary": s.integrity()},
        "notes": s.notes,
    })
}

/// The human-readable report of one run.
pub fn text(s: &Summary) -> String {
    let mut o = String::new();
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
    group_lines(&mut o, s);
    let _ = writeln!(
        o,
        "latency ms    p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  (mean {:.2}, {} samples; send→last byte read)",
        s.lat_ms[0], s.lat_ms[1], s.lat_ms[2], s.lat_ms[3], s.lat_ms[4], s.lat_mean_ms, s.lat_count
    );
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
    let _ = writeln!(
        o,
        "result        {}",
        if s.failed() {
            format!("FAIL: {}", s.integrity())
        } else {
            if s.groups.iter().any(|g| g.gaps) {
                "OK: every frame intact, once and in order, at every full-speed receiver; slow receivers got intact frames in increasing order (gaps allowed), none closed".into()
            } else {
                "OK: every frame intact, once and in order, at every receiver".into()
            }
        }
    );
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
        "### `{}`: {} receivers, {} channel(s), {}×{} RGBA ({} B/msg), {}, {} s × {} rounds ({date} {time} UTC, 2 cores: relay pinned to CPU 0, driver to CPU 1)\n",
        scenario.name(),
        cfg.receivers,
        cfg.channels,
        cfg.width,
        cfg.height,
        cfg.msg_bytes(),
        cfg.rate(),
        cfg.duration,
        rounds
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
    o
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
                v.iter().filter(|s| s.failed()).count(),
            );
        }
    }
    o
}

/// Runs `scenario` against each relay, `rounds` times in rotating order.
pub async fn compare(
    scenario: Scenario,
    rounds: usize,
    kinds: &[RelayKind],
    opts: &Opts,
    nofile: u64,
) -> i32 {
    let paths = opts.target.paths();
    let mut avail = Vec::new();
    for &k in kinds {
        match paths.missing(k) {
            Some(m) => eprintln!("loadtest: skipping {}: {m}", k.label()),
            None => avail.push(k),
        }
    }
    if avail.is_empty() {
        eprintln!("loadtest: no relay to compare");
        return 2;
    }
    let mut cfg = opts.run_cfg(scenario, nofile);
    let per_ch = cfg.receivers.div_ceil(cfg.channels);
    let st = stamp();
    let dir = opts
        .target
        .out
        .join(format!("compare-{}-{st}", scenario.name()));
    let _ = std::fs::create_dir_all(&dir);
    let mut results: BTreeMap<&'static str, Vec<Summary>> = BTreeMap::new();
    let mut all = Vec::new();
    // Every run that lost, damaged, repeated or reordered a frame (or could not run).
    let mut failures: Vec<String> = Vec::new();
    for round in 0..rounds.max(1) {
        for i in 0..avail.len() {
            let kind = avail[(i + round) % avail.len()];
            eprintln!(
                "\n== compare {}: round {}/{}: {}",
                scenario.name(),
                round + 1,
                rounds,
                kind.label()
            );
            let tag = format!("{}-r{}", scenario.name(), round + 1);
            let mut p = match relays::spawn(
                kind,
                &paths,
                opts.target.relay_cpu(),
                per_ch,
                &dir,
                &tag,
                &[],
            ) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("loadtest: {e}");
                    failures.push(format!(
                        "loadtest: FAIL {} against {}, round {}/{rounds}: could not start: {e}",
                        scenario.name(),
                        kind.label(),
                        round + 1
                    ));
                    continue;
                }
            };
            cfg.url = p.url.clone();
            cfg.relay_pids = vec![p.pid];
            cfg.label = kind.label().into();
            let mut s = run::run(&cfg).await;
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
            let v = verdict(&s, Some((round + 1, rounds)));
            eprintln!("{v}");
            if s.failed() {
                failures.push(v);
            }
            let _ = std::fs::write(dir.join(format!("{}-{tag}.txt", kind.label())), &t);
            charts::for_run(&dir, &format!("{}-{tag}", kind.label()), &s);
            let mut j = json(&s);
            j["round"] = json!(round + 1);
            all.push(j);
            results.entry(kind.label()).or_default().push(s);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let rows: Vec<Row> = avail
        .iter()
        .filter_map(|k| results.get(k.label()).map(|v| Row::of(k.label(), v)))
        .collect();
    let mut md = table(scenario, &cfg, &rows, rounds);
    if results.values().flatten().any(|s| s.groups.len() > 1) {
        let labels: Vec<&str> = avail.iter().map(|k| k.label()).collect();
        let _ = writeln!(
            md,
            "\nBy receiver group (medians over the runs; slow receivers may be skipped forward, so their gaps are allowed, nothing else):\n\n{}",
            group_table(&labels, &results)
        );
    }
    let cdf = dir.join("latency-cdf.svg");
    let mut lines = Vec::new();
    for k in &avail {
        for (name, h) in charts::merged_hists(results.get(k.label()).map_or(&[][..], |v| v)) {
            lines.push((
                if name == "all" {
                    k.label().to_string()
                } else {
                    format!("{} {name}", k.label())
                },
                h,
            ));
        }
    }
    charts::cdf(
        &cdf,
        &format!("{} latency CDF, all rounds", scenario.name()),
        &lines,
    );
    let _ = writeln!(
        md,
        "\nCharts: `latency-cdf.svg` (one line per relay{}), `RELAY-{}-rN-timeline.svg` (throughput, latency, relay RSS per second of each run).",
        if lines.len() > avail.len() { " and group" } else { "" },
        scenario.name()
    );
    if !failures.is_empty() {
        let _ = writeln!(
            md,
            "\n**Failed runs** (not every frame intact, once and in order):\n"
        );
        for f in &failures {
            let _ = writeln!(md, "- {}", f.trim_start_matches("loadtest: "));
        }
    }
    println!("\n{md}");
    let md_path = dir.join("table.md");
    let _ = std::fs::write(&md_path, &md);
    let _ = std::fs::write(
        opts.target
            .out
            .join(format!("compare-{}-latest.md", scenario.name())),
        &md,
    );
    let _ = std::fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(&json!({ "scenario": scenario.name(), "runs": all }))
            .unwrap_or_default(),
    );
    eprintln!(
        "loadtest: wrote {} and {}",
        md_path.display(),
        dir.join("results.json").display()
    );
    for f in &failures {
        eprintln!("{f}");
    }
    i32::from(!failures.is_empty())
}
