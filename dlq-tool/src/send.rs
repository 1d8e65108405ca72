//! The sending side every pass and `import` share: a confirmed publish retried under the
//! library's [`RetryPolicy`] with an outer deadline per attempt, and the `--rate` limiter.

use crate::cli::Rate;
use courier::envelope;
use courier::publisher::{Outgoing, PublishError, Publisher};
use courier::retry::RetryPolicy;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::num::NonZeroU32;
use std::time::Duration;

/// Outer bound of one publish attempt: the publisher's confirm deadline (30 s) plus time to
/// reconnect. The library publisher can still wait without a deadline while it replaces a dead
/// connection; this keeps a pass from stalling on that.
const ATTEMPT_DEADLINE: Duration = Duration::from_secs(45);

/// Transient failures are retried for this long, then the pass stops.
const RETRY_BUDGET: Duration = Duration::from_secs(60);

/// Publishes with the library's retry policy: transient failures (a channel replaced, a confirm
/// late, a reconnect) are retried for up to [`RETRY_BUDGET`]; a permanent failure
/// ([`PublishError::is_permanent`]) returns at once.
pub async fn publish_retrying(p: &Publisher, msg: &Outgoing) -> Result<(), PublishError> {
    let attempt = || async {
        match tokio::time::timeout(ATTEMPT_DEADLINE, p.publish(msg.clone())).await {
            Ok(r) => r,
            Err(_) => Err(PublishError::Timeout {
                message_id: envelope::message_id(&msg.properties)
                    .unwrap_or_default()
                    .to_owned(),
                timeout: ATTEMPT_DEADLINE,
            }),
        }
    };
    RetryPolicy::new(Duration::from_millis(100), Duration::from_secs(5))
        .with_deadline(RETRY_BUDGET)
        .run("publish not confirmed", None, attempt)
        .await
        .map_err(|gave_up| {
            gave_up
                .into_last()
                .unwrap_or_else(|| PublishError::Connect("cancelled".to_owned()))
        })
}

/// A limiter for `--rate`, or none without one.
pub fn limiter(rate: Option<Rate>) -> Option<DefaultDirectRateLimiter> {
    let r = rate?;
    let period = r.per / r.count.get();
    // A burst of ~20 ms worth of messages absorbs timer granularity (a 1 ms timer cannot pace
    // 5,000/s one message at a time) without letting a real burst through.
    let burst = (r.per_second() * 0.02).clamp(1.0, f64::from(r.count.get())) as u32;
    let quota = Quota::with_period(period)?.allow_burst(NonZeroU32::new(burst.max(1))?);
    Some(RateLimiter::direct(quota))
}

/// Waits for the limiter's next permit (at once without a limiter).
pub async fn wait_rate(limiter: Option<&DefaultDirectRateLimiter>) {
    if let Some(l) = limiter {
        l.until_ready().await;
    }
}

/// `--ramp`: from `from` to `to`, linearly over `over`, then `to` for the rest of the pass.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ramp {
    /// The rate the ramp starts at.
    pub from: Rate,
    /// The rate it reaches, and keeps.
    pub to: Rate,
    /// How long it takes to get there.
    pub over: Duration,
}

impl Ramp {
    /// Messages a second `elapsed` into the ramp.
    pub fn per_second_at(&self, elapsed: Duration) -> f64 {
        let (a, b) = (self.from.per_second(), self.to.per_second());
        if self.over.is_zero() {
            return b;
        }
        let done = (elapsed.as_secs_f64() / self.over.as_secs_f64()).min(1.0);
        a + (b - a) * done
    }
}

impl std::fmt::Display for Ramp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/s..{}/s over {}",
            self.from.per_second(),
            self.to.per_second(),
            humantime::format_duration(self.over)
        )
    }
}

/// How far a ramp may fall behind its schedule and catch up at once: timer granularity, not a
/// real burst.
const RAMP_SLACK: Duration = Duration::from_millis(20);

/// Paces a pass's selected messages: `--rate`, `--ramp`, or as fast as the window allows.
pub enum Pacer {
    /// No limit.
    Free,
    /// `--rate`: governor's GCRA.
    Limit(DefaultDirectRateLimiter),
    /// `--ramp`: the next message is due at `next`; governor's quota is fixed, a ramp's is not.
    Ramp {
        /// The ramp.
        ramp: Ramp,
        /// When it started (the pass's start).
        start: tokio::time::Instant,
        /// When the next message may go.
        next: tokio::time::Instant,
    },
}

