//! `GET /turn`: time-limited TURN credentials for WebRTC peers (see
//! [`crate::relay::access::turn`] for the scheme), configured by
//! `--turn-secret-file` and `--turn-uris` (`404` without).
//! With tokens required, any valid token will do (any channel, any role:
//! whoever may take part in some channel may relay media through TURN);
//! the id is then the token's `sub` when it has one. Otherwise the id is a
//! fresh relay-unique number.

use bitstream_wire::handshake::Request;

use super::reply::{reply, Refused};
use crate::relay::access::auth::{self, Denied};
use crate::relay::access::turn::Turn;
use crate::relay::net::conn::Conn;
use crate::relay::state::Relay;

/// Serves `GET /turn` (origin already checked).
pub(super) async fn serve(
    relay: &Relay,
    turn: Option<&Turn>,
    stream: &Conn,
    req: &Request,
    cors: &str,
) -> Result<(), Refused> {
    let Some(turn) = turn else {
        reply(stream, 404, "text/plain", cors, b"TURN is not configured\n").await;
        return Ok(());
    };
    let sub = match &relay.auth {
        Some(v) => {
            let token = auth::token_of(req).ok_or(Denied::Missing)?;
            v.verify(token)?.sub
        }
        None => None,
    };
    // A `:` would end the expiry part early for the TURN server.
    let id = sub
        .map(|s| s.replace(':', "_"))
        .unwrap_or_else(|| format!("relay{}", relay.next_peer_id()));
    let body = turn.credentials(&id, auth::unix_now()).to_string();
    reply(stream, 200, "application/json", cors, body.as_bytes()).await;
    Ok(())
}
