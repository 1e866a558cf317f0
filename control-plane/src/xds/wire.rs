//! What streams send, encoded once and shared: a view's resources of one
//! type ([`TypeWire`], cached per view: the list the status table keeps,
//! and its encoding as the `resources` field of a state-of-the-world
//! `DiscoveryResponse`), and the response a stream sends
//! ([`SotwResponse`]: its own version, type and nonce around the shared
//! bytes; `server::AdsServer` sends it).
//!
//! With a fleet of sidecars holding the same view, a change used to be
//! copied (every `Any`) and encoded once per stream: 5 000 copies of
//! every resource of the changed type. Now it is encoded once per view,
//! and each stream adds a few bytes. Protobuf concatenates fields, so the
//! bytes on the wire are exactly a `DiscoveryResponse`'s: clients see no
//! difference.
//!
//! [`ResponseBody`] is the HTTP/2 body of a stream's responses (both
//! protocols): each message leaves as the frames [`GrpcMessage`] gives —
//! the shared bytes of a [`SotwResponse`] by reference, never copied per
//! stream. (tonic's encoder copies every message into one buffer per
//! stream and keeps that buffer, grown to the largest message the stream
//! ever sent, for the stream's life: 5 000 streams held 5 000 copies of the
//! largest type's encoding.)

use super::snapshot::EncodedResource;
use super::type_url::XdsType;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryResponse, DiscoveryResponse};
use envoy_types::pb::google::protobuf::Any;
use futures::Stream;
use hyper::body::{Body, Frame};
use prost::bytes::{Buf, BufMut, Bytes};
use prost::encoding::{self, DecodeContext, WireType};
use prost::{DecodeError, Message};
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use tonic::Status;

/// The gRPC message prefix: a compression flag and a 4-byte length.
const GRPC_PREFIX: usize = 5;

/// `DiscoveryResponse.resources`' field number.
const RESOURCES_FIELD: u32 = 2;

/// One type's resources of a view (or of a subscription), ready to send.
#[derive(Debug)]
pub struct TypeWire {
    /// The version of the set.
    pub version: String,
    /// The resources, for the status table (shared by every stream).
    pub resources: Arc<[Arc<EncodedResource>]>,
    /// Their encoding as `DiscoveryResponse.resources`, built on first use.
    sotw: std::sync::OnceLock<Bytes>,
}

/// The [`TypeWire`]s of one view's wildcard subscriptions, built on first use.
#[derive(Debug, Default)]
pub struct WireCache {
    types: Mutex<HashMap<XdsType, Arc<TypeWire>>>,
}

/// A response as the frames of one gRPC message (uncompressed).
pub trait GrpcMessage {
    /// The message's frames: the gRPC prefix and what is the stream's own,
    /// then what is shared with other streams (sent as it is), if anything.
    fn grpc_frames(&self) -> Result<(Bytes, Option<Bytes>), Status>;
}

/// The body of a stream's responses: each message as its
/// [`GrpcMessage::grpc_frames`], then the trailers with the stream's
/// status (`OK` when the responses end, else the error that ended them).
#[derive(Debug)]
pub struct ResponseBody<S> {
    responses: S,
    /// The shared part of the message whose head was just sent.
    next: Option<Bytes>,
    done: bool,
}

/// A state-of-the-world response: `version_info`, `type_url` and `nonce`
/// of its own, the resources shared.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SotwResponse {
    /// `version_info`.
    pub version_info: String,
    /// `type_url`.
    pub type_url: String,
    /// `nonce`.
    pub nonce: String,
    /// The resources (none for an empty response).
    pub body: Option<Arc<TypeWire>>,
}

// === impl TypeWire ===

impl TypeWire {
    /// `resources` (of version `version`), not yet encoded.
    pub fn new(version: String, resources: Arc<[Arc<EncodedResource>]>) -> TypeWire {
        TypeWire {
            version,
            resources,
            sotw: std::sync::OnceLock::new(),
        }
    }

    /// The encoded `resources` field.
    fn sotw(&self) -> &Bytes {
        self.sotw.get_or_init(|| {
            let len: usize = self
                .resources
                .iter()
                .map(|r| encoding::message::encoded_len(RESOURCES_FIELD, &r.any))
                .sum();
            let mut buf = Vec::with_capacity(len);
            for r in self.resources.iter() {
                encoding::message::encode(RESOURCES_FIELD, &r.any, &mut buf);
            }
            Bytes::from(buf)
        })
    }
}

impl PartialEq for TypeWire {
    fn eq(&self, other: &Self) -> bool {
        self.version == other.version && self.resources == other.resources
    }
}

// === impl WireCache ===

impl Clone for WireCache {
    fn clone(&self) -> Self {
        let types = self.types.lock().unwrap_or_else(|e| e.into_inner());
        WireCache {
            types: Mutex::new(types.clone()),
        }
    }
}

impl WireCache {
    /// The entry of type `t`, built by `build` if it is the first asked for.
    pub fn get_or_build(&self, t: XdsType, build: impl FnOnce() -> TypeWire) -> Arc<TypeWire> {
        let mut types = self.types.lock().unwrap_or_else(|e| e.into_inner());
        types.entry(t).or_insert_with(|| Arc::new(build())).clone()
    }
}

