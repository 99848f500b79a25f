//! A connected peer's life after the handshake: one task per connection that
//! reads its messages, drains its egress queue when the socket is writable,
//! pings it, and closes it cleanly (close frame, flush, short wait for the
//! peer's close) on error, over-size input, keepalive timeout, slowness,
//! input flood or shutdown.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::channel::{Channel, Peer, Role};
use crate::conn::{Incoming, WireMessage, WsReader};
use crate::egress::Drain;
use crate::protocol;
use crate::ratelimit::{TokenBucket, Verdict};
use crate::relay::Relay;
use crate::ws;

/// How long a closing peer gets to take its close frame and answer it.
const CLOSE_LINGER: Duration = Duration::from_millis(1000);

/// Close code for a receiver that cannot keep up (as Centrifugo uses).
pub const CLOSE_SLOW: u16 = 3008;

/// Why a session ended, for logs and counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// The peer sent a close frame.
    PeerClosed,
    /// The TCP connection ended or failed.
    Disconnected,
    /// We closed the peer with this code and reason.
    Closed(u16, String),
    /// The peer stopped answering pings.
    KeepaliveTimeout,
}

/// Tracks how far behind a receiver is: since when its queue has not
/// drained, and its recent skip-forwards.
struct Lag {
    behind_since: Option<Instant>,
    skips: VecDeque<Instant>,
}

impl Lag {
    fn far_behind(&self, timeout: Duration) -> Option<Instant> {
        self.behind_since.map(|t| t + timeout)
    }
}

/// Runs a peer of `role` on `channel` until it leaves. The peer is already
/// registered on the channel; this task unregisters it.
pub async fn run(
    relay: Arc<Relay>,
    channel: Arc<Channel>,
    peer: Arc<Peer>,
    role: Role,
    mut reader: WsReader,
) -> Exit {
    let stream = peer.egress.stream().clone();
    let cfg = &relay.config;
    let mut shutdown = relay.shutdown_signal();
    let ping_every = cfg.ping_interval();
    let timeout = cfg.keepalive_timeout();
    let slow_timeout = cfg.slow_timeout();
    let mut next_ping = Instant::now() + ping_every;
    let mut last_seen = Instant::now();
    let mut want_write = true;
    let mut invalid = 0u64;
    let mut bucket = TokenBucket::new(cfg.input_rate, cfg.input_burst, std::time::Instant::now());
    let mut lag = Lag {
        behind_since: None,
        skips: VecDeque::new(),
    };
    let far_future = Instant::now() + Duration::from_secs(86_400 * 365);

    let exit = loop {
        // An echo peer is read only while its queue has room: backpressure
        // instead of dropping what it asked to have echoed.
        let may_read = role != Role::Echo || peer.egress.queued_bytes() < cfg.egress_queue;
        let slow_deadline = lag.far_behind(slow_timeout).unwrap_or(far_future);
        tokio::select! {
            ev = reader.next(&stream), if may_read => {
                last_seen = Instant::now();
                let msg = match ev {
                    Ok(m) => m,
                    Err(e) => {
                        break match e.close_code() {
                            Some(code) => {
                                if code == ws::CLOSE_TOO_BIG {
                                    relay.connections.too_big.inc();
                                }
                                Exit::Closed(code, e.to_string())
                            }
                            None => Exit::Disconnected,
                        };
                    }
                };
                match msg {
                    Incoming::Binary(m) => match role {
                        Role::Source => {
                            if !on_source_message(&channel, &m).await {
                                invalid += 1;
                                if invalid > cfg.max_invalid {
                                    break Exit::Closed(ws::CLOSE_POLICY, "too many invalid messages".into());
                                }
                            }
                        }
                        Role::Receiver => match bucket.take(std::time::Instant::now(), cfg.input_flood_drops) {
                            Verdict::Allow => on_input(&channel, &m),
                            Verdict::Drop => channel.traffic.dropped.inc(),
                            Verdict::Abuse => {
                                channel.traffic.dropped.inc();
                                break Exit::Closed(ws::CLOSE_POLICY, "input flood".into());
                            }
                        },
                        Role::Echo => {
                            peer.egress.send(&m.wire);
                        }
                        Role::Signal => {
                            break Exit::Closed(ws::CLOSE_UNSUPPORTED, "signaling carries text messages only".into());
                        }
                    },
                    Incoming::Text(m) => match role {
                        Role::Signal => channel.broadcast_signal(&peer, &m),
                        Role::Echo => {
                            peer.egress.send(&m.wire);
                        }
                        Role::Source | Role::Receiver => {
                            break Exit::Closed(ws::CLOSE_UNSUPPORTED, "text messages are not accepted on data paths".into());
                        }
                    },
                    Incoming::Ping(p) => {
                        peer.egress.send(&WireMessage::encode(ws::OP_PONG, &p).wire);
                    }
                    Incoming::Pong => {}
                    Incoming::Close(close) => {
                        let code = close.map_or(ws::CLOSE_NORMAL, |(c, _)| c);
                        peer.egress.send(&WireMessage::encode(ws::OP_CLOSE, &ws::close_payload(code, "")).wire);
                        break Exit::PeerClosed;
                    }
                }
            }
            _ = peer.egress.wanted(), if !want_write => want_write = true,
            r = stream.writable(), if want_write => {
                if r.is_err() {
                    break Exit::Disconnected;
                }
                match peer.egress.drain() {
                    Drain::Empty => {
                        want_write = false;
                        lag.behind_since = None;
                    }
                    Drain::Pending => {
                        lag.behind_since.get_or_insert_with(Instant::now);
                    }
                    Drain::NeedsResync => {
                        let now = Instant::now();
                        lag.skips.push_back(now);
                        while lag.skips.front().is_some_and(|t| now.duration_since(*t) > cfg.slow_window()) {
                            lag.skips.pop_front();
                        }
                        if lag.skips.len() > cfg.slow_max_skips {
                            channel.traffic.slow_closes.inc();
                            break Exit::Closed(CLOSE_SLOW, "slow receiver: skipped forward too often".into());
                        }
                        channel.resync(&peer);
                        lag.behind_since.get_or_insert(now);
                    }
                    Drain::Closed => break Exit::Disconnected,
                }
            }
            // One timer for both deadlines keeps an idle connection small.
            _ = tokio::time::sleep_until(next_ping.min(slow_deadline)) => {
                if Instant::now() >= slow_deadline {
                    channel.traffic.slow_closes.inc();
                    break Exit::Closed(CLOSE_SLOW, "slow receiver: queue not drained in time".into());
                }
                if Instant::now() < next_ping {
                    continue;
                }
                if last_seen.elapsed() >= timeout {
                    relay.connections.keepalive_drops.inc();
                    break Exit::KeepaliveTimeout;
                }
                peer.egress.send(&WireMessage::encode(ws::OP_PING, b"").wire);
                next_ping = Instant::now() + ping_every;
            }
            _ = crate::relay::shutting_down(&mut shutdown) => {
                break Exit::Closed(ws::CLOSE_GOING_AWAY, "relay shutting down".into());
            }
        }
    };

    match role {
        Role::Source => channel.release_source(&peer),
        Role::Receiver => channel.remove_receiver(&peer),
        Role::Signal => channel.remove_signal_peer(&peer),
        Role::Echo => {}
    }
    match &exit {
        Exit::Closed(code, reason) => {
            let frame = WireMessage::encode(ws::OP_CLOSE, &ws::close_payload(*code, reason));
            close_gracefully(&peer, &mut reader, Some(frame)).await;
        }
        Exit::PeerClosed => close_gracefully(&peer, &mut reader, None).await,
        Exit::Disconnected | Exit::KeepaliveTimeout => {}
    }
    peer.egress.close();
    tracing::debug!(peer = peer.id, channel = %channel.name, ?role, ?exit, "peer left");
    exit
}

