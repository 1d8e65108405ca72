//! Lifecycle and traps: returns under a large confirm window, cancelled consumers, cut
//! connections, SIGTERM of the real binary, the worker's flags, metrics and secrets.
//! Publishing from other languages and from files is in `publishers.rs`.

use crate::util::*;
use courier::publisher::PublishError;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn returns_are_matched_to_their_own_message_under_a_large_window() {
    let t = TestTopology::fast("returns").await;
    let p = courier::publisher::Publisher::connect(
        &parsed_url(),
        courier::publisher::PublisherConfig {
            window: 512,
            ..Default::default()
        },
        courier::metrics::Metrics::new(),
    )
    .await
    .expect("connect");
    let n = 3000;
    let futs = (0..n).map(|i| {
        let key = if i % 7 == 3 { "nowhere" } else { "email" };
        let p = p.clone();
        let msg = job(&t.exchange(), key, &format!("ret-{i}"), 0);
        async move { (i, p.publish(msg).await) }
    });
    let results = futures_util::future::join_all(futs).await;
    let mut wrong = Vec::new();
    for (i, r) in &results {
        let should_return = i % 7 == 3;
        match r {
            Ok(()) if !should_return => {}
            Err(PublishError::Returned { message_id, .. })
                if should_return && *message_id == format!("ret-{i}") => {}
            other => wrong.push(format!("ret-{i}: {other:?}")),
        }
    }
    assert!(
        wrong.is_empty(),
        "{} misattributed, e.g. {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    let routed = (0..n).filter(|i| i % 7 != 3).count() as u32;
    assert_eq!(depth(&t.name("notifications.email")).await, routed);
}

#[tokio::test]
async fn a_consumer_cancelled_by_the_broker_is_noticed_and_resubscribed() {
    let t = TestTopology::fast("cancel").await;
    let sink = Sink::ok().await;
    let w = RunningWorker::http(&t, "notifications.email", &sink);
    w.wait_ready(WAIT).await;
    let queue = t.name("notifications.email");
    let conn = parsed_url().connect("test").await.expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    ch.queue_delete(queue.as_str().into(), Default::default())
        .await
        .expect("delete");
    let deadline = Instant::now() + WAIT;
    while w
        .metrics
        .consumer_cancels
        .with_label_values(&[&queue])
        .get()
        == 0
    {
        assert!(Instant::now() < deadline, "cancel not noticed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    courier::broker::apply(&parsed_url(), &t.topology)
        .await
        .expect("re-apply");
    w.wait_ready(WAIT).await;
    let p = publisher().await;
    let ids = publish_jobs(&p, &t.exchange(), "email", "after", 5).await;
    sink.wait_for(WAIT, "deliveries after resubscribe", |r| r.len() >= 5)
        .await;
    assert!(w.metrics.reconnects.with_label_values(&["consumer"]).get() >= 1);
    w.stop().await;
    assert_eq!(reconcile(&ids, &delivered_ids(&sink)), (0, 0));
}

/// Closes every connection whose client-provided name contains `needle`, through the
/// management API (connections appear there after its stats interval, so this polls).
async fn close_connections(needle: &str, already: &mut std::collections::HashSet<String>) -> usize {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + WAIT;
    loop {
        let list: serde_json::Value = client
            .get(format!("{}/api/connections", management_url()))
            .basic_auth("guest", Some("guest"))
            .send()
            .await
            .expect("management API")
            .json()
            .await
            .expect("JSON");
        let names: Vec<String> = list
            .as_array()
            .expect("array")
            .iter()
            .filter(|c| {
                c["client_properties"]["connection_name"]
                    .as_str()
                    .is_some_and(|n| n.contains(needle))
            })
            .filter_map(|c| c["name"].as_str().map(str::to_owned))
            // A closed connection lingers in the stats for a while: never count it twice.
            .filter(|n| !already.contains(n))
            .collect();
        if !names.is_empty() {
            for name in &names {
                already.insert(name.clone());
                client
                    .delete(format!(
                        "{}/api/connections/{}",
                        management_url(),
                        percent_encode(name)
                    ))
                    .basic_auth("guest", Some("guest"))
                    .send()
                    .await
                    .expect("close connection");
            }
            return names.len();
        }
        assert!(
            Instant::now() < deadline,
            "no connection named *{needle}* appeared"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn the_worker_reconnects_by_itself_when_its_connections_are_closed() {
    let t = TestTopology::fast("cut").await;
    let sink = Sink::start(
        std::sync::Arc::new(|_| (200, vec![])),
        Duration::from_millis(5),
    )
    .await;
    let w = RunningWorker::spawn(&t, "notifications.email", http_handler(&sink), |c| {
        c.concurrency = 8;
        c.prefetch = 32;
    });
    w.wait_ready(WAIT).await;
    let p = publisher().await;
    let ids = publish_jobs(&p, &t.exchange(), "email", "cut", 600).await;
    let queue = t.name("notifications.email");
    let mut already = std::collections::HashSet::new();
    for round in 1..=2 {
        sink.wait_for(WAIT, "progress before the cut", |r| r.len() >= round * 150)
            .await;
        let closed = close_connections(&format!("courier work {queue}"), &mut already).await;
        assert!(closed >= 1, "closed {closed}");
    }
    sink.wait_for(Duration::from_secs(60), "every message delivered", |r| {
        let got: std::collections::HashSet<&str> =
            r.iter().map(|x| x.message_id.as_str()).collect();
        ids.iter().all(|id| got.contains(id.as_str()))
    })
    .await;
    let deadline = Instant::now() + WAIT;
    while w.metrics.reconnects.with_label_values(&["consumer"]).get() < 2 {
        assert!(
            Instant::now() < deadline,
            "the worker did not reconnect twice"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    w.wait_ready(WAIT).await;
    w.stop().await;
    let (lost, dup) = reconcile(&ids, &delivered_ids(&sink));
    assert_eq!(lost, 0, "lost");
    // At-least-once: messages in flight at the cut may be delivered twice, never more than
    // a prefetch window per cut.
    assert!(dup <= 2 * 32, "duplicated {dup}");
    assert_eq!(depth(&queue).await, 0);
}

/// Everything a child wrote to its (piped) stderr, once it has exited.
pub(crate) fn take_stderr(child: &mut Child) -> String {
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut stderr);
    }
    stderr
}

pub(crate) fn spawn_worker_binary(
    t: &TestTopology,
    endpoint: &str,
    extra: &[&str],
) -> DeadlineChild {
    Command::new(env!("CARGO_BIN_EXE_courier"))
        .args([
            "work",
            "--queue",
            "notifications.email",
            "--handler",
            "http",
            "--endpoint",
            endpoint,
        ])
        .args(extra)
        .env("AMQP_URL", amqp_url())
        .env("COURIER_PREFIX", &t.prefix)
        .env("COURIER_TOPOLOGY", &t.file)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn_within(CHILD_DEADLINE)
}

pub(crate) fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .expect("kill runs")
        .success();
    assert!(ok, "kill {sig}");
}

pub(crate) async fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "worker did not exit within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn sigterm_under_load_finishes_in_flight_work_and_exits_zero() {
    let t = TestTopology::fast("sigterm").await;
    let sink = Sink::start(
        std::sync::Arc::new(|_| (200, vec![])),
        Duration::from_millis(20),
    )
    .await;
    let mut child = spawn_worker_binary(&t, &sink.url, &["--concurrency", "8", "--prefetch", "40"]);
    let p = publisher().await;
    let ids = publish_jobs(&p, &t.exchange(), "email", "term", 300).await;
    sink.wait_for(WAIT, "some deliveries", |r| r.len() >= 40)
        .await;
    signal(&child, "-TERM");
    let status = wait_exit(&mut child, Duration::from_secs(20)).await;
    let stderr = take_stderr(&mut child);
    assert!(status.success(), "exit {status:?}\n{stderr}");
    assert!(stderr.contains("stopped"), "{stderr}");
    assert!(!stderr.contains(":guest@"), "password in logs: {stderr}");
    let before = sink.all().len();
    assert!(before < 300, "stopped before the end ({before})");
    // Whatever was not finished went back to the queue: a second worker delivers the rest.
    let w = RunningWorker::http(&t, "notifications.email", &sink);
    sink.wait_for(WAIT, "the rest", |r| {
        let got: std::collections::HashSet<&str> =
            r.iter().map(|x| x.message_id.as_str()).collect();
        ids.iter().all(|id| got.contains(id.as_str()))
    })
    .await;
    w.stop().await;
    assert_eq!(
        reconcile(&ids, &delivered_ids(&sink)),
        (0, 0),
        "graceful: lost 0, duplicated 0"
    );
}

#[tokio::test]
async fn a_second_signal_exits_at_once_without_waiting_for_the_drain() {
    let t = TestTopology::fast("second-signal").await;
    let arrived = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = arrived.clone();
    let sink = Sink::start_with(
        std::sync::Arc::new(|_| (200, vec![])),
        std::sync::Arc::new(move |_| {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Duration::from_secs(60)
        }),
    )
    .await;
    let mut child = spawn_worker_binary(
        &t,
        &sink.url,
        &["--shutdown-timeout", "60s", "--handler-timeout", "120s"],
    );
    let p = publisher().await;
    publish_jobs(&p, &t.exchange(), "email", "slow", 1).await;
    let deadline = Instant::now() + WAIT;
    while arrived.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "the handler never called the sink"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = PipeLog::new(child.stderr.take());
    signal(&child, "-TERM");
    // The worker says it is draining once it stopped consuming: the point where a worker that
    // did not wait for its handler would go on to exit. The exit code 130 below proves it was
    // still there for the second signal.
    log.wait_for("finishing in-flight messages", WAIT).await;
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "the first signal drains: the worker waits for its handler"
    );
    signal(&child, "-TERM");
    let status = wait_exit(&mut child, Duration::from_secs(10)).await;
    let stderr = log.finish();
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("second signal"), "{stderr}");
}

#[test]
fn work_help_explains_the_outcome_rules() {
    let out = courier("", &["work", "--help"]);
    let text = stdout(&out);
    for needle in [
        "--prefetch",
        "--concurrency",
        "--shutdown-timeout",
        "max-attempts",
        "crash-loop",
        "COURIER_ENDPOINT",
        "Retry-After",
    ] {
        assert!(text.contains(needle), "--help lacks {needle}: {text}");
    }
}

#[test]
fn work_refuses_prefetch_zero_before_connecting() {
    let out = Command::new(env!("CARGO_BIN_EXE_courier"))
        .args([
            "work",
            "--queue",
            "notifications.email",
            "--handler",
            "noop",
        ])
        .args(["--prefetch", "0"])
        // Nobody listens there: the refusal must come before any connection attempt.
        .env("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")
        .env("COURIER_PREFIX", "")
        .env(
            "COURIER_TOPOLOGY",
            concat!(env!("CARGO_MANIFEST_DIR"), "/topology/notifications.toml"),
        )
        .output()
        .expect("courier runs");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--prefetch 0") && err.contains("unlimited"),
        "{err}"
    );
}

#[tokio::test]
async fn a_worker_that_cannot_log_in_keeps_the_password_out_of_its_logs() {
    let t = TestTopology::fast("badpw").await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_courier"))
        .args([
            "work",
            "--queue",
            "notifications.email",
            "--handler",
            "noop",
        ])
        .env("AMQP_URL", "amqp://guest:Wr0ngSecretPw@127.0.0.1:5672/%2f")
        .env("COURIER_PREFIX", &t.prefix)
        .env("COURIER_TOPOLOGY", &t.file)
        // The default filter, as a new user has it.
        .env_remove("RUST_LOG")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn_within(CHILD_DEADLINE);
    let log = PipeLog::new(child.stderr.take());
    // The refused login has been logged: what the assertions below read.
    log.wait_for("cannot consume", WAIT).await;
    signal(&child, "-TERM");
    let status = wait_exit(&mut child, Duration::from_secs(10)).await;
    let stderr = log.finish();
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("cannot consume"), "{stderr}");
    assert!(stderr.contains("guest:***@"), "{stderr}");
    assert!(!stderr.contains("Wr0ngSecretPw"), "{stderr}");
    assert!(
        !stderr.contains("Exponential backoff"),
        "lapin's stray line beside ours: {stderr}"
    );
}

