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

impl ManagementError {
    /// What went wrong (`cannot connect`, `HTTP 401 Unauthorized`, ...), without the base URL.
    pub fn reason(&self) -> &str {
        &self.reason
    }
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

/// One queue's statistics as the management API reports them (`GET /api/queues/{vhost}/{name}`):
/// message counts, rates and who consumes it.
///
/// Counts and rates are sampled every few seconds (`collect_statistics_interval`, 5 s by
/// default) and are absent until a new queue's first sample; the consumer list is read from
/// the broker's consumer table when asked, so it is current.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct QueueStats {
    /// Full name.
    pub name: String,
    /// Messages waiting to be delivered (`None` until the first sample).
    #[serde(default, deserialize_with = "lenient")]
    pub messages_ready: Option<u64>,
    /// Messages delivered and not yet acked or given back (`None` until the first sample).
    #[serde(default, deserialize_with = "lenient")]
    pub messages_unacknowledged: Option<u64>,
    /// Consumers subscribed, as sampled (`None` until the first sample).
    #[serde(default, deserialize_with = "lenient")]
    pub consumers: Option<u64>,
    /// Rates of messages in and out.
    #[serde(default, deserialize_with = "lenient")]
    pub message_stats: MessageStats,
    /// Every consumer of the queue, with its channel and, on a single-active-consumer queue,
    /// whether it is the active one.
    #[serde(default, deserialize_with = "lenient")]
    pub consumer_details: Vec<ConsumerDetail>,
    /// The active consumer's tag on a single-active-consumer queue (RabbitMQ 4.x's name).
    #[serde(default, deserialize_with = "lenient")]
    single_active_consumer_tag: Option<String>,
    /// The same on RabbitMQ 3.x.
    #[serde(default, deserialize_with = "lenient")]
    single_active_consumer_ctag: Option<String>,
    /// Every `x-` argument it was declared with.
    #[serde(default, deserialize_with = "lenient")]
    pub arguments: BTreeMap<String, serde_json::Value>,
}

impl QueueStats {
    /// The consumer count: the consumer list's length when the API gave one (current), else
    /// the sampled count.
    pub fn consumer_count(&self) -> u64 {
        if self.consumer_details.is_empty() {
            self.consumers.unwrap_or(0)
        } else {
            self.consumer_details.len() as u64
        }
    }

    /// Whether the queue was declared with `x-single-active-consumer = true`; `None` when the
    /// record does not say (no arguments reported).
    pub fn single_active_consumer(&self) -> Option<bool> {
        if self.arguments.is_empty() {
            return None;
        }
        Some(self.arguments.get("x-single-active-consumer") == Some(&serde_json::Value::Bool(true)))
    }

    /// The tag of the active consumer of a single-active-consumer queue, as the queue's own
    /// record names it (sampled: may lag behind [`QueueStats::active_consumer`]).
    pub fn single_active_consumer_tag(&self) -> Option<&str> {
        self.single_active_consumer_tag
            .as_deref()
            .or(self.single_active_consumer_ctag.as_deref())
            .filter(|t| !t.is_empty())
    }

    /// The consumer the broker marks active (`active: true`) on a single-active-consumer queue,
    /// else the one whose tag is [`QueueStats::single_active_consumer_tag`].
    pub fn active_consumer(&self) -> Option<&ConsumerDetail> {
        let tag = self.single_active_consumer_tag();
        self.consumer_details
            .iter()
            .find(|c| {
                c.active == Some(true) && c.activity_status.as_deref() == Some("single_active")
            })
            .or_else(|| {
                tag.and_then(|tag| self.consumer_details.iter().find(|c| c.consumer_tag == tag))
            })
    }
}

/// A queue's message rates (`message_stats`), in messages a second; `None` where the API gave
/// no rate (no activity sampled yet, or `rates_mode = none`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct MessageStats {
    /// Messages published into the queue.
    #[serde(default, deserialize_with = "lenient")]
    pub publish_details: RateDetails,
    /// Messages delivered to consumers or fetched with `basic.get`.
    #[serde(default, deserialize_with = "lenient")]
    pub deliver_get_details: RateDetails,
    /// Messages acknowledged.
    #[serde(default, deserialize_with = "lenient")]
    pub ack_details: RateDetails,
}

impl MessageStats {
    /// Publish rate, msg/s.
    pub fn publish_rate(&self) -> Option<f64> {
        self.publish_details.rate
    }

    /// Deliver (and get) rate, msg/s.
    pub fn deliver_rate(&self) -> Option<f64> {
        self.deliver_get_details.rate
    }

    /// Ack rate, msg/s.
    pub fn ack_rate(&self) -> Option<f64> {
        self.ack_details.rate
    }
}

/// One `*_details` object of `message_stats`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct RateDetails {
    /// Messages a second over the last sample interval.
    #[serde(default, deserialize_with = "lenient")]
    pub rate: Option<f64>,
}

/// One consumer of a queue (`consumer_details`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct ConsumerDetail {
    /// The consumer tag (`amq.ctag-...` when the client let the broker choose).
    #[serde(default, deserialize_with = "lenient")]
    pub consumer_tag: String,
    /// On a single-active-consumer queue, whether it is the active one (always true on others).
    #[serde(default, deserialize_with = "lenient")]
    pub active: Option<bool>,
    /// `single_active` or `waiting` on a single-active-consumer queue, `up` on others.
    #[serde(default, deserialize_with = "lenient")]
    pub activity_status: Option<String>,
    /// The channel it consumes on.
    #[serde(default, deserialize_with = "lenient")]
    pub channel_details: ChannelDetails,
}

