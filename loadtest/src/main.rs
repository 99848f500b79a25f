//! `loadtest`: a load driver for PROTOCOL.md relays. One source per
//! channel and N receivers, all in this process; see loadtest/README.md.
//!
//!     cargo run --release -p loadtest -- headline --url ws://127.0.0.1:9100 --relay-pid PID
//!     cargo run --release -p loadtest -- saturate --start ours
//!     cargo run --release -p loadtest -- compare --scenario headline --rounds 3
//!     cargo run --release -p loadtest -- chaos --start ours
//!     cargo run --release -p loadtest -- hostile --start ours
//!     cargo run --release -p loadtest -- cluster --rounds 3

mod chaos;
mod charts;
mod cluster;
mod copies;
mod cost;
mod healthy;
mod hostile;
mod nats;
mod noise;
mod peer;
mod probe;
mod relays;
mod report;
mod run;
mod sweep;
mod sys;
mod tcpserver;
mod verdict;
mod verify;
mod whole;
mod wire;

use std::sync::OnceLock;
use std::time::Instant;

use clap::{Args, Parser, Subcommand, ValueEnum};

use relays::{RelayKind, TargetOpts};
use run::RunCfg;

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the driver's one monotonic epoch.
pub fn now_ns() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Seconds since the epoch, as f64.
pub fn now_secs() -> f64 {
    now_ns() as f64 / 1e9
}

/// A load scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// 640×360 RGBA keyframes at 30 fps to 64 receivers.
    Headline,
    /// The same frames as fast as the relay takes them.
    Saturate,
    /// Many receivers on one channel (default 15,000), small frames at 5 Hz.
    Receivers,
    /// Many channels at once (default 256 × 8 receivers), small frames.
    Channels,
    /// 3840×2160 RGBA keyframes at 10 fps to 8 receivers, 4 of them reading at half the stream's rate.
    Bigframes,
    /// `receivers` (15,000, 16×16 frames) at rising frame rates: the highest that passes.
    ReceiversSweep,
    /// `headline` on one relay and on a cluster of relays over NATS (its own command, not for `compare`).
    #[value(skip)]
    Cluster,
}

impl Scenario {
    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Headline => "headline",
            Scenario::Saturate => "saturate",
            Scenario::Receivers => "receivers",
            Scenario::Channels => "channels",
            Scenario::Bigframes => "bigframes",
            Scenario::ReceiversSweep => "receivers-sweep",
            Scenario::Cluster => "cluster",
        }
    }

    /// (receivers, channels, width, height, fps, check_every)
    fn defaults(self) -> (usize, usize, u16, u16, f64, u64) {
        match self {
            Scenario::Headline => (64, 1, 640, 360, 30.0, 1),
            // Hashing every frame at ~9 GB/s would cost the driver more than
            // the third of a core it has left there: each receiver hashes
            // every 4th frame (a different one per receiver); index, channel
            // and length are checked on every frame.
            Scenario::Saturate => (64, 1, 640, 360, 0.0, 4),
            Scenario::Receivers => (15_000, 1, 64, 64, 5.0, 1),
            Scenario::Channels => (2048, 256, 64, 64, 30.0, 1),
            Scenario::Bigframes => (8, 1, 3840, 2160, 10.0, 1),
            // fps: the first step's; the steps are --rates.
            Scenario::ReceiversSweep => (15_000, 1, 16, 16, 5.0, 1),
            Scenario::Cluster => (64, 1, 640, 360, 30.0, 1),
        }
    }

    /// Receivers that read slower than the stream, by default.
    fn default_slow(self) -> usize {
        match self {
            Scenario::Bigframes => 4,
            _ => 0,
        }
    }
}

#[derive(Parser)]
#[command(name = "loadtest", about = "Load driver for PROTOCOL.md relays")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// 640×360 RGBA keyframes at 30 fps to 64 receivers.
    Headline(Opts),
    /// The same frames as fast as the relay takes them (TCP backpressure).
    Saturate(Opts),
    /// N receivers on one channel (default 15,000): all connected? all frames? RSS per connection.
    Receivers(Opts),
    /// Many channels at once (default 256 channels × 8 receivers).
    Channels(Opts),
    /// 3840×2160 RGBA keyframes (33 MB) at 10 fps to 8 receivers: 4 at full speed, 4 reading at half the stream's byte rate (gaps allowed, nothing else).
    Bigframes(Opts),
    /// N receivers (default 15,000, 16×16 frames) at rising rates (--rates): the highest rate with every frame delivered and p99 under --max-p99-ms.
    ReceiversSweep(Opts),
    /// Runs a scenario against this relay, the baseline, the uWS peer and plain TCP, round by round.
    Compare(CompareOpts),
    /// A healthy 30 fps stream to N receivers while hostile clients attack the relay (calm, chaos, settle).
    Chaos(chaos::ChaosOpts),
    /// Attacks from single clients, one after another, while a healthy 30 fps stream is measured.
    Hostile(hostile::HostileOpts),
    /// The headline stream on one relay and on nats-server + N relays (receivers spread over them), round by round: delivery, latency local/remote, CPU, NATS traffic, cluster ÷ single.
    Cluster(cluster::ClusterOpts),
    /// Relay CPU per delivered GB and per delivered message over receivers × frame sizes: one table, one chart.
    Cost(cost::CostOpts),
    /// The plain-TCP fan-out reference server (started by `compare`).
    #[command(hide = true)]
    TcpServer {
        #[arg(long)]
        addr: String,
    },
    /// A busy loop (the noisy neighbour `compare --noise` starts).
    #[command(hide = true)]
    Spin {
        #[arg(long)]
        cpu: Option<usize>,
        #[arg(long, default_value_t = 60.0)]
        seconds: f64,
    },
}

