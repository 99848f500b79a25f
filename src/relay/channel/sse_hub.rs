//! A channel's signal state as Server-Sent Events (`GET /events/{name}`):
//! the per-channel [`SseHub`] that the source's signal messages are
//! published to, its bounded replay buffer for `Last-Event-ID`, and each
//! client's bounded queue ([`Subscriber`]).
//!
//! Event ids are the channel sequence numbers of the signal messages (so
//! they increase with every event, and a stream's first `sync` carries the
//! id of the last signal message folded into it). The hook runs where the
//! channel folds a signal message into its cached state, under the cache
//! writer's lock, so a subscriber that takes the same lock to read the
//! state and register sees every later event exactly once.
//!
//! Cost: with no SSE client listening, a signal message costs one relaxed
//! atomic store and one load. From the first client on, each signal message
//! is formatted once as an event and kept in the replay buffer, bounded by
//! `--sse-replay-events` and `--sse-replay-bytes`; the buffer is kept for
//! [`LINGER_MS`] after the last client left (so a dropped client can
//! resume), then freed.
//!
//! Memory: clients share bytes, never copy them. An event is one `Bytes`
//! that every client's queue and the replay buffer hold a handle to; it is
//! charged to `--max-memory` once, from when it is formatted until its last
//! handle is dropped (see [`charged`]), wherever that is: the buffer, a
//! queue, a batch a slow client's task is still writing. A `sync` is the
//! cached signal state's own JSON between a small head and tail (see
//! [`Outgoing::sync`]), so clients joining or resynced at one state share
//! it with each other and with the WebSocket catch-up. What each client
//! holds beyond shared bytes (a handle per queued event, its own small
//! pieces) is charged by the client, as WebSocket queues charge theirs.
//!
//! A client never holds up the source: publishing only pushes onto its
//! queue. A queue that would pass `--sse-queue` bytes is emptied and the
//! client marked for a resync: its task sends one fresh `sync` (the whole
//! current state) and continues live from there. When `--max-memory` is
//! nearly used ([`Level::NoBacklog`]), a client already more than one event
//! behind is resynced the same way instead of queueing more, as a lagging
//! WebSocket receiver is skipped forward.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::Notify;

use crate::relay::resources::budget::{charged, Budget, Level, LARGE};

/// What a client holds per event or piece beyond its bytes (its slot in a
/// queue or batch, the `Bytes` handle): charged by the client.
pub(crate) const PIECE_OVERHEAD: usize = 64;

/// A queue's charge to the memory budget moves in steps of this many
/// bytes, so a busy queue touches the shared counter rarely.
const GRANULE: usize = 4 * 1024;

/// How long a channel keeps its replay buffer after its last SSE client
/// left, in milliseconds.
pub(crate) const LINGER_MS: u64 = 60_000;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One Server-Sent Event, formatted for the wire.
#[derive(Debug, Clone)]
pub(crate) struct Event {
    /// Its id (the channel sequence of its signal message).
    pub(crate) id: u64,
    /// `id: …\nevent: …\ndata: …\n\n`.
    pub(crate) text: Bytes,
}

/// Formats one event: `kind` (`sync` or `diff`) with `json` as its data.
/// Line breaks in the JSON (whitespace only: a JSON string cannot hold a
/// raw one) split it over several `data:` lines, which the client joins
/// with `\n` again.
pub(crate) fn format_event(id: u64, kind: &str, json: &[u8]) -> Event {
    let mut out = BytesMut::with_capacity(json.len() + 40);
    out.put_slice(format!("id: {id}\nevent: {kind}\n").as_bytes());
    let mut rest = json;
    loop {
        let end = rest
            .iter()
            .position(|&b| b == b'\n' || b == b'\r')
            .unwrap_or(rest.len());
        out.put_slice(b"data: ");
        out.put_slice(&rest[..end]);
        out.put_u8(b'\n');
        if end == rest.len() {
            break;
        }
        // `\r\n` is one line break.
        let skip = if rest[end..].starts_with(b"\r\n") {
            2
        } else {
            1
        };
        rest = &rest[end + skip..];
    }
    out.put_u8(b'\n');
    Event {
        id,
        text: out.freeze(),
    }
}

/// Limits a hub keeps its replay buffer within.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReplayLimits {
    /// Events kept at most.
    pub(crate) events: usize,
    /// Bytes of event text kept at most.
    pub(crate) bytes: usize,
}

