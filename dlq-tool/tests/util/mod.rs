//! Helpers for the `courier-dlq` tests: a prefixed topology applied to the real broker and
//! removed on drop (even after a panic), the real binary, seeding dead letters the way the
//! worker and the broker write them, and non-destructive dumps of a queue.

#![allow(dead_code)]

use courier::envelope::{self, Origin, Reason};
use courier::publisher::{Outgoing, Publisher, PublisherConfig};
use courier::topology::Topology;
use futures_util::StreamExt;
use lapin::options::{BasicGetOptions, BasicNackOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::BasicProperties;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

// Each test binary uses a different part of these.
#[allow(unused_imports)]
pub use courier_testkit::process::{
    output_within, spawn_within, DeadlineChild, SpawnWithin, CHILD_DEADLINE, DEFAULT_DEADLINE,
};
#[allow(unused_imports)]
pub use courier_testkit::queues::close_connections;
#[allow(unused_imports)]
pub use courier_testkit::{amqp_url, management_url, parsed_url, repo_path};

/// `t.dlq.<name>.<pid>.<counter>.<nanos>.`: no other test or run uses it.
pub fn unique_prefix(name: &str) -> String {
    courier_testkit::unique_prefix(&format!("dlq.{name}"))
}

/// A temporary file path, removed on drop.
pub struct TempFile(pub PathBuf);

impl TempFile {
    pub fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!(
            "courier-dlq-test-{name}-{}-{}.jsonl",
            std::process::id(),
            envelope::new_message_id()
        ));
        let _ = std::fs::remove_file(&p);
        Self(p)
    }

    pub fn path(&self) -> &str {
        self.0.to_str().expect("utf-8 temp path")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The default topology under a unique prefix, applied; every queue and exchange it declared,
/// and every extra queue added, is deleted on drop.
pub struct Env {
    pub prefix: String,
    pub topology: Topology,
    /// The topology file (relative to the repository).
    pub file: &'static str,
    /// Deletes the topology and every extra queue on drop, even after a panic.
    cleanup: courier_testkit::Cleanup,
}

impl Env {
    pub async fn new(name: &str) -> Self {
        Self::with_file(name, "topology/notifications.toml").await
    }

    /// `file` (relative to the repository) under a unique prefix, applied.
    pub async fn with_file(name: &str, file: &'static str) -> Self {
        let prefix = unique_prefix(name);
        let topology = Topology::load(&repo_path(file), &prefix).expect("test topology");
        let cleanup = courier_testkit::Cleanup::for_topology(&topology);
        courier::broker::apply(&parsed_url(), &topology)
            .await
            .expect("topology applies");
        Self {
            prefix,
            topology,
            file,
            cleanup,
        }
    }

    pub fn dlq(&self) -> String {
        self.topology.dead_letter_queue.clone()
    }

    pub fn dlx(&self) -> String {
        self.topology.dead_letter_exchange.clone()
    }

    pub fn exchange(&self) -> String {
        format!("{}notifications", self.prefix)
    }

    pub fn queue(&self, short: &str) -> String {
        format!("{}{short}", self.prefix)
    }

    pub fn origin(&self, channel: &str) -> Origin {
        Origin {
            exchange: self.exchange(),
            routing_key: channel.to_owned(),
            queue: self.queue(&format!("notifications.{channel}")),
        }
    }

    /// Declares an extra durable classic queue (deleted on drop).
    pub async fn declare_queue(&mut self, short: &str, args: FieldTable) -> String {
        let name = self.queue(short);
        let mut args = args;
        args.insert("x-queue-type".into(), long("classic"));
        let conn = parsed_url()
            .connect("dlq test declare")
            .await
            .expect("connect");
        let ch = conn.create_channel().await.expect("channel");
        ch.queue_declare(
            name.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .expect("declare");
        let _ = conn.close(200, "done".into()).await;
        self.cleanup.add_queue(&name);
        name
    }

    /// Runs `courier-dlq` against this topology.
    pub fn run(&self, args: &[&str]) -> Output {
        output_within(&mut self.command(args), DEFAULT_DEADLINE)
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_courier-dlq"));
        c.args(args)
            .env("AMQP_URL", amqp_url())
            .env("COURIER_PREFIX", &self.prefix)
            .env("COURIER_TOPOLOGY", repo_path(self.file))
            // A replay's journal goes to the state directory: the test's, never the user's.
            .env(
                "XDG_STATE_HOME",
                std::env::temp_dir().join("courier-dlq-test-state"),
            )
            .env_remove("COURIER_DLQ_JOURNAL")
            .env("COURIER_MANAGEMENT_URL", management_url())
            .env_remove("COURIER_DLQ")
            .env("COURIER_DLQ_AUDIT_LOG", self.audit_log())
            .env_remove("COURIER_DLQ_AUDIT_QUEUE")
            .env("RUST_LOG", "warn");
        c
    }

    /// This test's audit log (never the user's own).
    pub fn audit_log(&self) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("{}dlq-audit.jsonl", self.prefix))
    }
}

impl courier_testkit::worker::OnTopology for Env {
    fn topology(&self) -> &Topology {
        &self.topology
    }

    fn prefixed(&self, short: &str) -> String {
        self.queue(short)
    }
}

pub fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts the exit code and shows both streams when it differs.
pub fn expect_code(o: &Output, code: i32, what: &str) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "{what}: exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        stdout(o),
        stderr(o)
    );
}

