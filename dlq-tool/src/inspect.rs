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
