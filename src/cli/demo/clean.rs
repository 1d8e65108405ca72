//! Keeping the demo's hands off other people's queues, and removing its own afterwards: the
//! pre-check that refuses a prefix in use, `courier demo --clean`, and the clean-up report.
//!
//! The broker calls themselves are in [`super::broker`]; this file decides and explains.

use super::broker::{self, Cleaned};
use super::Demo;
use crate::cli::out::{self, outln};
use anyhow::bail;
use courier::amqp::AmqpUrl;
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

/// `courier demo --clean`: delete what a kept (or interrupted) demo left.
pub(super) async fn clean(
    url: &AmqpUrl,
    topology: &Topology,
    prefix: &str,
) -> anyhow::Result<ExitCode> {
    // Count first, so the user learns what went (queue.delete of a missing queue also succeeds).
    let existing = broker::existing_queues(url, topology, "courier demo (clean-up check)")
        .await?
        .len();
    if existing == 0 {
        outln!("nothing to clean: no demo queue exists under prefix {prefix:?}")?;
        return Ok(ExitCode::SUCCESS);
    }
    let c = broker::delete_topology(url, topology).await;
    let printed = outln!(
        "deleted {existing} queues ({} messages) and the exchanges of {} under prefix {prefix:?}",
        c.messages,
        topology.source
    );
    for f in &c.failed {
        eprintln!("could not delete {f}");
    }
    let code = if c.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    };
    out::verdict(printed, code)
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
