//! The `cluster` group: end to end on a 3-node RabbitMQ cluster with quorum queues, the
//! `courier work` binary against raw lapin doing the same work, in the same run.
//!
//! The cluster is `scripts/rabbitmq-cluster up` (AMQP 5681-5683), given by `--cluster-url`
//! (a comma-separated node list, like `AMQP_URL` on a cluster); the group never starts it, and
//! fails at once, before anything is measured, when a node does not answer or the nodes are not
//! one cluster. The topology is `bench/topology/cluster.toml`: the email work queue, its retry
//! tiers and the dead-letter queue are quorum queues with three replicas, under the run's
//! prefix plus `cluster.`.
//!
//! Two pairs, each consumer subscribed first and then N confirmed publishes from this process
//! (the raw publisher, `--window` outstanding, to node 1):
//!
//! - `baseline.cluster.e2e` / `binary.cluster.e2e`: the `binary` group's end-to-end pair as it
//!   is ([`binary::raw_e2e`], [`binary::binary_e2e`]): the raw consumer acking every P/2, or
//!   `courier work --handler noop`; from the first publish to the first poll that sees no
//!   message ready. Lossless when, once the consumer is gone, every queue of the topology is
//!   empty (the raw side also counts every id).
//! - `baseline.cluster.http` / `binary.cluster.http`: the consumer POSTs every message to a
//!   local endpoint ([`HttpSink`], answers 200) that counts ids from `Idempotency-Key`, so both
//!   sides are counted by the same observer (lost fails the run, duplicates are reported).
//!   `courier work --handler http --endpoint ...`, or plain lapin plus reqwest sending the
//!   same headers and acking after the 200 (the `binary` group's raw retry baseline without the
//!   503). From the first publish to the last new id at the endpoint.
//!
//! Raw lapin connects to the first node of the list (where the queues' leaders are: they are
//! declared through it); the worker is given the whole list, as users run it on a cluster, and
//! takes the first node that answers (node 1). Prefetch 200 (the worker's default) on both
//! sides; raw first in odd rounds, binary first in even ones.

use crate::binary::{self, E2E_PREFETCH};
use crate::broker::Scratch;
use crate::env::{Env, ROUTING_KEY};
use crate::report::Measurement;
use crate::sink::HttpSink;
use crate::tally::Tally;
use crate::{cpu, payload, raw};
use anyhow::Context;
use courier::amqp::AmqpUrl;
use courier::topology::Topology;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The cluster topology, embedded.
pub const TOPOLOGY: &str = include_str!("../topology/cluster.toml");

/// The three nodes of `scripts/rabbitmq-cluster` (what its `env` prints as `AMQP_URL`).
pub const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5681/%2f,amqp://guest:guest@127.0.0.1:5682/%2f,amqp://guest:guest@127.0.0.1:5683/%2f";

/// The nodes a cluster needs for the group (quorum queues with three replicas).
const MIN_NODES: usize = 3;

/// The noop end-to-end pair (raw, binary).
pub const E2E: (&str, &str) = ("baseline.cluster.e2e", "binary.cluster.e2e");

/// The HTTP end-to-end pair (raw lapin + reqwest, binary with `--handler http`).
pub const HTTP: (&str, &str) = ("baseline.cluster.http", "binary.cluster.http");

/// Every scenario id of the group, for "not measured" notes.
pub const IDS: [&str; 4] = [E2E.0, E2E.1, HTTP.0, HTTP.1];

/// The cluster as checked before the run.
pub struct Checked {
    /// Every node, as the worker is given them.
    pub url: AmqpUrl,
    /// The same list as given, for the worker's `AMQP_URL`.
    pub url_text: String,
    /// Each node alone, in the order given: raw lapin connects to the first.
    pub nodes: Vec<AmqpUrl>,
    /// What the JSON records of it.
    pub info: crate::report::Cluster,
}

/// What to do when the cluster is not there.
fn hint() -> &'static str {
    "start it with `scripts/rabbitmq-cluster up` (`scripts/rabbitmq-cluster status` shows each node), or point --cluster-url (COURIER_BENCH_CLUSTER_URL) at a running cluster"
}

