//! `courier demo`: the first thing a new user runs.
//!
//! One process shows the whole fleet at work against the real broker:
//! 1. applies the demo topology (`topology/demo.toml`: the default shape with short retry tiers)
//!    under a prefix (`demo.` by default), after checking that nobody else uses those queues;
//! 2. starts a local HTTP sink that fails a share of deliveries on purpose, deciding per
//!    `message_id` (a hash), so the outcome of every message is known in advance;
//! 3. runs real [`Worker`](courier::worker::Worker)s with the real
//!    [`HttpHandler`](courier::handler::http::HttpHandler), several per channel, in-process;
//! 4. publishes a mixed batch (channels, priorities, a few non-JSON bodies) with confirms;
//! 5. shows progress until every message is delivered or dead-lettered, then a summary checked
//!    against the expectation: delivered, retried by tier, dead-lettered by reason, duplicates,
//!    lost (read back from the dead-letter queue itself), throughput;
//! 6. deletes every queue and exchange of the demo, unless `--keep`.
//!
//! The expected outcomes are not hard-coded: each sink rule is run through the worker's own
//! [`decide`](courier::outcome::decide) with the topology's retry policy, so the summary stays
//! right if the tiers change.
//!
//! Files, by concern: [`plan`] what is published and what each message should become; [`fleet`]
//! the in-process workers and their counters; [`progress`] publishing while watching the outcomes; [`summary`] the report;
//! [`clean`] the pre-check and the clean-up; [`broker`] the demo's own broker calls (inspecting
//! and deleting its queues, reading the DLQ back), in one place.

mod broker;
mod clean;
mod fleet;
mod plan;
mod progress;
mod summary;

use super::out::{self, outln};
use super::sink::{parse_percent, Fate as SinkFate, Rules, Sink};
use super::GlobalArgs;
use anyhow::{bail, Context};
use clap::Args;
use courier::amqp::AmqpUrl;
use courier::management::Management;
use courier::metrics::Metrics;
use courier::topology::{tier_label, Topology, TopologySource};
use fleet::{Counts, Fleet};
use plan::{plan, Batch, Expected, Fate};
use std::collections::HashSet;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;
use summary::Summary;
use tokio_util::sync::CancellationToken;

/// Where the demo topology lives in a checkout; read from disk when present so it can be edited.
const DEMO_TOPOLOGY_PATH: &str = "topology/demo.toml";
/// The same file, built in, so `courier demo` works from any directory.
const DEMO_TOPOLOGY: &str = include_str!("../../../topology/demo.toml");
/// Prefix used unless `--prefix` is given: the demo never touches unprefixed (real) queues.
const DEFAULT_PREFIX: &str = "demo.";
/// Exit code after Ctrl-C, as a shell reports a SIGINT death.
const EXIT_INTERRUPTED: u8 = 130;

