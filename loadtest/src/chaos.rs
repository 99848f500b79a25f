//! `chaos`: a healthy 30 fps stream to N receivers while hostile clients
//! hammer the same relay, then a settle phase. See loadtest/README.md.
//!
//! Threads (all on the driver's CPU): the source on its own thread and
//! current-thread runtime (paced, stamps every frame, validates every input
//! the relay forwards to it); the controller and the healthy receivers on
//! the main thread's current-thread runtime; every hostile client on a
//! separate one-worker runtime whose threads run at nice 10, so the healthy
//! side, which is what is measured, gets the driver's core first.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bitstream_wire::handshake;
use bitstream_wire::protocol::{self, Header, InputType, FLAG_INPUT, FLAG_KEYFRAME};
use bitstream_wire::ws;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::healthy::{cpu_between, Finished, Monitor, Stream, StreamOpts, Tick};
use crate::now_ns;
use crate::peer::{self, io_end, read_head, tcp_connect, write_all, Target};
use crate::probe::{
    self, fd_count, http_get, metric_lines, metric_value, set_rst_on_close, watch_end, End, Kind,
    Rng,
};
use crate::relays::{self, RelayKind, TargetOpts};
use crate::report::{self, mb, opt};
use crate::sys::{self, ProcSample};
use crate::verdict::Verdict;
use crate::verify::Counts;
use crate::wire::Framing;

/// Options of `loadtest chaos`.
#[derive(clap::Args, Clone, Debug)]
pub struct ChaosOpts {
    #[command(flatten)]
    pub target: TargetOpts,
    #[command(flatten)]
    pub stream: StreamOpts,
    /// Seconds of the chaos phase.
    #[arg(long, default_value_t = 30.0)]
    pub duration: f64,
    /// Seconds of the calm phase before it.
    #[arg(long, default_value_t = 5.0)]
    pub calm: f64,
    /// Seconds of the settle phase after it (stream only, every hostile connection closed).
    #[arg(long, default_value_t = 5.0)]
    pub settle: f64,
    /// The relay's --slow-timeout-ms (passed to a relay the driver starts; stallers wait past it).
    #[arg(long, default_value_t = 3000)]
    pub slow_timeout_ms: u64,
    /// The relay's --handshake-timeout-ms (slowloris waves start only while this much chaos time is left).
    #[arg(long, default_value_t = 10000)]
    pub handshake_timeout_ms: u64,
    /// How long a staller stays silent before it reads to see how it ended (default slow timeout + 3 s).
    #[arg(long)]
    pub stall_secs: Option<f64>,
    /// Receivers per reconnect storm (all at once).
    #[arg(long, default_value_t = 200)]
    pub storm: usize,
    /// Seconds between reconnect storms.
    #[arg(long, default_value_t = 3.0)]
    pub storm_every: f64,
    /// Connect-and-vanish receivers per burst (one burst a second).
    #[arg(long, default_value_t = 50)]
    pub vanish: usize,
    /// Stallers per wave (one wave every 2 s).
    #[arg(long, default_value_t = 8)]
    pub stallers: usize,
    /// Slowloris connections per wave (one wave every 2 s; half silent, half dripping).
    #[arg(long, default_value_t = 10)]
    pub slowloris: usize,
    /// Hostile kinds to leave out (for attributing an effect), e.g. `--skip storm,garbage`.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub skip: Vec<HostileKind>,
    /// Most hostile connections open at once (driver-side cap).
    #[arg(long, default_value_t = 5000)]
    pub max_hostile: usize,
}

/// The hostile schedules (for `--skip`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HostileKind {
    /// Connect-and-vanish bursts.
    Vanish,
    /// Reconnect storms.
    Storm,
    /// Stallers.
    Staller,
    /// Slowloris.
    Slowloris,
    /// Garbage senders, plain HTTP, second source.
    Garbage,
    /// The input flood.
    Flood,
}

// ---------------------------------------------------------------- helpers

const WS_KEY: &str = "Y2hhb3MtbG9hZHRlc3QtMDE=";

const PHASES: [&str; 3] = ["calm", "chaos", "settle"];

// ---------------------------------------------------------------- hostile side

struct Hostile {
    rt: Handle,
    target: Target,
    live: String,
    run_id: String,
    next_ch: AtomicU64,
    kinds: Mutex<BTreeMap<&'static str, Kind>>,
    stop: watch::Receiver<bool>,
    sem: Arc<Semaphore>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    open: AtomicUsize,
    stall: Duration,
    /// Messages a witness receiver got from a source that sent only invalid ones.
    witness_msgs: AtomicU64,
    /// When each reconnect storm started (ns since the epoch).
    storm_ns: Mutex<Vec<u64>>,
}

/// What a hostile connection reports: its outcome and one number of interest.
type Out = (String, Option<f64>);

const CUT: &str = "cut at end of chaos (closed by us)";

impl Hostile {
    fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    fn fresh_channel(&self) -> String {
        format!("{}-g{}", self.run_id, self.next_ch.fetch_add(1, Relaxed))
    }

    fn record(&self, kind: &'static str, out: &str, secs: f64, extra: Option<f64>) {
        let mut k = self.kinds.lock().unwrap();
        let e = k.entry(kind).or_default();
        *e.outcomes.entry(out.to_owned()).or_default() += 1;
        if out != CUT && !out.starts_with("skipped") {
            e.secs.push(secs);
        }
        if let Some(x) = extra {
            e.extra.push(x);
        }
    }

