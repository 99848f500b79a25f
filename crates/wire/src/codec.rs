//! ZRLE delta codec for `DeltaPixels` payloads (PROTOCOL.md, "ZRLE: the delta payload").
//!
//! A delta payload is the XOR of the previous and the current frame, run-length
//! coded as a sequence of tokens until the decoded length reaches the frame length:
//!
//! ```text
//! token := zeros:varint  literals:varint  literal_bytes[literals]
//! ```
//!
//! `varint` is unsigned LEB128 (at most 10 bytes for a `u64`). A token stands for
//! `zeros` zero bytes followed by its `literals` literal bytes; either count may be 0.
//!
//! Everything here is a pure function over byte slices: no I/O, no `unsafe`.
//!
//! # Decoder rules
//!
//! * A token that would run past the frame is rejected ([`CodecError::FrameOverrun`]).
//! * A payload that ends inside a varint ([`CodecError::TruncatedVarint`]), inside a
//!   token's literal bytes ([`CodecError::TruncatedLiterals`]) or between tokens before
//!   the frame is complete ([`CodecError::Incomplete`]) is rejected.
//! * Decoding stops as soon as the frame is complete; any byte left over is rejected
//!   ([`CodecError::TrailingBytes`]). This includes `00 00` tokens after completion, so
//!   a decoder never spins on them. Before completion a `00 00` token is legal (it is a
//!   no-op, but it consumes two input bytes, so decoding always terminates).
//! * A zero-length frame is complete before the first token: its only valid payload is
//!   the empty one, and a non-empty payload is [`CodecError::TrailingBytes`].
//!
//! # Encoder
//!
//! The encoder emits tokens greedily. A zero run shorter than `MIN_ZERO_RUN` bytes
//! between changed bytes stays inside the literal bytes (a new token would cost 2 bytes
//! or more, and many short tokens slow the decoder down); a literal run is cut into
//! tokens of at most `MAX_LITERAL_RUN` bytes so the encoder works on cache-sized
//! pieces. Literal bytes never start or end with a zero byte. An unchanged frame encodes to a single token `zeros = len, literals = 0`
//! (at most 11 bytes, 4 bytes for a 640x360 RGBA frame); a zero-length frame encodes
//! to the empty payload. Encoder output always uses minimal-length varints.
//!
//! Unchanged regions are skipped by comparing blocks, then the first changed byte is
//! located a 64-bit word at a time (`trailing_zeros` of the little-endian XOR word).
//! Inside a literal run the encoder builds a 64-bit mask of the zero bytes of each
//! 64-byte block (8 words, a SWAR zero-byte test each) and finds runs of
//! `MIN_ZERO_RUN` zeros with shifts and `trailing_zeros` / `leading_zeros`.

use thiserror::Error;

/// Zero runs of at least this many bytes between changed bytes end a literal run
/// (shorter runs are kept as literal bytes). Between 2 and 64.
///
/// Chosen by measurement on 640x360 RGBA deltas: against 16, 8 makes text-like and
/// sprite-like deltas 3-25% smaller at a small decode cost; 5 saves another 8-9% but
/// doubles the token count, halving decode and encode speed on a 10%-changed frame.
pub(crate) const MIN_ZERO_RUN: usize = 8;

/// The encoder splits literal runs into tokens of at most this many literal bytes
/// (about 3 bytes of overhead per 16 KiB).
pub(crate) const MAX_LITERAL_RUN: usize = 16 * 1024;

const _: () = assert!(MIN_ZERO_RUN >= 2 && MIN_ZERO_RUN <= 64 && MAX_LITERAL_RUN > 0);

/// Errors from the ZRLE codec and the LEB128 helpers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum CodecError {
    /// Buffers that must have the same length do not.
    #[error("length mismatch: expected {expected} bytes, got {actual}")]
    LengthMismatch {
        /// The required length (the first buffer's length).
        expected: usize,
        /// The length actually given.
        actual: usize,
    },
    /// The input ends inside a varint (including an empty input).
    #[error("truncated varint")]
    TruncatedVarint,
    /// A varint is longer than 10 bytes or its value does not fit in a `u64`.
    #[error("varint overflows u64")]
    VarintOverflow,
    /// A token's zero or literal count runs past the end of the frame.
    #[error("token at payload offset {offset} overruns the frame: {count} more bytes at frame offset {position} of {frame_len}")]
    FrameOverrun {
        /// Payload offset of the token.
        offset: usize,
        /// Frame offset where the offending run starts.
        position: usize,
        /// The offending zero or literal count.
        count: u64,
        /// The frame length.
        frame_len: usize,
    },
    /// The payload ends inside a token: some of its literal bytes are missing.
    #[error("payload ends inside a token: {needed} literal bytes needed, {available} left")]
    TruncatedLiterals {
        /// Literal bytes the token announces.
        needed: usize,
        /// Payload bytes actually left.
        available: usize,
    },
    /// The payload ends between two tokens before the frame is complete.
    #[error("payload ends after {decoded} of {frame_len} frame bytes")]
    Incomplete {
        /// Frame bytes decoded when the payload ran out.
        decoded: usize,
        /// The frame length.
        frame_len: usize,
    },
    /// Bytes are left over after the frame is complete (for a zero-length frame: any byte).
    #[error("{extra} trailing bytes after the frame is complete")]
    TrailingBytes {
        /// Number of bytes left over.
        extra: usize,
    },
}

// ---------------------------------------------------------------------------
// LEB128
// ---------------------------------------------------------------------------

