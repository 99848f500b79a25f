//! The last two minutes of relay-wide totals, one sample a second, so a
//! dashboard opened now draws its charts from the start instead of from
//! empty. A task samples [`Relay::summary`] once a second (a few relaxed
//! loads per channel); `/stats/events` sends the ring as its first event.
//! The ring is bounded: [`SAMPLES`] samples of a few integers each.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde_json::{json, Value};

use crate::relay::state::Relay;

/// Samples kept: two minutes at one a second.
pub(crate) const SAMPLES: usize = 120;

/// How often a sample is taken.
const EVERY: Duration = Duration::from_secs(1);

/// Relay-wide counters and gauges at one instant (counters, not rates:
/// the dashboard takes differences, as it does with its live snapshots).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sample {
    /// When, in milliseconds since the relay started.
    pub(crate) uptime_ms: u64,
    /// Bytes received from sources so far.
    pub(crate) bytes_in: u64,
    /// Bytes delivered to receivers so far.
    pub(crate) bytes_out: u64,
    /// Pictures received from sources so far.
    pub(crate) pictures_in: u64,
    /// Receivers connected.
    pub(crate) receivers: u64,
    /// Server-Sent Events clients of signal state connected.
    pub(crate) sse_clients: u64,
    /// Sources connected.
    pub(crate) sources: u64,
}

impl Sample {
    /// The relay's totals now.
    fn of(relay: &Relay) -> Self {
        let s = relay.summary();
        Self {
            uptime_ms: relay.uptime_ms(),
            bytes_in: s.traffic.bytes_in,
            bytes_out: s.traffic.bytes_out,
            pictures_in: s.traffic.pictures_in,
            receivers: s.receivers,
            sse_clients: relay.connections.sse_clients.get(),
            sources: s.sources,
        }
    }
}

/// The ring of the last [`SAMPLES`] samples, oldest first.
#[derive(Debug, Default)]
pub(crate) struct History {
    ring: Mutex<VecDeque<Sample>>,
}

impl History {
    /// Appends `s`, dropping the oldest sample past [`SAMPLES`].
    pub(crate) fn push(&self, s: Sample) {
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        if ring.len() >= SAMPLES {
            ring.pop_front();
        }
        ring.push_back(s);
    }

    /// The samples, oldest first, as a JSON array of objects.
    pub(crate) fn json(&self) -> Value {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        ring.iter()
            .map(|s| {
                json!({
                    "uptime_ms": s.uptime_ms,
                    "bytes_in": s.bytes_in,
                    "bytes_out": s.bytes_out,
                    "pictures_in": s.pictures_in,
                    "receivers": s.receivers,
                    "sse_clients": s.sse_clients,
                    "sources": s.sources,
                })
            })
            .collect()
    }
}

/// Starts the sampling task; it stops when the relay is dropped or shuts
/// down.
pub(crate) fn spawn(relay: &Arc<Relay>) {
    let weak: Weak<Relay> = Arc::downgrade(relay);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(relay) = weak.upgrade() else { return };
            if relay.is_draining() {
                return;
            }
            relay.history.push(Sample::of(&relay));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t: u64) -> Sample {
        Sample {
            uptime_ms: t,
            bytes_in: t * 2,
            bytes_out: t * 3,
            pictures_in: t,
            receivers: 1,
            sse_clients: 0,
            sources: 1,
        }
    }

    #[test]
    fn the_ring_keeps_the_newest_samples_oldest_first() {
        let h = History::default();
        for t in 0..(SAMPLES as u64 + 5) {
            h.push(at(t));
        }
        let v = h.json();
        let list = v.as_array().unwrap();
        assert_eq!(list.len(), SAMPLES);
        assert_eq!(list[0]["uptime_ms"], 5);
        assert_eq!(list[SAMPLES - 1]["uptime_ms"], SAMPLES as u64 + 4);
        assert_eq!(list[SAMPLES - 1]["bytes_out"], (SAMPLES as u64 + 4) * 3);
    }
}
