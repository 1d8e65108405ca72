//! Coalesced acknowledgements for one channel.
//!
//! Handlers finish out of order; acking each delivery costs a frame and, awaited, a round trip.
//! This task learns every delivery tag in order (`Delivered`) and every outcome (`Settled`),
//! and acks with `multiple = true` up to the highest tag below which *every* delivery is
//! settled, so no in-flight message is ever acked early. Requeues are sent at once, one by one.
//! It drains whatever is queued before writing, so a burst of outcomes becomes one frame.

use crate::metrics::Metrics;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::Channel;
use std::collections::BTreeSet;
use tokio::sync::mpsc;

/// How a delivery is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// Outcome safe: ack.
    Ack,
    /// Outcome not safe (republish unconfirmed): give it back to the queue.
    Requeue,
}

/// What the acker hears about.
#[derive(Debug)]
pub enum AckEvent {
    /// A delivery was taken from the consumer (sent in tag order).
    Delivered(u64),
    /// A delivery's outcome.
    Settled(u64, Settle),
}

/// Pure bookkeeping: which tag may be acked with `multiple` now.
#[derive(Debug, Default)]
pub struct Frontier {
    /// Delivered, not yet settled.
    outstanding: BTreeSet<u64>,
    /// Highest tag delivered.
    max_delivered: u64,
    /// Settled as Ack, not yet covered by an ack frame.
    acks: BTreeSet<u64>,
}

impl Frontier {
    /// Records a delivery.
    pub fn delivered(&mut self, tag: u64) {
        self.outstanding.insert(tag);
        self.max_delivered = self.max_delivered.max(tag);
    }

    /// Records an outcome.
    pub fn settled(&mut self, tag: u64, how: Settle) {
        self.outstanding.remove(&tag);
        if how == Settle::Ack {
            self.acks.insert(tag);
        }
    }

    /// The tag [`Frontier::take_ack`] would return, without taking it.
    pub fn ready(&self) -> Option<u64> {
        let safe = match self.outstanding.first() {
            Some(lowest) => lowest - 1,
            None => self.max_delivered,
        };
        self.acks.range(..=safe).next_back().copied()
    }

    /// The tag to ack with `multiple` now, if any: every delivery up to it is settled, and it
    /// is itself an unacked ack-settled delivery (acking a requeued tag would be an unknown
    /// tag to the broker, which closes the channel).
    pub fn take_ack(&mut self) -> Option<u64> {
        let safe = match self.outstanding.first() {
            Some(lowest) => lowest - 1,
            None => self.max_delivered,
        };
        let upto = *self.acks.range(..=safe).next_back()?;
        self.acks = self.acks.split_off(&(upto + 1));
        Some(upto)
    }
}

/// How long the acker waits for more outcomes before it sends a pending ack anyway.
const IDLE_FLUSH: std::time::Duration = std::time::Duration::from_millis(1);

/// Starts the acker for `channel`; returns its event sender and task handle. The task ends when
/// every sender is dropped (after flushing) or when the channel fails.
///
/// Acks are sent once the frontier has moved `batch` tags past the last ack, or when no outcome
/// arrived for [`IDLE_FLUSH`]: each ack frame costs the broker CPU, so under load one frame
/// covers many messages, while a quiet queue still sees its acks within a millisecond.
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
            let first = if frontier.ready().is_some() {
                match tokio::time::timeout(IDLE_FLUSH, rx.recv()).await {
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
                        .with_label_values(&[&queue, "ack-lost"])
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
                            .with_label_values(&[&queue, "ack-lost"])
                            .inc();
                        return;
                    }
                    acked_to = upto;
                }
            }
        }
    });
    (tx, handle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_acks_past_an_unsettled_delivery() {
        let mut f = Frontier::default();
        for t in 1..=5 {
            f.delivered(t);
        }
        f.settled(2, Settle::Ack);
        f.settled(3, Settle::Ack);
        assert_eq!(f.take_ack(), None, "1 is still in flight");
        f.settled(1, Settle::Ack);
        assert_eq!(f.ready(), Some(3));
        assert_eq!(f.take_ack(), Some(3));
        assert_eq!(f.take_ack(), None);
        assert_eq!(f.ready(), None);
        f.settled(5, Settle::Ack);
        assert_eq!(f.take_ack(), None, "4 is still in flight");
        f.settled(4, Settle::Ack);
        assert_eq!(f.take_ack(), Some(5));
    }

    #[test]
    fn requeued_tags_alone_are_not_acked() {
        let mut f = Frontier::default();
        f.delivered(1);
        f.delivered(2);
        f.settled(1, Settle::Requeue);
        assert_eq!(f.take_ack(), None);
        f.settled(2, Settle::Ack);
        assert_eq!(f.take_ack(), Some(2));
    }

    #[test]
    fn ack_covers_requeued_neighbours_harmlessly() {
        let mut f = Frontier::default();
        for t in 1..=3 {
            f.delivered(t);
        }
        f.settled(1, Settle::Ack);
        f.settled(2, Settle::Requeue);
        f.settled(3, Settle::Ack);
        assert_eq!(f.take_ack(), Some(3));
    }

    #[test]
    fn later_deliveries_do_not_block_settled_prefix() {
        let mut f = Frontier::default();
        f.delivered(1);
        f.settled(1, Settle::Ack);
        f.delivered(2);
        assert_eq!(f.take_ack(), Some(1));
    }
}
