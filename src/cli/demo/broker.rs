//! The demo's housekeeping on its own objects (inspecting its queues, reading the dead-letter
//! queue back, deleting its queues and exchanges), in the demo's terms, over the library's
//! [`courier::broker`]. The decisions (what blocks a run, what to print) are in
//! [`super::clean`].

use courier::amqp::AmqpUrl;
use courier::broker::{self, Admin, InspectError};
use courier::envelope;
use courier::topology::Topology;
use std::convert::Infallible;
use std::ops::ControlFlow;

/// An existing queue of the topology, as a passive declare sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct QueueState {
    /// The queue's full (prefixed) name.
    pub(super) name: String,
    /// Messages ready in it.
    pub(super) messages: u32,
    /// Consumers attached to it.
    pub(super) consumers: u32,
}

/// What a clean-up removed.
#[derive(Debug, Default)]
pub(super) struct Cleaned {
    /// Queues deleted (or already absent: deleting a missing queue succeeds).
    pub(super) queues: usize,
    /// Exchanges deleted (or already absent).
    pub(super) exchanges: usize,
    /// Messages that were in the deleted queues.
    pub(super) messages: u64,
    /// One line per object that could not be deleted, naming it and why.
    pub(super) failed: Vec<String>,
}

/// The queues of `topology` that exist, in the topology's order, with their depth and
/// consumers; one connection named `connection_name`, nothing declared or changed.
///
/// # Errors
/// When the broker cannot be reached, or a queue cannot be inspected for another reason than
/// not existing (the error names the queue).
pub(super) async fn existing_queues(
    url: &AmqpUrl,
    topology: &Topology,
    connection_name: &str,
) -> anyhow::Result<Vec<QueueState>> {
    let admin = Admin::connect(url, connection_name).await?;
    let mut out = Vec::new();
    for q in &topology.queues {
        let state = match admin.queue_state(&q.name).await {
            Ok(s) => s,
            Err(e) => {
                admin.close().await;
                return Err(e.into());
            }
        };
        if let Some(s) = state {
            out.push(QueueState {
                name: q.name.clone(),
                messages: s.ready,
                consumers: s.consumers,
            });
        }
    }
    admin.close().await;
    Ok(out)
}

/// Reads every dead letter's id and reason without removing anything (the library's bounded
/// inspection gives every message back in place).
///
/// # Errors
/// When the broker cannot be reached or the queue cannot be read.
pub(super) async fn read_dlq(url: &AmqpUrl, queue: &str) -> anyhow::Result<Vec<(String, String)>> {
    let admin = Admin::connect(url, "courier demo (DLQ read-back)").await?;
    let mut out = Vec::new();
    let read = broker::inspect(&admin, queue, broker::MAX_INSPECT, |d| {
        let props = &d.properties;
        let id = envelope::message_id(props).unwrap_or("(none)").to_owned();
        let reason =
            envelope::str_header(props.headers().as_ref(), envelope::REASON).unwrap_or_default();
        out.push((id, reason));
        Ok::<_, Infallible>(ControlFlow::Continue(()))
    })
    .await;
    admin.close().await;
    match read {
        Ok(_) => Ok(out),
        Err(InspectError::Broker(e)) => {
            Err(anyhow::Error::new(e)
                .context(format!("cannot read the dead-letter queue '{queue}'")))
        }
        Err(InspectError::Visit(never)) => match never {},
    }
}

/// Deletes every queue and exchange of the topology; queues with consumers are left alone
/// (by then the demo's workers are gone, so a consumer is someone else's). Never fails as a
/// whole: whatever could not be deleted (or the connection, if it could not be opened) is
/// listed in [`Cleaned::failed`], so the caller can report it and go on.
pub(super) async fn delete_topology(url: &AmqpUrl, topology: &Topology) -> Cleaned {
    let admin = match Admin::connect(url, "courier demo (clean-up)").await {
        Ok(a) => a,
        Err(e) => {
            return Cleaned {
                failed: vec![format!("everything: {e}")],
                ..Cleaned::default()
            }
        }
    };
    let report = admin.delete(topology).await;
    admin.close().await;
    Cleaned {
        queues: report.queues,
        exchanges: report.exchanges,
        messages: report.messages,
        failed: report
            .failed
            .into_iter()
            .map(|(object, why)| format!("{object}: {why}"))
            .collect(),
    }
}
