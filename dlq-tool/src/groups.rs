//! Failure groups: dead letters with the same *cause*, under a short id that is the same for
//! the same cause in every run and on every machine, so that an operator can list the groups,
//! pick one and act on it (`--group ID` on every selecting command).
//!
//! The cause is the reason (`x-courier-reason`, or the broker's in `x-death`) and a normalised
//! error:
//! - an HTTP status (`HTTP 503 Service Unavailable: upstream busy` → `HTTP 503`);
//! - a transport error of the HTTP handler (`POST https://api.example.com/v1/send?key=...:
//!   connection refused`) → the method, scheme and host with the masked rest
//!   (`POST https://api.example.com: connection refused`), or with the status when the rest is
//!   one (`POST https://api.example.com/v1: HTTP 429 ...` → `POST https://api.example.com: HTTP 429`);
//! - anything else: its first line with what varies between messages masked — quoted values
//!   (`<str>`), UUIDs (`<uuid>`), hex strings of 8+ digits (`<hex>`), ids of 8+ characters
//!   mixing letters and digits (`<id>`), other numbers (`<n>`) — whitespace collapsed, at most
//!   120 characters;
//! - no error at all (a broker dead letter: expired, maxlen, delivery_limit): the reason alone.
//!
//! The id is the first 8 hex digits of the SHA-256 of the cause's text.

use courier::deadletter::DeadLetter;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};

/// How many groups a listing keeps before folding the rest into one, so a DLQ of unique causes
/// cannot grow the tool's memory.
pub const MAX_GROUPS: usize = 1000;

/// The longest normalised error kept in a cause.
const MAX_CAUSE: usize = 120;

/// The cause of a dead letter: see the module's rules.
pub fn cause(dl: &DeadLetter) -> String {
    let reason = dl.reason.as_deref().unwrap_or("unknown");
    let Some(error) = &dl.error else {
        return reason.to_owned();
    };
    let first = error.lines().next().unwrap_or("").trim();
    if first.is_empty() {
        return reason.to_owned();
    }
    format!("{reason}: {}", normalise(first))
}

/// The group id of a cause: 8 hex digits, stable across runs and machines.
pub fn group_id(cause: &str) -> String {
    let digest = Sha256::digest(cause.as_bytes());
    digest.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

/// The group id of a dead letter.
pub fn group_of(dl: &DeadLetter) -> String {
    group_id(&cause(dl))
}

/// One line of an error, normalised (see the module's rules).
pub fn normalise(line: &str) -> String {
    if let Some(code) = http_status(line) {
        return format!("HTTP {code}");
    }
    if let Some((method, rest)) = line.split_once(' ') {
        if let Some((target, what)) = transport(rest) {
            if let Some(code) = http_status(what) {
                return format!("{method} {target}: HTTP {code}");
            }
            return cap(format!("{method} {target}: {}", mask(what)));
        }
    }
    cap(mask(line))
}

/// `HTTP 503 ...` at the start: the status code.
fn http_status(line: &str) -> Option<&str> {
    let rest = line.strip_prefix("HTTP ")?;
    let code = rest.get(..3)?;
    (code.bytes().all(|b| b.is_ascii_digit())
        && rest[3..].chars().next().is_none_or(|c| !c.is_ascii_digit()))
    .then_some(code)
}

/// `<url>: <what>` with an http(s) URL: `scheme://host[:port]` and what follows the colon.
fn transport(rest: &str) -> Option<(String, &str)> {
    let (url, what) = rest.split_once(": ")?;
    let (scheme, after) = url.split_once("://")?;
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let host = after.split(['/', '?', '#']).next().unwrap_or("");
    // Credentials never belong in a cause (the worker redacts them; be sure).
    let host = host.rsplit('@').next().unwrap_or(host);
    (!host.is_empty()).then(|| (format!("{scheme}://{host}"), what))
}

fn cap(mut s: String) -> String {
    if s.chars().count() > MAX_CAUSE {
        s = s.chars().take(MAX_CAUSE).collect();
        s.push('…');
    }
    s
}

/// Masks what varies between messages of one cause (see the module's rules).
pub fn mask(line: &str) -> String {
    let chars: Vec<char> = line.chars().collect();
    let mut out = String::with_capacity(line.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if matches!(c, '"' | '\'' | '`') {
            if let Some(len) = chars[i + 1..].iter().position(|x| *x == c) {
                out.push_str("<str>");
                i += len + 2;
                continue;
            }
        }
        if c.is_ascii_alphanumeric() {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '-') {
                i += 1;
            }
            let token: String = chars[start..i].iter().collect();
            out.push_str(&mask_token(&token));
            continue;
        }
        if c.is_whitespace() {
            if !out.ends_with(' ') {
                out.push(' ');
            }
        } else {
            out.push(c);
        }
        i += 1;
    }
    out.trim().to_owned()
}

fn mask_token(token: &str) -> String {
    let is_uuid = {
        let parts: Vec<&str> = token.split('-').collect();
        parts.len() == 5
            && parts.iter().map(|p| p.len()).eq([8, 4, 4, 4, 12])
            && parts
                .iter()
                .all(|p| p.bytes().all(|b| b.is_ascii_hexdigit()))
    };
    if is_uuid {
        return "<uuid>".to_owned();
    }
    // Hyphenated words keep their parts: `user-12345` → `user-<n>`.
    if token.contains('-') {
        return token
            .split('-')
            .map(mask_token)
            .collect::<Vec<_>>()
            .join("-");
    }
    let digits = token.bytes().filter(u8::is_ascii_digit).count();
    if digits == 0 {
        return token.to_owned();
    }
    if token.len() >= 8 && token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return "<hex>".to_owned();
    }
    if token.len() >= 8 && digits < token.len() {
        return "<id>".to_owned();
    }
    // Numbers inside a word: each run of digits.
    let mut out = String::new();
    let mut in_digits = false;
    for c in token.chars() {
        if c.is_ascii_digit() {
            if !in_digits {
                out.push_str("<n>");
            }
            in_digits = true;
        } else {
            out.push(c);
            in_digits = false;
        }
    }
    out
}

