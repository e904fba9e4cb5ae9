//! `bizra verify`: the independent auditor of a deployment's outputs (SPEC §1.2, §1.3, §1.6,
//! §3.4). An [`Auditor`] is fed verdicts, rollbacks, commitments and signed checkpoints in
//! arrival order, in any interleaving, and reports every failure it can prove:
//! - each commitment's own fields (signature, key id, root, tree size), each `prev` link, each
//!   gap in `seq`, each fork (two different commitments at one shard and seq);
//! - each checkpoint's signature and origin, its root against the log of commitments (so its
//!   consistency with the earlier checkpoints of its shard: two roots of one append-only log
//!   are consistent), and each commitment no checkpoint covers (a truncated log);
//! - each verdict's and rollback's leaf, rebuilt from its own fields, in its commitment, each
//!   inclusion proof, each verdict's `decision` and `permitted` against its committed fields,
//!   and each rollback against the verdict it names.
//!
//! A verdict whose leaf is in no commitment is excused as a *superseded duplicate* when
//! another copy of it (same id and input, same leaf) is committed: a crash can lose a batch's
//! commitment after its verdicts were written, and the input is then decided again.
//!
//! Files are judged once they are read ([`verify_files`]); topics are read by [`kafka`], which
//! calls [`Auditor::tick`] to judge what is older than a grace period while it follows them.
//! A follower runs for ever, so it retires what it has judged once it is older than
//! [`AuditConfig::retain_ms`]: its memory is bounded by the record rate times that, not by the
//! history. Each shard's log is kept as its compact range (one hash per set bit of its size)
//! and the roots at its recent sizes, not as a tree. This file neither reads topics nor
//! prints.

pub mod kafka;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use anyhow::Context;
use bizra_dataflows::observation::{InputRef, Text};
use bizra_dataflows::rollback::Rollback;
use bizra_dataflows::verdict::{Decision, Proof, Verdict};
use bizra_dataflows::verification::checkpoint::{self, open_note};
use bizra_dataflows::verification::commitment::{
    deployment_run, run_id_hex, ChainVerifier, Commitment, ProblemKind,
};
use bizra_dataflows::verification::merkle::{self, verify_path, Hash};
use bizra_dataflows::verification::tlog::Frontier;
use bizra_dataflows::verification::{BatchRef, SignatureCheck, Tier};
use ed25519_dalek::VerifyingKey;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use sha3::{Digest, Sha3_256};

use crate::decision_log::CheckpointRecord;

/// What the auditor checks each record against.
#[derive(Clone, Debug)]
pub struct AuditConfig {
    /// The deployment (`log.deployment`) whose logs the checkpoints sign: origins are
    /// `<deployment>/bizra/shard/<k>` and its commitments carry `run = deployment_run(it)`.
    pub deployment: String,
    /// Checkpoints are part of the history: every commitment of the deployment's run must be
    /// covered by one.
    pub coverage: bool,
    /// Records arrive while the deployment runs: what is younger than this (by arrival time)
    /// may still be completed by records on their way, so it is judged only once older.
    /// `None`: the history is complete (files), everything is judged at [`Auditor::finish`].
    pub grace_ms: Option<u64>,
    /// Following: what was judged and arrived more than this long ago is retired (dropped),
    /// keeping only what later records are checked against: each log's compact range and its
    /// newest hash. A record that needs what was retired is counted as unchecked and noted.
    /// `None`: everything is kept until [`Auditor::finish`] (files).
    pub retain_ms: Option<u64>,
}

/// Where a record was read and when it arrived.
#[derive(Clone, Debug)]
pub struct Seen {
    /// Names the record in report lines: `verdicts:12`, `bizra.verdicts/0@1234`.
    pub at: String,
    /// Arrival time in ms since the Unix epoch (the Kafka timestamp); 0 for files.
    pub ms: u64,
}

impl Seen {
    /// A line of a file, which has no arrival time.
    pub fn line(kind: &str, line: usize) -> Seen {
        Seen {
            at: format!("{kind}:{line}"),
            ms: 0,
        }
    }
}

/// The kind of a failure: the label of `bizra_audit_failures_total{check}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Check {
    /// A record that does not decode.
    Malformed,
    /// A commitment's own fields: syntax, tree size, root, key id, signature.
    Commitment,
    /// A `prev` that is not the hash of the previous commitment's message.
    Chain,
    /// Commitments missing between present ones, or below a checkpoint's size.
    Gap,
    /// Two different commitments at one (run, shard, seq).
    Fork,
    /// A checkpoint whose note does not verify for its shard's origin, or whose record
    /// disagrees with its note.
    CheckpointSignature,
    /// A checkpoint inconsistent with an earlier one of its shard or with the log.
    CheckpointConsistency,
    /// A verdict's or rollback's leaf in no commitment (and no committed copy of it).
    Uncommitted,
    /// An inclusion proof missing or not verifying.
    Proof,
    /// A verdict field that contradicts its committed fields, or a digest that does not parse.
    Fields,
    /// A rollback outside its verdict's batch, or naming a verdict it cannot name.
    Rollback,
    /// Commitments of the deployment that no checkpoint covers.
    Uncovered,
}

impl Check {
    pub const ALL: [Check; 12] = [
        Check::Malformed,
        Check::Commitment,
        Check::Chain,
        Check::Gap,
        Check::Fork,
        Check::CheckpointSignature,
        Check::CheckpointConsistency,
        Check::Uncommitted,
        Check::Proof,
        Check::Fields,
        Check::Rollback,
        Check::Uncovered,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Check::Malformed => "malformed",
            Check::Commitment => "commitment",
            Check::Chain => "chain",
            Check::Gap => "gap",
            Check::Fork => "fork",
            Check::CheckpointSignature => "checkpoint_signature",
            Check::CheckpointConsistency => "checkpoint_consistency",
            Check::Uncommitted => "uncommitted",
            Check::Proof => "proof",
            Check::Fields => "fields",
            Check::Rollback => "rollback",
            Check::Uncovered => "uncovered",
        }
    }
}

/// The kinds of record the auditor reads: the label of `bizra_audit_records_total{kind}`.
pub const KINDS: [&str; 4] = ["verdict", "rollback", "commitment", "checkpoint"];

/// The auditor's metrics, registered into the registry served on `--http`.
#[derive(Clone)]
pub struct AuditMetrics {
    /// `bizra_audit_records_total{kind}`: records read, by kind.
    records: IntCounterVec,
    /// `bizra_audit_failures_total{check}`: failures reported, by check.
    failures: IntCounterVec,
    /// `bizra_audit_uncovered_commitments`: commitments older than the grace period that no
    /// checkpoint covers now.
    uncovered: IntGauge,
    /// `bizra_audit_unchecked_total`: records that arrived after what they are checked
    /// against was retired (`--retain-ms`). Normally 0: alert on growth.
    unchecked: IntCounter,
}

impl AuditMetrics {
    /// Registers every family, with every label value at zero.
    pub fn register(registry: &Registry) -> prometheus::Result<AuditMetrics> {
        let records = IntCounterVec::new(
            Opts::new(
                "bizra_audit_records_total",
                "Records read by bizra verify, by kind",
            ),
            &["kind"],
        )?;
        let failures = IntCounterVec::new(
            Opts::new(
                "bizra_audit_failures_total",
                "Failures bizra verify reported, by check",
            ),
            &["check"],
        )?;
        let uncovered = IntGauge::new(
            "bizra_audit_uncovered_commitments",
            "Commitments older than the grace period that no signed checkpoint covers",
        )?;
        registry.register(Box::new(records.clone()))?;
        registry.register(Box::new(failures.clone()))?;
        let unchecked = IntCounter::new(
            "bizra_audit_unchecked_total",
            "Records bizra verify --follow could not check: what they are checked against was retired (--retain-ms)",
        )?;
        registry.register(Box::new(uncovered.clone()))?;
        registry.register(Box::new(unchecked.clone()))?;
        for k in KINDS {
            records.with_label_values(&[k]);
        }
        for c in Check::ALL {
            failures.with_label_values(&[c.as_str()]);
        }
        Ok(AuditMetrics {
            records,
            failures,
            uncovered,
            unchecked,
        })
    }
}

/// What the auditor found.
#[derive(Debug, Default)]
pub struct Report {
    pub verdicts: u64,
    pub rollbacks: u64,
    pub commitments: u64,
    pub checkpoints: u64,
    /// Inclusion proofs of verdicts and rollbacks verified.
    pub proofs_checked: u64,
    /// Consecutive checkpoints of a shard both found to be roots of its log: consistent.
    pub consistency_checks: u64,
    /// Records that arrived after what they are checked against was retired (following
    /// only, [`AuditConfig::retain_ms`]): not checked, noted.
    pub unchecked: u64,
    /// Ranges of missing commitments.
    pub gaps: u64,
    pub forks: u64,
    /// Checkpoints inconsistent with an earlier one or with the log.
    pub inconsistent_checkpoints: u64,
    /// Verdicts and rollbacks whose leaf is in no commitment.
    pub uncommitted: u64,
    /// Uncommitted verdicts and rollbacks excused by a committed copy.
    pub superseded: u64,
    /// Commitments no checkpoint covers.
    pub uncovered: u64,
    /// Failures reported in all (also those already taken from `failures`).
    pub failed: u64,
    /// One line per failure not yet taken ([`Auditor::take_lines`]).
    pub failures: Vec<String>,
    /// What could not be checked, and why; not failures.
    pub notes: Vec<String>,
}

