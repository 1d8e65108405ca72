//! The export file format: one self-describing JSON object a line, exact for AMQP.
//!
//! ```json
//! {"format":"courier-dlq/1","queue":"notifications.dlq","exchange":"notifications.dlx",
//!  "routing_key":"email","redelivered":false,
//!  "properties":{"message_id":"m-1","content_type":"application/json","delivery_mode":2,
//!                "priority":5,"timestamp":1700000000},
//!  "headers":{"x-courier-attempts":{"type":"i64","value":5},
//!             "x-death":{"type":"array","value":[{"type":"table","value":{...}}]}},
//!  "body_encoding":"utf8","body":"{\"to\":\"ada@example.com\"}",
//!  "summary":{"reason":"max-attempts","error":"HTTP 503 ...", ...}}
//! ```
//!
//! Why it looks like this:
//! - Every header value carries its AMQP type (`i8` … `i64`, `u8` … `u32`, `f32`, `f64`,
//!   `decimal`, `bool`, `string`, `bytes`, `timestamp`, `table`, `array`, `void`): a JSON number
//!   alone cannot say whether it was a timestamp or an `i16`, and consumers in other languages
//!   dispatch on those types. Export tools that flattened them silently changed messages.
//! - Floats are written as the exact `f64` (an `f32` widened losslessly), so they read back bit
//!   for bit; NaN and infinities, which JSON lacks, are the strings `"NaN"`, `"inf"`, `"-inf"`.
//! - Bodies are text when they are valid UTF-8 (readable, greppable) and base64 otherwise;
//!   either way the bytes come back unchanged. `string` headers that are not UTF-8 use
//!   `"base64"` the same way.
//! - `properties` holds every AMQP basic property that is set, with its exact value; a property
//!   that is absent is omitted, so it stays absent.
//! - `queue`, `exchange`, `routing_key`, `redelivered` and `summary` describe where and what the
//!   message was; import ignores them (and any other top-level key a later version may add).
//!
//! Import is lenient where that is unambiguous, for hand-written lines: a plain JSON string,
//! boolean, integer, float or `null` as a header value means `string`, `bool`, `i64`, `f64`,
//! `void`.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use lapin::types::{
    AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, LongString, ShortString,
};
use lapin::BasicProperties;
use serde::Serialize;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// The `format` of every line this version writes.
pub const FORMAT: &str = "courier-dlq/1";

/// AMQP short strings (property values, table keys) are at most 255 bytes.
const MAX_SHORT: usize = 255;

/// Where a message was when it was exported; written for readers, ignored by import.
#[derive(Debug, Clone, Default)]
pub struct Origin<'a> {
    /// The queue it was exported from.
    pub queue: &'a str,
    /// The exchange of its delivery.
    pub exchange: &'a str,
    /// The routing key of its delivery.
    pub routing_key: &'a str,
    /// Whether the broker had delivered it before.
    pub redelivered: bool,
}

/// A message read back from a line.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Every property, headers included.
    pub properties: BasicProperties,
    /// The body bytes.
    pub body: Vec<u8>,
}

/// Why a line cannot be imported: where in the line, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{at}: {reason}")]
pub struct DecodeError {
    /// A path into the object, e.g. `headers.x-death[0].count`.
    pub at: String,
    /// What is wrong.
    pub reason: String,
}

fn err(at: impl Into<String>, reason: impl Into<String>) -> DecodeError {
    DecodeError {
        at: at.into(),
        reason: reason.into(),
    }
}

// ---------------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------------

fn float(f: f64) -> Value {
    if f.is_nan() {
        json!("NaN")
    } else if f == f64::INFINITY {
        json!("inf")
    } else if f == f64::NEG_INFINITY {
        json!("-inf")
    } else {
        json!(f)
    }
}

/// A typed value as written: `type` first, for people reading the file. (Serialized through
/// these structs rather than `serde_json::Value`, whose maps sort their keys.)
#[derive(Serialize)]
pub struct Typed {
    #[serde(rename = "type")]
    ty: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    scale: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<TypedValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    base64: Option<String>,
}

