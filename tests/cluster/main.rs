//! The cluster suite: a real 3-node RabbitMQ cluster (`scripts/rabbitmq-cluster`), quorum
//! queues, real `courier work` and `courier publish` processes with the three nodes in
//! `AMQP_URL`, and one node killed, frozen or restarted while messages are in flight. Every case
//! reconciles each id it saw confirmed: delivered, or in the dead-letter queue with a reason;
//! lost must be 0, duplicates are counted and reported.
//!
//! Run alone and serially, like the fault suite (the cases stop nodes every other test would
//! be using): `scripts/rabbitmq-cluster up`, then
//! `eval "$(scripts/rabbitmq-cluster env)"; cargo test --test cluster -- --test-threads=1`
//! (scripts/test does all three, and `scripts/rabbitmq-cluster down` after). Each case starts
//! the cluster if it is not up, and its [`NodeFault`] guard thaws and restarts any node it
//! stopped, also when the case panics. A passing case writes a row to
//! `target/tmp/cluster-<broker version>.jsonl`, from which docs/cluster.md's table is made.

// Shared with the integration and fault tests; this binary uses only part of each.
#[path = "../integration/util.rs"]
mod util;

#[path = "../faults/census.rs"]
#[allow(dead_code)]
mod census;

#[path = "../faults/harness.rs"]
#[allow(dead_code)]
mod harness;

mod cluster;

#[path = "../integration/ordering.rs"]
mod ordering;

mod dlq_replay;
mod hung_node;
mod node_loss;
mod shards;

use std::time::Duration;

/// Longest any case waits for a whole batch to settle.
const SETTLE: Duration = Duration::from_secs(240);

/// The topology of every case: quorum work queue, tiers and dead-letter queue.
const TOPOLOGY: &str = "tests/cluster/cluster.toml";
