//! The results: what every scenario measured per round, the ratios within each round, their
//! medians against the targets, as printed tables and as the JSON the chart is drawn from.
//!
//! Ratios are computed inside a round (numerator and denominator measured minutes apart on the
//! same broker under the same background load), and only then summarised by the median: on a
//! shared 2-core machine the absolute rates drift between rounds, the ratios much less.

use crate::tally::Counts;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::time::Duration;

/// Version of the JSON layout, bumped when a field changes meaning.
pub const SCHEMA: u32 = 1;

/// Who a scenario measures (the chart colours bars by it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Plain lapin: the broker's limit.
    Baseline,
    /// Courier's library or binaries.
    Courier,
    /// A client users would pick instead.
    Peer,
}

/// A scenario the benchmark knows.
#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    /// Stable id, used in the JSON and in `--only`.
    pub id: &'static str,
    /// What it measures, for tables and the chart.
    pub label: &'static str,
    /// Who it measures.
    pub kind: Kind,
}

/// Every throughput scenario, in table order.
pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        id: "baseline.publish",
        label: "raw lapin: confirmed publish",
        kind: Kind::Baseline,
    },
    Scenario {
        id: "courier.publish",
        label: "Courier Publisher: confirmed publish",
        kind: Kind::Courier,
    },
    Scenario {
        id: "baseline.drain",
        label: "raw lapin: drain backlog",
        kind: Kind::Baseline,
    },
    Scenario {
        id: "courier.drain",
        label: "Courier worker (noop): drain backlog",
        kind: Kind::Courier,
    },
    Scenario {
        id: "baseline.e2e",
        label: "raw lapin: end to end",
        kind: Kind::Baseline,
    },
    Scenario {
        id: "courier.e2e",
        label: "Courier Publisher + worker: end to end",
        kind: Kind::Courier,
    },
    Scenario {
        id: "baseline.retry",
        label: "raw lapin: fail once, retry (drain)",
        kind: Kind::Baseline,
    },
    Scenario {
        id: "courier.retry",
        label: "Courier worker: fail once, retry (drain)",
        kind: Kind::Courier,
    },
    Scenario {
        id: "courier.http",
        label: "Courier worker (http -> local 200): drain",
        kind: Kind::Courier,
    },
    Scenario {
        id: "baseline.move",
        label: "raw lapin: move queue to queue (confirmed)",
        kind: Kind::Baseline,
    },
    Scenario {
        id: "dlq.replay",
        label: "courier-dlq replay",
        kind: Kind::Courier,
    },
    Scenario {
        id: "dlq.export",
        label: "courier-dlq export --remove",
        kind: Kind::Courier,
    },
    Scenario {
        id: "peer.pika",
        label: "Python pika (ack each): drain backlog",
        kind: Kind::Peer,
    },
];

/// The scenario called `id`.
pub fn scenario(id: &str) -> Option<&'static Scenario> {
    SCENARIOS.iter().find(|s| s.id == id)
}

/// A ratio the issue asks for: numerator / denominator, both measured in the same round.
#[derive(Debug, Clone, Copy)]
pub struct RatioSpec {
    /// Stable id.
    pub id: &'static str,
    /// What it compares.
    pub label: &'static str,
    /// Scenario id on top.
    pub numerator: &'static str,
    /// Scenario id below.
    pub denominator: &'static str,
    /// The target (at least), if the issue sets one.
    pub target: Option<f64>,
}

/// The ratios, in table order.
pub const RATIOS: &[RatioSpec] = &[
    RatioSpec {
        id: "e2e",
        label: "Courier end to end / raw lapin end to end",
        numerator: "courier.e2e",
        denominator: "baseline.e2e",
        target: Some(0.9),
    },
    RatioSpec {
        id: "drain",
        label: "Courier drain / raw lapin drain",
        numerator: "courier.drain",
        denominator: "baseline.drain",
        target: Some(0.9),
    },
    RatioSpec {
        id: "publish",
        label: "Courier Publisher / raw confirmed publish",
        numerator: "courier.publish",
        denominator: "baseline.publish",
        target: None,
    },
    RatioSpec {
        id: "retry",
        label: "retry path / success path (drain)",
        numerator: "courier.retry",
        denominator: "courier.drain",
        target: Some(0.45),
    },
    RatioSpec {
        id: "retry-raw",
        label: "Courier retry path / raw lapin doing the same hops",
        numerator: "courier.retry",
        denominator: "baseline.retry",
        target: None,
    },
    RatioSpec {
        id: "http",
        label: "HTTP handler / noop handler (drain)",
        numerator: "courier.http",
        denominator: "courier.drain",
        target: None,
    },
    RatioSpec {
        id: "replay",
        label: "courier-dlq replay / raw confirmed publish",
        numerator: "dlq.replay",
        denominator: "baseline.publish",
        target: Some(0.7),
    },
    RatioSpec {
        id: "replay-raw",
        label: "courier-dlq replay / raw lapin moving queue to queue",
        numerator: "dlq.replay",
        denominator: "baseline.move",
        target: None,
    },
    RatioSpec {
        id: "export",
        label: "courier-dlq export / raw confirmed publish",
        numerator: "dlq.export",
        denominator: "baseline.publish",
        target: None,
    },
    RatioSpec {
        id: "peer",
        label: "Courier drain / Python pika drain",
        numerator: "courier.drain",
        denominator: "peer.pika",
        target: Some(10.0),
    },
];

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

