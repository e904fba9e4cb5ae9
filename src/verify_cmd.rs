//! `bizra verify`: checks a verdict file against a commitment file and a public key, the
//! way an independent auditor would: commitment signatures and chains, each verdict's leaf
//! rebuilt from its own fields, and full-tier inclusion proofs. Reports every failure.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use anyhow::Context;
use bizra_dataflows::verdict::Verdict;
use bizra_dataflows::verification::commitment::{verify_commitments, Commitment};
use bizra_dataflows::verification::merkle::{verify_path, Hash};
use ed25519_dalek::VerifyingKey;

/// What `bizra verify` found.
#[derive(Debug, Default)]
pub struct Report {
    pub verdicts: u64,
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

/// Verifies `verdicts` against `commitments` signed by `pk`.
pub fn verify_files(verdicts: &Path, commitments: &Path, pk: &VerifyingKey) -> anyhow::Result<Report> {
    let commits: Vec<(usize, Commitment)> = read_jsonl(commitments)?;
    let verdicts: Vec<(usize, Verdict)> = read_jsonl(verdicts)?;
    let mut report = Report {
        commitments: commits.len() as u64,
        verdicts: verdicts.len() as u64,
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
    for (line, v) in &verdicts {
        let at = format!("{}:{line} (id {:?})", "verdicts", v.id);
        let Some(payload) = v.payload_sha256() else {
            report
                .failures
                .push(format!("{at}: payload_digest is not sha256:<64 hex>"));
            continue;
        };
        let leaf = v.leaf_fields(&payload).hash();
        let Some(candidates) = by_batch.get(&(v.batch.shard, v.batch.seq)) else {
            report.failures.push(format!(
                "{at}: no commitment for shard {} seq {}",
                v.batch.shard, v.batch.seq
            ));
            continue;
        };
        let idx = v.batch.leaf_index as usize;
        let hexleaf = hex::encode(leaf);
        let Some(c) = candidates.iter().find(|c| c.leaves.get(idx) == Some(&hexleaf)) else {
            report.failures.push(format!(
                "{at}: leaf {idx} of shard {} seq {} does not match the verdict's fields",
                v.batch.shard, v.batch.seq
            ));
            continue;
        };
        if let Some(proof) = &v.proof {
            report.proofs_checked += 1;
            let path: Option<Vec<Hash>> = proof.path.iter().map(|h| hex32(h)).collect();
            let ok = match (path, hex32(&proof.root)) {
                (Some(path), Some(root)) => {
                    proof.root == c.root
                        && proof.tree_size == c.tree_size
                        && verify_path(&leaf, idx as u64, proof.tree_size, &path, &root)
                }
                _ => false,
            };
            if !ok {
                report.failures.push(format!(
                    "{at}: inclusion proof does not verify against commitment root {}",
                    c.root
                ));
            }
        } else if v.verification.tier == bizra_dataflows::verification::Tier::Full {
            report
                .failures
                .push(format!("{at}: full-tier verdict has no proof"));
        }
    }
    Ok(report)
}
