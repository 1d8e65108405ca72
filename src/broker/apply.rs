//! Declaring a topology on a broker (`apply`) and comparing it with one (`check`).
//!
//! Both work over plain AMQP so they run against any broker, managed ones included:
//! - existence is tested with a passive declare (404 = missing);
//! - equivalence with a full redeclare of an existing object: RabbitMQ answers 406
//!   PRECONDITION_FAILED naming the first inequivalent argument and its current value, and
//!   changes nothing either way;
//! - bindings cannot be listed over AMQP, so `check` asks the management API when it answers and
//!   says plainly when it could not.
//!
//! A failed declare closes its channel; [`Admin`]'s channel replaces itself on the next call.

use super::{classify, Admin, BrokerError, BrokerVersion, Reply};
use crate::amqp::AmqpUrl;
use crate::management::Management;
use crate::topology::{ArgValue, ExchangeDef, ExchangeType, QueueDef, QueueType, Topology};
use lapin::options::{
    ExchangeBindOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::ExchangeKind;
use std::fmt;

/// What `apply` did.
#[derive(Debug, Default)]
pub struct ApplyReport {
    /// Objects that did not exist and were declared now.
    pub created: Vec<String>,
    /// Objects that already existed with the declared arguments.
    pub unchanged: Vec<String>,
    /// Bindings ensured (declaring a binding is idempotent; AMQP cannot tell if it was new).
    pub bindings: usize,
    /// The broker's version, when it could be read.
    pub broker_version: Option<BrokerVersion>,
    /// What the broker does differently from what the file says, on this version (e.g. a
    /// quorum queue's priority levels). Also logged at warn level.
    pub notes: Vec<String>,
}

impl ApplyReport {
    /// True when the run declared no new exchange or queue.
    pub fn nothing_changed(&self) -> bool {
        self.created.is_empty()
    }
}

/// Why `apply` or `check` stopped. Every variant lists what was already declared, so a partial
/// apply is never silent.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The broker could not be reached.
    #[error(transparent)]
    Connect(#[from] crate::amqp::AmqpError),
    /// The topology asks for something this broker cannot do.
    #[error("{object}: {reason}{}", done_suffix(.done))]
    Unsupported {
        /// The object (`queue 'x'`).
        object: String,
        /// Why, and what to do.
        reason: String,
        /// Objects declared before stopping.
        done: Vec<String>,
    },
    /// An object exists with other arguments (PRECONDITION_FAILED).
    #[error(
        "{object} already exists with different arguments.\n  declared: {declared}\n  existing: {existing}\n  broker:   {broker_says}\n  fix: make the topology file match the existing object, or delete it and apply again \
         (for a queue: `rabbitmqctl delete_queue NAME` discards its messages, so move them first, e.g. with a shovel){}",
        done_suffix(.done)
    )]
    Conflict {
        /// The object (`queue 'x'`).
        object: String,
        /// Arguments in the topology file.
        declared: String,
        /// The existing object's settings as the management API reports them, or why they could
        /// not be read and how to see them.
        existing: String,
        /// The broker's own words, which name the inequivalent argument and its current value.
        broker_says: String,
        /// Objects declared before stopping.
        done: Vec<String>,
    },
    /// Any other broker refusal (access refused, resource locked, ...).
    #[error("{object}: the broker refused: {reason}{}", done_suffix(.done))]
    Broker {
        /// The object.
        object: String,
        /// The broker's or client's message.
        reason: String,
        /// Objects declared before stopping.
        done: Vec<String>,
    },
}

fn done_suffix(done: &[String]) -> String {
    if done.is_empty() {
        "\n  nothing was declared before stopping".to_owned()
    } else {
        format!(
            "\n  declared before stopping ({}): {}",
            done.len(),
            done.join(", ")
        )
    }
}

