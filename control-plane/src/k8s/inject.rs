//! Sidecar injection: a pure function from a pod (metadata and spec) to the
//! meshed pod, shared by `sanectl inject` and the admission webhook.
//!
//! The layout it produces is described in the [module docs](super). The
//! sidecar's configuration is a `sane_xds_proto::Bootstrap`, rendered here
//! from the pod (namespace, service account, container ports) and the
//! [`InjectConfig`], stored in the pod's `sane.mesh/bootstrap` annotation
//! and mounted into the sidecar through a downward-API volume as
//! `/etc/sane/bootstrap.yaml` — per pod, with no ConfigMap to keep in step
//! and nothing to generate at start-up. The mesh root the sidecar verifies
//! the control plane's TLS certificate with travels the same way
//! (`sane.mesh/root-cert` → `/etc/sane/root-cert.pem`).
//!
//! Injection is idempotent: a pod carrying `sane.mesh/status` (or a
//! `sane-proxy` container) is returned unchanged, and so is a pod annotated
//! `sane.mesh/inject: "false"` or running in the host network (its traffic
//! cannot be redirected). A pod whose containers use the sidecar's ports is
//! refused with a message naming the container and port.

use super::error::InjectError;
use super::probes::{self, AppProbes};
use super::{
    BOOTSTRAP_ANNOTATION, HEALTH_PORT_NAME, INBOUND_PORT_NAME, INIT_NAME, INJECT_ANNOTATION,
    PROBES_ENV, ROOT_CERT_ANNOTATION, SIDECAR_NAME, STATUS_ANNOTATION,
};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, DownwardAPIVolumeFile, DownwardAPIVolumeSource, EnvVar,
    EnvVarSource, HTTPGetAction, ObjectFieldSelector, PodSpec, Probe, ProjectedVolumeSource,
    ResourceRequirements, SecurityContext, ServiceAccountTokenProjection, Volume, VolumeMount,
    VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sane_xds_proto::{
    AdminConfig, Bootstrap, ControlPlane, Direction, HealthConfig, IdentityConfig, Listener,
    MeshResources, Node, Protocol, WorkloadPort,
};
use std::collections::BTreeMap;

/// Directory the bootstrap volume is mounted at in the sidecar.
pub const BOOTSTRAP_DIR: &str = "/etc/sane";
/// File name of the bootstrap inside [`BOOTSTRAP_DIR`].
pub const BOOTSTRAP_FILE: &str = "bootstrap.yaml";
/// File name of the mesh root inside [`BOOTSTRAP_DIR`] (from the pod's
/// `sane.mesh/root-cert` annotation): what the sidecar verifies the control
/// plane with.
pub const ROOT_CERT_FILE: &str = "root-cert.pem";
/// Directory the token volume is mounted at in the sidecar.
pub const TOKEN_DIR: &str = "/var/run/secrets/sane.mesh";
/// File name of the service-account token inside [`TOKEN_DIR`].
pub const TOKEN_FILE: &str = "token";
/// Name of the bootstrap volume.
pub const BOOTSTRAP_VOLUME: &str = "sane-bootstrap";
/// Name of the token volume.
pub const TOKEN_VOLUME: &str = "sane-token";