#[tokio::test]
async fn logs_carry_no_colour_codes_when_stderr_is_not_a_terminal() {
    // Nobody listens on port 1: the worker logs a warning per connection attempt.
    let mut child = Command::new(env!("CARGO_BIN_EXE_courier"))
        .args([
            "work",
            "--queue",
            "notifications.email",
            "--handler",
            "noop",
        ])
        .env("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")
        .env("COURIER_PREFIX", "")
        .env("COURIER_TOPOLOGY", default_topology_path())
        .env("RUST_LOG", "info")
        // The point is the terminal check, not the NO_COLOR convention.
        .env_remove("NO_COLOR")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn_within(CHILD_DEADLINE);
    let log = PipeLog::new(child.stderr.take());
    // A warning has been written: the colour check below has a line to look at.
    log.wait_for("cannot consume", WAIT).await;
    signal(&child, "-TERM");
    let status = wait_exit(&mut child, Duration::from_secs(10)).await;
    let stderr = log.finish();
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("cannot consume"), "no log line: {stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "ANSI escapes in a piped log: {stderr:?}"
    );
}

#[test]
fn a_wrong_password_is_one_clear_error_without_the_password() {
    // RUST_LOG unset (what a new user has) and set without naming lapin: the same answer.
    for rust_log in [None, Some("info")] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_courier"));
        cmd.args(["topology", "apply"])
            .env("AMQP_URL", "amqp://guest:Wr0ngApplyPw@127.0.0.1:5672/%2f")
            .env("COURIER_PREFIX", unique_prefix("badpw-apply"))
            .env("COURIER_TOPOLOGY", default_topology_path());
        match rust_log {
            Some(level) => cmd.env("RUST_LOG", level),
            None => cmd.env_remove("RUST_LOG"),
        };
        let out = output_within(&mut cmd, DEFAULT_DEADLINE);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "RUST_LOG {rust_log:?}: {err}");
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(
            lines.len(),
            1,
            "RUST_LOG {rust_log:?}: one message, got: {err}"
        );
        assert!(
            lines[0].starts_with("error: cannot connect to amqp://guest:***@127.0.0.1:5672")
                && lines[0].contains("ACCESS_REFUSED"),
            "RUST_LOG {rust_log:?}: {err}"
        );
        assert!(!err.contains("backoff"), "lapin's stray line: {err}");
        assert!(!err.contains("Wr0ngApplyPw"), "password shown: {err}");
    }
}

