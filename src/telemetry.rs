//! Traces across the fleet: W3C trace context carried in AMQP headers through every hop, and
//! spans exported over OTLP when asked for.
//!
//! **Context** (always, exporter or not): a message's `traceparent` / `tracestate` headers
//! ([`TRACEPARENT`], [`TRACESTATE`]) are the publisher's context. Retry-tier, redelivery and
//! dead-letter copies keep them (and, while exporting, carry the context of the attempt that made
//! them, so each attempt is the child of the one before); the `http` handler sends
//! `traceparent` to the endpoint. A `courier-dlq replay` copy starts a new trace and names the
//! old context in [`TRACE_LINK`], which the worker turns into a span link.
//!
//! **Spans** (only with an exporter: `--otlp-endpoint`, or `OTEL_EXPORTER_OTLP_ENDPOINT` /
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`): `tracing` spans with target [`TARGET`], turned into
//! OpenTelemetry spans by `tracing-opentelemetry`, named and attributed after OpenTelemetry's
//! messaging conventions for RabbitMQ. Without an exporter no span is created on the hot path:
//! [`enabled`] is one relaxed atomic load.
//!
//! **Export never slows delivery**: finished spans go into a bounded queue ([`QUEUE`] spans) that
//! a thread of its own drains in batches to the OTLP/HTTP exporter; when the queue is full (the
//! collector is slow or gone) a span is dropped and counted
//! (`courier_trace_spans_dropped_total`), never waited for. The SDK's own batch processor drops
//! the same way but only counts at shutdown, which is why this one is ours.

use lapin::types::{AMQPValue, FieldTable, LongString};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter, SpanProcessor};
use prometheus::IntCounter;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

/// W3C trace context: the parent of whatever handles the message next.
pub const TRACEPARENT: &str = "traceparent";
/// W3C vendor trace state, carried with [`TRACEPARENT`].
pub const TRACESTATE: &str = "tracestate";
/// Set by `courier-dlq replay`: the `traceparent` the dead letter had. The replayed message
/// starts a new trace; its worker links its span to this one.
pub const TRACE_LINK: &str = "x-courier-trace-link";

/// The `tracing` target of Courier's trace spans: the only spans the exporter sees.
pub const TARGET: &str = "courier::trace";

/// Finished spans waiting for export, at most; past it they are dropped and counted.
pub const QUEUE: usize = 4096;
/// Spans sent to the collector in one request, at most.
const BATCH: usize = 512;
/// A batch that is not full goes after this long.
const BATCH_DELAY: Duration = Duration::from_secs(1);
/// How often a batch being filled takes what is queued: at most [`QUEUE`] spans arrive in
/// one tick before the queue drops (82,000 spans a second).
const FILL_TICK: Duration = Duration::from_millis(50);
/// One export request's deadline.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Spans dropped because the export queue was full.
pub static SPANS_DROPPED: LazyLock<IntCounter> = LazyLock::new(|| {
    IntCounter::new(
        "courier_trace_spans_dropped_total",
        "Spans dropped because the export queue was full (the collector is slow or unreachable)",
    )
    .expect("static metric")
});

/// Spans the collector accepted.
pub static SPANS_EXPORTED: LazyLock<IntCounter> = LazyLock::new(|| {
    IntCounter::new(
        "courier_trace_spans_exported_total",
        "Spans the OTLP collector accepted",
    )
    .expect("static metric")
});

/// Spans in batches the collector did not accept (unreachable, refused, timed out), or not sent
/// while the exporter waits to try a failing collector again.
pub static SPANS_FAILED: LazyLock<IntCounter> = LazyLock::new(|| {
    IntCounter::new(
        "courier_trace_spans_failed_total",
        "Spans in export requests that failed (collector unreachable, refused or timed out), or not sent while waiting to try a failing collector again",
    )
    .expect("static metric")
});

/// Whether spans are being exported (set once at start).
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Where spans go: `--otlp-endpoint`, else the standard `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` /
/// `OTEL_EXPORTER_OTLP_ENDPOINT` (read by the exporter itself); `None` when none is set.
pub fn endpoint_from_env(flag: Option<&str>) -> Option<String> {
    flag.map(str::to_owned).or_else(|| {
        [
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()))
        .map(|_| String::new())
    })
}

/// The exporter set up: keep it for the life of the process; [`Exporting::shutdown`] sends what
/// is queued.
pub struct Exporting {
    /// The provider whose tracer the layer uses.
    provider: SdkTracerProvider,
}

impl Exporting {
    /// Sends what is queued (within a few seconds) and stops the export thread.
    pub fn shutdown(&self) {
        let _ = self.provider.shutdown_with_timeout(Duration::from_secs(5));
    }
}

/// Why the exporter could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("--otlp-endpoint {endpoint}: {reason}")]
pub struct TelemetryError {
    /// The endpoint given (empty: from the environment).
    endpoint: String,
    /// What went wrong.
    reason: String,
}

/// The `tracing` layer that exports Courier's spans to `endpoint` over OTLP/HTTP (protobuf),
/// as `service`. `endpoint` empty: the standard environment variables say where. Call before
/// the async runtime starts (the exporter's HTTP client runs on the export thread).
///
/// # Errors
/// The endpoint is not a URL, or the exporter cannot be built.
pub fn layer<S>(
    service: &str,
    endpoint: &str,
) -> Result<(impl tracing_subscriber::Layer<S>, Exporting), TelemetryError>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
    let fail = |reason: String| TelemetryError {
        endpoint: courier_redacted(endpoint),
        reason,
    };
    let mut builder = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_timeout(EXPORT_TIMEOUT);
    if !endpoint.is_empty() {
        let url = traces_url(endpoint).map_err(fail)?;
        builder = builder.with_endpoint(url);
    }
    let exporter = builder
        .with_headers(Default::default())
        .build()
        .map_err(|e| fail(e.to_string()))?;
    let processor = QueueProcessor::start(exporter);
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service.to_owned())
                .build(),
        )
        .build();
    let tracer = provider.tracer("courier");
    ENABLED.store(true, Ordering::Relaxed);
    // No source locations, thread ids, target or busy/idle times on spans, and no OpenTelemetry
    // context made current on every poll (Courier passes contexts explicitly): per-span work
    // the conventions do not ask for.
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_tracked_inactivity(false)
        .with_context_activation(false)
        .with_filter(
            tracing_subscriber::filter::Targets::new().with_target(TARGET, tracing::Level::TRACE),
        );
    Ok((layer, Exporting { provider }))
}

use tracing_subscriber::Layer as _;

fn courier_redacted(s: &str) -> String {
    crate::amqp::redact(s)
}

/// `http://collector:4318` → `http://collector:4318/v1/traces`; a URL with a path is kept.
fn traces_url(endpoint: &str) -> Result<String, String> {
    let url = url::Url::parse(endpoint.trim())
        .map_err(|e| format!("not a URL ({e}); expected e.g. http://127.0.0.1:4318"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "scheme {}: OTLP over HTTP needs http:// or https://",
            url.scheme()
        ));
    }
    if url.path() == "/" || url.path().is_empty() {
        Ok(format!(
            "{}/v1/traces",
            endpoint.trim().trim_end_matches('/')
        ))
    } else {
        Ok(endpoint.trim().to_owned())
    }
}

