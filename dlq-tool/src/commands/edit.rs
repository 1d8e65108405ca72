//! `courier-dlq edit MESSAGE_ID [--headers]`: fix one dead letter in `$EDITOR`, then replace it
//! with the edited copy: a one-message pass whose action republishes the copy to the tail of the
//! dead-letter queue, confirmed before the original is acked (the pass's rule, as for replay).

use super::{close_publisher, connect, publisher, warn_if_quorum};
use crate::cli::{EditArgs, Global};
use crate::filter::Filter;
use crate::fix::{header_json, minify_json, with_header};
use crate::inspect::{examine_at_most, inspect};
use crate::output::{pretty_json, thousands};
use crate::pass::{self, Action, PassConfig};
use courier::deadletter::DeadLetter;
use courier::envelope::{self, now_millis};
use courier::publisher::Outgoing;
use lapin::types::{AMQPValue, FieldTable, LongString};
use serde_json::Value;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The header `edit` sets on the copy: how many times the message was edited.
pub const EDITED: &str = "x-courier-edited";

pub async fn run(g: &Global, a: EditArgs) -> anyhow::Result<ExitCode> {
    let queue = g.dlq()?;
    let url = g.url()?;
    warn_if_quorum(g, &queue);
    let id = a.message_id.as_str();

    // 1. Find it (an inspection: everything goes back in place).
    let broker = connect(&url, "edit", &queue).await?;
    let filter = Filter::message_id(id);
    let now = now_millis();
    let mut found: Option<(lapin::BasicProperties, Vec<u8>)> = None;
    let sample = inspect(&broker, &queue, examine_at_most(a.limit), |d| {
        let dl = DeadLetter::read(&d.properties, d.data.len());
        if !filter.matches(&dl, None, now) {
            return Ok(ControlFlow::Continue(()));
        }
        found = Some((d.properties.clone(), d.data.clone()));
        Ok(ControlFlow::Break(()))
    })
    .await;
    let sample = match sample {
        Ok(s) => s,
        Err(e) => {
            broker.close().await;
            return Err(e);
        }
    };
    let Some((props, body)) = found else {
        broker.close().await;
        anyhow::bail!(
            "message {id:?} is not among the first {} of {} messages in {queue}{}; nothing was changed",
            thousands(sample.examined),
            thousands(sample.total),
            if sample.sampled() {
                " (--limit searches deeper)"
            } else {
                ""
            }
        );
    };

    // 2. Write the files and run the editor (the connection is idle meanwhile; the pass below
    // takes the message again, so nothing is held while a person edits).
    let Ok(text) = std::str::from_utf8(&body) else {
        broker.close().await;
        anyhow::bail!(
            "message {id:?}: its body is not UTF-8 text ({} bytes), so it cannot be edited in a text editor; nothing was changed (export it, fix the file, import it)",
            body.len()
        );
    };
    let is_json = serde_json::from_str::<Value>(text).is_ok();
    let dir = match private_dir(id).await {
        Ok(d) => d,
        Err(e) => {
            broker.close().await;
            return Err(e);
        }
    };
    let body_file = dir.join(if is_json { "body.json" } else { "body.txt" });
    let body_text = if is_json {
        format!("{}\n", pretty_json(text))
    } else {
        format!("{text}\n")
    };
    let headers_file = dir.join("headers.json");
    let headers_text = editable_headers(props.headers().as_ref());
    let edited = async {
        write_private(&body_file, &body_text).await?;
        let mut files = vec![body_file.clone()];
        if a.headers {
            write_private(&headers_file, &headers_text).await?;
            files.push(headers_file.clone());
        }
        run_editor(&files).await?;
        let new_body = read(&body_file).await?;
        let new_headers = if a.headers {
            Some(read(&headers_file).await?)
        } else {
            None
        };
        anyhow::Ok((new_body, new_headers))
    }
    .await;
    let (new_body_text, new_headers_text) = match edited {
        Ok(x) => x,
        Err(e) => {
            broker.close().await;
            let _ = tokio::fs::remove_dir_all(&dir).await;
            return Err(e.context(format!("editing {id:?}; nothing was changed")));
        }
    };

    // 3. Validate.
    let checked = check_body(is_json, text, &new_body_text, &body_file).and_then(|b| {
        let h = match &new_headers_text {
            Some(t) => Some(check_headers(props.headers().as_ref(), t, &headers_file)?),
            None => None,
        };
        Ok((b, h))
    });
    let (new_body, new_headers) = match checked {
        Ok(x) => x,
        Err(e) => {
            broker.close().await;
            anyhow::bail!(
                "{e:#}; nothing was changed (your edit is kept in {})",
                dir.display()
            );
        }
    };
    let _ = tokio::fs::remove_dir_all(&dir).await;
    let headers_changed = new_headers
        .as_ref()
        .is_some_and(|h| Some(h) != props.headers().as_ref());
    if new_body.is_none() && !headers_changed {
        broker.close().await;
        println!("no change: {id} stays as it was in {queue}");
        return Ok(ExitCode::SUCCESS);
    }

    // 4. Replace: a pass selecting this id, at most one message, whose action publishes the
    // edited copy to the tail of the queue; the original is acked only once it is confirmed.
    let original_body = body;
    let original_headers = props.headers().clone();
    let q = queue.clone();
    let copy = move |d: &lapin::message::Delivery| -> Result<Outgoing, String> {
        if d.data != original_body || *d.properties.headers() != original_headers {
            return Err(
                "it changed since it was opened in the editor (edited or replaced meanwhile); edit it again"
                    .to_owned(),
            );
        }
        let base = new_headers
            .clone()
            .or_else(|| d.properties.headers().clone());
        let count = envelope::int_header(d.properties.headers().as_ref(), EDITED).unwrap_or(0);
        let headers = with_header(
            base.as_ref(),
            EDITED,
            AMQPValue::LongLongInt(count.saturating_add(1)),
        );
        Ok(Outgoing {
            exchange: String::new(),
            routing_key: q.clone(),
            properties: d.properties.clone().with_headers(headers),
            body: new_body.clone().unwrap_or_else(|| d.data.clone()),
        })
    };
    let config = PassConfig {
        queue: queue.clone(),
        filter: Filter::message_id(id),
        limit: Some(1),
        rate: None,
        ramp: None,
        halt: None,
        window: 1,
        progress: false,
        counters: None,
    };
    let publisher = publisher(&url, "edit", &queue, 1);
    let (report, failure) = pass::run(
        &broker,
        &publisher,
        &config,
        Action::Republish {
            copy: Box::new(copy),
        },
    )
    .await;
    close_publisher(&publisher).await;
    broker.close().await;
    if report.started {
        crate::audit::add_pass(&report);
    }
    if let Some(e) = failure {
        return Err(e.context(format!(
            "replacing {id:?} in {queue} (the original stays unless its edited copy was confirmed)"
        )));
    }
    if report.acted == 1 {
        println!(
            "edited {id}: the edited copy replaced it in {queue}, at the tail of the queue (x-courier-edited is set); send it on with: courier-dlq replay --message-id {id}"
        );
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(s) = report.stayed_list.first() {
        anyhow::bail!("{id:?} was not changed: {}", s.why);
    }
    anyhow::bail!(
        "{id:?} is no longer in {queue} (replayed or removed meanwhile); nothing was changed"
    )
}

/// A directory only this user can read (bodies hold personal data), for the files to edit.
async fn private_dir(id: &str) -> anyhow::Result<PathBuf> {
    let safe: String = id
        .chars()
        .take(40)
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let dir = std::env::temp_dir().join(format!(
        "courier-dlq-edit-{safe}-{}",
        envelope::new_message_id()
    ));
    let mut b = tokio::fs::DirBuilder::new();
    #[cfg(unix)]
    b.mode(0o700);
    b.create(&dir)
        .await
        .map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
    Ok(dir)
}

async fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    tokio::fs::write(path, text)
        .await
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))
}

