//! One run of a scenario against one relay URL: connect the receivers,
//! start the source, report progress each second, drain, summarize, and
//! judge whether every frame arrived intact, once and in order.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::task::JoinHandle;

use crate::peer::{self, RecvCfg, RecvStat, Sample, Sink, Source, SourceCfg, SourceShared, Target};
use crate::sys::{self, ProcSample};
use crate::verdict::Verdict;
use crate::verify::{Counts, Expect};
use crate::wire::{FrameTemplate, Framing};
use crate::{now_secs, Scenario};

/// Everything one run needs.
#[derive(Debug, Clone)]
pub struct RunCfg {
    /// Which scenario (for labels and notes).
    pub scenario: Scenario,
    /// `ws://HOST:PORT` or `tcp://HOST:PORT` (plain-TCP reference).
    pub url: String,
    /// Receivers in total (spread round-robin over the channels).
    pub receivers: usize,
    /// Channels, one source each.
    pub channels: usize,
    /// Frame width in pixels.
    pub width: u16,
    /// Frame height in pixels.
    pub height: u16,
    /// Frames per second per channel; 0 = as fast as the relay accepts.
    pub fps: f64,
    /// How long the source sends, seconds.
    pub duration: f64,
    /// Each receiver hashes the bytes of every n-th frame.
    pub check_every: u64,
    /// Receivers connecting at once.
    pub connect_batch: usize,
    /// Longest wait for in-flight frames after the source stops, seconds.
    pub drain_secs: f64,
    /// The relay's processes to measure, their CPU and RSS added up: one,
    /// or every node of a cluster (none: not measured).
    pub relay_pids: Vec<u32>,
    /// Relays the receivers are spread over, receiver `r` of channel
    /// `r % channels` on `(r / channels) % len` (empty: all on `url`, where
    /// the source always is). Each relay's receivers form their own
    /// groups (`node1`, `node2`, ...), so latency is reported per relay.
    pub receiver_urls: Vec<String>,
    /// Other processes measured over the send window, by name (a
    /// cluster's nodes one by one, its nats-server): CPU % and peak RSS in
    /// [`Summary::watched`], left out of "others".
    pub watch: Vec<(String, u32)>,
    /// Name of the relay in reports.
    pub label: String,
    /// Bytes per read syscall (one buffer per driver thread).
    pub read_buf: usize,
    /// How receivers read.
    pub client: peer::Client,
    /// Print progress to stderr.
    pub progress: bool,
    /// Receivers (the last of them) that read slower than the stream: the
    /// `slow` group, whose gaps are allowed (see [`Expect::Gaps`]).
    pub slow: usize,
    /// Read-rate limit of the slow receivers, bytes/s (None: full speed).
    pub slow_rate: Option<f64>,
    /// Read-rate limit of the other receivers, bytes/s (None: full speed).
    pub fast_rate: Option<f64>,
    /// Each slow receiver must get at least this fraction of the frames
    /// sent, and at least one frame.
    pub slow_min_fraction: f64,
}

impl RunCfg {
    /// Bytes of one protocol message.
    pub fn msg_bytes(&self) -> usize {
        self.width as usize * self.height as usize * 4 + 16
    }

    /// With `slow` of the receivers reading at `slow_bps` bytes/s, else
    /// at `slow_rate` × the stream's byte rate, and the others at
    /// `fast_rate` × that rate (0: full speed). A rate that cannot be
    /// computed (unpaced stream) or is 0 leaves them at full speed.
    pub fn with_groups(
        mut self,
        slow: usize,
        slow_bps: Option<f64>,
        slow_rate: f64,
        fast_rate: f64,
    ) -> Self {
        let stream = self.stream_bps();
        let of = |f: f64| (f > 0.0 && stream > 0.0).then_some(f * stream);
        self.slow = slow.min(self.receivers);
        self.slow_rate = if self.slow > 0 {
            slow_bps.filter(|&b| b > 0.0).or(of(slow_rate))
        } else {
            None
        };
        self.fast_rate = of(fast_rate);
        self
    }

    /// The stream's bytes per second per receiver (0 when unpaced).
    pub fn stream_bps(&self) -> f64 {
        self.fps.max(0.0) * self.msg_bytes() as f64
    }

    /// `30 fps`, or `as fast as accepted`.
    pub fn rate(&self) -> String {
        if self.fps > 0.0 {
            format!("{} fps", self.fps)
        } else {
            "as fast as accepted".into()
        }
    }
}

