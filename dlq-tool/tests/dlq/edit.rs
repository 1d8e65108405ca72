//! `edit` (an editor script stands in for a person) and the fixes of `replay`: `--transform`,
//! `--set-header`, `--set-routing-key`, and their `--dry-run` before/after.

use crate::util::*;
use courier::envelope::{now_millis, Reason};
use courier_testkit::sink::Sink;
use courier_testkit::worker::RunningWorker;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Waits until `sink` answered 2xx to `n` requests, and returns those (in arrival order).
async fn delivered(sink: &Sink, n: usize) -> Vec<courier_testkit::sink::Received> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ok = courier_testkit::sink::delivered_in_order(sink);
        if ok.len() >= n {
            return ok;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} delivered within 30s",
            ok.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An executable shell script (the `$EDITOR`), removed on drop.
struct Script(TempFile);

impl Script {
    fn new(body: &str) -> Self {
        let f = TempFile::new("editor");
        let p = f.0.with_extension("sh");
        let f = TempFile(p);
        std::fs::write(&f.0, format!("#!/bin/sh\n{body}\n")).expect("script written");
        std::fs::set_permissions(&f.0, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        Self(f)
    }

    fn path(&self) -> &str {
        self.0.path()
    }
}

fn edit(env: &Env, editor: &Script, args: &[&str]) -> std::process::Output {
    let mut c = env.command(args);
    c.env("EDITOR", editor.path()).env_remove("VISUAL");
    output_within(&mut c, DEFAULT_DEADLINE)
}

async fn seed(env: &Env, ids: &[&str]) {
    let p = publisher().await;
    let now = now_millis();
    let msgs = ids
        .iter()
        .map(|id| worker_dead_letter(env, id, "email", Reason::MaxAttempts, "HTTP 400", now))
        .collect();
    publish_all(&p, msgs).await;
    p.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_message_replaces_the_original_and_is_delivered_with_its_new_body() {
    let env = Env::new("edit").await;
    let _ = std::fs::remove_file(env.audit_log());
    seed(&env, &["ed-1", "ed-2"]).await;

    let fix = Script::new(r#"sed -i 's/user-ed-1@example.com/good@example.com/' "$1""#);
    let o = edit(&env, &fix, &["edit", "ed-1"]);
    expect_code(&o, 0, "edit");
    assert!(stdout(&o).contains("edited ed-1"), "{}", stdout(&o));
    let after = dump(&env.dlq()).await;
    // The untouched message first; the edited copy at the tail, the original gone.
    assert_eq!(
        after.iter().map(Stored::id).collect::<Vec<_>>(),
        ["ed-2", "ed-1"]
    );
    let edited = &after[1];
    assert_eq!(
        edited.body,
        br#"{"to":"good@example.com","text":"hello"}"#.to_vec()
    );
    assert_eq!(int_header(edited, "x-courier-edited"), Some(1));
    assert_eq!(str_header(edited, "tenant").as_deref(), Some("acme"));
    assert_eq!(
        str_header(edited, courier::envelope::REASON).as_deref(),
        Some("max-attempts"),
        "the dead-letter headers are kept"
    );

    // The headers too; the count goes up.
    let fix = Script::new(r#"sed -i 's/"acme"/"beta"/' "$2""#);
    let o = edit(&env, &fix, &["edit", "ed-1", "--headers"]);
    expect_code(&o, 0, "edit --headers");
    let after = dump(&env.dlq()).await;
    let edited = after
        .iter()
        .find(|m| m.id() == "ed-1")
        .expect("still there");
    assert_eq!(after.len(), 2);
    assert_eq!(int_header(edited, "x-courier-edited"), Some(2));
    assert_eq!(str_header(edited, "tenant").as_deref(), Some("beta"));

    // An editor that changes nothing changes nothing.
    let before = dump(&env.dlq()).await;
    let o = edit(&env, &Script::new("true"), &["edit", "ed-1", "--headers"]);
    expect_code(&o, 0, "unchanged edit");
    assert!(stdout(&o).contains("no change"), "{}", stdout(&o));
    assert_eq!(dump(&env.dlq()).await, before);

    // A message that is not there is a clear error.
    let o = edit(&env, &fix, &["edit", "nope"]);
    expect_code(&o, 1, "missing id");
    assert!(
        stderr(&o).contains("message \"nope\" is not among"),
        "{}",
        stderr(&o)
    );

    // Sent on, a worker delivers it to the endpoint with the new body.
    let sink = Sink::ok().await;
    let worker = RunningWorker::http(&env, "notifications.email", &sink);
    worker.wait_ready(Duration::from_secs(15)).await;
    let o = tokio::task::block_in_place(|| env.run(&["replay", "--message-id", "ed-1"]));
    expect_code(&o, 0, "replay");
    let got = delivered(&sink, 1).await;
    assert_eq!(got[0].message_id, "ed-1");
    assert_eq!(
        got[0].body,
        br#"{"to":"good@example.com","text":"hello"}"#.to_vec()
    );
    worker.stop().await;
    assert_eq!(sink.all().len(), 1, "delivered once, nothing else sent");

    // Edit is in the audit trail, with its message id.
    let log = std::fs::read_to_string(env.audit_log()).expect("audit log");
    let edits: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["command"] == "edit")
        .collect();
    assert_eq!(edits.len(), 4, "{log}");
    assert_eq!(edits[0]["filter"]["message_id"], "ed-1");
    assert_eq!(edits[0]["moved"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_edit_changes_nothing_and_says_why() {
    let env = Env::new("edit-invalid").await;
    seed(&env, &["bad-1"]).await;
    let before = dump(&env.dlq()).await;

    let o = edit(
        &env,
        &Script::new(r#"printf '{"to": oops}' > "$1""#),
        &["edit", "bad-1"],
    );
    expect_code(&o, 1, "invalid body");
    let err = stderr(&o);
    assert!(
        err.contains("line 1, column 8: the body is not JSON any more"),
        "{err}"
    );
    assert!(err.contains("nothing was changed"), "{err}");

    let o = edit(
        &env,
        &Script::new(r#"printf '{"tenant": 1.5}' > "$2""#),
        &["edit", "bad-1", "--headers"],
    );
    expect_code(&o, 1, "invalid header");
    assert!(
        stderr(&o).contains("header \"tenant\": 1.5 is not an integer"),
        "{}",
        stderr(&o)
    );

    let after = dump(&env.dlq()).await;
    assert_eq!(after, before, "nothing changed");
    assert_eq!(int_header(&after[0], "x-courier-edited"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transform_replay_fixes_a_batch_and_keeps_what_it_cannot_fix() {
    let env = Env::new("transform").await;
    let _ = std::fs::remove_file(env.audit_log());
    let ids = ["t-0", "t-1", "t-2", "t-3", "t-4"];
    seed(&env, &ids).await;
    // One whose body is not JSON: the transform cannot apply, so it stays.
    let p = publisher().await;
    let mut odd = worker_dead_letter(
        &env,
        "t-odd",
        "email",
        Reason::MaxAttempts,
        "HTTP 400",
        now_millis(),
    );
    odd.body = b"not json".to_vec();
    publish_all(&p, vec![odd]).await;
    p.close().await;
    let before = dump(&env.dlq()).await;
    let program = r#".to = "fixed@example.com""#;

    // A program that does not compile: a usage error naming the flag, nothing touched.
    let o = env.run(&["replay", "--transform", ".to = "]);
    expect_code(&o, 2, "bad program");
    assert!(stderr(&o).contains("--transform"), "{}", stderr(&o));
    let o = env.run(&["replay", "--set-header", "tenant"]);
    expect_code(&o, 2, "bad --set-header");
    assert!(stderr(&o).contains("--set-header"), "{}", stderr(&o));

    // The dry run shows a before/after and changes nothing.
    let o = env.run(&[
        "replay",
        "--dry-run",
        "--transform",
        program,
        "--set-header",
        "tenant=beta",
        "--set-routing-key",
        "sms",
    ]);
    expect_code(&o, 0, "dry run");
    let out = stdout(&o);
    assert!(out.contains("before/after of the first 3"), "{out}");
    assert!(out.contains("--- t-0  → "), "{out}");
    assert!(
        out.contains(r#"-   "to": "user-t-0@example.com","#),
        "{out}"
    );
    assert!(out.contains(r#"+   "to": "fixed@example.com","#), "{out}");
    assert!(out.contains(r#"header tenant: "acme" → "beta""#), "{out}");
    assert!(!out.contains("t-3"), "three at most: {out}");
    assert!(out.contains("--transform fails on them: 1"), "{out}");
    assert_eq!(dump(&env.dlq()).await, before, "a dry run changes nothing");

    let o = env.run(&[
        "replay",
        "--transform",
        program,
        "--set-header",
        "tenant=beta",
        "--set-routing-key",
        "sms",
    ]);
    expect_code(&o, 1, "replay with one that cannot be fixed");
    let out = stdout(&o);
    assert!(out.contains("replayed 5 of 6"), "{out}");
    assert!(
        out.contains("t-odd") && out.contains("--transform: the body is not JSON"),
        "{out}"
    );
    let sms = drain(&env.queue("notifications.sms")).await;
    assert_eq!(sms.iter().map(Stored::id).collect::<Vec<_>>(), ids);
    for m in &sms {
        assert_eq!(
            m.body,
            br#"{"to":"fixed@example.com","text":"hello"}"#.to_vec()
        );
        assert_eq!(str_header(m, "tenant").as_deref(), Some("beta"));
        assert_eq!(int_header(m, "x-courier-replayed"), Some(1));
    }
    assert_eq!(depth(&env.queue("notifications.email")).await, 0);
    let left = dump(&env.dlq()).await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].id(), "t-odd");
    assert_eq!(left[0].body, b"not json".to_vec(), "kept unchanged");

    let log = std::fs::read_to_string(env.audit_log()).expect("audit log");
    let line: serde_json::Value =
        serde_json::from_str(log.lines().last().expect("a line")).expect("json");
    assert_eq!(line["command"], "replay");
    assert_eq!(line["filter"]["transform"], program);
    assert_eq!(line["filter"]["set_routing_key"], "sms");
    assert_eq!(line["filter"]["set_header"][0], "tenant=beta");
    assert_eq!(line["moved"], 5);
    assert_eq!(line["failed"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transform_replay_fixes_malformed_bodies_so_they_are_delivered() {
    let env = Env::new("transform-deliver").await;
    // A publisher bug: `recipient` where the endpoint wants `to`. The endpoint refused each one
    // for good (HTTP 400), so they were dead-lettered at once.
    let ids: Vec<String> = (0..20).map(|i| format!("mal-{i}")).collect();
    let p = publisher().await;
    let msgs = ids
        .iter()
        .map(|id| {
            let mut m = worker_dead_letter(
                &env,
                id,
                "email",
                Reason::Rejected,
                "HTTP 400",
                now_millis(),
            );
            m.body = format!(r#"{{"recipient":"{id}@example.com","text":"hello"}}"#).into_bytes();
            m
        })
        .collect();
    publish_all(&p, msgs).await;
    p.close().await;
    // The endpoint takes a body with a `to` address, and refuses anything else.
    let sink = Sink::start(
        Arc::new(|r| {
            let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
            let ok = body["to"].as_str().is_some_and(|to| to.contains('@'));
            (if ok { 200 } else { 400 }, vec![])
        }),
        Duration::ZERO,
    )
    .await;
    let worker = RunningWorker::http(&env, "notifications.email", &sink);
    worker.wait_ready(Duration::from_secs(15)).await;

    let o = tokio::task::block_in_place(|| {
        env.run(&["replay", "--transform", "{to: .recipient, text}"])
    });
    expect_code(&o, 0, "the transform replay");
    let got = delivered(&sink, ids.len()).await;
    worker.stop().await;
    let mut seen: Vec<String> = got.iter().map(|r| r.message_id.clone()).collect();
    seen.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(seen, expected, "each fixed message delivered once");
    for r in &got {
        let body: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON body");
        assert_eq!(
            body,
            serde_json::json!({"to": format!("{}@example.com", r.message_id), "text": "hello"})
        );
    }
    assert_eq!(sink.all().len(), ids.len(), "none refused, none sent twice");
    assert_eq!(depth(&env.dlq()).await, 0, "none came back");
}
