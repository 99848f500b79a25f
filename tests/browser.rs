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
//! 4. Several relays: `?relays=` URLs, tried in turn; the page moves on to
//!    the second when the first dies.
//! 5. Resume by stream marks: the page asks `?epoch` and reconnects with
//!    `?epoch=E&resume=SEQ`. Cut off within one stream it resumes (counted
//!    as a resume, same epoch, exactly the missed deltas); cut off while
//!    source A is replaced by B (numbering its frames alike) it counts a
//!    full catch-up and shows exactly B's picture, not B's deltas on A's;
//!    a new source while connected (a Changed mark) moves the resume point
//!    to the new stream, and the next cut resumes in it.
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

use chromium::open;

const W: u16 = 64;
const H: u16 = 48;

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

/// Sends `cur` as header seq `seq`: a keyframe, or with `prev` a ZRLE delta.
async fn send_frame(src: &mut Client, prev: Option<&[u8]>, cur: &[u8], seq: u16) {
    let ts = u32::from(seq) * 33;
    let msg = match prev {
        None => protocol::pixels_keyframe(seq, ts, W, H, cur),
        Some(prev) => {
            let mut zrle = Vec::new();
            codec::encode_delta(prev, cur, &mut zrle).expect("encode delta");
            protocol::delta_pixels(seq, ts, W, H, &zrle)
        }
    };
    src.send(&msg).await.expect("send frame");
}

/// Sends `frames` as header seqs `first..`: a keyframe first unless `prev`
/// (the frame before them) is given, deltas after.
async fn send_frames(src: &mut Client, prev: Option<&[u8]>, frames: &[Vec<u8>], first: u16) {
    let mut last = prev;
    for (i, f) in frames.iter().enumerate() {
        send_frame(src, last, f, first + i as u16).await;
        last = Some(f);
    }
}

/// Waits until the relay has taken `n` frames from sources on `channel`.
async fn wait_frames_in(relay: &common::TestRelay, channel: &str, n: u64) {
    common::eventually(&format!("{n} frames in on {channel}"), || {
        relay
            .relay
            .channel(channel)
            .is_some_and(|c| c.traffic.frames_in >= n)
    })
    .await;
}

/// The page receiver's resume state: epoch, resume point, counters.
const RESUME_STATE: &str = "(() => { const r = window.relayClient;
  return { state: r.state, epoch: r.epoch, resumeSeq: r.resumeSeq, seq: r.seq, frames: r.frames,
           messages: r.messages, resumes: r.resumes.resumes, fullCatchups: r.resumes.fullCatchups,
           lastError: r.lastError }; })()";

async fn recv_input(source: &mut Client) -> Vec<u8> {
    match common::within(source.recv()).await {
        Ok(Message::Binary(b)) => b.to_vec(),
        Ok(Message::Text(t)) => panic!("source got text {t:?}"),
        Err(e) => panic!("source recv: {e}"),
    }
}

// ---------------------------------------------------------------------------
// Pages that explain themselves
// ---------------------------------------------------------------------------

/// The secret of the relay with tokens on (32 bytes or more).
const SECRET: &str = "pages test secret: 32 bytes or more, fine";

/// An HS256 token for channel `ch` and `role`, valid for an hour.
fn token(ch: &str, role: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({ "ch": ch, "role": role, "exp": exp }),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
    .unwrap()
}

/// A relay that requires tokens signed with [`SECRET`].
async fn start_secured() -> common::TestRelay {
    let path = std::env::temp_dir().join(format!(
        "bitstream-relay-pages-secret-{}",
        std::process::id()
    ));
    std::fs::write(&path, SECRET).unwrap();
    common::start(&["--jwt-secret-file", path.to_str().unwrap()]).await
}

/// The page's status line: its text and class.
const STATUS: &str = "(() => { const s = document.getElementById('status');
  const h = document.getElementById('hint');
  return { text: s.textContent, class: s.className, hint: h.hidden ? null : h.textContent }; })()";

