// bitstream-relay browser client: a dependency-free ES module.
//
// The first half is a DOM-free client API (the PROTOCOL.md header, ZRLE
// delta codec, input messages, signal folding, a reconnecting socket). The
// second half drives index.html: receiver mode (the default) renders a
// channel and sends input back, source mode (`?mode=source`) streams a
// generated animation and lists the inputs it receives. The page state is
// exposed as `window.relayClient` for tests and the console. A receiver
// asks the relay for stream marks (`?epoch`) and, after a lost connection,
// resumes within the same stream or starts over from the relay's catch-up
// (see ReceiverState; `relayClient.epoch` and `.resumes` show which).
//
// Query parameters: channel=NAME (default "default"), mode=receiver|source;
// source mode also takes fps=N, encoding=delta|keyframe, keyframe=N
// (a keyframe every N frames), size=WxH, signal=0|1 and autostart=1
// (listed on the source page itself and in docs/pages.md).
// WebRTC (docs/webrtc.md): a receiver with transport=webrtc also takes the
// picture over a DataChannel from the source (default transport=websocket:
// the relay alone); a source answers up to webrtc=N receivers (default 4,
// 0 = none).

// ---------------------------------------------------------------------------
// Protocol: header, types, messages
// ---------------------------------------------------------------------------

/** Length of the message header in bytes. */
export const HEADER_LEN = 16;
/** Header flag: the message is an input (receiver → source). */
export const FLAG_INPUT = 0x01;
/** Header flag: a self-contained frame. */
export const FLAG_KEYFRAME = 0x02;
/** Header flag: the payload is compressed (type-specific). */
export const FLAG_COMPRESSED = 0x04;

/** Frame types (source → receivers). */
export const Frame = Object.freeze({
  Pixels: 0x01,
  CompressedPixels: 0x02,
  DeltaPixels: 0x03,
  AudioPcm: 0x10,
  AudioCompressed: 0x11,
  Haptic: 0x20,
  SignalSync: 0x30,
  SignalDiff: 0x31,
  NeuralFrame: 0x40,
  NeuralAudio: 0x41,
  NeuralActuator: 0x42,
  NeuralLatent: 0x43,
  Keyframe: 0xf0,
  Ping: 0xfe,
  StreamEnd: 0xff,
});

/** Input types (receiver → source, INPUT flag set). */
export const Input = Object.freeze({
  Pointer: 0x01,
  PointerDown: 0x02,
  PointerUp: 0x03,
  KeyDown: 0x10,
  KeyUp: 0x11,
  Touch: 0x20,
  TouchEnd: 0x21,
  GamepadAxis: 0x30,
  GamepadButton: 0x31,
  Midi: 0x40,
  Scroll: 0x50,
  Resize: 0x60,
  BciInput: 0x90,
});

const FRAME_NAMES = invert(Frame);
const INPUT_NAMES = invert(Input);

function invert(table) {
  const out = new Map();
  for (const [name, value] of Object.entries(table)) out.set(value, name);
  return out;
}

/** The name of a frame type byte ("Unknown(0x..)" if PROTOCOL.md has none). */
export function frameName(type) {
  return FRAME_NAMES.get(type) ?? `Unknown(0x${hex(type)})`;
}

/** The name of an input type byte. */
export function inputName(type) {
  return INPUT_NAMES.get(type) ?? `Unknown(0x${hex(type)})`;
}

function hex(v) {
  return v.toString(16).padStart(2, '0');
}

/** A message that breaks PROTOCOL.md. */
export class ProtocolError extends Error {
  constructor(message) {
    super(message);
    this.name = 'ProtocolError';
  }
}

function bytesOf(buf) {
  if (buf instanceof Uint8Array) return buf;
  if (ArrayBuffer.isView(buf)) return new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
  return new Uint8Array(buf);
}

/**
 * Decodes the 16-byte little-endian header at the start of `buf`
 * (ArrayBuffer or typed array): {type, flags, seq, timestamp, width, height, length}.
 */
export function parseHeader(buf) {
  const b = bytesOf(buf);
  if (b.length < HEADER_LEN) {
    throw new ProtocolError(`message of ${b.length} bytes is shorter than the ${HEADER_LEN}-byte header`);
  }
  const v = new DataView(b.buffer, b.byteOffset, HEADER_LEN);
  return {
    type: v.getUint8(0),
    flags: v.getUint8(1),
    seq: v.getUint16(2, true),
    timestamp: v.getUint32(4, true),
    width: v.getUint16(8, true),
    height: v.getUint16(10, true),
    length: v.getUint32(12, true),
  };
}

/** Encodes a header (missing fields are 0) into 16 bytes. */
export function buildHeader({ type = 0, flags = 0, seq = 0, timestamp = 0, width = 0, height = 0, length = 0 }) {
  const b = new Uint8Array(HEADER_LEN);
  const v = new DataView(b.buffer);
  v.setUint8(0, type & 0xff);
  v.setUint8(1, flags & 0xff);
  v.setUint16(2, seq & 0xffff, true);
  v.setUint32(4, timestamp >>> 0, true);
  v.setUint16(8, width & 0xffff, true);
  v.setUint16(10, height & 0xffff, true);
  v.setUint32(12, length >>> 0, true);
  return b;
}

/** Builds a whole message: the header (its length filled in) + payload. */
export function buildMessage(header, payload = new Uint8Array(0)) {
  const p = bytesOf(payload);
  const out = new Uint8Array(HEADER_LEN + p.length);
  out.set(buildHeader({ ...header, length: p.length }), 0);
  out.set(p, HEADER_LEN);
  return out;
}

/** Splits a message into {header, payload}, checking the length field. */
export function splitMessage(buf) {
  const b = bytesOf(buf);
  const header = parseHeader(b);
  if (header.length !== b.length - HEADER_LEN) {
    throw new ProtocolError(`length field ${header.length} does not match the ${b.length - HEADER_LEN}-byte payload`);
  }
  return { header, payload: b.subarray(HEADER_LEN) };
}

/** What follows a relay's stream mark (its header `seq`). */
export const MarkKind = Object.freeze({
  /** The relay's full catch-up: reset the picture and signal state first. */
  CatchUp: 0,
  /** The frames after the receiver's resume point: keep the state. */
  Resume: 1,
  /** While connected, a new source claimed the channel: keep the state; later resume points are in the new stream. */
  Changed: 2,
});

/**
 * Reads a relay's stream mark from a header ({@link parseHeader}): a Ping
 * with flags exactly KEYFRAME and no payload, which the relay sends to
 * receivers that asked with `?epoch`. Returns {kind, epoch} or null for any
 * other message (an unknown kind included). The 64-bit epoch rides in
 * `timestamp` (bits 0–31), `width` (32–47) and `height` (48–63); as JS
 * numbers hold only 53 bits it is returned as lowercase hex without leading
 * zeros ("0" for zero), the form `?epoch=` takes.
 */
export function parseStreamMark(h) {
  if (h.type !== Frame.Ping || h.flags !== FLAG_KEYFRAME || h.length !== 0 || h.seq > MarkKind.Changed) return null;
  const digits = (v, n) => v.toString(16).padStart(n, '0');
  const epoch = (digits(h.height, 4) + digits(h.width, 4) + digits(h.timestamp >>> 0, 8)).replace(/^0+(?=.)/, '');
  return { kind: h.seq, epoch };
}

// ---------------------------------------------------------------------------
// ZRLE: token := zeros:varint literals:varint literal_bytes[literals]
// ---------------------------------------------------------------------------

/** A malformed ZRLE payload. */
export class CodecError extends Error {
  constructor(message) {
    super(message);
    this.name = 'CodecError';
  }
}

/** Reads an unsigned LEB128 varint at `pos`; returns [value, next position]. */
export function readVarint(buf, pos) {
  let value = 0;
  let scale = 1;
  for (let k = 0; k < 10; k++) {
    if (pos + k >= buf.length) throw new CodecError('payload ends inside a varint');
    const b = buf[pos + k];
    value += (b & 0x7f) * scale; // exact below 2^53; anything larger overruns any frame
    if (b < 0x80) return [value, pos + k + 1];
    scale *= 128;
  }
  throw new CodecError('varint longer than 10 bytes');
}

// Walks the tokens of `payload` for a frame of `frameLen` bytes, XORing the
// literal bytes into `frame` when one is given. Throws on overrun,
// truncation or trailing bytes.
function zrleWalk(payload, frameLen, frame) {
  let pos = 0;
  let out = 0;
  while (out < frameLen) {
    if (pos >= payload.length) {
      throw new CodecError(`payload ends after ${out} of ${frameLen} frame bytes`);
    }
    const tokenAt = pos;
    let zeros;
    let literals;
    [zeros, pos] = readVarint(payload, pos);
    [literals, pos] = readVarint(payload, pos);
    if (zeros > frameLen - out) {
      throw new CodecError(`token at ${tokenAt}: ${zeros} zeros overrun the frame at ${out} of ${frameLen}`);
    }
    out += zeros;
    if (literals > frameLen - out) {
      throw new CodecError(`token at ${tokenAt}: ${literals} literals overrun the frame at ${out} of ${frameLen}`);
    }
    if (literals > payload.length - pos) {
      throw new CodecError(`payload ends inside a token: ${literals} literal bytes needed, ${payload.length - pos} left`);
    }
    if (frame) {
      for (let i = 0; i < literals; i++) frame[out + i] ^= payload[pos + i];
    }
    out += literals;
    pos += literals;
  }
  if (pos !== payload.length) {
    throw new CodecError(`${payload.length - pos} trailing bytes after the frame is complete`);
  }
}

/** Checks that `payload` decodes to exactly `frameLen` bytes (throws CodecError). */
export function zrleValidate(payload, frameLen) {
  zrleWalk(bytesOf(payload), frameLen, null);
}

/**
 * Applies a DeltaPixels payload in place: XORs ZRLE(prev XOR cur) onto
 * `frame` (the previous RGBA frame), turning it into the current one. The
 * payload is validated first, so `frame` is untouched when it throws.
 */
export function applyDelta(frame, payload) {
  const p = bytesOf(payload);
  zrleWalk(p, frame.length, null);
  zrleWalk(p, frame.length, frame);
}

/** Decodes a ZRLE payload to the XOR bytes it stands for. */
export function zrleDecode(payload, frameLen) {
  const out = new Uint8Array(frameLen);
  applyDelta(out, payload);
  return out;
}

/** Zero runs shorter than this between changed bytes stay literal. */
export const MIN_ZERO_RUN = 8;
/** Literal runs are cut into tokens of about this many bytes. */
export const MAX_LITERAL_RUN = 16 * 1024;

class ByteWriter {
  constructor(capacity) {
    this.buf = new Uint8Array(Math.max(64, capacity));
    this.len = 0;
  }
  reserve(n) {
    if (this.len + n <= this.buf.length) return;
    const next = new Uint8Array(Math.max(this.buf.length * 2, this.len + n));
    next.set(this.buf.subarray(0, this.len));
    this.buf = next;
  }
  varint(v) {
    this.reserve(10);
    while (v >= 0x80) {
      this.buf[this.len++] = (v % 128) | 0x80;
      v = Math.floor(v / 128);
    }
    this.buf[this.len++] = v;
  }
  bytes(src) {
    this.reserve(src.length);
    this.buf.set(src, this.len);
    this.len += src.length;
  }
  result() {
    return this.buf.slice(0, this.len);
  }
}

