//! One pass of the relay: claim a batch of due rows, publish them with confirms, record each
//! outcome, commit.
//!
//! The claim is `SELECT ... FOR UPDATE SKIP LOCKED` inside a transaction that stays open until
//! every publish of the batch is answered: the row locks are what keeps a second relay off these
//! rows, and they end with the transaction, whichever way it ends. A relay that dies (SIGKILL,
//! lost database connection) rolls back: its rows are due again and the next claim publishes
//! them once more, under the same message id. A row is marked (deleted, or `published_at` set)
//! only in the transaction that saw its confirm, so a row is never marked without a confirm.

use super::db::DbUrl;
use super::table::TableName;
use super::{RelayConfig, RelayError};
use crate::publisher::{Outgoing, PublishError, Publisher};
use deadpool_postgres::Pool;
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use lapin::BasicProperties;
use std::collections::HashSet;
use std::time::Duration;

/// The SQL of one table, built once from a validated [`TableName`].
#[derive(Debug, Clone)]
pub struct Queries {
    /// Claims up to `$1` due rows, oldest first, skipping rows another relay holds.
    claim: String,
    /// Marks the rows `$1` published (kept for the retention sweep).
    mark: String,
    /// Deletes the rows `$1` (no retention).
    delete: String,
    /// Records a refused publish of row `$1`: attempts + 1, error `$2`, due again in `$3` s.
    refuse: String,
    /// Deletes up to `$2` rows published more than `$1` seconds ago.
    sweep: String,
    /// Pending rows and the age of the oldest, for the progress log.
    pending: String,
}

impl Queries {
    /// The queries for `table`.
    pub fn new(table: &TableName) -> Self {
        let t = table.quoted();
        Self {
            claim: format!(
                "SELECT id, exchange, routing_key, headers, body, priority, correlation_id, reply_to, attempts \
                 FROM {t} WHERE published_at IS NULL AND next_attempt_at <= now() \
                 ORDER BY created_at, id LIMIT $1 FOR UPDATE SKIP LOCKED"
            ),
            mark: format!(
                "UPDATE {t} SET published_at = now(), last_error = NULL WHERE id = ANY($1)"
            ),
            delete: format!("DELETE FROM {t} WHERE id = ANY($1)"),
            refuse: format!(
                "UPDATE {t} SET attempts = attempts + 1, last_error = $2, \
                 next_attempt_at = now() + make_interval(secs => $3) WHERE id = $1"
            ),
            sweep: format!(
                "DELETE FROM {t} WHERE id IN (SELECT id FROM {t} \
                 WHERE published_at < now() - make_interval(secs => $1) LIMIT $2 FOR UPDATE SKIP LOCKED)"
            ),
            pending: format!(
                "SELECT count(*), extract(epoch FROM now() - min(created_at))::float8 \
                 FROM {t} WHERE published_at IS NULL"
            ),
        }
    }
}

/// A claimed row, ready to publish.
#[derive(Debug)]
struct Row {
    /// The message id (primary key).
    id: String,
    /// Refused publishes so far.
    attempts: i32,
    /// The message, or why the row cannot become one (refused without publishing).
    message: Result<Outgoing, String>,
}

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Rows claimed.
    pub claimed: usize,
    /// Confirmed and marked.
    pub published: usize,
    /// Refused by the broker (or unusable): attempts + 1, due again after a backoff.
    pub refused: usize,
    /// Not answered because of the connection (broker down, channel lost, no confirm in time):
    /// left as they were, due at once. The relay backs off before its next claim.
    pub deferred: usize,
    /// The first transient failure, for the log.
    pub broker_error: Option<String>,
}

