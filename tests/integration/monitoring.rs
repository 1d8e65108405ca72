//! Checks `monitoring/` without a running Prometheus or Grafana: the Prometheus config scrapes
//! every worker service and the broker, every alert rule is complete, and the Grafana dashboard
//! (like the rules) only queries metrics that `src/metrics.rs` (or the sink, `src/cli/sink/server.rs`)
//! defines, or RabbitMQ's own `rabbitmq_*`; docs/operations.md has a runbook for every alert and
//! explains every metric.

use crate::stack::*;
use serde_yaml::Value;
use std::collections::{BTreeMap, BTreeSet};

fn yaml_file(rel: &str) -> Value {
    serde_yaml::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel} is not valid YAML: {e}"))
}

/// Metric names the code defines: every `"courier_..."` string literal of `src/metrics.rs`
/// (the workers) and `src/cli/sink/server.rs` (the stand-in endpoint), read as text.
fn defined_metrics() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for file in ["src/metrics.rs", "src/cli/sink/server.rs"] {
        let text = read(file);
        let mut rest = text.as_str();
        while let Some(start) = rest.find("\"courier_") {
            let after = &rest[start + 1..];
            let end = after
                .find('"')
                .unwrap_or_else(|| panic!("{file}: unterminated string"));
            let name = &after[..end];
            if name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            {
                names.insert(name.to_owned());
            }
            rest = &after[end + 1..];
        }
    }
    assert!(
        names.contains("courier_messages_total") && names.contains("courier_ready"),
        "could not read metric names from src/metrics.rs: {names:?}"
    );
    names
}

/// Metric names a PromQL expression refers to: identifiers outside string literals that start
/// with `courier_` or `rabbitmq_` (Grafana variables like `$queue` and durations like `5m` are
/// skipped; label names and functions have no such prefix).
fn promql_metrics(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let chars: Vec<char> = expr.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            // A string literal (label value, regex): skip it, escapes included.
            i += 1;
            while i < chars.len() && chars[i] != c {
                if chars[i] == '\\' && c != '`' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
        } else if c.is_ascii_digit() {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' || c == '$' {
            let start = i;
            i += 1;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            if word.starts_with("courier_") || word.starts_with("rabbitmq_") {
                out.push(word);
            }
        } else {
            i += 1;
        }
    }
    out
}

/// Checks that `expr` queries at least one metric and only metrics that exist.
fn check_promql(expr: &str, known: &BTreeSet<String>, what: &str) {
    let metrics = promql_metrics(expr);
    assert!(
        !metrics.is_empty(),
        "{what}: `{expr}` queries no courier_* or rabbitmq_* metric"
    );
    for m in metrics {
        if m.starts_with("rabbitmq_") {
            continue;
        }
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| m.strip_suffix(suffix))
            .filter(|base| known.contains(*base));
        assert!(
            known.contains(&m) || base.is_some(),
            "{what}: `{expr}` uses {m}, which src/metrics.rs does not define (defined: {known:?})"
        );
    }
}

