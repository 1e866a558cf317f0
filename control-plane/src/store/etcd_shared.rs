//! What replicas share through etcd beside the registry:
//! - workload tokens, under `<prefix>/tokens/<sha256 of the token>` (the
//!   JSON record of [`crate::ca::tokens`], never the token): a token issued
//!   by one replica is accepted by all, a revocation enforced by all;
//! - proxy status, under `<prefix>/status/<replica>`: each replica publishes
//!   the rows of the proxies connected to it, on a lease of its own
//!   ([`STATUS_LEASE_TTL`]), and `GET /api/v1/proxies` on any replica merges
//!   every replica's rows.

use super::etcd::{describe, EtcdStore};
use crate::ca::tokens::{SharedTokenStore, WorkloadTokens};
use crate::error::Error;
use etcd_client::{Client, EventType, GetOptions, PutOptions, WatchOptions};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Lease of a replica's status key: it disappears this long after the
/// replica stops renewing it (10 s).
pub const STATUS_LEASE_TTL: i64 = 10;

/// How often a replica publishes its rows when they changed (500 ms).
pub const STATUS_PUBLISH_INTERVAL: Duration = Duration::from_millis(500);

/// The tokens of `<prefix>/tokens/`.
#[derive(Debug)]
struct EtcdTokens {
    store: Arc<EtcdStore>,
    prefix: String,
}

// === impl EtcdTokens ===

impl SharedTokenStore for EtcdTokens {
    fn name(&self) -> String {
        format!("{} {}", self.store.config().display(), self.prefix)
    }

    fn put(&self, hash: &str, record: Vec<u8>) -> Result<(), String> {
        let mut client = self.store.client();
        let key = format!("{}{hash}", self.prefix);
        self.store
            .block_on(async move { client.put(key, record, None).await })
            .map_err(|e| e.to_string())?
            .map(|_| ())
            .map_err(|e| describe(&e))
    }

    fn delete(&self, hash: &str) -> Result<(), String> {
        let mut client = self.store.client();
        let key = format!("{}{hash}", self.prefix);
        self.store
            .block_on(async move { client.delete(key, None).await })
            .map_err(|e| e.to_string())?
            .map(|_| ())
            .map_err(|e| describe(&e))
    }
}

/// Shares `tokens` through etcd: seeds etcd with the local ones it lacks,
/// takes every token etcd holds, then follows etcd (on the store's runtime)
/// for as long as `tokens` lives.
pub fn share_tokens(store: &Arc<EtcdStore>, tokens: &Arc<WorkloadTokens>) -> Result<(), Error> {
    let prefix = format!("{}/tokens/", store.config().prefix);
    let mut client = store.client();
    let range = prefix.clone();
    let got = store
        .block_on(async move {
            client
                .get(range, Some(GetOptions::new().with_prefix()))
                .await
        })?
        .map_err(|e| store.unavailable(&e))?;
    let revision = got.header().map_or(0, |h| h.revision());
    let mut in_etcd = std::collections::HashSet::new();
    for kv in got.kvs() {
        let key = String::from_utf8_lossy(kv.key());
        let hash = key.trim_start_matches(&prefix).to_string();
        if let Err(error) = tokens.apply_shared(&hash, Some(kv.value())) {
            tracing::warn!(%error, "ignoring a shared token record");
        }
        in_etcd.insert(hash);
    }
    let shared = EtcdTokens {
        store: store.clone(),
        prefix: prefix.clone(),
    };
    for (hash, record) in tokens.records() {
        if !in_etcd.contains(&hash) {
            shared
                .put(&hash, record)
                .map_err(|reason| Error::StoreUnavailable {
                    store: store.config().display(),
                    reason,
                })?;
        }
    }
    tokens.set_shared(Box::new(shared));
    store.spawn(follow_tokens(
        store.client(),
        prefix,
        revision + 1,
        Arc::downgrade(tokens),
    ));
    Ok(())
}