/** ZRLE-encodes XOR bytes (greedy; minimal varints). */
export function zrleEncode(xored) {
  const x = bytesOf(xored);
  const n = x.length;
  const words = x.byteOffset % 4 === 0 ? new Uint32Array(x.buffer, x.byteOffset, n >>> 2) : null;
  // First index >= i whose byte is not zero (or n), a word at a time when aligned.
  const zeroEnd = (i) => {
    while (i < n && (i & 3) !== 0) {
      if (x[i] !== 0) return i;
      i++;
    }
    if (words) {
      let w = i >>> 2;
      while (w < words.length && words[w] === 0) w++;
      if (w << 2 > i) i = w << 2;
    }
    while (i < n && x[i] === 0) i++;
    return i;
  };
  const out = new ByteWriter((n >>> 4) + 16);
  let i = 0;
  while (i < n) {
    const litStart = zeroEnd(i);
    let j = litStart;
    let litEnd = litStart;
    while (j < n && litEnd - litStart < MAX_LITERAL_RUN) {
      if (x[j] !== 0) {
        litEnd = ++j;
        continue;
      }
      const k = zeroEnd(j);
      if (k - j >= MIN_ZERO_RUN || k >= n) break;
      j = k;
    }
    out.varint(litStart - i);
    out.varint(litEnd - litStart);
    out.bytes(x.subarray(litStart, litEnd));
    i = litEnd;
  }
  return out.result();
}

/** out[i] = a[i] ^ b[i] (a word at a time when the buffers allow). */
export function xorInto(a, b, out) {
  if (a.length !== b.length || out.length < a.length) {
    throw new CodecError(`length mismatch: ${a.length}, ${b.length}, ${out.length}`);
  }
  const n = a.length;
  if (n % 4 === 0 && a.byteOffset % 4 === 0 && b.byteOffset % 4 === 0 && out.byteOffset % 4 === 0) {
    const a32 = new Uint32Array(a.buffer, a.byteOffset, n >>> 2);
    const b32 = new Uint32Array(b.buffer, b.byteOffset, n >>> 2);
    const o32 = new Uint32Array(out.buffer, out.byteOffset, n >>> 2);
    for (let i = 0; i < a32.length; i++) o32[i] = a32[i] ^ b32[i];
  } else {
    for (let i = 0; i < n; i++) out[i] = a[i] ^ b[i];
  }
  return out;
}

/** The DeltaPixels payload ZRLE(prev XOR cur). `scratch` (optional) is reused for the XOR. */
export function encodeDelta(prev, cur, scratch) {
  const p = bytesOf(prev);
  const c = bytesOf(cur);
  const x = scratch && scratch.length >= c.length ? scratch.subarray(0, c.length) : new Uint8Array(c.length);
  xorInto(p, c, x);
  return zrleEncode(x);
}

// ---------------------------------------------------------------------------
// Signal state
// ---------------------------------------------------------------------------

/**
 * Folds one signal message into `state` and returns the new state (a new
 * object): SignalSync replaces it, SignalDiff shallow-merges (null deletes).
 */
export function foldSignal(state, type, value) {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new ProtocolError('signal JSON is not an object');
  }
  if (type === Frame.SignalSync) return { ...value };
  if (type !== Frame.SignalDiff) throw new ProtocolError(`${frameName(type)} is not a signal message`);
  const next = { ...state };
  for (const [k, v] of Object.entries(value)) {
    if (v === null) delete next[k];
    else next[k] = v;
  }
  return next;
}

// ---------------------------------------------------------------------------
// Inputs
// ---------------------------------------------------------------------------

const FIELD = {
  u8: [1, 0, 0xff],
  u16: [2, 0, 0xffff],
  i16: [2, -0x8000, 0x7fff],
};

/** Field layout of every fixed-size input payload. */
export const INPUT_LAYOUT = Object.freeze({
  [Input.Pointer]: [['x', 'u16'], ['y', 'u16'], ['buttons', 'u8']],
  [Input.PointerDown]: [['x', 'u16'], ['y', 'u16'], ['buttons', 'u8']],
  [Input.PointerUp]: [['x', 'u16'], ['y', 'u16'], ['buttons', 'u8']],
  [Input.KeyDown]: [['keycode', 'u16'], ['modifiers', 'u8']],
  [Input.KeyUp]: [['keycode', 'u16'], ['modifiers', 'u8']],
  [Input.Touch]: [['id', 'u8'], ['x', 'u16'], ['y', 'u16']],
  [Input.TouchEnd]: [['id', 'u8'], ['x', 'u16'], ['y', 'u16']],
  [Input.GamepadAxis]: [['axis', 'u8'], ['value', 'i16']],
  [Input.GamepadButton]: [['button', 'u8'], ['pressed', 'u8'], ['value', 'u16']],
  [Input.Midi]: [['status', 'u8'], ['data1', 'u8'], ['data2', 'u8']],
  [Input.Scroll]: [['dx', 'i16'], ['dy', 'i16']],
  [Input.Resize]: [['width', 'u16'], ['height', 'u16']],
});

/** Clamps `v` to an integer in [lo, hi]. */
export function clampInt(v, lo, hi) {
  const r = Math.round(Number(v) || 0);
  return r < lo ? lo : r > hi ? hi : r;
}

/**
 * Builds an input message of `type` from named fields (clamped to the
 * field types), e.g. inputMessage(Input.PointerDown, {x, y, buttons}).
 * BciInput takes `fields.payload` (bytes).
 */
export function inputMessage(type, fields = {}, seq = 0, timestamp = 0) {
  const layout = INPUT_LAYOUT[type];
  let payload;
  if (layout) {
    payload = new Uint8Array(layout.reduce((n, [, t]) => n + FIELD[t][0], 0));
    const v = new DataView(payload.buffer);
    let off = 0;
    for (const [name, t] of layout) {
      const [size, lo, hi] = FIELD[t];
      const x = clampInt(fields[name], lo, hi);
      if (t === 'u8') v.setUint8(off, x);
      else if (t === 'u16') v.setUint16(off, x, true);
      else v.setInt16(off, x, true);
      off += size;
    }
  } else if (type === Input.BciInput) {
    payload = bytesOf(fields.payload ?? new Uint8Array(0));
  } else {
    throw new ProtocolError(`unknown input type 0x${hex(type)}`);
  }
  return buildMessage({ type, flags: FLAG_INPUT, seq, timestamp }, payload);
}

/**
 * Decodes an input message: {type, name, seq, timestamp, ...fields}
 * (BciInput: {bytes}). Throws on anything that is not a valid input.
 */
export function decodeInput(buf) {
  const { header, payload } = splitMessage(buf);
  if (!(header.flags & FLAG_INPUT)) throw new ProtocolError(`${frameName(header.type)} is not an input (INPUT flag clear)`);
  const out = { type: header.type, name: inputName(header.type), seq: header.seq, timestamp: header.timestamp };
  const layout = INPUT_LAYOUT[header.type];
  if (layout) {
    const want = layout.reduce((n, [, t]) => n + FIELD[t][0], 0);
    if (payload.length !== want) throw new ProtocolError(`${out.name} payload is ${payload.length} bytes, expected ${want}`);
    const v = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
    let off = 0;
    for (const [name, t] of layout) {
      out[name] = t === 'u8' ? v.getUint8(off) : t === 'u16' ? v.getUint16(off, true) : v.getInt16(off, true);
      off += FIELD[t][0];
    }
  } else if (header.type === Input.BciInput) {
    out.bytes = payload.length;
  } else {
    throw new ProtocolError(`unknown input type 0x${hex(header.type)}`);
  }
  return out;
}

/** One line describing a decoded input, e.g. "PointerDown x=3 y=4 buttons=1". */
export function describeInput(ev) {
  const skip = new Set(['type', 'name', 'seq', 'timestamp']);
  const fields = Object.entries(ev).filter(([k]) => !skip.has(k)).map(([k, v]) => `${k}=${v}`);
  return [ev.name, ...fields].join(' ');
}

/** Modifier bit mask of a keyboard event: shift=1 ctrl=2 alt=4 meta=8. */
export function modifierMask(e) {
  return (e.shiftKey ? 1 : 0) | (e.ctrlKey ? 2 : 0) | (e.altKey ? 4 : 0) | (e.metaKey ? 8 : 0);
}

/**
 * Maps client (CSS) coordinates onto a canvas' pixels: [x, y] clamped to
 * the canvas, or null if the canvas has no layout box. The canvas must not
 * have a border or padding.
 */
export function canvasPoint(canvas, clientX, clientY) {
  const r = canvas.getBoundingClientRect();
  if (!(r.width > 0 && r.height > 0)) return null;
  const x = Math.floor(((clientX - r.left) * canvas.width) / r.width);
  const y = Math.floor(((clientY - r.top) * canvas.height) / r.height);
  return [clampInt(x, 0, canvas.width - 1), clampInt(y, 0, canvas.height - 1)];
}

// ---------------------------------------------------------------------------
// A reconnecting WebSocket
// ---------------------------------------------------------------------------

/** The relay URL of `role` ('source' | 'stream') for channel `name`, from `loc`. */
export function relayUrl(loc, role, name) {
  const scheme = loc.protocol === 'https:' ? 'wss' : 'ws';
  // A relay that requires tokens gets the page's own `?token=`.
  const token = new URLSearchParams(loc.search || '').get('token');
  const query = token ? `?token=${encodeURIComponent(token)}` : '';
  return `${scheme}://${loc.host}/${role}/${encodeURIComponent(name)}${query}`;
}

/**
 * The relay URLs of `role` for channel `name`: one per relay the page's
 * `?relays=` lists (comma-separated `ws://host:port` or `wss://host:port`
 * bases, e.g. the nodes of a cluster), else the page's own relay. Entries
 * that are not ws:/wss: URLs are ignored.
 */
