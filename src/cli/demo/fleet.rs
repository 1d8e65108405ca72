//! The demo's workers: real [`Worker`]s with the real [`HttpHandler`], several per work queue,
//! in this process, and the live counts read from their shared metrics registry.
//!
//! In-process rather than `courier work` children so one command shows the whole fleet and the
//! summary can read exact counters instead of scraping.

use courier::amqp::AmqpUrl;
use courier::envelope::Reason;
use courier::handler::http::{HttpConfig, HttpHandler};
use courier::metrics::{Health, Metrics};
use courier::topology::Topology;
use courier::worker::{Worker, WorkerConfig};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The running workers.
pub(super) struct Fleet {
    /// Cancelled to stop every worker gracefully.
    stop: CancellationToken,
    /// One task per worker.
    pub(super) handles: Vec<tokio::task::JoinHandle<()>>,
    /// One readiness flag per worker: the batch is published once all are consuming.
    pub(super) health: Vec<Health>,
}

impl Fleet {
    /// `per_queue` workers on every work queue, sharing one metrics registry (counters are
    /// labelled by queue, so summing over queues gives the demo's totals).
    pub(super) fn start(
        url: &AmqpUrl,
        topology: &Topology,
        endpoint: &str,
        metrics: &Metrics,
        per_queue: u16,
    ) -> anyhow::Result<Self> {
        let handler = HttpHandler::new(HttpConfig {
            timeout: Duration::from_secs(5),
            ..HttpConfig::new(endpoint)
        })?;
        let stop = CancellationToken::new();
        let mut fleet = Self {
            stop: stop.clone(),
            handles: Vec::new(),
            health: Vec::new(),
        };
        // A band is consumed by its queue's workers, never on its own.
        for q in topology.work_queues.iter().filter(|q| q.band_of.is_none()) {
            for _ in 0..per_queue {
                let mut settings = WorkerConfig::builder(q.name.clone());
                settings.prefetch = 64;
                settings.concurrency = 32;
                settings.handler_timeout = Duration::from_secs(5);
                settings.shutdown_timeout = Duration::from_secs(10);
                settings.confirm_timeout = Duration::from_secs(10);
                settings.reconnect_max = Duration::from_secs(2);
                let config = settings.build()?;
                let health = Health::default();
                let worker = Worker::new(
                    url.clone(),
                    topology,
                    config,
                    handler.clone(),
                    metrics.clone(),
                    health.clone(),
                )?;
                fleet.handles.push(tokio::spawn(worker.run(stop.clone())));
                fleet.health.push(health);
            }
        }
        Ok(fleet)
    }

    pub(super) fn ready(&self) -> usize {
        self.health.iter().filter(|h| h.is_ready()).count()
    }

    /// Graceful: stop consuming, finish in-flight messages, flush acks, close.
    pub(super) async fn stop(self) {
        self.stop.cancel();
        for h in self.handles {
            let _ = tokio::time::timeout(Duration::from_secs(20), h).await;
        }
    }
}

/// Live counts from the workers' metrics.
#[derive(Debug, Clone, Default)]
pub(super) struct Counts {
    /// Messages acked after a 2xx.
    pub(super) delivered: u64,
    /// Retry copies confirmed, by tier index.
    pub(super) retries: Vec<u64>,
    /// Dead letters confirmed, by reason.
    pub(super) dead: BTreeMap<Reason, u64>,
}

impl Counts {
    pub(super) fn read(metrics: &Metrics, topology: &Topology, tier_labels: &[String]) -> Self {
        let mut c = Self {
            retries: vec![0; tier_labels.len()],
            ..Self::default()
        };
        for q in &topology.work_queues {
            let queue = q.name.as_str();
            c.delivered += metrics
                .messages
                .with_label_values(&[queue, "delivered"])
                .get();
            for (slot, label) in c.retries.iter_mut().zip(tier_labels) {
                *slot += metrics
                    .retries
                    .with_label_values(&[queue, label.as_str()])
                    .get();
            }
            for r in Reason::ALL {
                let n = metrics
                    .dead_letters
                    .with_label_values(&[queue, r.as_str()])
                    .get();
                if n > 0 {
                    *c.dead.entry(r).or_insert(0) += n;
                }
            }
        }
        c
    }

    pub(super) fn dead_total(&self) -> u64 {
        self.dead.values().sum()
    }

    pub(super) fn retries_total(&self) -> u64 {
        self.retries.iter().sum()
    }
}
