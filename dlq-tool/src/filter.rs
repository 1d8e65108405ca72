//! The selection flags of every selecting command (`--reason`, `--from-queue`,
//! `--error-contains`, `--older-than`, `--newer-than`, `--message-id`, `--header`).
//!
//! Raw flags ([`FilterSpec`]) are parsed once, before anything touches the broker, into a
//! [`Filter`] that cannot be invalid; a bad flag is a [`FilterError`] naming the flag, the value
//! and the expected form (a usage error, exit code 2). Matching reads the library's
//! [`DeadLetter`], so the tool selects by exactly what the fleet wrote.

use courier::deadletter::{DeadLetter, BROKER_REASONS};
use courier::envelope::Reason;
use lapin::types::{AMQPValue, FieldTable};
use std::collections::BTreeSet;
use std::time::Duration;

/// The filter flags as typed on the command line (each repeatable; comma-separated values are
/// split too). Validate with [`Filter::parse`].
#[derive(Debug, Clone, Default)]
pub struct FilterSpec {
    /// `--reason`.
    pub reason: Vec<String>,
    /// `--from-queue`.
    pub from_queue: Vec<String>,
    /// `--error-contains`.
    pub error_contains: Vec<String>,
    /// `--older-than` (humantime duration).
    pub older_than: Option<String>,
    /// `--newer-than` (humantime duration).
    pub newer_than: Option<String>,
    /// `--message-id`.
    pub message_id: Vec<String>,
    /// `--header K=V`.
    pub header: Vec<String>,
    /// `--group ID` (see [`crate::groups`]).
    pub group: Vec<String>,
}

/// A filter flag that cannot be used: which flag, which value, what would be right.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{flag} {value:?}: {expected}")]
pub struct FilterError {
    /// The flag, e.g. `--older-than`.
    pub flag: &'static str,
    /// The value given.
    pub value: String,
    /// The expected form.
    pub expected: String,
}

/// A validated selection. Within one flag the values are alternatives (any may match); across
/// flags all must hold. The empty filter selects everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    reasons: BTreeSet<String>,
    from_queues: Vec<String>,
    /// Lowercased needles.
    error_contains: Vec<String>,
    older_than: Option<Duration>,
    newer_than: Option<Duration>,
    message_ids: BTreeSet<String>,
    headers: Vec<(String, String)>,
    /// Failure group ids ([`crate::groups::group_of`]).
    groups: BTreeSet<String>,
    /// The topology prefix, so `--from-queue notifications.email` also matches the prefixed
    /// queue name.
    prefix: String,
}

