//! The cluster under test: its nodes, `scripts/rabbitmq-cluster` to start, kill, freeze and
//! restart them, a guard that puts every node back, and the rows of docs/cluster.md.

use crate::census::{run, Census};
use crate::util::*;
use std::process::Command;
use std::time::{Duration, Instant};

/// The nodes' AMQP URLs: `COURIER_CLUSTER_NODES` (space separated, as `scripts/rabbitmq-cluster
/// env` sets it), else the script's default ports.
pub fn nodes() -> Vec<String> {
    match std::env::var("COURIER_CLUSTER_NODES") {
        Ok(list) if !list.trim().is_empty() => list.split_whitespace().map(String::from).collect(),
        _ => (1..=3)
            .map(|n| format!("amqp://guest:guest@127.0.0.1:568{n}/%2f"))
            .collect(),
    }
}

/// `AMQP_URL` listing every node, node `first` (1-based) first: processes given different
/// first nodes spread over the cluster.
pub fn url_from(first: usize) -> String {
    url_with(first, "")
}

/// [`url_from`] with `query` (e.g. `heartbeat=4`) on every node's URL.
pub fn url_with(first: usize, query: &str) -> String {
    let all = nodes();
    let n = all.len();
    (0..n)
        .map(|k| {
            let node = &all[(first - 1 + k) % n];
            match (query.is_empty(), node.contains('?')) {
                (true, _) => node.clone(),
                (false, true) => format!("{node}&{query}"),
                (false, false) => format!("{node}?{query}"),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// `host:port` of node `n` (1-based), as the processes report it in `/readyz` and metrics.
pub fn address(n: usize) -> String {
    let url: courier::amqp::AmqpUrl = nodes()[n - 1].parse().expect("node URL");
    url.nodes_in_turn()[0].0.address.clone()
}

fn script() -> Command {
    Command::new(repo_path("scripts/rabbitmq-cluster"))
}

/// Runs `scripts/rabbitmq-cluster ARGS` to completion (on a blocking thread: the case's sink and
/// processes keep running meanwhile) and returns its stdout; panics with its stderr on failure.
pub async fn cluster(args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let out = output_within(script().args(&args), Duration::from_secs(200));
        assert!(
            out.status.success(),
            "scripts/rabbitmq-cluster {args:?} failed:\n{}{}",
            stdout(&out),
            stderr(&out)
        );
        stdout(&out)
    })
    .await
    .expect("script thread")
}

/// Makes sure the cluster runs, all three nodes in one cluster: before every case, since the
/// one before may have left a node restarting (`up` is quick when all is well, and heals what
/// is not).
pub async fn ensure_up() {
    cluster(&["up"]).await;
}

/// The node (1-based) leading quorum queue `queue` now.
pub async fn leader(queue: &str) -> usize {
    let out = cluster(&["leader", queue]).await;
    out.trim()
        .parse()
        .unwrap_or_else(|_| panic!("leader of {queue}: unexpected answer {out:?}"))
}

/// Waits until `queue`'s leader is a node other than `old`, and returns it.
pub async fn new_leader(queue: &str, old: usize, timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    loop {
        let out = tokio::task::spawn_blocking({
            let queue = queue.to_owned();
            move || output_within(script().args(["leader", &queue]), Duration::from_secs(60))
        })
        .await
        .expect("script thread");
        if let Ok(n) = stdout(&out).trim().parse::<usize>() {
            if n != old {
                return n;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no new leader for {queue} within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A node fault in force until dropped: drop (the case's end, or a panic anywhere in it)
/// resumes and restarts the node, so a failed case never leaves the cluster short of a node for
/// the ones after it.
pub struct NodeFault {
    node: usize,
    ended: bool,
}

impl NodeFault {
    /// `kill -9` of node `node`'s Erlang VM: the node dies with everything in its memory.
    pub async fn kill(node: usize) -> Self {
        let guard = Self { node, ended: false };
        cluster(&["kill", &node.to_string()]).await;
        guard
    }

    /// `SIGSTOP` of node `node`: it holds its sockets open and answers nothing (a hung node).
    pub async fn freeze(node: usize) -> Self {
        let guard = Self { node, ended: false };
        cluster(&["freeze", &node.to_string()]).await;
        guard
    }

    /// Resumes a frozen node (`SIGCONT`): the fault is over.
    pub async fn thaw(mut self) {
        cluster(&["thaw", &self.node.to_string()]).await;
        self.ended = true;
    }

    /// Starts the node again and waits until it runs in the cluster; returns how long that took.
    pub async fn restart(mut self) -> Duration {
        let started = Instant::now();
        cluster(&["thaw", &self.node.to_string()]).await;
        cluster(&["start", &self.node.to_string()]).await;
        self.ended = true;
        started.elapsed()
    }
}

impl Drop for NodeFault {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        // Also on panic: never assert here (a panic while panicking aborts).
        let n = self.node.to_string();
        let _ = std::thread::spawn(move || {
            let _ = script().args(["thaw", &n]).output();
            let _ = script().args(["start", &n]).output();
        })
        .join();
    }
}

/// The `/readyz` answer of a worker serving metrics on `addr`: (status, body).
pub async fn readyz(addr: &str) -> (u16, String) {
    match reqwest::get(format!("http://{addr}/readyz")).await {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.text().await.unwrap_or_default())
        }
        Err(e) => (0, e.to_string()),
    }
}

/// Waits until every worker's `/readyz` says ready, on a node other than `not_on` when given;
/// returns the time that took.
pub async fn all_ready(addrs: &[String], not_on: Option<&str>, timeout: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let mut pending = Vec::new();
        for a in addrs {
            let (status, body) = readyz(a).await;
            if status != 200 || not_on.is_some_and(|n| body.contains(n)) {
                pending.push(format!("{a}: {status} {}", body.trim()));
            }
        }
        if pending.is_empty() {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < timeout,
            "workers not ready on a surviving node within {timeout:?}: {pending:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The longest pause between two consecutive sink answers after `from`: what a fault cost the
/// deliveries.
pub fn longest_pause(sink: &Sink, from: Instant) -> Duration {
    let mut at: Vec<Instant> = sink.all().iter().map(|r| r.at).collect();
    at.sort_unstable();
    let mut last = from;
    let mut worst = Duration::ZERO;
    for t in at.into_iter().filter(|t| *t >= from) {
        worst = worst.max(t - last);
        last = t;
    }
    worst
}

/// One row of docs/cluster.md's results table.
#[derive(Debug, serde::Serialize)]
pub struct ClusterRow {
    pub fault: String,
    pub sent: usize,
    pub delivered: usize,
    pub dead_lettered: usize,
    pub lost: usize,
    pub duplicated: usize,
    /// Fault to every process serving again (workers ready on a surviving node).
    pub failover_secs: f64,
    /// Longest pause between two deliveries after the fault.
    pub pause_secs: f64,
    pub run: crate::census::Run,
}

impl ClusterRow {
    pub fn new(fault: &str, sent: usize, c: &Census, failover: Duration, pause: Duration) -> Self {
        Self {
            fault: fault.to_owned(),
            sent,
            delivered: c.in_place(crate::census::DELIVERED),
            dead_lettered: c.in_place(crate::census::DEAD),
            lost: c.lost().len(),
            duplicated: c.duplicated(),
            failover_secs: failover.as_secs_f64(),
            pause_secs: pause.as_secs_f64(),
            run: run().clone(),
        }
    }

    /// Writes the row to `target/tmp/cluster-<broker version>.jsonl`: call it after the case's
    /// last assertion.
    pub fn passed(self) {
        let name = format!("cluster-{}.jsonl", self.run.broker);
        crate::census::append_row("CLUSTER", &name, &self);
    }
}