/// A charge to the memory budget that a client holds, given back when it
/// is dropped.
#[derive(Debug)]
struct Charge {
    n: usize,
    memory: Arc<Budget>,
}

impl Charge {
    /// No charge yet.
    fn new(memory: &Arc<Budget>) -> Self {
        Self {
            n: 0,
            memory: memory.clone(),
        }
    }

    /// Charges `n` more bytes (held already: forced past the limit if need
    /// be, see [`Budget::force`]).
    fn add(&mut self, n: usize) {
        self.memory.force(n);
        self.n += n;
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.memory.release(self.n);
    }
}

/// What a client's task writes next, in order, with the client's charge
/// for it. Shared pieces (events, a large `sync`'s JSON) carry their own
/// charge and cost the client [`PIECE_OVERHEAD`] each; its own pieces (the
/// response head, a `sync`'s head, a small `sync`'s JSON) cost their bytes
/// too. Written with one vectored write: nothing is copied together.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pieces: Vec<Bytes>,
    charge: Charge,
}

impl Outgoing {
    /// Nothing to write yet; charges go to `memory`.
    pub(crate) fn new(memory: &Arc<Budget>) -> Self {
        Self {
            pieces: Vec::new(),
            charge: Charge::new(memory),
        }
    }

    /// Adds pieces that carry their own charge or are static.
    pub(crate) fn shared(&mut self, pieces: impl IntoIterator<Item = Bytes>) {
        let before = self.pieces.len();
        self.pieces.extend(pieces);
        let added = self.pieces.len() - before;
        self.charge.add(added * PIECE_OVERHEAD);
    }

    /// Adds a piece only this client holds (charged by its length).
    pub(crate) fn own(&mut self, piece: Bytes) {
        self.charge.add(piece.len() + PIECE_OVERHEAD);
        self.pieces.push(piece);
    }

    /// Adds a `sync` event with `id` whose data is `json`, the signal state
    /// as the relay serialized it (compact: no line breaks, so it is one
    /// `data:` line and shared as it is, not copied). Large JSON is a slice
    /// of the cached `SignalSync` frame, which carries its own charge
    /// (see [`crate::relay::resources::budget::charge_made`]); small JSON is charged
    /// by each client that holds it.
    pub(crate) fn sync(&mut self, id: u64, json: Bytes) {
        if json.iter().any(|&b| b == b'\n' || b == b'\r') {
            // Not the relay's own serialization: formatted (and copied) as
            // any event is.
            self.own(format_event(id, "sync", &json).text);
            return;
        }
        self.own(Bytes::from(format!("id: {id}\nevent: sync\ndata: ")));
        if json.len() >= LARGE {
            self.shared([json]);
        } else {
            self.own(json);
        }
        self.shared([Bytes::from_static(b"\n\n")]);
    }

    /// Adds everything `other` holds, after what this holds.
    pub(crate) fn append(&mut self, mut other: Outgoing) {
        self.pieces.append(&mut other.pieces);
        self.charge.n += std::mem::take(&mut other.charge.n);
    }

    /// The pieces, in order.
    pub(crate) fn pieces(&self) -> &[Bytes] {
        &self.pieces
    }

    /// True when there is nothing to write.
    pub(crate) fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    /// What the client is charged for this now.
    #[cfg(test)]
    fn charged(&self) -> usize {
        self.charge.n
    }
}

/// One client's queue of events not written yet.
#[derive(Debug, Default)]
struct Queue {
    events: VecDeque<Bytes>,
    bytes: usize,
    /// The queue overflowed and was emptied: the client needs a fresh sync.
    resync: bool,
    /// What the memory budget is charged for this queue: [`PIECE_OVERHEAD`]
    /// per event, rounded up to a [`GRANULE`] (the events' bytes carry
    /// their own charge).
    charged: usize,
}

/// A connected SSE client as the hub sees it.
#[derive(Debug)]
pub(crate) struct Subscriber {
    queue: Mutex<Queue>,
    max_bytes: usize,
    /// Where the queue is charged, and whose level stops a lagging client
    /// from queueing more.
    memory: Arc<Budget>,
    /// Woken when events are queued or the queue overflowed.
    pub(crate) ready: Notify,
}

