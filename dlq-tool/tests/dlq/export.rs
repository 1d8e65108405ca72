//! `export` and `import`: every header type and property round-trips exactly, and an
//! `export --remove` killed mid-way loses nothing.

use crate::util::*;
use crate::{plain, ttl_queue_args};
use courier::envelope::{now_millis, Reason};
use courier::publisher::Outgoing;
use lapin::types::{AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable};
use lapin::BasicProperties;
use std::collections::{HashMap, HashSet};
use std::process::Stdio;
use std::time::{Duration, Instant};

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
        .spawn_within(CHILD_DEADLINE);
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
