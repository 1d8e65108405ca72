//! The benchmark's own objects on the shared broker: declared under a unique prefix, inspected
//! with passive declares, and deleted at the end of the run whatever happened.
//!
//! The broker is shared with other engineers' tests, so nothing here touches a name outside our
//! prefix, and nothing ever restarts or reconfigures the broker.

use anyhow::Context;
use courier::amqp::AmqpUrl;
use courier::broker::Admin;
use courier::topology::Topology;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A control connection plus the list of everything the run declared.
pub struct Scratch {
    /// Where the broker is.
    pub url: AmqpUrl,
    /// Used for declares, purges and depth checks, never for measured traffic.
    admin: Admin,
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
        Self::connect_to(url, "is RabbitMQ running? scripts/rabbitmq-up").await
    }

    /// [`Scratch::connect`] to another broker (the `cluster` group's), `hint` saying how to
    /// start it.
    ///
    /// # Errors
    /// When the broker cannot be reached.
    pub async fn connect_to(url: &AmqpUrl, hint: &str) -> anyhow::Result<Self> {
        let admin = Admin::connect(url, "courier-bench control")
            .await
            .with_context(|| format!("cannot connect to the broker at {url} ({hint})"))?;
        Ok(Self {
            url: url.clone(),
            admin,
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
        courier::broker::apply(&self.url, topology)
            .await
            .with_context(|| format!("cannot apply the topology {}", topology.source))?;
        Ok(())
    }

    /// Ready messages in `queue` (a passive declare; unacknowledged ones are not counted).
    ///
    /// # Errors
    /// When the queue does not exist or the broker is gone.
    pub async fn depth(&self, queue: &str) -> anyhow::Result<u32> {
        Ok(self.state(queue).await?.ready)
    }

    /// Consumers subscribed to `queue`.
    ///
    /// # Errors
    /// When the queue does not exist or the broker is gone.
    pub async fn consumers(&self, queue: &str) -> anyhow::Result<u32> {
        Ok(self.state(queue).await?.consumers)
    }

    async fn state(&self, queue: &str) -> anyhow::Result<courier::broker::QueueState> {
        self.admin
            .queue_state(queue)
            .await?
            .with_context(|| format!("queue {queue} is missing"))
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
        Ok(self.admin.purge(queue).await?)
    }

    /// Deletes every queue and exchange this run declared; errors are reported, not fatal.
    pub async fn cleanup(&self) {
        let queues = self.queues.lock().map(|q| q.clone()).unwrap_or_default();
        let exchanges = self.exchanges.lock().map(|e| e.clone()).unwrap_or_default();
        let mut failed = 0;
        for q in &queues {
            failed += usize::from(self.admin.delete_queue(q).await.is_err());
        }
        for e in &exchanges {
            failed += usize::from(self.admin.delete_exchange(e).await.is_err());
        }
        if failed > 0 {
            eprintln!("courier-bench: could not delete {failed} of our objects; delete them by hand (they carry the run's prefix)");
        }
        self.admin.close().await;
    }
}
