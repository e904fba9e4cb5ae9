//! Segment files: their names, the xz writer that appends episodes and ends a block per commit,
//! the reader that decodes lines up to a torn tail or a decode error, and the line and
//! checkpoint formats.
//! No policy: when to roll, what to delete and what counts as a break belong to the callers.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use bizra_dataflows::episode::{Digest64, Episode};
use serde::{Deserialize, Serialize};
use xz2::stream::{Action, Check, Status, Stream};

use super::ArchiveError;

/// A shard's checkpoint file, next to its segments.
const CHECKPOINT: &str = "checkpoint.json";

pub(crate) fn shard_dir(dir: &Path, shard: u32) -> PathBuf {
    dir.join(format!("shard-{shard:05}"))
}

pub(crate) fn segment_path(dir: &Path, shard: u32, first_index: u64) -> PathBuf {
    shard_dir(dir, shard).join(format!("seg-{first_index:012}.xz"))
}

/// The number in `name` if it is `{prefix}{digits}{suffix}` with at least `width` digits.
fn numbered(name: &str, prefix: &str, suffix: &str, width: usize) -> Option<u64> {
    let digits = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
    let plain = digits.len() >= width && digits.bytes().all(|b| b.is_ascii_digit());
    plain.then(|| digits.parse().ok()).flatten()
}

/// The names in `dir` that parse with `number`, sorted by their number.
fn list<T: Ord>(dir: &Path, number: impl Fn(&str) -> Option<T>) -> Result<Vec<(T, PathBuf)>, ArchiveError> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).map_err(ArchiveError::io(dir, "list directory"))? {
        let entry = entry.map_err(ArchiveError::io(dir, "list directory"))?;
        if let Some(n) = entry.file_name().to_str().and_then(&number) {
            found.push((n, entry.path()));
        }
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(found)
}

/// The shards present in the archive `dir`, ascending.
pub(crate) fn list_shards(dir: &Path) -> Result<Vec<u32>, ArchiveError> {
    let number = |name: &str| numbered(name, "shard-", "", 5).and_then(|n| u32::try_from(n).ok());
    Ok(list(dir, number)?.into_iter().map(|(shard, _)| shard).collect())
}

/// The segments in a shard directory as (first index, path), ascending.
pub(crate) fn list_segments(shard_dir: &Path) -> Result<Vec<(u64, PathBuf)>, ArchiveError> {
    list(shard_dir, |name| numbered(name, "seg-", ".xz", 12))
}

/// The open segment of a shard: one xz stream, one block per commit (a group of episodes).
pub(crate) struct SegmentWriter {
    pub(crate) path: PathBuf,
    file: File,
    xz: Stream,
    /// Compressed bytes of the episodes pushed since the last commit (reused).
    out: Vec<u8>,
    /// File length after the last complete episode: where a failed append cuts back to.
    good_len: u64,
    /// Bytes of JSON appended, for rolling.
    pub(crate) json_bytes: u64,
}

impl SegmentWriter {
    /// Creates (or truncates) the segment file at `path`, and its shard directory if missing.
    pub(crate) fn create(path: PathBuf, preset: u32, fsync: bool) -> Result<SegmentWriter, ArchiveError> {
        let dir = path.parent().expect("segment paths have a shard directory");
        fs::create_dir_all(dir).map_err(ArchiveError::io(dir, "create shard directory"))?;
        let file = File::create(&path).map_err(ArchiveError::io(&path, "create segment"))?;
        if fsync {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(ArchiveError::io(dir, "sync shard directory"))?;
        }
        let xz = Stream::new_easy_encoder(preset, Check::Crc64)
            .map_err(|e| ArchiveError::io(&path, "create xz encoder")(e.into()))?;
        Ok(SegmentWriter {
            path,
            file,
            xz,
            out: Vec::with_capacity(64 << 10),
            good_len: 0,
            json_bytes: 0,
        })
    }

    /// Compresses `line` into the current block; nothing reaches the file before
    /// [`SegmentWriter::commit`].
    pub(crate) fn push(&mut self, line: &[u8]) -> io::Result<()> {
        code(&mut self.xz, line, &mut self.out, Action::Run)?;
        self.json_bytes += line.len() as u64;
        Ok(())
    }

