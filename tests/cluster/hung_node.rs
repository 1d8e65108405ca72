//! A node hangs (`SIGSTOP`) for longer than the heartbeat, under load, then resumes: its sockets
//! stay open and silent, so only the heartbeat can tell the processes on it to move.
//!
//! The hung node is one the work queue's leader is *not* on, with a worker and the publisher
//! connected to it: what is tested is the clients' failover. (A hung leader is RabbitMQ's own
//! election: measured on 3.10, a new leader in ~12 s, but consumes and confirms on the queue
//! stalled for 30 s and more around it — docs/cluster.md.)

use crate::cluster::*;
use crate::node_loss::*;
use crate::SETTLE;
use std::time::{Duration, Instant};

/// The processes' heartbeat: a silent connection is given up after about three (12 s), as an
/// operator who wants hung nodes noticed fast would set it (`?heartbeat=4`).
const HEARTBEAT: &str = "heartbeat=4";

/// Longer than the processes take to give up a silent connection, shorter than the cluster's own
/// net tick time (60 s: a node silent for 45-75 s is declared down, and after a resume the
/// cluster would be partitioned), so the node is hung, not gone.
const FROZEN: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_frozen_longer_than_the_heartbeat_under_load_then_resumed() {
    let t = cluster_topology("c.freeze").await;
    let queue = t.name("notifications.email");
    let leads = leader(&queue).await;
    let hung = leads % 3 + 1;
    let others: Vec<usize> = (1..=3).filter(|n| *n != hung).collect();
    let sink = flaky_sink(Duration::from_millis(2)).await;
    let mut ws = workers_with(&t, &sink, &[hung, others[0], others[1]], HEARTBEAT);
    let addrs: Vec<String> = ws.iter().map(|w| w.metrics_addr().to_owned()).collect();
    all_ready(&addrs, None, Duration::from_secs(60)).await;

    let sent = ids("cf", BATCH);
    let file = jobs_file(&t, &sent);
    let mut publish = spawn_publish(&t, &url_with(hung, HEARTBEAT), &file, 8);
    sink.wait_for(SETTLE, "deliveries under way", |r| r.len() >= 1000)
        .await;
    assert!(publish.running(), "the publisher finished before the fault");
    let fault = NodeFault::freeze(hung).await;
    let frozen_at = Instant::now();
    let answered = sink.all().len();
    assert!(answered < BATCH, "the node hung after the work was done");

    // While it hangs, every worker moves off the node. The wait ends before the freeze would:
    // a failed case thaws the node (the guard) before the cluster could declare it down.
    let failover = tokio::time::timeout(
        FROZEN - Duration::from_secs(3),
        all_ready(&addrs, Some(&address(hung)), FROZEN),
    )
    .await;
    let Ok(failover) = failover else {
        panic!(
            "the workers did not move off the hung node within the freeze:{}",
            describe(&ws).await
        );
    };
    let progress = sink.all().len();
    tokio::time::sleep(FROZEN.saturating_sub(frozen_at.elapsed())).await;
    assert!(
        sink.all().len() > progress,
        "nothing was delivered while the node hung"
    );
    fault.thaw().await;
    publish.confirmed_all(BATCH, SETTLE).await;
    settle_batch(&t, &sink, &sent).await;
    let pause = longest_pause(&sink, frozen_at);
    for w in ws.iter_mut() {
        assert!(w.alive(), "a worker exited: {}", w.logs());
        assert!(w.term().await.success(), "{}", w.logs());
    }
    assert!(
        ws[0].logs().contains("lost the consumer"),
        "worker 0 never left the hung node: {}",
        ws[0].logs()
    );
    // The resumed node is a member again (not partitioned away).
    cluster(&["status"]).await;
    let c = reconcile_batch(&t, &sink, &sent).await;
    eprintln!(
        "node {hung} frozen {FROZEN:?} with {answered} of {BATCH} answered (leader on node \
         {leads}); workers ready again in {failover:?}; longest pause {pause:?}; {}",
        c.summary()
    );
    ClusterRow::new(
        &format!(
            "SIGSTOP for {} s of a node with a worker and the publisher on it (a hung node), then SIGCONT",
            FROZEN.as_secs()
        ),
        BATCH,
        &c,
        failover,
        pause,
    )
    .passed();
}