    /// Runs one hostile connection on the hostile runtime, bounded by the
    /// end of chaos (then dropped, which closes its sockets).
    fn spawn<F>(self: &Arc<Self>, kind: &'static str, fut: F)
    where
        F: Future<Output = Out> + Send + 'static,
    {
        self.kinds
            .lock()
            .unwrap()
            .entry(kind)
            .or_default()
            .attempted += 1;
        let Ok(permit) = self.sem.clone().try_acquire_owned() else {
            self.record(
                kind,
                "skipped: driver cap on open hostile connections",
                0.0,
                None,
            );
            return;
        };
        let h = self.clone();
        let mut stop = self.stop.clone();
        let t0 = Instant::now();
        self.open.fetch_add(1, Relaxed);
        let jh = self.rt.spawn(async move {
            let (out, extra) = tokio::select! {
                biased;
                _ = stop.wait_for(|v| *v) => (CUT.to_owned(), None),
                o = fut => o,
            };
            h.record(kind, &out, t0.elapsed().as_secs_f64(), extra);
            h.open.fetch_sub(1, Relaxed);
            drop(permit);
        });
        let mut t = self.tasks.lock().unwrap();
        if t.len() % 1024 == 1023 {
            t.retain(|j| !j.is_finished());
        }
        t.push(jh);
    }

    /// A repeating schedule on the hostile runtime: `tick` every `every`
    /// from `first`, while at least `room` of chaos remains.
    fn every<F>(self: &Arc<Self>, first: f64, every: f64, end: Instant, room: f64, mut tick: F)
    where
        F: FnMut(&Arc<Hostile>, u64) + Send + 'static,
    {
        let h = self.clone();
        let mut stop = self.stop.clone();
        let jh = self.rt.spawn(async move {
            let start = Instant::now();
            let mut n = 0u64;
            loop {
                let at = start + Duration::from_secs_f64(first + every * n as f64);
                if at + Duration::from_secs_f64(room) > end {
                    return;
                }
                tokio::select! {
                    _ = stop.wait_for(|v| *v) => return,
                    _ = tokio::time::sleep_until(at) => {}
                }
                if h.stopped() {
                    return;
                }
                tick(&h, n);
                n += 1;
            }
        });
        self.tasks.lock().unwrap().push(jh);
    }
}

/// A receiver (or source) connection on `path`, handshake done.
async fn join(
    h: &Hostile,
    path: &str,
    rcvbuf: Option<u32>,
) -> Result<(TcpStream, Vec<u8>), String> {
    peer::open_path(&h.target, path, rcvbuf, 0xC4A05).await
}

/// Connects on `path`, sends `bytes` while reading, and reports how the
/// relay ended the connection (within `limit`).
async fn send_and_watch(h: Arc<Hostile>, path: String, bytes: Arc<Vec<u8>>, limit: f64) -> Out {
    let (s, left) = match join(&h, &path, None).await {
        Ok(x) => x,
        Err(e) => return (e, None),
    };
    let writer = async {
        let _ = write_all(&s, &bytes).await;
        std::future::pending::<()>().await
    };
    let w = tokio::select! {
        w = watch_end(&s, &left, Duration::from_secs_f64(limit), None) => w,
        _ = writer => unreachable!(),
    };
    (w.end.outcome(), None)
}

const WITNESS: &str = "witness receiver of an invalid source";

/// A source on a fresh channel sends only invalid messages; a witness
/// receiver on that channel must get none of them.
async fn invalid_source(h: Arc<Hostile>, bytes: Arc<Vec<u8>>) -> Out {
    let ch = h.fresh_channel();
    h.kinds
        .lock()
        .unwrap()
        .entry(WITNESS)
        .or_default()
        .attempted += 1;
    let witness = match join(&h, &format!("/stream/{ch}"), None).await {
        Ok(w) => Some(w),
        Err(e) => {
            h.record(WITNESS, &e, 0.0, None);
            None
        }
    };
    let out = send_and_watch(h.clone(), format!("/source/{ch}"), bytes, 5.0).await;
    if let Some((w, left)) = witness {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let seen = watch_end(&w, &left, Duration::from_millis(50), None).await;
        h.witness_msgs.fetch_add(seen.msgs, Relaxed);
        let out = if seen.msgs == 0 {
            "0 messages forwarded"
        } else {
            "messages forwarded (an invalid message was relayed)"
        };
        h.record(WITNESS, out, 0.0, None);
    }
    out
}

/// Plain HTTP: send `req`, report the status.
async fn http_probe(h: Arc<Hostile>, req: Arc<Vec<u8>>, limit: f64) -> Out {
    let s = match tcp_connect(h.target.addr, None).await {
        Ok(s) => s,
        Err(e) => return (format!("connect failed: {e}"), None),
    };
    if let Err(e) = write_all(&s, &req).await {
        return (format!("write: {}", io_end(&e)), None);
    }
    match read_head(&s, Duration::from_secs_f64(limit)).await {
        Ok((code, _, _)) => (format!("HTTP {code}"), None),
        Err(e) => (e, None),
    }
}

/// Slowloris: the start of a request, then silence (`drip` false) or one
/// more byte a second (`drip` true). The relay should answer 408.
async fn slowloris(h: Arc<Hostile>, drip: bool) -> Out {
    let t0 = Instant::now();
    let s = match tcp_connect(h.target.addr, None).await {
        Ok(s) => s,
        Err(e) => return (format!("connect failed: {e}"), None),
    };
    let req = handshake::client_request(&h.target.host, &format!("/stream/{}", h.live), WS_KEY);
    let first = if drip { 16 } else { req.len() - 2 };
    if let Err(e) = write_all(&s, &req[..first]).await {
        return (format!("write: {}", io_end(&e)), None);
    }
    let dripper = async {
        if drip {
            for i in first..req.len() - 2 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if write_all(&s, &req[i..i + 1]).await.is_err() {
                    break;
                }
            }
        }
        std::future::pending::<()>().await
    };
    let r = tokio::select! {
        r = read_head(&s, Duration::from_secs(30)) => r,
        _ = dripper => unreachable!(),
    };
    let secs = t0.elapsed().as_secs_f64();
    match r {
        Ok((code, _, _)) => (format!("HTTP {code}"), Some(secs)),
        Err(e) => (e, Some(secs)),
    }
}

/// Connect-and-vanish: `mode` 0 after joining and reading a little, 1 in
/// the middle of the handshake, 2 after joining without reading.
async fn vanish(h: Arc<Hostile>, mode: u8, wait_ms: u64) -> Out {
    let path = format!("/stream/{}", h.live);
    if mode == 1 {
        let s = match tcp_connect(h.target.addr, None).await {
            Ok(s) => s,
            Err(e) => return (format!("connect failed: {e}"), None),
        };
        let _ = write_all(
            &s,
            &handshake::client_request(&h.target.host, &path, WS_KEY),
        )
        .await;
        set_rst_on_close(&s);
        drop(s);
        return ("we reset mid-handshake".into(), None);
    }
    let (s, left) = match join(&h, &path, None).await {
        Ok(x) => x,
        Err(e) => return (e, None),
    };
    if mode == 0 {
        let w = watch_end(&s, &left, Duration::from_millis(wait_ms), None).await;
        if !matches!(w.end, End::Timeout) {
            return (w.end.outcome(), None);
        }
    } else {
        tokio::time::sleep(Duration::from_millis(wait_ms)).await;
    }
    set_rst_on_close(&s);
    drop(s);
    (
        if mode == 0 {
            "we reset after join".into()
        } else {
            "we reset with unread data".into()
        },
        None,
    )
}

/// Reconnect storm member: join, read 128 KiB (or 2 s), close.
async fn storm_member(h: Arc<Hostile>) -> Out {
    let (s, left) = match join(&h, &format!("/stream/{}", h.live), None).await {
        Ok(x) => x,
        Err(e) => return (e, None),
    };
    let w = watch_end(&s, &left, Duration::from_secs(2), Some(128 * 1024)).await;
    let _ = s.try_write(&ws::client_frame(
        ws::OP_CLOSE,
        true,
        &ws::close_payload(1000, ""),
        [1, 2, 3, 4],
    ));
    (w.end.outcome(), None)
}

/// Staller: tiny receive buffer, never reads for `stall`; then reads to
/// see how the relay ended it (a relay close after a full window shows as
/// EOF once the bytes already in flight are read).
async fn staller(h: Arc<Hostile>) -> Out {
    let (s, left) = match join(&h, &format!("/stream/{}", h.live), Some(4096)).await {
        Ok(x) => x,
        Err(e) => return (e, None),
    };
    tokio::time::sleep(h.stall).await;
    let w = watch_end(&s, &left, Duration::from_secs(4), None).await;
    let out = match w.end {
        End::Timeout => "not closed by the relay (still streaming after the stall)".into(),
        e => e.outcome(),
    };
    (out, Some(w.bytes as f64 / 1e6))
}

/// Input flood: one receiver on the healthy channel writes valid Pointer
/// inputs as fast as the socket takes them (while reading its stream),
/// for up to 5 s. Extra number: inputs written.
async fn flooder(h: Arc<Hostile>, batch: Arc<Vec<u8>>, per_input: usize) -> Out {
    let (s, left) = match join(&h, &format!("/stream/{}", h.live), None).await {
        Ok(x) => x,
        Err(e) => return (e, None),
    };
    let written = AtomicU64::new(0);
    let writer = async {
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            if write_all(&s, &batch).await.is_err() {
                break;
            }
            written.fetch_add((batch.len() / per_input) as u64, Relaxed);
            tokio::task::yield_now().await;
        }
        std::future::pending::<()>().await
    };
    let w = tokio::select! {
        w = watch_end(&s, &left, Duration::from_secs(6), None) => w,
        _ = writer => unreachable!(),
    };
    (w.end.outcome(), Some(written.load(Relaxed) as f64))
}

