//! The relay's shared state: the sharded channel map, limits, counters and
//! the shutdown signal. Every connection task holds an `Arc<Relay>`.

pub(crate) mod gc;
pub(crate) mod history;
pub(crate) mod refusal_log;
mod shutdown;

pub(crate) use shutdown::Shutdown;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use dashmap::DashMap;

use crate::relay::access::auth::Verifier;
use crate::relay::channel::{Channel, Fanout, RingPool};
use crate::relay::cluster::Cluster;
use crate::relay::config::{Config, EgressMode};
use crate::relay::net::proxy::ip_key;
use crate::relay::net::tls::{Tls, TlsError};
use crate::relay::resources::budget::Budgets;
use crate::relay::resources::bulk::Bulk;
use crate::relay::resources::clock::now_ms;
use crate::relay::resources::stats::{Connections, Refusal, Traffic, TrafficSnapshot};

/// Shared relay state. See the module docs.
#[derive(Debug)]
pub struct Relay {
    /// Configuration in force.
    pub(crate) config: Config,
    /// The low-priority lane for large uploads and costly checks.
    pub(crate) bulk: Arc<Bulk>,
    /// Token checks, `None` when the relay is open (no key configured).
    pub(crate) auth: Option<Verifier>,
    /// TLS on the port, `None` for plain TCP.
    pub(crate) tls: Option<Tls>,
    /// Channels by name, sharded.
    pub(crate) channels: DashMap<Arc<str>, Arc<Channel>>,
    /// Connection counters.
    pub(crate) connections: Connections,
    /// What the relay may hold for clients (`--max-memory`), and the part
    /// of it every channel's cached state may take together.
    pub(crate) budgets: Budgets,
    /// The bound every channel's resume ring shares.
    pub(crate) rings: Arc<RingPool>,
    /// Cluster mode (`--nats-url`): the NATS backplane (set at bind).
    pub(crate) cluster: OnceLock<Arc<Cluster>>,
    /// Traffic of channels the GC has removed.
    pub(crate) retired: Traffic,
    /// The last two minutes of totals, for the dashboard's charts.
    pub(crate) history: history::History,
    /// The address the listening socket is bound to (set at bind).
    pub(crate) listen_addr: OnceLock<SocketAddr>,
    /// Refusals in the log, rate-limited.
    pub(crate) refusal_log: refusal_log::RefusalLog,
    per_ip: IpCounts,
    /// Channels that exist, by the per-IP key of who created them.
    channels_per_ip: IpCounts,
    /// Serializes removals of channels (GC sweeps, empty channels leaving).
    retiring: Mutex<()>,
    /// Odd while a removal moves a channel's traffic into `retired`: a
    /// summary taken meanwhile is retried, so totals never go backwards.
    retire_gen: AtomicU64,
    next_peer_id: AtomicU64,
    /// Shutting down: the flag, and the waits for its start and its end.
    pub(crate) shutdown: Shutdown,
    started_ms: u64,
}

/// A relay-wide view of the counters at one instant.
#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    /// Traffic over all channels, live and retired.
    pub traffic: TrafficSnapshot,
    /// Channels that exist now.
    pub channels: usize,
    /// Open connections.
    pub connections: u64,
    /// Sources connected.
    pub sources: u64,
    /// Receivers connected.
    pub receivers: u64,
    /// Peers dropped for not answering pings.
    pub keepalive_drops: u64,
    /// Refusals by reason, indexed by [`Refusal`] (see [`Summary::refused`]).
    pub refused_by: [u64; Refusal::ALL.len()],
    /// Memory held for clients now, as charged to `--max-memory`.
    pub memory_bytes: usize,
    /// Caches dropped, lagging receivers skipped forward and messages
    /// refused because `--max-memory` was nearly used.
    pub memory_sheds: u64,
}

impl Summary {
    /// Refusals of one kind.
    pub fn refused(&self, why: Refusal) -> u64 {
        self.refused_by[why as usize]
    }

    /// Refusals of every kind.
    pub fn refused_total(&self) -> u64 {
        self.refused_by.iter().sum()
    }
}

