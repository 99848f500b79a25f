//! The source's message reader (`MessageReader`, as the relay sets it up
//! for a source: 16 KiB read chunks) on a buffer holding many masked
//! client frames: every message cut out, unmasked in place and its head
//! rewritten for the receivers. The buffer is fed as a socket that always
//! has more would feed it (each read fills the room the reader offers, see
//! `common::read_stream`): every byte is copied in once, so `memcpy` of the
//! same bytes is the floor.
//!
//! Cases: 1,000 messages of 1 KB, 100 of 16 KB, 4 of 921 KB (a keyframe
//! larger than a read chunk: read into its own allocation).
//!
//! `cargo bench --bench reader` (add `-- --quick` for a short run).

mod common;

use std::hint::black_box;

use common::{client_stream, memcpy, read_stream, FRAME_LEN};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

fn bench_reader(c: &mut Criterion) {
    for (count, len, name) in [
        (1000, 1024, "1000x1KB"),
        (100, 16 * 1024, "100x16KB"),
        (4, FRAME_LEN + 16, "4x921KB"),
    ] {
        let stream = client_stream(count, len);
        assert_eq!(read_stream(&stream), count);
        let mut g = c.benchmark_group(format!("reader_{name}"));
        g.throughput(Throughput::Bytes(stream.len() as u64));
        let mut dst = vec![0u8; stream.len()];
        g.bench_function("memcpy", |b| b.iter(|| memcpy(&mut dst, &stream)));
        g.bench_with_input(BenchmarkId::new("parse", count), &stream, |b, s| {
            b.iter(|| black_box(read_stream(black_box(s))))
        });
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = bench_reader
}
criterion_main!(benches);
