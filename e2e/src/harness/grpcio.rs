//! [`GrpcioClient`]: a proxyless gRPC client written with grpcio (gRPC's
//! own Python package from PyPI, an xDS client independent of this
//! project), driven by `e2e/python/xds_client.py` over stdin/stdout.
//!
//! grpcio lives in a virtualenv that `scripts/grpcio-test-deps.sh` creates
//! when missing ([`super::deps`]); under `CI=true` a missing, uninstallable
//! grpcio fails the test instead of skipping it.

use super::binaries::workspace_root;
use super::deps::installed_or_skip;
use super::eventually::within;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// How long the client may take to start (compiling the stubs included).
const START_DEADLINE: Duration = Duration::from_secs(60);
/// How long one batch of calls may take.
const BATCH_DEADLINE: Duration = Duration::from_secs(120);

/// A running proxyless client with one channel to its target; killed when
/// dropped.
#[derive(Debug)]
pub struct GrpcioClient {
    child: Child,
    /// The command pipe; one batch at a time.
    io: tokio::sync::Mutex<(ChildStdin, Lines<BufReader<ChildStdout>>)>,
    stderr: Arc<Mutex<String>>,
}

/// The outcome of a batch of calls: answers by echo instance, failures by
/// `CODE: details`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CallCounts {
    /// Calls answered, by the `from` of the reply.
    pub by: BTreeMap<String, u64>,
    /// Calls failed, by status code and message.
    pub errors: BTreeMap<String, u64>,
}

/// `scripts/grpcio-test-deps.sh`.
pub fn grpcio_deps_script() -> PathBuf {
    workspace_root().join("scripts/grpcio-test-deps.sh")
}

/// The virtualenv's python with grpcio, installing it with the project
/// script when missing. Under `CI=true` a failure panics; otherwise it
/// prints a loud `SKIPPED` and returns `None`.
pub fn grpcio_python_or_skip(test: &str) -> Option<PathBuf> {
    installed_or_skip(test, &grpcio_deps_script(), "python3 and grpcio from PyPI")
}

// === impl GrpcioClient ===

impl GrpcioClient {
    /// Starts the client with `GRPC_XDS_BOOTSTRAP=bootstrap` and one channel
    /// to `target` (e.g. `xds:///echo.default:9090`); returns once its
    /// stubs are compiled and its channel created (not yet connected).
    pub async fn start(python: &Path, bootstrap: &Path, target: &str) -> GrpcioClient {
        let e2e = workspace_root().join("e2e");
        let mut child = Command::new(python)
            .arg(e2e.join("python/xds_client.py"))
            .arg(target)
            .arg(e2e.join("proto/echo.proto"))
            .env("GRPC_XDS_BOOTSTRAP", bootstrap)
            // What the client's xDS layer did, for failure messages.
            .env("GRPC_VERBOSITY", "info")
            .env("GRPC_TRACE", "xds_client,xds_resolver")
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", python.display()));
        let stdin = child.stdin.take().expect("stdin is piped");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout is piped")).lines();
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err_lines = BufReader::new(child.stderr.take().expect("stderr is piped")).lines();
        let sink = stderr.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = err_lines.next_line().await {
                if std::env::var("SANE_E2E_LOG").is_ok_and(|v| !v.is_empty() && v != "0") {
                    eprintln!("[grpcio] {line}");
                }
                let mut s = sink.lock().unwrap_or_else(|e| e.into_inner());
                // Keep the tail: the trace is verbose.
                if s.len() > 4 << 20 {
                    let cut = s.len() - (2 << 20);
                    let cut = (cut..s.len()).find(|i| s.is_char_boundary(*i)).unwrap_or(0);
                    s.drain(..cut);
                }
                s.push_str(&line);
                s.push('\n');
            }
        });
        let ready = within(START_DEADLINE, stdout.next_line()).await;
        let client = GrpcioClient {
            child,
            io: tokio::sync::Mutex::new((stdin, stdout)),
            stderr,
        };
        match ready {
            Ok(Some(line)) if line.contains("\"ready\"") => client,
            other => panic!(
                "the grpcio client did not start ({other:?}):\n{}",
                client.stderr_tail(4000)
            ),
        }
    }

    /// Makes `n` unary calls one after the other (5 s deadline each), with
    /// `metadata`, on the client's one channel.
    pub async fn calls(&self, n: usize, metadata: &[(&str, &str)]) -> CallCounts {
        let cmd = serde_json::json!({ "calls": n, "metadata": metadata });
        let line = format!("{cmd}\n");
        let mut io = self.io.lock().await;
        let (stdin, stdout) = &mut *io;
        stdin
            .write_all(line.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("writing to the grpcio client: {e}"));
        let answer = within(BATCH_DEADLINE, stdout.next_line()).await;
        let answer = match answer {
            Ok(Some(a)) => a,
            other => panic!(
                "the grpcio client gave no answer ({other:?}):\n{}",
                self.stderr_tail(4000)
            ),
        };
        let v: serde_json::Value = serde_json::from_str(&answer)
            .unwrap_or_else(|e| panic!("grpcio client answer {answer:?}: {e}"));
        let counts = |k: &str| {
            v[k].as_object()
                .into_iter()
                .flatten()
                .map(|(name, n)| (name.clone(), n.as_u64().unwrap_or(0)))
                .collect()
        };
        CallCounts {
            by: counts("by"),
            errors: counts("errors"),
        }
    }

    /// The last `max` bytes of what the client wrote on stderr (its xDS
    /// trace).
    pub fn stderr_tail(&self, max: usize) -> String {
        let s = self.stderr.lock().unwrap_or_else(|e| e.into_inner());
        let start = s.len().saturating_sub(max);
        let start = (start..=s.len())
            .find(|i| s.is_char_boundary(*i))
            .unwrap_or(0);
        s[start..].to_string()
    }

    /// The client's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

// === impl CallCounts ===

impl CallCounts {
    /// Calls answered by `name`.
    pub fn from(&self, name: &str) -> u64 {
        self.by.get(name).copied().unwrap_or(0)
    }

    /// Calls answered.
    pub fn ok(&self) -> u64 {
        self.by.values().sum()
    }

    /// Calls failed.
    pub fn failed(&self) -> u64 {
        self.errors.values().sum()
    }
}
