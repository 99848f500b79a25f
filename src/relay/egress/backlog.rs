//! How many of a channel's receivers are *congested*: holding queued
//! bytes while keeping up. The source's task reads its next message only
//! while at most half of them are (see `Channel::pace`), so a source that
//! outruns every receiver is slowed to what most of them take instead of
//! having frames dropped for all of them.
//!
//! Each receiver's [`Egress`](super::Egress) keeps its own place in the
//! count as its queue fills and empties (under its queue lock). A receiver
//! skipped forward is *slow*, not congested: it leaves the count until its
//! queue has emptied once, so receivers that cannot keep up are skipped as
//! before and never slow the source.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};

use tokio::sync::futures::Notified;
use tokio::sync::Notify;

/// The count of congested receivers of one channel.
#[derive(Debug, Default)]
pub(crate) struct Backlog {
    congested: AtomicUsize,
    /// A source waits on `eased` (see [`Backlog::wait_begins`]): only then
    /// is a receiver leaving the count worth a wake-up.
    waiting: AtomicBool,
    eased: Notify,
}

impl Backlog {
    /// Receivers holding queued bytes now, skipped ones left out.
    pub(crate) fn congested(&self) -> usize {
        self.congested.load(Ordering::SeqCst)
    }

    /// A waiter woken when a receiver leaves the count. Call
    /// [`Backlog::wait_begins`] first and `enable` the waiter before reading
    /// [`Backlog::congested`], so that no wake-up is missed.
    pub(crate) fn eased(&self) -> Notified<'_> {
        self.eased.notified()
    }

    /// A source is about to wait: receivers leaving the count wake it.
    pub(crate) fn wait_begins(&self) {
        self.waiting.store(true, Ordering::SeqCst);
    }

    /// The source's wait is over: leaving the count wakes nobody again.
    pub(crate) fn wait_ends(&self) {
        self.waiting.store(false, Ordering::SeqCst);
    }

    fn enter(&self) {
        self.congested.fetch_add(1, Ordering::SeqCst);
    }

    fn leave(&self) {
        self.congested.fetch_sub(1, Ordering::SeqCst);
        // The common case, nobody waiting, costs one load (a wake-up takes
        // the notifier's lock).
        if self.waiting.load(Ordering::SeqCst) {
            self.eased.notify_waiters();
        }
    }
}

/// Where one receiver stands in its channel's [`Backlog`].
#[derive(Debug, Default)]
pub(super) struct Place(AtomicU8);

/// Nothing queued.
const IDLE: u8 = 0;
/// Queued bytes, keeping up: counted.
const CONGESTED: u8 = 1;
/// Skipped forward since its queue last emptied: not counted.
const SLOW: u8 = 2;
/// Left the channel: never counted again.
const GONE: u8 = 3;

impl Place {
    /// Moves the receiver to where its queue says (called under the queue
    /// lock after every change): `queued` bytes are waiting, `skipped` if
    /// it awaits a catch-up after being skipped forward.
    pub(super) fn update(&self, backlog: &Backlog, queued: bool, skipped: bool) {
        let was = self.0.load(Ordering::Relaxed);
        if was == GONE {
            return;
        }
        let now = match (queued, skipped, was) {
            (false, false, _) => IDLE,
            (_, true, _) | (true, false, SLOW) => SLOW,
            (true, false, _) => CONGESTED,
        };
        if now == was {
            return;
        }
        self.0.store(now, Ordering::Relaxed);
        match (was == CONGESTED, now == CONGESTED) {
            (false, true) => backlog.enter(),
            (true, false) => backlog.leave(),
            _ => {}
        }
    }

    /// Leaves the count for good (the egress is going away).
    pub(super) fn clear(&self, backlog: &Backlog) {
        if self.0.swap(GONE, Ordering::Relaxed) == CONGESTED {
            backlog.leave();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_receiver_counts_while_it_holds_bytes_and_keeps_up() {
        let b = Backlog::default();
        let (p, q) = (Place::default(), Place::default());
        p.update(&b, true, false);
        q.update(&b, true, false);
        p.update(&b, true, false);
        assert_eq!(b.congested(), 2);
        p.update(&b, false, false);
        assert_eq!(b.congested(), 1);
        q.clear(&b);
        q.clear(&b);
        q.update(&b, true, false);
        assert_eq!(b.congested(), 0);
    }

    #[test]
    fn a_skipped_receiver_leaves_the_count_until_its_queue_empties() {
        let b = Backlog::default();
        let p = Place::default();
        p.update(&b, true, false);
        p.update(&b, true, true);
        assert_eq!(b.congested(), 0);
        // Its catch-up queued: still slow until the queue has emptied.
        p.update(&b, true, false);
        assert_eq!(b.congested(), 0);
        p.update(&b, false, false);
        p.update(&b, true, false);
        assert_eq!(b.congested(), 1);
    }
}
