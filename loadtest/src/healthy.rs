//! The healthy stream that `chaos` and `hostile` measure while other
//! clients attack the relay: N verified receivers of one channel (on the
//! caller's runtime) and a paced source (its own thread), every delivered
//! frame's latency filed under the phase the frame was *sent* in; and the
//! once-a-second progress line with the relay's CPU and RSS from /proc.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::now_ns;
use crate::peer::{self, RecvCfg, RecvStat, Sample, Sink, Source, SourceCfg, SourceShared, Target};
use crate::report::{mb, opt};
use crate::sys::{self, ProcSample};
use crate::verify::Counts;
use crate::wire::Framing;

/// The healthy stream's options (shared by `chaos` and `hostile`).
#[derive(clap::Args, Clone, Debug)]
pub struct StreamOpts {
    /// Healthy receivers.
    #[arg(long, default_value_t = 16)]
    pub receivers: usize,
    /// Frame width.
    #[arg(long, default_value_t = 640)]
    pub width: u16,
    /// Frame height.
    #[arg(long, default_value_t = 360)]
    pub height: u16,
    /// Frames per second of the healthy stream.
    #[arg(long, default_value_t = 30.0)]
    pub fps: f64,
    /// Longest wait for the healthy receivers' last frames after the source stops, seconds.
    #[arg(long, default_value_t = 3.0)]
    pub drain: f64,
}

impl StreamOpts {
    /// Bytes of one healthy message (protocol header + RGBA payload).
    pub fn msg_bytes(&self) -> usize {
        self.width as usize * self.height as usize * 4 + 16
    }
}

/// Where each phase began (ns since the epoch; phase 0 from the start).
pub struct PhaseClock {
    starts: Vec<AtomicU64>,
}

impl PhaseClock {
    /// `n` phases, phase 0 running.
    pub fn new(n: usize) -> Self {
        Self {
            starts: (0..n.max(1)).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Phase `p` begins now.
    pub fn begin(&self, p: usize) {
        self.starts[p].store(now_ns(), Relaxed);
    }

    /// The phase a moment (ns since the epoch) belongs to: the last one
    /// begun at or before it.
    pub fn of(&self, ns: u64) -> usize {
        (1..self.starts.len())
            .rev()
            .find(|&p| {
                let s = self.starts[p].load(Relaxed);
                s != 0 && ns >= s
            })
            .unwrap_or(0)
    }

    /// How many phases.
    pub fn len(&self) -> usize {
        self.starts.len()
    }
}

/// Latency of the frames sent in one phase, ms.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Lat {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Slowest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
    /// Frames × receivers measured.
    pub samples: u64,
}

impl Lat {
    fn of(h: &Histogram<u64>) -> Self {
        let q = |x: f64| h.value_at_quantile(x) as f64 / 1000.0;
        Lat {
            p50: q(0.5),
            p99: q(0.99),
            p999: q(0.999),
            max: h.max() as f64 / 1000.0,
            mean: h.mean() / 1000.0,
            samples: h.len(),
        }
    }

    /// As a report's JSON.
    pub fn json(&self) -> Value {
        json!({"p50": self.p50, "p99": self.p99, "p99_9": self.p999, "max": self.max, "mean": self.mean, "samples": self.samples})
    }
}

/// What the healthy receivers measured, by phase (their [`Sink`]).
pub struct Tally {
    /// The phases.
    pub clock: Arc<PhaseClock>,
    /// Latency by the phase the frame was sent in.
    hist: Mutex<Vec<Histogram<u64>>>,
    /// Latency since the last progress line.
    sec: Mutex<Histogram<u64>>,
    /// Per frame index: (min, max) latency over the healthy receivers, µs.
    per_frame: Mutex<Vec<(u64, u64)>>,
    /// Corrupt frames by the phase they arrived in.
    corrupt: Vec<AtomicU64>,
}

impl Sink for Tally {
    fn record(&self, delivered: &[Sample]) {
        let mut h = self.hist.lock().unwrap();
        let mut sec = self.sec.lock().unwrap();
        let mut pf = self.per_frame.lock().unwrap();
        for d in delivered {
            h[self.clock.of(d.send_ns)].saturating_record(d.lat_us);
            sec.saturating_record(d.lat_us);
            if d.idx < 10_000_000 {
                if pf.len() <= d.idx as usize {
                    pf.resize(d.idx as usize + 1, (u64::MAX, 0));
                }
                let e = &mut pf[d.idx as usize];
                *e = (e.0.min(d.lat_us), e.1.max(d.lat_us));
            }
        }
    }

