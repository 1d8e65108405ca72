//! `purge`: refused without `--yes`; with it, only the selected messages go and the rest stay in
//! order.

use crate::util::*;
use courier::envelope::{self, now_millis, Reason};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_refuses_without_yes_and_keeps_the_rest_in_order() {
    let env = Env::new("purge").await;
    let p = publisher().await;
    let now = now_millis();
    let msgs = (0..30)
        .map(|i| {
            let reason = if i % 3 == 0 {
                Reason::Malformed
            } else {
                Reason::Permanent
            };
            worker_dead_letter(&env, &format!("p-{i}"), "sms", reason, "x", now)
        })
        .collect();
    publish_all(&p, msgs).await;
    p.close().await;
    let before = dump(&env.dlq()).await;

    let o = env.run(&["purge", "--reason", "malformed"]);
    expect_code(&o, 2, "purge without --yes");
    assert!(
        stderr(&o).contains("--yes") && stderr(&o).contains("--dry-run"),
        "{}",
        stderr(&o)
    );
    assert_eq!(depth(&env.dlq()).await, 30);

    let o = env.run(&["purge", "--reason", "malformed", "--yes"]);
    expect_code(&o, 0, "purge --yes");
    assert!(stdout(&o).contains("purged 10 of 30"), "{}", stdout(&o));
    let after = dump(&env.dlq()).await;
    let expected: Vec<Stored> = before
        .iter()
        .filter(|m| str_header(m, envelope::REASON).as_deref() == Some("permanent"))
        .cloned()
        .collect();
    assert!(after == expected, "the rest stays, unchanged, in order");
}
