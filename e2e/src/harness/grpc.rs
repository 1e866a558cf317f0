//! A client for the echo app's `sane.echo.Echo` service, written the way
//! tonic's generated clients are (`tonic::client::Grpc` + the prost codec).
//!
//! [`EchoClient::via`] addresses the service by name (`http://echo:9090`) but
//! dials a fixed address, the client sidecar's outbound listener.

use super::http::Dialer;
use crate::echo::proto::{EchoReply, EchoRequest, BIDI_PATH, UNARY_PATH};
use futures::Stream;
use http::uri::PathAndQuery;
use std::net::SocketAddr;
use tonic::transport::{Channel, Endpoint};
use tonic::{Response, Status, Streaming};

/// A `sane.echo.Echo` client on a lazily connected channel.
#[derive(Clone, Debug)]
pub struct EchoClient {
    grpc: tonic::client::Grpc<Channel>,
}

// === impl EchoClient ===

impl EchoClient {
    /// A client of the echo app listening at `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        Self::via(addr, &format!("http://{addr}"))
            .expect("an http:// URI of a socket address is valid")
    }

    /// A client that sends to `origin` (e.g. `http://echo:9090`, which sets
    /// `:authority`) over connections to `dial`.
    pub fn via(dial: SocketAddr, origin: &str) -> Result<Self, String> {
        let endpoint = Endpoint::from_shared(origin.to_string())
            .map_err(|e| format!("invalid origin {origin:?}: {e}"))?;
        let channel = endpoint.connect_with_connector_lazy(Dialer::to(dial));
        Ok(Self {
            grpc: tonic::client::Grpc::new(channel),
        })
    }

    /// Calls `Unary`.
    pub async fn unary(&mut self, req: EchoRequest) -> Result<Response<EchoReply>, Status> {
        self.ready().await?;
        let codec = tonic_prost::ProstCodec::<EchoRequest, EchoReply>::default();
        self.grpc
            .unary(
                tonic::Request::new(req),
                PathAndQuery::from_static(UNARY_PATH),
                codec,
            )
            .await
    }

    /// Calls `Bidi`: `reqs` are sent as the stream yields them, and replies
    /// arrive on the returned stream as the server sends them.
    pub async fn bidi<S>(&mut self, reqs: S) -> Result<Response<Streaming<EchoReply>>, Status>
    where
        S: Stream<Item = EchoRequest> + Send + 'static,
    {
        self.ready().await?;
        let codec = tonic_prost::ProstCodec::<EchoRequest, EchoReply>::default();
        self.grpc
            .streaming(
                tonic::Request::new(reqs),
                PathAndQuery::from_static(BIDI_PATH),
                codec,
            )
            .await
    }

    async fn ready(&mut self) -> Result<(), Status> {
        self.grpc
            .ready()
            .await
            .map_err(|e| Status::unavailable(format!("channel not ready: {e}")))
    }
}