/// Run a self-contained demo: topology, workers, a flaky HTTP sink, a mixed batch, a summary.
///
/// Applies topology/demo.toml (the default shape with retry tiers of 500ms, 2s, 5s and 4
/// attempts; built in when the file is not there), or the file given with --topology, under the
/// prefix `demo.` (or a non-empty --prefix), so real queues are never touched. It refuses a
/// prefix whose queues hold messages or have consumers. A local
/// HTTP sink answers each message by a rule picked from its message_id:
///   --fail-transient %   first attempt 503, then 200      → delivered after a retry
///   1 %                  first attempt 429 Retry-After: 1 → retried in a tier ≥ 1s, delivered
///   --fail-permanent %   always 400                       → dead-lettered `permanent`
///   --fail-always %      always 503                       → dead-lettered `max-attempts`
///   0.5 % (at least 1)   body is not JSON                 → dead-lettered `malformed`
///   the rest             200                              → delivered at once
/// Workers run in this process with the real HTTP handler; the summary compares what happened
/// with what the rules predict and checks that no message was lost. Everything is deleted at the
/// end unless --keep, which leaves the dead letters for `courier-dlq`.
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct DemoArgs {
    /// Messages to publish.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    messages: u64,
    /// Workers per channel; they compete for the channel's queue, each on its own connection.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    workers: u16,
    /// Percent of messages whose first attempt gets 503 (delivered on the retry).
    #[arg(long, value_name = "PCT", default_value_t = 15.0, value_parser = parse_percent)]
    fail_transient: f64,
    /// Percent of messages always answered 400 (dead-lettered as `permanent`).
    #[arg(long, value_name = "PCT", default_value_t = 3.0, value_parser = parse_percent)]
    fail_permanent: f64,
    /// Percent of messages always answered 503 (retried until `max-attempts`).
    #[arg(long, value_name = "PCT", default_value_t = 2.0, value_parser = parse_percent)]
    fail_always: f64,
    /// Leave the queues and the dead letters in place, to explore them with courier-dlq.
    #[arg(long)]
    keep: bool,
    /// Keep the dead letters (as --keep) and end by printing how to open them in the web
    /// console: the `courier-dlq console` command for this demo's queues and its URL (the
    /// console prints the URL with its token when it starts).
    #[arg(long, conflicts_with = "clean")]
    console: bool,
    /// Only delete the queues and exchanges under the prefix (after --keep, an interrupted run,
    /// or `courier topology apply --prefix` with any topology), messages included, say what
    /// remains, then exit. Queues with consumers are left alone.
    #[arg(long, conflicts_with = "keep")]
    clean: bool,
    /// Management API base URL: --clean lists what exists under the prefix there (without it,
    /// only the objects of topology/demo.toml, the default topology and --topology are found),
    /// and a conflicting object's arguments are read from it. Uses the AMQP credentials.
    /// Default: the AMQP host, port 15672.
    #[arg(long, env = "COURIER_MANAGEMENT_URL", value_name = "URL")]
    management_url: Option<String>,
    /// Give up if some message has neither been delivered nor dead-lettered by then (default:
    /// 90s, longer if the topology's retry tiers need it).
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
}

pub async fn run(global: &GlobalArgs, args: DemoArgs) -> anyhow::Result<ExitCode> {
    let url = global.amqp_url()?;
    // An empty prefix is never used: the demo must not mix with the real, unprefixed fleet.
    let prefix = if global.prefix.is_empty() {
        DEFAULT_PREFIX
    } else {
        global.prefix.as_str()
    };
    let management = Management::locate(args.management_url.as_deref(), &url).await;
    if args.clean {
        return clean::clean(
            &url,
            &management,
            prefix,
            &clean_topologies(global, prefix)?,
        )
        .await;
    }
    let (topology, custom_topology) = load_topology(global, prefix)?;
    let rules = plan::rules(&args)?;
    let routes = routes(&topology);
    if routes.is_empty() {
        bail!(
            "{}: no work queue is bound to an exchange, so there is nothing to publish to",
            topology.source
        );
    }

    // Refuse before declaring anything if the prefix is in use: the clean-up deletes every
    // queue of the topology, and queues with consumers or messages are someone's data.
    clean::precheck(&url, &topology, prefix).await?;
    let report = courier::broker::apply_with(&url, &topology, Some(&management))
        .await
        .with_context(|| format!("cannot apply {} with prefix {prefix:?}", topology.source))?;
    let broker = report
        .broker_version
        .map_or_else(|| "RabbitMQ".to_owned(), |v| format!("RabbitMQ {v}"));
    // Printing can fail (stdout closed); the topology is applied by now, so it is cleaned up below.
    let greeted = outln!("courier demo: {broker} at {url}, prefix {prefix:?}");

    let interrupted = CancellationToken::new();
    courier::shutdown::cancel_on_signal(interrupted.clone());
    let ctx = Demo {
        url: url.clone(),
        topology: &topology,
        rules,
        routes,
        args: &args,
        prefix,
        interrupted: interrupted.clone(),
    };
    let outcome = match greeted {
        Ok(()) => ctx.run().await,
        Err(e) => Err(e.into()),
    };

    // Clean up whatever happened above (error, timeout, Ctrl-C), unless asked to keep.
    let cleaned = if args.keep || args.console {
        None
    } else {
        Some(broker::delete_topology(&url, &topology).await)
    };
    match outcome {
        Ok(RunEnd::Finished(summary)) => {
            let printed = summary.print(&ctx).and_then(|()| {
                summary::print_next(&ctx, &summary, cleaned.as_ref(), custom_topology)
            });
            out::verdict(printed, summary.exit_code())
        }
        Ok(RunEnd::Interrupted) => {
            let printed = outln!("interrupted: workers stopped")
                .and_then(|()| clean::print_cleanup(&ctx, cleaned.as_ref()));
            out::verdict(printed, ExitCode::from(EXIT_INTERRUPTED))
        }
        Err(e) => {
            // The run's own error is the one to report, even if stdout is gone too.
            let _ = clean::print_cleanup(&ctx, cleaned.as_ref());
            Err(e)
        }
    }
}

