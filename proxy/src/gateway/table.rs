//! The compiled gateway: host lookup (exact, then the longest wildcard),
//! each host's rustls config and routes, and the edge limits.
//!
//! Compiled once per config version and swapped atomically; a request
//! reads one [`GatewayTable`]. Certificates of hosts whose files did not
//! change are carried over (same [`HostCert`]), so a reload never rereads
//! or interrupts a certificate that is being served.

use crate::gateway::certs::{load_client_roots, HostCert};
use crate::gateway::edge::TokenBucket;
use crate::gateway::error::GatewayConfigError;
use crate::route::Matcher;
use http::Request;
use rustls::ServerConfig;
use sane_xds_proto::resources::qualify;
use sane_xds_proto::{EdgeLimits, Gateway, RateLimit};
use std::collections::HashMap;
use std::sync::Arc;

/// One compiled gateway configuration.
#[derive(Debug)]
pub struct GatewayTable {
    /// The configuration this table was compiled from.
    pub source: Gateway,
    exact: HashMap<String, Arc<HostEntry>>,
    /// `(".example.com", host)`, longest suffix first.
    wildcard: Vec<(String, Arc<HostEntry>)>,
    /// Served when SNI names no TLS host (or is absent): the first TLS host.
    default_tls: Option<Arc<HostEntry>>,
    /// The edge limits, defaults applied by their accessors.
    pub limits: EdgeLimits,
    /// The gateway-wide rate limit.
    pub rate: Option<(RateLimit, Arc<TokenBucket>)>,
}

/// A served host.
#[derive(Debug)]
pub struct HostEntry {
    /// The configured name (`*.example.com` for a wildcard).
    pub hostname: String,
    /// Certificate and rustls config, if the host has TLS.
    pub tls: Option<HostTlsState>,
    /// Plain-HTTP requests are redirected to HTTPS.
    pub https_redirect: bool,
    routes: Vec<CompiledRoute>,
}

/// A host's TLS state.
#[derive(Debug)]
pub struct HostTlsState {
    /// The certificate, reloaded from its files.
    pub cert: Arc<HostCert>,
    /// The rustls config for connections to this host.
    pub config: Arc<ServerConfig>,
    /// Clients must present a certificate.
    pub client_auth: bool,
}

#[derive(Debug)]
struct CompiledRoute {
    matches: Vec<Matcher>,
    /// `service.namespace:port`, the authority sent into the mesh.
    authority: String,
}

// === impl GatewayTable ===

