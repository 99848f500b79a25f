//! A channel's folded signal state, kept as a structure so that a
//! `SignalDiff` costs O(its own size): the state is a JSON object whose
//! serialized size is tracked entry by entry (so `--max-signal-state` is
//! enforced without serializing it), and the `SignalSync` a joiner needs is
//! built lazily, at most once per state version (a burst of joiners shares
//! one).
//!
//! A joiner may be sent a state newer than its picture snapshot: the live
//! signal messages after the snapshot are then replayed on top of it, which
//! converges to the same state (a sync replaces; a diff sets each of its
//! keys to its value, so replaying a suffix in order ends where the source
//! did).

use std::collections::HashMap;
use std::sync::Arc;

use bitstream_wire::protocol::{self, Header};
use bitstream_wire::signal::{self, SignalError};
use bitstream_wire::ws;
use bytes::Bytes;
use serde_json::Value;

use super::CacheError;
use crate::relay::resources::budget::{charge_made, Budget};

/// The folded signal state. See the module docs.
#[derive(Debug)]
pub(crate) struct SignalState {
    state: signal::State,
    /// Serialized size of each `"key":value` entry.
    entry_sizes: HashMap<String, usize>,
    /// Sum of `entry_sizes`.
    entries_bytes: usize,
    /// Seq and timestamp of the last signal message folded in; `None` until
    /// the first one (then there is no signal state to catch up on).
    last: Option<(u16, u32)>,
    /// Bumped by every change.
    version: u64,
    /// The last `SignalSync` built, and the version it was built from.
    encoded: Option<(u64, Bytes)>,
    limit: usize,
    /// The state was dropped ([`SignalState::forget`]): diffs are checked
    /// but not folded until the next sync makes it whole again.
    forgotten: bool,
    /// Where a large `SignalSync` frame is charged while it lives.
    memory: Arc<Budget>,
}

/// Serialized size of one object entry `"key":value`.
fn entry_size(key: &str, value: &Value) -> usize {
    json_len(&Value::String(key.to_owned())) + 1 + json_len(value)
}

fn json_len(v: &Value) -> usize {
    serde_json::to_vec(v).map_or(usize::MAX / 4, |j| j.len())
}

/// Serialized size of an object with `n` entries totalling `entries` bytes.
fn object_size(n: usize, entries: usize) -> usize {
    2 + entries + n.saturating_sub(1)
}

impl SignalState {
    /// An empty state; the folded JSON may not exceed `limit` bytes.
    pub(crate) fn new(limit: usize, memory: Arc<Budget>) -> Self {
        Self {
            memory,
            state: signal::State::new(),
            entry_sizes: HashMap::new(),
            entries_bytes: 0,
            last: None,
            version: 0,
            encoded: None,
            limit,
            forgotten: false,
        }
    }

    /// The limit this state enforces.
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// Serialized size of the folded state (0 before any signal message).
    pub(crate) fn size(&self) -> usize {
        match self.last {
            Some(_) => object_size(self.state.len(), self.entries_bytes),
            None => 0,
        }
    }

    /// True before any signal message was folded in.
    pub(crate) fn is_empty(&self) -> bool {
        self.last.is_none()
    }

    /// Folds a sync (`diff` false) or diff into the state, in O(payload).
    /// Refused without any change if it is larger than the limit (before
    /// parsing it), not one JSON object, or would make the folded state
    /// larger than the limit.
    pub(crate) fn apply(
        &mut self,
        diff: bool,
        payload: &[u8],
        h: &Header,
    ) -> Result<(), CacheError> {
        if payload.len() > self.limit {
            return Err(self.too_large(payload.len()));
        }
        let obj = signal::parse(payload)?;
        if self.forgotten && diff {
            return Ok(());
        }
        self.forgotten = false;
        let sizes: Vec<Option<usize>> = obj
            .iter()
            .map(|(k, v)| (!(diff && v.is_null())).then(|| entry_size(k, v)))
            .collect();
        let (n, entries) = if diff {
            let mut n = self.state.len();
            let mut entries = self.entries_bytes;
            for ((k, _), new) in obj.iter().zip(&sizes) {
                if let Some(old) = self.entry_sizes.get(k) {
                    n -= 1;
                    entries -= old;
                }
                if let Some(s) = new {
                    n += 1;
                    entries += s;
                }
            }
            (n, entries)
        } else {
            (obj.len(), sizes.iter().flatten().sum())
        };
        let size = object_size(n, entries);
        if size > self.limit {
            return Err(self.too_large(size));
        }
        if !diff {
            self.entry_sizes.clear();
        }
        for ((k, _), new) in obj.iter().zip(&sizes) {
            match new {
                Some(s) => self.entry_sizes.insert(k.clone(), *s),
                None => self.entry_sizes.remove(k),
            };
        }
        signal::fold(&mut self.state, diff, obj);
        self.entries_bytes = entries;
        self.last = Some((h.seq, h.timestamp));
        self.version += 1;
        Ok(())
    }

