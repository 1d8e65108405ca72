use super::*;

const DEFAULT: &str = BUILT_IN_DEFAULT;

fn err(text: &str) -> String {
    Topology::parse(text, "t.toml", "")
        .expect_err("should be invalid")
        .to_string()
}

#[test]
fn default_topology_is_valid_and_complete() {
    let t = Topology::parse(DEFAULT, "notifications.toml", "").expect("valid");
    let names: Vec<&str> = t.work_queues.iter().map(|q| q.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "notifications.email",
            "notifications.sms",
            "notifications.push",
            "notifications.webhook"
        ]
    );
    assert_eq!(t.dead_letter_queue, "notifications.dlq");
    assert_eq!(t.retry.tiers.len(), 4);
    assert_eq!(t.retry.max_attempts, 5);
    let email = t.work_queue("notifications.email").expect("email");
    assert_eq!(email.max_priority, Some(9));
    assert_eq!(email.retry_queues[0], "notifications.email.retry.1s");
    assert_eq!(email.retry_queues[2], "notifications.email.retry.1m");
    let tier = t.queue("notifications.email.retry.10s").expect("tier");
    assert_eq!(tier.arguments["x-message-ttl"], ArgValue::Int(10_000));
    assert_eq!(
        tier.arguments["x-dead-letter-exchange"],
        ArgValue::Str(String::new())
    );
    assert_eq!(
        tier.arguments["x-dead-letter-routing-key"],
        ArgValue::Str("notifications.email".into())
    );
    let work = t.queue("notifications.email").expect("work");
    assert_eq!(work.arguments["x-max-priority"], ArgValue::Int(9));
    assert_eq!(
        work.arguments["x-dead-letter-exchange"],
        ArgValue::Str("notifications.dlx".into())
    );
    // Every queue states its type explicitly (managed 4.x brokers may default to quorum).
    assert!(t
        .queues
        .iter()
        .all(|q| q.arguments.contains_key("x-queue-type")));
}

#[test]
fn prefix_renames_every_object_but_not_routing_keys() {
    let t = Topology::parse(DEFAULT, "n.toml", "test-1.").expect("valid");
    assert!(t.exchanges.iter().all(|e| e.name.starts_with("test-1.")));
    assert!(t.queues.iter().all(|q| q.name.starts_with("test-1.")));
    assert!(t
        .bindings
        .iter()
        .all(|b| b.exchange.starts_with("test-1.") && b.queue.starts_with("test-1.")));
    assert!(t.bindings.iter().any(|b| b.routing_key == "email"));
    let tier = t.queue("test-1.notifications.sms.retry.1s").expect("tier");
    assert_eq!(
        tier.arguments["x-dead-letter-routing-key"],
        ArgValue::Str("test-1.notifications.sms".into())
    );
}

#[test]
fn unknown_key_is_rejected_with_its_name() {
    let e = err(&DEFAULT.replace("max_attempts = 5", "max_attempts = 5\nmax_atempts = 3"));
    assert!(e.contains("t.toml") && e.contains("max_atempts"), "{e}");
}

#[test]
fn bad_duration_names_the_tier() {
    let e = err(&DEFAULT.replace("\"10s\"", "\"ten seconds\""));
    assert!(
        e.contains("retry.tiers[1]") && e.contains("not a duration"),
        "{e}"
    );
}

#[test]
fn empty_tiers_need_explicit_no_retry() {
    let e = err(&DEFAULT.replace("tiers = [\"1s\", \"10s\", \"1m\", \"10m\"]", "tiers = []"));
    assert!(
        e.contains("retry.tiers") && e.contains("disabled = true"),
        "{e}"
    );
    let ok = DEFAULT.replace(
        "tiers = [\"1s\", \"10s\", \"1m\", \"10m\"]\nmax_attempts = 5",
        "disabled = true",
    );
    let t = Topology::parse(&ok, "t.toml", "").expect("no retry is valid");
    assert_eq!(t.retry.max_attempts, 1);
    assert!(t.work_queues[0].retry_queues.is_empty());
}

#[test]
fn tiers_must_grow() {
    let e = err(&DEFAULT.replace("\"1s\", \"10s\"", "\"10s\", \"1s\""));
    assert!(e.contains("retry.tiers[1]") && e.contains("grow"), "{e}");
}

#[test]
fn priority_out_of_range() {
    let e = err(&DEFAULT.replace("max_priority = 9", "max_priority = 300"));
    assert!(
        e.contains("queue_defaults.max_priority") && e.contains("1 to 255"),
        "{e}"
    );
    let e = err(&DEFAULT.replace("max_priority = 9", "max_priority = 0"));
    assert!(e.contains("1 to 255"), "{e}");
}

