//! A pass: replay, export or purge the messages that were in the queue when it started.
//!
//! Guarantees, and where they are kept:
//! - **Only what was there.** The ready count is read with a passive declare at the start and at
//!   most that many deliveries are taken. Dead letters arriving during the pass (replayed ones
//!   failing again included) queue up behind them and wait for the next pass: a replay can
//!   never loop.
//! - **One tool at a time.** The consumer is exclusive, and a queue that already has a consumer
//!   is refused before the count is read (a running pass holds its messages unacknowledged, so
//!   the queue would look empty).
//! - **Nothing acked before its copy is safe.** A replayed or kept message is acked after the
//!   broker confirmed the copy (mandatory publish through the library's [`Publisher`]); an
//!   exported one after its line is written and the file fsynced; a purged one is simply acked.
//!   A crash, SIGKILL or lost connection leaves every unacked message in the queue; the copies
//!   already made may then exist twice (a duplicate, never a loss).
//! - **What stays, stays in order, and in place when it can.** Messages that stay (not
//!   selected, selected but unable to move: no origin, a missing exchange, a returned publish;
//!   and every message of an export without `--remove`) are first *held*: kept unacknowledged,
//!   and given back at the end with the consumer cancelled first and one
//!   `basic.nack(multiple, requeue)`, which puts them back at their own positions. So a pass
//!   that selects nothing, or a few, rewrites nothing, and once `--limit` is reached the pass
//!   stops and the rest is never even delivered. Holding is bounded ([`HOLD`] messages,
//!   [`HOLD_BYTES`] of bodies, within the prefetch): past that, with messages still to come,
//!   the pass can only go on by acking, so every held message and every later one that stays
//!   is republished unchanged to the tail of the queue (default exchange, confirmed) and then
//!   acked. Those copies are published strictly in delivery order ([`Slot`]: a put-back waits
//!   until every earlier delivery is decided), so their relative order survives. Requeueing
//!   mid-pass instead would hand a message straight back to this consumer, and holding every
//!   one until the end would need a prefetch as large as the queue.
//! - **Bounded memory, fast.** `prefetch` bounds what the broker sends; up to `window`
//!   publishes await their confirms at once; acks are coalesced with `multiple` up to the
//!   highest tag below which every delivery is settled (the library's [`Frontier`], the rule
//!   the worker's acker keeps too).

use crate::cli::Rate;
use crate::export_file::ExportFile;
use crate::filter::Filter;
use crate::journal::Seen;
use crate::output::summary;
use crate::send::{publish_retrying, Pacer};
use crate::stats::Groups;
use courier::ack::{Frontier, Settle};
use courier::broker::{deadline, Admin, APPLY_HINT};
use courier::deadletter::{self, DeadLetter, Destination};
use courier::envelope;
use courier::publisher::{Outgoing, PublishError, Publisher};
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicNackOptions};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

mod config;
mod start;

pub use config::{Action, PassConfig, Report, Stayed};

/// Lines per export batch: one write + fsync + one multiple-ack per batch.
const EXPORT_BATCH: u64 = 1000;

/// An unfinished export batch is flushed this often, so a slow trickle is not held back.
const FLUSH_EVERY: Duration = Duration::from_millis(200);

/// How long without a delivery before checking whether the queue emptied under us.
const IDLE: Duration = Duration::from_secs(3);

/// How often the consuming channel's health is checked.
const HEALTH_EVERY: Duration = Duration::from_secs(1);

/// Most "stayed" messages listed one by one in the report (all are counted).
const MAX_LISTED: usize = 50;

/// At most this many messages that stay are held unacknowledged to be given back in place;
/// past it the pass puts them back at the tail instead. Part of the prefetch, so holding them
/// never stops the broker from sending the rest.
const HOLD: u64 = 1024;

/// At most this many body bytes are held (the pass keeps a copy of each held message, in case
/// it must go to the tail after all), so large messages switch to the tail sooner.
const HOLD_BYTES: usize = 16 * 1024 * 1024;

/// How a message that goes back to the tail is counted once its copy is confirmed.
enum KeepAs {
    /// Not selected.
    Kept,
    /// Exported without `--remove`: the file has a copy, the queue keeps it.
    Exported,
    /// Selected but could not move.
    Stayed(Stayed),
}