impl Report {
    /// The summary line `bizra verify` prints last.
    pub fn summary(&self) -> String {
        format!(
            "checked {} verdicts and {} rollbacks ({} inclusion proofs) against {} commitments and {} checkpoints ({} consistency checks): {} gaps, {} forks, {} inconsistent checkpoints, {} uncommitted verdicts, {} superseded duplicates, {} uncovered commitments{}: {} failures",
            self.verdicts,
            self.rollbacks,
            self.proofs_checked,
            self.commitments,
            self.checkpoints,
            self.consistency_checks,
            self.gaps,
            self.forks,
            self.inconsistent_checkpoints,
            self.uncommitted,
            self.superseded,
            self.uncovered,
            match self.unchecked {
                0 => String::new(),
                n => format!(", {n} unchecked (arrived after what they are checked against was retired)"),
            },
            self.failed
        )
    }
}

/// The report and the metrics, which every check writes to.
struct Out {
    report: Report,
    metrics: Option<AuditMetrics>,
    /// Records found unchecked since the last note about them.
    unchecked_since_note: u64,
}

impl Out {
    fn fail(&mut self, check: Check, line: String) {
        let r = &mut self.report;
        r.failed += 1;
        match check {
            Check::Gap => r.gaps += 1,
            Check::Fork => r.forks += 1,
            Check::CheckpointConsistency => r.inconsistent_checkpoints += 1,
            Check::Uncommitted => r.uncommitted += 1,
            _ => {}
        }
        r.failures.push(line);
        if let Some(m) = &self.metrics {
            m.failures.with_label_values(&[check.as_str()]).inc();
        }
    }

    fn unchecked(&mut self, n: u64) {
        self.report.unchecked += n;
        self.unchecked_since_note += n;
        if let Some(m) = &self.metrics {
            m.unchecked.inc_by(n);
        }
    }

    fn note(&mut self, line: String) {
        self.report.notes.push(line);
    }

    fn record(&self, kind: &str) {
        if let Some(m) = &self.metrics {
            m.records.with_label_values(&[kind]).inc();
        }
    }
}

/// The checker. Feed it records as they arrive; [`Auditor::finish`] judges the rest.
pub struct Auditor<'k> {
    pk: &'k VerifyingKey,
    cfg: AuditConfig,
    /// Hex of `deployment_run(cfg.deployment)`: the run whose logs the checkpoints sign.
    run: String,
    /// Checks each commitment's own fields; seq, `prev` and forks are checked here over the
    /// whole log, so that the order of arrival does not matter.
    fields: ChainVerifier<'k>,
    /// (run, shard) → that chain's decision log.
    logs: BTreeMap<(String, u32), ShardLog>,
    /// (shard, seq) → each distinct commitment seen there (several: forks, other runs).
    batches: HashMap<(u32, u64), Vec<Batch>>,
    /// Leaves waiting for a commitment of their (shard, seq).
    pending: HashMap<(u32, u64), Vec<Claim>>,
    /// Leaves their batch's commitments do not hold, judged later: a copy may be committed.
    suspects: Vec<Claim>,
    /// Leaf → when it was last found committed, and the inputs of the verdicts and
    /// rollbacks found committed with it.
    committed: HashMap<Hash, (u64, Vec<Option<InputRef>>)>,
    /// (shard, seq, leaf index) → when the first arrived, and the id and signature check of
    /// each verdict there.
    named: HashMap<LeafAt, (u64, Vec<(Text, SignatureCheck)>)>,
    /// Rollbacks whose named verdict has not arrived: (shard, seq, leaf) → (at, id, ms).
    naming: HashMap<LeafAt, Vec<(String, Text, u64)>>,
    /// Arrival time of the newest tick (ms).
    now_ms: u64,
    out: Out,
}

/// A leaf's place: (shard, seq, leaf index).
type LeafAt = (u32, u64, u32);

/// One distinct commitment of a batch, as far as leaves need it.
struct Batch {
    /// When it arrived.
    ms: u64,
    root: String,
    tree_size: u64,
    /// `None` where the commitment's leaf is not 64 hex digits (its own check fails).
    leaves: Vec<Option<Hash>>,
}

/// A leaf a verdict or rollback claims is in its batch.
struct Claim {
    /// `verdicts:12 (id "x")`.
    at: String,
    ms: u64,
    batch: BatchRef,
    leaf: Hash,
    proof: Option<Proof>,
    needs_proof: bool,
    /// "the verdict's fields" or "the rollback's fields".
    what: &'static str,
    /// The record's input, to tell a copy of it from another record with the same leaf.
    input: Option<InputRef>,
}

/// One (run, shard) chain of commitments and the checkpoints of its log.
struct ShardLog {
    /// `run R shard S`, for report lines.
    name: String,
    shard: u32,
    /// seq → the first commitment seen there, from `retired` on.
    entries: BTreeMap<u64, Entry>,
    /// Seqs below this were judged and dropped (following only).
    retired: u64,
    /// The hash of the message of seq `retired - 1`: the `prev` of seq `retired`.
    retired_hash: Option<Hash>,
    /// The log's compact range over the entries from 0 on, all present and parsed; `None`
    /// once a seq it needs was retired missing (a gap reported long ago).
    log: Option<Frontier>,
    /// size → the log's root at that size, for the sizes not retired.
    roots: BTreeMap<u64, Hash>,
    /// Every accepted checkpoint: size → root.
    accepted: BTreeMap<u64, Hash>,
    /// The largest accepted checkpoint: what covers the log.
    head: Option<Head>,
    /// Accepted checkpoints waiting for the log to reach their size.
    waiting: Vec<Waiting>,
    /// Missing seqs below this are reported (or noted).
    gaps_judged: u64,
    /// Seqs below this were reported as uncovered.
    uncovered_judged: u64,
    /// The log does not start at seq 0, and that was noted.
    start_noted: bool,
}

struct Entry {
    at: String,
    ms: u64,
    /// SHA3-256 of the commitment's JSON: tells a redelivered copy from a fork.
    digest: Hash,
    /// The digests of the forks reported at this seq, so that each is reported once.
    forks: Vec<Hash>,
    /// SHA3-256 of its §3.3 message: the next seq's `prev`.
    hash: Option<Hash>,
    /// Its `prev`, parsed.
    prev: Option<Hash>,
    /// Its leaf in the log: leaf_hash(message).
    leaf: Option<Hash>,
}

#[derive(Clone)]
struct Head {
    at: String,
    ms: u64,
    size: u64,
    root: Hash,
}

struct Waiting {
    head: Head,
    /// The checkpoint it must extend.
    prev: Option<Head>,
}

