//! The README's first command, `cargo run -p sane-e2e --bin sane-demo`, run
//! as a real process: it must start the whole local mesh (control plane,
//! sidecars with mTLS and xDS, sample services), carry every kind of
//! traffic without a failure, and stop everything cleanly.

use sane_e2e::harness::{
    bins_for, eventually, eventually_blocking, Proc, Signal, PACKAGES, PREBUILT_NAMES,
};
use std::time::{Duration, Instant};

/// Start (binaries already built), a short run, and an orderly stop.
const RUN_DEADLINE: Duration = Duration::from_secs(120);
/// How long the demo may take to stop once signalled.
const STOP_DEADLINE: Duration = Duration::from_secs(60);
const PROTOCOLS: [&str; 4] = ["http1", "http2", "grpc", "tcp"];

/// The demo process; signalled with SIGTERM if the test ends early, so the
/// demo stops the processes it started (they are in process groups of their
/// own, out of reach of a kill of the demo alone).
struct Demo {
    proc: Proc,
}

impl Demo {
    /// Builds every binary the demo runs (so its own build step is a no-op
    /// and the deadlines measure the mesh, not the compiler), then starts it.
    async fn start(args: &[&str]) -> Demo {
        tokio::task::spawn_blocking(|| {
            bins_for(&["sane-proxy", "sane-e2e", "sane-control-plane"]);
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        let bin = std::path::Path::new(env!("CARGO_BIN_EXE_sane-demo"));
        Demo {
            // Share the test build instead of building the binaries alone.
            proc: Proc::spawn("sane-demo", bin, args, &[("SANE_E2E_BUILD", "tests")]),
        }
    }

    /// Starts a copy of `sane-demo` placed in `dir` (with whatever binaries
    /// the test put beside it), as a plain binary: `CARGO` is emptied, as
    /// outside cargo.
    fn start_copied(dir: &std::path::Path, args: &[&str]) -> Demo {
        let bin = dir.join("sane-demo");
        std::fs::copy(env!("CARGO_BIN_EXE_sane-demo"), &bin).expect("copying sane-demo");
        Demo {
            proc: Proc::spawn("sane-demo", &bin, args, &[("CARGO", "")]),
        }
    }

    async fn exit_code(&self, deadline: Duration) -> Option<i32> {
        let status = self.proc.wait_exit(deadline).await;
        let status = status.unwrap_or_else(|| panic!("sane-demo still running after {deadline:?}"));
        status.code()
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if self.proc.try_exit_status().is_some() || self.proc.try_signal(Signal::SIGTERM).is_err() {
            return;
        }
        // Never panics: it gives up on its own before the helper's deadline.
        let give_up = Instant::now() + STOP_DEADLINE;
        eventually_blocking(STOP_DEADLINE * 2, || {
            if self.proc.try_exit_status().is_some() || Instant::now() >= give_up {
                Ok(())
            } else {
                Err("sane-demo is still stopping".to_string())
            }
        });
    }
}

/// The last `[   Ns] http1 ok=… failed=… | …` line: protocol → (ok, failed).
fn last_tally(stdout: &str) -> Vec<(String, u64, u64)> {
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('[') && l.contains("http1 ok="))
        .unwrap_or_else(|| panic!("no tally line in:\n{stdout}"));
    let counts = line.split_once("] ").map_or(line, |(_, rest)| rest);
    counts
        .split(" | ")
        .map(|part| {
            let mut words = part.split_whitespace();
            let proto = words.next().unwrap_or_default().to_string();
            let mut count = |key: &str| -> u64 {
                words
                    .next()
                    .and_then(|w| w.strip_prefix(key))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| panic!("malformed tally line: {line}"))
            };
            let ok = count("ok=");
            let failed = count("failed=");
            (proto, ok, failed)
        })
        .collect()
}

