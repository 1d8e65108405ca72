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
//!
//! The `traces` group (issue 18) is the binary's drain at prefetch 200 twice: without a trace
//! exporter (`binary.untraced.p200`) and with `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` naming a
//! local port nothing listens on (`binary.traced.p200`), so every span is made and every export
//! request fails; the order flips every round too. Both sides serve `/metrics` on a local port,
//! scraped once the worker is idle: the traced side must show spans failed, dropped or
//! exported (the exporter was really on), the untraced side none.

use crate::env::{Env, ROUTING_KEY};
use crate::payload;
use crate::raw;
use crate::report::{Measurement, TraceSpans};
use crate::sink::HttpSink;
use crate::tally::{Counts, Tally};
use anyhow::Context;
use courier::topology::Topology;
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

/// The end-to-end pair (raw consumer, binary), at prefetch [`E2E_PREFETCH`].
pub const E2E: (&str, &str) = ("baseline.half.e2e", "binary.e2e");

/// The retry-hop pair (raw lapin + reqwest, binary with `--handler http`).
pub const RETRY: (&str, &str) = ("baseline.http-retry", "binary.retry");

/// The `traces` group: the binary's drain without and with a (dead) trace exporter.
pub const TRACES: (&str, &str) = ("binary.untraced.p200", "binary.traced.p200");

/// The `traces` group's prefetch (the worker's default).
const TRACES_PREFETCH: u16 = 200;

/// Every scenario id of the group, for "not measured" notes.
pub const IDS: [&str; 8] = [
    SIDES[0].1, SIDES[0].2, SIDES[1].1, SIDES[1].2, E2E.0, E2E.1, RETRY.0, RETRY.1,
];

/// The worker's default prefetch, used by the end-to-end and retry pairs (and the `cluster`
/// group's).
pub const E2E_PREFETCH: u16 = 200;

/// Every measurement of one round: per prefetch, raw and binary, then end to end, then the
/// retry hop (raw first in odd rounds, binary first in even ones).
pub async fn round(env: &Env, courier: &Path, round: u32) -> Vec<Measurement> {
    let mut out = Vec::new();
    let raw_first = round % 2 == 1;
    for (prefetch, raw_id, binary_id) in SIDES {
        for raw_side in [raw_first, !raw_first] {
            env.reset().await;
            out.push(if raw_side {
                raw_drain(env, raw_id, prefetch).await
            } else {
                binary_drain(env, courier, binary_id, prefetch, None).await
            });
        }
    }
    for raw_side in [raw_first, !raw_first] {
        env.reset().await;
        out.push(if raw_side {
            raw_e2e(env, E2E.0).await
        } else {
            binary_e2e(env, courier, E2E.1).await
        });
    }
    for raw_side in [raw_first, !raw_first] {
        env.reset().await;
        out.push(if raw_side {
            raw_http_retry(env).await
        } else {
            binary_retry(env, courier).await
        });
    }
    out
}

/// The `traces` group's round: the drain without an exporter and with a dead one (untraced
/// first in odd rounds, traced first in even ones).
pub async fn traces_round(env: &Env, courier: &Path, round: u32) -> Vec<Measurement> {
    let mut out = Vec::new();
    let untraced_first = round % 2 == 1;
    for untraced in [untraced_first, !untraced_first] {
        env.reset().await;
        out.push(if untraced {
            binary_drain(env, courier, TRACES.0, TRACES_PREFETCH, Some(Export::Off)).await
        } else {
            binary_drain(env, courier, TRACES.1, TRACES_PREFETCH, Some(Export::Dead)).await
        });
    }
    out
}