impl GatewayTable {
    /// Compiles `gw` (already validated). Mesh services without a namespace
    /// are in `namespace`. Certificates whose files are unchanged are taken
    /// from `previous`. Errors name the field path (under `gateway.`) and
    /// the host.
    pub fn compile(
        gw: &Gateway,
        namespace: &str,
        previous: Option<&GatewayTable>,
    ) -> Result<Self, GatewayConfigError> {
        let mut exact = HashMap::new();
        let mut wildcard = Vec::new();
        let mut default_tls = None;
        for (i, h) in gw.hosts.iter().enumerate() {
            let field = format!("gateway.hosts[{i}]");
            let hostname = h.hostname.to_ascii_lowercase();
            let err = |field: String, reason: String| GatewayConfigError {
                field,
                host: hostname.clone(),
                reason,
            };
            let tls = match &h.tls {
                None => None,
                Some(t) => {
                    let reused = previous
                        .and_then(|p| p.lookup_exact(&hostname))
                        .and_then(|e| e.tls.as_ref())
                        .filter(|s| s.cert.same_files(&t.cert_file, &t.key_file))
                        .map(|s| s.cert.clone());
                    let cert = match reused {
                        Some(c) => c,
                        None => HostCert::load(&hostname, &t.cert_file, &t.key_file)
                            .map_err(|e| err(format!("{field}.tls"), e.to_string()))?,
                    };
                    let roots = if t.client_ca_file.is_empty() {
                        None
                    } else {
                        Some(
                            load_client_roots(&hostname, &t.client_ca_file).map_err(|e| {
                                err(format!("{field}.tls.client_ca_file"), e.to_string())
                            })?,
                        )
                    };
                    let client_auth = roots.is_some();
                    let config = cert
                        .server_config(roots)
                        .map_err(|e| err(format!("{field}.tls"), e.to_string()))?;
                    Some(HostTlsState {
                        cert,
                        config,
                        client_auth,
                    })
                }
            };
            let mut routes = Vec::new();
            for (j, r) in h.routes.iter().enumerate() {
                let mut matches = Vec::new();
                for (k, m) in r.matches.iter().enumerate() {
                    let mf = format!("{field}.routes[{j}].matches[{k}]");
                    matches.push(Matcher::compile(m, &mf).map_err(|e| err(e.field, e.reason))?);
                }
                routes.push(CompiledRoute {
                    matches,
                    authority: format!("{}:{}", qualify(&r.service, namespace), r.port),
                });
            }
            let entry = Arc::new(HostEntry {
                hostname: hostname.clone(),
                tls,
                https_redirect: h.https_redirect,
                routes,
            });
            if entry.tls.is_some() && default_tls.is_none() {
                default_tls = Some(entry.clone());
            }
            match hostname.strip_prefix('*') {
                Some(suffix) => wildcard.push((suffix.to_string(), entry)),
                None => {
                    exact.insert(hostname.clone(), entry);
                }
            }
        }
        wildcard.sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
        let limits = gw.limits();
        let rate = limits.rate_limit.clone().map(|r| {
            let kept = previous
                .and_then(|p| p.rate.as_ref())
                .filter(|(old, _)| *old == r)
                .map(|(_, b)| b.clone());
            let bucket = kept
                .unwrap_or_else(|| Arc::new(TokenBucket::new(r.requests_per_second, r.burst())));
            (r, bucket)
        });
        Ok(Self {
            source: gw.clone(),
            exact,
            wildcard,
            default_tls,
            limits,
            rate,
        })
    }

    /// The host entry serving `host` (lowercase, no port): an exact name,
    /// else the longest matching wildcard.
    pub fn lookup(&self, host: &str) -> Option<&Arc<HostEntry>> {
        let host = host.trim_end_matches('.');
        self.lookup_exact(host).or_else(|| {
            self.wildcard
                .iter()
                .find(|(suffix, _)| host.ends_with(suffix.as_str()) && host.len() > suffix.len())
                .map(|(_, e)| e)
        })
    }

    fn lookup_exact(&self, host: &str) -> Option<&Arc<HostEntry>> {
        self.exact.get(host).or_else(|| {
            // A wildcard entry is stored by suffix; `previous` lookups use
            // the configured name.
            host.strip_prefix('*').and_then(|suffix| {
                self.wildcard
                    .iter()
                    .find(|(s, _)| s == suffix)
                    .map(|(_, e)| e)
            })
        })
    }

    /// The host whose certificate a handshake naming `sni` gets: the TLS
    /// host serving that name, else the default (first TLS host). The
    /// second value is true when SNI chose the host.
    pub fn tls_host(&self, sni: Option<&str>) -> Option<(&Arc<HostEntry>, bool)> {
        let by_sni = sni
            .map(str::to_ascii_lowercase)
            .and_then(|s| self.lookup(&s))
            .filter(|e| e.tls.is_some());
        match by_sni {
            Some(e) => Some((e, true)),
            None => self.default_tls.as_ref().map(|e| (e, false)),
        }
    }

    /// Every host certificate, to check its files for changes.
    pub fn certs(&self) -> impl Iterator<Item = &Arc<HostCert>> {
        self.exact
            .values()
            .chain(self.wildcard.iter().map(|(_, e)| e))
            .filter_map(|e| e.tls.as_ref().map(|t| &t.cert))
    }
}

// === impl HostEntry ===

impl HostEntry {
    /// The mesh authority (`service.namespace:port`) of the first route
    /// matching `req`.
    pub fn route<B>(&self, req: &Request<B>) -> Option<&str> {
        self.routes
            .iter()
            .find(|r| r.matches.is_empty() || r.matches.iter().any(|m| m.matches(req)))
            .map(|r| r.authority.as_str())
    }

