//! The consume loop of one session: subscribe with the prefetch window, take a delivery only
//! when a handler slot is free, tell the acker about it, start handling it here, and hand it
//! to a message task of its own only if it has to wait.
//!
//! Why the loop is this small: memory stays bounded only if nothing is taken from the stream
//! ahead of a free slot (`prefetch` bounds what the broker sends, `concurrency` what runs), and
//! acks stay correct only if the acker hears of every delivery in tag order before its outcome
//! (which is why an urgent band, taken out of the broker's order, has a channel of its own).
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

/// One consumed queue of a session: its own channel, so that its delivery tags (and the acker
/// that acks them in tag order) are its own, and its consumer.
pub(super) struct Subscription {
    pub(super) channel: Channel,
    pub(super) consumer: Consumer,
}

/// Subscribes to each of `queues` (the work queue, then its urgent band), each on a channel of
/// its own with the prefetch window. The band is subscribed first, so that its waiting
/// messages are already on their way when the bulk ones start. Returned in `queues`' order
/// (index `i` consumes `ctx.lanes[i]`). `scrub` words a broker error without the password.
pub(super) async fn subscribe<'q>(
    conn: &lapin::Connection,
    config: &WorkerSettings,
    queues: impl DoubleEndedIterator<Item = &'q str>,
    scrub: impl Fn(lapin::Error) -> String,
) -> Result<Vec<Subscription>, String> {
    let mut lanes = Vec::new();
    for queue in queues.rev() {
        let channel = conn.create_channel().await.map_err(&scrub)?;
        channel
            .basic_qos(config.prefetch, BasicQosOptions { global: false })
            .await
            .map_err(&scrub)?;
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
        lanes.push(Subscription { channel, consumer });
    }
    lanes.reverse();
    Ok(lanes)
}

/// Indexes into `ctx.lanes` (and a session's subscriptions).
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

/// Starts the acker of one of a session's channels (consuming `queue`); returns its event
/// sender and task.
pub(super) fn start_acker<H>(
    ctx: &Ctx<H>,
    channel: &Channel,
    queue: &str,
) -> (mpsc::UnboundedSender<AckEvent>, tokio::task::JoinHandle<()>) {
    // One ack frame per quarter of the prefetch window under load.
    let batch = u64::from(ctx.config.prefetch / 4).max(1);
    acker::spawn(
        channel.clone(),
        ctx.metrics.clone(),
        queue.to_owned(),
        batch,
    )
}

/// Takes deliveries while handler slots are free; returns when told to stop or when the
/// consumer ends.
pub(super) async fn consume<H: Handler>(
    ctx: &Arc<Ctx<H>>,
    lanes: Vec<(Consumer, mpsc::UnboundedSender<AckEvent>)>,
    slots: &Arc<Semaphore>,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
) -> SessionEnd {
    // One waiter for the whole session: `cancelled()` made afresh for each select would join
    // and leave the token's waiter list (a lock each way) twice per message.
    let cancelled = shutdown.cancelled();
    tokio::pin!(cancelled);
    let mut lanes = lanes.into_iter();
    let Some((mut main, main_events)) = lanes.next() else {
        return SessionEnd::Lost("no consumer was subscribed".to_owned());
    };
    let (mut urgent, urgent_events) = lanes.next().unzip();
    // Each lane's deliveries go to its own channel's acker, in that channel's tag order.
    let events = [Some(main_events), urgent_events];
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
        let Some(events) = events.get(lane).and_then(Option::as_ref) else {
            return SessionEnd::Lost("a delivery without its lane".to_owned());
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
