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
    std::env::var("COURIER_TEST_MANAGEMENT_URL")
        .unwrap_or_else(|_| "http://127.0.0.1:15672".to_owned())
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
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
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
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Ok(conn) = parsed_url().connect("courier test cleanup").await else {
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
        .expect(
            "management API answers (is rabbitmq_management enabled? scripts/rabbitmq-up does it)",
        );
    if resp.status() == reqwest::StatusCode::NOT_FOUND {
        return None;
    }
    assert!(
        resp.status().is_success(),
        "management API: {}",
        resp.status()
    );
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

// ---------------------------------------------------------------------------------------------
// Worker tests: a real HTTP sink, a prefixed topology, publishing and reading queues.
// ---------------------------------------------------------------------------------------------

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use courier::publisher::{Outgoing, Publisher, PublisherConfig};
use lapin::options::BasicGetOptions;
use lapin::types::FieldTable;
use lapin::BasicProperties;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One request the sink received.
#[derive(Debug, Clone)]
pub struct Received {
    pub message_id: String,
    pub attempt: u32,
    pub body: Vec<u8>,
    pub content_type: String,
    pub at: Instant,
    /// What the sink answered.
    pub status: u16,
}

/// What the sink answers: status and extra headers, decided per request.
pub type Script = Arc<dyn Fn(&Received) -> (u16, Vec<(String, String)>) + Send + Sync>;

/// A real local HTTP server that records every request and answers as the test says.
#[derive(Clone)]
pub struct Sink {
    pub url: String,
    pub received: Arc<Mutex<Vec<Received>>>,
}

/// How long the sink waits before answering a request.
pub type Delay = Arc<dyn Fn(&Received) -> Duration + Send + Sync>;

#[derive(Clone)]
struct SinkState {
    received: Arc<Mutex<Vec<Received>>>,
    script: Script,
    delay: Delay,
}

async fn sink_handler(
    State(s): State<SinkState>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, HeaderMap) {
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let r = Received {
        message_id: h("idempotency-key"),
        attempt: h("x-courier-attempt").parse().unwrap_or(0),
        body: body.to_vec(),
        content_type: h("content-type"),
        at: Instant::now(),
        status: 0,
    };
    let delay = (s.delay)(&r);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let (status, extra) = (s.script)(&r);
    let mut r = r;
    r.status = status;
    s.received.lock().expect("lock").push(r);
    let mut out = HeaderMap::new();
    for (k, v) in extra {
        out.insert(
            axum::http::HeaderName::from_bytes(k.as_bytes()).expect("header name"),
            v.parse().expect("header value"),
        );
    }
    (StatusCode::from_u16(status).expect("status"), out)
}

impl Sink {
    /// Answers 200 to everything.
    pub async fn ok() -> Self {
        Self::start(Arc::new(|_| (200, vec![])), Duration::ZERO).await
    }

    pub async fn start(script: Script, delay: Duration) -> Self {
        Self::start_with(script, Arc::new(move |_| delay)).await
    }

    /// A sink whose answer delay depends on the request.
    pub async fn start_with(script: Script, delay: Delay) -> Self {
        let received = Arc::new(Mutex::new(Vec::new()));
        let state = SinkState {
            received: received.clone(),
            script,
            delay,
        };
        let app = axum::Router::new()
            .route("/deliver", axum::routing::post(sink_handler))
            .layer(axum::extract::DefaultBodyLimit::disable())
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind sink");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            url: format!("http://{addr}/deliver"),
            received,
        }
    }

    pub fn all(&self) -> Vec<Received> {
        self.received.lock().expect("lock").clone()
    }

    /// Successful (2xx-answered) deliveries per message id are counted by the caller's script;
    /// this counts requests per id.
    pub fn counts(&self) -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for r in self.all() {
            *m.entry(r.message_id).or_insert(0) += 1;
        }
        m
    }

    /// Waits until `pred` holds over the received requests, or panics after `timeout`.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&[Received]) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            if pred(&self.all()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for: {what} (received {})",
                self.all().len()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// A prefixed copy of a topology file applied to the broker, removed on drop.
pub struct TestTopology {
    pub topology: Topology,
    pub prefix: String,
    pub file: PathBuf,
    _cleanup: Cleanup,
}

