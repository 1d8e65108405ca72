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
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Consumer};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
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
        lanes.push(subscribe_one(conn, config, queue, &scrub).await?);
    }
    lanes.reverse();
    Ok(lanes)
}

/// Subscribes to `queue` on a channel of its own with the prefetch window.
async fn subscribe_one(
    conn: &lapin::Connection,
    config: &WorkerSettings,
    queue: &str,
    scrub: impl Fn(lapin::Error) -> String,
) -> Result<Subscription, String> {
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
            let missing = broker::classify(&e).is_some_and(|(r, _)| r == broker::Reply::NotFound);
            let text = scrub(e);
            if missing {
                format!(
                    "{text} (run `courier topology apply` with the same --topology and --prefix)"
                )
            } else {
                text
            }
        })?;
    Ok(Subscription { channel, consumer })
}

/// How often an ordered worker compares the shards it is active on with its fair share.
const REBALANCE_EVERY: Duration = Duration::from_secs(2);

/// Deadline for a broker call that only tidies up or hands a shard over.
const BROKER_CALL: Duration = Duration::from_secs(5);

/// What the rebalancer and a shard's loop share.
#[derive(Default)]
struct ShardState {
    /// When the loop last took a delivery (milliseconds since the session started; 0: never).
    last_delivery: AtomicU64,
    /// Set by the rebalancer: hand this shard to the next worker in line.
    hand_over: AtomicBool,
}

/// The consume loop of an ordered channel: each shard is worked by a loop of its own that
/// takes the next delivery only once the previous one is settled, so a key's messages are
/// handled in the order the shard holds them; slots still bound how many run at once.
///
/// A shard has one active consumer, and RabbitMQ makes the *first* subscriber active: the
/// first worker would keep every shard and the others would only wait. So every
/// [`REBALANCE_EVERY`], a worker active on more than its share of the shards (shards ÷ the
/// workers on the channel's roll, rounded up) hands the extra ones over: it finishes the message
/// in hand, flushes its acks, closes that shard's channel (what it had prefetched returns to
/// the head of the shard, in order, and the next worker in line becomes active) and
/// subscribes again at the back of the line.
///
/// Returns when told to stop (after every shard finished the message in hand) or when any
/// shard's consumer ends.
pub(super) async fn consume_ordered<H: Handler>(
    ctx: &Arc<Ctx<H>>,
    conn: &Arc<lapin::Connection>,
    subscriptions: Vec<Subscription>,
    slots: &Arc<Semaphore>,
    shutdown: &CancellationToken,
) -> SessionEnd {
    let started = Instant::now();
    let states: Vec<Arc<ShardState>> = subscriptions.iter().map(|_| Arc::default()).collect();
    let mut set = tokio::task::JoinSet::new();
    for (lane, sub) in subscriptions.into_iter().enumerate() {
        let (ctx, conn, slots, shutdown) =
            (ctx.clone(), conn.clone(), slots.clone(), shutdown.clone());
        let state = states.get(lane).cloned().unwrap_or_default();
        set.spawn(async move {
            ordered_shard(&ctx, &conn, lane, sub, &state, started, &slots, &shutdown).await
        });
    }
    let rebalance = rebalance(ctx, conn, &states, started);
    tokio::pin!(rebalance);
    let first = tokio::select! {
        first = set.join_next() => first,
        () = &mut rebalance => set.join_next().await,
    };
    let first = match first {
        Some(Ok(end)) => end,
        Some(Err(e)) => SessionEnd::Lost(format!("a shard's loop failed: {e}")),
        None => return SessionEnd::Lost("no consumer was subscribed".to_owned()),
    };
    match first {
        // Every loop sees the same token: let each finish the message in hand.
        SessionEnd::Shutdown => while set.join_next().await.is_some() {},
        // The session is over; what the others hold returns to the queue with the connection.
        SessionEnd::Lost(_) => set.shutdown().await,
    }
    first
}

/// Every [`REBALANCE_EVERY`]: if this worker is active on more shards than its share, marks
/// the extra ones to be handed over. Runs until the session ends; without a roll to count the
/// workers on (a topology applied before it existed), it only waits, and this worker keeps
/// every shard it is given.
async fn rebalance<H>(
    ctx: &Ctx<H>,
    conn: &lapin::Connection,
    states: &[Arc<ShardState>],
    started: Instant,
) {
    let Some(members) = &ctx.members else {
        return std::future::pending().await;
    };
    // This worker's place on the roll: a consumer that is never sent anything (kept alive
    // below: lapin cancels a consumer when it is dropped).
    let joined = async {
        let channel = conn.create_channel().await?;
        let consumer = channel
            .basic_consume(
                members.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok::<_, lapin::Error>((channel, consumer))
    };
    let (channel, _roll) = match tokio::time::timeout(BROKER_CALL, joined).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::warn!(queue = %ctx.config.queue, %members, error = %e, "cannot join the roll of workers (run `courier topology apply`); this worker keeps every shard it is given");
            return std::future::pending().await;
        }
        Err(_) => {
            tracing::warn!(queue = %ctx.config.queue, %members, "no answer when joining the roll of workers; this worker keeps every shard it is given");
            return std::future::pending().await;
        }
    };
    let mut tick = tokio::time::interval(REBALANCE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let workers = match tokio::time::timeout(
            BROKER_CALL,
            channel.queue_declare(members.as_str().into(), passive, FieldTable::default()),
        )
        .await
        {
            Ok(Ok(q)) => q.consumer_count().max(1),
            // The loops notice a dead connection themselves.
            _ => continue,
        };
        let now = millis_since(started);
        let recent = REBALANCE_EVERY.as_millis() as u64;
        let active: Vec<usize> = states
            .iter()
            .enumerate()
            .filter(|(_, s)| {
                let last = s.last_delivery.load(Ordering::Relaxed);
                last > 0 && now.saturating_sub(last) <= recent
            })
            .map(|(i, _)| i)
            .collect();
        let share = states.len().div_ceil(workers as usize);
        tracing::debug!(queue = %ctx.config.queue, workers, active = active.len(), share, "shards: this worker's share");
        if active.len() > share {
            let extra = &active[share..];
            tracing::info!(
                queue = %ctx.config.queue,
                workers,
                active = active.len(),
                share,
                handing_over = extra.len(),
                "active on more shards than this worker's share; handing the extra ones to the next worker in line"
            );
            for &i in extra {
                if let Some(s) = states.get(i) {
                    s.hand_over.store(true, Ordering::Relaxed);
                }
            }
        }
    }
}

