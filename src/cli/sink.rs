//! `courier sink`: a small HTTP endpoint that stands in for a delivery provider.
//!
//! It exists for demos, the compose stack and load tests: workers POST to it like to a real
//! provider, and it answers `200`, or fails a chosen share of messages on purpose so that retries
//! and dead letters can be watched on the dashboards. The share is picked by hashing the
//! `Idempotency-Key` (the `message_id`), so the fate of every message is known in advance and
//! does not depend on which sink replica or worker handles it:
//!
//! * `--fail-transient PCT`: the first attempt gets `503`, later ones `200` (delivered after a
//!   retry);
//! * `--fail-permanent PCT`: every attempt gets `400` (dead-lettered as `permanent`);
//! * everything else: `200`.
//!
//! The attempt number comes from the `X-Courier-Attempt` header that every worker sends; the sink
//! keeps no per-message state, so its memory stays flat whatever the traffic. A request without
//! `Idempotency-Key` gets `400`. `/metrics` serves `courier_sink_requests_total{status}` from a
//! private registry, `/healthz` answers `200` while the process runs.

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use clap::Args;
use prometheus::{Encoder, IntCounterVec, Opts, Registry, TextEncoder};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Run a stand-in delivery endpoint for demos, the compose stack and load tests.
///
/// Serves:
///   POST /deliver   200, or a deliberate failure decided by a hash of Idempotency-Key:
///                     --fail-transient %   first attempt 503, then 200 → delivered after a retry
///                     --fail-permanent %   always 400                  → dead-lettered `permanent`
///                   The attempt number is read from X-Courier-Attempt (sent by every worker);
///                   without it every request counts as a first attempt.
///   GET  /metrics   courier_sink_requests_total{status} (Prometheus text format)
///   GET  /healthz   200 while the process runs
/// Each request is logged at debug level (RUST_LOG=courier=debug); bodies are never logged.
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct SinkArgs {
    /// Address to listen on, e.g. 0.0.0.0:8080 inside a container.
    #[arg(long, env = "COURIER_SINK_ADDR", default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Percent of messages whose first attempt is answered 503 (delivered on the retry).
    #[arg(long, env = "COURIER_SINK_FAIL_TRANSIENT", value_name = "PCT", default_value_t = 0.0, value_parser = parse_percent)]
    fail_transient: f64,
    /// Percent of messages answered 400 on every attempt (dead-lettered as `permanent`).
    #[arg(long, env = "COURIER_SINK_FAIL_PERMANENT", value_name = "PCT", default_value_t = 0.0, value_parser = parse_percent)]
    fail_permanent: f64,
    /// Delay before every answer to /deliver, to imitate a provider's latency (e.g. 5ms).
    #[arg(long, env = "COURIER_SINK_LATENCY", default_value = "0s", value_parser = humantime::parse_duration)]
    latency: Duration,
}

fn parse_percent(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("{s:?} is not a number"))?;
    if !(0.0..=100.0).contains(&v) {
        return Err(format!("{v} is not a percentage between 0 and 100"));
    }
    Ok(v)
}

/// The shares of deliberate failures, in basis points (1/100 of a percent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    transient_bp: u32,
    permanent_bp: u32,
}

/// What the sink does with every attempt of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// `200` at once.
    Deliver,
    /// `503` on the first attempt, `200` afterwards.
    Transient,
    /// `400` on every attempt.
    Permanent,
}

/// One answer of the sink: status and a short body for whoever reads the worker's error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The response body.
    pub body: &'static str,
}