#[test]
fn duplicate_names_are_rejected() {
    let e = err(&DEFAULT.replace(
        "name = \"notifications.sms\"",
        "name = \"notifications.email\"",
    ));
    assert!(e.contains("queues[1].name") && e.contains("twice"), "{e}");
}

#[test]
fn unresolvable_binding_exchange() {
    let e = err(&DEFAULT.replace(
        "{ exchange = \"notifications\", routing_key = \"push\" }",
        "{ exchange = \"notifs\", routing_key = \"push\" }",
    ));
    assert!(
        e.contains("queues[2].bindings[0].exchange") && e.contains("notifs"),
        "{e}"
    );
}

#[test]
fn unknown_queue_type() {
    let e = err(&DEFAULT.replace("type = \"classic\"     #", "type = \"stream\" #"));
    assert!(
        e.contains("queue_defaults.type") && e.contains("stream"),
        "{e}"
    );
}

#[test]
fn missing_dead_letter_table() {
    let text = DEFAULT.split("[dead_letter]").next().expect("head");
    let e = err(text);
    assert!(e.contains("dead_letter") && e.contains("missing"), "{e}");
}

#[test]
fn reserved_and_overlong_names() {
    let e = err(&DEFAULT.replace("name = \"notifications\"", "name = \"amq.notifications\""));
    assert!(e.contains("reserved"), "{e}");
    let long = "x".repeat(250);
    let e = Topology::parse(DEFAULT, "t.toml", &long)
        .expect_err("too long")
        .to_string();
    assert!(e.contains("at most 255"), "{e}");
}

#[test]
fn not_toml_at_all() {
    let e = err("this is [not toml");
    assert!(e.starts_with("t.toml:"), "{e}");
}

#[test]
fn quorum_queues_carry_no_max_priority_argument() {
    let t = Topology::parse(
        &DEFAULT.replace("type = \"classic\"     #", "type = \"quorum\" #"),
        "t",
        "",
    )
    .expect("valid");
    let q = t.queue("notifications.email").expect("q");
    assert_eq!(q.arguments["x-queue-type"], ArgValue::Str("quorum".into()));
    assert!(!q.arguments.contains_key("x-max-priority"));
    assert_eq!(t.work_queues[0].max_priority, Some(9));
}

#[test]
fn drop_head_overflow_is_refused_for_the_dlq() {
    let e = err(&DEFAULT.replace(
        "type = \"classic\"\n",
        "type = \"classic\"\noverflow = \"drop-head\"\n",
    ));
    assert!(e.contains("dead_letter.overflow"), "{e}");
}

#[test]
fn mermaid_shows_every_path() {
    let t = Topology::parse(DEFAULT, "n", "").expect("valid");
    let m = mermaid(&t);
    assert!(m.starts_with("flowchart LR"));
    assert!(m.contains("after 10m"));
    assert!(m.contains("dead-letter"));
    assert!(m.contains("\"email\""));
}

#[test]
fn a_named_file_is_used_else_the_default_file_else_the_built_in_copy() {
    let named = Path::new("/elsewhere/mine.toml");
    assert_eq!(
        TopologySource::resolve_with(Some(named), || true),
        TopologySource::File(named.to_path_buf())
    );
    // Named but missing stays the named file: loading it fails and says so.
    let missing = TopologySource::resolve_with(Some(named), || false);
    let e = missing.load("").expect_err("missing file").to_string();
    assert!(e.starts_with("/elsewhere/mine.toml: cannot read"), "{e}");
    assert_eq!(
        TopologySource::resolve_with(None, || true),
        TopologySource::File(PathBuf::from(DEFAULT_TOPOLOGY_PATH))
    );
    let built_in = TopologySource::resolve_with(None, || false);
    assert!(built_in.is_built_in());
    let t = built_in.load("p.").expect("the built-in default is valid");
    assert_eq!(t.source, BUILT_IN_SOURCE);
    assert_eq!(t.dead_letter_queue, "p.notifications.dlq");
}

#[test]
fn an_unreadable_file_names_its_cause_once_even_in_an_error_chain() {
    let e = Topology::load(Path::new("/nonexistent/t.toml"), "").expect_err("missing");
    // `{:#}` of an anyhow error prints the message, then every source(): the I/O error must be
    // in exactly one of them.
    let mut chain = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        chain.push_str(&format!(": {s}"));
        source = s.source();
    }
    assert_eq!(chain.matches("os error").count(), 1, "{chain}");
}
