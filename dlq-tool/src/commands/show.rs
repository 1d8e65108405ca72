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
struct Found {
    props: BasicProperties,
    body: Vec<u8>,
    exchange: String,
    routing_key: String,
    redelivered: bool,
}

pub async fn run(g: &Global, a: ShowArgs) -> anyhow::Result<ExitCode> {
    let queue = g.dlq()?;
    let url = g.url()?;
    warn_if_quorum(g, &queue);
    let broker = connect(&url, "show", &queue).await?;
    let filter = Filter::message_id(&a.message_id);
    let now = now_millis();
    let mut found: Option<Found> = None;
    let sample = inspect(&broker, &queue, examine_at_most(a.limit), |d| {
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
    let Some(m) = found else {
        anyhow::bail!(
            "message {:?} is not among the first {} of {} messages in {queue}{}",
            a.message_id,
            thousands(sample.examined),
            thousands(sample.total),
            if sample.sampled() {
                " (--limit searches deeper)"
            } else {
                ""
            }
        );
    };
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
        print(&mut out, &queue, &m, &dl, now)?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn print(
    out: &mut impl Write,
    queue: &str,
    m: &Found,
    dl: &DeadLetter,
    now: i64,
) -> std::io::Result<()> {
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_owned());
    writeln!(out, "Message {}  (in {queue})", opt(&dl.message_id))?;
    writeln!(out)?;
    writeln!(out, "Dead letter")?;
    let source = match dl.source {
        Source::Worker => "a courier worker (x-courier-* headers)",
        Source::Broker => "RabbitMQ itself (x-death)",
        Source::Unknown => "unknown (no x-courier-reason, no x-death)",
    };
    writeln!(out, "  dead-lettered by  {source}")?;
    writeln!(out, "  reason            {}", opt(&dl.reason))?;
    writeln!(out, "  error             {}", opt(&dl.error))?;
    writeln!(out, "  original queue    {}", opt(&dl.original_queue))?;
    writeln!(
        out,
        "  replay goes to    {}",
        dl.origin.as_ref().map_or_else(
            || "- (no origin recorded; use --to-queue)".to_owned(),
            |o| o.to_string()
        )
    )?;
    writeln!(
        out,
        "  attempts          {}",
        dl.attempts
            .map_or_else(|| "-".to_owned(), |n| n.to_string())
    )?;
    if let Some(t) = dl.first_failed_at_ms {
        writeln!(out, "  first failed at   {}", format_time_ms(t))?;
    }
    if let Some(t) = dl.dead_lettered_at_ms {
        writeln!(
            out,
            "  dead-lettered at  {} ({} ago)",
            format_time_ms(t),
            age_of(dl, now)
        )?;
    }
    writeln!(out, "  replayed          {} time(s)", dl.replayed)?;
    if !dl.deaths.is_empty() {
        writeln!(out)?;
        writeln!(out, "Broker deaths (x-death, most recent first)")?;
        for (i, d) in dl.deaths.iter().enumerate() {
            let at = d
                .time_ms
                .map(format_time_ms)
                .unwrap_or_else(|| "?".to_owned());
            let from = if d.exchange.is_empty() {
                "the default exchange".to_owned()
            } else {
                format!("exchange {}", d.exchange)
            };
            writeln!(
                out,
                "  {}. {} in {} ×{} at {at} (published to {from} with key {})",
                i + 1,
                d.reason,
                d.queue,
                d.count,
                d.routing_keys.join(", ")
            )?;
            if let Some(e) = &d.original_expiration {
                writeln!(out, "     original expiration {e} ms")?;
            }
        }
    }
    writeln!(out)?;
    writeln!(out, "Properties")?;
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
    for (k, v) in props {
        if let Some(v) = v {
            writeln!(out, "  {k:<17} {v}")?;
        }
    }
    writeln!(
        out,
        "  (delivered from exchange {:?} with key {:?}, redelivered {})",
        m.exchange, m.routing_key, m.redelivered
    )?;
    writeln!(out)?;
    writeln!(out, "Headers")?;
    match p.headers() {
        Some(h) if !h.inner().is_empty() => {
            for (k, v) in h.inner() {
                writeln!(
                    out,
                    "  {:<32} {} ({})",
                    k.as_str(),
                    display_value(v),
                    type_name(v)
                )?;
            }
        }
        _ => writeln!(out, "  (none)")?,
    }
    writeln!(out)?;
    writeln!(out, "Body ({} bytes)", thousands(m.body.len() as u64))?;
    let json = std::str::from_utf8(&m.body)
        .ok()
        .filter(|t| serde_json::from_str::<serde::de::IgnoredAny>(t).is_ok());
    match json.ok_or(()) {
        Ok(text) => {
            for line in pretty_json(text).lines() {
                writeln!(out, "  {line}")?;
            }
        }
        Err(_) => match std::str::from_utf8(&m.body) {
            Ok(text) => {
                writeln!(out, "  (not JSON)")?;
                for line in text.lines() {
                    writeln!(out, "  {line}")?;
                }
            }
            Err(_) => {
                let hex: Vec<String> = m.body.iter().take(64).map(|b| format!("{b:02x}")).collect();
                writeln!(
                    out,
                    "  (binary, not UTF-8; `show --json` has it in base64) {}{}",
                    hex.join(" "),
                    if m.body.len() > 64 { " …" } else { "" }
                )?;
            }
        },
    }
    Ok(())
}
