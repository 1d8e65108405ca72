//! Publishing the batch while watching the outcomes arrive: the progress bar on a terminal, a
//! line every 5 s elsewhere, and when the wait ends (everything settled, timeout, Ctrl-C).

use super::fleet::{Counts, Fleet};
use super::plan::Batch;
use super::Demo;
use crate::cli::out::outln;
use crate::cli::sink::Sink;
use anyhow::{bail, Context};
use courier::envelope::Reason;
use courier::metrics::Metrics;
use courier::publisher::{Outgoing, PublishError, Publisher, PublisherConfig};
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// How the wait for outcomes ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wait {
    /// Every message was delivered or dead-lettered.
    Settled,
    /// `--timeout` passed first.
    TimedOut,
}

/// When things happened, from the first publish.
#[derive(Debug, Clone, Copy)]
pub(super) struct Timing {
    /// Whether everything settled.
    pub(super) wait: Wait,
    /// To the last outcome (or the timeout).
    pub(super) elapsed: Duration,
    /// To the last publish confirm.
    pub(super) publishing: Duration,
    /// To the moment every message had had its first attempt.
    pub(super) first_pass: Option<Duration>,
}

impl Demo<'_> {
    /// Publishes the batch while watching outcomes; returns how the wait ended, the time from the
    /// first publish to the end, and the publishing time; `None` when interrupted.
    pub(super) async fn drive(
        &self,
        batch: &Batch,
        sink: &Sink,
        fleet: &Fleet,
        metrics: &Metrics,
        timeout: Duration,
    ) -> anyhow::Result<Option<Timing>> {
        // Publish only once every worker consumes, so the throughput measures the fleet, not
        // connection set-up.
        let ready_by = Instant::now() + Duration::from_secs(20);
        while fleet.ready() < fleet.health.len() {
            if Instant::now() > ready_by {
                bail!(
                    "only {} of {} workers started consuming within 20s; see the warnings above",
                    fleet.ready(),
                    fleet.health.len()
                );
            }
            tokio::select! {
                _ = self.interrupted.cancelled() => return Ok(None),
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }

        let total = self.args.messages;
        let tier_labels = self.tier_labels();
        let bar = progress_bar(total);
        let publisher = Publisher::connect(
            &self.url,
            PublisherConfig {
                name: "courier demo (publisher)".to_owned(),
                window: 512,
                confirm_timeout: Duration::from_secs(30),
            },
            Metrics::new(),
        )
        .await?;
        let started = Instant::now();
        let deadline = started + timeout;
        let publishing = publish_all(&publisher, batch.messages.clone());
        tokio::pin!(publishing);
        let mut published: Option<Duration> = None;
        let mut first_pass: Option<Duration> = None;
        let mut ticker = tokio::time::interval(Duration::from_millis(25));
        let tty = std::io::stdout().is_terminal();
        let mut next_line = Instant::now() + Duration::from_secs(5);
        let wait = loop {
            tokio::select! {
                r = &mut publishing, if published.is_none() => {
                    r?;
                    published = Some(started.elapsed());
                    publisher.close().await;
                }
                _ = ticker.tick() => {}
                _ = self.interrupted.cancelled() => {
                    bar.finish_and_clear();
                    return Ok(None);
                }
            }
            let c = Counts::read(metrics, self.topology, &tier_labels);
            let s = sink.counts();
            // Delivered is counted by distinct id at the sink, so a duplicate delivery cannot
            // make the demo finish early; the workers' count must have caught up too (acked).
            let settled = s.delivered + c.dead_total();
            let status = format!(
                "delivered {} · dead-lettered {} · retries {} · pending {}",
                s.delivered,
                c.dead_total(),
                c.retries_total(),
                total.saturating_sub(settled)
            );
            bar.set_position(settled.min(total));
            bar.set_message(match published {
                Some(_) => status.clone(),
                None => format!("publishing · {status}"),
            });
            if !tty && Instant::now() >= next_line {
                outln!("  … {}/{total} settled: {status}", settled.min(total))?;
                next_line += Duration::from_secs(5);
            }
            // Every message has had its first attempt once the sink heard of every well-formed
            // id and the malformed ones are dead-lettered: the fleet's speed without the
            // deliberate retry waits.
            let malformed = c.dead.get(&Reason::Malformed).copied().unwrap_or(0);
            if first_pass.is_none() && published.is_some() && s.ids + malformed >= total {
                first_pass = Some(started.elapsed());
            }
            if published.is_some() && settled >= total && c.delivered >= s.delivered {
                break Wait::Settled;
            }
            if Instant::now() >= deadline {
                break Wait::TimedOut;
            }
        };
        bar.finish_and_clear();
        let elapsed = started.elapsed();
        Ok(Some(Timing {
            wait,
            elapsed,
            publishing: published.unwrap_or(elapsed),
            first_pass,
        }))
    }
}

fn progress_bar(total: u64) -> ProgressBar {
    // Only on a terminal: in CI logs and tests the summary is the output.
    let target = if std::io::stdout().is_terminal() {
        ProgressDrawTarget::stdout()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(total), target);
    bar.set_style(
        ProgressStyle::with_template(
            "  {spinner} {elapsed:>4} {bar:30} {pos}/{len} settled  {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// Publishes every message with confirms, many in flight; the first failure stops the batch.
async fn publish_all(publisher: &Publisher, messages: Vec<Outgoing>) -> anyhow::Result<()> {
    let mut results = futures_util::stream::iter(messages)
        .map(|m| publisher.publish(m))
        .buffer_unordered(512);
    while let Some(r) = results.next().await {
        r.map_err(|e: PublishError| anyhow::anyhow!(e))
            .context("publishing the demo batch failed")?;
    }
    Ok(())
}