export function relayUrls(loc, role, name) {
  const params = new URLSearchParams(loc.search || '');
  const token = params.get('token');
  const query = token ? `?token=${encodeURIComponent(token)}` : '';
  const bases = (params.get('relays') || '')
    .split(',')
    .map((b) => b.trim().replace(/\/+$/, ''))
    .filter((b) => /^wss?:\/\/[^/?#\s]+$/.test(b));
  if (bases.length === 0) return [relayUrl(loc, role, name)];
  return bases.map((b) => `${b}/${role}/${encodeURIComponent(name)}${query}`);
}

/**
 * Which of several relay URLs a {@link ReconnectingSocket} uses: the first
 * to begin with, then, after every failed attempt or lost connection, the
 * next one, wrapping around. So the first connection tries them in order,
 * and a dead relay costs one backoff step.
 */
export class RelayList {
  constructor(urls) {
    this.urls = [].concat(urls);
    if (this.urls.length === 0) throw new TypeError('RelayList: no relay URL');
    this.index = 0;
  }

  /** The URL in use, or tried next. */
  get current() {
    return this.urls[this.index];
  }

  /** Moves on to the next URL (wrapping) and returns it. */
  advance() {
    this.index = (this.index + 1) % this.urls.length;
    return this.current;
  }
}

/** Channel names: 1–64 bytes of [A-Za-z0-9._-]. */
export function validChannelName(name) {
  return /^[A-Za-z0-9._-]{1,64}$/.test(name);
}

/**
 * A binary WebSocket that reconnects with exponential backoff and jitter
 * (250 ms doubling, capped at `maxDelay`). `url` is a URL, an array of URLs
 * (several relays: tried in turn, see {@link RelayList}) or a function
 * returning a URL (asked on every connection); `decorate(url)` may rewrite
 * the chosen URL on every connection (a receiver adds `epoch` and its
 * resume point, see {@link ReceiverState#resumeUrl}).
 * `state` is 'connecting', 'open' or 'closed'; `currentUrl` the URL in
 * use or tried next. Callbacks: onOpen(), onMessage(ArrayBuffer), onState(state, detail).
 */
export class ReconnectingSocket {
  constructor(url, { onOpen = () => {}, onMessage = () => {}, onState = () => {}, decorate = (u) => u, minDelay = 250, maxDelay = 10000 } = {}) {
    Object.assign(this, { url, onOpen, onMessage, onState, decorate, minDelay, maxDelay });
    this.relays = typeof url === 'function' ? null : new RelayList(url);
    this.state = 'closed';
    this.attempt = 0;
    this.retryAt = 0;
    this.ws = null;
    this.timer = null;
    this.stopped = false;
    this.detail = '';
    this.connect();
  }

  setState(state, detail = '') {
    this.state = state;
    this.detail = detail;
    this.onState(state, detail);
  }

  connect() {
    this.timer = null;
    if (this.stopped) return;
    this.setState('connecting');
    let ws;
    try {
      ws = new WebSocket(this.decorate(this.currentUrl));
    } catch (e) {
      this.setState('closed', String(e.message || e));
      this.stopped = true;
      return;
    }
    ws.binaryType = 'arraybuffer';
    let openedAt = 0;
    ws.onopen = () => {
      openedAt = performance.now();
      this.setState('open');
      this.onOpen();
    };
    ws.onmessage = (e) => this.onMessage(e.data);
    ws.onclose = (e) => {
      if (this.ws !== ws) return;
      this.ws = null;
      // A connection that lasted resets the backoff; a flapping one does not.
      if (openedAt && performance.now() - openedAt > 5000) this.attempt = 0;
      // Failed or lost: the next attempt goes to the next relay, if several.
      if (this.relays) this.relays.advance();
      if (this.stopped) {
        this.setState('closed', `closed (${e.code})`);
        return;
      }
      const base = Math.min(this.maxDelay, this.minDelay * 2 ** this.attempt);
      const delay = Math.round(base / 2 + (Math.random() * base) / 2);
      this.attempt++;
      this.retryAt = performance.now() + delay;
      this.timer = setTimeout(() => this.connect(), delay);
      const why = e.code === 1006 ? 'connection failed' : `closed ${e.code}${e.reason ? ' ' + e.reason : ''}`;
      this.setState('closed', `${why}; retrying in ${(delay / 1000).toFixed(1)} s`);
    };
    this.ws = ws;
  }

  /** The URL in use, or tried next (before `decorate`). */
  get currentUrl() {
    // A function is asked again on every (re)connection.
    return this.relays ? this.relays.current : this.url();
  }

  /** Sends bytes if open; returns whether it did. */
  send(bytes) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(bytes);
      return true;
    }
    return false;
  }

  /** Bytes queued in the browser, not yet sent. */
  get bufferedAmount() {
    return this.ws ? this.ws.bufferedAmount : 0;
  }

  /** Closes for good. */
  close() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.ws) this.ws.close(1000);
    else this.setState('closed', 'closed');
  }
}

// ---------------------------------------------------------------------------
// Receiver state (DOM-free): decoded frame and folded signal
// ---------------------------------------------------------------------------

/**
 * What a receiver has rebuilt from the stream: the current RGBA frame and
 * the folded signal state. `handle(message)` returns {header, payload, kind}
 * where kind is 'pixels' | 'compressed' | 'signal' | 'audio' | 'end' | 'ping'
 * | 'other', or 'mark' for a relay's stream mark (then also `mark` and
 * `reset`: whether the state was just reset for a catch-up). Marks are not
 * frames: they are not counted in `messages` and change no picture.
 *
 * Resume: the receiver asks the relay for stream marks (`?epoch`, see
 * {@link parseStreamMark}). Before its catch-up, and before resumed frames,
 * the relay sends a mark naming the stream (its epoch, which changes
 * whenever a source claims the channel, the channel is created anew or a
 * relay restarts) and whether a resume or a full catch-up follows. The
 * receiver remembers the epoch and the header seq of the last frame that
 * is not a SignalSync (a catch-up ends with a synthesized sync carrying the
 * last *signal* message's seq, older than its picture), and reconnects with
 * `?epoch=<E>&resume=<seq>` ({@link ReceiverState#resumeUrl}). A relay
 * whose current stream is E and that still has the frames after seq sends
 * exactly those (a Resume mark: state kept); otherwise its full catch-up (a
 * CatchUp mark: state reset first). So a resume never glues two streams
 * together: a new source numbering its frames alike gets no XOR deltas
 * applied on the old source's picture. A Changed mark while connected (a
 * new source) keeps the state and only moves later resume points to the new
 * epoch. Against a relay that sends no marks, the first frame after a
 * reconnect decides: seq + 1 of the resume point asked for continues the
 * stream, anything else starts over (the state is reset).
 */
export class ReceiverState {
  constructor() {
    this.width = 0;
    this.height = 0;
    this.frame = null; // Uint8Array, RGBA
    this.haveBase = false; // deltas may be applied to `frame`
    this.frames = 0; // pixel frames applied
    this.seq = -1; // seq of the last pixel frame applied
    this.timestamp = 0;
    this.signal = {};
    this.messages = 0; // messages other than stream marks
    this.bytes = 0;
    this.errors = 0;
    this.lastError = null;
    // Resume point: the seq of the last message that was not a SignalSync,
    // in stream `epoch` (lowercase hex, from the last mark); -1 / null = none.
    this.resumeSeq = -1;
    this.epoch = null;
    this.connections = 0;
    // After a connection opens, until its first mark or frame decides how it
    // started: {reconnect, asked} (asked: the resume seq in the URL, or -1).
    this.starting = null;
    this.resumes = 0;
    this.fullCatchups = 0;
    // Which copy of a pixel frame applies when a DataChannel also brings
    // them (WebRTC section); with the relay alone it applies everything.
    this.merge = new PathMerge();
  }

  /** A full catch-up follows: drop the picture, the signal state and the resume point. */
  reset() {
    this.frame = null;
    this.width = 0;
    this.height = 0;
    this.haveBase = false;
    this.merge.reset();
    this.signal = {};
    this.resumeSeq = -1;
    this.epoch = null;
  }

  /**
   * The stream URL for the next connection: `base` plus `epoch=<E>&resume=<seq>`
   * when there is a resume point in a known stream, else `epoch` (marks only).
   */
  resumeUrl(base) {
    const q = this.epoch !== null && this.resumeSeq >= 0 ? `epoch=${this.epoch}&resume=${this.resumeSeq}` : 'epoch';
    return `${base}${base.includes('?') ? '&' : '?'}${q}`;
  }

  /**
   * A new connection is open (its URL from {@link ReceiverState#resumeUrl}).
   * The state is kept until its first message: the relay's mark says
   * whether it resumed or sends its catch-up (see the class comment).
   */
  connected() {
    this.starting = {
      reconnect: this.connections++ > 0,
      asked: this.epoch !== null && this.resumeSeq >= 0 ? this.resumeSeq : -1,
    };
  }

  fail(msg) {
    this.errors++;
    this.lastError = msg;
  }

  /** A relay's stream mark: count and reset as it says, take its epoch. */
  onMark(h, payload, mark) {
    let reset = false;
    switch (mark.kind) {
      case MarkKind.Resume:
        this.starting = null;
        this.resumes++;
        break;
      case MarkKind.CatchUp: {
        // The relay's catch-up is the new truth. Counted unless it is the
        // first connection's (a catch-up mid-connection, after the relay
        // skipped a slow receiver forward, counts too).
        const start = this.starting;
        this.starting = null;
        this.reset();
        reset = true;
        if (!start || start.reconnect) this.fullCatchups++;
        break;
      }
      case MarkKind.Changed:
        // A new source on the same connection. The state goes on; the last
        // frame belongs to the old stream, so there is no resume point
        // until the new stream's first frame.
        this.resumeSeq = -1;
        this.merge.reset(); // the new stream numbers its frames afresh
        break;
    }
    this.epoch = mark.epoch;
    return { header: h, payload, kind: 'mark', mark, reset };
  }

  handle(data) {
    if (typeof data === 'string') throw new ProtocolError('text message on a data path');
    this.bytes += data.byteLength;
    let split;
    try {
      split = splitMessage(data);
    } catch (e) {
      this.messages++;
      throw e;
    }
    const { header: h, payload } = split;
    if (h.flags & FLAG_INPUT) throw new ProtocolError('a receiver got an input message');
    const mark = parseStreamMark(h);
    if (mark) return this.onMark(h, payload, mark);
    this.messages++;
    const start = this.starting;
    if (start) {
      // A relay without marks: a frame continuing the seq is a resume,
      // anything else after a reconnect starts over.
      this.starting = null;
      if (start.asked >= 0 && h.seq === ((start.asked + 1) & 0xffff)) this.resumes++;
      else if (start.reconnect) {
        this.reset();
        this.fullCatchups++;
      }
    }
    if (h.type !== Frame.SignalSync) this.resumeSeq = h.seq;
    switch (h.type) {
      case Frame.Pixels:
      case Frame.Keyframe:
      case Frame.DeltaPixels:
        // The relay's copy of a frame a DataChannel already brought is skipped.
        if (!this.merge.fromRelay(h.seq)) return { header: h, payload, kind: 'duplicate' };
        try {
          return this.applyPicture(h, payload);
        } catch (e) {
          this.merge.reset();
          throw e;
        }
      case Frame.CompressedPixels:
        this.haveBase = false;
        this.merge.reset();
        this.frames++;
        this.seq = h.seq;
        return { header: h, payload, kind: 'compressed' };
      case Frame.SignalSync:
      case Frame.SignalDiff: {
        let value;
        try {
          value = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(payload));
        } catch (e) {
          throw new ProtocolError(`${frameName(h.type)}: ${e.message}`);
        }
        this.signal = foldSignal(this.signal, h.type, value);
        return { header: h, payload, kind: 'signal' };
      }
      case Frame.AudioPcm:
        return { header: h, payload, kind: 'audio' };
      case Frame.StreamEnd:
        return { header: h, payload, kind: 'end' };
      case Frame.Ping:
        return { header: h, payload, kind: 'ping' };
      default:
        return { header: h, payload, kind: 'other' };
    }
  }

  /** Applies a Pixels, Keyframe or DeltaPixels frame to the picture (throws, picture kept, if it does not fit). */
  applyPicture(h, payload) {
    if (h.type !== Frame.DeltaPixels) {
      const need = h.width * h.height * 4;
      if (need === 0 || payload.length !== need) {
        throw new ProtocolError(`${frameName(h.type)} ${h.width}x${h.height} with a ${payload.length}-byte payload`);
      }
      if (this.frame && this.frame.length === need) this.frame.set(payload);
      else this.frame = payload.slice();
      this.setFrame(h);
      return { header: h, payload, kind: 'pixels' };
    }
    if (!this.haveBase) throw new ProtocolError('DeltaPixels before any full frame (waiting for a keyframe)');
    if (h.width !== this.width || h.height !== this.height) {
      this.haveBase = false;
      throw new ProtocolError(`DeltaPixels ${h.width}x${h.height} onto a ${this.width}x${this.height} frame`);
    }
    try {
      applyDelta(this.frame, payload);
    } catch (e) {
      this.haveBase = false; // the chain is broken: wait for the next full frame
      throw e;
    }
    this.setFrame(h);
    return { header: h, payload, kind: 'pixels' };
  }

  /**
   * A whole pixel frame from the DataChannel, with its piece head's `base`:
   * applied only if it is valid and the merge takes it (a keyframe newer
   * than the picture, or a delta on exactly the picture); returns
   * {header, payload, kind: 'pixels'} if applied, else null. Direct frames
   * leave the relay's resume point and message counters alone.
   */
  handleDirect(data, base) {
    const { header: h, payload } = splitMessage(data);
    if (h.flags & FLAG_INPUT || !isPictureFrame(h)) throw new ProtocolError(`${frameName(h.type)} on the DataChannel`);
    const keyframe = h.type !== Frame.DeltaPixels;
    if (!this.haveBase) this.merge.reset();
    if (keyframe) {
      if (h.width * h.height * 4 === 0 || payload.length !== h.width * h.height * 4) return null;
    } else {
      if (!this.haveBase || h.width !== this.width || h.height !== this.height) return null;
      zrleValidate(payload, this.frame.length);
    }
    if (!this.merge.fromDirect(h.seq, keyframe, base)) return null;
    return this.applyPicture(h, payload);
  }

  setFrame(h) {
    this.width = h.width;
    this.height = h.height;
    this.haveBase = true;
    this.frames++;
    this.seq = h.seq;
    this.timestamp = h.timestamp;
  }
}

