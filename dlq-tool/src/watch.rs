//! A smart replay's failure watch: which replayed messages came back to the dead-letter queue.
//!
//! The watch taps the dead-letter exchange ([`courier::broker::Admin::tap`]: a server-named,
//! exclusive queue bound to it, consumed without acks), so it sees a copy of every dead letter
//! as it arrives, without taking anything from the dead-letter queue, which the replay's own
//! pass holds. A replayed copy carries its message id and `x-courier-replayed`; when a dead
//! letter with the same id and at least that count arrives, that replayed message failed again.
//!
//! What the tool trusts: the dead-letter queue, and nothing else. A replayed message that has
//! not come back within `--canary-wait` counts as delivered — also one still working through its
//! retry tiers, which is why the wait should be longer than a failing message's way back to the
//! dead-letter queue (the replay warns when the topology's retry tiers add up to more). Worker
//! replies (`reply_to`) are not used: they exist only where a publisher asked for them.

use crate::journal::Moved;
use courier::amqp::AmqpUrl;
use courier::broker::Admin;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What came back, shared with the tap's task.
#[derive(Default)]
struct Seen {
    /// The highest `x-courier-replayed` that came back, by message id (replayed copies only:
    /// other dead letters are not counted, so an outage's flood does not fill memory).
    back: HashMap<String, u32>,
    /// Why the tap stopped, if it did: the replay can no longer see failures and must stop.
    lost: Option<String>,
}

/// A running failure watch.
pub struct Watch {
    /// Filled by the tap's task.
    seen: Arc<Mutex<Seen>>,
    /// The tap's connection; closing it deletes the tap's queue.
    broker: Admin,
    /// The tap's channel, kept open for as long as the watch runs.
    _channel: lapin::Channel,
    /// Reads the tap.
    task: tokio::task::JoinHandle<()>,
}

impl Watch {
    /// Taps `dlx`, the exchange that feeds the dead-letter queue.
    ///
    /// # Errors
    /// The broker cannot be reached, or the exchange is missing.
    pub async fn start(url: &AmqpUrl, dlx: &str) -> anyhow::Result<Self> {
        let broker =
            Admin::connect(url, &format!("courier-dlq replay (failure watch on {dlx})")).await?;
        let (channel, mut consumer) = broker.tap(dlx, "").await?;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let shared = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            let why = loop {
                match consumer.next().await {
                    Some(Ok(d)) => {
                        let headers = d.properties.headers().as_ref();
                        let n = courier::deadletter::replayed(headers);
                        let id = courier::envelope::message_id(&d.properties);
                        if let (true, Some(id)) = (n > 0, id) {
                            if let Ok(mut s) = shared.lock() {
                                let slot = s.back.entry(id.to_owned()).or_insert(n);
                                *slot = (*slot).max(n);
                            }
                        }
                    }
                    Some(Err(e)) => break format!("the watch's connection failed: {e}"),
                    None => break "the broker cancelled the watch's consumer".to_owned(),
                }
            };
            if let Ok(mut s) = shared.lock() {
                s.lost = Some(courier::amqp::redact(&why));
            }
        });
        Ok(Self {
            seen,
            broker,
            _channel: channel,
            task,
        })
    }

    /// Whether the replayed message `m` came back.
    pub fn came_back(&self, m: &Moved) -> bool {
        self.seen
            .lock()
            .map(|s| s.back.get(&m.id).is_some_and(|n| *n >= m.replayed))
            .unwrap_or(false)
    }

    /// Why the watch stopped seeing, if it did.
    pub fn lost(&self) -> Option<String> {
        self.seen.lock().ok().and_then(|s| s.lost.clone())
    }

    /// Counts the outcomes of `moved` so far.
    pub fn judge(&self, moved: &[Moved], wait: Duration, now: Instant) -> Tally {
        let mut t = Tally::default();
        for m in moved {
            let back = self.came_back(m);
            let old = now.saturating_duration_since(m.at) >= wait;
            t.moved += 1;
            t.failed += u64::from(back);
            t.old += u64::from(old);
            t.old_failed += u64::from(old && back);
        }
        t
    }

    /// Stops the tap (its queue goes with the connection).
    pub async fn close(self) {
        self.task.abort();
        self.broker.close().await;
    }
}

