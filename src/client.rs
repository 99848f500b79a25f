//! A small WebSocket client for PROTOCOL.md peers, on the crate's own
//! framing: connect to `ws://host:port/path`, send protocol messages
//! (masked, as RFC 6455 requires of clients) and receive whole messages.
//! Tests, examples and the load driver use it.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use thiserror::Error;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use serde_json::{Map, Value};

use crate::codec::{self, CodecError};
use crate::conn::{Incoming, ReadError, WsReader};
use crate::handshake;
use crate::protocol::{self, FrameType, Header, HEADER_LEN};
use crate::ws;

/// Why a client operation failed.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The URL is not `ws://host:port/path`.
    #[error("bad URL {0:?}: expected ws://host:port/path")]
    BadUrl(String),
    /// The socket failed.
    #[error("socket error: {0}")]
    Io(#[from] io::Error),
    /// The server answered the handshake with something other than 101.
    #[error("handshake refused: HTTP {status}: {body}")]
    Refused {
        /// HTTP status code.
        status: u16,
        /// Response body.
        body: String,
    },
    /// The handshake response was malformed or had a wrong accept key.
    #[error("bad handshake response: {0}")]
    BadHandshake(String),
    /// Reading failed (protocol error or connection lost).
    #[error("{0}")]
    Read(#[from] ReadError),
    /// The server closed the connection with this code and reason.
    #[error("closed by server: {0} {1}")]
    Closed(u16, String),
    /// A picture could not be delta-encoded (size mismatch).
    #[error("codec: {0}")]
    Codec(#[from] CodecError),
}

/// A message received by a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A binary message (a protocol message on data paths).
    Binary(Bytes),
    /// A text message (signaling).
    Text(String),
}

/// Splits `ws://host:port/path` into the socket address string and path.
pub fn parse_url(url: &str) -> Result<(String, String), ClientError> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or_else(|| ClientError::BadUrl(url.into()))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if host.is_empty() {
        return Err(ClientError::BadUrl(url.into()));
    }
    Ok((host.to_owned(), path.to_owned()))
}

/// A connected WebSocket client.
pub struct Client {
    stream: TcpStream,
    reader: WsReader,
    mask_seed: u32,
    /// Address connected to.
    pub peer: SocketAddr,
}

impl Client {
    /// Connects and completes the handshake; `max_message` bounds what it
    /// will receive.
    pub async fn connect(url: &str, max_message: usize) -> Result<Self, ClientError> {
        let (host, path) = parse_url(url)?;
        let stream = TcpStream::connect(&host).await?;
        stream.set_nodelay(true)?;
        Self::handshake(stream, &host, &path, max_message).await
    }

