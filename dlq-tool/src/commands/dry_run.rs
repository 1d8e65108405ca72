//! `--dry-run` of a pass: an inspection that says what the pass would do, changing nothing.

use super::{connect, warn_if_quorum};
use crate::cli::Global;
use crate::filter::Filter;
use crate::inspect::{inspect, MAX_INSPECT};
use crate::output::{groups, thousands};
use crate::stats::{Groups, Plan};
use courier::amqp::AmqpUrl;
use courier::deadletter::{replay_destination, DeadLetter};
use courier::envelope::now_millis;
use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::ops::ControlFlow;
use std::process::ExitCode;

/// Which pass is being previewed.
pub enum Verb<'a> {
    /// Replay, to `--to-queue` or each message's origin.
    Replay(Option<&'a str>),
    /// Export to a file.
    Export,
    /// Purge.
    Purge,
}

impl Verb<'_> {
    fn word(&self) -> &'static str {
        match self {
            Verb::Replay(_) => "replay",
            Verb::Export => "export",
            Verb::Purge => "purge",
        }
    }
}

/// Prints the plan.
///
/// # Errors
/// As for any inspection.
pub async fn run(
    g: &Global,
    url: &AmqpUrl,
    queue: &str,
    filter: &Filter,
    limit: Option<u64>,
    verb: Verb<'_>,
) -> anyhow::Result<ExitCode> {
    warn_if_quorum(g, queue);
    crate::inspect::warn_dry_run_limit(limit);
    let broker = connect(url, &format!("{} --dry-run", verb.word()), queue).await?;
    let now = now_millis();
    let limit = limit.unwrap_or(u64::MAX);
    let mut plan = Plan::default();
    let mut by_reason = Groups::default();
    // Messages per destination exchange, to check afterwards that each exchange exists.
    let mut exchanges: BTreeMap<String, u64> = BTreeMap::new();
    let sample = inspect(&broker, queue, MAX_INSPECT, |d| {
        let dl = DeadLetter::read(&d.properties, d.data.len());
        let selected = plan.moving + plan.no_origin < limit
            && filter.matches(&dl, d.properties.headers().as_ref(), now);
        if !selected {
            plan.add_staying();
            return Ok(ControlFlow::Continue(()));
        }
        let dest = match &verb {
            Verb::Replay(to) => replay_destination(&dl, *to),
            Verb::Export | Verb::Purge => Some(courier::deadletter::Destination::queue(queue)),
        };
        if let Some(d) = &dest {
            *exchanges.entry(d.exchange.clone()).or_insert(0) += 1;
            by_reason.add(dl.reason.as_deref().unwrap_or("(unknown)"));
        }
        plan.add_moving(&dl, dest.as_ref());
        if plan.moving + plan.no_origin >= limit {
            return Ok(ControlFlow::Break(()));
        }
        Ok(ControlFlow::Continue(()))
    })
    .await;
    let mut missing = Vec::new();
    if sample.is_ok() {
        for (ex, n) in &exchanges {
            if !broker.exchange_exists(ex).await? {
                missing.push((ex.clone(), *n));
            }
        }
    }
    broker.close().await;
    let sample = sample?;
    let reached_limit = plan.moving + plan.no_origin >= limit;
    let unexamined = sample.total.saturating_sub(sample.examined);

    let mut out = BufWriter::new(std::io::stdout().lock());
    writeln!(out, "dry run: nothing was changed")?;
    writeln!(out, "{queue}: {} messages", thousands(sample.total))?;
    let note = crate::inspect::note(&sample, reached_limit);
    if !note.is_empty() {
        writeln!(out, "{note}; the counts below cover the examined ones")?;
    }
    let word = verb.word();
    writeln!(
        out,
        "would {word}: {}{}",
        thousands(plan.moving),
        if reached_limit {
            " (--limit reached)"
        } else {
            ""
        }
    )?;
    let stay = plan.staying + unexamined;
    writeln!(out, "would stay: {}", thousands(stay))?;
    if plan.no_origin > 0 {
        writeln!(
            out,
            "  of which {} selected but with no recorded origin (replay them with --to-queue)",
            thousands(plan.no_origin)
        )?;
    }
    for (ex, n) in &missing {
        writeln!(
            out,
            "warning: exchange '{ex}' does not exist: {} message(s) for it would stay in the queue",
            thousands(*n)
        )?;
    }
    if plan.moving > 0 {
        if let Verb::Replay(_) = verb {
            groups(&mut out, "DESTINATION", &plan.by_destination)?;
        }
        groups(&mut out, "REASON", &by_reason)?;
        groups(&mut out, "ERROR", &plan.by_error)?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
