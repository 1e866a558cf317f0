//! `sane-bench`: runs the side-by-side benchmark and writes `RESULTS.md`.
//!
//! One run starts the shared backend and the CA, then for every round
//! starts each variant afresh (direct, sane, nginx pair, haproxy pair, in
//! an order that rotates per round), measures it, and stops it; then the
//! scale test and a profile of the sidecar path. `bench/run` installs the
//! peers and builds the release binaries first.

use anyhow::{Context, Result};
use clap::Parser;
use sane_bench::load::{self, Pin, Target};
use sane_bench::procfs::{self, Memory};
use sane_bench::report::{Metric, Results, ScalePoint};
use sane_bench::topology::{self, idle_connections, Mode, PeerKind, Workspace};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// How long the idle client connections are held before hop A's memory is
/// read.
const CONNS_SETTLE: Duration = Duration::from_secs(2);

#[derive(Parser, Debug)]
#[command(name = "sane-bench", about = "Sane Mesh vs direct, nginx and haproxy")]
struct Args {
    /// A smoke run: one short round, small scale test, short profile.
    #[arg(long)]
    quick: bool,
    /// Rounds (each variant restarted per round). Default: 3 (quick: 1).
    #[arg(long)]
    rounds: Option<usize>,
    /// Worker threads/processes of every proxy, one pass per count (the
    /// first pass also runs the tracing variant, the scale test and the
    /// profile). Default: 1,2 (quick: 1).
    #[arg(long, value_delimiter = ',')]
    workers: Vec<u32>,
    /// CPUs of everything (load generators, backend excepted, and proxies)
    /// in passes with more than one worker; empty: no pinning.
    #[arg(long, default_value = "")]
    multi_worker_cpus: String,
    /// CPUs of the load generators (`taskset -c`); empty: no pinning.
    #[arg(long, default_value = "0")]
    load_cpus: String,
    /// CPUs of the backend and the proxies; empty: no pinning.
    #[arg(long, default_value = "1")]
    server_cpus: String,
    /// Fixed request rates for the latency runs.
    #[arg(long, value_delimiter = ',', default_values_t = [1000u32, 5000])]
    rates: Vec<u32>,
    /// Only the variants whose name starts with one of these (direct, sane,
    /// nginx, haproxy; `sane` takes plain sane and both tracing variants,
    /// e.g. `--only sane --workers 1 --no-scale --no-profile`).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Skip the two tracing variants (an A/B run of plain sane).
    #[arg(long)]
    no_tracing: bool,
    /// Skip the scale test.
    #[arg(long)]
    no_scale: bool,
    /// Skip the profile.
    #[arg(long)]
    no_profile: bool,
    /// Where the sane binaries are (`sane-proxy`, `sane-control-plane`,
    /// `sane-otlp-sink`), e.g. a directory holding an older build's
    /// `sane-proxy` for a before/after run. Default: target/release.
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Scratch directory (cleared at start).
    #[arg(long, default_value = "/tmp/sane-bench")]
    work_dir: PathBuf,
    /// Report file. Default: bench/RESULTS.md (quick: bench/results/quick.md).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Measure nothing: start the backend, the control plane and the
    /// variants of `--only` side by side (each on its own ports), print
    /// their entries and process ids, and keep them running until standard
    /// input closes (profiling by hand: `perf sched`, `perf trace`, oha).
    #[arg(long)]
    serve: bool,
}

/// Durations of one round's steps.
#[derive(Clone, Copy, Debug)]
struct Plan {
    warmup: Duration,
    throughput: Duration,
    latency: Duration,
    handshake: Duration,
    connections: u32,
    latency_connections: u32,
    idle_conns: usize,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("bench/ has a parent")?
        .to_path_buf();
    let plan = if args.quick {
        Plan {
            warmup: Duration::from_secs(1),
            throughput: Duration::from_secs(2),
            latency: Duration::from_secs(2),
            handshake: Duration::from_secs(1),
            connections: 32,
            latency_connections: 16,
            idle_conns: 1000,
        }
    } else {
        Plan {
            warmup: Duration::from_secs(2),
            throughput: Duration::from_secs(8),
            latency: Duration::from_secs(10),
            handshake: Duration::from_secs(4),
            connections: 32,
            latency_connections: 16,
            idle_conns: 1000,
        }
    };
    let rounds = args.rounds.unwrap_or(if args.quick { 1 } else { 3 });
    let workers = worker_counts(&args);
    let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
    let pin = Pin(opt(&args.load_cpus));
    let mut ws = Workspace::create(
        args.work_dir.clone(),
        &repo,
        opt(&args.server_cpus),
        workers[0],
    )?;
    if let Some(dir) = &args.bin_dir {
        ws.bin_dir = dir.clone();
    }
    ws.collector_cpus = pin.0.clone();
    let kinds: Vec<PeerKind> = PeerKind::ALL
        .into_iter()
        .filter(|k| {
            args.only.is_empty() || args.only.iter().any(|o| k.name().starts_with(o.as_str()))
        })
        .filter(|k| !(args.no_tracing && k.collector().is_some()))
        .collect();

