//! The processes under test and their files: a scratch directory with the
//! certificates (one EC P-256 CA made with `openssl`, which also serves as
//! the sane control plane's operator CA, so every peer trusts the same
//! root), the peer configs from `bench/peers/` with `@WORK@` filled in, and
//! [`Peer::start`], which starts one peer's two hops pinned to the server
//! core and waits until a request through each of its entries succeeds.
//!
//! Ports are fixed (the 18000s, below Linux's ephemeral range) so the
//! project-provided nginx/haproxy configs stay as they are; see `PORTS` in
//! `bench/README.md`.

use anyhow::{bail, Context, Result};
use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a process may take to start serving.
const START_DEADLINE: Duration = Duration::from_secs(30);
/// The bench control plane's API token (loopback only, scratch data dir).
pub const API_TOKEN: &str = "sane-bench-token";
/// The control plane's xDS/CA and API addresses (as in `peers/sane-*.yaml`).
const CP_XDS: &str = "127.0.0.1:18030";
const CP_API: &str = "127.0.0.1:18031";
/// The backend: nginx answering `200 ok`.
pub const BACKEND: &str = "127.0.0.1:18080";
/// The OTLP collector of [`PeerKind::SaneTraced`]: a port nothing listens
/// on, so every export is refused.
pub const CLOSED_COLLECTOR: &str = "127.0.0.1:18039";
/// The OTLP collector of [`PeerKind::SaneTracedReachable`]: `sane-otlp-sink`,
/// which accepts and counts every span.
pub const REACHABLE_COLLECTOR: &str = "127.0.0.1:18038";
/// The sidecars' admin addresses (as in `peers/sane-{a,b}.yaml`): their
/// `/metrics` show what became of the spans.
pub const SANE_ADMIN: [&str; 2] = ["127.0.0.1:18025", "127.0.0.1:18026"];

/// One side-by-side variant's two hops.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PeerKind {
    /// No proxy: the client talks to the backend.
    Direct,
    /// Two `sane-proxy` sidecars.
    Sane,
    /// The same, with a `Telemetry` resource sampling every request to an
    /// OTLP collector that is not there ([`CLOSED_COLLECTOR`]).
    SaneTraced,
    /// The same, tracing to a collector that accepts every span
    /// (`sane-otlp-sink` on [`REACHABLE_COLLECTOR`]).
    SaneTracedReachable,
    /// Two nginx.
    Nginx,
    /// Two haproxy.
    Haproxy,
}

/// What the client speaks to the first hop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mode {
    /// HTTP/1.1 routed by the proxies (sane: HTTP/2 between the sidecars).
    Http,
    /// Opaque TCP spliced over mTLS between the hops.
    Tcp,
}

/// The scratch directory and the binaries.
#[derive(Debug)]
pub struct Workspace {
    /// Scratch directory (`certs/`, `run/`, `logs/`, `tokens/`, configs).
    pub dir: PathBuf,
    /// `bench/peers`.
    pub peers: PathBuf,
    /// `target/release`.
    pub bin_dir: PathBuf,
    /// `taskset -c` list for the servers and proxies.
    pub server_cpus: Option<String>,
    /// Proxy worker threads (sane `--workers`, nginx `worker_processes`,
    /// haproxy `nbthread`).
    pub workers: u32,
    /// `taskset -c` list for the OTLP sink (the load generators' CPUs, like
    /// the control plane: a collector runs elsewhere, not beside the
    /// proxies it measures).
    pub collector_cpus: Option<String>,
}

/// A child process, stopped (SIGTERM, then SIGKILL) when dropped.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Child,
    /// Its stdout and stderr.
    log: PathBuf,
}

/// A running variant: its processes and entries.
#[derive(Debug)]
pub struct Peer {
    /// Which variant.
    pub kind: PeerKind,
    /// Hop A (client side), hop B (server side); empty for direct.
    pub hops: Vec<Proc>,
    /// The OTLP sink the sidecars export to (tracing to a reachable
    /// collector only).
    pub collector: Option<Proc>,
}

/// What became of the spans of a traced variant's run.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SpanCounts {
    /// `sane_trace_spans_total` of both sidecars, by result.
    pub exported: f64,
    /// Dropped (queue full, or not built while the exporter backs off).
    pub dropped: f64,
    /// Handed to the exporter, which failed.
    pub failed: f64,
    /// Spans the sink says it received (reachable collector only).
    pub received: Option<f64>,
}

