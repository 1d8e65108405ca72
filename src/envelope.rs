//! The message contract: header names, how the fleet reads them, and how it writes the headers
//! of a retried or dead-lettered copy. Shared with `courier-dlq`, so nothing about the contract
//! is written twice.

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;
use std::time::{SystemTime, UNIX_EPOCH};

/// Attempts made so far (int). Set by the fleet; publishers never need to.
pub const ATTEMPTS: &str = "x-courier-attempts";
/// Times the message came back `redelivered` (a worker died or lost its channel holding it).
pub const REDELIVERIES: &str = "x-courier-redeliveries";
/// Why a message was dead-lettered: see [`Reason`].
pub const REASON: &str = "x-courier-reason";
/// The last error, truncated to [`MAX_ERROR_BYTES`].
pub const ERROR: &str = "x-courier-error";
/// Where the message was first published to.
pub const ORIGINAL_EXCHANGE: &str = "x-courier-original-exchange";
/// Its original routing key.
pub const ORIGINAL_ROUTING_KEY: &str = "x-courier-original-routing-key";
/// The work queue it was consumed from.
pub const ORIGINAL_QUEUE: &str = "x-courier-original-queue";
/// Epoch milliseconds of the first failed attempt.
pub const FIRST_FAILED_AT: &str = "x-courier-first-failed-at";
/// Epoch milliseconds when it was dead-lettered.
pub const DEAD_LETTERED_AT: &str = "x-courier-dead-lettered-at";
/// How many times `courier-dlq replay` sent it back.
pub const REPLAYED: &str = "x-courier-replayed";
/// The publisher's `expiration` (milliseconds, as sent), kept for the record on the fleet's
/// copies, which carry no `expiration` of their own: see [`copy_properties`].
pub const ORIGINAL_EXPIRATION: &str = "x-courier-original-expiration";

/// Headers RabbitMQ writes when it dead-letters a message itself. The fleet strips them when it
/// republishes: on 3.10 a stale `x-death` naming the target queue makes the broker drop the
/// message as a dead-letter cycle, and from 3.13 the broker ignores client-set ones anyway.
pub const BROKER_DEATH_HEADERS: &[&str] = &[
    "x-death",
    "x-first-death-exchange",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-last-death-exchange",
    "x-last-death-queue",
    "x-last-death-reason",
];

/// `x-courier-error` is cut to this many bytes so that all metadata together stays far below
/// the negotiated `frame_max` (RabbitMQ's minimum is 4 KiB; headers may not span frames).
pub const MAX_ERROR_BYTES: usize = 1024;

/// Why a message is in the dead-letter queue (`x-courier-reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// Retryable failures exhausted `max_attempts`.
    MaxAttempts,
    /// The handler said it can never succeed (e.g. HTTP 400).
    Permanent,
    /// The body is not valid JSON (or not UTF-8); the handler was not called.
    Malformed,
    /// It came back `redelivered` too many times: it probably crashes the worker.
    CrashLoop,
    /// Rejected by the broker (dead-lettered with reason `rejected` in `x-death`).
    Rejected,
    /// Expired in a queue (per-message or queue TTL) before anyone handled it.
    Expired,
}

impl Reason {
    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MaxAttempts => "max-attempts",
            Self::Permanent => "permanent",
            Self::Malformed => "malformed",
            Self::CrashLoop => "crash-loop",
            Self::Rejected => "rejected",
            Self::Expired => "expired",
        }
    }

    /// Parses a header value.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "max-attempts" => Self::MaxAttempts,
            "permanent" => Self::Permanent,
            "malformed" => Self::Malformed,
            "crash-loop" => Self::CrashLoop,
            "rejected" => Self::Rejected,
            "expired" => Self::Expired,
            _ => return None,
        })
    }

    /// Every reason, for help texts and metrics.
    pub const ALL: [Reason; 6] = [
        Self::MaxAttempts,
        Self::Permanent,
        Self::Malformed,
        Self::CrashLoop,
        Self::Rejected,
        Self::Expired,
    ];
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Milliseconds since the epoch, now.
pub fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Reads an integer header of any AMQP integer type (clients differ: pika sends `l`, Java `I`).
/// Strings holding a number are accepted too; anything else (negative, huge, wrong type) counts
/// as absent, so hostile input can never make the fleet skip retries or panic.
pub fn int_header(headers: Option<&FieldTable>, name: &str) -> Option<i64> {
    let v = headers?.inner().get(name)?;
    let n = match v {
        AMQPValue::ShortShortInt(i) => i64::from(*i),
        AMQPValue::ShortShortUInt(i) => i64::from(*i),
        AMQPValue::ShortInt(i) => i64::from(*i),
        AMQPValue::ShortUInt(i) => i64::from(*i),
        AMQPValue::LongInt(i) => i64::from(*i),
        AMQPValue::LongUInt(i) => i64::from(*i),
        AMQPValue::LongLongInt(i) => *i,
        AMQPValue::Timestamp(t) => i64::try_from(*t).ok()?,
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).trim().parse().ok()?,
        AMQPValue::ShortString(s) => s.as_str().trim().parse().ok()?,
        _ => return None,
    };
    (n >= 0).then_some(n)
}

