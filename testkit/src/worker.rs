//! A real worker ([`courier::worker::Worker`]) running in the test's process on a test
//! topology, with the library's HTTP handler pointed at a [`crate::sink::Sink`]: what delivery
//! tests of the worker and of `courier-dlq` replays count against.

use crate::sink::Sink;
use courier::topology::Topology;
use std::time::{Duration, Instant};

/// A prefixed topology a worker can run on: the integration suite's and the DLQ tool's test
/// topologies both are.
pub trait OnTopology {
    /// The loaded, prefixed topology.
    fn topology(&self) -> &Topology;
    /// `short` under the topology's prefix.
    fn prefixed(&self, short: &str) -> String;
}

impl OnTopology for crate::Fixture {
    fn topology(&self) -> &Topology {
        &self.topology
    }

    fn prefixed(&self, short: &str) -> String {
        self.name(short)
    }
}

/// A worker running in this process on a test topology.
pub struct RunningWorker {
    /// Cancel to stop it.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// Its task.
    pub handle: tokio::task::JoinHandle<()>,
    /// Its readiness.
    pub health: courier::metrics::Health,
    /// Its metrics.
    pub metrics: courier::metrics::Metrics,
}

impl RunningWorker {
    /// Starts a worker on work queue `queue` (short name) of `t`, with `handler`; `tweak`
    /// changes the test's settings (reconnects within 1 s, 10 s to drain) first.
    pub fn spawn<H: courier::handler::Handler>(
        t: &impl OnTopology,
        queue: &str,
        handler: H,
        tweak: impl FnOnce(&mut courier::worker::WorkerSettings),
    ) -> Self {
        let mut settings = courier::worker::WorkerSettings::new(t.prefixed(queue));
        settings.reconnect_max = Duration::from_secs(1);
        settings.shutdown_timeout = Duration::from_secs(10);
        tweak(&mut settings);
        let config = settings.build().expect("worker settings valid");
        let metrics = courier::metrics::Metrics::new();
        let health = courier::metrics::Health::default();
        let worker = courier::worker::Worker::new(
            crate::parsed_url(),
            t.topology(),
            config,
            handler,
            metrics.clone(),
            health.clone(),
        )
        .expect("worker config valid");
        let shutdown = tokio_util::sync::CancellationToken::new();
        let handle = tokio::spawn(worker.run(shutdown.clone()));
        Self {
            shutdown,
            handle,
            health,
            metrics,
        }
    }

    /// A worker that delivers to `sink` over HTTP.
    pub fn http(t: &impl OnTopology, queue: &str, sink: &Sink) -> Self {
        Self::spawn(t, queue, http_handler(sink), |_| {})
    }

    /// Waits until it consumes.
    pub async fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.health.is_ready() {
            assert!(
                Instant::now() < deadline,
                "worker not ready within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops it and waits for it to drain.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(20), self.handle)
            .await
            .expect("worker stops within 20s")
            .expect("worker task did not panic");
    }
}

/// The library's HTTP handler, posting to `sink` (5 s timeout).
pub fn http_handler(sink: &Sink) -> courier::handler::http::HttpHandler {
    let mut cfg = courier::handler::http::HttpConfig::new(sink.url.clone());
    cfg.timeout = Duration::from_secs(5);
    courier::handler::http::HttpHandler::new(cfg).expect("endpoint valid")
}
