//! Where a message goes next: decided in one pure function, [`next`].
//!
//! "Where is the retry tier chosen? When is a message malformed, or in a crash loop?" — here.
//! The worker gathers the [`Facts`] of a delivery (its flags and headers, and later the handler's
//! result), asks [`next`], and only carries out the answer: run the handler, count a
//! redelivery, or settle with an [`Action`]. Nothing here touches the broker, so every branch is
//! unit-tested below.
//!
//! [`decide`] is the last part of [`next`] — a handler's result to an [`Action`] — and is public
//! on its own because `courier demo` predicts each message's journey with it.

use crate::envelope::Reason;
use crate::handler::{FailureKind, HandlerError};
use crate::topology::RetryPolicy;
use std::time::Duration;

/// Every dead-letter reason [`next`] can give, for metrics. The broker's own (`rejected`,
/// `expired`) never pass through a worker.
pub const REASONS: [Reason; 4] = [
    Reason::Permanent,
    Reason::MaxAttempts,
    Reason::Malformed,
    Reason::CrashLoop,
];

/// The error recorded on a message that has no `message_id`.
pub const NO_MESSAGE_ID: &str =
    "message has no message_id (the idempotency key); publishers must set it";

/// What the worker knows about one delivery when it asks where the message goes next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    /// The broker's `redelivered` flag: a worker held the message and died or lost its channel.
    pub redelivered: bool,
    /// Redeliveries already counted in `x-courier-redeliveries`.
    pub redeliveries: u32,
    /// Whether the message carries a non-empty `message_id` (the handler's idempotency key).
    pub has_message_id: bool,
    /// Why the body is unacceptable (not JSON, not UTF-8), if it is.
    pub invalid_body: Option<String>,
    /// Handler attempts recorded in `x-courier-attempts` before this delivery.
    pub attempts: u32,
    /// The handler's result on this delivery; `None` until it has run.
    pub handled: Option<Result<(), HandlerError>>,
}

/// The rules a worker applies, fixed for its queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// The topology's retry tiers and attempt budget.
    pub retry: RetryPolicy,
    /// Retry tier queues the work queue has; a tier past them cannot be used.
    pub retry_queues: usize,
    /// Redeliveries tolerated before `crash-loop`; 0 disables the count.
    pub max_redeliveries: u32,
}

/// What the worker does with a delivery next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Well-formed and not crash-looping: run the handler, then ask again with its result.
    Handle,
    /// It came back `redelivered`: republish it to its own queue with
    /// `x-courier-redeliveries = n` (classic queues have no delivery limit), confirm, then ack.
    CountRedelivery {
        /// Redeliveries including this one.
        n: u32,
    },
    /// Done with this queue: ack, retry tier or dead letter.
    Settle(Action),
}

/// How a message leaves its work queue.
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
        /// Handler attempts made: including this one if the handler ran, the recorded count if
        /// the message was refused before it (malformed, crash loop).
        attempts: u32,
        /// The error to record.
        error: String,
    },
}

/// Decides where a delivery goes next, checking in this order:
///
/// 1. redelivered, with the count enabled → past `max_redeliveries`: dead letter (`crash-loop`);
///    otherwise count it ([`Next::CountRedelivery`]). A message that crashes the worker must
///    not reach the handler again unbounded;
/// 2. no `message_id`, or a body that is not JSON → dead letter (`malformed`); the handler is
///    never called with either;
/// 3. handler not run yet → [`Next::Handle`];
/// 4. the handler's result → [`decide`]; a retry tier the work queue has no queue for → dead
///    letter (`max-attempts`), as no copy can wait there.
///
/// [`Next::Handle`] is returned only while `facts.handled` is `None`, so a worker asks at most
/// twice per delivery.
pub fn next(facts: &Facts, limits: &Limits) -> Next {
    let refuse = |reason, error: &str| {
        Next::Settle(Action::DeadLetter {
            reason,
            attempts: facts.attempts,
            error: error.to_owned(),
        })
    };
    if facts.redelivered && limits.max_redeliveries > 0 {
        let n = facts.redeliveries.saturating_add(1);
        if n > limits.max_redeliveries {
            return refuse(
                Reason::CrashLoop,
                &format!("redelivered {n} times without an outcome: a worker holding it crashed, was killed or lost its channel each time"),
            );
        }
        return Next::CountRedelivery { n };
    }
    if !facts.has_message_id {
        return refuse(Reason::Malformed, NO_MESSAGE_ID);
    }
    if let Some(why) = &facts.invalid_body {
        return refuse(Reason::Malformed, why);
    }
    let Some(result) = &facts.handled else {
        return Next::Handle;
    };
    match decide(facts.attempts, result, &limits.retry) {
        Action::Retry {
            tier,
            attempts,
            error,
        } if tier >= limits.retry_queues => Next::Settle(Action::DeadLetter {
            reason: Reason::MaxAttempts,
            attempts,
            error,
        }),
        action => Next::Settle(action),
    }
}

