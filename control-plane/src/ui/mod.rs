//! `GET /ui`: a web view of the mesh, server-rendered HTML and SVG with no
//! script, no build step and nothing fetched from elsewhere.
//!
//! It shows the service graph (nodes are services; edges carry request
//! rate, success rate and p99 as the calling sidecars measured them, read
//! from Prometheus when `--prometheus-url` is set), the registered services,
//! and every proxy's sync state: the version each type ACKed, the last NACK
//! and its text, connected since, and its workload certificate's expiry
//! (from Prometheus). The page refreshes itself every 10 seconds.
//!
//! Everything a client supplied (node ids, NACK texts) is HTML-escaped.

pub mod graph;
pub mod prometheus;

use crate::registry::Registry;
use crate::resource::Resource;
use crate::status::ProxyStatusTable;
use axum::extract::State;
use axum::response::Html;
use graph::{Edge, Graph, Node};
use prometheus::{PromClient, Sample};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;

/// The window the edge figures are computed over.
const WINDOW: &str = "1m";

/// What the page reads. The API router derives it from its own state
/// (`FromRef<ApiState>` in `api`), so the page does not import the API.
#[derive(Clone, Debug)]
pub struct UiState {
    /// The registry.
    pub registry: Arc<Registry>,
    /// Connected proxies.
    pub status: Arc<ProxyStatusTable>,
    /// Where the edge figures are read. Default: none.
    pub prometheus: Option<PromClient>,
    /// Reads need the API token (`--api-read-token-required`).
    pub read_token_required: bool,
}

/// What the page shows, gathered before rendering.
#[derive(Debug, Default)]
struct View {
    revision: u64,
    services: Vec<(String, usize)>,
    graph: Graph,
    proxies: Vec<Value>,
    cert_expiry: BTreeMap<String, f64>,
    /// Why the Prometheus figures are missing, if they are.
    metrics_note: Option<String>,
}

/// The handler of `GET /ui`. With `--api-read-token-required` the mesh's
/// state is not for anonymous readers, and a browser sends no bearer token:
/// the page is then refused.
pub async fn page(State(state): State<UiState>) -> axum::response::Response {
    use axum::response::IntoResponse;
    if state.read_token_required {
        return (
            http::StatusCode::FORBIDDEN,
            "/ui is off: --api-read-token-required keeps the mesh's state from anonymous readers\n",
        )
            .into_response();
    }
    render_page(&state).await.into_response()
}

async fn render_page(state: &UiState) -> Html<String> {
    let snapshot = state.registry.snapshot();
    let mut view = View {
        revision: state.registry.revision(),
        ..View::default()
    };
    let mut endpoints: BTreeMap<String, usize> = BTreeMap::new();
    for (_, _, entry) in snapshot.iter() {
        match &entry.resource {
            Resource::Service(s) => {
                let name = format!("{}.{}", s.name, s.namespace);
                view.graph.nodes.insert(Node {
                    name: name.clone(),
                    service: true,
                });
                endpoints.entry(name).or_insert(0);
            }
            Resource::Endpoint(e) => {
                *endpoints
                    .entry(format!("{}.{}", e.service, e.namespace))
                    .or_insert(0) += 1;
            }
            _ => {}
        }
    }
    view.services = endpoints.into_iter().collect();
    view.proxies = state
        .status
        .list(view.revision)
        .into_iter()
        .filter_map(|p| serde_json::to_value(p).ok())
        .collect();
    match &state.prometheus {
        Some(prom) => {
            if let Err(e) = add_metrics(prom, &mut view).await {
                tracing::warn!(error = %e, "ui: reading Prometheus failed");
                view.metrics_note = Some(format!("Prometheus did not answer: {e}"));
            }
        }
        None => {
            view.metrics_note = Some(
                "no --prometheus-url: edges and certificate expiry need the Prometheus that scrapes the proxies"
                    .to_string(),
            )
        }
    }
    Html(render(&view))
}

