//! The health port: what the kubelet probes in an injected pod.
//!
//! Under STRICT mTLS the kubelet's plaintext probes cannot reach the app, so
//! the injector rewrites each app probe into an `httpGet` on the sidecar's
//! health port and records the original in [`AppProbe`]s (the environment
//! variable `SANE_APP_PROBES`, a JSON object from path to probe). The proxy
//! runs the original probe against the app over loopback. The JSON shape is
//! the Kubernetes `Probe` object restricted to its action and
//! `timeoutSeconds`, so the control plane can write it from `k8s-openapi`
//! types and the proxy can read it without them.

use crate::validate::{Errors, FieldPath, MAX_TOKEN_BYTES, MAX_VALUE_BYTES};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// Prefix of every app-probe path: `/app-health/<container>/<probe>`.
pub const APP_HEALTH_PREFIX: &str = "/app-health/";

/// The health server: plain HTTP, reachable by the kubelet (so usually on
/// all addresses), serving only `GET /healthz/ready` and the app probes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConfig {
    /// Address to bind, e.g. `0.0.0.0:15020`. Required.
    pub address: String,
    /// The app's original probes by rewritten path
    /// (`/app-health/<container>/<liveness|readiness|startup>`). Default:
    /// none; `sane-proxy` also reads them from `SANE_APP_PROBES`.
    pub app_probes: BTreeMap<String, AppProbe>,
}

/// One original app probe: exactly one action, and a timeout.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct AppProbe {
    /// An HTTP GET against the app. Default: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_get: Option<HttpGetProbe>,
    /// A TCP connect to the app. Default: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_socket: Option<TcpSocketProbe>,
    /// A standard gRPC health check (`grpc.health.v1.Health/Check`).
    /// Default: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcProbe>,
    /// Seconds the probe may take. Default: 0, meaning 1 (as Kubernetes).
    pub timeout_seconds: u32,
}

/// `httpGet`: succeeds on a status from 200 to 399.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpGetProbe {
    /// Request path. Default: `/`.
    pub path: String,
    /// The app's port on loopback. Required.
    pub port: u32,
    /// `HTTP` or `HTTPS` (the certificate is not verified, as the kubelet
    /// does). Default: `HTTP`.
    pub scheme: String,
    /// Extra request headers. Default: none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub http_headers: Vec<ProbeHeader>,
}

/// A header of an `httpGet` probe.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProbeHeader {
    /// Header name. Required.
    pub name: String,
    /// Header value. Default: empty.
    pub value: String,
}

/// `tcpSocket`: succeeds when a connection opens.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TcpSocketProbe {
    /// The app's port on loopback. Required.
    pub port: u32,
}

/// `grpc`: succeeds when the health service answers `SERVING`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpcProbe {
    /// The app's port on loopback. Required.
    pub port: u32,
    /// Service name asked about. Default: empty, the whole server.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

// === impl HealthConfig ===

impl HealthConfig {
    pub(crate) fn validate_into(&self, path: &FieldPath, errs: &mut Errors) {
        errs.length(&path.field("address"), &self.address, MAX_VALUE_BYTES);
        if self.address.parse::<SocketAddr>().is_err() {
            errs.push(
                &path.field("address"),
                format!("{:?} is not a socket address (ip:port)", self.address),
            );
        }
        for (key, probe) in &self.app_probes {
            // The key is part of the error path: bounded first.
            if !errs.length(&path.field("app_probes"), key, MAX_VALUE_BYTES) {
                continue;
            }
            let p = path.field("app_probes").field(&format!("{key:?}"));
            if !key.starts_with(APP_HEALTH_PREFIX) || key.len() == APP_HEALTH_PREFIX.len() {
                errs.push(&p, format!("the path must start with {APP_HEALTH_PREFIX}"));
            }
            probe.validate_into(&p, errs);
        }
    }
}

// === impl AppProbe ===