/// Append `v` to `out` as an unsigned LEB128 varint (minimal length, 1 to 10 bytes).
#[inline]
pub(crate) fn write_varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Read an unsigned LEB128 varint from the start of `buf`; returns `(value, bytes consumed)`.
///
/// Non-minimal encodings (e.g. `80 00`) are accepted. Errors: [`CodecError::TruncatedVarint`]
/// if `buf` ends before the last byte (high bit clear), [`CodecError::VarintOverflow`] if the
/// varint is longer than 10 bytes or its value exceeds `u64::MAX`.
#[inline]
pub(crate) fn read_varint(buf: &[u8]) -> Result<(u64, usize), CodecError> {
    match buf.first() {
        Some(&b) if b < 0x80 => Ok((u64::from(b), 1)),
        _ => read_varint_slow(buf),
    }
}

#[cold]
fn read_varint_slow(buf: &[u8]) -> Result<(u64, usize), CodecError> {
    let mut v = 0u64;
    for (k, &b) in buf.iter().take(10).enumerate() {
        // 9 bytes carry 63 bits: the 10th may only contribute bit 63 and must be the last.
        if k == 9 && b > 1 {
            return Err(CodecError::VarintOverflow);
        }
        v |= u64::from(b & 0x7f) << (7 * k);
        if b < 0x80 {
            return Ok((v, k + 1));
        }
    }
    Err(CodecError::TruncatedVarint)
}

// ---------------------------------------------------------------------------
// XOR
// ---------------------------------------------------------------------------

/// XOR `prev` and `cur` into `out` (all the same length).
///
/// Errors with [`CodecError::LengthMismatch`] (`expected` = `prev.len()`) if `cur` or `out`
/// has another length; `out` is then left untouched.
pub fn xor_into(prev: &[u8], cur: &[u8], out: &mut [u8]) -> Result<(), CodecError> {
    check_len(prev.len(), cur.len())?;
    check_len(prev.len(), out.len())?;
    for ((o, a), b) in out.iter_mut().zip(prev).zip(cur) {
        *o = a ^ b;
    }
    Ok(())
}

#[inline]
fn check_len(expected: usize, actual: usize) -> Result<(), CodecError> {
    if expected == actual {
        Ok(())
    } else {
        Err(CodecError::LengthMismatch { expected, actual })
    }
}

// ---------------------------------------------------------------------------
// Encoder
// ---------------------------------------------------------------------------

/// Bytes the zero scan skips per step once a region is known to be unchanged.
const SKIP_BLOCK: usize = 256;

/// The XOR data being encoded: either an XORed buffer or a (prev, cur) pair XORed on the fly.
trait XorSource {
    fn len(&self) -> usize;
    /// The little-endian XOR word at byte offset `i` (`i + 8 <= len`).
    fn word(&self, i: usize) -> u64;
    /// The XOR byte at offset `i`.
    fn byte(&self, i: usize) -> u8;
    /// The 8 little-endian XOR words at byte offset `i` (`i + 64 <= len`).
    fn words8(&self, i: usize) -> [u64; 8];
    /// Whether the `SKIP_BLOCK` XOR bytes at `i` are all zero (`i + SKIP_BLOCK <= len`).
    fn block_is_zero(&self, i: usize) -> bool;
    /// Append XOR bytes `start..end` to `out`.
    fn extend_xor(&self, start: usize, end: usize, out: &mut Vec<u8>);
}

#[inline(always)]
fn le_word(b: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[..8]);
    u64::from_le_bytes(w)
}

struct Xored<'a>(&'a [u8]);

impl XorSource for Xored<'_> {
    #[inline(always)]
    fn len(&self) -> usize {
        self.0.len()
    }
    #[inline(always)]
    fn word(&self, i: usize) -> u64 {
        le_word(&self.0[i..i + 8])
    }
    #[inline(always)]
    fn byte(&self, i: usize) -> u8 {
        self.0[i]
    }
    #[inline(always)]
    fn words8(&self, i: usize) -> [u64; 8] {
        let x = &self.0[i..i + 64];
        let mut ws = [0u64; 8];
        for (w, c) in ws.iter_mut().zip(x.chunks_exact(8)) {
            *w = le_word(c);
        }
        ws
    }
    #[inline(always)]
    fn block_is_zero(&self, i: usize) -> bool {
        let x = &self.0[i..i + SKIP_BLOCK];
        let mut acc = 0u64;
        for c in x.chunks_exact(8) {
            acc |= le_word(c);
        }
        acc == 0
    }
    #[inline(always)]
    fn extend_xor(&self, start: usize, end: usize, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.0[start..end]);
    }
}

struct Pair<'a> {
    prev: &'a [u8],
    cur: &'a [u8],
}

impl XorSource for Pair<'_> {
    #[inline(always)]
    fn len(&self) -> usize {
        self.prev.len()
    }
    #[inline(always)]
    fn word(&self, i: usize) -> u64 {
        le_word(&self.prev[i..i + 8]) ^ le_word(&self.cur[i..i + 8])
    }
    #[inline(always)]
    fn byte(&self, i: usize) -> u8 {
        self.prev[i] ^ self.cur[i]
    }
    #[inline(always)]
    fn words8(&self, i: usize) -> [u64; 8] {
        let a = &self.prev[i..i + 64];
        let b = &self.cur[i..i + 64];
        let mut ws = [0u64; 8];
        for (w, (ca, cb)) in ws.iter_mut().zip(a.chunks_exact(8).zip(b.chunks_exact(8))) {
            *w = le_word(ca) ^ le_word(cb);
        }
        ws
    }
    #[inline(always)]
    fn block_is_zero(&self, i: usize) -> bool {
        self.prev[i..i + SKIP_BLOCK] == self.cur[i..i + SKIP_BLOCK]
    }
    #[inline(always)]
    fn extend_xor(&self, start: usize, end: usize, out: &mut Vec<u8>) {
        let a = &self.prev[start..end];
        let b = &self.cur[start..end];
        out.extend(a.iter().zip(b).map(|(x, y)| x ^ y));
    }
}

