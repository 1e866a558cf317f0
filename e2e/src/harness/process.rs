//! [`Proc`]: a child process whose output the test can read and wait on.
//!
//! stdout and stderr are captured line by line on background threads, and
//! `listening name=… addr=…` lines (the bind-then-serve contract of every Sane
//! Mesh binary) are parsed into a map, so a test learns the real ports of a
//! process started on port 0. When a test panics, dropping the `Proc` prints
//! the tail of the child's output, which is usually the whole diagnosis.
//!
//! Set `SANE_E2E_LOG=1` to also stream children's output live to stderr.

use super::eventually::retry;
pub use nix::sys::signal::Signal;
use nix::unistd::Pid;
use std::collections::{HashMap, VecDeque};
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often process helpers look at the child: fast, since they only read
/// memory.
const PROC_STEP: Duration = Duration::from_millis(5);
/// Lines kept per stream; older lines are dropped so a long demo stays small.
const KEPT_LINES: usize = 20_000;
/// Lines printed per stream when a test panics.
const PRINTED_LINES: usize = 200;

/// Whether children get a process group of their own; see
/// [`isolate_children_from_ctrl_c`].
static OWN_PROCESS_GROUP: AtomicBool = AtomicBool::new(false);

/// A running child process. Killed when dropped.
#[derive(Debug)]
pub struct Proc {
    name: String,
    pid: u32,
    child: Mutex<Child>,
    output: Arc<Output>,
    readers: Vec<JoinHandle<()>>,
}

/// What the reader threads collected.
#[derive(Debug, Default)]
struct Output {
    stdout: Mutex<VecDeque<String>>,
    stderr: Mutex<VecDeque<String>>,
    listening: Mutex<HashMap<String, SocketAddr>>,
    stdout_closed: AtomicBool,
}

/// Parses `listening name=NAME addr=ADDR`.
fn parse_listening(line: &str) -> Option<(String, SocketAddr)> {
    let rest = line.trim().strip_prefix("listening ")?;
    let mut name = None;
    let mut addr = None;
    for field in rest.split_whitespace() {
        if let Some(v) = field.strip_prefix("name=") {
            name = Some(v.to_string());
        } else if let Some(v) = field.strip_prefix("addr=") {
            addr = v.parse().ok();
        }
    }
    Some((name?, addr?))
}

