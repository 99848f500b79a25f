//! Command-line and environment configuration: every limit of the relay,
//! each readable as `--option` or `RELAY_<OPTION>`, with the defaults a real
//! deployment wants (thousands of receivers per channel are normal).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::relay::net::proxy::Cidr;

/// How frames reach a receiver's socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum EgressMode {
    /// Written by the task that fans the frame out, back to back for every
    /// receiver, one `send` each; only what the socket does not take is
    /// queued. The portable path, and what `uring` falls back to.
    Direct,
    /// Always queued; each peer's own task writes its queue with `writev`.
    /// Kept as the measured alternative (see `flamegraphs/README.md`).
    Queued,
    /// As `direct`, but the fan-out submits a frame's writes to all
    /// receivers (and the flushes after a burst) in batches through
    /// `io_uring`: one system call per 256 receivers instead of one each
    /// (the default; Linux, and `direct` where `io_uring` is unavailable).
    #[default]
    Uring,
}

impl EgressMode {
    /// True when the fan-out writes to sockets itself (`direct`, `uring`).
    pub(crate) fn writes_directly(self) -> bool {
        matches!(self, EgressMode::Direct | EgressMode::Uring)
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The relay's configuration. Durations are in milliseconds on the command
/// line so tests can use short ones; sizes are in bytes.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "bitstream-relay",
    version,
    about = "Fan-out WebSocket relay for PROTOCOL.md bitstreams"
)]
pub struct Config {
    /// Address to listen on: IP:PORT, or HOST:PORT with a host name that
    /// resolves (its first address is used; e.g. `localhost:9100`).
    #[arg(long, env = "RELAY_ADDR", default_value = "127.0.0.1:9100", value_parser = parse_addr)]
    pub addr: SocketAddr,
    /// Length of the kernel's accept queue (capped by net.core.somaxconn).
    #[arg(long, env = "RELAY_LISTEN_BACKLOG", default_value_t = 4096)]
    pub listen_backlog: u32,
    /// Worker threads of the async runtime (0 = one per core).
    #[arg(long, env = "RELAY_THREADS", default_value_t = 0)]
    pub threads: usize,
    /// Receivers at which a channel's fan-out is spread over one task per
    /// runtime worker (sharded by receiver).
    #[arg(long, env = "RELAY_FANOUT_SHARD_MIN", default_value_t = 512)]
    pub fanout_shard_min: usize,
    /// Maximum receivers per channel.
    #[arg(long, env = "RELAY_MAX_RECEIVERS", default_value_t = 20_000)]
    pub max_receivers: usize,
    /// Maximum signaling peers per channel.
    #[arg(long, env = "RELAY_MAX_SIGNAL_PEERS", default_value_t = 256)]
    pub max_signal_peers: usize,
    /// Maximum channels that exist at once.
    #[arg(long, env = "RELAY_MAX_CHANNELS", default_value_t = 10_000)]
    pub max_channels: usize,
    /// Maximum channels that exist at once having been created by one
    /// client IP address (IPv6: one /64).
    #[arg(long, env = "RELAY_MAX_CHANNELS_PER_IP", default_value_t = 100)]
    pub max_channels_per_ip: usize,
    /// Maximum open connections in total (handshakes included).
    #[arg(long, env = "RELAY_MAX_CONNECTIONS", default_value_t = 60_000)]
    pub max_connections: usize,
    /// Maximum open connections from one client IP address.
    #[arg(long, env = "RELAY_MAX_CONNECTIONS_PER_IP", default_value_t = 1_000)]
    pub max_connections_per_ip: usize,
    /// Maximum size of one message from a source, in bytes (default: one
    /// 3840×2160 RGBA keyframe fits). Larger messages close the peer with 1009.
    #[arg(long, env = "RELAY_MAX_MESSAGE", default_value_t = 32 * 1024 * 1024)]
    pub max_message: usize,
    /// Maximum size of one message from a receiver (inputs), in bytes.
    #[arg(long, env = "RELAY_MAX_INPUT_MESSAGE", default_value_t = 64 * 1024)]
    pub max_input_message: usize,
    /// Maximum size of one signaling text message, in bytes.
    #[arg(long, env = "RELAY_MAX_SIGNAL_MESSAGE", default_value_t = 64 * 1024)]
    pub max_signal_message: usize,
    /// Maximum size of a channel's folded signal state (JSON), in bytes.
    #[arg(long, env = "RELAY_MAX_SIGNAL_STATE", default_value_t = 1024 * 1024)]
    pub max_signal_state: usize,
    /// Per-peer outbound queue bound, in bytes. A receiver whose queue would
    /// exceed it is skipped forward and resynchronized from the catch-up state.
    /// Large frames in it are shared with every other receiver's queue (no
    /// copy), so its depth costs little memory, unlike the kernel's send
    /// buffer it replaces (see `--tcp-notsent-lowat`); the memory budget
    /// bounds the rest. 32 MiB (~36 frames of 640×360, ~1.2 s at 30 fps):
    /// at 8 MiB, receivers as a client library reads (whole messages, one
    /// task each) fell that far behind at full speed on a busy core and lost
    /// 27-213 frames in 4 of 4 runs; at 32 MiB, none in 3 of 3.
    #[arg(long, env = "RELAY_EGRESS_QUEUE", default_value_t = 32 * 1024 * 1024)]
    pub egress_queue: usize,
    /// Longest a source's next message waits, in ms, while more than half of
    /// its channel's receivers still hold earlier frames queued (receivers
    /// skipped forward left out): a source faster than most of its receivers
    /// is slowed to their pace instead of frames being dropped for all of
    /// them. Never while the source's frames arrive later than this behind
    /// their own timestamps, so pacing never makes a live stream staler.
    /// 0: never wait (receivers behind are skipped forward).
    #[arg(long, env = "RELAY_PACE_WAIT_MS", default_value_t = 100)]
    pub pace_wait_ms: u64,
    /// Most bytes written to a connection's socket that the kernel has not
    /// sent yet (`TCP_NOTSENT_LOWAT`; 0 = the kernel's default, unbounded
    /// up to the send buffer). A slow reader then backs up in the relay's
    /// own queue, where `--egress-queue` skips it forward and
    /// `--slow-timeout-ms` closes it, instead of in kernel memory that every
    /// connection of the host shares (300 slow readers filled 1.15 GiB of
    /// it and stalled a healthy receiver for seconds; with 1 MiB, 348 MiB
    /// and a healthy p99 of 7 ms). Full-speed readers drain it in
    /// microseconds on loopback and a few round trips remotely.
    #[arg(long, env = "RELAY_TCP_NOTSENT_LOWAT", default_value_t = 1024 * 1024)]
    pub tcp_notsent_lowat: u32,
    /// `TCP_NOTSENT_LOWAT` of a connection until its socket has shown it
    /// reads (1 MiB taken within 100 ms);
    /// then `--tcp-notsent-lowat`. A crowd of new or slow receivers then
    /// holds little kernel memory and costs the relay little copying (300
    /// slow readers joining at once stalled a healthy receiver of the same
    /// channel ~0.5 s at 1 MiB each, 5-14 ms at 128 KiB), while receivers
    /// that read get the full depth. 0: start at `--tcp-notsent-lowat`.
    #[arg(long, env = "RELAY_TCP_NOTSENT_LOWAT_START", default_value_t = 128 * 1024)]
    pub tcp_notsent_lowat_start: u32,
    /// Kernel send buffer of each connection (`SO_SNDBUF`, which the kernel
    /// doubles for its bookkeeping; 0 = the kernel's autotuning, up to
    /// `net.ipv4.tcp_wmem`'s maximum). A hard cap per socket, for hosts that
    /// must bound kernel memory exactly; `--tcp-notsent-lowat` alone keeps
    /// autotuning for what is in flight.
    #[arg(long, env = "RELAY_SEND_BUFFER", default_value_t = 0)]
    pub send_buffer: usize,
    /// How frames reach receivers' sockets: `direct` (written back to back
    /// by the fan-out), `uring` (the same writes submitted in batches
    /// through io_uring) or `queued` (each peer's task writes its queue).
    #[arg(long, env = "RELAY_EGRESS_MODE", value_enum, default_value_t = EgressMode::Uring)]
    pub egress_mode: EgressMode,
    /// Interval between pings to every peer, in milliseconds.
    #[arg(long, env = "RELAY_PING_INTERVAL_MS", default_value_t = 10_000)]
    pub ping_interval_ms: u64,
    /// A peer silent (no frame, no pong) for this long is dropped, in milliseconds.
    #[arg(long, env = "RELAY_KEEPALIVE_TIMEOUT_MS", default_value_t = 30_000)]
    pub keepalive_timeout_ms: u64,
    /// How long a channel without a source keeps its cached state, and how
    /// long an empty channel lives before the GC removes it, in milliseconds.
    #[arg(long, env = "RELAY_GRACE_MS", default_value_t = 30_000)]
    pub grace_ms: u64,
    /// Interval between GC scans of the channel map, in milliseconds.
    #[arg(long, env = "RELAY_GC_INTERVAL_MS", default_value_t = 1_000)]
    pub gc_interval_ms: u64,
    /// Time allowed to complete the HTTP/WebSocket handshake, in milliseconds.
    #[arg(long, env = "RELAY_HANDSHAKE_TIMEOUT_MS", default_value_t = 10_000)]
    pub handshake_timeout_ms: u64,
    /// Maximum size of the HTTP request head of a handshake, in bytes.
    #[arg(long, env = "RELAY_MAX_REQUEST_HEAD", default_value_t = 8 * 1024)]
    pub max_request_head: usize,
    /// Interval of the one-line stats summary in the log, in milliseconds (0 = off).
    #[arg(long, env = "RELAY_STATS_INTERVAL_MS", default_value_t = 10_000)]
    pub stats_interval_ms: u64,
    /// Time given to peers to take their close frames at shutdown, in milliseconds.
    #[arg(long, env = "RELAY_SHUTDOWN_GRACE_MS", default_value_t = 2_000)]
    pub shutdown_grace_ms: u64,
    /// Invalid messages a source may send before it is closed (1008).
    #[arg(long, env = "RELAY_MAX_INVALID", default_value_t = 100)]
    pub max_invalid: u64,
    /// A receiver whose queue has not drained for this long is closed with
    /// 3008 ("slow"), in milliseconds.
    #[arg(long, env = "RELAY_SLOW_TIMEOUT_MS", default_value_t = 15_000)]
    pub slow_timeout_ms: u64,
    /// A receiver skipped forward more than this many times within
    /// `--slow-window-ms` is closed with 3008; 0 (the default) never closes
    /// a receiver for being skipped: one slower than the stream keeps
    /// getting the latest state at the rate it can take, and only one that
    /// makes no progress at all for `--slow-timeout-ms` is closed.
    #[arg(long, env = "RELAY_SLOW_MAX_SKIPS", default_value_t = 0)]
    pub slow_max_skips: usize,
    /// The window for `--slow-max-skips`, in milliseconds.
    #[arg(long, env = "RELAY_SLOW_WINDOW_MS", default_value_t = 60_000)]
    pub slow_window_ms: u64,
    /// Inputs per second a receiver may send (token bucket rate).
    #[arg(long, env = "RELAY_INPUT_RATE", default_value_t = 1_000)]
    pub input_rate: u64,
    /// Inputs a receiver may send in a burst (token bucket size).
    #[arg(long, env = "RELAY_INPUT_BURST", default_value_t = 200)]
    pub input_burst: u64,
    /// A receiver with more than this many inputs dropped within one second
    /// is closed with 1008 as an abuser.
    #[arg(long, env = "RELAY_INPUT_FLOOD_DROPS", default_value_t = 2_000)]
    pub input_flood_drops: u64,
    /// Pings per second any peer may send (token bucket rate); pings over
    /// the rate are not answered, and more than `--input-flood-drops` of
    /// them within one second close the peer with 1008.
    #[arg(long, env = "RELAY_PING_RATE", default_value_t = 50)]
    pub ping_rate: u64,
    /// Pings a peer may send in a burst (token bucket size).
    #[arg(long, env = "RELAY_PING_BURST", default_value_t = 100)]
    pub ping_burst: u64,
    /// Serve `/echo`, which echoes every message through the relay's own read
    /// and write paths (for WebSocket conformance suites). Off by default.
    #[arg(long, env = "RELAY_ECHO_ENDPOINT", default_value_t = false)]
    pub echo_endpoint: bool,
    /// Channels exported one by one in `/metrics` (the busiest by bytes
    /// out); the rest are only in the totals.
    #[arg(long, env = "RELAY_METRICS_MAX_CHANNELS", default_value_t = 100)]
    pub metrics_max_channels: usize,
    /// Memory the relay may hold for clients, in bytes: received messages
    /// of 64 KiB and more from their first byte until their last reference
    /// is gone (in caches, queues, catch-ups), cached state, and what
    /// lagging receivers' queues hold besides. Near it the relay sheds:
    /// caches stop growing from 3/4, queues of lagging receivers from 7/8
    /// (they are skipped forward), and at the limit new messages of 64 KiB
    /// and more are refused with close code 1013 (messages of 4 MiB and more
    /// already from 7/8: the last eighth stays for ordinary frames, so huge
    /// uploads cannot starve a live stream). `/metrics` counts it.
    #[arg(long, env = "RELAY_MAX_MEMORY", default_value_t = 1 << 30)]
    pub max_memory: usize,
    /// The part of `--max-memory` cached catch-up state may take over all
    /// channels (keyframes, delta chains, signal state), in bytes. A channel
    /// whose cache would pass it stops caching (live frames still flow).
    #[arg(long, env = "RELAY_MAX_CACHE_MEMORY", default_value_t = 512 << 20)]
    pub max_cache_memory: usize,
    /// HS256 secret for tokens, read from this file (trailing whitespace
    /// ignored; use 32 random bytes or more). With it or
    /// `--jwt-public-key-file`, every request for a channel needs a token;
    /// without either the relay is open to anyone. `bitstream-relay token`
    /// mints with it.
    #[arg(long, env = "RELAY_JWT_SECRET_FILE", global = true)]
    pub jwt_secret_file: Option<PathBuf>,
    /// Public key (PEM: RSA, EC P-256 or Ed25519) verifying RS256, ES256 or
    /// EdDSA tokens, so the relay can check tokens it cannot mint.
    #[arg(long, env = "RELAY_JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<PathBuf>,
    /// Origins whose pages may open WebSockets, comma-separated (e.g.
    /// `https://a.example,https://b.example`); a handshake with another
    /// `Origin` is refused with 403. Empty: every origin is allowed. A
    /// handshake without `Origin` (not a browser) is not checked.
    #[arg(long, env = "RELAY_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// Address ranges of reverse proxies, comma-separated (e.g.
    /// `10.0.0.0/8,fd00::/8`): for a connection from one of them, the client
    /// address for the per-IP caps and the logs comes from its
    /// `X-Forwarded-For` (or `Forwarded`). Empty: the socket's address
    /// counts, so one proxy in front makes every client one address.
    #[arg(long, env = "RELAY_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<Cidr>,
    /// TLS certificate chain (PEM): with `--tls-key`, the port serves
    /// `wss://` and `https://` (TLS 1.2/1.3 through rustls) instead of
    /// `ws://`. SIGHUP reloads both files for new connections.
    #[arg(long, env = "RELAY_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM: PKCS#8, PKCS#1 or SEC1) of `--tls-cert`.
    #[arg(long, env = "RELAY_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Signal events a channel keeps for Server-Sent Events clients that
    /// reconnect with `Last-Event-ID` (`GET /events/{name}`); an older id
    /// gets a fresh `sync`. Kept only while a client listens, and for a
    /// minute after the last one left.
    #[arg(long, env = "RELAY_SSE_REPLAY_EVENTS", default_value_t = 1024)]
    pub sse_replay_events: usize,
    /// Bytes of recent frames a channel keeps for WebSocket resumes
    /// (`/stream/{name}?resume=SEQ`): frame bytes plus 64 per frame, small
    /// frames charged to `--max-memory`; 0 disables resumes.
    #[arg(long, env = "RELAY_RESUME_RING_BYTES", default_value_t = 4 << 20)]
    pub resume_ring_bytes: usize,
    /// Bytes all channels' resume rings may hold together: each ring holds
    /// at most the smaller of `--resume-ring-bytes` and an equal share of
    /// this among the channels that exist; 0 disables resumes.
    #[arg(long, env = "RELAY_MAX_RESUME_MEMORY", default_value_t = 64 << 20)]
    pub max_resume_memory: usize,
    /// Bytes of signal events a channel keeps for `Last-Event-ID` replay
    /// (charged to `--max-memory`); the oldest go first.
    #[arg(long, env = "RELAY_SSE_REPLAY_BYTES", default_value_t = 1 << 20)]
    pub sse_replay_bytes: usize,
    /// Per-client bound of queued Server-Sent Events, in bytes. A client
    /// whose queue would pass it gets one fresh `sync` instead of what it
    /// missed (it never holds up the source or other clients).
    #[arg(long, env = "RELAY_SSE_QUEUE", default_value_t = 1 << 20)]
    pub sse_queue: usize,
    /// Interval of the comment-line heartbeat on idle Server-Sent Events
    /// streams (keeps proxies from closing them), in milliseconds.
    #[arg(long, env = "RELAY_SSE_HEARTBEAT_MS", default_value_t = 15_000)]
    pub sse_heartbeat_ms: u64,
    /// TURN REST secret (coturn `static-auth-secret`), read from this file
    /// (trailing whitespace ignored): with `--turn-uris`, `GET /turn` hands
    /// out time-limited TURN credentials.
    #[arg(long, env = "RELAY_TURN_SECRET_FILE", requires = "turn_uris")]
    pub turn_secret_file: Option<PathBuf>,
    /// TURN/STUN server URIs returned by `GET /turn`, comma-separated (e.g.
    /// `turn:turn.example:3478,turns:turn.example:5349`).
    #[arg(
        long,
        env = "RELAY_TURN_URIS",
        value_delimiter = ',',
        requires = "turn_secret_file"
    )]
    pub turn_uris: Vec<String>,
    /// Lifetime of the TURN credentials `GET /turn` hands out, in seconds.
    #[arg(long, env = "RELAY_TURN_TTL", default_value_t = 86_400)]
    pub turn_ttl: u64,
    /// Log format.
    #[arg(long, env = "RELAY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Cluster mode: comma-separated NATS servers (nats://HOST:PORT,…) of
    /// the backplane, with JetStream (`nats-server -js`); off without it.
    #[arg(long, env = "RELAY_NATS_URL", value_delimiter = ',')]
    pub nats_url: Vec<String>,
    /// This node's name in the cluster, 1-64 of [A-Za-z0-9_-] (default: random).
    #[arg(long, env = "RELAY_NODE_ID")]
    pub node_id: Option<String>,
    /// NATS user name (with --nats-password).
    #[arg(long, env = "RELAY_NATS_USER", requires = "nats_password")]
    pub nats_user: Option<String>,
    /// NATS password (never logged; prefer the environment variable).
    #[arg(
        long,
        env = "RELAY_NATS_PASSWORD",
        hide_env_values = true,
        requires = "nats_user"
    )]
    pub nats_password: Option<Secret>,
    /// NATS credentials file (JWT and NKey seed, as `nsc` writes it).
    #[arg(long, env = "RELAY_NATS_CREDS_FILE", conflicts_with = "nats_user")]
    pub nats_creds_file: Option<PathBuf>,
    /// Lease of a channel's cluster-wide source claim, in milliseconds: a
    /// node renews it every third of it, stops publishing when it could not
    /// for two thirds, and a dead node's claim is free after it.
    #[arg(long, env = "RELAY_CLUSTER_LEASE_MS", default_value_t = 10_000)]
    pub cluster_lease_ms: u64,
    /// Bytes of frames a source's node may have waiting for NATS per
    /// channel; past it frames are dropped (the other nodes repair the gap).
    #[arg(long, env = "RELAY_CLUSTER_UPLINK_QUEUE", default_value_t = 96 << 20)]
    pub cluster_uplink_queue: usize,
    /// Time an incomplete set of fragments may take before it is dropped,
    /// and a catch-up fetch before it is retried, in milliseconds.
    #[arg(long, env = "RELAY_CLUSTER_TIMEOUT_MS", default_value_t = 5_000)]
    pub cluster_timeout_ms: u64,
    /// While a channel whose source is on this node has sent nothing for
    /// this long, tell the other nodes its last frame's number this often,
    /// so a loss at the end of a burst is noticed and repaired without
    /// waiting for the next frame, in milliseconds (0 = off).
    #[arg(long, env = "RELAY_CLUSTER_HEARTBEAT_MS", default_value_t = 1_000)]
    pub cluster_heartbeat_ms: u64,
}

