//! Sharded channels in ordered mode: per-key order across several workers, one of them killed
//! with SIGKILL midway and one added. Publishers do a plain publish with an `x-courier-key`
//! header; the consistent-hash exchange keeps a key in one shard, the shard's single active
//! consumer handles it one message at a time, and a failure is retried in place.
//!
//! Ground truth: the ids this test published and saw confirmed. The sink's 2xx answers, in the
//! order the requests arrived, are what was delivered. Duplicates after a crash are allowed and
//! counted; a key's first deliveries out of sequence are not.

use crate::lifecycle::spawn_worker_binary;
use crate::ordering::*;
use crate::util::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

const KEYS: usize = 50;
const SEQ: usize = 200;
const WAIT: Duration = Duration::from_secs(240);

struct Worker {
    child: DeadlineChild,
    metrics: String,
}

fn worker(t: &TestTopology, sink: &Sink) -> Worker {
    let metrics = free_addr();
    let child = spawn_worker_binary(
        t,
        &sink.url,
        &[
            "--concurrency",
            "16",
            "--prefetch",
            "20",
            "--metrics-addr",
            &metrics,
        ],
    );
    Worker { child, metrics }
}

#[tokio::test]
async fn ordered_shards_keep_each_keys_order_across_a_killed_and_an_added_worker() {
    let t = TestTopology::apply("shards", "tests/fixtures/shards.toml").await;
    let shards: Vec<String> = (0..6)
        .map(|i| t.name(&format!("notifications.email.shard.{i}")))
        .collect();
    for q in &shards {
        let info = broker_queue(q).await.expect("shard declared");
        assert_eq!(info["arguments"]["x-single-active-consumer"], true, "{q}");
    }

    // Every 23rd message fails its first attempt: the shard waits and retries it in place.
    let sink = transient_sink().await;

    // A key's messages are published in sequence; keys interleave.
    let p = publisher().await;
    let expected = publish_keyed(&p, &t.exchange(), KEYS, SEQ).await;
    let spread: Vec<u32> = futures_util::future::join_all(shards.iter().map(|q| depth(q))).await;
    assert!(
        spread.iter().all(|d| *d > 0),
        "the keys spread over every shard: {spread:?}"
    );

    let mut workers = vec![worker(&t, &sink), worker(&t, &sink), worker(&t, &sink)];
    let delivered = || delivered_ids(&sink).len();

    // The first worker to subscribe is active on every shard; the others must get a share.
    let addrs: Vec<&str> = workers.iter().map(|w| w.metrics.as_str()).collect();
    wait_shared_out(&addrs, Duration::from_secs(30)).await;
    let at_share = delivered();
    eprintln!(
        "shards: shared out with {at_share} of {} delivered",
        expected.len()
    );
    assert!(
        at_share < expected.len() / 2,
        "the shards were shared out only late: the test proves little"
    );

    // Kill a worker that is delivering, mid-run.
    sink.wait_for(WAIT, "a third delivered", |r| r.len() >= expected.len() / 3)
        .await;
    let victim = workers.remove(0);
    let victim_delivered = delivered_by(&victim.metrics).await;
    let mut child = victim.child;
    let _ = child.kill();
    let _ = child.wait();
    let at_kill = delivered();
    assert!(
        victim_delivered > 0 && at_kill < expected.len(),
        "the killed worker was delivering ({victim_delivered}) and work was left ({at_kill} of {})",
        expected.len()
    );
    workers.push(worker(&t, &sink));

    let deadline = Instant::now() + WAIT;
    while reconcile(&expected, &delivered_ids(&sink)).0 > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (lost, dup) = reconcile(&expected, &delivered_ids(&sink));

    let (reordered, next) = order_violations(&sink, KEYS);
    let retried = sink.all().iter().filter(|r| r.status == 503).count();
    eprintln!(
        "shards: {} delivered, lost {lost}, duplicated {dup}, reordered keys {}, transient failures {retried}, {at_kill} delivered when a worker was killed",
        delivered_ids(&sink).len(),
        reordered.len()
    );
    for w in &mut workers {
        let _ = w.child.kill();
        let _ = w.child.wait();
    }
    assert_eq!(lost, 0, "lost of {}", expected.len());
    assert!(
        reordered.is_empty(),
        "keys delivered out of sequence (key: (expected, got)): {reordered:?}"
    );
    assert!(next.iter().all(|n| *n == SEQ), "every key reached the end");
    assert!(retried > 0, "transient failures were retried in place");
}

