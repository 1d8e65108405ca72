//! Courier: a worker fleet for notification delivery over AMQP (RabbitMQ).
//!
//! Services publish notification jobs as plain AMQP messages; `courier work` processes deliver
//! them with publisher confirms, manual acks after the outcome is safe, TTL retry tiers, priority
//! queues and a dead-letter queue; `courier-dlq` inspects and replays dead letters.
//!
//! # Layout
//! - [`topology`]: the declared topology file, its validation, `apply`, `check`, `export`.
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
pub mod shutdown;
pub mod topology;
pub mod worker;
