//! Courier's library under measurement: [`Publisher`] and [`Worker`] exactly as `courier work`
//! and `courier publish` build them, with a bench handler that only reads the body's stamp.
//!
//! The handler is the only bench-specific code on Courier's side: [`NoopHandler`] cannot tell
//! which message it saw, and the benchmark must count ids (lost, duplicated) and measure
//! publish-to-handler latency. Reading two fixed-width fields is as close to no work as the
//! baseline consumer's identical reading.
//!
//! [`NoopHandler`]: courier::handler::NoopHandler

use crate::cpu::PerMessage;
use crate::env::Env;
use crate::raw;
use crate::report::Measurement;
use crate::tally::{Counts, Tally};
use crate::{payload, sink};
use anyhow::Context;
use courier::handler::http::{HttpConfig, HttpHandler};
use courier::handler::{Handler, HandlerError, HandlerResult, Job};
use courier::metrics::{Health, Metrics};
use courier::publisher::{Outgoing, Publisher, PublisherConfig};
use courier::topology::Topology;
use courier::worker::{Worker, WorkerSettings};
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Records each message it sees; optionally fails every first attempt (retry path).
struct BenchHandler {
    /// Successful handlings.
    ok: Arc<Tally>,
    /// First attempts failed on purpose, when the scenario wants every message retried once.
    fail_first: Option<Arc<Tally>>,
    /// Record publish-to-handler latency (end to end only: in a drain the age is the backlog's).
    latency: bool,
}

impl Handler for BenchHandler {
    async fn handle(&self, job: Job<'_>) -> HandlerResult {
        let stamp = payload::read(job.body);
        let seq = stamp.map_or(u64::MAX, |s| s.seq);
        if let Some(failed) = &self.fail_first {
            if job.attempt == 1 {
                failed.record(seq, None);
                return Err(HandlerError::retryable(
                    "courier-bench: first attempt fails on purpose",
                ));
            }
        }
        self.ok
            .record(seq, stamp.filter(|_| self.latency).map(|s| s.age));
        Ok(())
    }
}

/// A worker running in this process.
struct Running {
    /// Cancelling it is SIGTERM for the worker.
    stop: CancellationToken,
    /// Ends when the worker has drained, flushed its acks and closed.
    task: tokio::task::JoinHandle<()>,
    /// Ready once consuming.
    health: Health,
}

impl Running {
    async fn start<H: Handler>(env: &Env, topology: &Topology, handler: H) -> anyhow::Result<Self> {
        let queue = env.work_queue(topology).to_owned();
        let config = WorkerSettings {
            prefetch: env.prefetch,
            concurrency: env.concurrency,
            ..WorkerSettings::new(queue)
        }
        .build()?;
        let health = Health::default();
        let worker = Worker::new(
            env.url.clone(),
            topology,
            config,
            handler,
            Metrics::new(),
            health.clone(),
        )?;
        let stop = CancellationToken::new();
        let task = tokio::spawn(worker.run(stop.clone()));
        Ok(Self { stop, task, health })
    }