/// Claims, publishes and records one batch.
///
/// # Errors
/// [`RelayError::Db`] when the database fails; the transaction is then rolled back and every
/// row of the batch is due again (the confirmed ones are published twice).
pub async fn relay_batch(
    pool: &Pool,
    url: &DbUrl,
    queries: &Queries,
    config: &RelayConfig,
    publisher: &Publisher,
) -> Result<BatchOutcome, RelayError> {
    let mut client = pool.get().await.map_err(|e| RelayError::Db {
        url: url.to_string(),
        what: "getting a connection".to_owned(),
        reason: super::db::redact(&pool_error(&e)),
    })?;
    let tx = client
        .transaction()
        .await
        .map_err(|e| url.error("starting the claim", &e))?;
    let limit = i64::try_from(config.batch_size).unwrap_or(i64::MAX);
    let rows = tx
        .query(queries.claim.as_str(), &[&limit])
        .await
        .map_err(|e| url.error(format!("claiming rows of {}", config.table), &e))?;
    let rows: Vec<Row> = rows.iter().map(to_row).collect();
    let mut outcome = BatchOutcome {
        claimed: rows.len(),
        ..BatchOutcome::default()
    };
    if rows.is_empty() {
        // Nothing claimed, nothing to keep: ending it either way is the same.
        let _ = tx.rollback().await;
        return Ok(outcome);
    }

    // Publish the whole batch at once (the publisher pipelines up to its window).
    let results = futures_util::future::join_all(rows.iter().map(|r| async {
        match &r.message {
            Ok(m) => publisher.publish(m.clone()).await.map_err(Failure::Publish),
            Err(why) => Err(Failure::Unusable(why.clone())),
        }
    }))
    .await;

    // A missing exchange closes the channel, and every publish in flight on it fails with the
    // same 404, whatever its own exchange: ask the broker which exchanges are really missing.
    let missing = missing_exchanges(&results, config).await;

    let mut confirmed: Vec<&str> = Vec::new();
    for (row, result) in rows.iter().zip(results) {
        let refused = match result {
            Ok(()) => {
                confirmed.push(&row.id);
                continue;
            }
            Err(Failure::Unusable(why)) => why,
            Err(Failure::Publish(e)) => match &e {
                PublishError::NoExchange { exchange, .. } if !missing.contains(exchange) => {
                    defer(&mut outcome, &e);
                    continue;
                }
                e if is_refusal(e) => e.to_string(),
                _ => {
                    defer(&mut outcome, &e);
                    continue;
                }
            },
        };
        let wait = config.row_backoff(row.attempts.saturating_add(1));
        let error = truncate(&refused, 1000);
        tx.execute(
            queries.refuse.as_str(),
            &[&row.id, &error, &wait.as_secs_f64()],
        )
        .await
        .map_err(|e| {
            url.error(
                format!("recording a refused publish in {}", config.table),
                &e,
            )
        })?;
        outcome.refused += 1;
        tracing::warn!(
            table = %config.table,
            message_id = %row.id,
            attempts = row.attempts.saturating_add(1),
            retry_in = ?wait,
            error = %refused,
            "outbox row refused; it stays pending and is retried after the wait"
        );
    }
    if !confirmed.is_empty() {
        let mark = if config.retention.is_zero() {
            &queries.delete
        } else {
            &queries.mark
        };
        tx.execute(mark.as_str(), &[&confirmed])
            .await
            .map_err(|e| url.error(format!("marking published rows of {}", config.table), &e))?;
    }
    tx.commit()
        .await
        .map_err(|e| url.error(format!("committing a batch of {}", config.table), &e))?;
    outcome.published = confirmed.len();
    Ok(outcome)
}

/// Deletes rows published longer than the retention ago, in chunks; returns how many.
///
/// # Errors
/// [`RelayError::Db`] when the database fails.
pub async fn sweep(
    pool: &Pool,
    url: &DbUrl,
    queries: &Queries,
    retention: Duration,
) -> Result<u64, RelayError> {
    const CHUNK: i64 = 5_000;
    let client = pool.get().await.map_err(|e| RelayError::Db {
        url: url.to_string(),
        what: "getting a connection".to_owned(),
        reason: super::db::redact(&pool_error(&e)),
    })?;
    let mut total = 0;
    loop {
        let n = client
            .execute(queries.sweep.as_str(), &[&retention.as_secs_f64(), &CHUNK])
            .await
            .map_err(|e| url.error("sweeping published rows", &e))?;
        total += n;
        if n < CHUNK.unsigned_abs() {
            return Ok(total);
        }
    }
}