/// Reads a string header (long or short string; other types count as absent).
pub fn str_header(headers: Option<&FieldTable>, name: &str) -> Option<String> {
    match headers?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// Attempts already made, clamped to a sane range (hostile values count as 0 or the bound).
pub fn attempts(headers: Option<&FieldTable>) -> u32 {
    int_header(headers, ATTEMPTS)
        .map(|n| u32::try_from(n.min(1_000_000)).unwrap_or(0))
        .unwrap_or(0)
}

/// Redeliveries already counted.
pub fn redeliveries(headers: Option<&FieldTable>) -> u32 {
    int_header(headers, REDELIVERIES)
        .map(|n| u32::try_from(n.min(1_000_000)).unwrap_or(0))
        .unwrap_or(0)
}

/// Cuts `text` to at most `max` bytes on a char boundary, marking the cut.
pub fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    const MARK: &str = "… [truncated]";
    let mut end = max.saturating_sub(MARK.len());
    while end > 0 && !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{MARK}", &text[..end])
}

/// Where a message originally went, kept across retries so that the dead letter still says
/// where it came from after several hops through the tier queues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// Exchange it was published to.
    pub exchange: String,
    /// Routing key it was published with.
    pub routing_key: String,
    /// Work queue it was consumed from.
    pub queue: String,
}

impl Origin {
    /// The origin recorded in the headers, or else this delivery's own exchange and key.
    pub fn of(
        headers: Option<&FieldTable>,
        exchange: &str,
        routing_key: &str,
        queue: &str,
    ) -> Self {
        Self {
            exchange: str_header(headers, ORIGINAL_EXCHANGE).unwrap_or_else(|| exchange.to_owned()),
            routing_key: str_header(headers, ORIGINAL_ROUTING_KEY)
                .unwrap_or_else(|| routing_key.to_owned()),
            queue: str_header(headers, ORIGINAL_QUEUE).unwrap_or_else(|| queue.to_owned()),
        }
    }
}

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

