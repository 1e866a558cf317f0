//! Linux network namespaces as "pods", for tests of transparent
//! interception: two namespaces joined by a veth pair, each with its own
//! loopback, addresses, routes and iptables rules, and processes started
//! inside them with `ip netns exec` (optionally as another user, through
//! `setpriv`).
//!
//! Needs root and `ip`, `iptables`, `curl` and `setpriv`;
//! [`PodPair::create_or_skip`] installs missing tools with
//! `scripts/netns-test-deps.sh`, and when the test still cannot run it fails
//! under `CI=true` and otherwise prints a loud `SKIPPED:` and lets the test
//! return. The namespaces (and with them the veth pair and every rule) are
//! deleted on drop, panics included.

use super::binaries::workspace_root;
use super::process::Proc;
use std::ffi::OsStr;
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// Tools the namespaces need, with the Debian package of each.
const TOOLS: [(&str, &str); 6] = [
    ("ip", "iproute2"),
    ("iptables", "iptables"),
    ("iptables-save", "iptables"),
    ("iptables-restore", "iptables"),
    ("curl", "curl"),
    ("setpriv", "util-linux"),
];

/// Two namespaces, `sane-a-<pid>` and `sane-b-<pid>`, joined by a veth
/// pair on `10.203.<n>.0/24` (`.1` in A, `.2` in B); A's default route is B.
#[derive(Debug)]
pub struct PodPair {
    /// The client side.
    pub a: Pod,
    /// The server side.
    pub b: Pod,
}

/// One network namespace.
#[derive(Debug)]
pub struct Pod {
    /// Namespace name (for `ip netns exec`).
    pub name: String,
    /// The pod's address on the veth pair.
    pub ip: Ipv4Addr,
}

/// A finished command: its exit code and output.
#[derive(Debug)]
pub struct Ran {
    /// Exit status (as text, for messages).
    pub status: std::process::ExitStatus,
    /// stdout.
    pub stdout: String,
    /// stderr.
    pub stderr: String,
}

/// Whether the test must run: `CI=true`.
fn required() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

fn is_root() -> bool {
    // /proc/self belongs to the process's effective uid.
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn on_path(tool: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .any(|dir| dir.join(tool).is_file())
}

fn missing_tools() -> Vec<&'static str> {
    TOOLS
        .iter()
        .filter(|(tool, _)| !on_path(tool))
        .map(|(tool, _)| *tool)
        .collect()
}

/// Root and every tool, installing missing tools once; the reason if the
/// namespaces cannot be built here.
fn check_requirements() -> Result<(), String> {
    if !is_root() {
        return Err("network namespaces and iptables need root".into());
    }
    if missing_tools().is_empty() {
        return Ok(());
    }
    let script = deps_script();
    eprintln!(
        "sane-e2e: missing {:?}; running {}",
        missing_tools(),
        script.display()
    );
    let out = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .output();
    let missing = missing_tools();
    if missing.is_empty() {
        return Ok(());
    }
    let log = match out {
        Ok(o) => format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => e.to_string(),
    };
    let packages: Vec<&str> = TOOLS
        .iter()
        .filter(|(t, _)| missing.contains(t))
        .map(|(_, p)| *p)
        .collect();
    Err(format!(
        "missing {missing:?} (Debian packages {packages:?}); {} said:\n{log}",
        script.display()
    ))
}

/// `scripts/netns-test-deps.sh`.
pub fn deps_script() -> PathBuf {
    workspace_root().join("scripts/netns-test-deps.sh")
}

fn run_sync(program: &str, args: &[&str]) -> Result<Ran, String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running {program} {args:?}: {e}"))?;
    Ran::checked(format!("{program} {args:?}"), out)
}

// === impl PodPair ===

impl PodPair {
    /// Creates the pair, or explains why it cannot run here: under
    /// `CI=true` that panics; otherwise it prints `SKIPPED: <why>` to stderr
    /// and returns `None`, and the test should return.
    pub fn create_or_skip(test: &str) -> Option<PodPair> {
        let created = check_requirements().and_then(|()| PodPair::create());
        match created {
            Ok(pods) => Some(pods),
            Err(why) if required() => {
                panic!("{test} must run under CI=true but cannot: {why}")
            }
            Err(why) => {
                // Straight to the process's stderr, past the test harness's
                // output capture: a skip must be seen.
                let _ = writeln!(
                    std::io::stderr(),
                    "\n\
                     ************************************************************\n\
                     SKIPPED: {test}: {why}\n\
                     (runs as root with ip, iptables, curl and setpriv; \
                     CI=true makes this a failure)\n\
                     ************************************************************\n"
                );
                None
            }
        }
    }

