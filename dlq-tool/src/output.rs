//! Formatting for people: thousands separators, ages, aligned tables, the `summary` object.

use crate::render::format_time_ms;
use crate::stats::{error_group, Groups};
use courier::deadletter::{DeadLetter, Source};
use serde_json::{json, Value};
use std::io::{self, Write};
use std::time::Duration;

/// `25000` → `25,000`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A short age: `45s`, `12m 5s`, `3h 12m`, `4d 2h`.
pub fn age(d: Duration) -> String {
    let s = d.as_secs();
    let (d_, h, m, sec) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    match (d_, h, m) {
        (0, 0, 0) => format!("{sec}s"),
        (0, 0, _) => format!("{m}m {sec}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d_}d {h}h"),
    }
}

/// `age` of a message, or `?` when its time is unknown.
pub fn age_of(dl: &DeadLetter, now_ms: i64) -> String {
    dl.age(now_ms).map_or_else(|| "?".to_owned(), age)
}

/// Cuts `s` to `max` characters with an ellipsis, on one line.
pub fn cell(s: &str, max: usize) -> String {
    let one_line: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if one_line.chars().count() <= max {
        return one_line;
    }
    let mut out: String = one_line.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// A table with left-aligned columns, written as rows come (widths are fixed up front so that
/// a large listing streams instead of being collected).
pub struct Table {
    widths: Vec<usize>,
}

impl Table {
    /// A table with these column widths; the last column is not padded.
    pub fn new(widths: &[usize]) -> Self {
        Self {
            widths: widths.to_vec(),
        }
    }

    /// Writes one row.
    ///
    /// # Errors
    /// The write failed (e.g. the reader of stdout went away).
    pub fn row(&self, out: &mut impl Write, cells: &[String]) -> io::Result<()> {
        let mut line = String::new();
        for (i, c) in cells.iter().enumerate() {
            let w = self.widths.get(i).copied().unwrap_or(0);
            let c = cell(c, w.max(1));
            if i + 1 == cells.len() {
                line.push_str(&c);
            } else {
                line.push_str(&format!("{c:<w$}  "));
            }
        }
        writeln!(out, "{}", line.trim_end())
    }
}

/// Pretty-prints JSON text as it is: the same keys in the same order, only re-indented
/// (parsing into `serde_json::Value` would sort the keys and show a body that was never sent).
/// `text` must be valid JSON.
pub fn pretty_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        out.push_str(&"  ".repeat(depth));
    };
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '{' | '[' => {
                out.push(c);
                // An empty object or array stays on one line.
                while chars.peek().is_some_and(|n| n.is_whitespace()) {
                    chars.next();
                }
                if chars.peek().is_some_and(|n| *n == '}' || *n == ']') {
                    if let Some(close) = chars.next() {
                        out.push(close);
                    }
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(c);
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c if c.is_whitespace() => {}
            c => out.push(c),
        }
    }
    out
}

/// Writes a `TITLE  COUNT` table of groups, largest first.
///
/// # Errors
/// The write failed.
pub fn groups(out: &mut impl Write, title: &str, g: &Groups) -> io::Result<()> {
    let rows = g.sorted();
    let width = rows
        .iter()
        .map(|(k, _)| k.chars().count())
        .chain([title.len()])
        .max()
        .unwrap_or(10)
        .min(70);
    let t = Table::new(&[width, 10]);
    writeln!(out)?;
    t.row(out, &[title.to_owned(), "COUNT".to_owned()])?;
    for (k, n) in rows {
        t.row(out, &[k.to_owned(), thousands(n)])?;
    }
    Ok(())
}

/// The informational `summary` of an exported or listed message: what the tool understood.
pub fn summary(dl: &DeadLetter, now_ms: i64) -> Value {
    json!({
        "reason": dl.reason,
        "error": dl.error,
        "error_group": error_group(dl),
        "original_queue": dl.original_queue,
        "origin": dl.origin.as_ref().map(|o| json!({"exchange": o.exchange, "routing_key": o.routing_key})),
        "attempts": dl.attempts,
        "replayed": dl.replayed,
        "dead_lettered_at": dl.dead_lettered_at_ms.map(format_time_ms),
        "age_seconds": dl.age(now_ms).map(|d| d.as_secs()),
        "source": match dl.source {
            Source::Worker => "worker",
            Source::Broker => "broker",
            Source::Unknown => "unknown",
        },
        "body_bytes": dl.body_len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_ages_read_well() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(25_000), "25,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(age(Duration::from_secs(45)), "45s");
        assert_eq!(age(Duration::from_secs(725)), "12m 5s");
        assert_eq!(age(Duration::from_secs(3 * 3600 + 720)), "3h 12m");
        assert_eq!(age(Duration::from_secs(4 * 86_400 + 7200)), "4d 2h");
        assert_eq!(cell("abcdef", 4), "abc…");
        assert_eq!(cell("a\nb", 10), "a b");
    }

    #[test]
    fn json_is_pretty_printed_in_its_own_key_order() {
        let text = r#"{"to":"a@x","text":"say \"hi\", {ok}","n":[1, 2,{}],"e":[],"z":{"b":null}}"#;
        let pretty = pretty_json(text);
        assert_eq!(
            pretty,
            "{\n  \"to\": \"a@x\",\n  \"text\": \"say \\\"hi\\\", {ok}\",\n  \"n\": [\n    1,\n    2,\n    {}\n  ],\n  \"e\": [],\n  \"z\": {\n    \"b\": null\n  }\n}"
        );
        let reparsed: serde_json::Value = serde_json::from_str(&pretty).expect("still JSON");
        assert_eq!(
            reparsed,
            serde_json::from_str::<serde_json::Value>(text).expect("JSON")
        );
        assert_eq!(pretty_json("42"), "42");
    }

    #[test]
    fn tables_align() {
        let t = Table::new(&[4, 6, 10]);
        let mut out = Vec::new();
        t.row(&mut out, &["ID".into(), "AGE".into(), "ERROR".into()])
            .expect("write");
        t.row(&mut out, &["abcdefg".into(), "1s".into(), "x".into()])
            .expect("write");
        assert_eq!(
            String::from_utf8_lossy(&out),
            "ID    AGE     ERROR\nabc…  1s      x\n"
        );
    }
}
