//! The dashboard (`GET /dashboard`) in headless Chromium, driven over the
//! DevTools protocol like `tests/browser.rs` (the Chromium and CDP
//! helpers of `tests/common/chromium.rs`): under a running stream the page shows a
//! frame rate, and once the stream pauses every number in its channel
//! table equals `GET /channels`. Saves `target/dashboard.png`, and
//! `docs/dashboard.png` (the README's) when missing or with
//! `RELAY_UPDATE_DOCS=1`.
//!
//! Without chromium the test fails, unless `RELAY_SKIP_BROWSER=1` says to
//! skip it on purpose (it then says so loudly).

#[path = "common/chromium.rs"]
mod chromium;
mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bitstream_relay::client::Message;
use bitstream_relay::protocol;
use serde_json::{json, Value};
use tokio::time::{sleep, timeout};

use chromium::{find_chromium, Browser, Cdp};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_numbers_match_channels() {
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

    // A stream on "dash" (keyframes and signal diffs) with two receivers,
    // and a receiver alone on "quiet".
    let mut source = common::connect(&relay.url("/source/dash")).await;
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
    let stream = tokio::spawn(async move {
        let mut seq = 0u16;
        while run.load(Ordering::Relaxed) {
            let shade = (seq % 256) as u8;
            let rgba: Vec<u8> = (0..W as usize * H as usize)
                .flat_map(|i| [shade, (i % 256) as u8, 255 - shade, 255])
                .collect();
            source
                .send(&protocol::pixels_keyframe(seq, 0, W, H, &rgba))
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
    });

    let (mut browser, devtools_url) = Browser::launch(&exe).await;
    let mut cdp = Cdp::connect(&devtools_url).await;
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
    cdp.call(
        "Emulation.setDeviceMetricsOverride",
        json!({ "width": 1000, "height": 560, "deviceScaleFactor": 1, "mobile": false }),
    )
    .await;
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
    // The README's copy is replaced only on request (or when missing), so
    // a test run leaves the work tree clean.
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/dashboard.png");
    if !docs.exists() || std::env::var("RELAY_UPDATE_DOCS").as_deref() == Ok("1") {
        std::fs::copy(&shot, &docs).expect("copy the screenshot to docs/");
    }
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
        for k in ["receivers", "sse_clients", "frames_in"] {
            assert_eq!(row[k].as_str().unwrap(), ch[k].to_string(), "{name} {k}");
        }
    }
    browser.close(&mut cdp).await;
    for d in drains {
        d.abort();
    }
}
