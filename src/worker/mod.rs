//! `courier work`: consume one work queue, run the handler, carry out the outcome.
//!
//! Guarantees, and where they are kept:
//! - Competing consumers: every worker consumes the same queue with manual acks, so the broker
//!   gives each message to one worker at a time (never a fan-out).
//! - Nothing is acked before its outcome is safe: a retry or dead-letter copy is acked only after
//!   the broker confirmed the copy (`processing`); if it is not confirmed the original is
//!   requeued.
//! - Bounded memory: `prefetch` bounds what the broker sends, `concurrency` what runs; a
//!   delivery is taken from the stream only when a handler slot is free (`consumer`).
//! - Acks are coalesced without reordering outcomes (`acker`): `basic.ack(multiple)` up to the
//!   highest tag below which every delivery is settled.
//! - The supervisor ([`Worker::run`], `supervisor`) owns reconnection: any channel or connection
//!   loss, or a consumer cancelled by the broker, marks the worker not ready, backs off with
//!   jitter and rebuilds connection, channel, qos and consumer. Outcomes of a dead channel are
//!   dropped; the broker redelivers those messages.
//! - Shutdown: stop consuming, let in-flight messages finish within the deadline, flush acks,
//!   close; anything unfinished returns to the queue when the channel closes.
//!
//! This file holds what a caller sees: [`Worker`], its [`WorkerConfig`] and the errors. Where a
//! message goes next is not decided here but in [`crate::outcome`].

use crate::amqp::AmqpUrl;
use crate::handler::Handler;
use crate::metrics::{Health, Metrics};
use crate::outcome::Limits;
use crate::publisher::{Publisher, PublisherConfig};
use crate::topology::{tier_label, Topology};
use processing::Ctx;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

mod acker;
mod consumer;
mod processing;
mod supervisor;

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

/// A worker for one queue. Build with [`Worker::new`], run with [`Worker::run`].
pub struct Worker<H> {
    /// The broker; the supervisor connects and reconnects to it.
    url: AmqpUrl,
    /// Readiness for `/readyz`: true only while a consumer is subscribed.
    health: Health,
    /// What every message task shares; moved into an `Arc` by `run`.
    ctx: Ctx<H>,
}

impl<H: Handler> Worker<H> {
    /// Prepares a worker; connects nothing yet.
    ///
    /// # Errors
    /// [`WorkerError::UnknownQueue`] when the configured queue is not a work queue of
    /// `topology`.
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
        let limits = Limits {
            retry: topology.retry.clone(),
            retry_queues: work.retry_queues.len(),
            max_redeliveries: config.max_redeliveries,
        };
        Ok(Self {
            url,
            health,
            ctx: Ctx {
                config,
                work,
                dead_letter_exchange: topology.dead_letter_exchange.clone(),
                limits,
                tier_labels,
                handler,
                publisher,
                metrics,
                stopping: CancellationToken::new(),
            },
        })
    }

    /// Consumes until `shutdown` is cancelled, reconnecting as needed; then drains and closes.
    pub async fn run(self, shutdown: CancellationToken) {
        // Once stopping, a failing copy is not retried for long: the original is requeued.
        let stopping = self.ctx.stopping.clone();
        let outer = shutdown.clone();
        tokio::spawn(async move {
            outer.cancelled().await;
            stopping.cancel();
        });
        let Self { url, health, ctx } = self;
        supervisor::Supervisor::new(url, health, Arc::new(ctx))
            .run(shutdown)
            .await;
    }
}
