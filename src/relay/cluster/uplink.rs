//! The source's node: each frame the channel accepts is numbered and
//! published once to the channel's subject (in fragments when large), the
//! catch-up state is served to other nodes' late joiners, and inputs from
//! receivers on other nodes are handed to the source.
//!
//! Frames are numbered under the channel's cache-writer lock
//! ([`Uplink::push`] is called by the cache writer), so a catch-up answer
//! (taken under the same lock) says exactly which sequence its state
//! includes. The queue towards NATS is bounded (`--cluster-uplink-queue`):
//! past it a frame is dropped but keeps its number, so the other nodes see
//! the gap and repair it.
//!
//! Heartbeat: a gap shows when the next frame arrives, so a loss at the
//! end of a burst would leave the other nodes stale until the source sends
//! again. While the channel is idle (nothing published for
//! `--cluster-heartbeat-ms`) the publisher sends, that often, one small
//! message with the number of the last frame handled: published, or
//! dropped here (a full queue, a fenced claim). A node that has not seen
//! that frame fetches a catch-up. It is read once the queue is empty, and a
//! dropped frame's number is recorded only after every frame before it was
//! queued, so it never runs ahead of a frame still on its way. NATS drops
//! it at the server when no node follows the channel.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use bitstream_wire::protocol;
use bitstream_wire::reader::WireMessage;
use bitstream_wire::ws;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::claim::Claim;
use super::fragment::{split, Head, Kind};
use super::{catchup_subject, frames_subject, input_subject, Cluster, ClusterStats};
use crate::relay::channel::{Channel, Forward};

/// A channel's link to the cluster while its source is on this node.
#[derive(Debug)]
pub(crate) struct Uplink {
    epoch: u64,
    seq: AtomicU64,
    queued: Arc<AtomicUsize>,
    max_queue: usize,
    tx: mpsc::UnboundedSender<(u64, Bytes)>,
    live: Arc<AtomicBool>,
    /// The number of the last frame not queued (see the module docs).
    skipped: Arc<AtomicU64>,
    stats: Arc<ClusterStats>,
}

impl Forward for Uplink {
    /// Numbers a frame the channel accepted and queues it for NATS (called
    /// under the channel's cache-writer lock).
    fn push(&self, msg: &WireMessage) {
        let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        if !self.live.load(Ordering::Relaxed) {
            self.skipped.fetch_max(seq, Ordering::SeqCst);
            return;
        }
        let len = msg.payload().len();
        if self.queued.load(Ordering::Relaxed) + len > self.max_queue {
            self.stats.uplink_dropped.inc();
            self.skipped.fetch_max(seq, Ordering::SeqCst);
            return;
        }
        self.queued.fetch_add(len, Ordering::Relaxed);
        let _ = self.tx.send((seq, msg.payload_bytes()));
    }
}

impl Uplink {
    /// The number of the last frame pushed.
    pub(crate) fn last_seq(&self) -> u64 {
        self.seq.load(Ordering::SeqCst)
    }
}

/// What the publishing task shares with its [`Uplink`].
struct Publisher {
    epoch: u64,
    queued: Arc<AtomicUsize>,
    live: Arc<AtomicBool>,
    skipped: Arc<AtomicU64>,
}

/// Installed while a source of the channel is on this node; undoes it all
/// (and releases the claim) when dropped.
#[derive(Debug)]
pub(crate) struct UplinkGuard {
    channel: Arc<Channel>,
    tasks: Vec<JoinHandle<()>>,
    _claim: Claim,
}