    fn corrupt(&self, n: u64) {
        self.corrupt[self.clock.of(now_ns())].fetch_add(n, Relaxed);
    }
}

impl Tally {
    fn new(clock: Arc<PhaseClock>) -> Self {
        let n = clock.len();
        Self {
            clock,
            hist: Mutex::new((0..n).map(|_| peer::new_hist()).collect()),
            sec: Mutex::new(peer::new_hist()),
            per_frame: Mutex::new(Vec::new()),
            corrupt: (0..n).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// (p99, max) ms since the last call.
    pub fn take_second(&self) -> (f64, f64) {
        let mut s = self.sec.lock().unwrap();
        let v = (
            s.value_at_quantile(0.99) as f64 / 1000.0,
            s.max() as f64 / 1000.0,
        );
        s.reset();
        v
    }

    /// Per frame index: (fastest, slowest) receiver's latency, µs.
    pub fn per_frame(&self) -> MutexGuard<'_, Vec<(u64, u64)>> {
        self.per_frame.lock().unwrap()
    }
}

/// The delivery of one phase's frames.
#[derive(Debug, Clone, Copy, Default)]
pub struct PhaseFrames {
    /// Frames the source sent in the phase.
    pub sent: u64,
    /// `sent` × receivers.
    pub expected: u64,
    /// Of those, delivered intact (each receiver, each frame).
    pub delivered: u64,
    /// Corrupt frames that arrived during the phase.
    pub corrupt: u64,
    /// Latency of the frames sent in the phase.
    pub lat: Lat,
}

impl PhaseFrames {
    /// Delivered ÷ expected.
    pub fn fraction(&self) -> f64 {
        if self.expected > 0 {
            self.delivered as f64 / self.expected as f64
        } else {
            0.0
        }
    }
}

/// The healthy stream, running.
pub struct Stream {
    /// The receivers' measurements.
    pub tally: Arc<Tally>,
    /// One per receiver.
    pub stats: Vec<Arc<RecvStat>>,
    tasks: Vec<JoinHandle<()>>,
    src: Source,
}

/// The healthy stream, stopped: its totals.
pub struct Finished {
    /// Frames the source sent.
    pub sent: u64,
    /// Healthy receivers.
    pub receivers: u64,
    /// Send time of each frame (ns since the epoch).
    pub send_ns: Vec<u64>,
    /// The phase each frame was sent in.
    pub phase_of: Vec<usize>,
    /// Delivery by phase.
    pub phases: Vec<PhaseFrames>,
    /// Receivers that got every frame.
    pub all_frames: usize,
    /// The lowest fraction of the frames any receiver got.
    pub per_rx_min: f64,
    /// The receivers' totals.
    pub counts: Counts,
    /// Why receivers ended early, with how many ended so.
    pub ended: BTreeMap<String, u64>,
    /// Source pacing lateness p50 / p99 / max, ms.
    pub late_ms: [f64; 3],
    /// The source's state (error, inputs it got).
    pub source: Arc<SourceShared>,
    /// The receivers' measurements.
    pub tally: Arc<Tally>,
}

impl Stream {
    /// Connects `o.receivers` receivers of `live` and its source (which
    /// waits for [`Stream::go`]), measuring `phases` phases.
    pub async fn start(
        target: &Target,
        live: &str,
        o: &StreamOpts,
        phases: usize,
    ) -> Result<Stream, String> {
        let tally = Arc::new(Tally::new(Arc::new(PhaseClock::new(phases))));
        let live_ch = [live.to_owned()];
        let joins = peer::join_receivers(
            std::slice::from_ref(target),
            &live_ch,
            o.receivers,
            o.receivers,
            |_| {},
        )
        .await;
        if let Some(e) = joins.first_error {
            return Err(format!(
                "{} of {} healthy receivers failed to connect; first: {e}",
                joins.failures, o.receivers
            ));
        }
        let rcfg = RecvCfg {
            framing: Framing::Ws,
            check_every: 1,
            read_buf: 256 * 1024,
            rate: None,
            client: peer::Client::Lean,
        };
        let (stats, tasks) = peer::spawn_receivers(joins.ok, rcfg, &tally);
        // Paced, every send time kept (for the phases), until stopped.
        let src = Source::connect(SourceCfg {
            target: target.clone(),
            channels: live_ch.to_vec(),
            width: o.width,
            height: o.height,
            fps: o.fps.max(0.1),
            duration: None,
            record_sends: true,
        })
        .await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok(Stream {
            tally,
            stats,
            tasks,
            src,
        })
    }

