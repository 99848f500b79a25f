//! A node with receivers of a channel whose source is elsewhere follows it:
//! subscribed to its frames only while it has local receivers, it first
//! fetches the catch-up state from the source's node, then fans each frame
//! out locally in sequence, as if a local source had sent it (cached, the
//! same zero-copy egress).
//!
//! Frames carry (epoch, seq). Which of them local receivers get, and
//! when a catch-up is fetched instead (a gap, a loss at the end of a burst
//! a heartbeat shows, a new source session joined mid-way, with a backoff
//! when fetching fails), is decided by a [`Follower`], a state machine
//! without I/O (see [`super::follower`]); this module is its driver: NATS,
//! reassembly, the channel and the clock.
//!
//! The subscription is made (and flushed) before the catch-up is asked
//! for, so every frame after the state the answer includes is delivered.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;

use super::follower::{Follower, FrameAction, HeartbeatAction};
use super::fragment::{Head, Kind, Reassembler};
use super::{catchup_subject, frames_subject, Cluster};
use crate::relay::channel::Channel;
use crate::relay::resources::budget::Budget;
use crate::relay::resources::bulk::Bulk;
use crate::relay::resources::clock::now_ms;

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

/// A followed channel's state in its task: the channel, the reassembly of
/// its frames and the [`Follower`] that decides what to do with them.
struct Link {
    /// The lane that checks large frames before they go out.
    bulk: Arc<Bulk>,
    /// What fetched catch-ups are charged to.
    memory: Arc<Budget>,
    channel: Arc<Channel>,
    /// Where [`Cluster::source_node`] reads the source's node.
    source_node: Arc<Mutex<Option<String>>>,
    reasm: Reassembler,
    follower: Follower,
}

impl Link {
    /// Records `node` as the node the channel's frames come from.
    fn set_node(&self, node: &str) {
        let mut cur = self.source_node.lock().unwrap_or_else(|e| e.into_inner());
        if cur.as_deref() != Some(node) {
            *cur = Some(node.to_owned());
        }
    }
}

/// How often a follower checks its timeouts and whether it is still wanted.
const TICK: Duration = Duration::from_millis(250);

