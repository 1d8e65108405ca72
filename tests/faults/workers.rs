//! Worker processes killed or stopped under load: kill -9 of one of three workers and of every
//! worker (then a restart), SIGTERM mid-batch. Each kill lands on a worker seen holding
//! messages (`courier_in_flight` > 0), so there is unacked work for the broker to hand back.

use crate::census::*;
use crate::harness::*;
use crate::util::*;
use crate::{sink, LONG};
use std::time::Instant;

#[tokio::test]
async fn kill_9_one_of_three_workers_mid_batch() {
    let t = TestTopology::fast("f.kill1").await;
    let sink = sink(20).await;
    let url = amqp_url();
    let args = ["--concurrency", "10", "--prefetch", "20"];
    let mut workers = vec![WorkerProc::spawn_watched(&t, &url, &sink.url, &args)];
    workers.extend((0..2).map(|_| WorkerProc::spawn(&t, &url, &sink.url, &args)));
    let p = publisher().await;
    let ids = publish_jobs(&p, &t.exchange(), "email", "k1", 900).await;
    sink.wait_for(LONG, "progress", |r| r.len() >= 150).await;
    let held = workers[0].wait_holding(LONG).await;
    workers[0].kill9();
    let answered = sink.all().len();
    assert!(answered < ids.len(), "killed after the work was done");
    let recovery = settle(&sink, &ids, LONG).await;
    for w in workers.iter_mut().skip(1) {
        assert!(w.term().await.success(), "{}", w.logs());
    }
    let c = Census::of_delivery(&t, &sink, &ids).await;
    // A duplicate is a message whose HTTP call succeeded just before the kill, at most the
    // killed worker's prefetch window.
    c.assert_all_delivered(20);
    c.row(
        "kill -9 of one of three workers",
        &format!("SIGKILL mid-batch while it held {held} (handler 20 ms, prefetch 20)"),
        recovery,
    )
    .passed();
}

#[tokio::test]
async fn kill_9_of_every_worker_then_restart() {
    let t = TestTopology::fast("f.killall").await;
    let sink = sink(20).await;
    let url = amqp_url();
    let args = ["--concurrency", "10", "--prefetch", "20"];
    let mut workers: Vec<WorkerProc> = (0..3)
        .map(|_| WorkerProc::spawn_watched(&t, &url, &sink.url, &args))
        .collect();
    let p = publisher().await;
    let ids = publish_jobs(&p, &t.exchange(), "email", "ka", 600).await;
    sink.wait_for(LONG, "progress", |r| r.len() >= 100).await;
    for w in &mut workers {
        w.wait_holding(LONG).await;
        w.kill9();
    }
    assert!(
        sink.all().len() < ids.len(),
        "killed after the work was done"
    );
    let restarted = Instant::now();
    let mut fresh = WorkerProc::spawn(&t, &url, &sink.url, &args);
    settle(&sink, &ids, LONG).await;
    let recovery = restarted.elapsed();
    assert!(fresh.term().await.success(), "{}", fresh.logs());
    let c = Census::of_delivery(&t, &sink, &ids).await;
    c.assert_all_delivered(60);
    // Redelivered messages were counted, not mistaken for poison.
    assert_eq!(c.in_place(DEAD), 0, "{}", c.summary());
    c.row(
        "kill -9 of every worker",
        "SIGKILL of 3 workers, each while holding messages; one restarted",
        recovery,
    )
    .passed();
}

#[tokio::test]
async fn sigterm_under_load_loses_and_duplicates_nothing() {
    let t = TestTopology::fast("f.term").await;
    let sink = sink(20).await;
    let url = amqp_url();
    let args = ["--concurrency", "10", "--prefetch", "40"];
    let mut a = WorkerProc::spawn_watched(&t, &url, &sink.url, &args);
    let p = publisher().await;
    let ids = publish_jobs(&p, &t.exchange(), "email", "st", 500).await;
    sink.wait_for(LONG, "progress", |r| r.len() >= 100).await;
    let held = a.wait_holding(LONG).await;
    let status = a.term().await;
    assert!(status.success(), "exit {status:?}: {}", a.logs());
    assert!(
        sink.all().len() < ids.len(),
        "stopped after the work was done"
    );
    let mut b = WorkerProc::spawn(&t, &url, &sink.url, &args);
    let recovery = settle(&sink, &ids, LONG).await;
    assert!(b.term().await.success(), "{}", b.logs());
    let c = Census::of_delivery(&t, &sink, &ids).await;
    // The documented bound: a graceful stop finishes what it holds and hands back the rest.
    c.assert_all_delivered(0);
    c.row(
        "SIGTERM of a worker under load",
        &format!("graceful stop while it held {held}; a second worker finishes"),
        recovery,
    )
    .passed();
}
