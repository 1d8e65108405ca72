use super::*;

#[test]
fn classify_success_retryable_permanent() {
    for status in [200, 201, 202, 204, 299] {
        assert_eq!(classify(status), None, "{status}");
    }
    for status in [408, 429, 500, 502, 503, 504, 599] {
        assert_eq!(classify(status), Some(FailureKind::Retryable), "{status}");
    }
    for status in [
        100, 101, 199, 300, 301, 302, 304, 307, 308, 400, 401, 403, 404, 409, 410,
    ] {
        assert_eq!(classify(status), Some(FailureKind::Permanent), "{status}");
    }
    for status in [413, 415, 422, 451, 499, 600, 999] {
        assert_eq!(classify(status), Some(FailureKind::Permanent), "{status}");
    }
}

#[test]
fn retry_after_seconds() {
    assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
    assert_eq!(parse_retry_after(" 120 "), Some(Duration::from_secs(120)));
    assert_eq!(parse_retry_after("0"), Some(Duration::ZERO));
    assert_eq!(parse_retry_after("86400"), Some(MAX_RETRY_AFTER));
    assert_eq!(parse_retry_after("86401"), Some(MAX_RETRY_AFTER));
    assert_eq!(
        parse_retry_after("99999999999999999999999999"),
        Some(MAX_RETRY_AFTER)
    );
}

#[test]
fn retry_after_rejects_garbage_and_reads_dates() {
    for value in ["", " ", "-1", "+5", "1.5", "5s", "soon", "0x10"] {
        assert_eq!(parse_retry_after(value), None, "{value:?}");
    }
    // A date in the past means "retry now".
    assert_eq!(
        parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
        Some(Duration::ZERO)
    );
    let in_an_hour =
        httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(3600));
    let wait = parse_retry_after(&in_an_hour).expect("date parses");
    assert!(
        wait > Duration::from_secs(3500) && wait <= Duration::from_secs(3600),
        "{wait:?}"
    );
}

#[test]
fn status_message_shape() {
    assert_eq!(
        status_message(
            StatusCode::SERVICE_UNAVAILABLE,
            b"  down\nfor\r\n\tmaintenance "
        ),
        "HTTP 503 Service Unavailable: down for maintenance"
    );
    assert_eq!(
        status_message(StatusCode::BAD_REQUEST, b""),
        "HTTP 400 Bad Request"
    );
    let odd = StatusCode::from_u16(599).expect("valid code");
    assert_eq!(status_message(odd, b"x"), "HTTP 599: x");
}

#[test]
fn status_message_quotes_at_most_200_bytes() {
    let body = "a".repeat(1000);
    let message = status_message(StatusCode::BAD_GATEWAY, body.as_bytes());
    assert_eq!(
        message,
        format!("HTTP 502 Bad Gateway: {}", "a".repeat(200))
    );
}

#[test]
fn one_line_cuts_at_char_boundary_and_is_lossy() {
    // 199 ASCII bytes then a 2-byte 'é': the cut at 200 would split it.
    let mut body = "a".repeat(199).into_bytes();
    body.extend_from_slice("é tail".as_bytes());
    assert_eq!(one_line(&body, 200), "a".repeat(199));
    assert_eq!(
        one_line(b"ok \xff\xfe bytes", 200),
        "ok \u{fffd}\u{fffd} bytes"
    );
    assert_eq!(one_line(b"a\x00b\x1bc", 200), "a b c");
}

#[test]
fn redirect_message_names_location_without_userinfo() {
    assert_eq!(
        redirect_message(StatusCode::FOUND, Some("https://u:secret@elsewhere/x")),
        "HTTP 302 Found: unexpected redirect to https://u:***@elsewhere/x"
    );
    assert_eq!(
        redirect_message(StatusCode::MOVED_PERMANENTLY, None),
        "HTTP 301 Moved Permanently: unexpected redirect"
    );
}

#[test]
fn endpoint_validation() {
    assert!(parse_endpoint("http://127.0.0.1:8080/hook").is_ok());
    assert!(parse_endpoint("https://example.com").is_ok());
    for (endpoint, why) in [
        ("ftp://x", "scheme"),
        ("not a url", "relative URL"),
        ("", "relative URL"),
        ("http://", "empty host"),
        ("mailto:ops@example.com", "scheme"),
    ] {
        let err = parse_endpoint(endpoint).expect_err(endpoint);
        let text = err.to_string();
        assert!(text.contains(&format!("{endpoint:?}")), "{text}");
        assert!(text.contains(why), "{text}");
    }
}

#[test]
fn endpoint_errors_and_display_hide_userinfo() {
    let err = parse_endpoint("ftp://bob:hunter2@x/y").expect_err("ftp rejected");
    let text = err.to_string();
    assert!(!text.contains("hunter2") && !text.contains("bob"), "{text}");
    let url = parse_endpoint("https://bob:hunter2@example.com/hook").expect("valid");
    assert_eq!(display_url(&url), "https://example.com/hook");
}

#[test]
fn static_header_validation() {
    let ok =
        static_headers(&[("Authorization".into(), "Bearer s3cret".into())]).expect("valid header");
    let value = ok.get("authorization").expect("present");
    assert!(value.is_sensitive());
    for name in [
        "Content-Type",
        "idempotency-key",
        "X-Courier-Attempt",
        "Host",
    ] {
        let err = static_headers(&[(name.into(), "v".into())]).expect_err(name);
        assert!(err.to_string().contains(name), "{err}");
    }
    let err = static_headers(&[("bad name".into(), "v".into())]).expect_err("bad name");
    assert!(err.to_string().contains("bad name"), "{err}");
    let err = static_headers(&[("X-Token".into(), "line\nbreak s3cret".into())])
        .expect_err("newline in value");
    assert!(!err.to_string().contains("s3cret"), "{err}");
}

#[test]
fn debug_output_hides_secrets() {
    let mut config = HttpConfig::new("https://bob:hunter2@example.com/hook");
    config.headers = vec![("Authorization".into(), "Bearer s3cret".into())];
    let text = format!("{config:?}");
    assert!(
        !text.contains("hunter2") && !text.contains("s3cret"),
        "{text}"
    );
    let handler = HttpHandler::new(config).expect("valid config");
    let text = format!("{handler:?}");
    assert!(
        !text.contains("hunter2") && !text.contains("s3cret"),
        "{text}"
    );
    assert_eq!(handler.endpoint(), "https://example.com/hook");
}

#[test]
fn zero_timeout_rejected() {
    let mut config = HttpConfig::new("http://127.0.0.1:1/");
    config.timeout = Duration::ZERO;
    assert!(matches!(
        HttpHandler::new(config),
        Err(HttpConfigError::ZeroTimeout)
    ));
}
