//! `bitstream-client`: a Rust client for `bitstream-relay` (and any relay
//! that speaks PROTOCOL.md), on the wire crate's own framing.
//!
//! - [`Client`]: one WebSocket connection, message by message;
//! - [`Source`]: publishes pictures (keyframes and ZRLE deltas, chosen for
//!   you), signal state and other frames, and reads the receivers' inputs;
//! - [`Receiver`]: rebuilds the source's picture and signal state and sends
//!   inputs;
//! - [`SignalPeer`]: WebRTC signaling text between peers of a channel;
//! - [`DirectPeer`]: a sans-IO WebRTC peer (str0m) for the picture
//!   DataChannel that a receiver may take besides the relay
//!   (`docs/webrtc.md`); [`DirectLink`] runs one on a UDP socket, and
//!   [`RtcSignal`] is what the peers say over [`SignalPeer`].
//!
//! Source, receiver and signaling peer reconnect by themselves with
//! exponential backoff and jitter (one policy, in `reconnect`).

#![warn(missing_docs, unreachable_pub)]

mod conn;
mod direct_link;
mod direct_peer;
mod receiver;
mod reconnect;
mod rtc_signal;
mod signal_peer;
mod source;

pub use conn::{parse_url, Client, ClientError, Message, Stream};
pub use direct_link::DirectLink;
pub use direct_peer::{DirectError, DirectEvent, DirectPeer, Transmit, CHANNEL_LABEL};
pub use receiver::{Event, Picture, Receiver};
pub use rtc_signal::RtcSignal;
pub use signal_peer::SignalPeer;
pub use source::Source;
