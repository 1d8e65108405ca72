//! Worker processes killed or stopped under load: kill -9 of one of three workers and of every
//! worker (then a restart), SIGTERM mid-batch.

use crate::harness::*;
use crate::util::*;
use crate::{report, sink, LONG};
use std::time::Instant;

#[tokio::test]
async fn kill_9_one_of_three_workers_mid_batch() {
    let t = TestTopology::fast("f.kill1").await;
    let sink = sink(20).await;
    let url = amqp_url();
    let args = ["--concurrency", "10", "--prefetch", "20"];
    let mut workers: Vec<WorkerProc> = (0..3)
        .map(|_| WorkerProc::spawn(&t, &url, &sink.url, &args))
        .collect();
    let p = publisher().await;
    let ids = publish_jobs(&p, &t.exchange(), "email", "k1", 900).await;
    sink.wait_for(LONG, "progress", |r| r.len() >= 150).await;
    let cut = Instant::now();
    workers[0].kill9();
    let recovery = settle(&sink, &ids, LONG).await;
    let (lost, dup) = report(
        "kill -9 of one of three workers",
        "SIGKILL mid-batch (handler 20 ms, 10 in flight each)",
        &ids,
        &delivered_ids(&sink),
        recovery,
    );
    assert_eq!(lost, 0);
    assert!(
        dup <= 20,
        "at most the killed worker's prefetch is redelivered: {dup}"
    );
    let _ = cut;
    for w in workers.iter_mut().skip(1) {
        assert!(w.term().await.success());
    }
}

#[tokio::test]
async fn kill_9_of_every_worker_then_restart() {
    let t = TestTopology::fast("f.killall").await;
    let sink = sink(20).await;
    let url = amqp_url();
    let args = ["--concurrency", "10", "--prefetch", "20"];
    let mut workers: Vec<WorkerProc> = (0..3)
        .map(|_| WorkerProc::spawn(&t, &url, &sink.url, &args))
        .collect();
    let p = publisher().await;
    let ids = publish_jobs(&p, &t.exchange(), "email", "ka", 600).await;
    sink.wait_for(LONG, "progress", |r| r.len() >= 100).await;
    for w in &mut workers {
        w.kill9();
    }
    let restarted = Instant::now();
    let mut fresh = WorkerProc::spawn(&t, &url, &sink.url, &args);
    settle(&sink, &ids, LONG).await;
    let (lost, dup) = report(
        "kill -9 of every worker",
        "SIGKILL of 3 workers mid-batch, one restarted",
        &ids,
        &delivered_ids(&sink),
        restarted.elapsed(),
    );
    assert_eq!(lost, 0);
    assert!(dup <= 60, "at most 3 prefetch windows: {dup}");
    assert!(fresh.term().await.success());
    // Redelivered messages were counted, not mistaken for poison.
    assert_eq!(depth(&t.dlq()).await, 0);
}

#[tokio::test]
async fn sigterm_under_load_loses_and_duplicates_nothing() {
    let t = TestTopology::fast("f.term").await;
    let sink = sink(20).await;
    let url = amqp_url();
    let args = ["--concurrency", "10", "--prefetch", "40"];
    let mut a = WorkerProc::spawn(&t, &url, &sink.url, &args);
    let p = publisher().await;
    let ids = publish_jobs(&p, &t.exchange(), "email", "st", 500).await;
    sink.wait_for(LONG, "progress", |r| r.len() >= 100).await;
    let status = a.term().await;
    assert!(status.success(), "exit {status:?}: {}", a.logs());
    let started = Instant::now();
    let mut b = WorkerProc::spawn(&t, &url, &sink.url, &args);
    settle(&sink, &ids, LONG).await;
    let (lost, dup) = report(
        "SIGTERM of a worker under load",
        "graceful stop mid-batch, second worker finishes",
        &ids,
        &delivered_ids(&sink),
        started.elapsed(),
    );
    assert_eq!((lost, dup), (0, 0));
    assert!(b.term().await.success());
}