    if args.serve {
        return serve(&ws, &pin, &kinds);
    }
    let mut results = Results::new(meta(&repo, &args, rounds, &plan), commands(&args, &plan));
    results.workers = workers[0];
    let started = Instant::now();
    let shared = ws.start_shared(pin.0.as_deref())?;
    let mut failures = Vec::new();
    for (pass, &w) in workers.iter().enumerate() {
        let mut pass_results = Results::default();
        let (pass_pin, pass_kinds) = if pass == 0 {
            (pin.clone(), kinds.clone())
        } else {
            // Later passes: the same variants without the tracing ones, and
            // the proxies may use every CPU.
            ws.server_cpus = opt(&args.multi_worker_cpus);
            let k = kinds.iter().copied().filter(|k| k.collector().is_none());
            (Pin(opt(&args.multi_worker_cpus)), k.collect())
        };
        ws.workers = w;
        pass_results.workers = w;
        let r = if pass == 0 {
            &mut results
        } else {
            pass_results.label = format!(
                " ({w} workers per proxy, CPUs {})",
                if args.multi_worker_cpus.is_empty() {
                    "not pinned"
                } else {
                    &args.multi_worker_cpus
                }
            );
            &mut pass_results
        };
        for round in 0..rounds {
            let mut order = pass_kinds.clone();
            let n = order.len().max(1);
            order.rotate_left(round % n);
            for kind in order {
                r.load.push(loadavg());
                eprintln!(
                    "[{:>4}s] {w} worker(s), round {}/{rounds}: {}",
                    started.elapsed().as_secs(),
                    round + 1,
                    kind.name()
                );
                if let Err(e) = measure(&ws, &pass_pin, &plan, &args.rates, kind, r) {
                    let what = format!("{} ({w} workers) round {}", kind.name(), round + 1);
                    eprintln!("FAILED: {what}: {e:#}");
                    failures.push(format!("{what}: {e:#}"));
                }
            }
        }
        if pass > 0 {
            results.load.extend(pass_results.load.iter().copied());
            results.passes.push(pass_results);
        }
    }
    ws.workers = workers[0];
    ws.server_cpus = opt(&args.server_cpus);
    if !args.no_scale && kinds.contains(&PeerKind::Sane) {
        let sizes: &[usize] = if args.quick {
            &[10, 1000]
        } else {
            &[10, 1000, 10000]
        };
        for &n in sizes {
            eprintln!("[{:>4}s] scale: {n} endpoints", started.elapsed().as_secs());
            match scale_point(&ws, &pin, &plan, n) {
                Ok(p) => results.scale.push(p),
                Err(e) => failures.push(format!("scale {n}: {e:#}")),
            }
        }
    }
    if !args.no_profile && kinds.contains(&PeerKind::Sane) {
        eprintln!("[{:>4}s] profile", started.elapsed().as_secs());
        match profile(&ws, &pin, &plan, &repo) {
            Ok(p) => results.profile = Some(p),
            Err(e) => failures.push(format!("profile: {e:#}")),
        }
    }
    results.load.push(loadavg());
    drop(shared);
    results.meta.push((
        "wall time of the run".into(),
        format!("{:.0} s", started.elapsed().as_secs_f64()),
    ));
    results.meta.push((
        "failures".into(),
        if failures.is_empty() {
            "none".into()
        } else {
            failures.join("; ")
        },
    ));
    let notes = repo.join("bench/results/notes.md");
    if !args.quick {
        results.notes = std::fs::read_to_string(&notes).unwrap_or_default();
    }
    let out = args.out.clone().unwrap_or_else(|| {
        repo.join(if args.quick {
            "bench/results/quick.md"
        } else {
            "bench/RESULTS.md"
        })
    });
    std::fs::write(&out, results.render(&args.rates))
        .with_context(|| format!("writing {}", out.display()))?;
    eprintln!("wrote {}", out.display());
    if !failures.is_empty() {
        anyhow::bail!("{} step(s) failed: {}", failures.len(), failures.join("; "));
    }
    Ok(())
}

