//! `GET /metrics`: the relay's atomic counters in the Prometheus text
//! format, through `prometheus-client`. A registry is filled from the
//! counters at each scrape, so the hot path never touches it. Per-channel
//! series are capped at `--metrics-max-channels` (the busiest by bytes out).
//! They carry channel names, so with tokens on they are rendered only for a
//! request whose token grants every channel (see [`Scope`]), like
//! `/channels`; the relay-wide series are rendered for everyone.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use std::sync::Arc;

use crate::relay::channel::Channel;
use crate::relay::state::Relay;
use crate::relay::stats::{Refusal, TrafficSnapshot};

type Labels = Vec<(&'static str, String)>;

pub(crate) fn counter(reg: &mut Registry, name: &str, help: &str, v: u64) {
    let c: Counter = Counter::default();
    c.inc_by(v);
    reg.register(name, help, c);
}

pub(crate) fn gauge(reg: &mut Registry, name: &str, help: &str, v: u64) {
    let g: Gauge = Gauge::default();
    g.set(v as i64);
    reg.register(name, help, g);
}

/// One traffic counter: its metric name, help, and how to read it.
type TrafficMetric = (&'static str, &'static str, fn(&TrafficSnapshot) -> u64);

/// Every traffic counter, global and per channel.
const TRAFFIC: [TrafficMetric; 15] = [
    ("frames_in", "Valid frames received from sources", |t| {
        t.frames_in
    }),
    (
        "bytes_in",
        "Bytes of valid frames received from sources",
        |t| t.bytes_in,
    ),
    (
        "pictures_in",
        "Pictures among the frames received (a frame rate counts these)",
        |t| t.pictures_in,
    ),
    ("frames_out", "Frame deliveries to receivers", |t| {
        t.frames_out
    }),
    ("bytes_out", "Bytes delivered to receivers", |t| t.bytes_out),
    ("inputs", "Inputs forwarded to sources", |t| t.inputs),
    ("invalid", "Messages refused by validation", |t| t.invalid),
    (
        "dropped",
        "Messages dropped (queue full, no source, rate limit)",
        |t| t.dropped,
    ),
    ("catchups", "Full catch-ups sent (joins and resyncs)", |t| {
        t.catchups
    }),
    (
        "resumes",
        "Receivers resumed from the replay ring (?resume=) instead of a full catch-up",
        |t| t.resumes,
    ),
    ("slow_skips", "Slow receivers skipped forward", |t| {
        t.slow_skips
    }),
    ("slow_closes", "Slow receivers closed (3008)", |t| {
        t.slow_closes
    }),
    ("signal_messages", "Signaling messages broadcast", |t| {
        t.signal_messages
    }),
    (
        "queued",
        "Deliveries the socket did not take at once",
        |t| t.queued,
    ),
    (
        "cache_sheds",
        "Cached states dropped to stay within --max-cache-memory",
        |t| t.cache_sheds,
    ),
];

/// Which series a `/metrics` request may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Relay-wide series only: nothing names a channel.
    Totals,
    /// The relay-wide series and the per-channel ones.
    Channels,
}