    /// Drops the state to save memory; it stays unknown until the next sync.
    pub(crate) fn forget(&mut self) {
        *self = Self::new(self.limit, self.memory.clone());
        self.forgotten = true;
    }

    fn too_large(&self, size: usize) -> CacheError {
        CacheError::SignalTooLarge {
            size,
            limit: self.limit,
        }
    }

    /// The state as one `SignalSync` wire frame (stamped with the last
    /// signal message's seq and timestamp), built at most once per version.
    pub(crate) fn sync_frame(&mut self) -> Option<Bytes> {
        let (seq, ts) = self.last?;
        if let Some((v, frame)) = &self.encoded {
            if *v == self.version {
                return Some(frame.clone());
            }
        }
        let json = serde_json::to_vec(&self.state)
            .map_err(|e| SignalError::Json(e.to_string()))
            .ok()?;
        let msg = protocol::signal(false, seq, ts, &json);
        let frame = charge_made(
            Bytes::from(ws::server_frame(ws::OP_BINARY, &msg)),
            &self.memory,
        );
        self.encoded = Some((self.version, frame.clone()));
        Some(frame)
    }

    /// The folded state (for tests).
    #[cfg(test)]
    pub(crate) fn state(&self) -> &signal::State {
        &self.state
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::unlimited;
    use super::*;
    use proptest::prelude::*;

    fn header() -> Header {
        Header::default()
    }

    proptest! {
        /// The tracked size is exactly the serialized size of the state,
        /// whatever syncs and diffs were folded in.
        #[test]
        fn tracked_size_is_the_serialized_size(
            msgs in proptest::collection::vec(
                (any::<bool>(), proptest::collection::btree_map("[a-c\"é]{0,3}", proptest::option::of(0i64..1000), 0..4)),
                1..8,
            )
        ) {
            let mut s = SignalState::new(1 << 20, unlimited());
            for (diff, kv) in msgs {
                let obj: serde_json::Map<String, Value> = kv
                    .into_iter()
                    .map(|(k, v)| (k, v.map_or(Value::Null, Value::from)))
                    .collect();
                let json = serde_json::to_vec(&obj).unwrap();
                s.apply(diff, &json, &header()).unwrap();
                prop_assert_eq!(s.size(), serde_json::to_vec(s.state()).unwrap().len());
            }
        }
    }

    #[test]
    fn over_the_limit_changes_nothing() {
        let mut s = SignalState::new(20, unlimited());
        s.apply(false, br#"{"a":1}"#, &header()).unwrap();
        let before = s.sync_frame();
        assert!(s
            .apply(true, br#"{"bbbbbbbbbbbbbbbbbbb":1}"#, &header())
            .is_err());
        assert!(
            s.apply(false, &[b' '; 21], &header()).is_err(),
            "refused before parsing"
        );
        assert_eq!(s.sync_frame(), before);
        assert_eq!(s.size(), 7);
    }

    #[test]
    fn a_forgotten_state_waits_for_the_next_sync() {
        let mut s = SignalState::new(1000, unlimited());
        s.apply(false, br#"{"a":1,"b":2}"#, &header()).unwrap();
        s.forget();
        s.apply(true, br#"{"c":3}"#, &header()).unwrap();
        assert_eq!(
            s.sync_frame(),
            None,
            "a diff alone would give a wrong state"
        );
        assert!(s.apply(true, b"[1]", &header()).is_err(), "still validated");
        s.apply(false, br#"{"z":0}"#, &header()).unwrap();
        assert!(s.sync_frame().unwrap().ends_with(br#"{"z":0}"#));
    }

    #[test]
    fn the_sync_frame_is_built_once_per_version() {
        let mut s = SignalState::new(1000, unlimited());
        assert_eq!(s.sync_frame(), None);
        s.apply(false, b"{}", &header()).unwrap();
        let a = s.sync_frame().unwrap();
        let b = s.sync_frame().unwrap();
        assert_eq!(a.as_ptr(), b.as_ptr(), "shared, not rebuilt");
        s.apply(true, br#"{"k":[1,2]}"#, &header()).unwrap();
        let c = s.sync_frame().unwrap();
        assert!(c.ends_with(br#"{"k":[1,2]}"#));
    }
}
