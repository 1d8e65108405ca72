//! Handlers: what the worker does with one message.
//!
//! A handler is a plain async function of a [`Job`] that returns a [`HandlerResult`]. The error
//! tells the worker what to do (apalis's idea): [`HandlerError::retryable`] goes to the next retry
//! tier (honouring a `retry_after` hint), [`HandlerError::permanent`] goes straight to the
//! dead-letter queue. The worker, not the handler, acks, republishes and counts attempts; a
//! handler that panics or exceeds its timeout is treated as a retryable failure.
//!
//! Built-ins: [`http::HttpHandler`] (POST to a configured endpoint) and [`NoopHandler`]
//! (benchmarks). Write your own by implementing [`Handler`]; see `examples/custom_handler.rs`.

pub mod http;

use std::future::Future;
use std::time::Duration;

/// One message as a handler sees it. Borrowed data only: handlers must not keep it.
#[derive(Debug, Clone, Copy)]
pub struct Job<'a> {
    /// The idempotency key (`message_id`); use it to make delivery idempotent.
    pub message_id: &'a str,
    /// Which attempt this is, starting at 1.
    pub attempt: u32,
    /// The work queue the message came from.
    pub queue: &'a str,
    /// The routing key it was originally published with (`email`, `sms`, ...).
    pub routing_key: &'a str,
    /// `content_type` of the message (`application/json` by contract).
    pub content_type: &'a str,
    /// The body, unchanged. The worker has already checked that it is valid JSON.
    pub body: &'a [u8],
    /// 0-9.
    pub priority: u8,
    /// The message's W3C `traceparent` header, if it has one: what a handler that calls out
    /// should pass on (the `http` handler sends it; while spans are exported it sends its own
    /// span's instead, a child of the worker's).
    pub traceparent: Option<&'a str>,
    /// The message's W3C `tracestate`, carried with `traceparent`.
    pub tracestate: Option<&'a str>,
}

/// Whether a failure is worth retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Try again later (timeouts, 5xx, 429, connection errors).
    Retryable,
    /// Never succeeds (4xx other than 408/429): dead-letter now.
    Permanent,
}

/// A failed attempt: what kind, why, and optionally how long to wait before the next one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerError {
    /// Retry or not.
    pub kind: FailureKind,
    /// Human-readable reason; written (truncated) into `x-courier-error`.
    pub message: String,
    /// A lower bound for the next attempt's delay (e.g. from `Retry-After`).
    pub retry_after: Option<Duration>,
}

impl HandlerError {
    /// A failure worth retrying.
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            kind: FailureKind::Retryable,
            message: message.into(),
            retry_after: None,
        }
    }

    /// A failure that will never succeed.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            kind: FailureKind::Permanent,
            message: message.into(),
            retry_after: None,
        }
    }

    /// Asks for at least `delay` before the next attempt.
    #[must_use]
    pub fn with_retry_after(mut self, delay: Duration) -> Self {
        self.retry_after = Some(delay);
        self
    }
}

impl std::fmt::Display for HandlerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for HandlerError {}

/// What a handler returns.
pub type HandlerResult = Result<(), HandlerError>;

/// Delivers one message. Must be cheap to share across tasks (`Send + Sync`); heavy CPU work
/// belongs in `tokio::task::spawn_blocking` so heartbeats keep flowing.
///
/// The worker starts `handle` on its consume loop and moves it to a task of its own only when
/// it first waits (an HTTP request, a timer): a handler that answers at once costs no task
/// spawn. So whatever a handler does before its first `.await` delays the next delivery;
/// keep that part short (build the request, then await it), which `spawn_blocking` also does
/// for CPU-heavy work.
pub trait Handler: Send + Sync + 'static {
    /// Handles one attempt of one message.
    fn handle(&self, job: Job<'_>) -> impl Future<Output = HandlerResult> + Send;
}

/// Succeeds at once; for benchmarks and smoke tests.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoopHandler;

impl Handler for NoopHandler {
    async fn handle(&self, _job: Job<'_>) -> HandlerResult {
        Ok(())
    }
}
