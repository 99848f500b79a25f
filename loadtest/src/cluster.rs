//! `loadtest cluster`: one load on a single relay and on a cluster of
//! relays over NATS, round by round, and what the cluster costs against
//! the single node.
//!
//! Each round runs the same stream (default: one 640×360 RGBA channel at
//! 30 fps, 64 receivers, every frame hashed and checked in order) twice,
//! the order alternating between rounds:
//!
//! - *single*: one `bitstream-relay`, the source and every receiver on it;
//! - *cluster*: `nats-server -js` and `--nodes` relays (`--nats-url`,
//!   `--node-id n1`, `n2`, …, each on its own port), the source on `n1`
//!   and the receivers spread round-robin over all the nodes, so frames
//!   reach the receivers of `n2`, `n3`, … through NATS.
//!
//! Every relay and the NATS server are pinned to `--relay-cpu`, the driver
//! to `--driver-cpu`. Reported per run: delivery, latency overall, on the
//! source's node (*local*) and on the others (*remote*), relay CPU and
//! RSS summed over the nodes (and per node), nats-server CPU and RSS, the
//! NATS traffic (`/varz`) and each node's `relay_cluster_*` counters; then
//! the cluster ÷ single ratios with their spread over the rounds. The
//! command fails (exit 1) if any run of either setup loses, damages,
//! repeats or reorders a frame, or a process could not start or exited.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::nats::{self, Nats, Traffic};
use crate::peer::{self, Target};
use crate::probe::http_get;
use crate::relays::{self, Paths, RelayKind, RelayProc};
use crate::report::{self, median};
use crate::run::{self, RunCfg, Summary};
use crate::verdict::Verdict;
use crate::{charts, sys, Scenario};

/// `loadtest cluster` options.
#[derive(Args, Clone, Debug)]
pub struct ClusterOpts {
    /// Rounds; each runs the single relay and the cluster once, the order alternating.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Seconds the source sends in each run.
    #[arg(long, visible_alias = "duration", default_value_t = 10.0)]
    pub seconds: f64,
    /// Receivers in total, spread round-robin over the nodes (all on the one relay in the single run).
    #[arg(long, default_value_t = 64)]
    pub receivers: usize,
    /// Relays in the cluster; the source is on the first.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Frame width in pixels.
    #[arg(long, default_value_t = 640)]
    pub width: u16,
    /// Frame height in pixels.
    #[arg(long, default_value_t = 360)]
    pub height: u16,
    /// Frames per second per channel.
    #[arg(long, default_value_t = 30.0)]
    pub fps: f64,
    /// Channels (one source each, all on the first node).
    #[arg(long, default_value_t = 1)]
    pub channels: usize,
    /// Longest wait for in-flight frames after the source stops, seconds.
    #[arg(long, default_value_t = 3.0)]
    pub drain: f64,
    /// Tokio worker threads for the receivers (the source has its own thread).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// KiB per read syscall (one buffer per driver thread).
    #[arg(long, default_value_t = 256)]
    pub read_buf_kib: usize,
    /// Output directory (a `cluster-STAMP/` folder is made in it).
    #[arg(long, default_value = "target/loadtest")]
    pub out: PathBuf,
    /// bitstream-relay binary (default: next to this executable).
    #[arg(long)]
    pub relay_bin: Option<PathBuf>,
    /// nats-server binary (default: on PATH, else /usr/sbin/nats-server).
    #[arg(long)]
    pub nats_server: Option<PathBuf>,
    /// CPU for every relay and the nats-server (`none`: unpinned).
    #[arg(long, default_value = "0")]
    pub relay_cpu: String,
    /// CPU for the driver (`none`: unpinned).
    #[arg(long, default_value = "1")]
    pub driver_cpu: String,
    /// An extra argument for every relay, single and cluster alike (repeat it: `--relay-arg=--egress-queue --relay-arg=8388608`).
    #[arg(long = "relay-arg", allow_hyphen_values = true)]
    pub relay_args: Vec<String>,
}

/// The two ways a round runs the load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setup {
    /// One relay.
    Single,
    /// nats-server and several relays.
    Cluster,
}

impl Setup {
    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Setup::Single => "single",
            Setup::Cluster => "cluster",
        }
    }
}

/// The setups of round `round` (0-based), in the order they run: single
/// first in even rounds, the cluster first in odd ones.
pub fn order(round: usize) -> [Setup; 2] {
    if round.is_multiple_of(2) {
        [Setup::Single, Setup::Cluster]
    } else {
        [Setup::Cluster, Setup::Single]
    }
}