/// The pages explain themselves: a refused receiver says why (401, a token
/// is required, and how to get one); a stream whose source left or ended
/// it says "stream ended" instead of a green "open"; a channel nobody
/// publishes on says so; the audio button waits for audio; the bare page
/// says how to publish and lists the live channels as links; the source
/// page lists its URL parameters and says it waits for **start** unless
/// `autostart=1`. Screenshots of the new states go to `docs/` (when
/// missing, or with `RELAY_UPDATE_DOCS=1`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_explain_themselves() {
    let Some(exe) = chromium::chromium_for_test() else {
        return;
    };
    let (mut browser, mut cdp) = chromium::launch_page(&exe, 1024, 760).await;

    // ---- (a) a receiver without the token the relay requires ---------------
    let secured = start_secured().await;
    let mut src = common::connect(&secured.url(&format!(
        "/source/locked?token={}",
        token("locked", "source")
    )))
    .await;
    src.send(&protocol::pixels_keyframe(0, 0, W, H, &pattern(0)))
        .await
        .unwrap();
    open(
        &mut cdp,
        &format!("http://{}/?channel=locked", secured.addr),
    )
    .await;

    // The explanations, unit by unit.
    let unit = cdp
        .eval(
            "import('/client.js').then(m => ({
               missing: m.explainRefusal(401, 'a token is required (?token= or Authorization: Bearer)\\n', 'receiver', 'cam'),
               forbidden: m.explainRefusal(403, 'token does not grant this channel and role', 'source', 'cam'),
               full: m.explainRefusal(503, 'receiver limit reached on this channel', 'receiver', 'cam'),
               accepted: m.explainRefusal(426, 'this path takes WebSocket connections', 'receiver', 'cam'),
               info: m.channelInfoUrl('wss://h:1/stream/a.b?token=t', 'a.b'),
             }))",
        )
        .await;
    assert_eq!(
        unit["missing"]["status"], "refused: 401, a token is required",
        "{unit}"
    );
    let hint = unit["missing"]["hint"].as_str().unwrap();
    assert!(
        hint.contains("&token=")
            && hint.contains("bitstream-relay token --channel cam --role receiver"),
        "{hint}"
    );
    assert!(
        unit["forbidden"]["status"]
            .as_str()
            .unwrap()
            .starts_with("refused: 403")
            && unit["forbidden"]["hint"]
                .as_str()
                .unwrap()
                .contains("publish on cam"),
        "{unit}"
    );
    assert_eq!(
        unit["full"]["status"],
        "refused: 503, receiver limit reached on this channel"
    );
    assert_eq!(unit["accepted"], Value::Null, "426: the relay would accept");
    assert_eq!(unit["info"], "https://h:1/channels/a.b?token=t");

    let refused = cdp
        .wait_for(
            "the page to name the refusal",
            &format!(
                "(() => {{ const s = {STATUS}; return s.text.includes('401') && s.text.includes('token is required')
                   && s.hint !== null && s.hint.includes('bitstream-relay token --channel locked --role receiver') && s; }})()"
            ),
        )
        .await;
    assert_eq!(refused["class"], "closed", "{refused}");
    assert!(
        refused["text"].as_str().unwrap().contains("retrying in"),
        "it still retries: {refused}"
    );
    let shot = cdp.screenshot("receiver-token-hint.png").await;
    chromium::save_to_docs(&shot, "receiver-token-hint.png");
    // A token for another channel: 403, named as such.
    open(
        &mut cdp,
        &format!(
            "http://{}/?channel=locked&token={}",
            secured.addr,
            token("other", "receiver")
        ),
    )
    .await;
    cdp.wait_for(
        "the page to name the 403",
        &format!("(() => {{ const s = {STATUS}; return s.text.includes('403') && s.hint !== null && s.hint.includes('does not grant'); }})()"),
    )
    .await;
    // The right token: connected, the picture shown, no hint.
    let good = token("locked", "receiver");
    open(
        &mut cdp,
        &format!("http://{}/?channel=locked&token={good}", secured.addr),
    )
    .await;
    cdp.wait_for(
        "the receiver with a token to show the picture",
        &format!("(() => {{ const s = {STATUS}; return window.relayClient.frames === 1 && s.class === 'open' && s.hint === null; }})()"),
    )
    .await;
    // `GET /channels/{name}` (what the page asks when the stream goes
    // quiet) takes the channel's token, like the stream.
    let (status, _) = common::http_get(&secured, "/channels/locked").await;
    assert_eq!(status, 401, "/channels/NAME without a token");
    let (status, body) =
        common::http_get(&secured, &format!("/channels/locked?token={good}")).await;
    assert_eq!(status, 200, "{body}");
    let info: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (&info["name"], &info["source"]),
        (&json!("locked"), &json!(true))
    );
    // And /healthz says tokens are on (the dashboard shows it).
    let (_, body) = common::http_get(&secured, "/healthz").await;
    let health: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (&health["tokens"], &health["tls"], &health["addr"]),
        (
            &json!(true),
            &json!(false),
            &json!(secured.addr.to_string())
        ),
        "{health}"
    );
    drop(src);

    // ---- (b) the source leaves; (d) the audio button waits for audio -------
    let relay = common::start(&[]).await;
    for path in ["/channels/no-such", "/channels/bad%20name", "/channels/"] {
        let (status, body) = common::http_get(&relay, path).await;
        assert_eq!(status, 404, "{path}: {body}");
    }
    let mut a = common::connect(&relay.url("/source/ending")).await;
    a.send(&protocol::pixels_keyframe(0, 0, W, H, &pattern(0)))
        .await
        .unwrap();
    wait_frames_in(&relay, "ending", 1).await;
    open(&mut cdp, &format!("http://{}/?channel=ending", relay.addr)).await;
    cdp.wait_for(
        "the picture, live",
        &format!("(() => {{ const s = {STATUS}; return window.relayClient.drawn === 1 && s.class === 'open'; }})()"),
    )
    .await;
    assert_eq!(
        cdp.eval("document.getElementById('audio').hidden").await,
        json!(true),
        "no audio button without audio"
    );
    let pcm = vec![0u8; 480 * 4];
    a.send(&protocol::frame(
        FrameType::AudioPcm,
        0,
        1,
        40,
        (2, 4800),
        &pcm,
    ))
    .await
    .unwrap();
    cdp.wait_for(
        "the audio button with the first audio",
        "!document.getElementById('audio').hidden",
    )
    .await;
    drop(a); // gone without a StreamEnd
    common::eventually("the source gone", || {
        relay.relay.channel("ending").is_some_and(|c| !c.source)
    })
    .await;
    let ended = cdp
        .wait_for(
            "the page to say the stream ended",
            &format!("(() => {{ const s = {STATUS}; return s.class === 'ended' && s.text.startsWith('stream ended') && s; }})()"),
        )
        .await;
    assert!(
        ended["text"].as_str().unwrap().contains("source left"),
        "{ended}"
    );
    assert_eq!(
        cdp.eval("window.relayClient.state").await,
        "open",
        "still connected, waiting for the source"
    );
    let shot = cdp.screenshot("receiver-ended.png").await;
    chromium::save_to_docs(&shot, "receiver-ended.png");
    // A new source: live again; its StreamEnd: ended again, saying so.
    let mut b = common::connect(&relay.url("/source/ending")).await;
    b.send(&protocol::pixels_keyframe(0, 0, W, H, &pattern(3)))
        .await
        .unwrap();
    cdp.wait_for(
        "the page live again",
        &format!(
            "(() => {{ const s = {STATUS}; return s.class === 'open' && s.hint === null; }})()"
        ),
    )
    .await;
    b.send(&protocol::frame(FrameType::StreamEnd, 0, 0, 0, (0, 0), &[]))
        .await
        .unwrap();
    cdp.wait_for(
        "the page to show the source's StreamEnd",
        &format!("(() => {{ const s = {STATUS}; return s.class === 'ended' && s.text.includes('the source ended the stream'); }})()"),
    )
    .await;
    // A channel nobody publishes on says so.
    open(&mut cdp, &format!("http://{}/?channel=nobody", relay.addr)).await;
    let waiting = cdp
        .wait_for(
            "the page to say nothing is published",
            &format!("(() => {{ const s = {STATUS}; return s.class === 'waiting' && s; }})()"),
        )
        .await;
    let hint = waiting["hint"].as_str().unwrap_or_default().to_owned();
    assert!(
        hint.contains("/?mode=source&channel=nobody")
            && hint.contains(&format!(
                "bitstream-relay pattern --url ws://{}/source/nobody",
                relay.addr
            )),
        "{waiting}"
    );

    // ---- (c) the bare page ---------------------------------------------------
    let mut live = common::connect(&relay.url("/source/live-one")).await;
    live.send(&protocol::pixels_keyframe(0, 0, W, H, &pattern(1)))
        .await
        .unwrap();
    wait_frames_in(&relay, "live-one", 1).await;
    open(&mut cdp, &format!("http://{}/", relay.addr)).await;
    let landing = cdp
        .wait_for(
            "the bare page to list the live channels",
            "(() => { const links = [...document.querySelectorAll('#channel-list a')].map(a => a.getAttribute('href'));
               return !document.getElementById('landing').hidden && links.length > 0 && {
                 links, command: document.getElementById('pattern-command').textContent,
                 source: document.getElementById('source-link').getAttribute('href') }; })()",
        )
        .await;
    assert_eq!(
        landing["links"],
        json!(["/?channel=ending", "/?channel=live-one"]),
        "the channels with a source, as links: {landing}"
    );
    assert_eq!(
        landing["command"],
        format!(
            "bitstream-relay pattern --url ws://{}/source/demo",
            relay.addr
        )
    );
    assert_eq!(landing["source"], "/?mode=source&channel=demo");
    let shot = cdp.screenshot("index-page.png").await;
    chromium::save_to_docs(&shot, "index-page.png");
    // A page for a channel shows no such box.
    open(
        &mut cdp,
        &format!("http://{}/?channel=live-one", relay.addr),
    )
    .await;
    assert_eq!(
        cdp.eval("document.getElementById('landing').hidden").await,
        json!(true)
    );

    // ---- (e) the source page -------------------------------------------------
    open(
        &mut cdp,
        &format!("http://{}/?mode=source&channel=src-help", relay.addr),
    )
    .await;
    let source = cdp
        .wait_for(
            "the source page to say it waits for start",
            "(() => { const help = document.getElementById('source-help');
               const h = document.getElementById('hint');
               return window.relayClient.state === 'open' && !help.hidden && !h.hidden && {
                 help: help.textContent, hint: h.textContent, running: window.relayClient.running,
                 stats: document.getElementById('stats').textContent }; })()",
        )
        .await;
    let help = source["help"].as_str().unwrap();
    for param in [
        "channel=NAME",
        "autostart=1",
        "fps=N",
        "encoding=delta|keyframe",
        "keyframe=N",
        "size=WxH",
        "signal=0|1",
        "token=",
    ] {
        assert!(help.contains(param), "{param} not documented: {help}");
    }
    assert!(
        source["hint"].as_str().unwrap().contains("press start")
            && source["stats"]
                .as_str()
                .unwrap()
                .starts_with("waiting for start"),
        "{source}"
    );
    assert_eq!(source["running"], false);
    let shot = cdp.screenshot("source-page-waiting.png").await;
    chromium::save_to_docs(&shot, "source-page.png");
    cdp.eval("window.relayClient.start()").await;
    cdp.wait_for(
        "the hint to go once streaming",
        "window.relayClient.frames > 0 && document.getElementById('hint').hidden",
    )
    .await;
    cdp.eval("window.relayClient.close()").await;
    open(
        &mut cdp,
        &format!(
            "http://{}/?mode=source&channel=src-auto&autostart=1",
            relay.addr
        ),
    )
    .await;
    cdp.wait_for(
        "autostart: streaming without start, no waiting hint",
        "window.relayClient.running && window.relayClient.frames > 0 && document.getElementById('hint').hidden",
    )
    .await;
    cdp.eval("window.relayClient.close()").await;
    // A second source on a live channel: 409, named as such.
    open(
        &mut cdp,
        &format!("http://{}/?mode=source&channel=live-one", relay.addr),
    )
    .await;
    cdp.wait_for(
        "the source page to name the 409",
        &format!("(() => {{ const s = {STATUS}; return s.text.includes('409') && s.hint !== null && s.hint.includes('Another source is publishing on live-one'); }})()"),
    )
    .await;
    cdp.eval("window.relayClient.close()").await;
    drop(live);
    browser.close(&mut cdp).await;
}

