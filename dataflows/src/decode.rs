//! Decoding (SPEC §1.1): raw record bytes → [`Observation`] or a [`DecodeError`] naming the
//! field and what was expected. Pure and total: it never panics on any input. It does not
//! score, verify or look at keys; it only enforces the wire format.

use base64::Engine;
use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use crate::bounds::{clip, ECHO_BYTES};
use crate::dead_letter::{DecodeError, ErrorKind};
use crate::observation::{EthicsContext, Observation, SignatureRef, Text, Urgency};

/// Size limits applied while decoding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted payload after base64 decoding (`limits.max_payload_bytes`).
    pub max_payload_bytes: usize,
    /// Most elements of a `context` string list (`limits.max_context_items`): a decoded
    /// element costs a 24-byte slot however short it is, so without a cap a 2 MiB record of
    /// one-letter strings would hold 12 MB.
    pub max_context_items: usize,
    /// Largest string of an observation besides `id` and the payload
    /// (`limits.max_text_bytes`): context values and list elements, `source`,
    /// `attestation`, `signature.key_id`.
    pub max_text_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_payload_bytes: 1 << 20,
            max_context_items: 1024,
            max_text_bytes: 4096,
        }
    }
}

/// Largest `id` in bytes.
pub const MAX_ID_BYTES: usize = 256;
/// Largest `features` vector.
pub const MAX_FEATURES: usize = 4096;

/// The top level as borrowed raw JSON per known field, so that each field's error can name
/// it. Unknown top-level fields are ignored (forward compatibility).
#[derive(Deserialize)]
struct RawObservation<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    #[serde(borrow)]
    data_b64: Option<&'a RawValue>,
    #[serde(borrow)]
    urgency: Option<&'a RawValue>,
    #[serde(borrow)]
    context: Option<&'a RawValue>,
    #[serde(borrow)]
    features: Option<&'a RawValue>,
    #[serde(borrow)]
    timestamp: Option<&'a RawValue>,
    #[serde(borrow)]
    source: Option<&'a RawValue>,
    #[serde(borrow)]
    attestation: Option<&'a RawValue>,
    #[serde(borrow)]
    digest: Option<&'a RawValue>,
    #[serde(borrow)]
    signature: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct RawContext<'a> {
    #[serde(borrow)]
    stakeholders: Option<&'a RawValue>,
    #[serde(borrow)]
    affected: Option<&'a RawValue>,
    #[serde(borrow)]
    domain: Option<&'a RawValue>,
    #[serde(borrow)]
    potential_benefits: Option<&'a RawValue>,
    #[serde(borrow)]
    potential_harms: Option<&'a RawValue>,
    #[serde(borrow)]
    reversibility: Option<&'a RawValue>,
    #[serde(borrow)]
    intended_outcome: Option<&'a RawValue>,
    #[serde(borrow)]
    constraints: Option<&'a RawValue>,
    #[serde(borrow)]
    history: Option<&'a RawValue>,
    #[serde(borrow)]
    cultural_context: Option<&'a RawValue>,
    #[serde(borrow)]
    hidden_agenda: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSignature<'a> {
    #[serde(borrow)]
    key_id: Option<&'a RawValue>,
    #[serde(borrow)]
    sig: Option<&'a RawValue>,
}

fn invalid(field: &str, expected: &str) -> DecodeError {
    DecodeError::new(
        ErrorKind::InvalidField,
        format!("field `{field}`: expected {expected}"),
    )
}

fn missing(field: &str, expected: &str) -> DecodeError {
    DecodeError::new(
        ErrorKind::MissingField,
        format!("field `{field}` is required: expected {expected}"),
    )
}

/// Parses one field's raw JSON as `T`, or reports it invalid with what was expected.
fn field<'a, T: Deserialize<'a>>(raw: &'a RawValue, name: &str, expected: &str) -> Result<T, DecodeError> {
    serde_json::from_str(raw.get()).map_err(|e| {
        let found = describe(raw.get());
        DecodeError::new(
            ErrorKind::InvalidField,
            format!("field `{name}`: expected {expected}, found {found} ({e})"),
        )
    })
}