async fn read(path: &Path) -> anyhow::Result<String> {
    tokio::fs::read_to_string(path).await.map_err(|e| {
        anyhow::anyhow!(
            "reading {} after the editor: {e} (it must stay UTF-8 text)",
            path.display()
        )
    })
}

/// `$EDITOR`, else `$VISUAL`, else `vi`, through `sh -c` so that an editor with arguments
/// (`code --wait`) works; a child process awaited without blocking the runtime.
async fn run_editor(files: &[PathBuf]) -> anyhow::Result<()> {
    let editor = ["EDITOR", "VISUAL"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()))
        .unwrap_or_else(|| "vi".to_owned());
    let status = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$@\""))
        .arg("sh")
        .args(files)
        .status()
        .await
        .map_err(|e| anyhow::anyhow!("cannot run the editor {editor:?}: {e}"))?;
    if !status.success() {
        anyhow::bail!("the editor {editor:?} exited with {status}");
    }
    Ok(())
}

/// The headers an edit can change, as a pretty JSON object: those whose values are strings,
/// integers or booleans, without [`EDITED`] (the tool sets it). The others (x-death, tables,
/// timestamps, floats, bytes) are kept as they are.
fn editable_headers(h: Option<&FieldTable>) -> String {
    let mut m = serde_json::Map::new();
    if let Some(h) = h {
        for (k, v) in h.inner() {
            if k.as_str() == EDITED {
                continue;
            }
            if let Some(j) = header_json(v) {
                m.insert(k.as_str().to_owned(), j);
            }
        }
    }
    let text = serde_json::to_string_pretty(&Value::Object(m)).unwrap_or_else(|_| "{}".into());
    format!("{text}\n")
}

