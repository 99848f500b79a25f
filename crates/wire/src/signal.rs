//! The signal-state rule of PROTOCOL.md, shared by the relay (which keeps
//! the folded state for late joiners) and the clients (which rebuild it):
//! a `SignalSync` replaces the whole state, a `SignalDiff` merges its keys
//! shallowly, and a `null` value in a diff deletes its key.

use serde_json::{Map, Value};
use thiserror::Error;

/// The signal state: one JSON object.
pub type State = Map<String, Value>;

/// Why a signal payload cannot be folded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SignalError {
    /// The payload is not JSON.
    #[error("signal payload is not valid JSON: {0}")]
    Json(String),
    /// The payload is JSON but not an object.
    #[error("signal payload is not a JSON object")]
    NotObject,
}

/// Parses a signal payload, which must be one JSON object.
pub fn parse(json: &[u8]) -> Result<State, SignalError> {
    match serde_json::from_slice(json) {
        Ok(Value::Object(obj)) => Ok(obj),
        Ok(_) => Err(SignalError::NotObject),
        Err(e) => Err(SignalError::Json(e.to_string())),
    }
}

/// What [`fold`] changed, so that [`Undo::revert`] can restore the state.
#[derive(Debug)]
#[must_use = "drop it to keep the change, or revert it"]
pub enum Undo {
    /// A sync replaced this state.
    Replaced(State),
    /// A diff set these keys; each had this value before (`None`: absent).
    Merged(Vec<(String, Option<Value>)>),
}

impl Undo {
    /// Restores the state as it was before the fold that returned this.
    pub fn revert(self, state: &mut State) {
        match self {
            Undo::Replaced(old) => *state = old,
            Undo::Merged(keys) => {
                for (k, old) in keys.into_iter().rev() {
                    match old {
                        Some(v) => state.insert(k, v),
                        None => state.remove(&k),
                    };
                }
            }
        }
    }
}

/// Folds one parsed message into `state`: a sync (`diff` false) replaces
/// it, a diff merges its keys and deletes those set to `null`.
pub fn fold(state: &mut State, diff: bool, obj: State) -> Undo {
    if !diff {
        return Undo::Replaced(std::mem::replace(state, obj));
    }
    let mut undo = Vec::with_capacity(obj.len());
    for (k, v) in obj {
        let old = if v.is_null() {
            state.remove(&k)
        } else {
            state.insert(k.clone(), v)
        };
        undo.push((k, old));
    }
    Undo::Merged(undo)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn obj(v: Value) -> State {
        match v {
            Value::Object(o) => o,
            _ => unreachable!("test values are objects"),
        }
    }

    #[test]
    fn sync_replaces_diff_merges_null_deletes() {
        let mut s = State::new();
        let _ = fold(&mut s, false, obj(json!({"a": 1, "b": 2})));
        let _ = fold(&mut s, true, obj(json!({"b": null, "c": [3]})));
        assert_eq!(Value::Object(s.clone()), json!({"a": 1, "c": [3]}));
        let _ = fold(&mut s, false, obj(json!({"z": true})));
        assert_eq!(Value::Object(s), json!({"z": true}));
    }

    #[test]
    fn parse_wants_an_object() {
        assert!(parse(br#"{"k":1}"#).is_ok());
        assert_eq!(parse(b"[1]"), Err(SignalError::NotObject));
        assert!(matches!(parse(b"{"), Err(SignalError::Json(_))));
    }

    proptest! {
        /// Reverting any fold gives back exactly the state before it, even
        /// when a diff names the same key twice.
        #[test]
        fn revert_restores(
            before in proptest::collection::btree_map("[a-d]", 0i64..4, 0..4),
            keys in proptest::collection::vec(("[a-e]", proptest::option::of(0i64..4)), 0..6),
            diff: bool,
        ) {
            let mut state: State = before.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
            let original = state.clone();
            let msg: State = keys.iter().map(|(k, v)| (k.clone(), v.map_or(Value::Null, |v| json!(v)))).collect();
            fold(&mut state, diff, msg).revert(&mut state);
            prop_assert_eq!(state, original);
        }
    }
}
