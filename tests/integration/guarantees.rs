//! Guarantees that had no test able to fail: each test here breaks when the guarantee does
//! (checked by breaking the code once, see the note of the commit that added it).
//! - A retry-tier copy the broker does not confirm never lets the original be acked.
//! - `/readyz` answers 503 while the worker is not consuming and while it drains, 200 while it
//!   consumes.
//! - The acker never acks past a delivery whose outcome is still pending.
//! - A publisher's `expiration` bounds the first delivery only: a retry copy waits its whole
//!   tier and a dead letter cannot expire out of the dead-letter queue.

use crate::util::*;
use courier::envelope;
use courier::handler::{Handler, HandlerError, HandlerResult, Job};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

const WAIT: Duration = Duration::from_secs(30);

/// Fails every attempt with a retryable error.
struct AlwaysRetry;

impl Handler for AlwaysRetry {
    async fn handle(&self, _job: Job<'_>) -> HandlerResult {
        Err(HandlerError::retryable("HTTP 503 from the endpoint"))
    }
}

#[tokio::test]
async fn a_retry_copy_that_is_not_confirmed_leaves_the_original_unacked() {
    let t = TestTopology::fast("unconfirmed-retry").await;
    let queue = t.name("notifications.email");
    // Without its first tier queue, the retry copy is unroutable: the mandatory publish comes
    // back (never confirmed as delivered), so the worker must requeue the original.
    let tier = format!("{queue}.retry.100ms");
    let admin = courier::broker::Admin::connect(&parsed_url(), "test: delete tier")
        .await
        .expect("connect");
    admin.delete_queue(&tier).await.expect("tier deleted");
    admin.close().await;

    let w = RunningWorker::spawn(&t, "notifications.email", AlwaysRetry, |s| {
        s.max_redeliveries = 2;
    });
    let p = publisher().await;
    let ids = publish_jobs(&p, &t.exchange(), "email", "unconf", 5).await;

    // Each original is requeued (not acked) when its retry copy comes back; the redelivery
    // count then carries it to the DLQ as a crash loop: every id ends up there, none is lost.
    wait_depth(&t.dlq(), 5, WAIT).await;
    let requeued = w
        .metrics
        .messages
        .with_label_values(&[&queue, "requeued"])
        .get();
    w.stop().await;
    assert!(
        requeued >= 5,
        "the fault landed: every original was requeued at least once ({requeued})"
    );
    let mut seen: HashMap<String, usize> = HashMap::new();
    for m in drain(&t.dlq()).await {
        let id = m
            .delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.to_string())
            .unwrap_or_default();
        assert_eq!(
            header_str(&m, envelope::REASON).as_deref(),
            Some("crash-loop"),
            "{id}"
        );
        *seen.entry(id).or_insert(0) += 1;
    }
    let delivered: Vec<String> = seen.keys().cloned().collect();
    let (lost, dup) = reconcile(&ids, &delivered);
    let extra = seen.values().map(|n| n - 1).sum::<usize>();
    assert_eq!(
        (lost, dup + extra),
        (0, 0),
        "lost, duplicated in the DLQ: {seen:?}"
    );
    assert_eq!(depth(&queue).await, 0, "nothing left behind");
}

/// Holds every attempt until released; says when one has started.
struct Held {
    started: Arc<Notify>,
    release: Arc<Notify>,
    released: Arc<AtomicBool>,
}

impl Handler for Held {
    async fn handle(&self, _job: Job<'_>) -> HandlerResult {
        self.started.notify_one();
        if !self.released.load(Ordering::SeqCst) {
            self.release.notified().await;
        }
        Ok(())
    }
}

async fn readyz(client: &reqwest::Client, addr: std::net::SocketAddr) -> u16 {
    client
        .get(format!("http://{addr}/readyz"))
        .send()
        .await
        .expect("readyz answers")
        .status()
        .as_u16()
}

