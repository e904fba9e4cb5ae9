//! `bizra audit`: reads the episodic archive under `--data-dir` — `get` prints the stored
//! episodes holding an observation id, `verify` replays every shard's chain and names the
//! first break, `similar` finds the records whose features are nearest to a record's. It
//! only reads; the archive is written by `bizra run --data-dir`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;

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
