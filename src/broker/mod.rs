//! Every conversation with RabbitMQ outside the worker's consume loop and the publisher.
//!
//! The worker's consumer and the [`crate::publisher`] own their connections because they are
//! the hot path; everything else (`courier topology`, `courier demo`, `courier-dlq`, the bench,
//! the test fixtures) goes through this module, so connection handling, reply-code
//! classification and deadlines change in one place:
//! - [`Admin`]: one connection plus a channel that replaces itself after a soft error (a 404 or
//!   406 closes the channel it happened on), queue and exchange look-ups by passive declare,
//!   purges, deletes of a whole [`Topology`], an exclusive consumer for passes over a queue
//!   ([`Admin::unused_queue`] first: a queue another consumer holds is busy, not empty).
//! - [`classify`]: the one function that turns a lapin error into a broker [`Reply`] code.
//! - [`apply()`] / [`check()`]: declaring a topology and comparing a broker with it
//!   ([`apply_with`] also shows a conflicting object's existing arguments, read from the
//!   management API).
//! - [`probe_version`]: which RabbitMQ answers (read from `connection.start`).
//! - [`inspect()`]: bounded, order-preserving reads of the head of a queue.
//!
//! Every call has a deadline ([`DEADLINE`]): a connection the broker closed under us, or a broker
//! blocked by a resource alarm, can leave a request unanswered, and a tool must then fail with a
//! message rather than wait forever.

mod apply;
mod inspect;
mod version;

pub use apply::{apply, apply_with, check, ApplyError, ApplyReport, CheckReport, Drift};
pub use inspect::{inspect, InspectError, Sample, MAX_INSPECT};
pub use version::{probe_server, probe_version, BrokerVersion, ServerInfo, VersionProbeError};

use crate::amqp::{AmqpError, AmqpUrl, Node};
use crate::topology::Topology;
use lapin::options::{
    BasicConsumeOptions, BasicQosOptions, ExchangeDeclareOptions, QueueDeclareOptions,
    QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer, ExchangeKind};
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

/// How long any single broker operation may take here.
pub const DEADLINE: Duration = Duration::from_secs(15);

/// The hint for a queue or exchange that is missing.
pub const APPLY_HINT: &str = "run `courier topology apply` with the same --topology and --prefix, or name the queue with --queue";

/// The AMQP reply codes callers act on; see [`classify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// 403 ACCESS_REFUSED: no permission, or an exclusive consumer holds the queue.
    AccessRefused,
    /// 404 NOT_FOUND: the queue or exchange does not exist.
    NotFound,
    /// 405 RESOURCE_LOCKED: another connection holds the queue exclusively.
    ResourceLocked,
    /// 406 PRECONDITION_FAILED: the object exists with other arguments (or a stale ack tag).
    PreconditionFailed,
    /// Any other code.
    Other(u16),
}

impl Reply {
    /// The code for a numeric reply.
    pub fn from_code(code: u16) -> Self {
        match code {
            403 => Self::AccessRefused,
            404 => Self::NotFound,
            405 => Self::ResourceLocked,
            406 => Self::PreconditionFailed,
            other => Self::Other(other),
        }
    }

    /// True when another consumer holds the queue (403 or 405 on an exclusive consume).
    pub fn is_busy(self) -> bool {
        matches!(self, Self::AccessRefused | Self::ResourceLocked)
    }
}

/// The broker's reply code and text when `e` is a refusal from the broker (not an I/O error).
pub fn classify(e: &lapin::Error) -> Option<(Reply, String)> {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(p) => {
            Some((Reply::from_code(p.get_id()), p.get_message().to_string()))
        }
        _ => None,
    }
}

