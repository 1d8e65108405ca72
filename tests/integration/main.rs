//! Integration tests against a real RabbitMQ (AMQP_URL, default guest@127.0.0.1) with the
//! management plugin (COURIER_TEST_MANAGEMENT_URL, default http://127.0.0.1:15672).
//! Every test works under its own name prefix and removes what it declared, so they run in
//! parallel with each other and beside real queues. `scripts/test` starts the broker.

mod bands;
mod compose;
mod definitions;
mod demo;
mod deploy;
mod docs;
mod guarantees;
mod http_handler;
mod lifecycle;
mod metrics;
mod monitoring;
mod ordering;
mod outbox;
mod publishers;
mod quorum;
mod rate_limit;
mod reliability;
mod shards;
mod shards_cmd;
mod sink;
mod stack;
mod topology;
mod traces;
mod util;
mod worker;
