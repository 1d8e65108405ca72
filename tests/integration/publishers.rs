//! Publishing from outside the Rust library, as users do: the Python and Node.js examples
//! (`examples/publishers/`) against a real worker, and `courier publish --file`.

use crate::util::*;
use std::process::Command;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

/// Runs a publisher example (`cmd` plus `email ID`) against the test topology and checks the
/// worker delivered its message once, with the example's own body naming `language`.
async fn assert_foreign_publisher_delivers(
    t: &TestTopology,
    sink: &Sink,
    mut cmd: Command,
    id: &str,
    language: &str,
) {
    cmd.args(["email", id])
        .env("AMQP_URL", amqp_url())
        .env("COURIER_EXCHANGE", t.exchange());
    let out = output_within(&mut cmd, DEFAULT_DEADLINE);
    assert!(
        out.status.success(),
        "{language} publisher failed: {}{}",
        stdout(&out),
        stderr(&out)
    );
    sink.wait_for(WAIT, "the foreign message", |r| {
        r.iter().any(|x| x.message_id == id)
    })
    .await;
    let r = sink
        .all()
        .into_iter()
        .find(|x| x.message_id == id)
        .expect("received");
    let body: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON body");
    assert!(
        body["text"].as_str().unwrap_or_default().contains(language),
        "{body}"
    );
    assert_eq!(reconcile(&[id.to_owned()], &delivered_ids(sink)), (0, 0));
}

#[tokio::test]
async fn a_message_published_from_python_is_delivered() {
    let t = TestTopology::fast("python").await;
    let sink = Sink::ok().await;
    let w = RunningWorker::http(&t, "notifications.email", &sink);
    let mut cmd = Command::new("python3");
    cmd.arg(repo_path("examples/publishers/python/publish.py"))
        .env("COURIER_PRIORITY", "7");
    assert_foreign_publisher_delivers(&t, &sink, cmd, "from-python-1", "Python").await;
    w.stop().await;
}

#[tokio::test]
async fn publish_file_confirms_every_line_and_reports_bad_lines() {
    let t = TestTopology::fast("pubfile").await;
    let dir = crate::topology::tempdir();
    let file = dir.join("jobs.jsonl");
    let mut text = String::new();
    for i in 0..100 {
        let key = if i % 2 == 0 { "email" } else { "sms" };
        text.push_str(&format!(
            "{{\"routing_key\":\"{key}\",\"message_id\":\"f-{i}\",\"priority\":{},\"body\":{{\"n\":{i}}}}}\n",
            i % 10
        ));
    }
    std::fs::write(&file, &text).expect("write");
    let topo = t.file.to_str().expect("utf8");
    let out = courier(
        &t.prefix,
        &[
            "--topology",
            topo,
            "publish",
            "--file",
            file.to_str().expect("utf8"),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("published 100 of 100"),
        "{}",
        stdout(&out)
    );
    assert_eq!(depth(&t.name("notifications.email")).await, 50);
    assert_eq!(depth(&t.name("notifications.sms")).await, 50);

    std::fs::write(&file, "{\"body\":{}}\n{\"bdy\":1}\n").expect("write");
    let out = courier(
        &t.prefix,
        &[
            "--topology",
            topo,
            "publish",
            "--routing-key",
            "email",
            "--file",
            file.to_str().expect("utf8"),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("jobs.jsonl:2"), "{}", stderr(&out));
    assert_eq!(
        depth(&t.name("notifications.email")).await,
        50,
        "nothing sent from an invalid file"
    );

    let out = courier(
        &t.prefix,
        &["--topology", topo, "publish", "--routing-key", "nope", "{}"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("unroutable"), "{}", stderr(&out));
}

#[tokio::test]
async fn a_message_published_from_node_is_delivered() {
    let node_modules = repo_path("examples/publishers/node/node_modules/amqplib");
    if !node_modules.exists() {
        // In CI a missing toolchain is a failure, never a silent pass; locally it may skip.
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "CI=true but the Node publisher's dependencies are missing: install Node.js and npm, then `npm ci --prefix examples/publishers/node` (scripts/test does it)"
        );
        eprintln!("skipped: run `npm ci --prefix examples/publishers/node` (scripts/test does) to test the Node publisher");
        return;
    }
    let t = TestTopology::fast("node").await;
    let sink = Sink::ok().await;
    let w = RunningWorker::http(&t, "notifications.email", &sink);
    let mut cmd = Command::new("node");
    cmd.arg(repo_path("examples/publishers/node/publish.js"));
    assert_foreign_publisher_delivers(&t, &sink, cmd, "from-node-1", "Node").await;
    w.stop().await;
}

/// The publishers' README lists every header the fleet writes (from the library's own names,
/// so a new header cannot go undocumented), and its links lead somewhere: files that exist,
/// README sections that exist (it once pointed to a spec that is not in the repository).
#[test]
fn publishers_readme_lists_every_fleet_header_and_its_links_resolve() {
    use courier::envelope::*;
    let dir = repo_path("examples/publishers");
    let readme = std::fs::read_to_string(dir.join("README.md")).expect("publishers README");
    for header in [
        ATTEMPTS,
        REDELIVERIES,
        REASON,
        ERROR,
        ORIGINAL_EXCHANGE,
        ORIGINAL_ROUTING_KEY,
        ORIGINAL_QUEUE,
        FIRST_FAILED_AT,
        DEAD_LETTERED_AT,
        REPLAYED,
    ] {
        assert!(
            readme.contains(&format!("| `{header}` |")),
            "examples/publishers/README.md has no row for {header}"
        );
    }
    assert!(
        !readme.contains("product spec"),
        "points to a spec users do not have"
    );
    for link in readme.split("](").skip(1) {
        let target = link.split(')').next().expect("link target");
        if target.starts_with("http") {
            continue;
        }
        let (path, anchor) = target.split_once('#').unwrap_or((target, ""));
        let file = dir.join(path);
        assert!(
            file.exists(),
            "link to {target}: {} is missing",
            file.display()
        );
        if !anchor.is_empty() {
            let text = std::fs::read_to_string(&file).expect("linked file");
            // GitHub's anchor of a heading: lower case, spaces as dashes, punctuation dropped.
            let found = text.lines().filter(|l| l.starts_with('#')).any(|h| {
                let slug: String = h
                    .trim_start_matches('#')
                    .trim()
                    .to_lowercase()
                    .chars()
                    .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-')
                    .map(|c| if c == ' ' { '-' } else { c })
                    .collect();
                slug == anchor
            });
            assert!(found, "link to {target}: no such heading in {path}");
        }
    }
}