/// Frames and messages of the garbage probes.
struct Probes {
    /// (kind, as source on a fresh channel with a witness, bytes, expected)
    src_invalid: Vec<(&'static str, Arc<Vec<u8>>)>,
    /// (kind, path is "source" (fresh channel) or "stream" (healthy channel), bytes, watch secs)
    ws_level: Vec<(&'static str, bool, Arc<Vec<u8>>, f64)>,
    /// (kind, raw request)
    http: Vec<(&'static str, Arc<Vec<u8>>)>,
    flood: Arc<Vec<u8>>,
    flood_each: usize,
}

fn msg(kind: u8, flags: u8, w: u16, h: u16, payload: &[u8], len: Option<u32>) -> Vec<u8> {
    let hd = Header {
        kind,
        flags,
        seq: 0,
        timestamp: 0,
        width: w,
        height: h,
        length: len.unwrap_or(payload.len() as u32),
    };
    let mut v = hd.to_bytes().to_vec();
    v.extend_from_slice(payload);
    v
}

/// A frame head with any first byte; masked with the all-zero key.
fn raw_head(b0: u8, masked: bool, len: u64) -> Vec<u8> {
    let m = if masked { 0x80 } else { 0 };
    let mut v = vec![b0];
    if len < 126 {
        v.push(m | len as u8);
    } else if len <= 0xFFFF {
        v.push(m | 126);
        v.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        v.push(m | 127);
        v.extend_from_slice(&len.to_be_bytes());
    }
    if masked {
        v.extend_from_slice(&[0; 4]);
    }
    v
}

fn raw(b0: u8, masked: bool, payload: &[u8]) -> Vec<u8> {
    let mut v = raw_head(b0, masked, payload.len() as u64);
    v.extend_from_slice(payload);
    v
}

/// `m` as `n` masked client frames back to back.
fn repeated(m: &[u8], n: usize, rng: &mut Rng) -> Arc<Vec<u8>> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.extend(ws::client_frame(ws::OP_BINARY, true, m, rng.mask()));
    }
    Arc::new(v)
}

/// A tiny valid keyframe and a valid Pointer input's payload.
fn px_and_ptr() -> (Vec<u8>, [u8; 5]) {
    (
        protocol::pixels_keyframe(0, 0, 2, 2, &[9u8; 16]),
        [1u8, 0, 2, 0, 1],
    )
}

/// 40 rounds of five invalid inputs from a receiver.
fn invalid_inputs(ptr: &[u8], rng: &mut Rng) -> Arc<Vec<u8>> {
    let mut v = Vec::new();
    for _ in 0..40 {
        for m in [
            msg(0x01, FLAG_INPUT, 0, 0, ptr, Some(9)),
            msg(0x01, FLAG_INPUT | 0x20, 0, 0, ptr, None),
            msg(0x77, FLAG_INPUT, 0, 0, ptr, None),
            msg(0x01, FLAG_INPUT, 0, 0, &ptr[..3], None),
            msg(0x01, 0, 0, 0, ptr, None),
        ] {
            v.extend(ws::client_frame(ws::OP_BINARY, true, &m, rng.mask()));
        }
    }
    Arc::new(v)
}

impl Probes {
    fn new(host: &str, live: &str, rng: &mut Rng) -> Self {
        let (flood, flood_each) = Self::flood();
        Probes {
            src_invalid: Self::src_invalid(rng),
            ws_level: Self::ws_level(rng),
            http: Self::http(host, live),
            flood: Arc::new(flood),
            flood_each,
        }
    }

    /// Sources that send only invalid messages (each must be closed).
    fn src_invalid(rng: &mut Rng) -> Vec<(&'static str, Arc<Vec<u8>>)> {
        let rep = repeated;
        let (_, ptr) = px_and_ptr();
        // 110 > --max-invalid (100): each of these sources must be closed with 1008.
        let n = 110;
        vec![
            (
                "src: bad length field",
                rep(&msg(0x01, FLAG_KEYFRAME, 2, 2, &[0; 16], Some(23)), n, rng),
            ),
            (
                "src: reserved flag bits",
                rep(
                    &msg(0x01, FLAG_KEYFRAME | 0x40, 2, 2, &[0; 16], None),
                    n,
                    rng,
                ),
            ),
            (
                "src: unknown frame type",
                rep(&msg(0x77, 0, 0, 0, &[1, 2, 3], None), n, rng),
            ),
            (
                "src: wrong pixel size",
                rep(
                    &msg(0x01, FLAG_KEYFRAME, 640, 360, &[0; 1000], None),
                    n,
                    rng,
                ),
            ),
            (
                "src: INPUT flag from a source",
                rep(&msg(0x01, FLAG_INPUT, 0, 0, &ptr, None), n, rng),
            ),
            (
                "src: shorter than a header",
                rep(&[1u8, 2, 0, 0, 0, 0, 0, 0, 0, 0], n, rng),
            ),
            (
                "src: Ping with a payload",
                rep(&msg(0xFE, 0, 0, 0, &[1, 2, 3, 4], None), n, rng),
            ),
            (
                "src: undecodable ZRLE delta",
                rep(&msg(0x03, 0, 64, 64, &[0xFF; 64], None), n, rng),
            ),
            (
                "src: signal that is not JSON",
                rep(&msg(0x30, 0, 0, 0, b"{not json", None), n, rng),
            ),
            (
                "src: signal JSON not an object",
                rep(&msg(0x31, 0, 0, 0, b"[1,2,3]", None), n, rng),
            ),
        ]
    }

    /// WebSocket-level violations, as a source or a receiver.
    fn ws_level(rng: &mut Rng) -> Vec<(&'static str, bool, Arc<Vec<u8>>, f64)> {
        let (px, ptr) = px_and_ptr();
        let random = Arc::new(rng.bytes(64 * 1024));
        let mut giant = raw_head(0x82, true, 1 << 30);
        giant.extend_from_slice(&[0u8; 4096]);
        let giant = Arc::new(giant);
        let mut msb = raw_head(0x82, true, 1 << 63);
        msb.extend_from_slice(&[0u8; 64]);
        let msb = Arc::new(msb);
        let text = Arc::new(ws::client_frame(ws::OP_TEXT, true, b"hello", rng.mask()));
        let unmasked = Arc::new(raw(0x82, false, &px));
        vec![
            ("src: random bytes", true, random.clone(), 5.0),
            ("src: text frame", true, text.clone(), 5.0),
            ("src: 1 GiB frame head", true, giant.clone(), 5.0),
            ("src: 64-bit length with MSB set", true, msb, 5.0),
            ("src: unmasked frame", true, unmasked.clone(), 5.0),
            ("src: RSV1 set", true, Arc::new(raw(0xC2, true, &px)), 5.0),
            (
                "src: reserved opcode 0x3",
                true,
                Arc::new(raw(0x83, true, &px)),
                5.0,
            ),
            (
                "src: 200-byte ping",
                true,
                Arc::new(raw(0x89, true, &[0u8; 200])),
                5.0,
            ),
            (
                "src: fragmented ping",
                true,
                Arc::new(raw(0x09, true, &[0u8; 4])),
                5.0,
            ),
            (
                "src: continuation without start",
                true,
                Arc::new(raw(0x80, true, &px)),
                5.0,
            ),
            (
                "src: close code 999",
                true,
                Arc::new(raw(0x88, true, &999u16.to_be_bytes())),
                5.0,
            ),
            (
                "rx: random bytes",
                false,
                Arc::new(rng.bytes(64 * 1024)),
                5.0,
            ),
            ("rx: text frame", false, text, 5.0),
            ("rx: 1 GiB frame head", false, giant, 5.0),
            ("rx: unmasked frame", false, unmasked, 5.0),
            (
                "rx: invalid inputs (no close expected)",
                false,
                invalid_inputs(&ptr, rng),
                1.5,
            ),
        ]
    }

    /// Plain HTTP and bad upgrades.
    fn http(host: &str, live: &str) -> Vec<(&'static str, Arc<Vec<u8>>)> {
        let get = |path: &str| {
            Arc::new(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes())
        };
        let upgrade = |path: &str, extra: &str, key: bool| {
            Arc::new(
            format!(
                "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{}{extra}\r\n",
                if key { format!("Sec-WebSocket-Key: {WS_KEY}\r\n") } else { String::new() }
            )
            .into_bytes(),
        )
        };
        vec![
        ("http: GET /healthz", get("/healthz")),
        ("http: GET /metrics", get("/metrics")),
        ("http: GET /channels", get("/channels")),
        ("http: GET /nope", get("/nope")),
        ("http: GET /stream/x without upgrade", get(&format!("/stream/{live}"))),
        ("http: malformed request", Arc::new(b"\x16\x03\x01\x02\x00 nonsense\r\n\r\n".to_vec())),
        ("http: 10 KB header", Arc::new(format!("GET / HTTP/1.1\r\nHost: {host}\r\nX-Pad: {}\r\n\r\n", "a".repeat(10_000)).into_bytes())),
        ("http: POST with a body", Arc::new(format!("POST /source/{live} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 5\r\n\r\nhello").into_bytes())),
        ("ws: bad channel name", upgrade("/stream/bad!name", "Sec-WebSocket-Version: 13\r\n", true)),
        ("ws: 65-byte channel name", upgrade(&format!("/stream/{}", "n".repeat(65)), "Sec-WebSocket-Version: 13\r\n", true)),
        ("ws: second source on the healthy channel", upgrade(&format!("/source/{live}"), "Sec-WebSocket-Version: 13\r\n", true)),
        ("ws: Sec-WebSocket-Version 8", upgrade(&format!("/stream/{live}"), "Sec-WebSocket-Version: 8\r\n", true)),
        ("ws: no Sec-WebSocket-Key", upgrade(&format!("/stream/{live}"), "Sec-WebSocket-Version: 13\r\n", false)),
    ]
    }