/// One node of a cluster run, after the run.
#[derive(Debug, Clone, Default)]
pub struct Node {
    /// `n1`, `n2`, ...
    pub id: String,
    /// CPU over the send window, % of one core.
    pub cpu_pct: Option<f64>,
    /// Peak RSS (sampled), MB.
    pub rss_mb: Option<f64>,
    /// Its `relay_cluster_*` and `relay_slow_*` lines of `/metrics` at the end.
    pub metrics: Vec<String>,
}

impl Node {
    /// The value of counter or gauge `name` (no labels); 0 if absent.
    pub fn metric(&self, name: &str) -> f64 {
        crate::probe::metric_value(&self.metrics, name).unwrap_or(0.0)
    }
}

/// nats-server over one cluster run.
#[derive(Debug, Clone, Copy, Default)]
pub struct NatsFacts {
    /// Its traffic over the run (None: `/varz` could not be read).
    pub traffic: Option<Traffic>,
    /// CPU over the send window, % of one core.
    pub cpu_pct: Option<f64>,
    /// Peak RSS (sampled), MB.
    pub rss_mb: Option<f64>,
}

/// One run of one setup.
#[derive(Debug, Clone)]
pub struct Run {
    /// Round, from 1.
    pub round: usize,
    /// Which setup.
    pub setup: Setup,
    /// The run's measurements and verdict.
    pub s: Summary,
    /// The cluster's nodes (empty for a single relay).
    pub nodes: Vec<Node>,
    /// nats-server over the run (cluster runs).
    pub nats: Option<NatsFacts>,
    /// Why the setup could not be started, if it could not (no run then).
    pub start_error: Option<String>,
}

/// Latency of one place of a run's receivers.
#[derive(Debug, Clone, Copy, Default)]
pub struct Lat {
    /// Receivers there.
    pub receivers: usize,
    /// p50, ms (NaN: none).
    pub p50: f64,
    /// p99, ms.
    pub p99: f64,
}

fn lat_of(h: &Histogram<u64>, receivers: usize) -> Lat {
    let q = |x: f64| {
        if h.is_empty() {
            f64::NAN
        } else {
            h.value_at_quantile(x) as f64 / 1000.0
        }
    };
    Lat {
        receivers,
        p50: q(0.5),
        p99: q(0.99),
    }
}

/// The latency histograms of a run's receivers on the source's relay
/// (*local*: node 1, or every receiver of a single relay) and on the other
/// nodes (*remote*), with their receiver counts.
pub fn places(s: &Summary) -> [(Histogram<u64>, usize); 2] {
    let mut out = [(peer::new_hist(), 0), (peer::new_hist(), 0)];
    for g in &s.groups {
        let i = usize::from(g.node.unwrap_or(0) > 0);
        if let Some(h) = &g.hist {
            let _ = out[i].0.add(h);
        }
        out[i].1 += g.receivers;
    }
    out
}

/// Local and remote latency of a run (see [`places`]).
pub fn local_remote(s: &Summary) -> (Lat, Lat) {
    let [(l, nl), (r, nr)] = places(s);
    (lat_of(&l, nl), lat_of(&r, nr))
}

impl Run {
    /// The run's checks: it started, and then those of its summary (see
    /// [`Summary::verdict`]).
    pub fn verdict(&self) -> Verdict {
        let mut v = Verdict::new();
        match &self.start_error {
            Some(e) => {
                v.check("start", false, format!("could not start: {e}"), "starts");
            }
            None => v.absorb("", self.s.verdict()),
        }
        v
    }

    /// `cluster, SETUP setup, round R/N` (its checks' prefix).
    fn subject(&self, rounds: usize) -> String {
        format!(
            "cluster, {} setup, round {}/{rounds}",
            self.setup.name(),
            self.round
        )
    }

    /// The relays' RSS: peak of their sampled sum, MB.
    pub fn relay_rss(&self) -> f64 {
        self.s.relay_rss_peak_mb.unwrap_or(f64::NAN)
    }

    /// Relay CPU summed over the nodes, % of one core.
    pub fn relay_cpu(&self) -> f64 {
        self.s.relay_cpu_pct.unwrap_or(f64::NAN)
    }

    /// Relays and nats-server together, % of one core.
    pub fn total_cpu(&self) -> f64 {
        self.relay_cpu() + self.nats.and_then(|n| n.cpu_pct).unwrap_or(0.0)
    }

    /// MB/s over the send window of `bytes` (a node's NATS counters, which
    /// count the whole run: little passes outside the window).
    pub fn mbps(&self, bytes: f64) -> f64 {
        bytes / self.s.window_s.max(1e-6) / 1e6
    }