#[test]
fn prometheus_config_parses_and_scrapes_every_worker_service_and_the_broker() {
    let compose = compose();
    let config_file = mounted_file(&compose, "prometheus", "/etc/prometheus/prometheus.yml");
    let text = std::fs::read_to_string(&config_file).expect("prometheus.yml readable");
    let config: Value = serde_yaml::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", config_file.display()));
    let jobs = config
        .get("scrape_configs")
        .and_then(Value::as_sequence)
        .expect("prometheus.yml has no scrape_configs");

    let mut dns_names: BTreeMap<String, u64> = BTreeMap::new();
    let mut static_targets: BTreeSet<String> = BTreeSet::new();
    let mut job_names = BTreeSet::new();
    for job in jobs {
        let job_name = str_at(job, "job_name", "scrape config");
        assert!(
            job_names.insert(job_name.to_owned()),
            "duplicate job_name {job_name}"
        );
        for sd in job
            .get("dns_sd_configs")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            assert_eq!(
                sd.get("type").and_then(Value::as_str),
                Some("A"),
                "{job_name}: compose replicas are A records"
            );
            let port = sd
                .get("port")
                .and_then(Value::as_u64)
                .unwrap_or_else(|| panic!("{job_name}: dns_sd_config without port"));
            for n in sd
                .get("names")
                .and_then(Value::as_sequence)
                .into_iter()
                .flatten()
            {
                dns_names.insert(n.as_str().unwrap_or_default().to_owned(), port);
            }
        }
        for sc in job
            .get("static_configs")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            for t in sc
                .get("targets")
                .and_then(Value::as_sequence)
                .into_iter()
                .flatten()
            {
                static_targets.insert(t.as_str().unwrap_or_default().to_owned());
            }
        }
    }
    for name in worker_services() {
        assert_eq!(
            dns_names.get(&name),
            Some(&9090),
            "prometheus.yml must discover every replica of `{name}` (dns_sd_configs, type A, port 9090)"
        );
    }
    assert_eq!(
        dns_names.get("sink"),
        Some(&8080),
        "prometheus.yml should scrape the sink"
    );
    assert!(
        static_targets.contains("rabbitmq:15692"),
        "prometheus.yml must scrape the broker at rabbitmq:15692, has {static_targets:?}"
    );
    // Every discovered name is a compose service.
    for name in dns_names.keys() {
        service(&compose, name);
    }
    // Its rule files are the alert rules compose mounts beside it.
    let rule_files: Vec<&str> = config
        .get("rule_files")
        .and_then(Value::as_sequence)
        .expect("prometheus.yml loads no rule_files")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for rule_file in rule_files {
        let target = if rule_file.starts_with('/') {
            rule_file.to_owned()
        } else {
            format!("/etc/prometheus/{rule_file}")
        };
        let path = mounted_file(&compose, "prometheus", &target);
        assert!(path.is_file(), "{} missing", path.display());
    }
}

/// Every rule of monitoring/alerts.yml as (group, rule).
fn alert_rules() -> Vec<(String, Value)> {
    let rules = yaml_file("monitoring/alerts.yml");
    let groups = rules
        .get("groups")
        .and_then(Value::as_sequence)
        .expect("alerts.yml has no groups");
    let mut out = Vec::new();
    for g in groups {
        let group = str_at(g, "name", "rule group").to_owned();
        for r in g
            .get("rules")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            out.push((group.clone(), r.clone()));
        }
    }
    out
}

#[test]
fn alert_rules_parse_and_every_rule_is_complete() {
    let known = defined_metrics();
    let rules = alert_rules();
    assert!(rules.len() >= 10, "only {} alert rules", rules.len());
    let mut names = BTreeSet::new();
    for (group, rule) in &rules {
        let alert = str_at(rule, "alert", &format!("a rule of group {group}"));
        let what = format!("alert {alert}");
        assert!(names.insert(alert.to_owned()), "duplicate alert {alert}");
        let expr = str_at(rule, "expr", &what);
        assert!(!expr.trim().is_empty(), "{what}: empty expr");
        check_promql(expr, &known, &what);
        let for_ = rule
            .get("for")
            .unwrap_or_else(|| panic!("{what} has no `for`"));
        let for_text = match for_ {
            Value::String(s) => s.clone(),
            other => panic!("{what}: `for` is not a duration string: {other:?}"),
        };
        duration(&for_text, &format!("{what} `for`"));
        let severity = rule
            .get("labels")
            .and_then(|l| l.get("severity"))
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("{what} has no labels.severity"));
        assert!(
            ["critical", "warning", "info"].contains(&severity),
            "{what}: severity {severity}"
        );
        let annotations = rule
            .get("annotations")
            .unwrap_or_else(|| panic!("{what} has no annotations"));
        for key in ["summary", "description"] {
            let text = str_at(annotations, key, &format!("{what} annotations"));
            assert!(!text.trim().is_empty(), "{what}: empty {key}");
        }
    }
    // The situations docs/operations.md promises an alert for.
    for (needle, why) in [
        ("dlq", "dead-letter queue growth"),
        ("rabbitmq_detailed_queue_consumers", "consumer absence"),
        ("courier_ready", "no ready workers"),
        ("outcome=\"retried\"", "high retry rate"),
        ("courier_reconnects_total", "reconnect storms"),
        ("courier_publish_failures_total", "publish failures"),
        ("courier_connection_blocked", "blocked connection"),
        (
            "courier_rate_limit_fallback",
            "a rate limit on its local share",
        ),
    ] {
        assert!(
            rules.iter().any(|(_, r)| r
                .get("expr")
                .and_then(Value::as_str)
                .is_some_and(|e| e.contains(needle))),
            "no alert rule for {why} (an expr mentioning {needle})"
        );
    }
}

