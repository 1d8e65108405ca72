//! Shared helpers: unique prefixes, the real binaries, the broker's own view of its objects.

// Shared by the integration and fault binaries, each of which uses a different part.
#![allow(dead_code, unused_imports)]

use courier::topology::Topology;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub use courier_testkit::process::{
    output_within, spawn_within, DeadlineChild, PipeLog, SpawnWithin, CHILD_DEADLINE,
    DEFAULT_DEADLINE,
};
pub use courier_testkit::queues::{
    broker_bindings, broker_queue, depth, percent_encode, wait_depth,
};
pub use courier_testkit::sink::{
    delivered_ids, delivered_in_order, reconcile, Delay, Received, Script, Sink,
};
pub use courier_testkit::{
    amqp_url, free_addr, free_port, management_url, parsed_url, unique_prefix, Cleanup,
};

pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

pub fn default_topology_path() -> PathBuf {
    repo_path("topology/notifications.toml")
}

/// Runs `courier` with the test broker and the given prefix.
pub fn courier(prefix: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_courier"));
    cmd.args(args)
        .env("AMQP_URL", amqp_url())
        .env("COURIER_PREFIX", prefix)
        .env("RUST_LOG", "warn");
    output_within(&mut cmd, DEFAULT_DEADLINE)
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Worker tests: a real HTTP sink, a prefixed topology, publishing and reading queues.
// ---------------------------------------------------------------------------------------------

use courier::publisher::{Outgoing, Publisher, PublisherConfig};
use lapin::options::BasicGetOptions;
use lapin::BasicProperties;
use std::time::{Duration, Instant};

/// A prefixed copy of a topology file applied to the broker, removed on drop.
pub struct TestTopology {
    pub topology: Topology,
    pub prefix: String,
    pub file: PathBuf,
    _fixture: courier_testkit::Fixture,
}

impl TestTopology {
    pub async fn apply(name: &str, file: &str) -> Self {
        let fixture = courier_testkit::Fixture::apply(name, file).await;
        Self {
            topology: fixture.topology.clone(),
            prefix: fixture.prefix.clone(),
            file: fixture.file.clone(),
            _fixture: fixture,
        }
    }

    pub async fn fast(name: &str) -> Self {
        Self::apply(name, "tests/fixtures/fast.toml").await
    }

    pub fn name(&self, short: &str) -> String {
        format!("{}{short}", self.prefix)
    }

    pub fn exchange(&self) -> String {
        self.name("notifications")
    }

    pub fn dlq(&self) -> String {
        self.topology.dead_letter_queue.clone()
    }
}

pub async fn publisher() -> Publisher {
    Publisher::connect(
        &parsed_url(),
        PublisherConfig::default(),
        courier::metrics::Metrics::new(),
    )
    .await
    .expect("publisher connects")
}

/// A contract-conforming message: JSON body, message_id, persistent.
pub fn job(exchange: &str, routing_key: &str, id: &str, priority: u8) -> Outgoing {
    Outgoing {
        exchange: exchange.to_owned(),
        routing_key: routing_key.to_owned(),
        properties: BasicProperties::default()
            .with_message_id(id.into())
            .with_priority(priority)
            .with_delivery_mode(2)
            .with_content_type("application/json".into()),
        body: format!(r#"{{"to":"user-{id}@example.com","text":"hello"}}"#).into_bytes(),
    }
}

/// Publishes `n` jobs `<tag>-0 .. <tag>-(n-1)` concurrently; returns their ids.
pub async fn publish_jobs(
    p: &Publisher,
    exchange: &str,
    key: &str,
    tag: &str,
    n: usize,
) -> Vec<String> {
    let ids: Vec<String> = (0..n).map(|i| format!("{tag}-{i}")).collect();
    let futs = ids.iter().map(|id| p.publish(job(exchange, key, id, 0)));
    for r in futures_util::future::join_all(futs).await {
        r.expect("publish confirmed");
    }
    ids
}

/// Takes every message currently in `queue` (basic.get + ack). For DLQ assertions.
pub async fn drain(queue: &str) -> Vec<lapin::message::BasicGetMessage> {
    let conn = parsed_url().connect("test drain").await.expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    let mut out = Vec::new();
    while let Some(m) = ch
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
    {
        out.push(m);
    }
    let _ = conn.close(200, "done".into()).await;
    out
}

pub fn header_str(m: &lapin::message::BasicGetMessage, name: &str) -> Option<String> {
    courier::envelope::str_header(m.delivery.properties.headers().as_ref(), name)
}

pub fn header_int(m: &lapin::message::BasicGetMessage, name: &str) -> Option<i64> {
    courier::envelope::int_header(m.delivery.properties.headers().as_ref(), name)
}

pub use courier_testkit::worker::{http_handler, OnTopology, RunningWorker};

impl OnTopology for TestTopology {
    fn topology(&self) -> &Topology {
        &self.topology
    }

    fn prefixed(&self, short: &str) -> String {
        self.name(short)
    }
}

/// The broker's record of `q` (management API), after checking that the broker holds exactly
/// the arguments the topology declares for it.
pub async fn declared_as_in_topology(q: &courier::topology::QueueDef) -> serde_json::Value {
    let broker = broker_queue(&q.name)
        .await
        .unwrap_or_else(|| panic!("queue {} missing on the broker", q.name));
    let args = broker["arguments"].as_object().expect("arguments object");
    assert_eq!(
        args.len(),
        q.arguments.len(),
        "{}: broker has {args:?}",
        q.name
    );
    for (k, v) in &q.arguments {
        assert_eq!(args.get(k), Some(&v.to_json()), "{}: argument {k}", q.name);
    }
    broker
}

/// `courier-dlq` lives in another package of the workspace: build it (a no-op when it is up
/// to date), so a test never runs, or reads the help of, a stale binary.
pub fn courier_dlq_bin() -> PathBuf {
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "-p", "dlq-tool", "--bin", "courier-dlq"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("cargo build -p dlq-tool");
    assert!(status.success(), "cannot build courier-dlq");
    let courier = PathBuf::from(env!("CARGO_BIN_EXE_courier"));
    courier.with_file_name(format!("courier-dlq{}", std::env::consts::EXE_SUFFIX))
}
