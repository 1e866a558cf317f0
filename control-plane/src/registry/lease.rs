//! Endpoint leases: an endpoint registered with a TTL is removed when no
//! heartbeat renews it in time. The sweeper sleeps until the earliest
//! deadline on tokio time, so tests drive it with `pause()`/`advance()`.

use super::{Change, Op, Registry};
use crate::error::Error;
use crate::resource::Kind;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long the sweeper waits before retrying after a failed write.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The longest lease an endpoint may be registered with: 24 hours. A lease
/// is a liveness promise renewed by heartbeats (typically every few seconds);
/// anything longer is a permanent registration, which is what a put without
/// `ttl` is for. Bounding it also keeps deadline arithmetic far from any
/// overflow.
pub const MAX_LEASE_TTL: Duration = Duration::from_secs(24 * 60 * 60);

// === impl Registry ===

impl Registry {
    /// The earliest lease deadline.
    pub fn next_lease_deadline(&self) -> Option<Instant> {
        self.lock().leases.by_deadline.first().map(|(d, _)| *d)
    }

    /// Removes every endpoint whose lease ended at or before `now`, in one
    /// write. Returns the removed keys.
    pub fn expire_leases(&self, now: Instant) -> Result<Vec<String>, Error> {
        if self.etcd.is_some() {
            // etcd ends the leases itself (registry/etcd).
            return Ok(Vec::new());
        }
        let (removed, ticket) = {
            let mut w = self.lock();
            let due: Vec<String> = w
                .leases
                .by_deadline
                .iter()
                .take_while(|(d, _)| *d <= now)
                .map(|(_, k)| k.clone())
                .collect();
            let state = w.head.clone();
            let mut changes = Vec::new();
            let mut removed = Vec::new();
            for key in due {
                match state.get(Kind::Endpoint, &key) {
                    // Delete as the owner, so ownership never blocks a lease.
                    Some(entry) => {
                        changes.push(Change {
                            origin: entry.origin.clone(),
                            ops: vec![Op::Delete {
                                kind: Kind::Endpoint,
                                key: key.clone(),
                            }],
                        });
                        removed.push(key);
                    }
                    None => w.leases.set(&key, None),
                }
            }
            if changes.is_empty() {
                return Ok(removed);
            }
            let (_, ticket) = self.apply_locked(&mut w, changes)?;
            (removed, ticket)
        };
        self.commit(ticket)?;
        Ok(removed)
    }

    /// Removes expired endpoints until `shutdown`.
    pub async fn run_lease_sweeper(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            let next = self.next_lease_deadline();
            let sleep = async {
                match next {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.lease_changed.notified() => continue,
                _ = sleep => {}
            }
            // Runs inline: expiries are rare and one small write each.
            match self.expire_leases(Instant::now()) {
                Ok(keys) => {
                    for key in keys {
                        tracing::info!(endpoint = %key, "lease expired; endpoint removed");
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "removing expired endpoints failed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(RETRY_AFTER) => {}
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{put, service};
    use super::*;
    use crate::resource::Resource;
    use sane_xds_proto::Endpoint;

    fn endpoint(addr: &str) -> Resource {
        Resource::Endpoint(Endpoint {
            service: "echo".into(),
            address: addr.into(),
            port: 8080,
            ..Default::default()
        })
    }

    fn register(reg: &Registry, addr: &str, ttl: Duration) {
        use super::super::Origin;
        reg.apply(Change {
            origin: Origin::Api,
            ops: vec![Op::Put {
                resource: endpoint(addr),
                ttl: Some(ttl),
            }],
        })
        .unwrap();
    }

    /// Lets the sweeper task run until it is idle again.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn expired_lease_removes_endpoint_and_heartbeat_keeps_it() {
        let reg = Arc::new(super::super::Registry::in_memory());
        reg.apply(put(vec![service("echo")])).unwrap();
        let shutdown = CancellationToken::new();
        let sweeper = tokio::spawn(reg.clone().run_lease_sweeper(shutdown.clone()));

        register(&reg, "10.0.0.1", Duration::from_secs(10));
        register(&reg, "10.0.0.2", Duration::from_secs(10));
        // A permanent one is never swept.
        reg.apply(put(vec![endpoint("10.0.0.3")])).unwrap();
        settle().await;

        tokio::time::advance(Duration::from_secs(6)).await;
        reg.heartbeat("default/echo/10.0.0.2:8080").unwrap();
        settle().await;

        tokio::time::advance(Duration::from_secs(5)).await;
        settle().await;
        let snap = reg.snapshot();
        assert!(snap
            .get(Kind::Endpoint, "default/echo/10.0.0.1:8080")
            .is_none());
        assert!(snap
            .get(Kind::Endpoint, "default/echo/10.0.0.2:8080")
            .is_some());
        assert!(snap
            .get(Kind::Endpoint, "default/echo/10.0.0.3:8080")
            .is_some());

        tokio::time::advance(Duration::from_secs(5)).await;
        settle().await;
        let snap = reg.snapshot();
        assert!(snap
            .get(Kind::Endpoint, "default/echo/10.0.0.2:8080")
            .is_none());
        assert!(snap
            .get(Kind::Endpoint, "default/echo/10.0.0.3:8080")
            .is_some());

        let err = reg.heartbeat("default/echo/10.0.0.3:8080").unwrap_err();
        assert!(matches!(err, Error::NoLease { .. }), "{err}");
        let err = reg.heartbeat("default/echo/10.0.0.9:8080").unwrap_err();
        assert!(matches!(err, Error::NotFound { .. }), "{err}");

        shutdown.cancel();
        sweeper.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn reregistering_without_ttl_makes_it_permanent() {
        let reg = Arc::new(super::super::Registry::in_memory());
        reg.apply(put(vec![service("echo")])).unwrap();
        register(&reg, "10.0.0.1", Duration::from_secs(1));
        reg.apply(put(vec![endpoint("10.0.0.1")])).unwrap();
        assert_eq!(reg.next_lease_deadline(), None);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(reg.expire_leases(Instant::now()).unwrap().is_empty());
    }
}
