//! The dead-letter contract: what a message in the dead-letter queue says about itself, and how
//! a replayed copy of it looks. Pure logic, no I/O.
//!
//! - [`DeadLetter`]: one message of the dead-letter queue, read from the fleet's `x-courier-*`
//!   headers and, for messages the broker dead-lettered itself, from RabbitMQ's `x-death`
//!   ([`Death`]). Every field falls back independently (courier header, then `x-death`, then
//!   the `timestamp` property), so a message that carries both is still described fully.
//! - [`replay_headers`], [`replay_destination`] and [`replayed`]: how a replayed copy looks,
//!   where it goes and how often it went already; [`REPLAY_DROPPED_HEADERS`] is what it loses.
//!
//! It lives in the library because the worker writes these headers ([`crate::envelope`]) and
//! every tool that reads or replays dead letters must agree with it. What one tool does with
//! them (the filters, groupings and rendering of `courier-dlq`, and its export file format)
//! lives in that tool's crate.

use crate::envelope::{self, int_header, str_header};
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// RabbitMQ's dead-letter history header: an array of tables, most recent death first.
pub const X_DEATH: &str = "x-death";

/// The delivery counter quorum queues add; broker-owned, so a replayed copy drops it.
pub const X_DELIVERY_COUNT: &str = "x-delivery-count";

/// Reasons RabbitMQ writes in `x-death` that are not also Courier reasons.
pub const BROKER_REASONS: &[&str] = &["maxlen", "delivery_limit"];

/// Headers a replayed copy must not carry: the failure record of the last life (attempts start
/// again from zero, and a stale reason or error would be mistaken for a new one) and the
/// broker's death records (on 3.10 a stale `x-death` makes the broker drop the message as a
/// dead-letter cycle; from 3.13 it ignores client-set ones anyway). `x-courier-original-*` are
/// kept: they still say where the message belongs.
pub const REPLAY_DROPPED_HEADERS: &[&str] = &[
    envelope::ATTEMPTS,
    envelope::REASON,
    envelope::ERROR,
    envelope::DEAD_LETTERED_AT,
    envelope::FIRST_FAILED_AT,
    envelope::REDELIVERIES,
    X_DELIVERY_COUNT,
];

// ---------------------------------------------------------------------------------------------
// x-death
// ---------------------------------------------------------------------------------------------

/// One entry of RabbitMQ's `x-death` header: a queue the message died in, and how often.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Death {
    /// The queue it was dead-lettered from.
    pub queue: String,
    /// `rejected`, `expired`, `maxlen` or `delivery_limit`.
    pub reason: String,
    /// How many times it died in this queue for this reason.
    pub count: i64,
    /// When it died the last time (epoch milliseconds; the header has whole seconds).
    pub time_ms: Option<i64>,
    /// The exchange it had been published to before it died there.
    pub exchange: String,
    /// The routing keys it had (its routing key, then CC/BCC ones).
    pub routing_keys: Vec<String>,
    /// Its per-message TTL, when that is what expired it.
    pub original_expiration: Option<String>,
}

impl Death {
    /// Reads one `x-death` table; `None` if it is not a table.
    fn read(value: &AMQPValue) -> Option<Self> {
        let AMQPValue::FieldTable(t) = value else {
            return None;
        };
        let t = Some(t);
        let routing_keys = match t.and_then(|t| t.inner().get("routing-keys")) {
            Some(AMQPValue::FieldArray(a)) => a.as_slice().iter().filter_map(str_value).collect(),
            _ => Vec::new(),
        };
        Some(Self {
            queue: str_header(t, "queue").unwrap_or_default(),
            reason: str_header(t, "reason").unwrap_or_default(),
            count: int_header(t, "count").unwrap_or(1),
            time_ms: int_header(t, "time").and_then(|s| s.checked_mul(1000)),
            exchange: str_header(t, "exchange").unwrap_or_default(),
            routing_keys,
            original_expiration: str_header(t, "original-expiration"),
        })
    }

    /// Every entry of the message's `x-death` header, most recent first (as RabbitMQ orders
    /// them); empty when there is none or it is not an array.
    pub fn all(headers: Option<&FieldTable>) -> Vec<Self> {
        match headers.and_then(|h| h.inner().get(X_DEATH)) {
            Some(AMQPValue::FieldArray(a)) => a.as_slice().iter().filter_map(Self::read).collect(),
            _ => Vec::new(),
        }
    }
}

