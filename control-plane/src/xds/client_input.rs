//! Limits on what an xDS client sends, and the one way to show it.
//!
//! Every client-supplied string the control plane keeps (node id and
//! metadata, NACK messages, ACKed versions) is bounded here, so a client
//! cannot grow the control plane's memory or the `/api/v1/proxies` answer,
//! and is shown through [`shown`], so a newline or a terminal escape in it
//! cannot forge a log line or repaint an operator's terminal.

/// Largest gRPC message the xDS server decodes (a whole `DiscoveryRequest`
/// or `DeltaDiscoveryRequest`, node included): 1 MiB. Larger requests end
/// the stream with `RESOURCE_EXHAUSTED` before they are read.
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;

/// Longest `node.id` accepted (bytes).
pub const MAX_NODE_ID_BYTES: usize = 253;

/// Longest `node.metadata.workload` / `node.cluster` accepted (bytes).
pub const MAX_WORKLOAD_BYTES: usize = 253;

/// Most entries in `node.metadata.services`.
pub const MAX_LISTED_SERVICES: usize = 256;

/// Most entries in `node.metadata.inbound`.
pub const MAX_INBOUND_ADDRESSES: usize = 16;

/// Most entries in `node.metadata.labels`.
pub const MAX_LABELS: usize = 64;

/// Longest key or value of `node.metadata.labels` (bytes: a Kubernetes
/// label key with its prefix is at most 253 + 1 + 63).
pub const MAX_LABEL_BYTES: usize = 317;

/// Longest `node.user_agent_name` plus version kept (characters; the rest
/// is cut): it is only shown.
pub const MAX_USER_AGENT_CHARS: usize = 128;

/// Longest NACK message kept and logged (characters); the rest is cut.
pub const MAX_NACK_REASON_CHARS: usize = 1024;

/// Longest version or nonce from a client kept and logged (characters).
pub const MAX_TOKEN_CHARS: usize = 64;

/// `s` cut to `max` characters (saying how much was cut) with every
/// control character escaped (`\n`, `\u{1b}`), safe to log and to show.
pub fn shown(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max) + 16);
    let mut kept = 0;
    for (n, c) in s.chars().enumerate() {
        if n == max {
            break;
        }
        kept += c.len_utf8();
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    if kept < s.len() {
        out.push_str(&format!("… ({} more bytes cut)", s.len() - kept));
    }
    out
}

/// True for the characters of a node id or workload name: ASCII letters,
/// digits, `.`, `-`, `_` and `~`.
pub fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '~')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_long_text_is_cut() {
        let forged = "bad\n2024-01-01T00:00:00Z  INFO all in sync \u{1b}[2J";
        let s = shown(forged, 100);
        assert!(!s.contains('\n') && !s.contains('\u{1b}'), "{s}");
        assert!(s.contains("bad\\n2024") && s.contains("\\u{1b}[2J"), "{s}");
        let long = "x".repeat(5000);
        let s = shown(&long, 10);
        assert_eq!(s, "xxxxxxxxxx… (4990 more bytes cut)");
        assert_eq!(shown("é", 1), "é");
    }
}