/// Settings of the injected sidecar.
#[derive(Clone, Debug, PartialEq)]
pub struct InjectConfig {
    /// Image of both injected containers (`sane-proxy` is its entrypoint).
    /// Default: `ghcr.io/sane-mesh/proxy:<version of this control plane>`.
    pub proxy_image: String,
    /// `imagePullPolicy` of the injected containers. Default: none (the
    /// cluster's default).
    pub image_pull_policy: Option<String>,
    /// xDS (and CA) URL of the control plane as sidecars reach it (TLS:
    /// its serving certificate carries this host name, `--tls-san`).
    /// Default: `https://sane-control-plane.sane-system.svc:15010`.
    pub control_plane_address: String,
    /// The mesh root(s), PEM: stored in the pod's `sane.mesh/root-cert`
    /// annotation and mounted as `/etc/sane/root-cert.pem`, the sidecar's
    /// `control_plane.root_cert_file`. The webhook fills it from the CA;
    /// `sanectl inject` from `--root-cert-file`. Default: empty.
    pub root_cert_pem: String,
    /// Trust domain of the mesh. Default: `cluster.local`.
    pub trust_domain: String,
    /// Audience of the projected service-account token. Default: `sane-mesh`.
    pub token_audience: String,
    /// Lifetime of that token (the kubelet refreshes it at 80%).
    /// Default: 3600 s.
    pub token_expiration_seconds: i64,
    /// UID (and GID) the sidecar runs as; `sane-init` exempts its traffic
    /// from redirection. Default: 1337.
    pub proxy_uid: i64,
    /// The sidecar's ports.
    pub ports: ProxyPorts,
    /// CPU request of the sidecar. Default: `50m`.
    pub cpu_request: String,
    /// Memory request of the sidecar. Default: `64Mi`.
    pub memory_request: String,
    /// Memory limit of the sidecar. Default: `256Mi`.
    pub memory_limit: String,
}

/// The sidecar's ports. App containers may not use them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxyPorts {
    /// Admin server on loopback. Default: 15000.
    pub admin: u16,
    /// Outbound listener the app's traffic is redirected to. Default: 15001.
    pub outbound: u16,
    /// Inbound listener peers (and redirected inbound traffic) reach.
    /// Default: 15006.
    pub inbound: u16,
    /// Health and app-probe port, not redirected. Default: 15020.
    pub health: u16,
}

/// What the pod template alone does not say about the pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodContext {
    /// The pod's namespace.
    pub namespace: String,
    /// The instance part of the proxy's `node.id`: the pod name when known.
    /// The node id is `<service account>.<namespace>~<this>`, which the
    /// xDS server requires of the pod's service-account token.
    pub node_id: String,
    /// The workload (for metrics and status): app label or owner name.
    pub workload: String,
}

/// The result of [`Injector::inject`].
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// The pod was meshed.
    Injected(Box<Injected>),
    /// The pod is returned as it was.
    Skipped(SkipReason),
}

/// A meshed pod, and where its additions are (for a minimal JSON patch).
#[derive(Clone, Debug, PartialEq)]
pub struct Injected {
    /// The new metadata (annotations added).
    pub metadata: ObjectMeta,
    /// The new spec.
    pub spec: PodSpec,
    /// How many init containers were put in front of the pod's own.
    pub added_init_containers: usize,
    /// How many volumes were appended.
    pub added_volumes: usize,
}

/// Why a pod was left alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// `sane.mesh/inject: "false"`.
    OptedOut,
    /// It already has the sidecar.
    AlreadyInjected,
    /// `hostNetwork: true`: its traffic cannot be redirected.
    HostNetwork,
}

/// Injects pods with one [`InjectConfig`].
#[derive(Clone, Debug)]
pub struct Injector {
    config: InjectConfig,
}

// === impl InjectConfig ===

impl Default for InjectConfig {
    fn default() -> Self {
        InjectConfig {
            proxy_image: format!("ghcr.io/sane-mesh/proxy:{}", env!("CARGO_PKG_VERSION")),
            image_pull_policy: None,
            control_plane_address: "https://sane-control-plane.sane-system.svc:15010".into(),
            root_cert_pem: String::new(),
            trust_domain: "cluster.local".into(),
            token_audience: super::DEFAULT_TOKEN_AUDIENCE.into(),
            token_expiration_seconds: 3600,
            proxy_uid: 1337,
            ports: ProxyPorts::default(),
            cpu_request: "50m".into(),
            memory_request: "64Mi".into(),
            memory_limit: "256Mi".into(),
        }
    }
}

