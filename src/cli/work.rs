//! `courier work`: run a worker on one queue.

use super::GlobalArgs;
use anyhow::{anyhow, bail, Context};
use clap::{Args, ValueEnum};
use courier::handler::http::{HttpConfig, HttpHandler};
use courier::handler::{Handler, NoopHandler};
use courier::metrics::{Health, Metrics};
use courier::worker::{Worker, WorkerConfig, WorkerSettings};
use std::process::ExitCode;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Consume one work queue and deliver each message through a handler.
///
/// Outcome rules, per message:
///   success (HTTP 2xx)                      → ack
///   retryable failure (timeout, connection error, 408, 429, 5xx, handler panic)
///                                           → copy to the next retry tier with x-courier-attempts+1,
///                                             wait for the broker's confirm, then ack; a Retry-After
///                                             picks a tier at least that long
///   permanent failure (other 4xx)           → dead-letter queue, reason `permanent`
///   retryable but max_attempts reached      → dead-letter queue, reason `max-attempts`
///   body not JSON, or no message_id         → dead-letter queue, reason `malformed`
///   redelivered more than --max-redeliveries times (worker crashes) → reason `crash-loop`
/// A copy that the broker does not confirm is never acked: the original goes back to the queue.
/// Run as many workers as you like on the same queue: they compete, each message goes to one.
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct WorkArgs {
    /// Work queue to consume, as named in the topology file (the --prefix is added).
    #[arg(long, env = "COURIER_QUEUE")]
    queue: String,
    /// What to do with each message.
    #[arg(long, env = "COURIER_HANDLER", value_enum, default_value_t = HandlerKind::Http)]
    handler: HandlerKind,
    /// With --handler http: the URL every message is POSTed to. Only this URL is ever called;
    /// nothing in a message can redirect a request.
    #[arg(long, env = "COURIER_ENDPOINT")]
    endpoint: Option<String>,
    /// With --handler http: extra request header `Name: value` (repeatable), e.g. an
    /// Authorization token. Values are never logged.
    #[arg(
        long = "http-header",
        env = "COURIER_HTTP_HEADERS",
        value_delimiter = ',',
        value_name = "NAME=VALUE"
    )]
    http_headers: Vec<String>,
    /// Messages handled at once by this process.
    #[arg(long, env = "COURIER_CONCURRENCY", default_value_t = 64)]
    concurrency: usize,
    /// Unacknowledged messages the broker sends ahead (per consumer). Bounds memory: at most
    /// this many messages are held. Keep it ≥ --concurrency; 2-4× is a good start.
    #[arg(long, env = "COURIER_PREFETCH", default_value_t = 200)]
    prefetch: u16,
    /// Deadline of one handler attempt (HTTP request included); a timeout is retryable. Keep
    /// it well below RabbitMQ's consumer_timeout (30 min by default).
    #[arg(long, env = "COURIER_HANDLER_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    handler_timeout: Duration,
    /// On SIGTERM/SIGINT: how long in-flight messages may finish before the worker exits anyway
    /// (unfinished ones return to the queue). Give the orchestrator a longer grace period.
    #[arg(long, env = "COURIER_SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    shutdown_timeout: Duration,
    /// Times a message may come back `redelivered` (its worker crashed or lost the connection
    /// while holding it) before it is dead-lettered as `crash-loop`. 0 disables the count.
    #[arg(long, env = "COURIER_MAX_REDELIVERIES", default_value_t = 5)]
    max_redeliveries: u32,
    /// Deadline for the broker's confirm of a retry or dead-letter copy.
    #[arg(long, env = "COURIER_CONFIRM_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    confirm_timeout: Duration,
    /// Serve /metrics (Prometheus), /healthz and /readyz on this address, e.g. 0.0.0.0:9090.
    #[arg(long, env = "COURIER_METRICS_ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum HandlerKind {
    /// POST the body to --endpoint (Idempotency-Key = message_id).
    Http,
    /// Succeed at once (benchmarks, smoke tests).
    Noop,
}

pub async fn run(global: &GlobalArgs, args: WorkArgs) -> anyhow::Result<ExitCode> {
    let topology = global.load_topology()?;
    let url = global.amqp_url()?;
    let queue = if topology.work_queue(&args.queue).is_some() {
        args.queue.clone()
    } else {
        format!("{}{}", topology.prefix, args.queue)
    };
    let config = WorkerSettings {
        prefetch: args.prefetch,
        concurrency: args.concurrency,
        handler_timeout: args.handler_timeout,
        shutdown_timeout: args.shutdown_timeout,
        max_redeliveries: args.max_redeliveries,
        confirm_timeout: args.confirm_timeout,
        ..WorkerSettings::new(queue)
    }
    .build()
    // Every setting given here is an option of the same name.
    .map_err(|e| anyhow!("--{} {}: {}", e.field.replace('_', "-"), e.value, e.why))?;
    if usize::from(args.prefetch) < args.concurrency {
        tracing::warn!(
            prefetch = args.prefetch,
            concurrency = args.concurrency,
            "prefetch below concurrency: only {} handlers can ever be busy",
            args.prefetch
        );
    }
    match args.handler {
        HandlerKind::Noop => serve(url, &topology, config, NoopHandler, args.metrics_addr).await,
        HandlerKind::Http => {
            let Some(endpoint) = args.endpoint else {
                bail!("--handler http needs --endpoint URL (or COURIER_ENDPOINT)");
            };
            let mut headers = Vec::new();
            for h in &args.http_headers {
                let Some((k, v)) = h.split_once('=') else {
                    bail!(
                        "--http-header {:?}: expected NAME=VALUE",
                        h.split('=').next().unwrap_or_default()
                    );
                };
                headers.push((k.trim().to_owned(), v.to_owned()));
            }
            let handler = HttpHandler::new(HttpConfig {
                endpoint,
                timeout: args.handler_timeout,
                headers,
                ..HttpConfig::new("")
            })?;
            serve(url, &topology, config, handler, args.metrics_addr).await
        }
    }
}

async fn serve<H: Handler>(
    url: courier::amqp::AmqpUrl,
    topology: &courier::topology::Topology,
    config: WorkerConfig,
    handler: H,
    metrics_addr: Option<std::net::SocketAddr>,
) -> anyhow::Result<ExitCode> {
    let metrics = Metrics::new();
    let health = Health::default();
    let shutdown = CancellationToken::new();
    courier::shutdown::cancel_on_signal(shutdown.clone());
    let worker = Worker::new(
        url,
        topology,
        config,
        handler,
        metrics.clone(),
        health.clone(),
    )?;
    let server = match metrics_addr {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on --metrics-addr {addr}"))?;
            tracing::info!(addr = %listener.local_addr()?, "serving /metrics, /healthz, /readyz");
            let token = shutdown.clone();
            Some(tokio::spawn(courier::metrics::serve(
                listener, metrics, health, token,
            )))
        }
        None => None,
    };
    worker.run(shutdown.clone()).await;
    shutdown.cancel();
    if let Some(s) = server {
        let _ = s.await;
    }
    Ok(ExitCode::SUCCESS)
}
