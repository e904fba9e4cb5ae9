//! Verification: replays every shard's chain from its checkpoint (or from root₀) through all its
//! segments and reports the first break per shard with its file and position. It reads only;
//! it does not repair, and cannot notice complete episodes cut from the end of the newest
//! segment (nothing after them refers to them).

use std::fmt;
use std::path::{Path, PathBuf};

use bizra_dataflows::episode::{chain, Digest64, ROOT_0};
use sha3::{Digest, Sha3_512};

use super::progress::Progress;
use super::segment::{
    episode_bytes, list_segments, list_shards, parse_entry, read_checkpoint, shard_dir, SegmentEnd,
    SegmentReader,
};
use super::ArchiveError;

/// The outcome of [`verify`]: one report per shard, ascending.
#[derive(Debug)]
pub struct VerifyReport {
    pub shards: Vec<ShardReport>,
}

impl VerifyReport {
    /// True if no shard has a break (warnings allowed).
    pub fn is_ok(&self) -> bool {
        self.shards.iter().all(|s| s.broken.is_none())
    }
}

#[derive(Debug)]
pub struct ShardReport {
    pub shard: u32,
    /// The index the chain was replayed from: the checkpoint's, else 0.
    pub start: u64,
    /// Episodes that verified.
    pub episodes: u64,
    /// The index after the last episode that verified.
    pub next_index: u64,
    /// The chain root after the last episode that verified.
    pub root: Digest64,
    /// The first break, after which nothing of the shard was checked.
    pub broken: Option<Break>,
    pub warnings: Vec<Warning>,
}

/// Where and how a chain breaks.
#[derive(Debug)]
pub struct Break {
    pub path: PathBuf,
    /// 1-based entry of the decompressed segment; 0 for the file itself (its name).
    pub entry: u64,
    /// The chain index expected at that position.
    pub index: u64,
    pub problem: Problem,
}

#[derive(Debug)]
pub enum Problem {
    /// The segment does not open.
    Unreadable(String),
    /// Decoding stopped at compressed byte `offset`.
    Decode {
        offset: u64,
        error: String,
    },
    /// The entry is not an episode entry (its frame, its header or its episode's bytes).
    Malformed(String),
    /// The file name's first index is not where the chain is.
    SegmentStart {
        expected: u64,
        found: u64,
    },
    Index {
        expected: u64,
        found: u64,
    },
    Shard {
        expected: u32,
        found: u32,
    },
    /// `prev` is not the previous root.
    Prev {
        found: Digest64,
        expected: Digest64,
    },
    /// `hash` is not the hash of the stored episode's bytes.
    Hash {
        found: Digest64,
        computed: Digest64,
    },
    /// `root` is not SHA3-512(prev ‖ hash).
    Root {
        found: Digest64,
        computed: Digest64,
    },
    /// The records do not rebuild the episode's signed Merkle root.
    MerkleRoot,
}

/// Something odd that does not break the chain.
#[derive(Debug)]
pub enum Warning {
    /// The segment has no xz stream end: its writer was killed or is still writing.
    Torn {
        path: PathBuf,
        complete: u64,
        partial_bytes: usize,
    },
    /// A segment before the checkpoint, left by an interrupted retention pass; not checked.
    BeforeCheckpoint { path: PathBuf },
}

/// Replays every shard's chain in `dir`. Errors are for an unreadable directory or checkpoint;
/// everything about the segments is in the report.
pub fn verify(dir: &Path) -> Result<VerifyReport, ArchiveError> {
    let mut listed = Vec::new();
    for shard in list_shards(dir)? {
        let sdir = shard_dir(dir, shard);
        let segments = list_segments(&sdir)?;
        listed.push((shard, sdir, segments));
    }
    let total = listed.iter().map(|(_, _, segments)| segments.len()).sum();
    let mut progress = Progress::new("verifying the archive", total);
    let shards = listed
        .into_iter()
        .map(|(shard, sdir, segments)| verify_shard(shard, &sdir, segments, &mut progress))
        .collect::<Result<_, _>>()?;
    Ok(VerifyReport { shards })
}

