//! `bizra audit replay`: re-reads the input of a deployment's verdicts (a JSONL file, or a
//! range of the input topic), recomputes every verdict with bizra's own dataflow (`run.rs`,
//! as `bizra run` does in embedded mode), and compares each one's Merkle leaf (SPEC §3.1) with
//! the leaf committed for the same input position. It catches what `bizra verify` cannot:
//! verdicts computed under another policy, keyring or code than the ones they claim, and input
//! that was never decided. It does not check the commitments' signatures, chains or proofs
//! (`bizra verify` does), and takes from the committed verdicts only where each leaf is
//! (`batch`), the `policy_version` they claim and the fields it prints.
//!
//! Each input record, by its position `(partition, offset)` (in embedded mode partition 0 and
//! the line number; the topic or file name is not compared), is one of:
//! - *matching*: the recomputed leaf is the committed one;
//! - *sampling*: the statistical tier's sample depends on which records shared a batch
//!   (SPEC §1.2's exception), so a signature may be `sampled_out` on one side and checked on
//!   the other. Such a verdict passes only if its committed leaf is exactly the recomputed
//!   verdict with the committed signature outcome put in (valid, permitted, and the value
//!   through `verified`, recomputed by the value stage itself), and that outcome is true: `ok`
//!   for a good signature, `bad` for a bad one, `sampled_out` for a good one or for a bad one
//!   that a committed rollback names. Whether a signature is good, the recomputation says:
//!   checked at once, or checked at its batch's seal (a recomputed rollback means bad);
//! - *history*: committed as a replay where the recomputation saw no earlier sighting, and
//!   a committed verdict that may have come before it holds the id (one of another input
//!   or partition, or earlier in the same partition): the sighting came before the replayed
//!   input (a `--from-offset` start, an earlier run on the same `--data-dir`, whose verdicts
//!   are then given too). Or the other way round for an id in several partitions, which
//!   Kafka does not order. Its leaf is checked as for sampling;
//! - *differing*: anything else in the leaf differs (one `DIFF` line naming the fields);
//! - *missing*: no committed verdict, or one that no commitment holds, and no dead letter;
//! - *dead letter*: the recomputation dead-letters it, as the run did (or, without `--dlq`,
//!   as the run presumably did); a verdict the run's sink refused (`output_too_large`,
//!   `produce_refused`) counts here too.
//!
//! *Extra* counts committed verdicts at positions inside the replayed range that the input
//! does not hold. Differing and missing records are failures; the rest are not.

use std::borrow::Cow;
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bizra_dataflows::convergence::Convergence;
use bizra_dataflows::dead_letter::{DeadLetter, ErrorKind};
use bizra_dataflows::ethics::Severity;
use bizra_dataflows::policy::Policy;
use bizra_dataflows::rollback::Rollback;
use bizra_dataflows::value::{self, Provenance, ValueAssessment};
use bizra_dataflows::verdict::{Decision, Verdict};
use bizra_dataflows::verification::commitment::Commitment;
use bizra_dataflows::verification::leaf::LeafFields;
use bizra_dataflows::verification::merkle::Hash;
use bizra_dataflows::verification::replay::id_hash;
use bizra_dataflows::verification::sampling::SampleKey;
use bizra_dataflows::verification::signature::Keyring;
use bizra_dataflows::verification::{BatchRef, Checks, SignatureCheck, Tier};
use ed25519_dalek::SigningKey;
use serde::Deserialize;

use crate::config::{self, Config};
use crate::io::{InputSpec, OutputSpec};
use crate::run::{self, Cluster, Outputs, Services, Source};

use crate::kafka::replay_input::{self, Ranges, Start};

/// Where the replayed input comes from.
pub enum Input {
    /// The JSONL file the run read (line numbers are offsets, partition 0).
    File(PathBuf),
    /// The input topic (`kafka.input_topic` of the config) on these brokers, every partition
    /// from `start` to the high watermark seen at the start of the audit.
    Kafka { brokers: String, start: Start },
}

/// What `bizra audit replay` reads and how it runs.
pub struct Options {
    /// The deployment's commitments (JSONL, SPEC §1.3): where each committed leaf is.
    pub commitments: PathBuf,
    /// The committed verdicts (JSONL, SPEC §1.2): which input position each leaf decides.
    pub verdicts: PathBuf,
    /// The run's rollbacks (JSONL, SPEC §1.6): a `sampled_out` verdict whose signature is bad
    /// is acceptable only if one of them, itself committed, names it.
    pub rollbacks: Option<PathBuf>,
    /// The run's dead letters (JSONL, SPEC §1.4): with them, a record that the recomputation
    /// dead-letters but for which the run wrote nothing is missing, not a dead letter.
    pub dlq: Option<PathBuf>,
    pub input: Input,
    /// Only the committed verdicts whose `input.topic` is this are matched (a verdicts file
    /// may hold several inputs' verdicts; all count as sightings for the replay guard).
    pub topic: Option<String>,
    /// The deployment's configuration: limits, verification, pipeline, `[kafka]`.
    pub config: Option<PathBuf>,
    pub policy: Option<PathBuf>,
    pub keyring: Option<PathBuf>,
    pub sampling_key: Option<PathBuf>,
    /// Worker threads of the recomputation.
    pub workers: usize,
    /// No progress lines.
    pub quiet: bool,
}

/// Why an audit does not start: the policy or the verdicts cannot be compared (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("the committed verdicts carry policy_version {committed}, but {policy} has version {found}: give the policy they were computed with (--policy FILE)")]
    PolicyVersion {
        committed: String,
        found: String,
        policy: String,
    },
    #[error("the committed verdicts of the replayed range carry several policy versions, so no one policy recomputes them: {0}; replay each version's range on its own (--from-offset, or a file per range)")]
    SeveralVersions(String),
    #[error(
        "{path}: the verdicts were read from several inputs ({topics}); name the replayed one with --topic"
    )]
    SeveralTopics { path: String, topics: String },
}

/// The counts of an audit; every input record is counted once, in one category.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    pub checked: u64,
    pub matching: u64,
    pub differing: u64,
    pub missing: u64,
    pub sampling: u64,
    pub history: u64,
    pub dead_letters: u64,
    /// Committed verdicts in the replayed range for positions the input does not hold.
    pub extra: u64,
    pub elapsed: Duration,
}

impl Report {
    /// The summary line.
    pub fn summary(&self) -> String {
        format!(
            "checked {} matching {} differing {} missing {} sampling {} history {} dead_letters {} extra {}",
            self.checked,
            self.matching,
            self.differing,
            self.missing,
            self.sampling,
            self.history,
            self.dead_letters,
            self.extra
        )
    }

    /// The rate line: records checked per second of the whole audit.
    pub fn rate(&self) -> String {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        format!(
            "rate {:.0} records/s ({} records in {secs:.2} s)",
            self.checked as f64 / secs,
            self.checked
        )
    }

    /// True if a record differs or is missing.
    pub fn failed(&self) -> bool {
        self.differing > 0 || self.missing > 0
    }
}

/// An input position: (partition, offset); in embedded mode (0, line number).
type Pos = (i32, i64);
/// A leaf's place: (shard, seq, leaf index).
type LeafAt = (u32, u64, u32);

fn leaf_at(b: BatchRef) -> LeafAt {
    (b.shard, b.seq, b.leaf_index)
}

