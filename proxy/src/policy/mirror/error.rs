//! Why a request was not mirrored. Mirroring never fails the original
//! request, so this is not an error the client sees: it labels metrics and
//! logs.

/// A mirror copy that was not sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Skipped {
    /// The body is (or grew) larger than the policy's `max_body_bytes`, or
    /// failed while streaming.
    #[error("the request body is too large to copy")]
    BodyTooLarge,
    /// Too many mirrored requests are still in flight.
    #[error("too many mirrored requests in flight")]
    Busy,
}

// === impl Skipped ===

impl Skipped {
    /// The metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Skipped::BodyTooLarge => "skipped_body",
            Skipped::Busy => "skipped_busy",
        }
    }
}
