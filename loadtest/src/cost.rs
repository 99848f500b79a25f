//! `cost`: what a delivered byte and a delivered message cost the relay as
//! the work grows: one run per point of a grid of receivers (one channel)
//! × frame sizes, relay CPU divided by what was delivered, one chart.
//!
//! Each point's frame rate is chosen so that the point asks for about
//! `--budget-mbps` of deliveries (never more than 30 fps, never below
//! `--min-fps`): a point that would need less than `--min-fps` within the
//! budget (15,000 receivers of 33 MB frames) is left out and listed as
//! such, not run. The relay is started once (`--start ours`) and serves
//! every point; each point is a fresh channel.

use std::fmt::Write as _;
use std::time::Duration;

use clap::Args;
use serde_json::json;

use crate::relays::TargetOpts;
use crate::report;
use crate::run::{self, RunCfg, Summary};
use crate::verdict::Verdict;
use crate::{charts, peer, Scenario};

/// Options of `cost`.
#[derive(Args, Clone, Debug)]
pub struct CostOpts {
    #[command(flatten)]
    target: TargetOpts,
    /// Receiver counts (one channel each point).
    #[arg(long, value_delimiter = ',', default_value = "1,64,1000,15000")]
    receivers: Vec<usize>,
    /// Frame sizes as WIDTHxHEIGHT RGBA (16x16 is 1 KiB, 3840x2160 33 MB).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "16x16,64x64,256x256,640x360,1920x1080,3840x2160"
    )]
    sizes: Vec<String>,
    /// Deliveries each point asks for, MB/s (receivers × frame bytes × fps).
    #[arg(long, default_value_t = 1500.0)]
    budget_mbps: f64,
    /// Points that would need fewer frames per second than this are left out.
    #[arg(long, default_value_t = 0.5)]
    min_fps: f64,
    /// Seconds the source sends at each point.
    #[arg(long, default_value_t = 4.0)]
    seconds: f64,
}

/// One point of the grid, run.
struct Point {
    receivers: usize,
    bytes: usize,
    fps: f64,
    s: Summary,
}

impl Point {
    /// Relay core-seconds per delivered GB.
    fn per_gb(&self) -> Option<f64> {
        let cpu = self.s.relay_cpu_pct? / 100.0;
        (self.s.delivered_mbps_agg > 0.0).then(|| cpu / (self.s.delivered_mbps_agg / 1000.0))
    }
    /// Relay CPU µs per delivered message.
    fn per_msg_us(&self) -> Option<f64> {
        let cpu = self.s.relay_cpu_pct? / 100.0;
        let msgs = self.s.delivered_mbps_agg * 1e6 / self.bytes as f64;
        (msgs > 0.0).then(|| cpu / msgs * 1e6)
    }
}

fn parse_size(s: &str) -> Result<(u16, u16), String> {
    let (w, h) = s
        .split_once('x')
        .ok_or_else(|| format!("{s}: not WIDTHxHEIGHT"))?;
    let w = w.parse().map_err(|e| format!("{s}: {e}"))?;
    let h = h.parse().map_err(|e| format!("{s}: {e}"))?;
    Ok((w, h))
}

/// Runs `cost`; the exit code.
pub fn main(o: CostOpts) -> i32 {
    let sizes: Result<Vec<(u16, u16)>, String> = o.sizes.iter().map(|s| parse_size(s)).collect();
    let sizes = match sizes {
        Ok(s) => s,
        Err(e) => {
            eprintln!("loadtest cost: {e}");
            return 2;
        }
    };
    let nofile = crate::sys::raise_nofile();
    o.target.pin_driver(o.target.start.is_some());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = rt.block_on(run_grid(&o, &sizes, nofile));
    rt.shutdown_background();
    code
}

