//! A confirmed publisher: every publish waits for the broker's confirm, many in flight at once.
//!
//! - Publisher confirms on a dedicated connection (a broker memory alarm blocks a connection's
//!   writes; keeping publishes off the consumer's connection keeps acks flowing).
//! - A bounded window of unconfirmed publishes (a semaphore), not one round trip per message.
//! - `mandatory`: a message no queue accepts is an error, never a silent success. lapin attaches
//!   a `basic.return` to whichever confirm completes next, which under a large window is often a
//!   neighbour's; so returns are collected by `message_id` from every confirm, and a message is
//!   only judged once every confirm that completed with it has been looked at (see the `actor` function).
//! - A deadline on every confirm: during `connection.blocked` lapin queues writes forever.
//! - A lost channel fails exactly the publishes in flight on it; the next publish reconnects.

use crate::amqp::{AmqpError, AmqpUrl, Node};
use crate::metrics::Metrics;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Confirmation, Connection, PublisherConfirm};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, Mutex, Semaphore};

/// How a [`Publisher`] behaves.
#[derive(Debug, Clone)]
pub struct PublisherConfig {
    /// Connection name shown in the management UI.
    pub name: String,
    /// Unconfirmed publishes allowed in flight.
    pub window: usize,
    /// How long to wait for a confirm before failing the publish.
    pub confirm_timeout: Duration,
}

impl Default for PublisherConfig {
    fn default() -> Self {
        Self {
            name: "courier publisher".to_owned(),
            window: 1024,
            confirm_timeout: Duration::from_secs(30),
        }
    }
}

/// A message to publish.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Target exchange (`""` for the default exchange, i.e. straight to a queue).
    pub exchange: String,
    /// Routing key (the queue name on the default exchange).
    pub routing_key: String,
    /// Properties; `message_id` is required (it identifies returns).
    pub properties: BasicProperties,
    /// Body bytes.
    pub body: Vec<u8>,
}

/// Why a publish is not confirmed. Each concerns exactly one message.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PublishError {
    /// The broker refused to take responsibility (e.g. `x-overflow=reject-publish`).
    #[error("broker nacked message {message_id} to '{exchange}' with key '{routing_key}' (queue full or broker error)")]
    Nacked {
        /// The message.
        message_id: String,
        /// Its exchange.
        exchange: String,
        /// Its routing key.
        routing_key: String,
    },
    /// No queue was bound for it: it was returned, not stored.
    #[error("message {message_id} is unroutable: no queue bound to exchange '{exchange}' with key '{routing_key}' (run `courier topology apply`?)")]
    Returned {
        /// The message.
        message_id: String,
        /// Its exchange.
        exchange: String,
        /// Its routing key.
        routing_key: String,
    },
    /// No confirm within the deadline (broker blocked by an alarm, or overloaded).
    #[error(
        "no confirm for message {message_id} within {timeout:?} (broker blocked or overloaded?)"
    )]
    Timeout {
        /// The message.
        message_id: String,
        /// The deadline.
        timeout: Duration,
    },
    /// The channel or connection failed before the confirm.
    #[error("publish of message {message_id} failed: {reason}")]
    Channel {
        /// The message.
        message_id: String,
        /// What failed.
        reason: String,
    },
    /// The exchange does not exist (the broker closed the channel with 404): retrying cannot
    /// help until the topology is applied.
    #[error("message {message_id} cannot be published: exchange '{exchange}' does not exist (run `courier topology apply` with the same --prefix?)")]
    NoExchange {
        /// The message.
        message_id: String,
        /// The missing exchange.
        exchange: String,
    },
    /// Could not (re)connect.
    #[error("{0}")]
    Connect(String),
}

impl PublishError {
    /// Every [`kind`](Self::kind), for metrics: each series exists before the first failure.
    pub const KINDS: [&'static str; 6] = [
        "nack",
        "returned",
        "timeout",
        "channel",
        "no-exchange",
        "connect",
    ];

