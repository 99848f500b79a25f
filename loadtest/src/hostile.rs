//! `hostile`: "one peer must never hurt the others". Seven attacks, one
//! after another, each from one or a few ordinary clients, while a healthy
//! channel streams verified 640×360 RGBA keyframes at 30 fps to 16
//! receivers. Each phase records the healthy delivery and p99, `/healthz`
//! latency, relay CPU and peak RSS, and how the attackers ended; the run
//! fails when a healthy frame is lost or damaged, a phase's p99 passes
//! `--max-p99-ms`, the relay's RSS passes `--max-rss-mib`, or the handshake
//! storm's new source is refused. See loadtest/README.md.
//!
//! Threads as in `chaos`: the source on its own thread, the controller and
//! the healthy receivers on the main thread's current-thread runtime, every
//! attacker on a one-worker runtime at nice 10.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bitstream_wire::codec;
use bitstream_wire::protocol;
use bitstream_wire::ws;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::sync::{watch, Barrier};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::healthy::{cpu_between, Monitor, PhaseFrames, Stream, StreamOpts};
use crate::now_ns;
use crate::peer::{self, write_all, Target};
use crate::probe::{self, http_get, metric_lines, watch_end, End, Kind, Rng, Watched};
use crate::relays::{self, TargetOpts};
use crate::report::{self, opt};
use crate::sys::{self, ProcSample};
use crate::verdict::Verdict;
use crate::verify::Counts;
use crate::wire::Framing;

/// Options of `loadtest hostile`.
#[derive(clap::Args, Clone, Debug)]
pub struct HostileOpts {
    #[command(flatten)]
    pub target: TargetOpts,
    #[command(flatten)]
    pub stream: StreamOpts,
    /// Seconds of the calm phase before the first attack (the stream alone).
    #[arg(long, default_value_t = 3.0)]
    pub calm: f64,
    /// Seconds each attack lasts (the handshake storm: at least until its new source was tried, plus 1 s).
    #[arg(long, default_value_t = 6.0)]
    pub phase: f64,
    /// The attacks to run, in this order (default: all eight, in the order listed here).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Attack>,
    /// Fail when the healthy p99 of any phase is above this, ms.
    #[arg(long, default_value_t = 100.0)]
    pub max_p99_ms: f64,
    /// Fail when the relay's RSS goes above this, MiB (default: a 1 GiB budget plus 512 MiB).
    #[arg(long, default_value_t = 1536)]
    pub max_rss_mib: u64,
    /// ping-flood: clients flooding.
    #[arg(long, default_value_t = 2)]
    pub flooders: usize,
    /// silent-pingers: clients pinging without reading.
    #[arg(long, default_value_t = 8)]
    pub pingers: usize,
    /// ping-flood, silent-pingers: a client the relay closed connects again (until the phase ends).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub reconnect: bool,
    /// signal-diffs: diffs per second from each of its 2 sources.
    #[arg(long, default_value_t = 400)]
    pub diff_rate: u64,
    /// signal-diffs, cached-state: bytes of the big SignalSync (JSON; the relay's --max-signal-state is 1 MiB).
    #[arg(long, default_value_t = 1_000_000)]
    pub signal_bytes: usize,
    /// delta-joiners, cached-state: width of the big keyframe.
    #[arg(long, default_value_t = 3840)]
    pub big_width: u16,
    /// delta-joiners, cached-state: height of the big keyframe (3840×2160 RGBA + header = 33,177,616 B, under the relay's default --max-message of 32 MiB).
    #[arg(long, default_value_t = 2160)]
    pub big_height: u16,
    /// delta-joiners: rounds (512 unchanged deltas, then a joiner that never reads) at most, spread over the phase.
    #[arg(long, default_value_t = 64)]
    pub rounds: usize,
    /// cached-state: channels, each left with a big keyframe, a delta and a big SignalSync.
    #[arg(long, default_value_t = 16)]
    pub cached_channels: usize,
    /// cached-state: the delta changes every byte (a ZRLE payload as large as the frame, which the relay folds into a new keyframe) instead of 4.
    #[arg(long)]
    pub full_delta: bool,
    /// oversized-signal: payload bytes of each SignalSync (default: the message is 32 MiB, the relay's default --max-message).
    #[arg(long, default_value_t = 32 * 1024 * 1024 - 16)]
    pub oversized_bytes: usize,
    /// handshake-storm: receivers, each on its own channel.
    #[arg(long, default_value_t = 10_000)]
    pub storm: usize,
    /// handshake-storm: handshakes in flight at once.
    #[arg(long, default_value_t = 500)]
    pub storm_batch: usize,
    /// slow-readers: receivers of the healthy channel that read slowly.
    #[arg(long, default_value_t = 300)]
    pub slow_readers: usize,
    /// slow-readers: bytes per second each reads.
    #[arg(long, default_value_t = 64 * 1024)]
    pub slow_rate: usize,
    /// sse-watchers: `GET /events` clients of one channel that never read.
    #[arg(long, default_value_t = 100)]
    pub sse_watchers: usize,
}

/// The attacks, one phase each (the doc lines are the report's descriptions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Attack {
    /// --flooders receivers of another channel send empty pings back to back and read the pongs; GET /healthz is timed
    PingFlood,
    /// --pingers receivers of another channel never read and send 125-byte pings back to back
    SilentPingers,
    /// 2 sources (2 channels, a reading receiver each) set a --signal-bytes SignalSync, then send 10-byte SignalDiffs at --diff-rate each
    SignalDiffs,
    /// a source sends a --big-width x --big-height keyframe, then up to --rounds rounds of 512 unchanged (identity ZRLE) deltas, each followed by a joiner that never reads
    DeltaJoiners,
    /// --cached-channels sources at once leave their channel with a big keyframe, a delta and a --signal-bytes SignalSync
    CachedState,
    /// 2 sources (2 channels, a witness receiver each) send a --oversized-bytes SignalSync at the same moment
    OversizedSignal,
    /// --storm receivers on distinct channels from one IP (--storm-batch handshakes in flight) leave at once; then a new source must be accepted
    HandshakeStorm,
    /// --slow-readers receivers of the healthy channel read --slow-rate bytes/s each; the host's TCP memory is sampled
    SlowReaders,
    /// --sse-watchers clients GET /events of a channel holding a --signal-bytes SignalSync (30 diffs/s after it) and never read; the relay's charge and RSS are compared
    SseWatchers,
}

impl Attack {
    /// Its name (as `--only` takes it) and what it does (its doc line).
    fn name_and_help(self) -> (String, String) {
        let v = clap::ValueEnum::to_possible_value(&self).expect("every attack has a name");
        let help = v.get_help().map(|h| h.to_string()).unwrap_or_default();
        (v.get_name().to_owned(), help)
    }
}

// ---------------------------------------------------------------- verdict

/// What a phase measured, as far as the verdict goes.
#[derive(Debug, Clone, Default)]
pub struct PhaseResult {
    /// Its name.
    pub name: String,
    /// The healthy frames sent in it, their delivery and latency.
    pub frames: PhaseFrames,
    /// The relay's peak RSS during it, KiB.
    pub rss_peak_kib: Option<u64>,
    /// The HTTP status a source got that had to be accepted (101), if one was tried.
    pub source_status: Option<u16>,
}