/// Checks that every node of `text` answers (its `connection.start`) and reads the version.
/// Does not log in: the control connection does that next, and [`Cluster::apply`] checks that
/// the nodes are one cluster.
///
/// # Errors
/// A URL that does not parse, fewer than three nodes, a node that does not answer; each says
/// how to start the cluster.
pub async fn check(text: &str) -> anyhow::Result<Checked> {
    let url: AmqpUrl = text.parse().context("--cluster-url")?;
    anyhow::ensure!(
        url.node_count() >= MIN_NODES,
        "the cluster group needs a cluster of at least {MIN_NODES} nodes, comma-separated in --cluster-url (COURIER_BENCH_CLUSTER_URL); {url} lists {}",
        url.node_count()
    );
    let nodes: Vec<AmqpUrl> = text
        .split(',')
        .map(|part| part.trim().parse::<AmqpUrl>())
        .collect::<Result<_, _>>()
        .context("--cluster-url")?;
    let mut down = Vec::new();
    let mut version = None;
    for (node, (address, _)) in nodes.iter().zip(url.nodes_in_turn()) {
        match courier::broker::probe_server(node).await {
            Ok(info) => {
                if version.is_none() {
                    version = info.version.map(|v| v.to_string());
                }
            }
            Err(courier::broker::VersionProbeError::Io { reason, .. }) => {
                down.push(format!("{address}: {}", url.scrub(&reason)));
            }
        }
    }
    anyhow::ensure!(
        down.is_empty(),
        "the cluster group needs the RabbitMQ cluster at {url}, but {} of its {} nodes {} not answer ({}); {}",
        down.len(),
        nodes.len(),
        if down.len() == 1 { "does" } else { "do" },
        down.join("; "),
        hint()
    );
    let info = crate::report::Cluster {
        nodes: url
            .nodes_in_turn()
            .into_iter()
            .map(|(n, _)| n.address)
            .collect(),
        rabbitmq: version,
        queue_type: "quorum".to_owned(),
    };
    Ok(Checked {
        url,
        url_text: text.to_owned(),
        nodes,
        info,
    })
}

/// The group's environment and the binary it runs.
pub struct Cluster {
    /// Like the main one, on the cluster: `url` is the first node (raw lapin), `url_text` the
    /// whole list (the worker), `main` (and `retry`, the same) the cluster topology.
    pub env: Env,
    /// The `courier` binary.
    pub courier: PathBuf,
    /// Each node alone, for [`Cluster::apply`]'s check.
    nodes: Vec<AmqpUrl>,
}

impl Cluster {
    /// The cluster's environment, sized like `base` (messages, window, prefetch, stall, scratch
    /// directory), its topology under `base`'s prefix plus `cluster.`; connects the control
    /// connection (declaring happens in [`Cluster::apply`], so that clean-up covers it).
    ///
    /// # Errors
    /// The topology or the control connection.
    pub async fn connect(base: &Env, checked: Checked, courier: PathBuf) -> anyhow::Result<Self> {
        let prefix = format!("{}cluster.", base.main.prefix);
        let main = Topology::parse(TOPOLOGY, "bench/topology/cluster.toml", &prefix)?;
        // The group has no retry scenario: `retry` is the same topology (purged twice by
        // `reset`, which is harmless).
        let retry = main.clone();
        let file = base.tmp.join("cluster.toml");
        std::fs::write(&file, TOPOLOGY).with_context(|| format!("write {}", file.display()))?;
        let scratch = Scratch::connect_to(&checked.url, hint()).await?;
        let first = checked
            .nodes
            .first()
            .cloned()
            .context("--cluster-url lists no node")?;
        let env = Env {
            broker_pids: cpu::find_brokers(&checked.url),
            url: first,
            url_text: checked.url_text,
            scratch,
            main,
            retry,
            main_topology_file: file.clone(),
            retry_topology_file: file,
            messages: base.messages,
            window: base.window,
            prefetch: base.prefetch,
            concurrency: base.concurrency,
            stall: base.stall,
            tmp: base.tmp.clone(),
        };
        Ok(Self {
            env,
            courier,
            nodes: checked.nodes,
        })
    }

