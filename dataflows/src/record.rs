//! The records that travel between operators, one type per edge of the dataflow. Owns no
//! logic beyond small accessors; the stages that fill them live in their own files.

use serde::{Deserialize, Serialize};

use crate::convergence::Convergence;
use crate::observation::{Observation, Origin};
use crate::rollback::Rollback;
use crate::verdict::Verdict;
use crate::verification::merkle::Hash;
use crate::verification::replay_log::ReplayRecord;
use crate::verification::{BatchRef, Tier, Verification};

/// A decoded observation with its provenance and its routing hash.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decoded {
    pub obs: Observation,
    pub origin: Origin,
    /// 128-bit public hash of `id`: its high half is the replay guard's fingerprint.
    pub id_hash: u128,
    /// The replay-guard bucket, a keyed hash of the fingerprint: routes the record to its
    /// shard. No sender can pick ids that share one.
    pub bucket: u8,
}

/// After convergence scoring. The observation stays boxed from decoding to the verdict so
/// that operators move a pointer, not the whole record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scored {
    pub decoded: Box<Decoded>,
    pub convergence: Convergence,
}

/// After verification: the checks and the leaf's place in its batch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Checked {
    pub scored: Scored,
    pub verification: Verification,
    pub batch: BatchRef,
}

/// A verification batch closed: all `size` leaves of batch `seq` have been emitted before
/// this event on the same worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seal {
    pub shard: u32,
    pub tier: Tier,
    pub seq: u64,
    pub size: u32,
    /// How long the batch was open (ms), for the seal-time metric; not part of any output.
    pub open_ms: u64,
}

/// What the verification operator emits, in order, per worker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum BatchEvent<I> {
    Item(I),
    /// A statistical verdict's signature failed its later check: a leaf of the batch, before
    /// the batch's seal.
    Rollback(Box<Rollback>),
    Seal(Seal),
    /// A record of the replay guard's persisted state, for the runtime to make durable.
    Replay(ReplayRecord),
}

impl<I> BatchEvent<I> {
    /// Applies `f` to an item and passes everything else through unchanged.
    pub fn map<J>(self, f: impl FnOnce(I) -> J) -> BatchEvent<J> {
        match self {
            BatchEvent::Item(i) => BatchEvent::Item(f(i)),
            BatchEvent::Rollback(r) => BatchEvent::Rollback(r),
            BatchEvent::Seal(s) => BatchEvent::Seal(s),
            BatchEvent::Replay(r) => BatchEvent::Replay(r),
        }
    }
}

/// A verdict whose leaf hash is known; `proof` is attached when its batch seals.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Assessed {
    pub verdict: Box<Verdict>,
    pub leaf: Hash,
    /// Wall-clock ms the record entered bizra, for `latency_ms`.
    pub ingest_ms: i64,
}
