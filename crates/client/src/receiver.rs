//! A receiver that rebuilds the source's current picture (keyframes and
//! ZRLE deltas) and signal state, and after a reconnect either resumes or
//! starts over from the relay's catch-up.
//!
//! **Resume.** The receiver asks the relay for stream marks (`?epoch`):
//! before its catch-up, and before resumed frames, the relay sends a mark
//! naming the stream (its epoch, which changes whenever a source claims
//! the channel, the channel is created anew or a relay restarts) and
//! whether a resume or a full catch-up follows. The receiver remembers the
//! epoch and the header `seq` of the last frame it got that is not a
//! `SignalSync`, and reconnects with `?epoch=<E>&resume=<seq>`. A relay
//! whose current stream is `E` and that still has the frames after `seq`
//! sends exactly those; otherwise (another stream, frames gone) its full
//! catch-up, and the receiver resets its state first. So a resume never
//! glues two streams together. `SignalSync`s do not move the resume point
//! because the relay's catch-up ends with a synthesized one carrying the
//! seq of the last *signal* message, which may be older than the picture
//! it came with; resuming from the frame before a live `SignalSync` only
//! replays that sync, which replaces the state with the same state.
//!
//! While connected, a new source claiming the channel is announced by a
//! `Changed` mark: the state goes on (every receiver sees the new source's
//! frames applied to it) and later resume points belong to the new stream.
//! Against a relay that sends no marks, the receiver falls back to telling
//! a resume by the first frame's seq (`seq + 1` continues the stream), and
//! a reconnect without a known epoch always starts over.

use bitstream_wire::codec;
use bitstream_wire::protocol::{self, FrameType, Header, MarkKind, HEADER_LEN};
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
    /// The connection was lost and re-established; the relay's stream
    /// mark, which comes next, tells whether it resumed (state kept) or
    /// sends its catch-up (state reset then).
    Reconnected,
}

/// How the current connection started, until its first message.
#[derive(Debug, Clone, Copy)]
struct Start {
    /// A reconnection (not the first connection).
    reconnect: bool,
    /// The resume point it asked for, if any.
    asked: Option<u16>,
}

/// A receiver on a `/stream/{name}` URL (or the same channel on several
/// relays of a cluster, see [`Receiver::connect_any`]). See the module docs.
pub struct Receiver {
    link: Link,
    /// Header seq of the last frame that was not a `SignalSync`.
    resume_from: Option<u16>,
    /// The stream (epoch) the frames since the last mark belong to.
    epoch: Option<u64>,
    /// After a connection: the first message decides how it starts (a mark,
    /// or against a relay without marks the seq heuristic).
    starting: Option<Start>,
    picture: Option<Picture>,
    signal: signal::State,
    /// Frames received since creation.
    pub frames: u64,
    /// Deltas that could not be applied (no picture yet, or bad data).
    pub undecodable: u64,
    /// Reconnects the relay resumed (the first frame continued the seq).
    pub resumes: u64,
    /// Reconnects that started over from the relay's full catch-up.
    pub full_catchups: u64,
}

impl Receiver {
    /// Connects to a `/stream/{name}` URL.
    pub async fn connect(url: &str) -> Result<Self, ClientError> {
        Self::connect_any(&[url]).await
    }

    /// Connects to the first of `urls` (the same channel's `/stream/{name}`
    /// on several relays, e.g. the nodes of a cluster) that answers, trying
    /// them in order; after a loss each reconnection goes to the next one,
    /// wrapping around, with `?resume=` as on one relay. Fails with the last
    /// error if none answers ([`ClientError::NoUrl`] if `urls` is empty).
    pub async fn connect_any<S: AsRef<str>>(urls: &[S]) -> Result<Self, ClientError> {
        Ok(Self {
            link: Link::connect_any_with(urls, MAX_MESSAGE, Some("epoch".to_owned())).await?,
            resume_from: None,
            epoch: None,
            starting: Some(Start {
                reconnect: false,
                asked: None,
            }),
            picture: None,
            signal: signal::State::new(),
            frames: 0,
            undecodable: 0,
            resumes: 0,
            full_catchups: 0,
        })
    }

    /// The header seq a reconnect resumes after, if any.
    pub fn resume_point(&self) -> Option<u16> {
        self.resume_from
    }

    /// The relay URL in use (as given, without `resume=`), or tried next
    /// while disconnected.
    pub fn current_url(&self) -> &str {
        self.link.current_url()
    }

    /// The stream the last frames came from, once the relay named it.
    pub fn epoch(&self) -> Option<u64> {
        self.epoch
    }

    /// `epoch=<E>&resume=<seq>` when there is a resume point in a known
    /// stream, else `epoch` (marks only).
    fn resume_query(&self) -> String {
        match (self.epoch, self.resume_from) {
            (Some(e), Some(seq)) => format!("epoch={e:x}&resume={seq}"),
            _ => "epoch".to_owned(),
        }
    }

    /// Drops the rebuilt state: the relay's catch-up is the new truth.
    fn reset(&mut self) {
        self.picture = None;
        self.signal.clear();
        self.resume_from = None;
        self.epoch = None;
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
            if !self.link.is_connected() {
                self.link.set_query(Some(self.resume_query()));
            }
            if self.link.ensure().await {
                self.starting = Some(Start {
                    reconnect: true,
                    asked: self.epoch.and(self.resume_from),
                });
                return Event::Reconnected;
            }
            let Ok(Message::Binary(msg)) = self.link.recv().await else {
                continue;
            };
            let mark = Header::parse(&msg)
                .ok()
                .and_then(|h| protocol::parse_stream_mark(&h));
            if let Some(mark) = mark {
                match mark.kind {
                    MarkKind::Resume => {
                        self.starting = None;
                        self.resumes += 1;
                    }
                    MarkKind::CatchUp => {
                        // The relay's catch-up is the new truth.
                        self.reset();
                        if self.starting.take().is_none_or(|s| s.reconnect) {
                            self.full_catchups += 1;
                        }
                    }
                    // A new source on the same connection: the state goes
                    // on; the last frame belongs to the old stream, so
                    // there is no resume point until the new one's first.
                    MarkKind::Changed => self.resume_from = None,
                }
                self.epoch = Some(mark.epoch);
                continue;
            }
            self.frames += 1;
            if let Some(start) = self.starting.take() {
                // A relay without marks: a frame continuing the seq is a
                // resume, anything else starts over.
                let seq = Header::parse(&msg).map(|h| h.seq).ok();
                match start.asked {
                    Some(from) if seq == Some(from.wrapping_add(1)) => self.resumes += 1,
                    _ if start.reconnect => {
                        self.reset();
                        self.full_catchups += 1;
                    }
                    _ => {}
                }
            }
            return self.apply(msg);
        }
    }

    fn apply(&mut self, msg: Bytes) -> Event {
        let Ok(h) = Header::parse(&msg) else {
            return Event::Frame(Header::default(), msg);
        };
        let payload = &msg[HEADER_LEN..];
        if h.frame_type() != FrameType::SignalSync {
            self.resume_from = Some(h.seq);
        }
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
