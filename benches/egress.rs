//! One receiver's egress queue (`Egress`, queued mode, no socket written):
//!
//! - `queue`: 64 live 1 KB frames queued, then taken off as written (what a
//!   drain does after its `writev`), against `memcpy` of the 64 KB;
//! - `skip_forward`: a live frame that overflows a full queue (64 KB bound,
//!   60 frames queued): the queue dropped and the peer marked, then the
//!   catch-up that ends the skip-forward queued (empty here);
//! - `control_lane`: 8 pings put on the control lane ahead of 32 queued
//!   bulk frames.
//!
//! `cargo bench --bench egress` (add `-- --quick` for a short run).

mod common;

use std::cell::Cell;
use std::hint::black_box;

use bitstream_relay::bench::{EgressRig, Sent};
use bytes::Bytes;
use common::memcpy;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

const FRAME: usize = 1024;

fn bench_egress(c: &mut Criterion) {
    let frame = Bytes::from(vec![7u8; FRAME]);
    let ping = Bytes::from_static(&[0x89, 0x04, 1, 2, 3, 4]);
    let mut g = c.benchmark_group("egress");
    g.throughput(Throughput::Bytes(64 * FRAME as u64));
    let mut src = vec![7u8; 64 * FRAME];
    let mut dst = vec![0u8; 64 * FRAME];
    src[0] = 1;
    g.bench_function("memcpy_64KB", |b| b.iter(|| memcpy(&mut dst, &src)));

    let rig = EgressRig::new(bitstream_relay::bench::EGRESS_QUEUE);
    let mut seq = 0u64;
    g.bench_function("queue", |b| {
        b.iter(|| {
            for _ in 0..64 {
                seq += 1;
                black_box(rig.live(black_box(&frame), seq));
            }
            black_box(rig.drain())
        })
    });

    g.throughput(Throughput::Elements(1));
    let full = EgressRig::new(64 * 1024);
    let seq = Cell::new(0u64);
    let next = || {
        seq.set(seq.get() + 1);
        seq.get()
    };
    g.bench_function("skip_forward", |b| {
        b.iter_batched(
            || {
                full.drain();
                while full.queued() + FRAME + 64 <= 64 * 1024 {
                    assert_eq!(full.live(&frame, next()), Sent::Queued);
                }
            },
            |()| {
                let s = next();
                assert_eq!(full.live(black_box(&frame), s), Sent::Overflow);
                full.resync(&[], s);
            },
            BatchSize::PerIteration,
        )
    });

    g.throughput(Throughput::Elements(8));
    let lane = EgressRig::new(bitstream_relay::bench::EGRESS_QUEUE);
    g.bench_function("control_lane", |b| {
        b.iter_batched(
            || {
                lane.drain();
                for _ in 0..32 {
                    lane.live(&frame, next());
                }
            },
            |()| {
                for _ in 0..8 {
                    black_box(lane.control(black_box(&ping)));
                }
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = bench_egress
}
criterion_main!(benches);
