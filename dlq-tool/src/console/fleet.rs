//! The fleet's numbers: every work queue, its retry tiers and the dead-letter queue, as the
//! management API reports them (RabbitMQ's own counts and rates: nothing is counted by
//! consuming), sampled every `--refresh` into a ring buffer of the last hour for the chart.

use courier::management::{Management, QueueStats};
use courier::topology::Topology;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How far back the chart looks.
pub const WINDOW: Duration = Duration::from_secs(3600);

/// What a row of the fleet table is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A work queue, consumed by `courier work`.
    Work,
    /// A retry tier of the work queue above it.
    Tier,
    /// The dead-letter queue.
    DeadLetters,
}

/// One queue's numbers.
#[derive(Debug, Clone)]
pub struct Row {
    /// The queue.
    pub name: String,
    /// What it is.
    pub kind: Kind,
    /// Its statistics; `None` when the API does not know the queue.
    pub stats: Option<QueueStats>,
}

/// One sample of the dead-letter queue, for the chart.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// When (epoch ms).
    pub at_ms: i64,
    /// Messages in the dead-letter queue (ready and unacknowledged).
    pub size: Option<u64>,
    /// Dead letters arriving per second (the queue's publish rate).
    pub rate: Option<f64>,
}

/// The latest numbers and the last hour of the dead-letter queue.
#[derive(Debug, Default)]
pub struct Fleet {
    /// The table, as last read.
    pub rows: Vec<Row>,
    /// When it was read (epoch ms); 0 before the first time.
    pub at_ms: i64,
    /// Why the last read failed, if it did (the rows are then the previous ones).
    pub error: Option<String>,
    /// The last hour, oldest first: at most [`WINDOW`] / `--refresh` points.
    pub history: VecDeque<Point>,
}

impl Fleet {
    /// Adds a point, dropping what is older than [`WINDOW`] (and anything past `capacity`).
    pub fn push(&mut self, p: Point, capacity: usize) {
        let oldest = p.at_ms - WINDOW.as_millis() as i64;
        while self
            .history
            .front()
            .is_some_and(|f| f.at_ms < oldest || self.history.len() >= capacity)
        {
            self.history.pop_front();
        }
        self.history.push_back(p);
    }
}

/// The queues to show: each work queue followed by its retry tiers, then the dead-letter queue.
pub fn queues(topology: Option<&Topology>, dlq: &str) -> Vec<(String, Kind)> {
    let mut v = Vec::new();
    if let Some(t) = topology {
        for w in &t.work_queues {
            v.push((w.name.clone(), Kind::Work));
            v.extend(w.retry_queues.iter().map(|r| (r.clone(), Kind::Tier)));
        }
    }
    v.push((dlq.to_owned(), Kind::DeadLetters));
    v
}

/// Reads every queue's numbers every `every` into `fleet`, forever (the caller aborts it).
pub async fn sample(
    management: Management,
    queues: Vec<(String, Kind)>,
    fleet: Arc<Mutex<Fleet>>,
    every: Duration,
) {
    let capacity = (WINDOW.as_millis() / every.as_millis().max(1)) as usize + 1;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let reads = futures_util::future::join_all(queues.iter().map(|(name, kind)| {
            let m = &management;
            async move { (name.clone(), *kind, m.queue_stats(name).await) }
        }))
        .await;
        let now = courier::envelope::now_millis();
        let mut rows = Vec::with_capacity(reads.len());
        let mut error = None;
        for (name, kind, read) in reads {
            match read {
                Ok(stats) => rows.push(Row { name, kind, stats }),
                Err(e) => {
                    error.get_or_insert_with(|| courier::amqp::redact(&e.to_string()));
                }
            }
        }
        let mut f = fleet
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f.error = error;
        if f.error.is_none() {
            let dlq = rows
                .iter()
                .find(|r| r.kind == Kind::DeadLetters)
                .and_then(|r| r.stats.as_ref());
            let point = Point {
                at_ms: now,
                size: dlq
                    .and_then(|s| Some(s.messages_ready? + s.messages_unacknowledged.unwrap_or(0))),
                rate: dlq.and_then(|s| s.message_stats.publish_rate()),
            };
            f.push(point, capacity);
            f.rows = rows;
            f.at_ms = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_buffer_keeps_the_last_hour_and_its_capacity() {
        let mut f = Fleet::default();
        let at = |s: i64| Point {
            at_ms: s * 1000,
            size: Some(s as u64),
            rate: None,
        };
        for s in 0..10_000 {
            f.push(at(s), 721);
        }
        assert_eq!(f.history.len(), 721);
        assert_eq!(f.history.back().map(|p| p.at_ms), Some(9_999_000));
        // A gap longer than the window empties it but for the new point.
        f.push(at(20_000), 721);
        assert_eq!(f.history.len(), 1);
    }

    #[test]
    fn tiers_follow_their_work_queue_and_the_dlq_comes_last() {
        let t = Topology::load(
            std::path::Path::new(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../topology/notifications.toml"
            )),
            "",
        )
        .expect("default topology");
        let q = queues(Some(&t), &t.dead_letter_queue);
        assert_eq!(q.first().map(|(_, k)| *k), Some(Kind::Work));
        assert_eq!(
            q.last().map(|(n, k)| (n.as_str(), *k)),
            Some(("notifications.dlq", Kind::DeadLetters))
        );
        assert!(q.iter().any(|(_, k)| *k == Kind::Tier));
    }
}