// ---------------------------------------------------------------------------
// WebRTC: DataChannel pieces, the two-path picture merge, signaling, and the
// source's and receiver's peer connections (docs/webrtc.md). The same
// framing and merge rule as crates/wire/src/pieces.rs and path_merge.rs.
// ---------------------------------------------------------------------------

/** First byte of every DataChannel piece (version 1 of the framing). */
export const PIECE_MAGIC = 0xb5;
/** Piece flag: the head's `base` is the picture seq the message applies on. */
export const PIECE_FLAG_CHAIN = 0x01;
/** Length of a piece head. */
export const PIECE_HEAD_LEN = 16;
/** Largest DataChannel message a sender makes: 16 KiB, which every browser takes. */
export const MAX_PIECE = 16 * 1024;

/** Where piece `index` of a `total`-byte message in `count` pieces lies: [start, len], or null. */
export function pieceSpan(total, count, index) {
  if (count < 1 || index >= count || total < 1) return null;
  const size = Math.ceil(total / count);
  const start = index * size;
  if (start >= total) return null;
  const len = Math.min(size, total - start);
  if (index + 1 < count && len !== size) return null;
  return [start, len];
}

/**
 * Splits one PROTOCOL.md message into DataChannel pieces of at most
 * `maxPiece` bytes under message id `id`; `base` (or null) is the picture
 * seq a DeltaPixels applies on.
 */
export function splitPieces(message, id, base = null, maxPiece = MAX_PIECE) {
  const m = bytesOf(message);
  const room = maxPiece - PIECE_HEAD_LEN;
  if (m.length < 1 || room < 1) throw new RangeError('nothing to split, or no room for a piece');
  const count = Math.ceil(m.length / room);
  if (count > 0xffff) throw new RangeError(`a ${m.length}-byte message needs ${count} pieces`);
  const out = [];
  for (let index = 0; index < count; index++) {
    const [start, len] = pieceSpan(m.length, count, index);
    const p = new Uint8Array(PIECE_HEAD_LEN + len);
    const v = new DataView(p.buffer);
    v.setUint8(0, PIECE_MAGIC);
    v.setUint8(1, base === null ? 0 : PIECE_FLAG_CHAIN);
    v.setUint16(2, id & 0xffff, true);
    v.setUint16(4, index, true);
    v.setUint16(6, count, true);
    v.setUint16(8, base === null ? 0 : base & 0xffff, true);
    v.setUint32(12, m.length, true);
    p.set(m.subarray(start, start + len), PIECE_HEAD_LEN);
    out.push(p);
  }
  return out;
}

/** Whether u16 serial number `a` comes after `b` (less than half the space ahead). */
export function serialAfter(a, b) {
  const d = (a - b) & 0xffff;
  return d !== 0 && d < 0x8000;
}

/**
 * Puts messages back together from DataChannel pieces that may be lost,
 * reordered or duplicated. `push(piece)` returns {id, base, message} when
 * the piece completes a message, else null; it throws ProtocolError on a
 * malformed piece. At most `maxPending` unfinished messages are kept (the
 * oldest goes); a message older than the last one handed out is dropped,
 * so messages come out in id order, each at most once, never mixed.
 */
export class PieceReassembler {
  constructor(maxMessage = 4096 * 4096 * 4 + HEADER_LEN, maxPending = 4) {
    this.maxMessage = maxMessage;
    this.maxPending = Math.max(1, maxPending);
    this.pending = [];
    this.lastDone = null;
    this.dropped = 0;
    this.rejected = 0;
  }

  push(piece) {
    const p = bytesOf(piece);
    const bad = (msg) => {
      this.rejected++;
      return new ProtocolError(`DataChannel piece: ${msg}`);
    };
    if (p.length <= PIECE_HEAD_LEN) throw bad(`${p.length} bytes`);
    const v = new DataView(p.buffer, p.byteOffset, p.byteLength);
    if (v.getUint8(0) !== PIECE_MAGIC) throw bad(`magic 0x${hex(v.getUint8(0))}`);
    const flags = v.getUint8(1);
    if (flags & ~PIECE_FLAG_CHAIN || v.getUint16(10, true) !== 0) throw bad('reserved bits set');
    const id = v.getUint16(2, true);
    const index = v.getUint16(4, true);
    const count = v.getUint16(6, true);
    const base = flags & PIECE_FLAG_CHAIN ? v.getUint16(8, true) : null;
    const total = v.getUint32(12, true);
    if (count < 1 || index >= count) throw bad(`piece ${index} of ${count}`);
    if (total > this.maxMessage) throw bad(`a ${total}-byte message is over ${this.maxMessage}`);
    const span = pieceSpan(total, count, index);
    const body = p.subarray(PIECE_HEAD_LEN);
    if (!span || body.length !== span[1]) throw bad(`piece ${index} carries ${body.length} bytes`);
    if (this.lastDone !== null && !serialAfter(id, this.lastDone)) return null;
    let slot = this.pending.findIndex((m) => m.id === id);
    if (slot >= 0) {
      const m = this.pending[slot];
      if (m.count !== count || m.total !== total || m.base !== base) throw bad('disagrees with its message');
    } else {
      if (this.pending.length === this.maxPending) {
        this.pending.shift();
        this.dropped++;
      }
      this.pending.push({ id, count, total, base, bytes: new Uint8Array(total), have: new Uint8Array(count), missing: count });
      slot = this.pending.length - 1;
    }
    const m = this.pending[slot];
    if (m.have[index]) return null;
    m.bytes.set(body, span[0]);
    m.have[index] = 1;
    if (--m.missing > 0) return null;
    this.pending.splice(slot, 1);
    const before = this.pending.length;
    this.pending = this.pending.filter((o) => serialAfter(o.id, id));
    this.dropped += before - this.pending.length;
    this.lastDone = id;
    return { id, base, message: m.bytes };
  }
}

/**
 * Which copy of a pixel frame applies, the relay's or the DataChannel's
 * (see crates/wire/src/path_merge.rs): a direct keyframe applies if newer
 * than the picture, a direct delta only on its own base; while the direct
 * path leads, the relay's copy of a frame already drawn is skipped. With
 * no direct frames the relay path applies everything, as before.
 */
export class PathMerge {
  constructor() {
    this.picture = null;
    this.directLead = false;
  }
  reset() {
    this.picture = null;
    this.directLead = false;
  }
  fromRelay(seq) {
    if (this.directLead && this.picture !== null && !serialAfter(seq, this.picture)) return false;
    this.picture = seq;
    this.directLead = false;
    return true;
  }
  fromDirect(seq, keyframe, base) {
    const applies = keyframe
      ? this.picture === null || serialAfter(seq, this.picture)
      : this.picture !== null && base === this.picture && serialAfter(seq, base);
    if (applies) {
      this.picture = seq;
      this.directLead = true;
    }
    return applies;
  }
}

/** Whether a header is a pixel frame the merge orders (Pixels, Keyframe, DeltaPixels). */
function isPictureFrame(h) {
  return h.type === Frame.Pixels || h.type === Frame.Keyframe || h.type === Frame.DeltaPixels;
}

/** A random id for a signaling peer ("r-…" receivers, "s-…" sources). */
function peerId(prefix) {
  const b = new Uint8Array(8);
  crypto.getRandomValues(b);
  return `${prefix}-${Array.from(b, (x) => hex(x)).join('')}`;
}

/** ICE servers for a peer connection: the relay's `GET /turn` if it has them, else none (host candidates). */
export async function iceServers(loc) {
  try {
    const token = new URLSearchParams(loc.search || '').get('token');
    const res = await fetch(`${loc.protocol}//${loc.host}/turn${token ? `?token=${encodeURIComponent(token)}` : ''}`);
    if (!res.ok) return [];
    const t = await res.json();
    if (!Array.isArray(t.uris) || t.uris.length === 0) return [];
    return [{ urls: t.uris, username: t.username, credential: t.credential }];
  } catch {
    return [];
  }
}

/** Resolves once `pc` has gathered its candidates (they ride in the SDP: no trickle), or after `ms`. */
function gathered(pc, ms = 2000) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      pc.removeEventListener('icegatheringstatechange', check);
      resolve();
    };
    const check = () => pc.iceGatheringState === 'complete' && done();
    const timer = setTimeout(done, ms);
    pc.addEventListener('icegatheringstatechange', check);
  });
}

/** Parses a signaling text message of this page's scheme (docs/webrtc.md), or null. */
function parseSignal(text) {
  if (typeof text !== 'string') return null;
  try {
    const m = JSON.parse(text);
    return m && m.v === 1 && typeof m.t === 'string' && typeof m.from === 'string' ? m : null;
  } catch {
    return null;
  }
}

/**
 * The source page's side: answers each receiver's offer on
 * `/signal/{channel}` with one peer connection (up to `max`; beyond that
 * it answers "busy" and the receiver stays on the relay) while `live()`
 * (its relay connection is open: it is the channel's source), and sends
 * every pixel frame it publishes to each open DataChannel as pieces.
 */
