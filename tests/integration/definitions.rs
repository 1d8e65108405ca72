//! `courier topology export --format definitions` as RabbitMQ itself reads it: imported into a
//! vhost of the test's own through the management API, then checked by `courier topology
//! check` against the declared topology.

use crate::util::*;
use courier_testkit::vhost::ScratchVhost;
use std::process::Command;

#[tokio::test]
async fn exported_definitions_import_into_a_fresh_vhost_and_check_finds_no_drift() {
    let vhost = ScratchVhost::create("defs").await;
    let topology = default_topology_path();

    let mut export = Command::new(env!("CARGO_BIN_EXE_courier"));
    export
        .args(["topology", "export", "--format", "definitions", "--vhost"])
        .arg(&vhost.name)
        .env("COURIER_TOPOLOGY", &topology)
        .env("COURIER_PREFIX", "")
        .env("RUST_LOG", "warn");
    let out = output_within(&mut export, DEFAULT_DEADLINE);
    assert!(out.status.success(), "export: {}", stderr(&out));
    let definitions: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("export prints JSON");

    let url = parsed_url();
    let import = reqwest::Client::new()
        .post(format!(
            "{}/api/definitions/{}",
            management_url(),
            percent_encode(&vhost.name)
        ))
        .basic_auth(url.username(), Some(url.password_for_http()))
        .json(&definitions)
        .send()
        .await
        .expect("management API answers");
    let status = import.status();
    let body = import.text().await.unwrap_or_default();
    assert!(status.is_success(), "import refused: {status} {body}");

    // The whole default topology, unprefixed, in a vhost holding nothing else; bindings are
    // compared too (over the management API, as AMQP cannot list them).
    let mut check = Command::new(env!("CARGO_BIN_EXE_courier"));
    check
        .args(["topology", "check", "--management-url", &management_url()])
        .env("AMQP_URL", vhost.amqp_url())
        .env("COURIER_TOPOLOGY", &topology)
        .env("COURIER_PREFIX", "")
        .env("RUST_LOG", "warn");
    let out = output_within(&mut check, DEFAULT_DEADLINE);
    assert_eq!(
        out.status.code(),
        Some(0),
        "drift after importing the export:\n{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(stdout(&out).contains("in sync"), "{}", stdout(&out));
}