/// Pending rows and the age of the oldest (seconds), for the progress log.
///
/// # Errors
/// [`RelayError::Db`] when the database fails.
pub async fn pending(
    pool: &Pool,
    url: &DbUrl,
    queries: &Queries,
) -> Result<(i64, Option<f64>), RelayError> {
    let client = pool.get().await.map_err(|e| RelayError::Db {
        url: url.to_string(),
        what: "getting a connection".to_owned(),
        reason: super::db::redact(&pool_error(&e)),
    })?;
    let row = client
        .query_one(queries.pending.as_str(), &[])
        .await
        .map_err(|e| url.error("counting pending rows", &e))?;
    Ok((row.get(0), row.get(1)))
}

/// Why a row was not published.
enum Failure {
    /// The broker's answer.
    Publish(PublishError),
    /// The row cannot be turned into a message (its headers are not a JSON object).
    Unusable(String),
}

/// Refusals concern the row itself: retrying at once cannot help, so it waits its backoff.
fn is_refusal(e: &PublishError) -> bool {
    matches!(
        e,
        PublishError::Returned { .. }
            | PublishError::NoExchange { .. }
            | PublishError::Nacked { .. }
    )
}

fn defer(outcome: &mut BatchOutcome, e: &PublishError) {
    outcome.deferred += 1;
    if outcome.broker_error.is_none() {
        outcome.broker_error = Some(e.to_string());
    }
}

/// The exchanges named by `NoExchange` failures that the broker confirms are missing. An
/// exchange the broker cannot be asked about counts as present: its rows are retried soon,
/// not held back.
async fn missing_exchanges(
    results: &[Result<(), Failure>],
    config: &RelayConfig,
) -> HashSet<String> {
    let named: HashSet<&str> = results
        .iter()
        .filter_map(|r| match r {
            Err(Failure::Publish(PublishError::NoExchange { exchange, .. })) => {
                Some(exchange.as_str())
            }
            _ => None,
        })
        .collect();
    let mut missing = HashSet::new();
    if named.is_empty() {
        return missing;
    }
    let admin = match crate::broker::Admin::connect(
        &config.amqp_url,
        &format!("{} (lookup)", config.name),
    )
    .await
    {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %e, "cannot ask the broker which exchanges exist; retrying those rows soon");
            return missing;
        }
    };
    for exchange in named {
        if let Ok(false) = admin.exchange_exists(exchange).await {
            missing.insert(exchange.to_owned());
        }
    }
    admin.close().await;
    missing
}

