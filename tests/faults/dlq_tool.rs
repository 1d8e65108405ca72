//! `courier-dlq` under faults: a replay killed with SIGKILL halfway, an `export --remove` whose
//! connection the broker closes.

use crate::census::*;
use crate::harness::*;
use crate::util::*;
use crate::LONG;
use std::time::{Duration, Instant};

/// Waits until `queue` has no consumer: the broker has taken back a dead tool's deliveries
/// (they return to the queue as its consumer goes). AMQP's count is current; the management
/// API's unacked count can be seconds old.
async fn wait_returned(queue: &str) {
    let admin = courier::broker::Admin::connect(&parsed_url(), "fault census")
        .await
        .expect("connect");
    let deadline = Instant::now() + LONG;
    loop {
        let state = admin.queue_state(queue).await.expect("broker answers");
        if state.is_some_and(|s| s.consumers == 0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{queue} still has a consumer: the tool's deliveries never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    admin.close().await;
}

#[tokio::test]
async fn dlq_replay_killed_with_sigkill_halfway_loses_nothing() {
    let t = TestTopology::fast("f.replaykill").await;
    let ids = seed_dead_letters(&t, "rk", 3000).await;
    let mut replay = dlq_command()
        .args(["replay", "--rate", "1000/s"])
        .env("AMQP_URL", amqp_url())
        .env("COURIER_PREFIX", &t.prefix)
        .env("COURIER_TOPOLOGY", &t.file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn_within(CHILD_DEADLINE);
    let queue = t.name("notifications.email");
    wait_depth(&queue, 500, LONG).await;
    assert!(
        matches!(replay.try_wait(), Ok(None)),
        "the replay finished before the kill"
    );
    let _ = replay.kill();
    let _ = replay.wait();
    let killed = Instant::now();
    // The broker returns the tool's unacked deliveries to the DLQ once its connection is gone.
    let mut c = Census::new(&ids);
    wait_returned(&t.dlq()).await;
    c.add_queues(&t).await;
    assert!(
        c.in_place(DEAD) > 0,
        "the replay had nothing left when killed: {}",
        c.summary()
    );
    assert!(
        c.lost().is_empty() && c.unexpected().is_empty(),
        "every dead letter is in the DLQ or at its destination: {}",
        c.summary()
    );
    c.row(
        "`courier-dlq replay` killed with SIGKILL halfway",
        "SIGKILL after ~500 of 3000 replayed (--rate 1000/s)",
        killed.elapsed(),
    )
    .passed();
}

#[tokio::test]
async fn dlq_export_remove_survives_the_broker_closing_its_connection() {
    let t = TestTopology::fast("f.exportcut").await;
    let ids = seed_dead_letters(&t, "ec", 3000).await;
    let out = std::env::temp_dir().join(format!("{}export.jsonl", t.prefix));
    let _ = std::fs::remove_file(&out);
    let mut export = dlq_command()
        .args(["export", "--remove", "--rate", "1000/s", "--out"])
        .arg(&out)
        .env("AMQP_URL", amqp_url())
        .env("COURIER_PREFIX", &t.prefix)
        .env("COURIER_TOPOLOGY", &t.file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn_within(CHILD_DEADLINE);
    let lines = || {
        std::fs::read_to_string(&out)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    let deadline = Instant::now() + LONG;
    while lines() < 500 {
        assert!(Instant::now() < deadline, "export made no progress");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Checked before the cut: rabbitmqctl takes a second or more to return, and by then the
    // export has rightly given up on its closed connection.
    let written = lines();
    assert!(
        written < ids.len() && matches!(export.try_wait(), Ok(None)),
        "the export was done ({written} lines) before its connection was closed"
    );
    rabbitmqctl(&["close_all_connections", "fault test"]);
    let cut = Instant::now();
    let output = tokio::task::spawn_blocking(move || export.wait_with_output())
        .await
        .expect("join")
        .expect("wait for courier-dlq export");
    // export does not resume (rerun with --append): a clean exit would mean it finished before
    // the cut landed, and then this test proved nothing.
    assert!(
        !output.status.success(),
        "the export ended cleanly, so the cut landed after it was done: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    wait_returned(&t.dlq()).await;
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    let exported: Vec<String> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["properties"]["message_id"].as_str().map(str::to_owned))
        .collect();
    assert!(
        !exported.is_empty(),
        "export file lines carry properties.message_id"
    );
    let mut c = Census::new(&ids);
    c.add("exported", exported);
    c.add_queues(&t).await;
    assert!(
        c.lost().is_empty() && c.unexpected().is_empty(),
        "every dead letter is in the file or still in the DLQ: {}",
        c.summary()
    );
    c.row(
        "`courier-dlq export --remove` loses its connection",
        "rabbitmqctl close_all_connections after ~500 of 3000 written",
        cut.elapsed(),
    )
    .passed();
}

#[tokio::test]
async fn dlq_replay_resumes_after_the_broker_closes_its_connection() {
    let t = TestTopology::fast("f.replaycut").await;
    let ids = seed_dead_letters(&t, "rc", 3000).await;
    let replay = dlq_command()
        .args(["replay", "--rate", "1000/s"])
        .env("AMQP_URL", amqp_url())
        .env("COURIER_PREFIX", &t.prefix)
        .env("COURIER_TOPOLOGY", &t.file)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn_within(CHILD_DEADLINE);
    let queue = t.name("notifications.email");
    wait_depth(&queue, 500, LONG).await;
    // Measured before the cut: rabbitmqctl can take seconds to return on a busy machine, and
    // meanwhile the replay rightly resumes and may finish. That the cut landed mid-run is
    // shown by the replay's own "resuming" below.
    let moved = depth(&queue).await as usize;
    assert!(
        moved < ids.len(),
        "the replay was done ({moved} replayed) before its connection was closed"
    );
    rabbitmqctl(&["close_all_connections", "fault test"]);
    let cut = Instant::now();
    let out = tokio::task::spawn_blocking(move || replay.wait_with_output())
        .await
        .expect("join")
        .expect("replay output");
    let err = stderr(&out);
    assert!(
        out.status.success(),
        "the replay did not finish by itself: {}\n{}{err}",
        out.status,
        stdout(&out)
    );
    assert!(err.contains("resuming on what is left"), "{err}");
    let mut c = Census::new(&ids);
    c.add_queues(&t).await;
    assert!(
        c.lost().is_empty() && c.unexpected().is_empty(),
        "{}",
        c.summary()
    );
    assert_eq!(
        c.in_place(QUEUED),
        ids.len(),
        "every one replayed: {}",
        c.summary()
    );
    assert_eq!(c.in_place(DEAD), 0, "left in the DLQ: {}", c.summary());
    c.row(
        "`courier-dlq replay` loses its connection",
        "rabbitmqctl close_all_connections after ~500 of 3000 replayed; the replay resumes",
        cut.elapsed(),
    )
    .passed();
}
