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
use lapin::message::Delivery;
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

/// The consume loop of an ordered channel: each shard this worker is the active consumer of
/// is worked by a loop of its own that takes the next delivery only once the previous one is
/// settled, so a key's messages are handled in the order the shard holds them. Slots still
/// bound how many shards run at once. Returns when told to stop (after every shard finished
/// the message in hand) or when any shard's consumer ends.
pub(super) async fn consume_ordered<H: Handler>(
    ctx: &Arc<Ctx<H>>,
    lanes: Vec<(Consumer, mpsc::UnboundedSender<AckEvent>)>,
    slots: &Arc<Semaphore>,
    shutdown: &CancellationToken,
) -> SessionEnd {
    let mut set = tokio::task::JoinSet::new();
    for (lane, (consumer, events)) in lanes.into_iter().enumerate() {
        let (ctx, slots, shutdown) = (ctx.clone(), slots.clone(), shutdown.clone());
        set.spawn(async move { ordered_lane(&ctx, lane, consumer, &events, &slots, &shutdown).await });
    }
    let first = match set.join_next().await {
        Some(Ok(end)) => end,
        Some(Err(e)) => SessionEnd::Lost(format!("a shard's loop failed: {e}")),
        None => return SessionEnd::Lost("no consumer was subscribed".to_owned()),
    };
    match first {
        // Every loop sees the same token: let each finish the message in hand.
        SessionEnd::Shutdown => while set.join_next().await.is_some() {},
        // The session is over; what the others hold returns to the queue with the channel.
        SessionEnd::Lost(_) => set.shutdown().await,
    }
    first
}

async fn ordered_lane<H: Handler>(
    ctx: &Arc<Ctx<H>>,
    lane: usize,
    mut consumer: Consumer,
    events: &mpsc::UnboundedSender<AckEvent>,
    slots: &Arc<Semaphore>,
    shutdown: &CancellationToken,
) -> SessionEnd {
    loop {
        let next = tokio::select! {
            biased;
            () = shutdown.cancelled() => return SessionEnd::Shutdown,
            n = consumer.next() => n,
        };
        let delivery = match next {
            Some(Ok(d)) => d,
            Some(Err(e)) => return SessionEnd::Lost(e.to_string()),
            None => return consumer_ended(ctx, lane),
        };
        // Not yet reported to the acker: dropped here, it returns to the queue with the channel.
        let _permit = tokio::select! {
            biased;
            () = shutdown.cancelled() => return SessionEnd::Shutdown,
            p = slots.acquire() => match p {
                Ok(p) => p,
                Err(_) => return SessionEnd::Shutdown,
            },
        };
        let tag = delivery.delivery_tag;
        if events.send(AckEvent::Delivered(tag)).is_err() {
            return SessionEnd::Lost("acknowledgement task stopped (channel closed)".to_owned());
        }
        let settle = ctx.process(delivery, lane).await;
        let _ = events.send(AckEvent::Settled(tag, settle));
    }
}

/// The broker ended lane `lane`'s consumer: counted, and the session is lost.
fn consumer_ended<H>(ctx: &Ctx<H>, lane: usize) -> SessionEnd {
    let queue = ctx.lanes.get(lane).map_or("?", |l| l.queue());
    ctx.metrics
        .consumer_cancels
        .with_label_values(&[queue])
        .inc();
    SessionEnd::Lost(
        "the broker ended the consumer (queue deleted, consumer_timeout, or node shutdown)"
            .to_owned(),
    )
}

/// The next delivery of any lane, looked at in the order [`consume`] describes.
fn poll_lanes(
    cx: &mut std::task::Context<'_>,
    consumers: &mut [Consumer],
    banded: bool,
    start: &mut usize,
) -> std::task::Poll<(Option<Result<Delivery, lapin::Error>>, usize)> {
    let n = consumers.len();
    for k in 0..n {
        let i = if banded { n - 1 - k } else { (*start + k) % n };
        if let Some(c) = consumers.get_mut(i) {
            if let std::task::Poll::Ready(item) = c.poll_next_unpin(cx) {
                if !banded {
                    *start = (i + 1) % n;
                }
                return std::task::Poll::Ready((item, i));
            }
        }
    }
    std::task::Poll::Pending
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
    let (mut consumers, events): (Vec<Consumer>, Vec<_>) = lanes.into_iter().unzip();
    if consumers.is_empty() {
        return SessionEnd::Lost("no consumer was subscribed".to_owned());
    }
    // Which lane a free slot looks at first: an urgent band always (lane 1), so it takes
    // whatever waits there before any bulk delivery already buffered; shards in turn, so that
    // one busy shard cannot starve the others.
    let banded = ctx.lanes.get(1).is_some_and(|l| l.work.band_of.is_some());
    let mut start = 0;
    loop {
        let permit = tokio::select! {
            biased;
            () = &mut cancelled => return SessionEnd::Shutdown,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return SessionEnd::Shutdown,
            },
        };
        let (next, lane) = tokio::select! {
            biased;
            () = &mut cancelled => return SessionEnd::Shutdown,
            r = std::future::poll_fn(|cx| poll_lanes(cx, &mut consumers, banded, &mut start)) => r,
        };
        let delivery = match next {
            Some(Ok(d)) => d,
            Some(Err(e)) => return SessionEnd::Lost(e.to_string()),
            None => return consumer_ended(ctx, lane),
        };
        let Some(events) = events.get(lane) else {
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