/// One difference between the file and the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drift {
    /// The object does not exist.
    Missing {
        /// `exchange 'x'`, `queue 'y'` or `binding ...`.
        object: String,
    },
    /// The object exists with other arguments or type.
    Different {
        /// The object.
        object: String,
        /// The broker's words.
        detail: String,
    },
}

impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing { object } => write!(f, "missing:   {object}"),
            Self::Different { object, detail } => write!(f, "different: {object}: {detail}"),
        }
    }
}

/// What `check` found.
#[derive(Debug, Default)]
pub struct CheckReport {
    /// Every difference; empty when the broker matches the file.
    pub drift: Vec<Drift>,
    /// How many objects were compared.
    pub checked: usize,
    /// What could not be verified and why (e.g. bindings without the management API), and what
    /// this broker version does differently from the file (a quorum queue's priority levels,
    /// what `apply` would refuse).
    pub notes: Vec<String>,
}

/// Why a sharded channel's exchange cannot be declared, and what to do.
const NO_HASH_PLUGIN: &str = "this broker has no `x-consistent-hash` exchange type, which a sharded channel (shards = {...}) needs: \
     enable its plugin with `rabbitmq-plugins enable rabbitmq_consistent_hash_exchange` (on every node of a cluster; it ships with RabbitMQ), then run apply again";

fn exchange_kind(kind: ExchangeType) -> ExchangeKind {
    match kind {
        ExchangeType::Direct => ExchangeKind::Direct,
        ExchangeType::Topic => ExchangeKind::Topic,
        ExchangeType::Fanout => ExchangeKind::Fanout,
        ExchangeType::Headers => ExchangeKind::Headers,
        ExchangeType::ConsistentHash => ExchangeKind::Custom(kind.as_str().to_owned()),
    }
}

/// The queue's arguments as an AMQP table.
pub(crate) fn field_table(args: &std::collections::BTreeMap<String, ArgValue>) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in args {
        let value = match v {
            ArgValue::Int(i) => AMQPValue::LongLongInt(*i),
            ArgValue::Str(s) => AMQPValue::LongString(LongString::from(s.as_str())),
            ArgValue::Bool(b) => AMQPValue::Boolean(*b),
        };
        t.insert(k.as_str().into(), value);
    }
    t
}

fn describe_args(q: &QueueDef) -> String {
    q.arguments
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What kind of object a conflict is about, for the look-up of its existing settings.
#[derive(Clone, Copy)]
enum Kind {
    Queue,
    Exchange,
}

/// The existing object's settings for a conflict message: read from the management API (AMQP
/// cannot tell them, and the broker's refusal names only the first difference), or why they
/// could not be read and how to see them.
async fn existing(management: Option<&Management>, kind: Kind, name: &str) -> String {
    let (noun, rabbitmqctl) = match kind {
        Kind::Queue => (
            "queue",
            "rabbitmqctl list_queues name durable auto_delete arguments",
        ),
        Kind::Exchange => (
            "exchange",
            "rabbitmqctl list_exchanges name type durable auto_delete arguments",
        ),
    };
    let how = format!(
        "see them with `{rabbitmqctl}` on a broker node, or in the management UI ({noun} '{name}')"
    );
    let Some(m) = management else {
        return format!(
            "not read (no management API was given: pass --management-url to show them here); {how}"
        );
    };
    let found = match kind {
        Kind::Queue => m.queue(name).await,
        Kind::Exchange => m.exchange(name).await,
    };
    match found {
        Ok(Some(record)) => record.to_string(),
        Ok(None) => format!(
            "could not be read: the management API at {} does not know it (deleted since, or another vhost?); {how}",
            m.base()
        ),
        Err(e) => format!("could not be read ({e}); {how}"),
    }
}

/// Result of probing one object.
enum Probe {
    Missing,
    Same,
    Different(String),
}

/// A declare that failed: the broker's refusal, or no channel to ask on.
#[derive(Debug)]
enum Failed {
    Lapin(lapin::Error),
    Broker(BrokerError),
}

impl Failed {
    fn reply(&self) -> Option<(Reply, String)> {
        match self {
            Self::Lapin(e) => classify(e),
            Self::Broker(_) => None,
        }
    }
}

impl From<lapin::Error> for Failed {
    fn from(e: lapin::Error) -> Self {
        Self::Lapin(e)
    }
}

impl fmt::Display for Failed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Lapin(e) => e.fmt(f),
            Self::Broker(e) => e.fmt(f),
        }
    }
}

