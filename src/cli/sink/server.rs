//! The sink's HTTP server, one component for `courier sink` and `courier demo`:
//! `POST /deliver` answers by the [`Rules`], `GET /metrics` counts answers by status,
//! `GET /healthz` answers `200`.
//!
//! Built with [`Sink::builder`]: the rules, a latency before every answer, the address, and
//! whether to count per message id. `courier sink` is long-lived and must keep memory flat, so
//! it counts only by status; `courier demo` turns counting on to tell delivered, duplicated and
//! lost messages apart in its summary.

use super::rules::{decide, Rules};
use anyhow::Context;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use courier::handler::http::{IDEMPOTENCY_KEY, X_COURIER_ATTEMPT};
use prometheus::{Encoder, IntCounterVec, Opts, Registry, TextEncoder};
use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long [`Sink::stop`] waits for in-flight requests.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// What the sink has answered, summed as requests arrive, so reads are O(1) at any volume.
/// Only kept when counting is on (see [`SinkBuilder::counting`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SinkCounts {
    /// Distinct ids the sink has heard of.
    pub ids: u64,
    /// Distinct ids answered 2xx.
    pub delivered: u64,
    /// Ids whose first 2xx answered attempt 1.
    pub first_try: u64,
    /// Ids whose first 2xx answered a later attempt.
    pub after_retry: u64,
    /// 2xx answers beyond the first for an id.
    pub duplicates: u64,
    /// Requests with an idempotency key.
    pub requests: u64,
}

/// What the sink saw for one message id.
#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    requests: u32,
    successes: u32,
}

/// Per-id counts, for a sink that must find duplicates and losses.
#[derive(Debug, Default)]
struct Ledger {
    by_id: HashMap<String, Seen>,
    totals: SinkCounts,
}

impl Ledger {
    /// Records one answered request for `key`, attempt `attempt`.
    fn record(&mut self, key: &str, attempt: u32, success: bool) {
        let Self { by_id, totals } = self;
        let seen = by_id.entry(key.to_owned()).or_default();
        if seen.requests == 0 {
            totals.ids += 1;
        }
        seen.requests += 1;
        totals.requests += 1;
        if success {
            seen.successes += 1;
            match (seen.successes, attempt) {
                (1, 1) => totals.first_try += 1,
                (1, _) => totals.after_retry += 1,
                _ => totals.duplicates += 1,
            }
            if seen.successes == 1 {
                totals.delivered += 1;
            }
        }
    }
}

/// The sink's own metrics, in a private registry.
#[derive(Clone)]
struct SinkMetrics {
    registry: Registry,
    requests: IntCounterVec,
}

impl SinkMetrics {
    fn new() -> anyhow::Result<Self> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "courier_sink_requests_total",
                "Requests to /deliver answered by the sink, by HTTP status",
            ),
            &["status"],
        )
        .context("cannot create the sink's request counter")?;
        registry
            .register(Box::new(requests.clone()))
            .context("cannot register the sink's request counter")?;
        // Show the usual statuses at 0 from the start, so rate() works from the first scrape.
        for status in ["200", "400", "503"] {
            requests.with_label_values(&[status]);
        }
        Ok(Self { registry, requests })
    }

    fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Shared by every request.
struct SinkState {
    /// Which messages fail, and how.
    rules: Rules,
    /// Delay before every answer to /deliver.
    latency: Duration,
    /// Answers by status, for /metrics.
    metrics: SinkMetrics,
    /// Per-id counts, when counting is on.
    ledger: Option<Mutex<Ledger>>,
}

impl SinkState {
    fn ledger(&self) -> Option<MutexGuard<'_, Ledger>> {
        // A panic while holding the lock cannot leave the counts inconsistent (plain increments).
        self.ledger
            .as_ref()
            .map(|l| l.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// How to build a [`Sink`]; [`Sink::builder`] gives one that listens on 127.0.0.1, a free
/// port, fails nothing, answers at once and counts only by status.
#[derive(Debug, Clone)]
pub struct SinkBuilder {
    addr: SocketAddr,
    rules: Rules,
    latency: Duration,
    counting: bool,
}

impl SinkBuilder {
    /// Where to listen (port 0: a free one).
    pub fn addr(mut self, addr: SocketAddr) -> Self {
        self.addr = addr;
        self
    }

    /// Which messages fail on purpose, and how.
    pub fn rules(mut self, rules: Rules) -> Self {
        self.rules = rules;
        self
    }

    /// Delay before every answer to /deliver, to imitate a provider's latency.
    pub fn latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    /// Whether to count per message id ([`Sink::counts`], [`Sink::delivered_ids`]); memory
    /// then grows with the number of distinct ids, so only for bounded runs.
    pub fn counting(mut self, counting: bool) -> Self {
        self.counting = counting;
        self
    }

    /// Binds the address and serves in a background task until `shutdown` is cancelled (or
    /// [`Sink::stop`] is called).
    ///
    /// # Errors
    /// When the address cannot be bound or the metrics cannot be set up.
    pub async fn start(self, shutdown: CancellationToken) -> anyhow::Result<Sink> {
        let state = Arc::new(SinkState {
            rules: self.rules,
            latency: self.latency,
            metrics: SinkMetrics::new()?,
            ledger: self.counting.then(|| Mutex::new(Ledger::default())),
        });
        let listener = tokio::net::TcpListener::bind(self.addr).await?;
        let addr = listener
            .local_addr()
            .context("the sink's listener has no address")?;
        let app = router(state.clone());
        let stop = shutdown.clone();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
        });
        Ok(Sink {
            addr,
            state,
            shutdown,
            task,
        })
    }
}

