//! The bitstream wire protocol of `PROTOCOL.md`: the 16-byte header, the
//! frame and input types, and validation of one message.
//!
//! Pure functions over bytes: nothing here does I/O, so every rule is a unit
//! test away. The relay calls [`validate_source_message`] on everything a
//! source sends and [`validate_input_message`] on everything a receiver sends.

use thiserror::Error;

/// Size of the fixed message header in bytes.
pub const HEADER_LEN: usize = 16;

/// Flag bit: the message is an input event (receiver → source).
pub const FLAG_INPUT: u8 = 0x01;
/// Flag bit: a self-contained frame a receiver can start decoding at.
pub const FLAG_KEYFRAME: u8 = 0x02;
/// Flag bit: the payload is compressed (meaning is type-specific).
pub(crate) const FLAG_COMPRESSED: u8 = 0x04;
/// Mask of the reserved flag bits, which must be zero.
pub(crate) const FLAG_RESERVED: u8 = !(FLAG_INPUT | FLAG_KEYFRAME | FLAG_COMPRESSED);

/// Frame types sent by a source to its receivers (`INPUT` clear).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameType {
    /// Raw RGBA8, `width*height*4` bytes.
    Pixels,
    /// An encoded image (PNG/WebP/…), opaque to the relay.
    CompressedPixels,
    /// `ZRLE(prev XOR cur)` of an RGBA8 frame of the header's size.
    DeltaPixels,
    /// Interleaved PCM; `width` = channels, `height` = sample rate / 10.
    AudioPcm,
    /// Opaque encoded audio.
    AudioCompressed,
    /// Opaque actuator command.
    Haptic,
    /// UTF-8 JSON object: the full signal state (replaces).
    SignalSync,
    /// UTF-8 JSON object: keys to merge into the signal state.
    SignalDiff,
    /// Opaque generated-pixel payload.
    NeuralFrame,
    /// Opaque generated audio.
    NeuralAudio,
    /// Opaque generated actuator command.
    NeuralActuator,
    /// Opaque latent vector.
    NeuralLatent,
    /// A full RGBA8 frame, always cacheable.
    Keyframe,
    /// Empty keepalive.
    Ping,
    /// Empty; the source ended the stream.
    StreamEnd,
    /// A type value PROTOCOL.md does not define.
    Unknown(u8),
}

impl FrameType {
    /// Decodes a header `type` byte of a frame (INPUT clear).
    pub fn from_u8(v: u8) -> Self {
        match v {
            0x01 => Self::Pixels,
            0x02 => Self::CompressedPixels,
            0x03 => Self::DeltaPixels,
            0x10 => Self::AudioPcm,
            0x11 => Self::AudioCompressed,
            0x20 => Self::Haptic,
            0x30 => Self::SignalSync,
            0x31 => Self::SignalDiff,
            0x40 => Self::NeuralFrame,
            0x41 => Self::NeuralAudio,
            0x42 => Self::NeuralActuator,
            0x43 => Self::NeuralLatent,
            0xF0 => Self::Keyframe,
            0xFE => Self::Ping,
            0xFF => Self::StreamEnd,
            other => Self::Unknown(other),
        }
    }

    /// The header `type` byte of this frame type.
    pub fn to_u8(self) -> u8 {
        match self {
            Self::Pixels => 0x01,
            Self::CompressedPixels => 0x02,
            Self::DeltaPixels => 0x03,
            Self::AudioPcm => 0x10,
            Self::AudioCompressed => 0x11,
            Self::Haptic => 0x20,
            Self::SignalSync => 0x30,
            Self::SignalDiff => 0x31,
            Self::NeuralFrame => 0x40,
            Self::NeuralAudio => 0x41,
            Self::NeuralActuator => 0x42,
            Self::NeuralLatent => 0x43,
            Self::Keyframe => 0xF0,
            Self::Ping => 0xFE,
            Self::StreamEnd => 0xFF,
            Self::Unknown(v) => v,
        }
    }
}

