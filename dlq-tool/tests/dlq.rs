//! `courier-dlq` against a real RabbitMQ (AMQP_URL, default guest@127.0.0.1; the management API
//! at COURIER_TEST_MANAGEMENT_URL for the connection-loss test). Every test works under its own
//! prefix (`t.dlq.<name>.<pid>...`) and removes what it declared, so the tests run in parallel
//! with each other and with the rest of the suite.

mod util;

use courier::deadletter::X_DEATH;
use courier::envelope::{self, now_millis, Reason};
use courier::publisher::Outgoing;
use lapin::types::{AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable};
use lapin::BasicProperties;
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};
use util::*;

fn ttl_queue_args(env: &Env) -> FieldTable {
    let mut a = FieldTable::default();
    a.insert("x-message-ttl".into(), AMQPValue::LongLongInt(0));
    a.insert("x-dead-letter-exchange".into(), long(&env.dlx()));
    a
}

fn plain(routing_key: &str, id: &str) -> Outgoing {
    Outgoing {
        exchange: String::new(),
        routing_key: routing_key.to_owned(),
        properties: BasicProperties::default()
            .with_message_id(id.into())
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_timestamp(1_700_000_000),
        body: format!(r#"{{"id":"{id}"}}"#).into_bytes(),
    }
}

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

    let o = env.run(&["stats", "--json", "--from-queue", "notifications.sms"]);
    expect_code(&o, 0, "stats --json");
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("one JSON object");
    assert_eq!(v["total"], 31);
    assert_eq!(v["matched"], 15);
    assert_eq!(v["sampled"], false);
    assert_eq!(v["by_reason"]["permanent"], 5);

    let o = env.run(&["stats", "--limit", "5"]);
    expect_code(&o, 0, "stats --limit 5");
    assert!(stdout(&o).contains("sampled 5 of 31"), "{}", stdout(&o));

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
    assert!(stdout(&o).contains("would stay: 28"), "{}", stdout(&o));
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
        .spawn()
        .expect("spawn");
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
    assert!(stdout(&o).contains("put back in"), "{}", stdout(&o));
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

    // --limit after unselected messages were put back: the pass goes on to restore the order.
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

fn every_header_type() -> FieldTable {
    let mut nested = FieldTable::default();
    nested.insert("level".into(), AMQPValue::ShortInt(-2));
    nested.insert(
        "list".into(),
        AMQPValue::FieldArray(FieldArray::from(vec![long("a"), AMQPValue::LongInt(7)])),
    );
    let mut t = FieldTable::default();
    let mut put = |k: &str, v: AMQPValue| {
        t.insert(k.into(), v);
    };
    put("t-bool", AMQPValue::Boolean(true));
    put("t-i8", AMQPValue::ShortShortInt(-100));
    put("t-u8", AMQPValue::ShortShortUInt(200));
    put("t-i16", AMQPValue::ShortInt(-30_000));
    put("t-u16", AMQPValue::ShortUInt(60_000));
    put("t-i32", AMQPValue::LongInt(-2_000_000_000));
    put("t-u32", AMQPValue::LongUInt(4_000_000_000));
    put("t-i64", AMQPValue::LongLongInt(-9_000_000_000_000));
    put("t-f32", AMQPValue::Float(0.1));
    put("t-f64", AMQPValue::Double(-1.0e-300));
    put(
        "t-decimal",
        AMQPValue::DecimalValue(DecimalValue {
            scale: 2,
            value: 12_345,
        }),
    );
    put("t-string", long("héllo \"world\"\n"));
    put(
        "t-binary-string",
        AMQPValue::LongString(vec![0xff, 0xfe, 0x00].into()),
    );
    put("t-timestamp", AMQPValue::Timestamp(1_700_000_123));
    put(
        "t-bytes",
        AMQPValue::ByteArray(ByteArray::from(vec![0u8, 1, 2, 254, 255])),
    );
    put("t-void", AMQPValue::Void);
    put("t-table", AMQPValue::FieldTable(nested));
    put(
        "t-array",
        AMQPValue::FieldArray(FieldArray::from(vec![
            AMQPValue::Timestamp(1),
            AMQPValue::Boolean(false),
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::ShortShortInt(1)])),
        ])),
    );
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_then_import_reproduces_messages_exactly() {
    let mut env = Env::new("roundtrip").await;
    let ttl = env.declare_queue("ttl", ttl_queue_args(&env)).await;
    let user = parsed_url().username().to_owned();
    let p = publisher().await;
    let full = BasicProperties::default()
        .with_message_id("rt-full".into())
        .with_content_type("application/json".into())
        .with_content_encoding("identity".into())
        .with_delivery_mode(2)
        .with_priority(7)
        .with_correlation_id("corr-1".into())
        .with_reply_to("replies".into())
        .with_expiration("86400000".into())
        .with_timestamp(1_700_000_000)
        .with_type("notification".into())
        .with_user_id(user.as_str().into())
        .with_app_id("billing".into())
        .with_headers(every_header_type());
    let msgs = vec![
        Outgoing {
            exchange: String::new(),
            routing_key: env.dlq(),
            properties: full,
            body: br#"{"to": "a@example.com",  "n": 1}"#.to_vec(),
        },
        Outgoing {
            exchange: String::new(),
            routing_key: env.dlq(),
            properties: BasicProperties::default()
                .with_message_id("rt-binary".into())
                .with_delivery_mode(1),
            body: vec![0, 159, 146, 150, 255, b'\n', 0],
        },
        Outgoing {
            exchange: String::new(),
            routing_key: env.dlq(),
            properties: BasicProperties::default()
                .with_message_id("rt-empty".into())
                .with_headers(FieldTable::default()),
            body: Vec::new(),
        },
        worker_dead_letter(
            &env,
            "rt-worker",
            "email",
            Reason::Permanent,
            "HTTP 410 Gone",
            now_millis(),
        ),
    ];
    publish_all(&p, msgs).await;
    publish_all(&p, vec![plain(&ttl, "rt-broker")]).await;
    p.close().await;
    wait_depth(&env.dlq(), 5, Duration::from_secs(10)).await;
    let before = dump(&env.dlq()).await;

    let file = TempFile::new("roundtrip");
    let o = env.run(&["export", "--out", file.path(), "--remove"]);
    expect_code(&o, 0, "export --remove");
    assert!(stdout(&o).contains("5 line(s) written"), "{}", stdout(&o));
    assert_eq!(
        depth(&env.dlq()).await,
        0,
        "removed after they were on disk"
    );
    let text = std::fs::read_to_string(&file.0).expect("file");
    assert_eq!(text.lines().count(), 5);
    for want in [
        r#""t-timestamp":{"type":"timestamp","value":1700000123}"#,
        r#""t-bytes":{"type":"bytes","base64":"AAEC/v8="}"#,
        r#""body_encoding":"base64""#,
        r#""type":"u32""#,
    ] {
        assert!(text.contains(want), "export lacks {want}:\n{text}");
    }
    let o = env.run(&["export", "--out", file.path()]);
    expect_code(&o, 1, "export to an existing file");
    assert!(stderr(&o).contains("already exists"), "{}", stderr(&o));

    let o = env.run(&["import", file.path()]);
    expect_code(&o, 0, "import");
    assert!(stdout(&o).contains("imported 5 of 5"), "{}", stdout(&o));
    let after = dump(&env.dlq()).await;
    assert_eq!(after.len(), 5);
    for (a, b) in after.iter().zip(&before) {
        assert_eq!(a.body, b.body, "{}: body bytes", b.id());
        assert_eq!(a.props, b.props, "{}: properties and header types", b.id());
    }

    // Export without --remove is a copy: the queue keeps everything, in order.
    let copy = TempFile::new("roundtrip-copy");
    let o = env.run(&["export", "--out", copy.path()]);
    expect_code(&o, 0, "export (copy)");
    assert!(
        dump(&env.dlq()).await == before,
        "export without --remove leaves the queue as it was"
    );
    assert_eq!(
        std::fs::read_to_string(&copy.0)
            .expect("file")
            .lines()
            .count(),
        5
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_remove_killed_midway_loses_nothing() {
    const N: usize = 20_000;
    let env = Env::new("kill").await;
    let p = publisher().await;
    let msgs = (0..N)
        .map(|i| plain(&env.dlq(), &format!("k-{i}")))
        .collect();
    publish_all(&p, msgs).await;
    p.close().await;
    wait_depth(&env.dlq(), N as u32, Duration::from_secs(20)).await;

    let file = TempFile::new("kill");
    let mut child = env
        .command(&[
            "export",
            "--out",
            file.path(),
            "--remove",
            "--rate",
            "5000/s",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn export");
    // Wait until some lines are on disk, then kill -9 in the middle of the pass.
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::metadata(&file.0).map(|m| m.len()).unwrap_or(0) < 200_000 {
        assert!(Instant::now() < deadline, "export wrote nothing");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    child.kill().expect("SIGKILL");
    let _ = child.wait();

    let text = std::fs::read(&file.0).expect("file");
    let complete = text.split(|b| *b == b'\n').collect::<Vec<_>>();
    let (lines, tail) = complete.split_at(complete.len() - 1);
    let mut in_file: HashMap<String, usize> = HashMap::new();
    for l in lines {
        let v: serde_json::Value = serde_json::from_slice(l).expect("every complete line parses");
        *in_file
            .entry(
                v["properties"]["message_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
            .or_insert(0) += 1;
    }
    let in_queue: HashSet<String> = drain(&env.dlq()).await.iter().map(Stored::id).collect();
    assert!(
        !in_file.is_empty() && !in_queue.is_empty(),
        "the kill landed mid-way ({} in file, {} in queue)",
        in_file.len(),
        in_queue.len()
    );
    let missing: Vec<String> = (0..N)
        .map(|i| format!("k-{i}"))
        .filter(|id| !in_file.contains_key(id) && !in_queue.contains(id))
        .collect();
    assert!(
        missing.is_empty(),
        "lost {} messages, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert!(in_file.len() + in_queue.len() >= N);
    eprintln!(
        "killed mid-way: {} lines in the file ({} bytes of unfinished line), {} in the queue, {} in both",
        lines.len(),
        tail[0].len(),
        in_queue.len(),
        in_queue.iter().filter(|id| in_file.contains_key(*id)).count()
    );
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_name_the_object_the_value_and_the_fix() {
    let env = Env::new("errors").await;

    let o = env.run(&["list", "--queue", "no-such-dlq"]);
    expect_code(&o, 1, "missing queue");
    assert!(
        stderr(&o).contains("queue 'no-such-dlq' does not exist")
            && stderr(&o).contains("courier topology apply"),
        "{}",
        stderr(&o)
    );

    let o = env.run(&["replay", "--older-than", "3 fortnights"]);
    expect_code(&o, 2, "bad --older-than");
    let e = stderr(&o);
    assert!(
        e.contains("--older-than")
            && e.contains("3 fortnights")
            && e.contains("expected a duration"),
        "{e}"
    );
    let o = env.run(&["stats", "--reason", "boom"]);
    expect_code(&o, 2, "bad --reason");
    assert!(stderr(&o).contains("max-attempts"), "{}", stderr(&o));
    let o = env.run(&["list", "--header", "tenant"]);
    expect_code(&o, 2, "bad --header");
    let o = env.run(&["replay", "--rate", "0/s"]);
    expect_code(&o, 2, "bad --rate");
    assert!(stderr(&o).contains("--rate"), "{}", stderr(&o));

    let o = env
        .command(&["stats"])
        .env("AMQP_URL", "amqp://guest:s3cret-pw@127.0.0.1:1/%2f")
        .output()
        .expect("runs");
    expect_code(&o, 1, "unreachable broker");
    assert!(
        stderr(&o).contains("cannot connect to amqp://guest:***@127.0.0.1:1/"),
        "{}",
        stderr(&o)
    );
    assert!(
        !stderr(&o).contains("s3cret-pw"),
        "password leaked: {}",
        stderr(&o)
    );

    // A malformed line: file, line number and why; nothing is published.
    let good = r#"{"format":"courier-dlq/1","properties":{"message_id":"i-1"},"body":"{}"}"#;
    let bad = r#"{"format":"courier-dlq/1","properties":{"message_id":"i-3"},"headers":{"n":{"type":"i8","value":999}},"body":"{}"}"#;
    let file = TempFile::new("malformed");
    std::fs::write(&file.0, format!("{good}\n{good}\n{bad}\n{good}\n")).expect("write");
    let o = env.run(&["import", file.path()]);
    expect_code(&o, 1, "malformed import line");
    let e = stderr(&o);
    assert!(
        e.contains(&format!(
            "{}:3: headers.n: 999 does not fit in i8",
            file.path()
        )),
        "{e}"
    );
    assert!(e.contains("nothing was imported"), "{e}");
    assert_eq!(depth(&env.dlq()).await, 0);

    // An unfinished last line (an export killed mid-write) is skipped with a warning.
    std::fs::write(
        &file.0,
        format!("{good}\n{good}\n{{\"format\":\"courier-dl"),
    )
    .expect("write");
    let o = env.run(&["import", file.path()]);
    expect_code(&o, 0, "import with an unfinished last line");
    assert!(
        stderr(&o).contains(":3: unfinished last line skipped"),
        "{}",
        stderr(&o)
    );
    assert!(stdout(&o).contains("imported 2 of 2"), "{}", stdout(&o));
    assert_eq!(depth(&env.dlq()).await, 2);

    let o = env.run(&["import", file.path(), "--to-queue", "no-such-queue"]);
    expect_code(&o, 1, "import to a missing queue");
    assert!(stderr(&o).contains("no-such-queue"), "{}", stderr(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_are_exclusive_and_a_lost_connection_loses_nothing() {
    const N: usize = 3000;
    let env = Env::new("connloss").await;
    let p = publisher().await;
    let now = now_millis();
    let msgs = (0..N)
        .map(|i| {
            worker_dead_letter(
                &env,
                &format!("c-{i}"),
                "email",
                Reason::MaxAttempts,
                "HTTP 503",
                now,
            )
        })
        .collect();
    publish_all(&p, msgs).await;
    p.close().await;

    let mut child = env
        .command(&["replay", "--rate", "150/s"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn replay");
    let email = env.queue("notifications.email");
    let deadline = Instant::now() + Duration::from_secs(20);
    while depth(&email).await < 50 {
        assert!(Instant::now() < deadline, "replay did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A second tool cannot interleave with the running pass.
    let o = env.run(&["list"]);
    expect_code(&o, 1, "list during a pass");
    assert!(
        stderr(&o).contains("in use by another consumer"),
        "{}",
        stderr(&o)
    );

    // Cut both of the pass's connections (consumer and publisher) under it.
    // The management API lists a new connection only after its next statistics round (up to
    // ~5 s), so keep asking while the (rate-limited) pass runs.
    let needle = format!("courier-dlq replay {}", env.dlq());
    let deadline = Instant::now() + Duration::from_secs(15);
    while close_connections(&needle).await == 0 {
        assert!(
            Instant::now() < deadline,
            "the pass's connections never showed up in the management API"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // A tool that hangs after losing its connection must fail the test, not stall the suite.
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("courier-dlq did not exit within 60 s of losing its connections");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = child.wait_with_output().expect("wait");
    assert_eq!(
        out.status.code(),
        Some(1),
        "the pass reports the failure: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let in_dlq: HashSet<String> = drain(&env.dlq()).await.iter().map(Stored::id).collect();
    let delivered: HashSet<String> = drain(&email).await.iter().map(Stored::id).collect();
    let lost: Vec<String> = (0..N)
        .map(|i| format!("c-{i}"))
        .filter(|id| !in_dlq.contains(id) && !delivered.contains(id))
        .collect();
    assert!(lost.is_empty(), "lost {:?}", &lost[..lost.len().min(5)]);
    assert!(!in_dlq.is_empty() && !delivered.is_empty(), "cut mid-way");
}