// === impl ProxyPorts ===

impl Default for ProxyPorts {
    fn default() -> Self {
        ProxyPorts {
            admin: 15000,
            outbound: 15001,
            inbound: 15006,
            health: 15020,
        }
    }
}

impl ProxyPorts {
    /// Every port with what it is for.
    pub fn reserved(&self) -> [(u16, &'static str); 4] {
        [
            (self.admin, "admin server"),
            (self.outbound, "outbound listener"),
            (self.inbound, "inbound listener"),
            (self.health, "health and app probes"),
        ]
    }
}

// === impl Injector ===

impl Injector {
    /// An injector producing sidecars as `config` says.
    pub fn new(config: InjectConfig) -> Injector {
        Injector { config }
    }

    /// The settings.
    pub fn config(&self) -> &InjectConfig {
        &self.config
    }

    /// Meshes one pod (or pod template), or says why not.
    pub fn inject(
        &self,
        metadata: &ObjectMeta,
        spec: &PodSpec,
        ctx: &PodContext,
    ) -> Result<Decision, InjectError> {
        let annotations = metadata.annotations.clone().unwrap_or_default();
        if annotations
            .get(INJECT_ANNOTATION)
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("false"))
        {
            return Ok(Decision::Skipped(SkipReason::OptedOut));
        }
        let all_containers = || {
            spec.init_containers
                .iter()
                .flatten()
                .chain(spec.containers.iter())
        };
        if annotations.contains_key(STATUS_ANNOTATION)
            || all_containers().any(|c| c.name == SIDECAR_NAME)
        {
            return Ok(Decision::Skipped(SkipReason::AlreadyInjected));
        }
        if spec.host_network == Some(true) {
            return Ok(Decision::Skipped(SkipReason::HostNetwork));
        }
        let reserved = self.config.ports.reserved();
        for c in all_containers() {
            if c.name == INIT_NAME {
                return Err(InjectError::NameConflict {
                    what: "container",
                    name: c.name.clone(),
                });
            }
            for p in c.ports.iter().flatten() {
                if let Some((_, purpose)) = reserved
                    .iter()
                    .find(|(r, _)| i32::from(*r) == p.container_port)
                {
                    return Err(InjectError::PortConflict {
                        container: c.name.clone(),
                        port: p.container_port,
                        purpose,
                    });
                }
            }
        }
        for v in spec.volumes.iter().flatten() {
            if v.name == BOOTSTRAP_VOLUME || v.name == TOKEN_VOLUME {
                return Err(InjectError::NameConflict {
                    what: "volume",
                    name: v.name.clone(),
                });
            }
        }

        let mut spec = spec.clone();
        let mut app_probes = AppProbes::new();
        for c in spec.containers.iter_mut() {
            probes::rewrite(c, self.config.ports.health, &reserved, &mut app_probes)?;
        }
        // The app's own native sidecars have probes too; plain init
        // containers cannot.
        for c in spec.init_containers.iter_mut().flatten() {
            if c.restart_policy.as_deref() == Some("Always") {
                probes::rewrite(c, self.config.ports.health, &reserved, &mut app_probes)?;
            }
        }

        let mut bootstrap = self.bootstrap(&spec, ctx);
        // The pod's labels: its Istio metric labels, and what a workload-level
        // PeerAuthentication's selector matches (the inbound listener keeps
        // `tls_mode: default`, so the delivered PeerAuthentications govern it).
        bootstrap.node.labels = metadata.labels.clone().unwrap_or_default();
        let bootstrap_yaml =
            serde_yaml::to_string(&bootstrap).map_err(|e| InjectError::Bootstrap(e.to_string()))?;
        let mut metadata = metadata.clone();
        let annotations = metadata.annotations.get_or_insert_with(BTreeMap::new);
        annotations.insert(BOOTSTRAP_ANNOTATION.into(), bootstrap_yaml);
        annotations.insert(
            ROOT_CERT_ANNOTATION.into(),
            self.config.root_cert_pem.clone(),
        );
        annotations.insert(STATUS_ANNOTATION.into(), self.status());