/// Why a broker operation failed. Never contains the password.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The broker could not be reached.
    #[error(transparent)]
    Connect(#[from] AmqpError),
    /// The queue is not there.
    #[error("queue '{queue}' does not exist on {url}: {hint}")]
    QueueMissing {
        /// The queue.
        queue: String,
        /// The broker (redacted).
        url: String,
        /// What to do.
        hint: String,
    },
    /// Another consumer holds the queue, so an exclusive consumer is refused.
    #[error("queue '{queue}' is in use by another consumer, so it cannot be taken exclusively ({reason}); wait for the other courier-dlq command to finish, or stop whatever consumes the queue")]
    QueueBusy {
        /// The queue.
        queue: String,
        /// The broker's words.
        reason: String,
    },
    /// Anything else the broker or the connection said.
    #[error("{what}: {reason}")]
    Other {
        /// What we were doing.
        what: String,
        /// The (redacted) error.
        reason: String,
    },
}

impl BrokerError {
    fn timeout(what: &str) -> Self {
        Self::Other {
            what: what.to_owned(),
            reason: format!(
                "no answer within {}s (connection lost, or the broker is blocked by a resource alarm)",
                DEADLINE.as_secs()
            ),
        }
    }
}

/// Runs `fut` with [`DEADLINE`]; `what` names the operation in the error, whose text is redacted.
///
/// # Errors
/// [`BrokerError::Other`] when `fut` fails or takes longer than the deadline.
pub async fn deadline<T, E: std::fmt::Display>(
    what: &str,
    fut: impl Future<Output = Result<T, E>>,
) -> Result<T, BrokerError> {
    match tokio::time::timeout(DEADLINE, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(BrokerError::Other {
            what: what.to_owned(),
            reason: crate::amqp::redact(&e.to_string()),
        }),
        Err(_) => Err(BrokerError::timeout(what)),
    }
}

/// What the broker says of a queue now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueState {
    /// Messages ready for delivery (not those delivered and unacknowledged).
    pub ready: u32,
    /// Consumers subscribed.
    pub consumers: u32,
}

/// What [`Admin::delete`] did.
#[derive(Debug, Default)]
pub struct DeleteReport {
    /// Queues deleted (or already absent: deleting a missing queue succeeds).
    pub queues: usize,
    /// Exchanges deleted (or already absent).
    pub exchanges: usize,
    /// Messages that were in the deleted queues.
    pub messages: u64,
    /// Objects that could not be deleted (`queue 'x'`), with the reason.
    pub failed: Vec<(String, String)>,
}

/// One connection for look-ups and housekeeping, with a channel that replaces itself.
pub struct Admin {
    /// Where the broker is; also scrubs the password from errors.
    url: AmqpUrl,
    /// The connection every channel here is opened on.
    conn: Connection,
    /// The node the connection went to.
    node: Node,
    /// The shared channel for operations that cannot close it in normal use; `None` or closed
    /// after a soft error, and then replaced by [`Admin::channel`].
    channel: Mutex<Option<Channel>>,
}

impl Admin {
    /// Connects; `name` shows in the management UI's connection list.
    ///
    /// # Errors
    /// [`AmqpError`] with the redacted URL when the broker cannot be reached.
    pub async fn connect(url: &AmqpUrl, name: &str) -> Result<Self, AmqpError> {
        let (conn, node) = url.connect_node(name).await?;
        Ok(Self {
            url: url.clone(),
            conn,
            node,
            channel: Mutex::new(None),
        })
    }

    /// The broker node this connection is on.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// The broker's URL (displays without the password).
    pub fn url(&self) -> &AmqpUrl {
        &self.url
    }

    /// The error for a lapin failure while doing `what`, with the password scrubbed.
    pub fn error(&self, what: impl Into<String>, e: &lapin::Error) -> BrokerError {
        BrokerError::Other {
            what: what.into(),
            reason: self.url.scrub(&e.to_string()),
        }
    }

    /// A new channel on the connection (for work that may close it, or needs its own qos).
    ///
    /// # Errors
    /// [`BrokerError::Other`] when the connection is closed or does not answer.
    pub async fn open_channel(&self, what: &str) -> Result<Channel, BrokerError> {
        if !self.conn.status().connected() {
            return Err(BrokerError::Other {
                what: what.to_owned(),
                reason: "the connection to the broker is closed".to_owned(),
            });
        }
        match tokio::time::timeout(DEADLINE, self.conn.create_channel()).await {
            Ok(r) => r.map_err(|e| self.error(what, &e)),
            Err(_) => Err(BrokerError::timeout(what)),
        }
    }

