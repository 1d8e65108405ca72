//! The fault suite: real worker processes, a real broker, injected faults, and a count of
//! what was lost (must be 0) and duplicated. These tests disturb the whole broker (restarts,
//! alarms, closing every connection), so they run in their own target, one at a time:
//! `cargo test --test faults -- --test-threads=1` (scripts/test does this after the rest).
//! Each case appends a row to target/tmp/reliability.jsonl; docs/reliability.md shows a run.

// Shared with the integration tests; this binary uses only part of it.
#[allow(unused_imports)]
#[path = "../integration/util.rs"]
mod util;

mod harness;

use courier::envelope;
use courier_testkit::sink::Script;
use harness::*;
use std::sync::Arc;
use std::time::{Duration, Instant};
use util::*;

const LONG: Duration = Duration::from_secs(90);

/// Reconciles `seen` against the `ids` sent and records the row; returns (lost, duplicated).
fn report(
    fault: &str,
    injection: &str,
    ids: &[String],
    seen: &[String],
    recovery: Duration,
) -> (usize, usize) {
    let (lost, duplicated) = reconcile(ids, seen);
    record(Row {
        fault: fault.to_owned(),
        injection: injection.to_owned(),
        sent: ids.len(),
        lost,
        duplicated,
        recovery_secs: recovery.as_secs_f64(),
    });
    (lost, duplicated)
}

fn slow_sink_ok(delay_ms: u64) -> (Script, Duration) {
    (Arc::new(|_| (200, vec![])), Duration::from_millis(delay_ms))
}

async fn sink(delay_ms: u64) -> Sink {
    let (s, d) = slow_sink_ok(delay_ms);
    Sink::start(s, d).await
}

#[tokio::test]
async fn kill_9_one_of_three_workers_mid_batch() {
    let t = TestTopology::fast("f.kill1").await;
    let sink = sink(20).await;
    let url = amqp_url();
    let args = ["--concurrency", "10", "--prefetch", "20"];
    let mut workers: Vec<WorkerProc> = (0..3)
        .map(|_| WorkerProc::spawn(&t, &url, &sink.url, &args))
        .collect();
    let p = publisher().await;
    let ids = publish_jobs(&p, &t.exchange(), "email", "k1", 900).await;
    sink.wait_for(LONG, "progress", |r| r.len() >= 150).await;
    let cut = Instant::now();
    workers[0].kill9();
    let recovery = settle(&sink, &ids, LONG).await;
    let (lost, dup) = report(
        "kill -9 of one of three workers",
        "SIGKILL mid-batch (handler 20 ms, 10 in flight each)",
        &ids,
        &delivered_ids(&sink),
        recovery,
    );
    assert_eq!(lost, 0);
    assert!(
        dup <= 20,
        "at most the killed worker's prefetch is redelivered: {dup}"
    );
    let _ = cut;
    for w in workers.iter_mut().skip(1) {
        assert!(w.term().await.success());
    }
}

#[tokio::test]
async fn kill_9_of_every_worker_then_restart() {
    let t = TestTopology::fast("f.killall").await;
    let sink = sink(20).await;
    let url = amqp_url();
    let args = ["--concurrency", "10", "--prefetch", "20"];
    let mut workers: Vec<WorkerProc> = (0..3)
        .map(|_| WorkerProc::spawn(&t, &url, &sink.url, &args))
        .collect();
    let p = publisher().await;
    let ids = publish_jobs(&p, &t.exchange(), "email", "ka", 600).await;
    sink.wait_for(LONG, "progress", |r| r.len() >= 100).await;
    for w in &mut workers {
        w.kill9();
    }
    let restarted = Instant::now();
    let mut fresh = WorkerProc::spawn(&t, &url, &sink.url, &args);
    settle(&sink, &ids, LONG).await;
    let (lost, dup) = report(
        "kill -9 of every worker",
        "SIGKILL of 3 workers mid-batch, one restarted",
        &ids,
        &delivered_ids(&sink),
        restarted.elapsed(),
    );
    assert_eq!(lost, 0);
    assert!(dup <= 60, "at most 3 prefetch windows: {dup}");
    assert!(fresh.term().await.success());
    // Redelivered messages were counted, not mistaken for poison.
    assert_eq!(depth(&t.dlq()).await, 0);
}