fn millis_since(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// How one subscription to a shard ended.
enum ShardEnd {
    Session(SessionEnd),
    HandOver,
}

#[allow(clippy::too_many_arguments)]
async fn ordered_shard<H: Handler>(
    ctx: &Arc<Ctx<H>>,
    conn: &lapin::Connection,
    lane: usize,
    mut sub: Subscription,
    state: &ShardState,
    started: Instant,
    slots: &Arc<Semaphore>,
    shutdown: &CancellationToken,
) -> SessionEnd {
    let queue = ctx.lanes.get(lane).map_or("?", |l| l.queue()).to_owned();
    loop {
        let (events, acker) = start_acker(ctx, &sub.channel, &queue);
        let end = work_shard(
            ctx,
            lane,
            &mut sub.consumer,
            &events,
            state,
            started,
            slots,
            shutdown,
        )
        .await;
        // Flush the acks of what was handled before the channel goes.
        drop(events);
        let _ = tokio::time::timeout(BROKER_CALL, acker).await;
        match end {
            ShardEnd::HandOver => {
                // Closing the channel returns what it had prefetched to the head of the shard,
                // in order, and makes the next worker in line the active consumer.
                let _ = tokio::time::timeout(
                    BROKER_CALL,
                    sub.channel.close(200, "handing the shard over".into()),
                )
                .await;
                state.hand_over.store(false, Ordering::Relaxed);
                state.last_delivery.store(0, Ordering::Relaxed);
                let again = tokio::time::timeout(
                    BROKER_CALL,
                    subscribe_one(conn, &ctx.config, &queue, |e| e.to_string()),
                )
                .await;
                match again {
                    Ok(Ok(s)) => {
                        tracing::debug!(%queue, "handed the shard over; waiting in line");
                        sub = s;
                    }
                    Ok(Err(e)) => {
                        return SessionEnd::Lost(format!(
                            "{queue}: subscribing again after a hand-over: {e}"
                        ))
                    }
                    Err(_) => {
                        return SessionEnd::Lost(format!(
                            "{queue}: no answer when subscribing again after a hand-over"
                        ))
                    }
                }
            }
            ShardEnd::Session(SessionEnd::Shutdown) => {
                let _ = tokio::time::timeout(
                    BROKER_CALL,
                    sub.channel
                        .basic_cancel(sub.consumer.tag(), BasicCancelOptions::default()),
                )
                .await;
                let _ =
                    tokio::time::timeout(BROKER_CALL, sub.channel.close(200, "shutdown".into()))
                        .await;
                return SessionEnd::Shutdown;
            }
            ShardEnd::Session(lost) => return lost,
        }
    }
}

/// Works one subscription to a shard, one message at a time, until told to stop, to hand the
/// shard over, or the consumer ends.
#[allow(clippy::too_many_arguments)]
async fn work_shard<H: Handler>(
    ctx: &Arc<Ctx<H>>,
    lane: usize,
    consumer: &mut Consumer,
    events: &mpsc::UnboundedSender<AckEvent>,
    state: &ShardState,
    started: Instant,
    slots: &Arc<Semaphore>,
    shutdown: &CancellationToken,
) -> ShardEnd {
    let mut check = tokio::time::interval(Duration::from_millis(250));
    loop {
        if state.hand_over.load(Ordering::Relaxed) {
            return ShardEnd::HandOver;
        }
        let next = tokio::select! {
            biased;
            () = shutdown.cancelled() => return ShardEnd::Session(SessionEnd::Shutdown),
            n = consumer.next() => n,
            // An idle shard still hears a hand-over.
            _ = check.tick() => continue,
        };
        let delivery = match next {
            Some(Ok(d)) => d,
            Some(Err(e)) => return ShardEnd::Session(SessionEnd::Lost(e.to_string())),
            None => return ShardEnd::Session(consumer_ended(ctx, lane)),
        };
        state
            .last_delivery
            .store(millis_since(started), Ordering::Relaxed);
        // Not yet told to the acker: dropped here, it returns to the queue with the channel.
        let _permit = tokio::select! {
            biased;
            () = shutdown.cancelled() => return ShardEnd::Session(SessionEnd::Shutdown),
            p = slots.acquire() => match p {
                Ok(p) => p,
                Err(_) => return ShardEnd::Session(SessionEnd::Shutdown),
            },
        };
        let tag = delivery.delivery_tag;
        if events.send(AckEvent::Delivered(tag)).is_err() {
            return ShardEnd::Session(SessionEnd::Lost(
                "acknowledgement task stopped (channel closed)".to_owned(),
            ));
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
