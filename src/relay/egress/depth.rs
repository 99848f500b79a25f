//! How much a receiver's socket may hold unsent in the kernel
//! (`TCP_NOTSENT_LOWAT`): little (`--tcp-notsent-lowat-start`) until the
//! socket has taken [`PROMOTE_AFTER`] live frames (or deferred bursts)
//! whole, then the full depth (`--tcp-notsent-lowat`), and little again
//! from the moment the receiver is skipped forward. A slow reader never
//! takes a large frame whole (its window is closed), so it never earns the
//! full depth; a partial write does not undo the count, so a fast receiver
//! that sometimes meets a full socket (a burst, a busy host) still earns it.
//!
//! Why: every byte a socket takes is copied into kernel memory the whole
//! host shares, on the relay's time. A crowd of receivers that join at once,
//! or that read slowly, would each take a full depth: 300 slow readers at
//! 1 MiB held 348 MiB of kernel memory and their copies stalled a healthy
//! receiver of the same channel for ~0.5 s; at 128 KiB, 82 MiB and 7 ms.
//! A receiver that keeps up drains its socket at once and gets the full
//! depth after a quarter of a second at 30 fps.
//!
//! Pure bookkeeping: [`Depth`] says when to change the option; the
//! [`Egress`](super::Egress) sets it.

use std::sync::atomic::{AtomicU32, Ordering};

/// Live frames taken whole (since the start or the last skip) that earn
/// the full depth.
pub(crate) const PROMOTE_AFTER: u32 = 8;

/// The streak value of a receiver at the full depth.
const AT_FULL: u32 = u32::MAX;

/// One receiver's kernel depth.
#[derive(Debug, Default)]
pub(crate) struct Depth {
    /// The depth it starts with and returns to when skipped (0: never changed).
    start: u32,
    /// The depth it earns.
    full: u32,
    /// Live frames taken whole since the start or the last skip, or
    /// [`AT_FULL`].
    streak: AtomicU32,
}

impl Depth {
    /// A receiver starting at `start` bytes that may earn `full` (nothing
    /// changes unless `start < full`).
    pub(crate) fn new(start: u32, full: u32) -> Self {
        Self {
            start,
            full,
            streak: AtomicU32::new(0),
        }
    }

    fn on(&self) -> bool {
        self.start > 0 && self.start < self.full
    }

    /// A live frame went out: `whole` if the socket took all of it at once.
    /// Returns the depth to set now, if any.
    pub(crate) fn frame(&self, whole: bool) -> Option<u32> {
        if !self.on() {
            return None;
        }
        let s = self.streak.load(Ordering::Relaxed);
        match (s, whole) {
            (AT_FULL, _) | (_, false) => None,
            (s, true) if s + 1 >= PROMOTE_AFTER => {
                self.streak.store(AT_FULL, Ordering::Relaxed);
                Some(self.full)
            }
            (s, true) => {
                self.streak.store(s + 1, Ordering::Relaxed);
                None
            }
        }
    }

    /// The receiver was skipped forward: back to the starting depth.
    pub(crate) fn skipped(&self) -> Option<u32> {
        if !self.on() {
            return None;
        }
        match self.streak.swap(0, Ordering::Relaxed) {
            AT_FULL => Some(self.start),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eight_whole_frames_earn_the_full_depth() {
        let d = Depth::new(128, 1024);
        for _ in 0..PROMOTE_AFTER - 1 {
            assert_eq!(d.frame(true), None);
            // Partial writes neither count nor undo the count.
            assert_eq!(d.frame(false), None);
        }
        assert_eq!(d.frame(true), Some(1024));
        // Once earned, nothing more to set.
        assert_eq!(d.frame(false), None);
        assert_eq!(d.frame(true), None);
    }

    #[test]
    fn a_skip_returns_to_the_starting_depth_once() {
        let d = Depth::new(128, 1024);
        assert_eq!(d.skipped(), None);
        for _ in 0..PROMOTE_AFTER {
            d.frame(true);
        }
        assert_eq!(d.skipped(), Some(128));
        assert_eq!(d.skipped(), None);
        for _ in 0..PROMOTE_AFTER - 1 {
            assert_eq!(d.frame(true), None);
        }
        assert_eq!(d.frame(true), Some(1024));
    }

    #[test]
    fn nothing_changes_without_a_smaller_start() {
        for d in [
            Depth::new(0, 1024),
            Depth::new(1024, 1024),
            Depth::default(),
        ] {
            for _ in 0..2 * PROMOTE_AFTER {
                assert_eq!(d.frame(true), None);
            }
            assert_eq!(d.skipped(), None);
        }
    }
}