/// `--serve`: the variants running side by side until standard input closes.
fn serve(ws: &Workspace, pin: &Pin, kinds: &[PeerKind]) -> Result<()> {
    let _shared = ws.start_shared(pin.0.as_deref())?;
    let mut peers = Vec::new();
    let mut served: Vec<(&str, &str)> = Vec::new();
    for &kind in kinds {
        let (http, host) = kind.entry(Mode::Http);
        // The sane variants share their ports and config files (a second
        // one would rewrite the first's config, which it reloads).
        if let Some((_, first)) = served.iter().find(|(entry, _)| *entry == http) {
            println!(
                "{}: not started, it shares its ports with {first} (serve it alone with --only and --no-tracing as needed)",
                kind.name()
            );
            continue;
        }
        served.push((http, kind.name()));
        let peer = ws.start(kind)?;
        let (tcp, _) = kind.entry(Mode::Tcp);
        println!(
            "{}: http {http}{} tcp {tcp} pids {:?} (hop A first)",
            kind.name(),
            host.map(|h| format!(" (Host: {h})")).unwrap_or_default(),
            peer.hop_pids()
        );
        peers.push(peer);
    }
    println!("serving; close standard input (Ctrl-D) to stop");
    std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink())?;
    Ok(())
}

/// The worker counts of the passes: `--workers`, else 1 and 2 (quick: 1).
fn worker_counts(args: &Args) -> Vec<u32> {
    match (&args.workers[..], args.quick) {
        ([], true) => vec![1],
        ([], false) => vec![1, 2],
        (w, _) => w.to_vec(),
    }
}

