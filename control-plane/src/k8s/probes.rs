//! Rewriting the app's probes so they survive STRICT mTLS.
//!
//! The kubelet probes the pod IP in plaintext. Once `sane-init` redirects
//! inbound traffic to the sidecar, a STRICT inbound listener would refuse
//! those probes and the pod would never become ready. So every network probe
//! (`httpGet`, `tcpSocket`, `grpc`) of an app container is rewritten into an
//! `httpGet` on the sidecar's health port — excluded from redirection — and
//! the proxy runs the original probe against the app over loopback.
//!
//! # Contract with the proxy
//!
//! * The sidecar serves plain HTTP on the health port (default 15020, all
//!   addresses): `GET /healthz/ready` answers like the admin `/ready`.
//! * `GET /app-health/<container>/<probe>` (`<probe>` is `liveness`,
//!   `readiness` or `startup`) runs the original probe recorded under that
//!   path in the environment variable `SANE_APP_PROBES` and answers 200 if it
//!   succeeded, 503 otherwise (with the reason in the body).
//! * `SANE_APP_PROBES` is a JSON object from those paths to Kubernetes
//!   `Probe` objects holding only the action and `timeoutSeconds`:
//!   `{"/app-health/web/readiness": {"httpGet": {"path": "/ready", "port":
//!   8080, "scheme": "HTTP"}, "timeoutSeconds": 1}}`. Ports are always
//!   numbers (named ports are resolved at injection), the target host is the
//!   pod's loopback, `httpGet.scheme` is `HTTP` or `HTTPS` (HTTPS: no
//!   certificate verification, as the kubelet does), `httpHeaders` are sent
//!   as given; `tcpSocket` succeeds when a connection opens; `grpc` runs the
//!   standard gRPC health check for `service` (empty: the server).
//!
//! Periods, thresholds and delays stay on the rewritten probe: the kubelet
//! still decides when to probe and what a failure means. `exec` probes, and
//! `httpGet` probes with an explicit `host` (they do not target the pod), are
//! left alone.

use super::error::InjectError;
use k8s_openapi::api::core::v1::{Container, HTTPGetAction, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;

/// The probes a container may have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeKind {
    /// `livenessProbe`
    Liveness,
    /// `readinessProbe`
    Readiness,
    /// `startupProbe`
    Startup,
}

/// The original probes by rewritten path: the value of `SANE_APP_PROBES`.
pub type AppProbes = BTreeMap<String, Probe>;

// === impl ProbeKind ===

impl ProbeKind {
    /// Every kind.
    pub const ALL: [ProbeKind; 3] = [
        ProbeKind::Liveness,
        ProbeKind::Readiness,
        ProbeKind::Startup,
    ];

    /// The path segment: `liveness`, `readiness`, `startup`.
    pub fn name(self) -> &'static str {
        match self {
            ProbeKind::Liveness => "liveness",
            ProbeKind::Readiness => "readiness",
            ProbeKind::Startup => "startup",
        }
    }

    fn slot(self, c: &mut Container) -> &mut Option<Probe> {
        match self {
            ProbeKind::Liveness => &mut c.liveness_probe,
            ProbeKind::Readiness => &mut c.readiness_probe,
            ProbeKind::Startup => &mut c.startup_probe,
        }
    }
}

/// The path the kubelet probes on the health port instead.
pub fn app_health_path(container: &str, kind: ProbeKind) -> String {
    format!("/app-health/{container}/{}", kind.name())
}

