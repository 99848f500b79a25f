//! How much a receiver's socket may hold unsent in the kernel
//! (`TCP_NOTSENT_LOWAT`): little (`--tcp-notsent-lowat-start`) until the
//! socket has shown that it reads, by taking [`PROMOTE_BYTES`] within
//! [`WINDOW_MS`] (10 MB/s), then the full depth (`--tcp-notsent-lowat`),
//! which it keeps. A skip forward starts the count of a receiver still
//! earning over, but does not take an earned depth back: a receiver that
//! once read at 10 MB/s and is skipped now and then (one reading at half
//! a 33 MB stream's rate) would otherwise go back and forth, paying in
//! small writes each time.
//!
//! Why: every byte a socket takes is copied into kernel memory the whole
//! host shares, on the relay's time. A crowd of receivers that join at once,
//! or that read slowly, would each take a full depth: 300 slow readers at
//! 1 MiB held 348 MiB of kernel memory and their copies stalled a healthy
//! receiver of the same channel for ~0.5 s; at 128 KiB, 83 MiB and 5-14 ms.
//! A receiver of a 640×360 stream at 30 fps (28 MB/s) earns the full depth
//! within its first frames; a slow reader never does. Judging by rate, not
//! by a total, matters: a fast receiver that starts small and meets a
//! source already at full speed must earn its depth before its queue
//! overflows, and a slow reader must not earn it by lasting long enough.
//!
//! Pure bookkeeping, the time passed in: [`Depth`] says when to change the
//! option; the [`Egress`](super::Egress) sets it.

use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes a socket takes within [`WINDOW_MS`] to earn the full depth.
pub(crate) const PROMOTE_BYTES: u64 = 1 << 20;
/// The window the bytes are counted in, ms.
pub(crate) const WINDOW_MS: u64 = 100;

/// The count of a receiver at the full depth.
const AT_FULL: u64 = u64::MAX;

/// One receiver's kernel depth.
#[derive(Debug, Default)]
pub(crate) struct Depth {
    /// The depth it starts with and returns to when skipped (0: never changed).
    start: u32,
    /// The depth it earns.
    full: u32,
    /// When the current window began (relay ms).
    since: AtomicU64,
    /// Bytes taken in the current window, or [`AT_FULL`].
    taken: AtomicU64,
}

impl Depth {
    /// A receiver starting at `start` bytes that may earn `full` (nothing
    /// changes unless `start < full`).
    pub(crate) fn new(start: u32, full: u32) -> Self {
        Self {
            start,
            full,
            since: AtomicU64::new(0),
            taken: AtomicU64::new(0),
        }
    }

    fn on(&self) -> bool {
        self.start > 0 && self.start < self.full
    }

    /// True while the socket may still earn the full depth: only then is
    /// what it takes worth counting (and the clock worth reading).
    pub(crate) fn earning(&self) -> bool {
        self.on() && self.taken.load(Ordering::Relaxed) != AT_FULL
    }

    /// The socket took `n` bytes at `now` (relay ms). Returns the depth to
    /// set now, if any.
    pub(crate) fn took(&self, n: usize, now: u64) -> Option<u32> {
        if !self.on() || n == 0 {
            return None;
        }
        let before = self.taken.load(Ordering::Relaxed);
        if before == AT_FULL {
            return None;
        }
        let since = self.since.load(Ordering::Relaxed);
        let before = if now.saturating_sub(since) > WINDOW_MS {
            self.since.store(now, Ordering::Relaxed);
            0
        } else {
            before
        };
        let total = before.saturating_add(n as u64);
        if total >= PROMOTE_BYTES {
            self.taken.store(AT_FULL, Ordering::Relaxed);
            Some(self.full)
        } else {
            self.taken.store(total, Ordering::Relaxed);
            None
        }
    }

    /// The receiver was skipped forward: a count still running starts
    /// over; an earned depth stays.
    pub(crate) fn skipped(&self) {
        if self.earning() {
            self.taken.store(0, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    #[test]
    fn a_mib_within_a_window_earns_the_full_depth_once() {
        let d = Depth::new(128, 1024);
        assert_eq!(d.took(MIB / 2, 1_000), None);
        assert_eq!(d.took(MIB / 2 - 1, 1_050), None);
        assert_eq!(d.took(1, 1_100), Some(1024));
        assert_eq!(d.took(MIB, 1_150), None);
    }

    #[test]
    fn a_slow_reader_never_earns_it() {
        let d = Depth::new(128, 1024);
        // 64 KiB/s for ten minutes, in 4 KiB reads.
        for ms in (0..600_000u64).step_by(62) {
            assert_eq!(d.took(4096, ms), None);
        }
    }

    #[test]
    fn a_skip_starts_a_running_count_over_and_keeps_an_earned_depth() {
        let d = Depth::new(128, 1024);
        assert_eq!(d.took(MIB - 1, 0), None);
        d.skipped();
        assert_eq!(d.took(1, 10), None);
        assert_eq!(d.took(MIB, 20), Some(1024));
        d.skipped();
        assert!(!d.earning());
        assert_eq!(d.took(MIB, 5_000), None);
    }

    #[test]
    fn only_a_socket_still_earning_is_counted() {
        let d = Depth::new(128, 1024);
        assert!(d.earning());
        d.took(MIB, 0);
        assert!(!d.earning());
        d.skipped();
        assert!(!d.earning());
        assert!(!Depth::default().earning());
    }

    #[test]
    fn nothing_changes_without_a_smaller_start() {
        for d in [
            Depth::new(0, 1024),
            Depth::new(1024, 1024),
            Depth::default(),
        ] {
            assert_eq!(d.took(64 * MIB, 0), None);
            d.skipped();
            assert!(!d.earning());
        }
    }
}
