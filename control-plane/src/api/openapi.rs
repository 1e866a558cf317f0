//! The OpenAPI 3 description of the API, written by hand next to the
//! routes. Tests keep it honest: an integration test sends a request to every
//! documented operation and checks the router has it, and a unit test checks
//! each resource schema lists exactly the fields its `sane-xds-proto` type
//! accepts.

use axum::Json;
use serde_json::{json, Value};

/// `GET /api/v1/openapi.json`
pub(super) async fn handler() -> Json<Value> {
    Json(document())
}

/// The document.
pub fn document() -> Value {
    let mut paths = serde_json::Map::new();
    for (plural, schema, key_params) in [
        ("services", "Service", &["namespace", "name"][..]),
        ("routes", "Route", &["namespace", "name"][..]),
        ("policies", "DestinationPolicy", &["namespace", "name"][..]),
        ("telemetry", "Telemetry", &["namespace", "name"][..]),
        ("gateways", "Gateway", &["namespace", "name"][..]),
        (
            "authorization_policies",
            "AuthorizationPolicy",
            &["namespace", "name"][..],
        ),
        (
            "endpoints",
            "Endpoint",
            &["namespace", "service", "instance"][..],
        ),
        (
            "peer_authentications",
            "PeerAuthentication",
            &["namespace", "name"][..],
        ),
    ] {
        let mut list_params = vec![query("namespace", "Only resources of this namespace.")];
        if plural == "endpoints" {
            list_params.push(query("service", "Only endpoints of this service."));
        }
        paths.insert(
            format!("/api/v1/{plural}"),
            json!({ "get": {
                "summary": format!("List {plural}"),
                "parameters": list_params,
                "responses": { "200": ok(json!({
                    "type": "object",
                    "required": ["revision", "items"],
                    "properties": {
                        "revision": { "type": "integer", "description": "Registry revision." },
                        "items": { "type": "array", "items": schema_ref(schema) }
                    }
                }))}
            }}),
        );
        let one_path = format!(
            "/api/v1/{plural}/{}",
            key_params
                .iter()
                .map(|p| format!("{{{p}}}"))
                .collect::<Vec<_>>()
                .join("/")
        );
        let params: Vec<Value> = key_params.iter().map(|p| path_param(p)).collect();
        let mut put_params = params.clone();
        if plural == "endpoints" {
            put_params.push(query(
                "ttl",
                "Register with a lease of this length (`30s`, `2m`, or seconds); renew it with POST .../heartbeat. Without it the endpoint is permanent.",
            ));
        }
        paths.insert(
            one_path.clone(),
            json!({
                "get": {
                    "summary": format!("Get one of {plural}"),
                    "parameters": params,
                    "responses": { "200": ok(schema_ref(schema)), "404": error("Not found.") }
                },
                "put": {
                    "summary": format!("Create or replace one of {plural}"),
                    "description": "Empty namespace/name (service for endpoints) fields are filled from the path; others must match it. The whole resulting configuration is validated; on any error nothing is stored.",
                    "security": [{ "bearer": [] }],
                    "parameters": put_params,
                    "requestBody": { "required": true, "content": { "application/json": { "schema": schema_ref(schema) } } },
                    "responses": {
                        "200": ok(schema_ref("WriteResult")),
                        "201": ok(schema_ref("WriteResult")),
                        "400": error("Malformed JSON, unknown field, or body not matching the path."),
                        "401": error("Missing or invalid token."),
                        "409": error("The resource is managed by a config file."),
                        "413": error("Body over the size limit (1 MiB by default)."),
                        "422": validation_error()
                    }
                },
                "delete": {
                    "summary": format!("Delete one of {plural}"),
                    "security": [{ "bearer": [] }],
                    "parameters": params,
                    "responses": {
                        "200": ok(schema_ref("WriteResult")),
                        "401": error("Missing or invalid token."),
                        "404": error("Not found."),
                        "409": error("The resource is managed by a config file."),
                        "422": validation_error()
                    }
                }
            }),
        );
        if plural == "endpoints" {
            paths.insert(
                format!("{one_path}/heartbeat"),
                json!({ "post": {
                    "summary": "Renew an endpoint's lease",
                    "security": [{ "bearer": [] }],
                    "parameters": params,
                    "responses": {
                        "200": ok(json!({ "type": "object", "properties": {
                            "kind": { "type": "string" }, "key": { "type": "string" },
                            "ttl": { "type": "string", "description": "The lease length, renewed from now." }
                        }})),
                        "401": error("Missing or invalid token."),
                        "404": error("No such endpoint (it may have expired: register it again)."),
                        "409": error("The endpoint was registered without a ttl.")
                    }
                }}),
            );
        }
    }
    paths.insert(
        "/api/v1/proxies".into(),
        json!({ "get": {
            "summary": "Connected (and recently disconnected) proxies and their sync state",
            "responses": { "200": ok(json!({
                "type": "object",
                "properties": {
                    "revision": { "type": "integer", "description": "Current registry revision." },
                    "all_in_sync": { "type": "boolean", "description": "Every connected proxy is in sync." },
                    "proxies": { "type": "array", "items": schema_ref("ProxyStatus") }
                }
            }))}
        }}),
    );
    paths.insert(
        "/api/v1/proxies/{id}".into(),
        json!({ "get": {
            "summary": "One proxy's status",
            "parameters": [path_param("id")],
            "responses": { "200": ok(schema_ref("ProxyStatus")), "404": error("Unknown proxy.") }
        }}),
    );
    paths.insert(
        "/api/v1/proxies/{id}/config".into(),
        json!({ "get": {
            "summary": "What a proxy was last sent",
            "parameters": [path_param("id")],
            "responses": { "200": ok(json!({
                "type": "object",
                "properties": {
                    "node": { "type": "string" },
                    "revision": { "type": "integer" },
                    "versions": { "type": "object", "additionalProperties": { "type": "string" } },
                    "resources": schema_ref("MeshResources")
                }
            })), "404": error("Unknown proxy.") }
        }}),
    );
    paths.insert(
        "/api/v1/tokens".into(),
        json!({ "get": {
            "summary": "List workload bootstrap tokens by id (never the tokens themselves)",
            "security": [{ "bearer": [] }],
            "responses": {
                "200": ok(json!({ "type": "object", "properties": {
                    "items": { "type": "array", "items": { "type": "object", "properties": {
                        "id": { "type": "string", "description": "First 16 hex digits of the token's SHA-256." },
                        "namespace": { "type": "string" },
                        "service_account": { "type": "string" },
                        "identity": { "type": "string" },
                        "created_at": { "type": "integer", "description": "Unix seconds; 0 if unknown." }
                    }}}
                }})),
                "401": error("Missing or invalid token.")
            }
        }, "post": {
            "summary": "Issue a workload bootstrap token (shown once; only its hash is kept)",
            "security": [{ "bearer": [] }],
            "requestBody": { "required": true, "content": { "application/json": { "schema": {
                "type": "object",
                "additionalProperties": false,
                "required": ["namespace", "service_account"],
                "properties": {
                    "namespace": { "type": "string" },
                    "service_account": { "type": "string" }
                }
            }}}},
            "responses": {
                "201": ok(json!({ "type": "object", "properties": {
                    "token": { "type": "string" },
                    "id": { "type": "string", "description": "The token's id, to list and revoke it by." },
                    "identity": { "type": "string", "description": "The SPIFFE id the token grants." }
                }})),
                "400": error("Malformed JSON or unknown field."),
                "401": error("Missing or invalid token."),
                "422": error("Invalid namespace or service account.")
            }
        }}),
    );
    paths.insert(
        "/api/v1/tokens/{id}".into(),
        json!({ "delete": {
            "summary": "Revoke a workload bootstrap token: refused by the CA and new xDS streams, open streams opened with it are ended",
            "security": [{ "bearer": [] }],
            "parameters": [path_param("id")],
            "responses": {
                "200": ok(json!({ "type": "object", "properties": {
                    "id": { "type": "string" },
                    "revoked": { "type": "boolean" },
                    "namespace": { "type": "string" },
                    "service_account": { "type": "string" }
                }})),
                "401": error("Missing or invalid token."),
                "404": error("No token has this id.")
            }
        }}),
    );
    let istio_item = json!({ "type": "object", "properties": {
        "kind": { "type": "string" },
        "resource": { "type": "string" },
        "apiVersion": { "type": "string" },
        "namespace": { "type": "string" },
        "name": { "type": "string" },
        "produced": array_of(string()),
        "unsupported": array_of(json!({ "type": "object", "properties": {
            "path": string(), "reason": string()
        }})),
        "notes": array_of(json!({ "type": "object", "properties": {
            "path": string(), "note": string()
        }})),
        "object": { "type": "object", "description": "The object as written (one object only)." }
    }});
    let istio_written = json!({ "type": "object", "properties": {
        "revision": { "type": "integer" },
        "objects": { "type": "array", "items": { "type": "object" } },
        "outcomes": { "type": "array", "items": { "type": "object" } }
    }});
    paths.insert(
        "/api/v1/istio".into(),
        json!({ "get": {
            "summary": "Stored Istio and Gateway API objects, with what each produced and its unsupported fields",
            "responses": { "200": ok(json!({ "type": "object", "properties": {
                "items": { "type": "array", "items": istio_item.clone() }
            }})) }
        }, "post": {
            "summary": "Store Istio, Gateway API and Sane documents (multi-document YAML) and write what they produce, all or nothing",
            "security": [{ "bearer": [] }],
            "parameters": [{ "name": "strict", "in": "query", "schema": { "type": "boolean" },
                "description": "Refuse objects with fields that cannot be honoured." }],
            "requestBody": { "required": true, "content": { "application/yaml": { "schema": { "type": "string" } } } },
            "responses": {
                "200": ok(istio_written.clone()),
                "400": error("Not YAML, an unknown kind or a malformed object."),
                "401": error("Missing or invalid token."),
                "409": error("Two objects (or a Sane route and an object) direct one service, or a resource another source owns."),
                "422": error("A missing subset, an unknown host, strict findings, or resources the registry refuses.")
            }
        }}),
    );
    paths.insert(
        "/api/v1/istio/{resource}".into(),
        json!({ "get": {
            "summary": "The stored objects of one kind (`virtualservices`, `sidecars`, `gateways.networking.istio.io`, ...)",
            "parameters": [path_param("resource")],
            "responses": { "200": ok(json!({ "type": "object", "properties": {
                "items": { "type": "array", "items": istio_item.clone() }
            }})), "404": error("Not a stored kind.") }
        }}),
    );
    paths.insert(
        "/api/v1/istio/{resource}/{namespace}/{name}".into(),
        json!({ "get": {
            "summary": "One stored object, as written, with what it produced",
            "parameters": [path_param("resource"), path_param("namespace"), path_param("name")],
            "responses": { "200": ok(istio_item), "404": error("Not stored, or not a stored kind.") }
        }, "delete": {
            "summary": "Remove a stored object and what it produced",
            "security": [{ "bearer": [] }],
            "parameters": [path_param("resource"), path_param("namespace"), path_param("name")],
            "responses": {
                "200": ok(istio_written),
                "401": error("Missing or invalid token."),
                "404": error("Not stored, or not a stored kind.")
            }
        }}),
    );
    paths.insert(
        "/api/v1/openapi.json".into(),
        json!({ "get": { "summary": "This document", "responses": { "200": ok(json!({ "type": "object" })) } } }),
    );
    paths.insert(
        "/healthz".into(),
        json!({ "get": { "summary": "Liveness", "responses": { "200": ok(json!({
            "type": "object", "properties": { "status": { "type": "string", "enum": ["ok"] } }
        })) } } }),
    );
    paths.insert(
        "/metrics".into(),
        json!({ "get": { "summary": "Prometheus metrics", "responses": { "200": {
            "description": "Prometheus text format",
            "content": { "text/plain": { "schema": { "type": "string" } } }
        } } } }),
    );
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Sane Mesh control plane API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Reads are open; writes need `Authorization: Bearer <token>`. Errors are `{\"error\": \"...\"}`."
        },
        "paths": paths,
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": schemas()
        }
    })
}

fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn ok(schema: Value) -> Value {
    json!({ "description": "OK", "content": { "application/json": { "schema": schema } } })
}

fn error(description: &str) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": schema_ref("Error") } } })
}

fn validation_error() -> Value {
    error("The resulting configuration is invalid (bad field values, or references to unknown services); `fields` names each bad field.")
}

fn path_param(name: &str) -> Value {
    let description = match name {
        "instance" => {
            "`address:port` of the endpoint: its proxy_port if set, else its port; IPv6 bracketed."
        }
        "id" => "The proxy's node id.",
        _ => "",
    };
    json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" }, "description": description })
}

fn query(name: &str, description: &str) -> Value {
    json!({ "name": name, "in": "query", "required": false, "schema": { "type": "string" }, "description": description })
}

fn object(required: &[&str], properties: Value) -> Value {
    json!({ "type": "object", "additionalProperties": false, "required": required, "properties": properties })
}

fn string() -> Value {
    json!({ "type": "string" })
}

fn port() -> Value {
    json!({ "type": "integer", "minimum": 0, "maximum": 65535 })
}

fn enumeration(values: &[&str], default: &str) -> Value {
    json!({ "type": "string", "enum": values, "default": default })
}

fn duration() -> Value {
    json!({ "oneOf": [
        { "type": "string", "example": "1.5s" },
        { "type": "integer", "description": "milliseconds" }
    ] })
}