/// The shared processes: the backend, and the control plane whose CA signs
/// the sane sidecars' certificates.
#[derive(Debug)]
pub struct Shared {
    /// nginx backend.
    pub backend: Proc,
    /// sane-control-plane (CA only: the sidecars' resources are static).
    pub control_plane: Proc,
}

// === impl PeerKind ===

impl PeerKind {
    /// Every variant, in report order.
    pub const ALL: [PeerKind; 6] = [
        PeerKind::Direct,
        PeerKind::Sane,
        PeerKind::SaneTraced,
        PeerKind::SaneTracedReachable,
        PeerKind::Nginx,
        PeerKind::Haproxy,
    ];

    /// Report name.
    pub fn name(self) -> &'static str {
        match self {
            PeerKind::Direct => "direct",
            PeerKind::Sane => "sane",
            PeerKind::SaneTraced => "sane + tracing to a closed port",
            PeerKind::SaneTracedReachable => "sane + tracing to a reachable collector",
            PeerKind::Nginx => "nginx pair",
            PeerKind::Haproxy => "haproxy pair",
        }
    }

    /// Where the client connects for `mode`, and the `Host` it sends.
    pub fn entry(self, mode: Mode) -> (&'static str, Option<&'static str>) {
        match (self, mode) {
            (PeerKind::Direct, _) => (BACKEND, None),
            (PeerKind::Sane | PeerKind::SaneTraced | PeerKind::SaneTracedReachable, Mode::Http) => {
                ("127.0.0.1:18021", Some("backend"))
            }
            (PeerKind::Sane | PeerKind::SaneTraced | PeerKind::SaneTracedReachable, Mode::Tcp) => {
                ("127.0.0.1:18023", None)
            }
            (PeerKind::Nginx, Mode::Http) => ("127.0.0.1:18001", None),
            (PeerKind::Nginx, Mode::Tcp) => ("127.0.0.1:18003", None),
            (PeerKind::Haproxy, Mode::Http) => ("127.0.0.1:18011", None),
            (PeerKind::Haproxy, Mode::Tcp) => ("127.0.0.1:18013", None),
        }
    }

    /// The OTLP collector the sidecars export spans to, if they trace.
    pub fn collector(self) -> Option<&'static str> {
        match self {
            PeerKind::SaneTraced => Some(CLOSED_COLLECTOR),
            PeerKind::SaneTracedReachable => Some(REACHABLE_COLLECTOR),
            _ => None,
        }
    }

    /// Hop B's mTLS port (HTTP), for the handshake rate.
    pub fn tls_port(self) -> Option<&'static str> {
        match self {
            PeerKind::Direct => None,
            PeerKind::Sane | PeerKind::SaneTraced | PeerKind::SaneTracedReachable => {
                Some("127.0.0.1:18022")
            }
            PeerKind::Nginx => Some("127.0.0.1:18002"),
            PeerKind::Haproxy => Some("127.0.0.1:18012"),
        }
    }
}

// === impl Workspace ===

impl Workspace {
    /// Creates the scratch directory with certificates and tokens dirs.
    pub fn create(
        dir: PathBuf,
        repo: &Path,
        server_cpus: Option<String>,
        workers: u32,
    ) -> Result<Workspace> {
        if dir.exists() {
            fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
        }
        for sub in ["certs", "run", "logs", "tokens", "conf", "cp"] {
            fs::create_dir_all(dir.join(sub))?;
        }
        for sub in ["backend", "nginx-a", "nginx-b"] {
            fs::create_dir_all(dir.join("run").join(sub))?;
        }
        let ws = Workspace {
            dir,
            peers: repo.join("bench/peers"),
            bin_dir: repo.join("target/release"),
            server_cpus,
            workers,
            collector_cpus: None,
        };
        ws.make_certs()?;
        Ok(ws)
    }

    /// `certs/<name>`.
    pub fn cert(&self, name: &str) -> String {
        self.dir.join("certs").join(name).display().to_string()
    }

