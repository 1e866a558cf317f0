//! Talking to a running control plane the way people and scripts do: its
//! HTTP API ([`ApiClient`]) and its CLI run as a real process ([`Sanectl`]);
//! and the bootstrap of a proxy it feeds ([`xds_bootstrap`]).
//!
//! Both return what the server said whatever the status, so tests can assert
//! on rejections as easily as on successes.

use super::binaries::bins_for;
use super::control_plane::{ApiHttp, ControlPlane, TEST_API_TOKEN};
use super::eventually::{eventually, within};
use super::http::{full, request, Reply};
use http::{header, Method};
use sane_xds_proto::{AdminConfig, Bootstrap, Listener, MeshResources, Node};
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// How long one `sanectl` run may take (its own `--wait-sync` included).
const CLI_DEADLINE: Duration = Duration::from_secs(60);

/// A client of one control plane's HTTP API.
#[derive(Clone, Debug)]
pub struct ApiClient {
    base: String,
    http: ApiHttp,
}

/// The `sanectl` binary, pointed at one control plane with the test token.
#[derive(Clone, Debug)]
pub struct Sanectl {
    bin: PathBuf,
    server: String,
    ca_file: PathBuf,
}

/// What one `sanectl` run did.
#[derive(Debug)]
pub struct CliRun {
    /// The command line, for messages.
    pub command: String,
    /// How it exited.
    pub status: ExitStatus,
    /// Everything it printed on stdout.
    pub stdout: String,
    /// Everything it printed on stderr.
    pub stderr: String,
}

/// The row of proxy `id` in a `GET /api/v1/proxies` answer: the row whose
/// node id is `id`, [`xds_node_id`]`(id)` (an [`xds_bootstrap`] proxy named
/// `id`), or an instance `id` of any workload.
pub fn proxy_row<'a>(status: &'a serde_json::Value, id: &str) -> Option<&'a serde_json::Value> {
    let node = xds_node_id(id);
    status["proxies"].as_array()?.iter().find(|p| {
        let n = p["node"].as_str().unwrap_or_default();
        // The full id, the harness's id for `name`, or any workload's
        // instance `name` (`<sa>.<ns>~name`).
        n == id || n == node || n.rsplit_once('~').is_some_and(|(_, i)| i == id)
    })
}

/// The node id of the [`xds_bootstrap`] proxy named `name`: an instance of
/// the workload of the control plane's `default` token (service account
/// `default` in namespace `default`), as the control plane requires
/// (`<service_account>.<namespace>~<instance>`).
pub fn xds_node_id(name: &str) -> String {
    format!("default.default~{name}")
}

