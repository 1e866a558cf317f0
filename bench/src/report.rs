//! The figures of one benchmark run and their rendering as `RESULTS.md`:
//! absolute figures as median [min–max] over the rounds, added latency
//! over direct traffic, each figure against the best peer (nginx or
//! haproxy), and the issue's targets with where the run stands.

use crate::stats::{added, best, ratio, show_ratio, slope, Better, Summary};
use crate::topology::{Mode, PeerKind};
use std::collections::BTreeMap;
use std::fmt::Write;

/// One measured figure of a variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Metric {
    /// Requests per second at fixed concurrency.
    Rps,
    /// CPU seconds of both hops per 10 000 requests (throughput run).
    Cpu10k,
    /// vCPU (CPU seconds per second) of both hops at 1 000 req/s.
    VcpuAt1000,
    /// Latency percentiles (ms) at a rate: p50.
    P50(u32),
    /// p90 at a rate.
    P90(u32),
    /// p99 at a rate.
    P99(u32),
    /// p99.9 at a rate.
    P999(u32),
    /// Requests per second actually sent in the run at a rate.
    Achieved(u32),
    /// The second latency method (`oha`, open loop, corrected for
    /// coordinated omission) at a rate: p50 (ms).
    OhaP50(u32),
    /// `oha` p90 at a rate.
    OhaP90(u32),
    /// `oha` p99 at a rate.
    OhaP99(u32),
    /// `oha` p99.9 at a rate.
    OhaP999(u32),
    /// Requests per second `oha` completed at a rate.
    OhaAchieved(u32),
    /// Failed requests over the whole round (must be 0).
    Errors,
    /// RSS MiB per sidecar when idle (the larger hop).
    IdleRss,
    /// PSS MiB per sidecar when idle (the larger hop).
    IdlePss,
    /// Peak RSS MiB per sidecar after the load (`VmHWM`, the larger hop).
    LoadHwm,
    /// RSS MiB of hop A holding 1 000 idle client connections.
    ConnsRss,
    /// PSS MiB of hop A holding 1 000 idle client connections.
    ConnsPss,
    /// New mTLS handshakes per second at hop B.
    Handshakes,
    /// Spans both sidecars exported (`sane_trace_spans_total`), whole round.
    SpansExported,
    /// Spans both sidecars dropped (queue full, or not built while the
    /// exporter backed off).
    SpansDropped,
    /// Spans handed to an export that failed.
    SpansFailed,
    /// Spans the collector received (reachable collector only).
    SpansReceived,
}

/// A point of the scale test: the sane client sidecar with `endpoints`
/// extra services (one endpoint each) in its config.
#[derive(Clone, Debug, Default)]
pub struct ScalePoint {
    /// Extra services/endpoints.
    pub endpoints: usize,
    /// Seconds from start to serving.
    pub start_s: f64,
    /// Idle RSS MiB of hop A.
    pub rss: f64,
    /// Idle PSS MiB of hop A.
    pub pss: f64,
    /// p50 ms at 1 000 req/s.
    pub p50: f64,
    /// p99 ms at 1 000 req/s.
    pub p99: f64,
}

/// Everything `RESULTS.md` shows.
#[derive(Debug, Default)]
pub struct Results {
    figures: BTreeMap<(PeerKind, Mode, Metric), Summary>,
    /// The scale test.
    pub scale: Vec<ScalePoint>,
    /// Machine, versions, date, options (`key`, `value`).
    pub meta: Vec<(String, String)>,
    /// Exact commands.
    pub commands: Vec<String>,
    /// Load average samples (1-minute) during the run.
    pub load: Vec<f64>,
    /// Profile text (top costs), if profiled.
    pub profile: Option<String>,
    /// Free text appended at the end (hand-written analysis).
    pub notes: String,
    /// Appended to section titles, e.g. " (2 workers per proxy)".
    pub label: String,
    /// Worker threads per proxy in this pass (0: not said, taken as 1).
    pub workers: u32,
    /// The figures of further passes with another worker count, rendered
    /// after this one's (their own targets, tables and memory).
    pub passes: Vec<Results>,
}

const PEERS: [PeerKind; 2] = [PeerKind::Nginx, PeerKind::Haproxy];

/// The two latency methods, each with its own table per rate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LatencyMethod {
    /// `h2load --rps`: a timer per connection, latency from send.
    H2load,
    /// `oha -q --latency-correction`: open loop, latency from when each
    /// request was due.
    Oha,
}

// === impl LatencyMethod ===