export class WebRtcSource {
  constructor(loc, channel, { max = 4, maxBuffered = 4 << 20, live = () => true } = {}) {
    this.id = peerId('s');
    this.max = max;
    this.live = live; // only the channel's source answers: a page the relay refused stays quiet
    this.maxBuffered = maxBuffered;
    this.peers = new Map(); // receiver id -> {pc, dc}
    this.nextId = 0;
    this.sent = 0; // pictures sent to some DataChannel
    this.skipped = 0; // pictures a congested DataChannel did not get
    this.busy = 0; // offers refused for the cap
    this.lastError = null;
    this.ice = iceServers(loc);
    this.signal = new ReconnectingSocket(relayUrls(loc, 'signal', channel), {
      onMessage: (data) => this.onSignal(parseSignal(data)),
    });
  }

  /** DataChannels open now. */
  get open() {
    let n = 0;
    for (const p of this.peers.values()) if (p.dc && p.dc.readyState === 'open') n++;
    return n;
  }

  say(msg) {
    this.signal.send(JSON.stringify({ v: 1, from: this.id, ...msg }));
  }

  async onSignal(m) {
    if (!m) return;
    if (m.t === 'bye' && m.to === this.id) {
      this.drop(m.from);
      return;
    }
    if (m.t !== 'offer' || typeof m.sdp !== 'string' || !this.live()) return;
    this.drop(m.from); // a receiver that offers again starts afresh
    if (this.peers.size >= this.max) {
      this.busy++;
      this.say({ t: 'busy', to: m.from });
      return;
    }
    const pc = new RTCPeerConnection({ iceServers: await this.ice });
    const peer = { pc, dc: null };
    this.peers.set(m.from, peer);
    pc.ondatachannel = (e) => {
      peer.dc = e.channel;
      peer.dc.binaryType = 'arraybuffer';
      peer.dc.onclose = () => this.drop(m.from, peer);
    };
    pc.onconnectionstatechange = () => {
      if (pc.connectionState === 'failed' || pc.connectionState === 'closed') this.drop(m.from, peer);
    };
    try {
      await pc.setRemoteDescription({ type: 'offer', sdp: m.sdp });
      await pc.setLocalDescription(await pc.createAnswer());
      await gathered(pc);
      if (this.peers.get(m.from) !== peer) return;
      this.say({ t: 'answer', to: m.from, sdp: pc.localDescription.sdp });
    } catch (e) {
      this.lastError = `webrtc: ${e.message}`;
      this.drop(m.from, peer);
    }
  }

  /** Closes the peer connection of receiver `rid` (only `peer`'s, if given). */
  drop(rid, peer) {
    const p = this.peers.get(rid);
    if (!p || (peer && p !== peer)) return;
    this.peers.delete(rid);
    p.pc.close();
  }

  /** Sends one pixel frame (a whole PROTOCOL.md message) with its base (null for a keyframe) to every open DataChannel. */
  sendPicture(msg, base) {
    if (this.open === 0) return;
    const pieces = splitPieces(msg, this.nextId, base);
    this.nextId = (this.nextId + 1) & 0xffff;
    let any = false;
    for (const p of this.peers.values()) {
      const dc = p.dc;
      if (!dc || dc.readyState !== 'open') continue;
      if (dc.bufferedAmount > this.maxBuffered) {
        this.skipped++; // the receiver gets it from the relay
        continue;
      }
      try {
        for (const piece of pieces) dc.send(piece);
        any = true;
      } catch (e) {
        this.lastError = `webrtc send: ${e.message}`;
      }
    }
    if (any) this.sent++;
  }

  close() {
    for (const rid of [...this.peers.keys()]) this.drop(rid);
    this.signal.close();
  }
}

/**
 * The receiver page's side: offers an unordered, unreliable DataChannel
 * (`ordered: false, maxRetransmits: 0`) to the channel's source over
 * `/signal/{channel}` and hands each whole message that comes over it to
 * `onPicture(message, base, arrival)`. `transport` is 'webrtc' while the
 * DataChannel is open, else 'websocket'; every change counts in
 * `transportChanges`. An attempt that is not open within `upgradeMs`, a
 * "busy" source, or a DataChannel that closes or fails falls back to the
 * WebSocket (which stays open throughout) and tries again after a backoff
 * (5 s doubling to 60 s).
 */
export class WebRtcReceiver {
  constructor(loc, channel, { onPicture, onTransport = () => {}, upgradeMs = 5000 } = {}) {
    this.id = peerId('r');
    this.onPicture = onPicture;
    this.onTransport = onTransport;
    this.upgradeMs = upgradeMs;
    this.transport = 'websocket';
    this.transportChanges = 0;
    this.attempts = 0;
    this.failures = 0;
    this.pieces = new PieceReassembler();
    this.received = 0; // whole messages over the DataChannel
    this.pc = null;
    this.dc = null;
    this.source = null;
    this.timer = null;
    this.retryMs = 5000;
    this.stopped = false;
    this.lastError = null;
    this.ice = iceServers(loc);
    this.signal = new ReconnectingSocket(relayUrls(loc, 'signal', channel), {
      onOpen: () => {
        if (!this.pc) this.attempt();
      },
      onMessage: (data) => this.onSignal(parseSignal(data)),
    });
  }

  setTransport(t) {
    if (this.transport === t) return;
    this.transport = t;
    this.transportChanges++;
    this.onTransport(t);
  }

  async attempt() {
    clearTimeout(this.timer);
    this.timer = null;
    if (this.stopped || this.pc || this.signal.state !== 'open') return;
    this.attempts++;
    this.pieces = new PieceReassembler();
    const pc = new RTCPeerConnection({ iceServers: await this.ice });
    if (this.stopped || this.pc) {
      pc.close();
      return;
    }
    this.pc = pc;
    const dc = pc.createDataChannel('frames', { ordered: false, maxRetransmits: 0 });
    dc.binaryType = 'arraybuffer';
    this.dc = dc;
    dc.onopen = () => {
      if (this.pc !== pc) return;
      this.retryMs = 5000;
      this.setTransport('webrtc');
    };
    dc.onclose = () => this.fallBack(pc, 'DataChannel closed');
    dc.onmessage = (e) => {
      if (this.pc !== pc) return;
      let done;
      try {
        done = this.pieces.push(e.data);
      } catch (err) {
        this.lastError = err.message;
        return;
      }
      if (done) {
        this.received++;
        this.onPicture(done.message, done.base, performance.now());
      }
    };
    pc.onconnectionstatechange = () => {
      if (pc.connectionState === 'failed' || pc.connectionState === 'closed') this.fallBack(pc, `peer connection ${pc.connectionState}`);
    };
    // Not open in time: fall back and try later.
    const deadline = setTimeout(() => {
      if (this.pc === pc && dc.readyState !== 'open') this.fallBack(pc, 'not open in time');
    }, this.upgradeMs);
    try {
      await pc.setLocalDescription(await pc.createOffer());
      await gathered(pc);
      if (this.pc !== pc) return;
      this.signal.send(JSON.stringify({ v: 1, t: 'offer', from: this.id, sdp: pc.localDescription.sdp }));
    } catch (e) {
      clearTimeout(deadline);
      this.fallBack(pc, e.message);
    }
  }

  async onSignal(m) {
    if (!m || m.to !== this.id || !this.pc) return;
    const pc = this.pc;
    if (m.t === 'busy') {
      this.fallBack(pc, 'the source is at its peer cap');
    } else if (m.t === 'answer' && typeof m.sdp === 'string' && pc.signalingState === 'have-local-offer') {
      this.source = m.from;
      try {
        await pc.setRemoteDescription({ type: 'answer', sdp: m.sdp });
      } catch (e) {
        this.fallBack(pc, e.message);
      }
    }
  }

  /** Back to the WebSocket alone; another attempt after the backoff. */
  fallBack(pc, why) {
    if (this.pc !== pc) return;
    this.failures++;
    this.lastError = `webrtc: ${why}`;
    if (this.source) this.signal.send(JSON.stringify({ v: 1, t: 'bye', from: this.id, to: this.source }));
    this.pc = null;
    this.dc = null;
    this.source = null;
    pc.close();
    this.setTransport('websocket');
    if (this.stopped) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.attempt(), this.retryMs);
    this.retryMs = Math.min(60000, this.retryMs * 2);
  }

  /** Closes the peer connection as a failure would (tests; a new source): falls back, retries later. */
  closePeer(why = 'closed by the page') {
    if (this.pc) this.fallBack(this.pc, why);
  }

  close() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.pc) this.fallBack(this.pc, 'page closed');
    this.signal.close();
  }
}

// ---------------------------------------------------------------------------
// Audio: interleaved s16le PCM through WebAudio
// ---------------------------------------------------------------------------

/** Plays AudioPcm payloads (channels = width, rate = height*10) back to back. */
export class PcmPlayer {
  constructor() {
    this.ctx = null;
    this.next = 0;
    this.chunks = 0;
  }

  /** Must run from a user gesture (autoplay policy). */
  async enable() {
    const Ctx = globalThis.AudioContext || globalThis.webkitAudioContext;
    if (!Ctx) throw new Error('WebAudio is not available');
    this.ctx ??= new Ctx();
    await this.ctx.resume();
  }

  play(header, payload) {
    const ctx = this.ctx;
    if (!ctx || header.flags & FLAG_COMPRESSED) return;
    const channels = header.width;
    const rate = header.height * 10;
    if (channels < 1 || channels > 32 || rate < 3000 || rate > 768000) {
      throw new ProtocolError(`AudioPcm with ${channels} channels at ${rate} Hz`);
    }
    const frames = Math.floor(payload.length / (2 * channels));
    if (frames === 0) return;
    const buf = ctx.createBuffer(channels, frames, rate);
    const v = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
    for (let c = 0; c < channels; c++) {
      const out = buf.getChannelData(c);
      for (let i = 0; i < frames; i++) out[i] = v.getInt16((i * channels + c) * 2, true) / 32768;
    }
    const src = ctx.createBufferSource();
    src.buffer = buf;
    src.connect(ctx.destination);
    const now = ctx.currentTime;
    // Keep a small lead; resynchronize after an underrun or a pile-up.
    if (this.next < now + 0.01 || this.next > now + 1) this.next = now + 0.06;
    src.start(this.next);
    this.next += frames / rate;
    this.chunks++;
  }
}

// ---------------------------------------------------------------------------
// The page
// ---------------------------------------------------------------------------

const $ = (id) => document.getElementById(id);

function pageClock() {
  const t0 = performance.now();
  return () => Math.floor(performance.now() - t0) >>> 0;
}

function showStatus(state, detail, what, label = state) {
  const el = $('status');
  el.textContent = detail ? `${label} (${detail})` : label;
  el.className = state;
  document.title = `${what} · ${state} · bitstream-relay`;
}

function formatJson(v) {
  return JSON.stringify(v, null, 2);
}

// ---------------------------------------------------------------------------
// Pages that explain themselves: refusals, an ended stream, the bare page
// ---------------------------------------------------------------------------

/** The plain HTTP URL of a relay WebSocket URL (ws: → http:, wss: → https:). */
export function httpUrlOf(wsUrl) {
  return String(wsUrl).replace(/^ws(s?):/i, 'http$1:');
}

