//! `courier-dlq groups`: the dead letters grouped by cause (see [`crate::groups`]), each with
//! a stable id that `--group ID` selects on every selecting command.

use super::{connect, warn_if_quorum};
use crate::cli::{Global, GroupsArgs};
use crate::filter::Filter;
use crate::groups::{Group, GroupTable};
use crate::inspect::{examine_at_most, inspect, Sample};
use crate::output::{age, thousands};
use crate::render::format_time_ms;
use courier::deadletter::DeadLetter;
use courier::envelope::now_millis;
use serde_json::json;
use std::io::{BufWriter, Write};
use std::ops::ControlFlow;
use std::process::ExitCode;
use std::time::Duration;

/// What a look at the groups found.
pub struct Collected {
    /// The groups.
    pub table: GroupTable,
    /// How much of the queue was examined.
    pub sample: Sample,
    /// Dead letters that matched the filters.
    pub matched: u64,
}

/// Groups the dead letters among the first `limit` (at most [`crate::inspect::MAX_INSPECT`])
/// of the dead-letter queue that `filter` selects, calling `each` with every one of them too
/// (the console's sparklines). An inspection: every message stays where it was.
///
/// # Errors
/// The queue is missing or busy, or the connection failed.
pub async fn collect(
    g: &Global,
    filter: &Filter,
    limit: u64,
    mut each: impl FnMut(&DeadLetter),
) -> anyhow::Result<Collected> {
    let queue = g.dlq()?;
    let url = g.url()?;
    warn_if_quorum(g, &queue);
    let broker = connect(&url, "groups", &queue).await?;
    let now = now_millis();
    let mut table = GroupTable::default();
    let mut matched = 0u64;
    let sample = inspect(&broker, &queue, limit, |d| {
        let dl = DeadLetter::read(&d.properties, d.data.len());
        if filter.matches(&dl, d.properties.headers().as_ref(), now) {
            matched += 1;
            table.add(&dl);
            each(&dl);
        }
        Ok(ControlFlow::Continue(()))
    })
    .await;
    broker.close().await;
    Ok(Collected {
        table,
        sample: sample?,
        matched,
    })
}

pub async fn run(g: &Global, a: GroupsArgs) -> anyhow::Result<ExitCode> {
    let filter = a.filters.build(&g.prefix)?;
    let queue = g.dlq()?;
    let Collected {
        table,
        sample,
        matched,
    } = collect(g, &filter, examine_at_most(a.limit), |_| {}).await?;
    let now = now_millis();
    let mut out = BufWriter::new(std::io::stdout().lock());
    let groups = table.sorted();
    if a.json {
        let v = json!({
            "queue": queue,
            "total": sample.total,
            "examined": sample.examined,
            "sampled": sample.sampled(),
            "matched": matched,
            "groups": groups.iter().map(|g| group_json(g)).collect::<Vec<_>>(),
            "other": table.other,
        });
        writeln!(out, "{v}")?;
    } else {
        writeln!(
            out,
            "{queue}: {} dead letters in {} groups (examined {})",
            thousands(matched),
            groups.len(),
            thousands(sample.examined)
        )?;
        let note = crate::inspect::note(&sample, false);
        if !note.is_empty() {
            writeln!(out, "{note}")?;
        }
        if !groups.is_empty() {
            writeln!(
                out,
                "{:<8}  {:>8}  {:<20}  {:<20}  {:<30}  CAUSE",
                "GROUP", "COUNT", "FIRST SEEN", "LAST SEEN", "ORIGINAL QUEUES"
            )?;
        }
        let seen = |t: Option<i64>| match t {
            Some(t) => {
                let d = Duration::from_millis(u64::try_from(now.saturating_sub(t)).unwrap_or(0));
                format!("{} ago", age(d))
            }
            None => "?".to_owned(),
        };
        for g in &groups {
            let queues: Vec<&str> = g.queues.iter().map(String::as_str).collect();
            writeln!(
                out,
                "{:<8}  {:>8}  {:<20}  {:<20}  {:<30}  {}",
                g.id,
                thousands(g.count),
                seen(g.first_seen_ms),
                seen(g.last_seen_ms),
                if queues.is_empty() {
                    "?".to_owned()
                } else {
                    queues.join(",")
                },
                g.cause
            )?;
        }
        if table.other > 0 {
            writeln!(
                out,
                "(and {} in groups past the first {})",
                thousands(table.other),
                crate::groups::MAX_GROUPS
            )?;
        }
        if let Some(first) = groups.first() {
            writeln!(
                out,
                "act on a group: courier-dlq replay --group {} --dry-run  (list, show, export, purge take --group too)",
                first.id
            )?;
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn group_json(g: &Group) -> serde_json::Value {
    json!({
        "id": g.id,
        "cause": g.cause,
        "count": g.count,
        "first_seen": g.first_seen_ms.map(format_time_ms),
        "last_seen": g.last_seen_ms.map(format_time_ms),
        "first_seen_epoch_ms": g.first_seen_ms,
        "last_seen_epoch_ms": g.last_seen_ms,
        "queues": g.queues,
    })
}
