//! The dashboard (`GET /dashboard`) in headless Chromium, driven over the
//! DevTools protocol like `tests/browser.rs` (whose Chromium and CDP
//! helpers are copied here): under a running stream the page shows a
//! frame rate, and once the stream pauses every number in its channel
//! table equals `GET /channels`. Saves `target/dashboard.png`, and
//! `docs/dashboard.png` (the README's) when missing or with
//! `RELAY_UPDATE_DOCS=1`.
//!
//! Without chromium the test fails, unless `RELAY_SKIP_BROWSER=1` says to
//! skip it on purpose (it then says so loudly).

#![allow(dead_code)]

mod common;

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use bitstream_relay::client::{Client, Message};
use bitstream_relay::protocol;
use serde_json::{json, Value};
use tokio::time::{sleep, timeout, Instant};

use common::DEADLINE;

// ---------------------------------------------------------------------------
// Chromium process
// ---------------------------------------------------------------------------

fn find_chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CHROMIUM") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    for name in [
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
    ] {
        for dir in dirs
            .iter()
            .map(PathBuf::as_path)
            .chain([Path::new("/usr/bin")])
        {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    None
}

/// A running chromium; killed (and its profile removed) on drop, also
/// when the test panics.
struct Browser {
    child: Child,
    profile: PathBuf,
    stderr: Arc<Mutex<VecDeque<String>>>,
}

impl Browser {
    /// Starts headless chromium and returns it with its DevTools WebSocket URL.
    async fn launch(exe: &Path) -> (Self, String) {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let profile = std::env::temp_dir().join(format!(
            "bitstream-relay-chromium-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&profile).expect("create chromium profile dir");
        let mut child = Command::new(exe)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--mute-audio",
                "--hide-scrollbars",
                "--window-size=1024,1000",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", exe.display()));
        let stderr = Arc::new(Mutex::new(VecDeque::new()));
        let (tx, rx) = tokio::sync::oneshot::channel::<String>();
        {
            let pipe = child.stderr.take().expect("stderr pipe");
            let log = stderr.clone();
            // Reads stderr to the end (so chromium never blocks on a full
            // pipe), keeps the last lines for failure messages, and hands
            // over the DevTools URL.
            std::thread::spawn(move || {
                let mut tx = Some(tx);
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    if let Some(url) = line.split("DevTools listening on ").nth(1) {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(url.trim().to_owned());
                        }
                    }
                    let mut log = log.lock().unwrap();
                    if log.len() == 200 {
                        log.pop_front();
                    }
                    log.push_back(line);
                }
            });
        }
        let browser = Self {
            child,
            profile,
            stderr,
        };
        let url = match timeout(DEADLINE, rx).await {
            Ok(Ok(url)) => url,
            Ok(Err(_)) => panic!(
                "chromium exited before printing its DevTools URL:\n{}",
                browser.stderr_tail()
            ),
            Err(_) => panic!(
                "chromium printed no DevTools URL within {DEADLINE:?}:\n{}",
                browser.stderr_tail()
            ),
        };
        (browser, url)
    }

    /// Asks chromium to quit (CDP `Browser.close`) and waits for it to exit;
    /// the drop guard kills it if it does not.
    async fn close(&mut self, cdp: &mut Cdp) {
        cdp.session = None;
        let _ = cdp.try_call("Browser.close", json!({})).await;
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            sleep(Duration::from_millis(20)).await;
        }
    }

    fn stderr_tail(&self) -> String {
        let log = self.stderr.lock().unwrap();
        let n = log.len().saturating_sub(30);
        log.iter().skip(n).cloned().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Helper processes may still be writing for a moment.
        for _ in 0..20 {
            if std::fs::remove_dir_all(&self.profile).is_ok() || !self.profile.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

// ---------------------------------------------------------------------------
// DevTools protocol over the crate's WebSocket client
// ---------------------------------------------------------------------------

struct Cdp {
    ws: Client,
    next_id: u64,
    /// The flattened session of the attached page.
    session: Option<String>,
    /// Console messages and exceptions of the page, for failure messages.
    console: VecDeque<String>,
}

impl Cdp {
    async fn connect(url: &str) -> Self {
        let ws = timeout(DEADLINE, Client::connect(url, 64 << 20))
            .await
            .expect("DevTools connect timed out")
            .unwrap_or_else(|e| panic!("DevTools connect {url}: {e}"));
        Self {
            ws,
            next_id: 1,
            session: None,
            console: VecDeque::new(),
        }
    }

    /// Sends a command and waits for its answer (events on the way are
    /// logged); `Err` carries a CDP error.
    async fn try_call(&mut self, method: &str, params: Value) -> Result<Value, String> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = &self.session {
            msg["sessionId"] = json!(s);
        }
        self.ws
            .send_text(&msg.to_string())
            .await
            .unwrap_or_else(|e| panic!("CDP send {method}: {e}"));
        let answer = timeout(DEADLINE, async {
            loop {
                let text = match self.ws.recv().await {
                    Ok(Message::Text(t)) => t,
                    Ok(Message::Binary(_)) => continue,
                    Err(e) => panic!("CDP connection failed during {method}: {e}"),
                };
                let v: Value = serde_json::from_str(&text).expect("CDP sent invalid JSON");
                if v["id"] == json!(id) {
                    return v;
                }
                self.note_event(&v);
            }
        })
        .await
        .unwrap_or_else(|_| panic!("CDP {method} got no answer within {DEADLINE:?}"));
        match answer.get("error") {
            Some(e) => Err(format!("{method}: {e}")),
            None => Ok(answer["result"].clone()),
        }
    }

    async fn call(&mut self, method: &str, params: Value) -> Value {
        match self.try_call(method, params).await {
            Ok(v) => v,
            Err(e) => panic!("CDP error {e}\n{}", self.console_tail()),
        }
    }

    fn note_event(&mut self, v: &Value) {
        let p = &v["params"];
        let line = match v["method"].as_str() {
            Some("Runtime.consoleAPICalled") => {
                let args: Vec<String> = p["args"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|x| match &x["value"] {
                                Value::Null => x["description"].as_str().unwrap_or("?").to_owned(),
                                Value::String(s) => s.clone(),
                                other => other.to_string(),
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                format!(
                    "console.{}: {}",
                    p["type"].as_str().unwrap_or("log"),
                    args.join(" ")
                )
            }
            Some("Runtime.exceptionThrown") => {
                let d = &p["exceptionDetails"];
                format!(
                    "exception: {}",
                    d["exception"]["description"]
                        .as_str()
                        .or(d["text"].as_str())
                        .unwrap_or("?")
                )
            }
            Some("Log.entryAdded") => format!(
                "log.{}: {} {}",
                p["entry"]["level"].as_str().unwrap_or("?"),
                p["entry"]["text"].as_str().unwrap_or(""),
                p["entry"]["url"].as_str().unwrap_or("")
            ),
            _ => return,
        };
        if self.console.len() == 100 {
            self.console.pop_front();
        }
        self.console.push_back(line);
    }

    fn console_tail(&self) -> String {
        if self.console.is_empty() {
            return "(page console: nothing)".into();
        }
        let lines: Vec<&str> = self.console.iter().map(String::as_str).collect();
        format!("page console:\n  {}", lines.join("\n  "))
    }

    /// Evaluates `expr` in the page (promises awaited) and returns its value.
    async fn try_eval(&mut self, expr: &str) -> Result<Value, String> {
        let r = self
            .try_call(
                "Runtime.evaluate",
                json!({ "expression": expr, "awaitPromise": true, "returnByValue": true }),
            )
            .await?;
        if let Some(ex) = r.get("exceptionDetails") {
            let what = ex["exception"]["description"]
                .as_str()
                .or(ex["text"].as_str())
                .unwrap_or("exception");
            return Err(format!("{expr} threw: {what}"));
        }
        Ok(r["result"]["value"].clone())
    }

    async fn eval(&mut self, expr: &str) -> Value {
        match self.try_eval(expr).await {
            Ok(v) => v,
            Err(e) => panic!("{e}\n{}", self.console_tail()),
        }
    }

    /// Polls `expr` until it is truthy (errors, e.g. during a navigation,
    /// count as not yet); panics with `what`, the page state and its
    /// console after [`DEADLINE`].
    async fn wait_for(&mut self, what: &str, expr: &str) -> Value {
        let start = Instant::now();
        loop {
            let last = match self.try_eval(expr).await {
                Ok(v) if !matches!(v, Value::Null | Value::Bool(false)) => return v,
                Ok(v) => v,
                Err(e) => Value::String(e),
            };
            if start.elapsed() > DEADLINE {
                let state = self
                    .try_eval(PAGE_STATE)
                    .await
                    .unwrap_or_else(Value::String);
                panic!(
                    "timed out waiting for {what}\n  last value: {last}\n  page state: {state}\n{}",
                    self.console_tail()
                );
            }
            sleep(Duration::from_millis(50)).await;
        }
    }

    async fn screenshot(&mut self, name: &str) -> PathBuf {
        let shot = self
            .call("Page.captureScreenshot", json!({ "format": "png" }))
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("screenshot data"))
            .expect("screenshot base64");
        assert!(
            png.starts_with(b"\x89PNG\r\n\x1a\n"),
            "screenshot is not a PNG"
        );
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
        std::fs::create_dir_all(&dir).expect("create target/");
        let path = dir.join(name);
        std::fs::write(&path, &png).expect("write screenshot");
        path
    }
}

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
