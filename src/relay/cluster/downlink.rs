//! A node with receivers of a channel whose source is elsewhere follows it:
//! subscribed to its frames only while it has local receivers, it first
//! fetches the catch-up state from the source's node, then fans each frame
//! out locally in sequence, as if a local source had sent it (cached, the
//! same zero-copy egress).
//!
//! Order and gaps: frames carry (epoch, seq). A frame older than expected
//! is skipped; a newer one (a frame or fragment lost, or dropped by a full
//! queue) stops the forwarding until a fresh catch-up is fetched and sent
//! to every local receiver, so nobody ever applies a broken delta chain.
//! A new epoch (the source reconnected, here or on another node) starting
//! at 1 is followed as it is; one seen mid-way is joined with a catch-up.
//! A heartbeat (the source's node is idle; see [`super::uplink`]) whose
//! number this node has not seen yet, or of another epoch, means the end of
//! a burst was lost: it is repaired with a catch-up in the same way.
//!
//! The subscription is made (and flushed) before the catch-up is asked
//! for, so every frame after the state the answer includes is delivered.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;

use super::fragment::{Head, Kind, Reassembler};
use super::{catchup_subject, frames_subject, Cluster};
use crate::relay::budget::Budget;
use crate::relay::channel::Channel;
use crate::relay::clock::now_ms;
use crate::relay::state::Relay;

/// A followed channel, in [`Cluster::downlinks`].
#[derive(Debug)]
pub(crate) struct Entry {
    channel: Arc<Channel>,
    id: u64,
    /// The node the channel's frames last came from.
    pub(crate) source_node: Arc<Mutex<Option<String>>>,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Why a catch-up fetch gave nothing.
#[derive(Debug)]
enum FetchError {
    /// No node has the channel's source.
    NoSource,
    /// NATS failed, or the answer did not complete in time.
    Failed(String),
}

/// A fetched catch-up: the state including frames up to `seq` of `epoch`.
struct CatchUp {
    epoch: u64,
    seq: u64,
    node: String,
    frames: Vec<bitstream_wire::reader::WireMessage>,
}

/// How often a follower checks its timeouts and whether it is still wanted.
const TICK: Duration = Duration::from_millis(250);

impl Cluster {
    /// Makes sure this node follows `channel` (a receiver just joined it).
    pub(crate) fn want(self: &Arc<Self>, relay: &Arc<Relay>, channel: &Arc<Channel>) {
        let mut spawn = None;
        self.downlinks
            .entry(channel.name.clone())
            .and_modify(|e| {
                if !Arc::ptr_eq(&e.channel, channel) {
                    // The channel was removed and made anew meanwhile.
                    *e = self.entry(channel, &mut spawn);
                }
            })
            .or_insert_with(|| self.entry(channel, &mut spawn));
        if let Some((id, node)) = spawn {
            let (me, relay, ch) = (self.clone(), relay.clone(), channel.clone());
            tokio::spawn(async move { me.follow(relay, ch, id, node).await });
        }
    }

    fn entry(
        &self,
        channel: &Arc<Channel>,
        spawn: &mut Option<(u64, Arc<Mutex<Option<String>>>)>,
    ) -> Entry {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let node = Arc::new(Mutex::new(None));
        *spawn = Some((id, node.clone()));
        Entry {
            channel: channel.clone(),
            id,
            source_node: node,
        }
    }

    /// The node that holds channel `name`'s source, as far as this node knows.
    pub(crate) fn source_node(&self, name: &str, local_source: bool) -> Option<String> {
        if local_source {
            return Some(self.node.to_string());
        }
        let e = self.downlinks.get(name)?;
        let node = e.source_node.lock().unwrap_or_else(|e| e.into_inner());
        node.clone()
    }

    /// True while follower `id` of `channel` should go on; removes its
    /// entry (under the map's lock, which [`Cluster::want`] takes too) when
    /// the channel has no receiver left.
    fn still_wanted(&self, channel: &Arc<Channel>, id: u64) -> bool {
        let removed = self
            .downlinks
            .remove_if(&channel.name, |_, e| {
                e.id == id && channel.receiver_count() == 0
            })
            .is_some();
        !removed
            && self
                .downlinks
                .get(&channel.name)
                .is_some_and(|e| e.id == id)
    }

