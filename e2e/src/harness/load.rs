//! Load for the chaos and soak tests: requests with a client-side deadline,
//! sorted into outcomes, and bodies checked end to end.
//!
//! Every request runs under its own deadline; one that has not finished by
//! then counts as *hung* (the tests assert there are none). Echoed bodies
//! are hashed (sha256) on both sides, so a body that arrives complete but
//! different, or silently cut short, counts as *corrupted* rather than as a
//! success. Everything else is a success or a failure named by its status
//! (`503`) or by how the exchange broke (`body aborted`), so each test can
//! say which failures it accepts. [`Load`] runs workers until stopped and
//! adds their outcomes up in a [`LoadReport`].

use super::http::{get, http1_client_via, request, BoxError, HttpClient};
use bytes::Bytes;
use http::Method;
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Failure class of a response that ended before its last byte (the peer
/// reset, or closed without the terminating chunk).
pub const BODY_ABORTED: &str = "body aborted";
/// Failure class of a request that got no response at all.
pub const NO_RESPONSE: &str = "no response";

/// What became of one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The expected status, and the body checked out.
    Ok,
    /// A clear failure: a status (`"503"`) or [`BODY_ABORTED`] /
    /// [`NO_RESPONSE`]; the detail is kept for messages.
    Failed {
        /// The class counted in the report.
        class: String,
        /// What exactly happened.
        detail: String,
    },
    /// Not finished by its deadline.
    Hung,
    /// A complete answer whose body is not what was sent.
    Corrupted(String),
}

/// Outcomes added up.
#[derive(Clone, Debug, Default)]
pub struct LoadReport {
    /// Requests started.
    pub sent: u64,
    /// [`Outcome::Ok`].
    pub ok: u64,
    /// [`Outcome::Failed`], by class.
    pub failed: BTreeMap<String, u64>,
    /// [`Outcome::Hung`].
    pub hung: u64,
    /// [`Outcome::Corrupted`].
    pub corrupted: u64,
    /// A few failure and corruption details, for messages.
    pub examples: Vec<String>,
}

/// Workers sending requests until [`Load::stop`].
#[derive(Debug)]
pub struct Load {
    report: Arc<Mutex<LoadReport>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Requests to the `echo` service (the `sane-echo` app) through one
/// outbound listener, on a pooled HTTP/1.1 client.
#[derive(Clone, Debug)]
pub struct EchoRequests {
    client: HttpClient,
    deadline: Duration,
}

// === impl Outcome ===

impl Outcome {
    fn failed(class: impl Into<String>, detail: impl Into<String>) -> Outcome {
        Outcome::Failed {
            class: class.into(),
            detail: detail.into(),
        }
    }
}

// === impl LoadReport ===

impl LoadReport {
    /// Counts one outcome.
    pub fn record(&mut self, outcome: Outcome) {
        const KEPT: usize = 10;
        self.sent += 1;
        match outcome {
            Outcome::Ok => self.ok += 1,
            Outcome::Failed { class, detail } => {
                if self.examples.len() < KEPT {
                    self.examples.push(format!("{class}: {detail}"));
                }
                *self.failed.entry(class).or_default() += 1;
            }
            Outcome::Hung => self.hung += 1,
            Outcome::Corrupted(detail) => {
                if self.examples.len() < KEPT {
                    self.examples.push(format!("corrupted: {detail}"));
                }
                self.corrupted += 1;
            }
        }
    }

    /// Every failure.
    pub fn failures(&self) -> u64 {
        self.failed.values().sum()
    }

    /// Failures whose class is not in `accepted`.
    pub fn failures_except(&self, accepted: &[&str]) -> BTreeMap<String, u64> {
        self.failed
            .iter()
            .filter(|(class, _)| !accepted.contains(&class.as_str()))
            .map(|(class, n)| (class.clone(), *n))
            .collect()
    }

    /// Adds `other`'s counts to this one.
    pub fn merge(&mut self, other: &LoadReport) {
        self.sent += other.sent;
        self.ok += other.ok;
        self.hung += other.hung;
        self.corrupted += other.corrupted;
        for (class, n) in &other.failed {
            *self.failed.entry(class.clone()).or_default() += n;
        }
        let room = 10usize.saturating_sub(self.examples.len());
        self.examples
            .extend(other.examples.iter().take(room).cloned());
    }
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sent={} succeeded={} failed={} {:?} hung={} corrupted={}",
            self.sent,
            self.ok,
            self.failures(),
            self.failed,
            self.hung,
            self.corrupted
        )
    }
}

// === impl Load ===

impl Load {
    /// Starts `workers` loops; each calls `one(worker, i)` for its `i`-th
    /// request, back to back with a `pace` pause between requests (so the
    /// processes under test keep some CPU), and records the outcome.
    pub fn start<F, Fut>(workers: usize, pace: Duration, one: F) -> Load
    where
        F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Outcome> + Send,
    {
        let report = Arc::new(Mutex::new(LoadReport::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let one = Arc::new(one);
        let tasks = (0..workers)
            .map(|worker| {
                let (report, stop, one) = (report.clone(), stop.clone(), one.clone());
                tokio::spawn(async move {
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let outcome = one(worker, i).await;
                        report.lock().expect("report lock").record(outcome);
                        i += 1;
                        tokio::time::sleep(pace).await; // allow-sleep: pacing of the load, not a wait for readiness
                    }
                })
            })
            .collect();
        Load {
            report,
            stop,
            tasks,
        }
    }

    /// The counts so far.
    pub fn report(&self) -> LoadReport {
        self.report.lock().expect("report lock").clone()
    }

    /// Requests finished so far.
    pub fn sent(&self) -> u64 {
        self.report().sent
    }

    /// Waits (up to `deadline`) until `n` more requests succeeded than now.
    pub async fn wait_for_more_ok(&self, n: u64, deadline: Duration) {
        let target = self.report().ok + n;
        super::eventually(deadline, || async {
            let now = self.report().ok;
            (now >= target)
                .then_some(())
                .ok_or_else(|| format!("{now} requests succeeded, waiting for {target}"))
        })
        .await
    }

    /// Stops the workers (each finishes its request in flight, which its
    /// deadline bounds) and returns the final counts.
    pub async fn stop(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            if let Err(e) = task.await {
                std::panic::resume_unwind(e.into_panic());
            }
        }
        let report = self.report.lock().expect("report lock");
        report.clone()
    }
}

