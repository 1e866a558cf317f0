//! The table of proxies: who is connected, what each was sent, what it ACKed
//! or NACKed and why. xDS streams write it; the HTTP API and metrics read it.
//!
//! A stream registers with [`ProxyStatusTable::connect`] and gets a
//! [`Connection`] that marks the proxy disconnected when dropped. There is
//! one row per stream, and a stream only ever writes its own row: a second
//! stream with the same node id (the proxy reconnecting before the old
//! stream is noticed gone) gets a row of its own, and the node's
//! disconnected rows go away when a new stream of it connects. The xDS
//! server only lets a token open the node ids of its own workload, so no
//! stream can stand for another workload's proxy here.
//!
//! Disconnected rows stay listed (marked so) for the retention period
//! (`--proxy-retention`, default 5 minutes), and at most
//! [`MAX_DISCONNECTED_ROWS`] of them are kept (the oldest go first). The
//! table also measures convergence: from a published batch of writes to the
//! moment every connected proxy has ACKed everything it was sent at that
//! revision.

use crate::metrics::{Metrics, TypeLabels};
use crate::resource::Resource;
use crate::xds::protocol::{Event, Sent};
use crate::xds::snapshot::EncodedResource;
use crate::xds::view::{NodeSpec, ProxyView};
use crate::xds::XdsType;
use sane_xds_proto::{MeshResources, TypeUrl};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// Most disconnected rows kept, whatever the retention period.
pub const MAX_DISCONNECTED_ROWS: usize = 1024;

/// Shared status of every proxy that connected recently.
#[derive(Debug)]
pub struct ProxyStatusTable {
    inner: Mutex<Table>,
    retention: Duration,
    metrics: Metrics,
}

#[derive(Debug, Default)]
struct Table {
    /// One row per stream, by connection number.
    proxies: BTreeMap<u64, ProxyRecord>,
    next_conn: u64,
    /// Published revisions not yet ACKed by every connected proxy, with the
    /// time of their batch's first write.
    pending: BTreeMap<u64, Instant>,
    /// How many connected rows stand at each `synced_revision`: the
    /// minimum is what every connected proxy reached, read in O(log n) at
    /// each ACK instead of a scan of every row (which cost rows × events
    /// under the lock: 5 000 streams spent seconds here per push).
    synced: BTreeMap<u64, usize>,
    /// Rows not disconnected.
    connected: usize,
    /// Rows disconnected (kept for the retention period).
    disconnected: usize,
}

#[derive(Debug)]
struct ProxyRecord {
    spec: NodeSpec,
    /// Services whose endpoints point at the proxy.
    serves: Vec<String>,
    protocol: &'static str,
    connected_since: SystemTime,
    /// Set once the stream is gone: wall time for display, tokio time for
    /// retention.
    disconnected: Option<(SystemTime, Instant)>,
    view_revision: u64,
    /// Latest revision at which every type's sent version was ACKed.
    synced_revision: u64,
    types: HashMap<XdsType, TypeRecord>,
}

#[derive(Debug, Default)]
struct TypeRecord {
    sent: Option<SentRecord>,
    acked: Option<(String, SystemTime)>,
    nack: Option<NackStatus>,
}

#[derive(Debug)]
struct SentRecord {
    version: String,
    nonce: String,
    at: SystemTime,
    resources: Arc<[Arc<EncodedResource>]>,
}

/// A stream's handle on its row; marks it disconnected on drop.
#[derive(Debug)]
pub struct Connection {
    table: Arc<ProxyStatusTable>,
    conn: u64,
}

/// One proxy, as `GET /api/v1/proxies` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct ProxyStatus {
    /// `node.id`.
    pub node: String,
    /// The stream's number, unique in this process: tells two streams of
    /// one node apart.
    pub stream: u64,
    /// The node's namespace.
    pub namespace: String,
    /// The node's workload, if it said.
    pub workload: String,
    /// `node.user_agent_name` and version (e.g. `gRPC Python 1.78.0`);
    /// empty if the node did not say.
    pub user_agent: String,
    /// Services it listed (qualified), plus `*` if it asked for all.
    pub services: Vec<String>,
    /// Services whose endpoints point at it (whose authorization policies
    /// it enforces).
    pub serves: Vec<String>,
    /// `sotw` or `delta`.
    pub protocol: &'static str,
    /// True while its stream is open.
    pub connected: bool,
    /// When its current (or last) stream opened, RFC 3339.
    pub connected_since: String,
    /// When its stream closed, RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disconnected_at: Option<String>,
    /// Registry revision of the last view computed for it.
    pub revision: u64,
    /// Connected, its view is at the current registry revision, and it ACKed
    /// the latest version sent of every type it requested.
    pub in_sync: bool,
    /// Per type, by message name (`Service`, `Endpoint`, ...).
    pub types: BTreeMap<&'static str, TypeStatus>,
}

