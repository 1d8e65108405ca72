//! The tool's view of the broker: one consuming connection, queue and exchange look-ups that
//! turn AMQP reply codes into errors that name the object and the fix.
//!
//! Publishing goes through the library's confirmed [`courier::publisher::Publisher`] on its own
//! connection, so a broker memory alarm that blocks publishes cannot also block our acks.

use courier::amqp::AmqpUrl;
use lapin::options::{
    BasicConsumeOptions, BasicQosOptions, ExchangeDeclareOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer, ErrorKind, ExchangeKind};
use std::future::Future;
use std::time::Duration;

/// How long any single broker operation may take. A connection the broker closed under us (or
/// a broker blocked by an alarm) can leave a request unanswered; the tool then fails with a
/// message instead of waiting forever.
pub const DEADLINE: Duration = Duration::from_secs(15);

/// Runs `fut` with [`DEADLINE`]; `what` names the operation in the error.
pub async fn deadline<T, E: std::fmt::Display>(
    what: &str,
    fut: impl Future<Output = Result<T, E>>,
) -> Result<T, BrokerError> {
    match tokio::time::timeout(DEADLINE, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(BrokerError::Other {
            what: what.to_owned(),
            reason: courier::amqp::redact(&e.to_string()),
        }),
        Err(_) => Err(BrokerError::Other {
            what: what.to_owned(),
            reason: format!(
                "no answer within {}s (connection lost, or the broker is blocked by a resource alarm)",
                DEADLINE.as_secs()
            ),
        }),
    }
}

/// Why the broker side of a command failed.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
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
    #[error("queue '{queue}' is in use by another consumer, so courier-dlq cannot take it exclusively ({reason}); wait for the other courier-dlq command to finish, or stop whatever consumes the dead-letter queue")]
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

/// The AMQP reply code of a protocol error (404 not found, 403 access refused, 405 locked).
fn reply_code(e: &lapin::Error) -> Option<u16> {
    match e.kind() {
        ErrorKind::ProtocolError(p) => Some(p.get_id()),
        _ => None,
    }
}

/// A connection for consuming and looking things up.
pub struct Broker {
    url: AmqpUrl,
    conn: Connection,
}

/// The hint for a missing dead-letter queue.
pub const APPLY_HINT: &str = "run `courier topology apply` with the same --topology and --prefix, or name the queue with --queue";

impl Broker {
    /// Connects; the name shows in the management UI's connection list.
    ///
    /// # Errors
    /// [`courier::amqp::AmqpError`] with the redacted URL when the broker cannot be reached.
    pub async fn connect(url: &AmqpUrl, name: &str) -> Result<Self, courier::amqp::AmqpError> {
        let conn = url.connect(name).await?;
        Ok(Self {
            url: url.clone(),
            conn,
        })
    }

    fn other(&self, what: impl Into<String>, e: &lapin::Error) -> BrokerError {
        BrokerError::Other {
            what: what.into(),
            reason: self.url.scrub(&e.to_string()),
        }
    }

    async fn channel(&self, what: &str) -> Result<Channel, BrokerError> {
        if !self.conn.status().connected() {
            return Err(BrokerError::Other {
                what: what.to_owned(),
                reason: "the connection to the broker is closed".to_owned(),
            });
        }
        match tokio::time::timeout(DEADLINE, self.conn.create_channel()).await {
            Ok(r) => r.map_err(|e| self.other(what, &e)),
            Err(_) => Err(BrokerError::Other {
                what: what.to_owned(),
                reason: format!("no answer within {}s", DEADLINE.as_secs()),
            }),
        }
    }

    /// Runs a look-up on its own channel with [`DEADLINE`], closing the channel after.
    async fn on_channel<T>(
        &self,
        what: &str,
        f: impl AsyncFnOnce(&Channel) -> lapin::Result<T>,
    ) -> Result<lapin::Result<T>, BrokerError> {
        let ch = self.channel("opening a channel").await?;
        let r = tokio::time::timeout(DEADLINE, f(&ch)).await;
        let _ = tokio::time::timeout(DEADLINE, ch.close(200, "looked up".into())).await;
        r.map_err(|_| BrokerError::Other {
            what: what.to_owned(),
            reason: format!("no answer within {}s", DEADLINE.as_secs()),
        })
    }

    /// Messages ready in `queue` now (a passive declare: nothing is created).
    ///
    /// # Errors
    /// [`BrokerError::QueueMissing`] with `hint` when it does not exist.
    pub async fn count(&self, queue: &str, hint: &str) -> Result<u32, BrokerError> {
        // A 404 closes the channel it happened on, so every look-up gets its own.
        let what = format!("looking up queue '{queue}'");
        let declared = self
            .on_channel(&what, async |ch: &Channel| {
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
            Ok(q) => Ok(q.message_count()),
            Err(e) if reply_code(&e) == Some(404) => Err(BrokerError::QueueMissing {
                queue: queue.to_owned(),
                url: self.url.to_string(),
                hint: hint.to_owned(),
            }),
            Err(e) => Err(self.other(what, &e)),
        }
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
            .on_channel(&what, async |ch: &Channel| {
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
            Err(e) if reply_code(&e) == Some(404) => Ok(false),
            Err(e) => Err(self.other(what, &e)),
        }
    }

    /// An exclusive consumer on `queue` with `prefetch` unacknowledged deliveries at most.
    /// Exclusive, so that two courier-dlq commands can never interleave on one queue (and a
    /// pass cannot run while anything else consumes the dead-letter queue).
    ///
    /// # Errors
    /// [`BrokerError::QueueBusy`] if someone else consumes it, [`BrokerError::QueueMissing`] if
    /// it disappeared.
    pub async fn consume(
        &self,
        queue: &str,
        prefetch: u16,
    ) -> Result<(Channel, Consumer), BrokerError> {
        let ch = self.channel("opening the consuming channel").await?;
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
        let consumed =
            tokio::time::timeout(DEADLINE, consume)
                .await
                .map_err(|_| BrokerError::Other {
                    what: format!("consuming '{queue}'"),
                    reason: format!("no answer within {}s", DEADLINE.as_secs()),
                })?;
        let consumer = consumed.map_err(|e| match reply_code(&e) {
            Some(403) | Some(405) => BrokerError::QueueBusy {
                queue: queue.to_owned(),
                reason: self.url.scrub(&e.to_string()),
            },
            Some(404) => BrokerError::QueueMissing {
                queue: queue.to_owned(),
                url: self.url.to_string(),
                hint: APPLY_HINT.to_owned(),
            },
            _ => self.other(format!("consuming '{queue}'"), &e),
        })?;
        Ok((ch, consumer))
    }

    /// Closes the connection (the broker requeues anything still unacknowledged on it).
    pub async fn close(&self) {
        if self.conn.status().connected() {
            let _ = tokio::time::timeout(DEADLINE, self.conn.close(200, "courier-dlq done".into()))
                .await;
        }
    }
}
