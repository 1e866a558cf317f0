//! `sanectl`: the command line for the control plane's HTTP API.
//!
//! ```text
//! sanectl [--server URL] [--token-file F] apply -f mesh.yaml
//! sanectl get services|endpoints|routes|policies [ns/name] [-o yaml|json]
//! sanectl delete <kind> <ns/name>
//! sanectl status [--wait-sync 30s] [-o table|json]
//! sanectl config <proxy-id> [-o yaml|json]
//! sanectl inject -f deployment.yaml [-o injected.yaml]   # no server needed
//! sanectl bootstrap grpc --service NAME [-o bootstrap.json]
//! ```
//!
//! Exit status: 0 on success, 1 on errors, 2 when `status --wait-sync` timed
//! out with proxies out of sync.

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use sane_control_plane::client::ApiClient;
use sane_control_plane::resource::Kind;
use sane_control_plane::xds::envoy::bootstrap::GrpcBootstrap;
use sane_xds_proto::MeshResources;
use serde::Deserialize;
use serde_json::Value;
use std::io::Read;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Manage a Sane Mesh control plane.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Control-plane API URL.
    #[arg(
        long,
        env = "SANE_SERVER",
        default_value = "http://127.0.0.1:15080",
        global = true
    )]
    server: String,
    /// File holding the API token (needed for apply and delete).
    #[arg(long, env = "SANE_API_TOKEN_FILE", global = true)]
    token_file: Option<PathBuf>,
    /// The API token itself.
    #[arg(long, env = "SANE_API_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create or replace every resource of a MeshResources YAML file
    /// (several `---` documents allowed), services first.
    Apply {
        /// The file; `-` reads stdin.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// Show resources of a kind, or one by key (`ns/name`, or `name` in
    /// `default`; endpoints: `ns/service/address:port`).
    Get {
        /// services, endpoints, routes or policies.
        kind: String,
        /// A key; all when omitted.
        key: Option<String>,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Format::Yaml)]
        output: Format,
    },
    /// Delete one resource.
    Delete {
        /// services, endpoints, routes or policies.
        kind: String,
        /// Its key.
        key: String,
    },
    /// Show connected proxies and whether they are in sync.
    Status {
        /// Wait up to this long (e.g. `30s`) for every proxy to be in sync;
        /// exit 2 if they are not.
        #[arg(long, value_parser = humantime::parse_duration)]
        wait_sync: Option<Duration>,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = StatusFormat::Table)]
        output: StatusFormat,
    },
    /// Add the sane-proxy sidecar to the workloads of a Kubernetes manifest
    /// (like `istioctl kube-inject`); other objects pass through untouched.
    #[cfg(feature = "kubernetes")]
    Inject(InjectArgs),
    /// Write the bootstrap of a client that takes its config from the
    /// control plane without a sidecar.
    #[command(subcommand)]
    Bootstrap(BootstrapKind),
    /// Show what a proxy was last sent.
    Config {
        /// The proxy's node id.
        proxy: String,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Format::Yaml)]
        output: Format,
    },
}

#[cfg(feature = "kubernetes")]
#[derive(Debug, clap::Args)]
struct InjectArgs {
    /// The manifest (several `---` documents allowed); `-` reads stdin.
    #[arg(short = 'f', long = "file")]
    file: PathBuf,
    /// Where to write the result; stdout when omitted.
    #[arg(short = 'o', long = "output")]
    output: Option<PathBuf>,
    /// Namespace of objects that do not name one.
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    /// Image of the injected containers.
    #[arg(long)]
    proxy_image: Option<String>,
    /// imagePullPolicy of the injected containers.
    #[arg(long)]
    image_pull_policy: Option<String>,
    /// xDS/CA URL of the control plane, as pods reach it.
    #[arg(long)]
    control_plane_address: Option<String>,
    /// Trust domain of the mesh.
    #[arg(long)]
    trust_domain: Option<String>,
}

#[derive(Debug, Subcommand)]
enum BootstrapKind {
    /// A `GRPC_XDS_BOOTSTRAP` file for a proxyless gRPC client (grpc-go,
    /// grpc-java, grpcio, grpc C++): the xDS server, its channel
    /// credentials, the node id and metadata (namespace, workload token).
    /// Without `--workload-token-file`, issues a token for
    /// `NAMESPACE/SERVICE` through the API (needs the API token).
    Grpc(GrpcBootstrapArgs),
}

