//! Courier: a worker fleet for notification delivery over AMQP (RabbitMQ).
//!
//! Services publish notification jobs as plain AMQP messages; `courier work` processes deliver
//! them with publisher confirms, manual acks after the outcome is safe, TTL retry tiers, priority
//! queues and a dead-letter queue; `courier-dlq` inspects and replays dead letters.
//!
//! # Layout
//! - [`topology`]: the declared topology file: parsing, validation, the model, exports (no I/O).
//! - [`broker`]: every broker conversation outside the consume loop and the publisher:
//!   [`broker::Admin`] (look-ups, purges, deletes, exclusive consumers), reply-code
//!   classification, `apply`, `check`, version probing and bounded inspection.
//! - [`envelope`]: the message contract — header names, reading and writing them.
//! - [`outcome`]: where a message goes next — malformed, crash loop, handler, then ack / retry
//!   tier / dead letter — in one pure function.
//! - [`handler`]: the [`handler::Handler`] trait and the `http` and `noop` handlers (and the
//!   HTTP header names `http` sends, for endpoints and stand-ins).
//! - [`publisher`]: the confirmed publisher (window, mandatory, returns by message id, deadlines).
//! - [`retry`]: the one retry policy (exponential backoff, jitter, deadline, what is permanent).
//! - [`worker`]: the worker and its validated config; inside, the supervisor (connect, reconnect,
//!   drain), the consume loops (one queue, an urgent band taken first, shards in turn, ordered
//!   shards one message at a time and shared out between workers), per-delivery processing and
//!   coalesced acks.
//! - [`ratelimit`]: per-endpoint rate limits, a handler wrapper drawing tokens from a local
//!   bucket or one fleet-wide GCRA limit in Redis (with a local fallback share).
//! - [`deadletter`]: the dead-letter contract (`x-courier-*` and `x-death` read, replay headers
//!   and destination); `courier-dlq`'s filters, stats and rendering live in its own crate.
//! - [`ack`]: the ack frontier (which tag `multiple` may ack), shared by the worker and the DLQ
//!   tool's passes.
//! - [`relay`]: the outbox relay (`courier relay`): claims rows of a PostgreSQL outbox table with
//!   `FOR UPDATE SKIP LOCKED`, publishes them confirmed, marks them after the confirm; its schema
//!   migrations.
//! - [`metrics`], [`shutdown`]: Prometheus registry and endpoints; signal handling.
//! - [`logging`]: the log set-up both binaries install (stderr, colour only on a terminal), with
//!   the trace exporter's layer when one is asked for.
//! - [`telemetry`]: W3C trace context through AMQP headers, and OTLP span export (off unless
//!   asked for; a bounded queue that drops and counts rather than slow delivery).
//! - [`amqp`]: broker URLs (password never displayed) and connections.
//! - [`management`]: the optional management-API client (bindings, for `check`; unacknowledged
//!   counts, for `courier-dlq stats`).
//!
//! The workspace's other crates: `src/main.rs` + `src/cli/` the thin `courier` binary (one module
//! a command); `dlq-tool/` the `courier-dlq` binary (its filters, stats, rendering and export
//! format); `bench/` `courier-bench`; `testkit/` `courier-testkit`, the fixtures every test suite
//! shares (not published).

#![warn(missing_docs)]

pub mod ack;
pub mod amqp;
pub mod broker;
pub mod deadletter;
pub mod envelope;
pub mod handler;
pub mod logging;
pub mod management;
pub mod metrics;
pub mod outcome;
pub mod publisher;
pub mod ratelimit;
pub mod relay;
pub mod retry;
pub mod runtime;
pub mod shutdown;
pub mod telemetry;
pub mod topology;
pub mod worker;
