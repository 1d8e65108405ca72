//! The broker's own view of the objects under test: depths over AMQP (through the library's
//! broker module), queue records, bindings and connections over the management API.

use crate::{management_url, parsed_url};
use courier::broker::Admin;
use std::time::{Duration, Instant};

/// Messages ready in `queue` (panics if it does not exist).
pub async fn depth(queue: &str) -> u32 {
    let admin = Admin::connect(&parsed_url(), "test depth")
        .await
        .expect("connect");
    let state = admin.queue_state(queue).await.expect("broker answers");
    admin.close().await;
    state
        .unwrap_or_else(|| panic!("queue {queue} exists"))
        .ready
}

/// Waits until `queue` holds at least `n` ready messages, or panics after `timeout`.
pub async fn wait_depth(queue: &str, n: u32, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let d = depth(queue).await;
        if d >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{queue}: {d} messages, expected {n}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Percent-encodes a name for a management API path.
pub fn percent_encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).collect()
}

/// The broker's own record of a queue (management API), or None if it does not exist.
pub async fn broker_queue(name: &str) -> Option<serde_json::Value> {
    let url = format!(
        "{}/api/queues/%2F/{}",
        management_url(),
        percent_encode(name)
    );
    let resp = reqwest::Client::new()
        .get(url)
        .basic_auth("guest", Some("guest"))
        .send()
        .await
        .expect(
            "management API answers (is rabbitmq_management enabled? scripts/rabbitmq-up does it)",
        );
    if resp.status() == reqwest::StatusCode::NOT_FOUND {
        return None;
    }
    assert!(
        resp.status().is_success(),
        "management API: {}",
        resp.status()
    );
    Some(resp.json().await.expect("queue JSON"))
}

/// All bindings of the default vhost, as (source, destination, routing key).
pub async fn broker_bindings() -> Vec<(String, String, String)> {
    let v: serde_json::Value = reqwest::Client::new()
        .get(format!("{}/api/bindings/%2F", management_url()))
        .basic_auth("guest", Some("guest"))
        .send()
        .await
        .expect("management API answers")
        .json()
        .await
        .expect("bindings JSON");
    v.as_array()
        .expect("array")
        .iter()
        .map(|b| {
            (
                b["source"].as_str().unwrap_or_default().to_owned(),
                b["destination"].as_str().unwrap_or_default().to_owned(),
                b["routing_key"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// Closes every connection whose name contains `needle` (management API); returns how many.
/// Only our own, uniquely named connections are ever matched.
pub async fn close_connections(needle: &str) -> usize {
    let client = reqwest::Client::new();
    let list: serde_json::Value = client
        .get(format!("{}/api/connections", management_url()))
        .basic_auth("guest", Some("guest"))
        .send()
        .await
        .expect("management API answers")
        .json()
        .await
        .expect("connections JSON");
    let mut closed = 0;
    for c in list.as_array().cloned().unwrap_or_default() {
        let user_name = c["client_properties"]["connection_name"]
            .as_str()
            .unwrap_or_default();
        if !user_name.contains(needle) {
            continue;
        }
        let name = c["name"].as_str().unwrap_or_default();
        let r = client
            .delete(format!(
                "{}/api/connections/{}",
                management_url(),
                percent_encode(name)
            ))
            .basic_auth("guest", Some("guest"))
            .send()
            .await
            .expect("close connection");
        if r.status().is_success() {
            closed += 1;
        }
    }
    closed
}
