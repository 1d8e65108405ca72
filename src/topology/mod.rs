//! The declared topology: one TOML file that says everything the broker needs.
//!
//! A file is parsed into raw serde types (unknown keys rejected), then validated into a
//! [`Topology`] that cannot be invalid: every name resolved and prefixed, every duration parsed,
//! every derived object (retry tier queues, the dead-letter exchange) spelled out with the exact
//! arguments it is declared with. `apply`, `check`, `export`, the worker and the DLQ tool all read
//! the same [`Topology`], so the names and arguments are computed in one place.
//!
//! Derived objects, for a work queue `Q` and retry tiers `1s, 10s`:
//! - `Q.retry.1s`, `Q.retry.10s`: per-queue `x-message-ttl`, dead-lettered through the default
//!   exchange straight back to `Q` (not through the topic exchange, so a retried message can never
//!   fan out to a second queue bound with the same key).
//! - `Q` itself dead-letters (broker-side rejects, expiry, overflow) to the dead-letter exchange,
//!   which is bound to the dead-letter queue.
//!
//! This module is the file format alone (parse, validate, the model, exports): it opens no
//! connection. Declaring it on a broker and comparing it with one is [`crate::broker`]'s work.

mod export;

pub use export::{definitions_json, mermaid};

use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The default topology file, relative to the working directory.
pub const DEFAULT_TOPOLOGY_PATH: &str = "topology/notifications.toml";

/// The highest priority RabbitMQ accepts for `x-max-priority` (it recommends at most 10).
const MAX_PRIORITY: i64 = 255;

/// AMQP short strings (names) are at most 255 bytes.
const MAX_NAME_LEN: usize = 255;

/// Why a topology file was refused. Every variant names the file; `Invalid` also names the key.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// The file could not be read at all.
    #[error("{file}: cannot read the topology file: {source}")]
    Read {
        /// The path as given.
        file: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not fit the schema (unknown key, wrong type).
    #[error("{file}: {message}")]
    Parse {
        /// The path as given.
        file: String,
        /// The TOML parser's message, which names the line, the key and the reason.
        message: String,
    },
    /// The file parses but breaks a rule (duration, priority range, duplicate, reference).
    #[error("{file}: `{key}`: {reason}")]
    Invalid {
        /// The path as given.
        file: String,
        /// The key that breaks the rule, as a TOML path (`queues[1].max_priority`).
        key: String,
        /// What is wrong and what would be right.
        reason: String,
    },
}

// ---------------------------------------------------------------------------------------------
// Raw file format (what serde reads)
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTopology {
    #[serde(default)]
    exchanges: Vec<RawExchange>,
    #[serde(default)]
    queues: Vec<RawQueue>,
    retry: Option<RawRetry>,
    dead_letter: Option<RawDeadLetter>,
    #[serde(default)]
    queue_defaults: RawQueueDefaults,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExchange {
    name: String,
    #[serde(rename = "type", default = "default_exchange_type")]
    kind: String,
}

fn default_exchange_type() -> String {
    "direct".to_owned()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQueueDefaults {
    #[serde(rename = "type")]
    queue_type: Option<String>,
    max_priority: Option<i64>,
    delivery_limit: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQueue {
    name: String,
    #[serde(default)]
    bindings: Vec<RawBinding>,
    #[serde(rename = "type")]
    queue_type: Option<String>,
    max_priority: Option<i64>,
    delivery_limit: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBinding {
    exchange: String,
    routing_key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    #[serde(default)]
    tiers: Vec<String>,
    max_attempts: Option<i64>,
    #[serde(default)]
    disabled: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDeadLetter {
    exchange: String,
    queue: String,
    #[serde(rename = "type")]
    queue_type: Option<String>,
    max_length: Option<i64>,
    overflow: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Validated model
// ---------------------------------------------------------------------------------------------

/// RabbitMQ exchange types Courier declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeType {
    /// Routing key must equal the binding key.
    Direct,
    /// Routing key matches a pattern (`*`, `#`).
    Topic,
    /// Every bound queue gets a copy.
    Fanout,
    /// Routing on headers.
    Headers,
}

impl ExchangeType {
    /// The name RabbitMQ uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Topic => "topic",
            Self::Fanout => "fanout",
            Self::Headers => "headers",
        }
    }
}

/// Classic queues support up to 255 priorities; quorum queues replicate across a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueType {
    /// Single-node queue, priority support on every broker version.
    Classic,
    /// Raft-replicated queue; priorities only from RabbitMQ 4.0.
    Quorum,
}

impl QueueType {
    /// The value of `x-queue-type`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Classic => "classic",
            Self::Quorum => "quorum",
        }
    }
}

