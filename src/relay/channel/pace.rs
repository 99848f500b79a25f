//! A source no faster than most of its receivers.
//!
//! A live source paced by its own clock never notices this module. One that
//! sends faster than its receivers take frames (a burst, a replay, a
//! benchmark, or receivers slowed together by a busy host) would otherwise
//! be read as fast as the relay can copy, and every receiver would fall
//! behind together and be skipped forward over and over: frames read,
//! copied and then dropped for everyone. Instead, after each frame the
//! source's task looks at its channel's [`Backlog`](crate::relay::egress::Backlog):
//! while more than half of the receivers still hold queued frames, it waits
//! (up to `--pace-wait-ms`) before reading the next message, and TCP slows
//! the source down as a relay writing to one receiver would.
//!
//! Receivers that cannot keep up are not waited for: one skipped forward
//! leaves the count until its queue has emptied, so a minority of slow
//! receivers, or a majority of hopeless ones, never slows the stream for
//! the rest. Small frames on channels that flush in laps are paced by the
//! laps instead (see [`super::lap`]).
//!
//! Pacing never makes a live stream stale: a source that produces frames
//! on its own clock (a browser's `send` never blocks) would otherwise have
//! them wait longer and longer. Each frame's header `timestamp` (ms since
//! its stream started) is held against the relay's clock: the smallest
//! difference seen is the source's best, and a frame that arrives more than
//! `--pace-wait-ms` behind that best is *late*. While frames arrive late the
//! source is not paced (receivers behind are skipped forward, as with
//! pacing off), so pacing adds at most `--pace-wait-ms` to any frame.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Instant;

use super::Channel;
use crate::relay::egress::Backlog;
use crate::relay::resources::clock::now_ms;

/// A source's wait on a backlog, ended when dropped.
struct Waiting<'a>(&'a Backlog);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.wait_ends();
    }
}

/// How late the source's frames arrive, by their timestamps.
#[derive(Debug)]
pub(crate) struct Lateness {
    /// Smallest `relay ms - timestamp` of this stream (i64::MAX: none yet).
    best: AtomicI64,
    /// The last frame's lateness behind `best`, ms.
    last: AtomicU64,
}

impl Default for Lateness {
    fn default() -> Self {
        Self {
            best: AtomicI64::new(i64::MAX),
            last: AtomicU64::new(0),
        }
    }
}

impl Lateness {
    /// A new source: its clock is unrelated to the last one's.
    pub(super) fn restart(&self) {
        self.best.store(i64::MAX, Ordering::Relaxed);
        self.last.store(0, Ordering::Relaxed);
    }

    /// A frame stamped `timestamp` (ms since its stream started) arrived now.
    pub(super) fn note(&self, timestamp: u32) {
        self.note_at(now_ms() as i64, timestamp);
    }

    fn note_at(&self, now: i64, timestamp: u32) {
        let offset = now - i64::from(timestamp);
        let best = self.best.fetch_min(offset, Ordering::Relaxed).min(offset);
        self.last.store((offset - best) as u64, Ordering::Relaxed);
    }

    /// The last frame's lateness, ms.
    fn last_ms(&self) -> u64 {
        self.last.load(Ordering::Relaxed)
    }
}

impl Channel {
    /// True when the source's next message should wait (the caller knows
    /// the last frame went out frame by frame, not in laps): pacing is on,
    /// the source's frames are not late, and more than half of the
    /// receivers hold queued frames.
    pub(crate) fn congested(&self) -> bool {
        let wait = self.fanout.pace_wait;
        !wait.is_zero()
            && self.lateness.last_ms() <= wait.as_millis() as u64
            && self.most_congested()
    }

    fn most_congested(&self) -> bool {
        self.backlog.congested() * 2 > self.receiver_count()
    }

    /// Waits until at most half of the receivers hold queued frames, or
    /// `--pace-wait-ms` has passed.
    pub(crate) async fn pace(&self) {
        let start = Instant::now();
        let deadline = tokio::time::Instant::now() + self.fanout.pace_wait;
        self.backlog.wait_begins();
        // Ends the wait however this future ends (a session may drop it).
        let _waiting = Waiting(&self.backlog);
        loop {
            let eased = self.backlog.eased();
            tokio::pin!(eased);
            eased.as_mut().enable();
            if !self.most_congested() {
                break;
            }
            if tokio::time::timeout_at(deadline, eased).await.is_err() {
                break;
            }
        }
        self.traffic.source_waits.inc();
        self.traffic
            .source_wait_us
            .add(start.elapsed().as_micros() as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lateness_is_measured_against_the_sources_best() {
        let l = Lateness::default();
        l.note_at(10_000, 0);
        assert_eq!(l.last_ms(), 0);
        // Frames on time: 33 ms apart on both clocks.
        l.note_at(10_033, 33);
        assert_eq!(l.last_ms(), 0);
        // A frame that waited 120 ms somewhere before the relay read it.
        l.note_at(10_186, 66);
        assert_eq!(l.last_ms(), 120);
        // An earlier arrival than ever becomes the new best.
        l.note_at(10_090, 100);
        assert_eq!(l.last_ms(), 0);
        l.note_at(10_200, 100);
        assert_eq!(l.last_ms(), 110);
        // A new source starts a new clock.
        l.restart();
        l.note_at(50_000, 7);
        assert_eq!(l.last_ms(), 0);
    }

    #[test]
    fn a_source_that_stamps_nothing_is_late_soon() {
        let l = Lateness::default();
        l.note_at(1_000, 0);
        l.note_at(1_500, 0);
        assert_eq!(l.last_ms(), 500);
    }
}