#[derive(Args, Clone, Debug)]
struct Opts {
    #[command(flatten)]
    target: TargetOpts,
    /// Receivers in total, spread round-robin over the channels.
    #[arg(long)]
    receivers: Option<usize>,
    /// Frame width in pixels.
    #[arg(long)]
    width: Option<u16>,
    /// Frame height in pixels.
    #[arg(long)]
    height: Option<u16>,
    /// Frames per second per channel (0 = as fast as the relay accepts).
    #[arg(long)]
    fps: Option<f64>,
    /// Seconds the source sends.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Channels (one source each).
    #[arg(long)]
    channels: Option<usize>,
    /// Each receiver hashes the bytes of every n-th frame (default 1: every frame; saturate 4).
    #[arg(long)]
    check_every: Option<u64>,
    /// Tokio worker threads for the receivers (the source has its own thread).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Receivers connecting at once.
    #[arg(long, default_value_t = 500)]
    connect_batch: usize,
    /// Longest wait for in-flight frames after the source stops, seconds.
    #[arg(long, default_value_t = 3.0)]
    drain: f64,
    /// KiB per read syscall (one buffer per driver thread, shared by its receivers).
    #[arg(long, default_value_t = 256)]
    read_buf_kib: usize,
    /// How receivers read: lean (the driver's own zero-copy reader) or whole (tokio-tungstenite, whole messages, every byte hashed).
    #[arg(long, value_enum, default_value = "lean")]
    client: peer::Client,
    /// Receivers (the last ones) that read slower than the stream; gaps allowed for them (default: 4 in bigframes, else 0).
    #[arg(long)]
    slow: Option<usize>,
    /// Read-rate limit of the slow receivers, as a fraction of the stream's byte rate (fps × message bytes).
    #[arg(long, default_value_t = 0.5)]
    slow_rate: f64,
    /// Read-rate limit of the slow receivers in MB/s (overrides --slow-rate; needed when --fps 0).
    #[arg(long)]
    slow_mbps: Option<f64>,
    /// Read-rate limit of the other receivers, as a fraction of the stream's byte rate (0: full speed).
    #[arg(long, default_value_t = 0.0)]
    fast_rate: f64,
    /// Each slow receiver must get at least this fraction of the frames (it must always get one).
    #[arg(long, default_value_t = 0.0)]
    slow_min_fraction: f64,
    /// receivers-sweep: frame rates to try, in Hz, lowest first; the sweep stops at the first that fails.
    #[arg(long, value_delimiter = ',', default_value = "5,10,20,40,80,160")]
    rates: Vec<f64>,
    /// receivers-sweep: a rate passes only with p99 below this, ms.
    #[arg(long, default_value_t = 200.0)]
    max_p99_ms: f64,
    /// receivers-sweep: exit 1 unless the highest passing rate is at least this, Hz (default: the lowest rate).
    #[arg(long)]
    require_hz: Option<f64>,
    /// receivers-sweep: go on past the first failing rate.
    #[arg(long)]
    sweep_all: bool,
}

#[derive(Args, Clone, Debug)]
struct CompareOpts {
    /// Scenario to compare.
    #[arg(long, value_enum, default_value = "headline")]
    scenario: Scenario,
    /// Rounds; each round runs every relay once, in rotating order.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Relays to compare.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "ours,baseline,bun,tcp"
    )]
    relays: Vec<RelayKind>,
    /// Busy-loop processes pinned to the relay's CPU during each run (a noisy neighbour, the same for every relay); 0: none.
    #[arg(long, default_value_t = 0)]
    noise: usize,
    /// With --noise, when ours and uWS both run: in every round ours' p99 must be at most this many times uWS's.
    #[arg(long, default_value_t = 1.2)]
    noise_p99_ratio: f64,
    #[command(flatten)]
    opts: Opts,
}

