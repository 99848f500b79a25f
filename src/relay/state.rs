//! The relay's shared state: the sharded channel map, limits, counters and
//! the shutdown signal. Every connection task holds an `Arc<Relay>`.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use tokio::sync::watch;

use crate::relay::channel::{Channel, Fanout};
use crate::relay::clock::now_ms;
use crate::relay::config::Config;
use crate::relay::stats::{Connections, Refusal, Traffic, TrafficSnapshot};

/// Shared relay state. See the module docs.
#[derive(Debug)]
pub struct Relay {
    /// Configuration in force.
    pub(crate) config: Config,
    /// Channels by name, sharded.
    pub(crate) channels: DashMap<Arc<str>, Arc<Channel>>,
    /// Connection counters.
    pub(crate) connections: Connections,
    /// Traffic of channels the GC has removed.
    pub(crate) retired: Traffic,
    per_ip: DashMap<IpAddr, usize>,
    next_peer_id: AtomicU64,
    draining: AtomicBool,
    shutdown: watch::Sender<bool>,
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
    /// The channel's traffic.
    pub traffic: TrafficSnapshot,
    /// Bytes a catch-up sends now.
    pub cached_bytes: usize,
}

impl ChannelSummary {
    fn of(ch: &Channel) -> Self {
        Self {
            name: ch.name.to_string(),
            source: ch.has_source(),
            receivers: ch.receiver_count(),
            signal_peers: ch.signal_peer_count(),
            traffic: ch.traffic.snapshot(),
            cached_bytes: ch.cached_bytes(),
        }
    }
}

impl Relay {
    /// A relay with no channels.
    pub(crate) fn new(config: Config) -> Arc<Self> {
        let (shutdown, _) = watch::channel(false);
        Arc::new(Self {
            config,
            channels: DashMap::new(),
            connections: Connections::default(),
            retired: Traffic::default(),
            per_ip: DashMap::new(),
            next_peer_id: AtomicU64::new(1),
            draining: AtomicBool::new(false),
            shutdown,
            started_ms: now_ms(),
        })
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
    pub(crate) fn attach(&self, name: &str) -> Result<Arc<Channel>, Refusal> {
        if let Some(ch) = self.channels.get(name) {
            ch.attach();
            return Ok(ch.clone());
        }
        if self.channels.len() >= self.config.max_channels {
            return Err(Refusal::ChannelLimit);
        }
        let entry = self.channels.entry(Arc::from(name)).or_insert_with(|| {
            Arc::new(Channel::new(
                Arc::from(name),
                self.config.max_signal_state,
                self.fanout(),
                now_ms(),
            ))
        });
        entry.attach();
        Ok(entry.clone())
    }

    /// The fan-out sharding new channels get.
    pub(crate) fn fanout(&self) -> Fanout {
        Fanout {
            shards: self.config.worker_threads(),
            shard_min: self.config.fanout_shard_min,
        }
    }

    /// Counts a connection from `ip` unless it already has the per-IP maximum.
    pub(crate) fn admit_ip(&self, ip: IpAddr) -> bool {
        let mut n = self.per_ip.entry(ip).or_insert(0);
        if *n >= self.config.max_connections_per_ip {
            return false;
        }
        *n += 1;
        true
    }

    /// Releases a connection counted by [`Relay::admit_ip`].
    pub(crate) fn release_ip(&self, ip: IpAddr) {
        self.per_ip.remove_if_mut(&ip, |_, n| {
            *n = n.saturating_sub(1);
            *n == 0
        });
    }

    /// Starts shutting down: sessions get their close frames.
    pub fn begin_shutdown(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.shutdown.send_replace(true);
    }

    /// True once shutdown has begun.
    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// A receiver of the shutdown signal for a session.
    pub(crate) fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Relay-wide totals: retired traffic plus every live channel's.
    pub fn summary(&self) -> Summary {
        let mut traffic = self.retired.snapshot();
        for ch in self.channels.iter() {
            traffic += ch.traffic.snapshot();
        }
        let c = &self.connections;
        Summary {
            traffic,
            channels: self.channels.len(),
            connections: c.open.get(),
            sources: c.sources.get(),
            receivers: c.receivers.get(),
            keepalive_drops: c.keepalive_drops.get(),
            refused_by: c.refused.each_ref().map(|r| r.get()),
        }
    }

    /// One channel's summary, if it exists.
    pub fn channel(&self, name: &str) -> Option<ChannelSummary> {
        self.channels.get(name).map(|ch| ChannelSummary::of(&ch))
    }

    /// Every channel's summary.
    pub fn channel_summaries(&self) -> Vec<ChannelSummary> {
        self.channels.iter().map(|ch| ChannelSummary::of(&ch)).collect()
    }
}

/// Resolves once shutdown has begun, including when it began before this
/// receiver was created or first polled.
pub(crate) async fn shutting_down(rx: &mut watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            // The relay is gone: nothing will ever signal shutdown.
            std::future::pending::<()>().await;
        }
    }
}
