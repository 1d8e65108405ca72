//! Memory under a large backlog: the real `courier work --handler noop --prefetch 1000` binary
//! as a child process, its resident set read from `/proc/<pid>/status` while it drains.
//!
//! `VmHWM` is the kernel's own high-water mark of the resident set, so the peak cannot fall
//! between two samples. Progress comes from the worker's `/metrics` (delivered count), which
//! also tells when it is done without touching the queue it consumes.

use crate::env::Env;
use crate::payload;
use crate::raw;
use crate::report::Memory;
use anyhow::Context;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The bar for a worker with prefetch 1,000.
pub const TARGET_MIB: f64 = 64.0;

/// A `/proc/<pid>/status` field in MiB (the kernel reports kB).
fn status_mib(pid: u32, field: &str) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    let kb: f64 = line
        .trim_start_matches(field)
        .trim_start_matches(':')
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// Messages the worker has finished as `delivered`, from its Prometheus endpoint.
async fn delivered(port: u16) -> Option<u64> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).await.ok()?;
    let sum = text
        .lines()
        .filter(|l| l.starts_with("courier_messages_total{") && l.contains("outcome=\"delivered\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>();
    Some(sum as u64)
}

fn free_port() -> anyhow::Result<u16> {
    // Bound and released at once; the child binds it a moment later.
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Fills a backlog of `backlog` messages and measures the worker draining it.
pub async fn run(env: &Env, courier: &Path, backlog: u64, prefetch: u16) -> Memory {
    let mut m = Memory {
        backlog,
        prefetch,
        peak_rss_mib: 0.0,
        rss_at_10pct_mib: None,
        rss_at_90pct_mib: None,
        rate: 0.0,
        delivered: 0,
        left_in_queue: 0,
        target_mib: TARGET_MIB,
        met: false,
        error: None,
    };
    if let Err(e) = measure(env, courier, &mut m).await {
        m.error = Some(format!("{e:#}"));
    }
    m.met = m.error.is_none()
        && m.peak_rss_mib > 0.0
        && m.peak_rss_mib < TARGET_MIB
        && m.delivered >= backlog
        && m.left_in_queue == 0;
    m
}

async fn measure(env: &Env, courier: &Path, m: &mut Memory) -> anyhow::Result<()> {
    let queue = env.work_queue(&env.main).to_owned();
    eprintln!(
        "courier-bench: memory: filling a backlog of {} messages ...",
        m.backlog
    );
    let target = raw::Target {
        exchange: env.main_exchange(),
        routing_key: crate::env::ROUTING_KEY.to_owned(),
    };
    raw::publish(
        &env.url,
        &target,
        m.backlog,
        env.window,
        payload::properties,
    )
    .await?;
    env.scratch
        .expect_depth(&queue, m.backlog, Duration::from_secs(60))
        .await?;
    let port = free_port()?;
    let log = std::fs::File::create(env.tmp.join("memory-worker.log"))?;
    eprintln!(
        "courier-bench: memory: draining it with {} work --handler noop --prefetch {} ...",
        courier.display(),
        m.prefetch
    );
    let started = Instant::now();
    let mut child = env
        .noop_worker(courier, m.prefetch, log)
        .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "warn")
        .spawn()
        .with_context(|| format!("cannot start {}", courier.display()))?;
    let pid = child.id().context("the worker exited at once")?;
    let mut last = (0u64, Instant::now());
    let result = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Ok(Some(status)) = child.try_wait() {
            break Err(anyhow::anyhow!(
                "the worker exited early with {status} (log: {})",
                env.tmp.join("memory-worker.log").display()
            ));
        }
        let rss = status_mib(pid, "VmRSS");
        if let Some(hwm) = status_mib(pid, "VmHWM") {
            m.peak_rss_mib = m.peak_rss_mib.max(hwm);
        }
        let Some(done) = delivered(port).await else {
            if started.elapsed() > Duration::from_secs(30) && last.0 == 0 {
                break Err(anyhow::anyhow!(
                    "no /metrics from the worker on port {port}"
                ));
            }
            continue;
        };
        m.delivered = done;
        if done * 10 >= m.backlog && m.rss_at_10pct_mib.is_none() {
            m.rss_at_10pct_mib = rss;
        }
        if done * 10 >= m.backlog * 9 && m.rss_at_90pct_mib.is_none() {
            m.rss_at_90pct_mib = rss;
        }
        if done >= m.backlog {
            m.rate = done as f64 / started.elapsed().as_secs_f64();
            break Ok(());
        }
        if done != last.0 {
            last = (done, Instant::now());
        } else if last.1.elapsed() > env.stall {
            break Err(anyhow::anyhow!(
                "stalled at {done} of {} messages delivered",
                m.backlog
            ));
        }
    };
    if let Some(hwm) = status_mib(pid, "VmHWM") {
        m.peak_rss_mib = m.peak_rss_mib.max(hwm);
    }
    // SIGTERM, the way an orchestrator stops it: it finishes in-flight work, acks, closes.
    let _ = tokio::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await;
    match tokio::time::timeout(Duration::from_secs(45), child.wait()).await {
        Ok(_) => {}
        Err(_) => {
            let _ = child.kill().await;
        }
    }
    result?;
    m.left_in_queue = u64::from(env.scratch.depth(&queue).await?);
    anyhow::ensure!(
        m.left_in_queue == 0,
        "{} messages were not acked",
        m.left_in_queue
    );
    Ok(())
}
