//! `bitstream-relay`: a WebSocket relay that takes one live stream per named
//! channel from a source and fans it out, byte-exact and in order, to many
//! receivers, while routing their inputs back to the source.
//!
//! The workspace draws the architecture:
//! - `bitstream-wire` (`crates/wire`, re-exported as [`wire`]): PROTOCOL.md
//!   messages, the XOR/ZRLE codec, the signal fold, RFC 6455 framing and the
//!   handshake; pure functions over bytes, no tokio;
//! - this crate's private `relay` module: sockets, sessions, channels,
//!   fan-out, catch-up, GC, stats; its public face is [`Server`], [`Config`]
//!   and the read-only views [`Relay::summary`] and [`Relay::channel`];
//! - `bitstream-client` (`crates/client`, re-exported as [`client`]): the
//!   Rust client (message-level client, source, receiver, signaling peer).

#![warn(missing_docs, unreachable_pub)]

mod relay;

#[doc(hidden)]
pub mod bench;

pub use bitstream_client as client;
pub use bitstream_wire as wire;
pub use bitstream_wire::{codec, protocol, ws};
pub use relay::access::auth::{mint_token, parse_channel_name, parse_ttl, AuthError, TokenArgs};
pub use relay::access::turn::TurnError;
pub use relay::cluster::ClusterError;
pub use relay::config::{parse_addr, Config, EgressMode, LogFormat, Secret};
pub use relay::net::proxy::{Cidr, CidrError};
pub use relay::net::tls::TlsError;
pub use relay::resources::stats::{Refusal, TrafficSnapshot};
pub use relay::server::{Server, StartError};
pub use relay::state::{ChannelSummary, Relay, Summary};