// === impl EchoRequests ===

impl EchoRequests {
    /// Requests to `http://echo/…` sent to `outbound`, each bounded by
    /// `deadline`.
    pub fn via(outbound: SocketAddr, deadline: Duration) -> EchoRequests {
        EchoRequests {
            client: http1_client_via(outbound),
            deadline,
        }
    }

    /// `GET http://echo/`: ok on 200 with a complete body.
    pub async fn get(&self) -> Outcome {
        let client = self.client.clone();
        self.bounded(async move {
            let rsp = match client.request(get("http://echo/")).await {
                Ok(rsp) => rsp,
                Err(e) => return Outcome::failed(NO_RESPONSE, super::http::error_chain(&e)),
            };
            let status = rsp.status();
            match rsp.into_body().collect().await {
                Err(e) => Outcome::failed(BODY_ABORTED, format!("after {status}: {e}")),
                Ok(_) if status == http::StatusCode::OK => Outcome::Ok,
                Ok(body) => Outcome::failed(
                    status.as_str(),
                    String::from_utf8_lossy(&body.to_bytes()).into_owned(),
                ),
            }
        })
        .await
    }

    /// `POST http://echo/echo` with `len` bytes derived from `seed`, sent in
    /// 16 KiB chunks: ok when the echoed body has the same length and
    /// sha256, corrupted when a complete 200 answer differs.
    pub async fn echo_checksummed(&self, seed: u64, len: usize) -> Outcome {
        let client = self.client.clone();
        self.bounded(async move {
            let payload = payload(seed, len);
            let sent_hash = Sha256::digest(&payload);
            let chunks: Vec<Result<_, BoxError>> = payload
                .chunks(16 * 1024)
                .map(|c| Ok(hyper::body::Frame::data(Bytes::copy_from_slice(c))))
                .collect();
            let body = http_body_util::StreamBody::new(futures::stream::iter(chunks));
            let req = request(Method::POST, "http://echo/echo", body.boxed_unsync());
            let rsp = match client.request(req).await {
                Ok(rsp) => rsp,
                Err(e) => return Outcome::failed(NO_RESPONSE, super::http::error_chain(&e)),
            };
            let status = rsp.status();
            let body = match rsp.into_body().collect().await {
                Ok(body) => body.to_bytes(),
                Err(e) => {
                    return Outcome::failed(BODY_ABORTED, format!("after {status}: {e}"));
                }
            };
            if status != http::StatusCode::OK {
                return Outcome::failed(
                    status.as_str(),
                    String::from_utf8_lossy(&body).into_owned(),
                );
            }
            let got_hash = Sha256::digest(&body);
            if body.len() != len || got_hash != sent_hash {
                return Outcome::Corrupted(format!(
                    "sent {len} bytes (sha256 {}), got {} (sha256 {})",
                    hex(&sent_hash),
                    body.len(),
                    hex(&got_hash)
                ));
            }
            Outcome::Ok
        })
        .await
    }

    /// `fut` under the deadline: [`Outcome::Hung`] past it.
    async fn bounded(&self, fut: impl Future<Output = Outcome>) -> Outcome {
        tokio::time::timeout(self.deadline, fut)
            .await
            .unwrap_or(Outcome::Hung)
    }
}

/// `len` bytes that differ with `seed` and along the body (an xorshift
/// stream), so a misplaced or repeated chunk changes the hash.
pub fn payload(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Lowercase hex.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_counts_each_outcome_and_the_failures_by_class() {
        let mut report = LoadReport::default();
        report.record(Outcome::Ok);
        report.record(Outcome::failed("503", "no healthy upstream"));
        report.record(Outcome::failed("503", "again"));
        report.record(Outcome::failed(BODY_ABORTED, "reset"));
        report.record(Outcome::Hung);
        report.record(Outcome::Corrupted("differs".into()));
        assert_eq!(report.sent, 6);
        assert_eq!(report.ok, 1);
        assert_eq!(report.failures(), 3);
        assert_eq!(report.failed["503"], 2);
        assert_eq!(report.hung, 1);
        assert_eq!(report.corrupted, 1);
        let odd = report.failures_except(&["503"]);
        assert_eq!(
            odd.into_iter().collect::<Vec<_>>(),
            [(BODY_ABORTED.to_string(), 1)]
        );
        let text = report.to_string();
        assert!(text.starts_with("sent=6 succeeded=1 failed=3"), "{text}");
    }

    #[test]
    fn payloads_differ_by_seed_and_have_the_asked_length() {
        assert_eq!(payload(1, 1000).len(), 1000);
        assert_eq!(payload(1, 1000), payload(1, 1000));
        assert_ne!(payload(1, 1000), payload(2, 1000));
        assert_eq!(payload(3, 5), payload(3, 9)[..5]);
    }
}
