//! `fleet`: the control plane under a simulated fleet of proxies.
//!
//! For each fleet size (`--proxies`, default 100, 1 000 and 5 000) and each
//! protocol (`--protocols`, state of the world and delta), starts a fresh
//! release `sane-control-plane` (TLS on both ports, as deployed), fills its
//! registry through the API with a realistic mesh — N/10 services, each
//! with 3 endpoints and one route, in `--namespaces` namespaces — and opens
//! N real ADS streams to it, each over its own TLS connection, with a
//! workload token of its service and a node id of that workload
//! (`svc-<i>.<namespace>~p-<n>`) and the inbound address of one of its
//! service's endpoints, as a sidecar of that service would.
//!
//! A stream speaks xDS as the proxy does, without the data plane: the
//! proxy's own client code builds its node (`sane_proxy::xds::envoy_node`)
//! and connects (`sane_proxy::tls::control_plane::connect`, verifying the
//! control plane against `<data-dir>/root-cert.pem`); every response goes
//! through the proxy's state machine (`sane_proxy::xds::state`: each
//! resource whose bytes are not those of one it holds is decoded and
//! validated, an invalid one would be a NACK) and is ACKed; what a proxy
//! does beyond that (compiling its routing tables) is left out.
//! State-of-the-world streams
//! subscribe like the proxy (wildcard, every type); delta streams (the
//! proxy has no delta client) subscribe to the same types by wildcard, keep
//! the resources they hold by name, and decode and validate each with the
//! same function.
//!
//! Then, `--changes` times each, one route change (a PUT of one route with
//! a new timeout) and one endpoint change (alternately adding and deleting
//! a fourth endpoint of one service), spaced by `--gap`: for each, the time
//! from just before the API write to the last ACK of a response that holds
//! it, over every proxy that sees the changed service; the control plane's
//! CPU seconds (user + system, `/proc/<pid>/stat`) spent from the write to
//! the end of the gap; and its RSS. Prints a markdown report (and writes it
//! to `--out`). `bench/fleet.sh` builds the binaries and runs it.
//!
//! `--topologies` picks what serves the fleet: `file` (default) is one
//! control plane on its embedded file store; `etcd:<k>` is `k` replicas on
//! a fresh `--etcd-members`-member etcd cluster (`sane_bench::etcd`, real
//! `etcd` processes on loopback), sharing one operator CA, with the
//! proxies spread round-robin over the replicas (proxy `i` streams from
//! replica `i % k`). Every write goes through replica 1, so the figures of
//! `etcd:3` include the etcd commit and the watch to the other replicas;
//! CPU and memory are summed over the replicas (etcd's own are reported
//! beside them).

use anyhow::{bail, Context, Result};
use clap::Parser;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use http::Method;
use sane_bench::etcd::EtcdCluster;
use sane_bench::fleet_registry::{endpoint, endpoint_addr, route, service};
use sane_bench::procfs;
use sane_control_plane::client::ApiClient;
use sane_control_plane::resource::{Kind, Resource as CpResource};
use sane_proxy::xds::state::{self, Resource, XdsState, SUBSCRIBED};
use sane_xds_proto::{ControlPlane, Node, TypeUrl};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::ReceiverStream;

/// The sidecar's allocator (`sane-proxy`'s `main.rs`): the simulated
/// proxies run the proxy's xDS client code, so they allocate as it does.
/// Under glibc's malloc, 5 000 streams' envelopes spent a third of the
/// tool's CPU in `_int_malloc`, `malloc_consolidate` and `free`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const API_TOKEN: &str = "sane-fleet-bench-token";
/// A route's timeout before any change; change `g` sets `BASE + g`.
const BASE_TIMEOUT_MS: u64 = 5_000;
/// The proxy's reconnect backoff (`sane_proxy::xds`): 10 ms doubling to 15 s.
const BACKOFF_START: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(15);