/// One type of one proxy.
#[derive(Clone, Debug, Serialize)]
pub struct TypeStatus {
    /// Version of the latest response.
    pub version_sent: Option<String>,
    /// Nonce of the latest response.
    pub nonce_sent: Option<String>,
    /// When it was sent, RFC 3339.
    pub sent_at: Option<String>,
    /// Number of resources the proxy holds after applying it.
    pub resources: usize,
    /// Latest version the proxy ACKed.
    pub version_acked: Option<String>,
    /// When, RFC 3339.
    pub acked_at: Option<String>,
    /// The latest version sent was ACKed.
    pub in_sync: bool,
    /// The latest NACK, if any (kept after later ACKs, as history).
    pub last_nack: Option<NackStatus>,
}

/// A rejected response.
#[derive(Clone, Debug, Serialize)]
pub struct NackStatus {
    /// The version rejected.
    pub version: String,
    /// The proxy's `error_detail.message`.
    pub reason: String,
    /// When, RFC 3339.
    pub at: String,
}

/// What a proxy was last sent, as `GET /api/v1/proxies/{id}/config` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct ProxyConfig {
    /// `node.id`.
    pub node: String,
    /// Registry revision of its view.
    pub revision: u64,
    /// Version last sent, per type.
    pub versions: BTreeMap<&'static str, String>,
    /// Every resource it holds (if it applied what it was sent).
    pub resources: MeshResources,
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

// === impl ProxyStatusTable ===

