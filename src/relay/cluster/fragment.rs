//! How a frame crosses NATS: one or more messages, each a fixed head and a
//! slice of the frame's protocol message, and the reassembly on the other
//! side (pure: no sockets, the clock is passed in).
//!
//! Head (little-endian): magic `0xB5`, version 1, kind (1 live, 2 catch-up,
//! 3 heartbeat: no data, seq = the last frame numbered),
//! node id length, epoch u64 (one per source session), seq u64 (per channel
//! and epoch, from 1), part u32 / parts u32 (a catch-up's frame i of n; 0/1
//! live), frag u32 / frags u32 (fragment j of m), total u32 (the message's
//! length), then the publishing node's id, then the data.
//!
//! NATS keeps the order of one publisher's messages on a subject, so
//! fragments arrive in order or not at all: a reassembler holds at most one
//! incomplete message (bounded by `--max-message`), and a set that breaks
//! (a fragment missing, another message starting) or takes longer than the
//! timeout is dropped and counted, never delivered.
//!
//! Memory: the buffer of a message of [`LARGE`] bytes or more is charged in
//! full to the relay's memory budget (`--max-memory`) when its first
//! fragment arrives, before it is allocated; if the budget cannot take it
//! the message is refused and counted (the receiving node sees a sequence
//! gap and repairs it with a catch-up later). A complete message carries
//! the charge on (see [`charged`](crate::relay::resources::budget::charged)); a set
//! dropped or timed out gives it back.

use std::sync::Arc;

use bitstream_wire::reader::WireMessage;
use bitstream_wire::ws;
use bytes::{BufMut, Bytes, BytesMut};

use crate::relay::resources::budget::{Budget, Hold, LARGE};

const MAGIC: u8 = 0xB5;
const VERSION: u8 = 1;
/// Fixed part of the head, before the node id.
pub(crate) const FIXED: usize = 4 + 8 + 8 + 4 * 5;
/// Longest node id.
pub(crate) const MAX_NODE: usize = 64;

/// What a message carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A live frame of the channel.
    Live = 1,
    /// A frame of a catch-up answer.
    CatchUp = 2,
    /// No frame: the number of the last frame the source's node numbered,
    /// sent while the channel is idle (see [`super::uplink`]).
    Heartbeat = 3,
}

/// The head of one NATS message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Head {
    pub(crate) kind: Kind,
    pub(crate) epoch: u64,
    pub(crate) seq: u64,
    pub(crate) part: u32,
    pub(crate) parts: u32,
    pub(crate) frag: u32,
    pub(crate) frags: u32,
    pub(crate) total: u32,
    pub(crate) node: String,
}

impl Head {
    /// Parses a message: its head and its data.
    pub(crate) fn parse(msg: &[u8]) -> Option<(Head, &[u8])> {
        if msg.len() < FIXED || msg[0] != MAGIC || msg[1] != VERSION {
            return None;
        }
        let kind = match msg[2] {
            1 => Kind::Live,
            2 => Kind::CatchUp,
            3 => Kind::Heartbeat,
            _ => return None,
        };
        let node_len = msg[3] as usize;
        let u64_at = |i: usize| u64::from_le_bytes(msg[i..i + 8].try_into().unwrap());
        let u32_at = |i: usize| u32::from_le_bytes(msg[i..i + 4].try_into().unwrap());
        let node = msg.get(FIXED..FIXED + node_len)?;
        let head = Head {
            kind,
            epoch: u64_at(4),
            seq: u64_at(12),
            part: u32_at(20),
            parts: u32_at(24),
            frag: u32_at(28),
            frags: u32_at(32),
            total: u32_at(36),
            node: String::from_utf8(node.to_vec()).ok()?,
        };
        if head.frags == 0 || head.frag >= head.frags {
            return None;
        }
        Some((head, &msg[FIXED + node_len..]))
    }

