//! `courier topology apply | check | export` against the real broker.

use crate::util::*;
use courier::topology::Topology;
use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

fn load(prefix: &str) -> Topology {
    Topology::load(&default_topology_path(), prefix).expect("default topology is valid")
}

#[tokio::test]
async fn apply_twice_is_idempotent_and_says_so() {
    let prefix = unique_prefix("idem");
    let _cleanup = Cleanup::for_topology(&load(&prefix));
    let first = courier(&prefix, &["topology", "apply"]);
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(stdout(&first).contains("23 created"), "{}", stdout(&first));
    let second = courier(&prefix, &["topology", "apply"]);
    assert!(second.status.success(), "{}", stderr(&second));
    assert!(
        stdout(&second).contains("nothing to change"),
        "{}",
        stdout(&second)
    );
    assert!(!stdout(&second).contains("created "), "{}", stdout(&second));
}

#[tokio::test]
async fn every_declared_argument_is_on_the_broker() {
    let prefix = unique_prefix("args");
    let topo = load(&prefix);
    let _cleanup = Cleanup::for_topology(&topo);
    let out = courier(&prefix, &["topology", "apply"]);
    assert!(out.status.success(), "{}", stderr(&out));
    for q in &topo.queues {
        let broker = declared_as_in_topology(q).await;
        assert_eq!(broker["durable"], true, "{} durable", q.name);
    }
    // Spot-check the contract by name, independent of the parser's output.
    let email = broker_queue(&format!("{prefix}notifications.email"))
        .await
        .expect("email");
    assert_eq!(email["arguments"]["x-max-priority"], 9);
    assert_eq!(email["arguments"]["x-queue-type"], "classic");
    assert_eq!(
        email["arguments"]["x-dead-letter-exchange"],
        format!("{prefix}notifications.dlx")
    );
    let tier = broker_queue(&format!("{prefix}notifications.email.retry.10s"))
        .await
        .expect("tier");
    assert_eq!(tier["arguments"]["x-message-ttl"], 10_000);
    assert_eq!(tier["arguments"]["x-dead-letter-exchange"], "");
    assert_eq!(
        tier["arguments"]["x-dead-letter-routing-key"],
        format!("{prefix}notifications.email")
    );
    let bindings = broker_bindings().await;
    for b in &topo.bindings {
        assert!(
            bindings.contains(&(b.exchange.clone(), b.queue.clone(), b.routing_key.clone())),
            "binding {b:?} missing on the broker"
        );
    }
}

#[tokio::test]
async fn check_detects_missing_and_different_queues_and_bindings() {
    let prefix = unique_prefix("check");
    let topo = load(&prefix);
    let _cleanup = Cleanup::for_topology(&topo);
    assert!(courier(&prefix, &["topology", "apply"]).status.success());
    let mgmt = management_url();
    let clean = courier(&prefix, &["topology", "check", "--management-url", &mgmt]);
    assert_eq!(
        clean.status.code(),
        Some(0),
        "{}{}",
        stdout(&clean),
        stderr(&clean)
    );
    assert!(stdout(&clean).contains("in sync"), "{}", stdout(&clean));

    let conn = parsed_url().connect("test").await.expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    let sms = format!("{prefix}notifications.sms");
    let push = format!("{prefix}notifications.push");
    ch.queue_delete(sms.as_str().into(), QueueDeleteOptions::default())
        .await
        .expect("delete");
    ch.queue_delete(push.as_str().into(), QueueDeleteOptions::default())
        .await
        .expect("delete");
    let mut other = FieldTable::default();
    other.insert("x-max-priority".into(), AMQPValue::LongLongInt(5));
    other.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("classic".into()),
    );
    ch.queue_declare(
        push.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        other,
    )
    .await
    .expect("redeclare push");
    ch.queue_unbind(
        format!("{prefix}notifications.email").as_str().into(),
        format!("{prefix}notifications").as_str().into(),
        "email".into(),
        FieldTable::default(),
    )
    .await
    .expect("unbind");
    let _ = conn.close(200, "done".into()).await;

    let drift = courier(&prefix, &["topology", "check", "--management-url", &mgmt]);
    let text = stdout(&drift);
    assert_eq!(drift.status.code(), Some(3), "{text}{}", stderr(&drift));
    assert!(
        text.contains(&format!("missing:   queue '{sms}'")),
        "{text}"
    );
    assert!(
        text.contains(&format!("different: queue '{push}'")),
        "{text}"
    );
    assert!(
        text.contains("x-max-priority") || text.contains("x-dead-letter-exchange"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "missing:   binding {prefix}notifications -> {prefix}notifications.email"
        )),
        "{text}"
    );
    // check changed nothing: the deleted queue is still gone.
    assert!(
        broker_queue(&sms).await.is_none(),
        "check must not create {sms}"
    );
}

