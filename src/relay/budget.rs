//! The memory budget for cached catch-up state: every channel's keyframe,
//! delta chain and folded signal state is charged here (`--max-cache-memory`).
//! A channel whose cache would take the total past the limit stops caching
//! (its frames still go out live; its joiners wait for its next keyframe
//! and signal sync), so no mix of channels can make the relay hold more
//! cached state than the limit, and well-behaved channels keep theirs.

use std::sync::atomic::{AtomicUsize, Ordering};

use crossbeam_utils::CachePadded;

/// The budget. See the module docs.
#[derive(Debug)]
pub(crate) struct Budget {
    used: CachePadded<AtomicUsize>,
    limit: usize,
}

impl Budget {
    /// A budget of `limit` bytes, none used.
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            used: CachePadded::new(AtomicUsize::new(0)),
            limit,
        }
    }

    /// Moves a holder's charge from `old` to `new` bytes. Shrinking always
    /// succeeds; growing fails (and changes nothing) if it would pass the
    /// limit.
    pub(crate) fn resize(&self, old: usize, new: usize) -> bool {
        if new <= old {
            self.used.fetch_sub(old - new, Ordering::Relaxed);
            return true;
        }
        let grow = new - old;
        let mut cur = self.used.load(Ordering::Relaxed);
        loop {
            if cur.saturating_add(grow) > self.limit {
                return false;
            }
            match self.used.compare_exchange_weak(
                cur,
                cur + grow,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }

    /// Bytes charged now.
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// The limit.
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growing_past_the_limit_fails_and_changes_nothing() {
        let b = Budget::new(100);
        assert!(b.resize(0, 60));
        assert!(!b.resize(0, 41));
        assert_eq!(b.used(), 60);
        assert!(b.resize(60, 100));
        assert!(b.resize(100, 10), "shrinking always succeeds");
        assert_eq!(b.used(), 10);
        assert!(b.resize(0, 90));
        assert_eq!(b.used(), 100);
    }
}
