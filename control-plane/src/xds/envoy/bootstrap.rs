//! The `GRPC_XDS_BOOTSTRAP` file of a proxyless gRPC client (gRFC A27,
//! A65): which control plane to ask, how, and who the client is. Written by
//! `sanectl bootstrap grpc`.

use super::super::node_token::NODE_TOKEN_FIELD;
use serde_json::{json, Value};

/// What goes into a client's bootstrap.
#[derive(Clone, Debug, Default)]
pub struct GrpcBootstrap {
    /// The xDS address as `host:port` (a `http://` prefix is dropped; an
    /// `https://` one asks for TLS, see `ca_file`).
    pub server: String,
    /// With `https://`: the CA certificate file the client checks the
    /// control plane's certificate against (gRPC `tls` channel creds).
    pub ca_file: Option<String>,
    /// `node.id`: unique per client process.
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
            node_id: "echo-client-1".into(),
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
}
