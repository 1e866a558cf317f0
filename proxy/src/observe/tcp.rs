//! The access-log line of a proxied TCP connection.
//!
//! [`TcpLog`] is started when the proxy takes a connection it will splice
//! (before the upstream is picked or dialled) and finished exactly once:
//! with the byte counts when the splice ends ([`TcpLog::closed`]), or with
//! the response flag of the failure that closed it unforwarded
//! ([`TcpLog::failed`], e.g. `UF` connection failure, `UH` no healthy
//! endpoint). The line goes through the same sampled, bounded queue as the
//! HTTP lines; nothing is built when the access log is off or the
//! connection is not sampled. The Istio TCP metrics stay where the splice
//! is (they are recorded for every connection).

use crate::access_log::AccessLog;
use crate::stack::StackContext;
use crate::trace::Active;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

/// One TCP connection's access-log line, in the making.
#[derive(Debug)]
pub(crate) struct TcpLog {
    active: Arc<Active>,
    direction: &'static str,
    service: String,
    upstream_host: String,
    source_principal: String,
    destination_principal: String,
    start: Instant,
    wall: SystemTime,
}

/// The byte counts of a finished splice, from the client's side.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct TcpBytes {
    /// Bytes read from the client (and sent upstream).
    pub(crate) from_client: u64,
    /// Bytes written to the client (read from the upstream).
    pub(crate) to_client: u64,
}

impl From<crate::protocol::opaque::Transferred> for TcpBytes {
    fn from(t: crate::protocol::opaque::Transferred) -> Self {
        Self {
            from_client: t.sent,
            to_client: t.received,
        }
    }
}

// === impl TcpLog ===

impl TcpLog {
    /// Starts the line of a connection accepted now. `inbound` is the
    /// side; `service` the destination service (`name.namespace` or an
    /// Istio host); `peer` the caller's identity proved over mutual TLS
    /// (inbound only).
    pub(crate) fn start(
        ctx: &StackContext,
        inbound: bool,
        service: &str,
        peer: Option<&str>,
    ) -> Self {
        let snapshot = ctx.config.load();
        let active = ctx.tracer.active(&snapshot.telemetry);
        drop(snapshot);
        let own = (ctx.identity.current()).map(|m| m.identity.identity().to_string());
        let (source_principal, destination_principal) = if inbound {
            (peer.map(str::to_string), own)
        } else {
            (own, None)
        };
        Self {
            active,
            direction: if inbound { "inbound" } else { "outbound" },
            service: service.to_string(),
            upstream_host: String::new(),
            source_principal: source_principal.unwrap_or_else(|| "unknown".into()),
            destination_principal: destination_principal.unwrap_or_else(|| "unknown".into()),
            start: Instant::now(),
            wall: SystemTime::now(),
        }
    }

    /// The upstream chosen, and (outbound) the identity it must prove over
    /// mutual TLS: the connection only opens when it does.
    pub(crate) fn upstream(&mut self, addr: SocketAddr, verified: Option<&str>) {
        self.upstream_host = addr.to_string();
        if let Some(id) = verified.filter(|id| !id.is_empty()) {
            self.destination_principal = id.to_string();
        }
    }

    /// The splice ended normally (both sides closed, or one reset).
    pub(crate) fn closed(self, bytes: TcpBytes) {
        self.finish("-", bytes);
    }

    /// The connection was closed without forwarding, for `flag`.
    pub(crate) fn failed(self, flag: &str) {
        self.finish(flag, TcpBytes::default());
    }

    fn finish(self, flags: &str, bytes: TcpBytes) {
        let line = self.line(flags, bytes);
        self.active.log(|| line);
    }

    fn line(&self, flags: &str, bytes: TcpBytes) -> AccessLog {
        AccessLog {
            start_time: humantime::format_rfc3339_millis(self.wall).to_string(),
            direction: self.direction,
            protocol: "TCP".into(),
            response_flags: flags.to_string(),
            duration_ms: self.start.elapsed().as_secs_f64() * 1000.0,
            bytes_received: bytes.from_client,
            bytes_sent: bytes.to_client,
            upstream_service: self.service.clone(),
            upstream_host: self.upstream_host.clone(),
            source_principal: self.source_principal.clone(),
            destination_principal: self.destination_principal.clone(),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::TelemetrySettings;

    fn log(inbound: bool, peer: Option<&str>) -> TcpLog {
        let tracer = crate::trace::Tracer::new(&prometheus::Registry::new()).unwrap();
        let active = tracer.active(&Arc::new(TelemetrySettings::default()));
        TcpLog {
            active,
            direction: if inbound { "inbound" } else { "outbound" },
            service: "db.default".into(),
            upstream_host: String::new(),
            source_principal: peer.unwrap_or("unknown").into(),
            destination_principal: "unknown".into(),
            start: Instant::now(),
            wall: SystemTime::now(),
        }
    }

    #[test]
    fn a_closed_connection_logs_bytes_from_the_clients_side_and_its_upstream() {
        let mut l = log(false, None);
        l.upstream(
            "127.0.0.1:5432".parse().unwrap(),
            Some("spiffe://cluster.local/ns/default/sa/db"),
        );
        let line = l.line(
            "-",
            TcpBytes {
                from_client: 10,
                to_client: 20,
            },
        );
        assert_eq!(line.protocol, "TCP");
        assert_eq!(line.direction, "outbound");
        assert_eq!((line.bytes_received, line.bytes_sent), (10, 20));
        assert_eq!(line.upstream_host, "127.0.0.1:5432");
        assert_eq!(line.upstream_service, "db.default");
        assert_eq!(
            line.destination_principal,
            "spiffe://cluster.local/ns/default/sa/db"
        );
        assert_eq!(line.response_flags, "-");
        assert_eq!(line.status, 0);
        let json = serde_json::to_value(&line).unwrap();
        assert_eq!(json["upstream_host"], "127.0.0.1:5432");
        assert!(json["start_time"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn an_unverified_upstream_keeps_the_destination_unknown() {
        let mut l = log(true, Some("spiffe://cluster.local/ns/default/sa/web"));
        l.upstream("127.0.0.1:1".parse().unwrap(), Some(""));
        let line = l.line("UF", TcpBytes::default());
        assert_eq!(line.destination_principal, "unknown");
        assert_eq!(
            line.source_principal,
            "spiffe://cluster.local/ns/default/sa/web"
        );
        assert_eq!(line.response_flags, "UF");
    }
}