/// Validates, caches and fans out one source message; false if it was refused.
async fn on_source_message(channel: &Arc<Channel>, m: &WireMessage) -> bool {
    let refused = match protocol::validate_source_message(m.payload()) {
        Ok(h) => match channel.publish(&h, m).await {
            Ok(_) => return true,
            Err(e) => e.to_string(),
        },
        Err(e) => e.to_string(),
    };
    channel.traffic.invalid.inc();
    tracing::debug!(channel = %channel.name, %refused, "source message refused");
    false
}

/// Validates one receiver message and forwards it to the source if it is an input.
fn on_input(channel: &Channel, m: &WireMessage) {
    match protocol::validate_input_message(m.payload()) {
        Ok(_) => {
            channel.forward_input(m);
        }
        Err(e) => {
            channel.traffic.invalid.inc();
            tracing::debug!(channel = %channel.name, refused = %e, "receiver message refused");
        }
    }
}

/// Sends `close` (after what is queued), flushes within the linger time, and
/// when we initiated the close waits for the peer's close frame.
async fn close_gracefully(peer: &Peer, reader: &mut WsReader, close: Option<WireMessage>) {
    let stream = peer.egress.stream().clone();
    if let Some(frame) = close {
        peer.egress.send(&frame.wire);
    }
    let deadline = Instant::now() + CLOSE_LINGER;
    while peer.egress.drain() == Drain::Pending {
        tokio::select! {
            r = stream.writable() => if r.is_err() { return },
            _ = tokio::time::sleep_until(deadline) => return,
        }
    }
    // Half-close, then read and discard until the peer closes too: closing
    // a socket with unread input makes the kernel send a reset, which can
    // overtake the close frame still in flight (e.g. after garbage input).
    let _ = socket2::SockRef::from(stream.as_ref()).shutdown(std::net::Shutdown::Write);
    reader.discard();
    loop {
        tokio::select! {
            r = stream.readable() => {
                if r.is_err() || discard_input(&stream) {
                    return;
                }
            }
            _ = tokio::time::sleep_until(deadline) => return,
        }
    }
}

/// Reads and drops whatever the socket has; true once the peer has closed
/// (or the socket failed). A plain function, so its buffer lives on the
/// stack and not in every session's future.
fn discard_input(stream: &tokio::net::TcpStream) -> bool {
    let mut sink = [0u8; 4096];
    loop {
        match stream.try_read(&mut sink) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}