/// Decides the next hop after attempt number `prior_attempts + 1` ended with `result` (the
/// last step of [`next`], which also checks that the chosen tier has a queue).
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

    /// A well-formed first delivery, the handler not run yet.
    fn fresh() -> Facts {
        Facts {
            redelivered: false,
            redeliveries: 0,
            has_message_id: true,
            invalid_body: None,
            attempts: 0,
            handled: None,
        }
    }

    fn limits() -> Limits {
        Limits {
            retry: policy(),
            retry_queues: 3,
            max_redeliveries: 5,
        }
    }

    fn dead(reason: Reason, attempts: u32, error: &str) -> Next {
        Next::Settle(Action::DeadLetter {
            reason,
            attempts,
            error: error.into(),
        })
    }

    #[test]
    fn a_well_formed_message_goes_to_the_handler() {
        assert_eq!(next(&fresh(), &limits()), Next::Handle);
    }

    #[test]
    fn a_handled_message_never_goes_to_the_handler_again() {
        let handled = |result| Facts {
            handled: Some(result),
            ..fresh()
        };
        assert_eq!(next(&handled(Ok(())), &limits()), Next::Settle(Action::Ack));
        assert_eq!(
            next(&handled(Err(HandlerError::retryable("boom"))), &limits()),
            Next::Settle(retry(0, 1))
        );
        assert_eq!(
            next(
                &handled(Err(HandlerError::permanent("HTTP 400"))),
                &limits()
            ),
            dead(Reason::Permanent, 1, "HTTP 400")
        );
        let exhausted = Facts {
            attempts: 4,
            ..handled(Err(HandlerError::retryable("boom")))
        };
        assert_eq!(
            next(&exhausted, &limits()),
            dead(Reason::MaxAttempts, 5, "boom")
        );
    }

    #[test]
    fn a_redelivery_is_counted_until_the_bound() {
        let redelivered = |redeliveries| Facts {
            redelivered: true,
            redeliveries,
            attempts: 2,
            ..fresh()
        };
        assert_eq!(
            next(&redelivered(0), &limits()),
            Next::CountRedelivery { n: 1 }
        );
        assert_eq!(
            next(&redelivered(4), &limits()),
            Next::CountRedelivery { n: 5 }
        );
        // Past the bound: dead-lettered with the recorded attempts (the handler did not run).
        let Next::Settle(Action::DeadLetter {
            reason,
            attempts,
            error,
        }) = next(&redelivered(5), &limits())
        else {
            panic!("expected a crash-loop dead letter");
        };
        assert_eq!((reason, attempts), (Reason::CrashLoop, 2));
        assert!(error.contains("redelivered 6 times"), "{error}");
        // A hostile count saturates instead of overflowing.
        assert!(matches!(
            next(&redelivered(u32::MAX), &limits()),
            Next::Settle(Action::DeadLetter {
                reason: Reason::CrashLoop,
                ..
            })
        ));
    }

    #[test]
    fn a_redelivery_is_counted_before_the_message_is_checked() {
        // As before the split: the count comes first, so even a malformed message that crashes
        // workers ends as crash-loop rather than reaching any other check again and again.
        let f = Facts {
            redelivered: true,
            has_message_id: false,
            invalid_body: Some("body is not valid JSON".into()),
            ..fresh()
        };
        assert_eq!(next(&f, &limits()), Next::CountRedelivery { n: 1 });
    }

    #[test]
    fn with_the_count_disabled_a_redelivery_is_handled_like_any_message() {
        let f = Facts {
            redelivered: true,
            redeliveries: 1_000,
            ..fresh()
        };
        let l = Limits {
            max_redeliveries: 0,
            ..limits()
        };
        assert_eq!(next(&f, &l), Next::Handle);
    }

    #[test]
    fn a_message_without_an_id_is_malformed_even_with_a_bad_body() {
        let f = Facts {
            has_message_id: false,
            invalid_body: Some("body is not valid JSON".into()),
            attempts: 3,
            ..fresh()
        };
        assert_eq!(
            next(&f, &limits()),
            dead(Reason::Malformed, 3, NO_MESSAGE_ID)
        );
    }

    #[test]
    fn a_body_that_is_not_json_is_malformed() {
        let f = Facts {
            invalid_body: Some("body is not valid JSON: EOF".into()),
            ..fresh()
        };
        assert_eq!(
            next(&f, &limits()),
            dead(Reason::Malformed, 0, "body is not valid JSON: EOF")
        );
    }

    #[test]
    fn a_tier_without_a_queue_dead_letters_as_max_attempts() {
        let failed = |attempts| Facts {
            attempts,
            handled: Some(Err(HandlerError::retryable("boom"))),
            ..fresh()
        };
        let one_queue = Limits {
            retry_queues: 1,
            ..limits()
        };
        assert_eq!(next(&failed(0), &one_queue), Next::Settle(retry(0, 1)));
        assert_eq!(
            next(&failed(1), &one_queue),
            dead(Reason::MaxAttempts, 2, "boom")
        );
        let no_queues = Limits {
            retry_queues: 0,
            ..limits()
        };
        assert_eq!(
            next(&failed(0), &no_queues),
            dead(Reason::MaxAttempts, 1, "boom")
        );
    }
}
