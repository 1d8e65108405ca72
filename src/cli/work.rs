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
    /// With --handler http: an extra request header NAME=VALUE, e.g.
    /// `Authorization=Bearer ...`. One header per --http-header (repeat it for more); the value
    /// is taken whole, commas and semicolons included. Without the flag, COURIER_HTTP_HEADERS
    /// is read instead: one NAME=VALUE per line (newline-separated, as a header value can never
    /// hold a newline). Values are never logged.
    #[arg(long = "http-header", value_name = "NAME=VALUE")]
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
            let headers = http_headers(&args.http_headers, headers_env()?.as_deref())?;
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

/// The environment variable `--http-header` falls back to. Not clap's `env`: clap would give
/// its whole value as one header, and a delimiter set for clap would split the flag too.
const HTTP_HEADERS_ENV: &str = "COURIER_HTTP_HEADERS";

/// The value of [`HTTP_HEADERS_ENV`], if set.
fn headers_env() -> anyhow::Result<Option<String>> {
    match std::env::var_os(HTTP_HEADERS_ENV) {
        None => Ok(None),
        Some(v) => v
            .into_string()
            .map(Some)
            .map_err(|_| anyhow!("{HTTP_HEADERS_ENV} is not valid UTF-8")),
    }
}

/// The extra headers of the `http` handler: each `--http-header` is one header, never split
/// (values may hold commas, e.g. `Accept=a, b`); without any, each non-empty line of
/// `from_env` (COURIER_HTTP_HEADERS) is one. Values are never shown in errors or logs.
fn http_headers(flags: &[String], from_env: Option<&str>) -> anyhow::Result<Vec<(String, String)>> {
    let given: Vec<(String, &str)> = if flags.is_empty() {
        from_env
            .unwrap_or_default()
            .lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(i, line)| (format!("{HTTP_HEADERS_ENV} line {}", i + 1), line))
            .collect()
    } else {
        flags
            .iter()
            .enumerate()
            .map(|(i, h)| (format!("--http-header #{}", i + 1), h.as_str()))
            .collect()
    };
    let mut headers = Vec::with_capacity(given.len());
    for (what, text) in given {
        let Some((name, value)) = text.split_once('=') else {
            bail!("{what}: expected NAME=VALUE, e.g. Authorization=Bearer ... (no '=' found; the text is not shown, as it may hold a secret)");
        };
        let name = name.trim();
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            // The text before '=' may be a whole `Name: secret` line: never echo it.
            bail!("{what}: expected NAME=VALUE with a header name before the first '=' (letters, digits, '-'; the text is not shown, as it may hold a secret)");
        }
        if looks_like_two_headers(value) {
            tracing::warn!(
                header = name,
                "the value of this header contains \",NAME=\": headers are not split on commas; if you meant two, give each its own --http-header or its own line of {HTTP_HEADERS_ENV}"
            );
        }
        headers.push((name.to_owned(), value.to_owned()));
    }
    Ok(headers)
}

/// A byte of an HTTP header name (an RFC 9110 token).
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// True when `value` has a comma followed by something like `Name=`: probably two headers
/// written the old, comma-separated way.
fn looks_like_two_headers(value: &str) -> bool {
    value.split(',').skip(1).any(|rest| {
        rest.trim_start()
            .split_once('=')
            .is_some_and(|(name, _)| !name.is_empty() && name.bytes().all(is_token_byte))
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn each_flag_is_one_header_commas_and_semicolons_included() {
        let flags = vec![
            "Accept=text/plain, application/json".to_owned(),
            "Cookie=a=1; b=2".to_owned(),
            " X-Empty =".to_owned(),
        ];
        let got = http_headers(&flags, Some("Ignored=when flags are given")).expect("valid");
        assert_eq!(
            got,
            pairs(&[
                ("Accept", "text/plain, application/json"),
                ("Cookie", "a=1; b=2"),
                ("X-Empty", ""),
            ])
        );
    }

    #[test]
    fn the_environment_variable_has_one_header_per_line() {
        let env = "Authorization=Bearer a,b;c==\r\n\nX-Tenant=acme, inc\n";
        let got = http_headers(&[], Some(env)).expect("valid");
        assert_eq!(
            got,
            pairs(&[
                ("Authorization", "Bearer a,b;c=="),
                ("X-Tenant", "acme, inc"),
            ])
        );
        assert!(http_headers(&[], None).expect("none").is_empty());
        assert!(http_headers(&[], Some("\n \n")).expect("blank").is_empty());
    }

    #[test]
    fn a_malformed_header_is_refused_without_echoing_it() {
        for (flags, env, what) in [
            (
                vec!["Authorization: Bearer s3cret".to_owned()],
                None,
                "--http-header #1",
            ),
            (
                vec![
                    "A=1".to_owned(),
                    "Authorization: Bearer s3cret==".to_owned(),
                ],
                None,
                "--http-header #2",
            ),
            (
                vec![],
                Some("A=1\nAuthorization: Bearer s3cret"),
                "COURIER_HTTP_HEADERS line 2",
            ),
            (vec!["=s3cret".to_owned()], None, "--http-header #1"),
        ] {
            let err = http_headers(&flags, env)
                .expect_err("malformed")
                .to_string();
            assert!(err.contains(what), "{err}");
            assert!(err.contains("NAME=VALUE"), "{err}");
            assert!(!err.contains("s3cret"), "secret echoed: {err}");
        }
    }

    #[test]
    fn old_comma_separated_lists_are_recognised() {
        assert!(looks_like_two_headers("Bearer x,X-Tenant=acme"));
        assert!(looks_like_two_headers("1, B=2"));
        assert!(!looks_like_two_headers("text/plain, application/json"));
        assert!(!looks_like_two_headers("Bearer abc=="));
    }
}
