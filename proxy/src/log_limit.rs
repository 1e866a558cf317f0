//! Rate limiting of warning and error log lines, per call site.
//!
//! A failing request or a refused handshake logs a `WARN` line; under load
//! (a down upstream, a scanner, a misconfigured client) that was one line per
//! request, tens of thousands a minute, drowning the lines that matter and
//! filling disks. Now each call site (`file:line` of the `warn!`/`error!`)
//! logs at most [`BURST`] lines per [`INTERVAL`]; what it drops is counted,
//! and once per interval a line `suppressed K similar warnings` names the
//! call site and the count, so nothing is lost silently. Lines below `WARN`
//! are not limited (debug floods are opt-in).
//!
//! [`WarnLimiter`] is the decision on an injected clock (unit-tested);
//! [`LimitLayer`] applies it as a `tracing-subscriber` layer that vetoes
//! events (not a per-layer filter: with one of those in the subscriber,
//! every span enter and exit asks the registry whether that filter
//! enabled the span, on every poll of a connection's task);
//! [`spawn_reporter`] writes the suppression lines. A small module rather
//! than a crate: the maintained `tracing` ecosystem has no per-call-site
//! limiter that reports what it dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::callsite::Identifier;
use tracing::subscriber::Interest;
use tracing::Subscriber;
use tracing::{Event, Level, Metadata};
use tracing_subscriber::layer::{Context, Layer};

/// Lines one call site may log per [`INTERVAL`].
pub const BURST: u32 = 10;
/// The window [`BURST`] applies to, and how often suppressions are reported.
pub const INTERVAL: Duration = Duration::from_secs(5);
/// Target of the suppression report lines (never limited themselves).
pub const REPORT_TARGET: &str = "sane_proxy::log_limit";

/// Per-call-site windows and suppression counts.
#[derive(Debug)]
pub struct WarnLimiter {
    burst: u32,
    interval: Duration,
    sites: Mutex<HashMap<Identifier, Site>>,
}

#[derive(Debug)]
struct Site {
    /// `file:line`, or the event's name when the location is unknown.
    location: String,
    level: Level,
    window_start: Instant,
    logged: u32,
    /// Dropped since the last report.
    suppressed: u64,
}

/// What one call site dropped since the last report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Suppressed {
    /// `file:line` of the call site.
    pub location: String,
    /// Its level.
    pub level: Level,
    /// Lines dropped.
    pub count: u64,
}

/// The [`Layer`] that applies a [`WarnLimiter`] to `WARN` and `ERROR`
/// events.
#[derive(Clone, Debug)]
pub struct LimitLayer(pub Arc<WarnLimiter>);

// === impl WarnLimiter ===

impl WarnLimiter {
    /// At most `burst` lines per call site per `interval`.
    pub fn new(burst: u32, interval: Duration) -> Self {
        Self {
            burst,
            interval,
            sites: Mutex::new(HashMap::new()),
        }
    }

    /// Whether an event of `meta` at `now` is logged (else it is counted).
    pub fn admit(&self, meta: &'static Metadata<'static>, now: Instant) -> bool {
        let mut sites = self.sites.lock().unwrap_or_else(|p| p.into_inner());
        let site = sites.entry(meta.callsite()).or_insert_with(|| Site {
            location: match (meta.file(), meta.line()) {
                (Some(f), Some(l)) => format!("{f}:{l}"),
                _ => meta.name().to_string(),
            },
            level: *meta.level(),
            window_start: now,
            logged: 0,
            suppressed: 0,
        });
        if now.saturating_duration_since(site.window_start) >= self.interval {
            site.window_start = now;
            site.logged = 0;
        }
        if site.logged < self.burst {
            site.logged += 1;
            true
        } else {
            site.suppressed += 1;
            false
        }
    }

    /// What was dropped since the last call, per call site (counts reset).
    pub fn take_suppressed(&self) -> Vec<Suppressed> {
        let mut sites = self.sites.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<Suppressed> = sites
            .values_mut()
            .filter(|s| s.suppressed > 0)
            .map(|s| Suppressed {
                location: s.location.clone(),
                level: s.level,
                count: std::mem::take(&mut s.suppressed),
            })
            .collect();
        out.sort_by(|a, b| a.location.cmp(&b.location));
        out
    }

    /// Logs one line per call site that dropped lines since the last report.
    pub fn report(&self) {
        for s in self.take_suppressed() {
            tracing::warn!(
                target: REPORT_TARGET,
                site = %s.location,
                level = %s.level,
                suppressed = s.count,
                "suppressed {} similar warnings", s.count
            );
        }
    }
}

impl Default for WarnLimiter {
    fn default() -> Self {
        Self::new(BURST, INTERVAL)
    }
}

