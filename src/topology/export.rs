//! Exports of a topology: RabbitMQ `definitions.json` and a Mermaid diagram.

use super::{tier_label, ArgValue, QueueRole, Topology};
use serde_json::{json, Map, Value};

/// A `definitions.json` importable by the management plugin (`rabbitmqadmin import`, the UI,
/// or `load_definitions`), for the given vhost.
pub fn definitions_json(topology: &Topology, vhost: &str) -> Value {
    let exchanges: Vec<Value> = topology
        .exchanges
        .iter()
        .map(|e| {
            json!({
                "name": e.name, "vhost": vhost, "type": e.kind.as_str(),
                "durable": true, "auto_delete": false, "internal": false,
                "arguments": json_args(&e.arguments)
            })
        })
        .collect();
    let queues: Vec<Value> = topology
        .queues
        .iter()
        .map(|q| {
            json!({
                "name": q.name, "vhost": vhost, "durable": true, "auto_delete": false,
                "arguments": json_args(&q.arguments)
            })
        })
        .collect();
    let bindings: Vec<Value> = topology
        .bindings
        .iter()
        .map(|b| {
            json!({
                "source": b.exchange, "vhost": vhost, "destination": b.queue,
                "destination_type": if b.to_exchange { "exchange" } else { "queue" },
                "routing_key": b.routing_key, "arguments": {}
            })
        })
        .collect();
    json!({
        "vhosts": [{ "name": vhost }],
        "exchanges": exchanges,
        "queues": queues,
        "bindings": bindings,
    })
}

fn json_args(args: &std::collections::BTreeMap<String, ArgValue>) -> Map<String, Value> {
    args.iter().map(|(k, v)| (k.clone(), v.to_json())).collect()
}

fn node_id(prefix: &str, name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("{prefix}_{clean}")
}

/// A Mermaid flowchart: exchanges, queues, bindings, retry tiers and dead-letter paths.
pub fn mermaid(topology: &Topology) -> String {
    let mut out = String::from("flowchart LR\n");
    for e in &topology.exchanges {
        out.push_str(&format!(
            "  {}{{{{\"{} ({})\"}}}}\n",
            node_id("x", &e.name),
            e.name,
            e.kind.as_str()
        ));
    }
    for q in &topology.queues {
        let label = match &q.role {
            QueueRole::Work => {
                let prio = topology
                    .work_queue(&q.name)
                    .and_then(|w| w.max_priority)
                    .map(|p| format!("<br/>priority 0-{p}"))
                    .unwrap_or_default();
                format!("{}<br/>{}{prio}", q.name, q.queue_type.as_str())
            }
            QueueRole::Retry { delay, .. } => {
                format!("{}<br/>TTL {}", q.name, tier_label(*delay))
            }
            QueueRole::DeadLetter => format!("{}<br/>dead letters", q.name),
            QueueRole::Members => format!("{}<br/>workers of an ordered channel", q.name),
        };
        out.push_str(&format!("  {}[(\"{label}\")]\n", node_id("q", &q.name)));
    }
    for b in &topology.bindings {
        let key = if b.routing_key.is_empty() {
            "all".to_owned()
        } else {
            b.routing_key.clone()
        };
        out.push_str(&format!(
            "  {} -- \"{key}\" --> {}\n",
            node_id("x", &b.exchange),
            node_id(if b.to_exchange { "x" } else { "q" }, &b.queue)
        ));
    }
    for q in &topology.queues {
        if let QueueRole::Retry { work_queue, delay } = &q.role {
            // A sharded channel's tiers return to its shard exchange, and are fed by every shard.
            let sharding = topology
                .work_queues
                .iter()
                .find_map(|w| w.sharding.as_ref().filter(|s| &s.exchange == work_queue));
            let from: Vec<&String> = match sharding {
                Some(s) => s.queues.iter().collect(),
                None => vec![work_queue],
            };
            for f in from {
                out.push_str(&format!(
                    "  {} -. \"failed: retry\" .-> {}\n",
                    node_id("q", f),
                    node_id("q", &q.name)
                ));
            }
            out.push_str(&format!(
                "  {} -. \"after {}\" .-> {}\n",
                node_id("q", &q.name),
                tier_label(*delay),
                node_id(if sharding.is_some() { "x" } else { "q" }, work_queue)
            ));
        }
    }
    for w in &topology.work_queues {
        let consumed: Vec<&String> = match &w.sharding {
            Some(s) => s.queues.iter().collect(),
            None => vec![&w.name],
        };
        for q in consumed {
            out.push_str(&format!(
                "  {} -. \"dead-letter\" .-> {}\n",
                node_id("q", q),
                node_id("x", &topology.dead_letter_exchange)
            ));
        }
    }
    out
}
