//! The network edge: a peer's socket, plain or TLS ([`conn`], [`tls`]),
//! the opening handshake ([`handshake`]) and the client a trusted proxy
//! speaks for ([`proxy`]).

pub(crate) mod conn;
pub(crate) mod handshake;
pub(crate) mod proxy;
pub(crate) mod tls;