    /// Declares the cluster topology (through the first node that answers, node 1), then checks
    /// that every node sees its work queue: nodes of one cluster share their queues, separate
    /// brokers (a list of unrelated URLs) do not.
    ///
    /// # Errors
    /// The apply error; a node that cannot be logged in to or does not see the queue.
    pub async fn apply(&self) -> anyhow::Result<()> {
        self.env.scratch.apply(&self.env.main).await?;
        let queue = self.env.work_queue(&self.env.main);
        for node in &self.nodes {
            let admin = courier::broker::Admin::connect(node, "courier-bench cluster check")
                .await
                .with_context(|| format!("cannot log in to {node} ({})", hint()))?;
            let seen = admin.queue_state(queue).await;
            admin.close().await;
            anyhow::ensure!(
                seen?.is_some(),
                "{node} does not see the queue {queue} declared through the first node: the nodes of --cluster-url are not one cluster ({})",
                hint()
            );
        }
        Ok(())
    }

    /// Deletes everything the group declared.
    pub async fn cleanup(&self) {
        self.env.scratch.cleanup().await;
    }
}

/// Every measurement of one round: the noop pair, then the HTTP pair (raw first in odd rounds,
/// binary first in even ones).
pub async fn round(c: &Cluster, round: u32) -> Vec<Measurement> {
    let (env, courier) = (&c.env, c.courier.as_path());
    let raw_first = round % 2 == 1;
    let mut out = Vec::new();
    for raw_side in [raw_first, !raw_first] {
        env.reset().await;
        out.push(if raw_side {
            binary::raw_e2e(env, E2E.0).await
        } else {
            binary::binary_e2e(env, courier, E2E.1).await
        });
    }
    for raw_side in [raw_first, !raw_first] {
        env.reset().await;
        out.push(if raw_side {
            raw_http(env).await
        } else {
            binary_http(env, courier).await
        });
    }
    env.reset().await;
    out
}

/// Where both sides publish: the cluster topology's exchange, routing key `email`.
fn target(env: &Env) -> raw::Target {
    raw::Target {
        exchange: env.main_exchange(),
        routing_key: ROUTING_KEY.to_owned(),
    }
}

/// N confirmed publishes (priority 5, as the `binary` group's; a quorum queue on 3.x ignores
/// it, on 4.x every message is in the same level).
async fn publish(env: &Env) -> anyhow::Result<raw::Published> {
    raw::publish(&env.url, &target(env), env.messages, env.window, |seq| {
        payload::properties(seq).with_priority(5)
    })
    .await
}

/// `baseline.cluster.http`: plain lapin and reqwest, subscribed first (prefetch 200), then N
/// confirmed publishes; every delivery POSTed with the worker's headers and acked after the
/// answer (`multiple`, a quarter window at a time or after 2 ms). From the first publish to the
/// last new id at the endpoint.
async fn raw_http(env: &Env) -> Measurement {
    let (id, n) = (HTTP.0, env.messages);
    let ok = Arc::new(Tally::new(n, false));
    let run = async {
        let queue = env.work_queue(&env.main).to_owned();
        let sink = HttpSink::start(ok.clone())?;
        let endpoint = format!("http://{}/", sink.addr);
        let client = reqwest::Client::new();
        let decide = |d: &lapin::message::Delivery| {
            let message_id = d
                .properties
                .message_id()
                .as_ref()
                .map(|m| m.to_string())
                .unwrap_or_default();
            let request = client
                .post(&endpoint)
                .header("content-type", "application/json")
                .header(courier::handler::http::IDEMPOTENCY_KEY, message_id)
                .header(courier::handler::http::X_COURIER_ATTEMPT, 1)
                .body(d.data.clone());
            raw::Decision::Later(Box::pin(async move {
                // The endpoint counts the id; a request that failed leaves it uncounted, which
                // fails the scenario as lost.
                if let Ok(r) = request.send().await {
                    let _ = r.bytes().await;
                }
                None
            }))
        };
        let publisher = async {
            binary::subscribed(env, &queue, "the raw consumer").await?;
            let before = env.cpu();
            let p = publish(env).await?;
            anyhow::Ok((before, p.started))
        };
        let ((relayed, end), published) = tokio::join!(
            raw::relay_until(
                &env.url,
                &queue,
                E2E_PREFETCH,
                env.window,
                decide,
                None,
                ok.clone(),
                env.stall,
            ),
            publisher
        );
        sink.stop();
        let after = env.cpu();
        let (before, started) = published?;
        relayed?;
        let end = end.map_err(|s| {
            anyhow::anyhow!(
                "stalled: {} of {n} messages reached the HTTP endpoint",
                s.unique
            )
        })?;
        let (left, where_) = binary::left_over(env).await?;
        anyhow::ensure!(left == 0, "{left} messages left: {}", where_.join(", "));
        anyhow::Ok((
            end.saturating_duration_since(started),
            before.per_message_all(&after, n),
        ))
    };
    match run.await {
        Ok((elapsed, cpu)) => Measurement::new(id, elapsed, ok.counts()).with_cpu(cpu),
        Err(e) => Measurement::failed(id, ok.counts(), format!("{e:#}")),
    }
}

