//! `bizra verify`: checks a verdict file (and a rollback file) against a commitment file and
//! a public key, the way an independent auditor would: commitment signatures and chains,
//! each verdict's and rollback's leaf rebuilt from its own fields, full-tier and rollback
//! inclusion proofs, and that each rollback names a `sampled_out` verdict of its own batch.
//! Reports every failure.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use anyhow::Context;
use bizra_dataflows::rollback::Rollback;
use bizra_dataflows::verdict::{Proof, Verdict};
use bizra_dataflows::verification::commitment::{verify_commitments, Commitment};
use bizra_dataflows::verification::merkle::{verify_path, Hash};
use bizra_dataflows::verification::{BatchRef, SignatureCheck, Tier};
use ed25519_dalek::VerifyingKey;

/// What `bizra verify` found.
#[derive(Debug, Default)]
pub struct Report {
    pub verdicts: u64,
    pub rollbacks: u64,
    pub commitments: u64,
    pub proofs_checked: u64,
    pub failures: Vec<String>,
}

fn read_jsonl<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<Vec<(usize, T)>> {
    let f = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in BufReader::new(f).lines().enumerate() {
        let line = line.with_context(|| format!("{}: read error", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let v = serde_json::from_str(&line)
            .with_context(|| format!("{}:{}: not a valid record", path.display(), i + 1))?;
        out.push((i + 1, v));
    }
    Ok(out)
}

fn hex32(s: &str) -> Option<Hash> {
    let mut h = [0u8; 32];
    hex::decode_to_slice(s, &mut h).ok()?;
    Some(h)
}

/// Verifies `verdicts` (and `rollbacks`, if given) against `commitments` signed by `pk`.
pub fn verify_files(
    verdicts: &Path,
    commitments: &Path,
    rollbacks: Option<&Path>,
    pk: &VerifyingKey,
) -> anyhow::Result<Report> {
    let commits: Vec<(usize, Commitment)> = read_jsonl(commitments)?;
    let verdicts: Vec<(usize, Verdict)> = read_jsonl(verdicts)?;
    let rollbacks: Vec<(usize, Rollback)> = match rollbacks {
        Some(p) => read_jsonl(p)?,
        None => Vec::new(),
    };
    let mut report = Report {
        commitments: commits.len() as u64,
        verdicts: verdicts.len() as u64,
        rollbacks: rollbacks.len() as u64,
        ..Report::default()
    };
    let list: Vec<Commitment> = commits.iter().map(|(_, c)| c.clone()).collect();
    report.failures.extend(
        verify_commitments(&list, pk)
            .into_iter()
            .map(|p| format!("commitment: {p}")),
    );

    // Batches are identified by (shard, seq); a run restarts seqs, so keep every run's.
    let mut by_batch: HashMap<(u32, u64), Vec<&Commitment>> = HashMap::new();
    for c in &list {
        by_batch.entry((c.shard, c.seq)).or_default().push(c);
    }
    let mut leaves = Leaves {
        by_batch,
        report: &mut report,
    };
    // The verdicts a rollback may name: (shard, seq, leaf) → (id, signature check).
    let mut named: HashMap<(u32, u64, u32), (&str, SignatureCheck)> = HashMap::new();
    for (line, v) in &verdicts {
        let at = format!("verdicts:{line} (id {:?})", v.id);
        named.insert(
            (v.batch.shard, v.batch.seq, v.batch.leaf_index),
            (v.id.as_str(), v.verification.checks.signature),
        );
        let Some(payload) = v.payload_sha256() else {
            leaves.fail(format!("{at}: payload_digest is not sha256:<64 hex>"));
            continue;
        };
        let leaf = v.leaf_fields(&payload).hash();
        let needs_proof = v.verification.tier == Tier::Full;
        leaves.check(
            &at,
            v.batch,
            &leaf,
            v.proof.as_ref(),
            needs_proof,
            "the verdict's fields",
        );
    }
    for (line, r) in &rollbacks {
        let at = format!("rollbacks:{line} (id {:?})", r.id);
        let Some(leaf) = r.leaf() else {
            leaves.fail(format!("{at}: payload_digest is not sha256:<64 hex>"));
            continue;
        };
        leaves.check(
            &at,
            r.batch,
            &leaf,
            r.proof.as_ref(),
            true,
            "the rollback's fields",
        );
        if r.batch.shard != r.verdict_batch.shard || r.batch.seq != r.verdict_batch.seq {
            leaves.fail(format!(
                "{at}: a rollback's leaf is in the batch of the verdict it names"
            ));
        }
        let key = (
            r.verdict_batch.shard,
            r.verdict_batch.seq,
            r.verdict_batch.leaf_index,
        );
        match named.get(&key) {
            Some((id, _)) if *id != r.id.as_str() => leaves.fail(format!(
                "{at}: names the verdict at shard {} seq {} leaf {}, whose id is {id:?}",
                key.0, key.1, key.2
            )),
            Some((_, check)) if *check != SignatureCheck::SampledOut => leaves.fail(format!(
                "{at}: names a verdict whose signature was {}, not sampled_out",
                check.as_str()
            )),
            _ => {}
        }
    }
    Ok(report)
}

/// Checks leaves against the commitments, collecting failures into the report.
struct Leaves<'a, 'r> {
    by_batch: HashMap<(u32, u64), Vec<&'a Commitment>>,
    report: &'r mut Report,
}

impl Leaves<'_, '_> {
    fn fail(&mut self, f: String) {
        self.report.failures.push(f);
    }

    /// `leaf` at `batch` is in a commitment of that batch and, if a `proof` is given (or
    /// `needs_proof`), its inclusion proof verifies against that commitment's root.
    fn check(
        &mut self,
        at: &str,
        batch: BatchRef,
        leaf: &Hash,
        proof: Option<&Proof>,
        needs_proof: bool,
        what: &str,
    ) {
        let Some(candidates) = self.by_batch.get(&(batch.shard, batch.seq)) else {
            self.fail(format!(
                "{at}: no commitment for shard {} seq {}",
                batch.shard, batch.seq
            ));
            return;
        };
        let idx = batch.leaf_index as usize;
        let hexleaf = hex::encode(leaf);
        let Some(c) = candidates.iter().find(|c| c.leaves.get(idx) == Some(&hexleaf)) else {
            self.fail(format!(
                "{at}: leaf {idx} of shard {} seq {} does not match {what}",
                batch.shard, batch.seq
            ));
            return;
        };
        let (root, tree_size) = (c.root.clone(), c.tree_size);
        match proof {
            Some(proof) => {
                self.report.proofs_checked += 1;
                let path: Option<Vec<Hash>> = proof.path.iter().map(|h| hex32(h)).collect();
                let ok = match (path, hex32(&proof.root)) {
                    (Some(path), Some(r)) => {
                        proof.root == root
                            && proof.tree_size == tree_size
                            && verify_path(leaf, idx as u64, proof.tree_size, &path, &r)
                    }
                    _ => false,
                };
                if !ok {
                    self.fail(format!(
                        "{at}: inclusion proof does not verify against commitment root {root}"
                    ));
                }
            }
            None if needs_proof => self.fail(format!("{at}: no inclusion proof")),
            None => {}
        }
    }
}
