//! The fleet-wide limit: GCRA in Redis, one atomic Lua script per batch of tokens.
//!
//! GCRA (the generic cell rate algorithm, as in redis-cell and Brandur Leach's "Rate Limiting,
//! Cells, and GCRA") keeps one number per limit: the theoretical arrival time (TAT) at which the
//! bucket would be empty again at a steady pace. A token at time `now` conforms when
//! `TAT + interval - tolerance <= now`, where `interval = period / count` and
//! `tolerance = burst × interval`; taking it moves TAT to `max(TAT, now) + interval`. From idle,
//! `burst` tokens conform at once, then one per interval; any window of length `W` sees at most
//! `W / interval + burst` tokens — for 1 s, `rate + burst`.
//!
//! The script reads the clock of the Redis server (`TIME`), so workers with skewed clocks still
//! share one timeline, and it runs atomically, so no two workers spend the same token. It grants
//! up to `wanted` tokens (as many as conform now; a batch is `k` tokens arriving together) or,
//! when none does, says in how many microseconds the next one will. The key expires once the
//! bucket is full again: an idle limit leaves nothing behind.

use std::num::NonZeroU32;
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{ConfigError, Rate};
use crate::amqp::redact;

/// GCRA over `wanted` tokens. KEYS[1]: the limit's key. ARGV: interval (µs), tolerance (µs),
/// wanted (≥ 1). Returns `{granted, retry_in_µs}`: `{n, 0}` with 1 ≤ n ≤ wanted, or `{0, µs}`.
const GCRA_LUA: &str = r"
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local wanted = tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now) or now
if tat < now then
  tat = now
end
local room = math.floor((now + tolerance - tat) / interval)
if room < 1 then
  return {0, math.max(1, tat + interval - tolerance - now)}
end
local granted = math.min(wanted, room)
local new_tat = tat + granted * interval
local ttl_ms = math.ceil((new_tat - now) / 1000) + 1
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', ttl_ms)
return {granted, 0}
";

/// What the script answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Grant {
    /// This many tokens (1 ..= wanted), to spend now.
    Granted(u32),
    /// None now; the next one is due in this long (another worker may take it first).
    RetryIn(Duration),
}

/// A failed call: the worker falls back to its local share.
#[derive(Debug, thiserror::Error)]
pub(super) enum SharedError {
    /// No answer in time (a frozen or overloaded Redis, or a network cut).
    #[error("no answer within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    /// Connection refused or lost, an authentication failure, a script error...
    #[error("{0}")]
    Redis(String),
}

/// One fleet-wide limit in Redis.
pub(super) struct SharedLimit {
    /// Reconnects by itself; each call is bounded by `timeout`.
    conn: ConnectionManager,
    /// [`GCRA_LUA`]; sent once per connection (`EVALSHA`, loaded on `NOSCRIPT`).
    script: ::redis::Script,
    /// `courier:ratelimit:<name>`.
    key: String,
    /// Emission interval in microseconds (rounded up: never faster than configured).
    interval_us: u64,
    /// `burst × interval_us`.
    tolerance_us: u64,
    /// Longest call.
    timeout: Duration,
    /// The Redis URL without credentials, for logs.
    display: String,
}

impl SharedLimit {
    /// A limit of `rate` with `burst` under `key` at `url`; connects lazily (on the first call).
    pub(super) fn new(
        url: &str,
        key: String,
        rate: Rate,
        burst: NonZeroU32,
        timeout: Duration,
    ) -> Result<Self, ConfigError> {
        let display = display_url(url);
        let refuse = |why: String| ConfigError {
            setting: "rate-limit-redis",
            value: display.clone(),
            why,
        };
        if timeout.is_zero() {
            return Err(refuse("the Redis call timeout must be above zero".into()));
        }
        let client = ::redis::Client::open(url.trim()).map_err(|e| {
            let why = redact(&e.to_string());
            refuse(format!(
                "not a Redis URL ({why}); write redis://HOST:PORT or redis://HOST:PORT/DB (a password goes before the host, after a colon, ending in @)"
            ))
        })?;
        // Few and short reconnect attempts: an unreachable Redis should fail the call quickly
        // (the worker then uses its local share), and the background probe retries anyway.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1));
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| refuse(redact(&e.to_string())))?;
        let interval_us = u64::try_from(rate.interval().as_nanos().div_ceil(1_000))
            .unwrap_or(u64::MAX)
            .max(1);
        Ok(Self {
            conn,
            script: ::redis::Script::new(GCRA_LUA),
            key,
            interval_us,
            tolerance_us: interval_us.saturating_mul(u64::from(burst.get())),
            timeout,
            display,
        })
    }

    /// `redis://host:port/db key courier:ratelimit:<name>`.
    pub(super) fn describe(&self) -> String {
        format!("{} key {}", self.display, self.key)
    }

    /// Asks for up to `wanted` tokens (at least 1).
    pub(super) async fn take(&self, wanted: u32) -> Result<Grant, SharedError> {
        let mut conn = self.conn.clone();
        let mut call = self.script.key(&self.key);
        call.arg(self.interval_us)
            .arg(self.tolerance_us)
            .arg(wanted.max(1));
        let (granted, retry_us): (i64, i64) =
            match tokio::time::timeout(self.timeout, call.invoke_async(&mut conn)).await {
                Ok(Ok(answer)) => answer,
                Ok(Err(e)) => return Err(SharedError::Redis(redact(&e.to_string()))),
                Err(_) => return Err(SharedError::Timeout(self.timeout)),
            };
        Ok(match u32::try_from(granted) {
            Ok(n) if n >= 1 => Grant::Granted(n.min(wanted.max(1))),
            _ => Grant::RetryIn(Duration::from_micros(
                u64::try_from(retry_us).unwrap_or(1).max(1),
            )),
        })
    }

    /// `PING`, bounded by the call timeout.
    pub(super) async fn ping(&self) -> Result<(), SharedError> {
        let mut conn = self.conn.clone();
        let ping = ::redis::cmd("PING");
        match tokio::time::timeout(self.timeout, ping.query_async::<String>(&mut conn)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(SharedError::Redis(redact(&e.to_string()))),
            Err(_) => Err(SharedError::Timeout(self.timeout)),
        }
    }
}

/// A Redis URL without username and password (`redis://host:6379/0`); the text with any
/// password masked when it does not parse.
pub fn display_url(url: &str) -> String {
    match url::Url::parse(url.trim()) {
        Ok(mut parsed) => {
            // Only fails for URLs that cannot have userinfo, which then have none.
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            parsed.to_string()
        }
        Err(_) => redact(url),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_show() {
        assert_eq!(
            display_url("redis://:s3cret@cache.internal:6380/2"),
            "redis://cache.internal:6380/2"
        );
        assert_eq!(
            display_url("redis://user:s3cret@10.0.0.5:6379"),
            "redis://10.0.0.5:6379"
        );
        assert!(!display_url("redis://u:s3cret@[bad").contains("s3cret"));
    }

    #[tokio::test]
    async fn a_bad_url_names_the_flag_without_the_password() {
        let rate: Rate = "10/s".parse().expect("rate");
        for url in ["http://:s3cret@host:6379", "redis://:s3cret@host:notaport"] {
            let Err(err) = SharedLimit::new(
                url,
                "courier:ratelimit:x".into(),
                rate,
                NonZeroU32::MIN,
                Duration::from_millis(250),
            ) else {
                panic!("{url} accepted");
            };
            let text = err.to_string();
            assert!(text.starts_with("rate-limit-redis "), "{text}");
            assert!(!text.contains("s3cret"), "password shown: {text}");
        }
    }
}