#[tokio::test]
async fn sigterm_under_load_loses_and_duplicates_nothing() {
    let t = TestTopology::fast("f.term").await;
    let sink = sink(20).await;
    let url = amqp_url();
    let args = ["--concurrency", "10", "--prefetch", "40"];
    let mut a = WorkerProc::spawn(&t, &url, &sink.url, &args);
    let p = publisher().await;
    let ids = publish_jobs(&p, &t.exchange(), "email", "st", 500).await;
    sink.wait_for(LONG, "progress", |r| r.len() >= 100).await;
    let status = a.term().await;
    assert!(status.success(), "exit {status:?}: {}", a.logs());
    let started = Instant::now();
    let mut b = WorkerProc::spawn(&t, &url, &sink.url, &args);
    settle(&sink, &ids, LONG).await;
    let (lost, dup) = report(
        "SIGTERM of a worker under load",
        "graceful stop mid-batch, second worker finishes",
        &ids,
        &delivered_ids(&sink),
        started.elapsed(),
    );
    assert_eq!((lost, dup), (0, 0));
    assert!(b.term().await.success());
}

#[tokio::test]
async fn close_all_connections_three_times_under_load() {
    let t = TestTopology::fast("f.closeall").await;
    let sink = sink(5).await;
    let url = amqp_url();
    let args = ["--concurrency", "10", "--prefetch", "20"];
    let mut workers: Vec<WorkerProc> = (0..2)
        .map(|_| WorkerProc::spawn(&t, &url, &sink.url, &args))
        .collect();
    let p = publisher().await;
    let ids = publish_jobs(&p, &t.exchange(), "email", "ca", 1500).await;
    for round in 1..=3 {
        sink.wait_for(LONG, "progress", |r| r.len() >= round * 250)
            .await;
        rabbitmqctl(&["close_all_connections", "fault test"]);
    }
    let recovery = settle(&sink, &ids, LONG).await;
    let (lost, _) = report(
        "all connections closed by the broker, 3 times",
        "rabbitmqctl close_all_connections under load",
        &ids,
        &delivered_ids(&sink),
        recovery,
    );
    assert_eq!(lost, 0);
    for w in &mut workers {
        assert!(
            w.alive(),
            "a worker died instead of reconnecting: {}",
            w.logs()
        );
        assert!(w.term().await.success());
    }
}

