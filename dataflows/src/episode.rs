//! Episodes: what the audit archive (L3) keeps of one sealed verification batch. An episode
//! is a compact record per verdict — the SPEC §3.1 leaf fields, the decision, the conditions
//! and the batch position — plus the batch's commitment coordinates, so every record can be
//! checked against the signed Merkle root without the original payload.
//!
//! On disk an episode is its canonical binary form ([`Episode::canonical`], read back by
//! [`Episode::from_canonical`]): fixed-width little-endian integers, raw IEEE floats, codes for
//! tier, severity and decision, hex digests as their raw bytes, and each distinct condition
//! text stored once per episode and referred to by index. The bytes that must be hashed and
//! xz-compressed per verdict are what the archive's throughput is bound by; this form has half
//! as many as compact JSON and no hex or decimal text, which xz compresses slowly.
//!
//! For display (`bizra audit get`, `/episodes/{id}`) an episode serializes to JSON with serde;
//! a record is then an array, not an object (see [`EpisodeRecord`]'s `Serialize`).
//!
//! Episodes of one shard form a hash chain: `h = SHA3-512(canonical bytes of the episode)`,
//! `root = SHA3-512(prev_root ‖ h)`, `root₀` = 64 zero bytes. The chain is by position, not by
//! id: a repeated id (a redelivered input) is just another episode.

use std::collections::HashMap;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha3::{Digest, Sha3_512};

use crate::ethics::Severity;
use crate::observation::InputRef;
use crate::rollback::{Reason, Rollback};
use crate::verdict::{Decision, Verdict};
use crate::verification::commitment::Commitment;
use crate::verification::leaf::LeafFields;
use crate::verification::merkle::{self, Hash};
use crate::verification::Tier;

/// A chain root or an episode hash (SHA3-512).
pub type Digest64 = [u8; 64];

/// The root before the first episode of a chain.
pub const ROOT_0: Digest64 = [0u8; 64];

/// One verdict as the archive keeps it. Serialized (JSON, for display) as the array `[id, [topic, partition,
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
                topic: topic.into(),
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
            id: v.id.to_string(),
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
    /// The batch's rollback leaves (SPEC §1.6), after its verdicts; usually none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rollbacks: Vec<RollbackLeaf>,
}

/// A rollback leaf as the archive keeps it: what rebuilds its leaf, and the verdict it names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackLeaf {
    pub id: String,
    /// `sha256:<hex>` of the observation's payload.
    pub payload_digest: String,
    pub reason: Reason,
    /// Position of the rollback's leaf in the batch.
    pub leaf_index: u32,
    /// Position of the rolled-back verdict's leaf in the same batch.
    pub verdict_leaf: u32,
}

impl RollbackLeaf {
    /// The compact form of `r`.
    pub fn from_rollback(r: &Rollback) -> RollbackLeaf {
        RollbackLeaf {
            id: r.id.to_string(),
            payload_digest: r.payload_digest.clone(),
            reason: r.reason,
            leaf_index: r.batch.leaf_index,
            verdict_leaf: r.verdict_batch.leaf_index,
        }
    }

    /// The rollback's Merkle leaf hash (SPEC §1.6); `None` if `payload_digest` is malformed.
    pub fn leaf_hash(&self) -> Option<Hash> {
        let mut sha = [0u8; 32];
        hex::decode_to_slice(self.payload_digest.strip_prefix("sha256:")?, &mut sha).ok()?;
        Some(crate::rollback::leaf_hash(&self.id, &sha, self.reason))
    }
}

impl Episode {
    /// An episode for `c` with `records` and `rollbacks` sorted into leaf order.
    pub fn new(
        c: &Commitment,
        conditions: Conditions,
        mut records: Vec<EpisodeRecord>,
        mut rollbacks: Vec<RollbackLeaf>,
    ) -> Episode {
        records.sort_by_key(|r| r.leaf_index);
        rollbacks.sort_by_key(|r| r.leaf_index);
        Episode {
            shard: c.shard,
            seq: c.seq,
            run: c.run.clone(),
            tree_size: c.tree_size,
            root: c.root.clone(),
            conditions: conditions.into_list(),
            records,
            rollbacks,
        }
    }

