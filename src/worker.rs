//! `courier work`: consume one work queue, run the handler, carry out the outcome.
//!
//! Guarantees, and where they are kept:
//! - Competing consumers: every worker consumes the same queue with manual acks, so the broker
//!   gives each message to one worker at a time (never a fan-out).
//! - Nothing is acked before its outcome is safe: a retry or dead-letter copy is acked only after
//!   the broker confirmed the copy (`Ctx::republish`); if it is not confirmed the original is
//!   requeued.
//! - Bounded memory: `prefetch` bounds what the broker sends, `concurrency` what runs; a
//!   delivery is taken from the stream only when a handler slot is free.
//! - Acks are coalesced without reordering outcomes (the `acker` module): `basic.ack(multiple)` up to the
//!   highest tag below which every delivery is settled.
//! - The supervisor ([`Worker::run`]) owns reconnection: any channel or connection loss, or a
//!   consumer cancelled by the broker, marks the worker not ready, backs off with jitter and
//!   rebuilds connection, channel, qos and consumer. Outcomes of a dead channel are dropped; the
//!   broker redelivers those messages.
//! - Shutdown: stop consuming, let in-flight messages finish within the deadline, flush acks,
//!   close; anything unfinished returns to the queue when the channel closes.

use crate::amqp::AmqpUrl;
use crate::envelope::{self, Origin, Reason};
use crate::handler::{Handler, HandlerError, Job};
use crate::metrics::{Health, Metrics};
use crate::outcome::{decide, Action};
use crate::publisher::{Outgoing, Publisher, PublisherConfig};
use crate::retry::RetryPolicy;
use crate::topology::{tier_label, Topology, WorkQueue};
use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, Consumer};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod acker;

/// Deadline for a broker call whose answer only tidies up (cancel, close): a dead connection
/// must not stall shutdown or reconnection.
const BROKER_CALL: Duration = Duration::from_secs(5);

use acker::{AckEvent, Settle};

/// How a worker behaves. Validated by the CLI; the library trusts it.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Work queue to consume (full, prefixed name).
    pub queue: String,
    /// Unacked deliveries the broker may send ahead (`basic.qos`, per consumer).
    pub prefetch: u16,
    /// Messages handled at once.
    pub concurrency: usize,
    /// Deadline for one handler attempt; a timeout is a retryable failure. Keep it well below
    /// the broker's `consumer_timeout` (30 min by default).
    pub handler_timeout: Duration,
    /// On SIGTERM, how long in-flight messages may take before the worker closes anyway.
    pub shutdown_timeout: Duration,
    /// Redeliveries (worker crashed or lost its channel while holding the message) tolerated
    /// before the message is dead-lettered as `crash-loop`; 0 disables the count.
    pub max_redeliveries: u32,
    /// Deadline for a broker confirm of a retry, dead-letter or reply publish.
    pub confirm_timeout: Duration,
    /// First reconnect delay; doubles up to `reconnect_max`, with jitter.
    pub reconnect_min: Duration,
    /// Longest reconnect delay.
    pub reconnect_max: Duration,
}

impl WorkerConfig {
    /// Defaults for `queue`.
    pub fn new(queue: impl Into<String>) -> Self {
        Self {
            queue: queue.into(),
            prefetch: 200,
            concurrency: 64,
            handler_timeout: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(30),
            max_redeliveries: 5,
            confirm_timeout: Duration::from_secs(30),
            reconnect_min: Duration::from_millis(200),
            reconnect_max: Duration::from_secs(30),
        }
    }
}

/// Why a worker could not start.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The queue is not a work queue of the topology.
    #[error("queue '{queue}' is not a work queue of {topology} (work queues: {available}); check --queue and --prefix")]
    UnknownQueue {
        /// The queue asked for.
        queue: String,
        /// The topology file.
        topology: String,
        /// The work queues it declares.
        available: String,
    },
}

/// Everything a message task needs, shared.
struct Ctx<H> {
    config: WorkerConfig,
    work: WorkQueue,
    dead_letter_exchange: String,
    policy: crate::topology::RetryPolicy,
    tier_labels: Vec<String>,
    handler: Arc<H>,
    publisher: Publisher,
    metrics: Metrics,
    shutdown: CancellationToken,
}

/// A worker for one queue. Build with [`Worker::new`], run with [`Worker::run`].
pub struct Worker<H> {
    url: AmqpUrl,
    ctx: Arc<Ctx<H>>,
    health: Health,
}

/// How a consuming session ended.
enum SessionEnd {
    Shutdown,
    Lost(String),
}