impl AppProbe {
    /// The probe's timeout, with the default applied.
    pub fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(u64::from(self.timeout_seconds.max(1)))
    }

    fn validate_into(&self, path: &FieldPath, errs: &mut Errors) {
        let actions = [
            self.http_get.is_some(),
            self.tcp_socket.is_some(),
            self.grpc.is_some(),
        ];
        if actions.iter().filter(|a| **a).count() != 1 {
            errs.push(
                path,
                "exactly one of httpGet, tcpSocket and grpc is required",
            );
        }
        let port = |errs: &mut Errors, p: &FieldPath, port: u32| {
            if !(1..=65535).contains(&port) {
                errs.push(&p.field("port"), format!("{port} is not a port (1-65535)"));
            }
        };
        if let Some(h) = &self.http_get {
            let p = path.field("httpGet");
            errs.length(&p.field("path"), &h.path, MAX_VALUE_BYTES);
            errs.length(&p.field("scheme"), &h.scheme, MAX_TOKEN_BYTES);
            for (i, header) in h.http_headers.iter().enumerate() {
                let hp = p.item("httpHeaders", i);
                errs.length(&hp.field("name"), &header.name, MAX_TOKEN_BYTES);
                errs.length(&hp.field("value"), &header.value, MAX_VALUE_BYTES);
            }
            port(errs, &p, h.port);
            if !matches!(h.scheme.as_str(), "" | "HTTP" | "HTTPS") {
                errs.push(
                    &p.field("scheme"),
                    format!("{:?} is not HTTP or HTTPS", h.scheme),
                );
            }
            if !(h.path.is_empty() || h.path.starts_with('/')) {
                errs.push(&p.field("path"), format!("{:?} must start with /", h.path));
            }
            for (i, header) in h.http_headers.iter().enumerate() {
                if http_token(&header.name).is_none() {
                    errs.push(
                        &p.item("httpHeaders", i).field("name"),
                        format!("{:?} is not a header name", header.name),
                    );
                }
            }
        }
        if let Some(t) = &self.tcp_socket {
            port(errs, &path.field("tcpSocket"), t.port);
        }
        if let Some(g) = &self.grpc {
            port(errs, &path.field("grpc"), g.port);
        }
    }
}

/// `Some(name)` when `name` is a valid HTTP header name (an RFC 9110 token).
fn http_token(name: &str) -> Option<&str> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    ok.then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::ValidationErrors;

    fn check(h: &HealthConfig) -> Result<(), ValidationErrors> {
        let mut errs = Errors::default();
        h.validate_into(&FieldPath::new("health"), &mut errs);
        ValidationErrors::into_result(errs.0)
    }

    #[test]
    fn reads_the_injectors_json() {
        let json = r#"{
            "/app-health/web/readiness": {"httpGet": {"path": "/ready", "port": 8080, "scheme": "HTTP",
                "httpHeaders": [{"name": "x-probe", "value": "1"}]}, "timeoutSeconds": 2},
            "/app-health/web/liveness": {"tcpSocket": {"port": 8080}},
            "/app-health/api/startup": {"grpc": {"port": 9090}}
        }"#;
        let probes: BTreeMap<String, AppProbe> = serde_json::from_str(json).unwrap();
        let h = HealthConfig {
            address: "0.0.0.0:15020".into(),
            app_probes: probes,
        };
        check(&h).unwrap();
        let ready = &h.app_probes["/app-health/web/readiness"];
        assert_eq!(
            ready.http_get.as_ref().unwrap().http_headers[0].name,
            "x-probe"
        );
        assert_eq!(ready.timeout(), std::time::Duration::from_secs(2));
        assert_eq!(
            h.app_probes["/app-health/web/liveness"].timeout(),
            std::time::Duration::from_secs(1)
        );
    }

    #[test]
    fn bad_probes_are_named() {
        let json = r#"{
            "/elsewhere": {"tcpSocket": {"port": 80}},
            "/app-health/a/readiness": {"httpGet": {"port": 70000, "scheme": "FTP"}},
            "/app-health/a/liveness": {"tcpSocket": {"port": 1}, "grpc": {"port": 2}}
        }"#;
        let h = HealthConfig {
            address: "nowhere".into(),
            app_probes: serde_json::from_str(json).unwrap(),
        };
        let msg = check(&h).unwrap_err().to_string();
        for want in [
            "health.address: \"nowhere\" is not a socket address",
            "health.app_probes.\"/elsewhere\": the path must start with /app-health/",
            "health.app_probes.\"/app-health/a/readiness\".httpGet.port: 70000 is not a port",
            "httpGet.scheme: \"FTP\" is not HTTP or HTTPS",
            "health.app_probes.\"/app-health/a/liveness\": exactly one of",
        ] {
            assert!(msg.contains(want), "{want:?} not in {msg}");
        }
    }

    #[test]
    fn unknown_probe_fields_are_refused() {
        let err = serde_json::from_str::<AppProbe>(r#"{"exec": {"command": ["true"]}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("exec"), "{err}");
    }
}
