//! DataChannel pieces: one PROTOCOL.md message split into DataChannel
//! messages small enough for any browser, and put back together on the
//! other side (`docs/webrtc.md`, "Framing").
//!
//! An unreliable, unordered DataChannel loses and reorders pieces, so the
//! [`Reassembler`] hands out only messages whose every piece arrived, each
//! at most once, never older than one it already handed out, and never
//! bytes of two messages mixed: a lost piece loses its whole message, never
//! corrupts one. Each piece carries a 16-byte head:
//!
//! | offset | size | field   | meaning |
//! |-------:|-----:|---------|---------|
//! | 0      | 1    | `magic` | [`MAGIC`] (`0xB5`): version 1 of this framing |
//! | 1      | 1    | `flags` | bit 0 [`FLAG_CHAIN`]: `base` is valid; other bits 0 |
//! | 2      | 2    | `id`    | u16 message id, +1 per message, wraps |
//! | 4      | 2    | `index` | u16 piece index, `0..count` |
//! | 6      | 2    | `count` | u16 pieces of this message, 1 or more |
//! | 8      | 2    | `base`  | u16 seq of the picture this message applies on (with `CHAIN`), else 0 |
//! | 10     | 2    | reserved| 0 |
//! | 12     | 4    | `total` | u32 length of the whole message |
//!
//! All integers are little-endian. Every piece but the last carries
//! `ceil(total / count)` bytes, the last the rest (at least one byte), so
//! each piece's place in the message follows from its index alone.

use thiserror::Error;

/// First byte of every piece: version 1 of this framing.
pub const MAGIC: u8 = 0xB5;
/// Flag bit: the piece head's `base` names the picture seq this message
/// (a `DeltaPixels`) applies on.
pub const FLAG_CHAIN: u8 = 0x01;
/// Length of a piece head in bytes.
pub const PIECE_HEAD_LEN: usize = 16;
/// Largest DataChannel message a sender makes by default: 16 KiB, which
/// every browser's SCTP stack takes (Chromium's own limit is 256 KiB).
pub const DEFAULT_MAX_PIECE: usize = 16 * 1024;

/// A piece that breaks the framing; the reassembler drops it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PieceError {
    /// Shorter than the 16-byte head, or no bytes after it.
    #[error("piece of {0} bytes is too short")]
    TooShort(usize),
    /// The first byte is not [`MAGIC`].
    #[error("piece magic 0x{0:02x} is not 0xb5")]
    BadMagic(u8),
    /// Unknown flag bits, or a nonzero reserved field.
    #[error("piece has reserved bits set")]
    Reserved,
    /// `count` is 0, or `index` is not below it.
    #[error("piece {index} of {count}")]
    BadIndex {
        /// The piece index.
        index: u16,
        /// The piece count.
        count: u16,
    },
    /// The message would be larger than the receiver accepts.
    #[error("message of {total} bytes is over the {max}-byte limit")]
    TooLarge {
        /// The `total` field.
        total: u32,
        /// The receiver's limit.
        max: usize,
    },
    /// The piece's length does not match its place in the message.
    #[error("piece {index} carries {got} bytes, its place holds {want}")]
    BadLength {
        /// The piece index.
        index: u16,
        /// Bytes the piece carries.
        got: usize,
        /// Bytes its place in the message holds.
        want: usize,
    },
    /// Another piece of the same message id said something else about it.
    #[error("piece disagrees with the message its id started")]
    Mismatch,
}

/// The head of one piece, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PieceHead {
    /// Message id (+1 per message, wraps).
    pub id: u16,
    /// Piece index, below `count`.
    pub index: u16,
    /// Pieces of the message.
    pub count: u16,
    /// The picture seq the message applies on, if it says.
    pub base: Option<u16>,
    /// Length of the whole message.
    pub total: u32,
}

/// Where piece `index` of a `total`-byte message in `count` pieces lies:
/// `(start, len)`, or `None` if there is no such piece (a last piece that
/// would be empty counts as none).
pub fn piece_span(total: usize, count: u16, index: u16) -> Option<(usize, usize)> {
    if count == 0 || index >= count || total == 0 {
        return None;
    }
    let size = total.div_ceil(usize::from(count));
    let start = usize::from(index).checked_mul(size)?;
    if start >= total {
        return None;
    }
    let len = size.min(total - start);
    // Every piece but the last must be full, and none empty.
    if index + 1 < count && len != size {
        return None;
    }
    if index + 1 == count && (count - 1) as usize * size + len != total {
        return None;
    }
    Some((start, len))
}

