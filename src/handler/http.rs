//! The built-in `http` handler: POSTs each message body to one endpoint fixed in configuration.
//!
//! The endpoint (and any extra static headers, e.g. `Authorization`) come from configuration only
//! and are validated at start-up; nothing in a message (body or headers) can change where a
//! request goes, so payloads cannot be used for request forgery. One [`reqwest::Client`] is shared
//! by all deliveries, so connections are pooled. Redirects are never followed.
//!
//! Outcomes: 2xx is success; timeouts, connection and other transport errors, 408, 429 and 5xx
//! are retryable (a `Retry-After` in delay-seconds is passed on as the retry hint, capped at 24 h);
//! every other status, including 3xx, is permanent. Error messages name the endpoint without its
//! userinfo and never contain the request body. Userinfo in the configured endpoint
//! (`https://user:pass@host/...`) is sent as HTTP Basic credentials; the usual proxy environment
//! variables (`HTTPS_PROXY`, `NO_PROXY`, ...) are honoured.

use std::error::Error as _;
use std::fmt;
use std::time::Duration;
use tracing::Instrument;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, LOCATION, RETRY_AFTER};
use reqwest::{StatusCode, Url};

use super::{FailureKind, Handler, HandlerError, HandlerResult, Job};
use crate::amqp::redact;

/// Default per-request timeout (connect, send, response headers and body).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Default number of idle pooled connections kept per host.
pub const DEFAULT_MAX_IDLE_PER_HOST: usize = 32;

/// Longest `Retry-After` honoured; longer values are capped to this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 60 * 60);

/// How many bytes of an error response body are quoted in the failure message.
const BODY_EXCERPT_BYTES: usize = 200;

/// How much of a 2xx response body is read (and discarded) so the connection can be reused.
const DRAIN_LIMIT_BYTES: usize = 64 * 1024;

/// `Content-Type` sent when a message has none.
const DEFAULT_CONTENT_TYPE: &str = "application/json";

// Header names are lower case because `HeaderName::from_static` accepts nothing else; HTTP
// header names are case-insensitive, so endpoints may spell them as they like.

/// Request header holding the `message_id`, the same on every attempt, so the endpoint can
/// drop a duplicate delivery.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Request header holding this delivery's 1-based attempt number (`x-courier-attempts` + 1).
pub const X_COURIER_ATTEMPT: &str = "x-courier-attempt";
/// Request header holding the `message_id` again, under Courier's own name.
pub const X_COURIER_MESSAGE_ID: &str = "x-courier-message-id";
/// Request header naming the work queue the message was consumed from.
pub const X_COURIER_QUEUE: &str = "x-courier-queue";

/// Headers the handler sets itself (or the HTTP stack owns); configuration may not set them.
const RESERVED_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "transfer-encoding",
    "host",
    "connection",
    IDEMPOTENCY_KEY,
    X_COURIER_ATTEMPT,
    X_COURIER_MESSAGE_ID,
    X_COURIER_QUEUE,
    crate::telemetry::TRACEPARENT,
    crate::telemetry::TRACESTATE,
];

/// Configuration of an [`HttpHandler`].
#[derive(Clone)]
pub struct HttpConfig {
    /// Where every message is POSTed: an `http` or `https` URL with a host.
    pub endpoint: String,
    /// Per-request timeout, from connecting until the response body is read.
    pub timeout: Duration,
    /// Idle pooled connections kept per host.
    pub max_idle_per_host: usize,
    /// Extra static headers sent with every request (e.g. `Authorization`). Values are treated
    /// as secrets: never logged or shown. May not set the headers the handler sets itself
    /// (`Content-Type`, `Idempotency-Key`, `X-Courier-*`, ...).
    pub headers: Vec<(String, String)>,
}

impl HttpConfig {
    /// A configuration for `endpoint` with the default timeout and pool size and no extra headers.
    pub fn new(endpoint: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            timeout: DEFAULT_TIMEOUT,
            max_idle_per_host: DEFAULT_MAX_IDLE_PER_HOST,
            headers: Vec::new(),
        }
    }
}

impl fmt::Debug for HttpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let header_names: Vec<&str> = self.headers.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("HttpConfig")
            .field("endpoint", &display_endpoint(&self.endpoint))
            .field("timeout", &self.timeout)
            .field("max_idle_per_host", &self.max_idle_per_host)
            .field("headers", &header_names)
            .finish()
    }
}

