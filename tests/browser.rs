//! Real-browser end-to-end test of the embedded web client (`web/`).
//!
//! Headless Debian chromium is driven over the DevTools protocol (CDP) with
//! the crate's own WebSocket client and `serde_json`:
//!
//! 1. Receiver page (`/?channel=browser`): a Rust source sends a keyframe and
//!    `DeltaPixels` frames; the canvas read back in the page must equal the
//!    source's last frame exactly. A SignalSync + SignalDiff must fold into
//!    `window.relayClient.signal`. A synthesized click, key press and wheel
//!    on the canvas must reach the source as `PointerDown` (at the clicked
//!    canvas pixel), `KeyDown` and `Scroll` inputs. Screenshot:
//!    `target/browser-screenshot.png`.
//! 2. Source page (`/?mode=source&...`): the page streams its animation as
//!    keyframes + JS-encoded ZRLE deltas; a Rust receiver decodes them with
//!    `codec::apply_delta` and must rebuild exactly the page's last frame; an
//!    input sent by the receiver must show up in the page's input list.
//!    Screenshot: `target/browser-screenshot-source.png`.
//! 3. Reconnect: a TCP proxy between page and relay cuts the connection and
//!    refuses new ones; the page shows it is retrying, backs off, and
//!    reconnects by itself once the proxy lets connections through again.
//!
//! Without chromium the test fails, unless `RELAY_SKIP_BROWSER=1` says to
//! skip it on purpose (it then says so loudly). `CHROMIUM=/path/to/chromium`
//! overrides the search on `PATH` (a path that does not exist counts as not
//! installed).

#[path = "common/chromium.rs"]
mod chromium;
mod common;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bitstream_relay::client::{Client, Message};
use bitstream_relay::codec;
use bitstream_relay::protocol::{self, FrameType, Header, InputType, HEADER_LEN};
use serde_json::{json, Value};
use tokio::time::sleep;

use chromium::{find_chromium, Browser, Cdp};

const W: u16 = 64;
const H: u16 = 48;

/// Navigates the attached page and waits until its client is running.
async fn open(cdp: &mut Cdp, url: &str) {
    cdp.call("Page.navigate", json!({ "url": url })).await;
    cdp.wait_for(
        &format!("{url} to load"),
        "document.readyState === 'complete' && !!window.relayClient",
    )
    .await;
}

/// A one-line summary of `window.relayClient` for failure messages.
const PAGE_STATE: &str = "(() => { const r = window.relayClient; if (!r) return 'no relayClient';
  return JSON.stringify({ mode: r.mode, state: r.state, frames: r.frames, drawn: r.drawn, seq: r.seq,
    width: r.width, height: r.height, signal: r.signal, lastError: r.lastError,
    status: document.getElementById('status')?.textContent }); })()";

/// Reads the page canvas back with getImageData: (width, height, RGBA).
const CANVAS_PIXELS: &str = "(() => { const c = document.getElementById('view');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let s = ''; for (let i = 0; i < d.length; i += 0x8000) s += String.fromCharCode.apply(null, d.subarray(i, i + 0x8000));
  return { w: c.width, h: c.height, b64: btoa(s) }; })()";

/// `window.relayClient.pixels()` as base64.
const CLIENT_PIXELS: &str = "(() => { const d = window.relayClient.pixels();
  let s = ''; for (let i = 0; i < d.length; i += 0x8000) s += String.fromCharCode.apply(null, d.subarray(i, i + 0x8000));
  return btoa(s); })()";

fn b64(v: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(v.as_str().expect("base64 string"))
        .expect("valid base64")
}

/// Panics with the first differing pixel if `got != want`.
fn assert_same_pixels(what: &str, got: &[u8], want: &[u8], width: usize) {
    assert_eq!(
        got.len(),
        want.len(),
        "{what}: {} bytes, expected {}",
        got.len(),
        want.len()
    );
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        let px = i / 4;
        let differing = got
            .chunks(4)
            .zip(want.chunks(4))
            .filter(|(a, b)| a != b)
            .count();
        panic!(
            "{what}: pixel ({}, {}) is {:?}, expected {:?} ({differing} pixels differ)",
            px % width,
            px / width,
            &got[px * 4..px * 4 + 4],
            &want[px * 4..px * 4 + 4]
        );
    }
}