/// `send <destination>`: a `send` span (OpenTelemetry's messaging conventions, producer kind)
/// for a message about to be published, whose context then goes into `headers`. Its parent is
/// the current span, or with `parent_from_headers` the context `headers` already carry (a new
/// root without one: `courier publish`). Disabled, and `headers` untouched, without an exporter.
pub fn send_span(
    headers: &mut FieldTable,
    exchange: &str,
    routing_key: &str,
    message_id: &str,
    parent_from_headers: bool,
) -> tracing::Span {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    if !enabled() {
        return tracing::Span::none();
    }
    let destination = match (exchange.is_empty(), routing_key.is_empty()) {
        (true, _) => routing_key.to_owned(),
        (false, true) => exchange.to_owned(),
        (false, false) => format!("{exchange}:{routing_key}"),
    };
    // Only `otel.kind` is a `tracing` field (the log layer formats those); the name and the
    // attributes go to the OpenTelemetry span alone, once it is started.
    let span = tracing::info_span!(target: TARGET, "send", otel.kind = "producer");
    if parent_from_headers {
        let _ = span.set_parent(extract(Some(headers)));
    }
    let cx = span.context();
    let otel = cx.span();
    otel.update_name(format!("send {destination}"));
    otel.set_attributes([
        KeyValue::new("messaging.system", "rabbitmq"),
        KeyValue::new("messaging.operation.type", "send"),
        KeyValue::new("messaging.operation.name", "publish"),
        KeyValue::new("messaging.destination.name", destination),
        KeyValue::new(
            "messaging.rabbitmq.destination.routing_key",
            routing_key.to_owned(),
        ),
        KeyValue::new("messaging.message.id", message_id.to_owned()),
    ]);
    inject(&cx, headers);
    span
}

