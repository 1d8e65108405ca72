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
//!
//! The same component serves `courier demo` (with per-id counting and more failure kinds):
//! [`rules`] decides every answer, [`server`] is the HTTP endpoint built with [`Sink::builder`].

mod rules;
mod server;

pub use rules::{answer, parse_percent, Fate, Rules};
pub use server::{Sink, SinkCounts};

use anyhow::Context;
use clap::Args;
use std::net::SocketAddr;
use std::process::ExitCode;
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

/// The shares of `--fail-transient` and `--fail-permanent`.
fn rules(args: &SinkArgs) -> anyhow::Result<Rules> {
    Rules::new(args.fail_transient, args.fail_permanent, 0.0).ok_or_else(|| {
        anyhow::anyhow!(
            "--fail-transient {} + --fail-permanent {} add up to more than 100 %",
            args.fail_transient,
            args.fail_permanent
        )
    })
}

/// `courier sink`: serve until SIGTERM or Ctrl-C.
pub async fn run(args: SinkArgs) -> anyhow::Result<ExitCode> {
    let rules = rules(&args)?;
    let shutdown = CancellationToken::new();
    courier::shutdown::cancel_on_signal(shutdown.clone());
    let sink = Sink::builder()
        .addr(args.addr)
        .rules(rules)
        .latency(args.latency)
        .start(shutdown)
        .await
        .with_context(|| format!("cannot listen on --addr {}", args.addr))?;
    tracing::info!(
        addr = %sink.addr(),
        fail_transient = args.fail_transient,
        fail_permanent = args.fail_permanent,
        latency = ?args.latency,
        "courier sink: POST /deliver, GET /metrics, GET /healthz"
    );
    sink.wait().await?;
    tracing::info!("courier sink stopped");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(transient: f64, permanent: f64) -> SinkArgs {
        SinkArgs {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            fail_transient: transient,
            fail_permanent: permanent,
            latency: Duration::ZERO,
        }
    }

    #[test]
    fn shares_over_100_percent_are_refused() {
        let e = rules(&args(60.0, 50.0))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("more than 100"), "{e}");
        assert!(
            e.contains("--fail-transient 60 + --fail-permanent 50"),
            "{e}"
        );
        assert!(rules(&args(50.0, 50.0)).is_ok());
    }
}
