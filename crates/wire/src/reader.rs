//! Whole WebSocket messages out of a byte stream: a reader that owns its
//! buffer, is fed by whatever socket the caller has, and yields messages.
//!
//! Large payloads are read straight into one allocation of their exact size
//! and unmasked in place; the client's frame head is then rewritten in place
//! as the server's (always 4 bytes shorter), so a received message is already
//! the encoded frame every receiver gets: no copy between socket and fan-out.
//! An over-size message is refused from its head alone, before any of it is
//! buffered. No I/O here: the caller reads into [`MessageReader::read_buf`]
//! and calls [`MessageReader::parse`], so all progress lives in the reader
//! (which makes the caller's read loop cancel-safe).

use bytes::{Buf, Bytes, BytesMut};
use thiserror::Error;

use crate::ws::{self, Side, WsError};

/// A complete message as it will go out on a server→client connection: the
/// unmasked frame head followed by the payload, in one shared buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireMessage {
    /// Head + payload.
    pub wire: Bytes,
    /// Length of the head at the front of `wire`.
    pub head_len: usize,
}

impl WireMessage {
    /// Encodes `payload` as an unmasked server frame of `opcode`.
    pub fn encode(opcode: u8, payload: &[u8]) -> Self {
        Self {
            head_len: ws::server_header_len(payload.len()),
            wire: Bytes::from(ws::server_frame(opcode, payload)),
        }
    }

    /// The message payload (a protocol message for binary frames).
    pub fn payload(&self) -> &[u8] {
        &self.wire[self.head_len..]
    }

    /// The payload as a shared slice of `wire`.
    pub fn payload_bytes(&self) -> Bytes {
        self.wire.slice(self.head_len..)
    }
}

/// What the reader yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A complete binary message.
    Binary(WireMessage),
    /// A complete text message (UTF-8 checked).
    Text(WireMessage),
    /// A ping with its payload (to be answered with a pong).
    Ping(Bytes),
    /// A pong.
    Pong,
    /// The peer's close frame: code and reason, if any.
    Close(Option<(u16, String)>),
}

/// Why a byte stream cannot yield another message (each closes the connection).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ReadError {
    /// The peer broke RFC 6455.
    #[error("protocol error: {0}")]
    Ws(#[from] WsError),
    /// A message larger than the limit was announced.
    #[error("message of {size} bytes exceeds the limit of {limit}")]
    TooBig {
        /// Announced size so far.
        size: u64,
        /// The configured limit.
        limit: usize,
    },
}

impl ReadError {
    /// The close code to send the peer for this error.
    pub fn close_code(&self) -> u16 {
        match self {
            ReadError::Ws(WsError::InvalidUtf8) => ws::CLOSE_INVALID_DATA,
            ReadError::Ws(_) => ws::CLOSE_PROTOCOL,
            ReadError::TooBig { .. } => ws::CLOSE_TOO_BIG,
        }
    }
}

/// A fragmented message being reassembled: 10 bytes of room for the server
/// head, then the payload so far.
struct Partial {
    opcode: u8,
    buf: BytesMut,
    /// Bytes of a text message's payload known to be valid UTF-8 so far.
    utf8_ok: usize,
}

impl Partial {
    /// Fails fast on a text message whose fragments so far cannot be the
    /// start of valid UTF-8 (a code point cut at the end is fine).
    fn check_utf8(&mut self) -> Result<(), WsError> {
        if self.opcode != ws::OP_TEXT {
            return Ok(());
        }
        self.utf8_ok += utf8_prefix(&self.buf[ws::MAX_SERVER_HEAD_LEN + self.utf8_ok..])?;
        Ok(())
    }
}

/// Reads WebSocket messages out of the bytes fed to it. See the module docs.
pub struct MessageReader {
    buf: BytesMut,
    side: Side,
    max_message: usize,
    chunk: usize,
    /// Bytes wanted from the buffer's start to make progress.
    need: usize,
    partial: Option<Partial>,
    /// Retired large buffers, reused once every message cut from them has
    /// been released (written to every receiver, replaced in the cache),
    /// with the size of each one's allocation.
    spares: Vec<(BytesMut, usize)>,
    /// The size of the allocation `buf` is in when it is a large one made
    /// for a message (0 for an ordinary read buffer).
    large_alloc: usize,
    /// Progress through an incomplete text frame at the buffer's start.
    early: EarlyText,
}

