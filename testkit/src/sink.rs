//! A real local HTTP server (axum on port 0) that records every request and answers as the test
//! says: the endpoint for the worker's `http` handler in delivery tests. Tests count lost and
//! duplicated messages against what it recorded.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use courier::handler::http::{IDEMPOTENCY_KEY, X_COURIER_ATTEMPT};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One request the sink received.
#[derive(Debug, Clone)]
pub struct Received {
    /// `Idempotency-Key`.
    pub message_id: String,
    pub attempt: u32,
    pub body: Vec<u8>,
    pub content_type: String,
    /// Every request header, in arrival order (names lower case), values as sent.
    pub headers: Vec<(String, String)>,
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
        message_id: h(IDEMPOTENCY_KEY),
        attempt: h(X_COURIER_ATTEMPT).parse().unwrap_or(0),
        body: body.to_vec(),
        content_type: h("content-type"),
        headers: headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
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

impl Received {
    /// The values of request header `name` (any case), in the order sent.
    pub fn header(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
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

/// The requests the sink answered with 2xx, in the order they reached it (the order in which
/// a worker sent them, not the order the answers were recorded in).
pub fn delivered_in_order(sink: &Sink) -> Vec<Received> {
    let mut all: Vec<Received> = sink
        .all()
        .into_iter()
        .filter(|r| (200..300).contains(&r.status))
        .collect();
    all.sort_by_key(|r| r.at);
    all
}

/// Ids the sink answered with 2xx.
pub fn delivered_ids(sink: &Sink) -> Vec<String> {
    sink.all()
        .into_iter()
        .filter(|r| (200..300).contains(&r.status))
        .map(|r| r.message_id)
        .collect()
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
