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
//! is formatted once as an event (shared by every client's queue) and kept
//! in the replay buffer, bounded by `--sse-replay-events` and
//! `--sse-replay-bytes` and charged to `--max-memory`; the buffer is kept
//! for [`LINGER_MS`] after the last client left (so a dropped client can
//! resume), then freed.
//!
//! A client never holds up the source: publishing only pushes onto its
//! queue. A queue that would pass `--sse-queue` bytes is emptied and the
//! client marked for a resync: its task sends one fresh `sync` (the whole
//! current state) and continues live from there.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::Notify;

use crate::relay::budget::Budget;

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

/// One client's queue of events not written yet.
#[derive(Debug, Default)]
struct Queue {
    events: VecDeque<Bytes>,
    bytes: usize,
    /// The queue overflowed and was emptied: the client needs a fresh sync.
    resync: bool,
}

/// A connected SSE client as the hub sees it.
#[derive(Debug)]
pub(crate) struct Subscriber {
    queue: Mutex<Queue>,
    max_bytes: usize,
    /// Woken when events are queued or the queue overflowed.
    pub(crate) ready: Notify,
}

/// What a client's task takes from its queue.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    /// Events to write, in order.
    pub(crate) events: Vec<Bytes>,
    /// The queue overflowed: send a fresh sync (the events are gone).
    pub(crate) resync: bool,
}

impl Subscriber {
    /// A client whose queue holds at most `max_bytes` of events.
    pub(crate) fn new(max_bytes: usize) -> Arc<Self> {
        Arc::new(Self {
            queue: Mutex::new(Queue::default()),
            max_bytes,
            ready: Notify::new(),
        })
    }

    /// Queues one event, or empties the queue and asks for a resync if it
    /// would pass its bound. Never blocks on the client.
    fn push(&self, text: &Bytes) {
        let mut q = lock(&self.queue);
        if q.resync {
            return;
        }
        if q.bytes + text.len() > self.max_bytes {
            *q = Queue {
                resync: true,
                ..Queue::default()
            };
        } else {
            q.bytes += text.len();
            q.events.push_back(text.clone());
        }
        drop(q);
        self.ready.notify_one();
    }

    /// Takes everything queued.
    pub(crate) fn take(&self) -> Batch {
        let mut q = lock(&self.queue);
        let q = std::mem::take(&mut *q);
        Batch {
            events: q.events.into(),
            resync: q.resync,
        }
    }

    /// Forgets what is queued and the resync mark (a fresh sync is being
    /// sent; called under the cache writer's lock).
    pub(crate) fn reset(&self) {
        *lock(&self.queue) = Queue::default();
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
    pub(crate) fn restart(&self, epoch: u64, memory: &Budget) {
        let mut inner = lock(&self.inner);
        self.last_id.store(epoch, Ordering::Relaxed);
        memory.release(inner.ring_bytes);
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
        memory: &Budget,
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
            self.deactivate(&mut inner, memory);
            return;
        }
        let ev = format_event(id, if diff { "diff" } else { "sync" }, json);
        for s in &inner.subscribers {
            s.push(&ev.text);
        }
        let limits = inner.limits.unwrap_or(ReplayLimits {
            events: 0,
            bytes: 0,
        });
        memory.force(ev.text.len());
        inner.ring_bytes += ev.text.len();
        inner.ring.push_back(ev);
        while inner.ring.len() > limits.events || inner.ring_bytes > limits.bytes {
            let Some(old) = inner.ring.pop_front() else {
                break;
            };
            inner.ring_bytes -= old.text.len();
            memory.release(old.text.len());
            inner.complete_since = old.id;
        }
    }

    /// Stops recording and frees the replay buffer.
    fn deactivate(&self, inner: &mut Inner, memory: &Budget) {
        self.active.store(false, Ordering::Relaxed);
        memory.release(inner.ring_bytes);
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
    pub(crate) fn clear(&self, memory: &Budget) {
        let mut inner = lock(&self.inner);
        self.deactivate(&mut inner, memory);
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
        let mem = Budget::new(usize::MAX);
        hub.publish(3, true, b"{}", &mem, || 0);
        assert_eq!(hub.last_id(), 3);
        assert_eq!(mem.used(), 0);
        let sub = Subscriber::new(1 << 20);
        // An id from before the hub recorded anything cannot be replayed.
        assert!(matches!(
            hub.subscribe(&sub, Some(1), limits(10)),
            Start::Sync(3)
        ));
    }

    #[test]
    fn resume_replays_what_the_buffer_holds_else_syncs() {
        let hub = SseHub::default();
        let mem = Budget::new(usize::MAX);
        let a = Subscriber::new(1 << 20);
        assert!(matches!(hub.subscribe(&a, None, limits(4)), Start::Sync(0)));
        for id in 1..=6 {
            hub.publish(id, true, b"{}", &mem, || 0);
        }
        assert_eq!(a.take().events.len(), 6);
        hub.unsubscribe(&a, 0);
        let b = Subscriber::new(1 << 20);
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
        hub.clear(&mem);
        assert_eq!(mem.used(), 0, "the buffer's charge is given back");
    }

    #[test]
    fn an_overflowing_client_is_marked_for_resync() {
        let hub = SseHub::default();
        let mem = Budget::new(usize::MAX);
        let slow = Subscriber::new(100);
        hub.subscribe(&slow, None, limits(100));
        for id in 1..=10 {
            hub.publish(id, true, br#"{"k":"xxxxxxxxxx"}"#, &mem, || 0);
        }
        let b = slow.take();
        assert!(b.resync && b.events.is_empty());
        hub.publish(11, true, b"{}", &mem, || 0);
        assert_eq!(slow.take().events.len(), 1, "live again after the resync");
    }

    #[test]
    fn the_buffer_goes_a_while_after_the_last_client() {
        let hub = SseHub::default();
        let mem = Budget::new(usize::MAX);
        let a = Subscriber::new(1 << 20);
        hub.subscribe(&a, None, limits(10));
        hub.publish(1, false, b"{}", &mem, || 0);
        hub.unsubscribe(&a, 1000);
        hub.publish(2, true, b"{}", &mem, || 2000);
        assert!(mem.used() > 0);
        hub.publish(3, true, b"{}", &mem, || 1000 + LINGER_MS);
        assert_eq!(mem.used(), 0);
        assert_eq!(hub.clients(), 0);
    }
}
