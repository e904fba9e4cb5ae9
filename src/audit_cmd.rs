//! `bizra audit`: reads the episodic archive under `--data-dir` — `get` prints the stored
//! episodes holding an observation id, `verify` replays every shard's chain and names the
//! first break, `similar` finds the records whose features are nearest to a record's — and
//! proves things about the decision log: `prove` prints an inclusion proof of a commitment
//! in a checkpoint's tree, or a consistency proof between two checkpoints. It only reads.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;

use bizra_dataflows::verification::commitment::Commitment;
use bizra_dataflows::verification::merkle;
use bizra_dataflows::verification::tlog::LogTree;

use crate::archive::{self, Stored};
use crate::recall::{similar, SimilarParams};

/// The archive directory under a data dir.
pub fn archive_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("archive")
}

fn existing(data_dir: &Path) -> anyhow::Result<PathBuf> {
    let dir = archive_dir(data_dir);
    anyhow::ensure!(
        dir.is_dir(),
        "--data-dir {}: expected an archive in {}, found none (write one with `bizra run --data-dir`)",
        data_dir.display(),
        dir.display()
    );
    Ok(dir)
}

/// Where a stored episode is, as printed.
#[derive(Serialize)]
struct Found<'a> {
    file: String,
    entry: u64,
    shard: u32,
    index: u64,
    written_ms: u64,
    episode: &'a bizra_dataflows::episode::Episode,
}

impl<'a> From<&'a Stored> for Found<'a> {
    fn from(s: &'a Stored) -> Found<'a> {
        Found {
            file: s.path.display().to_string(),
            entry: s.entry,
            shard: s.shard,
            index: s.index,
            written_ms: s.written_ms,
            episode: &s.episode,
        }
    }
}

/// Prints every stored episode holding `id` (JSON lines, oldest first); false if none.
pub fn get(data_dir: &Path, id: &str, out: &mut impl Write) -> anyhow::Result<bool> {
    let found = archive::find(&existing(data_dir)?, id)?;
    for s in &found {
        serde_json::to_writer(&mut *out, &Found::from(s))?;
        writeln!(out)?;
    }
    Ok(!found.is_empty())
}

/// Replays every chain and prints the report; true if nothing is broken.
pub fn verify(data_dir: &Path, out: &mut impl Write) -> anyhow::Result<bool> {
    let report = archive::verify(&existing(data_dir)?)?;
    write!(out, "{report}")?;
    Ok(report.is_ok())
}

/// One neighbour, as printed.
#[derive(Serialize)]
struct Neighbour {
    id: String,
    distance: f32,
    file: String,
    shard: u32,
    index: u64,
}

/// Prints the `k` records nearest to record `id` by features (JSON lines, nearest first),
/// searching the last `max_points` records with features in archive order (shard by shard,
/// oldest first within a shard).
pub fn similar_to(
    data_dir: &Path,
    id: &str,
    k: usize,
    max_points: usize,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let dir = existing(data_dir)?;
    // Streamed, so memory stays at the index's bound however large the archive; a read error
    // ends the stream and is reported after the search.
    let mut failed = None;
    let records = archive::episodes(&dir)?
        .map_while(|r| r.map_err(|e| failed = Some(e)).ok())
        .flat_map(|s| {
            let at = (s.path.display().to_string(), s.shard, s.index);
            s.episode.records.into_iter().map(move |r| (at.clone(), r))
        });
    let params = SimilarParams {
        k,
        max_points,
        ..SimilarParams::default()
    };
    let matches = similar(records, id, &params);
    if let Some(e) = failed {
        return Err(e).context("reading the archive");
    }
    let matches = matches.with_context(|| format!("similar to {id}"))?;
    for m in matches {
        let (file, shard, index) = m.at;
        let n = Neighbour {
            id: m.id,
            distance: m.distance,
            file,
            shard,
            index,
        };
        serde_json::to_writer(&mut *out, &n)?;
        writeln!(out)?;
    }
    Ok(())
}