impl ProxyStatusTable {
    /// A table keeping disconnected proxies for `retention`.
    pub fn new(retention: Duration, metrics: Metrics) -> ProxyStatusTable {
        ProxyStatusTable {
            inner: Mutex::default(),
            retention,
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a new stream of `spec.id` with its first `view`: a row of
    /// its own. The node's disconnected rows (earlier streams) go away.
    pub fn connect(
        self: &Arc<Self>,
        spec: &NodeSpec,
        protocol: &'static str,
        view: &ProxyView,
    ) -> Connection {
        let mut t = self.lock();
        self.prune(&mut t);
        if t.disconnected > 0 {
            let before = t.proxies.len();
            t.proxies
                .retain(|_, r| r.spec.id != spec.id || r.disconnected.is_none());
            t.disconnected -= before - t.proxies.len();
        }
        t.next_conn += 1;
        let conn = t.next_conn;
        t.proxies.insert(
            conn,
            ProxyRecord {
                spec: spec.clone(),
                serves: view.serves.iter().cloned().collect(),
                protocol,
                connected_since: SystemTime::now(),
                disconnected: None,
                view_revision: view.revision,
                synced_revision: 0,
                types: HashMap::new(),
            },
        );
        t.connected += 1;
        t.add_synced(0);
        self.update_connected(&t);
        Connection {
            table: self.clone(),
            conn,
        }
    }

    /// A batch of writes up to `revision`, first written at `first_write`,
    /// was published to the streams.
    pub fn note_published(&self, revision: u64, first_write: Instant) {
        self.metrics.set_revision(revision);
        let mut t = self.lock();
        t.pending.entry(revision).or_insert(first_write);
        self.check_convergence(&mut t);
    }

    /// Every stream's row, by node id (then oldest stream first).
    /// `current_revision` is the registry's.
    pub fn list(&self, current_revision: u64) -> Vec<ProxyStatus> {
        let mut t = self.lock();
        self.prune(&mut t);
        let mut rows: Vec<ProxyStatus> = t
            .proxies
            .iter()
            .map(|(conn, r)| r.status(*conn, current_revision))
            .collect();
        rows.sort_by(|a, b| (&a.node, a.stream).cmp(&(&b.node, b.stream)));
        rows
    }

    /// One proxy: its newest connected stream, else its newest stream.
    pub fn get(&self, node: &str, current_revision: u64) -> Option<ProxyStatus> {
        let t = self.lock();
        let (conn, r) = Self::row_of(&t, node)?;
        Some(r.status(conn, current_revision))
    }

    fn row_of<'t>(t: &'t Table, node: &str) -> Option<(u64, &'t ProxyRecord)> {
        t.proxies
            .iter()
            .filter(|(_, r)| r.spec.id == node)
            .max_by_key(|(conn, r)| (r.disconnected.is_none(), **conn))
            .map(|(conn, r)| (*conn, r))
    }

    /// What one proxy was last sent (its row as [`Self::get`] picks it).
    pub fn config(&self, node: &str) -> Option<ProxyConfig> {
        let t = self.lock();
        let (_, r) = Self::row_of(&t, node)?;
        let mut mesh = MeshResources::default();
        let mut versions = BTreeMap::new();
        for type_url in TypeUrl::ALL {
            let Some(sent) = r.types.get(&type_url.into()).and_then(|t| t.sent.as_ref()) else {
                continue;
            };
            versions.insert(XdsType::from(type_url).short_name(), sent.version.clone());
            for res in sent.resources.iter() {
                Resource::push_into(&res.resource, &mut mesh);
            }
        }
        Some(ProxyConfig {
            node: node.to_string(),
            revision: r.view_revision,
            versions,
            resources: mesh,
        })
    }

    fn prune(&self, t: &mut Table) {
        if t.disconnected == 0 {
            return;
        }
        let now = Instant::now();
        t.proxies.retain(|_, r| match r.disconnected {
            Some((_, at)) => now.duration_since(at) < self.retention,
            None => true,
        });
        let mut gone: Vec<(Instant, u64)> = t
            .proxies
            .iter()
            .filter_map(|(conn, r)| r.disconnected.map(|(_, at)| (at, *conn)))
            .collect();
        if gone.len() > MAX_DISCONNECTED_ROWS {
            gone.sort();
            for (_, conn) in &gone[..gone.len() - MAX_DISCONNECTED_ROWS] {
                t.proxies.remove(conn);
            }
        }
        t.disconnected = gone.len().min(MAX_DISCONNECTED_ROWS);
    }

    fn update_connected(&self, t: &Table) {
        self.metrics.set_connected(t.connected);
    }

    /// Observes convergence of every pending revision that all connected
    /// proxies have reached.
    fn check_convergence(&self, t: &mut Table) {
        if t.pending.is_empty() {
            return;
        }
        let Some(&min) = t.synced.keys().next() else {
            // Nobody to converge: nothing to measure.
            t.pending.clear();
            return;
        };
        let now = Instant::now();
        while let Some(entry) = t.pending.first_entry() {
            if *entry.key() > min {
                break;
            }
            let first_write = entry.remove();
            self.metrics
                .converged(now.saturating_duration_since(first_write));
        }
    }

    /// Applies `f` to the row of stream `conn`, if it is still listed.
    fn with_row(&self, conn: u64, f: impl FnOnce(&mut ProxyRecord)) {
        let mut t = self.lock();
        let Some(r) = t.proxies.get_mut(&conn) else {
            return;
        };
        f(r);
        let before = r.synced_revision;
        if r.is_synced() {
            r.synced_revision = r.view_revision;
        }
        let (after, connected) = (r.synced_revision, r.disconnected.is_none());
        if connected && after != before {
            t.remove_synced(before);
            t.add_synced(after);
        }
        self.check_convergence(&mut t);
    }
}

// === impl Table ===

impl Table {
    fn add_synced(&mut self, revision: u64) {
        *self.synced.entry(revision).or_default() += 1;
    }

    fn remove_synced(&mut self, revision: u64) {
        if let Some(n) = self.synced.get_mut(&revision) {
            *n -= 1;
            if *n == 0 {
                self.synced.remove(&revision);
            }
        }
    }
}

// === impl ProxyRecord ===

impl ProxyRecord {
    fn is_synced(&self) -> bool {
        self.types.values().all(|t| match (&t.sent, &t.acked) {
            (Some(s), Some((a, _))) => s.version == *a,
            (None, _) => true,
            (Some(_), None) => false,
        })
    }

