//! One retry policy for every loop that waits and tries again: reconnecting the worker,
//! republishing an unconfirmed copy, `courier publish`, and `courier-dlq` passes.
//!
//! The delays come from [`backon`]'s exponential backoff with jitter; this module adds what every
//! caller here needs and backon leaves to its caller: a deadline measured on the wall clock (not a
//! sum of sleeps, so slow attempts count), a cancellation token that ends the wait at once, and
//! one rule for what is permanent ([`Permanence`]): a failure that retrying cannot fix ends the
//! loop on the spot, everything else is retried until the deadline.
//!
//! Jitter keeps a fleet from retrying in lockstep after a broker restart: every delay lies between
//! half and all of its base, which doubles from `min` up to `max`.

use backon::{BackoffBuilder, ExponentialBuilder};
use std::fmt::Display;
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Whether retrying the same operation can succeed without an operator's fix.
pub trait Permanence {
    /// True when it cannot: the loop stops at the first such failure.
    fn is_permanent(&self) -> bool;
}

/// Exponential backoff with jitter and an optional deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Base of the first delay.
    pub min: Duration,
    /// Longest base delay; the base doubles until it reaches this.
    pub max: Duration,
    /// Give up once the next wait would end past this much time after the first attempt; `None`
    /// retries until cancelled (reconnect loops).
    pub deadline: Option<Duration>,
}

/// Why [`RetryPolicy::run`] stopped without a success.
#[derive(Debug, thiserror::Error)]
pub enum GaveUp<E> {
    /// The last attempt failed permanently, or the deadline left no room for another.
    #[error("{0}")]
    Failed(E),
    /// The token was cancelled; holds the last failure, if any attempt was made.
    #[error("cancelled")]
    Cancelled(Option<E>),
}

impl<E> GaveUp<E> {
    /// The last failure, if there was one.
    pub fn into_last(self) -> Option<E> {
        match self {
            Self::Failed(e) => Some(e),
            Self::Cancelled(e) => e,
        }
    }
}

impl RetryPolicy {
    /// A policy with no deadline.
    pub const fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            deadline: None,
        }
    }

    /// The same policy, giving up after `deadline`.
    #[must_use]
    pub const fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// An endless series of delays (reconnect loops keep one and call [`Delays::reset`] after a
    /// success).
    pub fn delays(&self) -> Delays {
        Delays {
            policy: *self,
            inner: self.builder().build(),
        }
    }

    fn builder(&self) -> ExponentialBuilder {
        // backon's jitter adds up to 100 % of the base, so halving both ends gives delays between
        // half and all of the documented base.
        ExponentialBuilder::default()
            .with_min_delay(self.min / 2)
            .with_max_delay((self.max / 2).max(self.min / 2))
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
    }

    /// Runs `op` until it succeeds, fails permanently, the deadline leaves no room for another
    /// wait, or `cancel` fires. Each retry is logged at warn with `what`, the error and the wait.
    ///
    /// # Errors
    /// [`GaveUp::Failed`] with the last error, or [`GaveUp::Cancelled`].
    pub async fn run<T, E, F, Fut>(
        &self,
        what: &str,
        cancel: Option<&CancellationToken>,
        mut op: F,
    ) -> Result<T, GaveUp<E>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: Permanence + Display,
    {
        let started = Instant::now();
        let mut delays = self.delays();
        let mut attempt = 0u32;
        loop {
            attempt = attempt.saturating_add(1);
            if cancel.is_some_and(CancellationToken::is_cancelled) {
                return Err(GaveUp::Cancelled(None));
            }
            let err = match op().await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            if err.is_permanent() {
                return Err(GaveUp::Failed(err));
            }
            let wait = delays.next_delay();
            if self.deadline.is_some_and(|d| started.elapsed() + wait > d) {
                return Err(GaveUp::Failed(err));
            }
            tracing::warn!(error = %err, attempt, retry_in = ?wait, "{what}; retrying");
            match cancel {
                Some(token) => tokio::select! {
                    () = token.cancelled() => return Err(GaveUp::Cancelled(Some(err))),
                    () = tokio::time::sleep(wait) => {}
                },
                None => tokio::time::sleep(wait).await,
            }
        }
    }
}

