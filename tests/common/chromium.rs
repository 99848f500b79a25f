//! Headless Chromium driven over the DevTools protocol, for the tests that
//! check a page in a real browser (`tests/browser.rs`, `tests/dashboard.rs`):
//! finding and launching the browser, a CDP session on one page, evaluating
//! script in it, screenshots. Included with `#[path]` by those tests only;
//! each defines `PAGE_STATE`, the script whose value a timed-out wait
//! reports.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use bitstream_relay::client::{Client, Message};
use serde_json::{json, Value};
use tokio::time::{sleep, timeout, Instant};

use super::common::DEADLINE;

/// How long Chromium may take to start and print its DevTools URL: once in
/// five full test runs on a busy 2-core machine it took over 20 s.
const BROWSER_START: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// Chromium process
// ---------------------------------------------------------------------------

/// Chromium for a browser test: its path, or `None` when the test is to be
/// skipped on purpose (`RELAY_SKIP_BROWSER=1`); without chromium and
/// without that opt-out the test fails (see `common::tool_available`).
pub fn chromium_for_test() -> Option<PathBuf> {
    let exe = find_chromium();
    let found = super::common::tool_available(
        exe.is_some(),
        "chromium (apt-get install chromium)",
        "RELAY_SKIP_BROWSER",
    );
    exe.filter(|_| found)
}

pub fn find_chromium() -> Option<PathBuf> {
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
pub struct Browser {
    child: Child,
    profile: PathBuf,
    stderr: Arc<Mutex<VecDeque<String>>>,
}

impl Browser {
    /// Starts headless chromium and returns it with its DevTools WebSocket URL.
    pub async fn launch(exe: &Path) -> (Self, String) {
        Self::launch_with(exe, &[]).await
    }

    /// [`Browser::launch`] with extra command-line flags (e.g. WebRTC's
    /// loopback candidates, `tests/webrtc.rs`).
    pub async fn launch_with(exe: &Path, extra: &[&str]) -> (Self, String) {
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
            .args(extra)
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
        let url = match timeout(BROWSER_START, rx).await {
            Ok(Ok(url)) => url,
            Ok(Err(_)) => panic!(
                "chromium exited before printing its DevTools URL:\n{}",
                browser.stderr_tail()
            ),
            Err(_) => panic!(
                "chromium printed no DevTools URL within {BROWSER_START:?}:\n{}",
                browser.stderr_tail()
            ),
        };
        (browser, url)
    }

    /// Asks chromium to quit (CDP `Browser.close`) and waits for it to exit;
    /// the drop guard kills it if it does not.
    pub async fn close(&mut self, cdp: &mut Cdp) {
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

    pub fn stderr_tail(&self) -> String {
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

pub struct Cdp {
    ws: Client,
    next_id: u64,
    /// The flattened session of the attached page.
    pub session: Option<String>,
    /// Console messages and exceptions of the page, for failure messages.
    console: VecDeque<String>,
}

impl Cdp {
    pub async fn connect(url: &str) -> Self {
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
    pub async fn try_call(&mut self, method: &str, params: Value) -> Result<Value, String> {
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

    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        match self.try_call(method, params).await {
            Ok(v) => v,
            Err(e) => panic!("CDP error {e}\n{}", self.console_tail()),
        }
    }

    pub fn note_event(&mut self, v: &Value) {
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

    pub fn console_tail(&self) -> String {
        if self.console.is_empty() {
            return "(page console: nothing)".into();
        }
        let lines: Vec<&str> = self.console.iter().map(String::as_str).collect();
        format!("page console:\n  {}", lines.join("\n  "))
    }

    /// Evaluates `expr` in the page (promises awaited) and returns its value.
    pub async fn try_eval(&mut self, expr: &str) -> Result<Value, String> {
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

    pub async fn eval(&mut self, expr: &str) -> Value {
        match self.try_eval(expr).await {
            Ok(v) => v,
            Err(e) => panic!("{e}\n{}", self.console_tail()),
        }
    }

    /// Polls `expr` until it is truthy (errors, e.g. during a navigation,
    /// count as not yet); panics with `what`, the page state and its
    /// console after [`DEADLINE`].
    pub async fn wait_for(&mut self, what: &str, expr: &str) -> Value {
        let start = Instant::now();
        loop {
            let last = match self.try_eval(expr).await {
                Ok(v) if !matches!(v, Value::Null | Value::Bool(false)) => return v,
                Ok(v) => v,
                Err(e) => Value::String(e),
            };
            if start.elapsed() > DEADLINE {
                let state = self
                    .try_eval(super::PAGE_STATE)
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

    pub async fn screenshot(&mut self, name: &str) -> PathBuf {
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

/// Navigates the attached page to `url` and waits until its client
/// (`window.relayClient`) is running.
pub async fn open(cdp: &mut Cdp, url: &str) {
    cdp.call("Page.navigate", json!({ "url": url })).await;
    cdp.wait_for(
        &format!("{url} to load"),
        "document.readyState === 'complete' && !!window.relayClient",
    )
    .await;
}

// ---------------------------------------------------------------------------
// One page, and screenshots for docs/
// ---------------------------------------------------------------------------

/// Launches chromium and attaches a CDP session to its page (created if
/// it opened none), with the page's viewport `width` x `height`.
pub async fn launch_page(exe: &Path, width: u32, height: u32) -> (Browser, Cdp) {
    let (browser, devtools_url) = Browser::launch(exe).await;
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
    for method in ["Runtime.enable", "Log.enable", "Page.enable"] {
        cdp.call(method, json!({})).await;
    }
    cdp.call(
        "Emulation.setDeviceMetricsOverride",
        json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": false }),
    )
    .await;
    (browser, cdp)
}

/// Copies a screenshot to `docs/<name>` when that file is missing or
/// `RELAY_UPDATE_DOCS=1` asks for it, so an ordinary test run leaves the
/// work tree clean.
pub fn save_to_docs(shot: &Path, name: &str) {
    let docs = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docs")
        .join(name);
    if !docs.exists() || std::env::var("RELAY_UPDATE_DOCS").as_deref() == Ok("1") {
        std::fs::copy(shot, &docs).expect("copy the screenshot to docs/");
    }
}
