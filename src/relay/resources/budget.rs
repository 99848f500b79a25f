//! Memory budgets: counters of bytes held, with a limit.
//!
//! The relay has two. `--max-memory` is the relay's whole budget for what
//! clients make it hold: every received message large enough to matter
//! (charged from its first byte until its last reference is dropped, in a
//! cache, a queue or a catch-up, see [`charged`]), cached state, what
//! receivers' queues hold beyond those shared frames, and Server-Sent
//! Events (each event once, while anything holds it, and what SSE clients
//! hold beyond shared bytes: see the SSE hub, `relay::channel::sse_hub`). `--max-cache-memory`
//! is the part of it that cached catch-up state may take.
//!
//! At the limit the relay sheds in this order (see [`Budget::level`]):
//! caches stop growing first (from three quarters of the limit), then
//! queues of receivers that are behind stop growing (the receiver is skipped
//! forward, from seven eighths), and only at the limit are new large
//! messages refused (1013). Receivers that keep up hold nothing, so live
//! fan-out to well-behaved channels goes on throughout.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use crossbeam_utils::CachePadded;

/// How full a budget is, for the shedding order in the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Level {
    /// Under three quarters: everything may grow.
    Normal,
    /// From three quarters: caches stop growing.
    NoCaching,
    /// From seven eighths: queues of lagging receivers stop growing too.
    NoBacklog,
}

/// A budget. See the module docs.
#[derive(Debug)]
pub(crate) struct Budget {
    used: CachePadded<AtomicUsize>,
    limit: usize,
    /// Times something was refused or shed because of this budget.
    sheds: CachePadded<AtomicU64>,
}

