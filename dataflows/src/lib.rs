//! bizra's pure stages and thin timely operators.
//!
//! # Layout
//! - `observation`: decoded observation and provenance types.
//! - `decode`: bytes → observation or dead letter (SPEC §1.1, §1.4).
//! - `dead_letter`: the dead-letter record and its error kinds.
//! - `bounds`: how much input an output echoes, and the largest dead letter and commitment.
//! - `policy`: weights, thresholds and keywords of the stages, with the reference default.
//! - `convergence`, `value`, `ethics`, `snr`: the scoring stages (SPEC §2.1, §2.3–§2.5).
//! - `verification/`: digest, signatures, replay guard, tiers, Merkle trees, commitments.
//! - `verdict`: the output record (SPEC §1.2); `rollback`: a statistical verdict's later
//!   failed check (SPEC §1.6); `record`: what flows between operators.
//! - `wire`: the verdict's JSON, written by hand (same bytes as serde_json, faster).
//! - `explain`: the optional human-readable `explanation` of a verdict, in three styles.
//! - `episode`: the compact per-batch record of the audit archive and its hash chain.
//! - `operators/`: timely operators wrapping the stages; `pipeline` wires them.

pub mod bounds;
pub mod convergence;
pub mod dead_letter;
pub mod decode;
pub mod episode;
pub mod ethics;
pub mod explain;
pub mod observation;
pub mod operators;
pub mod pipeline;
pub mod policy;
pub mod record;
pub mod rollback;
pub mod snr;
pub mod stats;
#[doc(hidden)]
pub mod testing;
pub mod value;
pub mod verdict;
pub mod verification;
pub mod wire;