/// A delivery's place in the put-back order, for deliveries that may stay (those that go,
/// replayed, exported with `--remove` or purged, have none). While the pass holds what stays,
/// a [`Slot::Keep`] is a held message; once it puts back, copies go to the tail strictly in
/// delivery order, so everything that stays keeps its relative order, even a message that only
/// turns out to stay when its replay comes back unroutable.
enum Slot {
    /// Its replay is in flight: whether it goes back is not known yet.
    Undecided,
    /// Stays: held, or put back to the tail once every earlier delivery is decided.
    Keep(Box<Outgoing>, KeepAs),
}

/// The outcome of one message's publish job.
enum Done {
    /// The replay copy was confirmed at this destination.
    Replayed {
        /// Where it went.
        dest: String,
        /// The message id and the copy's `x-courier-replayed`, for the journal (none for a
        /// message without an id, or an edit's copy).
        journal: Option<(String, u32)>,
    },
    /// The replay copy was returned (no queue bound): the message must go back, unchanged.
    Returned(Box<Outgoing>, Stayed),
    /// The put-back copy was confirmed.
    PutBack(KeepAs),
}

type Job = Pin<Box<dyn Future<Output = (u64, Result<Done, PublishError>)> + Send>>;

/// The message as it was, for the tail of `queue`: same properties (x-death included), same
/// body.
fn put_back(queue: &str, d: &Delivery) -> Box<Outgoing> {
    Box::new(Outgoing {
        exchange: String::new(),
        routing_key: queue.to_owned(),
        properties: d.properties.clone(),
        body: d.data.clone(),
    })
}

fn id_of(d: &Delivery) -> String {
    envelope::message_id(&d.properties)
        .unwrap_or("(no message_id)")
        .to_owned()
}

/// Why a pass stopped when its connection (or channel) to the broker went away: the one failure
/// after which another pass over what is left is safe, since every unacknowledged message went
/// back to the queue ([`anyhow::Error::downcast_ref`] finds it in the error's chain).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Lost(&'static str);

/// Why a pass stopped when [`PassConfig::halt`] was cancelled: everything it confirmed is acked,
/// everything else is still in the queue.
#[derive(Debug, thiserror::Error)]
#[error("stopped on request; messages not handled yet stay in the queue")]
pub struct Halted;

/// Runs a pass. The report is returned even when the pass failed midway, with the error.
pub async fn run(
    broker: &Admin,
    publisher: &Publisher,
    config: &PassConfig,
    mut action: Action,
) -> (Report, Option<anyhow::Error>) {
    let started = Instant::now();
    let mut report = Report::default();
    let failure = Pass {
        broker,
        publisher,
        config,
        action: &mut action,
        report: &mut report,
        jobs: FuturesUnordered::new(),
        order: BTreeMap::new(),
        exchanges: HashMap::new(),
        in_place: true,
        held: 0,
        held_bytes: 0,
        to_journal: Vec::new(),
    }
    .run()
    .await;
    if let Action::Export { file, .. } = &action {
        report.lines = file.synced();
    }
    report.elapsed = started.elapsed();
    (report, failure.err())
}

/// The state of a running pass.
struct Pass<'a> {
    broker: &'a Admin,
    publisher: &'a Publisher,
    config: &'a PassConfig,
    action: &'a mut Action,
    report: &'a mut Report,
    /// Publishes awaiting their confirms.
    jobs: FuturesUnordered<Job>,
    /// Deliveries not yet put back or let go, by tag (see [`Slot`]).
    order: BTreeMap<u64, Slot>,
    /// Which destination exchanges exist (looked up once each).
    exchanges: HashMap<String, bool>,
    /// Nothing has gone to the tail: what stays is held, to be given back in place at the end.
    /// Cleared for good when holding more would pass [`HOLD`] or [`HOLD_BYTES`].
    in_place: bool,
    /// Messages held (while `in_place`).
    held: u64,
    /// Their body bytes.
    held_bytes: usize,
    /// Confirmed replay copies not yet in the journal; written before their originals' ack.
    to_journal: Vec<(String, u32)>,
}

