//! A direct WebRTC peer for the picture DataChannel (`docs/webrtc.md`), on
//! `str0m`: sans-IO, so the caller moves every datagram and the clock. A
//! receiver [offers](DirectPeer::offer) an unordered, unreliable channel
//! (`ordered: false, maxRetransmits: 0`, as the browser client does); a
//! source [answers](DirectPeer::answer) a receiver's (or a browser's) offer
//! and [sends pictures](DirectPeer::send_picture) over it as the wire
//! crate's pieces; the receiver gets whole messages back
//! ([`DirectEvent::Message`]), to be applied by the rule of
//! `bitstream_wire::path_merge`.
//!
//! Every call that changes the peer drains str0m's output at once (its
//! single-mutation rule), queueing datagrams to send
//! ([`DirectPeer::take_transmits`]) and events
//! ([`DirectPeer::take_events`]); [`DirectPeer::deadline`] says when to call
//! [`DirectPeer::timeout`]. Candidates ride in the SDP (no trickle).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

use bitstream_wire::pieces::{self, Assembled, Reassembler, DEFAULT_MAX_PIECE};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::channel::{ChannelConfig, ChannelId, Reliability};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc, RtcError};
use thiserror::Error;

/// Label of the picture DataChannel.
pub const CHANNEL_LABEL: &str = "frames";
/// Largest message a receiver reassembles: a 4096×4096 RGBA keyframe.
const MAX_MESSAGE: usize = 4096 * 4096 * 4 + bitstream_wire::protocol::HEADER_LEN;
/// Unfinished messages a receiver keeps.
const MAX_PENDING: usize = 4;
/// Bytes a source lets wait unacknowledged in the channel before it skips
/// pictures (the receiver gets those from the relay).
const MAX_QUEUED: usize = 1 << 20;
/// Bytes a source keeps unacknowledged in the channel: pieces leave the
/// outbox as acknowledgements come back, so a large picture is not one burst
/// of hundreds of datagrams (which a busy receiver drops, and an unreliable
/// channel does not resend).
const PACE_WINDOW: usize = 64 * 1024;

/// What can go wrong with a direct peer.
#[derive(Debug, Error)]
pub enum DirectError {
    /// The local address is not usable as an ICE host candidate.
    #[error("local address {0} is not a usable candidate")]
    Candidate(SocketAddr),
    /// The remote SDP did not parse.
    #[error("bad SDP: {0}")]
    Sdp(String),
    /// str0m refused an input or failed.
    #[error("webrtc: {0}")]
    Rtc(#[from] RtcError),
    /// An answer came without an offer waiting for it.
    #[error("no offer waits for an answer")]
    NoOffer,
    /// A message could not be split into pieces (empty or too large).
    #[error("a {0}-byte message cannot be split into pieces")]
    Split(usize),
}

/// A datagram to send: from the local address to `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// The local address it goes out from.
    pub from: SocketAddr,
    /// Where it goes.
    pub to: SocketAddr,
    /// The datagram.
    pub bytes: Vec<u8>,
}

/// Something that happened on the peer connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectEvent {
    /// The picture DataChannel is open.
    Open,
    /// A whole message came over the DataChannel.
    Message(Assembled),
    /// The DataChannel or the connection closed or failed.
    Closed,
}

/// One side of a direct peer connection. See the module docs.
pub struct DirectPeer {
    rtc: Rtc,
    channel: Option<ChannelId>,
    pending_offer: Option<SdpPendingOffer>,
    pieces: Reassembler,
    next_id: u16,
    outbox: VecDeque<Vec<u8>>,
    outbox_bytes: usize,
    transmits: VecDeque<Transmit>,
    events: VecDeque<DirectEvent>,
    deadline: Instant,
    closed: bool,
    sent: u64,
    skipped: u64,
}

