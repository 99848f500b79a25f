//! The lap scheduler of a big channel (see `src/relay/channel/lap.rs`): a
//! small frame queued on every receiver (deferred, as a channel of more
//! than 256 receivers does), then the lap stepped to its end, one roster
//! block of 256 receivers a step (with queued egress a step wakes each
//! receiver's task instead of writing). The queues are emptied between
//! iterations, untimed.
//!
//! `cargo bench --bench lap` (add `-- --quick` for a short run).

mod common;

use std::hint::black_box;

use bitstream_relay::bench::Rig;
use common::small_frame;
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};

fn bench_lap(c: &mut Criterion) {
    let frame = small_frame(1);
    let mut g = c.benchmark_group("lap");
    for n in [1_000, 15_000] {
        let rig = Rig::new(n);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::new("frame_and_lap", n), &n, |b, _| {
            b.iter_batched(
                || {
                    rig.drain();
                },
                |()| {
                    rig.fan_out_deferred(black_box(&frame));
                    black_box(rig.lap())
                },
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = bench_lap
}
criterion_main!(benches);