    /// The stderr lines with this run's verdict.
    pub fn verdict_text(&self, rounds: usize) -> String {
        match &self.start_error {
            Some(_) => self.verdict().stderr(&self.subject(rounds), "not run"),
            None => report::verdict(&self.s, Some((self.round, rounds))),
        }
    }
}

/// `median (min–max)` of the cluster ÷ single ratio of `f` over the rounds
/// that have both runs.
pub fn ratio_spread(runs: &[Run], f: impl Fn(&Run) -> f64) -> Option<(f64, f64, f64)> {
    let mut v = Vec::new();
    for r in runs.iter().filter(|r| r.setup == Setup::Cluster) {
        let single = runs
            .iter()
            .find(|x| x.setup == Setup::Single && x.round == r.round && x.start_error.is_none());
        if let (Some(b), None) = (single, &r.start_error) {
            let (a, b) = (f(r), f(b));
            if a.is_finite() && b.is_finite() && b != 0.0 {
                v.push(a / b);
            }
        }
    }
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (!v.is_empty()).then(|| (median(v), lo, hi))
}

/// The command's checks: at least one run, and every run's checks under
/// `cluster, SETUP setup, round R/N`. Exit code 1 if any failed.
pub fn verdict(runs: &[Run], rounds: usize) -> Verdict {
    let mut v = Verdict::new();
    v.check(
        "runs",
        !runs.is_empty(),
        runs.len().to_string(),
        "at least 1",
    );
    for r in runs {
        v.absorb(&r.subject(rounds), r.verdict());
    }
    v
}

fn cpu_of(v: &str) -> Option<usize> {
    v.parse().ok()
}

/// `on CPU 0`, or `unpinned`.
fn cpu_text(v: &str) -> String {
    cpu_of(v).map_or("unpinned".into(), |c| format!("on CPU {c}"))
}

/// `loadtest cluster`.
pub fn main(o: ClusterOpts) -> i32 {
    let nofile = sys::raise_nofile();
    if o.nodes < 2 || o.receivers == 0 || o.channels == 0 || o.fps <= 0.0 {
        eprintln!("loadtest: cluster needs --nodes 2 or more, --receivers and --channels 1 or more and a --fps above 0");
        return 2;
    }
    let receivers = o
        .receivers
        .min(nofile.saturating_sub(o.channels as u64 + 64) as usize);
    let paths = Paths::find(o.relay_bin.clone(), None, None, None);
    if let Some(m) = paths.missing(RelayKind::Ours) {
        eprintln!("loadtest: {m}");
        return 2;
    }
    let nats_bin = match nats::find(o.nats_server.as_deref()) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("loadtest: {e}");
            return 2;
        }
    };
    sys::pin_driver(cpu_of(&o.driver_cpu));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(o.workers.max(1))
        .enable_all()
        .build()
        .expect("tokio runtime");
    let cfg = RunCfg {
        scenario: Scenario::Cluster,
        url: String::new(),
        receivers,
        channels: o.channels,
        width: o.width,
        height: o.height,
        fps: o.fps,
        duration: o.seconds,
        check_every: 1,
        connect_batch: 500,
        drain_secs: o.drain,
        relay_pids: Vec::new(),
        receiver_urls: Vec::new(),
        watch: Vec::new(),
        label: String::new(),
        read_buf: o.read_buf_kib.max(4) * 1024,
        client: crate::peer::Client::Lean,
        progress: true,
        slow: 0,
        slow_rate: None,
        fast_rate: None,
        slow_min_fraction: 0.0,
    };
    let code = rt.block_on(rounds(&o, &cfg, &paths, &nats_bin));
    rt.shutdown_background();
    code
}

