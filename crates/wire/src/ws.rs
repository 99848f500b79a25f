//! WebSocket framing (RFC 6455) as pure functions over bytes: frame heads,
//! masking and close payloads. The opening handshake is in
//! [`crate::handshake`], whole messages in [`crate::reader`].
//!
//! The relay writes every outgoing frame itself so that one encoded frame
//! (`Bytes`) can be shared by all receivers; see [`server_header`].

use thiserror::Error;

/// Continuation frame opcode.
pub const OP_CONTINUATION: u8 = 0x0;
/// Text frame opcode.
pub const OP_TEXT: u8 = 0x1;
/// Binary frame opcode.
pub const OP_BINARY: u8 = 0x2;
/// Close frame opcode.
pub const OP_CLOSE: u8 = 0x8;
/// Ping frame opcode.
pub const OP_PING: u8 = 0x9;
/// Pong frame opcode.
pub const OP_PONG: u8 = 0xA;

/// Largest frame head: 2 bytes + 8 bytes of length + 4 bytes of mask.
pub(crate) const MAX_HEAD_LEN: usize = 14;
/// Largest unmasked (server) frame head.
pub const MAX_SERVER_HEAD_LEN: usize = 10;

/// Close code: normal closure.
pub const CLOSE_NORMAL: u16 = 1000;
/// Close code: the endpoint is going away (server shutdown).
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code: protocol error.
pub const CLOSE_PROTOCOL: u16 = 1002;
/// Close code: a data type the endpoint does not accept (e.g. text on a data path).
pub const CLOSE_UNSUPPORTED: u16 = 1003;
/// Close code: payload data inconsistent with the message type (bad UTF-8).
pub const CLOSE_INVALID_DATA: u16 = 1007;
/// Close code: policy violation.
pub const CLOSE_POLICY: u16 = 1008;
/// Close code: message too big.
pub const CLOSE_TOO_BIG: u16 = 1009;
/// Close code: try again later (limits reached).
pub const CLOSE_TRY_AGAIN: u16 = 1013;

/// Which side of the connection we are: servers require masked frames from
/// clients, clients require unmasked frames from servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// We are the server; incoming frames must be masked.
    Server,
    /// We are the client; incoming frames must not be masked.
    Client,
}

/// A decoded frame head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHead {
    /// FIN bit: last frame of a message.
    pub fin: bool,
    /// Opcode (`OP_*`).
    pub opcode: u8,
    /// Masking key, if the frame is masked.
    pub mask: Option<[u8; 4]>,
    /// Payload length in bytes.
    pub payload_len: u64,
    /// Length of the head on the wire (2–14 bytes).
    pub head_len: usize,
}

impl FrameHead {
    /// True for close, ping and pong.
    pub(crate) fn is_control(&self) -> bool {
        self.opcode & 0x8 != 0
    }
}

/// Every way a peer's frames can break RFC 6455 (each closes the connection).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WsError {
    /// RSV1–3 set without a negotiated extension.
    #[error("reserved bits set without an extension")]
    ReservedBits,
    /// An opcode RFC 6455 does not define.
    #[error("unknown opcode {0:#x}")]
    UnknownOpcode(u8),
    /// A control frame that is fragmented or longer than 125 bytes.
    #[error("control frame fragmented or longer than 125 bytes")]
    BadControlFrame,
    /// A client frame without a mask, or a server frame with one.
    #[error("frame masking does not match the peer's side")]
    BadMask,
    /// A 64-bit length with the most significant bit set.
    #[error("frame length out of range")]
    BadLength,
    /// A continuation frame with no message in progress, or a new data frame inside one.
    #[error("unexpected continuation or interleaved data frame")]
    BadFragmentation,
    /// A text message or close reason that is not valid UTF-8.
    #[error("invalid UTF-8 in a text message or close reason")]
    InvalidUtf8,
    /// A close payload of one byte, or with a code that may not be sent.
    #[error("invalid close payload")]
    BadClose,
}

