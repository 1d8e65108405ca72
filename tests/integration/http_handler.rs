//! The `http` handler against a real local HTTP server (axum on 127.0.0.1:0): what the endpoint
//! receives, how each kind of answer (or non-answer) is classified, and that configured
//! credentials never show up in error messages. No broker needed.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{any, post};
use axum::Router;
use courier::handler::http::{HttpConfig, HttpConfigError, HttpHandler};
use courier::handler::{FailureKind, Handler, HandlerError, Job};

/// What the server saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    headers: HeaderMap,
    body: Bytes,
    peer: SocketAddr,
}

type Log = Arc<Mutex<Vec<Seen>>>;

/// Serves `router` on an ephemeral local port until the test's runtime ends.
async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind test server");
    let addr = listener.local_addr().expect("test server address");
    tokio::spawn(async move {
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .expect("test server runs");
    });
    addr
}

/// A server whose `/hook` records each request and answers with `reply`.
async fn recording_server<R>(reply: R) -> (SocketAddr, Log)
where
    R: Fn() -> axum::response::Response + Clone + Send + Sync + 'static,
{
    let log: Log = Arc::default();
    let router = Router::new()
        .route(
            "/hook",
            post(
                move |State(log): State<Log>,
                      ConnectInfo(peer): ConnectInfo<SocketAddr>,
                      headers: HeaderMap,
                      body: Bytes| {
                    let reply = reply.clone();
                    async move {
                        log.lock().expect("log lock").push(Seen {
                            headers,
                            body,
                            peer,
                        });
                        reply()
                    }
                },
            ),
        )
        .with_state(log.clone());
    (serve(router).await, log)
}

fn handler_for(endpoint: &str) -> HttpHandler {
    let mut config = HttpConfig::new(endpoint);
    config.timeout = Duration::from_secs(5);
    HttpHandler::new(config).expect("valid handler config")
}

fn job(body: &[u8]) -> Job<'_> {
    Job {
        message_id: "msg-0001",
        attempt: 3,
        queue: "notifications.email",
        routing_key: "email",
        content_type: "application/json",
        body,
        priority: 5,
        traceparent: None,
        tracestate: None,
    }
}

fn header<'a>(seen: &'a Seen, name: &str) -> &'a str {
    seen.headers
        .get(name)
        .unwrap_or_else(|| panic!("server saw no {name} header"))
        .to_str()
        .expect("header is text")
}

async fn failure(handler: &HttpHandler, body: &[u8]) -> HandlerError {
    handler
        .handle(job(body))
        .await
        .expect_err("delivery should fail")
}

#[tokio::test]
async fn ok_delivers_body_and_headers() {
    let (addr, log) = recording_server(|| StatusCode::OK.into_response()).await;
    let mut config = HttpConfig::new(format!("http://{addr}/hook"));
    config.headers = vec![("Authorization".into(), "Bearer test-token".into())];
    let handler = HttpHandler::new(config).expect("valid handler config");

    let body = br#"{"to":"a@example.com","text":"h\u00e9llo \ud83d\ude00","n":[1,2,3]}"#;
    handler.handle(job(body)).await.expect("2xx is success");

    let seen = log.lock().expect("log lock").clone();
    assert_eq!(seen.len(), 1);
    let seen = &seen[0];
    assert_eq!(seen.body.as_ref(), body.as_slice(), "body byte-for-byte");
    assert_eq!(header(seen, "idempotency-key"), "msg-0001");
    assert_eq!(header(seen, "x-courier-message-id"), "msg-0001");
    assert_eq!(header(seen, "x-courier-attempt"), "3");
    assert_eq!(header(seen, "x-courier-queue"), "notifications.email");
    assert_eq!(header(seen, "content-type"), "application/json");
    assert_eq!(header(seen, "authorization"), "Bearer test-token");
}

#[tokio::test]
async fn empty_content_type_defaults_to_json_and_other_2xx_succeed() {
    let (addr, log) = recording_server(|| StatusCode::NO_CONTENT.into_response()).await;
    let handler = handler_for(&format!("http://{addr}/hook"));
    let body = b"{}";
    let mut job = job(body);
    job.content_type = "";
    handler.handle(job).await.expect("204 is success");
    let seen = log.lock().expect("log lock").clone();
    assert_eq!(header(&seen[0], "content-type"), "application/json");
}

