//! The control plane in-process on 127.0.0.1:0: ADS clients (state of the
//! world and delta) receive, ACK and NACK resources; the HTTP API shows it,
//! and rejects bad input without storing anything.

mod support;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DiscoveryRequest, DiscoveryResponse,
};
use http::{Method, StatusCode};
use sane_control_plane::resource::{Kind, Resource};
use sane_xds_proto::{Endpoint, TypeUrl};
use serde_json::{json, Value};
use support::{eventually, node, ControlPlane, DeltaClient, SotwClient, DEADLINE};
use tokio_stream::StreamExt;

fn names(resp: &DiscoveryResponse) -> Vec<String> {
    let mut n: Vec<String> = resp
        .resources
        .iter()
        .map(|a| Resource::decode_any(a).expect("a known resource").key())
        .collect();
    n.sort();
    n
}

async fn put(cp: &ControlPlane, path: &str, body: Value) -> Value {
    cp.client
        .json(Method::PUT, path, Some(&body))
        .await
        .unwrap_or_else(|e| panic!("PUT {path}: {e}"))
}

/// Two namespaces: `shop/web` routed to `shop/web` and `inventory/backend`,
/// plus `inventory/db` which shop proxies should not see.
async fn seed(cp: &ControlPlane) {
    let port = json!([{ "name": "http", "port": 80, "target_port": 8080 }]);
    put(cp, "/api/v1/services/shop/web", json!({ "ports": port })).await;
    put(
        cp,
        "/api/v1/services/inventory/backend",
        json!({ "ports": port }),
    )
    .await;
    put(
        cp,
        "/api/v1/services/inventory/db",
        json!({ "ports": [{ "port": 5432, "protocol": "tcp" }] }),
    )
    .await;
    put(
        cp,
        "/api/v1/endpoints/shop/web/10.0.0.1:15006",
        json!({ "address": "10.0.0.1", "proxy_port": 15006 }),
    )
    .await;
    put(
        cp,
        "/api/v1/endpoints/inventory/db/10.0.0.3:5432",
        json!({ "address": "10.0.0.3", "port": 5432 }),
    )
    .await;
    put(
        cp,
        "/api/v1/routes/shop/web",
        json!({ "service": "web", "rules": [{ "destinations": [
            { "service": "web", "weight": 90 },
            { "service": "backend.inventory", "weight": 10 }
        ]}]}),
    )
    .await;
}

async fn proxy_status(cp: &ControlPlane, id: &str) -> Option<Value> {
    let all = cp.client.proxies().await.ok()?;
    all["proxies"]
        .as_array()?
        .iter()
        .find(|p| p["node"] == id)
        .cloned()
}

/// Opens a state-of-the-world stream with `token` (if any) as `node` and
/// returns how the control plane answered its first request.
async fn first_answer(
    cp: &ControlPlane,
    token: Option<&str>,
    node: envoy_types::pb::envoy::config::core::v3::Node,
) -> Result<DiscoveryResponse, tonic::Status> {
    let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{}", cp.xds))
        .await
        .unwrap();
    let first = DiscoveryRequest {
        node: Some(node),
        type_url: TypeUrl::Service.as_str().into(),
        ..Default::default()
    };
    let stream = tokio_stream::iter(vec![first]).chain(tokio_stream::pending());
    let request = match token {
        Some(t) => support::bearer(stream, t),
        None => tonic::Request::new(stream),
    };
    let mut responses = client
        .stream_aggregated_resources(request)
        .await?
        .into_inner();
    let answer = tokio::time::timeout(DEADLINE, responses.message())
        .await
        .expect("an answer in time")?;
    Ok(answer.expect("stream open"))
}

