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
//! Quorum queues (`type = "quorum"`) get more arguments, all version-independent (RabbitMQ 3.10
//! and later take them alike):
//! - `x-quorum-initial-group-size` where the file sets `replicas` (else the broker's default:
//!   up to 3 members, one per node, `quorum_cluster_size`);
//! - on `Q` and its tiers, unless the file asks for `dead_letter_strategy = "at-most-once"`:
//!   `x-dead-letter-strategy = at-least-once` with the `x-overflow = reject-publish` it needs
//!   (with any other overflow RabbitMQ silently falls back to at-most-once, which can lose a
//!   message dead-lettered while a node fails, e.g. one leaving a tier for its work queue);
//! - on `Q`, `x-delivery-limit`: the file's `delivery_limit`, else [`DEFAULT_DELIVERY_LIMIT`]
//!   declared explicitly (3.x has no default limit, 4.0+ has 20), so the broker's backstop is the
//!   same on every version and sits above the worker's own crash-loop guard;
//! - on a quorum dead-letter queue, `x-delivery-limit` = [`DEAD_LETTER_QUEUE_DELIVERY_LIMIT`]:
//!   it has nowhere to dead-letter to, so a limit would delete messages that `courier-dlq`
//!   inspected (requeued) too often.
//!
//! This module is the file format alone (parse, validate, the model, exports): it opens no
//! connection. Declaring it on a broker and comparing it with one is [`crate::broker`]'s work.

mod export;
mod raw;
mod validate;

use raw::RawTopology;
use validate::Validator;

pub use export::{definitions_json, mermaid};

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The default topology file, relative to the working directory.
pub const DEFAULT_TOPOLOGY_PATH: &str = "topology/notifications.toml";

/// `topology/notifications.toml` as shipped, built into every binary: the fallback when no file
/// is named and none is at [`DEFAULT_TOPOLOGY_PATH`], so that an installed binary works from any
/// directory and not only from a checkout's root.
pub const BUILT_IN_DEFAULT: &str = include_str!("../../topology/notifications.toml");

/// How [`BUILT_IN_DEFAULT`] is named in messages and in [`Topology::source`].
pub const BUILT_IN_SOURCE: &str = "topology/notifications.toml (built in)";

/// What a binary tells its user when it falls back to [`BUILT_IN_DEFAULT`]: a file edited at
/// the default path elsewhere is not what runs, and the user must be able to see that.
pub const BUILT_IN_NOTICE: &str =
    "using the built-in default topology (topology/notifications.toml as shipped)";

/// The highest priority RabbitMQ accepts for `x-max-priority` (it recommends at most 10).
const MAX_PRIORITY: i64 = 255;

/// AMQP short strings (names) are at most 255 bytes.
const MAX_NAME_LEN: usize = 255;

/// `x-delivery-limit` of a quorum work queue whose file sets no `delivery_limit`: RabbitMQ 4.0's
/// own default, declared explicitly so that 3.x (which has no default limit) and 4.x behave
/// alike. RabbitMQ dead-letters a message returned more than this many times (the 21st return,
/// on 3.10 and 4.0 alike), to the dead-letter exchange with `x-death` reason `delivery_limit`.
/// The worker's `--max-redeliveries` (default 5) acts long before: it replaces every redelivered
/// message with a fresh copy, which the broker counts from zero.
pub const DEFAULT_DELIVERY_LIMIT: i64 = 20;

/// `x-delivery-limit` of a quorum dead-letter queue: no limit in practice, on every version. The
/// dead-letter queue has no dead-letter exchange, so a message over its limit would be deleted,
/// and `courier-dlq` requeues what it inspects (on 4.0-4.2 every requeue counts; 4.0's default
/// limit is 20). `-1`, which means "no limit" from 4.0, cannot be used: 3.x dead-letters (here:
/// deletes) a message at its first return when the limit is -1 (seen on 3.10.8).
pub const DEAD_LETTER_QUEUE_DELIVERY_LIMIT: i64 = i32::MAX as i64;