#[tokio::test]
async fn connections_are_reused() {
    let (addr, log) = recording_server(|| (StatusCode::OK, "accepted").into_response()).await;
    let handler = handler_for(&format!("http://{addr}/hook"));
    for _ in 0..3 {
        handler.handle(job(b"{}")).await.expect("2xx is success");
    }
    let seen = log.lock().expect("log lock").clone();
    assert_eq!(seen.len(), 3);
    assert!(
        seen.iter().all(|s| s.peer == seen[0].peer),
        "one pooled connection expected, saw peers {:?}",
        seen.iter().map(|s| s.peer).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn service_unavailable_is_retryable() {
    let (addr, _log) = recording_server(|| {
        (StatusCode::SERVICE_UNAVAILABLE, "down for\nmaintenance").into_response()
    })
    .await;
    let handler = handler_for(&format!("http://{addr}/hook"));
    let err = failure(&handler, b"{}").await;
    assert_eq!(err.kind, FailureKind::Retryable);
    assert_eq!(
        err.message,
        "HTTP 503 Service Unavailable: down for maintenance"
    );
    assert_eq!(err.retry_after, None);
}

#[tokio::test]
async fn too_many_requests_honours_retry_after() {
    let (addr, _log) = recording_server(|| {
        (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "7")],
            "slow down",
        )
            .into_response()
    })
    .await;
    let handler = handler_for(&format!("http://{addr}/hook"));
    let err = failure(&handler, b"{}").await;
    assert_eq!(err.kind, FailureKind::Retryable);
    assert_eq!(err.retry_after, Some(Duration::from_secs(7)));
    assert!(err.message.starts_with("HTTP 429"), "{}", err.message);
}

#[tokio::test]
async fn request_timeout_status_is_retryable() {
    let (addr, _log) = recording_server(|| StatusCode::REQUEST_TIMEOUT.into_response()).await;
    let handler = handler_for(&format!("http://{addr}/hook"));
    let err = failure(&handler, b"{}").await;
    assert_eq!(err.kind, FailureKind::Retryable);
    assert!(err.message.starts_with("HTTP 408"), "{}", err.message);
}

#[tokio::test]
async fn bad_request_is_permanent_with_status_and_without_request_body() {
    let (addr, _log) = recording_server(|| {
        (StatusCode::BAD_REQUEST, r#"{"error":"missing field to"}"#).into_response()
    })
    .await;
    let handler = handler_for(&format!("http://{addr}/hook"));
    let err = failure(&handler, br#"{"secret_payload_marker":1}"#).await;
    assert_eq!(err.kind, FailureKind::Permanent);
    assert_eq!(
        err.message,
        r#"HTTP 400 Bad Request: {"error":"missing field to"}"#
    );
    assert!(!err.message.contains("secret_payload_marker"));
    assert_eq!(err.retry_after, None);
}

#[tokio::test]
async fn redirect_is_not_followed_and_is_permanent() {
    let followed: Log = Arc::default();
    let router = Router::new()
        .route(
            "/hook",
            post(|| async { (StatusCode::FOUND, [("location", "/elsewhere")]) }),
        )
        .route(
            "/elsewhere",
            any(
                |State(log): State<Log>,
                 ConnectInfo(peer): ConnectInfo<SocketAddr>,
                 headers: HeaderMap,
                 body: Bytes| async move {
                    log.lock().expect("log lock").push(Seen {
                        headers,
                        body,
                        peer,
                    });
                    StatusCode::OK
                },
            ),
        )
        .with_state(followed.clone());
    let addr = serve(router).await;
    let handler = handler_for(&format!("http://{addr}/hook"));
    let err = failure(&handler, b"{}").await;
    assert_eq!(err.kind, FailureKind::Permanent);
    assert!(err.message.starts_with("HTTP 302 Found"), "{}", err.message);
    assert!(
        err.message.contains("unexpected redirect"),
        "{}",
        err.message
    );
    assert!(
        followed.lock().expect("log lock").is_empty(),
        "redirect was followed"
    );
}

#[tokio::test]
async fn server_that_never_answers_times_out_as_retryable() {
    let router = Router::new().route(
        "/hook",
        post(|| async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            StatusCode::OK
        }),
    );
    let addr = serve(router).await;
    let mut config = HttpConfig::new(format!("http://{addr}/hook"));
    config.timeout = Duration::from_millis(300);
    let handler = HttpHandler::new(config).expect("valid handler config");
    // A generous outer bound only so a broken timeout fails the test instead of hanging it.
    let err = tokio::time::timeout(Duration::from_secs(30), handler.handle(job(b"{}")))
        .await
        .expect("handler returned")
        .expect_err("no answer is a failure");
    assert_eq!(err.kind, FailureKind::Retryable);
    assert!(err.message.contains("timed out"), "{}", err.message);
    assert!(
        err.message.contains(&format!("POST http://{addr}/hook")),
        "{}",
        err.message
    );
}

/// A local port nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind probe listener");
    let port = listener.local_addr().expect("probe address").port();
    drop(listener);
    port
}

