//! An action from the console: the form, the command line it stands for, its preview (the
//! command's own `--dry-run`), its run in the background, and what the progress view reads.
//!
//! The form becomes a `courier-dlq` command line (`courier-dlq replay --group=96da919e
//! --canary=10`), parsed by the CLI's own parser, so a value is checked exactly as on the
//! command line (and every value is one `--flag=value` argument: a value cannot pass for a
//! flag). That command runs in this process, by the command's own function, and its audit line
//! names that command line and "USER via console".

use crate::audit::Tally;
use crate::cli::{Cli, Command, Global};
use crate::commands::dry_run::{self, Verb};
use crate::commands::{audit, export, purge, replay};
use crate::progress::Counters;
use clap::Parser;
use serde::Deserialize;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The kinds of action, as the form names them.
pub const KINDS: [&str; 3] = ["replay", "export", "purge"];

/// An action's form: its kind, the selection, and the kind's options. Empty fields are not
/// given.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct ActionForm {
    /// `replay`, `export` or `purge`.
    pub kind: String,
    /// `--group`.
    pub group: String,
    /// `--reason`.
    pub reason: String,
    /// `--from-queue`.
    pub from_queue: String,
    /// `--error-contains`.
    pub error_contains: String,
    /// `--message-id`.
    pub message_id: String,
    /// `--limit`.
    pub limit: String,
    /// `--canary` (replay).
    pub canary: String,
    /// `--canary-wait` (replay).
    pub canary_wait: String,
    /// `--max-failure-rate` (replay).
    pub max_failure_rate: String,
    /// `--rate` (replay, export, purge).
    pub rate: String,
    /// `--ramp` (replay).
    pub ramp: String,
    /// `--to-queue` (replay).
    pub to_queue: String,
    /// `--out` (export): a file on the console's machine.
    pub out: String,
    /// `--remove` (export), when "on".
    pub remove: String,
    /// The session's CSRF token (the confirming POST).
    pub csrf: Option<String>,
}

impl ActionForm {
    /// The fields that select messages, as (form name, flag).
    pub const SELECTION: [(&'static str, &'static str); 6] = [
        ("group", "group"),
        ("reason", "reason"),
        ("from_queue", "from-queue"),
        ("error_contains", "error-contains"),
        ("message_id", "message-id"),
        ("limit", "limit"),
    ];

    /// The value of form field `name` (see [`ActionForm::SELECTION`] and [`ActionForm::options`]).
    pub fn field(&self, name: &str) -> &str {
        match name {
            "group" => &self.group,
            "reason" => &self.reason,
            "from_queue" => &self.from_queue,
            "error_contains" => &self.error_contains,
            "message_id" => &self.message_id,
            "limit" => &self.limit,
            "canary" => &self.canary,
            "canary_wait" => &self.canary_wait,
            "max_failure_rate" => &self.max_failure_rate,
            "rate" => &self.rate,
            "ramp" => &self.ramp,
            "to_queue" => &self.to_queue,
            "out" => &self.out,
            "remove" => &self.remove,
            _ => "",
        }
    }

