//! `courier-dlq stats`: totals, oldest and newest, groups by reason, original queue and error.
//!
//! The ready count comes from the broker over AMQP (a passive declare) and the inspection; the
//! unacknowledged count from the management API when it answers, since AMQP has no way to ask
//! for it. A queue something consumes fails as busy before anything is read (see
//! [`courier::broker::Admin::unused_queue`]).

use super::{connect, warn_if_quorum};
use crate::cli::{Global, StatsArgs};
use crate::inspect::{examine_at_most, inspect, Sample};
use crate::output::{age, groups, thousands};
use crate::render::format_time_ms;
use crate::stats::Stats;
use anyhow::Context;
use courier::deadletter::DeadLetter;
use courier::envelope::now_millis;
use courier::management::{Management, ManagementError, QueueCounts};
use serde_json::json;
use std::io::{BufWriter, Write};
use std::ops::ControlFlow;
use std::process::ExitCode;
use std::time::Duration;

pub async fn run(g: &Global, a: StatsArgs) -> anyhow::Result<ExitCode> {
    let filter = a.filters.build(&g.prefix)?;
    let queue = g.dlq()?;
    let url = g.url()?;
    warn_if_quorum(g, &queue);
    let management = Management::locate(a.management_url.as_deref(), &url).await;
    // Asked before the inspection, which holds the messages it looks at unacknowledged itself.
    let (counts, broker) = tokio::join!(
        management.queue_counts(&queue, MANAGEMENT_TIMEOUT),
        connect(&url, "stats", &queue)
    );
    let broker = broker?;
    let now = now_millis();
    let mut stats = Stats::default();
    let sample = inspect(&broker, &queue, examine_at_most(a.limit), |d| {
        let dl = DeadLetter::read(&d.properties, d.data.len());
        if filter.matches(&dl, d.properties.headers().as_ref(), now) {
            stats.add(&dl);
        }
        Ok(ControlFlow::Continue(()))
    })
    .await;
    broker.close().await;
    // A busy queue is an error, but what the management API saw still says how many messages
    // the other consumer holds.
    let sample = match &counts {
        Ok(c) => sample.with_context(|| {
            format!(
                "{queue}: {} ready, {} unacknowledged (management API)",
                thousands(c.ready),
                thousands(c.unacked)
            )
        })?,
        Err(_) => sample?,
    };
    let unacked = Unacked(counts);
    let mut out = BufWriter::new(std::io::stdout().lock());
    if a.json {
        print_json(
            &mut out,
            &queue,
            &sample,
            &unacked,
            &stats,
            !filter.is_empty(),
            now,
        )?;
    } else {
        print_tables(
            &mut out,
            &queue,
            &sample,
            &unacked,
            &stats,
            !filter.is_empty(),
            now,
        )?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// How long `stats` waits for the management API: it only adds the unacknowledged count.
const MANAGEMENT_TIMEOUT: Duration = Duration::from_secs(3);

/// The unacknowledged count, or why it is unknown.
struct Unacked(Result<QueueCounts, ManagementError>);

impl Unacked {
    fn count(&self) -> Option<u64> {
        self.0.as_ref().ok().map(|c| c.unacked)
    }
}

fn when(ms: Option<i64>, now: i64) -> serde_json::Value {
    match ms {
        Some(t) => json!({
            "at": format_time_ms(t),
            "epoch_ms": t,
            "age_seconds": u64::try_from(now.saturating_sub(t)).unwrap_or(0) / 1000,
        }),
        None => serde_json::Value::Null,
    }
}

fn print_json(
    out: &mut impl Write,
    queue: &str,
    sample: &Sample,
    unacked: &Unacked,
    s: &Stats,
    filtered: bool,
    now: i64,
) -> std::io::Result<()> {
    let v = json!({
        "queue": queue,
        "total": sample.total,
        "ready": sample.total,
        "unacked": unacked.count(),
        "examined": sample.examined,
        "sampled": sample.sampled(),
        "filtered": filtered,
        "matched": s.matched,
        "body_bytes": s.bytes,
        "oldest": when(s.oldest_ms, now),
        "newest": when(s.newest_ms, now),
        "by_reason": s.by_reason.map(),
        "by_queue": s.by_queue.map(),
        "by_error": s.by_error.map(),
    });
    writeln!(out, "{v}")
}

fn print_tables(
    out: &mut impl Write,
    queue: &str,
    sample: &Sample,
    unacked: &Unacked,
    s: &Stats,
    filtered: bool,
    now: i64,
) -> std::io::Result<()> {
    match &unacked.0 {
        Ok(c) => {
            writeln!(
                out,
                "{queue}: {} messages ready, {} unacknowledged",
                thousands(sample.total),
                thousands(c.unacked)
            )?;
            if c.unacked > 0 {
                // Nothing consumes the queue (that would have failed as busy), so these are
                // held by a `basic.get` client, or were until moments ago.
                writeln!(
                    out,
                    "unacknowledged messages are held by a client that fetched them (basic.get), or were until moments ago (the management API samples every few seconds); they are not examined below"
                )?;
            }
        }
        Err(e) => writeln!(
            out,
            "{queue}: {} messages ready, unacknowledged: unknown ({e}; --management-url)",
            thousands(sample.total)
        )?,
    }
    let note = crate::inspect::note(sample, false);
    if !note.is_empty() {
        writeln!(out, "{note}")?;
    }
    if filtered {
        writeln!(
            out,
            "matching the filters: {} of {} examined",
            thousands(s.matched),
            thousands(sample.examined)
        )?;
    }
    if s.matched == 0 {
        return Ok(());
    }
    let ago = |t: i64| {
        let d = Duration::from_millis(u64::try_from(now.saturating_sub(t)).unwrap_or(0));
        format!("{} ({} ago)", format_time_ms(t), age(d))
    };
    if let Some(t) = s.oldest_ms {
        writeln!(out, "oldest: {}", ago(t))?;
    }
    if let Some(t) = s.newest_ms {
        writeln!(out, "newest: {}", ago(t))?;
    }
    writeln!(out, "body bytes: {}", thousands(s.bytes))?;
    groups(out, "REASON", &s.by_reason)?;
    groups(out, "ORIGINAL QUEUE", &s.by_queue)?;
    groups(out, "ERROR", &s.by_error)
}