    /// Completes the client handshake on an already connected socket.
    pub async fn handshake(
        stream: TcpStream,
        host: &str,
        path: &str,
        max_message: usize,
    ) -> Result<Self, ClientError> {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(7)
            ^ stream
                .local_addr()
                .map(|a| a.port() as u32)
                .unwrap_or(0)
                .rotate_left(16);
        let key = {
            use base64::Engine;
            let mut k = [0u8; 16];
            for (i, b) in k.iter_mut().enumerate() {
                *b = (seed.rotate_left(i as u32 * 5) as u8) ^ (i as u8).wrapping_mul(31);
            }
            base64::engine::general_purpose::STANDARD.encode(k)
        };
        handshake::write_all(&stream, &ws::client_request(host, path, &key)).await?;
        let mut buf = Vec::new();
        let (head_len, status, body_start) = loop {
            stream.readable().await?;
            let mut chunk = [0u8; 4096];
            match stream.try_read(&mut chunk) {
                Ok(0) => {
                    return Err(ClientError::BadHandshake(
                        "connection closed during handshake".into(),
                    ))
                }
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e.into()),
            }
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(&buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let status = resp.code.unwrap_or(0);
                    if status == 101 {
                        let accept = resp
                            .headers
                            .iter()
                            .find(|h| h.name.eq_ignore_ascii_case("sec-websocket-accept"))
                            .map(|h| String::from_utf8_lossy(h.value).trim().to_owned());
                        if accept.as_deref() != Some(ws::accept_key(&key).as_str()) {
                            return Err(ClientError::BadHandshake(
                                "wrong Sec-WebSocket-Accept".into(),
                            ));
                        }
                    }
                    break (n, status, n);
                }
                Ok(httparse::Status::Partial) if buf.len() < 16 * 1024 => {}
                Ok(httparse::Status::Partial) => {
                    return Err(ClientError::BadHandshake("response head too large".into()))
                }
                Err(e) => return Err(ClientError::BadHandshake(e.to_string())),
            }
        };
        if status != 101 {
            // Read the (small) body until the server closes.
            let _ = tokio::time::timeout(Duration::from_millis(500), async {
                loop {
                    if stream.readable().await.is_err() {
                        return;
                    }
                    let mut chunk = [0u8; 1024];
                    match stream.try_read(&mut chunk) {
                        Ok(0) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(_) => return,
                    }
                }
            })
            .await;
            let body = String::from_utf8_lossy(&buf[body_start..])
                .trim()
                .to_owned();
            return Err(ClientError::Refused { status, body });
        }
        let peer = stream.peer_addr()?;
        Ok(Self {
            reader: WsReader::new(ws::Role::Client, max_message, 256 * 1024, &buf[head_len..]),
            stream,
            mask_seed: seed | 1,
            peer,
        })
    }

    fn next_mask(&mut self) -> [u8; 4] {
        // xorshift32: masks need not be secret here, only present.
        let mut x = self.mask_seed;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.mask_seed = x;
        x.to_ne_bytes()
    }

    /// Sends one binary message.
    pub async fn send(&mut self, msg: &[u8]) -> Result<(), ClientError> {
        let mask = self.next_mask();
        self.stream
            .write_all(&ws::client_frame(ws::OP_BINARY, true, msg, mask))
            .await?;
        Ok(())
    }

    /// Sends one text message.
    pub async fn send_text(&mut self, text: &str) -> Result<(), ClientError> {
        let mask = self.next_mask();
        self.stream
            .write_all(&ws::client_frame(ws::OP_TEXT, true, text.as_bytes(), mask))
            .await?;
        Ok(())
    }

    /// Sends raw, already framed bytes (for tests of fragmentation and bad input).
    pub async fn send_raw(&mut self, wire: &[u8]) -> Result<(), ClientError> {
        self.stream.write_all(wire).await?;
        Ok(())
    }

    /// Receives the next data message, answering pings on the way. A close
    /// from the server is answered and returned as [`ClientError::Closed`].
    pub async fn recv(&mut self) -> Result<Message, ClientError> {
        loop {
            match self.reader.next(&self.stream).await? {
                Incoming::Binary(m) => return Ok(Message::Binary(m.payload_bytes())),
                Incoming::Text(m) => {
                    return Ok(Message::Text(
                        String::from_utf8_lossy(m.payload()).into_owned(),
                    ))
                }
                Incoming::Ping(p) => {
                    let mask = self.next_mask();
                    self.stream
                        .write_all(&ws::client_frame(ws::OP_PONG, true, &p, mask))
                        .await?;
                }
                Incoming::Pong => {}
                Incoming::Close(c) => {
                    let (code, reason) = c.unwrap_or((ws::CLOSE_NORMAL, String::new()));
                    let mask = self.next_mask();
                    let _ = self
                        .stream
                        .write_all(&ws::client_frame(
                            ws::OP_CLOSE,
                            true,
                            &ws::close_payload(code, ""),
                            mask,
                        ))
                        .await;
                    return Err(ClientError::Closed(code, reason));
                }
            }
        }
    }

    /// Receives the next binary message (text messages are an error here).
    pub async fn recv_binary(&mut self) -> Result<Bytes, ClientError> {
        match self.recv().await? {
            Message::Binary(b) => Ok(b),
            Message::Text(_) => Err(ClientError::BadHandshake("unexpected text message".into())),
        }
    }

    /// Sends a close frame with `code` and waits briefly for the server's.
    pub async fn close(mut self, code: u16) -> Result<(), ClientError> {
        let mask = self.next_mask();
        self.stream
            .write_all(&ws::client_frame(
                ws::OP_CLOSE,
                true,
                &ws::close_payload(code, ""),
                mask,
            ))
            .await?;
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                match self.reader.next(&self.stream).await {
                    Ok(Incoming::Close(_)) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        Ok(())
    }

    /// The underlying socket (e.g. to shrink its receive buffer in tests).
    pub fn socket(&self) -> &TcpStream {
        &self.stream
    }
}

/// Exponential backoff with jitter for reconnection: the n-th wait is a
/// random duration in `[d/2, d]` where `d = min(base * 2^n, max)`.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
    seed: u64,
}