    fn make_certs(&self) -> Result<()> {
        let c = |n: &str| self.cert(n);
        let ec_key = |path: &str| {
            openssl(&[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                path,
            ])
        };
        ec_key(&c("ca.key"))?;
        openssl(&[
            "req",
            "-x509",
            "-new",
            "-key",
            &c("ca.key"),
            "-subj",
            "/CN=sane-bench-ca",
            "-days",
            "30",
            "-sha256",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-out",
            &c("ca.pem"),
        ])?;
        let leaf = |name: &str, ext: &str| -> Result<()> {
            ec_key(&c(&format!("{name}.key")))?;
            let csr = c(&format!("{name}.csr"));
            openssl(&[
                "req",
                "-new",
                "-key",
                &c(&format!("{name}.key")),
                "-subj",
                &format!("/CN={name}"),
                "-out",
                &csr,
            ])?;
            let ext_file = c(&format!("{name}.ext"));
            fs::write(&ext_file, ext)?;
            openssl(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &c("ca.pem"),
                "-CAkey",
                &c("ca.key"),
                "-CAcreateserial",
                "-days",
                "30",
                "-sha256",
                "-extfile",
                &ext_file,
                "-out",
                &c(&format!("{name}.crt")),
            ])?;
            let pem = fs::read_to_string(c(&format!("{name}.crt")))?
                + &fs::read_to_string(c(&format!("{name}.key")))?;
            fs::write(c(&format!("{name}.pem")), pem)?;
            Ok(())
        };
        leaf(
            "server",
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage=serverAuth\nsubjectAltName=DNS:server.perf2.local,IP:127.0.0.1\n",
        )?;
        // A mesh identity too, so the same client certificate passes the
        // sane sidecar's SPIFFE check in the handshake benchmark.
        leaf(
            "client",
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage=clientAuth\n\
             subjectAltName=URI:spiffe://cluster.local/ns/default/sa/bench-client\n",
        )?;
        Ok(())
    }

    /// `bench/peers/<name>` with `@WORK@` and the extras filled in, written
    /// to `conf/<name>`.
    pub fn config(&self, name: &str, extra: &[(&str, &str)]) -> Result<PathBuf> {
        let text = fs::read_to_string(self.peers.join(name))
            .with_context(|| format!("reading bench/peers/{name}"))?;
        let mut text = text.replace("@WORK@", &self.dir.display().to_string());
        let workers = self.workers.to_string();
        text = text
            .replace(
                "worker_processes 1;",
                &format!("worker_processes {workers};"),
            )
            .replace("nbthread 1", &format!("nbthread {workers}"));
        for (key, value) in extra {
            text = text.replace(key, value);
        }
        let out = self.dir.join("conf").join(name);
        fs::write(&out, text)?;
        Ok(out)
    }

    /// A command pinned to the server core(s).
    fn pinned(&self, program: &Path) -> Command {
        match &self.server_cpus {
            Some(cpus) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(cpus).arg(program);
                c
            }
            None => Command::new(program),
        }
    }

    fn spawn(&self, name: &str, mut cmd: Command) -> Result<Proc> {
        let log_path = self.dir.join("logs").join(format!("{name}.log"));
        let log = fs::File::create(&log_path)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        Ok(Proc {
            name: name.to_string(),
            child,
            log: log_path,
        })
    }

    fn nginx(&self, name: &str, conf: &str) -> Result<Proc> {
        let conf = self.config(conf, &[])?;
        let mut cmd = self.pinned(Path::new("/usr/sbin/nginx"));
        cmd.arg("-p")
            .arg(self.dir.join("run"))
            .arg("-e")
            .arg(self.dir.join("logs").join(format!("{name}.error.log")))
            .arg("-c")
            .arg(conf)
            .args(["-g", "daemon off;"]);
        self.spawn(name, cmd)
    }

    fn haproxy(&self, name: &str, conf: &str) -> Result<Proc> {
        let conf = self.config(conf, &[])?;
        let mut cmd = self.pinned(Path::new("/usr/sbin/haproxy"));
        cmd.arg("-db").arg("-f").arg(conf);
        self.spawn(name, cmd)
    }

    /// Starts sane-proxy with `conf` (already written).
    pub fn sane_proxy(&self, name: &str, conf: &Path) -> Result<Proc> {
        let mut cmd = self.pinned(&self.bin_dir.join("sane-proxy"));
        cmd.arg("--config")
            .arg(conf)
            .arg("--workers")
            .arg(self.workers.to_string());
        self.spawn(name, cmd)
    }

    /// Starts `sane-otlp-sink` on [`REACHABLE_COLLECTOR`] and waits until it
    /// listens.
    fn otlp_sink(&self) -> Result<Proc> {
        let sink = self.bin_dir.join("sane-otlp-sink");
        let mut cmd = match &self.collector_cpus {
            Some(cpus) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(cpus).arg(sink);
                c
            }
            None => Command::new(sink),
        };
        cmd.arg("--addr").arg(REACHABLE_COLLECTOR);
        let sink = self.spawn("otlp-sink", cmd)?;
        poll(Instant::now() + START_DEADLINE, || {
            TcpStream::connect(REACHABLE_COLLECTOR)
                .map(drop)
                .with_context(|| format!("sane-otlp-sink on {REACHABLE_COLLECTOR}"))
        })?;
        Ok(sink)
    }

    /// Starts the backend and the control plane, issues the sidecars'
    /// tokens.
    pub fn start_shared(&self, load_cpus: Option<&str>) -> Result<Shared> {
        let backend = self.nginx("backend", "backend.conf")?;
        wait_http(BACKEND, None, START_DEADLINE).context("the nginx backend")?;
        let mut cmd = match load_cpus {
            Some(cpus) => {
                let mut c = Command::new("taskset");
                c.arg("-c")
                    .arg(cpus)
                    .arg(self.bin_dir.join("sane-control-plane"));
                c
            }
            None => Command::new(self.bin_dir.join("sane-control-plane")),
        };
        // Plaintext on loopback: the benchmark measures the data path, and
        // the sidecars' bootstraps are static (the CA is all they use).
        cmd.args(["--insecure-plaintext-loopback"])
            .args(["--xds-addr", CP_XDS, "--api-addr", CP_API, "--data-dir"])
            .arg(self.dir.join("cp"))
            .args(["--api-token", API_TOKEN, "--ca-cert-chain"])
            .arg(self.cert("ca.pem"))
            .arg("--ca-key")
            .arg(self.cert("ca.key"));
        let control_plane = self.spawn("control-plane", cmd)?;
        let deadline = Instant::now() + START_DEADLINE;
        for sa in ["bench-a", "bench-b"] {
            let body = format!(r#"{{"namespace":"default","service_account":"{sa}"}}"#);
            let reply = poll(deadline, || {
                http(CP_API, "POST", "/api/v1/tokens", None, Some(&body))
            })
            .context("issuing a workload token from the control plane")?;
            if reply.0 != 200 && reply.0 != 201 {
                bail!("issuing a token for {sa}: {} {}", reply.0, reply.1);
            }
            let v: serde_json::Value = serde_json::from_str(&reply.1)?;
            let token = v["token"].as_str().context("no token in the reply")?;
            fs::write(self.dir.join("tokens").join(format!("{sa}.token")), token)?;
        }
        Ok(Shared {
            backend,
            control_plane,
        })
    }

    /// Starts `kind`'s hops and waits until both entries answer `200 ok`.
    pub fn start(&self, kind: PeerKind) -> Result<Peer> {
        self.start_with(kind, "", "")
    }

    /// Like [`Workspace::start`], with extra services and endpoints in the
    /// sane client sidecar's config (the scale test).
    pub fn start_with(
        &self,
        kind: PeerKind,
        extra_services: &str,
        extra_endpoints: &str,
    ) -> Result<Peer> {
        // The sink first, so the sidecars' first exports find it.
        let collector = match kind {
            PeerKind::SaneTracedReachable => Some(self.otlp_sink()?),
            _ => None,
        };
        let hops = match kind {
            PeerKind::Direct => Vec::new(),
            PeerKind::Nginx => vec![
                self.nginx("nginx-b", "nginx-b.conf")?,
                self.nginx("nginx-a", "nginx-a.conf")?,
            ],
            PeerKind::Haproxy => vec![
                self.haproxy("haproxy-b", "haproxy-b.cfg")?,
                self.haproxy("haproxy-a", "haproxy-a.cfg")?,
            ],
            PeerKind::Sane | PeerKind::SaneTraced | PeerKind::SaneTracedReachable => {
                let telemetry = match kind.collector() {
                    Some(addr) => format!(
                        "  telemetry:\n    - {{ name: bench, tracing: {{ endpoint: \"http://{addr}\", sampling_ratio: 1.0 }} }}\n"
                    ),
                    None => String::new(),
                };
                let b = self.config("sane-b.yaml", &[("@TELEMETRY@", &telemetry)])?;
                let a = self.config(
                    "sane-a.yaml",
                    &[
                        ("@EXTRA_SERVICES@", extra_services),
                        ("@EXTRA_ENDPOINTS@", extra_endpoints),
                        ("@TELEMETRY@", &telemetry),
                    ],
                )?;
                vec![
                    self.sane_proxy("sane-b", &b)?,
                    self.sane_proxy("sane-a", &a)?,
                ]
            }
        };
        let peer = Peer {
            kind,
            hops,
            collector,
        };
        for mode in [Mode::Http, Mode::Tcp] {
            let (addr, host) = kind.entry(mode);
            wait_http(addr, host, START_DEADLINE)
                .with_context(|| format!("{} ({mode:?} entry {addr})", kind.name()))?;
        }
        Ok(peer)
    }
}

