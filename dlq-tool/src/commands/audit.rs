//! `courier-dlq audit`, and the line every changing command appends (see [`crate::audit`]).

use super::{close_publisher, publisher};
use crate::audit::{self, Tally};
use crate::cli::{AuditArgs, Command, Global};
use crate::output::thousands;
use courier::envelope::now_millis;
use courier::publisher::Outgoing;
use lapin::BasicProperties;
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tokio::io::AsyncWriteExt;

/// What a command changes, for its audit line: `(name, filter)`, or `None` for a command that
/// changes nothing (inspection, a `--dry-run`, a purge without `--yes`, an export that keeps).
pub fn changing(command: &Command) -> Option<(&'static str, Value)> {
    let with = |mut filter: Value, extra: &[(&str, Value)]| {
        if let Value::Object(m) = &mut filter {
            for (k, v) in extra {
                if !v.is_null() {
                    m.insert((*k).to_owned(), v.clone());
                }
            }
        }
        filter
    };
    match command {
        Command::Replay(a) if !a.pass.dry_run => Some((
            "replay",
            with(
                a.filters.to_json(),
                &[
                    &[
                        ("limit", json!(a.pass.limit)),
                        ("to_queue", json!(a.to_queue)),
                    ][..],
                    &a.fixes.to_json(),
                    &a.smart.to_json(),
                ]
                .concat(),
            ),
        )),
        Command::Edit(a) => Some(("edit", json!({ "message_id": a.message_id }))),
        Command::Export(a) if a.remove && !a.pass.dry_run => Some((
            "export --remove",
            with(
                a.filters.to_json(),
                &[
                    ("limit", json!(a.pass.limit)),
                    ("out", json!(a.out.display().to_string())),
                ],
            ),
        )),
        Command::Purge(a) if a.yes && !a.pass.dry_run => Some((
            "purge",
            with(a.filters.to_json(), &[("limit", json!(a.pass.limit))]),
        )),
        Command::Import(a) => Some((
            "import",
            json!({
                "file": a.file.display().to_string(),
                "to_queue": a.to_queue,
            }),
        )),
        _ => None,
    }
}

/// Appends the audit line of a command that ended with `result`, and publishes it to
/// `--audit-queue` when given. Never fails the command: a line that cannot be written is a
/// warning on stderr.
pub async fn append(g: &Global, name: &str, filter: Value, result: &anyhow::Result<ExitCode>) {
    let argv = audit::redacted_args(std::env::args());
    append_as(g, name, filter, result, &audit::user(), &argv).await;
}

/// [`append`] for a command run on someone's behalf (the console): `user` is who asked for it
/// and `argv` the command line it stands for (passwords redacted already).
pub async fn append_as(
    g: &Global,
    name: &str,
    filter: Value,
    result: &anyhow::Result<ExitCode>,
    user: &str,
    argv: &[String],
) {
    let tally: Tally = audit::tally();
    let (outcome, exit_code) = match result {
        Ok(_) if tally.failed > 0 => (format!("{} could not be moved", thousands(tally.failed)), 1),
        Ok(_) => ("ok".to_owned(), 0),
        Err(e) => (
            format!("error: {}", courier::amqp::redact(&format!("{e:#}"))),
            crate::error::exit_code(e),
        ),
    };
    let queue = g.dlq().unwrap_or_default();
    let line = audit::record(
        &crate::render::format_time_ms(now_millis()),
        user,
        &host().await,
        name,
        argv,
        &queue,
        filter,
        tally,
        &outcome,
        exit_code,
    );
    let text = line.to_string();
    match g.audit_log.clone().or_else(audit::default_path) {
        Some(path) => {
            if let Err(e) = write_line(&path, &text).await {
                eprintln!(
                    "warning: could not append to the audit log {}: {e} (the line was: {text})",
                    path.display()
                );
            }
        }
        None => eprintln!(
            "warning: no audit log (neither $XDG_STATE_HOME nor $HOME is set; pass --audit-log FILE); the line was: {text}"
        ),
    }
    if let Some(q) = &g.audit_queue {
        publish(g, q, &text).await;
    }
}

async fn write_line(path: &Path, text: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        tokio::fs::create_dir_all(dir).await?;
    }
    let mut f = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await?;
    // One write of the whole line: with O_APPEND, lines of concurrent commands never interleave.
    f.write_all(format!("{text}\n").as_bytes()).await?;
    f.sync_data().await
}

async fn publish(g: &Global, queue: &str, text: &str) {
    let url = match g.url() {
        Ok(u) => u,
        Err(e) => {
            eprintln!("warning: audit line not published to {queue}: {e}");
            return;
        }
    };
    let p = publisher(&url, "audit", queue, 1);
    let msg = Outgoing {
        exchange: String::new(),
        routing_key: queue.to_owned(),
        properties: BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into()),
        body: text.as_bytes().to_vec(),
    };
    if let Err(e) = p.publish(msg).await {
        eprintln!("warning: audit line not published to {queue}: {e}");
    }
    close_publisher(&p).await;
}

/// This machine's name: /proc's, else `$HOSTNAME`, else `unknown`.
async fn host() -> String {
    match tokio::fs::read_to_string("/proc/sys/kernel/hostname").await {
        Ok(h) if !h.trim().is_empty() => h.trim().to_owned(),
        _ => std::env::var("HOSTNAME").unwrap_or_else(|_| "unknown".to_owned()),
    }
}

pub async fn run(g: &Global, a: AuditArgs) -> anyhow::Result<ExitCode> {
    let Some(path): Option<PathBuf> = g.audit_log.clone().or_else(audit::default_path) else {
        anyhow::bail!(
            "no audit log: neither $XDG_STATE_HOME nor $HOME is set; pass --audit-log FILE"
        );
    };
    let text = match tokio::fs::read_to_string(&path).await {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("no audit log at {} yet: nothing has changed the dead-letter queue from this machine", path.display());
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => anyhow::bail!("reading the audit log {}: {e}", path.display()),
    };
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let shown = &lines[lines.len().saturating_sub(a.limit)..];
    let mut out = std::io::stdout().lock();
    if a.json {
        for l in shown {
            writeln!(out, "{l}")?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "{:<20}  {:<24}  {:<16}  {:>8}  {:>8}  {:>8}  OUTCOME / FILTER",
        "AT", "WHO", "COMMAND", "MOVED", "LEFT", "FAILED"
    )?;
    for (n, l) in shown.iter().enumerate() {
        let Ok(v) = serde_json::from_str::<Value>(l) else {
            writeln!(
                out,
                "(line {} of {} is not JSON)",
                lines.len() - shown.len() + n + 1,
                path.display()
            )?;
            continue;
        };
        let s = |k: &str| v[k].as_str().unwrap_or("?").to_owned();
        let u = |k: &str| v[k].as_u64().map_or_else(|| "?".to_owned(), thousands);
        writeln!(
            out,
            "{:<20}  {:<24}  {:<16}  {:>8}  {:>8}  {:>8}  {}  {}",
            s("at"),
            format!("{}@{}", s("user"), s("host")),
            s("command"),
            u("moved"),
            u("left"),
            u("failed"),
            s("outcome"),
            v["filter"]
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
