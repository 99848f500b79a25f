//! A source that sends pictures (keyframes and ZRLE deltas, choosing for
//! itself), signal state and other frames, and reads the receivers' inputs.
//! After a reconnect it first sends its current picture as a keyframe and
//! its whole signal state as a `SignalSync`, so the relay and every
//! receiver resynchronize.

use std::time::{Instant, SystemTime};

use bitstream_wire::codec;
use bitstream_wire::protocol;
use bitstream_wire::signal;
use bytes::Bytes;

use crate::conn::{ClientError, Message};
use crate::receiver::Picture;
use crate::reconnect::Link;

/// Largest message a source accepts (inputs are small).
const MAX_MESSAGE: usize = 16 << 20;

/// Default for [`Source::keyframe_interval`].
const KEYFRAME_INTERVAL: u32 = 120;

/// A source on a `/source/{name}` URL. See the module docs.
pub struct Source {
    link: Link,
    prev: Option<Picture>,
    signal: signal::State,
    seq: u16,
    started: Instant,
    started_wall: SystemTime,
    since_keyframe: u32,
    /// Send a keyframe at least every this many pictures.
    pub keyframe_interval: u32,
}

impl Source {
    /// Connects to a `/source/{name}` URL.
    pub async fn connect(url: &str) -> Result<Self, ClientError> {
        Self::connect_any(&[url]).await
    }

    /// Connects to the first of `urls` (the same channel's `/source/{name}`
    /// on several relays, e.g. the nodes of a cluster) that answers, trying
    /// them in order; after a loss each reconnection goes to the next one,
    /// wrapping around (a node that still sees another node's claim answers
    /// 409 and the source goes on to the next, with backoff). Fails with the
    /// last error if none answers ([`ClientError::NoUrl`] if `urls` is empty).
    pub async fn connect_any<S: AsRef<str>>(urls: &[S]) -> Result<Self, ClientError> {
        Ok(Self {
            link: Link::connect_any(urls, MAX_MESSAGE).await?,
            prev: None,
            signal: signal::State::new(),
            seq: 0,
            started: Instant::now(),
            started_wall: SystemTime::now(),
            since_keyframe: 0,
            keyframe_interval: KEYFRAME_INTERVAL,
        })
    }

    /// Reconnections so far.
    pub fn reconnects(&self) -> u64 {
        self.link.reconnects
    }

    /// The relay URL in use, or tried next while disconnected.
    pub fn current_url(&self) -> &str {
        self.link.current_url()
    }

    /// The wall-clock time of header timestamp 0: a receiver that knows it
    /// (e.g. from the signal state) turns a frame's timestamp into the time
    /// it was sent, and so measures latency.
    pub fn clock_origin(&self) -> SystemTime {
        self.started_wall
    }

    /// The folded signal state this source has sent.
    pub fn signal(&self) -> &signal::State {
        &self.signal
    }

    /// The next header sequence number and timestamp.
    fn stamp(&mut self) -> (u16, u32) {
        self.seq = self.seq.wrapping_add(1);
        (self.seq, self.started.elapsed().as_millis() as u32)
    }

    /// Sends a raw protocol message, reconnecting (and resynchronizing) first
    /// if the connection is down. A message that fails mid-send is retried
    /// once on the new connection. ([`Source::send_picture`] and
    /// [`Source::send_signal_diff`] instead skip their message on a new
    /// connection: the state sent first already holds it.)
    pub async fn send_message(&mut self, msg: &[u8]) -> Result<(), ClientError> {
        self.ensure_connected().await;
        if self.link.send(msg).await.is_ok() {
            return Ok(());
        }
        self.ensure_connected().await;
        self.link.send(msg).await
    }

    /// Sends a message the state sent on a new connection already covers
    /// (a picture or signal diff just folded into it): on a new connection
    /// it is not sent again. A picture's delta is against the picture
    /// before it, so sending it after the keyframe of the picture it makes
    /// would break every receiver's picture.
    async fn send_covered(&mut self, msg: &[u8]) -> Result<(), ClientError> {
        if self.ensure_connected().await {
            return Ok(());
        }
        if self.link.send(msg).await.is_ok() {
            return Ok(());
        }
        if self.ensure_connected().await {
            return Ok(());
        }
        self.link.send(msg).await
    }

    /// Waits for a connection; on a new one, sends the current state first.
    /// True if a new connection was made.
    async fn ensure_connected(&mut self) -> bool {
        let mut fresh = false;
        while self.link.ensure().await {
            fresh = true;
            if self.send_state().await.is_ok() {
                self.since_keyframe = 0;
            }
        }
        fresh
    }

    /// Sends the current picture as a keyframe and the signal state as one
    /// `SignalSync`.
    async fn send_state(&mut self) -> Result<(), ClientError> {
        let (seq, ts) = self.stamp();
        if let Some(p) = &self.prev {
            let msg = protocol::pixels_keyframe(seq, ts, p.width, p.height, &p.rgba);
            self.link.send(&msg).await?;
        }
        if !self.signal.is_empty() {
            // Serializing a JSON object cannot fail.
            let json = serde_json::to_vec(&self.signal).unwrap_or_default();
            self.link
                .send(&protocol::signal(false, seq, ts, &json))
                .await?;
        }
        Ok(())
    }

    /// Sends a picture: a keyframe when needed (first picture, size change,
    /// every `keyframe_interval`, or a delta larger than the picture), else
    /// a ZRLE delta against the previous picture.
    pub async fn send_picture(
        &mut self,
        width: u16,
        height: u16,
        rgba: &[u8],
    ) -> Result<(), ClientError> {
        let (seq, ts) = self.stamp();
        let delta = match &self.prev {
            Some(p)
                if (p.width, p.height) == (width, height)
                    && self.since_keyframe < self.keyframe_interval =>
            {
                let mut z = Vec::new();
                codec::encode_delta(&p.rgba, rgba, &mut z)?;
                (z.len() < rgba.len()).then_some(z)
            }
            _ => None,
        };
        let msg = match delta {
            Some(z) => {
                self.since_keyframe += 1;
                protocol::delta_pixels(seq, ts, width, height, &z)
            }
            None => {
                self.since_keyframe = 0;
                protocol::pixels_keyframe(seq, ts, width, height, rgba)
            }
        };
        self.prev = Some(Picture {
            width,
            height,
            rgba: rgba.to_vec(),
        });
        self.send_covered(&msg).await
    }

    /// Merges `diff` into the signal state and sends it as a `SignalDiff`.
    pub async fn send_signal_diff(&mut self, diff: &signal::State) -> Result<(), ClientError> {
        let json = serde_json::to_vec(diff).unwrap_or_default();
        signal::fold(&mut self.signal, true, diff.clone());
        let (seq, ts) = self.stamp();
        self.send_covered(&protocol::signal(true, seq, ts, &json))
            .await
    }

    /// Receives the next input from a receiver (reconnecting as needed).
    pub async fn recv_input(&mut self) -> Bytes {
        loop {
            self.ensure_connected().await;
            if let Ok(Message::Binary(b)) = self.link.recv().await {
                return b;
            }
        }
    }
}