/// Why an [`HttpConfig`] was rejected at start-up.
#[derive(Debug, thiserror::Error)]
pub enum HttpConfigError {
    /// The endpoint is not an absolute `http`/`https` URL with a host.
    #[error("invalid HTTP endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint {
        /// The endpoint as configured, with any password redacted.
        endpoint: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A configured static header has an invalid name or value, or is one the handler sets.
    #[error("invalid HTTP header {name:?}: {reason}")]
    InvalidHeader {
        /// The header name as configured (the value is never shown).
        name: String,
        /// Why it was rejected.
        reason: String,
    },
    /// The timeout is zero.
    #[error("invalid HTTP timeout: must be greater than zero")]
    ZeroTimeout,
    /// The HTTP client could not be built (e.g. TLS initialisation failed).
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

/// Delivers messages by POSTing them to one configured endpoint; see the module docs.
#[derive(Clone)]
pub struct HttpHandler {
    client: reqwest::Client,
    endpoint: Url,
    /// `endpoint` without userinfo, for messages.
    display: String,
    headers: HeaderMap,
    timeout: Duration,
}

impl fmt::Debug for HttpHandler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let header_names: Vec<&str> = self.headers.keys().map(HeaderName::as_str).collect();
        f.debug_struct("HttpHandler")
            .field("endpoint", &self.display)
            .field("timeout", &self.timeout)
            .field("headers", &header_names)
            .finish_non_exhaustive()
    }
}

impl HttpHandler {
    /// Validates `config` and builds the pooled client.
    pub fn new(config: HttpConfig) -> Result<Self, HttpConfigError> {
        let endpoint = parse_endpoint(&config.endpoint)?;
        if config.timeout.is_zero() {
            return Err(HttpConfigError::ZeroTimeout);
        }
        let headers = static_headers(&config.headers)?;
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(config.max_idle_per_host)
            .connect_timeout(config.timeout)
            .timeout(config.timeout)
            .build()
            .map_err(|e| HttpConfigError::Client(redact(&error_chain(e))))?;
        let display = display_url(&endpoint);
        Ok(Self {
            client,
            endpoint,
            display,
            headers,
            timeout: config.timeout,
        })
    }

    /// The configured endpoint, without userinfo (safe to log).
    pub fn endpoint(&self) -> &str {
        &self.display
    }

    /// Builds the per-message headers; an unrepresentable value can never succeed.
    fn job_headers(&self, job: &Job<'_>) -> Result<HeaderMap, HandlerError> {
        let mut headers = self.headers.clone();
        let content_type = if job.content_type.is_empty() {
            DEFAULT_CONTENT_TYPE
        } else {
            job.content_type
        };
        let value = |what: &str, text: &str| {
            HeaderValue::from_str(text).map_err(|_| {
                HandlerError::permanent(format!("{what} is not a valid HTTP header value"))
            })
        };
        headers.insert(CONTENT_TYPE, value("content_type", content_type)?);
        let message_id = value("message_id", job.message_id)?;
        headers.insert(HeaderName::from_static(IDEMPOTENCY_KEY), message_id.clone());
        headers.insert(HeaderName::from_static(X_COURIER_MESSAGE_ID), message_id);
        headers.insert(
            HeaderName::from_static(X_COURIER_ATTEMPT),
            HeaderValue::from(job.attempt),
        );
        headers.insert(
            HeaderName::from_static(X_COURIER_QUEUE),
            value("queue", job.queue)?,
        );
        // The message's context goes on as it came (a malformed one is not passed on); while
        // spans are exported, `handle` replaces it with its client span's.
        for (name, v) in [
            (crate::telemetry::TRACEPARENT, job.traceparent),
            (crate::telemetry::TRACESTATE, job.tracestate),
        ] {
            if let Some(v) = v.and_then(|v| HeaderValue::from_str(v).ok()) {
                headers.insert(HeaderName::from_static(name), v);
            }
        }
        Ok(headers)
    }

    /// Message for a transport-level failure (no HTTP status was received).
    fn transport_error(&self, err: reqwest::Error) -> HandlerError {
        let what = if err.is_timeout() {
            format!(
                "timed out after {}",
                humantime::format_duration(self.timeout)
            )
        } else if is_connection_refused(&err) {
            "connection refused".to_owned()
        } else if err.is_connect() {
            format!("connection failed: {}", source_chain(&err))
        } else {
            error_chain(err)
        };
        HandlerError::retryable(redact(&format!("POST {}: {what}", self.display)))
    }
}

