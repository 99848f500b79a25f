//! A receiver that rebuilds the source's current picture (keyframes and
//! ZRLE deltas) and signal state, and after a reconnect starts over from the
//! relay's catch-up.

use bitstream_wire::codec;
use bitstream_wire::protocol::{FrameType, Header, HEADER_LEN};
use bitstream_wire::signal;
use bytes::Bytes;

use crate::conn::{ClientError, Message};
use crate::reconnect::Link;

/// Largest message a receiver accepts (one 3840x2160 keyframe and more).
const MAX_MESSAGE: usize = 64 << 20;

/// A picture: what a [`Receiver`] has rebuilt, or what a source last sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Picture {
    /// Width in pixels.
    pub width: u16,
    /// Height in pixels.
    pub height: u16,
    /// RGBA8 pixels, `width*height*4` bytes.
    pub rgba: Vec<u8>,
}

/// What [`Receiver::next`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The picture changed (keyframe or delta applied).
    Picture(Header),
    /// The signal state changed.
    Signal(Header),
    /// Any other frame (audio, opaque, ping, stream end, or one that could
    /// not be applied), as received.
    Frame(Header, Bytes),
    /// The connection was lost and re-established; state was reset and the
    /// relay's catch-up follows.
    Reconnected,
}

/// A receiver on a `/stream/{name}` URL. See the module docs.
pub struct Receiver {
    link: Link,
    picture: Option<Picture>,
    signal: signal::State,
    /// Frames received since creation.
    pub frames: u64,
    /// Deltas that could not be applied (no picture yet, or bad data).
    pub undecodable: u64,
}

impl Receiver {
    /// Connects to a `/stream/{name}` URL.
    pub async fn connect(url: &str) -> Result<Self, ClientError> {
        Ok(Self {
            link: Link::connect(url, MAX_MESSAGE).await?,
            picture: None,
            signal: signal::State::new(),
            frames: 0,
            undecodable: 0,
        })
    }

    /// The rebuilt picture, once a keyframe has arrived.
    pub fn picture(&self) -> Option<&Picture> {
        self.picture.as_ref()
    }

    /// The folded signal state.
    pub fn signal(&self) -> &signal::State {
        &self.signal
    }

    /// Reconnections so far.
    pub fn reconnects(&self) -> u64 {
        self.link.reconnects
    }

    /// Sends an input message to the source (lost while disconnected).
    pub async fn send_input(&mut self, msg: &[u8]) -> Result<(), ClientError> {
        self.link.send(msg).await
    }

    /// Receives and applies the next message, reconnecting as needed.
    pub async fn next(&mut self) -> Event {
        loop {
            if self.link.ensure().await {
                // The relay's catch-up is the new truth.
                self.picture = None;
                self.signal.clear();
                return Event::Reconnected;
            }
            if let Ok(Message::Binary(msg)) = self.link.recv().await {
                self.frames += 1;
                return self.apply(msg);
            }
        }
    }

    fn apply(&mut self, msg: Bytes) -> Event {
        let Ok(h) = Header::parse(&msg) else {
            return Event::Frame(Header::default(), msg);
        };
        let payload = &msg[HEADER_LEN..];
        match h.frame_type() {
            FrameType::Pixels | FrameType::Keyframe if payload.len() == h.rgba_len() => {
                self.picture = Some(Picture {
                    width: h.width,
                    height: h.height,
                    rgba: payload.to_vec(),
                });
                Event::Picture(h)
            }
            FrameType::DeltaPixels => {
                let ok = match self.picture.as_mut() {
                    // `apply_delta` validates first: on error the picture is untouched.
                    Some(p) if (p.width, p.height) == (h.width, h.height) => {
                        codec::apply_delta(&mut p.rgba, payload).is_ok()
                    }
                    _ => false,
                };
                if ok {
                    Event::Picture(h)
                } else {
                    self.undecodable += 1;
                    Event::Frame(h, msg)
                }
            }
            t @ (FrameType::SignalSync | FrameType::SignalDiff) => match signal::parse(payload) {
                Ok(obj) => {
                    signal::fold(&mut self.signal, t == FrameType::SignalDiff, obj);
                    Event::Signal(h)
                }
                Err(_) => Event::Frame(h, msg),
            },
            _ => Event::Frame(h, msg),
        }
    }
}