/// One channel's view at one instant (what `GET /channels` lists).
#[derive(Debug, Clone, Default)]
pub struct ChannelSummary {
    /// The channel's name.
    pub name: String,
    /// True while a source is connected.
    pub source: bool,
    /// Receivers connected.
    pub receivers: usize,
    /// Signaling peers connected.
    pub signal_peers: usize,
    /// Server-Sent Events clients of its signal state connected.
    pub sse_clients: usize,
    /// The channel's traffic.
    pub traffic: TrafficSnapshot,
    /// Bytes a catch-up sends now.
    pub cached_bytes: usize,
    /// Bytes the replay ring for `?resume=` holds now.
    pub resume_ring_bytes: usize,
}

impl ChannelSummary {
    fn of(ch: &Channel) -> Self {
        Self {
            name: ch.name.to_string(),
            source: ch.has_source(),
            receivers: ch.receiver_count(),
            signal_peers: ch.signal_peer_count(),
            sse_clients: ch.sse.clients(),
            traffic: ch.traffic.snapshot(),
            cached_bytes: ch.cached_bytes(),
            resume_ring_bytes: ch.resume_ring_bytes(),
        }
    }
}

impl Relay {
    /// A relay with no channels, open to anyone.
    #[cfg(test)]
    pub(crate) fn new(config: Config) -> io::Result<Arc<Self>> {
        Self::with(config, None, None)
    }

    /// A relay with no channels, checking tokens with `auth` and serving
    /// TLS with `tls` if given (fails if its bulk lane's thread cannot
    /// start).
    pub(crate) fn with(
        config: Config,
        auth: Option<Verifier>,
        tls: Option<Tls>,
    ) -> io::Result<Arc<Self>> {
        Ok(Arc::new(Self {
            auth,
            tls,
            bulk: Arc::new(Bulk::start()?),
            budgets: Budgets::new(config.max_memory, config.max_cache_memory),
            rings: RingPool::new(config.resume_ring_bytes, config.max_resume_memory),
            config,
            channels: DashMap::new(),
            connections: Connections::default(),
            cluster: OnceLock::new(),
            retired: Traffic::default(),
            history: history::History::default(),
            listen_addr: OnceLock::new(),
            per_ip: IpCounts::default(),
            channels_per_ip: IpCounts::default(),
            retiring: Mutex::new(()),
            retire_gen: AtomicU64::new(0),
            next_peer_id: AtomicU64::new(1),
            shutdown: Shutdown::default(),
            started_ms: now_ms(),
            refusal_log: Default::default(),
        }))
    }

