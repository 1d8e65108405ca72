//! The supervisor: connect, consume, and on any loss reconnect — until told to stop, then drain
//! and close.
//!
//! Why one loop owns all of it: readiness, reconnect back-off and shutdown all depend on which
//! session is alive, so they change in one place. Any channel or connection loss, or a consumer
//! cancelled by the broker, marks the worker not ready and reconnects after a delay from the
//! one [`RetryPolicy`] (exponential, jittered, reset after a good session); every attempt after
//! the first counts in `courier_reconnects_total`. Outcomes of a dead channel are dropped: the
//! broker redelivers those messages. Every broker call that only tidies up has a deadline, so a
//! half-open broker cannot stall shutdown or reconnection.

use super::consumer::{self, SessionEnd};
use super::processing::Ctx;
use crate::amqp::{AmqpUrl, Node};
use crate::handler::Handler;
use crate::metrics::{label, Health};
use crate::retry::RetryPolicy;
use lapin::options::BasicCancelOptions;
use lapin::Connection;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Deadline for a broker call whose answer only tidies up (cancel, close): a dead connection
/// must not stall shutdown or reconnection.
const BROKER_CALL: Duration = Duration::from_secs(5);

/// Deadline for the whole handshake (connection, channel, qos, consume): a half-open broker can
/// stall any step of it.
const OPEN: Duration = Duration::from_secs(30);

/// Deadline for channel, qos and consume once connected. A quorum queue whose leader hangs
/// (its node frozen, not dead) takes a consume and answers only after a new leader is elected,
/// sometimes not even then (seen on 3.10: over 20 s); giving up early and subscribing again,
/// next node first, is what ends the stall.
const SUBSCRIBE: Duration = Duration::from_secs(8);

/// Added to both deadlines for each queue subscribed beyond the first (a sharded channel's
/// shards are subscribed one after another, three round trips each).
const PER_EXTRA_QUEUE: Duration = Duration::from_millis(100);

/// Runs one worker's sessions.
pub(super) struct Supervisor<H> {
    /// The broker.
    url: AmqpUrl,
    /// Readiness for `/readyz`, true only while a consumer is subscribed.
    health: Health,
    /// Shared with every message task.
    ctx: Arc<Ctx<H>>,
}

impl<H: Handler> Supervisor<H> {
    pub(super) fn new(url: AmqpUrl, health: Health, ctx: Arc<Ctx<H>>) -> Self {
        Self { url, health, ctx }
    }

