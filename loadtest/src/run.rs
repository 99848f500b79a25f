//! One run of a scenario against one relay URL: connect the receivers,
//! start the source, report progress each second, drain, summarize, and
//! judge whether every frame arrived intact, once and in order.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::peer::{self, RecvCfg, Sample, Sink, Source, SourceCfg, Target};
use crate::sys::{self, ProcSample};
use crate::verify::Counts;
use crate::wire::FrameTemplate;
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
    /// Relay process to measure.
    pub relay_pid: Option<u32>,
    /// Name of the relay in reports.
    pub label: String,
    /// Bytes per read syscall (one buffer per driver thread).
    pub read_buf: usize,
    /// Print progress to stderr.
    pub progress: bool,
}

impl RunCfg {
    /// Bytes of one protocol message.
    pub fn msg_bytes(&self) -> usize {
        self.width as usize * self.height as usize * 4 + 16
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
    pub relay_hwm_mb: Option<f64>,
    pub relay_rss_peak_mb: Option<f64>,
    pub relay_idle_rss_mb: Option<f64>,
    pub relay_connected_rss_mb: Option<f64>,
    pub rss_per_conn_kib: Option<f64>,
    pub rss_per_conn_peak_kib: Option<f64>,
    pub receivers_ended: BTreeMap<String, u64>,
    pub relay_exit: Option<String>,
    pub source_error: Option<String>,
    pub notes: Vec<String>,
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

    /// Why the run failed, if it did: a frame missing, corrupt, duplicated
    /// or out of order, a receiver that failed to connect or ended early, no
    /// frame sent, the source failing, or the relay exiting.
    pub fn failed(&self) -> bool {
        !self.counts().clean()
            || self.connect_failures > 0
            || self.ended_early() > 0
            || self.frames_sent == 0
            || self.source_error.is_some()
            || self.relay_exit.is_some()
    }

    /// One line naming every count that decides [`Summary::failed`].
    pub fn integrity(&self) -> String {
        let mut l = format!(
            "{}; receivers failed to connect {}, ended early {}; frames sent {}",
            self.counts().defects(),
            self.connect_failures,
            self.ended_early(),
            self.frames_sent
        );
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

fn mb(kib: Option<u64>) -> Option<f64> {
    kib.map(|k| k as f64 / 1024.0)
}

/// Runs one scenario against `cfg.url`.
pub async fn run(cfg: &RunCfg) -> Summary {
    let mut s = Summary {
        label: cfg.label.clone(),
        scenario: cfg.scenario.name().into(),
        url: cfg.url.clone(),
        receivers_target: cfg.receivers,
        channels: cfg.channels,
        width: cfg.width,
        height: cfg.height,
        fps_target: cfg.fps,
        check_every: cfg.check_every,
        ..Default::default()
    };
    let target = match Target::parse(&cfg.url) {
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
    let pid = cfg.relay_pid;
    let idle_rss = pid.and_then(sys::rss_kib);
    s.relay_idle_rss_mb = mb(idle_rss);
    let mut rss_peak = idle_rss.unwrap_or(0);

    // Receivers, in batches.
    let t_conn = Instant::now();
    let mut conn_cpu = pid.and_then(ProcSample::take);
    let overflows0 = sys::tcpext("ListenOverflows");
    let joins = peer::join_receivers(&target, &names, cfg.receivers, cfg.connect_batch, |j| {
        if !cfg.progress || cfg.receivers < 2000 {
            return;
        }
        let c = pid.and_then(ProcSample::take);
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
            pid.and_then(sys::rss_kib)
                .map_or("-".into(), |r| format!("{:.0}MB", r as f64 / 1024.0)),
        );
    })
    .await;
    s.connect_secs = t_conn.elapsed().as_secs_f64();
    if let (Some(a), Some(b)) = (sys::tcpext("ListenOverflows"), overflows0) {
        s.listen_overflows = a.saturating_sub(b);
    }
    s.connect_failures = joins.failures;
    s.connect_error = joins.first_error;
    s.receivers_connected = joins.ok.len();
    if let Some(e) = &s.connect_error {
        eprintln!(
            "  {} receivers failed to connect; first error: {e}",
            s.connect_failures
        );
    }
    let lat = Arc::new(Latency {
        hist: Mutex::new(peer::new_hist()),
        ihist: Mutex::new(peer::new_hist()),
    });
    let rcfg = RecvCfg {
        framing: target.framing,
        check_every: cfg.check_every,
        read_buf: cfg.read_buf,
    };
    let (stats, tasks) = peer::spawn_receivers(joins.ok, rcfg, &lat);

    // Source.
    let src = Source::connect(SourceCfg {
        target,
        channels: names,
        width: cfg.width,
        height: cfg.height,
        fps: cfg.fps,
        duration: Some(cfg.duration),
        record_sends: false,
    })
    .await;
    let src = match src {
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
    let conn_rss = pid.and_then(sys::rss_kib);
    s.relay_connected_rss_mb = mb(conn_rss);
    if let Some(r) = conn_rss {
        rss_peak = rss_peak.max(r);
    }
    let cpu0 = pid.and_then(ProcSample::take);
    let me0 = ProcSample::take(std::process::id());
    src.go();
    let sh = src.sh.clone();

    // Progress, once a second, until the source stops.
    let mut last = (now_secs(), 0u64, 0u64, cpu0);
    let t_start = Instant::now();
    while !src.stopped() {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = now_secs();
        if now - last.0 < 1.0 && !src.stopped() {
            continue;
        }
        let sent = sh.sent.load(Relaxed);
        let c = peer::totals(&stats, 0);
        let alive = stats.iter().filter(|x| !x.done.load(Relaxed)).count();
        let dt = now - last.0;
        let p99 = {
            let mut h = lat.ihist.lock().unwrap();
            let v = h.value_at_quantile(0.99) as f64 / 1000.0;
            h.reset();
            v
        };
        let cpu_now = pid.and_then(ProcSample::take);
        let cpu = match (cpu_now, last.3) {
            (Some(a), Some(b)) => format!("{:>3.0}%", a.cpu_pct_since(&b)),
            _ => "  -".into(),
        };
        let rss = pid.and_then(sys::rss_kib);
        if let Some(r) = rss {
            rss_peak = rss_peak.max(r);
        }
        if cfg.progress {
            let expect = sent * stats.len() as u64;
            eprintln!(
                "  [{:>4.1}s] sent {:>6} ({:>6.1} fps)  delivered {:>8.1} MB/s  frac {:>7.3}%  p99 {:>7.2} ms  gaps {} dup {} ooo {} bad {}  rx {}/{}  relay cpu {} rss {}",
                t_start.elapsed().as_secs_f64(),
                sent,
                (sent - last.1) as f64 / dt,
                (c.bytes - last.2) as f64 / dt / 1e6,
                if expect > 0 { c.delivered as f64 / expect as f64 * 100.0 } else { 0.0 },
                p99,
                c.missing,
                c.duplicate,
                c.out_of_order,
                c.corrupt,
                alive,
                stats.len(),
                cpu,
                rss.map_or("-".into(), |r| format!("{:.0}MB", r as f64 / 1024.0)),
            );
        }
        last = (now, sent, c.bytes, cpu_now);
    }
    // Window for rates and CPU: from go to the source's last send.
    let cpu1 = pid.and_then(ProcSample::take);
    let me1 = ProcSample::take(std::process::id());
    let per_rx_bytes: Vec<u64> = stats.iter().map(|x| x.counts(0).bytes).collect();
    let bytes_in_window: u64 = per_rx_bytes.iter().sum();
    let (st0, st1) = (*sh.start_s.lock().unwrap(), *sh.end_s.lock().unwrap());
    let window = (st1 - st0).max(1e-6);
    let sent = sh.sent.load(Relaxed);

    // Drain: until every live receiver has the last frame, or the timeout.
    let drain_until = Instant::now() + Duration::from_secs_f64(cfg.drain_secs);
    while Instant::now() < drain_until && stats.iter().any(|x| x.behind(sent)) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if let Some(r) = pid.and_then(sys::rss_kib) {
        rss_peak = rss_peak.max(r);
    }
    s.relay_hwm_mb = mb(pid.and_then(sys::hwm_kib));
    if pid.is_some() {
        s.relay_rss_peak_mb = Some(rss_peak as f64 / 1024.0);
    }
    for t in &tasks {
        t.abort();
    }
    src.finish().await;
    for t in tasks {
        let _ = t.await;
    }

    // Summary.
    s.source_error = sh.error.lock().unwrap().clone();
    s.frames_sent = sent;
    s.window_s = window;
    s.fps_achieved = sent as f64 / window;
    let n = stats.len() as u64;
    s.offered_mbps_per_rx = (sent * s.msg_bytes as u64) as f64 / window / 1e6;
    s.offered_mbps_agg = (sent * s.msg_bytes as u64) as f64 * n as f64 / window / 1e6;
    s.expected_frames = sent * n;
    let c = peer::totals(&stats, sent);
    s.delivered_frames = c.delivered;
    s.missing = c.missing;
    s.duplicate = c.duplicate;
    s.out_of_order = c.out_of_order;
    s.corrupted = c.corrupt;
    s.foreign = c.other;
    s.checked = c.checked;
    s.delivered_fraction = if s.expected_frames > 0 {
        s.delivered_frames as f64 / s.expected_frames as f64
    } else {
        0.0
    };
    let delivered: Vec<u64> = stats.iter().map(|x| x.counts(sent).delivered).collect();
    s.receivers_all_frames = delivered.iter().filter(|&&d| d == sent && sent > 0).count();
    s.delivered_mbps_agg = bytes_in_window as f64 / window / 1e6;
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
    {
        let h = lat.hist.lock().unwrap();
        let q = |x: f64| h.value_at_quantile(x) as f64 / 1000.0;
        s.lat_ms = [q(0.5), q(0.9), q(0.99), q(0.999), h.max() as f64 / 1000.0];
        s.lat_mean_ms = h.mean() / 1000.0;
        s.lat_count = h.len();
    }
    {
        let h = sh.late.lock().unwrap();
        let q = |x: f64| h.value_at_quantile(x) as f64 / 1000.0;
        s.pacing_late_ms = [q(0.5), q(0.99), h.max() as f64 / 1000.0];
    }
    if let (Some(a), Some(b)) = (cpu1, cpu0) {
        s.relay_cpu_pct = Some(a.cpu_pct_since(&b));
    }
    if let (Some(a), Some(b)) = (me1, me0) {
        s.driver_cpu_pct = Some(a.cpu_pct_since(&b));
    }
    if let (Some(i), Some(c)) = (idle_rss, conn_rss) {
        if n > 0 {
            s.rss_per_conn_kib = Some(c.saturating_sub(i) as f64 / n as f64);
            s.rss_per_conn_peak_kib = Some(rss_peak.saturating_sub(i) as f64 / n as f64);
        }
    }
    s.receivers_ended = peer::ended_early(&stats);
    if cfg.check_every > 1 {
        s.notes.push(format!(
            "payload hash sampled: each receiver hashes every {}-th frame (all receivers together check every frame {}x over); headers, lengths, channel, index and order of every frame are checked",
            cfg.check_every,
            (n as f64 / cfg.check_every as f64).max(0.0)
        ));
    }
    s
}
