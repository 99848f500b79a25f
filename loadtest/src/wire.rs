//! Test frames and a streaming receiver-side parser.
//!
//! A test frame is a PROTOCOL.md `Pixels` message with the `KEYFRAME` flag.
//! Its payload (width*height*4 bytes) is read as little-endian u64 words:
//!
//! - word 0: frame index (one sequence per run, the same on every channel),
//! - word 1: send time in ns since the driver's epoch (one `Instant`),
//! - word 2: the channel's number in the run (a frame on the wrong channel is corrupt),
//! - word 3: XXH3-64 of every other byte of the message: the 16-byte
//!   protocol header, payload bytes 0..24 and 32..end, in that order,
//! - everything else: fixed pseudo-random filler XORed with a key derived
//!   from (channel, index), so no two frames of a run share their bytes and
//!   a stale or misplaced block of another frame cannot pass.
//!
//! XXH3 is position-sensitive: any changed, moved, missing or extra byte
//! changes the hash (unlike a sum of words, which misses reordered words).
//!
//! The receiver never assembles a message: [`Parser`] walks the byte stream
//! as it comes off the socket (WebSocket frame heads via the wire crate's
//! `ws::parse_head`, or the plain-TCP reference's u32 length prefix), keeps
//! the first [`FIRST`] bytes of each message and streams the rest into the
//! hash.

use bitstream_wire::protocol::{self, FrameType, FLAG_KEYFRAME, HEADER_LEN};
use bitstream_wire::ws::{self, Side};
use xxhash_rust::xxh3::Xxh3Default;

/// Smallest payload that carries a test frame (words 0..=3).
pub const MIN_PAYLOAD: usize = 32;
/// Bytes of a message the parser keeps: protocol header + words 0..=3.
const FIRST: usize = HEADER_LEN + MIN_PAYLOAD;
/// Longest WebSocket frame head (2 + 8 length + 4 mask bytes).
const WS_MAX_HEAD: usize = 14;
/// Offset of the hash word in a message.
const HASH_AT: usize = HEADER_LEN + 24;

/// How messages are framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// RFC 6455 frames (client→server masked, server→client unmasked).
    Ws,
    /// The plain-TCP reference: u32 little-endian length, then the message.
    Tcp,
}

/// splitmix64's finalizer: a bijective 64-bit mix.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The filler key of frame `idx` on channel `channel`.
fn frame_key(channel: u64, idx: u64) -> u64 {
    mix64(idx ^ channel.rotate_left(40) ^ 0x5EED_F00D_CAFE_BABE)
}

/// XXH3-64 of a whole message but its hash word.
pub fn message_hash(msg: &[u8]) -> u64 {
    let mut h = Xxh3Default::new();
    h.update(&msg[..HASH_AT]);
    h.update(&msg[HASH_AT + 8..]);
    h.digest()
}

/// A test frame on the wire, rewritten in place for each send (no
/// allocation per frame). WebSocket frames use the all-zero masking key, so
/// the masked payload equals the plain one.
pub struct FrameTemplate {
    /// The whole wire frame.
    pub wire: Vec<u8>,
    /// Offset of the protocol message in `wire`.
    msg_off: usize,
    /// Protocol message length (16 + payload).
    pub msg_len: usize,
    /// The filler before keying (payload bytes from 32 on).
    base: Vec<u8>,
}

impl FrameTemplate {
    /// A `Pixels`+`KEYFRAME` frame of `width`×`height`.
    pub fn new(framing: Framing, width: u16, height: u16) -> Self {
        let plen = width as usize * height as usize * 4;
        assert!(
            plen >= MIN_PAYLOAD,
            "frame payload must be at least {MIN_PAYLOAD} bytes"
        );
        let mut base = vec![0u8; plen - MIN_PAYLOAD];
        let mut x: u64 = 0x1234_5678_9ABC_DEF1;
        for b in base.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b.copy_from_slice(&x.to_le_bytes()[..b.len()]);
        }
        let msg = protocol::frame(
            FrameType::Pixels,
            FLAG_KEYFRAME,
            0,
            0,
            (width, height),
            &vec![0u8; plen],
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
            base,
        }
    }

    /// The protocol message inside [`FrameTemplate::wire`].
    #[cfg(test)]
    pub fn message(&self) -> &[u8] {
        &self.wire[self.msg_off..]
    }

    /// Writes frame `idx` of `channel`, sent at `send_ns`, into the template.
    pub fn patch(&mut self, channel: u64, idx: u64, send_ns: u64, stream_ms: u32) {
        let m = &mut self.wire[self.msg_off..];
        m[2..4].copy_from_slice(&(idx as u16).to_le_bytes());
        m[4..8].copy_from_slice(&stream_ms.to_le_bytes());
        let (words, fill) = m[HEADER_LEN..].split_at_mut(MIN_PAYLOAD);
        words[0..8].copy_from_slice(&idx.to_le_bytes());
        words[8..16].copy_from_slice(&send_ns.to_le_bytes());
        words[16..24].copy_from_slice(&channel.to_le_bytes());
        let key = frame_key(channel, idx).to_le_bytes();
        let mut out = fill.chunks_exact_mut(8);
        let mut inp = self.base.chunks_exact(8);
        let k = u64::from_le_bytes(key);
        for (o, i) in (&mut out).zip(&mut inp) {
            let w = u64::from_le_bytes(i.try_into().unwrap()) ^ k;
            o.copy_from_slice(&w.to_le_bytes());
        }
        for ((o, i), k) in out
            .into_remainder()
            .iter_mut()
            .zip(inp.remainder())
            .zip(key)
        {
            *o = i ^ k;
        }
        let h = message_hash(m);
        m[HASH_AT..HASH_AT + 8].copy_from_slice(&h.to_le_bytes());
    }
}

