//! [`EtcdCluster`]: real `etcd` members on loopback, for the replicated
//! control plane's tests (`tests/replicas.rs`). etcd comes from the
//! project's `scripts/etcd-test-deps.sh` (Debian's `etcd-server`, 3.4);
//! [`etcd_or_skip`] skips loudly without it, and fails under `CI=true`.
//!
//! Members need their peer URLs before they start (the initial cluster
//! lists them all), so their ports are picked by binding port 0 and
//! releasing it just before the start. Elections are tuned short (50 ms
//! heartbeat, 500 ms election timeout) so a killed leader is replaced fast.
//! [`EtcdCluster::start_tls`] serves clients over TLS and requires client
//! certificates; readiness is then read from each member's plain metrics
//! port (`--listen-metrics-urls`, which also serves `/health`).

use super::binaries::workspace_root;
use super::deps::program_or_skip;
use super::eventually::eventually;
use super::http::{full, get, http1_client, request, send};
use super::process::{Proc, Signal};
use http::Method;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long a member may take to become healthy.
const HEALTHY_DEADLINE: Duration = Duration::from_secs(30);

/// `scripts/etcd-test-deps.sh`.
pub fn etcd_deps_script() -> PathBuf {
    workspace_root().join("scripts/etcd-test-deps.sh")
}

/// The `etcd` binary, installing it with the project script when missing.
/// Under `CI=true` a missing, uninstallable etcd panics; otherwise it
/// prints a loud `SKIPPED` and returns `None`.
pub fn etcd_or_skip(test: &str) -> Option<PathBuf> {
    program_or_skip(
        test,
        "etcd",
        &etcd_deps_script(),
        "Debian's etcd-server package",
    )
}

/// A running etcd cluster on 127.0.0.1.
#[derive(Debug)]
pub struct EtcdCluster {
    bin: PathBuf,
    dir: PathBuf,
    members: Vec<Member>,
    tls: Option<EtcdTls>,
}

/// Client TLS of the members: `https://` client URLs with this certificate,
/// and clients must present one signed by `ca` (`--client-cert-auth`).
/// Peers stay plaintext (loopback, tests only).
#[derive(Clone, Debug)]
pub struct EtcdTls {
    /// PEM CA the members verify client certificates with.
    pub ca: PathBuf,
    /// PEM serving certificate of every member (names 127.0.0.1).
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
}

#[derive(Debug)]
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    /// Plain HTTP `/health` (and `/metrics`): the readiness probe when the
    /// client port speaks TLS.
    metrics_port: u16,
    proc: Option<Proc>,
}

// === impl EtcdCluster ===

impl EtcdCluster {
    /// Starts `n` members with their data under `dir`, and waits until
    /// each is healthy (the cluster has a leader).
    pub async fn start(bin: &Path, dir: &Path, n: usize) -> EtcdCluster {
        Self::start_with(bin, dir, n, None).await
    }

    /// [`EtcdCluster::start`] with client TLS and client-certificate
    /// authentication ([`EtcdTls`]).
    pub async fn start_tls(bin: &Path, dir: &Path, n: usize, tls: EtcdTls) -> EtcdCluster {
        Self::start_with(bin, dir, n, Some(tls)).await
    }

