//! `courier-dlq list`: one row (or one JSON line) a message, streamed as the messages are seen.
//!
//! Rows are formatted into a buffer of our own and written out in chunks, each under its own
//! short stdout lock: the inspection awaits the broker while it holds messages unacknowledged,
//! and a lock held across those awaits would block any other writer to stdout meanwhile.

use super::{connect, warn_if_quorum};
use crate::cli::{Global, ListArgs};
use crate::inspect::{examine_at_most, inspect};
use crate::jsonl;
use crate::output::{age_of, summary, thousands, Table};
use crate::stats::error_group;
use courier::deadletter::DeadLetter;
use courier::envelope::now_millis;
use std::io::{self, Write};
use std::ops::ControlFlow;
use std::process::ExitCode;

/// Rows are written to stdout once this many bytes are waiting (what a `BufWriter` would do).
const CHUNK: usize = 8 * 1024;

/// Writes what `rows` holds to stdout and empties it, locking stdout only for the write.
fn write_out(rows: &mut Vec<u8>) -> io::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut out = io::stdout().lock();
    out.write_all(rows)?;
    out.flush()?;
    rows.clear();
    Ok(())
}

pub async fn run(g: &Global, a: ListArgs) -> anyhow::Result<ExitCode> {
    let filter = a.filters.build(&g.prefix)?;
    let queue = g.dlq()?;
    let url = g.url()?;
    warn_if_quorum(g, &queue);
    let broker = connect(&url, "list", &queue).await?;
    let now = now_millis();
    let mut out: Vec<u8> = Vec::with_capacity(2 * CHUNK);
    let table = Table::new(&[32, 8, 12, 28, 8, 9, 70]);
    if !a.json {
        table.row(
            &mut out,
            &["ID", "AGE", "REASON", "QUEUE", "ATTEMPTS", "SIZE", "ERROR"].map(String::from),
        )?;
    }
    let mut shown = 0u64;
    let sample = inspect(&broker, &queue, examine_at_most(a.limit), |d| {
        let dl = DeadLetter::read(&d.properties, d.data.len());
        if !filter.matches(&dl, d.properties.headers().as_ref(), now) {
            return Ok(ControlFlow::Continue(()));
        }
        shown += 1;
        if a.json {
            let origin = jsonl::Origin {
                queue: &queue,
                exchange: d.exchange.as_str(),
                routing_key: d.routing_key.as_str(),
                redelivered: d.redelivered,
            };
            writeln!(
                out,
                "{}",
                jsonl::encode(&origin, &d.properties, &d.data, summary(&dl, now))
            )?;
        } else {
            table.row(
                &mut out,
                &[
                    dl.message_id.clone().unwrap_or_else(|| "(none)".to_owned()),
                    age_of(&dl, now),
                    dl.reason.clone().unwrap_or_else(|| "?".to_owned()),
                    dl.original_queue.clone().unwrap_or_else(|| "?".to_owned()),
                    dl.attempts
                        .map_or_else(|| "-".to_owned(), |n| n.to_string()),
                    thousands(dl.body_len as u64),
                    dl.error.clone().unwrap_or_else(|| error_group(&dl)),
                ],
            )?;
        }
        if out.len() >= CHUNK {
            write_out(&mut out)?;
        }
        Ok(ControlFlow::Continue(()))
    })
    .await;
    broker.close().await;
    // Rows already seen are printed even when the inspection failed later, as before; a lone
    // header is not (a missing or busy queue fails before any row).
    let written = if shown > 0 || sample.is_ok() {
        write_out(&mut out)
    } else {
        Ok(())
    };
    let sample = sample?;
    written?;
    // The footer goes to stderr: stdout stays a clean table or JSONL stream for pipes.
    let mut footer = format!(
        "{} of {} messages listed",
        thousands(shown),
        thousands(sample.total)
    );
    if !filter.is_empty() {
        footer.push_str(&format!(
            " ({} examined, {} matched the filters)",
            thousands(sample.examined),
            thousands(shown)
        ));
    }
    eprintln!("{footer}");
    let note = crate::inspect::note(&sample, false);
    if !note.is_empty() {
        eprintln!("{note}");
    }
    Ok(ExitCode::SUCCESS)
}