impl Handler for HttpHandler {
    async fn handle(&self, job: Job<'_>) -> HandlerResult {
        let mut headers = self.job_headers(&job)?;
        let span = client_span(&self.endpoint, &self.display, &mut headers);
        let sent = self
            .client
            .post(self.endpoint.clone())
            .headers(headers)
            .timeout(self.timeout)
            .body(job.body.to_vec())
            .send()
            .instrument(span.clone())
            .await;
        let response = match sent {
            Ok(r) => r,
            Err(e) => {
                span.record("otel.status_code", "ERROR");
                return Err(self.transport_error(e));
            }
        };
        span.record("http.response.status_code", response.status().as_u16());
        if !response.status().is_success() {
            span.record("otel.status_code", "ERROR");
        }

        let status = response.status();
        let Some(kind) = classify(status.as_u16()) else {
            drain(response).await;
            return Ok(());
        };
        let retry_after = match kind {
            FailureKind::Retryable => response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after),
            FailureKind::Permanent => None,
        };
        let message = if status.is_redirection() {
            let location = response
                .headers()
                .get(LOCATION)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
            redirect_message(status, location.as_deref())
        } else {
            status_message(status, &read_excerpt(response).await)
        };
        let error = match kind {
            FailureKind::Retryable => HandlerError::retryable(message),
            FailureKind::Permanent => HandlerError::permanent(message),
        };
        Err(match retry_after {
            Some(delay) => error.with_retry_after(delay),
            None => error,
        })
    }
}

/// `POST`: the HTTP client span, after OpenTelemetry's HTTP conventions, a child of the worker's
/// process span; the endpoint gets its context as `traceparent`. Disabled (and `headers` as they
/// are) without an exporter.
fn client_span(endpoint: &Url, shown: &str, headers: &mut HeaderMap) -> tracing::Span {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    if !crate::telemetry::enabled() {
        return tracing::Span::none();
    }
    use opentelemetry::trace::TraceContextExt;
    use opentelemetry::KeyValue;
    // The fields the caller records stay `tracing` fields; the fixed attributes go to the
    // OpenTelemetry span alone (the log layer would format them on every request).
    let span = tracing::info_span!(
        target: crate::telemetry::TARGET,
        "POST",
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
    );
    let cx = span.context();
    cx.span().set_attributes([
        KeyValue::new("http.request.method", "POST"),
        KeyValue::new("url.full", shown.to_owned()),
        KeyValue::new(
            "server.address",
            endpoint.host_str().unwrap_or_default().to_owned(),
        ),
        KeyValue::new(
            "server.port",
            i64::from(endpoint.port_or_known_default().unwrap_or_default()),
        ),
    ]);
    crate::telemetry::inject_http(&cx, headers);
    span
}

/// What a response status means: `None` for success (2xx), otherwise the kind of failure.
///
/// 408, 429 and 5xx are retryable; everything else (other 4xx, 1xx, 3xx, non-standard codes) is
/// permanent.
pub fn classify(status: u16) -> Option<FailureKind> {
    match status {
        200..=299 => None,
        408 | 429 | 500..=599 => Some(FailureKind::Retryable),
        _ => Some(FailureKind::Permanent),
    }
}

/// Parses a `Retry-After` value, delay-seconds (`"120"`) or HTTP-date, capped at
/// [`MAX_RETRY_AFTER`]. Anything unparseable yields `None`.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    if !value.bytes().all(|b| b.is_ascii_digit()) {
        // The HTTP-date form: wait until then (a date in the past means "now").
        let at = httpdate::parse_http_date(value).ok()?;
        let wait = at
            .duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO);
        return Some(wait.min(MAX_RETRY_AFTER));
    }
    // All digits: a parse failure can only be overflow, which is beyond the cap anyway.
    let seconds = value.parse::<u64>().unwrap_or(u64::MAX);
    Some(Duration::from_secs(seconds).min(MAX_RETRY_AFTER))
}

/// `HTTP 503 Service Unavailable: <first bytes of the body, one line>` (no colon if empty).
fn status_message(status: StatusCode, body: &[u8]) -> String {
    let excerpt = one_line(body, BODY_EXCERPT_BYTES);
    let head = status_line(status);
    if excerpt.is_empty() {
        head
    } else {
        redact(&format!("{head}: {excerpt}"))
    }
}

/// `HTTP 302 Found: unexpected redirect to <location>`.
fn redirect_message(status: StatusCode, location: Option<&str>) -> String {
    let head = status_line(status);
    match location.map(|l| one_line(l.as_bytes(), BODY_EXCERPT_BYTES)) {
        Some(location) if !location.is_empty() => {
            redact(&format!("{head}: unexpected redirect to {location}"))
        }
        _ => format!("{head}: unexpected redirect"),
    }
}

