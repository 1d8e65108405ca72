//! The console's routes, their handlers, the headers every answer carries, start and shutdown.
//!
//! Routes (all behind [`super::auth::require`]):
//! - `GET /`: the fleet (refreshing itself from `GET /fleet`) and the failure groups;
//! - `GET /group/{id}`, `GET /message/{id}`: a group's messages, one message;
//! - `GET /action?kind=...&group=...`: an action's options and its preview (`--dry-run`);
//!   `POST /action` (CSRF): runs it, then `GET /job/{n}` shows it, polling `/job/{n}/status`;
//! - `GET /audit`: the last lines of the audit trail;
//! - `GET /static/*`: the stylesheet and the script (committed files, built in).

use super::actions::{self, ActionForm, Jobs};
use super::auth::{self, Auth, Session};
use super::fleet::{self, Fleet};
use super::pages::{self, Examined, Frame, GroupRow, MessageRow};
use crate::cli::{FilterArgs, Global};
use axum::extract::{Extension, Form, Path, Query, Request, State as AxumState};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use courier::deadletter::DeadLetter;
use courier::management::Management;
use courier::topology::Topology;
use maud::Markup;
use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the console is started with.
pub struct Settings {
    /// The tool's global options (broker, topology, prefix, queue, audit log).
    pub global: Global,
    /// The dead-letter queue.
    pub queue: String,
    /// The broker URL with its password redacted, for the pages.
    pub amqp: String,
    /// The topology, when readable (the fleet's queues).
    pub topology: Option<Topology>,
    /// The management API.
    pub management: Management,
    /// The token.
    pub token: String,
    /// Who the audit trail names.
    pub user: String,
    /// Hide and refuse actions.
    pub read_only: bool,
    /// How often the fleet is read.
    pub refresh: Duration,
    /// Messages a page examines at most.
    pub limit: u64,
}

/// The console's shared state.
pub struct Console {
    /// How it was started.
    settings: Settings,
    /// The fleet's numbers, written by the sampler.
    fleet: Arc<Mutex<Fleet>>,
    /// Actions run and running.
    jobs: Jobs,
    /// One conversation with the dead-letter queue at a time: inspections and passes both
    /// need its only consumer. An action holds it for its whole run.
    queue_lock: Arc<tokio::sync::Mutex<()>>,
}

/// The state handlers get.
pub type State = Arc<Console>;

impl Console {
    fn frame(&self) -> Frame<'_> {
        Frame {
            queue: &self.settings.queue,
            amqp: &self.settings.amqp,
            read_only: self.settings.read_only,
            user: &self.settings.user,
        }
    }

    fn page(&self, title: &str, body: Markup) -> Response {
        pages::layout(&self.frame(), title, body).into_response()
    }

    /// Waits for the queue (a page load waits for another page's inspection), but not for a
    /// running action: that could take minutes.
    async fn queue_turn(&self) -> Result<tokio::sync::OwnedMutexGuard<()>, String> {
        if let Some(j) = self.jobs.running() {
            return Err(format!(
                "Action {} ({}) is running and holds the dead-letter queue; the dead letters are shown again when it ends.",
                j.id,
                j.argv.join(" ")
            ));
        }
        tokio::time::timeout(
            Duration::from_secs(30),
            Arc::clone(&self.queue_lock).lock_owned(),
        )
        .await
        .map_err(|_| {
            "The dead-letter queue is busy (another page is examining it); reload in a moment."
                .to_owned()
        })
    }
}

/// The console's state from its settings.
pub fn new_state(settings: Settings) -> State {
    Arc::new(Console {
        settings,
        fleet: Arc::default(),
        jobs: Jobs::default(),
        queue_lock: Arc::default(),
    })
}

/// An error page for a failure: the text, redacted.
fn failure(c: &Console, title: &str, e: &anyhow::Error) -> Response {
    let text = courier::amqp::redact(&format!("{e:#}"));
    let mut r = c.page(title, pages::notice(title, &text));
    *r.status_mut() = StatusCode::BAD_GATEWAY;
    r
}