// === impl SotwResponse ===

impl SotwResponse {
    fn encode_own(&self, buf: &mut impl BufMut) {
        if !self.version_info.is_empty() {
            encoding::string::encode(1, &self.version_info, buf);
        }
        if !self.type_url.is_empty() {
            encoding::string::encode(4, &self.type_url, buf);
        }
        if !self.nonce.is_empty() {
            encoding::string::encode(5, &self.nonce, buf);
        }
    }

    /// The resources, decoded (for tests and tools; streams never decode).
    pub fn resources(&self) -> Vec<Any> {
        self.message().resources
    }

    /// The response as the client decodes it.
    pub fn message(&self) -> DiscoveryResponse {
        let bytes = self.encode_to_vec();
        DiscoveryResponse::decode(bytes.as_slice()).unwrap_or_default()
    }
}

impl Message for SotwResponse {
    /// The stream's own fields first, then the shared resources (fields
    /// may come in any order; this one lets [`GrpcMessage::grpc_frames`]
    /// send the shared bytes as they are, after the rest).
    fn encode_raw(&self, buf: &mut impl BufMut) {
        self.encode_own(buf);
        if let Some(body) = &self.body {
            buf.put_slice(body.sotw());
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        // Only ever sent: what a client decodes is a `DiscoveryResponse`.
        encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        let string = |tag, s: &String| {
            if s.is_empty() {
                0
            } else {
                encoding::string::encoded_len(tag, s)
            }
        };
        string(1, &self.version_info)
            + self.body.as_ref().map_or(0, |b| b.sotw().len())
            + string(4, &self.type_url)
            + string(5, &self.nonce)
    }

    fn clear(&mut self) {
        *self = SotwResponse::default();
    }
}

impl GrpcMessage for SotwResponse {
    fn grpc_frames(&self) -> Result<(Bytes, Option<Bytes>), Status> {
        let shared = self.body.as_ref().map(|b| b.sotw().clone());
        let own = self.encoded_len() - shared.as_ref().map_or(0, Bytes::len);
        let mut head = Vec::with_capacity(GRPC_PREFIX + own);
        put_prefix(&mut head, self.encoded_len())?;
        self.encode_own(&mut head);
        Ok((Bytes::from(head), shared.filter(|b| !b.is_empty())))
    }
}

impl GrpcMessage for DeltaDiscoveryResponse {
    /// Encoded into a buffer of its exact size, freed once sent.
    fn grpc_frames(&self) -> Result<(Bytes, Option<Bytes>), Status> {
        let len = self.encoded_len();
        let mut buf = Vec::with_capacity(GRPC_PREFIX + len);
        put_prefix(&mut buf, len)?;
        self.encode_raw(&mut buf);
        Ok((Bytes::from(buf), None))
    }
}

/// The gRPC prefix of an uncompressed message of `len` bytes.
fn put_prefix(buf: &mut Vec<u8>, len: usize) -> Result<(), Status> {
    let len = u32::try_from(len).map_err(|_| {
        Status::resource_exhausted(format!("an xDS response of {len} bytes is over 4 GiB"))
    })?;
    buf.put_u8(0);
    buf.put_u32(len);
    Ok(())
}

// === impl ResponseBody ===

impl<S> ResponseBody<S> {
    /// The body of `responses`.
    pub fn new(responses: S) -> ResponseBody<S> {
        ResponseBody {
            responses,
            next: None,
            done: false,
        }
    }

    /// The trailers carrying `status`, which ends the body.
    fn end(&mut self, status: Status) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        self.done = true;
        let mut trailers = http::HeaderMap::new();
        Poll::Ready(Some(match status.add_header(&mut trailers) {
            Ok(()) => Ok(Frame::trailers(trailers)),
            Err(e) => Err(e),
        }))
    }
}

