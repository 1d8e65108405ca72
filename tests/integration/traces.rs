//! Traces: a real OTLP/HTTP receiver (protobuf decoded with `opentelemetry-proto`), the real
//! `courier work` binary exporting to it, a real endpoint, and the real `courier-dlq replay`.

use crate::util::*;
use axum::body::Bytes;
use lapin::types::{AMQPValue, FieldTable, LongString};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message as _;
use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One span as the receiver decoded it.
#[derive(Debug, Clone)]
struct Span {
    trace_id: String,
    span_id: String,
    parent: String,
    name: String,
    kind: i32,
    attributes: HashMap<String, String>,
    /// Trace ids of its links.
    links: Vec<String>,
}

impl Span {
    fn attr(&self, k: &str) -> &str {
        self.attributes.get(k).map_or("", String::as_str)
    }
}

/// An OTLP/HTTP receiver on a free local port: `POST /v1/traces` with a protobuf body.
#[derive(Clone)]
struct Receiver {
    url: String,
    spans: Arc<Mutex<Vec<Span>>>,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

async fn receive(
    axum::extract::State(spans): axum::extract::State<Arc<Mutex<Vec<Span>>>>,
    body: Bytes,
) -> ([(&'static str, &'static str); 1], Vec<u8>) {
    let req = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf request");
    let mut got = Vec::new();
    for rs in req.resource_spans {
        for ss in rs.scope_spans {
            for s in ss.spans {
                let attributes = s
                    .attributes
                    .iter()
                    .map(|kv| {
                        let v = match kv.value.as_ref().and_then(|v| v.value.clone()) {
                            Some(Value::StringValue(s)) => s,
                            Some(Value::IntValue(i)) => i.to_string(),
                            Some(Value::BoolValue(b)) => b.to_string(),
                            Some(Value::DoubleValue(d)) => d.to_string(),
                            other => format!("{other:?}"),
                        };
                        (kv.key.clone(), v)
                    })
                    .collect();
                got.push(Span {
                    trace_id: hex(&s.trace_id),
                    span_id: hex(&s.span_id),
                    parent: hex(&s.parent_span_id),
                    name: s.name.clone(),
                    kind: s.kind,
                    attributes,
                    links: s.links.iter().map(|l| hex(&l.trace_id)).collect(),
                });
            }
        }
    }
    spans.lock().expect("lock").extend(got);
    (
        [("content-type", "application/x-protobuf")],
        ExportTraceServiceResponse::default().encode_to_vec(),
    )
}

impl Receiver {
    async fn start() -> Self {
        let spans = Arc::new(Mutex::new(Vec::new()));
        let app = axum::Router::new()
            .route("/v1/traces", axum::routing::post(receive))
            .with_state(spans.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            url: format!("http://{addr}"),
            spans,
        }
    }

    fn of_trace(&self, trace_id: &str) -> Vec<Span> {
        self.spans
            .lock()
            .expect("lock")
            .iter()
            .filter(|s| s.trace_id == trace_id)
            .cloned()
            .collect()
    }

    fn all(&self) -> Vec<Span> {
        self.spans.lock().expect("lock").clone()
    }