/// The `value` of a [`Typed`].
#[derive(Serialize)]
#[serde(untagged)]
pub enum TypedValue {
    /// A scalar.
    Json(Value),
    /// An array's items.
    Array(Vec<Typed>),
    /// A table's entries (sorted by name, as AMQP tables are).
    Table(BTreeMap<String, Typed>),
}

/// A header value with its type.
pub fn typed(v: &AMQPValue) -> Typed {
    let ty = crate::render::type_name(v);
    let scalar = |value: Value| Typed {
        ty,
        scale: None,
        value: Some(TypedValue::Json(value)),
        base64: None,
    };
    let bytes = |b: &[u8]| Typed {
        ty,
        scale: None,
        value: None,
        base64: Some(B64.encode(b)),
    };
    match v {
        AMQPValue::Boolean(b) => scalar(json!(b)),
        AMQPValue::ShortShortInt(i) => scalar(json!(i)),
        AMQPValue::ShortShortUInt(i) => scalar(json!(i)),
        AMQPValue::ShortInt(i) => scalar(json!(i)),
        AMQPValue::ShortUInt(i) => scalar(json!(i)),
        AMQPValue::LongInt(i) => scalar(json!(i)),
        AMQPValue::LongUInt(i) => scalar(json!(i)),
        AMQPValue::LongLongInt(i) => scalar(json!(i)),
        AMQPValue::Float(f) => scalar(float(f64::from(*f))),
        AMQPValue::Double(f) => scalar(float(*f)),
        AMQPValue::DecimalValue(d) => Typed {
            ty,
            scale: Some(d.scale),
            value: Some(TypedValue::Json(json!(d.value))),
            base64: None,
        },
        AMQPValue::ShortString(s) => scalar(json!(s.as_str())),
        AMQPValue::LongString(s) => match std::str::from_utf8(s.as_bytes()) {
            Ok(text) => scalar(json!(text)),
            Err(_) => bytes(s.as_bytes()),
        },
        AMQPValue::FieldArray(a) => Typed {
            ty,
            scale: None,
            value: Some(TypedValue::Array(a.as_slice().iter().map(typed).collect())),
            base64: None,
        },
        AMQPValue::Timestamp(t) => scalar(json!(t)),
        AMQPValue::FieldTable(t) => Typed {
            ty,
            scale: None,
            value: Some(TypedValue::Table(typed_table(t))),
            base64: None,
        },
        AMQPValue::ByteArray(b) => bytes(b.as_slice()),
        AMQPValue::Void => Typed {
            ty,
            scale: None,
            value: None,
            base64: None,
        },
    }
}

/// A table's entries, typed.
pub fn typed_table(t: &FieldTable) -> BTreeMap<String, Typed> {
    t.inner()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), typed(v)))
        .collect()
}

/// A header value with its type, as a JSON value.
#[cfg(test)]
pub fn encode_value(v: &AMQPValue) -> Value {
    serde_json::to_value(typed(v)).unwrap_or(Value::Null)
}

/// Every basic property that is set, in the AMQP order (`message_id` first for readers).
#[derive(Serialize, Default)]
struct Props<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    message_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content_type: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content_encoding: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    delivery_mode: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    priority: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    correlation_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reply_to: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expiration: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timestamp: Option<u64>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    app_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster_id: Option<&'a str>,
}

fn properties_of(p: &BasicProperties) -> Props<'_> {
    fn st(v: &Option<ShortString>) -> Option<&str> {
        v.as_ref().map(ShortString::as_str)
    }
    Props {
        message_id: st(p.message_id()),
        content_type: st(p.content_type()),
        content_encoding: st(p.content_encoding()),
        delivery_mode: *p.delivery_mode(),
        priority: *p.priority(),
        correlation_id: st(p.correlation_id()),
        reply_to: st(p.reply_to()),
        expiration: st(p.expiration()),
        timestamp: *p.timestamp(),
        kind: st(p.kind()),
        user_id: st(p.user_id()),
        app_id: st(p.app_id()),
        cluster_id: st(p.cluster_id()),
    }
}

