//! Signaling across nodes: a signaling peer's text message goes to the
//! other peers of its node as before and, once, to `bsr.s.<channel>`; a
//! node subscribes to it while it has signaling peers of the channel and
//! hands each message to all of them. NATS keeps one node's order, so a
//! peer's messages arrive in order; like all signaling, at most once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bitstream_wire::reader::WireMessage;
use bitstream_wire::ws;
use futures_util::StreamExt;

use super::{token, Cluster};
use crate::relay::channel::Channel;

/// A channel whose signaling this node follows, in [`Cluster::signaling`].
#[derive(Debug)]
pub(crate) struct Follow {
    channel: Arc<Channel>,
    id: u64,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// The subject of a channel's signaling messages.
pub(crate) fn signal_subject(name: &str) -> String {
    format!("bsr.s.{}", token(name))
}

impl Cluster {
    /// Sends a local signaling peer's message to the other nodes.
    pub(crate) fn send_signal(&self, channel: &Channel, msg: &WireMessage) {
        let _ = self
            .inputs
            .try_send((signal_subject(&channel.name), msg.payload_bytes()));
    }

    /// Makes sure this node hears `channel`'s signaling from other nodes (a
    /// signaling peer just joined it). Subscribed before this returns.
    pub(crate) async fn want_signaling(self: &Arc<Self>, channel: &Arc<Channel>) {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let mut mine = false;
        self.signaling
            .entry(channel.name.clone())
            .and_modify(|f| {
                if !Arc::ptr_eq(&f.channel, channel) {
                    mine = true;
                    *f = Follow {
                        channel: channel.clone(),
                        id,
                    };
                }
            })
            .or_insert_with(|| {
                mine = true;
                Follow {
                    channel: channel.clone(),
                    id,
                }
            });
        if !mine {
            return;
        }
        let Ok(mut sub) = self.client.subscribe(signal_subject(&channel.name)).await else {
            self.signaling.remove_if(&channel.name, |_, f| f.id == id);
            return;
        };
        self.barrier().await;
        let (me, ch) = (self.clone(), channel.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tokio::select! {
                    m = sub.next() => match m {
                        Some(m) => {
                            me.stats.msgs_in.inc();
                            me.stats.bytes_in.add(m.payload.len() as u64);
                            ch.broadcast_signal_from_cluster(&WireMessage::encode(ws::OP_TEXT, &m.payload));
                        }
                        None => break,
                    },
                    _ = tick.tick() => {
                        let gone = me
                            .signaling
                            .remove_if(&ch.name, |_, f| f.id == id && ch.signal_peer_count() == 0)
                            .is_some();
                        if gone || me.signaling.get(&ch.name).is_none_or(|f| f.id != id) {
                            break;
                        }
                    }
                }
            }
        });
    }
}