impl TestTopology {
    pub async fn apply(name: &str, file: &str) -> Self {
        let prefix = unique_prefix(name);
        let file = repo_path(file);
        let topology = Topology::load(&file, &prefix).expect("test topology valid");
        let cleanup = Cleanup::for_topology(&topology);
        courier::topology::apply(&parsed_url(), &topology)
            .await
            .expect("apply");
        Self {
            topology,
            prefix,
            file,
            _cleanup: cleanup,
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

/// Messages ready in `queue`.
pub async fn depth(queue: &str) -> u32 {
    let conn = parsed_url().connect("test depth").await.expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    let q = ch
        .queue_declare(
            queue.into(),
            lapin::options::QueueDeclareOptions {
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

/// Waits until `queue` holds at least `n` messages.
pub async fn wait_depth(queue: &str, n: u32, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let d = depth(queue).await;
        if d >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{queue}: {d} messages, expected {n}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn header_str(m: &lapin::message::BasicGetMessage, name: &str) -> Option<String> {
    courier::envelope::str_header(m.delivery.properties.headers().as_ref(), name)
}

pub fn header_int(m: &lapin::message::BasicGetMessage, name: &str) -> Option<i64> {
    courier::envelope::int_header(m.delivery.properties.headers().as_ref(), name)
}

/// Lost and duplicated counts of a delivery run: `expected` ids against the ids the sink
/// answered with 2xx (`delivered`).
pub fn reconcile(expected: &[String], delivered: &[String]) -> (usize, usize) {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for d in delivered {
        *seen.entry(d.as_str()).or_insert(0) += 1;
    }
    let lost = expected
        .iter()
        .filter(|id| !seen.contains_key(id.as_str()))
        .count();
    let dup = seen.values().filter(|n| **n > 1).map(|n| n - 1).sum();
    (lost, dup)
}

/// A worker running in this process on a test topology.
pub struct RunningWorker {
    pub shutdown: tokio_util::sync::CancellationToken,
    pub handle: tokio::task::JoinHandle<()>,
    pub health: courier::metrics::Health,
    pub metrics: courier::metrics::Metrics,
}

impl RunningWorker {
    pub fn spawn<H: courier::handler::Handler>(
        t: &TestTopology,
        queue: &str,
        handler: H,
        tweak: impl FnOnce(&mut courier::worker::WorkerSettings),
    ) -> Self {
        let mut settings = courier::worker::WorkerSettings::new(t.name(queue));
        settings.reconnect_max = Duration::from_secs(1);
        settings.shutdown_timeout = Duration::from_secs(10);
        tweak(&mut settings);
        let config = settings.build().expect("worker settings valid");
        let metrics = courier::metrics::Metrics::new();
        let health = courier::metrics::Health::default();
        let worker = courier::worker::Worker::new(
            parsed_url(),
            &t.topology,
            config,
            handler,
            metrics.clone(),
            health.clone(),
        )
        .expect("worker config valid");
        let shutdown = tokio_util::sync::CancellationToken::new();
        let handle = tokio::spawn(worker.run(shutdown.clone()));
        Self {
            shutdown,
            handle,
            health,
            metrics,
        }
    }

    pub fn http(t: &TestTopology, queue: &str, sink: &Sink) -> Self {
        Self::spawn(t, queue, http_handler(sink), |_| {})
    }

    pub async fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.health.is_ready() {
            assert!(
                Instant::now() < deadline,
                "worker not ready within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(20), self.handle)
            .await
            .expect("worker stops within 20s")
            .expect("worker task did not panic");
    }
}

pub fn http_handler(sink: &Sink) -> courier::handler::http::HttpHandler {
    let mut cfg = courier::handler::http::HttpConfig::new(sink.url.clone());
    cfg.timeout = Duration::from_secs(5);
    courier::handler::http::HttpHandler::new(cfg).expect("endpoint valid")
}

/// Ids the sink answered with 2xx.
pub fn delivered_ids(sink: &Sink) -> Vec<String> {
    sink.all()
        .into_iter()
        .filter(|r| (200..300).contains(&r.status))
        .map(|r| r.message_id)
        .collect()
}
