//! The outbox relay (`courier relay`) against a real PostgreSQL (COURIER_TEST_DATABASE_URL,
//! default postgres://postgres@127.0.0.1:5432/test) and the real broker, through the real binary.
//! Every test works on tables of its own (unique names) and drops them, also on panic.

use crate::util::*;
use std::collections::{HashMap, HashSet};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The database under test.
fn db_url() -> String {
    std::env::var("COURIER_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

async fn pg() -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&db_url(), tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "PostgreSQL at {} answers (scripts/setup postgres starts one): {e}",
                db_url()
            )
        });
    tokio::spawn(conn);
    client
}

/// An identifier no other test (or run) uses, from the shared unique prefix.
fn unique_table(name: &str) -> String {
    unique_prefix(name)
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect::<String>()
        .trim_end_matches('_')
        .to_lowercase()
}

/// Tables a test created, dropped with the outbox's function and migration record on drop
/// (also when the test panicked), from a thread of its own like `Cleanup`.
struct Tables {
    outbox: String,
    business: Vec<String>,
}

impl Tables {
    fn new(name: &str) -> Self {
        Self {
            outbox: unique_table(&format!("ob_{name}")),
            business: Vec::new(),
        }
    }

    fn business(&mut self, name: &str) -> String {
        let t = unique_table(&format!("biz_{name}"));
        self.business.push(t.clone());
        t
    }
}

impl Drop for Tables {
    fn drop(&mut self) {
        let outbox = self.outbox.clone();
        let business = std::mem::take(&mut self.business);
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Ok((client, conn)) =
                    tokio_postgres::connect(&db_url(), tokio_postgres::NoTls).await
                else {
                    return;
                };
                tokio::spawn(conn);
                let mut sql = format!(
                    "DROP TABLE IF EXISTS \"{outbox}\"; DROP FUNCTION IF EXISTS \"{outbox}_notify\"();"
                );
                for b in &business {
                    sql.push_str(&format!("DROP TABLE IF EXISTS \"{b}\";"));
                }
                // A test that panicked may still have a writer finishing its transaction: try
                // again rather than leave the tables behind.
                for _ in 0..5 {
                    if client.batch_execute(&sql).await.is_ok() {
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                let _ = client
                    .execute(
                        "DELETE FROM courier_migrations WHERE target = $1",
                        &[&outbox],
                    )
                    .await;
            });
        })
        .join();
    }
}