/// A queue argument value. Integers are sent as AMQP `long` (signed 64-bit); RabbitMQ compares
/// arguments by value within the integer class, so this matches queues declared by other clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArgValue {
    /// An integer argument (`x-max-priority`, `x-message-ttl`, ...).
    Int(i64),
    /// A string argument (`x-queue-type`, `x-dead-letter-exchange`, ...).
    Str(String),
}

impl fmt::Display for ArgValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Int(i) => write!(f, "{i}"),
            Self::Str(s) => write!(f, "{s:?}"),
        }
    }
}

/// One exchange to declare (always durable).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeDef {
    /// Full (prefixed) name.
    pub name: String,
    /// Exchange type.
    pub kind: ExchangeType,
}

/// What a queue is for; the worker and the DLQ tool look queues up by role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueRole {
    /// Consumed by `courier work`.
    Work,
    /// Holds retried messages for `delay`, then dead-letters them back to `work_queue`.
    Retry {
        /// The work queue the tier returns to.
        work_queue: String,
        /// The tier's delay (`x-message-ttl`).
        delay: Duration,
    },
    /// The dead-letter queue.
    DeadLetter,
}

/// One queue to declare (always durable), with every argument spelled out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueDef {
    /// Full (prefixed) name.
    pub name: String,
    /// What the queue is for.
    pub role: QueueRole,
    /// Classic or quorum.
    pub queue_type: QueueType,
    /// Every `x-` argument it is declared with, `x-queue-type` included.
    pub arguments: BTreeMap<String, ArgValue>,
}

/// A binding from an exchange to a queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingDef {
    /// Source exchange (prefixed).
    pub exchange: String,
    /// Destination queue (prefixed).
    pub queue: String,
    /// Binding key (never prefixed: publishers keep using `email`, `sms`, ...).
    pub routing_key: String,
}

/// How failures are retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Delays of the retry tiers, shortest first. Empty when retry is disabled.
    pub tiers: Vec<Duration>,
    /// Handler attempts in total before a message is dead-lettered as `max-attempts`.
    pub max_attempts: u32,
}

/// A work queue with everything the worker needs to route its outcomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkQueue {
    /// Full (prefixed) name.
    pub name: String,
    /// `x-max-priority`, if the queue has priorities.
    pub max_priority: Option<u8>,
    /// Retry tier queue names, in the order of [`RetryPolicy::tiers`].
    pub retry_queues: Vec<String>,
}

/// A validated, prefixed topology. Construct with [`Topology::load`] or [`Topology::parse`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Where it was read from, for messages.
    pub source: String,
    /// The prefix applied to every name (empty for none).
    pub prefix: String,
    /// Exchanges, the dead-letter exchange included.
    pub exchanges: Vec<ExchangeDef>,
    /// Every queue: work queues, their retry tiers, the dead-letter queue.
    pub queues: Vec<QueueDef>,
    /// Bindings, the dead-letter queue's included.
    pub bindings: Vec<BindingDef>,
    /// Work queues with their tiers.
    pub work_queues: Vec<WorkQueue>,
    /// The dead-letter exchange (fanout, bound to the dead-letter queue).
    pub dead_letter_exchange: String,
    /// The dead-letter queue.
    pub dead_letter_queue: String,
    /// Retry policy shared by every work queue.
    pub retry: RetryPolicy,
}

impl Topology {
    /// Reads and validates a topology file, prefixing every name with `prefix`.
    ///
    /// # Errors
    /// [`TopologyError`] naming the file, the key and the reason.
    pub fn load(path: &Path, prefix: &str) -> Result<Self, TopologyError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| TopologyError::Read {
            file: file.clone(),
            source,
        })?;
        Self::parse(&text, &file, prefix)
    }

    /// Validates topology text; `file` is only used in messages.
    ///
    /// # Errors
    /// [`TopologyError`] naming the file, the key and the reason.
    pub fn parse(text: &str, file: &str, prefix: &str) -> Result<Self, TopologyError> {
        let raw: RawTopology = toml::from_str(text).map_err(|e| TopologyError::Parse {
            file: file.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        Validator {
            file,
            prefix,
            names: BTreeSet::new(),
        }
        .validate(raw)
    }

    /// The work queue called `name` (full, prefixed name).
    pub fn work_queue(&self, name: &str) -> Option<&WorkQueue> {
        self.work_queues.iter().find(|q| q.name == name)
    }

    /// The definition of queue `name`.
    pub fn queue(&self, name: &str) -> Option<&QueueDef> {
        self.queues.iter().find(|q| q.name == name)
    }

    /// Every object name, for messages and clean-up.
    pub fn object_count(&self) -> usize {
        self.exchanges.len() + self.queues.len() + self.bindings.len()
    }
}

/// Formats a tier delay the way it appears in queue names: `1s`, `10s`, `1m`, `1h30m`.
pub fn tier_label(delay: Duration) -> String {
    humantime::format_duration(delay)
        .to_string()
        .replace(' ', "")
}

struct Validator<'a> {
    file: &'a str,
    prefix: &'a str,
    /// Every queue and exchange name seen so far (prefixed), for the uniqueness rule.
    names: BTreeSet<String>,
}

