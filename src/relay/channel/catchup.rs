//! The state a late joiner or a skipped-forward receiver is sent, and its
//! expiry once the source has been gone past the grace period.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{lock, Channel};
use crate::relay::cache::{CacheWriter, CatchUp};
use crate::relay::peer::Peer;

impl Channel {
    /// The current catch-up snapshot.
    pub(crate) fn catch_up(&self) -> Arc<CatchUp> {
        self.cache.load_full()
    }

    /// Sends `peer` the current catch-up state (join or skip-forward).
    pub(crate) fn resync(&self, peer: &Peer) {
        peer.egress.resync(|| {
            let snap = self.cache.load_full();
            (snap.frames(), snap.seq)
        });
        self.traffic.catchups.inc();
    }

    /// Drops the cached state if the source has been gone longer than
    /// `grace_ms` at `now`; returns true if it did.
    pub(crate) fn expire_cache(&self, now: u64, grace_ms: u64) -> bool {
        let _m = lock(&self.membership);
        let left = self.source_left_ms.load(Ordering::Relaxed);
        if self.source.load().is_some() || left == 0 || now.saturating_sub(left) < grace_ms {
            return false;
        }
        if self.cache.load().is_empty() {
            return false;
        }
        let mut w = lock(&self.writer);
        *w = CacheWriter::new(w.max_signal_state());
        self.cache.store(Arc::new(CatchUp {
            seq: self.seq.load(Ordering::Relaxed),
            ..CatchUp::default()
        }));
        true
    }
}
