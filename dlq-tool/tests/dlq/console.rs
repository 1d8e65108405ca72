//! The console (`courier-dlq console`), the real binary, against the real broker:
//! - in a real headless Chromium (Debian's `chromium`, driven through Debian's `chromedriver`
//!   over WebDriver): dead letters made by a real worker whose endpoint answers 503, the
//!   groups, a message, a group replayed with its preview and a confirmation, the count
//!   dropping and every message delivered at the endpoint (lost 0, duplicated 0), with a
//!   screenshot at each step (printed paths, under the target directory);
//! - a hostile dead letter (`<script>` and `<img onerror>` in its body, headers and error)
//!   shown as text, asserted in the DOM;
//! - over plain HTTP: no token, 401; an action without its session's CSRF token, 403; a
//!   read-only console refuses actions; no password in any page.
//!
//! The browser tests need `/usr/bin/chromium` and `/usr/bin/chromedriver` (`scripts/setup
//! browser`); they fail, saying so, when those are missing.

use crate::util::*;
use courier::envelope::{self, Reason};
use courier::publisher::Outgoing;
use courier_testkit::sink::Sink;
use courier_testkit::worker::RunningWorker;
use fantoccini::{Client, ClientBuilder, Locator};
use lapin::types::FieldTable;
use lapin::BasicProperties;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// How long a console or a chromedriver may live: well past the longest test.
const CHILD_LIFE: Duration = Duration::from_secs(300);

/// A running console: the real binary on a free port, killed on drop.
struct Console {
    _child: DeadlineChild,
    /// `http://127.0.0.1:PORT`.
    base: String,
    /// Its token.
    token: String,
}