async fn rounds(o: &ClusterOpts, cfg: &RunCfg, paths: &Paths, nats_bin: &Path) -> i32 {
    let dir = o.out.join(format!("cluster-{}", report::stamp()));
    let _ = std::fs::create_dir_all(&dir);
    let mut runs = Vec::new();
    for round in 0..o.rounds.max(1) {
        for setup in order(round) {
            eprintln!(
                "\n== cluster: round {}/{}: {}",
                round + 1,
                o.rounds,
                setup.name()
            );
            let tag = format!("r{}", round + 1);
            let r = match setup {
                Setup::Single => single(o, cfg, paths, &dir, &tag).await,
                Setup::Cluster => cluster(o, cfg, paths, nats_bin, &dir, &tag).await,
            };
            let r = Run {
                round: round + 1,
                setup,
                ..r
            };
            if r.start_error.is_none() {
                let t = run_text(&r);
                eprintln!("{t}");
                let base = format!("{}-{tag}", setup.name());
                let _ = std::fs::write(dir.join(format!("{base}.txt")), &t);
                charts::for_run(&dir, &base, &r.s);
            }
            eprintln!("{}", r.verdict_text(o.rounds));
            runs.push(r);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let all = verdict(&runs, o.rounds);
    let md = table(o, cfg, &runs, &all);
    println!("\n{md}");
    let _ = std::fs::write(dir.join("table.md"), &md);
    let _ = std::fs::write(o.out.join("cluster-latest.md"), &md);
    let results = json!({
        "scenario": "cluster",
        "config": {
            "receivers": cfg.receivers, "nodes": o.nodes, "channels": cfg.channels,
            "width": cfg.width, "height": cfg.height, "fps": cfg.fps, "seconds": cfg.duration,
            "message_bytes": cfg.msg_bytes(), "rounds": o.rounds,
            "relay_cpu": o.relay_cpu, "driver_cpu": o.driver_cpu, "relay_args": o.relay_args,
        },
        "runs": runs.iter().map(run_json).collect::<Vec<_>>(),
        "ratios_cluster_over_single": ratios_json(&runs),
        "failed": !all.passed(),
        "verdict": all.json(),
    });
    let _ = std::fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(&results).unwrap_or_default(),
    );
    cdf(&dir, &runs);
    eprintln!(
        "loadtest: wrote {} and {}",
        dir.join("table.md").display(),
        dir.join("results.json").display()
    );
    let detail = format!("{} run(s)", runs.len());
    eprintln!("{}", all.stderr("cluster", &detail));
    all.exit_code()
}

fn start_failed(e: String) -> Run {
    eprintln!("loadtest: {e}");
    Run {
        round: 0,
        setup: Setup::Single,
        s: Summary::default(),
        nodes: Vec::new(),
        nats: None,
        start_error: Some(e),
    }
}

async fn single(o: &ClusterOpts, cfg: &RunCfg, paths: &Paths, dir: &Path, tag: &str) -> Run {
    let extra: Vec<&str> = o.relay_args.iter().map(String::as_str).collect();
    let cpu = cpu_of(&o.relay_cpu);
    let mut p = match relays::spawn(
        RelayKind::Ours,
        paths,
        cpu,
        cfg.receivers,
        dir,
        &format!("single-{tag}"),
        &extra,
    ) {
        Ok(p) => p,
        Err(e) => return start_failed(e),
    };
    let mut c = cfg.clone();
    c.url = p.url.clone();
    c.relay_pids = vec![p.pid];
    c.label = "single".into();
    let mut s = run::run(&c).await;
    let mut node = Node {
        id: "single".into(),
        ..Node::default()
    };
    node.metrics = scrape(&p.url).await;
    s.relay_exit = p.exit_status();
    p.stop();
    Run {
        round: 0,
        setup: Setup::Single,
        s,
        nodes: vec![node],
        nats: None,
        start_error: None,
    }
}

/// nats-server and the nodes, stopped together when dropped.
struct Cluster {
    nodes: Vec<RelayProc>,
    nats: Nats,
}

impl Cluster {
    /// How a process of the cluster exited, if one did.
    fn exited(&mut self) -> Option<String> {
        let mut why: Vec<String> = self
            .nodes
            .iter_mut()
            .enumerate()
            .filter_map(|(i, n)| Some(format!("node n{}: {}", i + 1, n.exit_status()?)))
            .collect();
        if let Some(e) = self.nats.proc.exit_status() {
            why.push(format!("nats-server: {e}"));
        }
        (!why.is_empty()).then(|| why.join("; "))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.terminate();
        }
        for n in &mut self.nodes {
            n.stop();
        }
    }
}

impl Cluster {
    /// Starts the `--nodes` relays, each joined to the cluster's nats-server.
    fn start_nodes(
        &mut self,
        o: &ClusterOpts,
        cfg: &RunCfg,
        paths: &Paths,
        dir: &Path,
        tag: &str,
    ) -> Result<(), String> {
        let cpu = cpu_of(&o.relay_cpu);
        for k in 1..=o.nodes {
            let id = format!("n{k}");
            let mut extra = vec![
                "--nats-url".to_owned(),
                self.nats.url.clone(),
                "--node-id".to_owned(),
                id.clone(),
            ];
            extra.extend(o.relay_args.iter().cloned());
            let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
            let log_tag = format!("cluster-{tag}-{id}");
            let p = relays::spawn(
                RelayKind::Ours,
                paths,
                cpu,
                cfg.receivers,
                dir,
                &log_tag,
                &extra,
            )
            .map_err(|e| format!("node {id}: {e}"))?;
            self.nodes.push(p);
        }
        Ok(())
    }