fn str_value(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// The dead letter
// ---------------------------------------------------------------------------------------------

/// An exchange and routing key to publish to (`""` is the default exchange: the key is a queue).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Destination {
    /// Exchange name, `""` for the default exchange.
    pub exchange: String,
    /// Routing key.
    pub routing_key: String,
}

impl Destination {
    /// Straight to `queue` through the default exchange.
    pub fn queue(queue: &str) -> Self {
        Self {
            exchange: String::new(),
            routing_key: queue.to_owned(),
        }
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.exchange.is_empty() {
            write!(f, "queue {}", self.routing_key)
        } else {
            write!(f, "{} / {}", self.exchange, self.routing_key)
        }
    }
}

/// Where a dead letter's facts came from, for `show`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A Courier worker dead-lettered it (`x-courier-reason` is set).
    Worker,
    /// RabbitMQ dead-lettered it itself (`x-death`, no `x-courier-reason`).
    Broker,
    /// Neither: someone published it into the DLQ directly.
    Unknown,
}

/// One message of the dead-letter queue, as the tool describes, filters and replays it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The `message_id` property.
    pub message_id: Option<String>,
    /// `x-courier-reason`, else the reason of the most recent `x-death` entry.
    pub reason: Option<String>,
    /// `x-courier-error` (the last error, truncated by the worker).
    pub error: Option<String>,
    /// Where a replay sends it: `x-courier-original-exchange`/`-routing-key`, else the exchange
    /// and first routing key of the most recent `x-death` entry.
    pub origin: Option<Destination>,
    /// `x-courier-original-queue`, else the queue of the most recent `x-death` entry.
    pub original_queue: Option<String>,
    /// `x-courier-attempts`: handler attempts made.
    pub attempts: Option<u32>,
    /// `x-courier-first-failed-at` (epoch ms).
    pub first_failed_at_ms: Option<i64>,
    /// When it was dead-lettered (epoch ms): `x-courier-dead-lettered-at`, else the most recent
    /// `x-death` time, else the `timestamp` property. Ages and `--older-than` use it.
    pub dead_lettered_at_ms: Option<i64>,
    /// `x-courier-replayed`: how many times `courier-dlq replay` sent it back already.
    pub replayed: u32,
    /// RabbitMQ's death records, most recent first.
    pub deaths: Vec<Death>,
    /// Who dead-lettered it.
    pub source: Source,
    /// Body size in bytes.
    pub body_len: usize,
}

impl DeadLetter {
    /// Describes a message from its properties and body size. Never fails: hostile or missing
    /// headers only leave fields empty.
    pub fn read(props: &BasicProperties, body_len: usize) -> Self {
        let h = props.headers().as_ref();
        let deaths = Death::all(h);
        let last = deaths.first();
        let courier_reason = str_header(h, envelope::REASON);
        let source = if courier_reason.is_some() {
            Source::Worker
        } else if last.is_some() {
            Source::Broker
        } else {
            Source::Unknown
        };
        let origin = match str_header(h, envelope::ORIGINAL_ROUTING_KEY) {
            Some(routing_key) => Some(Destination {
                exchange: str_header(h, envelope::ORIGINAL_EXCHANGE).unwrap_or_default(),
                routing_key,
            }),
            None => last.and_then(|d| {
                d.routing_keys.first().map(|k| Destination {
                    exchange: d.exchange.clone(),
                    routing_key: k.clone(),
                })
            }),
        };
        let timestamp_ms = props
            .timestamp()
            .and_then(|s| i64::try_from(s).ok())
            .and_then(|s| s.checked_mul(1000));
        Self {
            message_id: envelope::message_id(props).map(str::to_owned),
            reason: courier_reason.or_else(|| last.map(|d| d.reason.clone())),
            error: str_header(h, envelope::ERROR),
            original_queue: str_header(h, envelope::ORIGINAL_QUEUE)
                .or_else(|| last.map(|d| d.queue.clone())),
            origin,
            attempts: int_header(h, envelope::ATTEMPTS)
                .map(|n| u32::try_from(n.min(i64::from(u32::MAX))).unwrap_or(u32::MAX)),
            first_failed_at_ms: int_header(h, envelope::FIRST_FAILED_AT),
            dead_lettered_at_ms: int_header(h, envelope::DEAD_LETTERED_AT)
                .or_else(|| last.and_then(|d| d.time_ms))
                .or(timestamp_ms),
            replayed: replayed(h),
            deaths,
            source,
            body_len,
        }
    }

