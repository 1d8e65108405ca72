//! A minimal client for RabbitMQ's management HTTP API, for what AMQP cannot tell: bindings,
//! the arguments an existing queue or exchange was declared with, which objects exist under a
//! prefix, and how many of a queue's messages are delivered but unacknowledged (a passive
//! `queue.declare` counts only the ready ones).
//!
//! Optional everywhere: Courier works without the management plugin, and says what it could
//! not verify.

use crate::amqp::AmqpUrl;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
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
    /// Set when the API is known to front another broker: every call fails with this reason,
    /// so callers degrade exactly as when it is unreachable.
    refused: Option<String>,
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

/// A queue or an exchange as the broker records it: what a declare that the broker refused as
/// inequivalent is compared with.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ObjectRecord {
    /// The exchange type (`direct`, `fanout`, ...); `None` for a queue.
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    /// Survives a broker restart (Courier declares everything durable).
    #[serde(default)]
    pub durable: bool,
    /// Deleted by the broker when its last consumer or binding goes.
    #[serde(default)]
    pub auto_delete: bool,
    /// Every `x-` argument it was declared with, as the API reports them.
    #[serde(default)]
    pub arguments: BTreeMap<String, serde_json::Value>,
}

/// In the form of Courier's own descriptions (`type=direct, durable`, `x-max-priority=9, ...
/// (durable)`), so that the declared and the existing settings can be read side by side.
impl fmt::Display for ObjectRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut flags = vec![if self.durable {
            "durable"
        } else {
            "not durable"
        }];
        if self.auto_delete {
            flags.push("auto-delete");
        }
        let args: Vec<String> = self
            .arguments
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        match &self.kind {
            Some(kind) => {
                write!(f, "type={kind}, {}", flags.join(", "))?;
                if !args.is_empty() {
                    write!(f, ", {}", args.join(", "))?;
                }
                Ok(())
            }
            None if args.is_empty() => write!(f, "no arguments ({})", flags.join(", ")),
            None => write!(f, "{} ({})", args.join(", "), flags.join(", ")),
        }
    }
}

/// One queue in a listing of the vhost.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct QueueSummary {
    /// Full name.
    pub name: String,
    /// Consumers attached (absent from the API's answer until its stats catch up: 0).
    #[serde(default)]
    pub consumers: u64,
    /// Messages, ready and unacknowledged (absent until the stats catch up: 0).
    #[serde(default)]
    pub messages: u64,
}