    /// The condition texts of `r`, a record of this episode (an index out of range reads as
    /// an empty text; `audit verify` reports such an episode as malformed).
    pub fn conditions_of<'a>(&'a self, r: &'a EpisodeRecord) -> impl Iterator<Item = &'a str> + 'a {
        r.conditions
            .iter()
            .map(|&i| self.conditions.get(i as usize).map_or("", String::as_str))
    }

    /// The canonical bytes of the episode, what the archive stores and hashes. Little-endian;
    /// `varint` is unsigned LEB128 (u64) in its shortest form, `str` a varint length and UTF-8:
    /// ```text
    /// b"BZE1" | shard u32 | seq u64 | run tagged(8) | tree_size u64 | root tagged(32)
    ///   | conditions: varint count, str each | records: varint count, then each record:
    /// id str | input: u8 0 none, 1 then topic str, partition i32, offset i64
    ///   | payload_digest tagged(32, "sha256:") | tier u8 (0–2) | valid u8 (0/1)
    ///   | severity u8 (0–4) | permitted u8 (0/1) | decision u8 (0 permit, 1 review, 2 deny)
    ///   | overall f64 | value f64 | clarity f64 (raw IEEE bits)
    ///   | conditions: varint count, varint index each | leaf_index u32
    ///   | features: u8 0 none, 1 then varint count, f32 each (raw bits)
    /// then, only when the batch has rollbacks: varint count (≥ 1), then each:
    /// id str | payload_digest tagged(32, "sha256:") | reason u8 (0–1) | leaf_index u32
    ///   | verdict_leaf u32
    /// ```
    /// `tagged(n, prefix)` is a string field in its usual form — `prefix` then the lower-case
    /// hex of `n` bytes (`run`: 16 digits, `root`: 64) — as the tag 0 and those `n` raw bytes,
    /// and any other string as the tag 1 and a `str`. So encoding never fails, and the form is
    /// one-to-one: [`Episode::from_canonical`] accepts exactly the bytes this returns.
    pub fn canonical(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(96 + self.records.len() * 160);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.shard.to_le_bytes());
        out.extend_from_slice(&self.seq.to_le_bytes());
        put_tagged::<8>(&mut out, &self.run, "");
        out.extend_from_slice(&self.tree_size.to_le_bytes());
        put_tagged::<32>(&mut out, &self.root, "");
        put_varint(&mut out, self.conditions.len() as u64);
        for c in &self.conditions {
            put_str(&mut out, c);
        }
        put_varint(&mut out, self.records.len() as u64);
        for r in &self.records {
            r.encode(&mut out);
        }
        if !self.rollbacks.is_empty() {
            put_varint(&mut out, self.rollbacks.len() as u64);
            for r in &self.rollbacks {
                put_str(&mut out, &r.id);
                put_tagged::<32>(&mut out, &r.payload_digest, "sha256:");
                out.push(r.reason.code());
                out.extend_from_slice(&r.leaf_index.to_le_bytes());
                out.extend_from_slice(&r.verdict_leaf.to_le_bytes());
            }
        }
        out
    }

    /// The episode whose [`Episode::canonical`] bytes are `bytes`. The error says what is wrong
    /// and at which byte: truncation, trailing bytes, a code or flag out of range, invalid
    /// UTF-8, or bytes `canonical` never writes (a varint not in its shortest form, the tag 1
    /// for a string of the usual form).
    pub fn from_canonical(bytes: &[u8]) -> Result<Episode, String> {
        let mut r = Reader {
            bytes,
            pos: 0,
            record: None,
        };
        let magic = r.take(4, "magic")?;
        if magic != MAGIC {
            return Err(r.err(
                0,
                "magic",
                format_args!("expected \"BZE1\", found \"{}\"", magic.escape_ascii()),
            ));
        }
        let shard = u32::from_le_bytes(r.array("shard")?);
        let seq = u64::from_le_bytes(r.array("seq")?);
        let run = r.tagged::<8>("run", "")?;
        let tree_size = u64::from_le_bytes(r.array("tree_size")?);
        let root = r.tagged::<32>("root", "")?;
        let n = r.count("conditions", 1)?;
        let mut conditions = Vec::with_capacity(n);
        for _ in 0..n {
            conditions.push(r.str("condition")?);
        }
        let n = r.count("records", MIN_RECORD_BYTES)?;
        let mut records = Vec::with_capacity(n);
        for i in 0..n {
            r.record = Some(i);
            records.push(EpisodeRecord::decode(&mut r)?);
        }
        r.record = None;
        let mut rollbacks = Vec::new();
        let rest = r.pos;
        if r.pos != bytes.len() {
            let n = r.count("rollbacks", 1 + 2 + 1 + 8)?;
            if n == 0 {
                // `canonical` writes no empty list: the bytes after the records are extra.
                r.pos = rest;
            }
            for _ in 0..n {
                rollbacks.push(RollbackLeaf {
                    id: r.str("rollback id")?,
                    payload_digest: r.tagged::<32>("rollback payload_digest", "sha256:")?,
                    reason: Reason::ALL[r.code("rollback reason", Reason::ALL.len())?],
                    leaf_index: u32::from_le_bytes(r.array("rollback leaf_index")?),
                    verdict_leaf: u32::from_le_bytes(r.array("rollback verdict_leaf")?),
                });
            }
        }
        if r.pos != bytes.len() {
            let extra = bytes.len() - r.pos;
            return Err(r.err(
                r.pos,
                "end",
                format_args!("expected the end of the episode, found {extra} more bytes"),
            ));
        }
        Ok(Episode {
            shard,
            seq,
            run,
            tree_size,
            root,
            conditions,
            records,
            rollbacks,
        })
    }

    /// SHA3-512 of [`Episode::canonical`].
    pub fn content_hash(&self) -> Digest64 {
        Sha3_512::digest(self.canonical()).into()
    }

    /// True if the records and rollbacks rebuild the Merkle root of the commitment: every
    /// leaf present once, in order, and hashing to `root`.
    pub fn matches_root(&self) -> bool {
        let mut leaves: Vec<(u32, Option<Hash>)> = self
            .records
            .iter()
            .map(|r| (r.leaf_index, r.leaf_hash()))
            .chain(self.rollbacks.iter().map(|r| (r.leaf_index, r.leaf_hash())))
            .collect();
        leaves.sort_by_key(|(i, _)| *i);
        let in_order = leaves.iter().enumerate().all(|(i, (at, _))| *at as usize == i);
        let leaves: Option<Vec<Hash>> = leaves.into_iter().map(|(_, h)| h).collect();
        let Some(leaves) = leaves else { return false };
        in_order && leaves.len() as u64 == self.tree_size && hex::encode(merkle::root(&leaves)) == self.root
    }
}