impl PhaseResult {
    /// Phase `i`'s checks: the healthy source sent frames, every healthy
    /// frame delivered intact, the healthy p99 and the relay's RSS within
    /// their bounds, a source that had to be accepted accepted.
    fn checks(&self, i: usize, b: &Bounds, v: &mut Verdict) {
        let at = format!("phase {i} {}", self.name);
        let fr = &self.frames;
        let sent = if fr.sent == 0 {
            "the healthy source sent no frame".to_owned()
        } else {
            format!("the healthy source sent {} frames", fr.sent)
        };
        v.check(at.clone(), fr.sent > 0, sent, "at least 1 frame");
        v.check(
            at.clone(),
            fr.delivered >= fr.expected && fr.corrupt == 0,
            format!(
                "healthy frames delivered intact {} of {} ({} not delivered, {} corrupt)",
                fr.delivered,
                fr.expected,
                fr.expected.saturating_sub(fr.delivered),
                fr.corrupt
            ),
            "every one",
        );
        let p99_ok = fr.lat.p99 <= b.max_p99_ms;
        v.check(
            at.clone(),
            p99_ok,
            format!(
                "healthy p99 {:.1} ms {} {} ms (max {:.1} ms)",
                fr.lat.p99,
                if p99_ok { "<=" } else { ">" },
                b.max_p99_ms,
                fr.lat.max
            ),
            format!("p99 <= {} ms", b.max_p99_ms),
        );
        if let Some(k) = self.rss_peak_kib {
            let ok = k <= b.max_rss_mib * 1024;
            v.check(
                at.clone(),
                ok,
                format!(
                    "relay RSS peak {:.0} MiB {} {} MiB",
                    k as f64 / 1024.0,
                    if ok { "<=" } else { ">" },
                    b.max_rss_mib
                ),
                format!("<= {} MiB", b.max_rss_mib),
            );
        }
        if let Some(s) = self.source_status {
            let measured = if s == 101 {
                "a new source was accepted (HTTP 101)".to_owned()
            } else {
                format!("a new source was refused (HTTP {s}) instead of accepted")
            };
            v.check(at, s == 101, measured, "HTTP 101");
        }
    }
}

/// What the whole run measured beyond its phases.
#[derive(Debug, Clone, Default)]
pub struct RunFacts {
    /// The healthy receivers' totals.
    pub counts: Counts,
    /// Healthy receivers the relay ended early.
    pub ended_early: u64,
    /// What stopped early: the healthy source (`healthy source: ...`), the relay (`relay exited: ...`).
    pub stopped: Vec<String>,
}

impl RunFacts {
    /// The run's own checks: no healthy frame duplicated or out of order,
    /// no healthy receiver ended early, the healthy source and the relay
    /// ran to the end.
    fn checks(&self, v: &mut Verdict) {
        let c = &self.counts;
        v.check(
            "healthy receivers",
            c.duplicate == 0 && c.out_of_order == 0,
            format!(
                "{} frames duplicated, {} out of order",
                c.duplicate, c.out_of_order
            ),
            "none",
        );
        v.check(
            "healthy receivers",
            self.ended_early == 0,
            format!("{} ended early", self.ended_early),
            "none",
        );
        for s in &self.stopped {
            let (name, what) = s.split_once(": ").unwrap_or((s.as_str(), "stopped"));
            v.check(name, false, what, "runs to the end");
        }
    }
}

/// The pass/fail bounds (inclusive).
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Highest healthy p99 of a phase, ms.
    pub max_p99_ms: f64,
    /// Highest relay RSS, MiB.
    pub max_rss_mib: u64,
}

/// The run's checks, phase by phase, then the run's own.
pub fn verdict(phases: &[PhaseResult], run: &RunFacts, b: &Bounds) -> Verdict {
    let mut v = Verdict::new();
    for (i, p) in phases.iter().enumerate() {
        p.checks(i, b, &mut v);
    }
    run.checks(&mut v);
    v
}

// ---------------------------------------------------------------- attackers

/// Said of an attacker still connected when its phase ended.
const OPEN: &str = "still open at the end of the phase (closed by us)";

/// How a watched attacker ended, with [`OPEN`] for one nothing ended.
fn ended(w: &Watched) -> String {
    match w.end {
        End::Timeout => OPEN.into(),
        ref e => e.outcome(),
    }
}

/// One attacking connection counted open until dropped.
struct Conn {
    s: TcpStream,
    left: Vec<u8>,
    _open: Open,
}