#[derive(Deserialize)]
struct Named {
    name: String,
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
            refused: None,
        }
    }

    /// The management API of the broker behind `amqp`: `explicit` as given, else the guess
    /// (same host, port 15672). Two brokers on one host (a second one on 5673, a cluster on
    /// 5681-5683) make the guess answer for the wrong broker, whose lists would then drive a
    /// clean-up or a drift report here: so a guess is kept only if its cluster name matches the
    /// one the broker gives over AMQP. One that does not is refused (every call fails saying
    /// so, with a warning now); one that cannot be asked is kept, and fails as it would anyway.
    pub async fn locate(explicit: Option<&str>, amqp: &AmqpUrl) -> Self {
        if let Some(base) = explicit {
            return Self::new(base, amqp);
        }
        let mut guess = Self::new(&amqp.management_guess(), amqp);
        let (api, broker) = tokio::join!(guess.cluster_name(), crate::broker::probe_server(amqp));
        if let (
            Ok(api),
            Ok(crate::broker::ServerInfo {
                cluster_name: Some(broker),
                ..
            }),
        ) = (api, broker)
        {
            if api != broker {
                let reason = format!(
                    "it fronts cluster '{api}', not '{broker}' (the broker at {amqp}); pass the \
                     right one with --management-url"
                );
                tracing::warn!(management = %guess.base, "management API not used: {reason}");
                guess.refused = Some(reason);
            }
        }
        guess
    }

    /// The cluster name the API reports (`GET /api/overview`).
    ///
    /// # Errors
    /// [`ManagementError`] if the API is unreachable or answers oddly.
    pub async fn cluster_name(&self) -> Result<String, ManagementError> {
        #[derive(Deserialize)]
        struct Overview {
            cluster_name: String,
        }
        if let Some(reason) = &self.refused {
            return Err(self.err(reason));
        }
        let resp = self
            .client
            .get(format!("{}/api/overview", self.base))
            .query(&[("columns", "cluster_name")])
            .timeout(Duration::from_secs(5))
            .basic_auth(&self.user, Some(&self.password))
            .send()
            .await
            .map_err(|e| self.err(with_cause(&e)))?;
        if !resp.status().is_success() {
            return Err(self.err(format!("HTTP {}", resp.status())));
        }
        let o: Overview = resp.json().await.map_err(|e| self.err(with_cause(&e)))?;
        Ok(o.cluster_name)
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

    /// `GET {base}/api/{what}/{vhost}{rest}`; `None` on 404.
    async fn get<T: DeserializeOwned>(
        &self,
        what: &str,
        rest: &str,
    ) -> Result<Option<T>, ManagementError> {
        if let Some(reason) = &self.refused {
            return Err(self.err(reason));
        }
        let vhost = encode(&self.vhost);
        let resp = self
            .client
            .get(format!("{}/api/{what}/{vhost}{rest}", self.base))
            .basic_auth(&self.user, Some(&self.password))
            .send()
            .await
            .map_err(|e| self.err(with_cause(&e)))?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(self.err(format!("HTTP {}", resp.status())));
        }
        resp.json()
            .await
            .map(Some)
            .map_err(|e| self.err(with_cause(&e)))
    }

    /// Like [`Management::get`] for a listing, which exists whenever the vhost does.
    async fn list<T: DeserializeOwned>(
        &self,
        what: &str,
        rest: &str,
    ) -> Result<Vec<T>, ManagementError> {
        self.get(what, rest).await?.ok_or_else(|| {
            self.err(format!(
                "vhost {:?} not found (HTTP 404); check the AMQP URL's vhost",
                self.vhost
            ))
        })
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
        if let Some(reason) = &self.refused {
            return Err(self.err(reason));
        }
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
        let bindings: Vec<Binding> = self.list("bindings", "").await?;
        // Queue and exchange destinations alike (a sharded channel binds an exchange to its
        // shard exchange); names are unique across both in a topology.
        Ok(bindings
            .into_iter()
            .filter(|b| b.destination_type == "queue" || b.destination_type == "exchange")
            .map(|b| (b.source, b.destination, b.routing_key))
            .collect())
    }

    /// The queue `name` as the broker records it, or `None` when it does not exist.
    ///
    /// # Errors
    /// [`ManagementError`] if the API is unreachable, refuses the credentials or answers oddly.
    pub async fn queue(&self, name: &str) -> Result<Option<ObjectRecord>, ManagementError> {
        let record: Option<ObjectRecord> =
            self.get("queues", &format!("/{}", encode(name))).await?;
        // A queue record's `type` is the queue type (classic, quorum), not an exchange type; the
        // queue type is in the arguments when it was declared.
        Ok(record.map(|r| ObjectRecord { kind: None, ..r }))
    }

    /// The exchange `name` as the broker records it, or `None` when it does not exist.
    ///
    /// # Errors
    /// [`ManagementError`] if the API is unreachable, refuses the credentials or answers oddly.
    pub async fn exchange(&self, name: &str) -> Result<Option<ObjectRecord>, ManagementError> {
        self.get("exchanges", &format!("/{}", encode(name))).await
    }

    /// Every queue of the vhost with its consumers and messages.
    ///
    /// # Errors
    /// [`ManagementError`] if the API is unreachable, refuses the credentials or answers oddly.
    pub async fn queues(&self) -> Result<Vec<QueueSummary>, ManagementError> {
        // Only the columns used: a vhost may hold many queues, each with a large stats record.
        self.list("queues", "?columns=name,consumers,messages")
            .await
    }

    /// The name of every exchange of the vhost (the default exchange `""` and `amq.*` included).
    ///
    /// # Errors
    /// [`ManagementError`] if the API is unreachable, refuses the credentials or answers oddly.
    pub async fn exchanges(&self) -> Result<Vec<String>, ManagementError> {
        let named: Vec<Named> = self.list("exchanges", "?columns=name").await?;
        Ok(named.into_iter().map(|n| n.name).collect())
    }
}

/// reqwest's message and the innermost cause (`Connection refused`, `timed out`): the message
/// alone ("error sending request for url") does not say what went wrong.
fn with_cause(e: &reqwest::Error) -> String {
    let mut innermost: &dyn std::error::Error = e;
    while let Some(next) = innermost.source() {
        innermost = next;
    }
    let (message, cause) = (e.to_string(), innermost.to_string());
    if message.contains(&cause) {
        message
    } else {
        format!("{message}: {cause}")
    }
}

/// Percent-encodes a vhost or object name for a path segment.
fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(json: serde_json::Value) -> ObjectRecord {
        serde_json::from_value(json).expect("record")
    }

    #[test]
    fn records_read_like_the_declared_settings() {
        let q = record(serde_json::json!({
            "name": "q", "durable": true, "auto_delete": false, "type": "classic",
            "arguments": {"x-max-priority": 3, "x-queue-type": "classic"}
        }));
        let q = ObjectRecord { kind: None, ..q };
        assert_eq!(
            q.to_string(),
            "x-max-priority=3, x-queue-type=\"classic\" (durable)"
        );
        let bare = record(serde_json::json!({"durable": false, "arguments": {}}));
        assert_eq!(bare.to_string(), "no arguments (not durable)");
        let x = record(serde_json::json!({
            "name": "x", "type": "topic", "durable": true, "auto_delete": true, "arguments": {}
        }));
        assert_eq!(x.to_string(), "type=topic, durable, auto-delete");
    }
}
