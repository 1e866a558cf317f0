//! When to renew a workload certificate, and how long to wait between failed
//! CA calls.
//!
//! Plain functions returning times and durations: the proxy's rotation task
//! owns the timer (`tokio::time::sleep`), which keeps this crate free of an
//! async runtime and lets tests check the arithmetic without a clock.

use std::time::{Duration, SystemTime};

use crate::x509;

/// Renewal happens at half the lifetime, moved by up to this fraction of the
/// lifetime either way, so proxies started together do not all call the CA
/// at the same instant.
pub const ROTATION_JITTER: f64 = 0.1;

/// When to renew a certificate valid from `not_before` to `not_after`:
/// between 40% and 60% of its lifetime, uniformly at random.
///
/// Renewing at half-life leaves the other half to retry a CA that is down.
pub fn rotation_deadline(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    let spread = 2.0 * random_unit() - 1.0;
    deadline_at_fraction(not_before, not_after, 0.5 + ROTATION_JITTER * spread)
}

/// How long to sleep from `now` before renewing a certificate valid from
/// `not_before` to `not_after`; zero if the deadline has passed (for example
/// after a suspended VM resumes).
pub fn rotation_delay(now: SystemTime, not_before: SystemTime, not_after: SystemTime) -> Duration {
    time_until(now, rotation_deadline(not_before, not_after))
}

/// `deadline - now`, or zero when the deadline is past.
pub(crate) fn time_until(now: SystemTime, deadline: SystemTime) -> Duration {
    deadline.duration_since(now).unwrap_or_default()
}

pub(crate) fn deadline_at_fraction(
    not_before: SystemTime,
    not_after: SystemTime,
    fraction: f64,
) -> SystemTime {
    let lifetime = not_after.duration_since(not_before).unwrap_or_default();
    not_before + lifetime.mul_f64(fraction.clamp(0.0, 1.0))
}

/// A uniform number in `[0, 1]`; 0.5 (no jitter) if the system RNG fails,
/// which only costs the spreading, never correctness.
fn random_unit() -> f64 {
    match x509::random_bytes::<8>() {
        Ok(bytes) => u64::from_le_bytes(bytes) as f64 / u64::MAX as f64,
        Err(_) => 0.5,
    }
}

/// Exponential backoff for retrying the CA: doubles from `initial` up to
/// `max`; each delay is drawn from the upper half of the current step
/// ("equal jitter") so a CA restart does not get every proxy back at once.
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    step: Duration,
}

// === impl Backoff ===

impl Backoff {
    /// The first step, as for the xDS client.
    pub const DEFAULT_INITIAL: Duration = Duration::from_millis(10);
    /// The largest step, as for the xDS client.
    pub const DEFAULT_MAX: Duration = Duration::from_secs(15);

    /// Backoff doubling from `initial` to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
            step: initial,
        }
    }

    /// The delay before the next attempt; grows the step for the one after.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = step.saturating_mul(2).min(self.max);
        step / 2 + (step / 2).mul_f64(random_unit())
    }

    /// Back to the first step, after a success.
    pub fn reset(&mut self) {
        self.step = self.initial;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(Self::DEFAULT_INITIAL, Self::DEFAULT_MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn deadline_is_half_life_within_jitter() {
        let not_before = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let not_after = not_before + 24 * HOUR;
        assert_eq!(
            deadline_at_fraction(not_before, not_after, 0.5),
            not_before + 12 * HOUR
        );
        let earliest = not_before + Duration::from_secs(24 * 3600 * 4 / 10);
        let latest = not_before + Duration::from_secs(24 * 3600 * 6 / 10);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let deadline = rotation_deadline(not_before, not_after);
            assert!(deadline >= earliest && deadline <= latest, "{deadline:?}");
            seen.insert(deadline);
        }
        assert!(seen.len() > 1, "the deadline is jittered");
    }

    #[test]
    fn delay_is_zero_once_past() {
        let not_before = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let not_after = not_before + HOUR;
        assert_eq!(
            rotation_delay(not_after, not_before, not_after),
            Duration::ZERO
        );
        let delay = rotation_delay(not_before, not_before, not_after);
        assert!(
            delay >= HOUR.mul_f64(0.4) && delay <= HOUR.mul_f64(0.6),
            "{delay:?}"
        );
        // A certificate whose validity is inverted renews immediately.
        assert_eq!(
            rotation_delay(not_after, not_after, not_before),
            Duration::ZERO
        );
    }

    #[test]
    fn backoff_doubles_to_the_cap_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        let steps = [100, 200, 400, 800, 800, 800].map(Duration::from_millis);
        for step in steps {
            let delay = backoff.next_delay();
            assert!(
                delay >= step / 2 && delay <= step,
                "{delay:?} outside the step {step:?}"
            );
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
        let first = Backoff::default().next_delay();
        assert!(first <= Backoff::DEFAULT_INITIAL);
    }
}
