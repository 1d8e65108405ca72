//! The outbox schema and its migrations, shipped in the binary (`migrations/outbox/*.sql`) and
//! applied by `courier relay migrate`.
//!
//! Each migration runs in one transaction with the version it brings recorded in
//! `courier_migrations` (one row per table and version), under a transaction-level advisory lock:
//! two `migrate` runs at once (two deploys, parallel tests) take turns instead of racing on
//! `CREATE TABLE`. Applied versions are skipped, so running it again is a no-op; the statements
//! are idempotent besides, for a file applied by hand.

use super::db::DbUrl;
use super::table::TableName;
use super::RelayError;

/// One migration: its version, a name for the log and the SQL with `{table}` placeholders.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Applied in increasing order, recorded in `courier_migrations`.
    pub version: i32,
    /// File name, for logs.
    pub name: &'static str,
    /// The SQL template.
    pub sql: &'static str,
}

/// Every migration, oldest first.
pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "0001_outbox.sql",
    sql: include_str!("../../migrations/outbox/0001_outbox.sql"),
}];

/// The schema version this build of the relay reads and writes.
pub fn latest() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// Any constant both `migrate` runs agree on ("courier" in ASCII).
const MIGRATION_LOCK: i64 = 0x0063_6f75_7269_6572;

const MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS courier_migrations (
    target     text        NOT NULL,
    version    integer     NOT NULL,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (target, version)
)";

/// What [`migrate`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrateReport {
    /// Migrations applied by this run (empty: the schema was already current).
    pub applied: Vec<&'static str>,
    /// The schema version now.
    pub version: i32,
}

/// Creates or upgrades the outbox schema for `table`.
///
/// # Errors
/// [`RelayError::Db`] naming the migration and the server's message when one fails (nothing of
/// that migration is left behind: it ran in a transaction).
pub async fn migrate(url: &DbUrl, table: &TableName) -> Result<MigrateReport, RelayError> {
    let mut client = url.connect("courier relay migrate").await?;
    let tx = client
        .transaction()
        .await
        .map_err(|e| url.error("starting the migration", &e))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(|e| url.error("waiting for other migrations", &e))?;
    // "already exists, skipping" notices are what idempotent statements say on every run.
    tx.batch_execute("SET LOCAL client_min_messages = warning")
        .await
        .map_err(|e| url.error("starting the migration", &e))?;
    tx.batch_execute(MIGRATIONS_TABLE)
        .await
        .map_err(|e| url.error("creating courier_migrations", &e))?;
    let current: i32 = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM courier_migrations WHERE target = $1",
            &[&table.as_str()],
        )
        .await
        .map_err(|e| url.error("reading courier_migrations", &e))?
        .get(0);
    let mut applied = Vec::new();
    for m in MIGRATIONS.iter().filter(|m| m.version > current) {
        tx.batch_execute(&table.fill(m.sql))
            .await
            .map_err(|e| url.error(format!("applying {} to table {table}", m.name), &e))?;
        tx.execute(
            "INSERT INTO courier_migrations (target, version, name) VALUES ($1, $2, $3)",
            &[&table.as_str(), &m.version, &m.name],
        )
        .await
        .map_err(|e| url.error("recording the migration", &e))?;
        applied.push(m.name);
    }
    tx.commit()
        .await
        .map_err(|e| url.error("committing the migration", &e))?;
    Ok(MigrateReport {
        applied,
        version: current.max(latest()),
    })
}

/// Checks that `table` exists at the version this relay needs.
///
/// # Errors
/// [`RelayError::NoTable`] or [`RelayError::OldSchema`] with the command that fixes it;
/// [`RelayError::Db`] when the database cannot be asked.
pub async fn check(
    client: &tokio_postgres::Client,
    url: &DbUrl,
    table: &TableName,
) -> Result<(), RelayError> {
    let row = client
        .query_one(
            "SELECT to_regclass($1) IS NOT NULL, to_regclass('courier_migrations') IS NOT NULL",
            &[&table.quoted()],
        )
        .await
        .map_err(|e| url.error(format!("looking up table {table}"), &e))?;
    let (has_table, has_log): (bool, bool) = (row.get(0), row.get(1));
    if !has_table {
        return Err(RelayError::NoTable {
            table: table.clone(),
            url: url.to_string(),
        });
    }
    if has_log {
        let version: i32 = client
            .query_one(
                "SELECT coalesce(max(version), 0) FROM courier_migrations WHERE target = $1",
                &[&table.as_str()],
            )
            .await
            .map_err(|e| url.error("reading courier_migrations", &e))?
            .get(0);
        // 0: created by hand from the shipped SQL; its columns are checked by the first claim.
        if version != 0 && version < latest() {
            return Err(RelayError::OldSchema {
                table: table.clone(),
                version,
                needed: latest(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_in_order_and_fill_every_placeholder() {
        let t: TableName = "o".parse().expect("valid");
        let mut last = 0;
        for m in MIGRATIONS {
            assert!(m.version > last, "{}", m.name);
            last = m.version;
            assert!(!t.fill(m.sql).contains("{table}"), "{}", m.name);
        }
        assert_eq!(latest(), last);
    }
}
