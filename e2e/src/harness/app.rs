//! [`EchoApp`]: one running `sane-echo` with all three ports.

use super::binaries::echo_bin;
use super::process::Proc;
use sane_xds_proto::{Endpoint, Protocol, Service, ServicePort};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// The HTTP port of every echo service, as clients address it.
pub const HTTP_PORT: u32 = 80;
/// The gRPC port of every echo service.
pub const GRPC_PORT: u32 = 9090;
/// The TCP port of every echo service.
pub const TCP_PORT: u32 = 7000;

/// How long a starting echo app may take to bind.
const START_DEADLINE: Duration = Duration::from_secs(10);

/// The three ports of a running echo app.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EchoAddrs {
    /// HTTP/1.1 + h2c.
    pub http: SocketAddr,
    /// gRPC (h2c).
    pub grpc: SocketAddr,
    /// TCP echo.
    pub tcp: SocketAddr,
}

/// A running echo app.
#[derive(Debug)]
pub struct EchoApp {
    /// Instance name (`--name`), reported in every answer.
    pub name: String,
    /// The service the instance backs.
    pub service: String,
    /// Its ports.
    pub addrs: EchoAddrs,
    /// The process.
    pub proc: Proc,
}

/// The declaration of echo service `name`: ports `http` 80, `grpc` 9090 and
/// `tcp` 7000, in the default namespace.
pub fn echo_service(name: &str) -> Service {
    let port = |name: &str, port: u32, protocol: Protocol| ServicePort {
        name: name.to_string(),
        port,
        protocol: protocol.into(),
        target_port: 0,
    };
    Service {
        name: name.to_string(),
        namespace: String::new(),
        ports: vec![
            port("http", HTTP_PORT, Protocol::Http),
            port("grpc", GRPC_PORT, Protocol::Grpc),
            port("tcp", TCP_PORT, Protocol::Tcp),
        ],
        hosts: Vec::new(),
        addresses: Vec::new(),
        export_to: Vec::new(),
    }
}

// === impl EchoApp ===

impl EchoApp {
    /// Builds `sane-echo` if needed (without the other packages) and starts
    /// instance `name` of service `echo` on three free ports.
    pub async fn start(name: &str) -> EchoApp {
        let bin = tokio::task::spawn_blocking(echo_bin)
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        Self::start_with(&bin, name, "echo").await
    }

    /// Starts instance `name` of `service` from the binary at `bin`.
    pub async fn start_with(bin: &Path, name: &str, service: &str) -> EchoApp {
        let any = "127.0.0.1:0";
        let args = ["--name", name, "--http", any, "--grpc", any, "--tcp", any];
        let proc = Proc::spawn(&format!("sane-echo[{name}]"), bin, args, &[]);
        let ports = proc
            .wait_listening(&["http", "grpc", "tcp"], START_DEADLINE)
            .await;
        EchoApp {
            name: name.to_string(),
            service: service.to_string(),
            addrs: EchoAddrs {
                http: ports["http"],
                grpc: ports["grpc"],
                tcp: ports["tcp"],
            },
            proc,
        }
    }

    /// The endpoint of this instance: reached through its sidecar at
    /// `proxy_port`, or directly when `None`.
    pub fn endpoint(&self, proxy_port: Option<u16>) -> Endpoint {
        let ports = BTreeMap::from([
            ("http".to_string(), u32::from(self.addrs.http.port())),
            ("grpc".to_string(), u32::from(self.addrs.grpc.port())),
            ("tcp".to_string(), u32::from(self.addrs.tcp.port())),
        ]);
        Endpoint {
            service: self.service.clone(),
            address: self.addrs.http.ip().to_string(),
            ports,
            proxy_port: proxy_port.map(u32::from).unwrap_or(0),
            ..Default::default()
        }
    }

    /// Requests the app has served so far (its `/stats`).
    pub async fn requests(&self) -> u64 {
        self.stat("requests").await
    }

    /// Requests dropped while their `x-echo-delay` ran, because the caller
    /// (or a proxy on its behalf) gave up (its `/stats`).
    pub async fn cancelled(&self) -> u64 {
        self.stat("cancelled").await
    }

    /// Counter `name` of the app's `/stats`.
    async fn stat(&self, name: &str) -> u64 {
        let reply = super::http::send(
            &super::http::http1_client(),
            super::http::get(&self.http_url("/stats")),
        )
        .await
        .unwrap_or_else(|e| panic!("{}: /stats: {e}", self.name));
        reply.json().expect("stats json")[name]
            .as_u64()
            .unwrap_or_else(|| panic!("{}: no {name} in /stats", self.name))
    }

    /// `http://<http addr><path>`.
    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addrs.http)
    }
}
