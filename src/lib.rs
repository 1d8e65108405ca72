//! Courier: a worker fleet for notification delivery over AMQP (RabbitMQ).
//!
//! Services publish notification jobs as plain AMQP messages; `courier work` processes deliver
//! them with publisher confirms, manual acks after the outcome is safe, TTL retry tiers, priority
//! queues and a dead-letter queue; `courier-dlq` inspects and replays dead letters.
//!
//! # Layout
//! - [`topology`]: the declared topology file, its validation, `apply`, `check`, `export`.
//! - [`envelope`]: the message contract — header names, reading and writing them.
//! - [`outcome`]: handler result → ack / retry tier / dead letter, in one pure function.
//! - [`handler`]: the [`handler::Handler`] trait and the `http` and `noop` handlers.
//! - [`publisher`]: the confirmed publisher (window, mandatory, returns by message id, deadlines).
//! - [`retry`]: the one retry policy (exponential backoff, jitter, deadline, what is permanent).
//! - [`worker`]: the consumer supervisor, per-message outcomes, coalesced acks.
//! - [`deadletter`]: the dead-letter contract (`x-courier-*` and `x-death` read, replay headers
//!   and destination); `courier-dlq`'s filters, stats and rendering live in its own crate.
//! - [`ack`]: the ack frontier (which tag `multiple` may ack), shared by the worker and the DLQ
//!   tool's passes.
//! - [`metrics`], [`shutdown`]: Prometheus registry and endpoints; signal handling.
//! - [`amqp`]: broker URLs (password never displayed) and connections.
//! - [`management`]: the optional management-API client (bindings, for `check`).

#![warn(missing_docs)]

pub mod ack;
pub mod amqp;
pub mod deadletter;
pub mod envelope;
pub mod handler;
pub mod management;
pub mod metrics;
pub mod outcome;
pub mod publisher;
pub mod retry;
pub mod shutdown;
pub mod topology;
pub mod worker;
