//! Instant queries against the Prometheus that scrapes the proxies: where
//! the web view's edges and certificate expiries come from, as Kiali reads
//! its graph from Prometheus rather than from the proxies themselves.

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// A client of one Prometheus server's HTTP API.
#[derive(Clone)]
pub struct PromClient {
    base: String,
    http: Client<HttpConnector, Empty<Bytes>>,
}

/// One sample of an instant vector: its labels and value.
pub type Sample = (BTreeMap<String, String>, f64);

/// The longest a query may take before the page is rendered without it.
const QUERY_TIMEOUT: Duration = Duration::from_secs(3);

// === impl PromClient ===

impl PromClient {
    /// A client of the Prometheus at `base` (`http://host:port`).
    pub fn new(base: &str) -> PromClient {
        PromClient {
            base: base.trim_end_matches('/').to_string(),
            http: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// Runs `promql` as an instant query.
    pub async fn query(&self, promql: &str) -> Result<Vec<Sample>, String> {
        let uri = format!("{}/api/v1/query?query={}", self.base, encode(promql));
        let req = Request::get(&uri)
            .body(Empty::new())
            .map_err(|e| format!("{uri}: {e}"))?;
        let resp = tokio::time::timeout(QUERY_TIMEOUT, self.http.request(req))
            .await
            .map_err(|_| format!("{}: no answer within {QUERY_TIMEOUT:?}", self.base))?
            .map_err(|e| format!("{}: {e}", self.base))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("{}: {e}", self.base))?
            .to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| format!("{}: {status}: not JSON: {e}", self.base))?;
        if json["status"] != "success" {
            return Err(format!("{}: {status}: {}", self.base, json["error"]));
        }
        let result = json["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        Ok(result
            .iter()
            .filter_map(|s| {
                let labels = s["metric"]
                    .as_object()?
                    .iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect();
                let value = s["value"][1].as_str()?.parse::<f64>().ok()?;
                Some((labels, value))
            })
            .collect())
    }
}

impl fmt::Debug for PromClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PromClient")
            .field("base", &self.base)
            .finish()
    }
}

/// Percent-encodes a query-string value (RFC 3986 unreserved kept).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn queries_are_percent_encoded() {
        assert_eq!(
            super::encode(r#"sum(x{a="b"}[1m])"#),
            "sum%28x%7Ba%3D%22b%22%7D%5B1m%5D%29"
        );
    }
}
