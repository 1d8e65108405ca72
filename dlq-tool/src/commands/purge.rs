//! `courier-dlq purge`: delete selected dead letters for good; refuses without `--yes`.

use super::dry_run::{self, Verb};
use super::{close_publisher, connect, pass_outcome, print_report, publisher};
use crate::cli::{Global, PurgeArgs};
use crate::error::UsageError;
use crate::pass::{self, Action, PassConfig};
use std::process::ExitCode;

pub async fn run(g: &Global, a: PurgeArgs) -> anyhow::Result<ExitCode> {
    let filter = a.filters.build(&g.prefix)?;
    let queue = g.dlq()?;
    let url = g.url()?;
    if a.pass.dry_run {
        return dry_run::run(g, &url, &queue, &filter, a.pass.limit, Verb::Purge).await;
    }
    if !a.yes {
        return Err(UsageError(format!(
            "purge deletes dead letters from {queue} for good and needs --yes; see first what it would delete with `courier-dlq purge --dry-run` (same filters), or keep a copy with `courier-dlq export --out FILE --remove`"
        ))
        .into());
    }
    let broker = connect(&url, "purge", &queue).await?;
    // Only unselected messages are published (put back in order), so connect on first use.
    let publisher = publisher(&url, "purge", &queue, a.pass.window);
    let config = PassConfig {
        queue: queue.clone(),
        filter,
        limit: a.pass.limit,
        rate: a.pass.rate,
        window: usize::from(a.pass.window),
        progress: true,
    };
    let (report, failure) = pass::run(&broker, &publisher, config, Action::Purge).await;
    close_publisher(&publisher).await;
    broker.close().await;
    if report.started {
        print_report("purged", &queue, &report);
    }
    pass_outcome(&report, failure, &queue)
}