async fn follow_tokens(
    mut client: Client,
    prefix: String,
    mut from: i64,
    tokens: Weak<WorkloadTokens>,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let options = WatchOptions::new().with_prefix().with_start_revision(from);
        let result = async {
            let mut stream = client.watch(prefix.clone(), Some(options)).await?;
            while let Some(msg) = stream.message().await? {
                if msg.compact_revision() > 0 {
                    // Missed history: start over from what is there now
                    // (revocations in between are caught by the re-read).
                    from = 0;
                    return Ok(());
                }
                let Some(tokens) = tokens.upgrade() else {
                    return Ok(());
                };
                for event in msg.events() {
                    let Some(kv) = event.kv() else { continue };
                    from = from.max(kv.mod_revision() + 1);
                    let key = String::from_utf8_lossy(kv.key());
                    let hash = key.trim_start_matches(&prefix);
                    let record = match event.event_type() {
                        EventType::Put => Some(kv.value()),
                        EventType::Delete => None,
                    };
                    if let Err(error) = tokens.apply_shared(hash, record) {
                        tracing::warn!(%error, "ignoring a shared token record");
                    }
                }
                backoff = Duration::from_millis(50);
            }
            Ok::<_, etcd_client::Error>(())
        }
        .await;
        if tokens.strong_count() == 0 {
            return;
        }
        if let Err(e) = result {
            tracing::warn!(reason = %describe(&e), "lost the etcd watch of workload tokens; reconnecting in {backoff:?}");
        }
        if from == 0 {
            let Some(t) = tokens.upgrade() else { return };
            match client
                .get(prefix.clone(), Some(GetOptions::new().with_prefix()))
                .await
            {
                Ok(got) => {
                    let present: std::collections::HashSet<String> = got
                        .kvs()
                        .iter()
                        .map(|kv| {
                            String::from_utf8_lossy(kv.key())
                                .trim_start_matches(&prefix)
                                .to_string()
                        })
                        .collect();
                    for kv in got.kvs() {
                        let key = String::from_utf8_lossy(kv.key());
                        let _ = t.apply_shared(key.trim_start_matches(&prefix), Some(kv.value()));
                    }
                    for (hash, _) in t.records() {
                        if !present.contains(&hash) {
                            let _ = t.apply_shared(&hash, None);
                        }
                    }
                    from = got.header().map_or(0, |h| h.revision()) + 1;
                }
                Err(e) => {
                    tracing::warn!(reason = %describe(&e), "re-reading workload tokens failed")
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Publishes `rows()` (this replica's proxy status, JSON) under
/// `<prefix>/status/<replica>` whenever it changes, on a lease renewed
/// while the replica runs; removes it at `stop`.
pub async fn publish_status(
    store: Arc<EtcdStore>,
    replica: String,
    rows: impl Fn() -> serde_json::Value + Send,
    stop: CancellationToken,
) {
    let key = format!("{}{replica}", store.config().status_prefix());
    let mut client = store.client();
    let mut lease: Option<i64> = None;
    let mut published: Option<Vec<u8>> = None;
    let mut failing = false;
    let mut tick = tokio::time::interval(STATUS_PUBLISH_INTERVAL);
    let mut renew = tokio::time::interval(Duration::from_secs(3));
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = renew.tick() => {
                if let Some(id) = lease {
                    let alive = async {
                        let (mut keeper, mut stream) = client.lease_keep_alive(id).await?;
                        keeper.keep_alive().await?;
                        Ok::<_, etcd_client::Error>(stream.message().await?.is_some_and(|r| r.ttl() > 0))
                    }.await;
                    if !matches!(alive, Ok(true)) {
                        lease = None;
                    }
                }
                continue;
            }
            _ = tick.tick() => {}
        }
        let bytes = serde_json::to_vec(&rows()).unwrap_or_default();
        if lease.is_some() && published.as_deref() == Some(&bytes[..]) {
            continue;
        }
        let result = async {
            let id = match lease {
                Some(id) => id,
                None => client.lease_grant(STATUS_LEASE_TTL, None).await?.id(),
            };
            lease = Some(id);
            client
                .put(
                    key.clone(),
                    bytes.clone(),
                    Some(PutOptions::new().with_lease(id)),
                )
                .await?;
            Ok::<_, etcd_client::Error>(())
        }
        .await;
        match result {
            Ok(()) => {
                if failing {
                    tracing::info!(%key, "publishing proxy status to etcd again");
                }
                failing = false;
                published = Some(bytes);
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(%key, reason = %describe(&e), "cannot publish proxy status to etcd; retrying");
                }
                failing = true;
                lease = None;
            }
        }
    }
    let _ = client.delete(key, None).await;
    if let Some(id) = lease {
        let _ = client.lease_revoke(id).await;
    }
}

/// Every other replica's published status (`{"replica": …, "proxies":
/// […]}`), by replica.
pub async fn replicas_status(
    store: &EtcdStore,
    own: &str,
) -> Result<Vec<serde_json::Value>, Error> {
    let prefix = store.config().status_prefix();
    let mut client = store.client();
    let got = client
        .get(prefix.clone(), Some(GetOptions::new().with_prefix()))
        .await
        .map_err(|e| store.unavailable(&e))?;
    Ok(got
        .kvs()
        .iter()
        .filter(|kv| String::from_utf8_lossy(kv.key()).trim_start_matches(&prefix) != own)
        .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
        .collect())
}
