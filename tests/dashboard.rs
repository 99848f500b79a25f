//! The dashboard (`GET /dashboard`) in headless Chromium, driven over the
//! DevTools protocol like `tests/browser.rs` (the Chromium and CDP
//! helpers of `tests/common/chromium.rs`): under a running stream the page shows a
//! frame rate, and once the stream pauses every number in its channel
//! table equals `GET /channels`. Saves `target/dashboard.png`. And the
//! page explains itself (`dashboard_explains_itself`): relay facts in the
//! header, its own connection named, fps of pictures only, averaged rates,
//! charts filled from the relay's history, lines told apart; it saves
//! `docs/dashboard.png` (the README's) when missing or with
//! `RELAY_UPDATE_DOCS=1`.
//!
//! Without chromium the test fails, unless `RELAY_SKIP_BROWSER=1` says to
//! skip it on purpose (it then says so loudly).

#[path = "common/chromium.rs"]
mod chromium;
mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bitstream_relay::client::{Client, Message};
use bitstream_relay::protocol;
use serde_json::{json, Value};
use tokio::time::{sleep, timeout};

use common::DEADLINE;

/// A one-line summary of the dashboard for failure messages.
const PAGE_STATE: &str = "JSON.stringify({ updates: window.dashboard?.updates, status: document.getElementById('status')?.textContent, rows: document.querySelectorAll('tr[data-channel]').length })";

/// The channel table as the page shows it: name -> column -> text.
const TABLE: &str = "(() => { const out = {};
  for (const tr of document.querySelectorAll('tr[data-channel]')) {
    const row = { href: tr.querySelector('a').getAttribute('href') };
    for (const td of tr.querySelectorAll('td[data-k]')) row[td.dataset.k] = td.textContent;
    out[tr.dataset.channel] = row;
  }
  return out; })()";

const W: u16 = 64;
const H: u16 = 48;