#[tokio::test]
async fn throughput_shards_spread_the_load_and_retry_through_shared_tiers() {
    let t = TestTopology::apply("shardtp", "tests/fixtures/shards-throughput.toml").await;
    let shards: Vec<String> = (0..3)
        .map(|i| t.name(&format!("notifications.email.shard.{i}")))
        .collect();
    // One in ten fails once (a retry through a tier and back through the shard exchange),
    // one in fifty for good (the dead-letter queue).
    let sink = Sink::start(
        Arc::new(|r: &Received| {
            let n: usize = r
                .message_id
                .rsplit('-')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            if n % 50 == 7 {
                (400, vec![])
            } else if n % 10 == 3 && r.attempt == 1 {
                (503, vec![])
            } else {
                (200, vec![])
            }
        }),
        Duration::ZERO,
    )
    .await;
    let p = publisher().await;
    let ids = publish_jobs(&p, &t.exchange(), "email", "tp", 2000).await;
    let spread: Vec<u32> = futures_util::future::join_all(shards.iter().map(|q| depth(q))).await;
    assert!(
        spread.iter().all(|d| *d > 400),
        "message ids spread over the shards: {spread:?}"
    );
    let a = RunningWorker::http(&t, "notifications.email", &sink);
    let b = RunningWorker::http(&t, "notifications.email", &sink);
    let permanent: Vec<String> = ids
        .iter()
        .filter(|id| {
            id.rsplit('-')
                .next()
                .and_then(|n| n.parse::<usize>().ok())
                .is_some_and(|n| n % 50 == 7)
        })
        .cloned()
        .collect();
    let expected: Vec<String> = ids
        .iter()
        .filter(|id| !permanent.contains(id))
        .cloned()
        .collect();
    let deadline = Instant::now() + WAIT;
    while reconcile(&expected, &delivered_ids(&sink)).0 > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_depth(&t.dlq(), permanent.len() as u32, WAIT).await;
    let (lost, dup) = reconcile(&expected, &delivered_ids(&sink));
    let dead = drain(&t.dlq()).await;
    let dead_ids: Vec<String> = dead
        .iter()
        .filter_map(|m| courier::envelope::message_id(&m.delivery.properties).map(str::to_owned))
        .collect();
    let delivered = |w: &RunningWorker, q: &str| {
        w.metrics
            .messages
            .with_label_values(&[q, "delivered"])
            .get()
    };
    let retried: u64 = shards
        .iter()
        .map(|q| {
            [&a, &b]
                .iter()
                .map(|w| w.metrics.retries.with_label_values(&[q, "50ms"]).get())
                .sum::<u64>()
        })
        .sum();
    let per_worker: Vec<u64> = [&a, &b]
        .iter()
        .map(|w| shards.iter().map(|q| delivered(w, q)).sum())
        .collect();
    eprintln!(
        "shards (throughput): lost {lost}, duplicated {dup}, retried {retried}, dead {}, delivered per worker {per_worker:?}",
        dead_ids.len()
    );
    a.stop().await;
    b.stop().await;
    assert_eq!((lost, dup), (0, 0), "of {}", expected.len());
    let mut dead_sorted = dead_ids.clone();
    dead_sorted.sort();
    let mut want = permanent.clone();
    want.sort();
    assert_eq!(
        dead_sorted, want,
        "exactly the permanent failures are dead letters"
    );
    assert_eq!(
        retried, 200,
        "one in ten retried once, through the shared tier"
    );
    assert!(
        per_worker.iter().all(|n| *n > 0),
        "both workers consumed (competing consumers on every shard): {per_worker:?}"
    );
}
