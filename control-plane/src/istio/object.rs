//! The envelope of a Kubernetes-style object (`apiVersion`, `kind`,
//! `metadata`, `spec`) and the documents of a YAML file: such objects, or
//! Sane `MeshResources` documents (which have neither `apiVersion` nor
//! `kind`).

use super::error::IstioError;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;

/// One document of an input file.
#[derive(Clone, Debug)]
pub enum Document {
    /// A Sane `MeshResources` document.
    Sane(Box<sane_xds_proto::MeshResources>),
    /// An Istio or Gateway API object.
    Object(Object),
}

/// The kinds accepted, each with the API groups and versions users still
/// write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectKind {
    /// `networking.istio.io` ServiceEntry.
    ServiceEntry,
    /// `networking.istio.io` DestinationRule.
    DestinationRule,
    /// `networking.istio.io` VirtualService.
    VirtualService,
    /// `gateway.networking.k8s.io` HTTPRoute.
    HttpRoute,
    /// `gateway.networking.k8s.io` GRPCRoute.
    GrpcRoute,
    /// `security.istio.io` AuthorizationPolicy.
    AuthorizationPolicy,
    /// `security.istio.io` PeerAuthentication.
    PeerAuthentication,
    /// `networking.istio.io` Sidecar.
    Sidecar,
    /// `networking.istio.io` Gateway.
    IstioGateway,
    /// `gateway.networking.k8s.io` Gateway.
    KubeGateway,
}