impl Budget {
    /// A budget of `limit` bytes, none used.
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            used: CachePadded::new(AtomicUsize::new(0)),
            limit,
            sheds: CachePadded::new(AtomicU64::new(0)),
        }
    }

    /// Moves a holder's charge from `old` to `new` bytes. Shrinking always
    /// succeeds; growing fails (and changes nothing) if it would pass the
    /// limit.
    pub(crate) fn resize(&self, old: usize, new: usize) -> bool {
        if new <= old {
            self.release(old - new);
            return true;
        }
        self.charge(new - old)
    }

    /// Charges `n` more bytes if that stays within the limit.
    pub(crate) fn charge(&self, n: usize) -> bool {
        self.charge_within(n, self.limit)
    }

    /// Moves a message reader's charge from `old` to `new` bytes, as
    /// [`Budget::resize`], except that a reader holding [`HUGE`] bytes or
    /// more may only grow into the budget up to 7/8 of the limit: the last
    /// eighth stays for ordinary messages, so many huge uploads at once
    /// (64 sources of 33 MB keyframes) cannot starve a live stream's
    /// 1 MB frames, whose source would otherwise be the one refused.
    pub(crate) fn resize_reader(&self, old: usize, new: usize) -> bool {
        if new <= old {
            self.release(old - new);
            return true;
        }
        let ceiling = if new >= HUGE {
            self.limit - self.limit / 8
        } else {
            self.limit
        };
        self.charge_within(new - old, ceiling)
    }

    /// Charges `n` more bytes if that keeps the total within `ceiling`.
    fn charge_within(&self, n: usize, ceiling: usize) -> bool {
        let mut cur = self.used.load(Ordering::Relaxed);
        loop {
            if cur.saturating_add(n) > ceiling {
                return false;
            }
            match self.used.compare_exchange_weak(
                cur,
                cur + n,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }

    /// Charges `n` bytes already held (memory that exists whether or not the
    /// budget agrees): the charge may pass the limit, and the levels above
    /// make the relay shed until it is back under.
    pub(crate) fn force(&self, n: usize) {
        self.used.fetch_add(n, Ordering::Relaxed);
    }

    /// Gives `n` charged bytes back.
    pub(crate) fn release(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::Relaxed);
    }

    /// Where the budget stands in the shedding order.
    pub(crate) fn level(&self) -> Level {
        let used = self.used();
        if used >= self.limit - self.limit / 8 {
            Level::NoBacklog
        } else if used >= self.limit - self.limit / 4 {
            Level::NoCaching
        } else {
            Level::Normal
        }
    }

    /// Counts one refusal or shed caused by this budget.
    pub(crate) fn shed(&self) {
        self.sheds.fetch_add(1, Ordering::Relaxed);
    }

    /// Refusals and sheds so far.
    pub(crate) fn sheds(&self) -> u64 {
        self.sheds.load(Ordering::Relaxed)
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

/// The relay's two budgets, as every channel holds them.
#[derive(Debug, Clone)]
pub(crate) struct Budgets {
    /// Everything clients make the relay hold (`--max-memory`).
    pub(crate) memory: Arc<Budget>,
    /// The part of it cached state may take (`--max-cache-memory`).
    pub(crate) cache: Arc<Budget>,
}

impl Budgets {
    /// The budgets with these limits.
    pub(crate) fn new(memory: usize, cache: usize) -> Self {
        Self {
            memory: Arc::new(Budget::new(memory)),
            cache: Arc::new(Budget::new(cache.min(memory))),
        }
    }
}

/// Messages from this size up are charged to the memory budget for as long
/// as they live (through [`charged`]); smaller ones are charged by the
/// queues that hold them, and a connection's read buffer for them is part
/// of its fixed cost.
pub(crate) const LARGE: usize = 64 * 1024;

/// From this size up, a message being read may not take the budget's last
/// eighth (see [`Budget::resize_reader`]).
pub(crate) const HUGE: usize = 4 << 20;

/// Owns a frame's bytes and its charge: dropped with the last `Bytes`
/// handle to the frame, it gives the charge back.
struct Charged {
    bytes: Bytes,
    charge: usize,
    budget: Arc<Budget>,
}

impl AsRef<[u8]> for Charged {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for Charged {
    fn drop(&mut self) {
        self.budget.release(self.charge);
    }
}

/// Makes `frame` carry a charge of `charge` bytes (already taken from
/// `budget`) that is given back when the last handle to it is dropped,
/// wherever that is: a receiver's queue, a cache, a catch-up in flight.
pub(crate) fn charged(frame: Bytes, charge: usize, budget: &Arc<Budget>) -> Bytes {
    Bytes::from_owner(Charged {
        bytes: frame,
        charge,
        budget: budget.clone(),
    })
}

/// A charge taken for memory being filled (a frame put back together from
/// fragments): given back when dropped, or handed over to the finished
/// frame by [`Hold::into_frame`].
#[derive(Debug)]
pub(crate) struct Hold {
    n: usize,
    budget: Arc<Budget>,
}

impl Hold {
    /// Charges `n` bytes to `budget`, or `None` (counted as a shed) if it
    /// cannot take them.
    pub(crate) fn take(budget: &Arc<Budget>, n: usize) -> Option<Hold> {
        if !budget.charge(n) {
            budget.shed();
            return None;
        }
        Some(Hold {
            n,
            budget: budget.clone(),
        })
    }

    /// Hands the charge over to the finished `frame`, as [`charged`] does,
    /// if it is large; a small one is left to the queues that hold it and
    /// the charge is given back.
    pub(crate) fn into_frame(mut self, frame: Bytes) -> Bytes {
        let n = std::mem::take(&mut self.n);
        if frame.len() < LARGE {
            self.budget.release(n);
            return frame;
        }
        charged(frame, n, &self.budget)
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.budget.release(self.n);
    }
}

/// Charges a frame the relay made itself (a folded keyframe, a signal sync)
/// if it is large; small ones are left to the queues that hold them.
pub(crate) fn charge_made(frame: Bytes, budget: &Arc<Budget>) -> Bytes {
    if frame.len() < LARGE {
        return frame;
    }
    budget.force(frame.len());
    let n = frame.len();
    charged(frame, n, budget)
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

    #[test]
    fn levels_follow_the_shedding_order() {
        let b = Budget::new(800);
        assert_eq!(b.level(), Level::Normal);
        b.force(599);
        assert_eq!(b.level(), Level::Normal);
        b.force(1);
        assert_eq!(b.level(), Level::NoCaching);
        b.force(100);
        assert_eq!(b.level(), Level::NoBacklog);
        b.force(500);
        assert_eq!(b.used(), 1200, "forced charges may pass the limit");
        assert!(!b.charge(1));
        b.release(1200);
        assert_eq!(b.level(), Level::Normal);
    }

    #[test]
    fn a_charged_frame_gives_its_charge_back_with_its_last_handle() {
        let b = Arc::new(Budget::new(1 << 20));
        assert!(b.charge(1000));
        let frame = charged(Bytes::from(vec![7u8; 1000]), 1000, &b);
        let copies: Vec<Bytes> = (0..3).map(|_| frame.clone()).collect();
        let slice = frame.slice(10..20);
        drop(frame);
        drop(copies);
        assert_eq!(b.used(), 1000, "a slice still holds the frame");
        assert_eq!(&slice[..], &[7u8; 10]);
        drop(slice);
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn huge_readers_leave_the_last_eighth_to_ordinary_messages() {
        let b = Budget::new(64 * HUGE);
        // Huge uploads fill the budget up to 7/8 and no further.
        let mut huge = 0;
        while b.resize_reader(0, HUGE) {
            huge += 1;
        }
        assert_eq!(huge, 56, "7/8 of 64");
        // A live stream's 1 MB frames still fit, up to the limit.
        let mut ordinary = 0;
        while b.resize_reader(0, HUGE / 4) {
            ordinary += 1;
        }
        assert_eq!(ordinary, 32, "the last eighth, in quarters of HUGE");
        assert_eq!(b.used(), 64 * HUGE);
        // Shrinking always works.
        assert!(b.resize_reader(HUGE, 0));
        assert_eq!(b.used(), 63 * HUGE);
    }

    #[test]
    fn a_hold_is_refused_over_the_limit_and_handed_over_or_given_back() {
        let b = Arc::new(Budget::new(4 * LARGE));
        let h = Hold::take(&b, 3 * LARGE).expect("fits");
        assert!(Hold::take(&b, 2 * LARGE).is_none());
        assert_eq!((b.used(), b.sheds()), (3 * LARGE, 1));
        let frame = h.into_frame(Bytes::from(vec![1u8; 2 * LARGE]));
        assert_eq!(b.used(), 3 * LARGE, "the frame carries the charge now");
        drop(frame);
        assert_eq!(b.used(), 0);
        drop(Hold::take(&b, LARGE).expect("fits"));
        assert_eq!(b.used(), 0, "a dropped hold gives its charge back");
        let small = Hold::take(&b, LARGE)
            .expect("fits")
            .into_frame(Bytes::from_static(b"x"));
        assert_eq!((b.used(), &small[..]), (0, &b"x"[..]));
    }

    #[test]
    fn only_large_made_frames_are_charged() {
        let b = Arc::new(Budget::new(1 << 30));
        let small = charge_made(Bytes::from(vec![0u8; LARGE - 1]), &b);
        assert_eq!(b.used(), 0);
        let large = charge_made(Bytes::from(vec![0u8; LARGE]), &b);
        assert_eq!(b.used(), LARGE);
        drop((small, large));
        assert_eq!(b.used(), 0);
    }
}
