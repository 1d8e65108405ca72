//! Keyed messages and the per-key order check, shared by the ordered-shard cases of the
//! integration and cluster suites.

use crate::util::{delivered_in_order, Received, Sink};
use courier::publisher::Outgoing;
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Message `seq` of key `key`: id `k<key>-<seq>`, header `x-courier-key = k<key>`.
pub fn keyed(exchange: &str, key: usize, seq: usize) -> Outgoing {
    let mut headers = FieldTable::default();
    headers.insert(
        "x-courier-key".into(),
        AMQPValue::LongString(format!("k{key}").into()),
    );
    Outgoing {
        exchange: exchange.to_owned(),
        routing_key: "email".to_owned(),
        properties: BasicProperties::default()
            .with_message_id(format!("k{key}-{seq}").into())
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_headers(headers),
        body: format!(r#"{{"key":{key},"seq":{seq}}}"#).into_bytes(),
    }
}

/// `(key, seq)` of a [`keyed`] id.
pub fn key_seq(id: &str) -> Option<(usize, usize)> {
    let (k, s) = id.strip_prefix('k')?.split_once('-')?;
    Some((k.parse().ok()?, s.parse().ok()?))
}

/// Publishes `seqs` messages for each of `keys` keys, a key's messages in sequence (keys
/// interleave); returns the ids, every one confirmed.
pub async fn publish_keyed(
    p: &courier::publisher::Publisher,
    exchange: &str,
    keys: usize,
    seqs: usize,
) -> Vec<String> {
    let mut ids = Vec::new();
    for seq in 0..seqs {
        let round = futures_util::future::join_all(
            (0..keys).map(|key| p.publish(keyed(exchange, key, seq))),
        )
        .await;
        assert!(round.iter().all(Result::is_ok), "publish confirmed");
        ids.extend((0..keys).map(|key| format!("k{key}-{seq}")));
    }
    ids
}

/// Per key, in the order requests reached the sink, each 2xx answer is the next sequence
/// number, a repeat (a duplicate after a crash: allowed) or a jump ahead (a reordering).
/// Returns the keys that jumped, as `key: (expected, got)`, and how far each key got.
pub fn order_violations(sink: &Sink, keys: usize) -> (BTreeMap<usize, (usize, usize)>, Vec<usize>) {
    let ok = delivered_in_order(sink);
    let mut next = vec![0usize; keys];
    let mut reordered = BTreeMap::new();
    for r in &ok {
        let Some((k, s)) = key_seq(&r.message_id) else {
            continue;
        };
        let Some(n) = next.get_mut(k) else {
            continue;
        };
        if s == *n {
            *n += 1;
        } else if s > *n {
            reordered.entry(k).or_insert((*n, s));
        }
    }
    (reordered, next)
}

/// Messages a worker delivered, from its /metrics at `addr`.
pub async fn delivered_by(addr: &str) -> u64 {
    let Ok(r) = reqwest::get(format!("http://{addr}/metrics")).await else {
        return 0;
    };
    let text = r.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("courier_messages_total{") && l.contains("outcome=\"delivered\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Waits until every worker (by its /metrics address) has delivered something: the shards
/// were shared out. Panics with the counts after `timeout`.
pub async fn wait_shared_out(addrs: &[&str], timeout: std::time::Duration) {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let mut counts = Vec::new();
        for a in addrs {
            counts.push(delivered_by(a).await);
        }
        if counts.iter().all(|c| *c > 0) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the shards were not shared out: deliveries per worker {counts:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// An endpoint answering in 2 ms that fails every 23rd message of each key on its first
/// attempt (503): an ordered shard retries it in place, holding the key's later messages.
pub async fn transient_sink() -> Sink {
    Sink::start(
        Arc::new(|r: &Received| {
            let transient = key_seq(&r.message_id).is_some_and(|(_, s)| s % 23 == 5);
            if transient && r.attempt == 1 {
                (503, vec![])
            } else {
                (200, vec![])
            }
        }),
        Duration::from_millis(2),
    )
    .await
}