    fn status(&self, stream: u64, current_revision: u64) -> ProxyStatus {
        let connected = self.disconnected.is_none();
        let mut services: Vec<String> = self.spec.services.iter().cloned().collect();
        if self.spec.all_services {
            services.push("*".into());
        }
        let types = XdsType::ALL
            .into_iter()
            .filter_map(|t| Some((t.short_name(), self.types.get(&t)?.status())))
            .collect();
        ProxyStatus {
            node: self.spec.id.clone(),
            stream,
            namespace: self.spec.namespace.clone(),
            workload: self.spec.workload.clone(),
            user_agent: self.spec.user_agent.clone(),
            services,
            serves: self.serves.clone(),
            protocol: self.protocol,
            connected,
            connected_since: rfc3339(self.connected_since),
            disconnected_at: self.disconnected.map(|(at, _)| rfc3339(at)),
            revision: self.view_revision,
            in_sync: connected && self.view_revision >= current_revision && self.is_synced(),
            types,
        }
    }
}

// === impl TypeRecord ===

impl TypeRecord {
    fn status(&self) -> TypeStatus {
        let sent = self.sent.as_ref();
        let acked = self.acked.as_ref();
        TypeStatus {
            version_sent: sent.map(|s| s.version.clone()),
            nonce_sent: sent.map(|s| s.nonce.clone()),
            sent_at: sent.map(|s| rfc3339(s.at)),
            resources: sent.map_or(0, |s| s.resources.len()),
            version_acked: acked.map(|(v, _)| v.clone()),
            acked_at: acked.map(|(_, at)| rfc3339(*at)),
            in_sync: match (sent, acked) {
                (Some(s), Some((a, _))) => s.version == *a,
                _ => false,
            },
            last_nack: self.nack.clone(),
        }
    }
}

// === impl Connection ===

impl Connection {
    /// The stream computed `view`.
    pub fn record_view(&self, view: &ProxyView) {
        self.table.with_row(self.conn, |r| {
            r.view_revision = view.revision;
            if r.serves.iter().ne(view.serves.iter()) {
                r.serves = view.serves.iter().cloned().collect();
            }
        });
    }

    /// The stream sent a response.
    pub fn record_sent(&self, sent: &Sent) {
        self.table.with_row(self.conn, |r| {
            r.types.entry(sent.type_url).or_default().sent = Some(SentRecord {
                version: sent.version.clone(),
                nonce: sent.nonce.clone(),
                at: SystemTime::now(),
                resources: sent.resources.clone(),
            });
        });
    }

