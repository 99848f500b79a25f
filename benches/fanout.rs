//! A source frame fanned out to N in-memory receivers (N = 1, 64, 1,000,
//! 15,000), small (1 KB) and 921 KB frames, against `memcpy` of the frame.
//!
//! - `fan_out/N`: the fan-out alone (the frame handed to every receiver's
//!   egress, queued as a shared `Bytes`) and every receiver's queue then
//!   taken off as written: the user-space cost of a frame per receiver,
//!   without the `send`/`writev` (see `bitstream_relay::bench`);
//! - `publish/N`: the source's whole per-frame path: checked, cached (catch-up
//!   state, replay ring), then fanned out as above;
//! - `memcpy`: one copy of the frame's bytes (what reading it off a socket
//!   costs, at best).
//!
//! `cargo bench --bench fanout` (add `-- --quick` for a short run).

mod common;

use std::hint::black_box;

use bitstream_relay::bench::Rig;
use bitstream_relay::wire::reader::WireMessage;
use common::{keyframe, memcpy, picture, small_frame, RECEIVERS};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

fn group(c: &mut Criterion, name: &str, frame: &WireMessage) {
    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Bytes(frame.wire.len() as u64));
    let mut dst = vec![0u8; frame.wire.len()];
    g.bench_function("memcpy", |b| b.iter(|| memcpy(&mut dst, &frame.wire)));
    for n in RECEIVERS {
        let rig = Rig::new(n);
        g.bench_with_input(BenchmarkId::new("fan_out", n), &n, |b, _| {
            b.iter(|| {
                rig.fan_out(black_box(frame));
                black_box(rig.drain())
            })
        });
        if n == 64 {
            g.bench_with_input(BenchmarkId::new("publish", n), &n, |b, _| {
                b.iter(|| {
                    rig.publish(black_box(frame)).expect("valid frame");
                    black_box(rig.drain())
                })
            });
        }
    }
    g.finish();
}

fn bench_fanout(c: &mut Criterion) {
    group(c, "fanout_1KB", &small_frame(1));
    group(c, "fanout_921KB", &keyframe(1, &picture()));
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = bench_fanout
}
criterion_main!(benches);
