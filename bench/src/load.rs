//! The load generators, run as child processes pinned to the load core, and
//! the parsers of their reports: `wrk` for throughput at a fixed number of
//! connections, `h2load --rps` for latency at a fixed request rate (a
//! timer per client connection; latency is from the moment a request is
//! sent, so it is not corrected for coordinated omission: a stalled
//! connection delays its next request instead of counting it as late),
//! `oha -q --latency-correction` as a second, independent latency method
//! (open loop: requests are due on a fixed schedule, and each is timed from
//! when it was due, so a stall counts against every request it delayed —
//! corrected for coordinated omission), and `openssl s_time` for the rate
//! of new mutual-TLS handshakes.

use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// What a throughput run measured.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Throughput {
    /// Requests completed.
    pub requests: f64,
    /// Requests per second.
    pub rps: f64,
    /// Responses that were not 2xx/3xx, plus socket errors.
    pub errors: f64,
}

/// What a fixed-rate run measured, latencies in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Latency {
    /// Requests sent.
    pub requests: f64,
    /// Requests that failed (error or non-2xx).
    pub errors: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
}

/// Where a load generator sends to.
#[derive(Clone, Debug)]
pub struct Target {
    /// `http://127.0.0.1:PORT/`.
    pub url: String,
    /// The `Host` header, when the entry needs one (the sane sidecar's
    /// outbound proxy port routes by it).
    pub host: Option<String>,
}

/// How to pin a load generator: `taskset -c <cpus>`, or nothing.
#[derive(Clone, Debug)]
pub struct Pin(pub Option<String>);

// === impl Pin ===

impl Pin {
    /// A command running `program` under `taskset` when pinned.
    pub fn command(&self, program: &str) -> Command {
        match &self.0 {
            Some(cpus) => {
                let mut c = Command::new("taskset");
                c.args(["-c", cpus, program]);
                c
            }
            None => Command::new(program),
        }
    }
}

/// The `wrk` command line for `target`.
pub fn wrk_args(target: &Target, connections: u32, duration: Duration) -> Vec<String> {
    let mut args = vec![
        "-t1".to_string(),
        format!("-c{connections}"),
        format!("-d{}s", duration.as_secs().max(1)),
    ];
    if let Some(h) = &target.host {
        args.push("-H".into());
        args.push(format!("Host: {h}"));
    }
    args.push(target.url.clone());
    args
}

/// Runs `wrk` and parses its report.
pub fn wrk(pin: &Pin, target: &Target, connections: u32, duration: Duration) -> Result<Throughput> {
    let out = pin
        .command("wrk")
        .args(wrk_args(target, connections, duration))
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "wrk failed ({}): {text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse_wrk(&text).with_context(|| format!("parsing wrk's report:\n{text}"))
}

/// Parses `wrk`'s text report.
pub fn parse_wrk(text: &str) -> Result<Throughput> {
    let mut t = Throughput::default();
    for line in text.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            t.rps = v.trim().parse()?;
        } else if line.contains(" requests in ") {
            t.requests = line.split_whitespace().next().unwrap_or("0").parse()?;
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            t.errors += v.trim().parse::<f64>()?;
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            for part in v.split(',') {
                if let Some(n) = part.split_whitespace().nth(1) {
                    t.errors += n.parse::<f64>()?;
                }
            }
        }
    }
    if t.rps == 0.0 {
        bail!("no Requests/sec line");
    }
    Ok(t)
}

/// The `h2load` command line for `target` at `rate` requests per second in
/// total, spread over `connections` HTTP/1.1 connections, each request
/// logged to `log`.
pub fn h2load_args(
    target: &Target,
    rate: u32,
    connections: u32,
    duration: Duration,
    log: &str,
) -> Vec<String> {
    let mut args = vec![
        "--h1".to_string(),
        "-c".into(),
        connections.to_string(),
        "--rps".into(),
        format!("{}", f64::from(rate) / f64::from(connections.max(1))),
        "-D".into(),
        format!("{}", duration.as_secs().max(1)),
        format!("--log-file={log}"),
    ];
    if let Some(h) = &target.host {
        args.push("-H".into());
        args.push(format!(":authority: {h}"));
    }
    args.push(target.url.clone());
    args
}

/// Runs `h2load` at a fixed rate and computes the percentiles from its
/// per-request log (`log` is overwritten).
pub fn h2load(
    pin: &Pin,
    target: &Target,
    rate: u32,
    connections: u32,
    duration: Duration,
    log: &Path,
) -> Result<Latency> {
    let _ = std::fs::remove_file(log);
    let log_s = log.display().to_string();
    let out = pin
        .command("h2load")
        .args(h2load_args(target, rate, connections, duration, &log_s))
        .output()
        .context("running h2load")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "h2load failed ({}): {text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let rows = std::fs::read_to_string(log).context("reading h2load's request log")?;
    parse_h2load(&text, &rows).with_context(|| format!("parsing h2load's report:\n{text}"))
}

