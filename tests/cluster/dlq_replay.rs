//! `courier-dlq replay` whose node dies midway: it resumes on another node by itself, and every
//! dead letter ends up replayed exactly once or, at worst, twice — never lost.

use crate::census::*;
use crate::cluster::*;
use crate::harness::{dlq_command, seed_dead_letters};
use crate::node_loss::cluster_topology;
use crate::util::*;
use crate::SETTLE;
use std::process::Stdio;
use std::time::{Duration, Instant};

const DEAD_LETTERS: usize = 3_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_whose_node_dies_midway_resumes_on_another_and_loses_nothing() {
    let t = cluster_topology("c.replay").await;
    let sent = seed_dead_letters(&t, "cd", DEAD_LETTERS).await;
    let work = t.name("notifications.email");
    let doomed = leader(&t.dlq()).await;
    let log = std::env::temp_dir().join(format!("{}replay.err", t.prefix));
    let mut replay = dlq_command()
        .args(["replay", "--rate", "500/s"])
        .env("AMQP_URL", url_from(doomed))
        .env("COURIER_PREFIX", &t.prefix)
        .env("COURIER_TOPOLOGY", &t.file)
        .stdout(Stdio::piped())
        .stderr(Stdio::from(std::fs::File::create(&log).expect("log")))
        .spawn_within(CHILD_DEADLINE);
    wait_depth(&work, 500, SETTLE).await;
    assert!(
        matches!(replay.try_wait(), Ok(None)),
        "the replay finished before the fault"
    );
    let fault = NodeFault::kill(doomed).await;
    let killed_at = Instant::now();
    let moved_at_kill = depth(&work).await as usize;
    assert!(
        moved_at_kill < DEAD_LETTERS,
        "the node died after the replay was done"
    );
    // The replay notices and resumes; but a quorum queue keeps the consumer of a node that is
    // down registered (suspected down) until the node is back, so the resumed pass cannot take
    // the queue exclusively until then: the node is restarted, as its supervisor would.
    let deadline = Instant::now() + SETTLE;
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("resuming on what is left")
    {
        assert!(
            Instant::now() < deadline,
            "the replay never noticed: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let back = fault.restart().await;
    let out = tokio::task::spawn_blocking(move || replay.wait_with_output())
        .await
        .expect("join")
        .expect("replay output");
    let failover = killed_at.elapsed();
    let err = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        out.status.success(),
        "the replay did not finish by itself: {}\n{}{err}",
        out.status,
        stdout(&out)
    );
    assert!(
        err.contains("resuming on what is left"),
        "the replay never lost its node: {err}"
    );
    let mut c = Census::new(&sent);
    c.add(QUEUED, drain(&work).await.iter().map(id_of));
    c.add(DEAD, drain(&t.dlq()).await.iter().map(id_of));
    assert!(
        c.lost().is_empty() && c.unexpected().is_empty(),
        "{}",
        c.summary()
    );
    assert_eq!(
        c.in_place(QUEUED),
        DEAD_LETTERS,
        "every dead letter replayed: {}",
        c.summary()
    );
    assert_eq!(c.in_place(DEAD), 0, "left in the DLQ: {}", c.summary());
    eprintln!(
        "node {doomed} killed with {moved_at_kill} of {DEAD_LETTERS} replayed; the replay \
         finished {failover:?} later; {}",
        c.summary()
    );
    ClusterRow::new(
        &format!(
            "`courier-dlq replay --rate 500/s` whose node (the DLQ's leader) is killed midway, then restarted (back in {:.0} s)",
            back.as_secs_f64()
        ),
        DEAD_LETTERS,
        &c,
        failover,
        Duration::ZERO,
    )
    .passed();
}