    /// True if clients of this host must present a certificate.
    pub fn requires_client_cert(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.client_auth)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::certs::tests::write_pair;

    fn gateway(dir: &std::path::Path) -> Gateway {
        let (ac, ak, _) = write_pair(dir, "a", "a.example.test");
        let yaml = format!(
            r#"
listeners: [ {{ name: https, address: "127.0.0.1:0", tls: true }} ]
hosts:
  - hostname: a.example.test
    tls: {{ cert_file: "{ac}", key_file: "{ak}" }}
    routes:
      - matches: [ {{ path: {{ kind: prefix, value: /api }} }} ]
        service: api
        port: 8080
      - matches: [ {{ path: {{ kind: regex, value: "/v[0-9]+/.*" }}, method: POST }} ]
        service: versions.other
        port: 81
      - matches: [ {{ headers: [ {{ name: x-canary, value: "1" }} ] }} ]
        service: canary
        port: 80
  - hostname: "*.example.test"
    routes: [ {{ service: wild, port: 80 }} ]
  - hostname: "*.deep.example.test"
    routes: [ {{ service: deep, port: 80 }} ]
"#
        );
        let g: Gateway = serde_yaml::from_str(&yaml).unwrap();
        g.validate().unwrap();
        g
    }

    fn req(method: &str, path: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().method(method).uri(path);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn hosts_resolve_exact_then_longest_wildcard() {
        let dir = tempfile::tempdir().unwrap();
        let t = GatewayTable::compile(&gateway(dir.path()), "default", None).unwrap();
        assert_eq!(
            t.lookup("a.example.test").unwrap().hostname,
            "a.example.test"
        );
        assert_eq!(
            t.lookup("b.example.test").unwrap().hostname,
            "*.example.test"
        );
        assert_eq!(
            t.lookup("x.deep.example.test").unwrap().hostname,
            "*.deep.example.test"
        );
        assert!(t.lookup("example.test").is_none());
        assert!(t.lookup("other.test").is_none());
        // SNI: a TLS host by name, anything else gets the default cert.
        assert!(t.tls_host(Some("A.example.test")).unwrap().1);
        let (e, by_sni) = t.tls_host(Some("b.example.test")).unwrap();
        assert_eq!((e.hostname.as_str(), by_sni), ("a.example.test", false));
    }

    #[test]
    fn routes_match_path_method_and_headers() {
        let dir = tempfile::tempdir().unwrap();
        let t = GatewayTable::compile(&gateway(dir.path()), "default", None).unwrap();
        let a = t.lookup("a.example.test").unwrap();
        assert_eq!(
            a.route(&req("GET", "/api/x", &[])),
            Some("api.default:8080")
        );
        assert_eq!(
            a.route(&req("POST", "/v2/x", &[])),
            Some("versions.other:81")
        );
        assert_eq!(a.route(&req("GET", "/v2/x", &[])), None);
        assert_eq!(
            a.route(&req("GET", "/", &[("x-canary", "1")])),
            Some("canary.default:80")
        );
        assert_eq!(a.route(&req("GET", "/", &[])), None);
    }

    #[test]
    fn a_bad_pair_is_rejected_naming_the_host_and_unchanged_certs_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let g = gateway(dir.path());
        let first = GatewayTable::compile(&g, "default", None).unwrap();
        let again = GatewayTable::compile(&g, "default", Some(&first)).unwrap();
        let cert = |t: &GatewayTable| t.certs().next().unwrap().clone();
        assert!(Arc::ptr_eq(&cert(&first), &cert(&again)), "carried over");

        let (_, other_key, _) = write_pair(dir.path(), "b", "b.example.test");
        let mut bad = g.clone();
        bad.hosts[0].tls.as_mut().unwrap().key_file = other_key;
        let err = GatewayTable::compile(&bad, "default", Some(&first)).unwrap_err();
        assert_eq!(err.field, "gateway.hosts[0].tls");
        assert_eq!(err.host, "a.example.test");
        assert!(err.to_string().contains("do not match"), "{err}");
    }
}
