//! The HTTP endpoint failing: down longer than every retry tier (so messages end in the DLQ),
//! or hanging (the handler timeout frees the slot).

use crate::harness::*;
use crate::util::*;
use crate::{report, LONG};
use courier::envelope;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[tokio::test]
async fn endpoint_down_longer_than_every_tier_ends_in_the_dlq() {
    let t = TestTopology::fast("f.down").await;
    let closed = free_port();
    let endpoint = format!("http://127.0.0.1:{closed}/deliver");
    let mut w = WorkerProc::spawn(&t, &amqp_url(), &endpoint, &["--concurrency", "10"]);
    let p = publisher().await;
    let ids = publish_jobs(&p, &t.exchange(), "email", "down", 50).await;
    let start = Instant::now();
    wait_depth(&t.dlq(), 50, LONG).await;
    let dead = drain(&t.dlq()).await;
    let got: Vec<String> = dead
        .iter()
        .filter(|m| header_str(m, envelope::REASON).as_deref() == Some("max-attempts"))
        .filter_map(|m| envelope::message_id(&m.delivery.properties).map(str::to_owned))
        .collect();
    let (lost, dup) = report(
        "HTTP endpoint down longer than all retry tiers",
        "endpoint port closed; 5 attempts over 100 ms/400 ms tiers",
        &ids,
        &got,
        start.elapsed(),
    );
    assert_eq!(
        (lost, dup),
        (0, 0),
        "every message dead-lettered exactly once"
    );
    assert!(w.term().await.success());
}

#[tokio::test]
async fn hanging_endpoint_times_out_without_leaking_slots() {
    let t = TestTopology::fast("f.hang").await;
    let sink = Sink::start_with(
        Arc::new(|_| (200, vec![])),
        Arc::new(|r: &Received| {
            if r.message_id.starts_with("hang") {
                Duration::from_secs(30)
            } else {
                Duration::ZERO
            }
        }),
    )
    .await;
    let mut w = WorkerProc::spawn(
        &t,
        &amqp_url(),
        &sink.url,
        &["--concurrency", "4", "--handler-timeout", "300ms"],
    );
    let p = publisher().await;
    let hang = publish_jobs(&p, &t.exchange(), "email", "hang", 8).await;
    let ok = publish_jobs(&p, &t.exchange(), "email", "ok", 40).await;
    let start = Instant::now();
    wait_depth(&t.dlq(), 8, LONG).await;
    sink.wait_for(LONG, "the ok messages", |r| {
        ok.iter().all(|id| r.iter().any(|x| &x.message_id == id))
    })
    .await;
    let dead: Vec<String> = drain(&t.dlq())
        .await
        .iter()
        .filter(|m| {
            header_str(m, envelope::ERROR)
                .unwrap_or_default()
                .contains("timed out")
        })
        .filter_map(|m| envelope::message_id(&m.delivery.properties).map(str::to_owned))
        .collect();
    let (lost, dup) = reconcile(&hang, &dead);
    record(Row {
        fault: "HTTP endpoint hangs".into(),
        injection: "no response; --handler-timeout 300ms, concurrency 4".into(),
        sent: hang.len() + ok.len(),
        lost,
        duplicated: dup,
        recovery_secs: start.elapsed().as_secs_f64(),
    });
    assert_eq!((lost, dup), (0, 0));
    assert!(w.term().await.success());
}
