//! The audit trail: one JSON line for every command that changed the dead-letter queue
//! (`replay`, `edit`, `export --remove`, `import`, `purge`; never a `--dry-run`), appended when the
//! command ends, whether it succeeded or not.
//!
//! A line says who (user, host), when, the command line (every URL's password redacted), the
//! queue, the filter flags, what moved (`moved`: replayed, exported, imported or purged;
//! `left`: selected or not, still in the queue; `failed`: could not be moved), and the outcome.
//! It goes to `--audit-log FILE` (default `$XDG_STATE_HOME/courier/dlq-audit.jsonl`, else
//! `~/.local/state/courier/dlq-audit.jsonl`) and, with `--audit-queue QUEUE`, is also published
//! (confirmed) to that queue. The trail never decides a command's outcome: a line that cannot
//! be written is a warning on stderr, after the command did what it did.

use crate::pass::Report;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::Mutex;

/// What the passes and imports of this process moved, for its audit line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Passes (or imports) that ran.
    pub passes: u64,
    /// Messages replayed, exported, purged or imported, over every pass.
    pub moved: u64,
    /// Still in the queue after the last pass: of the messages it found there, those it did
    /// not move (not selected, beyond --limit, or failed).
    pub left: u64,
    /// Selected but not moved by the last pass (e.g. a destination that does not route).
    pub failed: u64,
}

static TALLY: Mutex<Tally> = Mutex::new(Tally {
    passes: 0,
    moved: 0,
    left: 0,
    failed: 0,
});

fn with_tally(f: impl FnOnce(&mut Tally)) {
    // A poisoned lock only means a panic elsewhere; the counts are still what they were.
    let mut t = TALLY
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    f(&mut t);
}

impl Tally {
    /// Counts a pass. A resumed command runs several: each moved different messages, and the
    /// last one's count of what stayed is the one that holds (it looked at them again).
    pub fn add_pass(&mut self, r: &Report) {
        self.passes += 1;
        self.moved += r.acted;
        self.left = r.total.saturating_sub(r.acted);
        self.failed = r.stayed;
    }
}

/// Counts a pass of this process (see [`Tally::add_pass`]).
pub fn add_pass(r: &Report) {
    with_tally(|t| t.add_pass(r));
}

/// Counts an import of this process.
pub fn add_import(imported: u64, failed: u64) {
    with_tally(|t| {
        t.passes += 1;
        t.moved += imported;
        t.failed += failed;
    });
}

/// Starts counting afresh: a process that runs several commands one after another (the
/// console) gives each its own audit line.
pub fn reset_tally() {
    with_tally(|t| *t = Tally::default());
}

/// What this process has counted so far.
pub fn tally() -> Tally {
    let mut out = Tally::default();
    with_tally(|t| out = *t);
    out
}

/// The default audit log: `dlq-audit.jsonl` in [`state_dir`].
pub fn default_path() -> Option<PathBuf> {
    Some(state_dir()?.join("dlq-audit.jsonl"))
}

/// Where the tool keeps what outlives a run (the audit log, an interrupted replay's journal):
/// `$XDG_STATE_HOME/courier`, else `$HOME/.local/state/courier`; `None` without either.
pub fn state_dir() -> Option<PathBuf> {
    let state = std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".local/state"))
        })?;
    Some(state.join("courier"))
}

/// The command line with every URL's password redacted (`amqp://user:***@host`).
pub fn redacted_args(args: impl IntoIterator<Item = String>) -> Vec<String> {
    args.into_iter()
        .map(|a| courier::amqp::redact(&a))
        .collect()
}

/// Who ran it: `$USER`, else `$LOGNAME`, else `unknown`.
pub fn user() -> String {
    ["USER", "LOGNAME"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| "unknown".to_owned())
}

/// One audit line.
#[allow(clippy::too_many_arguments)]
pub fn record(
    at: &str,
    user: &str,
    host: &str,
    command: &str,
    argv: &[String],
    queue: &str,
    filter: Value,
    t: Tally,
    outcome: &str,
    exit_code: u8,
) -> Value {
    json!({
        "at": at,
        "user": user,
        "host": host,
        "command": command,
        "argv": argv,
        "queue": queue,
        "filter": filter,
        "passes": t.passes,
        "moved": t.moved,
        "left": t.left,
        "failed": t.failed,
        "outcome": outcome,
        "exit_code": exit_code,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_the_trail() {
        let argv = redacted_args([
            "courier-dlq".to_owned(),
            "--amqp-url".to_owned(),
            "amqp://ops:s3cret@rmq-1:5672/prod".to_owned(),
            "--amqp-url=amqps://ops:s3cret@rmq-2/prod".to_owned(),
            "replay".to_owned(),
        ]);
        let text = argv.join(" ");
        assert!(!text.contains("s3cret"), "{text}");
        assert!(text.contains("ops:***@rmq-1"), "{text}");
    }

    #[test]
    fn a_resumed_command_sums_what_moved_and_keeps_the_last_count_of_what_stayed() {
        let mut t = Tally::default();
        let pass = |total, acted, stayed| Report {
            total,
            acted,
            stayed,
            ..Report::default()
        };
        for r in [pass(550, 300, 2), pass(240, 200, 1)] {
            t.add_pass(&r);
        }
        assert_eq!(
            t,
            Tally {
                passes: 2,
                moved: 500,
                left: 40,
                failed: 1
            }
        );
    }

    #[test]
    fn the_default_path_is_under_the_state_directory() {
        if let Some(p) = default_path() {
            assert!(p.ends_with("courier/dlq-audit.jsonl"), "{}", p.display());
        }
    }
}