    /// Ends the block holding the lines pushed since the last commit and writes it to the
    /// file; returns the compressed bytes written. Ending a block resets the encoder's match
    /// finder, so the cost is per commit, not per episode: the writer commits a group.
    pub(crate) fn commit(&mut self, fsync: bool) -> io::Result<u64> {
        code(&mut self.xz, &[], &mut self.out, Action::FullFlush)?;
        self.file.write_all(&self.out)?;
        if fsync {
            self.file.sync_data()?;
        }
        let n = self.out.len() as u64;
        self.good_len += n;
        self.out.clear();
        Ok(n)
    }

    /// [`SegmentWriter::push`] and [`SegmentWriter::commit`] of one line.
    #[cfg(test)]
    pub(crate) fn append(&mut self, line: &[u8], fsync: bool) -> io::Result<u64> {
        self.push(line)?;
        self.commit(fsync)
    }

    /// Cuts the file back to its last complete episode, after a failed append.
    pub(crate) fn abandon(self) -> io::Result<()> {
        self.file.set_len(self.good_len)
    }

    /// Ends the xz stream; returns the compressed bytes written.
    pub(crate) fn finish(mut self, fsync: bool) -> io::Result<u64> {
        self.out.clear();
        code(&mut self.xz, &[], &mut self.out, Action::Finish)?;
        self.file.write_all(&self.out)?;
        if fsync {
            self.file.sync_all()?;
        }
        Ok(self.out.len() as u64)
    }
}

/// Runs `xz` over `input` with `action`: `Run` until the input is taken, a flush or finish
/// until it reports the end.
fn code(xz: &mut Stream, mut input: &[u8], out: &mut Vec<u8>, action: Action) -> io::Result<()> {
    loop {
        if out.len() == out.capacity() {
            out.reserve(out.capacity().max(4096));
        }
        let before = xz.total_in();
        let status = xz.process_vec(input, out, action)?;
        input = &input[(xz.total_in() - before) as usize..];
        let done = match action {
            Action::Run => input.is_empty(),
            _ => status == Status::StreamEnd,
        };
        if done {
            return Ok(());
        }
    }
}

/// How a segment's content ended.
#[derive(Debug)]
pub(crate) enum SegmentEnd {
    /// The xz stream ended properly.
    Finished,
    /// The file ends inside the stream (writer killed or still writing); `partial_bytes` of an
    /// incomplete line were decoded.
    Torn { partial_bytes: usize },
    /// Decoding failed at compressed byte `offset`.
    Corrupt { offset: u64, error: io::Error },
}

/// Reads a segment's lines.
pub(crate) struct SegmentReader {
    pub(crate) path: PathBuf,
    inner: BufReader<Decoder>,
    /// Complete lines returned so far: the 1-based number of the last one.
    pub(crate) lines: u64,
}

impl SegmentReader {
    pub(crate) fn open(path: &Path) -> Result<SegmentReader, ArchiveError> {
        let file = File::open(path).map_err(ArchiveError::io(path, "open segment"))?;
        let xz = Stream::new_stream_decoder(u64::MAX, 0)
            .map_err(|e| ArchiveError::io(path, "create xz decoder")(e.into()))?;
        let decoder = Decoder {
            file: BufReader::with_capacity(64 << 10, file),
            xz,
            error: None,
            ended: false,
        };
        Ok(SegmentReader {
            path: path.to_path_buf(),
            inner: BufReader::with_capacity(64 << 10, decoder),
            lines: 0,
        })
    }

