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
//! - [`handler`]: the [`handler::Handler`] trait and the `http` and `noop` handlers (and the
//!   HTTP header names `http` sends, for endpoints and stand-ins).
//! - [`publisher`]: the confirmed publisher (window, mandatory, returns by message id, deadlines).
//! - [`retry`]: the one retry policy (exponential backoff, jitter, deadline, what is permanent).
//! - [`worker`]: the consumer supervisor, per-message outcomes, coalesced acks.
//! - [`deadletter`]: dead letters as `courier-dlq` reads them (filters, `x-death`, replay headers).
//! - [`metrics`], [`shutdown`]: Prometheus registry and endpoints; signal handling.
//! - [`amqp`]: broker URLs (password never displayed) and connections.
//! - [`management`]: the optional management-API client (bindings, for `check`).

#![warn(missing_docs)]

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
