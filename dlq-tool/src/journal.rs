//! A replay's journal: which dead letters it moved, so that running the same replay again after
//! an interruption (Ctrl-C, SIGKILL, a broker gone for longer than the pass resumes) replays
//! none of them a second time.
//!
//! For each message whose copy the broker confirmed, the replay appends
//! `{"id": "<message id>", "replayed": <the copy's x-courier-replayed>}` *before* it acks the
//! original. The next replay of the same dead-letter queue reads the file and, per delivery:
//! - the id is there with a copy count above the delivery's own `x-courier-replayed`: this is
//!   the original of a confirmed copy, left unacknowledged when the process died between the
//!   confirm and the ack. It is acked now, not published again ([`Seen::MovedBefore`]);
//! - the id is there with a count at or below the delivery's: this is the copy, back in the
//!   dead-letter queue because it failed again after the interrupted run moved it. It stays,
//!   as every dead letter that arrives during a pass does ([`Seen::CameBack`]): the resumed run
//!   continues the interrupted one, and a pass never replays its own re-failures.
//!
//! A replay that ends by itself (everything selected looked at, or stopped by its failure rate)
//! deletes its journal: the next replay starts afresh, and replays what came back. One that was
//! interrupted or failed keeps it. `replay --fresh` deletes it first.
//!
//! Lines are written, not fsynced: they outlive the process (SIGKILL included) but not a crash
//! of the machine, after which the last moments' messages may be replayed twice
//! (at-least-once, as everywhere in Courier). A torn last line (the process killed mid-write) is
//! ignored.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;
use tokio::io::AsyncWriteExt;

/// What a journal from an earlier run says about a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Not moved by the run the journal records.
    New,
    /// The original of a copy that run had confirmed: ack it, publish nothing.
    MovedBefore,
    /// That run's copy, back after failing again: it stays.
    CameBack,
}

/// One message this run moved.
#[derive(Debug, Clone)]
pub struct Moved {
    /// Its message id.
    pub id: String,
    /// The copy's `x-courier-replayed`: how the copy is told apart from its original, and from
    /// the copy of a later replay, when one of them comes back.
    pub replayed: u32,
    /// When the broker confirmed the copy (the failure watch counts from here).
    pub at: Instant,
}

/// An open journal.
pub struct Journal {
    /// The file, named in messages.
    path: PathBuf,
    /// What the interrupted run moved: copy count by message id.
    earlier: HashMap<String, u32>,
    /// When the interrupted run started, from the file's first line (for the "resuming" note).
    earlier_started: Option<String>,
    /// Appends go here, in order.
    file: tokio::sync::Mutex<tokio::fs::File>,
    /// What this run moved, in confirm order (the failure watch reads it).
    moved: Mutex<Vec<Moved>>,
}

/// The journal of replays from `queue` in the state directory:
/// `<state>/replay/<queue>.jsonl`, with any character that cannot be in a file name replaced.
pub fn default_path(queue: &str) -> Option<PathBuf> {
    let name: String = queue
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    Some(
        crate::audit::state_dir()?
            .join("replay")
            .join(format!("{name}.jsonl")),
    )
}

