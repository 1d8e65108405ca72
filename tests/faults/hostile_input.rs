//! Hostile input: non-JSON and invalid UTF-8 bodies, a 50 MiB body, bad `x-courier-attempts`,
//! priority 200, no `message_id`, a `reply_to` that routes nowhere; the worker never stalls.

use crate::harness::*;
use crate::util::*;
use crate::LONG;
use courier::envelope;
use std::time::Instant;

#[tokio::test]
async fn hostile_input_gets_clear_outcomes_and_never_stalls_the_worker() {
    use lapin::types::{AMQPValue, FieldTable};
    use lapin::BasicProperties;
    let t = TestTopology::fast("f.hostile").await;
    let sink = Sink::ok().await;
    let mut w = WorkerProc::spawn(&t, &amqp_url(), &sink.url, &["--concurrency", "4"]);
    let conn = parsed_url().connect("hostile").await.expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(Default::default())
        .await
        .expect("confirms");
    let ex = t.exchange();
    let base = |id: &str| {
        BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(id.into())
    };
    let hdr = |k: &str, v: AMQPValue| {
        let mut h = FieldTable::default();
        h.insert(k.into(), v);
        h
    };
    let big = format!("{{\"blob\":\"{}\"}}", "a".repeat(50 << 20));
    let cases: Vec<(&str, Vec<u8>, BasicProperties)> = vec![
        ("not-json", b"<html>".to_vec(), base("not-json")),
        ("bad-utf8", vec![0xc3, 0x28, 0xff], base("bad-utf8")),
        ("huge-body", big.into_bytes(), base("huge-body")),
        (
            "attempts-string",
            b"{}".to_vec(),
            base("attempts-string").with_headers(hdr(
                envelope::ATTEMPTS,
                AMQPValue::LongString("many".into()),
            )),
        ),
        (
            "attempts-negative",
            b"{}".to_vec(),
            base("attempts-negative")
                .with_headers(hdr(envelope::ATTEMPTS, AMQPValue::LongLongInt(-7))),
        ),
        (
            "attempts-huge",
            b"{}".to_vec(),
            base("attempts-huge")
                .with_headers(hdr(envelope::ATTEMPTS, AMQPValue::LongLongInt(i64::MAX))),
        ),
        (
            "attempts-table",
            b"{}".to_vec(),
            base("attempts-table").with_headers(hdr(
                envelope::ATTEMPTS,
                AMQPValue::FieldTable(FieldTable::default()),
            )),
        ),
        (
            "priority-200",
            b"{}".to_vec(),
            base("priority-200").with_priority(200),
        ),
        (
            "no-id",
            b"{}".to_vec(),
            BasicProperties::default().with_delivery_mode(2),
        ),
        (
            "reply-nowhere",
            b"{}".to_vec(),
            base("reply-nowhere")
                .with_reply_to("no-such-queue-anywhere".into())
                .with_correlation_id("c".into()),
        ),
    ];
    let sent = cases.len() + 1;
    for (_, body, props) in cases {
        ch.basic_publish(
            ex.as_str().into(),
            "email".into(),
            Default::default(),
            &body,
            props,
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    }
    let _ = conn.close(200, "done".into()).await;
    let p = publisher().await;
    publish_jobs(&p, &ex, "email", "normal", 1).await;
    let start = Instant::now();
    let delivered_expected = [
        "huge-body",
        "attempts-string",
        "attempts-negative",
        "attempts-huge",
        "attempts-table",
        "priority-200",
        "reply-nowhere",
        "normal-0",
    ];
    sink.wait_for(LONG, "every deliverable message", |r| {
        delivered_expected
            .iter()
            .all(|id| r.iter().any(|x| x.message_id == *id))
    })
    .await;
    wait_depth(&t.dlq(), 3, LONG).await;
    let dead = drain(&t.dlq()).await;
    let reasons: Vec<(String, String)> = dead
        .iter()
        .map(|m| {
            (
                envelope::message_id(&m.delivery.properties)
                    .unwrap_or("(none)")
                    .to_owned(),
                header_str(m, envelope::REASON).unwrap_or_default(),
            )
        })
        .collect();
    for id in ["not-json", "bad-utf8"] {
        assert!(
            reasons.contains(&(id.to_owned(), "malformed".to_owned())),
            "{id}: {reasons:?}"
        );
    }
    // The id-less message is dead-lettered too, given an id so the DLQ tool can address it.
    assert!(
        dead.iter().any(|m| header_str(m, envelope::ERROR)
            .unwrap_or_default()
            .contains("no message_id")),
        "{reasons:?}"
    );
    let huge = sink
        .all()
        .into_iter()
        .find(|r| r.message_id == "huge-body")
        .expect("huge body delivered");
    assert_eq!(
        huge.body.len(),
        (50 << 20) + 11,
        "50 MiB body delivered intact"
    );
    let accounted = delivered_expected.len() + dead.len();
    record(Row {
        fault: "hostile input".into(),
        injection: "non-JSON, invalid UTF-8, 50 MiB body, bad x-courier-attempts, priority 200, no message_id, reply_to nowhere".into(),
        sent,
        lost: sent - accounted.min(sent),
        duplicated: sink.counts().values().map(|n| n - 1).sum(),
        recovery_secs: start.elapsed().as_secs_f64(),
    });
    assert_eq!(accounted, sent);
    assert!(w.alive(), "worker died: {}", w.logs());
    assert!(!w.logs().contains("panicked"), "{}", w.logs());
    assert!(w.term().await.success());
}
