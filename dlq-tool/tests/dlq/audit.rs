//! The audit trail: one line per command that changed the dead-letter queue, with its counts,
//! none for inspection or a dry run, and no password anywhere.

use crate::util::*;
use courier::envelope::{now_millis, Reason};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_changing_command_leaves_one_line_with_its_counts_and_no_password() {
    let mut env = Env::new("audit").await;
    let _ = std::fs::remove_file(env.audit_log());
    let p = publisher().await;
    let now = now_millis();
    let mut msgs = Vec::new();
    for i in 0..3 {
        msgs.push(worker_dead_letter(
            &env,
            &format!("busy-{i}"),
            "email",
            Reason::MaxAttempts,
            "HTTP 503",
            now,
        ));
    }
    for i in 0..4 {
        msgs.push(worker_dead_letter(
            &env,
            &format!("bad-{i}"),
            "sms",
            Reason::Permanent,
            "HTTP 400",
            now,
        ));
    }
    publish_all(&p, msgs).await;
    p.close().await;
    let export = std::env::temp_dir().join(format!("{}audit-export.jsonl", env.prefix));
    let _ = std::fs::remove_file(&export);
    let export = export.to_str().expect("utf-8 path").to_owned();
    let url = amqp_url();
    assert!(
        url.contains(":guest@"),
        "the test URL carries a password: {url}"
    );

    // Inspection and dry runs change nothing and leave no line.
    expect_code(&env.run(&["stats"]), 0, "stats");
    expect_code(&env.run(&["replay", "--dry-run"]), 0, "replay --dry-run");
    expect_code(&env.run(&["purge", "--dry-run"]), 0, "purge --dry-run");
    assert!(
        !env.audit_log().exists(),
        "no line for what changed nothing"
    );

    let steps: [(&str, Vec<&str>); 4] = [
        (
            "replay",
            vec!["--amqp-url", &url, "replay", "--reason", "max-attempts"],
        ),
        (
            "export --remove",
            vec![
                "export",
                "--remove",
                "--reason",
                "permanent",
                "--limit",
                "2",
                "--out",
                &export,
            ],
        ),
        ("import", vec!["import", &export]),
        ("purge", vec!["purge", "--yes", "--reason", "permanent"]),
    ];
    for (what, args) in &steps {
        expect_code(&env.run(args), 0, what);
    }

    let text = std::fs::read_to_string(env.audit_log()).expect("audit log written");
    assert!(
        !text.contains(":guest@"),
        "a password in the audit log: {text}"
    );
    assert!(
        text.contains("guest:***@"),
        "the URL is there, redacted: {text}"
    );
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    let got: Vec<(&str, u64, u64, &str)> = lines
        .iter()
        .map(|v| {
            (
                v["command"].as_str().unwrap_or("?"),
                v["moved"].as_u64().unwrap_or(u64::MAX),
                v["left"].as_u64().unwrap_or(u64::MAX),
                v["outcome"].as_str().unwrap_or("?"),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            // 3 replayed, 4 not selected left in place.
            ("replay", 3, 4, "ok"),
            // 2 of the 4 permanent exported (--limit 2), 2 left.
            ("export --remove", 2, 2, "ok"),
            // Both back in the DLQ.
            ("import", 2, 0, "ok"),
            // All 4 permanent purged, nothing else left.
            ("purge", 4, 0, "ok"),
        ]
    );
    assert_eq!(
        lines[0]["filter"]["reason"],
        serde_json::json!(["max-attempts"])
    );
    assert_eq!(lines[1]["filter"]["limit"], 2);
    assert_eq!(lines[0]["queue"], env.dlq());
    for v in &lines {
        assert!(
            v["user"].is_string() && v["host"].is_string() && v["at"].is_string(),
            "{v}"
        );
        assert_eq!(v["exit_code"], 0);
    }
    assert_eq!(depth(&env.dlq()).await, 0);

    // `audit` shows the same lines.
    let o = env.run(&["audit", "--json"]);
    expect_code(&o, 0, "audit --json");
    assert_eq!(stdout(&o).lines().count(), 4);
    let o = env.run(&["audit"]);
    expect_code(&o, 0, "audit");
    let table = stdout(&o);
    assert!(
        table.contains("purge") && table.contains("export --remove"),
        "{table}"
    );

    // With --audit-queue, the line is also published there.
    let trail = env
        .declare_queue("audit.trail", lapin::types::FieldTable::default())
        .await;
    let o = env.run(&["--audit-queue", &trail, "replay"]);
    expect_code(&o, 0, "replay --audit-queue");
    let published = drain(&trail).await;
    assert_eq!(published.len(), 1, "one line published");
    let v: serde_json::Value =
        serde_json::from_slice(&published[0].body).expect("the published line is JSON");
    assert_eq!(v["command"], "replay");
    assert_eq!(v["moved"], 0);
    let _ = std::fs::remove_file(env.audit_log());
    let _ = std::fs::remove_file(&export);
}