#[derive(Parser, Debug, Clone)]
#[command(name = "fleet", about = "The control plane under N simulated proxies")]
struct Args {
    /// The control-plane binary (default: `sane-control-plane` beside this
    /// tool, i.e. the same build).
    #[arg(long)]
    control_plane: Option<PathBuf>,
    /// Fleet sizes, one fresh control plane each.
    #[arg(long, value_delimiter = ',', default_value = "100,1000,5000")]
    proxies: Vec<usize>,
    /// `sotw`, `delta` or both.
    #[arg(long, value_delimiter = ',', default_value = "sotw,delta")]
    protocols: Vec<Protocol>,
    /// What serves the fleet: `file` (one control plane, embedded file
    /// store) and/or `etcd:<k>` (`k` replicas on an etcd cluster).
    #[arg(long, value_delimiter = ',', default_value = "file", value_parser = Topology::parse)]
    topologies: Vec<Topology>,
    /// Members of the etcd cluster of `etcd:<k>` topologies.
    #[arg(long, default_value_t = 3)]
    etcd_members: usize,
    /// The etcd server binary (`scripts/etcd-test-deps.sh` installs it).
    #[arg(long, default_value = "etcd")]
    etcd: PathBuf,
    /// Namespaces the services (and their proxies) are spread over; with 1
    /// every proxy sees every service.
    #[arg(long, default_value_t = 1)]
    namespaces: usize,
    /// Measured changes of each kind (route, endpoint).
    #[arg(long, default_value_t = 10)]
    changes: usize,
    /// Pause after a change's last ACK before the next change (the
    /// control plane's CPU is read at its end).
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    gap: Duration,
    /// The control plane's `--debounce-quiet`.
    #[arg(long, default_value = "100ms")]
    debounce_quiet: String,
    /// The control plane's `--debounce-max`.
    #[arg(long, default_value = "1s")]
    debounce_max: String,
    /// Streams being set up at once (TCP + TLS + the first config).
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// Worker threads of the simulated proxies' runtime.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Longest wait for one change to reach every proxy, or for the fleet
    /// to connect.
    #[arg(long, default_value = "180s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Scratch directory (cleared per run): data directory and logs.
    #[arg(long, default_value = "/tmp/sane-fleet")]
    work_dir: PathBuf,
    /// Also write the report here.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Protocol {
    Sotw,
    Delta,
}

/// What serves the fleet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Topology {
    /// One control plane on its embedded file store.
    File,
    /// This many replicas on an etcd cluster.
    Etcd(usize),
}

/// The control planes of one run, and the etcd cluster under them.
struct Serving {
    replicas: Vec<Replica>,
    /// Dropped after the replicas (fields drop in order).
    _etcd: Option<EtcdCluster>,
    etcd_pids: Vec<u32>,
}

struct Replica {
    _child: ChildGuard,
    pid: u32,
    xds: String,
    api: String,
    root_file: PathBuf,
}

/// What a response must show for a stream to count as having the change.
#[derive(Clone, Debug)]
struct Expect {
    generation: u64,
    type_url: TypeUrl,
    name: String,
    want: Want,
}

#[derive(Clone, Debug)]
enum Want {
    /// A route whose first rule has this timeout.
    RouteTimeout(u64),
    /// The resource exists.
    Present,
    /// The resource is gone.
    Absent,
}

/// Shared between the driver and every stream.
#[derive(Debug, Default)]
struct Fleet {
    /// Streams that ACKed their first config of every type.
    ready: AtomicUsize,
    expect: Mutex<Option<Expect>>,
    progress: Mutex<Progress>,
    /// Streams that ended and were opened again (as the proxy does, with
    /// its backoff), and the last reason.
    reconnects: AtomicUsize,
    last_error: Mutex<Option<String>>,
}

/// What one simulated proxy keeps across reconnects.
#[derive(Debug, Default)]
struct ProxyState {
    /// SotW: the proxy's state machine (versions it holds).
    sotw: XdsState,
    /// The last change generation this proxy was counted for.
    seen: u64,
    /// Counted in [`Fleet::ready`] already.
    ready: bool,
    /// A response arrived on the current stream (resets the backoff).
    got_response: bool,
}

#[derive(Debug, Default)]
struct Progress {
    generation: u64,
    reached: usize,
    last_ack: Option<Instant>,
}

/// One simulated proxy.
#[derive(Clone, Debug)]
struct Proxy {
    index: usize,
    namespace: String,
    /// The service (workload) whose sidecar it plays.
    service: usize,
    /// The inbound address it announces: that of one of its service's
    /// endpoints, as a sidecar announces its pod's, so it is sent the
    /// authorization policies of that endpoint (and, as in a real mesh,
    /// the proxies of different endpoints hold different views).
    inbound: std::net::SocketAddr,
}

/// Figures of one change.
#[derive(Clone, Copy, Debug)]
struct Sample {
    /// The API write itself (validated, logged durably, answered).
    write: Duration,
    to_last_ack: Duration,
    /// Summed over the replicas.
    cp_cpu: f64,
    /// Summed over the etcd members (0 on the file store).
    etcd_cpu: f64,
    client_cpu: f64,
}

