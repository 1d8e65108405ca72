//! The baseline, "the limit": plain lapin, written the fastest straightforward way.
//!
//! - Publisher: publisher confirms with a large window of outstanding confirms; every publish is
//!   its own future (write, then await the confirm) and up to `window` of them run at once, so
//!   frames from many publishes are queued on the socket together instead of one write per
//!   io-loop wake-up. `mandatory`, like Courier, and only `Ack(None)` counts as stored.
//! - Consumer: `basic.qos(prefetch)`, manual acks, one `basic.ack(multiple)` over the
//!   contiguous run of handled tags, written when the batch is full or when no delivery is
//!   waiting in the stream (so the broker is never kept waiting for credit), never awaited per
//!   message.
//!
//! The same functions fill the backlogs of the other scenarios (unmeasured there), because
//! they are the fastest way to get N persistent messages into a queue.

use crate::payload;
use crate::tally::Tally;
use anyhow::{bail, Context};
use courier::amqp::AmqpUrl;
use futures_util::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::BasicProperties;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Where messages go.
#[derive(Debug, Clone)]
pub struct Target {
    /// Exchange (`""` = straight to the queue named by the routing key).
    pub exchange: String,
    /// Routing key.
    pub routing_key: String,
}

/// Outcome of a raw publish run.
#[derive(Debug, Clone, Copy)]
pub struct Published {
    /// When the first publish started (after connecting and `confirm.select`).
    pub started: Instant,
    /// Wall time from the first publish to the last confirm.
    pub elapsed: Duration,
    /// Messages acked by the broker and not returned.
    pub confirmed: u64,
}