#[tokio::test]
async fn http_header_values_with_commas_reach_the_endpoint_intact() {
    let t = TestTopology::fast("headers").await;
    let sink = Sink::ok().await;
    let p = publisher().await;
    // The flag: one header per occurrence, never split.
    let mut child = spawn_worker_binary(
        &t,
        &sink.url,
        &[
            "--http-header",
            "Authorization=Bearer a,b;c==",
            "--http-header",
            "X-Tenant=acme, inc",
        ],
    );
    publish_jobs(&p, &t.exchange(), "email", "flag", 1).await;
    sink.wait_for(WAIT, "the flag's delivery", |r| r.len() == 1)
        .await;
    signal(&child, "-TERM");
    assert!(wait_exit(&mut child, Duration::from_secs(15))
        .await
        .success());
    // The environment variable: one header per line.
    let mut child = Command::new(env!("CARGO_BIN_EXE_courier"))
        .args([
            "work",
            "--queue",
            "notifications.email",
            "--handler",
            "http",
            "--endpoint",
            &sink.url,
        ])
        .env("AMQP_URL", amqp_url())
        .env("COURIER_PREFIX", &t.prefix)
        .env("COURIER_TOPOLOGY", &t.file)
        .env(
            "COURIER_HTTP_HEADERS",
            "Authorization=Bearer a,b;c==\nX-Tenant=acme, inc\n",
        )
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn_within(CHILD_DEADLINE);
    publish_jobs(&p, &t.exchange(), "email", "env", 1).await;
    sink.wait_for(WAIT, "the variable's delivery", |r| r.len() == 2)
        .await;
    signal(&child, "-TERM");
    assert!(wait_exit(&mut child, Duration::from_secs(15))
        .await
        .success());
    let stderr = take_stderr(&mut child);
    assert!(
        !stderr.contains("a,b;c"),
        "a header value was logged: {stderr}"
    );
    for r in sink.all() {
        assert_eq!(
            r.header("authorization"),
            ["Bearer a,b;c=="],
            "{}",
            r.message_id
        );
        assert_eq!(r.header("x-tenant"), ["acme, inc"], "{}", r.message_id);
    }
}