fn split(values: &[String]) -> impl Iterator<Item = &str> {
    values
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

fn duration(flag: &'static str, value: Option<&str>) -> Result<Option<Duration>, FilterError> {
    let Some(value) = value else { return Ok(None) };
    humantime::parse_duration(value.trim())
        .map(Some)
        .map_err(|e| FilterError {
            flag,
            value: value.to_owned(),
            expected: format!("expected a duration such as 90s, 15m, 2h, 3days or 1h30m ({e})"),
        })
}

impl Filter {
    /// Validates the flags. `prefix` is the topology's name prefix (may be empty).
    ///
    /// # Errors
    /// [`FilterError`] for the first flag that does not parse: an unknown reason, a duration
    /// that is not one, a `--header` without `=`, an empty `--error-contains`, or
    /// `--newer-than` not shorter than `--older-than` (nothing could match).
    pub fn parse(spec: &FilterSpec, prefix: &str) -> Result<Self, FilterError> {
        let mut reasons = BTreeSet::new();
        for r in split(&spec.reason) {
            let known = Reason::parse(r).is_some() || BROKER_REASONS.contains(&r);
            if !known {
                let all: Vec<&str> = Reason::ALL
                    .iter()
                    .map(|r| r.as_str())
                    .chain(BROKER_REASONS.iter().copied())
                    .collect();
                return Err(FilterError {
                    flag: "--reason",
                    value: r.to_owned(),
                    expected: format!("expected one of {}", all.join(", ")),
                });
            }
            reasons.insert(r.to_owned());
        }
        let mut error_contains = Vec::new();
        for e in &spec.error_contains {
            if e.trim().is_empty() {
                return Err(FilterError {
                    flag: "--error-contains",
                    value: e.clone(),
                    expected: "expected some text to look for in x-courier-error".to_owned(),
                });
            }
            error_contains.push(e.to_lowercase());
        }
        let mut headers = Vec::new();
        for h in &spec.header {
            match h.split_once('=') {
                Some((k, v)) if !k.trim().is_empty() => {
                    headers.push((k.trim().to_owned(), v.to_owned()));
                }
                _ => {
                    return Err(FilterError {
                        flag: "--header",
                        value: h.clone(),
                        expected: "expected NAME=VALUE, e.g. --header tenant=acme".to_owned(),
                    })
                }
            }
        }
        let mut groups = BTreeSet::new();
        for g in split(&spec.group) {
            let g = g.to_ascii_lowercase();
            if g.len() != 8 || !g.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(FilterError {
                    flag: "--group",
                    value: g,
                    expected:
                        "expected a group id of 8 hex digits, as `courier-dlq groups` lists them"
                            .to_owned(),
                });
            }
            groups.insert(g);
        }
        let older_than = duration("--older-than", spec.older_than.as_deref())?;
        let newer_than = duration("--newer-than", spec.newer_than.as_deref())?;
        if let (Some(old), Some(new)) = (older_than, newer_than) {
            if new <= old {
                return Err(FilterError {
                    flag: "--newer-than",
                    value: spec.newer_than.clone().unwrap_or_default(),
                    expected: format!(
                        "expected a duration longer than --older-than ({}): a message cannot be both older than {} and newer than {}",
                        humantime::format_duration(old),
                        humantime::format_duration(old),
                        humantime::format_duration(new),
                    ),
                });
            }
        }
        Ok(Self {
            reasons,
            from_queues: split(&spec.from_queue).map(str::to_owned).collect(),
            error_contains,
            older_than,
            newer_than,
            message_ids: split(&spec.message_id).map(str::to_owned).collect(),
            headers,
            groups,
            prefix: prefix.to_owned(),
        })
    }

    /// A filter selecting exactly one message id (for `show`).
    pub fn message_id(id: &str) -> Self {
        Self {
            message_ids: BTreeSet::from([id.to_owned()]),
            ..Self::default()
        }
    }

    /// True when no flag was given: every message matches.
    pub fn is_empty(&self) -> bool {
        *self
            == Self {
                prefix: self.prefix.clone(),
                ..Self::default()
            }
    }

    /// Whether `dl` (with the message's `headers`) is selected, `now_ms` being the time the
    /// pass started. A time filter never selects a message whose dead-letter time is unknown.
    pub fn matches(&self, dl: &DeadLetter, headers: Option<&FieldTable>, now_ms: i64) -> bool {
        if !self.reasons.is_empty() && !dl.reason.as_ref().is_some_and(|r| self.reasons.contains(r))
        {
            return false;
        }
        if !self.from_queues.is_empty() {
            let Some(q) = &dl.original_queue else {
                return false;
            };
            let hit = self.from_queues.iter().any(|f| {
                f == q || (!self.prefix.is_empty() && format!("{}{f}", self.prefix) == *q)
            });
            if !hit {
                return false;
            }
        }
        if !self.error_contains.is_empty() {
            let Some(e) = &dl.error else { return false };
            let e = e.to_lowercase();
            if !self.error_contains.iter().any(|n| e.contains(n.as_str())) {
                return false;
            }
        }
        if self.older_than.is_some() || self.newer_than.is_some() {
            let Some(age) = dl.age(now_ms) else {
                return false;
            };
            if self.older_than.is_some_and(|d| age < d) {
                return false;
            }
            if self.newer_than.is_some_and(|d| age >= d) {
                return false;
            }
        }
        if !self.message_ids.is_empty()
            && !dl
                .message_id
                .as_ref()
                .is_some_and(|id| self.message_ids.contains(id))
        {
            return false;
        }
        if !self.groups.is_empty() && !self.groups.contains(&crate::groups::group_of(dl)) {
            return false;
        }
        self.headers.iter().all(|(k, v)| {
            headers
                .and_then(|h| h.inner().get(k.as_str()))
                .is_some_and(|actual| header_text(actual).as_deref() == Some(v.as_str()))
        })
    }
}

