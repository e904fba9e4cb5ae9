//! Reading the archive: an iterator over every stored episode (shard by shard, in chain order)
//! and the lookup of an observation id, which reads only the segments whose id filter may
//! hold it (`idfilter.rs`). Neither checks the chain; that is `verify`'s job. A torn tail ends
//! its segment silently.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use bizra_dataflows::episode::{Digest64, Episode};

use super::idfilter::{id_key, IdFilter};
use super::progress::Progress;
use super::segment::{list_segments, list_shards, shard_dir, SegmentEnd, SegmentReader};
use super::ArchiveError;

/// An episode as stored, with where it is.
#[derive(Clone, Debug, PartialEq)]
pub struct Stored {
    pub shard: u32,
    /// Position in the shard's chain.
    pub index: u64,
    /// The segment file and the 1-based entry in its decompressed content.
    pub path: PathBuf,
    pub entry: u64,
    /// When the writer stored it (not covered by the chain).
    pub written_ms: u64,
    /// The chain root after this episode.
    pub root: Digest64,
    pub episode: Episode,
}

/// Every stored episode of the archive at `dir`: shards ascending, then segments and entries in
/// order. A segment that does not decode yields its error and the iterator goes on with the next
/// one; a malformed entry yields its error and the rest of its segment is still read, unless
/// the entry's framing is what is broken (the stream ends inside it, or its length is out of
/// bounds): then nothing after it can be found and the iterator goes on with the next segment.
pub fn episodes(dir: &Path) -> Result<Episodes, ArchiveError> {
    Ok(Episodes::over(segments(dir)?))
}

/// Every segment of the archive at `dir` with its shard, in reading order.
fn segments(dir: &Path) -> Result<VecDeque<(u32, PathBuf)>, ArchiveError> {
    let mut segments = VecDeque::new();
    for shard in list_shards(dir)? {
        for (_, path) in list_segments(&shard_dir(dir, shard))? {
            segments.push_back((shard, path));
        }
    }
    Ok(segments)
}

/// The iterator of [`episodes`]; it holds one open segment at a time, and logs its progress
/// through the segments every few seconds.
pub struct Episodes {
    segments: VecDeque<(u32, PathBuf)>,
    current: Option<(u32, SegmentReader)>,
    progress: Progress,
}

impl Episodes {
    fn over(segments: VecDeque<(u32, PathBuf)>) -> Episodes {
        Episodes {
            progress: Progress::new("reading the archive", segments.len()),
            segments,
            current: None,
        }
    }
}

impl Iterator for Episodes {
    type Item = Result<Stored, ArchiveError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let (shard, reader) = match &mut self.current {
                Some(current) => current,
                empty => {
                    let (shard, path) = self.segments.pop_front()?;
                    self.progress.segment();
                    match SegmentReader::open(&path) {
                        Ok(reader) => empty.insert((shard, reader)),
                        Err(e) => return Some(Err(e)),
                    }
                }
            };
            let body = match reader.next_frame() {
                Ok(body) => body,
                Err(SegmentEnd::Finished | SegmentEnd::Torn { .. }) => {
                    self.current = None;
                    continue;
                }
                Err(SegmentEnd::Corrupt { offset, error }) => {
                    let e = ArchiveError::Decode {
                        path: reader.path.clone(),
                        entry: reader.entries + 1,
                        offset,
                        source: error,
                    };
                    self.current = None;
                    return Some(Err(e));
                }
                Err(SegmentEnd::Malformed(e)) => {
                    self.current = None;
                    return Some(Err(e));
                }
            };
            let parsed = super::segment::parse_entry(&reader.path, reader.entries, &body);
            return Some(parsed.map(|e| Stored {
                shard: *shard,
                index: e.index,
                path: reader.path.clone(),
                entry: reader.entries,
                written_ms: e.written_ms,
                root: e.root,
                episode: e.episode,
            }));
        }
    }
}

/// Every stored episode with a record of observation `id`, oldest first (by write time, then
/// shard and index). Reads the segments whose id filter may hold `id`, and those without a
/// valid filter; an unreadable segment is an error.
pub fn find(dir: &Path, id: &str) -> Result<Vec<Stored>, ArchiveError> {
    let key = id_key(id);
    let mut candidates = segments(dir)?;
    candidates.retain(|(_, path)| IdFilter::read(path).is_none_or(|f| f.may_contain(key)));
    let has_id = |s: &Result<Stored, ArchiveError>| {
        s.as_ref()
            .map_or(true, |s| s.episode.records.iter().any(|r| r.id == id))
    };
    let mut found = Episodes::over(candidates)
        .filter(has_id)
        .collect::<Result<Vec<_>, _>>()?;
    found.sort_by_key(|s| (s.written_ms, s.shard, s.index));
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::test_util::{config, episode, write};

    #[test]
    fn find_returns_every_episode_with_the_id_newest_last() {
        let dir = tempfile::tempdir().unwrap();
        let eps = [
            episode(0, 0, &["b"]),
            episode(0, 1, &["x"]),
            episode(1, 0, &["a", "x"]),
            episode(1, 1, &["c"]),
        ];
        write(&config(dir.path()), eps[..3].to_vec());
        std::thread::sleep(std::time::Duration::from_millis(5));
        write(&config(dir.path()), vec![eps[3].clone(), eps[2].clone()]);
        let found = find(dir.path(), "x").unwrap();
        let at: Vec<(u32, u64, u64)> = found.iter().map(|s| (s.shard, s.index, s.entry)).collect();
        assert_eq!(at, [(0, 1, 2), (1, 0, 1), (1, 2, 2)], "{found:?}");
        assert!(found[1].written_ms < found[2].written_ms);
        assert_eq!(found[2].path.file_name().unwrap(), "seg-000000000001.xz");
        assert_eq!(found[0].episode, eps[1]);
        assert!(find(dir.path(), "nope").unwrap().is_empty());
    }

    /// A finished segment has an id filter, and `find` reads only the segments whose filter
    /// may hold the id: a damaged segment is an error for an id in it, and is not even opened
    /// for an id whose filter says it is absent. Without a filter, the segment is scanned.
    #[test]
    fn find_reads_only_the_segments_whose_filter_may_hold_the_id() {
        use crate::archive::idfilter::sidecar;
        use crate::archive::segment::segment_path;
        let dir = tempfile::tempdir().unwrap();
        write(&config(dir.path()), vec![episode(0, 0, &["a"])]);
        write(&config(dir.path()), vec![episode(0, 1, &["b"])]);
        let first = segment_path(dir.path(), 0, 0);
        let second = segment_path(dir.path(), 0, 1);
        assert!(sidecar(&first).is_file() && sidecar(&second).is_file());
        assert_eq!(find(dir.path(), "a").unwrap().len(), 1);

        let mut bytes = std::fs::read(&first).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        std::fs::write(&first, bytes).unwrap();
        assert!(find(dir.path(), "a").is_err(), "the damaged segment was read");
        assert_eq!(
            find(dir.path(), "b").unwrap().len(),
            1,
            "the damaged segment was skipped"
        );

        std::fs::remove_file(sidecar(&first)).unwrap();
        assert!(
            find(dir.path(), "b").is_err(),
            "without a filter the segment is scanned"
        );
    }

    #[test]
    fn a_missing_archive_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let Err(e) = episodes(&dir.path().join("gone")) else {
            panic!("a missing directory listed")
        };
        assert!(e.to_string().contains("gone: list directory"), "{e}");
    }
}
