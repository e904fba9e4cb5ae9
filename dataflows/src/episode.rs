//! Episodes: what the audit archive (L3) keeps of one sealed verification batch. An episode
//! is a compact record per verdict — the SPEC §3.1 leaf fields, the decision, the conditions
//! and the batch position — plus the batch's commitment coordinates, so every record can be
//! checked against the signed Merkle root without the original payload.
//!
//! On disk an episode is compact JSON: each record is an array, not an object (see
//! [`EpisodeRecord`]'s `Serialize`), codes stand for tier, severity and decision, and each
//! distinct condition text is stored once per episode and referred to by index. That halves
//! the bytes that must be hashed and xz-compressed per verdict, which is what the archive's
//! throughput is bound by.
//!
//! Episodes of one shard form a hash chain: `h = SHA3-512(canonical JSON of the episode)`,
//! `root = SHA3-512(prev_root ‖ h)`, `root₀` = 64 zero bytes. The chain is by position, not by
//! id: a repeated id (a redelivered input) is just another episode.

use std::collections::HashMap;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha3::{Digest, Sha3_512};

use crate::ethics::Severity;
use crate::observation::InputRef;
use crate::verdict::{Decision, Verdict};
use crate::verification::commitment::Commitment;
use crate::verification::leaf::LeafFields;
use crate::verification::merkle::{self, Hash};
use crate::verification::Tier;

/// A chain root or an episode hash (SHA3-512).
pub type Digest64 = [u8; 64];

/// The root before the first episode of a chain.
pub const ROOT_0: Digest64 = [0u8; 64];

/// One verdict as the archive keeps it. Serialized as the array `[id, [topic, partition,
/// offset] | null, payload_digest, tier code, valid, severity code, permitted, overall, value,
/// clarity, decision code, [condition indices], leaf_index, features | null]`, with the codes
/// of SPEC §3.1 (tier 0–2, severity 0–4) and decision 0 permit, 1 review, 2 deny.
#[derive(Clone, Debug, PartialEq)]
pub struct EpisodeRecord {
    pub id: String,
    pub input: Option<InputRef>,
    /// `sha256:<hex>` of the observation's payload (a SPEC §3.1 leaf field).
    pub payload_digest: String,
    pub tier: Tier,
    pub valid: bool,
    pub severity: Severity,
    pub permitted: bool,
    pub overall: f64,
    pub value: f64,
    pub clarity: f64,
    pub decision: Decision,
    /// The verdict's conditions, as indices into the episode's `conditions`.
    pub conditions: Vec<u32>,
    /// Position of the verdict's leaf in the batch's Merkle tree.
    pub leaf_index: u32,
    /// The observation's `features`, for similar-episode recall (f32 is plenty for that).
    pub features: Option<Vec<f32>>,
}

/// The serialized form of an [`EpisodeRecord`].
type Row = (
    String,
    Option<(String, i32, i64)>,
    String,
    u8,
    bool,
    u8,
    bool,
    f64,
    f64,
    f64,
    u8,
    Vec<u32>,
    u32,
    Option<Vec<f32>>,
);

impl Serialize for EpisodeRecord {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let input = self.input.as_ref().map(|i| (&i.topic, i.partition, i.offset));
        (
            &self.id,
            input,
            &self.payload_digest,
            self.tier.code(),
            self.valid,
            self.severity.code(),
            self.permitted,
            self.overall,
            self.value,
            self.clarity,
            self.decision as u8,
            &self.conditions,
            self.leaf_index,
            &self.features,
        )
            .serialize(s)
    }
}

impl<'de> Deserialize<'de> for EpisodeRecord {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let r: Row = Row::deserialize(d)?;
        let code = |what: &str, c: u8, n: usize| {
            (usize::from(c) < n)
                .then_some(usize::from(c))
                .ok_or_else(|| D::Error::custom(format!("{what} code: expected 0 to {}, found {c}", n - 1)))
        };
        Ok(EpisodeRecord {
            id: r.0,
            input: r.1.map(|(topic, partition, offset)| InputRef {
                topic,
                partition,
                offset,
            }),
            payload_digest: r.2,
            tier: Tier::ALL[code("tier", r.3, Tier::ALL.len())?],
            valid: r.4,
            severity: Severity::ALL[code("severity", r.5, Severity::ALL.len())?],
            permitted: r.6,
            overall: r.7,
            value: r.8,
            clarity: r.9,
            decision: Decision::ALL[code("decision", r.10, Decision::ALL.len())?],
            conditions: r.11,
            leaf_index: r.12,
            features: r.13,
        })
    }
}

/// The distinct condition texts of one episode, each stored once.
#[derive(Debug, Default)]
pub struct Conditions {
    list: Vec<String>,
    index: HashMap<String, u32>,
}