/// Sends `picture(seq)` as a keyframe and a one-key signal diff every
/// 33 ms while `run` holds; the task gives the source back.
fn stream_while(
    mut source: Client,
    run: Arc<AtomicBool>,
    picture: fn(u16) -> Vec<u8>,
) -> tokio::task::JoinHandle<Client> {
    tokio::spawn(async move {
        let mut seq = 0u16;
        while run.load(Ordering::Relaxed) {
            source
                .send(&protocol::pixels_keyframe(seq, 0, W, H, &picture(seq)))
                .await
                .expect("send frame");
            let diff = format!(r#"{{"frame":{seq}}}"#);
            source
                .send(&protocol::signal(true, seq, 0, diff.as_bytes()))
                .await
                .expect("send signal");
            seq = seq.wrapping_add(1);
            sleep(Duration::from_millis(33)).await;
        }
        source
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_numbers_match_channels() {
    let Some(exe) = chromium::chromium_for_test() else {
        return;
    };
    let relay = common::start(&[]).await;

    // A stream on "dash" (keyframes and signal diffs) with two receivers,
    // and a receiver alone on "quiet".
    let source = common::connect(&relay.url("/source/dash")).await;
    let mut drains = Vec::new();
    for path in ["/stream/dash", "/stream/dash", "/stream/quiet"] {
        let mut c = common::connect(&relay.url(path)).await;
        drains.push(tokio::spawn(async move {
            while let Ok(Message::Binary(_) | Message::Text(_)) = c.recv().await {}
        }));
    }
    // And one SSE client of its signal state.
    let mut sse = tokio::net::TcpStream::connect(relay.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut sse, b"GET /events/dash HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    drains.push(tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while tokio::io::AsyncReadExt::read(&mut sse, &mut buf)
            .await
            .is_ok_and(|n| n > 0)
        {}
    }));
    common::wait_receivers(&relay, "dash", 2).await;
    common::eventually("the SSE client", || {
        relay
            .relay
            .channel("dash")
            .is_some_and(|c| c.sse_clients == 1)
    })
    .await;
    common::wait_receivers(&relay, "quiet", 1).await;
    let streaming = Arc::new(AtomicBool::new(true));
    let run = streaming.clone();
    let stream = stream_while(source, run, |seq| {
        let shade = (seq % 256) as u8;
        (0..W as usize * H as usize)
            .flat_map(|i| [shade, (i % 256) as u8, 255 - shade, 255])
            .collect()
    });

    let (mut browser, mut cdp) = chromium::launch_page(&exe, 1000, 560).await;
    cdp.call(
        "Page.navigate",
        json!({ "url": format!("http://{}/dashboard", relay.addr) }),
    )
    .await;

    // Streaming: the page shows a frame rate and a throughput for "dash".
    cdp.wait_for(
        "eight updates with a frame rate on dash",
        "window.dashboard.updates >= 8 && (() => { const r = document.querySelector('tr[data-channel=dash] td[data-k=fps]'); return r && Number(r.textContent) > 0; })()",
    )
    .await;
    let table = cdp.eval(TABLE).await;
    let dash = &table["dash"];
    assert!(
        dash["mbs_in"].as_str().unwrap().parse::<f64>().unwrap() > 0.0,
        "{table}"
    );
    assert_eq!(
        dash["href"], "/?channel=dash",
        "a link to the receiver page"
    );
    let shot = cdp.screenshot("dashboard.png").await;
    eprintln!("dashboard screenshot: {}", shot.display());

    // Paused: every count on the page equals /channels.
    streaming.store(false, Ordering::Relaxed);
    let _source = timeout(DEADLINE, stream)
        .await
        .expect("stream stops")
        .unwrap();
    let frames_now = relay.relay.channel("dash").unwrap().traffic.frames_in;
    let js = format!(
        "(() => {{ const r = document.querySelector('tr[data-channel=dash] td[data-k=frames_in]'); return r && Number(r.textContent) === {frames_now}; }})()"
    );
    cdp.wait_for("the page to show the paused stream", &js)
        .await;
    sleep(Duration::from_millis(1100)).await; // past /channels' 1 s cache
    let (status, body) = common::http_get(&relay, "/channels").await;
    assert_eq!(status, 200);
    let channels: Value = serde_json::from_str(&body).unwrap();
    let table = cdp.eval(TABLE).await;
    let listed = channels.as_array().unwrap();
    assert_eq!(listed.len(), table.as_object().unwrap().len(), "{table}");
    for ch in listed {
        let name = ch["name"].as_str().unwrap();
        let row = &table[name];
        assert!(row.is_object(), "{name} missing on the page: {table}");
        let source = if ch["source"].as_bool().unwrap() {
            "live"
        } else {
            "none"
        };
        assert_eq!(row["source"], source, "{name}");
        for k in ["receivers", "sse_clients", "frames_in", "pictures_in"] {
            assert_eq!(row[k].as_str().unwrap(), ch[k].to_string(), "{name} {k}");
        }
    }
    browser.close(&mut cdp).await;
    for d in drains {
        d.abort();
    }
}

/// A chart's lines: (stroke, width, dash) of each polyline, and whether
/// it says it is still collecting.
const CHART_LINES: &str = "((id) => { const svg = document.getElementById(id);
  return { lines: [...svg.querySelectorAll('polyline')].map(l => [l.getAttribute('stroke'), l.getAttribute('stroke-width'), l.getAttribute('stroke-dasharray') || '']),
           collecting: !!svg.querySelector('[data-collecting]') }; })";

