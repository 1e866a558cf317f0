//! [`Mesh`]: echo apps, their sidecars and one client sidecar, started from a
//! [`MeshBuilder`] and configured from the typed `sane_xds_proto` structs.
//!
//! Layout: every echo app (one instance of an echo service) gets a server
//! sidecar named like the instance, with one `inbound` listener delivering to
//! the app's three ports. One client sidecar, `client`, has an `outbound`
//! HTTP listener and any outbound TCP listeners asked for, and knows every
//! service and endpoint. Processes start in dependency order (apps, server
//! sidecars, client), because each config needs the ports of the previous.

use super::app::{echo_service, EchoApp, TCP_PORT};
use super::binaries::{bins, Bins};
use super::process::Proc;
use super::sidecar::Sidecar;
use sane_xds_proto::{
    AdminConfig, Bootstrap, Direction, Endpoint, Listener, MeshResources, Node, Protocol,
    WorkloadPort,
};
use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;
use tempfile::TempDir;

/// Name of the client sidecar.
pub const CLIENT: &str = "client";
/// Name of the outbound HTTP listener of the client sidecar.
pub const OUTBOUND: &str = "outbound";
/// Name of the inbound listener of every server sidecar.
pub const INBOUND: &str = "inbound";
/// Every proxy binds here, so ports never collide.
const ANY_PORT: &str = "127.0.0.1:0";

/// A client-config hook: runs on the client sidecar's bootstrap before start.
type ClientHook = Box<dyn FnOnce(&mut Bootstrap) + Send>;

/// Describes a mesh to start.
pub struct MeshBuilder {
    apps: Vec<AppSpec>,
    tcp_listeners: Vec<(String, String)>,
    drain_timeout: Duration,
    client_hook: Option<ClientHook>,
}

#[derive(Clone, Debug)]
struct AppSpec {
    service: String,
    name: String,
    sidecar: bool,
}

/// A running mesh. Dropping it kills every process and removes the configs.
#[derive(Debug)]
pub struct Mesh {
    bins: &'static Bins,
    drain_timeout: Duration,
    apps: Vec<EchoApp>,
    sidecars: Vec<Sidecar>,
    // Last, so processes are killed before their config files go away.
    dir: TempDir,
}

// === impl MeshBuilder ===

impl MeshBuilder {
    /// Adds echo app `name`, an instance of `service`, behind a server
    /// sidecar of the same name.
    pub fn echo(mut self, service: &str, name: &str) -> Self {
        self.apps.push(AppSpec {
            service: service.to_string(),
            name: name.to_string(),
            sidecar: true,
        });
        self
    }

    /// Adds echo app `name` of `service` without a sidecar: the client
    /// sidecar sends to the app's ports directly.
    pub fn echo_without_sidecar(mut self, service: &str, name: &str) -> Self {
        self.apps.push(AppSpec {
            service: service.to_string(),
            name: name.to_string(),
            sidecar: false,
        });
        self
    }

    /// Gives the client sidecar an outbound TCP listener `listener` for
    /// `service`'s TCP port (7000).
    pub fn tcp_listener(mut self, listener: &str, service: &str) -> Self {
        self.tcp_listeners
            .push((listener.to_string(), service.to_string()));
        self
    }

    /// Sets every proxy's `drain_timeout`. Default: 5s, so stopping is quick.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// Edits the client sidecar's config before it starts (add routes,
    /// policies, ...). The result must validate.
    pub fn client_config(mut self, hook: impl FnOnce(&mut Bootstrap) + Send + 'static) -> Self {
        self.client_hook = Some(Box::new(hook));
        self
    }

    /// Builds the binaries (once per process), then starts the apps, their
    /// sidecars and the client sidecar, each waited on until ready.
    pub async fn start(self) -> Mesh {
        let names: Vec<&str> = self.apps.iter().map(|a| a.name.as_str()).collect();
        for (i, name) in names.iter().enumerate() {
            assert!(*name != CLIENT, "{CLIENT:?} is the client sidecar's name");
            assert!(!names[..i].contains(name), "echo app {name:?} added twice");
        }
        let bins = tokio::task::spawn_blocking(bins)
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        let dir = tempfile::Builder::new()
            .prefix("sane-e2e-")
            .tempdir()
            .expect("creating a temp dir for sidecar configs");
        let mut mesh = Mesh {
            bins,
            drain_timeout: self.drain_timeout,
            apps: Vec::new(),
            sidecars: Vec::new(),
            dir,
        };
        for app in &self.apps {
            mesh.start_app(&app.service, &app.name, app.sidecar).await;
        }
        let mut bootstrap = mesh.bootstrap(CLIENT, mesh.client_resources(&self.tcp_listeners));
        if let Some(hook) = self.client_hook {
            hook(&mut bootstrap);
        }
        let client = Sidecar::start(&mesh.bins.proxy, mesh.dir.path(), CLIENT, bootstrap).await;
        mesh.sidecars.push(client);
        mesh
    }
}

impl std::fmt::Debug for MeshBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshBuilder")
            .field("apps", &self.apps)
            .field("tcp_listeners", &self.tcp_listeners)
            .field("drain_timeout", &self.drain_timeout)
            .field("client_hook", &self.client_hook.is_some())
            .finish()
    }
}

// === impl Mesh ===

impl Mesh {
    /// An empty description; add apps with [`MeshBuilder::echo`].
    pub fn builder() -> MeshBuilder {
        MeshBuilder {
            apps: Vec::new(),
            tcp_listeners: Vec::new(),
            drain_timeout: Duration::from_secs(5),
            client_hook: None,
        }
    }