/// A verdict as read from JSON: what the audit compares and prints, nothing else (skipping the
/// rest is most of the cost of reading a verdict).
#[derive(Deserialize)]
struct WireVerdict<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow)]
    input: Option<WireInput<'a>>,
    #[serde(borrow)]
    policy_version: Cow<'a, str>,
    decision: Decision,
    permitted: bool,
    convergence: WireConvergence,
    verification: WireVerification,
    value: WireValue,
    ethics: WireEthics,
    batch: BatchRef,
    #[serde(borrow)]
    payload_digest: Cow<'a, str>,
}

#[derive(Deserialize)]
struct WireInput<'a> {
    #[serde(borrow)]
    topic: Cow<'a, str>,
    partition: i32,
    offset: i64,
}

#[derive(Deserialize)]
struct WireConvergence {
    clarity: f64,
}

#[derive(Deserialize)]
struct WireValue {
    value: f64,
}

#[derive(Deserialize)]
struct WireVerification {
    tier: Tier,
    valid: bool,
    checks: Checks,
}

#[derive(Deserialize)]
struct WireEthics {
    overall: f64,
    severity: Severity,
}

/// What a verdict's leaf commits to (SPEC §3.1), its decision, and the checks whose outcomes
/// explain a leaf.
#[derive(Clone, Debug, PartialEq)]
struct Fields {
    id: Box<str>,
    payload: [u8; 32],
    tier: Tier,
    valid: bool,
    severity: Severity,
    permitted: bool,
    decision: Decision,
    overall: f64,
    value: f64,
    clarity: f64,
    checks: Checks,
}

impl Fields {
    /// `None` if `payload_digest` is not `sha256:<64 hex>`.
    fn of(w: &WireVerdict) -> Option<Fields> {
        let mut payload = [0u8; 32];
        hex::decode_to_slice(w.payload_digest.strip_prefix("sha256:")?, &mut payload).ok()?;
        Some(Fields {
            id: w.id.as_ref().into(),
            payload,
            tier: w.verification.tier,
            valid: w.verification.valid,
            severity: w.ethics.severity,
            permitted: w.permitted,
            decision: w.decision,
            overall: w.ethics.overall,
            value: w.value.value,
            clarity: w.convergence.clarity,
            checks: w.verification.checks,
        })
    }

    /// The same for a verdict made here; `None` if its `payload_digest` is malformed.
    fn of_verdict(v: &Verdict) -> Option<Fields> {
        let mut payload = [0u8; 32];
        hex::decode_to_slice(v.payload_digest.strip_prefix("sha256:")?, &mut payload).ok()?;
        Some(Fields {
            id: v.id.as_str().into(),
            payload,
            tier: v.verification.tier,
            valid: v.verification.valid,
            severity: v.ethics.severity,
            permitted: v.permitted,
            decision: v.decision,
            overall: v.ethics.overall,
            value: v.value.value,
            clarity: v.convergence.clarity,
            checks: v.verification.checks,
        })
    }

    fn leaf(&self) -> Hash {
        self.leaf_with(self.valid, self.permitted, self.value)
    }

    /// The leaf with `valid`, `permitted` and `value` replaced.
    fn leaf_with(&self, valid: bool, permitted: bool, value: f64) -> Hash {
        LeafFields {
            id: &self.id,
            payload_sha256: &self.payload,
            tier: self.tier.code(),
            valid,
            severity: self.severity.code(),
            permitted,
            overall: self.overall,
            value,
            clarity: self.clarity,
        }
        .hash()
    }

    /// `name=value` of every field that differs from `o`'s, for both sides.
    fn differences(&self, o: &Fields) -> (Vec<String>, Vec<String>) {
        let mut mine = Vec::new();
        let mut theirs = Vec::new();
        let mut cmp = |name: &str, a: String, b: String| {
            if a != b {
                mine.push(format!("{name}={a}"));
                theirs.push(format!("{name}={b}"));
            }
        };
        cmp("id", format!("{:?}", self.id), format!("{:?}", o.id));
        cmp(
            "payload_digest",
            hex::encode(self.payload),
            hex::encode(o.payload),
        );
        cmp("tier", self.tier.as_str().into(), o.tier.as_str().into());
        cmp(
            "decision",
            self.decision.as_str().into(),
            o.decision.as_str().into(),
        );
        cmp("permitted", self.permitted.to_string(), o.permitted.to_string());
        cmp("valid", self.valid.to_string(), o.valid.to_string());
        cmp(
            "severity",
            self.severity.as_str().into(),
            o.severity.as_str().into(),
        );
        cmp("overall", self.overall.to_string(), o.overall.to_string());
        cmp("value", self.value.to_string(), o.value.to_string());
        cmp("clarity", self.clarity.to_string(), o.clarity.to_string());
        cmp(
            "signature",
            self.checks.signature.as_str().into(),
            o.checks.signature.as_str().into(),
        );
        cmp(
            "replay",
            self.checks.replay.to_string(),
            o.checks.replay.to_string(),
        );
        cmp(
            "digest",
            format!("{:?}", self.checks.digest).to_lowercase(),
            format!("{:?}", o.checks.digest).to_lowercase(),
        );
        (mine, theirs)
    }
}

/// One committed verdict.
struct Committed {
    f: Fields,
    batch: BatchRef,
    /// Index into [`Index::versions`].
    version: u16,
    /// The replayed input had a record at its position.
    seen: bool,
}

/// One recomputed verdict, with what it takes to put another verification outcome in.
struct Recomputed<'v> {
    f: Fields,
    batch: BatchRef,
    ethics_permitted: bool,
    /// What its value was made from.
    convergence: &'v Convergence,
    value: &'v ValueAssessment,
}

/// Where an id was committed, as far as an earlier sighting goes.
#[derive(Default)]
struct Sightings {
    /// In a verdict of another input (`--topic`): no order is known, it may be earlier.
    other_input: bool,
    /// In the replayed input, in more than one partition: no order is known either.
    several_partitions: bool,
    /// Its first position in the replayed input.
    earliest: Option<Pos>,
}

impl Sightings {
    fn add(&mut self, place: Option<Pos>) {
        match (place, self.earliest) {
            (None, _) => self.other_input = true,
            (Some(p), None) => self.earliest = Some(p),
            (Some(p), Some(e)) if p.0 != e.0 => self.several_partitions = true,
            (Some(p), Some(e)) => self.earliest = Some(p.min(e)),
        }
    }

    /// True if a sighting may have come before the one at `pos`.
    fn before(&self, pos: Pos) -> bool {
        self.other_input
            || self.several_partitions
            || self.earliest.is_some_and(|e| e.0 == pos.0 && e.1 < pos.1)
    }
}

/// The committed side, read from the files before the recomputation.
#[derive(Default)]
struct Index {
    /// Committed verdicts of the replayed input, by position.
    verdicts: HashMap<Pos, Committed>,
    /// Further committed verdicts of a position: a crash can decide an input twice.
    more: HashMap<Pos, Vec<Committed>>,
    /// The policy versions the verdicts carry.
    versions: Vec<Box<str>>,
    /// Each (shard, seq)'s leaves; more than one list where the commitments fork.
    leaves: HashMap<(u32, u64), Vec<Vec<Hash>>>,
    /// Rolled-back verdicts (by their leaf) and their ids, for rollbacks that are committed.
    rolled_back: HashMap<LeafAt, Vec<Box<str>>>,
    /// The run's dead letters by position.
    dead: HashMap<Pos, ErrorKind>,
    /// Every committed id (a 128-bit hash of it), of every input: earlier sightings.
    ids: HashMap<u128, Sightings>,
    /// What the files hold that the reader should know about.
    notes: Vec<String>,
}