#[derive(Debug, clap::Args)]
struct GrpcBootstrapArgs {
    /// The client's service (its workload and service account).
    #[arg(long)]
    service: String,
    /// The client's namespace.
    #[arg(long, default_value = "default")]
    namespace: String,
    /// The xDS address as clients reach it: `host:port`, `http://host:port`,
    /// or `https://host:port` for TLS (with `--ca-file`).
    #[arg(long, default_value = "127.0.0.1:15010")]
    xds_server: String,
    /// CA certificate file a TLS client checks the control plane against.
    #[arg(long)]
    ca_file: Option<String>,
    /// The node id; default `SERVICE-` and 8 random hex digits. Give each
    /// client process its own.
    #[arg(long)]
    node_id: Option<String>,
    /// Services of other namespaces the client calls (`name.namespace`),
    /// comma-separated; `*` for every service.
    #[arg(long, value_delimiter = ',')]
    services: Vec<String>,
    /// A file holding the workload token to use instead of issuing one.
    #[arg(long)]
    workload_token_file: Option<PathBuf>,
    /// Where to write the file (mode 0600: it holds the token); stdout
    /// when omitted.
    #[arg(short, long)]
    output: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Format {
    Yaml,
    Json,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum StatusFormat {
    Table,
    Json,
}

fn main() {
    let args = Args::parse();
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")
        .and_then(|rt| rt.block_on(run(args)));
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            // `{:#}` prints the chain on one line, without a backtrace.
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}

async fn run(args: Args) -> anyhow::Result<i32> {
    let token = match (&args.token, &args.token_file) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(f)) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("reading token file {}", f.display()))?
                .trim()
                .to_string(),
        ),
        (None, None) => None,
    };
    let client = ApiClient::new(&args.server, token);
    match args.command {
        Command::Apply { file } => {
            let text = read_input(&file)?;
            for (i, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
                let value = serde_yaml::Value::deserialize(doc)
                    .with_context(|| format!("{}: document {}", file.display(), i + 1))?;
                if value.is_null() {
                    continue;
                }
                let mesh: MeshResources = serde_yaml::from_value(value)
                    .with_context(|| format!("{}: document {}", file.display(), i + 1))?;
                if !mesh.listeners.is_empty() {
                    eprintln!("warning: listeners are per proxy and were skipped");
                }
                for applied in client.apply(mesh).await? {
                    println!("{} {} {}", applied.kind, applied.key, applied.outcome);
                }
            }
        }
        Command::Get { kind, key, output } => {
            let kind = parse_kind(&kind)?;
            let value = match key {
                Some(key) => client.get(kind, &qualify_key(&key)).await?,
                None => {
                    // Shaped like a MeshResources document, so it can be
                    // edited and applied again.
                    let list = client.list(kind).await?;
                    serde_json::json!({ kind.plural(): list["items"] })
                }
            };
            print(&value, output)?;
        }
        Command::Delete { kind, key } => {
            let kind = parse_kind(&kind)?;
            let resp = client.delete(kind, &qualify_key(&key)).await?;
            println!(
                "{kind} {} deleted (revision {})",
                resp["key"].as_str().unwrap_or(&key),
                resp["revision"]
            );
        }
        Command::Status { wait_sync, output } => {
            let deadline = wait_sync.map(|d| Instant::now() + d);
            loop {
                let status = client.proxies().await?;
                let in_sync = status["all_in_sync"].as_bool().unwrap_or(false);
                let timed_out = deadline.is_some_and(|d| Instant::now() >= d);
                if deadline.is_none() || in_sync || timed_out {
                    match output {
                        StatusFormat::Json => {
                            println!("{}", serde_json::to_string_pretty(&status)?)
                        }
                        StatusFormat::Table => print_table(&status),
                    }
                    if deadline.is_some() && !in_sync {
                        eprintln!("not every proxy is in sync");
                        return Ok(2);
                    }
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        #[cfg(feature = "kubernetes")]
        Command::Inject(inject) => run_inject(inject)?,
        Command::Bootstrap(BootstrapKind::Grpc(b)) => run_grpc_bootstrap(&client, b).await?,
        Command::Config { proxy, output } => {
            print(&client.proxy_config(&proxy).await?, output)?;
        }
    }
    Ok(0)
}

/// `sanectl bootstrap grpc`: the token (read or issued), then the file.
async fn run_grpc_bootstrap(client: &ApiClient, args: GrpcBootstrapArgs) -> anyhow::Result<()> {
    let token = match &args.workload_token_file {
        Some(f) => std::fs::read_to_string(f)
            .with_context(|| format!("reading workload token file {}", f.display()))?
            .trim()
            .to_string(),
        None => {
            let body = serde_json::json!({
                "namespace": args.namespace,
                "service_account": args.service,
            });
            let issued = client
                .json(http::Method::POST, "/api/v1/tokens", Some(&body))
                .await
                .context("issuing a workload token (or pass --workload-token-file)")?;
            issued["token"]
                .as_str()
                .context("the token reply has no token")?
                .to_string()
        }
    };
    let node_id = args
        .node_id
        .unwrap_or_else(|| format!("{}-{:08x}", args.service, rand::random::<u32>()));
    let bootstrap = GrpcBootstrap {
        server: args.xds_server,
        ca_file: args.ca_file,
        node_id,
        service: args.service,
        namespace: args.namespace,
        services: args.services,
        token,
    };
    let text = serde_json::to_string_pretty(&bootstrap.to_json())? + "\n";
    match &args.output {
        None => print!("{text}"),
        Some(path) => {
            write_private(path, &text).with_context(|| format!("writing {}", path.display()))?;
            eprintln!(
                "wrote {} (node {}); run the client with GRPC_XDS_BOOTSTRAP={} and target xds:///SERVICE.NAMESPACE:PORT",
                path.display(),
                bootstrap.node_id,
                path.display()
            );
        }
    }
    Ok(())
}

/// Writes `text` to `path`, readable by its owner only.
fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())
}

