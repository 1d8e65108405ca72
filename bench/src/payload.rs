//! The benchmark's message: a 512-byte JSON body with the sequence number and the publish time
//! at fixed offsets, and the same persistent properties for every client.
//!
//! Layout (always exactly [`BODY_BYTES`] bytes, valid JSON so Courier's worker accepts it):
//! `{"seq":"0000000042","ts":"00000000001234567890","pad":"xxx…"}`. The numbers are quoted
//! strings of fixed width (JSON forbids leading zeros in numbers), so a consumer reads them by
//! slicing instead of parsing JSON: the bench handler must stay "no-op" work, and the baseline
//! consumer does exactly the same reading, so neither side pays for a parser the other skips.

use lapin::BasicProperties;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Size of every body, the "~512 bytes".
pub const BODY_BYTES: usize = 512;

const SEQ_AT: usize = 8;
const SEQ_DIGITS: usize = 10;
const TS_AT: usize = SEQ_AT + SEQ_DIGITS + 8;
const TS_DIGITS: usize = 20;

/// The process-wide origin of body timestamps. Publisher and consumer live in the same process
/// (the Python peer and the child worker never read timestamps), so a monotonic clock is enough
/// and immune to wall-clock steps.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Time since [`epoch`], as written into bodies.
pub fn now_nanos() -> u64 {
    u64::try_from(epoch().elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// The body for message `seq`, stamped now.
pub fn body(seq: u64) -> Vec<u8> {
    let head = format!(
        "{{\"seq\":\"{seq:0width$}\",\"ts\":\"{ts:0tsw$}\",\"pad\":\"",
        width = SEQ_DIGITS,
        ts = now_nanos(),
        tsw = TS_DIGITS
    );
    let mut out = Vec::with_capacity(BODY_BYTES);
    out.extend_from_slice(head.as_bytes());
    out.resize(BODY_BYTES - 2, b'x');
    out.extend_from_slice(b"\"}");
    out
}

/// The message id of `seq`: what Courier uses as the idempotency key, and what the Python peer
/// and the DLQ export report back, so every scenario can count ids the same way.
pub fn message_id(seq: u64) -> String {
    seq.to_string()
}

/// Parses a message id written by [`message_id`].
pub fn seq_of_id(id: &str) -> Option<u64> {
    id.parse().ok()
}

/// Properties every client publishes with: persistent, JSON, with the id. No priority (the
/// queue has `x-max-priority`, so the broker still does its priority bookkeeping).
pub fn properties(seq: u64) -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_message_id(message_id(seq).as_str().into())
}

fn digits(bytes: &[u8]) -> Option<u64> {
    bytes.iter().try_fold(0u64, |acc, b| {
        b.is_ascii_digit()
            .then(|| acc.wrapping_mul(10).wrapping_add(u64::from(b - b'0')))
    })
}

/// What a consumer reads from a body: the sequence number and how long ago it was published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// The message's sequence number.
    pub seq: u64,
    /// Time from publish (body creation) until now.
    pub age: Duration,
}

/// Reads a body written by [`body`]; `None` for anything else.
pub fn read(body: &[u8]) -> Option<Stamp> {
    let seq = digits(body.get(SEQ_AT..SEQ_AT + SEQ_DIGITS)?)?;
    let ts = digits(body.get(TS_AT..TS_AT + TS_DIGITS)?)?;
    Some(Stamp {
        seq,
        age: Duration::from_nanos(now_nanos().saturating_sub(ts)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_512_bytes_of_json_and_read_back() {
        let b = body(42);
        assert_eq!(b.len(), BODY_BYTES);
        let v: serde_json::Value = serde_json::from_slice(&b).expect("valid JSON");
        assert_eq!(v["seq"], "0000000042");
        let stamp = read(&b).expect("readable");
        assert_eq!(stamp.seq, 42);
        assert!(stamp.age < Duration::from_secs(5));
        assert!(courier::envelope::validate_body(&b).is_ok());
    }

    #[test]
    fn foreign_bodies_are_not_read() {
        assert_eq!(read(b"{}"), None);
        assert_eq!(read(&[b'x'; 512]), None);
    }

    #[test]
    fn ids_round_trip() {
        assert_eq!(seq_of_id(&message_id(123)), Some(123));
        assert_eq!(seq_of_id("abc"), None);
    }
}
