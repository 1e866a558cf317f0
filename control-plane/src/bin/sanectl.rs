//! `sanectl`: the command line for the control plane's HTTP API.
//!
//! ```text
//! sanectl [--server URL] [--token-file F] apply -f mesh.yaml [-f istio.yaml] [--strict]
//! sanectl convert -f istio.yaml [--strict] [--offline]   # Istio/Gateway API -> Sane
//! sanectl get <kind> [ns/name] [-o yaml|json|table]   # every kind, authorization policies and telemetry included
//! sanectl get istio | virtualservices|destinationrules|... [ns/name]   # stored Istio objects
//! sanectl delete <kind> <ns/name>        # also an Istio kind: the object and what it produced
//! sanectl diff -f mesh.yaml [-o table|json]          # what apply would change
//! sanectl describe service <ns/name> [-o table|json|yaml]
//! sanectl explain request --from <proxy> --host H --path P [--method M] [--header K=V]
//! sanectl status [--wait-sync 30s] [-o table|json]
//! sanectl config <proxy-id> [-o yaml|json]
//! sanectl token create <namespace> <service-account> [--out FILE]
//! sanectl token list [-o table|json]
//! sanectl token revoke <id>
//! sanectl inject -f deployment.yaml [-o injected.yaml]   # no server needed
//! sanectl bootstrap grpc --service NAME [-o bootstrap.json]
//! ```
//!
//! The API is HTTPS by default: the server is verified against `--ca-file`
//! (the control plane's `<data-dir>/root-cert.pem`; default
//! `sane-cp-data/root-cert.pem`, the control plane's default data dir).
//!
//! Exit status: 0 on success, 1 on errors, 2 when `status --wait-sync` timed
//! out with proxies out of sync.

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use sane_control_plane::client::ApiClient;
use sane_control_plane::ctl;
use sane_control_plane::resource::{Kind, Resource};
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
        default_value = "https://127.0.0.1:15080",
        global = true
    )]
    server: String,
    /// PEM root(s) to verify an https:// server with: the control plane's
    /// <data-dir>/root-cert.pem, or the CA of its --api-tls-cert.
    #[arg(
        long,
        env = "SANE_CA_FILE",
        default_value = DEFAULT_CA_FILE,
        global = true
    )]
    ca_file: PathBuf,
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
    /// Create or replace every resource of YAML files (several `---`
    /// documents allowed), services first. Documents are Sane
    /// MeshResources, or Istio and Gateway API objects, which the control
    /// plane stores and converts (`POST /api/v1/istio`): every document of
    /// every file in one all-or-nothing write.
    Apply {
        /// The files; `-` reads stdin.
        #[arg(short = 'f', long = "file", required = true)]
        file: Vec<PathBuf>,
        /// Refuse Istio objects with any field Sane cannot honour.
        #[arg(long)]
        strict: bool,
    },
    /// Print the Sane resources Istio and Gateway API objects become, and
    /// (on stderr) every field that cannot be honoured, by path.
    Convert {
        /// The files; `-` reads stdin.
        #[arg(short = 'f', long = "file", required = true)]
        file: Vec<PathBuf>,
        /// Exit 1, printing nothing on stdout, if any field cannot be
        /// honoured.
        #[arg(long)]
        strict: bool,
        /// Do not ask the server for the services and routes the objects
        /// refer to.
        #[arg(long)]
        offline: bool,
        /// Print instead the inbound-listener mutual TLS settings the
        /// PeerAuthentications give a workload with these labels
        /// (`app=ratings,version=v1`), in `--namespace`.
        #[arg(long, value_name = "LABELS")]
        tls_for: Option<String>,
        /// Namespace of the `--tls-for` workload.
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        /// Print instead the `gateway` section of `sane-proxy gateway`'s
        /// bootstrap that this Gateway (`ns/name`; Istio's or the Gateway
        /// API's) and the VirtualServices or HTTPRoutes bound to it stand
        /// for.
        #[arg(long, value_name = "NS/NAME")]
        gateway: Option<String>,
        /// With `--gateway`: where the Secrets its servers and listeners
        /// name (`credentialName`, `certificateRefs`) are, as
        /// `<DIR>/<namespace>/<name>/tls.crt`, `tls.key` (and `ca.crt`).
        #[arg(long, value_name = "DIR", default_value = sane_control_plane::istio::ingress::DEFAULT_CREDENTIALS_DIR)]
        credentials_dir: String,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Format::Yaml)]
        output: Format,
    },
    /// Show resources of a kind, or one by key (`ns/name`, or `name` in
    /// `default`; endpoints: `ns/service/address:port`).
    Get {
        /// services, endpoints, routes, policies, authorization_policies,
        /// telemetry or sane-gateways (the delivered gateway configurations;
        /// `gateways` alone are Istio's) (singular, `svc`, `ep`, `authz` also
        /// accepted).
        kind: String,
        /// A key; all when omitted.
        key: Option<String>,
        /// Output format: yaml and json are shaped like a MeshResources
        /// document (re-appliable), table is for reading.
        #[arg(short, long, value_enum, default_value_t = Format::Yaml)]
        output: Format,
    },
    /// Delete one resource.
    Delete {
        /// Any kind `get` takes.
        kind: String,
        /// Its key.
        key: String,
    },
    /// Show what `apply -f` would change, without changing anything: `+`
    /// created, `~` updated (with each changed field, by path), `=`
    /// unchanged.
    Diff {
        /// The file (Sane MeshResources YAML); `-` reads stdin.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Everything about one service: its endpoints, the routes and policies
    /// that apply, and which proxies ACKed which version.
    Describe {
        /// `service` (the only kind described so far).
        kind: String,
        /// `ns/name`, or `name` in `default`.
        name: String,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Where a request would go and why, computed by the proxy's own code
    /// from the config the control plane last sent it.
    Explain {
        /// `request` (the only thing explained so far).
        what: String,
        /// Node id of the proxy the request goes through.
        #[arg(long)]
        from: String,
        /// `host[:port]` the app addresses.
        #[arg(long)]
        host: String,
        /// Path (and query).
        #[arg(long, default_value = "/")]
        path: String,
        /// Method.
        #[arg(long, default_value = "GET")]
        method: String,
        /// A request header, `name=value` (repeat).
        #[arg(long = "header", value_name = "K=V")]
        headers: Vec<String>,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        output: Format,
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
    /// Create, list and revoke workload bootstrap tokens.
    #[command(subcommand)]
    Token(TokenCommand),
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

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Issue a workload bootstrap token for a namespace and service
    /// account; it is shown once (or written to --out) and only its hash is
    /// kept.
    Create {
        /// The workload's namespace.
        namespace: String,
        /// The workload's service account.
        service_account: String,
        /// Write the token to this file (mode 0600) instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// List issued tokens by id (never the tokens themselves).
    List {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = StatusFormat::Table)]
        output: StatusFormat,
    },
    /// Revoke a token by id: the CA and new xDS streams refuse it, and open
    /// xDS streams opened with it are ended.
    Revoke {
        /// The token's id (`sanectl token list`).
        id: String,
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
    /// The mesh root (PEM, the control plane's <data-dir>/root-cert.pem)
    /// the sidecars verify the control plane with; required unless the
    /// control-plane address is plaintext (http://, loopback only).
    #[arg(long)]
    root_cert_file: Option<PathBuf>,
}

/// Where the control plane writes its root with the default data dir.
const DEFAULT_CA_FILE: &str = "sane-cp-data/root-cert.pem";

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
    /// The client's service account (the token's); default `--service`.
    #[arg(long)]
    service_account: Option<String>,
    /// The xDS address as clients reach it: `https://host:port` (TLS,
    /// verified against `--xds-ca-file`), or `http://host:port` for a
    /// control plane serving plaintext on loopback
    /// (`--insecure-plaintext-loopback`).
    #[arg(long, default_value = "https://127.0.0.1:15010")]
    xds_server: String,
    /// The root the client verifies the xDS server with (the control
    /// plane's <data-dir>/root-cert.pem); default `--ca-file`. Written as an
    /// absolute path.
    #[arg(long)]
    xds_ca_file: Option<PathBuf>,
    /// The node id's instance part (`<service_account>.<namespace>~<instance>`);
    /// default 8 random hex digits. Give each client process its own.
    #[arg(long)]
    instance: Option<String>,
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Format {
    Yaml,
    Json,
    Table,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum StatusFormat {
    Table,
    Json,
    Yaml,
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
    #[cfg(feature = "kubernetes")]
    if let Command::Inject(inject) = args.command {
        run_inject(inject)?;
        return Ok(0);
    }
    let client = api_client(&args.server, &args.ca_file, token)?;
    match args.command {
        Command::Apply { file, strict } => {
            if let Some(text) = istio_input(&file)? {
                return apply_server_side(&client, text, strict).await;
            }
            let file = &file[0];
            let text = read_input(file)?;
            for (i, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
                let value = serde_yaml::Value::deserialize(doc)
                    .with_context(|| format!("{}: document {}", file.display(), i + 1))?;
                if value.is_null() {
                    continue;
                }
                let mesh = mesh_document(value)
                    .with_context(|| format!("{}: document {}", file.display(), i + 1))?;
                if !mesh.listeners.is_empty() {
                    eprintln!("warning: listeners are per proxy and were skipped");
                }
                for applied in client.apply(mesh).await? {
                    println!("{} {} {}", applied.kind, applied.key, applied.outcome);
                }
            }
        }
        Command::Convert {
            file,
            strict,
            offline,
            tls_for,
            namespace,
            gateway,
            credentials_dir,
            output,
        } => {
            let mut input = sane_control_plane::istio::cli::Input::default();
            for f in &file {
                input
                    .add(&f.display().to_string(), &read_input(f)?)
                    .map_err(anyhow::Error::msg)?;
            }
            let context = if offline {
                Default::default()
            } else {
                match sane_control_plane::istio::cli::context_from(&client).await {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("warning: converting without the server's services ({e})");
                        Default::default()
                    }
                }
            };
            let converted = input.convert(&context, strict)?;
            if let Some(name) = gateway {
                let key = qualify_key(&name);
                let Some(g) = converted
                    .gateways
                    .iter()
                    .find(|g| format!("{}/{}", g.object.namespace, g.object.name) == key)
                else {
                    bail!("no Gateway {key} among the objects");
                };
                let mut g = g.clone();
                g.use_credentials_dir(&credentials_dir);
                eprint!("{}", sane_control_plane::istio::cli::report(&converted));
                print(&serde_json::json!({ "gateway": g.gateway }), output)?;
                return Ok(0);
            }
            if let Some(labels) = tls_for {
                let labels = labels
                    .split(',')
                    .filter(|l| !l.is_empty())
                    .map(|l| match l.split_once('=') {
                        Some((k, v)) => Ok((k.to_string(), v.to_string())),
                        None => bail!("--tls-for: {l:?} is not key=value"),
                    })
                    .collect::<anyhow::Result<_>>()?;
                let settings = sane_control_plane::istio::security::tls_for(
                    &converted.resources.peer_authentications,
                    &namespace,
                    &labels,
                );
                print(&serde_json::to_value(settings)?, output)?;
                return Ok(0);
            }
            eprint!("{}", sane_control_plane::istio::cli::report(&converted));
            print!(
                "{}",
                sane_control_plane::istio::cli::peer_authentication_comments(&converted)
            );
            print(&serde_json::to_value(&converted.resources)?, output)?;
        }
        Command::Get { kind, key, output } => {
            if let Some(path) = istio_path(&kind, key.as_deref())? {
                print(&client.json(http::Method::GET, &path, None).await?, output)?;
                return Ok(0);
            }
            let kind = parse_kind(&kind)?;
            if output == Format::Table {
                let list = match key {
                    Some(key) => serde_json::json!({
                        "items": [client.get(kind, &qualify_key(&key)).await?]
                    }),
                    None => client.list(kind).await?,
                };
                let items = ctl::items(kind, &list)?;
                print!("{}", ctl::table::resources(kind, &items).render());
                return Ok(0);
            }
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
            if let Some(path) = istio_path(&kind, Some(&key))? {
                let reply = client.json(http::Method::DELETE, &path, None).await?;
                println!(
                    "{kind} {} deleted (revision {})",
                    qualify_key(&key),
                    reply["revision"]
                );
                print_outcomes(&reply);
                return Ok(0);
            }
            let kind = parse_kind(&kind)?;
            let resp = client.delete(kind, &qualify_key(&key)).await?;
            println!(
                "{kind} {} deleted (revision {})",
                resp["key"].as_str().unwrap_or(&key),
                resp["revision"]
            );
        }
        Command::Diff { file, output } => {
            let text = read_input(&file)?;
            let mut resources = Vec::new();
            for (i, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
                let value = serde_yaml::Value::deserialize(doc)
                    .with_context(|| format!("{}: document {}", file.display(), i + 1))?;
                if value.is_null() {
                    continue;
                }
                let mesh = mesh_document(value)
                    .with_context(|| format!("{}: document {}", file.display(), i + 1))?;
                resources.extend(Resource::from_mesh(mesh).into_iter().map(|(_, r)| r));
            }
            let diffs = ctl::diff::diff(&client, resources).await?;
            match output {
                Format::Table => print!("{}", ctl::diff::render(&diffs)),
                f => print(&serde_json::to_value(&diffs)?, f)?,
            }
        }
        Command::Describe { kind, name, output } => {
            if parse_kind(&kind)? != Kind::Service {
                bail!("describe: {kind:?}: only `service` can be described");
            }
            let d = ctl::describe::service(&client, &qualify_key(&name)).await?;
            match output {
                Format::Table => print!("{}", ctl::describe::render(&d)),
                f => print(&serde_json::to_value(&d)?, f)?,
            }
        }
        Command::Explain {
            what,
            from,
            host,
            path,
            method,
            headers,
            output,
        } => {
            if what != "request" {
                bail!("explain: {what:?}: only `request` can be explained");
            }
            let headers = headers
                .iter()
                .map(|h| match h.split_once('=') {
                    Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
                    _ => bail!("--header: {h:?} is not name=value"),
                })
                .collect::<anyhow::Result<_>>()?;
            let spec = ctl::explain::RequestSpec {
                from,
                host,
                path,
                method,
                headers,
            };
            let e = ctl::explain::explain(&client, &spec).await?;
            match output {
                Format::Table => print!("{}", ctl::explain::render(&e)),
                f => print(&serde_json::to_value(&e)?, f)?,
            }
        }
        Command::Status { wait_sync, output } => {
            let deadline = wait_sync.map(|d| Instant::now() + d);
            loop {
                let mut status = client.proxies().await?;
                let in_sync = status["all_in_sync"].as_bool().unwrap_or(false);
                let timed_out = deadline.is_some_and(|d| Instant::now() >= d);
                if deadline.is_none() || in_sync || timed_out {
                    // What each stored Istio object produced, and its
                    // findings (a server without them shows none).
                    let istio = client
                        .json(http::Method::GET, "/api/v1/istio", None)
                        .await
                        .map(|v| v["items"].clone())
                        .unwrap_or(Value::Array(Vec::new()));
                    match output {
                        StatusFormat::Json => {
                            status["istio_objects"] = istio;
                            println!("{}", serde_json::to_string_pretty(&status)?)
                        }
                        StatusFormat::Yaml => {
                            status["istio_objects"] = istio;
                            print!("{}", serde_yaml::to_string(&status)?)
                        }
                        StatusFormat::Table => {
                            print_table(&status);
                            print_istio_table(&istio);
                        }
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
        Command::Inject(_) => unreachable!("handled above: needs no server"),
        Command::Bootstrap(BootstrapKind::Grpc(b)) => {
            run_grpc_bootstrap(&client, &args.ca_file, b).await?
        }
        Command::Config { proxy, output } => {
            print(&client.proxy_config(&proxy).await?, output)?;
        }
        Command::Token(command) => run_token(&client, command).await?,
    }
    Ok(0)
}

/// The text of `files`, one multi-document YAML, when more than one is
/// given or some document is an Istio or Gateway API object; `None` for one
/// plain Sane file. A file that does not parse is refused here, by name.
fn istio_input(files: &[PathBuf]) -> anyhow::Result<Option<String>> {
    let mut input = sane_control_plane::istio::cli::Input::default();
    let mut text = String::new();
    for f in files {
        let t = read_input(f)?;
        input
            .add(&f.display().to_string(), &t)
            .map_err(anyhow::Error::msg)?;
        text.push_str("\n---\n");
        text.push_str(&t);
    }
    Ok((files.len() > 1 || input.has_objects()).then_some(text))
}

/// `sanectl apply` of Istio objects: the control plane stores and converts
/// them (nothing is stored when that fails); prints its report (findings
/// on stderr) and what changed.
async fn apply_server_side(client: &ApiClient, text: String, strict: bool) -> anyhow::Result<i32> {
    let path = if strict {
        "/api/v1/istio?strict=true"
    } else {
        "/api/v1/istio"
    };
    let reply = client
        .bytes(http::Method::POST, path, Some(text.into_bytes()))
        .await?;
    let empty = Vec::new();
    let objects = reply["objects"].as_array().unwrap_or(&empty);
    for o in objects {
        for u in o["unsupported"].as_array().unwrap_or(&empty) {
            eprintln!(
                "{}: {}: {}",
                o["object"].as_str().unwrap_or_default(),
                u["path"].as_str().unwrap_or_default(),
                u["reason"].as_str().unwrap_or_default()
            );
        }
    }
    for o in objects {
        for n in o["notes"].as_array().unwrap_or(&empty) {
            eprintln!(
                "{}: {}: note: {}",
                o["object"].as_str().unwrap_or_default(),
                n["path"].as_str().unwrap_or_default(),
                n["note"].as_str().unwrap_or_default()
            );
        }
    }
    for o in objects {
        let produced: Vec<&str> = o["produced"]
            .as_array()
            .unwrap_or(&empty)
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let produced = if produced.is_empty() {
            "nothing".to_string()
        } else {
            produced.join(", ")
        };
        eprintln!("{} -> {produced}", o["object"].as_str().unwrap_or_default());
    }
    print_outcomes(&reply);
    Ok(0)
}

/// `kind key outcome` per resource a write touched.
fn print_outcomes(reply: &Value) {
    for o in reply["outcomes"].as_array().into_iter().flatten() {
        println!(
            "{} {} {}",
            o["kind"].as_str().unwrap_or_default(),
            o["key"].as_str().unwrap_or_default(),
            o["outcome"].as_str().unwrap_or_default()
        );
    }
}

/// The API path of stored Istio objects when `kind` names them (`istio`
/// for all of them, or a kind: `virtualservice`, `httproutes`, ...).
fn istio_path(kind: &str, key: Option<&str>) -> anyhow::Result<Option<String>> {
    use sane_control_plane::istio::object::ObjectKind;
    if kind == "istio" {
        if key.is_some() {
            bail!("get istio lists every stored object; name a kind to get one (virtualservice ns/name)");
        }
        return Ok(Some("/api/v1/istio".into()));
    }
    let Some(k) = ObjectKind::from_resource_name(kind) else {
        return Ok(None);
    };
    match key {
        None => Ok(Some(format!("/api/v1/istio/{}", k.plural()))),
        Some(key) => Ok(Some(format!(
            "/api/v1/istio/{}/{}",
            k.plural(),
            qualify_key(key)
        ))),
    }
}

/// The stored Istio objects: what each produced, and how many of its
/// fields are not honoured.
fn print_istio_table(items: &Value) {
    let Some(items) = items.as_array().filter(|i| !i.is_empty()) else {
        return;
    };
    println!();
    println!("{:<40} {:<11} PRODUCED", "ISTIO OBJECT", "UNSUPPORTED");
    for o in items {
        let name = format!(
            "{} {}/{}",
            o["kind"].as_str().unwrap_or_default(),
            o["namespace"].as_str().unwrap_or_default(),
            o["name"].as_str().unwrap_or_default()
        );
        let produced: Vec<&str> = o["produced"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        println!(
            "{:<40} {:<11} {}",
            name,
            o["unsupported"].as_array().map_or(0, Vec::len),
            if produced.is_empty() {
                "-".to_string()
            } else {
                produced.join(", ")
            }
        );
    }
}

/// The API client: plain for `http://`, verifying the server against
/// `ca_file` for `https://`.
fn api_client(
    server: &str,
    ca_file: &std::path::Path,
    token: Option<String>,
) -> anyhow::Result<ApiClient> {
    if !server.starts_with("https://") {
        return Ok(ApiClient::new(server, token));
    }
    let pem = std::fs::read_to_string(ca_file).with_context(|| {
        format!(
            "reading the CA file {} to verify {server} (pass --ca-file: the control plane's \
             <data-dir>/root-cert.pem)",
            ca_file.display()
        )
    })?;
    let roots = sane_certs::TrustBundle::from_pem(&pem)
        .with_context(|| format!("CA file {}", ca_file.display()))?;
    Ok(ApiClient::with_roots(server, token, &roots)?)
}

/// `sanectl token …`.
async fn run_token(client: &ApiClient, command: TokenCommand) -> anyhow::Result<()> {
    use http::Method;
    match command {
        TokenCommand::Create {
            namespace,
            service_account,
            out,
        } => {
            let body = serde_json::json!({
                "namespace": namespace,
                "service_account": service_account,
            });
            let reply = client
                .json(Method::POST, "/api/v1/tokens", Some(&body))
                .await?;
            let token = reply["token"].as_str().unwrap_or_default();
            match out {
                Some(path) => {
                    write_secret(&path, token)?;
                    eprintln!(
                        "token {} for {} written to {}",
                        reply["id"].as_str().unwrap_or_default(),
                        reply["identity"].as_str().unwrap_or_default(),
                        path.display()
                    );
                }
                None => {
                    eprintln!(
                        "token {} for {}:",
                        reply["id"].as_str().unwrap_or_default(),
                        reply["identity"].as_str().unwrap_or_default()
                    );
                    println!("{token}");
                }
            }
        }
        TokenCommand::List { output } => {
            let reply = client.json(Method::GET, "/api/v1/tokens", None).await?;
            match output {
                StatusFormat::Json => println!("{}", serde_json::to_string_pretty(&reply)?),
                StatusFormat::Yaml => print!("{}", serde_yaml::to_string(&reply)?),
                StatusFormat::Table => {
                    println!(
                        "{:<18} {:<20} {:<20} CREATED",
                        "ID", "NAMESPACE", "SERVICE ACCOUNT"
                    );
                    for t in reply["items"].as_array().into_iter().flatten() {
                        let created = t["created_at"]
                            .as_u64()
                            .filter(|s| *s > 0)
                            .map(|s| {
                                humantime::format_rfc3339_seconds(
                                    std::time::UNIX_EPOCH + Duration::from_secs(s),
                                )
                                .to_string()
                            })
                            .unwrap_or_else(|| "-".into());
                        println!(
                            "{:<18} {:<20} {:<20} {created}",
                            t["id"].as_str().unwrap_or(""),
                            t["namespace"].as_str().unwrap_or(""),
                            t["service_account"].as_str().unwrap_or(""),
                        );
                    }
                }
            }
        }
        TokenCommand::Revoke { id } => {
            if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
                bail!("{id:?} is not a token id (hex digits, as `sanectl token list` shows)");
            }
            let path = format!("/api/v1/tokens/{id}");
            let reply = client.json(Method::DELETE, &path, None).await?;
            println!(
                "token {id} ({}/{}) revoked",
                reply["namespace"].as_str().unwrap_or_default(),
                reply["service_account"].as_str().unwrap_or_default()
            );
        }
    }
    Ok(())
}

/// Writes a secret to a new file only its owner can read.
fn write_secret(path: &std::path::Path, secret: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(secret.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// `sanectl bootstrap grpc`: the token (read or issued), then the file.
async fn run_grpc_bootstrap(
    client: &ApiClient,
    api_ca_file: &std::path::Path,
    args: GrpcBootstrapArgs,
) -> anyhow::Result<()> {
    let service_account = args.service_account.unwrap_or_else(|| args.service.clone());
    let token = match &args.workload_token_file {
        Some(f) => std::fs::read_to_string(f)
            .with_context(|| format!("reading workload token file {}", f.display()))?
            .trim()
            .to_string(),
        None => {
            let body = serde_json::json!({
                "namespace": args.namespace,
                "service_account": service_account,
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
    let ca_file = if args.xds_server.starts_with("https://") {
        let path = args.xds_ca_file.as_deref().unwrap_or(api_ca_file);
        let pem = std::fs::read_to_string(path).with_context(|| {
            format!(
                "reading the xDS root {} (pass --xds-ca-file: the control plane's \
                 <data-dir>/root-cert.pem)",
                path.display()
            )
        })?;
        sane_certs::TrustBundle::from_pem(&pem)
            .with_context(|| format!("xDS root {}", path.display()))?;
        let absolute = std::path::absolute(path)
            .with_context(|| format!("the absolute path of {}", path.display()))?;
        Some(absolute.display().to_string())
    } else {
        None
    };
    let instance = args
        .instance
        .unwrap_or_else(|| format!("{:08x}", rand::random::<u32>()));
    let bootstrap = GrpcBootstrap {
        server: args.xds_server,
        ca_file,
        node_id: format!("{service_account}.{}~{instance}", args.namespace),
        service: args.service,
        namespace: args.namespace,
        services: args.services,
        token,
    };
    bootstrap.validate()?;
    let text = serde_json::to_string_pretty(&bootstrap.to_json())? + "\n";
    match &args.output {
        None => print!("{text}"),
        Some(path) => {
            write_secret(path, &text)?;
            eprintln!(
                "wrote {} (node {}); run the client with GRPC_XDS_BOOTSTRAP={} and target \
                 xds:///SERVICE.NAMESPACE:PORT",
                path.display(),
                bootstrap.node_id,
                path.display()
            );
        }
    }
    Ok(())
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
    match &args.root_cert_file {
        Some(path) => {
            config.root_cert_pem = std::fs::read_to_string(path)
                .with_context(|| format!("reading --root-cert-file {}", path.display()))?;
            sane_certs::TrustBundle::from_pem(&config.root_cert_pem)
                .with_context(|| format!("--root-cert-file {}", path.display()))?;
        }
        None if config.control_plane_address.starts_with("https://") => bail!(
            "--root-cert-file is required: injected sidecars verify the control plane at {} \
             with it (the control plane's <data-dir>/root-cert.pem)",
            config.control_plane_address
        ),
        None => {}
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
    let s = s.to_ascii_lowercase().replace('-', "_");
    match Kind::parse(&s) {
        Some(k) => Ok(k),
        None => Ok(match s.as_str() {
            "svc" => Kind::Service,
            "ep" => Kind::Endpoint,
            "authz" | "authorizationpolicy" | "authorizationpolicies" => Kind::Authz,
            "destinationpolicy" | "destinationpolicies" | "destination_policies" => Kind::Policy,
            "pa" | "peerauthentication" | "peerauthentications" => Kind::PeerAuthn,
            // `gateway(s)` alone names Istio's Gateway objects.
            "sane_gateway" | "sane_gateways" => Kind::Gateway,
            _ => bail!(
                "kind: unknown kind {s:?} (services, endpoints, routes, policies, \
                 authorization_policies, telemetry, peer_authentications, sane-gateways)"
            ),
        }),
    }
}

/// A MeshResources document; an error names the field path
/// (`routes[0].rules[1].destinations[0].weight: invalid type ...`).
fn mesh_document(value: serde_yaml::Value) -> anyhow::Result<MeshResources> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        anyhow::anyhow!("{path}: {}", e.into_inner())
    })
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
        // Tables are printed by the commands that have them.
        Format::Yaml | Format::Table => print!("{}", serde_yaml::to_string(value)?),
    }
    Ok(())
}

fn print_table(status: &Value) {
    let empty = Vec::new();
    let proxies = status["proxies"].as_array().unwrap_or(&empty);
    // Replicas on etcd: which replica each proxy is connected to (every
    // replica lists every replica's proxies). One process: no column.
    let replicated = status.get("replicas").is_some();
    let replica_width = proxies
        .iter()
        .filter_map(|p| p["replica"].as_str())
        .map(str::len)
        .chain([7])
        .max()
        .unwrap_or(7);
    let replica = |name: &str| match replicated {
        true => format!("{name:<replica_width$} "),
        false => String::new(),
    };
    println!(
        "{:<24} {}{:<12} {:<6} {:<10} {:<8} {:<9} {:<28} LAST NACK",
        "NODE",
        replica("REPLICA"),
        "NAMESPACE",
        "PROTO",
        "CONNECTED",
        "IN SYNC",
        "REVISION",
        "AGENT"
    );
    for p in proxies {
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
            "{:<24} {}{:<12} {:<6} {:<10} {:<8} {:<9} {:<28} {}",
            p["node"].as_str().unwrap_or(""),
            replica(p["replica"].as_str().unwrap_or("-")),
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
