//! One file per command; this one dispatches and holds what they share.

// The console (crate::console) runs these same commands; pub(crate) for it.
pub(crate) mod audit;
pub(crate) mod dry_run;
mod edit;
pub(crate) mod export;
pub(crate) mod groups;
mod import;
mod list;
pub(crate) mod purge;
pub(crate) mod replay;
pub(crate) mod show;
mod stats;

use crate::cli::{Cli, Command, Global};
use crate::pass::{self, Action, PassConfig};
use courier::amqp::AmqpUrl;
use courier::broker::{Admin, BrokerError};
use courier::metrics::Metrics;
use courier::publisher::{Publisher, PublisherConfig};
use courier::retry::RetryPolicy;
use courier::topology::{ArgValue, QueueType, DEAD_LETTER_QUEUE_DELIVERY_LIMIT};
use std::process::ExitCode;
use std::time::Duration;

/// Runs the command.
///
/// # Errors
/// Whatever stopped it; [`crate::error::exit_code`] turns it into an exit code.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let g = &cli.global;
    let changing = audit::changing(&cli.command);
    let result = dispatch(g, cli.command).await;
    if let Some((name, filter)) = changing {
        audit::append(g, name, filter, &result).await;
    }
    result
}

async fn dispatch(g: &Global, command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Stats(a) => stats::run(g, a).await,
        Command::Groups(a) => groups::run(g, a).await,
        Command::List(a) => list::run(g, a).await,
        Command::Show(a) => show::run(g, a).await,
        Command::Edit(a) => edit::run(g, a).await,
        Command::Replay(a) => replay::run(g, *a).await,
        Command::Export(a) => export::run(g, a).await,
        Command::Import(a) => import::run(g, a).await,
        Command::Purge(a) => purge::run(g, a).await,
        Command::Audit(a) => audit::run(g, a).await,
        Command::Console(a) => crate::console::run(g, a).await,
    }
}

/// Connects for `what` (the connection is named after it in the management UI).
async fn connect(url: &AmqpUrl, what: &str, queue: &str) -> anyhow::Result<Admin> {
    Ok(Admin::connect(url, &format!("courier-dlq {what} {queue}")).await?)
}

/// The library's confirmed publisher, connecting on first use.
fn publisher(url: &AmqpUrl, what: &str, queue: &str, window: u16) -> Publisher {
    Publisher::lazy(
        url,
        PublisherConfig {
            name: format!("courier-dlq {what} {queue} (publisher)"),
            window: usize::from(window),
            confirm_timeout: Duration::from_secs(30),
        },
        Metrics::new(),
    )
}

/// Closes the publisher after its in-flight confirms, within a bound: the tool must exit even
/// if the broker stopped answering (unconfirmed messages were never acked, so they are safe).
async fn close_publisher(p: &Publisher) {
    let _ = tokio::time::timeout(Duration::from_secs(45), p.close()).await;
}

/// Inspection gives messages back with a requeue; on a quorum queue that counts as a delivery
/// attempt. Courier declares a quorum DLQ with an effectively unlimited `x-delivery-limit`, but a
/// topology whose DLQ says otherwise (or a broker default of 20 on 4.x for a DLQ declared some
/// other way) would eventually drop messages inspected many times.
fn warn_if_quorum(g: &Global, queue: &str) {
    let Ok(t) = g.topology() else { return };
    let Some(q) = t.queue(queue) else { return };
    if q.queue_type != QueueType::Quorum {
        return;
    }
    let limit = match q.arguments.get("x-delivery-limit") {
        Some(ArgValue::Int(n)) => Some(*n),
        _ => None,
    };
    if limit.is_none_or(|n| n < DEAD_LETTER_QUEUE_DELIVERY_LIMIT) {
        eprintln!(
            "warning: {queue} is a quorum queue with a delivery limit of {}: inspecting requeues the messages it looks at, and each look counts against it; leave the dead-letter queue's delivery limit to Courier (unlimited), or keep the queue classic",
            limit.map_or_else(|| "the broker's default".to_owned(), |n| n.to_string())
        );
    }
}