async fn index(AxumState(c): AxumState<State>) -> Response {
    let now = courier::envelope::now_millis();
    let fleet = {
        let f = c
            .fleet
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        pages::fleet(&f, now)
    };
    let groups = match c.queue_turn().await {
        Err(busy) => maud::html! { p.warning #busy { (busy) } },
        Ok(_turn) => {
            let mut times: HashMap<String, Vec<i64>> = HashMap::new();
            let collected = crate::commands::groups::collect(
                &c.settings.global,
                &crate::filter::Filter::default(),
                c.settings.limit,
                |dl| {
                    if let Some(t) = dl.dead_lettered_at_ms {
                        times
                            .entry(crate::groups::group_of(dl))
                            .or_default()
                            .push(t);
                    }
                },
            )
            .await;
            match collected {
                Err(e) => maud::html! { p.warning { (courier::amqp::redact(&format!("{e:#}"))) } },
                Ok(col) => {
                    let sorted = col.table.sorted();
                    let from = sorted
                        .iter()
                        .filter_map(|g| g.first_seen_ms)
                        .min()
                        .unwrap_or(now);
                    let rows: Vec<GroupRow<'_>> = sorted
                        .iter()
                        .map(|g| GroupRow {
                            group: g,
                            spark: super::chart::buckets(
                                times.get(&g.id).map_or(&[][..], Vec::as_slice),
                                from,
                                now,
                            ),
                        })
                        .collect();
                    let e = Examined {
                        total: col.sample.total,
                        examined: col.sample.examined,
                        matched: col.matched,
                    };
                    pages::groups(&rows, col.table.other, &e, now, c.settings.read_only)
                }
            }
        }
    };
    let refresh_ms = c.settings.refresh.as_millis();
    c.page(
        "Fleet",
        maud::html! {
            h2 { "Fleet" }
            div #fleet data-refresh-ms=(refresh_ms) { (fleet) }
            h2 { "Dead letters by failure group" }
            div #dead-letters { (groups) }
        },
    )
}

async fn fleet_fragment(AxumState(c): AxumState<State>) -> Response {
    let f = c
        .fleet
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    pages::fleet(&f, courier::envelope::now_millis()).into_response()
}

/// Messages a group page lists at most.
const GROUP_ROWS: usize = 200;

async fn group(AxumState(c): AxumState<State>, Path(id): Path<String>) -> Response {
    let g = &c.settings.global;
    let filter = match (FilterArgs {
        group: vec![id.clone()],
        ..FilterArgs::default()
    })
    .build(&g.prefix)
    {
        Ok(f) => f,
        Err(e) => {
            let mut r = c.page("Group", pages::notice("Not a group id", &e.to_string()));
            *r.status_mut() = StatusCode::BAD_REQUEST;
            return r;
        }
    };
    let _turn = match c.queue_turn().await {
        Ok(t) => t,
        Err(busy) => return c.page("Group", pages::notice("Busy", &busy)),
    };
    let now = courier::envelope::now_millis();
    let mut rows = Vec::new();
    let mut matched = 0u64;
    let mut cause = None;
    let listed = async {
        let url = g.url()?;
        let broker = courier::broker::Admin::connect(
            &url,
            &format!("courier-dlq console {}", c.settings.queue),
        )
        .await?;
        let sample = crate::inspect::inspect(&broker, &c.settings.queue, c.settings.limit, |d| {
            let dl = DeadLetter::read(&d.properties, d.data.len());
            if filter.matches(&dl, d.properties.headers().as_ref(), now) {
                matched += 1;
                cause.get_or_insert_with(|| crate::groups::cause(&dl));
                if rows.len() < GROUP_ROWS {
                    rows.push(MessageRow {
                        id: dl
                            .message_id
                            .clone()
                            .unwrap_or_else(|| "(no message_id)".to_owned()),
                        age: crate::output::age_of(&dl, now),
                        reason: dl.reason.clone().unwrap_or_default(),
                        queue: dl.original_queue.clone().unwrap_or_default(),
                        attempts: dl.attempts.map(|a| a.to_string()).unwrap_or_default(),
                        bytes: d.data.len(),
                        error: dl.error.clone().unwrap_or_default(),
                    });
                }
            }
            Ok(ControlFlow::Continue(()))
        })
        .await;
        broker.close().await;
        sample
    }
    .await;
    match listed {
        Err(e) => failure(&c, "Group", &e),
        Ok(sample) => {
            let e = Examined {
                total: sample.total,
                examined: sample.examined,
                matched,
            };
            c.page(
                &format!("Group {id}"),
                pages::group(
                    &id,
                    cause.as_deref(),
                    &rows,
                    GROUP_ROWS,
                    &e,
                    c.settings.read_only,
                ),
            )
        }
    }
}

async fn message(AxumState(c): AxumState<State>, Path(id): Path<String>) -> Response {
    let _turn = match c.queue_turn().await {
        Ok(t) => t,
        Err(busy) => return c.page("Message", pages::notice("Busy", &busy)),
    };
    match crate::commands::show::find(&c.settings.global, &id, c.settings.limit).await {
        Ok(found) => {
            let view = crate::commands::show::view(
                &c.settings.queue,
                &found,
                courier::envelope::now_millis(),
            );
            c.page(
                &format!("Message {id}"),
                pages::message(&view, c.settings.read_only),
            )
        }
        Err(e) => {
            let mut r = failure(&c, "Message not found", &e);
            *r.status_mut() = StatusCode::NOT_FOUND;
            r
        }
    }
}

async fn action_preview(
    AxumState(c): AxumState<State>,
    session: Option<Extension<Session>>,
    Query(form): Query<ActionForm>,
) -> Response {
    if c.settings.read_only {
        return auth::forbidden("403 Forbidden: the console is read-only (--read-only)");
    }
    let csrf = session.as_ref().map(|s| s.csrf.as_str());
    let (argv, preview) = match form.command(false) {
        Err(e) => (None, Err(e)),
        Ok((argv, command)) => {
            let preview = match c.queue_turn().await {
                Err(busy) => Err(busy),
                Ok(_turn) => actions::preview(&c.settings.global, &command)
                    .await
                    .map_err(|e| courier::amqp::redact(&format!("{e:#}"))),
            };
            (Some(argv), preview)
        }
    };
    c.page(
        &format!("Preview {}", form.kind),
        pages::action(
            &form,
            argv.as_deref(),
            preview.as_deref().map_err(String::as_str),
            csrf,
        ),
    )
}

async fn action_run(
    AxumState(c): AxumState<State>,
    session: Option<Extension<Session>>,
    Form(form): Form<ActionForm>,
) -> Response {
    if let Err(why) = auth::check_csrf(session.as_deref(), form.csrf.as_deref()) {
        return auth::forbidden(why);
    }
    if c.settings.read_only {
        return auth::forbidden("403 Forbidden: the console is read-only (--read-only)");
    }
    let (argv, command) = match form.command(true) {
        Ok(x) => x,
        Err(e) => {
            let mut r = c.page("Action", pages::notice("The action does not parse", &e));
            *r.status_mut() = StatusCode::BAD_REQUEST;
            return r;
        }
    };
    if let Some(j) = c.jobs.running() {
        let mut r = c.page(
            "Busy",
            pages::notice(
                "Another action is running",
                &format!(
                    "Action {} ({}) is still running; one action at a time.",
                    j.id,
                    j.argv.join(" ")
                ),
            ),
        );
        *r.status_mut() = StatusCode::CONFLICT;
        return r;
    }
    let turn = match c.queue_turn().await {
        Ok(t) => t,
        Err(busy) => return c.page("Busy", pages::notice("Busy", &busy)),
    };
    let job = c.jobs.add(argv, c.settings.user.clone());
    eprintln!(
        "console: job {} ({}) started by {}",
        job.id,
        job.argv.join(" "),
        job.user
    );
    let (g, j) = (c.settings.global.clone(), Arc::clone(&job));
    // On a blocking thread that drives the command on this runtime: a pass's future is not
    // `Send` (the CLI only ever blocks on it), so it cannot be a spawned task.
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        handle.block_on(actions::run(g, command, j));
        drop(turn);
    });
    Redirect::to(&format!("/job/{}", job.id)).into_response()
}

