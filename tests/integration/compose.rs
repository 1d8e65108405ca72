//! Checks `compose.yaml` without Docker: the services exist, start in the right order
//! (broker healthy → topology applied → workers), and the workers get time to drain on stop.

use serde_yaml::Value;
use std::path::PathBuf;
use std::time::Duration;

fn compose_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("compose.yaml")
}

fn compose() -> Value {
    let path = compose_path();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_yaml::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()))
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
