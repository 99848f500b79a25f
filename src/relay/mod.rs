//! The relay: everything with a socket or a runtime in it. The wire format
//! it speaks is the `bitstream-wire` crate.
//!
//! Folders by job, dependencies pointing down this list (never up):
//! - [`server`] accepts and counts connections; [`admission`] reads a
//!   request, checks it and hands it to [`http`] (plain HTTP: health,
//!   metrics, pages, Server-Sent Events, inputs, TURN) or admits a
//!   WebSocket peer to its channel and starts its [`session`] (which reads
//!   through `session::ingress`);
//! - [`cluster`]: relays sharing channels over a NATS backplane;
//! - [`state`]: the channel map, per-address limits, shutdown, the GC
//!   thread that drops idle channels, and the last two minutes of totals
//!   the dashboard opens with;
//! - [`channel`]: one channel's members, catch-up cache, fan-out, resume
//!   ring and SSE hub; [`egress`] writes to a peer's socket (zero-copy,
//!   io_uring batches, bounded queues);
//! - [`access`]: tokens, input rate limits, TURN credentials;
//!   [`net`]: the connection, TLS, the opening handshake, trusted proxies;
//!   [`resources`]: the memory budget, the bulk lane, counters, the clock;
//!   [`config`]: every option and limit.

pub(crate) mod access;
pub(crate) mod admission;
pub(crate) mod channel;
pub(crate) mod cluster;
pub(crate) mod config;
pub(crate) mod egress;
pub(crate) mod http;
pub(crate) mod net;
pub(crate) mod resources;
pub(crate) mod server;
pub(crate) mod session;
pub(crate) mod state;
