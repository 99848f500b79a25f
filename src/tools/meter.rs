//! What `bitstream-relay watch` counts: pictures and bytes per second,
//! latency from the header timestamp, sequence gaps, catch-ups, errors.
//! Pure bookkeeping over what a receiver saw; the caller supplies the
//! clock, so every rule is a unit test away.

use std::fmt;

use bitstream_relay::protocol::{FrameType, Header, HEADER_LEN};

/// One received message, as the meter needs it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Seen {
    /// Its header.
    pub(crate) header: Header,
    /// Whether it was applied (a picture or signal the receiver could use).
    pub(crate) applied: bool,
    /// Now, in milliseconds since the Unix epoch.
    pub(crate) now_unix_ms: u64,
    /// Now, in milliseconds of a monotonic clock.
    pub(crate) now_mono_ms: u64,
    /// The source's clock origin (header timestamp 0) in Unix
    /// milliseconds, if the signal state told it.
    pub(crate) clock_origin: Option<u64>,
}

/// Counters of the current one-second window and of the whole run.
#[derive(Debug, Default)]
pub(crate) struct Meter {
    pictures: u64,
    bytes: u64,
    latencies: Vec<i64>,
    /// Latency is absolute (the source's clock origin was known) for every
    /// sample of the window.
    absolute: bool,
    /// The smallest `now - timestamp` seen (for relative latency).
    min_offset: Option<i64>,
    last_seq: Option<u16>,
    /// Until this monotonic time (ms), or the catch-up's `SignalSync`, the
    /// frames are a catch-up: the relay's cached picture, whose seqs skip
    /// the signal messages folded into that sync, so a jump is no gap.
    catch_up_until: Option<u64>,
    /// Sequence gaps since the start.
    pub(crate) gaps: u64,
    /// Catch-ups (the relay resending current state) since the start.
    pub(crate) catchups: u64,
    /// Protocol errors since the start.
    pub(crate) errors: u64,
    /// The first protocol error, described.
    pub(crate) first_error: Option<String>,
    /// Reconnections since the start.
    pub(crate) reconnects: u64,
}

/// One printed line: a window's rates and the run's totals.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Line {
    /// Pictures per second.
    pub(crate) fps: f64,
    /// Megabytes (10^6) per second, headers included.
    pub(crate) mb_per_s: f64,
    /// Median and largest latency of the window in ms, and whether they
    /// are absolute (else relative to the fastest frame seen).
    pub(crate) latency: Option<(i64, i64, bool)>,
    /// Totals since the start.
    pub(crate) gaps: u64,
    /// Catch-ups since the start.
    pub(crate) catchups: u64,
    /// Errors since the start.
    pub(crate) errors: u64,
    /// Reconnections since the start.
    pub(crate) reconnects: u64,
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "fps {:.1}  MB/s {:.2}  ", self.fps, self.mb_per_s)?;
        match self.latency {
            Some((p50, max, true)) => write!(f, "latency {p50} ms (max {max})  ")?,
            Some((p50, max, false)) => {
                write!(f, "latency +{p50} ms (max +{max}) over the fastest frame  ")?
            }
            None => write!(f, "latency -  ")?,
        }
        write!(
            f,
            "gaps {}  catch-ups {}  errors {}  reconnects {}",
            self.gaps, self.catchups, self.errors, self.reconnects
        )
    }
}

/// Whether a frame type is a picture (what fps counts).
fn is_picture(t: FrameType) -> bool {
    matches!(
        t,
        FrameType::Pixels
            | FrameType::DeltaPixels
            | FrameType::Keyframe
            | FrameType::CompressedPixels
    )
}

impl Meter {
    /// Counts a received message.
    pub(crate) fn message(&mut self, m: &Seen) {
        let h = &m.header;
        self.bytes += (HEADER_LEN + h.length as usize) as u64;
        let t = h.frame_type();
        if !m.applied
            && matches!(
                t,
                FrameType::Pixels
                    | FrameType::Keyframe
                    | FrameType::DeltaPixels
                    | FrameType::SignalSync
                    | FrameType::SignalDiff
            )
        {
            self.error(format!("{t:?} seq {} could not be applied", h.seq));
        }
        // A catch-up's synthesized SignalSync carries an older seq, and
        // ends the catch-up.
        if t == FrameType::SignalSync {
            self.catch_up_until = None;
        } else {
            let catching_up = self.catch_up_until.is_some_and(|end| m.now_mono_ms < end);
            if let (Some(prev), false) = (self.last_seq, catching_up) {
                if h.seq != prev.wrapping_add(1) {
                    self.gaps += 1;
                }
            }
            self.last_seq = Some(h.seq);
        }
        if !is_picture(t) {
            return;
        }
        self.pictures += 1;
        let sample = match m.clock_origin {
            Some(origin) => {
                let sent = origin + u64::from(h.timestamp);
                (m.now_unix_ms as i64).saturating_sub(sent as i64)
            }
            None => {
                let offset = (m.now_mono_ms as i64).saturating_sub(i64::from(h.timestamp));
                let min = self.min_offset.map_or(offset, |o| o.min(offset));
                self.min_offset = Some(min);
                offset - min
            }
        };
        if self.latencies.is_empty() {
            self.absolute = m.clock_origin.is_some();
        }
        self.absolute &= m.clock_origin.is_some();
        self.latencies.push(sample);
    }

    /// Counts a message that is not protocol at all (no header).
    pub(crate) fn error(&mut self, what: String) {
        self.errors += 1;
        self.first_error.get_or_insert(what);
    }

    /// How long after a (re)connection or a catch-up seq jumps are taken
    /// for the catch-up's own, if no `SignalSync` ends it first.
    const CATCH_UP_MS: u64 = 1000;

