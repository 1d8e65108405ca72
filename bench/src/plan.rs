//! The run: the baseline scenarios, and the rounds in which baseline and Courier alternate
//! (the environment they share is [`crate::env`], so scenarios never import the plan).
//!
//! Within a round each Courier scenario runs next to the baseline it is compared with, and the
//! order flips every round (baseline first in odd rounds, Courier first in even ones), so a
//! slow drift of the shared machine's load does not favour one side.

use crate::env::{Env, ROUTING_KEY};
use crate::report::{Measurement, Round};
use crate::tally::{Counts, Tally};
use crate::{binary, cluster, courier_lib, dlq, payload, peer, raw, shards};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Which scenario groups run, and what is missing for the others.
pub struct Selection {
    /// raw lapin publish, drain, end to end.
    pub baseline: bool,
    /// Courier publish, drain, end to end.
    pub courier: bool,
    /// Courier retry path.
    pub retry: bool,
    /// Courier HTTP path.
    pub http: bool,
    /// `courier-dlq` binary, or why it cannot be measured.
    pub dlq: Option<Result<PathBuf, String>>,
    /// Python peer, or why it cannot be measured.
    pub peer: Option<Result<(), String>>,
    /// The `courier` binary for the `binary` group, or why it cannot be measured.
    pub binary: Option<Result<PathBuf, String>>,
    /// The `courier` binary for the `traces` group, or why it cannot be measured.
    pub traces: Option<Result<PathBuf, String>>,
    /// The `cluster` group's environment and binary, when it runs.
    pub cluster: Option<cluster::Cluster>,
    /// The `shards` group's topologies and binary, when it runs.
    pub shards: Option<shards::Shards>,
}

#[derive(Debug, Clone, Copy)]
enum Step {
    BaselinePublishDrain,
    CourierPublishDrain,
    BaselineEndToEnd,
    CourierEndToEnd,
    BaselineRetry,
    Retry,
    Http,
    BaselineMove,
    Dlq,
    Peer,
    Binary,
    Traces,
    Cluster,
    Shards,
}

/// `baseline.publish` then `baseline.drain`.
async fn baseline_publish_and_drain(env: &Env) -> Vec<Measurement> {
    let n = env.messages;
    let queue = env.work_queue(&env.main).to_owned();
    let target = raw::Target {
        exchange: env.main_exchange(),
        routing_key: ROUTING_KEY.to_owned(),
    };
    let published = async {
        let before = env.cpu();
        let p = raw::publish(&env.url, &target, n, env.window, payload::properties).await?;
        let cpu = before.per_message(&env.cpu(), n, false);
        env.scratch
            .expect_depth(&queue, n, Duration::from_secs(10))
            .await?;
        anyhow::Ok((p, cpu))
    }
    .await;
    let publish = match published {
        Ok((p, cpu)) => Measurement::new(
            "baseline.publish",
            p.elapsed,
            Counts {
                expected: n,
                lost: n - p.confirmed.min(n),
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
                "baseline.publish",
                counts,
                format!("{e:#}"),
            )];
        }
    };
    let tally = Arc::new(Tally::new(n, false));
    let drained = async {
        let before = env.cpu();
        let end = raw_consume_until_done(env, &queue, &tally, None).await?;
        let cpu = before.per_message(&env.cpu(), n, false);
        anyhow::Ok((tally.drain_time(end), cpu))
    }
    .await;
    let drain = match drained {
        Ok((elapsed, cpu)) => {
            Measurement::new("baseline.drain", elapsed, tally.counts()).with_cpu(cpu)
        }
        Err(e) => Measurement::failed("baseline.drain", tally.counts(), format!("{e:#}")),
    };
    vec![publish, drain]
}

