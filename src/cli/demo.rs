//! `courier demo`: the first thing a new user runs.
//!
//! One process shows the whole fleet at work against the real broker:
//! 1. applies the demo topology (`topology/demo.toml`: the default shape with short retry tiers)
//!    under a prefix (`demo.` by default), after checking that nobody else uses those queues;
//! 2. starts a local HTTP sink that fails a share of deliveries on purpose, deciding per
//!    `message_id` (a hash), so the outcome of every message is known in advance;
//! 3. runs real [`Worker`]s with the real [`HttpHandler`], several per channel, in-process;
//! 4. publishes a mixed batch (channels, priorities, a few non-JSON bodies) with confirms;
//! 5. shows progress until every message is delivered or dead-lettered, then a summary checked
//!    against the expectation: delivered, retried by tier, dead-lettered by reason, duplicates,
//!    lost (read back from the dead-letter queue itself), throughput;
//! 6. deletes every queue and exchange of the demo, unless `--keep`.
//!
//! The expected outcomes are not hard-coded: each sink rule is run through the worker's own
//! [`decide`] with the topology's retry policy, so the summary stays right if the tiers change.

use super::GlobalArgs;
use anyhow::{bail, Context};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use clap::Args;
use courier::amqp::AmqpUrl;
use courier::envelope::{self, Reason};
use courier::handler::http::{classify, parse_retry_after, HttpConfig, HttpHandler};
use courier::handler::{FailureKind, HandlerError};
use courier::metrics::{Health, Metrics};
use courier::outcome::{decide, Action};
use courier::publisher::{Outgoing, PublishError, Publisher, PublisherConfig};
use courier::topology::{tier_label, RetryPolicy, Topology, DEFAULT_TOPOLOGY_PATH};
use courier::worker::{Worker, WorkerConfig};
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use lapin::options::{
    BasicGetOptions, ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection};
use rand::Rng;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Where the demo topology lives in a checkout; read from disk when present so it can be edited.
const DEMO_TOPOLOGY_PATH: &str = "topology/demo.toml";
/// The same file, built in, so `courier demo` works from any directory.
const DEMO_TOPOLOGY: &str = include_str!("../../topology/demo.toml");
/// Prefix used unless `--prefix` is given: the demo never touches unprefixed (real) queues.
const DEFAULT_PREFIX: &str = "demo.";
/// Basis points (1/100 of a percent) of the batch published as non-JSON bodies: 0.5 %.
const MALFORMED_BP: u64 = 50;
/// Basis points answered `429` with `Retry-After: 1` on the first attempt: 1 %.
const RATE_LIMITED_BP: u32 = 100;
/// Share of messages (in percent) published with priority 9, the rest 0-8.
const URGENT_PERCENT: u32 = 10;
/// Exit code after Ctrl-C, as a shell reports a SIGINT death.
const EXIT_INTERRUPTED: u8 = 130;

/// Run a self-contained demo: topology, workers, a flaky HTTP sink, a mixed batch, a summary.
///
/// Applies topology/demo.toml (the default shape with retry tiers of 500ms, 2s, 5s and 4
/// attempts; built in when the file is not there), or the file given with --topology, under the
/// prefix `demo.` (or a non-empty --prefix), so real queues are never touched. It refuses a
/// prefix whose queues hold messages or have consumers. A local
/// HTTP sink answers each message by a rule picked from its message_id:
///   --fail-transient %   first attempt 503, then 200      → delivered after a retry
///   1 %                  first attempt 429 Retry-After: 1 → retried in a tier ≥ 1s, delivered
///   --fail-permanent %   always 400                       → dead-lettered `permanent`
///   --fail-always %      always 503                       → dead-lettered `max-attempts`
///   0.5 % (at least 1)   body is not JSON                 → dead-lettered `malformed`
///   the rest             200                              → delivered at once
/// Workers run in this process with the real HTTP handler; the summary compares what happened
/// with what the rules predict and checks that no message was lost. Everything is deleted at the
/// end unless --keep, which leaves the dead letters for `courier-dlq`.
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct DemoArgs {
    /// Messages to publish.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    messages: u64,
    /// Workers per channel; they compete for the channel's queue, each on its own connection.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    workers: u16,
    /// Percent of messages whose first attempt gets 503 (delivered on the retry).
    #[arg(long, value_name = "PCT", default_value_t = 15.0, value_parser = parse_percent)]
    fail_transient: f64,
    /// Percent of messages always answered 400 (dead-lettered as `permanent`).
    #[arg(long, value_name = "PCT", default_value_t = 3.0, value_parser = parse_percent)]
    fail_permanent: f64,
    /// Percent of messages always answered 503 (retried until `max-attempts`).
    #[arg(long, value_name = "PCT", default_value_t = 2.0, value_parser = parse_percent)]
    fail_always: f64,
    /// Leave the queues and the dead letters in place, to explore them with courier-dlq.
    #[arg(long)]
    keep: bool,
    /// Only delete the demo's queues and exchanges (after --keep, or an interrupted run), then exit.
    #[arg(long, conflicts_with = "keep")]
    clean: bool,
    /// Give up if some message has neither been delivered nor dead-lettered by then (default:
    /// 90s, longer if the topology's retry tiers need it).
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
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

pub async fn run(global: &GlobalArgs, args: DemoArgs) -> anyhow::Result<ExitCode> {
    let url = global.amqp_url()?;
    // An empty prefix is never used: the demo must not mix with the real, unprefixed fleet.
    let prefix = if global.prefix.is_empty() {
        DEFAULT_PREFIX
    } else {
        global.prefix.as_str()
    };
    let (topology, custom_topology) = load_topology(global, prefix)?;
    if args.clean {
        return clean(&url, &topology, prefix).await;
    }
    let rules = Rules::new(&args)?;
    let routes = routes(&topology);
    if routes.is_empty() {
        bail!(
            "{}: no work queue is bound to an exchange, so there is nothing to publish to",
            topology.source
        );
    }

    // Refuse before declaring anything if the prefix is in use: the clean-up deletes every
    // queue of the topology, and queues with consumers or messages are someone's data.
    precheck(&url, &topology, prefix).await?;
    let report = courier::broker::apply(&url, &topology)
        .await
        .with_context(|| format!("cannot apply {} with prefix {prefix:?}", topology.source))?;
    let broker = report
        .broker_version
        .map_or_else(|| "RabbitMQ".to_owned(), |v| format!("RabbitMQ {v}"));
    println!("courier demo: {broker} at {url}, prefix {prefix:?}");

    let interrupted = CancellationToken::new();
    courier::shutdown::cancel_on_signal(interrupted.clone());
    let ctx = Demo {
        url: url.clone(),
        topology: &topology,
        rules,
        routes,
        args: &args,
        prefix,
        interrupted: interrupted.clone(),
    };
    let outcome = ctx.run().await;

    // Clean up whatever happened above (error, timeout, Ctrl-C), unless asked to keep.
    let cleaned = if args.keep {
        None
    } else {
        Some(delete_topology(&url, &topology).await)
    };
    let code = match outcome {
        Ok(RunEnd::Finished(summary)) => {
            summary.print(&ctx);
            print_next(&ctx, &summary, cleaned.as_ref(), custom_topology);
            summary.exit_code()
        }
        Ok(RunEnd::Interrupted) => {
            println!("interrupted: workers stopped");
            print_cleanup(&ctx, cleaned.as_ref());
            ExitCode::from(EXIT_INTERRUPTED)
        }
        Err(e) => {
            print_cleanup(&ctx, cleaned.as_ref());
            return Err(e);
        }
    };
    Ok(code)
}

/// The demo topology unless `--topology` (or `COURIER_TOPOLOGY`) names another file; the bool
/// says whether the user's own file is used (then the printed commands must name it).
fn load_topology(global: &GlobalArgs, prefix: &str) -> anyhow::Result<(Topology, bool)> {
    if global.topology != Path::new(DEFAULT_TOPOLOGY_PATH) {
        let t = Topology::load(&global.topology, prefix)?;
        return Ok((t, true));
    }
    let on_disk = Path::new(DEMO_TOPOLOGY_PATH);
    let t = if on_disk.is_file() {
        Topology::load(on_disk, prefix)?
    } else {
        Topology::parse(DEMO_TOPOLOGY, "topology/demo.toml (built in)", prefix)?
    };
    Ok((t, false))
}

/// Every (exchange, routing key) that reaches a work queue: the "channels" a batch is spread over.
fn routes(topology: &Topology) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = topology
        .bindings
        .iter()
        .filter(|b| {
            b.exchange != topology.dead_letter_exchange && topology.work_queue(&b.queue).is_some()
        })
        .map(|b| (b.exchange.clone(), b.routing_key.clone()))
        .collect();
    out.dedup();
    out
}

