//! Who is attached to a channel and in which role: members counted for the
//! GC, the source slot, the receiver shards and the signaling peers.

use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;

use super::roster::Roster;
use super::{lock, Channel};
use crate::relay::channel::peer::{Peer, Role};
use crate::relay::resources::stats::Refusal;

impl Channel {
    /// Counts a connection attaching (called under the map's shard lock).
    pub(crate) fn attach(&self) {
        self.members.fetch_add(1, Ordering::SeqCst);
    }

    /// Counts a connection leaving at `now`.
    pub(crate) fn detach(&self, now: u64) {
        self.last_left_ms.store(now, Ordering::Relaxed);
        self.members.fetch_sub(1, Ordering::SeqCst);
    }

    /// Connections attached now.
    pub(crate) fn members(&self) -> usize {
        self.members.load(Ordering::SeqCst)
    }

    /// Milliseconds from the last member leaving until `now`.
    pub(crate) fn idle_ms(&self, now: u64) -> u64 {
        now.saturating_sub(self.last_left_ms.load(Ordering::Relaxed))
    }

    /// When its source left (relay clock, ms), while it has none; `None`
    /// while a source is connected or if it never had one.
    pub(crate) fn source_left_at(&self) -> Option<u64> {
        let left = self.source_left_ms.load(Ordering::Relaxed);
        (self.source.load().is_none() && left != 0).then_some(left)
    }

    /// True if the channel has, or ever had, a source.
    pub(crate) fn had_source(&self) -> bool {
        self.source.load().is_some() || self.source_left_ms.load(Ordering::Relaxed) != 0
    }

    /// Makes `peer` the source unless the channel has one; its frames are
    /// a new stream (see [`Channel::begin_stream`]).
    pub(crate) fn claim_source(&self, peer: &Arc<Peer>) -> bool {
        let _m = lock(&self.membership);
        if self.source.load().is_some() {
            return false;
        }
        self.begin_stream_locked(None);
        self.lateness.restart();
        self.source.store(Some(peer.clone()));
        true
    }

    /// Gives the source slot back without counting a source as having
    /// left (cluster mode: its claim was refused).
    pub(crate) fn unclaim_source(&self, peer: &Arc<Peer>) {
        let _m = lock(&self.membership);
        if self
            .source
            .load()
            .as_ref()
            .is_some_and(|s| Arc::ptr_eq(s, peer))
        {
            self.source.store(None);
        }
    }

    /// Releases the source slot at `now` if `peer` holds it; the cached state
    /// is kept for the grace period so a returning source continues the channel.
    pub(crate) fn release_source(&self, peer: &Arc<Peer>, now: u64) {
        let _m = lock(&self.membership);
        let cur = self.source.load();
        if cur.as_ref().is_some_and(|s| Arc::ptr_eq(s, peer)) {
            self.source.store(None);
            self.source_left_ms.store(now.max(1), Ordering::Relaxed);
        }
    }

    fn shard_of(&self, peer: &Peer) -> &Roster {
        &self.receivers[peer.id as usize % self.receivers.len()]
    }

    /// Adds a receiver (unless `max` are connected) and queues its catch-up,
    /// or with `resume` (the header seq of the last frame it had) the frames
    /// after it if the replay ring still has them. Anything already queued
    /// on its egress (the handshake response) goes first.
    pub(crate) fn add_receiver(
        &self,
        peer: &Arc<Peer>,
        max: usize,
        resume: Option<(Option<u64>, u16)>,
    ) -> Result<(), Refusal> {
        peer.egress.mark_resync();
        {
            let _m = lock(&self.membership);
            if self.receiver_count() >= max {
                return Err(Refusal::ReceiverLimit);
            }
            self.shard_of(peer).push(peer);
            peer.egress.track(&self.backlog);
            if self.receiver_count.fetch_add(1, Ordering::Relaxed) == 0 {
                tracing::info!(channel = %self.name, "first receiver");
            }
        }
        fence(Ordering::SeqCst);
        self.resume_or_resync(peer, resume);
        Ok(())
    }

    /// Gives back the place `peer` holds in `role` at `now` (nothing if it
    /// holds none): a source's claim, a receiver's or a signaling peer's
    /// place. Called when a session leaves and again, harmlessly, by the
    /// connection's guard, which is what releases it after a panic.
    pub(crate) fn release_member(&self, role: Role, peer: &Arc<Peer>, now: u64) {
        match role {
            Role::Source => self.release_source(peer, now),
            Role::Receiver => self.remove_receiver(peer),
            Role::Signal => self.remove_signal_peer(peer),
            Role::Echo => {}
        }
    }

    /// Removes a receiver.
    pub(crate) fn remove_receiver(&self, peer: &Arc<Peer>) {
        let removed = {
            let _m = lock(&self.membership);
            self.shard_of(peer).remove(peer)
        };
        if removed {
            peer.egress.untrack();
            self.receiver_count.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Adds a signaling peer unless `max` are connected.
    pub(crate) fn add_signal_peer(&self, peer: &Arc<Peer>, max: usize) -> Result<(), Refusal> {
        let _m = lock(&self.membership);
        if self.signal_peers.len() >= max {
            return Err(Refusal::ReceiverLimit);
        }
        self.signal_peers.push(peer);
        Ok(())
    }

    /// Removes a signaling peer.
    pub(crate) fn remove_signal_peer(&self, peer: &Arc<Peer>) {
        let _m = lock(&self.membership);
        self.signal_peers.remove(peer);
    }
}