/**
 * `GET /channels/{name}` on the relay of WebSocket URL `wsUrl`, with its
 * query (the page's token) kept: whether the channel still has a source.
 */
export function channelInfoUrl(wsUrl, name) {
  const u = new URL(httpUrlOf(wsUrl));
  u.pathname = `/channels/${encodeURIComponent(name)}`;
  return u.href;
}

/**
 * What a page says when the relay answered a plain GET of its WebSocket URL
 * with `status` and body `text` (a failed handshake tells a browser
 * nothing, the same URL over HTTP gets the refusal): {status, hint} for a
 * refusal, or null when the relay would have accepted (426) or answered OK.
 */
export function explainRefusal(status, text, role, channel) {
  if (status < 400 || status === 426) return null;
  const reason = String(text || '').trim() || `HTTP ${status}`;
  const mint = `bitstream-relay token --channel ${channel} --role ${role}`;
  const act = role === 'source' ? 'publish on' : 'watch';
  if (status === 401 && reason.includes('required')) {
    return {
      status: 'refused: 401, a token is required',
      hint: `This relay requires a token (401: ${reason}). Add &token=… to this page's URL; whoever runs the relay mints one with: ${mint}`,
    };
  }
  if (status === 401 || status === 403) {
    return {
      status: `refused: ${status}, ${reason}`,
      hint: `The relay refused this page's token (${status}: ${reason}): it must let this page ${act} ${channel}. A new one: ${mint}`,
    };
  }
  if (status === 409) {
    return {
      status: `refused: 409, ${reason}`,
      hint: `Another source is publishing on ${channel} (409: ${reason}); this page retries until it leaves. Or publish on another channel: ?mode=source&channel=…`,
    };
  }
  return { status: `refused: ${status}, ${reason}`, hint: `The relay refused the connection (${status}: ${reason}).` };
}

/** Shows `text` in the page's note line (`kind` 'info' is not an error); empty hides it. */
function setHint(text, kind = 'error') {
  const el = $('hint');
  el.textContent = text || '';
  el.hidden = !text;
  el.className = kind === 'info' ? 'note info' : 'note';
}

/**
 * Finds out why connections to the relay fail: asks the same URL over
 * plain HTTP (`urlOf()`: the WebSocket URL in use) and keeps the answer's
 * explanation in `current` ({status, hint} or null); `onChange` runs when
 * it changes. Unreachable or cross-origin relays explain nothing.
 */
class RefusalProbe {
  constructor(urlOf, role, channel, onChange) {
    Object.assign(this, { urlOf, role, channel, onChange });
    this.current = null;
    this.busy = false;
  }

  async check() {
    if (this.busy) return;
    this.busy = true;
    try {
      const url = this.urlOf();
      const r = await fetch(httpUrlOf(url), { cache: 'no-store' });
      let why = explainRefusal(r.status, await r.text(), this.role, this.channel);
      if (!why && r.status === 426 && this.role === 'source') {
        // The token would do; a second source is refused (409) at the upgrade only.
        const info = await fetch(channelInfoUrl(url, this.channel), { cache: 'no-store' });
        if (info.ok && (await info.json()).source === true) {
          why = explainRefusal(409, 'the channel already has a source', this.role, this.channel);
        }
      }
      this.set(why);
    } catch {
      // Not reachable over HTTP from here: the bare retry is all we know.
    } finally {
      this.busy = false;
    }
  }

  clear() {
    this.set(null);
  }

  set(v) {
    if (JSON.stringify(v) === JSON.stringify(this.current)) return;
    this.current = v;
    this.onChange();
  }
}

/** Link to a page of this relay, the page's token passed on. */
function pageLink(query) {
  const token = new URLSearchParams(location.search).get('token');
  return `/?${query}${token ? `&token=${encodeURIComponent(token)}` : ''}`;
}

/**
 * The bare page (`/` without `?channel=`): how to publish, and the live
 * channels from `/channels` as links, refreshed every 5 s.
 * `window.relayLanding` holds what was listed, for tests.
 */
function showLanding() {
  const ws = location.protocol === 'https:' ? 'wss' : 'ws';
  $('landing').hidden = false;
  $('pattern-command').textContent = `bitstream-relay pattern --url ${ws}://${location.host}/source/demo`;
  $('source-link').href = pageLink('mode=source&channel=demo');
  $('watch-link').href = pageLink('channel=demo');
  window.relayLanding = { channels: null, error: null };
  const list = async () => {
    const token = new URLSearchParams(location.search).get('token');
    let items;
    try {
      const r = await fetch(`/channels${token ? `?token=${encodeURIComponent(token)}` : ''}`, { cache: 'no-store' });
      if (!r.ok) throw new Error(`${r.status}: ${(await r.text()).trim()}`);
      const live = (await r.json()).filter((c) => c.source).map((c) => c.name).sort();
      window.relayLanding = { channels: live, error: null };
      items = live.map((name) => {
        const li = document.createElement('li');
        const a = document.createElement('a');
        a.href = pageLink(`channel=${encodeURIComponent(name)}`);
        a.textContent = name;
        li.append(a);
        return li;
      });
      if (items.length === 0) items = [Object.assign(document.createElement('li'), { textContent: 'none right now: publish one (below)' })];
    } catch (e) {
      window.relayLanding = { channels: null, error: e.message };
      const why = e.message.startsWith('401') ? ' (listing channels needs a token for every channel: add &token=…)' : '';
      items = [Object.assign(document.createElement('li'), { textContent: `cannot list channels: ${e.message}${why}` })];
    }
    $('channel-list').replaceChildren(...items);
  };
  list();
  setInterval(list, 5000);
}

