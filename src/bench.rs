//! Bench support: thin public wrappers around the relay's hot-path units,
//! for the benches in `benches/` (criterion timings and instruction counts;
//! see `benches/README.md`). Benches are separate crates and see only the
//! public API, while the relay's internals are crate-private; this module
//! is the narrow door. Not part of the relay's API: hidden from the docs,
//! it may change with any commit.
//!
//! Nothing here changes how the relay behaves: it builds the relay's own
//! types (a real channel with its cache, replay ring and receivers' egress
//! queues) and calls their own methods. No socket is written: every
//! receiver's egress is [`EgressMode::Queued`] (the fan-out only queues, as
//! it does for TLS peers), all receivers share one idle loopback socket,
//! and [`Rig::drain`] takes their queues off as if the socket had taken
//! everything (the bookkeeping of a drain, without its `writev`).

use std::net::{TcpListener, TcpStream as StdTcpStream};
use std::sync::Arc;

use bytes::Bytes;
use tokio::net::TcpStream;
use tokio::runtime::Runtime;

use crate::relay::channel::peer::Peer;
use crate::relay::channel::{Channel, Fanout, RingPool};
use crate::relay::egress::{Egress, Outcome};
use crate::relay::net::conn::Conn;
use crate::relay::net::handshake::{rejoin_of, route};
use crate::relay::resources::budget::{Budget, Budgets};
use crate::wire::handshake::{parse_request, upgrade_response};
use crate::wire::reader::WireMessage;
use crate::EgressMode;

/// The per-receiver egress bound (`--egress-queue`'s default).
pub const EGRESS_QUEUE: usize = 4 * 1024 * 1024;

/// The idle loopback socket every bench peer's egress shares (never
/// written), and the runtime it is registered with.
struct Socket {
    stream: Arc<TcpStream>,
    _client: StdTcpStream,
    // Dropped last: the stream deregisters from it.
    _rt: Runtime,
}

impl Socket {
    fn new() -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .expect("bench runtime");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let client = StdTcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        server.set_nonblocking(true).expect("nonblocking");
        let stream = {
            let _in_rt = rt.enter();
            TcpStream::from_std(server).expect("tokio stream")
        };
        Self {
            stream: Arc::new(stream),
            _client: client,
            _rt: rt,
        }
    }

    fn peer(&self, id: u64, limit: usize, memory: &Arc<Budget>) -> Arc<Peer> {
        Arc::new(Peer {
            id,
            egress: Egress::new(
                Conn::Plain(self.stream.clone()),
                limit,
                EgressMode::Queued,
                memory.clone(),
            ),
            marks: false,
        })
    }
}

/// A channel with `N` receivers, built with the relay's defaults
/// (`--max-memory`, `--max-cache-memory`, resume ring, signal state limit,
/// egress bound) and one fan-out shard. See the module docs.
pub struct Rig {
    channel: Arc<Channel>,
    receivers: Vec<Arc<Peer>>,
    /// A peer outside the roster that [`Rig::join`] sends catch-ups to.
    joiner: Arc<Peer>,
    // After every peer: they hold its stream.
    _socket: Socket,
}

impl Rig {
    /// A channel with `receivers` receivers, all caught up (on nothing yet).
    pub fn new(receivers: usize) -> Self {
        let socket = Socket::new();
        let budgets = Budgets::new(1 << 30, 512 << 20);
        let channel = Arc::new(Channel::new(
            Arc::from("bench"),
            None,
            budgets.clone(),
            1024 * 1024,
            RingPool::new(4 << 20, 64 << 20),
            Fanout::SINGLE,
            1,
        ));
        let receivers: Vec<Arc<Peer>> = (1..=receivers as u64)
            .map(|id| socket.peer(id, EGRESS_QUEUE, &budgets.memory))
            .collect();
        for r in &receivers {
            channel
                .add_receiver(r, usize::MAX, None)
                .expect("room for every receiver");
        }
        let joiner = socket.peer(0, EGRESS_QUEUE, &budgets.memory);
        let rig = Self {
            channel,
            receivers,
            joiner,
            _socket: socket,
        };
        rig.drain();
        rig
    }

    /// Receivers on the channel.
    pub fn receivers(&self) -> usize {
        self.receivers.len()
    }

    /// A source message's whole way through the channel: checked, folded
    /// into the catch-up state and replay ring, and fanned out to every
    /// receiver (queued, not written).
    pub fn publish(&self, msg: &WireMessage) -> Result<(), String> {
        let seq = self.cache(msg)?;
        self.channel.bench_fan_out(msg, seq, false);
        Ok(())
    }

