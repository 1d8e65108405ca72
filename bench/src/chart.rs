//! `courier-bench chart`: the results JSON drawn as a plain SVG (bars, labels, target lines),
//! written by hand so the repository needs no plotting dependency.
//!
//! Three panels: median throughput per scenario; each ratio as a share of its target (so a
//! 0.45 target and a 10x target fit one axis, with the target at the same place); and the
//! worker's peak memory against its bound.

use crate::report::{Kind, Results};
use std::fmt::Write as _;

const WIDTH: f64 = 1120.0;
const LABEL_W: f64 = 330.0;
const BAR_X: f64 = LABEL_W + 20.0;
const BAR_W: f64 = 470.0;
const ROW_H: f64 = 26.0;
const BAR_H: f64 = 16.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn colour(kind: Kind) -> &'static str {
    match kind {
        Kind::Baseline => "#8c8c8c",
        Kind::Courier => "#2f6db5",
        Kind::Peer => "#e08a1e",
    }
}

/// Draws `results` as an SVG document.
pub fn svg(results: &Results) -> String {
    let mut body = String::new();
    let mut y = 30.0;
    let p = &results.params;
    let m = &results.machine;
    let _ = writeln!(
        body,
        r#"<text x="20" y="{y}" class="title">Courier vs. this broker's limit (raw lapin), same run</text>"#
    );
    y += 20.0;
    let _ = writeln!(
        body,
        r#"<text x="20" y="{y}" class="note">{} messages x {} rounds, {} B persistent bodies, confirms, manual acks; {} CPUs, RabbitMQ {} on the same machine; {} build; git {}; load {} -> {}</text>"#,
        p.messages,
        p.rounds,
        p.body_bytes,
        m.cpus,
        esc(m.rabbitmq.as_deref().unwrap_or("?")),
        esc(&m.profile),
        esc(results.git.as_deref().unwrap_or("?")),
        m.load_before.map_or("?".to_owned(), |l| format!("{l:.2}")),
        m.load_after.map_or("?".to_owned(), |l| format!("{l:.2}")),
    );
    y += 34.0;

    // Panel 1: throughput.
    let _ = writeln!(
        body,
        r#"<text x="20" y="{y}" class="head">Throughput, median of the rounds (messages/s)</text>"#
    );
    y += 14.0;
    let max_rate = results
        .summary
        .iter()
        .filter_map(|s| s.median_rate)
        .fold(1.0_f64, f64::max);
    for s in &results.summary {
        let cy = y + ROW_H / 2.0;
        let _ = writeln!(
            body,
            r#"<text x="{LABEL_W}" y="{ty}" class="label" text-anchor="end">{}</text>"#,
            esc(&s.label),
            ty = cy + 4.0
        );
        match s.median_rate {
            Some(rate) => {
                let w = (rate / max_rate * BAR_W).max(1.0);
                let _ = writeln!(
                    body,
                    r#"<rect x="{BAR_X}" y="{by}" width="{w:.1}" height="{BAR_H}" fill="{}"/>"#,
                    colour(s.kind),
                    by = cy - BAR_H / 2.0
                );
                let lat = match (s.p50_ms, s.p99_ms) {
                    (Some(a), Some(b)) => format!("  (p50 {a:.0} ms, p99 {b:.0} ms)"),
                    _ => String::new(),
                };
                let lost = if s.lost > 0 {
                    format!("  LOST {}", s.lost)
                } else {
                    String::new()
                };
                let _ = writeln!(
                    body,
                    r#"<text x="{tx:.1}" y="{ty}" class="value">{rate:.0}{}{}</text>"#,
                    esc(&lat),
                    lost,
                    tx = BAR_X + w + 6.0,
                    ty = cy + 4.0
                );
            }
            None => {
                let _ = writeln!(
                    body,
                    r#"<text x="{BAR_X}" y="{ty}" class="missing">failed in every round</text>"#,
                    ty = cy + 4.0
                );
            }
        }
        y += ROW_H;
    }
    for n in &results.not_measured {
        let cy = y + ROW_H / 2.0;
        let label = crate::report::scenario(&n.id).map_or(n.id.as_str(), |s| s.label);
        let _ = writeln!(
            body,
            r#"<text x="{LABEL_W}" y="{ty}" class="label" text-anchor="end">{}</text><text x="{BAR_X}" y="{ty}" class="missing">not measured: {}</text>"#,
            esc(label),
            esc(&n.why),
            ty = cy + 4.0
        );
        y += ROW_H;
    }
    let legend_y = y + 14.0;
    for (i, (kind, name)) in [
        (Kind::Baseline, "raw lapin (the limit)"),
        (Kind::Courier, "Courier"),
        (Kind::Peer, "Python peer"),
    ]
    .into_iter()
    .enumerate()
    {
        let x = BAR_X + i as f64 * 170.0;
        let _ = writeln!(
            body,
            r#"<rect x="{x}" y="{ry}" width="12" height="12" fill="{}"/><text x="{tx}" y="{legend_y}" class="note">{name}</text>"#,
            colour(kind),
            ry = legend_y - 10.0,
            tx = x + 16.0
        );
    }
    y = legend_y + 34.0;

    // Panel 2: ratios as a share of their target (parity where there is none).
    let _ = writeln!(
        body,
        r#"<text x="20" y="{y}" class="head">Ratios within a round (median), as a share of the target</text>"#
    );
    y += 14.0;
    let top = y;
    let scale = BAR_W / 2.0; // the axis runs from 0 to 2x the target
    for r in &results.ratios {
        let cy = y + ROW_H / 2.0;
        let reference = r.target.unwrap_or(1.0);
        let _ = writeln!(
            body,
            r#"<text x="{LABEL_W}" y="{ty}" class="label" text-anchor="end">{}</text>"#,
            esc(&r.label),
            ty = cy + 4.0
        );
        if let Some(v) = r.median {
            let share = v / reference;
            let w = (share.min(2.0) * scale).max(1.0);
            let fill = match r.met {
                Some(true) => "#3a9a4a",
                Some(false) => "#c8412e",
                None => "#b5b5b5",
            };
            let _ = writeln!(
                body,
                r#"<rect x="{BAR_X}" y="{by}" width="{w:.1}" height="{BAR_H}" fill="{fill}"/>"#,
                by = cy - BAR_H / 2.0
            );
            let what = match (r.target, r.met) {
                (Some(t), Some(true)) => format!("{v:.2}x  (target >= {t}x: met)"),
                (Some(t), _) => format!("{v:.2}x  (target >= {t}x: MISSED)"),
                (None, _) => format!("{v:.2}x  (no target; line = parity)"),
            };
            // A column right of the axis, so no label crosses the target line.
            let tx = BAR_X + BAR_W + 10.0;
            let _ = writeln!(
                body,
                r#"<text x="{tx:.1}" y="{ty}" class="value">{}</text>"#,
                esc(&what),
                ty = cy + 4.0
            );
        }
        y += ROW_H;
    }
    let tx = BAR_X + scale;
    let _ = writeln!(
        body,
        r#"<line x1="{tx}" y1="{top}" x2="{tx}" y2="{y}" class="target"/><text x="{tx}" y="{ly}" class="note" text-anchor="middle">target</text>"#,
        ly = y + 14.0
    );
    y += 44.0;

    // Panel 3: memory.
    if let Some(mem) = &results.memory {
        let _ = writeln!(
            body,
            r#"<text x="20" y="{y}" class="head">Worker memory: courier work --handler noop --prefetch {}, backlog {}</text>"#,
            mem.prefetch, mem.backlog
        );
        y += 14.0;
        let cy = y + ROW_H / 2.0;
        let per_mib = BAR_W / (mem.target_mib * 2.0);
        let w = (mem.peak_rss_mib.min(mem.target_mib * 2.0) * per_mib).max(1.0);
        let fill = if mem.met { "#3a9a4a" } else { "#c8412e" };
        let _ = writeln!(
            body,
            r#"<text x="{LABEL_W}" y="{ty}" class="label" text-anchor="end">peak RSS (VmHWM)</text><rect x="{BAR_X}" y="{by}" width="{w:.1}" height="{BAR_H}" fill="{fill}"/><text x="{vx:.1}" y="{ty}" class="value">{:.1} MiB (target &lt; {} MiB{})</text>"#,
            mem.peak_rss_mib,
            mem.target_mib,
            mem.error
                .as_ref()
                .map(|e| format!("; {}", esc(e)))
                .unwrap_or_default(),
            ty = cy + 4.0,
            by = cy - BAR_H / 2.0,
            vx = BAR_X + BAR_W + 10.0
        );
        let tx = BAR_X + mem.target_mib * per_mib;
        let _ = writeln!(
            body,
            r#"<line x1="{tx}" y1="{y}" x2="{tx}" y2="{y2}" class="target"/>"#,
            y2 = y + ROW_H
        );
        y += ROW_H + 20.0;
    }

    let height = y + 10.0;
    format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="Helvetica, Arial, sans-serif">
<style>
.title {{ font-size: 18px; font-weight: bold; fill: #222; }}
.head {{ font-size: 14px; font-weight: bold; fill: #222; }}
.label {{ font-size: 12px; fill: #333; }}
.value {{ font-size: 12px; fill: #222; }}
.note {{ font-size: 11px; fill: #555; }}
.missing {{ font-size: 12px; fill: #999; font-style: italic; }}
.target {{ stroke: #222; stroke-width: 1.5; stroke-dasharray: 4 3; }}
</style>
<rect width="100%" height="100%" fill="#ffffff"/>
{body}</svg>
"##
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Machine, Measurement, Params, Round, SCHEMA};

    #[test]
    fn draws_every_scenario_and_escapes_text() {
        let rounds = vec![Round {
            round: 1,
            load_before: Some(0.5),
            measurements: vec![
                Measurement {
                    id: "courier.e2e".into(),
                    messages: 10,
                    seconds: 1.0,
                    rate: 10.0,
                    lost: 0,
                    duplicated: 0,
                    foreign: 0,
                    p50_ms: Some(1.0),
                    p99_ms: Some(2.0),
                    client_cpu_us: None,
                    broker_cpu_us: None,
                    error: None,
                    trace_spans: None,
                },
                Measurement {
                    id: "baseline.e2e".into(),
                    messages: 10,
                    seconds: 1.0,
                    rate: 11.0,
                    lost: 0,
                    duplicated: 0,
                    foreign: 0,
                    p50_ms: None,
                    p99_ms: None,
                    client_cpu_us: None,
                    broker_cpu_us: None,
                    error: None,
                    trace_spans: None,
                },
            ],
        }];
        let (summary, ratios) = crate::report::summarise(&rounds);
        let results = Results {
            schema: SCHEMA,
            started_at: "2026-01-01T00:00:00Z".into(),
            git: Some("abc<def>".into()),
            machine: Machine {
                cpus: 2,
                rabbitmq: Some("3.10.8".into()),
                kernel: None,
                load_before: None,
                load_after: None,
                profile: "release".into(),
                cluster: None,
            },
            params: Params {
                messages: 10,
                rounds: 1,
                body_bytes: 512,
                window: 1024,
                prefetch: 200,
                concurrency: 64,
                smoke: false,
            },
            rounds,
            summary,
            ratios,
            memory: None,
            not_measured: vec![crate::report::NotMeasured {
                id: "dlq.replay".into(),
                why: "courier-dlq & co not built".into(),
            }],
            ok: true,
        };
        let s = svg(&results);
        assert!(s.starts_with("<svg"));
        assert!(s.contains("raw lapin: end to end"));
        assert!(s.contains("0.91x"));
        assert!(s.contains("abc&lt;def&gt;"));
        assert!(s.contains("courier-dlq &amp; co"));
        assert!(!s.contains("abc<def>"));
    }
}