    /// A fresh peer id.
    pub(crate) fn next_peer_id(&self) -> u64 {
        self.next_peer_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Milliseconds since the relay started.
    pub(crate) fn uptime_ms(&self) -> u64 {
        now_ms().saturating_sub(self.started_ms)
    }

    /// Finds or creates a channel and counts one member attaching to it.
    /// Attaching happens under the map's shard lock, which the GC also takes,
    /// so a channel is never removed between lookup and attach.
    /// A peer from `ip` may create at most `--max-channels-per-ip` of the
    /// channels that exist.
    pub(crate) fn attach(&self, name: &str, ip: IpAddr) -> Result<Arc<Channel>, Refusal> {
        if let Some(ch) = self.channels.get(name) {
            ch.attach();
            return Ok(ch.clone());
        }
        if self.channels.len() >= self.config.max_channels {
            return Err(Refusal::ChannelLimit);
        }
        let key = ip_key(ip);
        // Reserve a creation for this address; given back if someone else
        // created the channel meanwhile.
        if !self
            .channels_per_ip
            .try_add(key, self.config.max_channels_per_ip)
        {
            return Err(Refusal::ChannelsPerIpLimit);
        }
        let mut created = false;
        let entry = self.channels.entry(Arc::from(name)).or_insert_with(|| {
            created = true;
            Arc::new(Channel::new(
                Arc::from(name),
                Some(key),
                self.budgets.clone(),
                self.config.max_signal_state,
                self.rings.clone(),
                self.fanout(),
                now_ms(),
            ))
        });
        entry.attach();
        let ch = entry.clone();
        drop(entry);
        if !created {
            self.channels_per_ip.release(key);
        }
        Ok(ch)
    }

    /// Moves a removed channel's traffic into the retired totals and gives
    /// its creator's slot back.
    fn retire_channel(&self, ch: &Channel) {
        if ch.had_source() {
            tracing::info!(channel = %ch.name, "channel gone");
        } else {
            tracing::debug!(channel = %ch.name, "channel gone (never had a source)");
        }
        self.retired.absorb(&ch.traffic.snapshot());
        if let Some(key) = ch.creator {
            self.channels_per_ip.release(key);
        }
    }

    /// Counts a member leaving `ch`. A channel that never had a source and
    /// has no member left is removed at once: a storm of receivers that
    /// leave cannot fill the channel table for a grace period.
    pub(crate) fn detach(&self, ch: &Arc<Channel>) {
        ch.detach(now_ms());
        if ch.members() > 0 || ch.had_source() {
            return;
        }
        self.retire(|| {
            self.channels
                .remove_if(&ch.name, |_, c| {
                    Arc::ptr_eq(c, ch) && c.members() == 0 && !c.had_source()
                })
                .map_or(0, |(_, c)| {
                    self.retire_channel(&c);
                    1
                })
        });
    }

    /// Removes (and retires the traffic of) every channel `gone` says so of.
    pub(crate) fn retire_where(&self, mut gone: impl FnMut(&Channel) -> bool) -> usize {
        self.retire(|| {
            let mut removed = 0;
            // `retain` holds each shard's write lock, and attaching takes it
            // too: a member count of zero seen here cannot change under us.
            self.channels.retain(|_, ch| {
                if !gone(ch) {
                    return true;
                }
                self.retire_channel(ch);
                removed += 1;
                false
            });
            removed
        })
    }

    /// Runs a removal with the retire generation odd.
    fn retire(&self, f: impl FnOnce() -> usize) -> usize {
        let _one_at_a_time = self.retiring.lock().unwrap_or_else(|e| e.into_inner());
        self.retire_gen.fetch_add(1, Ordering::SeqCst);
        let removed = f();
        self.retire_gen.fetch_add(1, Ordering::SeqCst);
        removed
    }

    /// The fan-out sharding new channels get.
    pub(crate) fn fanout(&self) -> Fanout {
        Fanout {
            shards: self.config.worker_threads(),
            shard_min: self.config.fanout_shard_min,
            uring: self.config.egress_mode == EgressMode::Uring,
            pace_wait: Duration::from_millis(self.config.pace_wait_ms),
            burst_max: self.config.egress_queue / 2,
        }
    }

    /// Counts a connection from `ip` unless it already has the per-IP maximum.
    pub(crate) fn admit_ip(&self, ip: IpAddr) -> bool {
        self.per_ip
            .try_add(ip_key(ip), self.config.max_connections_per_ip)
    }

    /// Releases a connection counted by [`Relay::admit_ip`].
    pub(crate) fn release_ip(&self, ip: IpAddr) {
        self.per_ip.release(ip_key(ip));
    }

    /// Loads the TLS certificate and key files again (on SIGHUP): new
    /// connections get the new pair, open ones keep theirs. `Ok(false)`
    /// without TLS; on error the previous pair stays in use.
    pub fn reload_tls(&self) -> Result<bool, TlsError> {
        match &self.tls {
            Some(tls) => tls.reload().map(|()| true),
            None => Ok(false),
        }
    }

    /// Starts shutting down: sessions get their close frames.
    pub fn begin_shutdown(&self) {
        self.shutdown.begin();
    }

    /// True once shutdown has begun.
    pub(crate) fn is_draining(&self) -> bool {
        self.shutdown.is_begun()
    }

    /// Relay-wide totals: retired traffic plus every live channel's. Taken
    /// again if a channel was retired meanwhile, so no total ever goes
    /// backwards between two summaries.
    pub fn summary(&self) -> Summary {
        let traffic = loop {
            let gen = self.retire_gen.load(Ordering::SeqCst);
            if gen % 2 == 1 {
                std::thread::yield_now();
                continue;
            }
            let mut traffic = self.retired.snapshot();
            for ch in self.channels.iter() {
                traffic += ch.traffic.snapshot();
            }
            if self.retire_gen.load(Ordering::SeqCst) == gen {
                break traffic;
            }
        };
        let c = &self.connections;
        Summary {
            traffic,
            channels: self.channels.len(),
            connections: c.open.get(),
            sources: c.sources.get(),
            receivers: c.receivers.get(),
            keepalive_drops: c.keepalive_drops.get(),
            refused_by: c.refused.each_ref().map(|r| r.get()),
            memory_bytes: self.budgets.memory.used(),
            memory_sheds: self.budgets.memory.sheds(),
        }
    }

    /// One channel's summary, if it exists.
    pub fn channel(&self, name: &str) -> Option<ChannelSummary> {
        self.channels.get(name).map(|ch| ChannelSummary::of(&ch))
    }

    /// Every channel's summary.
    pub fn channel_summaries(&self) -> Vec<ChannelSummary> {
        self.channels
            .iter()
            .map(|ch| ChannelSummary::of(&ch))
            .collect()
    }
}

/// Counts per client address, each capped.
#[derive(Debug, Default)]
struct IpCounts(DashMap<IpAddr, usize>);

impl IpCounts {
    /// Adds one for `key` unless it already has `max`.
    fn try_add(&self, key: IpAddr, max: usize) -> bool {
        let mut n = self.0.entry(key).or_insert(0);
        if *n >= max {
            return false;
        }
        *n += 1;
        true
    }

