//! A model-based test of the channel core: random sequences of source
//! claims and departures, keyframes, deltas, signal syncs and diffs,
//! receivers joining, leaving and resuming from any point (their own, one
//! of an earlier stream, a bare seq), cache expiry and the channel created
//! anew, driven against the real [`Channel`] (its cache, replay ring and
//! egress queues; sockets only as the receivers' byte pipes, drained after
//! every step) and checked after every step against a small reference:
//!
//! - every connected receiver's picture is the stream's (or, only if it
//!   joined when the relay had no cached picture, none yet), and its
//!   signal state is the stream's;
//! - no delta is ever undecodable or applied on a picture of another
//!   stream (a wrong picture), no frame arrives twice or out of order;
//! - a receiver that asked for marks knows the channel's current epoch.
//!
//! Time is passed in (a counter), no clock is read. Every frame carries a
//! unique id in its `timestamp`, so duplicates and reorders are seen.

use std::io::Read;
use std::sync::{Arc, OnceLock};

use bitstream_wire::codec;
use bitstream_wire::protocol::{self, FrameType, Header, MarkKind, HEADER_LEN};
use bitstream_wire::reader::WireMessage;
use bitstream_wire::signal::{self, State};
use bitstream_wire::ws;
use proptest::prelude::*;

use super::{Channel, Fanout, RingPool};
use crate::relay::channel::peer::Peer;
use crate::relay::config::EgressMode;
use crate::relay::egress::Egress;
use crate::relay::resources::budget::{Budget, Budgets};
use crate::relay::resources::bulk::Bulk;

const W: u16 = 4;
const H: u16 = 2;
const PIXELS: usize = W as usize * H as usize * 4;
const GRACE: u64 = 1_000;
const RECEIVERS: usize = 4;

/// One step of the model.
#[derive(Debug, Clone)]
enum Op {
    /// A new source claims the channel (if it has none) and opens its
    /// stream with a keyframe and a signal sync, numbering from seq 0.
    Claim,
    /// The source leaves.
    SourceLeaves,
    /// A keyframe of new random pixels.
    Keyframe(u8),
    /// A delta changing one pixel byte.
    Delta(u8, u8),
    /// A full signal state.
    Sync(u8),
    /// A diff setting (or deleting) one key.
    Diff(u8, Option<u8>),
    /// An opaque audio frame.
    Audio,
    /// Receiver `i` connects, in one of the ways below.
    Join(usize, How),
    /// Receiver `i` disconnects (keeping its state and resume point).
    Leave(usize),
    /// The relay's GC: the cached state expires if the source has been
    /// gone past the grace period.
    Expire,
    /// The channel, with nobody attached, is collected and created anew.
    Recreate,
}

/// How a receiver connects.
#[derive(Debug, Clone, Copy)]
enum How {
    /// With marks, no resume point.
    Fresh,
    /// With marks, resuming from its own last frame (if it has one).
    Own,
    /// With marks, "resuming" from an epoch it saw earlier (`.0` picks
    /// which) and seq `.1`: a point of another stream, or a stale one.
    Stale(usize, u16),
    /// A bare `resume=SEQ`, no marks (an old client).
    Bare(u16),
}

fn op() -> impl Strategy<Value = Op> {
    let r = 0..RECEIVERS;
    prop_oneof![
        3 => Just(Op::Claim),
        2 => Just(Op::SourceLeaves),
        2 => any::<u8>().prop_map(Op::Keyframe),
        6 => (any::<u8>(), 1..=255u8).prop_map(|(i, x)| Op::Delta(i, x)),
        1 => any::<u8>().prop_map(Op::Sync),
        3 => (0..4u8, proptest::option::of(any::<u8>())).prop_map(|(k, v)| Op::Diff(k, v)),
        2 => Just(Op::Audio),
        6 => (r.clone(), prop_oneof![
            Just(How::Fresh),
            Just(How::Own),
            (any::<usize>(), 0..8u16).prop_map(|(e, s)| How::Stale(e, s)),
            (0..8u16).prop_map(How::Bare),
        ]).prop_map(|(i, h)| Op::Join(i, h)),
        4 => r.prop_map(Op::Leave),
        1 => Just(Op::Expire),
        1 => Just(Op::Recreate),
    ]
}

