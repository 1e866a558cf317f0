//! Per-client-IP connection limit: a connection over the limit is closed at
//! accept, before TLS or any parsing costs anything.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Counts open connections per client IP.
#[derive(Debug)]
pub struct ConnLimiter {
    max: u32,
    open: Mutex<HashMap<IpAddr, u32>>,
}

/// One admitted connection; dropping it frees the slot.
#[derive(Debug)]
pub struct ConnGuard {
    limiter: Arc<ConnLimiter>,
    ip: IpAddr,
}

// === impl ConnLimiter ===

impl ConnLimiter {
    /// At most `max` connections per IP (at least 1).
    pub fn new(max: u32) -> Arc<Self> {
        Arc::new(Self {
            max: max.max(1),
            open: Mutex::default(),
        })
    }

    /// Admits a connection from `ip`, unless it already has `max` open.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<ConnGuard> {
        let mut open = self.open.lock().expect("not poisoned");
        let n = open.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(ConnGuard {
            limiter: self.clone(),
            ip,
        })
    }

    /// Open connections from `ip`.
    pub fn open(&self, ip: IpAddr) -> u32 {
        let open = self.open.lock().expect("not poisoned");
        open.get(&ip).copied().unwrap_or(0)
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let mut open = self.limiter.open.lock().expect("not poisoned");
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_each_ip_separately_and_frees_on_drop() {
        let l = ConnLimiter::new(2);
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let g1 = l.try_acquire(a).unwrap();
        let _g2 = l.try_acquire(a).unwrap();
        assert!(l.try_acquire(a).is_none(), "third from the same IP");
        let _g3 = l.try_acquire(b).expect("another IP has its own budget");
        drop(g1);
        assert_eq!(l.open(a), 1);
        assert!(l.try_acquire(a).is_some());
        assert!(l.open.lock().unwrap().len() <= 2);
    }

    #[test]
    fn entries_are_removed_when_the_last_connection_closes() {
        let l = ConnLimiter::new(1);
        let ip: IpAddr = [192, 168, 1, 1].into();
        drop(l.try_acquire(ip).unwrap());
        assert!(l.open.lock().unwrap().is_empty());
    }
}
