//! `courier demo`: the first thing a new user runs.

use super::GlobalArgs;
use clap::Args;
use std::process::ExitCode;

/// Run a self-contained demo: topology, workers, a flaky HTTP sink, a mixed batch, a summary.
#[derive(Debug, Args)]
pub struct DemoArgs {}

pub async fn run(_global: &GlobalArgs, _args: DemoArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("courier demo is not built yet")
}
