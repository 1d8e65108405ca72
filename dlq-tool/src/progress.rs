//! Progress on a terminal: a bar on stderr, hidden when stderr is not a TTY (pipes, CI, logs),
//! so scripted runs only see the final summary.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;

/// A bar for `total` messages; hidden unless `enabled` and stderr is a terminal.
pub fn bar(total: u64, enabled: bool) -> ProgressBar {
    if !enabled || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} messages  {per_sec}  eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// Progress of a pass for a watcher other than a terminal (the console's progress view): the
/// pass updates it as it goes, the watcher reads it whenever it likes. A command that runs
/// several passes (a canary, then the rest; a pass resumed after a lost connection) starts it
/// again with each pass.
#[derive(Debug, Default)]
pub struct Counters {
    /// Passes started so far.
    pub passes: std::sync::atomic::AtomicU64,
    /// Messages in the queue when the current pass started (what it will look at, at most).
    pub total: std::sync::atomic::AtomicU64,
    /// Messages of the current pass settled so far: moved, or put back.
    pub done: std::sync::atomic::AtomicU64,
}

impl Counters {
    /// A pass counted `total` messages and starts.
    pub fn started(&self, total: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.passes.fetch_add(1, Relaxed);
        self.done.store(0, Relaxed);
        self.total.store(total, Relaxed);
    }

    /// `n` more messages are settled.
    pub fn settled(&self, n: u64) {
        self.done.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// `(passes, done, total)` as they are now.
    pub fn read(&self) -> (u64, u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.passes.load(Relaxed),
            self.done.load(Relaxed),
            self.total.load(Relaxed),
        )
    }
}