    /// The client told us something.
    pub fn record_event(&self, event: &Event) {
        match event {
            Event::Ack { type_url, version } => {
                self.table.with_row(self.conn, |r| {
                    r.types.entry(*type_url).or_default().acked =
                        Some((version.clone(), SystemTime::now()));
                });
            }
            Event::Nack {
                type_url,
                version,
                reason,
            } => {
                self.table.metrics.nacked(TypeLabels {
                    type_name: type_url.short_name(),
                });
                self.table.with_row(self.conn, |r| {
                    r.types.entry(*type_url).or_default().nack = Some(NackStatus {
                        version: version.clone(),
                        reason: reason.clone(),
                        at: rfc3339(SystemTime::now()),
                    });
                });
            }
            Event::Stale { .. } | Event::UnknownType { .. } => {}
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let mut t = self.table.lock();
        let node = t.proxies.get(&self.conn).map(|r| r.spec.id.clone());
        let superseded = node.is_some_and(|node| {
            t.proxies
                .iter()
                .any(|(c, r)| *c != self.conn && r.spec.id == node && r.disconnected.is_none())
        });
        let synced = t
            .proxies
            .get(&self.conn)
            .filter(|r| r.disconnected.is_none())
            .map(|r| r.synced_revision);
        if superseded {
            // The node has a newer stream: this row only adds noise.
            t.proxies.remove(&self.conn);
        } else if let Some(r) = t.proxies.get_mut(&self.conn) {
            r.disconnected = Some((SystemTime::now(), Instant::now()));
            t.disconnected += 1;
        }
        if let Some(rev) = synced {
            t.connected -= 1;
            t.remove_synced(rev);
        }
        self.table.prune(&mut t);
        self.table.update_connected(&t);
        self.table.check_convergence(&mut t);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(type_url: TypeUrl, version: &str) -> Sent {
        Sent {
            type_url: type_url.into(),
            version: version.into(),
            nonce: "1-1".into(),
            resources: Arc::new([]),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn sync_nack_and_retention() {
        let table = Arc::new(ProxyStatusTable::new(
            Duration::from_secs(60),
            Metrics::unregistered(),
        ));
        let conn = table.connect(
            &NodeSpec::new("p1", "shop", &[]),
            "sotw",
            &ProxyView::empty(4),
        );
        conn.record_sent(&sent(TypeUrl::Service, "v1"));
        assert!(!table.list(4)[0].in_sync);
        conn.record_event(&Event::Ack {
            type_url: TypeUrl::Service.into(),
            version: "v1".into(),
        });
        assert!(table.list(4)[0].in_sync);
        // A newer registry revision: not in sync until the view catches up.
        assert!(!table.list(5)[0].in_sync);

        conn.record_sent(&sent(TypeUrl::Service, "v2"));
        conn.record_event(&Event::Nack {
            type_url: TypeUrl::Service.into(),
            version: "v2".into(),
            reason: "bad".into(),
        });
        let s = &table.list(4)[0];
        assert!(!s.in_sync);
        let t = &s.types["Service"];
        assert_eq!(t.version_acked.as_deref(), Some("v1"));
        assert_eq!(t.last_nack.as_ref().unwrap().reason, "bad");

        drop(conn);
        let s = &table.list(4)[0];
        assert!(!s.connected && !s.in_sync && s.disconnected_at.is_some());
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(table.list(4).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_reconnect_owns_the_row() {
        let table = Arc::new(ProxyStatusTable::new(
            Duration::from_secs(60),
            Metrics::unregistered(),
        ));
        let spec = NodeSpec::new("p1", "shop", &[]);
        let view = ProxyView::empty(1);
        let old = table.connect(&spec, "sotw", &view);
        let new = table.connect(&spec, "delta", &view);
        // Two live streams of one node: a row each, each writing its own.
        assert_eq!(table.list(1).len(), 2);
        new.record_sent(&sent(TypeUrl::Service, "v1"));
        old.record_event(&Event::Nack {
            type_url: TypeUrl::Service.into(),
            version: "v1".into(),
            reason: "forged".into(),
        });
        let rows = table.list(1);
        assert!(rows[0].types["Service"].last_nack.is_some());
        assert!(rows[1].types["Service"].last_nack.is_none());
        assert_eq!(rows[1].types["Service"].version_sent.as_deref(), Some("v1"));
        // The old stream ends: its row goes, the live one is untouched.
        drop(old);
        let rows = table.list(1);
        assert_eq!(rows.len(), 1);
        assert!(rows[0].connected);
        assert_eq!(rows[0].protocol, "delta");
        assert_eq!(table.get("p1", 1).unwrap().stream, rows[0].stream);
        // The last stream ends: listed as disconnected, until a new one.
        drop(new);
        assert!(!table.list(1)[0].connected);
        let again = table.connect(&spec, "sotw", &view);
        let rows = table.list(1);
        assert_eq!(rows.len(), 1);
        assert!(rows[0].connected);
        drop(again);
    }

    #[tokio::test(start_paused = true)]
    async fn disconnected_rows_are_bounded() {
        let table = Arc::new(ProxyStatusTable::new(
            Duration::from_secs(3600),
            Metrics::unregistered(),
        ));
        let view = ProxyView::empty(1);
        for i in 0..MAX_DISCONNECTED_ROWS + 10 {
            let spec = NodeSpec::new(&format!("p~{i}"), "shop", &[]);
            drop(table.connect(&spec, "sotw", &view));
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        let rows = table.list(1);
        assert_eq!(rows.len(), MAX_DISCONNECTED_ROWS);
        assert!(
            rows.iter().all(|r| r.node != "p~0"),
            "the oldest went first"
        );
    }
}