impl Pass<'_> {
    async fn run(&mut self) -> anyhow::Result<()> {
        let queue = self.config.queue.clone();
        // Refused when anything consumes the queue: another pass holding every message
        // unacknowledged leaves 0 ready, which must not read as "nothing to do".
        let total = u64::from(self.broker.unused_queue(&queue, APPLY_HINT).await?.ready);
        self.report.total = total;
        self.report.started = true;
        if let Some(c) = &self.config.counters {
            c.started(total);
        }
        if total == 0 {
            return Ok(());
        }
        let journal = match &*self.action {
            Action::Replay { journal, .. } => journal.clone(),
            _ => None,
        };
        let selectable = match self
            .count_selected(&queue, total, journal.as_deref())
            .await?
        {
            Some(0) => {
                // Nothing can be selected: not one message is taken, nothing is rewritten.
                self.report.left = total;
                self.report.in_place = true;
                return Ok(());
            }
            counted => counted,
        };
        let paced = self.config.rate.is_some() || self.config.ramp.is_some();
        if paced && matches!(*self.action, Action::Replay { .. }) {
            // The publisher connects on its first publish. Every permit the limiter granted
            // meanwhile would reach the broker at once when it is up: a burst past --rate at the
            // start of every replay (19 over 100/s in the first second, measured here).
            self.publisher.ready().await.map_err(|e| {
                anyhow::Error::new(e).context(
                    "cannot connect to publish the replayed messages; nothing was taken from the queue",
                )
            })?;
        }
        let window = self.config.window.max(1);
        // Room for the publish window, an export batch, the held messages and a little slack,
        // so none waits for another; the broker never sends more than this unacknowledged.
        let prefetch = u16::try_from(window as u64 + EXPORT_BATCH + HOLD + 64).unwrap_or(u16::MAX);
        let (channel, mut consumer) = self.broker.consume_exclusive(&queue, prefetch).await?;

        let bar = crate::progress::bar(total, self.config.progress);
        let mut pacer = Pacer::new(self.config.rate, self.config.ramp);
        let halt = self.config.halt.clone().unwrap_or_default();
        let now_ms = envelope::now_millis();
        let asked = self.config.limit.unwrap_or(u64::MAX);
        // Once the last selectable message is taken, the pass stops like at --limit.
        let limit = asked.min(selectable.unwrap_or(u64::MAX));
        let mut frontier = Frontier::default();
        let mut pending: Option<Delivery> = None;
        let mut taken = 0u64;
        let mut stop = false;
        let mut failure: Option<anyhow::Error> = None;
        let mut flush_tick = tokio::time::interval(FLUSH_EVERY);
        flush_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Not every way a connection dies ends the consumer stream promptly; check the channel
        // itself now and then, so a dead connection stops the pass instead of stalling it.
        let mut health = tokio::time::interval(HEALTH_EVERY);
        health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let interrupted = tokio::signal::ctrl_c();
        tokio::pin!(interrupted);
        let mut interrupt_armed = true;

        loop {
            let examined = self.report.examined;
            let export_waiting =
                matches!(&*self.action, Action::Export { file, .. } if file.pending() > 0);
            let can_take =
                !stop && pending.is_none() && examined < total && self.jobs.len() < window;
            if !can_take && pending.is_none() && self.jobs.is_empty() && (stop || examined >= total)
            {
                break;
            }
            let mut settled: Vec<u64> = Vec::new();
            let mut tick_fired = false;
            tokio::select! {
                biased;
                _ = halt.cancelled(), if !stop => {
                    stop = true;
                    pending = None;
                    failure.get_or_insert_with(|| anyhow::Error::new(Halted));
                }
                _ = &mut interrupted, if interrupt_armed => {
                    interrupt_armed = false;
                    stop = true;
                    pending = None;
                    failure.get_or_insert_with(|| anyhow::anyhow!(
                        "interrupted; messages not handled yet stay in the queue"
                    ));
                }
                Some((tag, result)) = self.jobs.next(), if !self.jobs.is_empty() => {
                    match result {
                        Ok(done) => self.done(tag, done, &mut settled),
                        Err(e) => {
                            // Not confirmed after retries: stop taking messages; this one and
                            // everything not yet acked stays in the queue.
                            stop = true;
                            pending = None;
                            failure.get_or_insert_with(|| anyhow::Error::new(e).context(
                                "a publish was not confirmed; stopping the pass (unacknowledged messages stay in the queue)"
                            ));
                        }
                    }
                }
                _ = flush_tick.tick(), if export_waiting => tick_fired = true,
                _ = health.tick(), if !stop => {
                    if !channel.status().connected() {
                        stop = true;
                        pending = None;
                        failure.get_or_insert_with(|| anyhow::Error::new(Lost(
                            "the connection to the broker was lost; unacknowledged messages stay in the queue"
                        )));
                    }
                }
                _ = pacer.ready(), if pending.is_some() => {
                    pacer.took();
                    if let Some(d) = pending.take() {
                        self.start(d, true, &mut settled).await?;
                    }
                }
                next = consumer.next(), if can_take => {
                    match next {
                        Some(Ok(d)) => {
                            self.report.examined += 1;
                            frontier.delivered(d.delivery_tag);
                            let dl = DeadLetter::read(&d.properties, d.data.len());
                            let seen = journal.as_ref().map_or(Seen::New, |j| {
                                j.seen(&id_of(&d), deadletter::replayed(d.properties.headers().as_ref()))
                            });
                            if seen == Seen::MovedBefore {
                                // Its copy was confirmed before an interruption: only the ack
                                // is missing. Nothing is published again.
                                self.report.already += 1;
                                settled.push(d.delivery_tag);
                            } else {
                                if seen == Seen::CameBack {
                                    self.report.came_back += 1;
                                }
                                let selected = seen == Seen::New
                                    && taken < limit
                                    && self.config.filter.matches(&dl, d.properties.headers().as_ref(), now_ms);
                                if selected {
                                    taken += 1;
                                }
                                if selected && pacer.is_paced() {
                                    pending = Some(d);
                                } else {
                                    self.start(d, selected, &mut settled).await?;
                                }
                                if taken >= limit && self.in_place && self.report.examined < total {
                                    // Nothing can be selected any more, and nothing went to the
                                    // tail behind the rest: stop here, give back what was held,
                                    // and the rest is never even delivered.
                                    stop = true;
                                    self.report.stopped_early = true;
                                    self.report.past_last = limit < asked;
                                }
                            }
                        }
                        Some(Err(e)) => {
                            stop = true;
                            failure.get_or_insert_with(|| anyhow::Error::new(e).context(Lost(
                                "the connection to the broker failed; unacknowledged messages stay in the queue"
                            )));
                        }
                        None => {
                            stop = true;
                            failure.get_or_insert_with(|| anyhow::anyhow!(
                                "the broker cancelled our consumer (queue deleted?); unacknowledged messages went back to the queue"
                            ));
                        }
                    }
                }
                _ = tokio::time::sleep(IDLE), if can_take && self.jobs.is_empty() => {
                    // Fewer messages than counted: someone else removed some. Stop with what
                    // we have rather than wait forever.
                    if self.broker.existing_queue(&queue, APPLY_HINT).await?.ready == 0 {
                        stop = true;
                    }
                }
            }
            // Book every other job that has finished meanwhile, so that one ack frame covers a
            // burst of confirms instead of one frame (and one await) per message.
            for _ in 0..window {
                match self.jobs.next().now_or_never() {
                    Some(Some((tag, Ok(done)))) => self.done(tag, done, &mut settled),
                    Some(Some((_, Err(e)))) => {
                        stop = true;
                        pending = None;
                        failure.get_or_insert_with(|| anyhow::Error::new(e).context(
                            "a publish was not confirmed; stopping the pass (unacknowledged messages stay in the queue)"
                        ));
                    }
                    _ => break,
                }
            }
            let more_to_come = !stop && self.report.examined < total;
            if self.in_place && more_to_come && (self.held >= HOLD || self.held_bytes >= HOLD_BYTES)
            {
                // Holding more would fill the prefetch: go on by putting back to the tail, the
                // held messages first, in delivery order. The publisher must be connected
                // before they are released, or the first copies could overtake each other
                // while it connects. If it cannot connect, the pass stops and what it holds
                // still goes back in place.
                match self.publisher.ready().await {
                    Ok(()) => self.in_place = false,
                    Err(e) => {
                        stop = true;
                        pending = None;
                        failure.get_or_insert_with(|| anyhow::Error::new(e).context(
                            "cannot put messages back to the tail; stopping the pass (unacknowledged messages stay in the queue, in place)"
                        ));
                    }
                }
            }
            self.release();
            let finishing = self.jobs.is_empty()
                && pending.is_none()
                && (stop || self.report.examined >= total);
            if let Action::Export { file, remove } = &mut *self.action {
                // A batch goes to disk when it is full, when the pass is finishing, or every
                // FLUSH_EVERY so a slow trickle (--rate) is not held back.
                let full = file.pending() >= EXPORT_BATCH;
                if file.pending() > 0 && (full || finishing || tick_fired) {
                    let tags = file.flush().await?;
                    if *remove {
                        self.report.acted += tags.len() as u64;
                    }
                    settled.extend(tags);
                }
            }
            if let (Some(j), false) = (&journal, self.to_journal.is_empty()) {
                // Before the acks below: after a kill between the two, the next run knows these
                // copies exist.
                let moved = std::mem::take(&mut self.to_journal);
                if let Err(e) = j.record(&moved).await {
                    stop = true;
                    pending = None;
                    failure.get_or_insert_with(|| {
                        e.context("stopping the pass (what it confirmed is acked; the rest stays in the queue)")
                    });
                }
            }
            if !settled.is_empty() {
                bar.inc(settled.len() as u64);
                if let Some(c) = &self.config.counters {
                    c.settled(settled.len() as u64);
                }
                for t in settled {
                    frontier.settled(t, Settle::Ack);
                }
            }
            // Every iteration, not only when something settled now: a message held since can
            // block acks booked earlier, which must not wait for the end (where the nack that
            // gives the held ones back would requeue them too).
            let mut acks: Vec<(u64, bool)> = Vec::new();
            if let Some(upto) = frontier.take_ack() {
                acks.push((upto, true));
            }
            if self.held > 0 && self.in_place {
                // A multiple ack cannot pass a held message: ack the rest one by one now,
                // rather than keep them unacked (a duplicate if the tool died) until the end.
                acks.extend(frontier.take_stranded().into_iter().map(|t| (t, false)));
            }
            if !acks.is_empty() {
                let sent = futures_util::future::try_join_all(
                    acks.into_iter()
                        .map(|(t, multiple)| channel.basic_ack(t, BasicAckOptions { multiple })),
                );
                if let Err(e) = deadline("acknowledging", sent).await {
                    bar.finish_and_clear();
                    return Err(anyhow::Error::new(e).context(Lost(
                        "the channel was lost; unacknowledged messages stay in the queue, and copies already confirmed may now exist twice",
                    )));
                }
            }
        }
        bar.finish_and_clear();
        let held = self.give_back_held();
        // Held messages go back in place: the consumer is cancelled first so they are not
        // delivered to it again, then one nack(multiple, requeue) up to the last of them (every
        // other delivery below it is acked by now). Deliveries taken beyond the count (new
        // arrivals) or left by an early stop were never acked either: the broker requeues
        // them, in place, when the channel closes (as it does the held ones if the nack fails).
        if channel.status().connected() {
            let cancel = channel.basic_cancel(consumer.tag(), BasicCancelOptions::default());
            let _ = deadline("cancelling the consumer", cancel).await;
            if let Some(last) = held {
                let options = BasicNackOptions {
                    multiple: true,
                    requeue: true,
                };
                let _ = deadline(
                    "giving the held messages back",
                    channel.basic_nack(last, options),
                )
                .await;
            }
            let _ = deadline(
                "closing the channel",
                channel.close(200, "pass finished".into()),
            )
            .await;
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// How many messages a selective pass will select, counted first by an inspection (every
    /// message given back in place), so that the pass can stop after the last one instead of
    /// taking, holding or rewriting what lies behind it. `None` when the pass selects
    /// everything (nothing to learn) or the queue is larger than an inspection can look at.
    async fn count_selected(
        // `&mut`, not `&`: a shared borrow of the pass held across the await would make the
        // pass's future not `Send` (the pass is not `Sync`), and the console runs passes on
        // the runtime's threads.
        &mut self,
        queue: &str,
        total: u64,
        journal: Option<&crate::journal::Journal>,
    ) -> anyhow::Result<Option<u64>> {
        if self.config.filter.is_empty() || total > crate::inspect::MAX_INSPECT {
            return Ok(None);
        }
        let now_ms = envelope::now_millis();
        let mut selected = 0u64;
        let sample = crate::inspect::inspect(self.broker, queue, total, |d| {
            let fresh = journal.is_none_or(|j| {
                j.seen(
                    &id_of(d),
                    deadletter::replayed(d.properties.headers().as_ref()),
                ) == Seen::New
            });
            let dl = DeadLetter::read(&d.properties, d.data.len());
            if fresh
                && self
                    .config
                    .filter
                    .matches(&dl, d.properties.headers().as_ref(), now_ms)
            {
                selected += 1;
            }
            Ok(std::ops::ControlFlow::Continue(()))
        })
        .await?;
        // Messages that arrived since the pass counted the queue are not its to take; a count
        // that could not see the whole queue proves nothing.
        Ok((sample.examined >= total.min(sample.total)).then_some(selected))
    }

    /// Counts the messages still held at the end, which go back in place, and returns the
    /// highest held tag (the one the nack names), if any.
    fn give_back_held(&mut self) -> Option<u64> {
        if !self.in_place {
            return None;
        }
        self.report.in_place = true;
        let mut last = None;
        for (tag, slot) in std::mem::take(&mut self.order) {
            // Every replay has finished by now; an undecided slot could only be left by a
            // failure, and that delivery is unacked as well.
            last = Some(tag);
            if let Slot::Keep(_, how) = slot {
                match how {
                    KeepAs::Kept => self.report.left += 1,
                    KeepAs::Exported => self.report.acted += 1,
                    KeepAs::Stayed(s) => self.stayed(s),
                }
            }
        }
        last
    }

    fn stayed(&mut self, s: Stayed) {
        self.report.stayed += 1;
        if self.report.stayed_list.len() < MAX_LISTED {
            self.report.stayed_list.push(s);
        }
    }

    /// Books a finished job.
    fn done(&mut self, tag: u64, done: Done, settled: &mut Vec<u64>) {
        match done {
            Done::Replayed { dest, journal } => {
                settled.push(tag);
                self.order.remove(&tag);
                self.report.acted += 1;
                self.report.by_destination.add(&dest);
                self.to_journal.extend(journal);
            }
            Done::Returned(msg, stayed) => {
                // Held, or settled once its put-back copy is confirmed.
                self.keep(tag, msg, KeepAs::Stayed(stayed));
            }
            Done::PutBack(how) => {
                settled.push(tag);
                match how {
                    KeepAs::Kept => self.report.kept += 1,
                    KeepAs::Exported => self.report.acted += 1,
                    KeepAs::Stayed(s) => self.stayed(s),
                }
            }
        }
    }

    /// Publishes the put-back copies whose turn has come: every earlier delivery is decided.
    /// Nothing while the pass holds what stays.
    fn release(&mut self) {
        if self.in_place {
            return;
        }
        while let Some(entry) = self.order.first_entry() {
            if matches!(entry.get(), Slot::Undecided) {
                return;
            }
            let (tag, slot) = entry.remove_entry();
            if let Slot::Keep(msg, how) = slot {
                let p = self.publisher.clone();
                // The copies reach the broker in the order their publishes are first polled,
                // which is the order they are pushed here (the publisher keeps that order).
                self.jobs.push(Box::pin(async move {
                    let r = publish_retrying(&p, &msg)
                        .await
                        .map(|()| Done::PutBack(how));
                    (tag, r)
                }));
            }
        }
    }

    /// Records a delivery that stays: held while the pass is in place, else put back in turn.
    fn keep(&mut self, tag: u64, msg: Box<Outgoing>, how: KeepAs) {
        if self.in_place {
            self.held += 1;
            self.held_bytes += msg.body.len();
        }
        self.order.insert(tag, Slot::Keep(msg, how));
    }
}

/// A pass runs on any of the runtime's threads (the console spawns them): this fails to compile
/// if its future stops being `Send`.
#[allow(dead_code)]
fn pass_future_is_send<'a>(
    broker: &'a Admin,
    publisher: &'a Publisher,
    config: &'a PassConfig,
    action: Action,
) -> impl Future<Output = (Report, Option<anyhow::Error>)> + Send + 'a {
    run(broker, publisher, config, action)
}

/// The copy a replay publishes: same properties and body, replay headers, persistent.
pub fn replay_copy(d: &Delivery, dest: &Destination) -> Outgoing {
    let mut headers = deadletter::replay_headers(d.properties.headers().as_ref());
    // A replay is a new start: a new trace, linked to the dead letter's (not its child).
    courier::telemetry::replay_context(&mut headers);
    Outgoing {
        exchange: dest.exchange.clone(),
        routing_key: dest.routing_key.clone(),
        properties: envelope::with_headers(&d.properties, headers),
        body: d.data.clone(),
    }
}