impl Conditions {
    /// The index of `text`, adding it if new.
    pub fn intern(&mut self, text: &str) -> u32 {
        if let Some(&i) = self.index.get(text) {
            return i;
        }
        let i = self.list.len() as u32;
        self.list.push(text.to_owned());
        self.index.insert(text.to_owned(), i);
        i
    }

    pub fn into_list(self) -> Vec<String> {
        self.list
    }
}

impl EpisodeRecord {
    /// The compact record of `v`, its conditions interned in `conditions`.
    pub fn from_verdict(v: &Verdict, conditions: &mut Conditions) -> EpisodeRecord {
        EpisodeRecord {
            id: v.id.clone(),
            input: v.input.clone(),
            payload_digest: v.payload_digest.clone(),
            tier: v.verification.tier,
            valid: v.verification.valid,
            severity: v.ethics.severity,
            permitted: v.permitted,
            overall: v.ethics.overall,
            value: v.value.value,
            clarity: v.convergence.clarity,
            decision: v.decision,
            conditions: v.ethics.conditions.iter().map(|c| conditions.intern(c)).collect(),
            leaf_index: v.batch.leaf_index,
            features: v.features.as_ref().map(|f| f.iter().map(|x| *x as f32).collect()),
        }
    }

    /// The Merkle leaf hash this record commits to (SPEC §3.1); `None` if `payload_digest`
    /// is not `sha256:<64 hex>`.
    pub fn leaf_hash(&self) -> Option<Hash> {
        let mut sha = [0u8; 32];
        hex::decode_to_slice(self.payload_digest.strip_prefix("sha256:")?, &mut sha).ok()?;
        let fields = LeafFields {
            id: &self.id,
            payload_sha256: &sha,
            tier: self.tier.code(),
            valid: self.valid,
            severity: self.severity.code(),
            permitted: self.permitted,
            overall: self.overall,
            value: self.value,
            clarity: self.clarity,
        };
        Some(merkle::leaf_hash(&fields.encode()))
    }
}

/// The verdicts of one sealed batch, in leaf order, with the batch's commitment coordinates.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Episode {
    pub shard: u32,
    pub seq: u64,
    /// The run id of the commitment (hex, 16 digits).
    pub run: String,
    pub tree_size: u64,
    /// The batch's Merkle root (hex), as signed in its commitment.
    pub root: String,
    /// The distinct condition texts of the records, which refer to them by index.
    pub conditions: Vec<String>,
    pub records: Vec<EpisodeRecord>,
}

impl Episode {
    /// An episode for `c` with `records` sorted into leaf order.
    pub fn new(c: &Commitment, conditions: Conditions, mut records: Vec<EpisodeRecord>) -> Episode {
        records.sort_by_key(|r| r.leaf_index);
        Episode {
            shard: c.shard,
            seq: c.seq,
            run: c.run.clone(),
            tree_size: c.tree_size,
            root: c.root.clone(),
            conditions: conditions.into_list(),
            records,
        }
    }

    /// The condition texts of `r`, a record of this episode (an index out of range reads as
    /// an empty text; `audit verify` reports such an episode as malformed).
    pub fn conditions_of<'a>(&'a self, r: &'a EpisodeRecord) -> impl Iterator<Item = &'a str> + 'a {
        r.conditions
            .iter()
            .map(|&i| self.conditions.get(i as usize).map_or("", String::as_str))
    }

    /// The canonical bytes of the episode: its JSON with fields in declaration order and
    /// floats in shortest round-trip form (so parsing and re-serializing gives the same bytes).
    pub fn canonical(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("episodes serialize")
    }

    /// SHA3-512 of [`Episode::canonical`].
    pub fn content_hash(&self) -> Digest64 {
        Sha3_512::digest(self.canonical()).into()
    }

    /// True if the records rebuild the Merkle root of the commitment: every leaf present,
    /// in order, and hashing to `root`.
    pub fn matches_root(&self) -> bool {
        let leaves: Option<Vec<Hash>> = self.records.iter().map(EpisodeRecord::leaf_hash).collect();
        let Some(leaves) = leaves else { return false };
        leaves.len() as u64 == self.tree_size
            && self
                .records
                .iter()
                .enumerate()
                .all(|(i, r)| r.leaf_index as usize == i)
            && hex::encode(merkle::root(&leaves)) == self.root
    }
}

/// The next chain root: SHA3-512(prev ‖ h).
pub fn chain(prev: &Digest64, h: &Digest64) -> Digest64 {
    let mut s = Sha3_512::new();
    s.update(prev);
    s.update(h);
    s.finalize().into()
}