/// Runs the raw consumer on `queue` until `tally` is complete (or stalls), then checks that
/// everything was acked. Returns the instant the last message arrived.
async fn raw_consume_until_done(
    env: &Env,
    queue: &str,
    tally: &Arc<Tally>,
    ready: Option<tokio::sync::oneshot::Sender<()>>,
) -> anyhow::Result<std::time::Instant> {
    let stop = CancellationToken::new();
    let consumer = tokio::spawn({
        let (url, queue, tally, stop) = (
            env.url.clone(),
            queue.to_owned(),
            tally.clone(),
            stop.clone(),
        );
        let prefetch = env.prefetch;
        async move { raw::consume(&url, &queue, prefetch, tally, false, stop, ready).await }
    });
    let end = tally.wait(env.stall).await;
    stop.cancel();
    consumer.await??;
    let end = end.map_err(|s| {
        anyhow::anyhow!(
            "stalled: {} of {} messages consumed",
            s.unique,
            env.messages
        )
    })?;
    let left = env.scratch.depth(queue).await?;
    anyhow::ensure!(left == 0, "{left} messages were consumed but not acked");
    Ok(end)
}

/// `baseline.e2e`: raw publisher and raw consumer at once, from the first publish to the last
/// message consumed, with publish-to-consumer latency.
async fn baseline_end_to_end(env: &Env) -> Vec<Measurement> {
    let n = env.messages;
    let queue = env.work_queue(&env.main).to_owned();
    let tally = Arc::new(Tally::new(n, true));
    let run = async {
        // Consuming before the clock starts, like Courier's worker in its end-to-end run.
        let consumer = raw::start_consumer(
            &env.url,
            &queue,
            env.prefetch,
            raw::batch_for(env.prefetch),
            tally.clone(),
            true,
        )
        .await?;
        let target = raw::Target {
            exchange: env.main_exchange(),
            routing_key: ROUTING_KEY.to_owned(),
        };
        let before = env.cpu();
        let (published, end) = tokio::join!(
            raw::publish(&env.url, &target, n, env.window, payload::properties),
            tally.wait(env.stall)
        );
        consumer.stop.cancel();
        consumer.task.await??;
        let cpu = before.per_message(&env.cpu(), n, false);
        let published = published?;
        let end = end.map_err(|s| anyhow::anyhow!("stalled: {} of {n} consumed", s.unique))?;
        let left = env.scratch.depth(&queue).await?;
        anyhow::ensure!(left == 0, "{left} messages were consumed but not acked");
        anyhow::Ok((end - published.started, cpu))
    };
    vec![match run.await {
        Ok((elapsed, cpu)) => {
            Measurement::new("baseline.e2e", elapsed, tally.counts()).with_cpu(cpu)
        }
        Err(e) => Measurement::failed("baseline.e2e", tally.counts(), format!("{e:#}")),
    }]
}

/// `baseline.retry`: the retry path's broker work done by plain lapin on the same topology:
/// every first delivery is copied (with Courier's retry headers) to the 10 ms tier queue and
/// acked once the copy is confirmed; the second delivery is acked. Measured like Courier's.
async fn baseline_retry(env: &Env) -> Vec<Measurement> {
    let n = env.messages;
    let ok = Arc::new(Tally::new(n, false));
    let failed = Arc::new(Tally::new(n, false));
    let run = async {
        courier_lib::fill(env, &env.retry).await?;
        let (work, tier, origin) = env.retry_route()?;
        let decide = |d: &lapin::message::Delivery| {
            let headers = d.properties.headers().as_ref();
            let seq = payload::read(&d.data).map_or(u64::MAX, |s| s.seq);
            if courier::envelope::attempts(headers) > 0 {
                ok.record(seq, None);
                return raw::Decision::Now(None);
            }
            failed.record(seq, None);
            let h = courier::envelope::retry_headers(
                headers,
                1,
                "courier-bench: first attempt fails on purpose",
                &origin,
                courier::envelope::now_millis(),
            );
            raw::Decision::Now(Some((
                raw::Target {
                    exchange: String::new(),
                    routing_key: tier.clone(),
                },
                courier::envelope::with_headers(&d.properties, h),
            )))
        };
        let before = env.cpu();
        let (relayed, end) = raw::relay_until(
            &env.url,
            &work,
            env.prefetch,
            env.window,
            decide,
            None,
            ok.clone(),
            env.stall,
        )
        .await;
        let cpu = before.per_message(&env.cpu(), n, false);
        relayed?;
        let end = end.map_err(|s| anyhow::anyhow!("stalled: {} of {n} retried", s.unique))?;
        env.expect_empty(&env.retry).await?;
        anyhow::Ok((failed.drain_time(end), cpu))
    };
    vec![match run.await {
        Ok((elapsed, cpu)) => {
            Measurement::new("baseline.retry", elapsed, ok.counts()).with_cpu(cpu)
        }
        Err(e) => Measurement::failed("baseline.retry", ok.counts(), format!("{e:#}")),
    }]
}

