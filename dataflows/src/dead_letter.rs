//! Dead letters (SPEC §1.4): the error kinds of bad input and the record written for each.
//! Owns the record shape only; deciding *what* is bad is `decode.rs`'s job (and, for an
//! output its sink cannot take, the sink's).

use std::borrow::Cow;

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::bounds::{clip, MESSAGE_BYTES};
use crate::observation::InputRef;

/// At most this many bytes of the original record are kept in `raw_b64`.
pub const RAW_KEEP_BYTES: usize = 64 * 1024;

/// Why an input record could not become an observation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    NotJson,
    NotObject,
    MissingField,
    InvalidField,
    PayloadTooLarge,
    MessageTooLarge,
    /// The input was processed, but its output is larger than its sink takes.
    OutputTooLarge,
    /// The input was processed, but the broker refused its output for good.
    ProduceRefused,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 8] = [
        ErrorKind::NotJson,
        ErrorKind::NotObject,
        ErrorKind::MissingField,
        ErrorKind::InvalidField,
        ErrorKind::PayloadTooLarge,
        ErrorKind::MessageTooLarge,
        ErrorKind::OutputTooLarge,
        ErrorKind::ProduceRefused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotJson => "not_json",
            ErrorKind::NotObject => "not_object",
            ErrorKind::MissingField => "missing_field",
            ErrorKind::InvalidField => "invalid_field",
            ErrorKind::PayloadTooLarge => "payload_too_large",
            ErrorKind::MessageTooLarge => "message_too_large",
            ErrorKind::OutputTooLarge => "output_too_large",
            ErrorKind::ProduceRefused => "produce_refused",
        }
    }
}

/// A definite decoding failure: the kind plus a message naming the field and what was
/// expected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", kind.as_str())]
pub struct DecodeError {
    pub kind: ErrorKind,
    pub message: String,
}

impl DecodeError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        DecodeError {
            kind,
            message: message.into(),
        }
    }
}

/// The dead-letter record written for every bad input.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub error: ErrorKind,
    /// What was wrong, clipped to [`MESSAGE_BYTES`] (it may quote the input).
    pub message: String,
    pub input: Option<InputRef>,
    /// Standard base64 of the original bytes, truncated to [`RAW_KEEP_BYTES`]. Empty for
    /// `output_too_large` and `produce_refused`: the input was decoded and its bytes are gone
    /// by the time a sink refuses its output; `input` says where to find them.
    pub raw_b64: String,
    /// RFC 3339 time the record was rejected.
    pub at: String,
}

impl DeadLetter {
    pub fn new(err: DecodeError, input: Option<InputRef>, raw: &[u8], at_ms: i64) -> Self {
        let kept = &raw[..raw.len().min(RAW_KEEP_BYTES)];
        let mut message = err.message;
        if let Cow::Owned(clipped) = clip(&message, MESSAGE_BYTES) {
            message = clipped;
        }
        DeadLetter {
            error: err.kind,
            message,
            input,
            raw_b64: base64::engine::general_purpose::STANDARD.encode(kept),
            at: rfc3339_ms(at_ms),
        }
    }

    /// The dead letter of an input whose output its sink refused (`output_too_large`,
    /// `produce_refused`): provenance and the reason, no raw bytes.
    pub fn refused(kind: ErrorKind, message: String, input: Option<InputRef>, at_ms: i64) -> Self {
        DeadLetter::new(DecodeError::new(kind, message), input, &[], at_ms)
    }
}

/// Formats Unix milliseconds as RFC 3339 UTC with millisecond precision.
pub fn rfc3339_ms(ms: i64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    let t =
        time::OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let f = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.format(&f).unwrap_or_else(|_| "1970-01-01T00:00:00.000Z".into())
}
