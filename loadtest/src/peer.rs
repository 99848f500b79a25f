//! The clients every scenario (chaos included) plays, in one place: the
//! connection and handshake, the receiver loop (read, verify each frame,
//! record latency, answer pings and the close), the paced source, and the
//! small socket helpers around them.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use bitstream_wire::handshake::{self, HeadError};
use bitstream_wire::protocol;
use bitstream_wire::reader::{Incoming, MessageReader};
use bitstream_wire::ws::{self, Side};
use hdrhistogram::Histogram;
use tokio::net::{TcpSocket, TcpStream};
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

use crate::verify::{Counts, Verdict, Verifier};
use crate::wire::{Ev, FrameTemplate, Framing, Parser};
use crate::{now_ns, now_secs};

/// Longest wait for a handshake answer.
pub const HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);

/// A latency histogram: 1 µs to 1 h, 3 significant digits.
pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("histogram bounds")
}

/// A current-thread runtime (the source's thread, chaos's main thread).
pub fn current_thread_rt() -> io::Result<Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// A relay under test: `ws://HOST:PORT`, or `tcp://HOST:PORT` for the
/// plain-TCP reference.
#[derive(Debug, Clone)]
pub struct Target {
    /// Where it listens (IPv4 preferred).
    pub addr: SocketAddr,
    /// HOST:PORT as given (the `Host` header).
    pub host: String,
    /// How it frames messages.
    pub framing: Framing,
}

impl Target {
    /// Parses a base URL (no path).
    pub fn parse(url: &str) -> Result<Self, String> {
        let (framing, rest) = if let Some(r) = url.strip_prefix("ws://") {
            (Framing::Ws, r)
        } else if let Some(r) = url.strip_prefix("tcp://") {
            (Framing::Tcp, r)
        } else {
            return Err(format!(
                "the URL must be ws://HOST:PORT or tcp://HOST:PORT, not {url}"
            ));
        };
        let host = rest.trim_end_matches('/').to_owned();
        if host.contains('/') {
            return Err(format!("the URL must have no path: {url}"));
        }
        let addrs: Vec<SocketAddr> = host
            .to_socket_addrs()
            .map_err(|e| format!("{host}: {e}"))?
            .collect();
        let addr = addrs
            .iter()
            .find(|a| a.is_ipv4())
            .or(addrs.first())
            .copied()
            .ok_or_else(|| format!("{host}: no address"))?;
        Ok(Self {
            addr,
            host,
            framing,
        })
    }
}

/// Which end of a channel a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `/source/{ch}` (`S ch` on the plain-TCP reference).
    Source,
    /// `/stream/{ch}` (`R ch`).
    Receiver,
}

/// A TCP connection with Nagle off, `SO_RCVBUF` set first if given.
pub async fn tcp_connect(addr: SocketAddr, rcvbuf: Option<u32>) -> io::Result<TcpStream> {
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(b) = rcvbuf {
        sock.set_recv_buffer_size(b)?;
    }
    let s = sock.connect(addr).await?;
    let _ = s.set_nodelay(true);
    Ok(s)
}