/// The outcomes of replayed messages at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// Replayed (copy confirmed).
    pub moved: u64,
    /// Came back to the dead-letter queue.
    pub failed: u64,
    /// Replayed at least the wait ago: decided (came back, or counted as delivered).
    pub old: u64,
    /// Of those, came back.
    pub old_failed: u64,
}

impl Tally {
    /// Replayed, not back, past the wait: counted as delivered.
    pub fn delivered(&self) -> u64 {
        self.old - self.old_failed
    }

    /// Not decided yet: not back, within the wait.
    pub fn undecided(&self) -> u64 {
        self.moved - self.failed - (self.old - self.old_failed)
    }
}

/// When a smart replay stops by itself.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// `--max-failure-rate`: the share of replayed messages that may come back.
    pub max_rate: f64,
    /// Messages to judge before the rate is trusted (the canary's size, at least
    /// [`MIN_SAMPLE`]).
    pub min_sample: u64,
}

/// The fewest replayed messages a failure rate is judged on.
pub const MIN_SAMPLE: u64 = 10;

impl Policy {
    /// Why the replay must stop, if it must. Two rates, both of which can only understate the
    /// final one: what came back of everything replayed (messages within the wait may still
    /// come back), and what came back of the messages replayed at least the wait ago (decided).
    /// Counting a message as delivered before its wait is over would overstate success; counting
    /// only early failures against only decided successes would overstate failure and stop a
    /// healthy replay.
    pub fn verdict(&self, t: &Tally, wait: Duration) -> Option<String> {
        let rate = |failed: u64, of: u64| failed as f64 / of as f64;
        if t.moved >= self.min_sample && rate(t.failed, t.moved) > self.max_rate {
            return Some(format!(
                "{} of {} replayed messages came back to the dead-letter queue ({:.0}%, above --max-failure-rate {:.0}%)",
                t.failed,
                t.moved,
                100.0 * rate(t.failed, t.moved),
                100.0 * self.max_rate
            ));
        }
        if t.old >= self.min_sample && rate(t.old_failed, t.old) > self.max_rate {
            return Some(format!(
                "{} of the {} messages replayed more than {} ago came back to the dead-letter queue ({:.0}%, above --max-failure-rate {:.0}%)",
                t.old_failed,
                t.old,
                humantime::format_duration(wait),
                100.0 * rate(t.old_failed, t.old),
                100.0 * self.max_rate
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_secs(30);

    fn policy() -> Policy {
        Policy {
            max_rate: 0.2,
            min_sample: 10,
        }
    }

    #[test]
    fn a_canary_that_fails_stops_as_soon_as_the_rate_is_certain() {
        // 10 replayed, 3 back already, none past the wait: 3/10 > 20 % whatever the rest do.
        let t = Tally {
            moved: 10,
            failed: 3,
            old: 0,
            old_failed: 0,
        };
        let why = policy().verdict(&t, WAIT).expect("stops");
        assert!(why.contains("3 of 10"), "{why}");
    }

    #[test]
    fn early_failures_alone_do_not_stop_a_healthy_replay() {
        // 5 % fail, at 500/s for 30 s: 15,000 replayed, 750 back before any success is
        // decided. Failed over decided would read 100 %; neither rate passes 20 %.
        let t = Tally {
            moved: 15_000,
            failed: 750,
            old: 0,
            old_failed: 0,
        };
        assert_eq!(policy().verdict(&t, WAIT), None);
        assert_eq!(t.undecided(), 14_250);
    }

    #[test]
    fn a_rate_passed_among_decided_messages_stops() {
        // Failures come back late (long retry tiers): only the decided ones show it.
        let t = Tally {
            moved: 1_000,
            failed: 150,
            old: 400,
            old_failed: 120,
        };
        let why = policy().verdict(&t, WAIT).expect("stops");
        assert!(why.contains("120 of the 400"), "{why}");
        assert_eq!(t.delivered(), 280);
    }

    #[test]
    fn too_few_messages_are_not_judged() {
        let t = Tally {
            moved: 4,
            failed: 4,
            old: 4,
            old_failed: 4,
        };
        assert_eq!(policy().verdict(&t, WAIT), None);
    }
}
