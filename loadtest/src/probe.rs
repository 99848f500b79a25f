//! Raw-socket helpers for the clients that attack a relay (`chaos`,
//! `hostile`): a small random generator, thread niceness, abortive closes,
//! watching how the relay ends a connection, plain HTTP GETs and the
//! `/metrics` lines the reports keep.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use bitstream_wire::ws;
use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::time::Instant;

use crate::peer::{self, read_head, tcp_connect, write_all, Target};
use crate::wire::{Ev, Framing, Parser};

/// xorshift64*: masks, random bytes, jitter.
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }
    /// The next word.
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// A masking key.
    pub fn mask(&mut self) -> [u8; 4] {
        (self.next() as u32).to_ne_bytes()
    }
    /// `n` random bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(n);
        v
    }
    /// A number below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Sets the calling thread's nice value.
pub fn nice_self(n: i32) {
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, n);
    }
}

/// Abortive close: SO_LINGER {on, 0}, so dropping the socket sends RST.
pub fn set_rst_on_close(s: &TcpStream) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// How a watched connection ended.
#[derive(Debug)]
pub enum End {
    /// The relay's close frame, with its code.
    Close(u16),
    /// EOF before any close frame.
    Eof,
    /// ECONNRESET before any close frame.
    Reset,
    /// Nothing ended it within the limit.
    Timeout,
    /// Enough bytes read.
    Enough,
    /// Anything else.
    Err(String),
}

impl End {
    /// In a report's words.
    pub fn outcome(&self) -> String {
        match self {
            End::Close(c) => format!("close {c}"),
            End::Eof => "EOF, no close frame".into(),
            End::Reset => "reset by relay".into(),
            End::Timeout => "no close from relay (closed by us)".into(),
            End::Enough => "read 128 KiB, closed by us".into(),
            End::Err(e) => format!("error: {e}"),
        }
    }
}

/// How the attacking clients of one kind ended.
#[derive(Default, Clone, Debug)]
pub struct Kind {
    /// Clients started.
    pub attempted: u64,
    /// How many ended each way.
    pub outcomes: BTreeMap<String, u64>,
    /// Seconds each took to end.
    pub secs: Vec<f64>,
    /// One number of interest per client.
    pub extra: Vec<f64>,
}

impl Kind {
    /// The `x` quantile (0..=1) of `secs`, 0 if none.
    pub fn secs_at(&self, x: f64) -> f64 {
        let mut secs = self.secs.clone();
        secs.sort_by(f64::total_cmp);
        secs.get(((secs.len().max(1) - 1) as f64 * x).round() as usize)
            .copied()
            .unwrap_or(0.0)
    }

    /// `outcome (count); ...`
    pub fn outcomes_text(&self) -> String {
        let outs: Vec<String> = self
            .outcomes
            .iter()
            .map(|(o, c)| format!("{o} ({c})"))
            .collect();
        outs.join("; ")
    }
}

/// What [`watch_end`] saw.
pub struct Watched {
    /// How it ended.
    pub end: End,
    /// Bytes read.
    pub bytes: u64,
    /// Data messages read.
    pub msgs: u64,
    /// Pongs read.
    pub pongs: u64,
}

/// Reads (and discards) server frames until a close frame, EOF, reset,
/// `limit`, or `enough` bytes. Answers a close frame with a close frame.
pub async fn watch_end(
    s: &TcpStream,
    leftover: &[u8],
    limit: Duration,
    enough: Option<u64>,
) -> Watched {
    let deadline = Instant::now() + limit;
    let mut p = Parser::new(Framing::Ws, u64::MAX, 1);
    let mut w = Watched {
        end: End::Timeout,
        bytes: leftover.len() as u64,
        msgs: 0,
        pongs: 0,
    };
    let mut close = None;
    let (mut msgs, mut pongs) = (0u64, 0u64);
    let mut feed = |p: &mut Parser, d: &[u8], close: &mut Option<u16>| {
        p.feed(d, &mut |e| match e {
            Ev::Msg(_) => msgs += 1,
            Ev::Pong => pongs += 1,
            Ev::Close(c) => *close = Some(c),
            Ev::Ping(_) => {}
        })
    };
    if let Err(e) = feed(&mut p, leftover, &mut close) {
        w.end = End::Err(e);
        return w;
    }
    loop {
        if let Some(c) = close {
            let _ = s.try_write(&ws::client_frame(
                ws::OP_CLOSE,
                true,
                &ws::close_payload(c.clamp(1000, 4999), ""),
                [7, 7, 7, 7],
            ));
            w.end = End::Close(c);
            break;
        }
        if enough.is_some_and(|n| w.bytes >= n) {
            w.end = End::Enough;
            break;
        }
        match tokio::time::timeout_at(deadline, s.readable()).await {
            Err(_) => {
                w.end = End::Timeout;
                break;
            }
            Ok(Err(e)) => {
                w.end = End::Err(e.to_string());
                break;
            }
            Ok(Ok(())) => {}
        }
        let r = peer::with_scratch(64 * 1024, |buf| match s.try_read(buf) {
            Ok(0) => Err(End::Eof),
            Ok(n) => {
                w.bytes += n as u64;
                feed(&mut p, &buf[..n], &mut close).map_err(End::Err)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Err(End::Reset),
            Err(e) => Err(End::Err(e.to_string())),
        });
        if let Err(e) = r {
            w.end = e;
            break;
        }
    }
    (w.msgs, w.pongs) = (msgs, pongs);
    w
}

/// How a connection stands, seen without reading it: `Some("...")` when
/// the relay closed it (a FIN queued behind the unread bytes, or a reset),
/// `None` while open; and how many bytes wait unread in its socket.
pub fn peek_end(s: &TcpStream) -> (Option<&'static str>, usize) {
    let fd = s.as_raw_fd();
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN | libc::POLLRDHUP,
        revents: 0,
    };
    let mut queued: libc::c_int = 0;
    unsafe {
        libc::poll(&mut p, 1, 0);
        libc::ioctl(fd, libc::FIONREAD, &mut queued);
    }
    let end = if p.revents & libc::POLLERR != 0 {
        Some("reset by relay")
    } else if p.revents & (libc::POLLRDHUP | libc::POLLHUP) != 0 {
        Some("closed by relay (FIN behind the unread bytes; close code not read)")
    } else {
        None
    };
    (end, queued.max(0) as usize)
}

