//! Inputs shared by the benches (criterion timings and gungraun counts):
//! frames, catch-up states, signal states, client byte streams and request
//! heads, all generated deterministically (xorshift, fixed seeds).

#![allow(dead_code)]

use bitstream_relay::bench::Rig;
use bitstream_relay::codec::encode_delta;
use bitstream_relay::protocol::{self, FrameType};
use bitstream_relay::wire::reader::{Incoming, MessageReader, WireMessage};
use bitstream_relay::ws::{self, Side};

/// The relay's allocator (`src/main.rs`), so allocations cost what they cost there.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Picture size: 640x360 RGBA, a 921,600-byte frame.
pub const W: u16 = 640;
pub const H: u16 = 360;
pub const FRAME_LEN: usize = W as usize * H as usize * 4;

/// Payload of a "small" live frame: a small delta or audio packet.
pub const SMALL: usize = 1024;

/// Receiver counts of the fan-out and lap cases.
pub const RECEIVERS: [usize; 4] = [1, 64, 1_000, 15_000];

/// xorshift64 (Marsaglia): deterministic, good enough for test data.
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let n = self.next().to_le_bytes();
            c.copy_from_slice(&n[..c.len()]);
        }
    }
}

/// A server frame of a protocol message, as a source's message reaches the fan-out.
pub fn wire(msg: &[u8]) -> WireMessage {
    WireMessage::encode(ws::OP_BINARY, msg)
}

/// A small live frame (opaque audio: forwarded, not cached).
pub fn small_frame(seq: u16) -> WireMessage {
    let mut payload = vec![0u8; SMALL];
    XorShift(0x5EED + u64::from(seq)).fill(&mut payload);
    wire(&protocol::frame(
        FrameType::AudioCompressed,
        0,
        seq,
        u32::from(seq),
        (0, 0),
        &payload,
    ))
}

/// A smooth RGBA picture with a little low-bit texture, alpha 255.
pub fn picture() -> Vec<u8> {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let (w, h) = (usize::from(W), usize::from(H));
    let mut f = vec![0u8; FRAME_LEN];
    for y in 0..h {
        for x in 0..w {
            let i = (y * w + x) * 4;
            let n = rng.next();
            f[i] = ((x * 255 / w) as u8) ^ (n as u8 & 3);
            f[i + 1] = ((y * 255 / h) as u8) ^ ((n >> 8) as u8 & 3);
            f[i + 2] = ((x ^ y) as u8) ^ ((n >> 16) as u8 & 3);
            f[i + 3] = 255;
        }
    }
    f
}

/// A 921 KB keyframe (`Pixels`, KEYFRAME set) of `picture`.
pub fn keyframe(seq: u16, picture: &[u8]) -> WireMessage {
    wire(&protocol::pixels_keyframe(
        seq,
        u32::from(seq),
        W,
        H,
        picture,
    ))
}

/// `n` deltas after `picture`, each repainting a 24x24 square at a
/// pseudo-random place (a cursor, a glyph): about 2 KB of ZRLE each.
pub fn deltas(picture: &[u8], n: usize, first_seq: u16) -> Vec<WireMessage> {
    let mut rng = XorShift(0xDE17A);
    let mut prev = picture.to_vec();
    let mut out = Vec::with_capacity(n);
    let mut zrle = Vec::new();
    for i in 0..n {
        let mut cur = prev.clone();
        let x0 = rng.next() as usize % (usize::from(W) - 24);
        let y0 = rng.next() as usize % (usize::from(H) - 24);
        for y in y0..y0 + 24 {
            for x in x0..x0 + 24 {
                let p = (y * usize::from(W) + x) * 4;
                let v = rng.next();
                cur[p..p + 3].copy_from_slice(&v.to_le_bytes()[..3]);
            }
        }
        zrle.clear();
        encode_delta(&prev, &cur, &mut zrle).expect("same-size frames");
        let seq = first_seq.wrapping_add(i as u16);
        out.push(wire(&protocol::delta_pixels(
            seq,
            u32::from(seq),
            W,
            H,
            &zrle,
        )));
        prev = cur;
    }
    out
}

/// The JSON of one signal entry, `"kNNNNN":{…}`.
fn entry(key: usize, v: u64) -> String {
    format!(
        "\"k{key:05}\":{{\"x\":{},\"y\":{},\"on\":{},\"label\":\"item {key}\"}}",
        v % 1920,
        v / 1920 % 1080,
        v.is_multiple_of(2)
    )
}

/// A `SignalSync` of `keys` entries (about 50 bytes each).
pub fn signal_sync(keys: usize, seq: u16) -> WireMessage {
    let mut rng = XorShift(0x516_4A1);
    let body: Vec<String> = (0..keys).map(|k| entry(k, rng.next())).collect();
    let json = format!("{{{}}}", body.join(","));
    wire(&protocol::signal(false, seq, 0, json.as_bytes()))
}