/// Offset of the first nonzero XOR byte at or after `p`, or `s.len()` if there is none.
#[inline(always)]
fn find_nonzero<S: XorSource>(s: &S, p: usize) -> usize {
    let n = s.len();
    let mut i = p;
    // Zero runs between changes are often short: look at a few words before skipping blocks.
    let near = n.min(p.saturating_add(64));
    while i + 8 <= near {
        let w = s.word(i);
        if w != 0 {
            return i + (w.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i + SKIP_BLOCK <= n && s.block_is_zero(i) {
        i += SKIP_BLOCK;
    }
    while i + 8 <= n {
        let w = s.word(i);
        if w != 0 {
            return i + (w.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < n {
        if s.byte(i) != 0 {
            return i;
        }
        i += 1;
    }
    n
}

/// Bit `k` set iff byte `k` (in memory order) of the little-endian word `w` is zero.
#[inline(always)]
fn zero_bytes(w: u64) -> u64 {
    const LO7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    // 0x80 in exactly the zero bytes: adding 0x7f to the low 7 bits sets bit 7 of every byte
    // whose low bits are nonzero, without carrying into the next byte.
    let hi = !(((w & LO7).wrapping_add(LO7)) | w | LO7);
    // Gather bit 7 of each byte into the top byte (the partial products cannot collide
    // or carry into it), then shift down.
    (hi >> 7).wrapping_mul(0x0102_0408_1020_4080) >> 56
}

/// Bit `k` set iff bits `k..k + MIN_ZERO_RUN` of `z` are all set (bits past 63 count as clear).
#[inline(always)]
fn run_starts(z: u64) -> u64 {
    let mut s = z;
    let mut len = 1;
    while len * 2 <= MIN_ZERO_RUN {
        s &= s >> len;
        len *= 2;
    }
    if len < MIN_ZERO_RUN {
        s &= s >> (MIN_ZERO_RUN - len);
    }
    s
}

/// Scan the 64 bytes at `i` whose zero bytes are the set bits of `z`, with `run` zero bytes
/// just before them (since the last nonzero byte). Returns the start of the first zero run
/// of at least `MIN_ZERO_RUN` bytes (counting `run`), or updates `run` for the next block.
#[inline(always)]
fn scan_block(z: u64, i: usize, run: &mut usize) -> Option<usize> {
    if z == !0 {
        *run += 64;
        return (*run >= MIN_ZERO_RUN).then(|| i + 64 - *run);
    }
    let head = (!z).trailing_zeros() as usize;
    if *run + head >= MIN_ZERO_RUN {
        return Some(i - *run);
    }
    // Runs that start after the first nonzero byte (`head < 64` here). The lowest such
    // bit is preceded by a nonzero byte, so it is where a run starts.
    let starts = run_starts(z) & (!0u64 << head);
    if starts != 0 {
        return Some(i + starts.trailing_zeros() as usize);
    }
    *run = (!z).leading_zeros() as usize;
    None
}

/// End of the literal run that starts at the nonzero byte `q`: the start of the first
/// zero run of at least `MIN_ZERO_RUN` bytes, or `limit` minus the zero bytes just before
/// it. Always `> q`.
#[inline(always)]
fn find_literal_end<S: XorSource>(s: &S, q: usize, limit: usize) -> usize {
    let mut i = q;
    // Zero bytes since the last nonzero byte.
    let mut run = 0usize;
    while i + 64 <= limit {
        let ws = s.words8(i);
        let mut z = 0u64;
        for (k, &w) in ws.iter().enumerate() {
            z |= zero_bytes(w) << (8 * k);
        }
        if z == 0 {
            run = 0;
        } else if let Some(end) = scan_block(z, i, &mut run) {
            return end;
        }
        i += 64;
    }
    if i == limit {
        return limit - run;
    }
    // Tail of 1..=63 bytes, scanned as a block padded with zero bytes. A run that reaches
    // the padding ends at `limit` either way, so the padding cannot change the result.
    let mut z = 0u64;
    let mut k = 0usize;
    while i + k + 8 <= limit {
        z |= zero_bytes(s.word(i + k)) << k;
        k += 8;
    }
    while i + k < limit {
        z |= u64::from(s.byte(i + k) == 0) << k;
        k += 1;
    }
    let pad = 64 - k;
    z |= !0u64 << k;
    match scan_block(z, i, &mut run) {
        Some(end) => end,
        None => limit - (run - pad),
    }
}

#[inline(always)]
fn encode_core<S: XorSource>(s: &S, out: &mut Vec<u8>) {
    let n = s.len();
    let mut p = 0;
    while p < n {
        let q = find_nonzero(s, p);
        if q == n {
            write_varint((n - p) as u64, out);
            out.push(0);
            return;
        }
        let limit = n.min(q.saturating_add(MAX_LITERAL_RUN));
        let e = find_literal_end(s, q, limit);
        write_varint((q - p) as u64, out);
        write_varint((e - q) as u64, out);
        s.extend_xor(q, e, out);
        p = e;
    }
}

/// ZRLE-encode the XOR of `prev` and `cur` (same length), appending to `out`.
///
/// The XOR is computed on the fly; no intermediate buffer is used. The output is identical
/// to `zrle_encode` of the XORed buffer. Errors with [`CodecError::LengthMismatch`]
/// (`out` untouched) if the lengths differ.
pub fn encode_delta(prev: &[u8], cur: &[u8], out: &mut Vec<u8>) -> Result<(), CodecError> {
    check_len(prev.len(), cur.len())?;
    encode_core(&Pair { prev, cur }, out);
    Ok(())
}

/// ZRLE-encode an already-XORed buffer, appending to `out`.
///
/// An all-zero buffer encodes to one token; an empty buffer to nothing.
pub fn zrle_encode(xored: &[u8], out: &mut Vec<u8>) {
    encode_core(&Xored(xored), out);
}

// ---------------------------------------------------------------------------
// Decoder
// ---------------------------------------------------------------------------

/// Walk the tokens of `payload` for a frame of `frame_len` bytes, checking every rule,
/// and call `f(position, zeros, literals)` for each token (`position` = frame offset of the
/// token's zero run; its literals follow the zeros). Calls made before an error are not
/// undone.
#[inline(always)]
fn walk_tokens(
    payload: &[u8],
    frame_len: usize,
    mut f: impl FnMut(usize, usize, &[u8]),
) -> Result<(), CodecError> {
    let mut pos = 0usize;
    let mut i = 0usize;
    while pos < frame_len {
        if i == payload.len() {
            return Err(CodecError::Incomplete {
                decoded: pos,
                frame_len,
            });
        }
        let offset = i;
        let room = frame_len - pos;
        let (zeros, c) = read_varint(&payload[i..])?;
        i += c;
        if zeros > room as u64 {
            return Err(CodecError::FrameOverrun {
                offset,
                position: pos,
                count: zeros,
                frame_len,
            });
        }
        let zeros = zeros as usize;
        let (lits, c) = read_varint(&payload[i..])?;
        i += c;
        if lits > (room - zeros) as u64 {
            return Err(CodecError::FrameOverrun {
                offset,
                position: pos + zeros,
                count: lits,
                frame_len,
            });
        }
        let lits = lits as usize;
        let rest = &payload[i..];
        if rest.len() < lits {
            return Err(CodecError::TruncatedLiterals {
                needed: lits,
                available: rest.len(),
            });
        }
        f(pos, zeros, &rest[..lits]);
        i += lits;
        pos += zeros + lits;
    }
    if i != payload.len() {
        return Err(CodecError::TrailingBytes {
            extra: payload.len() - i,
        });
    }
    Ok(())
}

/// Check that `payload` is a valid ZRLE payload for a frame of exactly `frame_len` bytes,
/// without producing output.
///
/// Costs one pass over the token headers (literal bytes are skipped, not read), so it is
/// cheap enough for the relay to validate every `DeltaPixels` it forwards. Returns `Ok`
/// exactly when [`zrle_decode`] and [`apply_delta`] (on a `frame_len`-byte frame) succeed,
/// with the same error otherwise.
pub fn zrle_validate(payload: &[u8], frame_len: usize) -> Result<(), CodecError> {
    walk_tokens(payload, frame_len, |_, _, _| {})
}

/// Like [`zrle_validate`], and tells whether the delta changes anything:
/// false when every XOR byte it carries is zero (reads the literals).
pub fn zrle_changes(payload: &[u8], frame_len: usize) -> Result<bool, CodecError> {
    let mut changes = false;
    walk_tokens(payload, frame_len, |_, _, lits| {
        changes |= lits.iter().any(|&b| b != 0);
    })?;
    Ok(changes)
}

/// Decode a ZRLE payload into exactly `frame_len` bytes of XOR data.
///
/// The payload is validated before anything is allocated, so an invalid payload never
/// causes a `frame_len`-sized allocation.
pub fn zrle_decode(payload: &[u8], frame_len: usize) -> Result<Vec<u8>, CodecError> {
    zrle_validate(payload, frame_len)?;
    let mut out = Vec::with_capacity(frame_len);
    walk_tokens(payload, frame_len, |_, zeros, lits| {
        out.resize(out.len() + zeros, 0);
        out.extend_from_slice(lits);
    })?;
    debug_assert_eq!(out.len(), frame_len);
    Ok(out)
}

/// Apply a ZRLE delta to `frame` in place: `frame[i] ^= xor[i]`, where `xor` is the decoded
/// payload for a frame of `frame.len()` bytes.
///
/// Zero runs are skipped; literal bytes are XORed in. The payload is fully validated
/// (same rules and errors as [`zrle_validate`]) *before* `frame` is touched, so on error
/// `frame` is left unmodified.
pub fn apply_delta(frame: &mut [u8], payload: &[u8]) -> Result<(), CodecError> {
    zrle_validate(payload, frame.len())?;
    walk_tokens(payload, frame.len(), |pos, zeros, lits| {
        let start = pos + zeros;
        let dst = &mut frame[start..start + lits.len()];
        for (d, l) in dst.iter_mut().zip(lits) {
            *d ^= l;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn enc(prev: &[u8], cur: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_delta(prev, cur, &mut out).unwrap();
        out
    }

    fn xor(a: &[u8], b: &[u8]) -> Vec<u8> {
        let mut out = vec![0; a.len()];
        xor_into(a, b, &mut out).unwrap();
        out
    }

    /// Parse a valid payload into its (zeros, literals) token counts.
    fn tokens(payload: &[u8], frame_len: usize) -> Vec<(usize, usize)> {
        let mut t = Vec::new();
        walk_tokens(payload, frame_len, |_, z, l| t.push((z, l.len()))).unwrap();
        t
    }

    fn varint(v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        write_varint(v, &mut out);
        out
    }

    // ----- varints -----

    #[test]
    fn varint_round_trip_and_lengths() {
        let cases: &[(u64, usize)] = &[
            (0, 1),
            (1, 1),
            (127, 1),
            (128, 2),
            (16_383, 2),
            (16_384, 3),
            (921_600, 3),
            (u32::MAX as u64, 5),
            ((1 << 63) - 1, 9),
            (1 << 63, 10),
            (u64::MAX, 10),
        ];
        for &(v, len) in cases {
            let b = varint(v);
            assert_eq!(b.len(), len, "length of {v}");
            assert_eq!(read_varint(&b), Ok((v, len)));
            // Bytes after the varint are not consumed.
            let mut longer = b.clone();
            longer.extend_from_slice(&[0xff, 0x00]);
            assert_eq!(read_varint(&longer), Ok((v, len)));
        }
        assert_eq!(varint(300), [0xac, 0x02]);
    }

    #[test]
    fn varint_non_minimal_accepted() {
        assert_eq!(read_varint(&[0x80, 0x00]), Ok((0, 2)));
        assert_eq!(read_varint(&[0x81, 0x80, 0x80, 0x00]), Ok((1, 4)));
    }

    #[test]
    fn varint_truncated() {
        assert_eq!(read_varint(&[]), Err(CodecError::TruncatedVarint));
        assert_eq!(read_varint(&[0x80]), Err(CodecError::TruncatedVarint));
        assert_eq!(read_varint(&[0xff; 9]), Err(CodecError::TruncatedVarint));
        let max = varint(u64::MAX);
        assert_eq!(read_varint(&max[..9]), Err(CodecError::TruncatedVarint));
    }

    #[test]
    fn varint_overflow() {
        // 10th byte carrying more than bit 63.
        let mut b = vec![0xff; 9];
        b.push(0x02);
        assert_eq!(read_varint(&b), Err(CodecError::VarintOverflow));
        // 11 bytes, even if the value would be small.
        let mut b = vec![0x80; 10];
        b.push(0x00);
        assert_eq!(read_varint(&b), Err(CodecError::VarintOverflow));
        // 10th byte with a continuation bit, input ends there.
        let mut b = vec![0x80; 9];
        b.push(0x81);
        assert_eq!(read_varint(&b), Err(CodecError::VarintOverflow));
        // 10th byte 0x01 is the maximum.
        let mut b = vec![0x80; 9];
        b.push(0x01);
        assert_eq!(read_varint(&b), Ok((1 << 63, 10)));
    }

    // ----- xor / length checks -----

    #[test]
    fn xor_into_works_and_checks_lengths() {
        let a = [1u8, 2, 3, 4, 5];
        let b = [1u8, 0, 3, 0xff, 4];
        let mut out = [0u8; 5];
        xor_into(&a, &b, &mut out).unwrap();
        assert_eq!(out, [0, 2, 0, 0xfb, 1]);
        assert_eq!(
            xor_into(&a, &b[..4], &mut out),
            Err(CodecError::LengthMismatch {
                expected: 5,
                actual: 4
            })
        );
        let mut short = [9u8; 3];
        assert_eq!(
            xor_into(&a, &b, &mut short),
            Err(CodecError::LengthMismatch {
                expected: 5,
                actual: 3
            })
        );
        assert_eq!(short, [9; 3]);
    }

    #[test]
    fn encode_delta_length_mismatch() {
        let mut out = vec![7];
        assert_eq!(
            encode_delta(&[0; 4], &[0; 5], &mut out),
            Err(CodecError::LengthMismatch {
                expected: 4,
                actual: 5
            })
        );
        assert_eq!(out, [7]);
    }

    // ----- encoder shape -----

    #[test]
    fn unchanged_frame_is_one_small_token() {
        let frame: Vec<u8> = (0..921_600u32).map(|i| (i * 7 % 251) as u8).collect();
        let p = enc(&frame, &frame);
        assert!(p.len() <= 8, "{} bytes", p.len());
        assert_eq!(p, [0x80, 0xa0, 0x38, 0x00]); // zeros = 921600, literals = 0
        assert_eq!(zrle_decode(&p, frame.len()).unwrap(), vec![0; frame.len()]);
        for len in [1usize, 7, 8, 9, 63, 64, 65, 1000] {
            let z = vec![0u8; len];
            let mut out = Vec::new();
            zrle_encode(&z, &mut out);
            assert!(out.len() <= 8);
            assert_eq!(tokens(&out, len), [(len, 0)]);
        }
    }

    #[test]
    fn empty_frame_encodes_to_empty_payload() {
        assert!(enc(&[], &[]).is_empty());
        let mut out = Vec::new();
        zrle_encode(&[], &mut out);
        assert!(out.is_empty());
        assert_eq!(zrle_decode(&[], 0), Ok(vec![]));
        assert_eq!(zrle_validate(&[], 0), Ok(()));
        assert_eq!(apply_delta(&mut [], &[]), Ok(()));
    }

    #[test]
    fn encode_appends() {
        let mut out = vec![0xaa, 0xbb];
        zrle_encode(&[0, 0, 5], &mut out);
        assert_eq!(out, [0xaa, 0xbb, 2, 1, 5]);
    }

    #[test]
    fn short_zero_runs_stay_literal_long_ones_split() {
        // Changed bytes separated by a zero run shorter than MIN_ZERO_RUN: one token.
        for gap in 1..MIN_ZERO_RUN {
            for lead in [0usize, 1, 5, 8, 13] {
                let mut x = vec![0u8; lead];
                x.push(1);
                x.extend(std::iter::repeat_n(0, gap));
                x.push(2);
                x.extend([0u8; 40]);
                let mut p = Vec::new();
                zrle_encode(&x, &mut p);
                assert_eq!(
                    tokens(&p, x.len()),
                    [(lead, gap + 2), (40, 0)],
                    "gap {gap} lead {lead}"
                );
                assert_eq!(zrle_decode(&p, x.len()).unwrap(), x);
            }
        }
        // A zero run of MIN_ZERO_RUN bytes or more: two tokens.
        for gap in [
            MIN_ZERO_RUN,
            MIN_ZERO_RUN + 1,
            MIN_ZERO_RUN + 7,
            63,
            64,
            65,
            100,
        ] {
            for lead in [0usize, 1, 5, 8, 13] {
                let mut x = vec![0u8; lead];
                x.extend([1, 1, 1]);
                x.extend(std::iter::repeat_n(0, gap));
                x.push(2);
                let mut p = Vec::new();
                zrle_encode(&x, &mut p);
                assert_eq!(
                    tokens(&p, x.len()),
                    [(lead, 3), (gap, 1)],
                    "gap {gap} lead {lead}"
                );
            }
        }
    }

    #[test]
    fn rgba_alpha_zeros_stay_literal() {
        // Every pixel changed in RGB, alpha unchanged: a single literal token.
        let prev: Vec<u8> = (0..4096u32)
            .map(|i| if i % 4 == 3 { 255 } else { (i % 200) as u8 })
            .collect();
        let cur: Vec<u8> = prev
            .iter()
            .enumerate()
            .map(|(i, &b)| if i % 4 == 3 { b } else { b ^ 0x5a })
            .collect();
        let p = enc(&prev, &cur);
        let t = tokens(&p, prev.len());
        assert_eq!(t, [(0, 4095), (1, 0)]);
    }

    #[test]
    fn long_literal_runs_are_capped() {
        let n = 2 * MAX_LITERAL_RUN + 100;
        let x: Vec<u8> = (0..n).map(|i| (i % 255 + 1) as u8).collect();
        let mut p = Vec::new();
        zrle_encode(&x, &mut p);
        assert_eq!(
            tokens(&p, n),
            [(0, MAX_LITERAL_RUN), (0, MAX_LITERAL_RUN), (0, 100)]
        );
        assert_eq!(zrle_decode(&p, n).unwrap(), x);
    }

    #[test]
    fn trailing_zeros_become_a_zero_token() {
        let x = [0u8, 0, 9, 9, 0, 0, 0];
        let mut p = Vec::new();
        zrle_encode(&x, &mut p);
        assert_eq!(p, [2, 2, 9, 9, 3, 0]);
    }

    // ----- decoder -----

    #[test]
    fn decode_basic_and_zero_tokens_before_completion() {
        // 00 00 no-op tokens are fine before the frame is complete.
        let p = [0, 0, 0, 0, 2, 1, 7, 0, 0, 1, 0];
        assert_eq!(zrle_decode(&p, 4), Ok(vec![0, 0, 7, 0]));
        assert_eq!(zrle_validate(&p, 4), Ok(()));
        let mut f = [1u8, 2, 3, 4];
        apply_delta(&mut f, &p).unwrap();
        assert_eq!(f, [1, 2, 3 ^ 7, 4]);
    }

    #[test]
    fn an_identity_delta_changes_nothing() {
        let frame = vec![7u8; 4096];
        let mut same = Vec::new();
        encode_delta(&frame, &frame, &mut same).unwrap();
        assert_eq!(zrle_changes(&same, frame.len()), Ok(false));
        let mut other = frame.clone();
        other[4000] ^= 1;
        let mut diff = Vec::new();
        encode_delta(&frame, &other, &mut diff).unwrap();
        assert_eq!(zrle_changes(&diff, frame.len()), Ok(true));
        // Literal zero bytes change nothing either.
        let mut zeros = Vec::new();
        write_varint(0, &mut zeros);
        write_varint(4, &mut zeros);
        zeros.extend([0, 0, 0, 0]);
        assert_eq!(zrle_changes(&zeros, 4), Ok(false));
        assert!(zrle_changes(&zeros, 5).is_err());
    }

    /// Payloads every decoder must refuse, with the frame length they are
    /// applied to and the error each must give.
    fn decode_error_cases() -> Vec<(&'static [u8], usize, CodecError)> {
        use CodecError::*;
        vec![
            // zeros past the end
            (
                &[5, 0],
                4,
                FrameOverrun {
                    offset: 0,
                    position: 0,
                    count: 5,
                    frame_len: 4,
                },
            ),
            // literals past the end
            (
                &[1, 2, 0, 0, 1, 4, 1, 2, 3, 4],
                5,
                FrameOverrun {
                    offset: 4,
                    position: 4,
                    count: 4,
                    frame_len: 5,
                },
            ),
            // huge counts don't overflow
            (
                &[
                    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0,
                ],
                4,
                FrameOverrun {
                    offset: 0,
                    position: 0,
                    count: u64::MAX,
                    frame_len: 4,
                },
            ),
            (
                &[
                    0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
                ],
                4,
                FrameOverrun {
                    offset: 0,
                    position: 0,
                    count: u64::MAX,
                    frame_len: 4,
                },
            ),
            // literal bytes missing
            (
                &[0, 3, 1, 2],
                3,
                TruncatedLiterals {
                    needed: 3,
                    available: 2,
                },
            ),
            (
                &[1, 3],
                4,
                TruncatedLiterals {
                    needed: 3,
                    available: 0,
                },
            ),
            // payload ends inside a varint
            (&[0x80], 4, TruncatedVarint),
            (&[1], 4, TruncatedVarint),
            (&[1, 0x80], 4, TruncatedVarint),
            (
                &[
                    0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00,
                ],
                4,
                VarintOverflow,
            ),
            // payload ends between tokens
            (
                &[],
                4,
                Incomplete {
                    decoded: 0,
                    frame_len: 4,
                },
            ),
            (
                &[2, 0],
                4,
                Incomplete {
                    decoded: 2,
                    frame_len: 4,
                },
            ),
            (
                &[0, 0, 0, 0],
                4,
                Incomplete {
                    decoded: 0,
                    frame_len: 4,
                },
            ),
            // bytes left over
            (&[4, 0, 0], 4, TrailingBytes { extra: 1 }),
            (&[4, 0, 0, 0], 4, TrailingBytes { extra: 2 }),
            (
                &[0, 2, 1, 1, 2, 0, 0, 0, 0, 0],
                4,
                TrailingBytes { extra: 4 },
            ),
            // a zero-length frame takes only the empty payload
            (&[0, 0], 0, TrailingBytes { extra: 2 }),
            (&[0x80], 0, TrailingBytes { extra: 1 }),
        ]
    }

    #[test]
    fn decode_errors() {
        for (payload, len, err) in &decode_error_cases() {
            assert_eq!(
                zrle_decode(payload, *len),
                Err(*err),
                "decode {payload:?} len {len}"
            );
            assert_eq!(
                zrle_validate(payload, *len),
                Err(*err),
                "validate {payload:?} len {len}"
            );
            let mut frame = vec![0x5au8; *len];
            assert_eq!(
                apply_delta(&mut frame, payload),
                Err(*err),
                "apply {payload:?} len {len}"
            );
            assert_eq!(frame, vec![0x5a; *len], "frame touched on error");
        }
    }

    #[test]
    fn endless_zero_tokens_after_completion_are_trailing() {
        let mut p = vec![4, 0];
        p.extend(std::iter::repeat_n(0u8, 1_000_000));
        assert_eq!(
            zrle_validate(&p, 4),
            Err(CodecError::TrailingBytes { extra: 1_000_000 })
        );
        // Before completion they are consumed, two bytes each.
        let mut p = vec![0u8; 1_000_000];
        p.extend([4, 0]);
        assert_eq!(zrle_decode(&p, 4), Ok(vec![0; 4]));
    }

    #[test]
    fn apply_is_atomic_on_late_error() {
        // First token valid and would modify the frame; the error comes later.
        let p = [0, 2, 0xff, 0xff, 0, 3, 1];
        let mut f = [1u8, 2, 3, 4];
        assert_eq!(
            apply_delta(&mut f, &p),
            Err(CodecError::FrameOverrun {
                offset: 4,
                position: 2,
                count: 3,
                frame_len: 4
            })
        );
        assert_eq!(f, [1, 2, 3, 4]);
    }

    #[test]
    fn apply_equals_xor_of_decode_fixed() {
        let prev: Vec<u8> = (0..10_000u32).map(|i| (i * 31 % 256) as u8).collect();
        let mut cur = prev.clone();
        for i in (100..200).chain(5000..5003).chain(9990..10_000) {
            cur[i] = cur[i].wrapping_add(1);
        }
        let p = enc(&prev, &cur);
        let x = zrle_decode(&p, prev.len()).unwrap();
        assert_eq!(x, xor(&prev, &cur));
        let mut f = prev.clone();
        apply_delta(&mut f, &p).unwrap();
        assert_eq!(f, xor(&prev, &x));
        assert_eq!(f, cur);
    }

    #[test]
    fn error_display() {
        let e = CodecError::TrailingBytes { extra: 3 };
        assert_eq!(
            e.to_string(),
            "3 trailing bytes after the frame is complete"
        );
    }

    // ----- properties -----

    /// A frame pair where `cur` differs from `prev` only in a few places / small ranges.
    fn sparse_pair() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
        (
            prop::collection::vec(any::<u8>(), 0..3000),
            prop::collection::vec(
                (any::<prop::sample::Index>(), 1usize..40, any::<u8>()),
                0..12,
            ),
        )
            .prop_map(|(prev, edits)| {
                let mut cur = prev.clone();
                if !prev.is_empty() {
                    for (at, len, v) in edits {
                        let start = at.index(prev.len());
                        let end = (start + len).min(prev.len());
                        for (k, b) in cur[start..end].iter_mut().enumerate() {
                            // Leave some bytes unchanged inside the edit.
                            if !(k as u8 ^ v).is_multiple_of(5) {
                                *b = b.wrapping_add(v | 1);
                            }
                        }
                    }
                }
                (prev, cur)
            })
    }

    /// An arbitrary frame pair of equal length.
    fn any_pair() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
        prop::collection::vec(any::<(u8, u8)>(), 0..2000).prop_map(|v| v.into_iter().unzip())
    }

    /// XOR data made of zero runs and mostly-nonzero runs, with lengths around the
    /// threshold and around the 64-byte block size.
    fn runs_buffer() -> impl Strategy<Value = Vec<u8>> {
        let zeros = prop_oneof![0usize..2 * MIN_ZERO_RUN + 2, 0usize..140];
        let byte = prop_oneof![3 => 1u8.., 1 => Just(0u8)];
        prop::collection::vec((zeros, prop::collection::vec(byte, 0..90)), 0..40).prop_map(|runs| {
            let mut x = Vec::new();
            for (z, lits) in runs {
                x.extend(std::iter::repeat_n(0, z));
                x.extend(lits);
            }
            x
        })
    }

    /// Payloads that are often nearly valid: tokens with small counts, and a frame length
    /// near their total.
    fn near_valid_payload() -> impl Strategy<Value = (Vec<u8>, usize)> {
        (
            prop::collection::vec(
                (0u64..20, 0u64..6, prop::collection::vec(any::<u8>(), 0..7)),
                0..8,
            ),
            -3i64..3,
            prop::collection::vec(any::<u8>(), 0..3),
        )
            .prop_map(|(toks, delta, tail)| {
                let mut p = Vec::new();
                let mut total = 0u64;
                for (z, l, bytes) in toks {
                    write_varint(z, &mut p);
                    write_varint(l, &mut p);
                    p.extend(bytes);
                    total += z + l;
                }
                p.extend(tail);
                (p, (total as i64 + delta).max(0) as usize)
            })
    }

    /// The greedy tokenization, byte at a time: the specification of the encoder.
    fn reference_encode(x: &[u8]) -> Vec<u8> {
        let n = x.len();
        let mut out = Vec::new();
        let mut p = 0;
        while p < n {
            let Some(q) = (p..n).find(|&i| x[i] != 0) else {
                write_varint((n - p) as u64, &mut out);
                out.push(0);
                break;
            };
            let limit = n.min(q + MAX_LITERAL_RUN);
            let mut run = 0;
            let mut end = None;
            for (i, &b) in x.iter().enumerate().take(limit).skip(q) {
                if b == 0 {
                    run += 1;
                    if run >= MIN_ZERO_RUN {
                        end = Some(i + 1 - run);
                        break;
                    }
                } else {
                    run = 0;
                }
            }
            let e = end.unwrap_or(limit - run);
            write_varint((q - p) as u64, &mut out);
            write_varint((e - q) as u64, &mut out);
            out.extend_from_slice(&x[q..e]);
            p = e;
        }
        out
    }

    #[test]
    fn zero_bytes_mask() {
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        for pattern in 0u32..256 {
            for _ in 0..8 {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let mut b = rng.to_le_bytes();
                for (k, v) in b.iter_mut().enumerate() {
                    if pattern & (1 << k) != 0 {
                        *v = 0;
                    } else if *v == 0 {
                        *v = 0x80 >> (k % 8);
                    }
                }
                assert_eq!(
                    zero_bytes(u64::from_le_bytes(b)),
                    u64::from(pattern),
                    "{b:?}"
                );
            }
        }
        assert_eq!(zero_bytes(0x0100_0000_0000_0080), 0b0111_1110);
        assert_eq!(zero_bytes(0x8000_0000_0000_0001), 0b0111_1110);
    }

    #[test]
    fn matches_reference_across_blocks_and_caps() {
        // Data spanning several literal caps, with zero runs of every length up to 70.
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for round in 0..4u64 {
            let mut x = Vec::new();
            while x.len() < 3 * MAX_LITERAL_RUN + 77 * round as usize {
                let r = next();
                let zeros = if r >> 60 < 3 + round * 4 {
                    (r % 71) as usize
                } else {
                    0
                };
                x.extend(std::iter::repeat_n(0u8, zeros));
                let lits = ((r >> 8) % 40) as usize;
                x.extend((0..lits).map(|k| ((r >> (16 + k % 40)) as u8) | 1));
            }
            let mut p = Vec::new();
            zrle_encode(&x, &mut p);
            assert_eq!(p, reference_encode(&x), "round {round}");
            assert_eq!(zrle_decode(&p, x.len()).unwrap(), x);
        }
    }

    fn check_round_trip(prev: &[u8], cur: &[u8]) -> Result<(), TestCaseError> {
        let x = xor(prev, cur);
        let p = enc(prev, cur);
        let mut p2 = Vec::new();
        zrle_encode(&x, &mut p2);
        prop_assert_eq!(&p, &p2, "encode_delta != zrle_encode(xor)");
        prop_assert_eq!(&p, &reference_encode(&x), "encoder != reference");
        prop_assert_eq!(zrle_validate(&p, x.len()), Ok(()));
        prop_assert_eq!(zrle_decode(&p, x.len()).unwrap(), x.clone());
        let mut f = prev.to_vec();
        apply_delta(&mut f, &p).unwrap();
        prop_assert_eq!(&f[..], cur);
        // Every token but the first starts with a zero run or follows a capped literal run,
        // and literal runs do not end in zeros except at a cap.
        let t = tokens(&p, x.len());
        let mut pos = 0;
        for (k, &(z, l)) in t.iter().enumerate() {
            if k > 0 && t[k - 1].1 <= MAX_LITERAL_RUN - MIN_ZERO_RUN {
                prop_assert!(z >= MIN_ZERO_RUN || l == 0 || pos + z + l == x.len() && z > 0);
            }
            if l > 0 {
                prop_assert!(x[pos + z] != 0);
                prop_assert!(x[pos + z + l - 1] != 0);
            }
            pos += z + l;
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn prop_round_trip_any((prev, cur) in any_pair()) {
            check_round_trip(&prev, &cur)?;
        }

        #[test]
        fn prop_round_trip_sparse((prev, cur) in sparse_pair()) {
            check_round_trip(&prev, &cur)?;
        }

        #[test]
        fn prop_round_trip_runs(x in runs_buffer(), seed in any::<u8>()) {
            let prev: Vec<u8> = (0..x.len()).map(|i| (i as u8).wrapping_mul(seed)).collect();
            let cur = xor(&prev, &x);
            check_round_trip(&prev, &cur)?;
        }

        #[test]
        fn prop_varint_round_trip(v in any::<u64>()) {
            let b = varint(v);
            prop_assert_eq!(read_varint(&b), Ok((v, b.len())));
            for k in 0..b.len() {
                prop_assert_eq!(read_varint(&b[..k]), Err(CodecError::TruncatedVarint));
            }
        }

        #[test]
        fn prop_read_varint_never_panics(b in prop::collection::vec(any::<u8>(), 0..16)) {
            if let Ok((v, n)) = read_varint(&b) {
                prop_assert!((1..=10).contains(&n));
                prop_assert_eq!(read_varint(&varint(v)), Ok((v, varint(v).len())));
            }
        }

        #[test]
        fn prop_garbage_decode_agrees(p in prop::collection::vec(any::<u8>(), 0..64), len in 0usize..300) {
            check_decoders_agree(&p, len)?;
        }

        #[test]
        fn prop_near_valid_decode_agrees((p, len) in near_valid_payload()) {
            check_decoders_agree(&p, len)?;
        }
    }

    fn check_decoders_agree(p: &[u8], len: usize) -> Result<(), TestCaseError> {
        let v = zrle_validate(p, len);
        let d = zrle_decode(p, len);
        let frame0: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let mut frame = frame0.clone();
        let a = apply_delta(&mut frame, p);
        prop_assert_eq!(v, a);
        match d {
            Ok(x) => {
                prop_assert_eq!(v, Ok(()));
                prop_assert_eq!(x.len(), len);
                prop_assert_eq!(frame, xor(&frame0, &x));
            }
            Err(e) => {
                prop_assert_eq!(v, Err(e));
                prop_assert_eq!(frame, frame0);
            }
        }
        Ok(())
    }
}
