//! `courier-dlq` against a real RabbitMQ (AMQP_URL, default guest@127.0.0.1; the management API
//! at COURIER_TEST_MANAGEMENT_URL for the connection-loss test). Every test works under its own
//! prefix (`t.dlq.<name>.<pid>...`) and removes what it declared, so the tests run in parallel
//! with each other and with the rest of the suite.
//!
//! One test binary, a module per area; the seeding helpers they share are here and in
//! `tests/util/mod.rs` (shared with the `perf` test binary).

#[path = "../util/mod.rs"]
mod util;

mod audit;
mod busy;
mod console;
mod edit;
mod errors;
mod export;
mod groups;
mod in_place;
mod inspect;
mod purge;
mod replay;
mod smart;

use courier::publisher::Outgoing;
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use util::*;

fn ttl_queue_args(env: &Env) -> FieldTable {
    let mut a = FieldTable::default();
    a.insert("x-message-ttl".into(), AMQPValue::LongLongInt(0));
    a.insert("x-dead-letter-exchange".into(), long(&env.dlx()));
    a
}

fn plain(routing_key: &str, id: &str) -> Outgoing {
    Outgoing {
        exchange: String::new(),
        routing_key: routing_key.to_owned(),
        properties: BasicProperties::default()
            .with_message_id(id.into())
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_timestamp(1_700_000_000),
        body: format!(r#"{{"id":"{id}"}}"#).into_bytes(),
    }
}