fn percent() -> Value {
    json!({ "type": "number", "minimum": 0, "maximum": 100 })
}

fn map_of(value: Value) -> Value {
    json!({ "type": "object", "additionalProperties": value })
}

fn array_of(items: Value) -> Value {
    json!({ "type": "array", "items": items })
}

fn schemas() -> Value {
    let mut all = json!({
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": string(),
                "fields": array_of(json!({ "type": "object", "properties": {
                    "kind": { "type": "string", "nullable": true },
                    "key": { "type": "string", "nullable": true },
                    "path": { "type": "string", "example": "routes[default/split].rules[0].destinations[1].weight" },
                    "message": string()
                }}))
            }
        },
        "WriteResult": {
            "type": "object",
            "properties": {
                "kind": enumeration(&["service", "endpoint", "route", "policy"], "service"),
                "key": string(),
                "outcome": enumeration(&["created", "updated", "unchanged", "deleted"], "created"),
                "revision": { "type": "integer" },
                "ttl": { "type": "string", "description": "Lease length, for endpoints registered with a ttl." }
            }
        },
        "ProxyStatus": {
            "type": "object",
            "properties": {
                "node": string(),
                "namespace": string(),
                "workload": string(),
                "services": array_of(string()),
                "protocol": enumeration(&["sotw", "delta"], "sotw"),
                "connected": { "type": "boolean" },
                "connected_since": { "type": "string", "format": "date-time" },
                "disconnected_at": { "type": "string", "format": "date-time" },
                "revision": { "type": "integer" },
                "in_sync": { "type": "boolean", "description": "Connected, at the current revision, and every type's latest version ACKed." },
                "types": map_of(schema_ref("TypeStatus"))
            }
        },
        "TypeStatus": {
            "type": "object",
            "properties": {
                "version_sent": { "type": "string", "nullable": true },
                "nonce_sent": { "type": "string", "nullable": true },
                "sent_at": { "type": "string", "format": "date-time", "nullable": true },
                "resources": { "type": "integer" },
                "version_acked": { "type": "string", "nullable": true },
                "acked_at": { "type": "string", "format": "date-time", "nullable": true },
                "in_sync": { "type": "boolean" },
                "last_nack": {
                    "type": "object",
                    "nullable": true,
                    "properties": { "version": string(), "reason": string(), "at": { "type": "string", "format": "date-time" } }
                }
            }
        }
    });
    for part in [
        route_schemas(),
        other_resource_schemas(),
        authz_schemas(),
        gateway_schemas(),
    ] {
        if let (Some(all), Value::Object(part)) = (all.as_object_mut(), part) {
            all.extend(part);
        }
    }
    all
}