    /// Follows a channel until it has no local receiver (see the module docs).
    async fn follow(
        self: Arc<Self>,
        relay: Arc<Relay>,
        channel: Arc<Channel>,
        id: u64,
        source_node: Arc<Mutex<Option<String>>>,
    ) {
        let subject = frames_subject(&channel.name);
        let mut sub = loop {
            match self.client.subscribe(subject.clone()).await {
                Ok(s) => break s,
                Err(e) => {
                    tracing::debug!(channel = %channel.name, error = %e, "subscribe failed");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    if !self.still_wanted(&channel, id) {
                        return;
                    }
                }
            }
        };
        self.barrier().await;
        tracing::debug!(channel = %channel.name, node = %self.node, "following channel");
        let timeout_ms = self.timeout.as_millis() as u64;
        let memory = relay.budgets.memory.clone();
        let mut reasm = Reassembler::new(self.max_message, timeout_ms, memory.clone());
        let mut epoch: Option<u64> = None;
        let mut next = 0u64;
        let mut synced = false;
        let mut need_fetch = true;
        let mut fetch_after = Instant::now();
        let mut backoff = Duration::from_millis(100);
        let mut tick = tokio::time::interval(TICK);
        let set_node = |n: &str| {
            let mut cur = source_node.lock().unwrap_or_else(|e| e.into_inner());
            if cur.as_deref() != Some(n) {
                *cur = Some(n.to_owned());
            }
        };
        loop {
            if need_fetch && Instant::now() >= fetch_after {
                self.stats.catchup_fetches.inc();
                match self.fetch(&channel.name, &memory).await {
                    Ok(c) => {
                        // Everything local receivers hold is replaced by
                        // the source's state: picture, chain and signal.
                        channel.clear_cache();
                        for f in &c.frames {
                            if let Err(e) = channel.publish(f, &relay.bulk, false).await {
                                tracing::warn!(channel = %channel.name, error = %e, "catch-up frame refused");
                            }
                        }
                        set_node(&c.node);
                        (epoch, next, synced, need_fetch) = (Some(c.epoch), c.seq + 1, true, false);
                        backoff = Duration::from_millis(100);
                    }
                    Err(FetchError::NoSource) => {
                        // Wait for a source: its first frame starts a new epoch.
                        (synced, need_fetch) = (false, false);
                    }
                    Err(FetchError::Failed(e)) => {
                        tracing::debug!(channel = %channel.name, error = %e, "catch-up fetch failed");
                        fetch_after = Instant::now() + backoff;
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                    }
                }
            }
            let msg = tokio::select! {
                m = sub.next() => m,
                _ = tick.tick() => {
                    if reasm.expire(now_ms()) {
                        self.stats.incomplete_dropped.inc();
                        (synced, need_fetch) = (false, true);
                    }
                    if !self.still_wanted(&channel, id) {
                        tracing::debug!(channel = %channel.name, "no receivers left: unfollowing");
                        return;
                    }
                    continue;
                }
            };
            let Some(msg) = msg else {
                // The client is gone (closed): nothing more will come.
                self.downlinks.remove_if(&channel.name, |_, e| e.id == id);
                return;
            };
            self.stats.msgs_in.inc();
            self.stats.bytes_in.add(msg.payload.len() as u64);
            let Some((head, data)) = Head::parse(&msg.payload) else {
                continue;
            };
            if *head.node == *self.node {
                continue;
            }
            if head.kind == Kind::Heartbeat {
                if need_fetch || channel.has_source() {
                    continue;
                }
                let trailing = synced && epoch == Some(head.epoch) && head.seq >= next;
                if trailing {
                    self.stats.gaps.inc();
                    self.stats.trailing_gaps.inc();
                    tracing::debug!(channel = %channel.name, expected = next, last = head.seq, "heartbeat shows frames lost at the end of a burst: fetching a catch-up");
                    (synced, need_fetch) = (false, true);
                } else if !synced || epoch != Some(head.epoch) {
                    (synced, need_fetch) = (false, true);
                }
                continue;
            }
            if head.kind != Kind::Live {
                continue;
            }
            if head.frags > 1 {
                self.stats.fragments_in.inc();
            }
            let (dropped, refused) = (reasm.dropped, reasm.refused);
            let whole = reasm.push(head, data, now_ms());
            if reasm.dropped > dropped {
                self.stats.incomplete_dropped.add(reasm.dropped - dropped);
            }
            if reasm.refused > refused {
                self.stats.reassembly_refused.add(reasm.refused - refused);
            }
            let Some(whole) = whole else { continue };
            let h = whole.head;
            if channel.has_source() {
                // A source of ours took over: nothing to follow.
                continue;
            }
            if epoch != Some(h.epoch) {
                if h.seq == 1 {
                    // A new source session, followed from its start: a new
                    // stream for local receivers too (no resume across it).
                    channel.begin_stream();
                    (epoch, next, synced, need_fetch) = (Some(h.epoch), 1, true, false);
                    set_node(&h.node);
                } else {
                    (synced, need_fetch) = (false, true);
                    continue;
                }
            }
            if !synced || h.seq < next {
                continue;
            }
            if h.seq > next {
                self.stats.gaps.inc();
                tracing::debug!(channel = %channel.name, expected = next, got = h.seq, "sequence gap: fetching a catch-up");
                (synced, need_fetch) = (false, true);
                continue;
            }
            next += 1;
            self.stats.frames_in.inc();
            if let Err(e) = channel.publish(&whole.msg, &relay.bulk, false).await {
                tracing::warn!(channel = %channel.name, error = %e, "frame from the cluster refused");
            }
        }
    }

