use super::*;
use std::collections::BTreeMap;

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

/// Every key the parser accepts ([`super::raw`]), as `(table, key)`, read from the source of
/// `raw.rs` itself so that a new key cannot be added without this test seeing it.
fn parser_keys() -> Vec<(&'static str, String)> {
    const RAW: &str = include_str!("raw.rs");
    // Where each raw struct's keys live in the file.
    let table = |name: &str| match name {
        "RawTopology" => "",
        "RawExchange" => "[[exchanges]]",
        "RawQueueDefaults" => "[queue_defaults]",
        "RawQueue" => "[[queues]]",
        "RawBinding" | "RawShards" => "[[queues]]",
        "RawRetry" => "[retry]",
        "RawDeadLetter" => "[dead_letter]",
        other => panic!("raw.rs has a new struct {other}: say here which table it is"),
    };
    let mut keys = Vec::new();
    let mut current = None;
    let mut rename = None;
    for line in RAW.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("pub(super) struct ") {
            current = Some(table(rest.trim_end_matches(" {").trim()));
        } else if line == "}" {
            current = None;
        } else if let Some(r) = line
            .split("rename = \"")
            .nth(1)
            .filter(|_| current.is_some())
        {
            rename = r.split('"').next().map(str::to_owned);
        } else if let (Some(t), Some(field)) = (current, line.strip_prefix("pub(super) ")) {
            let field = field
                .split(':')
                .next()
                .expect("field name")
                .trim()
                .to_owned();
            keys.push((t, rename.take().unwrap_or(field)));
        }
    }
    keys
}

#[test]
fn the_default_file_documents_every_key_the_parser_accepts() {
    let keys = parser_keys();
    assert!(keys.len() >= 20, "raw.rs was not read right: {keys:?}");
    // The text of each table, all its entries together: a table's comments are the paragraph
    // that holds its header, so the file is read paragraph by paragraph.
    let mut sections: BTreeMap<&str, String> = BTreeMap::new();
    let mut current = "";
    for paragraph in DEFAULT.split("\n\n") {
        if let Some(header) = paragraph.lines().find(|l| l.starts_with('[')) {
            current = header.trim();
        }
        let section = sections.entry(current).or_default();
        section.push_str(paragraph);
        section.push('\n');
    }
    for (table, key) in keys {
        if table.is_empty() {
            assert!(
                DEFAULT.contains(&format!("[{key}]")) || DEFAULT.contains(&format!("[[{key}]]")),
                "top-level table `{key}` is missing from topology/notifications.toml"
            );
            continue;
        }
        let text = sections.get(table).map(String::as_str).unwrap_or_default();
        // Set in the file (`key = `, also inside an inline table), or described in a comment
        // of the table, whose first column names one or more keys (`#   a, b   what they do`).
        let documented = text.lines().any(|l| {
            let l = l.trim_start_matches(['#', ' ']);
            let column = l.split("  ").next().unwrap_or_default();
            column.split(", ").any(|k| k == key)
                || l.starts_with(&format!("{key} = "))
                || l.contains(&format!("{{ {key} = "))
                || l.contains(&format!(", {key} = "))
        });
        assert!(
            documented,
            "`{key}` of {table} is accepted by the parser (src/topology/raw.rs) but not described in topology/notifications.toml"
        );
    }
}

#[test]
fn no_retry_is_disabled_in_place_of_tiers_and_max_attempts() {
    let retry = "tiers = [\"1s\", \"10s\", \"1m\", \"10m\"]\nmax_attempts = 5";
    // What the README and the file's comments say: alone beside the others it is refused ...
    let e = err(&DEFAULT.replace(retry, "max_attempts = 5\ndisabled = true"));
    assert!(
        e.contains("retry.max_attempts") && e.contains("remove max_attempts"),
        "{e}"
    );
    // ... in place of them, or with max_attempts = 1, it is valid.
    for no_retry in ["disabled = true", "disabled = true\nmax_attempts = 1"] {
        let t = Topology::parse(&DEFAULT.replace(retry, no_retry), "t.toml", "").expect("valid");
        assert_eq!(t.retry.max_attempts, 1);
    }
    // The README says so too (it once said only "write `disabled = true`").
    let readme = include_str!("../../README.md");
    assert!(
        readme.contains("`disabled = true` in place of `tiers` and `max_attempts`"),
        "README's topology section must say what goes with disabled = true"
    );
}