impl<'k> Auditor<'k> {
    pub fn new(pk: &'k VerifyingKey, cfg: AuditConfig, metrics: Option<AuditMetrics>) -> Auditor<'k> {
        Auditor {
            pk,
            run: run_id_hex(&deployment_run(&cfg.deployment)),
            cfg,
            fields: ChainVerifier::new(pk),
            logs: BTreeMap::new(),
            batches: HashMap::new(),
            pending: HashMap::new(),
            suspects: Vec::new(),
            committed: HashMap::new(),
            named: HashMap::new(),
            naming: HashMap::new(),
            now_ms: 0,
            out: Out {
                report: Report::default(),
                metrics,
                unchecked_since_note: 0,
            },
        }
    }

    /// The counts so far; failure and note lines not yet taken.
    pub fn report(&self) -> &Report {
        &self.out.report
    }

    /// Takes the failure and note lines reported since the last call (to print them while
    /// following a topic, without keeping them).
    pub fn take_lines(&mut self) -> (Vec<String>, Vec<String>) {
        let r = &mut self.out.report;
        (std::mem::take(&mut r.failures), std::mem::take(&mut r.notes))
    }

    /// A record that does not decode as a `kind`.
    pub fn malformed(&mut self, seen: &Seen, kind: &str, error: &dyn std::fmt::Display) {
        self.out.fail(
            Check::Malformed,
            format!("{}: not a {kind} record: {error}", seen.at),
        );
    }

    /// A commitment: its own fields now, its place in the log, the leaves waiting for it.
    pub fn commitment(&mut self, seen: &Seen, c: &Commitment) {
        self.out.report.commitments += 1;
        self.out.record("commitment");
        let digest: Hash = Sha3_256::digest(serde_json::to_vec(c).expect("a commitment serialises")).into();
        let log = self
            .logs
            .entry((c.run.clone(), c.shard))
            .or_insert_with(|| ShardLog::new(&c.run, c.shard));
        if c.seq < log.retired {
            // A copy or a fork of a commitment judged and dropped long ago: cannot tell.
            self.out.unchecked(1);
            return;
        }
        let first = match log.entries.get_mut(&c.seq) {
            // Redelivered (at-least-once), or a fork already reported.
            Some(e) if e.digest == digest || e.forks.contains(&digest) => return,
            Some(e) => {
                e.forks.push(digest);
                let line = format!(
                    "{}: commitment {} seq {}: a fork: a second commitment with different content (the first is {})",
                    seen.at, log.name, c.seq, e.at
                );
                self.out.fail(Check::Fork, line);
                false
            }
            None => true,
        };
        for p in self.fields.check(c) {
            if !matches!(
                p.kind,
                ProblemKind::Seq { .. } | ProblemKind::Fork | ProblemKind::Prev { .. }
            ) {
                self.out.fail(Check::Commitment, format!("{}: {p}", seen.at));
            }
        }
        if first {
            let message = c.message();
            log.entries.insert(
                c.seq,
                Entry {
                    at: seen.at.clone(),
                    ms: seen.ms,
                    digest,
                    forks: Vec::new(),
                    hash: message.as_ref().map(|m| Sha3_256::digest(m).into()),
                    prev: hex32(&c.prev),
                    leaf: message.as_ref().map(|m| merkle::leaf_hash(m)),
                },
            );
            log.check_links(c.seq, &mut self.out);
            log.grow(&mut self.out);
        }
        let key = (c.shard, c.seq);
        self.batches.entry(key).or_default().push(Batch {
            ms: seen.ms,
            root: c.root.clone(),
            tree_size: c.tree_size,
            leaves: c.leaves.iter().map(|l| hex32(l)).collect(),
        });
        for claim in self.pending.remove(&key).unwrap_or_default() {
            self.settle(claim);
        }
    }

    /// A signed checkpoint: its note, its place among its shard's checkpoints, and (once the
    /// log reaches its size) its root and its consistency with the one before.
    pub fn checkpoint(&mut self, seen: &Seen, rec: &CheckpointRecord) {
        self.out.report.checkpoints += 1;
        self.out.record("checkpoint");
        let at = format!("{} (shard {})", seen.at, rec.shard);
        let origin = checkpoint::origin(&self.cfg.deployment, rec.shard);
        let cp = match open_note(&rec.note, &origin, self.pk) {
            Ok(cp) => cp,
            Err(e) => {
                self.out.fail(
                    Check::CheckpointSignature,
                    format!("{at}: not a checkpoint of {origin} signed by the node key: {e}"),
                );
                return;
            }
        };
        if cp.size != rec.tree_size {
            self.out.fail(
                Check::CheckpointSignature,
                format!(
                    "{at}: expected the record's tree_size to be the signed size {}, found {}",
                    cp.size, rec.tree_size
                ),
            );
        }
        let log = self
            .logs
            .entry((self.run.clone(), rec.shard))
            .or_insert_with(|| ShardLog::new(&self.run, rec.shard));
        let head = Head {
            at: at.clone(),
            ms: seen.ms,
            size: cp.size,
            root: cp.root,
        };
        match log.accepted.get(&cp.size) {
            Some(root) if *root == cp.root => return, // the same checkpoint again
            Some(root) => {
                let line = format!(
                    "{at}: size {} with root {}, but an earlier checkpoint of this size has root {}",
                    cp.size,
                    hex::encode(cp.root),
                    hex::encode(root)
                );
                self.out.fail(Check::CheckpointConsistency, line);
                return;
            }
            None => {}
        }
        if let Some(h) = log.head.as_ref().filter(|h| h.size > cp.size) {
            let line = format!(
                "{at}: size {} after a checkpoint of size {} ({}): a log only grows",
                cp.size, h.size, h.at
            );
            self.out.fail(Check::CheckpointConsistency, line);
            return;
        }
        log.accepted.insert(cp.size, cp.root);
        let prev = log.head.replace(head.clone());
        log.waiting.push(Waiting { head, prev });
        log.grow(&mut self.out);
    }

    /// A verdict: its decision against its committed fields, its leaf in its commitment.
    pub fn verdict(&mut self, seen: &Seen, v: &Verdict) {
        self.out.report.verdicts += 1;
        self.out.record("verdict");
        let at = format!("{} (id {:?})", seen.at, v.id);
        let decided = Decision::of(v.permitted, v.ethics.severity);
        if v.decision != decided {
            self.out.fail(
                Check::Fields,
                format!(
                    "{at}: decision {:?} does not follow from the committed fields (permitted {}, severity {}): expected {:?}",
                    v.decision.as_str(),
                    v.permitted,
                    v.ethics.severity.as_str(),
                    decided.as_str()
                ),
            );
        }
        let permitted = v.ethics.permitted && v.verification.valid;
        if v.permitted != permitted {
            self.out.fail(
                Check::Fields,
                format!(
                    "{at}: permitted {} is not ethics.permitted ({}) and verification.valid ({})",
                    v.permitted, v.ethics.permitted, v.verification.valid
                ),
            );
        }
        let key = (v.batch.shard, v.batch.seq, v.batch.leaf_index);
        self.named
            .entry(key)
            .or_insert_with(|| (seen.ms, Vec::new()))
            .1
            .push((v.id.clone(), v.verification.checks.signature));
        for (rat, rid, _) in self.naming.remove(&key).unwrap_or_default() {
            self.check_naming(&rat, &rid, key);
        }
        let Some(payload) = v.payload_sha256() else {
            self.out.fail(
                Check::Fields,
                format!("{at}: payload_digest is not sha256:<64 hex>"),
            );
            return;
        };
        let leaf = v.leaf_fields(&payload).hash();
        self.claim(Claim {
            at,
            ms: seen.ms,
            batch: v.batch,
            leaf,
            proof: v.proof.clone(),
            needs_proof: v.verification.tier == Tier::Full,
            what: "the verdict's fields",
            input: v.input.clone(),
        });
    }

    /// A rollback: its leaf and proof in its batch, which is its verdict's, and that verdict.
    pub fn rollback(&mut self, seen: &Seen, r: &Rollback) {
        self.out.report.rollbacks += 1;
        self.out.record("rollback");
        let at = format!("{} (id {:?})", seen.at, r.id);
        if r.batch.shard != r.verdict_batch.shard || r.batch.seq != r.verdict_batch.seq {
            self.out.fail(
                Check::Rollback,
                format!("{at}: a rollback's leaf is in the batch of the verdict it names"),
            );
        }
        let key = (
            r.verdict_batch.shard,
            r.verdict_batch.seq,
            r.verdict_batch.leaf_index,
        );
        if self.named.contains_key(&key) {
            self.check_naming(&at, &r.id, key);
        } else {
            self.naming
                .entry(key)
                .or_default()
                .push((at.clone(), r.id.clone(), seen.ms));
        }
        let Some(leaf) = r.leaf() else {
            self.out.fail(
                Check::Fields,
                format!("{at}: payload_digest is not sha256:<64 hex>"),
            );
            return;
        };
        self.claim(Claim {
            at,
            ms: seen.ms,
            batch: r.batch,
            leaf,
            proof: r.proof.clone(),
            needs_proof: true,
            what: "the rollback's fields",
            input: r.input.clone(),
        });
    }

    /// Judges what is older than the grace period at `now_ms`: missing commitments,
    /// uncommitted leaves, uncovered commitments. Only with a grace period (records that
    /// arrive while the deployment runs).
    pub fn tick(&mut self, now_ms: u64) {
        let Some(grace) = self.cfg.grace_ms else {
            return;
        };
        self.now_ms = now_ms;
        let old = |ms: u64| ms.saturating_add(grace) <= now_ms;
        for log in self.logs.values_mut() {
            // A seq is missing for good once a later one is old.
            let newest_old = log.entries.iter().rev().find(|(_, e)| old(e.ms)).map(|(s, _)| *s);
            let below_head = log.head.as_ref().filter(|h| old(h.ms)).map(|h| h.size);
            let upto = newest_old.unwrap_or(0).max(below_head.unwrap_or(0));
            log.judge_gaps(upto, &mut self.out);
        }
        self.judge_claims(false);
        self.judge_uncovered(false);
        self.retire();
    }

    /// True if shard `shard`'s commitment `seq` may have been judged and dropped.
    fn retired(&self, shard: u32, seq: u64) -> bool {
        is_retired(&self.logs, shard, seq)
    }

    /// Following: drops what was judged and arrived more than `retain_ms` ago.
    fn retire(&mut self) {
        let Some(retain) = self.cfg.retain_ms else {
            return;
        };
        let cutoff = self.now_ms.saturating_sub(retain);
        let stale = |ms: u64| ms < cutoff;
        for ((run, _), log) in self.logs.iter_mut() {
            // Judged: the gaps below `gaps_judged`; for the deployment, also coverage.
            let mut floor = log.gaps_judged;
            if self.cfg.coverage && *run == self.run {
                let covered = log.head.as_ref().map_or(0, |h| h.size);
                floor = floor.min(covered.max(log.uncovered_judged));
            }
            log.retire(floor, &stale, &mut self.out);
        }
        let logs = &self.logs;
        let retired = |shard: u32, seq: u64| is_retired(logs, shard, seq);
        self.batches.retain(|&(shard, seq), bs| {
            bs.retain(|b| !(stale(b.ms) && retired(shard, seq)));
            !bs.is_empty()
        });
        self.committed.retain(|_, (ms, _)| !stale(*ms));
        self.named
            .retain(|&(shard, seq, _), (ms, _)| !(stale(*ms) && retired(shard, seq)));
        self.naming.retain(|_, v| {
            v.retain(|(_, _, ms)| !stale(*ms));
            !v.is_empty()
        });
        if self.out.unchecked_since_note > 0 {
            let n = std::mem::take(&mut self.out.unchecked_since_note);
            self.out.note(format!(
                "{n} records arrived after what they are checked against was retired (older than --retain-ms, {retain} ms): not checked"
            ));
        }
    }

    /// Judges everything still open and returns the report. With a grace period, what is
    /// younger than it at `now_ms` is noted, not failed.
    pub fn finish(mut self, now_ms: u64) -> Report {
        self.now_ms = now_ms;
        let grace = self.cfg.grace_ms;
        let old = |ms: u64| grace.is_none_or(|g| ms.saturating_add(g) <= now_ms);
        for log in self.logs.values_mut() {
            // A young checkpoint's commitments may still be on their way.
            let last = log.entries.last_key_value().map_or(0, |(s, _)| s + 1);
            let head = log.head.as_ref().filter(|h| old(h.ms));
            let upto = last.max(head.map_or(0, |h| h.size));
            log.judge_gaps(upto, &mut self.out);
            log.note_waiting(&mut self.out);
        }
        self.judge_claims(true);
        self.judge_uncovered(true);
        if self.cfg.coverage {
            let others: usize = self
                .logs
                .iter()
                .filter(|((run, _), _)| *run != self.run)
                .map(|(_, l)| l.entries.len())
                .sum();
            if others > 0 {
                self.out.note(format!(
                    "{others} commitments belong to other runs than deployment {:?}'s ({}): their chains are checked, but no checkpoint of this deployment covers them",
                    self.cfg.deployment, self.run
                ));
            }
        }
        self.out.report
    }

    fn is_old(&self, ms: u64) -> bool {
        self.cfg
            .grace_ms
            .is_none_or(|g| ms.saturating_add(g) <= self.now_ms)
    }

    fn check_naming(&mut self, at: &str, id: &Text, key: (u32, u64, u32)) {
        let Some((_, list)) = self.named.get(&key) else {
            return;
        };
        if list
            .iter()
            .any(|(vid, check)| vid == id && *check == SignatureCheck::SampledOut)
        {
            return;
        }
        let line = match list.iter().find(|(vid, _)| vid == id) {
            Some((_, check)) => format!(
                "{at}: names a verdict whose signature was {}, not sampled_out",
                check.as_str()
            ),
            None => format!(
                "{at}: names the verdict at shard {} seq {} leaf {}, whose id is {:?}",
                key.0, key.1, key.2, list[0].0
            ),
        };
        self.out.fail(Check::Rollback, line);
    }

    fn claim(&mut self, c: Claim) {
        let key = (c.batch.shard, c.batch.seq);
        if self.batches.contains_key(&key) {
            self.settle(c);
        } else {
            self.pending.entry(key).or_default().push(c);
        }
    }

    /// Checks a claim whose batch has a commitment: found (and its proof), or a suspect.
    fn settle(&mut self, c: Claim) {
        if !self.find(&c) {
            self.suspects.push(c);
        }
    }

    /// Finds the claim's leaf in a commitment of its batch and checks its proof; false if no
    /// commitment holds it.
    fn find(&mut self, c: &Claim) -> bool {
        let Some(candidates) = self.batches.get(&(c.batch.shard, c.batch.seq)) else {
            return false;
        };
        let idx = c.batch.leaf_index as usize;
        let Some(b) = candidates
            .iter()
            .find(|b| b.leaves.get(idx) == Some(&Some(c.leaf)))
        else {
            return false;
        };
        let (root, tree_size) = (b.root.clone(), b.tree_size);
        let seen = self.committed.entry(c.leaf).or_default();
        seen.0 = seen.0.max(c.ms);
        seen.1.push(c.input.clone());
        match &c.proof {
            Some(proof) => {
                self.out.report.proofs_checked += 1;
                let path: Option<Vec<Hash>> = proof.path.iter().map(|h| hex32(h)).collect();
                let ok = match (path, hex32(&proof.root)) {
                    (Some(path), Some(r)) => {
                        proof.root == root
                            && proof.tree_size == tree_size
                            && verify_path(&c.leaf, idx as u64, proof.tree_size, &path, &r)
                    }
                    _ => false,
                };
                if !ok {
                    self.out.fail(
                        Check::Proof,
                        format!(
                            "{}: inclusion proof does not verify against commitment root {root}",
                            c.at
                        ),
                    );
                }
            }
            None if c.needs_proof => self
                .out
                .fail(Check::Proof, format!("{}: no inclusion proof", c.at)),
            None => {}
        }
        true
    }

    /// Judges the leaves not found in a commitment (all at the end; otherwise the old ones):
    /// found after all (a later commitment of the batch), excused by a committed copy, or
    /// failed. At the end, young ones are noted.
    fn judge_claims(&mut self, end: bool) {
        let mut open: Vec<Claim> = std::mem::take(&mut self.suspects);
        for (_, mut claims) in self.pending.drain() {
            open.append(&mut claims);
        }
        let mut young = 0;
        for c in open {
            if !self.is_old(c.ms) {
                if end {
                    young += 1;
                } else {
                    self.claim(c);
                }
                continue;
            }
            if self.find(&c) {
                continue;
            }
            let copy = self
                .committed
                .get(&c.leaf)
                .is_some_and(|(_, inputs)| inputs.contains(&c.input));
            if copy {
                self.out.report.superseded += 1;
                continue;
            }
            let (shard, seq) = (c.batch.shard, c.batch.seq);
            if self.retired(shard, seq) {
                // Its batch's commitment may have been judged and dropped before it came.
                self.out.unchecked(1);
                continue;
            }
            let line = if self.batches.contains_key(&(shard, seq)) {
                format!(
                    "{}: leaf {} of shard {shard} seq {seq} does not match {}, and no committed copy of it (same id, input and leaf) was seen",
                    c.at, c.batch.leaf_index, c.what
                )
            } else {
                format!(
                    "{}: no commitment for shard {shard} seq {seq}, and no committed copy of it (same id, input and leaf) was seen",
                    c.at
                )
            };
            self.out.fail(Check::Uncommitted, line);
        }
        if young > 0 {
            self.out.note(format!(
                "{young} verdicts and rollbacks younger than the grace period are not committed yet: not judged"
            ));
        }
    }

    /// Reports the deployment's commitments that no checkpoint covers (at the end all of
    /// them, noting young ones; otherwise the old ones not reported yet), and sets the gauge.
    fn judge_uncovered(&mut self, end: bool) {
        if !self.cfg.coverage {
            return;
        }
        let mut gauge = 0;
        let grace = self.cfg.grace_ms;
        let now = self.now_ms;
        let old = |ms: u64| grace.is_none_or(|g| ms.saturating_add(g) <= now);
        for ((run, _), log) in self.logs.iter_mut() {
            if *run != self.run {
                continue;
            }
            let covered = log.head.as_ref().map_or(0, |h| h.size);
            let mut fresh: Vec<u64> = Vec::new();
            let mut young = 0u64;
            for (seq, e) in log.entries.range(covered..) {
                if !old(e.ms) {
                    young += 1;
                    continue;
                }
                gauge += 1;
                if *seq >= log.uncovered_judged {
                    fresh.push(*seq);
                }
            }
            if let (Some(first), Some(last)) = (fresh.first(), fresh.last()) {
                let by = match &log.head {
                    Some(h) => format!("the latest checkpoint, {}, is of size {}", h.at, h.size),
                    None => "no checkpoint of this shard was seen".to_owned(),
                };
                let line = format!(
                    "shard {}: {} commitments, seq {first}..={last}, are not covered by a signed checkpoint ({by}); bizra checkpoints each shard every log.checkpoint_interval_ms and at each graceful stop, so only a running deployment has an uncovered tail, younger than the interval: a truncated log, or a stop without its last checkpoint",
                    log.shard,
                    fresh.len()
                );
                self.out.report.uncovered += fresh.len() as u64;
                self.out.fail(Check::Uncovered, line);
                log.uncovered_judged = last + 1;
            }
            if end && young > 0 {
                self.out.note(format!(
                    "shard {}: {young} commitments younger than the grace period are not covered by a checkpoint yet: not judged",
                    log.shard
                ));
            }
        }
        if let Some(m) = &self.out.metrics {
            m.uncovered.set(gauge);
        }
    }
}

impl ShardLog {
    fn new(run: &str, shard: u32) -> ShardLog {
        ShardLog {
            name: format!("run {run} shard {shard}"),
            shard,
            entries: BTreeMap::new(),
            retired: 0,
            retired_hash: None,
            log: Some(Frontier::new()),
            roots: BTreeMap::new(),
            accepted: BTreeMap::new(),
            head: None,
            waiting: Vec::new(),
            gaps_judged: 0,
            uncovered_judged: 0,
            start_noted: false,
        }
    }

