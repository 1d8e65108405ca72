//! Prometheus metrics and the `/metrics`, `/healthz`, `/readyz` endpoints.
//!
//! A private [`prometheus::Registry`] per worker (no globals), so tests and embedders can run
//! several workers in one process.
//!
//! Every labelled family is served from the start with each label set it can take, at 0:
//! Prometheus has no series for a counter never incremented, so `rate(courier_retries_total[5m])`
//! would be empty (and an alert on it silent) until the first retry. [`Metrics::new`] creates
//! the sets that do not depend on a queue, [`Metrics::init_queue`] those of one work queue; the
//! label values come from [`label`], [`crate::outcome::REASONS`] and
//! [`crate::publisher::PublishError::KINDS`], the same constants the code counts with.
//! The rate-limit families ([`crate::ratelimit`]) are labelled by endpoint, which only the caller
//! knows: [`Metrics::init_rate_limit`] creates the series of one endpoint at 0.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus::{
    exponential_buckets, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

/// Label values the worker counts with, so the series created at start are the ones it uses.
pub mod label {
    /// `outcome` of `courier_messages_total`: handler succeeded, acked.
    pub const DELIVERED: &str = "delivered";
    /// `outcome`: copied to a retry tier, acked.
    pub const RETRIED: &str = "retried";
    /// `outcome`: copied to the dead-letter exchange, acked.
    pub const DEAD_LETTERED: &str = "dead-lettered";
    /// `outcome`: a copy was not confirmed, the original went back to the queue.
    pub const REQUEUED: &str = "requeued";
    /// `outcome`: a redelivered message was copied with its redelivery count + 1.
    pub const REDELIVERY_COUNTED: &str = "redelivery-counted";
    /// `outcome`: the channel closed before the ack; the broker delivers the message again.
    pub const ACK_LOST: &str = "ack-lost";
    /// Every `outcome` of `courier_messages_total`.
    pub const OUTCOMES: [&str; 6] = [
        DELIVERED,
        RETRIED,
        DEAD_LETTERED,
        REQUEUED,
        REDELIVERY_COUNTED,
        ACK_LOST,
    ];

    /// `connection` of the consuming connection.
    pub const CONSUMER: &str = "consumer";
    /// `connection` of the publishing connection (retry, dead-letter and reply copies).
    pub const PUBLISHER: &str = "publisher";
    /// Every `connection` of `courier_reconnects_total`.
    pub const CONNECTIONS: [&str; 2] = [CONSUMER, PUBLISHER];
}

/// Every metric the worker exports. Cheap to clone (all fields are shared handles).
#[derive(Clone)]
pub struct Metrics {
    /// The registry `/metrics` renders.
    pub registry: Registry,
    /// Messages finished, by queue and outcome ([`label::OUTCOMES`]).
    pub messages: IntCounterVec,
    /// Handler latency, by queue.
    pub handler_seconds: HistogramVec,
    /// Messages being handled right now, by queue.
    pub in_flight: IntGaugeVec,
    /// Retries published, by queue and tier delay.
    pub retries: IntCounterVec,
    /// Dead letters published, by queue and reason ([`crate::outcome::REASONS`]).
    pub dead_letters: IntCounterVec,
    /// Reconnections, by connection role ([`label::CONNECTIONS`]): for the consumer, every
    /// attempt to connect and subscribe after the first, failed ones included (a missing queue,
    /// a refused login), so a worker that keeps retrying shows a rising count.
    pub reconnects: IntCounterVec,
    /// Time from publish to broker confirm, by connection (always [`label::PUBLISHER`]).
    pub confirm_seconds: HistogramVec,
    /// Publishes that failed, by kind ([`crate::publisher::PublishError::KINDS`]).
    pub publish_failures: IntCounterVec,
    /// Consumers cancelled by the broker or ended without an error, by queue.
    pub consumer_cancels: IntCounterVec,
    /// 1 while connected and consuming.
    pub ready: IntGauge,
    /// 1 while the broker blocks a connection (memory or disk alarm).
    pub blocked: IntGauge,
    /// `courier_broker_node{connection, node}`: 1 for the node each connection is on now
    /// (`host:port` from `AMQP_URL`); see [`Metrics::set_node`].
    pub broker_node: IntGaugeVec,
    /// Seconds each message spent waiting for a rate-limit token, by endpoint (every message
    /// through a limiter, those that got one at once too).
    pub rate_limit_wait_seconds: HistogramVec,
    /// Messages that found no token at once and had to wait, by endpoint.
    pub rate_limit_throttled: IntCounterVec,
    /// Messages that got no token within the longest wait and took the retry path, by endpoint.
    pub rate_limit_gave_up: IntCounterVec,
    /// 1 while a fleet-wide limit runs on this worker's local share because Redis is unreachable.
    pub rate_limit_fallback: IntGaugeVec,
    /// Redis calls of a fleet-wide limit that failed or timed out, by endpoint.
    pub rate_limit_redis_errors: IntCounterVec,
    /// The node each connection role last reported, so the old series goes when it moves.
    nodes: Arc<Mutex<BTreeMap<&'static str, String>>>,
}