#[tokio::test]
async fn xds_streams_need_a_workload_token_for_their_own_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path()).await;
    seed(&cp).await;
    let shop = cp.workload_token("shop").await;

    let missing = first_answer(&cp, None, node("test.shop~web-1", "shop", &[]))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::Unauthenticated, "{missing}");
    assert!(missing.message().contains("no bearer token"), "{missing}");

    let forged = first_answer(
        &cp,
        Some("not-a-token"),
        node("test.shop~web-1", "shop", &[]),
    )
    .await
    .unwrap_err();
    assert_eq!(forged.code(), tonic::Code::Unauthenticated, "{forged}");
    assert!(forged.message().contains("unknown token"), "{forged}");

    // A valid token, but for another namespace than the node claims.
    let other = first_answer(
        &cp,
        Some(&shop),
        node("test.inventory~spy", "inventory", &[]),
    )
    .await
    .unwrap_err();
    assert_eq!(other.code(), tonic::Code::PermissionDenied, "{other}");
    assert!(
        other.message().contains("\"inventory\"") && other.message().contains("shop/test"),
        "{other}"
    );

    // The same token for its own namespace gets the view.
    let ok = first_answer(&cp, Some(&shop), node("test.shop~web-1", "shop", &[]))
        .await
        .unwrap();
    assert_eq!(names(&ok), ["inventory/backend", "shop/web"]);

    let (_, metrics) = cp
        .client
        .send(Method::GET, "/metrics", None, None)
        .await
        .unwrap();
    let metrics = String::from_utf8_lossy(&metrics).into_owned();
    for reason in ["missing", "unknown", "namespace"] {
        let line = format!("sane_cp_xds_streams_rejected_total{{reason=\"{reason}\"}} 1");
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
    // Nobody was counted as connected but the authenticated stream.
    let status = cp.client.proxies().await.unwrap();
    let nodes: Vec<&str> = status["proxies"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["node"].as_str())
        .collect();
    assert!(!nodes.contains(&"test.inventory~spy"), "{status}");
    cp.stop().await;
}