struct Open(Arc<AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// Payloads built before the run (so building them costs no measured time).
#[derive(Default)]
struct Payloads {
    /// The big keyframe, as a masked WebSocket frame.
    keyframe: Vec<u8>,
    /// 512 unchanged deltas of the big frame.
    identity: Vec<u8>,
    /// One delta that changes 4 bytes of the big frame (every byte with --full-delta).
    delta: Vec<u8>,
    /// The ~1 MiB SignalSync.
    sync: Vec<u8>,
    /// The oversized SignalSync.
    oversized: Vec<u8>,
}

fn client_msg(msg: &[u8], rng: &mut Rng) -> Vec<u8> {
    ws::client_frame(ws::OP_BINARY, true, msg, rng.mask())
}

/// A JSON object of `bytes` bytes (give or take a few): `{"k000000":"xxx…",…}`.
fn big_json(bytes: usize) -> Vec<u8> {
    let mut s = String::with_capacity(bytes + 128);
    s.push('{');
    let mut i = 0;
    while s.len() + 110 < bytes {
        let _ = write!(
            s,
            "{}\"k{i:06}\":\"{}\"",
            if i > 0 { "," } else { "" },
            "v".repeat(88)
        );
        i += 1;
    }
    let pad = bytes.saturating_sub(s.len() + 12).max(1);
    let _ = write!(
        s,
        "{}\"pad\":\"{}\"}}",
        if i > 0 { "," } else { "" },
        "p".repeat(pad)
    );
    s.into_bytes()
}

impl Payloads {
    fn build(o: &HostileOpts, attacks: &[Attack]) -> Payloads {
        let mut p = Payloads::default();
        let mut rng = Rng::new(0x5EED);
        let (w, h) = (o.big_width, o.big_height);
        let len = w as usize * h as usize * 4;
        if attacks.contains(&Attack::DeltaJoiners) || attacks.contains(&Attack::CachedState) {
            let rgba: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            p.keyframe = client_msg(&protocol::pixels_keyframe(0, 0, w, h, &rgba), &mut rng);
            let mut xored = vec![0u8; len];
            let mut zrle = Vec::new();
            codec::zrle_encode(&xored, &mut zrle);
            for seq in 0..512u16 {
                p.identity.extend(client_msg(
                    &protocol::delta_pixels(seq, 0, w, h, &zrle),
                    &mut rng,
                ));
            }
            if o.full_delta {
                xored.fill(0xA5);
            } else {
                xored[len / 2..len / 2 + 4].copy_from_slice(&[0xFF; 4]);
            }
            zrle.clear();
            codec::zrle_encode(&xored, &mut zrle);
            p.delta = client_msg(&protocol::delta_pixels(1, 0, w, h, &zrle), &mut rng);
        }
        if attacks.contains(&Attack::SignalDiffs) || attacks.contains(&Attack::CachedState) {
            p.sync = client_msg(
                &protocol::signal(false, 2, 0, &big_json(o.signal_bytes)),
                &mut rng,
            );
        }
        if attacks.contains(&Attack::OversizedSignal) {
            p.oversized = client_msg(
                &protocol::signal(false, 0, 0, &big_json(o.oversized_bytes)),
                &mut rng,
            );
        }
        p
    }
}

/// One phase's attack: where, until when, and what became of its clients.
struct Ctx {
    target: Target,
    run_id: String,
    until: Instant,
    open: Arc<AtomicUsize>,
    o: HostileOpts,
    pay: Arc<Payloads>,
    kinds: Mutex<BTreeMap<&'static str, Kind>>,
    facts: Mutex<BTreeMap<String, f64>>,
    notes: Mutex<Vec<String>>,
    source_status: Mutex<Option<u16>>,
}

impl Ctx {
    fn ch(&self, name: &str) -> String {
        format!("{}-{name}", self.run_id)
    }

    fn over(&self) -> bool {
        Instant::now() >= self.until
    }

    fn left(&self) -> Duration {
        self.until.saturating_duration_since(Instant::now())
    }

    /// A WebSocket connection on `path`, counted open.
    async fn join(&self, path: &str, seed: u32) -> Result<Conn, String> {
        self.open.fetch_add(1, Relaxed);
        let open = Open(self.open.clone());
        let (s, left) = peer::open_path(&self.target, path, None, seed).await?;
        Ok(Conn {
            s,
            left,
            _open: open,
        })
    }

    /// An attacker of `kind` ended so, after `secs`.
    fn end(&self, kind: &'static str, out: &str, secs: f64) {
        let mut k = self.kinds.lock().unwrap();
        let e = k.entry(kind).or_default();
        e.attempted += 1;
        *e.outcomes.entry(out.to_owned()).or_default() += 1;
        e.secs.push(secs);
    }

    /// Adds `n` to the fact `key`.
    fn add(&self, key: &str, n: f64) {
        *self
            .facts
            .lock()
            .unwrap()
            .entry(key.to_owned())
            .or_default() += n;
    }

    fn note(&self, s: String) {
        self.notes.lock().unwrap().push(s);
    }
}

/// Writes `batch` again and again until the phase ends or a write fails;
/// counts `per_batch` in `sent`. Ok at the end of the phase, else the error.
async fn write_until(
    c: &Ctx,
    s: &TcpStream,
    batch: &[u8],
    per_batch: u64,
    sent: &AtomicU64,
) -> Result<(), String> {
    while !c.over() {
        write_all(s, batch).await.map_err(|e| peer::io_end(&e))?;
        sent.fetch_add(per_batch, Relaxed);
        tokio::task::yield_now().await;
    }
    Ok(())
}

/// `batch` written on `conn` until the phase ends or the relay ends it,
/// while reading (and answering a close); how it ended.
async fn write_and_watch(
    c: &Ctx,
    conn: &Conn,
    batch: &[u8],
    per: u64,
    sent: &AtomicU64,
) -> Watched {
    let writer = async {
        let _ = write_until(c, &conn.s, batch, per, sent).await;
        std::future::pending::<()>().await
    };
    tokio::select! {
        w = watch_end(&conn.s, &conn.left, c.left(), None) => w,
        _ = writer => unreachable!(),
    }
}

const FLOODER: &str = "ping flooder (empty pings back to back, reads pongs)";
const PINGER: &str = "silent pinger (125-byte pings back to back, never reads)";

/// A client of `{run}-pings` that pings back to back: reading what comes
/// back (`read`) or never reading; again after the relay closes it, with
/// `reconnect`, until the phase ends.
async fn pinger(c: Arc<Ctx>, i: usize, read: bool) {
    let (kind, payload) = if read { (FLOODER, 0) } else { (PINGER, 125) };
    let mut rng = Rng::new(now_ns() ^ i as u64);
    let mut batch = Vec::new();
    let per = if read { 1024 } else { 128 };
    for _ in 0..per {
        batch.extend(ws::client_frame(
            ws::OP_PING,
            true,
            &vec![b'p'; payload],
            rng.mask(),
        ));
    }
    let path = format!("/stream/{}", c.ch("pings"));
    let mut sessions = 0;
    while !c.over() && sessions < 2000 {
        sessions += 1;
        let t0 = Instant::now();
        let conn = match c.join(&path, i as u32).await {
            Ok(x) => x,
            Err(e) => {
                c.end(kind, &e, t0.elapsed().as_secs_f64());
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let sent = AtomicU64::new(0);
        let out = if read {
            let w = write_and_watch(&c, &conn, &batch, per, &sent).await;
            c.add("pongs read", w.pongs as f64);
            ended(&w)
        } else {
            let wrote = write_until(&c, &conn.s, &batch, per, &sent).await;
            // Only now read what came back, to see how the relay ended it.
            let w = watch_end(&conn.s, &conn.left, Duration::from_millis(300), None).await;
            c.add("bytes left unread, then read", w.bytes as f64);
            match (wrote, &w.end) {
                (Ok(()), End::Timeout) => OPEN.into(),
                (Err(e), End::Timeout) => format!("write failed ({e}), nothing ended the read"),
                (_, _) => ended(&w),
            }
        };
        c.add("pings written", sent.load(Relaxed) as f64);
        c.end(kind, &out, t0.elapsed().as_secs_f64());
        if !c.o.reconnect {
            break;
        }
    }
}

/// The `n`-th 10-byte SignalDiff payload: `{"a":1000}` and on.
fn diff_json(n: u64) -> Vec<u8> {
    format!("{{\"a\":{}}}", 1000 + n % 9000).into_bytes()
}

const SIG_SOURCE: &str = "signal source (big SignalSync, then 10-byte SignalDiffs)";
const SIG_READER: &str = "reading receiver of a signal channel";

/// Sets the big signal state on `{run}-sig{k}`, then sends 10-byte
/// SignalDiffs at `--diff-rate` until the phase ends; a receiver reads.
async fn signal_diffs(c: Arc<Ctx>, k: usize) {
    let ch = c.ch(&format!("sig{k}"));
    let t0 = Instant::now();
    let reader = match c.join(&format!("/stream/{ch}"), k as u32).await {
        Ok(r) => Some(r),
        Err(e) => {
            c.end(SIG_READER, &e, 0.0);
            None
        }
    };
    let read = async {
        if let Some(r) = &reader {
            let w = watch_end(&r.s, &r.left, c.left(), None).await;
            c.add("messages the readers got", w.msgs as f64);
            c.end(SIG_READER, &ended(&w), t0.elapsed().as_secs_f64());
        }
    };
    let src = async {
        let conn = match c.join(&format!("/source/{ch}"), k as u32).await {
            Ok(x) => x,
            Err(e) => return c.end(SIG_SOURCE, &e, 0.0),
        };
        let sent = AtomicU64::new(0);
        let writer = async {
            if write_all(&conn.s, &c.pay.sync).await.is_err() {
                return;
            }
            let (start, mut rng, mut buf) = (Instant::now(), Rng::new(k as u64 + 9), Vec::new());
            while !c.over() {
                tokio::time::sleep(Duration::from_millis(10)).await;
                let due = (start.elapsed().as_secs_f64() * c.o.diff_rate as f64) as u64;
                buf.clear();
                for n in sent.load(Relaxed)..due {
                    let msg = protocol::signal(true, n as u16, 0, &diff_json(n));
                    buf.extend(client_msg(&msg, &mut rng));
                }
                if write_all(&conn.s, &buf).await.is_err() {
                    return;
                }
                sent.store(due, Relaxed);
            }
        };
        let w = tokio::select! {
            w = watch_end(&conn.s, &conn.left, c.left() + Duration::from_millis(100), None) => w,
            _ = async { writer.await; std::future::pending::<()>().await } => unreachable!(),
        };
        c.add("diffs sent", sent.load(Relaxed) as f64);
        c.end(SIG_SOURCE, &ended(&w), t0.elapsed().as_secs_f64());
    };
    tokio::join!(read, src);
}

const DJ_SOURCE: &str = "source (big keyframe, then rounds of 512 unchanged deltas)";
const DJ_JOINER: &str = "joiner after each round (never reads)";

/// A big keyframe, then rounds of 512 identity deltas, each round followed
/// by a receiver that joins and never reads, spread over the phase.
async fn delta_joiners(c: Arc<Ctx>) {
    let ch = c.ch("deltas");
    let t0 = Instant::now();
    let src = match c.join(&format!("/source/{ch}"), 1).await {
        Ok(x) => x,
        Err(e) => return c.end(DJ_SOURCE, &e, 0.0),
    };
    let mut joiners: Vec<Conn> = Vec::new();
    let run = async {
        write_all(&src.s, &c.pay.keyframe)
            .await
            .map_err(|e| format!("keyframe: {}", peer::io_end(&e)))?;
        c.add("keyframe write s", t0.elapsed().as_secs_f64());
        let rounds = c.o.rounds.max(1);
        let every = c.left().mul_f64(0.8) / rounds as u32;
        let start = Instant::now();
        for r in 0..rounds {
            tokio::time::sleep_until(start + every * r as u32).await;
            if c.over() {
                break;
            }
            write_all(&src.s, &c.pay.identity)
                .await
                .map_err(|e| format!("deltas: {}", peer::io_end(&e)))?;
            c.add("rounds", 1.0);
            match c.join(&format!("/stream/{ch}"), r as u32).await {
                Ok(j) => joiners.push(j),
                Err(e) => c.end(DJ_JOINER, &e, 0.0),
            }
        }
        Ok::<(), String>(())
    };
    let w = tokio::select! {
        w = watch_end(&src.s, &src.left, c.left(), None) => w,
        r = run => {
            let w = watch_end(&src.s, &[], c.left(), None).await;
            if let Err(e) = r {
                c.note(format!("source stopped: {e}"));
            }
            w
        }
    };
    c.end(DJ_SOURCE, &ended(&w), t0.elapsed().as_secs_f64());
    cached_bytes(&c, "deltas").await;
    // How each joiner ended, seen without reading what it holds.
    for j in &joiners {
        let (end, queued) = probe::peek_end(&j.s);
        c.add("MB unread in the joiners' sockets", queued as f64 / 1e6);
        c.end(DJ_JOINER, end.unwrap_or(OPEN), t0.elapsed().as_secs_f64());
    }
}

/// Notes the relay's cached bytes (`GET /channels`) of this phase's
/// channels whose names start with `{run}-{prefix}`.
async fn cached_bytes(c: &Ctx, prefix: &str) {
    let Ok((200, body)) = http_get(&c.target, "/channels").await else {
        return c.note("GET /channels failed".into());
    };
    let want = c.ch(prefix);
    let list: Vec<Value> = serde_json::from_str(&body).unwrap_or_default();
    let mine: Vec<&Value> = list
        .iter()
        .filter(|ch| ch["name"].as_str().is_some_and(|n| n.starts_with(&want)))
        .collect();
    let bytes: u64 = mine
        .iter()
        .filter_map(|ch| ch["cached_bytes"].as_u64())
        .sum();
    c.note(format!(
        "GET /channels: {} of its channels listed, {:.1} MB cached in them, {} channels in all",
        mine.len(),
        bytes as f64 / 1e6,
        list.len()
    ));
    c.add("cached MB (GET /channels)", bytes as f64 / 1e6);
}

const CACHE_SOURCE: &str = "source (big keyframe, a delta, big SignalSync, then a close)";

/// Source `k` of `{run}-cache{k}`: the big keyframe, a delta, the big
/// SignalSync, a close 1000; then it waits for the relay's close.
async fn cached_state(c: Arc<Ctx>, k: usize) {
    let t0 = Instant::now();
    let conn = match c
        .join(&format!("/source/{}", c.ch(&format!("cache{k}"))), k as u32)
        .await
    {
        Ok(x) => x,
        Err(e) => return c.end(CACHE_SOURCE, &e, 0.0),
    };
    for (what, b) in [
        ("keyframe", &c.pay.keyframe),
        ("delta", &c.pay.delta),
        ("sync", &c.pay.sync),
    ] {
        if let Err(e) = write_all(&conn.s, b).await {
            let out = format!("{what} write: {}", peer::io_end(&e));
            return c.end(CACHE_SOURCE, &out, t0.elapsed().as_secs_f64());
        }
    }
    let close = ws::client_frame(
        ws::OP_CLOSE,
        true,
        &ws::close_payload(1000, ""),
        [5, 5, 5, 5],
    );
    let _ = write_all(&conn.s, &close).await;
    let w = watch_end(&conn.s, &conn.left, Duration::from_secs(5), None).await;
    c.end(CACHE_SOURCE, &w.end.outcome(), t0.elapsed().as_secs_f64());
}

const OVERSIZED: &str = "source of one oversized SignalSync";
const WITNESS: &str = "witness receiver of that channel";

/// Source `k` of `{run}-big{k}` sends the oversized SignalSync the moment
/// the other one does; a witness receiver watches the channel.
async fn oversized(c: Arc<Ctx>, k: usize, both: Arc<Barrier>) {
    let ch = c.ch(&format!("big{k}"));
    let t0 = Instant::now();
    let witness = c.join(&format!("/stream/{ch}"), k as u32).await;
    let conn = c.join(&format!("/source/{ch}"), k as u32).await;
    both.wait().await;
    let src = async {
        let conn = match conn {
            Ok(x) => x,
            Err(e) => return c.end(OVERSIZED, &e, 0.0),
        };
        let sent = AtomicU64::new(0);
        let writer = async {
            if write_all(&conn.s, &c.pay.oversized).await.is_ok() {
                sent.store(1, Relaxed);
                c.add("oversized write s", t0.elapsed().as_secs_f64());
            }
            std::future::pending::<()>().await
        };
        let w = tokio::select! {
            w = watch_end(&conn.s, &conn.left, c.left(), None) => w,
            _ = writer => unreachable!(),
        };
        let out = match (&w.end, sent.load(Relaxed)) {
            (End::Timeout, 0) => "still writing at the end of the phase".into(),
            _ => ended(&w),
        };
        c.end(OVERSIZED, &out, t0.elapsed().as_secs_f64());
    };
    let watch = async {
        match &witness {
            Ok(wc) => {
                let w = watch_end(&wc.s, &wc.left, c.left(), None).await;
                let out = format!("{} messages; {}", w.msgs, ended(&w));
                c.end(WITNESS, &out, t0.elapsed().as_secs_f64());
            }
            Err(e) => c.end(WITNESS, e, 0.0),
        }
    };
    tokio::join!(src, watch);
}

const STORMER: &str = "receiver on a channel of its own";
const NEW_SOURCE: &str = "new source right after the storm left";

/// `--storm` receivers on distinct channels, `--storm-batch` handshakes at
/// a time; all leave at once; then a source on a new channel, which must
/// be accepted at once (tried again every 100 ms for 5 s to say when).
async fn handshake_storm(c: Arc<Ctx>) {
    let t0 = Instant::now();
    let mut joined: Vec<Conn> = Vec::with_capacity(c.o.storm);
    let mut i = 0;
    while i < c.o.storm {
        let n = c.o.storm_batch.max(1).min(c.o.storm - i);
        let tasks: Vec<JoinHandle<Result<Conn, String>>> = (i..i + n)
            .map(|k| {
                let c = c.clone();
                tokio::spawn(async move {
                    c.join(&format!("/stream/{}", c.ch(&format!("hs{k}"))), k as u32)
                        .await
                })
            })
            .collect();
        for t in tasks {
            match t.await.map_err(|e| e.to_string()).and_then(|r| r) {
                Ok(x) => joined.push(x),
                Err(e) => c.end(STORMER, &e, t0.elapsed().as_secs_f64()),
            }
        }
        i += n;
    }
    let storm_s = t0.elapsed().as_secs_f64();
    c.add("storm seconds to connect", storm_s);
    let n = joined.len();
    let t_leave = Instant::now();
    drop(joined);
    for _ in 0..n {
        c.end(STORMER, "joined (101), left with the others", storm_s);
    }
    let leave_ms = t_leave.elapsed().as_secs_f64() * 1000.0;
    let path = format!("/source/{}", c.ch("new-source"));
    let t1 = Instant::now();
    let mut tries = 0;
    let last = loop {
        tries += 1;
        let r = c.join(&path, 7).await;
        let ms = t1.elapsed().as_secs_f64() * 1000.0;
        let status = match &r {
            Ok(_) => 101,
            Err(e) => e
                .strip_prefix("HTTP ")
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
        };
        let out = r
            .as_ref()
            .err()
            .cloned()
            .unwrap_or_else(|| "HTTP 101".into());
        if tries == 1 {
            *c.source_status.lock().unwrap() = Some(status);
            c.end(NEW_SOURCE, &out, ms / 1000.0);
            c.note(format!(
                "{n} joined in {storm_s:.2} s, closed in {leave_ms:.0} ms; the new source got {out} {ms:.1} ms after they left"
            ));
        }
        if status == 101 || t1.elapsed() > Duration::from_secs(5) {
            break (status, tries, ms);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    if last.1 > 1 {
        c.note(format!(
            "the new source: HTTP {} at try {} ({:.0} ms after the storm left)",
            last.0, last.1, last.2
        ));
    }
    if let Ok((200, m)) = http_get(&c.target, "/metrics").await {
        let lines = metric_lines(&m);
        if let Some(v) = probe::metric_value(&lines, "relay_channels") {
            c.add("relay_channels after the new source", v);
        }
    }
}

const SLOW: &str = "slow reader (reads --slow-rate bytes/s of the healthy channel)";

/// A receiver of the healthy channel reading `--slow-rate` bytes a second
/// in 16 sips, until the phase ends or the relay closes it.
async fn slow_reader(c: Arc<Ctx>, i: usize) {
    let t0 = Instant::now();
    let path = format!("/stream/{}", c.ch("live"));
    let conn = match c.join(&path, i as u32).await {
        Ok(x) => x,
        Err(e) => return c.end(SLOW, &e, t0.elapsed().as_secs_f64()),
    };
    let sip = (c.o.slow_rate / 16).max(1);
    let mut buf = vec![0u8; 4096];
    let mut read = conn.left.len() as u64;
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / 16));
    let out = 'phase: loop {
        tick.tick().await;
        if c.over() {
            break OPEN.to_owned();
        }
        let mut want = sip;
        while want > 0 {
            let n = want.min(buf.len());
            match conn.s.try_read(&mut buf[..n]) {
                Ok(0) => break 'phase "closed by the relay".to_owned(),
                Ok(n) => {
                    want -= n;
                    read += n as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => break 'phase peer::io_end(&e),
            }
        }
    };
    c.add("slow readers' bytes read", read as f64);
    c.end(SLOW, &out, t0.elapsed().as_secs_f64());
}

/// The host's TCP memory now (`/proc/net/sockstat`, pages), in MiB.
fn host_tcp_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    let line = s.lines().find(|l| l.starts_with("TCP:"))?;
    let mut words = line.split_whitespace();
    words.find(|w| *w == "mem")?;
    let pages: f64 = words.next()?.parse().ok()?;
    Some(pages * 4096.0 / (1024.0 * 1024.0))
}

/// Samples the host's TCP memory every 100 ms over the phase; notes the
/// peak above where it started.
async fn tcp_memory(c: Arc<Ctx>) {
    let Some(start) = host_tcp_mib() else {
        return c.note("host TCP memory: /proc/net/sockstat unreadable".into());
    };
    let mut peak = start;
    while !c.over() {
        tokio::time::sleep(Duration::from_millis(100)).await;
        peak = peak.max(host_tcp_mib().unwrap_or(peak));
    }
    c.add("host TCP memory at the start, MiB", start);
    c.add("host TCP memory peak, MiB", peak);
}

const SSE_SOURCE: &str = "signal source (a --signal-bytes SignalSync, then 30 diffs/s)";
const SSE_WATCHER: &str = "SSE watcher (GET /events, never reads)";

/// The signal source of the SSE channel: the big SignalSync, then 30 small
/// diffs a second until the phase ends.
async fn sse_source(c: Arc<Ctx>) {
    let t0 = Instant::now();
    let conn = match c.join(&format!("/source/{}", c.ch("sse")), 0).await {
        Ok(x) => x,
        Err(e) => return c.end(SSE_SOURCE, &e, 0.0),
    };
    let writer = async {
        if write_all(&conn.s, &c.pay.sync).await.is_err() {
            return;
        }
        let mut rng = Rng::new(77);
        let mut n = 0u64;
        while !c.over() {
            tokio::time::sleep(Duration::from_millis(33)).await;
            let msg = protocol::signal(true, n as u16, 0, &diff_json(n));
            if write_all(&conn.s, &client_msg(&msg, &mut rng))
                .await
                .is_err()
            {
                return;
            }
            n += 1;
        }
    };
    let w = tokio::select! {
        w = watch_end(&conn.s, &conn.left, c.left() + Duration::from_millis(100), None) => w,
        _ = async { writer.await; std::future::pending::<()>().await } => unreachable!(),
    };
    c.end(SSE_SOURCE, &ended(&w), t0.elapsed().as_secs_f64());
}

/// One `GET /events` client with a 4 KiB receive buffer that never reads:
/// the relay holds what it cannot send (charged to --max-memory) until it
/// resyncs or closes the watcher.
async fn sse_watcher(c: Arc<Ctx>) {
    let t0 = Instant::now();
    // After the source's big sync, so each watcher's first event is it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let s = match peer::tcp_connect(c.target.addr, Some(4096)).await {
        Ok(s) => s,
        Err(e) => return c.end(SSE_WATCHER, &peer::io_end(&e), 0.0),
    };
    let req = format!(
        "GET /events/{} HTTP/1.1\r\nHost: {}\r\n\r\n",
        c.ch("sse"),
        c.target.host
    );
    if let Err(e) = write_all(&s, req.as_bytes()).await {
        return c.end(SSE_WATCHER, &peer::io_end(&e), t0.elapsed().as_secs_f64());
    }
    while !c.over() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Closed by the relay? A peek at the socket's state, nothing read.
    let mut probe = [0u8; 1];
    let out = match s.try_read(&mut probe) {
        Ok(0) => "closed by the relay".to_owned(),
        Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => peer::io_end(&e),
        _ => OPEN.to_owned(),
    };
    c.end(SSE_WATCHER, &out, t0.elapsed().as_secs_f64());
}

/// Samples what the relay says it holds (`relay_memory_bytes`) and its RSS
/// from `/metrics` every 250 ms over the phase; notes the peaks, so the
/// watchers' unsent bytes can be compared with the memory they cost.
async fn memory_peaks(c: Arc<Ctx>) {
    let (mut charged, mut rss, mut samples) = (0f64, 0f64, 0u32);
    while !c.over() {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let Ok((200, m)) = http_get(&c.target, "/metrics").await else {
            continue;
        };
        let lines: Vec<String> = m.lines().map(str::to_owned).collect();
        let read = |name| probe::metric_value(&lines, name).unwrap_or(0.0);
        charged = charged.max(read("relay_memory_bytes"));
        rss = rss.max(read("relay_process_resident_bytes"));
        samples += 1;
    }
    if samples == 0 {
        return c.note("GET /metrics failed during the phase".into());
    }
    c.add("relay_memory_bytes peak (charged), MB", charged / 1e6);
    c.add("relay RSS peak (its /metrics), MB", rss / 1e6);
}

impl Attack {
    /// Runs the attack on `c` until its phase ends (and its clients are closed).
    async fn run(self, c: Arc<Ctx>) {
        let mut tasks: Vec<JoinHandle<()>> = Vec::new();
        match self {
            Attack::PingFlood => {
                for i in 0..c.o.flooders {
                    tasks.push(tokio::spawn(pinger(c.clone(), i, true)));
                }
            }
            Attack::SilentPingers => {
                for i in 0..c.o.pingers {
                    tasks.push(tokio::spawn(pinger(c.clone(), i, false)));
                }
            }
            Attack::SignalDiffs => {
                for k in 0..2 {
                    tasks.push(tokio::spawn(signal_diffs(c.clone(), k)));
                }
            }
            Attack::DeltaJoiners => tasks.push(tokio::spawn(delta_joiners(c.clone()))),
            Attack::CachedState => {
                for k in 0..c.o.cached_channels {
                    tasks.push(tokio::spawn(cached_state(c.clone(), k)));
                }
            }
            Attack::OversizedSignal => {
                let both = Arc::new(Barrier::new(2));
                for k in 0..2 {
                    tasks.push(tokio::spawn(oversized(c.clone(), k, both.clone())));
                }
            }
            Attack::HandshakeStorm => tasks.push(tokio::spawn(handshake_storm(c.clone()))),
            Attack::SlowReaders => {
                tasks.push(tokio::spawn(tcp_memory(c.clone())));
                for i in 0..c.o.slow_readers {
                    tasks.push(tokio::spawn(slow_reader(c.clone(), i)));
                }
            }
            Attack::SseWatchers => {
                tasks.push(tokio::spawn(memory_peaks(c.clone())));
                tasks.push(tokio::spawn(sse_source(c.clone())));
                for _ in 0..c.o.sse_watchers {
                    tasks.push(tokio::spawn(sse_watcher(c.clone())));
                }
            }
        }
        for t in tasks {
            if let Err(e) = t.await {
                c.note(format!("an attacker task failed: {e}"));
            }
        }
        if self == Attack::CachedState {
            cached_bytes(&c, "cache").await;
        }
    }
}

// ---------------------------------------------------------------- the run

/// One phase as the report tells it.
struct Phase {
    name: String,
    what: String,
    res: PhaseResult,
    secs: f64,
    relay_cpu: Option<f64>,
    driver_cpu: Option<f64>,
    rss_start_kib: Option<u64>,
    rss_end_kib: Option<u64>,
    /// (HTTP status, ms) of each GET /healthz.
    healthz: Vec<(u16, f64)>,
    kinds: BTreeMap<&'static str, Kind>,
    facts: BTreeMap<String, f64>,
    notes: Vec<String>,
    metrics: Vec<String>,
}

impl Phase {
    /// `n: p50/max ms (statuses)` of the /healthz probes.
    fn healthz_text(&self) -> String {
        if self.healthz.is_empty() {
            return "-".into();
        }
        let mut ms: Vec<f64> = self.healthz.iter().map(|h| h.1).collect();
        ms.sort_by(f64::total_cmp);
        let mut st: BTreeMap<u16, u64> = BTreeMap::new();
        for h in &self.healthz {
            *st.entry(h.0).or_default() += 1;
        }
        let st: Vec<String> = st
            .iter()
            .map(|(s, n)| {
                if *s == 0 {
                    format!("{n}× failed")
                } else {
                    format!("{n}× {s}")
                }
            })
            .collect();
        format!(
            "{}: {:.1}/{:.1} ({})",
            ms.len(),
            ms[ms.len() / 2],
            ms[ms.len() - 1],
            st.join(", ")
        )
    }

    fn json(&self) -> Value {
        let fr = &self.res.frames;
        json!({
            "phase": self.name,
            "attack": self.what,
            "seconds": self.secs,
            "frames_sent": fr.sent,
            "expected": fr.expected,
            "delivered_intact": fr.delivered,
            "corrupted": fr.corrupt,
            "delivered_fraction": fr.fraction(),
            "latency_ms": fr.lat.json(),
            "healthz": self.healthz.iter().map(|(s, ms)| json!({"status": s, "ms": ms})).collect::<Vec<_>>(),
            "relay_cpu_percent": self.relay_cpu,
            "driver_cpu_percent": self.driver_cpu,
            "rss_MiB_start": self.rss_start_kib.map(|k| k as f64 / 1024.0),
            "rss_MiB_peak": self.res.rss_peak_kib.map(|k| k as f64 / 1024.0),
            "rss_MiB_end": self.rss_end_kib.map(|k| k as f64 / 1024.0),
            "source_status": self.res.source_status,
            "attackers": self.kinds.iter().map(|(k, v)| (k.to_string(), json!({"attempted": v.attempted, "outcomes": v.outcomes, "secs_to_end": {"min": v.secs_at(0.0), "median": v.secs_at(0.5), "max": v.secs_at(1.0)}}))).collect::<serde_json::Map<_, _>>(),
            "facts": self.facts,
            "notes": self.notes,
            "metrics_end": self.metrics,
        })
    }
}

/// What a hostile run gave, for its reports.
struct Ran {
    phases: Vec<Phase>,
    facts: RunFacts,
    /// The healthy stream's summary line.
    fin_text: String,
    timeline: Vec<Value>,
    relay_exit: Option<String>,
    relay_log: Option<std::path::PathBuf>,
}

/// The attacks to run: `--only`, else all of them.
fn chosen(o: &HostileOpts) -> Vec<Attack> {
    if o.only.is_empty() {
        clap::ValueEnum::value_variants().to_vec()
    } else {
        o.only.clone()
    }
}

/// Builds the payloads before the run and says how long that took.
fn payloads(o: &HostileOpts, attacks: &[Attack]) -> Arc<Payloads> {
    let t = Instant::now();
    let pay = Arc::new(Payloads::build(o, attacks));
    eprintln!(
        "loadtest hostile: payloads built in {:.2} s (big keyframe {} B, sync {} B, oversized {} B)",
        t.elapsed().as_secs_f64(),
        pay.keyframe.len(),
        pay.sync.len(),
        pay.oversized.len()
    );
    pay
}

/// `loadtest hostile`: returns the exit code.
pub fn main(o: HostileOpts) -> i32 {
    let nofile = sys::raise_nofile();
    o.target.pin_driver(o.target.start.is_some());
    let attacks = chosen(&o);
    if attacks.contains(&Attack::HandshakeStorm)
        && o.storm + o.stream.receivers + 256 > nofile as usize
    {
        eprintln!(
            "loadtest hostile: --storm {} needs more open files than the limit {nofile} allows",
            o.storm
        );
        return 2;
    }
    let tag = format!("hostile-{}", report::stamp());
    let Some(mut relay) = o.target.under_test(o.stream.receivers, &tag, &[]) else {
        return 2;
    };
    let (url, label) = (relay.url.clone(), relay.label.clone());
    let pay = payloads(&o, &attacks);
    let run = |h| run(&o, &attacks, &url, relay.pid, h, pay);
    let Some((phases, mut facts, fin_text, timeline)) =
        probe::with_attackers("hostile", &label, &url, run)
    else {
        return 1;
    };
    let relay_log = relay.log().map(|l| l.to_path_buf());
    let relay_exit = relay.finish();
    facts
        .stopped
        .extend(relay_exit.iter().map(|e| format!("relay exited: {e}")));
    let ran = Ran {
        phases,
        facts,
        fin_text,
        timeline,
        relay_exit,
        relay_log,
    };
    let bounds = Bounds {
        max_p99_ms: o.max_p99_ms,
        max_rss_mib: o.max_rss_mib,
    };
    let results: Vec<PhaseResult> = ran.phases.iter().map(|p| p.res.clone()).collect();
    let v = verdict(&results, &ran.facts, &bounds);
    let text = report_text(&o, &label, &url, &ran, &v);
    println!("{text}");
    let json = report_json(&o, &label, &url, &attacks, &ran, &v);
    let base = format!("hostile-{label}-{}", report::stamp());
    report::write_pair(&o.target.out, &base, &text, &json);
    let failed = v.failures().len();
    let detail = format!(
        "healthy receivers {}; {failed} failed check(s)",
        ran.facts.counts.defects()
    );
    eprintln!(
        "{}",
        v.stderr(&format!("hostile against {label} ({url})"), &detail)
    );
    v.exit_code()
}

/// The JSON result of a hostile run.
fn report_json(
    o: &HostileOpts,
    label: &str,
    url: &str,
    attacks: &[Attack],
    ran: &Ran,
    v: &Verdict,
) -> Value {
    let facts = &ran.facts;
    json!({
        "scenario": "hostile",
        "relay": label,
        "url": url,
        "bounds": {"max_p99_ms": o.max_p99_ms, "max_rss_MiB": o.max_rss_mib},
        "config": {
            "receivers": o.stream.receivers, "width": o.stream.width, "height": o.stream.height, "fps": o.stream.fps,
            "calm_s": o.calm, "phase_s": o.phase, "attacks": attacks.iter().map(|a| a.name_and_help().0).collect::<Vec<_>>(),
            "flooders": o.flooders, "pingers": o.pingers, "reconnect": o.reconnect, "diff_rate": o.diff_rate,
            "signal_bytes": o.signal_bytes, "big_width": o.big_width, "big_height": o.big_height, "rounds": o.rounds,
            "cached_channels": o.cached_channels, "oversized_bytes": o.oversized_bytes, "storm": o.storm, "storm_batch": o.storm_batch,
        },
        "phases": ran.phases.iter().map(Phase::json).collect::<Vec<_>>(),
        "healthy": {"receivers": o.stream.receivers, "missing": facts.counts.missing, "duplicate": facts.counts.duplicate,
            "out_of_order": facts.counts.out_of_order, "corrupted": facts.counts.corrupt, "ended_early": facts.ended_early},
        "stopped": facts.stopped,
        "relay_exit": ran.relay_exit,
        "relay_log": ran.relay_log.as_ref().map(|l| l.display().to_string()),
        "timeline": ran.timeline,
        "failures": v.failures(),
        "verdict": v.json(),
        "ok": v.passed(),
    })
}

/// What every phase of a hostile run shares.
struct Shared<'a> {
    o: &'a HostileOpts,
    target: &'a Target,
    run_id: &'a str,
    pid: Option<u32>,
    hrt: &'a Handle,
    open: &'a Arc<AtomicUsize>,
    pay: &'a Arc<Payloads>,
}