    /// Echo app `name`. Panics if there is none.
    pub fn app(&self, name: &str) -> &EchoApp {
        self.apps
            .iter()
            .find(|a| a.name == name)
            .unwrap_or_else(|| panic!("no echo app {name:?}"))
    }

    /// Every echo app, in start order.
    pub fn apps(&self) -> &[EchoApp] {
        &self.apps
    }

    /// Sidecar `name` (an app's name, or [`CLIENT`]). Panics if there is none.
    pub fn sidecar(&self, name: &str) -> &Sidecar {
        self.sidecars
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no sidecar {name:?}"))
    }

    /// Sidecar `name`, to reload it.
    pub fn sidecar_mut(&mut self, name: &str) -> &mut Sidecar {
        self.sidecars
            .iter_mut()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no sidecar {name:?}"))
    }

    /// Every sidecar, client last.
    pub fn sidecars(&self) -> &[Sidecar] {
        &self.sidecars
    }

    /// The client sidecar.
    pub fn client(&self) -> &Sidecar {
        self.sidecar(CLIENT)
    }

    /// The client sidecar, to reload it.
    pub fn client_mut(&mut self) -> &mut Sidecar {
        self.sidecar_mut(CLIENT)
    }

    /// The endpoint of app `name`: through its sidecar if it has one.
    pub fn endpoint(&self, name: &str) -> Endpoint {
        let proxy_port = self
            .sidecars
            .iter()
            .find(|s| s.name == name)
            .map(|s| s.listener(INBOUND).port());
        self.app(name).endpoint(proxy_port)
    }

    /// Services (one per distinct app service) and endpoints (one per app)
    /// of the whole mesh, the base of a client config.
    pub fn resources(&self) -> MeshResources {
        let mut services = Vec::new();
        for app in &self.apps {
            if !services
                .iter()
                .any(|s: &sane_xds_proto::Service| s.name == app.service)
            {
                services.push(echo_service(&app.service));
            }
        }
        MeshResources {
            services,
            endpoints: self.apps.iter().map(|a| self.endpoint(&a.name)).collect(),
            ..Default::default()
        }
    }

    /// Starts one more app (and its sidecar), e.g. to move traffic to it by
    /// reloading the client. The client's config is left as it is; the
    /// returned endpoint is what to add to it.
    pub async fn add_echo(&mut self, service: &str, name: &str) -> Endpoint {
        assert!(
            name != CLIENT && !self.apps.iter().any(|a| a.name == name),
            "echo app {name:?} exists already"
        );
        self.start_app(service, name, true).await;
        self.endpoint(name)
    }

    /// The directory holding every config file.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Stops everything with SIGTERM, callers before callees (client, then
    /// server sidecars, then apps), waiting up to `deadline` for each. Returns
    /// each process's name and exit status (`None`: it did not exit in time).
    pub async fn shutdown(&self, deadline: Duration) -> Vec<(String, Option<ExitStatus>)> {
        let mut procs: Vec<&Proc> = self.sidecars.iter().rev().map(|s| &s.proc).collect();
        procs.extend(self.apps.iter().map(|a| &a.proc));
        let mut statuses = Vec::new();
        for proc in procs {
            statuses.push((proc.name().to_string(), proc.stop(deadline).await));
        }
        statuses
    }

    async fn start_app(&mut self, service: &str, name: &str, sidecar: bool) {
        let app = EchoApp::start_with(&self.bins.echo, name, service).await;
        if sidecar {
            let listener = Listener {
                name: INBOUND.to_string(),
                direction: Direction::Inbound.into(),
                address: ANY_PORT.to_string(),
                workload_ports: vec![
                    workload_port(app.addrs.http.port(), Protocol::Http),
                    workload_port(app.addrs.grpc.port(), Protocol::Grpc),
                    workload_port(app.addrs.tcp.port(), Protocol::Tcp),
                ],
                ..Default::default()
            };
            let resources = MeshResources {
                listeners: vec![listener],
                ..Default::default()
            };
            let bootstrap = self.bootstrap(name, resources);
            let sidecar = Sidecar::start(&self.bins.proxy, self.dir.path(), name, bootstrap).await;
            // Keep the client last, as `sidecars()` documents.
            let at = self
                .sidecars
                .iter()
                .position(|s| s.name == CLIENT)
                .unwrap_or(self.sidecars.len());
            self.sidecars.insert(at, sidecar);
        }
        self.apps.push(app);
    }

    fn client_resources(&self, tcp_listeners: &[(String, String)]) -> MeshResources {
        let mut resources = self.resources();
        resources.listeners.push(Listener {
            name: OUTBOUND.to_string(),
            direction: Direction::Outbound.into(),
            protocol: Protocol::Http.into(),
            address: ANY_PORT.to_string(),
            ..Default::default()
        });
        for (name, service) in tcp_listeners {
            resources.listeners.push(Listener {
                name: name.clone(),
                direction: Direction::Outbound.into(),
                protocol: Protocol::Tcp.into(),
                address: ANY_PORT.to_string(),
                service: service.clone(),
                service_port: TCP_PORT,
                ..Default::default()
            });
        }
        resources
    }

    fn bootstrap(&self, name: &str, resources: MeshResources) -> Bootstrap {
        Bootstrap {
            node: Node {
                id: name.to_string(),
                namespace: String::new(),
                workload: name.to_string(),
                ..Default::default()
            },
            admin: AdminConfig {
                address: ANY_PORT.to_string(),
            },
            drain_timeout: self.drain_timeout.as_millis() as u64,
            resources,
            ..Default::default()
        }
    }
}

fn workload_port(port: u16, protocol: Protocol) -> WorkloadPort {
    WorkloadPort {
        port: port.into(),
        protocol: protocol.into(),
        ..Default::default()
    }
}
