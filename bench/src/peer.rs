//! The peer users would pick instead: a Python pika consumer (`bench/peers/pika_worker.py`),
//! draining the same backlog on the same broker with the same prefetch and manual acks.

use crate::courier_lib;
use crate::env::Env;
use crate::report::Measurement;
use crate::tally::Counts;
use anyhow::Context;
use serde::Deserialize;
use std::process::Stdio;
use std::time::Duration;

/// The peer's source, embedded so the benchmark runs from any working directory.
pub const SCRIPT: &str = include_str!("../peers/pika_worker.py");

/// What the peer prints.
#[derive(Debug, Deserialize)]
struct Report {
    unique: u64,
    total: u64,
    foreign: u64,
    seconds: f64,
    stalled: bool,
}

/// Whether `python3` can import pika; the reason if not.
pub async fn available() -> Result<(), String> {
    let out = tokio::process::Command::new("python3")
        .args(["-c", "import pika; print(pika.__version__)"])
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("python3 cannot run: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err("python3 cannot import pika (`python3 -m pip install pika`)".to_owned())
    }
}

/// `peer.pika`: fill the work queue, let the peer drain it, count its ids.
pub async fn pika(env: &Env) -> Measurement {
    let n = env.messages;
    let run = async {
        courier_lib::fill(env, &env.main).await?;
        let script = env.tmp.join("pika_worker.py");
        std::fs::write(&script, SCRIPT).context("write the pika peer")?;
        let before = env.cpu();
        let child = tokio::process::Command::new("python3")
            .arg(&script)
            .env("AMQP_URL", &env.url_text)
            .args(["--queue", env.work_queue(&env.main)])
            .args(["--expected", &n.to_string()])
            .args(["--prefetch", &env.prefetch.to_string()])
            .args(["--stall", &env.stall.as_secs().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("start python3")?;
        let limit = env.stall * 4 + Duration::from_secs(n / 500);
        let out = tokio::time::timeout(limit, child.wait_with_output())
            .await
            .with_context(|| format!("the pika peer did not finish within {limit:?}"))??;
        let cpu = before.per_message(&env.cpu(), n, true);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let report: Report = stdout
            .lines()
            .last()
            .and_then(|l| serde_json::from_str(l).ok())
            .with_context(|| {
                format!(
                    "the pika peer printed no report (exit {}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                )
            })?;
        let counts = Counts {
            expected: n,
            lost: n.saturating_sub(report.unique),
            duplicated: report.total.saturating_sub(report.foreign + report.unique),
            foreign: report.foreign,
            p50_ms: None,
            p99_ms: None,
        };
        anyhow::ensure!(
            !report.stalled,
            "the pika peer stalled after {} of {n} messages",
            report.unique
        );
        let left = env.scratch.depth(env.work_queue(&env.main)).await?;
        anyhow::ensure!(left == 0, "{left} messages were not acked by the pika peer");
        anyhow::Ok((
            Duration::from_secs_f64(report.seconds.max(0.0)),
            counts,
            cpu,
        ))
    };
    match run.await {
        Ok((elapsed, counts, cpu)) => Measurement::new("peer.pika", elapsed, counts).with_cpu(cpu),
        Err(e) => Measurement::failed(
            "peer.pika",
            Counts {
                expected: n,
                lost: n,
                ..Counts::default()
            },
            format!("{e:#}"),
        ),
    }
}
