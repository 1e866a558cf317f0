//! Sidecar scopes: the egress hosts that limit what a proxy is sent, as
//! Istio's `Sidecar` resource gives them (converted by
//! `crate::istio::sidecar`).
//!
//! A proxy's scope is chosen as Istio chooses it: a scope of the proxy's
//! namespace whose `selector` matches the workload (its node labels, or the
//! labels of an endpoint it serves), else the scope of its namespace
//! without a selector, else the mesh-wide scope ([`ROOT_NAMESPACE`],
//! without a selector), else none (the whole view). Among several matching
//! scopes of one rank, one watched in the cluster (`--kubernetes`) wins
//! over one applied through the API ([`ScopeSource`]), then the first by
//! name wins. The chosen scope keeps of
//! the proxy's view only the services some egress host admits
//! ([`SidecarScope::admits`]); it never widens the view (`export_to` and
//! the token's namespace still bound it).

use sane_xds_proto::{Endpoint, Service};
use serde::Serialize;
use std::collections::BTreeMap;

/// The namespace whose scope without a selector applies to every proxy
/// that has no scope of its own namespace (Istio's root namespace).
pub const ROOT_NAMESPACE: &str = "istio-system";

/// One egress host entry: `namespace/host`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct EgressHost {
    /// `*` (any namespace), `~` (none), or a namespace name (Istio's `.` is
    /// resolved to the scope's own namespace when converted).
    pub namespace: String,
    /// `*` (every host), `*.suffix` (a wildcard), or a host name: a
    /// service's name in any of its forms (`reviews.prod.svc.cluster.local`,
    /// `reviews.prod`), or one of its `hosts`.
    pub host: String,
}

/// Where a Sidecar came from. Declared in order of precedence: where a
/// watched and an applied Sidecar both select a proxy at the same rank
/// (both for its workload, or both for its whole namespace), the watched
/// one scopes it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ScopeSource {
    /// Watched in the cluster (`--kubernetes`): what `kubectl apply` set.
    Kubernetes,
    /// Applied through the API (`sanectl apply`) and stored.
    #[default]
    Api,
}

/// What one Sidecar lets the proxies it selects see.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct SidecarScope {
    /// The Sidecar's namespace: the proxies it may apply to.
    pub namespace: String,
    /// Where it came from (it sorts before the name: see [`ScopeSource`]).
    #[serde(skip)]
    pub source: ScopeSource,
    /// The Sidecar's name.
    pub name: String,
    /// `workloadSelector.labels`; `None` applies to the whole namespace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selector: Option<BTreeMap<String, String>>,
    /// The hosts admitted; a service none admits is left out of the view.
    pub egress: Vec<EgressHost>,
}

/// Every scope, with a generation that grows whenever the set changes (so
/// views computed under an older set are recomputed).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scopes {
    /// Increases with every change of `scopes`; 0 for none ever.
    pub generation: u64,
    /// The scopes, ordered by namespace, source and name.
    pub scopes: Vec<SidecarScope>,
}

/// The scopes of both sources, each marked with its source, for
/// [`Scopes::next`]. A watched and an applied Sidecar of one namespace
/// with the same selector (the same proxies at the same rank) are a
/// conflict: the watched one wins (see [`ScopeSource`]) and the conflict
/// is logged, naming both.
pub fn merge(applied: &[SidecarScope], watched: &[SidecarScope]) -> Vec<SidecarScope> {
    let mark = |s: &SidecarScope, source| SidecarScope {
        source,
        ..s.clone()
    };
    for w in watched {
        for a in applied.iter().filter(|a| {
            a.namespace == w.namespace
                && a.selector.as_ref().filter(|s| !s.is_empty())
                    == w.selector.as_ref().filter(|s| !s.is_empty())
        }) {
            tracing::warn!(
                namespace = %w.namespace,
                watched = %w.name,
                applied = %a.name,
                "a Sidecar watched in the cluster and one applied through the API select the same proxies; the watched one scopes them"
            );
        }
    }
    watched
        .iter()
        .map(|s| mark(s, ScopeSource::Kubernetes))
        .chain(applied.iter().map(|s| mark(s, ScopeSource::Api)))
        .collect()
}

// === impl SidecarScope ===

