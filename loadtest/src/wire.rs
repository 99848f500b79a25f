//! Test frames and a streaming receiver-side parser.
//!
//! A test frame is a PROTOCOL.md `Pixels` message with the `KEYFRAME` flag.
//! Its payload (width*height*4 bytes) is read as little-endian u64 words
//! (the last one zero-padded):
//!
//! - word 0: frame index (one sequence per run, the same on every channel),
//! - word 1: send time in ns since the driver's epoch (one `Instant`),
//! - word 2: check word, chosen so that the wrapping sum of all words is [`MAGIC`],
//! - the word at each 4 KiB boundary: a stamp derived from the index (so a
//!   frame torn between two indices fails the sum),
//! - everything else: fixed pseudo-random filler.
//!
//! The receiver never assembles a message: [`Parser`] walks the byte stream
//! as it comes off the socket (WebSocket frames via the crate's
//! `ws::parse_head`, or the plain-TCP reference's u32 length prefix), keeps
//! the first 40 bytes of each message and sums the rest word by word.

use bitstream_relay::protocol::{self, FrameType, Header, FLAG_KEYFRAME, HEADER_LEN};
use bitstream_relay::ws::{self, Role};

/// The wrapping sum of every payload word of an intact test frame.
pub const MAGIC: u64 = 0x5EED_F00D_CAFE_BABE;
/// A stamp word every this many payload bytes.
const STAMP_EVERY: usize = 4096;
/// Bytes of a message the parser keeps: protocol header + words 0..=2.
const FIRST: usize = HEADER_LEN + 24;
/// Smallest payload that carries a test frame.
pub const MIN_PAYLOAD: usize = 24;

/// How messages are framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// RFC 6455 frames (client→server masked, server→client unmasked).
    Ws,
    /// The plain-TCP reference: u32 little-endian length, then the message.
    Tcp,
}

fn stamp(idx: u64, k: usize) -> u64 {
    idx.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (k as u64)
}

fn word_at(p: &[u8], off: usize) -> u64 {
    let mut w = [0u8; 8];
    let end = (off + 8).min(p.len());
    w[..end - off].copy_from_slice(&p[off..end]);
    u64::from_le_bytes(w)
}

/// Wrapping sum of the whole 8-byte words of `d` (a trailing partial word is ignored).
#[inline]
pub fn sum_words(d: &[u8]) -> u64 {
    let mut acc = [0u64; 4];
    let mut c = d.chunks_exact(32);
    for b in &mut c {
        for (i, a) in acc.iter_mut().enumerate() {
            *a = a.wrapping_add(u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap()));
        }
    }
    let mut s = acc[0]
        .wrapping_add(acc[1])
        .wrapping_add(acc[2])
        .wrapping_add(acc[3]);
    for w in c.remainder().chunks_exact(8) {
        s = s.wrapping_add(u64::from_le_bytes(w.try_into().unwrap()));
    }
    s
}

/// A test frame on the wire, patched in place for each send (no copy, no
/// per-frame allocation). WebSocket frames use the all-zero masking key, so
/// the masked payload equals the plain one.
pub struct FrameTemplate {
    /// The whole wire frame.
    pub wire: Vec<u8>,
    /// Offset of the protocol message in `wire`.
    msg_off: usize,
    /// Protocol message length (16 + payload).
    pub msg_len: usize,
    fill_sum: u64,
    stamps: Vec<usize>,
}

