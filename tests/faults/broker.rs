//! The broker refusing work: a memory alarm (`connection.blocked`) and a full dead-letter queue
//! (`x-max-length`, `overflow=reject-publish`).

use crate::census::*;
use crate::harness::*;
use crate::util::*;
use crate::{sink, LONG};
use courier_testkit::queues::broker_queue;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[tokio::test]
async fn memory_alarm_blocks_publishers_without_loss() {
    let t = TestTopology::fast("f.alarm").await;
    let sink = sink(1).await;
    let url = amqp_url();
    // A publisher whose metrics the test reads: `courier_connection_blocked` shows the broker's
    // `connection.blocked` arrived.
    let metrics = courier::metrics::Metrics::new();
    let p = courier::publisher::Publisher::connect(
        &parsed_url(),
        courier::publisher::PublisherConfig::default(),
        metrics.clone(),
    )
    .await
    .expect("publisher connects");
    let early = publish_jobs(&p, &t.exchange(), "email", "pre", 200).await;
    let mut restore = vec!["set_vm_memory_high_watermark".to_owned()];
    restore.extend(memory_watermark());
    let restore: Vec<&str> = restore.iter().map(String::as_str).collect();
    let alarm = BrokerFault::inject(&["set_vm_memory_high_watermark", "0.0000001"], &restore);
    let raised = Instant::now();
    // Workers keep consuming and acking during the alarm (acks are not publishes).
    let mut w = WorkerProc::spawn(&t, &url, &sink.url, &["--concurrency", "10"]);
    sink.wait_for(LONG, "deliveries during the alarm", |r| r.len() >= 200)
        .await;
    // A publisher during the alarm waits: it neither fails nor loses.
    let p2 = p.clone();
    let ex = t.exchange();
    let confirmed = p.confirmed();
    let late = tokio::spawn(async move { publish_jobs(&p2, &ex, "email", "during", 50).await });
    let deadline = Instant::now() + LONG;
    while metrics.blocked.get() != 1 {
        assert!(
            Instant::now() < deadline,
            "connection.blocked never arrived"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !late.is_finished() && p.confirmed() == confirmed,
        "publishes should be blocked by the alarm"
    );
    alarm.end();
    let late_ids = late.await.expect("publishes confirmed after the alarm");
    let mut ids = early;
    ids.extend(late_ids);
    settle(&sink, &ids, LONG).await;
    let recovery = raised.elapsed();
    assert!(w.term().await.success(), "{}", w.logs());
    let c = Census::of_delivery(&t, &sink, &ids).await;
    c.assert_all_delivered(0);
    c.row(
        "memory alarm (connection.blocked)",
        "set_vm_memory_high_watermark 1e-7 until a publisher is blocked, then back",
        recovery,
    )
    .passed();
}

/// The broker's count of `queue`'s unacknowledged messages once it reaches `n` (the management
/// API samples every few seconds, so it is polled).
async fn wait_unacked(queue: &str, n: u64) {
    let deadline = Instant::now() + LONG;
    loop {
        let unacked = broker_queue(queue)
            .await
            .and_then(|q| q["messages_unacknowledged"].as_u64())
            .unwrap_or(0);
        if unacked == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{queue}: {unacked} unacknowledged, expected {n} held by the worker"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
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
    loop {
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
            break;
        }
        assert!(Instant::now() < deadline, "nack never counted:\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(w.logs().contains("not confirmed"), "{}", w.logs());
    let work = t.name("notifications.email");
    // Held, not lost: the broker itself counts the two originals as delivered, unacked.
    wait_unacked(&work, 2).await;
    assert_eq!(depth(&t.dlq()).await, 2, "the DLQ is full");
    // Make room: the held messages reach the DLQ.
    let start = Instant::now();
    let mut first: Vec<String> = drain(&t.dlq()).await.iter().map(id_of).collect();
    assert_eq!(first.len(), 2, "{first:?}");
    wait_depth(&t.dlq(), 2, LONG).await;
    wait_unacked(&work, 0).await;
    let recovery = start.elapsed();
    assert!(w.term().await.success(), "{}", w.logs());
    let mut c = Census::new(&ids);
    c.add(DEAD, first.drain(..));
    c.add_queues(&t).await;
    assert!(
        c.lost().is_empty() && c.unexpected().is_empty() && c.duplicated() == 0,
        "{}",
        c.summary()
    );
    assert_eq!(c.in_place(DEAD), 4, "{}", c.summary());
    c.row(
        "dead-letter queue full",
        "DLQ x-max-length=2, overflow=reject-publish; 4 permanent failures",
        recovery,
    )
    .passed();
}
