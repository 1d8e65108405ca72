//! What a pass is asked to do ([`PassConfig`], [`Action`]) and what it reports ([`Report`],
//! [`Stayed`]).

use super::*;

/// Builds the copy [`Action::Republish`] publishes, or says why it cannot.
pub type CopyFn = Box<dyn Fn(&Delivery) -> Result<Outgoing, String> + Send + Sync>;

/// What a pass does with each selected message.
pub enum Action {
    /// Publish a replay copy to its origin (or `to_queue`).
    Replay {
        /// `--to-queue`.
        to_queue: Option<String>,
        /// `--set-header`, `--set-routing-key`, `--transform` (empty: the copy as it was).
        fixes: std::sync::Arc<crate::fix::Fixes>,
        /// Records each confirmed copy before its original is acked, and says what an
        /// interrupted run already moved (see [`crate::journal`]).
        journal: Option<std::sync::Arc<crate::journal::Journal>>,
    },
    /// Publish the copy `copy` builds back to the tail of the dead-letter queue (`edit`): like
    /// a replay, confirmed before the original is acked; a message `copy` refuses stays, with
    /// the reason.
    Republish {
        /// Builds the replacement from the delivery, or says why it cannot.
        copy: CopyFn,
    },
    /// Write it to the file; with `remove`, ack it once synced, else keep it in the queue.
    Export {
        /// The open file.
        file: ExportFile,
        /// `--remove`.
        remove: bool,
    },
    /// Ack it: gone.
    Purge,
}

/// How a pass runs.
pub struct PassConfig {
    /// The dead-letter queue.
    pub queue: String,
    /// Which messages are selected.
    pub filter: Filter,
    /// Act on at most this many selected messages.
    pub limit: Option<u64>,
    /// Selected messages per period at most.
    pub rate: Option<Rate>,
    /// `--ramp` (instead of `rate`).
    pub ramp: Option<crate::send::Ramp>,
    /// Cancelled to stop the pass early (a smart replay's failure watch): it stops taking
    /// messages, finishes what is in flight, and fails with [`super::Halted`].
    pub halt: Option<tokio_util::sync::CancellationToken>,
    /// Publishes awaiting confirms at once.
    pub window: usize,
    /// Show a progress bar (only on a terminal).
    pub progress: bool,
    /// The progress hook: when set, the pass also reports its count and every settled message
    /// here, for a watcher that is not a terminal (the console). `None` for the CLI.
    pub counters: Option<std::sync::Arc<crate::progress::Counters>>,
}

/// A selected message that could not move and stays in the queue.
#[derive(Debug, Clone)]
pub struct Stayed {
    /// Its id.
    pub message_id: String,
    /// Where it should have gone.
    pub destination: String,
    /// Why it did not.
    pub why: String,
}

/// What a pass did.
#[derive(Debug, Default)]
pub struct Report {
    /// The pass got as far as counting the queue; false when it failed before (the queue is
    /// missing or busy), and then there is nothing to report.
    pub started: bool,
    /// Messages ready when the pass started.
    pub total: u64,
    /// Deliveries taken.
    pub examined: u64,
    /// Selected messages replayed, exported or purged.
    pub acted: u64,
    /// Messages put back to the tail of the queue (not selected), once the pass held more than
    /// it can give back in place.
    pub kept: u64,
    /// Messages not selected and given back in place, unchanged (nothing was republished).
    pub left: u64,
    /// Selected messages that could not move.
    pub stayed: u64,
    /// The first [`MAX_LISTED`] of those.
    pub stayed_list: Vec<Stayed>,
    /// Moved messages by destination (replay).
    pub by_destination: Groups,
    /// Originals of copies an interrupted replay had confirmed, acked now (its journal).
    pub already: u64,
    /// Copies an interrupted replay moved that failed again since: left, as a pass leaves every
    /// re-failure of its own.
    pub came_back: u64,
    /// The pass stopped at `--limit` before looking at every message (nothing was reordered).
    pub stopped_early: bool,
    /// It stopped because the last message it could select was taken (counted first), not at
    /// `--limit`.
    pub past_last: bool,
    /// Messages that stayed were held and given back in place (nothing went to the tail).
    pub in_place: bool,
    /// Lines written to the export file.
    pub lines: u64,
    /// Wall time.
    pub elapsed: Duration,
}
