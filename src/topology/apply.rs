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
//! A failed declare closes its channel, so every probe that may fail runs on a fresh one.

use super::{ArgValue, BrokerVersion, ExchangeDef, ExchangeType, QueueDef, QueueType, Topology};
use crate::amqp::AmqpUrl;
use crate::management::Management;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, Connection, ExchangeKind};
use std::fmt;

/// AMQP reply codes we act on.
const NOT_FOUND: u16 = 404;
const PRECONDITION_FAILED: u16 = 406;

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
        "{object} already exists with different arguments.\n  declared: {declared}\n  broker:   {broker_says}\n  fix: make the topology file match the existing object, or delete it and apply again \
         (for a queue: `rabbitmqctl delete_queue NAME` discards its messages, so move them first, e.g. with a shovel){}",
        done_suffix(.done)
    )]
    Conflict {
        /// The object (`queue 'x'`).
        object: String,
        /// Arguments in the topology file.
        declared: String,
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
    /// What could not be verified and why (e.g. bindings without the management API).
    pub notes: Vec<String>,
}

fn exchange_kind(kind: ExchangeType) -> ExchangeKind {
    match kind {
        ExchangeType::Direct => ExchangeKind::Direct,
        ExchangeType::Topic => ExchangeKind::Topic,
        ExchangeType::Fanout => ExchangeKind::Fanout,
        ExchangeType::Headers => ExchangeKind::Headers,
    }
}

/// The queue's arguments as an AMQP table.
pub(crate) fn field_table(args: &std::collections::BTreeMap<String, ArgValue>) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in args {
        let value = match v {
            ArgValue::Int(i) => AMQPValue::LongLongInt(*i),
            ArgValue::Str(s) => AMQPValue::LongString(LongString::from(s.as_str())),
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

/// The reply code and text of a broker error, if it is one.
fn broker_reply(e: &lapin::Error) -> Option<(u16, String)> {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(p) => Some((p.get_id(), p.get_message().to_string())),
        _ => None,
    }
}

/// Result of probing one object.
enum Probe {
    Missing,
    Same,
    Different(String),
}

/// A connection plus a channel that is replaced whenever a probe closes it.
struct Declarer<'a> {
    conn: &'a Connection,
    channel: Option<Channel>,
    url: &'a AmqpUrl,
}

impl Declarer<'_> {
    async fn channel(&mut self) -> Result<Channel, lapin::Error> {
        if let Some(ch) = &self.channel {
            if ch.status().connected() {
                return Ok(ch.clone());
            }
        }
        let ch = self.conn.create_channel().await?;
        self.channel = Some(ch.clone());
        Ok(ch)
    }

    fn err(&self, object: &str, e: &lapin::Error, done: &[String]) -> ApplyError {
        ApplyError::Broker {
            object: object.to_owned(),
            reason: self.url.scrub(&e.to_string()),
            done: done.to_vec(),
        }
    }

    async fn declare_exchange(
        &mut self,
        e: &ExchangeDef,
        passive: bool,
    ) -> Result<(), lapin::Error> {
        let ch = self.channel().await?;
        ch.exchange_declare(
            e.name.as_str().into(),
            exchange_kind(e.kind),
            ExchangeDeclareOptions {
                passive,
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
    }

    async fn declare_queue(&mut self, q: &QueueDef, passive: bool) -> Result<(), lapin::Error> {
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
        .await
        .map(|_| ())
    }

    /// Missing, same, or different, for an exchange.
    async fn probe_exchange(&mut self, e: &ExchangeDef) -> Result<Probe, lapin::Error> {
        match self.declare_exchange(e, true).await {
            Err(err) if broker_reply(&err).is_some_and(|(c, _)| c == NOT_FOUND) => {
                return Ok(Probe::Missing)
            }
            Err(err) => return Err(err),
            Ok(()) => {}
        }
        match self.declare_exchange(e, false).await {
            Ok(()) => Ok(Probe::Same),
            Err(err) => match broker_reply(&err) {
                Some((PRECONDITION_FAILED, text)) => Ok(Probe::Different(text)),
                _ => Err(err),
            },
        }
    }

    /// Missing, same, or different, for a queue.
    async fn probe_queue(&mut self, q: &QueueDef) -> Result<Probe, lapin::Error> {
        match self.declare_queue(q, true).await {
            Err(err) if broker_reply(&err).is_some_and(|(c, _)| c == NOT_FOUND) => {
                return Ok(Probe::Missing)
            }
            Err(err) => return Err(err),
            Ok(()) => {}
        }
        match self.declare_queue(q, false).await {
            Ok(()) => Ok(Probe::Same),
            Err(err) => match broker_reply(&err) {
                Some((PRECONDITION_FAILED, text)) => Ok(Probe::Different(text)),
                _ => Err(err),
            },
        }
    }
}

/// Refuses what the broker cannot do before anything is declared.
fn check_support(topology: &Topology, version: Option<BrokerVersion>) -> Result<(), ApplyError> {
    for wq in &topology.work_queues {
        let Some(def) = topology.queue(&wq.name) else {
            continue;
        };
        if def.queue_type == QueueType::Quorum && wq.max_priority.is_some() {
            let supported = version.is_some_and(BrokerVersion::quorum_priorities);
            if !supported {
                let seen = version.map_or_else(
                    || "an unknown version".to_owned(),
                    |v| format!("RabbitMQ {v}"),
                );
                return Err(ApplyError::Unsupported {
                    object: format!("queue '{}'", wq.name),
                    reason: format!(
                        "quorum queues have message priorities only from RabbitMQ 4.0, and this broker is {seen}. \
                         Use type = \"classic\" for this queue, or remove max_priority (and queue_defaults.max_priority) to keep it quorum without priorities"
                    ),
                    done: Vec::new(),
                });
            }
        }
    }
    Ok(())
}

/// Declares every exchange, queue and binding; idempotent.
///
/// # Errors
/// [`ApplyError`] naming the object and what was already declared.
pub async fn apply(url: &AmqpUrl, topology: &Topology) -> Result<ApplyReport, ApplyError> {
    let version = super::version::probe_version(url).await.ok().flatten();
    check_support(topology, version)?;
    let conn = url.connect("courier topology apply").await?;
    let mut d = Declarer {
        conn: &conn,
        channel: None,
        url,
    };
    let mut report = ApplyReport {
        broker_version: version,
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
                d.declare_exchange(e, false)
                    .await
                    .map_err(|err| d.err(&object, &err, &done))?;
                report.created.push(object.clone());
            }
            Probe::Same => report.unchanged.push(object.clone()),
            Probe::Different(text) => {
                return Err(ApplyError::Conflict {
                    object,
                    declared: format!("type={}, durable", e.kind.as_str()),
                    broker_says: text,
                    done,
                })
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
                    .map_err(|err| match broker_reply(&err) {
                        Some((PRECONDITION_FAILED, text)) => ApplyError::Unsupported {
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
                    declared: describe_args(q),
                    broker_says: text,
                    done,
                })
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
        ch.queue_bind(
            b.queue.as_str().into(),
            b.exchange.as_str().into(),
            b.routing_key.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|err| d.err(&object, &err, &done))?;
        report.bindings += 1;
        done.push(object);
    }
    let _ = conn.close(200, "topology applied".into()).await;
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
    let conn = url.connect("courier topology check").await?;
    let mut d = Declarer {
        conn: &conn,
        channel: None,
        url,
    };
    let mut report = CheckReport::default();
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
    let _ = conn.close(200, "topology checked".into()).await;

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