impl<H: Handler> Worker<H> {
    /// Prepares a worker; connects nothing yet.
    ///
    /// # Errors
    /// [`WorkerError::UnknownQueue`] when `config.queue` is not a work queue of `topology`.
    pub fn new(
        url: AmqpUrl,
        topology: &Topology,
        config: WorkerConfig,
        handler: H,
        metrics: Metrics,
        health: Health,
    ) -> Result<Self, WorkerError> {
        let work = topology.work_queue(&config.queue).cloned().ok_or_else(|| {
            WorkerError::UnknownQueue {
                queue: config.queue.clone(),
                topology: topology.source.clone(),
                available: topology
                    .work_queues
                    .iter()
                    .map(|q| q.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            }
        })?;
        let publisher = Publisher::lazy(
            &url,
            PublisherConfig {
                name: format!("courier work {} (publisher)", config.queue),
                window: config.concurrency + 16,
                confirm_timeout: config.confirm_timeout,
            },
            metrics.clone(),
        );
        let tier_labels = topology
            .retry
            .tiers
            .iter()
            .map(|d| tier_label(*d))
            .collect();
        Ok(Self {
            url,
            health,
            ctx: Arc::new(Ctx {
                config,
                work,
                dead_letter_exchange: topology.dead_letter_exchange.clone(),
                policy: topology.retry.clone(),
                tier_labels,
                handler: Arc::new(handler),
                publisher,
                metrics,
                shutdown: CancellationToken::new(),
            }),
        })
    }

    /// Consumes until `shutdown` is cancelled, reconnecting as needed; then drains and closes.
    pub async fn run(self, shutdown: CancellationToken) {
        let ctx = self.ctx.clone();
        let queue = ctx.config.queue.clone();
        // Once stopping, a failing copy is not retried for long: the original is requeued.
        let stopping = ctx.shutdown.clone();
        let outer = shutdown.clone();
        tokio::spawn(async move {
            outer.cancelled().await;
            stopping.cancel();
        });
        let tracker = TaskTracker::new();
        let slots = Arc::new(Semaphore::new(ctx.config.concurrency.max(1)));
        let mut backoff =
            RetryPolicy::new(ctx.config.reconnect_min, ctx.config.reconnect_max).delays();
        let mut sessions = 0u64;
        let mut ackers = Vec::new();
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            // A half-open broker can stall any step of the handshake: bound the whole of it.
            let opened = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = tokio::time::timeout(Duration::from_secs(30), self.open()) => {
                    r.unwrap_or_else(|_| Err("connecting took longer than 30s".to_owned()))
                }
            };
            let (conn, channel, consumer) = match opened {
                Ok(s) => s,
                Err(reason) => {
                    let wait = backoff.next_delay();
                    tracing::warn!(%queue, %reason, retry_in = ?wait, "cannot consume; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(wait) => continue,
                    }
                }
            };
            sessions += 1;
            if sessions > 1 {
                ctx.metrics
                    .reconnects
                    .with_label_values(&["consumer"])
                    .inc();
            }
            backoff.reset();
            self.set_ready(true);
            tracing::info!(%queue, prefetch = ctx.config.prefetch, concurrency = ctx.config.concurrency, "consuming");
            // One ack frame per quarter of the prefetch window under load.
            let batch = u64::from(ctx.config.prefetch / 4).max(1);
            let (events, acker_task) =
                acker::spawn(channel.clone(), ctx.metrics.clone(), queue.clone(), batch);
            ackers.push(acker_task);
            let end = consume(&ctx, consumer.clone(), events, &slots, &tracker, &shutdown).await;
            self.set_ready(false);
            match end {
                SessionEnd::Shutdown => {
                    tracing::info!(%queue, "shutting down: consumer cancelled, finishing in-flight messages");
                    let _ = tokio::time::timeout(
                        BROKER_CALL,
                        channel.basic_cancel(consumer.tag(), BasicCancelOptions::default()),
                    )
                    .await;
                    self.drain(&tracker, ackers).await;
                    let _ =
                        tokio::time::timeout(BROKER_CALL, channel.close(200, "shutdown".into()))
                            .await;
                    let _ =
                        tokio::time::timeout(BROKER_CALL, conn.close(200, "shutdown".into())).await;
                    ctx.publisher.close().await;
                    tracing::info!(%queue, "stopped");
                    return;
                }
                SessionEnd::Lost(reason) => {
                    let wait = backoff.next_delay();
                    tracing::warn!(%queue, %reason, reconnect_in = ?wait, "lost the consumer; unacked messages return to the queue");
                    let _ =
                        tokio::time::timeout(BROKER_CALL, conn.close(200, "reconnecting".into()))
                            .await;
                    ackers.retain(|h| !h.is_finished());
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
        self.drain(&tracker, ackers).await;
        ctx.publisher.close().await;
        tracing::info!(%queue, "stopped");
    }

    fn set_ready(&self, ready: bool) {
        self.health.set_ready(ready);
        self.ctx.metrics.ready.set(i64::from(ready));
    }

    /// Waits for in-flight tasks (bounded by the shutdown deadline) and for the ackers to flush.
    async fn drain(&self, tracker: &TaskTracker, ackers: Vec<tokio::task::JoinHandle<()>>) {
        tracker.close();
        // Tasks see the cancellation only in their publish back-off; handlers run to completion.
        if tokio::time::timeout(self.ctx.config.shutdown_timeout, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                queue = %self.ctx.config.queue,
                left = tracker.len(),
                "shutdown deadline reached; unfinished messages return to the queue"
            );
            self.ctx.shutdown.cancel();
        }
        for a in ackers {
            let _ = tokio::time::timeout(Duration::from_secs(5), a).await;
        }
    }

    async fn open(&self) -> Result<(Connection, Channel, Consumer), String> {
        let cfg = &self.ctx.config;
        let conn = self
            .url
            .connect(&format!("courier work {}", cfg.queue))
            .await
            .map_err(|e| e.to_string())?;
        let scrub = |e: lapin::Error| self.url.scrub(&e.to_string());
        let channel = conn.create_channel().await.map_err(scrub)?;
        channel
            .basic_qos(cfg.prefetch, BasicQosOptions { global: false })
            .await
            .map_err(scrub)?;
        let consumer = channel
            .basic_consume(
                cfg.queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| {
                let text = scrub(e);
                if text.contains("NOT_FOUND") {
                    format!("{text} (run `courier topology apply` with the same --topology and --prefix)")
                } else {
                    text
                }
            })?;
        Ok((conn, channel, consumer))
    }
}

/// Takes deliveries while handler slots are free; returns when told to stop or when the
/// consumer ends.
async fn consume<H: Handler>(
    ctx: &Arc<Ctx<H>>,
    mut consumer: Consumer,
    events: mpsc::UnboundedSender<AckEvent>,
    slots: &Arc<Semaphore>,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
) -> SessionEnd {
    loop {
        let permit = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return SessionEnd::Shutdown,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return SessionEnd::Shutdown,
            },
        };
        let next = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return SessionEnd::Shutdown,
            n = consumer.next() => n,
        };
        let delivery = match next {
            Some(Ok(d)) => d,
            Some(Err(e)) => return SessionEnd::Lost(e.to_string()),
            None => {
                ctx.metrics
                    .consumer_cancels
                    .with_label_values(&[&ctx.config.queue])
                    .inc();
                return SessionEnd::Lost(
                    "the broker ended the consumer (queue deleted, consumer_timeout, or node shutdown)".to_owned(),
                );
            }
        };
        if events
            .send(AckEvent::Delivered(delivery.delivery_tag))
            .is_err()
        {
            return SessionEnd::Lost("acknowledgement task stopped (channel closed)".to_owned());
        }
        let ctx = ctx.clone();
        let events = events.clone();
        tracker.spawn(async move {
            let tag = delivery.delivery_tag;
            let settle = ctx.process(delivery).await;
            let _ = events.send(AckEvent::Settled(tag, settle));
            drop(permit);
        });
    }
}

