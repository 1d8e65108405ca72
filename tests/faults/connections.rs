//! Connection faults: the broker closing every connection, a broker restart, a frozen network
//! (no FIN/RST) caught by heartbeats, a connection reset mid-publish. Each fault is shown to
//! land while work was in flight: messages left to deliver, a publisher still running.

use crate::census::*;
use crate::harness::*;
use crate::util::*;
use crate::{sink, LONG};
use std::time::{Duration, Instant};

/// JSON lines for `courier publish --file` with `n` ids `{tag}-{i}`.
fn job_lines(tag: &str, n: usize) -> (String, Vec<String>) {
    let ids: Vec<String> = (0..n).map(|i| format!("{tag}-{i}")).collect();
    let text: String = ids
        .iter()
        .map(|id| {
            format!("{{\"routing_key\":\"email\",\"message_id\":\"{id}\",\"body\":{{\"to\":\"{id}\"}}}}\n")
        })
        .collect();
    (text, ids)
}

/// A job file for `courier publish --file` with `n` ids `{tag}-{i}`.
fn job_file(t: &TestTopology, tag: &str, n: usize) -> (std::path::PathBuf, Vec<String>) {
    let file = std::env::temp_dir().join(format!("{}jobs.jsonl", t.prefix));
    let (text, ids) = job_lines(tag, n);
    std::fs::write(&file, text).expect("write the job file");
    (file, ids)
}

fn publish_file(
    t: &TestTopology,
    url: &str,
    file: &std::path::Path,
    args: &[&str],
) -> DeadlineChild {
    std::process::Command::new(env!("CARGO_BIN_EXE_courier"))
        .arg("publish")
        .args(args)
        .arg("--file")
        .arg(file)
        .env("AMQP_URL", url)
        .env("COURIER_PREFIX", &t.prefix)
        .env("COURIER_TOPOLOGY", &t.file)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn_within(CHILD_DEADLINE)
}

async fn finish(child: DeadlineChild) -> std::process::Output {
    tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("join")
        .expect("publish output")
}

#[tokio::test]
async fn close_all_connections_three_times_under_load() {
    let t = TestTopology::fast("f.closeall").await;
    let sink = sink(5).await;
    let url = amqp_url();
    let args = ["--concurrency", "10", "--prefetch", "20"];
    let mut workers: Vec<WorkerProc> = (0..2)
        .map(|_| WorkerProc::spawn_watched(&t, &url, &sink.url, &args))
        .collect();
    let p = publisher().await;
    let ids = publish_jobs(&p, &t.exchange(), "email", "ca", 1500).await;
    for round in 1..=3 {
        sink.wait_for(LONG, "progress", |r| r.len() >= round * 250)
            .await;
        workers[0].wait_holding(LONG).await;
        rabbitmqctl(&["close_all_connections", "fault test"]);
        assert!(
            sink.all().len() < ids.len(),
            "round {round} closed an idle fleet"
        );
    }
    let recovery = settle(&sink, &ids, LONG).await;
    for w in &mut workers {
        assert!(
            w.alive(),
            "a worker died instead of reconnecting: {}",
            w.logs()
        );
        assert!(w.term().await.success(), "{}", w.logs());
    }
    let c = Census::of_delivery(&t, &sink, &ids).await;
    // Each close hands back what both workers held: at most 2 × 20 per round.
    c.assert_all_delivered(3 * 2 * 20);
    c.row(
        "all connections closed by the broker, 3 times",
        "rabbitmqctl close_all_connections under load, while workers held messages",
        recovery,
    )
    .passed();
}