fn pool_error(e: &deadpool_postgres::PoolError) -> String {
    match e {
        deadpool_postgres::PoolError::Backend(e) => super::db::describe(e),
        other => other.to_string(),
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// A claimed row as a message; headers that are not a JSON object make it unusable (refused
/// with a reason, never dropped).
fn to_row(r: &tokio_postgres::Row) -> Row {
    let id: String = r.get(0);
    let exchange: String = r.get(1);
    let routing_key: String = r.get(2);
    let headers: serde_json::Value = r.get(3);
    let body: Vec<u8> = r.get(4);
    let priority: i16 = r.get(5);
    let correlation_id: Option<String> = r.get(6);
    let reply_to: Option<String> = r.get(7);
    let attempts: i32 = r.get(8);
    let message = headers_table(&headers).map(|headers| {
        let mut props = BasicProperties::default()
            .with_message_id(ShortString::from(id.as_str()))
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_priority(u8::try_from(priority.clamp(0, 9)).unwrap_or(0))
            .with_timestamp(u64::try_from(crate::envelope::now_millis() / 1000).unwrap_or(0))
            .with_headers(headers);
        if let Some(c) = correlation_id {
            props = props.with_correlation_id(c.as_str().into());
        }
        if let Some(r) = reply_to {
            props = props.with_reply_to(r.as_str().into());
        }
        Outgoing {
            exchange,
            routing_key,
            properties: props,
            body,
        }
    });
    Row {
        id,
        attempts,
        message,
    }
}

/// The `headers` column as AMQP headers.
fn headers_table(v: &serde_json::Value) -> Result<FieldTable, String> {
    match v {
        serde_json::Value::Object(map) => {
            let mut t = FieldTable::default();
            for (k, v) in map {
                t.insert(k.as_str().into(), amqp_value(v));
            }
            Ok(t)
        }
        serde_json::Value::Null => Ok(FieldTable::default()),
        other => Err(format!(
            "the headers column must hold a JSON object, not {}",
            json_kind(other)
        )),
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

fn amqp_value(v: &serde_json::Value) -> AMQPValue {
    match v {
        serde_json::Value::Null => AMQPValue::Void,
        serde_json::Value::Bool(b) => AMQPValue::Boolean(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => AMQPValue::LongLongInt(i),
            None => AMQPValue::Double(n.as_f64().unwrap_or(0.0)),
        },
        serde_json::Value::String(s) => AMQPValue::LongString(LongString::from(s.as_str())),
        serde_json::Value::Array(a) => {
            let mut arr = FieldArray::default();
            for x in a {
                arr.push(amqp_value(x));
            }
            AMQPValue::FieldArray(arr)
        }
        serde_json::Value::Object(map) => {
            let mut t = FieldTable::default();
            for (k, v) in map {
                t.insert(k.as_str().into(), amqp_value(v));
            }
            AMQPValue::FieldTable(t)
        }
    }
}

/// Counts per kind, for tests of the header conversion.
#[cfg(test)]
fn kinds(t: &FieldTable) -> std::collections::HashMap<String, &'static str> {
    t.inner()
        .iter()
        .map(|(k, v)| {
            let kind = match v {
                AMQPValue::LongString(_) => "string",
                AMQPValue::LongLongInt(_) => "int",
                AMQPValue::Boolean(_) => "bool",
                AMQPValue::Double(_) => "double",
                AMQPValue::FieldTable(_) => "table",
                AMQPValue::FieldArray(_) => "array",
                AMQPValue::Void => "void",
                _ => "other",
            };
            (k.to_string(), kind)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_keep_their_json_types() {
        let v = serde_json::json!({
            "tenant": "acme", "n": 3, "urgent": true, "ratio": 0.5,
            "tags": ["a"], "meta": {"k": "v"}, "none": null
        });
        let t = headers_table(&v).expect("an object");
        let k = kinds(&t);
        assert_eq!(k["tenant"], "string");
        assert_eq!(k["n"], "int");
        assert_eq!(k["urgent"], "bool");
        assert_eq!(k["ratio"], "double");
        assert_eq!(k["tags"], "array");
        assert_eq!(k["meta"], "table");
        assert_eq!(k["none"], "void");
    }

    #[test]
    fn headers_that_are_not_an_object_are_refused_with_a_reason() {
        let e = headers_table(&serde_json::json!([1])).expect_err("array");
        assert!(e.contains("JSON object, not an array"), "{e}");
        assert!(headers_table(&serde_json::Value::Null).is_ok());
    }

    #[test]
    fn queries_quote_the_table_and_bind_every_value() {
        let q = Queries::new(&"my_outbox".parse().expect("valid"));
        assert!(q.claim.contains("FROM \"my_outbox\""));
        assert!(q.claim.ends_with("FOR UPDATE SKIP LOCKED"));
        assert!(q.claim.contains("ORDER BY created_at, id"));
        assert!(q.refuse.contains("attempts = attempts + 1"));
    }

    #[test]
    fn refusals_are_the_rows_own_fault_and_the_rest_is_the_connection() {
        let id = || "m".to_owned();
        assert!(is_refusal(&PublishError::Returned {
            message_id: id(),
            exchange: id(),
            routing_key: id()
        }));
        assert!(!is_refusal(&PublishError::Timeout {
            message_id: id(),
            timeout: Duration::from_secs(1)
        }));
        assert!(!is_refusal(&PublishError::Connect(id())));
    }

    #[test]
    fn long_errors_are_cut_on_a_character_boundary() {
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncate("ééé", 3), "é…");
    }
}
