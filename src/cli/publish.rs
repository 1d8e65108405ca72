//! `courier publish`: one message, or a JSONL file, each confirmed by the broker.

use super::out::{self, outln};
use super::GlobalArgs;
use anyhow::{bail, Context};
use clap::Args;
use courier::envelope;
use courier::metrics::Metrics;
use courier::publisher::{Outgoing, PublishError, Publisher, PublisherConfig};
use courier::retry::RetryPolicy;
use courier::topology::Topology;
use futures_util::StreamExt;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::BasicProperties;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tokio::fs::File;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader, Lines};

/// Publish notification jobs with publisher confirms (persistent, mandatory).
///
/// One message:   courier publish --routing-key email '{"to":"ada@example.com"}'
/// From stdin:    echo '{"to":"+15550100"}' | courier publish --routing-key sms --priority 9
/// A JSONL file:  courier publish --file jobs.jsonl
///   one JSON object a line: {"routing_key":"email","body":{...},"message_id":"...",
///   "priority":5,"headers":{"tenant":"acme"},"correlation_id":"...","reply_to":"..."};
///   only "body" is required (routing_key falls back to --routing-key, message_id is generated).
/// A message counts as published only when the broker confirmed it; an unroutable one (no queue
/// bound for its routing key) is an error, not a success. Transient failures (connection lost,
/// broker restart) are retried for --retry-for.
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct PublishArgs {
    /// JSON body. Read from stdin when absent (and no --file).
    body: Option<String>,
    /// Publish every line of this JSONL file instead.
    #[arg(long, conflicts_with = "body")]
    file: Option<PathBuf>,
    /// Routing key = channel: email, sms, push, webhook.
    #[arg(long, short = 'k')]
    routing_key: Option<String>,
    /// Exchange; default: the first exchange of the topology file (with --prefix).
    #[arg(long)]
    exchange: Option<String>,
    /// Priority 0-9 (higher overtakes lower on priority queues). A queue with an urgent band
    /// (`urgent_from` in the topology) gets a message at or above its threshold in the band:
    /// published with routing key `<key>.urgent`.
    #[arg(long, short = 'p')]
    priority: Option<u8>,
    /// Idempotency key; default: a random id.
    #[arg(long)]
    message_id: Option<String>,
    /// Header NAME=VALUE (repeatable).
    #[arg(long = "header", short = 'H', value_name = "NAME=VALUE")]
    headers: Vec<String>,
    /// Ask for the outcome to be published back to this queue (with --correlation-id).
    #[arg(long, requires = "correlation_id")]
    reply_to: Option<String>,
    /// Correlation id for request–reply.
    #[arg(long)]
    correlation_id: Option<String>,
    /// Unconfirmed messages in flight at once.
    #[arg(long, default_value_t = 1024)]
    window: usize,
    /// Keep retrying a message whose publish failed transiently for this long.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    retry_for: Duration,
    /// Publish a body that is not JSON (testing the `malformed` path).
    #[arg(long)]
    allow_non_json: bool,
}

/// One line of a JSONL file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    body: serde_json::Value,
    routing_key: Option<String>,
    exchange: Option<String>,
    message_id: Option<String>,
    priority: Option<u8>,
    #[serde(default)]
    headers: serde_json::Map<String, serde_json::Value>,
    correlation_id: Option<String>,
    reply_to: Option<String>,
}

fn header_value(v: &serde_json::Value) -> Option<AMQPValue> {
    Some(match v {
        serde_json::Value::String(s) => AMQPValue::LongString(LongString::from(s.as_str())),
        serde_json::Value::Bool(b) => AMQPValue::Boolean(*b),
        serde_json::Value::Number(n) => AMQPValue::LongLongInt(n.as_i64()?),
        _ => return None,
    })
}

struct Defaults {
    exchange: String,
    routing_key: Option<String>,
    /// Routes a message at or above a queue's `urgent_from` to its urgent band.
    topology: Option<Topology>,
}

