//! The workload token of a client that cannot send one in a header.
//!
//! gRPC's own xDS client (grpcio, grpc-go, grpc-java) sends no call
//! credentials on its ADS stream over an insecure channel, and its bootstrap
//! file has no way to add a static `authorization` header. Such a client
//! puts the token in its node metadata instead, under [`NODE_TOKEN_FIELD`];
//! the stream is then authenticated when its first request arrives, exactly
//! as a header token would be (same check, same namespace rule). A stream
//! with a header token never reads this field.
//!
//! The token travels like the header would: in plaintext unless the channel
//! is TLS. It is never stored in the node's status row nor logged.

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::value::Kind;

/// The node metadata field holding the workload token.
pub const NODE_TOKEN_FIELD: &str = "token";

/// The token in `node.metadata.token`, if it is a non-empty string.
pub fn node_token(node: Option<&Node>) -> Option<String> {
    let value = node?.metadata.as_ref()?.fields.get(NODE_TOKEN_FIELD)?;
    match &value.kind {
        Some(Kind::StringValue(s)) if !s.trim().is_empty() => Some(s.trim().to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf::{Struct, Value};

    fn node(value: Kind) -> Node {
        Node {
            id: "n".into(),
            metadata: Some(Struct {
                fields: [(NODE_TOKEN_FIELD.to_string(), Value { kind: Some(value) })]
                    .into_iter()
                    .collect(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn only_a_non_empty_string_is_a_token() {
        let t = node_token(Some(&node(Kind::StringValue(" abc ".into()))));
        assert_eq!(t.as_deref(), Some("abc"));
        assert_eq!(node_token(Some(&node(Kind::StringValue(" ".into())))), None);
        assert_eq!(node_token(Some(&node(Kind::NumberValue(1.0)))), None);
        assert_eq!(node_token(Some(&Node::default())), None);
        assert_eq!(node_token(None), None);
    }
}