impl<H: Handler> Ctx<H> {
    fn count(&self, outcome: &str) {
        self.metrics
            .messages
            .with_label_values(&[&self.config.queue, outcome])
            .inc();
    }

    /// Handles one delivery and decides how it is settled. Never panics on input.
    async fn process(&self, delivery: Delivery) -> Settle {
        let queue = self.config.queue.as_str();
        let gauge = self.metrics.in_flight.with_label_values(&[queue]);
        gauge.inc();
        let settle = self.process_inner(&delivery).await;
        gauge.dec();
        settle
    }

    async fn process_inner(&self, d: &Delivery) -> Settle {
        let queue = self.config.queue.as_str();
        let props = &d.properties;
        let headers = props.headers().as_ref();
        let origin = Origin::of(headers, d.exchange.as_str(), d.routing_key.as_str(), queue);
        let attempts = envelope::attempts(headers);

        // The rare paths are boxed: their publish futures would otherwise make every
        // per-delivery task several kilobytes, copied on each spawn.
        if d.redelivered && self.config.max_redeliveries > 0 {
            return Box::pin(self.count_redelivery(d, &origin, attempts)).await;
        }
        let Some(message_id) = envelope::message_id(props) else {
            return self
                .dead_letter(
                    d,
                    &origin,
                    attempts,
                    Reason::Malformed,
                    "message has no message_id (the idempotency key); publishers must set it",
                )
                .await;
        };
        if let Err(why) = envelope::validate_body(&d.data) {
            return self
                .dead_letter(d, &origin, attempts, Reason::Malformed, &why)
                .await;
        }

        let priority = props.priority().unwrap_or(0);
        let content_type = props
            .content_type()
            .as_ref()
            .map_or("application/json", |c| c.as_str());
        let job = Job {
            message_id,
            attempt: attempts.saturating_add(1),
            queue,
            routing_key: &origin.routing_key,
            content_type,
            body: &d.data,
            priority,
        };
        let started = Instant::now();
        let result = self.call_handler(job).await;
        self.metrics
            .handler_seconds
            .with_label_values(&[queue])
            .observe(started.elapsed().as_secs_f64());

        match decide(attempts, &result, &self.policy) {
            Action::Ack => {
                self.reply(d, message_id, "delivered", None, attempts + 1)
                    .await;
                self.count("delivered");
                Settle::Ack
            }
            Action::Retry {
                tier,
                attempts,
                error,
            } => {
                let Some(tier_queue) = self.work.retry_queues.get(tier) else {
                    return Box::pin(self.dead_letter(
                        d,
                        &origin,
                        attempts,
                        Reason::MaxAttempts,
                        &error,
                    ))
                    .await;
                };
                let headers = envelope::retry_headers(
                    headers,
                    attempts,
                    &error,
                    &origin,
                    envelope::now_millis(),
                );
                let msg = Outgoing {
                    exchange: String::new(),
                    routing_key: tier_queue.clone(),
                    properties: envelope::with_headers(props, headers),
                    body: d.data.clone(),
                };
                if Box::pin(self.republish(msg, message_id, "retry")).await {
                    let label = self.tier_labels.get(tier).map_or("?", String::as_str);
                    self.metrics
                        .retries
                        .with_label_values(&[queue, label])
                        .inc();
                    self.count("retried");
                    tracing::debug!(%message_id, attempts, tier = label, %error, "retry scheduled");
                    Settle::Ack
                } else {
                    self.count("requeued");
                    Settle::Requeue
                }
            }
            Action::DeadLetter {
                reason,
                attempts,
                error,
            } => {
                Box::pin(self.dead_letter_with(d, message_id, &origin, attempts, reason, &error))
                    .await
            }
        }
    }

