//! Counting ids: which of the N messages arrived, how many times, and how late.
//!
//! Every scenario publishes ids `0..N` and hands each arrival to a [`Tally`]. A message never
//! seen is *lost* (the run fails); one seen more than once is *duplicated* (allowed by
//! at-least-once delivery, reported). Lock-free per-id slots, because the tally is on the hot
//! path of the consumers being measured and must not become the bottleneck itself.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Arrivals of the ids `0..expected`.
pub struct Tally {
    /// Deliveries seen per id.
    counts: Vec<AtomicU32>,
    /// Publish-to-arrival latency of each id's first arrival, in µs + 1 (0 = none recorded).
    /// Empty when latency is not tracked (drains of a backlog filled long before).
    latency_us: Vec<AtomicU32>,
    /// Ids seen at least once.
    unique: AtomicUsize,
    /// Arrivals in total.
    total: AtomicU64,
    /// Arrivals whose id is not one of ours (should never happen: queues are private).
    foreign: AtomicU64,
    /// When the first id arrived: the start of a drain's measured interval.
    first_at: OnceLock<Instant>,
    /// When the last missing id arrived: the end of the measured interval.
    completed_at: OnceLock<Instant>,
}

/// Why waiting for a tally ended without every id.
#[derive(Debug, Clone, Copy)]
pub struct Stalled {
    /// Ids seen when the wait gave up.
    pub unique: usize,
}

/// The counts of a finished (or abandoned) scenario.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    /// Ids published.
    pub expected: u64,
    /// Ids never seen.
    pub lost: u64,
    /// Extra arrivals beyond the first of each id.
    pub duplicated: u64,
    /// Arrivals of ids outside `0..expected`.
    pub foreign: u64,
    /// Median latency, if tracked.
    pub p50_ms: Option<f64>,
    /// 99th percentile latency, if tracked.
    pub p99_ms: Option<f64>,
}

impl Tally {
    /// A tally for ids `0..expected`, with latency if `latency`.
    pub fn new(expected: u64, latency: bool) -> Self {
        let n = usize::try_from(expected).unwrap_or(usize::MAX);
        let slots = |k: usize| (0..k).map(|_| AtomicU32::new(0)).collect::<Vec<_>>();
        Self {
            counts: slots(n),
            latency_us: if latency { slots(n) } else { Vec::new() },
            unique: AtomicUsize::new(0),
            total: AtomicU64::new(0),
            foreign: AtomicU64::new(0),
            first_at: OnceLock::new(),
            completed_at: OnceLock::new(),
        }
    }