/// `sanectl inject`: reads, injects, writes; a summary goes to stderr.
#[cfg(feature = "kubernetes")]
fn run_inject(args: InjectArgs) -> anyhow::Result<()> {
    use sane_control_plane::k8s::inject::{InjectConfig, Injector};
    use sane_control_plane::k8s::manifest::{self, Action};
    let text = read_input(&args.file)?;
    let mut config = InjectConfig::default();
    if let Some(image) = args.proxy_image {
        config.proxy_image = image;
    }
    config.image_pull_policy = args.image_pull_policy;
    if let Some(address) = args.control_plane_address {
        config.control_plane_address = address;
    }
    if let Some(td) = args.trust_domain {
        config.trust_domain = td;
    }
    let injected = manifest::inject_manifest(&Injector::new(config), &text, &args.namespace)
        .with_context(|| format!("injecting {}", args.file.display()))?;
    for o in &injected.objects {
        let what = match o.action {
            Action::Injected => "injected".to_string(),
            Action::Skipped(reason) => format!("skipped ({reason:?})"),
            Action::PassedThrough => continue,
        };
        eprintln!("{} {}: {what}", o.kind, o.name);
    }
    match args.output {
        Some(path) => std::fs::write(&path, injected.text)
            .with_context(|| format!("writing {}", path.display()))?,
        None => print!("{}", injected.text),
    }
    Ok(())
}

/// A file's content, or stdin for `-`.
fn read_input(file: &std::path::Path) -> anyhow::Result<String> {
    if file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading stdin")?;
        Ok(s)
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))
    }
}

fn parse_kind(s: &str) -> anyhow::Result<Kind> {
    match Kind::parse(s) {
        Some(k) => Ok(k),
        None if s == "svc" => Ok(Kind::Service),
        None => bail!("unknown kind {s:?} (services, endpoints, routes, policies)"),
    }
}

/// `name` means `default/name`.
fn qualify_key(key: &str) -> String {
    if key.contains('/') {
        key.to_string()
    } else {
        format!("default/{key}")
    }
}

fn print(value: &Value, format: Format) -> anyhow::Result<()> {
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(value)?),
        Format::Yaml => print!("{}", serde_yaml::to_string(value)?),
    }
    Ok(())
}

fn print_table(status: &Value) {
    println!(
        "{:<24} {:<12} {:<6} {:<10} {:<8} {:<9} {:<28} LAST NACK",
        "NODE", "NAMESPACE", "PROTO", "CONNECTED", "IN SYNC", "REVISION", "AGENT"
    );
    let empty = Vec::new();
    for p in status["proxies"].as_array().unwrap_or(&empty) {
        let nack = p["types"]
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(t, s)| {
                let n = s.get("last_nack").filter(|n| !n.is_null())?;
                Some(format!("{t}: {}", n["reason"].as_str().unwrap_or("")))
            })
            .collect::<Vec<_>>()
            .join("; ");
        // Non-Sane nodes (gRPC clients, Envoy) by their user agent.
        let agent: String = p["user_agent"]
            .as_str()
            .unwrap_or("")
            .chars()
            .take(28)
            .collect();
        println!(
            "{:<24} {:<12} {:<6} {:<10} {:<8} {:<9} {:<28} {}",
            p["node"].as_str().unwrap_or(""),
            p["namespace"].as_str().unwrap_or(""),
            p["protocol"].as_str().unwrap_or(""),
            p["connected"],
            p["in_sync"],
            p["revision"],
            if agent.is_empty() {
                "-"
            } else {
                agent.as_str()
            },
            nack
        );
    }
    println!(
        "registry revision {}, all in sync: {}",
        status["revision"], status["all_in_sync"]
    );
}
