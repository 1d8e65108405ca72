//! Failures: errors name the object, the value and the fix (missing queue, bad flags, unreachable
//! broker without its password, malformed import lines); a pass holds the queue exclusively, and
//! a lost connection loses nothing.

use crate::util::*;
use courier::envelope::{now_millis, Reason};
use std::collections::HashSet;
use std::process::Stdio;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_name_the_object_the_value_and_the_fix() {
    let env = Env::new("errors").await;

    let o = env.run(&["list", "--queue", "no-such-dlq"]);
    expect_code(&o, 1, "missing queue");
    assert!(
        stderr(&o).contains("queue 'no-such-dlq' does not exist")
            && stderr(&o).contains("courier topology apply"),
        "{}",
        stderr(&o)
    );

    let o = env.run(&["replay", "--older-than", "3 fortnights"]);
    expect_code(&o, 2, "bad --older-than");
    let e = stderr(&o);
    assert!(
        e.contains("--older-than")
            && e.contains("3 fortnights")
            && e.contains("expected a duration"),
        "{e}"
    );
    let o = env.run(&["stats", "--reason", "boom"]);
    expect_code(&o, 2, "bad --reason");
    assert!(stderr(&o).contains("max-attempts"), "{}", stderr(&o));
    let o = env.run(&["list", "--header", "tenant"]);
    expect_code(&o, 2, "bad --header");
    let o = env.run(&["replay", "--rate", "0/s"]);
    expect_code(&o, 2, "bad --rate");
    assert!(stderr(&o).contains("--rate"), "{}", stderr(&o));

    let o = env
        .command(&["stats"])
        .env("AMQP_URL", "amqp://guest:s3cret-pw@127.0.0.1:1/%2f")
        .output()
        .expect("runs");
    expect_code(&o, 1, "unreachable broker");
    assert!(
        stderr(&o).contains("cannot connect to amqp://guest:***@127.0.0.1:1/"),
        "{}",
        stderr(&o)
    );
    assert!(
        !stderr(&o).contains("s3cret-pw"),
        "password leaked: {}",
        stderr(&o)
    );

    // A malformed line: file, line number and why; nothing is published.
    let good = r#"{"format":"courier-dlq/1","properties":{"message_id":"i-1"},"body":"{}"}"#;
    let bad = r#"{"format":"courier-dlq/1","properties":{"message_id":"i-3"},"headers":{"n":{"type":"i8","value":999}},"body":"{}"}"#;
    let file = TempFile::new("malformed");
    std::fs::write(&file.0, format!("{good}\n{good}\n{bad}\n{good}\n")).expect("write");
    let o = env.run(&["import", file.path()]);
    expect_code(&o, 1, "malformed import line");
    let e = stderr(&o);
    assert!(
        e.contains(&format!(
            "{}:3: headers.n: 999 does not fit in i8",
            file.path()
        )),
        "{e}"
    );
    assert!(e.contains("nothing was imported"), "{e}");
    assert_eq!(depth(&env.dlq()).await, 0);

    // An unfinished last line (an export killed mid-write) is skipped with a warning.
    std::fs::write(
        &file.0,
        format!("{good}\n{good}\n{{\"format\":\"courier-dl"),
    )
    .expect("write");
    let o = env.run(&["import", file.path()]);
    expect_code(&o, 0, "import with an unfinished last line");
    assert!(
        stderr(&o).contains(":3: unfinished last line skipped"),
        "{}",
        stderr(&o)
    );
    assert!(stdout(&o).contains("imported 2 of 2"), "{}", stdout(&o));
    assert_eq!(depth(&env.dlq()).await, 2);

    let o = env.run(&["import", file.path(), "--to-queue", "no-such-queue"]);
    expect_code(&o, 1, "import to a missing queue");
    assert!(stderr(&o).contains("no-such-queue"), "{}", stderr(&o));
}