/// The rate-limit series of one endpoint, looked up once per limiter.
#[derive(Clone)]
pub struct RateLimitSeries {
    /// `courier_rate_limit_wait_seconds` of the endpoint.
    pub wait_seconds: Histogram,
    /// `courier_rate_limit_throttled_total` of the endpoint.
    pub throttled: IntCounter,
    /// `courier_rate_limit_gave_up_total` of the endpoint.
    pub gave_up: IntCounter,
    /// `courier_rate_limit_fallback` of the endpoint.
    pub fallback: IntGauge,
    /// `courier_rate_limit_redis_errors_total` of the endpoint.
    pub redis_errors: IntCounter,
}

/// The series of one work queue that every message updates, looked up once per worker.
#[derive(Clone)]
pub struct QueueSeries {
    /// `courier_messages_total{outcome="delivered"}` of the queue.
    pub delivered: IntCounter,
    /// `courier_handler_seconds` of the queue.
    pub handler_seconds: Histogram,
    /// `courier_in_flight` of the queue.
    pub in_flight: IntGauge,
}

impl Metrics {
    /// Creates and registers every metric, with the label sets that do not depend on a queue
    /// (connections, publish failure kinds) at 0.
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
        let broker_node = IntGaugeVec::new(
            Opts::new(
                "courier_broker_node",
                "1 for the broker node (host:port) each connection is on",
            ),
            &["connection", "node"],
        )
        .expect("metric");
        let rate_limit_wait_seconds = HistogramVec::new(
            HistogramOpts::new(
                "courier_rate_limit_wait_seconds",
                "Time messages waited for a rate-limit token, by endpoint",
            )
            .buckets(exponential_buckets(0.001, 2.5, 12).expect("static buckets")),
            &["endpoint"],
        )
        .expect("metric");
        let rate_limit_throttled = IntCounterVec::new(
            Opts::new(
                "courier_rate_limit_throttled_total",
                "Messages that had to wait for a rate-limit token, by endpoint",
            ),
            &["endpoint"],
        )
        .expect("metric");
        let rate_limit_gave_up = IntCounterVec::new(
            Opts::new(
                "courier_rate_limit_gave_up_total",
                "Messages that got no rate-limit token within the longest wait (retried), by endpoint",
            ),
            &["endpoint"],
        )
        .expect("metric");
        let rate_limit_fallback = IntGaugeVec::new(
            Opts::new(
                "courier_rate_limit_fallback",
                "1 while a fleet-wide rate limit runs on the local share (Redis unreachable)",
            ),
            &["endpoint"],
        )
        .expect("metric");
        let rate_limit_redis_errors = IntCounterVec::new(
            Opts::new(
                "courier_rate_limit_redis_errors_total",
                "Redis calls of a fleet-wide rate limit that failed or timed out, by endpoint",
            ),
            &["endpoint"],
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
            Box::new(broker_node.clone()),
            Box::new(rate_limit_wait_seconds.clone()),
            Box::new(rate_limit_throttled.clone()),
            Box::new(rate_limit_gave_up.clone()),
            Box::new(rate_limit_fallback.clone()),
            Box::new(rate_limit_redis_errors.clone()),
            // Process-wide (the exporter is one per process), served by every registry.
            Box::new(crate::telemetry::SPANS_DROPPED.clone()),
            Box::new(crate::telemetry::SPANS_EXPORTED.clone()),
            Box::new(crate::telemetry::SPANS_FAILED.clone()),
        ] {
            registry.register(c).expect("unique metric names");
        }
        let metrics = Self {
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
            broker_node,
            rate_limit_wait_seconds,
            rate_limit_throttled,
            rate_limit_gave_up,
            rate_limit_fallback,
            rate_limit_redis_errors,
            nodes: Arc::default(),
        };
        for connection in label::CONNECTIONS {
            metrics.reconnects.with_label_values(&[connection]);
        }
        metrics
            .confirm_seconds
            .with_label_values(&[label::PUBLISHER]);
        for kind in crate::publisher::PublishError::KINDS {
            metrics.publish_failures.with_label_values(&[kind]);
        }
        metrics
    }

    /// Creates every series of work queue `queue` at 0: outcomes, latency, in-flight, retries
    /// for each of `tiers` (the labels of the retry tiers it has a queue for), dead letters for
    /// every reason a worker gives, consumer cancels. Idempotent; [`crate::worker::Worker::new`]
    /// calls it, so `/metrics` shows them before the worker is ready. Returns the series every
    /// message touches, resolved once: a `with_label_values` lookup hashes the labels under a
    /// lock, three times per message otherwise.
    pub fn init_queue(&self, queue: &str, tiers: &[String]) -> QueueSeries {
        for outcome in label::OUTCOMES {
            self.messages.with_label_values(&[queue, outcome]);
        }
        for tier in tiers {
            self.retries.with_label_values(&[queue, tier.as_str()]);
        }
        for reason in crate::outcome::REASONS {
            self.dead_letters
                .with_label_values(&[queue, reason.as_str()]);
        }
        self.consumer_cancels.with_label_values(&[queue]);
        QueueSeries {
            delivered: self.messages.with_label_values(&[queue, label::DELIVERED]),
            handler_seconds: self.handler_seconds.with_label_values(&[queue]),
            in_flight: self.in_flight.with_label_values(&[queue]),
        }
    }

    /// Creates every rate-limit series of `endpoint` at 0 (a label without credentials, e.g.
    /// `host:port`) and returns them resolved. Idempotent; [`crate::ratelimit::RateLimiter::new`]
    /// calls it, so `/metrics` shows them before the first message.
    pub fn init_rate_limit(&self, endpoint: &str) -> RateLimitSeries {
        let labels = &[endpoint];
        RateLimitSeries {
            wait_seconds: self.rate_limit_wait_seconds.with_label_values(labels),
            throttled: self.rate_limit_throttled.with_label_values(labels),
            gave_up: self.rate_limit_gave_up.with_label_values(labels),
            fallback: self.rate_limit_fallback.with_label_values(labels),
            redis_errors: self.rate_limit_redis_errors.with_label_values(labels),
        }
    }

    /// Records that `connection` ([`label::CONNECTIONS`]) is now on `node`: its series reads 1,
    /// and the series of the node it was on before is removed (not left at 1, which would show
    /// a process on two nodes).
    pub fn set_node(&self, connection: &'static str, node: &str) {
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = nodes.insert(connection, node.to_owned()) {
            if old != node {
                let _ = self
                    .broker_node
                    .remove_label_values(&[connection, old.as_str()]);
            }
        }
        self.broker_node
            .with_label_values(&[connection, node])
            .set(1);
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
    /// The broker node (`host:port`) the consumer is on, for `/readyz`.
    node: Arc<Mutex<Option<String>>>,
}