    async fn ready(&self, within: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        while !self.health.is_ready() {
            if started.elapsed() > within {
                anyhow::bail!("the worker did not start consuming within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// Publishes ids `0..n` through a Courier [`Publisher`], `window` at a time, the way
/// `courier publish --file` drives it. Returns the number of failed publishes.
async fn publish_all(publisher: &Publisher, exchange: &str, n: u64, window: usize) -> u64 {
    futures_util::stream::iter(0..n)
        .map(|seq| {
            let p = publisher.clone();
            let msg = Outgoing {
                exchange: exchange.to_owned(),
                routing_key: crate::env::ROUTING_KEY.to_owned(),
                properties: payload::properties(seq),
                body: payload::body(seq),
            };
            async move { p.publish(msg).await }
        })
        .buffer_unordered(window.max(1))
        .filter(|r| std::future::ready(r.is_err()))
        .count()
        .await as u64
}

async fn publisher(env: &Env) -> anyhow::Result<Publisher> {
    Ok(Publisher::connect(
        &env.url,
        PublisherConfig {
            name: "courier-bench publisher".to_owned(),
            window: env.window,
            ..PublisherConfig::default()
        },
        Metrics::new(),
    )
    .await?)
}

/// Checks that a stopped worker left nothing unacknowledged (it would be back in the queue).
async fn expect_empty(env: &Env, queue: &str) -> anyhow::Result<()> {
    let left = env.scratch.depth(queue).await?;
    anyhow::ensure!(
        left == 0,
        "{left} messages were handled but not acked (back in {queue})"
    );
    Ok(())
}

/// Drains `n` messages from `topology`'s work queue with `handler`; returns when the last one
/// was handled (a drain is measured from the first message handled to the last, as for every
/// client's drain) and the CPU it took.
async fn drain<H: Handler>(
    env: &Env,
    topology: &Topology,
    handler: H,
    ok: &Tally,
) -> anyhow::Result<(Instant, PerMessage)> {
    let before = env.cpu();
    let worker = Running::start(env, topology, handler).await?;
    let end = ok.wait(env.stall).await;
    worker.stop().await;
    let cpu = before.per_message(&env.cpu(), env.messages, false);
    let end = end.map_err(|s| {
        anyhow::anyhow!("stalled: {} of {} messages handled", s.unique, env.messages)
    })?;
    expect_empty(env, env.work_queue(topology)).await?;
    Ok((end, cpu))
}

fn fail(id: &str, tally: &Tally, e: &anyhow::Error) -> Measurement {
    Measurement::failed(id, tally.counts(), format!("{e:#}"))
}

/// `courier.publish` then `courier.drain`: the Publisher fills the backlog (measured), the
/// worker drains it (measured).
pub async fn publish_and_drain(env: &Env) -> Vec<Measurement> {
    let n = env.messages;
    let queue = env.work_queue(&env.main).to_owned();
    let published = async {
        let p = publisher(env).await?;
        let before = env.cpu();
        let started = Instant::now();
        let failed = publish_all(&p, &env.main_exchange(), n, env.window).await;
        let elapsed = started.elapsed();
        let cpu = before.per_message(&env.cpu(), n, false);
        p.close().await;
        anyhow::ensure!(failed == 0, "{failed} publishes were not confirmed");
        env.scratch
            .expect_depth(&queue, n, Duration::from_secs(10))
            .await?;
        anyhow::Ok((elapsed, cpu))
    }
    .await;
    let publish = match published {
        Ok((elapsed, cpu)) => Measurement::new(
            "courier.publish",
            elapsed,
            Counts {
                expected: n,
                ..Counts::default()
            },
        )
        .with_cpu(cpu),
        Err(e) => {
            let counts = Counts {
                expected: n,
                lost: n,
                ..Counts::default()
            };
            return vec![Measurement::failed(
                "courier.publish",
                counts,
                format!("{e:#}"),
            )];
        }
    };
    let ok = Arc::new(Tally::new(n, false));
    let handler = BenchHandler {
        ok: ok.clone(),
        fail_first: None,
        latency: false,
    };
    let drained = match drain(env, &env.main, handler, &ok).await {
        Ok((end, cpu)) => {
            Measurement::new("courier.drain", ok.drain_time(end), ok.counts()).with_cpu(cpu)
        }
        Err(e) => fail("courier.drain", &ok, &e),
    };
    vec![publish, drained]
}

/// `courier.e2e`: Publisher and worker at once; from the first publish to the last message
/// handled, with publish-to-handler latency.
pub async fn end_to_end(env: &Env) -> Vec<Measurement> {
    let ok = Arc::new(Tally::new(env.messages, true));
    let run = async {
        let handler = BenchHandler {
            ok: ok.clone(),
            fail_first: None,
            latency: true,
        };
        let worker = Running::start(env, &env.main, handler).await?;
        // Connected and consuming before the clock starts, as the baseline's consumer is.
        if let Err(e) = worker.ready(Duration::from_secs(10)).await {
            worker.stop().await;
            return Err(e);
        }
        let p = match publisher(env).await {
            Ok(p) => p,
            Err(e) => {
                worker.stop().await;
                return Err(e);
            }
        };
        let before = env.cpu();
        let started = Instant::now();
        let exchange = env.main_exchange();
        let (failed, end) = tokio::join!(
            publish_all(&p, &exchange, env.messages, env.window),
            ok.wait(env.stall)
        );
        worker.stop().await;
        p.close().await;
        let cpu = before.per_message(&env.cpu(), env.messages, false);
        anyhow::ensure!(failed == 0, "{failed} publishes were not confirmed");
        let end = end.map_err(|s| {
            anyhow::anyhow!("stalled: {} of {} messages handled", s.unique, env.messages)
        })?;
        expect_empty(env, env.work_queue(&env.main)).await?;
        anyhow::Ok((end - started, cpu))
    };
    vec![match run.await {
        Ok((elapsed, cpu)) => Measurement::new("courier.e2e", elapsed, ok.counts()).with_cpu(cpu),
        Err(e) => fail("courier.e2e", &ok, &e),
    }]
}

/// `courier.retry`: a backlog where every message fails its first attempt, goes through the
/// 10 ms tier and succeeds on the second; from the first message handled to the last success.
pub async fn retry(env: &Env) -> Vec<Measurement> {
    let ok = Arc::new(Tally::new(env.messages, false));
    let failed = Arc::new(Tally::new(env.messages, false));
    let run = async {
        fill(env, &env.retry).await?;
        let handler = BenchHandler {
            ok: ok.clone(),
            fail_first: Some(failed.clone()),
            latency: false,
        };
        let (end, cpu) = drain(env, &env.retry, handler, &ok).await?;
        // From the first (failing) attempt, not the first success 10 ms later.
        let elapsed = failed.drain_time(end);
        let first = failed.counts();
        anyhow::ensure!(
            first.lost == 0,
            "{} messages never had a failing first attempt (delivered as attempt > 1?)",
            first.lost
        );
        env.expect_empty(&env.retry).await?;
        anyhow::Ok((elapsed, cpu))
    };
    vec![match run.await {
        Ok((elapsed, cpu)) => Measurement::new("courier.retry", elapsed, ok.counts()).with_cpu(cpu),
        Err(e) => fail("courier.retry", &ok, &e),
    }]
}

/// `courier.http`: a backlog delivered by the built-in HTTP handler to a local server that
/// answers 200 at once; ids are counted by the server from `Idempotency-Key`.
pub async fn http(env: &Env) -> Vec<Measurement> {
    let seen = Arc::new(Tally::new(env.messages, false));
    let run = async {
        fill(env, &env.main).await?;
        let server = sink::HttpSink::start(seen.clone())?;
        let handler = HttpHandler::new(HttpConfig::new(format!("http://{}/", server.addr)))
            .context("HTTP handler")?;
        let r = drain(env, &env.main, handler, &seen).await;
        server.stop();
        r
    };
    vec![match run.await {
        // Client CPU includes the local HTTP server's thread.
        Ok((end, cpu)) => {
            Measurement::new("courier.http", seen.drain_time(end), seen.counts()).with_cpu(cpu)
        }
        Err(e) => fail("courier.http", &seen, &e),
    }]
}

/// Fills `topology`'s work queue with `env.messages` messages, the fastest way (unmeasured).
///
/// # Errors
/// When a publish is not confirmed or the queue does not hold them all.
pub async fn fill(env: &Env, topology: &Topology) -> anyhow::Result<()> {
    let target = raw::Target {
        exchange: topology
            .exchanges
            .first()
            .map(|e| e.name.clone())
            .unwrap_or_default(),
        routing_key: crate::env::ROUTING_KEY.to_owned(),
    };
    raw::publish(
        &env.url,
        &target,
        env.messages,
        env.window,
        payload::properties,
    )
    .await?;
    env.scratch
        .expect_depth(
            env.work_queue(topology),
            env.messages,
            Duration::from_secs(10),
        )
        .await
}
