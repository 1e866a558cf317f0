//! `conn-memory`: what one idle keep-alive client connection costs a
//! sidecar.
//!
//! Starts one `sane-proxy` with a minimal static config (an outbound HTTP
//! listener routing `Host: backend` straight to a tiny in-process HTTP/1.1
//! backend answering `200 ok`), measures its memory idle, then opens
//! `--conns` client connections that each send one keep-alive request, read
//! the answer and stay open, and measures again; then closes them and
//! measures a third time. Memory is `VmRSS` and the `Pss` of
//! `/proc/PID/smaps_rollup`; the difference divided by the connection count
//! is the cost per connection.
//!
//! `--endpoints 10,1000,10000` measures the config's share instead: for
//! each size, a proxy whose config also has that many services with one
//! endpoint each (the scale test's, `topology::scale_resources`), idle
//! memory only (after the first requests and `--settle`), and the
//! least-squares RSS per 1 000 endpoints.
//!
//! With `--control-plane <sane-control-plane binary>` the services and
//! endpoints come over xDS instead of the file: for each size a control
//! plane (plaintext on loopback) follows a `--config-dir` holding them, and
//! the proxy's file has only its listener and the `control_plane` section,
//! as an injected sidecar's has.
//!
//! `--wrap heaptrack` runs the proxy under a wrapper command instead (the
//! memory figures are then the wrapper's and not printed); the proxy is
//! stopped through its admin `POST /drain` so the wrapper sees a clean exit.
//! `bench/conn-memory.sh` builds the binaries and runs both.

use anyhow::{bail, Context, Result};
use clap::Parser;
use sane_bench::procfs;
use sane_bench::stats::slope;
use sane_bench::topology::{http, idle_connections, poll, scale_resources, API_TOKEN};
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(name = "conn-memory", about = "Memory per idle keep-alive connection")]
struct Args {
    /// The proxy binary.
    #[arg(long, default_value = "target/release/sane-proxy")]
    proxy: PathBuf,
    /// Idle client connections to open.
    #[arg(long, default_value_t = 1000)]
    conns: usize,
    /// The proxy's `--workers`.
    #[arg(long, default_value_t = 1)]
    workers: u32,
    /// Time between opening the connections and reading the memory, so
    /// per-connection work that happens after a request (releasing buffers
    /// of an idle connection) is counted as it would be on a real server.
    #[arg(long, default_value = "2", value_parser = secs)]
    settle: Duration,
    /// Run the proxy under this command (e.g. `heaptrack -o FILE`); takes
    /// the rest of the command line, so it goes last.
    #[arg(long, allow_hyphen_values = true, num_args = 1..)]
    wrap: Vec<String>,
    /// Config sizes to measure instead of connections: extra services with
    /// one endpoint each (comma-separated counts).
    #[arg(long, value_delimiter = ',')]
    endpoints: Vec<usize>,
    /// Add a transparent outbound listener, as a sidecar behind iptables
    /// interception has (it makes the proxy compile the original-destination
    /// table: every endpoint address).
    #[arg(long)]
    transparent: bool,
    /// With `--endpoints`: the `sane-control-plane` binary that serves the
    /// services and endpoints over xDS (instead of the proxy's file).
    #[arg(long)]
    control_plane: Option<PathBuf>,
    /// Scratch directory for the config and the proxy's log (`proxy.log`).
    #[arg(long, default_value = "/tmp/sane-conn-memory")]
    work_dir: PathBuf,
}

fn secs(s: &str) -> Result<Duration, std::num::ParseFloatError> {
    s.parse::<f64>().map(Duration::from_secs_f64)
}