// ---------------------------------------------------------------------------------------------
// The sink's rules: what happens to each message, decided by its id
// ---------------------------------------------------------------------------------------------

/// What the sink does with one message, for all its attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Fate {
    /// 200 at once.
    Ok,
    /// 503 on the first attempt, then 200.
    Transient,
    /// 429 with `Retry-After: 1` on the first attempt, then 200.
    RateLimited,
    /// 400 every time.
    Permanent,
    /// 503 every time.
    AlwaysFails,
    /// Published with a non-JSON body; the worker dead-letters it without calling the sink.
    Malformed,
}

/// The sink's shares, in basis points (1/100 %), applied to a hash of the message id.
#[derive(Debug, Clone, Copy)]
struct Rules {
    permanent: u32,
    always: u32,
    transient: u32,
    rate_limited: u32,
}

impl Rules {
    fn new(args: &DemoArgs) -> anyhow::Result<Self> {
        // parse_percent bounds each value to 0..=100, so the casts cannot overflow.
        let bp = |pct: f64| (pct * 100.0).round() as u32;
        let permanent = bp(args.fail_permanent);
        let always = bp(args.fail_always);
        let transient = bp(args.fail_transient);
        let failing = permanent + always + transient;
        if failing > 10_000 {
            bail!(
                "--fail-transient {} + --fail-permanent {} + --fail-always {} add up to more than 100 %",
                args.fail_transient,
                args.fail_permanent,
                args.fail_always
            );
        }
        Ok(Self {
            permanent,
            always,
            transient,
            // The 429 share shows Retry-After at work; it shrinks rather than break the sum.
            rate_limited: RATE_LIMITED_BP.min(10_000 - failing),
        })
    }

    /// The fate of a (well-formed) message: a stable function of its id, so the same id gets
    /// the same answers on every attempt, whichever worker delivers it.
    fn fate(&self, message_id: &str) -> Fate {
        let b = bucket(message_id);
        let mut edge = self.permanent;
        if b < edge {
            return Fate::Permanent;
        }
        edge += self.always;
        if b < edge {
            return Fate::AlwaysFails;
        }
        edge += self.transient;
        if b < edge {
            return Fate::Transient;
        }
        edge += self.rate_limited;
        if b < edge {
            return Fate::RateLimited;
        }
        Fate::Ok
    }
}

use super::sink::bucket;

/// One HTTP answer of the sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Answer {
    status: u16,
    retry_after: Option<&'static str>,
    body: &'static str,
}

/// What the sink answers to attempt `attempt` (1-based) of a message with `fate`.
fn answer(fate: Fate, attempt: u32) -> Answer {
    let ok = Answer {
        status: 200,
        retry_after: None,
        body: "delivered",
    };
    match fate {
        Fate::Ok => ok,
        Fate::Transient if attempt > 1 => ok,
        Fate::Transient => Answer {
            status: 503,
            retry_after: None,
            body: "demo sink: provider briefly unavailable (fails the first attempt on purpose)",
        },
        Fate::RateLimited if attempt > 1 => ok,
        Fate::RateLimited => Answer {
            status: 429,
            retry_after: Some("1"),
            body: "demo sink: rate limited, retry after 1 second (on purpose)",
        },
        Fate::Permanent | Fate::Malformed => Answer {
            status: 400,
            retry_after: None,
            body: "demo sink: invalid recipient (fails every attempt on purpose)",
        },
        Fate::AlwaysFails => Answer {
            status: 503,
            retry_after: None,
            body: "demo sink: provider down (fails every attempt on purpose)",
        },
    }
}

/// How one message travels, predicted by running the sink's answers through the worker's own
/// [`decide`] with the topology's retry policy.
#[derive(Debug, Clone, Default)]
struct Journey {
    /// The attempt that succeeds, if any.
    delivered_on: Option<u32>,
    /// Retry tiers visited, by index.
    tiers: Vec<usize>,
    /// The dead-letter reason, if it ends in the DLQ.
    dead_letter: Option<Reason>,
    /// Time spent waiting in retry tiers.
    waiting: Duration,
}