impl SidecarScope {
    /// True if some egress host admits `service`.
    pub fn admits(&self, service: &Service) -> bool {
        let ns = service.namespace();
        let names = service.host_names();
        self.egress.iter().any(|e| {
            let ns_ok = e.namespace == "*" || e.namespace == ns;
            let host_ok = match e.host.as_str() {
                "*" => true,
                h => match h.strip_prefix('*') {
                    // `*.example.com`: any name ending in `.example.com`.
                    Some(suffix) => names.iter().any(|n| n.ends_with(suffix)),
                    None => names.iter().any(|n| n == h),
                },
            };
            ns_ok && host_ok
        })
    }

    /// True if the selector matches `labels` (every selector label present
    /// with its value).
    fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
        selector.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

// === impl Scopes ===

impl Scopes {
    /// The scope of a proxy of `namespace` whose node carries `labels` and
    /// which serves `served` (see the module docs), if any.
    pub fn for_proxy<'a>(
        &'a self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
        served: &[&Endpoint],
    ) -> Option<&'a SidecarScope> {
        let own = || self.scopes.iter().filter(move |s| s.namespace == namespace);
        let workload = own().find(|s| {
            s.selector.as_ref().is_some_and(|sel| {
                !sel.is_empty()
                    && (SidecarScope::selects(sel, labels)
                        || served.iter().any(|e| SidecarScope::selects(sel, &e.labels)))
            })
        });
        workload
            .or_else(|| own().find(|s| s.selector.is_none()))
            .or_else(|| {
                self.scopes
                    .iter()
                    .find(|s| s.namespace == ROOT_NAMESPACE && s.selector.is_none())
            })
    }

    /// The next set: `scopes` (sorted) under a new generation if it differs
    /// from this one, else this one.
    pub fn next(&self, mut scopes: Vec<SidecarScope>) -> Scopes {
        scopes.sort();
        if scopes == self.scopes {
            return self.clone();
        }
        Scopes {
            generation: self.generation + 1,
            scopes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(ns: &str, name: &str, hosts: &[&str]) -> Service {
        Service {
            name: name.into(),
            namespace: ns.into(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            ..Default::default()
        }
    }

    fn scope(
        ns: &str,
        name: &str,
        selector: Option<&[(&str, &str)]>,
        egress: &[&str],
    ) -> SidecarScope {
        SidecarScope {
            namespace: ns.into(),
            source: ScopeSource::Api,
            name: name.into(),
            selector: selector.map(|s| {
                s.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            }),
            egress: egress
                .iter()
                .map(|e| {
                    let (ns, host) = e.split_once('/').unwrap();
                    EgressHost {
                        namespace: ns.into(),
                        host: host.into(),
                    }
                })
                .collect(),
        }
    }

    #[test]
    fn egress_hosts_admit_by_namespace_and_host() {
        let reviews = service("prod", "reviews", &[]);
        let ratings = service("backend", "ratings", &[]);
        let external = service("prod", "httpbin", &["httpbin.org"]);
        let own = scope("prod", "s", None, &["prod/*"]);
        assert!(own.admits(&reviews) && own.admits(&external) && !own.admits(&ratings));
        let named = scope("prod", "s", None, &["*/ratings.backend.svc.cluster.local"]);
        assert!(named.admits(&ratings) && !named.admits(&reviews));
        let wildcard = scope("prod", "s", None, &["*/*.org"]);
        assert!(wildcard.admits(&external) && !wildcard.admits(&reviews));
        let all = scope("prod", "s", None, &["*/*"]);
        assert!(all.admits(&ratings));
        let none = scope("prod", "s", None, &["~/*"]);
        assert!(!none.admits(&reviews));
    }

    #[test]
    fn workload_beats_namespace_beats_root() {
        let scopes = Scopes::default().next(vec![
            scope(ROOT_NAMESPACE, "default", None, &["*/*"]),
            scope("prod", "default", None, &["prod/*"]),
            scope(
                "prod",
                "ratings",
                Some(&[("app", "ratings")][..]),
                &["backend/*"],
            ),
        ]);
        assert_eq!(scopes.generation, 1);
        let labels = |app: &str| BTreeMap::from([("app".to_string(), app.to_string())]);
        let pick = |ns: &str, app: &str| {
            scopes
                .for_proxy(ns, &labels(app), &[])
                .map(|s| format!("{}/{}", s.namespace, s.name))
        };
        assert_eq!(pick("prod", "ratings").as_deref(), Some("prod/ratings"));
        assert_eq!(pick("prod", "reviews").as_deref(), Some("prod/default"));
        assert_eq!(pick("other", "x").as_deref(), Some("istio-system/default"));
        // The labels of a served endpoint select too.
        let served = Endpoint {
            labels: labels("ratings"),
            ..Default::default()
        };
        let s = scopes.for_proxy("prod", &BTreeMap::new(), &[&served]);
        assert_eq!(s.map(|s| s.name.as_str()), Some("ratings"));
        // The same set keeps its generation.
        assert_eq!(scopes.next(scopes.scopes.clone()).generation, 1);
        assert!(Scopes::default()
            .for_proxy("prod", &labels("x"), &[])
            .is_none());
    }

    #[test]
    fn a_watched_sidecar_wins_over_an_applied_one_at_the_same_rank() {
        let applied = vec![
            scope("prod", "a-applied", None, &["prod/*"]),
            scope("prod", "web", Some(&[("app", "web")][..]), &["*/*"]),
        ];
        let watched = vec![scope("prod", "z-watched", None, &["backend/*"])];
        let scopes = Scopes::default().next(merge(&applied, &watched));
        assert_eq!(scopes.scopes.len(), 3, "both sources are kept");
        let labels = |app: &str| BTreeMap::from([("app".to_string(), app.to_string())]);
        // Namespace rank: the watched one, though it sorts after by name.
        let s = scopes.for_proxy("prod", &labels("x"), &[]).unwrap();
        assert_eq!(
            (s.name.as_str(), s.source),
            ("z-watched", ScopeSource::Kubernetes)
        );
        // A workload scope still beats a namespace scope, whatever its source.
        let s = scopes.for_proxy("prod", &labels("web"), &[]).unwrap();
        assert_eq!((s.name.as_str(), s.source), ("web", ScopeSource::Api));
        // A source changing alone is a new set.
        let swapped = scopes.next(merge(&watched, &applied));
        assert_eq!(swapped.generation, 2);
    }

    fn names(view: &crate::xds::view::ProxyView, t: sane_xds_proto::TypeUrl) -> Vec<&str> {
        view.resources(t).keys().map(String::as_str).collect()
    }

    #[test]
    fn sidecar_scopes_keep_only_their_egress_hosts() {
        use crate::xds::test_support::snapshot;
        use crate::xds::view::{NodeSpec, ProxyView, ViewCache};
        use sane_xds_proto::TypeUrl;
        use std::sync::Arc;
        let host = |ns: &str, host: &str| EgressHost {
            namespace: ns.into(),
            host: host.into(),
        };
        let scopes = Scopes::default().next(vec![
            SidecarScope {
                namespace: "shop".into(),
                source: ScopeSource::Api,
                name: "default".into(),
                selector: None,
                egress: vec![host("shop", "*"), host("istio-system", "*")],
            },
            SidecarScope {
                namespace: "shop".into(),
                source: ScopeSource::Api,
                name: "web".into(),
                selector: Some([("app".to_string(), "web".to_string())].into()),
                egress: vec![host("billing", "pay.billing.svc.cluster.local")],
            },
        ]);
        let snap = snapshot().with_scopes(Arc::new(scopes));
        let spec = NodeSpec::new("p1", "shop", &["*"]);
        let view = ProxyView::compute(&snap, &spec);
        assert_eq!(names(&view, TypeUrl::Service), ["shop/web"]);
        // Its destination is out of scope: the route is left out too.
        assert!(names(&view, TypeUrl::Route).is_empty());
        assert_eq!(view.scope.as_deref(), Some("shop/default"));
        let mut web = spec.clone();
        web.labels = [("app".to_string(), "web".to_string())].into();
        let view = ProxyView::compute(&snap, &web);
        assert_eq!(names(&view, TypeUrl::Service), ["billing/pay"]);
        assert_eq!(
            names(&view, TypeUrl::Endpoint),
            ["billing/pay/10.0.0.4:8080"]
        );
        // The cache tells the two apart, and a new set of scopes apart
        // from the old one at the same revision.
        let cache = ViewCache::default();
        assert_eq!(cache.view(&snap, &web).services.len(), 1);
        assert_eq!(cache.view(&snap, &spec).services.len(), 1);
        let unscoped = snap.with_scopes(Arc::new(Scopes {
            generation: 2,
            scopes: Vec::new(),
        }));
        assert!(unscoped.is_newer_than(view.revision, view.scopes_generation));
        assert_eq!(cache.view(&unscoped, &web).services.len(), 4);
    }
}