fn verify_shard(
    shard: u32,
    sdir: &Path,
    segments: Vec<(u64, PathBuf)>,
    progress: &mut Progress,
) -> Result<ShardReport, ArchiveError> {
    let (start, root) = match read_checkpoint(sdir)? {
        Some(cp) => (cp.first_index, cp.prev),
        None => (0, ROOT_0),
    };
    let mut report = ShardReport {
        shard,
        start,
        episodes: 0,
        next_index: start,
        root,
        broken: None,
        warnings: Vec::new(),
    };
    for (first, path) in segments {
        progress.segment();
        if first < start {
            report.warnings.push(Warning::BeforeCheckpoint { path });
            continue;
        }
        if let Err(problem) = verify_segment(&path, first, &mut report) {
            report.broken = Some(*problem);
            break;
        }
    }
    Ok(report)
}

/// Replays one segment into `report`; the error is the first break.
fn verify_segment(path: &Path, first: u64, report: &mut ShardReport) -> Result<(), Box<Break>> {
    let at = |entry, index, problem| {
        Box::new(Break {
            path: path.to_path_buf(),
            entry,
            index,
            problem,
        })
    };
    if first != report.next_index {
        let (expected, found) = (report.next_index, first);
        return Err(at(0, expected, Problem::SegmentStart { expected, found }));
    }
    let mut reader =
        SegmentReader::open(path).map_err(|e| at(0, first, Problem::Unreadable(e.to_string())))?;
    loop {
        let body = match reader.next_frame() {
            Ok(body) => body,
            Err(SegmentEnd::Finished) => return Ok(()),
            Err(SegmentEnd::Torn { partial_bytes }) => {
                report.warnings.push(Warning::Torn {
                    path: path.to_path_buf(),
                    complete: reader.entries,
                    partial_bytes,
                });
                return Ok(());
            }
            Err(SegmentEnd::Corrupt { offset, error }) => {
                let error = error.to_string();
                return Err(at(
                    reader.entries + 1,
                    report.next_index,
                    Problem::Decode { offset, error },
                ));
            }
            Err(SegmentEnd::Malformed(e)) => {
                let problem = Problem::Malformed(e.to_string());
                return Err(at(reader.entries + 1, report.next_index, problem));
            }
        };
        let (n, index) = (reader.entries, report.next_index);
        let e = parse_entry(path, n, &body).map_err(|e| at(n, index, Problem::Malformed(e.to_string())))?;
        // The hash of the bytes as stored: the canonical form is one-to-one, so they are the
        // canonical bytes of the episode that decoded from them.
        let computed: Digest64 = Sha3_512::digest(episode_bytes(&body)).into();
        let root = chain(&report.root, &computed);
        let problem = if e.index != index {
            Some(Problem::Index {
                expected: index,
                found: e.index,
            })
        } else if e.episode.shard != report.shard {
            Some(Problem::Shard {
                expected: report.shard,
                found: e.episode.shard,
            })
        } else if e.prev != report.root {
            let expected = report.root;
            Some(Problem::Prev {
                found: e.prev,
                expected,
            })
        } else if e.hash != computed {
            Some(Problem::Hash {
                found: e.hash,
                computed,
            })
        } else if e.root != root {
            Some(Problem::Root {
                found: e.root,
                computed: root,
            })
        } else if !e.episode.matches_root() {
            Some(Problem::MerkleRoot)
        } else if let Some(i) = e
            .episode
            .records
            .iter()
            .flat_map(|r| &r.conditions)
            .find(|&&i| i as usize >= e.episode.conditions.len())
        {
            Some(Problem::Malformed(format!(
                "a record refers to condition {i}, the episode has {}",
                e.episode.conditions.len()
            )))
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(at(n, index, problem));
        }
        report.episodes += 1;
        report.next_index += 1;
        report.root = root;
    }
}

/// The first 16 hex digits of a digest, for messages.
fn short(d: &Digest64) -> String {
    format!("{}…", hex::encode(&d[..8]))
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Unreadable(e) => write!(f, "cannot open: {e}"),
            Problem::Decode { offset, error } => {
                write!(f, "xz decoding failed at compressed byte {offset}: {error}")
            }
            Problem::Malformed(e) => write!(f, "{e}"),
            Problem::SegmentStart { expected, found } => write!(
                f,
                "expected the next segment to start at index {expected}, its name says {found} (segments missing or cut)"
            ),
            Problem::Index { expected, found } => write!(f, "expected index {expected}, found {found}"),
            Problem::Shard { expected, found } => {
                write!(f, "expected an episode of shard {expected}, found shard {found}")
            }
            Problem::Prev { found, expected } => {
                write!(
                    f,
                    "prev: expected the previous root {}, found {}",
                    short(expected),
                    short(found)
                )
            }
            Problem::Hash { found, computed } => write!(
                f,
                "hash: expected the episode's hash {}, found {} (episode edited)",
                short(computed),
                short(found)
            ),
            Problem::Root { found, computed } => {
                write!(
                    f,
                    "root: expected SHA3-512(prev ‖ hash) {}, found {}",
                    short(computed),
                    short(found)
                )
            }
            Problem::MerkleRoot => write!(f, "the records do not rebuild the episode's signed Merkle root"),
        }
    }
}

