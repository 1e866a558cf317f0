//! Running `sane-control-plane` in tests: on port 0, with a known API token,
//! and a helper to issue workload bootstrap tokens for sidecars. Its ports
//! are TLS (the default) unless a test passes `--insecure-plaintext-loopback`;
//! proxies and clients verify it with the root it writes to
//! `<data-dir>/root-cert.pem` ([`ControlPlane::root_cert`]).

use super::binaries::bins_for;
use super::http::{full, request, send};
use super::https::{https_client, HttpsClient};
use super::process::Proc;
use http::Method;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The API token every test control plane is started with.
pub const TEST_API_TOKEN: &str = "e2e-admin-token";

/// A running control plane.
#[derive(Debug)]
pub struct ControlPlane {
    /// The process.
    pub proc: Proc,
    /// xDS (and CA) gRPC address.
    pub xds: SocketAddr,
    /// HTTP API address.
    pub api: SocketAddr,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// A workload token for namespace `default` (service account
    /// `default`), issued at start: what [`super::xds_bootstrap`] proxies
    /// show on their xDS stream.
    pub xds_token: PathBuf,
    /// The mesh root it wrote (`<data-dir>/root-cert.pem`): what proxies'
    /// `root_cert_file` points at.
    pub root_cert: PathBuf,
    /// Whether its ports are TLS (false with `--insecure-plaintext-loopback`).
    pub tls: bool,
}

// === impl ControlPlane ===

impl ControlPlane {
    /// Builds (once) and starts a control plane keeping its state in
    /// `data_dir`, with extra `args`.
    pub async fn start(data_dir: &Path, args: &[&str]) -> ControlPlane {
        Self::start_on(data_dir, "127.0.0.1:0", "127.0.0.1:0", args).await
    }

    /// Like [`ControlPlane::start`], on given addresses (to restart on the
    /// same ports).
    pub async fn start_on(data_dir: &Path, xds: &str, api: &str, args: &[&str]) -> ControlPlane {
        let bin = bins_for(&["sane-control-plane"]).join("sane-control-plane");
        let dir = data_dir.display().to_string();
        let mut all = vec![
            "--xds-addr",
            xds,
            "--api-addr",
            api,
            "--data-dir",
            dir.as_str(),
            "--api-token",
            TEST_API_TOKEN,
        ];
        all.extend_from_slice(args);
        let proc = Proc::spawn("control-plane", &bin, &all, &[]);
        let addrs = proc
            .wait_listening(&["xds", "api"], Duration::from_secs(60))
            .await;
        let mut cp = ControlPlane {
            xds: addrs["xds"],
            api: addrs["api"],
            proc,
            data_dir: data_dir.to_path_buf(),
            xds_token: PathBuf::new(),
            root_cert: data_dir.join("root-cert.pem"),
            tls: !args.contains(&"--insecure-plaintext-loopback"),
        };
        cp.xds_token = cp.issue_token(data_dir, "default", "default").await;
        cp
    }

    /// `https://<xds addr>` (`http://` in plaintext), for a proxy's
    /// `control_plane.address` or `identity.ca_address`.
    pub fn xds_url(&self) -> String {
        format!("{}://{}", self.scheme(), self.xds)
    }

    /// `https://<api addr><path>` (`http://` in plaintext).
    pub fn api_url(&self, path: &str) -> String {
        format!("{}://{}{path}", self.scheme(), self.api)
    }

    /// The root file as a bootstrap's `root_cert_file` (empty in plaintext).
    pub fn root_cert_file(&self) -> String {
        if self.tls {
            self.root_cert.display().to_string()
        } else {
            String::new()
        }
    }

    /// A client of the API trusting the control plane's root (it also
    /// dials `http://` URLs when the control plane is plaintext).
    pub fn api_client(&self) -> ApiHttp {
        if self.tls {
            ApiHttp::Tls(https_client(&self.root_cert))
        } else {
            ApiHttp::Plain(super::http::http1_client())
        }
    }

    fn scheme(&self) -> &'static str {
        if self.tls {
            "https"
        } else {
            "http"
        }
    }

    /// Issues a workload token for `namespace`/`service_account` through the
    /// API and writes it to `dir/<service_account>.token`; returns the path.
    pub async fn issue_token(&self, dir: &Path, namespace: &str, service_account: &str) -> PathBuf {
        let body =
            serde_json::json!({ "namespace": namespace, "service_account": service_account });
        let mut req = request(
            Method::POST,
            &self.api_url("/api/v1/tokens"),
            full(body.to_string()),
        );
        req.headers_mut().insert(
            http::header::AUTHORIZATION,
            format!("Bearer {TEST_API_TOKEN}")
                .parse()
                .expect("valid header"),
        );
        req.headers_mut().insert(
            http::header::CONTENT_TYPE,
            "application/json".parse().expect("valid header"),
        );
        let reply = self
            .api_client()
            .send(req)
            .await
            .unwrap_or_else(|e| panic!("issuing a token: {e}"));
        assert!(
            reply.status.is_success(),
            "issuing a token: {} {}",
            reply.status,
            reply.text()
        );
        let token = reply.json().expect("json")["token"]
            .as_str()
            .expect("token in the reply")
            .to_string();
        let path = dir.join(format!("{namespace}-{service_account}.token"));
        std::fs::write(&path, token).expect("writing the token file");
        path
    }
}

/// An HTTP client for the control plane's API: HTTPS trusting its root, or
/// plain HTTP when it runs with `--insecure-plaintext-loopback`.
#[derive(Clone, Debug)]
pub enum ApiHttp {
    /// `https://`.
    Tls(HttpsClient),
    /// `http://`.
    Plain(super::http::HttpClient),
}

// === impl ApiHttp ===

impl ApiHttp {
    /// Sends `req` and reads the whole response; `Err` only when no
    /// response came back.
    pub async fn send(
        &self,
        req: http::Request<super::http::Body>,
    ) -> Result<super::http::Reply, String> {
        match self {
            ApiHttp::Tls(c) => send(c, req).await,
            ApiHttp::Plain(c) => send(c, req).await,
        }
    }
}
