//! Charts drawn on the server as inline SVG: no script, no library, nothing to load.
//!
//! [`line_chart`]: the dead-letter queue's size (left axis) and its dead-letter rate (right
//! axis) over the last hour, with time ticks every 15 minutes. [`sparkline`]: a group's dead
//! letters over time, in a few buckets.

use super::fleet::{Point, WINDOW};
use maud::{html, Markup};

/// The chart's size in SVG units, and its plot area.
const W: f64 = 760.0;
const H: f64 = 220.0;
const LEFT: f64 = 56.0;
const RIGHT: f64 = 700.0;
const TOP: f64 = 16.0;
const BOTTOM: f64 = 180.0;

/// The size line's colour, and the rate's.
const SIZE_COLOUR: &str = "#2563eb";
const RATE_COLOUR: &str = "#ea580c";

/// A round number at or above `v`, so that the axis reads 0, max/2, max in plain numbers.
pub fn nice_max(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let magnitude = 10f64.powf(v.log10().floor());
    for step in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if step * magnitude >= v {
            return step * magnitude;
        }
    }
    10.0 * magnitude
}

/// A number for an axis label: whole numbers plainly, small ones with one decimal.
fn label(v: f64) -> String {
    if v >= 10.0 || v == v.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// Where (epoch ms `t`, value `v`) is in the plot area: `x` from the window's start at
/// `now_ms`, `y` scaled to `max`.
fn xy(t: i64, v: f64, now_ms: i64, max: f64) -> (f64, f64) {
    let start = now_ms - WINDOW.as_millis() as i64;
    let x = LEFT + (RIGHT - LEFT) * ((t - start) as f64 / WINDOW.as_millis() as f64);
    let y = BOTTOM - (BOTTOM - TOP) * (v / max);
    (x.clamp(LEFT, RIGHT), y.clamp(TOP, BOTTOM))
}

/// The polyline of `values` (epoch ms, value), see [`xy`].
fn polyline(values: &[(i64, f64)], now_ms: i64, max: f64) -> String {
    values
        .iter()
        .map(|(t, v)| {
            let (x, y) = xy(*t, *v, now_ms, max);
            format!("{x:.1},{y:.1}")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The dead-letter queue over the last hour: size and dead-letter rate, with axes.
pub fn line_chart(points: &[Point], now_ms: i64) -> Markup {
    let sizes: Vec<(i64, f64)> = points
        .iter()
        .filter_map(|p| Some((p.at_ms, p.size? as f64)))
        .collect();
    let rates: Vec<(i64, f64)> = points
        .iter()
        .filter_map(|p| Some((p.at_ms, p.rate?)))
        .collect();
    let size_max = nice_max(sizes.iter().map(|(_, v)| *v).fold(0.0, f64::max));
    let rate_max = nice_max(rates.iter().map(|(_, v)| *v).fold(0.0, f64::max));
    let mid = (TOP + BOTTOM) / 2.0;
    html! {
        svg.chart viewBox={"0 0 " (W) " " (H)} role="img"
            aria-label="Dead-letter queue size and dead-letter rate over the last hour" {
            // Grid and axes.
            @for y in [TOP, mid, BOTTOM] {
                line x1=(LEFT) x2=(RIGHT) y1=(y) y2=(y) stroke="#e5e7eb" {}
            }
            line x1=(LEFT) x2=(LEFT) y1=(TOP) y2=(BOTTOM) stroke="#6b7280" {}
            line x1=(RIGHT) x2=(RIGHT) y1=(TOP) y2=(BOTTOM) stroke="#6b7280" {}
            line x1=(LEFT) x2=(RIGHT) y1=(BOTTOM) y2=(BOTTOM) stroke="#6b7280" {}
            // Left axis: messages.
            @for (y, v) in [(TOP, size_max), (mid, size_max / 2.0), (BOTTOM, 0.0)] {
                text x=(LEFT - 6.0) y=(y + 4.0) text-anchor="end" font-size="11" fill=(SIZE_COLOUR) { (label(v)) }
            }
            // Right axis: dead letters a second.
            @for (y, v) in [(TOP, rate_max), (mid, rate_max / 2.0), (BOTTOM, 0.0)] {
                text x=(RIGHT + 6.0) y=(y + 4.0) text-anchor="start" font-size="11" fill=(RATE_COLOUR) { (label(v)) "/s" }
            }
            // Time axis: every 15 minutes, "now" on the right.
            @for (i, name) in ["-60m", "-45m", "-30m", "-15m", "now"].iter().enumerate() {
                @let x = LEFT + (RIGHT - LEFT) * (i as f64) / 4.0;
                line x1=(x) x2=(x) y1=(BOTTOM) y2=(BOTTOM + 4.0) stroke="#6b7280" {}
                text x=(x) y=(BOTTOM + 16.0) text-anchor="middle" font-size="11" fill="#374151" { (name) }
            }
            polyline points=(polyline(&rates, now_ms, rate_max)) fill="none" stroke=(RATE_COLOUR) stroke-width="1.5" {}
            polyline points=(polyline(&sizes, now_ms, size_max)) fill="none" stroke=(SIZE_COLOUR) stroke-width="2" {}
            @if let Some((t, v)) = sizes.last() {
                @let (x, y) = xy(*t, *v, now_ms, size_max);
                circle cx=(format!("{x:.1}")) cy=(format!("{y:.1}")) r="3" fill=(SIZE_COLOUR) {}
            }
            // Legend.
            rect x=(LEFT) y=(H - 14.0) width="10" height="10" fill=(SIZE_COLOUR) {}
            text x=(LEFT + 14.0) y=(H - 5.0) font-size="11" fill="#374151" { "messages in the dead-letter queue (left)" }
            rect x=(LEFT + 290.0) y=(H - 14.0) width="10" height="10" fill=(RATE_COLOUR) {}
            text x=(LEFT + 304.0) y=(H - 5.0) font-size="11" fill="#374151" { "dead letters per second (right)" }
            @if points.len() < 2 {
                text x=((LEFT + RIGHT) / 2.0) y=(mid) text-anchor="middle" font-size="12" fill="#6b7280" {
                    "collecting: a point every refresh, the last hour kept"
                }
            }
        }
    }
}

/// Buckets in a sparkline.
pub const BUCKETS: usize = 24;

/// Counts `times` (epoch ms) into [`BUCKETS`] buckets from `from_ms` to `to_ms`.
pub fn buckets(times: &[i64], from_ms: i64, to_ms: i64) -> Vec<u64> {
    let mut out = vec![0u64; BUCKETS];
    let span = (to_ms - from_ms).max(1) as f64;
    for t in times {
        let i = (((t - from_ms) as f64 / span) * BUCKETS as f64).floor();
        let i = (i.max(0.0) as usize).min(BUCKETS - 1);
        out[i] += 1;
    }
    out
}

/// A small line of `counts`, highest at the top.
pub fn sparkline(counts: &[u64]) -> Markup {
    let (w, h) = (120.0, 24.0);
    let max = counts.iter().copied().max().unwrap_or(0).max(1) as f64;
    let step = if counts.len() > 1 {
        w / (counts.len() - 1) as f64
    } else {
        w
    };
    let points = counts
        .iter()
        .enumerate()
        .map(|(i, c)| {
            format!(
                "{:.1},{:.1}",
                i as f64 * step,
                h - 2.0 - (h - 4.0) * (*c as f64 / max)
            )
        })
        .collect::<Vec<_>>()
        .join(" ");
    html! {
        svg.spark viewBox={"0 0 " (w) " " (h)} width=(w) height=(h) role="img" aria-label="dead letters over time" {
            polyline points=(points) fill="none" stroke=(SIZE_COLOUR) stroke-width="1.5" {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_end_on_round_numbers() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(7.0), 10.0);
        assert_eq!(nice_max(30.0), 50.0);
        assert_eq!(nice_max(4_180.0), 5_000.0);
        assert_eq!(nice_max(0.3), 0.5);
    }

    #[test]
    fn times_fall_into_their_buckets() {
        let b = buckets(&[0, 1, 999, 1000, 500], 0, 1000);
        assert_eq!(b.len(), BUCKETS);
        assert_eq!(b[0], 2);
        assert_eq!(b[BUCKETS - 1], 2);
        assert_eq!(b.iter().sum::<u64>(), 5);
    }

    #[test]
    fn the_chart_has_both_lines_and_its_axes() {
        let now = 10_000_000;
        let points: Vec<Point> = (0..10)
            .map(|i| Point {
                at_ms: now - 60_000 * i,
                size: Some(i as u64 * 3),
                rate: Some(0.5),
            })
            .collect();
        let svg = line_chart(&points, now).into_string();
        assert_eq!(svg.matches("<polyline").count(), 2, "{svg}");
        assert!(svg.contains("-60m") && svg.contains("now") && svg.contains("/s"));
        assert!(
            svg.contains(">50<"),
            "the left axis ends at 50 (27 rounded up): {svg}"
        );
    }
}