/// Declares and probes over an [`Admin`], turning failures into [`ApplyError`]s.
struct Declarer<'a> {
    admin: &'a Admin,
}

impl Declarer<'_> {
    async fn channel(&self) -> Result<lapin::Channel, Failed> {
        self.admin.channel().await.map_err(Failed::Broker)
    }

    fn err(&self, object: &str, e: &Failed, done: &[String]) -> ApplyError {
        ApplyError::Broker {
            object: object.to_owned(),
            reason: self.admin.url().scrub(&e.to_string()),
            done: done.to_vec(),
        }
    }

    async fn declare_exchange(&mut self, e: &ExchangeDef, passive: bool) -> Result<(), Failed> {
        let ch = self.channel().await?;
        ch.exchange_declare(
            e.name.as_str().into(),
            exchange_kind(e.kind),
            ExchangeDeclareOptions {
                passive,
                durable: true,
                ..Default::default()
            },
            if passive {
                FieldTable::default()
            } else {
                field_table(&e.arguments)
            },
        )
        .await?;
        Ok(())
    }

    async fn declare_queue(&mut self, q: &QueueDef, passive: bool) -> Result<(), Failed> {
        let ch = self.channel().await?;
        ch.queue_declare(
            q.name.as_str().into(),
            QueueDeclareOptions {
                passive,
                durable: true,
                ..Default::default()
            },
            if passive {
                FieldTable::default()
            } else {
                field_table(&q.arguments)
            },
        )
        .await?;
        Ok(())
    }

    /// Missing, same, or different, for an exchange.
    async fn probe_exchange(&mut self, e: &ExchangeDef) -> Result<Probe, Failed> {
        match self.declare_exchange(e, true).await {
            Err(err) if err.reply().is_some_and(|(r, _)| r == Reply::NotFound) => {
                return Ok(Probe::Missing)
            }
            Err(err) => return Err(err),
            Ok(()) => {}
        }
        match self.declare_exchange(e, false).await {
            Ok(()) => Ok(Probe::Same),
            Err(err) => match err.reply() {
                Some((Reply::PreconditionFailed, text)) => Ok(Probe::Different(text)),
                _ => Err(err),
            },
        }
    }

    /// Missing, same, or different, for a queue.
    async fn probe_queue(&mut self, q: &QueueDef) -> Result<Probe, Failed> {
        match self.declare_queue(q, true).await {
            Err(err) if err.reply().is_some_and(|(r, _)| r == Reply::NotFound) => {
                return Ok(Probe::Missing)
            }
            Err(err) => return Err(err),
            Ok(()) => {}
        }
        match self.declare_queue(q, false).await {
            Ok(()) => Ok(Probe::Same),
            Err(err) => match err.reply() {
                Some((Reply::PreconditionFailed, text)) => Ok(Probe::Different(text)),
                _ => Err(err),
            },
        }
    }
}

