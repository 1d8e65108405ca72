//! The outbox relay (`courier relay`): publishes the rows a service wrote to an outbox table in
//! its own PostgreSQL transaction, so a notification is sent if and only if that transaction
//! committed. docs/outbox.md explains the design.
//!
//! - [`table`]: the validated table name, the only input that reaches SQL text.
//! - [`schema`]: the shipped migrations and `courier relay migrate`.
//! - [`db`]: the database URL (password never shown), the pool, the `LISTEN` connection.
//! - [`batch`]: one pass: claim with `FOR UPDATE SKIP LOCKED`, publish with confirms, mark only
//!   what was confirmed, record refusals, commit.
//! - here: the loop around it ([`run`]), woken by `NOTIFY` or the poll interval, backing off
//!   while the broker or the database is down, stopping between batches on cancel.
//!
//! Guarantees: a row is marked published (or deleted) only in the transaction that saw its
//! confirm, and rows are locked while a relay publishes them, so several relays never publish
//! one row at once. A relay that dies between the confirm and the commit leaves its rows due, and
//! they are published again under the same message id: a duplicate, which the fleet's
//! idempotency (`Idempotency-Key`) absorbs; never a loss.

pub mod batch;
pub mod db;
pub mod schema;
pub mod table;

use crate::amqp::AmqpUrl;
use crate::publisher::Publisher;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use db::DbUrl;
pub use table::TableName;

/// The waits of the relay's loops.
pub mod backoff {
    use crate::retry::RetryPolicy;
    use std::time::Duration;

    /// Between claims while the database does not answer.
    pub const DATABASE: RetryPolicy =
        RetryPolicy::new(Duration::from_millis(500), Duration::from_secs(30));
    /// Between claims while the broker does not answer (the publisher reconnects on the next).
    pub const BROKER: RetryPolicy =
        RetryPolicy::new(Duration::from_millis(200), Duration::from_secs(10));
    /// First wait of a refused row; doubles with each refusal up to [`ROW_MAX`].
    pub const ROW_MIN: Duration = Duration::from_secs(1);
    /// Longest wait of a refused row.
    pub const ROW_MAX: Duration = Duration::from_secs(300);

    /// How long a row refused `attempts` times waits before its next publish (no jitter: rows
    /// are spread by their own refusal times).
    pub fn row(attempts: i32, min: Duration, max: Duration) -> Duration {
        let doublings = u32::try_from(attempts.saturating_sub(1).clamp(0, 30)).unwrap_or(0);
        min.saturating_mul(1u32 << doublings).min(max)
    }
}

/// Why the relay (or `migrate`) cannot go on. Each names the database (password hidden) and,
/// where one exists, the fix.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The database URL does not parse.
    #[error(
        "invalid database URL {url}: {reason} (expected postgres://user:password@host:5432/dbname)"
    )]
    BadUrl {
        /// The URL, password hidden.
        url: String,
        /// Why.
        reason: String,
    },
    /// The database failed or could not be reached.
    #[error("database {url}: {what}: {reason}")]
    Db {
        /// The URL, password hidden.
        url: String,
        /// What the relay was doing.
        what: String,
        /// The server's message or the I/O error.
        reason: String,
    },
    /// The outbox table is not there.
    #[error("table {table} does not exist in {url}: create it with `courier relay migrate --table {table}` (same --database-url)")]
    NoTable {
        /// The table.
        table: TableName,
        /// The URL, password hidden.
        url: String,
    },
    /// The table is older than this relay.
    #[error("table {table} is at outbox schema version {version}, this relay needs {needed}: run `courier relay migrate --table {table}`")]
    OldSchema {
        /// The table.
        table: TableName,
        /// Its version.
        version: i32,
        /// The version needed.
        needed: i32,
    },
}

impl RelayError {
    /// True when waiting can fix it (the database is down or restarting), false when an
    /// operator must act (bad URL, missing table, refused login, a query the server rejects).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Db { reason, .. } => {
                // Server answers with a SQLSTATE are about us, not the network — except those
                // of a server shutting down or starting up (class 57) and lost connections (08).
                !reason.contains("(SQLSTATE ")
                    || reason.contains("(SQLSTATE 57")
                    || reason.contains("(SQLSTATE 08")
                    || reason.contains("(SQLSTATE 40")
            }
            _ => false,
        }
    }
}