// ---------------------------------------------------------------------------------------------
// Quorum queues: replicas, dead-letter strategy, delivery limits
// ---------------------------------------------------------------------------------------------

/// The default file with quorum work queues (and tiers); `extra` goes into [queue_defaults].
fn quorum_defaults(extra: &str) -> String {
    DEFAULT.replace(
        "type = \"classic\"     #",
        &format!("{extra}\ntype = \"quorum\" #"),
    )
}

/// The default file with `extra` added to its [dead_letter] table.
fn dead_letter(extra: &str) -> String {
    let dlq = "queue = \"notifications.dlq\"\n";
    assert!(DEFAULT.contains(dlq));
    DEFAULT.replace(dlq, &format!("{dlq}{extra}\n"))
}

/// The default file with `extra` added to the first [[queues]] entry (notifications.email).
fn email_queue(extra: &str) -> String {
    let email = "name = \"notifications.email\"\n";
    assert!(DEFAULT.contains(email));
    DEFAULT.replace(email, &format!("{email}{extra}\n"))
}

fn arg(t: &Topology, queue: &str, key: &str) -> Option<ArgValue> {
    t.queue(queue)
        .unwrap_or_else(|| panic!("{queue} declared"))
        .arguments
        .get(key)
        .cloned()
}

fn s(v: &str) -> Option<ArgValue> {
    Some(ArgValue::Str(v.to_owned()))
}

fn i(v: i64) -> Option<ArgValue> {
    Some(ArgValue::Int(v))
}

#[test]
fn classic_queues_carry_no_quorum_arguments() {
    let t = Topology::parse(DEFAULT, "t", "").expect("valid");
    for q in &t.queues {
        for key in [
            "x-quorum-initial-group-size",
            "x-dead-letter-strategy",
            "x-overflow",
            "x-delivery-limit",
        ] {
            assert!(!q.arguments.contains_key(key), "{}: {key}", q.name);
        }
    }
}

#[test]
fn quorum_work_queues_and_tiers_dead_letter_at_least_once_by_default() {
    let t = Topology::parse(&quorum_defaults(""), "t", "").expect("valid");
    for q in ["notifications.sms", "notifications.sms.retry.1s"] {
        assert_eq!(arg(&t, q, "x-queue-type"), s("quorum"), "{q}");
        assert_eq!(
            arg(&t, q, "x-dead-letter-strategy"),
            s("at-least-once"),
            "{q}"
        );
        // RabbitMQ falls back to at-most-once without reject-publish, silently.
        assert_eq!(arg(&t, q, "x-overflow"), s("reject-publish"), "{q}");
        // Left out: the broker's default group size.
        assert_eq!(arg(&t, q, "x-quorum-initial-group-size"), None, "{q}");
    }
    // The work queue's backstop is declared explicitly, the same on 3.x and 4.x; tiers have no
    // consumers, so no limit of theirs is ever reached.
    assert_eq!(
        arg(&t, "notifications.sms", "x-delivery-limit"),
        i(DEFAULT_DELIVERY_LIMIT)
    );
    assert_eq!(DEFAULT_DELIVERY_LIMIT, 20);
    assert_eq!(
        arg(&t, "notifications.sms.retry.10m", "x-delivery-limit"),
        None
    );
    // The dead-letter queue stays classic in the default file: nothing quorum on it.
    assert_eq!(arg(&t, "notifications.dlq", "x-queue-type"), s("classic"));
    assert_eq!(arg(&t, "notifications.dlq", "x-delivery-limit"), None);
}

#[test]
fn at_most_once_is_the_brokers_default_and_declares_nothing() {
    let t = Topology::parse(
        &quorum_defaults("dead_letter_strategy = \"at-most-once\""),
        "t",
        "",
    )
    .expect("valid");
    for q in ["notifications.push", "notifications.push.retry.1m"] {
        assert_eq!(arg(&t, q, "x-dead-letter-strategy"), None, "{q}");
        assert_eq!(arg(&t, q, "x-overflow"), None, "{q}");
    }
    // A queue's own key wins over [queue_defaults].
    let text = quorum_defaults("dead_letter_strategy = \"at-most-once\"").replace(
        "name = \"notifications.email\"\n",
        "name = \"notifications.email\"\ndead_letter_strategy = \"at-least-once\"\n",
    );
    let t = Topology::parse(&text, "t", "").expect("valid");
    assert_eq!(
        arg(&t, "notifications.email.retry.1s", "x-dead-letter-strategy"),
        s("at-least-once")
    );
    assert_eq!(arg(&t, "notifications.sms", "x-dead-letter-strategy"), None);
    // On a classic queue at-most-once is what it does anyway: accepted, nothing declared.
    let t = Topology::parse(
        &email_queue("dead_letter_strategy = \"at-most-once\""),
        "t",
        "",
    )
    .expect("valid");
    assert_eq!(
        arg(&t, "notifications.email", "x-dead-letter-strategy"),
        None
    );
}

