//! `courier sink`, the real binary on a free local port: deliberate failures decided by the
//! Idempotency-Key (first attempt 503 for the transient share, always 400 for the permanent
//! share, 200 otherwise), `/healthz`, `/metrics` counting by status, `--latency`, and a clean
//! exit on SIGTERM. Needs no broker.

use courier_testkit::free_port;
use courier_testkit::process::{DeadlineChild, SpawnWithin, CHILD_DEADLINE};
use std::collections::BTreeMap;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A running `courier sink`, killed when dropped (a failed test leaves no process behind).
struct SinkProcess {
    child: DeadlineChild,
    base: String,
}

impl Drop for SinkProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `courier sink --addr 127.0.0.1:<free port> <args>` and waits until `/healthz` answers.
async fn start(args: &[&str]) -> SinkProcess {
    let addr = format!("127.0.0.1:{}", free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_courier"))
        .arg("sink")
        .args(["--addr", &addr])
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn_within(CHILD_DEADLINE);
    let sink = SinkProcess {
        child,
        base: format!("http://{addr}"),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let client = reqwest::Client::new();
    loop {
        if let Ok(r) = client.get(format!("{}/healthz", sink.base)).send().await {
            assert_eq!(r.status(), 200, "/healthz");
            return sink;
        }
        assert!(
            Instant::now() < deadline,
            "courier sink never answered on {}",
            sink.base
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// POSTs a delivery like a worker does; returns the status.
async fn post(
    client: &reqwest::Client,
    sink: &SinkProcess,
    key: Option<&str>,
    attempt: u32,
) -> u16 {
    let mut req = client
        .post(format!("{}/deliver", sink.base))
        .header("content-type", "application/json")
        .header("x-courier-attempt", attempt.to_string())
        .body(r#"{"to":"ada@example.com"}"#);
    if let Some(key) = key {
        req = req.header("idempotency-key", key);
    }
    req.send().await.expect("sink answers").status().as_u16()
}

/// `courier_sink_requests_total` by status, read from `/metrics`.
async fn counts(client: &reqwest::Client, sink: &SinkProcess) -> BTreeMap<String, u64> {
    let text = client
        .get(format!("{}/metrics", sink.base))
        .send()
        .await
        .expect("/metrics answers")
        .text()
        .await
        .expect("/metrics text");
    text.lines()
        .filter_map(|l| l.strip_prefix("courier_sink_requests_total{status=\""))
        .filter_map(|rest| {
            let (status, value) = rest.split_once("\"} ")?;
            Some((status.to_owned(), value.trim().parse().ok()?))
        })
        .collect()
}

async fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

#[tokio::test]
async fn sink_fails_a_deterministic_share_by_idempotency_key() {
    let sink = start(&["--fail-transient", "30", "--fail-permanent", "20"]).await;
    let client = reqwest::Client::new();
    let mut by_status: BTreeMap<u16, Vec<String>> = BTreeMap::new();
    for i in 0..200 {
        let key = format!("sink-test-{i}");
        let status = post(&client, &sink, Some(&key), 1).await;
        by_status.entry(status).or_default().push(key);
    }
    let statuses: Vec<u16> = by_status.keys().copied().collect();
    assert_eq!(
        statuses,
        vec![200, 400, 503],
        "first attempts: {by_status:?}"
    );
    let n = |s: u16| by_status.get(&s).map_or(0, Vec::len);
    // 30 % and 20 % of 200, loosely: the hash is uniform, not exact.
    assert!((35..=85).contains(&n(503)), "503s: {}", n(503));
    assert!((20..=65).contains(&n(400)), "400s: {}", n(400));

    // Transient: the second attempt is delivered; a repeated first attempt fails again.
    for key in &by_status[&503] {
        assert_eq!(post(&client, &sink, Some(key), 2).await, 200, "{key}");
        assert_eq!(post(&client, &sink, Some(key), 1).await, 503, "{key}");
    }
    // Permanent: every attempt fails.
    for key in &by_status[&400] {
        assert_eq!(post(&client, &sink, Some(key), 2).await, 400, "{key}");
        assert_eq!(post(&client, &sink, Some(key), 5).await, 400, "{key}");
    }
    // Delivered keys stay delivered.
    for key in by_status[&200].iter().take(20) {
        assert_eq!(post(&client, &sink, Some(key), 1).await, 200, "{key}");
    }
    // No Idempotency-Key: 400.
    assert_eq!(post(&client, &sink, None, 1).await, 400);

    let c = counts(&client, &sink).await;
    let want_200 = n(200) + n(503) + 20;
    let want_400 = n(400) * 3 + 1;
    let want_503 = n(503) * 2;
    assert_eq!(c.get("200").copied(), Some(want_200 as u64), "{c:?}");
    assert_eq!(c.get("400").copied(), Some(want_400 as u64), "{c:?}");
    assert_eq!(c.get("503").copied(), Some(want_503 as u64), "{c:?}");

    // Only POST /deliver delivers.
    let get = client
        .get(format!("{}/deliver", sink.base))
        .send()
        .await
        .expect("answers");
    assert_eq!(get.status(), 405);
}

#[tokio::test]
async fn sink_without_failure_options_answers_200_and_serves_healthz() {
    let sink = start(&[]).await;
    let client = reqwest::Client::new();
    let health = client
        .get(format!("{}/healthz", sink.base))
        .send()
        .await
        .expect("answers");
    assert_eq!(health.status(), 200);
    for i in 0..50 {
        let key = format!("ok-{i}");
        assert_eq!(post(&client, &sink, Some(&key), 1).await, 200, "{key}");
    }
    let c = counts(&client, &sink).await;
    assert_eq!(c.get("200").copied(), Some(50), "{c:?}");
    assert_eq!(c.get("503").copied(), Some(0), "{c:?}");
}

#[tokio::test]
async fn sink_full_transient_share_fails_every_first_attempt_and_honours_latency() {
    let sink = start(&["--fail-transient", "100", "--latency", "150ms"]).await;
    let client = reqwest::Client::new();
    for i in 0..5 {
        let key = format!("slow-{i}");
        let started = Instant::now();
        assert_eq!(post(&client, &sink, Some(&key), 1).await, 503, "{key}");
        assert!(
            started.elapsed() >= Duration::from_millis(150),
            "--latency 150ms not honoured: {:?}",
            started.elapsed()
        );
        assert_eq!(post(&client, &sink, Some(&key), 2).await, 200, "{key}");
    }
}

#[tokio::test]
async fn sink_refuses_shares_over_100_percent() {
    let out = Command::new(env!("CARGO_BIN_EXE_courier"))
        .args([
            "sink",
            "--addr",
            "127.0.0.1:0",
            "--fail-transient",
            "70",
            "--fail-permanent",
            "40",
        ])
        .output()
        .expect("courier runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("more than 100"), "{stderr}");
}

#[tokio::test]
async fn sink_exits_cleanly_on_sigterm() {
    let mut sink = start(&[]).await;
    let pid = sink.child.id().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    let status = wait_exit(&mut sink.child, Duration::from_secs(10))
        .await
        .expect("courier sink exits within 10s of SIGTERM");
    assert!(status.success(), "exit status {status:?}");
}