/// A validated relay configuration.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// The outbox table.
    pub table: TableName,
    /// Rows claimed (and held locked) per transaction.
    pub batch_size: usize,
    /// How often to look for due rows when no `NOTIFY` came (refused rows coming due, a
    /// `LISTEN` connection that is down).
    pub poll_interval: Duration,
    /// Keep published rows this long (swept afterwards); zero deletes them at once.
    pub retention: Duration,
    /// Wait of a row after its first refusal (doubles per refusal).
    pub row_backoff_min: Duration,
    /// Longest wait of a refused row.
    pub row_backoff_max: Duration,
    /// Names the relay's connections: `application_name` in `pg_stat_activity`, connection name
    /// in RabbitMQ's management UI.
    pub name: String,
    /// The broker (for looking up exchanges the publisher reported missing).
    pub amqp_url: AmqpUrl,
}

impl RelayConfig {
    /// The defaults for `table`: batches of 100, a poll each second, no retention.
    pub fn new(table: TableName, amqp_url: AmqpUrl) -> Self {
        let name = format!("courier relay {table} pid {}", std::process::id());
        Self {
            table,
            batch_size: 100,
            poll_interval: Duration::from_secs(1),
            retention: Duration::ZERO,
            row_backoff_min: backoff::ROW_MIN,
            row_backoff_max: backoff::ROW_MAX,
            name,
            amqp_url,
        }
    }

    /// The wait of a row refused `attempts` times.
    pub fn row_backoff(&self, attempts: i32) -> Duration {
        backoff::row(attempts, self.row_backoff_min, self.row_backoff_max)
    }
}

/// What a relay did before it stopped.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RelayReport {
    /// Rows confirmed and marked.
    pub published: u64,
    /// Refused publishes recorded on rows.
    pub refused: u64,
    /// Rows left for later because the broker did not answer.
    pub deferred: u64,
    /// Published rows swept after their retention.
    pub swept: u64,
}

/// How often the progress line is logged while there is work.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// Relays `config.table` until `cancel`: claims due rows, publishes them with `publisher`
/// (mandatory, confirmed), marks what was confirmed, and waits for a `NOTIFY` or the poll
/// interval when nothing is due. A broker or database that is down is retried with backoff,
/// forever; the batch in flight when `cancel` fires is finished (confirms and marks) first.
///
/// # Errors
/// Only what waiting cannot fix, found at start: [`RelayError::NoTable`],
/// [`RelayError::OldSchema`], a refused login or a bad URL.
pub async fn run(
    url: &DbUrl,
    config: &RelayConfig,
    publisher: &Publisher,
    cancel: &CancellationToken,
) -> Result<RelayReport, RelayError> {
    // Two connections: the claim's transaction and the occasional count or sweep beside it.
    let pool = url.pool(&config.name, 2)?;
    let mut report = RelayReport::default();
    if !startup_check(&pool, url, config, cancel).await? {
        return Ok(report);
    }
    let queries = batch::Queries::new(&config.table);
    let wake = Arc::new(Notify::new());
    let listen_stop = cancel.child_token();
    let listener = tokio::spawn(url.clone().listen(
        config.name.clone(),
        config.table.as_str().to_owned(),
        wake.clone(),
        listen_stop.clone(),
    ));
    tracing::info!(
        table = %config.table,
        database = %url,
        broker = %config.amqp_url,
        batch_size = config.batch_size,
        poll_interval = ?config.poll_interval,
        retention = ?config.retention,
        "relaying the outbox"
    );

    let mut db_delays = backoff::DATABASE.delays();
    let mut broker_delays = backoff::BROKER.delays();
    let sweep_every = config
        .retention
        .clamp(Duration::from_secs(1), Duration::from_secs(60));
    let mut last_sweep = Instant::now();
    let mut last_progress = Instant::now();
    let mut since_progress = RelayReport::default();
    while !cancel.is_cancelled() {
        if !config.retention.is_zero() && last_sweep.elapsed() >= sweep_every {
            last_sweep = Instant::now();
            match batch::sweep(&pool, url, &queries, config.retention).await {
                Ok(n) => {
                    report.swept += n;
                    since_progress.swept += n;
                }
                Err(e) => tracing::warn!(error = %e, "retention sweep failed; trying again later"),
            }
        }
        let wait = match batch::relay_batch(&pool, url, &queries, config, publisher).await {
            Ok(b) => {
                db_delays.reset();
                for r in [&mut report, &mut since_progress] {
                    r.published += b.published as u64;
                    r.refused += b.refused as u64;
                    r.deferred += b.deferred as u64;
                }
                if let Some(error) = &b.broker_error {
                    let wait = broker_delays.next_delay();
                    tracing::warn!(
                        table = %config.table,
                        published = b.published,
                        left_pending = b.deferred,
                        %error,
                        retry_in = ?wait,
                        "broker did not confirm part of the batch; those rows stay pending and are published again"
                    );
                    Some(wait)
                } else if b.claimed >= config.batch_size {
                    broker_delays.reset();
                    // A full batch: more are probably due.
                    log_progress(
                        &mut last_progress,
                        &mut since_progress,
                        &pool,
                        url,
                        &queries,
                    )
                    .await;
                    continue;
                } else {
                    broker_delays.reset();
                    None
                }
            }
            Err(e) if e.is_transient() => {
                let wait = db_delays.next_delay();
                tracing::warn!(table = %config.table, error = %e, retry_in = ?wait, "database unavailable; rows stay pending, retrying");
                Some(wait)
            }
            Err(e) => {
                let wait = db_delays.next_delay();
                tracing::error!(table = %config.table, error = %e, retry_in = ?wait, "claim failed; retrying");
                Some(wait)
            }
        };
        log_progress(
            &mut last_progress,
            &mut since_progress,
            &pool,
            url,
            &queries,
        )
        .await;
        match wait {
            Some(backoff) => {
                tokio::select! {
                    () = cancel.cancelled() => {}
                    () = tokio::time::sleep(backoff) => {}
                }
            }
            None => {
                tokio::select! {
                    () = cancel.cancelled() => {}
                    () = wake.notified() => {}
                    () = tokio::time::sleep(config.poll_interval) => {}
                }
            }
        }
    }
    listen_stop.cancel();
    let _ = listener.await;
    tracing::info!(
        table = %config.table,
        published = report.published,
        refused = report.refused,
        swept = report.swept,
        "relay stopped after its last batch"
    );
    Ok(report)
}

