//! `bitstream-relay pattern`: publishes the test picture ([`super::picture`])
//! to a channel, with the signal state ticking once a second, and keeps
//! publishing across relay restarts (the client reconnects by itself and
//! resends its current picture and signal state first).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bitstream_relay::client::{ClientError, Source};
use bitstream_relay::protocol::{Header, HEADER_LEN};
use bitstream_relay::wire::signal;
use clap::ValueEnum;
use serde_json::json;
use thiserror::Error;

use super::picture::{self, Stamp};
use super::{SIGNAL_CLOCK_ORIGIN, SIGNAL_TICK};

/// Largest picture side the pattern draws (a 3840×2160 keyframe fits the
/// relay's default `--max-message`).
const MAX_SIDE: u16 = 3840;

/// How pictures are encoded on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Encoding {
    /// Every picture a full `Pixels` keyframe (large, but any frame can be
    /// lost without harm).
    Raw,
    /// Keyframes every `--keyframe-interval` pictures and `DeltaPixels`
    /// between them: ZRLE of the XOR with the previous picture, the
    /// protocol's one delta encoding (`xor` is accepted as another name).
    #[value(alias = "xor")]
    Zrle,
}

/// Signal state on or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Switch {
    /// On.
    On,
    /// Off.
    Off,
}

/// A picture size, `WIDTHxHEIGHT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Size {
    /// Width in pixels.
    pub(crate) width: u16,
    /// Height in pixels.
    pub(crate) height: u16,
}

/// Parses `WIDTHxHEIGHT` (each 1 to 3840).
pub(crate) fn parse_size(s: &str) -> Result<Size, String> {
    let bad = || format!("{s:?}: expected WIDTHxHEIGHT, each 1 to {MAX_SIDE} (e.g. 640x360)");
    let (w, h) = s.split_once(['x', 'X']).ok_or_else(bad)?;
    let side = |v: &str| {
        v.trim()
            .parse::<u16>()
            .ok()
            .filter(|n| (1..=MAX_SIDE).contains(n))
    };
    match (side(w), side(h)) {
        (Some(width), Some(height)) => Ok(Size { width, height }),
        _ => Err(bad()),
    }
}

/// What `bitstream-relay pattern` publishes, and where.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct PatternArgs {
    /// The channel's source URL.
    #[arg(
        long,
        env = "RELAY_PATTERN_URL",
        default_value = "ws://127.0.0.1:9100/source/demo"
    )]
    pub(crate) url: String,
    /// The picture and its pace.
    #[command(flatten)]
    pub(crate) options: PatternOptions,
}

/// The test picture and its pace (`pattern` and `demo`).
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct PatternOptions {
    /// Picture size, WIDTHxHEIGHT.
    #[arg(long, env = "RELAY_PATTERN_SIZE", default_value = "640x360", value_parser = parse_size)]
    pub(crate) size: Size,
    /// Pictures per second (1 to 240).
    #[arg(long, env = "RELAY_PATTERN_FPS", default_value_t = 30,
          value_parser = clap::value_parser!(u32).range(1..=240))]
    pub(crate) fps: u32,
    /// With `--encoding zrle`: a keyframe at least every this many pictures.
    #[arg(long, env = "RELAY_PATTERN_KEYFRAME_INTERVAL", default_value_t = 120,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) keyframe_interval: u32,
    /// `raw`: every picture a full keyframe; `zrle` (or `xor`): keyframes
    /// and ZRLE deltas between them.
    #[arg(long, env = "RELAY_PATTERN_ENCODING", value_enum, default_value_t = Encoding::Zrle)]
    pub(crate) encoding: Encoding,
    /// `on`: the signal state carries a tick once a second and the clock's
    /// origin (so `watch` measures latency); `off`: no signal messages.
    #[arg(long, env = "RELAY_PATTERN_SIGNAL", value_enum, default_value_t = Switch::On)]
    pub(crate) signal: Switch,
    /// Stop after this many pictures (0: run until interrupted).
    #[arg(long, env = "RELAY_PATTERN_FRAMES", default_value_t = 0)]
    pub(crate) frames: u64,
}