/// Median of the values present.
pub fn median(values: impl IntoIterator<Item = Option<f64>>) -> Option<f64> {
    let mut v: Vec<f64> = values.into_iter().flatten().collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

/// Per-scenario summaries and ratios from the rounds.
pub fn summarise(rounds: &[Round]) -> (Vec<Summary>, Vec<Ratio>) {
    let summary = SCENARIOS
        .iter()
        .filter_map(|s| {
            let ms: Vec<Option<&Measurement>> = rounds
                .iter()
                .map(|r| r.measurements.iter().find(|m| m.id == s.id))
                .collect();
            if ms.iter().all(Option::is_none) {
                return None;
            }
            let ok = |m: &&Measurement| m.ok();
            Some(Summary {
                id: s.id.to_owned(),
                label: s.label.to_owned(),
                kind: s.kind,
                messages: ms.iter().flatten().map(|m| m.messages).max().unwrap_or(0),
                rates: ms.iter().map(|m| m.filter(ok).map(|m| m.rate)).collect(),
                median_rate: median(ms.iter().map(|m| m.filter(ok).map(|m| m.rate))),
                p50_ms: median(ms.iter().map(|m| m.filter(ok).and_then(|m| m.p50_ms))),
                p99_ms: median(ms.iter().map(|m| m.filter(ok).and_then(|m| m.p99_ms))),
                client_cpu_us: median(
                    ms.iter()
                        .map(|m| m.filter(ok).and_then(|m| m.client_cpu_us)),
                ),
                broker_cpu_us: median(
                    ms.iter()
                        .map(|m| m.filter(ok).and_then(|m| m.broker_cpu_us)),
                ),
                lost: ms.iter().flatten().map(|m| m.lost).sum(),
                duplicated: ms.iter().flatten().map(|m| m.duplicated).sum(),
            })
        })
        .collect();
    let ratios = RATIOS
        .iter()
        .map(|r| {
            let per_round: Vec<Option<f64>> = rounds
                .iter()
                .map(|round| {
                    let (a, b) = (round.rate(r.numerator)?, round.rate(r.denominator)?);
                    (b > 0.0).then(|| a / b)
                })
                .collect();
            let med = median(per_round.iter().copied());
            Ratio {
                id: r.id.to_owned(),
                label: r.label.to_owned(),
                numerator: r.numerator.to_owned(),
                denominator: r.denominator.to_owned(),
                per_round,
                median: med,
                target: r.target,
                met: r.target.and_then(|t| med.map(|m| m >= t)),
            }
        })
        .filter(|r| r.per_round.iter().any(Option::is_some))
        .collect();
    (summary, ratios)
}

fn rate(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |r| format!("{r:.0}"))
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |r| format!("{r:.1}"))
}

/// The tables as Markdown (readable on a terminal too; docs/benchmarks.md embeds them).
pub fn markdown(results: &Results) -> String {
    let mut out = String::new();
    if !results.summary.is_empty() || !results.not_measured.is_empty() {
        scenario_table(&mut out, results);
    }
    if !results.ratios.is_empty() {
        ratio_table(&mut out, results);
    }
    memory_table(&mut out, results);
    let failures: Vec<&Measurement> = results
        .rounds
        .iter()
        .flat_map(|r| &r.measurements)
        .filter(|m| !m.ok())
        .collect();
    if !failures.is_empty() {
        let _ = writeln!(out);
        for m in failures {
            let _ = writeln!(
                out,
                "- FAILED {}: lost {}{}",
                m.id,
                m.lost,
                m.error
                    .as_ref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            );
        }
    }
    out
}