/// What one run measured.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub label: String,
    pub scenario: String,
    pub url: String,
    pub receivers_target: usize,
    pub channels: usize,
    pub width: u16,
    pub height: u16,
    pub fps_target: f64,
    pub check_every: u64,
    pub client: String,
    pub msg_bytes: usize,
    pub receivers_connected: usize,
    pub connect_failures: usize,
    pub connect_error: Option<String>,
    pub connect_secs: f64,
    pub listen_overflows: u64,
    pub frames_sent: u64,
    pub window_s: f64,
    pub fps_achieved: f64,
    pub offered_mbps_per_rx: f64,
    pub offered_mbps_agg: f64,
    pub expected_frames: u64,
    pub delivered_frames: u64,
    pub delivered_fraction: f64,
    pub missing: u64,
    pub duplicate: u64,
    pub out_of_order: u64,
    pub corrupted: u64,
    pub foreign: u64,
    pub checked: u64,
    pub delivered_mbps_agg: f64,
    pub per_rx_mbps: [f64; 3],
    pub per_rx_fraction: [f64; 3],
    pub receivers_all_frames: usize,
    pub lat_ms: [f64; 5],
    pub lat_mean_ms: f64,
    pub lat_count: u64,
    pub pacing_late_ms: [f64; 3],
    pub relay_cpu_pct: Option<f64>,
    pub driver_cpu_pct: Option<f64>,
    /// CPU of every other process on the machine over the send window, % of one core.
    pub others_cpu_pct: Option<f64>,
    pub relay_hwm_mb: Option<f64>,
    pub relay_rss_peak_mb: Option<f64>,
    /// Relay processes measured (CPU and RSS are their sums).
    pub relay_processes: usize,
    pub relay_idle_rss_mb: Option<f64>,
    pub relay_connected_rss_mb: Option<f64>,
    pub rss_per_conn_kib: Option<f64>,
    pub rss_per_conn_peak_kib: Option<f64>,
    pub receivers_ended: BTreeMap<String, u64>,
    pub relay_exit: Option<String>,
    pub source_error: Option<String>,
    pub notes: Vec<String>,
    /// Frames the slow receivers skipped (missing, allowed); not in `missing`.
    pub skipped: u64,
    /// The receivers by group: one (`all`), or `fast` and `slow`.
    pub groups: Vec<Group>,
    /// What failed a group beyond its defect counts (a slow receiver that got no frame, or too few).
    pub group_failures: Vec<String>,
    /// One sample a second while the source sent.
    pub timeline: Vec<Tick>,
    /// Latency of every delivered frame (all groups), µs.
    pub lat_hist: Option<Histogram<u64>>,
    /// The [`RunCfg::watch`] processes over the send window.
    pub watched: Vec<Watched>,
}

/// A process measured beside the relay (see [`RunCfg::watch`]).
#[derive(Debug, Clone, Default)]
pub struct Watched {
    /// Its name in reports.
    pub name: String,
    /// CPU over the send window, % of one core.
    pub cpu_pct: Option<f64>,
    /// Peak RSS sampled once a second and at the end, MB.
    pub rss_peak_mb: Option<f64>,
}

/// Receivers that read alike and are judged alike.
#[derive(Debug, Clone, Default)]
pub struct Group {
    /// `all`, `fast` or `slow`; with several relays (see
    /// [`RunCfg::receiver_urls`]) `nodeK` or `fast@nodeK`, `slow@nodeK`.
    pub name: String,
    /// With several relays, the index of its receivers' relay in
    /// [`RunCfg::receiver_urls`] (0: the source's).
    pub node: Option<usize>,
    /// What each must get: every frame, or gaps allowed.
    pub gaps: bool,
    /// Receivers connected.
    pub receivers: usize,
    /// Their read-rate limit, MB/s.
    pub read_limit_mbps: Option<f64>,
    /// Frames sent × receivers.
    pub expected: u64,
    /// Frames delivered intact.
    pub delivered: u64,
    /// Delivered ÷ expected.
    pub fraction: f64,
    /// Per receiver delivered ÷ sent: min, median, max.
    pub per_rx_fraction: [f64; 3],
    /// Their totals (missing counts every frame not delivered).
    pub counts: Counts,
    /// Of the missing frames, those allowed (gaps): all of them with gaps, else 0.
    pub skipped: u64,
    /// Receivers that got the last frame sent.
    pub reached_last: usize,
    /// Latency p50 / p90 / p99 / p99.9 / max, ms.
    pub lat_ms: [f64; 5],
    /// Latency samples.
    pub lat_count: u64,
    /// Intact bytes they read over the send window, MB/s, all of them together.
    pub mbps: f64,
    /// How receivers ended early, with how many (`closed by relay with 3008`, ...).
    pub closed: BTreeMap<String, u64>,
    /// Latency histogram, µs.
    pub hist: Option<Histogram<u64>>,
}

impl Group {
    /// What each receiver must get.
    pub fn expect(&self) -> Expect {
        if self.gaps {
            Expect::Gaps
        } else {
            Expect::Every
        }
    }
}

/// One second of a run.
#[derive(Debug, Clone, Default)]
pub struct Tick {
    /// Seconds since the source started.
    pub t: f64,
    /// Frames sent per second per channel.
    pub fps: f64,
    /// Intact bytes delivered per second, all receivers, MB/s.
    pub mbps: f64,
    /// Latency of the frames delivered in the second, ms.
    pub p50_ms: f64,
    /// Idem, 99th percentile.
    pub p99_ms: f64,
    /// Relay CPU over the second, % of one core.
    pub relay_cpu: Option<f64>,
    /// Relay RSS at the end of the second, MB.
    pub rss_mb: Option<f64>,
    /// Per group (as [`Summary::groups`]): (MB/s, p99 ms).
    pub groups: Vec<(f64, f64)>,
}

impl Summary {
    /// The delivery totals of the run.
    pub fn counts(&self) -> Counts {
        Counts {
            missing: self.missing,
            duplicate: self.duplicate,
            out_of_order: self.out_of_order,
            corrupt: self.corrupted,
            ..Counts::default()
        }
    }

    /// Receivers the relay (or an error) ended before the run did.
    pub fn ended_early(&self) -> u64 {
        self.receivers_ended.values().sum()
    }

