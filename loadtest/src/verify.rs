//! What one receiver got, frame by frame: a pure tally with no I/O, fed
//! the messages the [`Parser`](crate::wire::Parser) reports, so every
//! defect can be tested by feeding it frames.
//!
//! The source sends frames 0, 1, 2, ... on every channel. For each message:
//!
//! - not a test frame (another type, e.g. a relay's protocol `Ping`): *other*;
//! - a malformed test frame, a hash mismatch, a frame of another channel,
//!   or an index implausibly far ahead: *corrupt* (not delivered);
//! - an index already delivered: *duplicate* (not delivered again);
//! - an index below the highest delivered one, not seen before: delivered,
//!   and *out of order*;
//! - else delivered in order.
//!
//! *Missing* is counted, not seen: of the frames up to a point (the highest
//! index delivered so far, or every frame the source sent at the end), those
//! neither delivered nor accounted for by a corrupt frame (a corrupt frame
//! takes the place of one that did arrive, so one flipped byte is one
//! corrupt frame and no missing one).
//!
//! What a receiver must get is its [`Expect`]: *every* frame (missing ones
//! fail it), or, for a receiver deliberately slower than the stream, which
//! the relay may skip forward to its latest keyframe, the frames it gets
//! with *gaps* allowed: missing frames are then *skipped* (reported, not a
//! failure), while a duplicate, a frame out of order (indices must strictly
//! increase) or a corrupt frame still fails it.

use crate::wire::{Check, MsgInfo};

/// A frame index further than this past the highest delivered one is
/// treated as corrupt (its index word cannot be right), so a damaged index
/// in an unhashed frame cannot make the tally allocate without bound.
const MAX_JUMP: u64 = 1 << 24;

/// Totals of one receiver (or, added up, of many).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Distinct test frames delivered intact (in order or not).
    pub delivered: u64,
    /// Their bytes (protocol messages).
    pub bytes: u64,
    /// Frames delivered again.
    pub duplicate: u64,
    /// Frames delivered after a later one.
    pub out_of_order: u64,
    /// Frames that failed a check.
    pub corrupt: u64,
    /// Messages that are not test frames.
    pub other: u64,
    /// Frames whose hash was computed (and matched or not).
    pub checked: u64,
    /// Frames missing (see the module docs; filled in by [`Verifier::counts`]).
    pub missing: u64,
    /// Forward jumps: an in-order frame more than one past the one before
    /// (the relay skipped the receiver forward, or frames were lost).
    pub jumps: u64,
}

impl Counts {
    /// Adds `o` to these totals.
    pub fn add(&mut self, o: &Counts) {
        self.delivered += o.delivered;
        self.bytes += o.bytes;
        self.duplicate += o.duplicate;
        self.out_of_order += o.out_of_order;
        self.corrupt += o.corrupt;
        self.other += o.other;
        self.checked += o.checked;
        self.missing += o.missing;
        self.jumps += o.jumps;
    }

    /// True if no frame was missing, duplicated, out of order or corrupt.
    pub fn clean(&self) -> bool {
        self.missing == 0 && self.duplicate == 0 && self.out_of_order == 0 && self.corrupt == 0
    }

    /// `missing M, duplicate D, out-of-order O, corrupt C`.
    pub fn defects(&self) -> String {
        format!(
            "missing {}, duplicate {}, out-of-order {}, corrupt {}",
            self.missing, self.duplicate, self.out_of_order, self.corrupt
        )
    }
}

/// What a receiver must get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Every frame the source sent, intact, once and in order.
    Every,
    /// The frames it gets intact, once, with strictly increasing indices;
    /// gaps (frames the relay skipped it past) are allowed.
    Gaps,
}