/// Parses `h2load`'s summary (failures) and its request log
/// (`start_us\tstatus\tduration_us` rows) into percentiles.
pub fn parse_h2load(summary: &str, log: &str) -> Result<Latency> {
    let mut us: Vec<f64> = Vec::new();
    let mut bad_status = 0.0;
    for row in log.lines() {
        let mut cols = row.split('\t');
        let (_, Some(status), Some(d)) = (cols.next(), cols.next(), cols.next()) else {
            continue;
        };
        if !status.starts_with('2') {
            bad_status += 1.0;
        }
        us.push(d.trim().parse()?);
    }
    if us.is_empty() {
        bail!("no request completed");
    }
    us.sort_by(f64::total_cmp);
    // "requests: N total, N started, N done, N succeeded, N failed, N errored, N timeout"
    let line = summary
        .lines()
        .find(|l| l.starts_with("requests:"))
        .context("no `requests:` line")?;
    let count = |what: &str| -> f64 {
        line.split(',')
            .find(|p| p.trim().ends_with(what))
            .and_then(|p| p.split_whitespace().rev().nth(1)?.parse().ok())
            .unwrap_or(0.0)
    };
    let pct = |q: f64| -> f64 {
        let i = ((q * us.len() as f64).ceil() as usize).clamp(1, us.len()) - 1;
        us[i] / 1000.0
    };
    Ok(Latency {
        requests: us.len() as f64,
        errors: count("failed").max(bad_status) + count("errored") + count("timeout"),
        p50: pct(0.50),
        p90: pct(0.90),
        p99: pct(0.99),
        p999: pct(0.999),
    })
}

/// The `oha` command line for `target` at `rate` requests per second in
/// total over `connections` HTTP/1.1 keep-alive connections, open loop with
/// coordinated-omission correction, one worker thread (like `h2load`),
/// JSON summary on stdout. `-w` lets the requests in flight at the end
/// finish instead of counting them as aborted.
pub fn oha_args(target: &Target, rate: u32, connections: u32, duration: Duration) -> Vec<String> {
    let mut args = vec![
        "--no-tui".to_string(),
        "--output-format".into(),
        "json".into(),
        "--worker-threads".into(),
        "1".into(),
        "-c".into(),
        connections.to_string(),
        "-q".into(),
        rate.to_string(),
        "--latency-correction".into(),
        "-z".into(),
        format!("{}s", duration.as_secs().max(1)),
        "-w".into(),
    ];
    if let Some(h) = &target.host {
        args.push("--host".into());
        args.push(h.clone());
    }
    args.push(target.url.clone());
    args
}

/// Runs `oha` at a fixed rate and reads its JSON summary.
pub fn oha(
    pin: &Pin,
    target: &Target,
    rate: u32,
    connections: u32,
    duration: Duration,
) -> Result<Latency> {
    let out = pin
        .command("oha")
        .args(oha_args(target, rate, connections, duration))
        .output()
        .context("running oha (installed by scripts/bench-deps.sh)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "oha failed ({}): {text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse_oha(&text).with_context(|| format!("parsing oha's JSON summary:\n{text}"))
}

/// Parses `oha --output-format json`: `latencyPercentiles` (seconds, keys
/// `p50`, `p90`, `p99`, `p99.9`), `statusCodeDistribution` and
/// `errorDistribution` (counts).
pub fn parse_oha(json: &str) -> Result<Latency> {
    let v: serde_json::Value = serde_json::from_str(json)?;
    let pct = |k: &str| -> Result<f64> {
        v["latencyPercentiles"][k]
            .as_f64()
            .map(|s| s * 1000.0)
            .with_context(|| format!("no latencyPercentiles.{k}"))
    };
    let counts = |k: &str| -> Vec<(String, f64)> {
        v[k].as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, n)| (k.clone(), n.as_f64().unwrap_or(0.0)))
                    .collect()
            })
            .unwrap_or_default()
    };
    let statuses = counts("statusCodeDistribution");
    let responses: f64 = statuses.iter().map(|(_, n)| n).sum();
    if responses == 0.0 {
        bail!("no request completed");
    }
    let not_2xx: f64 = statuses
        .iter()
        .filter(|(code, _)| !code.starts_with('2'))
        .map(|(_, n)| n)
        .sum();
    let errors: f64 = counts("errorDistribution").iter().map(|(_, n)| n).sum();
    Ok(Latency {
        requests: responses,
        errors: not_2xx + errors,
        p50: pct("p50")?,
        p90: pct("p90")?,
        p99: pct("p99")?,
        p999: pct("p99.9")?,
    })
}