impl<S, R> Body for ResponseBody<S>
where
    S: Stream<Item = Result<R, Status>> + Unpin,
    R: GrpcMessage,
{
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        if let Some(shared) = this.next.take() {
            return Poll::Ready(Some(Ok(Frame::data(shared))));
        }
        if this.done {
            return Poll::Ready(None);
        }
        match ready!(Pin::new(&mut this.responses).poll_next(cx)) {
            Some(Ok(response)) => match response.grpc_frames() {
                Ok((head, shared)) => {
                    this.next = shared;
                    Poll::Ready(Some(Ok(Frame::data(head))))
                }
                Err(status) => this.end(status),
            },
            Some(Err(status)) => this.end(status),
            None => this.end(Status::ok("")),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.next.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::test_support::view_of;
    use sane_xds_proto::TypeUrl;

    #[test]
    fn a_shared_response_is_a_discovery_response_on_the_wire() {
        let view = view_of("shop");
        let t = XdsType::from(TypeUrl::Service);
        let resources: Arc<[Arc<EncodedResource>]> = view.of_type(t).values().cloned().collect();
        let wire = Arc::new(TypeWire::new("v1".into(), resources.clone()));
        let resp = SotwResponse {
            version_info: "v1".into(),
            type_url: t.as_str().into(),
            nonce: "7-1".into(),
            body: Some(wire),
        };
        let bytes = resp.encode_to_vec();
        assert_eq!(bytes.len(), resp.encoded_len());
        let expected = DiscoveryResponse {
            version_info: "v1".into(),
            resources: resources.iter().map(|r| r.any.clone()).collect(),
            type_url: t.as_str().into(),
            nonce: "7-1".into(),
            ..Default::default()
        };
        assert_eq!(
            DiscoveryResponse::decode(bytes.as_slice()).unwrap(),
            expected
        );
        let empty = SotwResponse {
            type_url: "x".into(),
            nonce: "1-1".into(),
            ..Default::default()
        };
        assert_eq!(empty.message().resources.len(), 0);
        assert_eq!(empty.message().nonce, "1-1");
    }

    /// Reads every frame of `body`: the data frames, then the trailers.
    async fn frames<S, R>(mut body: ResponseBody<S>) -> (Vec<Bytes>, http::HeaderMap)
    where
        S: Stream<Item = Result<R, Status>> + Unpin,
        R: GrpcMessage,
    {
        use http_body_util::BodyExt;
        let mut data = Vec::new();
        loop {
            let frame = body.frame().await.expect("trailers end the body").unwrap();
            match frame.into_data() {
                Ok(d) => data.push(d),
                Err(frame) => {
                    let trailers = frame.into_trailers().unwrap();
                    assert!(body.is_end_stream());
                    assert!(body.frame().await.is_none());
                    return (data, trailers);
                }
            }
        }
    }

    /// The messages of a gRPC byte stream, by their prefixes.
    fn messages(bytes: &[u8]) -> Vec<&[u8]> {
        let mut out = Vec::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            assert_eq!(rest[0], 0, "uncompressed");
            let len = u32::from_be_bytes(rest[1..5].try_into().unwrap()) as usize;
            out.push(&rest[5..5 + len]);
            rest = &rest[5 + len..];
        }
        out
    }

    #[tokio::test]
    async fn a_stream_sends_the_shared_resources_by_reference_and_ends_with_its_status() {
        let view = view_of("shop");
        let t = XdsType::from(TypeUrl::Endpoint);
        let resources: Arc<[Arc<EncodedResource>]> = view.of_type(t).values().cloned().collect();
        assert!(!resources.is_empty());
        let wire = Arc::new(TypeWire::new("v1".into(), resources));
        let response = |nonce: &str| SotwResponse {
            version_info: "v1".into(),
            type_url: t.as_str().into(),
            nonce: nonce.into(),
            body: Some(wire.clone()),
        };
        let empty = SotwResponse {
            type_url: t.as_str().into(),
            nonce: "3".into(),
            ..Default::default()
        };
        let stream = futures::stream::iter([
            Ok(response("1")),
            Ok(response("2")),
            Ok(empty.clone()),
            Err(Status::unauthenticated("token revoked")),
        ]);
        let (data, trailers) = frames(ResponseBody::new(stream)).await;
        // Each response's resources are the view's bytes themselves.
        let shared: Vec<&Bytes> = data.iter().filter(|d| d.len() > 64).collect();
        assert_eq!(shared.len(), 2);
        for d in shared {
            assert_eq!(d.as_ptr(), wire.sotw().as_ptr(), "sent by reference");
        }
        let bytes: Vec<u8> = data.concat();
        let got: Vec<DiscoveryResponse> = messages(&bytes)
            .into_iter()
            .map(|m| DiscoveryResponse::decode(m).unwrap())
            .collect();
        assert_eq!(
            got,
            [
                response("1").message(),
                response("2").message(),
                empty.message()
            ]
        );
        assert_eq!(got[0].resources.len(), wire.resources.len());
        assert_eq!(trailers["grpc-status"], "16");
        assert_eq!(trailers["grpc-message"], "token%20revoked");
    }

    #[tokio::test]
    async fn a_delta_stream_sends_each_response_whole_and_ends_ok() {
        use envoy_types::pb::envoy::service::discovery::v3::Resource;
        let response = DeltaDiscoveryResponse {
            system_version_info: "7".into(),
            type_url: TypeUrl::Route.as_str().into(),
            nonce: "1".into(),
            resources: vec![Resource {
                name: "shop/web".into(),
                version: "3".into(),
                ..Default::default()
            }],
            removed_resources: vec!["shop/old".into()],
            ..Default::default()
        };
        let stream = futures::stream::iter([Ok(response.clone())]);
        let (data, trailers) = frames(ResponseBody::new(stream)).await;
        assert_eq!(data.len(), 1, "one frame, no shared part");
        let bytes = data.concat();
        let got = messages(&bytes);
        assert_eq!(got.len(), 1);
        assert_eq!(DeltaDiscoveryResponse::decode(got[0]).unwrap(), response);
        assert_eq!(trailers["grpc-status"], "0");
    }
}
