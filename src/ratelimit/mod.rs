//! Downstream rate limits: at most N deliveries per period to one endpoint, for this worker or
//! for the whole fleet.
//!
//! Providers throttle per account (an SMS gateway allows N requests a second for everyone), so
//! the limit belongs in front of the handler, not in the retry rules. [`RateLimited`] wraps any
//! [`Handler`]: before each attempt it takes a token from a [`RateLimiter`], and only then calls
//! the handler it wraps.
//!
//! - **Waiting costs no attempt.** A message without a token waits inside the handler call
//!   (asleep until the limiter says a token is due, never polling), holding one of the worker's
//!   `--concurrency` slots and its delivery, but no retry attempt.
//! - **The wait is bounded** ([`RateLimitConfig::max_wait`]): a message that got no token by then
//!   fails with a retryable [`HandlerError`] (`rate limit: no token within ...`) and takes the
//!   normal retry path, like any other retryable failure. A `429` or `Retry-After` from the
//!   endpoint is the handler's answer and follows the retry rules unchanged.
//! - **Waiters take turns.** One waiter at a time asks the bucket (a FIFO lock), so messages get
//!   tokens in the order they asked, and a thousand waiters do not all wake up for one token.
//!
//! Where the tokens come from:
//! - **Local** (no Redis): a `governor` GCRA bucket in this process holding this worker's share,
//!   `rate ÷ fleet_size`, with a burst of `burst ÷ fleet_size` (at least 1).
//! - **Fleet-wide** ([`RateLimitConfig::redis`]): one GCRA state (a theoretical arrival time)
//!   per key in Redis, updated by one atomic Lua script ([`redis`]), so every worker of the fleet
//!   draws from the same `rate` and `burst`. The holder of the turn asks for as many tokens as
//!   there are waiters (at most the burst) and gets what the limit allows right now: a batch
//!   when the bucket has room, so a busy worker needs fewer round trips. The extra tokens go to
//!   the next waiters at once, or are dropped if nobody takes them within half an emission
//!   interval, so a token is never spent late enough to push a window past `rate + burst`.
//! - **Fallback**: when a Redis call fails or takes longer than
//!   [`RateLimitConfig::redis_timeout`], the worker says so once (a warning, and
//!   `courier_rate_limit_fallback` 1), goes on with its local share, and probes Redis in the
//!   background with growing delays; when Redis answers again it says so (info) and returns to
//!   the shared limit. While it lasts, the fleet stays under `rate` only if `fleet_size` is the
//!   number of workers actually running.

pub mod redis;

use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use governor::clock::{Clock, MonotonicClock};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::Quota;
use tokio::time::Instant;

use crate::handler::{Handler, HandlerError, HandlerResult, Job};
use crate::metrics::{Metrics, RateLimitSeries};
use crate::retry::RetryPolicy;

/// The longest wait for a token unless configured: well below the default handler timeout (30 s).
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(10);

/// How long one Redis call may take before the worker falls back to its local share.
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(250);

/// Prefix of every Redis key a limit uses; the rest is the limit's name.
pub const KEY_PREFIX: &str = "courier:ratelimit:";

/// The fastest rate enforced: one token a microsecond (the Redis script counts in microseconds).
const MIN_INTERVAL: Duration = Duration::from_micros(1);

/// Longest lease of tokens: a batch from Redis is never bigger than this (nor than the burst).
const MAX_LEASE: u32 = 100;

/// Delays between background probes of an unreachable Redis.
const PROBE_POLICY: RetryPolicy =
    RetryPolicy::new(Duration::from_millis(250), Duration::from_secs(5));

/// `count` tokens per `per`, e.g. `200/s`, `50/100ms`, `12000/m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Tokens per period; at least 1.
    count: NonZeroU32,
    /// The period; above zero.
    per: Duration,
}

impl Rate {
    /// `count` tokens per `per`.
    ///
    /// # Errors
    /// [`RateError`] when `count` is 0, `per` is zero, or the rate is above one token a
    /// microsecond.
    pub fn new(count: u32, per: Duration) -> Result<Self, RateError> {
        let count = NonZeroU32::new(count).ok_or_else(|| {
            RateError("the count must be at least 1 (to stop deliveries, stop the worker)".into())
        })?;
        if per.is_zero() {
            return Err(RateError("the period must be longer than zero".into()));
        }
        let rate = Self { count, per };
        if rate.interval() < MIN_INTERVAL {
            return Err(RateError(
                "more than one token a microsecond (1,000,000/s) cannot be enforced".into(),
            ));
        }
        Ok(rate)
    }

