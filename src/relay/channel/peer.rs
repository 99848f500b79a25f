//! A connected peer as the channel sees it: an id and the write side of its
//! connection, shared between its own session task and the fan-out.

use crate::relay::egress::Egress;

/// The part a connection plays on its channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// The one source of the channel.
    Source,
    /// A receiver of the channel's frames.
    Receiver,
    /// A WebRTC signaling peer.
    Signal,
    /// A `/echo` peer (conformance testing): every message comes back.
    Echo,
}

/// One connected peer.
#[derive(Debug)]
pub(crate) struct Peer {
    /// Relay-unique id (also picks the receiver's fan-out shard).
    pub(crate) id: u64,
    /// Outbound side.
    pub(crate) egress: Egress,
    /// A receiver that asked for stream marks (`?epoch`): one goes before
    /// each catch-up or resume, and one when the channel's stream changes.
    pub(crate) marks: bool,
}