/// write_all on a shared `&TcpStream`.
pub async fn write_all(s: &TcpStream, mut b: &[u8]) -> io::Result<()> {
    while !b.is_empty() {
        match s.try_write(b) {
            Ok(n) => b = &b[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => s.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// How an I/O error ended a connection, in a report's words.
pub fn io_end(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionReset => "reset by relay".into(),
        io::ErrorKind::BrokenPipe => "broken pipe".into(),
        _ => format!("error: {e}"),
    }
}

/// Reads an HTTP response head within `limit`: (status, head, bytes after it).
pub async fn read_head(s: &TcpStream, limit: Duration) -> Result<(u16, Vec<u8>, Vec<u8>), String> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut buf = Vec::with_capacity(512);
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(i + 4);
            let status = String::from_utf8_lossy(&buf)
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            return Ok((status, buf, rest));
        }
        if buf.len() > 64 * 1024 {
            return Err("response head too large".into());
        }
        match tokio::time::timeout_at(deadline, s.readable()).await {
            Err(_) => return Err("no answer".into()),
            Ok(Err(e)) => return Err(io_end(&e)),
            Ok(Ok(())) => {}
        }
        let mut chunk = [0u8; 4096];
        match s.try_read(&mut chunk) {
            Ok(0) if buf.is_empty() => return Err("EOF, no answer".into()),
            Ok(0) => return Err("EOF inside the response head".into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(io_end(&e)),
        }
    }
}

/// The client's half of the WebSocket opening handshake on a connected
/// socket, with a key made from `seed`. Ok: the bytes read past the head.
/// Err: `HTTP 409` and the like for a refusal, else what went wrong.
pub async fn handshake(
    s: &TcpStream,
    host: &str,
    path: &str,
    seed: u32,
) -> Result<Vec<u8>, String> {
    let key = handshake::client_key(seed);
    write_all(s, &handshake::client_request(host, path, &key))
        .await
        .map_err(|e| format!("handshake write: {}", io_end(&e)))?;
    let (status, head, rest) = read_head(s, HANDSHAKE_LIMIT)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    if status != 101 {
        return Err(format!("HTTP {status}"));
    }
    match handshake::parse_response(&head, &key) {
        Ok(Some(_)) => Ok(rest),
        Ok(None) => Err("handshake: incomplete head".into()),
        Err(HeadError::WrongAccept) => Err("101 with a wrong Sec-WebSocket-Accept".into()),
        Err(e) => Err(format!("handshake: {e}")),
    }
}

/// A WebSocket connection on `path`, handshake done.
pub async fn open_path(t: &Target, path: &str, rcvbuf: Option<u32>, seed: u32) -> Opened {
    let s = tcp_connect(t.addr, rcvbuf)
        .await
        .map_err(|e| format!("connect failed: {e}"))?;
    let left = handshake(&s, &t.host, path, seed).await?;
    Ok((s, left))
}

/// A connection ready for messages, with the bytes read past its handshake.
pub type Opened = Result<(TcpStream, Vec<u8>), String>;

/// A source or receiver of channel `ch`, ready for messages.
pub async fn open(t: &Target, role: Role, ch: &str, seed: u32) -> Opened {
    match t.framing {
        Framing::Ws => {
            let dir = match role {
                Role::Source => "source",
                Role::Receiver => "stream",
            };
            open_path(t, &format!("/{dir}/{ch}"), None, seed).await
        }
        Framing::Tcp => {
            let s = tcp_connect(t.addr, None)
                .await
                .map_err(|e| format!("connect failed: {e}"))?;
            let tag = match role {
                Role::Source => 'S',
                Role::Receiver => 'R',
            };
            write_all(&s, format!("{tag} {ch}\n").as_bytes())
                .await
                .map_err(|e| format!("write: {}", io_end(&e)))?;
            let (_, head, rest) = read_head(&s, Duration::from_secs(10)).await?;
            if head == crate::tcpserver::JOINED {
                Ok((s, rest))
            } else {
                Err(format!("not joined: {:?}", String::from_utf8_lossy(&head)))
            }
        }
    }
}

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's read buffer of `size` bytes, shared by all
/// the connections the thread reads (no per-connection buffer).
pub fn with_scratch<R>(size: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
    SCRATCH.with(|cell| {
        let mut buf = cell.borrow_mut();
        if buf.len() != size {
            buf.resize(size, 0);
        }
        f(&mut buf)
    })
}

// ---------------------------------------------------------------- receivers

/// A frame delivered to a receiver.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Its index.
    pub idx: u64,
    /// When the source sent it (ns since the epoch).
    pub send_ns: u64,
    /// Send to last byte read, µs.
    pub lat_us: u64,
}

/// Where receivers put what they measured, a read's worth at a time.
pub trait Sink: Send + Sync + 'static {
    /// Frames delivered (first arrival, intact).
    fn record(&self, delivered: &[Sample]);
    /// `n` corrupt frames arrived just now.
    fn corrupt(&self, _n: u64) {}
}

/// One receiver, as the rest of the driver sees it.
pub struct RecvStat {
    /// Its tally (locked once per read by the receiver).
    pub v: Mutex<Verifier>,
    /// The receiver ended (the relay closed it, or an error).
    pub done: AtomicBool,
    /// Why it ended, if it did.
    pub ended: Mutex<Option<String>>,
}

