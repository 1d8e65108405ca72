//! A running pass holds every message it took unacknowledged, so the queue shows 0 ready: every
//! other command must still see that the queue is in use and fail, never report an empty DLQ.

use crate::util::*;
use courier::envelope::{now_millis, Reason};
use std::process::Stdio;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_fails_busy_while_a_pass_holds_the_messages() {
    const N: usize = 12;
    let env = Env::new("busy").await;
    let p = publisher().await;
    let now = now_millis();
    let msgs = (0..N)
        .map(|i| {
            worker_dead_letter(
                &env,
                &format!("b-{i:02}"),
                "email",
                Reason::MaxAttempts,
                "HTTP 503",
                now,
            )
        })
        .collect();
    publish_all(&p, msgs).await;
    p.close().await;
    let before = dump(&env.dlq()).await;
    assert_eq!(before.len(), N);

    // A slow pass: one message a minute, so it is still running when the others are tried.
    let slow = TempFile::new("busy-slow");
    let mut pass = env
        .command(&["export", "--out", slow.path(), "--rate", "1/m"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn_within(CHILD_DEADLINE);
    // It holds every message unacknowledged: nothing is ready any more.
    let deadline = Instant::now() + Duration::from_secs(20);
    while depth(&env.dlq()).await != 0 {
        assert!(
            Instant::now() < deadline,
            "the pass never took the messages"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The management API samples queues every few seconds; once it has seen the pass's
    // unacknowledged messages, `stats` can say how many the pass holds.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let q = courier_testkit::queues::broker_queue(&env.dlq())
            .await
            .expect("the DLQ exists");
        if q["messages_unacknowledged"].as_u64() == Some(N as u64) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the management API never saw the pass's messages: {q}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let other = TempFile::new("busy-other");
    for args in [
        vec!["stats"],
        vec!["stats", "--json"],
        vec!["list"],
        vec!["show", "b-03"],
        vec!["replay", "--dry-run"],
        vec!["replay"],
        vec!["purge", "--yes"],
        vec!["purge", "--dry-run"],
        vec!["export", "--out", other.path()],
        vec!["export", "--out", other.path(), "--dry-run"],
    ] {
        let o = env.run(&args);
        expect_code(&o, 1, &args.join(" "));
        let e = stderr(&o);
        assert!(
            e.contains(&format!(
                "queue '{}' is in use by another consumer",
                env.dlq()
            )),
            "{args:?}: {e}"
        );
        if args[0] == "stats" {
            // What the management API saw says how many messages the pass holds.
            assert!(
                e.contains(&format!("0 ready, {N} unacknowledged (management API)")),
                "{e}"
            );
        }
        assert!(
            !stdout(&o).contains("0 messages") && !stdout(&o).contains(" of 0"),
            "{args:?} reported an empty queue: {}",
            stdout(&o)
        );
    }
    assert!(!other.0.exists(), "a refused export leaves no file behind");

    // Kill the pass: the broker gives its messages back in place (the pass held them, it made
    // no copies), and none was lost.
    assert!(
        pass.try_wait().expect("try_wait").is_none(),
        "the slow pass was still running during the checks"
    );
    pass.kill().expect("SIGKILL");
    let _ = pass.wait();
    wait_depth(&env.dlq(), N as u32, Duration::from_secs(10)).await;
    let after = dump(&env.dlq()).await;
    assert!(
        after == before,
        "every message is back, unchanged, in order: {:?}",
        after.iter().map(Stored::id).collect::<Vec<_>>()
    );
}