impl fmt::Display for Break {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.path.display();
        match self.entry {
            0 => write!(f, "{path} (episode index {}): {}", self.index, self.problem),
            entry => write!(
                f,
                "{path} entry {entry} (episode index {}): {}",
                self.index, self.problem
            ),
        }
    }
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Warning::Torn {
                path,
                complete,
                partial_bytes,
            } => write!(
                f,
                "{}: torn tail (writer killed or still writing): {complete} complete episodes, then {partial_bytes} bytes of an incomplete one",
                path.display()
            ),
            Warning::BeforeCheckpoint { path } => {
                write!(f, "{}: before the checkpoint (retention interrupted), not checked", path.display())
            }
        }
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.shards.is_empty() {
            return writeln!(f, "no shards");
        }
        for s in &self.shards {
            let verdict = if s.broken.is_some() { "BROKEN" } else { "ok" };
            writeln!(
                f,
                "shard {:05}: {} episodes verified, index {}..{}, root {}: {verdict}",
                s.shard,
                s.episodes,
                s.start,
                s.next_index,
                short(&s.root)
            )?;
            if let Some(b) = &s.broken {
                writeln!(f, "  break: {b}")?;
            }
            for w in &s.warnings {
                writeln!(f, "  warning: {w}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::io::Read;

    use bizra_dataflows::episode::Episode;
    use xz2::read::{XzDecoder, XzEncoder};

    use super::*;
    use crate::archive::segment::{encode_entry, segment_path, ENTRY_HEADER};
    use crate::archive::test_util::{config, episode, episodes, write};
    use crate::archive::ArchiveConfig;

    /// Two segments of 5 episodes (indexes 0..5 and 5..10) on shard 0.
    fn archive() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let eps = episodes(0, 10);
        write(&config(dir.path()), eps[..5].to_vec());
        write(&config(dir.path()), eps[5..].to_vec());
        dir
    }

    fn second(dir: &Path) -> PathBuf {
        segment_path(dir, 0, 5)
    }

    fn broken(dir: &Path) -> Break {
        let report = verify(dir).unwrap();
        let shard = report.shards.into_iter().next().unwrap();
        assert_eq!(shard.episodes, shard.broken.as_ref().map_or(10, |b| b.index));
        shard.broken.expect("a break")
    }

    /// The complete frames at the start of `content`, each whole (length prefix included).
    fn split_frames(content: &[u8]) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        let mut rest = content;
        while let Some(len) = rest.get(..4) {
            let len = 4 + u32::from_le_bytes(len.try_into().unwrap()) as usize;
            let Some(frame) = rest.get(..len) else { break };
            frames.push(frame.to_vec());
            rest = &rest[len..];
        }
        frames
    }

    /// Rewrites the second segment's content through `edit` of its frames, as a valid xz
    /// stream.
    fn rewrite(dir: &Path, edit: impl FnOnce(&mut Vec<Vec<u8>>)) {
        let mut content = Vec::new();
        XzDecoder::new(fs::File::open(second(dir)).unwrap())
            .read_to_end(&mut content)
            .unwrap();
        let mut frames = split_frames(&content);
        assert_eq!(frames.concat(), content, "the segment is whole frames");
        edit(&mut frames);
        let mut xz = Vec::new();
        XzEncoder::new(&frames.concat()[..], 0)
            .read_to_end(&mut xz)
            .unwrap();
        fs::write(second(dir), xz).unwrap();
    }

    /// A frame's header fields and episode, to edit.
    struct Decoded {
        index: u64,
        written_ms: u64,
        prev: Digest64,
        hash: Digest64,
        root: Digest64,
        episode: Episode,
    }

    fn decode(frame: &[u8]) -> Decoded {
        let e = parse_entry(Path::new("test"), 1, &frame[4..]).unwrap();
        Decoded {
            index: e.index,
            written_ms: e.written_ms,
            prev: e.prev,
            hash: e.hash,
            root: e.root,
            episode: e.episode,
        }
    }

    fn encode(d: &Decoded) -> Vec<u8> {
        encode_entry(
            d.index,
            d.written_ms,
            &d.prev,
            &d.hash,
            &d.root,
            &d.episode.canonical(),
        )
    }

    #[test]
    fn an_intact_archive_verifies() {
        let dir = archive();
        let report = verify(dir.path()).unwrap();
        assert!(report.is_ok(), "{report}");
        let text = report.to_string();
        assert!(
            text.starts_with("shard 00000: 10 episodes verified, index 0..10, root "),
            "{text}"
        );
        assert!(text.trim_end().ends_with(": ok"), "{text}");
    }

    #[test]
    fn decoding_and_reencoding_the_frames_gives_the_same_segment_content() {
        let dir = archive();
        let mut content = Vec::new();
        XzDecoder::new(fs::File::open(second(dir.path())).unwrap())
            .read_to_end(&mut content)
            .unwrap();
        let frames = split_frames(&content);
        assert_eq!(frames.len(), 5);
        let again: Vec<Vec<u8>> = frames.iter().map(|f| encode(&decode(f))).collect();
        assert_eq!(again, frames);
    }

    /// Complete entries that the prefix `xz` of a segment decodes to.
    fn complete_entries(xz: &[u8]) -> usize {
        let mut content = Vec::new();
        // What decoded before the end of a cut stream is kept in `content`.
        let _ = XzDecoder::new(xz).read_to_end(&mut content);
        split_frames(&content).len()
    }

    #[test]
    fn a_flipped_compressed_byte_is_a_break_at_its_episode_in_that_file() {
        let dir = archive();
        let mut bytes = fs::read(second(dir.path())).unwrap();
        let lens: Vec<usize> = (0..=bytes.len()).collect();
        let shortest = |n| lens.partition_point(|&len| complete_entries(&bytes[..len]) < n);
        let inside_third = (shortest(2) + shortest(3)) / 2;
        bytes[inside_third] ^= 0x55;
        fs::write(second(dir.path()), &bytes).unwrap();
        let b = broken(dir.path());
        assert_eq!(
            (b.path.clone(), b.entry, b.index),
            (second(dir.path()), 3, 7),
            "{b}"
        );
        // liblzma refuses the block, or the garbage it decoded before the block check fails.
        assert!(
            !matches!(b.problem, Problem::SegmentStart { .. } | Problem::Unreadable(_)),
            "{b}"
        );
        let prefix = format!("{} entry 3 (episode index 7): ", second(dir.path()).display());
        assert!(b.to_string().starts_with(&prefix), "{b}");
    }

    #[test]
    fn a_flipped_byte_in_the_xz_header_is_a_decode_break_at_entry_1() {
        let dir = archive();
        let mut bytes = fs::read(second(dir.path())).unwrap();
        bytes[8] ^= 1; // stream flags CRC32
        fs::write(second(dir.path()), &bytes).unwrap();
        let b = broken(dir.path());
        assert!(matches!(b.problem, Problem::Decode { .. }), "{b}");
        assert_eq!((b.entry, b.index), (1, 5), "{b}");
    }

    #[test]
    fn an_edited_episode_is_a_hash_break_at_its_entry() {
        let dir = archive();
        rewrite(dir.path(), |frames| {
            let mut d = decode(&frames[2]);
            let c = &mut d.episode.conditions[0];
            assert!(c.contains("Note: 1 minor"), "{c}");
            *c = c.replace("Note: 1 minor", "Note: 2 minor");
            frames[2] = encode(&d);
        });
        let b = broken(dir.path());
        assert_eq!((b.entry, b.index), (3, 7), "{b}");
        assert!(matches!(b.problem, Problem::Hash { .. }), "{b}");
    }

    #[test]
    fn an_edited_byte_of_a_stored_episode_is_a_hash_break_at_its_entry() {
        let dir = archive();
        rewrite(dir.path(), |frames| {
            // The last byte of the first record's id, `0-6-0`: still a valid episode. Its
            // bytes: 66 of header fields, the condition count (1) and text, the record count.
            let f = &mut frames[1];
            let text = 4 + ENTRY_HEADER + 66 + 1;
            let id = text + 1 + usize::from(f[text]) + 1;
            assert_eq!(&f[id..id + 6], b"\x050-6-0");
            f[id + 5] = b'9';
        });
        let b = broken(dir.path());
        assert_eq!((b.entry, b.index), (2, 6), "{b}");
        assert!(matches!(b.problem, Problem::Hash { .. }), "{b}");
    }

    #[test]
    fn an_episode_rehashed_after_editing_breaks_the_next_link() {
        let dir = archive();
        rewrite(dir.path(), |frames| {
            let mut d = decode(&frames[1]);
            d.episode.records[0].value = 0.9;
            d.hash = d.episode.content_hash();
            d.root = chain(&d.prev, &d.hash);
            frames[1] = encode(&d);
        });
        let b = broken(dir.path());
        // The edited record no longer rebuilds the signed Merkle root, before the chain notices.
        assert_eq!((b.entry, b.index), (2, 6), "{b}");
        assert!(matches!(b.problem, Problem::MerkleRoot), "{b}");
    }

    #[test]
    fn bytes_after_the_stream_end_are_a_decode_break() {
        let dir = archive();
        let mut bytes = fs::read(second(dir.path())).unwrap();
        bytes.extend_from_slice(b"junk");
        fs::write(second(dir.path()), &bytes).unwrap();
        let b = broken(dir.path());
        assert_eq!((b.entry, b.index), (6, 10), "{b}");
        assert!(
            b.to_string().contains("4+ bytes after the end of the xz stream"),
            "{b}"
        );
    }

    #[test]
    fn a_removed_episode_breaks_index_continuity() {
        let dir = archive();
        rewrite(dir.path(), |frames| {
            frames.remove(1);
        });
        let b = broken(dir.path());
        assert_eq!((b.entry, b.index), (2, 6), "{b}");
        assert!(matches!(b.problem, Problem::Index { found: 7, .. }), "{b}");
    }

    #[test]
    fn a_frame_that_does_not_hold_an_episode_is_a_malformed_break_at_its_entry() {
        for (case, edit) in [
            ("short body", 0usize),
            ("episode cut", 1),
            ("stream ends inside", 2),
            ("huge length", 3),
        ] {
            let dir = archive();
            rewrite(dir.path(), |frames| {
                let f = &mut frames[3];
                match edit {
                    0 => *f = [&100u32.to_le_bytes()[..], &f[4..104]].concat(),
                    1 => {
                        let len = (f.len() - 4 - 1) as u32;
                        *f = [&len.to_le_bytes()[..], &f[4..f.len() - 1]].concat();
                    }
                    2 => {
                        f.truncate(f.len() - 1);
                        frames.truncate(4);
                    }
                    _ => f[..4].copy_from_slice(&u32::MAX.to_le_bytes()),
                }
            });
            let b = broken(dir.path());
            assert_eq!((b.entry, b.index), (4, 8), "{case}: {b}");
            assert!(matches!(b.problem, Problem::Malformed(_)), "{case}: {b}");
            let prefix = format!(
                "{} entry 4 (episode index 8): {} entry 4: expected an episode entry, found ",
                second(dir.path()).display(),
                second(dir.path()).display()
            );
            assert!(b.to_string().starts_with(&prefix), "{case}: {b}");
        }
    }

    #[test]
    fn a_missing_segment_is_a_break_at_the_next_file_name() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = ArchiveConfig {
            segment_bytes: 1,
            ..config(dir.path())
        };
        write(&cfg, episodes(2, 4));
        fs::remove_file(segment_path(dir.path(), 2, 1)).unwrap();
        let report = verify(dir.path()).unwrap();
        let b = report.shards[0].broken.as_ref().unwrap();
        assert_eq!(
            (b.path.clone(), b.entry, b.index),
            (segment_path(dir.path(), 2, 2), 0, 1)
        );
        assert!(
            matches!(b.problem, Problem::SegmentStart { found: 2, .. }),
            "{report}"
        );
    }

    #[test]
    fn an_episode_that_does_not_rebuild_its_root_is_a_break() {
        let dir = tempfile::tempdir().unwrap();
        let mut ep = episode(0, 0, &["a", "b"]);
        ep.root = "00".repeat(32);
        write(&config(dir.path()), vec![ep]);
        let report = verify(dir.path()).unwrap();
        let b = report.shards[0].broken.as_ref().unwrap();
        assert!(
            matches!(b.problem, Problem::MerkleRoot) && b.entry == 1,
            "{report}"
        );
    }
}