impl LatencyMethod {
    /// Both, in the order the report shows them.
    pub const ALL: [LatencyMethod; 2] = [LatencyMethod::H2load, LatencyMethod::Oha];

    /// The metrics of a run at `rate`: achieved req/s, p50, p90, p99, p99.9.
    pub fn metrics(self, rate: u32) -> [Metric; 5] {
        match self {
            LatencyMethod::H2load => [
                Metric::Achieved(rate),
                Metric::P50(rate),
                Metric::P90(rate),
                Metric::P99(rate),
                Metric::P999(rate),
            ],
            LatencyMethod::Oha => [
                Metric::OhaAchieved(rate),
                Metric::OhaP50(rate),
                Metric::OhaP90(rate),
                Metric::OhaP99(rate),
                Metric::OhaP999(rate),
            ],
        }
    }

    fn describe(self) -> &'static str {
        match self {
            LatencyMethod::H2load => {
                "`h2load --rps` over 16 connections, from send to end of response"
            }
            LatencyMethod::Oha => {
                "second method: `oha -q --latency-correction` over 16 connections, open loop, \
                 from when each request was due to end of response"
            }
        }
    }

    fn short(self) -> &'static str {
        match self {
            LatencyMethod::H2load => "h2load",
            LatencyMethod::Oha => "oha",
        }
    }
}

// === impl Results ===

impl Results {
    /// Empty results of a run described by `meta` and `commands`.
    pub fn new(meta: Vec<(String, String)>, commands: Vec<String>) -> Results {
        Results {
            meta,
            commands,
            ..Results::default()
        }
    }

    /// Adds one sample.
    pub fn record(&mut self, kind: PeerKind, mode: Mode, metric: Metric, v: f64) {
        self.figures
            .entry((kind, mode, metric))
            .or_default()
            .push(v);
    }

    /// The summary of a figure.
    pub fn summary(&self, kind: PeerKind, mode: Mode, metric: Metric) -> Summary {
        self.figures
            .get(&(kind, mode, metric))
            .cloned()
            .unwrap_or_default()
    }

    /// The median of a figure.
    pub fn median(&self, kind: PeerKind, mode: Mode, metric: Metric) -> Option<f64> {
        self.summary(kind, mode, metric).median()
    }

    fn show(&self, kind: PeerKind, mode: Mode, metric: Metric, decimals: usize) -> String {
        self.summary(kind, mode, metric).show(decimals)
    }

    /// The best peer's median of a figure.
    pub fn best_peer(&self, mode: Mode, metric: Metric, better: Better) -> Option<f64> {
        best(PEERS.map(|p| self.median(p, mode, metric)), better)
    }

    /// Added latency of `kind` over direct traffic (median of each).
    pub fn added(&self, kind: PeerKind, mode: Mode, metric: Metric) -> Option<f64> {
        added(
            self.median(kind, mode, metric),
            self.median(PeerKind::Direct, mode, metric),
        )
    }

    fn best_added(&self, mode: Mode, metric: Metric) -> Option<f64> {
        best(PEERS.map(|p| self.added(p, mode, metric)), Better::Lower)
    }