#[test]
fn logs_carry_no_colour_codes_when_stderr_is_not_a_terminal() {
    // lapin logs at debug while the tool looks for a queue that does not exist (lapin is quiet
    // unless named); stderr is a pipe here, never a terminal.
    let queue = format!("{}missing", unique_prefix("nocolour"));
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_courier-dlq"));
    cmd.args(["stats", "--queue", &queue])
        .env("AMQP_URL", amqp_url())
        .env("RUST_LOG", "warn,lapin=debug")
        // The point is the terminal check, not the NO_COLOR convention.
        .env_remove("NO_COLOR");
    let o = output_within(&mut cmd, DEFAULT_DEADLINE);
    expect_code(&o, 1, "missing queue");
    let e = stderr(&o);
    assert!(e.contains("DEBUG"), "no log line to check: {e}");
    assert!(!e.contains('\u{1b}'), "ANSI escapes in a piped log: {e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_are_exclusive_and_a_lost_connection_loses_nothing() {
    const N: usize = 3000;
    let env = Env::new("connloss").await;
    let p = publisher().await;
    let now = now_millis();
    let msgs = (0..N)
        .map(|i| {
            worker_dead_letter(
                &env,
                &format!("c-{i}"),
                "email",
                Reason::MaxAttempts,
                "HTTP 503",
                now,
            )
        })
        .collect();
    publish_all(&p, msgs).await;
    p.close().await;

    let mut child = env
        .command(&["replay", "--rate", "150/s"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn_within(CHILD_DEADLINE);
    let email = env.queue("notifications.email");
    let deadline = Instant::now() + Duration::from_secs(20);
    while depth(&email).await < 50 {
        assert!(Instant::now() < deadline, "replay did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A second tool cannot interleave with the running pass.
    let o = env.run(&["list"]);
    expect_code(&o, 1, "list during a pass");
    assert!(
        stderr(&o).contains("in use by another consumer"),
        "{}",
        stderr(&o)
    );

    // Cut both of the pass's connections (consumer and publisher) under it.
    // The management API lists a new connection only after its next statistics round (up to
    // ~5 s), so keep asking while the (rate-limited) pass runs.
    let needle = format!("courier-dlq replay {}", env.dlq());
    let deadline = Instant::now() + Duration::from_secs(15);
    while close_connections(&needle).await == 0 {
        assert!(
            Instant::now() < deadline,
            "the pass's connections never showed up in the management API"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let replayed_at_cut = depth(&email).await;
    assert!(
        (replayed_at_cut as usize) < N,
        "the replay was done before its connections were cut"
    );
    // The pass resumes by itself over what is left (it left every unacked message in the
    // queue). A tool that hangs after losing its connection must fail the test, not stall the
    // suite.
    let deadline = Instant::now() + Duration::from_secs(90);
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("courier-dlq did not finish within 90 s of losing its connections");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = child.wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "the pass resumes and finishes: {err}"
    );
    assert!(err.contains("resuming on what is left"), "{err}");

    let in_dlq: HashSet<String> = drain(&env.dlq()).await.iter().map(Stored::id).collect();
    let delivered: HashSet<String> = drain(&email).await.iter().map(Stored::id).collect();
    let lost: Vec<String> = (0..N)
        .map(|i| format!("c-{i}"))
        .filter(|id| !in_dlq.contains(id) && !delivered.contains(id))
        .collect();
    assert!(lost.is_empty(), "lost {:?}", &lost[..lost.len().min(5)]);
    assert!(in_dlq.is_empty(), "left in the DLQ: {}", in_dlq.len());
}

/// An installed `courier-dlq` works from any directory: without --topology and without
/// topology/notifications.toml in the working directory it reads the dead-letter queue's name
/// from the built-in default, and says so once.
#[tokio::test]
async fn stats_from_another_directory_uses_the_built_in_default_topology() {
    let env = Env::new("anywhere").await;
    let elsewhere = std::env::temp_dir().join(unique_prefix("cwd").trim_end_matches('.'));
    std::fs::create_dir_all(&elsewhere).expect("temp dir");
    let mut cmd = env.command(&["stats", "--json"]);
    cmd.current_dir(&elsewhere).env_remove("COURIER_TOPOLOGY");
    let o = output_within(&mut cmd, DEFAULT_DEADLINE);
    let _ = std::fs::remove_dir(&elsewhere);
    expect_code(&o, 0, "stats from another directory");
    assert_eq!(
        stderr(&o)
            .matches(courier::topology::BUILT_IN_NOTICE)
            .count(),
        1,
        "{}",
        stderr(&o)
    );
    assert!(stdout(&o).contains(&env.dlq()), "{}", stdout(&o));
}

/// A refused login is one clear error: the tool's own line, with the password scrubbed, and
/// not lapin's "Exponential backoff attempts exhausted" beside it, whether RUST_LOG is unset
/// (what a new user has) or asks for more without naming lapin.
#[test]
fn a_wrong_password_is_one_clear_error_without_lapins_line() {
    let queue = format!("{}dlq", unique_prefix("badpw"));
    for rust_log in [None, Some("info"), Some("debug")] {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_courier-dlq"));
        cmd.args(["stats", "--queue", &queue])
            .env("AMQP_URL", "amqp://guest:Wr0ngDlqPw@127.0.0.1:5672/%2f")
            // Only the AMQP connection: the management API would log its own requests at debug.
            .env("COURIER_MANAGEMENT_URL", "http://127.0.0.1:1");
        match rust_log {
            Some(level) => cmd.env("RUST_LOG", level),
            None => cmd.env_remove("RUST_LOG"),
        };
        let o = output_within(&mut cmd, DEFAULT_DEADLINE);
        expect_code(&o, 1, &format!("wrong password, RUST_LOG {rust_log:?}"));
        let e = stderr(&o);
        let errors: Vec<&str> = e
            .lines()
            .filter(|l| l.contains("ERROR") || l.starts_with("error"))
            .collect();
        assert_eq!(
            errors.len(),
            1,
            "RUST_LOG {rust_log:?}: one error, got: {e}"
        );
        assert!(
            errors[0].starts_with("error: cannot connect to amqp://guest:***@127.0.0.1:5672")
                && errors[0].contains("ACCESS_REFUSED"),
            "RUST_LOG {rust_log:?}: {e}"
        );
        assert!(
            !e.contains("backoff") && !e.contains("lapin"),
            "RUST_LOG {rust_log:?}: lapin's stray lines: {e}"
        );
        assert!(!e.contains("Wr0ngDlqPw"), "password shown: {e}");
    }
}