fn predict(fate: Fate, policy: &RetryPolicy) -> Journey {
    let mut path = Journey::default();
    if fate == Fate::Malformed {
        path.dead_letter = Some(Reason::Malformed);
        return path;
    }
    let mut prior = 0u32;
    loop {
        let a = answer(fate, prior.saturating_add(1));
        // The same mapping as the HTTP handler: classify the status, honour Retry-After.
        let result = match classify(a.status) {
            None => Ok(()),
            Some(FailureKind::Permanent) => Err(HandlerError::permanent(a.body)),
            Some(FailureKind::Retryable) => {
                let e = HandlerError::retryable(a.body);
                Err(match a.retry_after.and_then(parse_retry_after) {
                    Some(d) => e.with_retry_after(d),
                    None => e,
                })
            }
        };
        match decide(prior, &result, policy) {
            Action::Ack => {
                path.delivered_on = Some(prior.saturating_add(1));
                return path;
            }
            Action::Retry { tier, attempts, .. } => {
                path.tiers.push(tier);
                path.waiting += policy.tiers.get(tier).copied().unwrap_or_default();
                prior = attempts;
            }
            Action::DeadLetter { reason, .. } => {
                path.dead_letter = Some(reason);
                return path;
            }
        }
    }
}

/// What the whole batch should produce.
#[derive(Debug, Clone, Default)]
struct Expected {
    delivered: u64,
    first_try: u64,
    after_retry: u64,
    retries: Vec<u64>,
    dead: BTreeMap<Reason, u64>,
    /// The longest wait in retry tiers of any message.
    longest_wait: Duration,
}

impl Expected {
    fn of(counts: &BTreeMap<Fate, u64>, policy: &RetryPolicy) -> Self {
        let mut e = Self {
            retries: vec![0; policy.tiers.len()],
            ..Self::default()
        };
        for (&fate, &n) in counts {
            if n == 0 {
                continue;
            }
            let p = predict(fate, policy);
            match p.delivered_on {
                Some(1) => e.first_try += n,
                Some(_) => e.after_retry += n,
                None => {}
            }
            if p.delivered_on.is_some() {
                e.delivered += n;
            }
            for t in &p.tiers {
                if let Some(slot) = e.retries.get_mut(*t) {
                    *slot += n;
                }
            }
            if let Some(r) = p.dead_letter {
                *e.dead.entry(r).or_insert(0) += n;
            }
            e.longest_wait = e.longest_wait.max(p.waiting);
        }
        e
    }

    fn dead_total(&self) -> u64 {
        self.dead.values().sum()
    }
}

// ---------------------------------------------------------------------------------------------
// The batch
// ---------------------------------------------------------------------------------------------

struct Batch {
    messages: Vec<Outgoing>,
    ids: Vec<String>,
    fates: BTreeMap<Fate, u64>,
    by_route: BTreeMap<String, u64>,
    urgent: u64,
}

/// Builds the batch: ids `demo-<n>`, a random channel, priority 9 for about one in ten and 0-8
/// otherwise; evenly spread malformed bodies (0.5 %, at least one) so the `malformed` reason
/// always shows.
fn plan(n: u64, rules: &Rules, routes: &[(String, String)]) -> Batch {
    let malformed = ((n * MALFORMED_BP + 5_000) / 10_000).clamp(1, n);
    let mut rng = rand::rng();
    let mut batch = Batch {
        messages: Vec::new(),
        ids: Vec::new(),
        fates: BTreeMap::new(),
        by_route: BTreeMap::new(),
        urgent: 0,
    };
    for i in 0..n {
        let id = format!("demo-{i}");
        // Exactly `malformed` indexes, evenly spaced (where floor(i * m / n) steps up).
        let is_malformed = (i + 1) * malformed / n != i * malformed / n;
        let fate = if is_malformed {
            Fate::Malformed
        } else {
            rules.fate(&id)
        };
        let (exchange, channel) = &routes[rng.random_range(0..routes.len())];
        let priority: u8 = if rng.random_range(0..100) < URGENT_PERCENT {
            9
        } else {
            rng.random_range(0..=8)
        };
        let body = if is_malformed {
            // A buggy publisher: claims JSON, sends text.
            format!("to=user{i}@example.com; text=not JSON at all ({id})").into_bytes()
        } else {
            job_body(channel, i, priority).into_bytes()
        };
        *batch.fates.entry(fate).or_insert(0) += 1;
        *batch.by_route.entry(channel.clone()).or_insert(0) += 1;
        batch.urgent += u64::from(priority == 9);
        batch.messages.push(Outgoing {
            exchange: exchange.clone(),
            routing_key: channel.clone(),
            properties: BasicProperties::default()
                .with_message_id(id.as_str().into())
                .with_priority(priority)
                .with_delivery_mode(2)
                .with_content_type("application/json".into())
                .with_timestamp(u64::try_from(envelope::now_millis() / 1000).unwrap_or(0)),
            body,
        });
        batch.ids.push(id);
    }
    batch
}

/// A plausible body for each channel, so a `courier-dlq show` looks like real traffic.
fn job_body(channel: &str, i: u64, priority: u8) -> String {
    let urgent = priority == 9;
    let v = match channel {
        "email" => serde_json::json!({
            "to": format!("user{i}@example.com"),
            "subject": if urgent { "Your sign-in code" } else { "Your weekly digest" },
            "text": format!("Hello from courier demo, message {i}"),
        }),
        "sms" => serde_json::json!({
            "to": format!("+1555{:07}", i % 10_000_000),
            "text": format!("courier demo {i}"),
        }),
        "push" => serde_json::json!({
            "device": format!("device-{i}"),
            "title": if urgent { "Security alert" } else { "New activity" },
            "body": format!("courier demo {i}"),
        }),
        other => serde_json::json!({
            "event": format!("demo.{other}"),
            "data": { "n": i, "urgent": urgent },
        }),
    };
    v.to_string()
}

// ---------------------------------------------------------------------------------------------
// The local HTTP sink
// ---------------------------------------------------------------------------------------------

/// What the sink saw for one message id.
#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    requests: u32,
    successes: u32,
}

/// The sink's view, summed as requests arrive, so progress reads are O(1) at any batch size.
#[derive(Debug, Default, Clone, Copy)]
struct SinkCounts {
    /// Distinct ids the sink has heard of (each message's first attempt reached it).
    ids: u64,
    /// Distinct ids answered 2xx.
    delivered: u64,
    first_try: u64,
    after_retry: u64,
    /// 2xx answers beyond the first for an id.
    duplicates: u64,
    requests: u64,
}

#[derive(Default)]
struct Ledger {
    by_id: HashMap<String, Seen>,
    totals: SinkCounts,
}