    /// The run's checks: no frame missing (at a receiver that must get
    /// every one), corrupt, duplicated or out of order; every receiver
    /// connected and none ended early; no slow receiver starved (no frame,
    /// or fewer than its floor); frames sent; the source and the relay ran
    /// to the end.
    pub fn verdict(&self) -> Verdict {
        let mut v = Verdict::new();
        let c = self.counts();
        v.check(
            "frames",
            c.clean(),
            c.defects(),
            "every frame intact, once and in order (gaps only at slow receivers)",
        );
        for f in &self.group_failures {
            v.check("slow receivers", false, f.clone(), "every one got frames");
        }
        v.check(
            "receivers connected",
            self.connect_failures == 0,
            format!("{} failed to connect", self.connect_failures),
            "all",
        );
        v.check(
            "receivers ended early",
            self.ended_early() == 0,
            format!(
                "{}{}",
                self.ended_early(),
                if self.receivers_ended.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", crate::report::closed_text(&self.receivers_ended))
                }
            ),
            "0",
        );
        v.check(
            "frames sent",
            self.frames_sent > 0,
            self.frames_sent.to_string(),
            "at least 1",
        );
        v.check(
            "source",
            self.source_error.is_none(),
            self.source_error
                .as_ref()
                .map_or("ran to the end".into(), |e| format!("failed: {e}")),
            "runs to the end",
        );
        v.check(
            "relay",
            self.relay_exit.is_none(),
            self.relay_exit
                .as_ref()
                .map_or("still running".into(), |e| format!("exited: {e}")),
            "runs to the end",
        );
        v
    }

    /// One line naming every count that decides [`Summary::verdict`].
    pub fn integrity(&self) -> String {
        let mut l = format!(
            "{}; receivers failed to connect {}, ended early {}{}; frames sent {}",
            self.counts().defects(),
            self.connect_failures,
            self.ended_early(),
            if self.receivers_ended.is_empty() {
                String::new()
            } else {
                format!(" ({})", crate::report::closed_text(&self.receivers_ended))
            },
            self.frames_sent
        );
        if self.groups.iter().any(|g| g.gaps) {
            l.push_str(&format!(
                "; skipped by slow receivers {} (allowed)",
                self.skipped
            ));
        }
        for f in &self.group_failures {
            l.push_str(&format!("; {f}"));
        }
        if let Some(e) = &self.source_error {
            l.push_str(&format!("; source failed: {e}"));
        }
        if let Some(e) = &self.relay_exit {
            l.push_str(&format!("; relay exited: {e}"));
        }
        l
    }
}

/// Latency of every delivered frame: the run's histogram and the one the
/// progress line resets each second.
struct Latency {
    hist: Mutex<Histogram<u64>>,
    ihist: Mutex<Histogram<u64>>,
}

impl Sink for Latency {
    fn record(&self, delivered: &[Sample]) {
        for h in [&self.hist, &self.ihist] {
            let mut h = h.lock().unwrap();
            for d in delivered {
                h.saturating_record(d.lat_us);
            }
        }
    }
}

fn pct(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let i = ((v.len() - 1) as f64 * q).round() as usize;
    v[i]
}

/// `v` with `prec` decimals, `-` for NaN.
fn ms(v: f64, prec: usize) -> String {
    if v.is_finite() {
        format!("{v:.prec$}")
    } else {
        "-".into()
    }
}

/// Quantile `q` of `h` in ms; NaN when it is empty (no point in a chart).
fn quantile_ms(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        f64::NAN
    } else {
        h.value_at_quantile(q) as f64 / 1000.0
    }
}

fn mb(kib: Option<u64>) -> Option<f64> {
    kib.map(|k| k as f64 / 1024.0)
}

/// A receiver group to be: name, relay index (with several relays),
/// gaps allowed, read-rate limit, and its receivers.
type GroupSpec = (String, Option<usize>, bool, Option<f64>, Vec<peer::Joined>);

/// The receivers in groups: the first `receivers - slow` read at
/// `fast_rate` (`fast`), the rest at `slow_rate` (`slow`), or all at full
/// speed (`all`); with several relays each of those split by relay
/// (`nodeK`, `fast@nodeK`, ...: K counts from 1, the source's relay).
fn group_specs(cfg: &RunCfg, relays: usize, joined: Vec<peer::Joined>) -> Vec<GroupSpec> {
    let n_fast = cfg.receivers.saturating_sub(cfg.slow);
    let mut by_speed: Vec<(&str, bool, Option<f64>, Vec<peer::Joined>)> = Vec::new();
    if cfg.slow == 0 && cfg.fast_rate.is_none() {
        by_speed.push(("all", false, None, joined));
    } else {
        let (fast, slow): (Vec<_>, Vec<_>) = joined.into_iter().partition(|j| j.rid < n_fast);
        by_speed.push(("fast", false, cfg.fast_rate, fast));
        if cfg.slow > 0 {
            by_speed.push(("slow", true, cfg.slow_rate, slow));
        }
    }
    let mut specs = Vec::new();
    for (speed, gaps, rate, joined) in by_speed {
        if relays < 2 {
            specs.push((speed.to_owned(), None, gaps, rate, joined));
            continue;
        }
        let mut per_node: Vec<Vec<peer::Joined>> = (0..relays).map(|_| Vec::new()).collect();
        for j in joined {
            per_node[j.node.min(relays - 1)].push(j);
        }
        for (k, js) in per_node.into_iter().enumerate() {
            let name = match speed {
                "all" => format!("node{}", k + 1),
                _ => format!("{speed}@node{}", k + 1),
            };
            specs.push((name, Some(k), gaps, rate, js));
        }
    }
    specs
}

