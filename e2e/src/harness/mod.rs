//! The end-to-end test harness: real binaries, real sockets, no sleeps.
//!
//! * [`bins`] builds `sane-proxy` and `sane-echo` once per test process.
//! * [`Proc`] runs a binary and reads its `listening name=… addr=…` lines.
//! * [`Mesh`] / [`TwoHop`] start echo apps and sidecars from typed configs.
//! * [`ControlPlane`] runs `sane-control-plane` (TLS, its root in
//!   `<data-dir>/root-cert.pem`); [`ApiClient`] and [`Sanectl`] talk to it
//!   over HTTPS ([`https`]) and through the CLI.
//! * [`http`], [`EchoClient`] talk to them; [`eventually`] waits for a
//!   condition with a deadline and is the only way tests poll.
//! * [`GrpcioClient`] is a proxyless gRPC client (grpcio, from PyPI, in a
//!   virtualenv `scripts/grpcio-test-deps.sh` makes) reading its config
//!   from the control plane over xDS.
//! * [`OtlpReceiver`] receives the spans proxies export (OTLP/gRPC).
//! * [`Prometheus`] runs a real Prometheus server scraping sidecars.
//! * [`browser::Browser`] drives headless Chromium over DevTools.
//! * [`Curl`] is the outside client of the gateway tests (TLS, SNI,
//!   `--resolve`).
//! * [`PodPair`] builds two network namespaces ("pods") joined by a veth
//!   pair, for transparent interception with real iptables rules;
//!   [`Pod::block_on`] runs test code inside one.
//! * [`EtcdCluster`] runs real etcd members on loopback (replicated
//!   control planes).
//! * [`Load`] sends requests with deadlines and checksums and counts the
//!   outcomes; [`proc_stats`] samples RSS and fds from `/proc` (chaos, soak).

mod app;
mod binaries;
pub mod browser;
mod control_plane;
mod control_plane_client;
mod curl;
mod deps;
mod etcd;
mod eventually;
mod grpc;
mod grpcio;
pub mod http;
pub mod https;
mod load;
mod mesh;
mod netns;
mod otlp;
pub mod proc_stats;
mod process;
mod prometheus;
mod sidecar;
mod two_hop;

pub use app::{echo_service, EchoAddrs, EchoApp, GRPC_PORT, HTTP_PORT, TCP_PORT};
pub use binaries::{
    bin, bins, bins_for, echo_bin, prefer_binaries_only, use_prebuilt, workspace_root, Bins,
    BuildMode, PACKAGES, PREBUILT_NAMES,
};
pub use control_plane::{ApiHttp, ControlPlane, TEST_API_TOKEN};
pub use control_plane_client::{proxy_row, xds_bootstrap, xds_node_id, ApiClient, CliRun, Sanectl};
pub use curl::{gateway_deps_script, Curl, CurlReply, CurlRequest};
pub use etcd::{etcd_deps_script, etcd_or_skip, EtcdCluster, EtcdTls};
pub use eventually::{eventually, eventually_blocking, within, EVENTUALLY_STEP};
pub use grpc::EchoClient;
pub use grpcio::{grpcio_deps_script, grpcio_python_or_skip, CallCounts, GrpcioClient};
pub use load::{payload, EchoRequests, Load, LoadReport, Outcome, BODY_ABORTED, NO_RESPONSE};
pub use mesh::{Mesh, MeshBuilder, CLIENT, INBOUND, OUTBOUND};
pub use netns::{deps_script, Pod, PodPair, Ran};
pub use otlp::{serve_traces, OtlpReceiver, ReceivedSpan};
pub use process::{isolate_children_from_ctrl_c, Proc, Signal};
pub use prometheus::{prometheus_deps_script, prometheus_or_skip, Prometheus};
pub use sidecar::{metric_value, write_bootstrap, write_config_text, Sidecar, READY_DEADLINE};
pub use two_hop::TwoHop;
