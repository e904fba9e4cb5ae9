//! The decoded observation (SPEC §1.1) and where it came from. Owns the plain data types that
//! every stage reads; does not parse bytes (that is `decode.rs`) nor score anything.

use serde::{Deserialize, Serialize};

/// How soon a verdict is wanted; selects the verification tier (SPEC §2.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Urgency {
    RealTime,
    NearRealTime,
    Batch,
    Deferred,
}

impl Urgency {
    pub const ALL: [Urgency; 4] = [
        Urgency::RealTime,
        Urgency::NearRealTime,
        Urgency::Batch,
        Urgency::Deferred,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Urgency::RealTime => "real_time",
            Urgency::NearRealTime => "near_real_time",
            Urgency::Batch => "batch",
            Urgency::Deferred => "deferred",
        }
    }

    pub fn parse(s: &str) -> Option<Urgency> {
        Urgency::ALL.into_iter().find(|u| u.as_str() == s)
    }
}

/// A detached Ed25519 signature over the SPEC §3.2 message, naming the keyring entry to use.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignatureRef {
    /// Keyring name of the public key; looked up, never trusted on its own.
    pub key_id: String,
    /// The raw 64-byte signature (decoded from base64 at the boundary).
    #[serde(with = "serde_sig")]
    pub sig: [u8; 64],
}

mod serde_sig {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(sig: &[u8; 64], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(sig)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 64], D::Error> {
        let v: Vec<u8> = Deserialize::deserialize(d)?;
        v.try_into()
            .map_err(|_| serde::de::Error::custom("signature must be 64 bytes"))
    }
}

/// A short text (an id, a context list element, a domain, a label): up to 24 bytes are stored
/// inline, so the usual values cost no heap allocation; longer ones live on the heap.
pub type Text = compact_str::CompactString;

/// The ethics inputs an observation may carry in `context` (SPEC §2.4). `None` means the key
/// was absent (the stage applies its default); `Some` is used as given, even when empty.
/// Only what the formulas read is kept: for `constraints` and `history` that is whether
/// they are non-empty.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EthicsContext {
    pub stakeholders: Option<Vec<Text>>,
    pub affected: Option<Vec<Text>>,
    pub domain: Option<Text>,
    pub potential_benefits: Option<Vec<Text>>,
    pub potential_harms: Option<Vec<Text>>,
    pub reversibility: Option<f64>,
    pub intended_outcome: Option<Text>,
    /// `Some(true)` when `constraints` is a non-empty object.
    pub constraints_nonempty: Option<bool>,
    /// `Some(true)` when `history` is a non-empty array.
    pub history_nonempty: Option<bool>,
    pub cultural_context: Option<Text>,
    pub hidden_agenda: Option<bool>,
}

/// A valid observation. The payload itself is not kept: every stage needs only its SHA-256,
/// so dropping the bytes right after decoding keeps held batches small.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    pub id: Text,
    /// SHA-256 of the payload (`data` bytes or decoded `data_b64`).
    pub payload_sha256: [u8; 32],
    pub urgency: Urgency,
    pub context: EthicsContext,
    /// Optional embedding, 1–4096 finite values.
    pub features: Option<Vec<f64>>,
    /// Event time from `timestamp`, milliseconds since the Unix epoch.
    pub timestamp_ms: Option<i64>,
    pub source: Option<Text>,
    pub attestation: Option<Text>,
    /// Claimed SHA-256 of the payload (`sha256:<hex>`), checked by verification.
    pub digest: Option<[u8; 32]>,
    pub signature: Option<SignatureRef>,
}

/// Where a record was read: Kafka coordinates, or the file/stdin/generator equivalent
/// (topic = source name, partition 0, offset = record index).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct InputRef {
    /// Inline for names of up to 24 bytes, so the copy every record carries is no allocation.
    pub topic: Text,
    pub partition: i32,
    pub offset: i64,
}

/// Provenance that travels with a record through the dataflow.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Origin {
    pub input: Option<InputRef>,
    /// Total order of the input used to make stateful stages deterministic: records of one
    /// epoch are processed in `position` order (line number, or partition/offset packed).
    pub position: u64,
    /// Wall-clock milliseconds when the record entered bizra (for `latency_ms`).
    pub ingest_ms: i64,
    /// Event time in milliseconds: observation `timestamp`, else the message timestamp, else
    /// ingest time; the ingest time when the claimed time is too far ahead of it.
    pub event_ms: i64,
    /// The claimed event time was more than `stats.max_future_ms` past the ingest time.
    pub future_dated: bool,
    /// A time the sender does not control, for the replay guard's age test: the broker's
    /// timestamp (LogAppendTime), else the ingest time.
    #[serde(default)]
    pub arrival_ms: i64,
}
