//! Endpoint selection among the eligible endpoints of one pick (healthy
//! ones, minus those a retry already tried).
//!
//! * Peak EWMA (default): power of two random choices on latency. Two
//!   distinct candidates are drawn at random and the one with the lower
//!   `latency estimate × (in flight + 1) / weight` wins (linkerd2-proxy's
//!   balancer). Random pairs avoid herding on one endpoint, which "pick the
//!   global minimum" causes when many proxies decide at once; latency steers
//!   around slow endpoints before they fail.
//! * Least request: the same, on `in flight / weight` only.
//! * Round robin: weighted, over a precomputed interleaved schedule.
//! * Consistent hash: a ring of virtual nodes keyed by endpoint address, so
//!   every proxy maps a hash key to the same endpoint and adding or removing
//!   one endpoint moves only its share of keys. Keys whose endpoint is not a
//!   candidate walk on to the next one on the ring.

use rand::Rng;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Longest round-robin schedule; weights are scaled down to fit.
const MAX_SCHEDULE: usize = 4096;
/// Virtual nodes on a consistent-hash ring (all endpoints together).
const RING_SIZE: usize = 4096;
/// Latency estimates below this do not tell endpoints apart (they mostly
/// measure how long an endpoint went unobserved, e.g. when only opaque TCP
/// uses it), so load decides between them.
const MIN_RTT_NS: f64 = 100_000.0;

/// What the balancer knows of one endpoint, read only for the endpoints a
/// pick compares (two for P2C), since reading the latency takes a lock.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Load {
    /// Requests in flight.
    pub in_flight: usize,
    /// Weight (at least 1).
    pub weight: u32,
    /// Peak-EWMA latency estimate in nanoseconds.
    pub rtt_ns: f64,
}

