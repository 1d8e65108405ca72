//! The fault suite: real worker processes, a real broker, injected faults, and a count of
//! what was lost (must be 0) and duplicated. These tests disturb the whole broker (restarts,
//! alarms, closing every connection), so they run in their own target, one at a time:
//! `cargo test --test faults -- --test-threads=1` (scripts/test does this after the rest).
//! Each case takes a census of every message it sent (census.rs) and, once all its assertions
//! passed, writes a row to target/tmp/reliability-<broker version>.jsonl, from which
//! `scripts/reliability-table` prints docs/reliability.md.
//!
//! A module per fault family. The harness (worker processes, broker control, the TCP proxy,
//! result rows) is `harness.rs`; what every case shares (the timeout, a sink answering 200) is
//! here.

// Shared with the integration tests; this binary uses only part of it (util allows that).
#[path = "../integration/util.rs"]
mod util;

mod census;
mod harness;

mod broker;
mod connections;
mod dlq_tool;
mod endpoint;
mod hostile_input;
mod workers;

use courier_testkit::sink::Script;
use std::sync::Arc;
use std::time::Duration;
use util::*;

const LONG: Duration = Duration::from_secs(90);

fn slow_sink_ok(delay_ms: u64) -> (Script, Duration) {
    (Arc::new(|_| (200, vec![])), Duration::from_millis(delay_ms))
}

async fn sink(delay_ms: u64) -> Sink {
    let (s, d) = slow_sink_ok(delay_ms);
    Sink::start(s, d).await
}
