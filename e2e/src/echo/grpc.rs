//! The gRPC port: `sane.echo.Echo` served over prior-knowledge HTTP/2.
//!
//! The service is wired by hand the way tonic's generated code does it (a path
//! match, then `tonic::server::Grpc` with the prost codec), so the build needs
//! no protoc. The standard `grpc.health.v1.Health` service answers
//! `SERVING` (probed through the sidecar's health port). Unknown methods
//! answer `UNIMPLEMENTED`.

use super::proto::{EchoReply, EchoRequest, BIDI_PATH, FAIL_MESSAGE, TRAILER, UNARY_PATH};
use http::{HeaderValue, Request, Response};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use tokio::net::TcpListener;
use tonic::server::{Grpc, StreamingService, UnaryService};
use tonic::{Code, Status, Streaming};

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;
type ReplyStream = Pin<Box<dyn futures::Stream<Item = Result<EchoReply, Status>> + Send>>;

/// Accepts connections until the task is aborted.
pub(super) async fn serve(listener: TcpListener, name: Arc<str>) {
    // The reporter starts with the whole server (`""`) SERVING.
    let (_reporter, health) = tonic_health::server::health_reporter();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "grpc accept failed");
                continue;
            }
        };
        let name = name.clone();
        let health = health.clone();
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |req| route(name.clone(), health.clone(), req));
            let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "grpc connection ended with an error");
            }
        });
    }
}

async fn route<H>(
    name: Arc<str>,
    health: H,
    req: Request<Incoming>,
) -> Result<Response<tonic::body::Body>, Infallible>
where
    H: tower::Service<
        Request<Incoming>,
        Response = Response<tonic::body::Body>,
        Error = Infallible,
    >,
{
    if req.uri().path().starts_with("/grpc.health.v1.Health/") {
        return tower::ServiceExt::oneshot(health, req).await;
    }
    let mut grpc = Grpc::new(tonic_prost::ProstCodec::<EchoReply, EchoRequest>::default());
    let rsp = match req.uri().path() {
        UNARY_PATH => {
            let rsp = grpc.unary(UnaryEcho(name.clone()), req).await;
            with_trailer(rsp, &name)
        }
        BIDI_PATH => grpc.streaming(BidiEcho(name), req).await,
        path => {
            Status::unimplemented(format!("{path} is not a method of sane.echo.Echo")).into_http()
        }
    };
    Ok(rsp)
}

/// `Unary`: echoes the message, or fails with the code the request asks for.
struct UnaryEcho(Arc<str>);

/// `Bidi`: echoes each message as it arrives; a request with a `fail_code`
/// ends the stream with that status.
struct BidiEcho(Arc<str>);

// === impl UnaryEcho ===

impl UnaryService<EchoRequest> for UnaryEcho {
    type Response = EchoReply;
    type Future = BoxFuture<Result<tonic::Response<EchoReply>, Status>>;

    fn call(&mut self, req: tonic::Request<EchoRequest>) -> Self::Future {
        let name = self.0.clone();
        Box::pin(async move {
            let req = req.into_inner();
            if req.fail_code != 0 {
                return Err(Status::new(Code::from_i32(req.fail_code), FAIL_MESSAGE));
            }
            Ok(tonic::Response::new(EchoReply {
                message: req.message,
                from: name.to_string(),
            }))
        })
    }
}

// === impl BidiEcho ===

impl StreamingService<EchoRequest> for BidiEcho {
    type Response = EchoReply;
    type ResponseStream = ReplyStream;
    type Future = BoxFuture<Result<tonic::Response<ReplyStream>, Status>>;

    fn call(&mut self, req: tonic::Request<Streaming<EchoRequest>>) -> Self::Future {
        let name = self.0.clone();
        let replies = futures::stream::unfold(Some(req.into_inner()), move |input| {
            let name = name.clone();
            async move {
                let mut input = input?;
                match input.message().await {
                    Ok(Some(req)) if req.fail_code != 0 => {
                        let status = Status::new(Code::from_i32(req.fail_code), FAIL_MESSAGE);
                        Some((Err(status), None))
                    }
                    Ok(Some(req)) => {
                        let reply = EchoReply {
                            message: req.message,
                            from: name.to_string(),
                        };
                        Some((Ok(reply), Some(input)))
                    }
                    Ok(None) => None,
                    Err(status) => Some((Err(status), None)),
                }
            }
        });
        let replies: ReplyStream = Box::pin(replies);
        Box::pin(async move { Ok(tonic::Response::new(replies)) })
    }
}

/// Adds `x-echo-trailer: NAME` to the trailers of an OK response. tonic only
/// writes `grpc-status`/`grpc-message` there, so the body is wrapped.
fn with_trailer(rsp: Response<tonic::body::Body>, name: &str) -> Response<tonic::body::Body> {
    let Ok(value) = HeaderValue::from_str(name) else {
        return rsp;
    };
    let (parts, body) = rsp.into_parts();
    let body = body.map_frame(move |frame| match frame.into_trailers() {
        Ok(mut trailers) => {
            if trailers.get("grpc-status").is_some_and(|s| s == "0") {
                trailers.insert(TRAILER, value.clone());
            }
            Frame::trailers(trailers)
        }
        Err(frame) => frame,
    });
    Response::from_parts(parts, tonic::body::Body::new(body))
}
