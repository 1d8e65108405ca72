//! What `stats` and `replay --dry-run` count: [`Stats`] and [`Plan`], made of [`Groups`] that
//! stop at [`MAX_GROUPS`] keys, so a DLQ full of unique errors cannot grow the tool's memory.
//! Errors are grouped by [`error_group`] (`HTTP 503 ...` → `HTTP 503`): that is how this tool
//! summarises them, not part of the contract, so the library keeps the text as the worker
//! wrote it and the grouping lives here.

use courier::deadletter::{DeadLetter, Destination, Source};
use std::collections::BTreeMap;

/// How many distinct groups [`Stats`] and [`Plan`] keep per dimension before folding the rest
/// into one "(other)" row, so a DLQ full of unique errors cannot grow the tool's memory.
pub const MAX_GROUPS: usize = 1000;

/// The error column of `stats`, `list` and `--json`: the error's first line normalised by the
/// one rule failure groups use ([`crate::groups::normalise`]: an HTTP status, a transport
/// error's method and host, else the line with what varies masked), `(empty)` for none.
pub fn normalize_error(error: &str) -> String {
    let first = error.lines().next().unwrap_or("").trim();
    if first.is_empty() {
        return "(empty)".to_owned();
    }
    crate::groups::normalise(first)
}

/// The error of `dl` grouped for `stats`: see [`normalize_error`]; for a broker dead letter
/// without an error, `(broker: <reason>)`.
pub fn error_group(dl: &DeadLetter) -> String {
    match (&dl.error, dl.source) {
        (Some(e), _) => normalize_error(e),
        (None, Source::Broker) => {
            format!("(broker: {})", dl.reason.as_deref().unwrap_or("?"))
        }
        (None, _) => "(none)".to_owned(),
    }
}

/// Counts per key, folding keys past [`MAX_GROUPS`] into `(other)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Groups(BTreeMap<String, u64>);

impl Groups {
    /// Counts one occurrence of `key`.
    pub fn add(&mut self, key: &str) {
        if let Some(n) = self.0.get_mut(key) {
            *n += 1;
        } else if self.0.len() < MAX_GROUPS {
            self.0.insert(key.to_owned(), 1);
        } else {
            *self.0.entry("(other)".to_owned()).or_insert(0) += 1;
        }
    }

    /// Groups, largest first (ties by name).
    pub fn sorted(&self) -> Vec<(&str, u64)> {
        let mut v: Vec<(&str, u64)> = self.0.iter().map(|(k, n)| (k.as_str(), *n)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        v
    }

    /// The raw map.
    pub fn map(&self) -> &BTreeMap<String, u64> {
        &self.0
    }
}

/// What `stats` reports over the examined messages that match the filter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Matching messages.
    pub matched: u64,
    /// Total body bytes of the matching messages.
    pub bytes: u64,
    /// Earliest dead-letter time (epoch ms).
    pub oldest_ms: Option<i64>,
    /// Latest dead-letter time (epoch ms).
    pub newest_ms: Option<i64>,
    /// Counts by reason (`(unknown)` when there is none).
    pub by_reason: Groups,
    /// Counts by original queue.
    pub by_queue: Groups,
    /// Counts by normalised error ([`error_group`]).
    pub by_error: Groups,
}

impl Stats {
    /// Adds one matching message.
    pub fn add(&mut self, dl: &DeadLetter) {
        self.matched += 1;
        self.bytes += dl.body_len as u64;
        if let Some(t) = dl.dead_lettered_at_ms {
            self.oldest_ms = Some(self.oldest_ms.map_or(t, |o| o.min(t)));
            self.newest_ms = Some(self.newest_ms.map_or(t, |n| n.max(t)));
        }
        self.by_reason
            .add(dl.reason.as_deref().unwrap_or("(unknown)"));
        self.by_queue
            .add(dl.original_queue.as_deref().unwrap_or("(unknown)"));
        self.by_error.add(&error_group(dl));
    }
}