/// Input types sent by a receiver to the source (`INPUT` set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InputType {
    /// Pointer move: x:u16, y:u16, buttons:u8.
    Pointer,
    /// Pointer press: x:u16, y:u16, buttons:u8.
    PointerDown,
    /// Pointer release: x:u16, y:u16, buttons:u8.
    PointerUp,
    /// Key press: keycode:u16, modifiers:u8.
    KeyDown,
    /// Key release: keycode:u16, modifiers:u8.
    KeyUp,
    /// Touch: id:u8, x:u16, y:u16.
    Touch,
    /// Touch end: id:u8, x:u16, y:u16.
    TouchEnd,
    /// Gamepad axis: axis:u8, value:i16.
    GamepadAxis,
    /// Gamepad button: button:u8, pressed:u8, value:u16.
    GamepadButton,
    /// MIDI message: status:u8, data1:u8, data2:u8.
    Midi,
    /// Scroll: dx:i16, dy:i16.
    Scroll,
    /// Viewport resize: width:u16, height:u16.
    Resize,
    /// Opaque brain-computer-interface samples.
    BciInput,
    /// A type value PROTOCOL.md does not define.
    Unknown(u8),
}

impl InputType {
    /// Decodes a header `type` byte of an input (INPUT set).
    pub fn from_u8(v: u8) -> Self {
        match v {
            0x01 => Self::Pointer,
            0x02 => Self::PointerDown,
            0x03 => Self::PointerUp,
            0x10 => Self::KeyDown,
            0x11 => Self::KeyUp,
            0x20 => Self::Touch,
            0x21 => Self::TouchEnd,
            0x30 => Self::GamepadAxis,
            0x31 => Self::GamepadButton,
            0x40 => Self::Midi,
            0x50 => Self::Scroll,
            0x60 => Self::Resize,
            0x90 => Self::BciInput,
            other => Self::Unknown(other),
        }
    }

    /// The header `type` byte of this input type.
    pub fn to_u8(self) -> u8 {
        match self {
            Self::Pointer => 0x01,
            Self::PointerDown => 0x02,
            Self::PointerUp => 0x03,
            Self::KeyDown => 0x10,
            Self::KeyUp => 0x11,
            Self::Touch => 0x20,
            Self::TouchEnd => 0x21,
            Self::GamepadAxis => 0x30,
            Self::GamepadButton => 0x31,
            Self::Midi => 0x40,
            Self::Scroll => 0x50,
            Self::Resize => 0x60,
            Self::BciInput => 0x90,
            Self::Unknown(v) => v,
        }
    }

    /// The exact payload size PROTOCOL.md gives this input type; `None` for
    /// opaque (`BciInput`) and unknown types.
    pub fn payload_len(self) -> Option<usize> {
        match self {
            Self::Pointer | Self::PointerDown | Self::PointerUp => Some(5),
            Self::KeyDown | Self::KeyUp => Some(3),
            Self::Touch | Self::TouchEnd => Some(5),
            Self::GamepadAxis => Some(3),
            Self::GamepadButton => Some(4),
            Self::Midi => Some(3),
            Self::Scroll | Self::Resize => Some(4),
            Self::BciInput | Self::Unknown(_) => None,
        }
    }
}

/// The 16-byte message header, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    /// Raw type byte: a [`FrameType`] or, with `FLAG_INPUT`, an [`InputType`].
    pub kind: u8,
    /// Flag bits (`FLAG_*`).
    pub flags: u8,
    /// Sequence number, wraps.
    pub seq: u16,
    /// Milliseconds since the stream started.
    pub timestamp: u32,
    /// Width in pixels for pixel frames; type-specific otherwise.
    pub width: u16,
    /// Height in pixels for pixel frames; type-specific otherwise.
    pub height: u16,
    /// Payload length in bytes.
    pub length: u32,
}