// ---------------------------------------------------------------------------
// A TCP proxy that can cut its connections and refuse new ones
// ---------------------------------------------------------------------------

struct Proxy {
    addr: std::net::SocketAddr,
    refusing: Arc<std::sync::atomic::AtomicBool>,
    cut: tokio::sync::watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("proxy bind");
        let addr = listener.local_addr().unwrap();
        let refusing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (cut, cut_rx) = tokio::sync::watch::channel(0u64);
        let refusing2 = refusing.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut down, _)) = listener.accept().await else {
                    continue;
                };
                if refusing2.load(std::sync::atomic::Ordering::SeqCst) {
                    drop(down); // the browser sees the connection fail
                    continue;
                }
                let mut cut_rx = cut_rx.clone();
                cut_rx.mark_unchanged();
                tokio::spawn(async move {
                    let Ok(mut up) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut down, &mut up) => {}
                        _ = cut_rx.changed() => {}
                    }
                });
            }
        });
        Self {
            addr,
            refusing,
            cut,
            task,
        }
    }

    /// Drops every connection through the proxy.
    fn cut(&self) {
        self.cut.send_modify(|g| *g += 1);
    }

    /// Whether new connections are dropped at once.
    fn refuse(&self, on: bool) {
        self.refusing.store(on, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut();
    }
}

// ---------------------------------------------------------------------------
// Test frames
// ---------------------------------------------------------------------------

/// A gradient with a red square that moves with `n`; alpha 255 throughout
/// (putImageData/getImageData are exact only for opaque pixels).
fn pattern(n: usize) -> Vec<u8> {
    let (w, h) = (W as usize, H as usize);
    let (sx, sy) = (4 + n * 6, 6 + n * 3);
    let mut out = Vec::with_capacity(w * h * 4);
    for y in 0..h {
        for x in 0..w {
            let px = if (sx..sx + 12).contains(&x) && (sy..sy + 12).contains(&y) {
                [230, 57, 70, 255]
            } else {
                [(x * 4) as u8, (y * 5) as u8, 160 - (x + y) as u8, 255]
            };
            out.extend_from_slice(&px);
        }
    }
    out
}

fn opaque_noise(seed: u64) -> Vec<u8> {
    let mut v = common::noise(W as usize * H as usize * 4, seed);
    v.chunks_mut(4).for_each(|p| p[3] = 255);
    v
}

async fn recv_input(source: &mut Client) -> Vec<u8> {
    match common::within(source.recv()).await {
        Ok(Message::Binary(b)) => b.to_vec(),
        Ok(Message::Text(t)) => panic!("source got text {t:?}"),
        Err(e) => panic!("source recv: {e}"),
    }
}