    /// The kind's options, as (form name, flag, hint).
    pub fn options(&self) -> &'static [(&'static str, &'static str, &'static str)] {
        match self.kind.as_str() {
            "replay" => &[
                (
                    "canary",
                    "canary",
                    "e.g. 10: replay 10 first and watch them",
                ),
                ("canary_wait", "canary-wait", "default 30s"),
                (
                    "max_failure_rate",
                    "max-failure-rate",
                    "default 0.2 with a canary",
                ),
                ("rate", "rate", "e.g. 200/s"),
                ("ramp", "ramp", "e.g. 10/s..500/s over 2m"),
                ("to_queue", "to-queue", "instead of each message's origin"),
            ],
            "export" => &[
                (
                    "out",
                    "out",
                    "a new file on the console's machine, e.g. /tmp/dlq.jsonl",
                ),
                ("rate", "rate", "e.g. 200/s"),
            ],
            "purge" => &[("rate", "rate", "e.g. 200/s")],
            _ => &[],
        }
    }

    /// The command line this form stands for. `run` adds what only the run itself takes
    /// (`purge --yes`).
    ///
    /// # Errors
    /// An unknown kind.
    pub fn argv(&self, run: bool) -> Result<Vec<String>, String> {
        if !KINDS.contains(&self.kind.as_str()) {
            return Err(format!(
                "unknown action {:?}: replay, export or purge",
                self.kind
            ));
        }
        let mut v = vec!["courier-dlq".to_owned(), self.kind.clone()];
        let fields = Self::SELECTION
            .iter()
            .map(|(name, flag)| (*name, *flag))
            .chain(self.options().iter().map(|(name, flag, _)| (*name, *flag)));
        for (name, flag) in fields {
            let value = self.field(name).trim();
            if !value.is_empty() {
                v.push(format!("--{flag}={value}"));
            }
        }
        if self.kind == "export" && self.remove == "on" {
            v.push("--remove".to_owned());
        }
        if self.kind == "purge" && run {
            v.push("--yes".to_owned());
        }
        Ok(v)
    }

    /// The command, parsed by the CLI's own parser.
    ///
    /// # Errors
    /// What the parser says (the flag, the value, the expected form).
    pub fn command(&self, run: bool) -> Result<(Vec<String>, Command), String> {
        let argv = self.argv(run)?;
        match Cli::try_parse_from(&argv) {
            Ok(cli) => Ok((argv, cli.command)),
            Err(e) => Err(e.render().to_string()),
        }
    }
}

/// The `--dry-run` text of an action's command.
///
/// # Errors
/// A flag that does not validate, or the inspection failed.
pub async fn preview(g: &Global, command: &Command) -> anyhow::Result<String> {
    match command {
        Command::Replay(a) => replay::preview(g, a).await,
        Command::Export(a) => {
            let filter = a.filters.build(&g.prefix)?;
            let (queue, url) = (g.dlq()?, g.url()?);
            dry_run::plan(g, &url, &queue, &filter, a.pass.limit, Verb::Export).await
        }
        Command::Purge(a) => {
            let filter = a.filters.build(&g.prefix)?;
            let (queue, url) = (g.dlq()?, g.url()?);
            dry_run::plan(g, &url, &queue, &filter, a.pass.limit, Verb::Purge).await
        }
        _ => anyhow::bail!("not an action"),
    }
}

/// Where an action is.
#[derive(Debug, Clone)]
pub enum State {
    /// Running; its counters say how far.
    Running,
    /// Ended.
    Done {
        /// It did all it was asked (exit code 0).
        ok: bool,
        /// What happened, for people (the error, redacted, when it failed).
        outcome: String,
        /// What moved, as its audit line says.
        tally: Tally,
    },
}

/// One action the console ran or runs.
#[derive(Debug)]
pub struct Job {
    /// Its number in this console's run.
    pub id: u64,
    /// The command line it stands for.
    pub argv: Vec<String>,
    /// Who asked for it.
    pub user: String,
    /// When it started (epoch ms).
    pub started_ms: i64,
    /// Its passes' progress.
    pub counters: Arc<Counters>,
    /// Where it is.
    pub state: Mutex<State>,
}