/// What the parser found a complete message to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Not a test frame (another frame type, e.g. a relay's protocol `Ping`).
    Other,
    /// A `Pixels` message that cannot be a test frame: wrong flags, shorter
    /// than [`FIRST`], or a header length that disagrees with its size.
    Malformed,
    /// A well-formed test frame whose hash was not computed (sampling).
    Unchecked,
    /// A test frame whose hash matches its bytes.
    Intact,
    /// A test frame whose hash does not match its bytes.
    Mismatch,
}

/// One complete message as the parser saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsgInfo {
    /// Message length (protocol header + payload).
    pub len: u64,
    /// Frame index (word 0), for test frames.
    pub idx: u64,
    /// Send time (ns since epoch, word 1), for test frames.
    pub send_ns: u64,
    /// Channel number (word 2), for test frames.
    pub channel: u64,
    /// What it is.
    pub check: Check,
}

/// What the parser reports.
#[derive(Debug)]
pub enum Ev<'a> {
    /// A data message ended.
    Msg(MsgInfo),
    /// A ping with its payload (to be answered).
    Ping(&'a [u8]),
    /// A pong.
    Pong,
    /// The server's close frame (code, 1005 if none).
    Close(u16),
}

/// A streaming parser of server→client traffic. See the module docs.
pub struct Parser {
    framing: Framing,
    head: [u8; WS_MAX_HEAD],
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
    hash: Xxh3Default,
    check_every: u64,
    salt: u64,
}