impl RecvStat {
    /// A receiver of the channel numbered `channel`.
    pub fn new(channel: u64) -> Self {
        Self {
            v: Mutex::new(Verifier::new(channel)),
            done: AtomicBool::new(false),
            ended: Mutex::new(None),
        }
    }

    /// Its totals with `sent` frames expected.
    pub fn counts(&self, sent: u64) -> Counts {
        self.v.lock().unwrap().counts(sent)
    }

    /// The receiver ended, for `why`.
    pub fn end(&self, why: String) {
        self.done.store(true, Relaxed);
        *self.ended.lock().unwrap() = Some(why);
    }

    /// Highest delivered index + 1.
    pub fn next(&self) -> u64 {
        self.v.lock().unwrap().next()
    }

    /// Still connected and short of frame `sent - 1`.
    pub fn behind(&self, sent: u64) -> bool {
        !self.done.load(Relaxed) && self.next() < sent
    }
}

/// The totals of `stats` with `sent` frames expected by each.
pub fn totals(stats: &[Arc<RecvStat>], sent: u64) -> Counts {
    let mut c = Counts::default();
    for s in stats {
        c.add(&s.counts(sent));
    }
    c
}

/// Why receivers ended early, with how many ended so.
pub fn ended_early(stats: &[Arc<RecvStat>]) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for s in stats.iter().filter(|s| s.done.load(Relaxed)) {
        if let Some(e) = s.ended.lock().unwrap().clone() {
            *m.entry(e).or_default() += 1;
        }
    }
    m
}

/// How receivers read.
#[derive(Debug, Clone, Copy)]
pub struct RecvCfg {
    /// Framing of the relay.
    pub framing: Framing,
    /// Hash every n-th frame's bytes (1: every frame).
    pub check_every: u64,
    /// Bytes per read syscall (one buffer per driver thread).
    pub read_buf: usize,
    /// Read at most this many bytes per second (a deliberately slow
    /// receiver); None: as fast as they come.
    pub rate: Option<f64>,
    /// How receivers read (a rate-limited receiver is always lean).
    pub client: Client,
}

/// How the driver's receivers read (`--client`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Client {
    /// The driver's own reader: one read buffer per driver thread shared by
    /// its receivers, each message streamed into the hash, nothing
    /// assembled (cheapest: the driver stays out of the way).
    #[default]
    Lean,
    /// One task per receiver assembling whole messages with
    /// tokio-tungstenite (one `Vec` per message on plain TCP), every byte
    /// hashed: what a typical client library costs and how it reads.
    Whole,
}

/// A read-rate limit: a token bucket of bytes, refilled at `rate` per
/// second, holding at most `burst` (one read buffer, or 10 ms of the rate
/// if more, so a late timer wake-up does not lose rate).
#[derive(Debug, Clone, Copy)]
pub struct Throttle {
    rate: f64,
    burst: f64,
    tokens: f64,
    at_ns: u64,
}

impl Throttle {
    /// A bucket of `rate` bytes/s, full at `now_ns`.
    pub fn new(rate: f64, read_buf: usize, now_ns: u64) -> Self {
        let burst = (read_buf as f64).max(rate * 0.01);
        Self {
            rate: rate.max(1.0),
            burst,
            tokens: burst,
            at_ns: now_ns,
        }
    }

    /// Bytes that may be read at `now_ns` (whole bytes, at most `max`); 0
    /// until a quarter of a burst has accrued, so reads are not tiny.
    pub fn allowance(&mut self, now_ns: u64, max: usize) -> usize {
        let dt = now_ns.saturating_sub(self.at_ns) as f64 / 1e9;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.at_ns = now_ns;
        if self.tokens < self.burst / 4.0 {
            0
        } else {
            (self.tokens as usize).min(max)
        }
    }

    /// `n` bytes were read.
    pub fn spend(&mut self, n: usize) {
        self.tokens -= n as f64;
    }

    /// How long until [`Throttle::allowance`] is above 0.
    pub fn wait(&self) -> Duration {
        let need = (self.burst / 4.0 - self.tokens).max(0.0);
        Duration::from_secs_f64(need / self.rate).max(Duration::from_micros(200))
    }
}