    async fn start_with(bin: &Path, dir: &Path, n: usize, tls: Option<EtcdTls>) -> EtcdCluster {
        let members = (1..=n)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                metrics_port: free_port(),
                proc: None,
            })
            .collect();
        let mut cluster = EtcdCluster {
            bin: bin.to_path_buf(),
            dir: dir.to_path_buf(),
            members,
            tls,
        };
        for i in 0..n {
            cluster.spawn(i);
        }
        for i in 0..n {
            cluster.wait_healthy(i).await;
        }
        cluster
    }

    /// `etcd://127.0.0.1:a,127.0.0.1:b,...`: the control plane's `--store`.
    pub fn store_url(&self) -> String {
        let members: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client_port))
            .collect();
        format!("etcd://{}", members.join(","))
    }

    /// The client address of member `i`.
    pub fn client_addr(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.members[i].client_port)
    }

    /// SIGKILLs member `i` and waits for it to be gone.
    pub async fn kill(&mut self, i: usize) {
        if let Some(proc) = self.members[i].proc.take() {
            let _ = proc.try_signal(Signal::SIGKILL);
            proc.wait_exit(Duration::from_secs(10)).await;
        }
    }

    /// Starts member `i` again on its data and waits until it is healthy.
    pub async fn restart(&mut self, i: usize) {
        self.spawn(i);
        self.wait_healthy(i).await;
    }

    /// Starts several members again at once (one alone has no quorum to be
    /// healthy with), then waits until each is healthy.
    pub async fn restart_all(&mut self, members: &[usize]) {
        for &i in members {
            self.spawn(i);
        }
        for &i in members {
            self.wait_healthy(i).await;
        }
    }

    /// Waits until member `i` answers `/health` with `"health":"true"`.
    pub async fn wait_healthy(&self, i: usize) {
        let url = format!("http://127.0.0.1:{}/health", self.members[i].metrics_port);
        let client = http1_client();
        eventually(HEALTHY_DEADLINE, || async {
            let reply = send(&client, get(&url)).await?;
            let text = reply.text();
            text.contains("\"health\":\"true\"")
                .then_some(())
                .ok_or_else(|| format!("etcd {}: {text}", self.members[i].name))
        })
        .await
    }

    /// The index of the member that leads, as the members say
    /// (`/v3/maintenance/status`, the gRPC gateway of etcd 3.4).
    pub async fn leader(&self) -> usize {
        let client = http1_client();
        eventually(HEALTHY_DEADLINE, || async {
            for (i, m) in self.members.iter().enumerate() {
                if m.proc.is_none() {
                    continue;
                }
                let url = format!("http://{}/v3/maintenance/status", self.client_addr(i));
                let reply = send(&client, request(Method::POST, &url, full("{}"))).await?;
                let status = reply.json()?;
                if status["leader"].is_string() && status["leader"] == status["header"]["member_id"]
                {
                    return Ok(i);
                }
            }
            Err("no member says it leads".to_string())
        })
        .await
    }

    /// Runs `etcdctl ARGS` (API v3) against the running members; returns
    /// its stdout, or its stderr as the error.
    pub fn etcdctl(&self, args: &[&str]) -> Result<String, String> {
        let endpoints: Vec<String> = self
            .members
            .iter()
            .enumerate()
            .filter(|(_, m)| m.proc.is_some())
            .map(|(i, _)| format!("http://{}", self.client_addr(i)))
            .collect();
        let out = std::process::Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", endpoints.join(",")))
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| format!("running etcdctl: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    fn spawn(&mut self, i: usize) {
        let initial: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect();
        let m = &self.members[i];
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://127.0.0.1:{}", m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let metrics = format!("http://127.0.0.1:{}", m.metrics_port);
        let data = self.dir.join(&m.name).display().to_string();
        let tls_args: Vec<String> = match &self.tls {
            Some(tls) => vec![
                "--cert-file".into(),
                tls.cert.display().to_string(),
                "--key-file".into(),
                tls.key.display().to_string(),
                "--trusted-ca-file".into(),
                tls.ca.display().to_string(),
                "--client-cert-auth".into(),
            ],
            None => Vec::new(),
        };
        let args = [
            "--name",
            m.name.as_str(),
            "--data-dir",
            data.as_str(),
            "--listen-client-urls",
            client.as_str(),
            "--advertise-client-urls",
            client.as_str(),
            "--listen-peer-urls",
            peer.as_str(),
            "--initial-advertise-peer-urls",
            peer.as_str(),
            "--initial-cluster",
            &initial.join(","),
            "--initial-cluster-state",
            "new",
            "--initial-cluster-token",
            "sane-e2e",
            "--heartbeat-interval",
            "50",
            "--election-timeout",
            "500",
            "--listen-metrics-urls",
            metrics.as_str(),
            "--logger",
            "zap",
        ];
        let args = args
            .into_iter()
            .map(str::to_string)
            .chain(tls_args)
            .collect::<Vec<_>>();
        let proc = Proc::spawn(&format!("etcd-{}", m.name), &self.bin, &args, &[]);
        self.members[i].proc = Some(proc);
    }
}

/// A loopback port nobody listens on now.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a probe port");
    l.local_addr().expect("a local address").port()
}