#[test]
fn unknown_dead_letter_strategy_is_refused() {
    let e = err(&quorum_defaults("dead_letter_strategy = \"exactly-once\""));
    assert!(
        e.contains("queue_defaults.dead_letter_strategy")
            && e.contains("exactly-once")
            && e.contains("\"at-least-once\"")
            && e.contains("\"at-most-once\""),
        "{e}"
    );
}

#[test]
fn at_least_once_on_a_classic_queue_is_refused() {
    let e = err(&email_queue("dead_letter_strategy = \"at-least-once\""));
    assert!(
        e.contains("queues[0].dead_letter_strategy")
            && e.contains("quorum queues only")
            && e.contains("classic queue refuses x-dead-letter-strategy"),
        "{e}"
    );
    // Inherited from [queue_defaults]: the error names that key and the classic queue.
    let e = err(&DEFAULT.replace(
        "max_priority = 9     #",
        "dead_letter_strategy = \"at-least-once\"\nmax_priority = 9     #",
    ));
    assert!(
        e.contains("queue_defaults.dead_letter_strategy")
            && e.contains("`notifications.email` (which inherits it) is a classic queue"),
        "{e}"
    );
}

#[test]
fn replicas_set_the_initial_group_size_of_every_quorum_queue() {
    let text = quorum_defaults("replicas = 3").replace(
        "queue = \"notifications.dlq\"\ntype = \"classic\"",
        "queue = \"notifications.dlq\"\ntype = \"quorum\"\nreplicas = 5",
    );
    let t = Topology::parse(&text, "t", "").expect("valid");
    for q in ["notifications.webhook", "notifications.webhook.retry.10s"] {
        assert_eq!(arg(&t, q, "x-quorum-initial-group-size"), i(3), "{q}");
    }
    assert_eq!(
        arg(&t, "notifications.dlq", "x-quorum-initial-group-size"),
        i(5)
    );
    // A queue's own value wins.
    let t = Topology::parse(
        &quorum_defaults("replicas = 3").replace(
            "name = \"notifications.sms\"\n",
            "name = \"notifications.sms\"\nreplicas = 7\n",
        ),
        "t",
        "",
    )
    .expect("valid");
    assert_eq!(
        arg(
            &t,
            "notifications.sms.retry.1s",
            "x-quorum-initial-group-size"
        ),
        i(7)
    );
    assert_eq!(
        arg(&t, "notifications.email", "x-quorum-initial-group-size"),
        i(3)
    );
}

#[test]
fn replicas_must_be_at_least_one() {
    let e = err(&quorum_defaults("replicas = 0"));
    assert!(
        e.contains("queue_defaults.replicas")
            && e.contains("at least 1")
            && e.contains("x-quorum-initial-group-size"),
        "{e}"
    );
    let e = err(&email_queue("type = \"quorum\"\nreplicas = -3"));
    assert!(e.contains("queues[0].replicas"), "{e}");
    let e = err(&dead_letter("replicas = 0").replace(
        "queue = \"notifications.dlq\"\nreplicas = 0\ntype = \"classic\"",
        "queue = \"notifications.dlq\"\nreplicas = 0\ntype = \"quorum\"",
    ));
    assert!(
        e.contains("dead_letter.replicas") && e.contains("at least 1"),
        "{e}"
    );
}

#[test]
fn replicas_on_a_classic_queue_are_refused() {
    let e = err(&email_queue("replicas = 3"));
    assert!(
        e.contains("queues[0].replicas")
            && e.contains("quorum queues only")
            && e.contains("no replicas"),
        "{e}"
    );
    let e = err(&DEFAULT.replace(
        "max_priority = 9     #",
        "replicas = 3\nmax_priority = 9     #",
    ));
    assert!(
        e.contains("queue_defaults.replicas") && e.contains("`notifications.email`"),
        "{e}"
    );
    let e = err(&dead_letter("replicas = 3"));
    assert!(
        e.contains("dead_letter.replicas") && e.contains("the dead-letter queue is classic"),
        "{e}"
    );
}

