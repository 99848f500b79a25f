//! Instruction counts (and estimated cycles) of the hot-path cases, under
//! Valgrind's Callgrind through gungraun: deterministic, so CI can compare
//! them with the committed baselines (`benches/baselines/counts.tsv`, see
//! `benches/check-counts`). The cases are the criterion benches' (see their
//! files), fewer and smaller so the whole run stays short under Valgrind.
//! Every case's inputs are built and warmed up (one frame through first,
//! so queues have their memory) in its setup, which is not counted; each
//! case returns what it used, so dropping it is not counted either.
//!
//! `cargo bench --bench counts` needs `valgrind` and `gungraun-runner`
//! (`cargo install gungraun-runner --version 0.20.0`); `benches/check-counts`
//! runs it and compares.

mod common;

use std::hint::black_box;

use bitstream_relay::bench::{handshake, EgressRig, Rig, Sent, EGRESS_QUEUE};
use bitstream_relay::wire::reader::WireMessage;
use bytes::Bytes;
use common::{
    client_stream, keyframe, picture, read_stream, request_head, signal_diff, small_frame,
    stateful_rig,
};
use gungraun::{library_benchmark, library_benchmark_group, main};

/// A channel of `n` receivers and the frame to fan out (921 KB with
/// `big`, else 1 KB), one frame already through.
fn fanout_setup(n: usize, big: bool) -> (Rig, WireMessage) {
    let rig = Rig::new(n);
    let frame = if big {
        keyframe(1, &picture())
    } else {
        small_frame(1)
    };
    rig.fan_out(&frame);
    rig.drain();
    (rig, frame)
}

#[library_benchmark]
#[bench::small_64(args = (64, false), setup = fanout_setup)]
#[bench::small_1000(args = (1000, false), setup = fanout_setup)]
#[bench::big_64(args = (64, true), setup = fanout_setup)]
fn fanout((rig, frame): (Rig, WireMessage)) -> (Rig, WireMessage) {
    rig.fan_out(black_box(&frame));
    black_box(rig.drain());
    (rig, frame)
}

#[library_benchmark]
#[bench::small_64(args = (64, false), setup = fanout_setup)]
fn publish((rig, frame): (Rig, WireMessage)) -> (Rig, WireMessage) {
    rig.publish(black_box(&frame)).expect("valid frame");
    black_box(rig.drain());
    (rig, frame)
}

/// An egress of `limit` bytes with `queued` 1 KB live frames queued.
fn egress_setup(limit: usize, queued: usize) -> (EgressRig, Bytes) {
    let rig = EgressRig::new(limit);
    let frame = Bytes::from(vec![7u8; 1024]);
    for seq in 1..=64 {
        rig.live(&frame, seq);
    }
    rig.drain();
    // A small bound overflowed above: live again, after frame 64.
    rig.resync(&[], 64);
    for seq in 65..65 + queued as u64 {
        assert_eq!(rig.live(&frame, seq), Sent::Queued);
    }
    (rig, frame)
}

#[library_benchmark]
#[bench::queue(args = (EGRESS_QUEUE, 0), setup = egress_setup)]
fn egress_queue((rig, frame): (EgressRig, Bytes)) -> (EgressRig, Bytes) {
    for seq in 1000..1064 {
        black_box(rig.live(black_box(&frame), seq));
    }
    black_box(rig.drain());
    (rig, frame)
}

#[library_benchmark]
#[bench::skip_forward(args = (64 * 1024, 60), setup = egress_setup)]
fn egress_skip_forward((rig, frame): (EgressRig, Bytes)) -> (EgressRig, Bytes) {
    assert_eq!(rig.live(black_box(&frame), 1000), Sent::Overflow);
    rig.resync(&[], 1000);
    (rig, frame)
}

#[library_benchmark]
#[bench::control_lane(args = (EGRESS_QUEUE, 32), setup = egress_setup)]
fn egress_control_lane((rig, frame): (EgressRig, Bytes)) -> (EgressRig, Bytes) {
    let ping = Bytes::from_static(&[0x89, 0x04, 1, 2, 3, 4]);
    for _ in 0..8 {
        black_box(rig.control(black_box(&ping)));
    }
    (rig, frame)
}

fn reader_setup(count: usize, len: usize) -> Vec<u8> {
    client_stream(count, len)
}

#[library_benchmark]
#[bench::msgs_1000x1kb(args = (1000, 1024), setup = reader_setup)]
fn reader(stream: Vec<u8>) -> Vec<u8> {
    black_box(read_stream(black_box(&stream)));
    stream
}

/// A channel with a picture of `deltas` deltas and a signal state of
/// `keys` entries, one catch-up already built.
fn state_setup(deltas: usize, keys: usize) -> Rig {
    let rig = stateful_rig(0, deltas, keys);
    rig.join();
    rig
}

#[library_benchmark]
#[bench::deltas_8(args = (8, 2000), setup = state_setup)]
fn catchup_join(rig: Rig) -> Rig {
    black_box(rig.join());
    rig
}

fn diff_setup(keys: usize) -> (Rig, WireMessage) {
    let rig = state_setup(0, keys);
    rig.cache(&signal_diff(keys, 1, 1)).expect("diff");
    (rig, signal_diff(keys, 2, 2))
}

#[library_benchmark]
#[bench::keys_2000(args = (2000,), setup = diff_setup)]
fn signal_diff_fold((rig, diff): (Rig, WireMessage)) -> (Rig, WireMessage) {
    black_box(rig.cache(black_box(&diff)).expect("diff"));
    (rig, diff)
}

#[library_benchmark]
#[bench::browser(setup = request_head)]
fn handshake_parse(head: Vec<u8>) -> Vec<u8> {
    black_box(handshake(black_box(&head)));
    head
}

fn lap_setup(n: usize) -> (Rig, WireMessage) {
    let (rig, frame) = fanout_setup(n, false);
    rig.fan_out_deferred(&frame);
    rig.lap();
    rig.drain();
    (rig, frame)
}

#[library_benchmark]
#[bench::receivers_1000(args = (1000,), setup = lap_setup)]
fn lap((rig, frame): (Rig, WireMessage)) -> (Rig, WireMessage) {
    rig.fan_out_deferred(black_box(&frame));
    black_box(rig.lap());
    (rig, frame)
}

library_benchmark_group!(
    name = hot_path;
    benchmarks = fanout, publish, egress_queue, egress_skip_forward, egress_control_lane,
        reader, catchup_join, signal_diff_fold, handshake_parse, lap
);

main!(library_benchmark_groups = hot_path);
