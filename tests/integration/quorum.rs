//! Quorum work queues. RabbitMQ 4 gives every quorum queue a delivery limit of 20 by default:
//! past it the broker dead-letters a message itself, with no Courier reason. Courier counts
//! redeliveries in its own header and republishes the message (a fresh copy the broker counts
//! from zero), so its `--max-redeliveries` acts first and the dead letter says `crash-loop`.
//! Runs on 3.x and 4.x alike (CI runs both).

use crate::lifecycle::spawn_worker_binary;
use crate::util::*;
use courier::envelope;
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