/// The dashboard explains itself: the header names the relay's version,
/// listen address, tokens and TLS; the connections card says it counts
/// this dashboard; fps counts pictures, not the signal messages between
/// them; rates are averaged over a window (a keyframe burst does not
/// jump); the charts start filled from the relay's history; equal lines
/// stay distinguishable. Saves `docs/dashboard.png` (when missing, or with
/// `RELAY_UPDATE_DOCS=1`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_explains_itself() {
    let Some(exe) = chromium::chromium_for_test() else {
        return;
    };
    let relay = common::start(&[]).await;

    // A picture and a signal diff per tick on "dash", one receiver.
    let source = common::connect(&relay.url("/source/dash")).await;
    let mut rx = common::connect(&relay.url("/stream/dash")).await;
    let drain = tokio::spawn(async move { while rx.recv().await.is_ok() {} });
    common::wait_receivers(&relay, "dash", 1).await;
    let streaming = Arc::new(AtomicBool::new(true));
    let run = streaming.clone();
    let stream = stream_while(source, run, |_| vec![200u8; W as usize * H as usize * 4]);
    // Let the relay gather a few seconds of history before the page opens.
    let start = tokio::time::Instant::now();
    loop {
        let (_, body) = common::http_get(&relay, "/healthz").await;
        let health: Value = serde_json::from_str(&body).unwrap();
        if health["uptime_ms"].as_u64().unwrap() >= 4500 {
            break;
        }
        assert!(start.elapsed() < DEADLINE, "relay uptime: {health}");
        sleep(Duration::from_millis(200)).await;
    }

    let (mut browser, mut cdp) = chromium::launch_page(&exe, 1000, 620).await;
    cdp.call(
        "Page.navigate",
        json!({ "url": format!("http://{}/dashboard", relay.addr) }),
    )
    .await;
    cdp.wait_for(
        "three updates with a frame rate on dash",
        "window.dashboard.updates >= 3 && window.dashboard.health !== null
           && (window.dashboard.channelRates.dash?.fps ?? 0) >= 3",
    )
    .await;

    // The charts started from the relay's history, not empty.
    let history = cdp.eval("window.dashboard.history").await;
    assert!(history.as_u64().unwrap() >= 4, "history samples: {history}");
    for id in ["chart-throughput", "chart-connections"] {
        let chart = cdp.eval(&format!("{CHART_LINES}('{id}')")).await;
        assert_eq!(chart["collecting"], false, "{id}: {chart}");
        let lines = chart["lines"].as_array().unwrap();
        assert!(lines.len() >= 2, "{id}: {chart}");
        // Equal series stay visible: no two lines drawn alike.
        let styles: std::collections::HashSet<String> =
            lines.iter().map(|l| format!("{}|{}", l[1], l[2])).collect();
        assert_eq!(
            styles.len(),
            lines.len(),
            "{id}: lines drawn alike: {chart}"
        );
    }

    // The header: version, listen address, tokens, TLS.
    let info = cdp
        .eval("document.getElementById('relay-info').textContent")
        .await;
    let info = info.as_str().unwrap();
    for want in [
        format!("v{}", env!("CARGO_PKG_VERSION")),
        format!("listening on {}", relay.addr),
        "tokens off".to_owned(),
        "TLS off".to_owned(),
    ] {
        assert!(info.contains(&want), "header {info:?} lacks {want:?}");
    }

    // The connections card says this dashboard is one of them.
    let card = cdp
        .eval("document.querySelector('[data-total=connections] span').textContent")
        .await;
    assert_eq!(card, "connections (1 dashboard incl. this one)");
    let snapshot = cdp.eval("window.dashboard.snapshot").await;
    assert_eq!(snapshot["dashboards"], 1, "{snapshot}");

    // fps counts pictures: the relay counts them apart from the signal
    // messages between them, and the page's rate is the pictures'.
    let dash = snapshot["channels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "dash")
        .expect("dash in the snapshot")
        .clone();
    let (frames, pictures) = (
        dash["frames_in"].as_u64().unwrap(),
        dash["pictures_in"].as_u64().unwrap(),
    );
    assert!(
        pictures > 0 && (2 * pictures - 1..=2 * pictures).contains(&frames),
        "a picture and a signal message a tick: {dash}"
    );
    let rates = cdp.eval("window.dashboard.channelRates.dash").await;
    let (fps, messages) = (
        rates["fps"].as_f64().unwrap(),
        rates["messages"].as_f64().unwrap(),
    );
    assert!(
        messages > 1.5 * fps && messages < 2.5 * fps,
        "fps {fps} counts pictures, messages {messages} both: {rates}"
    );

    // The rates, unit by unit: pictures only, over a window.
    let unit = cdp
        .eval(
            "import('/dashboard.js').then(m => {
               const at = (t, p, f, b) => ({ t, pictures_in: p, frames_in: f, bytes_in: b, bytes_out: 2 * b });
               const burst = [0, 1, 2, 3, 4, 5].map(s => at(s * 1000, 30 * s, 60 * s, s === 5 ? 5e6 : 0));
               return { window: m.WINDOW, pair: m.channelRates([at(0, 0, 0, 0), at(1000, 30, 60, 1e6)]),
                        burst: m.channelRates(burst), one: m.channelRates([at(0, 0, 0, 0)]).fps };
             })",
        )
        .await;
    assert_eq!(unit["window"], 5);
    assert_eq!(
        unit["pair"],
        json!({ "fps": 30, "messages": 60, "inMBs": 1, "outMBs": 2 })
    );
    assert_eq!(
        unit["burst"],
        json!({ "fps": 30, "messages": 60, "inMBs": 1, "outMBs": 2 }),
        "a 5 MB keyframe in the last second of five: 1 MB/s, not 5"
    );
    assert_eq!(unit["one"], Value::Null, "no rate from one snapshot (NaN)");

    let shot = cdp.screenshot("dashboard-explained.png").await;
    chromium::save_to_docs(&shot, "dashboard.png");

    streaming.store(false, Ordering::Relaxed);
    let _source = timeout(DEADLINE, stream)
        .await
        .expect("stream stops")
        .unwrap();
    drain.abort();
    browser.close(&mut cdp).await;
}
