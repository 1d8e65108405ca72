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