#[tokio::test]
async fn connection_refused_is_retryable() {
    let port = closed_port();
    let handler = handler_for(&format!("http://127.0.0.1:{port}/hook"));
    let err = failure(&handler, b"{}").await;
    assert_eq!(err.kind, FailureKind::Retryable);
    assert!(
        err.message.contains("connection refused"),
        "{}",
        err.message
    );
    assert!(
        err.message.contains(&format!("127.0.0.1:{port}")),
        "{}",
        err.message
    );
}

#[tokio::test]
async fn configured_credentials_never_leak_into_errors() {
    let port = closed_port();
    let handler = handler_for(&format!(
        "http://courieruser:secretpw@127.0.0.1:{port}/hook"
    ));
    assert!(!format!("{handler:?}").contains("secretpw"));
    assert!(!handler.endpoint().contains("secretpw"));
    let err = failure(&handler, b"{}").await;
    assert_eq!(err.kind, FailureKind::Retryable);
    assert!(
        err.message.contains("connection refused"),
        "{}",
        err.message
    );
    assert!(!err.message.contains("secretpw"), "{}", err.message);
    assert!(!err.message.contains("courieruser"), "{}", err.message);

    // Same through an HTTP error answer and through a timeout.
    let (addr, log) = recording_server(|| StatusCode::BAD_GATEWAY.into_response()).await;
    let handler = handler_for(&format!("http://courieruser:secretpw@{addr}/hook"));
    let err = failure(&handler, b"{}").await;
    assert_eq!(err.kind, FailureKind::Retryable);
    assert!(!err.message.contains("secretpw"), "{}", err.message);
    // The userinfo is sent as Basic credentials, not lost.
    let seen = log.lock().expect("log lock").clone();
    assert!(header(&seen[0], "authorization").starts_with("Basic "));

    let router = Router::new().route(
        "/hook",
        post(|| async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            StatusCode::OK
        }),
    );
    let addr = serve(router).await;
    let mut config = HttpConfig::new(format!("http://courieruser:secretpw@{addr}/hook"));
    config.timeout = Duration::from_millis(300);
    let handler = HttpHandler::new(config).expect("valid handler config");
    let err = failure(&handler, b"{}").await;
    assert!(err.message.contains("timed out"), "{}", err.message);
    assert!(!err.message.contains("secretpw"), "{}", err.message);
    assert!(!err.message.contains("courieruser"), "{}", err.message);
}

#[tokio::test]
async fn invalid_endpoints_are_rejected_at_start_up() {
    for endpoint in [
        "ftp://x",
        "not a url",
        "http://",
        "ftp://courieruser:secretpw@x/",
    ] {
        let err = HttpHandler::new(HttpConfig::new(endpoint)).expect_err(endpoint);
        assert!(
            matches!(err, HttpConfigError::InvalidEndpoint { .. }),
            "{endpoint}: {err:?}"
        );
        let text = err.to_string();
        assert!(!text.contains("secretpw"), "{text}");
        if !endpoint.contains("secretpw") {
            assert!(text.contains(endpoint), "{text} should name {endpoint}");
        }
    }
}
