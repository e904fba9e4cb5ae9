//! The rollback record (SPEC §1.6): a `statistical` verdict emitted with its signature
//! `sampled_out`, which the full check made later found bad. It names the verdict (id, input,
//! batch position) and is committed like a verdict: its leaf goes into the same batch, under
//! its own domain string, so an auditor can prove it exists. This file owns the record and its
//! leaf; the batcher decides when one is made and the commit operator attaches its proof.
//!
//! leaf_input = `"bizra/rollback/v1"` ‖ 0x00 ‖ u16be(len id) ‖ id ‖ SHA-256(payload) ‖ u8 reason.

use serde::{Deserialize, Serialize};
use sha3::{Digest, Sha3_256};

use crate::observation::{InputRef, Text};
use crate::verdict::Proof;
use crate::verification::leaf::id_len_be;
use crate::verification::merkle::{Hash, LEAF_PREFIX};
use crate::verification::BatchRef;

/// Domain tag that opens every rollback leaf input, followed by a 0x00 byte.
pub const DOMAIN: &[u8] = b"bizra/rollback/v1";

/// Why a verdict is rolled back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The Ed25519 signature does not verify under the named key.
    SignatureBad,
    /// The named key is not in the keyring. The emit-time checks already catch this on
    /// every item; kept for a keyring that changes under a running verifier.
    UnknownKey,
}

impl Reason {
    pub const ALL: [Reason; 2] = [Reason::SignatureBad, Reason::UnknownKey];

    /// The reason's byte in the leaf: 0 signature_bad, 1 unknown_key.
    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::SignatureBad => "signature_bad",
            Reason::UnknownKey => "unknown_key",
        }
    }
}

/// One rollback. Downstream consumers treat the verdict it names as `deny`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rollback {
    pub id: Text,
    pub input: Option<InputRef>,
    pub reason: Reason,
    /// Where the rolled-back verdict's leaf is.
    pub verdict_batch: BatchRef,
    /// `sha256:<hex>` of the payload, as in the verdict: with `id` and `reason` it rebuilds
    /// the rollback's leaf.
    pub payload_digest: String,
    /// Where this rollback's own leaf is: the same batch, after the verdicts.
    pub batch: BatchRef,
    /// Inclusion proof of this rollback's leaf in its batch, attached when the batch seals.
    pub proof: Option<Proof>,
    /// When the rollback was made (RFC 3339, UTC); not part of the leaf.
    pub at: String,
}

impl Rollback {
    /// The rollback's Merkle leaf hash, SHA3-256(0x00 ‖ leaf_input).
    pub fn leaf(&self) -> Option<Hash> {
        let mut digest = [0u8; 32];
        hex::decode_to_slice(self.payload_digest.strip_prefix("sha256:")?, &mut digest).ok()?;
        Some(leaf_hash(&self.id, &digest, self.reason))
    }
}

/// The §1.6 leaf input of a rollback.
pub fn leaf_input(id: &str, payload_sha256: &[u8; 32], reason: Reason) -> Vec<u8> {
    let mut out = Vec::with_capacity(DOMAIN.len() + 3 + id.len() + 33);
    out.extend_from_slice(DOMAIN);
    out.push(0);
    out.extend_from_slice(&id_len_be(id));
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(payload_sha256);
    out.push(reason.code());
    out
}

/// SHA3-256(0x00 ‖ leaf_input) of a rollback.
pub fn leaf_hash(id: &str, payload_sha256: &[u8; 32], reason: Reason) -> Hash {
    let mut h = Sha3_256::new_with_prefix([LEAF_PREFIX]);
    h.update(leaf_input(id, payload_sha256, reason));
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verification::merkle::leaf_hash as merkle_leaf_hash;

    #[test]
    fn the_leaf_lays_out_domain_id_digest_and_reason() {
        let bytes = leaf_input("ab", &[7; 32], Reason::UnknownKey);
        let mut want = b"bizra/rollback/v1\x00\x00\x02ab".to_vec();
        want.extend_from_slice(&[7; 32]);
        want.push(1);
        assert_eq!(bytes, want);
        assert_eq!(
            leaf_hash("ab", &[7; 32], Reason::UnknownKey),
            merkle_leaf_hash(&bytes)
        );
        assert_ne!(
            leaf_hash("ab", &[7; 32], Reason::SignatureBad),
            leaf_hash("ab", &[7; 32], Reason::UnknownKey)
        );
    }

    #[test]
    fn a_rollback_leaf_never_equals_a_verdict_leaf_of_the_same_id() {
        let v = crate::verification::leaf::LeafFields {
            id: "ab",
            payload_sha256: &[7; 32],
            tier: 0,
            valid: true,
            severity: 0,
            permitted: true,
            overall: 0.0,
            value: 0.0,
            clarity: 0.0,
        };
        assert_ne!(v.hash(), leaf_hash("ab", &[7; 32], Reason::SignatureBad));
    }
}