/// How far an incomplete text frame has been unmasked and checked, so that
/// invalid UTF-8 fails as soon as it arrives, not when the frame completes.
#[derive(Debug, Default, Clone, Copy)]
struct EarlyText {
    /// Payload bytes already unmasked in place.
    unmasked: usize,
    /// Payload bytes known to be whole, valid code points.
    valid: usize,
}

/// Retired large buffers a reader keeps for reuse.
const MAX_SPARES: usize = 2;

/// Readers with a read chunk up to this size free their buffer when idle.
const IDLE_FREE_CHUNK: usize = 4096;

impl MessageReader {
    /// A reader for our `side`, refusing messages over `max_message` bytes
    /// and reading at least `chunk` bytes at a time. `initial` holds bytes
    /// already read past the handshake.
    pub fn new(side: Side, max_message: usize, chunk: usize, initial: &[u8]) -> Self {
        Self {
            buf: BytesMut::from(initial),
            side,
            max_message,
            chunk: chunk.max(64),
            need: ws::MAX_HEAD_LEN,
            partial: None,
            spares: Vec::new(),
            large_alloc: 0,
            early: EarlyText::default(),
        }
    }

    /// True if a whole frame is already buffered: [`MessageReader::parse`]
    /// will make progress without reading the socket (so a caller can put
    /// off work, such as answering pings, until the burst has been parsed).
    pub fn frame_ready(&self) -> bool {
        match ws::parse_head(&self.buf, self.side) {
            Ok(Some(head)) => self.buf.len() as u64 >= head.head_len as u64 + head.payload_len,
            Ok(None) => false,
            Err(_) => true,
        }
    }

    /// Drops whatever is buffered (the connection is closing).
    pub fn discard(&mut self) {
        self.buf = BytesMut::new();
        self.early = EarlyText::default();
        self.partial = None;
        self.spares.clear();
        self.large_alloc = 0;
    }

    /// Bytes of large buffers this reader holds or is about to allocate:
    /// the message being read when it is larger than a read chunk (its
    /// whole size, before it has arrived), fragments reassembled so far,
    /// and retired buffers kept for reuse. Ordinary read buffers (a read
    /// chunk) are not counted. A caller that budgets memory charges this
    /// after [`MessageReader::parse`] returns `None` and before
    /// [`MessageReader::read_buf`].
    pub fn held(&self) -> usize {
        let reading = self.reading();
        let partial = self.partial.as_ref().map_or(0, |p| p.buf.capacity());
        let spares: usize = self.spares.iter().map(|(_, n)| n).sum();
        reading + partial + spares
    }

    /// The size of the frame being read when it is larger than a read
    /// chunk (known from its head, before it has arrived), else 0.
    pub fn reading(&self) -> usize {
        if self.need > self.chunk {
            self.need
        } else {
            0
        }
    }

    /// Frees the retired buffers kept for reuse (to save memory; later
    /// large messages get fresh ones).
    pub fn drop_spares(&mut self) {
        self.spares.clear();
    }

    /// The buffer to read socket bytes into, with room for at least what
    /// the reader waits for (and at least one read chunk). Read into its
    /// spare capacity, then call [`MessageReader::parse`].
    pub fn read_buf(&mut self) -> &mut BytesMut {
        self.reserve(self.need);
        &mut self.buf
    }

