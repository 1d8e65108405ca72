//! The results as Markdown tables (scenarios, ratios, memory, failures), printed after a run and
//! embedded in docs/benchmarks.md.

use super::{scenario, Measurement, Results};
use std::fmt::Write as _;

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
