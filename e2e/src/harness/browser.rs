//! [`Browser`]: headless Chromium (Debian's `chromium` package, installed by
//! `scripts/chromium-test-deps.sh`) driven over the Chrome DevTools
//! Protocol on a loopback WebSocket, to load a page as a person would and
//! report what the console said.
//!
//! Chromium runs with the flags this machine needs: no sandbox (root), no
//! GPU, and no background networking, so it makes no connection but to the
//! page under test.

use super::binaries::workspace_root;
use super::deps::program_or_skip;
use super::eventually::eventually;
use super::process::Proc;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A running headless Chromium; killed when dropped.
#[derive(Debug)]
pub struct Browser {
    proc: Proc,
    ws_url: String,
    _profile: tempfile::TempDir,
}

/// A page loaded in its own tab: what the console reported while it loaded,
/// and a DevTools session to ask it more.
pub struct Page {
    ws: Socket,
    session: String,
    next_id: u64,
    /// Console errors, uncaught exceptions and error log entries, as text.
    pub errors: Vec<String>,
}

/// How long Chromium may take to start or a page to load.
const DEADLINE: Duration = Duration::from_secs(30);

/// The `chromium` binary, installing it with the project script when
/// missing. Under `CI=true` a missing, uninstallable browser panics;
/// otherwise it prints a loud `SKIPPED` and returns `None`.
pub fn chromium_or_skip(test: &str) -> Option<PathBuf> {
    program_or_skip(
        test,
        "chromium",
        &workspace_root().join("scripts/chromium-test-deps.sh"),
        "Debian's chromium package",
    )
}

/// The flags every Chromium started here gets.
fn base_args(profile: &Path) -> Vec<String> {
    [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--window-size=1280,900",
        // The control plane serves a certificate of the mesh's own CA,
        // which a throwaway profile has no way to trust.
        "--ignore-certificate-errors",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("--user-data-dir={}", profile.display())])
    .collect()
}

// === impl Browser ===

impl Browser {
    /// Starts `bin` with remote debugging on a loopback port it picks, and
    /// waits for its DevTools address.
    pub async fn start(bin: &Path) -> Browser {
        let profile = tempfile::tempdir().expect("a browser profile dir");
        let mut args = base_args(profile.path());
        args.extend([
            "--remote-debugging-address=127.0.0.1".to_string(),
            "--remote-debugging-port=0".to_string(),
            "about:blank".to_string(),
        ]);
        let proc = Proc::spawn("chromium", bin, &args, &[]);
        let ws_url = eventually(DEADLINE, || async {
            let err = proc.stderr();
            err.lines()
                .find_map(|l| {
                    l.split_once("DevTools listening on ")
                        .map(|(_, u)| u.trim())
                })
                .map(str::to_string)
                .ok_or_else(|| format!("no DevTools address yet; stderr: {err}"))
        })
        .await;
        Browser {
            proc,
            ws_url,
            _profile: profile,
        }
    }

    /// Opens `url` in a new tab and returns once its `load` event fired,
    /// with every console error reported until then.
    pub async fn open(&self, url: &str) -> Page {
        let (ws, _) = tokio_tungstenite::connect_async(self.ws_url.as_str())
            .await
            .unwrap_or_else(|e| panic!("connecting to {}: {e}", self.ws_url));
        let mut page = Page {
            ws,
            session: String::new(),
            next_id: 0,
            errors: Vec::new(),
        };
        let target = page
            .call("Target.createTarget", json!({ "url": "about:blank" }))
            .await;
        let attached = page
            .call(
                "Target.attachToTarget",
                json!({ "targetId": target["targetId"], "flatten": true }),
            )
            .await;
        page.session = attached["sessionId"]
            .as_str()
            .expect("a session id")
            .to_string();
        for domain in ["Runtime.enable", "Log.enable", "Page.enable"] {
            page.call(domain, json!({})).await;
        }
        page.call("Page.navigate", json!({ "url": url })).await;
        page.wait_event("Page.loadEventFired").await;
        page
    }

    /// The browser's output so far (for failure messages).
    pub fn stderr(&self) -> String {
        self.proc.stderr()
    }
}

/// Renders `url` to a PNG at `out` with a separate headless run
/// (`--screenshot`), for documentation.
pub fn screenshot(bin: &Path, url: &str, out: &Path) -> Result<(), String> {
    let profile = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut args = base_args(profile.path());
    args.push(format!("--screenshot={}", out.display()));
    args.push("--hide-scrollbars".to_string());
    args.push(url.to_string());
    let done = Command::new(bin)
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running {}: {e}", bin.display()))?;
    if !done.status.success() || !out.is_file() {
        return Err(format!(
            "chromium --screenshot failed ({}): {}",
            done.status,
            String::from_utf8_lossy(&done.stderr)
        ));
    }
    Ok(())
}

// === impl Page ===

impl Page {
    /// Sends one DevTools command and returns its result, keeping any event
    /// that arrives meanwhile.
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if !self.session.is_empty() {
            msg["sessionId"] = json!(self.session);
        }
        self.ws
            .send(Message::text(msg.to_string()))
            .await
            .unwrap_or_else(|e| panic!("sending {method}: {e}"));
        loop {
            let m = self.next_message(method).await;
            if m["id"] == id {
                if !m["error"].is_null() {
                    panic!("{method} failed: {}", m["error"]);
                }
                return m["result"].clone();
            }
            self.note_event(&m);
        }
    }

    async fn next_message(&mut self, waiting_for: &str) -> Value {
        loop {
            let msg = tokio::time::timeout(DEADLINE, self.ws.next())
                .await
                .unwrap_or_else(|_| {
                    panic!("no DevTools message within {DEADLINE:?} ({waiting_for})")
                })
                .unwrap_or_else(|| panic!("DevTools closed ({waiting_for})"))
                .unwrap_or_else(|e| panic!("DevTools: {e} ({waiting_for})"));
            if let Message::Text(text) = msg {
                return serde_json::from_str(text.as_str()).expect("DevTools sends JSON");
            }
        }
    }

    async fn wait_event(&mut self, name: &str) {
        loop {
            let m = self.next_message(name).await;
            self.note_event(&m);
            if m["method"] == name {
                return;
            }
        }
    }

    /// Keeps console errors, exceptions and error log entries.
    fn note_event(&mut self, m: &Value) {
        let p = &m["params"];
        match m["method"].as_str() {
            Some("Runtime.consoleAPICalled") if p["type"] == "error" => {
                self.errors.push(format!("console.error: {}", p["args"]));
            }
            Some("Runtime.exceptionThrown") => {
                self.errors
                    .push(format!("exception: {}", p["exceptionDetails"]));
            }
            Some("Log.entryAdded") if p["entry"]["level"] == "error" => {
                self.errors.push(format!(
                    "log: {} ({})",
                    p["entry"]["text"], p["entry"]["url"]
                ));
            }
            _ => {}
        }
    }

    /// Evaluates `expression` in the page and returns its value as JSON.
    pub async fn eval(&mut self, expression: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true }),
            )
            .await;
        if !r["exceptionDetails"].is_null() {
            panic!("{expression}: {}", r["exceptionDetails"]);
        }
        r["result"]["value"].clone()
    }
}

impl std::fmt::Debug for Page {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Page")
            .field("session", &self.session)
            .field("errors", &self.errors)
            .finish()
    }
}
