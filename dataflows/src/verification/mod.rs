//! Verification (SPEC §2.2, §3): the tier rules and the per-shard batcher. The cryptographic
//! pieces live in the submodules; this file owns only how they are combined.

pub mod checkpoint;
pub mod commitment;
pub mod leaf;
pub mod merkle;
pub mod replay;
pub mod replay_log;
pub mod sampling;
pub mod signature;
pub mod tlog;

use serde::{Deserialize, Serialize};

use crate::observation::Urgency;

/// Verification tier, chosen by urgency.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    Statistical,
    Incremental,
    Full,
}

impl Tier {
    pub const ALL: [Tier; 3] = [Tier::Statistical, Tier::Incremental, Tier::Full];

    pub fn for_urgency(u: Urgency) -> Tier {
        match u {
            Urgency::RealTime => Tier::Statistical,
            Urgency::NearRealTime => Tier::Incremental,
            Urgency::Batch | Urgency::Deferred => Tier::Full,
        }
    }

    /// Code used in the Merkle leaf (SPEC §3.1).
    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Statistical => "statistical",
            Tier::Incremental => "incremental",
            Tier::Full => "full",
        }
    }
}

/// Outcome of the digest check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DigestCheck {
    Ok,
    Mismatch,
    Absent,
}

/// Outcome of the signature check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignatureCheck {
    Ok,
    Bad,
    UnknownKey,
    Absent,
    SampledOut,
    RequiredMissing,
}

impl SignatureCheck {
    pub const ALL: [SignatureCheck; 6] = [
        SignatureCheck::Ok,
        SignatureCheck::Bad,
        SignatureCheck::UnknownKey,
        SignatureCheck::Absent,
        SignatureCheck::SampledOut,
        SignatureCheck::RequiredMissing,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SignatureCheck::Ok => "ok",
            SignatureCheck::Bad => "bad",
            SignatureCheck::UnknownKey => "unknown_key",
            SignatureCheck::Absent => "absent",
            SignatureCheck::SampledOut => "sampled_out",
            SignatureCheck::RequiredMissing => "required_missing",
        }
    }
}

/// The three checks of SPEC §2.2.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checks {
    pub digest: DigestCheck,
    pub signature: SignatureCheck,
    /// True when the id was already seen in this shard's replay window.
    pub replay: bool,
}

/// The `verification` object of a verdict.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Verification {
    pub tier: Tier,
    pub valid: bool,
    pub confidence: f64,
    pub checks: Checks,
    /// The first failed check, `None` when valid.
    pub reason: Option<String>,
}

/// Position of a verdict's leaf: batch `seq` of `shard`, leaf `leaf_index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BatchRef {
    pub shard: u32,
    pub seq: u64,
    pub leaf_index: u32,
}

impl Checks {
    /// The first failed check in a fixed order, as the verdict's `reason`.
    pub fn reason(&self) -> Option<&'static str> {
        if self.replay {
            Some("replay")
        } else if self.digest == DigestCheck::Mismatch {
            Some("digest_mismatch")
        } else {
            match self.signature {
                SignatureCheck::Bad => Some("bad_signature"),
                SignatureCheck::UnknownKey => Some("unknown_key"),
                SignatureCheck::RequiredMissing => Some("required_missing"),
                _ => None,
            }
        }
    }
}

pub mod batcher;
pub use batcher::{ShardVerifier, VerifyConfig};

/// Lower-case hex of `bytes`, as `hex::encode` but through a byte buffer: `hex::encode`
/// collects `char`s one by one, which showed in profiles for the Merkle paths and leaves.
pub fn to_hex(bytes: &[u8]) -> String {
    let mut out = vec![0u8; bytes.len() * 2];
    hex::encode_to_slice(bytes, &mut out).expect("the buffer is twice the input");
    String::from_utf8(out).expect("hex digits are ASCII")
}

/// `sha256:<hex>`, the payload digest's wire form.
pub fn sha256_ref(digest: &[u8; 32]) -> String {
    let mut out = Vec::with_capacity(7 + 64);
    out.extend_from_slice(b"sha256:");
    out.resize(7 + 64, 0);
    hex::encode_to_slice(digest, &mut out[7..]).expect("64 bytes for 32");
    String::from_utf8(out).expect("ASCII")
}

#[cfg(test)]
mod hex_tests {
    #[test]
    fn to_hex_and_sha256_ref_match_hex_encode() {
        let d: [u8; 32] = std::array::from_fn(|i| (i * 37 + 5) as u8);
        assert_eq!(super::to_hex(&d), hex::encode(d));
        assert_eq!(super::to_hex(&[]), "");
        assert_eq!(super::sha256_ref(&d), format!("sha256:{}", hex::encode(d)));
    }
}