impl Header {
    /// Decodes the first 16 bytes of `buf`.
    pub fn parse(buf: &[u8]) -> Result<Self, ProtocolError> {
        let h: &[u8; HEADER_LEN] = buf
            .get(..HEADER_LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or(ProtocolError::TooShort(buf.len()))?;
        Ok(Self {
            kind: h[0],
            flags: h[1],
            seq: u16::from_le_bytes([h[2], h[3]]),
            timestamp: u32::from_le_bytes([h[4], h[5], h[6], h[7]]),
            width: u16::from_le_bytes([h[8], h[9]]),
            height: u16::from_le_bytes([h[10], h[11]]),
            length: u32::from_le_bytes([h[12], h[13], h[14], h[15]]),
        })
    }

    /// Encodes the header into its 16 wire bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0] = self.kind;
        b[1] = self.flags;
        b[2..4].copy_from_slice(&self.seq.to_le_bytes());
        b[4..8].copy_from_slice(&self.timestamp.to_le_bytes());
        b[8..10].copy_from_slice(&self.width.to_le_bytes());
        b[10..12].copy_from_slice(&self.height.to_le_bytes());
        b[12..16].copy_from_slice(&self.length.to_le_bytes());
        b
    }

    /// True if the `INPUT` flag is set.
    pub fn is_input(&self) -> bool {
        self.flags & FLAG_INPUT != 0
    }

    /// True if the `KEYFRAME` flag is set.
    pub fn is_keyframe(&self) -> bool {
        self.flags & FLAG_KEYFRAME != 0
    }

    /// The frame type (meaningful when `INPUT` is clear).
    pub fn frame_type(&self) -> FrameType {
        FrameType::from_u8(self.kind)
    }

    /// The input type (meaningful when `INPUT` is set).
    pub fn input_type(&self) -> InputType {
        InputType::from_u8(self.kind)
    }

    /// `width*height*4`: the byte size of an RGBA8 frame of this header's size.
    pub fn rgba_len(&self) -> usize {
        self.width as usize * self.height as usize * 4
    }
}

/// Every way a message can break PROTOCOL.md.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProtocolError {
    /// The message is shorter than the 16-byte header.
    #[error("message of {0} bytes is shorter than the 16-byte header")]
    TooShort(usize),
    /// The header's length field does not equal the payload size.
    #[error("header length field {header} does not match the payload size {actual}")]
    LengthMismatch {
        /// The header's `length` field.
        header: u32,
        /// The bytes actually following the header.
        actual: usize,
    },
    /// Reserved flag bits (3–7) are set.
    #[error("reserved flag bits set: flags {0:#04x}")]
    ReservedFlags(u8),
    /// A source sent a message with the INPUT flag.
    #[error("a source may not send input messages")]
    InputFromSource,
    /// A receiver sent a message without the INPUT flag.
    #[error("a receiver may only send input messages (INPUT flag clear)")]
    NotAnInput,
    /// The frame type is not defined by PROTOCOL.md.
    #[error("unknown frame type {0:#04x}")]
    UnknownFrameType(u8),
    /// The input type is not defined by PROTOCOL.md.
    #[error("unknown input type {0:#04x}")]
    UnknownInputType(u8),
    /// A `Pixels`/`Keyframe` payload is not `width*height*4` bytes.
    #[error("pixel payload of {actual} bytes, expected width*height*4 = {expected}")]
    PixelSize {
        /// `width*height*4` from the header.
        expected: usize,
        /// The payload size.
        actual: usize,
    },
    /// A pixel or delta frame with zero width or height.
    #[error("pixel frame with zero width or height")]
    EmptyFrame,
    /// An input payload has the wrong size for its type.
    #[error("input {kind:?} payload of {actual} bytes, expected {expected}")]
    InputSize {
        /// The input type.
        kind: InputType,
        /// The size PROTOCOL.md gives it.
        expected: usize,
        /// The payload size.
        actual: usize,
    },
    /// A `Ping`/`StreamEnd` frame carries a payload.
    #[error("{0:?} frame must have an empty payload")]
    NonEmptyPayload(FrameType),
    /// A source sent a `Ping` with `KEYFRAME` set: that shape is the
    /// relay's stream mark ([`stream_mark`]), which only the relay sends.
    #[error("a Ping with KEYFRAME set is the relay's stream mark; sources may not send it")]
    MarkFromSource,
}