    /// Records one arrival of `seq`, `age` after it was published.
    pub fn record(&self, seq: u64, age: Option<Duration>) {
        self.total.fetch_add(1, Ordering::Relaxed);
        let Some(slot) = usize::try_from(seq).ok().and_then(|i| self.counts.get(i)) else {
            self.foreign.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if slot.fetch_add(1, Ordering::Relaxed) != 0 {
            return;
        }
        if self.first_at.get().is_none() {
            let _ = self.first_at.set(Instant::now());
        }
        if let (Some(age), Some(l)) = (
            age,
            usize::try_from(seq)
                .ok()
                .and_then(|i| self.latency_us.get(i)),
        ) {
            let us = u32::try_from(age.as_micros()).unwrap_or(u32::MAX - 1);
            l.store(us.saturating_add(1), Ordering::Relaxed);
        }
        if self.unique.fetch_add(1, Ordering::AcqRel) + 1 == self.counts.len() {
            let _ = self.completed_at.set(Instant::now());
        }
    }

    /// Records an arrival identified only by its message id (the Python peer, HTTP requests).
    pub fn record_id(&self, id: &str) {
        match crate::payload::seq_of_id(id) {
            Some(seq) => self.record(seq, None),
            None => {
                self.total.fetch_add(1, Ordering::Relaxed);
                self.foreign.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// True once every id has arrived.
    pub fn is_complete(&self) -> bool {
        self.completed_at.get().is_some() || self.counts.is_empty()
    }

    /// When the first id arrived, if one has.
    pub fn first_arrival(&self) -> Option<Instant> {
        self.first_at.get().copied()
    }

    /// The interval a drain is measured over: first arrival to last (connection set-up and
    /// the broker's first dispatch excluded, for every client alike). `end` is what
    /// [`Tally::wait`] returned.
    pub fn drain_time(&self, end: Instant) -> Duration {
        self.first_arrival()
            .map_or(Duration::ZERO, |first| end.saturating_duration_since(first))
    }

    /// Ids seen so far.
    pub fn unique(&self) -> usize {
        self.unique.load(Ordering::Acquire)
    }

    /// Waits until every id has arrived and returns the instant the last one did; gives up when
    /// no new id arrives for `stall` (a lost message, or a stuck consumer).
    ///
    /// # Errors
    /// [`Stalled`] with the ids seen so far.
    pub async fn wait(&self, stall: Duration) -> Result<Instant, Stalled> {
        let mut last = self.unique();
        let mut since = Instant::now();
        loop {
            if let Some(at) = self.completed_at.get() {
                return Ok(*at);
            }
            if self.counts.is_empty() {
                return Ok(Instant::now());
            }
            // Polling is enough: the end instant is stamped by `record`, not by this wake-up.
            tokio::time::sleep(Duration::from_millis(10)).await;
            let now = self.unique();
            if now != last {
                last = now;
                since = Instant::now();
            } else if since.elapsed() >= stall {
                return Err(Stalled { unique: now });
            }
        }
    }

    /// Lost, duplicated and latency percentiles.
    pub fn counts(&self) -> Counts {
        let expected = self.counts.len() as u64;
        let unique = self.unique() as u64;
        let total = self.total.load(Ordering::Relaxed);
        let foreign = self.foreign.load(Ordering::Relaxed);
        let mut lat: Vec<u32> = self
            .latency_us
            .iter()
            .map(|l| l.load(Ordering::Relaxed))
            .filter(|&v| v > 0)
            .map(|v| v - 1)
            .collect();
        lat.sort_unstable();
        Counts {
            expected,
            lost: expected - unique,
            duplicated: total - foreign - unique,
            foreign,
            p50_ms: percentile_ms(&lat, 0.50),
            p99_ms: percentile_ms(&lat, 0.99),
        }
    }
}

/// Nearest-rank percentile of sorted microsecond values, in milliseconds.
fn percentile_ms(sorted_us: &[u32], q: f64) -> Option<f64> {
    if sorted_us.is_empty() {
        return None;
    }
    let rank = (q * sorted_us.len() as f64).ceil() as usize;
    let i = rank.clamp(1, sorted_us.len()) - 1;
    Some(f64::from(sorted_us[i]) / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_lost_duplicated_and_foreign() {
        let t = Tally::new(4, false);
        t.record(0, None);
        t.record(1, None);
        t.record(1, None);
        t.record(9, None);
        t.record_id("nope");
        assert!(!t.is_complete());
        let c = t.counts();
        assert_eq!((c.lost, c.duplicated, c.foreign), (2, 1, 2));
        t.record(2, None);
        t.record_id("3");
        assert!(t.is_complete());
        assert_eq!(t.counts().lost, 0);
    }

    #[test]
    fn percentiles_use_first_arrivals() {
        let t = Tally::new(100, true);
        for i in 0..100u64 {
            t.record(i, Some(Duration::from_millis(i + 1)));
        }
        t.record(0, Some(Duration::from_secs(100)));
        let c = t.counts();
        assert_eq!(c.p50_ms, Some(50.0));
        assert_eq!(c.p99_ms, Some(99.0));
    }

    #[tokio::test]
    async fn wait_gives_up_when_nothing_arrives() {
        let t = Tally::new(2, false);
        t.record(0, None);
        let r = t.wait(Duration::from_millis(50)).await;
        assert!(matches!(r, Err(Stalled { unique: 1 })));
    }
}