/// Schemas of the resource types (kept in step with `sane-xds-proto` by
/// the test below).
fn other_resource_schemas() -> Value {
    let protocol = enumeration(&["http", "http2", "grpc", "tcp"], "http");
    json!({
        "Service": object(&["name", "ports"], json!({
            "name": string(),
            "namespace": { "type": "string", "default": "default" },
            "ports": array_of(schema_ref("ServicePort")),
            "hosts": array_of(string()),
            "addresses": array_of(string()),
            "export_to": {
                "type": "array", "items": string(),
                "description": "Namespaces whose proxies may see the service: `*` (the default), `.` (its own) or names."
            }
        })),
        "ServicePort": object(&["port"], json!({
            "name": string(), "port": port(), "protocol": protocol, "target_port": port()
        })),
        "Endpoint": object(&["service", "address"], json!({
            "service": string(),
            "namespace": { "type": "string", "default": "default" },
            "address": { "type": "string", "description": "IP address" },
            "port": port(),
            "ports": map_of(port()),
            "proxy_port": port(),
            "identity": { "type": "string", "description": "spiffe://..." },
            "labels": map_of(string()),
            "weight": { "type": "integer", "default": 1 }
        })),
        "DestinationPolicy": object(&["name", "service"], json!({
            "name": string(),
            "namespace": { "type": "string", "default": "default" },
            "service": string(),
            "load_balancer": enumeration(
                &["ewma", "round_robin", "least_request", "consistent_hash"],
                "ewma"
            ),
            "connect_timeout": duration(),
            "idle_timeout": duration(),
            "circuit_breaker": schema_ref("CircuitBreaker"),
            "outlier_detection": schema_ref("OutlierDetection"),
            "retry_budget": schema_ref("RetryBudget"),
            "hash_header": string(),
            "peer_protocol": enumeration(&["http2", "preserve"], "http2")
        })),
        "CircuitBreaker": object(&[], json!({
            "max_connections": { "type": "integer" },
            "max_pending_requests": { "type": "integer" },
            "max_requests": { "type": "integer" },
            "max_retries": { "type": "integer" }
        })),
        "OutlierDetection": object(&[], json!({
            "consecutive_5xx": { "type": "integer", "default": 5 },
            "consecutive_gateway_errors": { "type": "integer" },
            "base_ejection_time": duration(),
            "max_ejection_time": duration(),
            "max_ejection_percent": { "type": "integer", "default": 10 }
        })),
        "RetryBudget": object(&[], json!({
            "percent": percent(),
            "min_retries_per_second": { "type": "integer", "default": 10 },
            "ttl": duration()
        })),
        "MeshResources": object(&[], json!({
            "listeners": array_of(json!({ "type": "object" })),
            "services": array_of(schema_ref("Service")),
            "endpoints": array_of(schema_ref("Endpoint")),
            "routes": array_of(schema_ref("Route")),
            "policies": array_of(schema_ref("DestinationPolicy")),
            "authorization_policies": array_of(schema_ref("AuthorizationPolicy")),
            "telemetry": array_of(schema_ref("Telemetry")),
            "peer_authentications": array_of(schema_ref("PeerAuthentication")),
            "gateways": array_of(schema_ref("Gateway"))
        })),
        "PeerAuthentication": object(&["name"], json!({
            "name": string(),
            "namespace": { "type": "string", "default": "default", "description": "Namespace of the workloads it applies to; in the root namespace `istio-system` and without a selector, the whole mesh." },
            "selector": {
                "type": "object", "additionalProperties": string(),
                "description": "Labels a workload's sidecar (node.labels) must carry; empty: every workload of the namespace."
            },
            "mode": enumeration(&["default", "strict", "permissive", "disable"], "default"),
            "port_modes": {
                "type": "object",
                "additionalProperties": enumeration(&["default", "strict", "permissive", "disable"], "default"),
                "description": "Modes by workload port (keys are port numbers); only with a selector."
            }
        })),
        "Telemetry": object(&["name"], json!({
            "name": string(),
            "namespace": string(),
            "tracing": schema_ref("TracingConfig"),
            "access_log": schema_ref("AccessLogConfig")
        })),
        "TracingConfig": object(&["endpoint"], json!({
            "endpoint": string(),
            "protocol": { "type": "string", "enum": ["grpc", "http/protobuf"], "default": "grpc" },
            "sampling_ratio": { "type": "number", "minimum": 0, "maximum": 1, "default": 1.0 },
            "max_queue": { "type": "integer", "default": 2048 },
            "service_name": string()
        })),
        "AccessLogConfig": object(&[], json!({
            "path": string(),
            "sampling_ratio": { "type": "number", "minimum": 0, "maximum": 1, "default": 1.0 }
        }))
    })
}