/// Prints what a pass did (to stdout; a closed stdout does not matter any more by then).
fn print_report(verb: &str, queue: &str, r: &crate::pass::Report) {
    use crate::output::thousands;
    crate::audit::add_pass(r);
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let secs = r.elapsed.as_secs_f64();
    let rate = if secs > 0.0 {
        r.acted as f64 / secs
    } else {
        0.0
    };
    let _ = writeln!(
        out,
        "{verb} {} of {} messages in {queue} ({:.1}s, {:.0}/s)",
        thousands(r.acted),
        thousands(r.total),
        secs,
        rate
    );
    for (dest, n) in r.by_destination.sorted() {
        let _ = writeln!(out, "  to {dest}: {}", thousands(n));
    }
    if r.already > 0 {
        let _ = writeln!(
            out,
            "already replayed by the interrupted run (its journal): {} originals acked now, not published again",
            thousands(r.already)
        );
    }
    if r.came_back > 0 {
        let _ = writeln!(
            out,
            "replayed by the interrupted run and back since (failed again): {} left in {queue}; a new replay (or --fresh) takes them",
            thousands(r.came_back)
        );
    }
    if r.left > 0 {
        let _ = writeln!(
            out,
            "left in place in {queue}: {} (not selected; given back where they were, nothing rewritten)",
            thousands(r.left)
        );
    }
    if r.kept > 0 {
        let _ = writeln!(
            out,
            "put back in {queue}, in order: {} (too many to hold for giving back in place: republished to the tail)",
            thousands(r.kept)
        );
    }
    if r.stopped_early && r.past_last {
        let _ = writeln!(
            out,
            "stopped after {} messages, at the last one selected; the rest was not touched",
            thousands(r.examined)
        );
    } else if r.stopped_early {
        let _ = writeln!(
            out,
            "stopped at --limit after {} messages; the rest was not touched",
            thousands(r.examined)
        );
    }
    if r.stayed > 0 {
        let _ = writeln!(
            out,
            "could not move, still in {queue}: {}",
            thousands(r.stayed)
        );
        for s in &r.stayed_list {
            let _ = writeln!(out, "  {}  → {}: {}", s.message_id, s.destination, s.why);
        }
        if r.stayed > r.stayed_list.len() as u64 {
            let _ = writeln!(
                out,
                "  ... and {} more",
                thousands(r.stayed - r.stayed_list.len() as u64)
            );
        }
    }
}

/// How long a replay or purge keeps resuming after it lost its connection: long enough for a
/// cluster to elect new queue leaders or a broker to restart, short enough that a broker gone
/// for good ends the command with its error.
const RESUME_FOR: Duration = Duration::from_secs(120);

/// Runs passes of `action` over `config.queue` on `broker` until one ends for any reason but a
/// lost connection. After a loss, every unacknowledged message is back in the queue, so another
/// pass over what is left is safe: it connects again (to the next node first, when `AMQP_URL`
/// lists several), with backoff, for up to [`RESUME_FOR`], and acts on at most what `--limit`
/// has left. Each pass prints its own report. Export does not resume: its file would need
/// reopening (`--append`), which is the user's call.
async fn resuming(
    url: &AmqpUrl,
    broker: Admin,
    what: &str,
    verb: &str,
    config: PassConfig,
    action: impl Fn() -> Action,
) -> anyhow::Result<ExitCode> {
    passes(url, broker, what, verb, config, action).await.result
}

/// How a run of passes ([`passes`]) ended.
struct Ended {
    /// The command's exit.
    result: anyhow::Result<ExitCode>,
    /// Messages moved, over every pass.
    acted: u64,
    /// The last pass ended without a failure: it looked at everything it was asked to.
    completed: bool,
    /// It was stopped through [`PassConfig::halt`].
    halted: bool,
}

