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
//! - Urgent first: a queue with an urgent band (`urgent_from` in the topology) is consumed
//!   together with `<queue>.urgent` on the same channel, and a free slot always takes a waiting
//!   urgent delivery before a bulk one (`consumer`); an urgent message retries through the
//!   band's own tiers and so stays urgent.
//! - Shutdown: stop consuming, let in-flight messages finish within the deadline, flush acks,
//!   close; anything unfinished returns to the queue when the channel closes.
//!
//! This file holds what a caller sees: [`Worker`], its validated [`WorkerConfig`] (built from
//! [`WorkerSettings`], so a worker that cannot work is refused before it connects) and the
//! errors. Where a message goes next is not decided here but in [`crate::outcome`].

use crate::amqp::AmqpUrl;
use crate::handler::Handler;
use crate::metrics::{Health, Metrics};
use crate::outcome::Limits;
use crate::publisher::{Publisher, PublisherConfig};
use crate::topology::{tier_label, Topology, WorkQueue};
use processing::{Ctx, Lane};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

mod acker;
mod consumer;
mod processing;
mod supervisor;

/// Upper bound of `concurrency` (`courier work` always had it): past it a stray zero is likelier
/// than a need, and the publisher's confirm window grows with it.
pub const MAX_CONCURRENCY: usize = 10_000;

/// A worker's settings as given, not yet checked. Start from [`WorkerSettings::new`] (or
/// [`WorkerConfig::builder`]), change fields, then [`WorkerSettings::build`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerSettings {
    /// Work queue to consume (full, prefixed name).
    pub queue: String,
    /// Unacked deliveries the broker may send ahead (`basic.qos`, per consumer); at least 1.
    pub prefetch: u16,
    /// Messages handled at once; 1 to [`MAX_CONCURRENCY`].
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
    /// First reconnect delay; doubles up to `reconnect_max`, with jitter. Above zero.
    pub reconnect_min: Duration,
    /// Longest reconnect delay; at least `reconnect_min`.
    pub reconnect_max: Duration,
}

impl WorkerSettings {
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

    /// Checks the settings; the worker then trusts them.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first field that cannot work, and why.
    pub fn build(self) -> Result<WorkerConfig, ConfigError> {
        let refuse = |field, value: String, why| Err(ConfigError { field, value, why });
        let span = |d: Duration| humantime::format_duration(d).to_string();
        if self.queue.is_empty() {
            return refuse(
                "queue",
                "\"\"".into(),
                "name the work queue to consume (to AMQP an empty name means the last queue declared on the channel)",
            );
        }
        if self.prefetch == 0 {
            return refuse(
                "prefetch",
                "0".into(),
                "RabbitMQ reads prefetch 0 as unlimited, which defeats flow control and bounded memory; use at least 1",
            );
        }
        if !(1..=MAX_CONCURRENCY).contains(&self.concurrency) {
            return refuse(
                "concurrency",
                self.concurrency.to_string(),
                "use 1 to 10000",
            );
        }
        if self.reconnect_min.is_zero() {
            return refuse(
                "reconnect_min",
                span(self.reconnect_min),
                "reconnecting without a pause would hammer a broker that is down; use at least 1ms",
            );
        }
        if self.reconnect_max < self.reconnect_min {
            return refuse(
                "reconnect_max",
                span(self.reconnect_max),
                "the longest reconnect delay cannot be below reconnect_min",
            );
        }
        Ok(WorkerConfig { settings: self })
    }
}

/// Settings of a worker that can work: made only by [`WorkerSettings::build`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerConfig {
    /// Checked by `build`; private so that they stay checked.
    settings: WorkerSettings,
}

impl WorkerConfig {
    /// Default settings for `queue`, to change and then [`WorkerSettings::build`]; the same as
    /// [`WorkerSettings::new`].
    pub fn builder(queue: impl Into<String>) -> WorkerSettings {
        WorkerSettings::new(queue)
    }

    /// The checked settings, read-only.
    pub fn settings(&self) -> &WorkerSettings {
        &self.settings
    }
}