/// What the source has sent: the stream's true state.
#[derive(Debug, Default)]
struct Truth {
    picture: Option<Vec<u8>>,
    signal: State,
    /// The relay's catch-up holds the truth (false after the cached state
    /// expired or the channel was created anew, until the next source's
    /// opening keyframe and sync).
    cached: bool,
}

/// A receiver as a client runs it (the Rust `Receiver`'s rules).
struct Rx {
    conn: Option<(Arc<Peer>, std::net::TcpStream)>,
    marks: bool,
    buf: Vec<u8>,
    picture: Option<Vec<u8>>,
    signal: State,
    epoch: Option<u64>,
    /// Header seq of the last frame that was not a `SignalSync`.
    last_seq: Option<u16>,
    /// Caught up while the relay had no cached state: may lack picture
    /// and signal state until the next stream opens.
    may_lack: bool,
    /// What `may_lack` becomes if this connection starts with a catch-up.
    lack_if_caught_up: bool,
    /// Ids of the non-replacing frames (deltas, diffs, audio) applied
    /// since the last reset, and the largest.
    seen: Vec<u32>,
}

impl Rx {
    fn new() -> Self {
        Self {
            conn: None,
            marks: false,
            buf: Vec::new(),
            picture: None,
            signal: State::new(),
            epoch: None,
            last_seq: None,
            may_lack: false,
            lack_if_caught_up: false,
            seen: Vec::new(),
        }
    }

    fn reset(&mut self) {
        self.picture = None;
        self.signal.clear();
        self.last_seq = None;
        self.epoch = None;
        self.seen.clear();
    }

    /// Applies one message; `Err` says what went wrong.
    fn apply(&mut self, msg: &[u8]) -> Result<(), String> {
        let h = Header::parse(msg).map_err(|e| e.to_string())?;
        if let Some(mark) = protocol::parse_stream_mark(&h) {
            match mark.kind {
                MarkKind::CatchUp => {
                    self.reset();
                    self.may_lack = self.lack_if_caught_up;
                }
                MarkKind::Resume => {}
                MarkKind::Changed => self.last_seq = None,
            }
            self.epoch = Some(mark.epoch);
            return Ok(());
        }
        let p = &msg[HEADER_LEN..];
        let id = h.timestamp;
        let kind = h.frame_type();
        if matches!(
            kind,
            FrameType::DeltaPixels | FrameType::SignalDiff | FrameType::AudioPcm
        ) {
            if self.seen.contains(&id) {
                return Err(format!("frame {id} twice"));
            }
            if self.seen.last().is_some_and(|&last| id < last) {
                return Err(format!("frame {id} after {:?}", self.seen.last()));
            }
            self.seen.push(id);
        }
        if kind != FrameType::SignalSync {
            self.last_seq = Some(h.seq);
        }
        match kind {
            FrameType::Pixels | FrameType::Keyframe => self.picture = Some(p.to_vec()),
            FrameType::DeltaPixels => match self.picture.as_mut() {
                Some(pic) => codec::apply_delta(pic, p).map_err(|e| format!("delta {id}: {e}"))?,
                None if self.may_lack => {}
                None => return Err(format!("delta {id} without a picture")),
            },
            t @ (FrameType::SignalSync | FrameType::SignalDiff) => signal::fold(
                &mut self.signal,
                t == FrameType::SignalDiff,
                signal::parse(p).map_err(|e| e.to_string())?,
            ),
            _ => {}
        }
        Ok(())
    }

    /// Reads what the relay wrote and applies every whole message.
    async fn drain(&mut self) -> Result<(), String> {
        let Some((peer, mut sock)) = self.conn.take() else {
            return Ok(());
        };
        let result = self.read_all(&peer, &mut sock).await;
        self.conn = Some((peer, sock));
        result
    }

