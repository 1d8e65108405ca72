//! Sharded channels in ordered mode: per-key order across several workers, one of them killed
//! with SIGKILL midway and one added. Publishers do a plain publish with an `x-courier-key`
//! header; the consistent-hash exchange keeps a key in one shard, the shard's single active
//! consumer handles it one message at a time, and a failure is retried in place.
//!
//! Ground truth: the ids this test published and saw confirmed. The sink's 2xx answers, in the
//! order the requests arrived, are what was delivered. Duplicates after a crash are allowed and
//! counted; a key's first deliveries out of sequence are not.

use crate::lifecycle::spawn_worker_binary;
use crate::util::*;
use courier::publisher::Outgoing;
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

const KEYS: usize = 50;
const SEQ: usize = 200;
const WAIT: Duration = Duration::from_secs(240);

fn keyed(exchange: &str, key: usize, seq: usize) -> Outgoing {
    let mut headers = FieldTable::default();
    headers.insert(
        "x-courier-key".into(),
        AMQPValue::LongString(format!("k{key}").into()),
    );
    Outgoing {
        exchange: exchange.to_owned(),
        routing_key: "email".to_owned(),
        properties: BasicProperties::default()
            .with_message_id(format!("k{key}-{seq}").into())
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_headers(headers),
        body: format!(r#"{{"key":{key},"seq":{seq}}}"#).into_bytes(),
    }
}

fn key_seq(id: &str) -> Option<(usize, usize)> {
    let (k, s) = id.strip_prefix('k')?.split_once('-')?;
    Some((k.parse().ok()?, s.parse().ok()?))
}

/// Messages this worker delivered, from its /metrics.
async fn delivered_by(addr: &str) -> u64 {
    let Ok(r) = reqwest::get(format!("http://{addr}/metrics")).await else {
        return 0;
    };
    let text = r.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("courier_messages_total{") && l.contains("outcome=\"delivered\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

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
    let sink = Sink::start(
        Arc::new(|r: &Received| {
            let transient = key_seq(&r.message_id).is_some_and(|(_, s)| s % 23 == 5);
            if transient && r.attempt == 1 {
                (503, vec![])
            } else {
                (200, vec![])
            }
        }),
        Duration::from_millis(2),
    )
    .await;

    // A key's messages are published in sequence; keys interleave.
    let p = publisher().await;
    let mut expected = Vec::new();
    for seq in 0..SEQ {
        let round = futures_util::future::join_all(
            (0..KEYS).map(|key| p.publish(keyed(&t.exchange(), key, seq))),
        )
        .await;
        assert!(round.iter().all(Result::is_ok), "publish confirmed");
        expected.extend((0..KEYS).map(|key| format!("k{key}-{seq}")));
    }
    let spread: Vec<u32> = futures_util::future::join_all(shards.iter().map(|q| depth(q))).await;
    assert!(
        spread.iter().all(|d| *d > 0),
        "the keys spread over every shard: {spread:?}"
    );

    let mut workers = vec![worker(&t, &sink), worker(&t, &sink), worker(&t, &sink)];
    let delivered = || delivered_ids(&sink).len();

    // The first worker to subscribe is active on every shard; the others must get a share.
    let deadline = Instant::now() + WAIT;
    loop {
        let mut counts = Vec::new();
        for w in &workers {
            counts.push(delivered_by(&w.metrics).await);
        }
        if counts.iter().all(|c| *c > 0) {
            break;
        }
        assert!(
            Instant::now() < deadline && delivered() < expected.len() / 2,
            "the shards were not shared out: deliveries per worker {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

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

    // Per key, in arrival order: the next expected sequence number, a repeat (a duplicate
    // after the crash), or a jump ahead (a reordering).
    let mut ok: Vec<Received> = sink
        .all()
        .into_iter()
        .filter(|r| (200..300).contains(&r.status))
        .collect();
    ok.sort_by_key(|r| r.at);
    let mut next = vec![0usize; KEYS];
    let mut reordered = BTreeMap::new();
    for r in &ok {
        let Some((k, s)) = key_seq(&r.message_id) else {
            continue;
        };
        if s == next[k] {
            next[k] += 1;
        } else if s > next[k] {
            reordered.entry(k).or_insert((next[k], s));
        }
    }
    let retried = sink.all().iter().filter(|r| r.status == 503).count();
    eprintln!(
        "shards: {} delivered, lost {lost}, duplicated {dup}, reordered keys {}, transient failures {retried}, {at_kill} delivered when a worker was killed",
        ok.len(),
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
