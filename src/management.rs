//! A minimal client for RabbitMQ's management HTTP API, for what AMQP cannot tell: bindings,
//! and how many of a queue's messages are delivered but unacknowledged (a passive
//! `queue.declare` counts only the ready ones).
//!
//! Optional everywhere: Courier works without the management plugin, and says what it could
//! not verify.

use crate::amqp::AmqpUrl;
use serde::Deserialize;
use std::collections::BTreeSet;
use std::time::Duration;

/// Management API endpoint plus credentials (the AMQP ones unless told otherwise).
#[derive(Clone)]
pub struct Management {
    /// `http://host:15672`, without a trailing slash.
    base: String,
    /// Basic-auth user.
    user: String,
    /// Basic-auth password; never printed.
    password: String,
    /// vhost whose objects we look at.
    vhost: String,
    /// Pooled HTTP client with a short timeout: this is a diagnostic, not a hot path.
    client: reqwest::Client,
}

impl std::fmt::Debug for Management {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Management({})", self.base)
    }
}

/// Why the management API could not answer.
#[derive(Debug, thiserror::Error)]
#[error("management API at {base}: {reason}")]
pub struct ManagementError {
    base: String,
    reason: String,
}

#[derive(Deserialize)]
struct Binding {
    source: String,
    destination: String,
    destination_type: String,
    routing_key: String,
}

/// A queue's message counts as the management API last sampled them.
///
/// The broker refreshes these every few seconds (`collect_statistics_interval`, 5 s by
/// default), so they can lag behind a consumer that just acked or gave messages back; a
/// passive declare's ready count is the current one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueCounts {
    /// Messages waiting to be delivered.
    pub ready: u64,
    /// Messages delivered to a consumer (or a `basic.get`) and not yet acked or given back.
    pub unacked: u64,
    /// Consumers subscribed.
    pub consumers: u64,
}

#[derive(Deserialize)]
struct QueueRecord {
    // Absent until the broker has sampled a new queue once.
    messages_ready: Option<u64>,
    messages_unacknowledged: Option<u64>,
    consumers: Option<u64>,
}

impl Management {
    /// A client for `base` (e.g. `http://127.0.0.1:15672`) using the AMQP URL's credentials.
    pub fn new(base: &str, amqp: &AmqpUrl) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            user: amqp.username().to_owned(),
            password: amqp.password_for_http().to_owned(),
            vhost: amqp.vhost().to_owned(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
        }
    }

    fn err(&self, reason: impl ToString) -> ManagementError {
        ManagementError {
            base: self.base.clone(),
            reason: crate::amqp::redact(&reason.to_string()),
        }
    }

    /// The base URL (no credentials in it), for messages.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `queue`'s message counts (see [`QueueCounts`] for how fresh they are).
    ///
    /// # Errors
    /// [`ManagementError`] if the API is unreachable within `timeout`, refuses the credentials,
    /// does not know the queue or has not sampled it yet.
    pub async fn queue_counts(
        &self,
        queue: &str,
        timeout: Duration,
    ) -> Result<QueueCounts, ManagementError> {
        let encode = |s: &str| -> String {
            percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).collect()
        };
        let resp = self
            .client
            .get(format!(
                "{}/api/queues/{}/{}",
                self.base,
                encode(&self.vhost),
                encode(queue)
            ))
            .query(&[(
                "columns",
                "messages_ready,messages_unacknowledged,consumers",
            )])
            .timeout(timeout)
            .basic_auth(&self.user, Some(&self.password))
            .send()
            .await
            .map_err(|e| {
                // The request's URL is noise here: the base is already in the message.
                if e.is_timeout() {
                    self.err(format!("no answer within {}s", timeout.as_secs_f32()))
                } else if e.is_connect() {
                    self.err("cannot connect")
                } else {
                    self.err(e.without_url())
                }
            })?;
        if !resp.status().is_success() {
            return Err(self.err(format!("HTTP {} for queue '{queue}'", resp.status())));
        }
        let q: QueueRecord = resp.json().await.map_err(|e| self.err(e))?;
        match (q.messages_ready, q.messages_unacknowledged) {
            (Some(ready), Some(unacked)) => Ok(QueueCounts {
                ready,
                unacked,
                consumers: q.consumers.unwrap_or(0),
            }),
            _ => Err(self.err(format!(
                "no message counts for queue '{queue}' yet (the broker samples them every few seconds)"
            ))),
        }
    }

    /// Every (exchange, queue, routing key) binding in the vhost.
    ///
    /// # Errors
    /// [`ManagementError`] if the API is unreachable, refuses the credentials or answers oddly.
    pub async fn bindings(&self) -> Result<BTreeSet<(String, String, String)>, ManagementError> {
        let vhost: String =
            percent_encoding::utf8_percent_encode(&self.vhost, percent_encoding::NON_ALPHANUMERIC)
                .collect();
        let resp = self
            .client
            .get(format!("{}/api/bindings/{vhost}", self.base))
            .basic_auth(&self.user, Some(&self.password))
            .send()
            .await
            .map_err(|e| self.err(e))?;
        if !resp.status().is_success() {
            return Err(self.err(format!("HTTP {}", resp.status())));
        }
        let bindings: Vec<Binding> = resp.json().await.map_err(|e| self.err(e))?;
        Ok(bindings
            .into_iter()
            .filter(|b| b.destination_type == "queue")
            .map(|b| (b.source, b.destination, b.routing_key))
            .collect())
    }
}
