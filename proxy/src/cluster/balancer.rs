//! Endpoint selection.
//!
//! * Least request (default): power of two random choices. Two distinct
//!   endpoints are drawn at random and the one with fewer requests in flight
//!   relative to its weight wins. This avoids herding on one endpoint (which
//!   "pick the global minimum" does when many proxies decide at once) while
//!   still steering around slow or busy endpoints.
//! * Round robin: weighted, over a precomputed interleaved schedule.

use rand::Rng;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Longest round-robin schedule; weights are scaled down to fit.
const MAX_SCHEDULE: usize = 4096;

/// Picks an index among endpoints described by `(in_flight, weight)`.
#[derive(Debug)]
pub enum Balancer {
    /// Power of two choices on weighted in-flight requests.
    LeastRequest,
    /// Weighted round robin.
    RoundRobin {
        /// Interleaved endpoint indices, each repeated by weight.
        schedule: Vec<usize>,
        /// Position in the schedule.
        next: AtomicUsize,
    },
}

// === impl Balancer ===

impl Balancer {
    /// A weighted round-robin balancer for endpoints with these weights.
    pub fn round_robin(weights: &[u32]) -> Self {
        Balancer::RoundRobin {
            schedule: schedule(weights),
            next: AtomicUsize::new(0),
        }
    }

    /// Picks an index in `0..loads.len()`, or `None` if there is none.
    /// `loads[i]` is `(in_flight, weight)`.
    pub fn pick(&self, loads: &[(usize, u32)], rng: &mut impl Rng) -> Option<usize> {
        match loads.len() {
            0 => None,
            1 => Some(0),
            n => match self {
                Balancer::LeastRequest => {
                    let a = rng.random_range(0..n);
                    let mut b = rng.random_range(0..n - 1);
                    if b >= a {
                        b += 1;
                    }
                    // Compare in_flight/weight without division:
                    // a wins if load_a * w_b <= load_b * w_a.
                    let (la, wa) = loads[a];
                    let (lb, wb) = loads[b];
                    let ca = (la as u64) * u64::from(wb.max(1));
                    let cb = (lb as u64) * u64::from(wa.max(1));
                    Some(match ca.cmp(&cb) {
                        std::cmp::Ordering::Less => a,
                        std::cmp::Ordering::Greater => b,
                        std::cmp::Ordering::Equal if wa >= wb => a,
                        std::cmp::Ordering::Equal => b,
                    })
                }
                Balancer::RoundRobin { schedule, next } => {
                    if schedule.is_empty() {
                        return Some(next.fetch_add(1, Ordering::Relaxed) % n);
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed) % schedule.len();
                    Some(schedule[i].min(n - 1))
                }
            },
        }
    }
}

/// Interleaves endpoint indices by weight, e.g. weights [2, 1] → [0, 1, 0]
/// (smooth weighted round robin, so heavy endpoints are not hit in bursts).
fn schedule(weights: &[u32]) -> Vec<usize> {
    if weights.is_empty() {
        return Vec::new();
    }
    let total: u64 = weights.iter().map(|w| u64::from((*w).max(1))).sum();
    let scale = (total as f64 / MAX_SCHEDULE as f64).max(1.0);
    let ws: Vec<i64> = weights
        .iter()
        .map(|w| ((f64::from((*w).max(1)) / scale).round() as i64).max(1))
        .collect();
    let sum: i64 = ws.iter().sum();
    let mut current = vec![0i64; ws.len()];
    (0..sum)
        .map(|_| {
            for (c, w) in current.iter_mut().zip(&ws) {
                *c += w;
            }
            let (best, _) = current
                .iter()
                .enumerate()
                .max_by_key(|(i, c)| (**c, std::cmp::Reverse(*i)))
                .expect("non-empty");
            current[best] -= sum;
            best
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    #[test]
    fn p2c_prefers_the_less_loaded() {
        let b = Balancer::LeastRequest;
        let mut rng = StdRng::seed_from_u64(7);
        let loads = [(10, 1), (0, 1)];
        for _ in 0..100 {
            assert_eq!(b.pick(&loads, &mut rng), Some(1));
        }
        // Three endpoints: the busiest is never picked (it loses every pair).
        let loads = [(5, 1), (0, 1), (9, 1)];
        let picks: Vec<_> = (0..300)
            .map(|_| b.pick(&loads, &mut rng).unwrap())
            .collect();
        assert!(!picks.contains(&2));
        assert!(picks.contains(&0) && picks.contains(&1));
    }

    #[test]
    fn p2c_accounts_for_weight() {
        let b = Balancer::LeastRequest;
        let mut rng = StdRng::seed_from_u64(1);
        // 4 in flight at weight 4 is lighter than 2 in flight at weight 1.
        let loads = [(4, 4), (2, 1)];
        assert_eq!(b.pick(&loads, &mut rng), Some(0));
    }

    #[test]
    fn round_robin_is_weighted_and_smooth() {
        let b = Balancer::round_robin(&[2, 1]);
        let mut rng = StdRng::seed_from_u64(1);
        let loads = [(0, 2), (0, 1)];
        let picks: Vec<_> = (0..6).map(|_| b.pick(&loads, &mut rng).unwrap()).collect();
        assert_eq!(picks, vec![0, 1, 0, 0, 1, 0]);
        let b = Balancer::round_robin(&[1, 1, 1]);
        let picks: Vec<_> = (0..3)
            .map(|_| b.pick(&[(0, 1); 3], &mut rng).unwrap())
            .collect();
        assert_eq!(picks, vec![0, 1, 2]);
    }

    #[test]
    fn empty_and_single() {
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(Balancer::LeastRequest.pick(&[], &mut rng), None);
        assert_eq!(Balancer::LeastRequest.pick(&[(3, 1)], &mut rng), Some(0));
    }
}