/// Publishes ids `0..n` with confirms, `window` outstanding; `props` gives each message's
/// properties (the DLQ fill adds dead-letter headers).
///
/// # Errors
/// Connection failures, and any publish that is nacked, returned or fails: a fill that is not
/// complete would make the next measurement meaningless.
pub async fn publish<F>(
    url: &AmqpUrl,
    target: &Target,
    n: u64,
    window: usize,
    props: F,
) -> anyhow::Result<Published>
where
    F: Fn(u64) -> BasicProperties,
{
    let conn = url.connect("courier-bench raw publisher").await?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let exchange: lapin::types::ShortString = target.exchange.as_str().into();
    let routing_key: lapin::types::ShortString = target.routing_key.as_str().into();
    let started = Instant::now();
    let mut failures = 0u64;
    let mut first_error = None;
    let mut confirmed = 0u64;
    let mut results = futures_util::stream::iter(0..n)
        .map(|seq| {
            let ch = ch.clone();
            let (exchange, routing_key) = (exchange.clone(), routing_key.clone());
            let properties = props(seq);
            // Stamped when the stream pulls it, i.e. when its publish actually starts.
            let body = payload::body(seq);
            async move {
                let opts = BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                };
                let confirm = ch
                    .basic_publish(exchange, routing_key, opts, &body, properties)
                    .await?;
                confirm.await
            }
        })
        .buffer_unordered(window.max(1));
    while let Some(r) = results.next().await {
        match r {
            Ok(lapin::Confirmation::Ack(None)) => confirmed += 1,
            Ok(c) => {
                failures += 1;
                first_error.get_or_insert_with(|| format!("not stored: {c:?}"));
            }
            Err(e) => {
                failures += 1;
                first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    let elapsed = started.elapsed();
    let _ = conn.close(200, "published".into()).await;
    if failures > 0 {
        bail!(
            "{failures} of {n} raw publishes to {target:?} were not confirmed; first: {}",
            first_error.unwrap_or_default()
        );
    }
    Ok(Published {
        started,
        elapsed,
        confirmed,
    })
}

/// Consumes `queue` until `tally` has every id or `stop` is cancelled, acking with `multiple`;
/// records each arrival (with its age if `latency`). `ready` is told once the consumer is
/// registered. Returns when the final ack is written and the connection closed, so anything
/// not acked is back in the queue by then.
///
/// # Errors
/// Connection or channel failures.
pub async fn consume(
    url: &AmqpUrl,
    queue: &str,
    prefetch: u16,
    tally: Arc<Tally>,
    latency: bool,
    stop: CancellationToken,
    ready: Option<tokio::sync::oneshot::Sender<()>>,
) -> anyhow::Result<()> {
    consume_acking(
        url,
        queue,
        prefetch,
        batch_for(prefetch),
        tally,
        latency,
        stop,
        ready,
    )
    .await
}

/// The baseline consumer's ack batch: a quarter of the prefetch per ack frame, so few frames,
/// and credit returns to the broker long before the prefetch window runs dry.
pub fn batch_for(prefetch: u16) -> u64 {
    u64::from(prefetch / 4).max(1)
}

/// A raw consumer running in a task of its own.
pub struct Started {
    /// Ends the consumer (it also ends by itself once its tally is complete).
    pub stop: CancellationToken,
    /// The consumer's task.
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Starts [`consume_acking`] on `queue` in a task and returns once it is subscribed, so a
/// scenario's clock starts with the consumer already in place.
///
/// # Errors
/// When it is not subscribed within 10 s (then its own error, if it has one).
pub async fn start_consumer(
    url: &AmqpUrl,
    queue: &str,
    prefetch: u16,
    batch: u64,
    tally: Arc<Tally>,
    latency: bool,
) -> anyhow::Result<Started> {
    let stop = CancellationToken::new();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn({
        let (url, queue, stop) = (url.clone(), queue.to_owned(), stop.clone());
        async move {
            consume_acking(
                &url,
                &queue,
                prefetch,
                batch,
                tally,
                latency,
                stop,
                Some(ready_tx),
            )
            .await
        }
    });
    if tokio::time::timeout(Duration::from_secs(10), ready_rx)
        .await
        .is_err()
    {
        stop.cancel();
        task.await??;
        bail!("the raw consumer did not start");
    }
    Ok(Started { stop, task })
}

/// [`consume`] with an explicit ack batch: one `basic.ack(multiple)` every `batch` deliveries
/// (and after a millisecond of quiet). The `binary` scenario's baseline acks every half
/// prefetch window (`prefetch / 2`), as the issue asks of a careful raw consumer.
///
/// # Errors
/// Connection or channel failures.
#[allow(clippy::too_many_arguments)]
pub async fn consume_acking(
    url: &AmqpUrl,
    queue: &str,
    prefetch: u16,
    batch: u64,
    tally: Arc<Tally>,
    latency: bool,
    stop: CancellationToken,
    ready: Option<tokio::sync::oneshot::Sender<()>>,
) -> anyhow::Result<()> {
    let conn = url.connect("courier-bench raw consumer").await?;
    let ch = conn.create_channel().await?;
    let result = consume_channel(&ch, queue, prefetch, batch, tally, latency, stop, ready).await;
    let _ = conn.close(200, "consumed".into()).await;
    result
}

/// [`consume_acking`] on a channel of a connection the caller owns (the `shards` group runs one
/// channel per shard queue on one connection, as the worker does); closes the channel, not
/// the connection.
///
/// # Errors
/// Channel failures.
#[allow(clippy::too_many_arguments)]
pub async fn consume_channel(
    ch: &lapin::Channel,
    queue: &str,
    prefetch: u16,
    batch: u64,
    tally: Arc<Tally>,
    latency: bool,
    stop: CancellationToken,
    ready: Option<tokio::sync::oneshot::Sender<()>>,
) -> anyhow::Result<()> {
    ch.basic_qos(prefetch, BasicQosOptions { global: false })
        .await?;
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("cannot consume {queue}"))?;
    if let Some(ready) = ready {
        let _ = ready.send(());
    }
    let batch = batch.clamp(1, u64::from(prefetch.max(1)));
    // Settle after a millisecond of quiet: enough to merge a burst into one frame, far below
    // anything that could starve the broker of credit (the batch is a fraction of prefetch).
    let idle = Duration::from_millis(1);
    let mut last_tag = 0u64;
    let mut unacked = 0u64;
    let result = loop {
        if tally.is_complete() {
            break Ok(());
        }
        let next = match consumer.next().now_or_never() {
            Some(n) => n,
            None if unacked == 0 => tokio::select! {
                _ = stop.cancelled() => break Ok(()),
                n = consumer.next() => n,
            },
            None => {
                // Nothing waiting: settle what we have if the stream stays quiet a moment
                // (acking on every momentary gap would send many tiny ack frames).
                tokio::select! {
                    _ = stop.cancelled() => break Ok(()),
                    n = consumer.next() => n,
                    _ = tokio::time::sleep(idle) => {
                        ch.basic_ack(last_tag, BasicAckOptions { multiple: true })
                            .await?;
                        unacked = 0;
                        continue;
                    }
                }
            }
        };
        let delivery = match next {
            Some(Ok(d)) => d,
            Some(Err(e)) => break Err(anyhow::Error::from(e).context("consumer failed")),
            None => break Err(anyhow::anyhow!("the broker cancelled the consumer")),
        };
        match payload::read(&delivery.data) {
            Some(stamp) => tally.record(stamp.seq, latency.then_some(stamp.age)),
            None => tally.record(u64::MAX, None),
        }
        last_tag = delivery.delivery_tag;
        unacked += 1;
        if unacked >= batch {
            ch.basic_ack(last_tag, BasicAckOptions { multiple: true })
                .await?;
            unacked = 0;
        }
    };
    if unacked > 0 {
        ch.basic_ack(last_tag, BasicAckOptions { multiple: true })
            .await?;
    }
    let _ = ch.close(200, "consumed".into()).await;
    result
}

/// [`relay`] until every message is in `finished`; no progress for `stall` stops it. Returns
/// the relay's own result and when the last message was recorded (or the stall).
#[allow(clippy::too_many_arguments)]
pub async fn relay_until<F>(
    url: &AmqpUrl,
    queue: &str,
    prefetch: u16,
    window: usize,
    decide: F,
    forwarded: Option<Arc<Tally>>,
    finished: Arc<Tally>,
    stall: Duration,
) -> (anyhow::Result<()>, Result<Instant, crate::tally::Stalled>)
where
    F: Fn(&lapin::message::Delivery) -> Decision,
{
    let stop = CancellationToken::new();
    let relay = relay(
        url,
        queue,
        prefetch,
        window,
        decide,
        forwarded,
        finished.clone(),
        stop.clone(),
    );
    // The relay stops by itself once every id is through; the watcher only ends a stall.
    tokio::join!(relay, async {
        let end = finished.wait(stall).await;
        if end.is_err() {
            stop.cancel();
        }
        end
    })
}

/// What the relay does with a delivery: forward a copy of it to a target (then ack the original
/// once the copy is confirmed), or ack it as it is (`None`); known at once, or after some work
/// (the HTTP retry baseline asks a server first).
// Unboxed on purpose: `Now` is the per-message path of the baselines, and an allocation per
// message there would slow the limit Courier is compared with.
#[allow(clippy::large_enum_variant)]
pub enum Decision {
    /// Decided on the spot.
    Now(Option<(Target, BasicProperties)>),
    /// Decided once this future resolves; the relay keeps consuming meanwhile (up to `window`
    /// undecided or unconfirmed deliveries).
    Later(futures_util::future::BoxFuture<'static, Option<(Target, BasicProperties)>>),
}

/// Relays deliveries of `queue`: `decide` returns where to forward a copy (then the original is
/// acked once the copy is confirmed), or `None` to ack it as it is. Forwarded copies are
/// recorded in `forwarded` when confirmed; the relay stops when `finished` is complete and no
/// copy is pending (or on `stop`).
///
/// This is the plain-lapin version of what Courier's retry path and `courier-dlq replay` do
/// (consume, publish a confirmed copy, ack the original after the confirm), so those two can
/// be compared with the same broker work done the fastest straightforward way: copies written
/// as soon as they are decided, up to `window` unconfirmed, acks with `multiple` up to the
/// lowest copy still unconfirmed.
///
/// # Errors
/// Connection or channel failures, and a copy that is nacked or returned.
#[allow(clippy::too_many_arguments)]
async fn relay<F>(
    url: &AmqpUrl,
    queue: &str,
    prefetch: u16,
    window: usize,
    decide: F,
    forwarded: Option<Arc<Tally>>,
    finished: Arc<Tally>,
    stop: CancellationToken,
) -> anyhow::Result<()>
where
    F: Fn(&lapin::message::Delivery) -> Decision,
{
    // Separate connections for consuming and publishing, as Courier has.
    let cconn = url.connect("courier-bench raw relay (consume)").await?;
    let pconn = url.connect("courier-bench raw relay (publish)").await?;
    let ch = cconn.create_channel().await?;
    ch.basic_qos(prefetch, BasicQosOptions { global: false })
        .await?;
    let pch = pconn.create_channel().await?;
    pch.confirm_select(ConfirmSelectOptions::default()).await?;
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("cannot consume {queue}"))?;
    let batch = u64::from(prefetch / 4).max(1);
    let mut pending = std::collections::BTreeSet::new();
    let mut confirms = futures_util::stream::FuturesUnordered::new();
    let (mut max_tag, mut acked) = (0u64, 0u64);
    let mut tick = tokio::time::interval(Duration::from_millis(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let result: anyhow::Result<()> = loop {
        if finished.is_complete() && pending.is_empty() {
            break Ok(());
        }
        let mut flush = false;
        tokio::select! {
            _ = stop.cancelled() => break Ok(()),
            next = consumer.next(), if confirms.len() < window => {
                let d = match next {
                    Some(Ok(d)) => d,
                    Some(Err(e)) => break Err(anyhow::Error::from(e).context("consumer failed")),
                    None => break Err(anyhow::anyhow!("the broker cancelled the consumer")),
                };
                max_tag = d.delivery_tag;
                let decided = match decide(&d) {
                    Decision::Now(None) => None,
                    d => Some(d),
                };
                if let Some(decided) = decided {
                    pending.insert(d.delivery_tag);
                    let (pch, tag) = (pch.clone(), d.delivery_tag);
                    let seq = payload::read(&d.data).map_or(u64::MAX, |s| s.seq);
                    let body = d.data;
                    confirms.push(async move {
                        let copy = match decided {
                            Decision::Now(copy) => copy,
                            Decision::Later(f) => f.await,
                        };
                        let Some((target, properties)) = copy else {
                            return (tag, seq, None);
                        };
                        let opts = BasicPublishOptions { mandatory: true, ..Default::default() };
                        let r = match pch
                            .basic_publish(
                                target.exchange.as_str().into(),
                                target.routing_key.as_str().into(),
                                opts,
                                &body,
                                properties,
                            )
                            .await
                        {
                            Ok(c) => c.await,
                            Err(e) => Err(e),
                        };
                        (tag, seq, Some(r))
                    });
                }
            }
            Some((tag, seq, r)) = confirms.next(), if !confirms.is_empty() => {
                match r {
                    None => {
                        pending.remove(&tag);
                    }
                    Some(Ok(lapin::Confirmation::Ack(None))) => {
                        pending.remove(&tag);
                        if let Some(f) = &forwarded {
                            f.record(seq, None);
                        }
                    }
                    Some(Ok(c)) => break Err(anyhow::anyhow!("a relayed copy was not stored: {c:?}")),
                    Some(Err(e)) => break Err(anyhow::Error::from(e).context("relayed publish failed")),
                }
            }
            _ = tick.tick() => flush = true,
        }
        let upto = pending.first().map_or(max_tag, |p| p - 1);
        if upto > acked && (flush || upto - acked >= batch) {
            ch.basic_ack(upto, BasicAckOptions { multiple: true })
                .await?;
            acked = upto;
        }
    };
    let upto = pending.first().map_or(max_tag, |p| p - 1);
    if upto > acked {
        ch.basic_ack(upto, BasicAckOptions { multiple: true })
            .await?;
    }
    let _ = ch.close(200, "relayed".into()).await;
    let _ = cconn.close(200, "relayed".into()).await;
    let _ = pconn.close(200, "relayed".into()).await;
    result
}