    /// The next line, or how the segment ended. A last line without a newline in a finished
    /// stream is returned as a line (it is complete; parsing judges it).
    pub(crate) fn next_line(&mut self) -> Result<Vec<u8>, SegmentEnd> {
        let mut line = Vec::new();
        match self.inner.read_until(b'\n', &mut line) {
            Ok(0) => Err(SegmentEnd::Finished),
            Ok(_) => {
                self.lines += 1;
                Ok(line)
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(SegmentEnd::Torn {
                partial_bytes: line.len(),
            }),
            Err(error) => Err(SegmentEnd::Corrupt {
                offset: self.inner.get_ref().xz.total_in(),
                error,
            }),
        }
    }

    /// The next line parsed, `None` at the end of the segment, whatever the end.
    pub(crate) fn next_entry(&mut self) -> Option<Result<Entry, ArchiveError>> {
        let line = self.next_line().ok()?;
        Some(parse_line(&self.path, self.lines, &line))
    }
}

/// An xz decoder that hands out what it decoded before an error and reports the error on the
/// next read (`xz2`'s readers drop that output, which would hide the complete episodes before a
/// corrupt byte), and that rejects bytes after the end of the stream.
struct Decoder {
    file: BufReader<File>,
    xz: Stream,
    error: Option<io::Error>,
    ended: bool,
}

impl Read for Decoder {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        loop {
            let input = self.file.fill_buf()?;
            let eof = input.is_empty();
            if self.ended {
                return match input.len() {
                    0 => Ok(0),
                    n => Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{n}+ bytes after the end of the xz stream"),
                    )),
                };
            }
            let (before_in, before_out) = (self.xz.total_in(), self.xz.total_out());
            let status = self
                .xz
                .process(input, buf, if eof { Action::Finish } else { Action::Run });
            let consumed = (self.xz.total_in() - before_in) as usize;
            let read = (self.xz.total_out() - before_out) as usize;
            self.file.consume(consumed);
            match status {
                Err(e) if read > 0 => {
                    self.error = Some(e.into());
                    return Ok(read);
                }
                Err(e) => return Err(e.into()),
                Ok(Status::StreamEnd) => self.ended = true,
                Ok(_) if read > 0 || buf.is_empty() => return Ok(read),
                Ok(_) if eof => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(_) if consumed == 0 => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "xz decoder made no progress",
                    ))
                }
                Ok(_) => {}
            }
            if read > 0 {
                return Ok(read);
            }
        }
    }
}

/// One parsed line of a segment.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) index: u64,
    pub(crate) written_ms: u64,
    pub(crate) prev: Digest64,
    pub(crate) hash: Digest64,
    pub(crate) root: Digest64,
    pub(crate) episode: Episode,
}

/// A line as written; `episode` must be the episode's canonical JSON.
pub(crate) fn encode_line(
    index: u64,
    written_ms: u64,
    prev: &Digest64,
    hash: &Digest64,
    root: &Digest64,
    episode: &[u8],
) -> Vec<u8> {
    let mut line = Vec::with_capacity(episode.len() + 480);
    write!(
        line,
        r#"{{"index":{index},"written_ms":{written_ms},"prev":"{}","hash":"{}","root":"{}","episode":"#,
        hex::encode(prev),
        hex::encode(hash),
        hex::encode(root),
    )
    .expect("writing to a Vec");
    line.extend_from_slice(episode);
    line.extend_from_slice(b"}\n");
    line
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    index: u64,
    written_ms: u64,
    prev: String,
    hash: String,
    root: String,
    episode: Episode,
}

/// Parses line `line_no` of the segment at `path`.
pub(crate) fn parse_line(path: &Path, line_no: u64, bytes: &[u8]) -> Result<Entry, ArchiveError> {
    let malformed = |found: String| ArchiveError::Malformed {
        path: path.to_path_buf(),
        line: line_no,
        found,
    };
    let l: Line = serde_json::from_slice(bytes).map_err(|e| malformed(format!("invalid JSON ({e})")))?;
    let digest = |field: &str, s: &str| {
        digest(s).ok_or_else(|| malformed(format!("\"{field}\" = {s:?}, not 128 hex digits")))
    };
    Ok(Entry {
        index: l.index,
        written_ms: l.written_ms,
        prev: digest("prev", &l.prev)?,
        hash: digest("hash", &l.hash)?,
        root: digest("root", &l.root)?,
        episode: l.episode,
    })
}

fn digest(hex128: &str) -> Option<Digest64> {
    let mut d = [0u8; 64];
    hex::decode_to_slice(hex128, &mut d).ok().map(|()| d)
}