/// A receiver's connection, handshake done.
pub struct Joined {
    /// Receiver number in the run.
    pub rid: usize,
    /// Number of its channel.
    pub channel: usize,
    /// Index of the relay it joined, of those [`join_receivers`] was given.
    pub node: usize,
    /// The socket.
    pub stream: TcpStream,
    /// Bytes read past the handshake.
    pub left: Vec<u8>,
}

/// The receivers that joined, and those that did not.
#[derive(Default)]
pub struct Joins {
    /// Connected.
    pub ok: Vec<Joined>,
    /// Failed to connect (refused, timed out, ...).
    pub failures: usize,
    /// The first failure.
    pub first_error: Option<String>,
}

/// Connects `n` receivers, round-robin over `channels`, `batch` at a time
/// (each within 20 s); `after_batch` sees the progress. Receiver `r` joins
/// relay `(r / channels) % relays.len()` of `relays` (the nodes of a
/// cluster), so every channel's receivers are spread over all of them.
pub async fn join_receivers(
    relays: &[Target],
    channels: &[String],
    n: usize,
    batch: usize,
    mut after_batch: impl FnMut(&Joins),
) -> Joins {
    let mut j = Joins::default();
    let mut i = 0;
    while i < n {
        let b = batch.max(1).min(n - i);
        let tasks: Vec<JoinHandle<_>> = (i..i + b)
            .map(|rid| {
                let node = relay_of(rid, channels.len(), relays.len());
                let (t, ch) = (relays[node].clone(), channels[rid % channels.len()].clone());
                tokio::spawn(async move {
                    tokio::time::timeout(
                        Duration::from_secs(20),
                        open(&t, Role::Receiver, &ch, rid as u32),
                    )
                    .await
                    .unwrap_or_else(|_| Err("connect timed out".into()))
                })
            })
            .collect();
        for (rid, task) in (i..).zip(tasks) {
            match task.await.map_err(|e| e.to_string()).and_then(|r| r) {
                Ok((stream, left)) => j.ok.push(Joined {
                    rid,
                    channel: rid % channels.len(),
                    node: relay_of(rid, channels.len(), relays.len()),
                    stream,
                    left,
                }),
                Err(e) => {
                    j.failures += 1;
                    j.first_error.get_or_insert(e);
                }
            }
        }
        i += b;
        after_batch(&j);
    }
    j
}

/// Which of `relays` receiver `rid` joins (see [`join_receivers`]).
pub fn relay_of(rid: usize, channels: usize, relays: usize) -> usize {
    (rid / channels.max(1)) % relays.max(1)
}

/// Starts a receiver task for each joined connection.
pub fn spawn_receivers<S: Sink>(
    joined: Vec<Joined>,
    cfg: RecvCfg,
    sink: &Arc<S>,
) -> (Vec<Arc<RecvStat>>, Vec<JoinHandle<()>>) {
    joined
        .into_iter()
        .map(|j| {
            let st = Arc::new(RecvStat::new(j.channel as u64));
            let (rid, s) = (j.rid as u64, st.clone());
            let task = if cfg.client == Client::Whole && cfg.rate.is_none() {
                tokio::spawn(crate::whole::receive(
                    j.stream,
                    j.left,
                    cfg,
                    rid,
                    s,
                    sink.clone(),
                ))
            } else {
                tokio::spawn(receive(j.stream, j.left, cfg, rid, s, sink.clone()))
            };
            (st, task)
        })
        .unzip()
}

/// A receiver's per-read state.
struct Rx {
    lat: Vec<Sample>,
    corrupt: u64,
    pongs: Vec<Vec<u8>>,
    close: Option<u16>,
    now_us: u64,
    mask: u32,
}

impl Rx {
    fn on(&mut self, e: Ev<'_>, v: &mut Verifier) {
        match e {
            Ev::Msg(m) => match v.on_msg(&m) {
                d if d.delivered() => self.lat.push(Sample {
                    idx: m.idx,
                    send_ns: m.send_ns,
                    lat_us: self.now_us.saturating_sub(m.send_ns / 1000).max(1),
                }),
                Verdict::Corrupt => self.corrupt += 1,
                _ => {}
            },
            Ev::Ping(b) => {
                self.mask = self.mask.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                self.pongs.push(ws::client_frame(
                    ws::OP_PONG,
                    true,
                    b,
                    self.mask.to_ne_bytes(),
                ));
            }
            Ev::Close(c) => self.close = Some(c),
            Ev::Pong => {}
        }
    }

