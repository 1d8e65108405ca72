//! Checks the deployment files without Docker or a cluster.
//!
//! `compose.yaml`: the services exist, start in the right order (broker healthy → topology
//! applied → sink → workers of every channel), every dependency is a declared service with what
//! its condition needs, every file it mounts exists, and the workers get time to drain on stop.
//! `monitoring/`: the Prometheus config scrapes every worker service and the broker, every alert
//! rule is complete, and the Grafana dashboard (like the rules) only queries metrics that
//! `src/metrics.rs` (or the sink, `src/cli/sink/server.rs`) defines, or RabbitMQ's own
//! `rabbitmq_*`.
//! `deploy/`: every Kubernetes document parses, the workers' probes, grace period and secrets
//! are right, and KEDA scales on the management API (HTTP mode), which counts unacked messages.

use serde::Deserialize;
use serde_yaml::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

/// The four channels of the default topology, each with its own worker service.
const CHANNELS: [&str; 4] = ["email", "sms", "push", "webhook"];

fn compose_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("compose.yaml")
}

fn compose() -> Value {
    let path = compose_path();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut value: Value = serde_yaml::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()));
    // The worker services share their settings through `<<: *worker`, as Docker Compose reads it.
    value
        .apply_merge()
        .unwrap_or_else(|e| panic!("{}: bad merge key: {e}", path.display()));
    value
}

fn service<'a>(compose: &'a Value, name: &str) -> &'a Value {
    compose
        .get("services")
        .expect("compose.yaml has no `services`")
        .get(name)
        .unwrap_or_else(|| panic!("compose.yaml has no service `{name}`"))
}

fn str_at<'a>(value: &'a Value, key: &str, what: &str) -> &'a str {
    value
        .get(key)
        .unwrap_or_else(|| panic!("{what} has no `{key}`"))
        .as_str()
        .unwrap_or_else(|| panic!("{what}: `{key}` is not a string"))
}

/// `command:` as a list of words, whether written as a string or a list.
fn command_words(service: &Value, name: &str) -> Vec<String> {
    match service.get("command") {
        Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
        Some(Value::Sequence(items)) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                other => panic!("service `{name}`: unexpected command item {other:?}"),
            })
            .collect(),
        other => panic!("service `{name}` has no usable `command` (found {other:?})"),
    }
}

/// `environment:` value of `key`, whether written as a map or as a list of `K=V`.
fn env_var(service: &Value, name: &str, key: &str) -> String {
    let env = service
        .get("environment")
        .unwrap_or_else(|| panic!("service `{name}` has no `environment`"));
    let found = match env {
        Value::Mapping(_) => env.get(key).map(|v| match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            other => panic!("service `{name}`: env {key} is not a scalar: {other:?}"),
        }),
        Value::Sequence(items) => items.iter().find_map(|item| {
            item.as_str()
                .and_then(|s| s.strip_prefix(key))
                .and_then(|rest| rest.strip_prefix('='))
                .map(str::to_owned)
        }),
        other => panic!("service `{name}`: `environment` is neither a map nor a list: {other:?}"),
    };
    found.unwrap_or_else(|| panic!("service `{name}` does not set {key}"))
}

/// The `condition` of `service` depending on `dependency` (long `depends_on` syntax).
fn depends_on_condition<'a>(service: &'a Value, name: &str, dependency: &str) -> &'a str {
    let dep = service
        .get("depends_on")
        .unwrap_or_else(|| panic!("service `{name}` has no `depends_on`"))
        .get(dependency)
        .unwrap_or_else(|| {
            panic!("service `{name}` must depend on `{dependency}` (long syntax, with a condition)")
        });
    str_at(
        dep,
        "condition",
        &format!("`{name}` depends_on `{dependency}`"),
    )
}

fn duration(text: &str, what: &str) -> Duration {
    humantime::parse_duration(text)
        .unwrap_or_else(|e| panic!("{what}: `{text}` is not a duration: {e}"))
}

#[test]
fn compose_declares_broker_topology_and_workers() {
    let compose = compose();
    for name in ["rabbitmq", "topology", "worker-email"] {
        service(&compose, name);
    }
}

