//! WebSocket resume end to end: `/stream/{name}?epoch=E&resume=SEQ` gets
//! exactly the frames after SEQ from the channel's replay ring, or the full
//! catch-up when they are gone or belong to another stream (a new source, a
//! channel created anew); stream marks; wrapped seqs; malformed values; the
//! Rust receiver resuming through a cut connection and across a new source.

mod common;

use std::sync::{Arc, Mutex};

use bitstream_relay::client::{Client, ClientError, Event, Receiver, Source};
use bitstream_relay::codec;
use bitstream_relay::protocol::{self, FrameType, Header, MarkKind, StreamMark, HEADER_LEN};
use bitstream_relay::wire::signal;
use common::*;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};

const W: u16 = 16;
const H: u16 = 8;

/// A source stream with consecutive seqs: a keyframe first, then deltas,
/// signal diffs, a signal sync now and then, and audio.
struct Stream {
    seq: u16,
    picture: Vec<u8>,
    n: u64,
}

impl Stream {
    fn new(first_seq: u16) -> Self {
        Self {
            seq: first_seq,
            picture: vec![0; W as usize * H as usize * 4],
            n: 0,
        }
    }

    /// The next message.
    fn next_msg(&mut self) -> Vec<u8> {
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        self.n += 1;
        let n = self.n;
        match n % 5 {
            _ if n == 1 => {
                self.picture = noise(self.picture.len(), 7);
                protocol::pixels_keyframe(seq, 0, W, H, &self.picture)
            }
            0 | 2 => {
                let mut next = self.picture.clone();
                let i = (n as usize * 13) % next.len();
                next[i] ^= (n as u8) | 1;
                let mut z = Vec::new();
                codec::encode_delta(&self.picture, &next, &mut z).unwrap();
                self.picture = next;
                protocol::delta_pixels(seq, 0, W, H, &z)
            }
            1 => protocol::signal(
                true,
                seq,
                0,
                format!(r#"{{"k{}":{n},"gone":null}}"#, n % 7).as_bytes(),
            ),
            3 if n % 45 == 3 => protocol::signal(false, seq, 0, br#"{"base":1,"gone":2}"#),
            _ => protocol::frame(FrameType::AudioPcm, 0, seq, 0, (2, 4800), &noise(40, n)),
        }
    }
}

/// Picture and signal state rebuilt from a message sequence.
fn rebuild(msgs: &[Vec<u8>]) -> (Option<Vec<u8>>, signal::State) {
    let mut picture: Option<Vec<u8>> = None;
    let mut state = signal::State::new();
    for m in msgs {
        let h = Header::parse(m).unwrap();
        let p = &m[HEADER_LEN..];
        match h.frame_type() {
            FrameType::Pixels | FrameType::Keyframe => picture = Some(p.to_vec()),
            FrameType::DeltaPixels => {
                codec::apply_delta(picture.as_mut().expect("a delta before any picture"), p)
                    .unwrap()
            }
            t @ (FrameType::SignalSync | FrameType::SignalDiff) => signal::fold(
                &mut state,
                t == FrameType::SignalDiff,
                signal::parse(p).unwrap(),
            ),
            _ => {}
        }
    }
    (picture, state)
}

async fn recv(c: &mut Client) -> Vec<u8> {
    within(c.recv_binary()).await.expect("recv").to_vec()
}

async fn send_n(src: &mut Client, s: &mut Stream, n: usize) -> Vec<Vec<u8>> {
    let mut sent = Vec::new();
    for _ in 0..n {
        let m = s.next_msg();
        src.send(&m).await.unwrap();
        sent.push(m);
    }
    sent
}

fn seq_of(m: &[u8]) -> u16 {
    Header::parse(m).unwrap().seq
}

/// The stream mark `m` is, if it is one.
fn mark_of(m: &[u8]) -> Option<StreamMark> {
    protocol::parse_stream_mark(&Header::parse(m).unwrap())
}

/// A raw receiver that asked for stream marks: frames, with the marks
/// taken out and remembered.
struct Marked {
    c: Client,
    marks: Vec<StreamMark>,
}

impl Marked {
    /// Connects to `path` with `epoch` added to the query.
    async fn connect(t: &TestRelay, path: &str) -> Self {
        let sep = if path.contains('?') { '&' } else { '?' };
        let c = connect(&t.url(&format!("{path}{sep}epoch"))).await;
        Self {
            c,
            marks: Vec::new(),
        }
    }

    /// Connects to `path` resuming after header seq `seq` of stream `epoch`.
    async fn resume(t: &TestRelay, path: &str, epoch: u64, seq: u16) -> Self {
        let c = connect(&t.url(&format!("{path}?epoch={epoch:x}&resume={seq}"))).await;
        Self {
            c,
            marks: Vec::new(),
        }
    }

    /// The next frame that is not a mark.
    async fn recv(&mut self) -> Vec<u8> {
        loop {
            let m = recv(&mut self.c).await;
            match mark_of(&m) {
                Some(mark) => self.marks.push(mark),
                None => return m,
            }
        }
    }

    /// The epoch of the last mark.
    fn epoch(&self) -> u64 {
        self.marks.last().expect("a mark").epoch
    }

    /// The kinds of the marks so far.
    fn kinds(&self) -> Vec<MarkKind> {
        self.marks.iter().map(|m| m.kind).collect()
    }
}

#[tokio::test]
async fn a_resumed_receiver_gets_exactly_the_missed_frames_and_the_same_state() {
    let t = start(&[]).await;
    let mut a = connect(&t.url("/stream/r")).await;
    let mut b = Marked::connect(&t, "/stream/r").await;
    wait_receivers(&t, "r", 2).await;
    let mut src = connect(&t.url("/source/r")).await;
    let mut s = Stream::new(1000);
    let first = send_n(&mut src, &mut s, 100).await;
    let mut got_a = Vec::new();
    let mut got_b = Vec::new();
    for _ in 0..100 {
        got_a.push(recv(&mut a).await);
        got_b.push(b.recv().await);
    }
    assert_eq!(got_a, first, "no marks without ?epoch");
    assert_eq!(got_b, first);
    // Joined before the source: a catch-up, then the source's stream.
    assert_eq!(b.kinds(), [MarkKind::CatchUp, MarkKind::Changed]);
    let epoch = b.epoch();
    // B leaves; 300 frames go by; B comes back with the seq it last had.
    drop(b);
    wait_receivers(&t, "r", 1).await;
    let missed = send_n(&mut src, &mut s, 300).await;
    for _ in 0..300 {
        got_a.push(recv(&mut a).await);
    }
    let last = seq_of(got_b.last().unwrap());
    let mut b = Marked::resume(&t, "/stream/r", epoch, last).await;
    for _ in 0..300 {
        got_b.push(b.recv().await);
    }
    assert_eq!(
        b.marks,
        [StreamMark {
            epoch,
            kind: MarkKind::Resume
        }]
    );
    assert_eq!(&got_b[100..], &missed[..], "exactly the missed frames");
    assert_eq!(
        got_b, got_a,
        "byte for byte what the continuous receiver got"
    );
    // Then live, nothing twice or missing.
    let marker = send_n(&mut src, &mut s, 1).await;
    assert_eq!(b.recv().await, marker[0]);
    assert_eq!(recv(&mut a).await, marker[0]);
    got_a.extend(marker.clone());
    got_b.extend(marker);
    let (pa, sa) = rebuild(&got_a);
    let (pb, sb) = rebuild(&got_b);
    assert_eq!(pb.as_deref(), Some(&s.picture[..]));
    assert_eq!((pa, sa), (pb, sb.clone()));
    assert!(sb.contains_key("base"));
    let ch = t.relay.channel("r").unwrap();
    assert_eq!(ch.traffic.resumes, 1);
    assert_eq!(ch.traffic.catchups, 2, "the two first joins only");
}

#[tokio::test]
async fn a_receiver_whose_frames_left_the_ring_gets_the_full_catch_up() {
    let t = start(&["--resume-ring-bytes", "4096"]).await;
    let mut a = Marked::connect(&t, "/stream/old").await;
    wait_receivers(&t, "old", 1).await;
    let mut src = connect(&t.url("/source/old")).await;
    let mut s = Stream::new(1);
    let mut got_a = Vec::new();
    send_n(&mut src, &mut s, 10).await;
    for _ in 0..10 {
        got_a.push(a.recv().await);
    }
    let last = seq_of(&got_a[9]);
    // Far more than 4 KiB goes by.
    send_n(&mut src, &mut s, 400).await;
    for _ in 0..400 {
        got_a.push(a.recv().await);
    }
    let mut b = Marked::resume(&t, "/stream/old", a.epoch(), last).await;
    // The catch-up: a picture, then the signal state; then live frames.
    let mut got_b = vec![b.recv().await, b.recv().await];
    assert_eq!(b.kinds(), [MarkKind::CatchUp]);
    assert_eq!(b.epoch(), a.epoch(), "the same stream");
    let first = Header::parse(&got_b[0]).unwrap().frame_type();
    assert!(
        matches!(first, FrameType::Pixels | FrameType::Keyframe),
        "{first:?}"
    );
    let marker = send_n(&mut src, &mut s, 1).await;
    loop {
        let m = b.recv().await;
        let done = m == marker[0];
        got_b.push(m);
        if done {
            break;
        }
    }
    got_a.push(a.recv().await);
    assert_eq!(rebuild(&got_b), rebuild(&got_a), "the same state");
    let ch = t.relay.channel("old").unwrap();
    assert_eq!((ch.traffic.resumes, ch.traffic.catchups), (0, 2));
}

#[tokio::test]
async fn resume_after_a_seq_wrap_and_a_reused_seq_picks_the_most_recent() {
    let t = start(&[]).await;
    let mut a = Marked::connect(&t, "/stream/wrap").await;
    wait_receivers(&t, "wrap", 1).await;
    let mut src = connect(&t.url("/source/wrap")).await;
    // 65,533 … 65,535, 0, 1, … : the stream wraps.
    let mut s = Stream::new(65_533);
    let sent = send_n(&mut src, &mut s, 8).await;
    for m in &sent {
        assert_eq!(&a.recv().await, m);
    }
    assert_eq!(seq_of(&sent[3]), 0);
    let epoch = a.epoch();
    // (65,535 is a SignalSync, which no client names as its resume point.)
    let mut b = Marked::resume(&t, "/stream/wrap", epoch, 65534).await;
    for m in &sent[2..] {
        assert_eq!(&b.recv().await, m, "65,535, 0, 1, … after 65,534");
    }
    drop(b);
    // A source that starts over reuses seqs 0, 1, …: the latest one counts.
    let mut s2 = Stream::new(0);
    s2.n = 1; // no keyframe again: deltas on the same picture
    s2.picture = s.picture.clone();
    let again = send_n(&mut src, &mut s2, 3).await;
    for m in &again {
        assert_eq!(&a.recv().await, m);
    }
    let mut c = Marked::resume(&t, "/stream/wrap", epoch, 0).await;
    assert_eq!(c.recv().await, again[1]);
    assert_eq!(c.recv().await, again[2]);
    assert_eq!(t.relay.channel("wrap").unwrap().traffic.resumes, 2);
}

#[tokio::test]
async fn malformed_resume_is_refused_with_400() {
    let t = start(&[]).await;
    for bad in ["abc", "", "65536", "-1", "1.5", "0x1"] {
        match connect_err(&t.url(&format!("/stream/m?resume={bad}"))).await {
            ClientError::Refused { status, .. } => assert_eq!(status, 400, "resume={bad:?}"),
            e => panic!("resume={bad:?}: {e}"),
        }
    }
    for bad in ["x", "-1", "0x1", "11112222333344445"] {
        match connect_err(&t.url(&format!("/stream/m?epoch={bad}&resume=1"))).await {
            ClientError::Refused { status, .. } => assert_eq!(status, 400, "epoch={bad:?}"),
            e => panic!("epoch={bad:?}: {e}"),
        }
    }
    // A seq the relay never saw is not an error: the full catch-up.
    let _ok = connect(&t.url("/stream/m?resume=123")).await;
    let _ok = connect(&t.url("/stream/m?epoch=12&resume=123")).await;
}

/// The glued-streams bug: a receiver had A0..A5 from source A; a new
/// source B sent its keyframe and deltas B1..B9 meanwhile. Coming back
/// after A5 must never give it B6..B9 (B's deltas on A's picture): a
/// resume point of stream A gets the full catch-up of B, with a mark
/// saying so, whether it names its stream or not.
#[tokio::test]
async fn a_resume_point_of_an_earlier_source_gets_the_full_catch_up() {
    let t = start(&[]).await;
    let mut r = Marked::connect(&t, "/stream/glue").await;
    wait_receivers(&t, "glue", 1).await;
    let mut a = connect(&t.url("/source/glue")).await;
    let mut sa = Stream::new(0);
    let sent_a = send_n(&mut a, &mut sa, 6).await;
    for m in &sent_a {
        assert_eq!(&r.recv().await, m);
    }
    let epoch_a = r.epoch();
    drop(r);
    drop(a);
    eventually("A gone", || {
        t.relay
            .channel("glue")
            .is_some_and(|c| !c.source && c.receivers == 0)
    })
    .await;
    let mut b = connect(&t.url("/source/glue")).await;
    let mut sb = Stream::new(0);
    sb.picture = vec![0x33; sb.picture.len()];
    let mut sent_b = send_n(&mut b, &mut sb, 10).await;
    // A witness receiver shows when the relay has all of B.
    let mut w = connect(&t.url("/stream/glue")).await;
    let last_b = seq_of(sent_b.last().unwrap());
    within(async {
        loop {
            let m = recv(&mut w).await;
            if mark_of(&m).is_none() && seq_of(&m) == last_b {
                break;
            }
        }
    })
    .await;
    for url in [
        format!("/stream/glue?epoch={epoch_a:x}&resume=5"),
        "/stream/glue?resume=5".to_owned(),
    ] {
        let mut c = connect(&t.url(&url)).await;
        let first = recv(&mut c).await;
        if url.contains("epoch") {
            let mark = mark_of(&first).expect("a mark first");
            assert_eq!(mark.kind, MarkKind::CatchUp, "{url}");
            assert_ne!(mark.epoch, epoch_a, "B's stream is another");
        }
        let first = if url.contains("epoch") {
            recv(&mut c).await
        } else {
            first
        };
        let kind = Header::parse(&first).unwrap().frame_type();
        assert!(
            matches!(kind, FrameType::Pixels | FrameType::Keyframe),
            "{url}: the catch-up's picture first, not B6 ({kind:?})"
        );
        let sig = recv(&mut c).await;
        let mut got = vec![first, sig];
        let marker = send_n(&mut b, &mut sb, 1).await;
        loop {
            let m = recv(&mut c).await;
            let done = m == marker[0];
            got.push(m);
            if done {
                break;
            }
        }
        sent_b.extend(marker);
        assert_eq!(rebuild(&got), rebuild(&sent_b), "{url}: B's state exactly");
    }
    let ch = t.relay.channel("glue").unwrap();
    assert_eq!(ch.traffic.resumes, 0);
}

/// A receiver connected while the source changes learns the new stream
/// from a `Changed` mark and can resume in it; a resume point from before
/// the change gets the catch-up.
#[tokio::test]
async fn a_receiver_connected_across_a_new_source_resumes_in_the_new_stream() {
    let t = start(&[]).await;
    let mut r = Marked::connect(&t, "/stream/across").await;
    wait_receivers(&t, "across", 1).await;
    let mut a = connect(&t.url("/source/across")).await;
    let mut sa = Stream::new(0);
    for m in send_n(&mut a, &mut sa, 4).await {
        assert_eq!(r.recv().await, m);
    }
    let (epoch_a, seq_a) = (r.epoch(), 3);
    drop(a);
    eventually("A gone", || {
        t.relay.channel("across").is_some_and(|c| !c.source)
    })
    .await;
    let mut b = connect(&t.url("/source/across")).await;
    let mut sb = Stream::new(100);
    for m in send_n(&mut b, &mut sb, 4).await {
        assert_eq!(r.recv().await, m, "live, in order");
    }
    assert_eq!(
        r.kinds(),
        [MarkKind::CatchUp, MarkKind::Changed, MarkKind::Changed]
    );
    let epoch_b = r.epoch();
    assert_ne!(epoch_a, epoch_b);
    drop(r);
    wait_receivers(&t, "across", 0).await;
    let missed = send_n(&mut b, &mut sb, 5).await;
    let mut again = Marked::resume(&t, "/stream/across", epoch_b, 103).await;
    for m in &missed {
        assert_eq!(&again.recv().await, m, "resumed within B");
    }
    assert_eq!(again.kinds(), [MarkKind::Resume]);
    let mut stale = Marked::resume(&t, "/stream/across", epoch_a, seq_a).await;
    let first = stale.recv().await;
    assert_eq!(stale.kinds(), [MarkKind::CatchUp]);
    assert_ne!(Some(&first), missed.first(), "not B's frames after A's seq");
    assert_eq!(t.relay.channel("across").unwrap().traffic.resumes, 1);
}

/// A TCP proxy in front of the relay whose connections the test can cut.
struct Proxy {
    addr: std::net::SocketAddr,
    conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(to: std::net::SocketAddr) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let c = conns.clone();
        tokio::spawn(async move {
            while let Ok((mut down, _)) = l.accept().await {
                let task = tokio::spawn(async move {
                    if let Ok(mut up) = TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                });
                c.lock().unwrap().push(task);
            }
        });
        Self { addr, conns }
    }

    /// Drops every connection through the proxy.
    fn cut(&self) {
        for t in self.conns.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

/// Runs the receiver until its state equals the source's.
async fn until_same(r: &mut Receiver, src: &Source, picture: &[u8]) {
    within(async {
        while r.picture().map(|p| &p.rgba[..]) != Some(picture) || r.signal() != src.signal() {
            r.next().await;
        }
    })
    .await;
}

fn obj(v: serde_json::Value) -> signal::State {
    v.as_object().unwrap().clone()
}

#[tokio::test]
async fn the_rust_receiver_resumes_through_a_cut_connection_or_starts_over() {
    // A ring of 2 KiB: small bursts resume, a large one does not.
    let t = start(&["--resume-ring-bytes", "2048"]).await;
    let proxy = Proxy::start(t.addr).await;
    let mut src = Source::connect(&t.url("/source/rc")).await.unwrap();
    let mut r = Receiver::connect(&format!("ws://{}/stream/rc", proxy.addr))
        .await
        .unwrap();
    wait_receivers(&t, "rc", 1).await;
    let mut pic = vec![9u8; W as usize * H as usize * 4];
    src.send_picture(W, H, &pic).await.unwrap();
    src.send_signal_diff(&obj(json!({"a": 1}))).await.unwrap();
    until_same(&mut r, &src, &pic).await;

    for round in 0..2u8 {
        proxy.cut();
        wait_receivers(&t, "rc", 0).await;
        // Round 0: a few small deltas (in the ring); round 1: more than it holds.
        let n = if round == 0 { 3 } else { 60 };
        for i in 0..n {
            let at = (i * 4 + round as usize) % pic.len();
            pic[at] ^= 0x5A;
            src.send_picture(W, H, &pic).await.unwrap();
            src.send_signal_diff(&obj(json!({ format!("r{round}"): i })))
                .await
                .unwrap();
        }
        let mut reconnected = false;
        within(async {
            while !reconnected {
                reconnected = r.next().await == Event::Reconnected;
            }
        })
        .await;
        until_same(&mut r, &src, &pic).await;
    }
    assert_eq!((r.resumes, r.full_catchups), (1, 1));
    let ch = t.relay.channel("rc").unwrap();
    assert_eq!((ch.traffic.resumes, ch.traffic.catchups), (1, 2));
    assert_eq!(r.undecodable, 0);
}

#[tokio::test]
async fn all_channels_rings_together_stay_within_max_resume_memory() {
    let t = start(&[
        "--resume-ring-bytes",
        "40000",
        "--max-resume-memory",
        "40000",
    ])
    .await;
    let mut chans = Vec::new();
    for i in 0..4 {
        let name = format!("pool{i}");
        let rx = connect(&t.url(&format!("/stream/{name}"))).await;
        wait_receivers(&t, &name, 1).await;
        let src = connect(&t.url(&format!("/source/{name}"))).await;
        chans.push((name, src, rx, Stream::new(1)));
        if i == 0 {
            // Alone, the first ring may hold more than a quarter.
            let (name, src, rx, s) = &mut chans[0];
            send_n(src, s, 200).await;
            for _ in 0..200 {
                recv(rx).await;
            }
            let alone = t.relay.channel(name).unwrap().resume_ring_bytes;
            assert!(alone > 10_000 && alone <= 40_000, "{alone}");
        }
    }
    for (_, src, rx, s) in &mut chans {
        send_n(src, s, 200).await;
        for _ in 0..200 {
            recv(rx).await;
        }
    }
    let held: Vec<usize> = chans
        .iter()
        .map(|(n, ..)| t.relay.channel(n).unwrap().resume_ring_bytes)
        .collect();
    assert!(
        held.iter().all(|&h| h > 0 && h <= 10_000),
        "each ring a quarter of --max-resume-memory at most: {held:?}"
    );
}

/// The Rust receiver cut off while its source is replaced comes back to
/// the new source's picture, never the new deltas on the old picture.
#[tokio::test]
async fn the_rust_receiver_never_glues_a_new_source_onto_the_old_picture() {
    let t = start(&[]).await;
    let proxy = Proxy::start(t.addr).await;
    let mut r = Receiver::connect(&format!("ws://{}/stream/rglue", proxy.addr))
        .await
        .unwrap();
    wait_receivers(&t, "rglue", 1).await;
    let mut a = Source::connect(&t.url("/source/rglue")).await.unwrap();
    let pic_a = vec![1u8; W as usize * H as usize * 4];
    a.send_picture(W, H, &pic_a).await.unwrap();
    until_same(&mut r, &a, &pic_a).await;
    proxy.cut();
    wait_receivers(&t, "rglue", 0).await;
    drop(a);
    eventually("A gone", || {
        t.relay.channel("rglue").is_some_and(|c| !c.source)
    })
    .await;
    // B's frames are numbered like A's were: the seq alone cannot tell.
    let mut b = Source::connect(&t.url("/source/rglue")).await.unwrap();
    let mut pic_b = vec![2u8; pic_a.len()];
    b.send_picture(W, H, &pic_b).await.unwrap();
    for i in 0..5 {
        pic_b[i * 8] ^= 0xFF;
        b.send_picture(W, H, &pic_b).await.unwrap();
    }
    until_same(&mut r, &b, &pic_b).await;
    assert_eq!((r.resumes, r.full_catchups), (0, 1));
    assert_eq!(r.undecodable, 0);
}