/// Parses a frame head at the start of `buf`. `Ok(None)` means more bytes
/// are needed. `side` is our side: a server requires masked frames.
pub fn parse_head(buf: &[u8], side: Side) -> Result<Option<FrameHead>, WsError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let b0 = buf[0];
    let b1 = buf[1];
    if b0 & 0x70 != 0 {
        return Err(WsError::ReservedBits);
    }
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0F;
    match opcode {
        OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG => {}
        other => return Err(WsError::UnknownOpcode(other)),
    }
    let masked = b1 & 0x80 != 0;
    if masked != (side == Side::Server) {
        return Err(WsError::BadMask);
    }
    let (payload_len, mut pos) = match b1 & 0x7F {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as u64, 4)
        }
        127 => {
            let Some(b) = buf.get(2..10) else {
                return Ok(None);
            };
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            let len = u64::from_be_bytes(a);
            if len >> 63 != 0 {
                return Err(WsError::BadLength);
            }
            (len, 10)
        }
        n => (n as u64, 2),
    };
    if opcode & 0x8 != 0 && (!fin || payload_len > 125) {
        return Err(WsError::BadControlFrame);
    }
    let mask = if masked {
        let Some(m) = buf.get(pos..pos + 4) else {
            return Ok(None);
        };
        pos += 4;
        Some([m[0], m[1], m[2], m[3]])
    } else {
        None
    };
    Ok(Some(FrameHead {
        fin,
        opcode,
        mask,
        payload_len,
        head_len: pos,
    }))
}

/// XORs `buf` with the masking key, as if `buf` started `offset` bytes into
/// the payload. Works a machine word at a time.
pub(crate) fn apply_mask(buf: &mut [u8], mask: [u8; 4], offset: usize) {
    let mut key = [0u8; 4];
    for (i, k) in key.iter_mut().enumerate() {
        *k = mask[(offset + i) % 4];
    }
    let key8 = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut chunks = buf.chunks_exact_mut(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        c.copy_from_slice(&(u64::from_ne_bytes(w) ^ key8).to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= key[i % 4];
    }
}

/// Writes an unmasked (server → client) frame head with FIN set into `out`
/// and returns its length (2, 4 or 10).
pub fn server_header(opcode: u8, payload_len: usize, out: &mut [u8; MAX_SERVER_HEAD_LEN]) -> usize {
    out[0] = 0x80 | opcode;
    if payload_len < 126 {
        out[1] = payload_len as u8;
        2
    } else if payload_len <= u16::MAX as usize {
        out[1] = 126;
        out[2..4].copy_from_slice(&(payload_len as u16).to_be_bytes());
        4
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
        10
    }
}

/// Length of the unmasked head [`server_header`] writes for a payload size.
pub(crate) fn server_header_len(payload_len: usize) -> usize {
    if payload_len < 126 {
        2
    } else if payload_len <= u16::MAX as usize {
        4
    } else {
        10
    }
}

/// Encodes a complete unmasked frame (head + payload) with FIN set.
pub fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut head = [0u8; MAX_SERVER_HEAD_LEN];
    let n = server_header(opcode, payload.len(), &mut head);
    let mut out = Vec::with_capacity(n + payload.len());
    out.extend_from_slice(&head[..n]);
    out.extend_from_slice(payload);
    out
}

/// Encodes a complete masked (client → server) frame; `fin` false starts or
/// continues a fragmented message.
pub fn client_frame(opcode: u8, fin: bool, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAX_HEAD_LEN + payload.len());
    out.push(if fin { 0x80 } else { 0 } | opcode);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= u16::MAX as usize {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], mask, 0);
    out
}

/// Builds a close frame payload: the code, then a UTF-8 reason cut to fit 123 bytes.
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut p = Vec::with_capacity(2 + end);
    p.extend_from_slice(&code.to_be_bytes());
    p.extend_from_slice(&reason.as_bytes()[..end]);
    p
}