impl FrameTemplate {
    /// A `Pixels`+`KEYFRAME` frame of `width`×`height`.
    pub fn new(framing: Framing, width: u16, height: u16) -> Self {
        let plen = width as usize * height as usize * 4;
        assert!(
            plen >= MIN_PAYLOAD,
            "frame payload must be at least {MIN_PAYLOAD} bytes"
        );
        let mut payload = vec![0u8; plen];
        let mut x: u64 = 0x1234_5678_9ABC_DEF1;
        for b in payload.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let w = x.to_le_bytes();
            b.copy_from_slice(&w[..b.len()]);
        }
        payload[..24].fill(0);
        let stamps: Vec<usize> = (1..)
            .map(|k| k * STAMP_EVERY)
            .take_while(|&o| o + 8 <= plen)
            .collect();
        for &o in &stamps {
            payload[o..o + 8].fill(0);
        }
        let mut fill_sum = 0u64;
        for off in (0..plen).step_by(8) {
            fill_sum = fill_sum.wrapping_add(word_at(&payload, off));
        }
        let msg = protocol::frame(
            FrameType::Pixels,
            FLAG_KEYFRAME,
            0,
            0,
            (width, height),
            &payload,
        );
        debug_assert!(protocol::validate_source_message(&msg).is_ok());
        let (wire, msg_off) = match framing {
            Framing::Ws => {
                let w = ws::client_frame(ws::OP_BINARY, true, &msg, [0; 4]);
                let off = w.len() - msg.len();
                (w, off)
            }
            Framing::Tcp => {
                let mut w = Vec::with_capacity(4 + msg.len());
                w.extend_from_slice(&(msg.len() as u32).to_le_bytes());
                w.extend_from_slice(&msg);
                (w, 4)
            }
        };
        Self {
            msg_len: msg.len(),
            wire,
            msg_off,
            fill_sum,
            stamps,
        }
    }

    /// Writes frame `idx`, sent at `send_ns`, into the template.
    pub fn patch(&mut self, idx: u64, send_ns: u64, stream_ms: u32) {
        let m = &mut self.wire[self.msg_off..];
        m[2..4].copy_from_slice(&(idx as u16).to_le_bytes());
        m[4..8].copy_from_slice(&stream_ms.to_le_bytes());
        let p = &mut m[HEADER_LEN..];
        let mut s = self.fill_sum.wrapping_add(idx).wrapping_add(send_ns);
        for (k, &o) in self.stamps.iter().enumerate() {
            let v = stamp(idx, k + 1);
            p[o..o + 8].copy_from_slice(&v.to_le_bytes());
            s = s.wrapping_add(v);
        }
        p[0..8].copy_from_slice(&idx.to_le_bytes());
        p[8..16].copy_from_slice(&send_ns.to_le_bytes());
        p[16..24].copy_from_slice(&MAGIC.wrapping_sub(s).to_le_bytes());
    }
}

/// One complete message as the parser saw it.
#[derive(Debug, Clone, Copy)]
pub struct MsgInfo {
    /// Message length (protocol header + payload).
    pub len: u64,
    /// Frame index, for test frames.
    pub idx: u64,
    /// Send time (ns since epoch), for test frames.
    pub send_ns: u64,
    /// A test frame: Pixels, long enough, header length field consistent.
    pub test_frame: bool,
    /// Its payload sum was computed.
    pub checked: bool,
    /// The sum matched (meaningful when `checked`).
    pub sum_ok: bool,
}

/// What the parser reports.
#[derive(Debug)]
pub enum Ev<'a> {
    /// A data message ended.
    Msg(MsgInfo),
    /// A ping with its payload (to be answered).
    Ping(&'a [u8]),
    /// The server's close frame (code, 1005 if none).
    Close(u16),
}

/// A streaming parser of server→client traffic. See the module docs.
pub struct Parser {
    framing: Framing,
    head: [u8; 14],
    head_have: usize,
    in_frame: bool,
    frame_left: u64,
    frame_op: u8,
    frame_fin: bool,
    ctrl: Vec<u8>,
    // current message
    msg_len: u64,
    first: [u8; FIRST],
    checking: bool,
    sum: u64,
    carry: [u8; 8],
    carry_len: usize,
    check_every: u64,
    salt: u64,
}

impl Parser {
    /// A parser that sums the payload of every `check_every`-th frame
    /// (offset by `salt`, so receivers check different frames).
    pub fn new(framing: Framing, check_every: u64, salt: u64) -> Self {
        Self {
            framing,
            head: [0; 14],
            head_have: 0,
            in_frame: false,
            frame_left: 0,
            frame_op: 0,
            frame_fin: true,
            ctrl: Vec::new(),
            msg_len: 0,
            first: [0; FIRST],
            checking: false,
            sum: 0,
            carry: [0; 8],
            carry_len: 0,
            check_every: check_every.max(1),
            salt,
        }
    }

