//! The channel's side of Server-Sent Events (see [`crate::relay::channel::sse_hub`]):
//! signal messages published from where they are folded into the cached
//! state, and subscriptions registered under the same lock, so a client's
//! first `sync` and the live events after it neither overlap nor leave a
//! gap.

use bitstream_wire::protocol::{FrameType, Header, HEADER_LEN};
use bitstream_wire::reader::WireMessage;
use bytes::Bytes;

use super::{lock, Channel};
use crate::relay::channel::cache::CacheWriter;
use crate::relay::channel::sse_hub::{Outgoing, ReplayLimits, Start, Subscriber};
use crate::relay::resources::clock::now_ms;

use std::sync::Arc;

/// Adds the current signal state as one `sync` event with `id` (`{}` when
/// the channel has no signal state) to `out`, sharing the cached state's
/// bytes.
fn sync_event(w: &mut CacheWriter, id: u64, out: &mut Outgoing) {
    let json = w.signal_json().unwrap_or_else(|| Bytes::from_static(b"{}"));
    out.sync(id, json);
}

impl Channel {
    /// Publishes a signal message that was just folded into the cached
    /// state (called under the writer lock); nothing for other frames.
    pub(super) fn publish_sse(&self, h: &Header, msg: &WireMessage, seq: u64) {
        let diff = match h.frame_type() {
            FrameType::SignalSync => false,
            FrameType::SignalDiff => true,
            _ => return,
        };
        let json = msg.payload().get(HEADER_LEN..).unwrap_or_default();
        self.sse
            .publish(seq, diff, json, &self.budgets.memory, now_ms);
    }

    /// Registers an SSE client and returns what it is sent first: the
    /// events after `last_event_id` if they can all be replayed, else one
    /// `sync` of the current state.
    pub(crate) fn sse_subscribe(
        &self,
        sub: &Arc<Subscriber>,
        last_event_id: Option<u64>,
        limits: ReplayLimits,
    ) -> Outgoing {
        let mut w = lock(&self.writer);
        let mut out = Outgoing::new(&self.budgets.memory);
        match self.sse.subscribe(sub, last_event_id, limits) {
            Start::Replay(events) => out.shared(events),
            Start::Sync(id) => sync_event(&mut w, id, &mut out),
        }
        out
    }

    /// Adds a fresh `sync` to `out` for a client whose queue overflowed;
    /// what it had queued is dropped (the sync covers it).
    pub(crate) fn sse_resync(&self, sub: &Subscriber, out: &mut Outgoing) {
        let mut w = lock(&self.writer);
        sub.reset();
        sync_event(&mut w, self.sse.last_id(), out);
    }

    /// Unregisters an SSE client.
    pub(crate) fn sse_unsubscribe(&self, sub: &Arc<Subscriber>) {
        self.sse.unsubscribe(sub, now_ms());
    }
}