/// One line as written, fields in reading order.
#[derive(Serialize)]
struct LineOut<'a> {
    format: &'static str,
    queue: &'a str,
    exchange: &'a str,
    routing_key: &'a str,
    redelivered: bool,
    properties: Props<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    headers: Option<BTreeMap<String, Typed>>,
    body_encoding: &'static str,
    body: std::borrow::Cow<'a, str>,
    #[serde(skip_serializing_if = "Value::is_null")]
    summary: Value,
}

/// One line (without the newline) for a message; `summary` is informational (`null` to omit).
pub fn encode(
    origin: &Origin<'_>,
    props_: &BasicProperties,
    body: &[u8],
    summary: Value,
) -> String {
    let (body_encoding, body) = match std::str::from_utf8(body) {
        Ok(text) => ("utf8", std::borrow::Cow::Borrowed(text)),
        Err(_) => ("base64", std::borrow::Cow::Owned(B64.encode(body))),
    };
    let line = LineOut {
        format: FORMAT,
        queue: origin.queue,
        exchange: origin.exchange,
        routing_key: origin.routing_key,
        redelivered: origin.redelivered,
        properties: properties_of(props_),
        headers: props_.headers().as_ref().map(typed_table),
        body_encoding,
        body,
        summary,
    };
    // Serializing plain strings, numbers and maps with string keys cannot fail.
    serde_json::to_string(&line).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------------

const TYPES: &str =
    "bool, i8, u8, i16, u16, i32, u32, i64, f32, f64, decimal, string, short-string, bytes, timestamp, table, array, void";

fn int<T: TryFrom<i64> + TryFrom<u64>>(
    at: &str,
    ty: &str,
    v: Option<&Value>,
) -> Result<T, DecodeError> {
    let v = v.ok_or_else(|| err(at, format!("a {ty} needs a \"value\"")))?;
    let parsed = if let Some(i) = v.as_i64() {
        T::try_from(i).ok()
    } else if let Some(u) = v.as_u64() {
        T::try_from(u).ok()
    } else {
        return Err(err(at, format!("a {ty} value must be an integer, not {v}")));
    };
    parsed.ok_or_else(|| err(at, format!("{v} does not fit in {ty}")))
}

fn parse_float(at: &str, v: Option<&Value>) -> Result<f64, DecodeError> {
    match v {
        Some(Value::Number(n)) => n
            .as_f64()
            .ok_or_else(|| err(at, format!("{n} is not a float"))),
        Some(Value::String(s)) => match s.as_str() {
            "NaN" => Ok(f64::NAN),
            "inf" => Ok(f64::INFINITY),
            "-inf" => Ok(f64::NEG_INFINITY),
            other => Err(err(
                at,
                format!("{other:?} is not a float (numbers, \"NaN\", \"inf\" or \"-inf\")"),
            )),
        },
        Some(other) => Err(err(at, format!("{other} is not a float"))),
        None => Err(err(at, "a float needs a \"value\"")),
    }
}

fn base64_field(at: &str, o: &Map<String, Value>) -> Result<Vec<u8>, DecodeError> {
    let s = o
        .get("base64")
        .and_then(Value::as_str)
        .ok_or_else(|| err(at, "expected \"base64\": a base64 string"))?;
    B64.decode(s)
        .map_err(|e| err(at, format!("invalid base64: {e}")))
}

fn short(at: &str, s: &str) -> Result<ShortString, DecodeError> {
    if s.len() > MAX_SHORT {
        return Err(err(
            at,
            format!(
                "{} bytes; AMQP short strings are at most {MAX_SHORT}",
                s.len()
            ),
        ));
    }
    Ok(ShortString::from(s))
}

/// A typed value (or an untyped JSON scalar, see the module docs).
pub fn decode_value(at: &str, v: &Value) -> Result<AMQPValue, DecodeError> {
    let o = match v {
        Value::Object(o) => o,
        Value::String(s) => return Ok(AMQPValue::LongString(LongString::from(s.as_str()))),
        Value::Bool(b) => return Ok(AMQPValue::Boolean(*b)),
        Value::Null => return Ok(AMQPValue::Void),
        Value::Number(n) => {
            return Ok(match n.as_i64() {
                Some(i) => AMQPValue::LongLongInt(i),
                None => AMQPValue::Double(n.as_f64().unwrap_or(f64::NAN)),
            })
        }
        Value::Array(_) => {
            return Err(err(
                at,
                "an untyped array is ambiguous; write {\"type\":\"array\",\"value\":[...]}",
            ))
        }
    };
    let ty = o.get("type").and_then(Value::as_str).ok_or_else(|| {
        err(
            at,
            format!("expected {{\"type\": ..., \"value\": ...}} with a type among {TYPES}"),
        )
    })?;
    let value = o.get("value");
    Ok(match ty {
        "bool" => AMQPValue::Boolean(
            value
                .and_then(Value::as_bool)
                .ok_or_else(|| err(at, "a bool value must be true or false"))?,
        ),
        "i8" => AMQPValue::ShortShortInt(int(at, ty, value)?),
        "u8" => AMQPValue::ShortShortUInt(int(at, ty, value)?),
        "i16" => AMQPValue::ShortInt(int(at, ty, value)?),
        "u16" => AMQPValue::ShortUInt(int(at, ty, value)?),
        "i32" => AMQPValue::LongInt(int(at, ty, value)?),
        "u32" => AMQPValue::LongUInt(int(at, ty, value)?),
        "i64" => AMQPValue::LongLongInt(int(at, ty, value)?),
        "timestamp" => AMQPValue::Timestamp(int(at, ty, value)?),
        // Exact: an f32 was written widened to f64, so narrowing gives the same bits back.
        "f32" => AMQPValue::Float(parse_float(at, value)? as f32),
        "f64" => AMQPValue::Double(parse_float(at, value)?),
        "decimal" => AMQPValue::DecimalValue(DecimalValue {
            scale: int(at, "decimal scale", o.get("scale"))?,
            value: int(at, "decimal value", value)?,
        }),
        "string" => match value {
            Some(Value::String(s)) => AMQPValue::LongString(LongString::from(s.as_str())),
            Some(other) => {
                return Err(err(
                    at,
                    format!("a string value must be a JSON string, not {other}"),
                ))
            }
            None => AMQPValue::LongString(LongString::from(base64_field(at, o)?)),
        },
        "short-string" => match value.and_then(Value::as_str) {
            Some(s) => AMQPValue::ShortString(short(at, s)?),
            None => return Err(err(at, "a short-string value must be a JSON string")),
        },
        "bytes" => AMQPValue::ByteArray(ByteArray::from(base64_field(at, o)?)),
        "void" => AMQPValue::Void,
        "array" => {
            let items = value
                .and_then(Value::as_array)
                .ok_or_else(|| err(at, "an array value must be a JSON array"))?;
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                out.push(decode_value(&format!("{at}[{i}]"), item)?);
            }
            AMQPValue::FieldArray(FieldArray::from(out))
        }
        "table" => {
            let t = value
                .and_then(Value::as_object)
                .ok_or_else(|| err(at, "a table value must be a JSON object"))?;
            AMQPValue::FieldTable(decode_table(at, t)?)
        }
        other => {
            return Err(err(
                at,
                format!("unknown type {other:?}; expected one of {TYPES}"),
            ))
        }
    })
}

