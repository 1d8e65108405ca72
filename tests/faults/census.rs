//! Where every message of a case ended up, counted from every place a message can be, and the
//! row of docs/reliability.md a passing case writes.
//!
//! A case sends ids it saw confirmed (its ground truth), injects its fault, lets the system
//! settle, stops every process (so nothing more can arrive: late duplicates are counted too),
//! and then takes the census: the sink's 2xx deliveries, the dead-letter queue, the work and
//! retry queues, any export file. An id found nowhere is lost; an id found more than once is
//! duplicated; an id found that was never sent is unexpected.

use crate::util::*;
use courier::envelope;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

/// Places where a message can be.
pub const DELIVERED: &str = "delivered";
pub const DEAD: &str = "dead-lettered";
pub const QUEUED: &str = "still queued";

#[derive(Default)]
pub struct Census {
    sent: Vec<String>,
    /// id -> the place of each copy found.
    seen: HashMap<String, Vec<&'static str>>,
}

impl Census {
    pub fn new(sent: &[String]) -> Self {
        Self {
            sent: sent.to_vec(),
            seen: HashMap::new(),
        }
    }

    /// Counts one copy of each id in `ids` as found in `place`.
    pub fn add(&mut self, place: &'static str, ids: impl IntoIterator<Item = String>) {
        for id in ids {
            self.seen.entry(id).or_default().push(place);
        }
    }

    /// The census of a delivery case, once every process has stopped: the sink's answers and
    /// every queue of the topology.
    pub async fn of_delivery(t: &TestTopology, sink: &Sink, sent: &[String]) -> Self {
        let mut c = Self::new(sent);
        c.add_sink(sink);
        c.add_queues(t).await;
        c
    }

    /// The sink's 2xx answers, one per delivery (a redelivery answered twice counts twice).
    pub fn add_sink(&mut self, sink: &Sink) {
        self.add(DELIVERED, delivered_ids(sink));
    }

    /// Empties every queue of the topology into the census: the dead-letter queue as
    /// [`DEAD`], work and retry queues as [`QUEUED`]. Call it once every process has stopped.
    pub async fn add_queues(&mut self, t: &TestTopology) {
        for q in &t.topology.queues {
            let place = if q.name == t.dlq() { DEAD } else { QUEUED };
            let ids = drain(&q.name).await.iter().map(id_of).collect::<Vec<_>>();
            self.add(place, ids);
        }
    }

    /// Sent ids found nowhere.
    pub fn lost(&self) -> Vec<&str> {
        self.sent
            .iter()
            .filter(|id| !self.seen.contains_key(id.as_str()))
            .map(String::as_str)
            .collect()
    }

    /// Extra copies of sent ids, wherever they are.
    pub fn duplicated(&self) -> usize {
        self.sent
            .iter()
            .filter_map(|id| self.seen.get(id))
            .map(|places| places.len().saturating_sub(1))
            .sum()
    }

    /// Ids found that were never sent.
    pub fn unexpected(&self) -> Vec<&str> {
        let sent: HashSet<&str> = self.sent.iter().map(String::as_str).collect();
        let mut odd: Vec<&str> = self
            .seen
            .keys()
            .map(String::as_str)
            .filter(|id| !sent.contains(id))
            .collect();
        odd.sort_unstable();
        odd
    }

    /// Sent ids with at least one copy in `place`.
    pub fn in_place(&self, place: &str) -> usize {
        self.sent
            .iter()
            .filter(|id| {
                self.seen
                    .get(id.as_str())
                    .is_some_and(|p| p.contains(&place))
            })
            .count()
    }

