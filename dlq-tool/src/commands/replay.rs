//! `courier-dlq replay`: send dead letters back, confirmed, with attempts reset.

use super::dry_run::{self, Verb};
use super::{connect, resuming};
use crate::cli::{Global, ReplayArgs};
use crate::pass::{Action, PassConfig};
use std::process::ExitCode;

pub async fn run(g: &Global, a: ReplayArgs) -> anyhow::Result<ExitCode> {
    let filter = a.filters.build(&g.prefix)?;
    // Checked (the program compiled) before anything touches the broker: a usage error.
    let fixes = std::sync::Arc::new(a.fixes.build()?);
    let queue = g.dlq()?;
    let url = g.url()?;
    let to_queue = a.to_queue.as_deref().map(|q| g.queue_name(q));
    if a.pass.dry_run {
        let verb = Verb::Replay(to_queue.as_deref(), &fixes);
        return dry_run::run(g, &url, &queue, &filter, a.pass.limit, verb).await;
    }
    let broker = connect(&url, "replay", &queue).await?;
    if let Some(q) = &to_queue {
        broker
            .existing_queue(
                q,
                "it is the --to-queue; declare it first (or run `courier topology apply`)",
            )
            .await?;
    }
    let config = PassConfig {
        queue,
        filter,
        limit: a.pass.limit,
        rate: a.pass.rate,
        window: usize::from(a.pass.window),
        progress: true,
    };
    resuming(&url, broker, "replay", "replayed", config, || {
        Action::Replay {
            to_queue: to_queue.clone(),
            fixes: std::sync::Arc::clone(&fixes),
        }
    })
    .await
}
