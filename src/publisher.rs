//! A confirmed publisher: every publish waits for the broker's confirm, many in flight at once.
//!
//! - Publisher confirms on a dedicated connection (a broker memory alarm blocks a connection's
//!   writes; keeping publishes off the consumer's connection keeps acks flowing).
//! - A bounded window of unconfirmed publishes (a semaphore), not one round trip per message.
//! - `mandatory`: a message no queue accepts is an error, never a silent success. lapin attaches
//!   a `basic.return` to whichever confirm completes next, which under a large window is often a
//!   neighbour's; so returns are collected by `message_id` from every confirm, and a message is
//!   only judged once every confirm that completed with it has been looked at (see [`collect`]).
//! - A deadline on every confirm: during `connection.blocked` lapin queues writes forever.
//! - A lost channel fails exactly the publishes in flight on it; the next publish reconnects.

use crate::amqp::{AmqpError, AmqpUrl};
use crate::metrics::Metrics;
use futures_util::{FutureExt, StreamExt};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Confirmation, Connection, PublisherConfirm};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
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
    /// Could not (re)connect.
    #[error("{0}")]
    Connect(String),
}

impl PublishError {
    /// Label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Nacked { .. } => "nack",
            Self::Returned { .. } => "returned",
            Self::Timeout { .. } => "timeout",
            Self::Channel { .. } => "channel",
            Self::Connect(_) => "connect",
        }
    }
}

impl From<AmqpError> for PublishError {
    fn from(e: AmqpError) -> Self {
        Self::Connect(e.to_string())
    }
}

/// One publish waiting for its confirm in the collector.
struct Pending {
    message_id: String,
    exchange: String,
    routing_key: String,
    confirm: PublisherConfirm,
    /// `None` until the confirm resolved; the attached return is moved to the shared tally.
    outcome: Option<Result<bool, String>>,
    started: Instant,
    reply: oneshot::Sender<Result<(), PublishError>>,
}

/// A connection with a confirm-mode channel and its collector task.
struct Live {
    conn: Connection,
    channel: Channel,
    tx: mpsc::UnboundedSender<Pending>,
}

struct Inner {
    url: AmqpUrl,
    config: PublisherConfig,
    metrics: Metrics,
    window: Semaphore,
    live: Mutex<Option<Live>>,
    /// Set once a connection has existed, so later connects count as reconnects.
    connected_once: AtomicBool,
    /// Total confirmed publishes, for reports.
    confirmed: AtomicU64,
}

/// Cheap to clone; all clones share one connection and window.
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
        {
            let mut live = p.inner.live.lock().await;
            p.ensure_live(&mut live).await?;
        }
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
                live: Mutex::new(None),
                connected_once: AtomicBool::new(false),
                confirmed: AtomicU64::new(0),
            }),
        }
    }

    /// Publishes confirmed publishes so far.
    pub fn confirmed(&self) -> u64 {
        self.inner.confirmed.load(Ordering::Relaxed)
    }

    async fn ensure_live<'a>(&self, live: &'a mut Option<Live>) -> Result<&'a Live, PublishError> {
        let healthy = live
            .as_ref()
            .is_some_and(|l| l.channel.status().connected() && l.conn.status().connected());
        if !healthy {
            if let Some(old) = live.take() {
                let _ = old
                    .conn
                    .close(200, "replacing a failed channel".into())
                    .await;
            }
            if self.inner.connected_once.load(Ordering::Relaxed) {
                self.inner
                    .metrics
                    .reconnects
                    .with_label_values(&["publisher"])
                    .inc();
                tracing::info!(url = %self.inner.url, "publisher reconnecting");
            }
            let conn = self.inner.url.connect(&self.inner.config.name).await?;
            let channel = conn
                .create_channel()
                .await
                .map_err(|e| PublishError::Connect(self.inner.url.scrub(&e.to_string())))?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(|e| PublishError::Connect(self.inner.url.scrub(&e.to_string())))?;
            watch_blocked(&conn, self.inner.metrics.clone());
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(collect(rx, self.inner.clone()));
            self.inner.connected_once.store(true, Ordering::Relaxed);
            *live = Some(Live { conn, channel, tx });
        }
        live.as_ref()
            .ok_or_else(|| PublishError::Connect("no connection".to_owned()))
    }

    /// Publishes one message (mandatory, persistent unless the properties say otherwise) and
    /// waits for its confirm.
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
        let _permit = self
            .inner
            .window
            .acquire()
            .await
            .map_err(|_| PublishError::Connect("publisher closed".to_owned()))?;
        let rx = {
            let mut guard = self.inner.live.lock().await;
            let live = self.ensure_live(&mut guard).await?;
            let published = live
                .channel
                .basic_publish(
                    msg.exchange.as_str().into(),
                    msg.routing_key.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &msg.body,
                    msg.properties,
                )
                .await;
            let confirm = match published {
                Ok(c) => c,
                Err(e) => {
                    *guard = None;
                    self.inner
                        .metrics
                        .publish_failures
                        .with_label_values(&["channel"])
                        .inc();
                    return Err(PublishError::Channel {
                        message_id,
                        reason: self.inner.url.scrub(&e.to_string()),
                    });
                }
            };
            let (reply, rx) = oneshot::channel();
            let pending = Pending {
                message_id: message_id.clone(),
                exchange: msg.exchange,
                routing_key: msg.routing_key,
                confirm,
                outcome: None,
                started: Instant::now(),
                reply,
            };
            if live.tx.send(pending).is_err() {
                *guard = None;
                return Err(PublishError::Channel {
                    message_id,
                    reason: "confirm collector stopped".to_owned(),
                });
            }
            rx
        };
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
        if let Some(live) = self.inner.live.lock().await.take() {
            let _ = live.conn.close(200, "publisher closed".into()).await;
        }
    }
}

