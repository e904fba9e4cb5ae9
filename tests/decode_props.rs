//! Property tests of decoding (SPEC §1.1): any bytes, and any near-valid observation, give
//! exactly one outcome — an observation or one dead letter of the right kind — and never a
//! panic.

use bizra_dataflows::dead_letter::ErrorKind;
use bizra_dataflows::decode::{decode, decode_field_by_field, Limits};
use bizra_dataflows::pipeline::{decode_record, RawRecord};
use bizra_dataflows::testing::test_key;
use proptest::prelude::*;
use serde_json::{json, Value};

fn raw(bytes: Vec<u8>) -> RawRecord {
    RawRecord {
        bytes,
        input: None,
        position: 0,
        ingest_ms: 0,
        message_ms: None,
        broker_ms: None,
        oversize: None,
    }
}

fn valid() -> Value {
    json!({
        "id": "p-1", "data": "hello", "urgency": "batch",
        "context": {"stakeholders": ["a"], "potential_harms": [], "reversibility": 0.5},
        "features": [0.1, 0.2], "timestamp": "2026-01-01T00:00:00Z", "source": "s",
        "digest": "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    })
}

/// Replacement values of every JSON type.
fn any_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        ".{0,300}".prop_map(Value::String),
        prop::collection::vec(any::<i32>(), 0..5).prop_map(|v| json!(v)),
        Just(json!({"k": 1})),
    ]
}

const FIELDS: [&str; 11] = [
    "id",
    "data",
    "data_b64",
    "urgency",
    "context",
    "features",
    "timestamp",
    "source",
    "attestation",
    "digest",
    "signature",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_bytes_give_one_outcome_without_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let out = decode_record(raw(bytes.clone()), &Limits::default(), 1 << 20, u64::MAX, &test_key());
        if let Err(d) = out {
            prop_assert!(!d.message.is_empty());
            prop_assert!(d.raw_b64.len() >= bytes.len() * 4 / 3);
        }
    }

    #[test]
    fn near_valid_observations_fail_on_the_changed_field(field in 0..FIELDS.len(), v in any_value(), drop in any::<bool>()) {
        let mut obs = valid();
        let name = FIELDS[field];
        if drop {
            obs.as_object_mut().unwrap().remove(name);
        } else {
            obs[name] = v;
        }
        let bytes = serde_json::to_vec(&obs).unwrap();
        // The one-pass path and the field-by-field path agree on every input.
        prop_assert_eq!(decode(&bytes, &Limits::default()), decode_field_by_field(&bytes, &Limits::default()));
        match decode(&bytes, &Limits::default()) {
            Ok(o) => prop_assert_eq!(o.id.is_empty(), false),
            Err(e) => {
                let expected = [ErrorKind::MissingField, ErrorKind::InvalidField, ErrorKind::PayloadTooLarge];
                prop_assert!(expected.contains(&e.kind), "{:?}", e);
                let names_field = e.message.contains(name)
                    || (name == "data_b64" && e.message.contains("data"))
                    || (name == "data" && e.message.contains("data"));
                prop_assert!(names_field, "message {:?} does not name {}", e.message, name);
            }
        }
        // Removing a required field is always caught.
        if drop && (name == "id" || name == "data") {
            prop_assert!(decode(&bytes, &Limits::default()).is_err());
        }
    }

    #[test]
    fn context_values_of_the_wrong_type_are_invalid(key in prop::sample::select(vec![
        "stakeholders", "affected", "domain", "potential_benefits", "potential_harms", "reversibility",
        "intended_outcome", "constraints", "history", "cultural_context", "hidden_agenda"]), v in any_value()) {
        let mut obs = valid();
        obs["context"][key] = v;
        let bytes = serde_json::to_vec(&obs).unwrap();
        prop_assert_eq!(decode(&bytes, &Limits::default()), decode_field_by_field(&bytes, &Limits::default()));
        if let Err(e) = decode(&bytes, &Limits::default()) {
            prop_assert_eq!(e.kind, ErrorKind::InvalidField);
            prop_assert!(e.message.contains(key), "{}", e.message);
        }
    }
}

#[test]
fn not_json_and_not_object_are_told_apart() {
    let d = |b: &[u8]| decode(b, &Limits::default()).unwrap_err().kind;
    assert_eq!(d(b"{\"id\":"), ErrorKind::NotJson);
    assert_eq!(d(b"\xff\xfe"), ErrorKind::NotJson);
    assert_eq!(d(b"\"just a string\""), ErrorKind::NotObject);
    assert_eq!(d(b"null"), ErrorKind::NotObject);
}

#[test]
fn oversized_records_become_message_too_large() {
    let mut r = raw(b"{\"id\":\"x\"".to_vec());
    r.oversize = Some(5_000_000);
    let d = decode_record(r, &Limits::default(), 2 << 20, u64::MAX, &test_key()).unwrap_err();
    assert_eq!(d.error, ErrorKind::MessageTooLarge);
    assert!(d.message.contains("5000000"));
}
