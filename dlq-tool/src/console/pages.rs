//! The console's HTML, as maud templates. maud escapes every value interpolated with `(...)`
//! (`<`, `>`, `&`, `"`, `'`), in text and in attributes alike, and nothing here uses its
//! `PreEscaped`, except for the SVG that [`super::chart`] builds from numbers: a dead letter's
//! body, headers, error and id are always shown as text, never as markup.

use super::actions::{ActionForm, Job, State as JobState};
use super::chart;
use super::fleet::{Fleet, Kind};
use crate::commands::show::{BodyView, MessageView};
use crate::groups::Group;
use crate::output::thousands;
use maud::{html, Markup, DOCTYPE};

/// What every page shows in its header.
pub struct Frame<'a> {
    /// The dead-letter queue.
    pub queue: &'a str,
    /// The broker, password redacted.
    pub amqp: &'a str,
    /// Actions are hidden and refused.
    pub read_only: bool,
    /// The user actions are audited as.
    pub user: &'a str,
}

/// The page around `body`.
pub fn layout(f: &Frame<'_>, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Courier console" }
                link rel="stylesheet" href="/static/console.css";
                script src="/static/console.js" defer {}
            }
            body {
                header {
                    a.brand href="/" { "Courier console" }
                    nav {
                        a href="/" { "Fleet & dead letters" }
                        a href="/audit" { "Audit trail" }
                    }
                    span.where { (f.queue) " on " (f.amqp) }
                    @if f.read_only {
                        span.badge { "read-only" }
                    } @else {
                        span.who { "acting as " (f.user) " via console" }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// A number or "–" when the API has not sampled it yet.
fn count(v: Option<u64>) -> String {
    v.map_or_else(|| "–".to_owned(), thousands)
}

/// A rate or "–".
fn rate(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_owned(), |r| format!("{r:.1}/s"))
}

/// The fleet's table and the chart: the part of the front page that refreshes itself.
pub fn fleet(f: &Fleet, now_ms: i64) -> Markup {
    let history: Vec<_> = f.history.iter().copied().collect();
    html! {
        @if let Some(e) = &f.error {
            p.warning { "The management API did not answer: " (e) ". The numbers below are from the last time it did." }
        }
        @if f.at_ms == 0 && f.error.is_none() {
            p.note { "Reading the management API…" }
        }
        table.fleet {
            thead { tr {
                th { "queue" } th.n { "ready" } th.n { "unacked" } th.n { "consumers" }
                th.n { "publish" } th.n { "deliver" }
            } }
            tbody {
                @for r in &f.rows {
                    @let s = r.stats.as_ref();
                    tr class=(match r.kind { Kind::Work => "work", Kind::Tier => "tier", Kind::DeadLetters => "dlq" }) {
                        td { @if r.kind == Kind::Tier { "↳ retry tier " } (r.name) }
                        @if s.is_none() {
                            td.n colspan="5" { "not declared (or not sampled yet)" }
                        } @else {
                            td.n { (count(s.and_then(|s| s.messages_ready))) }
                            td.n { (count(s.and_then(|s| s.messages_unacknowledged))) }
                            td.n { (count(s.map(|s| s.consumer_count()))) }
                            td.n { (rate(s.and_then(|s| s.message_stats.publish_rate()))) }
                            td.n { (rate(s.and_then(|s| s.message_stats.deliver_rate()))) }
                        }
                    }
                }
            }
        }
        h3 { "Dead-letter queue, last hour" }
        (chart::line_chart(&history, now_ms))
        p.note { "RabbitMQ's own numbers (management API), read every refresh; nothing is counted by consuming." }
    }
}

/// A group with its sparkline.
pub struct GroupRow<'a> {
    /// The group.
    pub group: &'a Group,
    /// Its dead letters over time, in buckets.
    pub spark: Vec<u64>,
}

/// How much of the queue a listing examined.
pub struct Examined {
    /// Messages in the queue.
    pub total: u64,
    /// Messages looked at.
    pub examined: u64,
    /// Messages that matched.
    pub matched: u64,
}

/// "sampled" when not everything was looked at.
fn sampled(e: &Examined) -> Markup {
    html! {
        @if e.examined < e.total {
            p.warning {
                "Sampled: examined the first " (thousands(e.examined)) " of " (thousands(e.total))
                " messages (every one given back in place); the counts cover those."
            }
        } @else {
            p.note { "Examined all " (thousands(e.examined)) " messages; every one was given back in place." }
        }
    }
}

fn seen(t: Option<i64>, now_ms: i64) -> String {
    match t {
        Some(t) => format!(
            "{} ago",
            crate::output::age(std::time::Duration::from_millis(
                u64::try_from(now_ms.saturating_sub(t)).unwrap_or(0)
            ))
        ),
        None => "?".to_owned(),
    }
}

/// The action buttons for a selection (`field=value`), unless read-only.
fn action_links(read_only: bool, field: &str, value: &str) -> Markup {
    html! {
        @if !read_only {
            span.actions {
                @for kind in super::actions::KINDS {
                    a.button href={ "/action?kind=" (kind) "&" (field) "=" (urlencode(value)) } { (kind) "…" }
                }
            }
        }
    }
}

/// Percent-encodes a query value (everything but unreserved characters).
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The failure groups.
pub fn groups(
    rows: &[GroupRow<'_>],
    other: u64,
    e: &Examined,
    now_ms: i64,
    read_only: bool,
) -> Markup {
    html! {
        (sampled(e))
        @if rows.is_empty() {
            p #no-groups { "No dead letters." }
        } @else {
            table #groups.groups {
                thead { tr {
                    th { "group" } th.n { "count" } th { "first seen" } th { "last seen" }
                    th { "over time" } th { "original queues" } th { "cause" } th {}
                } }
                tbody {
                    @for r in rows {
                        @let g = r.group;
                        tr data-group=(g.id) {
                            td { a.group-link href={ "/group/" (g.id) } { code { (g.id) } } }
                            td.n.count { (thousands(g.count)) }
                            td { (seen(g.first_seen_ms, now_ms)) }
                            td { (seen(g.last_seen_ms, now_ms)) }
                            td { (chart::sparkline(&r.spark)) }
                            td { (g.queues.iter().cloned().collect::<Vec<_>>().join(", ")) }
                            td.cause { (g.cause) }
                            td { (action_links(read_only, "group", &g.id)) }
                        }
                    }
                }
            }
            @if other > 0 {
                p.note { "And " (thousands(other)) " in groups past the first " (crate::groups::MAX_GROUPS) "." }
            }
        }
    }
}

/// A message in a group's listing.
pub struct MessageRow {
    /// Its id.
    pub id: String,
    /// How long ago it was dead-lettered.
    pub age: String,
    /// Its reason.
    pub reason: String,
    /// Its original queue.
    pub queue: String,
    /// Attempts made.
    pub attempts: String,
    /// Body bytes.
    pub bytes: usize,
    /// The last error.
    pub error: String,
}

/// One group's messages.
pub fn group(
    id: &str,
    cause: Option<&str>,
    rows: &[MessageRow],
    shown_max: usize,
    e: &Examined,
    read_only: bool,
) -> Markup {
    html! {
        h1 { "Group " code { (id) } }
        @if let Some(c) = cause { p.cause { (c) } }
        (action_links(read_only, "group", id))
        (sampled(e))
        p #group-count.note {
            (thousands(e.matched)) " message(s) of this group among those examined"
            @if e.matched as usize > rows.len() { "; the first " (shown_max) " are listed" }
            "."
        }
        table #messages.messages {
            thead { tr {
                th { "message id" } th { "age" } th { "reason" } th { "original queue" }
                th.n { "attempts" } th.n { "bytes" } th { "error" }
            } }
            tbody {
                @for m in rows {
                    tr {
                        td { a.message-link href={ "/message/" (urlencode(&m.id)) } { (m.id) } }
                        td { (m.age) } td { (m.reason) } td { (m.queue) }
                        td.n { (m.attempts) } td.n { (thousands(m.bytes as u64)) } td.error { (m.error) }
                    }
                }
            }
        }
    }
}