/// One shard's decision log (SPEC §3.4) read back from a commitments file: leaf `i` is the
/// §3.3 message of commitment `seq = i` of deployment `run`. Exact duplicates (at-least-once
/// delivery) are dropped; a gap or a fork is an error naming the seq, since no proof over
/// such a log could be trusted.
pub fn shard_log(commitments: &Path, run: &str, shard: u32) -> anyhow::Result<LogTree> {
    let f = std::fs::File::open(commitments)
        .with_context(|| format!("{}: cannot open", commitments.display()))?;
    let mut by_seq: std::collections::BTreeMap<u64, Commitment> = Default::default();
    for (i, line) in std::io::BufRead::lines(std::io::BufReader::new(f)).enumerate() {
        let line = line.with_context(|| format!("{}: read error", commitments.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let c: Commitment = serde_json::from_str(&line)
            .with_context(|| format!("{}:{}: not a commitment", commitments.display(), i + 1))?;
        if c.run != run || c.shard != shard {
            continue;
        }
        match by_seq.get(&c.seq) {
            Some(seen) if *seen != c => anyhow::bail!(
                "{}:{}: shard {shard} seq {} has two different commitments (a fork)",
                commitments.display(),
                i + 1,
                c.seq
            ),
            Some(_) => {}
            None => {
                by_seq.insert(c.seq, c);
            }
        }
    }
    let mut log = LogTree::new();
    for (seq, c) in by_seq {
        anyhow::ensure!(
            seq == log.len(),
            "{}: shard {shard}: expected seq {}, found {seq} (a gap)",
            commitments.display(),
            log.len()
        );
        let msg = c
            .message()
            .with_context(|| format!("shard {shard} seq {seq}: a field does not parse"))?;
        log.push(merkle::leaf_hash(&msg));
    }
    Ok(log)
}

/// What `bizra audit prove` asks for.
pub enum ProofRequest {
    /// Commitment `seq = index` is in the log of size `size`.
    Inclusion { index: u64, size: u64 },
    /// The log of size `old` is a prefix of the log of size `size`.
    Consistency { old: u64, size: u64 },
}

/// A proof, as printed (hex hashes; verify with RFC 9162 §2.1.3.2 / §2.1.4.2).
#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum Printed {
    Inclusion {
        shard: u32,
        index: u64,
        tree_size: u64,
        leaf_hash: String,
        root: String,
        proof: Vec<String>,
    },
    Consistency {
        shard: u32,
        old_size: u64,
        new_size: u64,
        old_root: String,
        new_root: String,
        proof: Vec<String>,
    },
}

/// Prints the proof asked for over `log` (one JSON line).
pub fn prove(log: &LogTree, shard: u32, req: ProofRequest, out: &mut impl Write) -> anyhow::Result<()> {
    let hexes = |v: Vec<merkle::Hash>| v.iter().map(hex::encode).collect::<Vec<_>>();
    let printed = match req {
        ProofRequest::Inclusion { index, size } => Printed::Inclusion {
            shard,
            index,
            tree_size: size,
            leaf_hash: hex::encode(log.leaf(index).with_context(|| {
                format!(
                    "shard {shard}: no commitment seq {index} (the log has {})",
                    log.len()
                )
            })?),
            root: hex::encode(log.root_at(size)?),
            proof: hexes(log.inclusion_proof(index, size)?),
        },
        ProofRequest::Consistency { old, size } => Printed::Consistency {
            shard,
            old_size: old,
            new_size: size,
            old_root: hex::encode(log.root_at(old)?),
            new_root: hex::encode(log.root_at(size)?),
            proof: hexes(log.consistency_proof(old, size)?),
        },
    };
    serde_json::to_writer(&mut *out, &printed)?;
    writeln!(out)?;
    Ok(())
}
