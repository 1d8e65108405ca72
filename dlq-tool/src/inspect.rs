//! Inspection as the tool's commands use it: the library's bounded, order-preserving read
//! ([`courier::broker::inspect`]) with the tool's error type and its "sampled" note.

use courier::broker::{Admin, InspectError};
pub use courier::broker::{Sample, MAX_INSPECT};
use lapin::message::Delivery;
use std::ops::ControlFlow;

/// Shows up to `limit` messages from the head of `queue` to `visit` (which may stop early), then
/// gives every one back in place.
///
/// # Errors
/// The queue is missing or busy, the connection fails, or `visit` fails (the messages are given
/// back first in every case).
pub async fn inspect(
    broker: &Admin,
    queue: &str,
    limit: u64,
    visit: impl FnMut(&Delivery) -> anyhow::Result<ControlFlow<()>>,
) -> anyhow::Result<Sample> {
    courier::broker::inspect(broker, queue, limit, visit)
        .await
        .map_err(|e| match e {
            InspectError::Broker(b) => anyhow::Error::new(b),
            InspectError::Visit(v) => v,
        })
}

/// The number of messages an inspection command examines for `--limit limit`: at most
/// [`MAX_INSPECT`], since every one is held unacknowledged and `basic.qos` prefetch is 16-bit.
/// A larger value is cut to that, with a warning on stderr naming the flag and the bound
/// rather than silently.
pub fn examine_at_most(limit: u64) -> u64 {
    if let Some(warning) = limit_warning(limit) {
        eprintln!("{warning}");
    }
    limit.min(MAX_INSPECT)
}

/// The warning for an inspection `--limit` above [`MAX_INSPECT`], if it is.
fn limit_warning(limit: u64) -> Option<String> {
    (limit > MAX_INSPECT).then(|| {
        format!(
            "warning: --limit {limit}: an inspection examines at most {} messages (it holds each one unacknowledged, and the broker's prefetch is a 16-bit number); examining the first {}",
            crate::output::thousands(MAX_INSPECT),
            crate::output::thousands(MAX_INSPECT),
        )
    })
}

/// The warning for a `--dry-run --limit` above [`MAX_INSPECT`], if it is: the pass would act
/// on that many, its preview can only look at the first [`MAX_INSPECT`].
pub fn warn_dry_run_limit(limit: Option<u64>) {
    if let Some(limit) = limit.filter(|l| *l > MAX_INSPECT) {
        eprintln!(
            "warning: --limit {limit}: a dry run examines at most {} messages (an inspection holds each one unacknowledged, and the broker's prefetch is a 16-bit number); the pass itself would go on to --limit",
            crate::output::thousands(MAX_INSPECT),
        );
    }
}

/// "sampled 1,000 of 25,000 messages; ..." or "" when everything was examined (or the command
/// stopped early on purpose).
pub fn note(sample: &Sample, stopped_early: bool) -> String {
    if !sample.sampled() || stopped_early {
        return String::new();
    }
    format!(
        "sampled {} of {} messages (the first ones in the queue); --limit examines more, up to {}",
        crate::output::thousands(sample.examined),
        crate::output::thousands(sample.total),
        crate::output::thousands(MAX_INSPECT),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_past_the_prefetch_is_cut_with_a_warning() {
        assert_eq!(examine_at_most(70_000), MAX_INSPECT);
        assert_eq!(examine_at_most(500), 500);
        let w = limit_warning(70_000).expect("a warning");
        assert!(w.contains("--limit 70000") && w.contains("65,535"), "{w}");
        assert_eq!(limit_warning(MAX_INSPECT), None);
    }
}
