//! One picture from two paths: the relay's WebSocket (reliable, in order)
//! and a direct DataChannel from the source (faster, but it loses and
//! reorders). The receiver draws whichever copy of a frame comes first and
//! never applies a frame on the wrong base (`docs/webrtc.md`, "Recovery").
//!
//! The rule, per pixel frame (`Pixels`/`Keyframe`/`DeltaPixels`):
//!
//! - **direct**: a keyframe applies if it is newer than the picture (or
//!   there is none); a delta applies only if its piece head's `base` is the
//!   seq of the picture as it stands, so a lost or late frame before it
//!   stops the direct path until the chain meets again. Anything else is
//!   dropped: it can never draw a wrong picture.
//! - **relay**: applies as it always did, except that while the direct
//!   path is ahead (the last frame applied came directly), a frame that is
//!   not newer than the picture is the relay's copy of one already drawn
//!   and is skipped. Once a relay frame applies, the relay leads again.
//!
//! So a loss on the direct path costs latency, never correctness: the
//! relay's copy of the missing frame arrives anyway and the picture goes on
//! from it, and the direct path joins in again at the next frame whose
//! base is the picture. Without a direct path the relay rule is exactly
//! the old one.

/// Whether picture seq `a` is after `b` (serial-number order over u16:
/// less than half the space ahead).
pub fn seq_after(a: u16, b: u16) -> bool {
    let d = a.wrapping_sub(b);
    d != 0 && d < 0x8000
}

/// A pixel frame offered to the merge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offered {
    /// Its header seq.
    pub seq: u16,
    /// Whether it is a self-contained frame (`Pixels` with `KEYFRAME`, or `Keyframe`).
    pub keyframe: bool,
}

/// The merge state of one receiver's picture. See the module docs.
#[derive(Debug, Clone, Default)]
pub struct PathMerge {
    /// Seq of the picture as it stands, `None` without one.
    picture: Option<u16>,
    /// The last frame applied came over the direct path.
    direct_lead: bool,
}

impl PathMerge {
    /// No picture yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The seq of the picture as it stands.
    pub fn picture(&self) -> Option<u16> {
        self.picture
    }

    /// Whether the direct path delivered the last applied frame.
    pub fn direct_lead(&self) -> bool {
        self.direct_lead
    }

    /// The picture is gone (a catch-up, a new stream, a broken chain):
    /// only a keyframe starts it again, from either path.
    pub fn reset(&mut self) {
        self.picture = None;
        self.direct_lead = false;
    }

    /// A frame came over the relay: whether to apply it. The caller applies
    /// it as before (and calls [`PathMerge::reset`] if that fails).
    pub fn from_relay(&mut self, f: Offered) -> bool {
        if self.direct_lead && self.picture.is_some_and(|p| !seq_after(f.seq, p)) {
            return false;
        }
        self.picture = Some(f.seq);
        self.direct_lead = false;
        true
    }