impl Health {
    /// Marks the worker ready or not.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// Records the broker node the consumer is on (or was on last).
    pub fn set_node(&self, node: Option<String>) {
        *self.node.lock().unwrap_or_else(|e| e.into_inner()) = node;
    }

    /// The broker node the consumer is on (or was on last), as `host:port`.
    pub fn node(&self) -> Option<String> {
        self.node.lock().unwrap_or_else(|e| e.into_inner()).clone()
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
    match (s.health.is_ready(), s.health.node()) {
        (true, Some(node)) => (StatusCode::OK, format!("ready: consuming on {node}\n")),
        (true, None) => (StatusCode::OK, "ready\n".to_owned()),
        (false, Some(node)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: not connected or not consuming (last on {node})\n"),
        ),
        (false, None) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: not connected or not consuming\n".to_owned(),
        ),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The series lines of `text` (no `# HELP`/`# TYPE`) whose value is 0.
    fn zero_series(text: &str) -> Vec<&str> {
        text.lines()
            .filter(|l| !l.starts_with('#') && l.ends_with(" 0"))
            .collect()
    }

    #[test]
    fn every_family_is_served_before_anything_happens() {
        let m = Metrics::new();
        m.init_queue("q", &["1s".to_owned(), "10s".to_owned()]);
        let text = m.render();
        let zero = zero_series(&text);
        for want in [
            r#"courier_messages_total{outcome="delivered",queue="q"} 0"#,
            r#"courier_messages_total{outcome="ack-lost",queue="q"} 0"#,
            r#"courier_handler_duration_seconds_count{queue="q"} 0"#,
            r#"courier_in_flight{queue="q"} 0"#,
            r#"courier_retries_total{queue="q",tier="1s"} 0"#,
            r#"courier_retries_total{queue="q",tier="10s"} 0"#,
            r#"courier_dead_letters_total{queue="q",reason="crash-loop"} 0"#,
            r#"courier_reconnects_total{connection="consumer"} 0"#,
            r#"courier_reconnects_total{connection="publisher"} 0"#,
            r#"courier_publish_confirm_seconds_count{connection="publisher"} 0"#,
            r#"courier_publish_failures_total{kind="no-exchange"} 0"#,
            r#"courier_publish_failures_total{kind="connect"} 0"#,
            r#"courier_consumer_cancels_total{queue="q"} 0"#,
            "courier_ready 0",
            "courier_connection_blocked 0",
        ] {
            assert!(zero.contains(&want), "{want} missing:\n{text}");
        }
        let count = |family: &str| zero.iter().filter(|l| l.starts_with(family)).count();
        assert_eq!(count("courier_messages_total{"), label::OUTCOMES.len());
        assert_eq!(
            count("courier_dead_letters_total{"),
            crate::outcome::REASONS.len()
        );
        assert_eq!(
            count("courier_publish_failures_total{"),
            crate::publisher::PublishError::KINDS.len()
        );
    }

    #[test]
    fn rate_limit_series_are_served_at_zero_once_an_endpoint_is_known() {
        let m = Metrics::new();
        assert!(!m.render().contains(r#"endpoint="sms.example:443""#));
        let series = m.init_rate_limit("sms.example:443");
        let text = m.render();
        let zero = zero_series(&text);
        for want in [
            r#"courier_rate_limit_wait_seconds_count{endpoint="sms.example:443"} 0"#,
            r#"courier_rate_limit_throttled_total{endpoint="sms.example:443"} 0"#,
            r#"courier_rate_limit_gave_up_total{endpoint="sms.example:443"} 0"#,
            r#"courier_rate_limit_fallback{endpoint="sms.example:443"} 0"#,
            r#"courier_rate_limit_redis_errors_total{endpoint="sms.example:443"} 0"#,
        ] {
            assert!(zero.contains(&want), "{want} missing:\n{text}");
        }
        series.throttled.inc();
        m.init_rate_limit("sms.example:443");
        assert_eq!(series.throttled.get(), 1, "init is idempotent");
    }

    #[test]
    fn init_queue_is_idempotent_and_keeps_counts() {
        let m = Metrics::new();
        m.init_queue("q", &["1s".to_owned()]);
        m.messages.with_label_values(&["q", label::DELIVERED]).inc();
        m.init_queue("q", &["1s".to_owned()]);
        assert_eq!(
            m.messages.with_label_values(&["q", label::DELIVERED]).get(),
            1
        );
    }
}
