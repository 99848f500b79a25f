//! `bitstream-relay watch`: joins a channel as a receiver and prints, once
//! a second, pictures per second, MB/s, latency from the header timestamp
//! (absolute when the source publishes its clock origin in the signal
//! state, as `pattern` does) and the totals of sequence gaps, catch-ups,
//! protocol errors and reconnections ([`super::meter`]).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bitstream_relay::client::{ClientError, Event, Receiver};
use bitstream_relay::protocol::Header;
use thiserror::Error;

use super::meter::{Meter, Seen};
use super::SIGNAL_CLOCK_ORIGIN;

/// What `bitstream-relay watch` watches, and when it stops.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct WatchArgs {
    /// The channel's receiver URL.
    #[arg(
        env = "RELAY_WATCH_URL",
        default_value = "ws://127.0.0.1:9100/stream/demo"
    )]
    pub(crate) url: String,
    /// Exit with status 2 at the first protocol error (a message without a
    /// valid header, a delta or signal that cannot be applied), after
    /// printing it; without it errors are only counted.
    #[arg(long, env = "RELAY_WATCH_FAIL_ON_ERROR")]
    pub(crate) fail_on_error: bool,
    /// Exit (status 0) after printing this many lines; 0: run until
    /// interrupted.
    #[arg(long, env = "RELAY_WATCH_COUNT", default_value_t = 0)]
    pub(crate) count: u64,
}

/// Why `watch` stopped early.
#[derive(Debug, Error)]
pub(crate) enum WatchError {
    /// The first connection failed (refused, or nothing listening).
    #[error("cannot watch {url}: {source}")]
    Connect {
        /// The receiver URL.
        url: String,
        /// Why.
        source: ClientError,
    },
    /// A protocol error with `--fail-on-error`.
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl WatchError {
    /// The exit status for this error: 1 for a connection, 2 for the protocol.
    pub(crate) fn exit_code(&self) -> i32 {
        match self {
            WatchError::Connect { .. } => 1,
            WatchError::Protocol(_) => 2,
        }
    }
}

fn lock(m: &Mutex<Meter>) -> MutexGuard<'_, Meter> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Receives forever, counting into `meter`.
async fn receive(mut rx: Receiver, meter: Arc<Mutex<Meter>>) {
    let start = Instant::now();
    let mut restarts = 0;
    // The first connection's catch-up.
    lock(&meter).restart_seq(0);
    loop {
        let event = rx.next().await;
        let now_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let clock_origin = rx
            .signal()
            .get(SIGNAL_CLOCK_ORIGIN)
            .and_then(serde_json::Value::as_u64);
        let now_mono_ms = start.elapsed().as_millis() as u64;
        let mut m = lock(&meter);
        m.reconnects = rx.reconnects();
        m.catchups = rx.full_catchups;
        // The frames after a catch-up or a resume start a new sequence.
        if rx.full_catchups + rx.resumes != restarts {
            restarts = rx.full_catchups + rx.resumes;
            m.restart_seq(now_mono_ms);
        }
        let (header, applied) = match event {
            Event::Picture(h) | Event::Signal(h) => (h, true),
            Event::Frame(_, msg) => match Header::parse(&msg) {
                Ok(h) => (h, false),
                Err(e) => {
                    m.error(format!("a message of {} bytes: {e}", msg.len()));
                    continue;
                }
            },
            Event::Reconnected => {
                m.restart_seq(now_mono_ms);
                continue;
            }
        };
        m.message(&Seen {
            header,
            applied,
            now_unix_ms,
            now_mono_ms,
            clock_origin,
        });
    }
}

/// Watches until interrupted, `--count` lines, or (with
/// `--fail-on-error`) a protocol error.
pub(crate) async fn run(args: WatchArgs) -> Result<(), WatchError> {
    let rx = Receiver::connect(&args.url)
        .await
        .map_err(|source| WatchError::Connect {
            url: args.url.clone(),
            source,
        })?;
    let meter = Arc::new(Mutex::new(Meter::default()));
    let task = tokio::spawn(receive(rx, meter.clone()));
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut last = Instant::now();
    let mut printed = 0;
    let result = loop {
        tick.tick().await;
        let (line, error) = {
            let mut m = lock(&meter);
            (m.take(last.elapsed().as_secs_f64()), m.first_error.clone())
        };
        last = Instant::now();
        println!("{line}");
        printed += 1;
        if let (true, Some(e)) = (args.fail_on_error, error) {
            break Err(WatchError::Protocol(e));
        }
        if args.count > 0 && printed >= args.count {
            break Ok(());
        }
    };
    task.abort();
    result
}