/// What a replay would do (`--dry-run`), or did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Messages that would move, by destination.
    pub by_destination: Groups,
    /// Messages that would move, by normalised error.
    pub by_error: Groups,
    /// Messages that would move, in total.
    pub moving: u64,
    /// Selected messages that cannot move: they say nowhere where they came from.
    pub no_origin: u64,
    /// Examined messages the filters did not select.
    pub not_selected: u64,
}

impl Plan {
    /// Records a selected message going to `dest` (`None`: it has no origin and stays).
    pub fn add_moving(&mut self, dl: &DeadLetter, dest: Option<&Destination>) {
        match dest {
            Some(d) => {
                self.moving += 1;
                self.by_destination.add(&d.to_string());
                self.by_error.add(&error_group(dl));
            }
            None => self.no_origin += 1,
        }
    }

    /// Records a message the filters did not select.
    pub fn add_not_selected(&mut self) {
        self.not_selected += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{broker_dead_letter, worker_dead_letter};

    #[test]
    fn errors_are_grouped() {
        assert_eq!(
            normalize_error("HTTP 503 Service Unavailable: busy"),
            "HTTP 503"
        );
        assert_eq!(
            normalize_error("POST http://h/deliver: HTTP 429 Too Many Requests"),
            "POST http://h: HTTP 429"
        );
        assert_eq!(
            normalize_error("POST http://h/x: connection refused\nstack"),
            "POST http://h: connection refused"
        );
        assert_eq!(normalize_error("HTTP 5"), "HTTP <n>");
        assert_eq!(normalize_error(""), "(empty)");
        let long_line = "é".repeat(200);
        assert_eq!(normalize_error(&long_line).chars().count(), 121);
        // The same rule as the failure groups: one error, one text everywhere.
        let e = "handler timed out after 30s for order 8f3c2a9e-1b2c-4d5e-8f90-123456789abc";
        assert_eq!(normalize_error(e), crate::groups::normalise(e));
    }

    #[test]
    fn error_groups_of_a_worker_and_a_broker_dead_letter() {
        let dl = DeadLetter::read(
            &worker_dead_letter("HTTP 503 Service Unavailable: x", 1000),
            42,
        );
        assert_eq!(error_group(&dl), "HTTP 503");
        let dl = DeadLetter::read(&broker_dead_letter("p.ttl", "", "p.ttl", 1_700_000_000), 0);
        assert_eq!(error_group(&dl), "(broker: expired)");
    }

    #[test]
    fn stats_and_plan_group_and_bound() {
        let mut s = Stats::default();
        s.add(&DeadLetter::read(&worker_dead_letter("HTTP 503 a", 5), 10));
        s.add(&DeadLetter::read(&worker_dead_letter("HTTP 503 b", 2), 10));
        s.add(&DeadLetter::read(&broker_dead_letter("q", "", "q", 9), 1));
        assert_eq!(s.matched, 3);
        assert_eq!(s.bytes, 21);
        assert_eq!(s.oldest_ms, Some(2));
        assert_eq!(s.newest_ms, Some(9000));
        assert_eq!(s.by_error.sorted()[0], ("HTTP 503", 2));
        assert_eq!(s.by_reason.map().get("expired"), Some(&1));

        let mut g = Groups::default();
        for i in 0..(MAX_GROUPS + 10) {
            g.add(&i.to_string());
        }
        assert_eq!(g.map().len(), MAX_GROUPS + 1);
        assert_eq!(g.map().get("(other)"), Some(&10));

        let mut p = Plan::default();
        let dl = DeadLetter::read(&worker_dead_letter("HTTP 503", 1), 0);
        p.add_moving(&dl, dl.origin.as_ref());
        p.add_moving(&dl, None);
        p.add_not_selected();
        assert_eq!((p.moving, p.no_origin, p.not_selected), (1, 1, 1));
        assert_eq!(p.by_destination.sorted()[0], ("p.notifications / email", 1));
    }
}