impl Rules {
    /// Rules from percentages (each 0–100, as `parse_percent` guarantees); their sum may not
    /// exceed 100.
    ///
    /// # Errors
    /// A message naming both options when the shares add up to more than 100 %.
    pub fn new(transient_pct: f64, permanent_pct: f64) -> Result<Self, String> {
        // Both are in 0..=100, so the basis points fit in a u32 without loss of meaning.
        let bp = |pct: f64| (pct.clamp(0.0, 100.0) * 100.0).round() as u32;
        let (transient_bp, permanent_bp) = (bp(transient_pct), bp(permanent_pct));
        if transient_bp + permanent_bp > 10_000 {
            return Err(format!(
                "--fail-transient {transient_pct} + --fail-permanent {permanent_pct} add up to more than 100 %"
            ));
        }
        Ok(Self {
            transient_bp,
            permanent_bp,
        })
    }

    /// The fate of the message with this idempotency key: a stable function of the key.
    pub fn fate(&self, key: &str) -> Fate {
        let b = bucket(key);
        if b < self.permanent_bp {
            Fate::Permanent
        } else if b < self.permanent_bp + self.transient_bp {
            Fate::Transient
        } else {
            Fate::Deliver
        }
    }
}

/// 0..10_000, uniform over keys: FNV-1a, then a SplitMix64 finaliser, because FNV alone spreads
/// sequential ids (`job-1`, `job-2`, ...) poorly over the low digits. The same function as the
/// demo's sink, so a key has the same fate in both for the same shares.
pub(crate) fn bucket(key: &str) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    // The remainder is below 10_000, so it fits.
    (h % 10_000) as u32
}

/// The answer to one request: the whole decision, pure, so it is tested without a server.
///
/// `key` is the `Idempotency-Key` header (None when absent or empty), `attempt` the 1-based
/// `X-Courier-Attempt` (None when absent or unreadable: then it is taken as the first attempt).
pub fn decide(rules: &Rules, key: Option<&str>, attempt: Option<u32>) -> Answer {
    let Some(key) = key.filter(|k| !k.is_empty()) else {
        return Answer {
            status: 400,
            body: "courier sink: no Idempotency-Key header\n",
        };
    };
    let first = attempt.unwrap_or(1) <= 1;
    match rules.fate(key) {
        Fate::Deliver => DELIVERED,
        Fate::Transient if !first => DELIVERED,
        Fate::Transient => Answer {
            status: 503,
            body: "courier sink: provider briefly unavailable (first attempt fails on purpose)\n",
        },
        Fate::Permanent => Answer {
            status: 400,
            body: "courier sink: invalid recipient (every attempt fails on purpose)\n",
        },
    }
}

const DELIVERED: Answer = Answer {
    status: 200,
    body: "delivered\n",
};

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

struct SinkState {
    rules: Rules,
    latency: Duration,
    metrics: SinkMetrics,
}

