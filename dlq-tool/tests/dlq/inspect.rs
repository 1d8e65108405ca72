//! Inspection (`stats`, `list`, `show`, and the `--dry-run` of replay, purge and export, a reader
//! that goes away mid-list) leaves the dead-letter queue exactly as it was: same messages, same
//! order, same properties, headers and bodies.

use crate::util::*;
use crate::{plain, ttl_queue_args};
use courier::envelope::{now_millis, Reason};
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

/// 30 worker dead letters (three reasons, two channels, ages a minute apart) and one message
/// the broker dead-lettered itself (expired in a TTL queue, so it carries a real x-death).
async fn seed_mixed(env: &mut Env) -> String {
    let ttl = env.declare_queue("ttl", ttl_queue_args(env)).await;
    let p = publisher().await;
    let now = now_millis();
    let kinds = [
        (Reason::MaxAttempts, "HTTP 503 Service Unavailable: busy"),
        (Reason::Permanent, "HTTP 400 Bad Request: bad address"),
        (
            Reason::Malformed,
            "body is not valid JSON: expected value at line 1",
        ),
    ];
    let msgs = (0..30)
        .map(|i| {
            let (reason, error) = kinds[i % 3];
            let channel = if i % 2 == 0 { "email" } else { "sms" };
            worker_dead_letter(
                env,
                &format!("m-{i}"),
                channel,
                reason,
                error,
                now - i as i64 * 60_000,
            )
        })
        .collect();
    publish_all(&p, msgs).await;
    publish_all(&p, vec![plain(&ttl, "broker-1")]).await;
    wait_depth(&env.dlq(), 31, Duration::from_secs(10)).await;
    p.close().await;
    ttl
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspection_leaves_the_queue_exactly_as_it_was() {
    let mut env = Env::new("inspect").await;
    let ttl = seed_mixed(&mut env).await;
    let before = dump(&env.dlq()).await;
    assert_eq!(before.len(), 31);

    let o = env.run(&["stats"]);
    expect_code(&o, 0, "stats");
    let out = stdout(&o);
    for want in [
        "31 messages",
        "max-attempts",
        "permanent",
        "expired",
        "HTTP 503",
        "HTTP 400",
        "(broker: expired)",
        "oldest:",
        &env.queue("notifications.email"),
    ] {
        assert!(out.contains(want), "stats lacks {want:?}:\n{out}");
    }

    // Ready from AMQP, unacknowledged from the management API (which samples every few seconds:
    // it may not have seen this new queue yet, or may still count the dump above), else unknown.
    assert!(out.contains("31 messages ready, "), "{out}");
    let o = env.run(&["stats", "--management-url", "http://127.0.0.1:1"]);
    expect_code(&o, 0, "stats without a management API");
    assert!(
        stdout(&o).contains("31 messages ready, unacknowledged: unknown (management API at http://127.0.0.1:1: cannot connect"),
        "{}",
        stdout(&o)
    );

    let o = env.run(&["stats", "--json", "--from-queue", "notifications.sms"]);
    expect_code(&o, 0, "stats --json");
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("one JSON object");
    assert_eq!(v["total"], 31);
    assert_eq!(v["ready"], 31);
    assert!(v["unacked"].is_u64() || v["unacked"].is_null(), "{v}");
    assert_eq!(v["matched"], 15);
    assert_eq!(v["sampled"], false);
    assert_eq!(v["by_reason"]["permanent"], 5);

    let o = env.run(&["stats", "--limit", "5"]);
    expect_code(&o, 0, "stats --limit 5");
    assert!(stdout(&o).contains("sampled 5 of 31"), "{}", stdout(&o));

    // Past what an inspection can hold unacknowledged: cut to the bound, and said so.
    for cmd in ["stats", "list"] {
        let o = env.run(&[cmd, "--limit", "70000"]);
        expect_code(&o, 0, &format!("{cmd} --limit 70000"));
        assert!(
            stderr(&o).contains("warning: --limit 70000: an inspection examines at most 65,535"),
            "{cmd}: {}",
            stderr(&o)
        );
    }
    let o = env.run(&["replay", "--dry-run", "--limit", "70000"]);
    expect_code(&o, 0, "replay --dry-run --limit 70000");
    assert!(
        stderr(&o).contains("warning: --limit 70000: a dry run examines at most 65,535"),
        "{}",
        stderr(&o)
    );

    let o = env.run(&["list"]);
    expect_code(&o, 0, "list");
    let out = stdout(&o);
    assert_eq!(out.lines().count(), 32, "a header and 31 rows:\n{out}");
    assert!(
        out.lines().nth(1).is_some_and(|l| l.starts_with("m-0 ")),
        "{out}"
    );
    assert!(
        out.contains("broker-1") && out.contains("HTTP 400 Bad Request"),
        "{out}"
    );

    let o = env.run(&[
        "list",
        "--json",
        "--reason",
        "permanent",
        "--older-than",
        "30s",
    ]);
    expect_code(&o, 0, "list --json");
    let lines: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    // Permanent: m-1, m-4, ..., m-28 (10); m-1 is only ~1 minute old, all are older than 30s.
    assert_eq!(lines.len(), 10, "{}", stdout(&o));
    assert!(lines.iter().all(|l| l["summary"]["reason"] == "permanent"));
    assert_eq!(lines[0]["format"], "courier-dlq/1");
    assert_eq!(lines[0]["headers"]["x-courier-attempts"]["type"], "i64");

    let o = env.run(&["list", "--newer-than", "115s"]);
    expect_code(&o, 0, "list --newer-than");
    assert_eq!(
        stdout(&o).lines().count(),
        1 + 3,
        "m-0, m-1 and broker-1 (it expired just now):\n{}",
        stdout(&o)
    );

    let o = env.run(&["show", "m-7"]);
    expect_code(&o, 0, "show");
    let out = stdout(&o);
    for want in [
        "Message m-7",
        "HTTP 400 Bad Request",
        "x-courier-attempts",
        "(i64)",
        "\"to\": \"user-m-7@example.com\"",
        "replay goes to",
        "tenant",
    ] {
        assert!(out.contains(want), "show lacks {want:?}:\n{out}");
    }
    let o = env.run(&["show", "broker-1"]);
    expect_code(&o, 0, "show broker-1");
    let out = stdout(&o);
    assert!(out.contains("RabbitMQ itself"), "{out}");
    assert!(out.contains(&format!("expired in {ttl}")), "{out}");
    assert!(
        out.contains(&format!("replay goes to    queue {ttl}")),
        "{out}"
    );

    let o = env.run(&["show", "no-such-id"]);
    expect_code(&o, 1, "show missing");
    assert!(
        stderr(&o).contains("not among the first 31"),
        "{}",
        stderr(&o)
    );

    let o = env.run(&["replay", "--dry-run"]);
    expect_code(&o, 0, "replay --dry-run");
    let out = stdout(&o);
    assert!(
        out.contains("would replay: 31") && out.contains("would stay: 0"),
        "{out}"
    );
    assert!(
        out.contains(&format!("{} / email", env.exchange())),
        "{out}"
    );
    let o = env.run(&[
        "replay",
        "--dry-run",
        "--reason",
        "permanent",
        "--limit",
        "3",
    ]);
    expect_code(&o, 0, "replay --dry-run --limit");
    assert!(
        stdout(&o).contains("would replay: 3 (--limit reached)"),
        "{}",
        stdout(&o)
    );
    // The third permanent one is the 8th message: 5 before it were not selected, 23 follow.
    assert!(
        stdout(&o).contains(
            "would stay: 28\n  not selected: 5\n  past --limit: 23\n  without a recorded origin: 0\n"
        ),
        "{}",
        stdout(&o)
    );
    let o = env.run(&["purge", "--dry-run", "--reason", "malformed"]);
    expect_code(&o, 0, "purge --dry-run");
    assert!(stdout(&o).contains("would purge: 10"), "{}", stdout(&o));
    let tmp = TempFile::new("inspect");
    let o = env.run(&["export", "--dry-run", "--out", tmp.path()]);
    expect_code(&o, 0, "export --dry-run");
    assert!(!tmp.0.exists(), "a dry run writes no file");

    // `courier-dlq list | head -1`: the reader goes away; that is success, and the messages
    // the tool held go back.
    let mut child = env
        .command(&["list"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn_within(CHILD_DEADLINE);
    let mut first = String::new();
    let mut reader = BufReader::new(child.stdout.take().expect("stdout"));
    reader.read_line(&mut first).expect("one line");
    drop(reader);
    let status = child.wait().expect("wait");
    assert!(status.success(), "broken pipe is success: {status:?}");

    let after = dump(&env.dlq()).await;
    assert_eq!(after.len(), before.len());
    assert!(
        after == before,
        "inspection changed the queue (count, order, properties, headers or bodies)"
    );
}