/// Parses a listening address: `IP:PORT`, or `HOST:PORT` resolved to its
/// first address (IPv4 first, as a browser's `localhost` would reach it).
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse() {
        return Ok(addr);
    }
    let usage = "use IP:PORT (e.g. 127.0.0.1:9100 or [::1]:9100) or HOST:PORT";
    if s.rsplit_once(':')
        .is_none_or(|(_, port)| port.parse::<u16>().is_err())
    {
        return Err(format!("{s:?} has no port: {usage}"));
    }
    let addrs: Vec<SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(s)
        .map_err(|e| format!("cannot resolve {s:?} ({e}): {usage}"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("{s:?} resolves to no address: {usage}"))
}

/// A secret option: parsed like a string, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

impl Default for Config {
    fn default() -> Self {
        Self::parse_from(["bitstream-relay"])
    }
}

impl Config {
    /// Runtime worker threads in effect (`--threads`, or one per core).
    pub fn worker_threads(&self) -> usize {
        match self.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    /// The `TCP_NOTSENT_LOWAT` a connection starts with (None: the kernel's
    /// default).
    pub(crate) fn notsent_lowat_start(&self) -> Option<u32> {
        match (self.tcp_notsent_lowat_start, self.tcp_notsent_lowat) {
            (_, 0) => None,
            (0, full) => Some(full),
            (start, full) => Some(start.min(full)),
        }
    }

    /// `--ping-interval-ms` as a duration.
    pub(crate) fn ping_interval(&self) -> Duration {
        Duration::from_millis(self.ping_interval_ms.max(1))
    }
    /// `--keepalive-timeout-ms` as a duration.
    pub(crate) fn keepalive_timeout(&self) -> Duration {
        Duration::from_millis(self.keepalive_timeout_ms.max(1))
    }
    /// `--handshake-timeout-ms` as a duration.
    pub(crate) fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms.max(1))
    }
    /// `--slow-timeout-ms` as a duration.
    pub(crate) fn slow_timeout(&self) -> Duration {
        Duration::from_millis(self.slow_timeout_ms.max(1))
    }
    /// `--slow-window-ms` as a duration.
    pub(crate) fn slow_window(&self) -> Duration {
        Duration::from_millis(self.slow_window_ms)
    }
    /// `--sse-heartbeat-ms` as a duration.
    pub(crate) fn sse_heartbeat(&self) -> Duration {
        Duration::from_millis(self.sse_heartbeat_ms.max(1))
    }
    /// `--cluster-lease-ms` as a duration.
    pub(crate) fn cluster_lease(&self) -> Duration {
        Duration::from_millis(self.cluster_lease_ms.max(300))
    }
    /// `--cluster-timeout-ms` as a duration.
    pub(crate) fn cluster_timeout(&self) -> Duration {
        Duration::from_millis(self.cluster_timeout_ms.max(1))
    }
    /// `--cluster-heartbeat-ms` as a duration, `None` when off.
    pub(crate) fn cluster_heartbeat(&self) -> Option<Duration> {
        (self.cluster_heartbeat_ms > 0).then(|| Duration::from_millis(self.cluster_heartbeat_ms))
    }
    /// `--shutdown-grace-ms` as a duration.
    pub(crate) fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_sane() {
        let c = Config::default();
        assert_eq!(c.addr.to_string(), "127.0.0.1:9100");
        assert!(c.max_message >= 33_177_616 && c.max_message < 64 * 1024 * 1024);
        assert!(c.ping_interval_ms <= 15_000);
        assert!(c.max_receivers >= 1000);
    }

    #[test]
    fn addresses_take_host_names() {
        assert_eq!(parse_addr("127.0.0.1:9").map(|a| a.port()), Ok(9));
        assert_eq!(parse_addr("[::1]:9").map(|a| a.is_ipv6()), Ok(true));
        let local = parse_addr("localhost:9100").expect("localhost resolves");
        assert!(local.ip().is_loopback() && local.port() == 9100);
        assert!(parse_addr("localhost").unwrap_err().contains("no port"));
        assert!(parse_addr("no-such-host.invalid:1")
            .unwrap_err()
            .contains("use IP:PORT"));
    }

    #[test]
    fn flags_override() {
        let c = Config::parse_from(["x", "--max-receivers", "64", "--addr", "127.0.0.1:1"]);
        assert_eq!(c.max_receivers, 64);
        assert_eq!(c.addr.port(), 1);
    }
}