/// The context of a replayed copy (`courier-dlq replay`): a new trace, not a child of the old
/// one, which the copy names in [`TRACE_LINK`] for the worker to link to. A dead letter without
/// a context gets none (its worker starts a new root).
pub fn replay_context(headers: &mut FieldTable) {
    let Some(old) = header(Some(headers), TRACEPARENT).map(str::to_owned) else {
        return;
    };
    // The old trace's vendor state does not belong to the new one.
    let mut kept: std::collections::BTreeMap<_, _> = headers.inner().clone();
    kept.remove(TRACESTATE);
    *headers = FieldTable::from(kept);
    headers.insert(
        TRACE_LINK.into(),
        AMQPValue::LongString(LongString::from(old)),
    );
    headers.insert(
        TRACEPARENT.into(),
        AMQPValue::LongString(LongString::from(new_traceparent())),
    );
}

/// Reads W3C context from AMQP headers.
struct HeaderExtractor<'a>(Option<&'a FieldTable>);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        header(self.0, key)
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .map(|h| h.inner().keys().map(|k| k.as_str()).collect())
            .unwrap_or_default()
    }
}

/// Writes W3C context into AMQP headers.
struct HeaderInjector<'a>(&'a mut FieldTable);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0
            .insert(key.into(), AMQPValue::LongString(LongString::from(value)));
    }
}

/// The context a message's headers carry (an empty one without `traceparent`).
pub fn extract(headers: Option<&FieldTable>) -> Context {
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

/// Puts `cx` into `headers` as `traceparent` / `tracestate` (nothing for an invalid context).
pub fn inject(cx: &Context, headers: &mut FieldTable) {
    TraceContextPropagator::new().inject_context(cx, &mut HeaderInjector(headers));
}

/// Writes W3C context into HTTP request headers.
struct HttpInjector<'a>(&'a mut reqwest::header::HeaderMap);

impl Injector for HttpInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            reqwest::header::HeaderName::from_bytes(key.as_bytes()),
            reqwest::header::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// Puts `cx` into HTTP request headers as `traceparent` / `tracestate`.
pub fn inject_http(cx: &Context, headers: &mut reqwest::header::HeaderMap) {
    TraceContextPropagator::new().inject_context(cx, &mut HttpInjector(headers));
}

/// The span context of a `traceparent` header value, if it is one.
pub fn parse_traceparent(value: &str) -> Option<SpanContext> {
    let mut table = FieldTable::default();
    table.insert(
        TRACEPARENT.into(),
        AMQPValue::LongString(LongString::from(value.to_owned())),
    );
    let sc = extract(Some(&table)).span().span_context().clone();
    sc.is_valid().then_some(sc)
}

/// A header's string value.
pub fn header<'a>(headers: Option<&'a FieldTable>, name: &str) -> Option<&'a str> {
    match headers?.inner().get(name)? {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
        AMQPValue::ShortString(s) => Some(s.as_str()),
        _ => None,
    }
}

/// A new W3C context that belongs to no trace yet (random ids, sampled): what a replayed
/// message carries when the replaying tool exports nothing itself.
pub fn new_traceparent() -> String {
    // All-zero ids are invalid; the odds of drawing one are nil, but `max(1)` makes it none.
    let trace = rand::random::<u128>().max(1);
    let span = rand::random::<u64>().max(1);
    format!("00-{trace:032x}-{span:016x}-01")
}

/// A finished-span queue drained by a thread of its own: `on_end` never blocks, a full queue
/// drops the span and counts it.
#[derive(Debug)]
struct QueueProcessor {
    /// Where finished spans go; `None` once shut down.
    tx: Mutex<Option<SyncSender<SpanData>>>,
    /// The export thread, joined at shutdown.
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl QueueProcessor {
    fn start<E: SpanExporter + 'static>(exporter: E) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let thread = std::thread::Builder::new()
            .name("courier-otlp-export".to_owned())
            .spawn(move || export_loop(exporter, rx))
            .ok();
        Self {
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(thread),
        }
    }
}