/// How many pieces a `total`-byte message takes with pieces of at most
/// `max_piece` bytes (head included), or `None` if it needs more than
/// 65,535 or `max_piece` leaves no room after the head.
pub fn piece_count(total: usize, max_piece: usize) -> Option<u16> {
    let room = max_piece.checked_sub(PIECE_HEAD_LEN).filter(|r| *r > 0)?;
    let mut count = u16::try_from(total.max(1).div_ceil(room)).ok()?;
    // Equal-sized pieces may leave the last one empty (e.g. 5 bytes in 4
    // pieces of 2): add pieces until every one holds bytes.
    while piece_span(total, count, count - 1).is_none() {
        count = count.checked_add(1)?;
        if usize::from(count) > total {
            return None;
        }
    }
    Some(count)
}

/// Splits `message` (one PROTOCOL.md message, not empty) into pieces of at
/// most `max_piece` bytes under message id `id`; `base` is the picture seq
/// a `DeltaPixels` applies on. `None` if the message is empty, over 4 GiB,
/// or needs more than 65,535 pieces.
pub fn split(message: &[u8], id: u16, base: Option<u16>, max_piece: usize) -> Option<Vec<Vec<u8>>> {
    let total = u32::try_from(message.len()).ok().filter(|t| *t > 0)?;
    let count = piece_count(message.len(), max_piece)?;
    let mut out = Vec::with_capacity(usize::from(count));
    for index in 0..count {
        let (start, len) = piece_span(message.len(), count, index)?;
        let mut piece = Vec::with_capacity(PIECE_HEAD_LEN + len);
        piece.push(MAGIC);
        piece.push(if base.is_some() { FLAG_CHAIN } else { 0 });
        piece.extend_from_slice(&id.to_le_bytes());
        piece.extend_from_slice(&index.to_le_bytes());
        piece.extend_from_slice(&count.to_le_bytes());
        piece.extend_from_slice(&base.unwrap_or(0).to_le_bytes());
        piece.extend_from_slice(&[0, 0]);
        piece.extend_from_slice(&total.to_le_bytes());
        piece.extend_from_slice(&message[start..start + len]);
        out.push(piece);
    }
    Some(out)
}

/// Parses and checks a piece: its head and the bytes it carries.
pub fn parse_piece(piece: &[u8], max_message: usize) -> Result<(PieceHead, &[u8]), PieceError> {
    if piece.len() <= PIECE_HEAD_LEN {
        return Err(PieceError::TooShort(piece.len()));
    }
    if piece[0] != MAGIC {
        return Err(PieceError::BadMagic(piece[0]));
    }
    let flags = piece[1];
    let u16_at = |at: usize| u16::from_le_bytes([piece[at], piece[at + 1]]);
    if flags & !FLAG_CHAIN != 0 || u16_at(10) != 0 {
        return Err(PieceError::Reserved);
    }
    let head = PieceHead {
        id: u16_at(2),
        index: u16_at(4),
        count: u16_at(6),
        base: (flags & FLAG_CHAIN != 0).then(|| u16_at(8)),
        total: u32::from_le_bytes([piece[12], piece[13], piece[14], piece[15]]),
    };
    if head.count == 0 || head.index >= head.count {
        return Err(PieceError::BadIndex {
            index: head.index,
            count: head.count,
        });
    }
    let total = usize::try_from(head.total).unwrap_or(usize::MAX);
    if total > max_message {
        return Err(PieceError::TooLarge {
            total: head.total,
            max: max_message,
        });
    }
    let body = &piece[PIECE_HEAD_LEN..];
    let want = piece_span(total, head.count, head.index).map_or(0, |(_, len)| len);
    if body.len() != want {
        return Err(PieceError::BadLength {
            index: head.index,
            got: body.len(),
            want,
        });
    }
    Ok((head, body))
}

/// A message put back together from all its pieces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assembled {
    /// Its message id.
    pub id: u16,
    /// The picture seq it applies on, if its pieces said.
    pub base: Option<u16>,
    /// The whole PROTOCOL.md message.
    pub message: Vec<u8>,
}

/// A message with some of its pieces.
#[derive(Debug)]
struct Partial {
    head: PieceHead,
    bytes: Vec<u8>,
    have: Vec<bool>,
    missing: usize,
}

/// Whether message id `a` comes after `b` (serial-number order: ids are
/// +1 per message and wrap, so "after" means less than half the id space
/// ahead).
pub fn id_after(a: u16, b: u16) -> bool {
    let d = a.wrapping_sub(b);
    d != 0 && d < 0x8000
}

/// Puts messages back together from their pieces, in any order, with any
/// of them lost. Holds at most `max_pending` unfinished messages (the
/// oldest goes when another starts) of at most `max_message` bytes each;
/// a message older than the last one handed out is dropped, so what comes
/// out is in id order, each message at most once.
#[derive(Debug)]
pub struct Reassembler {
    max_message: usize,
    max_pending: usize,
    pending: Vec<Partial>,
    last_done: Option<u16>,
    dropped: u64,
    rejected: u64,
}