    /// Parses one message out of the buffer if it is complete; otherwise
    /// makes room for what is missing and returns `None`.
    pub fn parse(&mut self) -> Result<Option<Incoming>, ReadError> {
        loop {
            let Some(head) = ws::parse_head(&self.buf, self.side)? else {
                self.need = ws::MAX_HEAD_LEN;
                if self.buf.is_empty() && self.partial.is_none() && self.chunk <= IDLE_FREE_CHUNK {
                    // An idle peer holds no read buffer between messages.
                    self.buf = BytesMut::new();
                }
                return Ok(None);
            };
            let so_far = self
                .partial
                .as_ref()
                .map_or(0, |p| p.buf.len() - ws::MAX_SERVER_HEAD_LEN);
            let size = so_far as u64 + head.payload_len;
            if !head.is_control() && size > self.max_message as u64 {
                return Err(ReadError::TooBig {
                    size,
                    limit: self.max_message,
                });
            }
            let total = head.head_len + head.payload_len as usize;
            if self.buf.len() < total {
                self.need = total;
                self.check_text_early(&head)?;
                return Ok(None);
            }
            let mut frame = self.buf.split_to(total);
            self.need = ws::MAX_HEAD_LEN;
            if total > self.chunk {
                self.retire_tail();
            }
            let done = std::mem::take(&mut self.early).unmasked;
            if let Some(mask) = head.mask {
                ws::apply_mask(&mut frame[head.head_len + done..], mask, done);
            }
            if let Some(msg) = self.on_frame(head, frame)? {
                return Ok(Some(msg));
            }
        }
    }

    /// Unmasks and checks what has arrived of an incomplete text frame (or
    /// text continuation), so invalid UTF-8 fails fast (Autobahn 6.4.x).
    fn check_text_early(&mut self, head: &ws::FrameHead) -> Result<(), WsError> {
        let text = match head.opcode {
            ws::OP_TEXT => true,
            ws::OP_CONTINUATION => self
                .partial
                .as_ref()
                .is_some_and(|p| p.opcode == ws::OP_TEXT),
            _ => false,
        };
        if !text {
            return Ok(());
        }
        let payload = &mut self.buf[head.head_len..];
        let early = &mut self.early;
        if let Some(mask) = head.mask {
            ws::apply_mask(&mut payload[early.unmasked..], mask, early.unmasked);
        }
        early.unmasked = payload.len();
        if early.valid == 0 {
            // The first bytes may complete a code point the message's earlier
            // fragments left cut.
            let carry = match (&self.partial, head.opcode) {
                (Some(p), ws::OP_CONTINUATION) => &p.buf[ws::MAX_SERVER_HEAD_LEN + p.utf8_ok..],
                _ => &[][..],
            };
            if !carry.is_empty() {
                let mut joined = carry.to_vec();
                joined.extend_from_slice(&payload[..payload.len().min(4)]);
                early.valid = utf8_prefix(&joined)?.saturating_sub(carry.len());
                if early.valid == 0 {
                    return Ok(());
                }
            }
        }
        early.valid += utf8_prefix(&payload[early.valid..])?;
        Ok(())
    }

    fn on_frame(
        &mut self,
        head: ws::FrameHead,
        mut frame: BytesMut,
    ) -> Result<Option<Incoming>, ReadError> {
        match head.opcode {
            ws::OP_PING => {
                frame.advance(head.head_len);
                Ok(Some(Incoming::Ping(frame.freeze())))
            }
            ws::OP_PONG => Ok(Some(Incoming::Pong)),
            ws::OP_CLOSE => {
                let close = ws::parse_close(&frame[head.head_len..])?;
                Ok(Some(Incoming::Close(close.map(|(c, r)| (c, r.to_owned())))))
            }
            ws::OP_CONTINUATION => {
                let Some(p) = self.partial.as_mut() else {
                    return Err(WsError::BadFragmentation.into());
                };
                p.buf.extend_from_slice(&frame[head.head_len..]);
                p.check_utf8()?;
                if !head.fin {
                    return Ok(None);
                }
                let Partial { opcode, buf, .. } =
                    self.partial.take().ok_or(WsError::BadFragmentation)?;
                finish(opcode, buf, ws::MAX_SERVER_HEAD_LEN).map(Some)
            }
            opcode => {
                if self.partial.is_some() {
                    return Err(WsError::BadFragmentation.into());
                }
                if !head.fin {
                    let mut buf = BytesMut::with_capacity(
                        ws::MAX_SERVER_HEAD_LEN + head.payload_len as usize,
                    );
                    buf.extend_from_slice(&[0u8; ws::MAX_SERVER_HEAD_LEN]);
                    buf.extend_from_slice(&frame[head.head_len..]);
                    let mut p = Partial {
                        opcode,
                        buf,
                        utf8_ok: 0,
                    };
                    p.check_utf8()?;
                    self.partial = Some(p);
                    return Ok(None);
                }
                finish(opcode, frame, head.head_len).map(Some)
            }
        }
    }

