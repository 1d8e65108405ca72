//! Quorum queues. RabbitMQ 4 gives every quorum queue a delivery limit of 20 by default, 3.x
//! none; Courier declares `x-delivery-limit` explicitly (20 unless the topology says otherwise),
//! so the broker's backstop is the same on both: past it the broker dead-letters a message
//! itself, with `x-death` reason `delivery_limit`. Courier counts redeliveries in its own header
//! and republishes the message (a fresh copy the broker counts from zero), so its
//! `--max-redeliveries` acts first and the dead letter says `crash-loop`.
//! Quorum work queues and their retry tiers dead-letter at least once by default.
//! Runs on 3.x and 4.x alike (CI runs both); every case asserts the same outcome on both.

use crate::lifecycle::spawn_worker_binary;
use crate::util::*;
use courier::deadletter::{DeadLetter, Death, Source};
use courier::envelope;
use courier::topology::{Topology, DEAD_LETTER_QUEUE_DELIVERY_LIMIT, DEFAULT_DELIVERY_LIMIT};
use lapin::options::{BasicGetOptions, BasicRejectOptions, QueueDeleteOptions};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_crash_looping_message_on_a_quorum_queue_is_dead_lettered_by_courier() {
    let t = TestTopology::apply("quorum", "tests/fixtures/quorum-work.toml").await;
    let queue = t.name("notifications.email");
    assert_eq!(
        broker_queue(&queue).await.expect("declared")["type"],
        "quorum"
    );
    // The endpoint never answers the looping message: a worker holding it is killed mid-call.
    // The sink records a request when it answers, so calls are counted as they arrive.
    let arrived = Arc::new(AtomicUsize::new(0));
    let seen = arrived.clone();
    let sink = Sink::start_with(
        Arc::new(|_| (200, vec![])),
        Arc::new(move |r: &Received| {
            if r.message_id == "looping" {
                seen.fetch_add(1, Ordering::SeqCst);
                Duration::from_secs(300)
            } else {
                Duration::ZERO
            }
        }),
    )
    .await;
    let p = publisher().await;
    p.publish(job(&t.exchange(), "email", "looping", 0))
        .await
        .expect("confirmed");
    let worker = || spawn_worker_binary(&t, &sink.url, &["--max-redeliveries", "2"]);
    let calls = || arrived.load(Ordering::SeqCst);
    // Three crashes while the endpoint call is in flight: redeliveries 1, 2, 3.
    for crash in 1..=3 {
        let mut w = worker();
        let deadline = Instant::now() + WAIT;
        while calls() < crash {
            assert!(
                Instant::now() < deadline,
                "crash {crash}: the worker never called the endpoint"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = w.kill();
        let _ = w.wait();
    }
    // The next worker sees redelivery 3 > --max-redeliveries 2: dead-lettered, not called.
    let mut w = worker();
    wait_depth(&t.dlq(), 1, WAIT).await;
    let _ = w.kill();
    let _ = w.wait();
    let dead = drain(&t.dlq()).await;
    // A kill can also land between a copy's confirm and the original's ack: then both come
    // back, an at-least-once duplicate. Whatever the timing, every dead letter is Courier's.
    assert!(!dead.is_empty());
    for m in &dead {
        assert_eq!(
            envelope::message_id(&m.delivery.properties),
            Some("looping")
        );
        assert_eq!(
            header_str(m, envelope::REASON).as_deref(),
            Some("crash-loop"),
            "Courier's reason, not the broker's delivery limit"
        );
    }
    // Far fewer calls than the broker's own limit would have allowed.
    assert!((3..20).contains(&calls()), "{} calls", calls());
}

const REPLICATED: &str = "tests/fixtures/quorum-replicated.toml";

/// The first retry tier of `work_queue`.
fn first_tier(t: &TestTopology, work_queue: &str) -> String {
    t.topology
        .work_queue(work_queue)
        .expect("work queue")
        .retry_queues[0]
        .clone()
}

/// Every quorum argument Courier writes is accepted by this broker as declared, and declaring
/// it again changes nothing (RabbitMQ compares all of them when a queue is redeclared).
#[tokio::test]
async fn quorum_arguments_are_declared_as_written_and_reapply_as_a_no_op() {
    let prefix = unique_prefix("qargs");
    let file = repo_path(REPLICATED);
    let topo = Topology::load(&file, &prefix).expect("valid");
    let _cleanup = Cleanup::for_topology(&topo);
    let path = file.to_str().expect("utf8");
    let first = courier(&prefix, &["--topology", path, "topology", "apply"]);
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(stdout(&first).contains("6 created"), "{}", stdout(&first));
    for q in &topo.queues {
        let broker = declared_as_in_topology(q).await;
        assert_eq!(broker["type"], "quorum", "{}", q.name);
    }
    // The contract by name, independent of the parser's output.
    let work = broker_queue(&format!("{prefix}notifications.email"))
        .await
        .expect("work queue");
    let tier = broker_queue(&format!("{prefix}notifications.email.retry.300ms"))
        .await
        .expect("tier");
    for q in [&work, &tier] {
        assert_eq!(q["arguments"]["x-quorum-initial-group-size"], 3);
        assert_eq!(q["arguments"]["x-dead-letter-strategy"], "at-least-once");
        assert_eq!(q["arguments"]["x-overflow"], "reject-publish");
    }
    assert_eq!(
        work["arguments"]["x-delivery-limit"],
        DEFAULT_DELIVERY_LIMIT
    );
    assert_eq!(
        tier["arguments"]["x-delivery-limit"],
        serde_json::Value::Null
    );
    let dlq = broker_queue(&format!("{prefix}notifications.dlq"))
        .await
        .expect("dlq");
    assert_eq!(
        dlq["arguments"]["x-delivery-limit"],
        DEAD_LETTER_QUEUE_DELIVERY_LIMIT
    );
    assert_eq!(dlq["arguments"]["x-quorum-initial-group-size"], 3);

    let second = courier(&prefix, &["--topology", path, "topology", "apply"]);
    assert!(second.status.success(), "{}", stderr(&second));
    assert!(
        stdout(&second).contains("nothing to change"),
        "{}",
        stdout(&second)
    );
    let mgmt = management_url();
    let check = courier(
        &prefix,
        &[
            "--topology",
            path,
            "topology",
            "check",
            "--management-url",
            &mgmt,
        ],
    );
    assert_eq!(
        check.status.code(),
        Some(0),
        "{}{}",
        stdout(&check),
        stderr(&check)
    );
    assert!(stdout(&check).contains("in sync"), "{}", stdout(&check));
}

/// A retry tier that is a quorum queue (message TTL on quorum queues: RabbitMQ 3.10+) returns an
/// expired message to its work queue, through the at-least-once dead-lettering Courier declares.
#[tokio::test]
async fn a_message_expiring_in_a_quorum_retry_tier_returns_to_its_work_queue() {
    let t = TestTopology::apply("qtier", REPLICATED).await;
    let work = t.name("notifications.email");
    let tier = first_tier(&t, &work);
    let p = publisher().await;
    p.publish(job("", &tier, "tiered", 0))
        .await
        .expect("confirmed into the tier");
    wait_depth(&work, 1, WAIT).await;
    assert_eq!(depth(&tier).await, 0, "nothing left in the tier");
    let back = drain(&work).await;
    assert_eq!(back.len(), 1);
    assert_eq!(
        envelope::message_id(&back[0].delivery.properties),
        Some("tiered")
    );
    let deaths = Death::all(back[0].delivery.properties.headers().as_ref());
    assert_eq!(deaths[0].reason, "expired", "{deaths:?}");
    assert_eq!(deaths[0].queue, tier, "{deaths:?}");
}

/// At least once, a quorum queue keeps a message it dead-letters until the target confirmed it:
/// with the work queue gone, the expired message waits in its tier (RabbitMQ retries it every
/// few minutes) instead of being dropped, which is what at-most-once does. This is also the
/// proof that the broker did not fall back to at-most-once, which it does silently when
/// `x-overflow` is not `reject-publish`.
#[tokio::test]
async fn at_least_once_keeps_a_dead_letter_its_target_cannot_take_where_at_most_once_drops_it() {
    let alo = TestTopology::apply("qalo", REPLICATED).await;
    let amo = TestTopology::apply("qamo", "tests/fixtures/quorum-at-most-once.toml").await;
    let conn = parsed_url().connect("test").await.expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    let p = publisher().await;
    let mut tiers = Vec::new();
    for t in [&alo, &amo] {
        let work = t.name("notifications.email");
        let tier = first_tier(t, &work);
        ch.queue_delete(work.as_str().into(), QueueDeleteOptions::default())
            .await
            .expect("delete the work queue");
        p.publish(job("", &tier, "stranded", 0))
            .await
            .expect("confirmed into the tier");
        tiers.push(tier);
    }
    let _ = conn.close(200, "done".into()).await;
    // The management API's figures lag by its statistics interval (5 s by default).
    let stat = |q: &serde_json::Value, k: &str| q[k].as_i64();
    let deadline = Instant::now() + WAIT;
    let (mut kept, mut dropped) = (false, false);
    while !(kept && dropped) {
        assert!(
            Instant::now() < deadline,
            "at-least-once tier kept it: {kept}, at-most-once tier dropped it: {dropped}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        let a = broker_queue(&tiers[0]).await.expect("tier");
        kept = stat(&a, "messages_dlx") == Some(1) && stat(&a, "messages") == Some(1);
        let b = broker_queue(&tiers[1]).await.expect("tier");
        dropped = b["message_stats"]["publish"].as_i64() >= Some(1)
            && stat(&b, "messages") == Some(0)
            && stat(&b, "messages_dlx") == Some(0);
    }
    // Kept, not ready: nobody can consume a message that waits for its dead-letter target.
    assert_eq!(depth(&tiers[0]).await, 0);
}

/// Past the broker's delivery limit a message reaches the dead-letter queue with its reason,
/// never dropped: the work queue always has the dead-letter exchange. No delivery_limit in the
/// file: Courier declares 20 explicitly, so 3.x (no default limit) and 4.x (default 20) agree on
/// 21 deliveries. `basic.reject` counts on every version (4.3 no longer counts `basic.nack`).
#[tokio::test]
async fn over_the_brokers_delivery_limit_a_message_reaches_the_dlq_with_its_reason() {
    let t = TestTopology::apply("qlimit", REPLICATED).await;
    let work = t.name("notifications.email");
    assert_eq!(
        broker_queue(&work).await.expect("declared")["arguments"]["x-delivery-limit"],
        DEFAULT_DELIVERY_LIMIT
    );
    let p = publisher().await;
    p.publish(job(&t.exchange(), "email", "poison", 0))
        .await
        .expect("confirmed");
    let conn = parsed_url().connect("test").await.expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    let mut deliveries = 0;
    let mut empty_since: Option<Instant> = None;
    // A returned message is back within milliseconds; 2 s without one means it left the queue.
    while empty_since.is_none_or(|t| t.elapsed() < Duration::from_secs(2)) {
        assert!(deliveries <= 100, "never dead-lettered");
        match ch
            .basic_get(work.as_str().into(), BasicGetOptions { no_ack: false })
            .await
            .expect("basic.get")
        {
            Some(m) => {
                empty_since = None;
                deliveries += 1;
                ch.basic_reject(
                    m.delivery.delivery_tag,
                    BasicRejectOptions { requeue: true },
                )
                .await
                .expect("reject");
            }
            None => {
                empty_since.get_or_insert_with(Instant::now);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    let _ = conn.close(200, "done".into()).await;
    assert_eq!(
        deliveries,
        DEFAULT_DELIVERY_LIMIT + 1,
        "deliveries before the limit"
    );
    wait_depth(&t.dlq(), 1, WAIT).await;
    let dead = drain(&t.dlq()).await;
    assert_eq!(dead.len(), 1);
    let dl = DeadLetter::read(&dead[0].delivery.properties, dead[0].data.len());
    assert_eq!(dl.message_id.as_deref(), Some("poison"));
    assert_eq!(dl.source, Source::Broker);
    assert_eq!(dl.reason.as_deref(), Some("delivery_limit"), "{dl:?}");
    assert_eq!(dl.original_queue.as_deref(), Some(work.as_str()));
}
