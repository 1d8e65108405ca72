//! A node dies (`kill -9`) under load, then comes back.

use crate::census::*;
use crate::cluster::*;
use crate::harness::WorkerProc;
use crate::util::*;
use crate::{SETTLE, TOPOLOGY};
use courier::envelope;
use std::collections::HashSet;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Messages of the batch.
pub const BATCH: usize = 20_000;

/// The case's ids: `<tag>-<n>`.
pub fn ids(tag: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{tag}-{i}")).collect()
}

/// The number in an id.
fn number(id: &str) -> usize {
    id.rsplit('-')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Every 100th id (7, 107, ...) is refused for good (422): it must reach the dead-letter queue
/// with a reason, never be dropped.
pub fn permanent(id: &str) -> bool {
    number(id) % 100 == 7
}

/// A sink that fails the first attempt of every 20th id (503: a retry through the tiers, during
/// the fault), refuses the [`permanent`] ones, and answers 200 otherwise, after `delay`.
pub async fn flaky_sink(delay: Duration) -> Sink {
    Sink::start(
        Arc::new(|r: &Received| {
            if permanent(&r.message_id) {
                (422, vec![])
            } else if number(&r.message_id) % 20 == 3 && r.attempt <= 1 {
                (503, vec![])
            } else {
                (200, vec![])
            }
        }),
        delay,
    )
    .await
}

/// A JSONL file of `ids` for `courier publish --file`.
pub fn jobs_file(t: &TestTopology, ids: &[String]) -> PathBuf {
    let path = std::env::temp_dir().join(format!("{}jobs.jsonl", t.prefix));
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).expect("jobs file"));
    for id in ids {
        writeln!(
            f,
            r#"{{"routing_key":"email","message_id":"{id}","body":{{"to":"{id}@example.com"}}}}"#
        )
        .expect("write jobs");
    }
    f.flush().expect("flush jobs");
    path
}

/// `courier publish --file` of `file` through `url`, its output in files (readable after a
/// kill). `window` bounds the unconfirmed publishes, so the run lasts long enough for a fault.
pub fn spawn_publish(t: &TestTopology, url: &str, file: &PathBuf, window: usize) -> Publish {
    let out = file.with_extension("out");
    let err = file.with_extension("err");
    let child = Command::new(env!("CARGO_BIN_EXE_courier"))
        .args(["publish", "--file"])
        .arg(file)
        .args(["--window", &window.to_string(), "--retry-for", "180s"])
        .env("AMQP_URL", url)
        .env("COURIER_PREFIX", &t.prefix)
        .env("COURIER_TOPOLOGY", &t.file)
        .env("RUST_LOG", "info")
        .stdout(Stdio::from(std::fs::File::create(&out).expect("out")))
        .stderr(Stdio::from(std::fs::File::create(&err).expect("err")))
        .spawn_within(CHILD_DEADLINE);
    Publish { child, out, err }
}

/// A running `courier publish`.
pub struct Publish {
    pub child: DeadlineChild,
    out: PathBuf,
    err: PathBuf,
}

impl Publish {
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for the exit and asserts that every line was confirmed.
    pub async fn confirmed_all(&mut self, n: usize, timeout: Duration) {
        let started = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                break s;
            }
            assert!(
                started.elapsed() < timeout,
                "courier publish still running after {timeout:?}: {}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let out = std::fs::read_to_string(&self.out).unwrap_or_default();
        assert!(
            status.success() && out.contains(&format!("published {n} of {n} messages")),
            "courier publish: {status}: {out}\n{}",
            self.logs()
        );
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }
}

/// Workers, one per node first in its list (`first[k]` for worker k), each serving /metrics.
pub fn workers(t: &TestTopology, sink: &Sink, first: &[usize]) -> Vec<WorkerProc> {
    workers_with(t, sink, first, "")
}

