//! One source per channel across the cluster: a claim with a lease in the
//! JetStream key-value bucket [`CLAIMS_BUCKET`](super::CLAIMS_BUCKET).
//!
//! A node whose local source slot is free claims the channel's key with
//! `create` (atomic: it fails if the key holds a live claim), its value the
//! process that holds it ([`Holder`]: the node id and a random id of this
//! process, so two processes started with one `--node-id` never both own a
//! channel). The bucket's `max_age` is the lease: the owner renews the key
//! every third of it with `update` at the revision it holds (so it never
//! overwrites another node's claim), and a dead node's claim is gone a
//! lease after its last renewal. A claim already held by this process (a
//! source that just left here) is taken over: the local slot already
//! guarantees one source on this node. One held by an earlier process of
//! this node id (killed, then restarted) is another's: it frees a lease
//! after that process's last renewal, as a dead node's does.
//!
//! Partitions: an owner that could not renew for two thirds of the lease
//! is *fenced* (its frames stop going to NATS; its local receivers are
//! still served), so it stops before the server can let another node
//! claim. It keeps trying; when it holds the claim again it is unfenced
//! (the other nodes see a sequence gap and fetch a catch-up). If another
//! node claimed meanwhile, this one stays fenced until that claim goes.
//! The bucket is in memory: a NATS restart loses it, and owners re-create
//! it and their claims at their next renewal.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use base64::Engine;
use bytes::Bytes;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::{token, Cluster, CLAIMS_BUCKET};

/// The claims bucket over core NATS: the JetStream key-value conventions
/// (stream `KV_<bucket>`, subjects `$KV.<bucket>.<key>`, one message per
/// key, revision = stream sequence) spoken as plain requests with JSON
/// answers, so any JetStream server (2.9 and later) will do.
#[derive(Debug, Clone)]
pub(crate) struct Claims {
    client: async_nats::Client,
    lease: Duration,
    /// The bucket's `max_age` as the server has it (the bucket may have
    /// been made by a node with another lease): how long a key lives after
    /// its last write.
    pub(super) ttl: Duration,
}

/// A key's current value and revision.
pub(super) struct Entry {
    pub(super) value: Vec<u8>,
    pub(super) revision: u64,
    pub(super) deleted: bool,
}

/// What [`Claims::take`] found.
pub(super) enum Take {
    /// The key is ours now, at this revision.
    Held(u64),
    /// Another process holds it: its value, at this revision.
    Other { value: Vec<u8>, revision: u64 },
    /// It changed between two requests: try again.
    Changed,
}

/// Who holds a claim (or a node id's presence, see [`super::presence`]):
/// a node id and the process under it. Stored as `node@instance` (node ids
/// have no `@`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Holder {
    /// The relay's `--node-id`.
    pub(crate) node: String,
    /// Random per process; empty in a value written by a relay that named
    /// only its node (never this process's).
    pub(crate) instance: String,
}

impl Holder {
    /// The key-value value naming this holder.
    pub(crate) fn encode(&self) -> Vec<u8> {
        format!("{}@{}", self.node, self.instance).into_bytes()
    }

    /// The holder a key-value value names (whatever its bytes).
    pub(crate) fn decode(value: &[u8]) -> Holder {
        let text = String::from_utf8_lossy(value);
        match text.split_once('@') {
            Some((node, instance)) => Holder {
                node: node.to_owned(),
                instance: instance.to_owned(),
            },
            None => Holder {
                node: text.into_owned(),
                instance: String::new(),
            },
        }
    }

    /// How a refusal names the holder, seen from `me`.
    pub(crate) fn describe(&self, me: &Holder) -> String {
        if self.node == me.node {
            format!("{}, another process with this node id", self.node)
        } else {
            self.node.clone()
        }
    }
}

/// JetStream error code: a publish's expected last sequence did not match.
const WRONG_LAST_SEQUENCE: u64 = 10071;
/// JetStream error code: a stream of that name exists (with another config).
const STREAM_NAME_IN_USE: u64 = 10058;
/// JetStream error code: no message for the subject.
const NO_MESSAGE: u64 = 10037;

type Error = Box<dyn std::error::Error + Send + Sync>;

fn stream() -> String {
    format!("KV_{CLAIMS_BUCKET}")
}

fn subject(key: &str) -> String {
    format!("$KV.{CLAIMS_BUCKET}.{key}")
}

/// A JetStream API answer: `Ok(json)` or `Err(err_code, description)`.
fn answer(payload: &[u8]) -> Result<Value, (u64, String)> {
    let v: Value = serde_json::from_slice(payload).map_err(|e| (0, e.to_string()))?;
    match v.get("error") {
        Some(e) => Err((
            e["err_code"].as_u64().unwrap_or(0),
            e["description"]
                .as_str()
                .unwrap_or("JetStream error")
                .to_owned(),
        )),
        None => Ok(v),
    }
}