    /// Parses `data`, tallying under one lock.
    fn feed(&mut self, p: &mut Parser, st: &RecvStat, data: &[u8]) -> Result<(), String> {
        let mut v = st.v.lock().unwrap();
        p.feed(data, &mut |e| self.on(e, &mut v))
    }

    fn flush(&mut self, sink: &impl Sink) {
        if !self.lat.is_empty() {
            sink.record(&self.lat);
            self.lat.clear();
        }
        if self.corrupt > 0 {
            sink.corrupt(self.corrupt);
            self.corrupt = 0;
        }
    }
}

enum Step {
    Wait,
    Yield,
    Throttled(Duration),
    Closed(u16),
    End(String),
}

/// Up to 16 reads into `buf` (each within the read-rate limit), fed to
/// the parser: why it stopped.
fn read_burst(
    stream: &TcpStream,
    buf: &mut [u8],
    throttle: &mut Option<Throttle>,
    rx: &mut Rx,
    p: &mut Parser,
    st: &Arc<RecvStat>,
) -> Step {
    for _ in 0..16 {
        let len = match throttle {
            None => buf.len(),
            Some(t) => match t.allowance(now_ns(), buf.len()) {
                0 => return Step::Throttled(t.wait()),
                n => n,
            },
        };
        match stream.try_read(&mut buf[..len]) {
            Ok(0) => return Step::End("connection closed without close frame".into()),
            Ok(n) => {
                if let Some(t) = throttle {
                    t.spend(n);
                }
                rx.now_us = now_ns() / 1000;
                if let Err(e) = rx.feed(p, st, &buf[..n]) {
                    return Step::End(format!("parse error: {e}"));
                }
                if let Some(c) = rx.close {
                    return Step::Closed(c);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Wait,
            Err(e) => return Step::End(io_end(&e)),
        }
    }
    Step::Yield
}

/// Answers the relay's close frame: echoes the code, unless it may not be
/// sent (1005 "none" and the like).
async fn echo_close(stream: &TcpStream, c: u16) {
    let payload = if matches!(c, 1000..=1003 | 1007..=1014 | 3000..=4999) {
        ws::close_payload(c, "")
    } else {
        Vec::new()
    };
    let _ = write_all(
        stream,
        &ws::client_frame(ws::OP_CLOSE, true, &payload, [1, 2, 3, 4]),
    )
    .await;
}

/// The receiver loop: reads up to 16 times per turn into the thread's
/// shared buffer, verifies every frame, records latency, answers pings and
/// the relay's close; on its end, says why in `st`.
pub async fn receive<S: Sink>(
    stream: TcpStream,
    leftover: Vec<u8>,
    cfg: RecvCfg,
    rid: u64,
    st: Arc<RecvStat>,
    sink: Arc<S>,
) {
    let mut p = Parser::new(cfg.framing, cfg.check_every, rid);
    let mut rx = Rx {
        lat: Vec::with_capacity(64),
        corrupt: 0,
        pongs: Vec::new(),
        close: None,
        now_us: now_ns() / 1000,
        mask: rid as u32 | 1,
    };
    let mut throttle = cfg.rate.map(|r| Throttle::new(r, cfg.read_buf, now_ns()));
    let ended = 'end: {
        if let Err(e) = rx.feed(&mut p, &st, &leftover) {
            break 'end format!("parse error: {e}");
        }
        loop {
            let step = with_scratch(cfg.read_buf, |buf| {
                read_burst(&stream, buf, &mut throttle, &mut rx, &mut p, &st)
            });
            rx.flush(&*sink);
            for pong in std::mem::take(&mut rx.pongs) {
                let _ = write_all(&stream, &pong).await;
            }
            match step {
                Step::Wait => {
                    if let Err(e) = stream.readable().await {
                        break 'end format!("socket error: {e}");
                    }
                }
                Step::Yield => tokio::task::yield_now().await,
                Step::Throttled(d) => tokio::time::sleep(d).await,
                Step::Closed(c) => {
                    echo_close(&stream, c).await;
                    break 'end format!("closed by relay with {c}");
                }
                Step::End(e) => break 'end e,
            }
        }
    };
    st.end(ended);
}

// ---------------------------------------------------------------- source

/// What the source plays.
#[derive(Debug, Clone)]
pub struct SourceCfg {
    /// The relay.
    pub target: Target,
    /// One connection per channel; frame `k` goes to each in turn.
    pub channels: Vec<String>,
    /// Frame width.
    pub width: u16,
    /// Frame height.
    pub height: u16,
    /// Frames per second; 0 = each send as soon as the last one was taken.
    pub fps: f64,
    /// Stop after this many seconds (else when `stop` is set).
    pub duration: Option<f64>,
    /// Keep every frame's send time (of the first channel).
    pub record_sends: bool,
}

/// Inputs the relay forwarded to the source: every one must be valid.
#[derive(Default)]
pub struct Inputs {
    /// Valid inputs.
    pub valid: AtomicU64,
    /// Invalid messages (any text message, any binary one that is not a valid input).
    pub invalid: AtomicU64,
    /// Why the first few were invalid.
    pub examples: Mutex<Vec<String>>,
    /// Valid inputs by type.
    pub kinds: Mutex<BTreeMap<String, u64>>,
}

impl Inputs {
    fn take(&self, msg: &Incoming) {
        let why = match msg {
            Incoming::Binary(m) => match protocol::validate_input_message(m.payload()) {
                Ok(h) => {
                    self.valid.fetch_add(1, Relaxed);
                    let mut k = self.kinds.lock().unwrap();
                    *k.entry(format!("{:?}", h.input_type())).or_default() += 1;
                    return;
                }
                Err(e) => format!("{e} ({} bytes)", m.payload().len()),
            },
            _ => "a text message".into(),
        };
        self.invalid.fetch_add(1, Relaxed);
        let mut ex = self.examples.lock().unwrap();
        if ex.len() < 5 {
            ex.push(why);
        }
    }
}

/// The source as the driver sees it.
pub struct SourceShared {
    /// Frames sent on every channel.
    pub sent: AtomicU64,
    /// The source stopped sending.
    pub done: AtomicBool,
    /// Set to make it stop.
    pub stop: AtomicBool,
    /// Set when the driver is done with the connections (a close is no error then).
    release: AtomicBool,
    /// First send (seconds since the epoch).
    pub start_s: Mutex<f64>,
    /// End of the last send.
    pub end_s: Mutex<f64>,
    /// How late each paced send was against its deadline, µs.
    pub late: Mutex<Histogram<u64>>,
    /// What stopped it, if anything did.
    pub error: Mutex<Option<String>>,
    /// Send time of each frame (with `record_sends`).
    pub send_ns: Mutex<Vec<u64>>,
    /// What the relay forwarded to it.
    pub inputs: Inputs,
}

impl SourceShared {
    fn note_error(&self, e: String) {
        self.error.lock().unwrap().get_or_insert(e);
    }
}

/// A running source: one thread with its own current-thread runtime, so
/// its pacing never waits behind receivers.
pub struct Source {
    /// Its state.
    pub sh: Arc<SourceShared>,
    go: mpsc::Sender<()>,
    th: std::thread::JoinHandle<()>,
}

impl Source {
    /// Connects the source of every channel; returns once all are connected.
    pub async fn connect(cfg: SourceCfg) -> Result<Source, String> {
        let sh = Arc::new(SourceShared {
            sent: AtomicU64::new(0),
            done: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            release: AtomicBool::new(false),
            start_s: Mutex::new(0.0),
            end_s: Mutex::new(0.0),
            late: Mutex::new(new_hist()),
            error: Mutex::new(None),
            send_ns: Mutex::new(Vec::new()),
            inputs: Inputs::default(),
        });
        let (ready_tx, ready_rx) = mpsc::channel();
        let (go, go_rx) = mpsc::channel();
        let th = {
            let sh = sh.clone();
            std::thread::Builder::new()
                .name("source".into())
                .spawn(move || source_thread(cfg, sh, ready_tx, go_rx))
                .map_err(|e| format!("spawn source thread: {e}"))?
        };
        let ready = tokio::task::spawn_blocking(move || ready_rx.recv())
            .await
            .ok()
            .and_then(|r| r.ok())
            .unwrap_or_else(|| Err("source thread ended".into()));
        let src = Source { sh, go, th };
        match ready {
            Ok(()) => Ok(src),
            Err(e) => {
                src.finish().await;
                Err(e)
            }
        }
    }

    /// Starts sending.
    pub fn go(&self) {
        let _ = self.go.send(());
    }

    /// True once the source stopped sending (or its thread died, which is
    /// then its error).
    pub fn stopped(&self) -> bool {
        if self.sh.done.load(Relaxed) {
            return true;
        }
        if self.th.is_finished() {
            self.sh
                .note_error("the source thread ended before the run did".into());
            return true;
        }
        false
    }

    /// Lets the source close its connections; waits for its thread.
    pub async fn finish(self) {
        self.sh.release.store(true, Relaxed);
        drop(self.go);
        let th = self.th;
        let _ = tokio::task::spawn_blocking(move || th.join()).await;
    }
}

/// Reads what the relay sends a source: inputs (each validated), until a
/// close, an error or the end.
async fn read_inputs(s: Arc<TcpStream>, left: Vec<u8>, sh: Arc<SourceShared>) {
    let mut r = MessageReader::new(Side::Client, 1 << 20, 64 * 1024, &left);
    let why = loop {
        match r.parse() {
            Ok(Some(Incoming::Close(c))) => break format!("source closed by relay: {c:?}"),
            Ok(Some(m @ (Incoming::Binary(_) | Incoming::Text(_)))) => sh.inputs.take(&m),
            Ok(Some(_)) => {}
            Ok(None) => {
                if let Err(e) = s.readable().await {
                    break format!("source read: {e}");
                }
                match s.try_read_buf(r.read_buf()) {
                    Ok(0) => break "source: EOF from the relay".into(),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => break format!("source read: {}", io_end(&e)),
                }
            }
            Err(e) => break format!("source read: {e}"),
        }
    };
    if !sh.release.load(Relaxed) {
        sh.note_error(why);
    }
}

/// Sleeps until `deadline`: on the runtime's timer (ms resolution, so the
/// input readers run meanwhile) to 2 ms before it, then a blocking sleep.
fn sleep_until(rt: &Runtime, deadline: Instant) {
    if let Some(coarse) = deadline.checked_sub(Duration::from_millis(2)) {
        if coarse > Instant::now() {
            rt.block_on(async { tokio::time::sleep_until(coarse.into()).await });
        }
    }
    let now = Instant::now();
    if deadline > now {
        std::thread::sleep(deadline - now);
    }
}

/// The sources' connections, one per channel (with the bytes read past
/// each handshake).
async fn connect_sources(cfg: &SourceCfg) -> Result<Vec<(Arc<TcpStream>, Vec<u8>)>, String> {
    let mut v = Vec::new();
    for (c, name) in cfg.channels.iter().enumerate() {
        let (s, left) = open(&cfg.target, Role::Source, name, c as u32)
            .await
            .map_err(|e| format!("source {name}: {e}"))?;
        v.push((Arc::new(s), left));
    }
    Ok(v)
}

/// Sends frame after frame on every channel (paced at `cfg.fps`, or as
/// fast as the relay takes them) until the duration is over, the driver
/// stops it, or a send fails.
fn send_frames(
    rt: &Runtime,
    cfg: &SourceCfg,
    sh: &SourceShared,
    conns: &[(Arc<TcpStream>, Vec<u8>)],
    tpl: &mut FrameTemplate,
) {
    let start = Instant::now();
    *sh.start_s.lock().unwrap() = now_secs();
    let end = cfg.duration.map(|d| start + Duration::from_secs_f64(d));
    let period = (cfg.fps > 0.0).then(|| Duration::from_secs_f64(1.0 / cfg.fps));
    let mut k: u64 = 0;
    'frames: while !sh.stop.load(Relaxed) {
        if let Some(p) = period {
            let deadline = start + p.mul_f64(k as f64);
            if end.is_some_and(|e| deadline >= e) {
                break;
            }
            sleep_until(rt, deadline);
            let late = Instant::now().saturating_duration_since(deadline);
            sh.late
                .lock()
                .unwrap()
                .saturating_record(late.as_micros() as u64);
        } else if end.is_some_and(|e| Instant::now() >= e) {
            break;
        }
        for (c, (s, _)) in conns.iter().enumerate() {
            let ts = now_ns();
            tpl.patch(c as u64, k, ts, start.elapsed().as_millis() as u32);
            if cfg.record_sends && c == 0 {
                sh.send_ns.lock().unwrap().push(ts);
            }
            if let Err(e) = rt.block_on(write_all(s, &tpl.wire)) {
                sh.note_error(format!(
                    "send of frame {k} on {}: {}",
                    cfg.channels[c],
                    io_end(&e)
                ));
                break 'frames;
            }
        }
        k += 1;
        sh.sent.store(k, Relaxed);
    }
}