#[tokio::test]
async fn conflicting_queue_stops_apply_naming_it() {
    let prefix = unique_prefix("conflict");
    let topo = load(&prefix);
    let _cleanup = Cleanup::for_topology(&topo);
    let email = format!("{prefix}notifications.email");
    let conn = parsed_url().connect("test").await.expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    let mut args = FieldTable::default();
    args.insert("x-max-priority".into(), AMQPValue::LongLongInt(3));
    ch.queue_declare(
        email.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await
    .expect("pre-declare");
    let _ = conn.close(200, "done".into()).await;

    let apply = |management: &str| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_courier"));
        cmd.args(["topology", "apply"])
            .env("AMQP_URL", amqp_url())
            .env("COURIER_PREFIX", &prefix)
            .env("COURIER_MANAGEMENT_URL", management)
            .env("RUST_LOG", "warn");
        output_within(&mut cmd, DEFAULT_DEADLINE)
    };
    let out = apply(&management_url());
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "queue '{email}' already exists with different arguments"
        )),
        "{err}"
    );
    assert!(
        err.contains("declared: x-dead-letter-exchange=") && err.contains("x-max-priority=9"),
        "declared arguments shown: {err}"
    );
    // RabbitMQ 4 records `x-queue-type="classic"` on every classic queue, asked for or not.
    let existing = err
        .lines()
        .find_map(|l| l.trim().strip_prefix("existing: "))
        .unwrap_or_default();
    assert!(
        existing.starts_with("x-max-priority=3")
            && existing.ends_with("(durable)")
            && !existing.contains("x-dead-letter-exchange"),
        "existing arguments shown, read from the management API: {err}"
    );
    assert!(
        err.contains("PRECONDITION_FAILED"),
        "broker's words shown: {err}"
    );
    assert!(
        err.contains("declared before stopping (2)"),
        "partial progress shown: {err}"
    );
    assert!(err.contains("fix:"), "{err}");

    // Without a management API the message says the existing arguments could not be read, and
    // how to see them.
    let out = apply("http://127.0.0.1:1");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("existing: could not be read (management API at http://127.0.0.1:1")
            && err.contains("rabbitmqctl list_queues name durable auto_delete arguments"),
        "{err}"
    );
}