#[tokio::test]
async fn broker_restart_under_load_for_workers_and_a_file_publisher() {
    let t = TestTopology::fast("f.restart").await;
    let sink = sink(5).await;
    let url = amqp_url();
    let mut w = WorkerProc::spawn_watched(
        &t,
        &url,
        &sink.url,
        &["--concurrency", "10", "--prefetch", "20"],
    );
    // The publisher goes through a proxy that holds each chunk from the broker 5 ms: with a
    // window of 8 it cannot confirm more than ~1,600 a second, so the restart lands
    // mid-publish however fast the machine is.
    let proxy = Proxy::start_with_delay(Duration::from_millis(5)).await;
    let (file, ids) = job_file(&t, "rs", 4000);
    let mut publish = publish_file(
        &t,
        &proxy.url(""),
        &file,
        &["--window", "8", "--retry-for", "120s"],
    );
    sink.wait_for(LONG, "progress", |r| r.len() >= 100).await;
    let held = w.wait_holding(LONG).await;
    let stopped = BrokerFault::inject(&["stop_app"], &["start_app"]);
    assert!(
        matches!(publish.try_wait(), Ok(None)),
        "the publisher exited before the broker stopped: {:?}",
        publish.try_wait()
    );
    assert!(
        held > 0 && sink.all().len() < ids.len(),
        "the restart hit an idle worker"
    );
    // Down long enough for every client to notice and start retrying.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stopped.end();
    let back = Instant::now();
    wait_broker(LONG).await;
    let out = finish(publish).await;
    assert!(
        out.status.success(),
        "courier publish did not survive the restart: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    settle(&sink, &ids, LONG).await;
    let recovery = back.elapsed();
    assert!(w.alive(), "{}", w.logs());
    assert!(w.term().await.success(), "{}", w.logs());
    let c = Census::of_delivery(&t, &sink, &ids).await;
    // Duplicates: the worker's unacked window and the publisher's unconfirmed window.
    c.assert_all_delivered(20 + 8);
    c.row(
        "broker restart (workers + `courier publish --file`)",
        "rabbitmqctl stop_app; 2 s; start_app, mid-publish (confirms slowed by a proxy) and mid-delivery",
        recovery,
    )
    .passed();
}

#[tokio::test]
async fn frozen_network_is_detected_by_heartbeats() {
    let t = TestTopology::fast("f.freeze").await;
    let sink = sink(5).await;
    let proxy = Proxy::start().await;
    let url = proxy.url("?heartbeat=2");
    let mut w = WorkerProc::spawn_watched(
        &t,
        &url,
        &sink.url,
        &["--concurrency", "10", "--prefetch", "20"],
    );
    let p = publisher().await;
    let ids = publish_jobs(&p, &t.exchange(), "email", "fz", 600).await;
    sink.wait_for(LONG, "progress", |r| r.len() >= 100).await;
    w.wait_holding(LONG).await;
    let frozen = proxy.freeze_existing();
    assert!(frozen >= 1, "no worker connection went through the proxy");
    assert!(sink.all().len() < ids.len(), "froze an idle worker");
    let recovery = settle(&sink, &ids, LONG).await;
    assert!(w.logs().contains("lost the consumer"), "{}", w.logs());
    assert!(w.term().await.success(), "{}", w.logs());
    let c = Census::of_delivery(&t, &sink, &ids).await;
    // The frozen connection's unacked window is redelivered once the broker drops it.
    c.assert_all_delivered(20);
    c.row(
        "network frozen (no FIN/RST)",
        "TCP proxy stops forwarding on open connections; heartbeat 2 s",
        recovery,
    )
    .passed();
}

#[tokio::test]
async fn connection_reset_mid_publish_is_republished() {
    let t = TestTopology::fast("f.reset").await;
    let proxy = Proxy::start().await;
    let url = proxy.url("");
    let (file, ids) = job_file(&t, "rst", 6000);
    let mut publish = publish_file(&t, &url, &file, &["--window", "128"]);
    let queue = t.name("notifications.email");
    wait_depth(&queue, 500, LONG).await;
    let reset = proxy.reset_existing();
    assert!(
        matches!(publish.try_wait(), Ok(None)),
        "the publisher finished before the reset landed"
    );
    assert!(reset >= 1, "the publisher's connection was not open");
    let cut = Instant::now();
    let out = finish(publish).await;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    let mut c = Census::new(&ids);
    c.add_queues(&t).await;
    assert!(
        c.lost().is_empty() && c.unexpected().is_empty(),
        "{}",
        c.summary()
    );
    // Confirmed by the broker but the confirm lost with the connection: at most a window.
    assert!(c.duplicated() <= 128, "{}", c.summary());
    c.row(
        "connection reset mid-publish",
        "TCP proxy resets the publisher's connection during `courier publish --file`",
        cut.elapsed(),
    )
    .passed();
}