fn main() -> Result<()> {
    let args = Args::parse();
    fs::create_dir_all(&args.work_dir)?;
    let backend = spawn_backend()?;
    if !args.endpoints.is_empty() {
        return endpoint_scale(&args, backend);
    }
    let (mut proxy, entry, admin) = start(&args, backend, 0, None)?;
    let pid = proxy.0.id();
    let measured = args.wrap.is_empty();
    settle(args.settle);
    let idle = procfs::memory(&[pid]);
    let opened = Instant::now();
    let conns = idle_connections(&entry, Some("backend"), args.conns)
        .context("opening the idle client connections")?;
    let open_secs = opened.elapsed().as_secs_f64();
    let at_once = procfs::memory(&[pid]);
    settle(args.settle);
    let with = procfs::memory(&[pid]);
    drop(conns);
    settle(args.settle);
    let closed = procfs::memory(&[pid]);

    // Drain: the proxy exits 0, so a wrapper (heaptrack) writes its data.
    let _ = http(&admin, "POST", "/drain", None, None);
    let exit = proxy.wait(Duration::from_secs(30))?;
    if !measured {
        println!("proxy ran under {:?}; exit {exit}", args.wrap);
        return Ok(());
    }
    let n = args.conns as f64;
    let per = |a: f64, b: f64| (b - a) * 1024.0 / n;
    println!(
        "{} connections opened in {open_secs:.2} s; settle {:.1} s; workers {}",
        args.conns,
        args.settle.as_secs_f64(),
        args.workers
    );
    println!();
    println!("| | RSS (MiB) | PSS (MiB) | private (MiB) |");
    println!("|---|---|---|---|");
    for (label, m) in [
        ("idle", idle),
        ("right after opening", at_once),
        ("with the connections (settled)", with),
        ("after closing them", closed),
    ] {
        println!(
            "| {label} | {:.1} | {:.1} | {:.1} |",
            m.rss, m.pss, m.private
        );
    }
    println!();
    println!(
        "per connection: RSS {:.1} KiB, PSS {:.1} KiB (settled); RSS {:.1} KiB right after opening",
        per(idle.rss, with.rss),
        per(idle.pss, with.pss),
        per(idle.rss, at_once.rss),
    );
    Ok(())
}

/// Idle memory of a proxy per config size, and the slope.
fn endpoint_scale(args: &Args, backend: u16) -> Result<()> {
    println!(
        "idle memory by config size (extra services with one endpoint each); settle {:.1} s; workers {}{}{}",
        args.settle.as_secs_f64(),
        args.workers,
        if args.transparent { "; with a transparent listener" } else { "" },
        if args.control_plane.is_some() { "; over xDS from a control plane" } else { "" }
    );
    println!();
    println!("| endpoints | start (s) | RSS (MiB) | PSS (MiB) | private (MiB) |");
    println!("|---|---|---|---|---|");
    let mut points = Vec::new();
    for &n in &args.endpoints {
        let cp = match &args.control_plane {
            Some(bin) => Some(ControlPlane::start(bin, &args.work_dir, backend, n)?),
            None => None,
        };
        let started = Instant::now();
        let (mut proxy, _, admin) = start(args, backend, n, cp.as_ref())?;
        let start_secs = started.elapsed().as_secs_f64();
        settle(args.settle);
        let m = procfs::memory(&[proxy.0.id()]);
        let _ = http(&admin, "POST", "/drain", None, None);
        proxy.wait(Duration::from_secs(30))?;
        println!(
            "| {n} | {start_secs:.2} | {:.1} | {:.1} | {:.1} |",
            m.rss, m.pss, m.private
        );
        points.push((n as f64, m.rss));
    }
    println!();
    match slope(&points) {
        Some(s) => println!("RSS per 1 000 endpoints: {:.2} MiB", s * 1000.0),
        None => println!("RSS per 1 000 endpoints: needs two sizes"),
    }
    Ok(())
}