#[test]
fn delivery_limit_is_quorum_only_and_at_least_one() {
    let e = err(&email_queue("delivery_limit = 5"));
    assert!(
        e.contains("queues[0].delivery_limit") && e.contains("--max-redeliveries"),
        "{e}"
    );
    let e = err(&DEFAULT.replace(
        "max_priority = 9     #",
        "delivery_limit = 5\nmax_priority = 9     #",
    ));
    assert!(
        e.contains("queue_defaults.delivery_limit") && e.contains("`notifications.email`"),
        "{e}"
    );
    let e = err(&quorum_defaults("delivery_limit = 0"));
    assert!(
        e.contains("queue_defaults.delivery_limit") && e.contains("at least 1"),
        "{e}"
    );
    let t = Topology::parse(&quorum_defaults("delivery_limit = 50"), "t", "").expect("valid");
    assert_eq!(arg(&t, "notifications.email", "x-delivery-limit"), i(50));
}

#[test]
fn a_quorum_dead_letter_queue_has_no_delivery_limit_in_practice() {
    let t = Topology::parse(
        &DEFAULT.replace(
            "queue = \"notifications.dlq\"\ntype = \"classic\"",
            "queue = \"notifications.dlq\"\ntype = \"quorum\"",
        ),
        "t",
        "",
    )
    .expect("valid");
    assert_eq!(
        arg(&t, "notifications.dlq", "x-delivery-limit"),
        i(DEAD_LETTER_QUEUE_DELIVERY_LIMIT)
    );
    // Not -1: RabbitMQ 3.x deletes a message at its first return with that.
    assert_eq!(DEAD_LETTER_QUEUE_DELIVERY_LIMIT, 2_147_483_647);
    // It dead-letters nowhere, so no strategy.
    assert_eq!(arg(&t, "notifications.dlq", "x-dead-letter-strategy"), None);
}

#[test]
fn reject_publish_dlx_is_refused_on_a_quorum_dead_letter_queue() {
    let quorum = DEFAULT.replace(
        "queue = \"notifications.dlq\"\ntype = \"classic\"",
        "queue = \"notifications.dlq\"\ntype = \"quorum\"\nmax_length = 100\noverflow = \"reject-publish-dlx\"",
    );
    let e = err(&quorum);
    assert!(
        e.contains("dead_letter.overflow")
            && e.contains("quorum queues do not support \"reject-publish-dlx\"")
            && e.contains("drop-head"),
        "{e}"
    );
    let ok = Topology::parse(
        &quorum.replace("reject-publish-dlx", "reject-publish"),
        "t",
        "",
    )
    .expect("reject-publish is fine on quorum");
    assert_eq!(
        arg(&ok, "notifications.dlq", "x-overflow"),
        s("reject-publish")
    );
    let classic = Topology::parse(&dead_letter("overflow = \"reject-publish-dlx\""), "t", "")
        .expect("classic takes reject-publish-dlx");
    assert_eq!(
        arg(&classic, "notifications.dlq", "x-overflow"),
        s("reject-publish-dlx")
    );
}