/// GETs /healthz every 0.5 s until `done`: (status, ms) of each (status 0: failed).
async fn healthz_probes(target: &Target, mut done: watch::Receiver<bool>) -> Vec<(u16, f64)> {
    let mut v = Vec::new();
    while !*done.borrow() {
        let t = Instant::now();
        let st = http_get(target, "/healthz").await.map_or(0, |(s, _)| s);
        v.push((st, t.elapsed().as_secs_f64() * 1000.0));
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = done.wait_for(|d| *d) => {}
        }
    }
    v
}

/// The relay's peak RSS in a phase (KiB): VmHWM is the peak since the
/// relay started, so when it rose during the phase it is the phase's
/// exact peak; else the highest of the samples (`seen`) and the RSS at
/// either end.
fn phase_peak(seen: u64, rss: [Option<u64>; 2], hwm: [Option<u64>; 2]) -> u64 {
    let seen = seen.max(rss[0].unwrap_or(0)).max(rss[1].unwrap_or(0));
    match hwm {
        [Some(a), Some(b)] if b > a => b.max(seen),
        _ => seen,
    }
}

/// Runs phase `p` (`name`, doing `what`): the attack if any, /healthz
/// probes, the monitor; what it measured (its frames are filled in later).
async fn phase(
    sh: &Shared<'_>,
    mon: &mut Monitor<'_>,
    stream: &Stream,
    p: usize,
    name: &str,
    what: &str,
    attack: Option<Attack>,
) -> Phase {
    let (o, pid, me) = (sh.o, sh.pid, std::process::id());
    eprintln!("loadtest hostile: phase {p} {name}: {what}");
    stream.tally.clock.begin(p);
    let t0 = Instant::now();
    let until = t0 + Duration::from_secs_f64(if p == 0 { o.calm } else { o.phase });
    let cpu0 = (pid.and_then(ProcSample::take), ProcSample::take(me));
    let (hwm0, rss0) = (pid.and_then(sys::hwm_kib), pid.and_then(sys::rss_kib));
    let ctx = Arc::new(Ctx {
        target: sh.target.clone(),
        run_id: sh.run_id.to_owned(),
        until,
        open: sh.open.clone(),
        o: o.clone(),
        pay: sh.pay.clone(),
        kinds: Mutex::new(BTreeMap::new()),
        facts: Mutex::new(BTreeMap::new()),
        notes: Mutex::new(Vec::new()),
        source_status: Mutex::new(None),
    });
    let task = attack.map(|a| sh.hrt.spawn(a.run(ctx.clone())));
    let (done_tx, done_rx) = watch::channel(false);
    let attack_done = async {
        if let Some(t) = task {
            let limit = until + Duration::from_secs(60);
            match tokio::time::timeout_at(limit, t).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => ctx.note(format!("the attack failed: {e}")),
                Err(_) => ctx.note(
                    "the attack did not end within 60 s of its phase (its task was left)".into(),
                ),
            }
        }
        tokio::time::sleep_until(until).await;
        let _ = done_tx.send(true);
    };
    let mut peak = 0u64;
    let both = async { tokio::join!(attack_done, healthz_probes(sh.target, done_rx)) };
    let (_, healthz) = mon.watch(p, &mut peak, both).await;
    let cpu1 = (pid.and_then(ProcSample::take), ProcSample::take(me));
    let (hwm1, rss1) = (pid.and_then(sys::hwm_kib), pid.and_then(sys::rss_kib));
    let rss_peak_kib = pid.map(|_| phase_peak(peak, [rss0, rss1], [hwm0, hwm1]));
    let metrics = http_get(sh.target, "/metrics")
        .await
        .map(|(_, b)| metric_lines(&b))
        .unwrap_or_default();
    let source_status = *ctx.source_status.lock().unwrap();
    let kinds = std::mem::take(&mut *ctx.kinds.lock().unwrap());
    let facts = std::mem::take(&mut *ctx.facts.lock().unwrap());
    let notes = std::mem::take(&mut *ctx.notes.lock().unwrap());
    Phase {
        name: name.to_string(),
        what: what.to_owned(),
        res: PhaseResult {
            name: name.to_string(),
            frames: PhaseFrames::default(),
            rss_peak_kib,
            source_status,
        },
        secs: t0.elapsed().as_secs_f64(),
        relay_cpu: cpu_between(cpu0.0, cpu1.0),
        driver_cpu: cpu_between(cpu0.1, cpu1.1),
        rss_start_kib: rss0,
        rss_end_kib: rss1,
        healthz,
        kinds,
        facts,
        notes,
        metrics,
    }
}

