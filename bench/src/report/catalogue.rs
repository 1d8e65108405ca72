//! The scenarios the benchmark knows (id, label, who it measures) and the ratios it reports, with
//! their targets: one table each, in the order the tables print them.

use serde::{Deserialize, Serialize};

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
        id: "baseline.half.p200",
        label: "raw lapin (ack every P/2): drain, prefetch 200",
        kind: Kind::Baseline,
    },
    Scenario {
        id: "binary.drain.p200",
        label: "`courier work` binary (noop): drain, prefetch 200",
        kind: Kind::Courier,
    },
    Scenario {
        id: "baseline.half.p500",
        label: "raw lapin (ack every P/2): drain, prefetch 500",
        kind: Kind::Baseline,
    },
    Scenario {
        id: "binary.drain.p500",
        label: "`courier work` binary (noop): drain, prefetch 500",
        kind: Kind::Courier,
    },
    Scenario {
        id: "baseline.half.e2e",
        label: "raw publish + raw lapin (ack every P/2): end to end, prefetch 200",
        kind: Kind::Baseline,
    },
    Scenario {
        id: "binary.e2e",
        label: "raw publish + `courier work` binary (noop): end to end, prefetch 200",
        kind: Kind::Courier,
    },
    Scenario {
        id: "baseline.http-retry",
        label: "raw lapin + reqwest: HTTP 503, retry hop, HTTP 200",
        kind: Kind::Baseline,
    },
    Scenario {
        id: "binary.retry",
        label: "`courier work` binary (http): 503, retry hop, 200",
        kind: Kind::Courier,
    },
    Scenario {
        id: "binary.untraced.p200",
        label: "`courier work` binary (noop): drain, prefetch 200, no trace exporter",
        kind: Kind::Courier,
    },
    Scenario {
        id: "binary.traced.p200",
        label: "`courier work` binary (noop): drain, prefetch 200, exporting to a dead collector",
        kind: Kind::Courier,
    },
    Scenario {
        id: "baseline.cluster.e2e",
        label: "cluster, quorum: raw publish + raw lapin (ack every P/2): end to end",
        kind: Kind::Baseline,
    },
    Scenario {
        id: "binary.cluster.e2e",
        label: "cluster, quorum: raw publish + `courier work` binary (noop): end to end",
        kind: Kind::Courier,
    },
    Scenario {
        id: "baseline.cluster.http",
        label: "cluster, quorum: raw publish + raw lapin + reqwest -> local 200: end to end",
        kind: Kind::Baseline,
    },
    Scenario {
        id: "binary.cluster.http",
        label:
            "cluster, quorum: raw publish + `courier work` binary (http -> local 200): end to end",
        kind: Kind::Courier,
    },
    Scenario {
        id: "baseline.shards.1",
        label: "1 shard: raw publish + raw lapin (a channel per shard, ack every P/2): end to end",
        kind: Kind::Baseline,
    },
    Scenario {
        id: "binary.shards.1",
        label: "1 shard: raw publish + `courier work` binary (noop): end to end",
        kind: Kind::Courier,
    },
    Scenario {
        id: "baseline.shards.2",
        label: "2 shards: raw publish + raw lapin (a channel per shard, ack every P/2): end to end",
        kind: Kind::Baseline,
    },
    Scenario {
        id: "binary.shards.2",
        label: "2 shards: raw publish + `courier work` binary (noop): end to end",
        kind: Kind::Courier,
    },
    Scenario {
        id: "baseline.shards.4",
        label: "4 shards: raw publish + raw lapin (a channel per shard, ack every P/2): end to end",
        kind: Kind::Baseline,
    },
    Scenario {
        id: "binary.shards.4",
        label: "4 shards: raw publish + `courier work` binary (noop): end to end",
        kind: Kind::Courier,
    },
    Scenario {
        id: "binary.shards.4.ordered",
        label: "4 shards, ordered: raw publish + `courier work` binary (noop): end to end",
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
        id: "binary-p200",
        label: "`courier work` binary drain / raw lapin drain, prefetch 200",
        numerator: "binary.drain.p200",
        denominator: "baseline.half.p200",
        target: Some(0.9),
    },
    RatioSpec {
        id: "binary-p500",
        label: "`courier work` binary drain / raw lapin drain, prefetch 500",
        numerator: "binary.drain.p500",
        denominator: "baseline.half.p500",
        target: Some(0.9),
    },
    RatioSpec {
        id: "binary-e2e",
        label: "`courier work` binary end to end / raw lapin end to end, prefetch 200",
        numerator: "binary.e2e",
        denominator: "baseline.half.e2e",
        target: Some(0.9),
    },
    RatioSpec {
        id: "binary-retry",
        label: "`courier work` binary retry hop / raw lapin + reqwest doing the same",
        numerator: "binary.retry",
        denominator: "baseline.http-retry",
        target: Some(0.9),
    },
    RatioSpec {
        id: "traces",
        label: "`courier work` binary drain: exporting spans to a dead collector / no exporter",
        numerator: "binary.traced.p200",
        denominator: "binary.untraced.p200",
        target: Some(0.95),
    },
    RatioSpec {
        id: "cluster-e2e",
        label: "cluster, quorum: `courier work` binary (noop) end to end / raw lapin end to end",
        numerator: "binary.cluster.e2e",
        denominator: "baseline.cluster.e2e",
        target: Some(0.9),
    },
    RatioSpec {
        id: "cluster-http",
        label: "cluster, quorum: `courier work` binary (http) end to end / raw lapin + reqwest",
        numerator: "binary.cluster.http",
        denominator: "baseline.cluster.http",
        target: Some(0.9),
    },
    RatioSpec {
        id: "shards-1",
        label: "1 shard: `courier work` binary (noop) end to end / raw lapin on the same shard",
        numerator: "binary.shards.1",
        denominator: "baseline.shards.1",
        target: None,
    },
    RatioSpec {
        id: "shards-2",
        label: "2 shards: `courier work` binary (noop) end to end / raw lapin on the same shards",
        numerator: "binary.shards.2",
        denominator: "baseline.shards.2",
        target: None,
    },
    RatioSpec {
        id: "shards-4",
        label: "4 shards: `courier work` binary (noop) end to end / raw lapin on the same shards",
        numerator: "binary.shards.4",
        denominator: "baseline.shards.4",
        target: None,
    },
    RatioSpec {
        id: "shards-scale-raw",
        label: "raw lapin: 4 shards / 1 shard",
        numerator: "baseline.shards.4",
        denominator: "baseline.shards.1",
        target: None,
    },
    RatioSpec {
        id: "shards-scale-binary",
        label: "`courier work` binary: 4 shards / 1 shard",
        numerator: "binary.shards.4",
        denominator: "binary.shards.1",
        target: None,
    },
    RatioSpec {
        id: "shards-ordered",
        label: "`courier work` binary, 4 shards: ordered / throughput mode",
        numerator: "binary.shards.4.ordered",
        denominator: "binary.shards.4",
        target: None,
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
        target: Some(0.9),
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
        target: Some(0.9),
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