    /// Label for metrics; one of [`Self::KINDS`].
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Nacked { .. } => "nack",
            Self::Returned { .. } => "returned",
            Self::Timeout { .. } => "timeout",
            Self::Channel { .. } => "channel",
            Self::NoExchange { .. } => "no-exchange",
            Self::Connect(_) => "connect",
        }
    }

    /// True when retrying the same publish cannot succeed without an operator's fix.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::Returned { .. } | Self::NoExchange { .. })
    }
}

impl crate::retry::Permanence for PublishError {
    fn is_permanent(&self) -> bool {
        PublishError::is_permanent(self)
    }
}

impl From<AmqpError> for PublishError {
    fn from(e: AmqpError) -> Self {
        Self::Connect(e.to_string())
    }
}

/// What the actor needs to answer one publish.
struct Meta {
    message_id: String,
    exchange: String,
    routing_key: String,
    started: Instant,
    reply: oneshot::Sender<Result<(), PublishError>>,
}

/// A request to the channel's actor.
struct Request {
    msg: Outgoing,
    meta: Meta,
}

/// A connection with a confirm-mode channel and the actor task that publishes on it.
struct Live {
    conn: Connection,
    channel: Channel,
    tx: mpsc::UnboundedSender<Request>,
    /// The broker node the connection is on.
    node: Node,
    /// Set by the actor on a nack: the next publish goes on a fresh connection (see
    /// [`Publisher::reconnect`]).
    stale: Arc<AtomicBool>,
}

struct Inner {
    url: AmqpUrl,
    config: PublisherConfig,
    metrics: Metrics,
    window: Semaphore,
    /// The current connection. Read on every publish (a short, uncontended lock), written only
    /// when a reconnect replaces it.
    current: std::sync::RwLock<Option<Arc<Live>>>,
    /// Serialises reconnects, so a failure makes one new connection, not one per publish.
    reconnect: Mutex<()>,
    /// Set once a connection has existed, so later connects count as reconnects.
    connected_once: AtomicBool,
    /// Total confirmed publishes, for reports.
    confirmed: AtomicU64,
}

/// Cheap to clone; all clones share one connection and window. Publishes handed to it are
/// written to the channel in the order `publish` is called.
#[derive(Clone)]
pub struct Publisher {
    inner: Arc<Inner>,
}

impl Publisher {
    /// Creates a publisher and opens its connection.
    ///
    /// # Errors
    /// [`PublishError::Connect`] if the broker cannot be reached.
    pub async fn connect(
        url: &AmqpUrl,
        config: PublisherConfig,
        metrics: Metrics,
    ) -> Result<Self, PublishError> {
        let p = Self::lazy(url, config, metrics);
        p.sender().await?;
        Ok(p)
    }

    /// Creates a publisher that connects on first use.
    pub fn lazy(url: &AmqpUrl, config: PublisherConfig, metrics: Metrics) -> Self {
        let window = config.window.max(1);
        Self {
            inner: Arc::new(Inner {
                url: url.clone(),
                config,
                metrics,
                window: Semaphore::new(window),
                current: std::sync::RwLock::new(None),
                reconnect: Mutex::new(()),
                connected_once: AtomicBool::new(false),
                confirmed: AtomicU64::new(0),
            }),
        }
    }

    /// Connects now unless connected (a [`Publisher::lazy`] one connects on first use). While
    /// the connection is healthy, publishes reach the broker in the order they were called; the
    /// first ones of a lazy publisher that nobody made ready can overtake each other while it
    /// connects, so a caller that needs their order (a `courier-dlq` pass putting messages back
    /// to the tail) awaits this first.
    ///
    /// # Errors
    /// [`PublishError::Connect`] if the broker cannot be reached.
    pub async fn ready(&self) -> Result<(), PublishError> {
        self.sender().await.map(|_| ())
    }