/// Where a shard's chain starts after retention: its first index kept and the root before it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Checkpoint {
    pub(crate) first_index: u64,
    pub(crate) prev: Digest64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckpointFile {
    first_index: u64,
    prev: String,
}

/// The shard's checkpoint, `None` if it has none.
pub(crate) fn read_checkpoint(shard_dir: &Path) -> Result<Option<Checkpoint>, ArchiveError> {
    let path = shard_dir.join(CHECKPOINT);
    let bytes = match fs::read(&path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        read => read.map_err(ArchiveError::io(&path, "read checkpoint"))?,
    };
    let bad = |found: String| ArchiveError::Checkpoint {
        path: path.clone(),
        found,
    };
    let file: CheckpointFile =
        serde_json::from_slice(&bytes).map_err(|e| bad(format!("invalid JSON ({e})")))?;
    let prev = digest(&file.prev).ok_or_else(|| bad(format!("\"prev\" = {:?}", file.prev)))?;
    Ok(Some(Checkpoint {
        first_index: file.first_index,
        prev,
    }))
}

/// Replaces the shard's checkpoint atomically (temp file, sync, rename, sync directory).
pub(crate) fn write_checkpoint(shard_dir: &Path, cp: &Checkpoint) -> Result<(), ArchiveError> {
    let path = shard_dir.join(CHECKPOINT);
    let tmp = shard_dir.join(format!("{CHECKPOINT}.tmp"));
    let json = serde_json::to_vec(&CheckpointFile {
        first_index: cp.first_index,
        prev: hex::encode(cp.prev),
    })
    .expect("checkpoints serialize");
    File::create(&tmp)
        .and_then(|mut f| f.write_all(&json).and_then(|()| f.sync_all()))
        .map_err(ArchiveError::io(&tmp, "write checkpoint"))?;
    fs::rename(&tmp, &path).map_err(ArchiveError::io(&path, "replace checkpoint"))?;
    File::open(shard_dir)
        .and_then(|d| d.sync_all())
        .map_err(ArchiveError::io(shard_dir, "sync shard directory"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::test_util::episode;

    #[test]
    fn names_parse_back_and_others_are_ignored() {
        let p = segment_path(Path::new("/a"), 7, 4096);
        assert_eq!(p, Path::new("/a/shard-00007/seg-000000004096.xz"));
        let name = p.file_name().unwrap().to_str().unwrap();
        assert_eq!(numbered(name, "seg-", ".xz", 12), Some(4096));
        assert_eq!(numbered("seg-12.xz", "seg-", ".xz", 12), None);
        assert_eq!(numbered("seg-+00000000001.xz", "seg-", ".xz", 12), None);
        assert_eq!(numbered("shard-123456", "shard-", "", 5), Some(123456));
    }

    #[test]
    fn a_line_parses_back_to_what_was_written() {
        let ep = episode(1, 2, &["a", "b"]);
        let (prev, hash, root) = ([1u8; 64], ep.content_hash(), [3u8; 64]);
        let line = encode_line(9, 1234, &prev, &hash, &root, &ep.canonical());
        let e = parse_line(Path::new("x"), 1, &line).unwrap();
        assert_eq!(
            (e.index, e.written_ms, e.prev, e.hash, e.root),
            (9, 1234, prev, hash, root)
        );
        assert_eq!(e.episode, ep);
        let bad = parse_line(Path::new("x"), 4, b"{\"index\":1}").unwrap_err();
        assert!(
            bad.to_string().starts_with("x line 4: expected an episode line"),
            "{bad}"
        );
    }

    #[test]
    fn a_checkpoint_is_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_checkpoint(dir.path()).unwrap(), None);
        for first_index in [5, 9] {
            let cp = Checkpoint {
                first_index,
                prev: [first_index as u8; 64],
            };
            write_checkpoint(dir.path(), &cp).unwrap();
            assert_eq!(read_checkpoint(dir.path()).unwrap(), Some(cp));
        }
        assert!(!dir.path().join("checkpoint.json.tmp").exists());
    }
}