        let added = [self.init_container(), self.sidecar(&app_probes)?];
        let init = spec.init_containers.get_or_insert_with(Vec::new);
        init.splice(0..0, added.iter().cloned());
        let volumes = self.volumes();
        spec.volumes
            .get_or_insert_with(Vec::new)
            .extend(volumes.iter().cloned());
        Ok(Decision::Injected(Box::new(Injected {
            metadata,
            spec,
            added_init_containers: added.len(),
            added_volumes: volumes.len(),
        })))
    }

    /// The sidecar's configuration for a pod: its identity, the control
    /// plane, and its two transparent listeners (what `sane-init`
    /// redirects; inbound serving the app's ports).
    pub fn bootstrap(&self, spec: &PodSpec, ctx: &PodContext) -> Bootstrap {
        let ports = self.config.ports;
        let token_file = format!("{TOKEN_DIR}/{TOKEN_FILE}");
        let mut workload_ports: Vec<WorkloadPort> = Vec::new();
        let app = spec.containers.iter().chain(
            spec.init_containers
                .iter()
                .flatten()
                .filter(|c| c.restart_policy.as_deref() == Some("Always")),
        );
        for p in app.flat_map(|c| c.ports.iter().flatten()) {
            let tcp = p.protocol.as_deref().unwrap_or("TCP") == "TCP";
            let port = p.container_port as u32;
            if tcp && !workload_ports.iter().any(|w| w.port == port) {
                workload_ports.push(WorkloadPort {
                    port,
                    protocol: super::port_protocol(p.name.as_deref(), None) as i32,
                    ..Default::default()
                });
            }
        }
        let service_account = spec
            .service_account_name
            .clone()
            .or_else(|| spec.service_account.clone())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".into());
        Bootstrap {
            node: Node {
                id: format!("{service_account}.{}~{}", ctx.namespace, ctx.node_id),
                namespace: ctx.namespace.clone(),
                workload: ctx.workload.clone(),
                ..Default::default()
            },
            admin: AdminConfig {
                address: format!("127.0.0.1:{}", ports.admin),
            },
            resources: MeshResources {
                listeners: vec![
                    Listener {
                        name: "outbound".into(),
                        direction: Direction::Outbound as i32,
                        protocol: Protocol::Http as i32,
                        address: format!("127.0.0.1:{}", ports.outbound),
                        // `sane-init` redirects the app's connections here.
                        transparent: true,
                        ..Default::default()
                    },
                    Listener {
                        name: "inbound".into(),
                        direction: Direction::Inbound as i32,
                        address: format!("0.0.0.0:{}", ports.inbound),
                        workload_ports,
                        transparent: true,
                        ..Default::default()
                    },
                ],
                ..Default::default()
            },
            control_plane: Some(ControlPlane {
                address: self.config.control_plane_address.clone(),
                token_file: token_file.clone(),
                services: Vec::new(),
                root_cert_file: format!("{BOOTSTRAP_DIR}/{ROOT_CERT_FILE}"),
            }),
            identity: Some(IdentityConfig {
                trust_domain: self.config.trust_domain.clone(),
                service_account,
                ca_address: String::new(),
                token_file,
                ttl: 0,
                federated_trust_domains: Vec::new(),
                // The control plane's.
                root_cert_file: String::new(),
            }),
            // The kubelet probes the pod IP: all addresses. The app's
            // probes come from `SANE_APP_PROBES` at start.
            health: Some(HealthConfig {
                address: format!("0.0.0.0:{}", ports.health),
                app_probes: BTreeMap::new(),
            }),
            ..Default::default()
        }
    }

