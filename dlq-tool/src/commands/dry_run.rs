//! `--dry-run` of a pass: an inspection that says what the pass would do, changing nothing.

use super::{connect, warn_if_quorum};
use crate::cli::Global;
use crate::filter::Filter;
use crate::fix::Fixes;
use crate::inspect::{inspect, MAX_INSPECT};
use crate::output::{groups, thousands};
use crate::stats::{Groups, Plan};
use courier::amqp::AmqpUrl;
use courier::deadletter::{replay_destination, DeadLetter};
use courier::envelope::now_millis;
use std::collections::BTreeMap;
use std::io::Write;
use std::ops::ControlFlow;
use std::process::ExitCode;

/// Which pass is being previewed.
pub enum Verb<'a> {
    /// Replay, to `--to-queue` or each message's origin, with the fixes.
    Replay(Option<&'a str>, &'a Fixes),
    /// Export to a file.
    Export,
    /// Purge.
    Purge,
}

impl Verb<'_> {
    fn word(&self) -> &'static str {
        match self {
            Verb::Replay(..) => "replay",
            Verb::Export => "export",
            Verb::Purge => "purge",
        }
    }
}

/// What would stay, by why: the breakdown `--dry-run` promises (not selected, past `--limit`,
/// without an origin), plus what a preview cannot vouch for.
#[derive(Debug, Default)]
struct Staying {
    /// Examined, and the filters did not select them.
    not_selected: u64,
    /// After the `--limit`-th selected message (not examined); `None` without `--limit`.
    past_limit: Option<u64>,
    /// Selected, but they record no origin (replay only; `None` for export and purge).
    no_origin: Option<u64>,
    /// Selected, but their destination exchange does not exist.
    missing_exchange: u64,
    /// Selected, but `--transform` fails on them (replay with fixes only).
    transform_fails: u64,
    /// Beyond what a preview examines ([`MAX_INSPECT`]), when `--limit` was not reached.
    not_examined: u64,
}

impl Staying {
    fn total(&self) -> u64 {
        self.not_selected
            + self.past_limit.unwrap_or(0)
            + self.no_origin.unwrap_or(0)
            + self.missing_exchange
            + self.transform_fails
            + self.not_examined
    }

    /// `would stay: N` and one indented line a reason.
    fn lines(&self) -> Vec<String> {
        let mut v = vec![format!("would stay: {}", thousands(self.total()))];
        v.push(format!("  not selected: {}", thousands(self.not_selected)));
        if let Some(n) = self.past_limit {
            v.push(format!("  past --limit: {}", thousands(n)));
        }
        if let Some(n) = self.no_origin {
            v.push(format!(
                "  without a recorded origin: {}{}",
                thousands(n),
                if n > 0 {
                    " (replay them with --to-queue)"
                } else {
                    ""
                }
            ));
        }
        if self.missing_exchange > 0 {
            v.push(format!(
                "  for an exchange that does not exist: {}",
                thousands(self.missing_exchange)
            ));
        }
        if self.transform_fails > 0 {
            v.push(format!(
                "  --transform fails on them: {}",
                thousands(self.transform_fails)
            ));
        }
        if self.not_examined > 0 {
            v.push(format!(
                "  not examined (a dry run looks at the first {}): {}",
                thousands(MAX_INSPECT),
                thousands(self.not_examined)
            ));
        }
        v
    }
}

