//! `courier shards`: the per-shard backlog of an ordered sharded channel, as the management API
//! reports it, adds up to what was published and points at the hot shard; once a worker runs,
//! every shard shows it as the active consumer.

use crate::lifecycle::spawn_worker_binary;
use crate::util::*;
use courier::publisher::Outgoing;
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};

const SHARDS: usize = 6;
/// Messages of the one busy key, and of each of the others.
const HOT: usize = 120;
const KEYS: usize = 20;
const PER_KEY: usize = 3;
/// The management API samples a new queue's counts within a few seconds (5 s by default).
const WAIT: Duration = Duration::from_secs(60);

fn keyed(exchange: &str, key: &str, seq: usize) -> Outgoing {
    let mut headers = FieldTable::default();
    headers.insert(
        "x-courier-key".into(),
        AMQPValue::LongString(key.to_owned().into()),
    );
    Outgoing {
        exchange: exchange.to_owned(),
        routing_key: "email".to_owned(),
        properties: BasicProperties::default()
            .with_message_id(format!("{key}-{seq}").into())
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_headers(headers),
        body: format!(r#"{{"key":"{key}","seq":{seq}}}"#).into_bytes(),
    }
}

/// `courier shards` with `args`, off the runtime (the sink answers the worker meanwhile).
async fn shards_cmd(t: &TestTopology, args: &[&str]) -> std::process::Output {
    let prefix = t.prefix.clone();
    let mut all = vec![
        "--topology".to_owned(),
        t.file.display().to_string(),
        "shards".to_owned(),
        // The test broker's API, which need not be the AMQP host's port 15672.
        "--management-url".to_owned(),
        management_url(),
    ];
    all.extend(args.iter().map(|a| (*a).to_owned()));
    tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        courier(&prefix, &refs)
    })
    .await
    .expect("courier shards ran")
}

async fn shards_json(t: &TestTopology) -> Value {
    let o = shards_cmd(t, &["--json"]).await;
    assert!(o.status.success(), "courier shards --json: {}", stderr(&o));
    serde_json::from_slice(&o.stdout).expect("courier shards --json prints JSON")
}

/// The one channel's report, polled until `done` holds for it.
async fn wait_for(t: &TestTopology, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let j = shards_json(t).await;
        let channel = j["channels"][0].clone();
        if done(&channel) {
            return channel;
        }
        assert!(Instant::now() < deadline, "{what} within {WAIT:?}: {j:#}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn shards(channel: &Value) -> &Vec<Value> {
    channel["shards"].as_array().expect("shards array")
}

#[tokio::test]
async fn courier_shards_shows_each_shards_backlog_and_its_active_consumer() {
    let t = TestTopology::apply("shardscmd", "tests/fixtures/shards.toml").await;

    let p = publisher().await;
    let mut outgoing: Vec<Outgoing> = (0..HOT).map(|s| keyed(&t.exchange(), "hot", s)).collect();
    for k in 0..KEYS {
        outgoing.extend((0..PER_KEY).map(|s| keyed(&t.exchange(), &format!("k{k}"), s)));
    }
    let published = outgoing.len() as u64;
    let confirms = futures_util::future::join_all(outgoing.into_iter().map(|m| p.publish(m))).await;
    assert!(confirms.iter().all(Result::is_ok), "publish confirmed");

    let sum_ready =
        |c: &Value| -> Option<u64> { shards(c).iter().map(|s| s["ready"].as_u64()).sum() };
    let channel = wait_for(&t, "every published message counted in a shard", |c| {
        sum_ready(c) == Some(published)
    })
    .await;

    assert_eq!(channel["queue"], t.name("notifications.email"));
    assert_eq!(channel["exchange"], t.name("notifications.email.shards"));
    assert_eq!(channel["ordered"], true);
    let names: Vec<&str> = shards(&channel)
        .iter()
        .map(|s| s["queue"].as_str().expect("queue name"))
        .collect();
    let expected: Vec<String> = (0..SHARDS)
        .map(|i| t.name(&format!("notifications.email.shard.{i}")))
        .collect();
    assert_eq!(names, expected);
    assert_eq!(channel["total"]["ready"], published);
    for s in shards(&channel) {
        assert_eq!(s["consumers"], 0, "{s}");
        assert_eq!(s["active"], "none", "{s}");
        assert_eq!(s["single_active_consumer"], true, "{s}");
    }
    assert_eq!(
        channel["workers"]["queue"],
        t.name("notifications.email.workers")
    );
    assert_eq!(channel["workers"]["consumers"], 0);

    // The hot key's shard holds at least HOT of the messages: the hint names it.
    let fullest = shards(&channel)
        .iter()
        .max_by_key(|s| s["ready"].as_u64())
        .expect("a shard");
    assert!(fullest["ready"].as_u64() >= Some(HOT as u64), "{fullest}");
    assert_eq!(
        channel["hot_shard"]["index"], fullest["index"],
        "{channel:#}"
    );
    let text = shards_cmd(&t, &[]).await;
    assert!(text.status.success(), "courier shards: {}", stderr(&text));
    let text = stdout(&text);
    let hint = format!("hint: shard {} holds", fullest["index"]);
    assert!(text.contains(&hint), "{text}");
    assert!(text.contains("a hot key? see docs/ordering.md"), "{text}");
    assert!(text.contains("ACTIVE CONSUMER"), "{text}");
    assert!(!text.contains("guest:guest"), "{text}");

    // One worker: the broker makes it the single active consumer of every shard.
    let sink = Sink::start(Arc::new(|_: &Received| (200, vec![])), Duration::ZERO).await;
    let mut worker = spawn_worker_binary(&t, &sink.url, &[]);
    let channel = wait_for(&t, "the worker shown active on every shard", |c| {
        shards(c)
            .iter()
            .all(|s| s["active_consumer"]["peer"].is_string())
            && c["workers"]["consumers"] == 1
    })
    .await;
    let _ = worker.kill();
    let _ = worker.wait();

    let peers: Vec<&str> = shards(&channel)
        .iter()
        .map(|s| s["active_consumer"]["peer"].as_str().expect("peer"))
        .collect();
    assert!(
        peers.iter().all(|p| *p == peers[0]),
        "one worker, one connection: {peers:?}"
    );
    for s in shards(&channel) {
        assert_eq!(s["consumers"], 1, "{s}");
        assert!(
            s["active"]
                .as_str()
                .is_some_and(|a| a.starts_with(peers[0])),
            "{s}"
        );
    }
}