/// The demo topology unless `--topology` (or `COURIER_TOPOLOGY`) names another file; the bool
/// says whether the user's own file is used (then the printed commands must name it).
fn load_topology(global: &GlobalArgs, prefix: &str) -> anyhow::Result<(Topology, bool)> {
    if let Some(file) = &global.topology {
        return Ok((Topology::load(file, prefix)?, true));
    }
    Ok((demo_topology(prefix)?, false))
}

/// Every topology the prefix may have been applied with, for `--clean` when the management
/// API cannot list what is there: the demo's, the default (`courier topology apply` without
/// --topology), and the file given.
fn clean_topologies(global: &GlobalArgs, prefix: &str) -> anyhow::Result<Vec<Topology>> {
    let mut known = vec![
        demo_topology(prefix)?,
        TopologySource::resolve(None).load(prefix)?,
    ];
    if let Some(file) = &global.topology {
        known.push(Topology::load(file, prefix)?);
    }
    Ok(known)
}

/// topology/demo.toml from the working directory when it is there (so it can be edited), else
/// the built-in copy.
fn demo_topology(prefix: &str) -> anyhow::Result<Topology> {
    let on_disk = Path::new(DEMO_TOPOLOGY_PATH);
    Ok(if on_disk.is_file() {
        Topology::load(on_disk, prefix)?
    } else {
        Topology::parse(DEMO_TOPOLOGY, "topology/demo.toml (built in)", prefix)?
    })
}

/// Every (exchange, routing key) that reaches a work queue: the "channels" a batch is spread over.
fn routes(topology: &Topology) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = topology
        .bindings
        .iter()
        .filter(|b| {
            b.exchange != topology.dead_letter_exchange && topology.work_queue(&b.queue).is_some()
        })
        .map(|b| (b.exchange.clone(), b.routing_key.clone()))
        .collect();
    out.dedup();
    out
}

// ---------------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------------

/// One run's settings, shared by the files of the demo.
struct Demo<'a> {
    /// The broker.
    url: AmqpUrl,
    /// The demo topology, prefixed and applied.
    topology: &'a Topology,
    /// The sink's failure shares.
    rules: Rules,
    /// (exchange, routing key) of every channel the batch is spread over.
    routes: Vec<(String, String)>,
    /// The command line.
    args: &'a DemoArgs,
    /// The prefix of every queue and exchange of the demo.
    prefix: &'a str,
    /// Cancelled by Ctrl-C or SIGTERM.
    interrupted: CancellationToken,
}

/// How a run ended, when it did not fail.
enum RunEnd {
    /// Every message settled, or the timeout passed: the summary says which.
    Finished(Box<Summary>),
    /// Ctrl-C or SIGTERM.
    Interrupted,
}

