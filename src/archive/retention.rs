//! Retention: deletes a shard's oldest whole segments when the archive's segment files exceed the
//! size budget or a segment is older than the age limit, after writing the shard's checkpoint so
//! the chain stays verifiable from the first segment kept. A shard's newest segment (the one
//! being written) is never deleted. It does not rewrite or merge segments.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::idfilter::sidecar;
use super::segment::{list_segments, list_shards, shard_dir, write_checkpoint, Checkpoint, SegmentReader};
use super::ArchiveError;

/// A segment file (with its id filter) as retention sees it.
struct Segment {
    path: PathBuf,
    bytes: u64,
    modified: SystemTime,
}

/// Deletes what exceeds `max_bytes` (all shards together, oldest segment first) and what is
/// older than `max_age` at `now`; returns the number of segments deleted.
pub(crate) fn enforce(
    dir: &Path,
    max_bytes: u64,
    max_age: Duration,
    now: SystemTime,
) -> Result<u64, ArchiveError> {
    let mut shards = Vec::new();
    for shard in list_shards(dir)? {
        let sdir = shard_dir(dir, shard);
        let mut segments = Vec::new();
        for (_, path) in list_segments(&sdir)? {
            let meta = fs::metadata(&path).map_err(ArchiveError::io(&path, "read segment metadata"))?;
            let modified = meta
                .modified()
                .map_err(ArchiveError::io(&path, "read segment mtime"))?;
            // A segment's id filter counts towards the budget with it.
            let filter = fs::metadata(sidecar(&path)).map_or(0, |m| m.len());
            segments.push(Segment {
                path,
                bytes: meta.len() + filter,
                modified,
            });
        }
        shards.push((sdir, segments));
    }
    let cuts = choose(&shards, max_bytes, now.checked_sub(max_age));
    let mut deleted = 0;
    for ((sdir, segments), cut) in shards.iter().zip(cuts) {
        deleted += delete_prefix(sdir, segments, cut)?;
    }
    Ok(deleted)
}

/// How many leading segments of each shard to delete: those modified before `cutoff`, then the
/// oldest remaining ones across shards until the total fits `max_bytes`; never a shard's last.
fn choose(shards: &[(PathBuf, Vec<Segment>)], max_bytes: u64, cutoff: Option<SystemTime>) -> Vec<usize> {
    let deletable = |segments: &[Segment]| segments.len().saturating_sub(1);
    let mut cuts: Vec<usize> = shards
        .iter()
        .map(|(_, segs)| {
            let old = |s: &&Segment| cutoff.is_some_and(|c| s.modified < c);
            segs[..deletable(segs)].iter().take_while(old).count()
        })
        .collect();
    let mut total: u64 = shards
        .iter()
        .zip(&cuts)
        .flat_map(|((_, segs), &cut)| &segs[cut..])
        .map(|s| s.bytes)
        .sum();
    while total > max_bytes {
        let oldest = (0..shards.len())
            .filter(|&i| cuts[i] < deletable(&shards[i].1))
            .min_by_key(|&i| shards[i].1[cuts[i]].modified);
        let Some(i) = oldest else { break };
        total -= shards[i].1[cuts[i]].bytes;
        cuts[i] += 1;
    }
    cuts
}

/// Writes the checkpoint at the first segment kept, then deletes the `cut` segments before it.
/// If the first segment kept has no complete episode yet, it keeps one more.
fn delete_prefix(sdir: &Path, segments: &[Segment], mut cut: usize) -> Result<u64, ArchiveError> {
    while cut > 0 {
        let first = SegmentReader::open(&segments[cut].path)?
            .next_entry()
            .transpose()?;
        if let Some(e) = first {
            let cp = Checkpoint {
                first_index: e.index,
                prev: e.prev,
            };
            write_checkpoint(sdir, &cp)?;
            tracing::info!(shard_dir = %sdir.display(), first_index = e.index, prev = %hex::encode(e.prev), "archive checkpoint");
            break;
        }
        cut -= 1;
    }
    for s in &segments[..cut] {
        fs::remove_file(&s.path).map_err(ArchiveError::io(&s.path, "delete segment"))?;
        // Its id filter, and the temporary file of one cut short by a crash, if any.
        let ids = sidecar(&s.path);
        for path in [ids.with_extension("ids.tmp"), ids] {
            match fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(ArchiveError::io(&path, "delete id filter")(e))
                }
                _ => {}
            }
        }
    }
    Ok(cut as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::segment::{read_checkpoint, segment_path};
    use crate::archive::test_util::{config, episodes, write};
    use crate::archive::{verify, ArchiveConfig};

    #[test]
    fn size_retention_keeps_the_budget_and_the_chain_verifiable_from_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = ArchiveConfig {
            segment_bytes: 1, // one episode per segment
            retention_bytes: 3000,
            ..config(dir.path())
        };
        write(&cfg, episodes(0, 30).into_iter().chain(episodes(1, 30)).collect());
        for shard in [0, 1] {
            let sdir = shard_dir(dir.path(), shard);
            let segments = list_segments(&sdir).unwrap();
            let first = segments[0].0;
            assert!(first > 0 && segments.last().unwrap().0 == 29, "{segments:?}");
            assert_eq!(read_checkpoint(&sdir).unwrap().unwrap().first_index, first);
            // Every deleted segment's id filter went with it; the kept finished ones have theirs.
            let filters: Vec<u64> = (0..30)
                .filter(|&i| sidecar(&segment_path(dir.path(), shard, i)).exists())
                .collect();
            assert_eq!(filters, (first..30).collect::<Vec<_>>(), "shard {shard}");
        }
        let on_disk: u64 = (0..30)
            .flat_map(|i| [segment_path(dir.path(), 0, i), segment_path(dir.path(), 1, i)])
            .flat_map(|p| [sidecar(&p), p])
            .filter_map(|p| fs::metadata(p).ok())
            .map(|m| m.len())
            .sum();
        assert!(on_disk <= 3000, "{on_disk}");
        let report = verify(dir.path()).unwrap();
        assert!(report.is_ok(), "{report}");
        assert!(
            report.shards.iter().all(|s| s.start > 0 && s.next_index == 30),
            "{report}"
        );
    }

    #[test]
    fn age_retention_deletes_all_but_each_shards_newest_segment() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = ArchiveConfig {
            segment_bytes: 1,
            ..config(dir.path())
        };
        write(&cfg, episodes(0, 4).into_iter().chain(episodes(5, 1)).collect());
        let later = SystemTime::now() + Duration::from_secs(3600);
        assert_eq!(
            enforce(dir.path(), u64::MAX, Duration::from_secs(60), later).unwrap(),
            3
        );
        let left = list_segments(&shard_dir(dir.path(), 0)).unwrap();
        assert_eq!(left.iter().map(|s| s.0).collect::<Vec<_>>(), [3]);
        assert_eq!(list_segments(&shard_dir(dir.path(), 5)).unwrap().len(), 1);
        let report = verify(dir.path()).unwrap();
        assert!(report.is_ok() && report.shards[0].start == 3, "{report}");
        assert_eq!(
            enforce(dir.path(), u64::MAX, Duration::from_secs(60), later).unwrap(),
            0
        );
    }
}