#[test]
fn an_urgent_band_is_a_second_work_queue_with_tiers_of_its_own() {
    let text = email_queue("urgent_from = 5")
        .replace("type = \"classic\"     #", "type = \"quorum\" #")
        .replace("max_priority = 9     #", "#");
    let t = Topology::parse(&text, "t", "p.").expect("valid");
    let email = t.work_queue("p.notifications.email").expect("email");
    let band = email.urgent.as_ref().expect("a band");
    assert_eq!(band.queue, "p.notifications.email.urgent");
    assert_eq!(band.from_priority, 5);
    let urgent = t.work_queue(&band.queue).expect("the band is a work queue");
    assert_eq!(urgent.band_of.as_deref(), Some("p.notifications.email"));
    assert!(urgent.urgent.is_none());
    // Same arguments as its queue (type, dead-letter exchange, delivery limit, strategy).
    assert_eq!(
        t.queue(&band.queue).expect("declared").arguments,
        t.queue("p.notifications.email")
            .expect("declared")
            .arguments
    );
    // Its tiers return to the band, so a retried urgent message stays urgent.
    assert_eq!(
        urgent.retry_queues,
        vec![
            "p.notifications.email.urgent.retry.1s",
            "p.notifications.email.urgent.retry.10s",
            "p.notifications.email.urgent.retry.1m",
            "p.notifications.email.urgent.retry.10m",
        ]
    );
    assert_eq!(
        arg(&t, &urgent.retry_queues[0], "x-dead-letter-routing-key"),
        Some(ArgValue::Str(band.queue.clone()))
    );
    // Bound with `<key>.urgent` on the same exchange; routing picks it by priority.
    assert!(t.bindings.iter().any(|b| b.queue == band.queue
        && b.exchange == "p.notifications"
        && b.routing_key == "email.urgent"));
    assert_eq!(
        t.routing_key_for("p.notifications", "email", 5),
        "email.urgent"
    );
    assert_eq!(
        t.routing_key_for("p.notifications", "email", 9),
        "email.urgent"
    );
    assert_eq!(t.routing_key_for("p.notifications", "email", 4), "email");
    // Queues without a band are left alone.
    assert_eq!(t.routing_key_for("p.notifications", "sms", 9), "sms");
    assert!(t
        .work_queue("p.notifications.sms")
        .expect("sms")
        .urgent
        .is_none());
}

#[test]
fn urgent_from_in_queue_defaults_gives_every_queue_a_band() {
    let t = Topology::parse(
        &DEFAULT.replace(
            "max_priority = 9     #",
            "max_priority = 9\nurgent_from = 7 #",
        ),
        "t",
        "",
    )
    .expect("valid");
    let bands: Vec<&str> = t
        .work_queues
        .iter()
        .filter(|w| w.band_of.is_some())
        .map(|w| w.name.as_str())
        .collect();
    assert_eq!(
        bands,
        [
            "notifications.email.urgent",
            "notifications.sms.urgent",
            "notifications.push.urgent",
            "notifications.webhook.urgent"
        ]
    );
    assert_eq!(t.routing_key_for("notifications", "push", 7), "push.urgent");
    assert_eq!(t.routing_key_for("notifications", "push", 6), "push");
}

#[test]
fn urgent_bands_refuse_what_cannot_reach_them() {
    let e = err(&email_queue("urgent_from = 0"));
    assert!(
        e.contains("queues[0].urgent_from") && e.contains("1 to 255"),
        "{e}"
    );
    let e = err(&email_queue("urgent_from = 10"));
    assert!(
        e.contains("queues[0].urgent_from") && e.contains("above max_priority = 9"),
        "{e}"
    );
    // Bands are routed by exact key, which a topic or fanout exchange does not give.
    let e = err(&email_queue("urgent_from = 5").replace("type = \"direct\"", "type = \"topic\""));
    assert!(
        e.contains("queues[0].urgent_from")
            && e.contains("topic exchange `notifications`")
            && e.contains("direct exchange"),
        "{e}"
    );
    // The band's name must not clash with a declared queue.
    let e = err(&format!(
        "{}\n[[queues]]\nname = \"notifications.email.urgent\"\n",
        email_queue("urgent_from = 5")
    ));
    assert!(
        e.contains("`notifications.email.urgent` is declared twice"),
        "{e}"
    );
}

fn sharded(extra: &str) -> String {
    email_queue(&format!(
        "shards = {{ count = 3, key = \"header:x-courier-key\" }}\n{extra}"
    ))
}