/// Rewrites the network probes of `container` to `httpGet` on
/// `health_port`, adding the originals (ports resolved) to `out`.
/// `reserved` maps sidecar ports to their purpose: a probe aimed at one is
/// refused.
pub fn rewrite(
    container: &mut Container,
    health_port: u16,
    reserved: &[(u16, &'static str)],
    out: &mut AppProbes,
) -> Result<(), InjectError> {
    for kind in ProbeKind::ALL {
        let name = container.name.clone();
        let ports = container.ports.clone().unwrap_or_default();
        let Some(probe) = kind.slot(container).as_mut() else {
            continue;
        };
        let resolve = |port: &IntOrString| -> Result<i32, InjectError> {
            let n = match port {
                IntOrString::Int(n) => *n,
                IntOrString::String(s) => match s.parse::<i32>() {
                    Ok(n) => n,
                    Err(_) => ports
                        .iter()
                        .find(|p| p.name.as_deref() == Some(s.as_str()))
                        .map(|p| p.container_port)
                        .ok_or_else(|| InjectError::UnknownProbePort {
                            container: name.clone(),
                            probe: kind.name(),
                            port: s.clone(),
                        })?,
                },
            };
            if let Some((_, purpose)) = reserved.iter().find(|(p, _)| i32::from(*p) == n) {
                return Err(InjectError::PortConflict {
                    container: name.clone(),
                    port: n,
                    purpose,
                });
            }
            Ok(n)
        };
        let mut original = Probe {
            timeout_seconds: Some(probe.timeout_seconds.unwrap_or(1)),
            ..Probe::default()
        };
        if let Some(http) = &probe.http_get {
            if http.host.as_deref().is_some_and(|h| !h.is_empty()) {
                continue;
            }
            original.http_get = Some(HTTPGetAction {
                port: IntOrString::Int(resolve(&http.port)?),
                path: Some(http.path.clone().unwrap_or_else(|| "/".into())),
                scheme: Some(http.scheme.clone().unwrap_or_else(|| "HTTP".into())),
                http_headers: http.http_headers.clone(),
                host: None,
            });
        } else if let Some(tcp) = &probe.tcp_socket {
            if tcp.host.as_deref().is_some_and(|h| !h.is_empty()) {
                continue;
            }
            let mut tcp = tcp.clone();
            tcp.port = IntOrString::Int(resolve(&tcp.port)?);
            original.tcp_socket = Some(tcp);
        } else if let Some(grpc) = &probe.grpc {
            let port = resolve(&IntOrString::Int(grpc.port))?;
            original.grpc = Some(k8s_openapi::api::core::v1::GRPCAction {
                port,
                service: grpc.service.clone(),
            });
        } else {
            continue; // exec, or no action: nothing crosses the network
        }
        let path = app_health_path(&name, kind);
        probe.http_get = Some(HTTPGetAction {
            path: Some(path.clone()),
            port: IntOrString::Int(i32::from(health_port)),
            scheme: Some("HTTP".into()),
            host: None,
            http_headers: None,
        });
        probe.tcp_socket = None;
        probe.grpc = None;
        out.insert(path, original);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ContainerPort, ExecAction, GRPCAction, TCPSocketAction};

    fn container() -> Container {
        Container {
            name: "web".into(),
            ports: Some(vec![ContainerPort {
                name: Some("http".into()),
                container_port: 8080,
                ..Default::default()
            }]),
            readiness_probe: Some(Probe {
                http_get: Some(HTTPGetAction {
                    path: Some("/ready".into()),
                    port: IntOrString::String("http".into()),
                    ..Default::default()
                }),
                period_seconds: Some(3),
                ..Default::default()
            }),
            liveness_probe: Some(Probe {
                tcp_socket: Some(TCPSocketAction {
                    port: IntOrString::Int(8080),
                    host: None,
                }),
                timeout_seconds: Some(4),
                ..Default::default()
            }),
            startup_probe: Some(Probe {
                grpc: Some(GRPCAction {
                    port: 9090,
                    service: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn network_probes_move_to_the_health_port_and_keep_their_timing() {
        let mut c = container();
        let mut out = AppProbes::new();
        rewrite(&mut c, 15020, &[(15006, "inbound")], &mut out).unwrap();
        let ready = c.readiness_probe.as_ref().unwrap();
        let http = ready.http_get.as_ref().unwrap();
        assert_eq!(http.path.as_deref(), Some("/app-health/web/readiness"));
        assert_eq!(http.port, IntOrString::Int(15020));
        assert_eq!(ready.period_seconds, Some(3));
        let live = c.liveness_probe.as_ref().unwrap();
        assert!(live.tcp_socket.is_none());
        assert_eq!(live.timeout_seconds, Some(4));
        assert!(c.startup_probe.as_ref().unwrap().grpc.is_none());

        let json = serde_json::to_value(&out).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "/app-health/web/liveness": { "tcpSocket": { "port": 8080 }, "timeoutSeconds": 4 },
                "/app-health/web/readiness": {
                    "httpGet": { "path": "/ready", "port": 8080, "scheme": "HTTP" },
                    "timeoutSeconds": 1
                },
                "/app-health/web/startup": { "grpc": { "port": 9090 }, "timeoutSeconds": 1 }
            })
        );
    }

    #[test]
    fn exec_probes_stay_and_bad_ports_are_refused() {
        let mut c = container();
        c.liveness_probe = Some(Probe {
            exec: Some(ExecAction {
                command: Some(vec!["true".into()]),
            }),
            ..Default::default()
        });
        c.readiness_probe = None;
        c.startup_probe = None;
        let before = c.clone();
        let mut out = AppProbes::new();
        rewrite(&mut c, 15020, &[], &mut out).unwrap();
        assert_eq!(c, before);
        assert!(out.is_empty());

        let mut c = container();
        if let Some(h) = c.readiness_probe.as_mut().and_then(|p| p.http_get.as_mut()) {
            h.port = IntOrString::String("metrics".into());
        }
        let err = rewrite(&mut c, 15020, &[], &mut out).unwrap_err();
        assert!(err.to_string().contains("\"metrics\""), "{err}");

        let mut c = container();
        c.startup_probe = Some(Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(15006),
                host: None,
            }),
            ..Default::default()
        });
        let err = rewrite(&mut c, 15020, &[(15006, "inbound")], &mut out).unwrap_err();
        assert!(matches!(err, InjectError::PortConflict { port: 15006, .. }));
    }
}
