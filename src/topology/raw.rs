//! The file format exactly as serde reads it: every key optional where the file may omit it,
//! unknown keys refused. [`super::validate`] turns it into the model.

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTopology {
    #[serde(default)]
    pub(super) exchanges: Vec<RawExchange>,
    #[serde(default)]
    pub(super) queues: Vec<RawQueue>,
    pub(super) retry: Option<RawRetry>,
    pub(super) dead_letter: Option<RawDeadLetter>,
    #[serde(default)]
    pub(super) queue_defaults: RawQueueDefaults,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawExchange {
    pub(super) name: String,
    #[serde(rename = "type", default = "default_exchange_type")]
    pub(super) kind: String,
}

fn default_exchange_type() -> String {
    "direct".to_owned()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawQueueDefaults {
    #[serde(rename = "type")]
    pub(super) queue_type: Option<String>,
    pub(super) max_priority: Option<i64>,
    pub(super) delivery_limit: Option<i64>,
    pub(super) replicas: Option<i64>,
    pub(super) dead_letter_strategy: Option<String>,
    pub(super) urgent_from: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawQueue {
    pub(super) name: String,
    #[serde(default)]
    pub(super) bindings: Vec<RawBinding>,
    #[serde(rename = "type")]
    pub(super) queue_type: Option<String>,
    pub(super) max_priority: Option<i64>,
    pub(super) delivery_limit: Option<i64>,
    pub(super) replicas: Option<i64>,
    pub(super) dead_letter_strategy: Option<String>,
    pub(super) urgent_from: Option<i64>,
    pub(super) shards: Option<RawShards>,
    pub(super) ordered: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawShards {
    pub(super) count: i64,
    pub(super) key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBinding {
    pub(super) exchange: String,
    pub(super) routing_key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRetry {
    #[serde(default)]
    pub(super) tiers: Vec<String>,
    pub(super) max_attempts: Option<i64>,
    #[serde(default)]
    pub(super) disabled: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDeadLetter {
    pub(super) exchange: String,
    pub(super) queue: String,
    #[serde(rename = "type")]
    pub(super) queue_type: Option<String>,
    pub(super) max_length: Option<i64>,
    pub(super) overflow: Option<String>,
    pub(super) replicas: Option<i64>,
}
