//! The report at the end: every count beside what the sink's rules predict, what was read back
//! from the dead-letter queue, throughput, and the commands to run next.

use super::broker::Cleaned;
use super::clean::print_cleanup;
use super::fleet::Counts;
use super::plan::Expected;
use super::progress::{Timing, Wait};
use super::Demo;
use crate::cli::out::outln;
use crate::cli::sink::SinkCounts;
use courier::envelope::Reason;
use std::io;
use std::process::ExitCode;
use std::time::Duration;

/// Everything the report shows, gathered once the workers and the sink have stopped.
pub(super) struct Summary {
    /// How and when the wait ended.
    pub(super) timing: Timing,
    /// Messages published (all confirmed).
    pub(super) published: u64,
    /// Of those, at priority 9.
    pub(super) urgent: u64,
    /// Of those, with a non-JSON body.
    pub(super) malformed: u64,
    /// What the sink's rules predict.
    pub(super) expected: Expected,
    /// What the workers counted.
    pub(super) counts: Counts,
    /// What the sink counted, per distinct id.
    pub(super) sink: SinkCounts,
    /// Messages read back from the dead-letter queue.
    pub(super) in_dlq: u64,
    /// One dead letter's id, for the `courier-dlq show` hint.
    pub(super) sample_dead: Option<String>,
    /// Ids neither delivered nor in the DLQ.
    pub(super) missing: Vec<String>,
    /// The wait's limit, named when it was reached.
    pub(super) timeout: Duration,
    /// The retry tiers' labels (`500ms`, `2s`, ...), by index.
    pub(super) tier_labels: Vec<String>,
}

/// One line of the table: label, count, expected count, note.
fn row(label: &str, count: u64, expected: Option<u64>, note: &str) -> io::Result<()> {
    let exp = expected.map_or_else(String::new, |e| format!("{e:>10}"));
    let line = format!("  {label:<24}{count:>8}{exp}");
    if note.is_empty() {
        outln!("{line}")
    } else {
        outln!("{line:<44}  {note}")
    }
}

impl Summary {
    pub(super) fn settled(&self) -> bool {
        self.timing.wait == Wait::Settled
    }

