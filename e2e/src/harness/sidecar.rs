//! [`Sidecar`]: one running `sane-proxy`, its config file and its admin port.
//!
//! The proxy's contract, as the harness uses it: `sane-proxy --config FILE`
//! prints `listening name=admin addr=…` and one line per listener; the admin
//! port answers `/ready` (200 once ready), `/live`, `/metrics`,
//! `/config_dump` and `POST /drain`; SIGHUP reloads FILE; SIGTERM drains and
//! exits 0.

use super::eventually::eventually;
use super::http::{empty, get, http1_client, request, send, Reply};
use super::process::{Proc, Signal};
use http::Method;
use sane_xds_proto::Bootstrap;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long a starting proxy may take to bind and become ready.
pub const READY_DEADLINE: Duration = Duration::from_secs(15);

/// A running proxy.
#[derive(Debug)]
pub struct Sidecar {
    /// Name in the mesh (also the file name of its config).
    pub name: String,
    /// The process.
    pub proc: Proc,
    /// The YAML file the proxy reads; rewrite it with [`Sidecar::reload`].
    pub config_path: PathBuf,
    /// The configuration last written to `config_path`.
    pub bootstrap: Bootstrap,
    /// The admin server's address.
    pub admin: SocketAddr,
    /// Every listener's bound address, by listener name.
    pub listeners: HashMap<String, SocketAddr>,
}

/// Writes `bootstrap` to `path` as YAML, atomically (a temp file renamed over
/// it), so a proxy watching the file never reads half of it.
pub fn write_bootstrap(path: &Path, bootstrap: &Bootstrap) {
    let yaml = serde_yaml::to_string(bootstrap).expect("a Bootstrap serializes to YAML");
    write_config_text(path, &yaml);
}

/// Writes `text` to `path` atomically, like [`write_bootstrap`], but verbatim:
/// for configs the typed structs cannot express (unknown fields, bad YAML).
pub fn write_config_text(path: &Path, text: &str) {
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("writing {}: {e}", tmp.display()));
    std::fs::rename(&tmp, path)
        .unwrap_or_else(|e| panic!("renaming {} to {}: {e}", tmp.display(), path.display()));
}

/// Sums the samples of metric `name` whose labels include all of `labels`,
/// in Prometheus text format. `None` if no sample matches.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut sum = None;
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (metric, series_labels) = match series.split_once('{') {
            Some((m, rest)) => (m, parse_labels(rest.trim_end_matches('}'))),
            None => (series, Vec::new()),
        };
        if metric != name {
            continue;
        }
        let matches = labels
            .iter()
            .all(|(k, v)| series_labels.iter().any(|(sk, sv)| sk == k && sv == v));
        if let (true, Ok(v)) = (matches, value.parse::<f64>()) {
            *sum.get_or_insert(0.0) += v;
        }
    }
    sum
}

/// Parses `a="x",b="y\"z"` into pairs.
fn parse_labels(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| *c == ',' || c.is_whitespace()).is_some() {}
        let key: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=')).collect();
        if key.is_empty() || chars.next() != Some('=') || chars.next() != Some('"') {
            return out;
        }
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => break,
                },
                '"' => break,
                c => value.push(c),
            }
        }
        out.push((key.trim().to_string(), value));
    }
}

// === impl Sidecar ===

impl Sidecar {
    /// Writes `bootstrap` to `<dir>/<name>.yaml`, starts the proxy on it, and
    /// waits until every listener is bound and `/ready` answers 200.
    /// Panics if the config is invalid or the proxy does not get ready.
    pub async fn start(proxy_bin: &Path, dir: &Path, name: &str, bootstrap: Bootstrap) -> Sidecar {
        if let Err(e) = bootstrap.validate() {
            panic!("the harness built an invalid config for {name}: {e}");
        }
        let config_path = dir.join(format!("{name}.yaml"));
        write_bootstrap(&config_path, &bootstrap);
        let args = [OsStr::new("--config"), config_path.as_os_str()];
        // Every mesh runs both of the proxy's schedulers: the client sidecar
        // on one thread (current-thread runtime, as `--workers 1` in
        // production and the benchmark), the others one worker per core.
        let env: &[(&str, &str)] = if name == crate::harness::CLIENT {
            &[("SANE_PROXY_WORKERS", "1")]
        } else {
            &[]
        };
        let proc = Proc::spawn(&format!("sane-proxy[{name}]"), proxy_bin, args, env);
        let mut names = vec!["admin"];
        names.extend(
            bootstrap
                .resources
                .listeners
                .iter()
                .map(|l| l.name.as_str()),
        );
        let mut listeners = proc.wait_listening(&names, READY_DEADLINE).await;
        let admin = listeners.remove("admin").expect("waited for admin");
        let sidecar = Sidecar {
            name: name.to_string(),
            proc,
            config_path,
            bootstrap,
            admin,
            listeners,
        };
        sidecar.wait_ready(READY_DEADLINE).await;
        sidecar
    }