async fn job_page(AxumState(c): AxumState<State>, Path(id): Path<u64>) -> Response {
    match c.jobs.get(id) {
        Some(j) => c.page(&format!("Action {id}"), pages::job(&j)),
        None => {
            let mut r = c.page(
                "Action",
                pages::notice(
                    "No such action",
                    "It is not among the last ones this console ran.",
                ),
            );
            *r.status_mut() = StatusCode::NOT_FOUND;
            r
        }
    }
}

async fn job_status(AxumState(c): AxumState<State>, Path(id): Path<u64>) -> Response {
    let Some(j) = c.jobs.get(id) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let (passes, done, total) = j.counters.read();
    let (state, outcome, tally) = match j.state() {
        actions::State::Running => ("running", String::new(), None),
        actions::State::Done { ok, outcome, tally } => {
            (if ok { "done" } else { "failed" }, outcome, Some(tally))
        }
    };
    let v = serde_json::json!({
        "id": j.id,
        "state": state,
        "passes": passes,
        "done": done,
        "total": total,
        "outcome": outcome,
        "moved": tally.map(|t| t.moved),
        "left": tally.map(|t| t.left),
        "failed": tally.map(|t| t.failed),
    });
    ([(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
}

/// Audit lines the page shows.
const AUDIT_LINES: usize = 100;

async fn audit(AxumState(c): AxumState<State>) -> Response {
    let Some(path) = c
        .settings
        .global
        .audit_log
        .clone()
        .or_else(crate::audit::default_path)
    else {
        return c.page(
            "Audit trail",
            pages::notice(
                "Audit trail",
                "No audit log: neither $XDG_STATE_HOME nor $HOME is set (pass --audit-log FILE).",
            ),
        );
    };
    let text = match tokio::fs::read_to_string(&path).await {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => {
            return c.page(
                "Audit trail",
                pages::notice(
                    "Audit trail",
                    &format!("cannot read {}: {e}", path.display()),
                ),
            );
        }
    };
    let lines: Vec<serde_json::Value> = text
        .lines()
        .rev()
        .take(AUDIT_LINES)
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    c.page(
        "Audit trail",
        pages::audit(&lines, &path.display().to_string()),
    )
}

async fn stylesheet() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("static/console.css"),
    )
        .into_response()
}

async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("static/console.js"),
    )
        .into_response()
}

