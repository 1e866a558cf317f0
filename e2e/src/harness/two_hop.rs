//! [`TwoHop`]: the standard mesh of most proxy tests.
//!
//! ```text
//! test ──> client sidecar ──> server sidecar ──> sane-echo "echo-1"
//!          outbound (http)     inbound             http, grpc, tcp
//!          outbound-tcp (tcp)
//! ```

use super::app::{EchoAddrs, EchoApp};
use super::grpc::EchoClient;
use super::http::{h2c_client_via, http1_client_via, HttpClient};
use super::mesh::{Mesh, MeshBuilder, OUTBOUND};
use super::sidecar::Sidecar;
use std::net::SocketAddr;
use std::path::PathBuf;

/// A running two-hop mesh with its addresses at hand.
#[derive(Debug)]
pub struct TwoHop {
    /// The client sidecar's outbound HTTP listener (send with `Host: echo`).
    pub outbound_http: SocketAddr,
    /// The client sidecar's outbound TCP listener for `echo:7000`.
    pub outbound_tcp: SocketAddr,
    /// The client sidecar's admin server.
    pub client_admin: SocketAddr,
    /// The server sidecar's admin server.
    pub server_admin: SocketAddr,
    /// The echo app's own ports (bypassing the mesh).
    pub echo: EchoAddrs,
    /// The client sidecar's config file.
    pub client_config: PathBuf,
    /// The server sidecar's config file.
    pub server_config: PathBuf,
    /// Everything else: processes, configs, more apps.
    pub mesh: Mesh,
}

// === impl TwoHop ===

impl TwoHop {
    /// The service every request addresses.
    pub const SERVICE: &'static str = "echo";
    /// The echo app's instance name (also its sidecar's name).
    pub const APP: &'static str = "echo-1";
    /// The client sidecar's TCP listener.
    pub const OUTBOUND_TCP: &'static str = "outbound-tcp";
    /// The origin a gRPC client uses.
    pub const GRPC_ORIGIN: &'static str = "http://echo:9090";

    /// Starts the standard two-hop mesh.
    pub async fn start() -> TwoHop {
        Self::start_from(Self::builder()).await
    }

    /// The two-hop layout, to adjust before [`TwoHop::start_from`] (e.g. with
    /// [`MeshBuilder::client_config`]).
    pub fn builder() -> MeshBuilder {
        Mesh::builder()
            .echo(Self::SERVICE, Self::APP)
            .tcp_listener(Self::OUTBOUND_TCP, Self::SERVICE)
    }

    /// Starts a mesh from a builder that has the two-hop layout.
    pub async fn start_from(builder: MeshBuilder) -> TwoHop {
        let mesh = builder.start().await;
        let client = mesh.client();
        let server = mesh.sidecar(Self::APP);
        TwoHop {
            outbound_http: client.listener(OUTBOUND),
            outbound_tcp: client.listener(Self::OUTBOUND_TCP),
            client_admin: client.admin,
            server_admin: server.admin,
            echo: mesh.app(Self::APP).addrs,
            client_config: client.config_path.clone(),
            server_config: server.config_path.clone(),
            mesh,
        }
    }

    /// The client sidecar.
    pub fn client(&self) -> &Sidecar {
        self.mesh.client()
    }

    /// The server sidecar.
    pub fn server(&self) -> &Sidecar {
        self.mesh.sidecar(Self::APP)
    }

    /// The echo app.
    pub fn app(&self) -> &EchoApp {
        self.mesh.app(Self::APP)
    }

    /// An HTTP/1.1 client through the outbound listener; use URIs like
    /// [`TwoHop::url`]`("/")`.
    pub fn http1(&self) -> HttpClient {
        http1_client_via(self.outbound_http)
    }

    /// An h2c client through the outbound listener.
    pub fn h2c(&self) -> HttpClient {
        h2c_client_via(self.outbound_http)
    }

    /// A gRPC client of `echo:9090` through the outbound listener.
    pub fn grpc(&self) -> EchoClient {
        EchoClient::via(self.outbound_http, Self::GRPC_ORIGIN).expect("GRPC_ORIGIN is a valid URI")
    }

    /// `http://echo<path>`: a URI addressing the echo service's HTTP port.
    pub fn url(path: &str) -> String {
        format!("http://{}{path}", Self::SERVICE)
    }
}