/// A running sink. Dropping it leaves the server running until its shutdown token is cancelled.
pub struct Sink {
    /// Where it listens.
    addr: SocketAddr,
    /// Rules, metrics and counts, shared with the request handlers.
    state: Arc<SinkState>,
    /// Cancelled to stop the server gracefully.
    shutdown: CancellationToken,
    /// The server; ends once `shutdown` is cancelled and in-flight requests are answered.
    task: JoinHandle<std::io::Result<()>>,
}

impl Sink {
    /// A builder with the defaults: 127.0.0.1 on a free port, no failures, no latency, no
    /// per-id counting.
    pub fn builder() -> SinkBuilder {
        SinkBuilder {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            rules: Rules::default(),
            latency: Duration::ZERO,
            counting: false,
        }
    }

    /// The address it listens on (the real port when built with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL workers POST to: `http://<addr>/deliver`.
    pub fn deliver_url(&self) -> String {
        format!("http://{}/deliver", self.addr)
    }

    /// What it answered so far; all zero unless counting is on.
    pub fn counts(&self) -> SinkCounts {
        self.state.ledger().map(|l| l.totals).unwrap_or_default()
    }

    /// The ids answered 2xx at least once; empty unless counting is on.
    pub fn delivered_ids(&self) -> HashSet<String> {
        self.state
            .ledger()
            .map(|l| {
                l.by_id
                    .iter()
                    .filter(|(_, s)| s.successes > 0)
                    .map(|(id, _)| id.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Stops accepting requests and waits (a few seconds at most) for those in flight.
    pub async fn stop(self) {
        self.shutdown.cancel();
        match tokio::time::timeout(STOP_TIMEOUT, self.task).await {
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "the sink's HTTP server failed"),
            Ok(Err(e)) => tracing::warn!(error = %e, "the sink's HTTP server task failed"),
            Ok(Ok(Ok(()))) | Err(_) => {}
        }
    }

    /// Serves until the shutdown token given to [`SinkBuilder::start`] is cancelled and the
    /// requests in flight are answered.
    ///
    /// # Errors
    /// When the server fails (or its task panics).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task
            .await
            .context("the sink's server task failed")?
            .context("the sink's HTTP server failed")
    }
}

async fn deliver(
    State(state): State<Arc<SinkState>>,
    headers: HeaderMap,
    _body: Bytes,
) -> Response {
    // The body is read (and dropped) so the connection can be reused.
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let key = header(IDEMPOTENCY_KEY);
    let attempt = header(X_COURIER_ATTEMPT).and_then(|v| v.trim().parse::<u32>().ok());
    let answer = decide(&state.rules, key, attempt);
    if !state.latency.is_zero() {
        tokio::time::sleep(state.latency).await;
    }
    if let (Some(mut ledger), Some(key)) = (state.ledger(), key.filter(|k| !k.is_empty())) {
        ledger.record(key, attempt.unwrap_or(1), answer.is_success());
    }
    state
        .metrics
        .requests
        .with_label_values(&[answer.status.to_string().as_str()])
        .inc();
    tracing::debug!(
        key = key.unwrap_or_default(),
        attempt = attempt.unwrap_or(0),
        status = answer.status,
        "sink request"
    );
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, answer.body).into_response();
    if let Some(after) = answer.retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static(after));
    }
    response
}

async fn metrics(State(state): State<Arc<SinkState>>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

/// The sink's routes.
fn router(state: Arc<SinkState>) -> Router {
    Router::new()
        .route("/deliver", post(deliver))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_count_by_status_and_start_at_zero() {
        let m = SinkMetrics::new().unwrap_or_else(|e| panic!("{e}"));
        let text = m.render();
        assert!(
            text.contains("courier_sink_requests_total{status=\"503\"} 0"),
            "{text}"
        );
        m.requests.with_label_values(&["200"]).inc();
        assert!(m
            .render()
            .contains("courier_sink_requests_total{status=\"200\"} 1"));
    }

    #[test]
    fn ledger_tells_first_tries_retries_and_duplicates_apart() {
        let mut l = Ledger::default();
        l.record("a", 1, true);
        l.record("b", 1, false);
        l.record("b", 2, true);
        l.record("c", 1, false);
        l.record("a", 1, true);
        assert_eq!(
            l.totals,
            SinkCounts {
                ids: 3,
                delivered: 2,
                first_try: 1,
                after_retry: 1,
                duplicates: 1,
                requests: 5,
            }
        );
    }

    #[tokio::test]
    async fn counts_only_when_asked_and_stops() {
        let quiet = Sink::builder()
            .start(CancellationToken::new())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(quiet.counts(), SinkCounts::default());
        assert!(quiet.delivered_ids().is_empty());
        assert!(quiet.deliver_url().ends_with("/deliver"));
        assert_ne!(quiet.addr().port(), 0);
        quiet.stop().await;
    }
}
