//! The results as JSON (written by a run, read back by `courier-bench chart`): every measurement of
//! every round, the summaries and ratios over rounds, the memory scenario, where and how it ran.

use super::Kind;
use crate::tally::Counts;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Version of the JSON layout, bumped when a field changes meaning.
pub const SCHEMA: u32 = 1;

/// One scenario in one round.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Measurement {
    /// Scenario id.
    pub id: String,
    /// Messages in the scenario.
    pub messages: u64,
    /// Measured wall time.
    pub seconds: f64,
    /// messages / seconds.
    pub rate: f64,
    /// Ids never seen.
    pub lost: u64,
    /// Extra deliveries beyond the first of each id.
    pub duplicated: u64,
    /// Arrivals that were not one of the scenario's ids (should be 0: the queues are private).
    #[serde(default)]
    pub foreign: u64,
    /// Median publish-to-handler latency (end-to-end scenarios only).
    pub p50_ms: Option<f64>,
    /// 99th percentile publish-to-handler latency.
    pub p99_ms: Option<f64>,
    /// Client CPU per message, µs (this process, or the child process for `courier-dlq` and
    /// the Python peer).
    #[serde(default)]
    pub client_cpu_us: Option<f64>,
    /// Broker CPU per message, µs (when the broker runs on this machine).
    #[serde(default)]
    pub broker_cpu_us: Option<f64>,
    /// Why the scenario did not complete, if it did not.
    pub error: Option<String>,
    /// The worker's span counters at the end (the `traces` group only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_spans: Option<TraceSpans>,
}

/// The `courier_trace_spans_*_total` counters of a worker, scraped from its `/metrics` once it
/// has gone idle (spans of the last batch may still be queued then).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceSpans {
    /// Accepted by the collector.
    pub exported: u64,
    /// In export requests that failed (collector unreachable).
    pub failed: u64,
    /// Dropped because the export queue was full.
    pub dropped: u64,
}

impl TraceSpans {
    /// Spans that reached the exporter's queue at all: 0 means no span was made.
    pub fn total(&self) -> u64 {
        self.exported + self.failed + self.dropped
    }
}

impl Measurement {
    /// A completed scenario.
    pub fn new(id: &str, elapsed: Duration, counts: Counts) -> Self {
        let seconds = elapsed.as_secs_f64().max(1e-9);
        Self {
            id: id.to_owned(),
            messages: counts.expected,
            seconds,
            rate: (counts.expected - counts.lost) as f64 / seconds,
            lost: counts.lost,
            duplicated: counts.duplicated,
            foreign: counts.foreign,
            p50_ms: counts.p50_ms,
            p99_ms: counts.p99_ms,
            client_cpu_us: None,
            broker_cpu_us: None,
            error: None,
            trace_spans: None,
        }
    }

    /// Adds the CPU cost measured over the scenario.
    #[must_use]
    pub fn with_cpu(mut self, cpu: crate::cpu::PerMessage) -> Self {
        self.client_cpu_us = cpu.client_us;
        self.broker_cpu_us = cpu.broker_us;
        self
    }

    /// A scenario that failed; `counts` says how far it got (all lost when unknown).
    pub fn failed(id: &str, counts: Counts, error: String) -> Self {
        Self {
            id: id.to_owned(),
            messages: counts.expected,
            seconds: 0.0,
            rate: 0.0,
            lost: counts.lost,
            duplicated: counts.duplicated,
            foreign: counts.foreign,
            p50_ms: None,
            p99_ms: None,
            client_cpu_us: None,
            broker_cpu_us: None,
            error: Some(error),
            trace_spans: None,
        }
    }

    /// Completed, nothing lost.
    pub fn ok(&self) -> bool {
        self.error.is_none() && self.lost == 0
    }
}

/// One round: every scenario once, in the order they ran.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Round {
    /// 1-based.
    pub round: u32,
    /// 1-minute load average when the round started.
    pub load_before: Option<f64>,
    /// In running order.
    pub measurements: Vec<Measurement>,
}

impl Round {
    /// The measurement of scenario `id`, if it ran and completed.
    pub fn rate(&self, id: &str) -> Option<f64> {
        self.measurements
            .iter()
            .find(|m| m.id == id && m.ok())
            .map(|m| m.rate)
    }
}