    /// `cfg` for this cluster: the source on n1, receivers spread over every
    /// node, the nodes and nats-server measured.
    fn run_cfg(&self, o: &ClusterOpts, cfg: &RunCfg) -> RunCfg {
        let mut c = cfg.clone();
        c.url = self.nodes[0].url.clone();
        c.receiver_urls = self.nodes.iter().map(|n| n.url.clone()).collect();
        c.relay_pids = self.nodes.iter().map(|n| n.pid).collect();
        c.watch = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (format!("n{}", i + 1), n.pid))
            .chain([("nats-server".to_owned(), self.nats.proc.pid)])
            .collect();
        c.label = format!("cluster-{}", o.nodes);
        c
    }

    /// Each node's CPU and RSS over the run (from `s`) and its metrics now.
    async fn node_facts(&self, s: &Summary) -> Vec<Node> {
        let mut nodes = Vec::new();
        for (i, p) in self.nodes.iter().enumerate() {
            let w = s.watched.get(i);
            nodes.push(Node {
                id: format!("n{}", i + 1),
                cpu_pct: w.and_then(|w| w.cpu_pct),
                rss_mb: w.and_then(|w| w.rss_peak_mb),
                metrics: scrape(&p.url).await,
            });
        }
        nodes
    }
}

async fn cluster(
    o: &ClusterOpts,
    cfg: &RunCfg,
    paths: &Paths,
    nats_bin: &Path,
    dir: &Path,
    tag: &str,
) -> Run {
    let cpu = cpu_of(&o.relay_cpu);
    let nats = match Nats::start(nats_bin, cpu, dir.join(format!("nats-server-{tag}.log"))) {
        Ok(n) => n,
        Err(e) => return start_failed(e),
    };
    let mut cl = Cluster {
        nodes: Vec::new(),
        nats,
    };
    if let Err(e) = cl.start_nodes(o, cfg, paths, dir, tag) {
        return start_failed(e);
    }
    let c = cl.run_cfg(o, cfg);
    let t0 = cl.nats.traffic().await;
    let mut s = run::run(&c).await;
    let t1 = cl.nats.traffic().await;
    let traffic = match (t0, t1) {
        (Ok(a), Ok(b)) => Some(b.since(&a)),
        (Err(e), _) | (_, Err(e)) => {
            s.notes.push(format!("nats-server /varz: {e}"));
            None
        }
    };
    let nodes = cl.node_facts(&s).await;
    let nw = s.watched.get(o.nodes);
    let nats = Some(NatsFacts {
        traffic,
        cpu_pct: nw.and_then(|w| w.cpu_pct),
        rss_mb: nw.and_then(|w| w.rss_peak_mb),
    });
    s.relay_exit = cl.exited();
    drop(cl);
    Run {
        round: 0,
        setup: Setup::Cluster,
        s,
        nodes,
        nats,
        start_error: None,
    }
}

/// The metric lines a report keeps of a relay's `/metrics`: the cluster's
/// counters and the slow-receiver ones (a receiver skipped forward shows
/// there); `# scrape failed: …` if it could not be read.
async fn scrape(url: &str) -> Vec<String> {
    let got = match Target::parse(url) {
        Ok(t) => http_get(&t, "/metrics").await,
        Err(e) => Err(e),
    };
    match got {
        Ok((200, body)) => body
            .lines()
            .filter(|l| l.starts_with("relay_cluster_") || l.starts_with("relay_slow_"))
            .map(str::to_owned)
            .collect(),
        Ok((status, _)) => vec![format!("# scrape failed: HTTP {status}")],
        Err(e) => vec![format!("# scrape failed: {e}")],
    }
}

fn f(v: f64, prec: usize) -> String {
    if v.is_finite() {
        format!("{v:.prec$}")
    } else {
        "-".into()
    }
}