    /// The log's root at `size`, if known (not retired, reached by the log).
    fn root_at(&self, size: u64) -> Option<Hash> {
        match size {
            0 => Some(Frontier::new().root()),
            n => self.roots.get(&n).copied(),
        }
    }

    /// Drops the entries below `floor` that are `stale`, and what only they needed (a
    /// checkpoint that waited that long is counted unchecked).
    fn retire(&mut self, floor: u64, stale: &impl Fn(u64) -> bool, out: &mut Out) {
        while let Some(e) = self.entries.first_entry() {
            let seq = *e.key();
            if seq >= floor || !stale(e.get().ms) {
                break;
            }
            let e = e.remove();
            if self.log.as_ref().is_some_and(|l| l.size() <= seq) {
                // A seq below it is missing or unparsed (reported): no root past it.
                self.log = None;
            }
            self.retired = seq + 1;
            self.retired_hash = e.hash;
        }
        self.roots = self.roots.split_off(&self.retired);
        self.accepted = self.accepted.split_off(&self.retired);
        let before = self.waiting.len();
        self.waiting.retain(|w| !stale(w.head.ms));
        out.unchecked((before - self.waiting.len()) as u64);
    }

    /// Checks the `prev` links into and out of `seq`, whichever neighbours are present.
    fn check_links(&self, seq: u64, out: &mut Out) {
        for s in [seq, seq + 1] {
            let Some(e) = self.entries.get(&s) else {
                continue;
            };
            let want = match s.checked_sub(1) {
                None => Some([0; 32]),
                Some(before) if before + 1 == self.retired => self.retired_hash,
                Some(before) => match self.entries.get(&before) {
                    Some(b) => b.hash,
                    None => continue,
                },
            };
            if let (Some(want), Some(found)) = (want, e.prev) {
                if want != found {
                    out.fail(
                        Check::Chain,
                        format!(
                            "{}: commitment {} seq {s}: expected prev {} (SHA3-256 of seq {}'s message), found {}",
                            e.at,
                            self.name,
                            hex::encode(want),
                            match s {
                                0 => "no commitment: zeros for".to_owned(),
                                _ => (s - 1).to_string(),
                            },
                            hex::encode(found)
                        ),
                    );
                }
            }
        }
    }

