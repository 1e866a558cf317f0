//! Resource use of a running process, read from `/proc`, and its trend: the
//! soak test samples each sidecar's and the control plane's resident memory
//! and open file descriptors, and fits a least-squares line through the
//! samples to tell growth from noise.

use std::time::Duration;

/// One reading of a process.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProcSample {
    /// When, from the start of sampling.
    pub at: Duration,
    /// Resident set size (`VmRSS`), in KiB.
    pub rss_kb: u64,
    /// Open file descriptors (entries of `/proc/<pid>/fd`).
    pub fds: u64,
}

/// The readings of one process over a run.
#[derive(Clone, Debug, Default)]
pub struct ProcSeries {
    /// Label for reports.
    pub name: String,
    /// Samples in time order.
    pub samples: Vec<ProcSample>,
}

/// Reads `pid`'s RSS and open fds at `at`.
pub fn sample(pid: u32, at: Duration) -> Result<ProcSample, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("reading /proc/{pid}/status: {e}"))?;
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("no VmRSS in /proc/{pid}/status"))?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map_err(|e| format!("listing /proc/{pid}/fd: {e}"))?
        .count() as u64;
    Ok(ProcSample { at, rss_kb, fds })
}

/// The slope of the least-squares line through `(x, y)` points; 0 when
/// there are fewer than two distinct `x`.
pub fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for (x, y) in points {
        sxy += (x - mean_x) * (y - mean_y);
        sxx += (x - mean_x) * (x - mean_x);
    }
    if sxx == 0.0 {
        0.0
    } else {
        sxy / sxx
    }
}

/// The median of `values` (0 for none).
pub fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

// === impl ProcSeries ===

impl ProcSeries {
    /// An empty series for `name`.
    pub fn new(name: &str) -> ProcSeries {
        ProcSeries {
            name: name.to_string(),
            samples: Vec::new(),
        }
    }

    /// Samples taken at or after `from`.
    pub fn after(&self, from: Duration) -> Vec<ProcSample> {
        self.samples
            .iter()
            .filter(|s| s.at >= from)
            .copied()
            .collect()
    }

    /// RSS growth in KiB per minute over the samples from `from` on.
    pub fn rss_kb_per_min(&self, from: Duration) -> f64 {
        let points: Vec<(f64, f64)> = self
            .after(from)
            .iter()
            .map(|s| (s.at.as_secs_f64() / 60.0, s.rss_kb as f64))
            .collect();
        slope(&points)
    }

    /// Open-fd growth per minute over the samples from `from` on.
    pub fn fds_per_min(&self, from: Duration) -> f64 {
        let points: Vec<(f64, f64)> = self
            .after(from)
            .iter()
            .map(|s| (s.at.as_secs_f64() / 60.0, s.fds as f64))
            .collect();
        slope(&points)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slope_of_a_line_is_its_gradient_and_noise_averages_out() {
        let line: Vec<(f64, f64)> = (0..10).map(|x| (x as f64, 3.0 * x as f64 + 7.0)).collect();
        assert!((slope(&line) - 3.0).abs() < 1e-9);
        // Alternating ±5 around a flat line: no trend.
        let flat: Vec<(f64, f64)> = (0..10)
            .map(|x| (x as f64, if x % 2 == 0 { 105.0 } else { 95.0 }))
            .collect();
        assert!(slope(&flat).abs() < 1.5, "{}", slope(&flat));
        assert_eq!(slope(&[(1.0, 2.0)]), 0.0);
        assert_eq!(slope(&[(1.0, 2.0), (1.0, 5.0)]), 0.0);
    }

    #[test]
    fn this_process_can_be_sampled() {
        let s = sample(std::process::id(), Duration::ZERO).unwrap();
        assert!(s.rss_kb > 0 && s.fds > 0, "{s:?}");
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
    }
}
