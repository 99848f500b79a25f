//! Messages that do not fan out: a receiver's input goes to the source, a
//! signaling message to every other signaling peer.

use bitstream_wire::reader::WireMessage;

use super::Channel;
use crate::relay::channel::peer::Peer;
use crate::relay::egress::Outcome;

impl Channel {
    /// Forwards a validated input to the source; dropped (and counted) if
    /// there is none or its queue is full.
    pub(crate) fn forward_input(&self, msg: &WireMessage) {
        self.try_forward_input(msg);
    }

    /// [`Channel::forward_input`], saying whether it was handed over.
    pub(crate) fn try_forward_input(&self, msg: &WireMessage) -> bool {
        let sent = self.source.load().as_ref().is_some_and(|src| {
            matches!(src.egress.send(&msg.wire), Outcome::Sent | Outcome::Queued)
        });
        if sent {
            self.traffic.inputs.inc();
        } else {
            self.traffic.dropped.inc();
        }
        sent
    }

    /// Broadcasts a signaling message to every signaling peer but `from`.
    pub(crate) fn broadcast_signal(&self, from: &Peer, msg: &WireMessage) {
        self.signal_peers.for_each(|p| {
            if p.id != from.id
                && !matches!(p.egress.send(&msg.wire), Outcome::Sent | Outcome::Queued)
            {
                self.traffic.dropped.inc();
            }
        });
        self.traffic.signal_messages.inc();
    }

    /// Hands a signaling message from another node (cluster mode) to every
    /// signaling peer here.
    pub(crate) fn broadcast_signal_from_cluster(&self, msg: &WireMessage) {
        self.signal_peers.for_each(|p| {
            if !matches!(p.egress.send(&msg.wire), Outcome::Sent | Outcome::Queued) {
                self.traffic.dropped.inc();
            }
        });
    }
}