/// A `traces` drain's exporter: none, or one pointed at a dead collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Export {
    /// No `OTEL_EXPORTER_OTLP_*` variable, no `--otlp-endpoint`: no span is made.
    Off,
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` names a local port nothing listens on.
    Dead,
}

/// A local TCP port free a moment ago (bound, then released): nothing listens on it.
fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("bind a local port")?;
    Ok(l.local_addr()?.port())
}

/// The `courier_trace_spans_*_total` counters on the worker's `/metrics` at `addr`. With a dead
/// collector they are read until they account for all `n` spans (the exporter sends a batch
/// when it is full or a second after its first span), for at most [`SPANS_SETTLE`].
async fn scrape_spans(addr: &str, export: Option<Export>, n: u64) -> anyhow::Result<TraceSpans> {
    let started = Instant::now();
    loop {
        let spans = scrape_spans_once(addr).await?;
        if export != Some(Export::Dead) || spans.total() >= n || started.elapsed() > SPANS_SETTLE {
            return Ok(spans);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How long [`scrape_spans`] waits for a dead collector's counters to account for every span.
const SPANS_SETTLE: Duration = Duration::from_secs(5);

/// One read of the span counters on the worker's `/metrics` at `addr`.
async fn scrape_spans_once(addr: &str) -> anyhow::Result<TraceSpans> {
    let text = reqwest::Client::new()
        .get(format!("http://{addr}/metrics"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .with_context(|| format!("GET http://{addr}/metrics of the worker"))?
        .text()
        .await?;
    let counter = |name: &str| {
        text.lines()
            .find_map(|l| {
                l.strip_prefix(name)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse::<f64>()
                    .ok()
            })
            .map(|v| v as u64)
    };
    Ok(TraceSpans {
        exported: counter("courier_trace_spans_exported_total").unwrap_or_default(),
        failed: counter("courier_trace_spans_failed_total").unwrap_or_default(),
        dropped: counter("courier_trace_spans_dropped_total").unwrap_or_default(),
    })
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
pub async fn left_over(env: &Env) -> anyhow::Result<(u64, Vec<String>)> {
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

/// A `courier work` child process of a scenario.
pub struct Worker {
    child: tokio::process::Child,
    pid: u32,
    log: std::path::PathBuf,
    started: Instant,
}

/// `courier work --handler http --endpoint <sink>` on `topology`, with the sink handed back; if
/// the worker does not start, the sink is stopped (its thread would outlive the run otherwise).
pub fn http_worker(
    env: &Env,
    id: &str,
    courier: &Path,
    topology: (&Topology, &Path),
    sink: HttpSink,
) -> anyhow::Result<(Worker, HttpSink)> {
    let endpoint = format!("http://{}/", sink.addr);
    let spawned = Worker::spawn(env, id, |log| {
        env.worker(
            courier,
            topology,
            &["--handler", "http", "--endpoint", &endpoint],
            E2E_PREFETCH,
            log,
        )
    });
    match spawned {
        Ok(w) => Ok((w, sink)),
        Err(e) => {
            sink.stop();
            Err(e)
        }
    }
}

impl Worker {
    /// Starts `cmd` (from [`Env::worker`]) with the worker's defaults for logging, concurrency
    /// and metrics, whatever the bench's own environment says; its stderr goes to `<id>.log`.
    pub fn spawn(
        env: &Env,
        id: &str,
        cmd: impl FnOnce(std::fs::File) -> tokio::process::Command,
    ) -> anyhow::Result<Self> {
        let log = env.tmp.join(format!("{id}.log"));
        let file = std::fs::File::create(&log)?;
        let started = Instant::now();
        let mut cmd = cmd(file);
        let child = cmd
            .env_remove("RUST_LOG")
            .env_remove("COURIER_LOG_FORMAT")
            .env_remove("COURIER_CONCURRENCY")
            .env_remove("COURIER_METRICS_ADDR")
            .spawn()
            .context("cannot start the courier binary")?;
        let pid = child.id().context("the worker exited at once")?;
        Ok(Self {
            child,
            pid,
            log,
            started,
        })
    }

    /// Runs `work` unless the worker exits first (an error naming its log).
    pub async fn during<T>(
        &mut self,
        work: impl std::future::Future<Output = anyhow::Result<T>>,
    ) -> anyhow::Result<T> {
        tokio::select! {
            w = work => w,
            s = self.child.wait() => Err(anyhow::anyhow!(
                "the worker exited early with {} (log: {})",
                s.map_or_else(|e| e.to_string(), |s| s.to_string()),
                self.log.display()
            )),
        }
    }

    /// Waits until the worker is idle (when `settle`), then stops it with SIGTERM, the way an
    /// orchestrator does: it finishes in-flight work, acks and closes, and must exit 0.
    async fn stop(mut self, env: &Env, settle: bool) -> anyhow::Result<()> {
        // No message ready still leaves up to a prefetch window delivered but not handled (a
        // SIGTERM now would send those back): its CPU time stops growing once they are acked.
        if settle {
            idle(self.pid, env.stall).await;
        }
        let _ = tokio::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .await;
        let status = match tokio::time::timeout(Duration::from_secs(45), self.child.wait()).await {
            Ok(s) => s.ok(),
            Err(_) => {
                let _ = self.child.kill().await;
                None
            }
        };
        anyhow::ensure!(
            status.is_some_and(|s| s.success()),
            "the worker did not exit cleanly on SIGTERM ({}; log: {})",
            status.map_or_else(|| "killed after 45 s".to_owned(), |s| s.to_string()),
            self.log.display()
        );
        Ok(())
    }
}

/// The binary side: `courier work --handler noop` as a child process. With `export` (the
/// `traces` group) it also serves `/metrics` on a local port, its trace exporter is off or
/// pointed at a dead collector, and the span counters are scraped once it is idle.
async fn binary_drain(
    env: &Env,
    courier: &Path,
    id: &str,
    prefetch: u16,
    export: Option<Export>,
) -> Measurement {
    let n = env.messages;
    let queue = env.work_queue(&env.main).to_owned();
    let mut counts = Counts {
        expected: n,
        lost: n,
        ..Counts::default()
    };
    let mut spans = None;
    let run = async {
        fill(env, &queue).await?;
        let metrics_addr = match export {
            Some(_) => Some(format!("127.0.0.1:{}", free_port()?)),
            None => None,
        };
        let collector = match export {
            Some(Export::Dead) => Some(format!("http://127.0.0.1:{}", free_port()?)),
            _ => None,
        };
        let before = env.cpu();
        let mut worker = Worker::spawn(env, id, |log| {
            let mut cmd = env.noop_worker(courier, prefetch, log);
            if export.is_some() {
                // Whatever the bench's own environment says, only the traced side exports.
                for var in [
                    "OTEL_EXPORTER_OTLP_ENDPOINT",
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    "OTEL_TRACES_SAMPLER",
                    "OTEL_TRACES_SAMPLER_ARG",
                ] {
                    cmd.env_remove(var);
                }
            }
            if let Some(addr) = &metrics_addr {
                cmd.args(["--metrics-addr", addr]);
            }
            if let Some(url) = &collector {
                cmd.env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", url);
            }
            cmd
        })?;
        let watched = worker.during(watch(env, &queue)).await;
        let scraped = match (&metrics_addr, &watched) {
            (Some(addr), Ok(_)) => {
                // Scraped once the last window is handled (the timed section is over).
                idle(worker.pid, env.stall).await;
                Some(worker.during(scrape_spans(addr, export, n)).await)
            }
            _ => None,
        };
        let stopped = worker_stop(worker, env, watched.is_ok()).await;
        let cpu = before.per_message(&env.cpu(), n, true);
        let ((first, empty), started) = (watched?, stopped?);
        eprintln!(
            "courier-bench: binary: prefetch {prefetch}: first message taken {:.0} ms after the process started",
            first.saturating_duration_since(started).as_secs_f64() * 1e3
        );
        // The worker is gone, so anything it did not ack is back in the queue by now.
        let (left, where_) = left_over(env).await?;
        counts.lost = left;
        anyhow::ensure!(left == 0, "{left} messages left: {}", where_.join(", "));
        if let Some(s) = scraped.transpose()? {
            eprintln!(
                "courier-bench: {id}: spans exported {}, failed {}, dropped {}",
                s.exported, s.failed, s.dropped
            );
            spans = Some(s);
            match export {
                Some(Export::Dead) => anyhow::ensure!(
                    s.total() > 0,
                    "the exporter was not on: no span failed, was dropped or exported"
                ),
                _ => anyhow::ensure!(
                    s.total() == 0,
                    "spans were made without an exporter ({s:?})"
                ),
            }
        }
        anyhow::Ok((empty - first, cpu))
    };
    let measured = run.await;
    let mut m = match measured {
        Ok((elapsed, cpu)) => Measurement::new(id, elapsed, counts).with_cpu(cpu),
        Err(e) => Measurement::failed(id, counts, format!("{e:#}")),
    };
    m.trace_spans = spans;
    m
}

/// Stops `worker` (see [`Worker::stop`]); returns when it was started.
pub async fn worker_stop(worker: Worker, env: &Env, settle: bool) -> anyhow::Result<Instant> {
    let started = worker.started;
    worker.stop(env, settle).await.map(|()| started)
}

/// Waits until `queue` has a consumer (`who`, for the error), at most 30 s.
pub async fn subscribed(env: &Env, queue: &str, who: &str) -> anyhow::Result<()> {
    let started = Instant::now();
    while env.scratch.consumers(queue).await? == 0 {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(30),
            "{who} did not subscribe to {queue} within 30 s"
        );
        tokio::time::sleep(POLL).await;
    }
    Ok(())
}

/// Publishes the run's N messages (priority 5) to the main exchange while a consumer is on the
/// email queue; returns the first publish and the first poll after the last confirm that sees
/// no message ready (the same observer as [`watch`], for both sides).
async fn publish_and_watch(env: &Env, queue: &str) -> anyhow::Result<(Instant, Instant)> {
    let target = raw::Target {
        exchange: env.main_exchange(),
        routing_key: ROUTING_KEY.to_owned(),
    };
    let p = raw::publish(&env.url, &target, env.messages, env.window, |seq| {
        payload::properties(seq).with_priority(5)
    })
    .await?;
    let mut last = (u32::MAX, Instant::now());
    loop {
        let d = env.scratch.depth(queue).await?;
        if d == 0 {
            return Ok((p.started, Instant::now()));
        }
        if d != last.0 {
            last = (d, Instant::now());
        } else if last.1.elapsed() > env.stall {
            anyhow::bail!("stalled with {d} messages still ready in {queue}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `baseline.half.e2e` (and the `cluster` group's `baseline.cluster.e2e`, as `id`): the raw
/// consumer (ack every P/2) on the queue first, then N confirmed publishes; from the first
/// publish to an empty queue.
pub async fn raw_e2e(env: &Env, id: &str) -> Measurement {
    let n = env.messages;
    let queue = env.work_queue(&env.main).to_owned();
    let tally = Arc::new(Tally::new(n, false));
    let run = async {
        let batch = u64::from(E2E_PREFETCH / 2);
        let consumer =
            raw::start_consumer(&env.url, &queue, E2E_PREFETCH, batch, tally.clone(), false)
                .await?;
        let before = env.cpu();
        let watched = publish_and_watch(env, &queue).await;
        let done = tally.wait(env.stall).await;
        consumer.stop.cancel();
        let consumed = consumer.task.await;
        let cpu = before.per_message_all(&env.cpu(), n);
        let (first, empty) = watched?;
        consumed??;
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

/// `binary.e2e` (and the `cluster` group's `binary.cluster.e2e`, as `id`): `courier work
/// --handler noop` consuming first, then N confirmed publishes from this process; from the
/// first publish to an empty queue.
pub async fn binary_e2e(env: &Env, courier: &Path, id: &str) -> Measurement {
    let n = env.messages;
    let queue = env.work_queue(&env.main).to_owned();
    let mut counts = Counts {
        expected: n,
        lost: n,
        ..Counts::default()
    };
    let run = async {
        let mut worker = Worker::spawn(env, id, |log| env.noop_worker(courier, E2E_PREFETCH, log))?;
        // Consuming before the clock starts, as the raw consumer is.
        let subscribed = worker.during(subscribed(env, &queue, "the worker")).await;
        let before = env.cpu();
        let watched = match subscribed {
            Ok(()) => worker.during(publish_and_watch(env, &queue)).await,
            Err(e) => Err(e),
        };
        let stopped = worker_stop(worker, env, watched.is_ok()).await;
        let cpu = before.per_message_all(&env.cpu(), n);
        let (first, empty) = watched?;
        stopped?;
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

/// `binary.retry`: a backlog of N in the retry topology's email queue (10 ms first tier),
/// delivered by `courier work --handler http` to a local server that answers every first
/// attempt 503 and every second 200; from the first request to the last success.
async fn binary_retry(env: &Env, courier: &Path) -> Measurement {
    let (id, n) = (RETRY.1, env.messages);
    let ok = Arc::new(Tally::new(n, false));
    let failed = Arc::new(Tally::new(n, false));
    let run = async {
        crate::courier_lib::fill(env, &env.retry).await?;
        let sink = HttpSink::start_failing_first(ok.clone(), failed.clone())?;
        let before = env.cpu();
        let (mut worker, sink) = http_worker(
            env,
            id,
            courier,
            (&env.retry, &env.retry_topology_file),
            sink,
        )?;
        let end = worker
            .during(async {
                ok.wait(env.stall).await.map_err(|s| {
                    anyhow::anyhow!("stalled: {} of {n} delivered on attempt 2", s.unique)
                })
            })
            .await;
        let stopped = worker_stop(worker, env, end.is_ok()).await;
        sink.stop();
        let cpu = before.per_message_all(&env.cpu(), n);
        let end = end?;
        stopped?;
        anyhow::ensure!(
            failed.counts().lost == 0,
            "{} messages never had a failing first attempt",
            failed.counts().lost
        );
        env.expect_empty(&env.retry).await?;
        anyhow::Ok((failed.drain_time(end), cpu))
    };
    match run.await {
        Ok((elapsed, cpu)) => Measurement::new(id, elapsed, ok.counts()).with_cpu(cpu),
        Err(e) => Measurement::failed(id, ok.counts(), format!("{e:#}")),
    }
}

/// `baseline.http-retry`: the same work as [`binary_retry`] by plain lapin and reqwest: consume
/// (prefetch 200), POST with the same headers the worker sends, on 503 a confirmed copy to the
/// 10 ms tier with `x-courier-attempts = 1` and then the ack, on 200 the ack.
async fn raw_http_retry(env: &Env) -> Measurement {
    let (id, n) = (RETRY.0, env.messages);
    let ok = Arc::new(Tally::new(n, false));
    let failed = Arc::new(Tally::new(n, false));
    let run = async {
        crate::courier_lib::fill(env, &env.retry).await?;
        let (work, tier, origin) = env.retry_route()?;
        let sink = HttpSink::start_failing_first(ok.clone(), failed.clone())?;
        let endpoint = format!("http://{}/", sink.addr);
        let client = reqwest::Client::new();
        let decide = |d: &lapin::message::Delivery| {
            let headers = d.properties.headers().as_ref();
            let attempt = courier::envelope::attempts(headers).saturating_add(1);
            let id = d
                .properties
                .message_id()
                .as_ref()
                .map(|m| m.to_string())
                .unwrap_or_default();
            let request = client
                .post(&endpoint)
                .header("content-type", "application/json")
                .header(courier::handler::http::IDEMPOTENCY_KEY, id)
                .header(courier::handler::http::X_COURIER_ATTEMPT, attempt)
                .body(d.data.clone());
            let (properties, tier, origin) = (d.properties.clone(), tier.clone(), origin.clone());
            raw::Decision::Later(Box::pin(async move {
                let failed = match request.send().await {
                    Ok(r) => {
                        let failed = !r.status().is_success();
                        let _ = r.bytes().await;
                        failed
                    }
                    // The server is local and up: treat a transport error as a failure.
                    Err(_) => true,
                };
                failed.then(|| {
                    let h = courier::envelope::retry_headers(
                        properties.headers().as_ref(),
                        attempt,
                        "HTTP 503 Service Unavailable (courier-bench)",
                        &origin,
                        courier::envelope::now_millis(),
                    );
                    (
                        raw::Target {
                            exchange: String::new(),
                            routing_key: tier,
                        },
                        courier::envelope::with_headers(&properties, h),
                    )
                })
            }))
        };
        let before = env.cpu();
        let (relayed, end) = raw::relay_until(
            &env.url,
            &work,
            E2E_PREFETCH,
            env.window,
            decide,
            None,
            ok.clone(),
            env.stall,
        )
        .await;
        sink.stop();
        let cpu = before.per_message_all(&env.cpu(), n);
        relayed?;
        let end = end
            .map_err(|s| anyhow::anyhow!("stalled: {} of {n} delivered on attempt 2", s.unique))?;
        env.expect_empty(&env.retry).await?;
        anyhow::Ok((failed.drain_time(end), cpu))
    };
    match run.await {
        Ok((elapsed, cpu)) => Measurement::new(id, elapsed, ok.counts()).with_cpu(cpu),
        Err(e) => Measurement::failed(id, ok.counts(), format!("{e:#}")),
    }
}
