//! The `GRPC_XDS_BOOTSTRAP` file of a proxyless gRPC client (gRFC A27,
//! A65): which control plane to ask, how, and who the client is. Written by
//! `sanectl bootstrap grpc`.
//!
//! The channel to the control plane is TLS (`tls` channel creds, gRFC A65,
//! verifying the control plane against the mesh root file) unless the
//! server is `http://`, which a control plane only serves on loopback
//! (`--insecure-plaintext-loopback`). The workload token goes in
//! `node.metadata.token`: gRPC's bootstrap has no way to add a header.

use super::super::node_token::NODE_TOKEN_FIELD;
use serde_json::{json, Value};

/// Why a bootstrap cannot be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BootstrapError {
    /// The server is neither `https://host:port` nor `http://host:port`.
    #[error("xds server {0:?}: must be https://host:port (TLS) or http://host:port (plaintext, loopback only)")]
    Server(String),
    /// A TLS server without a root file to verify it with.
    #[error("xds server {0}: TLS needs the root file the client verifies the control plane with (the control plane's <data-dir>/root-cert.pem)")]
    NoRoot(String),
    /// The node id is not `<service_account>.<namespace>[~<instance>]`.
    #[error("node id {0:?}: must be <service_account>.<namespace>[~<instance>] of the token's workload, of ASCII letters, digits, '.', '-', '_' and one '~'")]
    NodeId(String),
}

/// What goes into a client's bootstrap.
#[derive(Clone, Debug, Default)]
pub struct GrpcBootstrap {
    /// The xDS address: `https://host:port` (TLS, see `ca_file`) or
    /// `http://host:port` (plaintext, loopback control planes only).
    pub server: String,
    /// With `https://`: the root file the client checks the control
    /// plane's certificate against (gRPC `tls` channel creds).
    pub ca_file: Option<String>,
    /// `node.id`: `<service_account>.<namespace>~<instance>`, one instance
    /// per client process.
    pub node_id: String,
    /// The client's service (`node.cluster` and `node.metadata.workload`).
    pub service: String,
    /// `node.metadata.namespace`: must be the token's namespace.
    pub namespace: String,
    /// `node.metadata.services`: services of other namespaces it calls.
    pub services: Vec<String>,
    /// The workload token (`node.metadata.token`).
    pub token: String,
}

// === impl GrpcBootstrap ===

impl GrpcBootstrap {
    /// Checks the server address, its root and the node id's form (the
    /// control plane checks that the node id is the token's workload).
    pub fn validate(&self) -> Result<(), BootstrapError> {
        let host = self
            .server
            .strip_prefix("https://")
            .or_else(|| self.server.strip_prefix("http://"))
            .map(|h| h.trim_end_matches('/'))
            .filter(|h| !h.is_empty() && !h.contains('/'))
            .ok_or_else(|| BootstrapError::Server(self.server.clone()))?;
        if host
            .rsplit_once(':')
            .is_none_or(|(_, p)| p.parse::<u16>().is_err())
        {
            return Err(BootstrapError::Server(self.server.clone()));
        }
        if self.server.starts_with("https://") && self.ca_file.is_none() {
            return Err(BootstrapError::NoRoot(self.server.clone()));
        }
        let id_ok = self.node_id.split_once('.').is_some_and(|(sa, rest)| {
            !sa.is_empty()
                && !rest.is_empty()
                && self.node_id.matches('~').count() <= 1
                && !self.node_id.ends_with('~')
        }) && self
            .node_id
            .chars()
            .all(crate::xds::client_input::is_id_char);
        if !id_ok {
            return Err(BootstrapError::NodeId(self.node_id.clone()));
        }
        Ok(())
    }

    /// The bootstrap as JSON.
    pub fn to_json(&self) -> Value {
        let (uri, creds) = match self.server.strip_prefix("https://") {
            Some(host) => {
                let mut config = json!({});
                if let Some(ca) = &self.ca_file {
                    config["ca_certificate_file"] = json!(ca);
                }
                (host, json!([{ "type": "tls", "config": config }]))
            }
            None => (
                self.server.strip_prefix("http://").unwrap_or(&self.server),
                json!([{ "type": "insecure" }]),
            ),
        };
        let mut metadata = json!({
            "namespace": self.namespace,
            "workload": self.service,
            NODE_TOKEN_FIELD: self.token,
        });
        if !self.services.is_empty() {
            metadata["services"] = json!(self.services);
        }
        json!({
            "xds_servers": [{
                "server_uri": uri.trim_end_matches('/'),
                "channel_creds": creds,
                "server_features": ["xds_v3"],
            }],
            "node": {
                "id": self.node_id,
                "cluster": self.service,
                "locality": {},
                "metadata": metadata,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insecure_and_tls_servers() {
        let b = GrpcBootstrap {
            server: "http://127.0.0.1:15010".into(),
            node_id: "echo-client.default~1".into(),
            service: "echo-client".into(),
            namespace: "default".into(),
            token: "t0k".into(),
            ..Default::default()
        };
        let j = b.to_json();
        assert_eq!(j["xds_servers"][0]["server_uri"], "127.0.0.1:15010");
        assert_eq!(j["xds_servers"][0]["channel_creds"][0]["type"], "insecure");
        assert_eq!(j["node"]["metadata"]["token"], "t0k");
        assert_eq!(j["node"]["metadata"]["namespace"], "default");
        assert!(j["node"]["metadata"].get("services").is_none());
        let tls = GrpcBootstrap {
            server: "https://cp.example:15010".into(),
            ca_file: Some("/etc/sane/ca.pem".into()),
            services: vec!["pay.billing".into()],
            ..b
        }
        .to_json();
        assert_eq!(tls["xds_servers"][0]["server_uri"], "cp.example:15010");
        let creds = &tls["xds_servers"][0]["channel_creds"][0];
        assert_eq!(creds["type"], "tls");
        assert_eq!(creds["config"]["ca_certificate_file"], "/etc/sane/ca.pem");
        assert_eq!(tls["node"]["metadata"]["services"][0], "pay.billing");
    }

    #[test]
    fn bad_servers_roots_and_node_ids_are_named() {
        let good = GrpcBootstrap {
            server: "https://127.0.0.1:15010".into(),
            ca_file: Some("/data/root-cert.pem".into()),
            node_id: "web.shop~a1".into(),
            ..Default::default()
        };
        good.validate().unwrap();
        GrpcBootstrap {
            node_id: "web.shop".into(),
            ..good.clone()
        }
        .validate()
        .unwrap();
        for server in ["127.0.0.1:15010", "https://cp", "http://cp:x", "ftp://cp:1"] {
            let b = GrpcBootstrap {
                server: server.into(),
                ..good.clone()
            };
            assert_eq!(b.validate(), Err(BootstrapError::Server(server.into())));
        }
        let no_root = GrpcBootstrap {
            ca_file: None,
            ..good.clone()
        };
        assert!(matches!(no_root.validate(), Err(BootstrapError::NoRoot(_))));
        for id in ["web", "web.shop~", "web.shop~a~b", "web shop.x", ".shop"] {
            let b = GrpcBootstrap {
                node_id: id.into(),
                ..good.clone()
            };
            assert_eq!(b.validate(), Err(BootstrapError::NodeId(id.into())), "{id}");
        }
    }
}