#[tokio::test]
async fn broker_restart_under_load_for_workers_and_a_file_publisher() {
    let t = TestTopology::fast("f.restart").await;
    let sink = sink(5).await;
    let url = amqp_url();
    let mut w = WorkerProc::spawn(
        &t,
        &url,
        &sink.url,
        &["--concurrency", "10", "--prefetch", "20"],
    );
    let file = std::env::temp_dir().join(format!("{}jobs.jsonl", t.prefix));
    let n = 4000;
    let ids: Vec<String> = (0..n).map(|i| format!("rs-{i}")).collect();
    let text: String = ids
        .iter()
        .map(|id| format!("{{\"routing_key\":\"email\",\"message_id\":\"{id}\",\"body\":{{\"to\":\"{id}\"}}}}\n"))
        .collect();
    std::fs::write(&file, text).expect("write");
    let publish = std::process::Command::new(env!("CARGO_BIN_EXE_courier"))
        .args(["publish", "--window", "64", "--retry-for", "120s", "--file"])
        .arg(&file)
        .env("AMQP_URL", &url)
        .env("COURIER_PREFIX", &t.prefix)
        .env("COURIER_TOPOLOGY", &t.file)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("publish starts");
    sink.wait_for(LONG, "progress", |r| r.len() >= 300).await;
    rabbitmqctl(&["stop_app"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    rabbitmqctl(&["start_app"]);
    let back = Instant::now();
    wait_broker(LONG).await;
    let out = tokio::task::spawn_blocking(move || publish.wait_with_output())
        .await
        .expect("join")
        .expect("publish output");
    assert!(
        out.status.success(),
        "courier publish did not survive the restart: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    settle(&sink, &ids, LONG).await;
    let (lost, _) = report(
        "broker restart (workers + `courier publish --file`)",
        "rabbitmqctl stop_app; 2 s; start_app, mid-publish and mid-delivery",
        &ids,
        &delivered_ids(&sink),
        back.elapsed(),
    );
    assert_eq!(lost, 0);
    assert!(w.alive(), "{}", w.logs());
    assert!(w.term().await.success());
}

#[tokio::test]
async fn frozen_network_is_detected_by_heartbeats() {
    let t = TestTopology::fast("f.freeze").await;
    let sink = sink(5).await;
    let proxy = Proxy::start("127.0.0.1:5672").await;
    let url = proxy.url("?heartbeat=2");
    let mut w = WorkerProc::spawn(
        &t,
        &url,
        &sink.url,
        &["--concurrency", "10", "--prefetch", "20"],
    );
    let p = publisher().await;
    let ids = publish_jobs(&p, &t.exchange(), "email", "fz", 600).await;
    sink.wait_for(LONG, "progress", |r| r.len() >= 100).await;
    proxy.freeze_existing();
    let frozen = Instant::now();
    let recovery = settle(&sink, &ids, LONG).await;
    let (lost, _) = report(
        "network frozen (no FIN/RST)",
        "TCP proxy stops forwarding on open connections; heartbeat 2 s",
        &ids,
        &delivered_ids(&sink),
        recovery,
    );
    let _ = frozen;
    assert_eq!(lost, 0);
    assert!(w.logs().contains("lost the consumer"), "{}", w.logs());
    assert!(w.term().await.success());
}

#[tokio::test]
async fn connection_reset_mid_publish_is_republished() {
    let t = TestTopology::fast("f.reset").await;
    let proxy = Proxy::start("127.0.0.1:5672").await;
    let url = proxy.url("");
    let file = std::env::temp_dir().join(format!("{}jobs.jsonl", t.prefix));
    let n = 6000;
    let ids: Vec<String> = (0..n).map(|i| format!("rst-{i}")).collect();
    let text: String = ids
        .iter()
        .map(|id| format!("{{\"routing_key\":\"email\",\"message_id\":\"{id}\",\"body\":{{}}}}\n"))
        .collect();
    std::fs::write(&file, text).expect("write");
    let publish = std::process::Command::new(env!("CARGO_BIN_EXE_courier"))
        .args(["publish", "--window", "128", "--file"])
        .arg(&file)
        .env("AMQP_URL", &url)
        .env("COURIER_PREFIX", &t.prefix)
        .env("COURIER_TOPOLOGY", &t.file)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("publish starts");
    let queue = t.name("notifications.email");
    wait_depth(&queue, 500, LONG).await;
    proxy.reset_existing();
    let cut = Instant::now();
    let out = tokio::task::spawn_blocking(move || publish.wait_with_output())
        .await
        .expect("join")
        .expect("output");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Count what arrived: every id at least once.
    let got: Vec<String> = drain(&queue)
        .await
        .into_iter()
        .filter_map(|m| envelope::message_id(&m.delivery.properties).map(str::to_owned))
        .collect();
    let (lost, _) = report(
        "connection reset mid-publish",
        "TCP proxy resets the publisher's connection during `courier publish --file`",
        &ids,
        &got,
        cut.elapsed(),
    );
    assert_eq!(lost, 0);
}

#[tokio::test]
async fn memory_alarm_blocks_publishers_without_loss() {
    let t = TestTopology::fast("f.alarm").await;
    let sink = sink(1).await;
    let url = amqp_url();
    let p = publisher().await;
    let early = publish_jobs(&p, &t.exchange(), "email", "pre", 200).await;
    rabbitmqctl(&["set_vm_memory_high_watermark", "0.0000001"]);
    let raised = Instant::now();
    // Workers keep consuming and acking during the alarm (acks are not publishes).
    let mut w = WorkerProc::spawn(&t, &url, &sink.url, &["--concurrency", "10"]);
    sink.wait_for(LONG, "deliveries during the alarm", |r| r.len() >= 200)
        .await;
    // A publisher during the alarm waits: it neither fails nor loses.
    let p2 = p.clone();
    let ex = t.exchange();
    let late = tokio::spawn(async move { publish_jobs(&p2, &ex, "email", "during", 50).await });
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !late.is_finished(),
        "publishes should be blocked by the alarm"
    );
    rabbitmqctl(&["set_vm_memory_high_watermark", "0.4"]);
    let late_ids = late.await.expect("publishes confirmed after the alarm");
    let mut ids = early;
    ids.extend(late_ids);
    settle(&sink, &ids, LONG).await;
    let (lost, dup) = report(
        "memory alarm (connection.blocked)",
        "set_vm_memory_high_watermark 1e-7 for ~3 s, then 0.4",
        &ids,
        &delivered_ids(&sink),
        raised.elapsed(),
    );
    assert_eq!((lost, dup), (0, 0));
    assert!(w.term().await.success());
}

#[tokio::test]
async fn endpoint_down_longer_than_every_tier_ends_in_the_dlq() {
    let t = TestTopology::fast("f.down").await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let endpoint = format!("http://127.0.0.1:{closed}/deliver");
    let mut w = WorkerProc::spawn(&t, &amqp_url(), &endpoint, &["--concurrency", "10"]);
    let p = publisher().await;
    let ids = publish_jobs(&p, &t.exchange(), "email", "down", 50).await;
    let start = Instant::now();
    wait_depth(&t.dlq(), 50, LONG).await;
    let dead = drain(&t.dlq()).await;
    let got: Vec<String> = dead
        .iter()
        .filter(|m| header_str(m, envelope::REASON).as_deref() == Some("max-attempts"))
        .filter_map(|m| envelope::message_id(&m.delivery.properties).map(str::to_owned))
        .collect();
    let (lost, dup) = report(
        "HTTP endpoint down longer than all retry tiers",
        "endpoint port closed; 5 attempts over 100 ms/400 ms tiers",
        &ids,
        &got,
        start.elapsed(),
    );
    assert_eq!(
        (lost, dup),
        (0, 0),
        "every message dead-lettered exactly once"
    );
    assert!(w.term().await.success());
}

#[tokio::test]
async fn hanging_endpoint_times_out_without_leaking_slots() {
    let t = TestTopology::fast("f.hang").await;
    let sink = Sink::start_with(
        Arc::new(|_| (200, vec![])),
        Arc::new(|r: &Received| {
            if r.message_id.starts_with("hang") {
                Duration::from_secs(30)
            } else {
                Duration::ZERO
            }
        }),
    )
    .await;
    let mut w = WorkerProc::spawn(
        &t,
        &amqp_url(),
        &sink.url,
        &["--concurrency", "4", "--handler-timeout", "300ms"],
    );
    let p = publisher().await;
    let hang = publish_jobs(&p, &t.exchange(), "email", "hang", 8).await;
    let ok = publish_jobs(&p, &t.exchange(), "email", "ok", 40).await;
    let start = Instant::now();
    wait_depth(&t.dlq(), 8, LONG).await;
    sink.wait_for(LONG, "the ok messages", |r| {
        ok.iter().all(|id| r.iter().any(|x| &x.message_id == id))
    })
    .await;
    let dead: Vec<String> = drain(&t.dlq())
        .await
        .iter()
        .filter(|m| {
            header_str(m, envelope::ERROR)
                .unwrap_or_default()
                .contains("timed out")
        })
        .filter_map(|m| envelope::message_id(&m.delivery.properties).map(str::to_owned))
        .collect();
    let (lost, dup) = reconcile(&hang, &dead);
    record(Row {
        fault: "HTTP endpoint hangs".into(),
        injection: "no response; --handler-timeout 300ms, concurrency 4".into(),
        sent: hang.len() + ok.len(),
        lost,
        duplicated: dup,
        recovery_secs: start.elapsed().as_secs_f64(),
    });
    assert_eq!((lost, dup), (0, 0));
    assert!(w.term().await.success());
}

#[tokio::test]
async fn a_full_dlq_keeps_the_original_and_counts_it() {
    let t = TestTopology::apply("f.dlqfull", "tests/fixtures/small-dlq.toml").await;
    let sink = Sink::start(Arc::new(|_| (400, vec![])), Duration::ZERO).await;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let metrics = format!("127.0.0.1:{port}");
    let mut w = WorkerProc::spawn(
        &t,
        &amqp_url(),
        &sink.url,
        &["--concurrency", "4", "--metrics-addr", &metrics],
    );
    let p = publisher().await;
    let ids = publish_jobs(&p, &t.exchange(), "email", "full", 4).await;
    sink.wait_for(LONG, "all attempted", |r| r.len() >= 4).await;
    // The DLQ holds 2: two dead letters fit, two are nacked and held by the worker.
    let deadline = Instant::now() + LONG;
    let text = loop {
        let text = reqwest::get(format!("http://{metrics}/metrics"))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        if text.contains("courier_publish_failures_total{kind=\"nack\"}") {
            break text;
        }
        assert!(Instant::now() < deadline, "nack never counted:\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(text.contains("courier_publish_failures_total"));
    assert!(w.logs().contains("not confirmed"), "{}", w.logs());
    assert_eq!(
        depth(&t.name("notifications.email")).await,
        0,
        "held unacked, not lost"
    );
    // Make room: the held messages reach the DLQ; nothing was dropped.
    let start = Instant::now();
    let mut got: Vec<String> = Vec::new();
    while got.len() < 4 {
        assert!(Instant::now() < deadline, "got {got:?}");
        got.extend(
            drain(&t.dlq())
                .await
                .iter()
                .filter_map(|m| envelope::message_id(&m.delivery.properties).map(str::to_owned)),
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (lost, dup) = report(
        "dead-letter queue full",
        "DLQ x-max-length=2, overflow=reject-publish; 4 permanent failures",
        &ids,
        &got,
        start.elapsed(),
    );
    assert_eq!((lost, dup), (0, 0));
    assert!(w.term().await.success());
}

#[tokio::test]
async fn hostile_input_gets_clear_outcomes_and_never_stalls_the_worker() {
    use lapin::types::{AMQPValue, FieldTable};
    use lapin::BasicProperties;
    let t = TestTopology::fast("f.hostile").await;
    let sink = Sink::ok().await;
    let mut w = WorkerProc::spawn(&t, &amqp_url(), &sink.url, &["--concurrency", "4"]);
    let conn = parsed_url().connect("hostile").await.expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(Default::default())
        .await
        .expect("confirms");
    let ex = t.exchange();
    let base = |id: &str| {
        BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(id.into())
    };
    let hdr = |k: &str, v: AMQPValue| {
        let mut h = FieldTable::default();
        h.insert(k.into(), v);
        h
    };
    let big = format!("{{\"blob\":\"{}\"}}", "a".repeat(50 << 20));
    let cases: Vec<(&str, Vec<u8>, BasicProperties)> = vec![
        ("not-json", b"<html>".to_vec(), base("not-json")),
        ("bad-utf8", vec![0xc3, 0x28, 0xff], base("bad-utf8")),
        ("huge-body", big.into_bytes(), base("huge-body")),
        (
            "attempts-string",
            b"{}".to_vec(),
            base("attempts-string").with_headers(hdr(
                envelope::ATTEMPTS,
                AMQPValue::LongString("many".into()),
            )),
        ),
        (
            "attempts-negative",
            b"{}".to_vec(),
            base("attempts-negative")
                .with_headers(hdr(envelope::ATTEMPTS, AMQPValue::LongLongInt(-7))),
        ),
        (
            "attempts-huge",
            b"{}".to_vec(),
            base("attempts-huge")
                .with_headers(hdr(envelope::ATTEMPTS, AMQPValue::LongLongInt(i64::MAX))),
        ),
        (
            "attempts-table",
            b"{}".to_vec(),
            base("attempts-table").with_headers(hdr(
                envelope::ATTEMPTS,
                AMQPValue::FieldTable(FieldTable::default()),
            )),
        ),
        (
            "priority-200",
            b"{}".to_vec(),
            base("priority-200").with_priority(200),
        ),
        (
            "no-id",
            b"{}".to_vec(),
            BasicProperties::default().with_delivery_mode(2),
        ),
        (
            "reply-nowhere",
            b"{}".to_vec(),
            base("reply-nowhere")
                .with_reply_to("no-such-queue-anywhere".into())
                .with_correlation_id("c".into()),
        ),
    ];
    let sent = cases.len() + 1;
    for (_, body, props) in cases {
        ch.basic_publish(
            ex.as_str().into(),
            "email".into(),
            Default::default(),
            &body,
            props,
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    }
    let _ = conn.close(200, "done".into()).await;
    let p = publisher().await;
    publish_jobs(&p, &ex, "email", "normal", 1).await;
    let start = Instant::now();
    let delivered_expected = [
        "huge-body",
        "attempts-string",
        "attempts-negative",
        "attempts-huge",
        "attempts-table",
        "priority-200",
        "reply-nowhere",
        "normal-0",
    ];
    sink.wait_for(LONG, "every deliverable message", |r| {
        delivered_expected
            .iter()
            .all(|id| r.iter().any(|x| x.message_id == *id))
    })
    .await;
    wait_depth(&t.dlq(), 3, LONG).await;
    let dead = drain(&t.dlq()).await;
    let reasons: Vec<(String, String)> = dead
        .iter()
        .map(|m| {
            (
                envelope::message_id(&m.delivery.properties)
                    .unwrap_or("(none)")
                    .to_owned(),
                header_str(m, envelope::REASON).unwrap_or_default(),
            )
        })
        .collect();
    for id in ["not-json", "bad-utf8"] {
        assert!(
            reasons.contains(&(id.to_owned(), "malformed".to_owned())),
            "{id}: {reasons:?}"
        );
    }
    // The id-less message is dead-lettered too, given an id so the DLQ tool can address it.
    assert!(
        dead.iter().any(|m| header_str(m, envelope::ERROR)
            .unwrap_or_default()
            .contains("no message_id")),
        "{reasons:?}"
    );
    let huge = sink
        .all()
        .into_iter()
        .find(|r| r.message_id == "huge-body")
        .expect("huge body delivered");
    assert_eq!(
        huge.body.len(),
        (50 << 20) + 11,
        "50 MiB body delivered intact"
    );
    let accounted = delivered_expected.len() + dead.len();
    record(Row {
        fault: "hostile input".into(),
        injection: "non-JSON, invalid UTF-8, 50 MiB body, bad x-courier-attempts, priority 200, no message_id, reply_to nowhere".into(),
        sent,
        lost: sent - accounted.min(sent),
        duplicated: sink.counts().values().map(|n| n - 1).sum(),
        recovery_secs: start.elapsed().as_secs_f64(),
    });
    assert_eq!(accounted, sent);
    assert!(w.alive(), "worker died: {}", w.logs());
    assert!(!w.logs().contains("panicked"), "{}", w.logs());
    assert!(w.term().await.success());
}

/// The `courier-dlq` binary of this workspace (built by the workspace test run before this one).
fn dlq_bin() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = dir.join("courier-dlq");
    if !bin.exists() {
        let ok = std::process::Command::new(env!("CARGO"))
            .args(["build", "-p", "dlq-tool", "--bin", "courier-dlq"])
            .status()
            .expect("cargo build")
            .success();
        assert!(ok, "cannot build courier-dlq");
    }
    bin
}

/// Fills the DLQ with `n` worker-style dead letters whose origin is the email queue.
async fn seed_dead_letters(t: &TestTopology, tag: &str, n: usize) -> Vec<String> {
    let p = publisher().await;
    let origin = envelope::Origin {
        exchange: t.exchange(),
        routing_key: "email".into(),
        queue: t.name("notifications.email"),
    };
    let ids: Vec<String> = (0..n).map(|i| format!("{tag}-{i}")).collect();
    let futs = ids.iter().map(|id| {
        let mut m = job("", &t.dlq(), id, 0);
        let h = envelope::dead_letter_headers(
            None,
            5,
            envelope::Reason::MaxAttempts,
            "HTTP 503",
            &origin,
            envelope::now_millis(),
        );
        m.properties = m.properties.with_headers(h);
        p.publish(m)
    });
    for r in futures_util::future::join_all(futs).await {
        r.expect("seeded");
    }
    ids
}

fn ids_of(msgs: &[lapin::message::BasicGetMessage]) -> Vec<String> {
    msgs.iter()
        .filter_map(|m| envelope::message_id(&m.delivery.properties).map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn dlq_replay_killed_with_sigkill_halfway_loses_nothing() {
    let t = TestTopology::fast("f.replaykill").await;
    let ids = seed_dead_letters(&t, "rk", 3000).await;
    let mut replay = std::process::Command::new(dlq_bin())
        .args(["replay", "--rate", "1000/s"])
        .env("AMQP_URL", amqp_url())
        .env("COURIER_PREFIX", &t.prefix)
        .env("COURIER_TOPOLOGY", &t.file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("replay starts");
    let queue = t.name("notifications.email");
    wait_depth(&queue, 500, LONG).await;
    let _ = replay.kill();
    let _ = replay.wait();
    let killed = Instant::now();
    // The broker returns the tool's unacked deliveries to the DLQ once its connection is gone.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut seen = ids_of(&drain(&queue).await);
    seen.extend(ids_of(&drain(&t.dlq()).await));
    let (lost, _) = report(
        "`courier-dlq replay` killed with SIGKILL halfway",
        "SIGKILL after ~500 of 3000 replayed (--rate 1000/s)",
        &ids,
        &seen,
        killed.elapsed(),
    );
    assert_eq!(
        lost, 0,
        "every dead letter is in the DLQ or at its destination"
    );
}

#[tokio::test]
async fn dlq_export_remove_survives_the_broker_closing_its_connection() {
    let t = TestTopology::fast("f.exportcut").await;
    let ids = seed_dead_letters(&t, "ec", 3000).await;
    let out = std::env::temp_dir().join(format!("{}export.jsonl", t.prefix));
    let _ = std::fs::remove_file(&out);
    let export = std::process::Command::new(dlq_bin())
        .args(["export", "--remove", "--rate", "1000/s", "--out"])
        .arg(&out)
        .env("AMQP_URL", amqp_url())
        .env("COURIER_PREFIX", &t.prefix)
        .env("COURIER_TOPOLOGY", &t.file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("export starts");
    let deadline = Instant::now() + LONG;
    while std::fs::read_to_string(&out)
        .map(|s| s.lines().count())
        .unwrap_or(0)
        < 500
    {
        assert!(Instant::now() < deadline, "export made no progress");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    rabbitmqctl(&["close_all_connections", "fault test"]);
    let cut = Instant::now();
    let _ = tokio::task::spawn_blocking(move || export.wait_with_output())
        .await
        .expect("join");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    let mut seen: Vec<String> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["properties"]["message_id"].as_str().map(str::to_owned))
        .collect();
    assert!(
        !seen.is_empty(),
        "export file lines carry properties.message_id"
    );
    seen.extend(ids_of(&drain(&t.dlq()).await));
    let (lost, _) = report(
        "`courier-dlq export --remove` loses its connection",
        "rabbitmqctl close_all_connections after ~500 of 3000 written",
        &ids,
        &seen,
        cut.elapsed(),
    );
    assert_eq!(
        lost, 0,
        "every dead letter is in the file or still in the DLQ"
    );
}