/// The first bytes of every canonical episode.
const MAGIC: &[u8; 4] = b"BZE1";

/// The fewest bytes a canonical record takes: empty id, no input, the tag 1 and an empty
/// payload digest, the five codes, three floats, no conditions, the leaf index, no features.
const MIN_RECORD_BYTES: usize = 1 + 1 + 2 + 5 + 24 + 1 + 4 + 1;

impl EpisodeRecord {
    /// Appends the record's part of [`Episode::canonical`].
    fn encode(&self, out: &mut Vec<u8>) {
        put_str(out, &self.id);
        match &self.input {
            None => out.push(0),
            Some(i) => {
                out.push(1);
                put_str(out, &i.topic);
                out.extend_from_slice(&i.partition.to_le_bytes());
                out.extend_from_slice(&i.offset.to_le_bytes());
            }
        }
        put_tagged::<32>(out, &self.payload_digest, "sha256:");
        out.extend_from_slice(&[
            self.tier.code(),
            u8::from(self.valid),
            self.severity.code(),
            u8::from(self.permitted),
            self.decision as u8,
        ]);
        for x in [self.overall, self.value, self.clarity] {
            out.extend_from_slice(&x.to_bits().to_le_bytes());
        }
        put_varint(out, self.conditions.len() as u64);
        for &c in &self.conditions {
            put_varint(out, u64::from(c));
        }
        out.extend_from_slice(&self.leaf_index.to_le_bytes());
        match &self.features {
            None => out.push(0),
            Some(f) => {
                out.push(1);
                put_varint(out, f.len() as u64);
                for x in f {
                    out.extend_from_slice(&x.to_bits().to_le_bytes());
                }
            }
        }
    }