/// `HTTP 503 Service Unavailable`, or `HTTP 599` for codes without a standard reason.
fn status_line(status: StatusCode) -> String {
    match status.canonical_reason() {
        Some(reason) => format!("HTTP {} {reason}", status.as_u16()),
        None => format!("HTTP {}", status.as_u16()),
    }
}

/// The first `limit` bytes (cut at a character boundary) as one trimmed line: lossy UTF-8,
/// control characters and runs of whitespace replaced by single spaces.
fn one_line(bytes: &[u8], limit: usize) -> String {
    let mut end = bytes.len().min(limit);
    if end < bytes.len() {
        // Do not split a UTF-8 sequence: back off over continuation bytes (at most 3).
        let mut back = 0;
        while back < 3 && end > 0 && bytes[end] & 0xC0 == 0x80 {
            end -= 1;
            back += 1;
        }
        if bytes[end] & 0xC0 == 0x80 {
            end = bytes.len().min(limit); // not UTF-8 anyway; keep the plain cut
        }
    }
    let text = String::from_utf8_lossy(&bytes[..end]);
    let mut out = String::with_capacity(text.len());
    for word in text.split(|c: char| c.is_whitespace() || c.is_control()) {
        if word.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// Reads up to [`BODY_EXCERPT_BYTES`] of an error response; errors just end the excerpt.
async fn read_excerpt(mut response: reqwest::Response) -> Vec<u8> {
    let mut body = Vec::new();
    while body.len() < BODY_EXCERPT_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    body
}

/// Reads a success response's body (bounded) so the connection goes back to the pool. The
/// delivery already succeeded, so errors here do not matter.
async fn drain(mut response: reqwest::Response) {
    let mut read = 0;
    while read < DRAIN_LIMIT_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => read += chunk.len(),
            Ok(None) | Err(_) => break,
        }
    }
}

/// Parses and checks the configured endpoint.
fn parse_endpoint(text: &str) -> Result<Url, HttpConfigError> {
    let invalid = |reason: String| HttpConfigError::InvalidEndpoint {
        endpoint: display_endpoint(text),
        reason: redact(&reason),
    };
    let url = Url::parse(text.trim()).map_err(|e| invalid(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(format!(
            "scheme must be http or https, not {:?}",
            url.scheme()
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("missing host".to_owned()));
    }
    Ok(url)
}

/// A configured endpoint string for messages: as written unless it has userinfo, which is
/// removed (or, if it does not parse, the password is redacted).
fn display_endpoint(text: &str) -> String {
    match Url::parse(text.trim()) {
        Ok(url) if !url.username().is_empty() || url.password().is_some() => display_url(&url),
        _ => redact(text),
    }
}

/// `url` without username and password.
fn display_url(url: &Url) -> String {
    let mut url = url.clone();
    // Only fails for URLs that cannot have userinfo, which then have none.
    let _ = url.set_username("");
    let _ = url.set_password(None);
    redact(url.as_str())
}

/// Validates configured static headers; values are marked sensitive.
fn static_headers(pairs: &[(String, String)]) -> Result<HeaderMap, HttpConfigError> {
    let mut headers = HeaderMap::with_capacity(pairs.len());
    for (name, value) in pairs {
        let invalid = |reason: &str| HttpConfigError::InvalidHeader {
            name: name.clone(),
            reason: reason.to_owned(),
        };
        let header_name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| invalid("not a valid header name"))?;
        if RESERVED_HEADERS.contains(&header_name.as_str()) {
            return Err(invalid("set by the handler itself; cannot be configured"));
        }
        let mut header_value = HeaderValue::from_str(value)
            .map_err(|_| invalid("value is not a valid header value"))?;
        header_value.set_sensitive(true);
        headers.append(header_name, header_value);
    }
    Ok(headers)
}

/// Whether the error chain contains an `ECONNREFUSED`.
fn is_connection_refused(err: &reqwest::Error) -> bool {
    let mut source = err.source();
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        source = e.source();
    }
    false
}

/// Just the causes of a connect error (e.g. `dns error: ...`), without the generic wrappers
/// ("error sending request", "client error (Connect)") that the message already implies.
fn source_chain(err: &reqwest::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut source = err.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !text.is_empty()
            && !text.starts_with("client error (")
            && !parts.iter().any(|p| p.contains(&text))
        {
            parts.push(text);
        }
        source = e.source();
    }
    if parts.is_empty() {
        "unknown error".to_owned()
    } else {
        parts.join(": ")
    }
}

/// The error and its sources joined by `": "`, without the URL reqwest attaches.
fn error_chain(err: reqwest::Error) -> String {
    let err = err.without_url();
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !text.is_empty() && !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = e.source();
    }
    out
}

#[cfg(test)]
mod tests;
