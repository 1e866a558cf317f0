//! `sanectl inject` on real manifests (tests/fixtures/inject/): the output
//! is valid Kubernetes, the injected pods are self-consistent (every mount
//! has its volume, the bootstrap the sidecar reads is the one the pod
//! carries and is a valid sidecar config, probes point at the proxy), a
//! second run changes nothing, and the opt-out and port conflicts behave.

#![cfg(feature = "kubernetes")]

mod k8s_support;

use k8s_support::{documents, fixture, validate};
use sane_control_plane::k8s::inject::{InjectConfig, Injector, SkipReason};
use sane_control_plane::k8s::manifest::{inject_manifest, Action};
use sane_control_plane::k8s::ManifestError;
use sane_xds_proto::{Bootstrap, Direction};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

fn injector() -> Injector {
    Injector::new(InjectConfig {
        proxy_image: "registry.test/sane/proxy:dev".into(),
        root_cert_pem: fixture("inject/root-cert.pem"),
        ..InjectConfig::default()
    })
}

/// Injects a fixture and checks every output document against its schema.
fn inject(name: &str) -> (String, Vec<Value>) {
    let text = fixture(&format!("inject/{name}"));
    let out = inject_manifest(&injector(), &text, "default").unwrap();
    let docs = documents(&out.text);
    for doc in &docs {
        if let Err(e) = validate(doc) {
            panic!("{name}: {} {}: {e}", doc["kind"], doc["metadata"]["name"]);
        }
    }
    (out.text, docs)
}

fn template(doc: &Value) -> &Value {
    match doc["kind"].as_str().unwrap() {
        "Pod" => doc,
        "CronJob" => &doc["spec"]["jobTemplate"]["spec"]["template"],
        _ => &doc["spec"]["template"],
    }
}

fn names(list: &Value) -> Vec<&str> {
    list.as_array()
        .into_iter()
        .flatten()
        .map(|c| c["name"].as_str().unwrap())
        .collect()
}

/// Everything an injected pod must satisfy; returns the sidecar's
/// `SANE_APP_PROBES` (empty when absent).
fn check_injected(pod: &Value, app_init: &[&str]) -> BTreeMap<String, Value> {
    check_injected_with_claims(pod, app_init, &[])
}