/// A short description of a JSON value for error messages.
fn describe(raw: &str) -> String {
    let kind = match raw.as_bytes().first() {
        Some(b'"') => "a string",
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b't') | Some(b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    };
    kind.to_string()
}

fn opt<'a, T: Deserialize<'a>>(
    raw: Option<&'a RawValue>,
    name: &str,
    expected: &str,
) -> Result<Option<T>, DecodeError> {
    raw.map(|r| field(r, name, expected)).transpose()
}

/// Every known field already of its JSON type; semantic checks (lengths, base64, enums,
/// formats) are left to [`validate`]. Filled in one pass by the fast path, or field by
/// field by the slow path that reports which field is wrong.
#[derive(Deserialize, Default)]
struct Typed<'a> {
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    data: Option<Cow<'a, str>>,
    #[serde(borrow)]
    data_b64: Option<Cow<'a, str>>,
    #[serde(borrow)]
    urgency: Option<Cow<'a, str>>,
    context: Option<TypedContext>,
    features: Option<Vec<f64>>,
    #[serde(borrow)]
    timestamp: Option<Cow<'a, str>>,
    source: Option<Text>,
    attestation: Option<Text>,
    #[serde(borrow)]
    digest: Option<Cow<'a, str>>,
    #[serde(borrow)]
    signature: Option<TypedSignature<'a>>,
}

#[derive(Deserialize, Default)]
struct TypedContext {
    stakeholders: Option<Vec<Text>>,
    affected: Option<Vec<Text>>,
    domain: Option<Text>,
    potential_benefits: Option<Vec<Text>>,
    potential_harms: Option<Vec<Text>>,
    reversibility: Option<f64>,
    intended_outcome: Option<Text>,
    constraints: Option<MapLen>,
    history: Option<SeqLen>,
    cultural_context: Option<Text>,
    hidden_agenda: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TypedSignature<'a> {
    key_id: Option<String>,
    #[serde(borrow)]
    sig: Option<Cow<'a, str>>,
}

/// A JSON object, of which only the number of entries is kept.
struct MapLen(usize);
/// A JSON array, of which only the number of elements is kept.
struct SeqLen(usize);

impl<'de> Deserialize<'de> for MapLen {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = MapLen;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<MapLen, A::Error> {
                let mut n = 0;
                while m
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {
                    n += 1;
                }
                Ok(MapLen(n))
            }
        }
        d.deserialize_map(V)
    }
}

impl<'de> Deserialize<'de> for SeqLen {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = SeqLen;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an array")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut s: A) -> Result<SeqLen, A::Error> {
                let mut n = 0;
                while s.next_element::<serde::de::IgnoredAny>()?.is_some() {
                    n += 1;
                }
                Ok(SeqLen(n))
            }
        }
        d.deserialize_seq(V)
    }
}

/// Decodes one observation record.
///
/// Valid records take one typed pass; a record that fails it is parsed again field by field
/// so that the dead letter names the field and what was expected.
///
/// The typed pass reads from a `&str`: serde_json skips the strings of ignored keys without
/// checking their UTF-8 when it reads bytes, so invalid UTF-8 under an ignored `context` key
/// would pass (found by fuzzing, `fuzz/corpus/decode/context-invalid-utf8`).
pub fn decode(bytes: &[u8], limits: &Limits) -> Result<Observation, DecodeError> {
    if let Ok(text) = std::str::from_utf8(bytes) {
        if let Ok(typed) = serde_json::from_str::<Typed>(text) {
            if let Ok(obs) = validate(typed, limits) {
                return Ok(obs);
            }
        }
    }
    validate(typed_field_by_field(bytes)?, limits)
}

/// The slow path alone (for tests that check both paths agree).
#[doc(hidden)]
pub fn decode_field_by_field(bytes: &[u8], limits: &Limits) -> Result<Observation, DecodeError> {
    validate(typed_field_by_field(bytes)?, limits)
}