// === impl Peer ===

impl Peer {
    /// Every process of both hops (nginx masters and workers included).
    pub fn pids(&self) -> Vec<u32> {
        self.hops
            .iter()
            .flat_map(|p| crate::procfs::tree(p.pid()))
            .collect()
    }

    /// Each hop's process tree, A first.
    pub fn hop_pids(&self) -> Vec<Vec<u32>> {
        self.hops
            .iter()
            .rev()
            .map(|p| crate::procfs::tree(p.pid()))
            .collect()
    }
}

impl Peer {
    /// What became of the spans: the sidecars' span counters, and (after
    /// stopping it) what the sink received. `None` for a variant without
    /// tracing.
    pub fn span_counts(&mut self) -> Result<Option<SpanCounts>> {
        if self.kind.collector().is_none() {
            return Ok(None);
        }
        let mut c = SpanCounts::default();
        for admin in SANE_ADMIN {
            let (status, text) = http(admin, "GET", "/metrics", None, None)?;
            if status != 200 {
                bail!("{admin}/metrics answered {status}");
            }
            c.exported += counter(&text, "sane_trace_spans_total{result=\"exported\"}");
            c.dropped += counter(&text, "sane_trace_spans_total{result=\"dropped\"}");
            c.failed += counter(&text, "sane_trace_spans_total{result=\"failed\"}");
        }
        if let Some(sink) = self.collector.take() {
            let log = sink.log.clone();
            drop(sink); // SIGTERM: it prints its count and exits
            let text = fs::read_to_string(&log)?;
            let received = (text.lines())
                .find_map(|l| l.strip_prefix("spans received="))
                .and_then(|r| r.split_whitespace().next())
                .with_context(|| format!("no 'spans received=' in {}", log.display()))?;
            c.received = Some(received.parse()?);
        }
        Ok(Some(c))
    }
}