    /// The stream restarts its sequence at monotonic time `now_mono_ms`
    /// (a connection, a reconnection or a catch-up): a catch-up follows,
    /// whose seq jumps are not gaps.
    pub(crate) fn restart_seq(&mut self, now_mono_ms: u64) {
        self.last_seq = None;
        self.catch_up_until = Some(now_mono_ms + Self::CATCH_UP_MS);
    }

    /// The line for a window of `secs` seconds; starts the next window.
    pub(crate) fn take(&mut self, secs: f64) -> Line {
        let secs = secs.max(1e-3);
        let latency = (!self.latencies.is_empty()).then(|| {
            self.latencies.sort_unstable();
            let p50 = self.latencies[self.latencies.len() / 2];
            let max = self.latencies[self.latencies.len() - 1];
            (p50, max, self.absolute)
        });
        let line = Line {
            fps: self.pictures as f64 / secs,
            mb_per_s: self.bytes as f64 / secs / 1e6,
            latency,
            gaps: self.gaps,
            catchups: self.catchups,
            errors: self.errors,
            reconnects: self.reconnects,
        };
        self.pictures = 0;
        self.bytes = 0;
        self.latencies.clear();
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(kind: FrameType, seq: u16, ts: u32, now: u64, origin: Option<u64>) -> Seen {
        Seen {
            header: Header {
                kind: kind.to_u8(),
                seq,
                timestamp: ts,
                length: 84,
                ..Header::default()
            },
            applied: true,
            now_unix_ms: now,
            now_mono_ms: now,
            clock_origin: origin,
        }
    }

    #[test]
    fn rates_count_pictures_and_all_bytes() {
        let mut m = Meter::default();
        for i in 0..10 {
            m.message(&seen(FrameType::DeltaPixels, i, 0, 0, None));
        }
        m.message(&seen(FrameType::SignalDiff, 10, 0, 0, None));
        let line = m.take(2.0);
        assert_eq!(line.fps, 5.0, "signal messages are not pictures");
        assert!((line.mb_per_s - 11.0 * 100.0 / 2.0 / 1e6).abs() < 1e-12);
        assert_eq!(m.take(1.0).fps, 0.0, "a new window");
    }

    #[test]
    fn latency_is_absolute_with_the_origin_and_relative_without() {
        let mut m = Meter::default();
        let origin = 1_000_000;
        m.message(&seen(FrameType::Pixels, 1, 100, origin + 104, Some(origin)));
        m.message(&seen(FrameType::Pixels, 2, 200, origin + 209, Some(origin)));
        m.message(&seen(FrameType::Pixels, 3, 300, origin + 305, Some(origin)));
        assert_eq!(m.take(1.0).latency, Some((5, 9, true)));
        let mut m = Meter::default();
        m.message(&seen(FrameType::Pixels, 1, 100, 5_100, None));
        m.message(&seen(FrameType::Pixels, 2, 200, 5_207, None));
        assert_eq!(m.take(1.0).latency, Some((7, 7, false)));
        assert_eq!(m.take(1.0).latency, None);
    }

    #[test]
    fn gaps_errors_and_restarts() {
        let mut m = Meter::default();
        m.message(&seen(FrameType::Pixels, 1, 0, 0, None));
        m.message(&seen(FrameType::Pixels, 2, 0, 0, None));
        m.message(&seen(FrameType::Pixels, 5, 0, 0, None));
        assert_eq!(m.gaps, 1);
        // A catch-up's sync with an older seq is not a gap.
        m.message(&seen(FrameType::SignalSync, 1, 0, 0, None));
        m.message(&seen(FrameType::Pixels, 6, 0, 0, None));
        assert_eq!(m.gaps, 1);
        m.restart_seq(0);
        m.message(&seen(FrameType::Pixels, 40, 0, 0, None));
        // The catch-up's picture skips the seqs of folded signal messages.
        m.message(&seen(FrameType::DeltaPixels, 43, 0, 10, None));
        assert_eq!(m.gaps, 1);
        // Its sync ends it: from there on a jump is a gap.
        m.message(&seen(FrameType::SignalSync, 42, 0, 10, None));
        m.message(&seen(FrameType::Pixels, 45, 0, 20, None));
        assert_eq!(m.gaps, 2);
        m.restart_seq(100);
        m.message(&seen(FrameType::Pixels, 40, 0, 100, None));
        m.message(&seen(FrameType::Pixels, 42, 0, 200, None));
        assert_eq!(m.gaps, 2);
        // Without a sync, a second after the restart.
        m.message(&seen(FrameType::Pixels, 44, 0, 1100, None));
        assert_eq!(m.gaps, 3);
        m.message(&seen(FrameType::Pixels, 40, 0, 1200, None));
        assert_eq!(m.gaps, 4);
        // A jump to 65535 is a gap; from there to 0 the seq wraps.
        m.message(&seen(FrameType::Pixels, u16::MAX, 0, 1300, None));
        m.message(&seen(FrameType::Pixels, 0, 0, 1300, None));
        assert_eq!(m.gaps, 5);
        assert_eq!(m.errors, 0);
        let mut bad = seen(FrameType::DeltaPixels, 1, 0, 1300, None);
        bad.applied = false;
        m.message(&bad);
        m.error("no header".into());
        assert_eq!(m.errors, 2);
        assert!(m
            .first_error
            .as_deref()
            .unwrap()
            .contains("DeltaPixels seq 1"));
        let text = m.take(1.0).to_string();
        assert!(text.starts_with("fps "), "{text}");
        assert!(text.contains("gaps 5  catch-ups 0  errors 2"), "{text}");
    }
}