/** Receiver mode: render the channel, play audio, send input back. */
function startReceiver(channel) {
  const canvas = $('view');
  const ctx = canvas.getContext('2d');
  const st = new ReceiverState();
  const audio = new PcmPlayer();
  const audioButton = $('audio'); // shown once the stream carries audio
  const refusal = new RefusalProbe(() => conn.currentUrl, 'receiver', channel, () => renderStatus());
  const now = pageClock();
  let inputSeq = 0;
  let inputsSent = 0;
  let drawn = 0; // st.frames at the last draw
  let drawPending = false;
  let compressedGen = 0;
  let ended = false;
  // Why the picture is not live while connected: {kind: 'ended' | 'waiting', why} or null.
  let idle = null;
  let lastArrival = performance.now();
  let connState = 'connecting';
  let connDetail = '';
  let minOffset = Infinity; // min(arrival - frame timestamp): the latency baseline
  let lastTimestamp = 0;
  let latency = null;

  const draw = () => {
    drawPending = false;
    if (!st.frame || !st.haveBase) return;
    if (canvas.width !== st.width || canvas.height !== st.height) {
      canvas.width = st.width;
      canvas.height = st.height;
    }
    const img = new ImageData(new Uint8ClampedArray(st.frame.buffer, st.frame.byteOffset, st.frame.length), st.width, st.height);
    ctx.putImageData(img, 0, 0);
    drawn = st.frames;
  };
  const scheduleDraw = () => {
    if (drawPending) return;
    drawPending = true;
    // Coalesce to one draw per display frame; draw at once when hidden (no rAF).
    if (document.hidden) queueMicrotask(draw);
    else requestAnimationFrame(draw);
  };

  const drawCompressed = async (payload) => {
    const gen = ++compressedGen;
    const bitmap = await createImageBitmap(new Blob([payload]));
    if (gen !== compressedGen) return; // a newer frame arrived meanwhile
    canvas.width = bitmap.width;
    canvas.height = bitmap.height;
    ctx.drawImage(bitmap, 0, 0);
    drawn = st.frames;
  };

  const onPixels = (header) => {
    compressedGen++;
    ended = false;
    setIdle(null);
    const arrival = performance.now();
    if (header.timestamp < lastTimestamp) minOffset = Infinity; // the stream restarted
    lastTimestamp = header.timestamp;
    const offset = arrival - header.timestamp;
    minOffset = Math.min(minOffset, offset);
    latency = offset - minOffset;
    scheduleDraw();
  };

  const onMessage = (data) => {
    lastArrival = performance.now();
    let m;
    try {
      m = st.handle(data);
    } catch (e) {
      st.fail(`${e.name}: ${e.message}`);
      return;
    }
    if (m.kind === 'pixels' || m.kind === 'duplicate') rtcArrivals.note(m.header, 'relay');
    switch (m.kind) {
      case 'pixels':
        onPixels(m.header);
        break;
      case 'compressed':
        drawCompressed(m.payload.slice()).catch((e) => st.fail(`CompressedPixels: ${e.message}`));
        break;
      case 'signal':
        $('signal').textContent = formatJson(st.signal);
        break;
      case 'audio':
        audioButton.hidden = false; // the stream carries audio: offer to play it
        try {
          audio.play(m.header, m.payload);
        } catch (e) {
          st.fail(`${e.name}: ${e.message}`);
        }
        break;
      case 'end':
        ended = true;
        setIdle({ kind: 'ended', why: 'the source ended the stream; waiting for a new one' });
        break;
      case 'mark':
        // A new stream (or a catch-up): its timestamps start afresh.
        if (m.reset || m.mark.kind === MarkKind.Changed) minOffset = Infinity;
        if (m.mark.kind === MarkKind.Changed) setIdle(null);
        // A new source: the peer connection was the old one's.
        if (m.mark.kind === MarkKind.Changed) rtc?.closePeer('a new source');
        if (m.reset) {
          // The catch-up replaces the state; the canvas keeps the last
          // picture until the catch-up's own is drawn (no blank flash).
          compressedGen++;
          lastTimestamp = 0;
          $('signal').textContent = formatJson(st.signal);
        }
        break;
    }
  };

  const conn = new ReconnectingSocket(relayUrls(location, 'stream', channel), {
    decorate: (url) => st.resumeUrl(url),
    onOpen: () => st.connected(),
    onMessage,
    onState: (state, detail) => {
      connState = state;
      connDetail = detail;
      if (state === 'open') refusal.clear();
      renderStatus();
      if (state === 'closed' && detail.startsWith('connection failed')) refusal.check();
    },
  });

  // --- status: refusals explained, an ended or sourceless stream ----------
  function renderStatus() {
    const r = refusal.current;
    if (connState !== 'open' && r) {
      showStatus(connState, connDetail.replace(/^connection failed/, r.status), channel);
      setHint(r.hint);
    } else if (connState === 'open' && idle) {
      showStatus(idle.kind, idle.why, channel, idle.kind === 'ended' ? 'stream ended' : 'waiting for a source');
      const ws = location.protocol === 'https:' ? 'wss' : 'ws';
      const publish = `publish from ${location.origin}${pageLink(`mode=source&channel=${encodeURIComponent(channel)}`)} or with: bitstream-relay pattern --url ${ws}://${location.host}/source/${channel}`;
      // The bare page's own box already says how to publish.
      const waiting = $('landing').hidden ? `Nothing is published on ${channel} yet: ${publish}` : '';
      setHint(idle.kind === 'ended' ? `Stream ended: ${idle.why}. The last picture stays until a source publishes on ${channel} again.` : waiting, 'info');
    } else {
      showStatus(connState, connDetail, channel);
      setHint('');
    }
  }
  function setIdle(v) {
    if (JSON.stringify(v) === JSON.stringify(idle)) return;
    idle = v;
    renderStatus();
  }
  // A source that leaves without a StreamEnd sends nothing more: after a
  // quiet spell, ask the relay whether the channel still has a source.
  let probing = false;
  setInterval(async () => {
    if (probing || connState !== 'open' || idle?.kind === 'ended' || performance.now() - lastArrival < 3000) return;
    probing = true;
    try {
      const r = await fetch(channelInfoUrl(conn.currentUrl, channel), { cache: 'no-store' });
      const live = r.ok ? (await r.json()).source === true : r.status === 404 ? false : null;
      if (live === true) setIdle(null);
      else if (live === false) {
        setIdle(st.frames > 0
          ? { kind: 'ended', why: 'the source left; waiting for it to come back' }
          : { kind: 'waiting', why: `nothing published on ${channel} yet` });
      }
    } catch {
      // The relay cannot be asked from here: keep showing what we know.
    } finally {
      probing = false;
    }
  }, 2000);
  // --- WebRTC upgrade (?transport=webrtc; docs/webrtc.md) ---------------------
  const rtcArrivals = new ArrivalLog();
  let rtcApplied = 0;
  const wantRtc = new URLSearchParams(location.search).get('transport') === 'webrtc' && !!globalThis.RTCPeerConnection;
  const rtc = wantRtc
    ? new WebRtcReceiver(location, channel, {
        onPicture: (msg, base) => {
          try {
            const m = st.handleDirect(msg, base);
            rtcArrivals.note(parseHeader(msg), 'direct');
            if (m) {
              rtcApplied++;
              onPixels(m.header);
            }
          } catch (e) {
            st.fail(`DataChannel: ${e.name}: ${e.message}`);
          }
        },
      })
    : null;

  // --- input ---------------------------------------------------------------
  const send = (type, fields) => {
    if (conn.send(inputMessage(type, fields, inputSeq, now()))) {
      inputSeq = (inputSeq + 1) & 0xffff;
      inputsSent++;
    }
  };
  const pointer = (type) => (e) => {
    if (e.pointerType === 'touch') return; // touch has its own messages
    const p = canvasPoint(canvas, e.clientX, e.clientY);
    if (!p) return;
    if (type === Input.PointerDown) {
      canvas.focus();
      canvas.setPointerCapture?.(e.pointerId);
    }
    send(type, { x: p[0], y: p[1], buttons: e.buttons });
  };
  canvas.addEventListener('pointermove', pointer(Input.Pointer));
  canvas.addEventListener('pointerdown', pointer(Input.PointerDown));
  canvas.addEventListener('pointerup', pointer(Input.PointerUp));
  canvas.addEventListener('contextmenu', (e) => e.preventDefault());

  const touch = (type) => (e) => {
    e.preventDefault();
    for (const t of e.changedTouches) {
      const p = canvasPoint(canvas, t.clientX, t.clientY);
      if (p) send(type, { id: t.identifier & 0xff, x: p[0], y: p[1] });
    }
  };
  canvas.addEventListener('touchstart', touch(Input.Touch), { passive: false });
  canvas.addEventListener('touchmove', touch(Input.Touch), { passive: false });
  canvas.addEventListener('touchend', touch(Input.TouchEnd), { passive: false });
  canvas.addEventListener('touchcancel', touch(Input.TouchEnd), { passive: false });

  const key = (type) => (e) => {
    if (e.isComposing) return;
    // Keep the browser's own shortcuts (ctrl/meta combinations, F-keys).
    if (!e.ctrlKey && !e.metaKey && !/^F\d+$/.test(e.key)) e.preventDefault();
    send(type, { keycode: e.keyCode, modifiers: modifierMask(e) });
  };
  canvas.addEventListener('keydown', key(Input.KeyDown));
  canvas.addEventListener('keyup', key(Input.KeyUp));

  canvas.addEventListener(
    'wheel',
    (e) => {
      e.preventDefault();
      const k = e.deltaMode === 1 ? 16 : e.deltaMode === 2 ? canvas.height : 1;
      send(Input.Scroll, { dx: e.deltaX * k, dy: e.deltaY * k });
    },
    { passive: false },
  );

  // Gamepad: the first connected pad, polled once per display frame while one is there.
  let polling = false;
  const lastAxes = [];
  const lastButtons = [];
  const pollPad = () => {
    const pads = navigator.getGamepads ? Array.from(navigator.getGamepads()) : [];
    const pad = pads.find((p) => p && p.connected);
    if (!pad) {
      polling = false;
      return;
    }
    pad.axes.slice(0, 256).forEach((a, i) => {
      const v = clampInt(a * 32767, -32768, 32767);
      const last = lastAxes[i] ?? 0;
      if (Math.abs(v - last) >= 256 || (v === 0 && last !== 0)) {
        lastAxes[i] = v;
        send(Input.GamepadAxis, { axis: i, value: v });
      }
    });
    pad.buttons.slice(0, 256).forEach((b, i) => {
      const v = clampInt(b.value * 65535, 0, 65535);
      const last = lastButtons[i] ?? { pressed: false, value: 0 };
      if (b.pressed !== last.pressed || Math.abs(v - last.value) >= 256) {
        lastButtons[i] = { pressed: b.pressed, value: v };
        send(Input.GamepadButton, { button: i, pressed: b.pressed ? 1 : 0, value: v });
      }
    });
    requestAnimationFrame(pollPad);
  };
  const startPad = () => {
    if (polling) return;
    polling = true;
    requestAnimationFrame(pollPad);
  };
  window.addEventListener('gamepadconnected', startPad);
  if (navigator.getGamepads && Array.from(navigator.getGamepads()).some((p) => p)) startPad();

  // --- audio button and stats ------------------------------------------------
  audioButton.addEventListener('click', async () => {
    try {
      await audio.enable();
      audioButton.textContent = 'audio on';
      audioButton.disabled = true;
    } catch (e) {
      st.fail(`audio: ${e.message}`);
    }
  });

  let prev = { t: performance.now(), frames: 0, bytes: 0 };
  setInterval(() => {
    const t = performance.now();
    const secs = (t - prev.t) / 1000;
    const fps = (st.frames - prev.frames) / secs;
    const mbps = (st.bytes - prev.bytes) / secs / 1e6;
    prev = { t, frames: st.frames, bytes: st.bytes };
    const parts = [
      `${fps.toFixed(1)} fps`,
      `${mbps.toFixed(2)} MB/s`,
      `frames ${st.frames}`,
      `messages ${st.messages}`,
      st.width ? `${st.width}×${st.height}` : 'no picture yet',
      latency === null ? null : `latency +${latency.toFixed(0)} ms (vs. best)`,
      `inputs sent ${inputsSent}`,
      audio.ctx ? `audio chunks ${audio.chunks}` : null,
      ended ? 'stream ended' : null,
      st.resumes || st.fullCatchups ? `reconnects: ${st.resumes} resumed, ${st.fullCatchups} caught up` : null,
      st.lastError ? `last error: ${st.lastError}` : null,
    ];
    $('stats').textContent = parts.filter(Boolean).join(' · ');
  }, 1000);

  return {
    mode: 'receiver',
    channel,
    get state() {
      return conn.state;
    },
    /** Why the picture is not live while connected: {kind: 'ended' | 'waiting', why}, or null. */
    get idle() {
      return idle;
    },
    /** The relay's refusal of the last failed connection: {status, hint}, or null. */
    get refusal() {
      return refusal.current;
    },
    /** Reconnects the relay resumed, and those that started over from its catch-up. */
    get resumes() {
      return { resumes: st.resumes, fullCatchups: st.fullCatchups };
    },
    /** The stream (epoch, lowercase hex) the last relay mark named, or null before any. */
    get epoch() {
      return st.epoch;
    },
    /** The header seq a reconnect resumes after (in `epoch`), or -1. */
    get resumeSeq() {
      return st.resumeSeq;
    },
    get frames() {
      return st.frames;
    },
    get drawn() {
      return drawn;
    },
    get seq() {
      return st.seq;
    },
    get width() {
      return st.width;
    },
    get height() {
      return st.height;
    },
    get signal() {
      return st.signal;
    },
    get lastError() {
      return st.lastError;
    },
    get errors() {
      return st.errors;
    },
    get messages() {
      return st.messages;
    },
    get bytes() {
      return st.bytes;
    },
    get inputsSent() {
      return inputsSent;
    },
    get retries() {
      return conn.attempt;
    },
    get url() {
      return conn.currentUrl;
    },
    get audioChunks() {
      return audio.chunks;
    },
    pixels() {
      return st.frame ? st.frame.slice() : new Uint8Array(0);
    },
    /** 'webrtc' while a DataChannel from the source is open, else 'websocket'. */
    get transport() {
      return rtc ? rtc.transport : 'websocket';
    },
    /** How often `transport` changed. */
    get transportChanges() {
      return rtc ? rtc.transportChanges : 0;
    },
    /** The upgrade's counters: attempts, failures, whole messages received and applied over the DataChannel, pieces lost or refused. */
    get webrtc() {
      if (!rtc) return null;
      return {
        attempts: rtc.attempts,
        failures: rtc.failures,
        received: rtc.received,
        applied: rtcApplied,
        dropped: rtc.pieces.dropped,
        rejected: rtc.pieces.rejected,
        lastError: rtc.lastError,
      };
    },
    /** Arrival times (epoch ms) of recent pixel frames by path: [{seq, timestamp, keyframe, relay, direct}]. */
    arrivals() {
      return rtcArrivals.list();
    },
    /** Closes the peer connection as a failure would: back to the WebSocket, a new attempt later. */
    closePeer() {
      rtc?.closePeer();
    },
    close() {
      rtc?.close();
      conn.close();
    },
  };
}

/** When each recent pixel frame arrived over the relay and over the DataChannel (for measurements). */
class ArrivalLog {
  constructor(max = 2000) {
    this.max = max;
    this.bySeq = new Map();
  }
  note(h, path) {
    let e = this.bySeq.get(h.seq);
    if (!e || e.timestamp !== h.timestamp) {
      e = { seq: h.seq, timestamp: h.timestamp, keyframe: h.type !== Frame.DeltaPixels, relay: null, direct: null };
      this.bySeq.delete(h.seq);
      this.bySeq.set(h.seq, e);
      if (this.bySeq.size > this.max) this.bySeq.delete(this.bySeq.keys().next().value);
    }
    if (e[path] === null) e[path] = performance.timeOrigin + performance.now();
  }
  list() {
    return [...this.bySeq.values()].map((e) => ({ ...e }));
  }
}