/// Prints the plan.
///
/// # Errors
/// As for any inspection.
pub async fn run(
    g: &Global,
    url: &AmqpUrl,
    queue: &str,
    filter: &Filter,
    limit: Option<u64>,
    verb: Verb<'_>,
) -> anyhow::Result<ExitCode> {
    let text = plan(g, url, queue, filter, limit, verb).await?;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// The plan as text: what `--dry-run` prints and the console shows before it asks to confirm.
///
/// # Errors
/// As for any inspection.
pub async fn plan(
    g: &Global,
    url: &AmqpUrl,
    queue: &str,
    filter: &Filter,
    limit: Option<u64>,
    verb: Verb<'_>,
) -> anyhow::Result<String> {
    warn_if_quorum(g, queue);
    crate::inspect::warn_dry_run_limit(limit);
    let broker = connect(url, &format!("{} --dry-run", verb.word()), queue).await?;
    let now = now_millis();
    let limit = limit.unwrap_or(u64::MAX);
    let mut plan = Plan::default();
    let mut by_reason = Groups::default();
    // Messages per destination exchange, to check afterwards that each exchange exists.
    let mut exchanges: BTreeMap<String, u64> = BTreeMap::new();
    let fixes = match &verb {
        Verb::Replay(_, f) if !f.is_empty() => Some(*f),
        _ => None,
    };
    let mut transform_fails = 0u64;
    let mut previews: Vec<String> = Vec::new();
    let sample = inspect(&broker, queue, MAX_INSPECT, |d| {
        let dl = DeadLetter::read(&d.properties, d.data.len());
        let selected = plan.moving + plan.no_origin + transform_fails < limit
            && filter.matches(&dl, d.properties.headers().as_ref(), now);
        if !selected {
            plan.add_not_selected();
            return Ok(ControlFlow::Continue(()));
        }
        let mut dest = match &verb {
            Verb::Replay(to, _) => replay_destination(&dl, *to),
            Verb::Export | Verb::Purge => Some(courier::deadletter::Destination::queue(queue)),
        };
        if let Some(f) = fixes {
            if let (Some(key), Some(dest)) = (&f.routing_key, dest.as_mut()) {
                dest.routing_key.clone_from(key);
            }
            let after = f.apply(&d.properties, &d.data);
            if previews.len() < PREVIEW {
                let to = dest
                    .as_ref()
                    .map_or_else(|| "(no origin)".to_owned(), ToString::to_string);
                previews.push(crate::fix::before_after(
                    envelope_id(d),
                    &to,
                    (&d.properties, &d.data),
                    after.as_ref().map(|(p, b)| (p, b.as_slice())),
                ));
            }
            if after.is_err() {
                transform_fails += 1;
                return Ok(if plan.moving + plan.no_origin + transform_fails >= limit {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                });
            }
        }
        if let Some(d) = &dest {
            *exchanges.entry(d.exchange.clone()).or_insert(0) += 1;
            by_reason.add(dl.reason.as_deref().unwrap_or("(unknown)"));
        }
        plan.add_moving(&dl, dest.as_ref());
        if plan.moving + plan.no_origin + transform_fails >= limit {
            return Ok(ControlFlow::Break(()));
        }
        Ok(ControlFlow::Continue(()))
    })
    .await;
    let mut missing = Vec::new();
    if sample.is_ok() {
        for (ex, n) in &exchanges {
            if !broker.exchange_exists(ex).await? {
                missing.push((ex.clone(), *n));
            }
        }
    }
    broker.close().await;
    let sample = sample?;
    let reached_limit = plan.moving + plan.no_origin + transform_fails >= limit;
    let unexamined = sample.total.saturating_sub(sample.examined);
    let missing_exchange: u64 = missing.iter().map(|(_, n)| n).sum();
    let staying = Staying {
        not_selected: plan.not_selected,
        past_limit: (limit < u64::MAX).then_some(if reached_limit { unexamined } else { 0 }),
        no_origin: matches!(verb, Verb::Replay(..)).then_some(plan.no_origin),
        missing_exchange,
        transform_fails,
        not_examined: if reached_limit { 0 } else { unexamined },
    };

    let mut out: Vec<u8> = Vec::new();
    writeln!(out, "dry run: nothing was changed")?;
    writeln!(out, "{queue}: {} messages", thousands(sample.total))?;
    let note = crate::inspect::note(&sample, reached_limit);
    if !note.is_empty() {
        writeln!(out, "{note}; the counts below cover the examined ones")?;
    }
    let word = verb.word();
    writeln!(
        out,
        "would {word}: {}{}",
        thousands(plan.moving.saturating_sub(missing_exchange)),
        if reached_limit {
            " (--limit reached)"
        } else {
            ""
        }
    )?;
    for line in staying.lines() {
        writeln!(out, "{line}")?;
    }
    for (ex, n) in &missing {
        writeln!(
            out,
            "warning: exchange '{ex}' does not exist: {} message(s) for it would stay in the queue",
            thousands(*n)
        )?;
    }
    if plan.moving > 0 {
        if let Verb::Replay(..) = verb {
            groups(&mut out, "DESTINATION", &plan.by_destination)?;
        }
        groups(&mut out, "REASON", &by_reason)?;
        groups(&mut out, "ERROR", &plan.by_error)?;
    }
    if !previews.is_empty() {
        writeln!(
            out,
            "\nbefore/after of the first {} selected message(s) (- before, + after):",
            previews.len()
        )?;
        for p in &previews {
            write!(out, "{p}")?;
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Messages shown before/after by a `--dry-run` with fixes.
const PREVIEW: usize = 3;

fn envelope_id(d: &lapin::message::Delivery) -> &str {
    courier::envelope::message_id(&d.properties).unwrap_or("(no message_id)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_stays_is_broken_down_by_why() {
        let s = Staying {
            not_selected: 5,
            past_limit: Some(23),
            no_origin: Some(1),
            missing_exchange: 2,
            transform_fails: 0,
            not_examined: 0,
        };
        assert_eq!(
            s.lines(),
            [
                "would stay: 31",
                "  not selected: 5",
                "  past --limit: 23",
                "  without a recorded origin: 1 (replay them with --to-queue)",
                "  for an exchange that does not exist: 2",
            ]
        );
        // Export and purge have no origin to miss; without --limit nothing is past it.
        let s = Staying {
            not_selected: 3,
            not_examined: 40_000,
            ..Staying::default()
        };
        assert_eq!(
            s.lines(),
            [
                "would stay: 40,003",
                "  not selected: 3",
                "  not examined (a dry run looks at the first 65,535): 40,000",
            ]
        );
    }
}