    /// Starts sending.
    pub fn go(&self) {
        self.src.go();
    }

    /// Frames sent so far.
    pub fn sent(&self) -> u64 {
        self.src.sh.sent.load(Relaxed)
    }

    /// Frames the receivers have reached (highest index + 1, summed) ÷ frames sent to them.
    pub fn reached(&self) -> f64 {
        let sent = self.sent();
        let intact: u64 = self.stats.iter().map(|s| s.next()).sum();
        if sent > 0 {
            intact as f64 / (sent * self.stats.len() as u64) as f64
        } else {
            0.0
        }
    }

    /// Stops the source and waits up to `drain` s for the receivers to get
    /// its last frames; they stay connected until [`Stream::finish`].
    pub async fn stop(&self, drain: f64) {
        self.src.sh.stop.store(true, Relaxed);
        while !self.src.stopped() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let sent = self.sent();
        let until = Instant::now() + Duration::from_secs_f64(drain);
        while Instant::now() < until && self.stats.iter().any(|s| s.behind(sent)) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Closes the receivers and the source; the totals.
    pub async fn finish(self) -> Finished {
        for t in &self.tasks {
            t.abort();
        }
        let source = self.src.sh.clone();
        self.src.finish().await;
        let sent = source.sent.load(Relaxed);
        let send_ns: Vec<u64> = source.send_ns.lock().unwrap()[..sent as usize].to_vec();
        let clock = &self.tally.clock;
        let phase_of: Vec<usize> = send_ns.iter().map(|&t| clock.of(t)).collect();
        let lat: Vec<Lat> = self
            .tally
            .hist
            .lock()
            .unwrap()
            .iter()
            .map(Lat::of)
            .collect();
        let n = self.stats.len() as u64;
        let mut phases: Vec<PhaseFrames> = (0..clock.len())
            .map(|p| PhaseFrames {
                corrupt: self.tally.corrupt[p].load(Relaxed),
                lat: lat[p],
                ..Default::default()
            })
            .collect();
        for &p in &phase_of {
            phases[p].sent += 1;
            phases[p].expected += n;
        }
        let (mut all_frames, mut per_rx_min) = (0, f64::INFINITY);
        for s in &self.stats {
            let v = s.v.lock().unwrap();
            let mut mine = 0u64;
            for (i, &p) in phase_of.iter().enumerate() {
                if v.has(i as u64) {
                    phases[p].delivered += 1;
                    mine += 1;
                }
            }
            all_frames += usize::from(mine == sent);
            per_rx_min = per_rx_min.min(if sent > 0 {
                mine as f64 / sent as f64
            } else {
                0.0
            });
        }
        let late_ms = {
            let h = source.late.lock().unwrap();
            [
                h.value_at_quantile(0.5) as f64 / 1000.0,
                h.value_at_quantile(0.99) as f64 / 1000.0,
                h.max() as f64 / 1000.0,
            ]
        };
        Finished {
            sent,
            receivers: n,
            send_ns,
            phase_of,
            phases,
            all_frames,
            per_rx_min,
            counts: peer::totals(&self.stats, sent),
            ended: peer::ended_early(&self.stats),
            late_ms,
            source,
            tally: self.tally,
        }
    }
}

/// CPU use between two samples, % of one core.
pub fn cpu_between(a: Option<ProcSample>, b: Option<ProcSample>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(b.cpu_pct_since(&a)),
        _ => None,
    }
}

/// One second of a run, as the progress line says it.
pub struct Tick {
    /// Seconds since the stream started.
    pub t: f64,
    /// Phase number.
    pub phase: usize,
    /// Healthy p99 over the second, ms.
    pub p99_ms: f64,
    /// Healthy max over the second, ms.
    pub max_ms: f64,
    /// Relay CPU %.
    pub relay_cpu: Option<f64>,
    /// Relay RSS, MB.
    pub rss_mb: Option<f64>,
    /// Attacking connections open.
    pub hostile_open: usize,
    /// Driver CPU %.
    pub driver_cpu: Option<f64>,
}

impl Tick {
    /// As the report's timeline JSON.
    pub fn json(&self, names: &[&str]) -> Value {
        json!({"t": self.t, "phase": names[self.phase], "p99_ms": self.p99_ms, "max_ms": self.max_ms,
            "relay_cpu": self.relay_cpu, "rss_MB": self.rss_mb, "hostile_open": self.hostile_open, "driver_cpu": self.driver_cpu})
    }
}

/// Watches a run: the relay's RSS 4 times a second, a progress line and a
/// [`Tick`] every second.
pub struct Monitor<'a> {
    stream: &'a Stream,
    pid: Option<u32>,
    names: &'a [&'a str],
    open: &'a (dyn Fn() -> usize + Sync),
    t_go: Instant,
    /// Every second so far.
    pub ticks: Vec<Tick>,
}

