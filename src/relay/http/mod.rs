//! Plain HTTP on the relay's port. Answers from memory ([`pages`]: health,
//! `/channels`, [`metrics`], the [`web`] pages) and endpoints that do more:
//! they hold the connection open ([`events`]: a channel's signal state and
//! the dashboard's stats as Server-Sent Events), read a request body
//! ([`input`]: `POST /input/{name}`), or need their own token rule
//! ([`turn`]: TURN credentials). [`reply`] is what every answer shares.
//! Admission has already read the head, routed it and checked the channel
//! token where one applies.
//!
//! CORS: these endpoints are meant for pages of other origins too. Without
//! `--allowed-origins` every origin may use them (`Access-Control-Allow-Origin: *`);
//! with it, a request whose `Origin` is not listed is refused `403` (as a
//! WebSocket handshake is) and a listed one is echoed back.

pub(crate) mod events;
pub(crate) mod input;
pub(crate) mod metrics;
pub(crate) mod pages;
pub(crate) mod reply;
pub(crate) mod turn;
pub(crate) mod web;

use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use bitstream_wire::handshake::Request;
use bytes::Bytes;

use self::reply::Refused;
use crate::relay::access::ratelimit::InputBuckets;
use crate::relay::access::turn::Turn;
use crate::relay::net::conn::Conn;
use crate::relay::net::handshake::Route;
use crate::relay::state::Relay;

/// What the plain-HTTP side keeps between requests, beside the relay's
/// channel state: rendered pages, the input rate limits, TURN's secret.
/// The server owns it and hands it to every connection's admission.
#[derive(Debug, Default)]
pub(crate) struct HttpState {
    /// `GET /channels`, rendered at most once a second.
    pub(crate) channels_page: PageCache,
    /// The `/stats/events` snapshot, rendered at most once a second.
    pub(crate) stats_page: PageCache,
    /// Token buckets of `POST /input`, per client address.
    pub(crate) inputs: InputBuckets,
    /// `GET /turn`'s secret and servers, when configured.
    pub(crate) turn: Option<Turn>,
}

/// An endpoint's request: its head, the client it stands for (a trusted
/// proxy's forwarded client) and the CORS header lines its answers carry.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Asked<'a> {
    /// The request head.
    pub(crate) req: &'a Request,
    /// The client's address.
    pub(crate) client: IpAddr,
    /// CORS header lines (see [`reply::cors`]).
    pub(crate) cors: &'a str,
}

/// How long a rendered page is served before it is rendered again.
const PAGE_TTL_MS: u64 = 1000;

/// A page rendered at most once per [`PAGE_TTL_MS`]: rendering walks every
/// channel, which at many thousands of channels takes milliseconds, and a
/// client polling it must not make the relay do that work per request.
/// Concurrent requests wait for one rendering.
#[derive(Debug, Default)]
pub(crate) struct PageCache {
    page: Mutex<Option<(u64, Bytes)>>,
}

impl PageCache {
    /// The page rendered at most [`PAGE_TTL_MS`] before `now`, rendering
    /// it with `render` if there is none.
    pub(crate) fn get_or_render(&self, now: u64, render: impl FnOnce() -> Bytes) -> Bytes {
        let mut page = self.page.lock().unwrap_or_else(|e| e.into_inner());
        match page.as_ref() {
            Some((at, body)) if now.saturating_sub(*at) < PAGE_TTL_MS => body.clone(),
            _ => {
                let body = render();
                *page = Some((now, body.clone()));
                body
            }
        }
    }
}

/// Serves `req` if it is for one of these endpoints: `Ok(true)` when it
/// was answered, `Ok(false)` when it is not theirs, or the refusal.
pub(crate) async fn serve(
    relay: &Arc<Relay>,
    state: &HttpState,
    stream: &Conn,
    req: &Request,
    route: &Route,
    rest: Vec<u8>,
    client: IpAddr,
) -> Result<bool, Refused> {
    let kind = match route {
        Route::Events(_) | Route::Input(_) => route,
        Route::Other(p) if p == "/stats/events" || p == "/turn" => route,
        _ => return Ok(false),
    };
    let cors = reply::cors(&relay.config.allowed_origins, req)?;
    if req.method == "OPTIONS" {
        let head = format!(
            "Access-Control-Allow-Methods: GET, POST, OPTIONS\r\nAccess-Control-Allow-Headers: Authorization, Content-Type, Last-Event-ID\r\nAccess-Control-Max-Age: 600\r\n{cors}"
        );
        reply::reply(stream, 204, "text/plain", &head, b"").await;
        return Ok(true);
    }
    let method = if matches!(kind, Route::Input(_)) {
        "POST"
    } else {
        "GET"
    };
    if req.method != method {
        let head = format!("Allow: {method}, OPTIONS\r\n{cors}");
        reply::reply(stream, 405, "text/plain", &head, b"method not allowed\n").await;
        return Ok(true);
    }
    match kind {
        Route::Events(name) => events::signal(relay, stream, req, name, client, &cors).await?,
        Route::Input(name) => {
            let asked = Asked {
                req,
                client,
                cors: &cors,
            };
            input::serve(relay, &state.inputs, stream, asked, name, rest).await
        }
        Route::Other(p) if p == "/turn" => {
            turn::serve(relay, state.turn.as_ref(), stream, req, &cors).await?
        }
        _ => events::stats(relay, &state.stats_page, stream, &cors).await,
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_carry_length_and_extra_headers() {
        let r = reply::response(202, "text/plain", "X-A: b\r\n", b"ok\n");
        let text = String::from_utf8(r).unwrap();
        assert!(text.starts_with("HTTP/1.1 202 Accepted\r\n"));
        assert!(text.contains("Content-Length: 3\r\n"));
        assert!(text.ends_with("X-A: b\r\n\r\nok\n"));
    }

    #[test]
    fn a_page_is_rendered_once_per_interval() {
        let cache = PageCache::default();
        let mut renders = 0;
        for now in [1000, 1500, 1999] {
            let body = cache.get_or_render(now, || {
                renders += 1;
                Bytes::from_static(b"a")
            });
            assert_eq!(&body[..], b"a");
        }
        assert_eq!(renders, 1);
        let body = cache.get_or_render(2000, || Bytes::from_static(b"b"));
        assert_eq!(&body[..], b"b", "rendered anew after the interval");
    }
}