    /// Runs the handler with a deadline; a panic or timeout is a retryable failure.
    async fn call_handler(&self, job: Job<'_>) -> Result<(), HandlerError> {
        let timeout = self.config.handler_timeout;
        let fut = AssertUnwindSafe(self.handler.handle(job)).catch_unwind();
        match tokio::time::timeout(timeout, fut).await {
            Ok(Ok(r)) => r,
            Ok(Err(panic)) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".to_owned());
                tracing::error!(message_id = job.message_id, panic = %what, "handler panicked; treated as a retryable failure");
                Err(HandlerError::retryable(format!("handler panicked: {what}")))
            }
            Err(_) => Err(HandlerError::retryable(format!(
                "handler timed out after {}",
                humantime::format_duration(timeout)
            ))),
        }
    }

    /// A redelivered message: the worker that held it died or lost its channel. Count it in a
    /// header (classic queues have no delivery limit) by republishing it to its own queue, or
    /// dead-letter it as `crash-loop` past the bound.
    async fn count_redelivery(&self, d: &Delivery, origin: &Origin, attempts: u32) -> Settle {
        let props = &d.properties;
        let headers = props.headers().as_ref();
        let n = envelope::redeliveries(headers).saturating_add(1);
        let id = envelope::message_id(props).unwrap_or("(none)").to_owned();
        if n > self.config.max_redeliveries {
            let error = format!(
                "redelivered {n} times without an outcome: a worker holding it crashed, was killed or lost its channel each time"
            );
            return self
                .dead_letter_with(d, &id, origin, attempts, Reason::CrashLoop, &error)
                .await;
        }
        let mut h = envelope::clean_headers(headers);
        h.insert(
            envelope::REDELIVERIES.into(),
            lapin::types::AMQPValue::LongLongInt(i64::from(n)),
        );
        let msg = Outgoing {
            exchange: String::new(),
            routing_key: self.config.queue.clone(),
            properties: envelope::with_headers(props, h),
            body: d.data.clone(),
        };
        if self.republish(msg, &id, "redelivery count").await {
            self.count("redelivery-counted");
            Settle::Ack
        } else {
            self.count("requeued");
            Settle::Requeue
        }
    }

    async fn dead_letter(
        &self,
        d: &Delivery,
        origin: &Origin,
        attempts: u32,
        reason: Reason,
        error: &str,
    ) -> Settle {
        let id = envelope::message_id(&d.properties)
            .unwrap_or("(none)")
            .to_owned();
        self.dead_letter_with(d, &id, origin, attempts, reason, error)
            .await
    }

    async fn dead_letter_with(
        &self,
        d: &Delivery,
        message_id: &str,
        origin: &Origin,
        attempts: u32,
        reason: Reason,
        error: &str,
    ) -> Settle {
        let headers = envelope::dead_letter_headers(
            d.properties.headers().as_ref(),
            attempts,
            reason,
            error,
            origin,
            envelope::now_millis(),
        );
        let msg = Outgoing {
            exchange: self.dead_letter_exchange.clone(),
            routing_key: origin.routing_key.clone(),
            properties: envelope::with_headers(&d.properties, headers),
            body: d.data.clone(),
        };
        if self.republish(msg, message_id, "dead letter").await {
            self.metrics
                .dead_letters
                .with_label_values(&[&self.config.queue, reason.as_str()])
                .inc();
            self.count("dead-lettered");
            tracing::info!(%message_id, %reason, attempts, error = %envelope::truncate(error, 200), "dead-lettered");
            self.reply(
                d,
                message_id,
                "dead-lettered",
                Some((reason, error)),
                attempts,
            )
            .await;
            Settle::Ack
        } else {
            self.count("requeued");
            Settle::Requeue
        }
    }

    /// Publishes a copy and waits for the confirm, retrying with back-off (250 ms doubling to
    /// 10 s) for up to a minute. Holding the message meanwhile is deliberate: a full DLQ or a
    /// broker alarm then slows the worker down (its slots fill) instead of spinning requeues,
    /// and a requeued message would come back `redelivered` and be mistaken for a crash.
    /// False means "not confirmed": the caller requeues the original.
    async fn republish(&self, msg: Outgoing, message_id: &str, what: &str) -> bool {
        let policy = RetryPolicy::new(Duration::from_millis(250), Duration::from_secs(10))
            .with_deadline(Duration::from_secs(60));
        let retried = policy
            .run(
                &format!("{what} of {message_id} not confirmed"),
                Some(&self.shutdown),
                || self.publisher.publish(msg.clone()),
            )
            .await;
        match retried {
            Ok(()) => true,
            Err(gave_up) => {
                let error = gave_up
                    .into_last()
                    .map_or_else(|| "shutting down".to_owned(), |e| e.to_string());
                tracing::error!(%message_id, %error, "{what} not confirmed; the original goes back to the queue");
                false
            }
        }
    }

    /// Request–reply: publish the final outcome to `reply_to` with the same correlation id.
    /// Best effort: the outcome itself is already safe, so a missing reply queue is logged.
    async fn reply(
        &self,
        d: &Delivery,
        message_id: &str,
        status: &str,
        failure: Option<(Reason, &str)>,
        attempts: u32,
    ) {
        let props = &d.properties;
        let (Some(reply_to), Some(correlation_id)) = (props.reply_to(), props.correlation_id())
        else {
            return;
        };
        let body = serde_json::json!({
            "message_id": message_id,
            "status": status,
            "reason": failure.map(|(r, _)| r.as_str()),
            "error": failure.map(|(_, e)| envelope::truncate(e, envelope::MAX_ERROR_BYTES)),
            "attempts": attempts,
            "queue": self.config.queue,
        });
        let msg = Outgoing {
            exchange: String::new(),
            routing_key: reply_to.as_str().to_owned(),
            properties: BasicProperties::default()
                .with_correlation_id(correlation_id.clone())
                .with_message_id(envelope::new_message_id().as_str().into())
                .with_content_type("application/json".into())
                .with_delivery_mode(2),
            body: body.to_string().into_bytes(),
        };
        if let Err(e) = self.publisher.publish(msg).await {
            tracing::warn!(%message_id, reply_to = reply_to.as_str(), error = %e, "could not publish the outcome to reply_to");
        }
    }
}