/// Headers on every answer: scripts and styles only from the console itself (so even markup
/// that got through could not run a script), no framing, no referrer (the first URL carries
/// the token), no caching of pages that show messages.
async fn security_headers(request: Request, next: Next) -> Response {
    let mut r = next.run(request).await;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// The console's routes.
pub fn router(state: State, auth: Arc<Auth>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/fleet", get(fleet_fragment))
        .route("/group/{id}", get(group))
        .route("/message/{id}", get(message))
        .route("/action", get(action_preview).post(action_run))
        .route("/job/{id}", get(job_page))
        .route("/job/{id}/status", get(job_status))
        .route("/audit", get(audit))
        .route("/static/console.css", get(stylesheet))
        .route("/static/console.js", get(script))
        .with_state(state)
        .layer(middleware::from_fn_with_state(auth, auth::require))
        .layer(middleware::from_fn(security_headers))
}

/// Serves the console on `listen` until Ctrl-C or SIGTERM, sampling the fleet meanwhile.
/// `print_token`: the token was generated, so the URL printed holds it (the only time it is
/// shown).
///
/// # Errors
/// The address cannot be bound.
pub async fn serve(
    settings: Settings,
    listen: std::net::SocketAddr,
    print_token: bool,
) -> anyhow::Result<()> {
    let auth = Arc::new(Auth::new(settings.token.clone()));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e} (--listen HOST:PORT)"))?;
    let addr = listener.local_addr()?;
    let queues = fleet::queues(settings.topology.as_ref(), &settings.queue);
    let state = new_state(settings);
    let sampler = tokio::spawn(fleet::sample(
        state.settings.management.clone(),
        queues,
        Arc::clone(&state.fleet),
        state.settings.refresh,
    ));
    if !addr.ip().is_loopback() {
        eprintln!(
            "warning: the console listens on {addr}, reachable from other machines; the token is its only lock and travels in clear over http: put TLS in front of it"
        );
    }
    let host = if addr.ip().is_unspecified() {
        "127.0.0.1".to_owned()
    } else {
        addr.ip().to_string()
    };
    let shown = if print_token {
        format!(
            "http://{host}:{}/?token={}",
            addr.port(),
            state.settings.token
        )
    } else {
        format!(
            "http://{host}:{}/?token=$COURIER_CONSOLE_TOKEN",
            addr.port()
        )
    };
    println!(
        "courier-dlq console: {} on {}{}\nopen {shown}",
        state.settings.queue,
        state.settings.amqp,
        if state.settings.read_only {
            " (read-only)"
        } else {
            ""
        },
    );
    let shutdown = tokio_util::sync::CancellationToken::new();
    courier::shutdown::cancel_on_signal(shutdown.clone());
    let app = router(Arc::clone(&state), auth);
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .await;
    sampler.abort();
    if let Some(j) = state.jobs.running() {
        eprintln!(
            "console: action {} ({}) was still running; what it had not acked stays in the queue (run it again to resume: a replay's journal keeps it from sending anything twice)",
            j.id,
            j.argv.join(" ")
        );
    }
    served.map_err(|e| anyhow::anyhow!("serving the console on {addr}: {e}"))
}