impl Expect {
    /// The defects that fail a receiver (or a group of them) with totals
    /// `c`: its missing, duplicate, out-of-order and corrupt frames, less
    /// the missing ones when gaps are allowed.
    pub fn failing(self, c: &Counts) -> Counts {
        Counts {
            missing: match self {
                Expect::Every => c.missing,
                Expect::Gaps => 0,
            },
            duplicate: c.duplicate,
            out_of_order: c.out_of_order,
            corrupt: c.corrupt,
            ..Counts::default()
        }
    }

    /// Frames missing that are allowed (skipped): all of them with gaps, else none.
    pub fn skipped(self, c: &Counts) -> u64 {
        match self {
            Expect::Every => 0,
            Expect::Gaps => c.missing,
        }
    }

    /// True if totals `c` pass.
    pub fn passes(self, c: &Counts) -> bool {
        self.failing(c).clean()
    }
}

/// What became of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Delivered in order.
    InOrder,
    /// Delivered, after a later frame.
    Late,
    /// Already delivered.
    Duplicate,
    /// Failed a check.
    Corrupt,
    /// Not a test frame.
    Other,
}

impl Verdict {
    /// True if the frame counts as delivered (first arrival, intact).
    pub fn delivered(self) -> bool {
        matches!(self, Verdict::InOrder | Verdict::Late)
    }
}

/// The tally of one receiver of channel `channel`. See the module docs.
#[derive(Debug, Clone)]
pub struct Verifier {
    channel: u64,
    /// One bit per frame index: delivered.
    seen: Vec<u64>,
    /// Highest delivered index + 1.
    next: u64,
    c: Counts,
}

impl Verifier {
    /// A receiver of the channel numbered `channel` in the run.
    pub fn new(channel: u64) -> Self {
        Self {
            channel,
            seen: Vec::new(),
            next: 0,
            c: Counts::default(),
        }
    }

    /// Takes one message.
    pub fn on_msg(&mut self, m: &MsgInfo) -> Verdict {
        match m.check {
            Check::Other => {
                self.c.other += 1;
                return Verdict::Other;
            }
            Check::Intact | Check::Mismatch => self.c.checked += 1,
            Check::Malformed | Check::Unchecked => {}
        }
        if matches!(m.check, Check::Malformed | Check::Mismatch)
            || m.channel != self.channel
            || m.idx > self.next + MAX_JUMP
        {
            self.c.corrupt += 1;
            return Verdict::Corrupt;
        }
        let (word, bit) = ((m.idx / 64) as usize, 1u64 << (m.idx % 64));
        if self.seen.len() <= word {
            self.seen.resize(word + 1, 0);
        }
        if self.seen[word] & bit != 0 {
            self.c.duplicate += 1;
            return Verdict::Duplicate;
        }
        self.seen[word] |= bit;
        self.c.delivered += 1;
        self.c.bytes += m.len;
        if m.idx < self.next {
            self.c.out_of_order += 1;
            Verdict::Late
        } else {
            if m.idx > self.next {
                self.c.jumps += 1;
            }
            self.next = m.idx + 1;
            Verdict::InOrder
        }
    }

    /// Highest delivered index + 1.
    pub fn next(&self) -> u64 {
        self.next
    }

    /// True if frame `idx` was delivered.
    pub fn has(&self, idx: u64) -> bool {
        self.seen
            .get((idx / 64) as usize)
            .is_some_and(|w| w & (1 << (idx % 64)) != 0)
    }

    /// The totals, with frames `0..sent` expected (`sent` below the highest
    /// delivered index counts up to that index instead).
    pub fn counts(&self, sent: u64) -> Counts {
        let mut c = self.c;
        c.missing = sent.max(self.next).saturating_sub(c.delivered + c.corrupt);
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Ev, FrameTemplate, Framing, Parser};
    use bitstream_wire::ws;

    /// Server frames 0..n of channel 3, as the relay should send them.
    fn frames(n: u64) -> Vec<Vec<u8>> {
        let mut tpl = FrameTemplate::new(Framing::Ws, 32, 16);
        (0..n)
            .map(|i| {
                tpl.patch(3, i, 1_000 + i, i as u32);
                ws::server_frame(ws::OP_BINARY, tpl.message())
            })
            .collect()
    }

