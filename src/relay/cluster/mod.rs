//! Cluster mode (`--nats-url`): several relays share channels over a NATS
//! backplane. Without `--nats-url` none of this runs and the relay makes no
//! NATS connection.
//!
//! - The node holding a channel's source publishes each of its frames once
//!   to `bsr.f.<channel>` ([`uplink`]), split into fragments under NATS's
//!   `max_payload` ([`fragment`]), with a per-channel sequence.
//! - A node subscribes to a channel's frames only while it has receivers of
//!   it ([`downlink`]), reassembles them, and fans them out locally exactly
//!   as a local source's frames (cached, the same zero-copy egress). A late
//!   joiner's node first fetches the catch-up state from the source's node
//!   (request/reply on `bsr.c.<channel>`); a sequence gap (NATS core is
//!   at-most-once) is repaired by a fresh catch-up, never by forwarding a
//!   broken delta chain. While the channel is idle the source's node sends
//!   a small heartbeat with the last frame's number every
//!   `--cluster-heartbeat-ms`, so a loss at the end of a burst is repaired
//!   the same way without waiting for the next frame.
//! - One source per channel cluster-wide: a claim with a lease in a
//!   JetStream key-value bucket ([`claim`]), naming the process that holds
//!   it (node id and a random instance id).
//! - One process per node id: a relay announces its `--node-id` in the same
//!   bucket and refuses to start while another live process holds it
//!   ([`presence`]; a restart waits for its predecessor's to lapse).
//! - Inputs from receivers on any node go to `bsr.i.<channel>`, which the
//!   source's node subscribes to; signaling text to `bsr.s.<channel>`,
//!   which every node with signaling peers of the channel subscribes to
//!   ([`signaling`]).

pub(crate) mod claim;
pub(crate) mod downlink;
mod follower;
pub(crate) mod fragment;
pub(crate) mod presence;
pub(crate) mod signaling;
pub(crate) mod uplink;

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::{ConnectOptions, Event};
use dashmap::DashMap;
use serde_json::{json, Value};
use thiserror::Error;

use crate::relay::config::Config;
use crate::relay::resources::stats::Counter;

/// The key-value bucket of source claims.
pub(crate) const CLAIMS_BUCKET: &str = "bitstream_relay_sources";

/// Why cluster mode could not start.
#[derive(Debug, Error)]
pub enum ClusterError {
    /// `--node-id` is not a valid node name.
    #[error("--node-id must be 1-64 characters of [A-Za-z0-9_-], got {0:?}")]
    NodeId(String),
    /// The credentials file could not be read.
    #[error("cannot read --nats-creds-file {path}: {reason}")]
    Creds {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// No NATS server of `--nats-url` could be reached.
    #[error("cannot connect to NATS at {urls}: {reason}")]
    Connect {
        /// The servers (without credentials).
        urls: String,
        /// Why.
        reason: String,
    },
    /// Another live relay process holds this `--node-id` (see the cluster's presence key).
    #[error("--node-id {node:?} is live in the cluster: another relay process (instance {instance}) {verdict}; give this relay another --node-id or stop that one (a relay stopped cleanly frees its id at once, a killed one within {ttl_ms} ms, which a restart waits for)")]
    NodeIdLive {
        /// The node id.
        node: String,
        /// The other process's instance id.
        instance: String,
        /// What it did while this one waited.
        verdict: String,
        /// How long a presence outlives its last renewal.
        ttl_ms: u64,
    },
    /// This node id's presence could not be read or written.
    #[error("cannot announce --node-id {node:?} in the claims bucket: {reason}")]
    Presence {
        /// The node id.
        node: String,
        /// Why.
        reason: String,
    },
    /// The server has no JetStream, which source claims need.
    #[error("NATS at {urls} has no JetStream, which the cluster's source claims need: start it with `nats-server -js` ({reason})")]
    NoJetStream {
        /// The servers (without credentials).
        urls: String,
        /// Why.
        reason: String,
    },
}

/// The backplane connection's state, for `/healthz` and the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Backplane {
    Connected = 0,
    Disconnected = 1,
    Closed = 2,
}

impl Backplane {
    fn label(self) -> &'static str {
        match self {
            Backplane::Connected => "connected",
            Backplane::Disconnected => "disconnected",
            Backplane::Closed => "closed",
        }
    }
}