impl Index {
    /// The committed verdicts at `pos`.
    fn copies(&self, pos: Pos) -> impl Iterator<Item = &Committed> {
        self.verdicts
            .get(&pos)
            .into_iter()
            .chain(self.more.get(&pos).into_iter().flatten())
    }

    fn leaves_at(&self, b: BatchRef) -> impl Iterator<Item = &Hash> {
        self.leaves
            .get(&(b.shard, b.seq))
            .into_iter()
            .flatten()
            .filter_map(move |l| l.get(b.leaf_index as usize))
    }

    fn is_committed(&self, b: BatchRef, leaf: &Hash) -> bool {
        self.leaves_at(b).any(|l| l == leaf)
    }

    /// True if committed verdicts in more than one partition of the replayed input hold `id`.
    fn in_several_partitions(&self, id: &str) -> bool {
        self.ids.get(&id_hash(id)).is_some_and(|s| s.several_partitions)
    }

    /// True if a committed verdict that may have come before position `pos` holds `id`.
    fn seen_before(&self, id: &str, pos: Pos) -> bool {
        self.ids.get(&id_hash(id)).is_some_and(|s| s.before(pos))
    }

    /// Reads the committed side of `opts` and checks that the verdicts in `ranges` carry
    /// policy version `version` (of the policy called `label`).
    fn load(opts: &Options, version: &str, label: &str, ranges: Option<&Ranges>) -> anyhow::Result<Index> {
        let mut index = Index::default();
        index.load_commitments(&opts.commitments)?;
        index.load_verdicts(&opts.verdicts, opts.topic.as_deref())?;
        index.check_policy(version, label, ranges)?;
        if let Some(p) = &opts.rollbacks {
            index.load_rollbacks(p)?;
        }
        if let Some(p) = &opts.dlq {
            index.load_dead_letters(p)?;
        }
        Ok(index)
    }

    fn load_commitments(&mut self, path: &Path) -> anyhow::Result<()> {
        let mut bad = 0u64;
        each_line(path, |line_no, line| {
            let c = match parse::<Commitment>(line) {
                Ok(c) => c,
                Err(e) => {
                    bad += 1;
                    if bad == 1 {
                        self.notes
                            .push(format!("{}:{line_no}: not a commitment: {e}", path.display()));
                    }
                    return Ok(());
                }
            };
            let leaves: Option<Vec<Hash>> = c.leaves.iter().map(|h| hex32(h)).collect();
            let Some(leaves) = leaves else {
                bad += 1;
                return Ok(());
            };
            let variants = self.leaves.entry((c.shard, c.seq)).or_default();
            if !variants.contains(&leaves) {
                if !variants.is_empty() {
                    self.notes.push(format!(
                        "{}:{line_no}: a second commitment for shard {} seq {} with other leaves (a fork, or two deployments in one file): verdicts there are compared with either",
                        path.display(),
                        c.shard,
                        c.seq
                    ));
                }
                variants.push(leaves);
            }
            Ok(())
        })?;
        if bad > 0 {
            self.notes.push(format!(
                "{}: {bad} lines are not commitments; their leaves count as uncommitted",
                path.display()
            ));
        }
        Ok(())
    }

