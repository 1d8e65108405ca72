//! An ordered sharded channel on the cluster: 6 quorum shards (leaders spread over the nodes),
//! 3 workers on different first nodes, and the node leading a shard killed with `kill -9`
//! mid-run, then restarted. Every key's first deliveries must stay in sequence; lost = 0.
//!
//! A quorum queue keeps a consumer whose node died registered ("suspected down") until the
//! node is back: a shard whose active consumer was connected through the dead node waits for
//! it (its worker has meanwhile subscribed again through another node, at the back of the
//! line). The case measures that pause; order and nothing lost are what it asserts.

use crate::cluster::*;
use crate::harness::WorkerProc;
use crate::ordering::*;
use crate::util::*;
use crate::SETTLE;
use std::time::{Duration, Instant};

const KEYS: usize = 50;
const SEQ: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_shards_keep_each_keys_order_when_a_node_dies() {
    ensure_up().await;
    let t = TestTopology::apply("c.shards", "tests/fixtures/shards.toml").await;
    let shard0 = t.name("notifications.email.shard.0");
    let sink = transient_sink().await;
    let p = publisher().await;
    let sent = publish_keyed(&p, &t.exchange(), KEYS, SEQ).await;
    let mut ws: Vec<WorkerProc> = (1..=3)
        .map(|n| {
            WorkerProc::spawn_watched(
                &t,
                &url_from(n),
                &sink.url,
                &["--concurrency", "16", "--prefetch", "20"],
            )
        })
        .collect();

    let addrs: Vec<&str> = ws.iter().map(|w| w.metrics_addr()).collect();
    wait_shared_out(&addrs, Duration::from_secs(60)).await;
    sink.wait_for(SETTLE, "a third delivered", |r| r.len() >= sent.len() / 3)
        .await;
    let doomed = leader(&shard0).await;
    let fault = NodeFault::kill(doomed).await;
    let killed_at = Instant::now();
    let at_kill = delivered_ids(&sink).len();
    assert!(
        at_kill < sent.len(),
        "the node died after the work was done ({at_kill} of {})",
        sent.len()
    );
    // Long enough for the survivors to take over what they can.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let while_down = delivered_ids(&sink).len();
    let rejoined = fault.restart().await;

    let deadline = Instant::now() + SETTLE;
    while reconcile(&sent, &delivered_ids(&sink)).0 > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (lost, dup) = reconcile(&sent, &delivered_ids(&sink));
    let (reordered, next) = order_violations(&sink, KEYS);
    let pause = longest_pause(&sink, killed_at);
    eprintln!(
        "cluster shards: node {doomed} (leading {shard0}) killed with {at_kill} of {} delivered; \
         {} more delivered while it was down, back in {rejoined:?}; lost {lost}, duplicated {dup}, \
         reordered keys {}; longest pause {pause:?}",
        sent.len(),
        while_down - at_kill,
        reordered.len()
    );
    for w in ws.iter_mut() {
        assert!(w.alive(), "a worker exited: {}", w.logs());
        assert!(w.term().await.success(), "{}", w.logs());
    }
    assert_eq!(lost, 0, "lost of {}", sent.len());
    assert!(
        reordered.is_empty(),
        "keys delivered out of sequence (key: (expected, got)): {reordered:?}"
    );
    assert!(next.iter().all(|n| *n == SEQ), "every key reached the end");
    assert!(
        while_down > at_kill,
        "nothing was delivered while the node was down"
    );
}