fn source_thread(
    cfg: SourceCfg,
    sh: Arc<SourceShared>,
    ready: mpsc::Sender<Result<(), String>>,
    go: mpsc::Receiver<()>,
) {
    let rt = match current_thread_rt() {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(e.to_string()));
            return;
        }
    };
    let conns = rt.block_on(connect_sources(&cfg));
    let conns = match conns {
        Ok(c) => c,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let readers: Vec<JoinHandle<()>> = match cfg.target.framing {
        Framing::Ws => conns
            .iter()
            .map(|(s, left)| rt.spawn(read_inputs(s.clone(), left.clone(), sh.clone())))
            .collect(),
        Framing::Tcp => Vec::new(),
    };
    let mut tpl = FrameTemplate::new(cfg.target.framing, cfg.width, cfg.height);
    let _ = ready.send(Ok(()));
    if go.recv().is_err() {
        return;
    }
    send_frames(&rt, &cfg, &sh, &conns, &mut tpl);
    *sh.end_s.lock().unwrap() = now_secs();
    sh.done.store(true, Relaxed);
    // Keep the connections open (and read) until the driver is done draining.
    rt.block_on(async {
        while !sh.release.load(Relaxed) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    for r in readers {
        r.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::{relay_of, Throttle};

    #[test]
    fn receivers_spread_over_every_relay_and_every_channel_reaches_each() {
        // 64 receivers of one channel over 3 relays: 22, 21, 21.
        let mut per = [0usize; 3];
        for r in 0..64 {
            per[relay_of(r, 1, 3)] += 1;
        }
        assert_eq!(per, [22, 21, 21]);
        // 3 channels over 3 relays: each channel has receivers on each relay
        // (a plain `r % relays` would put each channel on one relay only).
        let mut seen = [[false; 3]; 3];
        for r in 0..9 {
            seen[r % 3][relay_of(r, 3, 3)] = true;
        }
        assert!(seen.iter().flatten().all(|&x| x), "{seen:?}");
        // One relay: everyone on it.
        assert!((0..10).all(|r| relay_of(r, 4, 1) == 0));
    }

    /// A reader that takes everything allowed, waking when told to.
    fn read_for(rate: f64, secs: f64) -> f64 {
        let mut t = Throttle::new(rate, 256 * 1024, 0);
        let (mut now, mut total) = (0u64, 0usize);
        while (now as f64) < secs * 1e9 {
            match t.allowance(now, 256 * 1024) {
                0 => now += t.wait().as_nanos() as u64 + 1_000_000, // a late timer
                n => {
                    t.spend(n);
                    total += n;
                }
            }
        }
        total as f64
    }

    #[test]
    fn the_throttle_keeps_to_its_rate() {
        for rate in [1e6, 50e6, 166e6, 1e9] {
            let got = read_for(rate, 2.0) / 2.0;
            // Within one burst (the bucket starts full) and 2 %.
            let burst = (256.0 * 1024.0f64).max(rate * 0.01);
            assert!(got <= rate + burst / 2.0, "{rate}: {got}");
            assert!(got >= rate * 0.98, "{rate}: {got}");
        }
    }
}