/// Renders the metrics `scope` allows in the Prometheus text exposition
/// format.
pub(crate) fn render(relay: &Relay, scope: Scope) -> String {
    let mut reg = Registry::with_prefix("relay");
    let summary = relay.summary();
    let c = &relay.connections;
    gauge(
        &mut reg,
        "uptime_seconds",
        "Seconds since the relay started",
        relay.uptime_ms() / 1000,
    );
    gauge(
        &mut reg,
        "channels",
        "Channels that exist now",
        summary.channels as u64,
    );
    gauge(
        &mut reg,
        "connections_open",
        "Open connections (handshakes included)",
        c.open.get(),
    );
    counter(
        &mut reg,
        "connections_accepted",
        "TCP connections accepted",
        c.accepted.get(),
    );
    counter(
        &mut reg,
        "keepalive_drops",
        "Peers dropped for not answering pings",
        c.keepalive_drops.get(),
    );
    counter(
        &mut reg,
        "too_big",
        "Peers closed with 1009 for an over-size message",
        c.too_big.get(),
    );

    let by_role = Family::<Labels, Gauge>::default();
    for (role, v) in [
        ("source", &c.sources),
        ("receiver", &c.receivers),
        ("signal", &c.signal_peers),
        ("sse", &c.sse_clients),
    ] {
        by_role
            .get_or_create(&vec![("role", role.to_owned())])
            .set(v.get() as i64);
    }
    reg.register("connections", "Connected peers by role", by_role);

    let refused = Family::<Labels, Counter>::default();
    for why in Refusal::ALL {
        refused
            .get_or_create(&vec![("reason", why.label().to_owned())])
            .inc_by(c.refused[why as usize].get());
    }
    reg.register("refused", "Connections refused, by reason", refused);

    for (name, help, get) in TRAFFIC {
        counter(&mut reg, name, help, get(&summary.traffic));
    }

    let channels: Vec<_> = relay.channels.iter().map(|e| e.value().clone()).collect();
    let queued: u64 = channels
        .iter()
        .map(|ch| ch.egress_queued_bytes() as u64)
        .sum();
    gauge(
        &mut reg,
        "egress_queue_bytes",
        "Bytes queued for receivers right now",
        queued,
    );
    gauge(
        &mut reg,
        "cache_memory_bytes",
        "Cached catch-up state held now, over all channels",
        relay.budgets.cache.used() as u64,
    );
    gauge(
        &mut reg,
        "cache_memory_limit_bytes",
        "--max-cache-memory",
        relay.budgets.cache.limit() as u64,
    );
    let memory = &relay.budgets.memory;
    gauge(
        &mut reg,
        "memory_bytes",
        "Memory held for clients now, as charged to --max-memory",
        memory.used() as u64,
    );
    gauge(
        &mut reg,
        "memory_limit_bytes",
        "--max-memory",
        memory.limit() as u64,
    );
    if let Some(rss) = crate::relay::stats::process_rss_bytes() {
        gauge(
            &mut reg,
            "process_resident_bytes",
            "The relay process's resident memory (RSS) now, beside what --max-memory charges",
            rss,
        );
    }
    gauge(
        &mut reg,
        "memory_level",
        "Shedding level: 0 normal, 1 caches stopped, 2 lagging queues stopped too",
        memory.level() as u64,
    );
    counter(
        &mut reg,
        "memory_sheds",
        "Caches dropped, lagging receivers skipped forward and messages refused because --max-memory was nearly used",
        memory.sheds(),
    );
    if let Some(cluster) = relay.cluster.get() {
        cluster.register_metrics(reg.sub_registry_with_prefix("cluster"));
    }
    if scope == Scope::Channels {
        register_channels(&mut reg, relay, channels);
    }
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &reg);
    out
}

/// The per-channel series (`relay_channel_*`) of the busiest
/// `--metrics-max-channels` of `channels`.
fn register_channels(reg: &mut Registry, relay: &Relay, mut channels: Vec<Arc<Channel>>) {
    channels.sort_by_key(|ch| std::cmp::Reverse(ch.traffic.bytes_out.get()));
    channels.truncate(relay.config.metrics_max_channels);
    let per_channel: Vec<Family<Labels, Counter>> =
        TRAFFIC.iter().map(|_| Family::default()).collect();
    let receivers = Family::<Labels, Gauge>::default();
    let cached = Family::<Labels, Gauge>::default();
    for ch in &channels {
        let labels = vec![("channel", ch.name.to_string())];
        let t = ch.traffic.snapshot();
        for ((_, _, get), fam) in TRAFFIC.iter().zip(&per_channel) {
            fam.get_or_create(&labels).inc_by(get(&t));
        }
        receivers
            .get_or_create(&labels)
            .set(ch.receiver_count() as i64);
        cached.get_or_create(&labels).set(ch.cached_bytes() as i64);
    }
    let mut sub = reg.sub_registry_with_prefix("channel");
    for ((name, help, _), fam) in TRAFFIC.iter().zip(per_channel) {
        sub.register(*name, *help, fam);
    }
    sub = sub.sub_registry_with_prefix("state");
    sub.register("receivers", "Receivers connected to the channel", receivers);
    sub.register(
        "cached_bytes",
        "Size of the channel's catch-up state",
        cached,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::config::Config;
    use clap::Parser;

    #[test]
    fn renders_counters_and_channels() {
        let relay = Relay::new(Config::parse_from(["x"])).unwrap();
        let ch = relay
            .attach("cam", std::net::IpAddr::from([127, 0, 0, 1]))
            .unwrap();
        ch.traffic.frames_in.add(7);
        relay.connections.refuse(Refusal::BadName);
        let text = render(&relay, Scope::Channels);
        assert!(text.contains("relay_frames_in_total 7"), "{text}");
        assert!(
            text.contains("relay_channel_frames_in_total{channel=\"cam\"} 7"),
            "{text}"
        );
        assert!(
            text.contains("relay_refused_total{reason=\"bad_name\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("relay_connections{role=\"receiver\"} 0"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn totals_name_no_channel() {
        let relay = Relay::new(Config::parse_from(["x"])).unwrap();
        let ch = relay
            .attach("private-cam", std::net::IpAddr::from([127, 0, 0, 1]))
            .unwrap();
        ch.traffic.frames_in.add(3);
        let text = render(&relay, Scope::Totals);
        assert!(!text.contains("private-cam"), "{text}");
        assert!(!text.contains("relay_channel_"), "{text}");
        assert!(text.contains("relay_frames_in_total 3"), "{text}");
        assert!(text.contains("relay_channels 1"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }
}