/// [`resuming`], saying how it ended.
async fn passes(
    url: &AmqpUrl,
    mut broker: Admin,
    what: &str,
    verb: &str,
    mut config: PassConfig,
    action: impl Fn() -> Action,
) -> Ended {
    let queue = config.queue.clone();
    // A replay publishes its copies; a purge only puts back what is not selected. Either way
    // the publisher connects on first use, and reconnects by itself after a loss.
    let publisher = publisher(
        url,
        what,
        &queue,
        config.window.try_into().unwrap_or(u16::MAX),
    );
    let mut waits = RetryPolicy::new(Duration::from_secs(1), Duration::from_secs(10)).delays();
    let mut since: Option<std::time::Instant> = None;
    let mut acted = 0;
    loop {
        let (report, failure) = pass::run(&broker, &publisher, &config, action()).await;
        acted += report.acted;
        if report.started {
            print_report(verb, &queue, &report);
        }
        let resumable = failure.as_ref().is_some_and(|e| {
            e.downcast_ref::<pass::Lost>().is_some()
                // The first pass after a loss can find the old consumer still registered, until
                // the broker notices that its connection is gone.
                || (since.is_some()
                    && matches!(e.downcast_ref::<BrokerError>(), Some(BrokerError::QueueBusy { .. })))
        });
        let started = *since.get_or_insert_with(std::time::Instant::now);
        let e = match failure {
            Some(e) if resumable && started.elapsed() < RESUME_FOR => e,
            failure => {
                close_publisher(&publisher).await;
                broker.close().await;
                let completed = failure.is_none();
                let halted = failure
                    .as_ref()
                    .is_some_and(|e| e.downcast_ref::<pass::Halted>().is_some());
                // What an earlier pass could not move it gave back, and the last pass looked at
                // it again: the last report's count is the one that holds.
                return Ended {
                    result: pass_outcome(&report, failure, &queue),
                    acted,
                    completed,
                    halted,
                };
            }
        };
        config.limit = config.limit.map(|l| l.saturating_sub(report.acted));
        url.mark_lost(broker.node());
        let wait = waits.next_delay();
        if matches!(
            e.downcast_ref::<BrokerError>(),
            Some(BrokerError::QueueBusy { .. })
        ) {
            // Seen on a cluster: a quorum queue keeps the consumer of a node that went down
            // registered ("suspected down") until that node is back.
            eprintln!(
                "warning: {queue} still lists a consumer, most likely the lost connection's (a quorum queue keeps the consumer of a node that is down until the node returns); resuming on what is left in {wait:?}"
            );
        } else {
            eprintln!(
                "warning: {e:#}; resuming on what is left in {queue} in {wait:?}{}",
                if url.node_count() > 1 {
                    " (on another node first)"
                } else {
                    ""
                }
            );
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), broker.close()).await;
        let mut wait = wait;
        broker = loop {
            tokio::time::sleep(wait).await;
            wait = waits.next_delay();
            match connect(url, what, &queue).await {
                Ok(b) => break b,
                Err(e) if started.elapsed() < RESUME_FOR => {
                    eprintln!("warning: {e:#}; trying again");
                }
                Err(e) => {
                    close_publisher(&publisher).await;
                    return Ended {
                        result: Err(e.context(format!("resuming the pass over {queue}"))),
                        acted,
                        completed: false,
                        halted: false,
                    };
                }
            }
        };
    }
}

/// The exit of a pass: its failure first, then "some selected messages could not move".
fn pass_outcome(
    r: &crate::pass::Report,
    failure: Option<anyhow::Error>,
    queue: &str,
) -> anyhow::Result<ExitCode> {
    if let Some(e) = failure {
        return Err(e.context(format!(
            "the pass over {queue} stopped after {} of {} messages",
            r.examined, r.total
        )));
    }
    if r.stayed > 0 {
        anyhow::bail!(
            "{} selected message(s) could not be moved and are still in {queue} (listed above)",
            r.stayed
        );
    }
    Ok(ExitCode::SUCCESS)
}