/// `baseline.move`: what `courier-dlq replay` asks of the broker, done by plain lapin: N dead
/// letters consumed from the DLQ, each copied to the work exchange and acked once confirmed.
/// Timed from connecting to the last ack, like the replay process.
async fn baseline_move(env: &Env) -> Vec<Measurement> {
    let n = env.messages;
    let moved = Arc::new(Tally::new(n, false));
    let run = async {
        dlq::fill(env).await?;
        let target = raw::Target {
            exchange: env.main_exchange(),
            routing_key: ROUTING_KEY.to_owned(),
        };
        let decide = |d: &lapin::message::Delivery| {
            raw::Decision::Now(Some((target.clone(), d.properties.clone())))
        };
        let before = env.cpu();
        let started = std::time::Instant::now();
        // A prefetch that covers the confirm window, as `courier-dlq` sizes its own: with the
        // workers' prefetch the relay would wait on confirm latency, not on the broker.
        let prefetch = u16::try_from(env.window + 64).unwrap_or(u16::MAX);
        let (relayed, waited) = raw::relay_until(
            &env.url,
            &env.main.dead_letter_queue,
            prefetch,
            env.window,
            decide,
            Some(moved.clone()),
            moved.clone(),
            env.stall,
        )
        .await;
        let elapsed = started.elapsed();
        relayed?;
        waited.map_err(|s| anyhow::anyhow!("stalled: {} of {n} moved", s.unique))?;
        let cpu = before.per_message(&env.cpu(), n, false);
        env.scratch
            .expect_depth(env.work_queue(&env.main), n, Duration::from_secs(10))
            .await?;
        let left = env.scratch.depth(&env.main.dead_letter_queue).await?;
        anyhow::ensure!(left == 0, "{left} messages were not moved");
        anyhow::Ok((elapsed, cpu))
    };
    vec![match run.await {
        Ok((elapsed, cpu)) => {
            Measurement::new("baseline.move", elapsed, moved.counts()).with_cpu(cpu)
        }
        Err(e) => Measurement::failed("baseline.move", moved.counts(), format!("{e:#}")),
    }]
}

