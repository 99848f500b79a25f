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
use crate::relay::channel::Channel;

/// A channel's link to the cluster while its source is on this node.
#[derive(Debug)]
pub(crate) struct Uplink {
    epoch: u64,
    seq: AtomicU64,
    queued: Arc<AtomicUsize>,
    max_queue: usize,
    tx: mpsc::UnboundedSender<(u64, Bytes)>,
    live: Arc<AtomicBool>,
    stats: Arc<ClusterStats>,
}

impl Uplink {
    /// Numbers a frame the channel accepted and queues it for NATS (called
    /// under the channel's cache-writer lock).
    pub(crate) fn push(&self, msg: &WireMessage) {
        let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        if !self.live.load(Ordering::Relaxed) {
            return;
        }
        let len = msg.payload().len();
        if self.queued.load(Ordering::Relaxed) + len > self.max_queue {
            self.stats.uplink_dropped.inc();
            return;
        }
        self.queued.fetch_add(len, Ordering::Relaxed);
        let _ = self.tx.send((seq, msg.payload_bytes()));
    }

    /// The number of the last frame pushed.
    pub(crate) fn last_seq(&self) -> u64 {
        self.seq.load(Ordering::SeqCst)
    }
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

/// A random epoch for a new source session.
fn new_epoch() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(std::time::SystemTime::now()) | 1
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
            epoch: new_epoch(),
            seq: AtomicU64::new(0),
            queued: Arc::new(AtomicUsize::new(0)),
            max_queue: self.uplink_queue,
            tx,
            live: claim.live.clone(),
            stats: self.stats.clone(),
        });
        let mut tasks = vec![tokio::spawn(self.clone().publish_frames(
            channel.name.clone(),
            uplink.epoch,
            uplink.queued.clone(),
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
        let _ = self.client.flush().await;
        channel.uplink.store(Some(uplink));
        UplinkGuard {
            channel: channel.clone(),
            tasks,
            _claim: claim,
        }
    }

    /// Publishes the queued frames in order until the uplink goes.
    async fn publish_frames(
        self: Arc<Self>,
        name: Arc<str>,
        epoch: u64,
        queued: Arc<AtomicUsize>,
        mut rx: mpsc::UnboundedReceiver<(u64, Bytes)>,
    ) {
        let subject = frames_subject(&name);
        while let Some((seq, payload)) = rx.recv().await {
            let head = Head {
                kind: Kind::Live,
                epoch,
                seq,
                part: 0,
                parts: 1,
                frag: 0,
                frags: 1,
                total: 0,
                node: self.node.to_string(),
            };
            self.send_all(&subject, split(&head, &payload, self.max_payload()))
                .await;
            self.stats.frames_out.inc();
            queued.fetch_sub(payload.len(), Ordering::Relaxed);
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