/// Where a consumer's channel is: its connection and the client's address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ChannelDetails {
    /// The broker's name for the connection (`10.0.0.5:41420 -> 10.0.0.1:5672`).
    #[serde(default, deserialize_with = "lenient")]
    pub connection_name: Option<String>,
    /// The channel number on that connection.
    #[serde(default, deserialize_with = "lenient")]
    pub number: Option<u64>,
    /// The client's host.
    #[serde(default, deserialize_with = "lenient")]
    pub peer_host: Option<String>,
    /// The client's port.
    #[serde(default, deserialize_with = "lenient")]
    pub peer_port: Option<u64>,
    /// The node the connection is on.
    #[serde(default, deserialize_with = "lenient")]
    pub node: Option<String>,
}

impl ChannelDetails {
    /// `host:port` of the client, which tells one worker process from another.
    pub fn peer(&self) -> Option<String> {
        match (&self.peer_host, self.peer_port) {
            (Some(host), Some(port)) if host.contains(':') => Some(format!("[{host}]:{port}")),
            (Some(host), Some(port)) => Some(format!("{host}:{port}")),
            (Some(host), None) => Some(host.clone()),
            (None, _) => None,
        }
    }
}

/// A field of the API's answer read as `T`, or `T::default()` when it has another shape: the
/// API writes an absent object as `[]` (an empty Erlang list) and an unknown port as a string.
fn lenient<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: DeserializeOwned + Default,
{
    let value = serde_json::Value::deserialize(d)?;
    Ok(serde_json::from_value(value).unwrap_or_default())
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

    /// The queue `name`'s counts, rates and consumers, or `None` when it does not exist.
    ///
    /// # Errors
    /// [`ManagementError`] if the API is unreachable, refuses the credentials or answers oddly.
    pub async fn queue_stats(&self, name: &str) -> Result<Option<QueueStats>, ManagementError> {
        if let Some(reason) = &self.refused {
            return Err(self.err(reason));
        }
        let timeout = Duration::from_secs(10);
        let resp = self
            .client
            .get(format!(
                "{}/api/queues/{}/{}",
                self.base,
                encode(&self.vhost),
                encode(name)
            ))
            .query(&[(
                "columns",
                "name,messages_ready,messages_unacknowledged,consumers,message_stats,\
                 consumer_details,single_active_consumer_tag,single_active_consumer_ctag,arguments",
            )])
            .timeout(timeout)
            .basic_auth(&self.user, Some(&self.password))
            .send()
            .await
            .map_err(|e| {
                // The request's URL is noise here: the base is already in the message.
                if e.is_timeout() {
                    self.err(format!("no answer within {}s", timeout.as_secs()))
                } else if e.is_connect() {
                    self.err(format!("cannot connect ({})", innermost_cause(&e)))
                } else {
                    self.err(with_cause(&e.without_url()))
                }
            })?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(self.err(format!("HTTP {}", resp.status())));
        }
        resp.json()
            .await
            .map(Some)
            .map_err(|e| self.err(with_cause(&e.without_url())))
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

/// The innermost cause of `e` (`Connection refused (os error 111)`).
fn innermost_cause(e: &reqwest::Error) -> String {
    let mut innermost: &dyn std::error::Error = e;
    while let Some(next) = innermost.source() {
        innermost = next;
    }
    innermost.to_string()
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
    fn queue_stats_read_both_versions_and_tolerate_odd_shapes() {
        // RabbitMQ 3.x names the active consumer's tag `single_active_consumer_ctag`, 4.x
        // `single_active_consumer_tag`; absent objects come as `[]`.
        let v3: QueueStats = serde_json::from_value(serde_json::json!({
            "name": "q", "messages_ready": 4, "consumers": 1,
            "single_active_consumer_ctag": "ctag-3",
            "message_stats": {"publish_details": {"rate": 2.5}, "ack_details": []},
            "consumer_details": [{"consumer_tag": "ctag-3", "active": true,
                "activity_status": "single_active",
                "channel_details": {"peer_host": "::1", "peer_port": 5000, "number": 2}}],
            "arguments": {"x-single-active-consumer": true}
        }))
        .expect("3.x record");
        assert_eq!(v3.single_active_consumer_tag(), Some("ctag-3"));
        assert_eq!(v3.single_active_consumer(), Some(true));
        assert_eq!(v3.message_stats.publish_rate(), Some(2.5));
        assert_eq!(v3.message_stats.ack_rate(), None);
        assert_eq!(v3.message_stats.deliver_rate(), None);
        assert_eq!(v3.messages_unacknowledged, None);
        let active = v3.active_consumer().expect("active");
        assert_eq!(active.channel_details.peer().as_deref(), Some("[::1]:5000"));
        let v4: QueueStats = serde_json::from_value(serde_json::json!({
            "name": "q", "single_active_consumer_tag": "ctag-4", "consumer_details": [],
            "message_stats": [], "arguments": []
        }))
        .expect("4.x record");
        assert_eq!(v4.single_active_consumer_tag(), Some("ctag-4"));
        assert_eq!(v4.single_active_consumer(), None);
        assert_eq!(v4.consumer_count(), 0);
        assert_eq!(v4.message_stats, MessageStats::default());
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