type RunOut = (Vec<Phase>, RunFacts, String, Vec<Value>);

async fn run(
    o: &HostileOpts,
    attacks: &[Attack],
    url: &str,
    pid: Option<u32>,
    hrt: Handle,
    pay: Arc<Payloads>,
) -> Result<RunOut, String> {
    let target = Target::parse(url)?;
    if target.framing != Framing::Ws {
        return Err(format!("--url must be ws://HOST:PORT, not {url}"));
    }
    static RUN: AtomicU64 = AtomicU64::new(0);
    let run_id = format!(
        "hostile{}x{}",
        std::process::id(),
        RUN.fetch_add(1, Relaxed)
    );
    let live = format!("{run_id}-live");
    let (mut names, mut whats) = (vec!["calm".to_owned()], vec!["the stream alone".to_owned()]);
    for a in attacks {
        let (n, w) = a.name_and_help();
        names.push(n);
        whats.push(w);
    }
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let stream = Stream::start(&target, &live, &o.stream, names.len()).await?;
    let open = Arc::new(AtomicUsize::new(0));
    let count_open = || open.load(Relaxed);
    let mut mon = Monitor::new(&stream, pid, &names, &count_open);
    stream.go();
    eprintln!(
        "loadtest hostile: {} healthy receivers of {}x{} @ {} fps on {live}; calm {} s, then {} attacks of {} s each",
        o.stream.receivers, o.stream.width, o.stream.height, o.stream.fps, o.calm, attacks.len(), o.phase
    );
    let shared = Shared {
        o,
        target: &target,
        run_id: &run_id,
        pid,
        hrt: &hrt,
        open: &open,
        pay: &pay,
    };
    let mut phases = Vec::new();
    for (p, name) in names.iter().enumerate() {
        let attack = p.checked_sub(1).map(|i| attacks[i]);
        let ph = phase(&shared, &mut mon, &stream, p, name, &whats[p], attack).await;
        phases.push(ph);
    }
    let timeline: Vec<Value> = mon.ticks.iter().map(|k| k.json(&names)).collect();
    stream.stop(o.stream.drain).await;
    let fin = stream.finish().await;
    for (p, ph) in phases.iter_mut().enumerate() {
        ph.res.frames = fin.phases[p];
    }
    let facts = RunFacts {
        counts: fin.counts,
        ended_early: fin.ended.values().sum(),
        stopped: fin
            .source
            .error
            .lock()
            .unwrap()
            .iter()
            .map(|e| format!("healthy source: {e}"))
            .collect(),
    };
    let fin_text = format!(
        "healthy       {} receivers on {live}: {}x{} RGBA Pixels+KEYFRAME ({} B/message) at {} fps; {} frames sent; {} of {} receivers got every frame (lowest {:.3}%); {}; ended early {:?}; other messages {}; source pacing lateness p50 {:.2} / p99 {:.2} / max {:.2} ms",
        fin.receivers, o.stream.width, o.stream.height, o.stream.msg_bytes(), o.stream.fps, fin.sent,
        fin.all_frames, fin.receivers, fin.per_rx_min * 100.0, fin.counts.defects(), fin.ended, fin.counts.other,
        fin.late_ms[0], fin.late_ms[1], fin.late_ms[2]
    );
    Ok((phases, facts, fin_text, timeline))
}