impl Pacer {
    /// The pacer for `--rate` or `--ramp` (at most one is given).
    pub fn new(rate: Option<Rate>, ramp: Option<Ramp>) -> Self {
        match (ramp, limiter(rate)) {
            (Some(ramp), _) => {
                let now = tokio::time::Instant::now();
                Self::Ramp {
                    ramp,
                    start: now,
                    next: now,
                }
            }
            (None, Some(l)) => Self::Limit(l),
            (None, None) => Self::Free,
        }
    }

    /// Whether selected messages wait for their turn.
    pub fn is_paced(&self) -> bool {
        !matches!(self, Self::Free)
    }

    /// Waits for the next message's turn. With `--rate` the turn is taken when this returns;
    /// with `--ramp`, by [`Pacer::took`].
    pub async fn ready(&self) {
        match self {
            Self::Free => {}
            Self::Limit(l) => l.until_ready().await,
            Self::Ramp { next, .. } => tokio::time::sleep_until(*next).await,
        }
    }

    /// A message went: the ramp schedules the next one at the rate of this moment.
    pub fn took(&mut self) {
        if let Self::Ramp { ramp, start, next } = self {
            let now = tokio::time::Instant::now();
            let per_second = ramp.per_second_at(now - *start).max(f64::MIN_POSITIVE);
            let gap = Duration::from_secs_f64((1.0 / per_second).min(3600.0));
            *next = (*next).max(now - RAMP_SLACK) + gap;
        }
    }
}

/// Parses `--ramp 10/s..500/s over 2m`.
///
/// # Errors
/// What the expected form is.
pub fn parse_ramp(s: &str) -> Result<Ramp, String> {
    let expected = "expected FROM..TO over DURATION, e.g. 10/s..500/s over 2m";
    let (rates, over) = s
        .split_once(" over ")
        .ok_or_else(|| format!("{s:?}: {expected}"))?;
    let (from, to) = rates
        .split_once("..")
        .ok_or_else(|| format!("{s:?}: {expected}"))?;
    let from = crate::cli::parse_rate(from).map_err(|e| format!("{e} (in --ramp {s:?})"))?;
    let to = crate::cli::parse_rate(to).map_err(|e| format!("{e} (in --ramp {s:?})"))?;
    let over = humantime::parse_duration(over.trim())
        .map_err(|e| format!("{s:?}: {over:?} is not a duration ({e}); {expected}"))?;
    Ok(Ramp { from, to, over })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ramp_parses_and_climbs_linearly_then_holds() {
        let r = parse_ramp("10/s..500/s over 2m").expect("parses");
        assert_eq!(r.over, Duration::from_secs(120));
        assert!((r.per_second_at(Duration::ZERO) - 10.0).abs() < 1e-9);
        assert!((r.per_second_at(Duration::from_secs(60)) - 255.0).abs() < 1e-9);
        assert!((r.per_second_at(Duration::from_secs(600)) - 500.0).abs() < 1e-9);
        let down = parse_ramp("600/m..1/s over 10s").expect("parses");
        assert!((down.per_second_at(Duration::from_secs(5)) - 5.5).abs() < 1e-9);
    }

    #[test]
    fn a_bad_ramp_says_what_is_expected() {
        for bad in [
            "10/s..500/s",
            "10/s over 2m",
            "10/s..x over 2m",
            "10/s..20/s over soon",
        ] {
            let e = parse_ramp(bad).expect_err(bad);
            assert!(e.contains(bad), "{e}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_ramp_paces_at_the_rate_of_the_moment() {
        let ramp = parse_ramp("10/s..100/s over 10s").expect("parses");
        let mut pacer = Pacer::new(None, Some(ramp));
        let start = tokio::time::Instant::now();
        let mut first_second = 0;
        let mut sent = 0;
        while start.elapsed() < Duration::from_secs(12) {
            pacer.ready().await;
            pacer.took();
            sent += 1;
            if start.elapsed() < Duration::from_secs(1) {
                first_second += 1;
            }
        }
        // ~10-19/s in the first second; ∫ 10..100 over 10 s = 550, then 100/s for 2 s.
        assert!((10..=20).contains(&first_second), "{first_second}");
        assert!((700..=800).contains(&sent), "{sent}");
    }
}
