//! Priority bands on a quorum queue: RabbitMQ 3.x gives quorum queues no priorities and 4.0-4.2
//! two weighted levels, so "urgent before bulk" comes from a second queue, the urgent band,
//! which the worker consumes beside the bulk queue and always takes first. Runs on 3.x and 4.x.
//!
//! Ground truth is the ids this test published and saw confirmed; the sink's 2xx answers are
//! what was delivered. Positions are counted in the order requests reached the sink.

use crate::util::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(90);
const CONCURRENCY: usize = 4;

#[tokio::test]
async fn urgent_messages_overtake_a_bulk_backlog_on_a_quorum_queue() {
    let t = TestTopology::apply("bands", "tests/fixtures/bands.toml").await;
    let bulk_queue = t.name("notifications.email");
    let band = t.name("notifications.email.urgent");
    for q in [&bulk_queue, &band] {
        assert_eq!(broker_queue(q).await.expect("declared")["type"], "quorum");
    }

    // A backlog of bulk work, then urgent messages behind it, published by `courier publish`
    // with the routing key of the bulk queue: the priority alone sends them to the band.
    let p = publisher().await;
    let bulk = publish_jobs(&p, &t.exchange(), "email", "bulk", 1000).await;
    let early: Vec<String> = (0..50).map(|i| format!("urgent-{i}")).collect();
    let file = std::env::temp_dir().join(format!("{}urgent.jsonl", t.prefix));
    let lines: String = early
        .iter()
        .map(|id| format!("{{\"routing_key\":\"email\",\"message_id\":\"{id}\",\"priority\":9,\"body\":{{\"to\":\"{id}@example.com\"}}}}\n"))
        .collect();
    std::fs::write(&file, lines).expect("write jsonl");
    let out = courier(
        &t.prefix,
        &[
            "publish",
            "--topology",
            t.file.to_str().expect("utf-8 path"),
            "--file",
            file.to_str().expect("utf-8 path"),
        ],
    );
    let _ = std::fs::remove_file(&file);
    assert!(out.status.success(), "courier publish: {}", stderr(&out));
    // Priority 9 went to the band, nothing to the bulk queue.
    wait_depth(&band, 50, WAIT).await;
    assert_eq!(depth(&bulk_queue).await, 1000);

    // One urgent message fails once: its retry must come back to the band, not the bulk queue.
    // Another fails for good: its dead letter must name the band, where a replay returns it.
    let sink = Sink::start(
        Arc::new(|r: &Received| match r.message_id.as_str() {
            "urgent-7" if r.attempt == 1 => (503, vec![]),
            "urgent-9" => (400, vec![]),
            _ => (200, vec![]),
        }),
        Duration::from_millis(5),
    )
    .await;
    let worker = RunningWorker::spawn(&t, "notifications.email", http_handler(&sink), |s| {
        s.prefetch = 50;
        s.concurrency = CONCURRENCY;
    });
    worker.wait_ready(WAIT).await;

    // Urgent messages published while the worker is busy with bulk ones.
    sink.wait_for(WAIT, "200 bulk deliveries", |r| r.len() >= 200)
        .await;
    let live: Vec<String> = (0..20).map(|i| format!("live-{i}")).collect();
    let sent = futures_util::future::join_all(
        live.iter()
            .map(|id| p.publish(job(&t.exchange(), "email.urgent", id, 9))),
    )
    .await;
    assert!(
        sent.iter().all(Result::is_ok),
        "live urgent publishes confirmed"
    );

    let expected: Vec<String> = bulk
        .iter()
        .chain(&early)
        .chain(&live)
        .filter(|id| id.as_str() != "urgent-9")
        .cloned()
        .collect();
    let deadline = Instant::now() + WAIT;
    while delivered_ids(&sink).len() < expected.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let order = delivered_in_order(&sink);
    let delivered = delivered_ids(&sink);
    let (lost, dup) = reconcile(&expected, &delivered);
    let missing: Vec<&String> = expected
        .iter()
        .filter(|id| !delivered.contains(id))
        .take(20)
        .collect();
    assert_eq!(
        (lost, dup),
        (0, 0),
        "lost and duplicated of {} (missing, first 20: {missing:?})",
        expected.len()
    );

    // The waiting urgent messages come first: of the first deliveries, only the few bulk ones
    // taken before the band's messages reached the worker precede them (a worker that took
    // both queues evenly would have delivered about as many bulk as urgent by then).
    let position = |id: &str| order.iter().position(|r| r.message_id == id);
    let last_early = early
        .iter()
        .filter(|id| !["urgent-7", "urgent-9"].contains(&id.as_str()))
        .filter_map(|id| position(id))
        .max()
        .expect("urgent delivered");
    let bulk_before = order[..last_early]
        .iter()
        .filter(|r| r.message_id.starts_with("bulk-"))
        .count();
    assert!(
        bulk_before <= 2 * CONCURRENCY,
        "{bulk_before} bulk messages were delivered before the last of 48 waiting urgent ones (at most {} may start before the band is seen)",
        2 * CONCURRENCY
    );

    // Urgent messages arriving mid-backlog wait only for the slots already busy: from the
    // first of them to reach the endpoint to the last, hardly any bulk message gets through
    // (taking both queues evenly, about one for each of the 20).
    let live_positions: Vec<usize> = live.iter().filter_map(|id| position(id)).collect();
    let (first_live, last_live) = (
        *live_positions.iter().min().expect("live delivered"),
        *live_positions.iter().max().expect("live delivered"),
    );
    let bulk_between = order[first_live..last_live]
        .iter()
        .filter(|r| r.message_id.starts_with("bulk-"))
        .count();
    assert!(
        bulk_between <= 2 * CONCURRENCY,
        "{bulk_between} bulk messages were delivered between the first and the last of 20 live urgent ones"
    );
    let bulk_left_after_live = order[last_live..]
        .iter()
        .filter(|r| r.message_id.starts_with("bulk-"))
        .count();
    assert!(
        bulk_left_after_live > 0,
        "the backlog was gone before the live urgent messages arrived: the test proved nothing"
    );

    eprintln!(
        "bands: {} delivered, lost {lost}, duplicated {dup}; {bulk_before} bulk before the last of 48 waiting urgent, \
         {bulk_between} bulk between the first and the last of 20 live urgent, {bulk_left_after_live} bulk after",
        order.len()
    );

    // The failed urgent message retried through the band's own tier and stayed ahead of bulk.
    let retries = |queue: &str| {
        worker
            .metrics
            .retries
            .with_label_values(&[queue, "100ms"])
            .get()
    };
    assert_eq!(
        retries(&band),
        1,
        "urgent-7 retried through the band's tier"
    );
    assert_eq!(retries(&bulk_queue), 0);
    let retried = position("urgent-7").expect("urgent-7 delivered");
    let bulk_after = order[retried..]
        .iter()
        .filter(|r| r.message_id.starts_with("bulk-"))
        .count();
    assert!(
        bulk_after > 0,
        "urgent-7 came back only after the whole backlog (position {retried} of {})",
        order.len()
    );

    let dead = drain(&t.dlq()).await;
    let dead_ids: Vec<Option<&str>> = dead
        .iter()
        .map(|m| courier::envelope::message_id(&m.delivery.properties))
        .collect();
    assert_eq!(
        dead_ids,
        [Some("urgent-9")],
        "only urgent-9 is dead-lettered"
    );
    assert_eq!(
        header_str(&dead[0], courier::envelope::ORIGINAL_ROUTING_KEY).as_deref(),
        Some("email.urgent"),
        "a replay publishes to the original exchange and key: the band"
    );
    assert_eq!(
        header_str(&dead[0], courier::envelope::ORIGINAL_QUEUE),
        Some(band.clone())
    );
    worker.stop().await;
}
