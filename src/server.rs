//! The accept loop and admission: limits checked at accept, the handshake
//! read within its timeout, the path routed, the peer admitted to its
//! channel in its role (or refused with a clear HTTP status), then handed to
//! its `session`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use crate::channel::{Channel, Peer, Role};
use crate::conn::WsReader;
use crate::egress::Egress;
use crate::handshake::{self, RequestError, Route, DEFAULT_CHANNEL};
use crate::relay::Relay;
use crate::stats::Refusal;
use crate::{http, session, ws};

/// Accepts connections until the task is dropped. While the relay drains
/// at shutdown it keeps answering: health says 503, upgrades are refused.
pub async fn serve(listener: TcpListener, relay: Arc<Relay>) {
    loop {
        match listener.accept().await {
            Ok((stream, addr)) => accept(&relay, stream, addr),
            Err(e) => {
                // Typically EMFILE: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Decrements the open-connection gauge and the per-IP count when a
/// connection task ends, however it ends.
struct OpenGuard {
    relay: Arc<Relay>,
    ip: IpAddr,
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.relay.connections.open.sub(1);
        self.relay.release_ip(self.ip);
    }
}

fn accept(relay: &Arc<Relay>, stream: TcpStream, addr: SocketAddr) {
    relay.connections.accepted.inc();
    let _ = stream.set_nodelay(true);
    let over = if relay.connections.open.get() >= relay.config.max_connections as u64 {
        Some(Refusal::ConnectionLimit)
    } else if !relay.admit_ip(addr.ip()) {
        Some(Refusal::PerIpLimit)
    } else {
        None
    };
    if let Some(why) = over {
        relay.connections.refuse(why);
        tokio::spawn(async move {
            let body = format!("{}\n", why.label());
            let resp = ws::http_response(503, "Service Unavailable", "text/plain", body.as_bytes());
            let _ =
                tokio::time::timeout(Duration::from_secs(1), handshake::write_all(&stream, &resp))
                    .await;
        });
        return;
    }
    relay.connections.open.inc();
    let guard = OpenGuard {
        relay: relay.clone(),
        ip: addr.ip(),
    };
    tokio::spawn(async move {
        handle(&guard.relay, stream, addr).await;
        drop(guard);
    });
}

async fn refuse(
    relay: &Relay,
    stream: &TcpStream,
    why: Refusal,
    status: u16,
    reason: &str,
    text: &str,
) {
    relay.connections.refuse(why);
    let resp = ws::http_response(status, reason, "text/plain", format!("{text}\n").as_bytes());
    let _ = tokio::time::timeout(Duration::from_secs(1), handshake::write_all(stream, &resp)).await;
}

async fn handle(relay: &Arc<Relay>, stream: TcpStream, addr: SocketAddr) {
    let cfg = &relay.config;
    let read = handshake::read_request(&stream, cfg.max_request_head);
    let (req, rest) = match tokio::time::timeout(cfg.handshake_timeout(), read).await {
        Ok(Ok(r)) => r,
        Ok(Err(RequestError::Io(_))) => return,
        Ok(Err(e @ RequestError::TooLarge(_))) => {
            return refuse(
                relay,
                &stream,
                Refusal::BadRequest,
                431,
                "Request Header Fields Too Large",
                &e.to_string(),
            )
            .await;
        }
        Ok(Err(e)) => {
            return refuse(
                relay,
                &stream,
                Refusal::BadRequest,
                400,
                "Bad Request",
                &e.to_string(),
            )
            .await
        }
        Err(_) => {
            return refuse(
                relay,
                &stream,
                Refusal::HandshakeTimeout,
                408,
                "Request Timeout",
                "handshake timed out",
            )
            .await;
        }
    };
    let route = match handshake::route(&req.target) {
        Ok(r) => r,
        Err(e) => {
            return refuse(
                relay,
                &stream,
                Refusal::BadName,
                400,
                "Bad Request",
                &e.to_string(),
            )
            .await
        }
    };
    if !req.upgrade {
        let resp = http::respond(relay, &req, &route);
        let _ = tokio::time::timeout(Duration::from_secs(5), handshake::write_all(&stream, &resp))
            .await;
        return;
    }
    if relay.is_draining() {
        return refuse(
            relay,
            &stream,
            Refusal::ShuttingDown,
            503,
            "Service Unavailable",
            "relay shutting down",
        )
        .await;
    }
    let Some(key) = req
        .ws_key
        .as_deref()
        .filter(|_| req.ws_version.as_deref() == Some("13"))
    else {
        return refuse(
            relay,
            &stream,
            Refusal::BadRequest,
            400,
            "Bad Request",
            "WebSocket version 13 and a key are required",
        )
        .await;
    };
    let (name, wanted) = match &route {
        Route::Source(n) => (n.as_str(), Some(Role::Source)),
        Route::Receiver(n) => (n.as_str(), Some(Role::Receiver)),
        Route::Signal(n) => (n.as_str(), Some(Role::Signal)),
        Route::Legacy => (DEFAULT_CHANNEL, None),
        Route::Other(p) if p == "/echo" && cfg.echo_endpoint => {
            // Echo peers get a private channel: nothing is shared or fanned out.
            let channel = Arc::new(Channel::new(Arc::from("echo"), 0, Default::default()));
            channel.attach();
            return admit(relay, &channel, stream, addr, Some(Role::Echo), key, &rest).await;
        }
        Route::Other(_) => {
            return refuse(
                relay,
                &stream,
                Refusal::BadRequest,
                404,
                "Not Found",
                "no such endpoint",
            )
            .await
        }
    };
    let channel = match relay.attach(name) {
        Ok(c) => c,
        Err(why) => {
            return refuse(
                relay,
                &stream,
                why,
                503,
                "Service Unavailable",
                "channel limit reached",
            )
            .await
        }
    };
    admit(relay, &channel, stream, addr, wanted, key, &rest).await;
    channel.detach();
}

/// Admits an upgraded connection to `channel` (role `wanted`, or the legacy
/// rule when `None`), answers the handshake and runs its session.
async fn admit(
    relay: &Arc<Relay>,
    channel: &Arc<Channel>,
    stream: TcpStream,
    addr: SocketAddr,
    wanted: Option<Role>,
    key: &str,
    rest: &[u8],
) {
    let cfg = &relay.config;
    let stream = Arc::new(stream);
    let peer = Arc::new(Peer {
        id: relay.next_peer_id(),
        addr,
        egress: Egress::new(stream.clone(), cfg.egress_queue, cfg.egress_mode),
    });
    let role = match wanted {
        Some(Role::Source) | None if channel.claim_source(&peer) => Role::Source,
        Some(Role::Source) => {
            return refuse(
                relay,
                &stream,
                Refusal::SourceTaken,
                409,
                "Conflict",
                "channel already has a source",
            )
            .await;
        }
        Some(Role::Signal) => Role::Signal,
        Some(Role::Echo) => Role::Echo,
        Some(Role::Receiver) | None => Role::Receiver,
    };
    let full = match role {
        Role::Receiver => channel.receiver_count() >= cfg.max_receivers,
        Role::Signal => channel.signal_peer_count() >= cfg.max_signal_peers,
        Role::Source | Role::Echo => false,
    };
    if full {
        return refuse(
            relay,
            &stream,
            Refusal::ReceiverLimit,
            503,
            "Service Unavailable",
            "receiver limit reached on this channel",
        )
        .await;
    }
    peer.egress
        .send(&bytes::Bytes::from(ws::upgrade_response(key)));
    let joined = match role {
        Role::Receiver => channel.add_receiver(&peer, cfg.max_receivers),
        Role::Signal => channel.add_signal_peer(&peer, cfg.max_signal_peers),
        Role::Source | Role::Echo => Ok(()),
    };
    if let Err(why) = joined {
        relay.connections.refuse(why);
        let close = crate::conn::WireMessage::encode(
            ws::OP_CLOSE,
            &ws::close_payload(ws::CLOSE_TRY_AGAIN, "receiver limit reached"),
        );
        peer.egress.send(&close.wire);
        let _ = peer.egress.drain();
        return;
    }
    let (max_message, chunk) = match role {
        Role::Source => (cfg.max_message, 16 * 1024),
        Role::Receiver => (cfg.max_input_message, 512),
        Role::Signal => (cfg.max_signal_message, 2048),
        Role::Echo => (cfg.max_message, 64 * 1024),
    };
    let reader = WsReader::new(ws::Role::Server, max_message, chunk, rest);
    let gauge = match role {
        Role::Source => &relay.connections.sources,
        Role::Receiver => &relay.connections.receivers,
        Role::Signal | Role::Echo => &relay.connections.signal_peers,
    };
    gauge.inc();
    tracing::debug!(peer = peer.id, %addr, channel = %channel.name, ?role, "peer joined");
    session::run(relay.clone(), channel.clone(), peer, role, reader).await;
    gauge.sub(1);
}
