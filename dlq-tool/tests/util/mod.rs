//! Helpers for the `courier-dlq` tests: a prefixed topology applied to the real broker and
//! removed on drop (even after a panic), the real binary, seeding dead letters the way the
//! worker and the broker write them, and non-destructive dumps of a queue.

#![allow(dead_code)]

use courier::amqp::AmqpUrl;
use courier::envelope::{self, Origin, Reason};
use courier::publisher::{Outgoing, Publisher, PublisherConfig};
use courier::topology::Topology;
use futures_util::StreamExt;
use lapin::options::{BasicGetOptions, BasicNackOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::BasicProperties;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| courier::amqp::DEFAULT_AMQP_URL.to_owned())
}

pub fn parsed_url() -> AmqpUrl {
    amqp_url().parse().expect("AMQP_URL parses")
}

pub fn management_url() -> String {
    std::env::var("COURIER_TEST_MANAGEMENT_URL")
        .unwrap_or_else(|_| "http://127.0.0.1:15672".to_owned())
}

pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

/// `t.dlq.<name>.<pid>.<counter>.<nanos>.`: no other test or run uses it.
pub fn unique_prefix(name: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "t.dlq.{name}.{}.{}.{nanos}.",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
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
    extra_queues: Vec<String>,
}

impl Env {
    pub async fn new(name: &str) -> Self {
        let prefix = unique_prefix(name);
        let topology = Topology::load(&repo_path("topology/notifications.toml"), &prefix)
            .expect("default topology");
        courier::topology::apply(&parsed_url(), &topology)
            .await
            .expect("topology applies");
        Self {
            prefix,
            topology,
            extra_queues: Vec::new(),
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
        self.extra_queues.push(name.clone());
        name
    }

    /// Runs `courier-dlq` against this topology.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args)
            .stdin(Stdio::null())
            .output()
            .expect("courier-dlq runs")
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_courier-dlq"));
        c.args(args)
            .env("AMQP_URL", amqp_url())
            .env("COURIER_PREFIX", &self.prefix)
            .env("COURIER_TOPOLOGY", repo_path("topology/notifications.toml"))
            .env_remove("COURIER_DLQ")
            .env("RUST_LOG", "warn");
        c
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let mut queues: Vec<String> = self
            .topology
            .queues
            .iter()
            .map(|q| q.name.clone())
            .collect();
        queues.append(&mut self.extra_queues);
        let exchanges: Vec<String> = self
            .topology
            .exchanges
            .iter()
            .map(|e| e.name.clone())
            .collect();
        // Its own runtime on its own thread, so this also works from inside a tokio test.
        let handle = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Ok(conn) = parsed_url().connect("dlq test cleanup").await else {
                    return;
                };
                for q in queues {
                    if let Ok(ch) = conn.create_channel().await {
                        let _ = ch.queue_delete(q.as_str().into(), Default::default()).await;
                    }
                }
                for e in exchanges {
                    if let Ok(ch) = conn.create_channel().await {
                        let _ = ch
                            .exchange_delete(e.as_str().into(), Default::default())
                            .await;
                    }
                }
                let _ = conn.close(200, "cleanup".into()).await;
            });
        });
        let _ = handle.join();
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
    let conn = parsed_url()
        .connect("dlq test depth")
        .await
        .expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    let q = ch
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("queue exists");
    let _ = conn.close(200, "done".into()).await;
    q.message_count()
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

/// Closes every connection whose name contains `needle` (management API). Only our own,
/// uniquely named ones are ever matched.
pub async fn close_connections(needle: &str) -> usize {
    let client = reqwest::Client::new();
    let list: serde_json::Value = client
        .get(format!("{}/api/connections", management_url()))
        .basic_auth("guest", Some("guest"))
        .send()
        .await
        .expect("management API answers")
        .json()
        .await
        .expect("connections JSON");
    let mut closed = 0;
    for c in list.as_array().cloned().unwrap_or_default() {
        let user_name = c["client_properties"]["connection_name"]
            .as_str()
            .unwrap_or_default();
        if !user_name.contains(needle) {
            continue;
        }
        let name = c["name"].as_str().unwrap_or_default();
        let encoded: String =
            percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC)
                .collect();
        let r = client
            .delete(format!("{}/api/connections/{encoded}", management_url()))
            .basic_auth("guest", Some("guest"))
            .send()
            .await
            .expect("close connection");
        if r.status().is_success() {
            closed += 1;
        }
    }
    closed
}