/// What a client's task takes from its queue.
#[derive(Debug)]
pub(crate) struct Batch {
    /// Events to write, in order, with the queue's charge for them.
    pub(crate) out: Outgoing,
    /// The queue overflowed: send a fresh sync (the events are gone).
    pub(crate) resync: bool,
}

impl Subscriber {
    /// A client whose queue holds at most `max_bytes` of events, charged to
    /// `memory`.
    pub(crate) fn new(max_bytes: usize, memory: &Arc<Budget>) -> Arc<Self> {
        Arc::new(Self {
            queue: Mutex::new(Queue::default()),
            max_bytes,
            memory: memory.clone(),
            ready: Notify::new(),
        })
    }

    /// Queues one event, or empties the queue and asks for a resync if it
    /// would pass its bound, or if the relay is short of memory and the
    /// client is already more than one event behind. Never blocks on the
    /// client.
    fn push(&self, text: &Bytes) {
        let mut q = lock(&self.queue);
        if q.resync {
            return;
        }
        let len = text.len();
        let over = q.bytes.saturating_add(len) > self.max_bytes;
        let short = !over && q.bytes > len && self.memory.level() == Level::NoBacklog;
        if short {
            self.memory.shed();
        }
        if over || short {
            q.events = VecDeque::new();
            q.bytes = 0;
            q.resync = true;
        } else {
            q.bytes += len;
            q.events.push_back(text.clone());
        }
        self.settle(&mut q);
        drop(q);
        self.ready.notify_one();
    }

    /// Brings the queue's charge to the memory budget up to date.
    fn settle(&self, q: &mut Queue) {
        let want = (q.events.len() * PIECE_OVERHEAD).div_ceil(GRANULE) * GRANULE;
        if want > q.charged {
            self.memory.force(want - q.charged);
        } else {
            self.memory.release(q.charged - want);
        }
        q.charged = want;
    }

    /// Takes everything queued, with the queue's charge for it.
    pub(crate) fn take(&self) -> Batch {
        let mut q = lock(&self.queue);
        let q = std::mem::take(&mut *q);
        Batch {
            out: Outgoing {
                pieces: q.events.into(),
                charge: Charge {
                    n: q.charged,
                    memory: self.memory.clone(),
                },
            },
            resync: q.resync,
        }
    }

    /// Forgets what is queued and the resync mark (a fresh sync is being
    /// sent; called under the cache writer's lock).
    pub(crate) fn reset(&self) {
        let mut q = lock(&self.queue);
        self.memory.release(q.charged);
        *q = Queue::default();
    }

    /// Bytes of events queued now.
    #[cfg(test)]
    fn queued(&self) -> usize {
        lock(&self.queue).bytes
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let q = self.queue.get_mut().unwrap_or_else(|e| e.into_inner());
        self.memory.release(q.charged);
    }
}

/// The replay buffer and the clients, under the hub's lock.
#[derive(Debug, Default)]
struct Inner {
    ring: VecDeque<Event>,
    ring_bytes: usize,
    /// The ring holds every event with an id above this.
    complete_since: u64,
    limits: Option<ReplayLimits>,
    subscribers: Vec<Arc<Subscriber>>,
    /// When the last client left (ms on the relay clock), while none is
    /// connected.
    empty_since: Option<u64>,
}

/// A channel's SSE publisher. See the module docs.
#[derive(Debug, Default)]
pub(crate) struct SseHub {
    /// Events are recorded (a client listens, or left less than
    /// [`LINGER_MS`] ago).
    active: AtomicBool,
    /// Channel sequence of the last signal message folded in (0: none).
    last_id: AtomicU64,
    /// Clients connected now (for limits and summaries).
    clients: AtomicU64,
    inner: Mutex<Inner>,
}

/// What a new client starts with.
#[derive(Debug)]
pub(crate) enum Start {
    /// Replay these events (everything after the client's `Last-Event-ID`).
    Replay(Vec<Bytes>),
    /// Send a fresh sync of the current state, with this id.
    Sync(u64),
}

impl SseHub {
    /// A hub whose first sync carries id `start` (the channel's first
    /// sequence number, random per channel: see `Channel::begin_stream`).
    pub(crate) fn starting_at(start: u64) -> Self {
        let hub = Self::default();
        hub.last_id.store(start, Ordering::Relaxed);
        hub
    }

