//! [`OtlpReceiver`]: an OTLP/gRPC trace receiver the test starts on
//! `127.0.0.1:0`, built on the collector service definitions of the
//! `opentelemetry-proto` crate (the same protobufs an OpenTelemetry
//! Collector serves), so proxies export to it exactly as to a collector.

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;

/// Serves the OTLP/gRPC trace service `svc` on every connection `listener`
/// accepts (plaintext HTTP/2), forever.
pub async fn serve_traces<T: TraceService + Clone>(listener: TcpListener, svc: T) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let svc = TowerToHyperService::new(TraceServiceServer::new(svc.clone()));
        tokio::spawn(async move {
            let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc);
            let _ = conn.await;
        });
    }
}

/// One received span, flattened.
#[derive(Clone, Debug, PartialEq)]
pub struct ReceivedSpan {
    /// `service.name` of the exporting resource.
    pub service: String,
    /// Span name.
    pub name: String,
    /// OTLP span kind (2 server, 3 client).
    pub kind: i32,
    /// Hex trace id.
    pub trace_id: String,
    /// Hex span id.
    pub span_id: String,
    /// Hex parent span id, empty for a root span.
    pub parent_span_id: String,
    /// Attributes as text.
    pub attributes: HashMap<String, String>,
}

/// A running receiver; stops when dropped.
#[derive(Debug)]
pub struct OtlpReceiver {
    /// Where it listens (gRPC, plaintext HTTP/2).
    pub addr: SocketAddr,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone, Debug, Default)]
struct Collect(Arc<Mutex<Vec<ReceivedSpan>>>);

// === impl OtlpReceiver ===

impl OtlpReceiver {
    /// Binds `127.0.0.1:0` and serves until dropped.
    pub async fn start() -> OtlpReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let collect = Collect::default();
        let spans = collect.0.clone();
        let task = tokio::spawn(serve_traces(listener, collect));
        OtlpReceiver { addr, spans, task }
    }

    /// The URL a proxy exports to.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().expect("not poisoned").clone()
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn text(kv: &KeyValue) -> String {
    match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

#[tonic::async_trait]
impl TraceService for Collect {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut out = Vec::new();
        for rs in req.into_inner().resource_spans {
            let service = (rs.resource.iter())
                .flat_map(|r| r.attributes.iter())
                .find(|kv| kv.key == "service.name")
                .map(text)
                .unwrap_or_default();
            for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                out.push(ReceivedSpan {
                    service: service.clone(),
                    name: span.name,
                    kind: span.kind,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    attributes: span
                        .attributes
                        .iter()
                        .map(|kv| (kv.key.clone(), text(kv)))
                        .collect(),
                });
            }
        }
        self.0.lock().expect("not poisoned").extend(out);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}