    /// Asks the source's node for channel `name`'s catch-up state, its
    /// large frames charged to `memory` as they are reassembled.
    async fn fetch(&self, name: &str, memory: &Arc<Budget>) -> Result<CatchUp, FetchError> {
        let failed = |e: &dyn std::fmt::Display| FetchError::Failed(e.to_string());
        let inbox = self.client.new_inbox();
        let mut sub = self
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| failed(&e))?;
        self.client
            .publish_with_reply(catchup_subject(name), inbox, bytes::Bytes::new())
            .await
            .map_err(|e| failed(&e))?;
        let mut reasm = Reassembler::new(self.max_message, u64::MAX, memory.clone());
        let mut frames = Vec::new();
        let deadline = Instant::now() + self.timeout;
        loop {
            let msg = tokio::time::timeout_at(deadline, sub.next())
                .await
                .map_err(|_| FetchError::Failed("catch-up answer timed out".into()))?
                .ok_or_else(|| FetchError::Failed("subscription closed".into()))?;
            if msg.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
                return Err(FetchError::NoSource);
            }
            self.stats.msgs_in.inc();
            self.stats.bytes_in.add(msg.payload.len() as u64);
            let Some((head, data)) = Head::parse(&msg.payload) else {
                continue;
            };
            if head.kind != Kind::CatchUp {
                continue;
            }
            if head.frags > 1 {
                self.stats.fragments_in.inc();
            }
            if head.parts == 0 {
                return Ok(CatchUp {
                    epoch: head.epoch,
                    seq: head.seq,
                    node: head.node,
                    frames,
                });
            }
            let Some(whole) = reasm.push(head, data, 0) else {
                if reasm.refused > 0 {
                    self.stats.reassembly_refused.inc();
                    return Err(FetchError::Failed(
                        "catch-up answer over the memory budget".into(),
                    ));
                }
                if reasm.dropped > 0 {
                    return Err(FetchError::Failed("catch-up answer incomplete".into()));
                }
                continue;
            };
            if whole.head.part as usize != frames.len() {
                return Err(FetchError::Failed("catch-up answer incomplete".into()));
            }
            frames.push(whole.msg);
            if frames.len() == whole.head.parts as usize {
                return Ok(CatchUp {
                    epoch: whole.head.epoch,
                    seq: whole.head.seq,
                    node: whole.head.node,
                    frames,
                });
            }
        }
    }
}