/// Why a topology file was refused. Every variant names the file; `Invalid` also names the key.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// The file could not be read at all.
    #[error("{file}: cannot read the topology file: {error}")]
    Read {
        /// The path as given.
        file: String,
        /// The I/O error. Shown in the message and deliberately not a `source()`: error chains
        /// (`anyhow`'s `{:#}`) print every source after the message, which showed it twice.
        error: std::io::Error,
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
    /// `x-consistent-hash` (plugin `rabbitmq_consistent_hash_exchange`): spreads messages over
    /// the bound queues by a hash of the routing key, a header or a property, so that one key
    /// always reaches the same queue.
    ConsistentHash,
}

impl ExchangeType {
    /// The name RabbitMQ uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Topic => "topic",
            Self::Fanout => "fanout",
            Self::Headers => "headers",
            Self::ConsistentHash => "x-consistent-hash",
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
    /// A boolean argument (`x-single-active-consumer`).
    Bool(bool),
}

impl ArgValue {
    /// As the management API and `definitions.json` write it.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Self::Int(i) => serde_json::json!(i),
            Self::Str(s) => serde_json::json!(s),
            Self::Bool(b) => serde_json::json!(b),
        }
    }
}

impl fmt::Display for ArgValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Int(i) => write!(f, "{i}"),
            Self::Str(s) => write!(f, "{s:?}"),
            Self::Bool(b) => write!(f, "{b}"),
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
    /// Its arguments (`hash-header`, `hash-property` of a shard exchange).
    pub arguments: BTreeMap<String, ArgValue>,
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
    /// An ordered channel's roll of workers: every worker of the channel keeps a consumer on
    /// it, so its consumer count is the fleet (a shard's is not: a quorum queue with a single
    /// active consumer counts only that one). Nothing is ever published to it.
    Members,
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
    /// Destination queue (prefixed), or exchange when `to_exchange`.
    pub queue: String,
    /// The destination is an exchange (a sharded channel's shard exchange).
    pub to_exchange: bool,
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
    /// The queue's urgent band, if the file asks for one (`urgent_from`).
    pub urgent: Option<UrgentBand>,
    /// For an urgent band: the work queue it belongs to (whose worker consumes it too).
    pub band_of: Option<String>,
    /// A sharded channel: the queue is not declared itself but spread over shard queues.
    pub sharding: Option<Sharding>,
}

/// What a sharded channel's consistent-hash exchange hashes to pick a shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardKey {
    /// A header's value (`header:x-courier-key`): publishers set it.
    Header(String),
    /// The routing key the message reaches the shard exchange with.
    RoutingKey,
    /// The `message_id` property.
    MessageId,
}

impl fmt::Display for ShardKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Header(h) => write!(f, "header:{h}"),
            Self::RoutingKey => f.write_str("routing-key"),
            Self::MessageId => f.write_str("message-id"),
        }
    }
}

/// A work queue spread over `queues` behind a consistent-hash `exchange`: one key always lands
/// in the same shard, and each shard has a single active consumer (`x-single-active-consumer`),
/// so a key's messages are handled in order by one worker at a time however many run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sharding {
    /// The consistent-hash exchange (prefixed), bound where the queue would be.
    pub exchange: String,
    /// What it hashes.
    pub key: ShardKey,
    /// The shard queues (prefixed), `<name>.shard.0` ..
    pub queues: Vec<String>,
    /// Handle a shard's messages one after another, retrying in place (no tiers).
    pub ordered: bool,
    /// For an ordered channel, its [`QueueRole::Members`] queue (`<name>.workers`), by which
    /// the workers count each other to share the shards out.
    pub members: Option<String>,
}

