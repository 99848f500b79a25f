//! A connected peer's life after the handshake: one task per connection that
//! reads its messages, drains its egress queue when the socket is writable,
//! pings it, and closes it cleanly (see [`close`]) on error, over-size
//! input, keepalive timeout, slowness, input flood or shutdown.

mod close;
pub(crate) mod ingress;

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::io;
use std::ops::ControlFlow;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bitstream_wire::protocol;
use bitstream_wire::reader::{Incoming, MessageReader, WireMessage};
use bitstream_wire::ws;
use bytes::Bytes;
use tokio::sync::futures::Notified;
use tokio::time::{Instant, Sleep};

use crate::relay::access::auth::CLOSE_TOKEN_EXPIRED;
use crate::relay::access::ratelimit::{TokenBucket, Verdict};
use crate::relay::channel::peer::{Peer, Role};
use crate::relay::channel::Channel;
use crate::relay::channel::PublishError;
use crate::relay::egress::{Drain, Egress};
use crate::relay::resources::clock::now_ms;
use crate::relay::session::ingress::{Ingress, RecvError};
use crate::relay::state::Relay;

/// Close code for a receiver that cannot keep up (as Centrifugo uses).
pub(crate) const CLOSE_SLOW: u16 = 3008;

/// Why a session ended, for the log and the goodbye.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Exit {
    /// The peer sent a close frame.
    PeerClosed,
    /// The TCP connection ended or failed.
    Disconnected,
    /// We close the peer with this code and reason.
    Closed(u16, &'static str),
    /// The peer stopped answering pings.
    KeepaliveTimeout,
}

/// What a handler decided: go on, or end the session.
type Step = ControlFlow<Exit>;

/// How far behind a receiver is: since when its queue has made no progress, and
/// its recent skip-forwards.
#[derive(Default)]
struct Lag {
    behind_since: Option<Instant>,
    /// Boxed: most receivers are never skipped, and 8 bytes instead of 32
    /// in every session keeps its task within 1 KiB (see the size test).
    #[allow(clippy::box_collection)]
    skips: Option<Box<VecDeque<Instant>>>,
}

/// One peer's task state. See the module docs.
struct Session {
    relay: Arc<Relay>,
    channel: Arc<Channel>,
    peer: Arc<Peer>,
    role: Role,
    reader: Ingress,
    next_ping: Instant,
    last_seen: Instant,
    /// The egress queue has data to drain when the socket is writable.
    want_write: bool,
    invalid: u64,
    /// Inputs a receiver may send.
    inputs: TokenBucket,
    /// Pings any peer may send.
    pings: TokenBucket,
    /// The payload of the latest ping not answered yet: one pong answers a
    /// burst of pings (RFC 6455 §5.5.3 allows it).
    pong: Option<Bytes>,
    lag: Lag,
    /// When the peer's token expires (tokens required only).
    expires: Option<Instant>,
    /// A source's message being published (validated on the bulk lane or
    /// fanned out by shard workers), or a source's turn given back between
    /// two steps of a lap (see [`crate::relay::channel`]'s `lap`), or a
    /// source waiting for most of its receivers (`pace`): finished before
    /// anything else.
    busy: Option<Busy>,
    /// The source's last message went out frame by frame, not in laps
    /// (only then is the source paced by its receivers).
    frame_by_frame: bool,
    /// Bytes the source's fan-out handed to receivers (message bytes ×
    /// receivers) since the task last gave its turn back (see
    /// [`TURN_BYTES`]); it also bounds a burst (see
    /// [`Session::burst_goes_on`]).
    since_turn: u32,
}

/// Fan-out work (message bytes × receivers) after which a source's task
/// lets the tasks waiting for its worker run (see [`back_of_the_queue`]),
/// about a millisecond of writes. Receivers'
/// tasks, which write what their sockets did not take at once, run on the
/// same workers: a source with frames always waiting would otherwise keep
/// its worker for a whole cooperative budget (128 reads, ~40 big frames,
/// 370 ms measured with the relay on one core), its receivers' queues
/// would overflow meanwhile, and they would be skipped forward although
/// their sockets were empty.
const TURN_BYTES: u32 = 4 << 20;

