//! The relay's side of an opening handshake once the request head is read
//! (a browser's 530-byte upgrade request of a resuming receiver): the head
//! parsed strictly, the path routed, the resume query read and the `101`
//! answer built (SHA-1 and base64 of the key).
//!
//! `cargo bench --bench handshake` (add `-- --quick` for a short run).

mod common;

use std::hint::black_box;

use bitstream_relay::bench::handshake;
use common::request_head;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn bench_handshake(c: &mut Criterion) {
    let head = request_head();
    assert!(handshake(&head).is_some());
    let mut g = c.benchmark_group("handshake");
    g.throughput(Throughput::Bytes(head.len() as u64));
    g.bench_function("parse_and_answer", |b| {
        b.iter(|| black_box(handshake(black_box(&head))))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = bench_handshake
}
criterion_main!(benches);
