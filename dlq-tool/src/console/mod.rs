//! `courier-dlq console`: a web page for the fleet and its dead letters.
//!
//! It is the tool's own commands behind a browser, not a second implementation: the groups are
//! [`crate::commands::groups::collect`], a message is [`crate::commands::show`]'s view, a
//! preview is the commands' `--dry-run` text, and an action is the command itself, parsed from
//! the command line it stands for and run by `replay`, `export` or `purge` in this process. So
//! the guarantees are the CLI's: inspection gives every message back in place, a pass takes
//! only what was there when it started and acks nothing before its copy is safe, a smart
//! replay's canary and journal work the same, and every action gets its audit line.
//!
//! Layout, by concern:
//! - [`server`]: the routes and their handlers, the security headers, start and shutdown;
//! - [`auth`]: the token, the session cookie and the CSRF token of each session;
//! - [`fleet`]: the management API's numbers, sampled into a ring buffer of the last hour;
//! - [`chart`]: the SVG line chart and the sparklines, drawn on the server;
//! - [`pages`]: the HTML (maud templates: every interpolated value is escaped);
//! - [`actions`]: an action's form, its preview, its run in the background and its progress.
//!
//! One conversation with the dead-letter queue at a time: inspection and passes both take an
//! exclusive consumer, so the console queues its own page loads and refuses to show the dead
//! letters while an action runs (the fleet's numbers, from the management API, stay live).

mod actions;
mod auth;
mod chart;
mod fleet;
mod pages;
mod server;

use crate::cli::{ConsoleArgs, Global};
use crate::error::UsageError;
use std::process::ExitCode;

/// Runs the console until Ctrl-C or SIGTERM.
///
/// # Errors
/// A bad flag (usage error), or the address cannot be bound.
pub async fn run(g: &Global, a: ConsoleArgs) -> anyhow::Result<ExitCode> {
    let queue = g.dlq()?;
    let url = g.url()?;
    if a.refresh < std::time::Duration::from_millis(500) {
        return Err(UsageError(format!(
            "--refresh {}: at least 500ms (the management API itself samples every few seconds)",
            humantime::format_duration(a.refresh)
        ))
        .into());
    }
    let token = match a.token.clone() {
        Some(t) if t.chars().count() < auth::MIN_TOKEN => {
            return Err(UsageError(format!(
                "--token / COURIER_CONSOLE_TOKEN: {} characters; at least {} (it is the console's only lock)",
                t.chars().count(),
                auth::MIN_TOKEN
            ))
            .into())
        }
        Some(t) => t,
        None => auth::random_hex(16),
    };
    let user = a.user.clone().unwrap_or_else(crate::audit::user);
    let management =
        courier::management::Management::locate(a.management_url.as_deref(), &url).await;
    let topology = g.topology().ok();
    let settings = server::Settings {
        global: g.clone(),
        queue,
        amqp: courier::amqp::redact(&url.to_string()),
        topology,
        management,
        token,
        user,
        read_only: a.read_only,
        refresh: a.refresh,
        limit: crate::inspect::examine_at_most(a.limit),
    };
    server::serve(settings, a.listen, a.token.is_none()).await?;
    Ok(ExitCode::SUCCESS)
}
