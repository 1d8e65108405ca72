//! Command-line interface of `courier`. Each subcommand lives in its own file; this one holds
//! the global options, logging set-up and the mapping of outcomes to exit codes.

mod demo;
mod out;
mod publish;
mod relay;
mod shards;
mod sink;
mod topology;
mod work;

use clap::{Parser, Subcommand, ValueEnum};
use courier::amqp::{AmqpUrl, DEFAULT_AMQP_URL};
use courier::topology::{Topology, TopologySource, BUILT_IN_NOTICE};
use std::path::PathBuf;
use std::process::ExitCode;

/// Exit code when `topology check` finds drift (distinct from 1, "could not run").
pub const EXIT_DRIFT: u8 = 3;

/// Courier: deliver notification jobs from RabbitMQ with retries, priorities and a dead-letter queue.
///
/// Start with `courier demo`. Every option can also be set from the environment variable shown
/// in its help.
#[derive(Debug, Parser)]
#[command(name = "courier", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

/// Options every subcommand understands.
#[derive(Debug, clap::Args)]
pub struct GlobalArgs {
    /// Broker URL. The password is never printed: logs and errors show `user:***@host`.
    #[arg(long, env = "AMQP_URL", default_value = DEFAULT_AMQP_URL, global = true, hide_env_values = true, hide_default_value = true)]
    amqp_url: String,
    /// Topology file declaring exchanges, queues, retry tiers and the dead-letter queue.
    /// Default: topology/notifications.toml in the working directory if it is there, else the
    /// copy of it built into this binary (`courier demo` uses topology/demo.toml instead).
    // No clap default: "not given" must stay distinguishable from "given", so that a file the
    // user names is never replaced by the built-in copy.
    #[arg(long, env = "COURIER_TOPOLOGY", value_name = "FILE", global = true)]
    topology: Option<PathBuf>,
    /// Prefix for every exchange and queue name (e.g. `staging.`), so several copies of the
    /// topology can share one broker. Routing keys are not prefixed.
    #[arg(
        long,
        env = "COURIER_PREFIX",
        default_value = "",
        global = true,
        hide_default_value = true
    )]
    prefix: String,
    /// Log format on stderr, coloured only on a terminal (and never with NO_COLOR set). Filter
    /// with RUST_LOG (default `info`); lapin's own lines only when RUST_LOG names it, e.g.
    /// `info,lapin=debug`.
    #[arg(long, env = "COURIER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    /// Export trace spans over OTLP/HTTP to this collector, e.g. http://127.0.0.1:4318 (the
    /// /v1/traces path is added when the URL has none). Off by default; the standard
    /// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT / OTEL_EXPORTER_OTLP_ENDPOINT turn it on too, and
    /// OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG sample (e.g. parentbased_traceidratio and
    /// 0.1), OTEL_SERVICE_NAME names the service (default: courier). Messages carry their W3C
    /// trace context through every hop with or without it (docs/operations.md, "Traces").
    #[arg(long, value_name = "URL", global = true)]
    otlp_endpoint: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Declare, verify or export the broker topology (`courier topology --help`).
    #[command(subcommand)]
    Topology(topology::TopologyCommand),
    Demo(demo::DemoArgs),
    Work(work::WorkArgs),
    Publish(publish::PublishArgs),
    Sink(sink::SinkArgs),
    Shards(shards::ShardsArgs),
    Relay(relay::RelayArgs),
}

impl Command {
    /// Whether the command stops gracefully on SIGINT/SIGTERM (it cancels its own token through
    /// `courier::shutdown`). The others keep the default: a signal ends them at once.
    fn drains_on_signal(&self) -> bool {
        matches!(
            self,
            Self::Work(_) | Self::Sink(_) | Self::Demo(_) | Self::Relay(_)
        )
    }
}

