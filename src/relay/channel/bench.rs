//! Bench support ([`crate::bench`]): the steps of a source frame's way
//! through the channel, callable one by one without a source session. Each
//! is the channel's own code; nothing here is used by the relay itself.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bitstream_wire::reader::WireMessage;
use bytes::Bytes;

use super::{Channel, PublishError};

impl Channel {
    /// Checks a source message and folds it into the catch-up state, as
    /// [`Channel::publish`] does before its fan-out; returns its channel
    /// sequence.
    pub(crate) fn bench_cache(&self, msg: &WireMessage) -> Result<u64, PublishError> {
        self.check_and_cache(msg)
    }

    /// The next channel sequence, for a frame fanned out without being
    /// cached (a fan-out measured on its own).
    pub(crate) fn bench_next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Fans a checked message of channel sequence `seq` out to every
    /// receiver, as [`Channel::publish`] does after caching it (`more`:
    /// only queue it, for [`Channel::flush_step`]). For a channel without
    /// shard workers ([`super::Fanout::SINGLE`]), where the fan-out never
    /// waits.
    pub(crate) fn bench_fan_out(self: &Arc<Self>, msg: &WireMessage, seq: u64, more: bool) {
        let fut = pin!(self.fan_out(msg, seq, more));
        match fut.poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(()) => {}
            Poll::Pending => unreachable!("a fan-out without shard workers never waits"),
        }
    }

    /// The catch-up frames a joiner is sent now and the sequence they cover.
    pub(crate) fn bench_catch_up(&self) -> (Vec<Bytes>, u64) {
        self.catch_up()
    }
}