impl Journal {
    /// Opens the journal at `path` for a replay of `queue`: reads what an interrupted run
    /// recorded (unless `fresh`, which deletes it), and appends from there.
    ///
    /// # Errors
    /// The file cannot be read, created or written, or a line before the last is not a journal
    /// line; each names the file.
    pub async fn open(path: &Path, queue: &str, fresh: bool) -> anyhow::Result<Self> {
        let mut earlier = HashMap::new();
        let mut earlier_started = None;
        let existing = match tokio::fs::read_to_string(path).await {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!(
                    "reading the replay journal {} (--fresh starts over, replaying what an interrupted run moved again)",
                    path.display()
                )))
            }
        };
        if let Some(text) = existing.filter(|_| !fresh) {
            let (started, moved) = parse(&text, queue).map_err(|e| {
                anyhow::anyhow!(
                    "the replay journal {}: {e} (--fresh starts over, replaying what an interrupted run moved again)",
                    path.display()
                )
            })?;
            earlier_started = started;
            earlier = moved;
        } else if fresh {
            match tokio::fs::remove_file(path).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(anyhow::Error::new(e)
                        .context(format!("deleting the replay journal {}", path.display())))
                }
            }
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(dir).await.map_err(|e| {
                anyhow::Error::new(e).context(format!("creating {}", dir.display()))
            })?;
        }
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .await
            .map_err(|e| {
                anyhow::Error::new(e)
                    .context(format!("opening the replay journal {}", path.display()))
            })?;
        if earlier_started.is_none() && earlier.is_empty() {
            let header = serde_json::json!({
                "journal": "courier-dlq replay",
                "queue": queue,
                "started": crate::render::format_time_ms(courier::envelope::now_millis()),
                "user": crate::audit::user(),
            });
            file.write_all(format!("{header}\n").as_bytes())
                .await
                .map_err(|e| {
                    anyhow::Error::new(e)
                        .context(format!("writing the replay journal {}", path.display()))
                })?;
        }
        Ok(Self {
            path: path.to_owned(),
            earlier,
            earlier_started,
            file: tokio::sync::Mutex::new(file),
            moved: Mutex::new(Vec::new()),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many messages the interrupted run recorded, and when it started, if there was one.
    pub fn resumed(&self) -> Option<(usize, String)> {
        (!self.earlier.is_empty() || self.earlier_started.is_some()).then(|| {
            (
                self.earlier.len(),
                self.earlier_started.clone().unwrap_or_default(),
            )
        })
    }

    /// What the interrupted run did with the message `id` whose `x-courier-replayed` is
    /// `replayed`.
    pub fn seen(&self, id: &str, replayed: u32) -> Seen {
        match self.earlier.get(id) {
            None => Seen::New,
            Some(copy) if *copy > replayed => Seen::MovedBefore,
            Some(_) => Seen::CameBack,
        }
    }

    /// Records confirmed copies (message id, the copy's count), before their originals are
    /// acked.
    ///
    /// # Errors
    /// The write failed (named with the file).
    pub async fn record(&self, moved: &[(String, u32)]) -> anyhow::Result<()> {
        if moved.is_empty() {
            return Ok(());
        }
        let mut lines = String::new();
        for (id, replayed) in moved {
            lines.push_str(&serde_json::json!({ "id": id, "replayed": replayed }).to_string());
            lines.push('\n');
        }
        self.file
            .lock()
            .await
            .write_all(lines.as_bytes())
            .await
            .map_err(|e| {
                anyhow::Error::new(e).context(format!(
                    "writing the replay journal {}",
                    self.path.display()
                ))
            })?;
        let at = Instant::now();
        if let Ok(mut m) = self.moved.lock() {
            m.extend(moved.iter().map(|(id, replayed)| Moved {
                id: id.clone(),
                replayed: *replayed,
                at,
            }));
        }
        Ok(())
    }

    /// What this run moved so far, from the `from`-th message on.
    pub fn moved_since(&self, from: usize) -> Vec<Moved> {
        self.moved
            .lock()
            .map(|m| m.get(from..).map(<[Moved]>::to_vec).unwrap_or_default())
            .unwrap_or_default()
    }

    /// How many messages this run moved.
    pub fn moved_count(&self) -> usize {
        self.moved.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// The replay ended by itself: the next one starts afresh.
    pub async fn finish(self) {
        drop(self.file);
        if let Err(e) = tokio::fs::remove_file(&self.path).await {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!(
                    "warning: could not delete the replay journal {}: {e}; the next replay of this queue will treat what this one moved as moved (--fresh starts over)",
                    self.path.display()
                );
            }
        }
    }
}

/// The journal's lines: when its run started, and copy count by message id. A last line that
/// does not parse was torn by a kill mid-write and is ignored; any other is an error.
fn parse(text: &str, queue: &str) -> Result<(Option<String>, HashMap<String, u32>), String> {
    let mut started = None;
    let mut moved = HashMap::new();
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(_) if i + 1 == lines.len() && !text.ends_with('\n') => continue,
            Err(e) => return Err(format!("line {}: not JSON ({e})", i + 1)),
        };
        if value.get("journal").is_some() {
            if let Some(q) = value.get("queue").and_then(|q| q.as_str()) {
                if q != queue {
                    return Err(format!(
                        "it records a replay of {q}, not of {queue}; pass --journal FILE for this queue"
                    ));
                }
            }
            started = value
                .get("started")
                .and_then(|s| s.as_str())
                .map(str::to_owned);
            continue;
        }
        let id = value.get("id").and_then(|v| v.as_str());
        let replayed = value
            .get("replayed")
            .and_then(serde_json::Value::as_u64)
            .and_then(|n| u32::try_from(n).ok());
        match (id, replayed) {
            (Some(id), Some(n)) => {
                let slot = moved.entry(id.to_owned()).or_insert(n);
                *slot = (*slot).max(n);
            }
            _ => {
                return Err(format!(
                    "line {}: expected {{\"id\": ..., \"replayed\": N}}",
                    i + 1
                ))
            }
        }
    }
    Ok((started, moved))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_original_left_unacked_is_told_from_its_copy_come_back() {
        let text = "{\"journal\":\"courier-dlq replay\",\"queue\":\"q.dlq\",\"started\":\"2026-12-01T08:00:00.000Z\"}\n{\"id\":\"a\",\"replayed\":1}\n{\"id\":\"b\",\"replayed\":3}\n";
        let (started, moved) = parse(text, "q.dlq").expect("parses");
        assert_eq!(started.as_deref(), Some("2026-12-01T08:00:00.000Z"));
        let journal = |id: &str, n: u32| match moved.get(id) {
            None => Seen::New,
            Some(c) if *c > n => Seen::MovedBefore,
            Some(_) => Seen::CameBack,
        };
        assert_eq!(journal("a", 0), Seen::MovedBefore);
        assert_eq!(journal("a", 1), Seen::CameBack);
        assert_eq!(journal("b", 2), Seen::MovedBefore);
        assert_eq!(journal("c", 0), Seen::New);
    }

    #[test]
    fn a_torn_last_line_is_ignored_a_bad_middle_line_is_not() {
        let torn = "{\"id\":\"a\",\"replayed\":1}\n{\"id\":\"b\",\"repl";
        let (_, moved) = parse(torn, "q").expect("torn tail ignored");
        assert_eq!(moved.len(), 1);
        let bad = "{\"id\":\"a\",\"replayed\":1}\nnot json\n{\"id\":\"b\",\"replayed\":1}\n";
        let e = parse(bad, "q").expect_err("bad middle line");
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn another_queues_journal_is_refused() {
        let text = "{\"journal\":\"courier-dlq replay\",\"queue\":\"other.dlq\"}\n";
        let e = parse(text, "q.dlq").expect_err("other queue");
        assert!(e.contains("other.dlq"), "{e}");
    }

    #[test]
    fn the_default_path_is_one_file_per_queue() {
        if let Some(p) = default_path("t.a/b c.dlq") {
            assert!(
                p.ends_with("courier/replay/t.a_b_c.dlq.jsonl"),
                "{}",
                p.display()
            );
        }
    }
}
