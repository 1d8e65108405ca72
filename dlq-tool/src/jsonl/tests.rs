use super::*;

fn every_type() -> FieldTable {
    let mut nested = FieldTable::default();
    nested.insert("n".into(), AMQPValue::ShortInt(-7));
    nested.insert(
        "deep".into(),
        AMQPValue::FieldArray(FieldArray::from(vec![
            AMQPValue::Void,
            AMQPValue::Boolean(false),
        ])),
    );
    let mut t = FieldTable::default();
    let mut put = |k: &str, v: AMQPValue| {
        t.insert(k.into(), v);
    };
    put("bool", AMQPValue::Boolean(true));
    put("i8", AMQPValue::ShortShortInt(-128));
    put("u8", AMQPValue::ShortShortUInt(255));
    put("i16", AMQPValue::ShortInt(i16::MIN));
    put("u16", AMQPValue::ShortUInt(u16::MAX));
    put("i32", AMQPValue::LongInt(i32::MIN));
    put("u32", AMQPValue::LongUInt(u32::MAX));
    put("i64", AMQPValue::LongLongInt(i64::MIN));
    put("f32", AMQPValue::Float(0.1));
    put("f32-tiny", AMQPValue::Float(f32::MIN_POSITIVE / 3.0));
    put("f64", AMQPValue::Double(-0.0));
    put("f64-pi", AMQPValue::Double(std::f64::consts::PI));
    put("inf", AMQPValue::Double(f64::INFINITY));
    put("ninf", AMQPValue::Float(f32::NEG_INFINITY));
    put(
        "dec",
        AMQPValue::DecimalValue(DecimalValue {
            scale: 3,
            value: 12345,
        }),
    );
    put("str", AMQPValue::LongString("héllo\n\"x\"".into()));
    put(
        "bin-str",
        AMQPValue::LongString(vec![0xff, 0x00, 0xfe].into()),
    );
    put("short", AMQPValue::ShortString("s".into()));
    put("ts", AMQPValue::Timestamp(1_700_000_000));
    put("bytes", AMQPValue::ByteArray(vec![0, 1, 2, 255].into()));
    put("void", AMQPValue::Void);
    put("table", AMQPValue::FieldTable(nested));
    put(
        "array",
        AMQPValue::FieldArray(FieldArray::from(vec![
            AMQPValue::LongLongInt(1),
            AMQPValue::LongString("two".into()),
        ])),
    );
    t
}

fn props() -> BasicProperties {
    BasicProperties::default()
        .with_message_id("m-1".into())
        .with_content_type("application/json".into())
        .with_content_encoding("identity".into())
        .with_delivery_mode(2)
        .with_priority(7)
        .with_correlation_id("c".into())
        .with_reply_to("r".into())
        .with_expiration("60000".into())
        .with_timestamp(1_700_000_001)
        .with_type("notification".into())
        .with_user_id("guest".into())
        .with_app_id("app".into())
        .with_cluster_id("cl".into())
        .with_headers(every_type())
}

#[test]
fn every_type_and_property_round_trips_exactly() {
    for body in [
        br#"{"to":"a"}"#.to_vec(),
        vec![0xde, 0xad, 0xbe, 0xef],
        Vec::new(),
    ] {
        let line = encode(&Origin::default(), &props(), &body, json!({"reason": "x"}));
        assert!(!line.contains('\n'), "one line");
        let r = decode(&line).expect("decodes");
        assert_eq!(r.body, body);
        assert_eq!(r.properties, props());
    }
}

#[test]
fn float_bits_survive() {
    for f in [0.1f32, 1.0e-45, f32::MAX, -3.402_823_5e38, 16_777_217.0] {
        let v = decode_value("x", &encode_value(&AMQPValue::Float(f))).expect("ok");
        assert_eq!(v, AMQPValue::Float(f));
    }
    let v = decode_value("x", &encode_value(&AMQPValue::Double(f64::NAN))).expect("ok");
    assert!(matches!(v, AMQPValue::Double(f) if f.is_nan()));
    let v = decode_value("x", &encode_value(&AMQPValue::Double(-0.0))).expect("ok");
    assert!(matches!(v, AMQPValue::Double(f) if f == 0.0 && f.is_sign_negative()));
}

#[test]
fn absent_headers_stay_absent() {
    let p = BasicProperties::default().with_message_id("m".into());
    let r = decode(&encode(&Origin::default(), &p, b"x", Value::Null)).expect("ok");
    assert_eq!(r.properties, p);
    assert!(r.properties.headers().is_none());
}

#[test]
fn untyped_scalars_are_accepted_on_import() {
    let line = r#"{"format":"courier-dlq/1","headers":{"a":"x","b":true,"c":3,"d":1.5,"e":null},"body":"{}"}"#;
    let r = decode(line).expect("ok");
    let h = r.properties.headers().clone().unwrap_or_default();
    assert_eq!(h.inner().get("a"), Some(&AMQPValue::LongString("x".into())));
    assert_eq!(h.inner().get("b"), Some(&AMQPValue::Boolean(true)));
    assert_eq!(h.inner().get("c"), Some(&AMQPValue::LongLongInt(3)));
    assert_eq!(h.inner().get("d"), Some(&AMQPValue::Double(1.5)));
    assert_eq!(h.inner().get("e"), Some(&AMQPValue::Void));
}

#[test]
fn malformed_lines_say_where_and_why() {
    let cases = [
        ("not json", "line", "not JSON"),
        ("[1]", "line", "JSON object"),
        (r#"{"body":"x"}"#, "format", "missing"),
        (
            r#"{"format":"courier-dlq/9","body":"x"}"#,
            "format",
            "not supported",
        ),
        (r#"{"format":"courier-dlq/1"}"#, "body", "missing"),
        (
            r#"{"format":"courier-dlq/1","body":"x","body_encoding":"base64"}"#,
            "body",
            "base64",
        ),
        (
            r#"{"format":"courier-dlq/1","body":"x","properties":{"priority":300}}"#,
            "properties.priority",
            "does not fit",
        ),
        (
            r#"{"format":"courier-dlq/1","body":"x","properties":{"prio":1}}"#,
            "properties.prio",
            "unknown property",
        ),
        (
            r#"{"format":"courier-dlq/1","body":"x","headers":{"a":{"type":"i8","value":200}}}"#,
            "headers.a",
            "does not fit in i8",
        ),
        (
            r#"{"format":"courier-dlq/1","body":"x","headers":{"a":{"type":"int"}}}"#,
            "headers.a",
            "unknown type",
        ),
        (
            r#"{"format":"courier-dlq/1","body":"x","headers":{"t":{"type":"table","value":{"k":{"type":"bytes","base64":"!!"}}}}}"#,
            "headers.t.k",
            "invalid base64",
        ),
        (
            r#"{"format":"courier-dlq/1","body":"x","headers":{"a":{"type":"array","value":[1,{"type":"f32","value":"x"}]}}}"#,
            "headers.a[1]",
            "not a float",
        ),
    ];
    for (line, at, why) in cases {
        let e = decode(line).expect_err(line);
        assert_eq!(e.at, at, "{line}: {e}");
        assert!(e.reason.contains(why), "{line}: {e}");
    }
}
