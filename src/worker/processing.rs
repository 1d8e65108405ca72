//! One delivery, start to settle: gather its facts, ask [`outcome::next`] where it goes, run the
//! handler when told to, and carry out the answer — reply, retry copy, redelivery count or dead
//! letter — before telling the acker how to settle it.
//!
//! Why here and not in the consume loop: everything a delivery needs is in [`Ctx`], shared by
//! every message task, so the loop only hands deliveries out; and nothing here decides where a
//! message goes (that is [`crate::outcome`]), it only does it. A copy is acked only once the
//! broker confirmed it; an unconfirmed copy sends the original back to the queue.

use super::acker::Settle;
use super::WorkerSettings;
use crate::envelope::{self, Origin, Reason};
use crate::handler::{Handler, HandlerError, Job};
use crate::metrics::{label, Metrics, QueueSeries};
use crate::outcome::{self, Action, Facts, Limits, Next};
use crate::publisher::{Outgoing, Publisher};
use crate::retry::RetryPolicy;
use crate::telemetry;
use crate::topology::WorkQueue;
use futures_util::FutureExt;
use lapin::message::Delivery;
use lapin::BasicProperties;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// The worker's spans (only made while spans are exported: [`telemetry::enabled`]).
///
/// Only `otel.kind` and `trace_id` are `tracing` fields, which the log layer formats (so a log
/// line inside the span names its trace); the name and the other attributes go to the
/// OpenTelemetry span alone, set in one call once it is started: formatting a dozen fields for
/// the logs on every message cost more than the span itself.
mod trace {
    use crate::telemetry::{self, TARGET};
    use lapin::message::Delivery;
    use lapin::types::FieldTable;
    use opentelemetry::trace::{Status, TraceContextExt};
    use opentelemetry::KeyValue;
    use tracing::field::Empty;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    /// `process <queue>`: one delivery, start to settle; the child of the publisher's context
    /// (the message's `traceparent`), or a new root; linked to the dead letter's old trace when
    /// the message is a replay ([`telemetry::TRACE_LINK`]). Named and attributed after
    /// OpenTelemetry's messaging conventions for RabbitMQ.
    pub(super) fn process_span(d: &Delivery, queue: &str) -> tracing::Span {
        let headers = d.properties.headers().as_ref();
        let (exchange, key) = (d.exchange.as_str(), d.routing_key.as_str());
        let span = tracing::info_span!(
            target: TARGET,
            "process",
            otel.kind = "consumer",
            trace_id = Empty,
        );
        let _ = span.set_parent(telemetry::extract(headers));
        if let Some(old) =
            telemetry::header(headers, telemetry::TRACE_LINK).and_then(telemetry::parse_traceparent)
        {
            span.add_link(old);
        }
        // Starts the OpenTelemetry span: from here on its name and attributes are set directly.
        let cx = span.context();
        let otel = cx.span();
        otel.update_name(format!("process {queue}"));
        otel.set_attributes([
            KeyValue::new("messaging.system", "rabbitmq"),
            KeyValue::new("messaging.operation.type", "process"),
            KeyValue::new("messaging.operation.name", "process"),
            KeyValue::new(
                "messaging.destination.name",
                destination(exchange, key, queue),
            ),
            KeyValue::new("messaging.rabbitmq.destination.routing_key", key.to_owned()),
            KeyValue::new(
                "messaging.message.id",
                crate::envelope::message_id(&d.properties)
                    .unwrap_or_default()
                    .to_owned(),
            ),
            KeyValue::new("messaging.message.body.size", d.data.len() as i64),
            KeyValue::new(
                "messaging.rabbitmq.message.delivery_tag",
                d.delivery_tag as i64,
            ),
        ]);
        // Log lines inside the span name the trace, so logs and traces meet.
        let trace_id = otel.span_context().trace_id();
        span.record("trace_id", tracing::field::display(trace_id));
        span
    }

    /// `{exchange}:{routing key}:{queue}` (the conventions' consumer destination for RabbitMQ),
    /// without the default exchange's empty name and without a routing key that only repeats
    /// the queue's name (a retried message comes back that way).
    fn destination(exchange: &str, key: &str, queue: &str) -> String {
        let mut parts: Vec<&str> = Vec::with_capacity(3);
        for p in [exchange, key, queue] {
            if !p.is_empty() && parts.last() != Some(&p) {
                parts.push(p);
            }
        }
        parts.join(":")
    }