/// Checks the rules every message shares: header present, length field equal
/// to the payload size, reserved flags zero. Returns the decoded header.
pub(crate) fn check_envelope(msg: &[u8]) -> Result<Header, ProtocolError> {
    let h = Header::parse(msg)?;
    let actual = msg.len() - HEADER_LEN;
    if h.length as usize != actual || (h.length as u64) > u32::MAX as u64 {
        return Err(ProtocolError::LengthMismatch {
            header: h.length,
            actual,
        });
    }
    if h.flags & FLAG_RESERVED != 0 {
        return Err(ProtocolError::ReservedFlags(h.flags));
    }
    Ok(h)
}

/// Validates a message a source sent: envelope, a known frame type, and the
/// per-type payload rules. `DeltaPixels` payloads are only checked for a
/// non-empty frame size here; the relay checks the ZRLE stream with
/// `codec::zrle_validate`, and signal JSON is checked by the signal fold.
pub fn validate_source_message(msg: &[u8]) -> Result<Header, ProtocolError> {
    let h = check_envelope(msg)?;
    if h.is_input() {
        return Err(ProtocolError::InputFromSource);
    }
    let payload = h.length as usize;
    match h.frame_type() {
        FrameType::Unknown(v) => return Err(ProtocolError::UnknownFrameType(v)),
        FrameType::Pixels | FrameType::Keyframe => {
            if h.width == 0 || h.height == 0 {
                return Err(ProtocolError::EmptyFrame);
            }
            if payload != h.rgba_len() {
                return Err(ProtocolError::PixelSize {
                    expected: h.rgba_len(),
                    actual: payload,
                });
            }
        }
        FrameType::DeltaPixels if (h.width == 0 || h.height == 0) => {
            return Err(ProtocolError::EmptyFrame);
        }
        t @ (FrameType::Ping | FrameType::StreamEnd) if payload != 0 => {
            return Err(ProtocolError::NonEmptyPayload(t));
        }
        FrameType::Ping if h.flags & FLAG_KEYFRAME != 0 => {
            return Err(ProtocolError::MarkFromSource);
        }
        _ => {}
    }
    Ok(h)
}

/// Validates a message a receiver sent: envelope, INPUT flag, a known input
/// type and the payload size its table row gives.
pub fn validate_input_message(msg: &[u8]) -> Result<Header, ProtocolError> {
    let h = check_envelope(msg)?;
    if !h.is_input() {
        return Err(ProtocolError::NotAnInput);
    }
    let kind = h.input_type();
    if let InputType::Unknown(v) = kind {
        return Err(ProtocolError::UnknownInputType(v));
    }
    if let Some(expected) = kind.payload_len() {
        let actual = h.length as usize;
        if actual != expected {
            return Err(ProtocolError::InputSize {
                kind,
                expected,
                actual,
            });
        }
    }
    Ok(h)
}

/// Builds a complete message: header (with `length` filled in) + payload.
pub(crate) fn build_message(mut header: Header, payload: &[u8]) -> Vec<u8> {
    header.length = payload.len() as u32;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&header.to_bytes());
    out.extend_from_slice(payload);
    out
}

/// Builds a frame message of `kind` with the given flags, seq, timestamp and size.
pub fn frame(
    kind: FrameType,
    flags: u8,
    seq: u16,
    timestamp: u32,
    (width, height): (u16, u16),
    payload: &[u8],
) -> Vec<u8> {
    build_message(
        Header {
            kind: kind.to_u8(),
            flags: flags & !FLAG_INPUT,
            seq,
            timestamp,
            width,
            height,
            length: 0,
        },
        payload,
    )
}

/// Builds a keyframe `Pixels` message (KEYFRAME set) of raw RGBA8 bytes.
pub fn pixels_keyframe(seq: u16, timestamp: u32, width: u16, height: u16, rgba: &[u8]) -> Vec<u8> {
    frame(
        FrameType::Pixels,
        FLAG_KEYFRAME,
        seq,
        timestamp,
        (width, height),
        rgba,
    )
}

