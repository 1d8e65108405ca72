//! The fault suite: real worker processes, a real broker, injected faults, and a count of
//! what was lost (must be 0) and duplicated. These tests disturb the whole broker (restarts,
//! alarms, closing every connection), so they run in their own target, one at a time:
//! `cargo test --test faults -- --test-threads=1` (scripts/test does this after the rest).
//! Each case appends a row to target/tmp/reliability.jsonl; docs/reliability.md shows a run.
//!
//! A module per fault family. The harness (worker processes, broker control, the TCP proxy,
//! result rows) is `harness.rs`; what every case shares (the timeout, a sink answering 200,
//! reconciling and recording a row) is here.

// Shared with the integration tests; this binary uses only part of it (util allows that).
#[path = "../integration/util.rs"]
mod util;

mod harness;

mod broker;
mod connections;
mod dlq_tool;
mod endpoint;
mod hostile_input;
mod workers;

use courier_testkit::sink::Script;
use harness::*;
use std::sync::Arc;
use std::time::Duration;
use util::*;

const LONG: Duration = Duration::from_secs(90);

/// Reconciles `seen` against the `ids` sent and records the row; returns (lost, duplicated).
fn report(
    fault: &str,
    injection: &str,
    ids: &[String],
    seen: &[String],
    recovery: Duration,
) -> (usize, usize) {
    let (lost, duplicated) = reconcile(ids, seen);
    record(Row {
        fault: fault.to_owned(),
        injection: injection.to_owned(),
        sent: ids.len(),
        lost,
        duplicated,
        recovery_secs: recovery.as_secs_f64(),
    });
    (lost, duplicated)
}

fn slow_sink_ok(delay_ms: u64) -> (Script, Duration) {
    (Arc::new(|_| (200, vec![])), Duration::from_millis(delay_ms))
}

async fn sink(delay_ms: u64) -> Sink {
    let (s, d) = slow_sink_ok(delay_ms);
    Sink::start(s, d).await
}