    /// Feeds `wire` to a parser (in awkward pieces) and a verifier of
    /// channel 3; the totals with `sent` frames expected.
    fn verify(wire: &[Vec<u8>], sent: u64) -> Counts {
        let bytes: Vec<u8> = wire.concat();
        let mut p = Parser::new(Framing::Ws, 1, 0);
        let mut v = Verifier::new(3);
        for piece in bytes.chunks(1_000) {
            p.feed(piece, &mut |e| {
                if let Ev::Msg(m) = e {
                    v.on_msg(&m);
                }
            })
            .unwrap();
        }
        v.counts(sent)
    }

    fn defects(c: &Counts) -> [u64; 4] {
        [c.missing, c.duplicate, c.out_of_order, c.corrupt]
    }

    /// The totals of six frames after `edit` (six expected).
    fn edited(edit: impl FnOnce(&mut Vec<Vec<u8>>)) -> Counts {
        let mut f = frames(6);
        edit(&mut f);
        verify(&f, 6)
    }

    /// Offset of payload byte `i` in a server frame of [`frames`] (4-byte
    /// frame head, 16-byte protocol header).
    const fn at(i: usize) -> usize {
        4 + 16 + i
    }

    #[test]
    fn a_clean_stream_is_clean() {
        let c = edited(|_| {});
        assert_eq!(defects(&c), [0, 0, 0, 0]);
        assert_eq!((c.delivered, c.checked), (6, 6));
        assert!(c.clean());
    }

    #[test]
    fn one_flipped_byte_is_one_corrupt_frame() {
        // The index, the channel, the filler, the last byte.
        for i in [0usize, 20, 480, 2047] {
            let c = edited(|f| f[2][at(i)] ^= 0x01);
            assert_eq!(defects(&c), [0, 0, 0, 1], "payload byte {i}");
            assert_eq!(c.delivered, 5);
            assert!(!c.clean());
        }
    }

    #[test]
    fn two_swapped_words_are_corrupt() {
        let c = edited(|f| {
            let w: Vec<u8> = f[4][at(64)..at(72)].to_vec();
            f[4].copy_within(at(72)..at(80), at(64));
            f[4][at(72)..at(80)].copy_from_slice(&w);
        });
        assert_eq!(defects(&c), [0, 0, 0, 1]);
    }

    #[test]
    fn a_reordered_pair_is_one_out_of_order_frame() {
        let c = edited(|f| f.swap(2, 3));
        assert_eq!((defects(&c), c.delivered), ([0, 0, 1, 0], 6));
    }

    #[test]
    fn a_duplicated_frame_is_one_duplicate() {
        let c = edited(|f| f.insert(3, f[2].clone()));
        assert_eq!((defects(&c), c.delivered), ([0, 1, 0, 0], 6));
    }

    #[test]
    fn a_dropped_frame_is_one_missing() {
        let c = edited(|f| drop(f.remove(3)));
        assert_eq!((defects(&c), c.delivered), ([1, 0, 0, 0], 5));
        // Frames lost at the end are missing too.
        assert_eq!(defects(&edited(|f| f.truncate(3))), [3, 0, 0, 0]);
    }

    #[test]
    fn a_frame_of_another_channel_is_corrupt() {
        let mut tpl = FrameTemplate::new(Framing::Ws, 32, 16);
        let mut f = frames(3);
        tpl.patch(4, 1, 0, 0);
        f[1] = ws::server_frame(ws::OP_BINARY, tpl.message());
        assert_eq!(defects(&verify(&f, 3)), [0, 0, 0, 1]);
    }

