use super::*;
use crate::handler::NoopHandler;

fn rate(text: &str) -> Rate {
    text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
}

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).expect("non-zero")
}

#[test]
fn rates_parse_with_a_unit_or_a_duration() {
    for (text, count, per) in [
        ("200/s", 200, Duration::from_secs(1)),
        (" 50 / 100ms ", 50, Duration::from_millis(100)),
        ("12000/m", 12_000, Duration::from_secs(60)),
        ("5/h", 5, Duration::from_secs(3600)),
        ("3/2s", 3, Duration::from_secs(2)),
        ("1/1min", 1, Duration::from_secs(60)),
    ] {
        let r = rate(text);
        assert_eq!((r.count(), r.per()), (count, per), "{text}");
    }
    assert_eq!(rate("200/s").to_string(), "200/s");
    assert_eq!(rate("12000/m").to_string(), "12000/m");
    assert_eq!(rate("50/100ms").to_string(), "50/100ms");
    assert_eq!(rate("200/s").interval(), Duration::from_millis(5));
    assert!((rate("12000/m").per_second() - 200.0).abs() < 1e-9);
}

#[test]
fn bad_rates_say_what_to_write() {
    for (text, says) in [
        ("0/s", "at least 1"),
        ("200", "no '/'"),
        ("x/s", "not a whole number"),
        ("-1/s", "not a whole number"),
        ("10/", "not a period"),
        ("10/fortnight", "not a period"),
        ("10/0s", "longer than zero"),
        ("2000000/s", "microsecond"),
    ] {
        let err = text.parse::<Rate>().expect_err(text).to_string();
        assert!(err.contains(says), "{text}: {err}");
    }
    let err = "200".parse::<Rate>().expect_err("no slash").to_string();
    assert!(err.contains("200/s"), "the message shows an example: {err}");
}

#[test]
fn the_default_burst_is_a_tenth_of_a_second_at_least_one() {
    for (text, burst) in [
        ("200/s", 20),
        ("100/s", 10),
        ("50/100ms", 50),
        ("12000/m", 20),
        ("9/s", 1),
        ("1/m", 1),
        ("1000000/s", 100_000),
    ] {
        assert_eq!(rate(text).default_burst(), burst, "{text}");
    }
    let mut config = RateLimitConfig::new(rate("100/s"), "e");
    assert_eq!(config.effective_burst().get(), 10);
    config.burst = Some(nz(3));
    assert_eq!(config.effective_burst().get(), 3);
}

#[test]
fn each_worker_falls_back_to_its_share_of_rate_and_burst() {
    let fleet = rate("100/s");
    let share = fleet.share(nz(3));
    assert_eq!(share.to_string(), "100/3s");
    assert!((share.per_second() - 100.0 / 3.0).abs() < 1e-9);
    assert_eq!(fleet.share(nz(1)), fleet);
    assert_eq!(share_burst(nz(10), nz(3)).get(), 4, "rounded up");
    assert_eq!(share_burst(nz(10), nz(1)).get(), 10);
    assert_eq!(share_burst(nz(1), nz(5)).get(), 1, "at least 1");
}

#[test]
fn the_config_refuses_what_cannot_work_naming_the_setting() {
    let metrics = Metrics::new();
    let mut config = RateLimitConfig::new(rate("10/s"), "e");
    config.max_wait = Duration::ZERO;
    let err = RateLimiter::new(config, &metrics).expect_err("zero wait");
    assert_eq!(err.setting, "rate-limit-max-wait");
    for name in ["", "a b", "x\ny", &"k".repeat(201)] {
        let mut config = RateLimitConfig::new(rate("10/s"), "e");
        config.name = name.to_owned();
        let err = RateLimiter::new(config, &metrics).expect_err(name);
        assert_eq!(err.setting, "rate-limit-key", "{name:?}");
    }
}

#[test]
fn the_redis_url_never_shows_in_debug_output() {
    let mut config = RateLimitConfig::new(rate("10/s"), "e");
    config.redis = Some("redis://:s3cret@cache:6379/0".into());
    let text = format!("{config:?}");
    assert!(text.contains("redis://cache:6379/0"), "{text}");
    assert!(!text.contains("s3cret"), "{text}");
}

#[tokio::test]
async fn the_local_bucket_never_runs_faster_than_its_rate() {
    // 50/s with a burst of 2: 12 tokens take at least (12 - 2) × 20 ms = 200 ms.
    let metrics = Metrics::new();
    let mut config = RateLimitConfig::new(rate("50/s"), "local.test:80");
    config.burst = Some(nz(2));
    let limiter = RateLimiter::new(config, &metrics).expect("valid");
    let started = std::time::Instant::now();
    let tasks: Vec<_> = (0..12)
        .map(|_| {
            let l = limiter.clone();
            tokio::spawn(async move { l.acquire().await })
        })
        .collect();
    for t in tasks {
        t.await.expect("task").expect("a token within 10 s");
    }
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(195), "12 tokens in {took:?}");
    let throttled = metrics
        .rate_limit_throttled
        .with_label_values(&["local.test:80"])
        .get();
    assert!(throttled >= 10, "{throttled} throttled");
    assert_eq!(
        metrics
            .rate_limit_wait_seconds
            .with_label_values(&["local.test:80"])
            .get_sample_count(),
        12
    );
}

#[tokio::test]
async fn past_the_longest_wait_the_message_fails_retryable_without_calling_the_handler() {
    let metrics = Metrics::new();
    let mut config = RateLimitConfig::new(rate("1/h"), "slow.test:443");
    config.max_wait = Duration::from_millis(50);
    let limiter = RateLimiter::new(config, &metrics).expect("valid");
    let handler = RateLimited::new(NoopHandler, limiter);
    let job = Job {
        message_id: "m",
        attempt: 1,
        queue: "q",
        routing_key: "sms",
        content_type: "application/json",
        body: b"{}",
        priority: 0,
        traceparent: None,
        tracestate: None,
    };
    assert_eq!(handler.handle(job).await, Ok(()), "the burst of 1");
    let started = std::time::Instant::now();
    let err = handler.handle(job).await.expect_err("no second token");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "gave up at once: the next token is an hour away"
    );
    assert_eq!(err.kind, crate::handler::FailureKind::Retryable);
    assert!(
        err.message
            .starts_with("rate limit: no token within 50ms (limit 1/h for slow.test:443)"),
        "{}",
        err.message
    );
    assert_eq!(
        metrics
            .rate_limit_gave_up
            .with_label_values(&["slow.test:443"])
            .get(),
        1
    );
}