    /// Feeds bytes read from the socket; calls `ev` for every event.
    pub fn feed(&mut self, mut data: &[u8], ev: &mut impl FnMut(Ev<'_>)) -> Result<(), String> {
        while !data.is_empty() {
            if self.in_frame {
                let n = (self.frame_left.min(data.len() as u64)) as usize;
                let (chunk, rest) = data.split_at(n);
                if self.frame_op & 0x8 != 0 {
                    self.ctrl.extend_from_slice(chunk);
                } else {
                    self.msg_feed(chunk);
                }
                self.frame_left -= n as u64;
                data = rest;
                if self.frame_left == 0 {
                    self.end_frame(ev)?;
                }
                continue;
            }
            let want = match self.framing {
                Framing::Ws => 14,
                Framing::Tcp => 4,
            };
            let n = (want - self.head_have).min(data.len());
            let had = self.head_have;
            self.head[had..had + n].copy_from_slice(&data[..n]);
            let have = had + n;
            match self.framing {
                Framing::Ws => match ws::parse_head(&self.head[..have], Role::Client) {
                    Ok(Some(h)) => {
                        data = &data[h.head_len - had..];
                        self.head_have = 0;
                        self.start_frame(h.opcode, h.fin, h.payload_len, ev)?;
                    }
                    Ok(None) if have < want => {
                        self.head_have = have;
                        data = &data[n..];
                    }
                    Ok(None) => return Err("unparseable frame head".into()),
                    Err(e) => return Err(format!("bad frame from server: {e}")),
                },
                Framing::Tcp => {
                    data = &data[n..];
                    if have == 4 {
                        self.head_have = 0;
                        let len = u32::from_le_bytes(self.head[..4].try_into().unwrap());
                        self.start_frame(ws::OP_BINARY, true, len as u64, ev)?;
                    } else {
                        self.head_have = have;
                    }
                }
            }
        }
        Ok(())
    }

    fn start_frame(
        &mut self,
        op: u8,
        fin: bool,
        len: u64,
        ev: &mut impl FnMut(Ev<'_>),
    ) -> Result<(), String> {
        self.in_frame = true;
        self.frame_left = len;
        self.frame_op = op;
        self.frame_fin = fin;
        if op & 0x8 == 0 && op != ws::OP_CONTINUATION {
            self.msg_len = 0;
            self.checking = false;
            self.sum = 0;
            self.carry_len = 0;
        }
        if len == 0 {
            self.end_frame(ev)?;
        }
        Ok(())
    }

    fn end_frame(&mut self, ev: &mut impl FnMut(Ev<'_>)) -> Result<(), String> {
        self.in_frame = false;
        match self.frame_op {
            ws::OP_PING => ev(Ev::Ping(&self.ctrl)),
            ws::OP_CLOSE => {
                let code = if self.ctrl.len() >= 2 {
                    u16::from_be_bytes([self.ctrl[0], self.ctrl[1]])
                } else {
                    1005
                };
                ev(Ev::Close(code))
            }
            ws::OP_PONG => {}
            _ if self.frame_fin => ev(Ev::Msg(self.finish())),
            _ => {}
        }
        self.ctrl.clear();
        Ok(())
    }

    #[inline]
    fn msg_feed(&mut self, mut d: &[u8]) {
        let pos = self.msg_len as usize;
        if pos < FIRST {
            let n = (FIRST - pos).min(d.len());
            self.first[pos..pos + n].copy_from_slice(&d[..n]);
            d = &d[n..];
            self.msg_len += n as u64;
            if self.msg_len as usize == FIRST {
                let idx = u64::from_le_bytes(self.first[16..24].try_into().unwrap());
                self.checking =
                    self.check_every <= 1 || idx.wrapping_add(self.salt) % self.check_every == 0;
            }
        }
        if d.is_empty() {
            return;
        }
        self.msg_len += d.len() as u64;
        if !self.checking {
            return;
        }
        if self.carry_len > 0 {
            let n = (8 - self.carry_len).min(d.len());
            self.carry[self.carry_len..self.carry_len + n].copy_from_slice(&d[..n]);
            self.carry_len += n;
            d = &d[n..];
            if self.carry_len < 8 {
                return;
            }
            self.sum = self.sum.wrapping_add(u64::from_le_bytes(self.carry));
            self.carry_len = 0;
        }
        let whole = d.len() & !7;
        self.sum = self.sum.wrapping_add(sum_words(&d[..whole]));
        let rest = &d[whole..];
        self.carry[..rest.len()].copy_from_slice(rest);
        self.carry_len = rest.len();
    }

    fn finish(&mut self) -> MsgInfo {
        let len = self.msg_len;
        let mut info = MsgInfo {
            len,
            idx: 0,
            send_ns: 0,
            test_frame: false,
            checked: false,
            sum_ok: false,
        };
        if (len as usize) < FIRST {
            return info;
        }
        let Ok(h) = Header::parse(&self.first) else {
            return info;
        };
        info.test_frame =
            h.kind == FrameType::Pixels.to_u8() && h.length as u64 + HEADER_LEN as u64 == len;
        info.idx = u64::from_le_bytes(self.first[16..24].try_into().unwrap());
        info.send_ns = u64::from_le_bytes(self.first[24..32].try_into().unwrap());
        if self.checking {
            let mut s = self.sum;
            if self.carry_len > 0 {
                self.carry[self.carry_len..].fill(0);
                s = s.wrapping_add(u64::from_le_bytes(self.carry));
            }
            s = s.wrapping_add(sum_words(&self.first[16..40]));
            info.checked = true;
            info.sum_ok = s == MAGIC;
        }
        info
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_wire(tpl: &FrameTemplate) -> Vec<u8> {
        let msg = &tpl.wire[tpl.wire.len() - tpl.msg_len..];
        ws::server_frame(ws::OP_BINARY, msg)
    }

    #[test]
    fn roundtrip_any_split() {
        for (w, h) in [(3u16, 2u16), (5, 3), (64, 64), (33, 17)] {
            let mut tpl = FrameTemplate::new(Framing::Ws, w, h);
            let mut wire = Vec::new();
            for i in 0..3u64 {
                tpl.patch(i, 1000 + i, 0);
                wire.extend(server_wire(&tpl));
                wire.extend(ws::server_frame(ws::OP_PING, b"hi"));
            }
            for split in [1usize, 2, 3, 7, 13, 4096, wire.len()] {
                let mut p = Parser::new(Framing::Ws, 1, 0);
                let mut got = Vec::new();
                let mut pings = 0;
                for c in wire.chunks(split) {
                    p.feed(c, &mut |e| match e {
                        Ev::Msg(m) => got.push(m),
                        Ev::Ping(b) => {
                            assert_eq!(b, b"hi");
                            pings += 1
                        }
                        Ev::Close(_) => panic!(),
                    })
                    .unwrap();
                }
                assert_eq!(pings, 3);
                assert_eq!(got.len(), 3);
                for (i, m) in got.iter().enumerate() {
                    assert!(
                        m.test_frame && m.checked && m.sum_ok,
                        "{w}x{h} split {split}: {m:?}"
                    );
                    assert_eq!(m.idx, i as u64);
                    assert_eq!(m.send_ns, 1000 + i as u64);
                }
            }
        }
    }

    #[test]
    fn detects_corruption_and_tearing() {
        let mut tpl = FrameTemplate::new(Framing::Tcp, 64, 64);
        tpl.patch(7, 1, 0);
        let a = tpl.wire.clone();
        tpl.patch(8, 1, 0);
        let b = tpl.wire.clone();
        let mut torn = a.clone();
        torn[9000..].copy_from_slice(&b[9000..]);
        let mut flipped = a.clone();
        flipped[5000] ^= 0x10;
        for (wire, ok) in [(a, true), (torn, false), (flipped, false)] {
            let mut p = Parser::new(Framing::Tcp, 1, 0);
            let mut got = None;
            p.feed(&wire, &mut |e| {
                if let Ev::Msg(m) = e {
                    got = Some(m)
                }
            })
            .unwrap();
            assert_eq!(got.unwrap().sum_ok, ok);
        }
    }
}
