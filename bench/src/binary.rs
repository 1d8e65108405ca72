//! The `courier work` binary as users run it, against a raw-lapin consumer tuned by hand, on
//! the same backlog at the same prefetch.
//!
//! Each side drains a backlog of `--messages` valid messages (the 512-byte JSON body, a
//! message id, priority 5) from the default topology's email work queue:
//!
//! - binary: `courier work --queue notifications.email --handler noop --prefetch P` as a
//!   child process (default logging, no metrics address), stopped with SIGTERM once no message
//!   is ready and the process has gone idle (its last window handled and acked); it must exit
//!   successfully.
//! - raw: [`raw::consume_acking`] in this process, one `basic.ack(multiple)` every half
//!   prefetch window (and after a millisecond of quiet), counting every id.
//!
//! Both are timed the same way, by the same observer: the queue's ready count polled every
//! 10 ms (passive declares on the control connection), from the first poll that sees a message
//! taken to the first poll that sees none ready. The last prefetch window (at most P messages
//! delivered, not yet acked) is therefore not in the time, for either side. Nothing is lost
//! when, after the consumer has gone (so anything unacked is back), the work queue, its retry
//! tiers and the dead-letter queue are all empty; the raw side also counts every id.
//!
//! Within a round the two sides alternate per prefetch (raw first in odd rounds, binary first
//! in even ones), so a drift of the machine's load hits both.

use crate::env::{Env, ROUTING_KEY};
use crate::payload;
use crate::raw;
use crate::report::Measurement;
use crate::tally::{Counts, Tally};
use anyhow::Context;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The prefetches compared, with the scenario ids of the raw and the binary side.
pub const SIDES: [(u16, &str, &str); 2] = [
    (200, "baseline.half.p200", "binary.drain.p200"),
    (500, "baseline.half.p500", "binary.drain.p500"),
];

/// How often the queue depth is polled.
const POLL: Duration = Duration::from_millis(10);

/// A worker whose CPU time does not move for this long has nothing left to do (`/proc` counts
/// in 10 ms ticks; a worker handling messages uses far more than one tick per 300 ms).
const IDLE: Duration = Duration::from_millis(300);

/// Every measurement of one round: per prefetch, raw and binary (order flips every round).
pub async fn round(env: &Env, courier: &Path, round: u32) -> Vec<Measurement> {
    let mut out = Vec::new();
    for (prefetch, raw_id, binary_id) in SIDES {
        let raw_first = round % 2 == 1;
        for raw_side in [raw_first, !raw_first] {
            env.reset().await;
            out.push(if raw_side {
                raw_drain(env, raw_id, prefetch).await
            } else {
                binary_drain(env, courier, binary_id, prefetch).await
            });
        }
    }
    out
}

/// Puts `env.messages` valid messages (priority 5) into the email work queue (unmeasured).
async fn fill(env: &Env, queue: &str) -> anyhow::Result<()> {
    let target = raw::Target {
        exchange: env.main_exchange(),
        routing_key: ROUTING_KEY.to_owned(),
    };
    raw::publish(&env.url, &target, env.messages, env.window, |seq| {
        payload::properties(seq).with_priority(5)
    })
    .await?;
    env.scratch
        .expect_depth(queue, env.messages, Duration::from_secs(30))
        .await
}

