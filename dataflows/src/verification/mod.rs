//! Verification (SPEC §2.2, §3): the tier rules and the per-shard batcher. The cryptographic
//! pieces live in the submodules; this file owns only how they are combined.

pub mod commitment;
pub mod leaf;
pub mod merkle;
pub mod replay;
pub mod sampling;
pub mod signature;

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