/// Builds a `DeltaPixels` message around an already ZRLE-encoded payload.
pub fn delta_pixels(seq: u16, timestamp: u32, width: u16, height: u16, zrle: &[u8]) -> Vec<u8> {
    frame(
        FrameType::DeltaPixels,
        0,
        seq,
        timestamp,
        (width, height),
        zrle,
    )
}

/// Builds a `SignalSync` (full state) or `SignalDiff` message from JSON text.
pub fn signal(diff: bool, seq: u16, timestamp: u32, json: &[u8]) -> Vec<u8> {
    let kind = if diff {
        FrameType::SignalDiff
    } else {
        FrameType::SignalSync
    };
    frame(kind, 0, seq, timestamp, (0, 0), json)
}

/// What a relay's stream mark says (see [`stream_mark`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamMark {
    /// The stream the frames after the mark belong to: it changes whenever
    /// a source claims the channel, the channel is created anew (a relay
    /// restart included), or a cluster node loses the stream it follows.
    pub epoch: u64,
    /// What follows the mark.
    pub kind: MarkKind,
}

/// What follows a stream mark (its header `seq`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkKind {
    /// The relay's full catch-up: reset the state, then rebuild it (0).
    CatchUp,
    /// The frames after the receiver's resume point: keep the state (1).
    Resume,
    /// While connected, the channel's stream changed (a new source claimed
    /// it): keep the state, as every receiver sees the new source's frames
    /// applied to it; resume points from now on belong to `epoch` (2).
    Changed,
}

/// Builds a relay's stream mark: a `Ping` with `KEYFRAME` set and no
/// payload, sent to a receiver that asked for marks (`?epoch`). The 64-bit
/// epoch rides in the header's `timestamp` (low 32 bits), `width` (bits
/// 32–47) and `height` (bits 48–63), type-specific fields for a `Ping`;
/// `seq` is the [`MarkKind`]. A client that does not know marks sees a
/// keepalive.
pub fn stream_mark(mark: StreamMark) -> [u8; HEADER_LEN] {
    Header {
        kind: FrameType::Ping.to_u8(),
        flags: FLAG_KEYFRAME,
        seq: match mark.kind {
            MarkKind::CatchUp => 0,
            MarkKind::Resume => 1,
            MarkKind::Changed => 2,
        },
        timestamp: mark.epoch as u32,
        width: (mark.epoch >> 32) as u16,
        height: (mark.epoch >> 48) as u16,
        length: 0,
    }
    .to_bytes()
}

/// Reads a relay's stream mark from a message header: `None` for any other
/// message (an unknown kind included).
pub fn parse_stream_mark(h: &Header) -> Option<StreamMark> {
    if h.frame_type() != FrameType::Ping || h.flags != FLAG_KEYFRAME || h.length != 0 {
        return None;
    }
    let kind = match h.seq {
        0 => MarkKind::CatchUp,
        1 => MarkKind::Resume,
        2 => MarkKind::Changed,
        _ => return None,
    };
    Some(StreamMark {
        epoch: u64::from(h.timestamp) | u64::from(h.width) << 32 | u64::from(h.height) << 48,
        kind,
    })
}

/// Builds an input message (INPUT set) with the given raw payload.
pub fn input(kind: InputType, seq: u16, timestamp: u32, payload: &[u8]) -> Vec<u8> {
    build_message(
        Header {
            kind: kind.to_u8(),
            flags: FLAG_INPUT,
            seq,
            timestamp,
            ..Header::default()
        },
        payload,
    )
}

/// Builds a pointer-family input (`Pointer`, `PointerDown`, `PointerUp`).
pub fn pointer_input(
    kind: InputType,
    seq: u16,
    timestamp: u32,
    x: u16,
    y: u16,
    buttons: u8,
) -> Vec<u8> {
    let mut p = [0u8; 5];
    p[0..2].copy_from_slice(&x.to_le_bytes());
    p[2..4].copy_from_slice(&y.to_le_bytes());
    p[4] = buttons;
    input(kind, seq, timestamp, &p)
}