fn build(line: Line, defaults: &Defaults) -> Result<Outgoing, String> {
    let routing_key = line
        .routing_key
        .or_else(|| defaults.routing_key.clone())
        .ok_or("no routing_key (set it on the line or pass --routing-key)")?;
    let body = match line.body {
        // A string body is sent as-is (it may itself hold JSON text).
        serde_json::Value::String(s) => s.into_bytes(),
        other => other.to_string().into_bytes(),
    };
    let mut headers = FieldTable::default();
    for (k, v) in &line.headers {
        let value = header_value(v)
            .ok_or_else(|| format!("header {k:?}: use a string, integer or boolean"))?;
        headers.insert(k.as_str().into(), value);
    }
    let message_id = line.message_id.unwrap_or_else(envelope::new_message_id);
    let exchange = line.exchange.unwrap_or_else(|| defaults.exchange.clone());
    // While spans are exported, the message gets the context of a `send` span: the child of a
    // `traceparent` given in its headers, else a new trace. The span itself ends here.
    let _ = courier::telemetry::send_span(&mut headers, &exchange, &routing_key, &message_id, true);
    let mut props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_message_id(message_id.as_str().into())
        .with_timestamp(u64::try_from(envelope::now_millis() / 1000).unwrap_or(0))
        .with_headers(headers);
    if let Some(p) = line.priority {
        props = props.with_priority(p);
    }
    if let Some(c) = line.correlation_id {
        props = props.with_correlation_id(c.as_str().into());
    }
    if let Some(r) = line.reply_to {
        props = props.with_reply_to(r.as_str().into());
    }
    let routing_key = match (&defaults.topology, line.priority) {
        (Some(t), Some(p)) => t.routing_key_for(&exchange, &routing_key, p),
        _ => routing_key,
    };
    Ok(Outgoing {
        exchange,
        routing_key,
        properties: props,
        body,
    })
}

/// Publishes with retries of transient failures (the library's one rule: unroutable messages and
/// missing exchanges fail at once; nacks, timeouts and lost channels are retried for `retry_for`).
async fn publish_retrying(
    p: &Publisher,
    msg: Outgoing,
    retry_for: Duration,
) -> Result<(), PublishError> {
    RetryPolicy::new(Duration::from_millis(200), Duration::from_secs(5))
        .with_deadline(retry_for)
        .run("publish not confirmed", None, || p.publish(msg.clone()))
        .await
        .map_err(|gave_up| {
            gave_up
                .into_last()
                .unwrap_or_else(|| PublishError::Connect("cancelled".to_owned()))
        })
}