    fn create() -> Result<PodPair, String> {
        // Several tests of one process may each build a pair: the sequence
        // number keeps their names apart (the addresses may repeat, each
        // pair being a network of its own).
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let pid = std::process::id();
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let suffix = match seq {
            0 => pid.to_string(),
            _ => format!("{pid}-{seq}"),
        };
        let n = (pid % 250 + 1) as u8;
        let pods = PodPair {
            a: Pod {
                name: format!("sane-a-{suffix}"),
                ip: Ipv4Addr::new(10, 203, n, 1),
            },
            b: Pod {
                name: format!("sane-b-{suffix}"),
                ip: Ipv4Addr::new(10, 203, n, 2),
            },
        };
        // From here on, a failure drops `pods`, which deletes whatever was
        // created.
        for pod in [&pods.a, &pods.b] {
            run_sync("ip", &["netns", "add", &pod.name])?;
            pod.run_sync(&["ip", "link", "set", "lo", "up"])?;
        }
        // Created straight inside the namespaces: the names never meet in
        // the host's namespace, so parallel runs cannot collide.
        run_sync(
            "ip",
            &[
                "link",
                "add",
                "eth0",
                "netns",
                &pods.a.name,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &pods.b.name,
            ],
        )?;
        for pod in [&pods.a, &pods.b] {
            let cidr = format!("{}/24", pod.ip);
            pod.run_sync(&["ip", "addr", "add", &cidr, "dev", "eth0"])?;
            pod.run_sync(&["ip", "link", "set", "eth0", "up"])?;
        }
        // Like a node's gateway: addresses outside the pod network (service
        // VIPs) are routable, so connecting to them reaches the NAT hooks.
        let gw = pods.b.ip.to_string();
        pods.a
            .run_sync(&["ip", "route", "add", "default", "via", &gw])?;
        Ok(pods)
    }
}

impl Drop for PodPair {
    fn drop(&mut self) {
        for pod in [&self.a, &self.b] {
            // Deleting a namespace deletes its end of the veth (and so the
            // pair), its addresses and its iptables rules.
            if let Err(e) = run_sync("ip", &["netns", "delete", &pod.name]) {
                eprintln!("sane-e2e: cleaning up: {e}");
            }
        }
    }
}

// === impl Pod ===

impl Pod {
    /// `ip netns exec <pod> <argv…>` (`run_as`: through `setpriv` as that
    /// uid and gid, with no supplementary groups).
    pub fn command<S: AsRef<OsStr>>(&self, run_as: Option<u32>, argv: &[S]) -> Vec<String> {
        let mut all = vec!["netns".into(), "exec".into(), self.name.clone()];
        if let Some(uid) = run_as {
            all.extend([
                "setpriv".into(),
                format!("--reuid={uid}"),
                format!("--regid={uid}"),
                "--clear-groups".into(),
                "--".into(),
            ]);
        }
        all.extend(
            argv.iter()
                .map(|a| a.as_ref().to_string_lossy().into_owned()),
        );
        all
    }

    /// Runs `make()`'s future to completion on a Tokio runtime whose
    /// threads live in this pod's network namespace: every socket it opens
    /// (a test client, an API client) and every process it spawns directly
    /// (`Sidecar::start`) is in the pod, as if the test ran there. Blocks
    /// the calling thread; a panic inside is re-raised here.
    pub fn block_on<F, Fut, T>(&self, make: F) -> T
    where
        F: FnOnce() -> Fut + Send,
        Fut: std::future::Future<Output = T>,
        T: Send,
    {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|scope| {
            let inside = scope.spawn(move || {
                let ns =
                    std::fs::File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
                // Only this thread moves; the runtime's threads are created
                // from it and so start in the pod too.
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|e| panic!("entering {path}: {e}"));
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("a Tokio runtime inside the pod");
                rt.block_on(make())
            });
            inside
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Runs `argv` in the pod (as root) to completion; fails unless it exits 0.
    pub fn run_sync(&self, argv: &[&str]) -> Result<Ran, String> {
        let args = self.command(None, argv);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_sync("ip", &args)
    }

    /// Runs `argv` in the pod (as `run_as`, or root) to completion, without
    /// blocking the runtime; the result whatever the exit status.
    pub async fn run(&self, run_as: Option<u32>, argv: &[&str]) -> Result<Ran, String> {
        let args = self.command(run_as, argv);
        let out = tokio::process::Command::new("ip")
            .args(&args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| format!("running ip {args:?}: {e}"))?;
        Ok(Ran::from(out))
    }

    /// Starts `program` in the pod (as `run_as`, or root); its
    /// `listening …` lines are read as usual.
    pub fn spawn(&self, name: &str, run_as: Option<u32>, program: &Path, args: &[&str]) -> Proc {
        let mut argv = vec![program.to_string_lossy().into_owned()];
        argv.extend(args.iter().map(|a| a.to_string()));
        let full = self.command(run_as, &argv);
        Proc::spawn(name, Path::new("ip"), full, &[])
    }

    /// `curl` inside the pod (as `run_as`, or root): the status code and
    /// body, or curl's error (connection refused, reset, timeout …).
    pub async fn curl(&self, run_as: Option<u32>, args: &[&str]) -> Result<(u16, String), String> {
        let mut argv = vec!["curl", "-sS", "--max-time", "10", "-w", "\n%{http_code}"];
        argv.extend_from_slice(args);
        let ran = self.run(run_as, &argv).await?;
        if !ran.status.success() {
            return Err(format!(
                "curl {args:?} in {} failed ({}): {}",
                self.name,
                ran.status,
                ran.stderr.trim()
            ));
        }
        let (body, code) = ran.stdout.rsplit_once('\n').unwrap_or(("", &ran.stdout));
        let code = code
            .trim()
            .parse()
            .map_err(|_| format!("curl printed no status: {:?}", ran.stdout))?;
        Ok((code, body.to_string()))
    }
}

// === impl Ran ===

impl Ran {
    fn checked(what: String, out: Output) -> Result<Ran, String> {
        let ran = Ran::from(out);
        if ran.status.success() {
            Ok(ran)
        } else {
            Err(format!(
                "{what} failed ({}): {}{}",
                ran.status,
                ran.stderr.trim(),
                ran.stdout.trim()
            ))
        }
    }
}

impl From<Output> for Ran {
    fn from(out: Output) -> Ran {
        Ran {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}