/// Figures of one (N, protocol, topology) run.
#[derive(Debug)]
struct RunReport {
    proxies: usize,
    protocol: Protocol,
    topology: Topology,
    /// etcd's RSS at the end (MiB, every member), for `etcd:<k>`.
    etcd_rss: Option<f64>,
    /// etcd's CPU seconds per change (route, endpoint), for `etcd:<k>`.
    etcd_cpu: Option<(f64, f64)>,
    services: usize,
    resources: usize,
    connect: Duration,
    rss_idle: f64,
    rss_end: f64,
    hwm: f64,
    route: Vec<Sample>,
    endpoint: Vec<Sample>,
    /// Streams re-opened during the run, and the last reason.
    reconnects: usize,
    last_error: Option<String>,
}

/// Kills the process on drop.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    raise_fd_limit()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    let mut reports = Vec::new();
    for &n in &args.proxies {
        for &topology in &args.topologies {
            for &protocol in &args.protocols {
                let label = format!("{n} proxies, {protocol:?}, {}", topology.label());
                eprintln!("fleet: {label}");
                let report = runtime
                    .block_on(run(&args, n, protocol, topology))
                    .with_context(|| label.clone())?;
                eprintln!("{}", row(&report));
                reports.push(report);
            }
        }
    }
    let text = render(&args, &reports);
    print!("{text}");
    if let Some(out) = &args.out {
        std::fs::write(out, &text).with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}

/// 5 000 streams are 5 000 sockets here and in the control plane (which
/// inherits the limit).
fn raise_fd_limit() -> Result<()> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource as Limit};
    let (_, hard) = getrlimit(Limit::RLIMIT_NOFILE)?;
    setrlimit(Limit::RLIMIT_NOFILE, hard, hard)?;
    Ok(())
}