async fn run_grid(o: &CostOpts, sizes: &[(u16, u16)], nofile: u64) -> i32 {
    let most = o.receivers.iter().copied().max().unwrap_or(1);
    let Some(mut relay) = o.target.under_test(most, &report::stamp(), &[]) else {
        return 2;
    };
    let mut points = Vec::new();
    let mut left_out = Vec::new();
    let mut v = Verdict::new();
    for &r in &o.receivers {
        for &(w, h) in sizes {
            let mut cfg = base_cfg(o, &relay, r, w, h, nofile);
            let bytes = cfg.msg_bytes();
            let fps = (o.budget_mbps * 1e6 / (r as f64 * bytes as f64)).min(30.0);
            if fps < o.min_fps {
                left_out.push(format!(
                    "{r} receivers × {w}x{h} ({bytes} B): {fps:.3} fps within the budget"
                ));
                continue;
            }
            cfg.fps = fps;
            eprintln!("\n== cost: {r} receivers, {w}x{h} ({bytes} B) at {fps:.2} fps");
            let mut s = run::run(&cfg).await;
            s.relay_exit = relay.proc.as_mut().and_then(|p| p.exit_status());
            v.absorb(&format!("{r} receivers × {w}x{h}"), s.verdict());
            points.push(Point {
                receivers: r,
                bytes,
                fps,
                s,
            });
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    let _ = relay.finish();
    let dir = o.target.out.join(format!("cost-{}", report::stamp()));
    let _ = std::fs::create_dir_all(&dir);
    let md = table(&points, &left_out, o.budget_mbps);
    println!("\n{md}");
    let _ = std::fs::write(dir.join("table.md"), &md);
    let rows: Vec<_> = points
        .iter()
        .map(|p| {
            json!({"receivers": p.receivers, "message_bytes": p.bytes, "fps": p.fps,
                "relay_cpu_percent": p.s.relay_cpu_pct, "delivered_mbps": p.s.delivered_mbps_agg,
                "delivered_fraction": p.s.delivered_fraction,
                "core_seconds_per_gb": p.per_gb(), "cpu_us_per_message": p.per_msg_us()})
        })
        .collect();
    let _ = std::fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(
            &json!({"points": rows, "left_out": left_out, "verdict": v.json()}),
        )
        .unwrap_or_default(),
    );
    chart(&dir, &points);
    eprintln!(
        "{}",
        v.stderr(
            "cost",
            &format!("{} point(s) in {}", points.len(), dir.display())
        )
    );
    v.exit_code()
}

fn base_cfg(
    o: &CostOpts,
    relay: &crate::relays::UnderTest,
    r: usize,
    w: u16,
    h: u16,
    nofile: u64,
) -> RunCfg {
    let room = nofile.saturating_sub(64) as usize;
    RunCfg {
        scenario: Scenario::Receivers,
        url: relay.url.clone(),
        receivers: r.min(room),
        channels: 1,
        width: w,
        height: h,
        fps: 1.0,
        duration: o.seconds,
        check_every: 1,
        connect_batch: 500,
        drain_secs: 3.0,
        relay_pids: relay.pid.into_iter().collect(),
        receiver_urls: Vec::new(),
        watch: Vec::new(),
        label: relay.label.clone(),
        read_buf: 256 * 1024,
        client: peer::Client::Lean,
        progress: false,
        slow: 0,
        slow_rate: None,
        fast_rate: None,
        slow_min_fraction: 0.0,
    }
}

fn table(points: &[Point], left_out: &[String], budget: f64) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "### cost: relay CPU per delivered GB and per delivered message (each point asks for ≤ {budget} MB/s, ≤ 30 fps)\n");
    let _ = writeln!(o, "| receivers | message bytes | fps | delivered MB/s | delivered % | relay CPU % | core-s per GB | CPU µs per message |");
    let _ = writeln!(o, "|---:|---:|---:|---:|---:|---:|---:|---:|");
    for p in points {
        let _ = writeln!(
            o,
            "| {} | {} | {:.2} | {:.1} | {:.3} | {} | {} | {} |",
            p.receivers,
            p.bytes,
            p.fps,
            p.s.delivered_mbps_agg,
            p.s.delivered_fraction * 100.0,
            report::opt(p.s.relay_cpu_pct, 1),
            report::opt(p.per_gb(), 3),
            report::opt(p.per_msg_us(), 2),
        );
    }
    for l in left_out {
        let _ = writeln!(o, "\nleft out: {l}");
    }
    o
}

fn chart(dir: &std::path::Path, points: &[Point]) {
    let mut per_gb: Vec<charts::Line> = Vec::new();
    let mut per_msg: Vec<charts::Line> = Vec::new();
    let mut counts: Vec<usize> = points.iter().map(|p| p.receivers).collect();
    counts.dedup();
    // Log scales (the costs span five orders of magnitude), of values
    // above 1 so that every point is above the axis.
    let log = |v: f64| (v > 1.0).then(|| v.log10());
    for r in counts {
        let of_r = || points.iter().filter(move |p| p.receivers == r);
        let x = |p: &Point| (p.bytes as f64).log2();
        per_gb.push((
            format!("{r} receivers"),
            of_r()
                .filter_map(|p| Some((x(p), log(p.per_gb()? * 1000.0)?)))
                .collect(),
        ));
        per_msg.push((
            format!("{r} receivers"),
            of_r()
                .filter_map(|p| Some((x(p), log(p.per_msg_us()?)?)))
                .collect(),
        ));
    }
    charts::cost(
        &dir.join("cost.svg"),
        "relay CPU per delivered GB and per message",
        &per_gb,
        &per_msg,
    );
}