/// Measures one variant in one round.
fn measure(
    ws: &Workspace,
    pin: &Pin,
    plan: &Plan,
    rates: &[u32],
    kind: PeerKind,
    results: &mut Results,
) -> Result<()> {
    let mut peer = ws.start(kind)?;
    let pids = peer.pids();
    let hops = peer.hop_pids();
    let proxied = kind != PeerKind::Direct;
    if proxied {
        let idle = max_memory(&hops);
        results.record(kind, Mode::Http, Metric::IdleRss, idle.rss);
        results.record(kind, Mode::Http, Metric::IdlePss, idle.pss);
    }
    // The tracing variants differ from sane in HTTP only.
    let full = proxied && kind.collector().is_none();
    let modes: &[Mode] = if full {
        &[Mode::Http, Mode::Tcp]
    } else {
        &[Mode::Http]
    };
    for &mode in modes {
        let (addr, host) = kind.entry(mode);
        let target = Target {
            url: format!("http://{addr}/"),
            host: host.map(str::to_string),
        };
        let mut errors = 0.0;
        load::wrk(pin, &target, plan.connections, plan.warmup)?;
        let cpu0 = procfs::cpu_seconds(&pids);
        let t = load::wrk(pin, &target, plan.connections, plan.throughput)?;
        let cpu = procfs::cpu_seconds(&pids) - cpu0;
        errors += t.errors;
        let mut rec = |m: Metric, v: f64| {
            results.record(kind, mode, m, v);
            if !proxied {
                // Direct traffic is the baseline of both tables.
                results.record(kind, Mode::Tcp, m, v);
            }
        };
        rec(Metric::Rps, t.rps);
        if proxied {
            rec(Metric::Cpu10k, cpu / t.requests * 10_000.0);
        }
        let mode_rates = if mode == Mode::Tcp {
            &rates[..1]
        } else {
            rates
        };
        for &rate in mode_rates {
            let cpu0 = procfs::cpu_seconds(&pids);
            let start = Instant::now();
            let l = load::h2load(
                pin,
                &target,
                rate,
                plan.latency_connections,
                plan.latency,
                &ws.dir.join("h2load.log"),
            )?;
            let vcpu = (procfs::cpu_seconds(&pids) - cpu0) / start.elapsed().as_secs_f64();
            errors += l.errors;
            if proxied && rate == 1000 {
                rec(Metric::VcpuAt1000, vcpu);
            }
            rec(
                Metric::Achieved(rate),
                l.requests / plan.latency.as_secs_f64(),
            );
            rec(Metric::P50(rate), l.p50);
            rec(Metric::P90(rate), l.p90);
            rec(Metric::P99(rate), l.p99);
            rec(Metric::P999(rate), l.p999);
            // The second method at the same rate, right after.
            let o = load::oha(pin, &target, rate, plan.latency_connections, plan.latency)?;
            errors += o.errors;
            rec(
                Metric::OhaAchieved(rate),
                o.requests / plan.latency.as_secs_f64(),
            );
            rec(Metric::OhaP50(rate), o.p50);
            rec(Metric::OhaP90(rate), o.p90);
            rec(Metric::OhaP99(rate), o.p99);
            rec(Metric::OhaP999(rate), o.p999);
        }
        rec(Metric::Errors, errors);
    }
    if proxied {
        let loaded = max_memory(&hops);
        results.record(kind, Mode::Http, Metric::LoadHwm, loaded.hwm);
    }
    if full {
        let (addr, host) = kind.entry(Mode::Http);
        let conns = idle_connections(addr, host, plan.idle_conns)
            .context("opening the idle client connections")?;
        // Idle connections: read once every proxy has had time to settle
        // them (sane parks an idle connection's buffers after 100 ms and
        // gives freed heap back within a second), the same wait for every
        // variant, as bench/callgrind.sh's MEMORY=1 and conn-memory do.
        // allow-sleep: a measurement interval, not a readiness wait.
        std::thread::sleep(CONNS_SETTLE);
        let with_conns = procfs::memory(&hops[0]);
        drop(conns);
        results.record(kind, Mode::Http, Metric::ConnsRss, with_conns.rss);
        results.record(kind, Mode::Http, Metric::ConnsPss, with_conns.pss);
        if let Some(tls) = kind.tls_port() {
            let rate = load::handshakes(
                pin,
                tls,
                &ws.cert("client.crt"),
                &ws.cert("client.key"),
                &ws.cert("ca.pem"),
                plan.handshake,
            )?;
            results.record(kind, Mode::Http, Metric::Handshakes, rate);
        }
    }
    if let Some(c) = peer.span_counts()? {
        let h = Mode::Http;
        results.record(kind, h, Metric::SpansExported, c.exported);
        results.record(kind, h, Metric::SpansDropped, c.dropped);
        results.record(kind, h, Metric::SpansFailed, c.failed);
        if let Some(n) = c.received {
            results.record(kind, h, Metric::SpansReceived, n);
        }
    }
    drop(peer);
    Ok(())
}

/// The larger hop's memory, field by field.
fn max_memory(hops: &[Vec<u32>]) -> Memory {
    hops.iter()
        .map(|h| procfs::memory(h))
        .fold(Memory::default(), |a, b| Memory {
            rss: a.rss.max(b.rss),
            hwm: a.hwm.max(b.hwm),
            pss: a.pss.max(b.pss),
            private: a.private.max(b.private),
        })
}

/// The sane pair with `n` extra services (one endpoint each) in hop A.
fn scale_point(ws: &Workspace, pin: &Pin, plan: &Plan, n: usize) -> Result<ScalePoint> {
    let (services, endpoints) = topology::scale_resources(n);
    let start = Instant::now();
    let peer = ws.start_with(PeerKind::Sane, &services, &endpoints)?;
    let start_s = start.elapsed().as_secs_f64();
    let hops = peer.hop_pids();
    let idle = procfs::memory(&hops[0]);
    let (addr, host) = PeerKind::Sane.entry(Mode::Http);
    let target = Target {
        url: format!("http://{addr}/"),
        host: host.map(str::to_string),
    };
    load::wrk(pin, &target, plan.connections, plan.warmup)?;
    let l = load::h2load(
        pin,
        &target,
        1000,
        plan.latency_connections,
        plan.latency,
        &ws.dir.join("h2load.log"),
    )?;
    Ok(ScalePoint {
        endpoints: n,
        start_s,
        rss: idle.rss,
        pss: idle.pss,
        p50: l.p50,
        p99: l.p99,
    })
}

