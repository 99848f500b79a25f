//! The listening side: [`Server`] binds the socket and runs the relay until
//! shutdown; the accept loop checks the connection limits and hands each
//! connection to [`admission`](crate::relay::admission).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::net::{TcpListener, TcpStream};

use crate::relay::access::auth::{AuthError, Verifier};
use crate::relay::access::turn::{Turn, TurnError};
use crate::relay::admission;
use crate::relay::cluster::{Cluster, ClusterError};
use crate::relay::config::Config;
use crate::relay::http::{reply, HttpState};
use crate::relay::net::conn::{set_notsent_lowat, Conn};
use crate::relay::net::handshake;
use crate::relay::net::proxy;
use crate::relay::net::tls::{self, Tls, TlsError};
use crate::relay::resources::stats::Refusal;
use crate::relay::state::gc;
use crate::relay::state::{self, Relay};

/// Why the relay could not start.
#[derive(Debug, Error)]
pub enum StartError {
    /// The listening socket could not be set up.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// The token keys could not be loaded.
    #[error("{0}")]
    Auth(#[from] AuthError),
    /// The TLS certificate or key could not be loaded.
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    /// The TURN secret could not be loaded.
    #[error("TURN: {0}")]
    Turn(#[from] TurnError),
    /// Cluster mode could not start (NATS unreachable, no JetStream, …).
    #[error("cluster: {0}")]
    Cluster(#[from] ClusterError),
    /// The bulk lane's thread could not start.
    #[error("cannot start the bulk lane: {0}")]
    Runtime(io::Error),
}

/// A bound relay, ready to run.
pub struct Server {
    relay: Arc<Relay>,
    /// What the plain-HTTP endpoints keep between requests.
    http_state: Arc<HttpState>,
    local_addr: SocketAddr,
    listener: TcpListener,
}

impl Server {
    /// Loads the token keys and binds the listening socket.
    pub async fn bind(config: Config) -> Result<Self, StartError> {
        let auth = Verifier::from_config(&config)?;
        if auth.is_none() {
            tracing::warn!(
                "no --jwt-secret-file or --jwt-public-key-file: the relay is open, anyone who reaches it may publish to and watch any channel"
            );
        }
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(Tls::load(cert, key)?),
            _ => None,
        };
        let turn = Turn::from_config(&config)?;
        let cluster = Cluster::connect(&config).await?;
        let addr = config.addr;
        let listener =
            Self::listen(&config).map_err(|source| StartError::Listen { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| StartError::Listen { addr, source })?;
        let relay = Relay::with(config, auth, tls).map_err(StartError::Runtime)?;
        let _ = relay.listen_addr.set(local_addr);
        let http_state = Arc::new(HttpState {
            turn,
            ..HttpState::default()
        });
        if let Some(cluster) = cluster {
            let _ = relay.cluster.set(cluster);
        }
        Ok(Self {
            relay,
            http_state,
            local_addr,
            listener,
        })
    }

    /// The listening socket `config` asks for.
    fn listen(config: &Config) -> io::Result<TcpListener> {
        let socket = if config.addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(config.addr)?;
        // A deep accept queue so a storm of joins is not dropped at SYN time.
        socket.listen(config.listen_backlog)
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The relay's shared state: counters, channel summaries, shutdown.
    pub fn relay(&self) -> &Arc<Relay> {
        &self.relay
    }

    /// Serves until [`Relay::begin_shutdown`], then gives every peer its
    /// close frame and waits (at most `--shutdown-grace-ms` plus a little)
    /// for the connections to finish.
    pub async fn run(self) -> io::Result<()> {
        let relay = self.relay;
        gc::spawn(&relay)?;
        state::history::spawn(&relay);
        if relay.config.stats_interval_ms > 0 {
            tokio::spawn(log_stats(relay.clone()));
        }
        tracing::info!(addr = %self.local_addr, tls = relay.tls.is_some(), "relay listening");
        let accept = tokio::spawn(accept_loop(self.listener, relay.clone(), self.http_state));
        relay.shutdown.begun().await;
        // Every session sends its close frame and ends; the last one's
        // guard wakes this wait.
        let grace = relay.config.shutdown_grace() + Duration::from_millis(500);
        if tokio::time::timeout(grace, relay.shutdown.drained())
            .await
            .is_err()
        {
            let left = relay.shutdown.sessions();
            tracing::warn!(left, "shutdown grace over with sessions still open");
        }
        let c = &relay.connections;
        // Dropping the accept loop closes the listening socket.
        accept.abort();
        if let Some(cluster) = relay.cluster.get() {
            // The node id is free at once for a restart.
            cluster.leave().await;
        }
        tracing::info!(open = c.open.get(), "relay stopped");
        Ok(())
    }
}

/// Accepts connections until the task is dropped. While the relay drains
/// at shutdown it keeps answering: health says 503, upgrades are refused.
async fn accept_loop(listener: TcpListener, relay: Arc<Relay>, http_state: Arc<HttpState>) {
    loop {
        match listener.accept().await {
            Ok((stream, addr)) => accept(&relay, &http_state, stream, addr),
            Err(e) => {
                // Typically EMFILE: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Decrements the open-connection gauge and the per-IP count (if this
/// connection was counted by its socket's address) when a connection task
/// ends, however it ends.
struct OpenGuard {
    relay: Arc<Relay>,
    ip: Option<IpAddr>,
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.relay.connections.open.sub(1);
        if let Some(ip) = self.ip {
            self.relay.release_ip(ip);
        }
    }
}

/// Bounds what the kernel may hold for this connection:
/// `--tcp-notsent-lowat-start` (raised by its egress once it keeps up) and
/// `--send-buffer` (best effort: a kernel without
/// the option leaves the default).
fn bound_kernel_buffers(stream: &TcpStream, cfg: &Config) {
    let sock = socket2::SockRef::from(stream);
    if cfg.send_buffer > 0 {
        if let Err(e) = sock.set_send_buffer_size(cfg.send_buffer) {
            tracing::debug!(error = %e, "SO_SNDBUF not set");
        }
    }
    if let Some(start) = cfg.notsent_lowat_start() {
        set_notsent_lowat(stream, start);
    }
}

fn accept(relay: &Arc<Relay>, http_state: &Arc<HttpState>, stream: TcpStream, addr: SocketAddr) {
    relay.connections.accepted.inc();
    let _ = stream.set_nodelay(true);
    bound_kernel_buffers(&stream, &relay.config);
    // A trusted proxy's connections count for the client it names, known
    // once the request head is read (admission counts them then).
    let proxied = proxy::is_trusted(&relay.config.trusted_proxies, addr.ip());
    let over = if relay.connections.open.get() >= relay.config.max_connections as u64 {
        Some(Refusal::ConnectionLimit)
    } else if !proxied && !relay.admit_ip(addr.ip()) {
        Some(Refusal::PerIpLimit)
    } else {
        None
    };
    if let Some(why) = over {
        relay.connections.refuse(why);
        relay
            .refusal_log
            .note(503, why.label(), why.label(), addr.ip());
        let stream = Conn::from(stream);
        tokio::spawn(async move { reply::answer(&stream, 503, why.label()).await });
        return;
    }
    relay.connections.open.inc();
    let guard = OpenGuard {
        relay: relay.clone(),
        ip: (!proxied).then_some(addr.ip()),
    };
    let http_state = http_state.clone();
    tokio::spawn(async move {
        let relay = &guard.relay.clone();
        let conn = match &relay.tls {
            None => Conn::from(stream),
            // Boxed: the TLS handshake's state would otherwise be part of
            // every connection's memory for its whole life.
            Some(tls) => match Box::pin(secure(relay, tls, stream, addr)).await {
                Some(conn) => conn,
                None => return,
            },
        };
        // The session is a task of its own, holding the guard: this task's
        // state (the socket as accepted, the handshake) ends here, and only
        // the session's stays with the connection for its whole life.
        if let Some(admitted) = Box::pin(admission::handle(relay, &http_state, conn, addr)).await {
            tokio::spawn(admitted.run(guard));
        }
    });
}

/// The TLS handshake of a connection to a TLS port, or its refusal
/// (counted; a client speaking plain HTTP is told so in plain HTTP).
async fn secure(relay: &Relay, tls: &Tls, stream: TcpStream, addr: SocketAddr) -> Option<Conn> {
    let timeout = relay.config.handshake_timeout();
    match tls::accept(tls.current(), stream, timeout).await {
        Ok(conn) => Some(conn),
        Err((why, plain)) => {
            relay.connections.refuse(why);
            tracing::debug!(peer = %addr, reason = why.label(), "refused");
            if let Some(conn) = plain {
                // Read its request first, so closing does not reset the answer.
                let head = handshake::read_request(&conn, relay.config.max_request_head);
                let _ = tokio::time::timeout(Duration::from_secs(1), head).await;
                reply::answer(&conn, 400, "this port speaks TLS: use https:// or wss://").await;
            }
            None
        }
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
            refused = s.refused_total(),
            "stats"
        );
        prev = s;
    }
}