/// A JSON object of typed values as a table.
pub fn decode_table(at: &str, o: &Map<String, Value>) -> Result<FieldTable, DecodeError> {
    let mut m = BTreeMap::new();
    for (k, v) in o {
        let path = format!("{at}.{k}");
        m.insert(short(&path, k)?, decode_value(&path, v)?);
    }
    Ok(FieldTable::from(m))
}

fn decode_properties(o: &Map<String, Value>) -> Result<BasicProperties, DecodeError> {
    let mut p = BasicProperties::default();
    for (k, v) in o {
        let at = format!("properties.{k}");
        let text = || -> Result<ShortString, DecodeError> {
            let s = v
                .as_str()
                .ok_or_else(|| err(&at, format!("expected a string, not {v}")))?;
            short(&at, s)
        };
        p = match k.as_str() {
            "content_type" => p.with_content_type(text()?),
            "content_encoding" => p.with_content_encoding(text()?),
            "correlation_id" => p.with_correlation_id(text()?),
            "reply_to" => p.with_reply_to(text()?),
            "expiration" => p.with_expiration(text()?),
            "message_id" => p.with_message_id(text()?),
            "type" => p.with_type(text()?),
            "user_id" => p.with_user_id(text()?),
            "app_id" => p.with_app_id(text()?),
            "cluster_id" => p.with_cluster_id(text()?),
            "delivery_mode" => p.with_delivery_mode(int(&at, "u8", Some(v))?),
            "priority" => p.with_priority(int(&at, "u8", Some(v))?),
            "timestamp" => p.with_timestamp(int(&at, "u64", Some(v))?),
            "headers" => {
                return Err(err(&at, "headers go in the top-level \"headers\" object"));
            }
            other => {
                return Err(err(
                    &at,
                    format!("unknown property {other:?} (content_type, content_encoding, delivery_mode, priority, correlation_id, reply_to, expiration, message_id, timestamp, type, user_id, app_id, cluster_id)"),
                ))
            }
        };
    }
    Ok(p)
}

