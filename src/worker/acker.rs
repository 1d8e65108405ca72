//! Coalesced acknowledgements for one channel.
//!
//! Handlers finish out of order; acking each delivery costs a frame and, awaited, a round trip.
//! This task learns every delivery tag in order (`Delivered`) and every outcome (`Settled`),
//! and acks with `multiple = true` up to the highest tag below which *every* delivery is
//! settled, so no in-flight message is ever acked early (the rule is [`crate::ack::Frontier`],
//! shared with `courier-dlq`'s passes). Requeues are sent at once, one by one. Deliveries
//! settled behind a slow one are acked one by one once it has held them for a while, so a slow
//! handler neither stalls the prefetch window nor leaves settled work to be redelivered.
//! It drains whatever is queued before writing, so a burst of outcomes becomes one frame.

use crate::ack::Frontier;
use crate::metrics::{label, Metrics};
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::Channel;
use tokio::sync::mpsc;

// The worker names outcomes as `acker::Settle`; the type lives with the frontier it feeds.
pub use crate::ack::Settle;

/// What the acker hears about.
#[derive(Debug)]
pub enum AckEvent {
    /// A delivery was taken from the consumer (sent in tag order).
    Delivered(u64),
    /// A delivery's outcome.
    Settled(u64, Settle),
}

/// How long the acker waits for more outcomes before it sends a pending ack anyway.
const IDLE_FLUSH: std::time::Duration = std::time::Duration::from_millis(1);

/// How long the acker lets outcomes gather after a pass that had some (see the loop's end).
const GATHER: std::time::Duration = std::time::Duration::from_millis(1);

/// How long deliveries settled behind a slow one wait for it before they are acked one by one
/// (see [`Frontier::take_stranded`]): long enough that ordinary out-of-order completion still
/// coalesces into one `multiple` ack, short enough that a stuck handler does not hold the
/// prefetch window.
const STRANDED_FLUSH: std::time::Duration = std::time::Duration::from_millis(20);

/// Starts the acker for `channel`; returns its event sender and task handle. The task ends when
/// every sender is dropped (after flushing) or when the channel fails.
///
/// Acks are sent once the frontier has moved `batch` tags past the last ack, or when no outcome
/// arrived for [`IDLE_FLUSH`]: each ack frame costs the broker CPU, so under load one frame
/// covers many messages, while a quiet queue still sees its acks within a millisecond.
/// Deliveries settled behind a slow one are acked one by one after [`STRANDED_FLUSH`] without
/// progress, or once there are `2 × batch` of them, so one slow handler never stalls the window.
pub fn spawn(
    channel: Channel,
    metrics: Metrics,
    queue: String,
    batch: u64,
) -> (mpsc::UnboundedSender<AckEvent>, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<AckEvent>();
    let handle = tokio::spawn(async move {
        let mut frontier = Frontier::default();
        let mut acked_to = 0u64;
        let mut closed = false;
        while !closed {
            let wait = if frontier.ready().is_some() {
                Some(IDLE_FLUSH)
            } else if frontier.has_stranded() {
                Some(STRANDED_FLUSH)
            } else {
                None
            };
            let first = if let Some(wait) = wait {
                match tokio::time::timeout(wait, rx.recv()).await {
                    Ok(Some(ev)) => Some(ev),
                    Ok(None) => {
                        closed = true;
                        None
                    }
                    Err(_) => None,
                }
            } else {
                match rx.recv().await {
                    Some(ev) => Some(ev),
                    None => break,
                }
            };
            let idle = first.is_none();
            let mut requeue = Vec::new();
            let mut apply = |ev: AckEvent, requeue: &mut Vec<u64>| match ev {
                AckEvent::Delivered(tag) => frontier.delivered(tag),
                AckEvent::Settled(tag, how) => {
                    frontier.settled(tag, how);
                    if how == Settle::Requeue {
                        requeue.push(tag);
                    }
                }
            };
            if let Some(ev) = first {
                apply(ev, &mut requeue);
            }
            while let Ok(ev) = rx.try_recv() {
                apply(ev, &mut requeue);
            }
            for tag in requeue {
                let opts = BasicNackOptions {
                    multiple: false,
                    requeue: true,
                };
                if let Err(e) = channel.basic_nack(tag, opts).await {
                    tracing::warn!(%queue, error = %e, "requeue failed; the channel is gone and the broker will redeliver");
                    metrics
                        .messages
                        .with_label_values(&[&queue, label::ACK_LOST])
                        .inc();
                    return;
                }
            }
            let due = match frontier.ready() {
                Some(upto) => idle || closed || upto.saturating_sub(acked_to) >= batch,
                None => false,
            };
            if due {
                if let Some(upto) = frontier.take_ack() {
                    if let Err(e) = channel
                        .basic_ack(upto, BasicAckOptions { multiple: true })
                        .await
                    {
                        tracing::warn!(%queue, error = %e, "ack failed; the channel is gone and the broker will redeliver");
                        metrics
                            .messages
                            .with_label_values(&[&queue, label::ACK_LOST])
                            .inc();
                        return;
                    }
                    acked_to = upto;
                }
            }
            // Under load the frontier catches up by itself; acks one by one only when a slow
            // delivery has held the others for a while, or they fill half the window.
            let stranded_due = (idle && wait == Some(STRANDED_FLUSH))
                || closed
                || frontier.stranded_at_least(
                    usize::try_from(batch.saturating_mul(2)).unwrap_or(usize::MAX),
                );
            if stranded_due {
                for tag in frontier.take_stranded() {
                    if let Err(e) = channel
                        .basic_ack(tag, BasicAckOptions { multiple: false })
                        .await
                    {
                        tracing::warn!(%queue, error = %e, "ack failed; the channel is gone and the broker will redeliver");
                        metrics
                            .messages
                            .with_label_values(&[&queue, "ack-lost"])
                            .inc();
                        return;
                    }
                }
            }
            // Let outcomes gather before listening again: a task waiting on the channel is
            // woken by the next send, and under load that was nearly every message, each
            // wake-up a hand-off between runtime threads (context switches were most of the
            // binary's time). So at most one pass per GATHER while outcomes keep coming.
            if !idle && !closed {
                tokio::time::sleep(GATHER).await;
            }
        }
    });
    (tx, handle)
}