impl Cluster {
    /// Makes sure this node follows `channel` (a receiver just joined it);
    /// its frames are reassembled within `memory` and the large ones
    /// checked on the `bulk` lane.
    pub(crate) fn want(
        self: &Arc<Self>,
        channel: &Arc<Channel>,
        memory: &Arc<Budget>,
        bulk: &Arc<Bulk>,
    ) {
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
            let lanes = (memory.clone(), bulk.clone());
            let (me, ch) = (self.clone(), channel.clone());
            tokio::spawn(async move { me.follow(lanes, ch, id, node).await });
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

    /// Follows a channel until it has no local receiver (see the module
    /// docs): the I/O around a [`Follower`], which decides.
    async fn follow(
        self: Arc<Self>,
        (memory, bulk): (Arc<Budget>, Arc<Bulk>),
        channel: Arc<Channel>,
        id: u64,
        source_node: Arc<Mutex<Option<String>>>,
    ) {
        let Some(mut sub) = self.subscribe_frames(&channel, id).await else {
            return;
        };
        self.barrier().await;
        tracing::debug!(channel = %channel.name, node = %self.node, "following channel");
        let timeout_ms = self.timeout.as_millis() as u64;
        let mut link = Link {
            reasm: Reassembler::new(self.max_message, timeout_ms, memory.clone()),
            follower: Follower::new(),
            bulk,
            memory,
            channel,
            source_node,
        };
        let mut tick = tokio::time::interval(TICK);
        loop {
            if link.follower.fetch_due(now_ms()) {
                self.catch_up(&mut link).await;
            }
            tokio::select! {
                msg = sub.next() => {
                    let Some(msg) = msg else {
                        // The client is gone (closed): nothing more will come.
                        self.downlinks.remove_if(&link.channel.name, |_, e| e.id == id);
                        return;
                    };
                    self.take(&mut link, &msg.payload).await;
                }
                _ = tick.tick() => {
                    if link.reasm.expire(now_ms()) {
                        self.stats.incomplete_dropped.inc();
                        link.follower.on_incomplete_dropped();
                    }
                    if !self.still_wanted(&link.channel, id) {
                        tracing::debug!(channel = %link.channel.name, "no receivers left: unfollowing");
                        return;
                    }
                }
            }
        }
    }

    /// Subscribes to `channel`'s frames, retrying every 500 ms; `None`
    /// once follower `id` is no longer wanted.
    async fn subscribe_frames(
        &self,
        channel: &Arc<Channel>,
        id: u64,
    ) -> Option<async_nats::Subscriber> {
        let subject = frames_subject(&channel.name);
        loop {
            match self.client.subscribe(subject.clone()).await {
                Ok(s) => return Some(s),
                Err(e) => {
                    tracing::debug!(channel = %channel.name, error = %e, "subscribe failed");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    if !self.still_wanted(channel, id) {
                        return None;
                    }
                }
            }
        }
    }

    /// Fetches a catch-up and, when one came, replaces everything local
    /// receivers hold with it: picture, chain and signal.
    async fn catch_up(&self, link: &mut Link) {
        self.stats.catchup_fetches.inc();
        match self.fetch(&link.channel.name, &link.memory).await {
            Ok(c) => {
                // `clear_cache` begins a new stream for local receivers,
                // named as on the source's node (see `Channel::clear_cache`).
                link.channel.clear_cache(Some(c.epoch));
                for f in &c.frames {
                    if let Err(e) = link.channel.publish(f, &link.bulk, false).await {
                        tracing::warn!(channel = %link.channel.name, error = %e, "catch-up frame refused");
                    }
                }
                link.set_node(&c.node);
                link.follower.on_fetched(c.epoch, c.seq);
            }
            Err(FetchError::NoSource) => link.follower.on_no_source(),
            Err(FetchError::Failed(e)) => {
                tracing::debug!(channel = %link.channel.name, error = %e, "catch-up fetch failed");
                link.follower.on_fetch_failed(now_ms());
            }
        }
    }

    /// Handles one message of the channel's subject: a heartbeat, or a
    /// live frame (or fragment of one).
    async fn take(&self, link: &mut Link, payload: &[u8]) {
        self.stats.msgs_in.inc();
        self.stats.bytes_in.add(payload.len() as u64);
        let Some((head, data)) = Head::parse(payload) else {
            return;
        };
        if *head.node == *self.node {
            return;
        }
        match head.kind {
            Kind::Heartbeat => {
                let local = link.channel.has_source();
                let action = link.follower.on_heartbeat(head.epoch, head.seq, local);
                if let HeartbeatAction::Trailing { expected } = action {
                    self.stats.gaps.inc();
                    self.stats.trailing_gaps.inc();
                    tracing::debug!(channel = %link.channel.name, expected, last = head.seq, "heartbeat shows frames lost at the end of a burst: fetching a catch-up");
                }
            }
            Kind::Live => self.take_frame(link, head, data).await,
            Kind::CatchUp => {}
        }
    }

    /// Reassembles a live frame and, whole, publishes it to local
    /// receivers if the follower says so.
    async fn take_frame(&self, link: &mut Link, head: Head, data: &[u8]) {
        if head.frags > 1 {
            self.stats.fragments_in.inc();
        }
        let reasm = &mut link.reasm;
        let (dropped, refused) = (reasm.dropped, reasm.refused);
        let whole = reasm.push(head, data, now_ms());
        if reasm.dropped > dropped {
            self.stats.incomplete_dropped.add(reasm.dropped - dropped);
        }
        if reasm.refused > refused {
            self.stats.reassembly_refused.add(reasm.refused - refused);
        }
        let Some(whole) = whole else { return };
        let h = &whole.head;
        let local = link.channel.has_source();
        match link.follower.on_frame(h.epoch, h.seq, local) {
            FrameAction::Publish => {}
            FrameAction::NewStream => {
                // A new source session, followed from its start: a new
                // stream for local receivers too, named as on the source's
                // node (its frames here are the same, so receivers moving
                // between nodes resume; after a catch-up, never).
                link.channel.begin_stream(Some(h.epoch));
                link.set_node(&h.node);
            }
            FrameAction::Gap { expected } => {
                self.stats.gaps.inc();
                tracing::debug!(channel = %link.channel.name, expected, got = h.seq, "sequence gap: fetching a catch-up");
                return;
            }
            FrameAction::Skip | FrameAction::Fetch => return,
        }
        self.stats.frames_in.inc();
        if let Err(e) = link.channel.publish(&whole.msg, &link.bulk, false).await {
            tracing::warn!(channel = %link.channel.name, error = %e, "frame from the cluster refused");
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