    /// Reads one record written by [`EpisodeRecord::encode`].
    fn decode(r: &mut Reader<'_>) -> Result<EpisodeRecord, String> {
        let id = r.str("id")?;
        let input = match r.flag("input")? {
            false => None,
            true => Some(InputRef {
                topic: r.str("input topic")?.into(),
                partition: i32::from_le_bytes(r.array("input partition")?),
                offset: i64::from_le_bytes(r.array("input offset")?),
            }),
        };
        let payload_digest = r.tagged::<32>("payload_digest", "sha256:")?;
        let tier = Tier::ALL[r.code("tier", Tier::ALL.len())?];
        let valid = r.flag("valid")?;
        let severity = Severity::ALL[r.code("severity", Severity::ALL.len())?];
        let permitted = r.flag("permitted")?;
        let decision = Decision::ALL[r.code("decision", Decision::ALL.len())?];
        let overall = f64::from_bits(u64::from_le_bytes(r.array("overall")?));
        let value = f64::from_bits(u64::from_le_bytes(r.array("value")?));
        let clarity = f64::from_bits(u64::from_le_bytes(r.array("clarity")?));
        let n = r.count("conditions", 1)?;
        let mut conditions = Vec::with_capacity(n);
        for _ in 0..n {
            let at = r.pos;
            let i = r.varint("condition index")?;
            let i = u32::try_from(i).map_err(|_| {
                r.err(
                    at,
                    "condition index",
                    format_args!("expected at most {}, found {i}", u32::MAX),
                )
            })?;
            conditions.push(i);
        }
        let leaf_index = u32::from_le_bytes(r.array("leaf_index")?);
        let features = match r.flag("features")? {
            false => None,
            true => {
                let n = r.count("features", 4)?;
                let mut f = Vec::with_capacity(n);
                for _ in 0..n {
                    f.push(f32::from_bits(u32::from_le_bytes(r.array("feature")?)));
                }
                Some(f)
            }
        };
        Ok(EpisodeRecord {
            id,
            input,
            payload_digest,
            tier,
            valid,
            severity,
            permitted,
            overall,
            value,
            clarity,
            decision,
            conditions,
            leaf_index,
            features,
        })
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// A string field: the tag 0 and `N` raw bytes if `s` is `prefix` and their lower-case hex,
/// else the tag 1 and the string.
fn put_tagged<const N: usize>(out: &mut Vec<u8>, s: &str, prefix: &str) {
    match raw_form::<N>(s, prefix) {
        Some(raw) => {
            out.push(0);
            out.extend_from_slice(&raw);
        }
        None => {
            out.push(1);
            put_str(out, s);
        }
    }
}

/// The `N` bytes `s` spells if it is `prefix` and `2 N` lower-case hex digits.
fn raw_form<const N: usize>(s: &str, prefix: &str) -> Option<[u8; N]> {
    let digits = s.strip_prefix(prefix)?.as_bytes();
    if digits.len() != 2 * N {
        return None;
    }
    let nibble = |d: u8| match d {
        b'0'..=b'9' => Some(d - b'0'),
        b'a'..=b'f' => Some(d - b'a' + 10),
        _ => None,
    };
    let mut raw = [0u8; N];
    for (b, pair) in raw.iter_mut().zip(digits.chunks_exact(2)) {
        *b = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(raw)
}

/// `prefix` and the lower-case hex of `raw`: the inverse of [`raw_form`].
fn hex_form(prefix: &str, raw: &[u8]) -> String {
    let mut out = vec![0u8; prefix.len() + 2 * raw.len()];
    out[..prefix.len()].copy_from_slice(prefix.as_bytes());
    hex::encode_to_slice(raw, &mut out[prefix.len()..]).expect("twice the bytes");
    String::from_utf8(out).expect("a str prefix and hex digits")
}

/// A cursor over canonical bytes; errors name the byte offset, the record and the field.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// The record being read, for messages.
    record: Option<usize>,
}

impl<'a> Reader<'a> {
    fn err(&self, at: usize, what: &str, problem: impl std::fmt::Display) -> String {
        match self.record {
            Some(i) => format!("byte {at}: record {i} {what}: {problem}"),
            None => format!("byte {at}: {what}: {problem}"),
        }
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        let left = self.bytes.len() - self.pos;
        if n > left {
            let problem = format_args!("expected {n} bytes, found {left} (truncated)");
            return Err(self.err(self.pos, what, problem));
        }
        let taken = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(taken)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        Ok(self.take(N, what)?.try_into().expect("N bytes taken"))
    }

    /// A code below `n`, as an index.
    fn code(&mut self, what: &str, n: usize) -> Result<usize, String> {
        let at = self.pos;
        let c = self.take(1, what)?[0];
        match usize::from(c) < n {
            true => Ok(usize::from(c)),
            false => Err(self.err(
                at,
                what,
                format_args!("expected a code 0 to {}, found {c}", n - 1),
            )),
        }
    }

    /// A boolean or an option tag: 0 or 1.
    fn flag(&mut self, what: &str) -> Result<bool, String> {
        let at = self.pos;
        match self.take(1, what)?[0] {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(self.err(at, what, format_args!("expected 0 or 1, found {b}"))),
        }
    }

    /// An unsigned LEB128 u64 in its shortest form.
    fn varint(&mut self, what: &str) -> Result<u64, String> {
        let at = self.pos;
        let mut v = 0u64;
        let mut shift = 0;
        loop {
            let b = self.take(1, what)?[0];
            if shift == 63 && b > 1 {
                return Err(self.err(at, what, "expected a varint of at most 64 bits"));
            }
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                if b == 0 && shift > 0 {
                    return Err(self.err(at, what, "expected a varint in its shortest form"));
                }
                return Ok(v);
            }
            shift += 7;
        }
    }

    /// A varint count of items of at least `min_bytes` each, checked against the bytes left
    /// (so a corrupt count is not allocated).
    fn count(&mut self, what: &str, min_bytes: usize) -> Result<usize, String> {
        let at = self.pos;
        let n = self.varint(what)?;
        let left = self.bytes.len() - self.pos;
        match usize::try_from(n) {
            Ok(n) if n <= left / min_bytes => Ok(n),
            _ => {
                let problem = format_args!("count {n} needs more than the {left} bytes left (truncated)");
                Err(self.err(at, what, problem))
            }
        }
    }

    fn str(&mut self, what: &str) -> Result<String, String> {
        let n = self.count(what, 1)?;
        let at = self.pos;
        let bytes = self.take(n, what)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(e) => Err(self.err(
                at + e.valid_up_to(),
                what,
                "expected UTF-8, found an invalid sequence",
            )),
        }
    }

