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

/// Folds one parsed message into `state`: a sync (`diff` false) replaces
/// it, a diff merges its keys and deletes those set to `null`.
pub fn fold(state: &mut State, diff: bool, obj: State) {
    if !diff {
        *state = obj;
        return;
    }
    for (k, v) in obj {
        if v.is_null() {
            state.remove(&k);
        } else {
            state.insert(k, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        fold(&mut s, false, obj(json!({"a": 1, "b": 2})));
        fold(&mut s, true, obj(json!({"b": null, "c": [3]})));
        assert_eq!(Value::Object(s.clone()), json!({"a": 1, "c": [3]}));
        fold(&mut s, false, obj(json!({"z": true})));
        assert_eq!(Value::Object(s), json!({"z": true}));
    }

    #[test]
    fn parse_wants_an_object() {
        assert!(parse(br#"{"k":1}"#).is_ok());
        assert_eq!(parse(b"[1]"), Err(SignalError::NotObject));
        assert!(matches!(parse(b"{"), Err(SignalError::Json(_))));
    }
}
