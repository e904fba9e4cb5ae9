//! The Merkle leaf of one verdict (SPEC §3.1): its exact byte encoding and its leaf hash. It
//! does not decide the field values (the stages do) nor build trees (`merkle.rs`).
//!
//! leaf_input = `"bizra/verdict/v1"` ‖ 0x00 ‖ u16be(len id) ‖ id ‖ SHA-256(payload) ‖ u8 tier ‖
//! u8 valid ‖ u8 severity ‖ u8 permitted ‖ f64be overall ‖ f64be value ‖ f64be clarity.

use sha3::{Digest, Sha3_256};

use super::merkle::{Hash, LEAF_PREFIX};

/// Domain tag that opens every leaf input, followed by a 0x00 byte.
pub const DOMAIN: &[u8] = b"bizra/verdict/v1";

/// Encoded length of everything but the id: tag, 0x00, id length, digest, four bytes, three f64.
const FIXED_LEN: usize = DOMAIN.len() + 1 + 2 + 32 + 4 + 3 * 8;

/// The verdict fields a leaf commits to, borrowed from the verdict being sealed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LeafFields<'a> {
    /// Observation id; at most 65 535 bytes (decode already caps it at 256).
    pub id: &'a str,
    /// SHA-256 of the observation payload, binding the verdict to the exact bytes judged.
    pub payload_sha256: &'a [u8; 32],
    /// Tier code: 0 statistical, 1 incremental, 2 full (`Tier::code`).
    pub tier: u8,
    /// `verification.valid`.
    pub valid: bool,
    /// Severity code: 0 exemplary, 1 acceptable, 2 concerning, 3 problematic, 4 prohibited.
    pub severity: u8,
    /// The verdict's `permitted`.
    pub permitted: bool,
    /// `ethics.overall`, unclamped.
    pub overall: f64,
    /// `value.value`.
    pub value: f64,
    /// `convergence.clarity`.
    pub clarity: f64,
}

impl LeafFields<'_> {
    /// The §3.1 leaf input bytes.
    ///
    /// # Panics
    /// If the id is longer than 65 535 bytes (its length would not fit the u16 prefix).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// Clears `out` and writes the §3.1 leaf input into it, so one buffer serves a whole batch.
    ///
    /// # Panics
    /// As [`LeafFields::encode`].
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.clear();
        out.reserve(FIXED_LEN + self.id.len());
        self.write_parts(|part| out.extend_from_slice(part));
    }

    /// The Merkle leaf hash SHA3-256(0x00 ‖ leaf_input), streamed without building the input.
    ///
    /// # Panics
    /// As [`LeafFields::encode`].
    pub fn hash(&self) -> Hash {
        let mut h = Sha3_256::new_with_prefix([LEAF_PREFIX]);
        self.write_parts(|part| h.update(part));
        h.finalize().into()
    }

    /// Feeds the encoding, field by field, to `sink`.
    fn write_parts(&self, mut sink: impl FnMut(&[u8])) {
        sink(DOMAIN);
        sink(&[0x00]);
        sink(&id_len_be(self.id));
        sink(self.id.as_bytes());
        sink(self.payload_sha256);
        sink(&[
            self.tier,
            u8::from(self.valid),
            self.severity,
            u8::from(self.permitted),
        ]);
        sink(&self.overall.to_be_bytes());
        sink(&self.value.to_be_bytes());
        sink(&self.clarity.to_be_bytes());
    }
}

/// u16be(len id), the length prefix shared by the leaf input and the observation message.
///
/// # Panics
/// If the id is longer than 65 535 bytes: the formats cannot encode it, and decode (SPEC §1.1,
/// ids of 1–256 bytes) must have refused it.
pub(crate) fn id_len_be(id: &str) -> [u8; 2] {
    match u16::try_from(id.len()) {
        Ok(len) => len.to_be_bytes(),
        Err(_) => panic!(
            "id length prefix: expected at most 65535 bytes, found {}",
            id.len()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verification::merkle::leaf_hash;

    fn fields(id: &str) -> LeafFields<'_> {
        LeafFields {
            id,
            payload_sha256: &[7; 32],
            tier: 2,
            valid: true,
            severity: 1,
            permitted: false,
            overall: -1.5,
            value: 0.25,
            clarity: 1.0,
        }
    }

    #[test]
    fn encoding_lays_out_every_field_in_spec_order() {
        let bytes = fields("ab").encode();
        let mut want = b"bizra/verdict/v1\x00\x00\x02ab".to_vec();
        want.extend_from_slice(&[7; 32]);
        want.extend_from_slice(&[2, 1, 1, 0]);
        want.extend_from_slice(&(-1.5f64).to_be_bytes());
        want.extend_from_slice(&0.25f64.to_be_bytes());
        want.extend_from_slice(&1.0f64.to_be_bytes());
        assert_eq!(bytes, want);
        assert_eq!(bytes.len(), FIXED_LEN + 2);
    }

    #[test]
    fn streamed_hash_equals_leaf_hash_of_the_encoding() {
        let f = fields("obs-ü");
        assert_eq!(f.hash(), leaf_hash(&f.encode()));
    }

    #[test]
    fn encode_into_reuses_and_clears_the_buffer() {
        let mut buf = b"stale bytes that must go".to_vec();
        fields("x").encode_into(&mut buf);
        assert_eq!(buf, fields("x").encode());
    }

    #[test]
    fn every_field_changes_the_hash() {
        let base = fields("id");
        let other_digest = [8u8; 32];
        let variants = [
            LeafFields { id: "ie", ..base },
            LeafFields {
                payload_sha256: &other_digest,
                ..base
            },
            LeafFields { tier: 1, ..base },
            LeafFields { valid: false, ..base },
            LeafFields { severity: 2, ..base },
            LeafFields {
                permitted: true,
                ..base
            },
            LeafFields {
                overall: -1.25,
                ..base
            },
            LeafFields { value: 0.5, ..base },
            LeafFields { clarity: 0.5, ..base },
        ];
        for v in variants {
            assert_ne!(v.hash(), base.hash(), "{v:?}");
        }
    }

    #[test]
    #[should_panic(expected = "expected at most 65535 bytes, found 65536")]
    fn an_id_too_long_for_its_prefix_panics_instead_of_truncating() {
        let id = "x".repeat(65_536);
        fields(&id).encode();
    }
}