    /// A new stream starts after channel sequence `epoch`: ids up to it
    /// belong to earlier streams and are never replayed (a client resuming
    /// from one gets a fresh sync); clients connected now go on live.
    pub(crate) fn restart(&self, epoch: u64) {
        let mut inner = lock(&self.inner);
        self.last_id.store(epoch, Ordering::Relaxed);
        inner.ring.clear();
        inner.ring_bytes = 0;
        inner.complete_since = epoch;
    }

    /// SSE clients connected now.
    pub(crate) fn clients(&self) -> usize {
        self.clients.load(Ordering::Relaxed) as usize
    }

    /// The id a sync of the current state carries.
    pub(crate) fn last_id(&self) -> u64 {
        self.last_id.load(Ordering::Relaxed)
    }

    /// A signal message (`diff` or sync) of channel sequence `id` was
    /// folded in; call under the cache writer's lock. Costs an atomic
    /// store unless a client listens (or recently did).
    pub(crate) fn publish(
        &self,
        id: u64,
        diff: bool,
        json: &[u8],
        memory: &Arc<Budget>,
        now: impl FnOnce() -> u64,
    ) {
        self.last_id.store(id, Ordering::Relaxed);
        if !self.active.load(Ordering::Relaxed) {
            return;
        }
        let now = now();
        let mut inner = lock(&self.inner);
        if inner
            .empty_since
            .is_some_and(|t| now.saturating_sub(t) >= LINGER_MS)
        {
            self.deactivate(&mut inner);
            return;
        }
        let text = format_event(id, if diff { "diff" } else { "sync" }, json).text;
        // Charged once, for as long as any handle (buffer, queue, batch)
        // holds it.
        let len = text.len();
        memory.force(len);
        let ev = Event {
            id,
            text: charged(text, len, memory),
        };
        for s in &inner.subscribers {
            s.push(&ev.text);
        }
        let limits = inner.limits.unwrap_or(ReplayLimits {
            events: 0,
            bytes: 0,
        });
        inner.ring_bytes += len;
        inner.ring.push_back(ev);
        while inner.ring.len() > limits.events || inner.ring_bytes > limits.bytes {
            let Some(old) = inner.ring.pop_front() else {
                break;
            };
            inner.ring_bytes -= old.text.len();
            inner.complete_since = old.id;
        }
    }

    /// Stops recording and frees the replay buffer.
    fn deactivate(&self, inner: &mut Inner) {
        self.active.store(false, Ordering::Relaxed);
        inner.ring.clear();
        inner.ring_bytes = 0;
        inner.empty_since = None;
    }

    /// Registers a client (call under the cache writer's lock, with the
    /// state read under the same lock) and says how it starts: a replay of
    /// the events after `last_event_id` if the buffer still has them all,
    /// else a fresh sync.
    pub(crate) fn subscribe(
        &self,
        sub: &Arc<Subscriber>,
        last_event_id: Option<u64>,
        limits: ReplayLimits,
    ) -> Start {
        let mut inner = lock(&self.inner);
        let last = self.last_id();
        if !self.active.swap(true, Ordering::Relaxed) {
            inner.complete_since = last;
        }
        inner.limits = Some(limits);
        inner.empty_since = None;
        inner.subscribers.push(sub.clone());
        self.clients.fetch_add(1, Ordering::Relaxed);
        match last_event_id {
            Some(id) if id >= inner.complete_since && id <= last => Start::Replay(
                inner
                    .ring
                    .iter()
                    .filter(|e| e.id > id)
                    .map(|e| e.text.clone())
                    .collect(),
            ),
            _ => Start::Sync(last),
        }
    }

    /// Unregisters a client at `now` (ms on the relay clock).
    pub(crate) fn unsubscribe(&self, sub: &Arc<Subscriber>, now: u64) {
        let mut inner = lock(&self.inner);
        let before = inner.subscribers.len();
        inner.subscribers.retain(|s| !Arc::ptr_eq(s, sub));
        if inner.subscribers.len() < before {
            self.clients.fetch_sub(1, Ordering::Relaxed);
        }
        if inner.subscribers.is_empty() {
            inner.empty_since = Some(now);
        }
    }