/// Why the pattern stopped.
#[derive(Debug, Error)]
pub(crate) enum PatternError {
    /// The relay refused the source, or the URL is wrong.
    #[error("cannot publish to {url}: {source}")]
    Connect {
        /// The source URL.
        url: String,
        /// Why.
        source: ClientError,
    },
    /// Sending failed for good (e.g. a picture the codec cannot encode).
    #[error("publishing to {url} failed: {source}")]
    Send {
        /// The source URL.
        url: String,
        /// Why.
        source: ClientError,
    },
}

/// Milliseconds since the Unix epoch of `t`.
fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `url` without its query, which may hold a token (never logged).
fn without_query(url: &str) -> &str {
    url.split_once('?').map_or(url, |(base, _)| base)
}

/// Connects, waiting for a relay that is not up yet (connection refused,
/// reset) but giving up on an answer that will not change by waiting
/// (a bad URL, or an HTTP refusal such as 401 or 409).
async fn connect(url: &str) -> Result<Source, PatternError> {
    let mut said = false;
    loop {
        match Source::connect(url).await {
            Ok(src) => return Ok(src),
            Err(e @ (ClientError::Io(_) | ClientError::Eof)) => {
                if !said {
                    tracing::info!(url = without_query(url), error = %e, "waiting for the relay");
                    said = true;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(source) => {
                return Err(PatternError::Connect {
                    url: without_query(url).to_owned(),
                    source,
                })
            }
        }
    }
}

/// Publishes the pattern to the source URL `url` until interrupted (or
/// `--frames` pictures).
pub(crate) async fn run(url: &str, args: &PatternOptions) -> Result<(), PatternError> {
    let mut src = connect(url).await?;
    src.keyframe_interval = match args.encoding {
        Encoding::Raw => 0,
        Encoding::Zrle => args.keyframe_interval,
    };
    let Size { width, height } = args.size;
    tracing::info!(
        url = without_query(url), width, height, fps = args.fps, encoding = ?args.encoding, signal = ?args.signal,
        "publishing the test pattern"
    );
    let origin = src.clock_origin();
    let period = Duration::from_secs(1) / args.fps;
    let mut next = tokio::time::Instant::now();
    let mut picture = Vec::new();
    let mut tick = None;
    let mut reconnects = 0;
    let send_err = |source| PatternError::Send {
        url: without_query(url).to_owned(),
        source,
    };
    for frame in 0u64.. {
        if args.frames > 0 && frame >= args.frames {
            break;
        }
        if args.signal == Switch::On && frame % u64::from(args.fps) == 0 {
            let n = tick.map_or(0, |t| t + 1);
            let mut diff = signal::State::new();
            diff.insert(SIGNAL_TICK.into(), json!(n));
            if n == 0 {
                diff.insert(SIGNAL_CLOCK_ORIGIN.into(), json!(unix_ms(origin)));
                let what = format!("{width}x{height} {} fps {:?}", args.fps, args.encoding);
                diff.insert("pattern".into(), json!(what.to_lowercase()));
            }
            src.send_signal_diff(&diff).await.map_err(send_err)?;
            tick = Some(n);
        }
        let now = SystemTime::now();
        let stamp = Stamp {
            frame,
            sent_unix_ms: unix_ms(now),
            timestamp: now
                .duration_since(origin)
                .map_or(0, |d| d.as_millis() as u32),
            signal_tick: tick,
        };
        picture::draw(width, height, &stamp, &mut picture);
        src.send_picture(width, height, &picture)
            .await
            .map_err(send_err)?;
        if src.reconnects() != reconnects {
            reconnects = src.reconnects();
            tracing::info!(
                url = without_query(src.current_url()),
                reconnects,
                "reconnected"
            );
        }
        // Between pictures, show what receivers send back. After a wait
        // for the relay the schedule starts afresh rather than catching up.
        next = (next + period).max(tokio::time::Instant::now());
        while let Ok(input) = tokio::time::timeout_at(next, src.recv_input()).await {
            if let Ok(h) = Header::parse(&input) {
                tracing::info!(kind = ?h.input_type(), payload = ?&input[HEADER_LEN..], "input");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_bad_ones_say_why() {
        assert_eq!(
            parse_size("640x360"),
            Ok(Size {
                width: 640,
                height: 360
            })
        );
        assert_eq!(parse_size("8X2").map(|s| s.width), Ok(8));
        for bad in ["640", "0x10", "10x0", "4000x10", "ax1", ""] {
            let e = parse_size(bad).unwrap_err();
            assert!(e.contains("WIDTHxHEIGHT"), "{bad}: {e}");
        }
    }
}