    /// A string written by [`put_tagged`].
    fn tagged<const N: usize>(&mut self, what: &str, prefix: &str) -> Result<String, String> {
        let at = self.pos;
        match self.take(1, what)?[0] {
            0 => Ok(hex_form(prefix, &self.array::<N>(what)?)),
            1 => {
                let s = self.str(what)?;
                match raw_form::<N>(&s, prefix) {
                    None => Ok(s),
                    Some(_) => Err(self.err(
                        at,
                        what,
                        "expected the tag 0 for a string of the raw form, found 1",
                    )),
                }
            }
            t => Err(self.err(at, what, format_args!("expected the tag 0 or 1, found {t}"))),
        }
    }
}

/// The next chain root: SHA3-512(prev ‖ h).
pub fn chain(prev: &Digest64, h: &Digest64) -> Digest64 {
    let mut s = Sha3_512::new();
    s.update(prev);
    s.update(h);
    s.finalize().into()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn record(i: u32, input: bool, features: Option<Vec<f32>>) -> EpisodeRecord {
        EpisodeRecord {
            id: format!("obs-{i}"),
            input: input.then(|| InputRef {
                topic: "in".into(),
                partition: -3,
                offset: i64::MAX - i64::from(i),
            }),
            payload_digest: format!("sha256:{}", "0f".repeat(32)),
            tier: Tier::ALL[i as usize % 3],
            valid: i.is_multiple_of(2),
            severity: Severity::ALL[i as usize % 5],
            permitted: !i.is_multiple_of(3),
            overall: 0.1 + f64::from(i) / 7.0,
            value: -0.0,
            clarity: f64::MIN_POSITIVE / 3.0,
            decision: Decision::ALL[i as usize % 3],
            conditions: (0..i).collect(),
            leaf_index: i,
            features,
        }
    }

    fn sample() -> Episode {
        Episode {
            shard: 3,
            seq: u64::MAX,
            run: "00000000000000ab".into(),
            tree_size: 3,
            root: "c4".repeat(32),
            conditions: vec![
                "Note: 1 minor concerns identified".into(),
                "é ✓".into(),
                String::new(),
            ],
            records: vec![
                record(0, false, None),
                record(1, true, Some(vec![0.25, -0.5, f32::MAX, f32::MIN_POSITIVE])),
                record(2, true, Some(Vec::new())),
            ],
            rollbacks: Vec::new(),
        }
    }

    fn round_trips(e: &Episode) -> Vec<u8> {
        let bytes = e.canonical();
        assert_eq!(Episode::from_canonical(&bytes).as_ref(), Ok(e));
        bytes
    }

    /// The offsets of `sample_one`'s record fields (checked against the bytes found there).
    const TIER: usize = 4 + 4 + 8 + 9 + 8 + 33 + 1 + 1 + 6 + 1 + 33;

    /// An episode with no conditions and one record `obs-0` without input.
    fn sample_one() -> Vec<u8> {
        let mut e = sample();
        e.conditions.clear();
        e.records.truncate(1);
        let bytes = e.canonical();
        assert_eq!(&bytes[TIER - 33 - 1 - 5..TIER - 33 - 1], b"obs-0");
        assert_eq!(bytes[TIER..TIER + 5], [0, 1, 0, 0, 0]);
        bytes
    }

    #[test]
    fn episodes_round_trip_exactly() {
        let e = sample();
        let bytes = round_trips(&e);
        assert_eq!(&bytes[..4], b"BZE1");
        assert_eq!(
            (bytes[16], bytes[16 + 9 + 8]),
            (0, 0),
            "usual run and root are raw"
        );
        round_trips(&Episode {
            records: Vec::new(),
            conditions: Vec::new(),
            tree_size: 0,
            ..e.clone()
        });
        let mut nan = e.clone();
        nan.records[0].overall = f64::from_bits(0x7ff8_0000_dead_beef);
        nan.records[1].features = Some(vec![f32::from_bits(0xffc0_0001), f32::NEG_INFINITY]);
        let bytes = nan.canonical();
        assert_eq!(Episode::from_canonical(&bytes).unwrap().canonical(), bytes);
    }

    #[test]
    fn strings_not_in_their_usual_form_round_trip_tagged() {
        let e = sample();
        let odd_runs = [
            "",
            "00000000000000AB",
            "00000000000000a",
            "00000000000000abc",
            "0000000000000 ab",
        ];
        for run in odd_runs {
            let bytes = round_trips(&Episode {
                run: run.into(),
                ..e.clone()
            });
            assert_eq!(bytes[16], 1, "{run:?}");
        }
        let hex64 = "c4".repeat(32);
        for root in [
            "",
            "ab",
            &hex64.to_uppercase(),
            &format!("{hex64}0"),
            &hex64[1..],
            "é",
        ] {
            round_trips(&Episode {
                root: root.into(),
                ..e.clone()
            });
        }
        for digest in [
            String::new(),
            "sha256:".into(),
            "sha256:00".into(),
            format!("sha256:{}", "AB".repeat(32)),
            format!("SHA256:{}", "ab".repeat(32)),
            format!("sha256:{}", "ab".repeat(33)),
            format!("sha256:{}g", "ab".repeat(31)),
            "ab".repeat(32),
        ] {
            let mut odd = e.clone();
            odd.records[1].payload_digest = digest;
            round_trips(&odd);
        }
    }

    #[test]
    fn every_truncation_and_a_trailing_byte_are_rejected() {
        for bytes in [sample().canonical(), sample_one()] {
            for n in 0..bytes.len() {
                let e = Episode::from_canonical(&bytes[..n]).unwrap_err();
                assert!(e.contains("(truncated)") && e.starts_with("byte "), "{n}: {e}");
            }
            let mut longer = bytes.clone();
            longer.push(0);
            let e = Episode::from_canonical(&longer).unwrap_err();
            let expected = format!(
                "byte {}: end: expected the end of the episode, found 1 more bytes",
                bytes.len()
            );
            assert_eq!(e, expected);
        }
    }

    #[test]
    fn bad_codes_flags_and_tags_are_rejected_at_their_byte() {
        let good = sample_one();
        let bad = |at: usize, b: u8| {
            let mut bytes = good.clone();
            bytes[at] = b;
            Episode::from_canonical(&bytes).unwrap_err()
        };
        let t = TIER;
        let cases = [
            (0, b'X', "byte 0: magic: expected \"BZE1\", found \"XZE1\""),
            (16, 2, "byte 16: run: expected the tag 0 or 1, found 2"),
            (t - 34, 2, "byte 74: record 0 input: expected 0 or 1, found 2"),
            (
                t - 33,
                7,
                "byte 75: record 0 payload_digest: expected the tag 0 or 1, found 7",
            ),
            (t, 3, "byte 108: record 0 tier: expected a code 0 to 2, found 3"),
            (t + 1, 2, "byte 109: record 0 valid: expected 0 or 1, found 2"),
            (
                t + 2,
                5,
                "byte 110: record 0 severity: expected a code 0 to 4, found 5",
            ),
            (
                t + 3,
                255,
                "byte 111: record 0 permitted: expected 0 or 1, found 255",
            ),
            (
                t + 4,
                3,
                "byte 112: record 0 decision: expected a code 0 to 2, found 3",
            ),
            (
                good.len() - 1,
                2,
                "byte 142: record 0 features: expected 0 or 1, found 2",
            ),
            (
                t - 39,
                0xff,
                "byte 69: record 0 id: expected UTF-8, found an invalid sequence",
            ),
        ];
        for (at, b, expected) in cases {
            assert_eq!(bad(at, b), expected, "byte {at} = {b}");
        }
    }

    #[test]
    fn bytes_canonical_never_writes_are_rejected() {
        let mut e = sample();
        e.conditions.clear();
        e.records.clear();
        let empty = e.canonical();
        assert_eq!(empty.len(), 4 + 4 + 8 + 9 + 8 + 33 + 2);
        // A count of 0 written in two bytes.
        let mut long = empty.clone();
        long.splice(empty.len() - 1.., [0x80, 0x00]);
        let err = Episode::from_canonical(&long).unwrap_err();
        assert_eq!(err, "byte 67: records: expected a varint in its shortest form");
        // A varint above 64 bits.
        let mut wide = empty[..empty.len() - 1].to_vec();
        wide.extend_from_slice(&[0xff; 9]);
        wide.push(0x02);
        let err = Episode::from_canonical(&wide).unwrap_err();
        assert_eq!(err, "byte 67: records: expected a varint of at most 64 bits");
        // A run of the usual form written as a string.
        let mut tagged = empty[..16].to_vec();
        tagged.push(1);
        put_str(&mut tagged, "00000000000000ab");
        tagged.extend_from_slice(&empty[16 + 9..]);
        let err = Episode::from_canonical(&tagged).unwrap_err();
        assert_eq!(
            err,
            "byte 16: run: expected the tag 0 for a string of the raw form, found 1"
        );
        // A condition index above u32::MAX.
        let mut one = sample();
        one.records.truncate(1);
        one.records[0].conditions = vec![u32::MAX];
        let bytes = one.canonical();
        let at = bytes.len() - 4 - 1 - 5;
        assert_eq!(bytes[at..at + 5], [0xff, 0xff, 0xff, 0xff, 0x0f]);
        let mut big = bytes.clone();
        big[at + 4] = 0x1f;
        let err = Episode::from_canonical(&big).unwrap_err();
        assert!(
            err.ends_with("record 0 condition index: expected at most 4294967295, found 8589934591"),
            "{err}"
        );
        // A huge count is refused before anything is allocated for it.
        let mut huge = empty[..empty.len() - 1].to_vec();
        put_varint(&mut huge, u64::MAX);
        let err = Episode::from_canonical(&huge).unwrap_err();
        assert!(
            err.starts_with("byte 67: records: count 18446744073709551615 needs more"),
            "{err}"
        );
    }

    fn tagged_string(prefix: &'static str, digits: usize) -> BoxedStrategy<String> {
        prop_oneof![
            string_regex(&format!("[0-9a-f]{{{digits}}}")).prop_map(move |h| format!("{prefix}{h}")),
            string_regex(&format!("[0-9a-fA-F]{{{digits}}}")).prop_map(move |h| format!("{prefix}{h}")),
            string_regex(&format!("{prefix}[0-9a-f]{{0,{}}}", digits + 2)),
            any::<String>(),
        ]
        .boxed()
    }

    fn string_regex(re: &str) -> BoxedStrategy<String> {
        proptest::string::string_regex(re).unwrap().boxed()
    }

    /// Floats that compare equal to themselves, so episodes can be compared with `==`.
    fn float() -> impl Strategy<Value = f64> {
        use proptest::num::f64::*;
        NORMAL | SUBNORMAL | ZERO | INFINITE | POSITIVE | NEGATIVE
    }

    fn records() -> impl Strategy<Value = Vec<EpisodeRecord>> {
        let input = proptest::option::of((any::<String>(), any::<i32>(), any::<i64>()));
        let codes = (0..3usize, any::<bool>(), 0..5usize, any::<bool>(), 0..3usize);
        let features = proptest::option::of(proptest::collection::vec(
            proptest::num::f32::NORMAL | proptest::num::f32::ZERO | proptest::num::f32::INFINITE,
            0..5,
        ));
        let rest = (
            (float(), float(), float()),
            proptest::collection::vec(any::<u32>(), 0..4),
            any::<u32>(),
            features,
        );
        let record = (any::<String>(), input, tagged_string("sha256:", 64), codes, rest).prop_map(
            |(
                id,
                input,
                payload_digest,
                c,
                ((overall, value, clarity), conditions, leaf_index, features),
            )| {
                EpisodeRecord {
                    id,
                    input: input.map(|(topic, partition, offset)| InputRef {
                        topic: topic.into(),
                        partition,
                        offset,
                    }),
                    payload_digest,
                    tier: Tier::ALL[c.0],
                    valid: c.1,
                    severity: Severity::ALL[c.2],
                    permitted: c.3,
                    decision: Decision::ALL[c.4],
                    overall,
                    value,
                    clarity,
                    conditions,
                    leaf_index,
                    features,
                }
            },
        );
        proptest::collection::vec(record, 0..4)
    }

    fn episodes() -> impl Strategy<Value = Episode> {
        let head = (
            any::<u32>(),
            any::<u64>(),
            tagged_string("", 16),
            any::<u64>(),
            tagged_string("", 64),
        );
        let conditions = proptest::collection::vec(any::<String>(), 0..4);
        let rollbacks = proptest::collection::vec(
            (
                any::<String>(),
                tagged_string("sha256:", 64),
                0..2usize,
                any::<u32>(),
                any::<u32>(),
            )
                .prop_map(|(id, payload_digest, reason, leaf_index, verdict_leaf)| {
                    RollbackLeaf {
                        id,
                        payload_digest,
                        reason: Reason::ALL[reason],
                        leaf_index,
                        verdict_leaf,
                    }
                }),
            0..3,
        );
        (head, conditions, records(), rollbacks).prop_map(
            |((shard, seq, run, tree_size, root), conditions, records, rollbacks)| Episode {
                shard,
                seq,
                run,
                tree_size,
                root,
                conditions,
                records,
                rollbacks,
            },
        )
    }

    proptest! {
        #[test]
        fn any_episode_round_trips(e in episodes()) {
            let bytes = e.canonical();
            prop_assert_eq!(Episode::from_canonical(&bytes), Ok(e));
        }

        /// Whatever is accepted is exactly what `canonical` writes for it (and nothing panics).
        #[test]
        fn edited_encodings_are_rejected_or_canonical(
            e in episodes(),
            at in any::<proptest::sample::Index>(),
            byte in any::<u8>(),
            edit in 0..3u8,
        ) {
            let mut bytes = e.canonical();
            let i = at.index(bytes.len());
            match edit {
                0 => bytes[i] = byte,
                1 => bytes.insert(i, byte),
                _ => {
                    bytes.remove(i);
                }
            }
            if let Ok(back) = Episode::from_canonical(&bytes) {
                prop_assert_eq!(back.canonical(), bytes);
            }
        }

        #[test]
        fn arbitrary_bytes_after_the_magic_are_rejected_or_canonical(
            tail in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let bytes = [&b"BZE1"[..], &tail].concat();
            if let Ok(back) = Episode::from_canonical(&bytes) {
                prop_assert_eq!(back.canonical(), bytes);
            }
        }
    }
}
