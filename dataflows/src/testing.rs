//! Test and bench support, not part of the API: records made by the real stages, so that tests
//! of later stages (statistics, explanations, consolidation) and the stage benches start from
//! what the pipeline would hand them.

use crate::convergence::converge;
use crate::decode::Limits;
use crate::observation::InputRef;
use crate::pipeline::{decode_record, RawRecord};
use crate::policy::Policy;
use crate::record::{Checked, Scored};
use crate::verification::sampling::SampleKey;
use crate::verification::{BatchRef, Checks, DigestCheck, SignatureCheck, Tier, Verification};

/// A fixed sampling key for tests and benches (never a deployment's).
pub fn test_key() -> SampleKey {
    SampleKey::from_secret(&[0x5a; 32])
}

/// A verification outcome without digest or signature; a `replay` carries the reason.
pub fn verification(tier: Tier, valid: bool, confidence: f64, replay: bool) -> Verification {
    Verification {
        tier,
        valid,
        confidence,
        checks: Checks {
            digest: DigestCheck::Absent,
            signature: SignatureCheck::Absent,
            replay,
        },
        reason: replay.then(|| "replay".into()),
    }
}

/// `json` decoded and scored by the real stages, then given `verification` and `batch` as
/// the verify operator would. Panics if `json` is not a valid observation.
pub fn checked(
    json: &[u8],
    input: Option<InputRef>,
    ingest_ms: i64,
    policy: &Policy,
    verification: Verification,
    batch: BatchRef,
) -> Checked {
    let raw = RawRecord {
        bytes: json.to_vec(),
        position: input.as_ref().map_or(0, |i| i.offset as u64),
        input,
        ingest_ms,
        message_ms: None,
        broker_ms: None,
        oversize: None,
    };
    let decoded =
        decode_record(raw, &Limits::default(), 1 << 21, u64::MAX, &test_key()).expect("a valid observation");
    let convergence = converge(&decoded.obs, &policy.convergence);
    Checked {
        scored: Scored { decoded, convergence },
        verification,
        batch,
    }
}