    /// The shared channel, opened again if a previous operation's error closed it.
    ///
    /// # Errors
    /// As [`Admin::open_channel`].
    pub async fn channel(&self) -> Result<Channel, BrokerError> {
        if let Some(ch) = self.channel.lock().ok().and_then(|c| c.clone()) {
            if ch.status().connected() {
                return Ok(ch);
            }
        }
        let ch = self.open_channel("opening a channel").await?;
        if let Ok(mut slot) = self.channel.lock() {
            *slot = Some(ch.clone());
        }
        Ok(ch)
    }

    /// Runs a probe that may fail with a soft error on its own short-lived channel, so that
    /// concurrent callers of the shared channel never see it closed under them.
    async fn probe<T>(
        &self,
        what: &str,
        f: impl AsyncFnOnce(&Channel) -> lapin::Result<T>,
    ) -> Result<lapin::Result<T>, BrokerError> {
        let ch = self.open_channel(what).await?;
        let r = tokio::time::timeout(DEADLINE, f(&ch)).await;
        if ch.status().connected() {
            let _ = tokio::time::timeout(DEADLINE, ch.close(200, "looked up".into())).await;
        }
        r.map_err(|_| BrokerError::timeout(what))
    }

    /// The queue's ready messages and consumers, or `None` when it does not exist (a passive
    /// declare: nothing is created).
    ///
    /// # Errors
    /// [`BrokerError::Other`] when the broker cannot be asked.
    pub async fn queue_state(&self, queue: &str) -> Result<Option<QueueState>, BrokerError> {
        let what = format!("looking up queue '{queue}'");
        let declared = self
            .probe(&what, async |ch: &Channel| {
                ch.queue_declare(
                    queue.into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
            })
            .await?;
        match declared {
            Ok(q) => Ok(Some(QueueState {
                ready: q.message_count(),
                consumers: q.consumer_count(),
            })),
            Err(e) if classify(&e).is_some_and(|(r, _)| r == Reply::NotFound) => Ok(None),
            Err(e) => Err(self.error(what, &e)),
        }
    }

    /// Like [`Admin::queue_state`], but a missing queue is an error carrying `hint`.
    ///
    /// # Errors
    /// [`BrokerError::QueueMissing`] when it does not exist.
    pub async fn existing_queue(&self, queue: &str, hint: &str) -> Result<QueueState, BrokerError> {
        self.queue_state(queue)
            .await?
            .ok_or_else(|| BrokerError::QueueMissing {
                queue: queue.to_owned(),
                url: self.url.to_string(),
                hint: hint.to_owned(),
            })
    }

    /// Like [`Admin::existing_queue`], for a caller about to take the queue with an exclusive
    /// consumer: a queue that something already consumes is refused here, before anything is
    /// read. The exclusive `basic.consume` would refuse it too, but a consumer that holds the
    /// queue's messages unacknowledged (a running `courier-dlq` pass) leaves 0 ready, and a
    /// caller that stops at "nothing ready" would then report an empty queue instead of a busy
    /// one. The "unused" of AMQP's `queue.delete if-unused`: no consumers.
    ///
    /// # Errors
    /// [`BrokerError::QueueMissing`] when it does not exist, [`BrokerError::QueueBusy`] when it
    /// has a consumer.
    pub async fn unused_queue(&self, queue: &str, hint: &str) -> Result<QueueState, BrokerError> {
        let state = self.existing_queue(queue, hint).await?;
        if state.consumers > 0 {
            return Err(BrokerError::QueueBusy {
                queue: queue.to_owned(),
                reason: format!(
                    "the broker reports {} consumer(s) on it and {} ready message(s); messages a consumer holds are unacknowledged and not counted as ready",
                    state.consumers, state.ready
                ),
            });
        }
        Ok(state)
    }

    /// Whether `exchange` exists (`""`, the default exchange, always does).
    ///
    /// # Errors
    /// [`BrokerError::Other`] when the broker cannot be asked.
    pub async fn exchange_exists(&self, exchange: &str) -> Result<bool, BrokerError> {
        if exchange.is_empty() {
            return Ok(true);
        }
        let what = format!("looking up exchange '{exchange}'");
        let declared = self
            .probe(&what, async |ch: &Channel| {
                ch.exchange_declare(
                    exchange.into(),
                    ExchangeKind::Direct,
                    ExchangeDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
            })
            .await?;
        match declared {
            Ok(()) => Ok(true),
            Err(e) if classify(&e).is_some_and(|(r, _)| r == Reply::NotFound) => Ok(false),
            Err(e) => Err(self.error(what, &e)),
        }
    }

    /// Removes every ready message of `queue`; returns how many.
    ///
    /// # Errors
    /// [`BrokerError`] when the queue is missing or the broker refuses.
    pub async fn purge(&self, queue: &str) -> Result<u32, BrokerError> {
        let what = format!("purging queue '{queue}'");
        let ch = self.channel().await?;
        deadline(
            &what,
            ch.queue_purge(queue.into(), QueuePurgeOptions::default()),
        )
        .await
    }

    /// Deletes one queue, messages and all; returns how many messages it held. A missing queue
    /// is not an error (AMQP's `queue.delete` is idempotent).
    ///
    /// # Errors
    /// [`BrokerError`] when the broker refuses or does not answer.
    pub async fn delete_queue(&self, queue: &str) -> Result<u32, BrokerError> {
        self.delete_queue_with(queue, false).await
    }

    async fn delete_queue_with(&self, queue: &str, if_unused: bool) -> Result<u32, BrokerError> {
        let ch = self.channel().await?;
        deadline(
            &format!("deleting queue '{queue}'"),
            ch.queue_delete(
                queue.into(),
                QueueDeleteOptions {
                    if_unused,
                    ..Default::default()
                },
            ),
        )
        .await
    }

    /// Deletes one exchange (idempotent, like [`Admin::delete_queue`]).
    ///
    /// # Errors
    /// [`BrokerError`] when the broker refuses or does not answer.
    pub async fn delete_exchange(&self, exchange: &str) -> Result<(), BrokerError> {
        let ch = self.channel().await?;
        deadline(
            &format!("deleting exchange '{exchange}'"),
            ch.exchange_delete(exchange.into(), Default::default()),
        )
        .await
    }

    /// Deletes every queue and exchange of `topology` (messages included), carrying on past
    /// failures and reporting them. A queue that has consumers is left alone (`if-unused`): it is
    /// someone's live work, and the report names it.
    pub async fn delete(&self, topology: &Topology) -> DeleteReport {
        self.delete_objects(
            topology.queues.iter().map(|q| q.name.as_str()),
            topology.exchanges.iter().map(|e| e.name.as_str()),
        )
        .await
    }

    /// [`Admin::delete`] for objects named one by one (found on the broker rather than read
    /// from a topology): queues first, messages included, a queue with consumers left alone;
    /// then exchanges.
    pub async fn delete_objects<'a>(
        &self,
        queues: impl IntoIterator<Item = &'a str>,
        exchanges: impl IntoIterator<Item = &'a str>,
    ) -> DeleteReport {
        let mut report = DeleteReport::default();
        for q in queues {
            match self.delete_queue_with(q, true).await {
                Ok(n) => {
                    report.queues += 1;
                    report.messages += u64::from(n);
                }
                Err(e) => report.failed.push((format!("queue '{q}'"), e.to_string())),
            }
        }
        for e in exchanges {
            match self.delete_exchange(e).await {
                Ok(()) => report.exchanges += 1,
                Err(err) => report
                    .failed
                    .push((format!("exchange '{e}'"), err.to_string())),
            }
        }
        report
    }

    /// An exclusive consumer on `queue`, on its own channel, with at most `prefetch`
    /// unacknowledged deliveries. Exclusive, so that two passes can never interleave on one
    /// queue, and a pass cannot run while anything else consumes it.
    ///
    /// # Errors
    /// [`BrokerError::QueueBusy`] if someone else consumes it, [`BrokerError::QueueMissing`] if
    /// it does not exist.
    pub async fn consume_exclusive(
        &self,
        queue: &str,
        prefetch: u16,
    ) -> Result<(Channel, Consumer), BrokerError> {
        let ch = self.open_channel("opening the consuming channel").await?;
        // Per-consumer prefetch (global=false): global qos is refused from RabbitMQ 4.3.
        deadline(
            "setting the prefetch",
            ch.basic_qos(prefetch.max(1), BasicQosOptions { global: false }),
        )
        .await?;
        let consume = ch.basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        );
        let what = format!("consuming '{queue}'");
        let consumed = tokio::time::timeout(DEADLINE, consume)
            .await
            .map_err(|_| BrokerError::timeout(&what))?;
        let consumer = consumed.map_err(|e| match classify(&e).map(|(r, _)| r) {
            Some(r) if r.is_busy() => BrokerError::QueueBusy {
                queue: queue.to_owned(),
                reason: self.url.scrub(&e.to_string()),
            },
            Some(Reply::NotFound) => BrokerError::QueueMissing {
                queue: queue.to_owned(),
                url: self.url.to_string(),
                hint: APPLY_HINT.to_owned(),
            },
            _ => self.error(what.clone(), &e),
        })?;
        Ok((ch, consumer))
    }

