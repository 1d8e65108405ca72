//! `courier-dlq export`: write dead letters to a JSONL file, exactly; `--remove` acks each only
//! once its line is on disk.

use super::dry_run::{self, Verb};
use super::{close_publisher, connect, pass_outcome, print_report, publisher};
use crate::cli::{ExportArgs, Global};
use crate::export_file::ExportFile;
use crate::output::thousands;
use crate::pass::{self, Action, PassConfig};
use anyhow::Context;
use std::process::ExitCode;

pub async fn run(g: &Global, a: ExportArgs) -> anyhow::Result<ExitCode> {
    run_with(g, a, None).await
}

/// [`run`], reporting the pass's progress to `counters` instead of a terminal bar when given
/// (the console's progress view).
pub async fn run_with(
    g: &Global,
    a: ExportArgs,
    counters: Option<std::sync::Arc<crate::progress::Counters>>,
) -> anyhow::Result<ExitCode> {
    let filter = a.filters.build(&g.prefix)?;
    let queue = g.dlq()?;
    let url = g.url()?;
    if a.pass.dry_run {
        return dry_run::run(g, &url, &queue, &filter, a.pass.limit, Verb::Export).await;
    }
    let broker = connect(&url, "export", &queue).await?;
    // Check the queue before creating the file, so a typo or a busy queue does not leave an
    // empty file behind.
    broker
        .unused_queue(&queue, courier::broker::APPLY_HINT)
        .await?;
    // Creating the file syncs it and its directory: off the runtime threads, like every sync.
    let (out, append) = (a.out.clone(), a.append);
    let file = tokio::task::spawn_blocking(move || ExportFile::open(&out, append))
        .await
        .context("opening the export file")??;
    let publisher = publisher(&url, "export", &queue, a.pass.window);
    let config = PassConfig {
        queue: queue.clone(),
        filter,
        limit: a.pass.limit,
        rate: a.pass.rate,
        ramp: None,
        halt: None,
        window: usize::from(a.pass.window),
        progress: counters.is_none(),
        counters,
    };
    let action = Action::Export {
        file,
        remove: a.remove,
    };
    let (report, failure) = pass::run(&broker, &publisher, &config, action).await;
    close_publisher(&publisher).await;
    broker.close().await;
    if report.started {
        print_report(
            if a.remove {
                "exported and removed"
            } else {
                "exported"
            },
            &queue,
            &report,
        );
    }
    println!(
        "{} line(s) written to {} (fsynced){}",
        thousands(report.lines),
        a.out.display(),
        if a.remove {
            ""
        } else {
            "; every message is still in the queue"
        }
    );
    pass_outcome(&report, failure, &queue)
}