struct SinkState {
    rules: Rules,
    ledger: Mutex<Ledger>,
}

impl SinkState {
    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        // A panic while holding the lock cannot leave the counts inconsistent (plain increments).
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

struct Sink {
    url: String,
    state: Arc<SinkState>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Sink {
    async fn start(rules: Rules) -> anyhow::Result<Self> {
        let state = Arc::new(SinkState {
            rules,
            ledger: Mutex::new(Ledger::default()),
        });
        let app = axum::Router::new()
            .route("/deliver", axum::routing::post(deliver))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("cannot start the demo HTTP sink on 127.0.0.1")?;
        let addr = listener
            .local_addr()
            .context("the demo HTTP sink has no address")?;
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move { token.cancelled().await })
                .await;
            if let Err(e) = served {
                tracing::warn!(error = %e, "demo HTTP sink stopped");
            }
        });
        Ok(Self {
            url: format!("http://{addr}/deliver"),
            state,
            stop,
            task,
        })
    }

    fn counts(&self) -> SinkCounts {
        self.state.ledger().totals
    }

    fn delivered_ids(&self) -> HashSet<String> {
        self.state
            .ledger()
            .by_id
            .iter()
            .filter(|(_, s)| s.successes > 0)
            .map(|(id, _)| id.clone())
            .collect()
    }

    async fn stop(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

async fn deliver(
    State(state): State<Arc<SinkState>>,
    headers: HeaderMap,
    _body: Bytes,
) -> Response {
    // The body is taken (and dropped) so the connection can be reused for the next request.
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let Some(id) = get("idempotency-key").filter(|s| !s.is_empty()) else {
        return (StatusCode::BAD_REQUEST, "demo sink: no Idempotency-Key").into_response();
    };
    let header_attempt = get("x-courier-attempt").and_then(|v| v.parse::<u32>().ok());
    let a = {
        let mut ledger = state.ledger();
        let Ledger { by_id, totals } = &mut *ledger;
        let s = by_id.entry(id.to_owned()).or_default();
        if s.requests == 0 {
            totals.ids += 1;
        }
        s.requests += 1;
        totals.requests += 1;
        // The worker's attempt number decides; the sink's own count is only a fallback.
        let attempt = header_attempt.unwrap_or(s.requests);
        let a = answer(state.rules.fate(id), attempt);
        if (200..300).contains(&a.status) {
            s.successes += 1;
            match (s.successes, attempt) {
                (1, 1) => totals.first_try += 1,
                (1, _) => totals.after_retry += 1,
                _ => totals.duplicates += 1,
            }
            if s.successes == 1 {
                totals.delivered += 1;
            }
        }
        a
    };
    let status = StatusCode::from_u16(a.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, a.body).into_response();
    if let Some(after) = a.retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static(after));
    }
    response
}

// ---------------------------------------------------------------------------------------------
// Workers
// ---------------------------------------------------------------------------------------------

struct Fleet {
    stop: CancellationToken,
    handles: Vec<tokio::task::JoinHandle<()>>,
    health: Vec<Health>,
}

impl Fleet {
    /// `per_queue` workers on every work queue, sharing one metrics registry (counters are
    /// labelled by queue, so summing over queues gives the demo's totals).
    fn start(
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
        for q in &topology.work_queues {
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

    fn ready(&self) -> usize {
        self.health.iter().filter(|h| h.is_ready()).count()
    }

    /// Graceful: stop consuming, finish in-flight messages, flush acks, close.
    async fn stop(self) {
        self.stop.cancel();
        for h in self.handles {
            let _ = tokio::time::timeout(Duration::from_secs(20), h).await;
        }
    }
}

/// Live counts from the workers' metrics.
#[derive(Debug, Clone, Default)]
struct Counts {
    delivered: u64,
    retries: Vec<u64>,
    dead: BTreeMap<Reason, u64>,
}

impl Counts {
    fn read(metrics: &Metrics, topology: &Topology, tier_labels: &[String]) -> Self {
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

    fn dead_total(&self) -> u64 {
        self.dead.values().sum()
    }

    fn retries_total(&self) -> u64 {
        self.retries.iter().sum()
    }
}

// ---------------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------------

struct Demo<'a> {
    url: AmqpUrl,
    topology: &'a Topology,
    rules: Rules,
    routes: Vec<(String, String)>,
    args: &'a DemoArgs,
    prefix: &'a str,
    interrupted: CancellationToken,
}

enum RunEnd {
    Finished(Box<Summary>),
    Interrupted,
}

/// How the wait for outcomes ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    Settled,
    TimedOut,
}

impl Demo<'_> {
    fn tier_labels(&self) -> Vec<String> {
        self.topology
            .retry
            .tiers
            .iter()
            .map(|d| tier_label(*d))
            .collect()
    }

    fn channels(&self) -> Vec<&str> {
        self.routes.iter().map(|(_, k)| k.as_str()).collect()
    }

    async fn run(&self) -> anyhow::Result<RunEnd> {
        let policy = &self.topology.retry;
        let batch = plan(self.args.messages, &self.rules, &self.routes);
        let expected = Expected::of(&batch.fates, policy);
        let timeout = self.args.timeout.unwrap_or_else(|| {
            // A message that fails every attempt waits in each tier; leave room for that twice
            // over plus delivery time, and never less than 90s.
            Duration::from_secs(90).max(expected.longest_wait * 2 + Duration::from_secs(30))
        });

        let sink = Sink::start(self.rules).await?;
        let metrics = Metrics::new();
        let fleet = Fleet::start(
            &self.url,
            self.topology,
            &sink.url,
            &metrics,
            self.args.workers,
        )?;
        self.print_intro(&batch, &sink.url, fleet.handles.len());

        let result = self.drive(&batch, &sink, &fleet, &metrics, timeout).await;
        // Stop in order: workers first (they finish in-flight deliveries against the sink).
        fleet.stop().await;
        let sink_counts = sink.counts();
        let delivered_ids = sink.delivered_ids();
        sink.stop().await;
        let Some(timing) = result? else {
            return Ok(RunEnd::Interrupted);
        };

        let counts = Counts::read(&metrics, self.topology, &self.tier_labels());
        let dlq = read_dlq(&self.url, &self.topology.dead_letter_queue).await?;
        let dlq_ids: HashSet<&str> = dlq.iter().map(|(id, _)| id.as_str()).collect();
        let missing: Vec<String> = batch
            .ids
            .iter()
            .filter(|id| !delivered_ids.contains(*id) && !dlq_ids.contains(id.as_str()))
            .cloned()
            .collect();
        Ok(RunEnd::Finished(Box::new(Summary {
            timing,
            published: self.args.messages,
            urgent: batch.urgent,
            malformed: batch.fates.get(&Fate::Malformed).copied().unwrap_or(0),
            expected,
            counts,
            sink: sink_counts,
            in_dlq: dlq.len() as u64,
            sample_dead: dlq.first().map(|(id, _)| id.clone()),
            missing,
            timeout,
            tier_labels: self.tier_labels(),
        })))
    }