impl Backoff {
    /// A backoff starting at `base` and capped at `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x5EED)
            | 1;
        Self {
            base,
            max,
            attempt: 0,
            seed,
        }
    }

    /// The next wait.
    pub fn next_delay(&mut self) -> Duration {
        let d = self
            .base
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.max);
        self.attempt += 1;
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let half = d / 2;
        half + Duration::from_nanos(self.seed % (half.as_nanos() as u64 + 1))
    }

    /// Starts over after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// The current picture a [`Receiver`] has rebuilt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Picture {
    /// Width in pixels.
    pub width: u16,
    /// Height in pixels.
    pub height: u16,
    /// RGBA8 pixels, `width*height*4` bytes.
    pub rgba: Vec<u8>,
}

/// What [`Receiver::next`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The picture changed (keyframe or delta applied).
    Picture(Header),
    /// The signal state changed.
    Signal(Header),
    /// Any other frame (audio, opaque, ping, stream end), as received.
    Frame(Header, Bytes),
    /// The connection was lost and re-established; state was reset and the
    /// relay's catch-up follows.
    Reconnected,
}

/// Folds a signal message into a JSON object: sync replaces, diff merges
/// shallowly, `null` deletes. Errors if the payload is not a JSON object.
pub fn fold_signal(
    state: &mut Map<String, Value>,
    diff: bool,
    json: &[u8],
) -> Result<(), serde_json::Error> {
    let obj: Map<String, Value> = serde_json::from_slice(json)?;
    if diff {
        for (k, v) in obj {
            if v.is_null() {
                state.remove(&k);
            } else {
                state.insert(k, v);
            }
        }
    } else {
        *state = obj;
    }
    Ok(())
}

/// A receiver that rebuilds the source's current picture (keyframes and
/// ZRLE deltas) and signal state, and reconnects with backoff and jitter,
/// resynchronizing from the relay's catch-up.
pub struct Receiver {
    url: String,
    client: Option<Client>,
    picture: Option<Picture>,
    signal: Map<String, Value>,
    backoff: Backoff,
    /// Frames received since creation.
    pub frames: u64,
    /// Reconnections so far.
    pub reconnects: u64,
    /// Deltas that could not be applied (no picture yet, or bad data).
    pub undecodable: u64,
}

impl Receiver {
    /// Connects to a `/stream/{name}` URL.
    pub async fn connect(url: &str) -> Result<Self, ClientError> {
        let client = Client::connect(url, 64 << 20).await?;
        Ok(Self {
            url: url.to_owned(),
            client: Some(client),
            picture: None,
            signal: Map::new(),
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
            frames: 0,
            reconnects: 0,
            undecodable: 0,
        })
    }

    /// The rebuilt picture, once a keyframe has arrived.
    pub fn picture(&self) -> Option<&Picture> {
        self.picture.as_ref()
    }

    /// The folded signal state.
    pub fn signal(&self) -> &Map<String, Value> {
        &self.signal
    }

    /// Sends an input message to the source (dropped while disconnected).
    pub async fn send_input(&mut self, msg: &[u8]) -> Result<(), ClientError> {
        match self.client.as_mut() {
            Some(c) => c.send(msg).await,
            None => Ok(()),
        }
    }

    /// Receives and applies the next message, reconnecting as needed.
    pub async fn next(&mut self) -> Result<Event, ClientError> {
        loop {
            let Some(client) = self.client.as_mut() else {
                tokio::time::sleep(self.backoff.next_delay()).await;
                if let Ok(c) = Client::connect(&self.url, 64 << 20).await {
                    self.client = Some(c);
                    self.backoff.reset();
                    self.reconnects += 1;
                    // The relay's catch-up is the new truth.
                    self.picture = None;
                    self.signal.clear();
                    return Ok(Event::Reconnected);
                }
                continue;
            };
            let msg = match client.recv().await {
                Ok(Message::Binary(b)) => b,
                Ok(Message::Text(_)) => continue,
                Err(_) => {
                    self.client = None;
                    continue;
                }
            };
            self.frames += 1;
            return Ok(self.apply(msg));
        }
    }