/// Delays of a [`RetryPolicy`], for loops that are not one operation (a supervisor).
#[derive(Debug)]
pub struct Delays {
    policy: RetryPolicy,
    inner: backon::ExponentialBackoff,
}

impl Delays {
    /// The next wait.
    pub fn next_delay(&mut self) -> Duration {
        // Built without a limit on times, so the iterator never ends; `max` is the safe answer
        // should a future backon change that.
        self.inner.next().unwrap_or(self.policy.max)
    }

    /// Starts again from the shortest delay (after a success).
    pub fn reset(&mut self) {
        self.inner = self.policy.builder().build();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[derive(Debug)]
    struct Fail(bool);
    impl Display for Fail {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "fail(permanent={})", self.0)
        }
    }
    impl Permanence for Fail {
        fn is_permanent(&self) -> bool {
            self.0
        }
    }

    #[test]
    fn delays_grow_with_jitter_and_cap() {
        let p = RetryPolicy::new(Duration::from_millis(100), Duration::from_secs(1));
        let mut d = p.delays();
        let first = d.next_delay();
        assert!(
            first >= Duration::from_millis(50) && first <= Duration::from_millis(100),
            "{first:?}"
        );
        for _ in 0..20 {
            let next = d.next_delay();
            assert!(next <= Duration::from_secs(1), "{next:?}");
        }
        assert!(d.next_delay() >= Duration::from_millis(500));
        d.reset();
        assert!(d.next_delay() <= Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_failure_stops_at_once() {
        let calls = AtomicU32::new(0);
        let p = RetryPolicy::new(Duration::from_millis(10), Duration::from_secs(1))
            .with_deadline(Duration::from_secs(60));
        let r: Result<(), _> = p
            .run("test", None, || {
                calls.fetch_add(1, Ordering::Relaxed);
                async { Err(Fail(true)) }
            })
            .await;
        assert!(matches!(r, Err(GaveUp::Failed(Fail(true)))));
        assert_eq!(calls.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_retry_until_the_deadline() {
        let calls = AtomicU32::new(0);
        let p = RetryPolicy::new(Duration::from_millis(100), Duration::from_secs(1))
            .with_deadline(Duration::from_secs(5));
        let started = tokio::time::Instant::now();
        let r: Result<(), _> = p
            .run("test", None, || {
                calls.fetch_add(1, Ordering::Relaxed);
                async { Err(Fail(false)) }
            })
            .await;
        assert!(matches!(r, Err(GaveUp::Failed(Fail(false)))));
        assert!(started.elapsed() <= Duration::from_secs(5));
        assert!(calls.load(Ordering::Relaxed) >= 5, "{calls:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn success_after_transient_failures() {
        let calls = AtomicU32::new(0);
        let p = RetryPolicy::new(Duration::from_millis(10), Duration::from_millis(50));
        let r = p
            .run("test", None, || {
                let n = calls.fetch_add(1, Ordering::Relaxed);
                async move {
                    if n < 3 {
                        Err(Fail(false))
                    } else {
                        Ok(n)
                    }
                }
            })
            .await;
        assert_eq!(r.ok(), Some(3));
    }

    #[tokio::test(start_paused = true)]
    async fn cancellation_ends_the_wait() {
        let token = CancellationToken::new();
        let p = RetryPolicy::new(Duration::from_secs(10), Duration::from_secs(10));
        let t = token.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            t.cancel();
        });
        let r: Result<(), _> = p
            .run("test", Some(&token), || async { Err(Fail(false)) })
            .await;
        assert!(matches!(r, Err(GaveUp::Cancelled(Some(_)))));
    }
}