impl Opts {
    fn run_cfg(&self, scenario: Scenario, nofile: u64) -> RunCfg {
        let (r, c, w, h, fps, check) = scenario.defaults();
        let channels = self.channels.unwrap_or(c).max(1);
        let mut receivers = self.receivers.unwrap_or(
            if self.channels.is_some() && scenario == Scenario::Channels {
                channels * 8
            } else {
                r
            },
        );
        // One socket per receiver, one per source, plus some slack.
        let room = nofile.saturating_sub(channels as u64 + 64) as usize;
        if receivers > room {
            eprintln!(
                "loadtest: the open-files limit is {nofile} (hard limit, `ulimit -Hn`); capping receivers at {room} instead of {receivers}"
            );
            receivers = room;
        }
        RunCfg {
            scenario,
            url: self.target.url.clone(),
            receivers,
            channels,
            width: self.width.unwrap_or(w),
            height: self.height.unwrap_or(h),
            fps: self.fps.unwrap_or(fps),
            duration: self.duration,
            check_every: self.check_every.unwrap_or(check).max(1),
            connect_batch: self.connect_batch,
            drain_secs: self.drain,
            relay_pids: self.target.relay_pid.into_iter().collect(),
            receiver_urls: Vec::new(),
            watch: Vec::new(),
            label: self.target.label(),
            read_buf: self.read_buf_kib.max(4) * 1024,
            client: self.client,
            progress: true,
            slow: 0,
            slow_rate: None,
            fast_rate: None,
            slow_min_fraction: self.slow_min_fraction,
        }
        .with_groups(
            self.slow.unwrap_or(scenario.default_slow()),
            self.slow_mbps.map(|m| m * 1e6),
            self.slow_rate,
            self.fast_rate,
        )
    }
}

fn main() {
    copies::apply();
    let cli = Cli::parse();
    EPOCH.get_or_init(Instant::now);
    let (scenario, opts, compare) = match cli.cmd {
        Cmd::TcpServer { addr } => {
            sys::raise_nofile();
            if let Err(e) = tcpserver::serve(&addr) {
                eprintln!("tcp-server: {e}");
                std::process::exit(1);
            }
            return;
        }
        Cmd::Spin { cpu, seconds } => std::process::exit(noise::spin(cpu, seconds)),
        Cmd::Chaos(o) => std::process::exit(chaos::main(o)),
        Cmd::Hostile(o) => std::process::exit(hostile::main(o)),
        Cmd::Cluster(o) => std::process::exit(cluster::main(o)),
        Cmd::Cost(o) => std::process::exit(cost::main(o)),
        Cmd::Headline(o) => (Scenario::Headline, o, None),
        Cmd::Saturate(o) => (Scenario::Saturate, o, None),
        Cmd::Receivers(o) => (Scenario::Receivers, o, None),
        Cmd::Channels(o) => (Scenario::Channels, o, None),
        Cmd::Bigframes(o) => (Scenario::Bigframes, o, None),
        Cmd::ReceiversSweep(o) => (Scenario::ReceiversSweep, o, None),
        Cmd::Compare(c) => (c.scenario, c.opts.clone(), Some(c)),
    };
    let nofile = sys::raise_nofile();
    opts.target
        .pin_driver(compare.is_some() || opts.target.start.is_some());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(opts.workers.max(1))
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = rt.block_on(async move {
        match compare {
            Some(c) if c.scenario == Scenario::ReceiversSweep => {
                sweep::compare(c.rounds, &c.relays, &c.opts, nofile).await
            }
            Some(c) => {
                let noise = (c.noise > 0).then_some((c.noise, c.noise_p99_ratio));
                report::compare(c.scenario, c.rounds, &c.relays, &c.opts, noise, nofile).await
            }
            None if scenario == Scenario::ReceiversSweep => sweep::single(&opts, nofile).await,
            None => single(scenario, &opts, nofile).await,
        }
    });
    rt.shutdown_background();
    std::process::exit(code);
}

async fn single(scenario: Scenario, opts: &Opts, nofile: u64) -> i32 {
    let mut cfg = opts.run_cfg(scenario, nofile);
    let per_ch = cfg.receivers.div_ceil(cfg.channels);
    let Some(mut relay) = opts.target.under_test(per_ch, &report::stamp(), &[]) else {
        return 2;
    };
    cfg.url = relay.url.clone();
    cfg.relay_pids = relay.pid.into_iter().collect();
    eprintln!(
        "loadtest {}: {} receivers on {} channel(s) at {}, {}x{} RGBA ({} B/message), {}, {} s",
        scenario.name(),
        cfg.receivers,
        cfg.channels,
        cfg.url,
        cfg.width,
        cfg.height,
        cfg.msg_bytes(),
        cfg.rate(),
        cfg.duration
    );
    let mut s = run::run(&cfg).await;
    s.relay_exit = relay.finish();
    let text = report::text(&s);
    println!("{text}");
    let base = format!("{}-{}-{}", s.scenario, s.label, report::stamp());
    report::write_pair(&opts.target.out, &base, &text, &report::json(&s));
    charts::for_run(&opts.target.out, &base, &s);
    eprintln!("{}", report::verdict(&s, None));
    s.verdict().exit_code()
}
