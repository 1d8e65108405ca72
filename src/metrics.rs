//! Prometheus metrics and the `/metrics`, `/healthz`, `/readyz` endpoints.
//!
//! A private [`prometheus::Registry`] per worker (no globals), so tests and embedders can run
//! several workers in one process.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus::{
    exponential_buckets, Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Every metric the worker exports. Cheap to clone (all fields are shared handles).
#[derive(Clone)]
pub struct Metrics {
    /// The registry `/metrics` renders.
    pub registry: Registry,
    /// Messages finished, by queue and outcome (`delivered`, `retried`, `dead-lettered`,
    /// `requeued`, `redelivery-counted`, `ack-lost`).
    pub messages: IntCounterVec,
    /// Handler latency, by queue.
    pub handler_seconds: HistogramVec,
    /// Messages being handled right now, by queue.
    pub in_flight: IntGaugeVec,
    /// Retries published, by queue and tier delay.
    pub retries: IntCounterVec,
    /// Dead letters published, by queue and reason.
    pub dead_letters: IntCounterVec,
    /// Reconnections, by connection role (`consumer`, `publisher`).
    pub reconnects: IntCounterVec,
    /// Time from publish to broker confirm.
    pub confirm_seconds: HistogramVec,
    /// Publishes that failed, by kind (`nack`, `returned`, `timeout`, `channel`).
    pub publish_failures: IntCounterVec,
    /// Consumers cancelled by the broker or ended without an error, by queue.
    pub consumer_cancels: IntCounterVec,
    /// 1 while connected and consuming.
    pub ready: IntGauge,
    /// 1 while the broker blocks a connection (memory or disk alarm).
    pub blocked: IntGauge,
}

impl Metrics {
    /// Creates and registers every metric.
    ///
    /// # Panics
    /// Never in practice: the names are static and registered once per registry.
    #[allow(clippy::expect_used)]
    pub fn new() -> Self {
        let registry = Registry::new();
        let latency = exponential_buckets(0.000_5, 2.5, 14).expect("static buckets");
        let messages = IntCounterVec::new(
            Opts::new(
                "courier_messages_total",
                "Messages finished, by queue and outcome",
            ),
            &["queue", "outcome"],
        )
        .expect("metric");
        let handler_seconds = HistogramVec::new(
            HistogramOpts::new("courier_handler_duration_seconds", "Handler latency")
                .buckets(latency.clone()),
            &["queue"],
        )
        .expect("metric");
        let in_flight = IntGaugeVec::new(
            Opts::new("courier_in_flight", "Messages being handled now"),
            &["queue"],
        )
        .expect("metric");
        let retries = IntCounterVec::new(
            Opts::new(
                "courier_retries_total",
                "Retries published, by queue and tier",
            ),
            &["queue", "tier"],
        )
        .expect("metric");
        let dead_letters = IntCounterVec::new(
            Opts::new(
                "courier_dead_letters_total",
                "Dead letters published, by queue and reason",
            ),
            &["queue", "reason"],
        )
        .expect("metric");
        let reconnects = IntCounterVec::new(
            Opts::new(
                "courier_reconnects_total",
                "Broker reconnections, by connection role",
            ),
            &["connection"],
        )
        .expect("metric");
        let confirm_seconds = HistogramVec::new(
            HistogramOpts::new(
                "courier_publish_confirm_seconds",
                "Publish-to-confirm latency",
            )
            .buckets(latency),
            &["connection"],
        )
        .expect("metric");
        let publish_failures = IntCounterVec::new(
            Opts::new(
                "courier_publish_failures_total",
                "Publishes not confirmed, by kind",
            ),
            &["kind"],
        )
        .expect("metric");
        let consumer_cancels = IntCounterVec::new(
            Opts::new(
                "courier_consumer_cancels_total",
                "Consumers ended by the broker",
            ),
            &["queue"],
        )
        .expect("metric");
        let ready =
            IntGauge::new("courier_ready", "1 while connected and consuming").expect("metric");
        let blocked = IntGauge::new(
            "courier_connection_blocked",
            "1 while the broker blocks publishing",
        )
        .expect("metric");
        for c in [
            Box::new(messages.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(handler_seconds.clone()),
            Box::new(in_flight.clone()),
            Box::new(retries.clone()),
            Box::new(dead_letters.clone()),
            Box::new(reconnects.clone()),
            Box::new(confirm_seconds.clone()),
            Box::new(publish_failures.clone()),
            Box::new(consumer_cancels.clone()),
            Box::new(ready.clone()),
            Box::new(blocked.clone()),
        ] {
            registry.register(c).expect("unique metric names");
        }
        Self {
            registry,
            messages,
            handler_seconds,
            in_flight,
            retries,
            dead_letters,
            reconnects,
            confirm_seconds,
            publish_failures,
            consumer_cancels,
            ready,
            blocked,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Liveness and readiness, shared between the worker and the HTTP endpoints.
#[derive(Clone, Default)]
pub struct Health {
    /// True while connected and consuming.
    ready: Arc<AtomicBool>,
}

impl Health {
    /// Marks the worker ready or not.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// True while connected and consuming.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Metrics,
    health: Health,
}

async fn metrics_handler(State(s): State<AppState>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}

async fn ready_handler(State(s): State<AppState>) -> impl IntoResponse {
    if s.health.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: not connected or not consuming\n",
        )
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until `shutdown` is cancelled.
///
/// # Errors
/// The server's I/O error.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Metrics,
    health: Health,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready_handler))
        .with_state(AppState { metrics, health });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}