impl Claims {
    /// Opens (creating if needed) the claims bucket with `lease` as its max
    /// age. Fails if the server has no JetStream.
    pub(crate) async fn open(client: &async_nats::Client, lease: Duration) -> Result<Self, Error> {
        let ns = lease.as_nanos() as u64;
        let cfg = json!({
            "name": stream(),
            "description": "bitstream-relay: which node holds each channel's source",
            "subjects": [format!("$KV.{CLAIMS_BUCKET}.>")],
            "retention": "limits",
            "max_consumers": -1, "max_msgs": -1, "max_bytes": -1, "max_msg_size": -1,
            "max_msgs_per_subject": 1,
            "max_age": ns,
            "duplicate_window": ns.min(120_000_000_000),
            "storage": "memory",
            "discard": "new",
            "num_replicas": 1,
            "allow_rollup_hdrs": true,
            "deny_delete": true,
        });
        let reply = client
            .request(
                format!("$JS.API.STREAM.CREATE.{}", stream()),
                Bytes::from(cfg.to_string()),
            )
            .await
            .map_err(|e| match e.kind() {
                async_nats::client::RequestErrorKind::NoResponders => {
                    Error::from("the JetStream API does not answer (no responders)")
                }
                _ => Error::from(e),
            })?;
        let info = match answer(&reply.payload) {
            Ok(v) => v,
            // Made by a node with another lease: used as it is.
            Err((STREAM_NAME_IN_USE, _)) => {
                let reply = client
                    .request(format!("$JS.API.STREAM.INFO.{}", stream()), Bytes::new())
                    .await?;
                answer(&reply.payload).map_err(|(_, why)| why)?
            }
            Err((_, why)) => return Err(why.into()),
        };
        let ttl = info["config"]["max_age"]
            .as_u64()
            .filter(|&ns| ns > 0)
            .map_or(lease, Duration::from_nanos);
        Ok(Self {
            client: client.clone(),
            lease,
            ttl,
        })
    }

    /// Opens the bucket again (made anew if a restarted server lost it).
    pub(super) async fn reopen(&self) {
        if let Ok(c) = Claims::open(&self.client, self.lease).await {
            drop(c);
        }
    }

    /// Takes `key` for `value`: creates it, or writes over a delete marker
    /// or a message holding `value` already (this process's own).
    pub(super) async fn take(&self, key: &str, value: &[u8]) -> Result<Take, Error> {
        if let Some(rev) = self.put(key, value, 0, false).await? {
            return Ok(Take::Held(rev));
        }
        Ok(match self.entry(key).await? {
            Some(e) if e.deleted || e.value == value => {
                match self.put(key, value, e.revision, false).await? {
                    Some(rev) => Take::Held(rev),
                    None => Take::Changed,
                }
            }
            Some(e) => Take::Other {
                value: e.value,
                revision: e.revision,
            },
            None => Take::Changed,
        })
    }

    /// The key's last message, if any.
    async fn entry(&self, key: &str) -> Result<Option<Entry>, Error> {
        let req = json!({ "last_by_subj": subject(key) });
        let reply = self
            .client
            .request(
                format!("$JS.API.STREAM.MSG.GET.{}", stream()),
                Bytes::from(req.to_string()),
            )
            .await?;
        let v = match answer(&reply.payload) {
            Ok(v) => v,
            Err((NO_MESSAGE, _)) => return Ok(None),
            Err((_, why)) => return Err(why.into()),
        };
        let b64 = base64::engine::general_purpose::STANDARD;
        let m = &v["message"];
        let field = |k: &str| b64.decode(m[k].as_str().unwrap_or("")).unwrap_or_default();
        let hdrs = String::from_utf8_lossy(&field("hdrs")).to_ascii_uppercase();
        Ok(Some(Entry {
            value: field("data"),
            revision: m["seq"].as_u64().unwrap_or(0),
            deleted: hdrs.contains("KV-OPERATION: DEL") || hdrs.contains("KV-OPERATION: PURGE"),
        }))
    }

    /// Writes `value` (or a delete marker) if the key's revision is still
    /// `expected` (0: no message): the new revision, or `Ok(None)` if it
    /// was not.
    pub(super) async fn put(
        &self,
        key: &str,
        value: &[u8],
        expected: u64,
        delete: bool,
    ) -> Result<Option<u64>, Error> {
        let mut headers = HeaderMap::new();
        headers.insert(
            "Nats-Expected-Last-Subject-Sequence",
            expected.to_string().as_str(),
        );
        if delete {
            headers.insert("KV-Operation", "DEL");
        }
        let reply = self
            .client
            .request_with_headers(subject(key), headers, Bytes::copy_from_slice(value))
            .await?;
        match answer(&reply.payload) {
            Ok(v) => Ok(v["seq"].as_u64()),
            Err((WRONG_LAST_SEQUENCE, _)) => Ok(None),
            Err((_, why)) => Err(why.into()),
        }
    }
}

/// Why a claim was not granted.
#[derive(Debug)]
pub(crate) enum ClaimError {
    /// Another node (or another process of this node id) holds the
    /// channel's source: how to name it.
    Taken(String),
    /// The backplane did not answer.
    Unavailable(String),
}