/// The phase table: one row per phase.
fn phase_table(t: &mut String, phases: &[Phase]) {
    let _ = writeln!(t, "\n| # | phase | s | healthy frames intact | p50 ms | p99 ms | max ms | /healthz n: p50/max ms | relay CPU % | relay RSS MiB start/peak/end | driver CPU % |");
    let _ = writeln!(t, "|---|---|---:|---:|---:|---:|---:|---|---:|---|---:|");
    let mib = |k: Option<u64>| opt(k.map(|k| k as f64 / 1024.0), 0);
    for (i, p) in phases.iter().enumerate() {
        let fr = &p.res.frames;
        let _ = writeln!(
            t,
            "| {i} | {} | {:.1} | {}/{} | {:.2} | {:.2} | {:.2} | {} | {} | {}/{}/{} | {} |",
            p.name,
            p.secs,
            fr.delivered,
            fr.expected,
            fr.lat.p50,
            fr.lat.p99,
            fr.lat.max,
            p.healthz_text(),
            opt(p.relay_cpu, 1),
            mib(p.rss_start_kib),
            mib(p.res.rss_peak_kib),
            mib(p.rss_end_kib),
            opt(p.driver_cpu, 1)
        );
    }
}

/// `k v` with 2 decimals for small fractional values, else none.
fn fact_text(k: &str, v: f64) -> String {
    let prec = if v.fract() != 0.0 && v.abs() < 100.0 {
        2
    } else {
        0
    };
    format!("{k} {v:.prec$}")
}