pub async fn run(global: &GlobalArgs, args: PublishArgs) -> anyhow::Result<ExitCode> {
    let url = global.amqp_url()?;
    let topology = global.load_topology()?;
    let exchange = match &args.exchange {
        Some(e) => e.clone(),
        None => topology
            .exchanges
            .first()
            .map(|e| e.name.clone())
            .context("the topology declares no exchange; pass --exchange")?,
    };
    let defaults = Defaults {
        exchange,
        routing_key: args.routing_key.clone(),
        topology: Some(topology),
    };
    let publisher = Publisher::connect(
        &url,
        PublisherConfig {
            name: "courier publish".to_owned(),
            window: args.window.max(1),
            ..PublisherConfig::default()
        },
        Metrics::new(),
    )
    .await?;

    let Some(path) = &args.file else {
        let body = match &args.body {
            Some(b) => b.clone(),
            None => {
                let mut s = String::new();
                tokio::io::stdin()
                    .read_to_string(&mut s)
                    .await
                    .context("reading the body from stdin")?;
                s
            }
        };
        let body = body.trim_end_matches(['\n', '\r']).to_owned();
        if !args.allow_non_json {
            if let Err(e) = envelope::validate_body(body.as_bytes()) {
                bail!(
                    "{e}; the contract requires JSON bodies (--allow-non-json to send it anyway)"
                );
            }
        }
        let mut headers = serde_json::Map::new();
        for h in &args.headers {
            let Some((k, v)) = h.split_once('=') else {
                bail!("--header {h:?}: expected NAME=VALUE");
            };
            headers.insert(k.to_owned(), serde_json::Value::String(v.to_owned()));
        }
        let line = Line {
            body: serde_json::Value::String(body),
            routing_key: None,
            exchange: None,
            message_id: args.message_id.clone(),
            priority: args.priority,
            headers,
            correlation_id: args.correlation_id.clone(),
            reply_to: args.reply_to.clone(),
        };
        let msg = build(line, &defaults).map_err(anyhow::Error::msg)?;
        let id = envelope::message_id(&msg.properties)
            .unwrap_or_default()
            .to_owned();
        let target = format!("{}/{}", msg.exchange, msg.routing_key);
        publish_retrying(&publisher, msg, args.retry_for).await?;
        publisher.close().await;
        outln!("published {id} to {target} (confirmed)")?;
        return Ok(ExitCode::SUCCESS);
    };

    // A file: validate every line first, so a typo on line 90,000 does not leave a half-sent
    // file; then stream it again to publish, so memory stays flat whatever the file's size.
    // Both passes read asynchronously: a slow disk must not stall the runtime's workers.
    let parse = |n: usize, line: &str| -> anyhow::Result<Option<Outgoing>> {
        if line.trim().is_empty() {
            return Ok(None);
        }
        let parsed: Line = serde_json::from_str(line)
            .with_context(|| format!("{}:{n}: not a valid message line", path.display()))?;
        let msg =
            build(parsed, &defaults).map_err(|e| anyhow::anyhow!("{}:{n}: {e}", path.display()))?;
        Ok(Some(msg))
    };
    let mut total = 0usize;
    let mut lines = open_lines(path).await?;
    for n in 1usize.. {
        let next = lines
            .next_line()
            .await
            .with_context(|| format!("{}:{n}: cannot read", path.display()))?;
        let Some(line) = next else { break };
        if parse(n, &line)?.is_some() {
            total += 1;
        }
    }
    let bar = indicatif::ProgressBar::new(total as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} confirmed {per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    let mut failed: Vec<(usize, PublishError)> = Vec::new();
    let mut failures = 0usize;
    let parse = &parse;
    let messages = futures_util::stream::unfold(
        (open_lines(path).await?, 0usize),
        move |(mut lines, mut n)| async move {
            loop {
                n += 1;
                // Validated above; a line of a file changed meanwhile that no longer parses is
                // skipped, and one that no longer reads ends the pass: the count shows either.
                let Ok(Some(line)) = lines.next_line().await else {
                    return None;
                };
                if let Ok(Some(msg)) = parse(n, &line) {
                    return Some(((n, msg), (lines, n)));
                }
            }
        },
    );
    let results = messages
        .map(|(n, msg)| {
            let p = publisher.clone();
            let bar = bar.clone();
            let retry_for = args.retry_for;
            async move {
                let r = publish_retrying(&p, msg, retry_for).await;
                bar.inc(1);
                (n, r)
            }
        })
        .buffer_unordered(args.window.max(1));
    tokio::pin!(results);
    let mut ok = 0usize;
    while let Some((n, r)) = results.next().await {
        match r {
            Ok(()) => ok += 1,
            Err(e) => {
                failures += 1;
                if failed.len() < 20 {
                    failed.push((n, e));
                }
            }
        }
    }
    bar.finish_and_clear();
    publisher.close().await;
    let secs = started.elapsed().as_secs_f64();
    let printed = outln!(
        "published {ok} of {total} messages from {} (confirmed) in {secs:.1}s ({:.0}/s)",
        path.display(),
        ok as f64 / secs.max(1e-9)
    );
    for (n, e) in &failed {
        eprintln!("{}:{n}: {e}", path.display());
    }
    if failures > failed.len() {
        eprintln!("... and {} more failures", failures - failed.len());
    }
    let code = if failures == 0 && ok == total {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    };
    out::verdict(printed, code)
}

/// The lines of a JSONL file, read without blocking the runtime.
async fn open_lines(path: &Path) -> anyhow::Result<Lines<BufReader<File>>> {
    let file = File::open(path)
        .await
        .with_context(|| format!("cannot open {}", path.display()))?;
    Ok(BufReader::new(file).lines())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Defaults {
        Defaults {
            exchange: "notifications".into(),
            routing_key: Some("email".into()),
            topology: None,
        }
    }

    #[test]
    fn line_with_only_a_body_uses_defaults() {
        let l: Line = serde_json::from_str(r#"{"body":{"to":"a"}}"#).expect("parses");
        let m = build(l, &defaults()).expect("builds");
        assert_eq!(m.routing_key, "email");
        assert_eq!(m.body, br#"{"to":"a"}"#);
        assert!(envelope::message_id(&m.properties).is_some());
        assert_eq!(*m.properties.delivery_mode(), Some(2));
    }

    #[test]
    fn unknown_line_keys_and_bad_headers_are_refused() {
        assert!(serde_json::from_str::<Line>(r#"{"body":1,"routingkey":"x"}"#).is_err());
        let l: Line = serde_json::from_str(r#"{"body":1,"headers":{"x":[1]}}"#).expect("parses");
        assert!(build(l, &defaults())
            .expect_err("bad header")
            .contains("header \"x\""));
        let l: Line = serde_json::from_str(r#"{"body":1}"#).expect("parses");
        let no_key = Defaults {
            exchange: "n".into(),
            routing_key: None,
            topology: None,
        };
        assert!(build(l, &no_key)
            .expect_err("no key")
            .contains("routing_key"));
    }

    #[test]
    fn a_priority_at_a_band_threshold_goes_to_the_urgent_band() {
        let text = courier::topology::BUILT_IN_DEFAULT.replace(
            "name = \"notifications.email\"\n",
            "name = \"notifications.email\"\nurgent_from = 5\n",
        );
        let banded = Defaults {
            topology: Some(Topology::parse(&text, "t", "").expect("valid")),
            ..defaults()
        };
        let key = |line: &str| {
            let l: Line = serde_json::from_str(line).expect("parses");
            build(l, &banded).expect("builds").routing_key
        };
        assert_eq!(key(r#"{"body":1,"priority":5}"#), "email.urgent");
        assert_eq!(key(r#"{"body":1,"priority":4}"#), "email");
        assert_eq!(key(r#"{"body":1}"#), "email");
        assert_eq!(key(r#"{"body":1,"priority":9,"routing_key":"sms"}"#), "sms");
    }
}
