//! Throughput of `courier-dlq` on a 100,000-message dead-letter queue, against a plain
//! confirmed-publish baseline (the library's `Publisher`, window 512) measured in the same run
//! on the same broker. Ignored by default (it takes a minute or two); run it in release mode:
//!
//! ```text
//! cargo test --release -p dlq-tool --test perf -- --ignored --nocapture
//! ```
//!
//! `PERF_N` changes the queue size. Peak memory (max RSS) of each command is read from
//! `/usr/bin/time -v` when it is installed.

mod util;

use courier::envelope::{now_millis, Reason};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use util::*;

/// Runs the tool; returns seconds and max RSS in MiB (if `/usr/bin/time` is there).
fn timed(env: &Env, args: &[&str]) -> (f64, Option<f64>) {
    let gnu_time = std::path::Path::new("/usr/bin/time").exists();
    let mut cmd = if gnu_time {
        let mut c = Command::new("/usr/bin/time");
        c.arg("-v").arg(env!("CARGO_BIN_EXE_courier-dlq"));
        let tool = env.command(&[]);
        for (k, v) in tool.get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        c
    } else {
        env.command(&[])
    };
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::null());
    let started = Instant::now();
    let out = cmd.output().expect("runs");
    let secs = started.elapsed().as_secs_f64();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?} failed:\n{err}");
    let rss = err
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Maximum resident set size (kbytes): ")
        })
        .and_then(|k| k.trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0);
    (secs, rss)
}

async fn seed(env: &Env, n: usize, tag: &str) -> f64 {
    let p = publisher_with_window(512).await;
    let now = now_millis();
    let msgs: Vec<_> = (0..n)
        .map(|i| {
            let (reason, error) = if i % 2 == 0 {
                (
                    Reason::MaxAttempts,
                    "HTTP 503 Service Unavailable: upstream busy",
                )
            } else {
                (Reason::Permanent, "HTTP 400 Bad Request: invalid address")
            };
            worker_dead_letter(env, &format!("{tag}-{i}"), "email", reason, error, now)
        })
        .collect();
    let started = Instant::now();
    publish_all(&p, msgs).await;
    let secs = started.elapsed().as_secs_f64();
    p.close().await;
    secs
}

async fn publisher_with_window(window: usize) -> courier::publisher::Publisher {
    courier::publisher::Publisher::connect(
        &parsed_url(),
        courier::publisher::PublisherConfig {
            name: "dlq perf baseline".to_owned(),
            window,
            ..Default::default()
        },
        courier::metrics::Metrics::new(),
    )
    .await
    .expect("connects")
}

fn line(what: &str, n: usize, secs: f64, baseline: f64, rss: Option<f64>) {
    let rate = n as f64 / secs;
    println!(
        "{what:<44} {n:>7} msgs {secs:>6.2}s {rate:>9.0}/s  {:>5.2}× baseline  {}",
        rate / baseline,
        rss.map_or_else(String::new, |m| format!("max RSS {m:.0} MiB"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "performance measurement; run in release with --ignored --nocapture"]
async fn throughput_on_a_100k_dead_letter_queue() {
    let n: usize = std::env::var("PERF_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let mut env = Env::new("perf").await;
    let sink = env
        .declare_queue("perf.sink", lapin::types::FieldTable::default())
        .await;
    let dlq = env.dlq();

    let secs = seed(&env, n, "a").await;
    let baseline = n as f64 / secs;
    wait_depth(&dlq, n as u32, Duration::from_secs(60)).await;
    println!();
    println!("baseline: library Publisher, confirmed, mandatory, window 512: {baseline:.0}/s ({n} msgs in {secs:.2}s)");
    line(
        "publish (baseline, seeding the DLQ)",
        n,
        secs,
        baseline,
        None,
    );

    let (s, rss) = timed(&env, &["stats", "--limit", "65535"]);
    line(
        "stats --limit 65535 (inspect + requeue)",
        65_535.min(n),
        s,
        baseline,
        rss,
    );
    let (s, rss) = timed(&env, &["list", "--json", "--limit", "65535"]);
    line(
        "list --json --limit 65535 > /dev/null",
        65_535.min(n),
        s,
        baseline,
        rss,
    );
    let (s, rss) = timed(&env, &["replay", "--dry-run"]);
    line(
        "replay --dry-run (65535 examined)",
        65_535.min(n),
        s,
        baseline,
        rss,
    );
    assert_eq!(depth(&dlq).await, n as u32, "inspection left everything");

    let (s, rss) = timed(
        &env,
        &["replay", "--reason", "permanent", "--to-queue", &sink],
    );
    line(
        "replay --reason permanent (half moves, half put back)",
        n,
        s,
        baseline,
        rss,
    );
    assert_eq!(depth(&sink).await, n as u32 / 2);
    let (s, rss) = timed(&env, &["replay", "--to-queue", &sink]);
    line("replay --to-queue (everything)", n / 2, s, baseline, rss);
    assert_eq!(depth(&dlq).await, 0);
    assert_eq!(depth(&sink).await, n as u32);

    let secs = seed(&env, n, "b").await;
    let baseline2 = n as f64 / secs;
    line("publish (baseline again)", n, secs, baseline2, None);
    let baseline = (baseline + baseline2) / 2.0;
    wait_depth(&dlq, n as u32, Duration::from_secs(60)).await;
    let (s, rss) = timed(&env, &["replay", "--to-queue", &sink]);
    line(
        "replay --to-queue (100k, all selected)",
        n,
        s,
        baseline,
        rss,
    );

    let secs = seed(&env, n, "c").await;
    line("publish (baseline again)", n, secs, n as f64 / secs, None);
    wait_depth(&dlq, n as u32, Duration::from_secs(60)).await;
    let file = TempFile::new("perf");
    let (s, rss) = timed(&env, &["export", "--out", file.path(), "--remove"]);
    line("export --remove", n, s, baseline, rss);
    assert_eq!(depth(&dlq).await, 0);
    let (s, rss) = timed(&env, &["import", file.path()]);
    line("import", n, s, baseline, rss);
    assert_eq!(depth(&dlq).await, n as u32);
    let (s, rss) = timed(&env, &["purge", "--yes"]);
    line("purge --yes", n, s, baseline, rss);
    println!("(ratios against the mean of the first two baselines: {baseline:.0}/s)");
}