/// What the topology asks of this broker that it cannot do, as `(object, reason)`: `apply`
/// refuses the first before declaring anything, `check` lists them as notes.
fn unsupported(topology: &Topology, version: Option<BrokerVersion>) -> Vec<(String, String)> {
    let seen = version.map_or_else(
        || "an unknown version".to_owned(),
        |v| format!("RabbitMQ {v}"),
    );
    let mut found = Vec::new();
    for wq in &topology.work_queues {
        let Some(def) = topology.queue(&wq.name) else {
            continue;
        };
        if def.queue_type == QueueType::Quorum && wq.max_priority.is_some() {
            let supported = version.is_some_and(BrokerVersion::quorum_priorities);
            if !supported {
                found.push((
                    format!("queue '{}'", wq.name),
                    format!(
                        "quorum queues have message priorities only from RabbitMQ 4.0, and this broker is {seen}. \
                         Use type = \"classic\" for this queue, or remove max_priority (and queue_defaults.max_priority) to keep it quorum without priorities; \
                         an urgent band (urgent_from = 5) puts urgent messages ahead of bulk ones on any version without max_priority"
                    ),
                ));
            }
        }
    }
    // Quorum retry tiers need message TTL, and the at-least-once strategy, both from 3.10. An
    // unknown version is left to the broker: it refuses what it does not know.
    if let Some(v) = version.filter(|v| !v.quorum_ttl_and_at_least_once()) {
        for q in topology
            .queues
            .iter()
            .filter(|q| q.queue_type == QueueType::Quorum)
        {
            let object = format!("queue '{}'", q.name);
            if q.arguments.contains_key("x-message-ttl") {
                found.push((
                    object,
                    format!(
                        "quorum queues have message TTL only from RabbitMQ 3.10, and this broker is RabbitMQ {v}: \
                         this retry tier could never return a message to its work queue. Use type = \"classic\" for the work queue, or upgrade the broker"
                    ),
                ));
            } else if q.arguments.get("x-dead-letter-strategy")
                == Some(&ArgValue::Str("at-least-once".to_owned()))
            {
                found.push((
                    object,
                    format!(
                        "at-least-once dead-lettering needs RabbitMQ 3.10, and this broker is RabbitMQ {v}. \
                         Write dead_letter_strategy = \"at-most-once\" for this queue (a message the broker dead-letters can then be lost if a node fails on the way), or upgrade the broker"
                    ),
                ));
            }
        }
    }
    found
}

/// Refuses what the broker cannot do before anything is declared.
fn check_support(topology: &Topology, version: Option<BrokerVersion>) -> Result<(), ApplyError> {
    match unsupported(topology, version).into_iter().next() {
        Some((object, reason)) => Err(ApplyError::Unsupported {
            object,
            reason,
            done: Vec::new(),
        }),
        None => Ok(()),
    }
}

/// What a quorum queue with `max_priority` gets on this broker version, in words: quorum queues
/// take no `x-max-priority` (refused up to 4.2, ignored from 4.3), so the file's `0..=max`
/// maps onto the broker's own levels. Nothing is said for 3.x (refused, see [`unsupported`]) or
/// an unknown version.
fn quorum_priority_notes(topology: &Topology, version: Option<BrokerVersion>) -> Vec<String> {
    let Some(v) = version else {
        return Vec::new();
    };
    let mut notes = Vec::new();
    // A band shares its queue's settings; one note says it for both.
    for wq in topology.work_queues.iter().filter(|w| w.band_of.is_none()) {
        let Some(p) = wq.max_priority else {
            continue;
        };
        let band = match &wq.urgent {
            Some(u) => format!(
                " (this queue has one: priorities {}-{p} go to '{}')",
                u.from_priority, u.queue
            ),
            None => String::new(),
        };
        if topology.queue(&wq.name).map(|q| q.queue_type) != Some(QueueType::Quorum) {
            continue;
        }
        let name = &wq.name;
        let note = match v.quorum_priority_levels() {
            0 => continue,
            2 if p >= 5 => format!(
                "quorum queue '{name}': RabbitMQ {v} gives two priority levels (0-4 normal, 5-{p} high; \
                 while both wait, two high messages are delivered for each normal one), not the 0-{p} in order that max_priority = {p} asks for; \
                 x-max-priority is not declared (quorum queues refuse it on this version). Where urgent must come strictly first, add urgent_from = 5 (an urgent band){band}, or use a classic queue"
            ),
            2 => format!(
                "quorum queue '{name}': RabbitMQ {v} gives two priority levels (0-4 normal, 5 and above high), \
                 so priorities 0-{p} (max_priority = {p}) are all normal here: no message overtakes another; \
                 x-max-priority is not declared (quorum queues refuse it on this version)"
            ),
            levels => {
                let top = u32::from(levels) - 1;
                let clamped = if u32::from(p) > top {
                    format!(", and priorities above {top} count as {top}")
                } else {
                    String::new()
                };
                format!(
                    "quorum queue '{name}': RabbitMQ {v} orders quorum queue priorities strictly over {levels} levels (0-{top}), \
                     so 0-{p} (max_priority = {p}) keep their order as on a classic queue, except that a message without a priority counts as 4, not 0{clamped}; \
                     x-max-priority is not declared (quorum queues ignore it)"
                )
            }
        };
        notes.push(note);
    }
    notes
}