/// The value of the Prometheus sample `series` in `text`, 0 when absent.
fn counter(text: &str, series: &str) -> f64 {
    (text.lines())
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

// === impl Proc ===

impl Proc {
    /// The process id (of `taskset`'s exec'd program: the same pid).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its name (the log file under `logs/`).
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            // allow-sleep: a poll step while waiting for a child to exit.
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn openssl(args: &[&str]) -> Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .context("running openssl")?;
    if !out.status.success() {
        bail!(
            "openssl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The scale test's extra resources: `n` services (`svc-<i>`, one HTTP
/// port) with one sidecar endpoint each, as YAML list items indented for a
/// bootstrap's `resources.services` and `resources.endpoints`.
pub fn scale_resources(n: usize) -> (String, String) {
    let mut services = String::new();
    let mut endpoints = String::new();
    for i in 0..n {
        services += &format!(
            "    - {{ name: svc-{i}, ports: [ {{ name: http, port: 80, target_port: 8080 }} ] }}\n"
        );
        endpoints += &format!(
            "    - {{ service: svc-{i}, address: 10.{}.{}.{}, proxy_port: 15006, identity: \"spiffe://cluster.local/ns/default/sa/svc-{i}\" }}\n",
            (i >> 16) & 255,
            (i >> 8) & 255,
            i & 255
        );
    }
    (services, endpoints)
}

/// Calls `f` until it succeeds or `deadline` passes (then its last error).
pub fn poll<T>(deadline: Instant, mut f: impl FnMut() -> Result<T>) -> Result<T> {
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => return Err(e),
            // allow-sleep: a poll step between readiness checks.
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Waits until `GET /` through `addr` answers `200` with body `ok`.
pub fn wait_http(addr: &str, host: Option<&str>, within: Duration) -> Result<()> {
    poll(Instant::now() + within, || {
        let (status, body) = http(addr, "GET", "/", host, None)?;
        if status != 200 || body != "ok" {
            bail!("{addr} answered {status} {body:?}");
        }
        Ok(())
    })
}

/// One HTTP/1.1 request on a new connection (`Connection: close`); returns
/// the status and body. Enough for readiness checks and the CA's token API.
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    host: Option<&str>,
    json: Option<&str>,
) -> Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let body = json.unwrap_or("");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nAuthorization: Bearer {API_TOKEN}\r\n",
        host.unwrap_or(addr)
    );
    if json.is_some() {
        req += &format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        );
    }
    req += "\r\n";
    req += body;
    s.write_all(req.as_bytes())?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let text = String::from_utf8_lossy(&out);
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .context("empty reply")?
        .parse()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or("")
        .to_string();
    let body = if text
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(&body)
    } else {
        body
    };
    Ok((status, body))
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || tail.len() < n {
            break;
        }
        out += &tail[..n];
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}