impl Drop for UplinkGuard {
    fn drop(&mut self) {
        self.channel.uplink.store(None);
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The protocol message inside a cached server frame.
fn payload_of(wire: &Bytes) -> Bytes {
    match ws::parse_head(wire, ws::Side::Client) {
        Ok(Some(h)) => wire.slice(h.head_len..),
        _ => Bytes::new(),
    }
}

impl Cluster {
    /// Starts publishing `channel` (whose source just joined here under
    /// `claim`) to the cluster.
    pub(crate) async fn start_uplink(
        self: &Arc<Self>,
        channel: &Arc<Channel>,
        claim: Claim,
    ) -> UplinkGuard {
        let (tx, rx) = mpsc::unbounded_channel();
        let uplink = Arc::new(Uplink {
            // The stream's epoch on this node: followers name the stream
            // they follow from its start alike (see `Channel::begin_stream`).
            epoch: channel.epoch(),
            seq: AtomicU64::new(0),
            queued: Arc::new(AtomicUsize::new(0)),
            max_queue: self.uplink_queue,
            tx,
            live: claim.live.clone(),
            skipped: Arc::new(AtomicU64::new(0)),
            stats: self.stats.clone(),
        });
        let mut tasks = vec![tokio::spawn(self.clone().publish_frames(
            channel.name.clone(),
            Publisher {
                epoch: uplink.epoch,
                queued: uplink.queued.clone(),
                live: uplink.live.clone(),
                skipped: uplink.skipped.clone(),
            },
            rx,
        ))];
        // Subscribed before the source sends anything.
        if let Ok(sub) = self.client.subscribe(catchup_subject(&channel.name)).await {
            let (me, ch, up) = (self.clone(), channel.clone(), uplink.clone());
            tasks.push(tokio::spawn(me.serve_catchups(ch, up, sub)));
        }
        if let Ok(sub) = self.client.subscribe(input_subject(&channel.name)).await {
            let (me, ch) = (self.clone(), channel.clone());
            tasks.push(tokio::spawn(me.take_inputs(ch, sub)));
        }
        self.barrier().await;
        channel.uplink.store(Some(Arc::new(Box::new(uplink))));
        UplinkGuard {
            channel: channel.clone(),
            tasks,
            _claim: claim,
        }
    }

    /// Publishes the queued frames in order until the uplink goes, and
    /// heartbeats while idle (see the module docs).
    async fn publish_frames(
        self: Arc<Self>,
        name: Arc<str>,
        p: Publisher,
        mut rx: mpsc::UnboundedReceiver<(u64, Bytes)>,
    ) {
        let subject = frames_subject(&name);
        let head = |kind, seq| Head {
            kind,
            epoch: p.epoch,
            seq,
            part: 0,
            parts: 1,
            frag: 0,
            frags: 1,
            total: 0,
            node: self.node.to_string(),
        };
        let mut last_sent = 0u64;
        loop {
            let next = match self.heartbeat {
                Some(every) => match tokio::time::timeout(every, rx.recv()).await {
                    Ok(next) => next,
                    Err(_) => {
                        let last = last_sent.max(p.skipped.load(Ordering::SeqCst));
                        if last > 0 && p.live.load(Ordering::Relaxed) {
                            self.stats.heartbeats_out.inc();
                            let msgs = split(&head(Kind::Heartbeat, last), &[], self.max_payload());
                            self.send_all(&subject, msgs).await;
                        }
                        continue;
                    }
                },
                None => rx.recv().await,
            };
            let Some((seq, payload)) = next else { return };
            let msgs = split(&head(Kind::Live, seq), &payload, self.max_payload());
            self.send_all(&subject, msgs).await;
            self.stats.frames_out.inc();
            p.queued.fetch_sub(payload.len(), Ordering::Relaxed);
            last_sent = seq;
        }
    }

    /// Publishes messages to `subject`, counting them.
    async fn send_all(&self, subject: &str, msgs: Vec<Bytes>) {
        if msgs.len() > 1 {
            self.stats.fragments_out.add(msgs.len() as u64);
        }
        for m in msgs {
            self.stats.msgs_out.inc();
            self.stats.bytes_out.add(m.len() as u64);
            if let Err(e) = self.client.publish(subject.to_owned(), m).await {
                tracing::debug!(error = %e, "NATS publish failed");
            }
        }
    }

    /// Answers catch-up requests: the channel's state and the sequence it
    /// includes, frame by frame (fragmented), to the request's inbox.
    async fn serve_catchups(
        self: Arc<Self>,
        channel: Arc<Channel>,
        uplink: Arc<Uplink>,
        mut sub: async_nats::Subscriber,
    ) {
        while let Some(req) = sub.next().await {
            let Some(reply) = req.reply else { continue };
            let (frames, seq) = channel.catch_up_with(|| uplink.last_seq());
            self.stats.catchups_served.inc();
            let me = self.clone();
            let epoch = uplink.epoch;
            tokio::spawn(async move {
                let parts = frames.len() as u32;
                let head = |part| Head {
                    kind: Kind::CatchUp,
                    epoch,
                    seq,
                    part,
                    parts,
                    frag: 0,
                    frags: 1,
                    total: 0,
                    node: me.node.to_string(),
                };
                if frames.is_empty() {
                    me.send_all(&reply, split(&head(0), &[], me.max_payload()))
                        .await;
                }
                for (i, f) in frames.iter().enumerate() {
                    let msgs = split(&head(i as u32), &payload_of(f), me.max_payload());
                    me.send_all(&reply, msgs).await;
                }
            });
        }
    }

    /// Hands inputs from receivers on other nodes to the local source.
    async fn take_inputs(self: Arc<Self>, channel: Arc<Channel>, mut sub: async_nats::Subscriber) {
        while let Some(m) = sub.next().await {
            self.stats.inputs_in.inc();
            if protocol::validate_input_message(&m.payload).is_ok() {
                channel.try_forward_input(&WireMessage::encode(ws::OP_BINARY, &m.payload));
            } else {
                channel.traffic.invalid.inc();
            }
        }
    }

    /// Sends a receiver's input towards the channel's source on another
    /// node (in order: one forwarder task per node).
    pub(crate) fn send_input(&self, channel: &Channel, msg: &WireMessage) {
        if self
            .inputs
            .try_send((input_subject(&channel.name), msg.payload_bytes()))
            .is_ok()
        {
            self.stats.inputs_out.inc();
            channel.traffic.inputs.inc();
        } else {
            channel.traffic.dropped.inc();
        }
    }

    /// Publishes inputs for other nodes in the order they came.
    pub(crate) async fn forward_inputs(
        client: async_nats::Client,
        mut rx: mpsc::Receiver<(String, Bytes)>,
    ) {
        while let Some((subject, payload)) = rx.recv().await {
            let _ = client.publish(subject, payload).await;
        }
    }
}