    /// Ensures the buffer can hold `total` bytes from its start, reading at
    /// least `chunk` bytes at a time.
    ///
    /// A message larger than a read chunk gets a buffer of its own: a retired
    /// one whose earlier messages are all released if there is one (warm
    /// pages, no page faults), else a fresh one.
    fn reserve(&mut self, total: usize) {
        let want = total.saturating_sub(self.buf.len()).max(self.chunk);
        if self.buf.capacity() - self.buf.len() >= want {
            return;
        }
        if want <= self.chunk {
            self.buf.reserve(want);
            return;
        }
        let needed = self.buf.len() + want;
        let (mut next, alloc) = match self
            .spares
            .iter_mut()
            .position(|(s, _)| s.try_reclaim(needed))
        {
            Some(i) => self.spares.swap_remove(i),
            None => {
                let b = BytesMut::with_capacity(needed);
                let n = b.capacity();
                (b, n)
            }
        };
        next.extend_from_slice(&self.buf);
        self.buf = next;
        self.large_alloc = alloc;
    }

    /// After a large message was cut from the buffer: keep the buffer's tail
    /// (which shares the large allocation) as a spare, and carry the few
    /// bytes read past the message over into a small buffer.
    fn retire_tail(&mut self) {
        let mut tail = std::mem::take(&mut self.buf);
        self.buf = BytesMut::from(&tail[..]);
        let alloc = std::mem::take(&mut self.large_alloc);
        if alloc == 0 {
            return;
        }
        tail.clear();
        if self.spares.len() >= MAX_SPARES {
            self.spares.remove(0);
        }
        self.spares.push((tail, alloc));
    }
}

/// How many leading bytes of `bytes` are whole, valid code points: all of
/// them, or up to a code point cut at the end (more may follow); an error
/// if they cannot be the start of valid UTF-8.
fn utf8_prefix(bytes: &[u8]) -> Result<usize, WsError> {
    match std::str::from_utf8(bytes) {
        Ok(_) => Ok(bytes.len()),
        Err(e) if e.error_len().is_none() => Ok(e.valid_up_to()),
        Err(_) => Err(WsError::InvalidUtf8),
    }
}