/// `perf record` of both sane hops under `wrk` load: the top self costs,
/// and a flamegraph when `inferno` is installed.
fn profile(ws: &Workspace, pin: &Pin, plan: &Plan, repo: &Path) -> Result<String> {
    let peer = ws.start(PeerKind::Sane)?;
    let pids: Vec<String> = peer.pids().iter().map(u32::to_string).collect();
    let data = ws.dir.join("perf.data");
    let secs = plan.throughput.as_secs().clamp(2, 6);
    let mut rec = Command::new("perf")
        .args([
            "record",
            "-F",
            "999",
            "-g",
            "--call-graph",
            "dwarf,16384",
            "-o",
        ])
        .arg(&data)
        .args(["-p", &pids.join(",")])
        .args(["--", "sleep", &secs.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("running perf record (install linux-perf)")?;
    let (addr, host) = PeerKind::Sane.entry(Mode::Http);
    let target = Target {
        url: format!("http://{addr}/"),
        host: host.map(str::to_string),
    };
    let t = load::wrk(
        pin,
        &target,
        plan.connections,
        Duration::from_secs(secs + 1),
    )?;
    rec.wait()?;
    drop(peer);
    let report = Command::new("perf")
        .args(["report", "--no-children", "--stdio", "-g", "none"])
        .args(["--sort", "dso,symbol", "--percent-limit", "0.7", "-i"])
        .arg(&data)
        .output()
        .context("running perf report")?;
    let text = String::from_utf8_lossy(&report.stdout);
    // perf pads every row with blank columns; keep the figure and the name.
    let top: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.trim_end().trim_end_matches(['-', ' ']))
        .take(40)
        .collect();
    let mut out = format!(
        "`perf record -F 999 --call-graph dwarf` of both sane hops (one worker each) for {secs} s \
         under `wrk -c32` ({:.0} req/s while profiled), `perf report --no-children --sort dso,symbol` \
         (self time, entries ≥ 0.7 %):\n\n```text\n{}\n```\n",
        t.rps,
        top.join("\n")
    );
    let svg = repo.join("bench/results/sane-flamegraph.svg");
    let collapse = which("inferno-collapse-perf");
    let flame = which("inferno-flamegraph");
    if let (Some(collapse), Some(flame)) = (collapse, flame) {
        let script = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "perf script -i '{}' 2>/dev/null | '{}' | '{}' > '{}'",
                data.display(),
                collapse.display(),
                flame.display(),
                svg.display()
            ))
            .status()?;
        if script.success() {
            out += "\nFlamegraph: [`results/sane-flamegraph.svg`](results/sane-flamegraph.svg).\n";
        }
    }
    Ok(out)
}

fn which(name: &str) -> Option<PathBuf> {
    let home = std::env::var("HOME").unwrap_or_default();
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(PathBuf::from)
        .chain([Path::new(&home).join(".cargo/bin")])
        .map(|d| d.join(name))
        .find(|p| p.exists())
}

fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

fn sh(cmd: &str) -> String {
    Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .map(|o| {
            let mut s = String::from_utf8_lossy(&o.stdout).to_string();
            s += &String::from_utf8_lossy(&o.stderr);
            s.trim().replace('\n', "; ")
        })
        .unwrap_or_default()
}