/// Builds a key input (`KeyDown`/`KeyUp`).
pub fn key_input(down: bool, seq: u16, timestamp: u32, keycode: u16, modifiers: u8) -> Vec<u8> {
    let mut p = [0u8; 3];
    p[0..2].copy_from_slice(&keycode.to_le_bytes());
    p[2] = modifiers;
    let kind = if down {
        InputType::KeyDown
    } else {
        InputType::KeyUp
    };
    input(kind, seq, timestamp, &p)
}

/// A decoded pointer-family input payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PointerEvent {
    /// X coordinate in pixels.
    pub x: u16,
    /// Y coordinate in pixels.
    pub y: u16,
    /// Button bit mask.
    pub buttons: u8,
}

/// Decodes a validated pointer-family input message's payload.
pub fn parse_pointer(msg: &[u8]) -> Result<PointerEvent, ProtocolError> {
    let h = validate_input_message(msg)?;
    let p = &msg[HEADER_LEN..];
    match h.input_type() {
        InputType::Pointer | InputType::PointerDown | InputType::PointerUp => Ok(PointerEvent {
            x: u16::from_le_bytes([p[0], p[1]]),
            y: u16::from_le_bytes([p[2], p[3]]),
            buttons: p[4],
        }),
        other => Err(ProtocolError::InputSize {
            kind: other,
            expected: 5,
            actual: p.len(),
        }),
    }
}