/// A bootstrap for proxy `name` that takes everything but `listeners` from
/// `cp` over xDS: admin on port 0, node id [`xds_node_id`]`(name)`,
/// workload `name`, namespace `default`, with the control plane's `default`
/// workload token.
pub fn xds_bootstrap(cp: &ControlPlane, name: &str, listeners: Vec<Listener>) -> Bootstrap {
    Bootstrap {
        node: Node {
            id: xds_node_id(name),
            workload: name.into(),
            ..Default::default()
        },
        admin: AdminConfig {
            address: "127.0.0.1:0".into(),
        },
        drain_timeout: 1_000,
        resources: MeshResources {
            listeners,
            ..Default::default()
        },
        control_plane: Some(sane_xds_proto::ControlPlane {
            address: cp.xds_url(),
            token_file: cp.xds_token.display().to_string(),
            root_cert_file: cp.root_cert_file(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

// === impl ApiClient ===

impl ApiClient {
    /// A client of `cp`'s API.
    pub fn new(cp: &ControlPlane) -> ApiClient {
        ApiClient {
            base: cp.api_url(""),
            http: cp.api_client(),
        }
    }

    /// Sends `method path` with `body` (as JSON) and `token` (as a bearer
    /// token, if any). `Err` only when no response came back.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: impl Into<bytes::Bytes>,
        token: Option<&str>,
    ) -> Result<Reply, String> {
        let mut req = request(method, &format!("{}{path}", self.base), full(body));
        let headers = req.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
        if let Some(t) = token {
            let value = format!("Bearer {t}").parse().expect("a valid header value");
            headers.insert(header::AUTHORIZATION, value);
        }
        self.http.send(req).await
    }

    /// `GET path`, expecting 200 and JSON.
    pub async fn get(&self, path: &str) -> Result<serde_json::Value, String> {
        let reply = self.send(Method::GET, path, "", None).await?;
        if reply.status != http::StatusCode::OK {
            return Err(format!("GET {path}: {} {}", reply.status, reply.text()));
        }
        reply.json()
    }

    /// `PUT path` with `body` and the admin token; panics unless the write
    /// succeeds. Returns the reply (`{kind, key, outcome, revision}`).
    pub async fn put(&self, path: &str, body: &serde_json::Value) -> serde_json::Value {
        let reply = self
            .send(Method::PUT, path, body.to_string(), Some(TEST_API_TOKEN))
            .await
            .unwrap_or_else(|e| panic!("PUT {path}: {e}"));
        assert!(
            reply.status.is_success(),
            "PUT {path}: {} {}",
            reply.status,
            reply.text()
        );
        reply.json().expect("a JSON reply")
    }

    /// `POST path` with an empty body and the admin token.
    pub async fn post(&self, path: &str) -> Result<Reply, String> {
        self.send(Method::POST, path, "", Some(TEST_API_TOKEN))
            .await
    }

    /// The proxy status table (`GET /api/v1/proxies`).
    pub async fn proxies(&self) -> Result<serde_json::Value, String> {
        self.get("/api/v1/proxies").await
    }

    /// The status row of proxy `id`; an error until the table lists it.
    pub async fn proxy(&self, id: &str) -> Result<serde_json::Value, String> {
        let status = self.proxies().await?;
        proxy_row(&status, id)
            .cloned()
            .ok_or_else(|| format!("{id} is not in /api/v1/proxies: {status}"))
    }

    /// Waits until every proxy in `ids` is connected and in sync, and the
    /// table says all connected proxies are. Panics at the deadline.
    pub async fn wait_in_sync(&self, deadline: Duration, ids: &[&str]) {
        eventually(deadline, || async {
            let status = self.proxies().await?;
            for id in ids {
                let r = proxy_row(&status, id).ok_or_else(|| format!("{id} is not listed"))?;
                if r["connected"] != true || r["in_sync"] != true {
                    return Err(format!("{id} is not connected and in sync: {r}"));
                }
            }
            match status["all_in_sync"].as_bool() {
                Some(true) => Ok(()),
                _ => Err(format!("all_in_sync is not true: {status}")),
            }
        })
        .await
    }
}

// === impl Sanectl ===

impl Sanectl {
    /// `sanectl` (built with the control plane) for `cp`, authenticated
    /// with [`TEST_API_TOKEN`].
    pub fn new(cp: &ControlPlane) -> Sanectl {
        Sanectl {
            bin: bins_for(&["sane-control-plane"]).join("sanectl"),
            server: cp.api_url(""),
            ca_file: cp.root_cert.clone(),
        }
    }

    /// Runs `sanectl --server <cp> --ca-file <its root> ARGS` to completion. The token goes in
    /// the environment, as an operator would pass it. Panics if the process
    /// cannot start or runs past a generous deadline.
    pub async fn run(&self, args: &[&str]) -> CliRun {
        let command = format!("sanectl {}", args.join(" "));
        let output = within(
            CLI_DEADLINE,
            tokio::process::Command::new(&self.bin)
                .arg("--server")
                .arg(&self.server)
                .arg("--ca-file")
                .arg(&self.ca_file)
                .args(args)
                .env("SANE_API_TOKEN", TEST_API_TOKEN)
                .env_remove("SANE_API_TOKEN_FILE")
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .unwrap_or_else(|e| panic!("running {command}: {e}"));
        CliRun {
            command,
            status: output.status,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Runs `sanectl ARGS` and panics, with its output, unless it exits 0.
    pub async fn ok(&self, args: &[&str]) -> CliRun {
        let run = self.run(args).await;
        assert!(run.status.success(), "{run}");
        run
    }
}

// === impl CliRun ===

impl CliRun {
    /// The exit code (`None` if killed by a signal).
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

impl std::fmt::Display for CliRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` exited with {}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.command, self.status, self.stdout, self.stderr
        )
    }
}