impl DirectPeer {
    fn new(local: SocketAddr, now: Instant) -> Result<Self, DirectError> {
        let mut rtc = Rtc::builder().build(now);
        let candidate = Candidate::host(local, "udp").map_err(|_| DirectError::Candidate(local))?;
        if rtc.add_local_candidate(candidate).is_none() {
            return Err(DirectError::Candidate(local));
        }
        let mut peer = Self {
            rtc,
            channel: None,
            pending_offer: None,
            pieces: Reassembler::new(MAX_MESSAGE, MAX_PENDING),
            next_id: 0,
            outbox: VecDeque::new(),
            outbox_bytes: 0,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            deadline: now,
            closed: false,
            sent: 0,
            skipped: 0,
        };
        peer.drain()?;
        Ok(peer)
    }

    /// The receiver's side: a peer on the UDP address `local` offering the
    /// unordered, unreliable picture channel; returns it and the offer SDP.
    pub fn offer(local: SocketAddr, now: Instant) -> Result<(Self, String), DirectError> {
        let mut peer = Self::new(local, now)?;
        let mut change = peer.rtc.sdp_api();
        let id = change.add_channel_with_config(ChannelConfig {
            label: CHANNEL_LABEL.into(),
            ordered: false,
            reliability: Reliability::MaxRetransmits { retransmits: 0 },
            ..ChannelConfig::default()
        });
        let (offer, pending) = change
            .apply()
            .ok_or_else(|| DirectError::Sdp("nothing to offer".into()))?;
        peer.channel = Some(id);
        peer.pending_offer = Some(pending);
        peer.drain()?;
        Ok((peer, offer.to_sdp_string()))
    }

    /// Applies the source's answer to this peer's offer.
    pub fn accept_answer(&mut self, sdp: &str) -> Result<(), DirectError> {
        let answer =
            SdpAnswer::from_sdp_string(sdp).map_err(|e| DirectError::Sdp(e.to_string()))?;
        let pending = self.pending_offer.take().ok_or(DirectError::NoOffer)?;
        self.rtc.sdp_api().accept_answer(pending, answer)?;
        self.drain()
    }

    /// The source's side: a peer on the UDP address `local` answering a
    /// receiver's offer (a browser's or a Rust one's); returns it and the
    /// answer SDP.
    pub fn answer(
        local: SocketAddr,
        offer_sdp: &str,
        now: Instant,
    ) -> Result<(Self, String), DirectError> {
        let mut peer = Self::new(local, now)?;
        let offer =
            SdpOffer::from_sdp_string(offer_sdp).map_err(|e| DirectError::Sdp(e.to_string()))?;
        let answer = peer.rtc.sdp_api().accept_offer(offer)?;
        peer.drain()?;
        Ok((peer, answer.to_sdp_string()))
    }

    /// A datagram arrived on the local address from `from`. One that is not
    /// WebRTC (STUN, DTLS) is ignored.
    pub fn receive(
        &mut self,
        now: Instant,
        from: SocketAddr,
        to: SocketAddr,
        bytes: &[u8],
    ) -> Result<(), DirectError> {
        let Ok(contents) = bytes.try_into() else {
            return Ok(());
        };
        let input = Input::Receive(
            now,
            Receive {
                proto: Protocol::Udp,
                source: from,
                destination: to,
                contents,
            },
        );
        if !self.rtc.accepts(&input) {
            return Ok(());
        }
        self.rtc.handle_input(input)?;
        self.drain()?;
        self.pump()
    }

    /// Time went on to `now` (call it at [`DirectPeer::deadline`]).
    pub fn timeout(&mut self, now: Instant) -> Result<(), DirectError> {
        self.rtc.handle_input(Input::Timeout(now))?;
        self.drain()?;
        self.pump()
    }

    /// When the peer next needs [`DirectPeer::timeout`].
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Whether the picture channel is open.
    pub fn is_open(&mut self) -> bool {
        !self.closed
            && self
                .channel
                .is_some_and(|id| self.rtc.channel(id).is_some())
    }

    /// Whether the connection closed or failed.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Datagrams to send, oldest first.
    pub fn take_transmits(&mut self) -> Vec<Transmit> {
        self.transmits.drain(..).collect()
    }

    /// Events, oldest first.
    pub fn take_events(&mut self) -> Vec<DirectEvent> {
        self.events.drain(..).collect()
    }

    /// Pictures sent, and skipped because the channel was congested.
    pub fn sent_skipped(&self) -> (u64, u64) {
        (self.sent, self.skipped)
    }