    /// Frees the replay buffer (the channel is going away).
    pub(crate) fn clear(&self) {
        let mut inner = lock(&self.inner);
        self.deactivate(&mut inner);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(events: usize) -> ReplayLimits {
        ReplayLimits {
            events,
            bytes: 1 << 20,
        }
    }

    fn budget() -> Arc<Budget> {
        Arc::new(Budget::new(usize::MAX))
    }

    /// The bytes `out` writes, in order.
    fn wire(out: &Outgoing) -> Vec<u8> {
        out.pieces().concat()
    }

    #[test]
    fn events_split_json_lines_over_data_lines() {
        let e = format_event(7, "diff", b"{\"a\":\r\n 1,\n\"b\":2}");
        assert_eq!(
            &e.text[..],
            b"id: 7\nevent: diff\ndata: {\"a\":\ndata:  1,\ndata: \"b\":2}\n\n"
        );
        let e = format_event(0, "sync", b"{}");
        assert_eq!(&e.text[..], b"id: 0\nevent: sync\ndata: {}\n\n");
    }

    #[test]
    fn nothing_is_recorded_without_a_client() {
        let hub = SseHub::default();
        let mem = budget();
        hub.publish(3, true, b"{}", &mem, || 0);
        assert_eq!(hub.last_id(), 3);
        assert_eq!(mem.used(), 0);
        let sub = Subscriber::new(1 << 20, &mem);
        // An id from before the hub recorded anything cannot be replayed.
        assert!(matches!(
            hub.subscribe(&sub, Some(1), limits(10)),
            Start::Sync(3)
        ));
    }

    #[test]
    fn resume_replays_what_the_buffer_holds_else_syncs() {
        let hub = SseHub::default();
        let mem = budget();
        let a = Subscriber::new(1 << 20, &mem);
        assert!(matches!(hub.subscribe(&a, None, limits(4)), Start::Sync(0)));
        for id in 1..=6 {
            hub.publish(id, true, b"{}", &mem, || 0);
        }
        assert_eq!(a.take().out.pieces().len(), 6);
        hub.unsubscribe(&a, 0);
        let b = Subscriber::new(1 << 20, &mem);
        match hub.subscribe(&b, Some(4), limits(4)) {
            Start::Replay(evs) => {
                assert_eq!(evs.len(), 2);
                assert!(evs[0].starts_with(b"id: 5\n"));
            }
            s => panic!("{s:?}"),
        }
        // 1 and 2 were evicted: resuming from 1 would miss 2.
        assert!(matches!(
            hub.subscribe(&b, Some(1), limits(4)),
            Start::Sync(6)
        ));
        assert!(matches!(
            hub.subscribe(&b, Some(2), limits(4)),
            Start::Replay(_)
        ));
        assert!(matches!(
            hub.subscribe(&b, Some(99), limits(4)),
            Start::Sync(6)
        ));
        hub.clear();
        drop((a, b));
        assert_eq!(mem.used(), 0, "the buffer's charge is given back");
    }

    #[test]
    fn an_overflowing_client_is_marked_for_resync() {
        let hub = SseHub::default();
        let mem = budget();
        let slow = Subscriber::new(100, &mem);
        hub.subscribe(&slow, None, limits(100));
        for id in 1..=10 {
            hub.publish(id, true, br#"{"k":"xxxxxxxxxx"}"#, &mem, || 0);
        }
        let b = slow.take();
        assert!(b.resync && b.out.is_empty());
        hub.publish(11, true, b"{}", &mem, || 0);
        assert_eq!(slow.take().out.pieces().len(), 1, "live again");
    }

    #[test]
    fn the_buffer_goes_a_while_after_the_last_client() {
        let hub = SseHub::default();
        let mem = budget();
        let a = Subscriber::new(1 << 20, &mem);
        hub.subscribe(&a, None, limits(10));
        hub.publish(1, false, b"{}", &mem, || 0);
        hub.unsubscribe(&a, 1000);
        drop(a);
        hub.publish(2, true, b"{}", &mem, || 2000);
        assert!(mem.used() > 0);
        hub.publish(3, true, b"{}", &mem, || 1000 + LINGER_MS);
        assert_eq!(mem.used(), 0);
        assert_eq!(hub.clients(), 0);
    }

    #[test]
    fn every_subscriber_holds_the_same_bytes_of_an_event() {
        let hub = SseHub::default();
        let mem = budget();
        let subs: Vec<_> = (0..3).map(|_| Subscriber::new(1 << 20, &mem)).collect();
        for s in &subs {
            hub.subscribe(s, None, limits(10));
        }
        hub.publish(1, true, br#"{"k":1}"#, &mem, || 0);
        let batches: Vec<_> = subs.iter().map(|s| s.take()).collect();
        let ptrs: Vec<_> = batches.iter().map(|b| b.out.pieces()[0].as_ptr()).collect();
        assert!(ptrs.iter().all(|&p| p == ptrs[0]), "{ptrs:?}");
        // A client resuming from the buffer shares them too.
        let late = Subscriber::new(1 << 20, &mem);
        match hub.subscribe(&late, Some(0), limits(10)) {
            Start::Replay(evs) => assert_eq!(evs[0].as_ptr(), ptrs[0]),
            s => panic!("{s:?}"),
        }
    }

    #[test]
    fn an_event_is_charged_once_until_its_last_holder_lets_go() {
        let hub = SseHub::default();
        let mem = budget();
        let subs: Vec<_> = (0..3).map(|_| Subscriber::new(1 << 20, &mem)).collect();
        for s in &subs {
            // No replay buffer: only the queues hold events.
            hub.subscribe(s, None, limits(0));
        }
        let json = vec![b'x'; 10_000];
        hub.publish(1, true, &json, &mem, || 0);
        let len = format_event(1, "diff", &json).text.len();
        assert_eq!(subs[0].queued(), len);
        assert_eq!(mem.used(), len + 3 * GRANULE, "the bytes once, a slot each");
        let batch = subs[0].take();
        assert_eq!(batch.out.charged(), GRANULE, "the batch carries the charge");
        assert_eq!(mem.used(), len + 3 * GRANULE);
        drop(batch);
        assert_eq!(mem.used(), len + 2 * GRANULE, "written");
        subs[1].reset();
        assert_eq!(mem.used(), len + GRANULE, "dropped for a resync");
        hub.unsubscribe(&subs[2], 0);
        drop(subs);
        assert_eq!(mem.used(), 0, "the last holder gone");
    }

    #[test]
    fn short_of_memory_a_lagging_client_is_resynced() {
        let hub = SseHub::default();
        let mem = Arc::new(Budget::new(1 << 20));
        let sub = Subscriber::new(1 << 20, &mem);
        hub.subscribe(&sub, None, limits(0));
        mem.force(1 << 20);
        assert_eq!(mem.level(), Level::NoBacklog);
        for id in 1..=2 {
            hub.publish(id, true, b"{}", &mem, || 0);
        }
        assert_eq!(
            sub.take().out.pieces().len(),
            2,
            "one event behind is not lagging"
        );
        for id in 3..=5 {
            hub.publish(id, true, b"{}", &mem, || 0);
        }
        let b = sub.take();
        assert!(b.resync && b.out.is_empty());
        assert_eq!(mem.sheds(), 1);
        drop(b);
        mem.release(1 << 20);
        assert_eq!(mem.used(), 0);
    }

    #[test]
    fn a_sync_shares_large_state_and_reads_as_one_event() {
        let mem = budget();
        let large = Bytes::from(format!("{{\"k\":\"{}\"}}", "x".repeat(LARGE)));
        let mut out = Outgoing::new(&mem);
        out.sync(9, large.clone());
        assert_eq!(wire(&out), &format_event(9, "sync", &large).text[..]);
        assert!(
            out.pieces().iter().any(|p| p.as_ptr() == large.as_ptr()),
            "shared"
        );
        assert!(out.charged() < 1024, "charged by the frame it is cut from");
        let small = Bytes::from_static(b"{}");
        let mut two = Outgoing::new(&mem);
        two.sync(3, small.clone());
        assert_eq!(wire(&two), b"id: 3\nevent: sync\ndata: {}\n\n");
        assert!(two.charged() >= small.len());
        // JSON the relay did not serialize itself is formatted as any event.
        let mut three = Outgoing::new(&mem);
        three.sync(4, Bytes::from_static(b"{\n}"));
        assert_eq!(wire(&three), b"id: 4\nevent: sync\ndata: {\ndata: }\n\n");
        out.append(two);
        out.append(three);
        assert_eq!(mem.used(), out.charged());
        drop(out);
        assert_eq!(mem.used(), 0);
    }
}
