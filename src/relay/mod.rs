//! The relay: everything with a socket or a runtime in it. The wire format
//! it speaks is the `bitstream-wire` crate.
//!
//! Data path, in the order a frame takes it:
//! [`server`] accepts and counts connections; [`admission`] reads the
//! request ([`handshake`]), checks its token ([`auth`]), answers plain HTTP ([`http`], [`metrics`],
//! [`web`]) or admits a WebSocket peer ([`peer`]) to its [`channel`]; each
//! peer runs a [`session`] that reads through [`ingress`] and writes through
//! [`egress`]. A channel folds its source's frames into the catch-up
//! [`cache`] (charged to the [`budget`]) and fans them out. Around it: [`state`] (the channel map,
//! limits, shutdown), [`stats`] (padded atomic counters), [`gc`] (the thread
//! that drops idle channels), [`ratelimit`] (input token bucket),
//! [`clock`] and [`config`] (every option and limit).
//!
//! Plain HTTP endpoints that hold their connection or read a body
//! ([`endpoints`]): the signal state as Server-Sent Events ([`sse`], fed
//! from the channel's cache writer), inputs by `POST`, TURN credentials,
//! and the dashboard's stats stream.

pub(crate) mod admission;
pub(crate) mod auth;
pub(crate) mod budget;
pub(crate) mod bulk;
pub(crate) mod cache;
pub(crate) mod channel;
pub(crate) mod clock;
pub(crate) mod cluster;
pub(crate) mod config;
pub(crate) mod conn;
pub(crate) mod egress;
pub(crate) mod endpoints;
pub(crate) mod gc;
pub(crate) mod handshake;
pub(crate) mod http;
pub(crate) mod ingress;
pub(crate) mod metrics;
pub(crate) mod peer;
pub(crate) mod proxy;
pub(crate) mod ratelimit;
pub(crate) mod refusal_log;
pub(crate) mod server;
pub(crate) mod session;
pub(crate) mod sse;
pub(crate) mod state;
pub(crate) mod stats;
pub(crate) mod tls;
pub(crate) mod web;