fn meta(repo: &Path, args: &Args, rounds: usize, plan: &Plan) -> Vec<(String, String)> {
    let git = |a: &str| sh(&format!("git -C '{}' {a}", repo.display()));
    vec![
        ("date (UTC)".into(), sh("date -u '+%Y-%m-%d %H:%M'")),
        (
            "CPU".into(),
            sh("lscpu | grep -E '^(Model name|CPU\\(s\\)|Thread|Core|Socket|L3)' | sed 's/  */ /g'"),
        ),
        ("memory".into(), sh("grep MemTotal /proc/meminfo")),
        ("kernel".into(), sh("uname -srm")),
        ("commit".into(), git("log -1 --format='%h %s'")),
        ("rustc".into(), sh("rustc --version")),
        ("nginx".into(), sh("nginx -v")),
        ("haproxy".into(), sh("haproxy -v | head -1")),
        ("wrk".into(), sh("wrk -v | head -1")),
        ("h2load".into(), sh("h2load --version")),
        ("oha".into(), sh("oha --version")),
        ("openssl".into(), sh("openssl version")),
        (
            "pinning".into(),
            format!(
                "load generators on CPU {:?}, backend and proxies on CPU {:?} (control plane and OTLP sink on the load CPU)",
                args.load_cpus, args.server_cpus
            ),
        ),
        (
            "workers per proxy".into(),
            format!(
                "{} (one pass each; sane `--workers`, nginx `worker_processes`, haproxy `nbthread`); \
                 passes with more than one worker pin everything to CPUs {:?} (empty: not pinned)",
                worker_counts(args)
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(" and "),
                args.multi_worker_cpus
            ),
        ),
        (
            "plan".into(),
            format!(
                "{rounds} round(s){}, each variant restarted per round, rotating order; warm-up {:?}, \
                 throughput {:?} at c={}, latency {:?} per rate at c={}, {} idle connections, handshakes {:?}",
                if args.quick { " (--quick)" } else { "" },
                plan.warmup,
                plan.throughput,
                plan.connections,
                plan.latency,
                plan.latency_connections,
                plan.idle_conns,
                plan.handshake
            ),
        ),
    ]
}

fn commands(args: &Args, plan: &Plan) -> Vec<String> {
    let pin = if args.load_cpus.is_empty() {
        String::new()
    } else {
        format!("taskset -c {} ", args.load_cpus)
    };
    let t = Target {
        url: "http://127.0.0.1:18021/".into(),
        host: Some("backend".into()),
    };
    let q = |v: Vec<String>| {
        v.into_iter()
            .map(|a| if a.contains(' ') { format!("'{a}'") } else { a })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut out = vec![
        format!(
            "# the run\nbench/run{}",
            std::env::args()
                .skip(1)
                .map(|a| format!(" {a}"))
                .collect::<String>()
        ),
        "# servers (pinned with taskset -c <server cpus>); configs in bench/peers/, @WORK@ = the scratch dir".into(),
        "nginx -p @WORK@/run -c @WORK@/conf/{backend,nginx-a,nginx-b}.conf -g 'daemon off;'".into(),
        "haproxy -db -f @WORK@/conf/haproxy-{a,b}.cfg".into(),
        "sane-proxy --config @WORK@/conf/sane-{a,b}.yaml --workers <1|2>".into(),
        "sane-control-plane --ca-cert-chain ca.pem --ca-key ca.key ...   # CA for the sidecars' certificates".into(),
        "# load (sane entry shown; nginx :18001/:18003, haproxy :18011/:18013, direct :18080, sane TCP :18023)".into(),
        format!("{pin}wrk {}", q(load::wrk_args(&t, plan.connections, plan.throughput))),
    ];
    for &rate in &args.rates {
        out.push(format!(
            "{pin}h2load {}",
            q(load::h2load_args(
                &t,
                rate,
                plan.latency_connections,
                plan.latency,
                "@WORK@/h2load.log"
            ))
        ));
        out.push(format!(
            "{pin}oha {}",
            q(load::oha_args(
                &t,
                rate,
                plan.latency_connections,
                plan.latency
            ))
        ));
    }
    out.push(format!(
        "{pin}openssl s_time -connect 127.0.0.1:18022 -new -time {} -cert client.crt -key client.key -CAfile ca.pem",
        plan.handshake.as_secs()
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_run_parses_with_defaults() {
        let a = Args::try_parse_from(["sane-bench", "--quick", "--only", "sane,nginx"]).unwrap();
        assert!(a.quick);
        assert_eq!(a.rates, vec![1000, 5000]);
        assert_eq!(a.only, vec!["sane", "nginx"]);
        assert_eq!(worker_counts(&a), vec![1]);
        let b = Args::try_parse_from(["sane-bench", "--rates", "2000", "--rounds", "5"]).unwrap();
        assert_eq!(worker_counts(&b), vec![1, 2]);
        assert_eq!((b.rates, b.rounds), (vec![2000], Some(5)));
        let c = Args::try_parse_from(["sane-bench", "--workers", "2"]).unwrap();
        assert_eq!(worker_counts(&c), vec![2]);
        assert!(Args::try_parse_from(["sane-bench", "--bogus"]).is_err());
    }
}