    #[test]
    fn other_messages_are_not_defects() {
        let mut f = frames(2);
        let ping = bitstream_wire::protocol::frame(
            bitstream_wire::protocol::FrameType::Ping,
            0,
            0,
            0,
            (0, 0),
            &[],
        );
        f.insert(1, ws::server_frame(ws::OP_BINARY, &ping));
        let c = verify(&f, 2);
        assert_eq!((defects(&c), c.other), ([0, 0, 0, 0], 1));
    }

    /// Frames `keep` of 0..n (in that order), as a slow receiver the relay
    /// skipped forward would get them.
    fn only(n: u64, keep: &[u64]) -> Vec<Vec<u8>> {
        let f = frames(n);
        keep.iter().map(|&i| f[i as usize].clone()).collect()
    }

    #[test]
    fn gaps_pass_a_slow_receiver_and_fail_a_fast_one() {
        // Skipped forward twice (1 -> 4, 4 -> 7) and past the last two.
        let c = verify(&only(10, &[0, 1, 4, 7]), 10);
        assert_eq!((defects(&c), c.delivered, c.jumps), ([6, 0, 0, 0], 4, 2));
        assert!(Expect::Gaps.passes(&c));
        assert_eq!(Expect::Gaps.skipped(&c), 6);
        assert_eq!(defects(&Expect::Gaps.failing(&c)), [0, 0, 0, 0]);
        // The same frames at a receiver that must get every one: 6 missing.
        assert!(!Expect::Every.passes(&c));
        assert_eq!(Expect::Every.skipped(&c), 0);
        assert_eq!(defects(&Expect::Every.failing(&c)), [6, 0, 0, 0]);
        // A first frame past 0 is a jump too.
        let c = verify(&only(10, &[3, 9]), 10);
        assert_eq!((c.jumps, c.missing, Expect::Gaps.passes(&c)), (2, 8, true));
    }

    #[test]
    fn gaps_do_not_excuse_a_duplicate() {
        let c = verify(&only(10, &[0, 4, 4, 8]), 10);
        assert_eq!((defects(&c), c.delivered), ([7, 1, 0, 0], 3));
        assert!(!Expect::Gaps.passes(&c));
        assert_eq!(defects(&Expect::Gaps.failing(&c)), [0, 1, 0, 0]);
        assert_eq!(Expect::Gaps.skipped(&c), 7);
    }

    #[test]
    fn gaps_do_not_excuse_a_frame_out_of_order() {
        // 7 then 4: an index that does not increase, though never seen.
        let c = verify(&only(10, &[0, 7, 4, 8]), 10);
        assert_eq!((defects(&c), c.delivered), ([6, 0, 1, 0], 4));
        assert!(!Expect::Gaps.passes(&c));
        assert_eq!(defects(&Expect::Gaps.failing(&c)), [0, 0, 1, 0]);
    }

    #[test]
    fn gaps_do_not_excuse_a_corrupt_frame() {
        for i in [0usize, 20, 480, 2047] {
            let mut f = only(10, &[0, 3, 6, 9]);
            f[2][at(i)] ^= 0x40;
            let c = verify(&f, 10);
            // Frame 6 arrived damaged: 1 corrupt, 6 skipped (10 - 3 - 1).
            assert_eq!((defects(&c), c.delivered), ([6, 0, 0, 1], 3), "byte {i}");
            assert!(!Expect::Gaps.passes(&c));
            assert_eq!(defects(&Expect::Gaps.failing(&c)), [0, 0, 0, 1]);
            assert_eq!(Expect::Gaps.skipped(&c), 6);
        }
    }

    #[test]
    fn an_unchecked_index_far_ahead_is_corrupt() {
        let mut v = Verifier::new(0);
        let m = MsgInfo {
            len: 100,
            idx: u64::MAX / 2,
            send_ns: 0,
            channel: 0,
            check: Check::Unchecked,
        };
        assert_eq!(v.on_msg(&m), Verdict::Corrupt);
        assert!(v.seen.is_empty());
    }
}