    /// The bound address of listener `name`. Panics if there is none.
    pub fn listener(&self, name: &str) -> SocketAddr {
        match self.listeners.get(name) {
            Some(addr) => *addr,
            None => panic!(
                "{} has no listener {name:?}; it has {:?}",
                self.name,
                self.listeners.keys().collect::<Vec<_>>()
            ),
        }
    }

    /// `http://<admin>/<path>`, for printing and for other clients.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}/{}", self.admin, path.trim_start_matches('/'))
    }

    /// `GET` an admin path.
    pub async fn admin_get(&self, path: &str) -> Result<Reply, String> {
        send(&http1_client(), get(&self.admin_url(path))).await
    }

    /// `POST` an admin path (e.g. `/drain`) with an empty body.
    pub async fn admin_post(&self, path: &str) -> Result<Reply, String> {
        let req = request(Method::POST, &self.admin_url(path), empty());
        send(&http1_client(), req).await
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> Result<String, String> {
        let reply = self.admin_get("/metrics").await?;
        if !reply.status.is_success() {
            return Err(format!(
                "/metrics answered {}: {}",
                reply.status,
                reply.text()
            ));
        }
        Ok(reply.text())
    }

    /// The `/config_dump` JSON.
    pub async fn config_dump(&self) -> Result<serde_json::Value, String> {
        let reply = self.admin_get("/config_dump").await?;
        if !reply.status.is_success() {
            return Err(format!(
                "/config_dump answered {}: {}",
                reply.status,
                reply.text()
            ));
        }
        reply.json()
    }

    /// Waits until `/ready` answers 200. Panics at the deadline.
    pub async fn wait_ready(&self, deadline: Duration) {
        eventually(deadline, || async {
            if let Some(status) = self.proc.try_exit_status() {
                panic!("{} exited ({status}) before getting ready", self.name);
            }
            let reply = self.admin_get("/ready").await?;
            if reply.status.is_success() {
                Ok(())
            } else {
                Err(format!(
                    "{} /ready: {} {}",
                    self.name,
                    reply.status,
                    reply.text()
                ))
            }
        })
        .await
    }

    /// Rewrites the config file without signalling (for a proxy that
    /// watches its file).
    pub fn write_config(&mut self, bootstrap: Bootstrap) {
        write_bootstrap(&self.config_path, &bootstrap);
        self.bootstrap = bootstrap;
    }

    /// Rewrites the config file and sends SIGHUP. Listener addresses should
    /// stay as they were (`127.0.0.1:0` included) unless the test means to
    /// rebind. Returns at once; wait for the effect with `eventually`.
    pub fn reload(&mut self, bootstrap: Bootstrap) {
        self.write_config(bootstrap);
        self.proc.signal(Signal::SIGHUP);
    }

    /// Writes `yaml` verbatim over the config file and sends SIGHUP, to
    /// test how the proxy treats a file it should reject (unknown fields,
    /// broken YAML). `bootstrap` keeps the last typed config, so a test can
    /// restore it with [`Sidecar::reload`].
    pub fn reload_text(&self, yaml: &str) {
        write_config_text(&self.config_path, yaml);
        self.proc.signal(Signal::SIGHUP);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_matching_series() {
        let text = "# HELP x\n# TYPE requests_total counter\n\
            requests_total{listener=\"outbound\",code=\"200\"} 3\n\
            requests_total{listener=\"outbound\",code=\"503\"} 2\n\
            requests_total{listener=\"inbound\",code=\"200\"} 7\n\
            up 1\n";
        assert_eq!(
            metric_value(text, "requests_total", &[("listener", "outbound")]),
            Some(5.0)
        );
        assert_eq!(metric_value(text, "requests_total", &[]), Some(12.0));
        assert_eq!(metric_value(text, "up", &[]), Some(1.0));
        assert_eq!(
            metric_value(text, "requests_total", &[("code", "404")]),
            None
        );
        assert_eq!(
            parse_labels(r#"a="x,y",b="q\"z""#),
            vec![("a".into(), "x,y".into()), ("b".into(), "q\"z".into())]
        );
    }
}
