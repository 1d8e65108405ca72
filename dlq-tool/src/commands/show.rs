//! `courier-dlq show MESSAGE_ID`: everything about one message, readable.

use super::{connect, warn_if_quorum};
use crate::cli::{Global, ShowArgs};
use crate::filter::Filter;
use crate::inspect::{examine_at_most, inspect};
use crate::jsonl;
use crate::output::{age_of, pretty_json, summary, thousands};
use crate::render::{display_value, format_time_ms, type_name};
use courier::deadletter::{DeadLetter, Source};
use courier::envelope::now_millis;
use lapin::BasicProperties;
use std::io::{BufWriter, Write};
use std::ops::ControlFlow;
use std::process::ExitCode;

/// The message found, copied out before it is given back.
pub struct Found {
    /// Its properties, headers included.
    pub props: BasicProperties,
    /// Its body.
    pub body: Vec<u8>,
    /// The exchange it was delivered from.
    pub exchange: String,
    /// The routing key it was delivered with.
    pub routing_key: String,
    /// Whether the broker had delivered it before.
    pub redelivered: bool,
}

pub async fn run(g: &Global, a: ShowArgs) -> anyhow::Result<ExitCode> {
    let queue = g.dlq()?;
    let m = find(g, &a.message_id, a.limit).await?;
    let now = now_millis();
    let mut out = BufWriter::new(std::io::stdout().lock());
    let dl = DeadLetter::read(&m.props, m.body.len());
    if a.json {
        let origin = jsonl::Origin {
            queue: &queue,
            exchange: &m.exchange,
            routing_key: &m.routing_key,
            redelivered: m.redelivered,
        };
        writeln!(
            out,
            "{}",
            jsonl::encode(&origin, &m.props, &m.body, summary(&dl, now))
        )?;
    } else {
        print(&mut out, &view(&queue, &m, now))?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// Finds message `message_id` among the first `limit` messages of the dead-letter queue (an
/// inspection: every message stays where it was).
///
/// # Errors
/// It is not there (the error says how far it looked), or the inspection failed.
pub async fn find(g: &Global, message_id: &str, limit: u64) -> anyhow::Result<Found> {
    let queue = g.dlq()?;
    let url = g.url()?;
    warn_if_quorum(g, &queue);
    let broker = connect(&url, "show", &queue).await?;
    let filter = Filter::message_id(message_id);
    let now = now_millis();
    let mut found: Option<Found> = None;
    let sample = inspect(&broker, &queue, examine_at_most(limit), |d| {
        let dl = DeadLetter::read(&d.properties, d.data.len());
        if !filter.matches(&dl, None, now) {
            return Ok(ControlFlow::Continue(()));
        }
        found = Some(Found {
            props: d.properties.clone(),
            body: d.data.clone(),
            exchange: d.exchange.to_string(),
            routing_key: d.routing_key.to_string(),
            redelivered: d.redelivered,
        });
        Ok(ControlFlow::Break(()))
    })
    .await;
    broker.close().await;
    let sample = sample?;
    found.ok_or_else(|| {
        anyhow::anyhow!(
            "message {:?} is not among the first {} of {} messages in {queue}{}",
            message_id,
            thousands(sample.examined),
            thousands(sample.total),
            if sample.sampled() {
                " (--limit searches deeper)"
            } else {
                ""
            }
        )
    })
}

/// One dead letter laid out for people: the sections `show` prints and the console's message
/// page shows, computed once so that both say the same. Values are plain text; whoever shows
/// them escapes them for its medium.
pub struct MessageView {
    /// The queue it is in.
    pub queue: String,
    /// Its `message_id`, or `-`.
    pub message_id: String,
    /// "Dead letter": who dead-lettered it, reason, error, origin, attempts, times.
    pub dead_letter: Vec<(&'static str, String)>,
    /// The `x-death` history, most recent first: one line each, and the original expiration
    /// when there was one.
    pub deaths: Vec<(String, Option<String>)>,
    /// Every property that is set.
    pub properties: Vec<(&'static str, String)>,
    /// Where the inspection got it from: exchange, routing key, redelivered.
    pub delivered: String,
    /// Every header: name, value as shown, AMQP type.
    pub headers: Vec<(String, String, &'static str)>,
    /// The body's size in bytes.
    pub body_len: usize,
    /// The body, readable.
    pub body: BodyView,
}

/// A body, as it can be shown.
pub enum BodyView {
    /// JSON, pretty-printed with its own key order.
    Json(String),
    /// UTF-8 text that is not JSON.
    Text(String),
    /// Neither: the first 64 bytes in hex, and whether there are more.
    Binary(String, bool),
}

/// Lays out message `m` of `queue` (`now` for its age).
pub fn view(queue: &str, m: &Found, now: i64) -> MessageView {
    let dl = DeadLetter::read(&m.props, m.body.len());
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_owned());
    let source = match dl.source {
        Source::Worker => "a courier worker (x-courier-* headers)",
        Source::Broker => "RabbitMQ itself (x-death)",
        Source::Unknown => "unknown (no x-courier-reason, no x-death)",
    };
    let mut dead_letter = vec![
        ("dead-lettered by", source.to_owned()),
        ("reason", opt(&dl.reason)),
        ("error", opt(&dl.error)),
        ("original queue", opt(&dl.original_queue)),
        (
            "replay goes to",
            dl.origin.as_ref().map_or_else(
                || "- (no origin recorded; use --to-queue)".to_owned(),
                |o| o.to_string(),
            ),
        ),
        (
            "attempts",
            dl.attempts
                .map_or_else(|| "-".to_owned(), |n| n.to_string()),
        ),
    ];
    if let Some(t) = dl.first_failed_at_ms {
        dead_letter.push(("first failed at", format_time_ms(t)));
    }
    if let Some(t) = dl.dead_lettered_at_ms {
        dead_letter.push((
            "dead-lettered at",
            format!("{} ({} ago)", format_time_ms(t), age_of(&dl, now)),
        ));
    }
    dead_letter.push(("replayed", format!("{} time(s)", dl.replayed)));
    let deaths = dl
        .deaths
        .iter()
        .map(|d| {
            let at = d
                .time_ms
                .map(format_time_ms)
                .unwrap_or_else(|| "?".to_owned());
            let from = if d.exchange.is_empty() {
                "the default exchange".to_owned()
            } else {
                format!("exchange {}", d.exchange)
            };
            (
                format!(
                    "{} in {} ×{} at {at} (published to {from} with key {})",
                    d.reason,
                    d.queue,
                    d.count,
                    d.routing_keys.join(", ")
                ),
                d.original_expiration
                    .as_ref()
                    .map(|e| format!("original expiration {e} ms")),
            )
        })
        .collect();
    let p = &m.props;
    let props: [(&str, Option<String>); 13] = [
        ("message_id", p.message_id().as_ref().map(|v| v.to_string())),
        (
            "content_type",
            p.content_type().as_ref().map(|v| v.to_string()),
        ),
        (
            "content_encoding",
            p.content_encoding().as_ref().map(|v| v.to_string()),
        ),
        ("delivery_mode", p.delivery_mode().map(|v| v.to_string())),
        ("priority", p.priority().map(|v| v.to_string())),
        (
            "correlation_id",
            p.correlation_id().as_ref().map(|v| v.to_string()),
        ),
        ("reply_to", p.reply_to().as_ref().map(|v| v.to_string())),
        ("expiration", p.expiration().as_ref().map(|v| v.to_string())),
        (
            "timestamp",
            p.timestamp()
                .map(|t| display_value(&lapin::types::AMQPValue::Timestamp(t))),
        ),
        ("type", p.kind().as_ref().map(|v| v.to_string())),
        ("user_id", p.user_id().as_ref().map(|v| v.to_string())),
        ("app_id", p.app_id().as_ref().map(|v| v.to_string())),
        ("cluster_id", p.cluster_id().as_ref().map(|v| v.to_string())),
    ];
    let properties = props
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect();
    let headers = p
        .headers()
        .as_ref()
        .map(|h| {
            h.inner()
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), display_value(v), type_name(v)))
                .collect()
        })
        .unwrap_or_default();
    let json = std::str::from_utf8(&m.body)
        .ok()
        .filter(|t| serde_json::from_str::<serde::de::IgnoredAny>(t).is_ok());
    let body = match (json, std::str::from_utf8(&m.body)) {
        (Some(text), _) => BodyView::Json(pretty_json(text)),
        (None, Ok(text)) => BodyView::Text(text.to_owned()),
        (None, Err(_)) => BodyView::Binary(
            m.body
                .iter()
                .take(64)
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" "),
            m.body.len() > 64,
        ),
    };
    MessageView {
        queue: queue.to_owned(),
        message_id: opt(&dl.message_id),
        dead_letter,
        deaths,
        properties,
        delivered: format!(
            "delivered from exchange {:?} with key {:?}, redelivered {}",
            m.exchange, m.routing_key, m.redelivered
        ),
        headers,
        body_len: m.body.len(),
        body,
    }
}