/// After a failed export, spans are not sent for this long (they are counted as failed without
/// being encoded); it doubles after each failure up to [`BACKOFF_MAX`], so a dead collector
/// costs nothing per span.
const BACKOFF: Duration = Duration::from_secs(1);
/// The longest pause between two tries of a collector that keeps failing.
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Batches spans from `rx` and exports them until the sender is gone; what is queued then is
/// sent last. A batch goes when it is full or [`BATCH_DELAY`] after its first span (one request
/// per span would cost more than the span). While the collector fails, batches are counted as
/// failed and not sent until the back-off has passed.
fn export_loop<E: SpanExporter>(mut exporter: E, rx: Receiver<SpanData>) {
    let mut warned = false;
    let mut backoff = BACKOFF;
    let mut retry_at: Option<std::time::Instant> = None;
    let mut open = true;
    while open {
        let first = match rx.recv_timeout(BATCH_DELAY) {
            Ok(span) => span,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let due = std::time::Instant::now() + BATCH_DELAY;
        let mut batch = Vec::with_capacity(BATCH);
        batch.push(first);
        // Collected by polling, not by waiting on the queue: a thread waiting there must be
        // woken (a futex call) by every span sent, which costs the hot path more than the span.
        'fill: loop {
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(span) => batch.push(span),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        open = false;
                        break 'fill;
                    }
                }
            }
            let left = due.saturating_duration_since(std::time::Instant::now());
            if batch.len() >= BATCH || left.is_zero() {
                break;
            }
            std::thread::sleep(left.min(FILL_TICK));
        }
        let n = batch.len() as u64;
        if retry_at.is_some_and(|t| std::time::Instant::now() < t) {
            SPANS_FAILED.inc_by(n);
            continue;
        }
        match futures_executor::block_on(exporter.export(batch)) {
            Ok(()) => {
                SPANS_EXPORTED.inc_by(n);
                retry_at = None;
                backoff = BACKOFF;
                if warned {
                    tracing::info!("trace export works again");
                    warned = false;
                }
            }
            Err(e) => {
                SPANS_FAILED.inc_by(n);
                retry_at = Some(std::time::Instant::now() + backoff);
                backoff = (backoff * 2).min(BACKOFF_MAX);
                if !warned {
                    // Once per outage: a collector that is down must not flood the logs.
                    tracing::warn!(error = %e, "trace export failed; spans are dropped until the collector answers (courier_trace_spans_failed_total)");
                    warned = true;
                }
            }
        }
    }
    let _ = exporter.shutdown();
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        let Ok(guard) = self.tx.lock() else { return };
        let Some(tx) = guard.as_ref() else { return };
        match tx.try_send(span) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => SPANS_DROPPED.inc(),
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(t) = thread {
            // Bounded: the thread sends what is queued, each request within its deadline.
            let (done_tx, done_rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let _ = t.join();
                let _ = done_tx.send(());
            });
            let _ = done_rx.recv_timeout(timeout);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_goes_through_amqp_headers_and_back() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let sc = parse_traceparent(tp).expect("valid");
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        let cx = Context::new().with_remote_span_context(sc);
        let mut h = FieldTable::default();
        inject(&cx, &mut h);
        assert_eq!(header(Some(&h), TRACEPARENT), Some(tp));
        assert!(parse_traceparent("not-a-traceparent").is_none());
        assert!(!extract(None).span().span_context().is_valid());
    }

    #[test]
    fn a_replayed_copy_starts_a_new_trace_and_names_the_old_one() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut h = FieldTable::default();
        h.insert(
            TRACEPARENT.into(),
            AMQPValue::LongString(LongString::from(tp)),
        );
        h.insert(
            TRACESTATE.into(),
            AMQPValue::LongString(LongString::from("k=v")),
        );
        replay_context(&mut h);
        assert_eq!(header(Some(&h), TRACE_LINK), Some(tp));
        assert_eq!(header(Some(&h), TRACESTATE), None);
        let new = header(Some(&h), TRACEPARENT)
            .and_then(parse_traceparent)
            .expect("valid");
        assert_ne!(
            new.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        let mut none = FieldTable::default();
        replay_context(&mut none);
        assert!(none.inner().is_empty(), "no context, none made up");
    }

    #[test]
    fn a_fresh_traceparent_is_valid_and_new() {
        let a = parse_traceparent(&new_traceparent()).expect("valid");
        let b = parse_traceparent(&new_traceparent()).expect("valid");
        assert_ne!(a.trace_id(), b.trace_id());
        assert!(a.is_sampled());
    }

    #[test]
    fn an_endpoint_without_a_path_gets_the_traces_path() {
        assert_eq!(
            traces_url("http://127.0.0.1:4318").as_deref(),
            Ok("http://127.0.0.1:4318/v1/traces")
        );
        assert_eq!(
            traces_url("http://c:4318/custom/traces").as_deref(),
            Ok("http://c:4318/custom/traces")
        );
        assert!(traces_url("grpc://c:4317").is_err());
        assert!(traces_url("nope").is_err());
    }
}