/// [`workers`] with `query` on every node's URL (e.g. a shorter heartbeat).
pub fn workers_with(
    t: &TestTopology,
    sink: &Sink,
    first: &[usize],
    query: &str,
) -> Vec<WorkerProc> {
    let args = ["--concurrency", "20", "--prefetch", "50"];
    first
        .iter()
        .map(|n| WorkerProc::spawn_watched(t, &url_with(*n, query), &sink.url, &args))
        .collect()
}

/// What each worker says at `/readyz` and the tail of its log, for a failed assertion.
pub async fn describe(ws: &[WorkerProc]) -> String {
    let mut out = String::new();
    for (k, w) in ws.iter().enumerate() {
        let (status, body) = readyz(w.metrics_addr()).await;
        let logs = w.logs();
        let tail: Vec<&str> = logs.lines().rev().take(8).collect();
        out.push_str(&format!(
            "\nworker {k}: /readyz {status} {}\n  {}",
            body.trim(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n  ")
        ));
    }
    out
}

/// Waits until the sink has answered every expected id with 2xx and the dead-letter queue holds
/// every permanent one (or `SETTLE` passed: what is missing then shows in the census).
pub async fn settle_batch(t: &TestTopology, sink: &Sink, sent: &[String]) {
    let want: HashSet<&str> = sent
        .iter()
        .filter(|id| !permanent(id))
        .map(String::as_str)
        .collect();
    let dead = sent.iter().filter(|id| permanent(id)).count() as u32;
    let started = Instant::now();
    while started.elapsed() < SETTLE {
        let got: HashSet<String> = delivered_ids(sink).into_iter().collect();
        if want.iter().all(|id| got.contains(*id)) && depth(&t.dlq()).await >= dead {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The census once every process stopped: the sink, then the dead-letter queue (each dead
/// letter checked for a reason), then the work queue and tiers. Asserts nothing lost, nothing
/// unexpected, every deliverable id delivered, every permanent one dead-lettered with a reason.
pub async fn reconcile_batch(t: &TestTopology, sink: &Sink, sent: &[String]) -> Census {
    let mut c = Census::new(sent);
    c.add_sink(sink);
    let dlq = drain(&t.dlq()).await;
    for m in &dlq {
        let reason = header_str(m, envelope::REASON);
        assert!(
            reason.is_some(),
            "dead letter {} has no {} header",
            id_of(m),
            envelope::REASON
        );
    }
    c.add(DEAD, dlq.iter().map(id_of));
    for q in &t.topology.queues {
        if q.name != t.dlq() {
            c.add(QUEUED, drain(&q.name).await.iter().map(id_of));
        }
    }
    assert!(
        c.lost().is_empty() && c.unexpected().is_empty(),
        "{}",
        c.summary()
    );
    let deliverable: Vec<String> = sent.iter().filter(|id| !permanent(id)).cloned().collect();
    let dead: Vec<String> = sent.iter().filter(|id| permanent(id)).cloned().collect();
    assert_eq!(
        c.in_place(DELIVERED),
        deliverable.len(),
        "every deliverable id delivered: {}",
        c.summary()
    );
    assert_eq!(
        c.in_place(DEAD),
        dead.len(),
        "every refused id dead-lettered: {}",
        c.summary()
    );
    assert!(
        c.elsewhere(&dead, DEAD).is_empty(),
        "a refused id was delivered or left queued: {}",
        c.summary()
    );
    c
}

/// The case's topology, checked to be on the cluster (`AMQP_URL` lists its nodes).
pub async fn cluster_topology(name: &str) -> TestTopology {
    ensure_up().await;
    assert!(
        parsed_url().node_count() > 1,
        "AMQP_URL must list the cluster's nodes: eval \"$(scripts/rabbitmq-cluster env)\""
    );
    TestTopology::apply(name, TOPOLOGY).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_work_queues_leader_under_load_then_it_rejoins() {
    let t = cluster_topology("c.kill").await;
    let queue = t.name("notifications.email");
    let doomed = leader(&queue).await;
    let others: Vec<usize> = (1..=3).filter(|n| *n != doomed).collect();
    let sink = flaky_sink(Duration::from_millis(2)).await;
    // One worker and the publisher start on the doomed node: both must move.
    let mut ws = workers(&t, &sink, &[doomed, others[0], others[1]]);
    let addrs: Vec<String> = ws.iter().map(|w| w.metrics_addr().to_owned()).collect();
    all_ready(&addrs, None, Duration::from_secs(60)).await;
    let (_, on) = readyz(&addrs[0]).await;
    assert!(
        on.contains(&address(doomed)),
        "worker 0 not on node {doomed}: {on}"
    );

    let sent = ids("ck", BATCH);
    let file = jobs_file(&t, &sent);
    let mut publish = spawn_publish(&t, &url_from(doomed), &file, 8);
    sink.wait_for(SETTLE, "deliveries under way", |r| r.len() >= 1000)
        .await;
    assert!(publish.running(), "the publisher finished before the fault");
    let fault = NodeFault::kill(doomed).await;
    let killed_at = Instant::now();
    let answered = sink.all().len();
    assert!(answered < BATCH, "the node died after the work was done");

    let leader_after = new_leader(&queue, doomed, Duration::from_secs(60)).await;
    let failover = all_ready(&addrs, Some(&address(doomed)), Duration::from_secs(120)).await;
    publish.confirmed_all(BATCH, SETTLE).await;
    settle_batch(&t, &sink, &sent).await;
    assert!(
        sink.all().iter().any(|r| r.at > killed_at + failover),
        "nothing was delivered after the failover"
    );
    let pause = longest_pause(&sink, killed_at);
    for w in ws.iter_mut() {
        assert!(w.alive(), "a worker exited: {}", w.logs());
        assert!(w.term().await.success(), "{}", w.logs());
    }
    assert!(
        ws[0].logs().contains("lost the consumer"),
        "worker 0 never lost its node: {}",
        ws[0].logs()
    );
    assert!(
        publish.logs().contains("publisher reconnected"),
        "the publisher never moved: {}",
        publish.logs()
    );
    let c = reconcile_batch(&t, &sink, &sent).await;
    eprintln!(
        "node {doomed} killed with {answered} of {BATCH} answered; leader now {leader_after}; \
         workers ready again in {failover:?}; longest pause {pause:?}; {}",
        c.summary()
    );
    ClusterRow::new(
        "kill -9 of the work queue's leader node (with a worker and the publisher on it)",
        BATCH,
        &c,
        failover,
        pause,
    )
    .passed();

    // The node comes back: it rejoins, and serves a worker and a publisher again.
    let back = fault.restart().await;
    cluster(&["status"]).await;
    let sink = flaky_sink(Duration::ZERO).await;
    let mut w = workers(&t, &sink, &[doomed]).remove(0);
    all_ready(
        &[w.metrics_addr().to_owned()],
        None,
        Duration::from_secs(60),
    )
    .await;
    let (_, on) = readyz(w.metrics_addr()).await;
    assert!(
        on.contains(&address(doomed)),
        "not back on node {doomed}: {on}"
    );
    let again = ids("cr", 500);
    let file = jobs_file(&t, &again);
    let mut publish = spawn_publish(&t, &url_from(doomed), &file, 64);
    publish.confirmed_all(again.len(), SETTLE).await;
    settle_batch(&t, &sink, &again).await;
    assert!(w.term().await.success(), "{}", w.logs());
    let c = reconcile_batch(&t, &sink, &again).await;
    ClusterRow::new(
        &format!(
            "the killed node restarted: rejoined in {:.0} s, then served",
            back.as_secs_f64()
        ),
        again.len(),
        &c,
        back,
        Duration::ZERO,
    )
    .passed();
}
