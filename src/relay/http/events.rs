//! Server-Sent Events streams: `GET /events/{name}` (a channel's signal
//! state, see [`crate::relay::channel::sse_hub`]) and `GET /stats/events` (the relay's
//! counters once a second, for the dashboard).
//!
//! A stream is written by its own task. It ends when the client goes (a
//! read sees the end of the connection), at shutdown, when the client's
//! token expires, or when a batch of events is not written within
//! `--slow-timeout-ms` (a client that takes nothing). Idle streams get a
//! comment line every `--sse-heartbeat-ms`.
//!
//! A batch is written as it is held, shared pieces and all, with vectored
//! writes: no client copies an event or a `sync` into a buffer of its own
//! (see [`crate::relay::channel::sse_hub`] for what is shared and how it is charged to
//! `--max-memory`). The stats snapshot is formatted once a second as one
//! event, charged while it lives, that every dashboard writes.

#![deny(clippy::arithmetic_side_effects)]

use std::io::{self, IoSlice};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bitstream_wire::handshake::Request;
use bytes::Bytes;
use serde_json::json;
use tokio::time::{sleep_until, Instant};

use super::reply::Refused;
use super::PageCache;
use crate::relay::access::auth;
use crate::relay::channel::sse_hub::{Outgoing, ReplayLimits, Subscriber};
use crate::relay::channel::Channel;
use crate::relay::net::conn::Conn;
use crate::relay::resources::budget::charged;
use crate::relay::resources::clock::now_ms;
use crate::relay::resources::stats::Refusal;
use crate::relay::state::Relay;

/// Farther than any stream lives: "never" for timers.
const FAR: Duration = Duration::from_secs(365 * 24 * 3600);

/// `d` from now, at most [`FAR`] (an operator's huge heartbeat interval
/// must not overflow the clock).
fn after(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d.min(FAR)).unwrap_or(now)
}

/// How often the stats stream sends a snapshot.
const STATS_INTERVAL: Duration = Duration::from_secs(1);

/// Channels a stats snapshot lists at most (the busiest by bytes out).
const STATS_MAX_CHANNELS: usize = 200;

/// Detaches from the channel however the stream ends.
struct Attached<'a> {
    relay: &'a Relay,
    channel: Arc<Channel>,
}

impl Drop for Attached<'_> {
    fn drop(&mut self) {
        self.relay.detach(&self.channel);
    }
}

/// The response head of an event stream.
fn stream_head(cors: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nCache-Control: no-store\r\nConnection: close\r\nX-Accel-Buffering: no\r\n{cors}\r\nretry: 1000\n\n"
    )
}

/// Why a stream ended (for the log).
#[derive(Debug)]
enum End {
    ClientGone,
    Slow,
    Shutdown,
    TokenExpired,
}

/// The comment line idle streams get.
const HEARTBEAT: &[u8] = b":\n\n";

/// Most buffers handed to one vectored write.
const MAX_IOV: usize = 64;

