//! `courier-dlq purge`: delete selected dead letters for good; refuses without `--yes`.

use super::dry_run::{self, Verb};
use super::{connect, resuming};
use crate::cli::{Global, PurgeArgs};
use crate::error::UsageError;
use crate::pass::{Action, PassConfig};
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
    let config = PassConfig {
        queue,
        filter,
        limit: a.pass.limit,
        rate: a.pass.rate,
        ramp: None,
        halt: None,
        window: usize::from(a.pass.window),
        progress: true,
    };
    resuming(&url, broker, "purge", "purged", config, || Action::Purge).await
}