/// `binary.cluster.http`: `courier work --handler http --endpoint <local>` (prefetch 200, the
/// whole node list) subscribed first, then N confirmed publishes from this process; from the
/// first publish to the last new id at the endpoint. The worker is then left until idle and
/// stopped with SIGTERM (it must exit 0), and every queue must be empty.
async fn binary_http(env: &Env, courier: &Path) -> Measurement {
    let (id, n) = (HTTP.1, env.messages);
    let ok = Arc::new(Tally::new(n, false));
    let run = async {
        let queue = env.work_queue(&env.main).to_owned();
        let sink = HttpSink::start(ok.clone())?;
        let (mut worker, sink) =
            binary::http_worker(env, id, courier, (&env.main, &env.main_topology_file), sink)?;
        let timed = worker
            .during(async {
                binary::subscribed(env, &queue, "the worker").await?;
                let before = env.cpu();
                let p = publish(env).await?;
                let end = ok.wait(env.stall).await.map_err(|s| {
                    anyhow::anyhow!(
                        "stalled: {} of {n} messages reached the HTTP endpoint",
                        s.unique
                    )
                })?;
                anyhow::Ok((before, p.started, end))
            })
            .await;
        let stopped = binary::worker_stop(worker, env, timed.is_ok()).await;
        sink.stop();
        let after = env.cpu();
        let (before, started, end) = timed?;
        stopped?;
        let (left, where_) = binary::left_over(env).await?;
        anyhow::ensure!(left == 0, "{left} messages left: {}", where_.join(", "));
        anyhow::Ok((
            end.saturating_duration_since(started),
            before.per_message_all(&after, n),
        ))
    };
    match run.await {
        Ok((elapsed, cpu)) => Measurement::new(id, elapsed, ok.counts()).with_cpu(cpu),
        Err(e) => Measurement::failed(id, ok.counts(), format!("{e:#}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_topology_is_quorum_without_priorities() {
        let t = Topology::parse(TOPOLOGY, "cluster", "p.").expect("cluster topology");
        let work = t.work_queue("p.notifications.email").expect("email queue");
        assert_eq!(work.max_priority, None);
        assert_eq!(work.retry_queues.len(), 4);
        assert_eq!(t.dead_letter_queue, "p.notifications.dlq");
        assert_eq!(t.queues.len(), 6);
        for q in &t.queues {
            assert_eq!(
                q.queue_type,
                courier::topology::QueueType::Quorum,
                "{}",
                q.name
            );
            assert!(!q.arguments.contains_key("x-max-priority"), "{}", q.name);
        }
    }

    #[test]
    fn the_default_url_lists_the_three_nodes() {
        let url: AmqpUrl = DEFAULT_URL.parse().expect("default cluster URL");
        assert_eq!(url.node_count(), 3);
        let ports: Vec<u16> = url
            .nodes_in_turn()
            .iter()
            .map(|(_, u)| u.authority.port)
            .collect();
        assert_eq!(ports, [5681, 5682, 5683]);
    }

    #[tokio::test]
    async fn a_single_node_is_not_a_cluster() {
        let e = check("amqp://guest:guest@127.0.0.1:1/%2f")
            .await
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        assert!(e.contains("at least 3 nodes"), "{e}");
    }

    #[tokio::test]
    async fn nodes_that_do_not_answer_say_how_to_start_the_cluster() {
        let e = check("amqp://guest:guest@127.0.0.1:1/%2f,amqp://guest:guest@127.0.0.1:2/%2f,amqp://guest:guest@127.0.0.1:3/%2f")
            .await
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        assert!(e.contains("scripts/rabbitmq-cluster up"), "{e}");
        assert!(e.contains("3 of its 3 nodes"), "{e}");
        assert!(!e.contains("guest:guest"), "{e}");
    }
}
