//! What the demo publishes and what should become of each message.
//!
//! Each message's fate is a stable function of its id (the sink's rules), and each fate is run
//! through the worker's own [`decide`] with the topology's retry policy, so the expected column
//! of the summary follows the topology instead of being written down by hand. Kept apart from
//! the run so the prediction is pure and unit-tested.

use super::DemoArgs;
use crate::cli::sink::{answer, Fate as SinkFate, Rules};
use anyhow::bail;
use courier::envelope::{self, Reason};
use courier::handler::http::{classify, parse_retry_after};
use courier::handler::{FailureKind, HandlerError};
use courier::outcome::{decide, Action};
use courier::publisher::Outgoing;
use courier::topology::RetryPolicy;
use lapin::BasicProperties;
use rand::Rng;
use std::collections::BTreeMap;
use std::time::Duration;

/// Basis points (1/100 of a percent) of the batch published as non-JSON bodies: 0.5 %.
const MALFORMED_BP: u64 = 50;
/// Percent answered `429` with `Retry-After: 1` on the first attempt.
const RATE_LIMITED_PERCENT: f64 = 1.0;
/// Share of messages (in percent) published with priority 9, the rest 0-8.
const URGENT_PERCENT: u32 = 10;

/// What becomes of one message of the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum Fate {
    /// Well-formed: the sink answers every attempt by its rules.
    Sink(SinkFate),
    /// Published with a non-JSON body; the worker dead-letters it without calling the sink.
    Malformed,
}

/// The sink's rules for the demo's shares, plus 1 % answered `429 Retry-After: 1` on the first
/// attempt (shrunk if the other shares leave less room).
///
/// # Errors
/// When `--fail-transient`, `--fail-permanent` and `--fail-always` add up to more than 100 %.
pub(super) fn rules(args: &DemoArgs) -> anyhow::Result<Rules> {
    let Some(rules) = Rules::new(args.fail_transient, args.fail_permanent, args.fail_always) else {
        bail!(
            "--fail-transient {} + --fail-permanent {} + --fail-always {} add up to more than 100 %",
            args.fail_transient,
            args.fail_permanent,
            args.fail_always
        );
    };
    // The 429 share shows Retry-After at work; it shrinks rather than break the sum.
    Ok(rules.with_rate_limited(RATE_LIMITED_PERCENT))
}

/// How one message travels, predicted by running the sink's answers through the worker's own
/// [`decide`] with the topology's retry policy.
#[derive(Debug, Clone, Default)]
struct Journey {
    /// The attempt that succeeds, if any.
    delivered_on: Option<u32>,
    /// Retry tiers visited, by index.
    tiers: Vec<usize>,
    /// The dead-letter reason, if it ends in the DLQ.
    dead_letter: Option<Reason>,
    /// Time spent waiting in retry tiers.
    waiting: Duration,
}

fn predict(fate: Fate, policy: &RetryPolicy) -> Journey {
    let mut path = Journey::default();
    let fate = match fate {
        Fate::Sink(f) => f,
        Fate::Malformed => {
            path.dead_letter = Some(Reason::Malformed);
            return path;
        }
    };
    let mut prior = 0u32;
    loop {
        let a = answer(fate, prior.saturating_add(1));
        // The same mapping as the HTTP handler: classify the status, honour Retry-After.
        let result = match classify(a.status) {
            None => Ok(()),
            Some(FailureKind::Permanent) => Err(HandlerError::permanent(a.body)),
            Some(FailureKind::Retryable) => {
                let e = HandlerError::retryable(a.body);
                Err(match a.retry_after.and_then(parse_retry_after) {
                    Some(d) => e.with_retry_after(d),
                    None => e,
                })
            }
        };
        match decide(prior, &result, policy) {
            Action::Ack => {
                path.delivered_on = Some(prior.saturating_add(1));
                return path;
            }
            Action::Retry { tier, attempts, .. } => {
                path.tiers.push(tier);
                path.waiting += policy.tiers.get(tier).copied().unwrap_or_default();
                prior = attempts;
            }
            Action::DeadLetter { reason, .. } => {
                path.dead_letter = Some(reason);
                return path;
            }
        }
    }
}

/// What the whole batch should produce.
#[derive(Debug, Clone, Default)]
pub(super) struct Expected {
    /// Messages answered 2xx in the end.
    pub(super) delivered: u64,
    /// Of those, on the first attempt.
    pub(super) first_try: u64,
    /// Of those, on a later attempt.
    pub(super) after_retry: u64,
    /// Retry copies, by tier index.
    pub(super) retries: Vec<u64>,
    /// Dead letters, by reason.
    pub(super) dead: BTreeMap<Reason, u64>,
    /// The longest wait in retry tiers of any message.
    pub(super) longest_wait: Duration,
}

