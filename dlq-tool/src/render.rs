//! AMQP field values named and shown for people: the type names that `show` and the export
//! format both use (so both call a type the same thing), header values rendered readably, and
//! epoch milliseconds as dates.
//!
//! These are `courier-dlq`'s words for what it prints; the library only reads and writes the
//! values, so they live here.

use lapin::types::AMQPValue;
use std::time::Duration;

/// The name the tool uses for an AMQP field type (`show` and the export format agree on it).
pub fn type_name(v: &AMQPValue) -> &'static str {
    match v {
        AMQPValue::Boolean(_) => "bool",
        AMQPValue::ShortShortInt(_) => "i8",
        AMQPValue::ShortShortUInt(_) => "u8",
        AMQPValue::ShortInt(_) => "i16",
        AMQPValue::ShortUInt(_) => "u16",
        AMQPValue::LongInt(_) => "i32",
        AMQPValue::LongUInt(_) => "u32",
        AMQPValue::LongLongInt(_) => "i64",
        AMQPValue::Float(_) => "f32",
        AMQPValue::Double(_) => "f64",
        AMQPValue::DecimalValue(_) => "decimal",
        AMQPValue::ShortString(_) => "short-string",
        AMQPValue::LongString(_) => "string",
        AMQPValue::FieldArray(_) => "array",
        AMQPValue::Timestamp(_) => "timestamp",
        AMQPValue::FieldTable(_) => "table",
        AMQPValue::ByteArray(_) => "bytes",
        AMQPValue::Void => "void",
    }
}

/// Formats epoch milliseconds as RFC 3339 (UTC, seconds), or the number if out of range.
pub fn format_time_ms(ms: i64) -> String {
    match u64::try_from(ms) {
        Ok(ms) => {
            humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(ms))
                .to_string()
        }
        Err(_) => ms.to_string(),
    }
}

/// A readable rendering of a header value: strings quoted, timestamps as dates, tables and
/// arrays inline, byte arrays as a length and a hex prefix.
pub fn display_value(v: &AMQPValue) -> String {
    match v {
        AMQPValue::LongString(s) => match std::str::from_utf8(s.as_bytes()) {
            Ok(t) => format!("{t:?}"),
            Err(_) => format!("<{} bytes, not UTF-8>", s.as_bytes().len()),
        },
        AMQPValue::ShortString(s) => format!("{:?}", s.as_str()),
        AMQPValue::Timestamp(t) => {
            let when = i64::try_from(*t)
                .ok()
                .and_then(|s| s.checked_mul(1000))
                .map(format_time_ms)
                .unwrap_or_default();
            format!("{t} ({when})")
        }
        AMQPValue::DecimalValue(d) => {
            let scale = u32::from(d.scale);
            match 10u64.checked_pow(scale) {
                Some(div) if scale > 0 => {
                    let v = u64::from(d.value);
                    format!("{}.{:0width$}", v / div, v % div, width = scale as usize)
                }
                _ => format!("{} (scale {})", d.value, d.scale),
            }
        }
        AMQPValue::FieldArray(a) => {
            let items: Vec<String> = a.as_slice().iter().map(display_value).collect();
            format!("[{}]", items.join(", "))
        }
        AMQPValue::FieldTable(t) => {
            let items: Vec<String> = t
                .inner()
                .iter()
                .map(|(k, v)| format!("{}: {}", k.as_str(), display_value(v)))
                .collect();
            format!("{{{}}}", items.join(", "))
        }
        AMQPValue::ByteArray(b) => {
            let bytes = b.as_slice();
            let hex: String = bytes.iter().take(16).map(|b| format!("{b:02x}")).collect();
            let more = if bytes.len() > 16 { "…" } else { "" };
            format!("<{} bytes: {hex}{more}>", bytes.len())
        }
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortShortInt(i) => i.to_string(),
        AMQPValue::ShortShortUInt(i) => i.to_string(),
        AMQPValue::ShortInt(i) => i.to_string(),
        AMQPValue::ShortUInt(i) => i.to_string(),
        AMQPValue::LongInt(i) => i.to_string(),
        AMQPValue::LongUInt(i) => i.to_string(),
        AMQPValue::LongLongInt(i) => i.to_string(),
        AMQPValue::Float(f) => f.to_string(),
        AMQPValue::Double(f) => f.to_string(),
        AMQPValue::Void => "void".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{long, table};
    use lapin::types::FieldArray;

    #[test]
    fn values_are_named_and_shown_readably() {
        assert_eq!(type_name(&AMQPValue::ShortInt(1)), "i16");
        assert_eq!(type_name(&AMQPValue::Timestamp(1)), "timestamp");
        assert_eq!(
            display_value(&AMQPValue::DecimalValue(lapin::types::DecimalValue {
                scale: 2,
                value: 12345
            })),
            "123.45"
        );
        assert_eq!(
            display_value(&AMQPValue::Timestamp(0)),
            "0 (1970-01-01T00:00:00Z)"
        );
        let nested = AMQPValue::FieldTable(table(&[(
            "a",
            AMQPValue::FieldArray(FieldArray::from(vec![long("x"), AMQPValue::Void])),
        )]));
        assert_eq!(display_value(&nested), "{a: [\"x\", void]}");
        assert_eq!(
            display_value(&AMQPValue::ByteArray(vec![0xde, 0xad].into())),
            "<2 bytes: dead>"
        );
    }
}