    /// The attempt number on the current process span.
    pub(super) fn attempt(n: u32) {
        if telemetry::enabled() {
            tracing::Span::current().set_attribute("courier.attempt", i64::from(n));
        }
    }

    /// Where the message went, on the current process span.
    pub(super) fn outcome(outcome: &str, tier: Option<&str>, reason: Option<&str>) {
        if !telemetry::enabled() {
            return;
        }
        let cx = tracing::Span::current().context();
        let span = cx.span();
        span.set_attribute(KeyValue::new("courier.outcome", outcome.to_owned()));
        if let Some(t) = tier {
            span.set_attribute(KeyValue::new("courier.retry_tier", t.to_owned()));
        }
        if let Some(r) = reason {
            span.set_attribute(KeyValue::new("courier.reason", r.to_owned()));
            span.set_status(Status::error(r.to_owned()));
        }
    }

    /// `send <destination>`: a copy the worker publishes (retry tier, redelivery count, dead
    /// letter), the child of the current process span; the copy carries this span's context
    /// in `headers`, so the next attempt continues the trace.
    pub(super) fn send_span(
        headers: &mut FieldTable,
        exchange: &str,
        routing_key: &str,
        message_id: &str,
    ) -> tracing::Span {
        telemetry::send_span(headers, exchange, routing_key, message_id, false)
    }
}

/// Shown for a message without a `message_id` in logs, dead letters and replies; the handler
/// never sees it, as [`outcome::next`] dead-letters such a message first.
const NO_ID: &str = "(none)";

/// Set by quorum queues on a redelivered message: how often it was delivered before.
const DELIVERY_COUNT: &str = "x-delivery-count";

/// Everything a message task needs, shared by all of them.
pub(super) struct Ctx<H> {
    /// The worker's checked settings.
    pub(super) config: WorkerSettings,
    /// The consumed queues: the work queue first, then its urgent band if it has one; or a
    /// sharded channel's shards.
    pub(super) lanes: Vec<Lane>,
    /// An ordered channel's roll of workers (see [`crate::topology::QueueRole::Members`]).
    pub(super) members: Option<String>,
    /// Where dead letters are published.
    pub(super) dead_letter_exchange: String,
    /// The rules [`outcome::next`] applies.
    pub(super) limits: Limits,
    /// Metric labels of the retry tiers, by tier index.
    pub(super) tier_labels: Vec<String>,
    /// The user's handler.
    pub(super) handler: H,
    /// Confirmed publisher for retry, redelivery-count, dead-letter and reply copies.
    pub(super) publisher: Publisher,
    /// Counters, gauges and timings.
    pub(super) metrics: Metrics,
    /// Cancelled once the worker stops (a child of the token given to `Worker::run`) or its
    /// drain deadline passes: a copy that fails then is not retried, its original is requeued.
    pub(super) stopping: CancellationToken,
}

/// One consumed queue: the work queue, or its urgent band. A message is retried, counted and
/// reported under the queue it came from, so an urgent message stays in the band.
pub(super) struct Lane {
    /// The queue and its retry tier queues.
    pub(super) work: WorkQueue,
    /// Its series that every message updates, resolved once.
    pub(super) series: QueueSeries,
    /// A shard of an ordered channel: its messages are handled one at a time, a failure is
    /// retried in place, and nothing is republished to the queue (it would go behind the
    /// key's later messages).
    pub(super) ordered: bool,
}

impl Lane {
    pub(super) fn queue(&self) -> &str {
        &self.work.name
    }
}

impl<H: Handler> Ctx<H> {
    fn count(&self, lane: &Lane, outcome: &str) {
        self.metrics
            .messages
            .with_label_values(&[lane.queue(), outcome])
            .inc();
    }

    /// Handles one delivery from lane `lane` (an index into `lanes`) and decides how it is
    /// settled. Never panics on input.
    pub(super) async fn process(&self, delivery: Delivery, lane: usize) -> Settle {
        let Some(lane) = self.lanes.get(lane).or_else(|| self.lanes.first()) else {
            return Settle::Requeue;
        };
        lane.series.in_flight.inc();
        // Without an exporter no span is made: the hot path pays one atomic load.
        let settle = if telemetry::enabled() {
            let span = trace::process_span(&delivery, lane.queue());
            self.process_inner(&delivery, lane).instrument(span).await
        } else {
            self.process_inner(&delivery, lane).await
        };
        lane.series.in_flight.dec();
        settle
    }

