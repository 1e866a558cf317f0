//! `registry-writes`: how registry writes through the HTTP API scale with
//! the size of the registry.
//!
//! Starts one `sane-control-plane` on a fresh data directory, then
//! `--clients` threads each PUT their share of `--services` services (one
//! keep-alive connection per client; service `i` goes to client
//! `i % clients`). Every write must answer `201`. Prints the throughput, the
//! latency percentiles, and the write rate near the start (the first 2 % of
//! the writes, "at 100" for 10 000) against the rate at the end (the last
//! 2 %, "at 10 000"): a write that cost the whole registry showed as the
//! second falling far below the first. Then checks every service is listed,
//! kills the control plane with SIGKILL (a crash: no shutdown step), starts
//! it again on the same directory and checks every service came back.
//! `bench/registry-writes.sh` builds the binaries and runs it.

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "registry-writes-bench-token";
const NAMESPACE: &str = "bench";

#[derive(Parser, Debug)]
#[command(name = "registry-writes", about = "Registry write throughput vs size")]
struct Args {
    /// The control-plane binary.
    #[arg(long, default_value = "target/release/sane-control-plane")]
    control_plane: PathBuf,
    /// Services to write.
    #[arg(long, default_value_t = 10_000)]
    services: usize,
    /// Concurrent API clients.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Scratch directory (cleared at start): the data directory and the
    /// control plane's log.
    #[arg(long, default_value = "/tmp/sane-registry-writes")]
    work_dir: PathBuf,
    /// Also write the report (markdown) here.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// One finished write.
#[derive(Clone, Copy, Debug)]
struct Write1 {
    done: Instant,
    latency: Duration,
}

fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(
        args.clients > 0 && args.services >= 50,
        "need clients and >= 50 services"
    );
    let _ = fs::remove_dir_all(&args.work_dir);
    fs::create_dir_all(&args.work_dir)?;
    let data = args.work_dir.join("data");