/// One group of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// [`group_id`] of the cause.
    pub id: String,
    /// The cause.
    pub cause: String,
    /// Dead letters in it.
    pub count: u64,
    /// When its first and its last dead letter were dead-lettered (epoch ms), when known.
    pub first_seen_ms: Option<i64>,
    /// See `first_seen_ms`.
    pub last_seen_ms: Option<i64>,
    /// The work queues its dead letters failed in.
    pub queues: BTreeSet<String>,
}

/// Dead letters grouped by cause, at most [`MAX_GROUPS`] groups (the rest counted in
/// `other`).
#[derive(Debug, Clone, Default)]
pub struct GroupTable {
    groups: BTreeMap<String, Group>,
    /// Dead letters whose group did not fit.
    pub other: u64,
}

impl GroupTable {
    /// Counts one dead letter.
    pub fn add(&mut self, dl: &DeadLetter) {
        let cause = cause(dl);
        let id = group_id(&cause);
        if !self.groups.contains_key(&id) && self.groups.len() >= MAX_GROUPS {
            self.other += 1;
            return;
        }
        let g = self.groups.entry(id.clone()).or_insert_with(|| Group {
            id,
            cause,
            count: 0,
            first_seen_ms: None,
            last_seen_ms: None,
            queues: BTreeSet::new(),
        });
        g.count += 1;
        if let Some(t) = dl.dead_lettered_at_ms {
            g.first_seen_ms = Some(g.first_seen_ms.map_or(t, |f| f.min(t)));
            g.last_seen_ms = Some(g.last_seen_ms.map_or(t, |l| l.max(t)));
        }
        if let Some(q) = &dl.original_queue {
            if g.queues.len() < 20 {
                g.queues.insert(q.clone());
            }
        }
    }

    /// The groups, largest first (ties by id).
    pub fn sorted(&self) -> Vec<&Group> {
        let mut v: Vec<&Group> = self.groups.values().collect();
        v.sort_by(|a, b| b.count.cmp(&a.count).then(a.id.cmp(&b.id)));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_statuses_group_by_code() {
        assert_eq!(
            normalise("HTTP 503 Service Unavailable: upstream busy (retry 3)"),
            "HTTP 503"
        );
        assert_eq!(
            normalise("HTTP 400 Bad Request: {\"error\":\"bad to\"}"),
            "HTTP 400"
        );
        assert_eq!(normalise("HTTP 599"), "HTTP 599");
        // Not a status: a longer number.
        assert_ne!(normalise("HTTP 5030 things"), "HTTP 503");
    }

    #[test]
    fn transport_errors_keep_the_host_and_drop_path_query_and_credentials() {
        assert_eq!(
            normalise("POST http://127.0.0.1:9/deliver?token=abc: connection refused"),
            "POST http://127.0.0.1:9: connection refused"
        );
        assert_eq!(
            normalise("POST https://user:pw@api.example.com/v1/send: timed out after 30s"),
            "POST https://api.example.com: timed out after <n>s"
        );
    }

    #[test]
    fn varying_parts_are_masked() {
        // Errors as the worker and handlers write them.
        assert_eq!(
            mask("handler panicked: index out of bounds: the len is 3 but the index is 7"),
            "handler panicked: index out of bounds: the len is <n> but the index is <n>"
        );
        assert_eq!(
            mask("user 'ada@example.com' not found (id 8f3c2a9e-61d0-4f0c-9b1e-2a3b4c5d6e7f)"),
            "user <str> not found (id <uuid>)"
        );
        assert_eq!(
            mask("no route for order 5f3a9c0d11e2 in shard ab12cd34ef"),
            "no route for order <hex> in shard <hex>"
        );
        assert_eq!(
            mask("tenant t-93 quota of 1000/s exceeded"),
            "tenant t-<n> quota of <n>/s exceeded"
        );
        assert_eq!(mask("message x7Kq9pLm2Z rejected"), "message <id> rejected");
        assert_eq!(mask("  many    spaces\there "), "many spaces here");
        // An unclosed quote is kept as it is.
        assert_eq!(mask("it's broken"), "it's broken");
    }

    #[test]
    fn two_messages_of_one_cause_share_a_group() {
        let a = normalise("user 'a@x.io' has no device 91aa2b3c4d5e6f70");
        let b = normalise("user 'b@y.io' has no device 0011223344556677");
        assert_eq!(a, b);
        assert_eq!(group_id(&a), group_id(&b));
        assert_ne!(
            group_id("permanent: HTTP 400"),
            group_id("max-attempts: HTTP 400")
        );
    }

    #[test]
    fn group_ids_are_stable_across_runs_and_machines() {
        // SHA-256 of the text: pinned, so a change of the rule or the hash shows here.
        assert_eq!(group_id("max-attempts: HTTP 503"), "96da919e");
        assert_eq!(group_id("expired"), "fa64ea1e");
        assert_eq!(group_id(""), "e3b0c442");
    }

    #[test]
    fn long_causes_are_capped() {
        let long = "x ".repeat(200);
        assert!(normalise(&long).chars().count() <= MAX_CAUSE + 1);
    }
}