/// Copies the message's headers without the broker's death records.
pub fn clean_headers(headers: Option<&FieldTable>) -> FieldTable {
    let mut out = FieldTable::default();
    if let Some(h) = headers {
        for (k, v) in h.inner() {
            if !BROKER_DEATH_HEADERS.contains(&k.as_str()) {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    out
}

/// Headers for the copy sent to a retry tier: attempts, first failure, last error, origin.
pub fn retry_headers(
    headers: Option<&FieldTable>,
    attempts: u32,
    error: &str,
    origin: &Origin,
    now_ms: i64,
) -> FieldTable {
    let mut h = clean_headers(headers);
    set_failure(&mut h, headers, attempts, error, origin, now_ms);
    h
}

fn set_failure(
    h: &mut FieldTable,
    original: Option<&FieldTable>,
    attempts: u32,
    error: &str,
    origin: &Origin,
    now_ms: i64,
) {
    h.insert(ATTEMPTS.into(), AMQPValue::LongLongInt(i64::from(attempts)));
    h.insert(ERROR.into(), long(&truncate(error, MAX_ERROR_BYTES)));
    h.insert(ORIGINAL_EXCHANGE.into(), long(&origin.exchange));
    h.insert(ORIGINAL_ROUTING_KEY.into(), long(&origin.routing_key));
    h.insert(ORIGINAL_QUEUE.into(), long(&origin.queue));
    let first = int_header(original, FIRST_FAILED_AT).unwrap_or(now_ms);
    h.insert(FIRST_FAILED_AT.into(), AMQPValue::LongLongInt(first));
}

/// Headers for the copy sent to the dead-letter queue: everything needed to understand it.
pub fn dead_letter_headers(
    headers: Option<&FieldTable>,
    attempts: u32,
    reason: Reason,
    error: &str,
    origin: &Origin,
    now_ms: i64,
) -> FieldTable {
    let mut h = clean_headers(headers);
    set_failure(&mut h, headers, attempts, error, origin, now_ms);
    h.insert(REASON.into(), long(reason.as_str()));
    h.insert(DEAD_LETTERED_AT.into(), AMQPValue::LongLongInt(now_ms));
    h
}

/// The message's properties with new headers; everything else (id, priority, correlation,
/// reply-to, content type, timestamp) kept, and always persistent.
pub fn with_headers(props: &BasicProperties, headers: FieldTable) -> BasicProperties {
    props.clone().with_headers(headers).with_delivery_mode(2)
}

/// The properties of a copy the worker republishes (retry tier, redelivery count, dead letter):
/// like [`with_headers`], but without `expiration`, whose value moves to
/// [`ORIGINAL_EXPIRATION`].
///
/// A publisher's `expiration` bounds the wait for the first delivery only. Carried on a copy it
/// would fire again: a retry copy would leave its tier early (the broker takes the lower of the
/// message's and the queue's TTL), cutting the back-off short, and a dead letter would expire
/// inside the dead-letter queue, which has no dead-letter exchange of its own, so it would be
/// dropped. Once the fleet holds a message, the tiers' TTLs and the DLQ decide its fate.
pub fn copy_properties(props: &BasicProperties, mut headers: FieldTable) -> BasicProperties {
    // A copy of a copy has no expiration left: the header recorded on the first hop stays.
    if let Some(e) = props
        .expiration()
        .as_ref()
        .filter(|e| !e.as_str().is_empty())
    {
        headers.insert(ORIGINAL_EXPIRATION.into(), long(e.as_str()));
    }
    // lapin cannot unset a property, so the copy is built from scratch without it.
    let mut out = BasicProperties::default()
        .with_headers(headers)
        .with_delivery_mode(2);
    if let Some(v) = props.content_type() {
        out = out.with_content_type(v.clone());
    }
    if let Some(v) = props.content_encoding() {
        out = out.with_content_encoding(v.clone());
    }
    if let Some(v) = props.priority() {
        out = out.with_priority(*v);
    }
    if let Some(v) = props.correlation_id() {
        out = out.with_correlation_id(v.clone());
    }
    if let Some(v) = props.reply_to() {
        out = out.with_reply_to(v.clone());
    }
    if let Some(v) = props.message_id() {
        out = out.with_message_id(v.clone());
    }
    if let Some(v) = props.timestamp() {
        out = out.with_timestamp(*v);
    }
    if let Some(v) = props.kind() {
        out = out.with_type(v.clone());
    }
    if let Some(v) = props.user_id() {
        out = out.with_user_id(v.clone());
    }
    if let Some(v) = props.app_id() {
        out = out.with_app_id(v.clone());
    }
    if let Some(v) = props.cluster_id() {
        out = out.with_cluster_id(v.clone());
    }
    out
}

/// The `message_id` property, if present and non-empty.
pub fn message_id(props: &BasicProperties) -> Option<&str> {
    props
        .message_id()
        .as_ref()
        .map(ShortString::as_str)
        .filter(|s| !s.is_empty())
}

/// A fresh random message id (128 bits, hex), for publishers that did not set one.
pub fn new_message_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Checks the contract's body rule: UTF-8 JSON. Returns why not.
pub fn validate_body(body: &[u8]) -> Result<(), String> {
    match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
        Ok(_) => Ok(()),
        Err(e) if std::str::from_utf8(body).is_err() => Err(format!("body is not UTF-8 JSON: {e}")),
        Err(e) => Err(format!("body is not valid JSON: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(pairs: &[(&str, AMQPValue)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in pairs {
            t.insert((*k).into(), v.clone());
        }
        t
    }

    #[test]
    fn attempts_read_any_integer_type_and_ignore_garbage() {
        assert_eq!(
            attempts(Some(&table(&[(ATTEMPTS, AMQPValue::LongInt(3))]))),
            3
        );
        assert_eq!(
            attempts(Some(&table(&[(ATTEMPTS, AMQPValue::ShortShortUInt(2))]))),
            2
        );
        assert_eq!(attempts(Some(&table(&[(ATTEMPTS, long("4"))]))), 4);
        assert_eq!(
            attempts(Some(&table(&[(ATTEMPTS, AMQPValue::LongLongInt(-5))]))),
            0
        );
        assert_eq!(attempts(Some(&table(&[(ATTEMPTS, long("lots"))]))), 0);
        assert_eq!(
            attempts(Some(&table(&[(
                ATTEMPTS,
                AMQPValue::LongLongInt(i64::MAX)
            )]))),
            1_000_000
        );
        assert_eq!(
            attempts(Some(&table(&[(ATTEMPTS, AMQPValue::Boolean(true))]))),
            0
        );
        assert_eq!(attempts(None), 0);
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        let s = "é".repeat(2000);
        let t = truncate(&s, 1024);
        assert!(t.len() <= 1024, "{}", t.len());
        assert!(t.ends_with("[truncated]"));
        assert_eq!(truncate("short", 1024), "short");
    }

    #[test]
    fn retry_headers_strip_x_death_and_keep_the_first_failure() {
        let original = table(&[
            ("x-death", AMQPValue::FieldArray(Default::default())),
            ("x-first-death-queue", long("q.retry.1s")),
            ("tenant", long("acme")),
            (FIRST_FAILED_AT, AMQPValue::LongLongInt(111)),
        ]);
        let origin = Origin {
            exchange: "notifications".into(),
            routing_key: "email".into(),
            queue: "notifications.email".into(),
        };
        let h = retry_headers(Some(&original), 2, "HTTP 503", &origin, 999);
        let inner = h.inner();
        assert!(!inner.contains_key("x-death"));
        assert!(!inner.contains_key("x-first-death-queue"));
        assert_eq!(str_header(Some(&h), "tenant").as_deref(), Some("acme"));
        assert_eq!(int_header(Some(&h), ATTEMPTS), Some(2));
        assert_eq!(int_header(Some(&h), FIRST_FAILED_AT), Some(111));
        assert_eq!(
            str_header(Some(&h), ORIGINAL_ROUTING_KEY).as_deref(),
            Some("email")
        );
    }

    #[test]
    fn dead_letter_headers_carry_all_metadata_bounded() {
        let origin = Origin {
            exchange: "notifications".into(),
            routing_key: "email".into(),
            queue: "notifications.email".into(),
        };
        let huge = "x".repeat(1 << 20);
        let h = dead_letter_headers(None, 5, Reason::MaxAttempts, &huge, &origin, 1234);
        assert_eq!(
            str_header(Some(&h), REASON).as_deref(),
            Some("max-attempts")
        );
        assert_eq!(int_header(Some(&h), DEAD_LETTERED_AT), Some(1234));
        assert_eq!(int_header(Some(&h), FIRST_FAILED_AT), Some(1234));
        assert!(str_header(Some(&h), ERROR).map_or(0, |e| e.len()) <= MAX_ERROR_BYTES);
        assert_eq!(
            str_header(Some(&h), ORIGINAL_QUEUE).as_deref(),
            Some("notifications.email")
        );
    }

    #[test]
    fn copies_drop_the_expiration_and_keep_it_in_a_header() {
        let full = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_content_encoding("identity".into())
            .with_delivery_mode(1)
            .with_priority(7)
            .with_correlation_id("corr".into())
            .with_reply_to("replies".into())
            .with_message_id("m-1".into())
            .with_timestamp(1_700_000_000)
            .with_type("notification".into())
            .with_user_id("guest".into())
            .with_app_id("app".into())
            .with_cluster_id("cl".into());
        let headers = table(&[("tenant", long("acme"))]);
        let copy = copy_properties(
            &full.clone().with_expiration("60000".into()),
            headers.clone(),
        );
        // Every other property survives, and the copy is persistent.
        let mut recorded = headers.clone();
        recorded.insert(ORIGINAL_EXPIRATION.into(), long("60000"));
        assert_eq!(
            copy,
            full.clone().with_headers(recorded).with_delivery_mode(2)
        );
        assert_eq!(copy.expiration(), &None);
        // A copy of a copy keeps the header it already carries.
        let again = copy_properties(&copy, copy.headers().clone().unwrap_or_default());
        assert_eq!(again, copy);
        // Without an expiration there is nothing to record.
        let plain = copy_properties(&full, headers.clone());
        assert_eq!(
            str_header(plain.headers().as_ref(), ORIGINAL_EXPIRATION),
            None
        );
    }

    #[test]
    fn origin_prefers_recorded_headers() {
        let h = table(&[
            (ORIGINAL_ROUTING_KEY, long("sms")),
            (ORIGINAL_EXCHANGE, long("notifications")),
        ]);
        let o = Origin::of(Some(&h), "", "notifications.sms", "notifications.sms");
        assert_eq!(o.routing_key, "sms");
        assert_eq!(o.exchange, "notifications");
        let o = Origin::of(None, "notifications", "push", "notifications.push");
        assert_eq!(o.routing_key, "push");
    }

    #[test]
    fn body_validation() {
        assert!(validate_body(br#"{"to":"a"}"#).is_ok());
        assert!(validate_body(b"not json")
            .expect_err("invalid")
            .contains("not valid JSON"));
        assert!(validate_body(&[0xff, 0xfe])
            .expect_err("invalid")
            .contains("UTF-8"));
    }

    #[test]
    fn reasons_round_trip() {
        for r in Reason::ALL {
            assert_eq!(Reason::parse(r.as_str()), Some(r));
        }
    }
}