impl Console {
    async fn start(env: &Env, extra: &[&str]) -> Self {
        let port = courier_testkit::free_port();
        let token = format!("test-token-{}", envelope::new_message_id());
        let listen = format!("127.0.0.1:{port}");
        let mut args = vec![
            "console",
            "--listen",
            &listen,
            "--user",
            "browser-test",
            "--refresh",
            "1s",
        ];
        args.extend_from_slice(extra);
        let mut cmd = env.command(&args);
        cmd.env("COURIER_CONSOLE_TOKEN", &token)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let child = spawn_within(&mut cmd, CHILD_LIFE);
        let base = format!("http://{listen}");
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while client.get(format!("{base}/")).send().await.is_err() {
            assert!(
                Instant::now() < deadline,
                "the console did not listen on {listen} within 30s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Self {
            _child: child,
            base,
            token,
        }
    }
}

/// Chromium through chromedriver; both end on drop (chromedriver's deadline kills it too).
struct Browser {
    client: Client,
    _driver: DeadlineChild,
    /// Where this test's screenshots go.
    shots: PathBuf,
    /// Screenshots taken so far.
    taken: u32,
    /// Chromium's profile directory, unique to this browser: it marks its processes, which
    /// outlive chromedriver when a test panics before closing the session.
    profile: PathBuf,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Only the processes started with this profile: this test's chromium, nothing else.
        let marker = format!("--user-data-dir={}", self.profile.display());
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for entry in dir.flatten() {
                let pid = entry.file_name().to_string_lossy().into_owned();
                if !pid.bytes().all(|b| b.is_ascii_digit()) {
                    continue;
                }
                let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
                if String::from_utf8_lossy(&cmdline)
                    .split('\0')
                    .any(|arg| arg == marker)
                {
                    let _ = std::process::Command::new("kill")
                        .args(["-KILL", &pid])
                        .status();
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

impl Browser {
    async fn start(test: &str) -> Self {
        for p in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(p).exists(),
                "{p} is missing: the console's browser tests need Debian's chromium and chromedriver; run `scripts/setup browser` (apt-get install -y chromium chromium-driver)"
            );
        }
        let port = courier_testkit::free_port();
        let driver = spawn_within(
            std::process::Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
            CHILD_LIFE,
        );
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not listen within 30s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = std::env::temp_dir().join(format!(
            "courier-console-chromium-{}-{port}",
            std::process::id()
        ));
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".to_owned(),
            serde_json::json!({
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                         "--disable-gpu", "--window-size=1280,1100",
                         format!("--user-data-dir={}", profile.display())],
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = tokio::time::timeout(
            Duration::from_secs(60),
            ClientBuilder::new(connector)
                .capabilities(caps)
                .connect(&url),
        )
        .await
        .expect("chromium starts within 60s")
        .expect("a WebDriver session with headless chromium");
        let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join("console-screenshots")
            .join(test);
        let _ = std::fs::remove_dir_all(&shots);
        std::fs::create_dir_all(&shots).expect("screenshot directory");
        Self {
            client,
            _driver: driver,
            shots,
            taken: 0,
            profile,
        }
    }

    /// Saves a screenshot of the page as it is now, and prints its path.
    async fn shot(&mut self, name: &str) -> PathBuf {
        self.taken += 1;
        let png = self.client.screenshot().await.expect("screenshot");
        let path = self.shots.join(format!("{:02}-{name}.png", self.taken));
        std::fs::write(&path, png).expect("screenshot written");
        println!("screenshot: {}", path.display());
        path
    }

    async fn text(&self, css: &str) -> String {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .text()
            .await
            .expect("text")
    }

    /// The text of `css` in one step, for a part the page replaces as it refreshes (an element
    /// found first could be gone by the time its text is asked for).
    async fn live_text(&self, css: &str) -> String {
        let v = self
            .client
            .execute(
                "const e = document.querySelector(arguments[0]); return e ? e.innerText : '';",
                vec![serde_json::json!(css)],
            )
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"));
        v.as_str().unwrap_or_default().to_owned()
    }

    /// Waits until `css` exists (a page is loaded and rendered by the server, so this is short).
    async fn wait_for(&self, css: &str) {
        tokio::time::timeout(
            Duration::from_secs(30),
            self.client.wait().for_element(Locator::Css(css)),
        )
        .await
        .unwrap_or_else(|_| panic!("{css} did not appear within 30s"))
        .unwrap_or_else(|e| panic!("{css}: {e}"));
    }

    async fn close(&self) {
        let _ = self.client.clone().close().await;
    }
}

/// 2xx answers at the endpoint, by message id.
fn delivered(sink: &Sink) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for r in sink.all() {
        if (200..300).contains(&r.status) {
            *out.entry(r.message_id).or_insert(0) += 1;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_group_made_by_a_real_worker_is_replayed_from_the_browser_with_a_preview_and_nothing_is_lost(
) {
    let env = Env::with_file("console", "tests/fixtures/fast.toml").await;
    let _ = std::fs::remove_file(env.audit_log());
    // The endpoint is down: every message goes through the retry tiers (100 ms, 400 ms) and is
    // dead-lettered by the worker itself, `max-attempts: HTTP 503`.
    let healthy = Arc::new(AtomicBool::new(false));
    let up = healthy.clone();
    let sink = Sink::start(
        Arc::new(move |_| (if up.load(Ordering::SeqCst) { 200 } else { 503 }, vec![])),
        Duration::ZERO,
    )
    .await;
    let worker = RunningWorker::http(&env, "notifications.email", &sink);
    worker.wait_ready(Duration::from_secs(15)).await;
    let ids: Vec<String> = (0..40).map(|i| format!("console-{i}")).collect();
    let msgs = ids
        .iter()
        .map(|id| Outgoing {
            exchange: env.exchange(),
            routing_key: "email".to_owned(),
            properties: BasicProperties::default()
                .with_message_id(id.as_str().into())
                .with_delivery_mode(2)
                .with_content_type("application/json".into()),
            body: format!(r#"{{"to":"{id}@example.com","text":"hello"}}"#).into_bytes(),
        })
        .collect();
    publish_all(&publisher().await, msgs).await;
    courier_testkit::queues::wait_depth(&env.dlq(), 40, Duration::from_secs(60)).await;
    let failed_before = sink.all().len();
    assert!(failed_before >= 200, "5 attempts each: {failed_before}");

    let console = Console::start(&env, &[]).await;
    let mut b = Browser::start("replay").await;
    b.client
        .goto(&format!("{}/?token={}", console.base, console.token))
        .await
        .expect("console loads");
    b.wait_for("#groups tr[data-group]").await;
    // The token went into a session cookie and out of the address bar.
    let here = b.client.current_url().await.expect("url");
    assert!(!here.as_str().contains("token"), "{here}");
    let row = b
        .client
        .find(Locator::Css("#groups tr[data-group]"))
        .await
        .expect("a group");
    let group = row.attr("data-group").await.expect("attr").expect("id");
    let row_text = row.text().await.expect("text");
    assert!(row_text.contains("max-attempts: HTTP 503"), "{row_text}");
    assert_eq!(b.text("#groups tr[data-group] td.count").await, "40");
    // The fleet table is RabbitMQ's numbers (sampled every few seconds), refreshed by the page
    // itself: the dead-letter queue's row comes to say 40, the email queue's has our worker.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let dlq = b.live_text("#fleet tr.dlq").await;
        if dlq.contains(&env.dlq()) && dlq.split_whitespace().nth(1) == Some("40") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the fleet never showed 40 in the dead-letter queue: {dlq}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let email = b.live_text("#fleet tr.work").await;
    assert!(email.contains("notifications.email"), "{email}");
    assert_eq!(
        email.split_whitespace().nth(3),
        Some("1"),
        "one consumer: {email}"
    );
    b.shot("groups").await;

    // A group's messages, then one message.
    b.client
        .find(Locator::Css("a.group-link"))
        .await
        .expect("group link")
        .click()
        .await
        .expect("click");
    b.wait_for("#messages a.message-link").await;
    assert!(b
        .text("#group-count")
        .await
        .contains("40 message(s) of this group"));
    b.shot("group").await;
    b.client
        .find(Locator::Css("#messages a.message-link"))
        .await
        .expect("message link")
        .click()
        .await
        .expect("click");
    b.wait_for("#body").await;
    let id = b.text("#message-id").await;
    assert!(ids.contains(&id), "{id}");
    assert!(b.text("#body").await.contains(&format!("{id}@example.com")));
    assert!(b.text("#headers").await.contains("x-courier-reason"));
    b.shot("message").await;

    // Replay the group: the preview first (a dry run), then the confirmation.
    b.client
        .goto(&format!("{}/group/{group}", console.base))
        .await
        .expect("group page");
    b.wait_for("a.button").await;
    b.client
        .find(Locator::LinkText("replay…"))
        .await
        .expect("replay button")
        .click()
        .await
        .expect("click");
    b.wait_for("#preview").await;
    let preview = b.text("#preview").await;
    assert!(
        preview.contains("dry run: nothing was changed"),
        "{preview}"
    );
    assert!(preview.contains("would replay: 40"), "{preview}");
    assert_eq!(
        b.text("#command").await,
        format!("courier-dlq replay --group={group}")
    );
    // Nothing moved by previewing.
    assert_eq!(courier_testkit::queues::depth(&env.dlq()).await, 40);
    b.shot("preview").await;

    healthy.store(true, Ordering::SeqCst);
    b.client
        .find(Locator::Css("#confirm-button"))
        .await
        .expect("confirm")
        .click()
        .await
        .expect("click");
    b.wait_for("#job-state").await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let state = b.text("#job-state").await;
        if state != "running" {
            assert_eq!(state, "done", "outcome: {}", b.text("#job-outcome").await);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the replay did not end within 60s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        b.text("#job-outcome").await.contains("moved 40"),
        "{}",
        b.text("#job-outcome").await
    );
    assert_eq!(b.text("#job-done").await, "40", "{}", b.text("#job").await);
    b.shot("replayed").await;

    // Every message delivered at the endpoint, once.
    let deadline = Instant::now() + Duration::from_secs(30);
    while delivered(&sink).len() < ids.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got = delivered(&sink);
    let lost: Vec<&String> = ids.iter().filter(|id| !got.contains_key(*id)).collect();
    let duplicated: Vec<(&String, &usize)> = got.iter().filter(|(_, n)| **n > 1).collect();
    println!(
        "replayed from the console: {} of {} delivered, lost {}, duplicated {}",
        got.len(),
        ids.len(),
        lost.len(),
        duplicated.len()
    );
    assert!(lost.is_empty(), "lost: {lost:?}");
    assert!(duplicated.is_empty(), "duplicated: {duplicated:?}");
    assert_eq!(got.len(), ids.len(), "only the group's ids: {got:?}");

    // The count dropped: the group is gone from the page.
    b.client
        .goto(&format!("{}/", console.base))
        .await
        .expect("back");
    b.wait_for("#dead-letters p").await;
    assert!(
        b.client
            .find_all(Locator::Css(&format!("#groups tr[data-group='{group}']")))
            .await
            .expect("query")
            .is_empty(),
        "the replayed group is still listed"
    );
    assert_eq!(b.text("#no-groups").await, "No dead letters.");
    b.shot("after").await;
    assert_eq!(courier_testkit::queues::depth(&env.dlq()).await, 0);

    // The audit trail names the console's user and the command line it stood for.
    let audit = std::fs::read_to_string(env.audit_log()).expect("audit log");
    let line: serde_json::Value =
        serde_json::from_str(audit.lines().last().expect("a line")).expect("JSON");
    assert_eq!(line["user"], "browser-test via console", "{line}");
    assert_eq!(line["command"], "replay", "{line}");
    assert_eq!(line["moved"], 40, "{line}");
    assert_eq!(line["outcome"], "ok", "{line}");
    assert_eq!(line["filter"]["group"][0], group.as_str(), "{line}");
    b.client
        .goto(&format!("{}/audit", console.base))
        .await
        .expect("audit page");
    b.wait_for("table.audit").await;
    assert!(b
        .text("table.audit")
        .await
        .contains("browser-test via console"));

    b.close().await;
    worker.stop().await;
}

/// A dead letter whose body, headers and error try to run a script.
fn hostile(env: &Env) -> Outgoing {
    let mut original = FieldTable::default();
    original.insert(
        "x-evil".into(),
        long("<script>window.__pwned = 'header'</script>"),
    );
    let headers = envelope::dead_letter_headers(
        Some(&original),
        5,
        Reason::Permanent,
        "invalid address <img src=x onerror=\"window.__pwned='error'\">",
        &env.origin("email"),
        envelope::now_millis(),
    );
    Outgoing {
        exchange: String::new(),
        routing_key: env.dlq(),
        properties: BasicProperties::default()
            .with_message_id("hostile-<b>1</b>".into())
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_headers(headers),
        body: br#"{"to":"<script>window.__pwned = 'body'</script>","html":"<img src=x onerror=\"window.__pwned='img'\">"}"#.to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_dead_letter_is_shown_as_text_and_runs_nothing() {
    let env = Env::with_file("console-hostile", "tests/fixtures/fast.toml").await;
    publish_all(&publisher().await, vec![hostile(&env)]).await;
    let console = Console::start(&env, &["--read-only"]).await;
    let mut b = Browser::start("hostile").await;
    b.client
        .goto(&format!("{}/?token={}", console.base, console.token))
        .await
        .expect("console loads");
    b.wait_for("#groups td.cause").await;
    assert!(b
        .text("#groups td.cause")
        .await
        .contains("<img src=x onerror="));
    b.client
        .goto(&format!(
            "{}/message/{}",
            console.base, "hostile-%3Cb%3E1%3C%2Fb%3E"
        ))
        .await
        .expect("message page");
    b.wait_for("#body").await;
    assert_eq!(b.text("#message-id").await, "hostile-<b>1</b>");
    let body = b.text("#body").await;
    assert!(
        body.contains("<script>window.__pwned = 'body'</script>"),
        "{body}"
    );
    assert!(body.contains("<img src=x onerror="), "{body}");
    let headers = b.text("#headers").await;
    assert!(
        headers.contains("<script>window.__pwned = 'header'</script>"),
        "{headers}"
    );
    assert!(headers.contains("<img src=x onerror="), "{headers}");
    // In the DOM: the text is there, and no element was made of it, nothing ran.
    let seen = b
        .client
        .execute(
            "return [typeof window.__pwned, document.querySelectorAll('main script').length, document.querySelectorAll('main img').length, document.querySelectorAll('main b').length];",
            vec![],
        )
        .await
        .expect("script runs");
    assert_eq!(seen, serde_json::json!(["undefined", 0, 0, 0]), "{seen}");
    b.shot("hostile-message").await;
    // Read-only: no action buttons anywhere.
    assert!(b
        .client
        .find_all(Locator::Css("a.button"))
        .await
        .expect("query")
        .is_empty());
    b.close().await;
    assert_eq!(courier_testkit::queues::depth(&env.dlq()).await, 1);
}

/// A GET without following redirects, with optional cookie and bearer token.
async fn get(
    url: &str,
    cookie: Option<&str>,
    bearer: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, String) {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let mut req = client.get(url);
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    if let Some(t) = bearer {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let r = req.send().await.expect("request");
    let (status, headers) = (r.status().as_u16(), r.headers().clone());
    (status, headers, r.text().await.unwrap_or_default())
}

async fn post(url: &str, cookie: Option<&str>, bearer: Option<&str>, form: &str) -> (u16, String) {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let mut req = client
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form.to_owned());
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    if let Some(t) = bearer {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let r = req.send().await.expect("request");
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

/// Opens a session with the token: the cookie to send.
async fn login(console: &Console) -> String {
    let (status, headers, _) = get(
        &format!("{}/?token={}", console.base, console.token),
        None,
        None,
    )
    .await;
    assert_eq!(status, 303);
    let set = headers
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .expect("a session cookie");
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    assert!(
        !set.contains(&console.token),
        "the cookie is not the token: {set}"
    );
    set.split(';').next().expect("name=value").to_owned()
}

/// The CSRF token in a page's confirm form.
fn csrf_of(page: &str) -> String {
    let at = page.find(r#"name="csrf" value=""#).expect("a confirm form") + 19;
    page[at..].split('"').next().expect("value").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_is_401_and_an_action_without_its_csrf_token_is_403() {
    let env = Env::with_file("console-auth", "tests/fixtures/fast.toml").await;
    let now = envelope::now_millis();
    let seeded = worker_dead_letter(&env, "auth-1", "email", Reason::Permanent, "HTTP 400", now);
    publish_all(&publisher().await, vec![seeded]).await;
    let console = Console::start(&env, &[]).await;
    let base = &console.base;

    for path in [
        "/",
        "/fleet",
        "/group/96da919e",
        "/message/auth-1",
        "/action?kind=purge",
        "/audit",
        "/job/1/status",
    ] {
        let (status, _, body) = get(&format!("{base}{path}"), None, None).await;
        assert_eq!(status, 401, "{path}: {body}");
    }
    let (status, _, _) = get(&format!("{base}/?token=not-the-token"), None, None).await;
    assert_eq!(status, 401);
    let (status, _, _) = get(&format!("{base}/"), Some("courier_console=forged"), None).await;
    assert_eq!(status, 401);
    let (status, _) = post(&format!("{base}/action"), None, None, "kind=purge").await;
    assert_eq!(status, 401);
    // The header works for reading.
    let (status, _, page) = get(&format!("{base}/"), None, Some(&console.token)).await;
    assert_eq!(status, 200);
    assert!(page.contains("guest:***@"), "the broker, redacted");
    assert!(!page.contains(":guest@"), "no password in a page");

    let cookie = login(&console).await;
    let (status, _, page) = get(
        &format!("{base}/action?kind=purge&message_id=auth-1"),
        Some(&cookie),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert!(page.contains("would purge: 1"), "{page}");
    let csrf = csrf_of(&page);
    let form = "kind=purge&message_id=auth-1";
    let (status, body) = post(&format!("{base}/action"), Some(&cookie), None, form).await;
    assert_eq!(status, 403, "no CSRF token: {body}");
    let (status, body) = post(
        &format!("{base}/action"),
        Some(&cookie),
        None,
        &format!("{form}&csrf=0000{}", &csrf[4..]),
    )
    .await;
    assert_eq!(status, 403, "another CSRF token: {body}");
    let (status, body) = post(
        &format!("{base}/action"),
        None,
        Some(&console.token),
        &format!("{form}&csrf={csrf}"),
    )
    .await;
    assert_eq!(status, 403, "the header token has no session: {body}");
    // Another session's token does not do either.
    let other = login(&console).await;
    let (status, _) = post(
        &format!("{base}/action"),
        Some(&other),
        None,
        &format!("{form}&csrf={csrf}"),
    )
    .await;
    assert_eq!(status, 403);
    // Nothing was purged by any of them.
    assert_eq!(courier_testkit::queues::depth(&env.dlq()).await, 1);
    let (status, _) = post(
        &format!("{base}/action"),
        Some(&cookie),
        None,
        &format!("{form}&csrf={csrf}"),
    )
    .await;
    assert_eq!(status, 303, "with its CSRF token the action runs");
    courier_testkit::queues::wait_depth(&env.dlq(), 0, Duration::from_secs(30)).await;

    // Read-only: the preview page and the action are refused even with a valid session.
    let ro = Console::start(&env, &["--read-only"]).await;
    let cookie = login(&ro).await;
    let (status, _, page) = get(&format!("{}/", ro.base), Some(&cookie), None).await;
    assert_eq!(status, 200);
    assert!(
        page.contains("read-only") && !page.contains("/action?kind="),
        "no action links"
    );
    let (status, _, _) = get(
        &format!("{}/action?kind=purge", ro.base),
        Some(&cookie),
        None,
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = post(
        &format!("{}/action", ro.base),
        Some(&cookie),
        None,
        "kind=purge",
    )
    .await;
    assert_eq!(status, 403);
}
