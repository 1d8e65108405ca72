//! Dead letters as the worker and the broker write them, for the unit tests of the filters,
//! the aggregates and the rendering (the library's own tests build the same ones, privately).

use courier::deadletter::X_DEATH;
use courier::envelope::{dead_letter_headers, Origin, Reason};
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString};
use lapin::BasicProperties;

/// A long-string header value.
pub fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

/// A header table of these pairs.
pub fn table(pairs: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert((*k).into(), v.clone());
    }
    t
}

/// Where the test messages were consumed from.
pub fn origin() -> Origin {
    Origin {
        exchange: "p.notifications".into(),
        routing_key: "email".into(),
        queue: "p.notifications.email".into(),
    }
}

/// What a worker writes when `m-1` runs out of attempts with `error`, at `at` (epoch ms).
pub fn worker_dead_letter(error: &str, at: i64) -> BasicProperties {
    let h = dead_letter_headers(None, 5, Reason::MaxAttempts, error, &origin(), at);
    BasicProperties::default()
        .with_message_id("m-1".into())
        .with_headers(h)
}

/// What RabbitMQ 3.10 writes when a message expires in `q` (published to `ex`/`key`).
pub fn broker_dead_letter(q: &str, ex: &str, key: &str, time_s: u64) -> BasicProperties {
    let death = table(&[
        ("count", AMQPValue::LongLongInt(1)),
        ("exchange", long(ex)),
        ("queue", long(q)),
        ("reason", long("expired")),
        (
            "routing-keys",
            AMQPValue::FieldArray(FieldArray::from(vec![long(key)])),
        ),
        ("time", AMQPValue::Timestamp(time_s)),
    ]);
    let h = table(&[
        (
            X_DEATH,
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(death)])),
        ),
        ("x-first-death-queue", long(q)),
        ("x-first-death-reason", long("expired")),
        ("tenant", long("acme")),
    ]);
    BasicProperties::default()
        .with_message_id("b-1".into())
        .with_headers(h)
}
