//! One client connection: connect to `ws://host:port/path`, send protocol
//! messages (masked, as RFC 6455 requires of clients) and receive whole
//! messages, answering pings on the way.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bitstream_wire::codec::CodecError;
use bitstream_wire::handshake::{self, HeadError};
use bitstream_wire::reader::{Incoming, MessageReader, ReadError};
use bitstream_wire::ws::{self, Side};
use bytes::Bytes;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// A byte stream a client can speak WebSocket over: a `TcpStream`, or a
/// TLS stream over one (e.g. `tokio_rustls::client::TlsStream`).
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Stream for S {}

/// Largest handshake response head a client accepts.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// How long a refused handshake's body is waited for.
const REFUSAL_BODY_WAIT: Duration = Duration::from_millis(500);

/// Why a client operation failed.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The URL is not `ws://host:port/path`.
    #[error("bad URL {0:?}: expected ws://host:port/path")]
    BadUrl(String),
    /// An empty list of relay URLs was given.
    #[error("no relay URL given")]
    NoUrl,
    /// The socket failed.
    #[error("socket error: {0}")]
    Io(#[from] io::Error),
    /// The server closed the TCP connection without a close frame.
    #[error("connection closed by server")]
    Eof,
    /// The server answered the handshake with something other than 101.
    #[error("handshake refused: HTTP {status}: {body}")]
    Refused {
        /// HTTP status code.
        status: u16,
        /// Response body.
        body: String,
    },
    /// The handshake response was malformed, too large or had a wrong accept key.
    #[error("bad handshake response: {0}")]
    BadHandshake(String),
    /// The server's frames broke RFC 6455 or the size limit.
    #[error("{0}")]
    Read(#[from] ReadError),
    /// The server closed the connection with this code and reason.
    #[error("closed by server: {0} {1}")]
    Closed(u16, String),
    /// A text message arrived where a binary one was expected.
    #[error("unexpected text message")]
    UnexpectedText,
    /// A picture could not be delta-encoded (size mismatch).
    #[error("codec: {0}")]
    Codec(#[from] CodecError),
}

impl From<HeadError> for ClientError {
    fn from(e: HeadError) -> Self {
        ClientError::BadHandshake(e.to_string())
    }
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
    stream: Box<dyn Stream>,
    reader: MessageReader,
    mask_seed: u32,
    /// Address connected to.
    pub peer: SocketAddr,
}

impl Client {
    /// Connects and completes the handshake; `max_message` bounds what it
    /// will receive.
    pub async fn connect(url: &str, max_message: usize) -> Result<Self, ClientError> {
        Self::connect_with_headers(url, &[], max_message).await
    }

    /// [`Client::connect`] sending extra request headers, e.g.
    /// `("Authorization", "Bearer <token>")` or `("Origin", "https://…")`.
    pub async fn connect_with_headers(
        url: &str,
        headers: &[(&str, &str)],
        max_message: usize,
    ) -> Result<Self, ClientError> {
        let (host, path) = parse_url(url)?;
        let stream = TcpStream::connect(&host).await?;
        stream.set_nodelay(true)?;
        Self::handshake_with_headers(stream, &host, &path, headers, max_message).await
    }

    /// Completes the client handshake for `path` on an already connected
    /// socket (e.g. one with a small receive buffer, for tests).
    pub async fn handshake(
        stream: TcpStream,
        host: &str,
        path: &str,
        max_message: usize,
    ) -> Result<Self, ClientError> {
        Self::handshake_with_headers(stream, host, path, &[], max_message).await
    }

    /// [`Client::handshake`] sending extra request headers.
    pub async fn handshake_with_headers(
        stream: TcpStream,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
        max_message: usize,
    ) -> Result<Self, ClientError> {
        let seed = seed_for(&stream);
        let peer = stream.peer_addr()?;
        Self::handshake_over(stream, peer, seed, host, path, headers, max_message).await
    }

    /// The client handshake over any connected byte stream to `peer`
    /// (e.g. a TLS stream, for `wss://`); `seed` varies the handshake key
    /// and the masks.
    pub async fn handshake_over(
        stream: impl Stream + 'static,
        peer: SocketAddr,
        seed: u32,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
        max_message: usize,
    ) -> Result<Self, ClientError> {
        let mut stream: Box<dyn Stream> = Box::new(stream);
        let key = handshake::client_key(seed);
        stream
            .write_all(&handshake::client_request_with_headers(
                host, path, &key, headers,
            ))
            .await?;
        let (resp, mut buf) = read_response(&mut stream, &key).await?;
        if resp.status != 101 {
            read_until_closed(&mut stream, &mut buf).await;
            let body = String::from_utf8_lossy(&buf[resp.head_len..])
                .trim()
                .to_owned();
            return Err(ClientError::Refused {
                status: resp.status,
                body,
            });
        }
        Ok(Self {
            reader: MessageReader::new(
                Side::Client,
                max_message,
                256 * 1024,
                &buf[resp.head_len..],
            ),
            peer,
            stream,
            mask_seed: seed | 1,
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

    async fn send_frame(&mut self, opcode: u8, payload: &[u8]) -> Result<(), ClientError> {
        let mask = self.next_mask();
        self.stream
            .write_all(&ws::client_frame(opcode, true, payload, mask))
            .await?;
        Ok(())
    }

    /// Sends one binary message.
    pub async fn send(&mut self, msg: &[u8]) -> Result<(), ClientError> {
        self.send_frame(ws::OP_BINARY, msg).await
    }

    /// Sends one text message.
    pub async fn send_text(&mut self, text: &str) -> Result<(), ClientError> {
        self.send_frame(ws::OP_TEXT, text.as_bytes()).await
    }

    /// Sends raw, already framed bytes (for tests of fragmentation and bad input).
    pub async fn send_raw(&mut self, wire: &[u8]) -> Result<(), ClientError> {
        self.stream.write_all(wire).await?;
        Ok(())
    }

    /// Reads the next message or control frame.
    async fn read(&mut self) -> Result<Incoming, ClientError> {
        loop {
            if let Some(m) = self.reader.parse()? {
                return Ok(m);
            }
            if self.stream.read_buf(self.reader.read_buf()).await? == 0 {
                return Err(ClientError::Eof);
            }
        }
    }

    /// Receives the next data message, answering pings on the way. A close
    /// from the server is answered and returned as [`ClientError::Closed`].
    pub async fn recv(&mut self) -> Result<Message, ClientError> {
        loop {
            match self.read().await? {
                Incoming::Binary(m) => return Ok(Message::Binary(m.payload_bytes())),
                Incoming::Text(m) => {
                    return Ok(Message::Text(
                        String::from_utf8_lossy(m.payload()).into_owned(),
                    ))
                }
                Incoming::Ping(p) => self.send_frame(ws::OP_PONG, &p).await?,
                Incoming::Pong => {}
                Incoming::Close(c) => {
                    let (code, reason) = c.unwrap_or((ws::CLOSE_NORMAL, String::new()));
                    let _ = self
                        .send_frame(ws::OP_CLOSE, &ws::close_payload(code, ""))
                        .await;
                    return Err(ClientError::Closed(code, reason));
                }
            }
        }
    }

    /// Receives the next binary message (a text message is an error here).
    pub async fn recv_binary(&mut self) -> Result<Bytes, ClientError> {
        match self.recv().await? {
            Message::Binary(b) => Ok(b),
            Message::Text(_) => Err(ClientError::UnexpectedText),
        }
    }

    /// Sends a close frame with `code` and waits briefly for the server's.
    pub async fn close(mut self, code: u16) -> Result<(), ClientError> {
        self.send_frame(ws::OP_CLOSE, &ws::close_payload(code, ""))
            .await?;
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while !matches!(self.read().await, Ok(Incoming::Close(_)) | Err(_)) {}
        })
        .await;
        Ok(())
    }
}

/// A per-connection seed for the handshake key and the masks.
fn seed_for(stream: &TcpStream) -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(7);
    let port = stream.local_addr().map(|a| a.port() as u32).unwrap_or(0);
    nanos ^ port.rotate_left(16)
}

/// Reads the server's handshake response head; returns it with every byte
/// read so far (the head and whatever followed it).
async fn read_response(
    stream: &mut Box<dyn Stream>,
    key: &str,
) -> Result<(handshake::Response, Vec<u8>), ClientError> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(ClientError::BadHandshake(
                "connection closed during handshake".into(),
            ));
        }
        if let Some(resp) = handshake::parse_response(&buf, key)? {
            return Ok((resp, buf));
        }
        if buf.len() >= MAX_RESPONSE_HEAD {
            return Err(ClientError::BadHandshake("response head too large".into()));
        }
    }
}

/// Reads a refusal's (small) body until the server closes, briefly.
async fn read_until_closed(stream: &mut Box<dyn Stream>, buf: &mut Vec<u8>) {
    let _ = tokio::time::timeout(REFUSAL_BODY_WAIT, async {
        while buf.len() < MAX_RESPONSE_HEAD && matches!(stream.read_buf(buf).await, Ok(n) if n > 0)
        {
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

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
