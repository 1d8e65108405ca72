//! Hostile input: non-JSON and invalid UTF-8 bodies, a 15 MiB body, bad `x-courier-attempts`,
//! priority 200, no `message_id`, a `reply_to` that routes nowhere; the worker never stalls.

use crate::census::*;
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
    // The largest body every supported broker takes by default: RabbitMQ 4 refuses a message
    // over 16 MiB (`max_message_size`; 3.x allowed 128 MiB) with PRECONDITION_FAILED.
    const HUGE: usize = 15 << 20;
    let big = format!("{{\"blob\":\"{}\"}}", "a".repeat(HUGE));
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
    // Every id the test sent (the id-less message aside), for the census.
    let mut named: Vec<String> = cases
        .iter()
        .filter_map(|(_, _, props)| props.message_id().as_ref().map(|id| id.to_string()))
        .collect();
    named.push("normal-0".into());
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
    let deliverable: Vec<String> = delivered_expected.iter().map(|s| s.to_string()).collect();
    settle(&sink, &deliverable, LONG).await;
    settle_depth(&t.dlq(), 3, LONG).await;
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
    assert_eq!(huge.body.len(), HUGE + 11, "15 MiB body delivered intact");
    assert!(w.alive(), "worker died: {}", w.logs());
    assert!(!w.logs().contains("panicked"), "{}", w.logs());
    let recovery = start.elapsed();
    assert!(w.term().await.success(), "{}", w.logs());
    // The census: every named message delivered or dead-lettered, exactly once; the id-less
    // one is the one dead letter with the error above (it was given an id there).
    let (id_less, named_dead): (Vec<_>, Vec<_>) = dead.iter().partition(|m| {
        header_str(m, envelope::ERROR)
            .unwrap_or_default()
            .contains("no message_id")
    });
    assert_eq!(id_less.len(), 1, "{reasons:?}");
    let mut c = Census::new(&named);
    c.add_sink(&sink);
    c.add(DEAD, named_dead.iter().map(|m| id_of(m)));
    c.add_queues(&t).await;
    assert!(
        c.lost().is_empty() && c.unexpected().is_empty() && c.duplicated() == 0,
        "{}",
        c.summary()
    );
    assert_eq!(
        c.in_place(DEAD),
        2,
        "not-json and bad-utf8: {}",
        c.summary()
    );
    c.row(
        "hostile input",
        "non-JSON, invalid UTF-8, 15 MiB body, bad x-courier-attempts, priority 200, no message_id, reply_to nowhere",
        recovery,
    )
    .passed();
}