/// The new body, `None` when it is unchanged.
///
/// # Errors
/// A JSON body that is no longer JSON: the file, line, column and serde_json's reason.
fn check_body(
    is_json: bool,
    original: &str,
    edited: &str,
    file: &Path,
) -> anyhow::Result<Option<Vec<u8>>> {
    if is_json {
        let new: Value = serde_json::from_str(edited).map_err(|e| {
            anyhow::anyhow!(
                "{}: line {}, column {}: the body is not JSON any more: {e}",
                file.display(),
                e.line(),
                e.column()
            )
        })?;
        let old: Value = serde_json::from_str(original)
            .map_err(|e| anyhow::anyhow!("the original body: {e}"))?;
        if new == old {
            return Ok(None);
        }
        return Ok(Some(minify_json(edited).into_bytes()));
    }
    // The file got a final newline the body did not have; editors keep one.
    let edited = edited.strip_suffix('\n').unwrap_or(edited);
    Ok((edited != original).then(|| edited.as_bytes().to_vec()))
}

/// The headers after the edit: the original ones the file could not show (other types, and
/// [`EDITED`]) kept, the others as the file says (a value that did not change keeps its AMQP
/// type).
///
/// # Errors
/// The file is not a JSON object, or a value is not a string, an integer or a boolean.
fn check_headers(
    original: Option<&FieldTable>,
    edited: &str,
    file: &Path,
) -> anyhow::Result<FieldTable> {
    let v: Value = serde_json::from_str(edited).map_err(|e| {
        anyhow::anyhow!(
            "{}: line {}, column {}: {e}",
            file.display(),
            e.line(),
            e.column()
        )
    })?;
    let Value::Object(m) = v else {
        anyhow::bail!(
            "{}: the headers must be one JSON object, {{\"name\": value, ...}}",
            file.display()
        );
    };
    let mut out = FieldTable::default();
    if let Some(h) = original {
        for (k, v) in h.inner() {
            if header_json(v).is_none() || k.as_str() == EDITED {
                if m.contains_key(k.as_str()) {
                    anyhow::bail!(
                        "{}: header {:?} cannot be set here ({}); remove it from the file",
                        file.display(),
                        k.as_str(),
                        if k.as_str() == EDITED {
                            "edit sets it itself".to_owned()
                        } else {
                            format!(
                                "its type, {}, is kept as it is",
                                crate::render::type_name(v)
                            )
                        }
                    );
                }
                out.insert(k.clone(), v.clone());
            }
        }
    }
    for (k, v) in m {
        if k.is_empty() || k.len() > 255 {
            anyhow::bail!(
                "{}: header name {k:?}: must be 1 to 255 bytes",
                file.display()
            );
        }
        let old = original.and_then(|h| h.inner().get(k.as_str()));
        if let Some(old) = old.filter(|o| header_json(o).as_ref() == Some(&v)) {
            out.insert(k.as_str().into(), old.clone());
            continue;
        }
        let value = match &v {
            Value::String(s) => AMQPValue::LongString(LongString::from(s.as_str())),
            Value::Bool(b) => AMQPValue::Boolean(*b),
            Value::Number(n) => match n.as_i64() {
                Some(i) => AMQPValue::LongLongInt(i),
                None => anyhow::bail!(
                    "{}: header {k:?}: {n} is not an integer that fits in 64 bits; header values must be strings, integers or true/false",
                    file.display()
                ),
            },
            other => anyhow::bail!(
                "{}: header {k:?}: {other} is not allowed; header values must be strings, integers or true/false",
                file.display()
            ),
        };
        out.insert(k.as_str().into(), value);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(pairs: &[(&str, AMQPValue)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in pairs {
            t.insert((*k).into(), v.clone());
        }
        t
    }

    #[test]
    fn a_body_edit_is_checked_and_minified() {
        let f = Path::new("body.json");
        let orig = r#"{"to":"bad","n":1}"#;
        assert_eq!(
            check_body(true, orig, "{\n  \"to\": \"bad\",\n  \"n\": 1\n}\n", f).expect("same"),
            None
        );
        assert_eq!(
            check_body(true, orig, "{\n  \"to\": \"good\",\n  \"n\": 1\n}\n", f).expect("new"),
            Some(br#"{"to":"good","n":1}"#.to_vec())
        );
        let e = check_body(true, orig, "{\n  \"to\": good\n}\n", f)
            .expect_err("invalid")
            .to_string();
        assert!(e.starts_with("body.json: line 2, column 9:"), "{e}");
        assert_eq!(check_body(false, "hi", "hi\n", f).expect("same"), None);
        assert_eq!(
            check_body(false, "hi", "{oops\n", f).expect("text"),
            Some(b"{oops".to_vec())
        );
    }

    #[test]
    fn a_header_edit_keeps_types_and_refuses_others() {
        let f = Path::new("headers.json");
        let orig = table(&[
            ("tenant", AMQPValue::LongString("acme".into())),
            ("x-courier-attempts", AMQPValue::LongInt(5)),
            ("x-death", AMQPValue::FieldArray(Default::default())),
            (EDITED, AMQPValue::LongLongInt(1)),
        ]);
        let shown: Value = serde_json::from_str(&editable_headers(Some(&orig))).expect("json");
        assert_eq!(
            shown,
            serde_json::json!({"tenant": "acme", "x-courier-attempts": 5})
        );
        let h = check_headers(
            Some(&orig),
            r#"{"tenant": "beta", "x-courier-attempts": 5, "vip": true}"#,
            f,
        )
        .expect("valid");
        let get = |k: &str| h.inner().get(k).cloned();
        assert_eq!(get("tenant"), Some(AMQPValue::LongString("beta".into())));
        assert_eq!(get("x-courier-attempts"), Some(AMQPValue::LongInt(5)));
        assert_eq!(get("vip"), Some(AMQPValue::Boolean(true)));
        assert!(get("x-death").is_some(), "kept");
        assert_eq!(get(EDITED), Some(AMQPValue::LongLongInt(1)));
        // A header removed from the file is removed.
        let h = check_headers(Some(&orig), r#"{"tenant": "acme"}"#, f).expect("valid");
        assert!(h.inner().get("x-courier-attempts").is_none());
        for (bad, why) in [
            (r#"{"n": 1.5}"#, "header \"n\": 1.5 is not an integer"),
            (r#"{"n": null}"#, "header \"n\": null is not allowed"),
            (r#"{"n": [1]}"#, "is not allowed"),
            (r#"["n"]"#, "must be one JSON object"),
            (r#"{"x-death": "x"}"#, "cannot be set here"),
            ("{\n\"n\": }", "line 2, column 6"),
        ] {
            let e = check_headers(Some(&orig), bad, f)
                .expect_err(bad)
                .to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