    /// A whole frame came over the direct path with the piece head's
    /// `base`: whether to apply it.
    pub fn from_direct(&mut self, f: Offered, base: Option<u16>) -> bool {
        let applies = if f.keyframe {
            self.picture.is_none_or(|p| seq_after(f.seq, p))
        } else {
            matches!((self.picture, base), (Some(p), Some(b)) if p == b && seq_after(f.seq, b))
        };
        if applies {
            self.picture = Some(f.seq);
            self.direct_lead = true;
        }
        applies
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(seq: u16) -> Offered {
        Offered {
            seq,
            keyframe: true,
        }
    }
    fn delta(seq: u16) -> Offered {
        Offered {
            seq,
            keyframe: false,
        }
    }

    #[test]
    fn relay_alone_applies_everything_as_before() {
        let mut m = PathMerge::new();
        assert!(m.from_relay(key(5)));
        assert!(m.from_relay(delta(6)));
        // A new source numbering from 0 again: still applied.
        assert!(m.from_relay(key(0)));
        assert!(m.from_relay(delta(1)));
    }

    #[test]
    fn the_relay_copy_of_a_direct_frame_is_skipped() {
        let mut m = PathMerge::new();
        assert!(m.from_relay(key(10)));
        assert!(m.from_direct(delta(11), Some(10)));
        assert!(m.from_direct(delta(12), Some(11)));
        assert!(!m.from_relay(delta(11)));
        assert!(!m.from_relay(delta(12)));
        assert!(m.from_relay(delta(13)));
        assert!(!m.direct_lead());
        // The direct copy of 13 does not apply on 13.
        assert!(!m.from_direct(delta(13), Some(12)));
    }

    #[test]
    fn a_direct_gap_waits_for_the_relay_then_rejoins() {
        let mut m = PathMerge::new();
        assert!(m.from_direct(key(1), None));
        // 2 lost on the direct path; 3 does not apply on 1.
        assert!(!m.from_direct(delta(3), Some(2)));
        assert!(!m.from_relay(key(1)));
        assert!(m.from_relay(delta(2)));
        assert!(!m.from_direct(delta(4), Some(3)));
        assert!(m.from_relay(delta(3)));
        assert!(m.from_direct(delta(4), Some(3)));
    }

    #[test]
    fn deltas_need_a_picture_and_old_keyframes_do_not_go_back() {
        let mut m = PathMerge::new();
        assert!(!m.from_direct(delta(1), Some(0)));
        assert!(!m.from_direct(delta(1), None));
        assert!(m.from_direct(key(8), None));
        assert!(!m.from_direct(key(7), None));
        assert!(!m.from_direct(key(8), None));
        m.reset();
        assert!(m.from_direct(key(7), None));
    }

    #[test]
    fn order_wraps_around_u16() {
        assert!(seq_after(0, 65_535));
        assert!(!seq_after(65_535, 0));
        let mut m = PathMerge::new();
        assert!(m.from_direct(key(65_535), None));
        assert!(m.from_direct(delta(0), Some(65_535)));
    }

    proptest! {
        /// A source's frames 0..n (keyframe every k) go over both paths;
        /// the direct path loses and reorders any of them, the relay
        /// delivers all in order, the two interleave arbitrarily. The frames
        /// applied, in order, are always a chain: each delta applies on the
        /// frame before it, and the last relay frame leaves the picture at
        /// the source's last frame.
        #[test]
        fn any_interleaving_applies_a_chain(
            n in 1u16..80,
            k in 1u16..20,
            first in any::<u16>(),
            direct in proptest::collection::vec((any::<bool>(), any::<u8>()), 0..80),
            turns in proptest::collection::vec(any::<bool>(), 0..200),
        ) {
            let seq = |i: u16| first.wrapping_add(i);
            let is_key = |i: u16| i.is_multiple_of(k);
            let mut direct_q: Vec<(u8, u16)> = (0..n)
                .filter(|i| direct.get(usize::from(*i)).is_none_or(|d| d.0))
                .map(|i| (direct.get(usize::from(i)).map_or(0, |d| d.1 / 32), i))
                .collect();
            direct_q.sort_by_key(|(delay, i)| (u32::from(*i) + u32::from(*delay) * 3, *i));
            let mut relay_q: std::collections::VecDeque<u16> = (0..n).collect();
            let mut direct_q: std::collections::VecDeque<u16> =
                direct_q.into_iter().map(|(_, i)| i).collect();
            let mut m = PathMerge::new();
            let mut applied: Vec<u16> = Vec::new();
            let mut t = 0;
            while !relay_q.is_empty() || !direct_q.is_empty() {
                let take_direct = turns.get(t).copied().unwrap_or(t % 2 == 0);
                t += 1;
                let (i, ok) = if (take_direct && !direct_q.is_empty()) || relay_q.is_empty() {
                    let i = direct_q.pop_front().unwrap_or(0);
                    let base = (!is_key(i)).then(|| seq(i.wrapping_sub(1)));
                    (i, m.from_direct(Offered { seq: seq(i), keyframe: is_key(i) }, base))
                } else {
                    let i = relay_q.pop_front().unwrap_or(0);
                    // The relay path's own rule for a delta: there must be a picture.
                    (i, m.from_relay(Offered { seq: seq(i), keyframe: is_key(i) }))
                };
                if ok {
                    if !is_key(i) {
                        prop_assert_eq!(applied.last().copied(), Some(i - 1), "delta {} on the wrong base", i);
                    }
                    applied.push(i);
                }
            }
            prop_assert_eq!(applied.last().copied(), Some(n - 1));
            prop_assert_eq!(m.picture(), Some(seq(n - 1)));
        }
    }
}
