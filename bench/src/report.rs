//! The results: what every scenario measured per round, the ratios within each round, their
//! medians against the targets, as printed tables and as the JSON the chart is drawn from.
//!
//! Ratios are computed inside a round (numerator and denominator measured minutes apart on the
//! same broker under the same background load), and only then summarised by the median: on a
//! shared 2-core machine the absolute rates drift between rounds, the ratios much less.
//!
//! - [`catalogue`]: the scenarios the benchmark knows and the ratios it reports.
//! - [`schema`]: the JSON layout (`courier-bench chart` reads it back): measurements, rounds,
//!   summaries, ratios, the memory scenario, the machine and the parameters.
//! - [`summary`]: medians and the ratios within each round.
//! - [`tables`]: the printed Markdown tables.

mod catalogue;
mod schema;
mod summary;
mod tables;

pub use catalogue::{scenario, Kind, RATIOS, SCENARIOS};
pub use schema::{
    Cluster, Machine, Measurement, Memory, NotMeasured, Params, Ratio, Results, Round, Summary,
    TraceSpans, SCHEMA,
};
pub use summary::summarise;
pub use tables::markdown;
