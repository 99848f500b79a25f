//! Receivers as a typical client library makes them (`--client whole`):
//! one task each, every message assembled whole before it is looked at
//! (tokio-tungstenite on a WebSocket relay; one `Vec` per message on the
//! plain-TCP reference), every byte hashed. The lean default
//! ([`peer::receive`](crate::peer::receive)) streams bytes through one
//! shared buffer instead; both feed the same verifier and latency sinks,
//! so a run's figures differ only by what the receivers cost and how they
//! read.

use std::sync::Arc;

use futures_util::StreamExt;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::now_ns;
use crate::peer::{RecvCfg, RecvStat, Sample, Sink};
use crate::verify::Verdict;
use crate::wire::{Framing, Parser};

/// Largest message a whole-message receiver accepts (the relay's default
/// largest source message is 64 MiB).
const MAX_MESSAGE: usize = 64 << 20;

/// The receiver loop: reads whole messages until the relay closes or the
/// connection fails; on its end, says why in `st`.
pub async fn receive<S: Sink>(
    stream: TcpStream,
    leftover: Vec<u8>,
    cfg: RecvCfg,
    rid: u64,
    st: Arc<RecvStat>,
    sink: Arc<S>,
) {
    let mut p = Parser::new(cfg.framing, cfg.check_every, rid);
    let ended = match cfg.framing {
        Framing::Ws => ws_loop(stream, leftover, &mut p, &st, &*sink).await,
        Framing::Tcp => tcp_loop(stream, leftover, &mut p, &st, &*sink).await,
    };
    st.end(ended);
}

/// Verifies one whole message and records it.
fn take(p: &mut Parser, msg: &[u8], st: &RecvStat, sink: &impl Sink) {
    let m = p.whole(msg);
    let now_us = now_ns() / 1000;
    let verdict = st.v.lock().unwrap().on_msg(&m);
    if verdict.delivered() {
        sink.record(&[Sample {
            idx: m.idx,
            send_ns: m.send_ns,
            lat_us: now_us.saturating_sub(m.send_ns / 1000).max(1),
        }]);
    } else if verdict == Verdict::Corrupt {
        sink.corrupt(1);
    }
}

/// tokio-tungstenite with its default read buffer; pings are answered and
/// the close echoed by the library.
async fn ws_loop(
    stream: TcpStream,
    leftover: Vec<u8>,
    p: &mut Parser,
    st: &RecvStat,
    sink: &impl Sink,
) -> String {
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE));
    let mut ws =
        WebSocketStream::from_partially_read(stream, leftover, Role::Client, Some(config)).await;
    let (mut closed, mut error) = (None, None);
    while let Some(m) = ws.next().await {
        match m {
            Ok(Message::Binary(b)) => take(p, &b, st, sink),
            Ok(Message::Close(f)) => closed = Some(f.map_or(1005, |f| u16::from(f.code))),
            Ok(_) => {}
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    match (closed, error) {
        (Some(c), _) => format!("closed by relay with {c}"),
        (None, Some(e)) => format!("websocket error: {e}"),
        (None, None) => "connection closed without close frame".into(),
    }
}

/// The plain-TCP reference's framing (u32 little-endian length, then the
/// message), read into a fresh `Vec` per message as a simple client would.
async fn tcp_loop(
    stream: TcpStream,
    leftover: Vec<u8>,
    p: &mut Parser,
    st: &RecvStat,
    sink: &impl Sink,
) -> String {
    let mut r = std::io::Cursor::new(leftover).chain(stream);
    loop {
        let len = match r.read_u32_le().await {
            Ok(n) => n as usize,
            Err(_) => return "connection closed without close frame".into(),
        };
        if len > MAX_MESSAGE {
            return format!("parse error: a {len}-byte message");
        }
        let mut msg = vec![0u8; len];
        if let Err(e) = r.read_exact(&mut msg).await {
            return format!("socket error: {e}");
        }
        take(p, &msg, st, sink);
    }
}