/// The cluster's lines of a run's text report, after the usual ones.
fn run_text(r: &Run) -> String {
    let mut o = report::text(&r.s);
    let (l, rm) = local_remote(&r.s);
    let _ = writeln!(
        o,
        "places        local (source's node): {} receivers, p50 {} ms, p99 {} ms; remote: {} receivers, p50 {} ms, p99 {} ms",
        l.receivers,
        f(l.p50, 2),
        f(l.p99, 2),
        rm.receivers,
        f(rm.p50, 2),
        f(rm.p99, 2)
    );
    for (n, g) in r
        .nodes
        .iter()
        .zip(r.s.groups.iter().filter(|g| g.node.is_some()))
    {
        let _ = writeln!(
            o,
            "node {:<8} {} receivers, {:.1} MB/s delivered, p99 {} ms; CPU {}%, peak RSS {} MB; from NATS {:.1} MB/s, to NATS {:.1} MB/s; frames in {}, out {}, gaps repaired {}, uplink dropped {}, slow skips {}",
            n.id,
            g.receivers,
            g.mbps,
            f(g.lat_ms[2], 2),
            report::opt(n.cpu_pct, 1),
            report::opt(n.rss_mb, 1),
            r.mbps(n.metric("relay_cluster_bytes_in_total")),
            r.mbps(n.metric("relay_cluster_bytes_out_total")),
            n.metric("relay_cluster_frames_in_total"),
            n.metric("relay_cluster_frames_out_total"),
            n.metric("relay_cluster_gaps_repaired_total"),
            n.metric("relay_cluster_uplink_dropped_total"),
            n.metric("relay_slow_skips_total"),
        );
    }
    if let Some(n) = &r.nats {
        let _ = writeln!(
            o,
            "nats-server   CPU {}%, peak RSS {} MB; {}",
            report::opt(n.cpu_pct, 1),
            report::opt(n.rss_mb, 1),
            n.traffic.map_or("traffic unknown".into(), |t| format!(
                "in {} msgs / {:.1} MB, out {} msgs / {:.1} MB over the run",
                t.in_msgs,
                t.in_bytes as f64 / 1e6,
                t.out_msgs,
                t.out_bytes as f64 / 1e6
            ))
        );
    }
    o
}

fn run_json(r: &Run) -> Value {
    let mut j = if r.start_error.is_some() {
        json!({})
    } else {
        report::json(&r.s)
    };
    let (l, rm) = local_remote(&r.s);
    let lat = |x: &Lat| json!({"receivers": x.receivers, "p50_ms": x.p50, "p99_ms": x.p99});
    j["round"] = json!(r.round);
    j["setup"] = json!(r.setup.name());
    j["start_error"] = json!(r.start_error);
    j["failed"] = json!(!r.verdict().passed());
    j["latency_by_place"] = json!({"local": lat(&l), "remote": lat(&rm)});
    j["relay_processes"] = json!(r.s.relay_processes);
    j["nodes"] = r
        .nodes
        .iter()
        .map(|n| {
            json!({
                "id": n.id, "cpu_percent": n.cpu_pct, "peak_rss_MB": n.rss_mb,
                "from_nats_MBps": r.mbps(n.metric("relay_cluster_bytes_in_total")),
                "to_nats_MBps": r.mbps(n.metric("relay_cluster_bytes_out_total")),
                "metrics": n.metrics,
            })
        })
        .collect();
    if let Some(n) = &r.nats {
        j["nats_server"] = json!({
            "cpu_percent": n.cpu_pct,
            "peak_rss_MB": n.rss_mb,
            "traffic": n.traffic.map(|t| json!({"in_msgs": t.in_msgs, "in_bytes": t.in_bytes, "out_msgs": t.out_msgs, "out_bytes": t.out_bytes})),
        });
    }
    j
}