#[test]
fn grafana_provisions_the_datasource_and_the_dashboard() {
    let compose = compose();
    let provisioning = mounted_file(&compose, "grafana", "/etc/grafana/provisioning");
    let datasources: Value = serde_yaml::from_str(
        &std::fs::read_to_string(provisioning.join("datasources/prometheus.yml"))
            .expect("datasource provisioning file"),
    )
    .expect("datasource provisioning is YAML");
    let ds = datasources
        .get("datasources")
        .and_then(Value::as_sequence)
        .and_then(|d| d.first())
        .expect("one datasource");
    assert_eq!(ds.get("type").and_then(Value::as_str), Some("prometheus"));
    let url = str_at(ds, "url", "datasource");
    assert!(
        url.contains("prometheus:9090"),
        "datasource must point at the prometheus service: {url}"
    );
    let uid = str_at(ds, "uid", "datasource").to_owned();

    let providers: Value = serde_yaml::from_str(
        &std::fs::read_to_string(provisioning.join("dashboards/courier.yml"))
            .expect("dashboard provider file"),
    )
    .expect("dashboard provider is YAML");
    let path = providers
        .get("providers")
        .and_then(Value::as_sequence)
        .and_then(|p| p.first())
        .and_then(|p| p.get("options"))
        .and_then(|o| o.get("path"))
        .and_then(Value::as_str)
        .expect("provider options.path");
    let dashboards = mounted_file(&compose, "grafana", path);
    let dashboard = dashboards.join("courier.json");
    assert!(dashboard.is_file(), "{} missing", dashboard.display());

    // Every panel's datasource is the provisioned one.
    let json: serde_json::Value =
        serde_json::from_str(&read("monitoring/grafana/dashboards/courier.json"))
            .expect("dashboard JSON parses");
    for panel in dashboard_panels(&json) {
        if let Some(ds_uid) = panel.pointer("/datasource/uid").and_then(|v| v.as_str()) {
            assert_eq!(
                ds_uid,
                uid,
                "panel {:?} uses another datasource",
                panel.get("title")
            );
        }
    }
}