    /// Time since it was dead-lettered; `None` when no time is known (or it is in the future).
    pub fn age(&self, now_ms: i64) -> Option<Duration> {
        let at = self.dead_lettered_at_ms?;
        let ms = now_ms.checked_sub(at)?;
        u64::try_from(ms).ok().map(Duration::from_millis)
    }
}

/// `x-courier-replayed` of a message (0 when absent or garbage).
pub fn replayed(headers: Option<&FieldTable>) -> u32 {
    int_header(headers, envelope::REPLAYED)
        .map(|n| u32::try_from(n.min(1_000_000)).unwrap_or(0))
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Replay
// ---------------------------------------------------------------------------------------------

/// Headers of a replayed copy: the message's own headers without the last life's failure record
/// and the broker's death records (see [`REPLAY_DROPPED_HEADERS`]), with `x-courier-replayed`
/// incremented so that a message that keeps failing after replays is visible.
pub fn replay_headers(headers: Option<&FieldTable>) -> FieldTable {
    let kept: BTreeMap<_, _> = envelope::clean_headers(headers)
        .inner()
        .iter()
        .filter(|(k, _)| !REPLAY_DROPPED_HEADERS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut out = FieldTable::from(kept);
    let n = replayed(headers).saturating_add(1);
    out.insert(
        envelope::REPLAYED.into(),
        AMQPValue::LongLongInt(i64::from(n)),
    );
    out
}

/// Where a replay publishes: `--to-queue` if given, else the message's origin. `None` when the
/// message does not say where it came from (it then stays in the DLQ).
pub fn replay_destination(dl: &DeadLetter, to_queue: Option<&str>) -> Option<Destination> {
    match to_queue {
        Some(q) => Some(Destination::queue(q)),
        None => dl.origin.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{dead_letter_headers, Origin, Reason};
    use lapin::types::{FieldArray, LongString};

    fn long(s: &str) -> AMQPValue {
        AMQPValue::LongString(LongString::from(s))
    }

    fn table(pairs: &[(&str, AMQPValue)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in pairs {
            t.insert((*k).into(), v.clone());
        }
        t
    }

    fn origin() -> Origin {
        Origin {
            exchange: "p.notifications".into(),
            routing_key: "email".into(),
            queue: "p.notifications.email".into(),
        }
    }

    fn worker_dead_letter(error: &str, at: i64) -> BasicProperties {
        let h = dead_letter_headers(None, 5, Reason::MaxAttempts, error, &origin(), at);
        BasicProperties::default()
            .with_message_id("m-1".into())
            .with_headers(h)
    }

    /// What RabbitMQ 3.10 writes when a message expires in `q` (published to `ex`/`key`).
    fn broker_dead_letter(q: &str, ex: &str, key: &str, time_s: u64) -> BasicProperties {
        let death = table(&[
            ("count", AMQPValue::LongLongInt(1)),
            ("exchange", long(ex)),
            ("queue", long(q)),
            ("reason", long("expired")),
            (
                "routing-keys",
                AMQPValue::FieldArray(FieldArray::from(vec![long(key)])),
            ),
            ("time", AMQPValue::Timestamp(time_s)),
        ]);
        let h = table(&[
            (
                X_DEATH,
                AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(death)])),
            ),
            ("x-first-death-queue", long(q)),
            ("x-first-death-reason", long("expired")),
            ("tenant", long("acme")),
        ]);
        BasicProperties::default()
            .with_message_id("b-1".into())
            .with_headers(h)
    }

    #[test]
    fn reads_a_worker_dead_letter() {
        let dl = DeadLetter::read(
            &worker_dead_letter("HTTP 503 Service Unavailable: x", 1000),
            42,
        );
        assert_eq!(dl.source, Source::Worker);
        assert_eq!(dl.reason.as_deref(), Some("max-attempts"));
        assert_eq!(dl.attempts, Some(5));
        assert_eq!(dl.original_queue.as_deref(), Some("p.notifications.email"));
        assert_eq!(
            dl.origin,
            Some(Destination {
                exchange: "p.notifications".into(),
                routing_key: "email".into()
            })
        );
        assert_eq!(dl.dead_lettered_at_ms, Some(1000));
        assert_eq!(dl.age(61_000), Some(Duration::from_secs(60)));
        assert_eq!(dl.body_len, 42);
        assert_eq!(dl.replayed, 0);
    }

    #[test]
    fn reads_a_broker_dead_letter_from_x_death() {
        let dl = DeadLetter::read(&broker_dead_letter("p.ttl", "", "p.ttl", 1_700_000_000), 0);
        assert_eq!(dl.source, Source::Broker);
        assert_eq!(dl.reason.as_deref(), Some("expired"));
        assert_eq!(dl.original_queue.as_deref(), Some("p.ttl"));
        assert_eq!(dl.origin, Some(Destination::queue("p.ttl")));
        assert_eq!(dl.dead_lettered_at_ms, Some(1_700_000_000_000));
        assert_eq!(dl.deaths.len(), 1);
        assert_eq!(dl.deaths[0].count, 1);
        assert_eq!(dl.attempts, None);
    }

    #[test]
    fn hostile_headers_never_panic_and_fall_back_to_the_timestamp() {
        let h = table(&[
            (X_DEATH, long("not an array")),
            (envelope::REPLAYED, AMQPValue::LongLongInt(-3)),
            (envelope::ATTEMPTS, AMQPValue::Boolean(true)),
        ]);
        let props = BasicProperties::default()
            .with_headers(h)
            .with_timestamp(10);
        let dl = DeadLetter::read(&props, 0);
        assert_eq!(dl.source, Source::Unknown);
        assert!(dl.deaths.is_empty());
        assert_eq!(dl.replayed, 0);
        assert_eq!(dl.attempts, None);
        assert_eq!(dl.dead_lettered_at_ms, Some(10_000));
        assert_eq!(dl.age(5_000), None, "a time in the future has no age");
        let odd = table(&[(
            X_DEATH,
            AMQPValue::FieldArray(FieldArray::from(vec![long("x"), AMQPValue::Void])),
        )]);
        let dl = DeadLetter::read(&BasicProperties::default().with_headers(odd), 0);
        assert!(dl.deaths.is_empty());
        assert_eq!(dl.origin, None);
    }

    #[test]
    fn replay_headers_reset_the_failure_record_and_count_replays() {
        let mut h = dead_letter_headers(
            Some(&table(&[
                ("tenant", long("acme")),
                (envelope::REDELIVERIES, AMQPValue::LongLongInt(2)),
                (X_DEATH, AMQPValue::FieldArray(FieldArray::default())),
                ("x-last-death-queue", long("q")),
                (X_DELIVERY_COUNT, AMQPValue::LongLongInt(3)),
            ])),
            5,
            Reason::Permanent,
            "HTTP 400",
            &origin(),
            7,
        );
        h.insert(envelope::REPLAYED.into(), AMQPValue::LongInt(2));
        let r = replay_headers(Some(&h));
        for gone in REPLAY_DROPPED_HEADERS
            .iter()
            .chain(envelope::BROKER_DEATH_HEADERS)
        {
            assert!(!r.inner().contains_key(*gone), "{gone} must be dropped");
        }
        assert_eq!(str_header(Some(&r), "tenant").as_deref(), Some("acme"));
        assert_eq!(
            str_header(Some(&r), envelope::ORIGINAL_QUEUE).as_deref(),
            Some("p.notifications.email")
        );
        assert_eq!(
            r.inner().get(envelope::REPLAYED),
            Some(&AMQPValue::LongLongInt(3))
        );
        assert_eq!(envelope::attempts(Some(&r)), 0);
        let first = replay_headers(None);
        assert_eq!(int_header(Some(&first), envelope::REPLAYED), Some(1));
    }

    #[test]
    fn replay_destination_prefers_to_queue_then_origin() {
        let dl = DeadLetter::read(&worker_dead_letter("e", 1), 0);
        assert_eq!(
            replay_destination(&dl, Some("q")),
            Some(Destination::queue("q"))
        );
        assert_eq!(replay_destination(&dl, None), dl.origin.clone());
        let bare = DeadLetter::read(&BasicProperties::default(), 0);
        assert_eq!(replay_destination(&bare, None), None);
    }
}
