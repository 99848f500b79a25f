//! The channel's catch-up state, on a 640x360 picture and a signal state of
//! 10,000 entries (~550 KB of JSON):
//!
//! - `catchup/join/D`: a joiner's catch-up (keyframe, then D deltas, then
//!   the signal state as one `SignalSync`) built from the cached state,
//!   queued on its egress and taken off as written; against `memcpy` of
//!   the catch-up's bytes;
//! - `signal/diff`: one `SignalDiff` checked and folded into the large
//!   state (and the channel's replay ring and SSE history), against
//!   `memcpy` of the state's JSON;
//! - `signal/diff_then_sync`: the same, then the catch-up built: the
//!   `SignalSync` re-encoded from the changed state (once per version).
//!
//! `cargo bench --bench catchup` (add `-- --quick` for a short run).

mod common;

use std::hint::black_box;

use common::{memcpy, signal_diff, stateful_rig};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const KEYS: usize = 10_000;

fn bench_catchup(c: &mut Criterion) {
    let mut g = c.benchmark_group("catchup");
    for deltas in [0, 32, 256] {
        let rig = stateful_rig(0, deltas, KEYS);
        let bytes = rig.join();
        g.throughput(Throughput::Bytes(bytes as u64));
        let src = vec![3u8; bytes];
        let mut dst = vec![0u8; bytes];
        g.bench_with_input(BenchmarkId::new("memcpy", deltas), &deltas, |b, _| {
            b.iter(|| memcpy(&mut dst, &src))
        });
        g.bench_with_input(BenchmarkId::new("join", deltas), &deltas, |b, _| {
            b.iter(|| black_box(rig.join()))
        });
    }
    g.finish();

    let rig = stateful_rig(0, 0, KEYS);
    let state = rig.catch_up_frames().pop().expect("a signal state").len();
    let mut g = c.benchmark_group("signal");
    g.throughput(Throughput::Bytes(state as u64));
    let src = vec![3u8; state];
    let mut dst = vec![0u8; state];
    g.bench_function("memcpy", |b| b.iter(|| memcpy(&mut dst, &src)));
    let diffs: Vec<_> = (0..1024).map(|i| signal_diff(KEYS, i, i as u16)).collect();
    let mut i = 0;
    g.bench_function("diff", |b| {
        b.iter(|| {
            i += 1;
            black_box(rig.cache(black_box(&diffs[i % diffs.len()])).expect("diff"))
        })
    });
    g.bench_function("diff_then_sync", |b| {
        b.iter(|| {
            i += 1;
            rig.cache(black_box(&diffs[i % diffs.len()])).expect("diff");
            black_box(rig.catch_up_frames())
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = bench_catchup
}
criterion_main!(benches);