    fn apply(&mut self, msg: Bytes) -> Event {
        let Ok(h) = Header::parse(&msg) else {
            return Event::Frame(Header::default(), msg);
        };
        let payload = &msg[HEADER_LEN.min(msg.len())..];
        match h.frame_type() {
            FrameType::Pixels | FrameType::Keyframe if payload.len() == h.rgba_len() => {
                self.picture = Some(Picture {
                    width: h.width,
                    height: h.height,
                    rgba: payload.to_vec(),
                });
                Event::Picture(h)
            }
            FrameType::DeltaPixels => {
                let ok = match self.picture.as_mut() {
                    // `apply_delta` validates first: on error the picture is untouched.
                    Some(p) if (p.width, p.height) == (h.width, h.height) => {
                        codec::apply_delta(&mut p.rgba, payload).is_ok()
                    }
                    _ => false,
                };
                if ok {
                    Event::Picture(h)
                } else {
                    self.undecodable += 1;
                    Event::Frame(h, msg)
                }
            }
            t @ (FrameType::SignalSync | FrameType::SignalDiff) => {
                if fold_signal(&mut self.signal, t == FrameType::SignalDiff, payload).is_ok() {
                    Event::Signal(h)
                } else {
                    Event::Frame(h, msg)
                }
            }
            _ => Event::Frame(h, msg),
        }
    }
}

/// A source that sends pictures (as keyframes and ZRLE deltas, choosing for
/// itself), signal state and other frames, and reconnects with backoff and
/// jitter. After a reconnect it first re-sends its current picture as a
/// keyframe and its whole signal state as a `SignalSync`, so the relay and
/// every receiver resynchronize.
pub struct Source {
    url: String,
    client: Option<Client>,
    prev: Option<Picture>,
    signal: Map<String, Value>,
    backoff: Backoff,
    seq: u16,
    started: std::time::Instant,
    since_keyframe: u32,
    /// Send a keyframe at least every this many pictures.
    pub keyframe_interval: u32,
    /// Reconnections so far.
    pub reconnects: u64,
}

impl Source {
    /// Connects to a `/source/{name}` URL.
    pub async fn connect(url: &str) -> Result<Self, ClientError> {
        let client = Client::connect(url, 16 << 20).await?;
        Ok(Self {
            url: url.to_owned(),
            client: Some(client),
            prev: None,
            signal: Map::new(),
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
            seq: 0,
            started: std::time::Instant::now(),
            since_keyframe: 0,
            keyframe_interval: 120,
            reconnects: 0,
        })
    }

    fn header(&mut self) -> (u16, u32) {
        self.seq = self.seq.wrapping_add(1);
        (self.seq, self.started.elapsed().as_millis() as u32)
    }

    /// Sends a raw protocol message, reconnecting (and resynchronizing) first
    /// if the connection is down. A message that fails mid-send is retried
    /// once on the new connection.
    pub async fn send_message(&mut self, msg: &[u8]) -> Result<(), ClientError> {
        for _ in 0..2 {
            self.ensure_connected().await?;
            if let Some(c) = self.client.as_mut() {
                match c.send(msg).await {
                    Ok(()) => return Ok(()),
                    Err(_) => self.client = None,
                }
            }
        }
        Err(ClientError::Io(std::io::Error::from(
            std::io::ErrorKind::NotConnected,
        )))
    }

    async fn ensure_connected(&mut self) -> Result<(), ClientError> {
        while self.client.is_none() {
            tokio::time::sleep(self.backoff.next_delay()).await;
            let Ok(mut c) = Client::connect(&self.url, 16 << 20).await else {
                continue;
            };
            self.backoff.reset();
            self.reconnects += 1;
            let (seq, ts) = self.header();
            let mut resync = Vec::new();
            if let Some(p) = &self.prev {
                resync.push(protocol::pixels_keyframe(
                    seq, ts, p.width, p.height, &p.rgba,
                ));
            }
            if !self.signal.is_empty() {
                let json = serde_json::to_vec(&self.signal).unwrap_or_default();
                resync.push(protocol::signal(false, seq, ts, &json));
            }
            let mut ok = true;
            for m in &resync {
                ok &= c.send(m).await.is_ok();
            }
            if ok {
                self.client = Some(c);
                self.since_keyframe = 0;
            }
        }
        Ok(())
    }