    /// Tokens per period.
    pub fn count(&self) -> u32 {
        self.count.get()
    }

    /// The period.
    pub fn per(&self) -> Duration {
        self.per
    }

    /// The emission interval: time between two tokens at a steady pace.
    pub fn interval(&self) -> Duration {
        self.per / self.count.get()
    }

    /// Tokens per second.
    pub fn per_second(&self) -> f64 {
        f64::from(self.count.get()) / self.per.as_secs_f64()
    }

    /// The burst used when none is configured: a tenth of a second's worth of tokens, at least 1
    /// (`200/s` → 20, `100/s` → 10, `1/m` → 1). Small enough that a window barely exceeds the
    /// rate, large enough that a worker does not stall on every jitter of the network.
    pub fn default_burst(&self) -> u32 {
        let tenth = (self.per_second() / 10.0).floor();
        if tenth >= f64::from(u32::MAX) {
            u32::MAX
        } else if tenth >= 1.0 {
            // In range and integral: checked just above.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let n = tenth as u32;
            n
        } else {
            1
        }
    }

    /// This worker's share of a fleet-wide rate: the same count per `fleet_size` times the period
    /// (`100/s` over 3 workers is `100/3s`, 33.3 a second each).
    pub fn share(&self, fleet_size: NonZeroU32) -> Rate {
        Rate {
            count: self.count,
            per: self.per.saturating_mul(fleet_size.get()),
        }
    }
}

/// A worker's share of a fleet-wide burst: `burst ÷ fleet_size`, rounded up, at least 1.
pub fn share_burst(burst: NonZeroU32, fleet_size: NonZeroU32) -> NonZeroU32 {
    burst
        .get()
        .div_ceil(fleet_size.get())
        .try_into()
        .unwrap_or(NonZeroU32::MIN)
}

/// Why a rate was refused; the text says what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RateError(String);

impl FromStr for Rate {
    type Err = RateError;

    /// `COUNT/PERIOD`: a count, then a unit (`s`, `m`, `h`, `ms`) or a duration (`100ms`, `2s`).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let usage = "write COUNT/PERIOD, e.g. 200/s, 50/100ms or 12000/m";
        let Some((count, per)) = text.trim().split_once('/') else {
            return Err(RateError(format!("no '/' found: {usage}")));
        };
        let count: u32 = count
            .trim()
            .parse()
            .map_err(|_| RateError(format!("{:?} is not a whole number: {usage}", count.trim())))?;
        let per = per.trim();
        let unit_only = !per.is_empty() && per.bytes().all(|b| b.is_ascii_alphabetic());
        let spelled = if unit_only {
            format!("1{per}")
        } else {
            per.to_owned()
        };
        let per = humantime::parse_duration(&spelled)
            .map_err(|e| RateError(format!("{per:?} is not a period ({e}): {usage}")))?;
        Self::new(count, per)
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.count.get();
        match self.per.as_millis() {
            1_000 if self.per.subsec_nanos() == 0 => write!(f, "{count}/s"),
            60_000 if self.per.subsec_nanos() == 0 => write!(f, "{count}/m"),
            3_600_000 if self.per.subsec_nanos() == 0 => write!(f, "{count}/h"),
            _ => write!(f, "{count}/{}", humantime::format_duration(self.per)),
        }
    }
}

/// What a [`RateLimiter`] enforces and where its tokens come from.
#[derive(Clone)]
pub struct RateLimitConfig {
    /// The limit for the endpoint: the whole fleet's with [`redis`](Self::redis), else spread
    /// evenly over [`fleet_size`](Self::fleet_size) workers.
    pub rate: Rate,
    /// Tokens that may be spent at once after a quiet spell; `None` for
    /// [`Rate::default_burst`]. Any 1-second window sees at most `rate + burst` deliveries.
    pub burst: Option<NonZeroU32>,
    /// Longest wait for a token; past it the message fails with a retryable error. Keep it below
    /// the handler timeout, which the wait counts against.
    pub max_wait: Duration,
    /// Workers sharing the limit: each one's local share is `rate ÷ fleet_size`.
    pub fleet_size: NonZeroU32,
    /// `redis://[:password@]host:port[/db]` of the shared limit; `None` for local buckets only.
    /// Treated as a secret: only host, port and database are ever shown.
    pub redis: Option<String>,
    /// The limit's name: the Redis key is [`KEY_PREFIX`] + name. Workers with the same name share
    /// one limit. Never put a secret in it: it is shown in logs.
    pub name: String,
    /// Longest Redis call before falling back to the local share.
    pub redis_timeout: Duration,
    /// The `endpoint` label of the metrics (and logs): `host:port`, never credentials.
    pub endpoint: String,
}