#[tokio::test]
async fn sotw_stream_gets_its_view_and_acks_and_nacks_show_in_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path()).await;
    seed(&cp).await;

    let mut ads = SotwClient::connect(
        cp.xds,
        &cp.workload_token("shop").await,
        node("test.shop~web-1", "shop", &[]),
    )
    .await;
    ads.request(TypeUrl::Service).await;
    let services = ads.recv_type(TypeUrl::Service).await;
    // Its namespace plus the route's destination; not inventory/db.
    assert_eq!(names(&services), ["inventory/backend", "shop/web"]);
    assert!(!services.nonce.is_empty() && !services.version_info.is_empty());
    ads.ack(&services).await;

    ads.request(TypeUrl::Route).await;
    let routes = ads.recv_type(TypeUrl::Route).await;
    assert_eq!(names(&routes), ["shop/web"]);
    let reason = "shop/web: rules[0].destinations[1]: weight split not supported";
    ads.nack(&routes, reason).await;

    ads.request(TypeUrl::Endpoint).await;
    let endpoints = ads.recv_type(TypeUrl::Endpoint).await;
    assert_eq!(names(&endpoints), ["shop/web/10.0.0.1:15006"]);
    ads.ack(&endpoints).await;

    // The NACK and its reason are visible; the proxy is not in sync.
    let status = eventually(DEADLINE, "the NACK in /api/v1/proxies", || async {
        let p = proxy_status(&cp, "test.shop~web-1").await?;
        let nack = &p["types"]["Route"]["last_nack"];
        (nack["reason"] == reason && p["types"]["Endpoint"]["in_sync"] == true).then_some(p)
    })
    .await;
    assert_eq!(status["connected"], true);
    assert_eq!(status["in_sync"], false);
    assert_eq!(status["namespace"], "shop");
    assert_eq!(
        status["types"]["Route"]["last_nack"]["version"],
        json!(routes.version_info)
    );
    assert_eq!(
        status["types"]["Service"]["version_acked"],
        json!(services.version_info)
    );

    // A new endpoint of a visible service is pushed (only endpoints change).
    put(
        &cp,
        "/api/v1/endpoints/inventory/backend/10.0.0.2:8080?ttl=60s",
        json!({ "address": "10.0.0.2", "port": 8080 }),
    )
    .await;
    let pushed = ads.recv_type(TypeUrl::Endpoint).await;
    assert_eq!(
        names(&pushed),
        ["inventory/backend/10.0.0.2:8080", "shop/web/10.0.0.1:15006"]
    );
    assert_ne!(pushed.nonce, endpoints.nonce);
    ads.ack(&pushed).await;
    // An endpoint of a service outside the view changes nothing for it.
    put(
        &cp,
        "/api/v1/endpoints/inventory/db/10.0.0.4:5432",
        json!({ "address": "10.0.0.4", "port": 5432 }),
    )
    .await;

    // Fixing the route (a new version) and ACKing brings it in sync.
    put(
        &cp,
        "/api/v1/routes/shop/web",
        json!({ "service": "web", "rules": [{ "destinations": [{ "service": "web" }] }] }),
    )
    .await;
    // Routes, services (backend left the view with the route) and endpoints
    // change; one push each, in type order.
    let services = ads.recv_type(TypeUrl::Service).await;
    assert_eq!(names(&services), ["shop/web"]);
    let endpoints = ads.recv_type(TypeUrl::Endpoint).await;
    assert_eq!(names(&endpoints), ["shop/web/10.0.0.1:15006"]);
    let routes = ads.recv_type(TypeUrl::Route).await;
    assert_eq!(names(&routes), ["shop/web"]);
    for resp in [&services, &endpoints, &routes] {
        ads.ack(resp).await;
    }
    eventually(DEADLINE, "web-1 in sync", || async {
        let all = cp.client.proxies().await.ok()?;
        (all["all_in_sync"] == true).then_some(())
    })
    .await;

    // What it was last sent.
    let config = cp.client.proxy_config("test.shop~web-1").await.unwrap();
    assert_eq!(config["resources"]["services"][0]["name"], "web");
    assert_eq!(config["resources"]["routes"][0]["name"], "web");

    // Metrics saw the pushes, the NACK and convergence.
    let (_, metrics) = cp
        .client
        .send(Method::GET, "/metrics", None, None)
        .await
        .unwrap();
    let metrics = String::from_utf8_lossy(&metrics).into_owned();
    assert!(
        metrics.contains("sane_cp_xds_nacks_total{type=\"Route\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("sane_cp_connected_proxies 1"), "{metrics}");
    assert!(
        metrics.contains("sane_cp_xds_pushes_total{type=\"Endpoint\"}"),
        "{metrics}"
    );
    let converged: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("sane_cp_convergence_seconds_count "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(converged >= 1, "{metrics}");

    drop(ads);
    eventually(DEADLINE, "web-1 marked disconnected", || async {
        let p = proxy_status(&cp, "test.shop~web-1").await?;
        (p["connected"] == false).then_some(())
    })
    .await;
    cp.stop().await;
}

/// A state-of-the-world client on a new stream asking with the version it
/// holds (a proxy failing over to another replica, which computes the same
/// versions) is sent nothing for that type, shows in sync, and gets the
/// next change as usual.
#[tokio::test]
async fn sotw_stream_resuming_with_the_current_version_is_not_sent_it_again() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path()).await;
    seed(&cp).await;
    let token = cp.workload_token("shop").await;
    let mut first = SotwClient::connect(cp.xds, &token, node("test.shop~web-1", "shop", &[])).await;
    first.request(TypeUrl::Service).await;
    let services = first.recv_type(TypeUrl::Service).await;
    first.ack(&services).await;
    drop(first);

    let mut again = SotwClient::connect(cp.xds, &token, node("test.shop~web-1", "shop", &[])).await;
    again
        .send(DiscoveryRequest {
            type_url: TypeUrl::Service.as_str().into(),
            version_info: services.version_info.clone(),
            ..Default::default()
        })
        .await;
    // Requests are answered in order: had the services been sent again,
    // they would come before the endpoints.
    again.request(TypeUrl::Endpoint).await;
    let next = again.recv().await;
    assert_eq!(next.type_url, TypeUrl::Endpoint.as_str(), "{next:?}");
    again.ack(&next).await;
    let status = eventually(DEADLINE, "the resumed stream in sync", || async {
        let p = proxy_status(&cp, "test.shop~web-1").await?;
        (p["connected"] == true && p["in_sync"] == true).then_some(p)
    })
    .await;
    assert_eq!(
        status["types"]["Service"]["version_acked"],
        json!(services.version_info)
    );
    // The next change of the type is pushed.
    put(
        &cp,
        "/api/v1/services/shop/extra",
        json!({ "ports": [{ "port": 81 }] }),
    )
    .await;
    let changed = again.recv_type(TypeUrl::Service).await;
    assert_ne!(changed.version_info, services.version_info);
    assert!(names(&changed).contains(&"shop/extra".to_string()));
    let (_, metrics) = cp
        .client
        .send(Method::GET, "/metrics", None, None)
        .await
        .unwrap();
    let metrics = String::from_utf8_lossy(&metrics).into_owned();
    assert!(
        metrics.contains("sane_cp_xds_resumed_total{type=\"Service\"} 1"),
        "{metrics}"
    );
    cp.stop().await;
}