    fn print_intro(&self, batch: &Batch, sink_url: &str, workers: usize) {
        let t = self.topology;
        let tiers = self.tier_labels().join(", ");
        println!(
            "  topology  {}: channels {}, retry tiers {tiers}, {} attempts, DLQ {}",
            t.source,
            self.channels().join(", "),
            t.retry.max_attempts,
            t.dead_letter_queue
        );
        let pct = |bp: u32| format!("{}%", f64::from(bp) / 100.0);
        println!(
            "  sink      {sink_url} fails on purpose: {} first try 503, {} first try 429 Retry-After: 1, {} always 400, {} always 503",
            pct(self.rules.transient),
            pct(self.rules.rate_limited),
            pct(self.rules.permanent),
            pct(self.rules.always),
        );
        println!(
            "  workers   {workers} ({} per channel, real HTTP handler, each on its own connection)",
            self.args.workers
        );
        let spread: Vec<String> = batch
            .by_route
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        println!(
            "  batch     {} messages ({}), {} at priority 9, {} not JSON on purpose",
            self.args.messages,
            spread.join(", "),
            batch.urgent,
            batch.fates.get(&Fate::Malformed).copied().unwrap_or(0)
        );
    }

    /// Publishes the batch while watching outcomes; returns how the wait ended, the time from the
    /// first publish to the end, and the publishing time; `None` when interrupted.
    async fn drive(
        &self,
        batch: &Batch,
        sink: &Sink,
        fleet: &Fleet,
        metrics: &Metrics,
        timeout: Duration,
    ) -> anyhow::Result<Option<Timing>> {
        // Publish only once every worker consumes, so the throughput measures the fleet, not
        // connection set-up.
        let ready_by = Instant::now() + Duration::from_secs(20);
        while fleet.ready() < fleet.health.len() {
            if Instant::now() > ready_by {
                bail!(
                    "only {} of {} workers started consuming within 20s; see the warnings above",
                    fleet.ready(),
                    fleet.health.len()
                );
            }
            tokio::select! {
                _ = self.interrupted.cancelled() => return Ok(None),
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }

        let total = self.args.messages;
        let tier_labels = self.tier_labels();
        let bar = progress_bar(total);
        let publisher = Publisher::connect(
            &self.url,
            PublisherConfig {
                name: "courier demo (publisher)".to_owned(),
                window: 512,
                confirm_timeout: Duration::from_secs(30),
            },
            Metrics::new(),
        )
        .await?;
        let started = Instant::now();
        let deadline = started + timeout;
        let publishing = publish_all(&publisher, batch.messages.clone());
        tokio::pin!(publishing);
        let mut published: Option<Duration> = None;
        let mut first_pass: Option<Duration> = None;
        let mut ticker = tokio::time::interval(Duration::from_millis(25));
        let tty = std::io::stdout().is_terminal();
        let mut next_line = Instant::now() + Duration::from_secs(5);
        let wait = loop {
            tokio::select! {
                r = &mut publishing, if published.is_none() => {
                    r?;
                    published = Some(started.elapsed());
                    publisher.close().await;
                }
                _ = ticker.tick() => {}
                _ = self.interrupted.cancelled() => {
                    bar.finish_and_clear();
                    return Ok(None);
                }
            }
            let c = Counts::read(metrics, self.topology, &tier_labels);
            let s = sink.counts();
            // Delivered is counted by distinct id at the sink, so a duplicate delivery cannot
            // make the demo finish early; the workers' count must have caught up too (acked).
            let settled = s.delivered + c.dead_total();
            let status = format!(
                "delivered {} · dead-lettered {} · retries {} · pending {}",
                s.delivered,
                c.dead_total(),
                c.retries_total(),
                total.saturating_sub(settled)
            );
            bar.set_position(settled.min(total));
            bar.set_message(match published {
                Some(_) => status.clone(),
                None => format!("publishing · {status}"),
            });
            if !tty && Instant::now() >= next_line {
                println!("  … {}/{total} settled: {status}", settled.min(total));
                next_line += Duration::from_secs(5);
            }
            // Every message has had its first attempt once the sink heard of every well-formed
            // id and the malformed ones are dead-lettered: the fleet's speed without the
            // deliberate retry waits.
            let malformed = c.dead.get(&Reason::Malformed).copied().unwrap_or(0);
            if first_pass.is_none() && published.is_some() && s.ids + malformed >= total {
                first_pass = Some(started.elapsed());
            }
            if published.is_some() && settled >= total && c.delivered >= s.delivered {
                break Wait::Settled;
            }
            if Instant::now() >= deadline {
                break Wait::TimedOut;
            }
        };
        bar.finish_and_clear();
        let elapsed = started.elapsed();
        Ok(Some(Timing {
            wait,
            elapsed,
            publishing: published.unwrap_or(elapsed),
            first_pass,
        }))
    }
}

fn progress_bar(total: u64) -> ProgressBar {
    // Only on a terminal: in CI logs and tests the summary is the output.
    let target = if std::io::stdout().is_terminal() {
        ProgressDrawTarget::stdout()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(total), target);
    bar.set_style(
        ProgressStyle::with_template(
            "  {spinner} {elapsed:>4} {bar:30} {pos}/{len} settled  {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// Publishes every message with confirms, many in flight; the first failure stops the batch.
async fn publish_all(publisher: &Publisher, messages: Vec<Outgoing>) -> anyhow::Result<()> {
    let mut results = futures_util::stream::iter(messages)
        .map(|m| publisher.publish(m))
        .buffer_unordered(512);
    while let Some(r) = results.next().await {
        r.map_err(|e: PublishError| anyhow::anyhow!(e))
            .context("publishing the demo batch failed")?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Summary
// ---------------------------------------------------------------------------------------------

/// When things happened, from the first publish.
#[derive(Debug, Clone, Copy)]
struct Timing {
    wait: Wait,
    /// To the last outcome (or the timeout).
    elapsed: Duration,
    /// To the last publish confirm.
    publishing: Duration,
    /// To the moment every message had had its first attempt.
    first_pass: Option<Duration>,
}

struct Summary {
    timing: Timing,
    published: u64,
    urgent: u64,
    malformed: u64,
    expected: Expected,
    counts: Counts,
    sink: SinkCounts,
    in_dlq: u64,
    sample_dead: Option<String>,
    /// Ids neither delivered nor in the DLQ.
    missing: Vec<String>,
    timeout: Duration,
    tier_labels: Vec<String>,
}

fn row(label: &str, count: u64, expected: Option<u64>, note: &str) {
    let exp = expected.map_or_else(String::new, |e| format!("{e:>10}"));
    let line = format!("  {label:<24}{count:>8}{exp}");
    if note.is_empty() {
        println!("{line}");
    } else {
        println!("{line:<44}  {note}");
    }
}

impl Summary {
    fn settled(&self) -> bool {
        self.timing.wait == Wait::Settled
    }

    fn print(&self, demo: &Demo<'_>) {
        let e = &self.expected;
        let c = &self.counts;
        println!();
        if self.settled() {
            println!("Summary");
        } else {
            println!(
                "Summary: NOT every message settled within {} (--timeout)",
                humantime::format_duration(self.timeout)
            );
        }
        println!("  {:<24}{:>8}{:>10}", "", "count", "expected");
        row(
            "published",
            self.published,
            Some(self.published),
            &format!(
                "confirmed; {} at priority 9, {} not JSON",
                self.urgent, self.malformed
            ),
        );
        row(
            "delivered",
            c.delivered,
            Some(e.delivered),
            "HTTP 2xx, then acked",
        );
        row("first try", self.sink.first_try, Some(e.first_try), "");
        row(
            "after a retry",
            self.sink.after_retry,
            Some(e.after_retry),
            "",
        );
        row(
            "retried",
            c.retries_total(),
            Some(e.retries.iter().sum()),
            "retry copies confirmed, by tier:",
        );
        for (i, label) in self.tier_labels.iter().enumerate() {
            row(
                &format!("tier {label}"),
                c.retries.get(i).copied().unwrap_or(0),
                Some(e.retries.get(i).copied().unwrap_or(0)),
                "",
            );
        }
        row(
            "dead-lettered",
            c.dead_total(),
            Some(e.dead_total()),
            "by reason:",
        );
        let mut reasons: Vec<Reason> = e.dead.keys().chain(c.dead.keys()).copied().collect();
        reasons.sort();
        reasons.dedup();
        for r in reasons {
            let note = match r {
                Reason::Permanent => "HTTP 400",
                Reason::MaxAttempts => "HTTP 503 on every attempt",
                Reason::Malformed => "body not JSON",
                _ => "",
            };
            row(
                r.as_str(),
                c.dead.get(&r).copied().unwrap_or(0),
                Some(e.dead.get(&r).copied().unwrap_or(0)),
                note,
            );
        }
        row(
            "in the DLQ",
            self.in_dlq,
            Some(e.dead_total()),
            &format!("read back from {}", demo.topology.dead_letter_queue),
        );
        row(
            "duplicates",
            self.sink.duplicates,
            Some(0),
            "ids the sink accepted more than once",
        );
        let lost_label = if self.settled() {
            "lost"
        } else {
            "not settled"
        };
        row(
            lost_label,
            self.missing.len() as u64,
            Some(0),
            "neither delivered nor in the DLQ",
        );
        let t = &self.timing;
        let rate = |d: Duration| self.published as f64 / d.as_secs_f64().max(1e-3);
        println!(
            "  {:<24}{:>8}            first publish to last outcome; {} HTTP requests to the sink",
            "elapsed",
            format!("{:.1}s", t.elapsed.as_secs_f64()),
            self.sink.requests
        );
        if self.settled() {
            println!(
                "  {:<24}{:>8}            msg/s overall, including up to {:.1}s of deliberate retry waits",
                "throughput",
                format!("{:.0}", rate(t.elapsed)),
                self.expected.longest_wait.as_secs_f64(),
            );
        }
        if let Some(first) = t.first_pass {
            println!(
                "  {:<24}{:>8}            msg/s until every message had its first attempt ({:.2}s); published at {:.0} msg/s",
                "first pass",
                format!("{:.0}", rate(first)),
                first.as_secs_f64(),
                rate(t.publishing),
            );
        }
        if !self.missing.is_empty() {
            let shown: Vec<&str> = self.missing.iter().take(10).map(String::as_str).collect();
            let more = self.missing.len().saturating_sub(shown.len());
            println!(
                "  missing: {}{}",
                shown.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            );
            if !self.settled() {
                println!("  (they may still be queued or waiting in a retry tier: is the broker slow, or are the retry tiers long?)");
            }
        }
        if self.settled() && !self.matches_expectation() {
            println!("  note: the outcomes differ from what the sink's rules predict (see the expected column); a worker may have been redelivered a message");
        }
    }

    fn matches_expectation(&self) -> bool {
        let e = &self.expected;
        let c = &self.counts;
        c.delivered == e.delivered
            && c.retries == e.retries
            && c.dead == e.dead
            && self.sink.duplicates == 0
    }

    fn exit_code(&self) -> ExitCode {
        if self.settled() && self.missing.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    }
}

fn print_next(demo: &Demo<'_>, summary: &Summary, cleaned: Option<&Cleaned>, custom: bool) {
    let p = demo.prefix;
    // The demo topology uses the default names, so `--prefix` alone finds its DLQ; a custom
    // topology file must be named too.
    let topo = if custom {
        format!(" --topology {}", demo.topology.source)
    } else {
        String::new()
    };
    println!();
    match cleaned {
        None => {
            println!(
                "Kept: the demo's queues and {} dead letters in {}. Next:",
                summary.in_dlq, demo.topology.dead_letter_queue
            );
            println!("  courier-dlq stats --prefix {p}{topo}");
            println!("  courier-dlq list --prefix {p}{topo} --reason permanent");
            if let Some(id) = &summary.sample_dead {
                println!("  courier-dlq show {id} --prefix {p}{topo}");
            }
            println!("  courier-dlq replay --prefix {p}{topo} --reason max-attempts --dry-run");
            println!("  courier demo --prefix {p}{topo} --clean     # delete the demo's queues and exchanges");
        }
        Some(_) => {
            print_cleanup(demo, cleaned);
            if !summary.settled() {
                return;
            }
            println!(
                "Run `courier demo --keep` to keep the dead letters and explore them with `courier-dlq stats --prefix {p}`."
            );
        }
    }
}

fn print_cleanup(demo: &Demo<'_>, cleaned: Option<&Cleaned>) {
    match cleaned {
        None => {}
        Some(c) if c.failed.is_empty() => println!(
            "Cleaned up: deleted {} queues and {} exchanges with prefix {:?}.",
            c.queues, c.exchanges, demo.prefix
        ),
        Some(c) => {
            println!(
                "Clean-up incomplete: deleted {} queues and {} exchanges; could not delete:",
                c.queues, c.exchanges
            );
            for f in &c.failed {
                println!("  {f}");
            }
            println!(
                "  retry with `courier demo --prefix {} --clean`",
                demo.prefix
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Broker housekeeping: pre-check, DLQ read-back, clean-up
// ---------------------------------------------------------------------------------------------

/// A channel that is replaced after a failed operation closes it (a 404 or 406 does).
struct Chan<'a> {
    conn: &'a Connection,
    channel: Option<Channel>,
}

impl Chan<'_> {
    async fn get(&mut self) -> Result<Channel, lapin::Error> {
        if let Some(ch) = &self.channel {
            if ch.status().connected() {
                return Ok(ch.clone());
            }
        }
        let ch = self.conn.create_channel().await?;
        self.channel = Some(ch.clone());
        Ok(ch)
    }
}

fn reply_code(e: &lapin::Error) -> Option<u16> {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(p) => Some(p.get_id()),
        _ => None,
    }
}

/// Existing queue: (messages, consumers); `None` when it does not exist.
async fn queue_state(
    chan: &mut Chan<'_>,
    url: &AmqpUrl,
    name: &str,
) -> anyhow::Result<Option<(u32, u32)>> {
    let ch = chan
        .get()
        .await
        .map_err(|e| anyhow::anyhow!(url.scrub(&e.to_string())))?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    match ch
        .queue_declare(name.into(), passive, FieldTable::default())
        .await
    {
        Ok(q) => Ok(Some((q.message_count(), q.consumer_count()))),
        Err(e) if reply_code(&e) == Some(404) => Ok(None),
        Err(e) => Err(anyhow::anyhow!(
            "cannot inspect queue '{name}': {}",
            url.scrub(&e.to_string())
        )),
    }
}

/// Refuses a prefix whose queues hold messages or have consumers: the demo would mix its batch
/// with them and its clean-up would delete them.
async fn precheck(url: &AmqpUrl, topology: &Topology, prefix: &str) -> anyhow::Result<()> {
    let conn = url.connect("courier demo (check)").await?;
    let mut chan = Chan {
        conn: &conn,
        channel: None,
    };
    let mut problems = Vec::new();
    for q in &topology.queues {
        match queue_state(&mut chan, url, &q.name).await? {
            Some((_, consumers)) if consumers > 0 => problems.push(format!(
                "queue '{}' has {consumers} consumer(s): something else uses this prefix",
                q.name
            )),
            Some((messages, _)) if messages > 0 => problems.push(format!(
                "queue '{}' holds {messages} message(s), maybe from an earlier `courier demo --keep`",
                q.name
            )),
            _ => {}
        }
    }
    let _ = conn.close(200, "checked".into()).await;
    if !problems.is_empty() {
        bail!(
            "the demo will not run under prefix {prefix:?}, whose queues are in use:\n  {}\n  \
             explore leftover dead letters with `courier-dlq stats --prefix {prefix}`, then delete \
             them with `courier demo --prefix {prefix} --clean`; or choose another --prefix",
            problems.join("\n  ")
        );
    }
    Ok(())
}

/// Reads every dead letter's id and reason without removing anything: nothing is acked, and
/// closing the channel returns the messages to the DLQ in their order.
async fn read_dlq(url: &AmqpUrl, queue: &str) -> anyhow::Result<Vec<(String, String)>> {
    let scrub = |e: lapin::Error| anyhow::anyhow!(url.scrub(&e.to_string()));
    let conn = url.connect("courier demo (DLQ read-back)").await?;
    let ch = conn.create_channel().await.map_err(scrub)?;
    let mut out = Vec::new();
    while let Some(m) = ch
        .basic_get(queue.into(), BasicGetOptions { no_ack: false })
        .await
        .map_err(scrub)
        .with_context(|| format!("cannot read the dead-letter queue '{queue}'"))?
    {
        let props = &m.delivery.properties;
        let id = envelope::message_id(props).unwrap_or("(none)").to_owned();
        let reason =
            envelope::str_header(props.headers().as_ref(), envelope::REASON).unwrap_or_default();
        out.push((id, reason));
    }
    let _ = ch
        .close(200, "read back, returning every message".into())
        .await;
    let _ = conn.close(200, "done".into()).await;
    Ok(out)
}

/// What a clean-up removed.
#[derive(Debug, Default)]
struct Cleaned {
    queues: usize,
    exchanges: usize,
    messages: u64,
    failed: Vec<String>,
}

/// Deletes every queue and exchange of the topology. Queues with consumers are left alone
/// (`if-unused`): by then the demo's workers are gone, so a consumer is someone else's.
async fn delete_topology(url: &AmqpUrl, topology: &Topology) -> Cleaned {
    let mut out = Cleaned::default();
    let conn = match url.connect("courier demo (clean-up)").await {
        Ok(c) => c,
        Err(e) => {
            out.failed.push(format!("everything: {e}"));
            return out;
        }
    };
    let mut chan = Chan {
        conn: &conn,
        channel: None,
    };
    for q in &topology.queues {
        let deleted = match chan.get().await {
            Ok(ch) => {
                ch.queue_delete(
                    q.name.as_str().into(),
                    QueueDeleteOptions {
                        if_unused: true,
                        ..QueueDeleteOptions::default()
                    },
                )
                .await
            }
            Err(e) => Err(e),
        };
        match deleted {
            Ok(n) => {
                out.queues += 1;
                out.messages += u64::from(n);
            }
            Err(e) => out
                .failed
                .push(format!("queue '{}': {}", q.name, url.scrub(&e.to_string()))),
        }
    }
    for x in &topology.exchanges {
        let deleted = match chan.get().await {
            Ok(ch) => {
                ch.exchange_delete(x.name.as_str().into(), ExchangeDeleteOptions::default())
                    .await
            }
            Err(e) => Err(e),
        };
        match deleted {
            Ok(()) => out.exchanges += 1,
            Err(e) => out.failed.push(format!(
                "exchange '{}': {}",
                x.name,
                url.scrub(&e.to_string())
            )),
        }
    }
    let _ = conn.close(200, "cleaned up".into()).await;
    out
}

/// `courier demo --clean`: delete what a kept (or interrupted) demo left.
async fn clean(url: &AmqpUrl, topology: &Topology, prefix: &str) -> anyhow::Result<ExitCode> {
    // Count first, so the user learns what went (queue.delete of a missing queue also succeeds).
    let conn = url.connect("courier demo (clean-up check)").await?;
    let mut chan = Chan {
        conn: &conn,
        channel: None,
    };
    let mut existing = 0usize;
    for q in &topology.queues {
        if queue_state(&mut chan, url, &q.name).await?.is_some() {
            existing += 1;
        }
    }
    let _ = conn.close(200, "checked".into()).await;
    if existing == 0 {
        println!("nothing to clean: no demo queue exists under prefix {prefix:?}");
        return Ok(ExitCode::SUCCESS);
    }
    let c = delete_topology(url, topology).await;
    println!(
        "deleted {existing} queues ({} messages) and the exchanges of {} under prefix {prefix:?}",
        c.messages, topology.source
    );
    if c.failed.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        for f in &c.failed {
            eprintln!("could not delete {f}");
        }
        Ok(ExitCode::FAILURE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(transient: f64, permanent: f64, always: f64) -> Rules {
        Rules::new(&DemoArgs {
            messages: 1000,
            workers: 1,
            fail_transient: transient,
            fail_permanent: permanent,
            fail_always: always,
            keep: false,
            clean: false,
            timeout: None,
        })
        .expect("valid shares")
    }

    fn demo_topology() -> Topology {
        Topology::parse(DEMO_TOPOLOGY, "demo.toml", "demo.").expect("demo topology is valid")
    }

    #[test]
    fn built_in_topology_has_the_default_shape_with_short_tiers() {
        let t = demo_topology();
        assert_eq!(t.work_queues.len(), 4);
        assert_eq!(t.dead_letter_queue, "demo.notifications.dlq");
        assert!(t.work_queues.iter().all(|q| q.max_priority == Some(9)));
        let total: Duration = t.retry.tiers.iter().sum();
        assert!(total < Duration::from_secs(20), "{total:?}");
        let channels: Vec<String> = routes(&t).into_iter().map(|(_, k)| k).collect();
        assert_eq!(channels, ["email", "sms", "push", "webhook"]);
    }

    #[test]
    fn fates_are_stable_and_close_to_the_shares() {
        let r = rules(15.0, 3.0, 2.0);
        let mut counts: HashMap<Fate, u32> = HashMap::new();
        for i in 0..100_000 {
            let id = format!("demo-{i}");
            assert_eq!(r.fate(&id), r.fate(&id));
            *counts.entry(r.fate(&id)).or_insert(0) += 1;
        }
        let share = |f: Fate| f64::from(counts.get(&f).copied().unwrap_or(0)) / 1000.0;
        assert!((share(Fate::Transient) - 15.0).abs() < 0.7, "{counts:?}");
        assert!((share(Fate::Permanent) - 3.0).abs() < 0.3, "{counts:?}");
        assert!((share(Fate::AlwaysFails) - 2.0).abs() < 0.3, "{counts:?}");
        assert!((share(Fate::RateLimited) - 1.0).abs() < 0.3, "{counts:?}");
    }

    #[test]
    fn shares_over_100_percent_are_refused_and_429_shrinks_to_fit() {
        let args = DemoArgs {
            messages: 1,
            workers: 1,
            fail_transient: 90.0,
            fail_permanent: 10.0,
            fail_always: 1.0,
            keep: false,
            clean: false,
            timeout: None,
        };
        assert!(Rules::new(&args).is_err());
        assert_eq!(rules(90.0, 10.0, 0.0).rate_limited, 0);
        assert!(parse_percent("101").is_err());
        assert!(parse_percent("x").is_err());
        assert_eq!(parse_percent("2.5%").ok(), Some(2.5));
    }

    #[test]
    fn predicted_paths_follow_the_worker_rules() {
        let policy = demo_topology().retry;
        let ok = predict(Fate::Ok, &policy);
        assert_eq!((ok.delivered_on, ok.tiers.len()), (Some(1), 0));
        let t = predict(Fate::Transient, &policy);
        assert_eq!((t.delivered_on, t.tiers.clone()), (Some(2), vec![0]));
        // Retry-After: 1 picks the first tier of at least 1s (2s), not the 500ms one.
        let rl = predict(Fate::RateLimited, &policy);
        assert_eq!((rl.delivered_on, rl.tiers.clone()), (Some(2), vec![1]));
        let p = predict(Fate::Permanent, &policy);
        assert_eq!(p.dead_letter, Some(Reason::Permanent));
        assert!(p.tiers.is_empty());
        let a = predict(Fate::AlwaysFails, &policy);
        assert_eq!(a.dead_letter, Some(Reason::MaxAttempts));
        assert_eq!(a.tiers, vec![0, 1, 2]);
        assert_eq!(a.waiting, Duration::from_millis(7_500));
        assert_eq!(
            predict(Fate::Malformed, &policy).dead_letter,
            Some(Reason::Malformed)
        );
    }

    #[test]
    fn plan_spreads_malformed_messages_and_uses_demo_ids() {
        let t = demo_topology();
        let r = rules(15.0, 3.0, 2.0);
        let b = plan(1000, &r, &routes(&t));
        assert_eq!(b.ids.len(), 1000);
        assert_eq!(b.ids[7], "demo-7");
        assert_eq!(b.fates.get(&Fate::Malformed), Some(&5));
        assert_eq!(
            plan(10, &r, &routes(&t)).fates.get(&Fate::Malformed),
            Some(&1)
        );
        assert_eq!(
            plan(1, &r, &routes(&t)).fates.get(&Fate::Malformed),
            Some(&1)
        );
        assert!(b.messages.iter().all(|m| m.properties.priority().is_some()));
        let e = Expected::of(&b.fates, &t.retry);
        assert_eq!(e.delivered + e.dead_total(), 1000);
        assert_eq!(e.first_try + e.after_retry, e.delivered);
    }

    #[test]
    fn sink_answers_by_attempt() {
        assert_eq!(answer(Fate::Transient, 1).status, 503);
        assert_eq!(answer(Fate::Transient, 2).status, 200);
        assert_eq!(answer(Fate::RateLimited, 1).retry_after, Some("1"));
        assert_eq!(answer(Fate::AlwaysFails, 9).status, 503);
        assert_eq!(answer(Fate::Permanent, 1).status, 400);
    }
}
