//! Fixing a message on its way out: `replay --set-header K=V`, `--set-routing-key KEY` and
//! `--transform EXPR` (a jq program applied to the JSON body, with the `jaq` crates), plus the
//! helpers `edit` shares (header values, JSON minification).
//!
//! Everything is checked before a pass starts: a `--set-header` without `=` or a program that
//! does not compile is a usage error (exit code 2) naming the flag. A program that fails on a
//! message, or yields no value or several, keeps that message in the dead-letter queue; the
//! pass reports it like a destination that does not route.

use crate::error::UsageError;
use jaq_core::load::{Arena, File, Loader};
use jaq_core::{data, unwrap_valr, Compiler, Ctx, Vars};
use jaq_json::Val;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::BasicProperties;

/// A header value as `--set-header` (and the `--header` filter) reads it: `true`/`false`, a
/// decimal integer (i64), else the text as a string.
pub fn header_value(v: &str) -> AMQPValue {
    match v {
        "true" => AMQPValue::Boolean(true),
        "false" => AMQPValue::Boolean(false),
        _ => match v.parse::<i64>() {
            Ok(n) => AMQPValue::LongLongInt(n),
            Err(_) => AMQPValue::LongString(LongString::from(v)),
        },
    }
}

/// Parses one `--set-header NAME=VALUE`.
///
/// # Errors
/// A usage error naming the flag and the expected form.
pub fn set_header(s: &str) -> Result<(String, AMQPValue), UsageError> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), header_value(v))),
        _ => Err(UsageError(format!(
            "--set-header {s:?}: expected NAME=VALUE, e.g. --set-header tenant=beta (VALUE: true/false, an integer, else a string)"
        ))),
    }
}

/// A compiled jq program.
pub struct Transform {
    code: String,
    filter: jaq_core::compile::Filter<jaq_core::Native<data::JustLut<Val>>>,
}

impl std::fmt::Debug for Transform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Transform({:?})", self.code)
    }
}