    async fn process_inner(&self, d: &Delivery, lane: &Lane) -> Settle {
        let props = &d.properties;
        let headers = props.headers().as_ref();
        let origin = Origin::of(
            headers,
            d.exchange.as_str(),
            d.routing_key.as_str(),
            lane.queue(),
        );
        let message_id = envelope::message_id(props);
        let id = message_id.unwrap_or(NO_ID);
        let mut facts = Facts {
            redelivered: d.redelivered && !lane.ordered,
            redeliveries: envelope::redeliveries(headers),
            has_message_id: message_id.is_some(),
            invalid_body: envelope::validate_body(&d.data).err(),
            attempts: envelope::attempts(headers),
            handled: None,
        };
        if lane.ordered && d.redelivered {
            if let Some(settle) = self.ordered_redelivery(d, lane, id, &origin, &facts).await {
                return settle;
            }
        }
        // Twice round at most (`next` says `Handle` only while there is no result), except on
        // an ordered shard, where a failed attempt is retried here.
        loop {
            // The rare paths are boxed: their publish futures would otherwise make every
            // per-delivery task several kilobytes, copied on each spawn.
            match outcome::next(&facts, &self.limits) {
                Next::Handle => {
                    facts.handled = Some(self.handle(d, lane, id, &origin, facts.attempts).await);
                }
                Next::CountRedelivery { n } => {
                    return Box::pin(self.count_redelivery(d, lane, id, n)).await;
                }
                Next::Settle(Action::Ack) => {
                    let attempts = facts.attempts.saturating_add(1);
                    trace::outcome("delivered", None, None);
                    if d.properties.reply_to().is_some() {
                        Box::pin(self.reply(d, lane, id, "delivered", None, attempts)).await;
                    }
                    lane.series.delivered.inc();
                    return Settle::Ack;
                }
                Next::Settle(Action::Retry {
                    tier,
                    attempts,
                    error,
                }) if lane.ordered => {
                    if !Box::pin(self.retry_in_place(lane, id, tier, attempts, &error)).await {
                        self.count(lane, label::REQUEUED);
                        return Settle::Requeue;
                    }
                    facts.attempts = attempts;
                    facts.handled = None;
                }
                Next::Settle(Action::Retry {
                    tier,
                    attempts,
                    error,
                }) => {
                    return Box::pin(self.retry(d, lane, id, &origin, tier, attempts, &error))
                        .await;
                }
                Next::Settle(Action::DeadLetter {
                    reason,
                    attempts,
                    error,
                }) => {
                    return Box::pin(
                        self.dead_letter(d, lane, id, &origin, attempts, reason, &error),
                    )
                    .await;
                }
            }
        }
    }

    /// Runs the handler on a well-formed message and records how long it took.
    async fn handle(
        &self,
        d: &Delivery,
        lane: &Lane,
        message_id: &str,
        origin: &Origin,
        prior_attempts: u32,
    ) -> Result<(), HandlerError> {
        let queue = lane.queue();
        let props = &d.properties;
        let job = Job {
            message_id,
            attempt: prior_attempts.saturating_add(1),
            queue,
            routing_key: &origin.routing_key,
            content_type: props
                .content_type()
                .as_ref()
                .map_or("application/json", |c| c.as_str()),
            body: &d.data,
            priority: props.priority().unwrap_or(0),
            traceparent: telemetry::header(props.headers().as_ref(), telemetry::TRACEPARENT),
            tracestate: telemetry::header(props.headers().as_ref(), telemetry::TRACESTATE),
        };
        trace::attempt(job.attempt);
        let started = Instant::now();
        let result = self.call_handler(job).await;
        lane.series
            .handler_seconds
            .observe(started.elapsed().as_secs_f64());
        result
    }

