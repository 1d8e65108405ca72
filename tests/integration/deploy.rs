//! Checks `deploy/` without a cluster: every Kubernetes document parses, the workers' probes,
//! grace period, resources and secrets are right, the topology Job runs once, and KEDA scales
//! on the management API (HTTP mode), which counts unacked messages.

use crate::stack::*;
use serde::Deserialize;
use serde_yaml::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

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