/// Plain HTTP GET with `Connection: close`; (status, body).
pub async fn http_get(t: &Target, path: &str) -> Result<(u16, String), String> {
    let s = tcp_connect(t.addr, None).await.map_err(|e| e.to_string())?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        t.host
    );
    write_all(&s, req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let (status, head, mut body) = read_head(&s, Duration::from_secs(5)).await?;
    let want: Option<usize> = String::from_utf8_lossy(&head).lines().find_map(|l| {
        l.split_once(':')
            .filter(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse().ok())
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while want.is_none_or(|n| body.len() < n) {
        match tokio::time::timeout_at(deadline, s.readable()).await {
            Err(_) | Ok(Err(_)) => break,
            Ok(Ok(())) => {}
        }
        let mut chunk = [0u8; 16384];
        match s.try_read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => break,
        }
    }
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// The metric lines the report keeps (name before any `{`).
pub const METRICS: [&str; 14] = [
    "relay_slow_skips_total",
    "relay_slow_closes_total",
    "relay_invalid_total",
    "relay_dropped_total",
    "relay_keepalive_drops_total",
    "relay_refused_total",
    "relay_too_big_total",
    "relay_inputs_total",
    "relay_catchups_total",
    "relay_connections_accepted_total",
    "relay_connections_open",
    "relay_connections",
    "relay_channels",
    "relay_egress_queue_bytes",
];

/// The lines of a `/metrics` body named in [`METRICS`].
pub fn metric_lines(body: &str) -> Vec<String> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            let name = l.split(['{', ' ']).next().unwrap_or("");
            METRICS.contains(&name)
        })
        .map(str::to_owned)
        .collect()
}

/// The value of the metric line named exactly `key` (labels included).
pub fn metric_value(lines: &[String], key: &str) -> Option<f64> {
    lines
        .iter()
        .find(|l| l.rsplit_once(' ').is_some_and(|(k, _)| k == key))
        .and_then(|l| l.rsplit_once(' ')?.1.parse().ok())
}

/// Open file descriptors of a process.
pub fn fd_count(pid: u32) -> Option<usize> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|d| d.count())
}

/// Runs a scenario's controller and healthy side (`run`) on a
/// current-thread runtime, handing it a [`hostile_runtime`] for the
/// attacking clients. None, said on stderr as a FAIL of `scenario` against
/// `label` at `url`, if it failed.
pub fn with_attackers<T, F: Future<Output = Result<T, String>>>(
    scenario: &str,
    label: &str,
    url: &str,
    run: impl FnOnce(Handle) -> F,
) -> Option<T> {
    let hostile_rt = hostile_runtime();
    let rt = peer::current_thread_rt().expect("runtime");
    let res = rt.block_on(run(hostile_rt.handle().clone()));
    hostile_rt.shutdown_timeout(Duration::from_secs(2));
    res.map_err(|e| eprintln!("loadtest: FAIL {scenario} against {label} ({url}): {e}"))
        .ok()
}

/// A runtime for attacking clients: one worker whose threads run at nice
/// 10, so the measured side of the driver gets its core first.
fn hostile_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("hostile")
        .on_thread_start(|| nice_self(10))
        .enable_all()
        .build()
        .expect("hostile runtime")
}
