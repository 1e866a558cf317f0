//! What streams send, encoded once and shared: a view's resources of one
//! type ([`TypeWire`], cached per view: the list the status table keeps,
//! and its encoding as the `resources` field of a state-of-the-world
//! `DiscoveryResponse`), and the response a stream sends
//! ([`SotwResponse`]: its own version, type and nonce around the shared
//! bytes; `server::AdsServer` sends it).
//!
//! With a fleet of sidecars holding the same view, a change used to be
//! copied (every `Any`) and encoded once per stream: 5 000 copies of
//! every resource of the changed type. Now it is encoded once per view,
//! and each stream adds a few bytes. Protobuf concatenates fields, so the
//! bytes on the wire are exactly a `DiscoveryResponse`'s: clients see no
//! difference.

use super::snapshot::EncodedResource;
use super::type_url::XdsType;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
use envoy_types::pb::google::protobuf::Any;
use prost::bytes::{Buf, BufMut, Bytes};
use prost::encoding::{self, DecodeContext, WireType};
use prost::{DecodeError, Message};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// `DiscoveryResponse.resources`' field number.
const RESOURCES_FIELD: u32 = 2;

/// One type's resources of a view (or of a subscription), ready to send.
#[derive(Debug)]
pub struct TypeWire {
    /// The version of the set.
    pub version: String,
    /// The resources, for the status table (shared by every stream).
    pub resources: Arc<[Arc<EncodedResource>]>,
    /// Their encoding as `DiscoveryResponse.resources`, built on first use.
    sotw: std::sync::OnceLock<Bytes>,
}

/// The [`TypeWire`]s of one view's wildcard subscriptions, built on first use.
#[derive(Debug, Default)]
pub struct WireCache {
    types: Mutex<HashMap<XdsType, Arc<TypeWire>>>,
}

/// A state-of-the-world response: `version_info`, `type_url` and `nonce`
/// of its own, the resources shared.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SotwResponse {
    /// `version_info`.
    pub version_info: String,
    /// `type_url`.
    pub type_url: String,
    /// `nonce`.
    pub nonce: String,
    /// The resources (none for an empty response).
    pub body: Option<Arc<TypeWire>>,
}

// === impl TypeWire ===

impl TypeWire {
    /// `resources` (of version `version`), not yet encoded.
    pub fn new(version: String, resources: Arc<[Arc<EncodedResource>]>) -> TypeWire {
        TypeWire {
            version,
            resources,
            sotw: std::sync::OnceLock::new(),
        }
    }

    /// The encoded `resources` field.
    fn sotw(&self) -> &Bytes {
        self.sotw.get_or_init(|| {
            let len: usize = self
                .resources
                .iter()
                .map(|r| encoding::message::encoded_len(RESOURCES_FIELD, &r.any))
                .sum();
            let mut buf = Vec::with_capacity(len);
            for r in self.resources.iter() {
                encoding::message::encode(RESOURCES_FIELD, &r.any, &mut buf);
            }
            Bytes::from(buf)
        })
    }
}

impl PartialEq for TypeWire {
    fn eq(&self, other: &Self) -> bool {
        self.version == other.version && self.resources == other.resources
    }
}

// === impl WireCache ===

impl Clone for WireCache {
    fn clone(&self) -> Self {
        let types = self.types.lock().unwrap_or_else(|e| e.into_inner());
        WireCache {
            types: Mutex::new(types.clone()),
        }
    }
}

impl WireCache {
    /// The entry of type `t`, built by `build` if it is the first asked for.
    pub fn get_or_build(&self, t: XdsType, build: impl FnOnce() -> TypeWire) -> Arc<TypeWire> {
        let mut types = self.types.lock().unwrap_or_else(|e| e.into_inner());
        types.entry(t).or_insert_with(|| Arc::new(build())).clone()
    }
}

// === impl SotwResponse ===

impl SotwResponse {
    /// The resources, decoded (for tests and tools; streams never decode).
    pub fn resources(&self) -> Vec<Any> {
        self.message().resources
    }

    /// The response as the client decodes it.
    pub fn message(&self) -> DiscoveryResponse {
        let bytes = self.encode_to_vec();
        DiscoveryResponse::decode(bytes.as_slice()).unwrap_or_default()
    }
}

impl Message for SotwResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        if !self.version_info.is_empty() {
            encoding::string::encode(1, &self.version_info, buf);
        }
        if let Some(body) = &self.body {
            buf.put_slice(body.sotw());
        }
        if !self.type_url.is_empty() {
            encoding::string::encode(4, &self.type_url, buf);
        }
        if !self.nonce.is_empty() {
            encoding::string::encode(5, &self.nonce, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        // Only ever sent: what a client decodes is a `DiscoveryResponse`.
        encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        let string = |tag, s: &String| {
            if s.is_empty() {
                0
            } else {
                encoding::string::encoded_len(tag, s)
            }
        };
        string(1, &self.version_info)
            + self.body.as_ref().map_or(0, |b| b.sotw().len())
            + string(4, &self.type_url)
            + string(5, &self.nonce)
    }

    fn clear(&mut self) {
        *self = SotwResponse::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::test_support::view_of;
    use sane_xds_proto::TypeUrl;

    #[test]
    fn a_shared_response_is_a_discovery_response_on_the_wire() {
        let view = view_of("shop");
        let t = XdsType::from(TypeUrl::Service);
        let resources: Arc<[Arc<EncodedResource>]> = view.of_type(t).values().cloned().collect();
        let wire = Arc::new(TypeWire::new("v1".into(), resources.clone()));
        let resp = SotwResponse {
            version_info: "v1".into(),
            type_url: t.as_str().into(),
            nonce: "7-1".into(),
            body: Some(wire),
        };
        let bytes = resp.encode_to_vec();
        assert_eq!(bytes.len(), resp.encoded_len());
        let expected = DiscoveryResponse {
            version_info: "v1".into(),
            resources: resources.iter().map(|r| r.any.clone()).collect(),
            type_url: t.as_str().into(),
            nonce: "7-1".into(),
            ..Default::default()
        };
        assert_eq!(
            DiscoveryResponse::decode(bytes.as_slice()).unwrap(),
            expected
        );
        let empty = SotwResponse {
            type_url: "x".into(),
            nonce: "1-1".into(),
            ..Default::default()
        };
        assert_eq!(empty.message().resources.len(), 0);
        assert_eq!(empty.message().nonce, "1-1");
    }
}
