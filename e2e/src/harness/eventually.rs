//! The one polling helper. Tests never sleep for a fixed time: they state a
//! condition and a deadline, and [`eventually`] retries until it holds.

use std::future::Future;
use std::time::{Duration, Instant};

/// How long [`eventually`] waits between attempts.
pub const EVENTUALLY_STEP: Duration = Duration::from_millis(20);

/// Why [`retry`] gave up.
#[derive(Debug)]
pub(crate) struct GaveUp {
    pub(crate) attempts: u32,
    pub(crate) last_error: String,
}

/// Runs `f` every [`EVENTUALLY_STEP`] until it returns `Ok`, and returns that
/// value. Panics at the deadline with the last error, so a failing test says
/// what it was waiting for.
///
/// An attempt still pending at the deadline is cancelled, so a hung request
/// cannot hang the test.
pub async fn eventually<T, F, Fut>(deadline: Duration, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    match retry(deadline, EVENTUALLY_STEP, f).await {
        Ok(v) => v,
        Err(e) => panic!(
            "condition still false after {deadline:?} ({} attempts); last error: {}",
            e.attempts, e.last_error
        ),
    }
}

/// Runs `fut` to completion, or panics once `deadline` has passed. Bounds a
/// whole test (or one long step of it) that has no condition to poll, so a
/// hung connection fails the test with a message instead of hanging CI.
pub async fn within<T>(deadline: Duration, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(deadline, fut).await {
        Ok(v) => v,
        Err(_) => panic!("did not finish within {deadline:?}"),
    }
}

/// [`eventually`] for code outside an async runtime (for example `Drop`).
pub fn eventually_blocking<T>(deadline: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let start = Instant::now();
    let mut attempts = 0;
    loop {
        attempts += 1;
        match f() {
            Ok(v) => return v,
            Err(e) if start.elapsed() >= deadline => panic!(
                "condition still false after {deadline:?} ({attempts} attempts); last error: {e}"
            ),
            Err(_) => std::thread::sleep(EVENTUALLY_STEP), // allow-sleep: poll step
        }
    }
}

/// The loop behind [`eventually`], with the step as a parameter so process
/// helpers can poll faster, and an error instead of a panic.
pub(crate) async fn retry<T, F, Fut>(
    deadline: Duration,
    step: Duration,
    mut f: F,
) -> Result<T, GaveUp>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    let mut attempts = 0;
    let mut last_error = String::new();
    loop {
        attempts += 1;
        let left = deadline.saturating_sub(start.elapsed());
        last_error = match tokio::time::timeout(left, f()).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => e,
            // Usually the last attempt, started just before the deadline:
            // the error before it is what the caller needs to see.
            Err(_) if attempts > 1 => format!(
                "the last attempt was still pending at the deadline; the one before: {last_error}"
            ),
            Err(_) => "the attempt was still pending at the deadline".to_string(),
        };
        if start.elapsed() >= deadline {
            return Err(GaveUp {
                attempts,
                last_error,
            });
        }
        let step = step.min(deadline.saturating_sub(start.elapsed()));
        tokio::time::sleep(step).await; // allow-sleep: the poll step of `eventually`, capped at its deadline
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn returns_the_first_ok() {
        let mut n = 0;
        let v = eventually(Duration::from_secs(5), || {
            n += 1;
            let n = n;
            async move {
                if n < 3 {
                    Err(format!("only {n}"))
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(v, 3);
    }

    #[tokio::test]
    async fn gives_up_with_the_last_error() {
        let e = retry(
            Duration::from_millis(50),
            Duration::from_millis(5),
            || async { Err::<(), _>("never".to_string()) },
        )
        .await
        .unwrap_err();
        assert_eq!(e.last_error, "never");
        assert!(e.attempts >= 2, "{e:?}");
    }

    #[tokio::test]
    async fn a_hung_last_attempt_keeps_the_error_before_it() {
        let mut n = 0;
        let e = retry(Duration::from_millis(50), Duration::from_millis(5), || {
            n += 1;
            let first = n == 1;
            async move {
                if first {
                    Err::<(), _>("refused".to_string())
                } else {
                    std::future::pending().await
                }
            }
        })
        .await
        .unwrap_err();
        assert!(e.last_error.ends_with("the one before: refused"), "{e:?}");
    }
}
