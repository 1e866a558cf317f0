//! What the two xDS state machines (state of the world and delta) share:
//! the events they report, the pushes they make, and nonces.

use super::snapshot::EncodedResource;
use sane_xds_proto::TypeUrl;
use std::sync::Arc;

/// Something a client request told us, for status and metrics. Strings
/// that come from the client are bounded and escaped
/// ([`super::client_input::shown`]) by the state machine that makes the
/// event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The client applied the response with the latest nonce.
    Ack {
        /// The type.
        type_url: TypeUrl,
        /// The version it applied.
        version: String,
    },
    /// The client rejected the response with the latest nonce.
    Nack {
        /// The type.
        type_url: TypeUrl,
        /// The version it rejected.
        version: String,
        /// `error_detail.message`.
        reason: String,
    },
    /// A request answering an older response; ignored (state of the world) or
    /// used only for its subscription changes (delta).
    Stale {
        /// The type.
        type_url: TypeUrl,
        /// The nonce it carried.
        nonce: String,
    },
    /// A type URL this server does not serve; the request is ignored.
    UnknownType {
        /// The URL.
        type_url: String,
    },
}

/// One response the state machine decided to send.
#[derive(Clone, Debug)]
pub struct Sent {
    /// The type.
    pub type_url: TypeUrl,
    /// `version_info` / `system_version_info`: the version of the whole set
    /// the client holds after applying it.
    pub version: String,
    /// The response nonce.
    pub nonce: String,
    /// Every resource the client holds after applying it (for status pages),
    /// not only the ones in this response.
    pub resources: Vec<Arc<EncodedResource>>,
}

/// The result of feeding one input to a state machine.
#[derive(Debug)]
pub struct Step<R> {
    /// What the input told us.
    pub events: Vec<Event>,
    /// Responses to send, in order.
    pub pushes: Vec<(Sent, R)>,
}

/// Fresh nonces for one stream: `<stream>-<n>`, unique within the process.
#[derive(Debug)]
pub struct Nonces {
    stream: u64,
    next: u64,
}

// === impl Step ===

impl<R> Default for Step<R> {
    fn default() -> Self {
        Step {
            events: Vec::new(),
            pushes: Vec::new(),
        }
    }
}

impl<R> Step<R> {
    /// A step reporting one event.
    pub fn event(event: Event) -> Self {
        Step {
            events: vec![event],
            pushes: Vec::new(),
        }
    }
}

// === impl Nonces ===

impl Nonces {
    /// Nonces for stream `stream`.
    pub fn new(stream: u64) -> Nonces {
        Nonces { stream, next: 1 }
    }

    /// The next nonce.
    pub fn next_nonce(&mut self) -> String {
        let n = self.next;
        self.next += 1;
        format!("{}-{n}", self.stream)
    }
}
