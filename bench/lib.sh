# Shell functions the bench scripts share (sourced, not run): waiting for a
# process to report its address or answer, and the two sidecars' bootstraps
# of the client → sidecar A → mTLS → sidecar B → backend topology.
# Messages name the script that sourced this file.

# Polls `log` for `listening name=<name> addr=…` and prints the address.
listening() {
    local log=$1 name=$2 deadline=$((SECONDS + 120))
    while ((SECONDS < deadline)); do
        local addr
        addr=$(sed -n "s/^listening name=$name addr=//p" "$log" | head -n1)
        if [[ -n "$addr" ]]; then echo "$addr"; return 0; fi
        sleep 0.2
    done
    echo "${0##*/}: no 'listening name=$name' in $log:" >&2
    cat "$log" >&2
    return 1
}

# Polls until `url` answers 200 `ok` with Host: backend.
until_ok() {
    local deadline=$((SECONDS + 120))
    while ((SECONDS < deadline)); do
        [[ "$(curl -s -m 5 -H 'Host: backend' "$1" || true)" == ok ]] && return 0
        sleep 0.2
    done
    echo "${0##*/}: $1 never answered 200 ok" >&2
    return 1
}

# Prints sidecar B's bootstrap: inbound to the backend on `backend_port`,
# identity bench-b from the control plane's CA at CP_XDS, then `extra`
# (more top-level resource lines, e.g. a telemetry list).
sane_b_yaml() { # backend_port [extra]
    cat <<YAML
node: { id: bench-b, namespace: default, workload: bench-b }
admin: { address: "127.0.0.1:0" }
drain_timeout: 1s
identity:
  trust_domain: cluster.local
  service_account: bench-b
  ca_address: "http://$CP_XDS"
  token_file: "$WORK/tokens/bench-b.token"
resources:
  listeners:
    - name: inbound
      direction: inbound
      address: "127.0.0.1:0"
      workload_ports:
        - { port: $1, protocol: http }
${2:-}
YAML
}

# Prints sidecar A's bootstrap: an outbound listener, service `backend`
# (target `backend_port`) reached through sidecar B's inbound port
# `b_port` over mTLS, identity bench-a, then `extra`.
sane_a_yaml() { # backend_port b_port [extra]
    cat <<YAML
node: { id: bench-a, namespace: default, workload: bench-a }
admin: { address: "127.0.0.1:0" }
drain_timeout: 1s
identity:
  trust_domain: cluster.local
  service_account: bench-a
  ca_address: "http://$CP_XDS"
  token_file: "$WORK/tokens/bench-a.token"
resources:
  listeners:
    - { name: outbound, direction: outbound, protocol: http, address: "127.0.0.1:0" }
  services:
    - name: backend
      ports:
        - { name: http, port: 80, target_port: $1, protocol: http }
  endpoints:
    - { service: backend, address: 127.0.0.1, proxy_port: $2, identity: "spiffe://cluster.local/ns/default/sa/bench-b" }
${3:-}
YAML
}