    /// Checks a source message and folds it into the catch-up state (no
    /// fan-out); returns its channel sequence.
    pub fn cache(&self, msg: &WireMessage) -> Result<u64, String> {
        self.channel.bench_cache(msg).map_err(|e| e.to_string())
    }

    /// Fans a message out to every receiver (queued, not written) without
    /// checking or caching it: the fan-out alone.
    pub fn fan_out(&self, msg: &WireMessage) {
        let seq = self.channel.bench_next_seq();
        self.channel.bench_fan_out(msg, seq, false);
    }

    /// [`Rig::fan_out`] as a burst or a lap defers it: queued on every
    /// receiver, and (with more receivers than a roster block) a lap
    /// started for [`Rig::lap`] to flush.
    pub fn fan_out_deferred(&self, msg: &WireMessage) {
        let seq = self.channel.bench_next_seq();
        self.channel.bench_fan_out(msg, seq, true);
    }

    /// Steps the lap scheduler until the lap is over (each step flushes one
    /// block of receivers: with queued egress, a wake-up of each peer's
    /// task); returns the steps taken.
    pub fn lap(&self) -> usize {
        let mut steps = 1;
        while self.channel.flush_step() {
            steps += 1;
        }
        steps
    }

    /// Queues the channel's current catch-up (picture and signal state) on
    /// a joiner, as for a receiver that joins or was skipped forward, and
    /// takes it off as written; returns its bytes.
    pub fn join(&self) -> usize {
        self.channel.resume_or_resync(&self.joiner, None);
        self.joiner.egress.drain_without_io()
    }

    /// The frames of the channel's current catch-up, built (not queued).
    pub fn catch_up_frames(&self) -> Vec<Bytes> {
        self.channel.bench_catch_up().0
    }

    /// Takes every receiver's queue off as if its socket had taken it all
    /// (see the module docs); returns the bytes taken.
    pub fn drain(&self) -> usize {
        self.receivers
            .iter()
            .map(|r| r.egress.drain_without_io())
            .sum()
    }

    /// Bytes queued over all receivers now.
    pub fn queued(&self) -> usize {
        self.channel.egress_queued_bytes()
    }
}

/// What happened to a frame handed to an [`EgressRig`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Queued (or deferred) for the peer.
    Queued,
    /// Not sent (dropped, skipped, or refused by a full queue or lane).
    NotSent,
    /// It overflowed the queue: the peer was skipped forward.
    Overflow,
}

impl From<Outcome> for Sent {
    fn from(o: Outcome) -> Self {
        match o {
            Outcome::Sent | Outcome::Queued | Outcome::Deferred => Sent::Queued,
            Outcome::NotSent => Sent::NotSent,
            Outcome::Overflow => Sent::Overflow,
        }
    }
}

/// One peer's egress (queued mode, see the module docs), for the queue's
/// own rules: live frames, the skip-forward, the control lane.
pub struct EgressRig {
    peer: Arc<Peer>,
    _socket: Socket,
}

impl EgressRig {
    /// An egress whose queue holds at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        let socket = Socket::new();
        let memory = Arc::new(Budget::new(1 << 30));
        Self {
            peer: socket.peer(1, limit, &memory),
            _socket: socket,
        }
    }

    /// Hands a live frame of channel sequence `seq` to the peer.
    pub fn live(&self, frame: &Bytes, seq: u64) -> Sent {
        self.peer.egress.send_live(frame, seq, false).into()
    }

    /// Hands a control frame (a ping or pong) to the peer's control lane.
    pub fn control(&self, frame: &Bytes) -> Sent {
        self.peer.egress.send_control(frame, false).into()
    }

    /// Queues a catch-up covering live frames up to `upto` (ends a
    /// skip-forward).
    pub fn resync(&self, frames: &[Bytes], upto: u64) {
        let frames = frames.to_vec();
        self.peer.egress.resync(move || (frames, upto));
    }

    /// Takes the queue off as if the socket had taken it all; returns the
    /// bytes taken.
    pub fn drain(&self) -> usize {
        self.peer.egress.drain_without_io()
    }

    /// Bytes queued now (with the per-chunk overhead the bound counts).
    pub fn queued(&self) -> usize {
        self.peer.egress.queued_bytes()
    }
}

/// The relay's side of an opening handshake once the request head is
/// read: the head parsed, its path routed, its resume query read and the
/// `101` answer built. Returns the bytes of the head and of the answer.
pub fn handshake(head: &[u8]) -> Option<(usize, usize)> {
    let (req, used) = parse_request(head).ok()??;
    route(&req.target).ok()?;
    rejoin_of(&req.target).ok()?;
    let answer = upgrade_response(req.ws_key.as_deref()?);
    Some((used, answer.len()))
}