/// New mutual-TLS handshakes per second against `addr` (a TLS port), with
/// the client certificate `cert`/`key`: `openssl s_time -new` for
/// `duration`, rate over wall-clock time.
pub fn handshakes(
    pin: &Pin,
    addr: &str,
    cert: &str,
    key: &str,
    ca: &str,
    duration: Duration,
) -> Result<f64> {
    let start = Instant::now();
    let out = pin
        .command("openssl")
        .args(["s_time", "-connect", addr, "-new", "-time"])
        .arg(duration.as_secs().max(1).to_string())
        .args(["-cert", cert, "-key", key, "-CAfile", ca])
        .output()
        .context("running openssl s_time")?;
    let wall = start.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&out.stdout);
    let n = parse_s_time(&text).with_context(|| {
        format!(
            "parsing openssl s_time's report:\n{text}{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    Ok(n / wall)
}

/// The connection count of `s_time`'s `N connections in Xs; ...` line.
pub fn parse_s_time(text: &str) -> Result<f64> {
    let line = text
        .lines()
        .find(|l| l.contains(" connections in ") && l.contains("user sec"))
        .context("no `connections in` line")?;
    let n: f64 = line.split_whitespace().next().unwrap_or("").parse()?;
    if n == 0.0 {
        bail!("no handshake completed");
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK: &str = "Running 2s test @ http://127.0.0.1:18001/
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.31ms  500.00us   9.00ms   90.00%
    Req/Sec    13.90k     1.00k   15.00k    70.00%
  27800 requests in 2.00s, 4.00MB read
  Socket errors: connect 0, read 1, write 0, timeout 2
  Non-2xx or 3xx responses: 4
Requests/sec:  13900.50
Transfer/sec:      2.00MB
";

    #[test]
    fn wrk_report() {
        let t = parse_wrk(WRK).unwrap();
        assert_eq!(t.requests, 27800.0);
        assert_eq!(t.rps, 13900.5);
        assert_eq!(t.errors, 7.0);
        assert!(parse_wrk("garbage").is_err());
    }

    #[test]
    fn h2load_percentiles_and_failures() {
        let summary = "finished in 3.00s, 1000.00 req/s, 145.90KB/s\n\
            requests: 1000 total, 1000 started, 1000 done, 998 succeeded, 2 failed, 1 errored, 0 timeout\n";
        let log: String = (1..=1000)
            .map(|i| {
                format!(
                    "1795419488625621\t{}\t{}\n",
                    if i <= 2 { 503 } else { 200 },
                    i * 10
                )
            })
            .collect();
        let l = parse_h2load(summary, &log).unwrap();
        assert_eq!(l.requests, 1000.0);
        assert_eq!(l.errors, 3.0);
        assert!((l.p50 - 5.0).abs() < 1e-9, "{l:?}");
        assert!((l.p99 - 9.9).abs() < 1e-9, "{l:?}");
        assert!((l.p999 - 9.99).abs() < 1e-9, "{l:?}");
        assert!(parse_h2load(summary, "").is_err());
    }

    #[test]
    fn oha_summary() {
        let json = r#"{"summary":{"successRate":1.0,"total":10.0},
            "latencyPercentiles":{"p10":0.0001,"p50":0.0002,"p90":0.0004,"p99":0.0015,"p99.9":0.003,"p99.99":0.004},
            "statusCodeDistribution":{"200":9990,"503":2},
            "errorDistribution":{"connection closed":3}}"#;
        let l = parse_oha(json).unwrap();
        assert_eq!(l.requests, 9992.0);
        assert_eq!(l.errors, 5.0);
        assert!((l.p50 - 0.2).abs() < 1e-9, "{l:?}");
        assert!((l.p99 - 1.5).abs() < 1e-9, "{l:?}");
        assert!((l.p999 - 3.0).abs() < 1e-9, "{l:?}");
        assert!(parse_oha(r#"{"statusCodeDistribution":{}}"#).is_err());
        assert!(parse_oha("garbage").is_err());
    }

    #[test]
    fn s_time_report() {
        let text = "Collecting connection statistics for 4 seconds\n\
            1234 connections in 2.10s; 587.62 connections/user sec, bytes read 0\n\
            1234 connections in 5 real seconds, 0 bytes read per connection\n";
        assert_eq!(parse_s_time(text).unwrap(), 1234.0);
        assert!(parse_s_time("0 connections in 0.00s; 0.00 connections/user sec").is_err());
    }

    #[test]
    fn command_lines() {
        let t = Target {
            url: "http://127.0.0.1:18021/".into(),
            host: Some("backend".into()),
        };
        let w = wrk_args(&t, 32, Duration::from_secs(8)).join(" ");
        assert_eq!(w, "-t1 -c32 -d8s -H Host: backend http://127.0.0.1:18021/");
        let h = h2load_args(&t, 1000, 16, Duration::from_secs(10), "/tmp/x.log").join(" ");
        assert_eq!(
            h,
            "--h1 -c 16 --rps 62.5 -D 10 --log-file=/tmp/x.log -H :authority: backend http://127.0.0.1:18021/"
        );
        let o = oha_args(&t, 5000, 16, Duration::from_secs(10)).join(" ");
        assert_eq!(
            o,
            "--no-tui --output-format json --worker-threads 1 -c 16 -q 5000 --latency-correction -z 10s -w --host backend http://127.0.0.1:18021/"
        );
        let cmd = Pin(Some("0".into())).command("wrk");
        assert_eq!(cmd.get_program(), "taskset");
    }
}
