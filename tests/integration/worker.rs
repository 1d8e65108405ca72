//! `courier work` end to end: real broker, real HTTP sink, every outcome path. Every delivery
//! test reconciles what was published against what the sink accepted: lost must be 0.

use crate::util::*;
use courier::envelope;
use courier::handler::{Handler, HandlerError, HandlerResult, Job};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn success_acks_every_message_once() {
    let t = TestTopology::fast("ok").await;
    let sink = Sink::ok().await;
    let w = RunningWorker::http(&t, "notifications.email", &sink);
    let p = publisher().await;
    let ids = publish_jobs(&p, &t.exchange(), "email", "ok", 200).await;
    sink.wait_for(WAIT, "200 deliveries", |r| r.len() >= 200)
        .await;
    w.stop().await;
    let (lost, dup) = reconcile(&ids, &delivered_ids(&sink));
    assert_eq!((lost, dup), (0, 0), "lost, duplicated");
    let first = &sink.all()[0];
    assert!(first.message_id.starts_with("ok-"));
    assert_eq!(first.attempt, 1);
    assert_eq!(first.content_type, "application/json");
    assert!(first.body.starts_with(br#"{"to":"user-ok-"#));
    assert_eq!(
        depth(&t.name("notifications.email")).await,
        0,
        "everything acked"
    );
    assert_eq!(depth(&t.dlq()).await, 0);
}

#[tokio::test]
async fn a_503_is_retried_through_the_first_tier() {
    let t = TestTopology::fast("retry").await;
    let sink = Sink::start(
        Arc::new(|r: &Received| {
            if r.attempt == 1 {
                (503, vec![])
            } else {
                (200, vec![])
            }
        }),
        Duration::ZERO,
    )
    .await;
    let w = RunningWorker::http(&t, "notifications.email", &sink);
    let p = publisher().await;
    let ids = publish_jobs(&p, &t.exchange(), "email", "r", 20).await;
    sink.wait_for(WAIT, "20 successes", |r| {
        r.iter().filter(|x| x.status == 200).count() >= 20
    })
    .await;
    let queue = t.name("notifications.email");
    let counted = |w: &RunningWorker| {
        let retried = w
            .metrics
            .messages
            .with_label_values(&[&queue, "retried"])
            .get();
        let first_tier = w
            .metrics
            .retries
            .with_label_values(&[&queue, "100ms"])
            .get();
        (retried, first_tier)
    };
    // The counters are bumped once each copy is confirmed; wait until all 20 are in (a count
    // above 20 would be a retry too many, which the equality below still catches).
    let deadline = Instant::now() + WAIT;
    let (retried, first_tier) = loop {
        let (retried, first_tier) = counted(&w);
        if retried >= 20 && first_tier >= 20 {
            break (retried, first_tier);
        }
        assert!(
            Instant::now() < deadline,
            "retries never counted: {retried} retried, {first_tier} via the 100ms tier"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    w.stop().await;
    assert_eq!(
        (retried, first_tier),
        (20, 20),
        "each message retried once, via the 100ms tier"
    );
    let (lost, dup) = reconcile(&ids, &delivered_ids(&sink));
    assert_eq!((lost, dup), (0, 0));
    for r in sink.all().iter().filter(|r| r.status == 200) {
        assert_eq!(r.attempt, 2, "{} delivered on attempt 2", r.message_id);
    }
    assert_eq!(depth(&t.dlq()).await, 0);
}

#[tokio::test]
async fn failing_three_times_then_delivered_survives_repeated_tiers() {
    // Tiers are 100ms, 400ms: attempts 2, 3 and 4 all go through the 400ms queue again. A stale
    // x-death carried into the next hop would make RabbitMQ 3.10 drop the message as a cycle.
    let t = TestTopology::fast("xdeath").await;
    let sink = Sink::start(
        Arc::new(|r: &Received| {
            if r.attempt <= 3 {
                (500, vec![])
            } else {
                (200, vec![])
            }
        }),
        Duration::ZERO,
    )
    .await;
    let w = RunningWorker::http(&t, "notifications.email", &sink);
    let p = publisher().await;
    let ids = publish_jobs(&p, &t.exchange(), "email", "x", 5).await;
    sink.wait_for(WAIT, "5 deliveries on attempt 4", |r| {
        r.iter().filter(|x| x.status == 200).count() >= 5
    })
    .await;
    w.stop().await;
    let (lost, dup) = reconcile(&ids, &delivered_ids(&sink));
    assert_eq!((lost, dup), (0, 0));
    for id in &ids {
        let attempts: Vec<u32> = sink
            .all()
            .iter()
            .filter(|r| &r.message_id == id)
            .map(|r| r.attempt)
            .collect();
        assert_eq!(attempts, vec![1, 2, 3, 4], "{id}");
    }
}

#[tokio::test]
async fn retry_after_picks_a_long_enough_tier() {
    let t = TestTopology::fast("retryafter").await;
    let sink = Sink::start(
        Arc::new(|r: &Received| {
            if r.attempt == 1 {
                (429, vec![("retry-after".into(), "1".into())])
            } else {
                (200, vec![])
            }
        }),
        Duration::ZERO,
    )
    .await;
    let w = RunningWorker::http(&t, "notifications.email", &sink);
    let p = publisher().await;
    publish_jobs(&p, &t.exchange(), "email", "ra", 1).await;
    sink.wait_for(WAIT, "delivery", |r| r.iter().any(|x| x.status == 200))
        .await;
    w.stop().await;
    let all = sink.all();
    let gap = all[1].at.duration_since(all[0].at);
    // Without the hint attempt 2 would wait in the 100ms tier; Retry-After: 1 asks for more, so
    // the longest tier (400ms) is chosen. A TTL never fires early: a safe lower bound.
    assert!(
        gap >= Duration::from_millis(400),
        "second attempt after {gap:?}"
    );
}

#[tokio::test]
async fn a_400_is_dead_lettered_as_permanent_with_every_header() {
    let t = TestTopology::fast("perm").await;
    let sink = Sink::start(Arc::new(|_| (400, vec![])), Duration::ZERO).await;
    let w = RunningWorker::http(&t, "notifications.email", &sink);
    let p = publisher().await;
    let mut msg = job(&t.exchange(), "email", "perm-1", 7);
    let mut h = lapin::types::FieldTable::default();
    h.insert(
        "tenant".into(),
        lapin::types::AMQPValue::LongString("acme".into()),
    );
    msg.properties = msg
        .properties
        .with_headers(h)
        .with_correlation_id("c-1".into());
    let body = msg.body.clone();
    p.publish(msg).await.expect("published");
    wait_depth(&t.dlq(), 1, WAIT).await;
    w.stop().await;
    let dead = drain(&t.dlq()).await;
    assert_eq!(dead.len(), 1);
    let m = &dead[0];
    assert_eq!(
        header_str(m, envelope::REASON).as_deref(),
        Some("permanent")
    );
    assert!(header_str(m, envelope::ERROR)
        .unwrap_or_default()
        .contains("HTTP 400"));
    assert_eq!(header_int(m, envelope::ATTEMPTS), Some(1));
    assert_eq!(
        header_str(m, envelope::ORIGINAL_EXCHANGE),
        Some(t.exchange())
    );
    assert_eq!(
        header_str(m, envelope::ORIGINAL_ROUTING_KEY).as_deref(),
        Some("email")
    );
    assert_eq!(
        header_str(m, envelope::ORIGINAL_QUEUE),
        Some(t.name("notifications.email"))
    );
    let first = header_int(m, envelope::FIRST_FAILED_AT).expect("first-failed-at");
    let dead_at = header_int(m, envelope::DEAD_LETTERED_AT).expect("dead-lettered-at");
    assert!(first > 1_700_000_000_000 && dead_at >= first);
    assert_eq!(
        header_str(m, "tenant").as_deref(),
        Some("acme"),
        "publisher headers kept"
    );
    let props = &m.delivery.properties;
    assert_eq!(
        props.message_id().as_ref().map(|s| s.as_str()),
        Some("perm-1")
    );
    assert_eq!(*props.priority(), Some(7));
    assert_eq!(
        props.correlation_id().as_ref().map(|s| s.as_str()),
        Some("c-1")
    );
    assert_eq!(*props.delivery_mode(), Some(2));
    assert_eq!(m.delivery.data, body, "body unchanged");
    assert_eq!(sink.all().len(), 1, "a permanent failure is not retried");
}

#[tokio::test]
async fn exhausted_attempts_are_dead_lettered_as_max_attempts() {
    let t = TestTopology::fast("maxatt").await;
    let sink = Sink::start(Arc::new(|_| (503, vec![])), Duration::ZERO).await;
    let w = RunningWorker::http(&t, "notifications.email", &sink);
    let p = publisher().await;
    publish_jobs(&p, &t.exchange(), "email", "m", 3).await;
    wait_depth(&t.dlq(), 3, WAIT).await;
    w.stop().await;
    let dead = drain(&t.dlq()).await;
    assert_eq!(dead.len(), 3);
    for m in &dead {
        assert_eq!(
            header_str(m, envelope::REASON).as_deref(),
            Some("max-attempts")
        );
        assert_eq!(
            header_int(m, envelope::ATTEMPTS),
            Some(5),
            "max_attempts of fast.toml"
        );
        assert!(header_str(m, envelope::ERROR)
            .unwrap_or_default()
            .contains("503"));
        assert!(m
            .delivery
            .properties
            .headers()
            .as_ref()
            .is_none_or(|h| !h.inner().contains_key("x-death")));
    }
    assert_eq!(sink.all().len(), 15, "5 attempts each");
}

#[tokio::test]
async fn non_json_and_id_less_messages_are_dead_lettered_as_malformed() {
    let t = TestTopology::fast("malformed").await;
    let sink = Sink::ok().await;
    let w = RunningWorker::http(&t, "notifications.email", &sink);
    let p = publisher().await;
    let mut bad = job(&t.exchange(), "email", "bad-json", 0);
    bad.body = b"this is { not json".to_vec();
    p.publish(bad).await.expect("published");
    let mut bad_utf8 = job(&t.exchange(), "email", "bad-utf8", 0);
    bad_utf8.body = vec![0xff, 0xfe, 0x00];
    p.publish(bad_utf8).await.expect("published");
    // No message_id: the publisher gives it one, so publish raw through a plain channel.
    let conn = parsed_url().connect("test raw").await.expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    ch.basic_publish(
        t.exchange().as_str().into(),
        "email".into(),
        Default::default(),
        br#"{"to":"x"}"#,
        lapin::BasicProperties::default().with_delivery_mode(2),
    )
    .await
    .expect("raw publish");
    let _ = conn.close(200, "done".into()).await;
    publish_jobs(&p, &t.exchange(), "email", "good", 1).await;
    wait_depth(&t.dlq(), 3, WAIT).await;
    sink.wait_for(WAIT, "the good message", |r| !r.is_empty())
        .await;
    w.stop().await;
    let dead = drain(&t.dlq()).await;
    assert_eq!(dead.len(), 3);
    for m in &dead {
        assert_eq!(
            header_str(m, envelope::REASON).as_deref(),
            Some("malformed")
        );
    }
    let errors: Vec<String> = dead
        .iter()
        .filter_map(|m| header_str(m, envelope::ERROR))
        .collect();
    assert!(
        errors.iter().any(|e| e.contains("not valid JSON")),
        "{errors:?}"
    );
    assert!(errors.iter().any(|e| e.contains("UTF-8")), "{errors:?}");
    assert!(
        errors.iter().any(|e| e.contains("no message_id")),
        "{errors:?}"
    );
    assert_eq!(
        sink.counts().keys().collect::<Vec<_>>(),
        vec!["good-0"],
        "handler never saw malformed messages"
    );
}

#[tokio::test]
async fn request_reply_publishes_the_final_outcome() {
    let t = TestTopology::fast("reply").await;
    let sink = Sink::start(
        Arc::new(|r: &Received| {
            if r.message_id == "rr-bad" {
                (400, vec![])
            } else {
                (200, vec![])
            }
        }),
        Duration::ZERO,
    )
    .await;
    let reply_queue = t.name("replies");
    let mut cleanup = Cleanup {
        queues: vec![],
        exchanges: vec![],
    };
    cleanup.add_queue(&reply_queue);
    let conn = parsed_url().connect("test reply").await.expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    let mut args = lapin::types::FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        lapin::types::AMQPValue::LongString("classic".into()),
    );
    ch.queue_declare(
        reply_queue.as_str().into(),
        lapin::options::QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await
    .expect("reply queue");
    let _ = conn.close(200, "done".into()).await;
    let w = RunningWorker::http(&t, "notifications.email", &sink);
    let p = publisher().await;
    for (id, corr) in [("rr-ok", "corr-ok"), ("rr-bad", "corr-bad")] {
        let mut m = job(&t.exchange(), "email", id, 0);
        m.properties = m
            .properties
            .with_reply_to(reply_queue.as_str().into())
            .with_correlation_id(corr.into());
        p.publish(m).await.expect("published");
    }
    wait_depth(&reply_queue, 2, WAIT).await;
    w.stop().await;
    let replies = drain(&reply_queue).await;
    let mut by_corr = std::collections::HashMap::new();
    for r in &replies {
        let corr = r
            .delivery
            .properties
            .correlation_id()
            .as_ref()
            .map(|c| c.as_str().to_owned())
            .unwrap_or_default();
        let v: serde_json::Value = serde_json::from_slice(&r.delivery.data).expect("JSON reply");
        by_corr.insert(corr, v);
    }
    assert_eq!(by_corr["corr-ok"]["status"], "delivered");
    assert_eq!(by_corr["corr-ok"]["message_id"], "rr-ok");
    assert_eq!(by_corr["corr-bad"]["status"], "dead-lettered");
    assert_eq!(by_corr["corr-bad"]["reason"], "permanent");
    assert!(by_corr["corr-bad"]["error"]
        .as_str()
        .unwrap_or_default()
        .contains("400"));
}

#[tokio::test]
async fn priority_overtakes_a_backlog() {
    let t = TestTopology::fast("prio").await;
    let p = publisher().await;
    let backlog = publish_jobs(&p, &t.exchange(), "email", "bulk", 300).await;
    p.publish(job(&t.exchange(), "email", "urgent", 9))
        .await
        .expect("urgent");
    let sink = Sink::ok().await;
    let prefetch = 10u16;
    let w = RunningWorker::spawn(&t, "notifications.email", http_handler(&sink), |c| {
        c.prefetch = prefetch;
        c.concurrency = 1;
    });
    sink.wait_for(WAIT, "all 301", |r| r.len() >= 301).await;
    w.stop().await;
    let order: Vec<String> = sink.all().into_iter().map(|r| r.message_id).collect();
    let pos = order
        .iter()
        .position(|id| id == "urgent")
        .expect("urgent delivered");
    // The broker only reorders what is still in the queue: the prefetched window was already sent.
    assert!(
        pos <= usize::from(prefetch),
        "urgent delivered at position {pos} of {}",
        order.len()
    );
    let mut expected = backlog;
    expected.push("urgent".into());
    assert_eq!(reconcile(&expected, &delivered_ids(&sink)), (0, 0));
}

#[tokio::test]
async fn two_workers_compete_and_never_both_get_a_message() {
    let t = TestTopology::fast("compete").await;
    let sink = Sink::start(Arc::new(|_| (200, vec![])), Duration::from_millis(2)).await;
    let a = RunningWorker::spawn(&t, "notifications.email", http_handler(&sink), |c| {
        c.concurrency = 8
    });
    let b = RunningWorker::spawn(&t, "notifications.email", http_handler(&sink), |c| {
        c.concurrency = 8
    });
    a.wait_ready(WAIT).await;
    b.wait_ready(WAIT).await;
    let p = publisher().await;
    let ids = publish_jobs(&p, &t.exchange(), "email", "c", 400).await;
    sink.wait_for(WAIT, "400 deliveries", |r| r.len() >= 400)
        .await;
    let delivered = |w: &RunningWorker| {
        w.metrics
            .messages
            .with_label_values(&[&t.name("notifications.email"), "delivered"])
            .get()
    };
    // The sink answers before the worker counts: wait until both counts add up to every
    // delivery (more than 400 would be a message handled twice, caught below).
    let deadline = Instant::now() + WAIT;
    while delivered(&a) + delivered(&b) < 400 {
        assert!(
            Instant::now() < deadline,
            "deliveries never counted: {} + {}",
            delivered(&a),
            delivered(&b)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (ma, mb) = (delivered(&a), delivered(&b));
    a.stop().await;
    b.stop().await;
    assert_eq!(
        reconcile(&ids, &delivered_ids(&sink)),
        (0, 0),
        "lost, duplicated"
    );
    assert_eq!(sink.all().len(), 400, "no message handled twice");
    assert_eq!(ma + mb, 400);
    assert!(ma > 0 && mb > 0, "both workers took part: {ma} + {mb}");
}

/// A handler that fails with a 1 MiB error: the dead-letter copy must still be publishable.
struct HugeError;

impl Handler for HugeError {
    async fn handle(&self, _job: Job<'_>) -> HandlerResult {
        Err(HandlerError::permanent("E".repeat(1 << 20)))
    }
}

#[tokio::test]
async fn a_one_mebibyte_error_is_truncated_not_lost() {
    let t = TestTopology::fast("hugeerr").await;
    let w = RunningWorker::spawn(&t, "notifications.email", HugeError, |_| {});
    let p = publisher().await;
    publish_jobs(&p, &t.exchange(), "email", "huge", 2).await;
    wait_depth(&t.dlq(), 2, WAIT).await;
    w.stop().await;
    for m in drain(&t.dlq()).await {
        let e = header_str(&m, envelope::ERROR).expect("error header");
        assert!(e.len() <= envelope::MAX_ERROR_BYTES, "{}", e.len());
        assert!(e.ends_with("[truncated]"));
    }
}

/// Panics on the first attempt of every message, succeeds after.
struct PanicsOnce(Arc<AtomicU32>);

impl Handler for PanicsOnce {
    async fn handle(&self, job: Job<'_>) -> HandlerResult {
        if job.attempt == 1 {
            panic!("handler bug for {}", job.message_id);
        }
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test]
async fn a_panicking_handler_is_retried_and_the_worker_survives() {
    let t = TestTopology::fast("panic").await;
    let delivered = Arc::new(AtomicU32::new(0));
    let w = RunningWorker::spawn(
        &t,
        "notifications.email",
        PanicsOnce(delivered.clone()),
        |_| {},
    );
    let p = publisher().await;
    publish_jobs(&p, &t.exchange(), "email", "pan", 10).await;
    let deadline = Instant::now() + WAIT;
    while delivered.load(Ordering::SeqCst) < 10 {
        assert!(
            Instant::now() < deadline,
            "only {} delivered",
            delivered.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!w.handle.is_finished(), "worker still running");
    w.stop().await;
    assert_eq!(depth(&t.dlq()).await, 0);
}

/// Never answers within the handler timeout.
struct Hangs;

impl Handler for Hangs {
    async fn handle(&self, _job: Job<'_>) -> HandlerResult {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Ok(())
    }
}

#[tokio::test]
async fn handler_timeouts_are_retried_until_dead_lettered() {
    let t = TestTopology::fast("hang").await;
    let w = RunningWorker::spawn(&t, "notifications.email", Hangs, |c| {
        c.handler_timeout = Duration::from_millis(100);
        c.concurrency = 2;
    });
    let p = publisher().await;
    publish_jobs(&p, &t.exchange(), "email", "h", 4).await;
    wait_depth(&t.dlq(), 4, WAIT).await;
    w.stop().await;
    for m in drain(&t.dlq()).await {
        assert_eq!(
            header_str(&m, envelope::REASON).as_deref(),
            Some("max-attempts")
        );
        assert!(header_str(&m, envelope::ERROR)
            .unwrap_or_default()
            .contains("timed out"));
    }
}

#[tokio::test]
async fn redelivered_messages_are_counted_and_crash_loops_dead_lettered() {
    let t = TestTopology::fast("crash").await;
    let queue = t.name("notifications.email");
    let p = publisher().await;
    // One fresh message, one that has already been redelivered 5 times (the bound).
    p.publish(job(&t.exchange(), "email", "fresh", 0))
        .await
        .expect("publish");
    let mut looping = job(&t.exchange(), "email", "looping", 0);
    let mut h = lapin::types::FieldTable::default();
    h.insert(
        envelope::REDELIVERIES.into(),
        lapin::types::AMQPValue::LongLongInt(5),
    );
    looping.properties = looping.properties.with_headers(h);
    p.publish(looping).await.expect("publish");
    // Simulate a worker that dies holding them: consume without acking, then close.
    let conn = parsed_url().connect("test crasher").await.expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    let mut consumer = ch
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            Default::default(),
            Default::default(),
        )
        .await
        .expect("consume");
    use futures_util::StreamExt;
    for _ in 0..2 {
        consumer.next().await.expect("delivery").expect("ok");
    }
    conn.close(200, "crash".into()).await.expect("close");

    let sink = Sink::ok().await;
    let w = RunningWorker::http(&t, "notifications.email", &sink);
    sink.wait_for(WAIT, "fresh delivered", |r| {
        r.iter().any(|x| x.message_id == "fresh")
    })
    .await;
    wait_depth(&t.dlq(), 1, WAIT).await;
    w.stop().await;
    let dead = drain(&t.dlq()).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead[0]
            .delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.as_str()),
        Some("looping")
    );
    assert_eq!(
        header_str(&dead[0], envelope::REASON).as_deref(),
        Some("crash-loop")
    );
    assert_eq!(sink.counts().get("fresh"), Some(&1));
    assert!(!sink.counts().contains_key("looping"));
}