impl<'a> Monitor<'a> {
    /// A monitor of `stream` and the relay `pid`, from now; `names` of the
    /// phases; `open` counts the attacking connections.
    pub fn new(
        stream: &'a Stream,
        pid: Option<u32>,
        names: &'a [&'a str],
        open: &'a (dyn Fn() -> usize + Sync),
    ) -> Self {
        Self {
            stream,
            pid,
            names,
            open,
            t_go: Instant::now(),
            ticks: Vec::new(),
        }
    }

    /// Samples phase `phase` for `secs`; the highest RSS seen goes to `rss_peak` (KiB).
    pub async fn watch_for(&mut self, phase: usize, secs: f64, rss_peak: &mut u64) {
        let end = Instant::now() + Duration::from_secs_f64(secs);
        self.watch(phase, rss_peak, tokio::time::sleep_until(end))
            .await;
    }

    /// Samples phase `phase` until `until` is ready (then one last tick);
    /// the highest RSS seen goes to `rss_peak` (KiB).
    pub async fn watch<F: Future>(
        &mut self,
        phase: usize,
        rss_peak: &mut u64,
        until: F,
    ) -> F::Output {
        let me = std::process::id();
        let rss_of = || self.pid.and_then(sys::rss_kib);
        let mut last = (
            Instant::now(),
            self.pid.and_then(ProcSample::take),
            ProcSample::take(me),
        );
        tokio::pin!(until);
        loop {
            let out = tokio::select! {
                out = &mut until => Some(out),
                _ = tokio::time::sleep(Duration::from_millis(250)) => None,
            };
            if let Some(r) = rss_of() {
                *rss_peak = (*rss_peak).max(r);
            }
            if out.is_none() && last.0.elapsed() < Duration::from_secs(1) {
                continue;
            }
            let (c, d) = (self.pid.and_then(ProcSample::take), ProcSample::take(me));
            let (p99, max) = self.stream.tally.take_second();
            let tk = Tick {
                t: self.t_go.elapsed().as_secs_f64(),
                phase,
                p99_ms: p99,
                max_ms: max,
                relay_cpu: cpu_between(last.1, c),
                rss_mb: mb(rss_of()),
                hostile_open: (self.open)(),
                driver_cpu: cpu_between(last.2, d),
            };
            eprintln!(
                "  [{:>5.1}s {:<8}] sent {:>5}  healthy next/sent {:>6.2}%  p99 {:>7.2} ms  max {:>7.2} ms  relay cpu {:>4}%  rss {:>6} MB  hostile open {:>5}  driver cpu {:>4}%",
                tk.t,
                self.names[phase],
                self.stream.sent(),
                self.stream.reached() * 100.0,
                tk.p99_ms,
                tk.max_ms,
                opt(tk.relay_cpu, 0),
                opt(tk.rss_mb, 1),
                tk.hostile_open,
                opt(tk.driver_cpu, 0),
            );
            self.ticks.push(tk);
            last = (Instant::now(), c, d);
            if let Some(out) = out {
                return out;
            }
        }
    }
}