async fn wait_status(client: &reqwest::Client, addr: std::net::SocketAddr, want: u16, what: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        if readyz(client, addr).await == want {
            return;
        }
        assert!(Instant::now() < deadline, "/readyz never {want}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn readyz_is_503_unless_consuming_and_during_the_drain() {
    let t = TestTopology::fast("readyz").await;
    let queue = t.name("notifications.email");
    // Not consuming: the work queue is missing, so the worker cannot subscribe.
    let admin = courier::broker::Admin::connect(&parsed_url(), "test: readyz")
        .await
        .expect("connect");
    admin.delete_queue(&queue).await.expect("queue deleted");

    let started = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let released = Arc::new(AtomicBool::new(false));
    let handler = Held {
        started: started.clone(),
        release: release.clone(),
        released: released.clone(),
    };
    let w = RunningWorker::spawn(&t, "notifications.email", handler, |s| {
        s.shutdown_timeout = Duration::from_secs(20);
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stop_http = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(courier::metrics::serve(
        listener,
        w.metrics.clone(),
        w.health.clone(),
        stop_http.clone(),
    ));
    let client = reqwest::Client::new();

    // The worker keeps trying to subscribe; it must never look ready. Each failed attempt after
    // the first is counted as a reconnect: two of them prove it went round its retry loop (where
    // a wrong readiness flag would show) more than once.
    let failed_attempts = || {
        w.metrics
            .reconnects
            .with_label_values(&[courier::metrics::label::CONSUMER])
            .get()
    };
    let deadline = Instant::now() + WAIT;
    while failed_attempts() < 2 {
        assert_eq!(readyz(&client, addr).await, 503, "ready without a consumer");
        assert!(
            Instant::now() < deadline,
            "the worker never retried its subscription"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Consuming once the queue exists again.
    courier::broker::apply(&parsed_url(), &t.topology)
        .await
        .expect("re-apply");
    wait_status(&client, addr, 200, "after the queue came back").await;

    // Draining: a message is in the handler when shutdown begins.
    let p = publisher().await;
    publish_jobs(&p, &t.exchange(), "email", "drain", 1).await;
    tokio::time::timeout(WAIT, started.notified())
        .await
        .expect("the handler started");
    w.shutdown.cancel();
    wait_status(&client, addr, 503, "while draining").await;
    assert!(
        !w.handle.is_finished(),
        "the fault landed: the worker was still draining when /readyz said 503"
    );
    released.store(true, Ordering::SeqCst);
    release.notify_one();
    tokio::time::timeout(Duration::from_secs(20), w.handle)
        .await
        .expect("the worker stops once the handler returns")
        .expect("no panic");
    assert_eq!(depth(&queue).await, 0, "the drained message was acked");
    stop_http.cancel();
    let _ = server.await;
    admin.close().await;
}

/// Never finishes the message whose id ends in `-0`; succeeds at once for every other.
struct FirstNeverEnds;

impl Handler for FirstNeverEnds {
    async fn handle(&self, job: Job<'_>) -> HandlerResult {
        if job.message_id.ends_with("-0") {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        Ok(())
    }
}

#[tokio::test]
async fn acks_never_pass_a_delivery_whose_outcome_is_pending() {
    let t = TestTopology::fast("ackfrontier").await;
    let queue = t.name("notifications.email");
    let w = RunningWorker::spawn(&t, "notifications.email", FirstNeverEnds, |s| {
        s.shutdown_timeout = Duration::from_secs(1);
    });
    w.wait_ready(WAIT).await;
    let p = publisher().await;
    // One at a time, so the held message has the lowest delivery tag and every later one is
    // settled above it: exactly where an `ack(multiple)` past it would take it along.
    let mut ids = Vec::new();
    for i in 0..20 {
        let id = format!("held-{i}");
        p.publish(job(&t.exchange(), "email", &id, 0))
            .await
            .expect("confirmed");
        ids.push(id);
    }
    let delivered = |w: &RunningWorker| {
        w.metrics
            .messages
            .with_label_values(&[&queue, "delivered"])
            .get()
    };
    let deadline = Instant::now() + WAIT;
    while delivered(&w) < 19 {
        assert!(Instant::now() < deadline, "19 deliveries never settled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Wait until the acker flushed everything it may: the broker holds one delivery unacked,
    // held-0's (its view comes from the management API, refreshed every few seconds).
    let deadline = Instant::now() + WAIT;
    loop {
        let unacked = broker_queue(&queue)
            .await
            .and_then(|q| q["messages_unacknowledged"].as_u64());
        if unacked == Some(1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the 19 settled deliveries were never acked: {unacked:?} unacknowledged"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let in_flight = w.metrics.in_flight.with_label_values(&[&queue]).get();
    assert_eq!(in_flight, 1, "the fault landed: held-0 was in the handler");
    // The shutdown deadline abandons held-0: its delivery must return to the queue, and only it
    // (the 19 settled behind it were acked one by one, not held back for a multiple ack that
    // could never come: before that fix all 20 came back, 19 as duplicates).
    w.stop().await;
    let deadline = Instant::now() + WAIT;
    while depth(&queue).await != 1 {
        assert!(
            Instant::now() < deadline,
            "held-0 did not come back: an ack passed it ({} in the queue)",
            depth(&queue).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let back = drain(&queue).await;
    let id = back[0]
        .delivery
        .properties
        .message_id()
        .as_ref()
        .map(|s| s.to_string());
    assert_eq!(id.as_deref(), Some("held-0"));
}

/// 503 on the first attempt, 200 after.
fn fails_once() -> Script {
    Arc::new(|r: &Received| {
        if r.attempt == 1 {
            (503, vec![])
        } else {
            (200, vec![])
        }
    })
}

#[tokio::test]
async fn an_expiration_shorter_than_the_retry_tier_does_not_cut_the_retry_short() {
    let t = TestTopology::apply("expiry-retry", "tests/fixtures/one-second-tier.toml").await;
    let queue = t.name("notifications.email");
    let sink = Sink::start(fails_once(), Duration::ZERO).await;
    let w = RunningWorker::http(&t, "notifications.email", &sink);
    w.wait_ready(WAIT).await;
    let p = publisher().await;
    let mut m = job(&t.exchange(), "email", "short-lived", 0);
    // Ample for the first delivery to a waiting consumer; far below the 1s tier.
    m.properties = m.properties.with_expiration("200".into());
    p.publish(m).await.expect("confirmed");
    sink.wait_for(WAIT, "the retry delivered", |r| {
        r.iter().any(|x| x.status == 200)
    })
    .await;
    w.stop().await;
    let calls: Vec<(u32, u16)> = sink.all().iter().map(|r| (r.attempt, r.status)).collect();
    assert_eq!(
        calls,
        [(1, 503), (2, 200)],
        "failed once, delivered on its retry"
    );
    // The copy entered its tier after the first call; the tier's TTL is a lower bound on the
    // second. A copy still carrying the publisher's 200 ms left the tier at that mark instead.
    let all = sink.all();
    let waited = all[1].at - all[0].at;
    assert!(
        waited >= Duration::from_secs(1),
        "the retry copy left its 1s tier after {waited:?}: the message's expiration fired there"
    );
    assert_eq!(depth(&t.dlq()).await, 0, "nothing dead-lettered");
    assert_eq!(depth(&queue).await, 0, "nothing left in the work queue");
    assert_eq!(
        depth(&format!("{queue}.retry.1s")).await,
        0,
        "nothing left in the tier"
    );
}

#[tokio::test]
async fn a_dead_letter_carries_no_expiration_that_could_drop_it_from_the_dlq() {
    let t = TestTopology::fast("expiry-dlq").await;
    let sink = Sink::start(Arc::new(|_| (400, vec![])), Duration::ZERO).await;
    let w = RunningWorker::http(&t, "notifications.email", &sink);
    w.wait_ready(WAIT).await;
    let p = publisher().await;
    let mut m = job(&t.exchange(), "email", "expiring-dead-letter", 0);
    m.properties = m.properties.with_expiration("3000".into());
    p.publish(m).await.expect("confirmed");
    // The dead-letter queue has no dead-letter exchange: a copy that expired there would be
    // gone for good, so the copy must not carry an expiration at all.
    wait_depth(&t.dlq(), 1, WAIT).await;
    w.stop().await;
    let dead = drain(&t.dlq()).await;
    assert_eq!(dead.len(), 1, "the dead letter is in the DLQ");
    let d = &dead[0];
    assert_eq!(
        header_str(d, envelope::REASON).as_deref(),
        Some("permanent"),
        "dead-lettered with Courier's reason"
    );
    assert_eq!(
        d.delivery.properties.expiration(),
        &None,
        "the dead letter carries the publisher's expiration, so it would expire in the DLQ"
    );
    assert_eq!(
        header_str(d, envelope::ORIGINAL_EXPIRATION).as_deref(),
        Some("3000"),
        "the publisher's expiration is kept for the record"
    );
}
