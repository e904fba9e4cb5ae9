//! Test helpers: episodes with real Merkle roots, a fast configuration, and writing through the
//! pool. Test-only.

use std::path::Path;
use std::time::Duration;

use bizra_dataflows::episode::{Episode, EpisodeRecord};
use bizra_dataflows::ethics::Severity;
use bizra_dataflows::verdict::Decision;
use bizra_dataflows::verification::{merkle, Tier};
use sha2::{Digest, Sha256};

use super::{Ack, ArchiveConfig, ArchiveWriter};

/// An episode of `shard`/`seq` with one record per id, whose records rebuild its root.
pub(crate) fn episode(shard: u32, seq: u64, ids: &[&str]) -> Episode {
    let records: Vec<EpisodeRecord> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| EpisodeRecord {
            id: id.to_string(),
            input: None,
            payload_digest: format!("sha256:{}", hex::encode(Sha256::digest(format!("{seq}/{i}")))),
            tier: Tier::Full,
            valid: true,
            severity: Severity::Acceptable,
            permitted: true,
            overall: 0.8 + i as f64 / 1000.0,
            value: 0.5,
            clarity: 0.7,
            decision: Decision::Permit,
            conditions: vec![0],
            leaf_index: i as u32,
            features: Some(vec![0.25, -0.5, i as f32]),
        })
        .collect();
    let leaves: Vec<merkle::Hash> = records.iter().map(|r| r.leaf_hash().unwrap()).collect();
    let ep = Episode {
        shard,
        seq,
        run: "00000000000000ab".into(),
        tree_size: records.len() as u64,
        root: hex::encode(merkle::root(&leaves)),
        conditions: vec!["Note: 1 minor concerns identified".into()],
        records,
        rollbacks: Vec::new(),
    };
    assert!(ep.matches_root());
    ep
}

/// `n` episodes of `shard`, each with ids `{shard}-{seq}-{0..3}`.
pub(crate) fn episodes(shard: u32, n: u64) -> Vec<Episode> {
    (0..n)
        .map(|seq| {
            let ids: Vec<String> = (0..3).map(|i| format!("{shard}-{seq}-{i}")).collect();
            episode(shard, seq, &ids.iter().map(String::as_str).collect::<Vec<_>>())
        })
        .collect()
}

/// A configuration for `dir` with the fastest preset.
pub(crate) fn config(dir: &Path) -> ArchiveConfig {
    ArchiveConfig {
        dir: dir.to_path_buf(),
        preset: 0,
        ..ArchiveConfig::default()
    }
}

/// Writes `episodes` through a pool (ticket = position), waiting while the queue is full;
/// returns the acknowledgements, sorted by ticket.
pub(crate) fn write(cfg: &ArchiveConfig, episodes: Vec<Episode>) -> Vec<Ack> {
    let handle = ArchiveWriter::spawn(cfg.clone()).unwrap();
    let mut acks = Vec::new();
    for (ticket, mut ep) in episodes.into_iter().enumerate() {
        while let Err(back) = handle.try_submit(ep, ticket as u64) {
            ep = back;
            acks.extend(handle.try_acks());
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    acks.extend(handle.close());
    acks.sort_by_key(|a| a.ticket);
    acks
}