// ---------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_client_end_to_end() {
    let exe = find_chromium();
    if !common::tool_available(
        exe.is_some(),
        "chromium (apt-get install chromium)",
        "RELAY_SKIP_BROWSER",
    ) {
        return;
    }
    let Some(exe) = exe else { return };

    let relay = common::start(&[]).await;
    let (browser, devtools_url) = Browser::launch(&exe).await;
    let mut cdp = Cdp::connect(&devtools_url).await;

    // Attach to the page chromium opened (flattened session).
    let targets = cdp.call("Target.getTargets", json!({})).await;
    let page = targets["targetInfos"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["type"] == "page"))
        .map(|t| t["targetId"].clone());
    let target_id = match page {
        Some(id) => id,
        None => cdp
            .call("Target.createTarget", json!({ "url": "about:blank" }))
            .await["targetId"]
            .clone(),
    };
    let attached = cdp
        .call(
            "Target.attachToTarget",
            json!({ "targetId": target_id, "flatten": true }),
        )
        .await;
    cdp.session = Some(
        attached["sessionId"]
            .as_str()
            .expect("sessionId")
            .to_owned(),
    );
    cdp.call("Runtime.enable", json!({})).await;
    cdp.call("Log.enable", json!({})).await;
    cdp.call("Page.enable", json!({})).await;
    cdp.call("Page.bringToFront", json!({})).await;
    cdp.call(
        "Emulation.setDeviceMetricsOverride",
        json!({ "width": 1024, "height": 1000, "deviceScaleFactor": 1, "mobile": false }),
    )
    .await;

    // ---- 1. receiver page --------------------------------------------------
    let mut source = common::connect(&relay.url("/source/browser")).await;
    open(&mut cdp, &format!("http://{}/?channel=browser", relay.addr)).await;
    cdp.wait_for(
        "the receiver to connect",
        "window.relayClient.state === 'open'",
    )
    .await;
    common::wait_receivers(&relay, "browser", 1).await;

    // A keyframe, moving deltas, an unchanged delta, a full-noise delta, and
    // back to the pattern.
    let mut frames = vec![pattern(0)];
    frames.extend((1..=4).map(pattern));
    frames.push(pattern(4));
    frames.push(opaque_noise(7));
    frames.push(pattern(7));
    let last_seq = frames.len() as u16 - 1;
    source
        .send(&protocol::pixels_keyframe(0, 0, W, H, &frames[0]))
        .await
        .expect("send keyframe");
    for (i, pair) in frames.windows(2).enumerate() {
        let seq = i as u16 + 1;
        let mut zrle = Vec::new();
        codec::encode_delta(&pair[0], &pair[1], &mut zrle).expect("encode delta");
        source
            .send(&protocol::delta_pixels(
                seq,
                u32::from(seq) * 33,
                W,
                H,
                &zrle,
            ))
            .await
            .expect("send delta");
    }
    let want = frames.last().unwrap().clone();
    let drawn = format!(
        "(() => {{ const r = window.relayClient;
           return r.frames === {n} && r.seq === {last_seq} && r.drawn === r.frames; }})()",
        n = frames.len()
    );
    cdp.wait_for("all frames decoded and drawn", &drawn).await;
    let state = cdp.eval(PAGE_STATE).await;
    let state: Value = serde_json::from_str(state.as_str().unwrap()).unwrap();
    assert_eq!(state["lastError"], Value::Null, "page error: {state}");
    assert_eq!(
        (state["width"].as_u64(), state["height"].as_u64()),
        (Some(64), Some(48))
    );

    let canvas = cdp.eval(CANVAS_PIXELS).await;
    assert_eq!(
        (canvas["w"].as_u64(), canvas["h"].as_u64()),
        (Some(u64::from(W)), Some(u64::from(H))),
        "canvas size"
    );
    assert_same_pixels(
        "canvas getImageData",
        &b64(&canvas["b64"]),
        &want,
        W as usize,
    );
    let client_pixels = cdp.eval(CLIENT_PIXELS).await;
    assert_same_pixels(
        "relayClient.pixels()",
        &b64(&client_pixels),
        &want,
        W as usize,
    );

    // Signal state: a sync, then a diff that changes, deletes and adds keys.
    source
        .send(&protocol::signal(
            false,
            100,
            300,
            br#"{"title":"browser test","level":1,"tags":["a","b"],"gone":true}"#,
        ))
        .await
        .unwrap();
    source
        .send(&protocol::signal(
            true,
            101,
            310,
            br#"{"level":2,"gone":null,"extra":{"k":"v"}}"#,
        ))
        .await
        .unwrap();
    let folded =
        json!({ "title": "browser test", "level": 2, "tags": ["a", "b"], "extra": { "k": "v" } });
    cdp.wait_for(
        "the folded signal state",
        "(() => { const s = window.relayClient.signal; return !!s && s.level === 2 && !('gone' in s); })()",
    )
    .await;
    let signal = cdp.eval("window.relayClient.signal").await;
    assert_eq!(signal, folded, "relayClient.signal");
    let shown = cdp
        .eval("document.getElementById('signal').textContent")
        .await;
    let shown: Value = serde_json::from_str(shown.as_str().unwrap()).expect("signal <pre> is JSON");
    assert_eq!(shown, folded, "signal state shown in the page");

    // Click a known canvas pixel: page coordinates from the canvas box and
    // its CSS → canvas scale.
    let (px, py) = (41u16, 30u16);
    let rect = cdp
        .eval(
            "(() => { const c = document.getElementById('view'); const r = c.getBoundingClientRect();
               return { left: r.left, top: r.top, width: r.width, height: r.height, w: c.width, h: c.height }; })()",
        )
        .await;
    let f = |k: &str| rect[k].as_f64().unwrap();
    assert!(f("width") > f("w"), "canvas shown scaled up: {rect}");
    let x = f("left") + (f64::from(px) + 0.5) * f("width") / f("w");
    let y = f("top") + (f64::from(py) + 0.5) * f("height") / f("h");
    for (kind, buttons) in [("mouseMoved", 0), ("mousePressed", 1), ("mouseReleased", 0)] {
        cdp.call(
            "Input.dispatchMouseEvent",
            json!({ "type": kind, "x": x, "y": y, "button": if kind == "mouseMoved" { "none" } else { "left" },
                    "buttons": buttons, "clickCount": if kind == "mouseMoved" { 0 } else { 1 } }),
        )
        .await;
    }
    // Shift+A on the focused canvas, then a wheel step down.
    for kind in ["rawKeyDown", "keyUp"] {
        cdp.call(
            "Input.dispatchKeyEvent",
            json!({ "type": kind, "modifiers": 8, "windowsVirtualKeyCode": 65, "key": "A", "code": "KeyA" }),
        )
        .await;
    }
    cdp.call(
        "Input.dispatchMouseEvent",
        json!({ "type": "mouseWheel", "x": x, "y": y, "deltaX": 0, "deltaY": 120 }),
    )
    .await;

    let (mut down, mut key, mut scroll) = (None, None, None);
    let mut seen = Vec::new();
    while down.is_none() || key.is_none() || scroll.is_none() {
        let msg = recv_input(&mut source).await;
        let h = protocol::validate_input_message(&msg)
            .unwrap_or_else(|e| panic!("invalid input from the page: {e}: {msg:?}"));
        assert!(h.is_input());
        let p = &msg[HEADER_LEN..];
        seen.push(format!("{:?}", h.input_type()));
        match h.input_type() {
            InputType::PointerDown => down = Some(protocol::parse_pointer(&msg).unwrap()),
            InputType::KeyDown => key = Some((u16::from_le_bytes([p[0], p[1]]), p[2])),
            InputType::Scroll => {
                scroll = Some((
                    i16::from_le_bytes([p[0], p[1]]),
                    i16::from_le_bytes([p[2], p[3]]),
                ))
            }
            _ => {}
        }
    }
    let down = down.unwrap();
    assert_eq!(
        (down.x, down.y),
        (px, py),
        "PointerDown at the clicked canvas pixel (inputs: {seen:?})"
    );
    assert_eq!(down.buttons, 1, "left button held");
    assert_eq!(key, Some((65, 1)), "KeyDown: keycode 65 with shift");
    let (dx, dy) = scroll.unwrap();
    assert!(dx == 0 && dy > 0, "Scroll down, got dx={dx} dy={dy}");

    // Audio: click "enable audio" (a user gesture), then 10 ms of stereo
    // 48 kHz s16le PCM must be scheduled through WebAudio.
    let button = cdp
        .eval(
            "(() => { const r = document.getElementById('audio').getBoundingClientRect();
               return { x: r.left + r.width / 2, y: r.top + r.height / 2 }; })()",
        )
        .await;
    for kind in ["mousePressed", "mouseReleased"] {
        cdp.call(
            "Input.dispatchMouseEvent",
            json!({ "type": kind, "x": button["x"], "y": button["y"], "button": "left", "clickCount": 1 }),
        )
        .await;
    }
    cdp.wait_for(
        "audio to be enabled",
        "document.getElementById('audio').textContent === 'audio on'",
    )
    .await;
    let pcm: Vec<u8> = (0..480 * 2)
        .flat_map(|i: i32| (((i / 2) % 48 - 24) as i16 * 1000).to_le_bytes())
        .collect();
    source
        .send(&protocol::frame(
            FrameType::AudioPcm,
            0,
            200,
            400,
            (2, 4800),
            &pcm,
        ))
        .await
        .unwrap();
    cdp.wait_for(
        "the PCM chunk to be played",
        "window.relayClient.audioChunks === 1",
    )
    .await;
    assert_eq!(cdp.eval("window.relayClient.lastError").await, Value::Null);

    // Let the stats line tick once, then take the screenshot.
    cdp.wait_for(
        "the stats line",
        "document.getElementById('stats').textContent.includes('frames 8')",
    )
    .await;
    let shot = cdp.screenshot("browser-screenshot.png").await;
    eprintln!("receiver screenshot: {}", shot.display());

    // ---- 2. source page ----------------------------------------------------
    let mut receiver = common::connect(&relay.url("/stream/browser-src")).await;
    open(&mut cdp, &format!(
        "http://{}/?mode=source&channel=browser-src&fps=30&encoding=delta&keyframe=10&size=96x64&autostart=1",
        relay.addr
    ))
    .await;
    cdp.wait_for(
        "the page to send 25 frames",
        "window.relayClient.frames >= 25",
    )
    .await;
    let final_state = cdp
        .eval(
            "(() => { const r = window.relayClient; r.stop();
               return { seq: r.seq, frames: r.frames, width: r.width, height: r.height, lastError: r.lastError }; })()",
        )
        .await;
    assert_eq!(
        final_state["lastError"],
        Value::Null,
        "source page error: {final_state}"
    );
    assert_eq!(
        (
            final_state["width"].as_u64(),
            final_state["height"].as_u64()
        ),
        (Some(96), Some(64))
    );
    let page_last = b64(&cdp.eval(CLIENT_PIXELS).await);
    let final_seq = final_state["seq"].as_u64().unwrap() as u16;

    let mut frame: Option<Vec<u8>> = None;
    let (mut keyframes, mut deltas, mut delta_bytes, mut saw_sync) = (0, 0, 0, false);
    loop {
        let msg = match common::within(receiver.recv()).await {
            Ok(Message::Binary(b)) => b,
            other => panic!("receiver: {other:?}"),
        };
        let h: Header = protocol::validate_source_message(&msg)
            .unwrap_or_else(|e| panic!("the page sent an invalid message: {e}"));
        let payload = &msg[HEADER_LEN..];
        match h.frame_type() {
            FrameType::Pixels => {
                assert!(h.is_keyframe(), "page Pixels carry KEYFRAME");
                assert_eq!((h.width, h.height), (96, 64));
                frame = Some(payload.to_vec());
                keyframes += 1;
            }
            FrameType::DeltaPixels => {
                let f = frame.as_mut().expect("a delta before any keyframe");
                codec::apply_delta(f, payload).unwrap_or_else(|e| {
                    panic!("the page's ZRLE delta seq {} does not decode: {e}", h.seq)
                });
                deltas += 1;
                delta_bytes += payload.len();
            }
            FrameType::SignalSync => {
                let v: Value = serde_json::from_slice(payload).expect("signal JSON");
                saw_sync |= v["source"] == "browser";
            }
            _ => {}
        }
        if matches!(h.frame_type(), FrameType::Pixels | FrameType::DeltaPixels)
            && h.seq == final_seq
        {
            break;
        }
    }
    assert!(
        keyframes >= 2 && deltas >= 20,
        "keyframes {keyframes}, deltas {deltas}"
    );
    assert!(
        delta_bytes / deltas < 96 * 64 * 4 / 2,
        "deltas of a mostly static animation should be small: {} bytes on average",
        delta_bytes / deltas
    );
    assert!(saw_sync, "the page sent its SignalSync");
    assert_same_pixels(
        "frame rebuilt from the page's stream",
        frame.as_deref().unwrap(),
        &page_last,
        96,
    );

    // An input back to the page's source.
    receiver
        .send(&protocol::pointer_input(
            InputType::PointerDown,
            0,
            0,
            10,
            20,
            1,
        ))
        .await
        .unwrap();
    cdp.wait_for(
        "the input in the source page",
        "window.relayClient.inputs.some(e => e.name === 'PointerDown' && e.x === 10 && e.y === 20 && e.buttons === 1)
           && document.getElementById('inputs').textContent.includes('PointerDown x=10 y=20 buttons=1')",
    )
    .await;
    cdp.eval("window.relayClient.start()").await;
    sleep(Duration::from_millis(1200)).await;
    let shot = cdp.screenshot("browser-screenshot-source.png").await;
    eprintln!("source screenshot: {}", shot.display());
    cdp.eval("window.relayClient.close()").await;

    // ---- 3. reconnect --------------------------------------------------------
    // The page is loaded through a TCP proxy; the proxy cuts the connection
    // and refuses new ones for a while: the page must show it is retrying,
    // back off, and reconnect by itself once the way is open again.
    let proxy = Proxy::start(relay.addr).await;
    open(&mut cdp, &format!("http://{}/?channel=again", proxy.addr)).await;
    cdp.wait_for(
        "the receiver to connect",
        "window.relayClient.state === 'open'",
    )
    .await;
    common::wait_receivers(&relay, "again", 1).await;
    proxy.refuse(true);
    proxy.cut();
    cdp.wait_for(
        "the page to retry (twice, refused)",
        "window.relayClient.state !== 'open' && window.relayClient.retries >= 2
           && document.getElementById('status').textContent.includes('retrying in')",
    )
    .await;
    common::wait_receivers(&relay, "again", 0).await;
    proxy.refuse(false);
    cdp.wait_for(
        "the page to reconnect",
        "window.relayClient.state === 'open'",
    )
    .await;
    common::wait_receivers(&relay, "again", 1).await;

    // ---- 4. several relays ---------------------------------------------------
    // The rotation, unit by unit: URLs from `?relays=`, the order they are
    // tried in.
    let unit = cdp
        .eval(
            "import('/client.js').then(m => {
               const loc = { protocol: 'http:', host: 'h:1', search: '?relays=ws://a:1,%20wss://b:2/,http://x,ws://c/p&token=t' };
               const r = new m.RelayList(['u1', 'u2', 'u3']);
               const order = [r.current, r.advance(), r.advance(), r.advance()];
               let empty = null; try { new m.RelayList([]); } catch (e) { empty = e.name; }
               return { urls: m.relayUrls(loc, 'stream', 'c d'),
                        own: m.relayUrls({ protocol: 'https:', host: 'h', search: '' }, 'source', 'z'),
                        order, empty };
             })",
        )
        .await;
    assert_eq!(
        unit,
        json!({
            "urls": ["ws://a:1/stream/c%20d?token=t", "wss://b:2/stream/c%20d?token=t"],
            "own": ["wss://h/source/z"],
            "order": ["u1", "u2", "u3", "u1"],
            "empty": "TypeError",
        })
    );
    // End to end: two ways to the relay; the first one dies and the page
    // goes on through the second.
    let (p1, p2) = (
        Proxy::start(relay.addr).await,
        Proxy::start(relay.addr).await,
    );
    let mut src = common::connect(&relay.url("/source/multi")).await;
    let first = pattern(1);
    src.send(&protocol::pixels_keyframe(1, 0, W, H, &first))
        .await
        .unwrap();
    open(
        &mut cdp,
        &format!(
            "http://{}/?channel=multi&relays=ws://{},ws://{}",
            relay.addr, p1.addr, p2.addr
        ),
    )
    .await;
    cdp.wait_for(
        "the page to connect through the first relay",
        &format!(
            "window.relayClient.state === 'open' && window.relayClient.url.includes(':{}/')",
            p1.addr.port()
        ),
    )
    .await;
    p1.refuse(true);
    p1.cut();
    cdp.wait_for(
        "the page to move to the second relay",
        &format!(
            "window.relayClient.state === 'open' && window.relayClient.url.includes(':{}/')",
            p2.addr.port()
        ),
    )
    .await;
    let second = pattern(2);
    src.send(&protocol::pixels_keyframe(2, 0, W, H, &second))
        .await
        .unwrap();
    cdp.wait_for(
        "the picture through the second relay",
        "window.relayClient.seq === 2",
    )
    .await;
    let got = b64(&cdp.eval(CLIENT_PIXELS).await);
    assert_same_pixels("picture after moving relays", &got, &second, W as usize);

    let mut browser = browser;
    browser.close(&mut cdp).await;
}