    fn write(&self, out: &mut BytesMut) {
        let node = &self.node.as_bytes()[..self.node.len().min(MAX_NODE)];
        out.put_u8(MAGIC);
        out.put_u8(VERSION);
        out.put_u8(self.kind as u8);
        out.put_u8(node.len() as u8);
        out.put_u64_le(self.epoch);
        out.put_u64_le(self.seq);
        out.put_u32_le(self.part);
        out.put_u32_le(self.parts);
        out.put_u32_le(self.frag);
        out.put_u32_le(self.frags);
        out.put_u32_le(self.total);
        out.put_slice(node);
    }
}

/// The NATS messages that carry `data` (a protocol message) under `head`'s
/// kind, epoch, seq and part, each at most `max_payload` bytes.
pub(crate) fn split(head: &Head, data: &[u8], max_payload: usize) -> Vec<Bytes> {
    let overhead = FIXED + head.node.len().min(MAX_NODE);
    let room = max_payload.saturating_sub(overhead).max(1);
    let frags = data.len().div_ceil(room).max(1);
    (0..frags)
        .map(|j| {
            let chunk = &data[(j * room).min(data.len())..((j + 1) * room).min(data.len())];
            let mut out = BytesMut::with_capacity(overhead + chunk.len());
            Head {
                frag: j as u32,
                frags: frags as u32,
                total: data.len() as u32,
                ..head.clone()
            }
            .write(&mut out);
            out.put_slice(chunk);
            out.freeze()
        })
        .collect()
}

/// A whole message out of the reassembler: its head (fragment fields of
/// the last fragment) and the frame, ready for the local fan-out.
#[derive(Debug)]
pub(crate) struct Whole {
    pub(crate) head: Head,
    pub(crate) msg: WireMessage,
}

#[derive(Debug)]
struct Partial {
    head: Head,
    next: u32,
    buf: BytesMut,
    head_len: usize,
    started_ms: u64,
    /// The buffer's charge, for a large message.
    hold: Option<Hold>,
}

/// Puts fragments back together, one message at a time (see the module docs).
#[derive(Debug)]
pub(crate) struct Reassembler {
    max_total: usize,
    timeout_ms: u64,
    memory: Arc<Budget>,
    cur: Option<Partial>,
    /// Incomplete sets dropped so far.
    pub(crate) dropped: u64,
    /// Messages refused because the memory budget could not take them.
    pub(crate) refused: u64,
}

impl Reassembler {
    /// A reassembler of messages up to `max_total` bytes whose fragments
    /// must all arrive within `timeout_ms`, its large buffers charged to
    /// `memory`.
    pub(crate) fn new(max_total: usize, timeout_ms: u64, memory: Arc<Budget>) -> Self {
        Self {
            max_total,
            timeout_ms,
            memory,
            cur: None,
            dropped: 0,
            refused: 0,
        }
    }