    /// The whole Markdown document.
    pub fn render(&self, rates: &[u32]) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# Benchmark results\n");
        let _ = writeln!(
            s,
            "Generated by `bench/run` (`sane-bench`); the notes at the end are \
             written by hand. Figures are medians over the rounds with \
             [min–max]; \"×best peer\" divides by the better of the nginx and \
             haproxy pairs (for latency and CPU, lower is better; for \
             throughput, higher). Topology of every proxied variant: client → \
             hop A (plaintext) → mutual TLS 1.3 → hop B → backend (nginx \
             `return 200 ok`), all on loopback.\n"
        );
        self.render_meta(&mut s);
        self.render_pass(&mut s, rates);
        self.render_tracing(&mut s, rates);
        for pass in &self.passes {
            pass.render_pass(&mut s, rates);
        }
        self.render_scale(&mut s);
        if let Some(p) = &self.profile {
            let _ = writeln!(s, "## Profile of the sidecar path\n\n{p}\n");
        }
        let _ = writeln!(s, "## Commands\n");
        let _ = writeln!(s, "```sh");
        for c in &self.commands {
            let _ = writeln!(s, "{c}");
        }
        let _ = writeln!(s, "```\n");
        if !self.notes.is_empty() {
            let _ = writeln!(s, "{}", self.notes.trim_end());
        }
        s
    }

    /// Targets, the HTTP and TCP tables and memory of this pass.
    fn render_pass(&self, s: &mut String, rates: &[u32]) {
        self.render_targets(s, rates);
        for mode in [Mode::Http, Mode::Tcp] {
            self.render_mode(s, mode, rates);
        }
        self.render_memory(s);
    }

    /// sane with every request traced, to a collector that refuses
    /// connections and to one that accepts every span, against plain sane
    /// in the same rounds.
    fn render_tracing(&self, s: &mut String, rates: &[u32]) {
        let plain = PeerKind::Sane;
        let traced = [PeerKind::SaneTraced, PeerKind::SaneTracedReachable];
        let h = Mode::Http;
        let Some(&rate) = rates.first() else { return };
        if traced
            .iter()
            .all(|&k| self.summary(k, h, Metric::P50(rate)).is_empty())
        {
            return;
        }
        let _ = writeln!(
            s,
            "## Tracing to an unreachable and to a reachable OTLP collector{}\n\n\
             Both sidecars with a `Telemetry` resource: `tracing: {{ endpoint: \
             \"http://127.0.0.1:18039\", sampling_ratio: 1.0 }}`, a port nothing \
             listens on (every export is refused), or `http://127.0.0.1:18038`, \
             `sane-otlp-sink` (accepts and counts every span), against plain sane \
             in the same rounds. HTTP; latency at {rate} req/s (ms). Spans: the \
             sidecars' `sane_trace_spans_total` by result, summed over both hops, \
             and what the sink received, per round (medians).\n",
            self.label
        );
        let _ = writeln!(
            s,
            "| variant | p50 | p90 | p99 | p99.9 | req/s at c=32 | CPU s per 10 000 req | RSS idle (MiB) | peak RSS | spans exported | dropped | failed | received |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|"
        );
        for kind in [plain, traced[0], traced[1]] {
            if self.summary(kind, h, Metric::P50(rate)).is_empty() {
                continue;
            }
            let spans = |m| {
                if kind == plain {
                    "–".to_string()
                } else {
                    self.show(kind, h, m, 0)
                }
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                kind.name(),
                self.show(kind, h, Metric::P50(rate), 3),
                self.show(kind, h, Metric::P90(rate), 3),
                self.show(kind, h, Metric::P99(rate), 3),
                self.show(kind, h, Metric::P999(rate), 3),
                self.show(kind, h, Metric::Rps, 0),
                self.show(kind, h, Metric::Cpu10k, 3),
                self.show(kind, h, Metric::IdleRss, 1),
                self.show(kind, h, Metric::LoadHwm, 1),
                spans(Metric::SpansExported),
                spans(Metric::SpansDropped),
                spans(Metric::SpansFailed),
                spans(Metric::SpansReceived),
            );
        }
        let _ = writeln!(s);
        for (kind, what) in [
            (traced[0], "to the closed port"),
            (traced[1], "to the reachable collector"),
        ] {
            let diff = |m| {
                self.median(kind, h, m)
                    .zip(self.median(plain, h, m))
                    .map(|(t, p)| t - p)
            };
            if diff(Metric::P50(rate)).is_none() {
                continue;
            }
            let _ = writeln!(
                s,
                "Tracing {what} adds {} ms at p50 and {} ms at p99, {} CPU s per \
                 10 000 requests (medians; negative: within the noise).\n",
                fmt_signed(diff(Metric::P50(rate))),
                fmt_signed(diff(Metric::P99(rate))),
                fmt_signed(diff(Metric::Cpu10k)),
            );
        }
    }

    fn render_meta(&self, s: &mut String) {
        let _ = writeln!(s, "## Machine and run\n\n| | |\n|---|---|");
        for (k, v) in &self.meta {
            let _ = writeln!(s, "| {k} | {} |", v.replace('|', "\\|"));
        }
        let load = Summary::new(self.load.iter().copied());
        let _ = writeln!(
            s,
            "| load average (1 min) during the run | {} over {} samples |\n",
            load.show(2),
            load.len()
        );
    }

    /// Issue 20's targets for this pass, each with the figure measured and
    /// whether it is met (the control plane's fleet figure is measured by
    /// `bench/fleet.sh`, not here).
    fn render_targets(&self, s: &mut String, rates: &[u32]) {
        let h = Mode::Http;
        let workers = self.workers.max(1);
        let _ = writeln!(
            s,
            "## Targets (issue 20) and where we stand{}\n",
            self.label
        );
        let _ = writeln!(s, "| figure | target | measured | met |\n|---|---|---|---|");
        let verdict = |ok: Option<bool>| match ok {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "not measured",
        };
        let rps = ratio(
            self.median(PeerKind::Sane, h, Metric::Rps),
            self.best_peer(h, Metric::Rps, Better::Higher),
        );
        let rps_target = if workers == 1 { 1.3 } else { 1.2 };
        let _ = writeln!(
            s,
            "| HTTP throughput, {workers} worker(s) | ≥ ×{rps_target:.1} | {} | {} |",
            show_ratio(rps),
            verdict(rps.map(|r| r >= rps_target))
        );
        let cpu = ratio(
            self.median(PeerKind::Sane, h, Metric::Cpu10k),
            self.best_peer(h, Metric::Cpu10k, Better::Lower),
        );
        let _ = writeln!(
            s,
            "| CPU per request, {workers} worker(s) | ≤ ×0.8 | {} | {} |",
            show_ratio(cpu),
            verdict(cpu.map(|r| r <= 0.8))
        );
        for method in LatencyMethod::ALL {
            for &rate in rates {
                let m = method.metrics(rate)[3];
                if self.summary(PeerKind::Direct, h, m).is_empty() {
                    continue;
                }
                let ours = self.added(PeerKind::Sane, h, m);
                let peer = self.best_added(h, m);
                let r = ratio(ours, peer);
                let _ = writeln!(
                    s,
                    "| added p99 at {rate} req/s ({}) | ≤ ×0.7 | sane +{} ms vs best peer +{} ms: {} | {} |",
                    method.short(),
                    fmt(ours, 3),
                    fmt(peer, 3),
                    show_ratio(r),
                    verdict(r.map(|r| r <= 0.7))
                );
            }
        }
        let idle = self.median(PeerKind::Sane, h, Metric::IdleRss);
        let _ = writeln!(
            s,
            "| idle RSS per sidecar | ≤ 10 MiB | {} MiB | {} |",
            fmt(idle, 1),
            verdict(idle.map(|v| v <= 10.0))
        );
        let per_1000 = self.mb_per_1000_endpoints();
        if per_1000.is_some() {
            let _ = writeln!(
                s,
                "| RSS per 1 000 endpoints in the config | ≤ +1.5 MiB | +{} MiB (scale test) | {} |",
                fmt(per_1000, 2),
                verdict(per_1000.map(|v| v <= 1.5))
            );
        }
        let conns = self.median(PeerKind::Sane, h, Metric::ConnsRss);
        let best_conns = self.best_peer(h, Metric::ConnsRss, Better::Lower);
        let _ = writeln!(
            s,
            "| RSS with 1 000 client connections | ≤ the better peer ({} MiB) | {} MiB | {} |\n",
            fmt(best_conns, 1),
            fmt(conns, 1),
            verdict(conns.zip(best_conns).map(|(v, b)| v <= b))
        );
    }

    /// Least-squares MiB of idle RSS per 1 000 endpoints in the scale test.
    pub fn mb_per_1000_endpoints(&self) -> Option<f64> {
        let pts: Vec<(f64, f64)> = self
            .scale
            .iter()
            .map(|p| (p.endpoints as f64, p.rss))
            .collect();
        slope(&pts).map(|s| s * 1000.0)
    }

    fn render_mode(&self, s: &mut String, mode: Mode, rates: &[u32]) {
        let title = match mode {
            Mode::Http => "HTTP/1.1 from the client (sane: HTTP/2 between the sidecars)",
            Mode::Tcp => "TCP passthrough with mTLS between the hops",
        };
        let _ = writeln!(s, "## {title}{}\n", self.label);
        let _ = writeln!(
            s,
            "| variant | req/s at c=32 | ×best peer | CPU s per 10 000 req (both hops) | ×best peer | vCPU at 1 000 req/s | failed requests |\n|---|---|---|---|---|---|---|"
        );
        let best_rps = self.best_peer(mode, Metric::Rps, Better::Higher);
        let best_cpu = self.best_peer(mode, Metric::Cpu10k, Better::Lower);
        for kind in PeerKind::ALL {
            if self.summary(kind, mode, Metric::Rps).is_empty() {
                continue;
            }
            let proxied = kind != PeerKind::Direct;
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} |",
                kind.name(),
                self.show(kind, mode, Metric::Rps, 0),
                if proxied {
                    show_ratio(ratio(self.median(kind, mode, Metric::Rps), best_rps))
                } else {
                    "–".into()
                },
                self.show(kind, mode, Metric::Cpu10k, 3),
                show_ratio(ratio(self.median(kind, mode, Metric::Cpu10k), best_cpu)),
                self.show(kind, mode, Metric::VcpuAt1000, 3),
                self.show(kind, mode, Metric::Errors, 0),
            );
        }
        let _ = writeln!(s);
        for &rate in rates {
            for method in LatencyMethod::ALL {
                self.render_latency(s, mode, rate, method);
            }
        }
    }

    /// One latency table: `method`'s figures at `rate`, added over direct.
    fn render_latency(&self, s: &mut String, mode: Mode, rate: u32, method: LatencyMethod) {
        let [achieved, p50, p90, p99, p999] = method.metrics(rate);
        if self.summary(PeerKind::Direct, mode, p50).is_empty() {
            return;
        }
        let _ = writeln!(s, "Latency at {rate} req/s (ms; {}):\n", method.describe());
        let _ = writeln!(
            s,
            "| variant | achieved req/s | p50 | p90 | p99 | p99.9 | added p50 | added p99 | added p99 ×best peer |\n|---|---|---|---|---|---|---|---|---|"
        );
        let best_added = self.best_added(mode, p99);
        for kind in PeerKind::ALL {
            if self.summary(kind, mode, p50).is_empty() {
                continue;
            }
            let proxied = kind != PeerKind::Direct;
            let add = |m| {
                if proxied {
                    format!("+{}", fmt(self.added(kind, mode, m), 3))
                } else {
                    "–".into()
                }
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                kind.name(),
                self.show(kind, mode, achieved, 0),
                self.show(kind, mode, p50, 3),
                self.show(kind, mode, p90, 3),
                self.show(kind, mode, p99, 3),
                self.show(kind, mode, p999, 3),
                add(p50),
                add(p99),
                if proxied {
                    show_ratio(ratio(self.added(kind, mode, p99), best_added))
                } else {
                    "–".into()
                },
            );
        }
        let _ = writeln!(s);
    }

    fn render_memory(&self, s: &mut String) {
        let h = Mode::Http;
        let _ = writeln!(
            s,
            "## Memory per sidecar and TLS handshakes{}\n",
            self.label
        );
        let _ = writeln!(
            s,
            "RSS counts shared library pages (libssl, libc) in full; PSS shares them out. \
             Idle and peak are the larger of the two hops; \"1 000 conns\" is hop A holding \
             1 000 idle keep-alive client connections (one request each), read 2 s after the \
             last one opened (every variant alike). Handshakes: new \
             TLS 1.3 connections with a client certificate per second at hop B \
             (`openssl s_time -new`, one client process).\n"
        );
        let _ = writeln!(
            s,
            "| variant | RSS idle (MiB) | PSS idle | peak RSS after load | RSS, 1 000 conns | PSS, 1 000 conns | ×best peer (RSS, 1 000 conns) | handshakes/s | ×best peer |\n|---|---|---|---|---|---|---|---|---|"
        );
        let best_conns = self.best_peer(h, Metric::ConnsRss, Better::Lower);
        let best_hs = self.best_peer(h, Metric::Handshakes, Better::Higher);
        for kind in &PeerKind::ALL[1..] {
            let kind = *kind;
            if self.summary(kind, h, Metric::IdleRss).is_empty() {
                continue;
            }
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                kind.name(),
                self.show(kind, h, Metric::IdleRss, 1),
                self.show(kind, h, Metric::IdlePss, 1),
                self.show(kind, h, Metric::LoadHwm, 1),
                self.show(kind, h, Metric::ConnsRss, 1),
                self.show(kind, h, Metric::ConnsPss, 1),
                show_ratio(ratio(self.median(kind, h, Metric::ConnsRss), best_conns)),
                self.show(kind, h, Metric::Handshakes, 0),
                show_ratio(ratio(self.median(kind, h, Metric::Handshakes), best_hs)),
            );
        }
        let _ = writeln!(s);
    }

    fn render_scale(&self, s: &mut String) {
        if self.scale.is_empty() {
            return;
        }
        let _ = writeln!(
            s,
            "## Scale: the client sidecar with many services in its config\n\n\
             Each extra service has one port and one endpoint (behind a sidecar, with an \
             identity); traffic goes to the one real service. Idle memory is hop A's, read \
             once both entries serve, before any load: its settled state (the proxy gives \
             the heap its config parse freed back before it serves; read 2 s later, as \
             `conn-memory --endpoints` does, it is the same). Latency at 1 000 req/s.\n"
        );
        let _ = writeln!(
            s,
            "| services/endpoints | start to serving (s) | RSS idle (MiB) | PSS idle (MiB) | p50 (ms) | p99 (ms) |\n|---|---|---|---|---|---|"
        );
        for p in &self.scale {
            let _ = writeln!(
                s,
                "| {} | {:.2} | {:.1} | {:.1} | {:.3} | {:.3} |",
                p.endpoints, p.start_s, p.rss, p.pss, p.p50, p.p99
            );
        }
        let _ = writeln!(
            s,
            "\nGrowth (least squares over the points): **{} MiB RSS per 1 000 endpoints**.\n",
            fmt(self.mb_per_1000_endpoints(), 2)
        );
    }
}

