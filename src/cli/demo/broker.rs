//! The demo's housekeeping on its own objects (inspecting its queues, reading the dead-letter
//! queue back, deleting its queues and exchanges), in the demo's terms, over the library's
//! [`courier::broker`]. The decisions (what blocks a run, what to print) are in
//! [`super::clean`].

use courier::amqp::AmqpUrl;
use courier::broker::{self, Admin, InspectError};
use courier::envelope;
use courier::management::Management;
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

/// The queues and exchanges under a prefix, and how they were found.
#[derive(Debug, Default)]
pub(super) struct UnderPrefix {
    /// Existing queues (full names) with their consumers.
    pub(super) queues: Vec<(String, u64)>,
    /// Existing exchanges (full names).
    pub(super) exchanges: Vec<String>,
    /// `None` when the management API listed everything under the prefix; otherwise why it could
    /// not, and then only the objects of the known topologies were looked for.
    pub(super) not_listed: Option<String>,
}

impl UnderPrefix {
    /// Nothing exists.
    pub(super) fn is_empty(&self) -> bool {
        self.queues.is_empty() && self.exchanges.is_empty()
    }
}

/// What exists under `prefix`: everything the management API lists with that prefix, whatever
/// topology declared it; when the API does not answer, the objects of the `known` topologies
/// that exist (passive declares: nothing is created).
///
/// # Errors
/// When neither the management API nor the broker can be asked.
pub(super) async fn under_prefix(
    url: &AmqpUrl,
    management: &Management,
    prefix: &str,
    known: &[Topology],
) -> anyhow::Result<UnderPrefix> {
    // An empty prefix would be the whole vhost: the demo never runs without one.
    anyhow::ensure!(
        !prefix.is_empty(),
        "refusing to look for the demo's objects without a prefix"
    );
    let listed = async {
        let queues = management.queues().await?;
        let exchanges = management.exchanges().await?;
        Ok::<_, courier::management::ManagementError>((queues, exchanges))
    };
    let not_listed = match listed.await {
        Ok((queues, exchanges)) => {
            return Ok(UnderPrefix {
                queues: queues
                    .into_iter()
                    .filter(|q| q.name.starts_with(prefix))
                    .map(|q| (q.name, q.consumers))
                    .collect(),
                exchanges: exchanges
                    .into_iter()
                    .filter(|e| e.starts_with(prefix))
                    .collect(),
                not_listed: None,
            })
        }
        Err(e) => e.to_string(),
    };
    let mut queues: Vec<&str> = Vec::new();
    let mut exchanges: Vec<&str> = Vec::new();
    for t in known {
        for q in &t.queues {
            if !queues.contains(&q.name.as_str()) {
                queues.push(&q.name);
            }
        }
        for e in &t.exchanges {
            if !exchanges.contains(&e.name.as_str()) {
                exchanges.push(&e.name);
            }
        }
    }
    let admin = Admin::connect(url, "courier demo (clean-up check)").await?;
    let found = async {
        let mut out = UnderPrefix {
            not_listed: Some(not_listed),
            ..UnderPrefix::default()
        };
        for q in queues {
            if let Some(state) = admin.queue_state(q).await? {
                out.queues.push((q.to_owned(), u64::from(state.consumers)));
            }
        }
        for e in exchanges {
            if admin.exchange_exists(e).await? {
                out.exchanges.push(e.to_owned());
            }
        }
        Ok::<_, broker::BrokerError>(out)
    }
    .await;
    admin.close().await;
    Ok(found?)
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
    let queues: Vec<&str> = topology.queues.iter().map(|q| q.name.as_str()).collect();
    let exchanges: Vec<&str> = topology.exchanges.iter().map(|e| e.name.as_str()).collect();
    delete_objects(url, &queues, &exchanges).await
}

/// [`delete_topology`] for objects named one by one (what `--clean` found under the prefix).
pub(super) async fn delete_objects(url: &AmqpUrl, queues: &[&str], exchanges: &[&str]) -> Cleaned {
    let admin = match Admin::connect(url, "courier demo (clean-up)").await {
        Ok(a) => a,
        Err(e) => {
            return Cleaned {
                failed: vec![format!("everything: {e}")],
                ..Cleaned::default()
            }
        }
    };
    let report = admin
        .delete_objects(queues.iter().copied(), exchanges.iter().copied())
        .await;
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
