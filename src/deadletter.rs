//! Dead letters as `courier-dlq` sees them: pure logic, no I/O.
//!
//! - [`DeadLetter`]: one message of the dead-letter queue, read from the fleet's `x-courier-*`
//!   headers and, for messages the broker dead-lettered itself, from RabbitMQ's `x-death`
//!   ([`Death`]). Every field falls back independently (courier header, then `x-death`, then
//!   the `timestamp` property), so a message that carries both is still described fully.
//! - [`Filter`]: the selection flags of every selecting command (`--reason`, `--from-queue`,
//!   `--error-contains`, `--older-than`, `--newer-than`, `--message-id`, `--header`), parsed
//!   from text into a value that cannot be invalid; a bad flag is a [`FilterError`] naming the
//!   flag, the value and the expected form.
//! - [`replay_headers`] and [`replay_destination`]: how a replayed copy looks and where it goes.
//! - [`Stats`] and [`Plan`]: what `stats` and `replay --dry-run` print, aggregated with bounded
//!   memory.
//! - [`type_name`] and [`display_value`]: AMQP field values named and shown readably, shared by
//!   `show` and the export format so both call a type the same thing.
//!
//! The export file format (typed JSON lines) lives in the `courier-dlq` crate because it needs a
//! base64 codec this library does not depend on.

use crate::envelope::{self, int_header, str_header, Reason};
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

/// RabbitMQ's dead-letter history header: an array of tables, most recent death first.
pub const X_DEATH: &str = "x-death";

/// The delivery counter quorum queues add; broker-owned, so a replayed copy drops it.
pub const X_DELIVERY_COUNT: &str = "x-delivery-count";

/// Reasons RabbitMQ writes in `x-death` that are not also Courier reasons.
pub const BROKER_REASONS: &[&str] = &["maxlen", "delivery_limit"];

/// How many distinct groups [`Stats`] and [`Plan`] keep per dimension before folding the rest
/// into one "(other)" row, so a DLQ full of unique errors cannot grow the tool's memory.
pub const MAX_GROUPS: usize = 1000;

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

    /// The error grouped for `stats`: see [`normalize_error`]; for a broker dead letter without
    /// an error, `(broker: <reason>)`.
    pub fn error_group(&self) -> String {
        match (&self.error, self.source) {
            (Some(e), _) => normalize_error(e),
            (None, Source::Broker) => {
                format!("(broker: {})", self.reason.as_deref().unwrap_or("?"))
            }
            (None, _) => "(none)".to_owned(),
        }
    }
}

/// `x-courier-replayed` of a message (0 when absent or garbage).
pub fn replayed(headers: Option<&FieldTable>) -> u32 {
    int_header(headers, envelope::REPLAYED)
        .map(|n| u32::try_from(n.min(1_000_000)).unwrap_or(0))
        .unwrap_or(0)
}

/// Groups similar errors: `HTTP 503 Service Unavailable: upstream down` → `HTTP 503`;
/// anything else → its first line, at most 80 characters.
pub fn normalize_error(error: &str) -> String {
    // The HTTP handler writes `HTTP <code> <reason>: <body excerpt>`; the code is the group.
    if let Some(pos) = error.find("HTTP ") {
        let code: String = error[pos + 5..].chars().take(3).collect();
        if code.len() == 3 && code.bytes().all(|b| b.is_ascii_digit()) && pos < 200 {
            return format!("HTTP {code}");
        }
    }
    let first = error.lines().next().unwrap_or("").trim();
    if first.is_empty() {
        return "(empty)".to_owned();
    }
    let mut out: String = first.chars().take(80).collect();
    if out.len() < first.len() {
        out.push('…');
    }
    out
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

// ---------------------------------------------------------------------------------------------
// Filters
// ---------------------------------------------------------------------------------------------

/// The filter flags as typed on the command line (each repeatable; comma-separated values are
/// split too). Validate with [`Filter::parse`].
#[derive(Debug, Clone, Default)]
pub struct FilterSpec {
    /// `--reason`.
    pub reason: Vec<String>,
    /// `--from-queue`.
    pub from_queue: Vec<String>,
    /// `--error-contains`.
    pub error_contains: Vec<String>,
    /// `--older-than` (humantime duration).
    pub older_than: Option<String>,
    /// `--newer-than` (humantime duration).
    pub newer_than: Option<String>,
    /// `--message-id`.
    pub message_id: Vec<String>,
    /// `--header K=V`.
    pub header: Vec<String>,
}

/// A filter flag that cannot be used: which flag, which value, what would be right.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{flag} {value:?}: {expected}")]
pub struct FilterError {
    /// The flag, e.g. `--older-than`.
    pub flag: &'static str,
    /// The value given.
    pub value: String,
    /// The expected form.
    pub expected: String,
}

/// A validated selection. Within one flag the values are alternatives (any may match); across
/// flags all must hold. The empty filter selects everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    reasons: BTreeSet<String>,
    from_queues: Vec<String>,
    /// Lowercased needles.
    error_contains: Vec<String>,
    older_than: Option<Duration>,
    newer_than: Option<Duration>,
    message_ids: BTreeSet<String>,
    headers: Vec<(String, String)>,
    /// The topology prefix, so `--from-queue notifications.email` also matches the prefixed
    /// queue name.
    prefix: String,
}