/// Declares every exchange, queue and binding; idempotent. A conflict's message cannot show the
/// existing object's arguments (see [`apply_with`]).
///
/// # Errors
/// [`ApplyError`] naming the object and what was already declared.
pub async fn apply(url: &AmqpUrl, topology: &Topology) -> Result<ApplyReport, ApplyError> {
    apply_with(url, topology, None).await
}

/// [`apply`], asking `management` for the existing object's arguments when one conflicts, so
/// that the message shows them next to the declared ones (and says how to see them when the
/// management API cannot be read).
///
/// # Errors
/// [`ApplyError`] naming the object and what was already declared.
pub async fn apply_with(
    url: &AmqpUrl,
    topology: &Topology,
    management: Option<&Management>,
) -> Result<ApplyReport, ApplyError> {
    let version = super::version::probe_version(url).await.ok().flatten();
    check_support(topology, version)?;
    let admin = Admin::connect(url, "courier topology apply").await?;
    let mut d = Declarer { admin: &admin };
    let notes = quorum_priority_notes(topology, version);
    for note in &notes {
        tracing::warn!("{note}");
    }
    let mut report = ApplyReport {
        broker_version: version,
        notes,
        ..Default::default()
    };
    let mut done: Vec<String> = Vec::new();

    for e in &topology.exchanges {
        let object = format!("exchange '{}'", e.name);
        match d
            .probe_exchange(e)
            .await
            .map_err(|err| d.err(&object, &err, &done))?
        {
            Probe::Missing => {
                d.declare_exchange(e, false).await.map_err(|err| {
                    if e.kind == ExchangeType::ConsistentHash
                        && err.to_string().contains("unknown exchange type")
                    {
                        ApplyError::Unsupported {
                            object: object.clone(),
                            reason: NO_HASH_PLUGIN.to_owned(),
                            done: done.clone(),
                        }
                    } else {
                        d.err(&object, &err, &done)
                    }
                })?;
                report.created.push(object.clone());
            }
            Probe::Same => report.unchanged.push(object.clone()),
            Probe::Different(text) => {
                return Err(ApplyError::Conflict {
                    object,
                    declared: format!("type={}, durable", e.kind.as_str()),
                    existing: existing(management, Kind::Exchange, &e.name).await,
                    broker_says: text,
                    done,
                });
            }
        }
        done.push(object);
    }
    for q in &topology.queues {
        let object = format!("queue '{}'", q.name);
        match d
            .probe_queue(q)
            .await
            .map_err(|err| d.err(&object, &err, &done))?
        {
            Probe::Missing => {
                d.declare_queue(q, false)
                    .await
                    .map_err(|err| match err.reply() {
                        Some((Reply::PreconditionFailed, text)) => ApplyError::Unsupported {
                            object: object.clone(),
                            reason: format!(
                                "the broker refused the arguments {}: {text}",
                                describe_args(q)
                            ),
                            done: done.clone(),
                        },
                        _ => d.err(&object, &err, &done),
                    })?;
                report.created.push(object.clone());
            }
            Probe::Same => report.unchanged.push(object.clone()),
            Probe::Different(text) => {
                return Err(ApplyError::Conflict {
                    object,
                    declared: format!("{} (durable)", describe_args(q)),
                    existing: existing(management, Kind::Queue, &q.name).await,
                    broker_says: text,
                    done,
                });
            }
        }
        done.push(object);
    }
    for b in &topology.bindings {
        let object = format!(
            "binding {} -> {} ({:?})",
            b.exchange, b.queue, b.routing_key
        );
        let ch = d
            .channel()
            .await
            .map_err(|err| d.err(&object, &err, &done))?;
        let bound = if b.to_exchange {
            ch.exchange_bind(
                b.queue.as_str().into(),
                b.exchange.as_str().into(),
                b.routing_key.as_str().into(),
                ExchangeBindOptions::default(),
                FieldTable::default(),
            )
            .await
        } else {
            ch.queue_bind(
                b.queue.as_str().into(),
                b.exchange.as_str().into(),
                b.routing_key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
        };
        bound.map_err(|err| d.err(&object, &Failed::from(err), &done))?;
        report.bindings += 1;
        done.push(object);
    }
    admin.close().await;
    Ok(report)
}

/// Compares the broker with the topology without changing anything.
///
/// # Errors
/// [`ApplyError::Connect`] or [`ApplyError::Broker`] when the comparison itself fails.
pub async fn check(
    url: &AmqpUrl,
    topology: &Topology,
    management: Option<&Management>,
) -> Result<CheckReport, ApplyError> {
    let version = super::version::probe_version(url).await.ok().flatten();
    let admin = Admin::connect(url, "courier topology check").await?;
    let mut d = Declarer { admin: &admin };
    let mut report = CheckReport::default();
    for (object, reason) in unsupported(topology, version) {
        report.notes.push(format!(
            "{object}: `courier topology apply` would refuse it: {reason}"
        ));
    }
    report
        .notes
        .extend(quorum_priority_notes(topology, version));
    for e in &topology.exchanges {
        let object = format!("exchange '{}'", e.name);
        report.checked += 1;
        match d
            .probe_exchange(e)
            .await
            .map_err(|err| d.err(&object, &err, &[]))?
        {
            Probe::Missing => report.drift.push(Drift::Missing { object }),
            Probe::Same => {}
            Probe::Different(detail) => report.drift.push(Drift::Different { object, detail }),
        }
    }
    for q in &topology.queues {
        let object = format!("queue '{}'", q.name);
        report.checked += 1;
        match d
            .probe_queue(q)
            .await
            .map_err(|err| d.err(&object, &err, &[]))?
        {
            Probe::Missing => report.drift.push(Drift::Missing { object }),
            Probe::Same => {}
            Probe::Different(detail) => report.drift.push(Drift::Different { object, detail }),
        }
    }
    admin.close().await;

    match management {
        None => report.notes.push(
            "bindings not verified: AMQP cannot list them; pass --management-url (RabbitMQ management plugin) to check them".to_owned(),
        ),
        Some(m) => match m.bindings().await {
            Ok(found) => {
                for b in &topology.bindings {
                    report.checked += 1;
                    if !found.contains(&(b.exchange.clone(), b.queue.clone(), b.routing_key.clone())) {
                        report.drift.push(Drift::Missing {
                            object: format!("binding {} -> {} ({:?})", b.exchange, b.queue, b.routing_key),
                        });
                    }
                }
            }
            Err(e) => report.notes.push(format!("bindings not verified: {e}")),
        },
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: &str = crate::topology::BUILT_IN_DEFAULT;

    fn quorum(text: &str) -> Topology {
        let text = text.replace("type = \"classic\"     #", "type = \"quorum\" #");
        Topology::parse(&text, "t.toml", "").expect("valid")
    }

    fn v(s: &str) -> Option<BrokerVersion> {
        BrokerVersion::parse(s)
    }

    #[test]
    fn quorum_priorities_are_refused_on_3x_and_an_unknown_version() {
        let t = quorum(DEFAULT);
        for version in [v("3.13.7"), None] {
            let found = unsupported(&t, version);
            assert_eq!(found.len(), 4, "one per work queue: {found:?}");
            let (object, reason) = &found[0];
            assert_eq!(object, "queue 'notifications.email'");
            assert!(
                reason.contains("only from RabbitMQ 4.0") && reason.contains("type = \"classic\""),
                "{reason}"
            );
            assert!(quorum_priority_notes(&t, version).is_empty());
        }
        assert!(unsupported(&t, v("4.0.5")).is_empty());
        // Classic queues have priorities everywhere.
        let classic = Topology::parse(DEFAULT, "t", "").expect("valid");
        assert!(unsupported(&classic, v("3.10.8")).is_empty());
        assert!(quorum_priority_notes(&classic, v("4.0.5")).is_empty());
    }

    #[test]
    fn quorum_tiers_and_at_least_once_need_3_10() {
        let no_priority = DEFAULT.replace("max_priority = 9     #", "#");
        let t = quorum(&no_priority);
        let found = unsupported(&t, v("3.9.29"));
        let tier = found
            .iter()
            .find(|(o, _)| o == "queue 'notifications.email.retry.1s'")
            .expect("tier refused");
        assert!(
            tier.1.contains("message TTL only from RabbitMQ 3.10"),
            "{tier:?}"
        );
        let work = found
            .iter()
            .find(|(o, _)| o == "queue 'notifications.email'")
            .expect("work queue refused");
        assert!(
            work.1
                .contains("at-least-once dead-lettering needs RabbitMQ 3.10")
                && work.1.contains("dead_letter_strategy = \"at-most-once\""),
            "{work:?}"
        );
        assert!(unsupported(&t, v("3.10.0")).is_empty());
        // Unknown: left to the broker, which refuses what it does not know.
        assert!(unsupported(&t, None).is_empty());
        // At most once and no tiers: nothing 3.9 lacks.
        let plain = quorum(
            &no_priority
                .replace(
                    "type = \"classic\"     #",
                    "dead_letter_strategy = \"at-most-once\"\ntype = \"classic\"     #",
                )
                .replace(
                    "tiers = [\"1s\", \"10s\", \"1m\", \"10m\"]\nmax_attempts = 5",
                    "disabled = true",
                ),
        );
        assert!(unsupported(&plain, v("3.9.29")).is_empty());
    }

    #[test]
    fn notes_say_what_a_quorum_queue_with_priorities_gets() {
        let t = quorum(DEFAULT);
        let notes = quorum_priority_notes(&t, v("4.0.5"));
        assert_eq!(notes.len(), 4, "{notes:?}");
        assert!(
            notes[0].starts_with("quorum queue 'notifications.email': RabbitMQ 4.0.5 gives two priority levels (0-4 normal, 5-9 high")
                && notes[0].contains("not the 0-9 in order that max_priority = 9 asks for")
                && notes[0].contains("x-max-priority is not declared"),
            "{}",
            notes[0]
        );
        let low = quorum(&DEFAULT.replace("max_priority = 9", "max_priority = 3"));
        let notes = quorum_priority_notes(&low, v("4.2.1"));
        assert!(
            notes[0].contains("priorities 0-3 (max_priority = 3) are all normal here"),
            "{}",
            notes[0]
        );
        let notes = quorum_priority_notes(&t, v("4.3.0"));
        assert!(
            notes[0].contains("strictly over 32 levels (0-31)")
                && notes[0].contains("without a priority counts as 4")
                && !notes[0].contains("above 31"),
            "{}",
            notes[0]
        );
        let high = quorum(&DEFAULT.replace("max_priority = 9", "max_priority = 40"));
        let notes = quorum_priority_notes(&high, v("4.3.0"));
        assert!(
            notes[0].contains("priorities above 31 count as 31"),
            "{}",
            notes[0]
        );
    }
}