/// Cluster counters (`relay_cluster_*` in `/metrics`).
#[derive(Debug, Default)]
pub(crate) struct ClusterStats {
    pub(crate) msgs_out: Counter,
    pub(crate) bytes_out: Counter,
    pub(crate) msgs_in: Counter,
    pub(crate) bytes_in: Counter,
    pub(crate) frames_out: Counter,
    pub(crate) frames_in: Counter,
    pub(crate) fragments_out: Counter,
    pub(crate) fragments_in: Counter,
    pub(crate) incomplete_dropped: Counter,
    pub(crate) uplink_dropped: Counter,
    pub(crate) gaps: Counter,
    pub(crate) trailing_gaps: Counter,
    pub(crate) heartbeats_out: Counter,
    pub(crate) reassembly_refused: Counter,
    pub(crate) catchup_fetches: Counter,
    pub(crate) catchups_served: Counter,
    pub(crate) inputs_out: Counter,
    pub(crate) inputs_in: Counter,
    pub(crate) reconnects: Counter,
    pub(crate) lease_lost: Counter,
}

/// This node's membership of the cluster. See the module docs.
#[derive(Debug)]
pub(crate) struct Cluster {
    /// This node's id.
    pub(crate) node: Arc<str>,
    /// This process: the node id and a random instance id.
    pub(crate) me: claim::Holder,
    /// `me` as claims store it.
    pub(crate) lease_value: Vec<u8>,
    pub(crate) client: async_nats::Client,
    pub(crate) claims: claim::Claims,
    /// This process's presence under its node id.
    presence: presence::Presence,
    state: Arc<AtomicU8>,
    pub(crate) stats: Arc<ClusterStats>,
    /// Channels this node follows from another node, by name.
    pub(crate) downlinks: DashMap<Arc<str>, downlink::Entry>,
    /// Channels whose signaling this node hears from the others, by name.
    pub(crate) signaling: DashMap<Arc<str>, signaling::Follow>,
    pub(crate) lease: Duration,
    pub(crate) timeout: Duration,
    /// `--cluster-heartbeat-ms`, `None` when off.
    pub(crate) heartbeat: Option<Duration>,
    pub(crate) uplink_queue: usize,
    pub(crate) max_message: usize,
    /// Inputs for sources and signaling messages for peers on other nodes,
    /// published in order by one task.
    pub(crate) inputs: tokio::sync::mpsc::Sender<(String, bytes::Bytes)>,
    urls: String,
}

/// `nats://user:pass@host` without its credentials, for messages and logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}{}", &url[..s + 3], &url[at + 1..]),
        (None, Some(at)) => url[at + 1..].to_owned(),
        _ => url.to_owned(),
    }
}

/// A random id (16 hex digits): a node id by default, and every process's
/// instance id.
fn random_id() -> String {
    format!("{:016x}", crate::relay::resources::clock::random_u64())
}

/// The subject token of a channel: its name, with `.` (a subject
/// separator, but allowed in names) as `=` (allowed in neither names nor
/// anything else here, so the mapping is one to one). Also a valid
/// key-value key.
pub(crate) fn token(name: &str) -> String {
    name.replace('.', "=")
}

/// The subject of a channel's live frames.
pub(crate) fn frames_subject(name: &str) -> String {
    format!("bsr.f.{}", token(name))
}

/// The subject a channel's catch-up is asked for on.
pub(crate) fn catchup_subject(name: &str) -> String {
    format!("bsr.c.{}", token(name))
}

/// The subject of inputs for a channel's source.
pub(crate) fn input_subject(name: &str) -> String {
    format!("bsr.i.{}", token(name))
}

