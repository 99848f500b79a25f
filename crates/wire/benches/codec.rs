//! Throughput of the ZRLE delta codec on 640x360 RGBA frame pairs, against `memcpy` of a
//! frame as the yardstick (same group, same `Throughput::Bytes`).
//!
//! Cases: an unchanged frame, ~1% of pixels changed in a few small rectangles, 10% changed
//! in a few larger rectangles, and full noise. Frames are generated deterministically with
//! a xorshift PRNG.
//!
//! `cargo bench --bench codec -- --warm-up-time 1 --measurement-time 2`

use std::hint::black_box;

use bitstream_wire::codec::{apply_delta, encode_delta, xor_into, zrle_decode};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const W: usize = 640;
const H: usize = 360;
const FRAME_LEN: usize = W * H * 4;

/// xorshift64 (Marsaglia); deterministic, good enough for test images.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// A smooth RGBA image with a little low-bit texture, alpha 255.
fn base_frame(rng: &mut XorShift) -> Vec<u8> {
    let mut f = vec![0u8; FRAME_LEN];
    for y in 0..H {
        for x in 0..W {
            let i = (y * W + x) * 4;
            let n = rng.next();
            f[i] = ((x * 255 / W) as u8) ^ (n as u8 & 3);
            f[i + 1] = ((y * 255 / H) as u8) ^ ((n >> 8) as u8 & 3);
            f[i + 2] = ((x ^ y) as u8) ^ ((n >> 16) as u8 & 3);
            f[i + 3] = 255;
        }
    }
    f
}

/// Copy of `prev` with the given rectangles (w, h) repainted at pseudo-random positions:
/// each pixel gets a new random RGB (alpha unchanged), except ~1 in 8 left as it was
/// (like background pixels inside a glyph or sprite).
fn with_rects(prev: &[u8], rects: &[(usize, usize)], rng: &mut XorShift) -> Vec<u8> {
    let mut cur = prev.to_vec();
    for &(rw, rh) in rects {
        let x0 = rng.next() as usize % (W - rw);
        let y0 = rng.next() as usize % (H - rh);
        for y in y0..y0 + rh {
            for x in x0..x0 + rw {
                let n = rng.next();
                if n.is_multiple_of(8) {
                    continue;
                }
                let i = (y * W + x) * 4;
                cur[i] = (n >> 8) as u8;
                cur[i + 1] = (n >> 16) as u8;
                cur[i + 2] = (n >> 24) as u8;
            }
        }
    }
    cur
}

fn cases() -> Vec<(&'static str, Vec<u8>, Vec<u8>)> {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let prev = base_frame(&mut rng);
    let unchanged = prev.clone();
    // 768 + 400 + 512 + 384 + 256 = 2320 px of 230400 (~1%).
    let pct1 = with_rects(
        &prev,
        &[(32, 24), (20, 20), (16, 32), (24, 16), (16, 16)],
        &mut rng,
    );
    // 11520 + 5760 + 5760 = 23040 px (10%).
    let pct10 = with_rects(&prev, &[(160, 72), (96, 60), (80, 72)], &mut rng);
    let mut noise = vec![0u8; FRAME_LEN];
    for c in noise.chunks_exact_mut(8) {
        c.copy_from_slice(&rng.next().to_le_bytes());
    }
    vec![
        ("unchanged", prev.clone(), unchanged),
        ("changed_1pct", prev.clone(), pct1),
        ("changed_10pct", prev.clone(), pct10),
        ("noise", prev, noise),
    ]
}

fn bench_codec(c: &mut Criterion) {
    for (name, prev, cur) in cases() {
        let mut payload = Vec::new();
        encode_delta(&prev, &cur, &mut payload).unwrap();
        let changed = prev.iter().zip(&cur).filter(|(a, b)| a != b).count();
        eprintln!(
            "{name}: {changed} bytes differ ({:.2}%), payload {} bytes ({:.2}% of frame)",
            changed as f64 * 100.0 / FRAME_LEN as f64,
            payload.len(),
            payload.len() as f64 * 100.0 / FRAME_LEN as f64,
        );

        let mut g = c.benchmark_group(name);
        g.throughput(Throughput::Bytes(FRAME_LEN as u64));

        let mut dst = vec![0u8; FRAME_LEN];
        g.bench_function("memcpy", |b| {
            b.iter(|| {
                dst.copy_from_slice(black_box(&cur));
                black_box(&mut dst);
            })
        });
        g.bench_function("xor", |b| {
            b.iter(|| {
                xor_into(black_box(&prev), black_box(&cur), &mut dst).unwrap();
                black_box(&mut dst);
            })
        });
        let mut out = Vec::with_capacity(FRAME_LEN + FRAME_LEN / 64);
        g.bench_function("encode_delta", |b| {
            b.iter(|| {
                out.clear();
                encode_delta(black_box(&prev), black_box(&cur), &mut out).unwrap();
                black_box(&mut out);
            })
        });
        g.bench_function("zrle_decode", |b| {
            b.iter(|| black_box(zrle_decode(black_box(&payload), FRAME_LEN).unwrap()))
        });
        // XOR is an involution: the frame alternates between prev and cur, both valid.
        let mut frame = prev.clone();
        g.bench_function("apply_delta", |b| {
            b.iter(|| {
                apply_delta(&mut frame, black_box(&payload)).unwrap();
                black_box(&mut frame);
            })
        });
        g.finish();
        assert!(frame == prev || frame == cur);
    }
}

criterion_group!(benches, bench_codec);
criterion_main!(benches);
