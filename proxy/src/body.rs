//! The one body type that crosses module boundaries.

use bytes::Bytes;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full};

/// A boxed error, as carried by bodies from either side.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The error a [`Body`] yields: whatever failed while streaming it. A named
/// type rather than a bare `Box<dyn Error>` keeps async code free of
/// higher-ranked lifetime trouble.
#[derive(Debug)]
pub struct BodyError(pub BoxError);

/// Request and response body everywhere in the proxy: streamed, never
/// buffered whole, trailers included.
pub type Body = UnsyncBoxBody<Bytes, BodyError>;

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for BodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// A body holding `data`.
pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An empty body.
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// Boxes any body whose error converts into [`BoxError`].
pub fn boxed<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(|e| BodyError(e.into())).boxed_unsync()
}