#[test]
fn help_never_shows_the_password_from_the_environment() {
    for args in [
        vec!["--help"],
        vec!["work", "--help"],
        vec!["publish", "--help"],
        vec!["topology", "apply", "--help"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_courier"))
            .args(&args)
            .env("AMQP_URL", "amqp://guest:HelpSecret99@127.0.0.1:5672/%2f")
            .output()
            .expect("runs");
        let all = format!("{}{}", stdout(&out), stderr(&out));
        assert!(!all.contains("HelpSecret99"), "{args:?}: {all}");
    }
}

#[tokio::test]
async fn bodies_are_not_logged_and_endpoints_never_come_from_messages() {
    let t = TestTopology::fast("nolog").await;
    // The configured endpoint fails permanently, so the worker logs errors for this message.
    let sink = Sink::start(std::sync::Arc::new(|_| (400, vec![])), Duration::ZERO).await;
    let elsewhere = Sink::ok().await;
    let mut child = spawn_worker_binary(&t, &sink.url, &[]);
    let p = publisher().await;
    let mut m = job(&t.exchange(), "email", "secret-body", 0);
    m.body = format!(
        r#"{{"card":"4111-MARKER-1111","url":"{}","endpoint":"{}"}}"#,
        elsewhere.url, elsewhere.url
    )
    .into_bytes();
    let mut h = lapin::types::FieldTable::default();
    h.insert(
        "endpoint".into(),
        lapin::types::AMQPValue::LongString(elsewhere.url.as_str().into()),
    );
    m.properties = m
        .properties
        .with_headers(h)
        .with_reply_to(elsewhere.url.as_str().into())
        .with_correlation_id("c".into());
    p.publish(m).await.expect("published");
    wait_depth(&t.dlq(), 1, WAIT).await;
    signal(&child, "-TERM");
    assert!(wait_exit(&mut child, Duration::from_secs(15))
        .await
        .success());
    let stderr = take_stderr(&mut child);
    assert!(stderr.contains("secret-body"), "the id is logged: {stderr}");
    assert!(
        !stderr.contains("MARKER"),
        "a message body reached the logs: {stderr}"
    );
    assert_eq!(sink.all().len(), 1, "the configured endpoint was called");
    assert!(
        elsewhere.all().is_empty(),
        "a URL from the message was called"
    );
}