fn scenario_table(out: &mut String, results: &Results) {
    let _ = writeln!(
        out,
        "| scenario | msgs | median msg/s | per round | p50 ms | p99 ms | client CPU µs/msg | broker CPU µs/msg | lost | dup |"
    );
    let _ = writeln!(out, "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|");
    for s in &results.summary {
        let per: Vec<String> = s.rates.iter().map(|r| rate(*r)).collect();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            s.label,
            s.messages,
            rate(s.median_rate),
            per.join(" / "),
            ms(s.p50_ms),
            ms(s.p99_ms),
            rate(s.client_cpu_us),
            rate(s.broker_cpu_us),
            s.lost,
            s.duplicated
        );
    }
    for n in &results.not_measured {
        let label = scenario(&n.id).map_or(n.id.as_str(), |s| s.label);
        let _ = writeln!(
            out,
            "| {label} | - | not measured | {} | - | - | - | - | - | - |",
            n.why
        );
    }
}

fn ratio_table(out: &mut String, results: &Results) {
    if !out.is_empty() {
        let _ = writeln!(out);
    }
    let _ = writeln!(
        out,
        "| ratio (same round) | per round | median | target | met |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|:---:|");
    for r in &results.ratios {
        let per: Vec<String> = r
            .per_round
            .iter()
            .map(|v| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}")))
            .collect();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            r.label,
            per.join(" / "),
            r.median
                .map_or_else(|| "-".to_owned(), |v| format!("{v:.2}")),
            r.target
                .map_or_else(|| "-".to_owned(), |t| format!(">= {t}")),
            match r.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "-",
            }
        );
    }
}

fn memory_table(out: &mut String, results: &Results) {
    if let Some(m) = &results.memory {
        if !out.is_empty() {
            let _ = writeln!(out);
        }
        let _ = writeln!(
            out,
            "| memory: `courier work --handler noop --prefetch {}` | value |",
            m.prefetch
        );
        let _ = writeln!(out, "|---|---:|");
        let _ = writeln!(out, "| backlog (messages) | {} |", m.backlog);
        let _ = writeln!(out, "| peak RSS (VmHWM) | {:.1} MiB |", m.peak_rss_mib);
        let _ = writeln!(
            out,
            "| RSS at 10 % / 90 % of the backlog | {} / {} MiB |",
            ms(m.rss_at_10pct_mib),
            ms(m.rss_at_90pct_mib)
        );
        let _ = writeln!(out, "| drain rate of the binary | {:.0} msg/s |", m.rate);
        let _ = writeln!(
            out,
            "| delivered / left in queue | {} / {} |",
            m.delivered, m.left_in_queue
        );
        let _ = writeln!(
            out,
            "| target: peak < {} MiB | {} |",
            m.target_mib,
            if m.met { "yes" } else { "**no**" }
        );
        if let Some(e) = &m.error {
            let _ = writeln!(out, "| error | {e} |");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: &str, rate: f64) -> Measurement {
        Measurement {
            id: id.to_owned(),
            messages: 10,
            seconds: 10.0 / rate,
            rate,
            lost: 0,
            duplicated: 0,
            foreign: 0,
            p50_ms: None,
            p99_ms: None,
            client_cpu_us: None,
            broker_cpu_us: None,
            error: None,
        }
    }

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median([Some(3.0), None, Some(1.0), Some(2.0)]), Some(2.0));
        assert_eq!(median([Some(1.0), Some(2.0)]), Some(1.5));
        assert_eq!(median([None]), None);
    }

    #[test]
    fn ratios_are_taken_within_each_round() {
        let rounds = vec![
            Round {
                round: 1,
                load_before: None,
                measurements: vec![m("courier.e2e", 90.0), m("baseline.e2e", 100.0)],
            },
            Round {
                round: 2,
                load_before: None,
                measurements: vec![m("courier.e2e", 40.0), m("baseline.e2e", 50.0)],
            },
        ];
        let (summary, ratios) = summarise(&rounds);
        assert_eq!(summary.len(), 2);
        let e2e = ratios.iter().find(|r| r.id == "e2e").expect("e2e ratio");
        assert_eq!(e2e.per_round, vec![Some(0.9), Some(0.8)]);
        assert_eq!(e2e.met, Some(false));
    }

    #[test]
    fn failed_rounds_do_not_count() {
        let mut bad = m("courier.drain", 1000.0);
        bad.lost = 1;
        let rounds = vec![Round {
            round: 1,
            load_before: None,
            measurements: vec![bad, m("baseline.drain", 100.0)],
        }];
        let (summary, ratios) = summarise(&rounds);
        let drain = summary
            .iter()
            .find(|s| s.id == "courier.drain")
            .expect("summary");
        assert_eq!((drain.median_rate, drain.lost), (None, 1));
        assert!(ratios.iter().all(|r| r.id != "drain"));
    }
}