    /// 1000 valid Pointer inputs back to back, and the size of one.
    fn flood() -> (Vec<u8>, usize) {
        let (_, ptr) = px_and_ptr();
        let one = ws::client_frame(
            ws::OP_BINARY,
            true,
            &protocol::input(InputType::Pointer, 1, 2, &ptr),
            [3, 1, 4, 1],
        );
        let flood_each = one.len();
        let mut flood = Vec::with_capacity(flood_each * 1000);
        for _ in 0..1000 {
            flood.extend_from_slice(&one);
        }
        (flood, flood_each)
    }
}

/// The outcomes a hostile kind should end with ("cut at end of chaos" is
/// always allowed: it only means the phase ended first).
fn expected(kind: &str) -> &'static [&'static str] {
    match kind {
        "vanish: reset after join" => &["we reset after join"],
        "vanish: reset mid-handshake" => &["we reset mid-handshake"],
        "vanish: reset with unread data" => &["we reset with unread data"],
        "storm: join, read 128 KiB, close" => &["read 128 KiB, closed by us"],
        "staller: 4 KiB SO_RCVBUF, never reads" => &["EOF, no close frame", "close 3008"],
        "input flood on the healthy channel" => &["close 1008"],
        "slowloris: silent after a partial head" | "slowloris: one byte a second" => &["HTTP 408"],
        "witness receiver of an invalid source" => &["0 messages forwarded"],
        "src: random bytes" | "rx: random bytes" => {
            &["close 1002", "close 1009", "close 1003", "close 1007"]
        }
        "src: text frame" | "rx: text frame" => &["close 1003"],
        "src: 1 GiB frame head" | "rx: 1 GiB frame head" => &["close 1009"],
        "rx: invalid inputs (no close expected)" => &["no close from relay (closed by us)"],
        "http: GET /healthz" | "http: GET /metrics" | "http: GET /channels" => &["HTTP 200"],
        "http: GET /nope" => &["HTTP 404"],
        "http: GET /stream/x without upgrade" => &["HTTP 426"],
        "http: malformed request" => &["HTTP 400"],
        "http: 10 KB header" => &["HTTP 431"],
        "http: POST with a body" => &["HTTP 400", "HTTP 404", "HTTP 405", "HTTP 426"],
        "ws: bad channel name" | "ws: 65-byte channel name" => &["HTTP 400"],
        "ws: second source on the healthy channel" => &["HTTP 409"],
        "ws: Sec-WebSocket-Version 8" | "ws: no Sec-WebSocket-Key" => &["HTTP 400", "HTTP 426"],
        k if k.starts_with("src: ") && !k.contains("frame head") => {
            // message-level invalid → 1008; frame-level → 1002
            match k {
                "src: unmasked frame"
                | "src: RSV1 set"
                | "src: reserved opcode 0x3"
                | "src: 200-byte ping"
                | "src: fragmented ping"
                | "src: continuation without start"
                | "src: close code 999"
                | "src: 64-bit length with MSB set" => &["close 1002"],
                _ => &["close 1008"],
            }
        }
        "rx: unmasked frame" => &["close 1002"],
        _ => &[],
    }
}

/// Connect-and-vanish bursts, one a second on the healthy channel.
fn vanish_bursts(h: &Arc<Hostile>, o: &ChaosOpts, end: Instant, _: &Arc<Probes>) {
    let n = o.vanish;
    h.every(0.0, 1.0, end, 0.0, move |h, tick| {
        let mut rng = Rng::new(now_ns() ^ tick);
        for i in 0..n {
            let (mode, kind) = match i % 5 {
                0..=2 => (0u8, "vanish: reset after join"),
                3 => (1, "vanish: reset mid-handshake"),
                _ => (2, "vanish: reset with unread data"),
            };
            let wait = rng.below(300);
            h.spawn(kind, vanish(h.clone(), mode, wait));
        }
    });
}

/// Reconnect storms: all at once on the healthy channel.
fn storms(h: &Arc<Hostile>, o: &ChaosOpts, end: Instant, _: &Arc<Probes>) {
    let n = o.storm;
    h.every(1.5, o.storm_every, end, 0.0, move |h, _| {
        h.storm_ns.lock().unwrap().push(now_ns());
        for _ in 0..n {
            h.spawn("storm: join, read 128 KiB, close", storm_member(h.clone()));
        }
    });
}

/// Stallers: a wave every 2 s while a whole stall (+ 4 s of reading) fits.
fn staller_waves(h: &Arc<Hostile>, o: &ChaosOpts, end: Instant, _: &Arc<Probes>) {
    let n = o.stallers;
    let room = h.stall.as_secs_f64() + 4.0;
    h.every(0.5, 2.0, end, room, move |h, _| {
        for _ in 0..n {
            h.spawn("staller: 4 KiB SO_RCVBUF, never reads", staller(h.clone()));
        }
    });
}

/// Slowloris: a wave every 2 s while the relay's handshake timeout fits.
fn slowloris_waves(h: &Arc<Hostile>, o: &ChaosOpts, end: Instant, _: &Arc<Probes>) {
    let n = o.slowloris;
    let room = o.handshake_timeout_ms as f64 / 1000.0 + 2.0;
    h.every(0.25, 2.0, end, room, move |h, _| {
        for i in 0..n {
            if i % 2 == 0 {
                h.spawn(
                    "slowloris: silent after a partial head",
                    slowloris(h.clone(), false),
                );
            } else {
                h.spawn("slowloris: one byte a second", slowloris(h.clone(), true));
            }
        }
    });
}

/// Garbage: one of every probe each second.
fn garbage(h: &Arc<Hostile>, _: &ChaosOpts, end: Instant, probes: &Arc<Probes>) {
    let p = probes.clone();
    h.every(0.1, 1.0, end, 0.0, move |h, _| {
        for &(kind, ref bytes) in &p.src_invalid {
            h.spawn(kind, invalid_source(h.clone(), bytes.clone()));
        }
        for &(kind, as_source, ref bytes, limit) in &p.ws_level {
            let path = if as_source {
                format!("/source/{}", h.fresh_channel())
            } else {
                format!("/stream/{}", h.live)
            };
            h.spawn(kind, send_and_watch(h.clone(), path, bytes.clone(), limit));
        }
        for &(kind, ref req) in &p.http {
            h.spawn(kind, http_probe(h.clone(), req.clone(), 5.0));
        }
    });
}