    /// Extends the tree over the entries now contiguous from 0 and checks the checkpoints it
    /// now reaches.
    fn grow(&mut self, out: &mut Out) {
        if let Some(log) = &mut self.log {
            while let Some(leaf) = self.entries.get(&log.size()).and_then(|e| e.leaf) {
                log.push(leaf);
                self.roots.insert(log.size(), log.root());
            }
        }
        let len = self.log.as_ref().map_or(0, |l| l.size());
        let (ready, rest): (Vec<Waiting>, Vec<Waiting>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|w| w.head.size <= len);
        self.waiting = rest;
        for w in ready {
            self.check_checkpoint(&w, out);
        }
    }

    /// A checkpoint's root against the log, and so its consistency with the one before: two
    /// roots of one append-only log are consistent (an RFC 9162 consistency proof built from
    /// the same log would prove no more).
    fn check_checkpoint(&self, w: &Waiting, out: &mut Out) {
        let h = &w.head;
        let Some(root) = self.root_at(h.size) else {
            out.unchecked(1); // its size was retired
            return;
        };
        let mut wrong = Vec::new();
        if root != h.root {
            wrong.push(format!(
                "its root {} is not the root {} of {}",
                hex::encode(h.root),
                hex::encode(root),
                h.size
                    .checked_sub(1)
                    .map_or("the empty log".to_owned(), |l| format!(
                        "the log of commitments seq 0..={l}"
                    ))
            ));
        }
        if let Some(p) = &w.prev {
            out.report.consistency_checks += 1;
            // A retired size was checked when it was reached.
            let prev_ok = self.root_at(p.size).is_none_or(|r| r == p.root);
            if root != h.root || !prev_ok {
                wrong.push(format!(
                    "it is not consistent with the earlier checkpoint of size {} ({}): {}",
                    p.size,
                    p.at,
                    if prev_ok {
                        "that one's root is the log's, this one's is not"
                    } else {
                        "that one's root is not the log's"
                    }
                ));
            }
        }
        if !wrong.is_empty() {
            out.fail(
                Check::CheckpointConsistency,
                format!("{}: size {}: {}", h.at, h.size, wrong.join("; ")),
            );
        }
    }

    /// Reports the missing seqs below `upto` not reported yet; notes once that the log does
    /// not start at 0.
    fn judge_gaps(&mut self, upto: u64, out: &mut Out) {
        if upto <= self.gaps_judged {
            return;
        }
        let first = self.entries.first_key_value().map(|(s, _)| *s);
        if let Some(f) = first.filter(|f| *f > 0 && !self.start_noted) {
            self.start_noted = true;
            out.note(format!(
                "{}: the log starts at seq {f}: commitments seq 0..={} were not seen (a topic's retention removes the oldest; otherwise they were deleted), so no checkpoint's root can be checked",
                self.name,
                f - 1
            ));
        }
        // Missing below the first seen is the note above, unless nothing was seen at all.
        let from = self.gaps_judged.max(first.unwrap_or(0));
        let head_size = self.head.as_ref().map_or(0, |h| h.size);
        for (a, b) in missing(&self.entries, from, upto) {
            let why = if b >= self.entries.last_key_value().map_or(0, |(s, _)| *s) {
                format!("a signed checkpoint of size {head_size} covers them")
            } else {
                "later commitments of this chain are present".to_owned()
            };
            out.fail(
                Check::Gap,
                format!(
                    "{}: commitments seq {a}..={b} ({}) are missing: {why}",
                    self.name,
                    b - a + 1
                ),
            );
        }
        self.gaps_judged = upto;
    }

    /// Notes each checkpoint the log never reached.
    fn note_waiting(&self, out: &mut Out) {
        for w in &self.waiting {
            let gaps: Vec<String> = missing(&self.entries, 0, w.head.size)
                .into_iter()
                .map(|(a, b)| format!("{a}..={b}"))
                .collect();
            let why = if gaps.is_empty() {
                format!(
                    "commitment seq {} does not parse",
                    self.log.as_ref().map_or(0, |l| l.size())
                )
            } else {
                format!("commitments seq {} are missing", gaps.join(", "))
            };
            out.note(format!(
                "{}: size {} cannot be checked against the log: {why}",
                w.head.at, w.head.size
            ));
        }
    }
}

/// True if shard `shard`'s commitment `seq` may have been judged and dropped (a batch's key
/// names no run: any log of the shard counts).
fn is_retired(logs: &BTreeMap<(String, u32), ShardLog>, shard: u32, seq: u64) -> bool {
    logs.iter().any(|((_, s), log)| *s == shard && seq < log.retired)
}

/// The ranges of seqs in `from..to` that `entries` lacks, inclusive.
fn missing(entries: &BTreeMap<u64, Entry>, from: u64, to: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut next = from;
    for s in entries.range(from..to).map(|(s, _)| *s) {
        if s > next {
            out.push((next, s - 1));
        }
        next = s + 1;
    }
    if next < to {
        out.push((next, to - 1));
    }
    out
}

fn hex32(s: &str) -> Option<Hash> {
    let mut h = [0u8; 32];
    hex::decode_to_slice(s, &mut h).ok()?;
    Some(h)
}

/// The files `bizra verify` reads.
pub struct Files<'a> {
    pub verdicts: Option<&'a Path>,
    pub commitments: &'a Path,
    pub rollbacks: Option<&'a Path>,
    pub checkpoints: Option<&'a Path>,
}

