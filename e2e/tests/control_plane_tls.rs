//! The control plane's transport end to end, with real binaries: proxies
//! reach xDS and the CA over TLS and verify the server against the root
//! they were given; a proxy with the wrong root refuses to connect and says
//! why in `/ready` and its log; its certificate then authenticates its xDS
//! stream (mutual TLS); a revoked token ends its stream and is refused at
//! the next one; `sanectl token` lists, creates and revokes.

use sane_e2e::harness::{
    bins, eventually, metric_value, proxy_row, write_bootstrap, xds_bootstrap, ApiClient,
    ControlPlane, Proc, Sanectl, Sidecar,
};
use sane_xds_proto::{IdentityConfig, Listener};
use std::ffi::OsStr;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(30);

fn outbound() -> Vec<Listener> {
    vec![Listener {
        name: "outbound".into(),
        address: "127.0.0.1:0".into(),
        ..Default::default()
    }]
}

/// The proxy's `sane_xds_connected` gauge.
async fn xds_connected(sidecar: &Sidecar) -> Result<f64, String> {
    let metrics = sidecar.metrics().await?;
    metric_value(&metrics, "sane_xds_connected", &[]).ok_or_else(|| "no gauge".to_string())
}

/// The node id of a proxy streaming with the `web` token of `default`.
const WEB_NODE: &str = "web.default~web-1";

#[tokio::test]
async fn a_proxy_gets_config_and_its_certificate_over_verified_tls_then_uses_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp"), &[]).await;
    assert!(cp.xds_url().starts_with("https://"), "{}", cp.xds_url());
    let mut bootstrap = xds_bootstrap(&cp, "web-1", outbound());
    // The CA's address, token and root come from the control-plane section.
    bootstrap.identity = Some(IdentityConfig::default());
    let sidecar = Sidecar::start(&bins().proxy, dir.path(), "web-1", bootstrap).await;
    let api = ApiClient::new(&cp);
    api.wait_in_sync(DEADLINE, &["web-1"]).await;
    let certs = sidecar.admin_get("/certs").await.unwrap().json().unwrap();
    assert_eq!(
        certs["certificate"]["identity"],
        "spiffe://cluster.local/ns/default/sa/default"
    );

    // Its next stream presents that certificate: after a reconnect (the
    // control plane restarted on the same ports) it is still accepted, the
    // control plane having checked it is the token's workload.
    let (xds, api_addr) = (cp.xds.to_string(), cp.api.to_string());
    let data_dir = cp.data_dir.clone();
    cp.proc.stop(DEADLINE).await;
    eventually(DEADLINE, || async {
        match xds_connected(&sidecar).await? {
            0.0 => Ok(()),
            v => Err(format!("sane_xds_connected {v}")),
        }
    })
    .await;
    let cp = ControlPlane::start_on(&data_dir, &xds, &api_addr, &[]).await;
    ApiClient::new(&cp).wait_in_sync(DEADLINE, &["web-1"]).await;
    let log = cp.proc.stderr();
    assert!(!log.contains("xds stream refused"), "{log}");
    let presented = log.lines().any(|l| {
        l.contains("xds stream authenticated")
            && l.contains("spiffe://cluster.local/ns/default/sa/default")
    });
    assert!(
        presented,
        "the reconnect presented the workload certificate: {log}"
    );
}

