//! `courier-dlq purge`: delete selected dead letters for good; refuses without `--yes`.

use super::dry_run::{self, Verb};
use super::{connect, resuming};
use crate::cli::{Global, PurgeArgs};
use crate::error::UsageError;
use crate::pass::{Action, PassConfig};
use std::process::ExitCode;

pub async fn run(g: &Global, a: PurgeArgs) -> anyhow::Result<ExitCode> {
    run_with(g, a, None).await
}

/// [`run`], reporting the pass's progress to `counters` instead of a terminal bar when given
/// (the console's progress view).
pub async fn run_with(
    g: &Global,
    a: PurgeArgs,
    counters: Option<std::sync::Arc<crate::progress::Counters>>,
) -> anyhow::Result<ExitCode> {
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
    let config = PassConfig {
        queue,
        filter,
        limit: a.pass.limit,
        rate: a.pass.rate,
        ramp: None,
        halt: None,
        window: usize::from(a.pass.window),
        progress: counters.is_none(),
        counters,
    };
    resuming(&url, broker, "purge", "purged", config, || Action::Purge).await
}
