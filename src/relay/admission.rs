//! From an accepted socket to a running session: the request head read
//! within its time and size limits, the path routed, plain HTTP answered,
//! and a WebSocket peer admitted to its channel in its role, or refused with
//! a clear HTTP status.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bitstream_wire::handshake::{http_response, upgrade_response, Request};
use bitstream_wire::reader::{MessageReader, WireMessage};
use bitstream_wire::ws;
use bytes::Bytes;
use tokio::net::TcpStream;

use crate::relay::channel::{Channel, Fanout};
use crate::relay::clock::now_ms;
use crate::relay::egress::Egress;
use crate::relay::handshake::{self, RequestError, Route, DEFAULT_CHANNEL};
use crate::relay::peer::{Peer, Role};
use crate::relay::state::Relay;
use crate::relay::stats::Refusal;
use crate::relay::{http, session};

/// How long a plain HTTP answer (health, metrics, the page) may take to write.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a refusal may take to write: a refused peer that does not read
/// holds its socket no longer than this.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(1);

/// A refused request: what is counted and what the client is told.
struct Refused {
    why: Refusal,
    status: u16,
    text: String,
}

impl Refused {
    fn new(why: Refusal, status: u16, text: impl Into<String>) -> Self {
        Self {
            why,
            status,
            text: text.into(),
        }
    }
}

