//! Plain HTTP answers on the relay's port: requests without a WebSocket
//! upgrade get a proper response (health, channel list, 426 on WebSocket
//! paths, 404 elsewhere) instead of a hang.

use serde_json::json;

use bitstream_wire::handshake::{http_response, Request};

use super::{metrics, web};
use crate::relay::access::auth;
use crate::relay::http::HttpState;
use crate::relay::net::handshake::Route;
use crate::relay::resources::clock::now_ms;
use crate::relay::state::{ChannelSummary, Relay};

/// The full HTTP response to a plain (non-upgrade) request.
pub(crate) fn respond(relay: &Relay, pages: &HttpState, req: &Request, route: &Route) -> Vec<u8> {
    if req.method != "GET" && req.method != "HEAD" {
        return http_response(
            405,
            "Method Not Allowed",
            "text/plain",
            b"method not allowed\n",
        );
    }
    match route {
        Route::Other(p) if p == "/healthz" => {
            let draining = relay.is_draining();
            let mut body = json!({
                "status": if draining { "shutting_down" } else { "ok" },
                "uptime_ms": relay.uptime_ms(),
                "connections": relay.connections.open.get(),
                "channels": relay.channels.len(),
                "version": env!("CARGO_PKG_VERSION"),
                "addr": relay.listen_addr.get().map(|a| a.to_string()),
                "tokens": relay.auth.is_some(),
                "tls": relay.tls.is_some(),
            });
            if let Some(cluster) = relay.cluster.get() {
                body["backplane"] = cluster.health();
            }
            let (status, reason) = if draining {
                (503, "Service Unavailable")
            } else {
                (200, "OK")
            };
            http_response(
                status,
                reason,
                "application/json",
                body.to_string().as_bytes(),
            )
        }
        Route::Other(p) if p == "/metrics" => http_response(
            200,
            "OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics::render(relay, metrics_scope(relay, req)).as_bytes(),
        ),
        Route::Other(p) if p == "/channels" => {
            let body = pages
                .channels_page
                .get_or_render(now_ms(), || channels_json(relay).into());
            http_response(200, "OK", "application/json", &body)
        }
        Route::Other(p) if p.starts_with(CHANNEL_PREFIX) => {
            let name = p.get(CHANNEL_PREFIX.len()..).unwrap_or_default();
            match relay.channel(name) {
                Some(ch) => http_response(
                    200,
                    "OK",
                    "application/json",
                    channel_json(relay, ch).to_string().as_bytes(),
                ),
                None => http_response(404, "Not Found", "text/plain", b"no such channel\n"),
            }
        }
        Route::Legacy => {
            let (ct, body) = web::asset("/").unwrap_or(("text/plain", b"no page\n"));
            http_response(200, "OK", ct, body)
        }
        Route::Other(p) => match web::asset(p) {
            Some((ct, body)) => http_response(200, "OK", ct, body),
            None => http_response(404, "Not Found", "text/plain", b"not found\n"),
        },
        _ => http_response(
            426,
            "Upgrade Required",
            "text/plain",
            b"this path takes WebSocket connections\n",
        ),
    }
}

/// What a `/metrics` request may see: with tokens on, the per-channel
/// series (they name channels, as `/channels` does) only with a token for
/// every channel (`ch: "*"`, by `?token=` or `Authorization: Bearer`); any
/// other request, a bad token's included, gets the relay-wide series, so a
/// scraper of totals needs no token.
fn metrics_scope(relay: &Relay, req: &Request) -> metrics::Scope {
    match &relay.auth {
        Some(verifier) if verifier.check_every_channel(auth::token_of(req)).is_err() => {
            metrics::Scope::Totals
        }
        _ => metrics::Scope::Channels,
    }
}

/// `GET /channels/{name}`: one channel as `/channels` lists it (a page
/// asks whether its channel still has a source; admission checks the
/// channel's token).
pub(crate) const CHANNEL_PREFIX: &str = "/channels/";

/// The `/channels` body: one object per channel.
fn channels_json(relay: &Relay) -> Vec<u8> {
    let list: Vec<_> = relay
        .channel_summaries()
        .into_iter()
        .map(|ch| channel_json(relay, ch))
        .collect();
    serde_json::Value::from(list).to_string().into_bytes()
}

/// One channel's object in `/channels`.
fn channel_json(relay: &Relay, ch: ChannelSummary) -> serde_json::Value {
    let t = ch.traffic;
    json!({
        "name": ch.name,
        "source": ch.source,
        "receivers": ch.receivers,
        "signal_peers": ch.signal_peers,
        "sse_clients": ch.sse_clients,
        "frames_in": t.frames_in,
        "pictures_in": t.pictures_in,
        "bytes_in": t.bytes_in,
        "frames_out": t.frames_out,
        "bytes_out": t.bytes_out,
        "cached_bytes": ch.cached_bytes,
        "catchups": t.catchups,
        "resumes": t.resumes,
        "resume_ring_bytes": ch.resume_ring_bytes,
        "source_node": relay.cluster.get().and_then(|c| c.source_node(&ch.name, ch.source)),
    })
}