    /// A copy of everything published to `exchange` from now on: a server-named, exclusive,
    /// auto-delete queue bound to it (with routing key `routing_key`), consumed without acks,
    /// so the tap never holds a message back and disappears with the connection. What the tap
    /// sees is a copy: the exchange's own queues get theirs as before. `courier-dlq replay`
    /// taps the dead-letter exchange to see replayed messages come back.
    ///
    /// # Errors
    /// The exchange is missing, or the broker refuses the queue, the binding or the consumer.
    pub async fn tap(
        &self,
        exchange: &str,
        routing_key: &str,
    ) -> Result<(Channel, Consumer), BrokerError> {
        if !self.exchange_exists(exchange).await? {
            return Err(BrokerError::Other {
                what: format!("tapping exchange '{exchange}'"),
                reason: format!(
                    "it does not exist on {}; run `courier topology apply` with the same --topology and --prefix",
                    self.url
                ),
            });
        }
        let ch = self.open_channel("opening the tap's channel").await?;
        let declared = deadline(
            "declaring the tap's queue",
            ch.queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            ),
        )
        .await?;
        let queue = declared.name().as_str().to_owned();
        deadline(
            &format!("binding a tap to exchange '{exchange}'"),
            ch.queue_bind(
                queue.as_str().into(),
                exchange.into(),
                routing_key.into(),
                lapin::options::QueueBindOptions::default(),
                FieldTable::default(),
            ),
        )
        .await?;
        let consumer = deadline(
            "consuming the tap",
            ch.basic_consume(
                queue.as_str().into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    exclusive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            ),
        )
        .await?;
        Ok((ch, consumer))
    }

    /// Closes the connection (the broker requeues anything still unacknowledged on it).
    pub async fn close(&self) {
        if self.conn.status().connected() {
            let _ = tokio::time::timeout(DEADLINE, self.conn.close(200, "done".into())).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_codes_are_classified_once() {
        assert_eq!(Reply::from_code(404), Reply::NotFound);
        assert_eq!(Reply::from_code(406), Reply::PreconditionFailed);
        assert!(Reply::from_code(403).is_busy());
        assert!(Reply::from_code(405).is_busy());
        assert!(!Reply::from_code(404).is_busy());
        assert_eq!(Reply::from_code(320), Reply::Other(320));
    }
}
