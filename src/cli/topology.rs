//! `courier topology apply | check | export`.

use super::out::{self, out, outln};
use super::{GlobalArgs, EXIT_DRIFT};
use clap::{Subcommand, ValueEnum};
use courier::broker::CheckReport;
use courier::management::Management;
use courier::topology;
use courier::topology::Topology;
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum TopologyCommand {
    /// Declare every exchange, queue and binding of the topology file. Idempotent: a second
    /// run changes nothing and says so. Stops at the first object whose existing arguments
    /// differ (PRECONDITION_FAILED), naming it, its declared and existing arguments, and what
    /// was already declared.
    Apply {
        /// Management API base URL, asked only when an object conflicts, for its existing
        /// arguments (AMQP cannot read them). Uses the AMQP credentials. Default: the AMQP host,
        /// port 15672.
        #[arg(long, env = "COURIER_MANAGEMENT_URL", value_name = "URL")]
        management_url: Option<String>,
    },
    /// Compare the broker with the topology file without changing anything. Exit code 0 when
    /// they match, 3 when something is missing or different, 1 when the check could not run.
    Check {
        /// Management API base URL, to verify bindings (AMQP cannot list them). Uses the AMQP
        /// credentials. Without it, bindings are reported as not verified.
        #[arg(long, env = "COURIER_MANAGEMENT_URL")]
        management_url: Option<String>,
    },
    /// Print the topology as RabbitMQ definitions.json or as a Mermaid diagram. Needs no broker.
    Export {
        /// Output format.
        #[arg(long, value_enum, default_value_t = ExportFormat::Definitions)]
        format: ExportFormat,
        /// vhost written into definitions.json.
        #[arg(long, default_value = "/")]
        vhost: String,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ExportFormat {
    /// definitions.json for the management plugin (`rabbitmqadmin import`, `load_definitions`).
    Definitions,
    /// A Mermaid flowchart of exchanges, queues, bindings, retry and dead-letter paths.
    Mermaid,
}

pub async fn run(global: &GlobalArgs, cmd: TopologyCommand) -> anyhow::Result<ExitCode> {
    let topo = global.load_topology()?;
    match cmd {
        TopologyCommand::Apply { management_url } => {
            let url = global.amqp_url()?;
            let mgmt = Management::locate(management_url.as_deref(), &url).await;
            let report = courier::broker::apply_with(&url, &topo, Some(&mgmt)).await?;
            let version = report
                .broker_version
                .map_or_else(|| "unknown version".to_owned(), |v| format!("RabbitMQ {v}"));
            if report.nothing_changed() {
                outln!(
                    "nothing to change: all {} exchanges and queues already in place, {} bindings ensured ({version} at {url})",
                    report.unchanged.len(),
                    report.bindings
                )?;
            } else {
                for object in &report.created {
                    outln!("created   {object}")?;
                }
                outln!(
                    "applied {}: {} created, {} already in place, {} bindings ensured ({version} at {url})",
                    topo.source,
                    report.created.len(),
                    report.unchanged.len(),
                    report.bindings
                )?;
            }
            Ok(ExitCode::SUCCESS)
        }
        TopologyCommand::Check { management_url } => {
            let url = global.amqp_url()?;
            let mgmt = management_url.map(|m| Management::new(&m, &url));
            let report = courier::broker::check(&url, &topo, mgmt.as_ref()).await?;
            let code = if report.drift.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_DRIFT)
            };
            out::verdict(print_check(&report, &topo), code)
        }
        TopologyCommand::Export { format, vhost } => {
            match format {
                ExportFormat::Definitions => {
                    let json = topology::definitions_json(&topo, &vhost);
                    outln!("{}", serde_json::to_string_pretty(&json)?)?;
                }
                ExportFormat::Mermaid => out!("{}", topology::mermaid(&topo))?,
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `topology check`'s report: every drift, the notes, and the verdict in words.
fn print_check(report: &CheckReport, topo: &Topology) -> std::io::Result<()> {
    for d in &report.drift {
        outln!("{d}")?;
    }
    for n in &report.notes {
        outln!("note: {n}")?;
    }
    if report.drift.is_empty() {
        outln!("in sync: {} objects match {}", report.checked, topo.source)
    } else {
        outln!(
            "drift: {} of {} objects differ from {}; run `courier topology apply` for missing objects",
            report.drift.len(),
            report.checked,
            topo.source
        )
    }
}
