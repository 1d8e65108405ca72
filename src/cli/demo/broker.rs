//! Every conversation the demo itself has with the broker about its own objects: inspecting
//! its queues (passive declares), reading the dead-letter queue back, deleting its queues and
//! exchanges.
//!
//! Applying the topology, publishing and consuming go through the library; what is here is the
//! demo's housekeeping, kept in one file so it can move to a shared broker module without the
//! rest of the demo noticing. The decisions (what blocks a run, what to print) are in
//! [`super::clean`].

use anyhow::Context;
use courier::amqp::AmqpUrl;
use courier::envelope;
use courier::topology::Topology;
use lapin::options::{
    BasicGetOptions, ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};

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

/// A channel that is replaced after a failed operation closes it (a 404 or 406 does).
struct Chan<'a> {
    conn: &'a Connection,
    channel: Option<Channel>,
}

impl Chan<'_> {
    async fn get(&mut self) -> Result<Channel, lapin::Error> {
        if let Some(ch) = &self.channel {
            if ch.status().connected() {
                return Ok(ch.clone());
            }
        }
        let ch = self.conn.create_channel().await?;
        self.channel = Some(ch.clone());
        Ok(ch)
    }
}

fn reply_code(e: &lapin::Error) -> Option<u16> {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(p) => Some(p.get_id()),
        _ => None,
    }
}

/// Existing queue: (messages, consumers); `None` when it does not exist.
async fn queue_state(
    chan: &mut Chan<'_>,
    url: &AmqpUrl,
    name: &str,
) -> anyhow::Result<Option<(u32, u32)>> {
    let ch = chan
        .get()
        .await
        .map_err(|e| anyhow::anyhow!(url.scrub(&e.to_string())))?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    match ch
        .queue_declare(name.into(), passive, FieldTable::default())
        .await
    {
        Ok(q) => Ok(Some((q.message_count(), q.consumer_count()))),
        Err(e) if reply_code(&e) == Some(404) => Ok(None),
        Err(e) => Err(anyhow::anyhow!(
            "cannot inspect queue '{name}': {}",
            url.scrub(&e.to_string())
        )),
    }
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
    let conn = url.connect(connection_name).await?;
    let mut chan = Chan {
        conn: &conn,
        channel: None,
    };
    let mut out = Vec::new();
    for q in &topology.queues {
        if let Some((messages, consumers)) = queue_state(&mut chan, url, &q.name).await? {
            out.push(QueueState {
                name: q.name.clone(),
                messages,
                consumers,
            });
        }
    }
    let _ = conn.close(200, "checked".into()).await;
    Ok(out)
}

/// Reads every dead letter's id and reason without removing anything: nothing is acked, and
/// closing the channel returns the messages to the DLQ in their order.
///
/// # Errors
/// When the broker cannot be reached or the queue cannot be read.
pub(super) async fn read_dlq(url: &AmqpUrl, queue: &str) -> anyhow::Result<Vec<(String, String)>> {
    let scrub = |e: lapin::Error| anyhow::anyhow!(url.scrub(&e.to_string()));
    let conn = url.connect("courier demo (DLQ read-back)").await?;
    let ch = conn.create_channel().await.map_err(scrub)?;
    let mut out = Vec::new();
    while let Some(m) = ch
        .basic_get(queue.into(), BasicGetOptions { no_ack: false })
        .await
        .map_err(scrub)
        .with_context(|| format!("cannot read the dead-letter queue '{queue}'"))?
    {
        let props = &m.delivery.properties;
        let id = envelope::message_id(props).unwrap_or("(none)").to_owned();
        let reason =
            envelope::str_header(props.headers().as_ref(), envelope::REASON).unwrap_or_default();
        out.push((id, reason));
    }
    let _ = ch
        .close(200, "read back, returning every message".into())
        .await;
    let _ = conn.close(200, "done".into()).await;
    Ok(out)
}

/// Deletes every queue and exchange of the topology. Queues with consumers are left alone
/// (`if-unused`): by then the demo's workers are gone, so a consumer is someone else's.
/// Never fails as a whole: whatever could not be deleted (or the connection, if it could not be
/// opened) is listed in [`Cleaned::failed`], so the caller can report it and go on.
pub(super) async fn delete_topology(url: &AmqpUrl, topology: &Topology) -> Cleaned {
    let mut out = Cleaned::default();
    let conn = match url.connect("courier demo (clean-up)").await {
        Ok(c) => c,
        Err(e) => {
            out.failed.push(format!("everything: {e}"));
            return out;
        }
    };
    let mut chan = Chan {
        conn: &conn,
        channel: None,
    };
    for q in &topology.queues {
        let deleted = match chan.get().await {
            Ok(ch) => {
                ch.queue_delete(
                    q.name.as_str().into(),
                    QueueDeleteOptions {
                        if_unused: true,
                        ..QueueDeleteOptions::default()
                    },
                )
                .await
            }
            Err(e) => Err(e),
        };
        match deleted {
            Ok(n) => {
                out.queues += 1;
                out.messages += u64::from(n);
            }
            Err(e) => out
                .failed
                .push(format!("queue '{}': {}", q.name, url.scrub(&e.to_string()))),
        }
    }
    for x in &topology.exchanges {
        let deleted = match chan.get().await {
            Ok(ch) => {
                ch.exchange_delete(x.name.as_str().into(), ExchangeDeleteOptions::default())
                    .await
            }
            Err(e) => Err(e),
        };
        match deleted {
            Ok(()) => out.exchanges += 1,
            Err(e) => out.failed.push(format!(
                "exchange '{}': {}",
                x.name,
                url.scrub(&e.to_string())
            )),
        }
    }
    let _ = conn.close(200, "cleaned up".into()).await;
    out
}