    /// Publishes confirmed so far.
    pub fn confirmed(&self) -> u64 {
        self.inner.confirmed.load(Ordering::Relaxed)
    }

    /// The current channel's actor if it is healthy: the fast path of every publish.
    fn healthy_sender(&self) -> Option<mpsc::UnboundedSender<Request>> {
        let guard = self.inner.current.read().unwrap_or_else(|e| e.into_inner());
        guard
            .as_ref()
            .filter(|l| {
                l.channel.status().connected()
                    && l.conn.status().connected()
                    && !l.tx.is_closed()
                    && !l.stale.load(Ordering::Relaxed)
            })
            .map(|l| l.tx.clone())
    }

    /// The current channel's actor, (re)connecting first if the channel is gone.
    async fn sender(&self) -> Result<mpsc::UnboundedSender<Request>, PublishError> {
        if let Some(tx) = self.healthy_sender() {
            return Ok(tx);
        }
        Box::pin(self.reconnect()).await
    }

    /// The slow path: replace a failed connection (one caller at a time; the others find the
    /// fresh one when they get the lock).
    async fn reconnect(&self) -> Result<mpsc::UnboundedSender<Request>, PublishError> {
        let _one_at_a_time = self.inner.reconnect.lock().await;
        if let Some(tx) = self.healthy_sender() {
            return Ok(tx);
        }
        let old = self
            .inner
            .current
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(old) = old {
            let alive = old.channel.status().connected() && old.conn.status().connected();
            if old.stale.load(Ordering::Relaxed) && alive {
                // Replaced after a nack, not a failure: the publishes still in flight on it get
                // their confirms first, then it closes.
                tracing::info!(node = %old.node, "publisher opens a fresh channel after a nack");
                let grace = self.inner.config.confirm_timeout;
                tokio::spawn(async move {
                    tokio::time::sleep(grace).await;
                    let _ = tokio::time::timeout(
                        Duration::from_secs(2),
                        old.conn.close(200, "replaced after a nack".into()),
                    )
                    .await;
                });
            } else {
                // With a node list, reconnect elsewhere first: the node may be hung, not dead.
                self.inner.url.mark_lost(&old.node);
                // A dead connection's close can hang; it must not hold every publish hostage.
                let _ = tokio::time::timeout(
                    Duration::from_secs(2),
                    old.conn.close(200, "replacing a failed channel".into()),
                )
                .await;
            }
        }
        let reconnecting = self.inner.connected_once.load(Ordering::Relaxed);
        if reconnecting {
            self.inner
                .metrics
                .reconnects
                .with_label_values(&[crate::metrics::label::PUBLISHER])
                .inc();
            tracing::info!(url = %self.inner.url, "publisher reconnecting");
        }
        let deadline = self
            .inner
            .config
            .confirm_timeout
            .max(Duration::from_secs(5));
        let fresh = tokio::time::timeout(deadline, self.open())
            .await
            .map_err(|_| {
                PublishError::Connect(format!(
                    "no connection to {} within {deadline:?}",
                    self.inner.url
                ))
            })??;
        if reconnecting {
            tracing::info!(node = %fresh.node, "publisher reconnected");
        }
        let tx = fresh.tx.clone();
        *self
            .inner
            .current
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(fresh));
        Ok(tx)
    }

    /// Opens a connection and a confirm-mode channel, and starts the channel's actor.
    async fn open(&self) -> Result<Live, PublishError> {
        let (conn, node) = self.inner.url.connect_node(&self.inner.config.name).await?;
        let scrub = |e: lapin::Error| {
            PublishError::Connect(format!("{node}: {}", self.inner.url.scrub(&e.to_string())))
        };
        let channel = conn.create_channel().await.map_err(scrub)?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(scrub)?;
        watch_blocked(&conn, self.inner.metrics.clone());
        let (tx, rx) = mpsc::unbounded_channel();
        let stale = Arc::new(AtomicBool::new(false));
        tokio::spawn(actor(
            channel.clone(),
            rx,
            self.inner.clone(),
            stale.clone(),
        ));
        self.inner.connected_once.store(true, Ordering::Relaxed);
        self.inner
            .metrics
            .set_node(crate::metrics::label::PUBLISHER, &node.address);
        Ok(Live {
            conn,
            channel,
            tx,
            node,
            stale,
        })
    }

    /// Publishes one message (mandatory) and waits for its confirm.
    ///
    /// # Errors
    /// [`PublishError`] for exactly this message: nacked, returned, timed out, channel lost.
    pub async fn publish(&self, mut msg: Outgoing) -> Result<(), PublishError> {
        // Returns are matched by message_id, so every publish has one.
        let message_id = match crate::envelope::message_id(&msg.properties) {
            Some(id) => id.to_owned(),
            None => {
                let id = crate::envelope::new_message_id();
                msg.properties = msg.properties.with_message_id(id.as_str().into());
                id
            }
        };
        // The write order is the order publishes take the window (a fair semaphore), which is
        // the order their futures are first polled, unless tokio's cooperative budget (128
        // operations a task poll) parks one: then a later publish polled after the task yields
        // overtakes it (seen: a burst of 1,600 put-back copies out of order at the 129th).
        // Unconstrained, a publish's first poll always takes its place in the queue.
        let (_permit, tx) = tokio::task::unconstrained(async {
            let permit = self
                .inner
                .window
                .acquire()
                .await
                .map_err(|_| PublishError::Connect("publisher closed".to_owned()))?;
            Ok::<_, PublishError>((permit, self.sender().await?))
        })
        .await?;
        let (reply, rx) = oneshot::channel();
        let meta = Meta {
            message_id: message_id.clone(),
            exchange: msg.exchange.clone(),
            routing_key: msg.routing_key.clone(),
            started: Instant::now(),
            reply,
        };
        if tx.send(Request { msg, meta }).is_err() {
            return Err(PublishError::Channel {
                message_id,
                reason: "the channel closed before the publish".to_owned(),
            });
        }
        let timeout = self.inner.config.confirm_timeout;
        let result = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(PublishError::Channel {
                message_id,
                reason: "channel closed before the confirm".to_owned(),
            }),
            Err(_) => Err(PublishError::Timeout {
                message_id,
                timeout,
            }),
        };
        match &result {
            Ok(()) => {
                self.inner.confirmed.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => self
                .inner
                .metrics
                .publish_failures
                .with_label_values(&[e.kind()])
                .inc(),
        }
        result
    }

    /// Closes the connection after in-flight confirms are answered (or time out).
    pub async fn close(&self) {
        let max = u32::try_from(self.inner.config.window.max(1)).unwrap_or(u32::MAX);
        let _all = tokio::time::timeout(
            self.inner.config.confirm_timeout,
            self.inner.window.acquire_many(max),
        )
        .await;
        let live = self
            .inner
            .current
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(live) = live {
            let _ = tokio::time::timeout(
                Duration::from_secs(5),
                live.conn.close(200, "publisher closed".into()),
            )
            .await;
        }
    }
}

mod actor;

use actor::{actor, watch_blocked};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_listed_once() {
        let id = || "m".to_owned();
        let all = [
            PublishError::Nacked {
                message_id: id(),
                exchange: id(),
                routing_key: id(),
            },
            PublishError::Returned {
                message_id: id(),
                exchange: id(),
                routing_key: id(),
            },
            PublishError::Timeout {
                message_id: id(),
                timeout: Duration::from_secs(1),
            },
            PublishError::Channel {
                message_id: id(),
                reason: id(),
            },
            PublishError::NoExchange {
                message_id: id(),
                exchange: id(),
            },
            PublishError::Connect(id()),
        ];
        let kinds: Vec<&str> = all.iter().map(PublishError::kind).collect();
        assert_eq!(kinds, PublishError::KINDS);
    }
}
