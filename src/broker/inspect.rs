//! Bounded inspection: look at the head of a queue and leave it exactly as it was.
//!
//! How: one exclusive consumer with `prefetch` = the number of messages to look at (at most the
//! caller's limit, at most [`MAX_INSPECT`]), so the broker never hands out more than that; every
//! delivery is looked at and kept unacknowledged; then the consumer is cancelled and everything
//! is given back with one `basic.nack(multiple, requeue)`. A classic queue puts requeued
//! messages back at their original positions, so count, order, bodies and headers are unchanged
//! (only the `redelivered` flag of those deliveries is set, which is delivery metadata).
//!
//! Whatever happens in between (the visitor fails, stdout is closed, the broker cancels us), the
//! messages are given back before returning; and if the process dies instead, the broker
//! requeues everything unacknowledged when the connection drops.

use super::{deadline, Admin, BrokerError, APPLY_HINT};
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicNackOptions};
use std::ops::ControlFlow;
use std::time::Duration;

/// `basic.qos` prefetch is a 16-bit number: no more can be held unacknowledged on one consumer.
pub const MAX_INSPECT: u64 = u16::MAX as u64;

/// How long without a delivery before checking whether anything is left to come.
const IDLE: Duration = Duration::from_secs(2);

/// What an inspection looked at.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// Messages ready in the queue when it started.
    pub total: u64,
    /// Messages looked at.
    pub examined: u64,
}

impl Sample {
    /// True when the queue held more than was looked at.
    pub fn sampled(&self) -> bool {
        self.examined < self.total
    }
}

/// Why an inspection stopped; every message was given back (or will be, when the connection
/// closes) in every case.
#[derive(Debug, thiserror::Error)]
pub enum InspectError<E> {
    /// The broker or the connection failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The visitor failed.
    #[error("{0}")]
    Visit(E),
}

/// Shows up to `limit` messages from the head of `queue` to `visit` (which may stop early), then
/// gives every one back in place.
///
/// # Errors
/// The queue is missing or busy ([`BrokerError::QueueBusy`] when anything consumes it, checked
/// before anything is read), the connection fails, or `visit` fails (the messages are given
/// back first in every case).
pub async fn inspect<E>(
    admin: &Admin,
    queue: &str,
    limit: u64,
    mut visit: impl FnMut(&Delivery) -> Result<ControlFlow<()>, E>,
) -> Result<Sample, InspectError<E>> {
    // A queue with a consumer is busy: its messages may all be held unacknowledged by it (a
    // running pass), so "0 ready" would otherwise read as an empty queue.
    let total = u64::from(admin.unused_queue(queue, APPLY_HINT).await?.ready);
    let target = total.min(limit).min(MAX_INSPECT);
    let mut sample = Sample { total, examined: 0 };
    if target == 0 {
        return Ok(sample);
    }
    let prefetch = u16::try_from(target).unwrap_or(u16::MAX);
    let (channel, mut consumer) = admin.consume_exclusive(queue, prefetch).await?;
    let mut last_tag = 0u64;
    let mut failure: Option<InspectError<E>> = None;
    let mut idle_rounds = 0;
    loop {
        let next = match tokio::time::timeout(IDLE, consumer.next()).await {
            Ok(n) => {
                idle_rounds = 0;
                n
            }
            Err(_) => {
                // Nothing for a while: if no message is ready any more, someone else took
                // them (the queue shrank since we counted); stop with what we have. A broker
                // that keeps saying "ready" but sends nothing is not waited for forever either.
                idle_rounds += 1;
                match admin.existing_queue(queue, APPLY_HINT).await {
                    Ok(s) if s.ready == 0 => break,
                    Ok(_) if idle_rounds >= 5 => break,
                    Ok(_) => continue,
                    Err(e) => {
                        failure = Some(e.into());
                        break;
                    }
                }
            }
        };
        match next {
            Some(Ok(d)) => {
                last_tag = d.delivery_tag;
                sample.examined += 1;
                match visit(&d) {
                    Ok(ControlFlow::Continue(())) => {}
                    Ok(ControlFlow::Break(())) => break,
                    Err(e) => {
                        failure = Some(InspectError::Visit(e));
                        break;
                    }
                }
                if sample.examined >= target {
                    break;
                }
            }
            Some(Err(e)) => {
                failure = Some(
                    BrokerError::Other {
                        what: format!(
                            "the connection failed while inspecting '{queue}' (every message stays in the queue)"
                        ),
                        reason: admin.url().scrub(&e.to_string()),
                    }
                    .into(),
                );
                break;
            }
            None => {
                failure = Some(
                    BrokerError::Other {
                        what: format!("inspecting '{queue}'"),
                        reason: "the broker cancelled the consumer (queue deleted?); every message it held went back to the queue".to_owned(),
                    }
                    .into(),
                );
                break;
            }
        }
    }
    // Cancel first so the requeued messages are not delivered to us again, then give them all
    // back with one frame. Deliveries received after `last_tag` (none when we took exactly the
    // prefetch) are requeued by the broker when the channel closes.
    let give_back = async {
        let cancel = channel.basic_cancel(consumer.tag(), BasicCancelOptions::default());
        deadline("cancelling the consumer", cancel).await?;
        if last_tag > 0 {
            let options = BasicNackOptions {
                multiple: true,
                requeue: true,
            };
            deadline(
                "giving the inspected messages back (the broker requeues them when the connection closes)",
                channel.basic_nack(last_tag, options),
            )
            .await?;
        }
        deadline(
            "closing the channel",
            channel.close(200, "inspected".into()),
        )
        .await
    };
    let given_back: Result<(), BrokerError> = give_back.await;
    if let Some(e) = failure {
        return Err(e);
    }
    given_back?;
    Ok(sample)
}