fn fmt_signed(v: Option<f64>) -> String {
    v.map_or_else(|| "–".into(), |v| format!("{v:+.3}"))
}

fn fmt(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "–".into(), |v| format!("{v:.decimals$}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_has_ratios_against_the_best_peer_and_targets() {
        let mut r = Results::default();
        let h = Mode::Http;
        for (kind, rps, p99) in [
            (PeerKind::Direct, 100_000.0, 0.30),
            (PeerKind::Sane, 18_000.0, 0.60),
            (PeerKind::Nginx, 14_000.0, 0.80),
            (PeerKind::Haproxy, 15_000.0, 0.90),
        ] {
            r.record(kind, h, Metric::Rps, rps);
            r.record(kind, h, Metric::P50(1000), p99 / 2.0);
            r.record(kind, h, Metric::P99(1000), p99);
        }
        // sane adds 0.30 ms, nginx 0.50 ms: ×0.60, target met.
        let added = ratio(
            r.added(PeerKind::Sane, h, Metric::P99(1000)),
            r.best_added(h, Metric::P99(1000)),
        )
        .unwrap();
        assert!((added - 0.6).abs() < 1e-9);
        let text = r.render(&[1000]);
        assert!(text.contains("| sane | 18000 | ×1.20 |"), "{text}");
        assert!(text.contains("×0.60 | yes |"), "{text}");
        assert!(
            text.contains("| HTTP throughput, 1 worker(s) | ≥ ×1.3 | ×1.20 | **no** |"),
            "{text}"
        );
        assert!(text.contains("| idle RSS per sidecar | ≤ 10 MiB | – MiB | not measured |"));
        assert!(!text.contains("unreachable and to a reachable OTLP collector"));
    }

    #[test]
    fn tracing_section_and_worker_passes_render() {
        let h = Mode::Http;
        let mut r = Results::default();
        r.record(PeerKind::Sane, h, Metric::P50(1000), 1.0);
        r.record(PeerKind::SaneTraced, h, Metric::P50(1000), 1.25);
        r.record(PeerKind::Sane, h, Metric::P99(1000), 3.0);
        r.record(PeerKind::SaneTraced, h, Metric::P99(1000), 2.5);
        r.record(PeerKind::SaneTracedReachable, h, Metric::P50(1000), 1.5);
        r.record(PeerKind::SaneTracedReachable, h, Metric::P99(1000), 3.5);
        r.record(
            PeerKind::SaneTracedReachable,
            h,
            Metric::SpansReceived,
            42.0,
        );
        let mut two = Results {
            label: " (2 workers per proxy)".into(),
            workers: 2,
            ..Results::default()
        };
        two.record(PeerKind::Sane, h, Metric::Rps, 9000.0);
        two.record(PeerKind::Nginx, h, Metric::Rps, 6000.0);
        r.passes.push(two);
        let text = r.render(&[1000]);
        assert!(
            text.contains("to the closed port adds +0.250 ms at p50 and -0.500 ms at p99"),
            "{text}"
        );
        assert!(
            text.contains("to the reachable collector adds +0.500 ms at p50 and +0.500 ms at p99"),
            "{text}"
        );
        assert!(
            text.contains("| sane + tracing to a reachable collector | 1.500 |"),
            "{text}"
        );
        assert!(text.contains("| 42 |"), "{text}");
        assert!(text.contains("## Targets (issue 20) and where we stand (2 workers per proxy)"));
        assert!(
            text.contains("| HTTP throughput, 2 worker(s) | ≥ ×1.2 | ×1.50 | yes |"),
            "{text}"
        );
        assert!(text.contains("| sane | 9000 | ×1.50 |"), "{text}");
    }
}
