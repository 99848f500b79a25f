//! A node id's presence: one relay process per `--node-id` in the cluster.
//!
//! While a relay runs in cluster mode it holds the key `nodes.<node id>` of
//! the claims bucket (a channel's key is one subject token, so the two
//! never meet), its value the process ([`Holder`]: node id and a random
//! instance id), rewritten every third of the bucket's `max_age` at the
//! revision it holds. A killed relay's presence lapses one `max_age` (the
//! `--cluster-lease-ms` of the node that made the bucket) after its last
//! write; a relay that stops cleanly deletes it.
//!
//! At start-up a relay creates the key. If another process holds it, the
//! relay watches it for up to one `max_age` (plus a second): if its holder
//! rewrites it meanwhile, that process is alive and this one refuses to
//! start ([`ClusterError::NodeIdLive`](super::ClusterError::NodeIdLive));
//! if it lapses or is deleted (the same node restarted at once, after a
//! kill or a crash), this one takes it and starts. So a quick restart waits
//! at most that long, never refuses, and two live processes with one id
//! never both run. Claims name the process too, so even then (a partition
//! longer than `max_age`, or a relay too old to announce itself) one
//! channel never has two sources.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::claim::{Claims, Holder, Take};
use super::ClusterError;

/// The presence key of node `node`.
pub(crate) fn key(node: &str) -> String {
    format!("nodes.{node}")
}

/// How far past the bucket's `max_age` a start-up waits for an earlier
/// process's presence to lapse (the server expires keys on a timer).
const EXPIRY_SLACK: Duration = Duration::from_secs(1);

/// What a start-up makes of another process's presence, first seen at
/// revision `first`, now at `now`, after `waited` of at most `limit`.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Rewritten meanwhile: its process is alive.
    Live,
    /// Neither rewritten nor lapsed within the limit.
    Stuck,
    /// Not rewritten yet: look again.
    Wait,
}

fn judge(first: u64, now: u64, waited: Duration, limit: Duration) -> Verdict {
    if now != first {
        Verdict::Live
    } else if waited >= limit {
        Verdict::Stuck
    } else {
        Verdict::Wait
    }
}

/// This process's presence, rewritten until [`Presence::leave`] or drop.
#[derive(Debug)]
pub(crate) struct Presence {
    claims: Claims,
    key: String,
    value: Vec<u8>,
    revision: Arc<AtomicU64>,
    refresh: JoinHandle<()>,
}

impl Presence {
    /// Announces `me` as its node id's one live process, waiting up to one
    /// `max_age` for an earlier process's presence to lapse (see the module
    /// docs).
    pub(crate) async fn announce(claims: &Claims, me: &Holder) -> Result<Presence, ClusterError> {
        let key = key(&me.node);
        let value = me.encode();
        let failed = |e: Box<dyn std::error::Error + Send + Sync>| ClusterError::Presence {
            node: me.node.clone(),
            reason: e.to_string(),
        };
        let limit = claims.ttl + EXPIRY_SLACK;
        let poll = (claims.ttl / 10).clamp(Duration::from_millis(20), Duration::from_millis(250));
        let mut seen: Option<(u64, Instant)> = None;
        let started = Instant::now();
        let revision = loop {
            let (other, revision) = match claims.take(&key, &value).await.map_err(failed)? {
                Take::Held(rev) => break rev,
                Take::Changed if started.elapsed() < limit => {
                    tokio::time::sleep(poll).await;
                    continue;
                }
                Take::Changed => return Err(failed("the key kept changing".into())),
                Take::Other { value, revision } => (Holder::decode(&value), revision),
            };
            let (first, since) = *seen.get_or_insert_with(|| {
                tracing::info!(node = %me.node, other = %other.instance, wait_ms = limit.as_millis() as u64,
                    "this --node-id is announced by another relay process: waiting for it to lapse (a relay restarted at once) or to be renewed (a live relay: refusing to start)");
                (revision, Instant::now())
            });
            let live = |verdict: &str| ClusterError::NodeIdLive {
                node: me.node.clone(),
                instance: other.instance.clone(),
                verdict: verdict.to_owned(),
                ttl_ms: claims.ttl.as_millis() as u64,
            };
            match judge(first, revision, since.elapsed(), limit) {
                Verdict::Live => return Err(live("renewed it while this one waited")),
                Verdict::Stuck => {
                    return Err(live(&format!(
                        "has held it for {} ms without letting it lapse",
                        limit.as_millis()
                    )))
                }
                Verdict::Wait => tokio::time::sleep(poll).await,
            }
        };
        let revision = Arc::new(AtomicU64::new(revision));
        let refresh = tokio::spawn(refresh(
            claims.clone(),
            me.clone(),
            key.clone(),
            value.clone(),
            revision.clone(),
        ));
        Ok(Presence {
            claims: claims.clone(),
            key,
            value,
            revision,
            refresh,
        })
    }

    /// Deletes the presence (a clean stop): the node id is free at once.
    pub(crate) async fn leave(&self) {
        self.refresh.abort();
        let rev = self.revision.swap(0, Ordering::SeqCst);
        if rev > 0 {
            let _ = self.claims.put(&self.key, &self.value, rev, true).await;
        }
    }
}

impl Drop for Presence {
    fn drop(&mut self) {
        self.refresh.abort();
        let rev = self.revision.swap(0, Ordering::SeqCst);
        if rev == 0 {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (claims, key, value) = (self.claims.clone(), self.key.clone(), self.value.clone());
            rt.spawn(async move {
                let _ = claims.put(&key, &value, rev, true).await;
            });
        }
    }
}

/// Rewrites the presence every third of the bucket's `max_age`; takes it
/// again if it went (a restarted server) and warns if another process
/// holds it.
async fn refresh(
    claims: Claims,
    me: Holder,
    key: String,
    value: Vec<u8>,
    revision: Arc<AtomicU64>,
) {
    let every = claims.ttl / 3;
    let mut warned = false;
    loop {
        tokio::time::sleep(every).await;
        let rev = revision.load(Ordering::SeqCst);
        let taken = match claims.put(&key, &value, rev, false).await {
            Ok(Some(r)) => Ok(Take::Held(r)),
            Ok(None) => claims.take(&key, &value).await,
            Err(e) => {
                tracing::debug!(node = %me.node, error = %e, "presence renewal failed");
                claims.reopen().await;
                claims.take(&key, &value).await
            }
        };
        match taken {
            Ok(Take::Held(r)) => {
                revision.store(r, Ordering::SeqCst);
                warned = false;
            }
            Ok(Take::Other { value, .. }) if !warned => {
                warned = true;
                tracing::error!(node = %me.node, other = %Holder::decode(&value).instance,
                    "another relay process announces this --node-id too: give each relay its own (claims name the process, so a channel still has one source)");
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_presence_renewed_while_waiting_is_live_one_left_alone_lapses() {
        let limit = Duration::from_secs(11);
        let s = Duration::from_secs;
        assert_eq!(judge(5, 5, s(0), limit), Verdict::Wait);
        assert_eq!(judge(5, 5, s(10), limit), Verdict::Wait);
        assert_eq!(judge(5, 9, s(1), limit), Verdict::Live);
        assert_eq!(judge(5, 5, s(11), limit), Verdict::Stuck);
    }

    #[test]
    fn presence_keys_never_meet_a_channels_key() {
        // A channel's key is one subject token ('.' is '=' in it).
        assert_eq!(key("a-1"), "nodes.a-1");
        assert_ne!(key("x"), super::super::token("nodes.x"));
    }
}