/// Audits a complete history in files: commitments signed by `pk`, and the checkpoints of
/// `deployment`'s logs (with them, every commitment must be covered).
pub fn verify_files(files: &Files, pk: &VerifyingKey, deployment: &str) -> anyhow::Result<Report> {
    let cfg = AuditConfig {
        deployment: deployment.to_owned(),
        coverage: files.checkpoints.is_some(),
        grace_ms: None,
        retain_ms: None,
    };
    let mut a = Auditor::new(pk, cfg, None);
    each_line(
        files.commitments,
        "commitments",
        |seen, line| match serde_json::from_str::<Commitment>(line) {
            Ok(c) => a.commitment(&seen, &c),
            Err(e) => a.malformed(&seen, "commitment", &e),
        },
    )?;
    if let Some(p) = files.checkpoints {
        each_line(p, "checkpoints", |seen, line| {
            match serde_json::from_str::<CheckpointRecord>(line) {
                Ok(c) => a.checkpoint(&seen, &c),
                Err(e) => a.malformed(&seen, "checkpoint", &e),
            }
        })?;
    }
    if let Some(p) = files.verdicts {
        each_line(p, "verdicts", |seen, line| {
            match serde_json::from_str::<Verdict>(line) {
                Ok(v) => a.verdict(&seen, &v),
                Err(e) => a.malformed(&seen, "verdict", &e),
            }
        })?;
    }
    if let Some(p) = files.rollbacks {
        each_line(p, "rollbacks", |seen, line| {
            match serde_json::from_str::<Rollback>(line) {
                Ok(r) => a.rollback(&seen, &r),
                Err(e) => a.malformed(&seen, "rollback", &e),
            }
        })?;
    }
    Ok(a.finish(0))
}

/// Calls `f` with each non-blank line of `path`, named `kind:<line number>`.
fn each_line(path: &Path, kind: &str, mut f: impl FnMut(Seen, &str)) -> anyhow::Result<()> {
    let file = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("{}: read error", path.display()))?;
        if !line.trim().is_empty() {
            f(Seen::line(kind, i + 1), &line);
        }
    }
    Ok(())
}