impl Job {
    /// Its state now.
    pub fn state(&self) -> State {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// Jobs kept for their pages.
const KEEP_JOBS: usize = 50;

/// The console's actions: the running one and the last [`KEEP_JOBS`].
#[derive(Debug, Default)]
pub struct Jobs {
    /// The next job's number.
    next: AtomicU64,
    /// The jobs, oldest first.
    list: Mutex<VecDeque<Arc<Job>>>,
}

impl Jobs {
    /// Registers a new job.
    pub fn add(&self, argv: Vec<String>, user: String) -> Arc<Job> {
        let job = Arc::new(Job {
            id: self.next.fetch_add(1, Ordering::Relaxed) + 1,
            argv,
            user,
            started_ms: courier::envelope::now_millis(),
            counters: Arc::default(),
            state: Mutex::new(State::Running),
        });
        let mut list = self
            .list
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if list.len() >= KEEP_JOBS {
            list.pop_front();
        }
        list.push_back(Arc::clone(&job));
        job
    }

    /// Job `id`, if it is kept.
    pub fn get(&self, id: u64) -> Option<Arc<Job>> {
        let list = self
            .list
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        list.iter().find(|j| j.id == id).cloned()
    }

    /// The running job, if any.
    pub fn running(&self) -> Option<Arc<Job>> {
        let list = self
            .list
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        list.iter()
            .find(|j| matches!(j.state(), State::Running))
            .cloned()
    }
}

/// Runs `command` for `job` (the console holds its one-at-a-time lock meanwhile), then writes
/// its audit line and its outcome.
pub async fn run(g: Global, command: Command, job: Arc<Job>) {
    // Commands count what they moved in the process's tally (their audit line reads it); the
    // console runs one action at a time, so each starts from zero.
    crate::audit::reset_tally();
    let changing = audit::changing(&command).or_else(|| match &command {
        // An export that keeps the messages changes nothing, so the CLI writes no line for
        // it; the console writes one anyway: every console action is in the trail.
        Command::Export(a) => {
            let mut filter = a.filters.to_json();
            if let serde_json::Value::Object(m) = &mut filter {
                m.insert(
                    "out".to_owned(),
                    serde_json::json!(a.out.display().to_string()),
                );
            }
            Some(("export", filter))
        }
        _ => None,
    });
    let counters = Some(Arc::clone(&job.counters));
    let result = match command {
        Command::Replay(a) => replay::run_with(&g, *a, counters).await,
        Command::Export(a) => export::run_with(&g, a, counters).await,
        Command::Purge(a) => purge::run_with(&g, a, counters).await,
        _ => Err(anyhow::anyhow!("not an action")),
    };
    let tally = crate::audit::tally();
    if let Some((name, filter)) = changing {
        let user = format!("{} via console", job.user);
        audit::append_as(&g, name, filter, &result, &user, &job.argv).await;
    }
    let (ok, outcome) = match &result {
        Ok(_) if tally.failed > 0 => (
            false,
            format!(
                "{} selected message(s) could not be moved and are still in the queue",
                tally.failed
            ),
        ),
        Ok(_) => (true, "done".to_owned()),
        Err(e) => (
            false,
            format!(
                "exit code {}: {}",
                crate::error::exit_code(e),
                courier::amqp::redact(&format!("{e:#}"))
            ),
        ),
    };
    eprintln!(
        "console: job {} ({}) by {}: {outcome}",
        job.id,
        job.argv.join(" "),
        job.user
    );
    *job.state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = State::Done { ok, outcome, tally };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_form_is_a_command_line_and_values_never_pass_for_flags() {
        let f = ActionForm {
            kind: "replay".to_owned(),
            group: "96da919e".to_owned(),
            canary: " 10 ".to_owned(),
            error_contains: "--yes".to_owned(),
            ..ActionForm::default()
        };
        let argv = f.argv(true).expect("replay");
        assert_eq!(
            argv,
            [
                "courier-dlq",
                "replay",
                "--group=96da919e",
                "--error-contains=--yes",
                "--canary=10"
            ]
        );
        let (_, command) = f.command(true).expect("parses");
        match command {
            Command::Replay(a) => {
                assert_eq!(a.filters.error_contains, ["--yes"]);
                assert_eq!(a.smart.canary, Some(10));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn purge_says_yes_only_when_it_runs_and_bad_values_are_the_parsers_errors() {
        let f = ActionForm {
            kind: "purge".to_owned(),
            reason: "malformed".to_owned(),
            ..ActionForm::default()
        };
        assert!(!f.argv(false).expect("purge").contains(&"--yes".to_owned()));
        assert!(f.argv(true).expect("purge").contains(&"--yes".to_owned()));
        let bad = ActionForm {
            kind: "replay".to_owned(),
            rate: "fast".to_owned(),
            ..ActionForm::default()
        };
        assert!(bad.command(true).expect_err("bad rate").contains("--rate"));
        let unknown = ActionForm {
            kind: "drop-table".to_owned(),
            ..ActionForm::default()
        };
        assert!(unknown.argv(true).is_err());
    }
}