/// The slow path: each field parsed on its own, errors naming it.
fn typed_field_by_field(bytes: &[u8]) -> Result<Typed<'_>, DecodeError> {
    let raw: RawObservation = serde_json::from_slice(bytes).map_err(classify_top)?;
    Ok(Typed {
        id: opt(raw.id, "id", "a string of 1–256 bytes")?,
        data: opt(raw.data, "data", "a string")?,
        data_b64: opt(raw.data_b64, "data_b64", "a base64 string")?,
        urgency: opt(raw.urgency, "urgency", "a string")?,
        context: raw.context.map(decode_context).transpose()?,
        features: opt(raw.features, "features", "an array of 1–4096 finite numbers")?,
        timestamp: opt(raw.timestamp, "timestamp", "an RFC 3339 string")?,
        source: opt(raw.source, "source", "a string")?,
        attestation: opt(raw.attestation, "attestation", "a string")?,
        digest: opt(raw.digest, "digest", "a string `sha256:<64 hex>`")?,
        signature: raw.signature.map(decode_signature).transpose()?,
    })
}

/// The semantic rules of SPEC §1.1 over already-typed fields.
fn validate(t: Typed, limits: &Limits) -> Result<Observation, DecodeError> {
    let id = t.id.ok_or_else(|| missing("id", "a string of 1–256 bytes"))?;
    if id.is_empty() || id.len() > MAX_ID_BYTES {
        return Err(invalid(
            "id",
            &format!("a string of 1–256 bytes, found {} bytes", id.len()),
        ));
    }

    let payload_sha256 = payload_digest(t.data.as_deref(), t.data_b64.as_deref(), limits)?;

    let urgency = match t.urgency.as_deref() {
        None => Urgency::NearRealTime,
        Some(s) => Urgency::parse(s).ok_or_else(|| {
            invalid(
                "urgency",
                &format!(
                    "one of real_time, near_real_time, batch, deferred, found {:?}",
                    clip(s, ECHO_BYTES)
                ),
            )
        })?,
    };

    let context = t.context.map(context_from).unwrap_or_default();
    check_sizes(&context, &t.source, &t.attestation, &t.signature, limits)?;
    let features = t.features.map(check_features).transpose()?;

    let timestamp_ms = match t.timestamp.as_deref() {
        None => None,
        Some(s) => Some(parse_rfc3339_ms(s).ok_or_else(|| {
            invalid(
                "timestamp",
                &format!(
                    "an RFC 3339 date-time such as 2026-01-02T03:04:05Z, found {:?}",
                    clip(s, ECHO_BYTES)
                ),
            )
        })?),
    };

    let digest = t.digest.as_deref().map(parse_digest).transpose()?;
    let signature = t.signature.map(check_signature).transpose()?;

    Ok(Observation {
        id: id.into(),
        payload_sha256,
        urgency,
        context,
        features,
        timestamp_ms,
        source: t.source,
        attestation: t.attestation,
        digest,
        signature,
    })
}

/// Syntax errors mean the bytes are not JSON; data errors at the top level mean valid JSON
/// of the wrong shape.
fn classify_top(e: serde_json::Error) -> DecodeError {
    use serde_json::error::Category;
    match e.classify() {
        Category::Data => {
            let msg = e.to_string();
            if msg.starts_with("duplicate field") {
                DecodeError::new(
                    ErrorKind::InvalidField,
                    format!("{msg}: each field may appear once"),
                )
            } else {
                DecodeError::new(
                    ErrorKind::NotObject,
                    format!("expected a JSON object, found another JSON value ({msg})"),
                )
            }
        }
        Category::Io | Category::Syntax | Category::Eof => {
            DecodeError::new(ErrorKind::NotJson, format!("not valid JSON: {e}"))
        }
    }
}

fn payload_digest(
    data: Option<&str>,
    data_b64: Option<&str>,
    limits: &Limits,
) -> Result<[u8; 32], DecodeError> {
    let max = limits.max_payload_bytes;
    let too_large = |n: usize| {
        DecodeError::new(
            ErrorKind::PayloadTooLarge,
            format!("payload is {n} bytes, the limit is {max} bytes"),
        )
    };
    match (data, data_b64) {
        (None, None) => Err(missing("data", "exactly one of `data` or `data_b64`")),
        (Some(_), Some(_)) => Err(invalid("data", "exactly one of `data` or `data_b64`, found both")),
        (Some(text), None) => {
            if text.len() > max {
                return Err(too_large(text.len()));
            }
            Ok(Sha256::digest(text.as_bytes()).into())
        }
        (None, Some(text)) => {
            // Reject before decoding when even the smallest decoding would be too large.
            if text.len() / 4 * 3 > max + 2 {
                return Err(too_large(text.len() / 4 * 3));
            }
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(text.as_bytes())
                .map_err(|e| invalid("data_b64", &format!("standard padded base64 ({e})")))?;
            if bytes.len() > max {
                return Err(too_large(bytes.len()));
            }
            Ok(Sha256::digest(&bytes).into())
        }
    }
}