/// Ingress gateway configurations, delivered to the `sane-proxy gateway`s
/// whose node labels carry every `selector` label.
fn gateway_schemas() -> Value {
    json!({
        "Gateway": object(&["name", "selector"], json!({
            "name": string(),
            "namespace": { "type": "string", "default": "default" },
            "selector": {
                "type": "object", "additionalProperties": string(),
                "description": "Node labels a gateway proxy must all carry to be sent this configuration."
            },
            "listeners": array_of(schema_ref("GatewayListener")),
            "hosts": array_of(schema_ref("GatewayHost")),
            "limits": { "type": "object", "description": "Not accepted in a delivered resource: the gateway's bootstrap sets its edge limits." }
        })),
        "GatewayListener": object(&["name", "address"], json!({
            "name": string(),
            "address": { "type": "string", "example": "0.0.0.0:443" },
            "tls": { "type": "boolean", "default": false },
            "redirect_port": port()
        })),
        "GatewayHost": object(&["hostname", "routes"], json!({
            "hostname": { "type": "string", "example": "shop.example.com" },
            "tls": schema_ref("HostTls"),
            "https_redirect": { "type": "boolean", "default": false },
            "routes": array_of(schema_ref("GatewayRoute"))
        })),
        "HostTls": object(&["cert_file", "key_file"], json!({
            "cert_file": { "type": "string", "description": "A file on the gateway's machine: private keys never travel over xDS." },
            "key_file": string(),
            "client_ca_file": string()
        })),
        "GatewayRoute": object(&["service", "port"], json!({
            "matches": array_of(schema_ref("RouteMatch")),
            "service": string(),
            "port": port()
        }))
    })
}