pub async fn publisher() -> Publisher {
    Publisher::connect(
        &parsed_url(),
        PublisherConfig {
            name: "dlq test seeder".to_owned(),
            window: 1024,
            ..PublisherConfig::default()
        },
        courier::metrics::Metrics::new(),
    )
    .await
    .expect("publisher connects")
}

/// A dead letter as the worker writes it: worker headers, JSON body, persistent.
pub fn worker_dead_letter(
    env: &Env,
    id: &str,
    channel: &str,
    reason: Reason,
    error: &str,
    dead_lettered_at: i64,
) -> Outgoing {
    let original = {
        let mut h = FieldTable::default();
        h.insert("tenant".into(), long("acme"));
        h
    };
    let headers = envelope::dead_letter_headers(
        Some(&original),
        5,
        reason,
        error,
        &env.origin(channel),
        dead_lettered_at,
    );
    Outgoing {
        exchange: String::new(),
        routing_key: env.dlq(),
        properties: BasicProperties::default()
            .with_message_id(id.into())
            .with_priority(3)
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_headers(headers),
        body: format!(r#"{{"to":"user-{id}@example.com","text":"hello"}}"#).into_bytes(),
    }
}

/// Publishes every message concurrently (in order) and waits for all confirms.
pub async fn publish_all(p: &Publisher, msgs: Vec<Outgoing>) {
    let results: Vec<_> = futures_util::stream::iter(msgs)
        .map(|m| p.publish(m))
        .buffered(1024)
        .collect()
        .await;
    for r in results {
        r.expect("publish confirmed");
    }
}

/// A message as stored: properties (headers included) and body.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub props: BasicProperties,
    pub body: Vec<u8>,
}

impl Stored {
    pub fn id(&self) -> String {
        envelope::message_id(&self.props)
            .unwrap_or_default()
            .to_owned()
    }

    pub fn header(&self) -> Option<&FieldTable> {
        self.props.headers().as_ref()
    }
}

/// Every message of `queue` in order, leaving the queue as it was: basic.get without ack, then
/// one nack(multiple, requeue) puts them all back in place.
pub async fn dump(queue: &str) -> Vec<Stored> {
    let conn = parsed_url()
        .connect("dlq test dump")
        .await
        .expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    let mut out = Vec::new();
    let mut last = 0;
    while let Some(m) = ch
        .basic_get(queue.into(), BasicGetOptions { no_ack: false })
        .await
        .expect("basic.get")
    {
        last = m.delivery.delivery_tag;
        out.push(Stored {
            props: m.delivery.properties.clone(),
            body: m.delivery.data.clone(),
        });
    }
    if last > 0 {
        ch.basic_nack(
            last,
            BasicNackOptions {
                multiple: true,
                requeue: true,
            },
        )
        .await
        .expect("nack");
    }
    let _ = conn.close(200, "done".into()).await;
    settle_requeue(queue, out.len()).await;
    out
}

/// Waits until `queue` shows `n` ready messages again after a requeue: the broker requeues
/// asynchronously, and a command started right away could count a large queue short.
async fn settle_requeue(queue: &str, n: usize) {
    let n = u32::try_from(n).unwrap_or(u32::MAX);
    let deadline = Instant::now() + Duration::from_secs(10);
    while depth(queue).await < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `redelivered` flag of every message of `queue`, in order, leaving the queue as it was
/// (like [`dump`]). After a first [`dump`] every message that is still the original has it set;
/// a copy republished since (a put-back to the tail) has not.
pub async fn redelivered(queue: &str) -> Vec<(String, bool)> {
    let conn = parsed_url()
        .connect("dlq test redelivered")
        .await
        .expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    let mut out = Vec::new();
    let mut last = 0;
    while let Some(m) = ch
        .basic_get(queue.into(), BasicGetOptions { no_ack: false })
        .await
        .expect("basic.get")
    {
        last = m.delivery.delivery_tag;
        let id = envelope::message_id(&m.delivery.properties)
            .unwrap_or_default()
            .to_owned();
        out.push((id, m.delivery.redelivered));
    }
    if last > 0 {
        ch.basic_nack(
            last,
            BasicNackOptions {
                multiple: true,
                requeue: true,
            },
        )
        .await
        .expect("nack");
    }
    let _ = conn.close(200, "done".into()).await;
    settle_requeue(queue, out.len()).await;
    out
}

/// Takes every message out of `queue`.
pub async fn drain(queue: &str) -> Vec<Stored> {
    let conn = parsed_url()
        .connect("dlq test drain")
        .await
        .expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    let mut out = Vec::new();
    while let Some(m) = ch
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
    {
        out.push(Stored {
            props: m.delivery.properties.clone(),
            body: m.delivery.data.clone(),
        });
    }
    let _ = conn.close(200, "done".into()).await;
    out
}

/// Ready messages in `queue`.
pub async fn depth(queue: &str) -> u32 {
    courier_testkit::queues::depth(queue).await
}

/// Waits until `queue` holds exactly `n` ready messages.
pub async fn wait_depth(queue: &str, n: u32, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let d = depth(queue).await;
        if d == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{queue}: {d} messages, expected {n}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn int_header(m: &Stored, name: &str) -> Option<i64> {
    envelope::int_header(m.header(), name)
}

pub fn str_header(m: &Stored, name: &str) -> Option<String> {
    envelope::str_header(m.header(), name)
}
