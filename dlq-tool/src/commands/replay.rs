//! `courier-dlq replay`: send dead letters back, confirmed, with attempts reset; optionally a
//! canary first, a ramp, and a stop by itself when what it replayed fails again.

use super::dry_run::{self, Verb};
use super::{connect, passes, Ended};
use crate::cli::{Global, ReplayArgs, DEFAULT_MAX_FAILURE_RATE};
use crate::error::{StoppedItself, UsageError};
use crate::journal::Journal;
use crate::output::thousands;
use crate::pass::{Action, PassConfig};
use crate::watch::{Policy, Watch, MIN_SAMPLE};
use courier::topology::Topology;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How often the failure watch is read.
const JUDGE_EVERY: Duration = Duration::from_millis(250);

pub async fn run(g: &Global, a: ReplayArgs) -> anyhow::Result<ExitCode> {
    run_with(g, a, None).await
}

/// The replay's `--dry-run`: what it would do, as text (the CLI prints it, the console shows
/// it before asking to confirm).
///
/// # Errors
/// A usage error for a flag that does not validate; else as for any inspection.
pub async fn preview(g: &Global, a: &ReplayArgs) -> anyhow::Result<String> {
    let filter = a.filters.build(&g.prefix)?;
    let fixes = a.fixes.build()?;
    let queue = g.dlq()?;
    let url = g.url()?;
    let to_queue = a.to_queue.as_deref().map(|q| g.queue_name(q));
    let smart = &a.smart;
    let mut text = String::new();
    if let Some(n) = smart.canary {
        text.push_str(&format!(
            "would replay a canary of {n} first, watch it for {}, and go on only if at most {:.0}% came back\n",
            humantime::format_duration(smart.canary_wait),
            100.0 * smart.max_failure_rate.unwrap_or(DEFAULT_MAX_FAILURE_RATE)
        ));
    }
    let verb = Verb::Replay(to_queue.as_deref(), &fixes);
    text.push_str(&dry_run::plan(g, &url, &queue, &filter, a.pass.limit, verb).await?);
    Ok(text)
}