fn string_list(raw: Option<&RawValue>, name: &str) -> Result<Option<Vec<Text>>, DecodeError> {
    opt(raw, name, "an array of strings")
}

fn decode_context(raw: &RawValue) -> Result<TypedContext, DecodeError> {
    let c: RawContext = serde_json::from_str(raw.get()).map_err(|e| {
        if e.to_string().starts_with("duplicate field") {
            invalid("context", &format!("an object with unique keys ({e})"))
        } else {
            invalid("context", &format!("an object, found {}", describe(raw.get())))
        }
    })?;
    Ok(TypedContext {
        stakeholders: string_list(c.stakeholders, "context.stakeholders")?,
        affected: string_list(c.affected, "context.affected")?,
        domain: opt(c.domain, "context.domain", "a string")?,
        potential_benefits: string_list(c.potential_benefits, "context.potential_benefits")?,
        potential_harms: string_list(c.potential_harms, "context.potential_harms")?,
        reversibility: opt(c.reversibility, "context.reversibility", "a number")?,
        intended_outcome: opt(c.intended_outcome, "context.intended_outcome", "a string")?,
        constraints: opt(c.constraints, "context.constraints", "an object")?,
        history: opt(c.history, "context.history", "an array")?,
        cultural_context: opt(c.cultural_context, "context.cultural_context", "a string")?,
        hidden_agenda: opt(c.hidden_agenda, "context.hidden_agenda", "a boolean")?,
    })
}

fn context_from(c: TypedContext) -> EthicsContext {
    EthicsContext {
        stakeholders: c.stakeholders,
        affected: c.affected,
        domain: c.domain,
        potential_benefits: c.potential_benefits,
        potential_harms: c.potential_harms,
        reversibility: c.reversibility,
        intended_outcome: c.intended_outcome,
        constraints_nonempty: c.constraints.map(|m| m.0 > 0),
        history_nonempty: c.history.map(|s| s.0 > 0),
        cultural_context: c.cultural_context,
        hidden_agenda: c.hidden_agenda,
    }
}

/// The caps of [`Limits::max_context_items`] and [`Limits::max_text_bytes`]; the error names
/// the field, the cap and its setting.
fn check_sizes(
    c: &EthicsContext,
    source: &Option<Text>,
    attestation: &Option<Text>,
    signature: &Option<TypedSignature>,
    limits: &Limits,
) -> Result<(), DecodeError> {
    // The field's name is made only for an error: a list element's name is a `format!`, and
    // making it for every element cost 7 % of a run's instructions (docs/BENCHMARKS.md).
    let text = |name: &dyn Fn() -> String, s: &str| {
        if s.len() > limits.max_text_bytes {
            return Err(invalid(
                &name(),
                &format!(
                    "a string of at most {} bytes (limits.max_text_bytes), found {} bytes",
                    limits.max_text_bytes,
                    s.len()
                ),
            ));
        }
        Ok(())
    };
    let lists = [
        ("context.stakeholders", &c.stakeholders),
        ("context.affected", &c.affected),
        ("context.potential_benefits", &c.potential_benefits),
        ("context.potential_harms", &c.potential_harms),
    ];
    for (name, list) in lists {
        let Some(list) = list else { continue };
        if list.len() > limits.max_context_items {
            return Err(invalid(
                name,
                &format!(
                    "an array of at most {} strings (limits.max_context_items), found {}",
                    limits.max_context_items,
                    list.len()
                ),
            ));
        }
        for (i, s) in list.iter().enumerate() {
            text(&|| format!("{name}[{i}]"), s)?;
        }
    }
    let texts = [
        ("context.domain", c.domain.as_deref()),
        ("context.intended_outcome", c.intended_outcome.as_deref()),
        ("context.cultural_context", c.cultural_context.as_deref()),
        ("source", source.as_deref()),
        ("attestation", attestation.as_deref()),
        (
            "signature.key_id",
            signature.as_ref().and_then(|s| s.key_id.as_deref()),
        ),
    ];
    for (name, s) in texts {
        if let Some(s) = s {
            text(&|| name.to_owned(), s)?;
        }
    }
    Ok(())
}