/// A second signal is an operator who will not wait for the drain: exit at once, as an
/// interrupted process (130). Unacked messages return to the queue when the connection drops.
/// Here and not in the library, which never ends the process; the first signal reaches this
/// listener and the command's alike.
async fn exit_on_second_signal() {
    courier::shutdown::signal().await;
    tracing::info!("signal received: stopping (send it again to exit at once)");
    courier::shutdown::signal().await;
    tracing::warn!("second signal: exiting without waiting; unacked messages return to the queue");
    std::process::exit(130);
}

impl GlobalArgs {
    fn amqp_url(&self) -> anyhow::Result<AmqpUrl> {
        Ok(self.amqp_url.parse::<AmqpUrl>()?)
    }

    /// The topology named by `--topology`, else the default file, else the built-in default
    /// (said in the log, so nobody mistakes it for a file they edited).
    fn load_topology(&self) -> anyhow::Result<Topology> {
        let source = TopologySource::resolve(self.topology.as_deref());
        if source.is_built_in() {
            tracing::info!("{BUILT_IN_NOTICE}");
        }
        Ok(source.load(&self.prefix)?)
    }
}

fn init_logging(
    format: LogFormat,
    level: &str,
    otlp: Option<&str>,
) -> Result<Option<courier::telemetry::Exporting>, courier::telemetry::TelemetryError> {
    let format = match format {
        LogFormat::Text => courier::logging::Format::Text,
        LogFormat::Json => courier::logging::Format::Json,
    };
    // lapin's channel errors and returns are reported by our own code, with context; the
    // library keeps these under any RUST_LOG that does not name lapin.
    let service = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "courier".to_owned());
    courier::logging::init_with_traces(
        format,
        &format!("{level},lapin=error,lapin::channel=off,lapin::returned_messages=off"),
        &service,
        courier::telemetry::endpoint_from_env(otlp).as_deref(),
    )
}

/// Parses arguments, runs the command on a multi-threaded runtime, maps the outcome to an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo prints its own summary; its workers' per-message logs would bury it.
    let level = if matches!(cli.command, Command::Demo(_)) {
        "warn"
    } else {
        "info"
    };
    let exporting = match init_logging(
        cli.global.log_format,
        level,
        cli.global.otlp_endpoint.as_deref(),
    ) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match courier::runtime::multi_thread() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        if cli.command.drains_on_signal() {
            tokio::spawn(exit_on_second_signal());
        }
        match cli.command {
            Command::Topology(cmd) => topology::run(&cli.global, cmd).await,
            Command::Demo(args) => demo::run(&cli.global, args).await,
            Command::Work(args) => work::run(&cli.global, args).await,
            Command::Publish(args) => publish::run(&cli.global, args).await,
            Command::Sink(args) => sink::run(args).await,
            Command::Shards(args) => shards::run(&cli.global, args).await,
            Command::Relay(args) => relay::run(&cli.global, args).await,
        }
    });
    if let Some(e) = exporting {
        // Queued spans go out before the process does (bounded: a collector that is gone does
        // not hold the exit up for long).
        e.shutdown();
    }
    match result {
        Ok(code) => code,
        // The reader of stdout has all it wanted (`| head`): success, and nothing to say.
        Err(e) if out::is_stdout_closed(&e) => ExitCode::SUCCESS,
        Err(e) => {
            // Errors from the library are already redacted; redact again in case a URL slipped
            // into a context string.
            eprintln!("error: {}", courier::amqp::redact(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    /// `courier demo --help` once showed `--topology [default: topology/notifications.toml]`
    /// while the demo applies topology/demo.toml: the help must not promise one default for
    /// every command, and must say which file the demo uses.
    #[test]
    fn topology_help_is_true_for_the_demo_too() {
        let mut cli = Cli::command();
        cli.build();
        let demo = cli.find_subcommand_mut("demo").expect("demo subcommand");
        let help = demo.render_long_help().to_string();
        let topology = demo
            .get_arguments()
            .find(|a| a.get_id() == "topology")
            .expect("--topology reaches the demo");
        assert!(topology.get_default_values().is_empty(), "{help}");
        assert!(
            !help.contains("[default: topology/notifications.toml]"),
            "{help}"
        );
        assert!(help.contains("topology/demo.toml"), "{help}");
    }
}
