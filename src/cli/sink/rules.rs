//! What the sink answers, decided per message: a share of messages fails on purpose, chosen by
//! a hash of the `Idempotency-Key` (the `message_id`), so the fate of every message is known in
//! advance and does not depend on which sink replica or worker handles it.
//!
//! Pure and separate from the server so that it is tested without one, and so that
//! `courier demo` predicts every outcome with the very function that answers.

/// Parses a `--fail-*` share: a number from 0 to 100, with or without a `%` sign.
///
/// # Errors
/// A message naming the text when it is not a number or not between 0 and 100.
pub fn parse_percent(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("{s:?} is not a number"))?;
    if !(0.0..=100.0).contains(&v) {
        return Err(format!("{v} is not a percentage between 0 and 100"));
    }
    Ok(v)
}

/// What the sink does with every attempt of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fate {
    /// `200` at once.
    Deliver,
    /// `503` on the first attempt, `200` afterwards.
    Transient,
    /// `429` with `Retry-After: 1` on the first attempt, `200` afterwards.
    RateLimited,
    /// `400` on every attempt.
    Permanent,
    /// `503` on every attempt.
    AlwaysFails,
}

/// The shares of deliberate failures, in basis points (1/100 of a percent), adding up to at
/// most 100 %; the default fails nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rules {
    /// Answered `400` on every attempt.
    permanent_bp: u32,
    /// Answered `503` on every attempt.
    always_bp: u32,
    /// Answered `503` on the first attempt.
    transient_bp: u32,
    /// Answered `429` with `Retry-After: 1` on the first attempt.
    rate_limited_bp: u32,
}

/// Basis points in 100 %.
const ALL_BP: u32 = 10_000;

/// Basis points of a percentage, which is clamped to 0..=100 first so the result fits.
fn basis_points(pct: f64) -> u32 {
    (pct.clamp(0.0, 100.0) * 100.0).round() as u32
}

impl Rules {
    /// Rules from percentages (each 0–100, as [`parse_percent`] guarantees): first attempt `503`,
    /// every attempt `400`, every attempt `503`. `None` when they add up to more than 100 %;
    /// the caller names its own options in the error.
    pub fn new(transient_pct: f64, permanent_pct: f64, always_pct: f64) -> Option<Self> {
        let rules = Self {
            permanent_bp: basis_points(permanent_pct),
            always_bp: basis_points(always_pct),
            transient_bp: basis_points(transient_pct),
            rate_limited_bp: 0,
        };
        (rules.failing_bp() <= ALL_BP).then_some(rules)
    }

    /// The same rules with `pct` percent answered `429 Retry-After: 1` on the first attempt,
    /// shrunk to what the other shares leave rather than refused: the share only shows
    /// `Retry-After` at work.
    pub fn with_rate_limited(self, pct: f64) -> Self {
        let others = self.failing_bp() - self.rate_limited_bp;
        Self {
            rate_limited_bp: basis_points(pct).min(ALL_BP - others),
            ..self
        }
    }

    /// The share of messages with `fate`, in basis points.
    pub fn basis_points(&self, fate: Fate) -> u32 {
        match fate {
            Fate::Deliver => ALL_BP - self.failing_bp(),
            Fate::Transient => self.transient_bp,
            Fate::RateLimited => self.rate_limited_bp,
            Fate::Permanent => self.permanent_bp,
            Fate::AlwaysFails => self.always_bp,
        }
    }

    fn failing_bp(&self) -> u32 {
        self.permanent_bp + self.always_bp + self.transient_bp + self.rate_limited_bp
    }

    /// The fate of the message with this idempotency key: a stable function of the key, so the
    /// same key gets the same answers on every attempt, whichever worker delivers it.
    pub fn fate(&self, key: &str) -> Fate {
        let b = bucket(key);
        let mut edge = self.permanent_bp;
        if b < edge {
            return Fate::Permanent;
        }
        edge += self.always_bp;
        if b < edge {
            return Fate::AlwaysFails;
        }
        edge += self.transient_bp;
        if b < edge {
            return Fate::Transient;
        }
        edge += self.rate_limited_bp;
        if b < edge {
            return Fate::RateLimited;
        }
        Fate::Deliver
    }
}

