//! `courier-dlq import FILE`: publish an export file's messages back, confirmed, unchanged.
//!
//! The whole file is checked first, so a bad line 90,000 does not leave a half-imported file;
//! an unfinished last line (an export killed mid-write; its message was never acked, so it is
//! still in the queue it came from) is skipped with a warning.
//!
//! The file is read with `tokio::fs`, whose reads run on the blocking pool: a slow disk or a
//! network mount must not stall the runtime threads that keep the broker connection alive.

use super::{close_publisher, connect, publisher};
use crate::cli::{Global, ImportArgs};
use crate::jsonl::{self, Record};
use crate::output::thousands;
use crate::send::{limiter, publish_retrying, wait_rate};
use anyhow::Context;
use courier::publisher::{Outgoing, PublishError};
use futures_util::StreamExt;
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;
use tokio::fs::File;
use tokio::io::{AsyncBufReadExt, BufReader};

/// Most errors printed one by one (all are counted).
const MAX_LISTED: usize = 20;

/// One line of the file, read.
enum Line {
    Record(u64, Box<Record>),
    /// Not a valid line: its number and why.
    Bad(u64, String),
    /// The last line has no newline and does not parse: an interrupted export.
    Unfinished(u64),
}

/// Reads the file line by line (bounded memory: one line at a time).
struct Lines {
    reader: BufReader<File>,
    n: u64,
    buf: Vec<u8>,
}

impl Lines {
    async fn open(path: &Path) -> anyhow::Result<Self> {
        let f = File::open(path)
            .await
            .with_context(|| format!("cannot open {}", path.display()))?;
        Ok(Self {
            reader: BufReader::with_capacity(1 << 20, f),
            n: 0,
            buf: Vec::new(),
        })
    }

    /// The next non-blank line; `None` at the end of the file.
    async fn next(&mut self) -> Option<std::io::Result<Line>> {
        loop {
            self.buf.clear();
            match self.reader.read_until(b'\n', &mut self.buf).await {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) => return Some(Err(e)),
            }
            self.n += 1;
            let terminated = self.buf.last() == Some(&b'\n');
            let text = match std::str::from_utf8(&self.buf) {
                Ok(t) => t.trim_end_matches(['\n', '\r']),
                Err(e) => return Some(Ok(Line::Bad(self.n, format!("not UTF-8: {e}")))),
            };
            if text.trim().is_empty() {
                continue;
            }
            return Some(Ok(match jsonl::decode(text) {
                Ok(r) => Line::Record(self.n, Box::new(r)),
                Err(_) if !terminated => Line::Unfinished(self.n),
                Err(e) => Line::Bad(self.n, e.to_string()),
            }));
        }
    }
}

pub async fn run(g: &Global, a: ImportArgs) -> anyhow::Result<ExitCode> {
    let path = a.file.as_path();
    let shown = path.display().to_string();
    // 1. Check every line before publishing anything.
    let mut records = 0u64;
    let mut bad: Vec<(u64, String)> = Vec::new();
    let mut bad_count = 0u64;
    let mut unfinished = None;
    let mut lines = Lines::open(path).await?;
    while let Some(line) = lines.next().await {
        match line.with_context(|| format!("cannot read {shown}"))? {
            Line::Record(..) => records += 1,
            Line::Bad(n, why) => {
                bad_count += 1;
                if bad.len() < MAX_LISTED {
                    bad.push((n, why));
                }
            }
            Line::Unfinished(n) => unfinished = Some(n),
        }
    }
    if let Some((n, why)) = bad.first() {
        for (n, why) in bad.iter().skip(1) {
            eprintln!("{shown}:{n}: {why}");
        }
        anyhow::bail!(
            "{shown}:{n}: {why}{}; nothing was imported",
            if bad_count > 1 {
                format!(" (and {} more bad line(s))", bad_count - 1)
            } else {
                String::new()
            }
        );
    }
    if let Some(n) = unfinished {
        eprintln!(
            "warning: {shown}:{n}: unfinished last line skipped (an export was interrupted while writing it; that message was not removed from its queue)"
        );
    }
    let dest = match &a.to_queue {
        Some(q) => g.queue_name(q),
        None => g.dlq()?,
    };
    if records == 0 {
        println!("{shown}: no messages to import");
        return Ok(ExitCode::SUCCESS);
    }

    // 2. Publish, confirmed, in file order.
    let url = g.url()?;
    let broker = connect(&url, "import", &dest).await?;
    let hint = if a.to_queue.is_some() {
        "it is the --to-queue; declare it first"
    } else {
        courier::broker::APPLY_HINT
    };
    let exists = broker.existing_queue(&dest, hint).await;
    broker.close().await;
    exists?;
    let publisher = publisher(&url, "import", &dest, a.window);
    let limiter = limiter(a.rate);
    let bar = crate::progress::bar(records, true);
    let started = Instant::now();
    let lines = Lines::open(path).await?;
    let lines = Box::pin(futures_util::stream::unfold(
        lines,
        |mut lines| async move { lines.next().await.map(|line| (line, lines)) },
    ));
    let mut results = lines
        .then(|line| {
            let limiter = limiter.as_ref();
            Box::pin(async move {
                if matches!(line, Ok(Line::Record(..))) {
                    wait_rate(limiter).await;
                }
                line
            })
        })
        .map(|line| {
            let p = publisher.clone();
            let dest = dest.clone();
            Box::pin(async move {
                match line {
                    Ok(Line::Record(n, r)) => {
                        let msg = Outgoing {
                            exchange: String::new(),
                            routing_key: dest,
                            properties: r.properties,
                            body: r.body,
                        };
                        Some((n, publish_retrying(&p, &msg).await))
                    }
                    Ok(_) => None,
                    Err(e) => Some((
                        0,
                        Err(PublishError::Connect(format!("reading the file: {e}"))),
                    )),
                }
            })
        })
        .buffer_unordered(usize::from(a.window));
    let mut ok = 0u64;
    let mut failed: Vec<(u64, PublishError)> = Vec::new();
    let mut failed_count = 0u64;
    while let Some(r) = results.next().await {
        match r {
            Some((_, Ok(()))) => ok += 1,
            Some((n, Err(e))) => {
                failed_count += 1;
                if failed.len() < MAX_LISTED {
                    failed.push((n, e));
                }
            }
            None => continue,
        }
        bar.inc(1);
    }
    drop(results);
    bar.finish_and_clear();
    close_publisher(&publisher).await;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "imported {} of {} messages from {shown} into {dest} (confirmed) in {secs:.1}s ({:.0}/s)",
        thousands(ok),
        thousands(records),
        ok as f64 / secs.max(1e-9)
    );
    crate::audit::add_import(ok, failed_count);
    failed.sort_by_key(|(n, _)| *n);
    for (n, e) in &failed {
        eprintln!("{shown}:{n}: {e}");
    }
    if failed_count > 0 {
        anyhow::bail!(
            "{failed_count} message(s) were not imported (listed above; the first {MAX_LISTED} are shown)"
        );
    }
    Ok(ExitCode::SUCCESS)
}