/** Draws one frame of the generated animation (opaque, so alpha is 255). */
function drawScene(ctx, w, h, n, marks) {
  const t = n / 30;
  const bg = ctx.createLinearGradient(0, 0, 0, h);
  bg.addColorStop(0, '#14213d');
  bg.addColorStop(1, '#3a0ca3');
  ctx.fillStyle = bg;
  ctx.fillRect(0, 0, w, h);
  ctx.strokeStyle = 'rgba(255,255,255,0.12)';
  ctx.lineWidth = 1;
  const step = Math.max(8, Math.round(Math.min(w, h) / 8));
  ctx.beginPath();
  for (let x = 0.5; x < w; x += step) ctx.moveTo(x, 0), ctx.lineTo(x, h);
  for (let y = 0.5; y < h; y += step) ctx.moveTo(0, y), ctx.lineTo(w, y);
  ctx.stroke();
  // A bouncing ball and a sweeping bar: small moving parts, so deltas stay small.
  const r = Math.max(3, Math.min(w, h) / 10);
  const bx = r + (w - 2 * r) * (0.5 + 0.5 * Math.sin(t * 1.3));
  const by = r + (h - 2 * r) * Math.abs(Math.sin(t * 2.1));
  ctx.fillStyle = '#ffb703';
  ctx.beginPath();
  ctx.arc(bx, by, r, 0, Math.PI * 2);
  ctx.fill();
  ctx.fillStyle = '#06d6a0';
  ctx.fillRect(((n * 3) % (w + 40)) - 40, h - Math.max(4, h / 20), 40, Math.max(4, h / 20));
  for (const [mx, my] of marks) {
    ctx.strokeStyle = '#ef476f';
    ctx.lineWidth = 2;
    ctx.beginPath();
    ctx.arc(mx, my, Math.max(3, r / 2), 0, Math.PI * 2);
    ctx.stroke();
  }
  ctx.fillStyle = '#fff';
  ctx.font = `${Math.max(10, Math.round(h / 12))}px monospace`;
  ctx.textBaseline = 'top';
  ctx.fillText(`#${n}`, 4, 4);
}

function parseSize(s) {
  const m = /^(\d{1,5})x(\d{1,5})$/.exec(String(s).trim());
  if (!m) return null;
  const w = Number(m[1]);
  const h = Number(m[2]);
  return w >= 1 && h >= 1 && w <= 4096 && h <= 4096 ? [w, h] : null;
}

/** Source mode: stream a generated animation, list the inputs that come back. */
function startSource(channel, params) {
  const canvas = $('view');
  const ctx = canvas.getContext('2d', { willReadFrequently: true });
  const clockOrigin = performance.timeOrigin + performance.now();
  const now = pageClock();
  const fpsInput = $('fps');
  const encodingInput = $('encoding');
  const everyInput = $('keyframe-every');
  const sizeInput = $('size');
  const signalInput = $('send-signal');
  if (params.get('fps')) fpsInput.value = params.get('fps');
  if (params.get('encoding')) encodingInput.value = params.get('encoding');
  if (params.get('keyframe')) everyInput.value = params.get('keyframe');
  if (params.get('size')) sizeInput.value = params.get('size');
  if (params.get('signal')) signalInput.checked = params.get('signal') !== '0';
  $('source-controls').hidden = false;
  $('inputs-box').hidden = false;
  $('source-help').hidden = false;
  $('source-watch-link').href = pageLink(`channel=${encodeURIComponent(channel)}`);
  $('source-watch-link').textContent = `/?channel=${channel}`;

  let seq = 0;
  let n = 0; // frames generated
  let sent = 0; // frames sent
  let keyframes = 0;
  let bytesSent = 0;
  let skipped = 0;
  let lastSeq = -1;
  let forceKey = true;
  let prev = null; // the last frame sent (Uint8Array)
  let scratch = null;
  let lastPayload = 0;
  let timer = null;
  let running = false;
  let lastError = null;
  let signal = {};
  let signalSeq = 0;
  const inputs = [];
  const marks = [];
  let width = 0;
  let height = 0;

  const refusal = new RefusalProbe(() => conn.currentUrl, 'source', channel, () => conn.setState(conn.state, conn.detail));
  const conn = new ReconnectingSocket(relayUrls(location, 'source', channel), {
    onOpen: () => {
      forceKey = true; // whoever joins now needs a full frame
      if (signalInput.checked) sendSignal(Frame.SignalSync, { source: 'browser', started: new Date().toISOString() });
    },
    onMessage: (data) => {
      try {
        const ev = decodeInput(data);
        inputs.push(ev);
        if (inputs.length > 200) inputs.shift();
        if (ev.type === Input.PointerDown) {
          marks.push([ev.x, ev.y]);
          if (marks.length > 8) marks.shift();
        }
        const lines = inputs.slice(-40).reverse().map((e) => `#${e.seq} +${e.timestamp} ms  ${describeInput(e)}`);
        $('inputs').textContent = lines.join('\n');
      } catch (e) {
        lastError = `${e.name}: ${e.message}`;
      }
    },
    onState: (state, detail) => {
      if (state === 'open') refusal.clear();
      const r = refusal.current;
      showStatus(state, r && state !== 'open' ? detail.replace(/^connection failed/, r.status) : detail, `source ${channel}`);
      if (state === 'closed' && detail.startsWith('connection failed')) refusal.check();
      explain();
    },
  });

  /** The note line: a refusal, else what the page waits for. */
  function explain() {
    if (refusal.current) setHint(refusal.current.hint);
    else if (!running && sent === 0) setHint(`Waiting for start: press start to stream a test animation to ${channel} (or open this page with &autostart=1).`, 'info');
    else setHint('');
  }
  // WebRTC: answer receivers' offers, up to ?webrtc=N peer connections (default 4, 0 = none).
  const rtcMax = clampInt(params.get('webrtc') ?? 4, 0, 256);
  const rtc =
    rtcMax > 0 && globalThis.RTCPeerConnection
      ? new WebRtcSource(location, channel, { max: rtcMax, live: () => conn.state === 'open' })
      : null;

  function sendSignal(type, value) {
    const msg = buildMessage({ type, seq: signalSeq, timestamp: now() }, new TextEncoder().encode(JSON.stringify(value)));
    if (conn.send(msg)) {
      signalSeq = (signalSeq + 1) & 0xffff;
      signal = foldSignal(signal, type, value);
      $('signal').textContent = formatJson(signal);
    }
  }

  function tick() {
    const size = parseSize(sizeInput.value);
    if (!size) {
      lastError = `bad size ${JSON.stringify(sizeInput.value)} (want WxH)`;
      return;
    }
    const [w, h] = size;
    if (canvas.width !== w || canvas.height !== h) {
      canvas.width = w;
      canvas.height = h;
      forceKey = true;
    }
    n++;
    drawScene(ctx, w, h, n, marks);
    if (conn.state !== 'open') return;
    if (conn.bufferedAmount > 8 << 20) {
      skipped++; // the socket is behind: drop this frame (the next delta is against the last one sent)
      return;
    }
    const rgba = new Uint8Array(ctx.getImageData(0, 0, w, h).data.buffer);
    const every = Math.max(1, Number(everyInput.value) || 1);
    const key = forceKey || encodingInput.value !== 'delta' || !prev || prev.length !== rgba.length || sent % every === 0;
    const header = { seq, timestamp: now(), width: w, height: h };
    let msg;
    if (key) {
      msg = buildMessage({ ...header, type: Frame.Pixels, flags: FLAG_KEYFRAME }, rgba);
    } else {
      if (!scratch || scratch.length !== rgba.length) scratch = new Uint8Array(rgba.length);
      msg = buildMessage({ ...header, type: Frame.DeltaPixels }, encodeDelta(prev, rgba, scratch));
    }
    if (!conn.send(msg)) return;
    rtc?.sendPicture(msg, key ? null : lastSeq);
    lastPayload = msg.length - HEADER_LEN;
    lastSeq = seq;
    seq = (seq + 1) & 0xffff;
    sent++;
    bytesSent += msg.length;
    if (key) keyframes++;
    forceKey = false;
    prev = rgba;
    width = w;
    height = h;
  }

  function start() {
    stop();
    const fps = Math.min(120, Math.max(1, Number(fpsInput.value) || 30));
    running = true;
    timer = setInterval(tick, 1000 / fps);
    explain();
  }
  function stop() {
    running = false;
    clearInterval(timer);
    timer = null;
    explain();
  }
  $('start').addEventListener('click', start);
  $('stop').addEventListener('click', stop);
  fpsInput.addEventListener('change', () => running && start());

  let last = { t: performance.now(), sent: 0, bytes: 0 };
  const showStats = () => {
    const t = performance.now();
    const secs = Math.max(0.001, (t - last.t) / 1000);
    const fps = (sent - last.sent) / secs;
    const mbps = (bytesSent - last.bytes) / secs / 1e6;
    last = { t, sent, bytes: bytesSent };
    if (running && signalInput.checked && conn.state === 'open') {
      sendSignal(Frame.SignalDiff, { frame: n, fps: Math.round(fps * 10) / 10, encoding: encodingInput.value, size: `${canvas.width}x${canvas.height}` });
    }
    const parts = [
      running ? 'streaming' : sent === 0 ? 'waiting for start' : 'stopped',
      `${fps.toFixed(1)} fps`,
      `${mbps.toFixed(2)} MB/s`,
      `frames sent ${sent} (keyframes ${keyframes})`,
      `last payload ${lastPayload} B`,
      skipped ? `skipped ${skipped}` : null,
      `inputs ${inputs.length}`,
      lastError ? `last error: ${lastError}` : null,
    ];
    $('stats').textContent = parts.filter(Boolean).join(' · ');
  };
  setInterval(showStats, 1000);

  drawScene(ctx, canvas.width, canvas.height, 0, marks);
  if (params.get('autostart') === '1') start();
  explain();
  showStats();

  return {
    mode: 'source',
    channel,
    get state() {
      return conn.state;
    },
    get frames() {
      return sent;
    },
    get seq() {
      return lastSeq;
    },
    get width() {
      return width;
    },
    get height() {
      return height;
    },
    get signal() {
      return signal;
    },
    get lastError() {
      return lastError;
    },
    get inputs() {
      return inputs.slice();
    },
    get running() {
      return running;
    },
    get retries() {
      return conn.attempt;
    },
    get url() {
      return conn.currentUrl;
    },
    pixels() {
      return prev ? prev.slice() : new Uint8Array(0);
    },
    /** The epoch ms of header timestamp 0 (for latency measurements). */
    clockOrigin,
    /** Peer connections: DataChannels open, pictures sent over them, skipped for congestion, offers refused for the cap. */
    get webrtc() {
      if (!rtc) return null;
      return { open: rtc.open, peers: rtc.peers.size, sent: rtc.sent, skipped: rtc.skipped, busy: rtc.busy, lastError: rtc.lastError };
    },
    start,
    stop,
    close() {
      stop();
      rtc?.close();
      conn.close();
    },
  };
}

function boot() {
  const params = new URLSearchParams(location.search);
  const channel = params.get('channel') || 'default';
  const mode = params.get('mode') === 'source' ? 'source' : 'receiver';
  $('mode').textContent = mode;
  $('channel').textContent = channel;
  if (!validChannelName(channel)) {
    const msg = `invalid channel name ${JSON.stringify(channel)}: 1-64 characters of A-Z a-z 0-9 . _ -`;
    $('status').textContent = msg;
    $('status').className = 'closed';
    window.relayClient = { mode, channel, state: 'closed', frames: 0, width: 0, height: 0, signal: {}, lastError: msg, pixels: () => new Uint8Array(0) };
    return;
  }
  window.relayClient = mode === 'source' ? startSource(channel, params) : startReceiver(channel);
  if (mode === 'receiver' && !params.has('channel')) showLanding();
}

if (globalThis.document?.getElementById('relay-app')) boot();
