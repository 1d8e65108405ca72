//! Keeping the demo's hands off other people's queues, and removing its own afterwards: the
//! pre-check that refuses a prefix in use, `courier demo --clean` (everything under the prefix,
//! whatever topology put it there), and the clean-up report.
//!
//! The broker calls themselves are in [`super::broker`]; this file decides and explains.

use super::broker::{self, Cleaned, UnderPrefix};
use super::Demo;
use crate::cli::out::{self, outln};
use anyhow::bail;
use courier::amqp::AmqpUrl;
use courier::management::Management;
use courier::topology::Topology;
use std::io;
use std::process::ExitCode;

/// Refuses a prefix whose queues hold messages or have consumers: the demo would mix its batch
/// with them and its clean-up would delete them.
pub(super) async fn precheck(
    url: &AmqpUrl,
    topology: &Topology,
    prefix: &str,
) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    for q in broker::existing_queues(url, topology, "courier demo (check)").await? {
        if q.consumers > 0 {
            problems.push(format!(
                "queue '{}' has {} consumer(s): something else uses this prefix",
                q.name, q.consumers
            ));
        } else if q.messages > 0 {
            problems.push(format!(
                "queue '{}' holds {} message(s), maybe from an earlier `courier demo --keep`",
                q.name, q.messages
            ));
        }
    }
    if !problems.is_empty() {
        bail!(
            "the demo will not run under prefix {prefix:?}, whose queues are in use:\n  {}\n  \
             explore leftover dead letters with `courier-dlq stats --prefix {prefix}`, then delete \
             them with `courier demo --prefix {prefix} --clean`; or choose another --prefix",
            problems.join("\n  ")
        );
    }
    Ok(())
}

/// `courier demo --clean`: delete what a kept (or interrupted) demo left under the prefix, or
/// what `courier topology apply --prefix` put there with another topology.
///
/// It deletes what exists rather than what one topology declares: the management API lists
/// everything under the prefix; without it, the objects of every topology the prefix could have
/// been applied with (`known`) are looked for. It ends by saying what remains, if anything.
pub(super) async fn clean(
    url: &AmqpUrl,
    management: &Management,
    prefix: &str,
    known: &[Topology],
) -> anyhow::Result<ExitCode> {
    let found = broker::under_prefix(url, management, prefix, known).await?;
    if let Some(why) = &found.not_listed {
        let sources: Vec<&str> = known.iter().map(|t| t.source.as_str()).collect();
        eprintln!(
            "note: cannot list the objects under prefix {prefix:?} ({why}); looking only for those \
             of {}. Objects of any other topology under this prefix are not seen: pass \
             --management-url to find them.",
            sources.join(", ")
        );
    }
    if found.is_empty() {
        outln!("nothing to clean: no queue or exchange exists under prefix {prefix:?}")?;
        return Ok(ExitCode::SUCCESS);
    }
    let queues: Vec<&str> = found.queues.iter().map(|(q, _)| q.as_str()).collect();
    let exchanges: Vec<&str> = found.exchanges.iter().map(String::as_str).collect();
    let c = broker::delete_objects(url, &queues, &exchanges).await;
    outln!(
        "deleted {} queues ({} messages) and {} exchanges under prefix {prefix:?}",
        c.queues,
        c.messages,
        c.exchanges
    )?;
    for f in &c.failed {
        eprintln!("could not delete {f}");
    }

    // Look again: the report above counts deletes the broker accepted, this says what is left.
    let left = broker::under_prefix(url, management, prefix, known).await?;
    if left.is_empty() {
        if left.not_listed.is_some() {
            outln!("none of their objects remains under prefix {prefix:?}")?;
        } else {
            outln!("nothing remains under prefix {prefix:?}")?;
        }
        return Ok(if c.failed.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    let printed = print_remains(&left, prefix);
    out::verdict(printed, ExitCode::FAILURE)
}

/// What `--clean` could not delete, and why as far as it is known.
fn print_remains(left: &UnderPrefix, prefix: &str) -> io::Result<()> {
    outln!("still under prefix {prefix:?}:")?;
    for (q, consumers) in &left.queues {
        if *consumers > 0 {
            outln!("  queue '{q}': {consumers} consumer(s) use it, so it was left alone; stop them and run --clean again")?;
        } else {
            outln!("  queue '{q}'")?;
        }
    }
    for e in &left.exchanges {
        outln!("  exchange '{e}'")?;
    }
    Ok(())
}

/// What the clean-up removed, or what it could not, with the command that retries it.
pub(super) fn print_cleanup(demo: &Demo<'_>, cleaned: Option<&Cleaned>) -> io::Result<()> {
    match cleaned {
        None => Ok(()),
        Some(c) if c.failed.is_empty() => outln!(
            "Cleaned up: deleted {} queues and {} exchanges with prefix {:?}.",
            c.queues,
            c.exchanges,
            demo.prefix
        ),
        Some(c) => {
            outln!(
                "Clean-up incomplete: deleted {} queues and {} exchanges; could not delete:",
                c.queues,
                c.exchanges
            )?;
            for f in &c.failed {
                outln!("  {f}")?;
            }
            outln!(
                "  retry with `courier demo --prefix {} --clean`",
                demo.prefix
            )
        }
    }
}