/// A held claim; released (and its renewal stopped) when dropped.
#[derive(Debug)]
pub(crate) struct Claim {
    /// True while this node may publish the channel (see the module docs).
    pub(crate) live: Arc<AtomicBool>,
    renew: tokio::task::JoinHandle<()>,
    release: Option<(Arc<Cluster>, String, Arc<AtomicU64>)>,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.renew.abort();
        if let Some((cluster, key, rev)) = self.release.take() {
            let rev = rev.load(Ordering::SeqCst);
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = cluster.claims.put(&key, b"", rev, true).await;
                });
            }
        }
    }
}

/// One claim attempt: the revision now held. A claim this process holds
/// already, or a free one, is taken (see the module docs).
async fn try_claim(cluster: &Cluster, key: &str) -> Result<u64, ClaimError> {
    let taken = cluster
        .claims
        .take(key, &cluster.lease_value)
        .await
        .map_err(|e| ClaimError::Unavailable(e.to_string()))?;
    match taken {
        Take::Held(rev) => Ok(rev),
        Take::Other { value, .. } => Err(ClaimError::Taken(
            Holder::decode(&value).describe(&cluster.me),
        )),
        Take::Changed => Err(ClaimError::Unavailable("claim changed meanwhile".into())),
    }
}

impl Cluster {
    /// Claims channel `name`'s source for this node, or says who holds it.
    pub(crate) async fn claim(self: &Arc<Self>, name: &str) -> Result<Claim, ClaimError> {
        let key = token(name);
        let timeout = self.timeout;
        let rev = match tokio::time::timeout(timeout, try_claim(self, &key)).await {
            Ok(r) => r?,
            Err(_) => return Err(ClaimError::Unavailable("timed out".into())),
        };
        let live = Arc::new(AtomicBool::new(true));
        let revision = Arc::new(AtomicU64::new(rev));
        let renew = tokio::spawn(renew(
            self.clone(),
            key.clone(),
            name.to_owned(),
            live.clone(),
            revision.clone(),
        ));
        Ok(Claim {
            live,
            renew,
            release: Some((self.clone(), key, revision)),
        })
    }
}

/// Renews a claim every third of the lease; fences and unfences it (see
/// the module docs).
async fn renew(
    cluster: Arc<Cluster>,
    key: String,
    name: String,
    live: Arc<AtomicBool>,
    revision: Arc<AtomicU64>,
) {
    let every = cluster.lease / 3;
    let mut last_ok = Instant::now();
    loop {
        tokio::time::sleep(every).await;
        let rev = revision.load(Ordering::SeqCst);
        let attempt = async {
            match cluster
                .claims
                .put(&key, &cluster.lease_value, rev, false)
                .await
            {
                Ok(Some(r)) => Ok(r),
                // Expired, taken, or the bucket went with a restarted server.
                Ok(None) => try_claim(&cluster, &key).await,
                Err(e) => {
                    tracing::debug!(channel = %name, error = %e, "claim renewal failed");
                    cluster.claims.reopen().await;
                    try_claim(&cluster, &key).await
                }
            }
        };
        match tokio::time::timeout(every, attempt).await {
            Ok(Ok(r)) => {
                revision.store(r, Ordering::SeqCst);
                last_ok = Instant::now();
                if !live.swap(true, Ordering::SeqCst) {
                    tracing::info!(channel = %name, "source claim held again: publishing to the cluster");
                }
            }
            Ok(Err(ClaimError::Taken(other))) => {
                if live.swap(false, Ordering::SeqCst) {
                    cluster.stats.lease_lost.inc();
                    tracing::warn!(channel = %name, holder = %other, "source claim lost to another node: this node's source now reaches only its local receivers");
                }
            }
            Ok(Err(ClaimError::Unavailable(_))) | Err(_) => {
                if last_ok.elapsed() >= cluster.lease * 2 / 3 && live.swap(false, Ordering::SeqCst)
                {
                    cluster.stats.lease_lost.inc();
                    tracing::warn!(channel = %name, "source claim could not be renewed: no longer publishing to the cluster until it is");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(node: &str, instance: &str) -> Holder {
        Holder {
            node: node.into(),
            instance: instance.into(),
        }
    }

    #[test]
    fn a_lease_value_names_the_node_and_the_process() {
        let me = holder("a-1_x", "0123456789abcdef");
        assert_eq!(me.encode(), b"a-1_x@0123456789abcdef");
        assert_eq!(Holder::decode(&me.encode()), me);
        // Another process of the same node id is another holder.
        let twin = holder("a-1_x", "fedcba9876543210");
        assert_ne!(twin.encode(), me.encode());
        assert_eq!(
            twin.describe(&me),
            "a-1_x, another process with this node id"
        );
        assert_eq!(holder("b", "1").describe(&me), "b");
    }

    #[test]
    fn a_value_naming_only_a_node_is_no_process_of_ours() {
        // As a relay before process ids wrote it: never this process's.
        let old = Holder::decode(b"a");
        assert_eq!(old, holder("a", ""));
        assert_ne!(old.encode(), holder("a", "0123456789abcdef").encode());
        assert_eq!(Holder::decode(b""), holder("", ""));
        assert_eq!(Holder::decode(b"\xff@1").instance, "1");
    }
}