    /// Bytes held for an incomplete message.
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.cur.as_ref().map_or(0, |p| p.buf.capacity())
    }

    fn drop_partial(&mut self) {
        if self.cur.take().is_some() {
            self.dropped += 1;
        }
    }

    /// Takes one fragment at `now` (ms); the whole message once its last
    /// fragment is in.
    pub(crate) fn push(&mut self, head: Head, data: &[u8], now: u64) -> Option<Whole> {
        let total = head.total as usize;
        if head.frag == 0 {
            self.drop_partial();
            if total > self.max_total {
                self.dropped += 1;
                return None;
            }
            let size = ws::MAX_SERVER_HEAD_LEN + total;
            let hold = if total >= LARGE {
                let Some(h) = Hold::take(&self.memory, size) else {
                    self.refused += 1;
                    return None;
                };
                Some(h)
            } else {
                None
            };
            let mut buf = BytesMut::with_capacity(size);
            let mut h = [0u8; ws::MAX_SERVER_HEAD_LEN];
            let n = ws::server_header(ws::OP_BINARY, total, &mut h);
            buf.put_slice(&h[..n]);
            self.cur = Some(Partial {
                head: head.clone(),
                next: 0,
                buf,
                head_len: n,
                started_ms: now,
                hold,
            });
        }
        let Some(p) = self.cur.as_mut() else {
            // The tail of a set whose start was lost: already counted when
            // the set broke, or never started here.
            return None;
        };
        let same = p.head.epoch == head.epoch
            && p.head.seq == head.seq
            && p.head.part == head.part
            && p.head.kind == head.kind
            && p.head.frags == head.frags
            && p.head.total == head.total;
        if !same || head.frag != p.next || p.buf.len() - p.head_len + data.len() > total {
            self.drop_partial();
            return None;
        }
        p.buf.put_slice(data);
        p.next += 1;
        if p.next < p.head.frags {
            return None;
        }
        let p = self.cur.take()?;
        if p.buf.len() - p.head_len != total {
            self.dropped += 1;
            return None;
        }
        let wire = match p.hold {
            Some(hold) => hold.into_frame(p.buf.freeze()),
            None => p.buf.freeze(),
        };
        Some(Whole {
            head,
            msg: WireMessage {
                wire,
                head_len: p.head_len,
            },
        })
    }

    /// Drops an incomplete set older than the timeout at `now`; true if it did.
    pub(crate) fn expire(&mut self, now: u64) -> bool {
        let old = self
            .cur
            .as_ref()
            .is_some_and(|p| now.saturating_sub(p.started_ms) >= self.timeout_ms);
        if old {
            self.drop_partial();
        }
        old
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(seq: u64) -> Head {
        Head {
            kind: Kind::Live,
            epoch: 7,
            seq,
            part: 0,
            parts: 1,
            frag: 0,
            frags: 1,
            total: 0,
            node: "node-a".into(),
        }
    }

    fn budget() -> Arc<Budget> {
        Arc::new(Budget::new(1 << 30))
    }

    fn feed(r: &mut Reassembler, msgs: &[Bytes], now: u64) -> Vec<Whole> {
        msgs.iter()
            .filter_map(|m| {
                let (h, d) = Head::parse(m).expect("parses");
                r.push(h, d, now)
            })
            .collect()
    }

    #[test]
    fn a_large_message_splits_and_comes_back_byte_exact() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 31 % 251) as u8).collect();
        let msgs = split(&head(3), &data, 4096);
        assert_eq!(msgs.len(), data.len().div_ceil(4096 - FIXED - 6));
        assert!(msgs.iter().all(|m| m.len() <= 4096));
        let mut r = Reassembler::new(1 << 20, 1000, budget());
        let out = feed(&mut r, &msgs, 0);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].msg.payload(), &data[..]);
        assert_eq!(out[0].head.seq, 3);
        assert_eq!(
            out[0].msg.wire,
            WireMessage::encode(ws::OP_BINARY, &data).wire
        );
        assert_eq!(r.dropped, 0);
    }

    #[test]
    fn small_and_empty_messages_are_one_fragment() {
        let mut r = Reassembler::new(1 << 20, 1000, budget());
        for data in [&b""[..], b"abc"] {
            let msgs = split(&head(1), data, 1 << 20);
            assert_eq!(msgs.len(), 1);
            assert_eq!(feed(&mut r, &msgs, 0)[0].msg.payload(), data);
        }
    }

    #[test]
    fn a_lost_fragment_drops_the_set_and_the_next_message_still_arrives() {
        let data = vec![5u8; 10_000];
        let mut r = Reassembler::new(1 << 20, 1000, budget());
        let mut msgs = split(&head(1), &data, 1024);
        msgs.remove(4);
        assert!(feed(&mut r, &msgs, 0).is_empty());
        assert_eq!(r.dropped, 1);
        let out = feed(&mut r, &split(&head(2), &data, 1024), 0);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].head.seq, 2);
        // A set cut short by the next message is dropped too.
        let first = split(&head(3), &data, 1024);
        assert!(feed(&mut r, &first[..3], 0).is_empty());
        assert_eq!(feed(&mut r, &split(&head(4), b"x", 1024), 0).len(), 1);
        assert_eq!(r.dropped, 2);
    }

    #[test]
    fn an_incomplete_set_expires_and_oversized_sets_are_refused() {
        let mut r = Reassembler::new(5000, 1000, budget());
        let msgs = split(&head(1), &[1u8; 4000], 1024);
        assert!(feed(&mut r, &msgs[..2], 0).is_empty());
        assert!(r.held() > 0);
        assert!(!r.expire(999));
        assert!(r.expire(1000));
        assert_eq!((r.held(), r.dropped), (0, 1));
        assert!(feed(&mut r, &split(&head(2), &[1u8; 6000], 1024), 0).is_empty());
        assert_eq!(r.held(), 0, "nothing buffered for a set over the bound");
    }

    #[test]
    fn large_sets_are_charged_while_reassembled_and_refused_over_budget() {
        let total = 3 * LARGE;
        let need = ws::MAX_SERVER_HEAD_LEN + total;
        let memory = Arc::new(Budget::new(need + LARGE));
        let mut r = Reassembler::new(1 << 20, 1000, memory.clone());
        let data = vec![9u8; total];
        let msgs = split(&head(1), &data, LARGE);
        assert!(msgs.len() > 3);
        // Charged in full from the first fragment on.
        assert!(feed(&mut r, &msgs[..1], 0).is_empty());
        assert_eq!(memory.used(), need);
        // The finished frame carries the charge until its last handle goes.
        let out = feed(&mut r, &msgs[1..], 0);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].msg.payload(), &data[..]);
        assert_eq!(memory.used(), need);
        drop(out);
        assert_eq!(memory.used(), 0);
        // A set that times out, or is cut short, gives its charge back.
        assert!(feed(&mut r, &msgs[..2], 0).is_empty());
        assert_eq!(memory.used(), need);
        assert!(r.expire(1000));
        assert_eq!(memory.used(), 0);
        assert!(feed(&mut r, &split(&head(2), &data, LARGE)[..2], 0).is_empty());
        assert_eq!(feed(&mut r, &split(&head(3), b"x", LARGE), 0).len(), 1);
        assert_eq!((memory.used(), r.dropped), (0, 2));
        // Short of memory a large set is refused before anything is
        // buffered, counted, and the next message still arrives.
        assert!(memory.charge(2 * LARGE));
        assert!(feed(&mut r, &split(&head(4), &data, LARGE), 0).is_empty());
        assert_eq!((r.refused, r.held(), memory.used()), (1, 0, 2 * LARGE));
        assert_eq!(memory.sheds(), 1);
        assert_eq!(feed(&mut r, &split(&head(5), b"y", LARGE), 0).len(), 1);
        memory.release(2 * LARGE);
        // Small messages are left to the queues that hold them.
        let small = feed(&mut r, &split(&head(6), &[3u8; 1000], LARGE), 0);
        assert_eq!((small.len(), memory.used()), (1, 0));
        // Dropping the reassembler mid-set gives the charge back too.
        assert!(feed(&mut r, &split(&head(7), &data, LARGE)[..1], 0).is_empty());
        assert_eq!(memory.used(), need);
        drop(r);
        assert_eq!(memory.used(), 0);
    }

    #[test]
    fn a_heartbeat_is_one_empty_message() {
        let hb = Head {
            kind: Kind::Heartbeat,
            ..head(42)
        };
        let msgs = split(&hb, &[], 1024);
        assert_eq!(msgs.len(), 1);
        let (h, data) = Head::parse(&msgs[0]).expect("parses");
        assert_eq!(
            (h.kind, h.seq, h.epoch, data.len()),
            (Kind::Heartbeat, 42, 7, 0)
        );
    }

    #[test]
    fn garbage_is_not_a_head() {
        assert!(Head::parse(b"").is_none());
        assert!(Head::parse(&[0u8; 64]).is_none());
        let mut m = split(&head(1), b"abc", 1024)[0].to_vec();
        m[32] = 0; // frags = 0
        assert!(Head::parse(&m).is_none());
    }
}