impl Cluster {
    /// Connects to the backplane `config` names, checks JetStream and opens
    /// the claims bucket; `None` without `--nats-url`.
    pub(crate) async fn connect(config: &Config) -> Result<Option<Arc<Cluster>>, ClusterError> {
        if config.nats_url.is_empty() {
            return Ok(None);
        }
        let node = match &config.node_id {
            Some(n)
                if !n.is_empty()
                    && n.len() <= fragment::MAX_NODE
                    && n.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
            {
                n.clone()
            }
            Some(n) => return Err(ClusterError::NodeId(n.clone())),
            None => random_id(),
        };
        let urls = config
            .nats_url
            .iter()
            .map(|u| redact(u))
            .collect::<Vec<_>>()
            .join(",");
        let mut opts = match &config.nats_creds_file {
            Some(path) => ConnectOptions::with_credentials_file(path)
                .await
                .map_err(|e| ClusterError::Creds {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?,
            None => ConnectOptions::new(),
        };
        if let (Some(user), Some(pass)) = (&config.nats_user, &config.nats_password) {
            opts = opts.user_and_password(user.clone(), pass.0.clone());
        }
        let state = Arc::new(AtomicU8::new(Backplane::Connected as u8));
        let stats = Arc::new(ClusterStats::default());
        let (st, counters, log_node) = (state.clone(), stats.clone(), node.clone());
        opts = opts
            .name(format!("bitstream-relay {node}"))
            .no_echo()
            .connection_timeout(Duration::from_secs(5))
            .max_reconnects(None)
            .subscription_capacity(8192)
            .event_callback(move |ev| {
                let (st, counters, node) = (st.clone(), counters.clone(), log_node.clone());
                async move {
                    match ev {
                        Event::Connected => {
                            let was = st.swap(Backplane::Connected as u8, Ordering::SeqCst);
                            if was != Backplane::Connected as u8 {
                                counters.reconnects.inc();
                                tracing::info!(%node, "NATS backplane reconnected");
                            }
                        }
                        Event::Disconnected => {
                            st.store(Backplane::Disconnected as u8, Ordering::SeqCst);
                            tracing::warn!(%node, "NATS backplane disconnected: local receivers are still served, reconnecting");
                        }
                        Event::Closed => {
                            st.store(Backplane::Closed as u8, Ordering::SeqCst);
                            tracing::warn!(%node, "NATS backplane connection closed");
                        }
                        other => tracing::debug!(%node, event = %other, "NATS event"),
                    }
                }
            });
        let addrs: Vec<async_nats::ServerAddr> = config
            .nats_url
            .iter()
            .map(|u| u.parse())
            .collect::<Result<_, _>>()
            .map_err(|e: std::io::Error| ClusterError::Connect {
                urls: urls.clone(),
                reason: e.to_string(),
            })?;
        let client = opts
            .connect(addrs)
            .await
            .map_err(|e| ClusterError::Connect {
                urls: urls.clone(),
                reason: e.to_string(),
            })?;
        let no_js = |reason: String| ClusterError::NoJetStream {
            urls: urls.clone(),
            reason,
        };
        let lease = config.cluster_lease();
        let claims = claim::Claims::open(&client, lease)
            .await
            .map_err(|e| no_js(e.to_string()))?;
        let me = claim::Holder {
            node: node.clone(),
            instance: random_id(),
        };
        let presence = presence::Presence::announce(&claims, &me).await?;
        let max_payload = client.server_info().max_payload;
        let (inputs, rx) = tokio::sync::mpsc::channel(4096);
        tokio::spawn(Cluster::forward_inputs(client.clone(), rx));
        tracing::info!(%node, instance = %me.instance, servers = %urls, max_payload, lease_ms = lease.as_millis() as u64, "cluster mode: NATS backplane connected");
        Ok(Some(Arc::new(Cluster {
            node: Arc::from(node),
            lease_value: me.encode(),
            me,
            client,
            claims,
            presence,
            state,
            stats,
            downlinks: DashMap::new(),
            signaling: DashMap::new(),
            lease,
            timeout: config.cluster_timeout(),
            heartbeat: config.cluster_heartbeat(),
            uplink_queue: config.cluster_uplink_queue,
            max_message: config.max_message,
            inputs,
            urls,
        })))
    }

    /// Gives up this node id (a clean stop): another process may take it
    /// at once.
    pub(crate) async fn leave(&self) {
        let _ = tokio::time::timeout(self.timeout, self.presence.leave()).await;
    }

    /// The backplane's state now.
    pub(crate) fn backplane(&self) -> Backplane {
        match self.state.load(Ordering::SeqCst) {
            0 => Backplane::Connected,
            1 => Backplane::Disconnected,
            _ => Backplane::Closed,
        }
    }

    /// Returns once nats-server has processed everything this node sent
    /// before (its new subscriptions above all), so a message another node
    /// publishes after this reaches them. `flush` only writes to the
    /// socket; a request to a subject nobody serves is answered "no
    /// responders" by the server itself, after every earlier command.
    pub(crate) async fn barrier(&self) {
        // Nobody subscribes to it, on any node.
        let request = self.client.request("bsr.barrier", bytes::Bytes::new());
        let _ = tokio::time::timeout(self.timeout, request).await;
    }

    /// Largest NATS message the server takes.
    pub(crate) fn max_payload(&self) -> usize {
        self.client.server_info().max_payload.max(4096)
    }

    /// The cluster's counters (name, help, value), which `/metrics`
    /// exports as `relay_cluster_*`.
    pub(crate) fn counters(&self) -> impl Iterator<Item = (&'static str, &'static str, u64)> + '_ {
        let s = &self.stats;
        [
            ("messages_out", "NATS messages published", &s.msgs_out),
            ("bytes_out", "Bytes published to NATS", &s.bytes_out),
            (
                "messages_in",
                "NATS messages received (frames and catch-ups)",
                &s.msgs_in,
            ),
            ("bytes_in", "Bytes received from NATS", &s.bytes_in),
            (
                "frames_out",
                "Frames published for other nodes",
                &s.frames_out,
            ),
            (
                "frames_in",
                "Frames from other nodes fanned out here",
                &s.frames_in,
            ),
            (
                "fragments_out",
                "Fragments published (frames over max_payload)",
                &s.fragments_out,
            ),
            ("fragments_in", "Fragments received", &s.fragments_in),
            (
                "incomplete_dropped",
                "Incomplete fragment sets dropped (lost fragment or timeout)",
                &s.incomplete_dropped,
            ),
            (
                "uplink_dropped",
                "Frames not published: the uplink queue was full",
                &s.uplink_dropped,
            ),
            (
                "gaps_repaired",
                "Sequence gaps detected and repaired by a catch-up",
                &s.gaps,
            ),
            (
                "trailing_gaps_repaired",
                "Losses at the end of a burst a heartbeat showed, repaired by a catch-up (also in gaps_repaired)",
                &s.trailing_gaps,
            ),
            (
                "heartbeats_out",
                "Heartbeats published for idle channels whose source is here",
                &s.heartbeats_out,
            ),
            (
                "reassembly_refused",
                "Frames from other nodes refused: --max-memory could not take their reassembly buffer",
                &s.reassembly_refused,
            ),
            (
                "catchup_fetches",
                "Catch-up fetches from the source's node",
                &s.catchup_fetches,
            ),
            (
                "catchups_served",
                "Catch-ups served to other nodes",
                &s.catchups_served,
            ),
            (
                "inputs_out",
                "Inputs sent to sources on other nodes",
                &s.inputs_out,
            ),
            (
                "inputs_in",
                "Inputs from receivers on other nodes",
                &s.inputs_in,
            ),
            (
                "reconnects",
                "Reconnections to the NATS backplane",
                &s.reconnects,
            ),
            (
                "lease_lost",
                "Source claims that could not be renewed or were lost",
                &s.lease_lost,
            ),
        ]
        .into_iter()
        .map(|(name, help, c)| (name, help, c.get()))
    }

    /// The `backplane` object of `/healthz`.
    pub(crate) fn health(&self) -> Value {
        json!({
            "state": self.backplane().label(),
            "node": &*self.node,
            "instance": self.me.instance,
            "servers": self.urls,
            "connected_server": self.client.server_info().port,
            "reconnects": self.stats.reconnects.get(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_shown_without_credentials() {
        assert_eq!(redact("nats://u:p@h:4222"), "nats://h:4222");
        assert_eq!(redact("nats://h:4222"), "nats://h:4222");
        assert_eq!(redact("u:p@h"), "h");
    }

    #[test]
    fn channel_names_map_one_to_one_onto_subject_tokens() {
        assert_eq!(frames_subject("cam.1"), "bsr.f.cam=1");
        assert_ne!(token("a.b"), token("a-b"));
        assert!(!token("..").contains('.'));
        let id = random_id();
        assert_eq!(id.len(), 16);
        assert_ne!(id, random_id());
    }
}