    async fn wait_for(&self, what: &str, mut done: impl FnMut(&[Span]) -> bool) -> Vec<Span> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let spans = self.all();
            if done(&spans) {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within 20s; received {spans:#?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// `courier work` on `queue`, exporting to `receiver`, delivering to `endpoint`.
fn worker(t: &TestTopology, receiver: &Receiver, endpoint: &str) -> DeadlineChild {
    Command::new(env!("CARGO_BIN_EXE_courier"))
        .args([
            "work",
            "--queue",
            "notifications.email",
            "--endpoint",
            endpoint,
            "--otlp-endpoint",
            &receiver.url,
        ])
        .env("AMQP_URL", amqp_url())
        .env("COURIER_PREFIX", &t.prefix)
        .env("COURIER_TOPOLOGY", &t.file)
        .env("OTEL_SERVICE_NAME", "courier-test")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn_within(CHILD_DEADLINE)
}

fn with_traceparent(mut m: courier::publisher::Outgoing, tp: &str) -> courier::publisher::Outgoing {
    let mut h = FieldTable::default();
    h.insert(
        "traceparent".into(),
        AMQPValue::LongString(LongString::from(tp)),
    );
    m.properties = m.properties.with_headers(h);
    m
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PUBLISHER_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_shows_every_attempt_and_the_endpoint_gets_its_context() {
    let t = TestTopology::fast("trace").await;
    let receiver = Receiver::start().await;
    // 503 to the first request of each message, 200 after.
    let seen: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let counts = seen.clone();
    let sink = Sink::start(
        Arc::new(move |r| {
            let mut c = counts.lock().expect("lock");
            let n = c.entry(r.message_id.clone()).or_insert(0);
            *n += 1;
            (if *n == 1 { 503 } else { 200 }, vec![])
        }),
        Duration::ZERO,
    )
    .await;
    let mut child = worker(&t, &receiver, &sink.url);
    let p = publisher().await;
    let tp = format!("00-{TRACE}-{PUBLISHER_SPAN}-01");
    p.publish(with_traceparent(
        job(&t.exchange(), "email", "traced-1", 0),
        &tp,
    ))
    .await
    .expect("published");
    sink.wait_for(Duration::from_secs(30), "traced-1 delivered", |r| {
        r.iter().any(|r| r.status == 200)
    })
    .await;
    let process_name = format!("process {}", t.name("notifications.email"));
    let spans = receiver
        .wait_for("two process spans and two POSTs", |all| {
            let of = |name: &str| {
                all.iter()
                    .filter(|s| s.trace_id == TRACE && s.name == name)
                    .count()
            };
            of(&process_name) >= 2 && of("POST") >= 2
        })
        .await;
    let _ = child.kill();
    let spans: Vec<Span> = spans.into_iter().filter(|s| s.trace_id == TRACE).collect();
    let process: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name.starts_with("process "))
        .collect();
    let by_attempt = |n: &str| {
        *process
            .iter()
            .find(|s| s.attr("courier.attempt") == n)
            .unwrap_or_else(|| panic!("no process span for attempt {n}: {spans:#?}"))
    };
    let (first, second) = (by_attempt("1"), by_attempt("2"));
    // Attempt 1 continues the publisher's context; it sends the retry copy, whose context
    // attempt 2 continues: one trace, every hop a child of the one before.
    assert_eq!(first.parent, PUBLISHER_SPAN, "{first:#?}");
    assert_eq!(first.attr("courier.outcome"), "retried");
    assert_eq!(first.attr("courier.retry_tier"), "100ms");
    let send = spans
        .iter()
        .find(|s| s.name.starts_with("send ") && s.parent == first.span_id)
        .unwrap_or_else(|| panic!("no send span under attempt 1: {spans:#?}"));
    assert_eq!(send.attr("messaging.operation.type"), "send");
    assert!(
        send.attr("messaging.destination.name").contains("retry"),
        "{send:#?}"
    );
    assert_eq!(
        second.parent, send.span_id,
        "attempt 2 continues the retry copy"
    );
    assert_eq!(second.attr("courier.outcome"), "delivered");
    for s in [first, second] {
        assert_eq!(s.kind, 5, "consumer kind: {s:#?}");
        assert_eq!(s.attr("messaging.system"), "rabbitmq");
        assert_eq!(s.attr("messaging.operation.type"), "process");
        assert_eq!(s.attr("messaging.message.id"), "traced-1");
        assert!(!s.attr("messaging.rabbitmq.message.delivery_tag").is_empty());
    }
    // The first delivery came through the exchange, the retry straight into the queue.
    let queue = t.name("notifications.email");
    assert_eq!(
        first.attr("messaging.destination.name"),
        format!("{}:email:{queue}", t.exchange())
    );
    assert_eq!(second.attr("messaging.destination.name"), queue);
    // The HTTP client spans: children of each attempt, with the status; the endpoint received
    // `traceparent` naming exactly them.
    let posts: Vec<&Span> = spans.iter().filter(|s| s.name == "POST").collect();
    let statuses: Vec<(&str, &str)> = posts
        .iter()
        .map(|s| {
            let attempt = if s.parent == first.span_id {
                "1"
            } else if s.parent == second.span_id {
                "2"
            } else {
                "?"
            };
            (attempt, s.attr("http.response.status_code"))
        })
        .collect();
    assert!(
        statuses.contains(&("1", "503")) && statuses.contains(&("2", "200")),
        "{statuses:?}"
    );
    let sent: Vec<String> = sink
        .all()
        .iter()
        .flat_map(|r| r.header("traceparent").into_iter().map(str::to_owned))
        .collect();
    assert_eq!(sent.len(), 2, "{sent:?}");
    for (tp, post) in sent.iter().zip(&posts) {
        assert!(tp.starts_with(&format!("00-{TRACE}-")), "{tp}");
        assert!(
            posts.iter().any(|p| tp.contains(&p.span_id)),
            "{tp} names a POST span ({post:?})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_dead_letter_starts_a_new_trace_linked_to_the_old() {
    let t = TestTopology::fast("trace-replay").await;
    let receiver = Receiver::start().await;
    // Refused for good the first time (dead-lettered at once), delivered after the replay.
    let seen: Arc<Mutex<u32>> = Arc::default();
    let n = seen.clone();
    let sink = Sink::start(
        Arc::new(move |_| {
            let mut n = n.lock().expect("lock");
            *n += 1;
            (if *n == 1 { 400 } else { 200 }, vec![])
        }),
        Duration::ZERO,
    )
    .await;
    let mut child = worker(&t, &receiver, &sink.url);
    let p = publisher().await;
    let old = "0af7651916cd43dd8448eb211c80319c";
    p.publish(with_traceparent(
        job(&t.exchange(), "email", "replayed-1", 0),
        &format!("00-{old}-b7ad6b7169203331-01"),
    ))
    .await
    .expect("published");
    courier_testkit::queues::wait_depth(&t.dlq(), 1, Duration::from_secs(30)).await;

    let out = output_within(
        Command::new(courier_dlq_bin())
            .args(["replay"])
            .env("AMQP_URL", amqp_url())
            .env("COURIER_PREFIX", &t.prefix)
            .env("COURIER_TOPOLOGY", &t.file)
            .env(
                "XDG_STATE_HOME",
                std::env::temp_dir().join("courier-trace-test-state"),
            )
            .env(
                "COURIER_DLQ_AUDIT_LOG",
                std::env::temp_dir().join(format!("{}audit.jsonl", t.prefix)),
            ),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    sink.wait_for(Duration::from_secs(30), "replayed-1 delivered", |r| {
        r.iter().any(|r| r.status == 200)
    })
    .await;
    let spans = receiver
        .wait_for("the replayed message's process span", |all| {
            all.iter().any(|s| {
                s.name.starts_with("process ")
                    && s.attr("messaging.message.id") == "replayed-1"
                    && s.trace_id != old
            })
        })
        .await;
    let _ = child.kill();
    let first = receiver.of_trace(old);
    assert!(
        first
            .iter()
            .any(|s| s.name.starts_with("process ") && s.attr("courier.outcome") == "dead-lettered"),
        "the first life is in the old trace: {first:#?}"
    );
    let replayed = spans
        .iter()
        .find(|s| {
            s.name.starts_with("process ")
                && s.attr("messaging.message.id") == "replayed-1"
                && s.trace_id != old
        })
        .expect("found above");
    assert_eq!(replayed.attr("courier.outcome"), "delivered");
    assert_eq!(
        replayed.links,
        vec![old.to_owned()],
        "a new trace, linked to the old one (not its child): {replayed:#?}"
    );
}