/// A priority band: a second work queue, `<name>.urgent`, for a queue's urgent messages. The
/// worker of the queue consumes both and always takes the band's messages first, which gives
/// strict "urgent before bulk" on any queue type and broker version (quorum queues have no
/// priorities on 3.x and two weighted levels on 4.0-4.2). Publishers choose the band by routing
/// key (`<key>.urgent`); Courier's own tools do so by priority ([`Topology::routing_key_for`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrgentBand {
    /// The band's work queue (prefixed), itself one of [`Topology::work_queues`].
    pub queue: String,
    /// Messages with this priority or higher belong in the band.
    pub from_priority: u8,
}

/// What a sharded channel's consistent-hash exchange is named after its queue.
pub const SHARD_EXCHANGE_SUFFIX: &str = ".shards";

/// The most shard queues one channel may have.
pub const MAX_SHARDS: usize = 1024;

/// What a band's binding keys end with: `email` goes to the queue, `email.urgent` to its band.
pub const URGENT_SUFFIX: &str = ".urgent";

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
        let text = std::fs::read_to_string(path).map_err(|error| TopologyError::Read {
            file: file.clone(),
            error,
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

    /// The routing key a message with `priority` should be published with to `exchange` under
    /// `routing_key`: the urgent band's key (`<key>.urgent`) when the key reaches a work queue
    /// with an urgent band and the priority is at or above the band's threshold, else the key
    /// as given. The broker cannot route on a message's priority, so a publisher that knows
    /// the topology does it.
    pub fn routing_key_for(&self, exchange: &str, routing_key: &str, priority: u8) -> String {
        let banded = self.bindings.iter().any(|b| {
            b.exchange == exchange
                && b.routing_key == routing_key
                && self
                    .work_queue(&b.queue)
                    .and_then(|w| w.urgent.as_ref())
                    .is_some_and(|u| priority >= u.from_priority)
        });
        if banded {
            format!("{routing_key}{URGENT_SUFFIX}")
        } else {
            routing_key.to_owned()
        }
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

/// Where a command's topology comes from. Every binary resolves it here, so `courier` and
/// `courier-dlq` agree on which file is meant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopologySource {
    /// A file: the one named (`--topology`, `COURIER_TOPOLOGY`), or [`DEFAULT_TOPOLOGY_PATH`]
    /// found in the working directory.
    File(PathBuf),
    /// [`BUILT_IN_DEFAULT`]: no file named, and none at the default path.
    BuiltIn,
}

impl TopologySource {
    /// The file named, else [`DEFAULT_TOPOLOGY_PATH`] if it exists in the working directory,
    /// else the built-in default. A file that is named but missing stays a file (and an error
    /// when loaded): what the user asked for is never silently replaced.
    pub fn resolve(given: Option<&Path>) -> Self {
        Self::resolve_with(given, || Path::new(DEFAULT_TOPOLOGY_PATH).exists())
    }

    /// [`TopologySource::resolve`] with the look at the working directory passed in.
    fn resolve_with(given: Option<&Path>, default_exists: impl FnOnce() -> bool) -> Self {
        match given {
            Some(path) => Self::File(path.to_path_buf()),
            None if default_exists() => Self::File(PathBuf::from(DEFAULT_TOPOLOGY_PATH)),
            None => Self::BuiltIn,
        }
    }

    /// True for the built-in default: the caller then shows [`BUILT_IN_NOTICE`].
    pub fn is_built_in(&self) -> bool {
        matches!(self, Self::BuiltIn)
    }

    /// Reads and validates the topology, every name prefixed with `prefix`.
    ///
    /// # Errors
    /// [`TopologyError`] naming the file (or [`BUILT_IN_SOURCE`]), the key and the reason.
    pub fn load(&self, prefix: &str) -> Result<Topology, TopologyError> {
        match self {
            Self::File(path) => Topology::load(path, prefix),
            Self::BuiltIn => Topology::parse(BUILT_IN_DEFAULT, BUILT_IN_SOURCE, prefix),
        }
    }
}

#[cfg(test)]
mod tests;