    /// Consumes until `shutdown` is cancelled, reconnecting as needed; then drains and closes.
    pub(super) async fn run(self, shutdown: CancellationToken) {
        let ctx = self.ctx.clone();
        let queue = ctx.config.queue.clone();
        let tracker = TaskTracker::new();
        let slots = Arc::new(Semaphore::new(ctx.config.concurrency));
        let mut backoff =
            RetryPolicy::new(ctx.config.reconnect_min, ctx.config.reconnect_max).delays();
        let mut attempts = 0u64;
        let mut ackers = Vec::new();
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            // Every attempt after the first is a reconnect, failed or not: a worker that keeps
            // failing to subscribe (its queue missing, its login refused) must show a rising
            // count, or the reconnect alert stays silent while the worker never consumes.
            attempts += 1;
            if attempts > 1 {
                ctx.metrics
                    .reconnects
                    .with_label_values(&[label::CONSUMER])
                    .inc();
            }
            let opened = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = tokio::time::timeout(OPEN + self.extra(), self.open()) => {
                    r.unwrap_or_else(|_| Err(format!("connecting took longer than {}s", (OPEN + self.extra()).as_secs())))
                }
            };
            let (conn, subscriptions, node) = match opened {
                Ok((conn, subscriptions, node)) => (Arc::new(conn), subscriptions, node),
                Err(reason) => {
                    let wait = backoff.next_delay();
                    tracing::warn!(%queue, %reason, retry_in = ?wait, "cannot consume; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(wait) => continue,
                    }
                }
            };
            backoff.reset();
            self.health.set_node(Some(node.address.clone()));
            ctx.metrics.set_node(label::CONSUMER, &node.address);
            self.set_ready(true);
            let lanes = ctx
                .lanes
                .iter()
                .map(|l| l.queue())
                .collect::<Vec<_>>()
                .join(",");
            let ordered = ctx.lanes.iter().any(|l| l.ordered);
            tracing::info!(%queue, %lanes, ordered, %node, prefetch = ctx.config.prefetch, concurrency = ctx.config.concurrency, "consuming");
            // An ordered channel's shard loops own their channels and ackers (they hand
            // shards over between workers); otherwise the session's channels are closed here.
            let mut channels = Vec::new();
            let end = if ordered {
                consumer::consume_ordered(&ctx, &conn, subscriptions, &slots, &shutdown).await
            } else {
                let mut lanes = Vec::new();
                for (sub, lane) in subscriptions.into_iter().zip(&ctx.lanes) {
                    let (events, acker_task) =
                        consumer::start_acker(&ctx, &sub.channel, lane.queue());
                    ackers.push(acker_task);
                    channels.push((sub.channel, sub.consumer.tag()));
                    lanes.push((sub.consumer, events));
                }
                consumer::consume(&ctx, lanes, &slots, &tracker, &shutdown).await
            };
            self.set_ready(false);
            match end {
                SessionEnd::Shutdown => {
                    tracing::info!(%queue, "shutting down: consumer cancelled, finishing in-flight messages");
                    for (channel, tag) in &channels {
                        let _ = tokio::time::timeout(
                            BROKER_CALL,
                            channel.basic_cancel(tag.clone(), BasicCancelOptions::default()),
                        )
                        .await;
                    }
                    self.drain(&tracker, ackers).await;
                    for (channel, _) in &channels {
                        let _ = tokio::time::timeout(
                            BROKER_CALL,
                            channel.close(200, "shutdown".into()),
                        )
                        .await;
                    }
                    let _ =
                        tokio::time::timeout(BROKER_CALL, conn.close(200, "shutdown".into())).await;
                    ctx.publisher.close().await;
                    tracing::info!(%queue, "stopped");
                    return;
                }
                SessionEnd::Lost(reason) => {
                    let wait = backoff.next_delay();
                    // With a node list, the next attempt starts at another node: this one may
                    // be hung rather than dead, and would hold the reconnect for its timeout.
                    self.url.mark_lost(&node);
                    tracing::warn!(%queue, %node, %reason, reconnect_in = ?wait, "lost the consumer; unacked messages return to the queue");
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
    async fn drain(&self, tracker: &TaskTracker, ackers: Vec<JoinHandle<()>>) {
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
            self.ctx.stopping.cancel();
        }
        for a in ackers {
            let _ = tokio::time::timeout(BROKER_CALL, a).await;
        }
    }

    /// How much longer than one queue's the handshake may take.
    fn extra(&self) -> Duration {
        let extra = u32::try_from(self.ctx.lanes.len().saturating_sub(1)).unwrap_or(u32::MAX);
        PER_EXTRA_QUEUE.saturating_mul(extra)
    }

    /// Connects, opens a channel and subscribes; errors are worded without the password.
    async fn open(&self) -> Result<(Connection, Vec<consumer::Subscription>, Node), String> {
        let (conn, node) = self
            .url
            .connect_node(&format!("courier work {}", self.ctx.config.queue))
            .await
            .map_err(|e| e.to_string())?;
        let scrub = |e: lapin::Error| format!("{node}: {}", self.url.scrub(&e.to_string()));
        let subscribed = async {
            let queues = self.ctx.lanes.iter().map(|l| l.queue());
            consumer::subscribe(&conn, &self.ctx.config, queues, scrub).await
        };
        let deadline = SUBSCRIBE + self.extra();
        let subscribed = tokio::time::timeout(deadline, subscribed)
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "{node}: no answer to the subscription within {}s (a queue without a leader?)",
                    deadline.as_secs()
                ))
            });
        match subscribed {
            Ok(subscriptions) => Ok((conn, subscriptions, node)),
            Err(e) => {
                // A node that takes the connection but cannot serve the queue (its replica not
                // yet elected, a node booting) must not be the next attempt's first choice.
                self.url.mark_lost(&node);
                let _ =
                    tokio::time::timeout(BROKER_CALL, conn.close(200, "giving up".into())).await;
                Err(e)
            }
        }
    }
}