    let (mut cp, api) = start(&args.control_plane, &data, &args.work_dir.join("cp.log"))?;
    let started = Instant::now();
    let threads: Vec<_> = (0..args.clients)
        .map(|c| {
            let api = api.clone();
            let (n, clients) = (args.services, args.clients);
            std::thread::spawn(move || -> Result<Vec<Write1>> {
                let mut conn = Conn::open(&api)?;
                let mut out = Vec::new();
                for i in (c..n).step_by(clients) {
                    let path = format!("/api/v1/services/{NAMESPACE}/svc-{i}");
                    let t = Instant::now();
                    let (status, body) =
                        conn.request("PUT", &path, Some(r#"{"ports":[{"port":80}]}"#))?;
                    if status != 201 {
                        bail!("PUT {path}: {status} {body}");
                    }
                    out.push(Write1 {
                        done: Instant::now(),
                        latency: t.elapsed(),
                    });
                }
                Ok(out)
            })
        })
        .collect();
    let mut writes = Vec::new();
    for t in threads {
        writes.extend(
            t.join()
                .map_err(|_| anyhow::anyhow!("a client panicked"))??,
        );
    }
    let wall = started.elapsed();
    writes.sort_by_key(|w| w.done);

    let listed = count_services(&api)?;
    ensure!(
        listed == args.services,
        "listed {listed} of {} services",
        args.services
    );

    // A crash: SIGKILL, then recovery from the data directory.
    cp.0.kill()?;
    cp.0.wait()?;
    let restarted = Instant::now();
    let (_cp, api) = start(&args.control_plane, &data, &args.work_dir.join("cp2.log"))?;
    let recovery = restarted.elapsed();
    let recovered = count_services(&api)?;
    ensure!(
        recovered == args.services,
        "after a SIGKILL and restart: {recovered} of {} services",
        args.services
    );

    let report = report(&args, &writes, wall, recovery);
    print!("{report}");
    if let Some(out) = &args.out {
        fs::write(out, &report).with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}

/// The report: totals, latency, and the rate near the start vs the end.
fn report(args: &Args, writes: &[Write1], wall: Duration, recovery: Duration) -> String {
    let n = writes.len();
    let mut lat: Vec<Duration> = writes.iter().map(|w| w.latency).collect();
    lat.sort();
    let pct = |p: f64| lat[((n as f64 * p).ceil() as usize).clamp(1, n) - 1];
    let ms = |d: Duration| format!("{:.2}", d.as_secs_f64() * 1e3);
    let window = (n / 50).max(20);
    let rate = |from: usize| {
        let span = writes[from + window - 1].done - writes[from].done;
        (window - 1) as f64 / span.as_secs_f64().max(1e-9)
    };
    let (early, late) = (rate(0), rate(n - window));
    let mut out = String::new();
    out += &format!(
        "{n} services written through `PUT /api/v1/services/…` by {} clients (keep-alive), one fresh data directory\n\n",
        args.clients
    );
    out += "| writes | wall time | writes/s | p50 ms | p90 ms | p99 ms | max ms | rate at the start (first 2 %) | rate at the end (last 2 %) | end / start | recovery after SIGKILL |\n";
    out += "|---|---|---|---|---|---|---|---|---|---|---|\n";
    out += &format!(
        "| {n} | {:.1} s | {:.0} | {} | {} | {} | {} | {early:.0}/s | {late:.0}/s | ×{:.2} | {} ms, all {n} back |\n\n",
        wall.as_secs_f64(),
        n as f64 / wall.as_secs_f64(),
        ms(pct(0.50)),
        ms(pct(0.90)),
        ms(pct(0.99)),
        ms(lat[n - 1]),
        late / early,
        recovery.as_millis(),
    );
    out += "Rate per tenth of the run (writes/s, by completion order):\n\n| writes | rate |\n|---|---|\n";
    let tenth = n / 10;
    for k in 0..10 {
        let from = k * tenth;
        let to = if k == 9 { n - 1 } else { from + tenth - 1 };
        let span = writes[to].done - writes[from].done;
        out += &format!(
            "| {}–{} | {:.0} |\n",
            from + 1,
            to + 1,
            (to - from) as f64 / span.as_secs_f64().max(1e-9)
        );
    }
    out
}

/// The control plane on `data`, once it printed its API address.
fn start(bin: &Path, data: &Path, log: &Path) -> Result<(ChildGuard, String)> {
    let mut child = Command::new(bin)
        .args(["--xds-addr", "127.0.0.1:0", "--api-addr", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(data)
        .args(["--api-token", TOKEN])
        .stdout(Stdio::piped())
        .stderr(fs::File::create(log)?)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let stdout = child.stdout.take().context("stdout")?;
    let guard = ChildGuard(child);
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        if let Some(addr) = line.strip_prefix("listening name=api addr=") {
            return Ok((guard, addr.to_string()));
        }
    }
    bail!(
        "the control plane exited before listening; see {}",
        log.display()
    )
}

fn count_services(api: &str) -> Result<usize> {
    let mut conn = Conn::open(api)?;
    let path = format!("/api/v1/services?namespace={NAMESPACE}");
    let (status, body) = conn.request("GET", &path, None)?;
    ensure!(status == 200, "GET {path}: {status} {body}");
    let v: serde_json::Value = serde_json::from_str(&body)?;
    Ok(v["items"].as_array().map_or(0, Vec::len))
}

/// Kills the process on drop.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One keep-alive HTTP/1.1 connection to the API.
struct Conn {
    reader: BufReader<TcpStream>,
    addr: String,
}

impl Conn {
    fn open(addr: &str) -> Result<Conn> {
        let s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Conn {
            reader: BufReader::new(s),
            addr: addr.to_string(),
        })
    }

    /// Sends one request and reads the answer (`Content-Length` bodies).
    fn request(&mut self, method: &str, path: &str, json: Option<&str>) -> Result<(u16, String)> {
        let body = json.unwrap_or("");
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        self.reader.get_mut().write_all(req.as_bytes())?;
        let mut status_line = String::new();
        self.reader.read_line(&mut status_line)?;
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .context("empty reply")?
            .parse()?;
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            self.reader.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((name, value)) = h.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    len = value.trim().parse()?;
                }
            }
        }
        let mut buf = vec![0; len];
        self.reader.read_exact(&mut buf)?;
        Ok((status, String::from_utf8_lossy(&buf).into_owned()))
    }
}