/// [`check_injected`] for a StatefulSet, whose `claims` are volumes too.
fn check_injected_with_claims(
    pod: &Value,
    app_init: &[&str],
    claims: &[&str],
) -> BTreeMap<String, Value> {
    let spec = &pod["spec"];
    let mut init = vec!["sane-init", "sane-proxy"];
    init.extend(app_init);
    assert_eq!(names(&spec["initContainers"]), init);
    let sidecar = &spec["initContainers"][1];
    assert_eq!(sidecar["restartPolicy"], "Always", "a native sidecar");
    assert_eq!(sidecar["image"], "registry.test/sane/proxy:dev");

    // Every mount has a volume; volume names are unique.
    let volumes: Vec<&str> = names(&spec["volumes"]);
    let unique: BTreeSet<&str> = volumes.iter().copied().collect();
    assert_eq!(unique.len(), volumes.len(), "duplicate volumes {volumes:?}");
    let containers: Vec<&Value> = spec["initContainers"]
        .as_array()
        .into_iter()
        .chain(spec["containers"].as_array())
        .flatten()
        .collect();
    for c in &containers {
        for m in c["volumeMounts"].as_array().into_iter().flatten() {
            let v = m["name"].as_str().unwrap();
            assert!(
                unique.contains(v) || claims.contains(&v),
                "{}: mount of missing volume {v}",
                c["name"]
            );
        }
    }
    // Container ports are unique across the pod (the sidecar's included).
    let mut ports = BTreeSet::new();
    for c in &containers {
        for p in c["ports"].as_array().into_iter().flatten() {
            let port = p["containerPort"].as_i64().unwrap();
            assert!(ports.insert(port), "port {port} declared twice");
        }
    }

    // The sidecar reads the bootstrap the pod carries, and it is valid.
    let bootstrap_volume = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "sane-bootstrap")
        .unwrap();
    let item = &bootstrap_volume["downwardAPI"]["items"][0];
    assert_eq!(
        item["fieldRef"]["fieldPath"],
        "metadata.annotations['sane.mesh/bootstrap']"
    );
    // The root the sidecar verifies the control plane with, from the pod.
    let root_item = &bootstrap_volume["downwardAPI"]["items"][1];
    assert_eq!(
        root_item["fieldRef"]["fieldPath"],
        "metadata.annotations['sane.mesh/root-cert']"
    );
    assert_eq!(
        pod["metadata"]["annotations"]["sane.mesh/root-cert"],
        fixture("inject/root-cert.pem").as_str()
    );
    let mount = |volume: &str| {
        sidecar["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == volume)
            .unwrap()["mountPath"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let config_path = format!(
        "{}/{}",
        mount("sane-bootstrap"),
        item["path"].as_str().unwrap()
    );
    let args: Vec<&str> = sidecar["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(&args[..2], ["--config", config_path.as_str()]);
    let bootstrap: Bootstrap = serde_yaml::from_str(
        pod["metadata"]["annotations"]["sane.mesh/bootstrap"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    bootstrap.validate().unwrap();
    assert_eq!(
        bootstrap.control_plane.as_ref().unwrap().root_cert_file,
        format!(
            "{}/{}",
            mount("sane-bootstrap"),
            root_item["path"].as_str().unwrap()
        )
    );
    let token = &spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "sane-token")
        .unwrap()["projected"]["sources"][0]["serviceAccountToken"];
    assert_eq!(token["audience"], "sane-mesh");
    let token_path = format!(
        "{}/{}",
        mount("sane-token"),
        token["path"].as_str().unwrap()
    );
    let identity = bootstrap.identity.as_ref().unwrap();
    assert_eq!(identity.token_file, token_path);
    assert_eq!(
        bootstrap.control_plane.as_ref().unwrap().token_file,
        token_path
    );
    let sa = spec["serviceAccountName"].as_str().unwrap_or("default");
    assert_eq!(identity.service_account, sa);
    let inbound = bootstrap
        .resources
        .listeners
        .iter()
        .find(|l| l.direction == Direction::Inbound as i32)
        .unwrap();
    let inbound_port: i64 = inbound.address.rsplit(':').next().unwrap().parse().unwrap();
    let sidecar_port = |name: &str| {
        sidecar["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap()["containerPort"]
            .as_i64()
            .unwrap()
    };
    assert_eq!(inbound_port, sidecar_port("sane-inbound"));
    // Both listeners take what sane-init redirects to their ports.
    assert!(bootstrap.resources.listeners.iter().all(|l| l.transparent));
    let init_args: Vec<&str> = spec["initContainers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let flag = |name: &str| -> i64 {
        let i = init_args.iter().position(|a| *a == name).unwrap();
        init_args[i + 1].parse().unwrap()
    };
    assert_eq!(&init_args[..2], ["iptables", "install"]);
    assert_eq!(flag("--inbound-port"), inbound_port);
    let outbound = bootstrap
        .resources
        .listeners
        .iter()
        .find(|l| l.direction == Direction::Outbound as i32)
        .unwrap();
    assert_eq!(
        flag("--outbound-port"),
        outbound
            .address
            .rsplit(':')
            .next()
            .unwrap()
            .parse::<i64>()
            .unwrap()
    );
    assert_eq!(
        flag("--proxy-uid"),
        sidecar["securityContext"]["runAsUser"].as_i64().unwrap(),
        "the proxy's own traffic is exempt"
    );
    let health = sidecar_port("sane-health");
    assert_eq!(sidecar["startupProbe"]["httpGet"]["port"], health);

    // App probes point at the health port; the originals are in the env.
    let app_probes: BTreeMap<String, Value> = sidecar["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "SANE_APP_PROBES")
        .map(|e| serde_json::from_str(e["value"].as_str().unwrap()).unwrap())
        .unwrap_or_default();
    let mut rewritten = BTreeSet::new();
    for c in containers.iter().filter(|c| c["name"] != "sane-proxy") {
        for kind in ["liveness", "readiness", "startup"] {
            let probe = &c[format!("{kind}Probe")];
            if probe.is_null() || !probe["exec"].is_null() {
                continue;
            }
            assert!(probe["tcpSocket"].is_null() && probe["grpc"].is_null());
            let path = format!("/app-health/{}/{kind}", c["name"].as_str().unwrap());
            assert_eq!(probe["httpGet"]["path"], path.as_str());
            assert_eq!(probe["httpGet"]["port"], health);
            rewritten.insert(path);
        }
    }
    assert_eq!(
        app_probes.keys().cloned().collect::<BTreeSet<_>>(),
        rewritten
    );
    for (path, original) in &app_probes {
        let action = ["httpGet", "tcpSocket", "grpc"]
            .iter()
            .find_map(|a| original.get(*a))
            .unwrap_or_else(|| panic!("{path}: no action"));
        assert!(action["port"].is_i64(), "{path}: port must be a number");
    }
    app_probes
}

#[test]
fn deployment_is_injected_and_its_neighbours_pass_through() {
    let (_, docs) = inject("deployment.yaml");
    assert_eq!(docs.len(), 3);
    let original = documents(&fixture("inject/deployment.yaml"));
    assert_eq!(docs[0], original[0], "the Service is untouched");
    assert_eq!(docs[2], original[2], "the ConfigMap is untouched");
    let pod = template(&docs[1]);
    let probes = check_injected(pod, &[]);
    assert_eq!(
        probes["/app-health/web/readiness"]["httpGet"],
        serde_json::json!({ "path": "/ready", "port": 8080, "scheme": "HTTP" }),
        "the named port is resolved"
    );
    assert_eq!(
        probes["/app-health/web/liveness"]["httpGet"]["httpHeaders"][0]["value"],
        "kubelet"
    );
    // Timing stays with the kubelet; the user's annotation stays too.
    let ready = &pod["spec"]["containers"][0]["readinessProbe"];
    assert_eq!(ready["periodSeconds"], 5);
    assert_eq!(ready["failureThreshold"], 2);
    assert_eq!(
        pod["metadata"]["annotations"]["prometheus.io/scrape"],
        "true"
    );
    assert_eq!(names(&pod["spec"]["volumes"])[0], "config");
    let bootstrap: Bootstrap = serde_yaml::from_str(
        pod["metadata"]["annotations"]["sane.mesh/bootstrap"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(bootstrap.node.namespace, "shop");
    assert_eq!(bootstrap.node.workload, "web");
    let ports: Vec<u32> = bootstrap.resources.listeners[1]
        .workload_ports
        .iter()
        .map(|p| p.port)
        .collect();
    assert_eq!(ports, [8080, 9090]);
}

#[test]
fn statefulset_job_and_cronjob_are_injected() {
    let (_, docs) = inject("statefulset.yaml");
    let probes = check_injected_with_claims(template(&docs[0]), &[], &["data"]);
    assert_eq!(
        probes["/app-health/postgres/readiness"]["tcpSocket"]["port"],
        5432
    );
    let live = &template(&docs[0])["spec"]["containers"][0]["livenessProbe"];
    assert!(live["exec"].is_object(), "exec probes stay as they are");
    assert!(docs[0]["spec"]["volumeClaimTemplates"].is_array());

    let (_, docs) = inject("job.yaml");
    assert_eq!(docs.len(), 2);
    for doc in &docs {
        let probes = check_injected(template(doc), &[]);
        assert!(probes.is_empty());
    }
}

#[test]
fn existing_init_containers_follow_the_sidecar_and_all_probe_kinds_are_rewritten() {
    let (_, docs) = inject("pod-init-probes.yaml");
    let pod = &docs[0];
    let probes = check_injected(pod, &["wait-for-db", "log-shipper"]);
    assert_eq!(
        probes.keys().collect::<Vec<_>>(),
        [
            "/app-health/api/liveness",
            "/app-health/api/readiness",
            "/app-health/api/startup",
            "/app-health/log-shipper/readiness"
        ]
    );
    assert_eq!(probes["/app-health/api/startup"]["grpc"]["port"], 9090);
    assert_eq!(probes["/app-health/api/liveness"]["timeoutSeconds"], 3);
    assert_eq!(
        probes["/app-health/log-shipper/readiness"]["httpGet"]["port"],
        9102
    );
    let bootstrap: Bootstrap = serde_yaml::from_str(
        pod["metadata"]["annotations"]["sane.mesh/bootstrap"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(bootstrap.node.id, "api.shop~api-0");
    let ports: Vec<u32> = bootstrap.resources.listeners[1]
        .workload_ports
        .iter()
        .map(|p| p.port)
        .collect();
    assert_eq!(ports, [8080, 9090, 6379, 9102]);
}

#[test]
fn injecting_twice_changes_nothing() {
    for name in [
        "deployment.yaml",
        "statefulset.yaml",
        "job.yaml",
        "pod-init-probes.yaml",
    ] {
        let (once, _) = inject(name);
        let twice = inject_manifest(&injector(), &once, "default").unwrap();
        assert_eq!(twice.text, once, "{name}");
        assert!(twice.objects.iter().all(|o| o.action != Action::Injected));
        assert!(twice
            .objects
            .iter()
            .any(|o| o.action == Action::Skipped(SkipReason::AlreadyInjected)));
    }
}

#[test]
fn the_opt_out_annotation_is_honoured() {
    let text = fixture("inject/opt-out.yaml");
    let out = inject_manifest(&injector(), &text, "default").unwrap();
    assert_eq!(out.text, text);
    assert_eq!(out.objects[0].action, Action::Skipped(SkipReason::OptedOut));
}

#[test]
fn a_pod_using_the_proxy_ports_is_refused_with_a_message() {
    let text = fixture("inject/conflicting-ports.yaml");
    let err = inject_manifest(&injector(), &text, "default").unwrap_err();
    assert!(matches!(err, ManifestError::Inject { .. }));
    let msg = err.to_string();
    assert!(msg.contains("Pod \"greedy\""), "{msg}");
    assert!(msg.contains("container \"envoy\" uses port 15001"), "{msg}");
    assert!(msg.contains("outbound listener"), "{msg}");
}

#[test]
fn lists_are_injected_item_by_item() {
    let deployment = &documents(&fixture("inject/opt-out.yaml"))[0];
    let mut enabled = deployment.clone();
    enabled["spec"]["template"]["metadata"]["annotations"] = serde_json::json!({});
    enabled["metadata"]["name"] = "enabled".into();
    let list = serde_json::json!({
        "apiVersion": "v1", "kind": "List", "items": [deployment, enabled]
    });
    let out = inject_manifest(&injector(), &serde_yaml::to_string(&list).unwrap(), "ns1").unwrap();
    let actions: Vec<Action> = out.objects.iter().map(|o| o.action).collect();
    assert_eq!(
        actions,
        [Action::Skipped(SkipReason::OptedOut), Action::Injected]
    );
    let list = &documents(&out.text)[0];
    check_injected(template(&list["items"][1]), &[]);
}

#[test]
fn sanectl_inject_writes_the_same_result_and_reports_each_workload() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.yaml");
    let input = format!(
        "{}/tests/fixtures/inject/deployment.yaml",
        env!("CARGO_MANIFEST_DIR")
    );
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_sanectl"))
        .args(["inject", "-f", &input, "-o"])
        .arg(&out)
        .args(["--proxy-image", "registry.test/sane/proxy:dev"])
        .arg("--root-cert-file")
        .arg(format!(
            "{}/tests/fixtures/inject/root-cert.pem",
            env!("CARGO_MANIFEST_DIR")
        ))
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(stderr.trim(), "Deployment web: injected");
    let (expected, _) = inject("deployment.yaml");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), expected);

    let bad = format!(
        "{}/tests/fixtures/inject/conflicting-ports.yaml",
        env!("CARGO_MANIFEST_DIR")
    );
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_sanectl"))
        .args(["inject", "-f", &bad, "--root-cert-file"])
        .arg(format!(
            "{}/tests/fixtures/inject/root-cert.pem",
            env!("CARGO_MANIFEST_DIR")
        ))
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&run.stderr).contains("uses port 15001"));
    // Without the root the sidecars could not verify the control plane.
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_sanectl"))
        .args(["inject", "-f", &input])
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&run.stderr).contains("--root-cert-file is required"));
}