impl Expected {
    pub(super) fn of(counts: &BTreeMap<Fate, u64>, policy: &RetryPolicy) -> Self {
        let mut e = Self {
            retries: vec![0; policy.tiers.len()],
            ..Self::default()
        };
        for (&fate, &n) in counts {
            if n == 0 {
                continue;
            }
            let p = predict(fate, policy);
            match p.delivered_on {
                Some(1) => e.first_try += n,
                Some(_) => e.after_retry += n,
                None => {}
            }
            if p.delivered_on.is_some() {
                e.delivered += n;
            }
            for t in &p.tiers {
                if let Some(slot) = e.retries.get_mut(*t) {
                    *slot += n;
                }
            }
            if let Some(r) = p.dead_letter {
                *e.dead.entry(r).or_insert(0) += n;
            }
            e.longest_wait = e.longest_wait.max(p.waiting);
        }
        e
    }

    pub(super) fn dead_total(&self) -> u64 {
        self.dead.values().sum()
    }
}

// ---------------------------------------------------------------------------------------------
// The batch
// ---------------------------------------------------------------------------------------------

/// The messages to publish, with what the intro and the summary say about them.
pub(super) struct Batch {
    /// Ready to publish, in id order.
    pub(super) messages: Vec<Outgoing>,
    /// Every message id, to find the ones neither delivered nor dead-lettered.
    pub(super) ids: Vec<String>,
    /// How many messages have each fate: the basis of the expected column.
    pub(super) fates: BTreeMap<Fate, u64>,
    /// Messages per channel (routing key).
    pub(super) by_route: BTreeMap<String, u64>,
    /// Messages at priority 9.
    pub(super) urgent: u64,
}

/// Builds the batch: ids `demo-<n>`, a random channel, priority 9 for about one in ten and 0-8
/// otherwise; evenly spread malformed bodies (0.5 %, at least one) so the `malformed` reason
/// always shows.
pub(super) fn plan(n: u64, rules: &Rules, routes: &[(String, String)]) -> Batch {
    let malformed = ((n * MALFORMED_BP + 5_000) / 10_000).clamp(1, n);
    let mut rng = rand::rng();
    let mut batch = Batch {
        messages: Vec::new(),
        ids: Vec::new(),
        fates: BTreeMap::new(),
        by_route: BTreeMap::new(),
        urgent: 0,
    };
    for i in 0..n {
        let id = format!("demo-{i}");
        // Exactly `malformed` indexes, evenly spaced (where floor(i * m / n) steps up).
        let is_malformed = (i + 1) * malformed / n != i * malformed / n;
        let fate = if is_malformed {
            Fate::Malformed
        } else {
            Fate::Sink(rules.fate(&id))
        };
        let (exchange, channel) = &routes[rng.random_range(0..routes.len())];
        let priority: u8 = if rng.random_range(0..100) < URGENT_PERCENT {
            9
        } else {
            rng.random_range(0..=8)
        };
        let body = if is_malformed {
            // A buggy publisher: claims JSON, sends text.
            format!("to=user{i}@example.com; text=not JSON at all ({id})").into_bytes()
        } else {
            job_body(channel, i, priority).into_bytes()
        };
        *batch.fates.entry(fate).or_insert(0) += 1;
        *batch.by_route.entry(channel.clone()).or_insert(0) += 1;
        batch.urgent += u64::from(priority == 9);
        batch.messages.push(Outgoing {
            exchange: exchange.clone(),
            routing_key: channel.clone(),
            properties: BasicProperties::default()
                .with_message_id(id.as_str().into())
                .with_priority(priority)
                .with_delivery_mode(2)
                .with_content_type("application/json".into())
                .with_timestamp(u64::try_from(envelope::now_millis() / 1000).unwrap_or(0)),
            body,
        });
        batch.ids.push(id);
    }
    batch
}

