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

use crate::conn::{Incoming, ReadError, WsReader};
use crate::handshake;
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