#[tokio::test]
async fn quorum_priority_is_refused_where_the_broker_lacks_it() {
    let prefix = unique_prefix("quorum");
    let dir = tempdir();
    let text = std::fs::read_to_string(default_topology_path())
        .expect("read")
        .replace("type = \"classic\"     #", "type = \"quorum\" #");
    let file = dir.join("quorum.toml");
    std::fs::write(&file, text).expect("write");
    let topo = Topology::load(&file, &prefix).expect("valid");
    let _cleanup = Cleanup::for_topology(&topo);
    let version = courier::broker::probe_version(&parsed_url())
        .await
        .expect("probe")
        .expect("version");
    let out = courier(
        &prefix,
        &[
            "--topology",
            file.to_str().expect("utf8"),
            "topology",
            "apply",
        ],
    );
    let path = file.to_str().expect("utf8");
    let check = courier(&prefix, &["--topology", path, "topology", "check"]);
    let email = format!("{prefix}notifications.email");
    if version.quorum_priorities() {
        assert!(out.status.success(), "{}", stderr(&out));
        // apply and check say what the broker gives in place of 0-9 (apply in its log).
        let says = match version.quorum_priority_levels() {
            2 => format!("quorum queue '{email}': RabbitMQ {version} gives two priority levels (0-4 normal, 5-9 high"),
            levels => {
                assert_eq!(levels, 32, "{version}");
                format!("quorum queue '{email}': RabbitMQ {version} orders quorum queue priorities strictly over 32 levels (0-31)")
            }
        };
        assert!(stderr(&out).contains(&says), "{}", stderr(&out));
        assert_eq!(check.status.code(), Some(0), "{}", stdout(&check));
        assert!(
            stdout(&check).contains(&format!("note: {says}")),
            "{}",
            stdout(&check)
        );
        // RabbitMQ 4 takes no x-max-priority on a quorum queue but has two levels of its own
        // (5 and above is high): an urgent message still overtakes the bulk ones queued first.
        let queue = format!("{prefix}notifications.email");
        assert_eq!(
            broker_queue(&queue).await.expect("declared")["arguments"]["x-max-priority"],
            serde_json::Value::Null
        );
        let p = publisher().await;
        let exchange = format!("{prefix}notifications");
        for i in 0..5 {
            p.publish(job(&exchange, "email", &format!("bulk-{i}"), 1))
                .await
                .expect("confirmed");
        }
        p.publish(job(&exchange, "email", "urgent", 9))
            .await
            .expect("confirmed");
        let first = drain(&queue).await;
        let ids: Vec<&str> = first
            .iter()
            .filter_map(|m| courier::envelope::message_id(&m.delivery.properties))
            .collect();
        assert_eq!(ids.len(), 6, "{ids:?}");
        assert_eq!(ids[0], "urgent", "{ids:?}");
    } else {
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains("quorum queues have message priorities only from RabbitMQ 4.0"),
            "{err}"
        );
        assert!(err.contains(&version.to_string()), "{err}");
        assert!(err.contains("nothing was declared"), "{err}");
        // check says the same, beside the missing objects.
        let text = stdout(&check);
        assert_eq!(check.status.code(), Some(3), "{text}");
        assert!(
            text.contains(&format!("note: queue '{email}': `courier topology apply` would refuse it: quorum queues have message priorities only from RabbitMQ 4.0")),
            "{text}"
        );
        assert!(broker_queue(&format!("{prefix}notifications.email"))
            .await
            .is_none());
    }
}

#[test]
fn export_definitions_is_valid_json_matching_the_file() {
    let out = courier("", &["topology", "export", "--format", "definitions"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    // Read the file independently of Courier's parser.
    let file: toml::Value =
        toml::from_str(&std::fs::read_to_string(default_topology_path()).expect("read"))
            .expect("toml");
    let queues = json["queues"].as_array().expect("queues");
    for q in file["queues"].as_array().expect("queues in file") {
        let name = q["name"].as_str().expect("name");
        let exported = queues
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("{name} exported"));
        assert_eq!(exported["durable"], true);
        assert_eq!(
            exported["arguments"]["x-max-priority"].as_i64(),
            file["queue_defaults"]["max_priority"].as_integer()
        );
        assert_eq!(exported["arguments"]["x-queue-type"], "classic");
        for tier in file["retry"]["tiers"].as_array().expect("tiers") {
            let tier = tier.as_str().expect("tier");
            let tq = queues
                .iter()
                .find(|e| e["name"] == format!("{name}.retry.{tier}"))
                .unwrap_or_else(|| panic!("tier {tier} of {name} exported"));
            let ms = humantime::parse_duration(tier)
                .expect("duration")
                .as_millis() as i64;
            assert_eq!(tq["arguments"]["x-message-ttl"].as_i64(), Some(ms));
            assert_eq!(tq["arguments"]["x-dead-letter-routing-key"], name);
        }
    }
    let dlq = file["dead_letter"]["queue"].as_str().expect("dlq");
    assert!(queues.iter().any(|e| e["name"] == dlq));
    let bindings = json["bindings"].as_array().expect("bindings");
    assert!(bindings
        .iter()
        .any(|b| b["source"] == "notifications" && b["routing_key"] == "email"));
    assert_eq!(json["exchanges"].as_array().expect("exchanges").len(), 2);
}

#[test]
fn export_mermaid_draws_the_paths() {
    let out = courier("", &["topology", "export", "--format", "mermaid"]);
    let text = stdout(&out);
    assert!(out.status.success());
    assert!(text.starts_with("flowchart LR"), "{text}");
    assert!(text.contains("notifications.email.retry.1s"), "{text}");
    assert!(text.contains("dead-letter"), "{text}");
}

#[test]
fn wrong_password_is_not_echoed() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_courier"))
        .args(["topology", "apply"])
        .env("AMQP_URL", "amqp://guest:Sup3rSecretPw@127.0.0.1:5672/%2f")
        .env("COURIER_PREFIX", unique_prefix("pw"))
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert!(!all.contains("Sup3rSecretPw"), "{all}");
    assert!(all.contains("guest:***@"), "{all}");
}

