//! The demo's local HTTP endpoint: fails a share of deliveries on purpose, by the rules in
//! [`super::plan`], and counts what it answered per message id so the summary can tell
//! delivered, duplicated and lost messages apart.

use super::plan::{answer, Rules};
use anyhow::Context;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What the sink saw for one message id.
#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    requests: u32,
    successes: u32,
}

/// The sink's view, summed as requests arrive, so progress reads are O(1) at any batch size.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct SinkCounts {
    /// Distinct ids the sink has heard of (each message's first attempt reached it).
    pub(super) ids: u64,
    /// Distinct ids answered 2xx.
    pub(super) delivered: u64,
    pub(super) first_try: u64,
    pub(super) after_retry: u64,
    /// 2xx answers beyond the first for an id.
    pub(super) duplicates: u64,
    pub(super) requests: u64,
}

#[derive(Default)]
struct Ledger {
    by_id: HashMap<String, Seen>,
    totals: SinkCounts,
}

struct SinkState {
    rules: Rules,
    ledger: Mutex<Ledger>,
}

impl SinkState {
    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        // A panic while holding the lock cannot leave the counts inconsistent (plain increments).
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

pub(super) struct Sink {
    pub(super) url: String,
    state: Arc<SinkState>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Sink {
    pub(super) async fn start(rules: Rules) -> anyhow::Result<Self> {
        let state = Arc::new(SinkState {
            rules,
            ledger: Mutex::new(Ledger::default()),
        });
        let app = axum::Router::new()
            .route("/deliver", axum::routing::post(deliver))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("cannot start the demo HTTP sink on 127.0.0.1")?;
        let addr = listener
            .local_addr()
            .context("the demo HTTP sink has no address")?;
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move { token.cancelled().await })
                .await;
            if let Err(e) = served {
                tracing::warn!(error = %e, "demo HTTP sink stopped");
            }
        });
        Ok(Self {
            url: format!("http://{addr}/deliver"),
            state,
            stop,
            task,
        })
    }

    pub(super) fn counts(&self) -> SinkCounts {
        self.state.ledger().totals
    }

    pub(super) fn delivered_ids(&self) -> HashSet<String> {
        self.state
            .ledger()
            .by_id
            .iter()
            .filter(|(_, s)| s.successes > 0)
            .map(|(id, _)| id.clone())
            .collect()
    }

    pub(super) async fn stop(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

async fn deliver(
    State(state): State<Arc<SinkState>>,
    headers: HeaderMap,
    _body: Bytes,
) -> Response {
    // The body is taken (and dropped) so the connection can be reused for the next request.
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let Some(id) = get("idempotency-key").filter(|s| !s.is_empty()) else {
        return (StatusCode::BAD_REQUEST, "demo sink: no Idempotency-Key").into_response();
    };
    let header_attempt = get("x-courier-attempt").and_then(|v| v.parse::<u32>().ok());
    let a = {
        let mut ledger = state.ledger();
        let Ledger { by_id, totals } = &mut *ledger;
        let s = by_id.entry(id.to_owned()).or_default();
        if s.requests == 0 {
            totals.ids += 1;
        }
        s.requests += 1;
        totals.requests += 1;
        // The worker's attempt number decides; the sink's own count is only a fallback.
        let attempt = header_attempt.unwrap_or(s.requests);
        let a = answer(state.rules.fate(id), attempt);
        if (200..300).contains(&a.status) {
            s.successes += 1;
            match (s.successes, attempt) {
                (1, 1) => totals.first_try += 1,
                (1, _) => totals.after_retry += 1,
                _ => totals.duplicates += 1,
            }
            if s.successes == 1 {
                totals.delivered += 1;
            }
        }
        a
    };
    let status = StatusCode::from_u16(a.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, a.body).into_response();
    if let Some(after) = a.retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static(after));
    }
    response
}