impl fmt::Debug for RateLimitConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitConfig")
            .field("rate", &self.rate.to_string())
            .field("burst", &self.burst)
            .field("max_wait", &self.max_wait)
            .field("fleet_size", &self.fleet_size)
            .field("redis", &self.redis.as_deref().map(redis::display_url))
            .field("name", &self.name)
            .field("redis_timeout", &self.redis_timeout)
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

impl RateLimitConfig {
    /// A local limit of `rate` for `endpoint` (also its name), with the default burst and wait.
    pub fn new(rate: Rate, endpoint: impl Into<String>) -> Self {
        let endpoint = endpoint.into();
        Self {
            rate,
            burst: None,
            max_wait: DEFAULT_MAX_WAIT,
            fleet_size: NonZeroU32::MIN,
            redis: None,
            name: endpoint.clone(),
            redis_timeout: DEFAULT_REDIS_TIMEOUT,
            endpoint,
        }
    }

    /// The burst in effect: the configured one or [`Rate::default_burst`].
    pub fn effective_burst(&self) -> NonZeroU32 {
        self.burst.unwrap_or_else(|| {
            NonZeroU32::new(self.rate.default_burst()).unwrap_or(NonZeroU32::MIN)
        })
    }
}

/// A setting a [`RateLimiter`] cannot work with: which, its value, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{setting} {value}: {why}")]
pub struct ConfigError {
    /// The setting at fault, named as the `courier work` option (`rate-limit-redis`, ...).
    pub setting: &'static str,
    /// Its value as given (a Redis URL without its password).
    pub value: String,
    /// Why it cannot work, and what to use instead.
    pub why: String,
}

/// Why a message got no token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rate limit: no token within {} (limit {rate} for {endpoint})", humantime::format_duration(*.max_wait))]
pub struct NoToken {
    /// The longest wait, which passed (or would have before the next token).
    pub max_wait: Duration,
    /// The limit.
    pub rate: Rate,
    /// The endpoint label.
    pub endpoint: String,
}

/// A local GCRA bucket (governor) on the monotonic clock. The middleware is spelled out: its
/// default follows governor's default clock, which another crate's features may change.
type LocalBucket = governor::RateLimiter<
    NotKeyed,
    InMemoryState,
    MonotonicClock,
    NoOpMiddleware<<MonotonicClock as Clock>::Instant>,
>;

/// Tokens leased from Redis beyond the one the holder needed, for the next waiters.
#[derive(Debug)]
struct Lease {
    /// Tokens left.
    tokens: u32,
    /// When Redis granted them; they expire [`Inner::lease_ttl`] later.
    granted_at: Instant,
}

/// Hands out tokens; see the module docs. Cheap to clone (one shared state).
#[derive(Clone)]
pub struct RateLimiter {
    inner: Arc<Inner>,
}

struct Inner {
    /// The configured (fleet or local) rate, for messages.
    rate: Rate,
    /// Longest wait for a token.
    max_wait: Duration,
    /// Metrics and log label.
    endpoint: String,
    /// This worker's share: the only bucket without Redis, the fallback with it.
    local: LocalBucket,
    /// The share, for messages (`33/3s`).
    local_rate: Rate,
    /// The fleet-wide limit, if configured.
    shared: Option<redis::SharedLimit>,
    /// True while `shared` is configured but unreachable: tokens come from `local`.
    fallback: AtomicBool,
    /// The turn: one waiter at a time asks a bucket (tokio's mutex is FIFO), holding the lease.
    turn: tokio::sync::Mutex<Lease>,
    /// Messages in [`RateLimiter::acquire`] now: how many tokens the holder asks Redis for.
    waiting: AtomicUsize,
    /// Largest batch asked of Redis: the burst, at most [`MAX_LEASE`].
    max_lease: u32,
    /// How long leased tokens stay usable: half an emission interval (at most 5 ms), so a token
    /// spent late can never add one to a window.
    lease_ttl: Duration,
    /// The metrics of `endpoint`.
    series: RateLimitSeries,
}