/// Writes `pieces` in order with vectored writes (for TLS: encrypted by
/// the same calls), then what a TLS session still holds.
async fn write_all(stream: &Conn, pieces: &[Bytes]) -> io::Result<()> {
    // The first piece not wholly written, and how much of it is.
    let (mut at, mut off) = (0usize, 0usize);
    loop {
        while pieces.get(at).is_some_and(|p| off >= p.len()) {
            at = at.saturating_add(1);
            off = 0;
        }
        let Some(first) = pieces.get(at) else {
            break;
        };
        let mut bufs = [IoSlice::new(&[]); MAX_IOV];
        bufs[0] = IoSlice::new(first.get(off..).unwrap_or_default());
        let rest = pieces.get(at.saturating_add(1)..).unwrap_or_default();
        let mut n = 1usize;
        for (slot, p) in bufs[1..].iter_mut().zip(rest) {
            *slot = IoSlice::new(p);
            n = n.saturating_add(1);
        }
        stream.writable().await?;
        let mut wrote = match stream.try_write_vectored(bufs.get(..n).unwrap_or_default()) {
            Ok(wrote) => wrote,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        while wrote > 0 {
            let Some(p) = pieces.get(at) else {
                break;
            };
            let left = p.len().saturating_sub(off);
            if wrote >= left {
                wrote = wrote.saturating_sub(left);
                at = at.saturating_add(1);
                off = 0;
            } else {
                off = off.saturating_add(wrote);
                wrote = 0;
            }
        }
    }
    while stream.flush_pending()? {
        stream.writable().await?;
    }
    Ok(())
}

/// Writes `pieces` within `--slow-timeout-ms`.
async fn write(relay: &Relay, stream: &Conn, pieces: &[Bytes]) -> Result<(), End> {
    match tokio::time::timeout(relay.config.slow_timeout(), write_all(stream, pieces)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(End::ClientGone),
        Err(_) => Err(End::Slow),
    }
}

/// Resolves when the client closed its side (or the socket failed);
/// anything it sends is read and ignored.
async fn client_gone(stream: &Conn) {
    let mut buf = [0u8; 256];
    loop {
        if stream.readable().await.is_err() {
            return;
        }
        match stream.try_read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

/// `GET /events/{name}`: the channel's signal state, first as one `sync`
/// (or, with a `Last-Event-ID` the replay buffer still covers, the events
/// missed since), then every signal message as it is folded in.
pub(super) async fn signal(
    relay: &Arc<Relay>,
    stream: &Conn,
    req: &Request,
    name: &str,
    client: IpAddr,
    cors: &str,
) -> Result<(), Refused> {
    let cfg = &relay.config;
    if relay.is_draining() {
        return Err(Refused::new(Refusal::ShuttingDown, "relay shutting down"));
    }
    // Admission checked the token; its expiry ends the stream.
    let expires = match &relay.auth {
        Some(v) => {
            let grant = v.check(auth::token_of(req), name, &["receiver"])?;
            grant.deadline()
        }
        None => None,
    };
    let channel = relay.attach(name, client).map_err(Refused::from)?;
    let attached = Attached { relay, channel };
    let channel = &attached.channel;
    // SSE clients count with the channel's WebSocket receivers.
    if channel
        .receiver_count()
        .saturating_add(channel.sse.clients())
        >= cfg.max_receivers
    {
        return Err(Refused::new(
            Refusal::ReceiverLimit,
            "receiver limit reached on this channel",
        ));
    }
    let last_event_id = req
        .last_event_id
        .as_deref()
        .and_then(|id| id.trim().parse::<u64>().ok());
    let sub = Subscriber::new(cfg.sse_queue, &relay.budgets.memory);
    let limits = ReplayLimits {
        events: cfg.sse_replay_events,
        bytes: cfg.sse_replay_bytes,
    };
    let first = channel.sse_subscribe(&sub, last_event_id, limits);
    relay.connections.sse_clients.inc();
    channel.traffic.catchups.inc();
    tracing::debug!(channel = %channel.name, %client, ?last_event_id, pieces = first.pieces().len(), "SSE client joined");
    let end = stream_signal(relay, stream, channel, &sub, cors, first, expires).await;
    channel.sse_unsubscribe(&sub);
    relay.connections.sse_clients.sub(1);
    tracing::debug!(channel = %channel.name, %client, ?end, "SSE client left");
    stream.close_notify();
    Ok(())
}

/// Writes the stream until it ends.
async fn stream_signal(
    relay: &Relay,
    stream: &Conn,
    channel: &Channel,
    sub: &Subscriber,
    cors: &str,
    first: Outgoing,
    expires: Option<Instant>,
) -> End {
    let memory = &relay.budgets.memory;
    let mut out = Outgoing::new(memory);
    out.own(Bytes::from(stream_head(cors)));
    out.append(first);
    if let Err(end) = write(relay, stream, out.pieces()).await {
        return end;
    }
    drop(out);
    let heartbeat = relay.config.sse_heartbeat();
    let far = after(FAR);
    let expires = expires.unwrap_or(far);
    let gone = client_gone(stream);
    tokio::pin!(gone);
    let mut next_beat = after(heartbeat);
    loop {
        let out = tokio::select! {
            _ = sub.ready.notified() => {
                let batch = sub.take();
                if batch.resync {
                    channel.traffic.slow_skips.inc();
                    let mut out = Outgoing::new(memory);
                    channel.sse_resync(sub, &mut out);
                    out.append(batch.out);
                    out
                } else {
                    batch.out
                }
            }
            _ = sleep_until(next_beat) => {
                let mut out = Outgoing::new(memory);
                out.shared([Bytes::from_static(HEARTBEAT)]);
                out
            }
            _ = &mut gone => return End::ClientGone,
            _ = relay.shutdown.begun() => return End::Shutdown,
            _ = sleep_until(expires) => return End::TokenExpired,
        };
        if out.is_empty() {
            continue;
        }
        if let Err(end) = write(relay, stream, out.pieces()).await {
            return end;
        }
        next_beat = after(heartbeat);
    }
}

/// The stats snapshot the dashboard draws: totals and the busiest
/// channels' counters (rates are left to the client: differences between
/// snapshots over `uptime_ms`).
pub(crate) fn stats_json(relay: &Relay) -> Vec<u8> {
    let s = relay.summary();
    let t = s.traffic;
    let mut channels = relay.channel_summaries();
    channels.sort_by_key(|c| std::cmp::Reverse(c.traffic.bytes_out));
    channels.truncate(STATS_MAX_CHANNELS);
    channels.sort_by(|a, b| a.name.cmp(&b.name));
    let channels: Vec<_> = channels
        .into_iter()
        .map(|ch| {
            let t = ch.traffic;
            json!({
                "name": ch.name,
                "source": ch.source,
                "receivers": ch.receivers,
                "sse_clients": ch.sse_clients,
                "signal_peers": ch.signal_peers,
                "frames_in": t.frames_in,
                "pictures_in": t.pictures_in,
                "bytes_in": t.bytes_in,
                "frames_out": t.frames_out,
                "bytes_out": t.bytes_out,
                "inputs": t.inputs,
                "catchups": t.catchups,
                "slow_skips": t.slow_skips,
                "slow_closes": t.slow_closes,
                "cached_bytes": ch.cached_bytes,
            })
        })
        .collect();
    json!({
        "uptime_ms": relay.uptime_ms(),
        "connections": s.connections,
        "sources": s.sources,
        "receivers": s.receivers,
        "sse_clients": relay.connections.sse_clients.get(),
        "dashboards": relay.connections.dashboards.get(),
        "channels_total": s.channels,
        "memory_bytes": s.memory_bytes,
        "rss_bytes": crate::relay::resources::stats::process_rss_bytes(),
        "refused": s.refused_total(),
        "frames_in": t.frames_in,
        "pictures_in": t.pictures_in,
        "bytes_in": t.bytes_in,
        "frames_out": t.frames_out,
        "bytes_out": t.bytes_out,
        "catchups": t.catchups,
        "slow_skips": t.slow_skips,
        "channels": channels,
    })
    .to_string()
    .into_bytes()
}

/// The `stats` event with [`stats_json`], charged to `--max-memory` for as
/// long as the page cache or a dashboard's write holds it.
fn stats_event(relay: &Relay) -> Bytes {
    let body = stats_json(relay);
    let mut ev = Vec::with_capacity(body.len().saturating_add(24));
    ev.extend_from_slice(b"event: stats\ndata: ");
    ev.extend_from_slice(&body);
    ev.extend_from_slice(b"\n\n");
    let memory = &relay.budgets.memory;
    let len = ev.len();
    memory.force(len);
    charged(Bytes::from(ev), len, memory)
}

/// `GET /stats/events`: first a `history` event (the last two minutes of
/// totals, see [`crate::relay::state::history`]), then a `stats` event with
/// [`stats_json`] every second (rendered once a second however many
/// dashboards watch, and shared by them). A dashboard that cannot take one
/// within `--slow-timeout-ms` is closed; one that is merely slow gets the
/// latest snapshot when it is ready again (snapshots are not queued).
pub(super) async fn stats(relay: &Arc<Relay>, page: &PageCache, stream: &Conn, cors: &str) {
    relay.connections.dashboards.inc();
    stats_stream(relay, page, stream, cors).await;
    relay.connections.dashboards.sub(1);
}

/// Writes the stats stream until it ends.
async fn stats_stream(relay: &Arc<Relay>, page: &PageCache, stream: &Conn, cors: &str) {
    let history = format!("event: history\ndata: {}\n\n", relay.history.json());
    let mut first = Outgoing::new(&relay.budgets.memory);
    first.own(Bytes::from(stream_head(cors)));
    first.own(Bytes::from(history));
    if let Err(end) = write(relay, stream, first.pieces()).await {
        tracing::debug!(?end, "stats stream ended");
        return;
    }
    drop(first);
    let gone = client_gone(stream);
    tokio::pin!(gone);
    let mut tick = tokio::time::interval(STATS_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let end = loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut gone => break End::ClientGone,
            _ = relay.shutdown.begun() => break End::Shutdown,
        }
        let mut out = Outgoing::new(&relay.budgets.memory);
        out.shared([page.get_or_render(now_ms(), || stats_event(relay))]);
        if let Err(end) = write(relay, stream, out.pieces()).await {
            break end;
        }
    };
    tracing::debug!(?end, "stats stream ended");
    stream.close_notify();
}