/// Authorization policies (Istio `AuthorizationPolicy` semantics). String
/// values are patterns: `*`, `prefix*`, `*suffix` or exact.
fn authz_schemas() -> Value {
    let patterns = array_of(string());
    json!({
        "AuthorizationPolicy": object(&["name"], json!({
            "name": string(),
            "namespace": { "type": "string", "default": "default" },
            "service": { "type": "string", "description": "The service (of the policy's namespace) whose sidecars enforce the policy; a service or a selector is required." },
            "selector": {
                "type": "object", "additionalProperties": string(),
                "description": "Labels an endpoint must carry for its sidecar to enforce the policy."
            },
            "action": enumeration(&["allow", "deny", "audit"], "allow"),
            "rules": array_of(schema_ref("AuthzRule")),
            "dry_run": { "type": "boolean", "description": "Log and count would-be denials; enforce nothing." }
        })),
        "AuthzRule": object(&[], json!({
            "from": array_of(schema_ref("AuthzSource")),
            "to": array_of(schema_ref("AuthzOperation")),
            "when": array_of(schema_ref("AuthzCondition"))
        })),
        "AuthzSource": object(&[], json!({
            "principals": patterns.clone(),
            "namespaces": patterns.clone(),
            "not_principals": patterns.clone()
        })),
        "AuthzOperation": object(&[], json!({
            "ports": array_of(port()),
            "methods": array_of(string()),
            "paths": patterns.clone(),
            "not_paths": patterns.clone()
        })),
        "AuthzCondition": object(&["header", "values"], json!({
            "header": string(),
            "values": patterns
        }))
    })
}