/// True for close codes a peer may put on the wire (RFC 6455 §7.4).
pub(crate) fn close_code_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Parses a received close payload into (code, reason); an empty payload
/// is `None`.
pub(crate) fn parse_close(payload: &[u8]) -> Result<Option<(u16, &str)>, WsError> {
    match payload.len() {
        0 => Ok(None),
        1 => Err(WsError::BadClose),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            if !close_code_allowed(code) {
                return Err(WsError::BadClose);
            }
            let reason = std::str::from_utf8(&payload[2..]).map_err(|_| WsError::InvalidUtf8)?;
            Ok(Some((code, reason)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn client_frame_parses_on_server() {
        for len in [0usize, 5, 125, 126, 65535, 65536, 200_000] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let wire = client_frame(OP_BINARY, true, &payload, [1, 2, 3, 4]);
            let h = parse_head(&wire, Side::Server).unwrap().unwrap();
            assert_eq!(h.payload_len as usize, len);
            assert!(h.fin);
            let mut body = wire[h.head_len..].to_vec();
            apply_mask(&mut body, h.mask.unwrap(), 0);
            assert_eq!(body, payload);
            assert_eq!(parse_head(&wire[..h.head_len - 1], Side::Server), Ok(None));
            assert_eq!(parse_head(&wire, Side::Client), Err(WsError::BadMask));
        }
    }

    #[test]
    fn server_frame_parses_on_client() {
        for len in [0usize, 125, 126, 65536] {
            let wire = server_frame(OP_BINARY, &vec![7u8; len]);
            let h = parse_head(&wire, Side::Client).unwrap().unwrap();
            assert_eq!(h.head_len, server_header_len(len));
            assert_eq!(h.payload_len as usize, len);
        }
    }

    #[test]
    fn bad_heads() {
        assert_eq!(
            parse_head(&[0xC2, 0x80, 0, 0, 0, 0], Side::Server),
            Err(WsError::ReservedBits)
        );
        assert_eq!(
            parse_head(&[0x83, 0x80, 0, 0, 0, 0], Side::Server),
            Err(WsError::UnknownOpcode(3))
        );
        assert_eq!(
            parse_head(&[0x09, 0x80, 0, 0, 0, 0], Side::Server),
            Err(WsError::BadControlFrame)
        );
        assert_eq!(
            parse_head(&[0x89, 0xFE, 0, 126, 0, 0, 0, 0], Side::Server),
            Err(WsError::BadControlFrame)
        );
        assert_eq!(
            parse_head(&[0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0], Side::Server),
            Err(WsError::BadLength)
        );
    }

    #[test]
    fn close_payloads() {
        let p = close_payload(1009, "too big");
        assert_eq!(parse_close(&p), Ok(Some((1009, "too big"))));
        assert_eq!(parse_close(&[3]), Err(WsError::BadClose));
        assert_eq!(
            parse_close(&close_payload(1005, "")),
            Err(WsError::BadClose)
        );
        assert_eq!(parse_close(&[0x03, 0xE8, 0xFF]), Err(WsError::InvalidUtf8));
        let long = "é".repeat(100);
        assert!(close_payload(1000, &long).len() <= 125);
        assert!(std::str::from_utf8(&close_payload(1000, &long)[2..]).is_ok());
    }

    proptest! {
        #[test]
        fn mask_is_an_involution_at_any_offset(data in proptest::collection::vec(any::<u8>(), 0..100), mask: [u8; 4], split in 0usize..100) {
            let split = split.min(data.len());
            let mut a = data.clone();
            apply_mask(&mut a, mask, 0);
            let mut b = data.clone();
            let (x, y) = b.split_at_mut(split);
            apply_mask(x, mask, 0);
            apply_mask(y, mask, split);
            prop_assert_eq!(&a, &b);
            for (i, v) in a.iter().enumerate() {
                prop_assert_eq!(*v, data[i] ^ mask[i % 4]);
            }
        }

        #[test]
        fn parse_head_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..20)) {
            let _ = parse_head(&bytes, Side::Server);
            let _ = parse_head(&bytes, Side::Client);
            let _ = parse_close(&bytes);
        }
    }
}
