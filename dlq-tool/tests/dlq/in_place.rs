//! What a pass does not take stays where it was: a pass that selects nothing, or stops at
//! `--limit`, gives the messages back in place (requeued, never republished to the tail), and a
//! pass holding more than it can give back in place still keeps the order by putting back.

use crate::util::*;
use courier::envelope::{self, now_millis, Reason};
use courier::publisher::Outgoing;

/// `n` worker dead letters, every `every`-th one `malformed`, the others `max-attempts`.
fn seed(env: &Env, n: usize, every: usize) -> Vec<Outgoing> {
    let now = now_millis();
    (0..n)
        .map(|i| {
            let (reason, error) = if i % every == 0 {
                (Reason::Malformed, "body is not valid JSON")
            } else {
                (Reason::MaxAttempts, "HTTP 503 Service Unavailable")
            };
            worker_dead_letter(env, &format!("i-{i:04}"), "email", reason, error, now)
        })
        .collect()
}

/// Every message of `queue` is an original, never a republished copy: the dump taken before
/// the pass set their `redelivered` flag, which a copy would not have.
async fn assert_none_republished(queue: &str, what: &str) {
    let copies: Vec<String> = redelivered(queue)
        .await
        .into_iter()
        .filter(|(_, r)| !r)
        .map(|(id, _)| id)
        .collect();
    assert!(
        copies.is_empty(),
        "{what}: republished to the tail: {copies:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_that_selects_nothing_rewrites_nothing() {
    const N: usize = 45;
    let env = Env::new("nothing").await;
    let p = publisher().await;
    publish_all(&p, seed(&env, N, 3)).await;
    p.close().await;
    let before = dump(&env.dlq()).await;
    assert_eq!(before.len(), N);

    let file = TempFile::new("nothing");
    for (args, summary) in [
        (
            vec![
                "export",
                "--out",
                file.path(),
                "--remove",
                "--older-than",
                "7days",
            ],
            "exported and removed 0 of 45",
        ),
        (vec!["replay", "--reason", "permanent"], "replayed 0 of 45"),
        (
            vec!["purge", "--yes", "--from-queue", "nowhere"],
            "purged 0 of 45",
        ),
    ] {
        let o = env.run(&args);
        expect_code(&o, 0, &args.join(" "));
        let out = stdout(&o);
        assert!(out.contains(summary), "{args:?}: {out}");
        assert!(!out.contains("put back"), "{args:?}: {out}");
        assert!(
            out.contains(&format!("left in place in {}: 45", env.dlq())),
            "{args:?}: {out}"
        );
        assert!(
            dump(&env.dlq()).await == before,
            "{args:?}: the queue is exactly as it was, in order"
        );
        assert_none_republished(&env.dlq(), &args.join(" ")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_stops_the_pass_and_leaves_the_rest_in_place() {
    const N: usize = 30;
    let env = Env::new("limit").await;
    let p = publisher().await;
    publish_all(&p, seed(&env, N, 3)).await;
    p.close().await;
    let before = dump(&env.dlq()).await;

    // The 3rd malformed message is the 7th in the queue: the pass stops there.
    let o = env.run(&["purge", "--reason", "malformed", "--limit", "3", "--yes"]);
    expect_code(&o, 0, "purge --limit 3");
    let out = stdout(&o);
    assert!(out.contains("purged 3 of 30"), "{out}");
    assert!(out.contains("stopped at --limit after 7 messages"), "{out}");
    assert!(
        out.contains(&format!("left in place in {}: 4", env.dlq())),
        "{out}"
    );
    assert!(!out.contains("put back"), "{out}");
    let gone = ["i-0000", "i-0003", "i-0006"];
    let after = dump(&env.dlq()).await;
    let want: Vec<Stored> = before
        .iter()
        .filter(|m| !gone.contains(&m.id().as_str()))
        .cloned()
        .collect();
    assert!(
        after == want,
        "the rest stays in order: {:?}",
        after.iter().map(Stored::id).collect::<Vec<_>>()
    );
    assert_none_republished(&env.dlq(), "purge --limit").await;

    // An export without --remove keeps every message; with --limit it stops there too.
    let file = TempFile::new("limit");
    let o = env.run(&["export", "--out", file.path(), "--limit", "5"]);
    expect_code(&o, 0, "export --limit 5");
    assert!(stdout(&o).contains("exported 5 of 27"), "{}", stdout(&o));
    assert!(stdout(&o).contains("5 line(s) written"), "{}", stdout(&o));
    assert!(
        dump(&env.dlq()).await == after,
        "export (copy) keeps the queue as it was"
    );
    assert_none_republished(&env.dlq(), "export --limit").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_holding_too_many_puts_them_back_in_order() {
    // More unselected messages than a pass holds for giving back in place (1,024).
    const N: usize = 1600;
    let env = Env::new("hold").await;
    let p = publisher().await;
    publish_all(&p, seed(&env, N, 4)).await;
    p.close().await;
    let before = dump(&env.dlq()).await;

    let o = env.run(&["purge", "--reason", "malformed", "--yes"]);
    expect_code(&o, 0, "purge past the hold");
    let out = stdout(&o);
    assert!(out.contains("purged 400 of 1,600"), "{out}");
    assert!(
        out.contains(&format!("put back in {}, in order: 1,200", env.dlq())),
        "{out}"
    );
    let after = dump(&env.dlq()).await;
    let want: Vec<Stored> = before
        .iter()
        .filter(|m| str_header(m, envelope::REASON).as_deref() == Some("max-attempts"))
        .cloned()
        .collect();
    let first_difference = after.iter().zip(&want).position(|(a, w)| a != w);
    assert!(
        after == want,
        "unselected messages keep their order: {} vs {} messages, first difference at {first_difference:?}: {:?}",
        after.len(),
        want.len(),
        first_difference.map(|i| (
            after[i.saturating_sub(3)..(i + 5).min(after.len())].iter().map(Stored::id).collect::<Vec<_>>(),
            want[i.saturating_sub(3)..(i + 5).min(want.len())].iter().map(Stored::id).collect::<Vec<_>>(),
        ))
    );

    // An export that keeps everything past the hold: the queue ends as it was, in order.
    let file = TempFile::new("hold");
    let o = env.run(&["export", "--out", file.path()]);
    expect_code(&o, 0, "export (copy) past the hold");
    assert!(
        stdout(&o).contains("exported 1,200 of 1,200"),
        "{}",
        stdout(&o)
    );
    assert!(
        dump(&env.dlq()).await == after,
        "the queue keeps every message, in order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_on_a_large_queue_takes_nothing_past_its_last_selected_message() {
    // More than a pass can hold for giving back in place (1,024): without counting first, a
    // pass that selects nothing, or only the head, would rewrite the rest to the tail.
    const N: usize = 1600;
    let env = Env::new("large-nothing").await;
    let p = publisher().await;
    // i-0000..i-0009 are malformed, the 1,590 behind them are not.
    let msgs = seed(&env, N, 1)
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            if i < 10 {
                m
            } else {
                worker_dead_letter(
                    &env,
                    &format!("i-{i:04}"),
                    "email",
                    Reason::MaxAttempts,
                    "HTTP 503 Service Unavailable",
                    now_millis(),
                )
            }
        })
        .collect();
    publish_all(&p, msgs).await;
    p.close().await;
    let before = dump(&env.dlq()).await;

    // Selects nothing: not one message is taken.
    let file = TempFile::new("large-nothing");
    let o = env.run(&[
        "export",
        "--out",
        file.path(),
        "--remove",
        "--older-than",
        "7days",
    ]);
    expect_code(&o, 0, "export --remove --older-than 7days");
    let out = stdout(&o);
    assert!(out.contains("exported and removed 0 of 1,600"), "{out}");
    assert!(!out.contains("put back"), "{out}");
    assert!(
        out.contains(&format!("left in place in {}: 1,600", env.dlq())),
        "{out}"
    );
    assert!(dump(&env.dlq()).await == before, "the queue is as it was");
    assert_none_republished(&env.dlq(), "a pass that selects nothing").await;

    // Selects the first 10: it stops after the 10th, the 1,590 behind are never taken.
    let o = env.run(&["purge", "--reason", "malformed", "--yes"]);
    expect_code(&o, 0, "purge the head");
    let out = stdout(&o);
    assert!(out.contains("purged 10 of 1,600"), "{out}");
    assert!(
        out.contains("stopped after 10 messages, at the last one selected"),
        "{out}"
    );
    assert!(!out.contains("put back"), "{out}");
    assert!(
        dump(&env.dlq()).await == before[10..],
        "the rest is as it was"
    );
    assert_none_republished(&env.dlq(), "a pass that stops at its last selected message").await;
}
