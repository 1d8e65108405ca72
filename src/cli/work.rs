//! `courier work`: run a worker on one queue.

use super::GlobalArgs;
use anyhow::{anyhow, bail, Context};
use clap::{Args, ValueEnum};
use courier::handler::http::{HttpConfig, HttpHandler};
use courier::handler::{Handler, NoopHandler};
use courier::metrics::{Health, Metrics};
use courier::ratelimit::{Rate, RateLimitConfig, RateLimited, RateLimiter, DEFAULT_MAX_WAIT};
use courier::worker::{Worker, WorkerConfig, WorkerSettings};
use std::num::NonZeroU32;
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
///
/// With --rate-limit, each attempt first waits for a token (asleep, using no retry attempt);
/// no token within --rate-limit-max-wait → retryable failure, as above. See "Rate limit" below.
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
    #[command(flatten)]
    rate_limit: RateLimitArgs,
}

/// Downstream rate limit options (`--rate-limit*`, `--fleet-size`).
#[derive(Debug, Args)]
#[command(next_help_heading = "Rate limit")]
struct RateLimitArgs {
    /// Most deliveries to the endpoint per period, as COUNT/PERIOD: 200/s, 50/100ms, 12000/m.
    /// Each attempt waits for a token first: asleep until one is due, holding a --concurrency
    /// slot but no retry attempt. A 429 or Retry-After from the endpoint still follows the retry
    /// rules. With --rate-limit-redis the whole fleet shares this limit; without, each worker
    /// enforces its share, COUNT ÷ --fleet-size, on its own.
    #[arg(
        long = "rate-limit",
        env = "COURIER_RATE_LIMIT",
        value_name = "COUNT/PERIOD"
    )]
    rate: Option<Rate>,
    /// Tokens that may go out at once after a quiet spell, on top of the steady pace: any
    /// 1-second window sees at most COUNT/s + burst deliveries. [default: a tenth of a second's
    /// worth, at least 1: 200/s → 20]
    #[arg(
        long = "rate-limit-burst",
        env = "COURIER_RATE_LIMIT_BURST",
        value_name = "N",
        value_parser = parse_burst,
        requires = "rate"
    )]
    burst: Option<NonZeroU32>,
    /// Longest wait for a token. Past it the message fails as retryable ("rate limit: no token
    /// within ...") and takes the normal retry path, using an attempt: waiters that the limit
    /// cannot serve in this time mean a backlog beyond the limit, better parked in a retry tier
    /// than holding deliveries. Must be below --handler-timeout, which the wait counts against.
    /// [default: 10s, or half of --handler-timeout if that is shorter]
    #[arg(long = "rate-limit-max-wait", env = "COURIER_RATE_LIMIT_MAX_WAIT", value_name = "DURATION", value_parser = humantime::parse_duration, requires = "rate")]
    max_wait: Option<Duration>,
    /// Share --rate-limit across the whole fleet through Redis: redis://[:PASSWORD@]HOST:PORT[/DB].
    /// Workers with the same --rate-limit-key draw from one GCRA bucket there (one atomic Lua
    /// script per batch of tokens, on Redis's clock). If Redis fails or takes over 250 ms to
    /// answer, the worker falls back to its local share (COUNT ÷ --fleet-size), logs a warning,
    /// sets courier_rate_limit_fallback to 1, and returns to the shared limit (info) once Redis
    /// answers again. The password is never shown.
    #[arg(
        long = "rate-limit-redis",
        env = "COURIER_RATE_LIMIT_REDIS",
        value_name = "URL",
        hide_env_values = true,
        requires = "rate"
    )]
    redis: Option<String>,
    /// Name of the limit: the Redis key is courier:ratelimit:NAME, and workers with the same name
    /// share one limit (give every worker of one provider account the same name). Shown in logs:
    /// no secrets. [default: the endpoint's host:port; with --handler noop, the queue]
    #[arg(
        long = "rate-limit-key",
        env = "COURIER_RATE_LIMIT_KEY",
        value_name = "NAME",
        requires = "rate"
    )]
    key: Option<String>,
    /// Workers sharing --rate-limit on this endpoint. Each worker's local share is COUNT ÷ N: its
    /// whole limit without Redis, its fallback with it. Too small a number lets a fleet cut off
    /// from Redis exceed the limit; too large a number only slows it down.
    #[arg(long = "fleet-size", env = "COURIER_FLEET_SIZE", value_name = "N", default_value_t = NonZeroU32::MIN)]
    fleet_size: NonZeroU32,
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
        ..WorkerSettings::new(queue.clone())
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
    let metrics = Metrics::new();
    match args.handler {
        HandlerKind::Noop => {
            let limiter = rate_limiter(&args.rate_limit, &queue, args.handler_timeout, &metrics)?;
            serve_limited(
                url,
                &topology,
                config,
                NoopHandler,
                limiter,
                metrics,
                args.metrics_addr,
            )
            .await
        }
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
            let label = host_port(handler.endpoint());
            let limiter = rate_limiter(&args.rate_limit, &label, args.handler_timeout, &metrics)?;
            serve_limited(
                url,
                &topology,
                config,
                handler,
                limiter,
                metrics,
                args.metrics_addr,
            )
            .await
        }
    }
}

/// A burst: a whole number, at least 1.
fn parse_burst(text: &str) -> Result<NonZeroU32, String> {
    let n: u32 = text
        .trim()
        .parse()
        .map_err(|_| "not a whole number of tokens, e.g. 10".to_owned())?;
    NonZeroU32::new(n).ok_or_else(|| {
        "must be at least 1 (1 means no burst: tokens come only at the steady pace)".to_owned()
    })
}