/// Logs a progress line every [`PROGRESS_EVERY`] when something happened since the last one.
async fn log_progress(
    last: &mut Instant,
    since: &mut RelayReport,
    pool: &deadpool_postgres::Pool,
    url: &DbUrl,
    queries: &batch::Queries,
) {
    if last.elapsed() < PROGRESS_EVERY || *since == RelayReport::default() {
        return;
    }
    *last = Instant::now();
    let (pending, oldest) = match batch::pending(pool, url, queries).await {
        Ok((n, age)) => (Some(n), age),
        Err(_) => (None, None),
    };
    tracing::info!(
        published = since.published,
        refused = since.refused,
        deferred = since.deferred,
        swept = since.swept,
        pending = ?pending,
        oldest_pending_secs = ?oldest.map(|s| s.round()),
        "relay progress (last {PROGRESS_EVERY:?})"
    );
    *since = RelayReport::default();
}

/// Waits for the database and checks the table: `Ok(false)` when cancelled while waiting.
async fn startup_check(
    pool: &deadpool_postgres::Pool,
    url: &DbUrl,
    config: &RelayConfig,
    cancel: &CancellationToken,
) -> Result<bool, RelayError> {
    let mut delays = backoff::DATABASE.delays();
    loop {
        let attempt = async {
            let client = pool.get().await.map_err(|e| RelayError::Db {
                url: url.to_string(),
                what: "connecting".to_owned(),
                reason: db::redact(&match &e {
                    deadpool_postgres::PoolError::Backend(b) => db::describe(b),
                    other => other.to_string(),
                }),
            })?;
            schema::check(&client, url, &config.table).await
        };
        match attempt.await {
            Ok(()) => return Ok(true),
            Err(e) if e.is_transient() => {
                let wait = delays.next_delay();
                tracing::warn!(error = %e, retry_in = ?wait, "database unavailable at start; retrying");
                tokio::select! {
                    () = cancel.cancelled() => return Ok(false),
                    () = tokio::time::sleep(wait) => {}
                }
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_backoff_doubles_up_to_the_cap() {
        let (min, max) = (Duration::from_secs(1), Duration::from_secs(300));
        assert_eq!(backoff::row(1, min, max), Duration::from_secs(1));
        assert_eq!(backoff::row(2, min, max), Duration::from_secs(2));
        assert_eq!(backoff::row(5, min, max), Duration::from_secs(16));
        assert_eq!(backoff::row(40, min, max), max);
        assert_eq!(backoff::row(0, min, max), min);
        assert_eq!(backoff::row(-3, min, max), min);
    }

    #[test]
    fn only_waiting_kinds_of_database_errors_are_transient() {
        let db = |reason: &str| RelayError::Db {
            url: "postgres://x".into(),
            what: "claiming".into(),
            reason: reason.into(),
        };
        assert!(db("error connecting to server: Connection refused (os error 111)").is_transient());
        assert!(db("the database system is starting up (SQLSTATE 57P03)").is_transient());
        assert!(
            !db("password authentication failed for user \"x\" (SQLSTATE 28P01)").is_transient()
        );
        assert!(!db("column \"next_attempt_at\" does not exist (SQLSTATE 42703)").is_transient());
        let t: TableName = "o".parse().expect("valid");
        assert!(!RelayError::NoTable {
            table: t,
            url: "u".into()
        }
        .is_transient());
    }
}