/// Turns a buffer holding a message's payload after `head_end` bytes into
/// the server frame of that message: the server head is written in place
/// just before the payload (there is always room: a client head is never
/// shorter), so the payload is never copied. Text is checked for UTF-8.
fn finish(opcode: u8, mut buf: BytesMut, head_end: usize) -> Result<Incoming, ReadError> {
    let len = buf.len() - head_end;
    let mut h = [0u8; ws::MAX_SERVER_HEAD_LEN];
    let n = ws::server_header(opcode, len, &mut h);
    let start = head_end - n;
    buf[start..head_end].copy_from_slice(&h[..n]);
    buf.advance(start);
    let msg = WireMessage {
        wire: buf.freeze(),
        head_len: n,
    };
    if opcode == ws::OP_TEXT {
        std::str::from_utf8(msg.payload()).map_err(|_| WsError::InvalidUtf8)?;
        Ok(Incoming::Text(msg))
    } else {
        Ok(Incoming::Binary(msg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(r: &mut MessageReader, bytes: &[u8]) -> Vec<Incoming> {
        r.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(m) = r.parse().unwrap() {
            out.push(m);
        }
        out
    }

    #[test]
    fn rewrites_client_frames_as_server_frames() {
        for len in [0usize, 10, 200, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let mut r = MessageReader::new(Side::Server, 1 << 20, 1024, &[]);
            let got = feed(
                &mut r,
                &ws::client_frame(ws::OP_BINARY, true, &payload, [9, 8, 7, 6]),
            );
            assert_eq!(got.len(), 1);
            let Incoming::Binary(m) = &got[0] else {
                panic!("not binary")
            };
            assert_eq!(m.payload(), &payload[..]);
            assert_eq!(&m.wire[..], &ws::server_frame(ws::OP_BINARY, &payload)[..]);
        }
    }

    #[test]
    fn reassembles_fragments_with_control_frames_between() {
        let mut r = MessageReader::new(Side::Server, 1 << 20, 64, &[]);
        let mut wire = ws::client_frame(ws::OP_BINARY, false, b"hello ", [1, 2, 3, 4]);
        wire.extend(ws::client_frame(ws::OP_PING, true, b"p", [5, 5, 5, 5]));
        wire.extend(ws::client_frame(
            ws::OP_CONTINUATION,
            false,
            &[b'x'; 300],
            [1, 1, 1, 1],
        ));
        wire.extend(ws::client_frame(
            ws::OP_CONTINUATION,
            true,
            b"!",
            [0, 0, 0, 9],
        ));
        // Feed one byte at a time: every split point must work.
        let mut got = Vec::new();
        for b in wire {
            got.extend(feed(&mut r, &[b]));
        }
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], Incoming::Ping(Bytes::from_static(b"p")));
        let Incoming::Binary(m) = &got[1] else {
            panic!("not binary")
        };
        let mut expect = b"hello ".to_vec();
        expect.extend([b'x'; 300]);
        expect.push(b'!');
        assert_eq!(m.payload(), &expect[..]);
        assert_eq!(&m.wire[..], &ws::server_frame(ws::OP_BINARY, &expect)[..]);
    }

    #[test]
    fn refuses_oversize_from_the_head() {
        let mut r = MessageReader::new(Side::Server, 1000, 64, &[]);
        let wire = ws::client_frame(ws::OP_BINARY, true, &[0u8; 1001], [1, 2, 3, 4]);
        r.buf.extend_from_slice(&wire[..8]);
        assert!(matches!(
            r.parse(),
            Err(ReadError::TooBig { size: 1001, .. })
        ));
        let mut r = MessageReader::new(Side::Server, 1000, 64, &[]);
        let mut wire = ws::client_frame(ws::OP_BINARY, false, &[0u8; 600], [1, 2, 3, 4]);
        wire.extend(ws::client_frame(
            ws::OP_CONTINUATION,
            true,
            &[0u8; 600],
            [1, 2, 3, 4],
        ));
        r.buf.extend_from_slice(&wire);
        assert!(matches!(
            r.parse(),
            Err(ReadError::TooBig { size: 1200, .. })
        ));
    }

    #[test]
    fn protocol_errors() {
        let mut r = MessageReader::new(Side::Server, 1000, 64, &[]);
        r.buf.extend_from_slice(&ws::client_frame(
            ws::OP_CONTINUATION,
            true,
            b"x",
            [1, 2, 3, 4],
        ));
        assert!(matches!(
            r.parse(),
            Err(ReadError::Ws(WsError::BadFragmentation))
        ));
        let mut r = MessageReader::new(Side::Server, 1000, 64, &[]);
        r.buf.extend_from_slice(&ws::client_frame(
            ws::OP_TEXT,
            true,
            &[0xFF, 0xFE],
            [1, 2, 3, 4],
        ));
        let e = r.parse().unwrap_err();
        assert_eq!(e.close_code(), ws::CLOSE_INVALID_DATA);
        let mut r = MessageReader::new(Side::Server, 1000, 64, &[]);
        let mut wire = ws::client_frame(ws::OP_TEXT, false, b"a", [1, 2, 3, 4]);
        wire.extend(ws::client_frame(ws::OP_BINARY, true, b"b", [1, 2, 3, 4]));
        r.buf.extend_from_slice(&wire);
        assert!(matches!(
            r.parse(),
            Err(ReadError::Ws(WsError::BadFragmentation))
        ));
    }

    proptest::proptest! {
        /// No byte string, however split, makes the reader panic; it either
        /// waits for more, yields messages, or returns a typed error.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300), split in 0usize..300) {
            for side in [Side::Server, Side::Client] {
                let mut r = MessageReader::new(side, 100, 64, &[]);
                let split = split.min(bytes.len());
                for part in [&bytes[..split], &bytes[split..]] {
                    r.buf.extend_from_slice(part);
                    while let Ok(Some(_)) = r.parse() {}
                }
            }
        }
    }

    #[test]
    fn invalid_utf8_in_a_first_fragment_fails_fast() {
        let mut r = MessageReader::new(Side::Server, 1000, 64, &[]);
        r.buf.extend_from_slice(&ws::client_frame(
            ws::OP_TEXT,
            false,
            &[b'a', 0xFF],
            [1, 2, 3, 4],
        ));
        assert!(matches!(
            r.parse(),
            Err(ReadError::Ws(WsError::InvalidUtf8))
        ));
        // A code point (the euro sign) split across fragments is fine.
        let mut r = MessageReader::new(Side::Server, 1000, 64, &[]);
        let euro = [0xE2u8, 0x82, 0xAC];
        let mut wire = ws::client_frame(ws::OP_TEXT, false, &euro[..1], [1, 2, 3, 4]);
        wire.extend(ws::client_frame(
            ws::OP_CONTINUATION,
            false,
            &euro[1..2],
            [1, 2, 3, 4],
        ));
        wire.extend(ws::client_frame(
            ws::OP_CONTINUATION,
            true,
            &euro[2..],
            [1, 2, 3, 4],
        ));
        assert_eq!(feed(&mut r, &wire).len(), 1);
    }

    #[test]
    fn large_message_buffers_are_reused_once_released() {
        let mut r = MessageReader::new(Side::Server, 1 << 20, 64, &[]);
        let mut prev: Option<(WireMessage, Vec<u8>)> = None;
        let mut ptrs = Vec::new();
        for i in 0..8u8 {
            let payload = vec![i; 100_000];
            let wire = ws::client_frame(ws::OP_BINARY, true, &payload, [1, 2, 3, 4]);
            // Deliver the head, let the reader size its buffer, then the rest.
            r.buf.extend_from_slice(&wire[..14]);
            assert!(r.parse().unwrap().is_none());
            r.reserve(r.need);
            r.buf.extend_from_slice(&wire[14..]);
            let Some(Incoming::Binary(m)) = r.parse().unwrap() else {
                panic!("no message")
            };
            assert_eq!(m.payload(), &payload[..]);
            // The message still held (as the cache holds the latest frame)
            // is never overwritten by a reused buffer.
            if let Some((p, bytes)) = &prev {
                assert_eq!(p.payload(), &bytes[..]);
            }
            ptrs.push(m.wire.as_ptr() as usize);
            prev = Some((m, payload));
        }
        ptrs.sort();
        ptrs.dedup();
        assert!(
            ptrs.len() <= MAX_SPARES + 1,
            "{} distinct buffers for 8 messages",
            ptrs.len()
        );
        assert!(r.spares.len() <= MAX_SPARES);
    }

    #[test]
    fn held_counts_large_buffers_before_they_are_filled() {
        let mut r = MessageReader::new(Side::Server, 1 << 20, 64, &[]);
        let payload = vec![3u8; 100_000];
        let wire = ws::client_frame(ws::OP_BINARY, true, &payload, [1, 2, 3, 4]);
        r.buf.extend_from_slice(&wire[..14]);
        assert!(r.parse().unwrap().is_none());
        assert_eq!(r.held(), wire.len(), "the whole message, before it arrives");
        r.reserve(r.need);
        r.buf.extend_from_slice(&wire[14..]);
        let Some(Incoming::Binary(m)) = r.parse().unwrap() else {
            panic!("no message")
        };
        // The message is the caller's now; its buffer stays as a spare.
        assert!(r.held() >= wire.len() && r.held() < 2 * wire.len());
        r.drop_spares();
        assert_eq!(r.held(), 0);
        assert_eq!(m.payload(), &payload[..]);
        // Small messages hold nothing large.
        let small = ws::client_frame(ws::OP_BINARY, true, &[1, 2, 3], [1, 2, 3, 4]);
        r.buf.extend_from_slice(&small);
        assert!(r.parse().unwrap().is_some());
        assert_eq!(r.held(), 0);
    }

    #[test]
    fn frame_ready_says_whether_parse_can_progress() {
        let mut r = MessageReader::new(Side::Server, 1000, 64, &[]);
        assert!(!r.frame_ready());
        let wire = ws::client_frame(ws::OP_PING, true, b"abc", [1, 2, 3, 4]);
        r.buf.extend_from_slice(&wire[..wire.len() - 1]);
        assert!(!r.frame_ready());
        r.buf.extend_from_slice(&wire[wire.len() - 1..]);
        assert!(r.frame_ready());
        assert!(r.parse().unwrap().is_some());
        assert!(!r.frame_ready());
    }

    #[test]
    fn invalid_utf8_in_an_incomplete_text_frame_fails_as_it_arrives() {
        // One frame, delivered in three chops: the second one is invalid.
        let mut payload = "héllo wörld ".repeat(4).into_bytes();
        payload.extend([0xF4, 0x90, 0x80, 0x80]); // above U+10FFFF
        payload.extend(b"tail".repeat(20));
        let wire = ws::client_frame(ws::OP_TEXT, true, &payload, [9, 8, 7, 6]);
        let mut r = MessageReader::new(Side::Server, 1000, 64, &[]);
        r.buf.extend_from_slice(&wire[..30]);
        assert!(r.parse().unwrap().is_none(), "a valid prefix waits");
        r.buf.extend_from_slice(&wire[30..70]);
        assert_eq!(r.parse(), Err(ReadError::Ws(WsError::InvalidUtf8)));
        // A code point cut by a chop, or by a fragment boundary, is fine.
        let euro = "€€€€".as_bytes();
        let wire = ws::client_frame(ws::OP_TEXT, true, euro, [1, 2, 3, 4]);
        let mut r = MessageReader::new(Side::Server, 1000, 64, &[]);
        let mut got = Vec::new();
        for b in &wire {
            got.extend(feed(&mut r, &[*b]));
        }
        assert_eq!(got.len(), 1);
        let Incoming::Text(m) = &got[0] else {
            panic!("not text")
        };
        assert_eq!(m.payload(), euro);
        let mut wire = ws::client_frame(ws::OP_TEXT, false, &euro[..2], [1, 2, 3, 4]);
        wire.extend(ws::client_frame(
            ws::OP_CONTINUATION,
            true,
            &euro[2..],
            [5, 6, 7, 8],
        ));
        let mut r = MessageReader::new(Side::Server, 1000, 64, &[]);
        let mut got = Vec::new();
        for b in &wire {
            got.extend(feed(&mut r, &[*b]));
        }
        let Incoming::Text(m) = &got[0] else {
            panic!("not text")
        };
        assert_eq!(m.payload(), euro);
        // An invalid continuation byte right after the cut fails early too.
        let mut wire = ws::client_frame(ws::OP_TEXT, false, &euro[..1], [1, 2, 3, 4]);
        let mut bad = vec![b'x'; 40];
        bad[0] = b'A';
        wire.extend(ws::client_frame(
            ws::OP_CONTINUATION,
            true,
            &bad,
            [5, 6, 7, 8],
        ));
        let mut r = MessageReader::new(Side::Server, 1000, 64, &[]);
        r.buf.extend_from_slice(&wire[..wire.len() - 30]);
        assert_eq!(r.parse(), Err(ReadError::Ws(WsError::InvalidUtf8)));
    }

    proptest::proptest! {
        /// However a valid text message is fragmented and chopped, it comes
        /// out whole and equal; early checking never refuses valid UTF-8.
        #[test]
        fn valid_text_passes_any_chopping(text in "\\PC{0,40}", cut in 0usize..200, chop in 1usize..7) {
            let bytes = text.as_bytes();
            let cut = cut.min(bytes.len());
            let mut wire = ws::client_frame(ws::OP_TEXT, cut == bytes.len(), &bytes[..cut], [3, 1, 4, 1]);
            if cut < bytes.len() {
                wire.extend(ws::client_frame(ws::OP_CONTINUATION, true, &bytes[cut..], [5, 9, 2, 6]));
            }
            let mut r = MessageReader::new(Side::Server, 1000, 64, &[]);
            let mut got = Vec::new();
            for part in wire.chunks(chop) {
                got.extend(feed(&mut r, part));
            }
            proptest::prop_assert_eq!(got.len(), 1);
            let Incoming::Text(m) = &got[0] else { panic!("not text") };
            proptest::prop_assert_eq!(m.payload(), bytes);
        }
    }

    #[test]
    fn close_frames() {
        let mut r = MessageReader::new(Side::Server, 1000, 64, &[]);
        let got = feed(
            &mut r,
            &ws::client_frame(
                ws::OP_CLOSE,
                true,
                &ws::close_payload(1000, "bye"),
                [1, 2, 3, 4],
            ),
        );
        assert_eq!(got, vec![Incoming::Close(Some((1000, "bye".into())))]);
    }
}