    /// Reads the committed verdicts; only those of `topic` (if given) are matched.
    fn load_verdicts(&mut self, path: &Path, topic: Option<&str>) -> anyhow::Result<()> {
        // A verdict is about 2 KB: room for all at once, rather than growing the maps.
        let expected = std::fs::metadata(path).map_or(0, |m| m.len() / 2048) as usize;
        self.verdicts.reserve(expected);
        self.ids.reserve(expected);
        let mut topics: BTreeMap<String, u64> = BTreeMap::new();
        let mut bad = 0u64;
        let mut without_input = 0u64;
        each_line(path, |line_no, line| {
            let w = match parse::<WireVerdict>(line) {
                Ok(w) => w,
                Err(e) => {
                    bad += 1;
                    if bad == 1 {
                        self.notes
                            .push(format!("{}:{line_no}: not a verdict: {e}", path.display()));
                    }
                    return Ok(());
                }
            };
            let Some(f) = Fields::of(&w) else {
                bad += 1;
                return Ok(());
            };
            let Some(input) = &w.input else {
                without_input += 1;
                return Ok(());
            };
            let pos = (input.partition, input.offset);
            let matched = topic.is_none_or(|t| t == input.topic);
            self.ids
                .entry(id_hash(&f.id))
                .or_default()
                .add(matched.then_some(pos));
            if !matched {
                return Ok(());
            }
            if let Some(n) = topics.get_mut(input.topic.as_ref()) {
                *n += 1;
            } else {
                topics.insert(input.topic.clone().into_owned(), 1);
            }
            let version = match self.versions.iter().position(|v| **v == *w.policy_version) {
                Some(i) => i as u16,
                None => {
                    self.versions.push(w.policy_version.as_ref().into());
                    (self.versions.len() - 1) as u16
                }
            };
            let c = Committed {
                f,
                batch: w.batch,
                version,
                seen: false,
            };
            match self.verdicts.entry(pos) {
                Entry::Vacant(e) => {
                    e.insert(c);
                }
                Entry::Occupied(_) => self.more.entry(pos).or_default().push(c),
            }
            Ok(())
        })?;
        if topics.len() > 1 {
            return Err(Refused::SeveralTopics {
                path: path.display().to_string(),
                topics: topics
                    .iter()
                    .map(|(t, n)| format!("{t:?}: {n}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            }
            .into());
        }
        if bad > 0 {
            self.notes.push(format!(
                "{}: {bad} lines are not verdicts and are left out",
                path.display()
            ));
        }
        if without_input > 0 {
            self.notes.push(format!(
                "{}: {without_input} verdicts name no input position and are left out",
                path.display()
            ));
        }
        Ok(())
    }

    fn load_rollbacks(&mut self, path: &Path) -> anyhow::Result<()> {
        let mut uncommitted = 0u64;
        each_line(path, |_, line| {
            let Ok(r) = parse::<Rollback>(line) else {
                uncommitted += 1;
                return Ok(());
            };
            match r.leaf() {
                Some(leaf) if self.is_committed(r.batch, &leaf) => self
                    .rolled_back
                    .entry(leaf_at(r.verdict_batch))
                    .or_default()
                    .push(r.id.as_str().into()),
                _ => uncommitted += 1,
            }
            Ok(())
        })?;
        if uncommitted > 0 {
            self.notes.push(format!(
                "{}: {uncommitted} rollbacks are not committed (or not rollbacks) and are left out",
                path.display()
            ));
        }
        Ok(())
    }

    fn load_dead_letters(&mut self, path: &Path) -> anyhow::Result<()> {
        each_line(path, |_, line| {
            if let Ok(DeadLetter {
                error,
                input: Some(i),
                ..
            }) = serde_json::from_slice(line)
            {
                self.dead.insert((i.partition, i.offset), error);
            }
            Ok(())
        })
    }

    /// Refuses a policy whose version is not the one the verdicts in `ranges` carry.
    fn check_policy(&self, version: &str, policy: &str, ranges: Option<&Ranges>) -> Result<(), Refused> {
        // version → partition → (first offset, last offset, verdicts)
        let mut by: BTreeMap<&str, BTreeMap<i32, (i64, i64, u64)>> = BTreeMap::new();
        for &(p, o) in self.verdicts.keys() {
            if !in_range(ranges, (p, o)) {
                continue;
            }
            for c in self.copies((p, o)) {
                let e = by
                    .entry(&self.versions[usize::from(c.version)])
                    .or_default()
                    .entry(p)
                    .or_insert((o, o, 0));
                e.0 = e.0.min(o);
                e.1 = e.1.max(o);
                e.2 += 1;
            }
        }
        if by.len() > 1 {
            let list = by
                .iter()
                .map(|(v, parts)| {
                    let where_ = parts
                        .iter()
                        .map(|(p, (a, b, n))| format!("partition {p} offsets {a}..={b} ({n} verdicts)"))
                        .collect::<Vec<_>>()
                        .join(", ");
                    format!("{v} in {where_}")
                })
                .collect::<Vec<_>>()
                .join("; ");
            return Err(Refused::SeveralVersions(list));
        }
        match by.keys().next() {
            Some(committed) if *committed != version => Err(Refused::PolicyVersion {
                committed: (*committed).to_owned(),
                found: version.to_owned(),
                policy: policy.to_owned(),
            }),
            _ => Ok(()),
        }
    }
}

fn in_range(ranges: Option<&Ranges>, (p, o): Pos) -> bool {
    ranges.is_none_or(|r| r.get(&p).is_some_and(|&(start, end)| o >= start && o < end))
}

fn hex32(s: &str) -> Option<Hash> {
    let mut h = [0u8; 32];
    hex::decode_to_slice(s, &mut h).ok()?;
    Some(h)
}

/// Calls `f` with each non-blank line of `path` (without its newline) and its 1-based number,
/// up to the first error.
fn each_line(path: &Path, mut f: impl FnMut(usize, &[u8]) -> anyhow::Result<()>) -> anyhow::Result<()> {
    let file = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut line = Vec::new();
    let mut n = 0;
    loop {
        line.clear();
        let read = r
            .read_until(b'\n', &mut line)
            .with_context(|| format!("{}: read error", path.display()))?;
        if read == 0 {
            return Ok(());
        }
        n += 1;
        let text = line.trim_ascii();
        if !text.is_empty() {
            f(n, text)?;
        }
    }
}

/// Parses one JSON line (valid UTF-8 first: serde then checks no string again).
fn parse<'a, T: Deserialize<'a>>(line: &'a [u8]) -> anyhow::Result<T> {
    Ok(serde_json::from_str(std::str::from_utf8(line)?)?)
}

/// Recomputed verdicts that may wait in memory for the index (about 64 MiB): past this,
/// the recomputation waits instead.
const EARLY_VERDICTS: usize = 32 * 1024;

/// How one committed verdict compares with the recomputed one; worse is greater.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    Matching,
    Sampling(String),
    History(String),
    Differing(String),
}

/// Compares recomputed outputs with the index and prints what it finds.
struct Judge<'a> {
    index: Index,
    policy: &'a Policy,
    /// The recomputation's rollbacks, by the leaf of the verdict they name: its bad
    /// `sampled_out` signatures.
    recomputed_bad: HashSet<LeafAt>,
    /// `--dlq` was given: a record without any committed output is missing.
    have_dlq: bool,
    /// `index` is read: verdicts can be judged.
    installed: bool,
    /// The recomputation ended and its rollbacks are in `recomputed_bad`: until then, whether
    /// a signature emitted `sampled_out` is good is not known.
    sealed: bool,
    /// Recomputed verdicts that wait for `sealed`: those emitted `sampled_out` (about one
    /// in a hundred of a realistic stream).
    waiting: Vec<Verdict>,
    report: Report,
    compared: Arc<AtomicU64>,
    out: &'a mut (dyn Write + Send),
}

impl Judge<'_> {
    /// Takes the recomputed verdicts from `rx` to its end, even after an error (the
    /// recomputation hands them over until it ends), and judges each one; a signature
    /// `sampled_out` waits for the recomputed rollbacks (see [`Judge::rollbacks_known`]).
    ///
    /// While `loading` reads the index, up to [`EARLY_VERDICTS`] verdicts wait in memory, so
    /// that the recomputation goes on meanwhile.
    fn read_verdicts(
        &mut self,
        rx: Receiver<Vec<Verdict>>,
        mut loading: Option<std::thread::ScopedJoinHandle<'_, anyhow::Result<Index>>>,
    ) -> anyhow::Result<()> {
        let mut early: Vec<Verdict> = Vec::new();
        let mut first_error = None;
        for v in rx.into_iter().flatten() {
            if first_error.is_some() {
                continue;
            }
            if loading
                .as_ref()
                .is_some_and(|h| !h.is_finished() && early.len() < EARLY_VERDICTS)
            {
                early.push(v);
                continue;
            }
            if let Some(h) = loading.take() {
                first_error = self.install_then(joined(h), std::mem::take(&mut early)).err();
                if first_error.is_some() {
                    continue;
                }
            }
            first_error = self.recomputed(v).err();
        }
        if let (Some(h), None) = (loading, &first_error) {
            first_error = self.install_then(joined(h), early).err();
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Installs the index read, then judges the verdicts that waited for it.
    fn install_then(&mut self, index: anyhow::Result<Index>, early: Vec<Verdict>) -> anyhow::Result<()> {
        self.install(index)?;
        for v in early {
            self.recomputed(v)?;
        }
        Ok(())
    }

    /// Takes the committed side, printing its notes.
    fn install(&mut self, index: anyhow::Result<Index>) -> anyhow::Result<()> {
        self.index = index?;
        self.installed = true;
        for n in std::mem::take(&mut self.index.notes) {
            writeln!(self.out, "NOTE {n}")?;
        }
        Ok(())
    }

    /// Everything the recomputation did, its rollbacks included, is known: judges the
    /// verdicts that waited for them.
    fn rollbacks_known(&mut self, rollbacks: &Path) -> anyhow::Result<()> {
        each_line(rollbacks, |_, line| {
            let r: Rollback = parse(line).context("a recomputed rollback")?;
            self.recomputed_bad.insert(leaf_at(r.verdict_batch));
            Ok(())
        })?;
        self.sealed = true;
        for v in std::mem::take(&mut self.waiting) {
            self.recomputed(v)?;
        }
        Ok(())
    }

    /// Judges one recomputed verdict, or keeps it for later (see [`Judge::waiting`]).
    fn recomputed(&mut self, v: Verdict) -> anyhow::Result<()> {
        let (Some(f), Some(input)) = (Fields::of_verdict(&v), &v.input) else {
            anyhow::bail!("recomputed verdict {}: no payload digest or input position", v.id);
        };
        if f.checks.signature == SignatureCheck::SampledOut && !self.sealed {
            self.waiting.push(v);
            return Ok(());
        }
        let r = Recomputed {
            f,
            batch: v.batch,
            ethics_permitted: v.ethics.permitted,
            convergence: &v.convergence,
            value: &v.value,
        };
        Ok(self.verdict((input.partition, input.offset), &r)?)
    }

    fn verdict(&mut self, pos: Pos, r: &Recomputed) -> std::io::Result<()> {
        self.report.checked += 1;
        self.compared.fetch_add(1, Ordering::Relaxed);
        let Some(first) = self.index.verdicts.get_mut(&pos) else {
            return self.without_committed_verdict(pos, r);
        };
        first.seen = true;
        let worst = self
            .index
            .copies(pos)
            .filter(|c| self.index.leaves_at(c.batch).next().is_some())
            .map(|c| self.judge(pos, c, r))
            .max();
        match worst {
            None => {
                let c = &self.index.verdicts[&pos];
                let line = format!(
                    "MISSING {}: its committed verdict (shard {} seq {} leaf {}) is in no commitment",
                    at(pos, &c.f.id),
                    c.batch.shard,
                    c.batch.seq,
                    c.batch.leaf_index
                );
                self.report.missing += 1;
                writeln!(self.out, "{line}")
            }
            Some(Outcome::Matching) => {
                self.report.matching += 1;
                Ok(())
            }
            Some(Outcome::Sampling(line)) => {
                self.report.sampling += 1;
                writeln!(self.out, "{line}")
            }
            Some(Outcome::History(line)) => {
                self.report.history += 1;
                writeln!(self.out, "{line}")
            }
            Some(Outcome::Differing(line)) => {
                self.report.differing += 1;
                writeln!(self.out, "{line}")
            }
        }
    }

    /// A recomputed verdict where the run committed none.
    fn without_committed_verdict(&mut self, pos: Pos, r: &Recomputed) -> std::io::Result<()> {
        match self.index.dead.get(&pos) {
            Some(ErrorKind::OutputTooLarge | ErrorKind::ProduceRefused) => {
                self.report.dead_letters += 1;
                Ok(())
            }
            Some(kind) => {
                self.report.differing += 1;
                writeln!(
                    self.out,
                    "DIFF {}: committed dead_letter={} recomputed decision={}",
                    at(pos, &r.f.id),
                    kind.as_str(),
                    r.f.decision.as_str()
                )
            }
            None => {
                self.report.missing += 1;
                let hint = if self.have_dlq { "" } else { " (no --dlq given)" };
                writeln!(
                    self.out,
                    "MISSING {}: no committed verdict or dead letter{hint}",
                    at(pos, &r.f.id)
                )
            }
        }
    }

    /// A record the recomputation dead-letters.
    fn dead_letter(&mut self, pos: Pos, kind: ErrorKind) -> std::io::Result<()> {
        self.report.checked += 1;
        self.compared.fetch_add(1, Ordering::Relaxed);
        if let Some(c) = self.index.verdicts.get_mut(&pos) {
            c.seen = true;
            self.report.differing += 1;
            return writeln!(
                self.out,
                "DIFF {}: committed decision={} recomputed dead_letter={}",
                at(pos, &c.f.id),
                c.f.decision.as_str(),
                kind.as_str()
            );
        }
        match self.index.dead.get(&pos) {
            Some(k) if *k != kind => {
                self.report.differing += 1;
                writeln!(
                    self.out,
                    "DIFF partition {} offset {}: committed dead_letter={} recomputed dead_letter={}",
                    pos.0,
                    pos.1,
                    k.as_str(),
                    kind.as_str()
                )
            }
            None if self.have_dlq => {
                self.report.missing += 1;
                writeln!(
                    self.out,
                    "MISSING partition {} offset {}: no committed verdict or dead letter (recomputed dead_letter={})",
                    pos.0,
                    pos.1,
                    kind.as_str()
                )
            }
            _ => {
                self.report.dead_letters += 1;
                Ok(())
            }
        }
    }

    /// Judges committed verdict `c` (whose batch is committed) against `r`.
    fn judge(&self, pos: Pos, c: &Committed, r: &Recomputed) -> Outcome {
        // A bad signature let through `sampled_out` must be rolled back, whatever the leaf.
        if c.f.checks.signature == SignatureCheck::SampledOut
            && self.truth(r) == SignatureCheck::Bad
            && !self.rolled_back(c)
        {
            return Outcome::Differing(format!(
                "DIFF {}: committed signature=sampled_out rollback=none recomputed signature={} rollback=due (the signature is bad, and no committed rollback names this verdict)",
                at(pos, &c.f.id),
                r.f.checks.signature.as_str()
            ));
        }
        if self.index.is_committed(c.batch, &r.f.leaf()) {
            return Outcome::Matching;
        }
        let mut why = String::new();
        if c.f.checks != r.f.checks {
            match self.explain_outcome(pos, c, r) {
                Ok(Some(o)) => return o,
                Ok(None) => {}
                Err(reason) => why = format!(" ({reason})"),
            }
        }
        let (committed, recomputed) = c.f.differences(&r.f);
        let line = if committed.is_empty() {
            format!(
                "DIFF {}: committed leaf (shard {} seq {} leaf {}) recomputed leaf: the committed verdict's fields are the recomputed ones but its committed leaf is not (bizra verify names the verdict)",
                at(pos, &c.f.id),
                c.batch.shard,
                c.batch.seq,
                c.batch.leaf_index
            )
        } else {
            format!(
                "DIFF {}: committed {} recomputed {}{why}",
                at(pos, &c.f.id),
                committed.join(" "),
                recomputed.join(" ")
            )
        };
        Outcome::Differing(line)
    }

    /// Whether the committed verification outcome, where it differs from the recomputed one,
    /// is one bizra may legitimately have reached (see the file's doc) and explains the
    /// committed leaf: `Sampling` or `History`; `None` if it is legitimate but does not
    /// explain the leaf; or why it is not legitimate.
    fn explain_outcome(&self, pos: Pos, c: &Committed, r: &Recomputed) -> Result<Option<Outcome>, String> {
        let (cs, rs) = (c.f.checks.signature, r.f.checks.signature);
        let truth = self.truth(r);
        let statistical = r.f.tier == Tier::Statistical;
        let rolled_back = self.rolled_back(c);
        let signature_true = cs == truth
            || (statistical
                && cs == SignatureCheck::SampledOut
                && (truth == SignatureCheck::Ok || (truth == SignatureCheck::Bad && rolled_back)));
        if !signature_true {
            return Err(
                if cs == SignatureCheck::SampledOut && truth == SignatureCheck::Bad {
                    "the signature is bad, and no committed rollback names this verdict".to_owned()
                } else {
                    format!("the signature check comes out {}", truth.as_str())
                },
            );
        }
        let (was, is) = (c.f.checks.replay, r.f.checks.replay);
        let history = was != is;
        if was && !is && !self.index.seen_before(&c.f.id, pos) {
            return Err("no committed verdict before it holds this id, so no earlier sighting explains the replay flag".into());
        }
        // Kafka orders nothing across partitions: the run may have read this id's copy in
        // another partition after this one.
        if is && !was && !self.index.in_several_partitions(&c.f.id) {
            return Err("the recomputation saw this id earlier in the replayed input".into());
        }
        if c.f.checks.digest != r.f.checks.digest {
            return Err("the digest check differs".into());
        }
        if !self
            .under(r, c.f.checks)
            .iter()
            .any(|l| self.index.is_committed(c.batch, l))
        {
            return Ok(None);
        }
        let mut line = format!("{}: committed", at(pos, &c.f.id));
        let mut theirs = String::new();
        if cs != rs {
            let _ = write!(line, " signature={}", cs.as_str());
            let _ = write!(theirs, " signature={}", rs.as_str());
        }
        if history {
            let _ = write!(line, " replay={was}");
            let _ = write!(theirs, " replay={is}");
        }
        line += " recomputed";
        line += &theirs;
        let why = if was {
            "an earlier sighting outside the replayed input, or in another partition"
        } else {
            "the run read the copy in another partition later"
        };
        Ok(Some(if history {
            Outcome::History(format!("HISTORY {line} ({why})"))
        } else if rolled_back {
            Outcome::Sampling(format!("SAMPLING {line} (rolled back)"))
        } else {
            Outcome::Sampling(format!("SAMPLING {line}"))
        }))
    }

    /// The signature outcome of `r` once every check is made: a `sampled_out` signature was
    /// checked when its batch sealed, and a recomputed rollback means it was bad.
    fn truth(&self, r: &Recomputed) -> SignatureCheck {
        match r.f.checks.signature {
            SignatureCheck::SampledOut if self.recomputed_bad.contains(&leaf_at(r.batch)) => {
                SignatureCheck::Bad
            }
            SignatureCheck::SampledOut => SignatureCheck::Ok,
            s => s,
        }
    }

    /// True if a committed rollback names committed verdict `c`.
    fn rolled_back(&self, c: &Committed) -> bool {
        self.index
            .rolled_back
            .get(&leaf_at(c.batch))
            .is_some_and(|ids| ids.contains(&c.f.id))
    }

    /// The leaves `r` would have with `checks` as its verification outcome: valid and
    /// permitted follow them, and the value follows `verified` (the signature `ok`), through
    /// the value stage itself. Which provenance (`source`, `attestation`) the record had is
    /// found as the one that reproduces `r`'s value assessment exactly.
    fn under(&self, r: &Recomputed, checks: Checks) -> Vec<Hash> {
        let valid = checks.reason().is_none();
        let permitted = r.ethics_permitted && valid;
        let verified = checks.signature == SignatureCheck::Ok;
        let was = r.f.checks.signature == SignatureCheck::Ok;
        let values: Vec<f64> = if verified == was {
            vec![r.f.value]
        } else {
            [(false, false), (true, false), (false, true), (true, true)]
                .into_iter()
                .filter_map(|(source, attestation)| {
                    let with = |verified| Provenance {
                        source,
                        verified,
                        attestation,
                    };
                    let p = &self.policy.value;
                    (value::assess(r.convergence, with(was), p) == *r.value)
                        .then(|| value::assess(r.convergence, with(verified), p).value)
                })
                .collect()
        };
        values
            .into_iter()
            .map(|v| r.f.leaf_with(valid, permitted, v))
            .collect()
    }

    /// Committed verdicts in the replayed range whose position the input did not hold.
    fn extra(&mut self, ranges: Option<&Ranges>) -> std::io::Result<()> {
        let mut extra: Vec<(Pos, &Committed)> = self
            .index
            .verdicts
            .iter()
            .filter(|(pos, c)| !c.seen && in_range(ranges, **pos))
            .map(|(pos, c)| (*pos, c))
            .collect();
        extra.sort_by_key(|(pos, _)| *pos);
        self.report.extra = extra.len() as u64;
        for (pos, c) in extra {
            writeln!(
                self.out,
                "EXTRA {}: committed, but the replayed input holds no record at this position",
                at(pos, &c.f.id)
            )?;
        }
        Ok(())
    }
}

fn at((p, o): Pos, id: &str) -> String {
    format!("partition {p} offset {o} id {id:?}")
}

/// A directory of the recomputation's outputs, removed when dropped.
struct WorkDir(PathBuf);

impl WorkDir {
    fn create() -> anyhow::Result<WorkDir> {
        let base = std::env::temp_dir();
        for n in 0..1000 {
            let dir = base.join(format!("bizra-audit-replay-{}-{n}", std::process::id()));
            match std::fs::create_dir(&dir) {
                Ok(()) => return Ok(WorkDir(dir)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).with_context(|| format!("{}: cannot create", dir.display())),
            }
        }
        anyhow::bail!("{}: no free name for a work directory", base.display())
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Progress on stderr every 2 s, from a thread of its own.
struct Ticker {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

const TICK: Duration = Duration::from_secs(2);

impl Ticker {
    fn start(quiet: bool, recomputed: Arc<AtomicU64>, compared: Arc<AtomicU64>) -> Ticker {
        let stop = Arc::new(AtomicBool::new(false));
        let handle = (!quiet).then(|| {
            let stop = stop.clone();
            let started = Instant::now();
            std::thread::spawn(move || {
                let mut next = TICK;
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                    let elapsed = started.elapsed();
                    if elapsed < next {
                        continue;
                    }
                    next += TICK;
                    let (r, c) = (
                        recomputed.load(Ordering::Relaxed),
                        compared.load(Ordering::Relaxed),
                    );
                    eprintln!(
                        "replay audit: {r} recomputed, {c} compared, {:.0} records/s",
                        r.max(c) as f64 / elapsed.as_secs_f64()
                    );
                }
            })
        });
        Ticker { stop, handle }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// The deployment's sampling secret, or a random one with a note saying what that changes.
fn sampling_key(opts: &Options, cfg: &Config, notes: &mut Vec<String>) -> anyhow::Result<SampleKey> {
    let path = opts.sampling_key.clone().or_else(|| {
        (!cfg.verification.sampling_key_path.is_empty())
            .then(|| cfg.verification.sampling_key_path.clone().into())
    });
    if let Some(p) = path {
        return Ok(config::load_sampling_key(&p)?);
    }
    notes.push("no --sampling-key: the statistical sample is drawn with a random key, so more verdicts are judged as sampling, and replay flags may differ where the replay window evicted ids".into());
    let mut secret = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut secret);
    Ok(SampleKey::from_secret(&secret))
}

/// Runs `bizra audit replay`: prints one line per difference, missing record, sampling or
/// history judgement, extra verdict and note to `out`, and returns the counts. A policy
/// or verdicts file that cannot be compared is a [`Refused`] error.
pub fn replay(opts: &Options, out: &mut (dyn Write + Send)) -> anyhow::Result<Report> {
    let started = Instant::now();
    let cfg = Config::load(opts.config.as_deref())?;
    let nonempty = |s: &str| (!s.is_empty()).then(|| PathBuf::from(s));
    let policy_path = opts.policy.clone().or_else(|| nonempty(&cfg.policy.path));
    let policy = config::load_policy(policy_path.as_deref())?;
    let keyring = match opts.keyring.clone().or_else(|| nonempty(&cfg.keys.keyring_path)) {
        Some(p) => config::load_keyring(&p)?,
        None => Keyring::new(),
    };
    let mut notes = Vec::new();
    if keyring.is_empty() {
        notes.push("no keyring (--keyring, keys.keyring_path): every signed observation is recomputed as unknown_key".into());
    }
    let sample_key = sampling_key(opts, &cfg, &mut notes)?;
    for n in notes {
        writeln!(out, "NOTE {n}")?;
    }
    // Kafka: the range is fixed (the watermarks read) before anything else.
    let plan = match &opts.input {
        Input::File(_) => None,
        Input::Kafka { brokers, start } => {
            let mut kafka = cfg.kafka.clone();
            kafka.brokers = brokers.clone();
            Some(replay_input::Plan::resolve(&kafka, *start)?)
        }
    };
    let ranges = plan.as_ref().map(|p| p.ranges().clone());
    let version = policy.version();
    let label = match &policy_path {
        Some(p) => format!("the policy {}", p.display()),
        None => "the embedded reference policy".to_owned(),
    };
    let load = || Index::load(opts, &version, &label, ranges.as_ref());
    // A file's verdicts are read while the recomputation runs, once the first of them has
    // shown the policy to be theirs; a range's, whose first verdicts may be outside it,
    // before.
    let ready = match plan {
        Some(_) => Some(load()?),
        None => {
            if let Some(committed) = first_policy_version(&opts.verdicts, opts.topic.as_deref())? {
                if committed != version {
                    return Err(Refused::PolicyVersion {
                        committed,
                        found: version,
                        policy: label,
                    }
                    .into());
                }
            }
            None
        }
    };

    let dir = WorkDir::create()?;
    let recomputed = Arc::new(AtomicU64::new(0));
    let compared = Arc::new(AtomicU64::new(0));
    let ticker = Ticker::start(opts.quiet, recomputed.clone(), compared.clone());
    let source = match (&opts.input, plan) {
        (Input::File(p), _) => Source::Lines(InputSpec::File(p.clone())),
        (Input::Kafka { .. }, Some(plan)) => {
            let chunk_bytes = (cfg.pipeline.max_inflight_bytes / 16).max(1);
            Source::Records(plan.spawn(
                cfg.limits.max_message_bytes,
                cfg.pipeline.epoch_records,
                chunk_bytes,
            )?)
        }
        (Input::Kafka { .. }, None) => unreachable!("a Kafka input has a plan"),
    };
    let judged_by = policy.clone();
    let mut judge = Judge {
        index: Index::default(),
        policy: &judged_by,
        recomputed_bad: HashSet::new(),
        have_dlq: opts.dlq.is_some(),
        installed: false,
        sealed: false,
        waiting: Vec::new(),
        report: Report::default(),
        compared,
        out,
    };
    if let Some(index) = ready {
        judge.install(Ok(index))?;
    }
    // Chunks of verdicts in flight between the recomputation and the judge.
    let (tap, recomputed_verdicts) = std::sync::mpsc::sync_channel(16);
    let (done, read) = std::thread::scope(|s| {
        let loading = (!judge.installed).then(|| s.spawn(load));
        let judging = &mut judge;
        let reading = s.spawn(move || judging.read_verdicts(recomputed_verdicts, loading));
        let outputs = Outputs {
            dead_letters: OutputSpec::File(dir.0.join("dead.jsonl")),
            rollbacks: OutputSpec::File(dir.0.join("rollbacks.jsonl")),
            verdict_tap: Some(tap),
            ..Outputs::discard()
        };
        let done = recompute(
            opts, &cfg, policy, keyring, sample_key, source, outputs, recomputed,
        );
        (done, joined(reading))
    });
    // A refusal first: the policy, or the verdicts file, is not one the leaves can be
    // compared under.
    read?;
    done?;
    tracing::debug!(ms = started.elapsed().as_millis() as u64, "recomputed");
    judge.rollbacks_known(&dir.0.join("rollbacks.jsonl"))?;
    each_line(&dir.0.join("dead.jsonl"), |line_no, line| {
        let d: DeadLetter = parse(line).with_context(|| format!("recomputed dead letter {line_no}"))?;
        let Some(i) = d.input else {
            anyhow::bail!("recomputed dead letter {line_no}: no input position");
        };
        Ok(judge.dead_letter((i.partition, i.offset), d.error)?)
    })?;
    judge.extra(ranges.as_ref())?;
    tracing::debug!(ms = started.elapsed().as_millis() as u64, "compared");
    drop(ticker);
    let mut report = judge.report;
    report.elapsed = started.elapsed();
    Ok(report)
}

/// The result of a scoped thread; its panic, if it panicked.
fn joined<T>(h: std::thread::ScopedJoinHandle<'_, T>) -> T {
    h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// The `policy_version` of the first verdict of `topic` (if given) in `path`.
fn first_policy_version(path: &Path, topic: Option<&str>) -> anyhow::Result<Option<String>> {
    let file = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let mut r = BufReader::new(file);
    let mut line = Vec::new();
    while r.read_until(b'\n', &mut line)? > 0 {
        if let Ok(w) = parse::<WireVerdict>(line.trim_ascii()) {
            if topic.is_none_or(|t| w.input.as_ref().is_some_and(|i| i.topic == t)) {
                return Ok(Some(w.policy_version.into_owned()));
            }
        }
        line.clear();
    }
    Ok(None)
}

/// Runs the decision dataflow over `source` as `bizra run` does in embedded mode, into
/// `outputs`. Commitments are not written (the leaves are compared, and any node key makes
/// the same leaves), nor are window statistics (computed over one window per record, their
/// cheapest setting).
#[allow(clippy::too_many_arguments)]
fn recompute(
    opts: &Options,
    cfg: &Config,
    policy: Policy,
    keyring: Keyring,
    sample_key: SampleKey,
    source: Source,
    outputs: Outputs,
    progress: Arc<AtomicU64>,
) -> anyhow::Result<run::Summary> {
    let node_key = SigningKey::generate(&mut rand::rngs::OsRng);
    let mut pipeline = cfg.pipeline(policy, keyring, node_key, sample_key);
    pipeline.explain = None; // not in the leaf
    let stats = bizra_dataflows::stats::StatsConfig {
        slide_ms: cfg.stats.window_ms,
        ..cfg.stats.clone()
    };
    let services = Services {
        progress,
        telemetry: crate::telemetry::Telemetry::new(None, stats),
        archive: None,
        log: cfg.log.clone(),
        checkpoints: Default::default(),
    };
    let cluster = Cluster::local(opts.workers);
    run::run(
        cluster,
        pipeline,
        cfg.pipeline.clone(),
        cfg.limits.max_output_bytes,
        source,
        outputs,
        services,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use bizra_dataflows::convergence::Quality;
    use bizra_dataflows::verification::DigestCheck;

    /// A recomputed verdict whose signature came out `sig`: valid, permitted and the value
    /// follow from it as the stages make them.
    fn recomputed(tier: Tier, sig: SignatureCheck, replay: bool) -> Recomputed<'static> {
        let policy = Policy::reference();
        let convergence = Convergence {
            clarity: 0.8,
            mutual_information: 0.3,
            entropy: 0.6,
            synergy: 0.99,
            quantization_error: 0.0,
            quality: Quality::Optimal,
        };
        let provenance = Provenance {
            source: true,
            verified: sig == SignatureCheck::Ok,
            attestation: false,
        };
        let value = value::assess(&convergence, provenance, &policy.value);
        let checks = Checks {
            digest: DigestCheck::Absent,
            signature: sig,
            replay,
        };
        let valid = checks.reason().is_none();
        Recomputed {
            f: Fields {
                id: "obs-7".into(),
                payload: [7; 32],
                tier,
                valid,
                severity: Severity::Acceptable,
                permitted: valid,
                decision: Decision::of(valid, Severity::Acceptable),
                overall: 0.5,
                value: value.value,
                clarity: 0.8,
                checks,
            },
            batch: BatchRef {
                shard: 0,
                seq: 0,
                leaf_index: 0,
            },
            ethics_permitted: true,
            convergence: Box::leak(Box::new(convergence)),
            value: Box::leak(Box::new(value)),
        }
    }

    const AT: BatchRef = BatchRef {
        shard: 1,
        seq: 5,
        leaf_index: 2,
    };
    const POS: Pos = (0, 40);

    /// Judges `committed` (its leaf committed at [`AT`]) against `r`; `bad` lists the
    /// recomputation's rollbacks, `setup` adds to the index.
    fn judge(committed: &Recomputed, r: &Recomputed, bad: bool, setup: impl FnOnce(&mut Index)) -> Outcome {
        let policy = Policy::reference();
        let mut index = Index::default();
        index
            .leaves
            .insert((1, 5), vec![vec![[0; 32], [1; 32], committed.f.leaf()]]);
        setup(&mut index);
        let c = Committed {
            f: committed.f.clone(),
            batch: AT,
            version: 0,
            seen: false,
        };
        let mut out = Vec::new();
        let judge = Judge {
            index,
            policy: &policy,
            recomputed_bad: if bad {
                [leaf_at(r.batch)].into()
            } else {
                HashSet::new()
            },
            have_dlq: false,
            installed: true,
            sealed: true,
            waiting: Vec::new(),
            report: Report::default(),
            compared: Arc::default(),
            out: &mut out,
        };
        judge.judge(POS, &c, r)
    }

    fn is_sampling(o: &Outcome) -> bool {
        matches!(o, Outcome::Sampling(_))
    }

    fn differs_because(o: &Outcome, why: &str) -> bool {
        matches!(o, Outcome::Differing(line) if line.contains(why))
    }

    #[test]
    fn a_different_sample_passes_only_with_the_leaf_its_outcome_makes() {
        use SignatureCheck::{Ok, SampledOut};
        let (stat, sampled, checked) = (Tier::Statistical, SampledOut, Ok);
        // Either side may have checked the good signature at once; the value follows.
        let o = judge(
            &recomputed(stat, sampled, false),
            &recomputed(stat, checked, false),
            false,
            |_| {},
        );
        assert!(is_sampling(&o), "{o:?}");
        let o = judge(
            &recomputed(stat, checked, false),
            &recomputed(stat, sampled, false),
            false,
            |_| {},
        );
        assert!(is_sampling(&o), "{o:?}");
        // A sampled_out verdict whose value is not the one that outcome gives differs.
        let mut forged = recomputed(stat, sampled, false);
        forged.f.value += 1e-9;
        let o = judge(&forged, &recomputed(stat, checked, false), false, |_| {});
        assert!(differs_because(&o, "value="), "{o:?}");
        // Outside the statistical tier nothing is sampled.
        let incr = Tier::Incremental;
        let o = judge(
            &recomputed(incr, sampled, false),
            &recomputed(incr, checked, false),
            false,
            |_| {},
        );
        assert!(differs_because(&o, "signature check comes out ok"), "{o:?}");
    }

    #[test]
    fn a_bad_signature_passes_sampled_out_only_with_its_committed_rollback() {
        use SignatureCheck::{Bad, Ok, SampledOut};
        let stat = Tier::Statistical;
        let committed = recomputed(stat, SampledOut, false);
        let rollback = |index: &mut Index| {
            index.rolled_back.insert(leaf_at(AT), vec!["obs-7".into()]);
        };
        // Checked at once in the recomputation, or at its seal (a recomputed rollback).
        for (r, bad) in [
            (recomputed(stat, Bad, false), false),
            (recomputed(stat, SampledOut, false), true),
        ] {
            let o = judge(&committed, &r, bad, |_| {});
            assert!(
                differs_because(&o, "no committed rollback names this verdict"),
                "{o:?}"
            );
            match judge(&committed, &r, bad, rollback) {
                Outcome::Sampling(line) => assert!(!bad && line.contains("(rolled back)"), "{line}"),
                Outcome::Matching => assert!(bad, "both sides sampled_out: the same leaf"),
                o => panic!("{o:?}"),
            }
        }
        // A rollback for another id at that leaf does not count.
        let o = judge(&committed, &recomputed(stat, Bad, false), false, |index| {
            index.rolled_back.insert(leaf_at(AT), vec!["obs-8".into()]);
        });
        assert!(matches!(o, Outcome::Differing(_)), "{o:?}");
        // Committed as checked and good, but the signature is bad.
        let o = judge(
            &recomputed(stat, Ok, false),
            &recomputed(stat, SampledOut, false),
            true,
            |_| {},
        );
        assert!(differs_because(&o, "signature check comes out bad"), "{o:?}");
    }

    #[test]
    fn a_replay_flag_passes_only_with_a_sighting_before_it() {
        let (tier, sig) = (Tier::Full, SignatureCheck::Absent);
        let committed = recomputed(tier, sig, true);
        let r = recomputed(tier, sig, false);
        let o = judge(&committed, &r, false, |_| {});
        assert!(differs_because(&o, "no earlier sighting"), "{o:?}");
        let at =
            |p: Option<Pos>| move |index: &mut Index| index.ids.entry(id_hash("obs-7")).or_default().add(p);
        // Later in the same partition explains nothing; earlier, elsewhere, or in another
        // input does.
        let o = judge(&committed, &r, false, at(Some((0, 41))));
        assert!(matches!(o, Outcome::Differing(_)), "{o:?}");
        for place in [Some((0, 39)), None] {
            let o = judge(&committed, &r, false, at(place));
            assert!(matches!(o, Outcome::History(_)), "{o:?}");
        }
        // The recomputation saw an earlier sighting the run did not: only another
        // partition's copy, which Kafka does not order, explains it.
        let o = judge(&r, &committed, false, at(None));
        assert!(differs_because(&o, "saw this id earlier"), "{o:?}");
        let o = judge(&r, &committed, false, |index| {
            let s = index.ids.entry(id_hash("obs-7")).or_default();
            s.add(Some(POS));
            s.add(Some((1, 3)));
        });
        assert!(matches!(o, Outcome::History(_)), "{o:?}");
    }

    #[test]
    fn several_policy_versions_are_refused_naming_their_offsets() {
        let mut index = Index {
            versions: vec!["aaaa".into(), "bbbb".into()],
            ..Index::default()
        };
        let f = Fields {
            id: "x".into(),
            payload: [0; 32],
            tier: Tier::Full,
            valid: true,
            severity: Severity::Acceptable,
            permitted: true,
            decision: Decision::Permit,
            overall: 0.5,
            value: 0.5,
            clarity: 0.5,
            checks: Checks {
                digest: bizra_dataflows::verification::DigestCheck::Absent,
                signature: SignatureCheck::Absent,
                replay: false,
            },
        };
        let batch = BatchRef {
            shard: 0,
            seq: 0,
            leaf_index: 0,
        };
        for (o, version) in [(0, 0), (1, 0), (2, 1)] {
            let c = Committed {
                f: f.clone(),
                batch,
                version,
                seen: false,
            };
            index.verdicts.insert((0, o), c);
        }
        let e = index.check_policy("aaaa", "p", None).unwrap_err().to_string();
        assert!(
            e.contains("aaaa in partition 0 offsets 0..=1 (2 verdicts)"),
            "{e}"
        );
        assert!(
            e.contains("bbbb in partition 0 offsets 2..=2 (1 verdicts)"),
            "{e}"
        );
        // Restricted to a range that holds one version, it is checked against the policy.
        let ranges: Ranges = [(0, (0, 2))].into_iter().collect();
        assert!(index.check_policy("aaaa", "p", Some(&ranges)).is_ok());
        let e = index
            .check_policy("cccc", "the policy p.toml", Some(&ranges))
            .unwrap_err();
        assert!(e
            .to_string()
            .contains("policy_version aaaa, but the policy p.toml has version cccc"));
    }
}