/// [`run`], reporting each pass's progress to `counters` instead of a terminal bar when given
/// (the console's progress view).
pub async fn run_with(
    g: &Global,
    a: ReplayArgs,
    counters: Option<Arc<crate::progress::Counters>>,
) -> anyhow::Result<ExitCode> {
    let filter = a.filters.build(&g.prefix)?;
    // Checked (the program compiled) before anything touches the broker: a usage error.
    let fixes = Arc::new(a.fixes.build()?);
    let queue = g.dlq()?;
    let url = g.url()?;
    let to_queue = a.to_queue.as_deref().map(|q| g.queue_name(q));
    let smart = &a.smart;
    let topology = g.topology().ok();
    // The failure watch taps the exchange that feeds this dead-letter queue: the topology's.
    let dlx = match (smart.watching(), &topology) {
        (false, _) => None,
        (true, Some(t)) if t.dead_letter_queue == queue => Some(t.dead_letter_exchange.clone()),
        (true, _) => {
            return Err(UsageError(format!(
                "--canary / --max-failure-rate watch the dead-letter exchange that feeds {queue}, and the topology ({}) does not declare {queue} as its dead-letter queue; pass the --topology and --prefix it was applied with",
                topology.as_ref().map_or_else(|| "unreadable".to_owned(), |t| t.source.clone())
            ))
            .into())
        }
    };
    if a.pass.dry_run {
        use std::io::Write;
        let text = preview(g, &a).await?;
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes())?;
        out.flush()?;
        return Ok(ExitCode::SUCCESS);
    }
    let broker = connect(&url, "replay", &queue).await?;
    if let Some(q) = &to_queue {
        broker
            .existing_queue(
                q,
                "it is the --to-queue; declare it first (or run `courier topology apply`)",
            )
            .await?;
    }
    let path = match smart.journal.clone() {
        Some(p) => p,
        None => crate::journal::default_path(&queue).ok_or_else(|| {
            UsageError(
                "no state directory for the replay's journal ($XDG_STATE_HOME and $HOME are unset): pass --journal FILE".to_owned(),
            )
        })?,
    };
    let journal = Arc::new(Journal::open(&path, &queue, smart.fresh).await?);
    if let Some((n, started)) = journal.resumed() {
        eprintln!(
            "resuming the replay of {queue} that was interrupted (started {started}, {} moved; journal {}): none of those is replayed again, and those that came back since stay; --fresh starts over",
            thousands(n as u64),
            path.display()
        );
    }
    let watch = match &dlx {
        Some(x) => {
            if let Some(t) = &topology {
                warn_if_retries_outlast(t, smart.canary_wait);
            }
            Some(Arc::new(Watch::start(&url, x).await?))
        }
        None => None,
    };
    let max_rate = smart.max_failure_rate.unwrap_or(DEFAULT_MAX_FAILURE_RATE);
    let wait = smart.canary_wait;
    let config = |limit: Option<u64>, halt: Option<CancellationToken>, canary: bool| PassConfig {
        queue: queue.clone(),
        filter: filter.clone(),
        limit,
        // The canary goes at --rate, else at the ramp's first rate; the ramp starts after it.
        rate: if canary {
            a.pass.rate.or(smart.ramp.map(|r| r.from))
        } else {
            a.pass.rate
        },
        ramp: if canary { None } else { smart.ramp },
        halt,
        window: usize::from(a.pass.window),
        progress: counters.is_none(),
        counters: counters.clone(),
    };
    let action = || Action::Replay {
        to_queue: to_queue.clone(),
        fixes: Arc::clone(&fixes),
        journal: Some(Arc::clone(&journal)),
    };

    let mut broker = broker;
    let mut moved = 0u64;
    let mut limit = a.pass.limit;
    if let (Some(n), Some(w)) = (smart.canary, &watch) {
        let size = limit.map_or(n, |l| l.min(n));
        eprintln!(
            "canary: replaying {size} message(s), then watching them for {}",
            humantime::format_duration(wait)
        );
        let ended = passes(
            &url,
            broker,
            "replay",
            "canary: replayed",
            config(Some(size), None, true),
            action,
        )
        .await;
        moved += ended.acted;
        if !ended.completed || ended.acted == 0 {
            // A failure, or nothing selected: nothing to watch.
            return finish(ended, journal, watch).await;
        }
        let canary = journal.moved_since(0);
        let policy = Policy {
            max_rate,
            min_sample: canary.len() as u64,
        };
        let verdict = watch_canary(w, &canary, policy, wait).await;
        let t = w.judge(&canary, wait, Instant::now());
        match verdict {
            Ok(None) => eprintln!(
                "canary: {} of {} came back to the dead-letter queue within {}: going on",
                t.failed,
                t.moved,
                humantime::format_duration(wait)
            ),
            Ok(Some(why)) => {
                let stop = stopped(&queue, &why, moved, t.moved);
                return finish_stopped(stop, journal, watch).await;
            }
            Err(e) => {
                close_watch(watch).await;
                return Err(e);
            }
        }
        limit = limit.map(|l| l.saturating_sub(ended.acted));
        if limit == Some(0) || ended.acted < size {
            // --limit reached, or the canary took everything selected.
            return finish(ended, journal, watch).await;
        }
        broker = connect(&url, "replay", &queue).await?;
    }

    // The rest, watched: the monitor stops the pass once the rate is passed.
    let halt = CancellationToken::new();
    let why: Arc<Mutex<Option<String>>> = Arc::default();
    let monitor = watch.as_ref().map(|w| {
        let (w, journal, halt, why) = (
            Arc::clone(w),
            Arc::clone(&journal),
            halt.clone(),
            Arc::clone(&why),
        );
        let policy = Policy {
            max_rate,
            min_sample: smart.canary.unwrap_or(0).max(MIN_SAMPLE),
        };
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(JUDGE_EVERY).await;
                let reason = match w.lost() {
                    Some(lost) => Some(format!(
                        "the failure watch stopped seeing the dead-letter queue ({lost})"
                    )),
                    None => {
                        let t = w.judge(&journal.moved_since(0), wait, Instant::now());
                        policy.verdict(&t, wait)
                    }
                };
                if let Some(r) = reason {
                    if let Ok(mut slot) = why.lock() {
                        *slot = Some(r);
                    }
                    halt.cancel();
                    return;
                }
            }
        })
    });
    let ended = passes(
        &url,
        broker,
        "replay",
        "replayed",
        config(limit, Some(halt), false),
        action,
    )
    .await;
    if let Some(m) = monitor {
        m.abort();
    }
    moved += ended.acted;
    if ended.halted {
        let reason = why
            .lock()
            .ok()
            .and_then(|w| w.clone())
            .unwrap_or_else(|| "stopped".to_owned());
        let stop = stopped(&queue, &reason, moved, journal.moved_count() as u64);
        return finish_stopped(stop, journal, watch).await;
    }
    if let Some(w) = &watch {
        let t = w.judge(&journal.moved_since(0), wait, Instant::now());
        eprintln!(
            "watch: {} of {} replayed messages came back to the dead-letter queue so far; {} had not after {}, {} were replayed more recently (see `courier-dlq groups` later)",
            thousands(t.failed),
            thousands(t.moved),
            thousands(t.delivered()),
            humantime::format_duration(wait),
            thousands(t.undecided()),
        );
    }
    finish(ended, journal, watch).await
}

