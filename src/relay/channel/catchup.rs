//! The state a late joiner or a skipped-forward receiver is sent, and its
//! expiry once the source has been gone past the grace period.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;

use super::{lock, Channel};
use crate::relay::channel::cache::{CacheWriter, CatchUp};
use crate::relay::channel::peer::Peer;

impl Channel {
    /// Bytes of cached state (picture and signal): what the channel has
    /// charged to the cache budget.
    pub(crate) fn cached_bytes(&self) -> usize {
        self.charged.load(Ordering::Relaxed)
    }

    /// Forgets the cached picture from live sequence `seq` on, once the
    /// writer was emptied, and gives its memory back to the budget. The
    /// caller holds the writer lock.
    pub(super) fn drop_cached(&self, seq: u64) {
        self.budgets
            .cache
            .resize(self.charged.swap(0, Ordering::Relaxed), 0);
        self.cache.store(Arc::new(CatchUp {
            seq,
            ..CatchUp::default()
        }));
    }

    /// Sends `peer` the current catch-up state (join or skip-forward),
    /// after a stream mark if it asked for marks.
    pub(crate) fn resync(&self, peer: &Peer) {
        if peer.marks {
            self.resume_or_resync(peer, None);
            return;
        }
        peer.egress.resync(|| self.catch_up());
        self.traffic.catchups.inc();
    }

    /// The catch-up frames and the live sequence they cover (run under the
    /// receiver's egress lock, see [`crate::relay::egress::Egress::resync`]).
    pub(super) fn catch_up(&self) -> (Vec<bytes::Bytes>, u64) {
        let snap = self.cache.load_full();
        let mut frames = snap.frames();
        frames.extend(lock(&self.writer).signal_frame());
        (frames, snap.seq)
    }

    /// The catch-up frames (picture, then signal state) and `mark()`, both
    /// read under the cache-writer lock: no frame lands in between.
    pub(crate) fn catch_up_with<T>(&self, mark: impl FnOnce() -> T) -> (Vec<Bytes>, T) {
        let mut w = lock(&self.writer);
        let mut frames = self.cache.load_full().frames();
        frames.extend(w.signal_frame());
        (frames, mark())
    }

    /// Forgets the cached state before a catch-up from another node
    /// replaces it: a new stream begins for local receivers, named `epoch`
    /// (the source node's). The catch-up's frames are recorded for resumes
    /// like live ones: its keyframe and deltas are the stream's own frames
    /// at their seqs, and its `SignalSync` (which carries an older seq) is
    /// never where a resume starts, so a receiver resuming after one of
    /// them gets the rest of the picture and the whole signal state.
    pub(crate) fn clear_cache(&self, epoch: Option<u64>) {
        self.begin_stream(epoch);
        let mut w = lock(&self.writer);
        w.cache = CacheWriter::new(w.max_signal_state(), self.budgets.memory.clone());
        w.ring.clear();
        self.drop_cached(self.seq.load(Ordering::Relaxed));
    }

    /// Drops the cached state if the source has been gone longer than
    /// `grace_ms` at `now`; returns true if it did.
    pub(crate) fn expire_cache(&self, now: u64, grace_ms: u64) -> bool {
        let _m = lock(&self.membership);
        let left = self.source_left_ms.load(Ordering::Relaxed);
        if self.source.load().is_some() || left == 0 || now.saturating_sub(left) < grace_ms {
            return false;
        }
        let mut w = lock(&self.writer);
        if w.is_empty() {
            return false;
        }
        w.cache = CacheWriter::new(w.max_signal_state(), self.budgets.memory.clone());
        w.ring.clear();
        self.drop_cached(self.seq.load(Ordering::Relaxed));
        true
    }
}