    /// Messages given up by the reassembler (a piece lost), and pieces refused.
    pub fn dropped_rejected(&self) -> (u64, u64) {
        (self.pieces.dropped(), self.pieces.rejected())
    }

    /// Sends one pixel frame (a whole PROTOCOL.md message) as pieces, with
    /// `base` the seq of the picture a delta applies on (`None` for a
    /// keyframe). Returns whether it was taken: not while the channel is not
    /// open, the previous picture's pieces still wait to go, or more than
    /// 1 MiB is unacknowledged (the receiver takes the relay's copy then).
    /// Pieces go out paced, at most 64 KiB unacknowledged.
    pub fn send_picture(&mut self, message: &[u8], base: Option<u16>) -> Result<bool, DirectError> {
        let Some(id) = self.channel.filter(|_| !self.closed) else {
            return Ok(false);
        };
        let in_flight = match self.rtc.channel(id) {
            None => return Ok(false),
            Some(mut ch) => ch.buffered_amount(),
        };
        // One message at a time in the outbox: a picture that would wait
        // behind another would arrive late anyway (the relay's copy wins).
        if !self.outbox.is_empty() || in_flight > MAX_QUEUED {
            self.skipped += 1;
            return Ok(false);
        }
        let parts = pieces::split(message, self.next_id, base, DEFAULT_MAX_PIECE)
            .ok_or(DirectError::Split(message.len()))?;
        self.next_id = self.next_id.wrapping_add(1);
        for piece in parts {
            self.outbox_bytes += piece.len();
            self.outbox.push_back(piece);
        }
        self.sent += 1;
        self.pump()?;
        Ok(true)
    }

    /// Moves pieces from the outbox into the channel while less than the
    /// pace window is unacknowledged.
    fn pump(&mut self) -> Result<(), DirectError> {
        let Some(id) = self.channel.filter(|_| !self.closed) else {
            self.outbox.clear();
            self.outbox_bytes = 0;
            return Ok(());
        };
        while let Some(piece) = self.outbox.front() {
            let Some(mut ch) = self.rtc.channel(id) else {
                break;
            };
            if ch.buffered_amount() >= PACE_WINDOW || !ch.write(true, piece)? {
                break;
            }
            self.drain()?;
            let len = piece_len(self.outbox.pop_front());
            self.outbox_bytes -= len;
        }
        Ok(())
    }

    /// Closes the connection (the other side sees its channel close).
    pub fn close(&mut self) -> Result<(), DirectError> {
        if !self.closed {
            self.rtc.close()?;
            self.drain()?;
            self.closed = true;
            self.events.push_back(DirectEvent::Closed);
        }
        Ok(())
    }

    /// Drains str0m's output to its next timeout.
    fn drain(&mut self) -> Result<(), DirectError> {
        loop {
            match self.rtc.poll_output()? {
                Output::Timeout(t) => {
                    self.deadline = t;
                    return Ok(());
                }
                Output::Transmit(t) => self.transmits.push_back(Transmit {
                    from: t.source,
                    to: t.destination,
                    bytes: t.contents.to_vec(),
                }),
                Output::Event(e) => self.on_event(e),
            }
        }
    }

    fn on_event(&mut self, e: Event) {
        match e {
            Event::ChannelOpen(id, label) if label == CHANNEL_LABEL => {
                self.channel = Some(id);
                self.events.push_back(DirectEvent::Open);
            }
            Event::ChannelData(d) if Some(d.id) == self.channel && d.binary => {
                match self.pieces.push(&d.data) {
                    Ok(Some(done)) => self.events.push_back(DirectEvent::Message(done)),
                    Ok(None) => {}
                    Err(err) => tracing::debug!(%err, "bad DataChannel piece"),
                }
            }
            Event::ChannelClose(id) if Some(id) == self.channel => self.mark_closed(),
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) | Event::Closed => {
                self.mark_closed()
            }
            _ => {}
        }
    }

    fn mark_closed(&mut self) {
        if !self.closed {
            self.closed = true;
            self.events.push_back(DirectEvent::Closed);
        }
    }
}

fn piece_len(piece: Option<Vec<u8>>) -> usize {
    piece.map_or(0, |p| p.len())
}
