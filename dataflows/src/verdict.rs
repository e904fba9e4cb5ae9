//! The verdict (SPEC §1.2) and its assembly from the stage outputs: value and ethics run
//! here, after verification, because the leaf commits to their numbers. Owns no I/O.

use serde::{Deserialize, Serialize};

use crate::convergence::Convergence;
use crate::ethics::{self, EthicsVerdict, Severity};
use crate::observation::{InputRef, Text};
use crate::policy::Policy;
use crate::record::{Assessed, Checked};
use crate::snr::{self, Snr};
use crate::value::{self, Provenance, ValueAssessment};
use crate::verification::leaf::LeafFields;
use crate::verification::{BatchRef, SignatureCheck, Verification};

/// What to do with the observation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Permit,
    Review,
    Deny,
}

impl Decision {
    pub const ALL: [Decision; 3] = [Decision::Permit, Decision::Review, Decision::Deny];

    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Permit => "permit",
            Decision::Review => "review",
            Decision::Deny => "deny",
        }
    }

    /// `deny` if not permitted, `review` for concerning or problematic, else `permit`.
    pub fn of(permitted: bool, severity: Severity) -> Decision {
        if !permitted {
            Decision::Deny
        } else if matches!(severity, Severity::Concerning | Severity::Problematic) {
            Decision::Review
        } else {
            Decision::Permit
        }
    }
}

/// RFC 6962 inclusion proof of a full-tier verdict's leaf.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof {
    pub tree_size: u64,
    /// Hex SHA3-256 root of the batch.
    pub root: String,
    /// Hex sibling hashes from the leaf level upwards.
    pub path: Vec<String>,
}

/// One verdict per valid observation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub id: Text,
    pub input: Option<InputRef>,
    pub policy_version: Text,
    pub decision: Decision,
    pub permitted: bool,
    pub convergence: Convergence,
    pub verification: Verification,
    pub value: ValueAssessment,
    pub ethics: EthicsVerdict,
    pub snr: Snr,
    pub consistency: f64,
    pub batch: BatchRef,
    pub proof: Option<Proof>,
    pub latency_ms: f64,
    /// `sha256:<hex>` of the payload: with the fields above it rebuilds the Merkle leaf, so a
    /// verdict can be checked against its commitment without the original payload.
    pub payload_digest: String,
    /// Human-readable account of the fields above in the configured `output.explain` style;
    /// absent when off (the default). Derived from this verdict's own numbers only, so it
    /// adds no information and is not committed to by the Merkle leaf.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub explanation: Option<String>,
    /// Event time of the observation (ms): keys the window statistics; not on the wire.
    #[serde(skip)]
    pub event_ms: i64,
    /// The observation claimed an event time too far in the future, and `event_ms` is its
    /// ingest time: counted, and kept out of the statistics' watermark; not on the wire.
    #[serde(skip)]
    pub future_dated: bool,
    /// `context.domain` of the observation, if any: keys the window statistics; not on the wire.
    #[serde(skip)]
    pub domain: Option<Text>,
    /// The observation's `features`, kept for the episode archive's similarity recall; not on
    /// the wire.
    #[serde(skip)]
    pub features: Option<Vec<f64>>,
}

impl Verdict {
    /// The SPEC §3.1 leaf fields this verdict commits to.
    pub fn leaf_fields<'a>(&'a self, payload_sha256: &'a [u8; 32]) -> LeafFields<'a> {
        LeafFields {
            id: &self.id,
            payload_sha256,
            tier: self.verification.tier.code(),
            valid: self.verification.valid,
            severity: self.ethics.severity.code(),
            permitted: self.permitted,
            overall: self.ethics.overall,
            value: self.value.value,
            clarity: self.convergence.clarity,
        }
    }

    /// Parses `payload_digest` back to bytes.
    pub fn payload_sha256(&self) -> Option<[u8; 32]> {
        let mut out = [0u8; 32];
        let hexpart = self.payload_digest.strip_prefix("sha256:")?;
        hex::decode_to_slice(hexpart, &mut out).ok()?;
        Some(out)
    }
}

/// Runs value, ethics, consistency and SNR on a verified record and computes its leaf.
pub fn assess(c: Checked, policy: &Policy, policy_version: &str) -> Assessed {
    let Checked {
        mut scored,
        verification,
        batch,
    } = c;
    // Moved, not copied: the observation is not needed after this stage.
    let id = std::mem::take(&mut scored.decoded.obs.id);
    let domain = scored.decoded.obs.context.domain.take();
    let features = scored.decoded.obs.features.take();
    let obs = &scored.decoded.obs;
    let conv = scored.convergence;
    let prov = Provenance {
        source: obs.source.is_some(),
        verified: verification.checks.signature == SignatureCheck::Ok,
        attestation: obs.attestation.is_some(),
    };
    let value = value::assess(&conv, prov, &policy.value);
    let ethics = ethics::evaluate(&obs.context, conv.clarity, &policy.ethics);
    let consistency = snr::consistency(conv.clarity, value.value, ethics.overall);
    let snr = snr::score(
        &conv,
        consistency,
        value.disagreement,
        ethics.ihsan_score(),
        &policy.snr,
    );
    let permitted = ethics.permitted && verification.valid;
    let verdict = Box::new(Verdict {
        id,
        input: scored.decoded.origin.input.take(),
        policy_version: policy_version.into(),
        decision: Decision::of(permitted, ethics.severity),
        permitted,
        convergence: conv,
        verification,
        value,
        ethics,
        snr,
        consistency,
        batch,
        proof: None,
        latency_ms: 0.0,
        payload_digest: crate::verification::sha256_ref(&obs.payload_sha256),
        explanation: None,
        event_ms: scored.decoded.origin.event_ms,
        future_dated: scored.decoded.origin.future_dated,
        domain,
        features,
    });
    let leaf = verdict.leaf_fields(&obs.payload_sha256).hash();
    Assessed {
        verdict,
        leaf,
        ingest_ms: scored.decoded.origin.ingest_ms,
    }
}
