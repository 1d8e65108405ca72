//! Smart replay against a real worker delivering to a real HTTP endpoint: a canary that stops
//! the replay while the endpoint still fails, and a replay killed midway that, run again,
//! replays nothing twice. Ground truth: the ids the test seeded, what the endpoint received,
//! and the dead-letter queue's own contents.

use crate::util::*;
use courier::envelope::Reason;
use courier_testkit::sink::Sink;
use courier_testkit::worker::RunningWorker;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `courier-dlq` with `args`, off the runtime's threads (the worker runs on them).
async fn run(env: &Env, args: &[&str]) -> std::process::Output {
    let mut cmd = env.command(args);
    tokio::task::spawn_blocking(move || output_within(&mut cmd, Duration::from_secs(120)))
        .await
        .expect("courier-dlq ran")
}

/// Seeds `ids` as dead letters the worker wrote after the endpoint answered 503 five times.
async fn seed_503s(env: &Env, ids: &[String]) {
    let now = courier::envelope::now_millis();
    let msgs = ids
        .iter()
        .map(|id| {
            worker_dead_letter(
                env,
                id,
                "email",
                Reason::MaxAttempts,
                "HTTP 503 Service Unavailable",
                now,
            )
        })
        .collect();
    publish_all(&publisher().await, msgs).await;
}

/// Requests the endpoint received, by message id.
fn requests(sink: &Sink) -> HashMap<String, usize> {
    sink.counts()
}

/// 2xx answers by message id.
fn delivered(sink: &Sink) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for r in sink.all() {
        if (200..300).contains(&r.status) {
            *out.entry(r.message_id).or_insert(0) += 1;
        }
    }
    out
}

/// The ids in the dead-letter queue, with how often each is there.
async fn in_dlq(env: &Env) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for m in dump(&env.dlq()).await {
        *out.entry(m.id()).or_insert(0) += 1;
    }
    out
}