impl fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter")
            .field("rate", &self.inner.rate.to_string())
            .field("endpoint", &self.inner.endpoint)
            .field("local_rate", &self.inner.local_rate.to_string())
            .field("shared", &self.inner.shared.as_ref().map(|s| s.describe()))
            .field("fallback", &self.inner.fallback.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Counts a message in [`Inner::waiting`] while it is in `acquire`, also when it is cancelled.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn enter(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl RateLimiter {
    /// Validates `config` and builds the limiter; creates its metric series in `metrics`. With
    /// Redis, nothing is sent yet: the first message connects (an unreachable Redis is a fallback,
    /// not a start-up failure).
    ///
    /// Must be called inside a tokio runtime when `config.redis` is set.
    ///
    /// # Errors
    /// [`ConfigError`] naming the setting: an unparseable Redis URL, an empty or odd name, a zero
    /// `max_wait` or `redis_timeout`.
    pub fn new(config: RateLimitConfig, metrics: &Metrics) -> Result<Self, ConfigError> {
        if config.max_wait.is_zero() {
            return Err(ConfigError {
                setting: "rate-limit-max-wait",
                value: "0s".into(),
                why: "a message must be allowed to wait for a token; use e.g. 10s".into(),
            });
        }
        validate_name(&config.name)?;
        let burst = config.effective_burst();
        let local_rate = config.rate.share(config.fleet_size);
        let local_burst = share_burst(burst, config.fleet_size);
        let quota = Quota::with_period(local_rate.interval())
            .ok_or_else(|| ConfigError {
                setting: "rate-limit",
                value: config.rate.to_string(),
                why: "the interval between tokens is zero".into(),
            })?
            .allow_burst(local_burst);
        let local = governor::RateLimiter::direct_with_clock(quota, MonotonicClock);
        let shared = match &config.redis {
            Some(url) => Some(redis::SharedLimit::new(
                url,
                format!("{KEY_PREFIX}{}", config.name),
                config.rate,
                burst,
                config.redis_timeout,
            )?),
            None => None,
        };
        let series = metrics.init_rate_limit(&config.endpoint);
        series.fallback.set(0);
        let lease_ttl = (config.rate.interval() / 2).min(Duration::from_millis(5));
        Ok(Self {
            inner: Arc::new(Inner {
                rate: config.rate,
                max_wait: config.max_wait,
                endpoint: config.endpoint,
                local,
                local_rate,
                shared,
                fallback: AtomicBool::new(false),
                turn: tokio::sync::Mutex::new(Lease {
                    tokens: 0,
                    granted_at: Instant::now(),
                }),
                waiting: AtomicUsize::new(0),
                max_lease: burst.get().min(MAX_LEASE),
                lease_ttl,
                series,
            }),
        })
    }

    /// One line for the start-up log: the rate, the burst, where tokens come from.
    pub fn describe(&self) -> String {
        let i = &self.inner;
        match &i.shared {
            Some(s) => format!(
                "{} for {} shared by the fleet in {} (fallback: {} per worker)",
                i.rate,
                i.endpoint,
                s.describe(),
                i.local_rate,
            ),
            None if i.local_rate == i.rate => {
                format!("{} for {} in this worker", i.rate, i.endpoint)
            }
            None => format!(
                "{} for {} over the fleet: {} in this worker",
                i.rate, i.endpoint, i.local_rate
            ),
        }
    }

    /// True while a fleet-wide limit runs on the local share because Redis is unreachable.
    pub fn is_fallback(&self) -> bool {
        self.inner.fallback.load(Ordering::SeqCst)
    }

    /// Waits for a token, at most the configured `max_wait`; returns how long it waited.
    ///
    /// # Errors
    /// [`NoToken`] when no token came (or could come) within `max_wait`.
    pub async fn acquire(&self) -> Result<Duration, NoToken> {
        let inner = &self.inner;
        let started = Instant::now();
        let deadline = started + inner.max_wait;
        let _waiting = Waiting::enter(&inner.waiting);
        let mut throttled = false;
        let got = tokio::time::timeout_at(deadline, take(inner, deadline, &mut throttled))
            .await
            .unwrap_or(Err(Late));
        let waited = started.elapsed();
        inner.series.wait_seconds.observe(waited.as_secs_f64());
        if throttled || got.is_err() {
            inner.series.throttled.inc();
        }
        match got {
            Ok(()) => Ok(waited),
            Err(Late) => {
                inner.series.gave_up.inc();
                Err(NoToken {
                    max_wait: inner.max_wait,
                    rate: inner.rate,
                    endpoint: inner.endpoint.clone(),
                })
            }
        }
    }
}

/// The deadline passed, or the next token is due after it.
struct Late;

/// Takes a token: from the lease, else from Redis (unless in fallback), else from the local
/// bucket; asleep while none is due. Sets `throttled` when it had to sleep.
async fn take(inner: &Arc<Inner>, deadline: Instant, throttled: &mut bool) -> Result<(), Late> {
    let mut lease = inner.turn.lock().await;
    if lease.tokens > 0 && lease.granted_at.elapsed() <= inner.lease_ttl {
        lease.tokens -= 1;
        return Ok(());
    }
    lease.tokens = 0;
    loop {
        let due_in = match inner.shared.as_ref() {
            Some(shared) if !inner.fallback.load(Ordering::SeqCst) => {
                let wanted = u32::try_from(inner.waiting.load(Ordering::SeqCst))
                    .unwrap_or(u32::MAX)
                    .clamp(1, inner.max_lease);
                match shared.take(wanted).await {
                    Ok(redis::Grant::Granted(n)) => {
                        lease.tokens = n.saturating_sub(1);
                        lease.granted_at = Instant::now();
                        return Ok(());
                    }
                    Ok(redis::Grant::RetryIn(due_in)) => due_in,
                    Err(e) => {
                        enter_fallback(inner, &e);
                        continue;
                    }
                }
            }
            _ => match inner.local.check() {
                Ok(()) => return Ok(()),
                Err(not_until) => not_until.wait_time_from(inner.local.clock().now()),
            },
        };
        *throttled = true;
        if Instant::now() + due_in > deadline {
            return Err(Late);
        }
        tokio::time::sleep(due_in).await;
    }
}

/// Switches to the local share after a failed Redis call: says so the first time, and starts
/// the probe that switches back.
fn enter_fallback(inner: &Arc<Inner>, error: &redis::SharedError) {
    inner.series.redis_errors.inc();
    if inner.fallback.swap(true, Ordering::SeqCst) {
        return;
    }
    inner.series.fallback.set(1);
    let redis = inner
        .shared
        .as_ref()
        .map(|s| s.describe())
        .unwrap_or_default();
    tracing::warn!(
        endpoint = %inner.endpoint,
        %redis,
        error = %error,
        local_share = %inner.local_rate,
        "rate limit: Redis unreachable; falling back to this worker's local share ({} of {}) until it answers again",
        inner.local_rate,
        inner.rate,
    );
    tokio::spawn(probe(Arc::downgrade(inner)));
}

/// Pings Redis with growing delays until it answers, then returns the limiter to the shared
/// limit. Ends when the limiter is dropped.
async fn probe(inner: Weak<Inner>) {
    let mut delays = PROBE_POLICY.delays();
    loop {
        tokio::time::sleep(delays.next_delay()).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let Some(shared) = inner.shared.as_ref() else {
            return;
        };
        if shared.ping().await.is_ok() {
            inner.fallback.store(false, Ordering::SeqCst);
            inner.series.fallback.set(0);
            tracing::info!(
                endpoint = %inner.endpoint,
                redis = %shared.describe(),
                "rate limit: Redis reachable again; back to the shared limit of {}",
                inner.rate,
            );
            return;
        }
        inner.series.redis_errors.inc();
    }
}

/// A limit name: non-empty, printable, no spaces, at most 200 bytes.
fn validate_name(name: &str) -> Result<(), ConfigError> {
    let refuse = |why: &str| ConfigError {
        setting: "rate-limit-key",
        value: format!("{name:?}"),
        why: why.into(),
    };
    if name.is_empty() {
        return Err(refuse(
            "name the limit, e.g. the endpoint's host (api.example.com)",
        ));
    }
    if name.len() > 200 {
        return Err(refuse(
            "longer than 200 bytes; use a short name such as the host",
        ));
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(refuse("spaces and control characters are not allowed"));
    }
    Ok(())
}

/// A [`Handler`] that takes a token from a [`RateLimiter`] before each attempt of the handler it
/// wraps. No token within the limiter's `max_wait`: a retryable failure, without calling `inner`.
#[derive(Debug, Clone)]
pub struct RateLimited<H> {
    /// The handler that delivers.
    inner: H,
    /// Where the tokens come from; shared by every delivery (and cloneable to other handlers of
    /// the same endpoint).
    limiter: RateLimiter,
}

impl<H: Handler> RateLimited<H> {
    /// Wraps `inner`.
    pub fn new(inner: H, limiter: RateLimiter) -> Self {
        Self { inner, limiter }
    }

    /// The limiter.
    pub fn limiter(&self) -> &RateLimiter {
        &self.limiter
    }
}

impl<H: Handler> Handler for RateLimited<H> {
    async fn handle(&self, job: Job<'_>) -> HandlerResult {
        self.limiter
            .acquire()
            .await
            .map_err(|e| HandlerError::retryable(e.to_string()))?;
        self.inner.handle(job).await
    }
}

#[cfg(test)]
mod tests;