/// A scenario across rounds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    /// Scenario id.
    pub id: String,
    /// What it measures.
    pub label: String,
    /// Who it measures.
    pub kind: Kind,
    /// Messages per round.
    pub messages: u64,
    /// Rate in each round (None where it failed).
    pub rates: Vec<Option<f64>>,
    /// Median of the completed rounds.
    pub median_rate: Option<f64>,
    /// Median of the rounds' p50 latencies.
    pub p50_ms: Option<f64>,
    /// Median of the rounds' p99 latencies.
    pub p99_ms: Option<f64>,
    /// Median client CPU per message, µs.
    #[serde(default)]
    pub client_cpu_us: Option<f64>,
    /// Median broker CPU per message, µs.
    #[serde(default)]
    pub broker_cpu_us: Option<f64>,
    /// Lost ids, all rounds together.
    pub lost: u64,
    /// Duplicated deliveries, all rounds together.
    pub duplicated: u64,
}

/// A ratio across rounds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ratio {
    /// Ratio id.
    pub id: String,
    /// What it compares.
    pub label: String,
    /// Scenario on top.
    pub numerator: String,
    /// Scenario below.
    pub denominator: String,
    /// The ratio in each round.
    pub per_round: Vec<Option<f64>>,
    /// Median over the rounds.
    pub median: Option<f64>,
    /// Target (at least), if any.
    pub target: Option<f64>,
    /// Whether the median meets the target.
    pub met: Option<bool>,
}

/// The memory scenario: the real `courier work` binary under a large backlog.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Memory {
    /// Messages in the backlog.
    pub backlog: u64,
    /// `--prefetch` of the worker.
    pub prefetch: u16,
    /// Peak resident set (VmHWM) of the worker, MiB.
    pub peak_rss_mib: f64,
    /// Resident set when 10 % of the backlog was handled, MiB (flat = close to the peak).
    pub rss_at_10pct_mib: Option<f64>,
    /// Resident set at 90 %, MiB.
    pub rss_at_90pct_mib: Option<f64>,
    /// Drain rate of the binary, messages/s.
    pub rate: f64,
    /// Messages the worker reported delivered.
    pub delivered: u64,
    /// Messages left in the queue after the worker stopped (0 = every one acked).
    pub left_in_queue: u64,
    /// Target: peak below this, MiB.
    pub target_mib: f64,
    /// Peak below target and nothing lost.
    pub met: bool,
    /// Why it did not complete, if it did not.
    pub error: Option<String>,
}

/// A scenario that could not be measured in this run, and why.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NotMeasured {
    /// Scenario id.
    pub id: String,
    /// Why.
    pub why: String,
}

/// Where and how the run happened.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    /// CPUs the process may use.
    pub cpus: usize,
    /// RabbitMQ version.
    pub rabbitmq: Option<String>,
    /// Kernel release.
    pub kernel: Option<String>,
    /// 1-minute load average before the first round.
    pub load_before: Option<f64>,
    /// 1-minute load average after the last round.
    pub load_after: Option<f64>,
    /// Debug or release build of the benchmark.
    pub profile: String,
    /// The cluster the `cluster` group ran on, if it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<Cluster>,
}

/// The cluster of the `cluster` group.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cluster {
    /// Its nodes' `host:port`, as given (no credentials).
    pub nodes: Vec<String>,
    /// RabbitMQ version of its first node.
    pub rabbitmq: Option<String>,
    /// The type of every queue of the scenario.
    pub queue_type: String,
}

/// The parameters of the run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Params {
    /// Messages per scenario and round.
    pub messages: u64,
    /// Rounds.
    pub rounds: u32,
    /// Body size, bytes.
    pub body_bytes: usize,
    /// Outstanding confirms of every publisher.
    pub window: usize,
    /// Prefetch of every consumer (Courier, raw lapin, pika).
    pub prefetch: u16,
    /// Courier worker concurrency.
    pub concurrency: usize,
    /// Smoke mode.
    pub smoke: bool,
}

/// Everything the run produced; written as JSON, read back by `courier-bench chart`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    /// Layout version, [`SCHEMA`].
    pub schema: u32,
    /// When the run started (UTC, RFC 3339).
    pub started_at: String,
    /// `git describe` of the measured tree (with `-dirty`).
    pub git: Option<String>,
    /// Where it ran.
    pub machine: Machine,
    /// How it ran.
    pub params: Params,
    /// Raw measurements.
    pub rounds: Vec<Round>,
    /// Per scenario, over rounds.
    pub summary: Vec<Summary>,
    /// Ratios, over rounds.
    pub ratios: Vec<Ratio>,
    /// The memory scenario, if it ran.
    pub memory: Option<Memory>,
    /// Scenarios left out, and why.
    pub not_measured: Vec<NotMeasured>,
    /// Every scenario completed with nothing lost.
    pub ok: bool,
}