#[test]
fn compose_rabbitmq_is_3x_with_management_and_healthcheck() {
    let compose = compose();
    let rabbitmq = service(&compose, "rabbitmq");
    let image = str_at(rabbitmq, "image", "service `rabbitmq`");
    assert!(
        image.starts_with("rabbitmq:3"),
        "rabbitmq image `{image}` should be a RabbitMQ 3.x tag"
    );
    assert!(
        image.contains("management"),
        "rabbitmq image `{image}` should include the management plugin (tests and `topology check --management-url` use it)"
    );
    let test = rabbitmq
        .get("healthcheck")
        .expect("service `rabbitmq` needs a healthcheck (others wait for service_healthy)")
        .get("test")
        .expect("rabbitmq healthcheck has no `test`");
    let non_empty = match test {
        Value::String(s) => !s.trim().is_empty(),
        Value::Sequence(items) => !items.is_empty(),
        _ => false,
    };
    assert!(non_empty, "rabbitmq healthcheck `test` is empty: {test:?}");
}

#[test]
fn compose_topology_is_applied_once_the_broker_is_healthy() {
    let compose = compose();
    let topology = service(&compose, "topology");
    assert_eq!(
        depends_on_condition(topology, "topology", "rabbitmq"),
        "service_healthy",
        "topology must wait for a healthy broker"
    );
    let words = command_words(topology, "topology");
    assert!(
        words.iter().any(|w| w == "topology") && words.iter().any(|w| w == "apply"),
        "topology service should run `courier topology apply`, runs {words:?}"
    );
}

#[test]
fn compose_workers_start_after_topology_and_are_scaled() {
    let compose = compose();
    let worker = service(&compose, "worker-email");
    assert_eq!(
        depends_on_condition(worker, "worker-email", "topology"),
        "service_completed_successfully",
        "workers must start only once the topology is applied"
    );
    let replicas = worker
        .get("deploy")
        .expect("service `worker-email` has no `deploy`")
        .get("replicas")
        .expect("service `worker-email` has no `deploy.replicas`")
        .as_u64()
        .expect("`deploy.replicas` is not a non-negative integer");
    assert!(
        replicas >= 2,
        "a fleet needs at least 2 competing workers, has {replicas}"
    );
    let words = command_words(worker, "worker-email");
    assert!(
        words.iter().any(|w| w == "work") && words.iter().any(|w| w == "--queue"),
        "worker should run `courier work --queue ...`, runs {words:?}"
    );
}

#[test]
fn compose_stop_grace_period_outlasts_the_worker_shutdown_timeout() {
    let compose = compose();
    let worker = service(&compose, "worker-email");
    let grace = duration(
        str_at(worker, "stop_grace_period", "service `worker-email`"),
        "worker-email stop_grace_period",
    );
    let shutdown = duration(
        &env_var(worker, "worker-email", "COURIER_SHUTDOWN_TIMEOUT"),
        "worker-email COURIER_SHUTDOWN_TIMEOUT",
    );
    assert!(
        grace > shutdown,
        "stop_grace_period ({grace:?}) must be longer than COURIER_SHUTDOWN_TIMEOUT ({shutdown:?}), \
         or Docker kills workers that are still draining"
    );
}

// ---------------------------------------------------------------------------------------------
// Shared helpers for the whole stack: repository files, YAML documents, PromQL metric names.
// ---------------------------------------------------------------------------------------------

