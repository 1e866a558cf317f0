//! `docs/getting-started.md`, executed: its fenced `sh` blocks run in order
//! in one `bash` (so variables and functions carry over, as in a terminal),
//! with the built binaries first on `PATH`, in an empty directory, on free
//! ports (the `*_PORT` variables the document reads). A block fails the test
//! if a command in it fails (`set -e -o pipefail`) or if a line of the
//! ```` ```text ```` block that follows it is missing from what it printed
//! (stdout and stderr together). In an expected line `...` stands for any
//! text: the pieces between must appear, in order, on one output line.
//!
//! The document must wait for readiness itself (its `wait_for` retries a
//! command until a deadline, `sanectl status --wait-sync` waits for ACKs):
//! the test adds no waiting of its own between blocks.

use sane_e2e::harness::Curl;
use sane_e2e::harness::{bin, workspace_root};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Longest a single block may run.
const BLOCK_DEADLINE: Duration = Duration::from_secs(120);

/// Printed after each block so the test knows where its output ends.
const END_MARK: &str = "__getting_started_block_end__";

/// The port variables of the document, each set to a free port.
const PORT_VARS: &[&str] = &[
    "CP_XDS_PORT",
    "CP_API_PORT",
    "WEB_APP_PORT",
    "WEB_OUTBOUND_PORT",
    "WEB_INBOUND_PORT",
    "WEB_ADMIN_PORT",
    "BACKEND_APP_PORT",
    "BACKEND_INBOUND_PORT",
    "BACKEND_ADMIN_PORT",
];

/// One `sh` block and the lines expected in its output.
#[derive(Debug)]
struct Step {
    /// 1-based line of the block's opening fence, for messages.
    line: usize,
    script: String,
    expected: Vec<String>,
}

/// A bash whose process group is killed when the test ends, pass or fail:
/// the document's background processes go with it.
struct Shell {
    child: Child,
    lines: mpsc::Receiver<String>,
}

/// The document's steps: each `sh` block, with the `text` block right after
/// it (only blank lines between) as its expected output.
fn steps(markdown: &str) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    let mut lines = markdown.lines().enumerate();
    let mut last_was_sh = false;
    while let Some((i, line)) = lines.next() {
        let fence = line.trim_end();
        if fence == "```sh" || fence == "```text" {
            let body: Vec<&str> = lines
                .by_ref()
                .map(|(_, l)| l)
                .take_while(|l| l.trim_end() != "```")
                .collect();
            if fence == "```sh" {
                steps.push(Step {
                    line: i + 1,
                    script: body.join("\n"),
                    expected: Vec::new(),
                });
                last_was_sh = true;
            } else if last_was_sh {
                let step = steps.last_mut().expect("a sh block came first");
                step.expected = body
                    .iter()
                    .filter(|l| !l.trim().is_empty())
                    .map(|l| l.to_string())
                    .collect();
                last_was_sh = false;
            }
        } else if !line.trim().is_empty() {
            last_was_sh = false;
        }
    }
    steps
}

/// True if `output` has a line holding every `...`-separated piece of
/// `expected`, in order.
fn has_line(output: &str, expected: &str) -> bool {
    let pieces: Vec<&str> = expected
        .split("...")
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    output.lines().any(|line| {
        let mut rest = line;
        pieces.iter().all(|p| match rest.find(p) {
            Some(at) => {
                rest = &rest[at + p.len()..];
                true
            }
            None => false,
        })
    })
}

fn free_ports(n: usize) -> Vec<u16> {
    // Held together until all are chosen, so they differ.
    let held: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("binding a free port"))
        .collect();
    held.iter()
        .map(|l| l.local_addr().expect("a bound address").port())
        .collect()
}

// === impl Shell ===

impl Shell {
    fn start(dir: &std::path::Path, path: &std::ffi::OsStr, ports: &[(&str, u16)]) -> Shell {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new("bash");
        cmd.args(["--noprofile", "--norc"])
            .current_dir(dir)
            .env("PATH", path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0);
        for (k, _) in std::env::vars() {
            if k.starts_with("SANE_") || PORT_VARS.contains(&k.as_str()) {
                cmd.env_remove(k);
            }
        }
        for (var, port) in ports {
            cmd.env(var, port.to_string());
        }
        let mut child = cmd.spawn().expect("starting bash");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut shell = Shell { child, lines };
        shell.write("exec 2>&1\nset -e -o pipefail\n");
        shell
    }