impl Parser {
    /// A parser that hashes the payload of every `check_every`-th frame
    /// (offset by `salt`, so receivers check different frames).
    pub fn new(framing: Framing, check_every: u64, salt: u64) -> Self {
        Self {
            framing,
            head: [0; WS_MAX_HEAD],
            head_have: 0,
            in_frame: false,
            frame_left: 0,
            frame_op: 0,
            frame_fin: true,
            ctrl: Vec::new(),
            msg_len: 0,
            first: [0; FIRST],
            checking: false,
            hash: Xxh3Default::new(),
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
                    self.end_frame(ev);
                }
                continue;
            }
            let want = match self.framing {
                Framing::Ws => WS_MAX_HEAD,
                Framing::Tcp => 4,
            };
            let n = (want - self.head_have).min(data.len());
            let had = self.head_have;
            self.head[had..had + n].copy_from_slice(&data[..n]);
            let have = had + n;
            match self.framing {
                Framing::Ws => match ws::parse_head(&self.head[..have], Side::Client) {
                    Ok(Some(h)) => {
                        data = &data[h.head_len - had..];
                        self.head_have = 0;
                        self.start_frame(h.opcode, h.fin, h.payload_len, ev);
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
                        self.start_frame(ws::OP_BINARY, true, len as u64, ev);
                    } else {
                        self.head_have = have;
                    }
                }
            }
        }
        Ok(())
    }

    /// What an already assembled message is (a whole-message client's
    /// verdict): the same checks as for a streamed one, hashing it if this
    /// parser's sampling says so.
    pub fn whole(&mut self, msg: &[u8]) -> MsgInfo {
        self.msg_len = 0;
        self.checking = false;
        self.msg_feed(msg);
        self.finish()
    }

    fn start_frame(&mut self, op: u8, fin: bool, len: u64, ev: &mut impl FnMut(Ev<'_>)) {
        self.in_frame = true;
        self.frame_left = len;
        self.frame_op = op;
        self.frame_fin = fin;
        if op & 0x8 == 0 && op != ws::OP_CONTINUATION {
            self.msg_len = 0;
            self.checking = false;
        }
        if len == 0 {
            self.end_frame(ev);
        }
    }

    fn end_frame(&mut self, ev: &mut impl FnMut(Ev<'_>)) {
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
            ws::OP_PONG => ev(Ev::Pong),
            _ if self.frame_fin => ev(Ev::Msg(self.finish())),
            _ => {}
        }
        self.ctrl.clear();
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
                if self.checking {
                    self.hash.reset();
                    self.hash.update(&self.first[..HASH_AT]);
                }
            }
        }
        if d.is_empty() {
            return;
        }
        self.msg_len += d.len() as u64;
        if self.checking {
            self.hash.update(d);
        }
    }

    fn finish(&mut self) -> MsgInfo {
        let len = self.msg_len;
        let f = &self.first;
        let mut info = MsgInfo {
            len,
            idx: 0,
            send_ns: 0,
            channel: 0,
            check: Check::Other,
        };
        if len == 0 || f[0] != FrameType::Pixels.to_u8() {
            return info;
        }
        info.check = Check::Malformed;
        let word = |i: usize| u64::from_le_bytes(f[i..i + 8].try_into().unwrap());
        let length = u32::from_le_bytes(f[12..16].try_into().unwrap()) as u64;
        if (len as usize) < FIRST || f[1] != FLAG_KEYFRAME || length + HEADER_LEN as u64 != len {
            return info;
        }
        info.idx = word(HEADER_LEN);
        info.send_ns = word(HEADER_LEN + 8);
        info.channel = word(HEADER_LEN + 16);
        info.check = if !self.checking {
            Check::Unchecked
        } else if self.hash.digest() == word(HASH_AT) {
            Check::Intact
        } else {
            Check::Mismatch
        };
        info
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_wire(tpl: &FrameTemplate) -> Vec<u8> {
        ws::server_frame(ws::OP_BINARY, tpl.message())
    }

    fn parse_all(wire: &[u8], split: usize, check_every: u64) -> (Vec<MsgInfo>, usize) {
        let mut p = Parser::new(Framing::Ws, check_every, 0);
        let mut got = Vec::new();
        let mut pings = 0;
        for c in wire.chunks(split) {
            p.feed(c, &mut |e| match e {
                Ev::Msg(m) => got.push(m),
                Ev::Ping(b) => {
                    assert_eq!(b, b"hi");
                    pings += 1
                }
                Ev::Close(_) => panic!("no close sent"),
                Ev::Pong => panic!("no pong sent"),
            })
            .unwrap();
        }
        (got, pings)
    }

    #[test]
    fn pongs_are_reported_between_messages() {
        let mut tpl = FrameTemplate::new(Framing::Ws, 8, 8);
        tpl.patch(0, 0, 1, 0);
        let mut wire = server_wire(&tpl);
        wire.extend(ws::server_frame(ws::OP_PONG, b""));
        wire.extend(ws::server_frame(ws::OP_PONG, b"x"));
        tpl.patch(0, 1, 2, 0);
        wire.extend(server_wire(&tpl));
        let mut p = Parser::new(Framing::Ws, 1, 0);
        let (mut pongs, mut msgs) = (0, 0);
        for c in wire.chunks(7) {
            p.feed(c, &mut |e| match e {
                Ev::Pong => pongs += 1,
                Ev::Msg(_) => msgs += 1,
                e => panic!("unexpected {e:?}"),
            })
            .unwrap();
        }
        assert_eq!((pongs, msgs), (2, 2));
    }

    #[test]
    fn roundtrip_any_split() {
        for (w, h) in [(4u16, 2u16), (5, 3), (64, 64), (33, 17)] {
            let mut tpl = FrameTemplate::new(Framing::Ws, w, h);
            let mut wire = Vec::new();
            for i in 0..3u64 {
                tpl.patch(7, i, 1000 + i, 0);
                assert!(protocol::validate_source_message(tpl.message()).is_ok());
                wire.extend(server_wire(&tpl));
                wire.extend(ws::server_frame(ws::OP_PING, b"hi"));
            }
            for split in [1usize, 2, 3, 7, 13, 4096, wire.len()] {
                let (got, pings) = parse_all(&wire, split, 1);
                assert_eq!(pings, 3);
                assert_eq!(got.len(), 3);
                for (i, m) in got.iter().enumerate() {
                    assert_eq!(m.check, Check::Intact, "{w}x{h} split {split}");
                    assert_eq!(
                        (m.idx, m.send_ns, m.channel),
                        (i as u64, 1000 + i as u64, 7)
                    );
                    assert_eq!(m.len as usize, tpl.msg_len);
                }
            }
        }
    }

    #[test]
    fn a_whole_message_gets_the_streamed_verdict() {
        let mut tpl = FrameTemplate::new(Framing::Ws, 33, 17);
        tpl.patch(7, 5, 1005, 0);
        let (streamed, _) = parse_all(&server_wire(&tpl), 4096, 1);
        let mut p = Parser::new(Framing::Ws, 1, 0);
        assert_eq!(p.whole(tpl.message()), streamed[0]);
        assert_eq!(streamed[0].check, Check::Intact);
        let mut bad = tpl.message().to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(p.whole(&bad).check, Check::Mismatch);
        assert_eq!(p.whole(&bad[..bad.len() - 1]).check, Check::Malformed);
    }

    #[test]
    fn the_streamed_hash_is_the_one_shot_hash() {
        let mut tpl = FrameTemplate::new(Framing::Ws, 33, 17);
        tpl.patch(1, 2, 3, 4);
        let m = tpl.message();
        let mut joined = m[..HASH_AT].to_vec();
        joined.extend_from_slice(&m[HASH_AT + 8..]);
        assert_eq!(message_hash(m), xxhash_rust::xxh3::xxh3_64(&joined));
    }

    #[test]
    fn frames_differ_in_every_filler_word() {
        let mut tpl = FrameTemplate::new(Framing::Ws, 16, 16);
        tpl.patch(0, 1, 0, 0);
        let a = tpl.message().to_vec();
        tpl.patch(0, 2, 0, 0);
        let b = tpl.message().to_vec();
        tpl.patch(1, 1, 0, 0);
        let c = tpl.message().to_vec();
        for other in [&b, &c] {
            let same = a[FIRST..]
                .chunks(8)
                .zip(other[FIRST..].chunks(8))
                .filter(|(x, y)| x == y)
                .count();
            assert_eq!(same, 0);
        }
    }

    #[test]
    fn any_flipped_byte_or_swapped_words_fail_the_hash() {
        let mut tpl = FrameTemplate::new(Framing::Tcp, 8, 8);
        tpl.patch(0, 5, 99, 0);
        let good = tpl.message().to_vec();
        let check = |msg: &[u8]| {
            let mut wire = (msg.len() as u32).to_le_bytes().to_vec();
            wire.extend_from_slice(msg);
            let mut p = Parser::new(Framing::Tcp, 1, 0);
            let mut got = None;
            p.feed(&wire, &mut |e| {
                if let Ev::Msg(m) = e {
                    got = Some(m.check)
                }
            })
            .unwrap();
            got.unwrap()
        };
        assert_eq!(check(&good), Check::Intact);
        // Every byte but the type byte (a non-Pixels type is `Other`).
        for i in 1..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x10;
            assert_ne!(check(&bad), Check::Intact, "byte {i}");
        }
        let mut swapped = good.clone();
        let (a, b) = (FIRST + 16, FIRST + 24);
        let word_a = swapped[a..a + 8].to_vec();
        swapped.copy_within(b..b + 8, a);
        swapped[b..b + 8].copy_from_slice(&word_a);
        assert_ne!(swapped, good);
        assert_eq!(check(&swapped), Check::Mismatch);
    }

    #[test]
    fn sampling_hashes_every_nth_frame() {
        let mut tpl = FrameTemplate::new(Framing::Ws, 8, 8);
        let mut wire = Vec::new();
        for i in 0..8u64 {
            tpl.patch(0, i, 0, 0);
            wire.extend(server_wire(&tpl));
        }
        let (got, _) = parse_all(&wire, 100, 4);
        let checked: Vec<u64> = got
            .iter()
            .filter(|m| m.check == Check::Intact)
            .map(|m| m.idx)
            .collect();
        assert_eq!(checked, [0, 4]);
        assert!(got
            .iter()
            .all(|m| matches!(m.check, Check::Intact | Check::Unchecked)));
    }

    #[test]
    fn other_and_malformed_messages() {
        let ping = protocol::frame(FrameType::Ping, 0, 0, 0, (0, 0), &[]);
        let short = protocol::frame(FrameType::Pixels, FLAG_KEYFRAME, 0, 0, (2, 2), &[0; 16]);
        let mut wire = ws::server_frame(ws::OP_BINARY, &ping);
        wire.extend(ws::server_frame(ws::OP_BINARY, &short));
        let (got, _) = parse_all(&wire, 5, 1);
        let kinds: Vec<Check> = got.iter().map(|m| m.check).collect();
        assert_eq!(kinds, [Check::Other, Check::Malformed]);
    }
}