fn repo(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(rel: &str) -> String {
    let path = repo(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn yaml_file(rel: &str) -> Value {
    serde_yaml::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel} is not valid YAML: {e}"))
}

/// Every document of a multi-document YAML file (empty documents skipped).
fn yaml_documents(rel: &str) -> Vec<Value> {
    let text = read(rel);
    serde_yaml::Deserializer::from_str(&text)
        .enumerate()
        .map(|(i, doc)| {
            Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{rel}: document {} is not valid YAML: {e}", i + 1))
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn worker_services() -> Vec<String> {
    CHANNELS.iter().map(|c| format!("worker-{c}")).collect()
}

fn services(compose: &Value) -> &serde_yaml::Mapping {
    compose
        .get("services")
        .and_then(Value::as_mapping)
        .expect("compose.yaml has no `services` mapping")
}

/// Names of the dependencies of a service, whether `depends_on` is a list or a mapping.
fn dependencies(service: &Value) -> Vec<String> {
    match service.get("depends_on") {
        None => Vec::new(),
        Some(Value::Sequence(items)) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        Some(Value::Mapping(m)) => m
            .keys()
            .filter_map(|k| k.as_str().map(str::to_owned))
            .collect(),
        Some(other) => panic!("`depends_on` is neither a list nor a mapping: {other:?}"),
    }
}

/// `(source, target)` of every bind mount of a service (short and long syntax); named volumes
/// are returned with a source that does not start with `.` or `/`.
fn mounts(service: &Value, name: &str) -> Vec<(String, String)> {
    let Some(volumes) = service.get("volumes") else {
        return Vec::new();
    };
    volumes
        .as_sequence()
        .unwrap_or_else(|| panic!("service `{name}`: `volumes` is not a list"))
        .iter()
        .map(|v| match v {
            Value::String(s) => {
                let mut parts = s.splitn(3, ':');
                let source = parts.next().unwrap_or_default().to_owned();
                let target = parts
                    .next()
                    .unwrap_or_else(|| panic!("service `{name}`: volume `{s}` has no target"))
                    .to_owned();
                (source, target)
            }
            Value::Mapping(_) => (
                str_at(v, "source", &format!("service `{name}` volume")).to_owned(),
                str_at(v, "target", &format!("service `{name}` volume")).to_owned(),
            ),
            other => panic!("service `{name}`: unexpected volume {other:?}"),
        })
        .collect()
}

fn is_bind(source: &str) -> bool {
    source.starts_with('.') || source.starts_with('/')
}

/// The repository file a compose bind mount (relative to compose.yaml) points at.
fn bind_source(source: &str) -> PathBuf {
    repo(source.trim_start_matches("./"))
}

/// The repository file mounted at `target` in `service`.
fn mounted_file(compose: &Value, service_name: &str, target: &str) -> PathBuf {
    let (source, _) = mounts(service(compose, service_name), service_name)
        .into_iter()
        .find(|(source, t)| t == target && is_bind(source))
        .unwrap_or_else(|| panic!("service `{service_name}` mounts nothing at {target}"));
    bind_source(&source)
}

/// Ports a service makes reachable inside the compose network (`expose` and `ports`).
fn network_ports(service: &Value) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for key in ["expose", "ports"] {
        for item in service
            .get(key)
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            let text = match item {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Mapping(_) => item
                    .get("target")
                    .map(|t| match t {
                        Value::Number(n) => n.to_string(),
                        Value::String(s) => s.clone(),
                        _ => String::new(),
                    })
                    .unwrap_or_default(),
                _ => continue,
            };
            // "15692", "5672:5672", "127.0.0.1:9090:9090/tcp": the container port is last.
            let container = text.rsplit(':').next().unwrap_or_default();
            out.insert(container.split('/').next().unwrap_or_default().to_owned());
        }
    }
    out
}

/// The value following `flag` in a command line.
fn flag_value<'a>(words: &'a [String], flag: &str) -> Option<&'a str> {
    words
        .iter()
        .position(|w| w == flag)
        .and_then(|i| words.get(i + 1))
        .map(String::as_str)
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

// ---------------------------------------------------------------------------------------------
// compose.yaml: services, dependencies, mounts, the fleet of every channel
// ---------------------------------------------------------------------------------------------

#[test]
fn compose_declares_every_service_of_the_stack() {
    let compose = compose();
    let mut want = vec![
        "rabbitmq".to_owned(),
        "topology".to_owned(),
        "sink".to_owned(),
        "prometheus".to_owned(),
        "grafana".to_owned(),
    ];
    want.extend(worker_services());
    for name in &want {
        service(&compose, name);
    }
}

#[test]
fn compose_dependencies_exist_and_their_conditions_can_be_met() {
    let compose = compose();
    let all = services(&compose);
    let names: BTreeSet<String> = all
        .keys()
        .filter_map(|k| k.as_str().map(str::to_owned))
        .collect();
    for (key, svc) in all {
        let name = key.as_str().unwrap_or_default();
        for dep in dependencies(svc) {
            assert!(
                names.contains(&dep),
                "service `{name}` depends on `{dep}`, which compose.yaml does not declare"
            );
            let Some(condition) = svc
                .get("depends_on")
                .and_then(|d| d.get(dep.as_str()))
                .and_then(|d| d.get("condition"))
                .and_then(Value::as_str)
            else {
                continue;
            };
            let dependency = service(&compose, &dep);
            match condition {
                "service_healthy" => assert!(
                    dependency.get("healthcheck").is_some(),
                    "`{name}` waits for `{dep}` to be healthy, but `{dep}` has no healthcheck"
                ),
                "service_completed_successfully" => assert_eq!(
                    dependency.get("restart").and_then(Value::as_str),
                    Some("no"),
                    "`{name}` waits for `{dep}` to complete: `{dep}` must be one-shot (restart: \"no\")"
                ),
                "service_started" => {}
                other => panic!("`{name}` depends on `{dep}` with unknown condition {other}"),
            }
        }
    }
    // No cycles: every service can be started (depth-first walk with a path stack).
    fn visit(compose: &Value, name: &str, path: &mut Vec<String>, done: &mut BTreeSet<String>) {
        if done.contains(name) {
            return;
        }
        assert!(
            !path.iter().any(|p| p == name),
            "dependency cycle: {} -> {name}",
            path.join(" -> ")
        );
        path.push(name.to_owned());
        for dep in dependencies(service(compose, name)) {
            visit(compose, &dep, path, done);
        }
        path.pop();
        done.insert(name.to_owned());
    }
    let mut done = BTreeSet::new();
    for name in &names {
        visit(&compose, name, &mut Vec::new(), &mut done);
    }
}

#[test]
fn compose_mounts_only_files_that_exist_and_declares_its_volumes() {
    let compose = compose();
    let declared: BTreeSet<String> = compose
        .get("volumes")
        .and_then(Value::as_mapping)
        .map(|m| {
            m.keys()
                .filter_map(|k| k.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let mut binds = 0;
    for (key, svc) in services(&compose) {
        let name = key.as_str().unwrap_or_default();
        for (source, target) in mounts(svc, name) {
            if is_bind(&source) {
                let path = bind_source(&source);
                assert!(
                    path.exists(),
                    "service `{name}` mounts {source} at {target}, but {} does not exist",
                    path.display()
                );
                binds += 1;
            } else {
                assert!(
                    declared.contains(&source),
                    "service `{name}` uses volume `{source}`, not declared under top-level `volumes`"
                );
            }
        }
        if let Some(build) = svc.get("build") {
            let context = match build {
                Value::String(s) => s.clone(),
                _ => str_at(build, "context", &format!("service `{name}` build")).to_owned(),
            };
            assert!(
                bind_source(&context).join("Dockerfile").is_file(),
                "service `{name}` builds {context}, which has no Dockerfile"
            );
        }
    }
    assert!(
        binds >= 6,
        "expected the monitoring files to be mounted, found {binds} bind mounts"
    );
}

#[test]
fn compose_rabbitmq_enables_prometheus_and_exposes_15692() {
    let compose = compose();
    let rabbitmq = service(&compose, "rabbitmq");
    let image = str_at(rabbitmq, "image", "service `rabbitmq`");
    assert!(
        image.starts_with("rabbitmq:3.13"),
        "the stack runs RabbitMQ 3.13, has `{image}`"
    );
    let plugins_file = mounted_file(&compose, "rabbitmq", "/etc/rabbitmq/enabled_plugins");
    let plugins = std::fs::read_to_string(&plugins_file).expect("enabled_plugins readable");
    // Erlang term syntax: `[a,b].`
    let trimmed = plugins.trim();
    assert!(
        trimmed.starts_with('[') && trimmed.ends_with("]."),
        "{} is not an Erlang list term `[...].`: {trimmed}",
        plugins_file.display()
    );
    for plugin in ["rabbitmq_management", "rabbitmq_prometheus"] {
        assert!(
            trimmed
                .trim_start_matches('[')
                .trim_end_matches("].")
                .split(',')
                .any(|p| p.trim() == plugin),
            "{} does not enable {plugin}",
            plugins_file.display()
        );
    }
    assert!(
        network_ports(rabbitmq).contains("15692"),
        "rabbitmq must expose 15692 (rabbitmq_prometheus) inside the network"
    );
}

#[test]
fn compose_runs_a_scaled_worker_fleet_for_every_channel() {
    let compose = compose();
    let topology = courier::topology::Topology::load(&repo("topology/notifications.toml"), "")
        .expect("the default topology loads");
    for name in worker_services() {
        let worker = service(&compose, &name);
        let words = command_words(worker, &name);
        assert_eq!(
            words.first().map(String::as_str),
            Some("work"),
            "`{name}` runs {words:?}"
        );
        let queue = flag_value(&words, "--queue")
            .unwrap_or_else(|| panic!("`{name}` has no --queue: {words:?}"));
        let channel = name.trim_start_matches("worker-");
        assert_eq!(queue, format!("notifications.{channel}"), "`{name}`");
        assert!(
            topology.work_queue(queue).is_some(),
            "`{name}` consumes {queue}, not a work queue of topology/notifications.toml"
        );
        assert_eq!(
            flag_value(&words, "--metrics-addr"),
            Some("0.0.0.0:9090"),
            "`{name}` must serve /metrics on 0.0.0.0:9090 for Prometheus: {words:?}"
        );
        assert!(
            network_ports(worker).contains("9090"),
            "`{name}` must expose 9090"
        );
        let replicas = worker
            .get("deploy")
            .and_then(|d| d.get("replicas"))
            .and_then(Value::as_u64)
            .unwrap_or_else(|| panic!("`{name}` has no deploy.replicas"));
        assert!(replicas >= 2, "`{name}`: {replicas} replica(s), want ≥ 2");
        assert_eq!(
            depends_on_condition(worker, &name, "topology"),
            "service_completed_successfully"
        );
        assert!(
            worker.get("healthcheck").is_some(),
            "`{name}` has no healthcheck"
        );
        let grace = duration(
            str_at(worker, "stop_grace_period", &format!("service `{name}`")),
            "stop_grace_period",
        );
        let shutdown = duration(
            &env_var(worker, &name, "COURIER_SHUTDOWN_TIMEOUT"),
            "COURIER_SHUTDOWN_TIMEOUT",
        );
        assert!(
            grace > shutdown,
            "`{name}`: stop_grace_period {grace:?} must exceed COURIER_SHUTDOWN_TIMEOUT {shutdown:?}"
        );
        let handler_timeout = duration(
            &env_var(worker, &name, "COURIER_HANDLER_TIMEOUT"),
            "COURIER_HANDLER_TIMEOUT",
        );
        assert!(
            handler_timeout < Duration::from_secs(30 * 60),
            "`{name}`: the handler timeout must stay below RabbitMQ's consumer_timeout"
        );
    }
}

#[test]
fn compose_workers_deliver_to_the_sink_service_by_default() {
    let compose = compose();
    let sink = service(&compose, "sink");
    let words = command_words(sink, "sink");
    assert_eq!(
        words.first().map(String::as_str),
        Some("sink"),
        "runs {words:?}"
    );
    let addr = flag_value(&words, "--addr").expect("sink has --addr");
    assert_eq!(
        addr, "0.0.0.0:8080",
        "the sink must listen on all interfaces"
    );
    assert!(network_ports(sink).contains("8080"));
    assert!(sink.get("healthcheck").is_some(), "sink has no healthcheck");
    for name in worker_services() {
        let endpoint = env_var(service(&compose, &name), &name, "COURIER_ENDPOINT");
        assert!(
            endpoint.contains("http://sink:8080/deliver"),
            "`{name}` should default to the sink, has {endpoint}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// monitoring/: Prometheus, alert rules, Grafana
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// deploy/: Kubernetes manifests
// ---------------------------------------------------------------------------------------------

/// Every document of every deploy/*.yaml, with its file.
fn deploy_documents() -> Vec<(String, Value)> {
    let dir = repo("deploy");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "deploy/ has no YAML files");
    let mut out = Vec::new();
    for path in files {
        let rel = path
            .strip_prefix(repo(""))
            .unwrap_or(&path)
            .display()
            .to_string();
        for doc in yaml_documents(&rel) {
            out.push((rel.clone(), doc));
        }
    }
    out
}

fn kind_of(doc: &Value) -> &str {
    doc.get("kind").and_then(Value::as_str).unwrap_or_default()
}

fn name_of(doc: &Value) -> &str {
    doc.get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn of_kind<'a>(docs: &'a [(String, Value)], kind: &str) -> Vec<&'a Value> {
    docs.iter()
        .filter(|(_, d)| kind_of(d) == kind)
        .map(|(_, d)| d)
        .collect()
}

/// The first container of a pod-template owner (Deployment, Job).
fn container(doc: &Value) -> &Value {
    doc.get("spec")
        .and_then(|s| s.get("template"))
        .and_then(|t| t.get("spec"))
        .and_then(|s| s.get("containers"))
        .and_then(Value::as_sequence)
        .and_then(|c| c.first())
        .unwrap_or_else(|| panic!("{} {} has no container", kind_of(doc), name_of(doc)))
}

fn container_args(doc: &Value) -> Vec<String> {
    container(doc)
        .get("args")
        .or_else(|| container(doc).get("command"))
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

/// A container env var: Ok(literal value) or Err(its `valueFrom`).
fn container_env<'a>(doc: &'a Value, key: &str) -> Option<Result<&'a str, &'a Value>> {
    container(doc)
        .get("env")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
        .find(|e| e.get("name").and_then(Value::as_str) == Some(key))
        .map(|e| match e.get("value").and_then(Value::as_str) {
            Some(v) => Ok(v),
            None => Err(e.get("valueFrom").unwrap_or(&Value::Null)),
        })
}

#[test]
fn deploy_documents_all_parse_and_name_their_kind() {
    let docs = deploy_documents();
    for (file, doc) in &docs {
        assert!(
            doc.get("apiVersion").and_then(Value::as_str).is_some(),
            "{file}: a document without apiVersion"
        );
        assert!(!kind_of(doc).is_empty(), "{file}: a document without kind");
        if kind_of(doc) != "Kustomization" {
            assert!(
                !name_of(doc).is_empty(),
                "{file}: a {} without metadata.name",
                kind_of(doc)
            );
        }
    }
    for kind in ["Deployment", "Job", "ScaledObject", "TriggerAuthentication"] {
        assert!(!of_kind(&docs, kind).is_empty(), "deploy/ has no {kind}");
    }
    // kustomization.yaml lists only files that exist.
    for k in of_kind(&docs, "Kustomization") {
        for r in k
            .get("resources")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            let rel = r.as_str().unwrap_or_default();
            assert!(
                repo("deploy").join(rel).is_file(),
                "kustomization.yaml lists {rel}, which does not exist"
            );
        }
    }
}

#[test]
fn deploy_workers_have_probes_grace_period_resources_and_secret_url() {
    let docs = deploy_documents();
    let deployments = of_kind(&docs, "Deployment");
    let topology = courier::topology::Topology::load(&repo("topology/notifications.toml"), "")
        .expect("the default topology loads");
    let mut queues = BTreeSet::new();
    for d in &deployments {
        let name = name_of(d);
        let args = container_args(d);
        assert_eq!(
            args.first().map(String::as_str),
            Some("work"),
            "{name}: {args:?}"
        );
        let queue = flag_value(&args, "--queue").unwrap_or_else(|| panic!("{name}: no --queue"));
        assert!(
            topology.work_queue(queue).is_some(),
            "{name}: {queue} is no work queue"
        );
        queues.insert(queue.to_owned());
        let addr = flag_value(&args, "--metrics-addr")
            .unwrap_or_else(|| panic!("{name}: no --metrics-addr, so no probes can work"));
        let port: u64 = addr
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("{name}: bad --metrics-addr {addr}"));
        let c = container(d);
        // The named port the probes use is the metrics port.
        let named: BTreeMap<String, u64> = c
            .get("ports")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
            .filter_map(|p| {
                Some((
                    p.get("name")?.as_str()?.to_owned(),
                    p.get("containerPort")?.as_u64()?,
                ))
            })
            .collect();
        for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
            let get = c
                .get(probe)
                .and_then(|p| p.get("httpGet"))
                .unwrap_or_else(|| panic!("{name}: no {probe}.httpGet"));
            assert_eq!(
                get.get("path").and_then(Value::as_str),
                Some(path),
                "{name}: {probe} must GET {path}"
            );
            let probe_port = match get.get("port") {
                Some(Value::Number(n)) => n.as_u64(),
                Some(Value::String(s)) => named.get(s).copied(),
                _ => None,
            };
            assert_eq!(
                probe_port,
                Some(port),
                "{name}: {probe} must use the metrics port"
            );
        }
        let grace = d
            .pointer_like(&["spec", "template", "spec", "terminationGracePeriodSeconds"])
            .and_then(Value::as_u64)
            .unwrap_or_else(|| panic!("{name}: no terminationGracePeriodSeconds"));
        let shutdown = match container_env(d, "COURIER_SHUTDOWN_TIMEOUT") {
            Some(Ok(v)) => duration(v, "COURIER_SHUTDOWN_TIMEOUT"),
            _ => Duration::from_secs(30), // the worker's default
        };
        assert!(
            Duration::from_secs(grace) > shutdown,
            "{name}: terminationGracePeriodSeconds {grace}s must exceed COURIER_SHUTDOWN_TIMEOUT {shutdown:?}"
        );
        if let Some(Ok(h)) = container_env(d, "COURIER_HANDLER_TIMEOUT") {
            assert!(duration(h, "COURIER_HANDLER_TIMEOUT") < Duration::from_secs(30 * 60));
        }
        let resources = c
            .get("resources")
            .unwrap_or_else(|| panic!("{name}: no resources"));
        assert!(
            resources
                .get("requests")
                .and_then(|r| r.get("memory"))
                .is_some()
                && resources
                    .get("requests")
                    .and_then(|r| r.get("cpu"))
                    .is_some(),
            "{name}: resources.requests needs cpu and memory"
        );
        assert!(
            resources
                .get("limits")
                .and_then(|r| r.get("memory"))
                .is_some(),
            "{name}: resources.limits.memory missing"
        );
        match container_env(d, "AMQP_URL") {
            Some(Err(from)) => assert!(
                from.get("secretKeyRef").is_some(),
                "{name}: AMQP_URL must come from a Secret"
            ),
            Some(Ok(_)) => {
                panic!("{name}: AMQP_URL is written in the manifest; take it from a Secret")
            }
            None => panic!("{name}: no AMQP_URL"),
        }
        assert!(
            d.pointer_like(&["spec", "replicas"]).is_none(),
            "{name}: spec.replicas would fight KEDA on every apply"
        );
    }
    let want: BTreeSet<String> = CHANNELS
        .iter()
        .map(|c| format!("notifications.{c}"))
        .collect();
    assert_eq!(queues, want, "one worker Deployment per channel");
}

#[test]
fn deploy_topology_job_applies_the_topology_once() {
    let docs = deploy_documents();
    let jobs = of_kind(&docs, "Job");
    let job = jobs
        .iter()
        .find(|j| container_args(j).starts_with(&["topology".to_owned(), "apply".to_owned()]))
        .expect("a Job running `courier topology apply`");
    let restart = job
        .pointer_like(&["spec", "template", "spec", "restartPolicy"])
        .and_then(Value::as_str);
    assert!(
        matches!(restart, Some("OnFailure" | "Never")),
        "a Job needs restartPolicy OnFailure or Never, has {restart:?}"
    );
    assert!(
        matches!(container_env(job, "AMQP_URL"), Some(Err(from)) if from.get("secretKeyRef").is_some()),
        "the topology Job must take AMQP_URL from a Secret"
    );
}

#[test]
fn deploy_keda_scales_every_worker_on_the_management_api() {
    let docs = deploy_documents();
    let deployments: BTreeMap<&str, &Value> = of_kind(&docs, "Deployment")
        .into_iter()
        .map(|d| (name_of(d), d))
        .collect();
    let auths: BTreeSet<&str> = of_kind(&docs, "TriggerAuthentication")
        .into_iter()
        .map(name_of)
        .collect();
    for a in of_kind(&docs, "TriggerAuthentication") {
        let refs = a
            .pointer_like(&["spec", "secretTargetRef"])
            .and_then(Value::as_sequence)
            .unwrap_or_else(|| {
                panic!(
                    "TriggerAuthentication {} has no secretTargetRef",
                    name_of(a)
                )
            });
        assert!(
            refs.iter()
                .any(|r| r.get("parameter").and_then(Value::as_str) == Some("host")),
            "TriggerAuthentication {} must provide `host` (the management URL)",
            name_of(a)
        );
    }
    let mut scaled = BTreeSet::new();
    for so in of_kind(&docs, "ScaledObject") {
        let name = name_of(so);
        let target = so
            .pointer_like(&["spec", "scaleTargetRef", "name"])
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("ScaledObject {name}: no scaleTargetRef.name"));
        let deployment = deployments.get(target).unwrap_or_else(|| {
            panic!("ScaledObject {name} targets {target}, not a Deployment of deploy/")
        });
        scaled.insert(target);
        let min = so
            .pointer_like(&["spec", "minReplicaCount"])
            .and_then(Value::as_u64)
            .unwrap_or(0);
        assert!(
            min >= 1,
            "ScaledObject {name}: keep at least one worker (minReplicaCount)"
        );
        let triggers = so
            .pointer_like(&["spec", "triggers"])
            .and_then(Value::as_sequence)
            .unwrap_or_else(|| panic!("ScaledObject {name}: no triggers"));
        let rabbit: Vec<&Value> = triggers
            .iter()
            .filter(|t| t.get("type").and_then(Value::as_str) == Some("rabbitmq"))
            .collect();
        assert!(
            !rabbit.is_empty(),
            "ScaledObject {name}: no rabbitmq trigger"
        );
        for t in rabbit {
            let meta = t.get("metadata").expect("trigger metadata");
            let get = |k: &str| meta.get(k).and_then(Value::as_str);
            assert_eq!(
                get("protocol"),
                Some("http"),
                "ScaledObject {name}: over AMQP the scaler counts only ready messages and \
                 scales down busy pods (keda #638, #6719); use protocol: http"
            );
            assert_eq!(get("mode"), Some("QueueLength"), "ScaledObject {name}");
            assert!(
                matches!(get("excludeUnacknowledged"), None | Some("false")),
                "ScaledObject {name}: excludeUnacknowledged must stay false (count unacked work)"
            );
            let value: f64 = get("value")
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("ScaledObject {name}: `value` must be a number string"));
            assert!(value > 0.0);
            let queue = get("queueName").unwrap_or_default();
            let args = container_args(deployment);
            assert_eq!(
                flag_value(&args, "--queue"),
                Some(queue),
                "ScaledObject {name} watches {queue} but {target} consumes another queue"
            );
            let auth = t
                .get("authenticationRef")
                .and_then(|a| a.get("name"))
                .and_then(Value::as_str)
                .unwrap_or_else(|| panic!("ScaledObject {name}: no authenticationRef"));
            assert!(
                auths.contains(auth),
                "ScaledObject {name} uses TriggerAuthentication {auth}, not in deploy/"
            );
        }
    }
    let all: BTreeSet<&str> = deployments.keys().copied().collect();
    assert_eq!(scaled, all, "every worker Deployment has a ScaledObject");
}

/// `Value::pointer`-like access by keys for YAML.
trait PointerLike {
    fn pointer_like(&self, keys: &[&str]) -> Option<&Value>;
}

impl PointerLike for Value {
    fn pointer_like(&self, keys: &[&str]) -> Option<&Value> {
        keys.iter().try_fold(self, |v, k| v.get(*k))
    }
}

#[test]
fn deploy_pods_advertise_the_metrics_port_for_scraping() {
    // Prometheus annotations on the pods (for annotation-based scraping) match --metrics-addr.
    let docs = deploy_documents();
    for d in of_kind(&docs, "Deployment") {
        let annotations = d
            .pointer_like(&["spec", "template", "metadata", "annotations"])
            .unwrap_or_else(|| panic!("{}: no pod annotations", name_of(d)));
        assert_eq!(
            annotations
                .get("prometheus.io/port")
                .and_then(Value::as_str),
            Some("9090"),
            "{}",
            name_of(d)
        );
        assert_eq!(
            annotations
                .get("prometheus.io/path")
                .and_then(Value::as_str),
            Some("/metrics")
        );
    }
}

// ---------------------------------------------------------------------------------------------
// docs/operations.md: what the alerts and the other files point at exists
// ---------------------------------------------------------------------------------------------

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