/// The text a `--header K=V` filter compares with: strings as they are, numbers in decimal,
/// booleans as `true`/`false`; other types never match.
fn header_text(v: &AMQPValue) -> Option<String> {
    Some(match v {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_owned(),
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortShortInt(i) => i.to_string(),
        AMQPValue::ShortShortUInt(i) => i.to_string(),
        AMQPValue::ShortInt(i) => i.to_string(),
        AMQPValue::ShortUInt(i) => i.to_string(),
        AMQPValue::LongInt(i) => i.to_string(),
        AMQPValue::LongUInt(i) => i.to_string(),
        AMQPValue::LongLongInt(i) => i.to_string(),
        AMQPValue::Timestamp(t) => t.to_string(),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::worker_dead_letter;
    use lapin::BasicProperties;

    fn spec() -> FilterSpec {
        FilterSpec::default()
    }

    #[test]
    fn filters_select_by_every_flag() {
        let props = worker_dead_letter("HTTP 503 Service Unavailable", 100_000);
        let h = props.headers().as_ref();
        let dl = DeadLetter::read(&props, 0);
        let now = 100_000 + 3_600_000;
        let check = |s: FilterSpec| Filter::parse(&s, "p.").expect("valid").matches(&dl, h, now);

        assert!(check(spec()));
        assert!(check(FilterSpec {
            reason: vec!["permanent,max-attempts".into()],
            ..spec()
        }));
        assert!(!check(FilterSpec {
            reason: vec!["permanent".into()],
            ..spec()
        }));
        assert!(check(FilterSpec {
            from_queue: vec!["notifications.email".into()],
            ..spec()
        }));
        assert!(check(FilterSpec {
            from_queue: vec!["p.notifications.email".into()],
            ..spec()
        }));
        assert!(!check(FilterSpec {
            from_queue: vec!["notifications.sms".into()],
            ..spec()
        }));
        assert!(check(FilterSpec {
            error_contains: vec!["unavailABLE".into()],
            ..spec()
        }));
        assert!(!check(FilterSpec {
            error_contains: vec!["timeout".into()],
            ..spec()
        }));
        assert!(check(FilterSpec {
            older_than: Some("30m".into()),
            ..spec()
        }));
        assert!(!check(FilterSpec {
            older_than: Some("2h".into()),
            ..spec()
        }));
        assert!(check(FilterSpec {
            newer_than: Some("2h".into()),
            ..spec()
        }));
        assert!(!check(FilterSpec {
            newer_than: Some("30m".into()),
            ..spec()
        }));
        assert!(check(FilterSpec {
            message_id: vec!["x,m-1".into()],
            ..spec()
        }));
        assert!(!check(FilterSpec {
            message_id: vec!["m-2".into()],
            ..spec()
        }));
        assert!(check(FilterSpec {
            header: vec!["x-courier-attempts=5".into()],
            ..spec()
        }));
        assert!(!check(FilterSpec {
            header: vec!["x-courier-attempts=4".into()],
            ..spec()
        }));
        assert!(!check(FilterSpec {
            header: vec!["tenant=acme".into()],
            ..spec()
        }));
        assert!(Filter::parse(&spec(), "p.").expect("valid").is_empty());
        assert!(!Filter::message_id("m-1").is_empty());
    }

    #[test]
    fn time_filters_skip_messages_without_a_time() {
        let dl = DeadLetter::read(&BasicProperties::default(), 0);
        let f = Filter::parse(
            &FilterSpec {
                older_than: Some("1s".into()),
                ..spec()
            },
            "",
        )
        .expect("valid");
        assert!(!f.matches(&dl, None, 1_000_000));
    }

    #[test]
    fn bad_filters_name_the_flag_the_value_and_the_form() {
        let e = Filter::parse(
            &FilterSpec {
                older_than: Some("3 fortnights".into()),
                ..spec()
            },
            "",
        )
        .expect_err("invalid");
        assert_eq!(e.flag, "--older-than");
        assert!(e.to_string().contains("\"3 fortnights\""), "{e}");
        assert!(e.to_string().contains("90s"), "{e}");
        let e = Filter::parse(
            &FilterSpec {
                reason: vec!["boom".into()],
                ..spec()
            },
            "",
        )
        .expect_err("invalid");
        assert!(
            e.to_string().contains("max-attempts") && e.to_string().contains("maxlen"),
            "{e}"
        );
        let e = Filter::parse(
            &FilterSpec {
                header: vec!["tenant".into()],
                ..spec()
            },
            "",
        )
        .expect_err("invalid");
        assert!(e.to_string().contains("NAME=VALUE"), "{e}");
        let e = Filter::parse(
            &FilterSpec {
                older_than: Some("2h".into()),
                newer_than: Some("1h".into()),
                ..spec()
            },
            "",
        )
        .expect_err("contradiction");
        assert_eq!(e.flag, "--newer-than");
        let e = Filter::parse(
            &FilterSpec {
                error_contains: vec![" ".into()],
                ..spec()
            },
            "",
        )
        .expect_err("empty");
        assert_eq!(e.flag, "--error-contains");
    }
}