/// The id of the only group whose cause mentions `needle`.
fn group_of(env: &Env, needle: &str) -> (String, u64) {
    let o = env.run(&["groups", "--json"]);
    expect_code(&o, 0, "groups --json");
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("groups JSON");
    let g = v["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .find(|g| g["cause"].as_str().is_some_and(|c| c.contains(needle)))
        .unwrap_or_else(|| panic!("no group for {needle:?} in {v}"))
        .clone();
    (
        g["id"].as_str().expect("id").to_owned(),
        g["count"].as_u64().expect("count"),
    )
}

async fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_canary_stops_the_replay_while_the_endpoint_fails_and_the_group_moves_once_it_recovers() {
    // Retry tiers of 100 ms and 400 ms: a replayed message that keeps failing is back in the
    // dead-letter queue within ~2 s, well inside the canary's wait.
    let env = Env::with_file("canary", "tests/fixtures/fast.toml").await;
    let _ = std::fs::remove_file(env.audit_log());
    let group_ids: Vec<String> = (0..200).map(|i| format!("outage-{i}")).collect();
    seed_503s(&env, &group_ids).await;
    // Another cause in the same queue: never part of the group's replay.
    let now = courier::envelope::now_millis();
    let others: Vec<String> = (0..20).map(|i| format!("bad-address-{i}")).collect();
    let msgs = others
        .iter()
        .map(|id| {
            worker_dead_letter(
                &env,
                id,
                "email",
                Reason::Rejected,
                "HTTP 422: invalid address",
                now,
            )
        })
        .collect();
    publish_all(&publisher().await, msgs).await;
    let (group, count) = group_of(&env, "503");
    assert_eq!(count, 200);

    let healthy = Arc::new(AtomicBool::new(false));
    let up = healthy.clone();
    let sink = Sink::start(
        Arc::new(move |_| (if up.load(Ordering::SeqCst) { 200 } else { 503 }, vec![])),
        Duration::ZERO,
    )
    .await;
    let worker = RunningWorker::http(&env, "notifications.email", &sink);
    worker.wait_ready(Duration::from_secs(15)).await;

    // The endpoint still fails: the canary comes back, the replay stops by itself.
    let args = [
        "replay",
        "--group",
        &group,
        "--canary",
        "10",
        "--canary-wait",
        "15s",
    ];
    let o = run(&env, &args).await;
    expect_code(&o, 3, "replay with a canary while the endpoint fails");
    let err = stderr(&o);
    assert!(
        err.contains("stopped by itself") && err.contains("came back to the dead-letter queue"),
        "{err}"
    );
    assert!(err.contains("Moved 10 message(s)"), "{err}");
    // It stopped on the canary: only canary messages reached the endpoint.
    let tried = requests(&sink);
    assert_eq!(tried.len(), 10, "distinct ids sent: {tried:?}");
    assert!(tried.keys().all(|id| group_ids.contains(id)), "{tried:?}");
    // Nothing lost: once the canary is back, every seeded id is in the queue exactly once;
    // 190 of the 200 (95 %) never left it.
    courier_testkit::queues::wait_depth(&env.dlq(), 220, Duration::from_secs(30)).await;
    let dlq = in_dlq(&env).await;
    for id in group_ids.iter().chain(&others) {
        assert_eq!(dlq.get(id), Some(&1), "{id} in the dead-letter queue");
    }
    assert_eq!(dlq.len(), 220, "nothing else in the queue");
    assert!(delivered(&sink).is_empty(), "nothing was delivered yet");
    // The audit trail has the stopped replay: what moved, and why it ended.
    let log = std::fs::read_to_string(env.audit_log()).expect("audit log");
    let line: serde_json::Value =
        serde_json::from_str(log.lines().last().expect("a line")).expect("JSON line");
    assert_eq!(line["command"], "replay");
    assert_eq!(line["moved"], 10, "{line}");
    assert_eq!(line["exit_code"], 3, "{line}");
    assert_eq!(line["filter"]["canary"], 10, "{line}");
    assert!(
        line["outcome"]
            .as_str()
            .is_some_and(|o| o.contains("stopped by itself")),
        "{line}"
    );

    // The endpoint recovered: the same replay moves the whole group, canary included.
    healthy.store(true, Ordering::SeqCst);
    let (again, count) = group_of(&env, "503");
    assert_eq!(
        (again.as_str(), count),
        (group.as_str(), 200),
        "the canary's re-failures are the same group"
    );
    let args = [
        "replay",
        "--group",
        &group,
        "--canary",
        "10",
        "--canary-wait",
        "3s",
    ];
    let o = run(&env, &args).await;
    expect_code(&o, 0, "the same replay after recovery");
    assert!(
        stderr(&o).contains("canary: 0 of 10 came back"),
        "{}",
        stderr(&o)
    );
    let sink_ok = sink.clone();
    wait_until(
        "every id of the group delivered",
        Duration::from_secs(60),
        || delivered(&sink_ok).len() == 200,
    )
    .await;
    let got = delivered(&sink);
    let dups: usize = got.values().map(|n| n - 1).sum();
    let lost = group_ids.iter().filter(|id| !got.contains_key(*id)).count();
    eprintln!(
        "after recovery: delivered {} of 200, lost {lost}, duplicated {dups}",
        got.len()
    );
    assert_eq!(lost, 0);
    assert_eq!(dups, 0);
    let dlq = in_dlq(&env).await;
    assert_eq!(dlq.len(), 20, "only the other cause stays: {dlq:?}");
    assert!(others.iter().all(|id| dlq.get(id) == Some(&1)));
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replay_killed_midway_and_run_again_replays_nothing_twice() {
    let env = Env::with_file("resume", "tests/fixtures/fast.toml").await;
    let ids: Vec<String> = (0..300).map(|i| format!("kill-{i:03}")).collect();
    seed_503s(&env, &ids).await;
    // Every tenth id is refused for good (HTTP 400: dead-lettered at once): replayed, it comes
    // back to the dead-letter queue while the replay runs. Run again, a replay must leave those
    // the killed run moved where they are: replaying them again is replaying twice.
    let refused = |id: &str| id.ends_with('0');
    let sink = Sink::start(
        Arc::new(move |r| (if refused(&r.message_id) { 400 } else { 200 }, vec![])),
        Duration::ZERO,
    )
    .await;
    let worker = RunningWorker::http(&env, "notifications.email", &sink);
    worker.wait_ready(Duration::from_secs(15)).await;

    let mut replay = spawn_within(
        env.command(&["replay", "--rate", "20/s"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped()),
        Duration::from_secs(60),
    );
    let sink_seen = sink.clone();
    wait_until(
        "60 replayed messages at the endpoint",
        Duration::from_secs(30),
        || requests(&sink_seen).len() >= 60,
    )
    .await;
    replay.kill().expect("SIGKILL the replay");
    let _ = replay.wait();
    let at_kill = requests(&sink).len();
    // The fault landed mid-run: some moved, most still to do.
    assert!(
        (60..250).contains(&at_kill),
        "killed after {at_kill} of 300"
    );
    let journal = std::env::temp_dir()
        .join("courier-dlq-test-state/courier/replay")
        .join(format!("{}.jsonl", env.dlq()));
    assert!(journal.exists(), "the killed replay left its journal");
    // Let what the killed run moved settle: refused ones back in the queue, others delivered.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let moved_before: Vec<String> = requests(&sink).into_keys().collect();

    let o = run(&env, &["replay"]).await;
    expect_code(&o, 0, "the same replay, run again");
    assert!(stderr(&o).contains("resuming the replay"), "{}", stderr(&o));
    let sink_ok = sink.clone();
    wait_until("every id at the endpoint", Duration::from_secs(60), || {
        requests(&sink_ok).len() == 300
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let tried = requests(&sink);
    let twice: Vec<_> = tried
        .iter()
        .filter(|(id, n)| refused(id) && **n > 1)
        .map(|(id, n)| format!("{id}×{n}"))
        .collect();
    let refused_before = moved_before.iter().filter(|id| refused(id)).count();
    eprintln!(
        "killed after {at_kill} requests ({refused_before} refused ones back in the queue); resumed: {} ids at the endpoint, replayed twice: {twice:?}",
        tried.len()
    );
    assert!(
        refused_before > 0,
        "some refused ones came back before the kill"
    );
    assert!(twice.is_empty(), "replayed twice: {twice:?}");
    let got = delivered(&sink);
    let expected: Vec<&String> = ids.iter().filter(|id| !refused(id)).collect();
    let lost = expected.iter().filter(|id| !got.contains_key(**id)).count();
    let dups: usize = got.values().map(|n| n - 1).sum();
    eprintln!(
        "delivered {} of {}, lost {lost}, duplicated {dups}",
        got.len(),
        expected.len()
    );
    assert_eq!(lost, 0);
    // A copy confirmed in the instant between its confirm and its journal line, when the kill
    // landed, is replayed again (at-least-once): at most the one the kill interrupted.
    assert!(dups <= 1, "duplicated {dups}");
    // The refused ones are all back in the queue, once each; the finished replay's journal is
    // gone, so the next replay takes them.
    let dlq = in_dlq(&env).await;
    assert_eq!(dlq.len(), 30, "{dlq:?}");
    assert!(dlq.iter().all(|(id, n)| refused(id) && *n == 1), "{dlq:?}");
    assert!(
        !journal.exists(),
        "a replay that finished deletes its journal"
    );
    worker.stop().await;
}
