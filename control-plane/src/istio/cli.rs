//! What `sanectl convert` and `sanectl apply` do with files that mix Sane,
//! Istio and Gateway API documents: read them, fetch the registry's
//! services, endpoints and routes as [`Context`], convert, and render the
//! report. Conversion happens client-side; the Sane resources are then
//! written through the ordinary API.

use super::object::{parse_documents, Document};
use super::security::tls_for;
use super::{convert, Context, Conversion, IstioError};
use crate::client::ApiClient;
use crate::resource::Kind;
use sane_xds_proto::{Endpoint, MeshResources, Route, Service};
use serde::de::DeserializeOwned;
use std::fmt::Write;

/// Every document of several files, in order.
#[derive(Debug, Default)]
pub struct Input {
    /// The documents.
    pub documents: Vec<Document>,
}

// === impl Input ===

impl Input {
    /// Adds the documents of one file; errors name the file.
    pub fn add(&mut self, name: &str, text: &str) -> Result<(), String> {
        let docs = parse_documents(text).map_err(|e| format!("{name}: {e}"))?;
        self.documents.extend(docs);
        Ok(())
    }

    /// True when some document is an Istio or Gateway API object.
    pub fn has_objects(&self) -> bool {
        self.documents
            .iter()
            .any(|d| matches!(d, Document::Object(_)))
    }

    /// Converts the documents; with `strict`, any unsupported field is an
    /// error. The Sane documents' own resources are part of the result.
    pub fn convert(&self, context: &Context, strict: bool) -> Result<Conversion, IstioError> {
        let mut conversion = convert(&self.documents, context)?;
        if strict {
            let unsupported = conversion.unsupported();
            if !unsupported.is_empty() {
                return Err(IstioError::Strict(unsupported));
            }
        }
        // The Sane documents first, then what the objects produced.
        let mut all = MeshResources::default();
        let sane = self.documents.iter().filter_map(|d| match d {
            Document::Sane(m) => Some(m.as_ref().clone()),
            Document::Object(_) => None,
        });
        for m in sane.chain([conversion.resources.clone()]) {
            // Destructured in full: a new kind must be placed here.
            let MeshResources {
                listeners,
                services,
                endpoints,
                routes,
                policies,
                authorization_policies,
                telemetry,
                peer_authentications,
                gateways,
            } = m;
            all.listeners.extend(listeners);
            all.services.extend(services);
            all.endpoints.extend(endpoints);
            all.routes.extend(routes);
            all.policies.extend(policies);
            all.authorization_policies.extend(authorization_policies);
            all.telemetry.extend(telemetry);
            all.peer_authentications.extend(peer_authentications);
            all.gateways.extend(gateways);
        }
        conversion.resources = all;
        Ok(conversion)
    }
}

/// The registry's services, endpoints and routes, what Istio objects may
/// refer to (and conflict with).
pub async fn context_from(client: &ApiClient) -> Result<Context, crate::Error> {
    Ok(Context {
        services: items::<Service>(client, Kind::Service).await?,
        endpoints: items::<Endpoint>(client, Kind::Endpoint).await?,
        routes: items::<Route>(client, Kind::Route).await?,
    })
}

async fn items<T: DeserializeOwned>(
    client: &ApiClient,
    kind: Kind,
) -> Result<Vec<T>, crate::Error> {
    let list = client.list(kind).await?;
    let items = list["items"].as_array().cloned().unwrap_or_default();
    // The server wrote them from these very types.
    Ok(items
        .into_iter()
        .filter_map(|v| serde_json::from_value(v).ok())
        .collect())
}

/// The report of a conversion, one line per finding:
/// `VirtualService default/ratings: spec.http[0].corsPolicy: not supported: ...`,
/// then what each object produced.
pub fn report(c: &Conversion) -> String {
    let mut out = String::new();
    for line in c.unsupported() {
        let _ = writeln!(out, "{line}");
    }
    for o in &c.objects {
        for n in &o.notes {
            let _ = writeln!(out, "{}: {}: note: {}", o.object, n.path, n.note);
        }
    }
    for o in &c.objects {
        let produced = if o.produced.is_empty() {
            "nothing".to_string()
        } else {
            o.produced.join(", ")
        };
        let _ = writeln!(out, "{} -> {produced}", o.object);
    }
    out
}

/// The inbound modes the PeerAuthentications give workloads, as YAML
/// comments (per namespace and selector); the resources themselves are in
/// the document, delivered to the sidecars by the control plane.
pub fn peer_authentication_comments(c: &Conversion) -> String {
    let mut out = String::new();
    let all = &c.resources.peer_authentications;
    for p in all {
        let settings = tls_for(all, p.namespace(), &p.selector);
        let who = match Some(&p.selector).filter(|s| !s.is_empty()) {
            Some(s) => format!(
                "workloads of {} with {}",
                p.namespace,
                s.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            None => format!("namespace {}", p.namespace()),
        };
        let ports: Vec<String> = settings
            .ports
            .iter()
            .map(|(port, m)| format!("{port}: {}", tls_name(*m)))
            .collect();
        let _ = writeln!(
            out,
            "# PeerAuthentication {}/{}: inbound of {who} (delivered by the control plane): \
             tls_mode: {}{}",
            p.namespace(),
            p.name,
            tls_name(settings.mode),
            if ports.is_empty() {
                String::new()
            } else {
                format!("; workload_ports tls_mode: {}", ports.join(", "))
            }
        );
    }
    out
}

fn tls_name(m: sane_xds_proto::TlsMode) -> String {
    match serde_json::to_value(m) {
        Ok(serde_json::Value::String(s)) => s,
        _ => format!("{m:?}"),
    }
}