impl Demo<'_> {
    fn tier_labels(&self) -> Vec<String> {
        self.topology
            .retry
            .tiers
            .iter()
            .map(|d| tier_label(*d))
            .collect()
    }

    fn channels(&self) -> Vec<&str> {
        self.routes.iter().map(|(_, k)| k.as_str()).collect()
    }

    async fn run(&self) -> anyhow::Result<RunEnd> {
        let policy = &self.topology.retry;
        let batch = plan(self.args.messages, &self.rules, &self.routes);
        let expected = Expected::of(&batch.fates, policy);
        let timeout = self.args.timeout.unwrap_or_else(|| {
            // A message that fails every attempt waits in each tier; leave room for that twice
            // over plus delivery time, and never less than 90s.
            Duration::from_secs(90).max(expected.longest_wait * 2 + Duration::from_secs(30))
        });

        // The sink on its own token: Ctrl-C stops the workers first, then the sink.
        let sink = Sink::builder()
            .rules(self.rules)
            .counting(true)
            .start(CancellationToken::new())
            .await
            .context("cannot start the demo HTTP sink on 127.0.0.1")?;
        let endpoint = sink.deliver_url();
        let metrics = Metrics::new();
        let fleet = Fleet::start(
            &self.url,
            self.topology,
            &endpoint,
            &metrics,
            self.args.workers,
        )?;
        // A failed print (stdout closed) must still stop the workers and the sink below.
        let result = match self.print_intro(&batch, &endpoint, fleet.handles.len()) {
            Ok(()) => self.drive(&batch, &sink, &fleet, &metrics, timeout).await,
            Err(e) => Err(e.into()),
        };
        // Stop in order: workers first (they finish in-flight deliveries against the sink).
        fleet.stop().await;
        let sink_counts = sink.counts();
        let delivered_ids = sink.delivered_ids();
        sink.stop().await;
        let Some(timing) = result? else {
            return Ok(RunEnd::Interrupted);
        };

        let counts = Counts::read(&metrics, self.topology, &self.tier_labels());
        let dlq = broker::read_dlq(&self.url, &self.topology.dead_letter_queue).await?;
        let dlq_ids: HashSet<&str> = dlq.iter().map(|(id, _)| id.as_str()).collect();
        let missing: Vec<String> = batch
            .ids
            .iter()
            .filter(|id| !delivered_ids.contains(*id) && !dlq_ids.contains(id.as_str()))
            .cloned()
            .collect();
        Ok(RunEnd::Finished(Box::new(Summary {
            timing,
            published: self.args.messages,
            urgent: batch.urgent,
            malformed: batch.fates.get(&Fate::Malformed).copied().unwrap_or(0),
            expected,
            counts,
            sink: sink_counts,
            in_dlq: dlq.len() as u64,
            sample_dead: dlq.first().map(|(id, _)| id.clone()),
            missing,
            timeout,
            tier_labels: self.tier_labels(),
        })))
    }

    fn print_intro(&self, batch: &Batch, sink_url: &str, workers: usize) -> std::io::Result<()> {
        let t = self.topology;
        let tiers = self.tier_labels().join(", ");
        outln!(
            "  topology  {}: channels {}, retry tiers {tiers}, {} attempts, DLQ {}",
            t.source,
            self.channels().join(", "),
            t.retry.max_attempts,
            t.dead_letter_queue
        )?;
        let pct = |fate: SinkFate| format!("{}%", f64::from(self.rules.basis_points(fate)) / 100.0);
        outln!(
            "  sink      {sink_url} fails on purpose: {} first try 503, {} first try 429 Retry-After: 1, {} always 400, {} always 503",
            pct(SinkFate::Transient),
            pct(SinkFate::RateLimited),
            pct(SinkFate::Permanent),
            pct(SinkFate::AlwaysFails),
        )?;
        outln!(
            "  workers   {workers} ({} per channel, real HTTP handler, each on its own connection)",
            self.args.workers
        )?;
        let spread: Vec<String> = batch
            .by_route
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        outln!(
            "  batch     {} messages ({}), {} at priority 9, {} not JSON on purpose",
            self.args.messages,
            spread.join(", "),
            batch.urgent,
            batch.fates.get(&Fate::Malformed).copied().unwrap_or(0)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn demo_topology() -> Topology {
        Topology::parse(DEMO_TOPOLOGY, "demo.toml", "demo.").expect("demo topology is valid")
    }

    #[test]
    fn built_in_topology_has_the_default_shape_with_short_tiers() {
        let t = demo_topology();
        assert_eq!(t.work_queues.len(), 4);
        assert_eq!(t.dead_letter_queue, "demo.notifications.dlq");
        assert!(t.work_queues.iter().all(|q| q.max_priority == Some(9)));
        let total: Duration = t.retry.tiers.iter().sum();
        assert!(total < Duration::from_secs(20), "{total:?}");
        let channels: Vec<String> = routes(&t).into_iter().map(|(_, k)| k).collect();
        assert_eq!(channels, ["email", "sms", "push", "webhook"]);
    }
}