#[tokio::test]
async fn delta_stream_subscribes_and_sees_removals() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path()).await;
    seed(&cp).await;

    let mut ads = DeltaClient::connect(
        cp.xds,
        &cp.workload_token("inventory").await,
        node("test.inventory~db-client", "inventory", &[]),
    )
    .await;
    ads.send(DeltaDiscoveryRequest {
        type_url: TypeUrl::Endpoint.as_str().into(),
        resource_names_subscribe: vec!["inventory/db/10.0.0.3:5432".into()],
        ..Default::default()
    })
    .await;
    let first = ads.recv().await;
    let got: Vec<&str> = first.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(got, ["inventory/db/10.0.0.3:5432"]);
    assert!(!first.resources[0].version.is_empty());
    ads.send(DeltaDiscoveryRequest {
        type_url: TypeUrl::Endpoint.as_str().into(),
        response_nonce: first.nonce.clone(),
        ..Default::default()
    })
    .await;

    // Deleting it sends a removal.
    cp.client
        .delete(Kind::Endpoint, "inventory/db/10.0.0.3:5432")
        .await
        .unwrap();
    let removal = ads.recv().await;
    assert!(removal.resources.is_empty());
    assert_eq!(removal.removed_resources, ["inventory/db/10.0.0.3:5432"]);
    assert_ne!(removal.nonce, first.nonce);

    // Reconnect with what it holds: unchanged resources are not resent.
    let mut ads = DeltaClient::connect(
        cp.xds,
        &cp.workload_token("inventory").await,
        node("test.inventory~db-client", "inventory", &[]),
    )
    .await;
    ads.send(DeltaDiscoveryRequest {
        type_url: TypeUrl::Service.as_str().into(),
        ..Default::default()
    })
    .await;
    let services = ads.recv().await;
    let held = services
        .resources
        .iter()
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect();
    let mut again = DeltaClient::connect(
        cp.xds,
        &cp.workload_token("inventory").await,
        node("test.inventory~db-client-2", "inventory", &[]),
    )
    .await;
    again
        .send(DeltaDiscoveryRequest {
            type_url: TypeUrl::Service.as_str().into(),
            initial_resource_versions: held,
            ..Default::default()
        })
        .await;
    let resp = again.recv().await;
    assert!(resp.resources.is_empty() && resp.removed_resources.is_empty());
    assert_eq!(resp.system_version_info, services.system_version_info);
    cp.stop().await;
}