    /// Takes one back (the entry goes at zero).
    fn release(&self, key: IpAddr) {
        self.0.remove_if_mut(&key, |_, n| {
            *n = n.saturating_sub(1);
            *n == 0
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn ipv6_peers_are_capped_by_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(ip_key(a), ip_key(b));
        assert_ne!(ip_key(a), ip_key(other));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(ip_key(mapped), "10.0.0.1".parse::<IpAddr>().unwrap());
        let relay = Relay::new(Config::parse_from(["x", "--max-connections-per-ip", "2"])).unwrap();
        assert!(relay.admit_ip(a) && relay.admit_ip(b));
        assert!(!relay.admit_ip("2001:db8:1:2::77".parse().unwrap()));
        assert!(relay.admit_ip(other));
        relay.release_ip(a);
        assert!(relay.admit_ip(b));
    }

    #[test]
    fn one_address_creates_at_most_its_share_of_channels() {
        let relay = Relay::new(Config::parse_from(["x", "--max-channels-per-ip", "2"])).unwrap();
        let me = IpAddr::from([10, 0, 0, 1]);
        let other = IpAddr::from([10, 0, 0, 2]);
        let a = relay.attach("a", me).unwrap();
        let b = relay.attach("b", me).unwrap();
        assert_eq!(
            relay.attach("c", me).err(),
            Some(Refusal::ChannelsPerIpLimit)
        );
        // Joining a channel that exists creates nothing.
        let b2 = relay.attach("b", me).unwrap();
        let c = relay.attach("c", other).unwrap();
        relay.detach(&a);
        let c2 = relay.attach("c", me).unwrap();
        let d = relay.attach("d", me).unwrap();
        for ch in [b, b2, c, c2, d] {
            relay.detach(&ch);
        }
        assert_eq!(relay.summary().channels, 0);
        assert!(
            relay.channels_per_ip.0.is_empty(),
            "every creation given back"
        );
    }

    #[test]
    fn a_channel_that_never_had_a_source_goes_when_its_last_member_leaves() {
        let relay = Relay::new(Config::default()).unwrap();
        let ip = IpAddr::from([127, 0, 0, 1]);
        let a = relay.attach("a", ip).unwrap();
        let a2 = relay.attach("a", ip).unwrap();
        a.traffic.dropped.add(3);
        relay.detach(&a);
        assert_eq!(relay.summary().channels, 1, "one member left");
        relay.detach(&a2);
        assert_eq!(relay.summary().channels, 0);
        assert_eq!(relay.summary().traffic.dropped, 3, "its traffic is kept");
    }
}