/// A new summary of `cfg`'s run, nothing measured yet.
fn new_summary(cfg: &RunCfg) -> Summary {
    Summary {
        label: cfg.label.clone(),
        scenario: cfg.scenario.name().into(),
        url: cfg.url.clone(),
        receivers_target: cfg.receivers,
        channels: cfg.channels,
        width: cfg.width,
        height: cfg.height,
        fps_target: cfg.fps,
        check_every: cfg.check_every,
        client: format!("{:?}", cfg.client).to_lowercase(),
        ..Default::default()
    }
}

/// The source's relay and the relays the receivers join (the source's
/// alone unless `receiver_urls`).
fn targets_of(cfg: &RunCfg) -> Result<(Target, Vec<Target>), String> {
    let target = Target::parse(&cfg.url)?;
    if cfg.receiver_urls.is_empty() {
        return Ok((target.clone(), vec![target]));
    }
    let all = cfg
        .receiver_urls
        .iter()
        .map(|u| Target::parse(u))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((target, all))
}

/// The relay processes (their CPU and RSS added up) and the watched ones,
/// with the peaks seen so far.
struct Meter<'a> {
    pids: &'a [u32],
    watch: &'a [(String, u32)],
    /// Highest summed relay RSS seen, KiB.
    rss_peak: u64,
    /// Highest RSS of each watched process, KiB.
    watched_peak: Vec<u64>,
}

impl<'a> Meter<'a> {
    fn new(cfg: &'a RunCfg) -> Self {
        Meter {
            pids: &cfg.relay_pids,
            watch: &cfg.watch,
            rss_peak: 0,
            watched_peak: vec![0; cfg.watch.len()],
        }
    }

    /// The relays' summed RSS now (KiB), counted into the peak.
    fn rss(&mut self) -> Option<u64> {
        let r = sys::sum_of(self.pids, sys::rss_kib);
        if let Some(r) = r {
            self.rss_peak = self.rss_peak.max(r);
        }
        r
    }

    /// The relays' summed CPU counters now.
    fn cpu(&self) -> Option<ProcSample> {
        ProcSample::take_all(self.pids)
    }

    /// Samples the watched processes' RSS into their peaks.
    fn watch_rss(&mut self) {
        for ((_, p), peak) in self.watch.iter().zip(self.watched_peak.iter_mut()) {
            *peak = (*peak).max(sys::rss_kib(*p).unwrap_or(0));
        }
    }
}

/// CPU counters at one edge of the send window: the relays', each
/// watched process's, the driver's and the machine's.
struct Edge {
    relay: Option<ProcSample>,
    watch: Vec<Option<ProcSample>>,
    me: Option<ProcSample>,
    busy: Option<u64>,
}

impl Edge {
    fn take(m: &Meter) -> Edge {
        Edge {
            relay: m.cpu(),
            watch: m.watch.iter().map(|(_, p)| ProcSample::take(*p)).collect(),
            me: ProcSample::take(std::process::id()),
            busy: sys::machine_busy_ticks(),
        }
    }
}

/// Connects the receivers in batches (progress on stderr for big runs)
/// and records how that went in `s`.
async fn connect(
    cfg: &RunCfg,
    targets: &[Target],
    names: &[String],
    meter: &mut Meter<'_>,
    s: &mut Summary,
) -> peer::Joins {
    let t_conn = Instant::now();
    let mut conn_cpu = meter.cpu();
    let overflows0 = sys::tcpext("ListenOverflows");
    let pids = meter.pids;
    let joins = peer::join_receivers(targets, names, cfg.receivers, cfg.connect_batch, |j| {
        if !cfg.progress || cfg.receivers < 2000 {
            return;
        }
        let c = ProcSample::take_all(pids);
        let cpu = match (c, conn_cpu) {
            (Some(a), Some(b)) => format!("{:.0}%", a.cpu_pct_since(&b)),
            _ => "-".into(),
        };
        conn_cpu = c;
        eprintln!(
            "  connected {}/{} receivers ({} failed) in {:.1}s  relay cpu {cpu} rss {}",
            j.ok.len(),
            cfg.receivers,
            j.failures,
            t_conn.elapsed().as_secs_f64(),
            sys::sum_of(pids, sys::rss_kib)
                .map_or("-".into(), |r| format!("{:.0}MB", r as f64 / 1024.0)),
        );
    })
    .await;
    s.connect_secs = t_conn.elapsed().as_secs_f64();
    if let (Some(a), Some(b)) = (sys::tcpext("ListenOverflows"), overflows0) {
        s.listen_overflows = a.saturating_sub(b);
    }
    s.connect_failures = joins.failures;
    s.connect_error = joins.first_error.clone();
    s.receivers_connected = joins.ok.len();
    if let Some(e) = &s.connect_error {
        eprintln!(
            "  {} receivers failed to connect; first error: {e}",
            s.connect_failures
        );
    }
    joins
}

/// A receiver group while it runs: its report, its latency, its receivers.
type LiveGroup = (Group, Arc<Latency>, Vec<Arc<RecvStat>>);

