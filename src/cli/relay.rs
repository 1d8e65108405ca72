//! `courier relay`: publish an outbox table's rows to the broker; `courier relay migrate`:
//! create its schema.

use super::out::outln;
use super::GlobalArgs;
use anyhow::Context;
use clap::{Args, Subcommand};
use courier::metrics::Metrics;
use courier::publisher::{Publisher, PublisherConfig};
use courier::relay::{self, DbUrl, RelayConfig, TableName};
use std::process::ExitCode;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Publish the rows of an outbox table (PostgreSQL) to the broker, with publisher confirms.
///
/// A service that saves an order and then publishes "order confirmed" loses the notification
/// if it dies in between, or sends one for an order that rolled back. With an outbox, it writes
/// the notification as a row in the same transaction as its own data:
///
///   BEGIN;
///   INSERT INTO orders ...;
///   INSERT INTO courier_outbox (id, exchange, routing_key, body)
///     VALUES (gen_random_uuid()::text, 'notifications', 'email',
///             convert_to('{"to":"ada@example.com","template":"order-confirmed"}', 'UTF8'));
///   COMMIT;
///
/// and `courier relay` publishes it once the transaction has committed. Optional columns:
/// headers (jsonb object), priority (0-9), correlation_id, reply_to.
///
/// What the relay guarantees:
///   - a row is published only if its transaction committed, and is never lost afterwards:
///     it is marked published (or deleted) only after the broker's confirm;
///   - several relays may run on one table: each claims its batch with
///     SELECT ... FOR UPDATE SKIP LOCKED, so no row is published by two relays at once;
///   - a relay that dies between the confirm and the mark publishes nothing twice itself, but
///     the next claim publishes those rows again with the same message_id (the id column):
///     a duplicate, absorbed by the fleet's idempotency key;
///   - a refused publish (missing exchange, unroutable, nacked) stays pending with attempts
///     and last_error set, and is retried with a growing wait (1 s doubling to 5 min);
///   - broker or database down: rows stay pending, the relay retries until they are back.
///
/// New rows wake it at once (LISTEN/NOTIFY); --poll-interval is the fallback. SIGTERM/SIGINT:
/// the batch in flight is finished (confirms, marks), then it exits 0.
///
/// Create the table first: courier relay migrate --database-url postgres://...
/// Design and operations: docs/outbox.md.
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct RelayArgs {
    #[command(subcommand)]
    command: Option<RelayCommand>,
    #[command(flatten)]
    db: DbArgs,
    /// Rows claimed (and held locked) per transaction; they are published concurrently.
    #[arg(long, env = "COURIER_RELAY_BATCH_SIZE", default_value_t = 100)]
    batch_size: usize,
    /// How often to look for due rows without a NOTIFY (refused rows coming due, a LISTEN
    /// connection that is down).
    #[arg(long, env = "COURIER_RELAY_POLL_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    poll_interval: Duration,
    /// Keep published rows this long (published_at set), then delete them; 0s deletes a row as
    /// soon as its confirm is recorded.
    #[arg(long, env = "COURIER_RELAY_RETENTION", default_value = "0s", value_parser = humantime::parse_duration)]
    retention: Duration,
}

/// The database options, shared by `courier relay` and `courier relay migrate`.
#[derive(Debug, Args)]
struct DbArgs {
    /// PostgreSQL holding the outbox, e.g. postgres://app:secret@db:5432/orders (the password
    /// is never printed).
    #[arg(
        long,
        env = "COURIER_DATABASE_URL",
        global = true,
        hide_env_values = true
    )]
    database_url: Option<String>,
    /// The outbox table: lower-case letters, digits and underscores (it is also the NOTIFY
    /// channel).
    #[arg(long, env = "COURIER_OUTBOX_TABLE", default_value = relay::table::DEFAULT_TABLE, global = true)]
    table: String,
}

#[derive(Debug, Subcommand)]
enum RelayCommand {
    /// Create or upgrade the outbox table, its indexes and its NOTIFY trigger (idempotent: run
    /// it on every deploy). The SQL ships in the binary; migrations/outbox/ holds the same files.
    Migrate,
}

impl DbArgs {
    fn validated(&self) -> anyhow::Result<(DbUrl, TableName)> {
        let url = self.database_url.as_deref().context(
            "no database: pass --database-url postgres://user:password@host:5432/dbname or set COURIER_DATABASE_URL",
        )?;
        let url: DbUrl = url.parse().context("--database-url")?;
        let table: TableName = self.table.parse().context("--table")?;
        Ok((url, table))
    }
}

pub async fn run(global: &GlobalArgs, args: RelayArgs) -> anyhow::Result<ExitCode> {
    let (url, table) = args.db.validated()?;
    if let Some(RelayCommand::Migrate) = args.command {
        let report = relay::schema::migrate(&url, &table).await?;
        if report.applied.is_empty() {
            outln!(
                "table {table} is up to date (outbox schema version {})",
                report.version
            )?;
        } else {
            outln!(
                "table {table}: applied {} (outbox schema version {})",
                report.applied.join(", "),
                report.version
            )?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    if args.batch_size == 0 {
        anyhow::bail!("--batch-size 0: claim at least one row per transaction");
    }
    if args.poll_interval.is_zero() {
        anyhow::bail!("--poll-interval 0s would poll without pause; use e.g. 1s");
    }
    let amqp_url = global.amqp_url()?;
    let mut config = RelayConfig::new(table, amqp_url.clone());
    config.batch_size = args.batch_size;
    config.poll_interval = args.poll_interval;
    config.retention = args.retention;
    let publisher = Publisher::lazy(
        &amqp_url,
        PublisherConfig {
            name: config.name.clone(),
            window: args.batch_size.max(1),
            // Bounds how long a SIGTERM waits for the batch in flight when the broker hangs.
            confirm_timeout: Duration::from_secs(15),
        },
        Metrics::new(),
    );
    let shutdown = CancellationToken::new();
    courier::shutdown::cancel_on_signal(shutdown.clone());
    let report = relay::run(&url, &config, &publisher, &shutdown).await?;
    publisher.close().await;
    tracing::info!(
        published = report.published,
        refused = report.refused,
        "relay exited cleanly"
    );
    Ok(ExitCode::SUCCESS)
}