/// Reads one line.
///
/// # Errors
/// [`DecodeError`] saying where in the line and why: not JSON, not a `courier-dlq/1` record, a
/// property or header value of the wrong type, invalid base64.
pub fn decode(line: &str) -> Result<Record, DecodeError> {
    let v: Value = serde_json::from_str(line).map_err(|e| err("line", format!("not JSON: {e}")))?;
    let o = v
        .as_object()
        .ok_or_else(|| err("line", "expected a JSON object"))?;
    match o.get("format").and_then(Value::as_str) {
        Some(FORMAT) => {}
        Some(other) => {
            return Err(err(
                "format",
                format!("{other:?} is not supported (this courier-dlq reads {FORMAT:?})"),
            ))
        }
        None => {
            return Err(err(
                "format",
                format!("missing; a line written by `courier-dlq export` starts with {{\"format\":\"{FORMAT}\""),
            ))
        }
    }
    let mut props = match o.get("properties") {
        Some(Value::Object(p)) => decode_properties(p)?,
        None => BasicProperties::default(),
        Some(other) => {
            return Err(err(
                "properties",
                format!("expected an object, not {other}"),
            ))
        }
    };
    match o.get("headers") {
        Some(Value::Object(h)) => props = props.with_headers(decode_table("headers", h)?),
        None => {}
        Some(other) => return Err(err("headers", format!("expected an object, not {other}"))),
    }
    let body = o
        .get("body")
        .and_then(Value::as_str)
        .ok_or_else(|| err("body", "missing or not a string"))?;
    let body = match o.get("body_encoding").and_then(Value::as_str) {
        Some("utf8") | None => body.as_bytes().to_vec(),
        Some("base64") => B64
            .decode(body)
            .map_err(|e| err("body", format!("invalid base64: {e}")))?,
        Some(other) => {
            return Err(err(
                "body_encoding",
                format!("{other:?} is not \"utf8\" or \"base64\""),
            ))
        }
    };
    Ok(Record {
        properties: props,
        body,
    })
}

#[cfg(test)]
mod tests;