    async fn read_all(
        &mut self,
        peer: &Peer,
        sock: &mut std::net::TcpStream,
    ) -> Result<(), String> {
        loop {
            // The runtime learns the socket is writable only when it polls
            // its driver: give it the turn a session's task would.
            tokio::task::yield_now().await;
            peer.egress.drain();
            let mut chunk = [0u8; 65536];
            let n = match sock.read(&mut chunk) {
                Ok(0) => return Err("closed".into()),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
                Err(e) => return Err(e.to_string()),
            };
            self.buf.extend_from_slice(&chunk[..n]);
            while let Some((payload, used)) = server_frame(&self.buf) {
                let msg = payload.to_vec();
                self.buf.drain(..used);
                self.apply(&msg)?;
            }
            if n == 0 && peer.egress.queued_bytes() == 0 {
                return Ok(());
            }
        }
    }
}

/// One whole unmasked server frame at the start of `buf`: its payload and
/// the bytes it takes.
fn server_frame(buf: &[u8]) -> Option<(&[u8], usize)> {
    if buf.len() < 2 {
        return None;
    }
    let (len, head) = match buf[1] & 0x7F {
        126 if buf.len() >= 4 => (usize::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
        127 if buf.len() >= 10 => (
            usize::try_from(u64::from_be_bytes(buf[2..10].try_into().ok()?)).ok()?,
            10,
        ),
        126 | 127 => return None,
        n => (usize::from(n), 2),
    };
    (buf.len() >= head + len).then(|| (&buf[head..head + len], head + len))
}

/// The blocking lane every case shares.
fn bulk() -> &'static Bulk {
    static BULK: OnceLock<Bulk> = OnceLock::new();
    BULK.get_or_init(|| Bulk::start().expect("bulk lane"))
}

/// A peer on a fresh loopback connection: the relay's end for its egress,
/// the client's end to read.
fn peer(id: u64, marks: bool, memory: &Arc<Budget>) -> (Arc<Peer>, std::net::TcpStream) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let client =
        std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    let (server, _) = listener.accept().expect("accept");
    server.set_nonblocking(true).expect("nonblocking");
    client.set_nonblocking(true).expect("nonblocking");
    let stream = tokio::net::TcpStream::from_std(server).expect("tokio stream");
    let peer = Arc::new(Peer {
        id,
        egress: Egress::new(stream, 1 << 20, EgressMode::Direct, memory.clone()),
        marks,
    });
    (peer, client)
}

/// The model: the channel under test, its source, the receivers and the
/// truth.
struct Model {
    channel: Arc<Channel>,
    budgets: Budgets,
    rings: Arc<RingPool>,
    source: Option<Arc<Peer>>,
    seq: u16,
    /// Unique id of the next frame (its `timestamp`).
    id: u32,
    now: u64,
    left_at: Option<u64>,
    next_peer: u64,
    truth: Truth,
    rx: Vec<Rx>,
    /// Every epoch a receiver was told of.
    epochs: Vec<u64>,
}

impl Model {
    fn new() -> Self {
        let budgets = Budgets::new(1 << 30, 1 << 30);
        // Small rings: resumes from far back fall back to catch-ups.
        let rings = RingPool::new(1200, 1 << 20);
        Self {
            channel: Self::channel(&budgets, &rings, 1),
            budgets,
            rings,
            source: None,
            seq: 0,
            id: 0,
            now: 1,
            left_at: None,
            next_peer: 1,
            truth: Truth::default(),
            rx: (0..RECEIVERS).map(|_| Rx::new()).collect(),
            epochs: Vec::new(),
        }
    }

    fn channel(budgets: &Budgets, rings: &Arc<RingPool>, now: u64) -> Arc<Channel> {
        Arc::new(Channel::new(
            Arc::from("model"),
            None,
            budgets.clone(),
            1 << 20,
            rings.clone(),
            Fanout::SINGLE,
            now,
        ))
    }