/// Lets every task already waiting for the worker run once, then resumes:
/// the task wakes itself, which puts it at the back of the worker's run
/// queue. (`tokio::task::yield_now` waits instead for the runtime's next
/// poll of the sockets, which tasks that are always ready, such as peers
/// sending pings back to back, put off for up to 61 polls: the healthy
/// stream's p99 in `loadtest hostile`'s silent-pingers phase went from
/// under 100 ms to 170-480 ms with it.)
async fn back_of_the_queue() {
    let mut woke = false;
    poll_fn(|cx| {
        if woke {
            return Poll::Ready(());
        }
        woke = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await;
}

/// A publish in progress (ends with its result), or a yield to the runtime
/// or a wait for receivers (ends with `None`).
type Busy = Pin<Box<dyn Future<Output = Option<Result<(), PublishError>>> + Send>>;

/// Runs a peer of `role` on `channel` until it leaves, or until `expires`
/// (its token's expiry). The peer is already registered on the channel;
/// this task unregisters it.
///
/// `keep` is held for the session's life and dropped when it ends.
///
/// Not an `async fn`: the returned future holds the session once, not its
/// arguments besides (every connection pays its size for its whole life).
pub(crate) fn run<K: Send + 'static>(
    relay: Arc<Relay>,
    channel: Arc<Channel>,
    peer: Arc<Peer>,
    role: Role,
    reader: MessageReader,
    expires: Option<Instant>,
    keep: K,
) -> impl Future<Output = ()> + Send {
    let now = Instant::now();
    let memory = relay.budgets.memory.clone();
    let bulk = relay.bulk.handle().clone();
    let cfg = &relay.config;
    let s = Session {
        next_ping: now + cfg.ping_interval(),
        last_seen: now,
        want_write: true,
        invalid: 0,
        inputs: TokenBucket::new(cfg.input_rate, cfg.input_burst, now.into_std()),
        pings: TokenBucket::new(cfg.ping_rate, cfg.ping_burst, now.into_std()),
        pong: None,
        lag: Lag::default(),
        expires,
        busy: None,
        frame_by_frame: false,
        since_turn: 0,
        relay,
        channel,
        peer,
        role,
        reader: Ingress::new(reader, memory, bulk),
    };
    s.live(keep)
}

/// What a session waits on besides its socket, pinned in its future.
struct Waits<'a, 'p> {
    /// Registered once: wakes the task when shutdown begins.
    shutdown: Pin<&'a mut Notified<'p>>,
    /// Completes when the egress queue gets data (while not writing).
    wanted: Pin<&'a mut Notified<'p>>,
    /// The one timer, at [`Session::next_deadline`].
    timer: Pin<&'a mut Sleep>,
    /// Where `wanted` comes from, to wait again once it completed.
    egress: &'p Egress,
}

impl Session {
    /// The whole session: serve, then leave, then drop `keep`. An `async`
    /// block using what it captures in place (an `async fn` would copy its
    /// arguments into a second slot).
    #[allow(clippy::manual_async_fn)]
    fn live<K: Send + 'static>(mut self, keep: K) -> impl Future<Output = ()> + Send {
        async move {
            let (relay, peer) = (self.relay.clone(), self.peer.clone());
            let mut waits = Waits {
                shutdown: pin!(relay.shutdown.notified()),
                wanted: pin!(peer.egress.wanted()),
                timer: pin!(tokio::time::sleep_until(self.next_deadline())),
                egress: &peer.egress,
            };
            let mut registered = false;
            let exit = poll_fn(|cx| {
                if !registered {
                    // The task's waker stays valid for its whole life: one
                    // registration is enough, and later polls read the flag
                    // instead of taking the shutdown list's lock.
                    registered = true;
                    if waits.shutdown.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Exit::Closed(
                            ws::CLOSE_GOING_AWAY,
                            "relay shutting down",
                        ));
                    }
                }
                self.poll_serve(cx, &mut waits)
            })
            .await;
            // Boxed: the goodbye (a close frame, a linger) is the largest
            // state of a session's future and is needed once, at the end;
            // inline it would be part of every idle connection's memory.
            Box::pin(self.leave(exit)).await;
            drop(keep);
        }
    }

    /// The event loop, as one poll over every source of work (each handled
    /// below): shutdown, a publish in progress, the timer, the socket's
    /// write side, the egress queue, the socket's read side. Returns
    /// `Pending` once none of them has anything, each having registered
    /// the task's waker.
    fn poll_serve(&mut self, cx: &mut Context<'_>, w: &mut Waits<'_, '_>) -> Poll<Exit> {
        loop {
            if self.relay.is_draining() {
                return Poll::Ready(Exit::Closed(ws::CLOSE_GOING_AWAY, "relay shutting down"));
            }
            if let Some(busy) = self.busy.as_mut() {
                let done = ready!(busy.as_mut().poll(cx));
                self.busy = None;
                if let Some(result) = done {
                    if let ControlFlow::Break(exit) = self.published(result) {
                        return Poll::Ready(exit);
                    }
                    self.after_read();
                }
                continue;
            }
            if self.pong.is_some() && !self.reader.frame_ready() {
                self.flush_pong();
            }
            let deadline = self.next_deadline();
            if w.timer.deadline() != deadline {
                w.timer.as_mut().reset(deadline);
            }
            if w.timer.as_mut().poll(cx).is_ready() {
                if let ControlFlow::Break(exit) = self.on_tick() {
                    return Poll::Ready(exit);
                }
                continue;
            }
            if self.want_write {
                if let Poll::Ready(r) = self.peer.egress.stream().poll_write_ready(cx) {
                    if let ControlFlow::Break(exit) = self.on_writable(r) {
                        return Poll::Ready(exit);
                    }
                    continue;
                }
            } else if w.wanted.as_mut().poll(cx).is_ready() {
                w.wanted.set(w.egress.wanted());
                if let ControlFlow::Break(exit) = self.on_queued() {
                    return Poll::Ready(exit);
                }
                continue;
            }
            // An echo peer is read only while its queue has room: backpressure
            // instead of dropping what it asked to have echoed.
            let may_read = self.role != Role::Echo
                || self.peer.egress.queued_bytes() < self.relay.config.egress_queue;
            if !may_read {
                return Poll::Pending;
            }
            // A message parsed from bytes already read awaits nothing, so it
            // spends no cooperative budget by itself: without this, a peer
            // whose bytes keep coming could hold the worker.
            if self.role == Role::Source && !self.channel.may_publish() {
                // A lap has taken its frames: it goes on before the next.
                self.channel.flush_step();
                self.give_turn();
                continue;
            }
            let coop = ready!(tokio::task::coop::poll_proceed(cx));
            let ev = match self.reader.poll_next(cx, self.peer.egress.stream()) {
                Poll::Ready(ev) => ev,
                Poll::Pending if self.role == Role::Source && self.channel.flush_step() => {
                    // Nothing to read yet and a lap to go on with: let the
                    // runtime poll the socket (and run other tasks) before
                    // the next step.
                    self.give_turn();
                    continue;
                }
                Poll::Pending => return Poll::Pending,
            };
            coop.made_progress();
            if let ControlFlow::Break(exit) = self.on_read(ev) {
                return Poll::Ready(exit);
            }
            if self.busy.is_none() {
                self.after_read();
            }
        }
    }

    /// After a message: a source whose burst is over writes what the burst
    /// deferred (a channel in laps: one step of them), then waits while
    /// most of its receivers still hold queued frames (see the channel's
    /// `pace`).
    fn after_read(&mut self) {
        if self.role == Role::Source && !self.burst_goes_on() {
            self.channel.flush_step();
            if self.frame_by_frame && self.channel.congested() {
                self.since_turn = 0;
                let channel = self.channel.clone();
                self.busy = Some(Box::pin(async move {
                    channel.pace().await;
                    None
                }));
            } else if self.since_turn >= TURN_BYTES {
                self.since_turn = 0;
                self.busy = Some(Box::pin(async {
                    back_of_the_queue().await;
                    None
                }));
            }
        }
    }

    /// Gives the worker back for one turn of the runtime (which polls the
    /// sockets first), between two steps of a lap.
    fn give_turn(&mut self) {
        self.busy = Some(Box::pin(async {
            tokio::task::yield_now().await;
            None
        }));
    }

    /// A message (or a read error) from the peer.
    fn on_read(&mut self, ev: Result<Incoming, RecvError>) -> Step {
        self.last_seen = Instant::now();
        let msg = match ev {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(peer = self.peer.id, error = %e, "read ended");
                return Step::Break(match e.close_code() {
                    Some(ws::CLOSE_TOO_BIG) => {
                        self.relay.connections.too_big.inc();
                        Exit::Closed(ws::CLOSE_TOO_BIG, "message too big")
                    }
                    Some(ws::CLOSE_INVALID_DATA) => {
                        Exit::Closed(ws::CLOSE_INVALID_DATA, "invalid UTF-8")
                    }
                    Some(ws::CLOSE_TRY_AGAIN) => Exit::Closed(
                        ws::CLOSE_TRY_AGAIN,
                        "relay memory budget exhausted, try again later",
                    ),
                    Some(code) => Exit::Closed(code, "protocol error"),
                    None => Exit::Disconnected,
                });
            }
        };
        if !matches!(msg, Incoming::Ping(_)) {
            // Pongs keep their place before later messages.
            self.flush_pong();
        }
        match msg {
            Incoming::Binary(m) => self.on_binary(m),
            Incoming::Text(m) => self.on_text(&m),
            Incoming::Ping(p) => self.on_ping(p),
            Incoming::Pong => Step::Continue(()),
            Incoming::Close(close) => {
                let code = close.map_or(ws::CLOSE_NORMAL, |(c, _)| c);
                self.send_control(ws::OP_CLOSE, &ws::close_payload(code, ""));
                Step::Break(Exit::PeerClosed)
            }
        }
    }

    /// A ping: answered at once within the ping rate; over it, only the
    /// latest of a burst is answered (once the burst has been read); a
    /// flood closes the peer.
    fn on_ping(&mut self, payload: Bytes) -> Step {
        let now = Instant::now().into_std();
        match self.pings.take(now, self.relay.config.input_flood_drops) {
            Verdict::Allow => {
                self.pong = None;
                self.send_control(ws::OP_PONG, &payload);
            }
            Verdict::Drop => self.pong = Some(payload),
            Verdict::Abuse => return Step::Break(Exit::Closed(ws::CLOSE_POLICY, "ping flood")),
        }
        Step::Continue(())
    }

    /// Sends the pong owed for coalesced pings, if any.
    fn flush_pong(&mut self) {
        if let Some(p) = self.pong.take() {
            self.send_control(ws::OP_PONG, &p);
        }
    }

    fn on_binary(&mut self, m: WireMessage) -> Step {
        if self.role == Role::Source {
            self.publish(m);
            return Step::Continue(());
        }
        let m = &m;
        match self.role {
            Role::Source => {}
            Role::Receiver => {
                let cfg = &self.relay.config;
                let now = Instant::now().into_std();
                match self.inputs.take(now, cfg.input_flood_drops) {
                    Verdict::Allow => self.forward_input(m),
                    Verdict::Drop => self.channel.traffic.dropped.inc(),
                    Verdict::Abuse => {
                        self.channel.traffic.dropped.inc();
                        return Step::Break(Exit::Closed(ws::CLOSE_POLICY, "input flood"));
                    }
                }
            }
            Role::Echo => {
                self.peer.egress.send(&m.wire);
            }
            Role::Signal => {
                return Step::Break(Exit::Closed(
                    ws::CLOSE_UNSUPPORTED,
                    "signaling carries text messages only",
                ))
            }
        }
        Step::Continue(())
    }

    fn on_text(&mut self, m: &WireMessage) -> Step {
        match self.role {
            Role::Signal => {
                self.channel.broadcast_signal(&self.peer, m);
                if let Some(cluster) = self.relay.cluster.get() {
                    cluster.send_signal(&self.channel, m);
                }
            }
            Role::Echo => {
                self.peer.egress.send(&m.wire);
            }
            Role::Source | Role::Receiver => {
                return Step::Break(Exit::Closed(
                    ws::CLOSE_UNSUPPORTED,
                    "text messages are not accepted on data paths",
                ))
            }
        }
        Step::Continue(())
    }

    /// Starts validating, caching and fanning out one source message; the
    /// event loop polls it to its end (see [`Session::published`]) before
    /// anything else.
    fn publish(&mut self, m: WireMessage) {
        let len = m.wire.len();
        let laps = self.channel.in_laps(len);
        self.frame_by_frame = !laps;
        // Saturating: the count only tells when it passes its bounds.
        let len32 = u32::try_from(len).unwrap_or(u32::MAX);
        let receivers = u32::try_from(self.channel.receiver_count()).unwrap_or(u32::MAX);
        self.since_turn = self
            .since_turn
            .saturating_add(len32.saturating_mul(receivers.max(1)));
        let more = self.burst_goes_on() || laps;
        let (channel, relay) = (self.channel.clone(), self.relay.clone());
        // Boxed: only sources publish, and every receiver's future would
        // otherwise have room for this state.
        self.busy = Some(Box::pin(async move {
            Some(channel.publish(&m, &relay.bulk, more).await)
        }));
    }

    /// True while the source's burst goes on: another whole message is
    /// already buffered, no turn is due ([`TURN_BYTES`]) and each receiver
    /// has been handed less than the channel's
    /// [`Channel::burst_max`](crate::relay::channel::Channel::burst_max)
    /// since the last turn (a burst is part of that).
    fn burst_goes_on(&self) -> bool {
        let per_receiver = self.since_turn as usize / self.channel.receiver_count().max(1);
        self.reader.frame_ready()
            && self.since_turn < TURN_BYTES
            && per_receiver < self.channel.burst_max()
    }

    /// A publish ended: a refused message counts against the source.
    fn published(&mut self, result: Result<(), PublishError>) -> Step {
        let Err(refused) = result else {
            return Step::Continue(());
        };
        self.channel.traffic.invalid.inc();
        tracing::debug!(channel = %self.channel.name, %refused, "source message refused");
        self.invalid += 1;
        if self.invalid > self.relay.config.max_invalid {
            return Step::Break(Exit::Closed(ws::CLOSE_POLICY, "too many invalid messages"));
        }
        Step::Continue(())
    }

    /// Validates one receiver message and forwards it to the source if it
    /// is an input.
    fn forward_input(&self, m: &WireMessage) {
        match protocol::validate_input_message(m.payload()) {
            Ok(_) => match self.relay.cluster.get() {
                // The source is on another node (or nowhere yet).
                Some(cluster) if !self.channel.has_source() => cluster.send_input(&self.channel, m),
                _ => self.channel.forward_input(m),
            },
            Err(e) => {
                self.channel.traffic.invalid.inc();
                tracing::debug!(channel = %self.channel.name, refused = %e, "receiver message refused");
            }
        }
    }

    /// The egress queue went from empty to holding data: watch the socket,
    /// and start the slow-receiver clock now, not when the socket next
    /// becomes writable (it may never).
    fn on_queued(&mut self) -> Step {
        self.want_write = true;
        if self.peer.egress.queued_bytes() > 0 {
            self.lag.behind_since.get_or_insert_with(Instant::now);
        }
        Step::Continue(())
    }

    /// The socket can take bytes: drain the queue, and resynchronize a
    /// receiver that was skipped forward once it has drained.
    fn on_writable(&mut self, ready: io::Result<()>) -> Step {
        if ready.is_err() {
            return Step::Break(Exit::Disconnected);
        }
        let (state, written) = self.peer.egress.drain_counting();
        match state {
            Drain::Empty => {
                self.want_write = false;
                self.lag.behind_since = None;
            }
            // The slow clock measures time without progress: a receiver
            // that drains, however slowly, is not closed (it is skipped
            // forward to the latest state when its queue overflows).
            Drain::Pending if written > 0 => self.lag.behind_since = Some(Instant::now()),
            Drain::Pending => {
                self.lag.behind_since.get_or_insert_with(Instant::now);
            }
            Drain::NeedsResync => {
                let now = Instant::now();
                let window = self.relay.config.slow_window();
                let max_skips = self.relay.config.slow_max_skips;
                let skips = self.lag.skips.get_or_insert_default();
                if max_skips > 0 {
                    skips.push_back(now);
                }
                while skips
                    .front()
                    .is_some_and(|t| now.duration_since(*t) > window)
                {
                    skips.pop_front();
                }
                if max_skips > 0 && skips.len() > max_skips {
                    self.channel.traffic.slow_closes.inc();
                    return Step::Break(Exit::Closed(
                        CLOSE_SLOW,
                        "slow receiver: skipped forward too often",
                    ));
                }
                self.channel.resync(&self.peer);
                self.lag.behind_since.get_or_insert(now);
            }
            Drain::Closed => return Step::Break(Exit::Disconnected),
        }
        Step::Continue(())
    }

    /// When a peer whose queued data makes no progress is closed as slow.
    fn slow_deadline(&self) -> Option<Instant> {
        self.lag
            .behind_since
            .map(|t| t + self.relay.config.slow_timeout())
    }

    /// The earliest of the next ping, the slow-receiver deadline and the
    /// token's expiry.
    fn next_deadline(&self) -> Instant {
        let next = self
            .slow_deadline()
            .map_or(self.next_ping, |slow| slow.min(self.next_ping));
        self.expires.map_or(next, |exp| exp.min(next))
    }

    /// A deadline passed: close a receiver stuck behind, drop a peer that
    /// stopped answering, or ping.
    fn on_tick(&mut self) -> Step {
        let now = Instant::now();
        if self.expires.is_some_and(|exp| now >= exp) {
            return Step::Break(Exit::Closed(CLOSE_TOKEN_EXPIRED, "token expired"));
        }
        if self.slow_deadline().is_some_and(|slow| now >= slow) {
            self.channel.traffic.slow_closes.inc();
            return Step::Break(Exit::Closed(
                CLOSE_SLOW,
                "slow receiver: queue not drained in time",
            ));
        }
        if now < self.next_ping {
            return Step::Continue(());
        }
        let cfg = &self.relay.config;
        if now.duration_since(self.last_seen) >= cfg.keepalive_timeout() {
            self.relay.connections.keepalive_drops.inc();
            return Step::Break(Exit::KeepaliveTimeout);
        }
        self.send_control(ws::OP_PING, b"");
        self.next_ping = now + cfg.ping_interval();
        Step::Continue(())
    }

    /// Sends a ping, pong or close on the control lane: never behind
    /// queued bulk frames.
    fn send_control(&self, opcode: u8, payload: &[u8]) {
        self.peer.egress.send_control(
            &WireMessage::encode(opcode, payload).wire,
            opcode == ws::OP_CLOSE,
        );
    }

    /// Unregisters the peer and closes the connection as `exit` calls for.
    async fn leave(mut self, exit: Exit) {
        if self.role == Role::Source {
            self.channel.flush_deferred();
        }
        self.channel.release_member(self.role, &self.peer, now_ms());
        match &exit {
            Exit::Closed(code, reason) => {
                let frame = WireMessage::encode(ws::OP_CLOSE, &ws::close_payload(*code, reason));
                close::close_gracefully(&self.peer, &mut self.reader, Some(frame.wire)).await;
            }
            // Its close frame was answered when it came in.
            Exit::PeerClosed => close::close_gracefully(&self.peer, &mut self.reader, None).await,
            Exit::Disconnected | Exit::KeepaliveTimeout => {}
        }
        self.peer.egress.close();
        if self.role == Role::Source {
            tracing::info!(peer = self.peer.id, channel = %self.channel.name, ?exit, "source left");
        } else {
            tracing::debug!(peer = self.peer.id, channel = %self.channel.name, role = ?self.role, ?exit, "peer left");
        }
    }
}
