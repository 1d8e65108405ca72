//! `/metrics`, `/healthz` and `/readyz` of the real `courier work` binary: served from the start
//! with every family and label set at 0, counting what happens, JSON logs.

use crate::lifecycle::{signal, take_stderr, wait_exit};
use crate::util::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn metrics_health_and_readiness_are_served() {
    let t = TestTopology::fast("metrics").await;
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_courier"))
        .args([
            "--log-format",
            "json",
            "work",
            "--queue",
            "notifications.email",
            "--handler",
            "noop",
            "--metrics-addr",
            &addr,
        ])
        .env("AMQP_URL", amqp_url())
        .env("COURIER_PREFIX", &t.prefix)
        .env("COURIER_TOPOLOGY", &t.file)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn_within(CHILD_DEADLINE);
    let client = reqwest::Client::new();
    let get = |path: &str| client.get(format!("http://{addr}{path}")).send();
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(r) = get("/readyz").await {
            if r.status() == 200 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(get("/healthz").await.expect("healthz").status(), 200);
    let p = publisher().await;
    publish_jobs(&p, &t.exchange(), "email", "m", 25).await;
    let queue = t.name("notifications.email");
    let want = format!("courier_messages_total{{outcome=\"delivered\",queue=\"{queue}\"}} 25");
    let deadline = Instant::now() + WAIT;
    let text = loop {
        let text = get("/metrics")
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        if text.contains(&want) {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "metrics never showed {want}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for name in [
        "courier_handler_duration_seconds_bucket",
        "courier_in_flight",
        "courier_ready 1",
        "courier_connection_blocked 0",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
    signal(&child, "-TERM");
    let status = wait_exit(&mut child, Duration::from_secs(15)).await;
    assert!(status.success());
    let stderr = take_stderr(&mut child);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    for l in lines {
        serde_json::from_str::<serde_json::Value>(l)
            .unwrap_or_else(|e| panic!("--log-format json line is not JSON ({e}): {l}"));
    }
}

/// `courier work --handler noop` on `prefix` and topology `file`, serving /metrics on `addr`.
fn spawn_noop_worker_with_metrics(
    prefix: &str,
    file: &std::path::Path,
    addr: &str,
) -> DeadlineChild {
    Command::new(env!("CARGO_BIN_EXE_courier"))
        .args([
            "work",
            "--queue",
            "notifications.email",
            "--handler",
            "noop",
            "--metrics-addr",
            addr,
        ])
        .env("AMQP_URL", amqp_url())
        .env("COURIER_PREFIX", prefix)
        .env("COURIER_TOPOLOGY", file)
        .env("RUST_LOG", "warn")
        .stderr(Stdio::null())
        .stdout(Stdio::null())
        .spawn_within(CHILD_DEADLINE)
}

/// The first `/metrics` page the worker at `addr` serves.
async fn first_metrics(addr: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(r) = reqwest::get(format!("http://{addr}/metrics")).await {
            if let Ok(text) = r.text().await {
                return text;
            }
        }
        assert!(Instant::now() < deadline, "/metrics never answered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every series a worker on `queue` (fast.toml: tiers 100ms and 400ms) serves before its first
/// message, at 0. Written out rather than taken from the library, so a label value renamed in
/// the code (and so in dashboards and alerts) fails here.
fn series_at_zero(queue: &str) -> Vec<String> {
    let q = format!("queue=\"{queue}\"");
    let mut want = Vec::new();
    for outcome in [
        "ack-lost",
        "dead-lettered",
        "delivered",
        "redelivery-counted",
        "requeued",
        "retried",
    ] {
        want.push(format!(
            "courier_messages_total{{outcome=\"{outcome}\",{q}}} 0"
        ));
    }
    want.push(format!("courier_handler_duration_seconds_count{{{q}}} 0"));
    want.push(format!("courier_in_flight{{{q}}} 0"));
    for tier in ["100ms", "400ms"] {
        want.push(format!("courier_retries_total{{{q},tier=\"{tier}\"}} 0"));
    }
    for reason in ["crash-loop", "malformed", "max-attempts", "permanent"] {
        want.push(format!(
            "courier_dead_letters_total{{{q},reason=\"{reason}\"}} 0"
        ));
    }
    want.push(format!("courier_consumer_cancels_total{{{q}}} 0"));
    want.push("courier_reconnects_total{connection=\"publisher\"} 0".to_owned());
    want.push("courier_publish_confirm_seconds_count{connection=\"publisher\"} 0".to_owned());
    for kind in [
        "channel",
        "connect",
        "nack",
        "no-exchange",
        "returned",
        "timeout",
    ] {
        want.push(format!(
            "courier_publish_failures_total{{kind=\"{kind}\"}} 0"
        ));
    }
    want.push("courier_connection_blocked 0".to_owned());
    want
}

fn assert_series(text: &str, want: &[String]) {
    let lines: std::collections::HashSet<&str> = text.lines().collect();
    let missing: Vec<&String> = want
        .iter()
        .filter(|w| !lines.contains(w.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "missing from /metrics: {missing:#?}\n{text}"
    );
}

#[tokio::test]
async fn every_metric_family_is_served_at_zero_before_the_first_message() {
    let t = TestTopology::fast("metrics-zero").await;
    let addr = free_addr();
    let mut child = spawn_noop_worker_with_metrics(&t.prefix, &t.file, &addr);
    let text = first_metrics(&addr).await;
    let mut want = series_at_zero(&t.name("notifications.email"));
    want.push("courier_reconnects_total{connection=\"consumer\"} 0".to_owned());
    assert_series(&text, &want);
    assert!(
        text.contains("courier_ready "),
        "courier_ready missing:\n{text}"
    );
    signal(&child, "-TERM");
    assert!(wait_exit(&mut child, Duration::from_secs(15))
        .await
        .success());
}

#[tokio::test]
async fn a_worker_waiting_for_its_queue_serves_every_family_and_counts_its_retries() {
    // Nothing is declared under this prefix: subscribing fails with 404 until someone applies
    // the topology.
    let prefix = unique_prefix("metrics-noqueue");
    let file = repo_path("tests/fixtures/fast.toml");
    let addr = free_addr();
    let mut child = spawn_noop_worker_with_metrics(&prefix, &file, &addr);
    let want = series_at_zero(&format!("{prefix}notifications.email"));
    let deadline = Instant::now() + WAIT;
    let text = loop {
        let text = first_metrics(&addr).await;
        assert_series(&text, &want);
        assert!(
            text.contains("courier_ready 0"),
            "ready without a queue:\n{text}"
        );
        let retries = text
            .lines()
            .find_map(|l| l.strip_prefix("courier_reconnects_total{connection=\"consumer\"} "))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        if retries >= 2 {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "subscribe retries not counted as reconnects:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let readyz = reqwest::get(format!("http://{addr}/readyz"))
        .await
        .expect("readyz");
    assert_eq!(readyz.status(), 503, "{text}");
    signal(&child, "-TERM");
    assert!(wait_exit(&mut child, Duration::from_secs(15))
        .await
        .success());
}

#[tokio::test]
async fn a_ready_worker_names_its_broker_node_in_metrics_and_readyz() {
    let t = TestTopology::fast("metrics-node").await;
    let addr = free_addr();
    let mut child = spawn_noop_worker_with_metrics(&t.prefix, &t.file, &addr);
    let node = parsed_url().nodes_in_turn()[0].0.address.clone();
    let series = format!("courier_broker_node{{connection=\"consumer\",node=\"{node}\"}} 1");
    let deadline = Instant::now() + WAIT;
    loop {
        let text = first_metrics(&addr).await;
        // A line of its own: the HELP text says "courier_ready 1 while ...".
        if text.lines().any(|l| l == "courier_ready 1") {
            assert!(
                text.lines().any(|l| l == series),
                "{series} missing:\n{text}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "never ready:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let body = reqwest::get(format!("http://{addr}/readyz"))
        .await
        .expect("readyz answers")
        .text()
        .await
        .expect("readyz body");
    assert_eq!(body.trim(), format!("ready: consuming on {node}"));
    signal(&child, "-TERM");
    assert!(wait_exit(&mut child, Duration::from_secs(15))
        .await
        .success());
}