/// Tasks aborted when the test ends, also by a panic: a writer must not hold its transaction
/// open while the cleanup drops its tables.
struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// `courier relay ARGS... --table T` with the test database.
fn relay_output(table: &str, args: &[&str]) -> std::process::Output {
    let url = db_url();
    let mut all = vec!["relay"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--database-url", &url, "--table", table]);
    courier("", &all)
}

fn migrate(table: &str) {
    let o = relay_output(table, &["migrate"]);
    assert!(o.status.success(), "migrate: {}", stderr(&o));
}

/// A running relay: its stderr is read as it comes.
struct Relay {
    child: DeadlineChild,
    log: PipeLog,
}

impl Relay {
    fn start(table: &str, extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_courier"))
            .args(["relay", "--table", table, "--database-url", &db_url()])
            .args(extra)
            .env("AMQP_URL", amqp_url())
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn_within(CHILD_DEADLINE);
        let log = PipeLog::new(child.stderr.take());
        Self { child, log }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `application_name` of its database connections (see `RelayConfig::new`).
    fn application_name(&self, table: &str) -> String {
        format!("courier relay {table} pid {}", self.pid())
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .expect("kill runs");
        assert!(ok.success(), "kill {sig} {}", self.pid());
    }

    /// SIGTERM, then its exit code and everything it logged.
    async fn stop(mut self) -> (Option<i32>, String) {
        self.signal("-TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "relay did not stop within 30 s of SIGTERM:\n{}",
                self.log.text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        (status.code(), self.log.finish())
    }
}

/// The relay's transaction id while it holds claimed rows (in a transaction that has locked
/// rows, waiting for confirms), else None.
async fn claim_in_flight(db: &tokio_postgres::Client, application_name: &str) -> Option<i64> {
    let rows = db
        .query(
            "SELECT backend_xid::text::bigint FROM pg_stat_activity \
             WHERE application_name = $1 AND state = 'idle in transaction' AND backend_xid IS NOT NULL",
            &[&application_name],
        )
        .await
        .expect("pg_stat_activity");
    rows.first().map(|r| r.get(0))
}

/// `txid_status` of a 32-bit xid seen moments ago (same epoch as now).
async fn xid_status(db: &tokio_postgres::Client, xid: i64) -> String {
    let now: i64 = db
        .query_one("SELECT txid_current()", &[])
        .await
        .expect("txid_current")
        .get(0);
    let full = (now >> 32 << 32) | xid;
    db.query_one("SELECT coalesce(txid_status($1), 'unknown')", &[&full])
        .await
        .expect("txid_status")
        .get(0)
}

async fn pending(db: &tokio_postgres::Client, table: &str) -> i64 {
    db.query_one(
        &format!("SELECT count(*) FROM \"{table}\" WHERE published_at IS NULL"),
        &[],
    )
    .await
    .expect("count pending")
    .get(0)
}

/// The issue's test: a service writes 5,000 transactions (business row + outbox row), rolling
/// back every tenth; two relays run; one is SIGKILLed while it holds a claimed batch, and the
/// broker closes the relays' connections while a batch is in flight. Every committed row's
/// message arrives, none of a rolled-back one, lost = 0; duplicates are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_committed_row_arrives_across_a_kill_and_a_broker_disconnect() {
    const TOTAL: usize = 5_000;
    const WRITERS: usize = 4;
    const BATCH: usize = 200;
    let t = TestTopology::fast("outbox").await;
    let exchange = t.exchange();
    let queue = t.name("notifications.email");
    let mut tables = Tables::new("relay");
    let business = tables.business("orders");
    let table = tables.outbox.clone();
    migrate(&table);
    let db = pg().await;
    db.batch_execute(&format!(
        "CREATE TABLE \"{business}\" (id text PRIMARY KEY, amount integer NOT NULL)"
    ))
    .await
    .expect("business table");

    let mut relay_a = Relay::start(&table, &["--batch-size", &BATCH.to_string()]);
    let relay_b = Relay::start(&table, &["--batch-size", &BATCH.to_string()]);
    for r in [&relay_a, &relay_b] {
        r.log
            .wait_for("relaying the outbox", Duration::from_secs(30))
            .await;
    }

    // The service: WRITERS connections, each its share of transactions, as fast as they go.
    let written = Arc::new(AtomicUsize::new(0));
    let mut writers = AbortOnDrop(Vec::new());
    for w in 0..WRITERS {
        let (written, business, table, exchange) = (
            written.clone(),
            business.clone(),
            table.clone(),
            exchange.clone(),
        );
        writers.0.push(tokio::spawn(async move {
            let mut client = pg().await;
            let insert_business =
                format!("INSERT INTO \"{business}\" (id, amount) VALUES ($1, $2)");
            let insert_outbox = format!(
                "INSERT INTO \"{table}\" (id, exchange, routing_key, headers, body, priority) \
                 VALUES ($1, $2, 'email', $3, $4, $5)"
            );
            for i in (w..TOTAL).step_by(WRITERS) {
                let id = format!("order-{i}");
                let amount = i32::try_from(i).expect("small");
                let tx = client.transaction().await.expect("begin");
                tx.execute(&insert_business, &[&id, &amount])
                    .await
                    .expect("business row");
                let headers = serde_json::json!({"order": i, "tenant": "acme"});
                let body = format!(r#"{{"to":"user-{i}@example.com","order":{i}}}"#).into_bytes();
                let priority = i16::try_from(i % 10).expect("small");
                tx.execute(
                    &insert_outbox,
                    &[&id, &exchange, &headers, &body, &priority],
                )
                .await
                .expect("outbox row");
                if i % 10 == 9 {
                    tx.rollback().await.expect("rollback");
                } else {
                    tx.commit().await.expect("commit");
                }
                written.fetch_add(1, Ordering::Relaxed);
                // A steady service rather than a burst: the faults below land while it writes.
                tokio::time::sleep(Duration::from_millis(12)).await;
            }
        }));
    }
    let wait_written = |n: usize| {
        let written = written.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            while written.load(Ordering::Relaxed) < n {
                assert!(
                    Instant::now() < deadline,
                    "the writers stalled at {} of {n}",
                    written.load(Ordering::Relaxed)
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };

    // Fault 1: SIGKILL relay A while it holds a claimed batch. It is frozen (SIGSTOP) first, so
    // what pg_stat_activity shows is what the kill hits: a transaction with locked rows, not
    // committed.
    wait_written(TOTAL / 5).await;
    let name_a = relay_a.application_name(&table);
    let deadline = Instant::now() + Duration::from_secs(60);
    let (killed_xid, pending_at_kill) = loop {
        relay_a.signal("-STOP");
        // Let the server process whatever A sent before it froze.
        tokio::time::sleep(Duration::from_millis(30)).await;
        if let Some(xid) = claim_in_flight(&db, &name_a).await {
            let pending = pending(&db, &table).await;
            relay_a.signal("-KILL");
            break (xid, pending);
        }
        relay_a.signal("-CONT");
        assert!(
            Instant::now() < deadline,
            "relay A was never caught holding a batch:\n{}",
            relay_a.log.text()
        );
        tokio::time::sleep(Duration::from_millis(3)).await;
    };
    let _ = relay_a.child.wait();
    let written_at_kill = written.load(Ordering::Relaxed);
    // The server ends the dead relay's transaction: its rows are due again, not marked.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let s = xid_status(&db, killed_xid).await;
        if s != "in progress" || Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        status, "aborted",
        "the killed relay's claim (xid {killed_xid}) must have been in flight"
    );
    assert!(pending_at_kill > 0, "the kill landed with rows pending");
    // A replacement, so two relays run again.
    let relay_c = Relay::start(&table, &["--batch-size", &BATCH.to_string()]);

    // Fault 2: the broker closes the relays' connections (only this test's: their names hold
    // the table) while relay B holds a claimed batch. Both relays are frozen until a backlog
    // has built up, then B alone goes on and is frozen again as soon as it holds its claim;
    // the connections are closed, and both go on: B must publish that batch on a new
    // connection.
    wait_written(TOTAL * 2 / 5).await;
    let name_b = relay_b.application_name(&table);
    relay_b.signal("-STOP");
    relay_c.signal("-STOP");
    let backlog_from = written.load(Ordering::Relaxed);
    wait_written(backlog_from + 300).await;
    relay_b.signal("-CONT");
    let deadline = Instant::now() + Duration::from_secs(60);
    while claim_in_flight(&db, &name_b).await.is_none() {
        assert!(
            Instant::now() < deadline,
            "relay B was never caught holding a batch:\n{}",
            relay_b.log.text()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    relay_b.signal("-STOP");
    let written_at_close = written.load(Ordering::Relaxed);
    let pending_at_close = pending(&db, &table).await;
    let closed =
        courier_testkit::queues::close_connections(&format!("courier relay {table}")).await;
    relay_b.signal("-CONT");
    relay_c.signal("-CONT");
    // B's at least (C's publisher connects on its first publish, and may not have yet).
    assert!(closed >= 1, "the relays' connections were closed");
    assert!(pending_at_close > 0, "the close landed with rows pending");
    relay_b
        .log
        .wait_for("publisher reconnect", Duration::from_secs(30))
        .await;

    for w in std::mem::take(&mut writers.0) {
        w.await.expect("writer");
    }
    // Every committed row is relayed (and deleted: no retention).
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left: i64 = db
            .query_one(&format!("SELECT count(*) FROM \"{table}\""), &[])
            .await
            .expect("count")
            .get(0);
        if left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{left} rows still in {table}\nrelay B:\n{}\nrelay C:\n{}",
            relay_b.log.text(),
            relay_c.log.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (code_b, log_b) = relay_b.stop().await;
    let (code_c, log_c) = relay_c.stop().await;
    assert_eq!(code_b, Some(0), "relay B on SIGTERM:\n{log_b}");
    assert_eq!(code_c, Some(0), "relay C on SIGTERM:\n{log_c}");

    let committed: Vec<String> = (0..TOTAL)
        .filter(|i| i % 10 != 9)
        .map(|i| format!("order-{i}"))
        .collect();
    let business_rows: i64 = db
        .query_one(&format!("SELECT count(*) FROM \"{business}\""), &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(business_rows as usize, committed.len());

    let delivered: Vec<String> = drain(&queue)
        .await
        .iter()
        .map(|m| {
            courier::envelope::message_id(&m.delivery.properties)
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    let (lost, duplicates) = reconcile(&committed, &delivered);
    let expected: HashSet<&str> = committed.iter().map(String::as_str).collect();
    let strays: Vec<&String> = delivered
        .iter()
        .filter(|id| !expected.contains(id.as_str()))
        .collect();
    let mut per_id: HashMap<&str, usize> = HashMap::new();
    for d in &delivered {
        *per_id.entry(d).or_default() += 1;
    }
    println!(
        "outbox: {} transactions ({} committed, {} rolled back); delivered {} messages, \
         {} distinct; lost {lost}, duplicates {duplicates}, from rolled-back transactions {}; \
         SIGKILL of relay A with its claim xid {killed_xid} in flight after {written_at_kill} \
         written, {pending_at_kill} pending; broker closed {closed} relay connections after \
         {written_at_close} written, {pending_at_close} pending; batches left unconfirmed by \
         the close: {}",
        TOTAL,
        committed.len(),
        TOTAL - committed.len(),
        delivered.len(),
        per_id.len(),
        strays.len(),
        log_b
            .matches("broker did not confirm part of the batch")
            .count()
            + log_c
                .matches("broker did not confirm part of the batch")
                .count(),
    );
    assert_eq!(lost, 0, "committed rows never delivered");
    // Rows locked by a claim are published by no other relay: a fault can republish at most
    // the batches in flight when it hit (A's at the kill, B's and C's at the close).
    assert!(
        duplicates <= 3 * BATCH,
        "{duplicates} duplicates: more than the batches the faults hit"
    );
    assert!(
        strays.is_empty(),
        "messages of rolled-back transactions: {:?}",
        &strays[..strays.len().min(10)]
    );
}

/// `migrate` twice is fine and creates every column; a bad table name is refused naming the
/// flag; a relay on a missing table says how to create it.
#[tokio::test]
async fn migrate_is_idempotent_and_bad_names_are_refused() {
    let tables = Tables::new("migrate");
    let table = tables.outbox.clone();
    let first = relay_output(&table, &["migrate"]);
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(
        stdout(&first).contains("applied 0001_outbox.sql"),
        "{}",
        stdout(&first)
    );
    let second = relay_output(&table, &["migrate"]);
    assert!(second.status.success(), "{}", stderr(&second));
    assert!(
        stdout(&second).contains("up to date"),
        "{}",
        stdout(&second)
    );

    let db = pg().await;
    let columns: Vec<String> = db
        .query(
            "SELECT column_name::text FROM information_schema.columns WHERE table_name = $1",
            &[&table],
        )
        .await
        .expect("columns")
        .iter()
        .map(|r| r.get(0))
        .collect();
    for c in [
        "id",
        "exchange",
        "routing_key",
        "headers",
        "body",
        "priority",
        "created_at",
        "published_at",
        "attempts",
        "last_error",
    ] {
        assert!(columns.iter().any(|x| x == c), "{c} missing: {columns:?}");
    }

    for bad in ["orders\"; DROP TABLE users; --", "Outbox", "1x"] {
        let o = relay_output(bad, &["migrate"]);
        assert_eq!(o.status.code(), Some(1), "{bad}");
        let err = stderr(&o);
        assert!(
            err.contains("--table") && err.contains("not a valid outbox table name"),
            "{bad}: {err}"
        );
    }

    let missing = unique_table("ob_never_created");
    let o = relay_output(&missing, &[]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains(&format!("table {missing} does not exist"))
            && err.contains("courier relay migrate"),
        "{err}"
    );
}

/// Rows the broker refuses (no such exchange, no queue bound) stay pending with attempts and
/// last_error, while a good row beside them is published; SIGTERM then exits 0.
#[tokio::test]
async fn refused_rows_stay_pending_with_attempts_and_last_error() {
    let t = TestTopology::fast("outbox_refused").await;
    let tables = Tables::new("refused");
    let table = tables.outbox.clone();
    migrate(&table);
    let db = pg().await;
    let missing_exchange = t.name("no-such-exchange");
    db.execute(
        &format!(
            "INSERT INTO \"{table}\" (id, exchange, routing_key, body) VALUES \
             ('no-exchange', $1, 'email', '\\x7b7d'), \
             ('unroutable', $2, 'no-such-key', '\\x7b7d'), \
             ('good', $2, 'email', '\\x7b7d')"
        ),
        &[&missing_exchange, &t.exchange()],
    )
    .await
    .expect("rows");

    let relay = Relay::start(&table, &[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows = db
            .query(
                &format!("SELECT id, attempts FROM \"{table}\" ORDER BY id"),
                &[],
            )
            .await
            .expect("rows");
        let attempts: HashMap<String, i32> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        if !attempts.contains_key("good")
            && attempts.get("no-exchange").is_some_and(|a| *a >= 2)
            && attempts.get("unroutable").is_some_and(|a| *a >= 2)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{attempts:?}\n{}",
            relay.log.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (code, log) = relay.stop().await;
    assert_eq!(code, Some(0), "{log}");

    let rows = db
        .query(
            &format!(
                "SELECT id, attempts, last_error, published_at IS NULL, next_attempt_at > created_at \
                 FROM \"{table}\" ORDER BY id"
            ),
            &[],
        )
        .await
        .expect("rows");
    assert_eq!(rows.len(), 2, "the good row was deleted after its confirm");
    for r in &rows {
        let (id, attempts, error, pending, backed_off): (String, i32, Option<String>, bool, bool) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
        assert!(pending && backed_off && attempts >= 2, "{id}");
        let error = error.unwrap_or_default();
        match id.as_str() {
            "no-exchange" => assert!(
                error.contains(&format!("exchange '{missing_exchange}' does not exist")),
                "{error}"
            ),
            _ => assert!(error.contains("unroutable"), "{error}"),
        }
        assert!(log.contains(&format!("message_id={id}")), "logged: {log}");
    }
    assert!(log.contains("outbox row refused"), "{log}");
    assert_eq!(depth(&t.name("notifications.email")).await, 1);
}
