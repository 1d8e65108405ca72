//! `replay`: each message goes home with its attempts reset, unselected ones stay in order,
//! `--limit` stops early, an unroutable destination keeps the message, and a pass never loops
//! over messages that die again.

use crate::util::*;
use crate::{plain, ttl_queue_args};
use courier::deadletter::X_DEATH;
use courier::envelope::{self, now_millis, Reason};
use courier::publisher::Outgoing;
use std::collections::HashSet;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_sends_each_message_home_with_attempts_reset() {
    let env = Env::new("replay").await;
    let p = publisher().await;
    let now = now_millis();
    let mut msgs = Vec::new();
    for i in 0..5 {
        msgs.push(worker_dead_letter(
            &env,
            &format!("e-{i}"),
            "email",
            Reason::MaxAttempts,
            "HTTP 503",
            now,
        ));
    }
    for i in 0..3 {
        msgs.push(worker_dead_letter(
            &env,
            &format!("s-{i}"),
            "sms",
            Reason::Permanent,
            "HTTP 400",
            now,
        ));
    }
    publish_all(&p, msgs).await;
    p.close().await;
    let before = dump(&env.dlq()).await;

    let o = env.run(&["replay"]);
    expect_code(&o, 0, "replay");
    let out = stdout(&o);
    assert!(out.contains("replayed 8 of 8"), "{out}");
    assert!(
        out.contains(&format!("to {} / email: 5", env.exchange())),
        "{out}"
    );
    assert_eq!(depth(&env.dlq()).await, 0);

    let email = drain(&env.queue("notifications.email")).await;
    let sms = drain(&env.queue("notifications.sms")).await;
    assert_eq!(
        email.iter().map(Stored::id).collect::<Vec<_>>(),
        ["e-0", "e-1", "e-2", "e-3", "e-4"]
    );
    assert_eq!(sms.len(), 3);
    for m in email.iter().chain(&sms) {
        let original = before
            .iter()
            .find(|b| b.id() == m.id())
            .expect("was in the DLQ");
        assert_eq!(m.body, original.body, "body kept");
        assert_eq!(m.props.priority(), &Some(3), "priority kept");
        assert_eq!(m.props.delivery_mode(), &Some(2));
        assert_eq!(m.props.content_type(), original.props.content_type());
        for gone in [
            envelope::ATTEMPTS,
            envelope::REASON,
            envelope::ERROR,
            envelope::DEAD_LETTERED_AT,
            envelope::FIRST_FAILED_AT,
        ] {
            assert!(
                m.header().is_some_and(|h| !h.contains_key(gone)),
                "{gone} dropped"
            );
        }
        assert_eq!(int_header(m, envelope::REPLAYED), Some(1));
        assert_eq!(str_header(m, "tenant").as_deref(), Some("acme"));
        assert_eq!(
            str_header(m, envelope::ORIGINAL_EXCHANGE),
            Some(env.exchange())
        );
        assert!(str_header(m, envelope::ORIGINAL_QUEUE).is_some());
        assert_eq!(envelope::attempts(m.header()), 0, "attempts start again");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unselected_messages_stay_in_order_and_limit_stops_early() {
    let env = Env::new("filters").await;
    let p = publisher().await;
    let now = now_millis();
    let msgs = (0..60)
        .map(|i| {
            let (reason, error) = if i % 3 == 0 {
                (Reason::Permanent, "HTTP 404 Not Found")
            } else {
                (Reason::MaxAttempts, "HTTP 503 Service Unavailable")
            };
            worker_dead_letter(&env, &format!("f-{i:02}"), "email", reason, error, now)
        })
        .collect();
    publish_all(&p, msgs).await;
    p.close().await;
    let before = dump(&env.dlq()).await;

    let o = env.run(&["replay", "--reason", "permanent"]);
    expect_code(&o, 0, "replay --reason");
    assert!(stdout(&o).contains("replayed 20 of 60"), "{}", stdout(&o));
    assert!(stdout(&o).contains("left in place in"), "{}", stdout(&o));
    let after = dump(&env.dlq()).await;
    let expected: Vec<Stored> = before
        .iter()
        .filter(|m| str_header(m, envelope::REASON).as_deref() == Some("max-attempts"))
        .cloned()
        .collect();
    assert_eq!(after.len(), 40);
    assert!(
        after == expected,
        "unselected messages keep order, properties, headers and bodies"
    );
    assert_eq!(depth(&env.queue("notifications.email")).await, 20);

    // --limit with nothing put back yet: the pass stops, the rest is untouched.
    let o = env.run(&["replay", "--limit", "5"]);
    expect_code(&o, 0, "replay --limit");
    assert!(stdout(&o).contains("replayed 5 of 40"), "{}", stdout(&o));
    assert!(stdout(&o).contains("stopped at --limit"), "{}", stdout(&o));
    let rest = dump(&env.dlq()).await;
    assert!(
        rest == after[5..],
        "the untouched rest is exactly as it was"
    );

    // --limit with unselected messages before the matches: they are held, the pass stops at
    // the second match and gives them back in place.
    let o = env.run(&[
        "replay",
        "--error-contains",
        "503",
        "--message-id",
        "f-10,f-20,f-40",
        "--limit",
        "2",
    ]);
    expect_code(&o, 0, "replay --message-id --limit");
    assert!(stdout(&o).contains("replayed 2 of 35"), "{}", stdout(&o));
    let last = dump(&env.dlq()).await;
    let want: Vec<Stored> = rest
        .iter()
        .filter(|m| m.id() != "f-10" && m.id() != "f-20")
        .cloned()
        .collect();
    assert!(
        last == want,
        "order kept: {:?}",
        last.iter().map(Stored::id).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_that_does_not_route_keeps_the_message_and_reports_it() {
    let env = Env::new("unroutable").await;
    let p = publisher().await;
    let now = now_millis();
    let mut msgs: Vec<Outgoing> = (0..3)
        .map(|i| {
            worker_dead_letter(
                &env,
                &format!("ok-{i}"),
                "email",
                Reason::MaxAttempts,
                "HTTP 503",
                now,
            )
        })
        .collect();
    // A routing key nothing is bound to any more, an exchange that was deleted, no origin.
    msgs.push(worker_dead_letter(
        &env,
        "nowhere-0",
        "nowhere",
        Reason::MaxAttempts,
        "HTTP 503",
        now,
    ));
    let mut gone = worker_dead_letter(
        &env,
        "gone-0",
        "email",
        Reason::MaxAttempts,
        "HTTP 503",
        now,
    );
    let mut h = gone.properties.headers().clone().unwrap_or_default();
    h.insert(
        envelope::ORIGINAL_EXCHANGE.into(),
        long(&env.queue("deleted-exchange")),
    );
    gone.properties = gone.properties.with_headers(h);
    msgs.push(gone);
    msgs.push(plain(&env.dlq(), "orphan-0"));
    msgs.push(worker_dead_letter(
        &env,
        "nowhere-1",
        "nowhere",
        Reason::MaxAttempts,
        "HTTP 503",
        now,
    ));
    publish_all(&p, msgs).await;
    p.close().await;
    let before = dump(&env.dlq()).await;

    // The preview says what stays and why; it cannot know that a routing key no longer routes.
    let o = env.run(&["replay", "--dry-run", "--limit", "6"]);
    expect_code(&o, 0, "replay --dry-run");
    let out = stdout(&o);
    for want in [
        "would replay: 4 (--limit reached)\n",
        "would stay: 3\n",
        "  not selected: 0\n",
        "  past --limit: 1\n",
        "  without a recorded origin: 1 (replay them with --to-queue)\n",
        "  for an exchange that does not exist: 1\n",
    ] {
        assert!(out.contains(want), "dry run lacks {want:?}:\n{out}");
    }

    let o = env.run(&["replay", "--window", "64"]);
    expect_code(&o, 1, "replay with unroutable messages");
    let out = stdout(&o);
    assert!(out.contains("replayed 3 of 7"), "{out}");
    assert!(out.contains("could not move, still in"), "{out}");
    for want in [
        "nowhere-0",
        "nowhere-1",
        "unroutable",
        "gone-0",
        "does not exist",
        "orphan-0",
        "no origin",
    ] {
        assert!(out.contains(want), "report lacks {want:?}:\n{out}");
    }
    assert!(
        stderr(&o).contains("4 selected message(s) could not be moved"),
        "{}",
        stderr(&o)
    );
    let after = dump(&env.dlq()).await;
    let expected: Vec<Stored> = before
        .iter()
        .filter(|m| !m.id().starts_with("ok-"))
        .cloned()
        .collect();
    assert!(
        after == expected,
        "they stay unchanged, in order: {:?}",
        after.iter().map(Stored::id).collect::<Vec<_>>()
    );
    assert_eq!(depth(&env.queue("notifications.email")).await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_pass_never_loops_when_replayed_messages_die_again() {
    let mut env = Env::new("loop").await;
    // Messages expire the moment they reach this queue and the broker dead-letters them
    // straight back into the DLQ, while the pass is still running.
    let ttl = env.declare_queue("ttl0", ttl_queue_args(&env)).await;
    let p = publisher().await;
    publish_all(
        &p,
        (0..200).map(|i| plain(&ttl, &format!("b-{i}"))).collect(),
    )
    .await;
    let now = now_millis();
    publish_all(
        &p,
        (0..50)
            .map(|i| {
                worker_dead_letter(
                    &env,
                    &format!("w-{i}"),
                    "email",
                    Reason::MaxAttempts,
                    "HTTP 503",
                    now,
                )
            })
            .collect(),
    )
    .await;
    p.close().await;
    wait_depth(&env.dlq(), 250, Duration::from_secs(10)).await;

    // Broker dead letters go back to their x-death origin (the TTL queue), worker ones via
    // --to-queue to the same queue: all 250 die again during the pass.
    let started = Instant::now();
    let o = env.run(&["replay", "--reason", "expired"]);
    expect_code(&o, 0, "replay broker dead letters");
    assert!(stdout(&o).contains("replayed 200 of 250"), "{}", stdout(&o));
    let o = env.run(&["replay", "--reason", "max-attempts", "--to-queue", &ttl]);
    expect_code(&o, 0, "replay --to-queue");
    assert!(stdout(&o).contains("replayed 50 of 250"), "{}", stdout(&o));
    assert!(started.elapsed() < Duration::from_secs(30), "no loop");
    wait_depth(&env.dlq(), 250, Duration::from_secs(10)).await;

    let all = dump(&env.dlq()).await;
    let ids: HashSet<String> = all.iter().map(Stored::id).collect();
    assert_eq!(ids.len(), 250, "each message exactly once");
    for m in &all {
        assert_eq!(
            int_header(m, envelope::REPLAYED),
            Some(1),
            "{} replayed once",
            m.id()
        );
        let deaths = courier::deadletter::Death::all(m.header());
        assert_eq!(
            deaths.len(),
            1,
            "a fresh x-death: {:?}",
            m.header().map(|h| h.inner().get(X_DEATH))
        );
        assert_eq!(deaths[0].queue, ttl);
        assert_eq!(deaths[0].count, 1);
    }
    // Replay again: the count goes up, so a message that keeps failing is visible.
    let o = env.run(&["replay", "--to-queue", &ttl]);
    expect_code(&o, 0, "second replay");
    assert!(stdout(&o).contains("replayed 250 of 250"), "{}", stdout(&o));
    wait_depth(&env.dlq(), 250, Duration::from_secs(10)).await;
    let again = dump(&env.dlq()).await;
    assert!(again
        .iter()
        .all(|m| int_header(m, envelope::REPLAYED) == Some(2)));
}

/// `--rate 100/s`: arrivals at the destination, timestamped by a real consumer, never exceed
/// the limiter's bound in any one-second window. Only an upper bound: a slow machine replays
/// slower, never faster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_rate_holds_in_every_one_second_window() {
    const N: usize = 300;
    const RATE: usize = 100;
    // What the limiter lets through in any one second (send.rs): RATE permits, plus its burst
    // of 20 ms worth (2 at 100/s).
    const BURST: usize = 2;
    // Arrivals are stamped after the publish, the broker and the consumer: a stall on that path
    // bunches permits granted up to that long apart. Alone, at most 103 arrived in a second
    // here; with the other replay tests running beside it, 108. 150 ms worth of messages
    // absorbs that on a shared machine; a limiter 20 % too generous still fails, and without
    // one all 300 arrive within the first second.
    const JITTER: usize = RATE * 15 / 100;
    const BOUND: usize = RATE + BURST + JITTER;

    let env = Env::new("rate").await;
    let email = env.queue("notifications.email");
    let p = publisher().await;
    let now = now_millis();
    publish_all(
        &p,
        (0..N)
            .map(|i| {
                worker_dead_letter(
                    &env,
                    &format!("r-{i}"),
                    "email",
                    Reason::MaxAttempts,
                    "HTTP 503",
                    now,
                )
            })
            .collect(),
    )
    .await;
    p.close().await;
    wait_depth(&env.dlq(), N as u32, Duration::from_secs(20)).await;

    // Subscribed before the pass starts, so every arrival is stamped as it is pushed.
    let conn = parsed_url()
        .connect("dlq test rate consumer")
        .await
        .expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    let mut consumer = ch
        .basic_consume(
            email.as_str().into(),
            "".into(),
            lapin::options::BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .expect("consume");
    let arrivals = tokio::spawn(async move {
        use futures_util::StreamExt;
        let mut at = Vec::with_capacity(N);
        while at.len() < N {
            match tokio::time::timeout(Duration::from_secs(30), consumer.next()).await {
                Ok(Some(Ok(_))) => at.push(Instant::now()),
                _ => break,
            }
        }
        at
    });

    let mut replay = env.command(&["replay", "--rate", "100/s"]);
    let o = tokio::task::spawn_blocking(move || output_within(&mut replay, DEFAULT_DEADLINE))
        .await
        .expect("replay ran");
    expect_code(&o, 0, "replay --rate 100/s");
    assert!(
        stdout(&o).contains(&format!("replayed {N} of {N}")),
        "{}",
        stdout(&o)
    );
    let at = arrivals.await.expect("consumer task");
    let _ = conn.close(200, "done".into()).await;
    assert_eq!(at.len(), N, "every replayed message arrived");

    // The most arrivals in any window [t, t + 1s): the window starting at some arrival holds
    // the most, so only those are counted.
    let mut most = (0, 0);
    let mut end = 0;
    for start in 0..at.len() {
        while end < at.len() && at[end] - at[start] < Duration::from_secs(1) {
            end += 1;
        }
        if end - start > most.0 {
            most = (end - start, start);
        }
    }
    let (count, start) = most;
    eprintln!(
        "--rate 100/s: at most {count} arrivals in one second (bound {BOUND}); all {N} in {:?}",
        at[N - 1] - at[0]
    );
    assert!(
        count <= BOUND,
        "{count} arrivals within one second from arrival #{start} (+{:?}); \
         --rate 100/s allows at most {BOUND} ({RATE} + burst {BURST} + jitter {JITTER})",
        at[start] - at[0]
    );
}
