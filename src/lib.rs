//! `bitstream-relay`: a WebSocket relay that takes one live stream per named
//! channel from a source and fans it out, byte-exact and in order, to many
//! receivers, while routing their inputs back to the source.
//!
//! The layout follows the data path:
//! - pure, I/O-free: [`protocol`] (PROTOCOL.md messages), [`codec`] (XOR and
//!   ZRLE), [`ws`] (RFC 6455 framing and handshake), [`cache`] (catch-up state);
//! - the relay: [`server`] accepts and admits, [`handshake`] and [`http`]
//!   answer HTTP, [`session`] runs a peer, [`conn`] reads, [`egress`]
//!   writes, [`channel`] fans out, [`relay`] holds the shared state, [`gc`]
//!   sweeps idle channels, [`stats`] counts;
//! - [`client`] is a small client for tests, examples and the load driver;
//! - [`config`] is every option and limit.

#![warn(missing_docs)]

pub mod cache;
pub mod channel;
pub mod client;
pub mod codec;
pub mod config;
pub mod conn;
pub mod egress;
pub mod gc;
pub mod handshake;
pub mod http;
pub mod metrics;
pub mod protocol;
pub mod ratelimit;
pub mod relay;
pub mod server;
pub mod session;
pub mod stats;
pub mod web;
pub mod ws;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

pub use config::Config;
pub use relay::Relay;

/// A bound relay, ready to run.
pub struct Server {
    /// The shared state (counters, channels, shutdown).
    pub relay: Arc<Relay>,
    /// The address actually bound (useful with port 0).
    pub local_addr: SocketAddr,
    listener: TcpListener,
}

impl Server {
    /// Binds the listening socket.
    pub async fn bind(config: Config) -> io::Result<Self> {
        let socket = if config.addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(config.addr)?;
        // A deep accept queue so a storm of joins is not dropped at SYN time.
        let listener = socket.listen(config.listen_backlog)?;
        let local_addr = listener.local_addr()?;
        Ok(Self {
            relay: Relay::new(config),
            local_addr,
            listener,
        })
    }

    /// Serves until [`Relay::begin_shutdown`], then gives every peer its
    /// close frame and waits (at most `--shutdown-grace-ms` plus a little)
    /// for the connections to finish.
    pub async fn run(self) -> io::Result<()> {
        let relay = self.relay;
        gc::spawn(&relay)?;
        if relay.config.stats_interval_ms > 0 {
            tokio::spawn(log_stats(relay.clone()));
        }
        tracing::info!(addr = %self.local_addr, "relay listening");
        let accept = tokio::spawn(server::serve(self.listener, relay.clone()));
        relay::shutting_down(&mut relay.shutdown_signal()).await;
        let deadline = tokio::time::Instant::now()
            + relay.config.shutdown_grace()
            + Duration::from_millis(500);
        let c = &relay.connections;
        while c.sources.get() + c.receivers.get() + c.signal_peers.get() > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Dropping the accept loop closes the listening socket.
        accept.abort();
        tracing::info!(open = c.open.get(), "relay stopped");
        Ok(())
    }
}

/// Logs a one-line summary every `--stats-interval-ms`.
async fn log_stats(relay: Arc<Relay>) {
    let every = Duration::from_millis(relay.config.stats_interval_ms);
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    let mut prev = relay.summary();
    loop {
        tick.tick().await;
        if relay.is_draining() {
            return;
        }
        let s = relay.summary();
        let secs = every.as_secs_f64();
        tracing::info!(
            channels = s.channels,
            connections = s.connections,
            sources = s.sources,
            receivers = s.receivers,
            fps_in = format!(
                "{:.1}",
                (s.traffic.frames_in - prev.traffic.frames_in) as f64 / secs
            ),
            mb_out_per_s = format!(
                "{:.1}",
                (s.traffic.bytes_out - prev.traffic.bytes_out) as f64 / secs / 1e6
            ),
            invalid = s.traffic.invalid,
            dropped = s.traffic.dropped,
            slow_skips = s.traffic.slow_skips,
            refused = s.refused,
            "stats"
        );
        prev = s;
    }
}