fn split(values: &[String]) -> impl Iterator<Item = &str> {
    values
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

fn duration(flag: &'static str, value: Option<&str>) -> Result<Option<Duration>, FilterError> {
    let Some(value) = value else { return Ok(None) };
    humantime::parse_duration(value.trim())
        .map(Some)
        .map_err(|e| FilterError {
            flag,
            value: value.to_owned(),
            expected: format!("expected a duration such as 90s, 15m, 2h, 3days or 1h30m ({e})"),
        })
}

impl Filter {
    /// Validates the flags. `prefix` is the topology's name prefix (may be empty).
    ///
    /// # Errors
    /// [`FilterError`] for the first flag that does not parse: an unknown reason, a duration
    /// that is not one, a `--header` without `=`, an empty `--error-contains`, or
    /// `--newer-than` not shorter than `--older-than` (nothing could match).
    pub fn parse(spec: &FilterSpec, prefix: &str) -> Result<Self, FilterError> {
        let mut reasons = BTreeSet::new();
        for r in split(&spec.reason) {
            let known = Reason::parse(r).is_some() || BROKER_REASONS.contains(&r);
            if !known {
                let all: Vec<&str> = Reason::ALL
                    .iter()
                    .map(|r| r.as_str())
                    .chain(BROKER_REASONS.iter().copied())
                    .collect();
                return Err(FilterError {
                    flag: "--reason",
                    value: r.to_owned(),
                    expected: format!("expected one of {}", all.join(", ")),
                });
            }
            reasons.insert(r.to_owned());
        }
        let mut error_contains = Vec::new();
        for e in &spec.error_contains {
            if e.trim().is_empty() {
                return Err(FilterError {
                    flag: "--error-contains",
                    value: e.clone(),
                    expected: "expected some text to look for in x-courier-error".to_owned(),
                });
            }
            error_contains.push(e.to_lowercase());
        }
        let mut headers = Vec::new();
        for h in &spec.header {
            match h.split_once('=') {
                Some((k, v)) if !k.trim().is_empty() => {
                    headers.push((k.trim().to_owned(), v.to_owned()));
                }
                _ => {
                    return Err(FilterError {
                        flag: "--header",
                        value: h.clone(),
                        expected: "expected NAME=VALUE, e.g. --header tenant=acme".to_owned(),
                    })
                }
            }
        }
        let older_than = duration("--older-than", spec.older_than.as_deref())?;
        let newer_than = duration("--newer-than", spec.newer_than.as_deref())?;
        if let (Some(old), Some(new)) = (older_than, newer_than) {
            if new <= old {
                return Err(FilterError {
                    flag: "--newer-than",
                    value: spec.newer_than.clone().unwrap_or_default(),
                    expected: format!(
                        "expected a duration longer than --older-than ({}): a message cannot be both older than {} and newer than {}",
                        humantime::format_duration(old),
                        humantime::format_duration(old),
                        humantime::format_duration(new),
                    ),
                });
            }
        }
        Ok(Self {
            reasons,
            from_queues: split(&spec.from_queue).map(str::to_owned).collect(),
            error_contains,
            older_than,
            newer_than,
            message_ids: split(&spec.message_id).map(str::to_owned).collect(),
            headers,
            prefix: prefix.to_owned(),
        })
    }

    /// A filter selecting exactly one message id (for `show`).
    pub fn message_id(id: &str) -> Self {
        Self {
            message_ids: BTreeSet::from([id.to_owned()]),
            ..Self::default()
        }
    }

    /// True when no flag was given: every message matches.
    pub fn is_empty(&self) -> bool {
        *self
            == Self {
                prefix: self.prefix.clone(),
                ..Self::default()
            }
    }

    /// Whether `dl` (with the message's `headers`) is selected, `now_ms` being the time the
    /// pass started. A time filter never selects a message whose dead-letter time is unknown.
    pub fn matches(&self, dl: &DeadLetter, headers: Option<&FieldTable>, now_ms: i64) -> bool {
        if !self.reasons.is_empty() && !dl.reason.as_ref().is_some_and(|r| self.reasons.contains(r))
        {
            return false;
        }
        if !self.from_queues.is_empty() {
            let Some(q) = &dl.original_queue else {
                return false;
            };
            let hit = self.from_queues.iter().any(|f| {
                f == q || (!self.prefix.is_empty() && format!("{}{f}", self.prefix) == *q)
            });
            if !hit {
                return false;
            }
        }
        if !self.error_contains.is_empty() {
            let Some(e) = &dl.error else { return false };
            let e = e.to_lowercase();
            if !self.error_contains.iter().any(|n| e.contains(n.as_str())) {
                return false;
            }
        }
        if self.older_than.is_some() || self.newer_than.is_some() {
            let Some(age) = dl.age(now_ms) else {
                return false;
            };
            if self.older_than.is_some_and(|d| age < d) {
                return false;
            }
            if self.newer_than.is_some_and(|d| age >= d) {
                return false;
            }
        }
        if !self.message_ids.is_empty()
            && !dl
                .message_id
                .as_ref()
                .is_some_and(|id| self.message_ids.contains(id))
        {
            return false;
        }
        self.headers.iter().all(|(k, v)| {
            headers
                .and_then(|h| h.inner().get(k.as_str()))
                .is_some_and(|actual| header_text(actual).as_deref() == Some(v.as_str()))
        })
    }
}

/// The text a `--header K=V` filter compares with: strings as they are, numbers in decimal,
/// booleans as `true`/`false`; other types never match.
fn header_text(v: &AMQPValue) -> Option<String> {
    Some(match v {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_owned(),
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortShortInt(i) => i.to_string(),
        AMQPValue::ShortShortUInt(i) => i.to_string(),
        AMQPValue::ShortInt(i) => i.to_string(),
        AMQPValue::ShortUInt(i) => i.to_string(),
        AMQPValue::LongInt(i) => i.to_string(),
        AMQPValue::LongUInt(i) => i.to_string(),
        AMQPValue::LongLongInt(i) => i.to_string(),
        AMQPValue::Timestamp(t) => t.to_string(),
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------------
// Aggregates
// ---------------------------------------------------------------------------------------------

/// Counts per key, folding keys past [`MAX_GROUPS`] into `(other)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Groups(BTreeMap<String, u64>);

impl Groups {
    /// Counts one occurrence of `key`.
    pub fn add(&mut self, key: &str) {
        if let Some(n) = self.0.get_mut(key) {
            *n += 1;
        } else if self.0.len() < MAX_GROUPS {
            self.0.insert(key.to_owned(), 1);
        } else {
            *self.0.entry("(other)".to_owned()).or_insert(0) += 1;
        }
    }

    /// Groups, largest first (ties by name).
    pub fn sorted(&self) -> Vec<(&str, u64)> {
        let mut v: Vec<(&str, u64)> = self.0.iter().map(|(k, n)| (k.as_str(), *n)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        v
    }

    /// The raw map.
    pub fn map(&self) -> &BTreeMap<String, u64> {
        &self.0
    }
}

/// What `stats` reports over the examined messages that match the filter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Matching messages.
    pub matched: u64,
    /// Total body bytes of the matching messages.
    pub bytes: u64,
    /// Earliest dead-letter time (epoch ms).
    pub oldest_ms: Option<i64>,
    /// Latest dead-letter time (epoch ms).
    pub newest_ms: Option<i64>,
    /// Counts by reason (`(unknown)` when there is none).
    pub by_reason: Groups,
    /// Counts by original queue.
    pub by_queue: Groups,
    /// Counts by normalised error ([`DeadLetter::error_group`]).
    pub by_error: Groups,
}

impl Stats {
    /// Adds one matching message.
    pub fn add(&mut self, dl: &DeadLetter) {
        self.matched += 1;
        self.bytes += dl.body_len as u64;
        if let Some(t) = dl.dead_lettered_at_ms {
            self.oldest_ms = Some(self.oldest_ms.map_or(t, |o| o.min(t)));
            self.newest_ms = Some(self.newest_ms.map_or(t, |n| n.max(t)));
        }
        self.by_reason
            .add(dl.reason.as_deref().unwrap_or("(unknown)"));
        self.by_queue
            .add(dl.original_queue.as_deref().unwrap_or("(unknown)"));
        self.by_error.add(&dl.error_group());
    }
}

/// What a replay would do (`--dry-run`), or did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Messages that would move, by destination.
    pub by_destination: Groups,
    /// Messages that would move, by normalised error.
    pub by_error: Groups,
    /// Messages that would move, in total.
    pub moving: u64,
    /// Selected messages that cannot move: they say nowhere where they came from.
    pub no_origin: u64,
    /// Messages that stay (not selected, or past `--limit`).
    pub staying: u64,
}

impl Plan {
    /// Records a selected message going to `dest` (`None`: it has no origin and stays).
    pub fn add_moving(&mut self, dl: &DeadLetter, dest: Option<&Destination>) {
        match dest {
            Some(d) => {
                self.moving += 1;
                self.by_destination.add(&d.to_string());
                self.by_error.add(&dl.error_group());
            }
            None => {
                self.no_origin += 1;
                self.staying += 1;
            }
        }
    }

    /// Records a message that stays.
    pub fn add_staying(&mut self) {
        self.staying += 1;
    }
}

// ---------------------------------------------------------------------------------------------
// AMQP values, named and shown
// ---------------------------------------------------------------------------------------------

/// The name the tool uses for an AMQP field type (`show` and the export format agree on it).
pub fn type_name(v: &AMQPValue) -> &'static str {
    match v {
        AMQPValue::Boolean(_) => "bool",
        AMQPValue::ShortShortInt(_) => "i8",
        AMQPValue::ShortShortUInt(_) => "u8",
        AMQPValue::ShortInt(_) => "i16",
        AMQPValue::ShortUInt(_) => "u16",
        AMQPValue::LongInt(_) => "i32",
        AMQPValue::LongUInt(_) => "u32",
        AMQPValue::LongLongInt(_) => "i64",
        AMQPValue::Float(_) => "f32",
        AMQPValue::Double(_) => "f64",
        AMQPValue::DecimalValue(_) => "decimal",
        AMQPValue::ShortString(_) => "short-string",
        AMQPValue::LongString(_) => "string",
        AMQPValue::FieldArray(_) => "array",
        AMQPValue::Timestamp(_) => "timestamp",
        AMQPValue::FieldTable(_) => "table",
        AMQPValue::ByteArray(_) => "bytes",
        AMQPValue::Void => "void",
    }
}

/// Formats epoch milliseconds as RFC 3339 (UTC, seconds), or the number if out of range.
pub fn format_time_ms(ms: i64) -> String {
    match u64::try_from(ms) {
        Ok(ms) => {
            humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(ms))
                .to_string()
        }
        Err(_) => ms.to_string(),
    }
}

/// A readable rendering of a header value: strings quoted, timestamps as dates, tables and
/// arrays inline, byte arrays as a length and a hex prefix.
pub fn display_value(v: &AMQPValue) -> String {
    match v {
        AMQPValue::LongString(s) => match std::str::from_utf8(s.as_bytes()) {
            Ok(t) => format!("{t:?}"),
            Err(_) => format!("<{} bytes, not UTF-8>", s.as_bytes().len()),
        },
        AMQPValue::ShortString(s) => format!("{:?}", s.as_str()),
        AMQPValue::Timestamp(t) => {
            let when = i64::try_from(*t)
                .ok()
                .and_then(|s| s.checked_mul(1000))
                .map(format_time_ms)
                .unwrap_or_default();
            format!("{t} ({when})")
        }
        AMQPValue::DecimalValue(d) => {
            let scale = u32::from(d.scale);
            match 10u64.checked_pow(scale) {
                Some(div) if scale > 0 => {
                    let v = u64::from(d.value);
                    format!("{}.{:0width$}", v / div, v % div, width = scale as usize)
                }
                _ => format!("{} (scale {})", d.value, d.scale),
            }
        }
        AMQPValue::FieldArray(a) => {
            let items: Vec<String> = a.as_slice().iter().map(display_value).collect();
            format!("[{}]", items.join(", "))
        }
        AMQPValue::FieldTable(t) => {
            let items: Vec<String> = t
                .inner()
                .iter()
                .map(|(k, v)| format!("{}: {}", k.as_str(), display_value(v)))
                .collect();
            format!("{{{}}}", items.join(", "))
        }
        AMQPValue::ByteArray(b) => {
            let bytes = b.as_slice();
            let hex: String = bytes.iter().take(16).map(|b| format!("{b:02x}")).collect();
            let more = if bytes.len() > 16 { "…" } else { "" };
            format!("<{} bytes: {hex}{more}>", bytes.len())
        }
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortShortInt(i) => i.to_string(),
        AMQPValue::ShortShortUInt(i) => i.to_string(),
        AMQPValue::ShortInt(i) => i.to_string(),
        AMQPValue::ShortUInt(i) => i.to_string(),
        AMQPValue::LongInt(i) => i.to_string(),
        AMQPValue::LongUInt(i) => i.to_string(),
        AMQPValue::LongLongInt(i) => i.to_string(),
        AMQPValue::Float(f) => f.to_string(),
        AMQPValue::Double(f) => f.to_string(),
        AMQPValue::Void => "void".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{dead_letter_headers, Origin};
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
        assert_eq!(dl.error_group(), "HTTP 503");
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
        assert_eq!(dl.error_group(), "(broker: expired)");
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
    fn errors_are_grouped() {
        assert_eq!(
            normalize_error("HTTP 503 Service Unavailable: busy"),
            "HTTP 503"
        );
        assert_eq!(
            normalize_error("POST http://h/deliver: HTTP 429 Too Many Requests"),
            "HTTP 429"
        );
        assert_eq!(
            normalize_error("POST http://h/x: connection refused\nstack"),
            "POST http://h/x: connection refused"
        );
        assert_eq!(normalize_error("HTTP 5"), "HTTP 5");
        assert_eq!(normalize_error(""), "(empty)");
        let long_line = "é".repeat(200);
        assert_eq!(normalize_error(&long_line).chars().count(), 81);
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

    fn spec() -> FilterSpec {
        FilterSpec::default()
    }

    #[test]
    fn filters_select_by_every_flag() {
        let props = worker_dead_letter("HTTP 503 Service Unavailable", 100_000);
        let h = props.headers().as_ref();
        let dl = DeadLetter::read(&props, 0);
        let now = 100_000 + 3_600_000;
        let check = |s: FilterSpec| Filter::parse(&s, "p.").expect("valid").matches(&dl, h, now);

        assert!(check(spec()));
        assert!(check(FilterSpec {
            reason: vec!["permanent,max-attempts".into()],
            ..spec()
        }));
        assert!(!check(FilterSpec {
            reason: vec!["permanent".into()],
            ..spec()
        }));
        assert!(check(FilterSpec {
            from_queue: vec!["notifications.email".into()],
            ..spec()
        }));
        assert!(check(FilterSpec {
            from_queue: vec!["p.notifications.email".into()],
            ..spec()
        }));
        assert!(!check(FilterSpec {
            from_queue: vec!["notifications.sms".into()],
            ..spec()
        }));
        assert!(check(FilterSpec {
            error_contains: vec!["unavailABLE".into()],
            ..spec()
        }));
        assert!(!check(FilterSpec {
            error_contains: vec!["timeout".into()],
            ..spec()
        }));
        assert!(check(FilterSpec {
            older_than: Some("30m".into()),
            ..spec()
        }));
        assert!(!check(FilterSpec {
            older_than: Some("2h".into()),
            ..spec()
        }));
        assert!(check(FilterSpec {
            newer_than: Some("2h".into()),
            ..spec()
        }));
        assert!(!check(FilterSpec {
            newer_than: Some("30m".into()),
            ..spec()
        }));
        assert!(check(FilterSpec {
            message_id: vec!["x,m-1".into()],
            ..spec()
        }));
        assert!(!check(FilterSpec {
            message_id: vec!["m-2".into()],
            ..spec()
        }));
        assert!(check(FilterSpec {
            header: vec!["x-courier-attempts=5".into()],
            ..spec()
        }));
        assert!(!check(FilterSpec {
            header: vec!["x-courier-attempts=4".into()],
            ..spec()
        }));
        assert!(!check(FilterSpec {
            header: vec!["tenant=acme".into()],
            ..spec()
        }));
        assert!(Filter::parse(&spec(), "p.").expect("valid").is_empty());
        assert!(!Filter::message_id("m-1").is_empty());
    }

    #[test]
    fn time_filters_skip_messages_without_a_time() {
        let dl = DeadLetter::read(&BasicProperties::default(), 0);
        let f = Filter::parse(
            &FilterSpec {
                older_than: Some("1s".into()),
                ..spec()
            },
            "",
        )
        .expect("valid");
        assert!(!f.matches(&dl, None, 1_000_000));
    }

    #[test]
    fn bad_filters_name_the_flag_the_value_and_the_form() {
        let e = Filter::parse(
            &FilterSpec {
                older_than: Some("3 fortnights".into()),
                ..spec()
            },
            "",
        )
        .expect_err("invalid");
        assert_eq!(e.flag, "--older-than");
        assert!(e.to_string().contains("\"3 fortnights\""), "{e}");
        assert!(e.to_string().contains("90s"), "{e}");
        let e = Filter::parse(
            &FilterSpec {
                reason: vec!["boom".into()],
                ..spec()
            },
            "",
        )
        .expect_err("invalid");
        assert!(
            e.to_string().contains("max-attempts") && e.to_string().contains("maxlen"),
            "{e}"
        );
        let e = Filter::parse(
            &FilterSpec {
                header: vec!["tenant".into()],
                ..spec()
            },
            "",
        )
        .expect_err("invalid");
        assert!(e.to_string().contains("NAME=VALUE"), "{e}");
        let e = Filter::parse(
            &FilterSpec {
                older_than: Some("2h".into()),
                newer_than: Some("1h".into()),
                ..spec()
            },
            "",
        )
        .expect_err("contradiction");
        assert_eq!(e.flag, "--newer-than");
        let e = Filter::parse(
            &FilterSpec {
                error_contains: vec![" ".into()],
                ..spec()
            },
            "",
        )
        .expect_err("empty");
        assert_eq!(e.flag, "--error-contains");
    }

    #[test]
    fn stats_and_plan_group_and_bound() {
        let mut s = Stats::default();
        s.add(&DeadLetter::read(&worker_dead_letter("HTTP 503 a", 5), 10));
        s.add(&DeadLetter::read(&worker_dead_letter("HTTP 503 b", 2), 10));
        s.add(&DeadLetter::read(&broker_dead_letter("q", "", "q", 9), 1));
        assert_eq!(s.matched, 3);
        assert_eq!(s.bytes, 21);
        assert_eq!(s.oldest_ms, Some(2));
        assert_eq!(s.newest_ms, Some(9000));
        assert_eq!(s.by_error.sorted()[0], ("HTTP 503", 2));
        assert_eq!(s.by_reason.map().get("expired"), Some(&1));

        let mut g = Groups::default();
        for i in 0..(MAX_GROUPS + 10) {
            g.add(&i.to_string());
        }
        assert_eq!(g.map().len(), MAX_GROUPS + 1);
        assert_eq!(g.map().get("(other)"), Some(&10));

        let mut p = Plan::default();
        let dl = DeadLetter::read(&worker_dead_letter("HTTP 503", 1), 0);
        p.add_moving(&dl, dl.origin.as_ref());
        p.add_moving(&dl, None);
        p.add_staying();
        assert_eq!((p.moving, p.no_origin, p.staying), (1, 1, 2));
        assert_eq!(p.by_destination.sorted()[0], ("p.notifications / email", 1));
    }

    #[test]
    fn values_are_named_and_shown_readably() {
        assert_eq!(type_name(&AMQPValue::ShortInt(1)), "i16");
        assert_eq!(type_name(&AMQPValue::Timestamp(1)), "timestamp");
        assert_eq!(
            display_value(&AMQPValue::DecimalValue(lapin::types::DecimalValue {
                scale: 2,
                value: 12345
            })),
            "123.45"
        );
        assert_eq!(
            display_value(&AMQPValue::Timestamp(0)),
            "0 (1970-01-01T00:00:00Z)"
        );
        let nested = AMQPValue::FieldTable(table(&[(
            "a",
            AMQPValue::FieldArray(FieldArray::from(vec![long("x"), AMQPValue::Void])),
        )]));
        assert_eq!(display_value(&nested), "{a: [\"x\", void]}");
        assert_eq!(
            display_value(&AMQPValue::ByteArray(vec![0xde, 0xad].into())),
            "<2 bytes: dead>"
        );
    }
}