    fn write(&mut self, text: &str) {
        let stdin = self.child.stdin.as_mut().expect("piped stdin");
        // A failed write means bash has exited; run() reports it.
        let _ = stdin.write_all(text.as_bytes());
        let _ = stdin.flush();
    }

    /// Runs `script`; returns its output, or an error with the output so
    /// far if bash exited (a command failed) or the block overran.
    fn run(&mut self, script: &str) -> Result<String, String> {
        self.write(&format!("{script}\nprintf '\\n%s\\n' '{END_MARK}'\n"));
        let deadline = Instant::now() + BLOCK_DEADLINE;
        let mut output = String::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line == END_MARK => return Ok(output),
                Ok(line) => {
                    output.push_str(&line);
                    output.push('\n');
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "still running after {BLOCK_DEADLINE:?}; output so far:\n{output}"
                    ))
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().map(|s| s.to_string());
                    return Err(format!(
                        "a command failed (bash exited: {status:?}); output:\n{output}"
                    ));
                }
            }
        }
    }
}

impl Drop for Shell {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.wait();
    }
}

#[test]
fn getting_started_runs_as_written() {
    let Some(_curl) = Curl::find_or_skip("getting_started_runs_as_written") else {
        return;
    };
    let doc_path = workspace_root().join("docs/getting-started.md");
    let doc = std::fs::read_to_string(&doc_path).expect("reading docs/getting-started.md");
    let steps = steps(&doc);
    assert!(
        steps.len() >= 8 && steps.iter().filter(|s| !s.expected.is_empty()).count() >= 8,
        "docs/getting-started.md lost its sh blocks or their expected output: {steps:#?}"
    );

    let bin_dir = bin("sanectl")
        .parent()
        .expect("binaries live in a directory")
        .to_path_buf();
    for name in ["sane-control-plane", "sane-proxy", "sane-echo"] {
        bin(name);
    }
    let mut path = vec![bin_dir];
    path.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    let path = std::env::join_paths(path).expect("a valid PATH");
    let dir = tempfile::Builder::new()
        .prefix("getting-started-")
        .tempdir()
        .expect("a temp dir");
    let ports: Vec<(&str, u16)> = PORT_VARS
        .iter()
        .copied()
        .zip(free_ports(PORT_VARS.len()))
        .collect();

    let mut shell = Shell::start(dir.path(), &path, &ports);
    for step in &steps {
        let started = Instant::now();
        let output = shell.run(&step.script).unwrap_or_else(|e| {
            panic!(
                "docs/getting-started.md:{}: the block\n{}\nfailed: {e}\n{}",
                step.line,
                step.script,
                logs(dir.path())
            )
        });
        println!(
            "--- docs/getting-started.md:{} ({:?})\n{output}",
            step.line,
            started.elapsed()
        );
        let missing: Vec<&String> = step
            .expected
            .iter()
            .filter(|e| !has_line(&output, e))
            .collect();
        assert!(
            missing.is_empty(),
            "docs/getting-started.md:{}: expected lines missing from the output:\n{}\n\
             --- output:\n{output}\n{}",
            step.line,
            missing
                .iter()
                .map(|m| format!("  {m}"))
                .collect::<Vec<_>>()
                .join("\n"),
            logs(dir.path())
        );
    }
}

/// The tails of the processes' logs the document writes, for a failure.
fn logs(dir: &std::path::Path) -> String {
    let mut out = String::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    let mut paths: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    for p in paths
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
    {
        let text = std::fs::read_to_string(p).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(30).collect();
        out.push_str(&format!("--- {} (last lines)\n", p.display()));
        for l in tail.iter().rev() {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

#[test]
fn expected_lines_match_pieces_in_order() {
    let out = "NODE    NAMESPACE  IN SYNC\nweb-1  default  true\n";
    assert!(has_line(out, "NODE ... IN SYNC"));
    assert!(has_line(out, "web-1 ... true"));
    assert!(!has_line(out, "IN SYNC ... NODE"));
    assert!(!has_line(out, "web-1 ... false"));
    let steps =
        steps("```sh\necho a\n```\n\n```text\na\n```\n\nprose\n\n```text\nnot expected\n```\n");
    assert_eq!(steps.len(), 1);
    assert_eq!(steps[0].expected, vec!["a".to_string()]);
}
