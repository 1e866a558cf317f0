//! A local etcd cluster for the fleet benchmark's replicated topology
//! (`fleet --topologies etcd:3`): `n` real `etcd` members on loopback
//! (Debian's `etcd-server`, installed by `scripts/etcd-test-deps.sh`), each
//! with its own data directory and log file, with etcd's default Raft
//! timings (the benchmark measures a cluster as deployed, not the e2e
//! tests' short elections). Killed on drop.

use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Running members; they are killed when this is dropped.
#[derive(Debug)]
pub struct EtcdCluster {
    members: Vec<Child>,
    client_ports: Vec<u16>,
}

// === impl EtcdCluster ===

impl EtcdCluster {
    /// Starts `n` members of one new cluster under `dir` and waits (up to
    /// `timeout`) until each answers `/health` with `"health":"true"`.
    pub fn start(bin: &Path, dir: &Path, n: usize, timeout: Duration) -> Result<EtcdCluster> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let ports: Vec<(u16, u16)> = (0..n)
            .map(|_| Ok((free_port()?, free_port()?)))
            .collect::<Result<_>>()?;
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{}=http://127.0.0.1:{peer}", i + 1))
            .collect();
        let mut cluster = EtcdCluster {
            members: Vec::new(),
            client_ports: ports.iter().map(|(c, _)| *c).collect(),
        };
        for (i, (client, peer)) in ports.iter().enumerate() {
            let name = format!("m{}", i + 1);
            let client = format!("http://127.0.0.1:{client}");
            let peer = format!("http://127.0.0.1:{peer}");
            let log = dir.join(format!("etcd-{name}.log"));
            let child = Command::new(bin)
                .args(["--name", &name])
                .arg("--data-dir")
                .arg(dir.join(&name))
                .args(["--listen-client-urls", &client])
                .args(["--advertise-client-urls", &client])
                .args(["--listen-peer-urls", &peer])
                .args(["--initial-advertise-peer-urls", &peer])
                .args(["--initial-cluster", &initial.join(",")])
                .args(["--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", "sane-fleet"])
                .args(["--logger", "zap"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log)?)
                .spawn()
                .with_context(|| {
                    format!(
                        "starting {} (scripts/etcd-test-deps.sh installs it)",
                        bin.display()
                    )
                })?;
            cluster.members.push(child);
        }
        let deadline = Instant::now() + timeout;
        for (i, port) in cluster.client_ports.clone().into_iter().enumerate() {
            loop {
                if health(port).unwrap_or(false) {
                    break;
                }
                if let Some(status) = cluster.members[i].try_wait()? {
                    bail!(
                        "etcd member m{} exited ({status}); see {}",
                        i + 1,
                        dir.join(format!("etcd-m{}.log", i + 1)).display()
                    );
                }
                if Instant::now() > deadline {
                    bail!("etcd member m{} not healthy after {timeout:?}", i + 1);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(cluster)
    }

    /// `etcd://127.0.0.1:a,127.0.0.1:b,…`: the control plane's `--store`.
    pub fn store_url(&self) -> String {
        let members: Vec<String> = self
            .client_ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("etcd://{}", members.join(","))
    }

    /// The members' process ids (their CPU and memory are reported too).
    pub fn pids(&self) -> Vec<u32> {
        self.members.iter().map(Child::id).collect()
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            let _ = m.kill();
            let _ = m.wait();
        }
    }
}

/// Whether the member on `port` says it is healthy (it has a leader).
fn health(port: u16) -> Result<bool> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    Ok(reply.contains("\"health\":\"true\""))
}

/// A loopback port nobody listens on now.
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