/// Per attack phase: how its attackers ended, its facts and notes.
fn attacker_lines(t: &mut String, phases: &[Phase]) {
    let _ = writeln!(t, "\nattackers, by phase (how they ended: outcome (count); seconds from start to end min/median/max):");
    for (i, p) in phases.iter().enumerate().skip(1) {
        let _ = writeln!(t, "\n{i} {}: {}", p.name, p.what);
        for (k, v) in &p.kinds {
            let _ = writeln!(
                t,
                "    {k}: {} started; {}; {:.3}/{:.3}/{:.3} s",
                v.attempted,
                v.outcomes_text(),
                v.secs_at(0.0),
                v.secs_at(0.5),
                v.secs_at(1.0)
            );
        }
        if !p.facts.is_empty() {
            let f: Vec<String> = p.facts.iter().map(|(k, v)| fact_text(k, *v)).collect();
            let _ = writeln!(t, "    facts: {}", f.join(", "));
        }
        for n in &p.notes {
            let _ = writeln!(t, "    note: {n}");
        }
    }
}

/// The text report of a hostile run.
fn report_text(o: &HostileOpts, label: &str, url: &str, ran: &Ran, v: &Verdict) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "== hostile against {label} ({url}); bounds: healthy p99 <= {} ms in every phase, relay RSS <= {} MiB", o.max_p99_ms, o.max_rss_mib);
    let _ = writeln!(
        t,
        "sizes         flooders {}, pingers {} (reconnect when closed: {}), signal state {} B, diffs {}/s, big keyframe {}x{} RGBA, rounds <= {}, cached channels {}, oversized SignalSync {} B, storm {} ({} at once)",
        o.flooders, o.pingers, o.reconnect, o.signal_bytes, o.diff_rate, o.big_width, o.big_height,
        o.rounds, o.cached_channels, o.oversized_bytes, o.storm, o.storm_batch
    );
    let _ = writeln!(t, "{}", ran.fin_text);
    phase_table(&mut t, &ran.phases);
    attacker_lines(&mut t, &ran.phases);
    let _ = writeln!(t);
    t.push_str(&v.result_text(&format!(
        "every healthy frame intact and in order, p99 and RSS within bounds in every phase ({})",
        ran.facts.counts.defects()
    )));
    if let (Some(e), Some(l)) = (&ran.relay_exit, &ran.relay_log) {
        let _ = writeln!(
            t,
            "relay EXITED  {e}; log {}:\n{}",
            l.display(),
            relays::tail(l)
        );
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::healthy::Lat;

    /// A phase that passes: every frame of 100 × 16 delivered, p99 10 ms, 100 MiB.
    fn good(name: &str) -> PhaseResult {
        PhaseResult {
            name: name.into(),
            frames: PhaseFrames {
                sent: 100,
                expected: 1600,
                delivered: 1600,
                corrupt: 0,
                lat: Lat {
                    p99: 10.0,
                    max: 20.0,
                    samples: 1600,
                    ..Lat::default()
                },
            },
            rss_peak_kib: Some(100 * 1024),
            source_status: None,
        }
    }

    const B: Bounds = Bounds {
        max_p99_ms: 100.0,
        max_rss_mib: 1536,
    };

    fn fails(phases: &[PhaseResult], run: &RunFacts) -> Vec<String> {
        verdict(phases, run, &B).failures()
    }

    #[test]
    fn clean_run_passes_and_bounds_are_inclusive() {
        let mut p = vec![good("calm"), good("ping-flood")];
        assert!(fails(&p, &RunFacts::default()).is_empty());
        p[1].frames.lat.p99 = 100.0;
        p[1].rss_peak_kib = Some(1536 * 1024);
        p[1].source_status = Some(101);
        assert!(fails(&p, &RunFacts::default()).is_empty());
    }

    #[test]
    fn each_broken_bound_fails_naming_its_phase() {
        let run = RunFacts::default();
        let one = |f: &dyn Fn(&mut PhaseResult)| {
            let mut p = vec![good("calm"), good("signal-diffs")];
            f(&mut p[1]);
            let v = fails(&p, &run);
            assert_eq!(v.len(), 1, "{v:?}");
            assert!(v[0].starts_with("FAIL phase 1 signal-diffs: "), "{v:?}");
            v[0].clone()
        };
        assert!(one(&|p| p.frames.lat.p99 = 100.1).contains("p99 100.1 ms > 100 ms"));
        assert!(one(&|p| p.rss_peak_kib = Some(1536 * 1024 + 1)).contains("RSS peak"));
        assert!(one(&|p| p.frames.delivered = 1599)
            .contains("1599 of 1600 (1 not delivered, 0 corrupt)"));
        assert!(one(&|p| {
            p.frames.delivered = 1599;
            p.frames.corrupt = 1;
        })
        .contains("1 corrupt"));
        assert!(one(&|p| p.frames.corrupt = 1).contains("1 corrupt"));
        assert!(one(&|p| p.source_status = Some(503)).contains("HTTP 503"));
        let v = fails(
            &[PhaseResult {
                frames: PhaseFrames::default(),
                ..good("calm")
            }],
            &run,
        );
        assert_eq!(v, ["FAIL phase 0 calm: the healthy source sent no frame"]);
    }

    #[test]
    fn run_wide_defects_fail() {
        let p = [good("calm")];
        let mut run = RunFacts::default();
        run.counts.out_of_order = 1;
        assert_eq!(fails(&p, &run).len(), 1);
        let mut run = RunFacts::default();
        run.counts.duplicate = 2;
        assert_eq!(fails(&p, &run).len(), 1);
        let run = RunFacts {
            ended_early: 1,
            ..RunFacts::default()
        };
        assert_eq!(fails(&p, &run).len(), 1);
        let run = RunFacts {
            stopped: vec![
                "healthy source: closed".into(),
                "relay exited: signal: 9".into(),
            ],
            ..RunFacts::default()
        };
        assert_eq!(
            fails(&p, &run),
            [
                "FAIL healthy source: closed",
                "FAIL relay exited: signal: 9"
            ]
        );
        // Everything at once: every defect reported.
        let mut bad = good("storm");
        bad.frames.lat.p99 = 500.0;
        bad.rss_peak_kib = Some(4 << 20);
        bad.source_status = Some(503);
        bad.frames.delivered = 0;
        assert_eq!(fails(&[good("calm"), bad], &RunFacts::default()).len(), 4);
    }

    #[test]
    fn a_phase_peak_is_vmhwm_when_it_rose_else_the_highest_sample() {
        // VmHWM rose during the phase: it is the peak (above every sample).
        assert_eq!(
            phase_peak(500, [Some(400), Some(450)], [Some(600), Some(900)]),
            900
        );
        // It did not: the highest of the samples and the two ends.
        assert_eq!(
            phase_peak(500, [Some(400), Some(450)], [Some(900), Some(900)]),
            500
        );
        assert_eq!(phase_peak(100, [Some(400), Some(450)], [None, None]), 450);
        assert_eq!(phase_peak(0, [None, None], [Some(1), None]), 0);
    }

    #[test]
    fn passing_checks_are_kept_with_their_measurements() {
        let v = verdict(&[good("calm")], &RunFacts::default(), &B);
        assert!(v.passed());
        let lines: Vec<String> = v.checks().iter().map(|c| c.line()).collect();
        assert!(
            lines.contains(
                &"ok phase 0 calm: healthy p99 10.0 ms <= 100 ms (max 20.0 ms)".to_owned()
            ),
            "{lines:?}"
        );
        assert!(
            lines.contains(&"ok phase 0 calm: relay RSS peak 100 MiB <= 1536 MiB".to_owned()),
            "{lines:?}"
        );
    }

    #[test]
    fn diffs_are_10_byte_json_objects() {
        for n in [0, 1, 8999, 9000, 123_456] {
            let j = diff_json(n);
            assert_eq!(j.len(), 10);
            assert!(serde_json::from_slice::<Value>(&j).unwrap().is_object());
        }
    }

    #[test]
    fn big_json_is_an_object_of_about_the_size_asked() {
        for n in [200usize, 1_000_000, 33_554_416] {
            let j = big_json(n);
            let v: Value = serde_json::from_slice(&j).unwrap();
            assert!(v.is_object());
            assert!(j.len().abs_diff(n) <= 16, "{} for {n}", j.len());
        }
    }
}