    /// Sent ids (of `ids`) with a copy anywhere but `place`, e.g. delivered when they should
    /// have been dead-lettered.
    pub fn elsewhere<'a>(&self, ids: &'a [String], place: &str) -> Vec<&'a str> {
        ids.iter()
            .filter(|id| {
                self.seen
                    .get(id.as_str())
                    .is_some_and(|p| p.iter().any(|x| *x != place))
            })
            .map(String::as_str)
            .collect()
    }

    /// Asserts that every sent id reached the sink, nothing that was not sent turned up, and at
    /// most `max_duplicated` extra copies exist anywhere.
    pub fn assert_all_delivered(&self, max_duplicated: usize) {
        assert!(
            self.lost().is_empty() && self.unexpected().is_empty(),
            "{}",
            self.summary()
        );
        assert_eq!(
            self.in_place(DELIVERED),
            self.sent.len(),
            "every message delivered: {}",
            self.summary()
        );
        assert!(
            self.duplicated() <= max_duplicated,
            "at most {max_duplicated} duplicates: {}",
            self.summary()
        );
    }

    /// One line saying where everything is, for assertion messages.
    pub fn summary(&self) -> String {
        let mut places: BTreeMap<&str, usize> = BTreeMap::new();
        for p in self.seen.values().flatten() {
            *places.entry(p).or_default() += 1;
        }
        let lost = self.lost();
        let unexpected = self.unexpected();
        format!(
            "sent {}; copies found: {places:?}; lost {} {:?}; duplicated {}; unexpected {} {:?}",
            self.sent.len(),
            lost.len(),
            &lost[..lost.len().min(10)],
            self.duplicated(),
            unexpected.len(),
            &unexpected[..unexpected.len().min(10)],
        )
    }

    /// The row this case writes once every assertion has passed ([`Row::passed`]).
    pub fn row(&self, fault: &str, injection: &str, recovery: Duration) -> Row {
        Row {
            fault: fault.to_owned(),
            injection: injection.to_owned(),
            sent: self.sent.len(),
            lost: self.lost().len(),
            duplicated: self.duplicated(),
            unexpected: self.unexpected().len(),
            recovery_secs: recovery.as_secs_f64(),
            run: run().clone(),
        }
    }
}

/// A message's id, or `(none)`.
pub fn id_of(m: &lapin::message::BasicGetMessage) -> String {
    envelope::message_id(&m.delivery.properties)
        .unwrap_or("(none)")
        .to_owned()
}

/// Which run a row comes from: rows of different runs never share a table.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Run {
    /// Unique per test process.
    pub id: String,
    /// `git rev-parse HEAD`, with `-dirty` when tracked files differ from it.
    pub commit: String,
    /// UTC, seconds.
    pub date: String,
    /// As the broker reports it (`connection.start`).
    pub broker: String,
}

pub fn run() -> &'static Run {
    static RUN: OnceLock<Run> = OnceLock::new();
    RUN.get_or_init(|| {
        let git = |args: &[&str]| {
            std::process::Command::new("git")
                .args(args)
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        };
        let mut commit = git(&["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".into());
        if git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty()) {
            commit.push_str("-dirty");
        }
        let date = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        // A fresh runtime: this runs once, from inside whichever test records first.
        let broker = std::thread::spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?
                .block_on(courier::broker::probe_version(&parsed_url()))
                .ok()
                .flatten()
                .map(|v| v.to_string())
        })
        .join()
        .ok()
        .flatten()
        .unwrap_or_else(|| "unknown".into());
        Run {
            id: format!("{date}-{}", std::process::id()),
            commit,
            date,
            broker,
        }
    })
}

/// One row of docs/reliability.md.
#[derive(Debug, serde::Serialize)]
pub struct Row {
    pub fault: String,
    pub injection: String,
    pub sent: usize,
    pub lost: usize,
    pub duplicated: usize,
    pub unexpected: usize,
    pub recovery_secs: f64,
    pub run: Run,
}

impl Row {
    /// Writes the row: call it after the case's last assertion. The file is per broker
    /// version (`target/tmp/reliability-<version>.jsonl`) and holds one run only: the first
    /// row of a run replaces whatever an earlier run left.
    pub fn passed(self) {
        let name = format!("reliability-{}.jsonl", self.run.broker);
        append_row("RELIABILITY", &name, &self);
    }
}

/// Appends `row` as a JSON line to `target/tmp/<file>` (echoed on stderr after `tag`). A file
/// holds one run only: the first row a test process writes to it replaces what an earlier run
/// left.
pub fn append_row(tag: &str, file: &str, row: &impl serde::Serialize) {
    let line = serde_json::to_string(row).expect("row JSON");
    eprintln!("{tag} {line}");
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(file);
    static FRESH: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
    {
        let mut fresh = FRESH.lock().unwrap_or_else(|e| e.into_inner());
        if !fresh.contains(&path) {
            let _ = std::fs::remove_file(&path);
            fresh.push(path.clone());
        }
    }
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    writeln!(f, "{line}").unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}
