//! The `sane.echo.Echo` gRPC messages, written by hand (no protoc in the build).
//!
//! The server (`echo::grpc`) and the test client (`harness::grpc`) share these
//! definitions, so the two can never disagree on a tag.

/// The request of both methods.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoRequest {
    /// Text to echo back.
    #[prost(string, tag = "1")]
    pub message: String,
    /// When non-zero, the server fails with this gRPC code instead of echoing.
    #[prost(int32, tag = "2")]
    pub fail_code: i32,
}

/// The reply of both methods.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoReply {
    /// The request's message.
    #[prost(string, tag = "1")]
    pub message: String,
    /// The `--name` of the echo instance that answered.
    #[prost(string, tag = "2")]
    pub from: String,
}

/// The fully-qualified service name.
pub const SERVICE: &str = "sane.echo.Echo";
/// Path of the unary method.
pub const UNARY_PATH: &str = "/sane.echo.Echo/Unary";
/// Path of the bidirectional streaming method.
pub const BIDI_PATH: &str = "/sane.echo.Echo/Bidi";
/// The custom trailer set on OK unary responses; its value is the instance name.
pub const TRAILER: &str = "x-echo-trailer";
/// The message of a status the client asked for with `fail_code`.
pub const FAIL_MESSAGE: &str = "failing as asked by the client";

// === impl EchoRequest ===

impl EchoRequest {
    /// A request that echoes `message`.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            fail_code: 0,
        }
    }

    /// A request that makes the server fail with `code`.
    pub fn failing(code: tonic::Code) -> Self {
        Self {
            message: String::new(),
            fail_code: code as i32,
        }
    }
}
