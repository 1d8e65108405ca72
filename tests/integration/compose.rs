//! Checks `compose.yaml` without Docker: the services exist, start in the right order (broker
//! healthy → topology applied → sink → workers of every channel), every dependency is a declared
//! service with what its condition needs, every file it mounts exists, the broker exposes its
//! Prometheus endpoint, and the workers get time to drain on stop.

use crate::stack::*;
use serde_yaml::Value;
use std::collections::BTreeSet;
use std::time::Duration;

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

#[test]
fn compose_declares_every_service_of_the_stack() {
    let compose = compose();
    let mut want = vec![
        "rabbitmq".to_owned(),
        "topology".to_owned(),
        "sink".to_owned(),
        "prometheus".to_owned(),
        "grafana".to_owned(),
        "jaeger".to_owned(),
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

#[test]
fn compose_workers_send_their_traces_to_a_port_jaeger_listens_on() {
    let compose = compose();
    let jaeger = service(&compose, "jaeger");
    let ports = network_ports(jaeger);
    for worker in worker_services() {
        let endpoint = env_var(
            service(&compose, &worker),
            &worker,
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        );
        // `${OTEL_EXPORTER_OTLP_ENDPOINT:-http://jaeger:4318}`: the default is what runs.
        let url = endpoint
            .split(":-")
            .nth(1)
            .map_or(endpoint.as_str(), |d| d.trim_end_matches('}'));
        let rest = url
            .strip_prefix("http://jaeger:")
            .unwrap_or_else(|| panic!("{worker}: OTLP goes to {url}, not to the jaeger service"));
        assert!(
            ports.contains(rest),
            "{worker}: jaeger does not listen on {rest}: {ports:?}"
        );
        assert_eq!(
            rest, "4318",
            "{worker}: the exporter speaks OTLP over HTTP (4318)"
        );
    }
}
