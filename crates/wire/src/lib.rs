//! `bitstream-wire`: everything the relay and its clients say to each
//! other, as pure functions over bytes. No sockets, no runtime, no clock:
//! this crate does not depend on tokio, so the compiler keeps it pure, and
//! every rule is a unit test (or a property test) away.
//!
//! - [`protocol`]: PROTOCOL.md messages: the 16-byte header, frame and
//!   input types, validation, builders;
//! - [`codec`]: the XOR delta and its ZRLE encoding;
//! - [`signal`]: the signal-state fold (sync replaces, diff merges);
//! - [`ws`]: RFC 6455 frame heads, masking, close payloads;
//! - [`reader`]: whole messages out of a byte stream, zero-copy;
//! - [`handshake`]: the HTTP opening handshake, both ends;
//! - [`pieces`]: PROTOCOL.md messages split into DataChannel pieces and
//!   put back together (WebRTC, `docs/webrtc.md`);
//! - [`path_merge`]: one picture from the relay and a direct DataChannel:
//!   which copy of a frame applies.

#![warn(missing_docs, unreachable_pub)]

pub mod codec;
pub mod handshake;
pub mod path_merge;
pub mod pieces;
pub mod protocol;
pub mod reader;
pub mod signal;
pub mod ws;
