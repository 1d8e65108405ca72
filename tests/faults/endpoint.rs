//! The HTTP endpoint failing: down longer than every retry tier (so messages end in the DLQ),
//! or hanging (the handler timeout frees the slot).

use crate::census::*;
use crate::harness::*;
use crate::util::*;
use crate::LONG;
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
    let recovery = settle_depth(&t.dlq(), 50, LONG).await;
    assert!(w.term().await.success(), "{}", w.logs());
    let dead = drain(&t.dlq()).await;
    let reasons: Vec<Option<String>> = dead
        .iter()
        .map(|m| header_str(m, envelope::REASON))
        .collect();
    assert!(
        reasons.iter().all(|r| r.as_deref() == Some("max-attempts")),
        "every dead letter says max-attempts: {reasons:?}"
    );
    let mut c = Census::new(&ids);
    c.add(DEAD, dead.iter().map(id_of));
    c.add_queues(&t).await;
    assert!(
        c.lost().is_empty() && c.unexpected().is_empty() && c.duplicated() == 0,
        "every message dead-lettered exactly once: {}",
        c.summary()
    );
    assert_eq!(c.in_place(DEAD), ids.len(), "{}", c.summary());
    c.row(
        "HTTP endpoint down longer than all retry tiers",
        "endpoint port closed; 5 attempts over 100 ms/400 ms tiers",
        recovery,
    )
    .passed();
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
    settle_depth(&t.dlq(), 8, LONG).await;
    settle(&sink, &ok, LONG).await;
    let recovery = start.elapsed();
    assert!(w.term().await.success(), "{}", w.logs());
    let dead = drain(&t.dlq()).await;
    for m in &dead {
        let error = header_str(m, envelope::ERROR).unwrap_or_default();
        assert!(error.contains("timed out"), "{}: {error}", id_of(m));
    }
    let mut all = hang.clone();
    all.extend(ok.iter().cloned());
    let mut c = Census::new(&all);
    // A hanging request never answered: the sink recorded it without a 2xx, so only the ok
    // ones count as delivered.
    c.add_sink(&sink);
    c.add(DEAD, dead.iter().map(id_of));
    c.add_queues(&t).await;
    assert!(
        c.lost().is_empty() && c.unexpected().is_empty() && c.duplicated() == 0,
        "{}",
        c.summary()
    );
    assert!(c.elsewhere(&hang, DEAD).is_empty(), "{}", c.summary());
    assert!(c.elsewhere(&ok, DELIVERED).is_empty(), "{}", c.summary());
    assert_eq!(c.in_place(DEAD), hang.len(), "{}", c.summary());
    c.row(
        "HTTP endpoint hangs",
        "no response; --handler-timeout 300ms, concurrency 4",
        recovery,
    )
    .passed();
}
