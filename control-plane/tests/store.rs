//! The durable state: one control plane per data directory, files of an
//! unknown format refused, concurrent API writes all stored and recovered
//! after a restart, and lease lengths bounded at the API.

mod support;

use http::{Method, StatusCode};
use sane_control_plane::resource::Kind;
use serde_json::{json, Value};
use std::path::Path;
use std::process::Stdio;
use support::{ControlPlane, DEADLINE};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

/// Starts the real `sane-control-plane` on `dir` with ports 0.
fn spawn(dir: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_sane-control-plane"))
        .args(["--xds-addr", "127.0.0.1:0", "--api-addr", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// Waits for `child` to exit; returns its status and stderr.
async fn exit_of(mut child: Child) -> (std::process::ExitStatus, String) {
    let mut stderr = child.stderr.take().unwrap();
    let mut text = String::new();
    let (status, _) = tokio::time::timeout(DEADLINE, async {
        tokio::join!(child.wait(), stderr.read_to_string(&mut text))
    })
    .await
    .expect("the control plane exited in time");
    (status.unwrap(), text)
}

#[tokio::test]
async fn a_second_control_plane_on_one_data_dir_exits_naming_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = spawn(dir.path());
    let mut lines = BufReader::new(first.stdout.take().unwrap()).lines();
    // Serving: it holds the lock.
    let line = tokio::time::timeout(DEADLINE, lines.next_line())
        .await
        .expect("a listening line in time")
        .unwrap()
        .expect("the first control plane started");
    assert!(line.starts_with("listening name="), "{line}");

    let (status, stderr) = exit_of(spawn(dir.path())).await;
    assert!(!status.success(), "the second one must not run: {status}");
    let pid = first.id().unwrap();
    assert!(
        stderr.contains(&format!("locked by another control plane (pid {pid}")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&dir.path().join("lock").display().to_string()),
        "{stderr}"
    );
    // The first one is untouched by the attempt.
    assert!(first.try_wait().unwrap().is_none());
    first.kill().await.unwrap();
}

#[tokio::test]
async fn a_state_file_of_an_unknown_format_is_refused_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let written = br#"{"format": 7, "revision": 3, "services": []}"#;
    std::fs::write(&state, written).unwrap();
    let (status, stderr) = exit_of(spawn(dir.path())).await;
    assert!(!status.success(), "{status}");
    assert!(
        stderr.contains(&format!(
            "state file {}: format version 7 is not supported",
            state.display()
        )),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&state).unwrap(), written, "never overwritten");
}

#[tokio::test]
async fn ttl_overflows_are_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path()).await;
    cp.client
        .json(
            Method::PUT,
            "/api/v1/services/default/echo",
            Some(&json!({ "ports": [{ "port": 80 }] })),
        )
        .await
        .unwrap();
    let endpoint = json!({ "address": "10.0.0.1", "port": 8080 });
    let body = serde_json::to_vec(&endpoint).unwrap();
    // 2^61 s used to wrap to a lease of 0 ms in the state file; u64::MAX s
    // used to panic, and the panic text was the answer.
    for ttl in [
        "2305843009213693952",
        "18446744073709551615",
        "25h",
        "1000000000000000000000s",
    ] {
        let path = format!("/api/v1/endpoints/default/echo/10.0.0.1:8080?ttl={ttl}");
        let (status, reply) = cp
            .client
            .send(Method::PUT, &path, Some(body.clone()), Some(&cp.token))
            .await
            .unwrap();
        let reply: Value = serde_json::from_slice(&reply).unwrap();
        assert_eq!(status, StatusCode::BAD_REQUEST, "ttl={ttl}: {reply}");
        assert!(
            reply["error"].as_str().unwrap().starts_with("ttl: "),
            "ttl={ttl}: {reply}"
        );
        assert_eq!(reply["fields"][0]["path"], "ttl", "ttl={ttl}: {reply}");
    }
    // The maximum itself is fine.
    let path = "/api/v1/endpoints/default/echo/10.0.0.1:8080?ttl=24h";
    let (status, reply) = cp
        .client
        .send(Method::PUT, path, Some(body), Some(&cp.token))
        .await
        .unwrap();
    assert_eq!(
        status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&reply)
    );
    cp.stop().await;
}

#[tokio::test]
async fn concurrent_writes_are_all_stored_and_survive_a_restart() {
    const CLIENTS: usize = 8;
    const SERVICES: usize = 500;
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path()).await;
    let writers: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let client = cp.client.clone();
            tokio::spawn(async move {
                for i in (c..SERVICES).step_by(CLIENTS) {
                    let path = format!("/api/v1/services/load/svc-{i}");
                    let body = json!({ "ports": [{ "port": 80 }] });
                    let reply = client.json(Method::PUT, &path, Some(&body)).await;
                    let reply = reply.unwrap_or_else(|e| panic!("PUT {path}: {e}"));
                    assert_eq!(reply["outcome"], "created", "{reply}");
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let listed = cp.client.list(Kind::Service).await.unwrap();
    assert_eq!(listed["items"].as_array().unwrap().len(), SERVICES);
    assert_eq!(listed["revision"], SERVICES as u64);
    cp.stop().await;

    let cp = ControlPlane::start(dir.path()).await;
    let listed = cp.client.list(Kind::Service).await.unwrap();
    assert_eq!(listed["items"].as_array().unwrap().len(), SERVICES);
    assert_eq!(listed["revision"], SERVICES as u64);
    cp.stop().await;
}
