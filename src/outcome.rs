//! Where a handled message goes next: decided in one pure function, [`decide`].
//!
//! "Where is the retry tier chosen?" — here. The worker only carries out the [`Action`].

use crate::envelope::Reason;
use crate::handler::{FailureKind, HandlerError};
use crate::topology::RetryPolicy;
use std::time::Duration;

/// What the worker does with a message after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Delivered: ack.
    Ack,
    /// Republish to retry tier `tier` (index into the policy's tiers) with `attempts` recorded,
    /// confirm, then ack.
    Retry {
        /// Index of the tier queue.
        tier: usize,
        /// Attempts made, including this one.
        attempts: u32,
        /// The error to record.
        error: String,
    },
    /// Republish to the dead-letter queue with `reason`, confirm, then ack.
    DeadLetter {
        /// Why.
        reason: Reason,
        /// Attempts made, including this one.
        attempts: u32,
        /// The error to record.
        error: String,
    },
}

/// Decides the next hop after attempt number `prior_attempts + 1` ended with `result`.
///
/// - success → ack;
/// - permanent failure → dead letter (`permanent`);
/// - retryable failure with attempts left → tier `attempts - 1` (the last tier repeats), or the
///   first tier at least as long as the `retry_after` hint, if that is later;
/// - retryable failure with no attempts left (or no tiers) → dead letter (`max-attempts`).
pub fn decide(
    prior_attempts: u32,
    result: &Result<(), HandlerError>,
    policy: &RetryPolicy,
) -> Action {
    let attempts = prior_attempts.saturating_add(1);
    let err = match result {
        Ok(()) => return Action::Ack,
        Err(e) => e,
    };
    if err.kind == FailureKind::Permanent {
        return Action::DeadLetter {
            reason: Reason::Permanent,
            attempts,
            error: err.message.clone(),
        };
    }
    if attempts >= policy.max_attempts || policy.tiers.is_empty() {
        return Action::DeadLetter {
            reason: Reason::MaxAttempts,
            attempts,
            error: err.message.clone(),
        };
    }
    let last = policy.tiers.len() - 1;
    let by_attempt = usize::try_from(attempts - 1)
        .unwrap_or(usize::MAX)
        .min(last);
    let tier = match err.retry_after {
        Some(wait) => by_attempt.max(tier_for_delay(&policy.tiers, wait)),
        None => by_attempt,
    };
    Action::Retry {
        tier,
        attempts,
        error: err.message.clone(),
    }
}

/// The first tier whose delay is at least `wait`, or the longest tier.
fn tier_for_delay(tiers: &[Duration], wait: Duration) -> usize {
    tiers
        .iter()
        .position(|d| *d >= wait)
        .unwrap_or(tiers.len().saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            tiers: vec![
                Duration::from_secs(1),
                Duration::from_secs(10),
                Duration::from_secs(60),
            ],
            max_attempts: 5,
        }
    }

    fn retry(tier: usize, attempts: u32) -> Action {
        Action::Retry {
            tier,
            attempts,
            error: "boom".into(),
        }
    }

    #[test]
    fn success_acks() {
        assert_eq!(decide(3, &Ok(()), &policy()), Action::Ack);
    }

    #[test]
    fn retryable_walks_the_tiers_and_repeats_the_last() {
        let e = Err(HandlerError::retryable("boom"));
        assert_eq!(decide(0, &e, &policy()), retry(0, 1));
        assert_eq!(decide(1, &e, &policy()), retry(1, 2));
        assert_eq!(decide(2, &e, &policy()), retry(2, 3));
        assert_eq!(decide(3, &e, &policy()), retry(2, 4));
    }

    #[test]
    fn exhausted_attempts_dead_letter() {
        let e = Err(HandlerError::retryable("boom"));
        assert_eq!(
            decide(4, &e, &policy()),
            Action::DeadLetter {
                reason: Reason::MaxAttempts,
                attempts: 5,
                error: "boom".into()
            }
        );
        // Hostile attempt counts saturate instead of overflowing.
        assert!(matches!(
            decide(u32::MAX, &e, &policy()),
            Action::DeadLetter { .. }
        ));
    }

    #[test]
    fn permanent_dead_letters_at_once() {
        let e = Err(HandlerError::permanent("HTTP 400"));
        assert_eq!(
            decide(0, &e, &policy()),
            Action::DeadLetter {
                reason: Reason::Permanent,
                attempts: 1,
                error: "HTTP 400".into()
            }
        );
    }

    #[test]
    fn retry_after_picks_a_long_enough_tier() {
        let e = |s| Err(HandlerError::retryable("boom").with_retry_after(Duration::from_secs(s)));
        assert_eq!(decide(0, &e(7), &policy()), retry(1, 1));
        assert_eq!(decide(0, &e(10), &policy()), retry(1, 1));
        assert_eq!(decide(0, &e(3600), &policy()), retry(2, 1));
        // Never shorter than the attempt's own tier.
        assert_eq!(decide(2, &e(1), &policy()), retry(2, 3));
    }

    #[test]
    fn no_retry_policy_dead_letters_first_failure() {
        let p = RetryPolicy {
            tiers: vec![],
            max_attempts: 1,
        };
        assert!(matches!(
            decide(0, &Err(HandlerError::retryable("x")), &p),
            Action::DeadLetter {
                reason: Reason::MaxAttempts,
                ..
            }
        ));
    }
}