fn check_features(values: Vec<f64>) -> Result<Vec<f64>, DecodeError> {
    let expected = "an array of 1–4096 finite numbers";
    if values.is_empty() || values.len() > MAX_FEATURES {
        return Err(invalid(
            "features",
            &format!("{expected}, found {} values", values.len()),
        ));
    }
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(invalid(
            "features",
            &format!("{expected}, found a non-finite value at index {i}"),
        ));
    }
    Ok(values)
}

fn parse_digest(s: &str) -> Result<[u8; 32], DecodeError> {
    let expected = "`sha256:` followed by 64 hex digits";
    let hexpart = s
        .strip_prefix("sha256:")
        .ok_or_else(|| invalid("digest", &format!("{expected}, found {:?}", clip(s, ECHO_BYTES))))?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(hexpart, &mut out).map_err(|e| invalid("digest", &format!("{expected} ({e})")))?;
    Ok(out)
}

fn decode_signature(raw: &RawValue) -> Result<TypedSignature<'_>, DecodeError> {
    let expected = "an object {\"key_id\": string, \"sig\": base64 Ed25519 signature}";
    let s: RawSignature =
        serde_json::from_str(raw.get()).map_err(|e| invalid("signature", &format!("{expected} ({e})")))?;
    Ok(TypedSignature {
        key_id: opt(s.key_id, "signature.key_id", "a string")?,
        sig: opt(s.sig, "signature.sig", "a base64 string")?,
    })
}

fn check_signature(s: TypedSignature) -> Result<SignatureRef, DecodeError> {
    let key_id = s.key_id.ok_or_else(|| missing("signature.key_id", "a string"))?;
    if key_id.is_empty() {
        return Err(invalid("signature.key_id", "a non-empty string"));
    }
    let sig_text = s
        .sig
        .ok_or_else(|| missing("signature.sig", "a base64 Ed25519 signature"))?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(sig_text.as_bytes())
        .map_err(|e| invalid("signature.sig", &format!("standard padded base64 ({e})")))?;
    let sig: [u8; 64] = bytes.as_slice().try_into().map_err(|_| {
        invalid(
            "signature.sig",
            &format!("a 64-byte Ed25519 signature, found {} bytes", bytes.len()),
        )
    })?;
    Ok(SignatureRef { key_id, sig })
}