/// Adds the edges (source reporter: what callers saw) and the workload
/// certificates' expiry per proxy node.
async fn add_metrics(prom: &PromClient, view: &mut View) -> Result<(), String> {
    let by = "source_workload, destination_service";
    let rate = prom
        .query(&format!(
            "sum by ({by}) (rate(istio_requests_total{{reporter=\"source\"}}[{WINDOW}]))"
        ))
        .await?;
    // One expression, so both rates come from the same evaluation.
    let ok = prom
        .query(&format!(
            "sum by ({by}) (rate(istio_requests_total{{reporter=\"source\",response_code!~\"5..\"}}[{WINDOW}])) \
             / sum by ({by}) (rate(istio_requests_total{{reporter=\"source\"}}[{WINDOW}]))"
        ))
        .await?;
    let p99 = prom
        .query(&format!(
            "histogram_quantile(0.99, sum by ({by}, le) (rate(istio_request_duration_milliseconds_bucket{{reporter=\"source\"}}[{WINDOW}])))"
        ))
        .await?;
    let key = |labels: &BTreeMap<String, String>| {
        (
            labels.get("source_workload").cloned().unwrap_or_default(),
            labels
                .get("destination_service")
                .cloned()
                .unwrap_or_default(),
        )
    };
    let index = |samples: &[Sample]| -> BTreeMap<(String, String), f64> {
        samples.iter().map(|(l, v)| (key(l), *v)).collect()
    };
    let (ok, p99) = (index(&ok), index(&p99));
    for (labels, rps) in &rate {
        let k = key(labels);
        let to = service_node(&k.1);
        let from = caller_node(&k.0, &view.graph);
        view.graph.nodes.insert(Node {
            name: from.clone(),
            service: view.graph.nodes.iter().any(|n| n.name == from && n.service),
        });
        view.graph.nodes.insert(Node {
            name: to.clone(),
            service: true,
        });
        // No series of successes at all means none succeeded.
        let success = (*rps > 0.0).then(|| ok.get(&k).copied().unwrap_or(0.0).clamp(0.0, 1.0));
        let p99 = p99.get(&k).copied().filter(|v| v.is_finite());
        view.graph.edges.push(Edge {
            from,
            to,
            rps: *rps,
            success,
            p99_ms: p99,
        });
    }
    // `sane_proxy_info{node}` names the proxy behind each scrape target.
    let expiry = prom
        .query("max by (node) (sane_cert_expiry_timestamp_seconds * on(instance) group_left(node) sane_proxy_info)")
        .await?;
    for (labels, v) in expiry {
        if let Some(node) = labels.get("node") {
            view.cert_expiry.insert(node.clone(), v);
        }
    }
    Ok(())
}

/// `echo.default.svc.cluster.local` → `echo.default`.
fn service_node(destination_service: &str) -> String {
    match destination_service.split_once(".svc.") {
        Some((short, _)) => short.to_string(),
        None => destination_service.to_string(),
    }
}

/// A calling workload is drawn as the service of the same name when there
/// is one, else as itself.
fn caller_node(workload: &str, graph: &Graph) -> String {
    let name = if workload.is_empty() {
        "unknown"
    } else {
        workload
    };
    graph
        .nodes
        .iter()
        .find(|n| n.service && n.name.split('.').next() == Some(name))
        .map_or_else(|| name.to_string(), |n| n.name.clone())
}

/// HTML-escapes text and attribute values.
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\n' | '\r' | '\t' => out.push(' '),
            c if c.is_control() => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:24px;color:#222}\