/// Polls `queue` until a message has been taken and then until none is ready; returns both
/// instants. Fails when the depth does not move for `env.stall`.
async fn watch(env: &Env, queue: &str) -> anyhow::Result<(Instant, Instant)> {
    let n = env.messages;
    let mut first = None;
    let mut last = (u64::MAX, Instant::now());
    loop {
        let d = u64::from(env.scratch.depth(queue).await?);
        let now = Instant::now();
        if d < n && first.is_none() {
            first = Some(now);
        }
        if d == 0 {
            return Ok((first.unwrap_or(now), now));
        }
        if d != last.0 {
            last = (d, now);
        } else if last.1.elapsed() > env.stall {
            anyhow::bail!("stalled with {d} of {n} messages still ready in {queue}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until process `pid` has used no CPU for [`IDLE`] (at most `limit`).
async fn idle(pid: u32, limit: Duration) {
    let started = Instant::now();
    let mut last = (crate::cpu::process_seconds(pid), Instant::now());
    while started.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = crate::cpu::process_seconds(pid);
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() >= IDLE {
            return;
        }
    }
}

/// Messages left anywhere the worker could have put them: the work queue, its retry tiers,
/// the dead-letter queue.
async fn left_over(env: &Env) -> anyhow::Result<(u64, Vec<String>)> {
    let mut total = 0u64;
    let mut where_ = Vec::new();
    for q in &env.main.queues {
        let d = u64::from(env.scratch.depth(&q.name).await?);
        if d > 0 {
            total += d;
            where_.push(format!("{d} in {}", q.name));
        }
    }
    Ok((total, where_))
}

/// The raw-lapin side: acks every half prefetch window.
async fn raw_drain(env: &Env, id: &str, prefetch: u16) -> Measurement {
    let n = env.messages;
    let queue = env.work_queue(&env.main).to_owned();
    let tally = Arc::new(Tally::new(n, false));
    let run = async {
        fill(env, &queue).await?;
        let before = env.cpu();
        let stop = CancellationToken::new();
        let mut consumer = tokio::spawn({
            let (url, queue, tally, stop) =
                (env.url.clone(), queue.clone(), tally.clone(), stop.clone());
            let batch = u64::from(prefetch / 2).max(1);
            async move {
                raw::consume_acking(&url, &queue, prefetch, batch, tally, false, stop, None).await
            }
        });
        // The consumer ends by itself once every id is in (then the watch sees 0 ready a poll
        // later); it ending with an error ends the scenario.
        let watching = watch(env, &queue);
        tokio::pin!(watching);
        let mut consumed = None;
        let watched = loop {
            tokio::select! {
                w = &mut watching => break w,
                r = &mut consumer, if consumed.is_none() => {
                    match r.map_err(anyhow::Error::from).and_then(|r| r) {
                        Ok(()) => consumed = Some(()),
                        Err(e) => break Err(e),
                    }
                }
            }
        };
        let (first, empty) = match watched {
            Ok(w) => w,
            Err(e) => {
                stop.cancel();
                if consumed.is_none() && !consumer.is_finished() {
                    let _ = consumer.await;
                }
                return Err(e);
            }
        };
        // The last window is delivered; wait for it so every id is counted and acked.
        let done = tally.wait(env.stall).await;
        stop.cancel();
        if consumed.is_none() {
            consumer.await??;
        }
        let cpu = before.per_message(&env.cpu(), n, false);
        done.map_err(|s| anyhow::anyhow!("stalled: {} of {n} messages consumed", s.unique))?;
        let (left, where_) = left_over(env).await?;
        anyhow::ensure!(left == 0, "{left} messages left: {}", where_.join(", "));
        anyhow::Ok((empty - first, cpu))
    };
    match run.await {
        Ok((elapsed, cpu)) => Measurement::new(id, elapsed, tally.counts()).with_cpu(cpu),
        Err(e) => Measurement::failed(id, tally.counts(), format!("{e:#}")),
    }
}

/// The binary side: `courier work --handler noop` as a child process.
async fn binary_drain(env: &Env, courier: &Path, id: &str, prefetch: u16) -> Measurement {
    let n = env.messages;
    let queue = env.work_queue(&env.main).to_owned();
    let mut counts = Counts {
        expected: n,
        lost: n,
        ..Counts::default()
    };
    let run = async {
        fill(env, &queue).await?;
        let log_path = env.tmp.join(format!("{id}.log"));
        let log = std::fs::File::create(&log_path)?;
        let before = env.cpu();
        let started = Instant::now();
        let mut child = env
            .noop_worker(courier, prefetch, log)
            // The worker's defaults (logging, concurrency, no metrics), whatever the bench's
            // own environment says.
            .env_remove("RUST_LOG")
            .env_remove("COURIER_LOG_FORMAT")
            .env_remove("COURIER_CONCURRENCY")
            .env_remove("COURIER_METRICS_ADDR")
            .spawn()
            .with_context(|| format!("cannot start {}", courier.display()))?;
        let pid = child.id().context("the worker exited at once")?;
        let watched = tokio::select! {
            w = watch(env, &queue) => w,
            s = child.wait() => Err(anyhow::anyhow!(
                "the worker exited early with {} (log: {})",
                s.map_or_else(|e| e.to_string(), |s| s.to_string()),
                log_path.display()
            )),
        };
        // Ready 0 still leaves up to a prefetch window delivered but not handled (a SIGTERM
        // now would send those back), so wait until the worker is idle: its CPU time stops
        // growing once the last window is handled and acked.
        if watched.is_ok() {
            idle(pid, env.stall).await;
        }
        // SIGTERM, the way an orchestrator stops it: it finishes in-flight work, acks, closes.
        let _ = tokio::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await;
        let status = match tokio::time::timeout(Duration::from_secs(45), child.wait()).await {
            Ok(s) => s.ok(),
            Err(_) => {
                let _ = child.kill().await;
                None
            }
        };
        let cpu = before.per_message(&env.cpu(), n, true);
        let (first, empty) = watched?;
        eprintln!(
            "courier-bench: binary: prefetch {prefetch}: first message taken {:.0} ms after the process started",
            first.saturating_duration_since(started).as_secs_f64() * 1e3
        );
        anyhow::ensure!(
            status.is_some_and(|s| s.success()),
            "the worker did not exit cleanly on SIGTERM ({}; log: {})",
            status.map_or_else(|| "killed after 45 s".to_owned(), |s| s.to_string()),
            log_path.display()
        );
        // The worker is gone, so anything it did not ack is back in the queue by now.
        let (left, where_) = left_over(env).await?;
        counts.lost = left;
        anyhow::ensure!(left == 0, "{left} messages left: {}", where_.join(", "));
        anyhow::Ok((empty - first, cpu))
    };
    match run.await {
        Ok((elapsed, cpu)) => Measurement::new(id, elapsed, counts).with_cpu(cpu),
        Err(e) => Measurement::failed(id, counts, format!("{e:#}")),
    }
}
