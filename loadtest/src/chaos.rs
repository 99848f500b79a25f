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

use crate::healthy::{cpu_between, Monitor, Stream, StreamOpts};
use crate::now_ns;
use crate::peer::{self, io_end, read_head, tcp_connect, write_all, Target};
use crate::probe::{
    self, fd_count, http_get, metric_lines, metric_value, set_rst_on_close, watch_end, End, Kind,
    Rng,
};
use crate::relays::{self, RelayKind, TargetOpts};
use crate::report::{self, mb, opt};
use crate::sys::{self, ProcSample};
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

impl Probes {
    fn new(host: &str, live: &str, rng: &mut Rng) -> Self {
        let rep = |m: &[u8], n: usize, rng: &mut Rng| -> Arc<Vec<u8>> {
            let mut v = Vec::new();
            for _ in 0..n {
                v.extend(ws::client_frame(ws::OP_BINARY, true, m, rng.mask()));
            }
            Arc::new(v)
        };
        let px = protocol::pixels_keyframe(0, 0, 2, 2, &[9u8; 16]);
        let ptr = [1u8, 0, 2, 0, 1];
        // 110 > --max-invalid (100): each of these sources must be closed with 1008.
        let n = 110;
        let src_invalid = vec![
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
        ];
        let random = Arc::new(rng.bytes(64 * 1024));
        let mut giant = raw_head(0x82, true, 1 << 30);
        giant.extend_from_slice(&[0u8; 4096]);
        let giant = Arc::new(giant);
        let mut msb = raw_head(0x82, true, 1 << 63);
        msb.extend_from_slice(&[0u8; 64]);
        let msb = Arc::new(msb);
        let text = Arc::new(ws::client_frame(ws::OP_TEXT, true, b"hello", rng.mask()));
        let unmasked = Arc::new(raw(0x82, false, &px));
        let ws_level: Vec<(&'static str, bool, Arc<Vec<u8>>, f64)> = vec![
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
                {
                    let mut v = Vec::new();
                    for _ in 0..40 {
                        for m in [
                            msg(0x01, FLAG_INPUT, 0, 0, &ptr, Some(9)),
                            msg(0x01, FLAG_INPUT | 0x20, 0, 0, &ptr, None),
                            msg(0x77, FLAG_INPUT, 0, 0, &ptr, None),
                            msg(0x01, FLAG_INPUT, 0, 0, &ptr[..3], None),
                            msg(0x01, 0, 0, 0, &ptr, None),
                        ] {
                            v.extend(ws::client_frame(ws::OP_BINARY, true, &m, rng.mask()));
                        }
                    }
                    Arc::new(v)
                },
                1.5,
            ),
        ];
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
        let http = vec![
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
        ];
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
        Probes {
            src_invalid,
            ws_level,
            http,
            flood: Arc::new(flood),
            flood_each,
        }
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

/// Starts every hostile schedule for a chaos phase ending at `end`.
fn start_chaos(h: &Arc<Hostile>, o: &ChaosOpts, end: Instant, probes: Arc<Probes>) {
    if !o.skip.contains(&HostileKind::Vanish) {
        // Connect-and-vanish: one burst a second on the healthy channel.
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
    if !o.skip.contains(&HostileKind::Storm) {
        // Reconnect storms: all at once on the healthy channel.
        let n = o.storm;
        h.every(1.5, o.storm_every, end, 0.0, move |h, _| {
            h.storm_ns.lock().unwrap().push(now_ns());
            for _ in 0..n {
                h.spawn("storm: join, read 128 KiB, close", storm_member(h.clone()));
            }
        });
    }
    if !o.skip.contains(&HostileKind::Staller) {
        // Stallers: a wave every 2 s while a whole stall (+ 4 s of reading) fits.
        let n = o.stallers;
        let room = h.stall.as_secs_f64() + 4.0;
        h.every(0.5, 2.0, end, room, move |h, _| {
            for _ in 0..n {
                h.spawn("staller: 4 KiB SO_RCVBUF, never reads", staller(h.clone()));
            }
        });
    }
    if !o.skip.contains(&HostileKind::Slowloris) {
        // Slowloris: a wave every 2 s while the relay's handshake timeout fits.
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
    if !o.skip.contains(&HostileKind::Garbage) {
        // Garbage: one of every probe each second.
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
    if o.skip.contains(&HostileKind::Flood) {
        return;
    }
    // Input flood: one flooder at a time, back to back (1 s apart).
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
    /// The checks that failed (`FAIL ...`, `UNEXPECTED ...`); empty: passed.
    failures: Vec<String>,
}

/// `loadtest chaos`: returns the exit code.
pub fn main(o: ChaosOpts) -> i32 {
    let nofile = sys::raise_nofile();
    o.target.pin_driver(o.target.start.is_some());
    let mut relay_args = Vec::new();
    if let Some(kind) = o.target.start {
        if kind != RelayKind::Ours {
            eprintln!("loadtest chaos: --start supports only `ours` (its options and close codes are what is checked)");
            return 2;
        }
        relay_args = vec![
            "--slow-timeout-ms".to_owned(),
            o.slow_timeout_ms.to_string(),
            "--handshake-timeout-ms".to_owned(),
            o.handshake_timeout_ms.to_string(),
        ];
    }
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
    if let Some(e) = &exit {
        res.failures.push(format!("FAIL relay exited: {e}"));
        res.json["ok"] = json!(false);
        let log = log.as_deref().unwrap_or(std::path::Path::new("-"));
        let _ = writeln!(
            res.text,
            "relay EXITED  {e}; log {}:\n{}",
            log.display(),
            relays::tail(log)
        );
    }
    if let Some(l) = &log {
        res.json["relay_process"]["exit"] = json!(exit);
        res.json["relay_process"]["log"] = json!(l.display().to_string());
    }
    println!("{}", res.text);
    report::write_pair(
        &o.target.out,
        &format!("chaos-{label}-{}", report::stamp()),
        &res.text,
        &res.json,
    );
    let ok = res.failures.is_empty();
    eprintln!(
        "loadtest: {} chaos against {label} ({url}): healthy receivers {}; {} failed check(s)",
        if ok { "OK" } else { "FAIL" },
        res.healthy.defects(),
        res.failures.len()
    );
    for f in &res.failures {
        eprintln!("loadtest:   {f}");
    }
    i32::from(!ok)
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
    let host = target.host.clone();
    let stall = Duration::from_secs_f64(
        o.stall_secs
            .unwrap_or(o.slow_timeout_ms as f64 / 1000.0 + 3.0),
    );
    static RUN: AtomicU64 = AtomicU64::new(0);
    let run_id = format!("chaos{}x{}", std::process::id(), RUN.fetch_add(1, Relaxed));
    let live = format!("{run_id}-live");
    let me = std::process::id();
    if o.stream.receivers + o.max_hostile + 64 > nofile as usize {
        eprintln!(
            "loadtest chaos: open-files limit {nofile} is below receivers + --max-hostile; hostile connections beyond it are skipped"
        );
    }
    let metrics0 = http_get(&target, "/metrics")
        .await
        .ok()
        .map(|(_, b)| metric_lines(&b));

    let stream = Stream::start(&target, &live, &o.stream, PHASES.len()).await?;
    let rss_of = || pid.and_then(sys::rss_kib);
    let rss_start = rss_of();
    let fds_start = pid.and_then(fd_count);
    let mut cpu = [None::<ProcSample>; 4];
    let mut dcpu = [None::<ProcSample>; 4];
    cpu[0] = pid.and_then(ProcSample::take);
    dcpu[0] = ProcSample::take(me);
    stream.go();
    let go_ns = now_ns();
    eprintln!(
        "loadtest chaos: {} healthy receivers of {}x{} @ {} fps on {live}; calm {} s, chaos {} s, settle {} s; stallers silent {:.1} s",
        o.stream.receivers, o.stream.width, o.stream.height, o.stream.fps, o.calm, o.duration, o.settle, stall.as_secs_f64()
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let h = Arc::new(Hostile {
        rt: hrt,
        target: target.clone(),
        live: live.clone(),
        run_id: run_id.clone(),
        next_ch: AtomicU64::new(0),
        kinds: Mutex::new(BTreeMap::new()),
        stop: stop_rx,
        sem: Arc::new(Semaphore::new(o.max_hostile)),
        tasks: Mutex::new(Vec::new()),
        open: AtomicUsize::new(0),
        stall,
        witness_msgs: AtomicU64::new(0),
        storm_ns: Mutex::new(Vec::new()),
    });
    let probes = Arc::new(Probes::new(&host, &live, &mut Rng::new(now_ns())));
    let open = || h.open.load(Relaxed);
    let mut mon = Monitor::new(&stream, pid, &PHASES, &open);

    // (1) calm
    let mut calm_peak = 0u64;
    mon.watch_for(0, o.calm, &mut calm_peak).await;
    let rss_calm_end = rss_of();
    // (2) chaos
    stream.tally.clock.begin(1);
    cpu[1] = pid.and_then(ProcSample::take);
    dcpu[1] = ProcSample::take(me);
    let chaos_end = Instant::now() + Duration::from_secs_f64(o.duration);
    start_chaos(&h, o, chaos_end, probes);
    let mut rss_peak_chaos = 0u64;
    mon.watch_for(1, o.duration, &mut rss_peak_chaos).await;
    // (3) settle: every hostile connection closed, the stream goes on.
    let _ = stop_tx.send(true);
    stream.tally.clock.begin(2);
    cpu[2] = pid.and_then(ProcSample::take);
    dcpu[2] = ProcSample::take(me);
    let hwm_after_chaos = pid.and_then(sys::hwm_kib);
    let t_close = Instant::now();
    let tasks: Vec<JoinHandle<()>> = std::mem::take(&mut *h.tasks.lock().unwrap());
    let mut unfinished = 0;
    for t in tasks {
        match tokio::time::timeout(Duration::from_secs(5), t).await {
            Ok(_) => {}
            Err(_) => unfinished += 1,
        }
    }
    let close_secs = t_close.elapsed().as_secs_f64();
    let left_open = h.open.load(Relaxed);
    eprintln!("  chaos over: every hostile connection closed in {close_secs:.2} s ({left_open} still open, {unfinished} tasks unfinished)");
    let mut settle_peak = 0u64;
    mon.watch_for(2, o.settle, &mut settle_peak).await;
    let ticks = std::mem::take(&mut mon.ticks);
    let rss_settle = rss_of();
    let fds_settle = pid.and_then(fd_count);
    cpu[3] = pid.and_then(ProcSample::take);
    dcpu[3] = ProcSample::take(me);
    let metrics_settle = http_get(&target, "/metrics")
        .await
        .ok()
        .map(|(_, b)| metric_lines(&b));
    let healthz = http_get(&target, "/healthz")
        .await
        .map(|(s, b)| format!("{s} {}", b.trim()));

    // Stop the stream, drain the healthy receivers.
    stream.stop(o.stream.drain).await;
    let metrics_end = http_get(&target, "/metrics")
        .await
        .map(|(_, b)| metric_lines(&b));
    let hwm_end = pid.and_then(sys::hwm_kib);
    let fin = stream.finish().await;

    // ------------------------------------------------------------ summary
    let (sent, n, ssh) = (fin.sent, fin.receivers, fin.source.clone());
    let (send_ns, phase_of, ph) = (&fin.send_ns, &fin.phase_of, &fin.phases);
    let (all_frames, per_rx_min, ended, healthy) =
        (fin.all_frames, fin.per_rx_min, &fin.ended, fin.counts);
    let (ooo, dup, corrupt, foreign) = (
        healthy.out_of_order,
        healthy.duplicate,
        healthy.corrupt,
        healthy.other,
    );
    let pcpu: Vec<PhaseCpu> = (0..3)
        .map(|i| PhaseCpu {
            relay: cpu_between(cpu[i], cpu[i + 1]),
            driver: cpu_between(dcpu[i], dcpu[i + 1]),
        })
        .collect();
    let late = fin.late_ms;
    let kinds = h.kinds.lock().unwrap().clone();
    // The slowest frames: when they were sent, how slow for the fastest and
    // the slowest healthy receiver, and the reconnect storm just before.
    let storms: Vec<f64> = h
        .storm_ns
        .lock()
        .unwrap()
        .iter()
        .map(|&t| t.saturating_sub(go_ns) as f64 / 1e9)
        .collect();
    let worst: Vec<(u64, f64, usize, f64, f64, Option<f64>)> = {
        let pf = fin.tally.per_frame();
        let mut v: Vec<(u64, u64, u64)> = pf
            .iter()
            .enumerate()
            .filter(|(i, e)| (*i as u64) < sent && e.1 > 0)
            .map(|(i, e)| (i as u64, e.0, e.1))
            .collect();
        v.sort_by_key(|e| std::cmp::Reverse(e.2));
        v.truncate(8);
        v.iter()
            .map(|&(i, lo, hi)| {
                let t = send_ns[i as usize].saturating_sub(go_ns) as f64 / 1e9;
                let storm = storms
                    .iter()
                    .rev()
                    .find(|&&s| s <= t + 0.2)
                    .map(|&s| (t - s) * 1000.0);
                (
                    i,
                    t,
                    phase_of[i as usize],
                    lo as f64 / 1000.0,
                    hi as f64 / 1000.0,
                    storm,
                )
            })
            .collect()
    };
    let src_err = ssh.error.lock().unwrap().clone();
    let inputs_valid = ssh.inputs.valid.load(Relaxed);
    let inputs_invalid = ssh.inputs.invalid.load(Relaxed);
    let invalid_examples = ssh.inputs.examples.lock().unwrap().clone();
    let input_kinds = ssh.inputs.kinds.lock().unwrap().clone();
    let rss_peak_mb = if pid.is_some() {
        Some(rss_peak_chaos as f64 / 1024.0)
    } else {
        None
    };
    let ratio = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) if b > 0 => Some(a as f64 / b as f64),
        _ => None,
    };
    let settle_vs_start = ratio(rss_settle, rss_start);
    let settle_vs_calm = ratio(rss_settle, rss_calm_end);
    let metrics_end = metrics_end.unwrap_or_else(|e| vec![format!("# scrape failed: {e}")]);
    let rx_conn_settle = metrics_settle
        .as_ref()
        .and_then(|m| metric_value(m, "relay_connections{role=\"receiver\"}"));
    let open_settle = metrics_settle
        .as_ref()
        .and_then(|m| metric_value(m, "relay_connections_open"));

    // Checks: what must hold.
    let mut findings: Vec<String> = Vec::new();
    for p in 0..3 {
        let exp = ph[p].expected;
        if ph[p].delivered != exp {
            findings.push(format!(
                "FAIL healthy delivery in {}: {} of {} frames intact ({} corrupted)",
                PHASES[p], ph[p].delivered, exp, ph[p].corrupt
            ));
        }
    }
    if !healthy.clean() {
        findings.push(format!("FAIL healthy receivers: {}", healthy.defects()));
    }
    if !ended.is_empty() {
        findings.push(format!("FAIL healthy receivers ended early: {ended:?}"));
    }
    if let Some(e) = &src_err {
        findings.push(format!("FAIL healthy source: {e}"));
    }
    if inputs_invalid > 0 {
        findings.push(format!(
            "FAIL {inputs_invalid} invalid inputs reached the source, e.g. {invalid_examples:?}"
        ));
    }
    let wm = h.witness_msgs.load(Relaxed);
    if wm > 0 {
        findings.push(format!(
            "FAIL witness receivers got {wm} messages from sources that sent only invalid ones"
        ));
    }
    for (k, v) in &kinds {
        let exp = expected(k);
        let bad: Vec<String> = v
            .outcomes
            .iter()
            .filter(|(out, _)| out.as_str() != CUT && !exp.contains(&out.as_str()))
            .map(|(out, c)| format!("{c}× {out}"))
            .collect();
        if !bad.is_empty() {
            findings.push(format!(
                "UNEXPECTED {k}: {} (expected {})",
                bad.join(", "),
                exp.join(" or ")
            ));
        }
    }
    if let Some(r) = rx_conn_settle {
        if r as u64 != n {
            findings.push(format!(
                "FAIL after settle the relay counts {r} receivers, expected the {n} healthy ones"
            ));
        }
    }
    if left_open > 0 || unfinished > 0 {
        findings.push(format!("NOTE {left_open} hostile connections / {unfinished} tasks did not end within 5 s of the stop"));
    }
    let failures: Vec<String> = findings
        .iter()
        .filter(|f| f.starts_with("FAIL") || f.starts_with("UNEXPECTED"))
        .cloned()
        .collect();
    let ok = failures.is_empty();

    // ------------------------------------------------------------ text
    let mut t = String::new();
    let _ = writeln!(
        t,
        "== chaos against {label} ({url}){}",
        if relay_args.is_empty() {
            String::new()
        } else {
            format!(", started with {}", relay_args.join(" "))
        }
    );
    let _ = writeln!(
        t,
        "healthy       {n} receivers on {live}: {}x{} RGBA Pixels+KEYFRAME ({} B/message) at {} fps; calm {} s, chaos {} s, settle {} s; source pacing lateness p50 {:.2} / p99 {:.2} / max {:.2} ms",
        o.stream.width, o.stream.height, o.stream.msg_bytes(), o.stream.fps, o.calm, o.duration, o.settle, late[0], late[1], late[2]
    );
    let _ = writeln!(t, "\n| phase | frames sent | delivered intact | fraction | p50 ms | p99 ms | p99.9 ms | max ms | relay CPU % | driver CPU % |");
    let _ = writeln!(t, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for p in 0..3 {
        let exp = ph[p].expected;
        let _ = writeln!(
            t,
            "| {} | {} | {}/{} | {:.3}% | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} |",
            PHASES[p],
            ph[p].sent,
            ph[p].delivered,
            exp,
            ph[p].fraction() * 100.0,
            ph[p].lat.p50,
            ph[p].lat.p99,
            ph[p].lat.p999,
            ph[p].lat.max,
            opt(pcpu[p].relay, 1),
            opt(pcpu[p].driver, 1)
        );
    }
    let _ = writeln!(
        t,
        "\nin order      {all_frames} of {n} healthy receivers got every frame; missing {}, duplicate {dup}, out-of-order {ooo}, corrupted {corrupt}, other messages {foreign}; per-receiver min {:.3}%{}",
        healthy.missing,
        per_rx_min * 100.0,
        if ended.is_empty() { String::new() } else { format!("; ENDED EARLY {ended:?}") }
    );
    let _ = writeln!(
        t,
        "relay RSS     start of calm {} MB, end of calm {} MB, peak during chaos {} MB (sampled 4/s; VmHWM {} MB), after settle {} MB = {}× start ({}× end of calm)",
        opt(mb(rss_start), 1),
        opt(mb(rss_calm_end), 1),
        opt(rss_peak_mb, 1),
        opt(mb(hwm_after_chaos), 1),
        opt(mb(rss_settle), 1),
        opt(settle_vs_start, 2),
        opt(settle_vs_calm, 2)
    );
    let _ = writeln!(
        t,
        "relay fds     {} at start, {} after settle; after settle /metrics: receivers {}, connections open {}; /healthz {}",
        fds_start.map_or("-".into(), |x| x.to_string()),
        fds_settle.map_or("-".into(), |x| x.to_string()),
        opt(rx_conn_settle, 0),
        opt(open_settle, 0),
        healthz.as_ref().map_or_else(|e| format!("failed: {e}"), |s| s.clone())
    );
    let _ = writeln!(
        t,
        "source        inputs forwarded to it: {inputs_valid} valid {input_kinds:?}, {inputs_invalid} invalid{}",
        if invalid_examples.is_empty() { String::new() } else { format!(" e.g. {invalid_examples:?}") }
    );
    let _ = writeln!(
        t,
        "hostile       every one closed {close_secs:.2} s after the stop; {} kinds:\n",
        kinds.len()
    );
    let _ = writeln!(t, "| hostile client | attempted | how it ended (count) | expected | secs to end min/med/max | note |");
    let _ = writeln!(t, "|---|---:|---|---|---|---|");
    let total: u64 = kinds.values().map(|k| k.attempted).sum();
    for (k, v) in &kinds {
        let q = |x: f64| v.secs_at(x);
        let mut ex = v.extra.clone();
        ex.sort_by(f64::total_cmp);
        let note = if ex.is_empty() {
            String::new()
        } else if k.starts_with("staller") {
            format!(
                "read {:.2}–{:.2} MB after the stall",
                ex[0],
                ex[ex.len() - 1]
            )
        } else if k.starts_with("input flood") {
            format!("{:.0}–{:.0} inputs written", ex[0], ex[ex.len() - 1])
        } else {
            String::new()
        };
        let _ = writeln!(
            t,
            "| {k} | {} | {} | {} | {:.2}/{:.2}/{:.2} | {note} |",
            v.attempted,
            v.outcomes_text(),
            expected(k).join(" or "),
            q(0.0),
            q(0.5),
            q(1.0)
        );
    }
    let mut by_outcome: BTreeMap<String, u64> = BTreeMap::new();
    for v in kinds.values() {
        for (out, c) in &v.outcomes {
            let key = if out.starts_with("we reset") {
                "we reset (SO_LINGER 0)".to_owned()
            } else if out.contains("closed by us") {
                "closed by us".to_owned()
            } else {
                out.clone()
            };
            *by_outcome.entry(key).or_default() += c;
        }
    }
    let peak_open = ticks.iter().map(|k| k.hostile_open).max().unwrap_or(0);
    let _ = writeln!(
        t,
        "\n{total} hostile connections attempted in {} s (at most {peak_open} open at a 1 s sample); all of them by outcome: {}",
        o.duration,
        by_outcome
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        t,
        "\nslowest frames (latency over the {n} healthy receivers; storms began at {} s after the stream started):",
        storms.iter().map(|s| format!("{s:.1}")).collect::<Vec<_>>().join(", ")
    );
    for (i, ts, p, lo, hi, storm) in &worst {
        let _ = writeln!(
            t,
            "  frame {i:>5} sent at {ts:>6.2} s ({}): fastest receiver {lo:.2} ms, slowest {hi:.2} ms{}",
            PHASES[*p],
            storm.map_or(String::new(), |d| format!("; {d:+.0} ms after a storm began"))
        );
    }
    let _ = writeln!(t, "\nrelay /metrics at the end:");
    for l in &metrics_end {
        let _ = writeln!(t, "  {l}");
    }
    let _ = writeln!(t);
    if findings.is_empty() {
        let _ = writeln!(t, "checks        all passed: every healthy frame intact and in order, every hostile client ended as expected, no receiver left over");
    }
    for f in &findings {
        let _ = writeln!(t, "check         {f}");
    }

    // ------------------------------------------------------------ json
    let phase_json: Vec<Value> = (0..3)
        .map(|p| {
            let exp = ph[p].expected;
            json!({
                "phase": PHASES[p],
                "frames_sent": ph[p].sent,
                "expected": exp,
                "delivered_intact": ph[p].delivered,
                "corrupted": ph[p].corrupt,
                "delivered_fraction": ph[p].fraction(),
                "latency_ms": ph[p].lat.json(),
                "relay_cpu_percent": pcpu[p].relay,
                "driver_cpu_percent": pcpu[p].driver,
            })
        })
        .collect();
    let kinds_json: Value = kinds
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                json!({"attempted": v.attempted, "outcomes": v.outcomes, "expected": expected(k), "secs_to_end": v.secs, "extra": v.extra}),
            )
        })
        .collect::<serde_json::Map<String, Value>>()
        .into();
    let json = json!({
        "scenario": "chaos",
        "relay": label,
        "url": url,
        "relay_args": relay_args,
        "config": {
            "receivers": n, "width": o.stream.width, "height": o.stream.height, "fps": o.stream.fps,
            "calm_s": o.calm, "chaos_s": o.duration, "settle_s": o.settle,
            "stall_s": stall.as_secs_f64(), "slow_timeout_ms": o.slow_timeout_ms,
            "storm": o.storm, "storm_every_s": o.storm_every, "vanish_per_s": o.vanish,
            "stallers_per_wave": o.stallers, "skipped_kinds": format!("{:?}", o.skip), "slowloris_per_wave": o.slowloris, "max_hostile": o.max_hostile,
        },
        "phases": phase_json,
        "healthy": {
            "receivers_with_every_frame": all_frames, "missing": healthy.missing, "duplicate": dup, "out_of_order": ooo, "corrupted": corrupt,
            "non_test_messages": foreign, "per_receiver_min_fraction": per_rx_min, "ended_early": ended,
        },
        "source": {"frames_sent": sent, "pacing_late_ms": late, "error": src_err,
            "inputs_valid": inputs_valid, "inputs_invalid": inputs_invalid, "input_kinds": input_kinds,
            "invalid_examples": invalid_examples},
        "relay_process": {
            "rss_MB_start_of_calm": mb(rss_start), "rss_MB_end_of_calm": mb(rss_calm_end),
            "rss_MB_peak_chaos_sampled": rss_peak_mb, "vmhwm_MB_after_chaos": mb(hwm_after_chaos),
            "vmhwm_MB_end": mb(hwm_end), "rss_MB_after_settle": mb(rss_settle),
            "rss_after_settle_over_start": settle_vs_start, "rss_after_settle_over_end_of_calm": settle_vs_calm,
            "fds_start": fds_start, "fds_after_settle": fds_settle,
        },
        "hostile": {"attempted_total": total, "by_outcome": by_outcome, "peak_open_sampled": peak_open, "close_secs_after_stop": close_secs, "left_open": left_open,
            "witness_messages": wm, "kinds": kinds_json},
        "metrics_before": metrics0, "metrics_after_settle": metrics_settle, "metrics_end": metrics_end,
        "healthz_after_settle": healthz.ok(),
        "timeline": ticks.iter().map(|k| k.json(&PHASES)).collect::<Vec<_>>(),
        "findings": findings,
        "storm_start_s": storms,
        "slowest_frames": worst.iter().map(|(i, ts, p, lo, hi, storm)| json!({"index": i, "sent_s": ts, "phase": PHASES[*p],
            "fastest_receiver_ms": lo, "slowest_receiver_ms": hi, "ms_after_storm_start": storm})).collect::<Vec<_>>(),
        "ok": ok,
    });
    Ok(ChaosResult {
        text: t,
        json,
        healthy,
        failures,
    })
}
