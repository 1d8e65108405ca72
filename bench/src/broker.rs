//! The benchmark's own objects on the shared broker: declared under a unique prefix, inspected
//! with passive declares, and deleted at the end of the run whatever happened.
//!
//! The broker is shared with other engineers' tests, so nothing here touches a name outside our
//! prefix, and nothing ever restarts or reconfigures the broker.

use anyhow::Context;
use courier::amqp::AmqpUrl;
use courier::topology::Topology;
use lapin::options::{QueueDeclareOptions, QueuePurgeOptions};
use lapin::types::FieldTable;
use lapin::Connection;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A control connection plus the list of everything the run declared.
pub struct Scratch {
    /// Where the broker is.
    pub url: AmqpUrl,
    /// Used for declares, purges and depth checks, never for measured traffic.
    conn: Connection,
    /// Queues to delete at the end.
    queues: Mutex<Vec<String>>,
    /// Exchanges to delete at the end.
    exchanges: Mutex<Vec<String>>,
}

impl Scratch {
    /// Connects the control connection.
    ///
    /// # Errors
    /// When the broker cannot be reached.
    pub async fn connect(url: &AmqpUrl) -> anyhow::Result<Self> {
        let conn = url
            .connect("courier-bench control")
            .await
            .context("cannot connect to the broker (is RabbitMQ running? scripts/rabbitmq-up)")?;
        Ok(Self {
            url: url.clone(),
            conn,
            queues: Mutex::new(Vec::new()),
            exchanges: Mutex::new(Vec::new()),
        })
    }

    /// Declares `topology` (with Courier's own `apply`, so the queues have exactly the
    /// production arguments) and remembers every object for [`Scratch::cleanup`].
    ///
    /// # Errors
    /// The apply error (names the object and why).
    pub async fn apply(&self, topology: &Topology) -> anyhow::Result<()> {
        // Remember first: a half-applied topology is cleaned up too.
        if let Ok(mut q) = self.queues.lock() {
            q.extend(topology.queues.iter().map(|q| q.name.clone()));
        }
        if let Ok(mut e) = self.exchanges.lock() {
            e.extend(topology.exchanges.iter().map(|e| e.name.clone()));
        }
        courier::topology::apply(&self.url, topology)
            .await
            .with_context(|| format!("cannot apply the topology {}", topology.source))?;
        Ok(())
    }

    /// Ready messages in `queue` (a passive declare; unacknowledged ones are not counted).
    ///
    /// # Errors
    /// When the queue does not exist or the broker is gone.
    pub async fn depth(&self, queue: &str) -> anyhow::Result<u32> {
        // A failed passive declare closes its channel, so each check gets its own.
        let ch = self.conn.create_channel().await?;
        let q = ch
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("queue {queue} is missing"))?;
        let _ = ch.close(200, "depth checked".into()).await;
        Ok(q.message_count())
    }

    /// Waits until `queue` holds `n` ready messages (confirmed publishes can take a moment to
    /// show in the count), at most `within`.
    ///
    /// # Errors
    /// When the count does not reach `n` in time.
    pub async fn expect_depth(&self, queue: &str, n: u64, within: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            let d = u64::from(self.depth(queue).await?);
            if d == n {
                return Ok(());
            }
            if started.elapsed() > within {
                anyhow::bail!("queue {queue} holds {d} messages, expected {n}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Empties `queue` of anything a failed scenario left behind.
    ///
    /// # Errors
    /// When the broker is gone.
    pub async fn purge(&self, queue: &str) -> anyhow::Result<u32> {
        let ch = self.conn.create_channel().await?;
        let n = ch
            .queue_purge(queue.into(), QueuePurgeOptions::default())
            .await?;
        let _ = ch.close(200, "purged".into()).await;
        Ok(n)
    }

    /// Deletes every queue and exchange this run declared; errors are reported, not fatal.
    pub async fn cleanup(&self) {
        let queues = self.queues.lock().map(|q| q.clone()).unwrap_or_default();
        let exchanges = self.exchanges.lock().map(|e| e.clone()).unwrap_or_default();
        let mut failed = 0;
        for q in &queues {
            let ok = match self.conn.create_channel().await {
                Ok(ch) => ch
                    .queue_delete(q.as_str().into(), Default::default())
                    .await
                    .is_ok(),
                Err(_) => false,
            };
            failed += usize::from(!ok);
        }
        for e in &exchanges {
            let ok = match self.conn.create_channel().await {
                Ok(ch) => ch
                    .exchange_delete(e.as_str().into(), Default::default())
                    .await
                    .is_ok(),
                Err(_) => false,
            };
            failed += usize::from(!ok);
        }
        if failed > 0 {
            eprintln!("courier-bench: could not delete {failed} of our objects; delete them by hand (they carry the run's prefix)");
        }
        let _ = self.conn.close(200, "courier-bench done".into()).await;
    }
}
