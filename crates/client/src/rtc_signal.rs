//! The signaling messages of the WebRTC upgrade (`docs/webrtc.md`), as
//! text on `/signal/{name}`, where every peer of the channel sees every
//! message: JSON objects `{"v": 1, "t": …, "from": …, "to": …, "sdp": …}`.
//! A receiver offers to whoever is the source (no `to`); the source answers
//! it (`to` = the receiver's id), or says `busy` at its peer cap; either
//! side says `bye` when it closes. Candidates ride in the SDP (no trickle).
//! The browser client (`web/client.js`) speaks the same.

use serde_json::{json, Value};

/// One signaling message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RtcSignal {
    /// A receiver's offer, to the channel's source.
    Offer {
        /// The receiver's peer id.
        from: String,
        /// The offer SDP.
        sdp: String,
    },
    /// The source's answer to one receiver.
    Answer {
        /// The source's peer id.
        from: String,
        /// The receiver's peer id.
        to: String,
        /// The answer SDP.
        sdp: String,
    },
    /// The source is at its peer cap: the receiver stays on the relay.
    Busy {
        /// The source's peer id.
        from: String,
        /// The receiver's peer id.
        to: String,
    },
    /// The sender closed its peer connection with `to`.
    Bye {
        /// Who closed.
        from: String,
        /// The other side.
        to: String,
    },
}

impl RtcSignal {
    /// Parses a signaling text; `None` for anything else (other peers may
    /// speak other schemes on the same channel).
    pub fn parse(text: &str) -> Option<Self> {
        let v: Value = serde_json::from_str(text).ok()?;
        if v.get("v")?.as_u64()? != 1 {
            return None;
        }
        let field = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        let from = field("from")?;
        match v.get("t")?.as_str()? {
            "offer" => Some(Self::Offer {
                from,
                sdp: field("sdp")?,
            }),
            "answer" => Some(Self::Answer {
                from,
                to: field("to")?,
                sdp: field("sdp")?,
            }),
            "busy" => Some(Self::Busy {
                from,
                to: field("to")?,
            }),
            "bye" => Some(Self::Bye {
                from,
                to: field("to")?,
            }),
            _ => None,
        }
    }

    /// The JSON text to send.
    pub fn to_text(&self) -> String {
        match self {
            Self::Offer { from, sdp } => json!({ "v": 1, "t": "offer", "from": from, "sdp": sdp }),
            Self::Answer { from, to, sdp } => {
                json!({ "v": 1, "t": "answer", "from": from, "to": to, "sdp": sdp })
            }
            Self::Busy { from, to } => json!({ "v": 1, "t": "busy", "from": from, "to": to }),
            Self::Bye { from, to } => json!({ "v": 1, "t": "bye", "from": from, "to": to }),
        }
        .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_round_trips_and_strangers_are_ignored() {
        let all = [
            RtcSignal::Offer {
                from: "r-1".into(),
                sdp: "v=0\r\n".into(),
            },
            RtcSignal::Answer {
                from: "s-1".into(),
                to: "r-1".into(),
                sdp: "v=0\r\n".into(),
            },
            RtcSignal::Busy {
                from: "s-1".into(),
                to: "r-1".into(),
            },
            RtcSignal::Bye {
                from: "r-1".into(),
                to: "s-1".into(),
            },
        ];
        for m in all {
            assert_eq!(RtcSignal::parse(&m.to_text()), Some(m));
        }
        for other in [
            "",
            "{}",
            "[1]",
            r#"{"v":2,"t":"offer","from":"a","sdp":""}"#,
            r#"{"v":1,"t":"answer","from":"a","sdp":""}"#,
            r#"{"v":1,"t":"hello","from":"a"}"#,
        ] {
            assert_eq!(RtcSignal::parse(other), None, "{other}");
        }
    }
}
