//! [`Curl`]: the outside client of the gateway tests. curl speaks TLS with
//! SNI, `--resolve` points a host name at a test port, and `-v` shows the
//! certificate the server presented.
//!
//! curl is installed by `scripts/gateway-test-deps.sh` when missing; if it
//! still is, a test skips loudly, or fails under `CI=true`.

use super::binaries::workspace_root;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// A curl that exists on this machine.
#[derive(Debug, Clone, Copy)]
pub struct Curl(());

/// What one curl run returned.
#[derive(Debug, Clone)]
pub struct CurlReply {
    /// HTTP status (0 when no response was received).
    pub status: u16,
    /// HTTP version of the response: `1.1`, `2`.
    pub http_version: String,
    /// Response body.
    pub body: String,
    /// `-v` output: TLS details (`subject:`, `issuer:`, ALPN) and headers.
    pub verbose: String,
    /// curl's exit code (0 on success; 60 for an untrusted certificate).
    pub exit: i32,
}

const STATUS_MARK: &str = "\n__curl_status=";

/// The script that installs curl.
pub fn gateway_deps_script() -> PathBuf {
    workspace_root().join("scripts/gateway-test-deps.sh")
}

fn has_curl() -> bool {
    Command::new("curl")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

// === impl Curl ===

impl Curl {
    /// curl, installed by the project script if missing; `None` (after a
    /// loud `SKIPPED` message) if it cannot be had. Panics under `CI=true`.
    pub fn find_or_skip(test: &str) -> Option<Curl> {
        if has_curl() {
            return Some(Curl(()));
        }
        let script = gateway_deps_script();
        let out = Command::new("bash")
            .arg(&script)
            .stdin(Stdio::null())
            .output();
        if has_curl() {
            return Some(Curl(()));
        }
        let why = match out {
            Ok(o) => format!(
                "curl is missing and {} could not install it: {}{}",
                script.display(),
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => format!("curl is missing and {} did not run: {e}", script.display()),
        };
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{test} must run under CI=true but cannot: {why}");
        }
        let _ = writeln!(
            std::io::stderr(),
            "\n************************************************************\n\
             SKIPPED: {test}: {why}\n(CI=true makes this a failure)\n\
             ************************************************************\n"
        );
        None
    }

    /// A `GET` of `https://<url_host>:<port>/` (SNI and `Host` are
    /// `url_host`), with `url_host` resolved to `addr`; see [`CurlRequest`]
    /// for plain HTTP, the path and more arguments.
    pub fn request(self, url_host: &str, addr: SocketAddr) -> CurlRequest {
        CurlRequest {
            host: url_host.to_string(),
            addr,
            https: true,
            path: "/".into(),
            args: Vec::new(),
        }
    }
}

/// One curl invocation being put together.
#[derive(Debug, Clone)]
pub struct CurlRequest {
    host: String,
    addr: SocketAddr,
    https: bool,
    path: String,
    args: Vec<String>,
}

// === impl CurlRequest ===

impl CurlRequest {
    /// Plain `http://` instead of `https://`.
    pub fn plain(mut self) -> Self {
        self.https = false;
        self
    }

    /// The path (and query) to request.
    pub fn path(mut self, path: &str) -> Self {
        self.path = path.to_string();
        self
    }

    /// Extra curl arguments (`--cacert FILE`, `-k`, `-L`, `-H ...`).
    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }

    /// Trusts only the CA certificates in `pem_file`.
    pub fn ca(self, pem_file: &std::path::Path) -> Self {
        self.arg("--cacert").arg(pem_file.display().to_string())
    }

    /// Runs curl (blocking work off the runtime).
    pub async fn send(self) -> CurlReply {
        let scheme = if self.https { "https" } else { "http" };
        let port = self.addr.port();
        let url = format!("{scheme}://{}:{port}{}", self.host, self.path);
        let resolve = format!("{}:{port}:{}", self.host, self.addr.ip());
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "-v", "--max-time", "10", "--resolve", &resolve])
            .args([
                "-w",
                &format!("{STATUS_MARK}%{{http_code}} %{{http_version}}"),
            ])
            .args(&self.args)
            .arg(&url)
            .stdin(Stdio::null());
        let out = tokio::task::spawn_blocking(move || cmd.output())
            .await
            .expect("curl task")
            .expect("running curl");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, tail) = match stdout.rsplit_once(STATUS_MARK) {
            Some((b, t)) => (b.to_string(), t.trim().to_string()),
            None => (stdout.clone(), String::new()),
        };
        let (status, http_version) = tail.split_once(' ').unwrap_or((tail.as_str(), ""));
        CurlReply {
            status: status.parse().unwrap_or(0),
            http_version: http_version.to_string(),
            body,
            verbose: String::from_utf8_lossy(&out.stderr).into_owned(),
            exit: out.status.code().unwrap_or(-1),
        }
    }
}

// === impl CurlReply ===

impl CurlReply {
    /// The `subject:` of the server certificate, as curl printed it.
    pub fn cert_subject(&self) -> Option<&str> {
        self.verbose
            .lines()
            .find_map(|l| l.trim_start_matches(['*', ' ']).strip_prefix("subject: "))
    }

    /// A response header (the last one of that name), from the `-v` output.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.verbose.lines().rev().find_map(|l| {
            let l = l.strip_prefix("< ")?;
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// The body as JSON.
    pub fn json(&self) -> Result<serde_json::Value, String> {
        serde_json::from_str(&self.body).map_err(|e| format!("{e}: {}", self.body))
    }

    /// A one-line summary for assertion messages.
    pub fn summary(&self) -> String {
        format!(
            "status {} exit {} body {:?} verbose tail {:?}",
            self.status,
            self.exit,
            self.body.chars().take(300).collect::<String>(),
            self.verbose
                .lines()
                .rev()
                .take(12)
                .collect::<Vec<_>>()
                .join(" | ")
        )
    }
}
