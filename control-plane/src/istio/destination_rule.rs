//! `DestinationRule` → subsets (labels routes select endpoints by) and a
//! Sane [`DestinationPolicy`]; `ServiceEntry` → a Sane [`Service`] and its
//! [`Endpoint`]s.
//!
//! Sane Mesh carries HTTP/1.1 between sidecars over multiplexed HTTP/2 (as
//! Istio's `h2UpgradePolicy: UPGRADE`), so one Istio HTTP/1.1 connection
//! is one request in flight: `maxConnections` also caps requests in flight
//! (with `http1MaxPendingRequests` waiting), which is what Istio's circuit
//! breaking does for an HTTP/1.1 service.

use super::common::{duration_ms, relative, resolve_host, sane_name, Report, P};
use super::error::IstioError;
use super::object::Object;
use super::virtual_service::export_to;
use super::{Context, Output};
use crate::resource::Resource;
use sane_xds_proto::{
    CircuitBreaker, DestinationPolicy, Endpoint, LoadBalancer, OutlierDetection, PeerProtocol,
    Protocol, Service, ServicePort,
};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// Subset labels by service (`name.namespace`) and subset name.
#[derive(Debug, Default)]
pub struct Subsets(BTreeMap<(String, String), BTreeMap<String, String>>);

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
struct Spec {
    host: String,
    traffic_policy: Option<TrafficPolicy>,
    subsets: Vec<Subset>,
    export_to: Vec<String>,
    workload_selector: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
struct Subset {
    name: String,
    labels: BTreeMap<String, String>,
    traffic_policy: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
struct TrafficPolicy {
    load_balancer: Option<LoadBalancerSettings>,
    connection_pool: Option<ConnectionPool>,
    outlier_detection: Option<Outlier>,
    tls: Option<ClientTls>,
    port_level_settings: Option<Value>,
    tunnel: Option<Value>,
    proxy_protocol: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
struct LoadBalancerSettings {
    simple: Option<String>,
    consistent_hash: Option<ConsistentHash>,
    locality_lb_setting: Option<Value>,
    warmup_duration_secs: Option<Value>,
    warmup: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
struct ConsistentHash {
    http_header_name: Option<String>,
    http_cookie: Option<Value>,
    use_source_ip: Option<Value>,
    http_query_parameter_name: Option<Value>,
    ring_hash: Option<Value>,
    maglev: Option<Value>,
    minimum_ring_size: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct ConnectionPool {
    tcp: Option<TcpSettings>,
    http: Option<HttpSettings>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
struct TcpSettings {
    max_connections: Option<u32>,
    connect_timeout: Option<String>,
    tcp_keepalive: Option<Value>,
    max_connection_duration: Option<Value>,
    idle_timeout: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
struct HttpSettings {
    http1_max_pending_requests: Option<u32>,
    http2_max_requests: Option<u32>,
    max_requests_per_connection: Option<u32>,
    max_retries: Option<u32>,
    idle_timeout: Option<String>,
    h2_upgrade_policy: Option<String>,
    use_client_protocol: Option<bool>,
    max_concurrent_streams: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
struct Outlier {
    consecutive_errors: Option<u32>,
    consecutive_5xx_errors: Option<u32>,
    consecutive_gateway_errors: Option<u32>,
    consecutive_local_origin_failures: Option<Value>,
    split_external_local_origin_errors: Option<Value>,
    interval: Option<String>,
    base_ejection_time: Option<String>,
    max_ejection_percent: Option<u32>,
    min_health_percent: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
struct ClientTls {
    mode: Option<String>,
    client_certificate: Option<Value>,
    private_key: Option<Value>,
    ca_certificates: Option<Value>,
    credential_name: Option<Value>,
    subject_alt_names: Option<Value>,
    sni: Option<Value>,
    insecure_skip_verify: Option<Value>,
    ca_crl: Option<Value>,
}

// === impl Subsets ===

impl Subsets {
    /// The labels of subset `name` of `service` (`name.namespace`).
    pub fn labels(&self, service: &str, name: &str) -> Option<&BTreeMap<String, String>> {
        self.0.get(&(service.to_string(), name.to_string()))
    }
}

/// Converts a DestinationRule: records its subsets, and returns the
/// destination policy its `trafficPolicy` stands for.
pub(crate) fn destination_rule(
    object: &Object,
    ctx: &Context,
    subsets: &mut Subsets,
    out: &mut Output,
) -> Result<(), IstioError> {
    let spec: Spec = object.spec()?;
    let root = P::spec();
    let report = &mut out.report;
    if spec.host.contains('*') {
        report.unsupported(
            &root.f("host"),
            "wildcard hosts: a Sane destination policy names one service",
        );
        return Ok(());
    }
    let service = resolve_host(object, &root.f("host"), &spec.host, ctx)?;
    export_to(&spec.export_to, &root, report);
    report.if_set(
        &root,
        "workloadSelector",
        &spec.workload_selector,
        "Sane policies apply to every caller",
    );
    for (i, s) in spec.subsets.iter().enumerate() {
        let sp = root.i("subsets", i);
        if s.name.is_empty() {
            return Err(IstioError::Malformed {
                object: Box::new(object.reference()),
                message: format!("{}.name: is required", sp.as_str()),
            });
        }
        report.if_set(
            &sp,
            "trafficPolicy",
            &s.traffic_policy,
            "Sane destination policies apply to the whole service, not per subset",
        );
        subsets
            .0
            .insert((service.clone(), s.name.clone()), s.labels.clone());
    }
    let Some(tp) = &spec.traffic_policy else {
        return Ok(());
    };
    let mut policy = DestinationPolicy {
        name: format!("{}.dr", sane_name(&object.name, None)),
        namespace: object.namespace.clone(),
        service: relative(&service, &object.namespace),
        ..Default::default()
    };
    traffic_policy(object, tp, &root.f("trafficPolicy"), &mut policy, report)?;
    out.resources.push(Resource::Policy(policy));
    Ok(())
}

fn traffic_policy(
    object: &Object,
    tp: &TrafficPolicy,
    p: &P,
    policy: &mut DestinationPolicy,
    report: &mut Report,
) -> Result<(), IstioError> {
    report.if_set(
        p,
        "portLevelSettings",
        &tp.port_level_settings,
        "Sane destination policies apply to every port of the service",
    );
    report.if_set(p, "tunnel", &tp.tunnel, "Sane does not tunnel");
    report.if_set(
        p,
        "proxyProtocol",
        &tp.proxy_protocol,
        "Sane does not send PROXY protocol headers",
    );
    if let Some(lb) = &tp.load_balancer {
        let lp = p.f("loadBalancer");
        report.if_set(
            &lp,
            "localityLbSetting",
            &lb.locality_lb_setting,
            "Sane has no localities",
        );
        report.if_set(
            &lp,
            "warmupDurationSecs",
            &lb.warmup_duration_secs,
            "Sane has no slow start",
        );
        report.if_set(&lp, "warmup", &lb.warmup, "Sane has no slow start");
        match lb.simple.as_deref() {
            None | Some("UNSPECIFIED") => {}
            Some("ROUND_ROBIN") => policy.load_balancer = LoadBalancer::RoundRobin.into(),
            Some("LEAST_REQUEST") | Some("LEAST_CONN") => {
                policy.load_balancer = LoadBalancer::LeastRequest.into()
            }
            Some(other) => report.unsupported(
                &lp.f("simple"),
                format!(
                    "{other:?} (Sane has ROUND_ROBIN and LEAST_REQUEST; its default is peak-EWMA)"
                ),
            ),
        }
        if let Some(ch) = &lb.consistent_hash {
            let cp = lp.f("consistentHash");
            for (field, v) in [
                ("httpCookie", &ch.http_cookie),
                ("useSourceIp", &ch.use_source_ip),
                ("httpQueryParameterName", &ch.http_query_parameter_name),
                ("ringHash", &ch.ring_hash),
                ("maglev", &ch.maglev),
                ("minimumRingSize", &ch.minimum_ring_size),
            ] {
                report.if_set(&cp, field, v, "Sane hashes on one request header only");
            }
            if let Some(h) = &ch.http_header_name {
                policy.load_balancer = LoadBalancer::ConsistentHash.into();
                policy.hash_header = h.to_ascii_lowercase();
            }
        }
    }
    if let Some(pool) = &tp.connection_pool {
        let pp = p.f("connectionPool");
        let mut cb = CircuitBreaker::default();
        if let Some(tcp) = &pool.tcp {
            let tp = pp.f("tcp");
            report.if_set(
                &tp,
                "tcpKeepalive",
                &tcp.tcp_keepalive,
                "Sane does not set TCP keep-alives",
            );
            report.if_set(
                &tp,
                "maxConnectionDuration",
                &tcp.max_connection_duration,
                "Sane does not age out connections",
            );
            report.if_set(
                &tp,
                "idleTimeout",
                &tcp.idle_timeout,
                "use connectionPool.http.idleTimeout",
            );
            if let Some(t) = &tcp.connect_timeout {
                policy.connect_timeout_ms = duration_ms(object, &tp.f("connectTimeout"), t)?;
            }
            if let Some(n) = tcp.max_connections {
                cb.max_connections = Some(n.max(1));
                cb.max_requests = Some(n.max(1));
                report.note(
                    &tp.f("maxConnections"),
                    "also caps requests in flight: Sane multiplexes HTTP/1.1 between sidecars \
                     (unless h2UpgradePolicy is DO_NOT_UPGRADE), where one Istio HTTP/1.1 \
                     connection is one request in flight",
                );
            }
        }
        if let Some(http) = &pool.http {
            let hp = pp.f("http");
            report.if_set(
                &hp,
                "maxRequestsPerConnection",
                &http.max_requests_per_connection,
                "Sane keeps upstream connections until idle",
            );
            // Sane's default is Istio's UPGRADE; DO_NOT_UPGRADE and
            // `useClientProtocol` (which wins over UPGRADE in Istio) keep
            // HTTP/1.1 requests HTTP/1.1 between the sidecars.
            let mut preserve = http.use_client_protocol == Some(true);
            match http.h2_upgrade_policy.as_deref() {
                None | Some("UPGRADE") => {}
                Some("DEFAULT") => report.note(
                    &hp.f("h2UpgradePolicy"),
                    "Sane's default: HTTP/1.1 requests go between sidecars as HTTP/2 \
                     (DO_NOT_UPGRADE keeps them HTTP/1.1)",
                ),
                Some("DO_NOT_UPGRADE") => preserve = true,
                Some(other) => report.unsupported(
                    &hp.f("h2UpgradePolicy"),
                    format!("{other:?} (Istio's values are DEFAULT, DO_NOT_UPGRADE and UPGRADE)"),
                ),
            }
            if preserve {
                policy.peer_protocol = PeerProtocol::Preserve.into();
            }
            report.if_set(
                &hp,
                "maxConcurrentStreams",
                &http.max_concurrent_streams,
                "set on the listener's limits",
            );
            if let Some(n) = http.http1_max_pending_requests {
                cb.max_pending_requests = n;
            }
            if let Some(n) = http.http2_max_requests {
                cb.max_requests = Some(cb.max_requests.map_or(n, |m| m.min(n)).max(1));
            }
            if let Some(n) = http.max_retries {
                cb.max_retries = Some(n);
            }
            if let Some(t) = &http.idle_timeout {
                policy.idle_timeout_ms = duration_ms(object, &hp.f("idleTimeout"), t)?;
            }
        }
        if cb != CircuitBreaker::default() {
            policy.circuit_breaker = Some(cb);
        }
    }
    if let Some(o) = &tp.outlier_detection {
        let op = p.f("outlierDetection");
        report.if_set(
            &op,
            "consecutiveLocalOriginFailures",
            &o.consecutive_local_origin_failures,
            "Sane counts local and upstream failures together",
        );
        report.if_set(
            &op,
            "splitExternalLocalOriginErrors",
            &o.split_external_local_origin_errors,
            "Sane counts local and upstream failures together",
        );
        report.if_set(
            &op,
            "minHealthPercent",
            &o.min_health_percent,
            "Sane bounds ejection by maxEjectionPercent only",
        );
        if o.interval.is_some() {
            report.unsupported(
                &op.f("interval"),
                "Sane ejects at the failure that crosses the threshold and returns an endpoint \
                 when its ejection time is over; there is no sweep interval",
            );
        }
        let mut od = OutlierDetection {
            consecutive_5xx: o.consecutive_5xx_errors,
            // The deprecated field counted 502, 503 and 504.
            consecutive_gateway_errors: o
                .consecutive_gateway_errors
                .or(o.consecutive_errors)
                .unwrap_or(0),
            max_ejection_percent: o.max_ejection_percent,
            ..Default::default()
        };
        if o.consecutive_5xx_errors.is_none() && od.consecutive_gateway_errors > 0 {
            // Only the gateway-error count was asked for.
            od.consecutive_5xx = Some(0);
        }
        if let Some(t) = &o.base_ejection_time {
            od.base_ejection_time_ms = duration_ms(object, &op.f("baseEjectionTime"), t)?;
        }
        policy.outlier_detection = Some(od);
    }
    if let Some(tls) = &tp.tls {
        let tp = p.f("tls");
        match tls.mode.as_deref() {
            None | Some("ISTIO_MUTUAL") => report.note(
                &tp.f("mode"),
                "ISTIO_MUTUAL: sidecar-to-sidecar hops are mutual TLS whenever the proxies have identities",
            ),
            Some(m) => report.unsupported(
                &tp.f("mode"),
                format!("{m:?}: Sane always uses mutual TLS between sidecars and does not originate TLS"),
            ),
        }
        for (field, v) in [
            ("clientCertificate", &tls.client_certificate),
            ("privateKey", &tls.private_key),
            ("caCertificates", &tls.ca_certificates),
            ("credentialName", &tls.credential_name),
            ("subjectAltNames", &tls.subject_alt_names),
            ("sni", &tls.sni),
            ("insecureSkipVerify", &tls.insecure_skip_verify),
            ("caCrl", &tls.ca_crl),
        ] {
            report.if_set(&tp, field, v, "Sane does not originate TLS");
        }
    }
    Ok(())
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
struct EntrySpec {
    hosts: Vec<String>,
    addresses: Vec<String>,
    ports: Vec<EntryPort>,
    location: Option<String>,
    resolution: Option<String>,
    endpoints: Vec<WorkloadEntry>,
    workload_selector: Option<Value>,
    export_to: Vec<String>,
    subject_alt_names: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
struct EntryPort {
    number: u32,
    protocol: Option<String>,
    name: String,
    target_port: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
struct WorkloadEntry {
    address: String,
    ports: BTreeMap<String, u32>,
    labels: BTreeMap<String, String>,
    network: Option<Value>,
    locality: Option<Value>,
    weight: Option<u32>,
    service_account: Option<String>,
}

/// Converts a ServiceEntry into a service (named like the object, answering
/// to its `hosts`) and its endpoints.
pub(crate) fn service_entry(object: &Object, out: &mut Output) -> Result<(), IstioError> {
    let spec: EntrySpec = object.spec()?;
    let root = P::spec();
    let report = &mut out.report;
    export_to(&spec.export_to, &root, report);
    report.if_set(
        &root,
        "workloadSelector",
        &spec.workload_selector,
        "Sane endpoints are listed, not selected",
    );
    report.if_set(
        &root,
        "subjectAltNames",
        &spec.subject_alt_names,
        "Sane does not originate TLS",
    );
    let mut service = Service {
        name: sane_name(&object.name, None),
        namespace: object.namespace.clone(),
        ..Default::default()
    };
    for (i, h) in spec.hosts.iter().enumerate() {
        if h.contains('*') {
            report.unsupported(
                &root.i("hosts", i),
                "wildcard hosts: a Sane service has exact host names",
            );
        } else {
            service.hosts.push(h.to_ascii_lowercase());
        }
    }
    for (i, a) in spec.addresses.iter().enumerate() {
        if a.parse::<IpAddr>().is_ok() {
            service.addresses.push(a.clone());
        } else {
            report.unsupported(
                &root.i("addresses", i),
                format!("{a:?}: Sane service addresses are single IPs"),
            );
        }
    }
    for (i, port) in spec.ports.iter().enumerate() {
        let pp = root.i("ports", i);
        let protocol = match port
            .protocol
            .as_deref()
            .unwrap_or("TCP")
            .to_ascii_uppercase()
            .as_str()
        {
            "HTTP" => Protocol::Http,
            "HTTP2" => Protocol::Http2,
            "GRPC" | "GRPC-WEB" => Protocol::Grpc,
            "TCP" => Protocol::Tcp,
            p @ ("HTTPS" | "TLS" | "MONGO" | "MYSQL" | "REDIS") => {
                report.note(&pp.f("protocol"), format!("{p}: carried as opaque TCP"));
                Protocol::Tcp
            }
            other => {
                report.unsupported(
                    &pp.f("protocol"),
                    format!(
                        "{other:?}: Sane carries HTTP, HTTP/2, gRPC and TCP; the port is left out"
                    ),
                );
                continue;
            }
        };
        service.ports.push(ServicePort {
            name: port.name.clone(),
            port: port.number,
            protocol: protocol.into(),
            target_port: port.target_port.unwrap_or(0),
        });
    }
    match spec.location.as_deref() {
        None | Some("MESH_EXTERNAL") | Some("MESH_INTERNAL") => {}
        Some(other) => report.unsupported(&root.f("location"), format!("{other:?}")),
    }
    let resolution = spec.resolution.as_deref().unwrap_or("NONE");
    match resolution {
        "STATIC" | "DNS" | "DNS_ROUND_ROBIN" => {}
        other => report.unsupported(
            &root.f("resolution"),
            format!("{other:?}: Sane sends to listed endpoint addresses only"),
        ),
    }
    if spec.endpoints.is_empty() && resolution != "STATIC" {
        report.unsupported(
            &root.f("resolution"),
            format!("{resolution}: without endpoints the hosts would be resolved by DNS, which Sane does not do"),
        );
    }
    out.resources.push(Resource::Service(service.clone()));
    for (i, e) in spec.endpoints.iter().enumerate() {
        let ep = root.i("endpoints", i);
        report.if_set(&ep, "network", &e.network, "Sane has one network");
        report.if_set(&ep, "locality", &e.locality, "Sane has no localities");
        if e.address.parse::<IpAddr>().is_err() {
            report.unsupported(
                &ep.f("address"),
                format!(
                    "{:?}: Sane endpoints are IP addresses (no DNS resolution)",
                    e.address
                ),
            );
            continue;
        }
        let identity = e
            .service_account
            .as_ref()
            .map(|sa| format!("spiffe://cluster.local/ns/{}/sa/{sa}", object.namespace))
            .unwrap_or_default();
        out.resources.push(Resource::Endpoint(Endpoint {
            service: service.name.clone(),
            namespace: object.namespace.clone(),
            address: e.address.clone(),
            ports: e.ports.clone(),
            labels: e.labels.clone(),
            weight: e.weight.unwrap_or(0),
            identity,
            ..Default::default()
        }));
    }
    Ok(())
}