/// Starts every group's receivers: the groups and the receivers' tasks.
fn spawn_groups(
    cfg: &RunCfg,
    framing: Framing,
    relays: usize,
    joined: Vec<peer::Joined>,
) -> (Vec<LiveGroup>, Vec<JoinHandle<()>>) {
    let mut groups = Vec::new();
    let mut tasks = Vec::new();
    for (name, node, gaps, rate, joined) in group_specs(cfg, relays, joined) {
        let lat = Arc::new(Latency {
            hist: Mutex::new(peer::new_hist()),
            ihist: Mutex::new(peer::new_hist()),
        });
        let rcfg = RecvCfg {
            framing,
            check_every: cfg.check_every,
            read_buf: cfg.read_buf,
            rate,
            client: cfg.client,
        };
        let g = Group {
            name,
            node,
            gaps,
            receivers: joined.len(),
            read_limit_mbps: rate.map(|r| r / 1e6),
            ..Default::default()
        };
        let (st, t) = peer::spawn_receivers(joined, rcfg, &lat);
        tasks.extend(t);
        groups.push((g, lat, st));
    }
    (groups, tasks)
}

/// Bytes the receivers of `g` got so far.
fn group_bytes(g: &LiveGroup) -> u64 {
    g.2.iter().map(|x| x.counts(0).bytes).sum()
}

/// The progress loop's running totals: (time, frames sent, bytes, relay CPU) at the last tick.
struct Last {
    at: f64,
    sent: u64,
    bytes: u64,
    cpu: Option<ProcSample>,
    /// Bytes per group at the last tick.
    group: Vec<u64>,
}

/// One second of the run: measures it, prints its progress line (with
/// `cfg.progress`), and moves `last` on.
fn tick(
    cfg: &RunCfg,
    sh: &SourceShared,
    groups: &[LiveGroup],
    stats: &[Arc<RecvStat>],
    meter: &mut Meter,
    last: &mut Last,
    t: f64,
) -> Tick {
    let now = now_secs();
    let sent = sh.sent.load(Relaxed);
    let c = peer::totals(stats, 0);
    let dt = now - last.at;
    // This second's latency: per group, and all groups merged.
    let mut sec = peer::new_hist();
    let mut per_group = Vec::with_capacity(groups.len());
    for (i, g) in groups.iter().enumerate() {
        let mut h = g.1.ihist.lock().unwrap();
        let _ = sec.add(&*h);
        let b = group_bytes(g);
        per_group.push(((b - last.group[i]) as f64 / dt / 1e6, quantile_ms(&h, 0.99)));
        last.group[i] = b;
        h.reset();
    }
    let cpu_now = meter.cpu();
    let cpu = match (cpu_now, last.cpu) {
        (Some(a), Some(b)) => Some(a.cpu_pct_since(&b)),
        _ => None,
    };
    let rss = meter.rss();
    meter.watch_rss();
    let tick = Tick {
        t,
        fps: (sent - last.sent) as f64 / dt,
        mbps: (c.bytes - last.bytes) as f64 / dt / 1e6,
        p50_ms: quantile_ms(&sec, 0.5),
        p99_ms: quantile_ms(&sec, 0.99),
        relay_cpu: cpu,
        rss_mb: mb(rss),
        groups: per_group,
    };
    if cfg.progress {
        progress_line(&tick, sent, &c, groups, stats, rss);
    }
    *last = Last {
        at: now,
        sent,
        bytes: c.bytes,
        cpu: cpu_now,
        group: std::mem::take(&mut last.group),
    };
    tick
}

/// The progress line of one tick on stderr.
fn progress_line(
    tick: &Tick,
    sent: u64,
    c: &Counts,
    groups: &[LiveGroup],
    stats: &[Arc<RecvStat>],
    rss: Option<u64>,
) {
    let expect = sent * stats.len() as u64;
    let alive = stats.iter().filter(|x| !x.done.load(Relaxed)).count();
    let by_group = if groups.len() > 1 {
        groups
            .iter()
            .zip(&tick.groups)
            .map(|((g, _, _), (m, p))| format!("  {} {m:.0} MB/s p99 {} ms", g.name, ms(*p, 0)))
            .collect::<String>()
    } else {
        String::new()
    };
    eprintln!(
        "  [{:>4.1}s] sent {:>6} ({:>6.1} fps)  delivered {:>8.1} MB/s  frac {:>7.3}%  p99 {:>7} ms  gaps {} dup {} ooo {} bad {}  rx {}/{}  relay cpu {} rss {}{by_group}",
        tick.t,
        sent,
        tick.fps,
        tick.mbps,
        if expect > 0 { c.delivered as f64 / expect as f64 * 100.0 } else { 0.0 },
        ms(tick.p99_ms, 2),
        c.missing,
        c.duplicate,
        c.out_of_order,
        c.corrupt,
        alive,
        stats.len(),
        tick.relay_cpu.map_or("  -".into(), |c| format!("{c:>3.0}%")),
        rss.map_or("-".into(), |r| format!("{:.0}MB", r as f64 / 1024.0)),
    );
}

/// Progress, once a second, until the source stops: the run's timeline.
async fn progress(
    cfg: &RunCfg,
    src: &Source,
    groups: &[LiveGroup],
    stats: &[Arc<RecvStat>],
    meter: &mut Meter<'_>,
    cpu0: Option<ProcSample>,
) -> Vec<Tick> {
    let mut last = Last {
        at: now_secs(),
        sent: 0,
        bytes: 0,
        cpu: cpu0,
        group: vec![0; groups.len()],
    };
    let mut timeline = Vec::new();
    let t_start = Instant::now();
    while !src.stopped() {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if now_secs() - last.at < 1.0 && !src.stopped() {
            continue;
        }
        let t = t_start.elapsed().as_secs_f64();
        timeline.push(tick(cfg, &src.sh, groups, stats, meter, &mut last, t));
    }
    timeline
}