    pub(super) fn print(&self, demo: &Demo<'_>) -> io::Result<()> {
        let e = &self.expected;
        let c = &self.counts;
        outln!()?;
        if self.settled() {
            outln!("Summary")?;
        } else {
            outln!(
                "Summary: NOT every message settled within {} (--timeout)",
                humantime::format_duration(self.timeout)
            )?;
        }
        outln!("  {:<24}{:>8}{:>10}", "", "count", "expected")?;
        row(
            "published",
            self.published,
            Some(self.published),
            &format!(
                "confirmed; {} at priority 9, {} not JSON",
                self.urgent, self.malformed
            ),
        )?;
        row(
            "delivered",
            c.delivered,
            Some(e.delivered),
            "HTTP 2xx, then acked",
        )?;
        row("first try", self.sink.first_try, Some(e.first_try), "")?;
        row(
            "after a retry",
            self.sink.after_retry,
            Some(e.after_retry),
            "",
        )?;
        row(
            "retried",
            c.retries_total(),
            Some(e.retries.iter().sum()),
            "retry copies confirmed, by tier:",
        )?;
        for (i, label) in self.tier_labels.iter().enumerate() {
            row(
                &format!("tier {label}"),
                c.retries.get(i).copied().unwrap_or(0),
                Some(e.retries.get(i).copied().unwrap_or(0)),
                "",
            )?;
        }
        row(
            "dead-lettered",
            c.dead_total(),
            Some(e.dead_total()),
            "by reason:",
        )?;
        let mut reasons: Vec<Reason> = e.dead.keys().chain(c.dead.keys()).copied().collect();
        reasons.sort();
        reasons.dedup();
        for r in reasons {
            let note = match r {
                Reason::Permanent => "HTTP 400",
                Reason::MaxAttempts => "HTTP 503 on every attempt",
                Reason::Malformed => "body not JSON",
                _ => "",
            };
            row(
                r.as_str(),
                c.dead.get(&r).copied().unwrap_or(0),
                Some(e.dead.get(&r).copied().unwrap_or(0)),
                note,
            )?;
        }
        row(
            "in the DLQ",
            self.in_dlq,
            Some(e.dead_total()),
            &format!("read back from {}", demo.topology.dead_letter_queue),
        )?;
        row(
            "duplicates",
            self.sink.duplicates,
            Some(0),
            "ids the sink accepted more than once",
        )?;
        let lost_label = if self.settled() {
            "lost"
        } else {
            "not settled"
        };
        row(
            lost_label,
            self.missing.len() as u64,
            Some(0),
            "neither delivered nor in the DLQ",
        )?;
        let t = &self.timing;
        let rate = |d: Duration| self.published as f64 / d.as_secs_f64().max(1e-3);
        outln!(
            "  {:<24}{:>8}            first publish to last outcome; {} HTTP requests to the sink",
            "elapsed",
            format!("{:.1}s", t.elapsed.as_secs_f64()),
            self.sink.requests
        )?;
        if self.settled() {
            outln!(
                "  {:<24}{:>8}            msg/s overall, including up to {:.1}s of deliberate retry waits",
                "throughput",
                format!("{:.0}", rate(t.elapsed)),
                self.expected.longest_wait.as_secs_f64(),
            )?;
        }
        if let Some(first) = t.first_pass {
            outln!(
                "  {:<24}{:>8}            msg/s until every message had its first attempt ({:.2}s); published at {:.0} msg/s",
                "first pass",
                format!("{:.0}", rate(first)),
                first.as_secs_f64(),
                rate(t.publishing),
            )?;
        }
        if !self.missing.is_empty() {
            let shown: Vec<&str> = self.missing.iter().take(10).map(String::as_str).collect();
            let more = self.missing.len().saturating_sub(shown.len());
            outln!(
                "  missing: {}{}",
                shown.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            )?;
            if !self.settled() {
                outln!("  (they may still be queued or waiting in a retry tier: is the broker slow, or are the retry tiers long?)")?;
            }
        }
        if self.settled() && !self.matches_expectation() {
            outln!("  note: the outcomes differ from what the sink's rules predict (see the expected column); a worker may have been redelivered a message")?;
        }
        Ok(())
    }

    fn matches_expectation(&self) -> bool {
        let e = &self.expected;
        let c = &self.counts;
        c.delivered == e.delivered
            && c.retries == e.retries
            && c.dead == e.dead
            && self.sink.duplicates == 0
    }

    pub(super) fn exit_code(&self) -> ExitCode {
        if self.settled() && self.missing.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    }
}

pub(super) fn print_next(
    demo: &Demo<'_>,
    summary: &Summary,
    cleaned: Option<&Cleaned>,
    custom: bool,
) -> io::Result<()> {
    let p = demo.prefix;
    // The demo topology uses the default names, so `--prefix` alone finds its DLQ; a custom
    // topology file must be named too.
    let topo = if custom {
        format!(" --topology {}", demo.topology.source)
    } else {
        String::new()
    };
    outln!()?;
    match cleaned {
        None => {
            outln!(
                "Kept: the demo's queues and {} dead letters in {}. Next:",
                summary.in_dlq,
                demo.topology.dead_letter_queue
            )?;
            outln!("  courier-dlq stats --prefix {p}{topo}")?;
            outln!("  courier-dlq list --prefix {p}{topo} --reason permanent")?;
            if let Some(id) = &summary.sample_dead {
                outln!("  courier-dlq show {id} --prefix {p}{topo}")?;
            }
            outln!("  courier-dlq replay --prefix {p}{topo} --reason max-attempts --dry-run")?;
            outln!("  courier demo --prefix {p}{topo} --clean     # delete the demo's queues and exchanges")?;
            if demo.args.console {
                outln!()?;
                outln!("The web console, for the fleet and these dead letters:")?;
                outln!("  courier-dlq console --prefix {p}{topo}")?;
                outln!("  then open http://127.0.0.1:8080/?token=... (the URL with its token is printed when it starts)")?;
            }
        }
        Some(_) => {
            print_cleanup(demo, cleaned)?;
            if !summary.settled() {
                return Ok(());
            }
            outln!(
                "Run `courier demo --keep` to keep the dead letters and explore them with `courier-dlq stats --prefix {p}`."
            )?;
        }
    }
    Ok(())
}