fn assert_clean_run(stdout: &str) {
    let tally = last_tally(stdout);
    let protos: Vec<&str> = tally.iter().map(|(p, _, _)| p.as_str()).collect();
    assert_eq!(protos, PROTOCOLS, "{stdout}");
    for (proto, ok, failed) in &tally {
        assert!(*ok > 0, "no {proto} request succeeded:\n{stdout}");
        assert_eq!(*failed, 0, "{proto} requests failed:\n{stdout}");
    }
    for expected in [
        "all in sync at revision",
        "/api/v1/proxies",
        "/certs",
        "-H 'x-canary: 1'",
        "spiffe://cluster.local/ns/default/sa/client",
        "every request succeeded and every process stopped cleanly",
    ] {
        assert!(stdout.contains(expected), "{expected:?} missing:\n{stdout}");
    }
}

#[tokio::test]
async fn the_demo_runs_the_whole_mesh_for_a_bounded_time() {
    let demo = Demo::start(&["--duration", "4s"]).await;
    let code = demo.exit_code(RUN_DEADLINE).await;
    let stdout = demo.proc.stdout();
    assert_eq!(code, Some(0), "{stdout}\n{}", demo.proc.stderr());
    assert_clean_run(&stdout);
    assert!(stdout.contains("4s elapsed; stopping"), "{stdout}");
    // Both backends served (80/20), and the canary only went to v2.
    for who in ["frontend-1", "backend-1", "backend-2"] {
        assert!(
            stdout.lines().any(|l| l.trim_start().starts_with(who)),
            "{who} served nothing:\n{stdout}"
        );
    }
}

#[tokio::test]
async fn sigterm_stops_the_demo_and_every_process_in_order() {
    let demo = Demo::start(&[]).await;
    // The first tally line: the mesh is up and traffic is flowing.
    eventually(RUN_DEADLINE, || async {
        let stdout = demo.proc.stdout();
        if let Some(status) = demo.proc.try_exit_status() {
            panic!("sane-demo exited ({status}) before sending traffic:\n{stdout}");
        }
        let flowing = stdout
            .lines()
            .any(|l| l.starts_with('[') && l.contains("ok="));
        flowing
            .then_some(())
            .ok_or_else(|| "no tally line yet".to_string())
    })
    .await;
    demo.proc.signal(Signal::SIGTERM);
    let code = demo.exit_code(STOP_DEADLINE).await;
    let stdout = demo.proc.stdout();
    assert_eq!(code, Some(0), "{stdout}\n{}", demo.proc.stderr());
    assert!(stdout.contains("SIGTERM; stopping"), "{stdout}");
    assert_clean_run(&stdout);
}

/// A copied `sane-demo` runs the release-style binaries next to it and
/// builds nothing (there is no source tree where it was copied to).
#[tokio::test]
async fn a_copied_demo_runs_the_binaries_beside_it_without_cargo() {
    let built = tokio::task::spawn_blocking(|| bins_for(PACKAGES).to_path_buf())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    for name in PREBUILT_NAMES {
        std::fs::copy(built.join(name), dir.path().join(name)).expect("copying a binary");
    }
    let demo = Demo::start_copied(dir.path(), &["--duration", "3s"]);
    let code = demo.exit_code(RUN_DEADLINE).await;
    let stdout = demo.proc.stdout();
    let stderr = demo.proc.stderr();
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(!stderr.contains("building the workspace"), "{stderr}");
    assert_clean_run(&stdout);
}

/// Without the other binaries beside it (and no `--bin-dir`), a copied
/// `sane-demo` says which are missing and exits 1.
#[tokio::test]
async fn a_copied_demo_without_its_binaries_names_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let demo = Demo::start_copied(dir.path(), &["--duration", "1s"]);
    let code = demo.exit_code(STOP_DEADLINE).await;
    let stderr = demo.proc.stderr();
    assert_eq!(code, Some(1), "{stderr}");
    for name in PREBUILT_NAMES {
        assert!(
            stderr.contains(&format!("/{name}")),
            "{name} not named: {stderr}"
        );
    }
    assert!(stderr.contains("--bin-dir"), "{stderr}");
}