/// Writes the suppression report every `limiter.interval` from a thread of
/// its own (logging starts before any runtime, and must not depend on one).
pub fn spawn_reporter(limiter: Arc<WarnLimiter>) {
    let every = limiter.interval;
    let spawned = std::thread::Builder::new()
        .name("log-limit".into())
        .spawn(move || loop {
            std::thread::sleep(every);
            limiter.report();
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the log suppression reporter");
    }
}

// === impl LimitLayer ===

fn limited(meta: &Metadata<'_>) -> bool {
    meta.is_event() && *meta.level() <= Level::WARN && meta.target() != REPORT_TARGET
}

impl<S: Subscriber> Layer<S> for LimitLayer {
    fn register_callsite(&self, meta: &'static Metadata<'static>) -> Interest {
        if limited(meta) {
            Interest::sometimes()
        } else {
            Interest::always()
        }
    }

    fn event_enabled(&self, event: &Event<'_>, _cx: Context<'_, S>) -> bool {
        let meta = event.metadata();
        !limited(meta) || self.0.admit(meta, Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The metadata of a `warn!` call site, as the filter sees it.
    fn site_meta(n: u32) -> &'static Metadata<'static> {
        struct Grab(Mutex<Option<&'static Metadata<'static>>>);
        impl tracing::Subscriber for Grab {
            fn register_callsite(&self, m: &'static Metadata<'static>) -> Interest {
                if m.is_event() {
                    *self.0.lock().unwrap() = Some(m);
                }
                Interest::always()
            }
            fn enabled(&self, _: &Metadata<'_>) -> bool {
                true
            }
            fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
                tracing::span::Id::from_u64(1)
            }
            fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
            fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
            fn event(&self, _: &Event<'_>) {}
            fn enter(&self, _: &tracing::span::Id) {}
            fn exit(&self, _: &tracing::span::Id) {}
        }
        let grab = Arc::new(Grab(Mutex::new(None)));
        tracing::subscriber::with_default(grab.clone(), || match n {
            0 => tracing::warn!("first site"),
            1 => tracing::error!("second site"),
            2 => tracing::info!("third site"),
            _ => tracing::warn!(target: REPORT_TARGET, "report site"),
        });
        let meta = grab.0.lock().unwrap().take().expect("event seen");
        // Same call site every time: the identifier is the callsite's.
        assert_eq!(meta.callsite(), meta.callsite());
        meta
    }

    #[test]
    fn a_burst_passes_then_lines_are_counted_until_the_window_ends() {
        let limiter = WarnLimiter::new(3, Duration::from_secs(5));
        let (a, b) = (site_meta(0), site_meta(1));
        let t0 = Instant::now();
        let admitted = (0..1000)
            .filter(|i| limiter.admit(a, t0 + Duration::from_millis(*i)))
            .count();
        assert_eq!(admitted, 3);
        // Another call site has its own budget.
        assert!(limiter.admit(b, t0));
        let report = limiter.take_suppressed();
        assert_eq!(report.len(), 1);
        assert_eq!(report[0].count, 997);
        assert_eq!(report[0].level, Level::WARN);
        assert!(report[0].location.contains("log_limit.rs:"), "{report:?}");
        // Counts reset once reported.
        assert!(limiter.take_suppressed().is_empty());
        // The next window lets a burst through again.
        let later = t0 + Duration::from_secs(5);
        assert!((0..3).all(|_| limiter.admit(a, later)));
        assert!(!limiter.admit(a, later));
        assert_eq!(limiter.take_suppressed()[0].count, 1);
    }

    #[test]
    fn only_warnings_and_errors_are_limited() {
        assert!(limited(site_meta(0)));
        assert!(limited(site_meta(1)));
        assert!(!limited(site_meta(2)), "info");
        assert!(!limited(site_meta(3)), "the report itself");
    }

    /// The layer on a real subscriber: the lines written, then the report.
    #[test]
    fn the_filter_drops_repeats_and_the_report_counts_them() {
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        use tracing_subscriber::layer::SubscriberExt;
        let buf = Buf::default();
        let out = buf.clone();
        // A window longer than the test, so the count does not depend on speed.
        let limiter = Arc::new(WarnLimiter::new(BURST, Duration::from_secs(3600)));
        let layer = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(move || out.clone());
        let subscriber = tracing_subscriber::registry()
            .with(LimitLayer(limiter.clone()))
            .with(layer);
        tracing::subscriber::with_default(subscriber, || {
            for i in 0..1000 {
                tracing::warn!(i, "request failed");
                tracing::info!(i, "not limited");
            }
            limiter.report();
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let warns = text.lines().filter(|l| l.contains(" WARN ")).count();
        let infos = text.lines().filter(|l| l.contains(" INFO ")).count();
        assert_eq!(infos, 1000);
        // The burst, then one report line.
        assert_eq!(warns, BURST as usize + 1, "{text}");
        let report = text.lines().last().unwrap();
        assert!(
            report.contains(&format!("suppressed {} similar warnings", 1000 - BURST)),
            "{report}"
        );
        assert!(report.contains("log_limit.rs:"), "{report}");
    }
}