/// A worker setting that cannot work, refused before anything connects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("worker setting {field} = {value} cannot work: {why}")]
pub struct ConfigError {
    /// The [`WorkerSettings`] field at fault, e.g. `prefetch`.
    pub field: &'static str,
    /// The value it had, as given.
    pub value: String,
    /// Why it cannot work, and what to use instead.
    pub why: &'static str,
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
    /// Prepares a worker; connects nothing yet. Creates the queue's series in `metrics`, so
    /// `/metrics` shows every family (at 0) before the worker is ready.
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
        let config = config.settings;
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
        let tier_labels: Vec<String> = topology
            .retry
            .tiers
            .iter()
            .map(|d| tier_label(*d))
            .collect();
        // What is consumed: the queue, and its urgent band (taken first) if it has one; or,
        // for a sharded channel, every shard.
        let ordered = work.sharding.as_ref().is_some_and(|s| s.ordered);
        let consumed: Vec<WorkQueue> = match &work.sharding {
            Some(s) => s
                .queues
                .iter()
                .map(|q| WorkQueue {
                    name: q.clone(),
                    sharding: None,
                    ..work.clone()
                })
                .collect(),
            None => std::iter::once(work.clone())
                .chain(
                    work.urgent
                        .as_ref()
                        .and_then(|u| topology.work_queue(&u.queue))
                        .cloned(),
                )
                .collect(),
        };
        // An ordered channel retries in place, after each tier's delay, without tier queues.
        let retry_queues = if ordered {
            topology.retry.tiers.len()
        } else {
            work.retry_queues.len()
        };
        // Every series from the start (see `metrics`): the tiers each queue can retry to.
        let tiers = tier_labels.len().min(retry_queues);
        let lanes: Vec<Lane> = consumed
            .into_iter()
            .map(|work| {
                let series = metrics.init_queue(&work.name, &tier_labels[..tiers]);
                Lane {
                    work,
                    series,
                    ordered,
                }
            })
            .collect();
        let limits = Limits {
            retry: topology.retry.clone(),
            retry_queues,
            max_redeliveries: config.max_redeliveries,
        };
        Ok(Self {
            url,
            health,
            ctx: Ctx {
                config,
                lanes,
                members: work.sharding.as_ref().and_then(|s| s.members.clone()),
                dead_letter_exchange: topology.dead_letter_exchange.clone(),
                limits,
                tier_labels,
                handler,
                publisher,
                metrics,
                // `run` replaces it with a child of its token, known only there.
                stopping: CancellationToken::new(),
            },
        })
    }

    /// Consumes until `shutdown` is cancelled, reconnecting as needed; then drains and closes.
    pub async fn run(self, shutdown: CancellationToken) {
        let Self {
            url,
            health,
            mut ctx,
        } = self;
        // Cancelled with the caller's token, and alone when the drain deadline passes (which
        // must not cancel the caller's: its metrics server, say, still runs).
        ctx.stopping = shutdown.child_token();
        supervisor::Supervisor::new(url, health, Arc::new(ctx))
            .run(shutdown)
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let config = WorkerSettings::new("q").build().expect("defaults build");
        assert_eq!(config.settings(), &WorkerConfig::builder("q"));
        assert_eq!(config.settings().prefetch, 200);
        assert_eq!(config.settings().concurrency, 64);
    }

    #[test]
    fn prefetch_zero_is_refused_by_name() {
        let err = WorkerSettings {
            prefetch: 0,
            ..WorkerSettings::new("q")
        }
        .build()
        .expect_err("prefetch 0 means unlimited");
        assert_eq!(err.field, "prefetch");
        assert!(err.to_string().contains("prefetch"), "{err}");
        assert!(err.to_string().contains("unlimited"), "{err}");
    }

    #[test]
    fn concurrency_out_of_range_is_refused() {
        for concurrency in [0, MAX_CONCURRENCY + 1] {
            let err = WorkerSettings {
                concurrency,
                ..WorkerSettings::new("q")
            }
            .build()
            .expect_err("out of range");
            assert_eq!(err.field, "concurrency");
            assert_eq!(err.value, concurrency.to_string());
        }
        let edge = WorkerSettings {
            concurrency: MAX_CONCURRENCY,
            prefetch: 1,
            ..WorkerSettings::new("q")
        };
        assert!(edge.build().is_ok());
    }

    #[test]
    fn an_empty_queue_name_is_refused() {
        let err = WorkerSettings::new("").build().expect_err("empty queue");
        assert_eq!(err.field, "queue");
    }

    #[test]
    fn reconnect_delays_must_pause_and_be_ordered() {
        let err = WorkerSettings {
            reconnect_min: Duration::ZERO,
            ..WorkerSettings::new("q")
        }
        .build()
        .expect_err("no pause");
        assert_eq!(err.field, "reconnect_min");
        let err = WorkerSettings {
            reconnect_min: Duration::from_secs(5),
            reconnect_max: Duration::from_secs(1),
            ..WorkerSettings::new("q")
        }
        .build()
        .expect_err("max below min");
        assert_eq!((err.field, err.value.as_str()), ("reconnect_max", "1s"));
    }
}