/// A plausible body for each channel, so a `courier-dlq show` looks like real traffic.
fn job_body(channel: &str, i: u64, priority: u8) -> String {
    let urgent = priority == 9;
    let v = match channel {
        "email" => serde_json::json!({
            "to": format!("user{i}@example.com"),
            "subject": if urgent { "Your sign-in code" } else { "Your weekly digest" },
            "text": format!("Hello from courier demo, message {i}"),
        }),
        "sms" => serde_json::json!({
            "to": format!("+1555{:07}", i % 10_000_000),
            "text": format!("courier demo {i}"),
        }),
        "push" => serde_json::json!({
            "device": format!("device-{i}"),
            "title": if urgent { "Security alert" } else { "New activity" },
            "body": format!("courier demo {i}"),
        }),
        other => serde_json::json!({
            "event": format!("demo.{other}"),
            "data": { "n": i, "urgent": urgent },
        }),
    };
    v.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::demo::routes;
    use crate::cli::demo::tests::demo_topology;
    use crate::cli::sink::parse_percent;
    use std::collections::HashMap;

    fn shares(transient: f64, permanent: f64, always: f64) -> Rules {
        rules(&DemoArgs {
            messages: 1000,
            workers: 1,
            fail_transient: transient,
            fail_permanent: permanent,
            fail_always: always,
            keep: false,
            console: false,
            clean: false,
            management_url: None,
            timeout: None,
        })
        .expect("valid shares")
    }

    #[test]
    fn fates_are_stable_and_close_to_the_shares() {
        let r = shares(15.0, 3.0, 2.0);
        let mut counts: HashMap<SinkFate, u32> = HashMap::new();
        for i in 0..100_000 {
            let id = format!("demo-{i}");
            assert_eq!(r.fate(&id), r.fate(&id));
            *counts.entry(r.fate(&id)).or_insert(0) += 1;
        }
        let share = |f: SinkFate| f64::from(counts.get(&f).copied().unwrap_or(0)) / 1000.0;
        assert!(
            (share(SinkFate::Transient) - 15.0).abs() < 0.7,
            "{counts:?}"
        );
        assert!((share(SinkFate::Permanent) - 3.0).abs() < 0.3, "{counts:?}");
        assert!(
            (share(SinkFate::AlwaysFails) - 2.0).abs() < 0.3,
            "{counts:?}"
        );
        assert!(
            (share(SinkFate::RateLimited) - 1.0).abs() < 0.3,
            "{counts:?}"
        );
    }

    #[test]
    fn shares_over_100_percent_are_refused_and_429_shrinks_to_fit() {
        let args = DemoArgs {
            messages: 1,
            workers: 1,
            fail_transient: 90.0,
            fail_permanent: 10.0,
            fail_always: 1.0,
            keep: false,
            console: false,
            clean: false,
            management_url: None,
            timeout: None,
        };
        assert!(rules(&args).is_err());
        assert_eq!(
            shares(90.0, 10.0, 0.0).basis_points(SinkFate::RateLimited),
            0
        );
        assert!(parse_percent("101").is_err());
        assert!(parse_percent("x").is_err());
        assert_eq!(parse_percent("2.5%").ok(), Some(2.5));
    }

    #[test]
    fn predicted_paths_follow_the_worker_rules() {
        let policy = demo_topology().retry;
        let ok = predict(Fate::Sink(SinkFate::Deliver), &policy);
        assert_eq!((ok.delivered_on, ok.tiers.len()), (Some(1), 0));
        let t = predict(Fate::Sink(SinkFate::Transient), &policy);
        assert_eq!((t.delivered_on, t.tiers.clone()), (Some(2), vec![0]));
        // Retry-After: 1 picks the first tier of at least 1s (2s), not the 500ms one.
        let rl = predict(Fate::Sink(SinkFate::RateLimited), &policy);
        assert_eq!((rl.delivered_on, rl.tiers.clone()), (Some(2), vec![1]));
        let p = predict(Fate::Sink(SinkFate::Permanent), &policy);
        assert_eq!(p.dead_letter, Some(Reason::Permanent));
        assert!(p.tiers.is_empty());
        let a = predict(Fate::Sink(SinkFate::AlwaysFails), &policy);
        assert_eq!(a.dead_letter, Some(Reason::MaxAttempts));
        assert_eq!(a.tiers, vec![0, 1, 2]);
        assert_eq!(a.waiting, Duration::from_millis(7_500));
        assert_eq!(
            predict(Fate::Malformed, &policy).dead_letter,
            Some(Reason::Malformed)
        );
    }

    #[test]
    fn plan_spreads_malformed_messages_and_uses_demo_ids() {
        let t = demo_topology();
        let r = shares(15.0, 3.0, 2.0);
        let b = plan(1000, &r, &routes(&t));
        assert_eq!(b.ids.len(), 1000);
        assert_eq!(b.ids[7], "demo-7");
        assert_eq!(b.fates.get(&Fate::Malformed), Some(&5));
        assert_eq!(
            plan(10, &r, &routes(&t)).fates.get(&Fate::Malformed),
            Some(&1)
        );
        assert_eq!(
            plan(1, &r, &routes(&t)).fates.get(&Fate::Malformed),
            Some(&1)
        );
        assert!(b.messages.iter().all(|m| m.properties.priority().is_some()));
        let e = Expected::of(&b.fates, &t.retry);
        assert_eq!(e.delivered + e.dead_total(), 1000);
        assert_eq!(e.first_try + e.after_retry, e.delivered);
    }
}