/// Picks one of the candidates.
#[derive(Debug)]
pub enum Balancer {
    /// Power of two choices on peak-EWMA latency times load.
    PeakEwma,
    /// Power of two choices on weighted in-flight requests.
    LeastRequest,
    /// Weighted round robin.
    RoundRobin {
        /// Interleaved endpoint indices, each repeated by weight.
        schedule: Vec<usize>,
        /// Position in the schedule.
        next: AtomicUsize,
    },
    /// Ring hash; requests without a key use least request.
    ConsistentHash {
        /// `(point, endpoint index)`, sorted by point.
        ring: Vec<(u64, usize)>,
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

    /// A ring-hash balancer over endpoints `(address, weight)`.
    pub fn consistent_hash(endpoints: &[(SocketAddr, u32)]) -> Self {
        Balancer::ConsistentHash {
            ring: ring(endpoints),
        }
    }

    /// Picks one of the endpoints `0..n` for which `eligible` holds (not
    /// ejected, not already tried); `None` if none is. `load` reads an
    /// endpoint's load; `key` is the request's hash key, used by consistent
    /// hashing only.
    ///
    /// Allocation-free and, while most endpoints are eligible, O(1) for
    /// P2C and round robin: candidates are drawn (or walked) first and
    /// checked after, instead of listing the eligible endpoints per pick.
    pub fn pick(
        &self,
        n: usize,
        eligible: impl Fn(usize) -> bool,
        load: impl Fn(usize) -> Load,
        key: Option<u64>,
        rng: &mut impl Rng,
    ) -> Option<usize> {
        if n <= 1 {
            return (n == 1 && eligible(0)).then_some(0);
        }
        match self {
            Balancer::PeakEwma => p2c(n, &eligible, rng, |e| {
                let l = load(e);
                l.rtt_ns.max(MIN_RTT_NS) * (l.in_flight as f64 + 1.0) / f64::from(l.weight.max(1))
            }),
            Balancer::LeastRequest => p2c(n, &eligible, rng, |e| least_request(&load(e))),
            Balancer::RoundRobin { schedule, next } => {
                let start = next.fetch_add(1, Ordering::Relaxed);
                // Skip schedule slots of endpoints that are not eligible;
                // advancing the shared cursor keeps the others' order.
                for step in 0..schedule.len() {
                    let e = schedule[(start + step) % schedule.len()];
                    if e < n && eligible(e) {
                        if step > 0 {
                            next.fetch_add(step, Ordering::Relaxed);
                        }
                        return Some(e);
                    }
                }
                nth_eligible(n, &eligible, start)
            }
            Balancer::ConsistentHash { ring } => match key {
                None => p2c(n, &eligible, rng, |e| least_request(&load(e))),
                Some(k) => {
                    let start = ring.partition_point(|(p, _)| *p < k);
                    (0..ring.len())
                        .map(|i| ring[(start + i) % ring.len()].1)
                        .find(|e| *e < n && eligible(*e))
                        .or_else(|| (0..n).find(|e| eligible(*e)))
                }
            },
        }
    }
}

/// Random draws a pick makes before it counts the eligible endpoints
/// (only when most are ejected or tried).
const DRAWS: usize = 8;

/// Power of two choices: the cheaper of two distinct random eligible
/// endpoints (ties go to the first drawn, which is random too); the only
/// eligible one if there is one.
fn p2c(
    n: usize,
    eligible: &impl Fn(usize) -> bool,
    rng: &mut impl Rng,
    cost: impl Fn(usize) -> f64,
) -> Option<usize> {
    let a = draw(n, eligible, None, rng)?;
    let Some(b) = draw(n, eligible, Some(a), rng) else {
        return Some(a);
    };
    Some(if cost(b) < cost(a) { b } else { a })
}

/// A uniformly random eligible endpoint of `0..n` other than `not`: up to
/// [`DRAWS`] draws over all of them, then one pass that counts the
/// eligible ones and takes a random one of those. Both steps are uniform
/// over the eligible endpoints, so the mix is too.
fn draw(
    n: usize,
    eligible: &impl Fn(usize) -> bool,
    not: Option<usize>,
    rng: &mut impl Rng,
) -> Option<usize> {
    let range = n - usize::from(not.is_some());
    if range == 0 {
        return None;
    }
    // Draws over `0..n` without `not`: shift past it.
    let skip = |i: usize| match not {
        Some(x) if i >= x => i + 1,
        _ => i,
    };
    for _ in 0..DRAWS {
        let e = skip(rng.random_range(0..range));
        if eligible(e) {
            return Some(e);
        }
    }
    let ok = |e: &usize| Some(*e) != not && eligible(*e);
    let m = (0..n).filter(ok).count();
    if m == 0 {
        return None;
    }
    (0..n).filter(ok).nth(rng.random_range(0..m))
}

/// The `k mod m`-th of the `m` eligible endpoints.
fn nth_eligible(n: usize, eligible: &impl Fn(usize) -> bool, k: usize) -> Option<usize> {
    let m = (0..n).filter(|e| eligible(*e)).count();
    if m == 0 {
        return None;
    }
    (0..n).filter(|e| eligible(*e)).nth(k % m)
}

fn least_request(l: &Load) -> f64 {
    l.in_flight as f64 / f64::from(l.weight.max(1))
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

/// Virtual nodes by weight; points hash the endpoint's address, so they do
/// not depend on config order and agree across proxies.
fn ring(endpoints: &[(SocketAddr, u32)]) -> Vec<(u64, usize)> {
    let total: u64 = endpoints.iter().map(|(_, w)| u64::from((*w).max(1))).sum();
    let mut ring = Vec::new();
    for (i, (addr, w)) in endpoints.iter().enumerate() {
        let share = (u64::from((*w).max(1)) * RING_SIZE as u64 / total.max(1)).max(1);
        for v in 0..share {
            ring.push((hash_key(format!("{addr}#{v}").as_bytes()), i));
        }
    }
    ring.sort_unstable();
    ring
}

/// A stable 64-bit hash (FNV-1a, then a SplitMix64 finalizer for spread):
/// unlike `std`'s hasher it is the same in every build and process.
pub fn hash_key(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    fn loads(v: &[(usize, u32)]) -> Vec<Load> {
        v.iter()
            .map(|(in_flight, weight)| Load {
                in_flight: *in_flight,
                weight: *weight,
                rtt_ns: 1e6,
            })
            .collect()
    }

    /// Picks among all of `l`, or the endpoints in `among`.
    fn pick(
        b: &Balancer,
        l: &[Load],
        among: Option<&[usize]>,
        key: Option<u64>,
        rng: &mut StdRng,
    ) -> Option<usize> {
        b.pick(
            l.len(),
            |e| among.is_none_or(|a| a.contains(&e)),
            |e| l[e],
            key,
            rng,
        )
    }

    #[test]
    fn p2c_prefers_the_less_loaded() {
        let b = Balancer::LeastRequest;
        let mut rng = StdRng::seed_from_u64(7);
        let l = loads(&[(10, 1), (0, 1)]);
        for _ in 0..100 {
            assert_eq!(pick(&b, &l, None, None, &mut rng), Some(1));
        }
        // Three endpoints: the busiest is never picked (it loses every pair).
        let l = loads(&[(5, 1), (0, 1), (9, 1)]);
        let picks: Vec<_> = (0..300)
            .map(|_| pick(&b, &l, None, None, &mut rng).unwrap())
            .collect();
        assert!(!picks.contains(&2));
        assert!(picks.contains(&0) && picks.contains(&1));
    }

    #[test]
    fn p2c_accounts_for_weight() {
        let b = Balancer::LeastRequest;
        let mut rng = StdRng::seed_from_u64(1);
        // 4 in flight at weight 4 is lighter than 2 in flight at weight 1.
        let l = loads(&[(4, 4), (2, 1)]);
        for _ in 0..20 {
            assert_eq!(pick(&b, &l, None, None, &mut rng), Some(0));
        }
    }

    #[test]
    fn peak_ewma_weighs_latency_by_load() {
        let b = Balancer::PeakEwma;
        let mut rng = StdRng::seed_from_u64(3);
        let mut l = loads(&[(0, 1), (0, 1)]);
        l[0].rtt_ns = 50e6;
        l[1].rtt_ns = 5e6;
        for _ in 0..50 {
            assert_eq!(
                pick(&b, &l, None, None, &mut rng),
                Some(1),
                "the faster wins"
            );
        }
        // 5ms with 20 in flight costs more than 50ms idle.
        l[1].in_flight = 20;
        assert_eq!(pick(&b, &l, None, None, &mut rng), Some(0));
        // Estimates decayed to nothing: load decides.
        let mut idle = loads(&[(3, 1), (0, 1)]);
        idle[0].rtt_ns = 1.0;
        idle[1].rtt_ns = 50.0;
        for _ in 0..20 {
            assert_eq!(pick(&b, &idle, None, None, &mut rng), Some(1));
        }
    }

    #[test]
    fn round_robin_is_weighted_smooth_and_skips_non_candidates() {
        let b = Balancer::round_robin(&[2, 1]);
        let mut rng = StdRng::seed_from_u64(1);
        let l = loads(&[(0, 2), (0, 1)]);
        let picks: Vec<_> = (0..6)
            .map(|_| pick(&b, &l, None, None, &mut rng).unwrap())
            .collect();
        assert_eq!(picks, vec![0, 1, 0, 0, 1, 0]);
        let b = Balancer::round_robin(&[1, 1, 1]);
        let all = loads(&[(0, 1); 3]);
        let picks: Vec<_> = (0..3)
            .map(|_| pick(&b, &all, None, None, &mut rng).unwrap())
            .collect();
        assert_eq!(picks, vec![0, 1, 2]);
        // Endpoint 1 excluded: the others keep their turns.
        let eps: Vec<_> = (0..4)
            .map(|_| pick(&b, &all, Some(&[0, 2]), None, &mut rng).unwrap())
            .collect();
        assert_eq!(eps, vec![0, 2, 0, 2]);
    }

    #[test]
    fn consistent_hash_sticks_and_moves_only_when_needed() {
        let addrs: Vec<(SocketAddr, u32)> = (1..=4)
            .map(|i| (format!("10.0.0.{i}:80").parse().unwrap(), 1))
            .collect();
        let b = Balancer::consistent_hash(&addrs);
        let mut rng = StdRng::seed_from_u64(1);
        let all = loads(&[(0, 1); 4]);
        let user = |u: &str| Some(hash_key(u.as_bytes()));
        let first = pick(&b, &all, None, user("alice"), &mut rng).unwrap();
        for _ in 0..20 {
            assert_eq!(pick(&b, &all, None, user("alice"), &mut rng), Some(first));
        }
        // Spread: 1000 keys hit every endpoint, none with more than half.
        let mut hits = [0; 4];
        for k in 0..1000 {
            hits[pick(&b, &all, None, user(&format!("u{k}")), &mut rng).unwrap()] += 1;
        }
        assert!(hits.iter().all(|h| (100..500).contains(h)), "{hits:?}");
        // Without alice's endpoint, her key moves; others' keys stay put.
        let rest: Vec<usize> = (0..4).filter(|e| *e != first).collect();
        let moved = pick(&b, &all, Some(&rest), user("alice"), &mut rng).unwrap();
        assert_ne!(moved, first);
        let mut same = 0;
        for k in 0..200 {
            let key = user(&format!("u{k}"));
            let before = pick(&b, &all, None, key, &mut rng).unwrap();
            if before != first {
                assert_eq!(pick(&b, &all, Some(&rest), key, &mut rng), Some(before));
                same += 1;
            }
        }
        assert!(same > 100);
        // Without a key it balances by load.
        let busy = loads(&[(9, 1), (9, 1), (0, 1), (9, 1)]);
        assert_eq!(pick(&b, &busy, Some(&[0, 2]), None, &mut rng), Some(2));
    }

    #[test]
    fn picks_only_eligible_endpoints_even_when_few_are() {
        let mut rng = StdRng::seed_from_u64(5);
        let l = loads(&[(0, 1); 100]);
        for b in [
            Balancer::PeakEwma,
            Balancer::LeastRequest,
            Balancer::round_robin(&[1; 100]),
            Balancer::consistent_hash(
                &(0..100)
                    .map(|i| (SocketAddr::from(([10, 0, 0, i as u8], 80)), 1))
                    .collect::<Vec<_>>(),
            ),
        ] {
            // One eligible of 100: always it (random draws miss, the count finds it).
            for k in 0..20 {
                let key = Some(hash_key(&[k]));
                assert_eq!(pick(&b, &l, Some(&[37]), key, &mut rng), Some(37));
            }
            // Two of 100: both get picks, nothing else does.
            let picks: Vec<_> = (0..200)
                .map(|_| pick(&b, &l, Some(&[3, 90]), None, &mut rng).unwrap())
                .collect();
            assert!(picks.iter().all(|p| *p == 3 || *p == 90), "{b:?}");
            assert!(picks.contains(&3) && picks.contains(&90), "{b:?}");
            assert_eq!(pick(&b, &l, Some(&[]), None, &mut rng), None, "{b:?}");
        }
    }

    #[test]
    fn empty_and_single() {
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(pick(&Balancer::PeakEwma, &[], None, None, &mut rng), None);
        assert_eq!(
            pick(
                &Balancer::LeastRequest,
                &loads(&[(3, 1)]),
                None,
                None,
                &mut rng
            ),
            Some(0)
        );
    }
}
