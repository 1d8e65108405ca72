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
                "durable": true, "auto_delete": false, "internal": false, "arguments": {}
            })
        })
        .collect();
    let queues: Vec<Value> = topology
        .queues
        .iter()
        .map(|q| {
            let args: Map<String, Value> = q
                .arguments
                .iter()
                .map(|(k, v)| {
                    let v = match v {
                        ArgValue::Int(i) => json!(i),
                        ArgValue::Str(s) => json!(s),
                    };
                    (k.clone(), v)
                })
                .collect();
            json!({
                "name": q.name, "vhost": vhost, "durable": true, "auto_delete": false,
                "arguments": args
            })
        })
        .collect();
    let bindings: Vec<Value> = topology
        .bindings
        .iter()
        .map(|b| {
            json!({
                "source": b.exchange, "vhost": vhost, "destination": b.queue,
                "destination_type": "queue", "routing_key": b.routing_key, "arguments": {}
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
            node_id("q", &b.queue)
        ));
    }
    for q in &topology.queues {
        if let QueueRole::Retry { work_queue, delay } = &q.role {
            out.push_str(&format!(
                "  {} -. \"failed: retry\" .-> {}\n",
                node_id("q", work_queue),
                node_id("q", &q.name)
            ));
            out.push_str(&format!(
                "  {} -. \"after {}\" .-> {}\n",
                node_id("q", &q.name),
                tier_label(*delay),
                node_id("q", work_queue)
            ));
        }
    }
    for w in &topology.work_queues {
        out.push_str(&format!(
            "  {} -. \"dead-letter\" .-> {}\n",
            node_id("q", &w.name),
            node_id("x", &topology.dead_letter_exchange)
        ));
    }
    out
}
