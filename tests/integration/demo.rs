//! `courier demo` end to end: the real binary against the real broker, each test under its own
//! prefix, with the shared fixtures of `courier-testkit`.

use courier::topology::Topology;
use courier_testkit::{amqp_url, management_url, parsed_url, Cleanup};
use std::path::Path;
use std::process::Output;
use std::time::Duration;

/// `t.demo.<tag>.<pid>.<counter>.<nanos>.`: no other test or test run uses it.
fn unique_prefix(tag: &str) -> String {
    courier_testkit::unique_prefix(&format!("demo.{tag}"))
}

/// The demo topology as the binary sees it (run from the repository root), with `prefix`.
fn demo_topology(prefix: &str) -> Topology {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("topology/demo.toml");
    Topology::load(&file, prefix).expect("topology/demo.toml is valid")
}

/// Runs `courier demo ARGS` from the repository root (so it reads topology/demo.toml).
async fn run_demo(args: &[&str]) -> Output {
    run_demo_with(args, &[]).await
}

/// [`run_demo`] with extra environment variables.
async fn run_demo_with(args: &[&str], env: &[(&str, &str)]) -> Output {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_courier"))
        .arg("demo")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("AMQP_URL", amqp_url())
        .env_remove("COURIER_TOPOLOGY")
        .env_remove("COURIER_PREFIX")
        .envs(env.iter().copied())
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .expect("courier demo ends within 180s")
        .expect("courier demo starts")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The count in the summary row `label` (the first number after the label).
fn value(stdout: &str, label: &str) -> Option<u64> {
    let (_, summary) = stdout.split_once("\nSummary")?;
    summary.lines().find_map(|line| {
        let rest = line.trim_start().strip_prefix(label)?;
        if !rest.starts_with(char::is_whitespace) {
            return None;
        }
        rest.split_whitespace().next()?.parse().ok()
    })
}

fn must(stdout: &str, label: &str) -> u64 {
    value(stdout, label).unwrap_or_else(|| panic!("no `{label}` row in the summary:\n{stdout}"))
}

/// Messages in `queue`, or None if it does not exist.
async fn depth(queue: &str) -> Option<u32> {
    let admin = courier::broker::Admin::connect(&parsed_url(), "courier demo test")
        .await
        .expect("broker reachable");
    let state = admin.queue_state(queue).await.expect("broker answers");
    admin.close().await;
    state.map(|s| s.ready)
}

const REASONS: [&str; 6] = [
    "max-attempts",
    "permanent",
    "malformed",
    "crash-loop",
    "rejected",
    "expired",
];

#[tokio::test]
async fn demo_delivers_retries_dead_letters_loses_nothing_and_cleans_up() {
    let prefix = unique_prefix("run");
    let topology = demo_topology(&prefix);
    let _cleanup = Cleanup::for_topology(&topology);

    let out = run_demo(&["--messages", "200", "--prefix", &prefix]).await;
    let (stdout, stderr) = text(&out);
    assert!(
        out.status.success(),
        "courier demo failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert_eq!(must(&stdout, "published"), 200, "{stdout}");
    assert_eq!(must(&stdout, "lost"), 0, "{stdout}");
    assert_eq!(must(&stdout, "duplicates"), 0, "{stdout}");
    let delivered = must(&stdout, "delivered");
    let dead = must(&stdout, "dead-lettered");
    assert!(delivered > 0, "{stdout}");
    assert!(must(&stdout, "retried") > 0, "{stdout}");
    assert_eq!(delivered + dead, 200, "{stdout}");
    assert_eq!(must(&stdout, "in the DLQ"), dead, "{stdout}");
    let reasons: Vec<&str> = REASONS
        .into_iter()
        .filter(|r| value(&stdout, r).unwrap_or(0) > 0)
        .collect();
    assert!(
        reasons.len() >= 2,
        "expected at least two dead-letter reasons, got {reasons:?}:\n{stdout}"
    );
    assert!(stdout.contains("Cleaned up"), "{stdout}");
    assert_eq!(
        depth(&topology.dead_letter_queue).await,
        None,
        "the demo deleted its dead-letter queue"
    );
    assert_eq!(depth(&topology.work_queues[0].name).await, None);
}

#[tokio::test]
async fn demo_keep_leaves_the_dead_letters_for_courier_dlq() {
    let prefix = unique_prefix("keep");
    let topology = demo_topology(&prefix);
    let _cleanup = Cleanup::for_topology(&topology);

    let out = run_demo(&["--messages", "100", "--prefix", &prefix, "--keep"]).await;
    let (stdout, stderr) = text(&out);
    assert!(
        out.status.success(),
        "courier demo --keep failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert_eq!(must(&stdout, "lost"), 0, "{stdout}");
    let dead = must(&stdout, "dead-lettered");
    let held = depth(&topology.dead_letter_queue)
        .await
        .expect("--keep leaves the dead-letter queue");
    assert!(held > 0, "the DLQ is empty:\n{stdout}");
    assert_eq!(u64::from(held), dead, "{stdout}");
    assert!(
        stdout.contains(&format!("courier-dlq stats --prefix {prefix}")),
        "{stdout}"
    );

    // A second run under the same prefix refuses to mix with the kept dead letters.
    let again = run_demo(&["--messages", "10", "--prefix", &prefix]).await;
    let (_, err) = text(&again);
    assert!(!again.status.success(), "{err}");
    assert!(err.contains("--clean"), "{err}");
    assert_eq!(depth(&topology.dead_letter_queue).await, Some(held));

    // `--clean` removes everything; the guard above would otherwise.
    let clean = run_demo(&["--prefix", &prefix, "--clean"]).await;
    let (out_text, err) = text(&clean);
    assert!(clean.status.success(), "{out_text}\n{err}");
    assert_eq!(depth(&topology.dead_letter_queue).await, None);
}

/// Queues and exchanges under `prefix`, as the management API lists them (independently of the
/// product's own management client).
async fn under_prefix(prefix: &str) -> Vec<String> {
    let mut found = Vec::new();
    for kind in ["queues", "exchanges"] {
        let listed: serde_json::Value = reqwest::Client::new()
            .get(format!("{}/api/{kind}/%2F?columns=name", management_url()))
            .basic_auth("guest", Some("guest"))
            .send()
            .await
            .expect("management API answers")
            .json()
            .await
            .expect("JSON listing");
        found.extend(
            listed
                .as_array()
                .expect("array")
                .iter()
                .filter_map(|o| o["name"].as_str())
                .filter(|n| n.starts_with(prefix))
                .map(|n| format!("{kind}: {n}")),
        );
    }
    found
}

/// Runs `courier topology apply` from the repository root with `args` under `prefix`.
fn apply_with_courier(prefix: &str, args: &[&str]) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_courier"));
    cmd.args(args)
        .args(["topology", "apply"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("AMQP_URL", amqp_url())
        .env("COURIER_PREFIX", prefix)
        .env_remove("COURIER_TOPOLOGY");
    let out = courier_testkit::process::output_within(&mut cmd, Duration::from_secs(60));
    assert!(out.status.success(), "apply: {}", text(&out).1);
}

/// `courier topology apply --prefix P` with the default topology (whose retry tiers the demo's
/// lacks), or with a file `--clean` is not told about, then `courier demo --prefix P --clean`:
/// nothing is left under P. Found through the management API's listing; without the API,
/// through every topology the prefix could have been applied with.
#[tokio::test]
async fn clean_deletes_whatever_exists_under_the_prefix() {
    let unreachable = "http://127.0.0.1:1".to_owned();
    let cases = [
        (
            "clean-default",
            "topology/notifications.toml",
            management_url(),
        ),
        ("clean-custom", "tests/fixtures/fast.toml", management_url()),
        ("clean-nomgmt", "topology/notifications.toml", unreachable),
    ];
    for (tag, file, management) in cases {
        let prefix = unique_prefix(tag);
        let applied = Topology::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join(file), &prefix)
            .expect("valid topology");
        let _cleanup = Cleanup::for_topology(&applied);
        apply_with_courier(&prefix, &["--topology", file]);
        assert_eq!(
            under_prefix(&prefix).await.len(),
            applied.queues.len() + applied.exchanges.len(),
            "{tag}: applied"
        );

        let clean = run_demo_with(
            &["--prefix", &prefix, "--clean"],
            &[("COURIER_MANAGEMENT_URL", &management)],
        )
        .await;
        let (stdout, stderr) = text(&clean);
        assert!(clean.status.success(), "{tag}: {stdout}\n{stderr}");
        assert_eq!(
            under_prefix(&prefix).await,
            Vec::<String>::new(),
            "{tag}: {stdout}\n{stderr}"
        );
        assert!(stdout.contains("remains under prefix"), "{tag}: {stdout}");
        if management.ends_with(":1") {
            assert!(
                stderr.contains("cannot list the objects"),
                "{tag}: {stderr}"
            );
        }
    }
}

/// The management API guessed from the AMQP URL (same host, port 15672) is used only when it
/// fronts the same broker. With two brokers on one host (CI runs the suite against 3.x on 5672
/// and 4.x on 5673), the guess for the second one answers for the first: it must be refused,
/// or `demo --clean` would delete by another broker's list. Each run of the suite takes one
/// branch; CI runs both.
#[tokio::test]
async fn a_guessed_management_api_of_another_broker_is_refused() {
    use courier::management::Management;
    let url = parsed_url();
    let broker = courier::broker::probe_server(&url)
        .await
        .expect("broker answers")
        .cluster_name
        .expect("RabbitMQ sends cluster_name");
    let guess = Management::new(&url.management_guess(), &url);
    let Ok(guessed) = guess.cluster_name().await else {
        eprintln!(
            "no management API at the guess {}: nothing to compare",
            guess.base()
        );
        return;
    };
    let located = Management::locate(None, &url).await;
    if guessed == broker {
        assert_eq!(located.cluster_name().await.expect("used"), broker);
    } else {
        let err = located
            .queues()
            .await
            .expect_err("another broker's API is not used")
            .to_string();
        assert!(
            err.contains(&format!("fronts cluster '{guessed}', not '{broker}'"))
                && err.contains("--management-url"),
            "{err}"
        );
        // Named explicitly, it is used: the user knows best.
        let explicit = Management::locate(Some(&url.management_guess()), &url).await;
        assert_eq!(explicit.cluster_name().await.expect("used"), guessed);
    }
}
