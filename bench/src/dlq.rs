//! `courier-dlq replay` and `export --remove` of N dead letters, timed as processes, the way an
//! operator runs them.
//!
//! The dead-letter queue is filled with messages carrying exactly the headers the worker writes
//! (`courier::envelope::dead_letter_headers`), pointing back at the benchmark's work queue.
//! Replay is checked by draining the work queue and counting ids; export by reading the file
//! back and counting ids; both by the dead-letter queue being empty afterwards.

use crate::cpu::PerMessage;
use crate::env::{Env, ROUTING_KEY};
use crate::payload;
use crate::raw;
use crate::report::Measurement;
use crate::tally::Tally;
use anyhow::Context;
use courier::envelope::{self, Origin, Reason};
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Puts `env.messages` dead letters into the DLQ (unmeasured).
///
/// # Errors
/// When a publish is not confirmed or the queue does not hold them all.
pub async fn fill(env: &Env) -> anyhow::Result<()> {
    let origin = Origin {
        exchange: env.main_exchange(),
        routing_key: ROUTING_KEY.to_owned(),
        queue: env.work_queue(&env.main).to_owned(),
    };
    let dead_lettered_at = envelope::now_millis();
    let props = |seq: u64| {
        let headers = envelope::dead_letter_headers(
            None,
            5,
            Reason::MaxAttempts,
            "HTTP 503 Service Unavailable (courier-bench)",
            &origin,
            dead_lettered_at,
        );
        envelope::with_headers(&payload::properties(seq), headers)
    };
    let target = raw::Target {
        exchange: String::new(),
        routing_key: env.main.dead_letter_queue.clone(),
    };
    raw::publish(&env.url, &target, env.messages, env.window, props).await?;
    env.scratch
        .expect_depth(
            &env.main.dead_letter_queue,
            env.messages,
            Duration::from_secs(10),
        )
        .await
}

/// Runs `courier-dlq <args>` against our prefix; returns its wall time and CPU.
async fn run_tool(env: &Env, bin: &Path, args: &[&str]) -> anyhow::Result<(Duration, PerMessage)> {
    let before = env.cpu();
    let started = Instant::now();
    let child = tokio::process::Command::new(bin)
        .arg("--prefix")
        .arg(&env.main.prefix)
        .arg("--topology")
        .arg(&env.main_topology_file)
        .args(args)
        .env("AMQP_URL", &env.url_text)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    let limit = env.stall * 4;
    let out = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .with_context(|| {
            format!(
                "courier-dlq {} did not finish within {limit:?}",
                args.join(" ")
            )
        })??;
    let elapsed = started.elapsed();
    let cpu = before.per_message(&env.cpu(), env.messages, true);
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(5).collect();
        anyhow::bail!(
            "courier-dlq {} exited with {}: {}",
            args.join(" "),
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        );
    }
    Ok((elapsed, cpu))
}

/// `dlq.replay`: N dead letters sent back to their work queue.
pub async fn replay(env: &Env, bin: &Path) -> Measurement {
    let back = Arc::new(Tally::new(env.messages, false));
    let run = async {
        fill(env).await?;
        let (elapsed, cpu) = run_tool(env, bin, &["replay"]).await?;
        // Every replayed copy must be in the work queue, once.
        let stop = CancellationToken::new();
        let consumer = tokio::spawn({
            let (url, queue) = (env.url.clone(), env.work_queue(&env.main).to_owned());
            let (tally, stop, prefetch) = (back.clone(), stop.clone(), env.prefetch);
            async move { raw::consume(&url, &queue, prefetch, tally, false, stop, None).await }
        });
        let waited = back.wait(env.stall).await;
        stop.cancel();
        consumer.await??;
        waited.map_err(|s| anyhow::anyhow!("only {} replayed messages arrived", s.unique))?;
        let left = env.scratch.depth(&env.main.dead_letter_queue).await?;
        anyhow::ensure!(left == 0, "{left} dead letters were not replayed");
        anyhow::Ok((elapsed, cpu))
    };
    match run.await {
        Ok((elapsed, cpu)) => Measurement::new("dlq.replay", elapsed, back.counts()).with_cpu(cpu),
        Err(e) => Measurement::failed("dlq.replay", back.counts(), format!("{e:#}")),
    }
}

/// `dlq.export`: N dead letters written to a JSONL file and removed from the queue.
pub async fn export(env: &Env, bin: &Path, round: u32) -> Measurement {
    let written = Tally::new(env.messages, false);
    let file = env.tmp.join(format!("export-{round}.jsonl"));
    let run = async {
        fill(env).await?;
        let _ = std::fs::remove_file(&file);
        let out = file.to_string_lossy().into_owned();
        let (elapsed, cpu) = run_tool(env, bin, &["export", "--out", &out, "--remove"]).await?;
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("read back {}", file.display()))?;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let v: serde_json::Value = serde_json::from_str(line).context("export line")?;
            match v["properties"]["message_id"].as_str() {
                Some(id) => written.record_id(id),
                None => written.record(u64::MAX, None),
            }
        }
        let left = env.scratch.depth(&env.main.dead_letter_queue).await?;
        anyhow::ensure!(left == 0, "{left} dead letters were not removed");
        anyhow::Ok((elapsed, cpu))
    };
    let result = run.await;
    let _ = std::fs::remove_file(&file);
    match result {
        Ok((elapsed, cpu)) => {
            Measurement::new("dlq.export", elapsed, written.counts()).with_cpu(cpu)
        }
        Err(e) => Measurement::failed("dlq.export", written.counts(), format!("{e:#}")),
    }
}

/// Whether `bin` has working `replay` and `export` subcommands; the reason if not.
pub async fn usable(bin: &Path) -> Result<(), String> {
    if !bin.exists() {
        return Err(format!("{} is not built", bin.display()));
    }
    for sub in ["replay", "export"] {
        let ok = tokio::process::Command::new(bin)
            .args([sub, "--help"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .is_ok_and(|s| s.success());
        if !ok {
            return Err(format!(
                "{} has no working `{sub}` subcommand",
                bin.display()
            ));
        }
    }
    Ok(())
}
