//! Summarising the rounds: each scenario's median rate, latency and CPU over the rounds it
//! completed, and each ratio taken within a round, then its median against the target.

use super::{Measurement, Ratio, Round, Summary, RATIOS, SCENARIOS};

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
            trace_spans: None,
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
