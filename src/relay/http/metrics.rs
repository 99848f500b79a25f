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
use crate::relay::cluster::Backplane;
use crate::relay::resources::stats::{process_rss_bytes, Refusal, TrafficSnapshot};
use crate::relay::state::{Relay, Summary};

type Labels = Vec<(&'static str, String)>;

/// Registers a counter `name` (exported `name_total`) reading `v`.
fn counter(reg: &mut Registry, name: &str, help: &str, v: u64) {
    let c: Counter = Counter::default();
    c.inc_by(v);
    reg.register(name, help, c);
}

/// Registers a gauge `name` reading `v`.
fn gauge(reg: &mut Registry, name: &str, help: &str, v: u64) {
    let g: Gauge = Gauge::default();
    g.set(v as i64);
    reg.register(name, help, g);
}

/// One traffic counter: its metric name, help, and how to read it.
type TrafficMetric = (&'static str, &'static str, fn(&TrafficSnapshot) -> u64);

/// Every traffic counter, global and per channel.
const TRAFFIC: [TrafficMetric; 17] = [
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
    (
        "source_waits",
        "Times a source's next message waited while most receivers held queued frames (--pace-wait-ms)",
        |t| t.source_waits,
    ),
    (
        "source_wait_us",
        "Microseconds sources' messages waited for their receivers",
        |t| t.source_wait_us,
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
    let channels: Vec<_> = relay.channels.iter().map(|e| e.value().clone()).collect();
    let now = Now {
        relay,
        summary: relay.summary(),
        queued: channels
            .iter()
            .map(|ch| ch.egress_queued_bytes() as u64)
            .sum(),
    };
    for (name, help, kind, read) in RELAY_SERIES {
        if let Some(v) = read(&now) {
            match kind {
                Kind::Gauge => gauge(&mut reg, name, help, v),
                Kind::Counter => counter(&mut reg, name, help, v),
            }
        }
    }
    let c = &relay.connections;
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
        counter(&mut reg, name, help, get(&now.summary.traffic));
    }
    if let Some(cluster) = relay.cluster.get() {
        let reg = reg.sub_registry_with_prefix("cluster");
        gauge(
            reg,
            "backplane_connected",
            "1 while the NATS backplane is connected",
            u64::from(cluster.backplane() == Backplane::Connected),
        );
        for (name, help, value) in cluster.counters() {
            counter(reg, name, help, value);
        }
    }
    if scope == Scope::Channels {
        register_channels(&mut reg, relay, channels);
    }
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &reg);
    out
}

/// What the relay-wide series are read from, gathered once per scrape.
struct Now<'a> {
    relay: &'a Relay,
    summary: Summary,
    /// Bytes queued for receivers over all channels.
    queued: u64,
}

/// How a series is exported.
#[derive(Clone, Copy)]
enum Kind {
    /// A value that goes up and down.
    Gauge,
    /// A count that only grows (exported with `_total`).
    Counter,
}

/// One relay-wide series: its name, help, kind, and how to read it
/// (`None`: not available here, e.g. RSS off Linux).
type Series = (&'static str, &'static str, Kind, fn(&Now) -> Option<u64>);

/// Every relay-wide series but the labelled families and traffic.
const RELAY_SERIES: [Series; 14] = [
    ("uptime_seconds", "Seconds since the relay started", Kind::Gauge, |n| {
        Some(n.relay.uptime_ms() / 1000)
    }),
    ("channels", "Channels that exist now", Kind::Gauge, |n| {
        Some(n.summary.channels as u64)
    }),
    (
        "connections_open",
        "Open connections (handshakes included)",
        Kind::Gauge,
        |n| Some(n.relay.connections.open.get()),
    ),
    (
        "connections_accepted",
        "TCP connections accepted",
        Kind::Counter,
        |n| Some(n.relay.connections.accepted.get()),
    ),
    (
        "keepalive_drops",
        "Peers dropped for not answering pings",
        Kind::Counter,
        |n| Some(n.relay.connections.keepalive_drops.get()),
    ),
    (
        "too_big",
        "Peers closed with 1009 for an over-size message",
        Kind::Counter,
        |n| Some(n.relay.connections.too_big.get()),
    ),
    (
        "egress_queue_bytes",
        "Bytes queued for receivers right now",
        Kind::Gauge,
        |n| Some(n.queued),
    ),
    (
        "cache_memory_bytes",
        "Cached catch-up state held now, over all channels",
        Kind::Gauge,
        |n| Some(n.relay.budgets.cache.used() as u64),
    ),
    (
        "cache_memory_limit_bytes",
        "--max-cache-memory",
        Kind::Gauge,
        |n| Some(n.relay.budgets.cache.limit() as u64),
    ),
    (
        "memory_bytes",
        "Memory held for clients now, as charged to --max-memory",
        Kind::Gauge,
        |n| Some(n.relay.budgets.memory.used() as u64),
    ),
    ("memory_limit_bytes", "--max-memory", Kind::Gauge, |n| {
        Some(n.relay.budgets.memory.limit() as u64)
    }),
    (
        "process_resident_bytes",
        "The relay process's resident memory (RSS) now, beside what --max-memory charges",
        Kind::Gauge,
        |_| process_rss_bytes(),
    ),
    (
        "memory_level",
        "Shedding level: 0 normal, 1 caches stopped, 2 lagging queues stopped too",
        Kind::Gauge,
        |n| Some(n.relay.budgets.memory.level() as u64),
    ),
    (
        "memory_sheds",
        "Caches dropped, lagging receivers skipped forward and messages refused because --max-memory was nearly used",
        Kind::Counter,
        |n| Some(n.relay.budgets.memory.sheds()),
    ),
];

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
    fn every_relay_series_is_exported_with_its_kind() {
        let relay = Relay::new(Config::parse_from(["x"])).unwrap();
        let text = render(&relay, Scope::Totals);
        for (name, _, kind, read) in RELAY_SERIES {
            let now = Now {
                relay: &relay,
                summary: relay.summary(),
                queued: 0,
            };
            if read(&now).is_none() {
                continue;
            }
            let line = match kind {
                Kind::Gauge => format!("\nrelay_{name} "),
                Kind::Counter => format!("\nrelay_{name}_total "),
            };
            assert!(text.contains(&line), "{line:?} missing in {text}");
        }
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