async fn deliver(
    State(state): State<Arc<SinkState>>,
    headers: HeaderMap,
    _body: Bytes,
) -> impl IntoResponse {
    // The body is read (and dropped) so the connection can be reused.
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let key = header("idempotency-key");
    let attempt = header("x-courier-attempt").and_then(|v| v.trim().parse::<u32>().ok());
    let answer = decide(&state.rules, key, attempt);
    if !state.latency.is_zero() {
        tokio::time::sleep(state.latency).await;
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
    (status, answer.body)
}

async fn metrics(State(state): State<Arc<SinkState>>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

/// The sink's routes, for `serve` and the tests.
fn router(state: Arc<SinkState>) -> Router {
    Router::new()
        .route("/deliver", post(deliver))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(state)
}

pub async fn run(args: SinkArgs) -> anyhow::Result<ExitCode> {
    let rules =
        Rules::new(args.fail_transient, args.fail_permanent).map_err(|e| anyhow::anyhow!(e))?;
    let state = Arc::new(SinkState {
        rules,
        latency: args.latency,
        metrics: SinkMetrics::new()?,
    });
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("cannot listen on --addr {}", args.addr))?;
    let addr = listener
        .local_addr()
        .context("the sink's listener has no address")?;
    tracing::info!(
        %addr,
        fail_transient = args.fail_transient,
        fail_permanent = args.fail_permanent,
        latency = ?args.latency,
        "courier sink: POST /deliver, GET /metrics, GET /healthz"
    );
    let shutdown = CancellationToken::new();
    courier::shutdown::cancel_on_signal(shutdown.clone());
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .context("the sink's HTTP server failed")?;
    tracing::info!("courier sink stopped");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(transient: f64, permanent: f64) -> Rules {
        Rules::new(transient, permanent).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The first key, among `job-0`, `job-1`, ..., with this fate.
    fn key_with(r: &Rules, fate: Fate) -> String {
        (0..100_000)
            .map(|i| format!("job-{i}"))
            .find(|k| r.fate(k) == fate)
            .unwrap_or_else(|| panic!("no key with fate {fate:?}"))
    }

    #[test]
    fn no_failures_by_default_means_200_for_every_key() {
        let r = rules(0.0, 0.0);
        for i in 0..1_000 {
            let key = format!("job-{i}");
            assert_eq!(decide(&r, Some(&key), Some(1)).status, 200);
        }
    }

    #[test]
    fn transient_fails_the_first_attempt_only() {
        let r = rules(30.0, 10.0);
        let key = key_with(&r, Fate::Transient);
        assert_eq!(decide(&r, Some(&key), Some(1)).status, 503);
        assert_eq!(
            decide(&r, Some(&key), None).status,
            503,
            "no header = first"
        );
        assert_eq!(decide(&r, Some(&key), Some(2)).status, 200);
        assert_eq!(decide(&r, Some(&key), Some(7)).status, 200);
    }

    #[test]
    fn permanent_fails_every_attempt() {
        let r = rules(30.0, 10.0);
        let key = key_with(&r, Fate::Permanent);
        for attempt in 1..=6 {
            assert_eq!(decide(&r, Some(&key), Some(attempt)).status, 400);
        }
    }

    #[test]
    fn missing_or_empty_key_is_400() {
        let r = rules(0.0, 0.0);
        assert_eq!(decide(&r, None, Some(1)).status, 400);
        assert_eq!(decide(&r, Some(""), Some(1)).status, 400);
        assert!(decide(&r, None, None).body.contains("Idempotency-Key"));
    }

    #[test]
    fn fates_are_stable_and_close_to_the_shares() {
        let r = rules(15.0, 5.0);
        let n = 20_000;
        let (mut transient, mut permanent) = (0, 0);
        for i in 0..n {
            let key = format!("m-{i}");
            let fate = r.fate(&key);
            assert_eq!(fate, r.fate(&key), "same key, same fate");
            match fate {
                Fate::Transient => transient += 1,
                Fate::Permanent => permanent += 1,
                Fate::Deliver => {}
            }
        }
        // 15 % and 5 % of 20 000, within 1 percentage point.
        assert!((2_800..=3_200).contains(&transient), "{transient}");
        assert!((800..=1_200).contains(&permanent), "{permanent}");
    }

    #[test]
    fn full_shares_leave_nothing_to_chance() {
        let all_permanent = rules(0.0, 100.0);
        let all_transient = rules(100.0, 0.0);
        for i in 0..500 {
            let key = format!("k{i}");
            assert_eq!(all_permanent.fate(&key), Fate::Permanent);
            assert_eq!(all_transient.fate(&key), Fate::Transient);
        }
    }

    #[test]
    fn shares_over_100_percent_are_refused() {
        let e = Rules::new(60.0, 50.0).err().unwrap_or_default();
        assert!(e.contains("more than 100"), "{e}");
        assert!(Rules::new(50.0, 50.0).is_ok());
    }

    #[test]
    fn percentages_parse_with_or_without_a_sign() {
        assert_eq!(parse_percent("12.5"), Ok(12.5));
        assert_eq!(parse_percent("3%"), Ok(3.0));
        assert!(parse_percent("101").is_err());
        assert!(parse_percent("-1").is_err());
        assert!(parse_percent("lots").is_err());
    }

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
}