/// Tracks `connection.blocked` in metrics and logs.
fn watch_blocked(conn: &Connection, metrics: Metrics) {
    let mut events = conn.events_listener();
    tokio::spawn(async move {
        while let Some(ev) = events.next().await {
            match ev {
                lapin::Event::ConnectionBlocked(reason) => {
                    metrics.blocked.set(1);
                    tracing::warn!(%reason, "broker blocked the publishing connection (resource alarm); publishes wait");
                }
                lapin::Event::ConnectionUnblocked => {
                    metrics.blocked.set(0);
                    tracing::info!("broker unblocked the publishing connection");
                }
                _ => {}
            }
        }
    });
}

/// Resolves publishes in order. Whenever the oldest confirm resolves, every other confirm that
/// has already resolved is harvested too, so a `basic.return` that lapin attached to a
/// neighbour is counted under its own `message_id` before anyone is judged. (RabbitMQ sends a
/// message's return before its ack, so by the time a message's ack is processed its return has
/// been attached to a confirm completed at or before that moment.)
async fn collect(mut rx: mpsc::UnboundedReceiver<Pending>, inner: Arc<Inner>) {
    let mut inflight: VecDeque<Pending> = VecDeque::new();
    let mut returned: HashMap<String, usize> = HashMap::new();
    loop {
        if inflight.is_empty() {
            match rx.recv().await {
                Some(p) => inflight.push_back(p),
                None => return,
            }
            continue;
        }
        let front_done = {
            let front = inflight.front_mut();
            let Some(front) = front else { continue };
            tokio::select! {
                biased;
                res = &mut front.confirm => {
                    front.outcome = Some(classify(res, &mut returned));
                    true
                }
                next = rx.recv() => {
                    match next {
                        Some(p) => inflight.push_back(p),
                        None => {
                            // The publisher dropped this channel; answer what is left.
                            for p in inflight.drain(..) {
                                let _ = p.reply.send(Err(PublishError::Channel {
                                    message_id: p.message_id,
                                    reason: "channel replaced".to_owned(),
                                }));
                            }
                            return;
                        }
                    }
                    false
                }
            }
        };
        if !front_done {
            continue;
        }
        while let Ok(p) = rx.try_recv() {
            inflight.push_back(p);
        }
        for p in inflight.iter_mut().filter(|p| p.outcome.is_none()) {
            if let Some(res) = (&mut p.confirm).now_or_never() {
                p.outcome = Some(classify(res, &mut returned));
            }
        }
        while inflight.front().is_some_and(|p| p.outcome.is_some()) {
            let Some(p) = inflight.pop_front() else { break };
            inner
                .metrics
                .confirm_seconds
                .with_label_values(&["publisher"])
                .observe(p.started.elapsed().as_secs_f64());
            let result = match p.outcome {
                Some(Ok(true)) => match returned.get_mut(&p.message_id) {
                    Some(n) if *n > 0 => {
                        *n -= 1;
                        if *n == 0 {
                            returned.remove(&p.message_id);
                        }
                        Err(PublishError::Returned {
                            message_id: p.message_id,
                            exchange: p.exchange,
                            routing_key: p.routing_key,
                        })
                    }
                    _ => Ok(()),
                },
                Some(Ok(false)) => Err(PublishError::Nacked {
                    message_id: p.message_id,
                    exchange: p.exchange,
                    routing_key: p.routing_key,
                }),
                Some(Err(reason)) => Err(PublishError::Channel {
                    message_id: p.message_id,
                    reason: inner.url.scrub(&reason),
                }),
                None => Err(PublishError::Channel {
                    message_id: p.message_id,
                    reason: "no outcome".to_owned(),
                }),
            };
            let _ = p.reply.send(result);
        }
    }
}

/// `Ok(true)` ack, `Ok(false)` nack, `Err` channel failure; any attached return is tallied by
/// its own `message_id`, whoever it was attached to.
fn classify(
    res: Result<Confirmation, lapin::Error>,
    returned: &mut HashMap<String, usize>,
) -> Result<bool, String> {
    match res {
        Ok(c) => {
            let acked = c.is_ack();
            if let Some(msg) = c.take_message() {
                let id = crate::envelope::message_id(&msg.properties)
                    .unwrap_or_default()
                    .to_owned();
                *returned.entry(id).or_insert(0) += 1;
            }
            Ok(acked)
        }
        Err(e) => Err(e.to_string()),
    }
}