pub fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(unique_prefix("dir").trim_end_matches('.'));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Writes a variant of the default topology and returns courier's error for it.
fn invalid(name: &str, from: &str, to: &str) -> String {
    let text = std::fs::read_to_string(default_topology_path()).expect("read");
    assert!(
        text.contains(from),
        "fixture: {from:?} not in the default file"
    );
    let file = tempdir().join(format!("{name}.toml"));
    std::fs::write(&file, text.replace(from, to)).expect("write");
    let out = courier(
        "",
        &[
            "--topology",
            file.to_str().expect("utf8"),
            "topology",
            "export",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{name} should be refused");
    let err = stderr(&out);
    assert!(
        err.contains(&format!("{name}.toml")),
        "error names the file: {err}"
    );
    err
}

#[test]
fn invalid_unknown_key() {
    let e = invalid(
        "unknown-key",
        "max_attempts = 5",
        "max_attempts = 5\nmax_atempts = 3",
    );
    assert!(e.contains("unknown field `max_atempts`"), "{e}");
}

#[test]
fn invalid_duration() {
    let e = invalid("bad-ttl", "\"1m\"", "\"1 fortnight\"");
    assert!(
        e.contains("retry.tiers[2]") && e.contains("not a duration"),
        "{e}"
    );
}

#[test]
fn invalid_empty_tiers() {
    let e = invalid(
        "no-tiers",
        "tiers = [\"1s\", \"10s\", \"1m\", \"10m\"]",
        "tiers = []",
    );
    assert!(e.contains("retry.tiers") && e.contains("empty"), "{e}");
}

#[test]
fn invalid_priority() {
    let e = invalid("prio", "max_priority = 9", "max_priority = 256");
    assert!(
        e.contains("queue_defaults.max_priority") && e.contains("1 to 255"),
        "{e}"
    );
}

#[test]
fn invalid_duplicate_name() {
    let e = invalid(
        "dup",
        "name = \"notifications.push\"",
        "name = \"notifications.sms\"",
    );
    assert!(
        e.contains("queues[2].name") && e.contains("declared twice"),
        "{e}"
    );
}

#[test]
fn invalid_reference() {
    let e = invalid(
        "ref",
        "exchange = \"notifications\", routing_key = \"sms\"",
        "exchange = \"nope\", routing_key = \"sms\"",
    );
    assert!(
        e.contains("queues[1].bindings[0].exchange") && e.contains("`nope` is not declared"),
        "{e}"
    );
}

#[test]
fn missing_file_is_named_and_its_cause_said_once() {
    let out = courier(
        "",
        &["--topology", "/nonexistent/topo.toml", "topology", "export"],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("/nonexistent/topo.toml: cannot read"), "{err}");
    assert_eq!(
        err.matches("os error 2").count(),
        1,
        "cause printed once: {err}"
    );
}

/// An installed binary works from any directory: with no --topology and no
/// topology/notifications.toml in the working directory, `apply` declares the built-in copy of
/// the default and says that it does.
#[tokio::test]
async fn apply_from_another_directory_uses_the_built_in_default_and_says_so() {
    let prefix = unique_prefix("anywhere");
    let topo = load(&prefix);
    let _cleanup = Cleanup::for_topology(&topo);
    let elsewhere = tempdir();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_courier"));
    cmd.args(["topology", "apply"])
        .current_dir(&elsewhere)
        .env("AMQP_URL", amqp_url())
        .env("COURIER_PREFIX", &prefix)
        .env_remove("COURIER_TOPOLOGY")
        .env("RUST_LOG", "info");
    let out = output_within(&mut cmd, DEFAULT_DEADLINE);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("23 created"), "{}", stdout(&out));
    assert!(
        stderr(&out).contains(courier::topology::BUILT_IN_NOTICE),
        "{}",
        stderr(&out)
    );
    for q in &topo.queues {
        assert!(broker_queue(&q.name).await.is_some(), "{} declared", q.name);
    }

    // A file named explicitly is never replaced by the built-in copy.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_courier"));
    cmd.args([
        "--topology",
        "topology/notifications.toml",
        "topology",
        "export",
    ])
    .current_dir(&elsewhere)
    .env_remove("COURIER_PREFIX");
    let out = output_within(&mut cmd, DEFAULT_DEADLINE);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stderr(&out).contains("cannot read"), "{}", stderr(&out));
}