fn print(out: &mut impl Write, v: &MessageView) -> std::io::Result<()> {
    writeln!(out, "Message {}  (in {})", v.message_id, v.queue)?;
    writeln!(out)?;
    writeln!(out, "Dead letter")?;
    for (k, value) in &v.dead_letter {
        writeln!(out, "  {k:<17} {value}")?;
    }
    if !v.deaths.is_empty() {
        writeln!(out)?;
        writeln!(out, "Broker deaths (x-death, most recent first)")?;
        for (i, (line, expiration)) in v.deaths.iter().enumerate() {
            writeln!(out, "  {}. {line}", i + 1)?;
            if let Some(e) = expiration {
                writeln!(out, "     {e}")?;
            }
        }
    }
    writeln!(out)?;
    writeln!(out, "Properties")?;
    for (k, value) in &v.properties {
        writeln!(out, "  {k:<17} {value}")?;
    }
    writeln!(out, "  ({})", v.delivered)?;
    writeln!(out)?;
    writeln!(out, "Headers")?;
    if v.headers.is_empty() {
        writeln!(out, "  (none)")?;
    }
    for (k, value, kind) in &v.headers {
        writeln!(out, "  {k:<32} {value} ({kind})")?;
    }
    writeln!(out)?;
    writeln!(out, "Body ({} bytes)", thousands(v.body_len as u64))?;
    match &v.body {
        BodyView::Json(text) => {
            for line in text.lines() {
                writeln!(out, "  {line}")?;
            }
        }
        BodyView::Text(text) => {
            writeln!(out, "  (not JSON)")?;
            for line in text.lines() {
                writeln!(out, "  {line}")?;
            }
        }
        BodyView::Binary(hex, more) => {
            writeln!(
                out,
                "  (binary, not UTF-8; `show --json` has it in base64) {hex}{}",
                if *more { " …" } else { "" }
            )?;
        }
    }
    Ok(())
}
