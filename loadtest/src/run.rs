//! One run of a scenario against one relay URL: connect the receivers,
//! start the source, report progress each second, drain, summarize.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use bitstream_relay::client::{parse_url, Client};
use bitstream_relay::ws;
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::sys::{self, ProcSample};
use crate::wire::{Ev, FrameTemplate, Framing, Parser};
use crate::{now_ns, now_secs, Scenario};

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
    /// Each receiver sums the payload of every n-th frame.
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

#[derive(Default)]
struct RecvStat {
    frames_ok: AtomicU64,
    bytes_ok: AtomicU64,
    missing: AtomicU64,
    ooo: AtomicU64,
    corrupt: AtomicU64,
    foreign: AtomicU64,
    checked: AtomicU64,
    next: AtomicU64,
    done: AtomicBool,
}

struct Shared {
    hist: Mutex<Histogram<u64>>,
    ihist: Mutex<Histogram<u64>>,
    ended: Mutex<BTreeMap<String, u64>>,
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("histogram bounds")
}

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

struct Rx {
    st: Arc<RecvStat>,
    expect: u64,
    pongs: Vec<Vec<u8>>,
    close: Option<u16>,
    lat: Vec<u64>,
    now_us: u64,
    mask: u32,
}

impl Rx {
    fn on(&mut self, e: Ev<'_>) {
        match e {
            Ev::Msg(m) => {
                let st = &self.st;
                if !m.test_frame {
                    st.foreign.fetch_add(1, Relaxed);
                    return;
                }
                if m.checked {
                    st.checked.fetch_add(1, Relaxed);
                }
                if m.checked && !m.sum_ok {
                    st.corrupt.fetch_add(1, Relaxed);
                    if m.idx == self.expect {
                        self.expect += 1;
                    }
                    return;
                }
                if m.idx < self.expect {
                    st.ooo.fetch_add(1, Relaxed);
                    return;
                }
                if m.idx > self.expect {
                    st.missing.fetch_add(m.idx - self.expect, Relaxed);
                }
                self.expect = m.idx + 1;
                st.frames_ok.fetch_add(1, Relaxed);
                st.bytes_ok.fetch_add(m.len, Relaxed);
                st.next.store(self.expect, Relaxed);
                self.lat
                    .push(self.now_us.saturating_sub(m.send_ns / 1000).max(1));
            }
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
        }
    }
}

enum Step {
    Wait,
    Yield,
    Eof,
    Closed(u16),
    Err(String),
}