#[test]
fn readme_diagram_is_the_current_export() {
    let out = courier("", &["topology", "export", "--format", "mermaid"]);
    let readme = std::fs::read_to_string(repo_path("README.md")).expect("README");
    assert!(
        readme.contains(stdout(&out).trim_end()),
        "README's mermaid diagram is stale: paste `courier topology export --format mermaid`"
    );
}

/// tokio panics on a `TOKIO_WORKER_THREADS` it cannot use; the binary refuses it by name.
#[test]
fn a_bad_tokio_worker_threads_is_an_error_not_a_panic() {
    for bad in ["", "zero", "0"] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_courier"));
        cmd.args(["topology", "export", "--format", "definitions"])
            .env("TOKIO_WORKER_THREADS", bad)
            .env_remove("COURIER_PREFIX");
        let out = output_within(&mut cmd, DEFAULT_DEADLINE);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{bad:?}: {err}");
        assert!(err.contains("TOKIO_WORKER_THREADS="), "{bad:?}: {err}");
        assert!(!err.contains("panicked"), "{bad:?}: {err}");
    }
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_courier"));
    cmd.args(["topology", "export", "--format", "definitions"])
        .env("TOKIO_WORKER_THREADS", "1")
        .env_remove("COURIER_PREFIX");
    let out = output_within(&mut cmd, DEFAULT_DEADLINE);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `courier topology export | head -n 1`: the reader closes the pipe after one line while the
/// export is still being written. The write fails with EPIPE, which must end the command quietly
/// with exit 0 (as ripgrep does), not panic.
#[test]
fn export_into_a_pipe_closed_after_one_line_exits_0_without_a_panic() {
    // 200 extra work queues make each export several hundred KiB, far more than a pipe holds
    // (64 KiB on Linux), so the writer is still writing when the reader goes away.
    let base = std::fs::read_to_string(default_topology_path()).expect("default topology");
    let extra: String = (0..200)
        .map(|i| {
            format!(
                "\n[[queues]]\nname = \"notifications.extra{i}\"\n\
                 bindings = [{{ exchange = \"notifications\", routing_key = \"extra{i}\" }}]\n"
            )
        })
        .collect();
    let big = base.replacen("\n[retry]", &format!("{extra}\n[retry]"), 1);
    assert_ne!(big, base, "the default topology has a [retry] table");
    let dir = tempdir();
    let file = dir.join("big.toml");
    std::fs::write(&file, big).expect("write the topology");

    for format in ["definitions", "mermaid"] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_courier"))
            .arg("--topology")
            .arg(&file)
            .args(["topology", "export", "--format", format])
            .env_remove("COURIER_PREFIX")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn_within(CHILD_DEADLINE);
        let mut reader = BufReader::new(child.stdout.take().expect("stdout is piped"));
        let mut first = String::new();
        reader.read_line(&mut first).expect("one line");
        assert!(!first.trim().is_empty(), "{format}: an empty first line");
        drop(reader);
        let out = child.wait_with_output().expect("courier exits");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "{format}: exit {:?} after stdout closed:\n{err}",
            out.status
        );
        assert!(!err.contains("panicked"), "{format}: {err}");
        assert!(
            err.trim().is_empty(),
            "{format}: nothing to say, got:\n{err}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