/// 0..10_000, uniform over keys: FNV-1a, then a SplitMix64 finaliser, because FNV alone spreads
/// sequential ids (`job-1`, `job-2`, ...) poorly over the low digits.
fn bucket(key: &str) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    // The remainder is below 10_000, so it fits.
    (h % u64::from(ALL_BP)) as u32
}

/// One answer of the sink: status, an optional `Retry-After`, and a short body for whoever
/// reads the worker's error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The `Retry-After` header's value, if any.
    pub retry_after: Option<&'static str>,
    /// The response body.
    pub body: &'static str,
}

impl Answer {
    /// Whether the answer is a 2xx (the message counts as delivered).
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

const DELIVERED: Answer = Answer {
    status: 200,
    retry_after: None,
    body: "delivered\n",
};

/// What the sink answers to attempt `attempt` (1-based; 0 counts as the first) of a message
/// with `fate`.
pub fn answer(fate: Fate, attempt: u32) -> Answer {
    let first = attempt <= 1;
    match fate {
        Fate::Deliver => DELIVERED,
        Fate::Transient | Fate::RateLimited if !first => DELIVERED,
        Fate::Transient => Answer {
            status: 503,
            retry_after: None,
            body: "courier sink: provider briefly unavailable (first attempt fails on purpose)\n",
        },
        Fate::RateLimited => Answer {
            status: 429,
            retry_after: Some("1"),
            body: "courier sink: rate limited, retry after 1 second (first attempt fails on purpose)\n",
        },
        Fate::Permanent => Answer {
            status: 400,
            retry_after: None,
            body: "courier sink: invalid recipient (every attempt fails on purpose)\n",
        },
        Fate::AlwaysFails => Answer {
            status: 503,
            retry_after: None,
            body: "courier sink: provider down (every attempt fails on purpose)\n",
        },
    }
}

/// The answer to one request: the whole decision, pure, so it is tested without a server.
///
/// `key` is the `Idempotency-Key` header (None when absent or empty), `attempt` the 1-based
/// `X-Courier-Attempt` (None when absent or unreadable: then it is taken as the first attempt).
pub fn decide(rules: &Rules, key: Option<&str>, attempt: Option<u32>) -> Answer {
    let Some(key) = key.filter(|k| !k.is_empty()) else {
        return Answer {
            status: 400,
            retry_after: None,
            body: "courier sink: no Idempotency-Key header\n",
        };
    };
    answer(rules.fate(key), attempt.unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(transient: f64, permanent: f64) -> Rules {
        Rules::new(transient, permanent, 0.0).unwrap_or_else(|| panic!("valid shares"))
    }

    /// The first key, among `job-0`, `job-1`, ..., with this fate.
    fn key_with(r: &Rules, fate: Fate) -> String {
        (0..100_000)
            .map(|i| format!("job-{i}"))
            .find(|k| r.fate(k) == fate)
            .unwrap_or_else(|| panic!("no key with fate {fate:?}"))
    }

    #[test]
    fn no_failures_by_default_means_200_for_every_key() {
        let r = rules(0.0, 0.0);
        assert_eq!(r, Rules::default());
        for i in 0..1_000 {
            let key = format!("job-{i}");
            assert_eq!(decide(&r, Some(&key), Some(1)).status, 200);
        }
    }

    #[test]
    fn transient_fails_the_first_attempt_only() {
        let r = rules(30.0, 10.0);
        let key = key_with(&r, Fate::Transient);
        assert_eq!(decide(&r, Some(&key), Some(1)).status, 503);
        assert_eq!(
            decide(&r, Some(&key), None).status,
            503,
            "no header = first"
        );
        assert_eq!(decide(&r, Some(&key), Some(2)).status, 200);
        assert_eq!(decide(&r, Some(&key), Some(7)).status, 200);
    }

    #[test]
    fn permanent_fails_every_attempt() {
        let r = rules(30.0, 10.0);
        let key = key_with(&r, Fate::Permanent);
        for attempt in 1..=6 {
            assert_eq!(decide(&r, Some(&key), Some(attempt)).status, 400);
        }
    }

    #[test]
    fn missing_or_empty_key_is_400() {
        let r = rules(0.0, 0.0);
        assert_eq!(decide(&r, None, Some(1)).status, 400);
        assert_eq!(decide(&r, Some(""), Some(1)).status, 400);
        assert!(decide(&r, None, None).body.contains("Idempotency-Key"));
    }

    #[test]
    fn fates_are_stable_and_close_to_the_shares() {
        let r = rules(15.0, 5.0);
        let n = 20_000;
        let (mut transient, mut permanent) = (0, 0);
        for i in 0..n {
            let key = format!("m-{i}");
            let fate = r.fate(&key);
            assert_eq!(fate, r.fate(&key), "same key, same fate");
            match fate {
                Fate::Transient => transient += 1,
                Fate::Permanent => permanent += 1,
                _ => {}
            }
        }
        // 15 % and 5 % of 20 000, within 1 percentage point.
        assert!((2_800..=3_200).contains(&transient), "{transient}");
        assert!((800..=1_200).contains(&permanent), "{permanent}");
    }

    #[test]
    fn full_shares_leave_nothing_to_chance() {
        let all_permanent = rules(0.0, 100.0);
        let all_transient = rules(100.0, 0.0);
        for i in 0..500 {
            let key = format!("k{i}");
            assert_eq!(all_permanent.fate(&key), Fate::Permanent);
            assert_eq!(all_transient.fate(&key), Fate::Transient);
        }
    }

    #[test]
    fn shares_over_100_percent_are_refused_and_429_shrinks_to_fit() {
        assert!(Rules::new(60.0, 50.0, 0.0).is_none());
        assert!(Rules::new(50.0, 40.0, 11.0).is_none());
        assert!(Rules::new(50.0, 50.0, 0.0).is_some());
        let full = rules(90.0, 10.0).with_rate_limited(1.0);
        assert_eq!(full.basis_points(Fate::RateLimited), 0);
        let room = rules(90.0, 9.5).with_rate_limited(1.0);
        assert_eq!(room.basis_points(Fate::RateLimited), 50);
        assert_eq!(room.basis_points(Fate::Deliver), 0);
        let some = rules(15.0, 3.0).with_rate_limited(1.0);
        assert_eq!(some.basis_points(Fate::RateLimited), 100);
        assert_eq!(some.basis_points(Fate::Deliver), 8_100);
    }

    #[test]
    fn percentages_parse_with_or_without_a_sign() {
        assert_eq!(parse_percent("12.5"), Ok(12.5));
        assert_eq!(parse_percent("3%"), Ok(3.0));
        assert_eq!(parse_percent("2.5%"), Ok(2.5));
        assert!(parse_percent("101").is_err());
        assert!(parse_percent("-1").is_err());
        assert!(parse_percent("lots").is_err());
    }

    #[test]
    fn answers_follow_the_attempt() {
        assert_eq!(answer(Fate::Transient, 1).status, 503);
        assert_eq!(answer(Fate::Transient, 2).status, 200);
        assert_eq!(answer(Fate::RateLimited, 1).status, 429);
        assert_eq!(answer(Fate::RateLimited, 1).retry_after, Some("1"));
        assert_eq!(answer(Fate::RateLimited, 2).status, 200);
        assert_eq!(answer(Fate::AlwaysFails, 9).status, 503);
        assert_eq!(answer(Fate::Permanent, 1).status, 400);
        assert!(answer(Fate::Deliver, 1).is_success());
        assert!(!answer(Fate::AlwaysFails, 1).is_success());
    }
}