/// Starts every later child in a process group of its own, so a Ctrl-C in the
/// terminal reaches only this process, which then stops the children in
/// order (the demo does this). Tests leave it off: there, Ctrl-C should kill
/// the children along with the test.
pub fn isolate_children_from_ctrl_c() {
    OWN_PROCESS_GROUP.store(true, Ordering::Relaxed);
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn tail(lines: &VecDeque<String>, n: usize) -> String {
    let skip = lines.len().saturating_sub(n);
    let mut out = String::new();
    for line in lines.iter().skip(skip) {
        out.push_str(line);
        out.push('\n');
    }
    out
}

// === impl Proc ===

impl Proc {
    /// Starts `program` with `args` and extra `env`. `name` labels its output.
    ///
    /// `RUST_LOG` is passed through from the test's environment (default
    /// `info`); an entry in `env` overrides it. Panics if the program cannot
    /// be started.
    pub fn spawn<I, S>(name: &str, program: &Path, args: I, env: &[(&str, &str)]) -> Proc
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let rust_log = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_string());
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env("RUST_LOG", rust_log)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if OWN_PROCESS_GROUP.load(Ordering::Relaxed) {
            cmd.process_group(0);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name} ({cmd:?}) failed: {e}"));
        let output = Arc::new(Output::default());
        let live = std::env::var("SANE_E2E_LOG").is_ok_and(|v| !v.is_empty() && v != "0");
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let readers = vec![
            Self::read_lines(name, "stdout", stdout, output.clone(), live),
            Self::read_lines(name, "stderr", stderr, output.clone(), live),
        ];
        Proc {
            name: name.to_string(),
            pid: child.id(),
            child: Mutex::new(child),
            output,
            readers,
        }
    }

    fn read_lines(
        name: &str,
        stream: &'static str,
        pipe: impl Read + Send + 'static,
        output: Arc<Output>,
        live: bool,
    ) -> JoinHandle<()> {
        let label = name.to_string();
        std::thread::Builder::new()
            .name(format!("{name}-{stream}"))
            .spawn(move || {
                let mut reader = BufReader::new(pipe);
                let mut buf = Vec::new();
                loop {
                    buf.clear();
                    match reader.read_until(b'\n', &mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                    let line = String::from_utf8_lossy(&buf).trim_end().to_string();
                    if live {
                        eprintln!("[{label} {stream}] {line}");
                    }
                    let lines = if stream == "stdout" {
                        if let Some((n, a)) = parse_listening(&line) {
                            lock(&output.listening).insert(n, a);
                        }
                        &output.stdout
                    } else {
                        &output.stderr
                    };
                    let mut lines = lock(lines);
                    if lines.len() == KEPT_LINES {
                        lines.pop_front();
                    }
                    lines.push_back(line);
                }
                if stream == "stdout" {
                    output.stdout_closed.store(true, Ordering::Release);
                }
            })
            .expect("spawning an output reader thread")
    }

    /// The label given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The `listening` lines seen so far, by name.
    pub fn listening(&self) -> HashMap<String, SocketAddr> {
        lock(&self.output.listening).clone()
    }

    /// Waits until the child has printed a `listening` line for every name in
    /// `names`, and returns all addresses seen. Panics at the deadline, or as
    /// soon as the child closes stdout without printing them (it exited).
    pub async fn wait_listening(
        &self,
        names: &[&str],
        deadline: Duration,
    ) -> HashMap<String, SocketAddr> {
        let found = retry(deadline, PROC_STEP, || async {
            let seen = self.listening();
            let missing: Vec<&str> = names
                .iter()
                .copied()
                .filter(|n| !seen.contains_key(*n))
                .collect();
            if missing.is_empty() {
                return Ok(seen);
            }
            if self.output.stdout_closed.load(Ordering::Acquire) {
                panic!(
                    "{} closed stdout (exit: {:?}) without printing `listening` for {missing:?}",
                    self.name,
                    self.try_exit_status()
                );
            }
            Err(format!(
                "{} has not printed `listening name=…` for {missing:?}",
                self.name
            ))
        })
        .await;
        match found {
            Ok(seen) => seen,
            Err(e) => panic!("after {deadline:?}: {}", e.last_error),
        }
    }

    /// Everything the child wrote to stdout (the last lines, if it wrote a
    /// great many).
    pub fn stdout(&self) -> String {
        tail(&lock(&self.output.stdout), KEPT_LINES)
    }

    /// Everything the child wrote to stderr (logs go there).
    pub fn stderr(&self) -> String {
        tail(&lock(&self.output.stderr), KEPT_LINES)
    }

    /// Sends `sig` to the child. Panics if it has already exited.
    pub fn signal(&self, sig: Signal) {
        if let Err(e) = self.try_signal(sig) {
            panic!("{e}");
        }
    }

    /// Sends `sig` to the child; fails if it has already exited.
    pub fn try_signal(&self, sig: Signal) -> Result<(), String> {
        // Holding the lock while signalling: the child cannot be reaped (and
        // its pid reused) between the check and the kill.
        let mut child = lock(&self.child);
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "{} already exited ({status}); cannot send {sig}",
                self.name
            ));
        }
        let pid = i32::try_from(self.pid).map_err(|_| format!("pid {} out of range", self.pid))?;
        nix::sys::signal::kill(Pid::from_raw(pid), sig)
            .map_err(|e| format!("sending {sig} to {} failed: {e}", self.name))
    }

    /// The exit status, if the child has exited.
    pub fn try_exit_status(&self) -> Option<ExitStatus> {
        lock(&self.child).try_wait().ok().flatten()
    }

    /// Waits up to `deadline` for the child to exit.
    pub async fn wait_exit(&self, deadline: Duration) -> Option<ExitStatus> {
        retry(deadline, PROC_STEP, || async {
            self.try_exit_status()
                .ok_or_else(|| format!("{} is still running", self.name))
        })
        .await
        .ok()
    }

    /// SIGTERM, then waits up to `deadline` for the exit.
    pub async fn stop(&self, deadline: Duration) -> Option<ExitStatus> {
        if let Some(status) = self.try_exit_status() {
            return Some(status);
        }
        // The child may exit between the check and the signal; then the
        // wait below still reports its status.
        let _ = self.try_signal(Signal::SIGTERM);
        self.wait_exit(deadline).await
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        {
            let mut child = lock(&self.child);
            let _ = child.kill();
            let _ = child.wait();
        }
        if !std::thread::panicking() {
            return;
        }
        // Let the readers drain what the child wrote before it died; a
        // grandchild holding the pipes open must not hang the test, hence the
        // bound.
        let start = Instant::now();
        while self.readers.iter().any(|r| !r.is_finished())
            && start.elapsed() < Duration::from_millis(500)
        {
            std::thread::sleep(PROC_STEP); // allow-sleep: the poll step of a wait with a deadline
        }
        eprintln!(
            "===== {} (pid {}) stdout, last {PRINTED_LINES} lines =====\n{}\
             ===== {} (pid {}) stderr, last {PRINTED_LINES} lines =====\n{}\
             ===== end of {} =====",
            self.name,
            self.pid,
            tail(&lock(&self.output.stdout), PRINTED_LINES),
            self.name,
            self.pid,
            tail(&lock(&self.output.stderr), PRINTED_LINES),
            self.name,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_listening_lines() {
        assert_eq!(
            parse_listening("listening name=admin addr=127.0.0.1:4000"),
            Some(("admin".to_string(), "127.0.0.1:4000".parse().unwrap()))
        );
        assert_eq!(parse_listening("listening name=x addr=nope"), None);
        assert_eq!(parse_listening("2024 INFO listening"), None);
    }
}