/// An object: its kind, names and raw spec.
#[derive(Clone, Debug)]
pub struct Object {
    /// The kind.
    pub kind: ObjectKind,
    /// `apiVersion` as written.
    pub api_version: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`, `default` when absent.
    pub namespace: String,
    /// `spec`, untyped until its kind's module reads it.
    pub spec: Value,
    /// The whole object as written (JSON), `status` left out: what the
    /// control plane stores and shows.
    pub raw: Value,
}

/// `Kind namespace/name`, how reports name an object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(into = "String")]
pub struct ObjectRef {
    /// The `kind` field.
    pub kind: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "apiVersion")]
    api_version: String,
    kind: String,
    #[serde(default)]
    metadata: Metadata,
    #[serde(default)]
    spec: Value,
    // `status` is written by controllers; it is not configuration.
    #[serde(default)]
    #[allow(dead_code)]
    status: Value,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Metadata {
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: String,
    // Everything else (labels, annotations, uid, ...) does not configure
    // the mesh.
    #[serde(flatten)]
    _rest: serde_json::Map<String, Value>,
}

const ISTIO_NETWORKING: &str = "networking.istio.io";
const ISTIO_SECURITY: &str = "security.istio.io";
const GATEWAY_API: &str = "gateway.networking.k8s.io";

// === impl ObjectKind ===

impl ObjectKind {
    /// The kind named `kind` in `apiVersion` `group/version`, if accepted.
    pub fn parse(api_version: &str, kind: &str) -> Option<ObjectKind> {
        let (group, version) = api_version.split_once('/')?;
        let kind = match (group, kind) {
            (ISTIO_NETWORKING, "VirtualService") => ObjectKind::VirtualService,
            (ISTIO_NETWORKING, "DestinationRule") => ObjectKind::DestinationRule,
            (ISTIO_NETWORKING, "ServiceEntry") => ObjectKind::ServiceEntry,
            (ISTIO_NETWORKING, "Sidecar") => ObjectKind::Sidecar,
            (ISTIO_NETWORKING, "Gateway") => ObjectKind::IstioGateway,
            (ISTIO_SECURITY, "AuthorizationPolicy") => ObjectKind::AuthorizationPolicy,
            (ISTIO_SECURITY, "PeerAuthentication") => ObjectKind::PeerAuthentication,
            (GATEWAY_API, "HTTPRoute") => ObjectKind::HttpRoute,
            (GATEWAY_API, "GRPCRoute") => ObjectKind::GrpcRoute,
            (GATEWAY_API, "Gateway") => ObjectKind::KubeGateway,
            _ => return None,
        };
        let versions: &[&str] = match group {
            ISTIO_NETWORKING => &["v1", "v1beta1", "v1alpha3"],
            ISTIO_SECURITY => &["v1", "v1beta1"],
            _ => &["v1", "v1beta1"],
        };
        versions.contains(&version).then_some(kind)
    }

    /// The `kind` field.
    pub fn name(self) -> &'static str {
        match self {
            ObjectKind::ServiceEntry => "ServiceEntry",
            ObjectKind::DestinationRule => "DestinationRule",
            ObjectKind::VirtualService => "VirtualService",
            ObjectKind::HttpRoute => "HTTPRoute",
            ObjectKind::GrpcRoute => "GRPCRoute",
            ObjectKind::AuthorizationPolicy => "AuthorizationPolicy",
            ObjectKind::PeerAuthentication => "PeerAuthentication",
            ObjectKind::Sidecar => "Sidecar",
            ObjectKind::IstioGateway | ObjectKind::KubeGateway => "Gateway",
        }
    }

    /// Every kind.
    pub const ALL: [ObjectKind; 10] = [
        ObjectKind::ServiceEntry,
        ObjectKind::DestinationRule,
        ObjectKind::VirtualService,
        ObjectKind::HttpRoute,
        ObjectKind::GrpcRoute,
        ObjectKind::AuthorizationPolicy,
        ObjectKind::PeerAuthentication,
        ObjectKind::Sidecar,
        ObjectKind::IstioGateway,
        ObjectKind::KubeGateway,
    ];

    /// The resource name in API paths, as Kubernetes names it: lowercase
    /// plural (`virtualservices`); the two `Gateway` kinds with their group
    /// (`gateways.networking.istio.io`, `gateways.gateway.networking.k8s.io`).
    pub fn plural(self) -> &'static str {
        match self {
            ObjectKind::ServiceEntry => "serviceentries",
            ObjectKind::DestinationRule => "destinationrules",
            ObjectKind::VirtualService => "virtualservices",
            ObjectKind::HttpRoute => "httproutes",
            ObjectKind::GrpcRoute => "grpcroutes",
            ObjectKind::AuthorizationPolicy => "authorizationpolicies",
            ObjectKind::PeerAuthentication => "peerauthentications",
            ObjectKind::Sidecar => "sidecars",
            ObjectKind::IstioGateway => "gateways.networking.istio.io",
            ObjectKind::KubeGateway => "gateways.gateway.networking.k8s.io",
        }
    }

    /// The kind a user names: its plural, its singular (`virtualservice`),
    /// or its `kind` (`VirtualService`), case-insensitive; `gateway(s)`
    /// alone is Istio's (as `kubectl` resolves it with Istio installed).
    pub fn from_resource_name(name: &str) -> Option<ObjectKind> {
        let name = name.to_ascii_lowercase();
        let (base, group) = match name.split_once('.') {
            Some((b, g)) => (b.to_string(), Some(g.to_string())),
            None => (name.clone(), None),
        };
        ObjectKind::ALL.into_iter().find(|k| {
            let plural = k.plural();
            let (k_base, k_group) = plural.split_once('.').unwrap_or((plural, ""));
            let singular = k.name().to_ascii_lowercase();
            let base_ok = base == k_base || base == singular;
            match &group {
                Some(g) => base_ok && g == k_group,
                None => base_ok && (k_group.is_empty() || *k == ObjectKind::IstioGateway),
            }
        })
    }

    /// The API group.
    pub fn group(self) -> &'static str {
        match self {
            ObjectKind::HttpRoute | ObjectKind::GrpcRoute | ObjectKind::KubeGateway => GATEWAY_API,
            ObjectKind::AuthorizationPolicy | ObjectKind::PeerAuthentication => ISTIO_SECURITY,
            _ => ISTIO_NETWORKING,
        }
    }

    /// Conversion order: what declares services, then what refers to them.
    pub(crate) fn order(self) -> u8 {
        self as u8
    }
}

// === impl Object ===

impl Object {
    /// `Kind namespace/name`.
    pub fn reference(&self) -> ObjectRef {
        ObjectRef {
            kind: self.kind.name().to_string(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }

    /// The spec as `T`: a wrong type or a field not in the published
    /// schema is an error naming the field's path (`spec.http[0].route`).
    pub(crate) fn spec<T: DeserializeOwned>(&self) -> Result<T, IstioError> {
        let spec = if self.spec.is_null() {
            Value::Object(Default::default())
        } else {
            self.spec.clone()
        };
        serde_path_to_error::deserialize(spec).map_err(|e| {
            let path = e.path().to_string();
            let at = if path == "." {
                "spec".to_string()
            } else {
                format!("spec.{path}")
            };
            IstioError::Malformed {
                object: Box::new(self.reference()),
                message: format!("{at}: {}", e.into_inner()),
            }
        })
    }
}

// === impl ObjectRef ===

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

impl From<ObjectRef> for String {
    fn from(r: ObjectRef) -> String {
        r.to_string()
    }
}

/// Reads every document of a multi-document YAML text: Istio and Gateway
/// API objects, and Sane `MeshResources` documents. An unknown kind or a
/// malformed document is an error naming it.
pub fn parse_documents(text: &str) -> Result<Vec<Document>, IstioError> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let n = i + 1;
        let yaml = serde_yaml::Value::deserialize(doc).map_err(|e| IstioError::Yaml {
            document: n,
            message: e.to_string(),
        })?;
        if yaml.is_null() {
            continue;
        }
        let is_object = yaml.get("apiVersion").is_some() || yaml.get("kind").is_some();
        if !is_object {
            // The message names the field path (`routes[0].rules[1]...`).
            let mesh = serde_path_to_error::deserialize(yaml).map_err(|e| IstioError::Yaml {
                document: n,
                message: format!("{}: {}", e.path(), e.inner()),
            })?;
            out.push(Document::Sane(Box::new(mesh)));
            continue;
        }
        // JSON keeps numbers and strings apart as the schemas do, and turns
        // integer map keys (`portLevelMtls: {8080: ...}`) into strings.
        let json = serde_json::to_value(&yaml).map_err(|e| IstioError::Yaml {
            document: n,
            message: e.to_string(),
        })?;
        out.push(Document::Object(object_from_json(n, json)?));
    }
    Ok(out)
}

/// Reads one object from its JSON form (document `n` of its input): an
/// unknown kind, a missing name or a bad envelope is an error naming it.
pub fn object_from_json(n: usize, mut json: Value) -> Result<Object, IstioError> {
    if let Some(m) = json.as_object_mut() {
        m.remove("status");
    }
    let envelope: Envelope =
        serde_json::from_value(json.clone()).map_err(|e| IstioError::Yaml {
            document: n,
            message: format!("not a Kubernetes object: {e}"),
        })?;
    let Some(kind) = ObjectKind::parse(&envelope.api_version, &envelope.kind) else {
        return Err(IstioError::UnknownKind {
            document: n,
            api_version: envelope.api_version,
            kind: envelope.kind,
            name: envelope.metadata.name,
        });
    };
    let object = Object {
        kind,
        api_version: envelope.api_version,
        namespace: if envelope.metadata.namespace.is_empty() {
            sane_xds_proto::DEFAULT_NAMESPACE.to_string()
        } else {
            envelope.metadata.namespace
        },
        name: envelope.metadata.name,
        spec: envelope.spec,
        raw: json,
    };
    if object.name.is_empty() {
        return Err(IstioError::Malformed {
            object: Box::new(object.reference()),
            message: format!("document {n}: metadata.name is required"),
        });
    }
    Ok(object)
}