/// Watches the canary until every message is decided (back, or the wait is over), or the
/// failure rate is certain to pass the policy's. `Ok(Some(why))` says to stop.
async fn watch_canary(
    w: &Watch,
    canary: &[crate::journal::Moved],
    policy: Policy,
    wait: Duration,
) -> anyhow::Result<Option<String>> {
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        let t = w.judge(canary, wait, Instant::now());
        if let Some(why) = policy.verdict(&t, wait) {
            return Ok(Some(why));
        }
        if t.undecided() == 0 {
            return Ok(None);
        }
        if let Some(lost) = w.lost() {
            anyhow::bail!(
                "the failure watch stopped seeing the dead-letter queue ({lost}) while the canary was watched; run the same replay again to resume"
            );
        }
        tokio::select! {
            _ = &mut interrupted => anyhow::bail!(
                "interrupted while watching the canary; run the same replay again to resume (its journal keeps the canary from being replayed twice)"
            ),
            () = tokio::time::sleep(JUDGE_EVERY) => {}
        }
    }
}

/// The error a replay that stopped by itself ends with.
fn stopped(queue: &str, why: &str, moved: u64, watched: u64) -> StoppedItself {
    StoppedItself(format!(
        "the replay of {queue} stopped by itself: {why}. Moved {} message(s) ({} watched); the rest stays in {queue}, untouched. Find the cause (`courier-dlq groups`), fix it, then run the same replay again",
        thousands(moved),
        thousands(watched),
    ))
}

/// A replay that stopped by itself ends its journal (the next replay starts afresh and takes
/// what came back too) and exits with code 3.
async fn finish_stopped(
    stop: StoppedItself,
    journal: Arc<Journal>,
    watch: Option<Arc<Watch>>,
) -> anyhow::Result<ExitCode> {
    close_watch(watch).await;
    end_journal(journal, true).await;
    Err(stop.into())
}

/// Ends a replay: the journal goes when the last pass completed, and stays for a resume when it
/// failed or was interrupted.
async fn finish(
    ended: Ended,
    journal: Arc<Journal>,
    watch: Option<Arc<Watch>>,
) -> anyhow::Result<ExitCode> {
    close_watch(watch).await;
    end_journal(journal, ended.completed).await;
    ended.result
}

async fn end_journal(journal: Arc<Journal>, done: bool) {
    match Arc::try_unwrap(journal) {
        Ok(j) if done => j.finish().await,
        Ok(j) => eprintln!(
            "the replay's journal stays in {}: run the same replay again to resume it without replaying what moved",
            j.path().display()
        ),
        Err(_) => {}
    }
}

async fn close_watch(watch: Option<Arc<Watch>>) {
    if let Some(w) = watch.and_then(|w| Arc::try_unwrap(w).ok()) {
        w.close().await;
    }
}

/// Warns when a message that fails again takes longer through the retry tiers than the watch
/// waits: such a failure would count as delivered.
fn warn_if_retries_outlast(t: &Topology, wait: Duration) {
    let r = &t.retry;
    if r.tiers.is_empty() {
        return;
    }
    let steps: Vec<Duration> = (0..r.max_attempts.saturating_sub(1) as usize)
        .map(|i| r.tiers[i.min(r.tiers.len() - 1)])
        .collect();
    let total: Duration = steps.iter().sum();
    if total > wait {
        eprintln!(
            "warning: a replayed message that keeps failing takes {} through the retry tiers ({}) to come back to the dead-letter queue; --canary-wait {} judges only failures that come back sooner (permanent ones, such as HTTP 4xx), and counts the others as delivered. --canary-wait {} judges every failure",
            humantime::format_duration(total),
            steps
                .iter()
                .map(|d| humantime::format_duration(*d).to_string())
                .collect::<Vec<_>>()
                .join(", "),
            humantime::format_duration(wait),
            humantime::format_duration(total + Duration::from_secs(5)),
        );
    }
}