fn route_schemas() -> Value {
    let match_kind = enumeration(&["exact", "prefix", "regex", "present"], "exact");
    json!({
        "Route": object(&["name", "service", "rules"], json!({
            "name": string(),
            "namespace": { "type": "string", "default": "default" },
            "service": string(),
            "rules": array_of(schema_ref("RouteRule"))
        })),
        "RouteRule": object(&[], json!({
            "matches": array_of(schema_ref("RouteMatch")),
            "destinations": array_of(schema_ref("WeightedDestination")),
            "timeout": duration(),
            "retry": schema_ref("RetryPolicy"),
            "fault": schema_ref("FaultPolicy"),
            "mirror": schema_ref("MirrorPolicy"),
            "request_headers": schema_ref("HeaderOps"),
            "response_headers": schema_ref("HeaderOps"),
            "redirect": schema_ref("Redirect"),
            "rewrite": schema_ref("Rewrite")
        })),
        "Redirect": object(&[], json!({
            "scheme": enumeration(&["", "http", "https"], ""),
            "host": string(),
            "port": port(),
            "path": string(),
            "replace_prefix": string(),
            "with_prefix": string(),
            "status_code": { "type": "integer", "default": 0 }
        })),
        "Rewrite": object(&[], json!({
            "path": string(),
            "replace_prefix": string(),
            "with_prefix": string(),
            "authority": string()
        })),
        "RetryPolicy": object(&[], json!({
            "attempts": { "type": "integer", "default": 2, "maximum": 10 },
            "per_try_timeout": duration(),
            "retry_on": array_of(string()),
            "status_codes": array_of(json!({ "type": "integer" })),
            "base_interval": duration(),
            "max_interval": duration(),
            "retry_non_idempotent": { "type": "boolean" },
            "max_body_bytes": { "type": "integer" }
        })),
        "FaultPolicy": object(&[], json!({
            "delay": schema_ref("FaultDelay"),
            "abort": schema_ref("FaultAbort")
        })),
        "FaultDelay": object(&["fixed_delay"], json!({
            "fixed_delay": duration(),
            "percent": percent()
        })),
        "FaultAbort": object(&[], json!({
            "http_status": { "type": "integer" },
            "grpc_status": string(),
            "percent": percent()
        })),
        "MirrorPolicy": object(&["service"], json!({
            "service": string(),
            "port": port(),
            "percent": percent(),
            "max_body_bytes": { "type": "integer" }
        })),
        "HeaderOps": object(&[], json!({
            "set": map_of(string()),
            "add": map_of(string()),
            "remove": array_of(string())
        })),
        "RouteMatch": object(&[], json!({
            "path": schema_ref("PathMatch"),
            "headers": array_of(schema_ref("HeaderMatch")),
            "method": string(),
            "query_params": array_of(schema_ref("QueryParamMatch"))
        })),
        "QueryParamMatch": object(&["name"], json!({
            "name": string(), "kind": match_kind.clone(), "value": string()
        })),
        "PathMatch": object(&["value"], json!({ "kind": match_kind.clone(), "value": string() })),
        "HeaderMatch": object(&["name"], json!({
            "name": string(), "kind": match_kind, "value": string(), "invert": { "type": "boolean" }
        })),
        "WeightedDestination": object(&["service"], json!({
            "service": string(), "port": port(), "subset": map_of(string()), "weight": { "type": "integer" }
        }))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de::DeserializeOwned;
    use serde::Serialize;

    /// The documented properties of `name` are exactly the fields `T`
    /// accepts: every serialized field is documented, and every documented
    /// property is known to `T` (which rejects unknown fields).
    fn check<T: Default + Serialize + DeserializeOwned>(name: &str) {
        let doc = document();
        let props = doc["components"]["schemas"][name]["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("no schema {name}"));
        let default = serde_json::to_value(T::default()).unwrap();
        for key in default.as_object().unwrap().keys() {
            assert!(props.contains_key(key), "{name}.{key} is not documented");
        }
        for key in props.keys() {
            let err = serde_json::from_value::<T>(json!({ key.as_str(): null }))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                !err.contains("unknown field"),
                "{name}.{key} is documented but unknown: {err}"
            );
        }
    }

    #[test]
    fn schemas_match_the_resource_types() {
        use sane_xds_proto::*;
        check::<Service>("Service");
        check::<ServicePort>("ServicePort");
        check::<Endpoint>("Endpoint");
        check::<Route>("Route");
        check::<RouteRule>("RouteRule");
        check::<RouteMatch>("RouteMatch");
        check::<PathMatch>("PathMatch");
        check::<HeaderMatch>("HeaderMatch");
        check::<QueryParamMatch>("QueryParamMatch");
        check::<Redirect>("Redirect");
        check::<Rewrite>("Rewrite");
        check::<WeightedDestination>("WeightedDestination");
        check::<RetryPolicy>("RetryPolicy");
        check::<FaultPolicy>("FaultPolicy");
        check::<FaultDelay>("FaultDelay");
        check::<FaultAbort>("FaultAbort");
        check::<MirrorPolicy>("MirrorPolicy");
        check::<HeaderOps>("HeaderOps");
        check::<DestinationPolicy>("DestinationPolicy");
        check::<CircuitBreaker>("CircuitBreaker");
        check::<OutlierDetection>("OutlierDetection");
        check::<RetryBudget>("RetryBudget");
        check::<MeshResources>("MeshResources");
        check::<AuthorizationPolicy>("AuthorizationPolicy");
        check::<AuthzRule>("AuthzRule");
        check::<AuthzSource>("AuthzSource");
        check::<AuthzOperation>("AuthzOperation");
        check::<AuthzCondition>("AuthzCondition");
        check::<Telemetry>("Telemetry");
        check::<Gateway>("Gateway");
        check::<GatewayListener>("GatewayListener");
        check::<GatewayHost>("GatewayHost");
        check::<HostTls>("HostTls");
        check::<GatewayRoute>("GatewayRoute");
        check::<TracingConfig>("TracingConfig");
        check::<AccessLogConfig>("AccessLogConfig");
        check::<PeerAuthentication>("PeerAuthentication");
    }

    /// The values an enum of `T` serializes to, in declaration order.
    fn values<T: Serialize + TryFrom<i32>>() -> Vec<Value> {
        (0..64)
            .filter_map(|i| T::try_from(i).ok())
            .map(|v| serde_json::to_value(v).unwrap())
            .collect()
    }

    /// Documented enums (which the Kubernetes CRDs reuse) list exactly the
    /// values the types accept, and their default is the types' default.
    #[test]
    fn enums_match_the_resource_types() {
        use sane_xds_proto::*;
        let doc = document();
        let schemas = &doc["components"]["schemas"];
        for (schema, expected) in [
            (
                &schemas["DestinationPolicy"]["properties"]["load_balancer"],
                values::<LoadBalancer>(),
            ),
            (
                &schemas["PathMatch"]["properties"]["kind"],
                values::<MatchKind>(),
            ),
            (
                &schemas["HeaderMatch"]["properties"]["kind"],
                values::<MatchKind>(),
            ),
            (
                &schemas["ServicePort"]["properties"]["protocol"],
                values::<Protocol>(),
            ),
            (
                &schemas["AuthorizationPolicy"]["properties"]["action"],
                values::<AuthzAction>(),
            ),
            (
                &schemas["PeerAuthentication"]["properties"]["mode"],
                values::<TlsMode>(),
            ),
        ] {
            assert_eq!(schema["enum"], Value::Array(expected.clone()), "{schema}");
            assert_eq!(schema["default"], expected[0], "{schema}");
        }
    }
}