/// Every panel of a dashboard, including those nested in collapsed rows.
fn dashboard_panels(dashboard: &serde_json::Value) -> Vec<&serde_json::Value> {
    fn walk<'a>(panels: &'a serde_json::Value, out: &mut Vec<&'a serde_json::Value>) {
        for p in panels.as_array().into_iter().flatten() {
            out.push(p);
            if let Some(nested) = p.get("panels") {
                walk(nested, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(
        dashboard.get("panels").expect("dashboard has panels"),
        &mut out,
    );
    out
}

#[test]
fn grafana_dashboard_queries_only_metrics_that_exist() {
    let known = defined_metrics();
    let json: serde_json::Value =
        serde_json::from_str(&read("monitoring/grafana/dashboards/courier.json"))
            .expect("monitoring/grafana/dashboards/courier.json is not valid JSON");
    assert!(
        json.get("uid").and_then(|v| v.as_str()).is_some(),
        "dashboard has no uid"
    );
    let mut ids = BTreeSet::new();
    let mut queried = BTreeSet::new();
    let mut exprs = 0;
    for panel in dashboard_panels(&json) {
        let title = panel
            .get("title")
            .and_then(|t| t.as_str())
            .unwrap_or("(untitled)");
        if let Some(id) = panel.get("id").and_then(serde_json::Value::as_u64) {
            assert!(ids.insert(id), "duplicate panel id {id} ({title})");
        }
        if panel.get("type").and_then(|t| t.as_str()) == Some("row") {
            continue;
        }
        let targets = panel
            .get("targets")
            .and_then(|t| t.as_array())
            .unwrap_or_else(|| panic!("panel {title} has no targets"));
        assert!(!targets.is_empty(), "panel {title} has no targets");
        for t in targets {
            let expr = t
                .get("expr")
                .and_then(|e| e.as_str())
                .unwrap_or_else(|| panic!("panel {title}: a target without expr"));
            check_promql(expr, &known, &format!("panel {title}"));
            queried.extend(promql_metrics(expr));
            exprs += 1;
        }
    }
    // Template variables query metrics too.
    for var in json
        .pointer("/templating/list")
        .and_then(|l| l.as_array())
        .into_iter()
        .flatten()
    {
        let query = var
            .get("definition")
            .and_then(|d| d.as_str())
            .or_else(|| var.pointer("/query/query").and_then(|q| q.as_str()))
            .unwrap_or_default();
        if !query.is_empty() {
            check_promql(query, &known, "template variable");
        }
    }
    assert!(exprs >= 15, "only {exprs} queries on the dashboard");
    // What the issue asks the dashboard to show.
    for (metric, what) in [
        ("rabbitmq_detailed_queue_messages_ready", "queue depth"),
        ("courier_messages_total", "throughput by outcome"),
        (
            "courier_handler_duration_seconds_bucket",
            "handler latency percentiles",
        ),
        ("courier_retries_total", "retries"),
        ("courier_dead_letters_total", "dead letters"),
        ("courier_in_flight", "in-flight"),
        ("courier_reconnects_total", "reconnects"),
        ("courier_ready", "ready workers"),
    ] {
        assert!(
            queried.contains(metric),
            "the dashboard shows no {what} ({metric})"
        );
    }
}

#[test]
fn promql_metric_names_skip_strings_variables_and_durations() {
    assert_eq!(
        promql_metrics(
            r#"sum by (queue) (rate(courier_messages_total{outcome="courier_fake",queue=~"$queue"}[$__rate_interval])) / rabbitmq_x[5m]"#
        ),
        vec!["courier_messages_total", "rabbitmq_x"]
    );
    let known = defined_metrics();
    check_promql(
        "histogram_quantile(0.99, sum by (le) (rate(courier_handler_duration_seconds_bucket[5m])))",
        &known,
        "histogram",
    );
    assert!(known.contains("courier_sink_requests_total"));
    let bogus = std::panic::catch_unwind(|| check_promql("courier_nope_total", &known, "bogus"));
    assert!(bogus.is_err(), "an unknown courier_ metric must be refused");
}

/// GitHub's anchor for a Markdown heading: lowercase, punctuation dropped, spaces to hyphens.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

#[test]
fn operations_doc_has_every_runbook_anchor_and_metric() {
    let doc = read("docs/operations.md");
    let anchors: BTreeSet<String> = doc
        .lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| anchor(l.trim_start_matches('#')))
        .collect();
    for (_, rule) in alert_rules() {
        let alert = rule
            .get("alert")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let url = rule
            .get("annotations")
            .and_then(|a| a.get("runbook_url"))
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("alert {alert} has no runbook_url"));
        let (file, fragment) = url
            .split_once('#')
            .unwrap_or_else(|| panic!("alert {alert}: runbook_url {url} has no #anchor"));
        assert_eq!(file, "docs/operations.md", "alert {alert}");
        assert!(
            anchors.contains(fragment),
            "alert {alert}: docs/operations.md has no heading for #{fragment} (has {anchors:?})"
        );
        assert!(
            doc.contains(alert),
            "docs/operations.md does not explain {alert}"
        );
    }
    for metric in defined_metrics() {
        assert!(
            doc.contains(&format!("`{metric}`")),
            "docs/operations.md does not explain {metric}"
        );
    }
    for link in ["(dlq.md)", "(benchmarks.md)"] {
        assert!(doc.contains(link), "docs/operations.md should link {link}");
    }
}