/// Writes the failure and note lines taken from `a` as `FAIL …` and `NOTE …`.
pub fn print_lines(
    failures: &[String],
    notes: &[String],
    out: &mut dyn std::io::Write,
) -> std::io::Result<()> {
    for f in failures {
        writeln!(out, "FAIL {f}")?;
    }
    for n in notes {
        writeln!(out, "NOTE {n}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision_log::sign;
    use bizra_dataflows::verification::commitment::Chain;
    use bizra_dataflows::verification::merkle::Tree;
    use ed25519_dalek::SigningKey;
    use serde_json::json;

    const DEPLOYMENT: &str = "audit.example";

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[9; 32])
    }

    /// A verdict of input `offset` whose committed fields are consistent (`permit`).
    fn verdict(id: &str, offset: i64, tier: &str, signature: &str) -> Verdict {
        let oracles = [
            "shapley",
            "prediction_market",
            "reputation",
            "formal_verification",
            "information_theoretic",
        ];
        let signals: Vec<_> = oracles
            .iter()
            .map(|o| json!({"oracle": o, "value": 0.75, "confidence": 0.5}))
            .collect();
        let frameworks: Vec<_> = ["utilitarian", "deontological", "virtue", "care", "ihsan"]
            .iter()
            .map(|f| json!({"framework": f, "score": 0.4, "confidence": 0.7}))
            .collect();
        serde_json::from_value(json!({
            "id": id, "input": {"topic": "in", "partition": 0, "offset": offset},
            "policy_version": "p", "decision": "permit", "permitted": true,
            "convergence": {"clarity": 0.5 + offset as f64 / 1000.0, "mutual_information": 0.3,
                "entropy": 0.5, "synergy": 1.0, "quantization_error": 0.0, "quality": "optimal"},
            "verification": {"tier": tier, "valid": true, "confidence": 1.0,
                "checks": {"digest": "absent", "signature": signature, "replay": false}, "reason": null},
            "value": {"value": 0.75, "confidence": 0.6, "disagreement": 0.1, "signals": signals},
            "ethics": {"overall": 0.4, "severity": "acceptable", "consensus": 0.5, "permitted": true,
                "conditions": [], "frameworks": frameworks},
            "snr": {"score": 1.0, "level": "medium", "ihsan": 0.5, "confidence": 0.8},
            "consistency": 0.8,
            "batch": {"shard": 0, "seq": 0, "leaf_index": 0},
            "proof": null, "latency_ms": 1.0,
            "payload_digest": format!("sha256:{}", hex::encode([offset as u8; 32])),
        }))
        .unwrap()
    }

    fn leaf_of(v: &Verdict) -> Hash {
        v.leaf_fields(&v.payload_sha256().unwrap()).hash()
    }

    /// A deployment's whole history: 2 shards of 6 batches of 3 verdicts (one of them
    /// full-tier, with a proof; shard 0 seq 1 with a rollback too), a checkpoint of each
    /// shard after seq 2 and after seq 5, all signed by `key`.
    struct History {
        commitments: Vec<Commitment>,
        verdicts: Vec<Verdict>,
        rollbacks: Vec<Rollback>,
        checkpoints: Vec<CheckpointRecord>,
    }

    fn history(key: &SigningKey) -> History {
        let mut h = History {
            commitments: Vec::new(),
            verdicts: Vec::new(),
            rollbacks: Vec::new(),
            checkpoints: Vec::new(),
        };
        let mut offset = 0;
        for shard in 0..2u32 {
            let mut chain = Chain::new(deployment_run(DEPLOYMENT), shard);
            for seq in 0..6u64 {
                let mut batch: Vec<Verdict> = (0..3)
                    .map(|i| {
                        offset += 1;
                        let tier = if i == 2 { "full" } else { "statistical" };
                        let sig = if i == 0 { "sampled_out" } else { "absent" };
                        verdict(&format!("s{shard}-{seq}-{i}"), offset, tier, sig)
                    })
                    .collect();
                let mut leaves: Vec<Hash> = batch.iter().map(leaf_of).collect();
                let rollback = (shard, seq) == (0, 1);
                if rollback {
                    let r: Rollback = serde_json::from_value(json!({
                        "id": batch[0].id, "input": batch[0].input, "reason": "signature_bad",
                        "verdict_batch": {"shard": shard, "seq": seq, "leaf_index": 0},
                        "payload_digest": batch[0].payload_digest,
                        "batch": {"shard": shard, "seq": seq, "leaf_index": 3},
                        "proof": null, "at": "2024-01-01T00:00:00Z",
                    }))
                    .unwrap();
                    leaves.push(r.leaf().unwrap());
                    h.rollbacks.push(r);
                }
                let tree = Tree::new(leaves.clone());
                let proof = |i: usize| Proof {
                    tree_size: leaves.len() as u64,
                    root: hex::encode(tree.root()),
                    path: tree.path(i).iter().map(hex::encode).collect(),
                };
                for (i, v) in batch.iter_mut().enumerate() {
                    v.batch = BatchRef {
                        shard,
                        seq,
                        leaf_index: i as u32,
                    };
                    if i == 2 {
                        v.proof = Some(proof(i));
                    }
                }
                if rollback {
                    h.rollbacks.last_mut().unwrap().proof = Some(proof(3));
                }
                let c = chain.seal_tree(seq, &tree, key);
                if seq == 2 || seq == 5 {
                    h.checkpoints
                        .push(sign(DEPLOYMENT, shard, &c.log_frontier().unwrap(), key));
                }
                h.commitments.push(c);
                h.verdicts.append(&mut batch);
            }
        }
        h
    }

    fn config(coverage: bool) -> AuditConfig {
        AuditConfig {
            deployment: DEPLOYMENT.into(),
            coverage,
            grace_ms: None,
            retain_ms: None,
        }
    }

    fn seen(kind: &str, i: usize) -> Seen {
        Seen::line(kind, i + 1)
    }

    /// Feeds `h` in the order the letters of `order` say: c commitments, k checkpoints,
    /// v verdicts, r rollbacks.
    fn audit_in(h: &History, order: &str) -> Report {
        let pk = key().verifying_key();
        let mut a = Auditor::new(&pk, config(true), None);
        for kind in order.chars() {
            match kind {
                'c' => h
                    .commitments
                    .iter()
                    .enumerate()
                    .for_each(|(i, c)| a.commitment(&seen("commitments", i), c)),
                'k' => h
                    .checkpoints
                    .iter()
                    .enumerate()
                    .for_each(|(i, c)| a.checkpoint(&seen("checkpoints", i), c)),
                'v' => h
                    .verdicts
                    .iter()
                    .enumerate()
                    .for_each(|(i, v)| a.verdict(&seen("verdicts", i), v)),
                'r' => h
                    .rollbacks
                    .iter()
                    .enumerate()
                    .for_each(|(i, r)| a.rollback(&seen("rollbacks", i), r)),
                _ => unreachable!(),
            }
        }
        a.finish(0)
    }

    fn audit(h: &History) -> Report {
        audit_in(h, "ckvr")
    }

    fn has(r: &Report, needle: &str) -> bool {
        r.failures.iter().any(|f| f.contains(needle))
    }

    #[test]
    fn a_clean_history_passes_in_any_arrival_order() {
        let mut h = history(&key());
        for order in ["ckvr", "rvkc", "kvcr", "vrck"] {
            let r = audit_in(&h, order);
            assert_eq!(r.failures, Vec::<String>::new(), "{order}");
            assert_eq!(r.notes, Vec::<String>::new(), "{order}");
            assert_eq!(
                (r.verdicts, r.rollbacks, r.commitments, r.checkpoints),
                (36, 1, 12, 4)
            );
            assert_eq!(
                r.proofs_checked,
                12 + 1,
                "each full-tier verdict and the rollback"
            );
            assert_eq!(
                r.consistency_checks, 2,
                "one between the two checkpoints of each shard"
            );
        }
        // Commitments in reverse order, and each record twice (at-least-once delivery).
        h.commitments.reverse();
        let twice: Vec<Commitment> = h
            .commitments
            .iter()
            .flat_map(|c| [c.clone(), c.clone()])
            .collect();
        h.commitments = twice;
        h.checkpoints.extend(h.checkpoints.clone());
        h.verdicts.extend(h.verdicts.clone());
        let r = audit(&h);
        assert_eq!((r.failed, r.superseded, r.forks), (0, 0, 0), "{:?}", r.failures);
        assert!(r.summary().ends_with(" 0 failures"), "{}", r.summary());
    }

    #[test]
    fn a_deleted_commitment_is_a_gap_and_its_verdicts_are_uncommitted() {
        let mut h = history(&key());
        h.commitments.remove(2); // shard 0 seq 2
        let r = audit(&h);
        assert_eq!(r.gaps, 1, "{:?}", r.failures);
        assert!(
            has(&r, "shard 0: commitments seq 2..=2 (1) are missing"),
            "{:?}",
            r.failures
        );
        assert_eq!(r.uncommitted, 3, "the batch's three verdicts");
        assert!(has(&r, "(id \"s0-2-1\"): no commitment for shard 0 seq 2"));
        // The checkpoint of size 3 cannot be checked without seq 2, nor the proof to size 6.
        assert_eq!(r.consistency_checks, 1);
        assert!(
            r.notes
                .iter()
                .any(|n| n.contains("cannot be checked against the log: commitments seq 2..=2 are missing")),
            "{:?}",
            r.notes
        );
        assert_eq!(r.failed, 4);
    }

    #[test]
    fn truncated_last_batches_are_missing_under_a_checkpoint_or_uncovered_without_one() {
        // The last two commitments of shard 1 cut: its checkpoint of size 6 names them.
        let mut h = history(&key());
        h.commitments.truncate(10);
        h.verdicts.truncate(30);
        let r = audit(&h);
        assert_eq!((r.gaps, r.failed), (1, 1), "{:?}", r.failures);
        assert!(has(
            &r,
            "shard 1: commitments seq 4..=5 (2) are missing: a signed checkpoint of size 6 covers them"
        ));

        // Cut the last checkpoint as well: seq 3 of shard 1 is covered by none.
        h.checkpoints.pop();
        let r = audit(&h);
        assert_eq!((r.gaps, r.uncovered, r.failed), (0, 1, 1), "{:?}", r.failures);
        assert!(has(&r, "shard 1: 1 commitments, seq 3..=3, are not covered by a signed checkpoint (the latest checkpoint, checkpoints:3 (shard 1), is of size 3)"));

        // Without checkpoints to audit, the same history passes: nothing shows the cut.
        let pk = key().verifying_key();
        let mut a = Auditor::new(&pk, config(false), None);
        h.commitments
            .iter()
            .for_each(|c| a.commitment(&seen("commitments", 0), c));
        h.verdicts.iter().for_each(|v| a.verdict(&seen("verdicts", 0), v));
        assert_eq!(a.finish(0).failed, 0);
    }

    #[test]
    fn a_log_that_starts_late_is_noted_and_a_broken_prev_link_fails() {
        // Retention dropped shard 1's first two commitments: a note, and its checkpoints
        // cannot be checked; nothing fails.
        let mut h = history(&key());
        h.commitments.drain(6..8);
        h.verdicts.retain(|v| v.batch.shard == 0);
        let r = audit(&h);
        assert_eq!(r.failures, Vec::<String>::new());
        assert!(
            r.notes
                .iter()
                .any(|n| n.contains("shard 1: the log starts at seq 2: commitments seq 0..=1 were not seen")),
            "{:?}",
            r.notes
        );
        assert_eq!(
            r.notes.len(),
            3,
            "the note and one per checkpoint of shard 1: {:?}",
            r.notes
        );

        // A prev that does not hash the previous message, in whichever order they arrive.
        for order in ["ckvr", "vrkc"] {
            let mut h = history(&key());
            h.commitments[4].prev = hex::encode([7u8; 32]);
            if order == "vrkc" {
                h.commitments.reverse();
            }
            let r = audit_in(&h, order);
            assert!(has(&r, "shard 0 seq 4: expected prev "), "{:?}", r.failures);
            assert!(has(&r, "found one that does not verify"), "{:?}", r.failures);
        }
    }

    #[test]
    fn a_forked_shard_is_reported_once_and_the_first_commitment_stays_the_log() {
        let k = key();
        let mut h = history(&k);
        // Re-seal shard 1 seq 3 with other leaves after seq 2, with the node key.
        let mut chain = Chain::new(deployment_run(DEPLOYMENT), 1);
        for c in &h.commitments[6..9] {
            let leaves: Vec<Hash> = c.leaves.iter().map(|l| hex32(l).unwrap()).collect();
            chain.seal(c.seq, &leaves, &k);
        }
        let fork = chain.seal(3, &[merkle::leaf_hash(b"other")], &k);
        h.commitments.insert(10, fork.clone());
        h.commitments.push(fork);
        let r = audit(&h);
        assert_eq!((r.forks, r.failed), (1, 1), "{:?}", r.failures);
        assert!(has(
            &r,
            "shard 1 seq 3: a fork: a second commitment with different content (the first is commitments:10)"
        ));
        assert_eq!(
            r.consistency_checks, 2,
            "the checkpoints verify against the first log"
        );
    }

    #[test]
    fn an_edited_verdict_fails_by_its_decision_or_its_leaf() {
        let mut h = history(&key());
        h.verdicts[4].decision = Decision::Deny;
        h.verdicts[7].value.value = 0.123;
        let r = audit(&h);
        assert!(has(&r, "verdicts:5 (id \"s0-1-1\"): decision \"deny\" does not follow from the committed fields (permitted true, severity acceptable): expected \"permit\""), "{:?}", r.failures);
        assert!(has(
            &r,
            "verdicts:8 (id \"s0-2-1\"): leaf 1 of shard 0 seq 2 does not match the verdict's fields"
        ));
        assert_eq!((r.uncommitted, r.failed), (1, 2));

        // A full-tier verdict whose proof is for another leaf.
        let mut h = history(&key());
        let other = h.verdicts[5].proof.clone();
        h.verdicts[2].proof = other;
        let r = audit(&h);
        assert!(
            has(&r, "verdicts:3 (id \"s0-0-2\"): inclusion proof does not verify"),
            "{:?}",
            r.failures
        );
        assert_eq!(r.failed, 1);
    }

    #[test]
    fn commitments_and_checkpoints_signed_by_another_key_fail() {
        let other = SigningKey::from_bytes(&[10; 32]);
        let r = audit(&history(&other));
        let by = |check: &str| r.failures.iter().filter(|f| f.contains(check)).count();
        assert_eq!(by("expected key_id"), 12, "{:?}", r.failures);
        assert_eq!(by("found one that does not verify"), 12);
        assert_eq!(by("not a checkpoint of audit.example/bizra/shard/"), 4);
        // No checkpoint the node signed covers any commitment.
        assert_eq!(r.uncovered, 12);
        assert_eq!(r.failed, 12 + 12 + 4 + 2);
    }

    #[test]
    fn checkpoints_inconsistent_with_earlier_ones_or_with_the_log_fail() {
        let k = key();
        let mut h = history(&k);
        // A checkpoint of shard 0 at size 4 over another log, signed by the node key.
        let mut other = Chain::new(deployment_run(DEPLOYMENT), 0);
        let mut log = None;
        for seq in 0..4 {
            log = other
                .seal(seq, &[merkle::leaf_hash(&[seq as u8])], &k)
                .log_frontier();
        }
        let forged = sign(DEPLOYMENT, 0, &log.unwrap(), &k);
        h.checkpoints.insert(1, forged.clone());
        let r = audit(&h);
        assert_eq!(r.inconsistent_checkpoints, 2, "{:?}", r.failures);
        assert!(has(&r, "checkpoints:2 (shard 0): size 4: its root"));
        assert!(has(&r, "checkpoints:2 (shard 0): size 4: its root") && has(&r, "is not the root"));
        assert!(has(&r, "checkpoints:3 (shard 0): size 6: it is not consistent with the earlier checkpoint of size 4 (checkpoints:2 (shard 0))"));

        // A smaller one after a larger one (a redelivered one is fine), and a second root
        // for one size.
        let mut h = history(&k);
        let real = sign(DEPLOYMENT, 0, &h.commitments[3].log_frontier().unwrap(), &k);
        h.checkpoints.push(h.checkpoints[0].clone());
        h.checkpoints.push(real.clone());
        let r = audit(&h);
        assert_eq!(r.failures, vec!["checkpoints:6 (shard 0): size 4 after a checkpoint of size 6 (checkpoints:2 (shard 0)): a log only grows".to_owned()]);
        let mut h = history(&k);
        h.checkpoints.insert(1, forged);
        h.checkpoints.push(real);
        let r = audit(&h);
        assert!(
            has(&r, "checkpoints:6 (shard 0): size 4 with root"),
            "{:?}",
            r.failures
        );
        let mut h = history(&k);
        h.checkpoints[1].tree_size = 5;
        assert!(has(
            &audit(&h),
            "expected the record's tree_size to be the signed size 6, found 5"
        ));
    }

    #[test]
    fn a_superseded_duplicate_is_not_a_failure_but_another_input_is() {
        let mut h = history(&key());
        // A copy of a committed verdict from a batch whose commitment was lost (seq 9).
        let mut lost = h.verdicts[4].clone();
        lost.batch.seq = 9;
        h.verdicts.push(lost.clone());
        let r = audit(&h);
        assert_eq!((r.superseded, r.failed), (1, 0), "{:?}", r.failures);

        // The same leaf from another input is no copy of it.
        lost.input.as_mut().unwrap().offset = 999;
        h.verdicts.push(lost);
        let r = audit(&h);
        assert_eq!(
            (r.superseded, r.uncommitted, r.failed),
            (1, 1, 1),
            "{:?}",
            r.failures
        );
        assert!(has(
            &r,
            "no commitment for shard 0 seq 9, and no committed copy of it"
        ));
    }

    #[test]
    fn a_rollback_naming_the_wrong_verdict_fails() {
        let mut h = history(&key());
        h.verdicts[3].verification.checks.signature = SignatureCheck::Ok;
        let r = audit(&h);
        assert!(
            has(
                &r,
                "rollbacks:1 (id \"s0-1-0\"): names a verdict whose signature was ok, not sampled_out"
            ),
            "{:?}",
            r.failures
        );
        // The verdict arriving after the rollback is checked the same way.
        let r = audit_in(&h, "ckrv");
        assert_eq!(r.failures.len(), 1, "{:?}", r.failures);
        assert!(has(&r, "names a verdict whose signature was ok, not sampled_out"));
        // A rollback naming another id.
        let mut h = history(&key());
        h.rollbacks[0].verdict_batch.leaf_index = 1;
        let r = audit(&h);
        assert!(
            has(
                &r,
                "names the verdict at shard 0 seq 1 leaf 1, whose id is \"s0-1-1\""
            ),
            "{:?}",
            r.failures
        );
    }

    #[test]
    fn following_judges_only_what_is_older_than_the_grace_period() {
        let h = history(&key());
        let pk = key().verifying_key();
        let registry = Registry::new();
        let metrics = AuditMetrics::register(&registry).unwrap();
        let cfg = AuditConfig {
            grace_ms: Some(1_000),
            ..config(true)
        };
        let mut a = Auditor::new(&pk, cfg, Some(metrics.clone()));
        let at = |ms| Seen { at: "t".into(), ms };
        // Shard 0's commitments and the checkpoint of size 3 arrive at t=0; a verdict of a
        // batch whose commitment never comes at t=0, one at t=5000.
        for c in &h.commitments[..6] {
            a.commitment(&at(0), c);
        }
        a.checkpoint(&at(0), &h.checkpoints[0]);
        let mut orphan = h.verdicts[0].clone();
        orphan.batch.seq = 40;
        orphan.id = "orphan".into();
        a.verdict(&at(0), &orphan);
        a.tick(500);
        assert_eq!(a.report().failed, 0, "all younger than the grace");
        a.tick(1_500);
        let (failures, _) = a.take_lines();
        assert_eq!(failures.len(), 2, "{failures:?}");
        assert!(failures[0].contains("no commitment for shard 0 seq 40"));
        assert!(failures[1].contains("shard 0: 3 commitments, seq 3..=5, are not covered"));
        assert_eq!(metrics.uncovered.get(), 3);
        assert_eq!(metrics.failures.with_label_values(&["uncovered"]).get(), 1);
        assert_eq!(metrics.records.with_label_values(&["commitment"]).get(), 6);
        // Reported once; the gauge drops when a checkpoint covers them.
        a.tick(2_500);
        assert_eq!(a.take_lines().0.len(), 0);
        a.checkpoint(&at(2_600), &h.checkpoints[1]);
        a.tick(2_700);
        assert_eq!(metrics.uncovered.get(), 0);
        // Young at the end: noted, not failed.
        let mut late = h.verdicts[1].clone();
        late.batch.seq = 41;
        a.verdict(&at(5_000), &late);
        let r = a.finish(5_500);
        assert_eq!(
            (r.failed, r.uncommitted, r.uncovered),
            (2, 1, 3),
            "{:?}",
            r.failures
        );
        assert!(
            r.notes
                .iter()
                .any(|n| n.contains("1 verdicts and rollbacks younger than the grace period")),
            "{:?}",
            r.notes
        );
    }

    /// A follower fed 2,000 batches over 200 s (a checkpoint every 10) holds only the last
    /// `retain_ms` of them, and still catches an edited verdict and a fork at the end.
    #[test]
    fn a_follower_retires_what_it_judged_and_stays_bounded() {
        let k = key();
        let pk = k.verifying_key();
        let cfg = AuditConfig {
            grace_ms: Some(1_000),
            retain_ms: Some(5_000),
            ..config(true)
        };
        let mut a = Auditor::new(&pk, cfg, None);
        let at = |ms| Seen { at: "t".into(), ms };
        let mut chain = Chain::new(deployment_run(DEPLOYMENT), 0);
        let mut most = (0, 0, 0, 0, 0);
        let mut last = None;
        let mut first = None;
        for seq in 0..2_000u64 {
            let ms = seq * 100;
            let mut batch: Vec<Verdict> = (0..3)
                .map(|i| {
                    verdict(
                        &format!("v{seq}-{i}"),
                        (seq * 3 + i) as i64,
                        "statistical",
                        "absent",
                    )
                })
                .collect();
            let tree = Tree::new(batch.iter().map(leaf_of).collect());
            for (i, v) in batch.iter_mut().enumerate() {
                v.batch = BatchRef {
                    shard: 0,
                    seq,
                    leaf_index: i as u32,
                };
                a.verdict(&at(ms), v);
            }
            let c = chain.seal_tree(seq, &tree, &k);
            a.commitment(&at(ms), &c);
            first.get_or_insert_with(|| c.clone());
            if seq % 10 == 9 {
                a.checkpoint(&at(ms), &sign(DEPLOYMENT, 0, &c.log_frontier().unwrap(), &k));
                a.tick(ms);
                let log = &a.logs.values().next().unwrap();
                let now = (
                    a.batches.len(),
                    a.committed.len(),
                    a.named.len(),
                    log.entries.len(),
                    log.roots.len(),
                );
                most = most.max(now);
            }
            last = Some((c, batch));
        }
        // 5 s of batches at 10 per second, plus what waits for the next tick and checkpoint.
        assert!(most.0 <= 80 && most.3 <= 80 && most.4 <= 80, "{most:?}");
        assert!(most.1 <= 240 && most.2 <= 240, "{most:?}");
        assert_eq!(a.report().failed, 0, "{:?}", a.report().failures);
        assert_eq!(a.report().consistency_checks, 199);
        assert_eq!(a.report().unchecked, 0);
        // Late in the stream: an edited verdict of the newest batch, and a fork of it.
        let (c, batch) = last.unwrap();
        let mut edited = batch[1].clone();
        edited.ethics.overall = 0.9;
        a.verdict(&at(199_950), &edited);
        let mut fork = c.clone();
        fork.tree_size += 1;
        a.commitment(&at(199_950), &fork);
        // A copy of a commitment retired long ago cannot be told from a fork: unchecked.
        a.commitment(&at(199_950), &first.unwrap());
        a.tick(199_960);
        assert!(a
            .take_lines()
            .1
            .iter()
            .any(|n| n.contains("1 records arrived after")));
        let r = a.finish(300_000);
        assert_eq!(r.forks, 1, "{:?}", r.failures);
        assert_eq!(r.uncommitted, 1, "{:?}", r.failures);
        assert_eq!(r.unchecked, 1);
    }
}
