//! The sidecar's TLS, audited by an independent scanner: Debian's `sslscan`
//! (installed by `scripts/tls-audit-deps.sh`) scans a sidecar's inbound
//! mutual TLS port. No protocol older than TLS 1.2 may be accepted, and
//! every accepted cipher suite must be an ECDHE (TLS 1.2) or TLS 1.3 AEAD
//! suite. The scanner's report is printed, for docs/security.md.
//!
//! Without `sslscan` (and no way to install it) the test prints `SKIPPED`;
//! under `CI=true` it fails instead.

use sane_e2e::harness::{bins, xds_bootstrap, ControlPlane, EchoApp, Sidecar};
use sane_xds_proto::{Direction, IdentityConfig, Listener, Protocol, TlsMode, WorkloadPort};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(30);

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/tls-audit-deps.sh")
}

fn have_sslscan() -> bool {
    Command::new("sslscan")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Makes sure `sslscan` is there, or explains why not (skip locally, fail
/// under CI).
fn sslscan_or_skip() -> bool {
    if have_sslscan() {
        return true;
    }
    let out = Command::new("bash")
        .arg(script())
        .stdin(Stdio::null())
        .output();
    if have_sslscan() {
        return true;
    }
    let log = match out {
        Ok(o) => format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => e.to_string(),
    };
    let why = format!(
        "sslscan is not installed and {} could not install it: {log}",
        script().display()
    );
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("tls_audit needs sslscan under CI=true: {why}");
    }
    eprintln!("SKIPPED: tls_audit: {why}");
    false
}

/// The value of attribute `name` in one XML element's text.
fn attr<'a>(element: &'a str, name: &str) -> Option<&'a str> {
    let start = element.find(&format!(" {name}=\""))? + name.len() + 3;
    let len = element[start..].find('"')?;
    Some(&element[start..start + len])
}

/// Every `<tag .../>` element of the report.
fn elements<'a>(xml: &'a str, tag: &str) -> Vec<&'a str> {
    let open = format!("<{tag} ");
    xml.match_indices(&open)
        .filter_map(|(i, _)| xml[i..].find('>').map(|end| &xml[i..i + end + 1]))
        .collect()
}

/// A suite we accept: TLS 1.3's AEAD suites, or TLS 1.2 ECDHE with AES-GCM
/// or ChaCha20-Poly1305.
fn strong_suite(version: &str, cipher: &str) -> bool {
    match version {
        "TLSv1.3" => matches!(
            cipher,
            "TLS_AES_128_GCM_SHA256" | "TLS_AES_256_GCM_SHA384" | "TLS_CHACHA20_POLY1305_SHA256"
        ),
        "TLSv1.2" => {
            cipher.starts_with("ECDHE-")
                && (cipher.contains("-GCM-") || cipher.contains("CHACHA20-POLY1305"))
        }
        _ => false,
    }
}

#[tokio::test]
async fn inbound_mtls_port_accepts_only_tls12_and_13_with_strong_suites() {
    if !sslscan_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp"), &[]).await;
    let app = EchoApp::start_with(&bins().echo, "echo-1", "echo").await;
    let token = cp.issue_token(dir.path(), "default", "echo").await;
    let inbound = Listener {
        name: "inbound".into(),
        direction: Direction::Inbound.into(),
        address: "127.0.0.1:0".into(),
        tls_mode: TlsMode::Strict.into(),
        workload_ports: vec![WorkloadPort {
            port: app.addrs.http.port().into(),
            protocol: Protocol::Http.into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let mut bootstrap = xds_bootstrap(&cp, "echo", vec![inbound]);
    bootstrap.identity = Some(IdentityConfig {
        service_account: "echo".into(),
        ca_address: cp.xds_url(),
        root_cert_file: cp.root_cert_file(),
        token_file: token.display().to_string(),
        ..Default::default()
    });
    let server = Sidecar::start(&bins().proxy, dir.path(), "echo", bootstrap).await;
    server.wait_ready(DEADLINE).await;
    let target = server.listener("inbound").to_string();

    let out = tokio::task::spawn_blocking(move || {
        Command::new("sslscan")
            .args([
                "--xml=-",
                "--no-colour",
                "--no-fallback",
                "--no-renegotiation",
            ])
            .args([
                "--no-compression",
                "--no-heartbleed",
                "--no-check-certificate",
            ])
            .arg(&target)
            .stdin(Stdio::null())
            .output()
    })
    .await
    .unwrap()
    .expect("sslscan runs");
    let xml = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        xml.contains("<ssltest"),
        "no sslscan report: {xml}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let protocols: Vec<(String, bool)> = elements(&xml, "protocol")
        .into_iter()
        .map(|p| {
            let name = format!(
                "{}{}",
                attr(p, "type").unwrap_or("?"),
                attr(p, "version").unwrap_or("?")
            );
            (name, attr(p, "enabled") == Some("1"))
        })
        .collect();
    let ciphers: Vec<(String, String, String)> = elements(&xml, "cipher")
        .into_iter()
        .filter(|c| matches!(attr(c, "status"), Some("accepted" | "preferred")))
        .map(|c| {
            (
                attr(c, "sslversion").unwrap_or("?").to_string(),
                attr(c, "cipher").unwrap_or("?").to_string(),
                attr(c, "strength").unwrap_or("?").to_string(),
            )
        })
        .collect();
    println!("sslscan report for the inbound mTLS port:");
    for (name, enabled) in &protocols {
        println!(
            "  protocol {name}: {}",
            if *enabled { "accepted" } else { "refused" }
        );
    }
    for (version, cipher, strength) in &ciphers {
        println!("  cipher {version} {cipher} ({strength})");
    }

    let enabled = |name: &str| protocols.iter().any(|(n, e)| n == name && *e);
    for old in ["ssl2", "ssl3", "tls1.0", "tls1.1"] {
        assert!(!enabled(old), "{old} is accepted: {protocols:?}");
    }
    assert!(enabled("tls1.2"), "TLS 1.2 is not offered: {protocols:?}");
    assert!(enabled("tls1.3"), "TLS 1.3 is not offered: {protocols:?}");
    assert!(!ciphers.is_empty(), "no accepted suite reported: {xml}");
    for (version, cipher, _) in &ciphers {
        assert!(
            strong_suite(version, cipher),
            "weak or unexpected suite accepted: {version} {cipher}"
        );
    }
    // The scanner checked the protocols it was asked to: every old one is
    // in the report (as refused), so "not accepted" is not "not tested".
    for name in ["tls1.0", "tls1.1"] {
        assert!(
            protocols.iter().any(|(n, _)| n == name),
            "sslscan did not test {name}: {protocols:?}"
        );
    }
}