#[test]
fn a_sharded_channel_is_a_hash_exchange_over_single_active_consumer_queues() {
    let t = Topology::parse(&sharded(""), "t", "p.").expect("valid");
    let email = t.work_queue("p.notifications.email").expect("email");
    let s = email.sharding.as_ref().expect("sharded");
    assert_eq!(s.exchange, "p.notifications.email.shards");
    assert_eq!(s.key, ShardKey::Header("x-courier-key".into()));
    assert!(!s.ordered);
    assert_eq!(
        s.queues,
        [
            "p.notifications.email.shard.0",
            "p.notifications.email.shard.1",
            "p.notifications.email.shard.2"
        ]
    );
    // The logical queue is not declared; the shards are, with competing consumers in
    // throughput mode (a single active one only when ordered).
    assert!(t.queue("p.notifications.email").is_none());
    for q in &s.queues {
        assert_eq!(arg(&t, q, "x-single-active-consumer"), None);
        assert_eq!(arg(&t, q, "x-max-priority"), Some(ArgValue::Int(9)));
        assert!(t.bindings.iter().any(|b| &b.queue == q
            && b.exchange == s.exchange
            && b.routing_key == "1"
            && !b.to_exchange));
    }
    let x = t
        .exchanges
        .iter()
        .find(|e| e.name == s.exchange)
        .expect("declared");
    assert_eq!(x.kind, ExchangeType::ConsistentHash);
    assert_eq!(
        x.arguments.get("hash-header"),
        Some(&ArgValue::Str("x-courier-key".into()))
    );
    // Publishers keep their exchange and key: the binding now leads to the shard exchange.
    assert!(t.bindings.iter().any(|b| b.exchange == "p.notifications"
        && b.queue == s.exchange
        && b.routing_key == "email"
        && b.to_exchange));
    // Throughput mode: shared tiers hand a retry back to the shard exchange.
    assert_eq!(email.retry_queues.len(), 4);
    assert_eq!(
        arg(&t, &email.retry_queues[0], "x-dead-letter-exchange"),
        Some(ArgValue::Str(s.exchange.clone()))
    );
    assert_eq!(
        arg(&t, &email.retry_queues[0], "x-dead-letter-routing-key"),
        None
    );
}

#[test]
fn an_ordered_channel_has_no_tiers_and_no_priorities() {
    let text = sharded("ordered = true")
        .replace("type = \"classic\"     #", "type = \"quorum\" #")
        .replace("max_priority = 9     #", "#");
    let t = Topology::parse(&text, "t", "").expect("valid");
    let email = t.work_queue("notifications.email").expect("email");
    assert!(email.retry_queues.is_empty());
    assert!(email.sharding.as_ref().expect("sharded").ordered);
    assert!(t.queue("notifications.email.retry.1s").is_none());
    // The workers count each other on a queue of their own.
    assert_eq!(
        email.sharding.as_ref().and_then(|s| s.members.as_deref()),
        Some("notifications.email.workers")
    );
    assert_eq!(
        t.queue("notifications.email.workers").map(|q| &q.role),
        Some(&QueueRole::Members)
    );
    assert_eq!(
        arg(
            &t,
            "notifications.email.shard.2",
            "x-single-active-consumer"
        ),
        Some(ArgValue::Bool(true))
    );
    assert_eq!(
        arg(&t, "notifications.email.shard.0", "x-queue-leader-locator"),
        Some(ArgValue::Str("balanced".into()))
    );
    // Priorities inherited from [queue_defaults] are dropped for an ordered channel ...
    let t = Topology::parse(&sharded("ordered = true"), "t", "").expect("valid");
    assert_eq!(
        arg(&t, "notifications.email.shard.0", "x-max-priority"),
        None
    );
    // ... and its own are refused.
    let e = err(&sharded("ordered = true\nmax_priority = 5"));
    assert!(
        e.contains("queues[0].max_priority") && e.contains("reorder"),
        "{e}"
    );
}

#[test]
fn shard_settings_are_checked() {
    let e = err(&email_queue("shards = { count = 0, key = \"message-id\" }"));
    assert!(
        e.contains("queues[0].shards.count") && e.contains("1 to 1024"),
        "{e}"
    );
    let e = err(&email_queue("shards = { count = 2, key = \"tenant\" }"));
    assert!(
        e.contains("queues[0].shards.key") && e.contains("header:x-courier-key"),
        "{e}"
    );
    let e = err(&email_queue("shards = { count = 2, key = \"header:\" }"));
    assert!(e.contains("queues[0].shards.key"), "{e}");
    let e = err(&email_queue("ordered = true"));
    assert!(
        e.contains("queues[0].ordered") && e.contains("needs shards"),
        "{e}"
    );
    let e = err(&sharded("urgent_from = 5"));
    assert!(
        e.contains("queues[0].urgent_from") && e.contains("do not combine"),
        "{e}"
    );
    let t = Topology::parse(
        &email_queue("shards = { count = 2, key = \"message-id\" }"),
        "t",
        "",
    )
    .expect("valid");
    let x = t
        .exchanges
        .iter()
        .find(|e| e.name == "notifications.email.shards")
        .expect("declared");
    assert_eq!(
        x.arguments.get("hash-property"),
        Some(&ArgValue::Str("message_id".into()))
    );
}