/// Starts the proxy with `extra` scale-test services (from `cp` when
/// given, which then holds them), waits until it serves and sends a few
/// requests, so the upstream pool and the lazily built state exist before a
/// measurement. Returns it with its outbound and admin addresses.
fn start(
    args: &Args,
    backend: u16,
    extra: usize,
    cp: Option<&ControlPlane>,
) -> Result<(Proxy, String, String)> {
    let config = args.work_dir.join("sane.yaml");
    let yaml = match cp {
        Some(cp) => cp.proxy_yaml(args.transparent),
        None => config_yaml(backend, extra, args.transparent),
    };
    fs::write(&config, yaml)?;
    let mut cmd = match args.wrap.split_first() {
        Some((w, rest)) => {
            let mut c = Command::new(w);
            c.args(rest).arg(&args.proxy);
            c
        }
        None => Command::new(&args.proxy),
    };
    cmd.arg("--config")
        .arg(&config)
        .arg("--workers")
        .arg(args.workers.to_string())
        .stdout(Stdio::piped())
        .stderr(fs::File::create(args.work_dir.join("proxy.log"))?);
    let mut proxy = Proxy(cmd.spawn().context("starting sane-proxy")?);
    let (entry, admin) = proxy.addresses()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    poll(deadline, || {
        let (status, body) = http(&entry, "GET", "/", Some("backend"), None)?;
        if status != 200 || body != "ok" {
            bail!("{status} {body}");
        }
        Ok(())
    })
    .context("waiting for the proxy to serve")?;
    // Ready once every xDS type was applied (at once without a control
    // plane): each type's first push is a compile of the whole config.
    poll(deadline, || {
        match http(&admin, "GET", "/ready", None, None)? {
            (200, _) => Ok(()),
            (status, body) => bail!("/ready: {status} {body}"),
        }
    })
    .context("waiting for the proxy to be ready")?;
    for _ in 0..10 {
        http(&entry, "GET", "/", Some("backend"), None)?;
    }
    Ok((proxy, entry, admin))
}

fn settle(d: Duration) {
    // allow-sleep: a measurement interval (let the proxy reach its idle
    // state), not waiting for readiness.
    std::thread::sleep(d);
}

const INTERCEPT: &str = "    - { name: intercept, direction: outbound, protocol: http, address: \"127.0.0.1:0\", transparent: true }\n";

fn config_yaml(backend: u16, extra: usize, transparent: bool) -> String {
    let (services, endpoints) = scale_resources(extra);
    let intercept = if transparent { INTERCEPT } else { "" };
    format!(
        r#"# conn-memory: one outbound HTTP listener, the backend without a sidecar.
node: {{ id: conn-memory, namespace: default, workload: conn-memory }}
admin: {{ address: "127.0.0.1:0" }}
drain_timeout: 1s
resources:
  listeners:
    - {{ name: outbound, direction: outbound, protocol: http, address: "127.0.0.1:0" }}
{intercept}  services:
    - name: backend
      ports:
        - {{ name: http, port: 80, target_port: {backend}, protocol: http }}
{services}  endpoints:
    - {{ service: backend, address: 127.0.0.1 }}
{endpoints}"#
    )
}

/// The services and endpoints of [`config_yaml`], as a control plane's
/// `--config-dir` file.
fn resources_yaml(backend: u16, extra: usize) -> String {
    let (services, endpoints) = scale_resources(extra);
    format!(
        r#"services:
    - name: backend
      ports:
        - {{ name: http, port: 80, target_port: {backend}, protocol: http }}
{services}endpoints:
    - {{ service: backend, address: 127.0.0.1 }}
{endpoints}"#
    )
}

/// A control plane serving the scale resources over plaintext xDS on
/// loopback, with a workload token for the proxy; killed when dropped.
struct ControlPlane {
    /// Killed when dropped.
    _proc: Proxy,
    xds: String,
    token_file: PathBuf,
}

