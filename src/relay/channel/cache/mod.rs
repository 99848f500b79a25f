//! The catch-up state of a channel: what a late or resynchronized receiver
//! needs to rebuild the source's current state, and the writer that keeps it.
//!
//! Readers load an immutable [`CatchUp`] snapshot through `ArcSwap` (in
//! `channel`) and never lock; only the channel's source task runs the
//! [`CacheWriter`]. The snapshot holds the latest full frame, every
//! `DeltaPixels` since it that changes a pixel (a persistent list, so
//! appending is O(1) and old snapshots stay valid; a delta that changes
//! nothing is forwarded but not cached). The signal state is kept beside it
//! ([`signal`]) and sent as one synthesized `SignalSync`.
//!
//! Bounds: the writer folds the chain into a new synthesized `Keyframe`
//! (decoding the deltas onto a copy of the frame) when the chain outweighs
//! the keyframe, or has [`MAX_CHAIN`] frames *and* weighs at least 1/16 of
//! the keyframe, or has [`MAX_CHAIN_HARD`] frames. So catch-up never costs
//! more than about two frames, memory never grows with time, and a fold (a
//! new keyframe-sized allocation) always takes at least 1/16 of a keyframe,
//! or 32,768 changing deltas, of upload: tiny deltas cannot make the relay
//! allocate a 33 MB frame every few kilobytes. The folded signal state is
//! capped by `--max-signal-state`.

use std::sync::Arc;

use bitstream_wire::codec::{self, CodecError};
use bitstream_wire::protocol::{FrameType, Header, FLAG_KEYFRAME, HEADER_LEN};
use bitstream_wire::reader::WireMessage;
use bitstream_wire::signal::SignalError;
use bitstream_wire::ws;
use bytes::Bytes;
use thiserror::Error;

use crate::relay::resources::budget::{charge_made, Budget};

mod signal;

use signal::SignalState;

/// Delta chain length from which a chain that weighs 1/16 of its keyframe is folded.
pub(crate) const MAX_CHAIN: usize = 512;

/// Delta chain length at which the chain is folded whatever it weighs.
pub(crate) const MAX_CHAIN_HARD: usize = 32_768;