/// Channel names: 1–64 bytes of `[A-Za-z0-9._-]`.
pub fn valid_channel_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn header_round_trips() {
        let h = Header {
            kind: 0x03,
            flags: FLAG_KEYFRAME,
            seq: 0xBEEF,
            timestamp: 0xDEADBEEF,
            width: 640,
            height: 360,
            length: 7,
        };
        assert_eq!(Header::parse(&h.to_bytes()).unwrap(), h);
        assert_eq!(h.to_bytes()[12..16], 7u32.to_le_bytes());
    }

    #[test]
    fn every_type_round_trips() {
        for v in 0..=255u8 {
            assert_eq!(FrameType::from_u8(v).to_u8(), v);
            assert_eq!(InputType::from_u8(v).to_u8(), v);
        }
        assert_eq!(FrameType::from_u8(0x77), FrameType::Unknown(0x77));
        assert_eq!(InputType::from_u8(0x77), InputType::Unknown(0x77));
    }

    #[test]
    fn validation_errors() {
        assert_eq!(
            validate_source_message(&[0u8; 5]),
            Err(ProtocolError::TooShort(5))
        );
        let mut m = pixels_keyframe(1, 2, 2, 2, &[0u8; 16]);
        assert!(validate_source_message(&m).is_ok());
        m[12] = 15;
        assert!(matches!(
            validate_source_message(&m),
            Err(ProtocolError::LengthMismatch {
                header: 15,
                actual: 16
            })
        ));
        let m = pixels_keyframe(1, 2, 2, 2, &[0u8; 12]);
        assert_eq!(
            validate_source_message(&m),
            Err(ProtocolError::PixelSize {
                expected: 16,
                actual: 12
            })
        );
        let mut m = frame(FrameType::Haptic, 0, 0, 0, (0, 0), b"x");
        m[1] = 0x80;
        assert_eq!(
            validate_source_message(&m),
            Err(ProtocolError::ReservedFlags(0x80))
        );
        let m = frame(FrameType::Unknown(0x99), 0, 0, 0, (0, 0), b"");
        assert_eq!(
            validate_source_message(&m),
            Err(ProtocolError::UnknownFrameType(0x99))
        );
        let m = frame(FrameType::Ping, 0, 0, 0, (0, 0), b"x");
        assert_eq!(
            validate_source_message(&m),
            Err(ProtocolError::NonEmptyPayload(FrameType::Ping))
        );
        let m = frame(FrameType::DeltaPixels, 0, 0, 0, (0, 4), b"");
        assert_eq!(validate_source_message(&m), Err(ProtocolError::EmptyFrame));
        let m = pointer_input(InputType::PointerDown, 0, 0, 1, 2, 1);
        assert_eq!(
            validate_source_message(&m),
            Err(ProtocolError::InputFromSource)
        );
    }

    #[test]
    fn input_validation() {
        let m = pointer_input(InputType::PointerDown, 3, 4, 100, 200, 1);
        assert!(validate_input_message(&m).is_ok());
        assert_eq!(
            parse_pointer(&m).unwrap(),
            PointerEvent {
                x: 100,
                y: 200,
                buttons: 1
            }
        );
        let bad = input(InputType::KeyDown, 0, 0, &[1, 2, 3, 4]);
        assert_eq!(
            validate_input_message(&bad),
            Err(ProtocolError::InputSize {
                kind: InputType::KeyDown,
                expected: 3,
                actual: 4
            })
        );
        let unknown = input(InputType::Unknown(0x77), 0, 0, &[]);
        assert_eq!(
            validate_input_message(&unknown),
            Err(ProtocolError::UnknownInputType(0x77))
        );
        let not_input = frame(FrameType::Haptic, 0, 0, 0, (0, 0), b"");
        assert_eq!(
            validate_input_message(&not_input),
            Err(ProtocolError::NotAnInput)
        );
        assert!(validate_input_message(&input(InputType::BciInput, 0, 0, &[9; 100])).is_ok());
        assert!(validate_input_message(&key_input(true, 0, 0, 65, 0)).is_ok());
    }

    #[test]
    fn channel_names() {
        assert!(valid_channel_name("a"));
        assert!(valid_channel_name("Cam-1.main_x"));
        assert!(valid_channel_name(&"x".repeat(64)));
        assert!(!valid_channel_name(&"x".repeat(65)));
        assert!(!valid_channel_name(""));
        assert!(!valid_channel_name("a/b"));
        assert!(!valid_channel_name("a b"));
        assert!(!valid_channel_name("é"));
    }

    proptest! {
        #[test]
        fn validators_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = validate_source_message(&bytes);
            let _ = validate_input_message(&bytes);
            let _ = parse_pointer(&bytes);
            let _ = Header::parse(&bytes);
        }

        #[test]
        fn valid_inputs_pass(kind in prop::sample::select(vec![0x01u8, 0x02, 0x03, 0x10, 0x11, 0x20, 0x21, 0x30, 0x31, 0x40, 0x50, 0x60]), seq: u16, ts: u32) {
            let k = InputType::from_u8(kind);
            let payload = vec![7u8; k.payload_len().unwrap()];
            let m = input(k, seq, ts, &payload);
            prop_assert!(validate_input_message(&m).is_ok());
            let mut short = m.clone();
            short.pop();
            prop_assert!(validate_input_message(&short).is_err());
        }

        #[test]
        fn a_stream_mark_carries_its_epoch_and_kind(epoch: u64, k in 0u8..3) {
            let kind = [MarkKind::CatchUp, MarkKind::Resume, MarkKind::Changed][k as usize];
            let mark = StreamMark { epoch, kind };
            let bytes = stream_mark(mark);
            let h = Header::parse(&bytes).unwrap();
            prop_assert_eq!(parse_stream_mark(&h), Some(mark));
            prop_assert_eq!(h.frame_type(), FrameType::Ping);
            prop_assert_eq!(
                validate_source_message(&bytes),
                Err(ProtocolError::MarkFromSource),
                "only the relay sends marks"
            );
        }

        #[test]
        fn no_other_message_reads_as_a_mark(kind: u8, flags: u8, seq: u16, ts: u32, len in 0usize..4) {
            let msg = frame(FrameType::from_u8(kind), flags, seq, ts, (1, 1), &vec![0; len]);
            let h = Header::parse(&msg).unwrap();
            let is_mark = kind == 0xFE && flags & !FLAG_INPUT == FLAG_KEYFRAME && len == 0 && seq < 3;
            prop_assert_eq!(parse_stream_mark(&h).is_some(), is_mark);
        }
    }
}
