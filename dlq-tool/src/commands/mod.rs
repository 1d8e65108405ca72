//! One file per command; this one dispatches and holds what they share.

mod dry_run;
mod export;
mod import;
mod list;
mod purge;
mod replay;
mod show;
mod stats;

use crate::cli::{Cli, Command, Global};
use courier::amqp::AmqpUrl;
use courier::broker::Admin;
use courier::metrics::Metrics;
use courier::publisher::{Publisher, PublisherConfig};
use courier::topology::QueueType;
use std::process::ExitCode;
use std::time::Duration;

/// Runs the command.
///
/// # Errors
/// Whatever stopped it; [`crate::error::exit_code`] turns it into an exit code.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let g = &cli.global;
    match cli.command {
        Command::Stats(a) => stats::run(g, a).await,
        Command::List(a) => list::run(g, a).await,
        Command::Show(a) => show::run(g, a).await,
        Command::Replay(a) => replay::run(g, a).await,
        Command::Export(a) => export::run(g, a).await,
        Command::Import(a) => import::run(g, a).await,
        Command::Purge(a) => purge::run(g, a).await,
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

/// Inspection gives messages back with a requeue; on a quorum queue that may count as a
/// delivery attempt (and a 4.x default `x-delivery-limit` of 20 would eventually drop them).
fn warn_if_quorum(g: &Global, queue: &str) {
    if let Ok(t) = g.topology() {
        if t.queue(queue)
            .is_some_and(|q| q.queue_type == QueueType::Quorum)
        {
            eprintln!(
                "warning: {queue} is a quorum queue: inspecting requeues the messages it looks at, which may count against x-delivery-limit; set the DLQ's delivery limit to unlimited, or keep it classic (the default)"
            );
        }
    }
}

/// Prints what a pass did (to stdout; a closed stdout does not matter any more by then).
fn print_report(verb: &str, queue: &str, r: &crate::pass::Report) {
    use crate::output::thousands;
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
    if r.stopped_early {
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
