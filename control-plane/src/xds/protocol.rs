//! What the two xDS state machines (state of the world and delta) share:
//! the events they report, the pushes they make, and nonces.

use super::client_input::shown;
use super::snapshot::EncodedResource;
use super::type_url::XdsType;
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
        type_url: XdsType,
        /// The version it applied.
        version: String,
    },
    /// The client rejected the response with the latest nonce.
    Nack {
        /// The type.
        type_url: XdsType,
        /// The version it rejected.
        version: String,
        /// `error_detail.message`.
        reason: String,
    },
    /// A request answering an older response; ignored (state of the world) or
    /// used only for its subscription changes (delta).
    Stale {
        /// The type.
        type_url: XdsType,
        /// The nonce it carried.
        nonce: String,
    },
    /// A type URL this server does not serve; the first request of it is
    /// answered with an empty response, later ones are ignored.
    UnknownType {
        /// The URL.
        type_url: String,
    },
}

/// One response the state machine decided to send.
#[derive(Clone, Debug)]
pub struct Sent {
    /// The type.
    pub type_url: XdsType,
    /// `version_info` / `system_version_info`: the version of the whole set
    /// the client holds after applying it.
    pub version: String,
    /// The response nonce.
    pub nonce: String,
    /// Every resource the client holds after applying it (for status pages),
    /// not only the ones in this response.
    pub resources: Arc<[Arc<EncodedResource>]>,
}

/// The result of feeding one input to a state machine.
#[derive(Debug)]
pub struct Step<R> {
    /// What the input told us.
    pub events: Vec<Event>,
    /// Responses to send, in order.
    pub pushes: Vec<(Sent, R)>,
    /// Empty responses to types this server does not serve: sent after the
    /// pushes, recorded nowhere.
    pub untracked: Vec<R>,
    /// Types the client already holds in their current version (a state of
    /// the world client resuming on a new stream, e.g. after failing over
    /// to another replica): nothing is sent, and the status records them as
    /// sent and ACKed.
    pub resumed: Vec<Sent>,
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
            untracked: Vec::new(),
            resumed: Vec::new(),
        }
    }
}

impl<R> Step<R> {
    /// A step reporting one event.
    pub fn event(event: Event) -> Self {
        Step {
            events: vec![event],
            pushes: Vec::new(),
            untracked: Vec::new(),
            resumed: Vec::new(),
        }
    }
}

/// Unknown type URLs a stream gets an empty answer for; requests for more
/// are only logged, so a client cannot grow a stream's state without bound.
pub const MAX_UNKNOWN_TYPES: usize = 16;

/// Longest type URL answered or logged in full; a longer one is logged cut
/// and never answered.
pub const MAX_TYPE_URL_CHARS: usize = 256;

/// Unknown type URLs one stream has answered.
#[derive(Debug, Default)]
pub struct UnknownTypes {
    answered: std::collections::HashSet<String>,
}

// === impl UnknownTypes ===

impl UnknownTypes {
    /// The event for a request of unknown type `url` with nonce `nonce`, and
    /// whether to answer it (empty): only its first request, only for the
    /// first [`MAX_UNKNOWN_TYPES`] types, and only reasonable URLs.
    pub fn on_request(&mut self, url: &str, nonce: &str) -> (Event, bool) {
        let event = Event::UnknownType {
            type_url: shown(url, MAX_TYPE_URL_CHARS),
        };
        let answer = nonce.is_empty()
            && url.len() <= MAX_TYPE_URL_CHARS
            && self.answered.len() < MAX_UNKNOWN_TYPES
            && self.answered.insert(url.to_string());
        (event, answer)
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