async fn step(env: &Env, sel: &Selection, s: Step, round: u32) -> Vec<Measurement> {
    if let Step::Cluster = s {
        // Another broker: the group resets its own queues.
        return match &sel.cluster {
            Some(c) => cluster::round(c, round).await,
            None => Vec::new(),
        };
    }
    if let Step::Shards = s {
        // Topologies of its own (each with its control connection): the group resets them.
        return match &sel.shards {
            Some(sh) => shards::round(sh, round).await,
            None => Vec::new(),
        };
    }
    env.reset().await;
    match s {
        Step::BaselinePublishDrain => baseline_publish_and_drain(env).await,
        Step::CourierPublishDrain => courier_lib::publish_and_drain(env).await,
        Step::BaselineEndToEnd => baseline_end_to_end(env).await,
        Step::CourierEndToEnd => courier_lib::end_to_end(env).await,
        Step::BaselineRetry => baseline_retry(env).await,
        Step::Retry => courier_lib::retry(env).await,
        Step::BaselineMove => baseline_move(env).await,
        Step::Http => courier_lib::http(env).await,
        Step::Dlq => match &sel.dlq {
            Some(Ok(bin)) => {
                let replay = dlq::replay(env, bin).await;
                env.reset().await;
                vec![replay, dlq::export(env, bin, round).await]
            }
            _ => Vec::new(),
        },
        Step::Peer => match &sel.peer {
            Some(Ok(())) => vec![peer::pika(env).await],
            _ => Vec::new(),
        },
        Step::Binary => match &sel.binary {
            Some(Ok(bin)) => binary::round(env, bin, round).await,
            _ => Vec::new(),
        },
        Step::Traces => match &sel.traces {
            Some(Ok(bin)) => binary::traces_round(env, bin, round).await,
            _ => Vec::new(),
        },
        Step::Cluster | Step::Shards => Vec::new(),
    }
}

fn enabled(sel: &Selection, s: Step) -> bool {
    match s {
        Step::BaselinePublishDrain | Step::BaselineEndToEnd => sel.baseline,
        Step::CourierPublishDrain | Step::CourierEndToEnd => sel.courier,
        Step::Retry | Step::BaselineRetry => sel.retry,
        Step::BaselineMove => sel.dlq.is_some(),
        Step::Http => sel.http,
        Step::Dlq => matches!(sel.dlq, Some(Ok(_))),
        Step::Peer => matches!(sel.peer, Some(Ok(()))),
        Step::Binary => matches!(sel.binary, Some(Ok(_))),
        Step::Traces => matches!(sel.traces, Some(Ok(_))),
        Step::Cluster => sel.cluster.is_some(),
        Step::Shards => sel.shards.is_some(),
    }
}

/// 1-minute load average.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Runs round `round` of `rounds`, printing each measurement as it completes.
pub async fn round(env: &Env, sel: &Selection, round: u32, rounds: u32) -> Round {
    use Step::*;
    let steps = if round % 2 == 1 {
        [
            BaselinePublishDrain,
            CourierPublishDrain,
            BaselineEndToEnd,
            CourierEndToEnd,
            BaselineRetry,
            Retry,
            Http,
            BaselineMove,
            Dlq,
            Peer,
            Binary,
            Traces,
            Cluster,
            Shards,
        ]
    } else {
        [
            Shards,
            Cluster,
            Traces,
            Binary,
            CourierPublishDrain,
            BaselinePublishDrain,
            CourierEndToEnd,
            BaselineEndToEnd,
            Peer,
            Dlq,
            BaselineMove,
            Http,
            Retry,
            BaselineRetry,
        ]
    };
    let load_before = load_average();
    let mut measurements = Vec::new();
    for s in steps.into_iter().filter(|s| enabled(sel, *s)) {
        for m in step(env, sel, s, round).await {
            let label = crate::report::scenario(&m.id).map_or(m.id.as_str(), |s| s.label);
            match &m.error {
                None => eprintln!(
                    "[round {round}/{rounds}] {label:<44} {:>8.0} msg/s  ({} msgs in {:.2}s, lost {}, dup {}{})",
                    m.rate,
                    m.messages,
                    m.seconds,
                    m.lost,
                    m.duplicated,
                    match (m.p50_ms, m.p99_ms) {
                        (Some(a), Some(b)) => format!(", p50 {a:.1} ms, p99 {b:.1} ms"),
                        _ => String::new(),
                    }
                ),
                Some(e) => eprintln!("[round {round}/{rounds}] {label:<44} FAILED: {e}"),
            }
            measurements.push(m);
        }
    }
    env.reset().await;
    Round {
        round,
        load_before,
        measurements,
    }
}