/// Input flood: one flooder at a time, back to back (1 s apart).
fn floods(h: &Arc<Hostile>, end: Instant, probes: Arc<Probes>) {
    let hh = h.clone();
    let mut stop = h.stop.clone();
    let jh = h.rt.spawn(async move {
        loop {
            if hh.stopped() || Instant::now() + Duration::from_secs(1) > end {
                return;
            }
            let done = Arc::new(tokio::sync::Notify::new());
            let d2 = done.clone();
            let (h2, batch, each) = (hh.clone(), probes.flood.clone(), probes.flood_each);
            hh.spawn("input flood on the healthy channel", async move {
                let r = flooder(h2, batch, each).await;
                d2.notify_one();
                r
            });
            tokio::select! {
                _ = stop.wait_for(|v| *v) => return,
                _ = done.notified() => {}
            }
            tokio::select! {
                _ = stop.wait_for(|v| *v) => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    });
    h.tasks.lock().unwrap().push(jh);
}

/// A hostile schedule: what it starts, given the run's hostile side, options, end and probes.
type Schedule = fn(&Arc<Hostile>, &ChaosOpts, Instant, &Arc<Probes>);

/// The schedules by kind (the input flood apart: it runs one at a time).
const SCHEDULES: [(HostileKind, Schedule); 5] = [
    (HostileKind::Vanish, vanish_bursts),
    (HostileKind::Storm, storms),
    (HostileKind::Staller, staller_waves),
    (HostileKind::Slowloris, slowloris_waves),
    (HostileKind::Garbage, garbage),
];

/// Starts every hostile schedule for a chaos phase ending at `end`.
fn start_chaos(h: &Arc<Hostile>, o: &ChaosOpts, end: Instant, probes: Arc<Probes>) {
    for (kind, start) in SCHEDULES {
        if !o.skip.contains(&kind) {
            start(h, o, end, &probes);
        }
    }
    if !o.skip.contains(&HostileKind::Flood) {
        floods(h, end, probes);
    }
}

// ---------------------------------------------------------------- the run

#[derive(Default, Clone, Copy)]
struct PhaseCpu {
    relay: Option<f64>,
    driver: Option<f64>,
}

struct ChaosResult {
    text: String,
    json: Value,
    /// The healthy receivers' totals.
    healthy: Counts,
    /// Every check of the run.
    verdict: Verdict,
}

/// The relay's options when the driver starts it (only `ours`: its options
/// and close codes are what is checked); Err: a usage error.
fn relay_args(o: &ChaosOpts) -> Result<Vec<String>, ()> {
    match o.target.start {
        None => Ok(Vec::new()),
        Some(RelayKind::Ours) => Ok(vec![
            "--slow-timeout-ms".to_owned(),
            o.slow_timeout_ms.to_string(),
            "--handshake-timeout-ms".to_owned(),
            o.handshake_timeout_ms.to_string(),
        ]),
        Some(_) => {
            eprintln!("loadtest chaos: --start supports only `ours` (its options and close codes are what is checked)");
            Err(())
        }
    }
}

/// `loadtest chaos`: returns the exit code.
pub fn main(o: ChaosOpts) -> i32 {
    let nofile = sys::raise_nofile();
    o.target.pin_driver(o.target.start.is_some());
    let Ok(relay_args) = relay_args(&o) else {
        return 2;
    };
    let tag = format!("chaos-{}", report::stamp());
    let Some(mut relay) = o.target.under_test(o.stream.receivers, &tag, &relay_args) else {
        return 2;
    };
    let (url, label) = (relay.url.clone(), relay.label.clone());
    let Some(mut res) = probe::with_attackers("chaos", &label, &url, |h| {
        run(&o, &url, relay.pid, &label, nofile, h, &relay_args)
    }) else {
        return 1;
    };
    let log = relay.log().map(|l| l.to_path_buf());
    let exit = relay.finish();
    relay_ended(&mut res, exit, log.as_deref());
    println!("{}", res.text);
    let base = format!("chaos-{label}-{}", report::stamp());
    report::write_pair(&o.target.out, &base, &res.text, &res.json);
    let v = &res.verdict;
    let detail = format!(
        "healthy receivers {}; {} failed check(s)",
        res.healthy.defects(),
        v.failures().len()
    );
    eprintln!(
        "{}",
        v.stderr(&format!("chaos against {label} ({url})"), &detail)
    );
    v.exit_code()
}

/// Adds how the relay ended (a check: it must still run) to the result.
fn relay_ended(res: &mut ChaosResult, exit: Option<String>, log: Option<&std::path::Path>) {
    let measured = exit
        .as_ref()
        .map_or("still running".into(), |e| format!("exited: {e}"));
    res.verdict
        .check("relay", exit.is_none(), measured, "runs to the end");
    res.json["ok"] = json!(res.verdict.passed());
    res.json["verdict"] = res.verdict.json();
    if let Some(e) = &exit {
        let log = log.unwrap_or(std::path::Path::new("-"));
        let _ = writeln!(
            res.text,
            "relay EXITED  {e}; log {}:\n{}",
            log.display(),
            relays::tail(log)
        );
    }
    if let Some(l) = log {
        res.json["relay_process"]["exit"] = json!(exit);
        res.json["relay_process"]["log"] = json!(l.display().to_string());
    }
}

/// The relay's memory and open files at the marks of the run, KiB.
#[derive(Default)]
struct Marks {
    rss_start: Option<u64>,
    rss_calm_end: Option<u64>,
    /// Highest RSS sampled during chaos.
    rss_peak_chaos: u64,
    hwm_after_chaos: Option<u64>,
    rss_settle: Option<u64>,
    hwm_end: Option<u64>,
    fds_start: Option<usize>,
    fds_settle: Option<usize>,
}

/// Everything a chaos run measured, for its checks and reports.
struct Measured {
    live: String,
    stall: Duration,
    /// When the stream started, ns since the epoch.
    go_ns: u64,
    h: Arc<Hostile>,
    marks: Marks,
    /// Relay and driver CPU samples at the phase boundaries.
    cpu: [Option<ProcSample>; 4],
    dcpu: [Option<ProcSample>; 4],
    /// Seconds for every hostile task to end after the stop.
    close_secs: f64,
    left_open: usize,
    unfinished: usize,
    ticks: Vec<Tick>,
    metrics0: Option<Vec<String>>,
    metrics_settle: Option<Vec<String>>,
    metrics_end: Vec<String>,
    healthz: Result<String, String>,
    fin: Finished,
}

/// The run's identifiers: (run id, healthy channel).
fn run_ids() -> (String, String) {
    static RUN: AtomicU64 = AtomicU64::new(0);
    let run_id = format!("chaos{}x{}", std::process::id(), RUN.fetch_add(1, Relaxed));
    let live = format!("{run_id}-live");
    (run_id, live)
}

/// The `/metrics` lines, if the relay answers.
async fn metrics(target: &Target) -> Result<Vec<String>, String> {
    http_get(target, "/metrics")
        .await
        .map(|(_, b)| metric_lines(&b))
}

#[allow(clippy::too_many_arguments)]
async fn run(
    o: &ChaosOpts,
    url: &str,
    pid: Option<u32>,
    label: &str,
    nofile: u64,
    hrt: Handle,
    relay_args: &[String],
) -> Result<ChaosResult, String> {
    let target = Target::parse(url)?;
    if target.framing != Framing::Ws {
        return Err(format!("--url must be ws://HOST:PORT, not {url}"));
    }
    if o.stream.receivers + o.max_hostile + 64 > nofile as usize {
        eprintln!(
            "loadtest chaos: open-files limit {nofile} is below receivers + --max-hostile; hostile connections beyond it are skipped"
        );
    }
    let m = measure(o, &target, pid, hrt).await?;
    let d = Derived::of(&m, pid.is_some());
    let (verdict, notes) = checks(&m, &d);
    let head = Head {
        o,
        label,
        url,
        relay_args,
    };
    let text = text(&head, &m, &d, &verdict, &notes);
    let json = json_of(&head, &m, &d, &verdict, &notes);
    Ok(ChaosResult {
        text,
        json,
        healthy: m.fin.counts,
        verdict,
    })
}

/// The relay's and the driver's CPU counters now.
fn cpu_now(pid: Option<u32>) -> (Option<ProcSample>, Option<ProcSample>) {
    (
        pid.and_then(ProcSample::take),
        ProcSample::take(std::process::id()),
    )
}

/// What the settle phase and the drain measured.
struct Settled {
    /// The relay's and the driver's CPU counters at the end of settle.
    cpu: (Option<ProcSample>, Option<ProcSample>),
    close_secs: f64,
    left_open: usize,
    unfinished: usize,
    metrics_settle: Option<Vec<String>>,
    healthz: Result<String, String>,
}

/// Runs the three phases (calm, chaos, settle) and drains the healthy
/// stream: what they measured.
async fn measure(
    o: &ChaosOpts,
    target: &Target,
    pid: Option<u32>,
    hrt: Handle,
) -> Result<Measured, String> {
    let stall = Duration::from_secs_f64(
        o.stall_secs
            .unwrap_or(o.slow_timeout_ms as f64 / 1000.0 + 3.0),
    );
    let (run_id, live) = run_ids();
    let metrics0 = metrics(target).await.ok();
    let stream = Stream::start(target, &live, &o.stream, PHASES.len()).await?;
    let rss_of = || pid.and_then(sys::rss_kib);
    let mut marks = Marks {
        rss_start: rss_of(),
        fds_start: pid.and_then(fd_count),
        ..Marks::default()
    };
    let mut cpus = [(None, None); 4];
    cpus[0] = cpu_now(pid);
    stream.go();
    let go_ns = now_ns();
    eprintln!(
        "loadtest chaos: {} healthy receivers of {}x{} @ {} fps on {live}; calm {} s, chaos {} s, settle {} s; stallers silent {:.1} s",
        o.stream.receivers, o.stream.width, o.stream.height, o.stream.fps, o.calm, o.duration, o.settle, stall.as_secs_f64()
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let h = Hostile::new(hrt, target, &live, &run_id, stop_rx, o.max_hostile, stall);
    let probes = Arc::new(Probes::new(&target.host, &live, &mut Rng::new(now_ns())));
    let open = || h.open.load(Relaxed);
    let mut mon = Monitor::new(&stream, pid, &PHASES, &open);

    // (1) calm
    let mut calm_peak = 0u64;
    mon.watch_for(0, o.calm, &mut calm_peak).await;
    marks.rss_calm_end = rss_of();
    // (2) chaos
    stream.tally.clock.begin(1);
    cpus[1] = cpu_now(pid);
    let chaos_end = Instant::now() + Duration::from_secs_f64(o.duration);
    start_chaos(&h, o, chaos_end, probes);
    mon.watch_for(1, o.duration, &mut marks.rss_peak_chaos)
        .await;
    // (3) settle: every hostile connection closed, the stream goes on.
    let _ = stop_tx.send(true);
    stream.tally.clock.begin(2);
    cpus[2] = cpu_now(pid);
    let settled = settle(o, target, pid, &h, &mut mon, &mut marks).await;
    cpus[3] = settled.cpu;
    let ticks = std::mem::take(&mut mon.ticks);
    // Stop the stream, drain the healthy receivers.
    stream.stop(o.stream.drain).await;
    let metrics_end = metrics(target)
        .await
        .unwrap_or_else(|e| vec![format!("# scrape failed: {e}")]);
    marks.hwm_end = pid.and_then(sys::hwm_kib);
    let fin = stream.finish().await;
    Ok(Measured {
        live,
        stall,
        go_ns,
        h,
        marks,
        cpu: cpus.map(|c| c.0),
        dcpu: cpus.map(|c| c.1),
        close_secs: settled.close_secs,
        left_open: settled.left_open,
        unfinished: settled.unfinished,
        ticks,
        metrics0,
        metrics_settle: settled.metrics_settle,
        metrics_end,
        healthz: settled.healthz,
        fin,
    })
}

/// The settle phase: every hostile task ended, the stream alone for
/// `--settle` s; then the relay's memory, files, counters and health.
async fn settle(
    o: &ChaosOpts,
    target: &Target,
    pid: Option<u32>,
    h: &Hostile,
    mon: &mut Monitor<'_>,
    marks: &mut Marks,
) -> Settled {
    marks.hwm_after_chaos = pid.and_then(sys::hwm_kib);
    let (close_secs, left_open, unfinished) = h.close_all().await;
    let mut settle_peak = 0u64;
    mon.watch_for(2, o.settle, &mut settle_peak).await;
    marks.rss_settle = pid.and_then(sys::rss_kib);
    marks.fds_settle = pid.and_then(fd_count);
    let cpu = cpu_now(pid);
    let metrics_settle = metrics(target).await.ok();
    let healthz = http_get(target, "/healthz")
        .await
        .map(|(s, b)| format!("{s} {}", b.trim()));
    Settled {
        cpu,
        close_secs,
        left_open,
        unfinished,
        metrics_settle,
        healthz,
    }
}

impl Hostile {
    /// The hostile side of a run on `hrt`, stopped by `stop`.
    fn new(
        hrt: Handle,
        target: &Target,
        live: &str,
        run_id: &str,
        stop: watch::Receiver<bool>,
        max_open: usize,
        stall: Duration,
    ) -> Arc<Hostile> {
        Arc::new(Hostile {
            rt: hrt,
            target: target.clone(),
            live: live.to_owned(),
            run_id: run_id.to_owned(),
            next_ch: AtomicU64::new(0),
            kinds: Mutex::new(BTreeMap::new()),
            stop,
            sem: Arc::new(Semaphore::new(max_open)),
            tasks: Mutex::new(Vec::new()),
            open: AtomicUsize::new(0),
            stall,
            witness_msgs: AtomicU64::new(0),
            storm_ns: Mutex::new(Vec::new()),
        })
    }

    /// After the stop: waits up to 5 s for each hostile task to end.
    /// (seconds it took, connections still open, tasks unfinished)
    async fn close_all(&self) -> (f64, usize, usize) {
        let t_close = Instant::now();
        let tasks: Vec<JoinHandle<()>> = std::mem::take(&mut *self.tasks.lock().unwrap());
        let mut unfinished = 0;
        for t in tasks {
            if tokio::time::timeout(Duration::from_secs(5), t)
                .await
                .is_err()
            {
                unfinished += 1;
            }
        }
        let close_secs = t_close.elapsed().as_secs_f64();
        let left_open = self.open.load(Relaxed);
        eprintln!("  chaos over: every hostile connection closed in {close_secs:.2} s ({left_open} still open, {unfinished} tasks unfinished)");
        (close_secs, left_open, unfinished)
    }
}

/// One of the slowest healthy frames.
struct SlowFrame {
    index: u64,
    /// When it was sent, s after the stream started.
    sent_s: f64,
    phase: usize,
    /// Latency at the fastest and the slowest healthy receiver, ms.
    fastest_ms: f64,
    slowest_ms: f64,
    /// ms since the last reconnect storm began (up to 0.2 s after it).
    after_storm_ms: Option<f64>,
}

/// The 8 slowest frames (by their slowest receiver) of `fin`, each with the
/// reconnect storm (of `storms`, s after the start) just before it.
fn slowest_frames(fin: &Finished, go_ns: u64, storms: &[f64]) -> Vec<SlowFrame> {
    let pf = fin.tally.per_frame();
    let mut v: Vec<(u64, u64, u64)> = pf
        .iter()
        .enumerate()
        .filter(|(i, e)| (*i as u64) < fin.sent && e.1 > 0)
        .map(|(i, e)| (i as u64, e.0, e.1))
        .collect();
    v.sort_by_key(|e| std::cmp::Reverse(e.2));
    v.truncate(8);
    v.iter()
        .map(|&(i, lo, hi)| {
            let t = fin.send_ns[i as usize].saturating_sub(go_ns) as f64 / 1e9;
            let after_storm_ms = storms
                .iter()
                .rev()
                .find(|&&s| s <= t + 0.2)
                .map(|&s| (t - s) * 1000.0);
            SlowFrame {
                index: i,
                sent_s: t,
                phase: fin.phase_of[i as usize],
                fastest_ms: lo as f64 / 1000.0,
                slowest_ms: hi as f64 / 1000.0,
                after_storm_ms,
            }
        })
        .collect()
}

/// What the reports and checks read off [`Measured`].
struct Derived {
    pcpu: Vec<PhaseCpu>,
    kinds: BTreeMap<&'static str, Kind>,
    /// When each reconnect storm began, s after the stream started.
    storms: Vec<f64>,
    worst: Vec<SlowFrame>,
    src_err: Option<String>,
    inputs_valid: u64,
    inputs_invalid: u64,
    invalid_examples: Vec<String>,
    input_kinds: BTreeMap<String, u64>,
    rss_peak_mb: Option<f64>,
    settle_vs_start: Option<f64>,
    settle_vs_calm: Option<f64>,
    rx_conn_settle: Option<f64>,
    open_settle: Option<f64>,
    witness_msgs: u64,
}

/// `a / b`, if both are known and `b` is not 0.
fn ratio(a: Option<u64>, b: Option<u64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0 => Some(a as f64 / b as f64),
        _ => None,
    }
}

impl Derived {
    fn of(m: &Measured, measured_relay: bool) -> Derived {
        let storms: Vec<f64> =
            m.h.storm_ns
                .lock()
                .unwrap()
                .iter()
                .map(|&t| t.saturating_sub(m.go_ns) as f64 / 1e9)
                .collect();
        let inputs = &m.fin.source.inputs;
        let settle = m.metrics_settle.as_ref();
        let mk = &m.marks;
        Derived {
            pcpu: (0..3)
                .map(|i| PhaseCpu {
                    relay: cpu_between(m.cpu[i], m.cpu[i + 1]),
                    driver: cpu_between(m.dcpu[i], m.dcpu[i + 1]),
                })
                .collect(),
            kinds: m.h.kinds.lock().unwrap().clone(),
            worst: slowest_frames(&m.fin, m.go_ns, &storms),
            storms,
            src_err: m.fin.source.error.lock().unwrap().clone(),
            inputs_valid: inputs.valid.load(Relaxed),
            inputs_invalid: inputs.invalid.load(Relaxed),
            invalid_examples: inputs.examples.lock().unwrap().clone(),
            input_kinds: inputs.kinds.lock().unwrap().clone(),
            rss_peak_mb: measured_relay.then(|| mk.rss_peak_chaos as f64 / 1024.0),
            settle_vs_start: ratio(mk.rss_settle, mk.rss_start),
            settle_vs_calm: ratio(mk.rss_settle, mk.rss_calm_end),
            rx_conn_settle: settle
                .and_then(|m| metric_value(m, "relay_connections{role=\"receiver\"}")),
            open_settle: settle.and_then(|m| metric_value(m, "relay_connections_open")),
            witness_msgs: m.h.witness_msgs.load(Relaxed),
        }
    }
}

/// The run's checks (what must hold) and its notes (what is worth saying
/// but fails nothing).
fn checks(m: &Measured, d: &Derived) -> (Verdict, Vec<String>) {
    let mut v = Verdict::new();
    let fin = &m.fin;
    for (p, ph) in fin.phases.iter().enumerate().take(PHASES.len()) {
        v.check(
            format!("healthy delivery in {}", PHASES[p]),
            ph.delivered == ph.expected,
            format!(
                "{} of {} frames intact ({} corrupted)",
                ph.delivered, ph.expected, ph.corrupt
            ),
            "every frame",
        );
    }
    healthy_checks(&mut v, m, d);
    for (k, kind) in &d.kinds {
        let exp = expected(k);
        let bad: Vec<String> = kind
            .outcomes
            .iter()
            .filter(|(out, _)| out.as_str() != CUT && !exp.contains(&out.as_str()))
            .map(|(out, c)| format!("{c}× {out}"))
            .collect();
        let measured = if bad.is_empty() {
            kind.outcomes_text()
        } else {
            format!("unexpected {}", bad.join(", "))
        };
        v.check(*k, bad.is_empty(), measured, exp.join(" or "));
    }
    if let Some(r) = d.rx_conn_settle {
        let n = fin.receivers;
        v.check(
            "receivers after settle",
            r as u64 == n,
            format!("the relay counts {r} receivers"),
            format!("the {n} healthy ones"),
        );
    }
    let mut notes = Vec::new();
    if m.left_open > 0 || m.unfinished > 0 {
        notes.push(format!(
            "NOTE {} hostile connections / {} tasks did not end within 5 s of the stop",
            m.left_open, m.unfinished
        ));
    }
    (v, notes)
}

/// The healthy side's checks: no frame damaged, repeated or reordered, no
/// receiver ended early, the source ran, only valid inputs reached it, no
/// invalid source's message reached a witness.
fn healthy_checks(v: &mut Verdict, m: &Measured, d: &Derived) {
    let (healthy, ended) = (&m.fin.counts, &m.fin.ended);
    v.check(
        "healthy receivers",
        healthy.clean(),
        healthy.defects(),
        "every frame intact, once and in order",
    );
    v.check(
        "healthy receivers ended early",
        ended.is_empty(),
        if ended.is_empty() {
            "none".to_owned()
        } else {
            format!("{ended:?}")
        },
        "none",
    );
    v.check(
        "healthy source",
        d.src_err.is_none(),
        d.src_err.clone().unwrap_or_else(|| "ran to the end".into()),
        "runs to the end",
    );
    v.check(
        "inputs reaching the source",
        d.inputs_invalid == 0,
        if d.inputs_invalid == 0 {
            format!("{} valid, none invalid", d.inputs_valid)
        } else {
            format!(
                "{} invalid inputs reached the source, e.g. {:?}",
                d.inputs_invalid, d.invalid_examples
            )
        },
        "only valid ones",
    );
    v.check(
        "witness receivers",
        d.witness_msgs == 0,
        format!(
            "got {} messages from sources that sent only invalid ones",
            d.witness_msgs
        ),
        "none",
    );
}

/// The run's identity in its reports.
struct Head<'a> {
    o: &'a ChaosOpts,
    label: &'a str,
    url: &'a str,
    relay_args: &'a [String],
}

/// The text report of a chaos run.
fn text(head: &Head, m: &Measured, d: &Derived, v: &Verdict, notes: &[String]) -> String {
    let o = head.o;
    let mut t = String::new();
    let _ = writeln!(
        t,
        "== chaos against {} ({}){}",
        head.label,
        head.url,
        if head.relay_args.is_empty() {
            String::new()
        } else {
            format!(", started with {}", head.relay_args.join(" "))
        }
    );
    let late = m.fin.late_ms;
    let _ = writeln!(
        t,
        "healthy       {} receivers on {}: {}x{} RGBA Pixels+KEYFRAME ({} B/message) at {} fps; calm {} s, chaos {} s, settle {} s; source pacing lateness p50 {:.2} / p99 {:.2} / max {:.2} ms",
        m.fin.receivers, m.live, o.stream.width, o.stream.height, o.stream.msg_bytes(), o.stream.fps, o.calm, o.duration, o.settle, late[0], late[1], late[2]
    );
    phase_table(&mut t, m, d);
    relay_lines(&mut t, m, d);
    hostile_table(&mut t, o, m, d);
    slowest_lines(&mut t, m, d);
    let _ = writeln!(t, "\nrelay /metrics at the end:");
    for l in &m.metrics_end {
        let _ = writeln!(t, "  {l}");
    }
    let _ = writeln!(t);
    if v.passed() && notes.is_empty() {
        let _ = writeln!(t, "checks        all passed: every healthy frame intact and in order, every hostile client ended as expected, no receiver left over");
    }
    for c in v.checks().iter().filter(|c| !c.passed) {
        let _ = writeln!(t, "check         {}", c.line_with_bound());
    }
    for n in notes {
        let _ = writeln!(t, "check         {n}");
    }
    t
}

/// Per phase: frames, delivery, latency, CPU.
fn phase_table(t: &mut String, m: &Measured, d: &Derived) {
    let _ = writeln!(t, "\n| phase | frames sent | delivered intact | fraction | p50 ms | p99 ms | p99.9 ms | max ms | relay CPU % | driver CPU % |");
    let _ = writeln!(t, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (p, ph) in m.fin.phases.iter().enumerate().take(PHASES.len()) {
        let _ = writeln!(
            t,
            "| {} | {} | {}/{} | {:.3}% | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} |",
            PHASES[p],
            ph.sent,
            ph.delivered,
            ph.expected,
            ph.fraction() * 100.0,
            ph.lat.p50,
            ph.lat.p99,
            ph.lat.p999,
            ph.lat.max,
            opt(d.pcpu[p].relay, 1),
            opt(d.pcpu[p].driver, 1)
        );
    }
}

/// The healthy totals, the relay's memory, files and counters, the inputs.
fn relay_lines(t: &mut String, m: &Measured, d: &Derived) {
    let (fin, mk, h) = (&m.fin, &m.marks, &m.fin.counts);
    let ended = &fin.ended;
    let _ = writeln!(
        t,
        "\nin order      {} of {} healthy receivers got every frame; missing {}, duplicate {}, out-of-order {}, corrupted {}, other messages {}; per-receiver min {:.3}%{}",
        fin.all_frames, fin.receivers, h.missing, h.duplicate, h.out_of_order, h.corrupt, h.other,
        fin.per_rx_min * 100.0,
        if ended.is_empty() { String::new() } else { format!("; ENDED EARLY {ended:?}") }
    );
    let _ = writeln!(
        t,
        "relay RSS     start of calm {} MB, end of calm {} MB, peak during chaos {} MB (sampled 4/s; VmHWM {} MB), after settle {} MB = {}× start ({}× end of calm)",
        opt(mb(mk.rss_start), 1),
        opt(mb(mk.rss_calm_end), 1),
        opt(d.rss_peak_mb, 1),
        opt(mb(mk.hwm_after_chaos), 1),
        opt(mb(mk.rss_settle), 1),
        opt(d.settle_vs_start, 2),
        opt(d.settle_vs_calm, 2)
    );
    let _ = writeln!(
        t,
        "relay fds     {} at start, {} after settle; after settle /metrics: receivers {}, connections open {}; /healthz {}",
        mk.fds_start.map_or("-".into(), |x| x.to_string()),
        mk.fds_settle.map_or("-".into(), |x| x.to_string()),
        opt(d.rx_conn_settle, 0),
        opt(d.open_settle, 0),
        m.healthz.as_ref().map_or_else(|e| format!("failed: {e}"), |s| s.clone())
    );
    let _ = writeln!(
        t,
        "source        inputs forwarded to it: {} valid {:?}, {} invalid{}",
        d.inputs_valid,
        d.input_kinds,
        d.inputs_invalid,
        if d.invalid_examples.is_empty() {
            String::new()
        } else {
            format!(" e.g. {:?}", d.invalid_examples)
        }
    );
}

/// A note on a hostile kind's extra numbers: the bytes a staller read
/// after its stall, the inputs a flooder wrote.
fn kind_note(k: &str, kind: &Kind) -> String {
    let mut ex = kind.extra.clone();
    ex.sort_by(f64::total_cmp);
    let (Some(lo), Some(hi)) = (ex.first(), ex.last()) else {
        return String::new();
    };
    if k.starts_with("staller") {
        format!("read {lo:.2}–{hi:.2} MB after the stall")
    } else if k.starts_with("input flood") {
        format!("{lo:.0}–{hi:.0} inputs written")
    } else {
        String::new()
    }
}

/// Every hostile connection's outcome, lumped: resets and our own closes
/// each as one.
fn by_outcome(kinds: &BTreeMap<&'static str, Kind>) -> BTreeMap<String, u64> {
    let mut by: BTreeMap<String, u64> = BTreeMap::new();
    for v in kinds.values() {
        for (out, c) in &v.outcomes {
            let key = if out.starts_with("we reset") {
                "we reset (SO_LINGER 0)".to_owned()
            } else if out.contains("closed by us") {
                "closed by us".to_owned()
            } else {
                out.clone()
            };
            *by.entry(key).or_default() += c;
        }
    }
    by
}

/// Per hostile kind: attempts, outcomes, what was expected, how long they took.
fn hostile_table(t: &mut String, o: &ChaosOpts, m: &Measured, d: &Derived) {
    let _ = writeln!(
        t,
        "hostile       every one closed {:.2} s after the stop; {} kinds:\n",
        m.close_secs,
        d.kinds.len()
    );
    let _ = writeln!(t, "| hostile client | attempted | how it ended (count) | expected | secs to end min/med/max | note |");
    let _ = writeln!(t, "|---|---:|---|---|---|---|");
    for (k, v) in &d.kinds {
        let _ = writeln!(
            t,
            "| {k} | {} | {} | {} | {:.2}/{:.2}/{:.2} | {} |",
            v.attempted,
            v.outcomes_text(),
            expected(k).join(" or "),
            v.secs_at(0.0),
            v.secs_at(0.5),
            v.secs_at(1.0),
            kind_note(k, v)
        );
    }
    let total: u64 = d.kinds.values().map(|k| k.attempted).sum();
    let peak_open = m.ticks.iter().map(|k| k.hostile_open).max().unwrap_or(0);
    let _ = writeln!(
        t,
        "\n{total} hostile connections attempted in {} s (at most {peak_open} open at a 1 s sample); all of them by outcome: {}",
        o.duration,
        by_outcome(&d.kinds)
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

/// The slowest healthy frames and the storms before them.
fn slowest_lines(t: &mut String, m: &Measured, d: &Derived) {
    let _ = writeln!(
        t,
        "\nslowest frames (latency over the {} healthy receivers; storms began at {} s after the stream started):",
        m.fin.receivers,
        d.storms.iter().map(|s| format!("{s:.1}")).collect::<Vec<_>>().join(", ")
    );
    for f in &d.worst {
        let _ = writeln!(
            t,
            "  frame {:>5} sent at {:>6.2} s ({}): fastest receiver {:.2} ms, slowest {:.2} ms{}",
            f.index,
            f.sent_s,
            PHASES[f.phase],
            f.fastest_ms,
            f.slowest_ms,
            f.after_storm_ms.map_or(String::new(), |d| format!(
                "; {d:+.0} ms after a storm began"
            ))
        );
    }
}

/// The JSON result of a chaos run.
fn json_of(head: &Head, m: &Measured, d: &Derived, v: &Verdict, notes: &[String]) -> Value {
    let (o, fin, mk) = (head.o, &m.fin, &m.marks);
    let h = &fin.counts;
    let mut findings = v.failures();
    findings.extend(notes.iter().cloned());
    json!({
        "scenario": "chaos",
        "relay": head.label,
        "url": head.url,
        "relay_args": head.relay_args,
        "config": config_json(o, m.stall),
        "phases": phases_json(m, d),
        "healthy": {
            "receivers_with_every_frame": fin.all_frames, "missing": h.missing, "duplicate": h.duplicate, "out_of_order": h.out_of_order, "corrupted": h.corrupt,
            "non_test_messages": h.other, "per_receiver_min_fraction": fin.per_rx_min, "ended_early": fin.ended,
        },
        "source": {"frames_sent": fin.sent, "pacing_late_ms": fin.late_ms, "error": d.src_err,
            "inputs_valid": d.inputs_valid, "inputs_invalid": d.inputs_invalid, "input_kinds": d.input_kinds,
            "invalid_examples": d.invalid_examples},
        "relay_process": {
            "rss_MB_start_of_calm": mb(mk.rss_start), "rss_MB_end_of_calm": mb(mk.rss_calm_end),
            "rss_MB_peak_chaos_sampled": d.rss_peak_mb, "vmhwm_MB_after_chaos": mb(mk.hwm_after_chaos),
            "vmhwm_MB_end": mb(mk.hwm_end), "rss_MB_after_settle": mb(mk.rss_settle),
            "rss_after_settle_over_start": d.settle_vs_start, "rss_after_settle_over_end_of_calm": d.settle_vs_calm,
            "fds_start": mk.fds_start, "fds_after_settle": mk.fds_settle,
        },
        "hostile": hostile_json(m, d),
        "metrics_before": m.metrics0, "metrics_after_settle": m.metrics_settle, "metrics_end": m.metrics_end,
        "healthz_after_settle": m.healthz.as_ref().ok(),
        "timeline": m.ticks.iter().map(|k| k.json(&PHASES)).collect::<Vec<_>>(),
        "findings": findings,
        "storm_start_s": d.storms,
        "slowest_frames": d.worst.iter().map(|f| json!({"index": f.index, "sent_s": f.sent_s, "phase": PHASES[f.phase],
            "fastest_receiver_ms": f.fastest_ms, "slowest_receiver_ms": f.slowest_ms, "ms_after_storm_start": f.after_storm_ms})).collect::<Vec<_>>(),
        "verdict": v.json(),
        "ok": v.passed(),
    })
}

fn config_json(o: &ChaosOpts, stall: Duration) -> Value {
    json!({
        "receivers": o.stream.receivers, "width": o.stream.width, "height": o.stream.height, "fps": o.stream.fps,
        "calm_s": o.calm, "chaos_s": o.duration, "settle_s": o.settle,
        "stall_s": stall.as_secs_f64(), "slow_timeout_ms": o.slow_timeout_ms,
        "storm": o.storm, "storm_every_s": o.storm_every, "vanish_per_s": o.vanish,
        "stallers_per_wave": o.stallers, "skipped_kinds": format!("{:?}", o.skip), "slowloris_per_wave": o.slowloris, "max_hostile": o.max_hostile,
    })
}

fn phases_json(m: &Measured, d: &Derived) -> Vec<Value> {
    m.fin
        .phases
        .iter()
        .enumerate()
        .take(PHASES.len())
        .map(|(p, ph)| {
            json!({
                "phase": PHASES[p],
                "frames_sent": ph.sent,
                "expected": ph.expected,
                "delivered_intact": ph.delivered,
                "corrupted": ph.corrupt,
                "delivered_fraction": ph.fraction(),
                "latency_ms": ph.lat.json(),
                "relay_cpu_percent": d.pcpu[p].relay,
                "driver_cpu_percent": d.pcpu[p].driver,
            })
        })
        .collect()
}

fn hostile_json(m: &Measured, d: &Derived) -> Value {
    let kinds: serde_json::Map<String, Value> = d
        .kinds
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                json!({"attempted": v.attempted, "outcomes": v.outcomes, "expected": expected(k), "secs_to_end": v.secs, "extra": v.extra}),
            )
        })
        .collect();
    json!({
        "attempted_total": d.kinds.values().map(|k| k.attempted).sum::<u64>(),
        "by_outcome": by_outcome(&d.kinds),
        "peak_open_sampled": m.ticks.iter().map(|k| k.hostile_open).max().unwrap_or(0),
        "close_secs_after_stop": m.close_secs,
        "left_open": m.left_open,
        "witness_messages": d.witness_msgs,
        "kinds": kinds,
    })
}