/// A `SignalDiff` changing one entry (`i` picks which, and its value).
pub fn signal_diff(keys: usize, i: usize, seq: u16) -> WireMessage {
    let json = format!("{{{}}}", entry(i * 7919 % keys, i as u64 * 31));
    wire(&protocol::signal(true, seq, 0, json.as_bytes()))
}

/// A channel with a picture (keyframe and `n_deltas` deltas) and a signal
/// state of `keys` entries cached, and `receivers` receivers.
pub fn stateful_rig(receivers: usize, n_deltas: usize, keys: usize) -> Rig {
    let rig = Rig::new(receivers);
    let pic = picture();
    rig.cache(&keyframe(1, &pic)).expect("keyframe");
    for d in deltas(&pic, n_deltas, 2) {
        rig.cache(&d).expect("delta");
    }
    rig.cache(&signal_sync(keys, 0)).expect("signal sync");
    rig
}

/// `n` masked client frames of `len`-byte protocol messages, back to back,
/// as a source's socket delivers them.
pub fn client_stream(n: usize, len: usize) -> Vec<u8> {
    let mut rng = XorShift(0xC11E47);
    let mut out = Vec::with_capacity(n * (len + 14));
    let mut payload = vec![0u8; len.saturating_sub(protocol::HEADER_LEN)];
    for i in 0..n {
        rng.fill(&mut payload);
        let msg = protocol::frame(
            FrameType::DeltaPixels,
            0,
            i as u16,
            i as u32,
            (W, H),
            &payload,
        );
        let mask = (rng.next() as u32).to_le_bytes();
        out.extend_from_slice(&ws::client_frame(ws::OP_BINARY, true, &msg, mask));
    }
    out
}

/// What the relay gives a source's reader: `--max-message`'s order of
/// magnitude and 16 KiB read chunks (`src/relay/admission.rs`).
pub const SOURCE_MAX_MESSAGE: usize = 64 << 20;
pub const SOURCE_CHUNK: usize = 16 * 1024;

/// Reads every message of `stream` as a source's reader does from a socket
/// that always has more: each "read" copies as much as the reader's buffer
/// has room for (what `try_read_buf` takes), then every whole message is
/// parsed out. Returns the binary messages read.
pub fn read_stream(stream: &[u8]) -> usize {
    let mut r = MessageReader::new(Side::Server, SOURCE_MAX_MESSAGE, SOURCE_CHUNK, &[]);
    let (mut at, mut n) = (0, 0);
    loop {
        while let Some(msg) = r.parse().expect("valid frames") {
            if let Incoming::Binary(m) = msg {
                std::hint::black_box(&m);
                n += 1;
            }
        }
        if at == stream.len() {
            return n;
        }
        let buf = r.read_buf();
        let take = (buf.capacity() - buf.len()).min(stream.len() - at);
        buf.extend_from_slice(&stream[at..at + take]);
        at += take;
    }
}

/// A browser's WebSocket request for a resuming receiver.
pub fn request_head() -> Vec<u8> {
    concat!(
        "GET /stream/cam-7?epoch=1f3a9c04be&resume=41 HTTP/1.1\r\n",
        "Host: relay.example.net:9100\r\n",
        "User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n",
        "Accept: */*\r\n",
        "Accept-Language: en-US,en;q=0.5\r\n",
        "Accept-Encoding: gzip, deflate, br, zstd\r\n",
        "Sec-WebSocket-Version: 13\r\n",
        "Origin: https://app.example.net\r\n",
        "Sec-WebSocket-Extensions: permessage-deflate\r\n",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
        "Connection: keep-alive, Upgrade\r\n",
        "Pragma: no-cache\r\n",
        "Cache-Control: no-cache\r\n",
        "Upgrade: websocket\r\n",
        "\r\n"
    )
    .as_bytes()
    .to_vec()
}

/// A copy of `src` into `dst`: the yardstick the timings are divided by.
pub fn memcpy(dst: &mut [u8], src: &[u8]) {
    dst.copy_from_slice(std::hint::black_box(src));
    std::hint::black_box(dst);
}

/// The criterion settings every bench here shares: short runs (1 s of
/// warm-up, 3 s of measurement, 30 samples), enough for medians on a shared
/// machine without taking minutes per bench.
pub fn config() -> criterion::Criterion {
    criterion::Criterion::default()
        .warm_up_time(std::time::Duration::from_secs(1))
        .measurement_time(std::time::Duration::from_secs(3))
        .sample_size(30)
}
