//! Summaries of repeated measurements (median with the spread) and the
//! ratios `RESULTS.md` reports: added latency over direct traffic and each
//! figure against the best peer.

use std::fmt;

/// Repeated samples of one figure, summarised as median and [min–max].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    samples: Vec<f64>,
}

/// Whether a larger or a smaller value of a figure is better.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Better {
    /// Throughput, handshakes per second.
    Higher,
    /// Latency, CPU, memory.
    Lower,
}

// === impl Summary ===

impl Summary {
    /// A summary of `samples` (NaN samples are dropped).
    pub fn new(samples: impl IntoIterator<Item = f64>) -> Summary {
        let mut samples: Vec<f64> = samples.into_iter().filter(|v| !v.is_nan()).collect();
        samples.sort_by(f64::total_cmp);
        Summary { samples }
    }

    /// Adds one sample.
    pub fn push(&mut self, v: f64) {
        if v.is_nan() {
            return;
        }
        let at = self.samples.partition_point(|s| *s <= v);
        self.samples.insert(at, v);
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The median (the mean of the middle two for an even count); `None`
    /// without samples.
    pub fn median(&self) -> Option<f64> {
        let n = self.samples.len();
        match n {
            0 => None,
            _ if n % 2 == 1 => Some(self.samples[n / 2]),
            _ => Some((self.samples[n / 2 - 1] + self.samples[n / 2]) / 2.0),
        }
    }

    /// The smallest sample.
    pub fn min(&self) -> Option<f64> {
        self.samples.first().copied()
    }

    /// The largest sample.
    pub fn max(&self) -> Option<f64> {
        self.samples.last().copied()
    }

    /// Formats as `median [min–max]` with `decimals` decimals, or `–`.
    pub fn show(&self, decimals: usize) -> String {
        match (self.median(), self.min(), self.max()) {
            (Some(m), Some(lo), Some(hi)) if self.len() > 1 => {
                format!("{m:.decimals$} [{lo:.decimals$}–{hi:.decimals$}]")
            }
            (Some(m), _, _) => format!("{m:.decimals$}"),
            _ => "–".to_string(),
        }
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.show(2))
    }
}

/// `value / best`, as the factor a reader compares against 1.0: `None` when
/// either is missing or `best` is zero.
pub fn ratio(value: Option<f64>, best: Option<f64>) -> Option<f64> {
    match (value, best) {
        (Some(v), Some(b)) if b != 0.0 => Some(v / b),
        _ => None,
    }
}

/// The best of `values` (ignoring `None`) in the direction `better`.
pub fn best(values: impl IntoIterator<Item = Option<f64>>, better: Better) -> Option<f64> {
    values.into_iter().flatten().reduce(|a, b| match better {
        Better::Higher => a.max(b),
        Better::Lower => a.min(b),
    })
}

/// Added latency: `proxied - direct`, never below zero (a proxied run that
/// happens to beat direct traffic adds nothing measurable).
pub fn added(proxied: Option<f64>, direct: Option<f64>) -> Option<f64> {
    Some((proxied? - direct?).max(0.0))
}

/// Formats `×1.23`, or `–`.
pub fn show_ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "–".to_string(), |r| format!("×{r:.2}"))
}

/// Least-squares slope of `y` over `x` (e.g. MB per endpoint); `None` with
/// fewer than two distinct `x`.
pub fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx == 0.0 {
        return None;
    }
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    Some(sxy / sxx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts_and_spread() {
        let s = Summary::new([3.0, 1.0, 2.0]);
        assert_eq!(s.median(), Some(2.0));
        assert_eq!((s.min(), s.max()), (Some(1.0), Some(3.0)));
        let mut e = Summary::new([4.0, 1.0]);
        e.push(f64::NAN);
        e.push(3.0);
        e.push(2.0);
        assert_eq!(e.len(), 4);
        assert_eq!(e.median(), Some(2.5));
        assert_eq!(e.show(1), "2.5 [1.0–4.0]");
        assert_eq!(Summary::new([7.0]).show(0), "7");
        assert_eq!(Summary::default().show(0), "–");
        assert_eq!(Summary::default().median(), None);
    }

    #[test]
    fn ratios_against_the_best_peer_and_added_latency() {
        let peers = [Some(12_000.0), None, Some(15_000.0)];
        assert_eq!(best(peers, Better::Higher), Some(15_000.0));
        assert_eq!(best(peers, Better::Lower), Some(12_000.0));
        assert_eq!(ratio(Some(18_000.0), Some(15_000.0)), Some(1.2));
        assert_eq!(ratio(Some(1.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(1.0)), None);
        assert_eq!(show_ratio(Some(0.7)), "×0.70");
        assert_eq!(show_ratio(None), "–");
        assert_eq!(added(Some(0.9), Some(0.25)), Some(0.65));
        assert_eq!(added(Some(0.2), Some(0.25)), Some(0.0));
        assert_eq!(added(None, Some(0.25)), None);
    }

    #[test]
    fn slope_is_the_growth_per_unit() {
        let pts = [(10.0, 5.0), (1_000.0, 6.0), (10_000.0, 15.0)];
        let s = slope(&pts).unwrap();
        assert!((s * 1_000.0 - 1.0).abs() < 0.05, "{s}");
        assert_eq!(slope(&[(1.0, 1.0)]), None);
        assert_eq!(slope(&[(1.0, 1.0), (1.0, 2.0)]), None);
    }
}
