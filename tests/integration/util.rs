//! Shared helpers: unique prefixes, the real binaries, the broker's own view of its objects.

#![allow(dead_code)]

use courier::amqp::AmqpUrl;
use courier::topology::Topology;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| courier::amqp::DEFAULT_AMQP_URL.to_owned())
}

pub fn parsed_url() -> AmqpUrl {
    amqp_url().parse().expect("AMQP_URL parses")
}

pub fn management_url() -> String {
    std::env::var("COURIER_TEST_MANAGEMENT_URL").unwrap_or_else(|_| "http://127.0.0.1:15672".to_owned())
}

pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

pub fn default_topology_path() -> PathBuf {
    repo_path("topology/notifications.toml")
}

/// A prefix no other test (or test run) uses: `t.<name>.<pid>.<counter>.<nanos>.`
pub fn unique_prefix(name: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!(
        "t.{name}.{}.{}.{nanos}.",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs `courier` with the test broker and the given prefix.
pub fn courier(prefix: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_courier"))
        .args(args)
        .env("AMQP_URL", amqp_url())
        .env("COURIER_PREFIX", prefix)
        .env("RUST_LOG", "warn")
        .output()
        .expect("courier binary runs")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Deletes every exchange and queue of a prefixed topology when dropped, even if the test
/// panicked; uses its own runtime so it also works from a `#[tokio::test]`.
pub struct Cleanup {
    pub queues: Vec<String>,
    pub exchanges: Vec<String>,
}

impl Cleanup {
    pub fn for_topology(t: &Topology) -> Self {
        Self {
            queues: t.queues.iter().map(|q| q.name.clone()).collect(),
            exchanges: t.exchanges.iter().map(|e| e.name.clone()).collect(),
        }
    }

    pub fn add_queue(&mut self, name: &str) {
        self.queues.push(name.to_owned());
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let queues = std::mem::take(&mut self.queues);
        let exchanges = std::mem::take(&mut self.exchanges);
        let handle = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            rt.block_on(async move {
                let Ok(conn) = parsed_url().connect("courier test cleanup").await else { return };
                for q in queues {
                    if let Ok(ch) = conn.create_channel().await {
                        let _ = ch.queue_delete(q.as_str().into(), Default::default()).await;
                    }
                }
                for e in exchanges {
                    if let Ok(ch) = conn.create_channel().await {
                        let _ = ch.exchange_delete(e.as_str().into(), Default::default()).await;
                    }
                }
                let _ = conn.close(200, "cleanup".into()).await;
            });
        });
        let _ = handle.join();
    }
}

/// The broker's own record of a queue (management API), or None if it does not exist.
pub async fn broker_queue(name: &str) -> Option<serde_json::Value> {
    let url = format!(
        "{}/api/queues/%2F/{}",
        management_url(),
        percent_encode(name)
    );
    let resp = reqwest::Client::new()
        .get(url)
        .basic_auth("guest", Some("guest"))
        .send()
        .await
        .expect("management API answers (is rabbitmq_management enabled? scripts/rabbitmq-up does it)");
    if resp.status() == reqwest::StatusCode::NOT_FOUND {
        return None;
    }
    assert!(resp.status().is_success(), "management API: {}", resp.status());
    Some(resp.json().await.expect("queue JSON"))
}

/// All bindings of the default vhost, as (source, destination, routing key).
pub async fn broker_bindings() -> Vec<(String, String, String)> {
    let v: serde_json::Value = reqwest::Client::new()
        .get(format!("{}/api/bindings/%2F", management_url()))
        .basic_auth("guest", Some("guest"))
        .send()
        .await
        .expect("management API answers")
        .json()
        .await
        .expect("bindings JSON");
    v.as_array()
        .expect("array")
        .iter()
        .map(|b| {
            (
                b["source"].as_str().unwrap_or_default().to_owned(),
                b["destination"].as_str().unwrap_or_default().to_owned(),
                b["routing_key"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

pub fn percent_encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).collect()
}