/// Drain: until every live receiver has the last of `sent` frames, or the timeout.
async fn drain(cfg: &RunCfg, stats: &[Arc<RecvStat>], sent: u64) {
    let drain_until = Instant::now() + Duration::from_secs_f64(cfg.drain_secs);
    while Instant::now() < drain_until && stats.iter().any(|x| x.behind(sent)) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The source's figures: `sent` frames in `window` seconds to `receivers`.
fn summarize_rates(s: &mut Summary, sent: u64, window: f64, receivers: u64) {
    s.frames_sent = sent;
    s.window_s = window;
    s.fps_achieved = sent as f64 / window;
    let bytes = (sent * s.msg_bytes as u64) as f64;
    s.offered_mbps_per_rx = bytes / window / 1e6;
    s.offered_mbps_agg = bytes * receivers as f64 / window / 1e6;
    s.expected_frames = sent * receivers;
}

/// The relay's RSS per connection (from its RSS idle and connected, KiB,
/// and its peak) and the note on sampled hashing.
fn summarize_rest(s: &mut Summary, cfg: &RunCfg, rss: [Option<u64>; 2], peak: u64, n: u64) {
    if let [Some(i), Some(c)] = rss {
        if n > 0 {
            s.rss_per_conn_kib = Some(c.saturating_sub(i) as f64 / n as f64);
            s.rss_per_conn_peak_kib = Some(peak.saturating_sub(i) as f64 / n as f64);
        }
    }
    if cfg.check_every > 1 {
        s.notes.push(format!(
            "payload hash sampled: each receiver hashes every {}-th frame (all receivers together check every frame {}x over); headers, lengths, channel, index and order of every frame are checked",
            cfg.check_every,
            (n as f64 / cfg.check_every as f64).max(0.0)
        ));
    }
}

/// Connects the source of every channel in `names`.
async fn start_source(cfg: &RunCfg, target: Target, names: Vec<String>) -> Result<Source, String> {
    Source::connect(SourceCfg {
        target,
        channels: names,
        width: cfg.width,
        height: cfg.height,
        fps: cfg.fps,
        duration: Some(cfg.duration),
        record_sends: false,
    })
    .await
}

/// Ends the receivers and the source.
async fn stop(src: Source, tasks: Vec<JoinHandle<()>>) {
    for t in &tasks {
        t.abort();
    }
    src.finish().await;
    for t in tasks {
        let _ = t.await;
    }
}

/// Runs one scenario against `cfg.url`.
pub async fn run(cfg: &RunCfg) -> Summary {
    let mut s = new_summary(cfg);
    let (target, targets) = match targets_of(cfg) {
        Ok(t) => t,
        Err(e) => {
            s.notes.push(e.clone());
            s.source_error = Some(e);
            return s;
        }
    };
    s.msg_bytes = FrameTemplate::new(target.framing, cfg.width, cfg.height).msg_len;
    static RUN: AtomicU64 = AtomicU64::new(0);
    let run_id = format!("lt{}x{}", std::process::id(), RUN.fetch_add(1, Relaxed));
    let names: Vec<String> = (0..cfg.channels).map(|c| format!("{run_id}-{c}")).collect();
    let mut meter = Meter::new(cfg);
    s.relay_processes = meter.pids.len();
    let idle_rss = meter.rss();
    s.relay_idle_rss_mb = mb(idle_rss);

    let joins = connect(cfg, &targets, &names, &mut meter, &mut s).await;
    let (mut groups, tasks) = spawn_groups(cfg, target.framing, targets.len(), joins.ok);
    let stats: Vec<Arc<RecvStat>> = groups.iter().flat_map(|g| g.2.clone()).collect();

    let src = match start_source(cfg, target, names).await {
        Ok(src) => src,
        Err(e) => {
            eprintln!("  source failed: {e}");
            s.source_error = Some(e);
            for t in &tasks {
                t.abort();
            }
            return s;
        }
    };
    // Let the relay register every receiver before the first frame.
    tokio::time::sleep(Duration::from_millis(300 + cfg.receivers as u64 / 20)).await;
    let conn_rss = meter.rss();
    s.relay_connected_rss_mb = mb(conn_rss);
    let e0 = Edge::take(&meter);
    meter.watch_rss();
    src.go();
    let sh = src.sh.clone();

    s.timeline = progress(cfg, &src, &groups, &stats, &mut meter, e0.relay).await;
    // Window for rates and CPU: from go to the source's last send.
    let e1 = Edge::take(&meter);
    let per_rx_bytes: Vec<u64> = stats.iter().map(|x| x.counts(0).bytes).collect();
    let group_window_bytes: Vec<u64> = groups.iter().map(group_bytes).collect();
    let (st0, st1) = (*sh.start_s.lock().unwrap(), *sh.end_s.lock().unwrap());
    let window = (st1 - st0).max(1e-6);
    let sent = sh.sent.load(Relaxed);

    drain(cfg, &stats, sent).await;
    meter.rss();
    meter.watch_rss();
    s.relay_hwm_mb = mb(sys::sum_of(meter.pids, sys::hwm_kib));
    if !meter.pids.is_empty() {
        s.relay_rss_peak_mb = Some(meter.rss_peak as f64 / 1024.0);
    }
    stop(src, tasks).await;

    // Summary.
    s.source_error = sh.error.lock().unwrap().clone();
    let n = stats.len() as u64;
    summarize_rates(&mut s, sent, window, n);
    let all_hist = summarize_groups(cfg, &mut groups, sent, window, &group_window_bytes, &mut s);
    s.groups = groups.into_iter().map(|g| g.0).collect();
    summarize_receivers(&mut s, &stats, sent, &per_rx_bytes, window);
    summarize_latency(&mut s, all_hist, &sh);
    summarize_cpu(&mut s, &meter, &e0, &e1);
    s.receivers_ended = peer::ended_early(&stats);
    summarize_rest(&mut s, cfg, [idle_rss, conn_rss], meter.rss_peak, n);
    s
}

/// Judges and measures each group after `sent` frames over `window`
/// seconds, adds their totals to `s`: the latency of all groups merged.
fn summarize_groups(
    cfg: &RunCfg,
    groups: &mut [LiveGroup],
    sent: u64,
    window: f64,
    window_bytes: &[u64],
    s: &mut Summary,
) -> Histogram<u64> {
    let mut all_hist = peer::new_hist();
    let mut c = Counts::default();
    for (i, (g, lat, st)) in groups.iter_mut().enumerate() {
        let gc = peer::totals(st, sent);
        let expect = g.expect();
        c.add(&expect.failing(&gc));
        c.delivered += gc.delivered;
        c.other += gc.other;
        c.checked += gc.checked;
        g.counts = gc;
        g.skipped = expect.skipped(&gc);
        s.skipped += g.skipped;
        g.expected = sent * st.len() as u64;
        g.delivered = gc.delivered;
        g.fraction = if g.expected > 0 {
            g.delivered as f64 / g.expected as f64
        } else {
            0.0
        };
        let mut f: Vec<f64> = st
            .iter()
            .map(|x| x.counts(sent).delivered as f64 / sent.max(1) as f64)
            .collect();
        f.sort_by(f64::total_cmp);
        g.per_rx_fraction = [pct(&f, 0.0), pct(&f, 0.5), pct(&f, 1.0)];
        g.reached_last = st.iter().filter(|x| sent > 0 && x.next() >= sent).count();
        g.mbps = window_bytes[i] as f64 / window / 1e6;
        g.closed = peer::ended_early(st);
        let h = lat.hist.lock().unwrap();
        let q = |x: f64| h.value_at_quantile(x) as f64 / 1000.0;
        g.lat_ms = [q(0.5), q(0.9), q(0.99), q(0.999), h.max() as f64 / 1000.0];
        g.lat_count = h.len();
        let _ = all_hist.add(&*h);
        g.hist = Some(h.clone());
        if let Some(f) = starved(g, st, sent, cfg.slow_min_fraction) {
            s.group_failures.push(f);
        }
    }
    s.delivered_frames = c.delivered;
    s.missing = c.missing;
    s.duplicate = c.duplicate;
    s.out_of_order = c.out_of_order;
    s.corrupted = c.corrupt;
    s.foreign = c.other;
    s.checked = c.checked;
    all_hist
}

/// A slow group's receivers may be skipped forward, not starved: why not,
/// if some got no frame or fewer than `min_fraction` of the `sent`.
fn starved(g: &Group, st: &[Arc<RecvStat>], sent: u64, min_fraction: f64) -> Option<String> {
    if !g.gaps || sent == 0 {
        return None;
    }
    let floor = min_fraction.clamp(0.0, 1.0);
    let starved = st
        .iter()
        .filter(|x| {
            let d = x.counts(sent).delivered;
            d == 0 || (d as f64) < floor * sent as f64
        })
        .count();
    (starved > 0).then(|| {
        format!(
            "{starved} {} receiver(s) got no frame or fewer than {:.1}% of them",
            g.name,
            floor * 100.0
        )
    })
}

/// Per receiver: delivery and throughput over the window.
fn summarize_receivers(
    s: &mut Summary,
    stats: &[Arc<RecvStat>],
    sent: u64,
    per_rx_bytes: &[u64],
    window: f64,
) {
    s.delivered_fraction = if s.expected_frames > 0 {
        s.delivered_frames as f64 / s.expected_frames as f64
    } else {
        0.0
    };
    let delivered: Vec<u64> = stats.iter().map(|x| x.counts(sent).delivered).collect();
    s.receivers_all_frames = delivered.iter().filter(|&&d| d == sent && sent > 0).count();
    s.delivered_mbps_agg = per_rx_bytes.iter().sum::<u64>() as f64 / window / 1e6;
    let mut v: Vec<f64> = per_rx_bytes
        .iter()
        .map(|&b| b as f64 / window / 1e6)
        .collect();
    v.sort_by(f64::total_cmp);
    s.per_rx_mbps = [pct(&v, 0.0), pct(&v, 0.5), pct(&v, 1.0)];
    let mut f: Vec<f64> = delivered
        .iter()
        .map(|&d| {
            if sent == 0 {
                0.0
            } else {
                d as f64 / sent as f64
            }
        })
        .collect();
    f.sort_by(f64::total_cmp);
    s.per_rx_fraction = [pct(&f, 0.0), pct(&f, 0.5), pct(&f, 1.0)];
}

/// Delivery latency (all groups merged) and the source's pacing lateness.
fn summarize_latency(s: &mut Summary, all_hist: Histogram<u64>, sh: &SourceShared) {
    {
        let h = &all_hist;
        let q = |x: f64| h.value_at_quantile(x) as f64 / 1000.0;
        s.lat_ms = [q(0.5), q(0.9), q(0.99), q(0.999), h.max() as f64 / 1000.0];
        s.lat_mean_ms = h.mean() / 1000.0;
        s.lat_count = h.len();
    }
    s.lat_hist = Some(all_hist);
    let h = sh.late.lock().unwrap();
    let q = |x: f64| h.value_at_quantile(x) as f64 / 1000.0;
    s.pacing_late_ms = [q(0.5), q(0.99), h.max() as f64 / 1000.0];
}

/// CPU over the window between `e0` and `e1`: the relays', the driver's,
/// every other process's on the machine, each watched one's (with its peak RSS).
fn summarize_cpu(s: &mut Summary, m: &Meter, e0: &Edge, e1: &Edge) {
    let since = |a: &Option<ProcSample>, b: &Option<ProcSample>| match (a, b) {
        (Some(a), Some(b)) => Some(a.cpu_pct_since(b)),
        _ => None,
    };
    s.relay_cpu_pct = since(&e1.relay, &e0.relay);
    s.driver_cpu_pct = since(&e1.me, &e0.me);
    // Everything else the machine ran meanwhile (its cores are shared).
    if let (Some(b1), Some(b0), Some(m1), Some(m0)) = (e1.busy, e0.busy, e1.me, e0.me) {
        let relay = match (e1.relay, e0.relay) {
            (Some(a), Some(b)) => a.ticks.saturating_sub(b.ticks),
            _ => 0,
        };
        // Watched processes that are not relays (a cluster's nats-server).
        let watched: u64 = m
            .watch
            .iter()
            .zip(e0.watch.iter().zip(&e1.watch))
            .filter(|((_, p), _)| !m.pids.contains(p))
            .filter_map(|(_, (a, b))| Some(b.as_ref()?.ticks.saturating_sub(a.as_ref()?.ticks)))
            .sum();
        let dt = m1.at - m0.at;
        if dt > 0.0 && !m.pids.is_empty() {
            let others = b1
                .saturating_sub(b0)
                .saturating_sub(relay)
                .saturating_sub(watched)
                .saturating_sub(m1.ticks.saturating_sub(m0.ticks));
            s.others_cpu_pct = Some(others as f64 / sys::ticks_per_sec() / dt * 100.0);
        }
    }
    s.watched = m
        .watch
        .iter()
        .zip(e0.watch.iter().zip(&e1.watch))
        .zip(&m.watched_peak)
        .map(|(((name, _), (a, b)), &peak)| Watched {
            name: name.clone(),
            cpu_pct: since(b, a),
            rss_peak_mb: (peak > 0).then_some(peak as f64 / 1024.0),
        })
        .collect();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run that passes: 50 frames sent, nothing wrong.
    fn clean() -> Summary {
        Summary {
            frames_sent: 50,
            ..Summary::default()
        }
    }

    #[test]
    fn a_clean_run_passes_every_check() {
        let v = clean().verdict();
        assert!(v.passed(), "{:?}", v.failures());
        assert_eq!(v.checks().len(), 6);
    }

    /// Spoils a summary.
    type Edit = fn(&mut Summary);

    #[test]
    fn each_defect_fails_its_own_check() {
        let cases: [(Edit, &str); 8] = [
            (
                |s| s.corrupted = 2,
                "FAIL frames: missing 0, duplicate 0, out-of-order 0, corrupt 2",
            ),
            (
                |s| s.missing = 1,
                "FAIL frames: missing 1, duplicate 0, out-of-order 0, corrupt 0",
            ),
            (
                |s| s.connect_failures = 3,
                "FAIL receivers connected: 3 failed to connect",
            ),
            (
                |s| {
                    s.receivers_ended
                        .insert("closed by relay with 3008".into(), 4);
                },
                "FAIL receivers ended early: 4 (closed by relay with 3008 ×4)",
            ),
            (|s| s.frames_sent = 0, "FAIL frames sent: 0"),
            (
                |s| s.source_error = Some("closed".into()),
                "FAIL source: failed: closed",
            ),
            (
                |s| s.relay_exit = Some("signal 9".into()),
                "FAIL relay: exited: signal 9",
            ),
            (
                |s| {
                    s.group_failures
                        .push("2 slow receiver(s) got no frame".into())
                },
                "FAIL slow receivers: 2 slow receiver(s) got no frame",
            ),
        ];
        for (edit, line) in cases {
            let mut s = clean();
            edit(&mut s);
            assert_eq!(s.verdict().failures(), [line]);
            assert_eq!(s.verdict().exit_code(), 1);
        }
    }

    #[test]
    fn rates_are_over_the_send_window() {
        let mut s = Summary {
            msg_bytes: 1_000_000,
            ..Summary::default()
        };
        summarize_rates(&mut s, 20, 2.0, 4);
        assert_eq!(s.frames_sent, 20);
        assert_eq!(s.fps_achieved, 10.0);
        assert_eq!(s.offered_mbps_per_rx, 10.0);
        assert_eq!(s.offered_mbps_agg, 40.0);
        assert_eq!(s.expected_frames, 80);
    }
}