#[tokio::test]
async fn api_rejects_bad_input_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path()).await;
    seed(&cp).await;
    let revision = cp.client.list(Kind::Service).await.unwrap()["revision"].clone();
    let token = Some(cp.token.clone());
    let send = |method: Method, path: &'static str, body: Vec<u8>, token: Option<String>| {
        let client = cp.client.clone();
        async move {
            let (status, body) = client
                .send(method, path, Some(body), token.as_deref())
                .await
                .unwrap();
            let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            (status, json)
        }
    };
    let svc = br#"{"ports":[{"port":80}]}"#.to_vec();

    // 401 without or with a wrong token.
    let (s, b) = send(
        Method::PUT,
        "/api/v1/services/default/new",
        svc.clone(),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{b}");
    assert!(
        b["error"].as_str().unwrap().contains("Authorization"),
        "{b}"
    );
    let (s, _) = send(
        Method::DELETE,
        "/api/v1/services/shop/web",
        vec![],
        Some("nope".into()),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    // 400: malformed JSON, unknown field (named), body not matching path.
    let (s, b) = send(
        Method::PUT,
        "/api/v1/services/default/new",
        b"{\"ports\": [".to_vec(),
        token.clone(),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    let (s, b) = send(
        Method::PUT,
        "/api/v1/services/default/new",
        br#"{"ports":[{"port":80}],"replicas":3}"#.to_vec(),
        token.clone(),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        b["error"]
            .as_str()
            .unwrap()
            .contains("unknown field `replicas`"),
        "{b}"
    );
    let (s, b) = send(
        Method::PUT,
        "/api/v1/services/default/new",
        br#"{"name":"other","ports":[{"port":80}]}"#.to_vec(),
        token.clone(),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        b["error"]
            .as_str()
            .unwrap()
            .contains("does not match path name"),
        "{b}"
    );

    // 422: invalid values, with field paths.
    let (s, b) = send(
        Method::PUT,
        "/api/v1/routes/shop/bad",
        br#"{"service":"web","rules":[{"destinations":[{"service":"web","weight":0},{"service":"web"}]}]}"#.to_vec(),
        token.clone(),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    assert_eq!(
        b["fields"][0]["path"],
        "routes[shop/bad].rules[0].destinations[0].weight"
    );
    // 422: unknown service reference.
    let (s, b) = send(
        Method::PUT,
        "/api/v1/routes/shop/dangling",
        br#"{"service":"web","rules":[{"destinations":[{"service":"ghost"}]}]}"#.to_vec(),
        token.clone(),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        b["error"]
            .as_str()
            .unwrap()
            .contains("\"ghost\" is not a declared service"),
        "{b}"
    );
    // 422: deleting a service a route still uses.
    let (s, b) = send(
        Method::DELETE,
        "/api/v1/services/inventory/backend",
        vec![],
        token.clone(),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");

    // 413 over 1 MiB.
    let mut big = br#"{"ports":[{"port":80}],"hosts":["#.to_vec();
    big.extend(std::iter::repeat_n(b'x', 2 * 1024 * 1024));
    let (s, b) = send(
        Method::PUT,
        "/api/v1/services/default/big",
        big,
        token.clone(),
    )
    .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{b}");

    // 404, 409.
    let (s, _) = send(
        Method::DELETE,
        "/api/v1/services/default/missing",
        vec![],
        token.clone(),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, b) = send(
        Method::POST,
        "/api/v1/endpoints/shop/web/10.0.0.1:15006/heartbeat",
        vec![],
        token.clone(),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");

    // Nothing was stored by any of it.
    let after = cp.client.list(Kind::Service).await.unwrap();
    assert_eq!(after["revision"], revision);
    assert_eq!(after["items"].as_array().unwrap().len(), 3);
    assert_eq!(
        cp.client.list(Kind::Route).await.unwrap()["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // A leased endpoint can be renewed.
    let ep = Resource::Endpoint(Endpoint {
        service: "web".into(),
        namespace: "shop".into(),
        address: "10.0.0.9".into(),
        port: 8080,
        ..Default::default()
    });
    let created = cp
        .client
        .put(&ep, Some(std::time::Duration::from_secs(30)))
        .await
        .unwrap();
    assert_eq!(created["outcome"], "created");
    assert_eq!(created["ttl"], "30s");
    let (s, b) = send(
        Method::POST,
        "/api/v1/endpoints/shop/web/10.0.0.9:8080/heartbeat",
        vec![],
        token.clone(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    cp.stop().await;
}

#[tokio::test]
async fn state_and_token_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path()).await;
    seed(&cp).await;
    let token = cp.token.clone();
    let revision = cp.client.list(Kind::Service).await.unwrap()["revision"].clone();
    cp.stop().await;

    let cp = ControlPlane::start(dir.path()).await;
    assert_eq!(cp.token, token);
    let services = cp.client.list(Kind::Service).await.unwrap();
    assert_eq!(services["revision"], revision);
    assert_eq!(services["items"].as_array().unwrap().len(), 3);
    let route = cp.client.get(Kind::Route, "shop/web").await.unwrap();
    assert_eq!(route["rules"][0]["destinations"][1]["weight"], 10);
    cp.stop().await;
}

#[tokio::test]
async fn openapi_documents_routes_the_server_has() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path()).await;
    let doc = cp
        .client
        .json(Method::GET, "/api/v1/openapi.json", None)
        .await
        .unwrap();
    assert_eq!(doc["openapi"], "3.0.3");
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 14, "{}", paths.len());
    for (path, ops) in paths {
        let concrete = path
            .replace("{instance}", "10.0.0.1:80")
            .replace(['{', '}'], "");
        for method in ops.as_object().unwrap().keys() {
            let method: Method = method.to_uppercase().parse().unwrap();
            let body = (method == Method::PUT).then(|| b"{}".to_vec());
            let (status, body) = cp
                .client
                .send(method.clone(), &concrete, body, Some(&cp.token))
                .await
                .unwrap();
            let text = String::from_utf8_lossy(&body);
            let unrouted =
                text.contains("no route for") || status == StatusCode::METHOD_NOT_ALLOWED;
            assert!(
                !unrouted,
                "{method} {path} is documented but not served: {status} {text}"
            );
        }
    }
    cp.stop().await;
}

#[tokio::test]
async fn config_dir_files_are_served_and_followed() {
    let dir = tempfile::tempdir().unwrap();
    let config_dir = tempfile::tempdir().unwrap();
    let file = config_dir.path().join("mesh.yaml");
    std::fs::write(
        &file,
        "services:\n  - { name: echo, ports: [ { port: 80 } ] }\n",
    )
    .unwrap();
    let cp = ControlPlane::start_with(dir.path(), |c| {
        c.config_dir = Some(config_dir.path().to_path_buf());
        c.config_poll_interval = std::time::Duration::from_millis(20);
    })
    .await;
    // Loaded before the listeners were reported.
    cp.client.get(Kind::Service, "default/echo").await.unwrap();

    let mut ads = SotwClient::connect(
        cp.xds,
        &cp.workload_token("default").await,
        node("test.default~p", "default", &[]),
    )
    .await;
    ads.request(TypeUrl::Service).await;
    let first = ads.recv_type(TypeUrl::Service).await;
    assert_eq!(names(&first), ["default/echo"]);
    ads.ack(&first).await;

    // An edit is picked up and pushed.
    std::fs::write(
        &file,
        "services:\n  - { name: echo, ports: [ { port: 80 } ] }\n---\nservices:\n  - { name: api, ports: [ { port: 8080 } ] }\n",
    )
    .unwrap();
    let pushed = ads.recv_type(TypeUrl::Service).await;
    assert_eq!(names(&pushed), ["default/api", "default/echo"]);

    // The API cannot change file-owned resources.
    let err = cp
        .client
        .delete(Kind::Service, "default/api")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("409") && err.contains("managed by file:"),
        "{err}"
    );
    assert!(cp.client.get(Kind::Service, "default/api").await.is_ok());
    cp.stop().await;
}

#[tokio::test]
async fn binaries_print_addresses_apply_and_stop_on_sigterm() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let mut server = tokio::process::Command::new(env!("CARGO_BIN_EXE_sane-control-plane"))
        .args([
            "--xds-addr",
            "127.0.0.1:0",
            "--api-addr",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let mut addrs = std::collections::HashMap::new();
    while addrs.len() < 2 {
        let line = tokio::time::timeout(DEADLINE, lines.next_line())
            .await
            .expect("listening lines in time")
            .unwrap()
            .expect("the server printed its addresses");
        let rest = line
            .strip_prefix("listening name=")
            .expect("a listening line");
        let (name, addr) = rest.split_once(" addr=").unwrap();
        addrs.insert(name.to_string(), addr.to_string());
    }
    // TLS by default: sanectl verifies the API against the root the
    // control plane wrote next to its state.
    let api = format!("https://{}", addrs["api"]);
    let root = dir.path().join("root-cert.pem");
    let token_file = dir.path().join("api-token");
    let mesh = dir.path().join("mesh.yaml");
    std::fs::write(
        &mesh,
        "services:\n  - { name: echo, ports: [ { port: 80 } ] }\nroutes:\n  - { name: echo, service: echo, rules: [ {} ] }\n",
    )
    .unwrap();
    let sanectl = |args: Vec<String>| {
        let api = api.clone();
        let root = root.clone();
        async move {
            tokio::process::Command::new(env!("CARGO_BIN_EXE_sanectl"))
                .arg("--server")
                .arg(&api)
                .arg("--ca-file")
                .arg(&root)
                .args(args)
                .output()
                .await
                .unwrap()
        }
    };
    let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let out = sanectl(s(&[
        "--token-file",
        token_file.to_str().unwrap(),
        "apply",
        "-f",
        mesh.to_str().unwrap(),
    ]))
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("service default/echo created"), "{stdout}");
    assert!(stdout.contains("route default/echo created"), "{stdout}");
    // Without a token: a clear error and a non-zero exit.
    let out = sanectl(s(&["delete", "services", "echo"])).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
    let out = sanectl(s(&["get", "routes", "-o", "json"])).await;
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["routes"][0]["name"], "echo");
    let out = sanectl(s(&["status", "--wait-sync", "5s"])).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let pid = server.id().unwrap().to_string();
    let killed = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(DEADLINE, server.wait())
        .await
        .expect("exited in time after SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");
}

/// `?resource_version=` on a write: 0 creates only, a stale version is
/// refused with 409 naming both versions, and nothing changes then.
#[tokio::test]
async fn resource_versions_guard_api_writes() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path()).await;
    put(
        &cp,
        "/api/v1/services/shop/web",
        json!({ "ports": [{ "port": 80 }] }),
    )
    .await;
    let route = |weight: u32| {
        json!({ "service": "web", "rules": [{ "destinations": [
            { "service": "web", "weight": weight }
        ]}]})
    };
    let created = put(&cp, "/api/v1/routes/shop/r?resource_version=0", route(1)).await;
    let version = created["resource_version"].as_u64().unwrap();
    let err = cp
        .client
        .json(
            Method::PUT,
            "/api/v1/routes/shop/r?resource_version=0",
            Some(&route(2)),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, sane_control_plane::Error::Api { status, .. } if *status == StatusCode::CONFLICT),
        "{err}"
    );
    let path = format!("/api/v1/routes/shop/r?resource_version={version}");
    let updated = put(&cp, &path, route(3)).await;
    assert!(updated["resource_version"].as_u64().unwrap() > version);
    let err = cp
        .client
        .json(Method::DELETE, &path, None)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("409") && err.contains(&format!("not {version}")),
        "{err}"
    );
    let stored = cp.client.get(Kind::Route, "shop/r").await.unwrap();
    assert_eq!(stored["rules"][0]["destinations"][0]["weight"], 3);
    let err = cp
        .client
        .json(
            Method::PUT,
            "/api/v1/routes/shop/r?resource_version=x",
            Some(&route(4)),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("resource_version"), "{err}");
    cp.stop().await;
}