// ---------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_client_end_to_end() {
    let Some(exe) = chromium::chromium_for_test() else {
        return;
    };

    let relay = common::start(&[]).await;
    let (browser, mut cdp) = chromium::launch_page(&exe, 1024, 1000).await;
    cdp.call("Page.bringToFront", json!({})).await;

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

    // Audio: the button appears with the stream's first audio (none so
    // far); click "enable audio" (a user gesture), then 10 ms of stereo
    // 48 kHz s16le PCM must be scheduled through WebAudio.
    assert_eq!(
        cdp.eval("document.getElementById('audio').hidden").await,
        json!(true),
        "no audio button on a stream without audio"
    );
    let pcm: Vec<u8> = (0..480 * 2)
        .flat_map(|i: i32| (((i / 2) % 48 - 24) as i16 * 1000).to_le_bytes())
        .collect();
    let audio = protocol::frame(FrameType::AudioPcm, 0, 200, 400, (2, 4800), &pcm);
    source.send(&audio).await.unwrap();
    cdp.wait_for(
        "the audio button with the first audio",
        "!document.getElementById('audio').hidden",
    )
    .await;
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
    source.send(&audio).await.unwrap();
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

    // ---- 5. resume by stream marks ----------------------------------------
    // The page asks for stream marks (`?epoch`) and resumes as
    // `?epoch=E&resume=SEQ`. Marks parsed in the page, unit by unit: the
    // 64-bit epoch from timestamp, width and height, as hex.
    let unit = cdp
        .eval(
            "import('/client.js').then(m => {
               const mark = (seq, timestamp, width, height, flags = 2) =>
                 m.parseStreamMark(m.parseHeader(m.buildMessage({ type: 0xfe, flags, seq, timestamp, width, height })));
               return [mark(1, 0x89abcdef, 0x4567, 0x0123), mark(0, 0xf, 0, 1), mark(2, 0, 0, 0),
                       mark(0, 0xffffffff, 0xffff, 0xffff), mark(3, 1, 0, 0), mark(0, 1, 0, 0, 0)];
             })",
        )
        .await;
    assert_eq!(
        unit,
        json!([
            { "kind": 1, "epoch": "123456789abcdef" },
            { "kind": 0, "epoch": "100000000000f" },
            { "kind": 2, "epoch": "0" },
            { "kind": 0, "epoch": "ffffffffffffffff" },
            null,
            null,
        ])
    );
    // End to end, through a proxy that cuts the page off: (a) within one
    // stream the page resumes (a Resume mark, the missed deltas applied on
    // its picture); (b) source A replaced by B while the page is away, B
    // numbering its frames like A: the page's resume point names A's
    // stream, so the relay sends B's catch-up and the page starts over with
    // exactly B's picture (never B's deltas on A's picture); (c) a new
    // source while connected (a Changed mark) moves the resume point to the
    // new stream, and the next reconnect resumes in it. A page that sends a
    // bare `?resume=SEQ` gets a catch-up every time: no resume, no epoch.
    let proxy = Proxy::start(relay.addr).await;
    let mut a = common::connect(&relay.url("/source/marks")).await;
    let frames_a: Vec<Vec<u8>> = (0..6).map(pattern).collect();
    send_frames(&mut a, None, &frames_a[..4], 0).await;
    wait_frames_in(&relay, "marks", 4).await;
    open(&mut cdp, &format!("http://{}/?channel=marks", proxy.addr)).await;
    cdp.wait_for(
        "A's picture (seq 3) in the page, with a stream epoch",
        "(() => { const r = window.relayClient;
           return r.state === 'open' && r.seq === 3 && r.drawn === r.frames && r.epoch !== null; })()",
    )
    .await;
    let before = cdp.eval(RESUME_STATE).await;
    let epoch_a = before["epoch"]
        .as_str()
        .expect("relayClient.epoch")
        .to_owned();
    assert!(
        (1..=16).contains(&epoch_a.len())
            && epoch_a
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "epoch as lowercase hex: {before}"
    );
    assert_eq!(
        (
            &before["resumes"],
            &before["fullCatchups"],
            &before["resumeSeq"]
        ),
        (&json!(0), &json!(0), &json!(3)),
        "the first connection's catch-up is no reconnect: {before}"
    );
    common::wait_receivers(&relay, "marks", 1).await;

    // Cuts the page off and keeps it off until `proxy.refuse(false)`.
    let cut_off = |proxy: &Proxy| {
        proxy.refuse(true);
        proxy.cut();
    };

    // (a) A resume within A's stream.
    cut_off(&proxy);
    cdp.wait_for(
        "the page to be cut off",
        "window.relayClient.state !== 'open'",
    )
    .await;
    common::wait_receivers(&relay, "marks", 0).await;
    send_frames(&mut a, Some(&frames_a[3]), &frames_a[4..], 4).await;
    wait_frames_in(&relay, "marks", 6).await;
    proxy.refuse(false);
    cdp.wait_for(
        "the page to resume to A's seq 5",
        "(() => { const r = window.relayClient;
           return r.state === 'open' && r.seq === 5 && r.drawn === r.frames; })()",
    )
    .await;
    let resumed = cdp.eval(RESUME_STATE).await;
    assert_eq!(resumed["lastError"], Value::Null, "{resumed}");
    assert_eq!(
        (&resumed["resumes"], &resumed["fullCatchups"]),
        (&json!(1), &json!(0)),
        "a reconnect within one stream resumes: {resumed}"
    );
    assert_eq!(resumed["epoch"], json!(epoch_a), "the same stream");
    let count = |v: &Value, k: &str| v[k].as_u64().unwrap();
    assert_eq!(
        (
            count(&resumed, "frames") - count(&before, "frames"),
            count(&resumed, "messages") - count(&before, "messages")
        ),
        (2, 2),
        "exactly the two missed deltas; the mark is no frame and no message"
    );
    let canvas = cdp.eval(CANVAS_PIXELS).await;
    assert_same_pixels(
        "canvas after resuming",
        &b64(&canvas["b64"]),
        &frames_a[5],
        W as usize,
    );

    // (b) A leaves and B (seqs 0.. like A's) streams while the page is away.
    cut_off(&proxy);
    cdp.wait_for(
        "the page to be cut off",
        "window.relayClient.state !== 'open'",
    )
    .await;
    common::wait_receivers(&relay, "marks", 0).await;
    drop(a);
    common::eventually("source A gone", || {
        relay.relay.channel("marks").is_some_and(|c| !c.source)
    })
    .await;
    let mut b = common::connect(&relay.url("/source/marks")).await;
    let frames_b: Vec<Vec<u8>> = (0..8).map(|i| opaque_noise(30 + i)).collect();
    send_frames(&mut b, None, &frames_b, 0).await;
    wait_frames_in(&relay, "marks", 6 + 8).await;
    proxy.refuse(false);
    cdp.wait_for(
        "the page to show B's last frame (seq 7)",
        "(() => { const r = window.relayClient;
           return r.state === 'open' && r.seq === 7 && r.drawn === r.frames; })()",
    )
    .await;
    let caught_up = cdp.eval(RESUME_STATE).await;
    assert_eq!(caught_up["lastError"], Value::Null, "{caught_up}");
    assert_eq!(
        (&caught_up["resumes"], &caught_up["fullCatchups"]),
        (&json!(1), &json!(1)),
        "another stream: a full catch-up, not a resume: {caught_up}"
    );
    let epoch_b = caught_up["epoch"].as_str().expect("epoch").to_owned();
    assert_ne!(epoch_b, epoch_a, "B's stream is another");
    let canvas = cdp.eval(CANVAS_PIXELS).await;
    assert_same_pixels(
        "canvas after B's catch-up",
        &b64(&canvas["b64"]),
        &frames_b[7],
        W as usize,
    );
    let got = b64(&cdp.eval(CLIENT_PIXELS).await);
    assert_same_pixels(
        "relayClient.pixels() after B's catch-up",
        &got,
        &frames_b[7],
        W as usize,
    );

    // (c) C claims the channel while the page is connected: a Changed mark,
    // the page goes on and later resumes in C's stream.
    drop(b);
    common::eventually("source B gone", || {
        relay.relay.channel("marks").is_some_and(|c| !c.source)
    })
    .await;
    let mut c = common::connect(&relay.url("/source/marks")).await;
    let frames_c: Vec<Vec<u8>> = (5..9).map(pattern).collect();
    send_frames(&mut c, None, &frames_c[..3], 0).await;
    cdp.wait_for(
        "C's seq 2 in the page, in a new stream",
        &format!(
            "(() => {{ const r = window.relayClient;
               return r.seq === 2 && r.drawn === r.frames && r.epoch !== null && r.epoch !== '{epoch_b}'; }})()"
        ),
    )
    .await;
    let epoch_c = cdp.eval("window.relayClient.epoch").await;
    cut_off(&proxy);
    cdp.wait_for(
        "the page to be cut off",
        "window.relayClient.state !== 'open'",
    )
    .await;
    common::wait_receivers(&relay, "marks", 0).await;
    send_frames(&mut c, Some(&frames_c[2]), &frames_c[3..], 3).await;
    wait_frames_in(&relay, "marks", 14 + 4).await;
    proxy.refuse(false);
    cdp.wait_for(
        "the page to resume to C's seq 3",
        "(() => { const r = window.relayClient;
           return r.state === 'open' && r.seq === 3 && r.drawn === r.frames; })()",
    )
    .await;
    let in_c = cdp.eval(RESUME_STATE).await;
    assert_eq!(in_c["lastError"], Value::Null, "{in_c}");
    assert_eq!(
        (&in_c["resumes"], &in_c["fullCatchups"], &in_c["epoch"]),
        (&json!(2), &json!(1), &epoch_c),
        "resumed within C's stream: {in_c}"
    );
    let got = b64(&cdp.eval(CLIENT_PIXELS).await);
    assert_same_pixels(
        "relayClient.pixels() after resuming in C",
        &got,
        &frames_c[3],
        W as usize,
    );
    drop(c);

    let mut browser = browser;
    browser.close(&mut cdp).await;
}