    /// Runs the handler with a deadline; a panic or timeout is a retryable failure.
    async fn call_handler(&self, job: Job<'_>) -> Result<(), HandlerError> {
        let timeout = self.config.handler_timeout;
        let fut = AssertUnwindSafe(self.handler.handle(job)).catch_unwind();
        match tokio::time::timeout(timeout, fut).await {
            Ok(Ok(r)) => r,
            Ok(Err(panic)) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".to_owned());
                tracing::error!(message_id = job.message_id, panic = %what, "handler panicked; treated as a retryable failure");
                Err(HandlerError::retryable(format!("handler panicked: {what}")))
            }
            Err(_) => Err(HandlerError::retryable(format!(
                "handler timed out after {}",
                humantime::format_duration(timeout)
            ))),
        }
    }

    /// Copies the message to retry tier `tier` with `attempts` recorded; acks once confirmed.
    #[allow(clippy::too_many_arguments)]
    async fn retry(
        &self,
        d: &Delivery,
        lane: &Lane,
        message_id: &str,
        origin: &Origin,
        tier: usize,
        attempts: u32,
        error: &str,
    ) -> Settle {
        let queue = lane.queue();
        let Some(tier_queue) = lane.work.retry_queues.get(tier) else {
            // `outcome::next` picks only tiers this queue has a queue for. Should that ever
            // break, the message goes back rather than being lost.
            tracing::error!(%message_id, tier, "no retry queue for the chosen tier; the original goes back to the queue");
            self.count(lane, label::REQUEUED);
            return Settle::Requeue;
        };
        let label = self.tier_labels.get(tier).map_or("?", String::as_str);
        trace::outcome("retried", Some(label), None);
        let mut headers = envelope::retry_headers(
            d.properties.headers().as_ref(),
            attempts,
            error,
            origin,
            envelope::now_millis(),
        );
        let send = trace::send_span(&mut headers, "", tier_queue, message_id);
        let msg = Outgoing {
            exchange: String::new(),
            routing_key: tier_queue.clone(),
            properties: envelope::copy_properties(&d.properties, headers),
            body: d.data.clone(),
        };
        if self
            .republish(msg, message_id, "retry")
            .instrument(send)
            .await
        {
            self.metrics
                .retries
                .with_label_values(&[queue, label])
                .inc();
            self.count(lane, label::RETRIED);
            tracing::debug!(%message_id, attempts, tier = label, %error, "retry scheduled");
            Settle::Ack
        } else {
            self.count(lane, label::REQUEUED);
            Settle::Requeue
        }
    }

    /// An ordered shard's failed attempt: waits the tier's delay with the message held (the
    /// shard waits with it), then the caller runs the handler again. False when the worker is
    /// stopping meanwhile: the message goes back to the head of its shard.
    async fn retry_in_place(
        &self,
        lane: &Lane,
        message_id: &str,
        tier: usize,
        attempts: u32,
        error: &str,
    ) -> bool {
        let delay = self
            .limits
            .retry
            .tiers
            .get(tier)
            .or(self.limits.retry.tiers.last())
            .copied()
            .unwrap_or_default();
        let label = self.tier_labels.get(tier).map_or("?", String::as_str);
        self.metrics
            .retries
            .with_label_values(&[lane.queue(), label])
            .inc();
        tracing::debug!(%message_id, attempts, tier = label, %error, "retrying in place (ordered)");
        tokio::select! {
            () = tokio::time::sleep(delay) => true,
            () = self.stopping.cancelled() => false,
        }
    }

    /// An ordered shard's redelivered message (its worker died holding it). Counting it the
    /// usual way republishes it, behind the key's later messages; so it is handled in place,
    /// and only a quorum queue's own count (`x-delivery-count`) can call it a crash loop.
    /// Some(settle) when it is dead-lettered here.
    async fn ordered_redelivery(
        &self,
        d: &Delivery,
        lane: &Lane,
        message_id: &str,
        origin: &Origin,
        facts: &Facts,
    ) -> Option<Settle> {
        let limit = self.limits.max_redeliveries;
        let count = envelope::int_header(d.properties.headers().as_ref(), DELIVERY_COUNT)?;
        if limit == 0 || count <= i64::from(limit) {
            return None;
        }
        let error = format!("redelivered {count} times without an outcome: a worker holding it crashed, was killed or lost its channel each time");
        Some(
            Box::pin(self.dead_letter(
                d,
                lane,
                message_id,
                origin,
                facts.attempts,
                Reason::CrashLoop,
                &error,
            ))
            .await,
        )
    }

    /// A redelivered message: the worker that held it died or lost its channel. Counts it in a
    /// header (classic queues have no delivery limit) by republishing it to its own queue as
    /// redelivery number `n`.
    async fn count_redelivery(
        &self,
        d: &Delivery,
        lane: &Lane,
        message_id: &str,
        n: u32,
    ) -> Settle {
        let props = &d.properties;
        let mut h = envelope::clean_headers(props.headers().as_ref());
        h.insert(
            envelope::REDELIVERIES.into(),
            lapin::types::AMQPValue::LongLongInt(i64::from(n)),
        );
        trace::outcome("redelivery-counted", None, None);
        let send = trace::send_span(&mut h, "", lane.queue(), message_id);
        let msg = Outgoing {
            exchange: String::new(),
            routing_key: lane.queue().to_owned(),
            properties: envelope::copy_properties(props, h),
            body: d.data.clone(),
        };
        if self
            .republish(msg, message_id, "redelivery count")
            .instrument(send)
            .await
        {
            self.count(lane, label::REDELIVERY_COUNTED);
            Settle::Ack
        } else {
            self.count(lane, label::REQUEUED);
            Settle::Requeue
        }
    }

    /// Copies the message to the dead-letter exchange with `reason`; acks once confirmed, then
    /// tells a requester.
    #[allow(clippy::too_many_arguments)]
    async fn dead_letter(
        &self,
        d: &Delivery,
        lane: &Lane,
        message_id: &str,
        origin: &Origin,
        attempts: u32,
        reason: Reason,
        error: &str,
    ) -> Settle {
        let mut headers = envelope::dead_letter_headers(
            d.properties.headers().as_ref(),
            attempts,
            reason,
            error,
            origin,
            envelope::now_millis(),
        );
        trace::outcome("dead-lettered", None, Some(reason.as_str()));
        let send = trace::send_span(
            &mut headers,
            &self.dead_letter_exchange,
            &origin.routing_key,
            message_id,
        );
        let msg = Outgoing {
            exchange: self.dead_letter_exchange.clone(),
            routing_key: origin.routing_key.clone(),
            properties: envelope::copy_properties(&d.properties, headers),
            body: d.data.clone(),
        };
        if self
            .republish(msg, message_id, "dead letter")
            .instrument(send)
            .await
        {
            self.metrics
                .dead_letters
                .with_label_values(&[lane.queue(), reason.as_str()])
                .inc();
            self.count(lane, label::DEAD_LETTERED);
            tracing::info!(%message_id, %reason, attempts, error = %envelope::truncate(error, 200), "dead-lettered");
            self.reply(
                d,
                lane,
                message_id,
                "dead-lettered",
                Some((reason, error)),
                attempts,
            )
            .await;
            Settle::Ack
        } else {
            self.count(lane, label::REQUEUED);
            Settle::Requeue
        }
    }

    /// Publishes a copy and waits for the confirm, retrying with back-off (250 ms doubling to
    /// 10 s) for up to a minute. Holding the message meanwhile is deliberate: a full DLQ or a
    /// broker alarm then slows the worker down (its slots fill) instead of spinning requeues,
    /// and a requeued message would come back `redelivered` and be mistaken for a crash.
    /// False means "not confirmed": the caller requeues the original.
    async fn republish(&self, msg: Outgoing, message_id: &str, what: &str) -> bool {
        let policy = RetryPolicy::new(Duration::from_millis(250), Duration::from_secs(10))
            .with_deadline(Duration::from_secs(60));
        let retried = policy
            .run(
                &format!("{what} of {message_id} not confirmed"),
                Some(&self.stopping),
                || self.publisher.publish(msg.clone()),
            )
            .await;
        match retried {
            Ok(()) => true,
            Err(gave_up) => {
                let error = gave_up
                    .into_last()
                    .map_or_else(|| "shutting down".to_owned(), |e| e.to_string());
                tracing::error!(%message_id, %error, "{what} not confirmed; the original goes back to the queue");
                false
            }
        }
    }

    /// Request–reply: publish the final outcome to `reply_to` with the same correlation id.
    /// Best effort: the outcome itself is already safe, so a missing reply queue is logged.
    async fn reply(
        &self,
        d: &Delivery,
        lane: &Lane,
        message_id: &str,
        status: &str,
        failure: Option<(Reason, &str)>,
        attempts: u32,
    ) {
        let props = &d.properties;
        let (Some(reply_to), Some(correlation_id)) = (props.reply_to(), props.correlation_id())
        else {
            return;
        };
        let body = serde_json::json!({
            "message_id": message_id,
            "status": status,
            "reason": failure.map(|(r, _)| r.as_str()),
            "error": failure.map(|(_, e)| envelope::truncate(e, envelope::MAX_ERROR_BYTES)),
            "attempts": attempts,
            "queue": lane.queue(),
        });
        let msg = Outgoing {
            exchange: String::new(),
            routing_key: reply_to.as_str().to_owned(),
            properties: BasicProperties::default()
                .with_correlation_id(correlation_id.clone())
                .with_message_id(envelope::new_message_id().as_str().into())
                .with_content_type("application/json".into())
                .with_delivery_mode(2),
            body: body.to_string().into_bytes(),
        };
        if let Err(e) = self.publisher.publish(msg).await {
            tracing::warn!(%message_id, reply_to = reply_to.as_str(), error = %e, "could not publish the outcome to reply_to");
        }
    }
}
