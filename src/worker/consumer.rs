//! The consume loop of one session: subscribe with the prefetch window, take a delivery only
//! when a handler slot is free, tell the acker about it, start handling it here, and hand it
//! to a message task of its own only if it has to wait.
//!
//! Why the loop is this small: memory stays bounded only if nothing is taken from the stream
//! ahead of a free slot (`prefetch` bounds what the broker sends, `concurrency` what runs), and
//! acks stay correct only if the acker hears of every delivery in tag order before its outcome.
//! Reconnecting and draining are the supervisor's; what happens to a message is `processing`'s.

use super::acker::{self, AckEvent};
use super::processing::Ctx;
use super::WorkerSettings;
use crate::broker;
use crate::handler::Handler;
use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Consumer};
use std::sync::Arc;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How a consuming session ended.
pub(super) enum SessionEnd {
    /// The worker's token was cancelled: drain and close.
    Shutdown,
    /// The channel, connection or consumer is gone, for the reason given: reconnect.
    Lost(String),
}

/// A session's consumers: the work queue's, and its urgent band's when it has one. Index `i`
/// of [`Consumers::lanes`] consumes `ctx.lanes[i]`.
pub(super) struct Consumers {
    pub(super) lanes: Vec<Consumer>,
}

impl Consumers {
    /// Every consumer's tag, to cancel them on shutdown.
    pub(super) fn tags(&self) -> Vec<lapin::types::ShortString> {
        self.lanes.iter().map(Consumer::tag).collect()
    }
}

/// Sets the prefetch window on `channel` and subscribes to each of `queues` (the work queue,
/// then its urgent band). With `global = false` the window is per consumer, so a bulk backlog
/// cannot fill the window the band's messages need. `scrub` words a broker error without the
/// password.
pub(super) async fn subscribe(
    channel: &Channel,
    config: &WorkerSettings,
    queues: impl Iterator<Item = &str>,
    scrub: impl Fn(lapin::Error) -> String,
) -> Result<Consumers, String> {
    channel
        .basic_qos(config.prefetch, BasicQosOptions { global: false })
        .await
        .map_err(&scrub)?;
    let mut lanes = Vec::new();
    for queue in queues {
        let consumer = channel
            .basic_consume(
                queue.into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| {
                let missing =
                    broker::classify(&e).is_some_and(|(r, _)| r == broker::Reply::NotFound);
                let text = scrub(e);
                if missing {
                    format!(
                        "{text} (run `courier topology apply` with the same --topology and --prefix)"
                    )
                } else {
                    text
                }
            })?;
        lanes.push(consumer);
    }
    Ok(Consumers { lanes })
}

/// Indexes into `ctx.lanes` (and [`Consumers::lanes`]).
const MAIN: usize = 0;
const URGENT: usize = 1;

/// The next delivery of an optional consumer; never ready without one.
async fn next_of(
    consumer: Option<&mut Consumer>,
) -> Option<Result<lapin::message::Delivery, lapin::Error>> {
    match consumer {
        Some(c) => c.next().await,
        None => std::future::pending().await,
    }
}

/// Starts the acker of a session's channel; returns its event sender and task.
pub(super) fn start_acker<H>(
    ctx: &Ctx<H>,
    channel: &Channel,
) -> (mpsc::UnboundedSender<AckEvent>, tokio::task::JoinHandle<()>) {
    // One ack frame per quarter of the prefetch window under load.
    let batch = u64::from(ctx.config.prefetch / 4).max(1);
    acker::spawn(
        channel.clone(),
        ctx.metrics.clone(),
        ctx.config.queue.clone(),
        batch,
    )
}

/// Takes deliveries while handler slots are free; returns when told to stop or when the
/// consumer ends.
pub(super) async fn consume<H: Handler>(
    ctx: &Arc<Ctx<H>>,
    consumers: Consumers,
    events: mpsc::UnboundedSender<AckEvent>,
    slots: &Arc<Semaphore>,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
) -> SessionEnd {
    // One waiter for the whole session: `cancelled()` made afresh for each select would join
    // and leave the token's waiter list (a lock each way) twice per message.
    let cancelled = shutdown.cancelled();
    tokio::pin!(cancelled);
    let mut lanes = consumers.lanes.into_iter();
    let Some(mut main) = lanes.next() else {
        return SessionEnd::Lost("no consumer was subscribed".to_owned());
    };
    let mut urgent = lanes.next();
    loop {
        let permit = tokio::select! {
            biased;
            () = &mut cancelled => return SessionEnd::Shutdown,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return SessionEnd::Shutdown,
            },
        };
        // The urgent band first: a free slot takes whatever waits there before any bulk
        // delivery already buffered. Polled in order, so an idle band costs one poll.
        let (next, lane) = tokio::select! {
            biased;
            () = &mut cancelled => return SessionEnd::Shutdown,
            n = next_of(urgent.as_mut()) => (n, URGENT),
            n = main.next() => (n, MAIN),
        };
        let delivery = match next {
            Some(Ok(d)) => d,
            Some(Err(e)) => return SessionEnd::Lost(e.to_string()),
            None => {
                let queue = ctx.lanes.get(lane).map_or("?", |l| l.queue());
                ctx.metrics
                    .consumer_cancels
                    .with_label_values(&[queue])
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
        let mut task = Box::pin(async move {
            let tag = delivery.delivery_tag;
            let settle = ctx.process(delivery, lane).await;
            let _ = events.send(AckEvent::Settled(tag, settle));
            drop(permit);
        });
        // Eager start: the first poll runs here, and only a message that then waits (a request
        // in flight, a timer, a publish) becomes a task of its own. A handler that finishes at
        // once (noop, a cache hit) settles without a spawn, a scheduler wake-up or a hop to the
        // other runtime thread — the per-message cost that kept the binary below raw lapin.
        // A pending task keeps the waker of its spawned task from its next poll on; this one
        // may see one spurious wake-up, which is harmless.
        if futures_util::poll!(task.as_mut()).is_pending() {
            tracker.spawn(task);
        } else {
            // With a backlog and a fast handler nothing above ever waits; spend the task's
            // cooperative budget so the loop still yields to the acker and the other tasks
            // on this thread (on a current-thread runtime they would starve otherwise).
            tokio::task::consume_budget().await;
        }
    }
}
