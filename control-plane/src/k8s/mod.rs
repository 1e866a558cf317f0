//! Kubernetes: sidecar injection, the registry source, and service-account
//! authentication for the CA (cargo feature `kubernetes`, on by default).
//!
//! Along the life of a meshed pod:
//!
//! * [`inject`] turns a pod (or a workload's pod template) into a meshed one:
//!   a pure function, shared by `sanectl inject` ([`manifest`], for YAML
//!   files) and the admission [`webhook`] (for pods created in namespaces
//!   labelled `sane.mesh/inject=enabled`); [`probes`] rewrites the app's
//!   probes so they keep working under STRICT mTLS.
//! * [`source`] converts what the cluster holds (Services, EndpointSlices,
//!   Pods, and the `sane.mesh/v1` custom resources of [`crd`]) into registry
//!   resources — a pure function over an object [`store`] — and keeps the
//!   registry in step with it; [`watch`] is the kube-rs loop that feeds the
//!   store (it runs only with `--kubernetes`).
//! * [`token_review`] authenticates a sidecar's projected service-account
//!   token to the CA through the TokenReview API, as an alternative to
//!   bootstrap tokens.
//!
//! The kube-rs and k8s-openapi dependencies stay inside this module; the rest
//! of the control plane sees registry resources and `TokenGrant`s.
//!
//! # The injected pod
//!
//! | What | Name | Why |
//! | --- | --- | --- |
//! | init container, runs first | `sane-init` | `sane-proxy iptables install …`: redirects the pod's TCP to the proxy (needs `NET_ADMIN`, `NET_RAW`) |
//! | native sidecar (init container with `restartPolicy: Always`), second | `sane-proxy` | starts (and passes its startup probe) before the app's init containers and containers, stops after them |
//! | volume (downward API) | `sane-bootstrap` | the pod's annotation `sane.mesh/bootstrap` as `/etc/sane/bootstrap.yaml`: the proxy's `--config` |
//! | volume (projected token) | `sane-token` | a service-account token for audience `sane-mesh`, as `/var/run/secrets/sane.mesh/token`: authenticates to the CA (TokenReview) and xDS |
//! | annotation | `sane.mesh/status` | marks the pod injected (injection is idempotent) |
//!
//! Opt out per pod with the annotation `sane.mesh/inject: "false"`.

pub mod crd;
pub mod error;
pub mod inject;
pub mod manifest;
pub mod probes;
pub mod source;
pub mod store;
pub mod webhook;

pub use error::{InjectError, KubeError, ManifestError};

use sane_xds_proto::Protocol;

/// Pod annotation: `"false"` opts a pod out of injection.
pub const INJECT_ANNOTATION: &str = "sane.mesh/inject";
/// Namespace label selecting namespaces for the webhook (value `enabled`).
pub const NAMESPACE_LABEL: &str = "sane.mesh/inject";
/// Pod annotation set by injection: JSON naming what was added.
pub const STATUS_ANNOTATION: &str = "sane.mesh/status";
/// Pod annotation holding the sidecar's bootstrap YAML.
pub const BOOTSTRAP_ANNOTATION: &str = "sane.mesh/bootstrap";
/// Name of the sidecar container.
pub const SIDECAR_NAME: &str = "sane-proxy";
/// Name of the traffic-redirection init container.
pub const INIT_NAME: &str = "sane-init";
/// Name of the sidecar's inbound container port (how the source finds a
/// pod's `proxy_port`).
pub const INBOUND_PORT_NAME: &str = "sane-inbound";
/// Name of the sidecar's health container port.
pub const HEALTH_PORT_NAME: &str = "sane-health";
/// Environment variable of the sidecar holding the app's original probes.
pub const PROBES_ENV: &str = "SANE_APP_PROBES";
/// Default audience of the service-account token sidecars present.
pub const DEFAULT_TOKEN_AUDIENCE: &str = "sane-mesh";

/// The protocol a port speaks, from its Kubernetes `appProtocol` or, failing
/// that, its name (Istio's convention: `grpc`, `grpc-web`, `http2-api`,
/// `tcp-db`, …). Anything else is `http`, which the proxy also detects.
pub fn port_protocol(name: Option<&str>, app_protocol: Option<&str>) -> Protocol {
    let hint = app_protocol
        .filter(|p| !p.is_empty())
        .or(name)
        .unwrap_or("")
        .to_ascii_lowercase();
    // `kubernetes.io/h2c` is the standard appProtocol for cleartext HTTP/2.
    let hint = hint.strip_prefix("kubernetes.io/").unwrap_or(&hint);
    let prefix = hint.split(['-', '_']).next().unwrap_or("");
    match prefix {
        "grpc" => Protocol::Grpc,
        "http2" | "h2c" => Protocol::Http2,
        "tcp" | "mongo" | "mysql" | "redis" | "postgres" | "postgresql" | "tls" | "https" => {
            Protocol::Tcp
        }
        _ => Protocol::Http,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols_from_names_and_app_protocols() {
        assert_eq!(port_protocol(Some("grpc-api"), None), Protocol::Grpc);
        assert_eq!(port_protocol(Some("http"), Some("grpc")), Protocol::Grpc);
        assert_eq!(
            port_protocol(None, Some("kubernetes.io/h2c")),
            Protocol::Http2
        );
        assert_eq!(port_protocol(Some("tcp-db"), None), Protocol::Tcp);
        assert_eq!(port_protocol(Some("https"), None), Protocol::Tcp);
        assert_eq!(port_protocol(Some("web"), None), Protocol::Http);
        assert_eq!(port_protocol(None, None), Protocol::Http);
    }
}