    /// Sends a picture: a keyframe when needed (first picture, size change,
    /// every `keyframe_interval`, or a delta larger than the picture), else
    /// a ZRLE delta against the previous picture.
    pub async fn send_picture(
        &mut self,
        width: u16,
        height: u16,
        rgba: &[u8],
    ) -> Result<(), ClientError> {
        let (seq, ts) = self.header();
        let delta = match &self.prev {
            Some(p)
                if (p.width, p.height) == (width, height)
                    && self.since_keyframe < self.keyframe_interval =>
            {
                let mut z = Vec::new();
                codec::encode_delta(&p.rgba, rgba, &mut z)?;
                (z.len() < rgba.len()).then_some(z)
            }
            _ => None,
        };
        let msg = match delta {
            Some(z) => {
                self.since_keyframe += 1;
                protocol::delta_pixels(seq, ts, width, height, &z)
            }
            None => {
                self.since_keyframe = 0;
                protocol::pixels_keyframe(seq, ts, width, height, rgba)
            }
        };
        self.prev = Some(Picture {
            width,
            height,
            rgba: rgba.to_vec(),
        });
        self.send_message(&msg).await
    }

    /// Merges `diff` into the signal state and sends it as a `SignalDiff`.
    pub async fn send_signal_diff(&mut self, diff: &Map<String, Value>) -> Result<(), ClientError> {
        let json = serde_json::to_vec(diff).unwrap_or_default();
        let _ = fold_signal(&mut self.signal, true, &json);
        let (seq, ts) = self.header();
        self.send_message(&protocol::signal(true, seq, ts, &json))
            .await
    }

    /// Receives the next input from a receiver (reconnecting as needed).
    pub async fn recv_input(&mut self) -> Result<Bytes, ClientError> {
        loop {
            self.ensure_connected().await?;
            if let Some(c) = self.client.as_mut() {
                match c.recv().await {
                    Ok(Message::Binary(b)) => return Ok(b),
                    Ok(Message::Text(_)) => {}
                    Err(_) => self.client = None,
                }
            }
        }
    }

    /// The folded signal state this source has sent.
    pub fn signal(&self) -> &Map<String, Value> {
        &self.signal
    }
}

/// A WebRTC signaling peer on `/signal/{name}`: text messages it sends go
/// to every other peer of the channel. Reconnects with backoff and jitter.
pub struct SignalPeer {
    url: String,
    client: Option<Client>,
    backoff: Backoff,
}

impl SignalPeer {
    /// Connects to a `/signal/{name}` URL.
    pub async fn connect(url: &str) -> Result<Self, ClientError> {
        Ok(Self {
            client: Some(Client::connect(url, 1 << 20).await?),
            url: url.to_owned(),
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
        })
    }

    async fn ensure_connected(&mut self) {
        while self.client.is_none() {
            tokio::time::sleep(self.backoff.next_delay()).await;
            if let Ok(c) = Client::connect(&self.url, 1 << 20).await {
                self.backoff.reset();
                self.client = Some(c);
            }
        }
    }

    /// Sends a text message (SDP, ICE candidate…) to the other peers.
    pub async fn send(&mut self, text: &str) -> Result<(), ClientError> {
        self.ensure_connected().await;
        let Some(c) = self.client.as_mut() else {
            return Err(ClientError::Io(std::io::ErrorKind::NotConnected.into()));
        };
        let r = c.send_text(text).await;
        if r.is_err() {
            self.client = None;
        }
        r
    }

    /// Receives the next text message from another peer.
    pub async fn recv(&mut self) -> String {
        loop {
            self.ensure_connected().await;
            let Some(c) = self.client.as_mut() else {
                continue;
            };
            match c.recv().await {
                Ok(Message::Text(t)) => return t,
                Ok(Message::Binary(_)) => {}
                Err(_) => self.client = None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let d: Vec<_> = (0..8).map(|_| b.next_delay()).collect();
        assert!(d[0] >= Duration::from_millis(50) && d[0] <= Duration::from_millis(100));
        assert!(d[3] >= Duration::from_millis(400) && d[3] <= Duration::from_millis(800));
        assert!(d.iter().all(|x| *x <= Duration::from_secs(2)));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn signal_folding() {
        let mut m = Map::new();
        fold_signal(&mut m, false, br#"{"a":1,"b":2}"#).unwrap();
        fold_signal(&mut m, true, br#"{"a":null,"c":3}"#).unwrap();
        assert_eq!(Value::Object(m.clone()), serde_json::json!({"b":2,"c":3}));
        assert!(fold_signal(&mut m, true, b"[]").is_err());
    }

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("ws://127.0.0.1:9100/stream/a").unwrap(),
            ("127.0.0.1:9100".into(), "/stream/a".into())
        );
        assert_eq!(parse_url("ws://h:1").unwrap().1, "/");
        assert!(parse_url("http://h:1/").is_err());
        assert!(parse_url("ws:///x").is_err());
    }
}