/// Parses an RFC 3339 date-time to Unix milliseconds.
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(s: &str) -> ErrorKind {
        decode(s.as_bytes(), &Limits::default()).unwrap_err().kind
    }

    #[test]
    fn minimal_observation_decodes_with_defaults() {
        let o = decode(br#"{"id":"a","data":"hello"}"#, &Limits::default()).unwrap();
        assert_eq!(o.id, "a");
        assert_eq!(o.urgency, Urgency::NearRealTime);
        assert_eq!(o.payload_sha256, <[u8; 32]>::from(Sha256::digest(b"hello")));
        assert_eq!(o.context, EthicsContext::default());
    }

    #[test]
    fn data_and_data_b64_give_the_same_digest() {
        let a = decode(br#"{"id":"a","data":"hello"}"#, &Limits::default()).unwrap();
        let b = decode(br#"{"id":"a","data_b64":"aGVsbG8="}"#, &Limits::default()).unwrap();
        assert_eq!(a.payload_sha256, b.payload_sha256);
    }

    #[test]
    fn each_rule_has_its_kind() {
        assert_eq!(kind("nope"), ErrorKind::NotJson);
        assert_eq!(kind(""), ErrorKind::NotJson);
        assert_eq!(kind("[1,2]"), ErrorKind::NotObject);
        assert_eq!(kind("42"), ErrorKind::NotObject);
        assert_eq!(kind(r#"{"data":"x"}"#), ErrorKind::MissingField);
        assert_eq!(kind(r#"{"id":"a"}"#), ErrorKind::MissingField);
        assert_eq!(kind(r#"{"id":"","data":"x"}"#), ErrorKind::InvalidField);
        assert_eq!(kind(r#"{"id":7,"data":"x"}"#), ErrorKind::InvalidField);
        assert_eq!(
            kind(r#"{"id":"a","data":"x","data_b64":"eA=="}"#),
            ErrorKind::InvalidField
        );
        assert_eq!(kind(r#"{"id":"a","data_b64":"!!"}"#), ErrorKind::InvalidField);
        assert_eq!(
            kind(r#"{"id":"a","data":"x","urgency":"now"}"#),
            ErrorKind::InvalidField
        );
        assert_eq!(
            kind(r#"{"id":"a","data":"x","context":[]}"#),
            ErrorKind::InvalidField
        );
        assert_eq!(
            kind(r#"{"id":"a","data":"x","context":{"stakeholders":"x"}}"#),
            ErrorKind::InvalidField
        );
        assert_eq!(
            kind(r#"{"id":"a","data":"x","features":[]}"#),
            ErrorKind::InvalidField
        );
        assert_eq!(
            kind(r#"{"id":"a","data":"x","features":["1"]}"#),
            ErrorKind::InvalidField
        );
        assert_eq!(
            kind(r#"{"id":"a","data":"x","timestamp":"yesterday"}"#),
            ErrorKind::InvalidField
        );
        assert_eq!(
            kind(r#"{"id":"a","data":"x","digest":"md5:00"}"#),
            ErrorKind::InvalidField
        );
        assert_eq!(
            kind(r#"{"id":"a","data":"x","signature":{"key_id":"k","sig":"AAAA"}}"#),
            ErrorKind::InvalidField
        );
        assert_eq!(
            kind(r#"{"id":"a","data":"x","signature":{"sig":"AAAA"}}"#),
            ErrorKind::MissingField
        );
        assert_eq!(kind(r#"{"id":"a","id":"b","data":"x"}"#), ErrorKind::InvalidField);
    }

    #[test]
    fn id_length_is_bounded_in_bytes() {
        let ok = format!(r#"{{"id":"{}","data":"x"}}"#, "é".repeat(128));
        assert!(decode(ok.as_bytes(), &Limits::default()).is_ok());
        let long = format!(r#"{{"id":"{}","data":"x"}}"#, "a".repeat(257));
        assert_eq!(kind(&long), ErrorKind::InvalidField);
    }

    #[test]
    fn payload_limit_applies_after_base64_decoding() {
        let limits = Limits {
            max_payload_bytes: 4,
            ..Limits::default()
        };
        assert!(decode(br#"{"id":"a","data":"abcd"}"#, &limits).is_ok());
        let e = decode(br#"{"id":"a","data":"abcde"}"#, &limits).unwrap_err();
        assert_eq!(e.kind, ErrorKind::PayloadTooLarge);
        assert!(decode(br#"{"id":"a","data_b64":"YWJjZA=="}"#, &limits).is_ok());
        let e = decode(br#"{"id":"a","data_b64":"YWJjZGU="}"#, &limits).unwrap_err();
        assert_eq!(e.kind, ErrorKind::PayloadTooLarge);
    }

    #[test]
    fn context_lists_and_texts_are_capped_and_the_dead_letter_names_field_and_cap() {
        let limits = Limits {
            max_context_items: 3,
            max_text_bytes: 5,
            ..Limits::default()
        };
        let ok = br#"{"id":"a","data":"x","context":{"potential_harms":["a","bb","ccccc"]}}"#;
        assert!(decode(ok, &limits).is_ok());
        let e = decode(
            br#"{"id":"a","data":"x","context":{"potential_harms":["a","b","c","d"]}}"#,
            &limits,
        )
        .unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidField);
        assert!(
            e.message.contains("context.potential_harms") && e.message.contains("limits.max_context_items"),
            "{}",
            e.message
        );
        assert!(
            e.message.contains("at most 3") && e.message.contains("found 4"),
            "{}",
            e.message
        );
        let e = decode(
            br#"{"id":"a","data":"x","context":{"stakeholders":["a","toolong"]}}"#,
            &limits,
        )
        .unwrap_err();
        assert!(
            e.message.contains("context.stakeholders[1]") && e.message.contains("limits.max_text_bytes"),
            "{}",
            e.message
        );
        for field in [
            r#""context":{"domain":"toolong"}"#,
            r#""context":{"intended_outcome":"toolong"}"#,
            r#""context":{"cultural_context":"toolong"}"#,
            r#""source":"toolong""#,
            r#""attestation":"toolong""#,
        ] {
            let rec = format!(r#"{{"id":"a","data":"x",{field}}}"#);
            let e = decode(rec.as_bytes(), &limits).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidField, "{field}");
            assert!(
                e.message.contains("limits.max_text_bytes"),
                "{field}: {}",
                e.message
            );
        }
    }

    #[test]
    fn a_huge_list_of_one_letter_strings_is_rejected_at_the_default_cap() {
        let items = vec!["\"a\""; 480_000].join(",");
        let rec = format!(r#"{{"id":"a","data":"x","context":{{"affected":[{items}]}}}}"#);
        let e = decode(rec.as_bytes(), &Limits::default()).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidField);
        assert!(e.message.contains("found 480000"), "{}", e.message);
    }

    #[test]
    fn messages_quote_at_most_a_clip_of_the_input() {
        let long = "x".repeat(100_000);
        for field in ["urgency", "timestamp", "digest"] {
            let rec = format!(r#"{{"id":"a","data":"x","{field}":"{long}"}}"#);
            let e = decode(rec.as_bytes(), &Limits::default()).unwrap_err();
            assert!(e.message.len() < 512, "{field}: {} bytes", e.message.len());
            assert!(
                e.message.contains("truncated, 100000 bytes"),
                "{field}: {}",
                e.message
            );
        }
    }

    #[test]
    fn messages_name_the_field_and_expectation() {
        let e = decode(br#"{"id":"a","data":"x","urgency":5}"#, &Limits::default()).unwrap_err();
        assert!(e.message.contains("`urgency`"), "{}", e.message);
        assert!(e.message.contains("expected a string"), "{}", e.message);
    }

    #[test]
    fn context_keys_keep_presence_and_unknown_keys_are_ignored() {
        let o = decode(
            br#"{"id":"a","data":"x","context":{"potential_harms":[],"constraints":{},"history":[1],"zzz":{"q":1}}}"#,
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(o.context.potential_harms, Some(vec![]));
        assert_eq!(o.context.constraints_nonempty, Some(false));
        assert_eq!(o.context.history_nonempty, Some(true));
        assert_eq!(o.context.stakeholders, None);
    }

    #[test]
    fn invalid_utf8_under_an_ignored_key_is_malformed_in_both_paths() {
        let bytes = include_bytes!("../../fuzz/corpus/decode/context-invalid-utf8");
        let fast = decode(bytes, &Limits::default());
        assert_eq!(fast, decode_field_by_field(bytes, &Limits::default()));
        assert_eq!(fast.unwrap_err().kind, ErrorKind::NotJson);
    }

    #[test]
    fn escaped_strings_decode_like_plain_ones() {
        let plain = decode(
            br#"{"id":"a\"b","data":"x","urgency":"batch"}"#,
            &Limits::default(),
        )
        .unwrap();
        let escaped = decode(
            br#"{"id":"a\u0022b","data":"x","urgency":"\u0062atch"}"#,
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(plain, escaped);
        assert_eq!(plain.id, "a\"b");
    }

    #[test]
    fn null_means_absent() {
        let o = decode(
            br#"{"id":"a","data":"x","source":null,"context":{"domain":null}}"#,
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(o.source, None);
        assert_eq!(o.context.domain, None);
        assert_eq!(kind(r#"{"id":null,"data":"x"}"#), ErrorKind::MissingField);
    }

    #[test]
    fn timestamps_parse_to_millis() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:01.5Z"), Some(1500));
        assert_eq!(parse_rfc3339_ms("1970-01-01T01:00:00+01:00"), Some(0));
        assert_eq!(parse_rfc3339_ms("nope"), None);
    }
}