impl ControlPlane {
    fn start(
        bin: &PathBuf,
        work_dir: &std::path::Path,
        backend: u16,
        extra: usize,
    ) -> Result<Self> {
        let data = work_dir.join("cp-data");
        let conf = work_dir.join("cp-conf");
        let _ = fs::remove_dir_all(&data);
        let _ = fs::remove_dir_all(&conf);
        fs::create_dir_all(&data)?;
        fs::create_dir_all(&conf)?;
        fs::write(conf.join("scale.yaml"), resources_yaml(backend, extra))?;
        let mut cmd = Command::new(bin);
        cmd.args(["--insecure-plaintext-loopback"])
            .args(["--xds-addr", "127.0.0.1:0", "--api-addr", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(&data)
            .arg("--config-dir")
            .arg(&conf)
            .args(["--api-token", API_TOKEN])
            .stdout(Stdio::piped())
            .stderr(fs::File::create(work_dir.join("control-plane.log"))?);
        let mut proc = Proxy(cmd.spawn().context("starting sane-control-plane")?);
        let addrs = proc.listening(&["xds", "api"])?;
        let (xds, api) = (addrs[0].clone(), addrs[1].clone());
        let body = r#"{"namespace":"default","service_account":"default"}"#;
        let deadline = Instant::now() + Duration::from_secs(30);
        let reply = poll(deadline, || {
            http(&api, "POST", "/api/v1/tokens", None, Some(body))
        })
        .context("issuing a workload token")?;
        if reply.0 != 200 && reply.0 != 201 {
            bail!("issuing a workload token: {} {}", reply.0, reply.1);
        }
        let v: serde_json::Value = serde_json::from_str(&reply.1)?;
        let token = v["token"].as_str().context("no token in the reply")?;
        let token_file = work_dir.join("proxy.token");
        fs::write(&token_file, token)?;
        // The file is one registry write: with its last service there, the
        // proxy's first push of each type is the whole set.
        let last = format!("/api/v1/services/default/svc-{}", extra.saturating_sub(1));
        let last = if extra == 0 {
            "/api/v1/services/default/backend".to_string()
        } else {
            last
        };
        poll(deadline, || match http(&api, "GET", &last, None, None)? {
            (200, _) => Ok(()),
            (status, body) => bail!("{last}: {status} {body}"),
        })
        .context("waiting for the control plane to load the resources")?;
        Ok(Self {
            _proc: proc,
            xds,
            token_file,
        })
    }

    /// The proxy's file: its listeners and this control plane.
    fn proxy_yaml(&self, transparent: bool) -> String {
        let intercept = if transparent { INTERCEPT } else { "" };
        format!(
            r#"# conn-memory: one outbound HTTP listener; services and endpoints over xDS.
node: {{ id: "default.default~conn-memory", namespace: default, workload: conn-memory }}
admin: {{ address: "127.0.0.1:0" }}
drain_timeout: 1s
control_plane: {{ address: "http://{}", token_file: "{}" }}
resources:
  listeners:
    - {{ name: outbound, direction: outbound, protocol: http, address: "127.0.0.1:0" }}
{intercept}"#,
            self.xds,
            self.token_file.display()
        )
    }
}

/// A keep-alive HTTP/1.1 server answering every request `200 ok`, one
/// thread per connection (the proxy opens few).
fn spawn_backend() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || serve_backend(stream));
        }
    });
    Ok(port)
}

fn serve_backend(mut s: TcpStream) {
    let _ = s.set_nodelay(true);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.drain(..end + 4);
            let rsp = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok";
            if s.write_all(rsp).is_err() {
                return;
            }
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The proxy process, killed if still running when dropped.
struct Proxy(Child);

impl Proxy {
    /// The outbound listener's and the admin server's addresses, from the
    /// proxy's `listening name=… addr=…` lines.
    fn addresses(&mut self) -> Result<(String, String)> {
        let addrs = self.listening(&["outbound", "admin"])?;
        Ok((addrs[0].clone(), addrs[1].clone()))
    }

    /// The addresses of the `names` listeners, in that order, from the
    /// process's `listening name=… addr=…` lines.
    fn listening(&mut self, names: &[&str]) -> Result<Vec<String>> {
        let out = self.0.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(out).lines();
        let mut found: Vec<Option<String>> = vec![None; names.len()];
        while found.iter().any(Option::is_none) {
            let line = lines
                .next()
                .context("the process exited before listening")??;
            let Some(rest) = line.strip_prefix("listening name=") else {
                continue;
            };
            let (name, addr) = rest.split_once(" addr=").context("bad listening line")?;
            if let Some(i) = names.iter().position(|n| *n == name) {
                found[i] = Some(addr.to_string());
            }
        }
        // Keep reading (and discarding) stdout so the process never blocks on it.
        std::thread::spawn(move || lines.for_each(drop));
        Ok(found.into_iter().map(Option::unwrap_or_default).collect())
    }

    fn wait(&mut self, within: Duration) -> Result<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        poll(deadline, || {
            self.0
                .try_wait()?
                .context("the proxy is still running after the drain")
        })
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
