//! [`Prometheus`]: a real Prometheus server (Debian's `prometheus` package,
//! installed by `scripts/prometheus-test-deps.sh`) started by a test on
//! loopback, scraping the admin `/metrics` of the sidecars it is given, and
//! queried through its HTTP API.

use super::binaries::workspace_root;
use super::deps::program_or_skip;
use super::eventually::eventually;
use super::http::{get, http1_client, send};
use super::process::Proc;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A running Prometheus server; killed when dropped.
#[derive(Debug)]
pub struct Prometheus {
    /// Its HTTP address (loopback).
    pub addr: SocketAddr,
    /// The process.
    pub proc: Proc,
    /// The file-discovery target list, when started by
    /// [`Prometheus::start_discovering`].
    targets_file: Option<PathBuf>,
}

/// `scripts/prometheus-test-deps.sh`.
pub fn prometheus_deps_script() -> PathBuf {
    workspace_root().join("scripts/prometheus-test-deps.sh")
}

/// The `prometheus` binary, installing it with the project script when
/// missing. Under `CI=true` a missing, uninstallable Prometheus panics;
/// otherwise it prints a loud `SKIPPED` and returns `None`.
pub fn prometheus_or_skip(test: &str) -> Option<PathBuf> {
    program_or_skip(
        test,
        "prometheus",
        &prometheus_deps_script(),
        "Debian's prometheus package",
    )
}

// === impl Prometheus ===

impl Prometheus {
    /// Starts `bin` on a free loopback port, scraping `targets` (admin
    /// addresses, `/metrics`) every second as job `sane`, with its data in
    /// `dir`. Returns once its HTTP API answers `/-/ready`.
    pub async fn start(bin: &Path, dir: &Path, targets: &[SocketAddr]) -> Prometheus {
        Prometheus::start_with_rules(bin, dir, targets, &[]).await
    }

    /// [`Prometheus::start`], also evaluating the rule files `rules`
    /// (recording and alerting rules) every second.
    pub async fn start_with_rules(
        bin: &Path,
        dir: &Path,
        targets: &[SocketAddr],
        rules: &[PathBuf],
    ) -> Prometheus {
        let list: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        let targets = format!("static_configs:\n      - targets: [{}]\n", list.join(", "));
        Prometheus::start_config(bin, dir, &targets, rules, None).await
    }

    /// Starts Prometheus before its targets are known: it scrapes whatever
    /// [`Prometheus::set_targets`] lists later (file-based discovery, which
    /// Prometheus watches), evaluating `rules`.
    pub async fn start_discovering(bin: &Path, dir: &Path, rules: &[PathBuf]) -> Prometheus {
        let file = dir.join("targets.json");
        std::fs::write(&file, "[]").expect("writing targets.json");
        let targets = format!(
            "file_sd_configs:\n      - files: [\"{}\"]\n        refresh_interval: 1s\n",
            file.display()
        );
        Prometheus::start_config(bin, dir, &targets, rules, Some(file)).await
    }

    /// Replaces the scraped targets (after [`Prometheus::start_discovering`]).
    pub fn set_targets(&self, targets: &[SocketAddr]) {
        let file = self
            .targets_file
            .as_ref()
            .expect("set_targets needs start_discovering");
        let list: Vec<String> = targets.iter().map(|t| t.to_string()).collect();
        let json = serde_json::json!([{ "targets": list }]).to_string();
        // Written whole and renamed, so Prometheus never reads half a list.
        let tmp = file.with_extension("json.tmp");
        std::fs::write(&tmp, json).expect("writing targets");
        std::fs::rename(&tmp, file).expect("replacing targets.json");
    }

    async fn start_config(
        bin: &Path,
        dir: &Path,
        targets: &str,
        rules: &[PathBuf],
        targets_file: Option<PathBuf>,
    ) -> Prometheus {
        let config = dir.join("prometheus.yml");
        let rule_files: Vec<String> = rules
            .iter()
            .map(|r| format!("\"{}\"", r.display()))
            .collect();
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files: [{}]\n\
                 scrape_configs:\n  - job_name: sane\n    metrics_path: /metrics\n    \
                 {targets}",
                rule_files.join(", "),
            ),
        )
        .expect("writing prometheus.yml");
        // Prometheus cannot report a port it picked, so pick one here.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let data = dir.join("data");
        let args = [
            format!("--config.file={}", config.display()),
            format!("--storage.tsdb.path={}", data.display()),
            format!("--web.listen-address={addr}"),
        ];
        let proc = Proc::spawn("prometheus", bin, args, &[]);
        let url = format!("http://{addr}/-/ready");
        eventually(Duration::from_secs(30), || async {
            match send(&http1_client(), get(&url)).await {
                Ok(r) if r.status == 200 => Ok(()),
                Ok(r) => Err(format!("{url}: {}", r.status)),
                Err(e) => Err(format!("{url}: {e}; stderr: {}", proc.stderr())),
            }
        })
        .await;
        Prometheus {
            addr,
            proc,
            targets_file,
        }
    }

    /// Runs an instant PromQL query; returns each sample's labels and value.
    pub async fn query(&self, promql: &str) -> Result<Vec<(serde_json::Value, f64)>, String> {
        let url = format!(
            "http://{}/api/v1/query?query={}",
            self.addr,
            percent_encode(promql)
        );
        let reply = send(&http1_client(), get(&url)).await?;
        let body = reply.json()?;
        if body["status"] != "success" {
            return Err(format!("{promql}: {body}"));
        }
        let result = body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        result
            .into_iter()
            .map(|s| {
                let v = s["value"][1]
                    .as_str()
                    .and_then(|v| v.parse::<f64>().ok())
                    .ok_or_else(|| format!("no value in {s}"))?;
                Ok((s["metric"].clone(), v))
            })
            .collect()
    }

    /// The single value `promql` evaluates to, or an error saying why not
    /// (for use inside `eventually`).
    pub async fn scalar(&self, promql: &str) -> Result<f64, String> {
        let samples = self.query(promql).await?;
        match samples.as_slice() {
            [(_, v)] => Ok(*v),
            other => Err(format!("{promql}: expected one sample, got {other:?}")),
        }
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