/// A Sane PeerAuthentication through the API (token, field-path errors),
/// the store (a restart keeps it) and xDS (a proxy gets its namespace's and
/// the root namespace's, never another namespace's).
#[tokio::test]
async fn peer_authentications_go_through_the_api_the_store_and_xds() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path()).await;
    let send = |path: &'static str, body: &'static [u8]| {
        let client = cp.client.clone();
        let token = cp.token.clone();
        async move {
            let (status, body) = client
                .send(Method::PUT, path, Some(body.to_vec()), Some(&token))
                .await
                .unwrap();
            (status, String::from_utf8_lossy(&body).into_owned())
        }
    };
    let (s, b) = send(
        "/api/v1/peer_authentications/shop/ratings",
        br#"{"selector":{"app":"ratings"},"mode":"strict","port_modes":{"70000":"disable"}}"#,
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    assert!(b.contains("port_modes.70000"), "{b}");
    let (s, b) = send(
        "/api/v1/peer_authentications/shop/ratings",
        br#"{"mode":"sometimes"}"#,
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    assert!(b.contains("sometimes"), "{b}");
    put(
        &cp,
        "/api/v1/peer_authentications/shop/ratings",
        json!({ "selector": { "app": "ratings" }, "mode": "strict", "port_modes": { "9080": "disable" } }),
    )
    .await;
    put(
        &cp,
        "/api/v1/peer_authentications/istio-system/mesh",
        json!({ "mode": "permissive" }),
    )
    .await;
    put(
        &cp,
        "/api/v1/peer_authentications/inventory/default",
        json!({ "mode": "disable" }),
    )
    .await;
    cp.stop().await;

    let cp = ControlPlane::start(dir.path()).await;
    let got = cp
        .client
        .get(Kind::PeerAuthn, "shop/ratings")
        .await
        .unwrap();
    assert_eq!(got["port_modes"]["9080"], "disable", "{got}");
    let mut ads = SotwClient::connect(
        cp.xds,
        &cp.workload_token("shop").await,
        node("test.shop~web-1", "shop", &[]),
    )
    .await;
    ads.request(TypeUrl::PeerAuthentication).await;
    let pas = ads.recv_type(TypeUrl::PeerAuthentication).await;
    assert_eq!(names(&pas), ["istio-system/mesh", "shop/ratings"]);
    cp.stop().await;
}
