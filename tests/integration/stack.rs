//! Shared helpers of the deployment-file checks (`compose`, `monitoring`, `deploy`): repository
//! files, `compose.yaml` (merged) with its services and bind mounts, strings, durations and flags.

use serde_yaml::Value;
use std::path::PathBuf;
use std::time::Duration;

/// The four channels of the default topology, each with its own worker service.
pub const CHANNELS: [&str; 4] = ["email", "sms", "push", "webhook"];

fn compose_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("compose.yaml")
}

pub fn compose() -> Value {
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

pub fn service<'a>(compose: &'a Value, name: &str) -> &'a Value {
    compose
        .get("services")
        .expect("compose.yaml has no `services`")
        .get(name)
        .unwrap_or_else(|| panic!("compose.yaml has no service `{name}`"))
}

pub fn str_at<'a>(value: &'a Value, key: &str, what: &str) -> &'a str {
    value
        .get(key)
        .unwrap_or_else(|| panic!("{what} has no `{key}`"))
        .as_str()
        .unwrap_or_else(|| panic!("{what}: `{key}` is not a string"))
}

pub fn duration(text: &str, what: &str) -> Duration {
    humantime::parse_duration(text)
        .unwrap_or_else(|e| panic!("{what}: `{text}` is not a duration: {e}"))
}

pub fn repo(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

pub fn read(rel: &str) -> String {
    let path = repo(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

pub fn worker_services() -> Vec<String> {
    CHANNELS.iter().map(|c| format!("worker-{c}")).collect()
}

/// `(source, target)` of every bind mount of a service (short and long syntax); named volumes
/// are returned with a source that does not start with `.` or `/`.
pub fn mounts(service: &Value, name: &str) -> Vec<(String, String)> {
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

pub fn is_bind(source: &str) -> bool {
    source.starts_with('.') || source.starts_with('/')
}

/// The repository file a compose bind mount (relative to compose.yaml) points at.
pub fn bind_source(source: &str) -> PathBuf {
    repo(source.trim_start_matches("./"))
}

/// The repository file mounted at `target` in `service`.
pub fn mounted_file(compose: &Value, service_name: &str, target: &str) -> PathBuf {
    let (source, _) = mounts(service(compose, service_name), service_name)
        .into_iter()
        .find(|(source, t)| t == target && is_bind(source))
        .unwrap_or_else(|| panic!("service `{service_name}` mounts nothing at {target}"));
    bind_source(&source)
}

/// The value following `flag` in a command line.
pub fn flag_value<'a>(words: &'a [String], flag: &str) -> Option<&'a str> {
    words
        .iter()
        .position(|w| w == flag)
        .and_then(|i| words.get(i + 1))
        .map(String::as_str)
}