/// One message, all of it: the same sections as `courier-dlq show`.
pub fn message(v: &MessageView, read_only: bool) -> Markup {
    html! {
        h1 { "Message " code #message-id { (v.message_id) } }
        p.note { "in " (v.queue) "; looking at it changed nothing: it is back in its place." }
        (action_links(read_only, "message_id", &v.message_id))
        h2 { "Dead letter" }
        table.kv { @for (k, value) in &v.dead_letter { tr { th { (k) } td { (value) } } } }
        @if !v.deaths.is_empty() {
            h2 { "Broker deaths (x-death, most recent first)" }
            ol.deaths {
                @for (line, expiration) in &v.deaths {
                    li { (line) @if let Some(e) = expiration { br; (e) } }
                }
            }
        }
        h2 { "Properties" }
        table.kv { @for (k, value) in &v.properties { tr { th { (k) } td { (value) } } } }
        p.note { (v.delivered) }
        h2 { "Headers" }
        @if v.headers.is_empty() {
            p { "(none)" }
        } @else {
            table #headers.kv {
                @for (k, value, kind) in &v.headers {
                    tr { th { (k) } td { (value) } td.type { (kind) } }
                }
            }
        }
        h2 { "Body (" (thousands(v.body_len as u64)) " bytes)" }
        @match &v.body {
            BodyView::Json(text) => { pre #body.body { (text) } }
            BodyView::Text(text) => { p.note { "not JSON" } pre #body.body { (text) } }
            BodyView::Binary(hex, more) => {
                p.note { "binary, not UTF-8 (`courier-dlq show --json` has it in base64)" }
                pre #body.body { (hex) @if *more { " …" } }
            }
        }
    }
}

/// An action: its options, the preview of what it would do, and the confirming POST.
pub fn action(
    form: &ActionForm,
    argv: Option<&[String]>,
    preview: Result<&str, &str>,
    csrf: Option<&str>,
) -> Markup {
    html! {
        h1 { "Preview: " (form.kind) }
        form.options method="get" action="/action" {
            input type="hidden" name="kind" value=(form.kind);
            fieldset {
                legend { "Which messages" }
                @for (name, flag) in ActionForm::SELECTION {
                    label { "--" (flag) " " input type="text" name=(name) value=(form.field(name)); }
                }
            }
            fieldset {
                legend { "Options" }
                @for (name, flag, hint) in form.options() {
                    label { "--" (flag) " " input type="text" name=(name) value=(form.field(name)) placeholder=(hint); }
                }
                @if form.kind == "export" {
                    label { input type="checkbox" name="remove" checked[form.remove == "on"]; " --remove (ack each message once its line is on disk)" }
                }
            }
            button #preview-again type="submit" { "Preview again" }
        }
        @if let Some(argv) = argv {
            p { "The command: " code #command { (argv.join(" ")) } }
        }
        @match preview {
            Ok(text) => {
                h2 { "What it would do (dry run: nothing was changed)" }
                pre #preview.preview { (text) }
                @if let Some(csrf) = csrf {
                    form #confirm method="post" action="/action" {
                        input type="hidden" name="csrf" value=(csrf);
                        input type="hidden" name="kind" value=(form.kind);
                        @for (name, _) in ActionForm::SELECTION {
                            input type="hidden" name=(name) value=(form.field(name));
                        }
                        @for (name, _, _) in form.options() {
                            input type="hidden" name=(name) value=(form.field(name));
                        }
                        @if form.kind == "export" { input type="hidden" name="remove" value=(form.remove); }
                        p.note {
                            "The pass takes only the messages in the queue when it starts; each copy is confirmed by the broker before its dead letter is acked."
                            @if form.kind == "purge" { strong { " A purge deletes the selected messages for good." } }
                        }
                        button #confirm-button.danger type="submit" { "Confirm: " (form.kind) }
                    }
                } @else {
                    p.warning { "Actions need a browser session (open the console's URL); this request can only read." }
                }
            }
            Err(e) => {
                h2 { "Cannot preview" }
                pre.error { (e) }
            }
        }
    }
}

/// A running or finished action. The script polls `/job/ID/status` and fills in the numbers.
pub fn job(j: &Job) -> Markup {
    let (passes, done, total) = j.counters.read();
    let state = j.state();
    html! {
        h1 { "Action " (j.id) }
        p { code { (j.argv.join(" ")) } }
        p.note { "by " (j.user) " via console, started " (crate::render::format_time_ms(j.started_ms)) }
        div #job data-status={ "/job/" (j.id) "/status" } {
            progress #job-bar max=(total.max(1)) value=(done) {}
            p { "pass " span #job-pass { (passes) } ": " span #job-done { (done) } " of " span #job-total { (total) } " messages settled" }
            p { "state: " strong #job-state { (match &state { JobState::Running => "running", JobState::Done { ok: true, .. } => "done", JobState::Done { .. } => "failed" }) } }
            p #job-outcome { @if let JobState::Done { outcome, tally, .. } = &state { (outcome) " — moved " (tally.moved) ", left " (tally.left) ", failed " (tally.failed) } }
        }
        p { a #back href="/" { "Back to the fleet and the groups" } }
    }
}

/// The last lines of the audit trail.
pub fn audit(lines: &[serde_json::Value], path: &str) -> Markup {
    let s = |v: &serde_json::Value, k: &str| match &v[k] {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    };
    html! {
        h1 { "Audit trail" }
        p.note { "The last " (lines.len()) " lines of " (path) ", newest first." }
        table.audit {
            thead { tr { th { "at" } th { "user" } th { "command" } th.n { "moved" } th.n { "left" } th.n { "failed" } th { "outcome" } th { "command line" } } }
            tbody {
                @for l in lines.iter().rev() {
                    tr {
                        td { (s(l, "at")) } td { (s(l, "user")) } td { (s(l, "command")) }
                        td.n { (s(l, "moved")) } td.n { (s(l, "left")) } td.n { (s(l, "failed")) }
                        td { (s(l, "outcome")) }
                        td { code { (l["argv"].as_array().map(|a| a.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(" ")).unwrap_or_default()) } }
                    }
                }
            }
        }
    }
}

/// A page that only says something.
pub fn notice(title: &str, text: &str) -> Markup {
    html! {
        h1 { (title) }
        p.warning { (text) }
        p { a href="/" { "Back" } }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(urlencode("a b&c=<d>"), "a%20b%26c%3D%3Cd%3E");
        assert_eq!(urlencode("96da919e"), "96da919e");
    }

    #[test]
    fn a_hostile_body_and_header_are_text() {
        let v = MessageView {
            queue: "q".to_owned(),
            message_id: "<b>id</b>".to_owned(),
            dead_letter: vec![("error", "<img src=x onerror=alert(1)>".to_owned())],
            deaths: vec![],
            properties: vec![],
            delivered: String::new(),
            headers: vec![(
                "x-evil".to_owned(),
                "<script>alert(1)</script>".to_owned(),
                "string",
            )],
            body_len: 10,
            body: BodyView::Text("<script>window.__pwned=1</script>".to_owned()),
        };
        let html = message(&v, false).into_string();
        assert!(!html.contains("<script>"), "{html}");
        assert!(!html.contains("<img"), "{html}");
        assert!(
            html.contains("&lt;script&gt;window.__pwned=1&lt;/script&gt;"),
            "{html}"
        );
        assert!(html.contains("message_id=%3Cb%3Eid%3C%2Fb%3E"), "{html}");
    }
}