#[allow(clippy::too_many_arguments)]
async fn receiver(
    mut stream: TcpStream,
    leftover: Vec<u8>,
    framing: Framing,
    check_every: u64,
    rid: u64,
    read_buf: usize,
    st: Arc<RecvStat>,
    sh: Arc<Shared>,
) {
    let mut p = Parser::new(framing, check_every, rid);
    let mut rx = Rx {
        st: st.clone(),
        expect: 0,
        pongs: Vec::new(),
        close: None,
        lat: Vec::with_capacity(64),
        now_us: now_ns() / 1000,
        mask: rid as u32 | 1,
    };
    let ended: String;
    if let Err(e) = p.feed(&leftover, &mut |e| rx.on(e)) {
        ended = format!("parse error: {e}");
        finish(&st, &sh, ended);
        return;
    }
    loop {
        let step = SCRATCH.with(|cell| {
            let mut buf = cell.borrow_mut();
            if buf.len() != read_buf {
                buf.resize(read_buf, 0);
            }
            for _ in 0..16 {
                match stream.try_read(&mut buf) {
                    Ok(0) => return Step::Eof,
                    Ok(n) => {
                        rx.now_us = now_ns() / 1000;
                        if let Err(e) = p.feed(&buf[..n], &mut |e| rx.on(e)) {
                            return Step::Err(e);
                        }
                        if let Some(c) = rx.close {
                            return Step::Closed(c);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Wait,
                    Err(e) => return Step::Err(e.to_string()),
                }
            }
            Step::Yield
        });
        if !rx.lat.is_empty() {
            if let Ok(mut h) = sh.hist.lock() {
                for &v in &rx.lat {
                    h.saturating_record(v);
                }
            }
            if let Ok(mut h) = sh.ihist.lock() {
                for &v in &rx.lat {
                    h.saturating_record(v);
                }
            }
            rx.lat.clear();
        }
        for pong in std::mem::take(&mut rx.pongs) {
            let _ = stream.write_all(&pong).await;
        }
        match step {
            Step::Wait => {
                if let Err(e) = stream.readable().await {
                    ended = format!("socket error: {e}");
                    break;
                }
            }
            Step::Yield => tokio::task::yield_now().await,
            Step::Eof => {
                ended = "connection closed without close frame".into();
                break;
            }
            Step::Closed(c) => {
                let _ = stream
                    .write_all(&ws::client_frame(
                        ws::OP_CLOSE,
                        true,
                        &ws::close_payload(c, ""),
                        [1, 2, 3, 4],
                    ))
                    .await;
                ended = format!("closed by relay with {c}");
                break;
            }
            Step::Err(e) => {
                ended = e;
                break;
            }
        }
    }
    finish(&st, &sh, ended);
}

fn finish(st: &RecvStat, sh: &Shared, why: String) {
    st.done.store(true, Relaxed);
    if let Ok(mut m) = sh.ended.lock() {
        *m.entry(why).or_default() += 1;
    }
}

const WS_KEY: &str = "bG9hZHRlc3Qta2V5LTAwMQ==";

async fn connect_receiver(
    host: &str,
    path: &str,
    channel: &str,
    framing: Framing,
) -> Result<(TcpStream, Vec<u8>), String> {
    let mut s = TcpStream::connect(host)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = s.set_nodelay(true);
    match framing {
        Framing::Tcp => {
            s.write_all(format!("R {channel}\n").as_bytes())
                .await
                .map_err(|e| format!("write: {e}"))?;
            Ok((s, Vec::new()))
        }
        Framing::Ws => {
            s.write_all(&ws::client_request(host, path, WS_KEY))
                .await
                .map_err(|e| format!("write: {e}"))?;
            let mut buf = Vec::with_capacity(512);
            let end = loop {
                let mut chunk = [0u8; 2048];
                let n = s.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
                if n == 0 {
                    return Err("closed during handshake".into());
                }
                buf.extend_from_slice(&chunk[..n]);
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
                if buf.len() > 16 * 1024 {
                    return Err("handshake response too large".into());
                }
            };
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let status = head.lines().next().unwrap_or("").to_owned();
            if status.split_whitespace().nth(1) != Some("101") {
                return Err(format!("refused: {status}"));
            }
            let want = ws::accept_key(WS_KEY);
            let ok = head.lines().any(|l| {
                l.split_once(':').is_some_and(|(k, v)| {
                    k.trim().eq_ignore_ascii_case("sec-websocket-accept") && v.trim() == want
                })
            });
            if !ok {
                return Err("wrong Sec-WebSocket-Accept".into());
            }
            Ok((s, buf[end..].to_vec()))
        }
    }
}

/// The source side, on its own thread: precise pacing by blocking sleeps
/// to absolute deadlines, one index per tick sent on every channel.
struct SrcShared {
    sent: AtomicU64,
    done: AtomicBool,
    start_s: Mutex<f64>,
    end_s: Mutex<f64>,
    late: Mutex<Histogram<u64>>,
    error: Mutex<Option<String>>,
}

enum SrcConn {
    Ws(Client),
    Tcp(TcpStream),
}

impl SrcConn {
    async fn send(&mut self, wire: &[u8]) -> Result<(), String> {
        match self {
            SrcConn::Ws(c) => c.send_raw(wire).await.map_err(|e| e.to_string()),
            SrcConn::Tcp(s) => s.write_all(wire).await.map_err(|e| e.to_string()),
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn source_thread(
    base: String,
    framing: Framing,
    names: Vec<String>,
    width: u16,
    height: u16,
    fps: f64,
    duration: f64,
    sh: Arc<SrcShared>,
    ready: mpsc::Sender<Result<(), String>>,
    go: mpsc::Receiver<()>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(e.to_string()));
            return;
        }
    };
    let host = base.split_once("://").map_or(base.as_str(), |x| x.1);
    let mut conns = Vec::new();
    for n in &names {
        let c = rt.block_on(async {
            match framing {
                Framing::Ws => Client::connect(&format!("{base}/source/{n}"), 1 << 20)
                    .await
                    .map(SrcConn::Ws)
                    .map_err(|e| e.to_string()),
                Framing::Tcp => {
                    let mut s = TcpStream::connect(host).await.map_err(|e| e.to_string())?;
                    let _ = s.set_nodelay(true);
                    s.write_all(format!("S {n}\n").as_bytes())
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok(SrcConn::Tcp(s))
                }
            }
        });
        match c {
            Ok(c) => conns.push(c),
            Err(e) => {
                let _ = ready.send(Err(format!("source {n}: {e}")));
                return;
            }
        }
    }
    let mut tpl = FrameTemplate::new(framing, width, height);
    let _ = ready.send(Ok(()));
    if go.recv().is_err() {
        return;
    }
    let start = Instant::now();
    let t0 = now_secs();
    *sh.start_s.lock().unwrap() = t0;
    let end = start + Duration::from_secs_f64(duration);
    let period = if fps > 0.0 {
        Some(Duration::from_secs_f64(1.0 / fps))
    } else {
        None
    };
    let mut k: u64 = 0;
    'outer: loop {
        if let Some(p) = period {
            let deadline = start + p.mul_f64(k as f64);
            if deadline >= end {
                break;
            }
            let now = Instant::now();
            if deadline > now {
                std::thread::sleep(deadline - now);
            }
            let late = Instant::now().saturating_duration_since(deadline);
            let _ = sh
                .late
                .lock()
                .map(|mut h| h.saturating_record(late.as_micros() as u64));
        } else if Instant::now() >= end {
            break;
        }
        for c in conns.iter_mut() {
            let ts = now_ns();
            tpl.patch(k, ts, start.elapsed().as_millis() as u32);
            if let Err(e) = rt.block_on(c.send(&tpl.wire)) {
                *sh.error.lock().unwrap() = Some(format!("send of frame {k}: {e}"));
                break 'outer;
            }
        }
        k += 1;
        sh.sent.store(k, Relaxed);
    }
    *sh.end_s.lock().unwrap() = now_secs();
    sh.done.store(true, Relaxed);
    // Keep the connections open until the driver is done draining.
    let _ = go.recv();
    drop(conns);
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
    let framing = if cfg.url.starts_with("tcp://") {
        Framing::Tcp
    } else {
        Framing::Ws
    };
    let (host, _) = match parse_url(&cfg.url.replacen("tcp://", "ws://", 1)) {
        Ok(x) => x,
        Err(e) => {
            s.notes.push(e.to_string());
            return s;
        }
    };
    let base = cfg.url.trim_end_matches('/').to_owned();
    s.msg_bytes = FrameTemplate::new(framing, cfg.width, cfg.height).msg_len;
    static RUN: AtomicU64 = AtomicU64::new(0);
    let run_id = format!("lt{}x{}", std::process::id(), RUN.fetch_add(1, Relaxed));
    let names: Vec<String> = (0..cfg.channels).map(|c| format!("{run_id}-{c}")).collect();
    let pid = cfg.relay_pid;
    let idle_rss = pid.and_then(sys::rss_kib);
    s.relay_idle_rss_mb = mb(idle_rss);
    let mut rss_peak = idle_rss.unwrap_or(0);

    // Receivers, in batches.
    let sh = Arc::new(Shared {
        hist: Mutex::new(new_hist()),
        ihist: Mutex::new(new_hist()),
        ended: Mutex::new(BTreeMap::new()),
    });
    let mut stats: Vec<Arc<RecvStat>> = Vec::with_capacity(cfg.receivers);
    let mut tasks = Vec::with_capacity(cfg.receivers);
    let t_conn = Instant::now();
    let mut i = 0usize;
    let mut conn_cpu = pid.and_then(ProcSample::take);
    let overflows0 = sys::tcpext("ListenOverflows");
    while i < cfg.receivers {
        let n = cfg.connect_batch.max(1).min(cfg.receivers - i);
        let mut batch = Vec::with_capacity(n);
        for r in i..i + n {
            let ch = names[r % cfg.channels].clone();
            let host = host.clone();
            batch.push(tokio::spawn(async move {
                let path = format!("/stream/{ch}");
                tokio::time::timeout(
                    Duration::from_secs(20),
                    connect_receiver(&host, &path, &ch, framing),
                )
                .await
                .unwrap_or_else(|_| Err("connect timed out".into()))
            }));
        }
        for (j, b) in batch.into_iter().enumerate() {
            match b.await {
                Ok(Ok((stream, left))) => {
                    let st = Arc::new(RecvStat::default());
                    stats.push(st.clone());
                    tasks.push(tokio::spawn(receiver(
                        stream,
                        left,
                        framing,
                        cfg.check_every,
                        (i + j) as u64,
                        cfg.read_buf,
                        st,
                        sh.clone(),
                    )));
                }
                Ok(Err(e)) => {
                    s.connect_failures += 1;
                    s.connect_error.get_or_insert(e);
                }
                Err(e) => {
                    s.connect_failures += 1;
                    s.connect_error.get_or_insert(e.to_string());
                }
            }
        }
        i += n;
        if cfg.progress && cfg.receivers >= 2000 {
            let c = pid.and_then(ProcSample::take);
            let cpu = match (c, conn_cpu) {
                (Some(a), Some(b)) => format!("{:.0}%", a.cpu_pct_since(&b)),
                _ => "-".into(),
            };
            conn_cpu = c;
            eprintln!(
                "  connected {}/{} receivers ({} failed) in {:.1}s  relay cpu {cpu} rss {}",
                stats.len(),
                cfg.receivers,
                s.connect_failures,
                t_conn.elapsed().as_secs_f64(),
                pid.and_then(sys::rss_kib)
                    .map_or("-".into(), |r| format!("{:.0}MB", r as f64 / 1024.0)),
            );
        }
    }
    s.connect_secs = t_conn.elapsed().as_secs_f64();
    if let (Some(a), Some(b)) = (sys::tcpext("ListenOverflows"), overflows0) {
        s.listen_overflows = a.saturating_sub(b);
    }
    s.receivers_connected = stats.len();
    if let Some(e) = &s.connect_error {
        eprintln!(
            "  {} receivers failed to connect; first error: {e}",
            s.connect_failures
        );
    }

    // Source.
    let src = Arc::new(SrcShared {
        sent: AtomicU64::new(0),
        done: AtomicBool::new(false),
        start_s: Mutex::new(0.0),
        end_s: Mutex::new(0.0),
        late: Mutex::new(new_hist()),
        error: Mutex::new(None),
    });
    let (ready_tx, ready_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel();
    let th = {
        let (base, names, src) = (base.clone(), names.clone(), src.clone());
        let (w, h, fps, d) = (cfg.width, cfg.height, cfg.fps, cfg.duration);
        std::thread::Builder::new()
            .name("source".into())
            .spawn(move || source_thread(base, framing, names, w, h, fps, d, src, ready_tx, go_rx))
            .expect("spawn source thread")
    };
    let ready = tokio::task::spawn_blocking(move || ready_rx.recv())
        .await
        .ok()
        .and_then(|r| r.ok())
        .unwrap_or_else(|| Err("source thread ended".into()));
    if let Err(e) = ready {
        s.source_error = Some(e.clone());
        eprintln!("  source failed: {e}");
        for t in &tasks {
            t.abort();
        }
        drop(go_tx);
        let _ = th.join();
        return s;
    }
    // Let the relay register every receiver before the first frame.
    tokio::time::sleep(Duration::from_millis(300 + cfg.receivers as u64 / 20)).await;
    let conn_rss = pid.and_then(sys::rss_kib);
    s.relay_connected_rss_mb = mb(conn_rss);
    if let Some(r) = conn_rss {
        rss_peak = rss_peak.max(r);
    }
    let cpu0 = pid.and_then(ProcSample::take);
    let me0 = ProcSample::take(std::process::id());
    let _ = go_tx.send(());

    // Progress, once a second, until the source stops.
    let mut last = (now_secs(), 0u64, 0u64, cpu0);
    let t_start = Instant::now();
    while !src.done.load(Relaxed) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = now_secs();
        if now - last.0 < 1.0 && !src.done.load(Relaxed) {
            continue;
        }
        let sent = src.sent.load(Relaxed);
        let bytes: u64 = stats.iter().map(|x| x.bytes_ok.load(Relaxed)).sum();
        let frames: u64 = stats.iter().map(|x| x.frames_ok.load(Relaxed)).sum();
        let missing: u64 = stats.iter().map(|x| x.missing.load(Relaxed)).sum();
        let corrupt: u64 = stats.iter().map(|x| x.corrupt.load(Relaxed)).sum();
        let ooo: u64 = stats.iter().map(|x| x.ooo.load(Relaxed)).sum();
        let alive = stats.iter().filter(|x| !x.done.load(Relaxed)).count();
        let dt = now - last.0;
        let p99 = {
            let mut h = sh.ihist.lock().unwrap();
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
                "  [{:>4.1}s] sent {:>6} ({:>6.1} fps)  delivered {:>8.1} MB/s  frac {:>7.3}%  p99 {:>7.2} ms  gaps {} ooo {} bad {}  rx {}/{}  relay cpu {} rss {}",
                t_start.elapsed().as_secs_f64(),
                sent,
                (sent - last.1) as f64 / dt,
                (bytes - last.2) as f64 / dt / 1e6,
                if expect > 0 { frames as f64 / expect as f64 * 100.0 } else { 0.0 },
                p99,
                missing,
                ooo,
                corrupt,
                alive,
                stats.len(),
                cpu,
                rss.map_or("-".into(), |r| format!("{:.0}MB", r as f64 / 1024.0)),
            );
        }
        last = (now, sent, bytes, cpu_now);
    }
    // Window for rates and CPU: from go to the source's last send.
    let cpu1 = pid.and_then(ProcSample::take);
    let me1 = ProcSample::take(std::process::id());
    let bytes_in_window: u64 = stats.iter().map(|x| x.bytes_ok.load(Relaxed)).sum();
    let per_rx_bytes: Vec<u64> = stats.iter().map(|x| x.bytes_ok.load(Relaxed)).collect();
    let (st0, st1) = (*src.start_s.lock().unwrap(), *src.end_s.lock().unwrap());
    let window = (st1 - st0).max(1e-6);
    let sent = src.sent.load(Relaxed);

    // Drain: until every live receiver has the last frame, or the timeout.
    let drain_until = Instant::now() + Duration::from_secs_f64(cfg.drain_secs);
    while Instant::now() < drain_until {
        let behind = stats
            .iter()
            .filter(|x| !x.done.load(Relaxed) && x.next.load(Relaxed) < sent)
            .count();
        if behind == 0 {
            break;
        }
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
    let _ = go_tx.send(());
    let _ = tokio::task::spawn_blocking(move || th.join()).await;
    for t in tasks {
        let _ = t.await;
    }

    // Summary.
    s.source_error = src.error.lock().unwrap().clone();
    s.frames_sent = sent;
    s.window_s = window;
    s.fps_achieved = sent as f64 / window;
    let n = stats.len() as u64;
    s.offered_mbps_per_rx = (sent * s.msg_bytes as u64 * cfg.channels as u64) as f64
        / window
        / 1e6
        / cfg.channels as f64;
    s.offered_mbps_agg = (sent * s.msg_bytes as u64) as f64 * n as f64 / window / 1e6;
    s.expected_frames = sent * n;
    let sum =
        |f: fn(&RecvStat) -> &AtomicU64| -> u64 { stats.iter().map(|x| f(x).load(Relaxed)).sum() };
    s.delivered_frames = sum(|x| &x.frames_ok);
    s.missing = sum(|x| &x.missing);
    s.out_of_order = sum(|x| &x.ooo);
    s.corrupted = sum(|x| &x.corrupt);
    s.foreign = sum(|x| &x.foreign);
    s.checked = sum(|x| &x.checked);
    // Frames still missing at the end are gaps too (tail losses).
    let tail: u64 = stats
        .iter()
        .map(|x| sent.saturating_sub(x.next.load(Relaxed)))
        .sum();
    s.missing += tail;
    s.delivered_fraction = if s.expected_frames > 0 {
        s.delivered_frames as f64 / s.expected_frames as f64
    } else {
        0.0
    };
    s.receivers_all_frames = stats
        .iter()
        .filter(|x| x.frames_ok.load(Relaxed) == sent && sent > 0)
        .count();
    s.delivered_mbps_agg = bytes_in_window as f64 / window / 1e6;
    let mut v: Vec<f64> = per_rx_bytes
        .iter()
        .map(|&b| b as f64 / window / 1e6)
        .collect();
    v.sort_by(f64::total_cmp);
    s.per_rx_mbps = [pct(&v, 0.0), pct(&v, 0.5), pct(&v, 1.0)];
    let mut f: Vec<f64> = stats
        .iter()
        .map(|x| {
            if sent == 0 {
                0.0
            } else {
                x.frames_ok.load(Relaxed) as f64 / sent as f64
            }
        })
        .collect();
    f.sort_by(f64::total_cmp);
    s.per_rx_fraction = [pct(&f, 0.0), pct(&f, 0.5), pct(&f, 1.0)];
    {
        let h = sh.hist.lock().unwrap();
        let q = |x: f64| h.value_at_quantile(x) as f64 / 1000.0;
        s.lat_ms = [q(0.5), q(0.9), q(0.99), q(0.999), h.max() as f64 / 1000.0];
        s.lat_mean_ms = h.mean() / 1000.0;
        s.lat_count = h.len();
    }
    {
        let h = src.late.lock().unwrap();
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
    s.receivers_ended = sh.ended.lock().unwrap().clone();
    s.receivers_ended.retain(|k, _| !k.is_empty());
    if cfg.check_every > 1 {
        s.notes.push(format!(
            "payload checksum sampled: each receiver sums every {}-th frame (all receivers together check every frame {}x over); headers, lengths, indices and order of every frame are checked",
            cfg.check_every,
            (n as f64 / cfg.check_every as f64).max(0.0)
        ));
    }
    s
}
