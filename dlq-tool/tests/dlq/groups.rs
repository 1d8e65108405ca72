//! `groups`: dead letters grouped by cause under ids that are the same in every run, and
//! `--group ID` acting on exactly one group.

use crate::util::*;
use courier::envelope::{now_millis, Reason};

fn groups_json(env: &Env) -> serde_json::Value {
    let o = env.run(&["groups", "--json"]);
    expect_code(&o, 0, "groups --json");
    serde_json::from_str(stdout(&o).trim()).expect("groups --json prints one JSON object")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_are_stable_and_a_group_is_replayed_alone() {
    let env = Env::new("groups").await;
    let p = publisher().await;
    let now = now_millis();
    let mut msgs = Vec::new();
    // Two causes whose errors differ per message only in what the rule masks.
    for i in 0..6 {
        msgs.push(worker_dead_letter(
            &env,
            &format!("busy-{i}"),
            "email",
            Reason::MaxAttempts,
            &format!("HTTP 503 Service Unavailable: upstream busy, retry in {i}s"),
            now - i64::from(i) * 1000,
        ));
    }
    for i in 0..4 {
        msgs.push(worker_dead_letter(
            &env,
            &format!("nouser-{i}"),
            "sms",
            Reason::Permanent,
            &format!("user 'u{i}@example.com' has no phone number (request 9f8e7d6c5b4a{i:04})"),
            now,
        ));
    }
    publish_all(&p, msgs).await;
    p.close().await;

    let first = groups_json(&env);
    let second = groups_json(&env);
    assert_eq!(
        first["groups"], second["groups"],
        "same dead letters, same groups"
    );
    let groups = first["groups"].as_array().expect("groups");
    assert_eq!(groups.len(), 2, "{first}");
    assert_eq!(groups[0]["count"], 6);
    assert_eq!(groups[0]["cause"], "max-attempts: HTTP 503");
    // The id is the pinned hash of the cause: the same on every machine.
    assert_eq!(groups[0]["id"], "96da919e");
    assert_eq!(groups[1]["count"], 4);
    assert_eq!(
        groups[1]["cause"],
        "permanent: user <str> has no phone number (request <hex>)"
    );
    assert_eq!(
        groups[0]["queues"],
        serde_json::json!([env.queue("notifications.email")])
    );
    let nouser = groups[1]["id"].as_str().expect("id").to_owned();

    // The table says the same, and how to act on a group.
    let o = env.run(&["groups"]);
    expect_code(&o, 0, "groups");
    let out = stdout(&o);
    assert!(out.contains("10 dead letters in 2 groups"), "{out}");
    assert!(
        out.contains(&nouser) && out.contains("--group 96da919e"),
        "{out}"
    );

    // A malformed group id is refused by name.
    let o = env.run(&["replay", "--group", "nothex!!"]);
    expect_code(&o, 2, "replay --group nothex!!");
    assert!(stderr(&o).contains("--group"), "{}", stderr(&o));

    // Acting on one group leaves the other where it is.
    let o = env.run(&["replay", "--group", &nouser]);
    expect_code(&o, 0, "replay --group");
    let sms = drain(&env.queue("notifications.sms")).await;
    let mut replayed: Vec<String> = sms.iter().map(Stored::id).collect();
    replayed.sort();
    assert_eq!(replayed, ["nouser-0", "nouser-1", "nouser-2", "nouser-3"]);
    let left = dump(&env.dlq()).await;
    assert_eq!(left.len(), 6);
    assert!(left.iter().all(|m| m.id().starts_with("busy-")));
    assert!(drain(&env.queue("notifications.email")).await.is_empty());
}