async fn run(args: &Args, n: usize, protocol: Protocol, topology: Topology) -> Result<RunReport> {
    let dir = args.work_dir.join(format!(
        "{n}-{protocol:?}-{}",
        topology.label().replace(':', "")
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let serving = {
        let (args, dir) = (args.clone(), dir.clone());
        tokio::task::spawn_blocking(move || start_serving(&args, &dir, topology)).await??
    };
    let pids: Vec<u32> = serving.replicas.iter().map(|r| r.pid).collect();
    let etcd_pids = serving.etcd_pids.clone();
    // Writes go through replica 1; proxies are spread over all of them.
    let first = &serving.replicas[0];
    let root_file = first.root_file.clone();
    let roots = sane_certs::TrustBundle::from_pem(&std::fs::read_to_string(&root_file)?)?;
    let api = ApiClient::with_roots(
        &format!("https://{}", first.api),
        Some(API_TOKEN.into()),
        &roots,
    )?;
    let xds_urls: Vec<String> = serving
        .replicas
        .iter()
        .map(|r| format!("https://{}", r.xds))
        .collect();

    let services = (n / 10).max(1);
    let namespaces = args.namespaces.clamp(1, services);
    let ns_of = |i: usize| format!("fleet-{}", i % namespaces);
    let mut resources = Vec::new();
    for i in 0..services {
        resources.push(CpResource::Service(service(i, &ns_of(i))));
        for k in 1..=3 {
            resources.push(CpResource::Endpoint(endpoint(i, &ns_of(i), k)));
        }
        resources.push(CpResource::Route(route(i, &ns_of(i), BASE_TIMEOUT_MS)));
    }
    let count = resources.len();
    put_all(&api, resources).await?;
    let tokens = issue_tokens(&api, services, &ns_of).await?;

    // The fleet.
    let fleet = Arc::new(Fleet::default());
    let gate = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for index in 0..n {
        let service = index % services;
        let proxy = Proxy {
            index,
            namespace: ns_of(service),
            service,
            inbound: endpoint_addr(service, index / services % 3 + 1),
        };
        let token = tokens[service].clone();
        let (fleet, gate, url, root) = (
            fleet.clone(),
            gate.clone(),
            xds_urls[index % xds_urls.len()].clone(),
            root_file.display().to_string(),
        );
        tasks.push(tokio::spawn(async move {
            // Held until the first config of every type is in.
            let mut permit = gate.acquire().await.ok();
            let mut ps = ProxyState::default();
            let mut backoff = BACKOFF_START;
            loop {
                ps.got_response = false;
                let result = match protocol {
                    Protocol::Sotw => {
                        sotw(&fleet, &proxy, &url, &root, &token, &mut ps, &mut permit).await
                    }
                    Protocol::Delta => {
                        delta(&fleet, &proxy, &url, &root, &token, &mut ps, &mut permit).await
                    }
                };
                let why = match result {
                    Ok(()) => "the control plane ended the stream".to_string(),
                    Err(e) => format!("{e:#}"),
                };
                fleet.reconnects.fetch_add(1, Ordering::Relaxed);
                *fleet.last_error.lock().unwrap() = Some(format!("proxy {}: {why}", proxy.index));
                if ps.got_response {
                    backoff = BACKOFF_START;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }));
    }
    wait_for(&fleet, args.timeout, "the fleet to connect", || {
        fleet.ready.load(Ordering::Relaxed) >= n
    })
    .await?;
    let connect = started.elapsed();
    eprintln!(
        "  {n} streams have their config after {:.1} s",
        connect.as_secs_f64()
    );
    tokio::time::sleep(args.gap).await;
    let rss_idle = procfs::memory(&pids).rss;

    let per_ns = |i: usize| {
        (0..n)
            .filter(|p| p % services % namespaces == i % namespaces)
            .count()
    };
    let mut generation = 0;
    let mut route_samples = Vec::new();
    let mut endpoint_samples = Vec::new();
    for c in 0..args.changes {
        // A route change: one route, a new timeout.
        generation += 1;
        let i = (c * 7) % services;
        let timeout = BASE_TIMEOUT_MS + generation;
        let changed = route(i, &ns_of(i), timeout);
        let expect = Expect {
            generation,
            type_url: TypeUrl::Route,
            name: state::name_of(&Resource::Route(changed.clone())),
            want: Want::RouteTimeout(timeout),
        };
        let sample = measure(args, &fleet, &pids, &etcd_pids, expect, per_ns(i), async {
            api.put(&CpResource::Route(changed), None).await
        })
        .await?;
        route_samples.push(sample);

        // An endpoint change: a fourth endpoint appears, or goes again.
        generation += 1;
        let i = (c / 2 * 7 + 3) % services;
        let extra = endpoint(i, &ns_of(i), 4);
        let name = state::name_of(&Resource::Endpoint(extra.clone()));
        let add = c % 2 == 0;
        let expect = Expect {
            generation,
            type_url: TypeUrl::Endpoint,
            name,
            want: if add { Want::Present } else { Want::Absent },
        };
        let write = async {
            let r = CpResource::Endpoint(extra);
            if add {
                api.put(&r, None).await
            } else {
                api.delete(Kind::Endpoint, &r.key()).await
            }
        };
        let sample = measure(args, &fleet, &pids, &etcd_pids, expect, per_ns(i), write).await?;
        endpoint_samples.push(sample);
    }
    let mem = procfs::memory(&pids);
    let etcd_rss = (!etcd_pids.is_empty()).then(|| procfs::memory(&etcd_pids).rss);
    let etcd_cpu = (!etcd_pids.is_empty()).then(|| {
        let mean = |s: &[Sample]| s.iter().map(|s| s.etcd_cpu).sum::<f64>() / s.len() as f64;
        (mean(&route_samples), mean(&endpoint_samples))
    });
    for t in &tasks {
        t.abort();
    }
    drop(serving);
    let last_error = fleet.last_error.lock().unwrap().clone();
    Ok(RunReport {
        proxies: n,
        protocol,
        topology,
        etcd_rss,
        etcd_cpu,
        services,
        resources: count,
        connect,
        rss_idle,
        rss_end: mem.rss,
        hwm: mem.hwm,
        route: route_samples,
        endpoint: endpoint_samples,
        reconnects: fleet.reconnects.load(Ordering::Relaxed),
        last_error,
    })
}

/// Makes one change through `write` and waits until `expected` streams hold
/// it; then waits `--gap` and reads the CPU the control plane spent.
async fn measure<F, T>(
    args: &Args,
    fleet: &Fleet,
    pids: &[u32],
    etcd_pids: &[u32],
    expect: Expect,
    expected: usize,
    write: F,
) -> Result<Sample>
where
    F: std::future::Future<Output = Result<T, sane_control_plane::error::Error>>,
{
    let generation = expect.generation;
    *fleet.progress.lock().unwrap() = Progress {
        generation,
        reached: 0,
        last_ack: None,
    };
    *fleet.expect.lock().unwrap() = Some(expect);
    let cpu_before = procfs::cpu_seconds(pids);
    let etcd_before = procfs::cpu_seconds(etcd_pids);
    let client_before = procfs::cpu_seconds(&[std::process::id()]);
    let start = Instant::now();
    write.await.context("the change's API write")?;
    let written = start.elapsed();
    wait_for(fleet, args.timeout, "a change to reach the fleet", || {
        fleet.progress.lock().unwrap().reached >= expected
    })
    .await?;
    let last_ack = fleet
        .progress
        .lock()
        .unwrap()
        .last_ack
        .context("no ACK time")?;
    tokio::time::sleep(args.gap).await;
    Ok(Sample {
        write: written,
        to_last_ack: last_ack.saturating_duration_since(start),
        cp_cpu: procfs::cpu_seconds(pids) - cpu_before,
        etcd_cpu: procfs::cpu_seconds(etcd_pids) - etcd_before,
        client_cpu: procfs::cpu_seconds(&[std::process::id()]) - client_before,
    })
}

/// Polls `done` every 5 ms (the figures come from the streams' own
/// timestamps, not from this poll) until `timeout`; the error names the
/// last stream failure, if any.
async fn wait_for(
    fleet: &Fleet,
    timeout: Duration,
    what: &str,
    done: impl Fn() -> bool,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return Ok(());
        }
        if Instant::now() > deadline {
            let last = fleet.last_error.lock().unwrap().clone();
            bail!(
                "waiting for {what}: not done after {timeout:?} ({} reconnects; last: {})",
                fleet.reconnects.load(Ordering::Relaxed),
                last.as_deref().unwrap_or("none")
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// === impl Topology ===

impl Topology {
    /// `file` or `etcd:<k>` (k ≥ 1).
    fn parse(s: &str) -> Result<Topology, String> {
        if s == "file" {
            return Ok(Topology::File);
        }
        match s.strip_prefix("etcd:").map(str::parse::<usize>) {
            Some(Ok(k)) if k >= 1 => Ok(Topology::Etcd(k)),
            _ => Err(format!(
                "topology {s:?}: expected `file` or `etcd:<replicas>` (e.g. etcd:3)"
            )),
        }
    }

    fn label(&self) -> String {
        match self {
            Topology::File => "file".into(),
            Topology::Etcd(k) => format!("etcd:{k}"),
        }
    }
}

// === impl Fleet ===

impl Fleet {
    /// Called by a stream after it ACKed a response of `t`: counts the
    /// stream once if what it now holds of `t` shows the awaited change.
    fn acked(
        &self,
        t: TypeUrl,
        held: impl Fn(&str) -> Option<Resource>,
        seen: &mut u64,
        at: Instant,
    ) {
        let Some(expect) = self.expect.lock().unwrap().clone() else {
            return;
        };
        if expect.type_url != t || expect.generation <= *seen {
            return;
        }
        let has = match (&expect.want, held(&expect.name).as_ref()) {
            (Want::RouteTimeout(ms), Some(Resource::Route(r))) => {
                r.rules.first().is_some_and(|rule| rule.timeout_ms == *ms)
            }
            (Want::Present, found) => found.is_some(),
            (Want::Absent, found) => found.is_none(),
            _ => false,
        };
        if !has {
            return;
        }
        *seen = expect.generation;
        let mut p = self.progress.lock().unwrap();
        if p.generation == expect.generation {
            p.reached += 1;
            p.last_ack = Some(p.last_ack.map_or(at, |l| l.max(at)));
        }
    }
}

// === the simulated proxies ===

fn node(proxy: &Proxy) -> envoy_types::pb::envoy::config::core::v3::Node {
    let node = Node {
        id: format!(
            "svc-{}.{}~p-{}",
            proxy.service, proxy.namespace, proxy.index
        ),
        namespace: proxy.namespace.clone(),
        workload: format!("svc-{}", proxy.service),
        ..Default::default()
    };
    sane_proxy::xds::envoy_node(&node, &ControlPlane::default(), &[proxy.inbound])
}

/// The ADS client of one proxy over its own TLS connection, with the
/// proxy's connect settings and bearer token.
async fn ads_client(
    url: &str,
    root: &str,
    token: &str,
) -> Result<
    AggregatedDiscoveryServiceClient<
        tonic::service::interceptor::InterceptedService<
            tonic::transport::Channel,
            impl tonic::service::Interceptor,
        >,
    >,
> {
    let channel = sane_proxy::tls::control_plane::connect(url, root, None, |e| {
        e.connect_timeout(Duration::from_secs(10))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10))
    })
    .await?;
    let auth: tonic::metadata::MetadataValue<tonic::metadata::Ascii> =
        format!("Bearer {token}").parse()?;
    Ok(AggregatedDiscoveryServiceClient::with_interceptor(
        channel,
        move |mut req: tonic::Request<()>| {
            req.metadata_mut().insert("authorization", auth.clone());
            Ok(req)
        },
    ))
}

/// A state-of-the-world stream: the proxy's requests and state machine.
async fn sotw(
    fleet: &Fleet,
    proxy: &Proxy,
    url: &str,
    root: &str,
    token: &str,
    ps: &mut ProxyState,
    permit: &mut Option<tokio::sync::SemaphorePermit<'_>>,
) -> Result<()> {
    let mut client = ads_client(url, root, token).await?;
    let st = &mut ps.sotw;
    let (tx, rx) = mpsc::channel(16);
    for (i, t) in SUBSCRIBED.into_iter().enumerate() {
        let mut req: DiscoveryRequest = st.subscribe(t);
        if i == 0 {
            req.node = Some(node(proxy));
        }
        tx.try_send(req)?;
    }
    let mut responses = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await?
        .into_inner();
    while let Some(resp) = responses.message().await? {
        ps.got_response = true;
        let received = st
            .receive(&resp)
            .map_err(|reason| anyhow::anyhow!("would NACK {}: {reason}", resp.type_url))?;
        let t = received.type_url;
        // Counted after the ACK is sent, with the time it was sent.
        let ack = st.accept(&resp, received);
        tx.send(ack).await?;
        fleet.acked(t, |name| st.get(t, name), &mut ps.seen, Instant::now());
        if !ps.ready && st.all_acked() {
            ps.ready = true;
            *permit = None;
            fleet.ready.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// A delta stream: wildcard subscriptions to the proxy's types; the
/// resources held are kept by name, each decoded and validated by the
/// proxy's code.
async fn delta(
    fleet: &Fleet,
    proxy: &Proxy,
    url: &str,
    root: &str,
    token: &str,
    ps: &mut ProxyState,
    permit: &mut Option<tokio::sync::SemaphorePermit<'_>>,
) -> Result<()> {
    let mut client = ads_client(url, root, token).await?;
    let (tx, rx) = mpsc::channel(16);
    for (i, t) in SUBSCRIBED.into_iter().enumerate() {
        tx.try_send(DeltaDiscoveryRequest {
            type_url: t.as_str().to_string(),
            node: (i == 0).then(|| node(proxy)),
            ..Default::default()
        })?;
    }
    let mut responses = client
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut held: HashMap<TypeUrl, BTreeMap<String, Resource>> = HashMap::new();
    let mut acked: HashSet<TypeUrl> = HashSet::new();
    while let Some(resp) = responses.message().await? {
        ps.got_response = true;
        let t = TypeUrl::parse(&resp.type_url)
            .filter(|t| SUBSCRIBED.contains(t))
            .with_context(|| format!("unsupported type {:?}", resp.type_url))?;
        let mut decoded = Vec::with_capacity(resp.resources.len());
        for r in &resp.resources {
            let any = r
                .resource
                .as_ref()
                .with_context(|| format!("would NACK: resource {} has no body", r.name))?;
            let res = state::decode_validated(t, any)
                .map_err(|reason| anyhow::anyhow!("would NACK {}: {reason}", r.name))?;
            decoded.push((r.name.clone(), res));
        }
        let map = held.entry(t).or_default();
        map.extend(decoded);
        for name in &resp.removed_resources {
            map.remove(name);
        }
        tx.send(DeltaDiscoveryRequest {
            type_url: resp.type_url.clone(),
            response_nonce: resp.nonce.clone(),
            ..Default::default()
        })
        .await?;
        fleet.acked(
            t,
            |name| map.get(name).cloned(),
            &mut ps.seen,
            Instant::now(),
        );
        acked.insert(t);
        if !ps.ready && acked.len() == SUBSCRIBED.len() {
            ps.ready = true;
            *permit = None;
            fleet.ready.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// PUTs every resource, 8 writes in flight (services come first in
/// `resources`' order per service, so references resolve).
async fn put_all(api: &ApiClient, resources: Vec<CpResource>) -> Result<()> {
    use futures::stream::{self, StreamExt, TryStreamExt};
    // Services first: an endpoint or route needs its service.
    let (services, rest): (Vec<_>, Vec<_>) = resources
        .into_iter()
        .partition(|r| matches!(r, CpResource::Service(_)));
    for batch in [services, rest] {
        stream::iter(batch)
            .map(|r| async move {
                api.put(&r, None)
                    .await
                    .with_context(|| format!("PUT {}", r.key()))
            })
            .buffer_unordered(8)
            .try_collect::<Vec<_>>()
            .await?;
    }
    Ok(())
}

/// One workload token per service (its service account is `svc-<i>`).
async fn issue_tokens(
    api: &ApiClient,
    services: usize,
    ns_of: &impl Fn(usize) -> String,
) -> Result<Vec<String>> {
    use futures::stream::{self, StreamExt, TryStreamExt};
    stream::iter(0..services)
        .map(|i| {
            let body =
                serde_json::json!({ "namespace": ns_of(i), "service_account": format!("svc-{i}") });
            async move {
                let v = api
                    .json(Method::POST, "/api/v1/tokens", Some(&body))
                    .await
                    .with_context(|| format!("issuing the token of svc-{i}"))?;
                v["token"]
                    .as_str()
                    .map(str::to_string)
                    .context("no token in the reply")
            }
        })
        .buffered(8)
        .try_collect()
        .await
}

/// Starts what serves the fleet: one control plane on its file store, or
/// an etcd cluster and `k` replicas on it sharing one operator CA.
fn start_serving(args: &Args, dir: &Path, topology: Topology) -> Result<Serving> {
    let Topology::Etcd(k) = topology else {
        let replica = start_control_plane(args, dir, "data", &[])?;
        return Ok(Serving {
            replicas: vec![replica],
            _etcd: None,
            etcd_pids: Vec::new(),
        });
    };
    let etcd = EtcdCluster::start(
        &args.etcd,
        &dir.join("etcd"),
        args.etcd_members.max(1),
        Duration::from_secs(60),
    )?;
    let root = sane_certs::testing::operator_root("Fleet Bench Root")?;
    let (chain, key) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
    std::fs::write(&chain, &root.cert_pem)?;
    std::fs::write(&key, &root.key_pem)?;
    let store = etcd.store_url();
    let mut replicas = Vec::with_capacity(k);
    for i in 1..=k.max(1) {
        let extra = [
            "--store".to_string(),
            store.clone(),
            "--store-prefix".into(),
            "/sane-fleet".into(),
            "--replica-id".into(),
            format!("r{i}"),
            "--ca-cert-chain".into(),
            chain.display().to_string(),
            "--ca-key".into(),
            key.display().to_string(),
        ];
        replicas.push(start_control_plane(
            args,
            dir,
            &format!("replica-{i}"),
            &extra,
        )?);
    }
    Ok(Serving {
        replicas,
        etcd_pids: etcd.pids(),
        _etcd: Some(etcd),
    })
}

/// Starts one control plane (TLS, the given debounce, data in
/// `dir/<name>`, log in `dir/<name>.log`) and returns it with its xDS and
/// API addresses.
fn start_control_plane(args: &Args, dir: &Path, name: &str, extra: &[String]) -> Result<Replica> {
    let log = dir.join(format!("{name}.log"));
    let bin = match &args.control_plane {
        Some(b) => b.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("the tool's directory")?
            .join("sane-control-plane"),
    };
    let data = dir.join(name);
    let mut child = Command::new(&bin)
        .args(["--xds-addr", "127.0.0.1:0", "--api-addr", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(&data)
        .args(["--api-token", API_TOKEN])
        .args(["--debounce-quiet", &args.debounce_quiet])
        .args(["--debounce-max", &args.debounce_max])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let stdout = child.stdout.take().context("stdout")?;
    let pid = child.id();
    let guard = ChildGuard(child);
    let (mut xds, mut api) = (None, None);
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        if let Some(a) = line.strip_prefix("listening name=xds addr=") {
            xds = Some(a.to_string());
        } else if let Some(a) = line.strip_prefix("listening name=api addr=") {
            api = Some(a.to_string());
        }
        if let (Some(x), Some(a)) = (&xds, &api) {
            return Ok(Replica {
                _child: guard,
                pid,
                xds: x.clone(),
                api: a.clone(),
                root_file: data.join("root-cert.pem"),
            });
        }
    }
    bail!(
        "the control plane exited before listening; see {}",
        log.display()
    )
}

// === report ===

/// Nearest-rank percentile of `xs` (sorted here).
fn pct(xs: &[f64], p: f64) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

fn summary(samples: &[Sample]) -> (f64, f64, f64, f64, f64, f64) {
    let ms: Vec<f64> = samples
        .iter()
        .map(|s| s.to_last_ack.as_secs_f64() * 1e3)
        .collect();
    let writes: Vec<f64> = samples
        .iter()
        .map(|s| s.write.as_secs_f64() * 1e3)
        .collect();
    let mean = |f: fn(&Sample) -> f64| samples.iter().map(f).sum::<f64>() / samples.len() as f64;
    (
        pct(&ms, 0.5),
        pct(&ms, 0.99),
        pct(&ms, 1.0),
        mean(|s| s.cp_cpu),
        mean(|s| s.client_cpu),
        pct(&writes, 0.5),
    )
}

fn row(r: &RunReport) -> String {
    let (rp50, rp99, rmax, rcpu, rcl, rw) = summary(&r.route);
    let (ep50, ep99, emax, ecpu, ecl, ew) = summary(&r.endpoint);
    let etcd = match (r.etcd_cpu, r.etcd_rss) {
        (Some((route, endpoint)), Some(rss)) => {
            format!("{route:.3} / {endpoint:.3} s, {rss:.1} MiB")
        }
        _ => "-".into(),
    };
    format!(
        "| {} | {} | {:?} | {} / {} | {:.1} s | {rp50:.0} | {rp99:.0} | {rmax:.0} | {rcpu:.3} | {ep50:.0} | {ep99:.0} | {emax:.0} | {ecpu:.3} | {rw:.0} / {ew:.0} | {:.1} / {:.1} / {:.1} | {:.2} / {:.2} | {etcd} |",
        r.proxies,
        r.topology.label(),
        r.protocol,
        r.services,
        r.resources,
        r.connect.as_secs_f64(),
        r.rss_idle,
        r.rss_end,
        r.hwm,
        rcl,
        ecl,
    )
}

fn render(args: &Args, reports: &[RunReport]) -> String {
    let mut out = String::new();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let _ = writeln!(
        out,
        "Control plane under a simulated fleet (`fleet`): debounce quiet {} / max {}, {} namespace(s), {} changes of each kind, {} between changes, load average at the end {}\n",
        args.debounce_quiet,
        args.debounce_max,
        args.namespaces,
        args.changes,
        humantime::format_duration(args.gap),
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
    );
    out.push_str("Topology: `file` is one control plane on its file store; `etcd:<k>` is k replicas on a fresh etcd cluster of ");
    let _ = write!(out, "{} members, proxies spread round-robin over the replicas, writes through replica 1; control-plane CPU and RSS are summed over the replicas.\n\n", args.etcd_members);
    out.push_str("| proxies | topology | protocol | services / resources | fleet connected in | route: p50 ms | p99 ms | max ms | CP CPU s per change | endpoint: p50 ms | p99 ms | max ms | CP CPU s per change | API write p50 ms (route / endpoint) | CP RSS MiB idle / end / peak | fleet CPU s per change (route / endpoint) | etcd CPU per change (route / endpoint), RSS |\n");
    out.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for r in reports {
        out.push_str(&row(r));
        out.push('\n');
    }
    out.push_str("\nRaw times to the last ACK (ms):\n\n");
    for r in reports {
        let ms = |s: &[Sample]| {
            s.iter()
                .map(|s| format!("{:.0}", s.to_last_ack.as_secs_f64() * 1e3))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let _ = writeln!(
            out,
            "- {} {} {:?}: route [{}], endpoint [{}]; streams re-opened: {}{}",
            r.proxies,
            r.topology.label(),
            r.protocol,
            ms(&r.route),
            ms(&r.endpoint),
            r.reconnects,
            r.last_error
                .as_deref()
                .map(|e| format!(" (last: {e})"))
                .unwrap_or_default()
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let xs: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(pct(&xs, 0.5), 5.0);
        assert_eq!(pct(&xs, 0.99), 10.0);
        assert_eq!(pct(&[3.0], 0.99), 3.0);
    }

    #[test]
    fn topologies_parse_and_bad_ones_are_named() {
        assert_eq!(Topology::parse("file"), Ok(Topology::File));
        assert_eq!(Topology::parse("etcd:3"), Ok(Topology::Etcd(3)));
        assert_eq!(Topology::Etcd(3).label(), "etcd:3");
        for bad in ["etcd:0", "etcd", "etcd:x", "raft:3"] {
            let err = Topology::parse(bad).unwrap_err();
            assert!(err.contains(bad), "{err}");
        }
    }

    #[test]
    fn every_generated_resource_is_valid() {
        let route = route(3, "fleet-0", 5_001);
        route.validate().unwrap();
        service(3, "fleet-0").validate().unwrap();
        endpoint(300, "fleet-0", 4).validate().unwrap();
        assert_eq!(endpoint(300, "fleet-0", 4).address, "10.1.50.4");
    }
}
