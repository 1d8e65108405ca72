//! The broker refusing work: a memory alarm (`connection.blocked`) and a full dead-letter queue
//! (`x-max-length`, `overflow=reject-publish`).

use crate::harness::*;
use crate::util::*;
use crate::{report, sink, LONG};
use courier::envelope;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[tokio::test]
async fn memory_alarm_blocks_publishers_without_loss() {
    let t = TestTopology::fast("f.alarm").await;
    let sink = sink(1).await;
    let url = amqp_url();
    let p = publisher().await;
    let early = publish_jobs(&p, &t.exchange(), "email", "pre", 200).await;
    rabbitmqctl(&["set_vm_memory_high_watermark", "0.0000001"]);
    let raised = Instant::now();
    // Workers keep consuming and acking during the alarm (acks are not publishes).
    let mut w = WorkerProc::spawn(&t, &url, &sink.url, &["--concurrency", "10"]);
    sink.wait_for(LONG, "deliveries during the alarm", |r| r.len() >= 200)
        .await;
    // A publisher during the alarm waits: it neither fails nor loses.
    let p2 = p.clone();
    let ex = t.exchange();
    let late = tokio::spawn(async move { publish_jobs(&p2, &ex, "email", "during", 50).await });
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !late.is_finished(),
        "publishes should be blocked by the alarm"
    );
    rabbitmqctl(&["set_vm_memory_high_watermark", "0.4"]);
    let late_ids = late.await.expect("publishes confirmed after the alarm");
    let mut ids = early;
    ids.extend(late_ids);
    settle(&sink, &ids, LONG).await;
    let (lost, dup) = report(
        "memory alarm (connection.blocked)",
        "set_vm_memory_high_watermark 1e-7 for ~3 s, then 0.4",
        &ids,
        &delivered_ids(&sink),
        raised.elapsed(),
    );
    assert_eq!((lost, dup), (0, 0));
    assert!(w.term().await.success());
}

#[tokio::test]
async fn a_full_dlq_keeps_the_original_and_counts_it() {
    let t = TestTopology::apply("f.dlqfull", "tests/fixtures/small-dlq.toml").await;
    let sink = Sink::start(Arc::new(|_| (400, vec![])), Duration::ZERO).await;
    let port = free_port();
    let metrics = format!("127.0.0.1:{port}");
    let mut w = WorkerProc::spawn(
        &t,
        &amqp_url(),
        &sink.url,
        &["--concurrency", "4", "--metrics-addr", &metrics],
    );
    let p = publisher().await;
    let ids = publish_jobs(&p, &t.exchange(), "email", "full", 4).await;
    sink.wait_for(LONG, "all attempted", |r| r.len() >= 4).await;
    // The DLQ holds 2: two dead letters fit, two are nacked and held by the worker.
    let deadline = Instant::now() + LONG;
    let text = loop {
        let text = reqwest::get(format!("http://{metrics}/metrics"))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        // Every family is served at 0 from the start: wait for a nack actually counted.
        let nacks = text
            .lines()
            .find_map(|l| l.strip_prefix("courier_publish_failures_total{kind=\"nack\"} "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        if nacks >= 1.0 {
            break text;
        }
        assert!(Instant::now() < deadline, "nack never counted:\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(text.contains("courier_publish_failures_total"));
    assert!(w.logs().contains("not confirmed"), "{}", w.logs());
    assert_eq!(
        depth(&t.name("notifications.email")).await,
        0,
        "held unacked, not lost"
    );
    // Make room: the held messages reach the DLQ; nothing was dropped.
    let start = Instant::now();
    let mut got: Vec<String> = Vec::new();
    while got.len() < 4 {
        assert!(Instant::now() < deadline, "got {got:?}");
        got.extend(
            drain(&t.dlq())
                .await
                .iter()
                .filter_map(|m| envelope::message_id(&m.delivery.properties).map(str::to_owned)),
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (lost, dup) = report(
        "dead-letter queue full",
        "DLQ x-max-length=2, overflow=reject-publish; 4 permanent failures",
        &ids,
        &got,
        start.elapsed(),
    );
    assert_eq!((lost, dup), (0, 0));
    assert!(w.term().await.success());
}