    fn status(&self) -> String {
        serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "image": self.config.proxy_image,
            "initContainers": [INIT_NAME, SIDECAR_NAME],
            "volumes": [BOOTSTRAP_VOLUME, TOKEN_VOLUME],
        })
        .to_string()
    }

    /// `sane-init`: installs the redirection rules (`sane-proxy iptables
    /// install`), then exits. The health port stays reachable by the kubelet.
    fn init_container(&self) -> Container {
        let p = self.config.ports;
        let uid = self.config.proxy_uid.to_string();
        Container {
            name: INIT_NAME.into(),
            image: Some(self.config.proxy_image.clone()),
            image_pull_policy: self.config.image_pull_policy.clone(),
            args: Some(vec![
                "iptables".into(),
                "install".into(),
                "--proxy-uid".into(),
                uid,
                "--inbound-port".into(),
                p.inbound.to_string(),
                "--outbound-port".into(),
                p.outbound.to_string(),
                "--exclude-inbound-ports".into(),
                p.health.to_string(),
            ]),
            security_context: Some(SecurityContext {
                run_as_user: Some(0),
                run_as_group: Some(0),
                run_as_non_root: Some(false),
                allow_privilege_escalation: Some(false),
                privileged: Some(false),
                read_only_root_filesystem: Some(true),
                capabilities: Some(Capabilities {
                    add: Some(vec!["NET_ADMIN".into(), "NET_RAW".into()]),
                    drop: Some(vec!["ALL".into()]),
                }),
                ..Default::default()
            }),
            resources: Some(self.resources()),
            ..Default::default()
        }
    }

    /// `sane-proxy` as a native sidecar.
    fn sidecar(&self, app_probes: &AppProbes) -> Result<Container, InjectError> {
        let p = self.config.ports;
        let field = |path: &str| EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                api_version: None,
            }),
            ..Default::default()
        };
        let mut env = vec![
            EnvVar {
                name: "SANE_POD_NAME".into(),
                value_from: Some(field("metadata.name")),
                value: None,
            },
            EnvVar {
                name: "SANE_POD_IP".into(),
                value_from: Some(field("status.podIP")),
                value: None,
            },
        ];
        if !app_probes.is_empty() {
            let json = serde_json::to_string(app_probes)
                .map_err(|e| InjectError::Bootstrap(e.to_string()))?;
            env.push(EnvVar {
                name: PROBES_ENV.into(),
                value: Some(json),
                value_from: None,
            });
        }
        let ready = |period: i32, failures: i32| Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/healthz/ready".into()),
                port: IntOrString::Int(i32::from(p.health)),
                scheme: Some("HTTP".into()),
                ..Default::default()
            }),
            period_seconds: Some(period),
            failure_threshold: Some(failures),
            timeout_seconds: Some(1),
            ..Default::default()
        };
        let uid = self.config.proxy_uid;
        Ok(Container {
            name: SIDECAR_NAME.into(),
            image: Some(self.config.proxy_image.clone()),
            image_pull_policy: self.config.image_pull_policy.clone(),
            restart_policy: Some("Always".into()),
            args: Some(vec![
                "--config".into(),
                format!("{BOOTSTRAP_DIR}/{BOOTSTRAP_FILE}"),
                "--log-format".into(),
                "json".into(),
            ]),
            env: Some(env),
            ports: Some(vec![
                ContainerPort {
                    name: Some(INBOUND_PORT_NAME.into()),
                    container_port: i32::from(p.inbound),
                    protocol: Some("TCP".into()),
                    ..Default::default()
                },
                ContainerPort {
                    name: Some(HEALTH_PORT_NAME.into()),
                    container_port: i32::from(p.health),
                    protocol: Some("TCP".into()),
                    ..Default::default()
                },
            ]),
            // The app starts only once the proxy is ready (up to 2 min).
            startup_probe: Some(ready(1, 120)),
            readiness_probe: Some(ready(5, 3)),
            security_context: Some(SecurityContext {
                run_as_user: Some(uid),
                run_as_group: Some(uid),
                run_as_non_root: Some(true),
                allow_privilege_escalation: Some(false),
                privileged: Some(false),
                read_only_root_filesystem: Some(true),
                capabilities: Some(Capabilities {
                    drop: Some(vec!["ALL".into()]),
                    add: None,
                }),
                ..Default::default()
            }),
            resources: Some(self.resources()),
            volume_mounts: Some(vec![
                VolumeMount {
                    name: BOOTSTRAP_VOLUME.into(),
                    mount_path: BOOTSTRAP_DIR.into(),
                    read_only: Some(true),
                    ..Default::default()
                },
                VolumeMount {
                    name: TOKEN_VOLUME.into(),
                    mount_path: TOKEN_DIR.into(),
                    read_only: Some(true),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        })
    }

    fn resources(&self) -> ResourceRequirements {
        let q = |s: &str| Quantity(s.to_string());
        ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_string(), q(&self.config.cpu_request)),
                ("memory".to_string(), q(&self.config.memory_request)),
            ])),
            limits: Some(BTreeMap::from([(
                "memory".to_string(),
                q(&self.config.memory_limit),
            )])),
            ..Default::default()
        }
    }

    fn volumes(&self) -> [Volume; 2] {
        [
            Volume {
                name: BOOTSTRAP_VOLUME.into(),
                downward_api: Some(DownwardAPIVolumeSource {
                    items: Some(vec![
                        DownwardAPIVolumeFile {
                            path: BOOTSTRAP_FILE.into(),
                            field_ref: Some(ObjectFieldSelector {
                                field_path: format!(
                                    "metadata.annotations['{BOOTSTRAP_ANNOTATION}']"
                                ),
                                api_version: None,
                            }),
                            ..Default::default()
                        },
                        DownwardAPIVolumeFile {
                            path: ROOT_CERT_FILE.into(),
                            field_ref: Some(ObjectFieldSelector {
                                field_path: format!(
                                    "metadata.annotations['{ROOT_CERT_ANNOTATION}']"
                                ),
                                api_version: None,
                            }),
                            ..Default::default()
                        },
                    ]),
                    ..Default::default()
                }),
                ..Default::default()
            },
            Volume {
                name: TOKEN_VOLUME.into(),
                projected: Some(ProjectedVolumeSource {
                    sources: Some(vec![VolumeProjection {
                        service_account_token: Some(ServiceAccountTokenProjection {
                            audience: Some(self.config.token_audience.clone()),
                            expiration_seconds: Some(self.config.token_expiration_seconds),
                            path: TOKEN_FILE.into(),
                        }),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ]
    }
}

/// The workload a pod belongs to, for `node.workload`: its
/// `app.kubernetes.io/name` or `app` label, else its controller's name, else
/// `fallback`.
pub fn workload_name(metadata: &ObjectMeta, fallback: &str) -> String {
    let labels = metadata.labels.as_ref();
    labels
        .and_then(|l| l.get("app.kubernetes.io/name").or_else(|| l.get("app")))
        .cloned()
        .or_else(|| {
            metadata
                .owner_references
                .iter()
                .flatten()
                .find(|o| o.controller == Some(true))
                .map(|o| o.name.clone())
        })
        .unwrap_or_else(|| fallback.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod_spec() -> PodSpec {
        PodSpec {
            containers: vec![Container {
                name: "web".into(),
                image: Some("nginx".into()),
                ports: Some(vec![
                    ContainerPort {
                        name: Some("http".into()),
                        container_port: 8080,
                        ..Default::default()
                    },
                    ContainerPort {
                        name: Some("grpc".into()),
                        container_port: 9090,
                        ..Default::default()
                    },
                ]),
                ..Default::default()
            }],
            service_account_name: Some("web".into()),
            ..Default::default()
        }
    }

    fn ctx() -> PodContext {
        PodContext {
            namespace: "shop".into(),
            node_id: "web-0".into(),
            workload: "web".into(),
        }
    }

    #[test]
    fn bootstrap_is_a_valid_sidecar_config_for_the_pod() {
        let injector = Injector::new(InjectConfig::default());
        let b = injector.bootstrap(&pod_spec(), &ctx());
        b.validate().unwrap();
        assert_eq!(b.identity.as_ref().unwrap().service_account, "web");
        let inbound = &b.resources.listeners[1];
        assert_eq!(inbound.workload_ports.len(), 2);
        assert_eq!(inbound.workload_ports[1].protocol, Protocol::Grpc as i32);
        assert_eq!(b.node.namespace, "shop");
        assert_eq!(b.node.id, "web.shop~web-0");
        // The kubelet's probes reach the health port on the pod IP.
        assert_eq!(b.health.unwrap().address, "0.0.0.0:15020");
    }

    #[test]
    fn an_injected_sidecar_leaves_its_mtls_mode_to_peer_authentications() {
        let injector = Injector::new(InjectConfig::default());
        let meta = ObjectMeta {
            labels: Some(BTreeMap::from([("app".into(), "web".into())])),
            ..Default::default()
        };
        let Decision::Injected(i) = injector.inject(&meta, &pod_spec(), &ctx()).unwrap() else {
            panic!("not injected");
        };
        let yaml = &i.metadata.annotations.as_ref().unwrap()[BOOTSTRAP_ANNOTATION];
        let b: Bootstrap = serde_yaml::from_str(yaml).unwrap();
        // The selector of a workload-level PeerAuthentication matches these.
        assert_eq!(b.node.labels, meta.labels.clone().unwrap());
        let inbound = &b.resources.listeners[1];
        assert_eq!(inbound.tls_mode(), sane_xds_proto::TlsMode::Default);
        assert!(inbound
            .workload_ports
            .iter()
            .all(|w| w.tls_mode() == sane_xds_proto::TlsMode::Default));
    }

    #[test]
    fn reserved_ports_and_names_are_refused() {
        let injector = Injector::new(InjectConfig::default());
        let mut spec = pod_spec();
        spec.containers[0].ports.as_mut().unwrap()[0].container_port = 15001;
        let err = injector
            .inject(&ObjectMeta::default(), &spec, &ctx())
            .unwrap_err();
        assert_eq!(
            err,
            InjectError::PortConflict {
                container: "web".into(),
                port: 15001,
                purpose: "outbound listener"
            }
        );
        let mut spec = pod_spec();
        spec.volumes = Some(vec![Volume {
            name: TOKEN_VOLUME.into(),
            ..Default::default()
        }]);
        let err = injector
            .inject(&ObjectMeta::default(), &spec, &ctx())
            .unwrap_err();
        assert!(matches!(
            err,
            InjectError::NameConflict { what: "volume", .. }
        ));
    }

    #[test]
    fn host_network_pods_are_skipped() {
        let injector = Injector::new(InjectConfig::default());
        let mut spec = pod_spec();
        spec.host_network = Some(true);
        let d = injector
            .inject(&ObjectMeta::default(), &spec, &ctx())
            .unwrap();
        assert_eq!(d, Decision::Skipped(SkipReason::HostNetwork));
    }

    #[test]
    fn workload_name_prefers_labels_then_the_controller() {
        let mut meta = ObjectMeta {
            owner_references: Some(vec![
                k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                    name: "web-7d9f8".into(),
                    controller: Some(true),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        };
        assert_eq!(workload_name(&meta, "x"), "web-7d9f8");
        meta.labels = Some(BTreeMap::from([("app".into(), "web".into())]));
        assert_eq!(workload_name(&meta, "x"), "web");
        assert_eq!(workload_name(&ObjectMeta::default(), "x"), "x");
    }
}