h1{font-size:20px}h2{font-size:16px;margin-top:28px}\
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;font-size:13px}\
.node rect{fill:#e8f0fe;stroke:#3367d6}.node.workload rect{fill:#f1f3f4;stroke:#777}\
.node text{font-size:13px}.edge line{stroke:#555;stroke-width:1.5}.edge text{font-size:11px;fill:#333;text-anchor:end}\
.edge.failing line{stroke:#d93025}.edge.failing text{fill:#d93025}\
tr.nack td{background:#fce8e6}.badge{font-weight:bold;color:#d93025}.ok{color:#188038}.note{color:#777}";

fn render(view: &View) -> String {
    let mut s = String::new();
    let in_sync = view
        .proxies
        .iter()
        .filter(|p| p["connected"] == true)
        .all(|p| p["in_sync"] == true);
    let _ = write!(
        s,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"10\"><title>Sane Mesh</title>\
         <style>{STYLE}</style></head><body><h1>Sane Mesh</h1>\
         <p>Registry revision <b id=\"revision\">{}</b> · {} services · {} proxies · {}</p>",
        view.revision,
        view.services.len(),
        view.proxies.len(),
        if in_sync {
            "<span class=\"ok\">all in sync</span>"
        } else {
            "<span class=\"badge\">not all in sync</span>"
        }
    );
    s.push_str("<h2>Service graph</h2>");
    if let Some(note) = &view.metrics_note {
        let _ = write!(s, "<p class=\"note\">{}</p>", escape(note));
    }
    s.push_str(&view.graph.svg());

    s.push_str(
        "<h2>Services</h2><table id=\"services\"><tr><th>Service</th><th>Endpoints</th></tr>",
    );
    for (name, n) in &view.services {
        let _ = write!(
            s,
            "<tr data-service=\"{0}\"><td>{0}</td><td>{n}</td></tr>",
            escape(name)
        );
    }
    s.push_str("</table>");

    s.push_str(
        "<h2>Proxies</h2><table id=\"proxies\"><tr><th>Proxy</th><th>Workload</th>\
         <th>Connected since</th><th>Sync</th><th>ACKed versions</th><th>Last NACK</th>\
         <th>Certificate expires</th></tr>",
    );
    for p in &view.proxies {
        s.push_str(&proxy_row(p, &view.cert_expiry));
    }
    s.push_str("</table></body></html>");
    s
}

fn proxy_row(p: &Value, cert_expiry: &BTreeMap<String, f64>) -> String {
    let text = |v: &Value| v.as_str().unwrap_or("").to_string();
    let node = text(&p["node"]);
    let mut acked = Vec::new();
    let mut nack: Option<(String, String, String)> = None;
    let mut nacking = false;
    if let Some(types) = p["types"].as_object() {
        for (ty, t) in types {
            acked.push(format!(
                "{ty} {}",
                t["version_acked"].as_str().unwrap_or("–")
            ));
            if let Some(n) = t["last_nack"].as_object() {
                let version = n.get("version").map(text).unwrap_or_default();
                // A NACK of the version still current is an open rejection.
                if t["version_acked"].as_str() != Some(version.as_str()) && t["in_sync"] != true {
                    nacking = true;
                }
                nack = Some((
                    ty.clone(),
                    version,
                    n.get("reason").map(text).unwrap_or_default(),
                ));
            }
        }
    }
    let connected = p["connected"] == true;
    let sync = if !connected {
        "<span class=\"note\">disconnected</span>".to_string()
    } else if nacking {
        "<span class=\"badge\">NACK</span>".to_string()
    } else if p["in_sync"] == true {
        "<span class=\"ok\">in sync</span>".to_string()
    } else {
        "syncing".to_string()
    };
    let nack_cell = match &nack {
        Some((ty, version, reason)) => {
            format!("{} {}: {}", escape(ty), escape(version), escape(reason))
        }
        None => String::new(),
    };
    let expiry = cert_expiry
        .get(&node)
        .filter(|secs| **secs > 0.0)
        .map(|secs| {
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(*secs);
            humantime::format_rfc3339_seconds(t).to_string()
        })
        .unwrap_or_else(|| "–".to_string());
    format!(
        "<tr data-proxy=\"{node}\" class=\"{class}\"><td>{node}</td><td>{workload}</td>\
         <td>{since}</td><td>{sync}</td><td>{acked}</td><td class=\"nack-text\">{nack_cell}</td>\
         <td>{expiry}</td></tr>",
        node = escape(&node),
        class = if nacking { "nack" } else { "" },
        workload = escape(&format!(
            "{}/{}",
            text(&p["namespace"]),
            text(&p["workload"])
        )),
        since = escape(&text(&p["connected_since"])),
        acked = escape(&acked.join(", ")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_nacking_proxy_is_marked_and_its_text_escaped() {
        let p = json!({
            "node": "web-1", "namespace": "default", "workload": "web",
            "connected": true, "in_sync": false, "connected_since": "2026-12-05T10:00:00Z",
            "types": { "Route": {
                "version_acked": "3", "in_sync": false,
                "last_nack": { "version": "4", "reason": "<script>alert(1)</script>\nforged", "at": "x" }
            } }
        });
        let row = proxy_row(&p, &BTreeMap::new());
        assert!(row.contains("class=\"nack\""), "{row}");
        assert!(row.contains("NACK"), "{row}");
        assert!(row.contains("&lt;script&gt;"), "{row}");
        assert!(!row.contains("<script>"), "{row}");
        assert!(!row.contains('\n'), "{row}");
    }

    #[test]
    fn an_old_nack_since_acked_is_history_not_a_mark() {
        let p = json!({
            "node": "web-1", "connected": true, "in_sync": true,
            "types": { "Route": {
                "version_acked": "5", "in_sync": true,
                "last_nack": { "version": "4", "reason": "bad", "at": "x" }
            } }
        });
        let row = proxy_row(&p, &BTreeMap::new());
        assert!(!row.contains("class=\"nack\""), "{row}");
        assert!(row.contains("in sync"), "{row}");
    }

    #[test]
    fn service_names_lose_the_cluster_suffix() {
        assert_eq!(
            service_node("echo.default.svc.cluster.local"),
            "echo.default"
        );
        assert_eq!(service_node("db.example.com"), "db.example.com");
    }
}