/// `host:port` of an endpoint URL (without userinfo), for the rate limit's name and metrics label;
/// the URL itself when it has no host.
fn host_port(endpoint: &str) -> String {
    match url::Url::parse(endpoint) {
        Ok(u) => match (u.host_str(), u.port_or_known_default()) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            (Some(host), None) => host.to_owned(),
            _ => endpoint.to_owned(),
        },
        Err(_) => endpoint.to_owned(),
    }
}

/// The limiter `--rate-limit` asks for, if any; `endpoint` labels its metrics and names it unless
/// --rate-limit-key does. Errors name the flag.
fn rate_limiter(
    args: &RateLimitArgs,
    endpoint: &str,
    handler_timeout: Duration,
    metrics: &Metrics,
) -> anyhow::Result<Option<RateLimiter>> {
    let Some(rate) = args.rate else {
        return Ok(None);
    };
    let max_wait = match args.max_wait {
        Some(wait) if wait >= handler_timeout => bail!(
            "--rate-limit-max-wait {}: must be below --handler-timeout ({}), which the wait counts against: the handler would time out first, with no time left to deliver",
            humantime::format_duration(wait),
            humantime::format_duration(handler_timeout)
        ),
        Some(wait) => wait,
        None => DEFAULT_MAX_WAIT.min(handler_timeout / 2),
    };
    let config = RateLimitConfig {
        burst: args.burst,
        max_wait,
        fleet_size: args.fleet_size,
        redis: args.redis.clone(),
        name: args.key.clone().unwrap_or_else(|| endpoint.to_owned()),
        ..RateLimitConfig::new(rate, endpoint)
    };
    let burst = config.effective_burst();
    let limiter = RateLimiter::new(config, metrics).map_err(|e| anyhow!("--{e}"))?;
    tracing::info!(
        burst = burst.get(),
        max_wait = %humantime::format_duration(max_wait),
        "rate limit: {}",
        limiter.describe()
    );
    Ok(Some(limiter))
}

/// [`serve`] with `handler` behind `limiter`, if there is one.
async fn serve_limited<H: Handler>(
    url: courier::amqp::AmqpUrl,
    topology: &courier::topology::Topology,
    config: WorkerConfig,
    handler: H,
    limiter: Option<RateLimiter>,
    metrics: Metrics,
    metrics_addr: Option<std::net::SocketAddr>,
) -> anyhow::Result<ExitCode> {
    match limiter {
        Some(limiter) => {
            let handler = RateLimited::new(handler, limiter);
            serve(url, topology, config, handler, metrics, metrics_addr).await
        }
        None => serve(url, topology, config, handler, metrics, metrics_addr).await,
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
    metrics: Metrics,
    metrics_addr: Option<std::net::SocketAddr>,
) -> anyhow::Result<ExitCode> {
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
    fn the_default_limit_name_is_the_endpoints_host_and_port_without_credentials() {
        assert_eq!(
            host_port("https://api.sms.example/v1/send"),
            "api.sms.example:443"
        );
        assert_eq!(host_port("http://127.0.0.1:8080/deliver"), "127.0.0.1:8080");
        assert_eq!(host_port("http://[::1]:81/x"), "[::1]:81");
    }

    fn limit_args(rate: &str) -> RateLimitArgs {
        RateLimitArgs {
            rate: Some(rate.parse().expect("rate")),
            burst: None,
            max_wait: None,
            redis: None,
            key: None,
            fleet_size: NonZeroU32::MIN,
        }
    }

    #[test]
    fn the_longest_wait_stays_below_the_handler_timeout() {
        let metrics = Metrics::new();
        let mut args = limit_args("10/s");
        args.max_wait = Some(Duration::from_secs(30));
        let err = rate_limiter(&args, "e:80", Duration::from_secs(30), &metrics)
            .expect_err("30s wait with a 30s handler timeout")
            .to_string();
        assert!(
            err.starts_with("--rate-limit-max-wait 30s: must be below --handler-timeout (30s)"),
            "{err}"
        );
        args.max_wait = Some(Duration::ZERO);
        let err = rate_limiter(&args, "e:80", Duration::from_secs(30), &metrics)
            .expect_err("zero wait")
            .to_string();
        assert!(err.starts_with("--rate-limit-max-wait 0s: "), "{err}");
        // Without the flag: 10 s, or half of a shorter handler timeout.
        args.max_wait = None;
        let limiter = rate_limiter(&args, "e:80", Duration::from_secs(4), &metrics)
            .expect("valid")
            .expect("a limiter");
        assert!(format!("{limiter:?}").contains("e:80"));
        assert!(rate_limiter(
            &limit_args("10/s"),
            "e:80",
            Duration::from_secs(30),
            &metrics
        )
        .is_ok());
        let mut none = limit_args("10/s");
        none.rate = None;
        assert!(
            rate_limiter(&none, "e:80", Duration::from_secs(30), &metrics)
                .expect("valid")
                .is_none()
        );
    }

    #[test]
    fn old_comma_separated_lists_are_recognised() {
        assert!(looks_like_two_headers("Bearer x,X-Tenant=acme"));
        assert!(looks_like_two_headers("1, B=2"));
        assert!(!looks_like_two_headers("text/plain, application/json"));
        assert!(!looks_like_two_headers("Bearer abc=="));
    }
}