/// Why a source message cannot be accepted into the channel state (it is
/// then neither cached nor forwarded).
#[derive(Debug, Error)]
pub(crate) enum CacheError {
    /// A `DeltaPixels` payload is not a valid ZRLE stream for its frame size.
    #[error("invalid delta: {0}")]
    Delta(#[from] CodecError),
    /// A signal payload is not one JSON object.
    #[error("{0}")]
    Signal(#[from] SignalError),
    /// Applying the message would grow the signal state past its limit.
    #[error("signal state would be {size} bytes, over the limit of {limit}")]
    SignalTooLarge {
        /// Size the folded state would have.
        size: usize,
        /// `--max-signal-state`.
        limit: usize,
    },
}

/// One link of the persistent delta list (newest first).
#[derive(Debug)]
pub(crate) struct DeltaNode {
    /// The delta frame as sent on the wire.
    pub(crate) frame: Bytes,
    /// The delta before it, if any.
    pub(crate) prev: Option<Arc<DeltaNode>>,
    /// Frames in the chain up to and including this one.
    pub(crate) count: usize,
    /// Payload bytes in the chain up to and including this one.
    pub(crate) bytes: usize,
}

/// An immutable snapshot of a channel's catch-up state.
///
/// The signal state is not in the snapshot: it is kept by the writer and
/// encoded lazily (see [`signal`]).
#[derive(Debug, Default)]
pub(crate) struct CatchUp {
    /// Channel sequence of the last frame this snapshot includes.
    pub(crate) seq: u64,
    /// Latest full frame (`Pixels` or `Keyframe`), encoded for the wire.
    pub(crate) keyframe: Option<Bytes>,
    /// Deltas since the keyframe, newest first.
    pub(crate) deltas: Option<Arc<DeltaNode>>,
}

impl CatchUp {
    /// The picture frames to send, in order: keyframe, deltas oldest first.
    pub(crate) fn frames(&self) -> Vec<Bytes> {
        let mut out: Vec<Bytes> = self.keyframe.iter().cloned().collect();
        out.extend(chain(&self.deltas));
        out
    }

    /// Bytes of picture a catch-up from this snapshot sends.
    pub(crate) fn size(&self) -> usize {
        self.keyframe.as_ref().map_or(0, Bytes::len) + self.deltas.as_ref().map_or(0, |d| d.bytes)
    }

    /// True if there is no picture to catch up on.
    pub(crate) fn is_empty(&self) -> bool {
        self.keyframe.is_none() && self.deltas.is_none()
    }
}

/// Keeps the catch-up state as the source's frames arrive. Owned by whichever
/// source task currently feeds the channel.
#[derive(Debug)]
pub(crate) struct CacheWriter {
    current: Arc<CatchUp>,
    signal: SignalState,
    /// Where frames this writer makes (folded keyframes, signal syncs) are
    /// charged.
    memory: Arc<Budget>,
}

impl CacheWriter {
    /// A writer with an empty state and the given signal state limit.
    pub(crate) fn new(max_signal_state: usize, memory: Arc<Budget>) -> Self {
        Self {
            current: Arc::new(CatchUp::default()),
            signal: SignalState::new(max_signal_state, memory.clone()),
            memory,
        }
    }

    /// Checks a validated source message against the state and folds it in.
    /// Returns the new snapshot when the catch-up state changed, `None` when
    /// the frame is live-only (audio, opaque types, …). On error the message
    /// must be neither cached nor forwarded.
    pub(crate) fn apply(
        &mut self,
        h: &Header,
        msg: &WireMessage,
        seq: u64,
    ) -> Result<Option<Arc<CatchUp>>, CacheError> {
        let payload = &msg.payload()[HEADER_LEN..];
        let cur = self.current.clone();
        let next = match h.frame_type() {
            FrameType::Pixels | FrameType::Keyframe => CatchUp {
                seq,
                keyframe: Some(msg.wire.clone()),
                deltas: None,
            },
            FrameType::DeltaPixels => {
                if !codec::zrle_changes(payload, h.rgba_len())? {
                    // Valid, and the picture stays as it is: nothing to cache.
                    return Ok(None);
                }
                match cur.keyframe.as_ref().map(keyframe_dims) {
                    Some(dims) if dims == (h.width, h.height) => {
                        let (count, bytes) =
                            cur.deltas.as_ref().map_or((0, 0), |d| (d.count, d.bytes));
                        let node = DeltaNode {
                            frame: msg.wire.clone(),
                            prev: cur.deltas.clone(),
                            count: count + 1,
                            bytes: bytes + msg.wire.len(),
                        };
                        let mut snap = CatchUp {
                            seq,
                            keyframe: cur.keyframe.clone(),
                            deltas: Some(Arc::new(node)),
                        };
                        let kf_len = snap.keyframe.as_ref().map_or(0, Bytes::len);
                        let (count, bytes) = (count + 1, bytes + msg.wire.len());
                        if bytes > kf_len
                            || (count >= MAX_CHAIN && bytes >= kf_len / 16)
                            || count >= MAX_CHAIN_HARD
                        {
                            snap = fold_chain(snap, h, &self.memory)?;
                        }
                        snap
                    }
                    // No frame to apply it to, or a size change without a
                    // keyframe: the relay can no longer rebuild the picture,
                    // so joiners wait for the next keyframe.
                    Some(_) | None if cur.keyframe.is_some() || cur.deltas.is_some() => CatchUp {
                        seq,
                        keyframe: None,
                        deltas: None,
                    },
                    _ => return Ok(None),
                }
            }
            t @ (FrameType::SignalSync | FrameType::SignalDiff) => {
                self.signal.apply(t == FrameType::SignalDiff, payload, h)?;
                return Ok(None);
            }
            _ => return Ok(None),
        };
        self.current = Arc::new(next);
        Ok(Some(self.current.clone()))
    }

    /// The signal state limit this writer enforces.
    pub(crate) fn max_signal_state(&self) -> usize {
        self.signal.limit()
    }

    /// The signal state as one `SignalSync` frame, if there is one.
    pub(crate) fn signal_frame(&mut self) -> Option<Bytes> {
        self.signal.sync_frame()
    }

    /// The signal state as JSON (the payload of [`CacheWriter::signal_frame`]),
    /// if there is one.
    pub(crate) fn signal_json(&mut self) -> Option<Bytes> {
        let frame = self.signal.sync_frame()?;
        let head = ws::parse_head(&frame, ws::Side::Client).ok()??;
        Some(frame.slice((head.head_len + HEADER_LEN).min(frame.len())..))
    }

    /// Bytes the cached state holds: picture frames and signal state.
    pub(crate) fn size(&self) -> usize {
        self.current.size() + self.signal.size()
    }

    /// Drops the cached state to save memory. Joiners then get no picture
    /// until the next full frame and no signal state until the next
    /// `SignalSync` (diffs alone cannot rebuild it).
    pub(crate) fn shed(&mut self) {
        self.current = Arc::new(CatchUp::default());
        self.signal.forget();
    }

    /// True if there is no state at all to catch up on.
    pub(crate) fn is_empty(&self) -> bool {
        self.current.is_empty() && self.signal.is_empty()
    }
}

/// The protocol message inside a server wire frame (empty if malformed,
/// which cannot happen for frames this module encoded).
fn message_of(wire: &Bytes) -> &[u8] {
    match ws::parse_head(wire, ws::Side::Client) {
        Ok(Some(head)) => &wire[head.head_len..],
        _ => &[],
    }
}

/// Width and height from a cached keyframe's protocol header.
fn keyframe_dims(wire: &Bytes) -> (u16, u16) {
    Header::parse(message_of(wire)).map_or((0, 0), |h| (h.width, h.height))
}

/// The delta frames of a chain, oldest first.
fn chain(deltas: &Option<Arc<DeltaNode>>) -> Vec<Bytes> {
    let mut out = Vec::with_capacity(deltas.as_ref().map_or(0, |d| d.count));
    let mut node = deltas.as_deref();
    while let Some(n) = node {
        out.push(n.frame.clone());
        node = n.prev.as_deref();
    }
    out.reverse();
    out
}

/// Replaces keyframe + deltas by one synthesized `Keyframe` of the current
/// picture, stamped with the last delta's header. The wire frame is built
/// in one buffer and the deltas applied in place: one copy of the picture.
fn fold_chain(snap: CatchUp, last: &Header, memory: &Arc<Budget>) -> Result<CatchUp, CacheError> {
    let Some(kf) = snap.keyframe.as_ref() else {
        return Ok(snap);
    };
    let pixels = message_of(kf).get(HEADER_LEN..).unwrap_or_default();
    let header = Header {
        kind: FrameType::Keyframe.to_u8(),
        flags: FLAG_KEYFRAME,
        length: pixels.len() as u32,
        ..*last
    };
    let mut head = [0u8; ws::MAX_SERVER_HEAD_LEN];
    let n = ws::server_header(ws::OP_BINARY, HEADER_LEN + pixels.len(), &mut head);
    let mut wire = Vec::with_capacity(n + HEADER_LEN + pixels.len());
    wire.extend_from_slice(&head[..n]);
    wire.extend_from_slice(&header.to_bytes());
    wire.extend_from_slice(pixels);
    for frame in chain(&snap.deltas) {
        let delta = message_of(&frame).get(HEADER_LEN..).unwrap_or_default();
        codec::apply_delta(&mut wire[n + HEADER_LEN..], delta)?;
    }
    Ok(CatchUp {
        seq: snap.seq,
        keyframe: Some(charge_made(Bytes::from(wire), memory)),
        deltas: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitstream_wire::protocol;

    pub(super) fn unlimited() -> Arc<Budget> {
        Arc::new(Budget::new(usize::MAX))
    }

    impl CacheWriter {
        fn signal_state(&self) -> &bitstream_wire::signal::State {
            self.signal.state()
        }
    }
    use bitstream_wire::protocol::{delta_pixels, pixels_keyframe};
    use serde_json::Value;

    fn wire(msg: Vec<u8>) -> (Header, WireMessage) {
        let h = protocol::validate_source_message(&msg).unwrap();
        (h, WireMessage::encode(ws::OP_BINARY, &msg))
    }

    fn payload_of(frame: &Bytes) -> Vec<u8> {
        let h = ws::parse_head(frame, ws::Side::Client).unwrap().unwrap();
        frame[h.head_len..].to_vec()
    }

    /// Rebuilds the picture a receiver would get from a catch-up.
    fn rebuild(c: &CatchUp) -> Option<Vec<u8>> {
        let mut pixels: Option<Vec<u8>> = None;
        for f in c.frames() {
            let m = payload_of(&f);
            let h = Header::parse(&m).unwrap();
            match h.frame_type() {
                FrameType::Pixels | FrameType::Keyframe => pixels = Some(m[HEADER_LEN..].to_vec()),
                FrameType::DeltaPixels => {
                    codec::apply_delta(pixels.as_mut()?, &m[HEADER_LEN..]).unwrap()
                }
                _ => {}
            }
        }
        pixels
    }

    #[test]
    fn keyframe_then_deltas_rebuild_the_current_picture() {
        let mut w = CacheWriter::new(1 << 20, unlimited());
        let (wd, ht) = (8u16, 4u16);
        let mut cur = vec![0u8; 8 * 4 * 4];
        let (h, m) = wire(pixels_keyframe(0, 0, wd, ht, &cur));
        w.apply(&h, &m, 1).unwrap();
        for i in 0..2000u64 {
            let mut next = cur.clone();
            next[(i as usize * 7) % cur.len()] ^= (i as u8) | 1;
            let mut z = Vec::new();
            codec::encode_delta(&cur, &next, &mut z).unwrap();
            let (h, m) = wire(delta_pixels(i as u16, 0, wd, ht, &z));
            let snap = w.apply(&h, &m, i + 2).unwrap().unwrap();
            cur = next;
            assert_eq!(snap.seq, i + 2);
            assert_eq!(rebuild(&snap).unwrap(), cur, "after delta {i}");
            // Bounded: never much more than two frames' worth.
            assert!(
                snap.size() < 3 * (cur.len() + 64),
                "catch-up of {} bytes",
                snap.size()
            );
        }
    }

    /// A ZRLE delta that flips one byte at `pos` of a `len`-byte frame.
    fn one_byte_delta(pos: usize, len: usize, xor: u8) -> Vec<u8> {
        fn leb(mut v: usize, out: &mut Vec<u8>) {
            while v >= 0x80 {
                out.push(v as u8 | 0x80);
                v >>= 7;
            }
            out.push(v as u8);
        }
        let mut z = Vec::new();
        leb(pos, &mut z);
        leb(1, &mut z);
        z.push(xor);
        if pos + 1 < len {
            leb(len - pos - 1, &mut z);
            leb(0, &mut z);
        }
        z
    }

    #[test]
    fn deltas_that_change_nothing_are_not_cached() {
        let mut w = CacheWriter::new(1 << 20, unlimited());
        let (h, m) = wire(pixels_keyframe(0, 0, 64, 64, &[3u8; 64 * 64 * 4]));
        let kf = w
            .apply(&h, &m, 1)
            .unwrap()
            .unwrap()
            .keyframe
            .clone()
            .unwrap();
        for i in 0..5000u64 {
            let (h, m) = wire(delta_pixels(
                i as u16,
                0,
                64,
                64,
                &one_byte_delta(9, 64 * 64 * 4, 0),
            ));
            assert!(w.apply(&h, &m, i + 2).unwrap().is_none());
        }
        assert_eq!(w.current.keyframe.as_ref().unwrap().as_ptr(), kf.as_ptr());
        assert!(w.current.deltas.is_none());
    }

    #[test]
    fn tiny_deltas_do_not_fold_a_big_keyframe_every_512() {
        let mut w = CacheWriter::new(1 << 20, unlimited());
        let len = 512 * 512 * 4;
        let (h, m) = wire(pixels_keyframe(0, 0, 512, 512, &vec![0u8; len]));
        let kf = w
            .apply(&h, &m, 1)
            .unwrap()
            .unwrap()
            .keyframe
            .clone()
            .unwrap();
        // 2000 deltas of a few bytes weigh far less than 1/16 of 1 MiB.
        for i in 0..2000u64 {
            let z = one_byte_delta(i as usize * 4, len, 0xFF);
            let (h, m) = wire(delta_pixels(i as u16, 0, 512, 512, &z));
            w.apply(&h, &m, i + 2).unwrap();
        }
        assert_eq!(
            w.current.keyframe.as_ref().unwrap().as_ptr(),
            kf.as_ptr(),
            "not folded"
        );
        assert_eq!(w.current.deltas.as_ref().unwrap().count, 2000);
        let mut picture = vec![0u8; len];
        for i in 0..2000 {
            picture[i * 4] = 0xFF;
        }
        assert_eq!(rebuild(&w.current).unwrap(), picture);
    }

    #[test]
    fn delta_without_matching_keyframe_resets_pixels() {
        let mut w = CacheWriter::new(1 << 20, unlimited());
        let (h, m) = wire(pixels_keyframe(0, 0, 2, 2, &[1u8; 16]));
        w.apply(&h, &m, 1).unwrap();
        let mut z = Vec::new();
        codec::encode_delta(&[0u8; 36], &[1u8; 36], &mut z).unwrap();
        let (h, m) = wire(delta_pixels(1, 0, 3, 3, &z));
        let snap = w.apply(&h, &m, 2).unwrap().unwrap();
        assert!(snap.keyframe.is_none() && snap.deltas.is_none());
        // A delta with nothing cached is live-only.
        assert!(w.apply(&h, &m, 3).unwrap().is_none());
    }

    #[test]
    fn invalid_delta_is_refused() {
        let mut w = CacheWriter::new(1 << 20, unlimited());
        let (h, m) = wire(delta_pixels(1, 0, 2, 2, &[0x05]));
        assert!(matches!(w.apply(&h, &m, 1), Err(CacheError::Delta(_))));
    }

    #[test]
    fn signal_folds_sync_and_diffs() {
        let mut w = CacheWriter::new(1 << 20, unlimited());
        let (h, m) = wire(protocol::signal(false, 0, 0, br#"{"a":1,"b":2}"#));
        w.apply(&h, &m, 1).unwrap();
        for i in 0..2000 {
            let (h, m) = wire(protocol::signal(
                true,
                i as u16,
                0,
                format!(r#"{{"k{}":{i},"b":null}}"#, i % 50).as_bytes(),
            ));
            w.apply(&h, &m, 2 + i).unwrap();
        }
        assert!(w.current.frames().is_empty(), "no picture");
        let m = payload_of(&w.signal_frame().unwrap());
        assert_eq!(m[0], FrameType::SignalSync.to_u8());
        let state: Value = serde_json::from_slice(&m[HEADER_LEN..]).unwrap();
        assert_eq!(state["a"], 1);
        assert!(state.get("b").is_none());
        assert_eq!(state["k49"], 1999);
        assert_eq!(state.as_object().unwrap().len(), 51);
    }

    proptest::proptest! {
        /// Arbitrary signal and delta payloads never panic the fold; the
        /// state stays within its limit.
        #[test]
        fn arbitrary_payloads_never_panic(payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200), kind in 0usize..3) {
            let mut w = CacheWriter::new(64, unlimited());
            let (h, m) = wire(pixels_keyframe(0, 0, 2, 2, &[0u8; 16]));
            w.apply(&h, &m, 1).unwrap();
            let msg = match kind {
                0 => protocol::signal(false, 0, 0, &payload),
                1 => protocol::signal(true, 0, 0, &payload),
                _ => delta_pixels(0, 0, 2, 2, &payload),
            };
            let (h, m) = wire(msg);
            let _ = w.apply(&h, &m, 2);
            proptest::prop_assert!(serde_json::to_vec(w.signal_state()).unwrap().len() <= 64);
        }
    }

    #[test]
    fn signal_limits_and_errors_leave_state_unchanged() {
        let mut w = CacheWriter::new(32, unlimited());
        let (h, m) = wire(protocol::signal(false, 0, 0, br#"{"a":1}"#));
        w.apply(&h, &m, 1).unwrap();
        let (h, m) = wire(protocol::signal(
            true,
            0,
            0,
            br#"{"a":null,"big":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#,
        ));
        assert!(matches!(
            w.apply(&h, &m, 2),
            Err(CacheError::SignalTooLarge { .. })
        ));
        let (h, m) = wire(protocol::signal(
            false,
            0,
            0,
            br#"{"zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz":1}"#,
        ));
        assert!(w.apply(&h, &m, 3).is_err());
        // Too large is found before parsing: these bytes are not JSON.
        let (h, m) = wire(protocol::signal(false, 0, 0, &[b'x'; 33]));
        assert!(matches!(
            w.apply(&h, &m, 3),
            Err(CacheError::SignalTooLarge { .. })
        ));
        let (h, m) = wire(protocol::signal(true, 0, 0, b"[1]"));
        assert!(matches!(
            w.apply(&h, &m, 4),
            Err(CacheError::Signal(SignalError::NotObject))
        ));
        let (h, m) = wire(protocol::signal(true, 0, 0, b"{nope"));
        assert!(matches!(
            w.apply(&h, &m, 5),
            Err(CacheError::Signal(SignalError::Json(_)))
        ));
        assert_eq!(
            Value::Object(w.signal_state().clone()),
            serde_json::json!({"a": 1})
        );
    }
}
