//! Connection faults: the broker closing every connection, a broker restart, a frozen network
//! (no FIN/RST) caught by heartbeats, a connection reset mid-publish.

use crate::harness::*;
use crate::util::*;
use crate::{report, sink, LONG};
use courier::envelope;
use std::time::{Duration, Instant};

#[tokio::test]
async fn close_all_connections_three_times_under_load() {
    let t = TestTopology::fast("f.closeall").await;
    let sink = sink(5).await;
    let url = amqp_url();
    let args = ["--concurrency", "10", "--prefetch", "20"];
    let mut workers: Vec<WorkerProc> = (0..2)
        .map(|_| WorkerProc::spawn(&t, &url, &sink.url, &args))
        .collect();
    let p = publisher().await;
    let ids = publish_jobs(&p, &t.exchange(), "email", "ca", 1500).await;
    for round in 1..=3 {
        sink.wait_for(LONG, "progress", |r| r.len() >= round * 250)
            .await;
        rabbitmqctl(&["close_all_connections", "fault test"]);
    }
    let recovery = settle(&sink, &ids, LONG).await;
    let (lost, _) = report(
        "all connections closed by the broker, 3 times",
        "rabbitmqctl close_all_connections under load",
        &ids,
        &delivered_ids(&sink),
        recovery,
    );
    assert_eq!(lost, 0);
    for w in &mut workers {
        assert!(
            w.alive(),
            "a worker died instead of reconnecting: {}",
            w.logs()
        );
        assert!(w.term().await.success());
    }
}

#[tokio::test]
async fn broker_restart_under_load_for_workers_and_a_file_publisher() {
    let t = TestTopology::fast("f.restart").await;
    let sink = sink(5).await;
    let url = amqp_url();
    let mut w = WorkerProc::spawn(
        &t,
        &url,
        &sink.url,
        &["--concurrency", "10", "--prefetch", "20"],
    );
    let file = std::env::temp_dir().join(format!("{}jobs.jsonl", t.prefix));
    let n = 4000;
    let ids: Vec<String> = (0..n).map(|i| format!("rs-{i}")).collect();
    let text: String = ids
        .iter()
        .map(|id| format!("{{\"routing_key\":\"email\",\"message_id\":\"{id}\",\"body\":{{\"to\":\"{id}\"}}}}\n"))
        .collect();
    std::fs::write(&file, text).expect("write");
    let publish = std::process::Command::new(env!("CARGO_BIN_EXE_courier"))
        .args(["publish", "--window", "64", "--retry-for", "120s", "--file"])
        .arg(&file)
        .env("AMQP_URL", &url)
        .env("COURIER_PREFIX", &t.prefix)
        .env("COURIER_TOPOLOGY", &t.file)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn_within(CHILD_DEADLINE);
    sink.wait_for(LONG, "progress", |r| r.len() >= 300).await;
    rabbitmqctl(&["stop_app"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    rabbitmqctl(&["start_app"]);
    let back = Instant::now();
    wait_broker(LONG).await;
    let out = tokio::task::spawn_blocking(move || publish.wait_with_output())
        .await
        .expect("join")
        .expect("publish output");
    assert!(
        out.status.success(),
        "courier publish did not survive the restart: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    settle(&sink, &ids, LONG).await;
    let (lost, _) = report(
        "broker restart (workers + `courier publish --file`)",
        "rabbitmqctl stop_app; 2 s; start_app, mid-publish and mid-delivery",
        &ids,
        &delivered_ids(&sink),
        back.elapsed(),
    );
    assert_eq!(lost, 0);
    assert!(w.alive(), "{}", w.logs());
    assert!(w.term().await.success());
}

#[tokio::test]
async fn frozen_network_is_detected_by_heartbeats() {
    let t = TestTopology::fast("f.freeze").await;
    let sink = sink(5).await;
    let proxy = Proxy::start("127.0.0.1:5672").await;
    let url = proxy.url("?heartbeat=2");
    let mut w = WorkerProc::spawn(
        &t,
        &url,
        &sink.url,
        &["--concurrency", "10", "--prefetch", "20"],
    );
    let p = publisher().await;
    let ids = publish_jobs(&p, &t.exchange(), "email", "fz", 600).await;
    sink.wait_for(LONG, "progress", |r| r.len() >= 100).await;
    proxy.freeze_existing();
    let frozen = Instant::now();
    let recovery = settle(&sink, &ids, LONG).await;
    let (lost, _) = report(
        "network frozen (no FIN/RST)",
        "TCP proxy stops forwarding on open connections; heartbeat 2 s",
        &ids,
        &delivered_ids(&sink),
        recovery,
    );
    let _ = frozen;
    assert_eq!(lost, 0);
    assert!(w.logs().contains("lost the consumer"), "{}", w.logs());
    assert!(w.term().await.success());
}

#[tokio::test]
async fn connection_reset_mid_publish_is_republished() {
    let t = TestTopology::fast("f.reset").await;
    let proxy = Proxy::start("127.0.0.1:5672").await;
    let url = proxy.url("");
    let file = std::env::temp_dir().join(format!("{}jobs.jsonl", t.prefix));
    let n = 6000;
    let ids: Vec<String> = (0..n).map(|i| format!("rst-{i}")).collect();
    let text: String = ids
        .iter()
        .map(|id| format!("{{\"routing_key\":\"email\",\"message_id\":\"{id}\",\"body\":{{}}}}\n"))
        .collect();
    std::fs::write(&file, text).expect("write");
    let publish = std::process::Command::new(env!("CARGO_BIN_EXE_courier"))
        .args(["publish", "--window", "128", "--file"])
        .arg(&file)
        .env("AMQP_URL", &url)
        .env("COURIER_PREFIX", &t.prefix)
        .env("COURIER_TOPOLOGY", &t.file)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn_within(CHILD_DEADLINE);
    let queue = t.name("notifications.email");
    wait_depth(&queue, 500, LONG).await;
    proxy.reset_existing();
    let cut = Instant::now();
    let out = tokio::task::spawn_blocking(move || publish.wait_with_output())
        .await
        .expect("join")
        .expect("output");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Count what arrived: every id at least once.
    let got: Vec<String> = drain(&queue)
        .await
        .into_iter()
        .filter_map(|m| envelope::message_id(&m.delivery.properties).map(str::to_owned))
        .collect();
    let (lost, _) = report(
        "connection reset mid-publish",
        "TCP proxy resets the publisher's connection during `courier publish --file`",
        &ids,
        &got,
        cut.elapsed(),
    );
    assert_eq!(lost, 0);
}