impl Reassembler {
    /// A reassembler for messages of up to `max_message` bytes, keeping up
    /// to `max_pending` (at least 1) unfinished ones.
    pub fn new(max_message: usize, max_pending: usize) -> Self {
        Self {
            max_message,
            max_pending: max_pending.max(1),
            pending: Vec::new(),
            last_done: None,
            dropped: 0,
            rejected: 0,
        }
    }

    /// Unfinished messages given up (a piece lost, or overtaken by a newer
    /// message).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Pieces refused as malformed.
    pub fn rejected(&self) -> u64 {
        self.rejected
    }

    /// Takes one piece; returns the message it completes, if any.
    pub fn push(&mut self, piece: &[u8]) -> Result<Option<Assembled>, PieceError> {
        let (head, body) = match parse_piece(piece, self.max_message) {
            Ok(p) => p,
            Err(e) => {
                self.rejected += 1;
                return Err(e);
            }
        };
        if self.last_done.is_some_and(|done| !id_after(head.id, done)) {
            return Ok(None); // a late piece of a message handed out or given up
        }
        let slot = match self.pending.iter().position(|p| p.head.id == head.id) {
            Some(i) => {
                let p = &self.pending[i];
                if p.head.count != head.count
                    || p.head.total != head.total
                    || p.head.base != head.base
                {
                    self.rejected += 1;
                    return Err(PieceError::Mismatch);
                }
                i
            }
            None => {
                if self.pending.len() == self.max_pending {
                    self.pending.remove(0);
                    self.dropped += 1;
                }
                self.pending.push(Partial {
                    head,
                    bytes: vec![0; head.total as usize],
                    have: vec![false; usize::from(head.count)],
                    missing: usize::from(head.count),
                });
                self.pending.len() - 1
            }
        };
        let p = &mut self.pending[slot];
        let index = usize::from(head.index);
        if p.have[index] {
            return Ok(None); // a duplicate piece
        }
        let Some((start, len)) = piece_span(p.bytes.len(), head.count, head.index) else {
            return Err(PieceError::BadIndex {
                index: head.index,
                count: head.count,
            });
        };
        p.bytes[start..start + len].copy_from_slice(body);
        p.have[index] = true;
        p.missing -= 1;
        if p.missing > 0 {
            return Ok(None);
        }
        let done = self.pending.remove(slot);
        // Anything older than what is handed out now can only be drawn out
        // of order: give it up.
        let before = self.pending.len();
        self.pending.retain(|p| id_after(p.head.id, done.head.id));
        self.dropped += (before - self.pending.len()) as u64;
        self.last_done = Some(done.head.id);
        Ok(Some(Assembled {
            id: done.head.id,
            base: done.head.base,
            message: done.bytes,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn message(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    }

    #[test]
    fn a_640x360_keyframe_splits_into_16_kib_pieces_and_back() {
        let msg = message(921_616, 7);
        let pieces = split(&msg, 3, None, DEFAULT_MAX_PIECE).unwrap();
        assert_eq!(pieces.len(), 57);
        assert!(pieces.iter().all(|p| p.len() <= DEFAULT_MAX_PIECE));
        let mut r = Reassembler::new(64 << 20, 4);
        let mut out = None;
        for p in pieces.iter().rev() {
            assert!(out.is_none(), "completed before the last piece");
            out = r.push(p).unwrap();
        }
        let out = out.unwrap();
        assert_eq!((out.id, out.base), (3, None));
        assert!(out.message == msg);
    }

    #[test]
    fn chain_base_rides_in_every_piece() {
        let pieces = split(&message(40_000, 1), 9, Some(65_535), 1000).unwrap();
        for p in &pieces {
            let (head, _) = parse_piece(p, 1 << 20).unwrap();
            assert_eq!(head.base, Some(65_535));
        }
    }

    #[test]
    fn a_lost_piece_loses_the_message_and_a_newer_one_still_comes_out() {
        let a = split(&message(5000, 1), 1, None, 1000).unwrap();
        let b = split(&message(3000, 2), 2, Some(1), 1000).unwrap();
        let mut r = Reassembler::new(1 << 20, 4);
        for p in a.iter().skip(1) {
            assert_eq!(r.push(p).unwrap(), None);
        }
        let mut got = None;
        for p in &b {
            got = r.push(p).unwrap().or(got);
        }
        assert_eq!(got.unwrap().message, message(3000, 2));
        assert_eq!(r.dropped(), 1, "message 1 given up once 2 is out");
        // The missing piece of message 1 turns up late: nothing comes out.
        assert_eq!(r.push(&a[0]).unwrap(), None);
    }

    #[test]
    fn malformed_pieces_are_errors_not_panics() {
        let good = split(&message(100, 1), 1, None, 64).unwrap();
        let mut r = Reassembler::new(1000, 2);
        assert!(matches!(r.push(&[]), Err(PieceError::TooShort(0))));
        let mut bad = good[0].clone();
        bad[0] = 0;
        assert!(matches!(r.push(&bad), Err(PieceError::BadMagic(0))));
        let mut bad = good[0].clone();
        bad[1] = 0x80;
        assert_eq!(r.push(&bad), Err(PieceError::Reserved));
        let mut bad = good[0].clone();
        bad[6..8].copy_from_slice(&0u16.to_le_bytes());
        assert!(matches!(r.push(&bad), Err(PieceError::BadIndex { .. })));
        let mut bad = good[0].clone();
        bad[12..16].copy_from_slice(&5000u32.to_le_bytes());
        assert!(matches!(r.push(&bad), Err(PieceError::TooLarge { .. })));
        let mut bad = good[0].clone();
        bad.push(0);
        assert!(matches!(r.push(&bad), Err(PieceError::BadLength { .. })));
        // The same id claiming another total.
        assert_eq!(r.push(&good[0]).unwrap(), None);
        let other = split(&message(90, 1), 1, None, 64).unwrap();
        assert_eq!(r.push(&other[1]), Err(PieceError::Mismatch));
        assert_eq!(r.rejected(), 7);
    }

    #[test]
    fn piece_count_never_leaves_an_empty_piece() {
        for total in 1..300 {
            for max in PIECE_HEAD_LEN + 1..PIECE_HEAD_LEN + 20 {
                let count = piece_count(total, max).unwrap();
                for i in 0..count {
                    let (_, len) = piece_span(total, count, i).unwrap();
                    assert!(len > 0 && len <= max - PIECE_HEAD_LEN, "{total} {max} {i}");
                }
            }
        }
    }

    proptest! {
        #[test]
        fn split_and_reassemble_round_trips(
            len in 1usize..20_000,
            max in (PIECE_HEAD_LEN + 1)..4096usize,
            id: u16,
            base: Option<u16>,
            seed: u8,
        ) {
            let msg = message(len, seed);
            let pieces = split(&msg, id, base, max).unwrap();
            prop_assert!(pieces.iter().all(|p| p.len() <= max));
            let mut r = Reassembler::new(1 << 20, 1);
            let mut out = Vec::new();
            for p in &pieces {
                out.extend(r.push(p).unwrap());
            }
            prop_assert_eq!(out, vec![Assembled { id, base, message: msg }]);
        }

        /// Several messages, their pieces shuffled, duplicated and any of
        /// them dropped: every message that comes out is one that went in,
        /// byte for byte with its base, at most once, in id order; and one
        /// whose pieces all arrived before any newer message completed
        /// comes out.
        #[test]
        fn any_loss_or_order_never_yields_a_wrong_message(
            lens in proptest::collection::vec(1usize..3000, 1..8),
            first_id: u16,
            keep in proptest::collection::vec(any::<bool>(), 0..400),
            order in proptest::collection::vec(any::<u16>(), 0..400),
            max_pending in 1usize..4,
        ) {
            let msgs: Vec<(u16, Option<u16>, Vec<u8>)> = lens
                .iter()
                .enumerate()
                .map(|(i, len)| {
                    let id = first_id.wrapping_add(i as u16);
                    let base = (i % 2 == 1).then_some(i as u16);
                    (id, base, message(*len, i as u8))
                })
                .collect();
            let mut pieces: Vec<Vec<u8>> = msgs
                .iter()
                .flat_map(|(id, base, m)| split(m, *id, *base, 500).unwrap())
                .collect();
            // Drop some, duplicate some, then shuffle by the sort keys.
            let mut stream: Vec<(u16, Vec<u8>)> = Vec::new();
            for (i, p) in pieces.drain(..).enumerate() {
                let k = keep.get(i).copied().unwrap_or(true);
                let key = order.get(i).copied().unwrap_or(i as u16);
                if k {
                    stream.push((key, p.clone()));
                }
                if key.is_multiple_of(7) {
                    stream.push((key / 2, p));
                }
            }
            stream.sort_by_key(|(k, _)| *k);
            let mut r = Reassembler::new(1 << 20, max_pending);
            let mut out: Vec<Assembled> = Vec::new();
            for (_, p) in &stream {
                out.extend(r.push(p).unwrap());
            }
            for pair in out.windows(2) {
                prop_assert!(id_after(pair[1].id, pair[0].id), "out of order or twice");
            }
            for a in &out {
                let sent = msgs.iter().find(|(id, _, _)| *id == a.id);
                prop_assert!(sent.is_some());
                let (_, base, m) = sent.unwrap();
                prop_assert_eq!(&a.base, base);
                prop_assert!(&a.message == m, "message {} differs", a.id);
            }
        }
    }
}