#[tokio::test]
async fn a_proxy_given_the_wrong_root_refuses_to_connect_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp"), &[]).await;
    // Another mesh's root: a certificate that verifies against nothing here.
    let other = ControlPlane::start(&dir.path().join("other"), &[]).await;
    let mut bootstrap = xds_bootstrap(&cp, "lost-1", outbound());
    bootstrap.control_plane.as_mut().unwrap().root_cert_file =
        other.root_cert.display().to_string();
    let config = dir.path().join("lost-1.yaml");
    write_bootstrap(&config, &bootstrap);
    let proxy = Proc::spawn(
        "sane-proxy[lost-1]",
        &bins().proxy,
        [OsStr::new("--config"), config.as_os_str()],
        &[],
    );
    let admin = proxy
        .wait_listening(&["admin"], DEADLINE)
        .await
        .remove("admin")
        .unwrap();
    let ready = format!("http://{admin}/ready");
    let body = eventually(DEADLINE, || async {
        let reply = sane_e2e::harness::http::send(
            &sane_e2e::harness::http::http1_client(),
            sane_e2e::harness::http::get(&ready),
        )
        .await?;
        let text = reply.text();
        if reply.status.is_success() {
            panic!("a proxy with the wrong root became ready: {text}");
        }
        if text.contains("invalid peer certificate") {
            Ok(text)
        } else {
            Err(format!("/ready: {} {text}", reply.status))
        }
    })
    .await;
    println!("/ready of the proxy with the wrong root:\n{body}");
    assert!(body.starts_with("not ready\n"), "{body}");
    assert!(body.contains("xds: "), "{body}");
    assert!(body.contains(&cp.xds_url()), "{body}");
    assert!(body.contains("UnknownIssuer"), "{body}");
    assert!(body.contains("root_cert_file"), "{body}");
    // The log line may reach the captured stderr after /ready shows it.
    eventually(DEADLINE, || async {
        let log = proxy.stderr();
        if log.contains("invalid peer certificate") {
            Ok(())
        } else {
            Err(format!(
                "the proxy's log does not name the error yet:\n{log}"
            ))
        }
    })
    .await;
    // It never got as far as the control plane's status table.
    let status = ApiClient::new(&cp).proxies().await.unwrap();
    assert!(proxy_row(&status, "lost-1").is_none(), "{status}");
}

#[tokio::test]
async fn a_revoked_token_ends_the_proxys_stream_and_is_refused_after() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp"), &[]).await;
    let sanectl = Sanectl::new(&cp);
    // A token of its own, created with sanectl.
    let token_file = dir.path().join("web.token");
    let created = sanectl
        .ok(&[
            "token",
            "create",
            "default",
            "web",
            "--out",
            token_file.to_str().unwrap(),
        ])
        .await;
    assert!(
        created.stdout.is_empty(),
        "the token went to the file: {created}"
    );
    let mut bootstrap = xds_bootstrap(&cp, "web-1", outbound());
    bootstrap.control_plane.as_mut().unwrap().token_file = token_file.display().to_string();
    // A node id of the token's workload (web in default).
    bootstrap.node.id = WEB_NODE.into();
    let sidecar = Sidecar::start(&bins().proxy, dir.path(), "web-1", bootstrap).await;
    let api = ApiClient::new(&cp);
    api.wait_in_sync(DEADLINE, &[WEB_NODE]).await;

    let listed = sanectl.ok(&["token", "list", "-o", "json"]).await;
    let listed: serde_json::Value = serde_json::from_str(&listed.stdout).unwrap();
    let token = std::fs::read_to_string(&token_file).unwrap();
    assert!(!listed.to_string().contains(token.trim()), "{listed}");
    let id = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["service_account"] == "web")
        .expect("the web token is listed")["id"]
        .as_str()
        .unwrap()
        .to_string();
    sanectl.ok(&["token", "revoke", &id]).await;

    // The open stream ends; the proxy's reconnects are refused.
    eventually(DEADLINE, || async {
        let row = api.proxy(WEB_NODE).await?;
        if row["connected"] == false {
            Ok(())
        } else {
            Err(format!("still connected: {row}"))
        }
    })
    .await;
    eventually(DEADLINE, || async {
        let log = cp.proc.stderr();
        if log.contains("xds stream refused") && log.contains("unknown token") {
            Ok(())
        } else {
            Err("no refused reconnect in the control plane's log yet".to_string())
        }
    })
    .await;
    assert_eq!(xds_connected(&sidecar).await.unwrap(), 0.0);
    // Revoking it again: not found, exit 1.
    let again = sanectl.run(&["token", "revoke", &id]).await;
    assert_eq!(again.code(), Some(1), "{again}");
    assert!(again.stderr.contains("404"), "{again}");
}