/// The line and column (1-based) of byte `offset` in `code`.
fn line_col(code: &str, offset: usize) -> (usize, usize) {
    let before = &code[..offset.min(code.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Where `part` (a slice of `code`) starts in it, if it is one.
fn offset_in(code: &str, part: &str) -> Option<usize> {
    let start = code.as_ptr() as usize;
    let p = part.as_ptr() as usize;
    (p >= start && p <= start + code.len()).then(|| p - start)
}

impl Transform {
    /// Compiles `code` once.
    ///
    /// # Errors
    /// What is wrong and where (line:column), for a usage error naming `--transform`.
    pub fn compile(code: &str) -> Result<Self, String> {
        let at = |s: &str| {
            offset_in(code, s).map_or_else(String::new, |o| {
                let (l, c) = line_col(code, o);
                format!(" at {l}:{c}")
            })
        };
        let defs = jaq_core::defs()
            .chain(jaq_std::defs())
            .chain(jaq_json::defs());
        let funs = jaq_core::funs()
            .chain(jaq_std::funs())
            .chain(jaq_json::funs());
        let loader = Loader::new(defs);
        let arena = Arena::default();
        let modules = loader
            .load(&arena, File { code, path: () })
            .map_err(|errs| {
                let mut why = Vec::new();
                for (_, e) in errs {
                    match e {
                        jaq_core::load::Error::Io(v) => {
                            why.extend(v.into_iter().map(|(s, m)| format!("{s}: {m}")));
                        }
                        jaq_core::load::Error::Lex(v) => {
                            why.extend(v.into_iter().map(|(expect, got)| {
                                format!("expected {}{}", expect.as_str(), at(got))
                            }))
                        }
                        jaq_core::load::Error::Parse(v) => {
                            why.extend(v.into_iter().map(|(expect, got)| {
                                let found = if got.is_empty() {
                                    "the end".to_owned()
                                } else {
                                    format!("{:?}", got.chars().take(20).collect::<String>())
                                };
                                format!("expected {}, found {found}{}", expect.as_str(), at(got))
                            }));
                        }
                    }
                }
                why.join("; ")
            })?;
        let filter = Compiler::default()
            .with_funs(funs)
            .compile(modules)
            .map_err(|errs| {
                errs.into_iter()
                    .flat_map(|(_, v)| v)
                    .map(|(name, undefined)| {
                        format!("undefined {} {name:?}{}", undefined.as_str(), at(name))
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            })?;
        Ok(Self {
            code: code.to_owned(),
            filter,
        })
    }

    /// Runs the program on a JSON `body` and returns the one value it yields, as compact JSON.
    ///
    /// # Errors
    /// Why this message cannot be transformed: the body is not JSON, the program failed, or it
    /// yielded no value or more than one.
    pub fn apply(&self, body: &[u8]) -> Result<Vec<u8>, String> {
        let input = jaq_json::read::parse_single(body)
            .map_err(|e| format!("the body is not JSON ({e})"))?;
        let ctx = Ctx::<data::JustLut<Val>>::new(&self.filter.lut, Vars::new([]));
        let mut out = self.filter.id.run((ctx, input)).map(unwrap_valr);
        let first = match out.next() {
            None => return Err("the program yielded no value".to_owned()),
            Some(Err(e)) => return Err(format!("the program failed: {e}")),
            Some(Ok(v)) => v,
        };
        match out.next() {
            None => {}
            Some(Err(e)) => return Err(format!("the program failed: {e}")),
            Some(Ok(_)) => {
                return Err("the program yielded more than one value".to_owned());
            }
        }
        let text = first.to_string();
        // jaq can hold values JSON cannot (byte strings, NaN); the body must stay JSON.
        serde_json::from_str::<serde_json::Value>(&text)
            .map_err(|e| format!("the program's result is not JSON ({e}): {text}"))?;
        Ok(minify_json(&text).into_bytes())
    }
}

/// What `replay` changes in each copy besides the replay headers.
#[derive(Debug, Default)]
pub struct Fixes {
    /// `--set-header`, in order (a later one wins).
    pub set_headers: Vec<(String, AMQPValue)>,
    /// `--set-routing-key`.
    pub routing_key: Option<String>,
    /// `--transform`.
    pub transform: Option<Transform>,
}

impl Fixes {
    /// No fix asked for.
    pub fn is_empty(&self) -> bool {
        self.set_headers.is_empty() && self.routing_key.is_none() && self.transform.is_none()
    }

    /// The copy's properties and body with the fixes applied.
    ///
    /// # Errors
    /// Why the transform cannot be applied to this message (it then stays in the queue).
    pub fn apply(
        &self,
        props: &BasicProperties,
        body: &[u8],
    ) -> Result<(BasicProperties, Vec<u8>), String> {
        let body = match &self.transform {
            Some(t) => t.apply(body).map_err(|e| format!("--transform: {e}"))?,
            None => body.to_vec(),
        };
        if self.set_headers.is_empty() {
            return Ok((props.clone(), body));
        }
        let mut headers = props.headers().clone().unwrap_or_default();
        for (k, v) in &self.set_headers {
            headers.insert(k.as_str().into(), v.clone());
        }
        Ok((props.clone().with_headers(headers), body))
    }
}

/// `text` (valid JSON) without the whitespace between tokens; keys keep their order.
pub fn minify_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in text.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !c.is_whitespace() {
            out.push(c);
        }
    }
    out
}

/// A header value as plain JSON, when it is a string, an integer or a boolean (the types an
/// edit can write back); `None` for the others.
pub fn header_json(v: &AMQPValue) -> Option<serde_json::Value> {
    use serde_json::Value as J;
    Some(match v {
        AMQPValue::LongString(s) => J::String(String::from_utf8(s.as_bytes().to_vec()).ok()?),
        AMQPValue::ShortString(s) => J::String(s.as_str().to_owned()),
        AMQPValue::Boolean(b) => J::Bool(*b),
        AMQPValue::ShortShortInt(i) => J::from(*i),
        AMQPValue::ShortShortUInt(i) => J::from(*i),
        AMQPValue::ShortInt(i) => J::from(*i),
        AMQPValue::ShortUInt(i) => J::from(*i),
        AMQPValue::LongInt(i) => J::from(*i),
        AMQPValue::LongUInt(i) => J::from(*i),
        AMQPValue::LongLongInt(i) => J::from(*i),
        _ => return None,
    })
}

/// Headers `h` with `name` set to `value`.
pub fn with_header(h: Option<&FieldTable>, name: &str, value: AMQPValue) -> FieldTable {
    let mut h = h.cloned().unwrap_or_default();
    h.insert(name.into(), value);
    h
}

/// A before/after of one message for `replay --dry-run` with fixes: the destination, each
/// header the fixes change, and the body line by line (`- ` before, `+ ` after, `  ` both;
/// JSON pretty-printed).
pub fn before_after(
    id: &str,
    to: &str,
    before: (&BasicProperties, &[u8]),
    after: Result<(&BasicProperties, &[u8]), &String>,
) -> String {
    use std::fmt::Write;
    let mut out = format!("--- {id}  → {to}\n");
    let (props, body) = match after {
        Ok(a) => a,
        Err(why) => {
            let _ = writeln!(out, "  stays in the queue: {why}");
            return out;
        }
    };
    let show =
        |v: Option<&AMQPValue>| v.map_or_else(|| "(none)".to_owned(), crate::render::display_value);
    if let Some(h) = props.headers() {
        for (k, v) in h.inner() {
            let old = before.0.headers().as_ref().and_then(|b| b.inner().get(k));
            if old != Some(v) {
                let _ = writeln!(
                    out,
                    "  header {}: {} → {}",
                    k.as_str(),
                    show(old),
                    show(Some(v))
                );
            }
        }
    }
    let lines = |b: &[u8]| -> Vec<String> {
        let text = String::from_utf8_lossy(b);
        let text = if serde_json::from_str::<serde_json::Value>(&text).is_ok() {
            crate::output::pretty_json(&text)
        } else {
            text.into_owned()
        };
        text.lines().map(str::to_owned).collect()
    };
    let (old, new) = (lines(before.1), lines(body));
    if old == new {
        out.push_str("  body unchanged\n");
        return out;
    }
    for (tag, line) in diff_lines(&old, &new) {
        let _ = writeln!(out, "  {tag} {line}");
    }
    out
}

/// A line diff (longest common subsequence; bodies past 400 lines are shown whole, before then
/// after).
fn diff_lines<'a>(old: &'a [String], new: &'a [String]) -> Vec<(char, &'a str)> {
    if old.len() > 400 || new.len() > 400 {
        return old
            .iter()
            .map(|l| ('-', l.as_str()))
            .chain(new.iter().map(|l| ('+', l.as_str())))
            .collect();
    }
    let (n, m) = (old.len(), new.len());
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if old[i] == new[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < n || j < m {
        if i < n && j < m && old[i] == new[j] {
            out.push((' ', old[i].as_str()));
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            out.push(('-', old[i].as_str()));
            i += 1;
        } else {
            out.push(('+', new[j].as_str()));
            j += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_parse_like_the_header_filter() {
        assert_eq!(header_value("true"), AMQPValue::Boolean(true));
        assert_eq!(header_value("false"), AMQPValue::Boolean(false));
        assert_eq!(header_value("42"), AMQPValue::LongLongInt(42));
        assert_eq!(header_value("-7"), AMQPValue::LongLongInt(-7));
        assert_eq!(header_value("beta"), AMQPValue::LongString("beta".into()));
        assert_eq!(header_value("1.5"), AMQPValue::LongString("1.5".into()));
        assert_eq!(header_value("True"), AMQPValue::LongString("True".into()));
        assert_eq!(header_value(""), AMQPValue::LongString("".into()));
        let (k, v) = set_header("tenant=a=b").expect("ok");
        assert_eq!(
            (k.as_str(), v),
            ("tenant", AMQPValue::LongString("a=b".into()))
        );
        assert!(set_header("tenant")
            .expect_err("no =")
            .0
            .contains("--set-header \"tenant\": expected NAME=VALUE"));
        assert!(set_header("=x").is_err());
    }

    #[test]
    fn a_transform_yields_one_json_value_or_says_why() {
        let t = Transform::compile(r#".to = "fixed@example.com""#).expect("compiles");
        assert_eq!(
            t.apply(br#"{"to":"bad","text":"hi"}"#).expect("applies"),
            br#"{"to":"fixed@example.com","text":"hi"}"#
        );
        let t = Transform::compile(".[]").expect("compiles");
        assert!(t
            .apply(br#"[1,2]"#)
            .expect_err("two")
            .contains("more than one value"));
        assert!(t.apply(br#"[]"#).expect_err("none").contains("no value"));
        assert_eq!(t.apply(br#"[{"a": 1}]"#).expect("one"), br#"{"a":1}"#);
        let t = Transform::compile(r#"error("nope")"#).expect("compiles");
        assert!(t.apply(b"{}").expect_err("fails").contains("failed"));
        let t = Transform::compile(".a + 1").expect("compiles");
        assert!(t
            .apply(br#"{"a":"x"}"#)
            .expect_err("type")
            .contains("failed"));
        assert!(t
            .apply(b"not json")
            .expect_err("input")
            .contains("not JSON"));
        let t = Transform::compile("split(\",\") | map(tonumber) | add").expect("std");
        assert_eq!(t.apply(br#""1,2,3""#).expect("sum"), b"6");
    }

    #[test]
    fn a_program_that_does_not_compile_says_where() {
        let e = Transform::compile(".to = ").expect_err("incomplete");
        assert!(e.contains("expected"), "{e}");
        let e = Transform::compile(".a | nosuchfunction").expect_err("undefined");
        assert!(
            e.contains("undefined filter \"nosuchfunction\" at 1:6"),
            "{e}"
        );
        let e = Transform::compile("{a: (}").expect_err("unbalanced");
        assert!(e.contains("at 1:"), "{e}");
    }

    #[test]
    fn fixes_apply_in_order() {
        let props = BasicProperties::default().with_headers(with_header(
            None,
            "tenant",
            AMQPValue::LongString("acme".into()),
        ));
        let f = Fixes {
            set_headers: vec![("tenant".into(), header_value("beta"))],
            routing_key: None,
            transform: Some(Transform::compile(".n += 1").expect("compiles")),
        };
        let (p, b) = f.apply(&props, br#"{"n": 1}"#).expect("applies");
        assert_eq!(b, br#"{"n":2}"#);
        assert_eq!(
            p.headers().as_ref().and_then(|h| h.inner().get("tenant")),
            Some(&AMQPValue::LongString("beta".into()))
        );
        assert!(f
            .apply(&props, b"[")
            .expect_err("bad body")
            .starts_with("--transform: the body is not JSON"));
    }

    #[test]
    fn a_preview_shows_changed_lines_and_headers() {
        let before = BasicProperties::default().with_headers(with_header(
            None,
            "tenant",
            AMQPValue::LongString("acme".into()),
        ));
        let f = Fixes {
            set_headers: vec![("tenant".into(), header_value("beta"))],
            routing_key: None,
            transform: Some(Transform::compile(r#".to = "good""#).expect("compiles")),
        };
        let body = br#"{"to":"bad","text":"hi"}"#;
        let after = f.apply(&before, body);
        let p = before_after(
            "m-1",
            "x / sms",
            (&before, body),
            after.as_ref().map(|(p, b)| (p, b.as_slice())),
        );
        assert_eq!(
            p,
            "--- m-1  → x / sms\n  header tenant: \"acme\" → \"beta\"\n    {\n  -   \"to\": \"bad\",\n  +   \"to\": \"good\",\n      \"text\": \"hi\"\n    }\n"
        );
        let err = "--transform: boom".to_owned();
        assert!(before_after("m-2", "x / sms", (&before, body), Err(&err))
            .contains("stays in the queue: --transform: boom"));
    }

    #[test]
    fn minified_json_keeps_key_order_and_strings() {
        assert_eq!(
            minify_json("{\n  \"z\": 1,\n  \"a\": \"x y \\\" }\"\n}\n"),
            r#"{"z":1,"a":"x y \" }"}"#
        );
    }
}