    /// Publishes `msg` from the source (if any) with the next seq and id.
    async fn publish(&mut self, build: impl FnOnce(u16, u32) -> Vec<u8>) {
        if self.source.is_none() {
            return;
        }
        let (seq, id) = (self.seq, self.id);
        self.seq = self.seq.wrapping_add(1);
        self.id += 1;
        let msg = build(seq, id);
        let wire = WireMessage::encode(ws::OP_BINARY, &msg);
        self.channel
            .publish(&wire, bulk(), false)
            .await
            .expect("a valid frame");
    }

    async fn step(&mut self, op: &Op) -> Result<(), String> {
        self.now += 1;
        match *op {
            Op::Claim => {
                if self.source.is_some() {
                    return Ok(());
                }
                let (peer, _) = peer(self.next_peer, false, &self.budgets.memory);
                self.next_peer += 1;
                assert!(self.channel.claim_source(&peer));
                self.source = Some(peer);
                self.left_at = None;
                self.seq = 0;
                // Every stream opens with a keyframe and a full state.
                self.keyframe(self.now as u8).await;
                self.sync(self.now as u8).await;
            }
            Op::SourceLeaves => {
                if let Some(peer) = self.source.take() {
                    self.channel.release_source(&peer, self.now);
                    self.left_at = Some(self.now);
                }
            }
            Op::Keyframe(seed) => self.keyframe(seed).await,
            Op::Delta(at, x) => {
                let Some(cur) = self.truth.picture.clone().filter(|_| self.source.is_some()) else {
                    return Ok(());
                };
                let mut next = cur.clone();
                next[usize::from(at) % PIXELS] ^= x;
                let mut z = Vec::new();
                codec::encode_delta(&cur, &next, &mut z).expect("same size");
                self.truth.picture = Some(next);
                self.publish(|seq, id| protocol::delta_pixels(seq, id, W, H, &z))
                    .await;
            }
            Op::Sync(v) => self.sync(v).await,
            Op::Diff(k, v) => {
                if self.source.is_none() {
                    return Ok(());
                }
                let json = match v {
                    Some(v) => format!(r#"{{"k{k}":{v}}}"#),
                    None => format!(r#"{{"k{k}":null}}"#),
                };
                let obj = signal::parse(json.as_bytes()).expect("json");
                signal::fold(&mut self.truth.signal, true, obj);
                self.publish(|seq, id| protocol::signal(true, seq, id, json.as_bytes()))
                    .await;
            }
            Op::Audio => {
                self.publish(|seq, id| {
                    protocol::frame(FrameType::AudioPcm, 0, seq, id, (1, 4800), &[1, 2])
                })
                .await
            }
            Op::Join(i, how) => self.join(i, how),
            Op::Leave(i) => {
                if let Some((peer, _)) = self.rx[i].conn.take() {
                    self.channel.remove_receiver(&peer);
                    self.rx[i].buf.clear();
                }
            }
            Op::Expire => {
                if let Some(left) = self.left_at {
                    if self.channel.expire_cache(left + GRACE, GRACE) {
                        self.truth.cached = false;
                    }
                }
            }
            Op::Recreate => {
                if self.source.is_none() && self.rx.iter().all(|r| r.conn.is_none()) {
                    self.channel = Self::channel(&self.budgets, &self.rings, self.now);
                    self.truth.cached = false;
                    self.left_at = None;
                }
            }
        }
        self.check().await
    }

    async fn keyframe(&mut self, seed: u8) {
        if self.source.is_none() {
            return;
        }
        let pic: Vec<u8> = (0..PIXELS)
            .map(|i| seed.wrapping_mul(31) ^ i as u8)
            .collect();
        self.truth.picture = Some(pic.clone());
        self.truth.cached = true;
        self.publish(|seq, id| protocol::pixels_keyframe(seq, id, W, H, &pic))
            .await;
    }

    async fn sync(&mut self, v: u8) {
        if self.source.is_none() {
            return;
        }
        let json = format!(r#"{{"base":{v},"k0":{v}}}"#);
        self.truth.signal = signal::parse(json.as_bytes()).expect("json");
        self.publish(|seq, id| protocol::signal(false, seq, id, json.as_bytes()))
            .await;
    }

    fn join(&mut self, i: usize, how: How) {
        if self.rx[i].conn.is_some() {
            return;
        }
        let marks = !matches!(how, How::Bare(_));
        let point = match how {
            How::Fresh => None,
            How::Own => self.rx[i]
                .epoch
                .zip(self.rx[i].last_seq)
                .map(|(e, s)| (Some(e), s)),
            How::Stale(k, seq) => {
                // A point in a stream other than the current one (a client
                // can only lie about the current stream, and no relay can
                // tell a lie).
                let current = self.channel.epoch();
                let old: Vec<u64> = self
                    .epochs
                    .iter()
                    .copied()
                    .filter(|&e| e != current)
                    .collect();
                (!old.is_empty()).then(|| (Some(old[k % old.len()]), seq))
            }
            How::Bare(seq) => Some((None, seq)),
        };
        let (peer, sock) = peer(self.next_peer, marks, &self.budgets.memory);
        self.next_peer += 1;
        let rx = &mut self.rx[i];
        rx.marks = marks;
        rx.buf.clear();
        rx.lack_if_caught_up = !self.truth.cached;
        if !marks {
            // A client without marks cannot tell: it starts over.
            rx.reset();
            rx.may_lack = rx.lack_if_caught_up;
        }
        self.channel
            .add_receiver(&peer, usize::MAX, point)
            .expect("room");
        rx.conn = Some((peer, sock));
    }

    /// The invariants, after draining every receiver.
    async fn check(&mut self) -> Result<(), String> {
        let epoch = self.channel.epoch();
        for (i, rx) in self.rx.iter_mut().enumerate() {
            if rx.conn.is_none() {
                continue;
            }
            rx.drain().await.map_err(|e| format!("receiver {i}: {e}"))?;
            if let Some(e) = rx.epoch {
                if !self.epochs.contains(&e) {
                    self.epochs.push(e);
                }
            }
            if rx.marks && rx.epoch != Some(epoch) {
                return Err(format!(
                    "receiver {i} has epoch {:?}, the channel {epoch}",
                    rx.epoch
                ));
            }
            if self.truth.cached && self.source.is_some() && rx.picture.is_some() {
                // Once it holds a picture of a live stream, it has all of it.
                rx.may_lack = false;
            }
            match &rx.picture {
                Some(p) if Some(p) != self.truth.picture.as_ref() => {
                    return Err(format!("receiver {i}: wrong picture"));
                }
                None if !rx.may_lack && self.truth.picture.is_some() => {
                    return Err(format!("receiver {i}: no picture"));
                }
                _ => {}
            }
            if !rx.may_lack && rx.signal != self.truth.signal {
                return Err(format!(
                    "receiver {i}: signal {:?}, the stream's {:?}",
                    rx.signal, self.truth.signal
                ));
            }
        }
        Ok(())
    }
}

/// Runs `ops` on a fresh model; the first broken invariant.
fn run(ops: &[Op]) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut m = Model::new();
        for (n, op) in ops.iter().enumerate() {
            m.step(op)
                .await
                .map_err(|e| format!("after step {n} {op:?}: {e}"))?;
        }
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Every receiver's state is the stream's, whatever happens around it.
    #[test]
    fn receivers_hold_the_streams_state_across_every_transition(
        ops in proptest::collection::vec(op(), 1..80)
    ) {
        if let Err(e) = run(&ops) {
            prop_assert!(false, "{}", e);
        }
    }
}

/// The glued-streams bug as the model finds it (the sequence it shrank to
/// on the relay before stream epochs): a receiver leaves after source A's
/// frame of seq 1, source B opens its stream numbering from 0, and the
/// receiver resumes "after seq 1" — of B.
#[test]
fn the_glued_streams_sequence_passes() {
    let ops = [
        Op::Join(0, How::Fresh),
        Op::Claim,
        Op::Leave(0),
        Op::SourceLeaves,
        Op::Claim,
        Op::Delta(0, 1),
        Op::Join(0, How::Own),
    ];
    run(&ops).expect("no glued streams");
}