/// Opens `n` client connections to `addr`, each sending one keep-alive
/// request and reading its reply, and keeps them open (idle).
pub fn idle_connections(addr: &str, host: Option<&str>, n: usize) -> Result<Vec<TcpStream>> {
    let req = format!("GET / HTTP/1.1\r\nHost: {}\r\n\r\n", host.unwrap_or(addr));
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let mut s = TcpStream::connect(addr).with_context(|| format!("connection {i}"))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(req.as_bytes())?;
        let mut buf = [0u8; 1024];
        let mut got = Vec::new();
        while !got.ends_with(b"ok") {
            let k = s
                .read(&mut buf)
                .with_context(|| format!("connection {i}"))?;
            if k == 0 {
                bail!("connection {i} closed before the reply");
            }
            got.extend_from_slice(&buf[..k]);
        }
        conns.push(s);
    }
    Ok(conns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn span_counters_are_read_from_the_metrics_text() {
        let text = "# TYPE sane_trace_spans_total counter\n\
                    sane_trace_spans_total{result=\"dropped\"} 12\n\
                    sane_trace_spans_total{result=\"exported\"} 3\n";
        let dropped = counter(text, "sane_trace_spans_total{result=\"dropped\"}");
        assert_eq!(dropped, 12.0);
        assert_eq!(
            counter(text, "sane_trace_spans_total{result=\"exported\"}"),
            3.0
        );
        assert_eq!(
            counter(text, "sane_trace_spans_total{result=\"failed\"}"),
            0.0
        );
        assert_eq!(PeerKind::Sane.collector(), None);
        assert_ne!(
            PeerKind::SaneTraced.collector(),
            PeerKind::SaneTracedReachable.collector()
        );
    }

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(dechunk("2\r\nok\r\n3\r\n!!!\r\n0\r\n\r\n"), "ok!!!");
        assert_eq!(dechunk("zz"), "");
    }

    #[test]
    fn entries_differ_per_peer_and_mode() {
        let mut seen = std::collections::BTreeSet::new();
        for kind in [PeerKind::Sane, PeerKind::Nginx, PeerKind::Haproxy] {
            for mode in [Mode::Http, Mode::Tcp] {
                assert!(seen.insert(kind.entry(mode).0));
            }
            assert!(seen.insert(kind.tls_port().unwrap()));
        }
        // The traced variants are sane with a config change: same entries.
        assert_eq!(
            PeerKind::SaneTraced.entry(Mode::Http),
            PeerKind::Sane.entry(Mode::Http)
        );
        assert_eq!(
            PeerKind::SaneTracedReachable.entry(Mode::Http),
            PeerKind::Sane.entry(Mode::Http)
        );
        assert_eq!(PeerKind::Direct.entry(Mode::Tcp).0, BACKEND);
    }
}
