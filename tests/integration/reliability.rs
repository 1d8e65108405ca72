//! `scripts/reliability-table` prints docs/reliability.md only from one complete, clean run of
//! the fault suite: rows from two runs, a run of uncommitted changes, or a run in which a case
//! failed (it wrote no row) are refused.

use courier_testkit::process::{output_within, DEFAULT_DEADLINE};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The number of fault cases, as the script counts them.
fn cases() -> usize {
    std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/faults"))
        .expect("tests/faults")
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .map(|s| s.matches("#[tokio::test]").count())
        .sum()
}

fn row(run: &str, commit: &str, fault: &str) -> String {
    serde_json::json!({
        "fault": fault, "injection": "how", "sent": 10, "lost": 0, "duplicated": 1,
        "unexpected": 0, "recovery_secs": 1.25,
        "run": {"id": run, "commit": commit, "date": "2026-11-30T00:00:00Z", "broker": "9.9.9"},
    })
    .to_string()
}

fn write(name: &str, rows: &[String]) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "{}{name}.jsonl",
        courier_testkit::unique_prefix("reliability")
    ));
    std::fs::write(&path, rows.join("\n") + "\n").expect("write rows");
    path
}

fn table(file: &Path) -> (bool, String, String) {
    let mut cmd =
        Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/reliability-table"));
    cmd.arg(file);
    let out = output_within(&mut cmd, DEFAULT_DEADLINE);
    let _ = std::fs::remove_file(file);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_complete_clean_run_becomes_a_table_stamped_with_its_run() {
    let rows: Vec<String> = (0..cases())
        .map(|i| row("r1", "0123456789abcdef", &format!("case {i}")))
        .collect();
    let (ok, out, err) = table(&write("complete", &rows));
    assert!(ok, "{err}");
    assert!(out.contains("### RabbitMQ 9.9.9"), "{out}");
    assert!(out.contains("commit `0123456789ab`"), "{out}");
    assert!(
        out.contains("| case 0 | how | 10 | 0 | 1 | 0 | 1.2 |"),
        "{out}"
    );
}

#[test]
fn rows_of_two_runs_are_refused() {
    let mut rows: Vec<String> = (0..cases())
        .map(|i| row("r1", "0123456789abcdef", &format!("case {i}")))
        .collect();
    rows[0] = row("r0", "0123456789abcdef", "case 0");
    let (ok, out, err) = table(&write("mixed", &rows));
    assert!(!ok && out.is_empty(), "{out}");
    assert!(err.contains("2 different runs"), "{err}");
}

#[test]
fn a_run_missing_a_case_is_refused() {
    let rows: Vec<String> = (1..cases())
        .map(|i| row("r1", "0123456789abcdef", &format!("case {i}")))
        .collect();
    let (ok, _, err) = table(&write("partial", &rows));
    assert!(!ok);
    assert!(
        err.contains(&format!("{} of the suite's {} cases", cases() - 1, cases())),
        "{err}"
    );
}

#[test]
fn a_run_of_uncommitted_changes_is_refused() {
    let rows: Vec<String> = (0..cases())
        .map(|i| row("r1", "0123456789abcdef-dirty", &format!("case {i}")))
        .collect();
    let (ok, _, err) = table(&write("dirty", &rows));
    assert!(!ok);
    assert!(err.contains("uncommitted"), "{err}");
}