/// Writes a refusal: `status` with a one-line text body.
pub(crate) async fn answer(stream: &TcpStream, status: u16, text: &str) {
    let reason = match status {
        400 => "Bad Request",
        404 => "Not Found",
        408 => "Request Timeout",
        409 => "Conflict",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let resp = http_response(status, reason, "text/plain", format!("{text}\n").as_bytes());
    let _ = tokio::time::timeout(REFUSAL_TIMEOUT, handshake::write_all(stream, &resp)).await;
}

/// Serves one connection: plain HTTP, or a WebSocket peer until it leaves.
pub(crate) async fn handle(relay: &Arc<Relay>, stream: TcpStream) {
    let stream = Arc::new(stream);
    if let Err(r) = serve(relay, &stream).await {
        relay.connections.refuse(r.why);
        answer(&stream, r.status, &r.text).await;
    }
}

async fn serve(relay: &Arc<Relay>, stream: &Arc<TcpStream>) -> Result<(), Refused> {
    let Some((req, rest)) = read_request(relay, stream).await? else {
        return Ok(());
    };
    let route = handshake::route(&req.target)
        .map_err(|e| Refused::new(Refusal::BadName, 400, e.to_string()))?;
    if !req.upgrade {
        let resp = http::respond(relay, &req, &route);
        let _ = tokio::time::timeout(ANSWER_TIMEOUT, handshake::write_all(stream, &resp)).await;
        return Ok(());
    }
    if relay.is_draining() {
        return Err(Refused::new(
            Refusal::ShuttingDown,
            503,
            "relay shutting down",
        ));
    }
    // Only what the session needs outlives the handshake: the request head
    // is dropped before the session runs (it would otherwise stay with
    // every connection for its whole life).
    let key = websocket_key(&req)?.to_owned();
    drop(req);
    let (name, wanted) = match &route {
        Route::Source(n) => (n.as_str(), Some(Role::Source)),
        Route::Receiver(n) => (n.as_str(), Some(Role::Receiver)),
        Route::Signal(n) => (n.as_str(), Some(Role::Signal)),
        Route::Legacy => (DEFAULT_CHANNEL, None),
        Route::Other(p) if p == "/echo" && relay.config.echo_endpoint => {
            // Echo peers get a private channel: nothing is shared or fanned out.
            let channel = Arc::new(Channel::new(
                Arc::from("echo"),
                None,
                relay.budgets.clone(),
                0,
                Fanout::SINGLE,
                now_ms(),
            ));
            return join(relay, &channel, stream, Some(Role::Echo), &key, rest).await;
        }
        Route::Other(_) => return Err(Refused::new(Refusal::BadRequest, 404, "no such endpoint")),
    };
    let ip = stream
        .peer_addr()
        .map_or(IpAddr::from([0, 0, 0, 0]), |a| a.ip());
    let attached = relay.attach(name, ip);
    drop(route);
    let channel = attached.map_err(|why| {
        let text = match why {
            Refusal::ChannelsPerIpLimit => "channel limit for your address reached",
            _ => "channel limit reached",
        };
        Refused::new(why, 503, text)
    })?;
    let attached = Attached {
        relay: relay.clone(),
        channel,
    };
    join(relay, &attached.channel, stream, wanted, &key, rest).await
}

/// Detaches from the channel however the connection ends (a panic in the
/// session included), so the GC can collect it.
struct Attached {
    relay: Arc<Relay>,
    channel: Arc<Channel>,
}

impl Drop for Attached {
    fn drop(&mut self) {
        self.relay.detach(&self.channel);
    }
}

/// Reads the request head within `--handshake-timeout-ms`; `None` when the
/// client went away (nothing to answer).
async fn read_request(
    relay: &Relay,
    stream: &TcpStream,
) -> Result<Option<(Request, Vec<u8>)>, Refused> {
    let cfg = &relay.config;
    let read = handshake::read_request(stream, cfg.max_request_head);
    match tokio::time::timeout(cfg.handshake_timeout(), read).await {
        Ok(Ok(r)) => Ok(Some(r)),
        Ok(Err(RequestError::Io(_))) => Ok(None),
        Ok(Err(e @ RequestError::TooLarge(_))) => {
            Err(Refused::new(Refusal::BadRequest, 431, e.to_string()))
        }
        Ok(Err(e)) => Err(Refused::new(Refusal::BadRequest, 400, e.to_string())),
        Err(_) => Err(Refused::new(
            Refusal::HandshakeTimeout,
            408,
            "handshake timed out",
        )),
    }
}

/// The `Sec-WebSocket-Key` of a version 13 upgrade.
fn websocket_key(req: &Request) -> Result<&str, Refused> {
    req.ws_key
        .as_deref()
        .filter(|_| req.ws_version.as_deref() == Some("13"))
        .ok_or_else(|| {
            Refused::new(
                Refusal::BadRequest,
                400,
                "WebSocket version 13 and a key are required",
            )
        })
}

/// Admits an upgraded connection to `channel` (role `wanted`, or the legacy
/// rule when `None`), answers the handshake and runs its session.
async fn join(
    relay: &Arc<Relay>,
    channel: &Arc<Channel>,
    stream: &Arc<TcpStream>,
    wanted: Option<Role>,
    key: &str,
    rest: Vec<u8>,
) -> Result<(), Refused> {
    let cfg = &relay.config;
    let peer = Arc::new(Peer {
        id: relay.next_peer_id(),
        egress: Egress::new(
            stream.clone(),
            cfg.egress_queue,
            cfg.egress_mode,
            relay.budgets.memory.clone(),
        ),
    });
    let role = match wanted {
        Some(Role::Source) | None if channel.claim_source(&peer) => Role::Source,
        Some(Role::Source) => {
            return Err(Refused::new(
                Refusal::SourceTaken,
                409,
                "channel already has a source",
            ))
        }
        Some(role) => role,
        None => Role::Receiver,
    };
    let full = match role {
        Role::Receiver => channel.receiver_count() >= cfg.max_receivers,
        Role::Signal => channel.signal_peer_count() >= cfg.max_signal_peers,
        Role::Source | Role::Echo => false,
    };
    if full {
        return Err(Refused::new(
            Refusal::ReceiverLimit,
            503,
            "receiver limit reached on this channel",
        ));
    }
    peer.egress.send(&Bytes::from(upgrade_response(key)));
    let joined = match role {
        Role::Receiver => channel.add_receiver(&peer, cfg.max_receivers),
        Role::Signal => channel.add_signal_peer(&peer, cfg.max_signal_peers),
        Role::Source | Role::Echo => Ok(()),
    };
    if let Err(why) = joined {
        // Lost a race for the last place after the upgrade was answered.
        relay.connections.refuse(why);
        let close = ws::close_payload(ws::CLOSE_TRY_AGAIN, "receiver limit reached");
        peer.egress
            .send(&WireMessage::encode(ws::OP_CLOSE, &close).wire);
        let _ = peer.egress.drain();
        return Ok(());
    }
    let (max_message, chunk) = match role {
        Role::Source => (cfg.max_message, 16 * 1024),
        Role::Receiver => (cfg.max_input_message, 512),
        Role::Signal => (cfg.max_signal_message, 2048),
        Role::Echo => (cfg.max_message, 64 * 1024),
    };
    let reader = MessageReader::new(ws::Side::Server, max_message, chunk, &rest);
    drop(rest);
    let gauge = match role {
        Role::Source => &relay.connections.sources,
        Role::Receiver => &relay.connections.receivers,
        Role::Signal | Role::Echo => &relay.connections.signal_peers,
    };
    gauge.inc();
    tracing::debug!(peer = peer.id, channel = %channel.name, ?role, "peer joined");
    session::run(relay.clone(), channel.clone(), peer, role, reader).await;
    gauge.sub(1);
    Ok(())
}