impl Validator<'_> {
    fn invalid(&self, key: impl Into<String>, reason: impl Into<String>) -> TopologyError {
        TopologyError::Invalid {
            file: self.file.to_owned(),
            key: key.into(),
            reason: reason.into(),
        }
    }

    /// Checks a name and returns it prefixed; names share one namespace so that a queue and an
    /// exchange of the same name cannot be confused in messages and diagrams.
    fn name(&mut self, key: &str, name: &str) -> Result<String, TopologyError> {
        if name.trim().is_empty() {
            return Err(self.invalid(key, "a name must not be empty"));
        }
        if name.starts_with("amq.") {
            return Err(self.invalid(
                key,
                format!("`{name}`: names starting with `amq.` are reserved by RabbitMQ"),
            ));
        }
        let full = format!("{}{name}", self.prefix);
        if full.len() > MAX_NAME_LEN {
            return Err(self.invalid(
                key,
                format!(
                    "`{full}` is {} bytes; AMQP names are at most {MAX_NAME_LEN}",
                    full.len()
                ),
            ));
        }
        if !self.names.insert(full.clone()) {
            return Err(self.invalid(
                key,
                format!("`{name}` is declared twice; every exchange and queue name must be unique"),
            ));
        }
        Ok(full)
    }

    fn queue_type(
        &self,
        key: &str,
        value: Option<&str>,
    ) -> Result<Option<QueueType>, TopologyError> {
        match value {
            None => Ok(None),
            Some("classic") => Ok(Some(QueueType::Classic)),
            Some("quorum") => Ok(Some(QueueType::Quorum)),
            Some(other) => Err(self.invalid(
                key,
                format!("unknown queue type `{other}`; use \"classic\" or \"quorum\""),
            )),
        }
    }

    fn priority(&self, key: &str, value: Option<i64>) -> Result<Option<u8>, TopologyError> {
        match value {
            None => Ok(None),
            Some(p) if (1..=MAX_PRIORITY).contains(&p) => Ok(u8::try_from(p).ok()),
            Some(p) => Err(self.invalid(
                key,
                format!("priority {p} is out of range; x-max-priority must be 1 to 255 (10 is the sensible maximum)"),
            )),
        }
    }

    fn positive(&self, key: &str, value: Option<i64>) -> Result<Option<i64>, TopologyError> {
        match value {
            Some(v) if v < 1 => Err(self.invalid(key, format!("{v} must be at least 1"))),
            other => Ok(other),
        }
    }

    fn validate(mut self, raw: RawTopology) -> Result<Topology, TopologyError> {
        let mut exchanges = Vec::new();
        let mut exchange_names = BTreeMap::new();
        for (i, e) in raw.exchanges.iter().enumerate() {
            let key = format!("exchanges[{i}]");
            let name = self.name(&format!("{key}.name"), &e.name)?;
            let kind = match e.kind.as_str() {
                "direct" => ExchangeType::Direct,
                "topic" => ExchangeType::Topic,
                "fanout" => ExchangeType::Fanout,
                "headers" => ExchangeType::Headers,
                other => {
                    return Err(self.invalid(
                        format!("{key}.type"),
                        format!(
                            "unknown exchange type `{other}`; use direct, topic, fanout or headers"
                        ),
                    ))
                }
            };
            exchange_names.insert(e.name.clone(), name.clone());
            exchanges.push(ExchangeDef { name, kind });
        }

        let retry = self.retry(raw.retry)?;

        let dl = raw.dead_letter.ok_or_else(|| {
            self.invalid(
                "dead_letter",
                "missing table; declare where dead letters go, e.g. [dead_letter] exchange = \"notifications.dlx\" queue = \"notifications.dlq\"",
            )
        })?;
        let dlx = self.name("dead_letter.exchange", &dl.exchange)?;
        let dlq = self.name("dead_letter.queue", &dl.queue)?;
        let dlq_type = self
            .queue_type("dead_letter.type", dl.queue_type.as_deref())?
            .unwrap_or(QueueType::Classic);
        let mut dlq_args = BTreeMap::new();
        dlq_args.insert(
            "x-queue-type".to_owned(),
            ArgValue::Str(dlq_type.as_str().to_owned()),
        );
        if let Some(max) = self.positive("dead_letter.max_length", dl.max_length)? {
            dlq_args.insert("x-max-length".to_owned(), ArgValue::Int(max));
        }
        match dl.overflow.as_deref() {
            None => {}
            Some(o @ ("drop-head" | "reject-publish" | "reject-publish-dlx")) => {
                if o == "drop-head" {
                    return Err(self.invalid(
                        "dead_letter.overflow",
                        "\"drop-head\" would silently delete the oldest dead letters; use \"reject-publish\" so the worker keeps the message and retries",
                    ));
                }
                dlq_args.insert("x-overflow".to_owned(), ArgValue::Str(o.to_owned()));
            }
            Some(other) => {
                return Err(self.invalid(
                    "dead_letter.overflow",
                    format!("unknown overflow `{other}`; use \"reject-publish\""),
                ))
            }
        }
        exchanges.push(ExchangeDef {
            name: dlx.clone(),
            kind: ExchangeType::Fanout,
        });

        let defaults = &raw.queue_defaults;
        let default_type = self
            .queue_type("queue_defaults.type", defaults.queue_type.as_deref())?
            .unwrap_or(QueueType::Classic);
        let default_priority =
            self.priority("queue_defaults.max_priority", defaults.max_priority)?;
        let default_limit =
            self.positive("queue_defaults.delivery_limit", defaults.delivery_limit)?;

        if raw.queues.is_empty() {
            return Err(self.invalid(
                "queues",
                "no work queues declared; add at least one [[queues]] table",
            ));
        }

        let mut queues = Vec::new();
        let mut bindings = Vec::new();
        let mut work_queues = Vec::new();
        for (i, q) in raw.queues.iter().enumerate() {
            let key = format!("queues[{i}]");
            let name = self.name(&format!("{key}.name"), &q.name)?;
            let queue_type = self
                .queue_type(&format!("{key}.type"), q.queue_type.as_deref())?
                .unwrap_or(default_type);
            let max_priority = self
                .priority(&format!("{key}.max_priority"), q.max_priority)?
                .or(default_priority);
            let delivery_limit = self
                .positive(&format!("{key}.delivery_limit"), q.delivery_limit)?
                .or(default_limit);
            if delivery_limit.is_some() && queue_type == QueueType::Classic {
                return Err(self.invalid(
                    format!("{key}.delivery_limit"),
                    "delivery_limit applies to quorum queues only (classic queues have no delivery limit; the worker's --max-redeliveries guards them)",
                ));
            }
            let mut args = BTreeMap::new();
            args.insert(
                "x-queue-type".to_owned(),
                ArgValue::Str(queue_type.as_str().to_owned()),
            );
            args.insert(
                "x-dead-letter-exchange".to_owned(),
                ArgValue::Str(dlx.clone()),
            );
            // Quorum queues (4.0+) have built-in priorities and refuse x-max-priority.
            if let (Some(p), QueueType::Classic) = (max_priority, queue_type) {
                args.insert("x-max-priority".to_owned(), ArgValue::Int(i64::from(p)));
            }
            if let Some(limit) = delivery_limit {
                args.insert("x-delivery-limit".to_owned(), ArgValue::Int(limit));
            }
            for (j, b) in q.bindings.iter().enumerate() {
                let exchange = exchange_names.get(&b.exchange).cloned().ok_or_else(|| {
                    self.invalid(
                        format!("{key}.bindings[{j}].exchange"),
                        format!(
                            "exchange `{}` is not declared in [[exchanges]] (declared: {})",
                            b.exchange,
                            raw.exchanges
                                .iter()
                                .map(|e| e.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    )
                })?;
                bindings.push(BindingDef {
                    exchange,
                    queue: name.clone(),
                    routing_key: b.routing_key.clone(),
                });
            }
            queues.push(QueueDef {
                name: name.clone(),
                role: QueueRole::Work,
                queue_type,
                arguments: args,
            });
            let mut retry_queues = Vec::new();
            for (t, delay) in retry.tiers.iter().enumerate() {
                let tier_name = self.name(
                    &format!("retry.tiers[{t}]"),
                    &format!("{}.retry.{}", q.name, tier_label(*delay)),
                )?;
                let mut targs = BTreeMap::new();
                targs.insert(
                    "x-queue-type".to_owned(),
                    ArgValue::Str(queue_type.as_str().to_owned()),
                );
                let ttl = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
                targs.insert("x-message-ttl".to_owned(), ArgValue::Int(ttl));
                targs.insert(
                    "x-dead-letter-exchange".to_owned(),
                    ArgValue::Str(String::new()),
                );
                targs.insert(
                    "x-dead-letter-routing-key".to_owned(),
                    ArgValue::Str(name.clone()),
                );
                queues.push(QueueDef {
                    name: tier_name.clone(),
                    role: QueueRole::Retry {
                        work_queue: name.clone(),
                        delay: *delay,
                    },
                    queue_type,
                    arguments: targs,
                });
                retry_queues.push(tier_name);
            }
            work_queues.push(WorkQueue {
                name,
                max_priority,
                retry_queues,
            });
        }

        queues.push(QueueDef {
            name: dlq.clone(),
            role: QueueRole::DeadLetter,
            queue_type: dlq_type,
            arguments: dlq_args,
        });
        bindings.push(BindingDef {
            exchange: dlx.clone(),
            queue: dlq.clone(),
            routing_key: String::new(),
        });

        Ok(Topology {
            source: self.file.to_owned(),
            prefix: self.prefix.to_owned(),
            exchanges,
            queues,
            bindings,
            work_queues,
            dead_letter_exchange: dlx,
            dead_letter_queue: dlq,
            retry,
        })
    }

    fn retry(&self, raw: Option<RawRetry>) -> Result<RetryPolicy, TopologyError> {
        let raw = raw.ok_or_else(|| {
            self.invalid(
                "retry",
                "missing table; declare retry tiers, e.g. [retry] tiers = [\"1s\", \"10s\", \"1m\"], or [retry] disabled = true",
            )
        })?;
        if raw.disabled {
            if !raw.tiers.is_empty() {
                return Err(self.invalid(
                    "retry.tiers",
                    "retry is disabled but tiers are listed; remove one of the two",
                ));
            }
            if let Some(m) = raw.max_attempts.filter(|m| *m != 1) {
                return Err(self.invalid(
                    "retry.max_attempts",
                    format!("{m} attempts need retry tiers; with retry disabled every message gets one attempt"),
                ));
            }
            return Ok(RetryPolicy {
                tiers: Vec::new(),
                max_attempts: 1,
            });
        }
        if raw.tiers.is_empty() {
            return Err(self.invalid(
                "retry.tiers",
                "the list is empty; list at least one delay (e.g. [\"1s\", \"10s\"]) or set retry.disabled = true",
            ));
        }
        let mut tiers = Vec::new();
        for (i, t) in raw.tiers.iter().enumerate() {
            let key = format!("retry.tiers[{i}]");
            let d = humantime::parse_duration(t).map_err(|e| {
                self.invalid(
                    &key,
                    format!("`{t}` is not a duration ({e}); write e.g. \"500ms\", \"10s\", \"1m\""),
                )
            })?;
            if d < Duration::from_millis(1) {
                return Err(self.invalid(&key, format!("`{t}`: a tier must be at least 1ms")));
            }
            if d.as_millis() > u128::from(u32::MAX) {
                return Err(self.invalid(
                    &key,
                    format!("`{t}`: RabbitMQ's x-message-ttl is at most 2^32-1 ms (about 49 days)"),
                ));
            }
            if let Some(prev) = tiers.last() {
                if d <= *prev {
                    return Err(self.invalid(
                        &key,
                        format!("`{t}` is not longer than the tier before it; tiers must grow"),
                    ));
                }
            }
            tiers.push(d);
        }
        let default_attempts = i64::try_from(tiers.len())
            .unwrap_or(i64::MAX)
            .saturating_add(1);
        let max_attempts = raw.max_attempts.unwrap_or(default_attempts);
        if !(1..=1_000_000).contains(&max_attempts) {
            return Err(self.invalid(
                "retry.max_attempts",
                format!("{max_attempts} is out of range; use 1 to 1000000"),
            ));
        }
        Ok(RetryPolicy {
            tiers,
            max_attempts: u32::try_from(max_attempts).unwrap_or(u32::MAX),
        })
    }
}

/// Resolves the topology path: the value given, else the default.
pub fn topology_path(given: Option<PathBuf>) -> PathBuf {
    given.unwrap_or_else(|| PathBuf::from(DEFAULT_TOPOLOGY_PATH))
}

#[cfg(test)]
mod tests;