/// What the ratios compare: name and the figure of a run.
type Figure = (&'static str, fn(&Run) -> f64);

const FIGURES: [Figure; 6] = [
    ("delivered fraction", |r| r.s.delivered_fraction),
    ("p50 latency", |r| r.s.lat_ms[0]),
    ("p99 latency", |r| r.s.lat_ms[2]),
    ("relay CPU (sum over nodes)", Run::relay_cpu),
    ("relay + nats-server CPU", Run::total_cpu),
    ("relay RSS (sum over nodes)", Run::relay_rss),
];

fn ratios_json(runs: &[Run]) -> Value {
    FIGURES
        .iter()
        .map(|(name, f)| {
            let r = ratio_spread(runs, f);
            json!({"figure": name, "median": r.map(|x| x.0), "min": r.map(|x| x.1), "max": r.map(|x| x.2)})
        })
        .collect()
}

/// One run's row of the cluster table.
fn run_row(m: &mut String, r: &Run) {
    if let Some(e) = &r.start_error {
        let _ = writeln!(
            m,
            "| {} | {} | | | | | | | | | | | | could not start: {e} |",
            r.round,
            r.setup.name()
        );
        return;
    }
    let (l, rm) = local_remote(&r.s);
    let per_node = if r.setup == Setup::Cluster {
        format!(
            " ({})",
            r.nodes
                .iter()
                .map(|n| report::opt(n.cpu_pct, 0))
                .collect::<Vec<_>>()
                .join(" + ")
        )
    } else {
        String::new()
    };
    let nats = nats_cells(r);
    let _ = writeln!(
        m,
        "| {} | {} | {:.3}% | {} | {} | {} / {} | {} | {}{per_node} | {} | {} | {} | {} | {} | {} |",
        r.round,
        r.setup.name(),
        r.s.delivered_fraction * 100.0,
        f(r.s.lat_ms[0], 2),
        f(r.s.lat_ms[2], 2),
        f(l.p50, 2),
        f(l.p99, 2),
        if rm.receivers > 0 {
            format!("{} / {}", f(rm.p50, 2), f(rm.p99, 2))
        } else {
            "-".into()
        },
        report::opt(r.s.relay_cpu_pct, 1),
        f(r.relay_rss(), 1),
        nats.0,
        nats.1,
        report::opt(r.s.driver_cpu_pct, 0),
        report::opt(r.s.others_cpu_pct, 0),
        if !r.verdict().passed() {
            format!("**FAIL**: {}", r.s.integrity())
        } else {
            "OK".into()
        }
    );
}

/// The nats-server cells of a run's row: (CPU % / RSS MB, NATS in / out MB/s).
fn nats_cells(r: &Run) -> (String, String) {
    match &r.nats {
        Some(n) => (
            format!(
                "{} / {}",
                report::opt(n.cpu_pct, 1),
                report::opt(n.rss_mb, 1)
            ),
            n.traffic.map_or("-".into(), |t| {
                let w = r.s.window_s.max(1e-6) * 1e6;
                format!(
                    "{:.1} / {:.1}",
                    t.in_bytes as f64 / w,
                    t.out_bytes as f64 / w
                )
            }),
        ),
        None => ("-".into(), "-".into()),
    }
}

/// The Markdown report: one row per run, then the ratios.
fn table(o: &ClusterOpts, cfg: &RunCfg, runs: &[Run], all: &Verdict) -> String {
    let mut m = String::new();
    let (date, time) = report::utc_now();
    let _ = writeln!(
        m,
        "### `cluster`: {} receivers over {} nodes (source on n1) vs 1 relay, {} channel(s), {}×{} RGBA ({} B/msg), {} fps, {} s × {} rounds ({date} {time} UTC; relays and nats-server {}, driver {})\n",
        cfg.receivers,
        o.nodes,
        cfg.channels,
        cfg.width,
        cfg.height,
        cfg.msg_bytes(),
        cfg.fps,
        cfg.duration,
        o.rounds,
        cpu_text(&o.relay_cpu),
        cpu_text(&o.driver_cpu)
    );
    let _ = writeln!(
        m,
        "| round | setup | delivered | p50 ms | p99 ms | local p50 / p99 ms | remote p50 / p99 ms | relay CPU % (per node) | relay RSS MB | nats-server CPU % / RSS MB | NATS in / out MB/s | driver CPU % | others CPU % | verdict |"
    );
    let _ = writeln!(
        m,
        "|---:|---|---:|---:|---:|---|---|---|---:|---|---|---:|---:|---|"
    );
    for r in runs {
        run_row(&mut m, r);
    }
    let _ = writeln!(
        m,
        "\nCluster ÷ single, per round (median, min–max over the rounds; CPU, latency, RSS: lower is better):\n"
    );
    let _ = writeln!(m, "| figure | median | min | max |");
    let _ = writeln!(m, "|---|---:|---:|---:|");
    for (name, fig) in FIGURES {
        match ratio_spread(runs, fig) {
            Some((med, lo, hi)) => {
                let _ = writeln!(m, "| {name} | {med:.2}× | {lo:.2}× | {hi:.2}× |");
            }
            None => {
                let _ = writeln!(m, "| {name} | - | - | - |");
            }
        }
    }
    let _ = writeln!(
        m,
        "\nNATS in / out: bytes published to and delivered by nats-server (`/varz`) per second of the send window; relay RSS: peak of the nodes' summed RSS, sampled once a second. Charts: `latency-cdf.svg` (single, cluster local, cluster remote; all rounds), `SETUP-rN-timeline.svg` (per node)."
    );
    let failed = all.failures();
    if !failed.is_empty() {
        let _ = writeln!(
            m,
            "\n**Failed runs** (not every frame intact, once and in order):\n"
        );
        for v in failed {
            let _ = writeln!(m, "- {}", v.trim_start_matches("loadtest: "));
        }
    }
    m
}

/// `latency-cdf.svg`: single, cluster local and cluster remote, all rounds.
fn cdf(dir: &Path, runs: &[Run]) {
    let mut lines: Vec<(String, Histogram<u64>)> = vec![
        ("single".into(), peer::new_hist()),
        ("cluster local (n1)".into(), peer::new_hist()),
        ("cluster remote".into(), peer::new_hist()),
    ];
    for r in runs.iter().filter(|r| r.start_error.is_none()) {
        let [(l, _), (rm, _)] = places(&r.s);
        match r.setup {
            Setup::Single => {
                let _ = lines[0].1.add(&l);
            }
            Setup::Cluster => {
                let _ = lines[1].1.add(&l);
                let _ = lines[2].1.add(&rm);
            }
        }
    }
    lines.retain(|l| !l.1.is_empty());
    charts::cdf(
        &dir.join("latency-cdf.svg"),
        "cluster: latency CDF, all rounds",
        &lines,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::Group;

    fn run(round: usize, setup: Setup, p99: f64, missing: u64) -> Run {
        Run {
            round,
            setup,
            s: Summary {
                frames_sent: 10,
                lat_ms: [1.0, 1.0, p99, 1.0, 1.0],
                missing,
                ..Summary::default()
            },
            nodes: Vec::new(),
            nats: None,
            start_error: None,
        }
    }

    #[test]
    fn rounds_alternate_which_setup_runs_first() {
        assert_eq!(order(0), [Setup::Single, Setup::Cluster]);
        assert_eq!(order(1), [Setup::Cluster, Setup::Single]);
        assert_eq!(order(2), order(0));
    }

    #[test]
    fn ratios_pair_each_cluster_run_with_its_rounds_single_run() {
        let runs = vec![
            run(1, Setup::Single, 10.0, 0),
            run(1, Setup::Cluster, 20.0, 0),
            run(2, Setup::Cluster, 15.0, 0),
            run(2, Setup::Single, 30.0, 0),
            run(3, Setup::Single, 10.0, 0),
            run(3, Setup::Cluster, 40.0, 0),
        ];
        let (med, lo, hi) = ratio_spread(&runs, |r| r.s.lat_ms[2]).expect("ratios");
        assert_eq!((med, lo, hi), (2.0, 0.5, 4.0));
        // A round whose single run could not start gives no ratio.
        let mut partial = runs[..2].to_vec();
        partial[0].start_error = Some("no".into());
        assert_eq!(ratio_spread(&partial, |r| r.s.lat_ms[2]), None);
    }

    #[test]
    fn one_lost_frame_in_any_run_fails_the_command() {
        let clean = vec![
            run(1, Setup::Single, 1.0, 0),
            run(1, Setup::Cluster, 1.0, 0),
        ];
        assert_eq!(verdict(&clean, 1).exit_code(), 0);
        let lost = vec![
            run(1, Setup::Single, 1.0, 0),
            run(1, Setup::Cluster, 1.0, 1),
        ];
        assert_eq!(verdict(&lost, 1).exit_code(), 1);
        let mut unstarted = clean.clone();
        unstarted[1].start_error = Some("nats-server exited at start".into());
        assert_eq!(verdict(&unstarted, 1).exit_code(), 1);
        assert_eq!(
            verdict(&unstarted, 1).failures(),
            ["FAIL cluster, cluster setup, round 1/1 start: could not start: nats-server exited at start"]
        );
        assert_eq!(verdict(&[], 1).exit_code(), 1);
    }

    #[test]
    fn latency_splits_into_the_sources_node_and_the_others() {
        let group = |node: Option<usize>, receivers: usize, ms: u64| {
            let mut h = peer::new_hist();
            h.record(ms * 1000).unwrap();
            Group {
                node,
                receivers,
                hist: Some(h),
                ..Group::default()
            }
        };
        let mut s = Summary {
            groups: vec![
                group(Some(0), 3, 2),
                group(Some(1), 2, 40),
                group(Some(2), 2, 50),
            ],
            ..Summary::default()
        };
        let (l, r) = local_remote(&s);
        assert_eq!((l.receivers, r.receivers), (3, 4));
        assert!((l.p99 - 2.0).abs() < 0.01, "{l:?}");
        assert!(
            (r.p50 - 40.0).abs() < 0.1 && (r.p99 - 50.0).abs() < 0.1,
            "{r:?}"
        );
        // A single relay's receivers (no node) are all local.
        s.groups = vec![group(None, 5, 3)];
        let (l, r) = local_remote(&s);
        assert_eq!((l.receivers, r.receivers), (5, 0));
        assert!(r.p99.is_nan());
    }
}
