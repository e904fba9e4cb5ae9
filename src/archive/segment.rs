//! Segment files: their names, the xz writer that appends episodes and ends a block per commit,
//! the reader that decodes entries up to a torn tail or a decode error, and the entry (frame)
//! and checkpoint formats.
//! No policy: when to roll, what to delete and what counts as a break belong to the callers.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use bizra_dataflows::episode::{Digest64, Episode};
use serde::{Deserialize, Serialize};
use xz2::stream::{Action, Check, Filters, LzmaOptions, Status, Stream};

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
    /// Bytes of content (entries, before compression) appended, for rolling.
    pub(crate) content_bytes: u64,
    /// The id keys of the records appended, for the segment's id filter (`idfilter.rs`).
    pub(crate) ids: Vec<[u64; 2]>,
}

impl SegmentWriter {
    /// Creates (or truncates) the segment file at `path`, and its shard directory if missing.
    /// The xz match finder's `depth` is the preset's own when 0.
    pub(crate) fn create(
        path: PathBuf,
        preset: u32,
        depth: u32,
        fsync: bool,
    ) -> Result<SegmentWriter, ArchiveError> {
        let dir = path.parent().expect("segment paths have a shard directory");
        fs::create_dir_all(dir).map_err(ArchiveError::io(dir, "create shard directory"))?;
        let file = File::create(&path).map_err(ArchiveError::io(&path, "create segment"))?;
        if fsync {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(ArchiveError::io(dir, "sync shard directory"))?;
        }
        let xz =
            encoder(preset, depth).map_err(|e| ArchiveError::io(&path, "create xz encoder")(e.into()))?;
        Ok(SegmentWriter {
            path,
            file,
            xz,
            out: Vec::with_capacity(64 << 10),
            good_len: 0,
            content_bytes: 0,
            ids: Vec::new(),
        })
    }

    /// Compresses `entry` (an [`encode_entry`] frame) into the current block; nothing reaches
    /// the file before [`SegmentWriter::commit`].
    pub(crate) fn push(&mut self, entry: &[u8]) -> io::Result<()> {
        code(&mut self.xz, entry, &mut self.out, Action::Run)?;
        self.content_bytes += entry.len() as u64;
        Ok(())
    }

    /// Ends the block holding the entries pushed since the last commit and writes it to the
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

    /// [`SegmentWriter::push`] and [`SegmentWriter::commit`] of one entry.
    #[cfg(test)]
    pub(crate) fn append(&mut self, entry: &[u8], fsync: bool) -> io::Result<u64> {
        self.push(entry)?;
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

/// The most memory the xz decoder of a segment may take. bizra's presets (at most 9, a 64 MiB
/// dictionary) decode in 65 MiB; a segment whose header asks for more (a damaged or hostile
/// file: found by fuzzing, a header asking for a 4 GiB dictionary) is an xz error, not an
/// allocation of what it asks.
pub(crate) const DECODER_MEMLIMIT: u64 = 128 << 20;

/// An xz stream encoder (CRC64 checks) at `preset`, with the match finder's `depth` if not 0.
fn encoder(preset: u32, depth: u32) -> Result<Stream, xz2::stream::Error> {
    let mut options = LzmaOptions::new_preset(preset)?;
    if depth > 0 {
        options.depth(depth);
    }
    let mut filters = Filters::new();
    filters.lzma2(&options);
    Stream::new_stream_encoder(&filters, Check::Crc64)
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
    /// The xz stream ended properly, after a complete entry.
    Finished,
    /// The file ends inside the stream (writer killed or still writing); `partial_bytes` of an
    /// incomplete entry (its length prefix included) were decoded.
    Torn { partial_bytes: usize },
    /// Decoding failed at compressed byte `offset`.
    Corrupt { offset: u64, error: io::Error },
    /// The content is not a sequence of frames ([`ArchiveError::Malformed`] naming the entry):
    /// the stream ends properly inside an entry, or a length prefix is out of bounds. Nothing
    /// after it can be read.
    Malformed(ArchiveError),
}

/// Bytes of an entry body before the canonical episode: index, written_ms, prev, hash, root.
pub(crate) const ENTRY_HEADER: usize = 8 + 8 + 3 * 64;

/// The longest entry body a reader accepts; a longer length prefix is malformed content, not
/// an allocation (an episode of a whole batch is far below this).
pub(crate) const MAX_ENTRY_BYTES: u32 = 256 << 20;

/// Reads a segment's entries.
pub(crate) struct SegmentReader {
    pub(crate) path: PathBuf,
    inner: BufReader<Decoder>,
    /// Complete entries returned so far: the 1-based number of the last one.
    pub(crate) entries: u64,
    /// A malformed frame was met: where the next one starts is unknown, so nothing more is
    /// read.
    broken: bool,
}

impl SegmentReader {
    pub(crate) fn open(path: &Path) -> Result<SegmentReader, ArchiveError> {
        let file = File::open(path).map_err(ArchiveError::io(path, "open segment"))?;
        let xz = Stream::new_stream_decoder(DECODER_MEMLIMIT, 0)
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
            entries: 0,
            broken: false,
        })
    }

    /// The body of the next entry (its frame without the length prefix), or how the segment
    /// ended. After [`SegmentEnd::Malformed`] it reports [`SegmentEnd::Finished`].
    pub(crate) fn next_frame(&mut self) -> Result<Vec<u8>, SegmentEnd> {
        if self.broken {
            return Err(SegmentEnd::Finished);
        }
        let mut prefix = [0u8; 4];
        let mut got = 0;
        while got < prefix.len() {
            match self.inner.read(&mut prefix[got..]) {
                Ok(0) if got == 0 => return Err(SegmentEnd::Finished),
                Ok(0) => return Err(self.cut(got)),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.failed(e, got)),
            }
        }
        let len = u32::from_le_bytes(prefix);
        if len > MAX_ENTRY_BYTES {
            let found = format!("a length prefix of {len} bytes (more than {MAX_ENTRY_BYTES})");
            return Err(SegmentEnd::Malformed(self.malformed(found)));
        }
        let mut body = Vec::with_capacity((len as usize).min(1 << 20));
        match (&mut self.inner).take(u64::from(len)).read_to_end(&mut body) {
            Ok(n) if n == len as usize => {
                self.entries += 1;
                Ok(body)
            }
            Ok(n) => Err(self.cut(4 + n)),
            Err(e) => Err(self.failed(e, 4 + body.len())),
        }
    }

    /// The end for a read error after `partial_bytes` of an entry.
    fn failed(&self, error: io::Error, partial_bytes: usize) -> SegmentEnd {
        match error.kind() {
            io::ErrorKind::UnexpectedEof => SegmentEnd::Torn { partial_bytes },
            _ => SegmentEnd::Corrupt {
                offset: self.inner.get_ref().xz.total_in(),
                error,
            },
        }
    }

    /// The end for a stream that ended properly after `partial_bytes` of an entry.
    fn cut(&mut self, partial_bytes: usize) -> SegmentEnd {
        let found = format!("the end of the xz stream after {partial_bytes} bytes of it");
        SegmentEnd::Malformed(self.malformed(found))
    }

    /// The next entry is malformed: it is not there as a frame.
    fn malformed(&mut self, found: String) -> ArchiveError {
        self.broken = true;
        ArchiveError::Malformed {
            path: self.path.clone(),
            entry: self.entries + 1,
            found,
        }
    }

    /// The next entry parsed, `None` at the end of the segment (finished, torn or corrupt). A
    /// malformed frame is the last item; an entry whose body does not parse is not.
    pub(crate) fn next_entry(&mut self) -> Option<Result<Entry, ArchiveError>> {
        match self.next_frame() {
            Ok(body) => Some(parse_entry(&self.path, self.entries, &body)),
            Err(SegmentEnd::Malformed(e)) => Some(Err(e)),
            Err(_) => None,
        }
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

/// One parsed entry of a segment.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) index: u64,
    pub(crate) written_ms: u64,
    pub(crate) prev: Digest64,
    pub(crate) hash: Digest64,
    pub(crate) root: Digest64,
    pub(crate) episode: Episode,
}

/// An entry as written, a frame: the body's length (u32 LE), then the body: index u64 LE,
/// written_ms u64 LE, prev, hash and root (64 bytes each), the episode's canonical bytes.
pub(crate) fn encode_entry(
    index: u64,
    written_ms: u64,
    prev: &Digest64,
    hash: &Digest64,
    root: &Digest64,
    episode: &[u8],
) -> Vec<u8> {
    let len = ENTRY_HEADER + episode.len();
    let mut frame = Vec::with_capacity(4 + len);
    let len = u32::try_from(len).ok().filter(|&l| l <= MAX_ENTRY_BYTES);
    frame.extend_from_slice(&len.expect("episodes are far below MAX_ENTRY_BYTES").to_le_bytes());
    frame.extend_from_slice(&index.to_le_bytes());
    frame.extend_from_slice(&written_ms.to_le_bytes());
    for d in [prev, hash, root] {
        frame.extend_from_slice(d);
    }
    frame.extend_from_slice(episode);
    frame
}

/// The canonical episode bytes of an entry body (empty if the body is too short to hold any).
pub(crate) fn episode_bytes(body: &[u8]) -> &[u8] {
    body.get(ENTRY_HEADER..).unwrap_or_default()
}

/// Parses the body of entry `entry_no` of the segment at `path`.
pub(crate) fn parse_entry(path: &Path, entry_no: u64, body: &[u8]) -> Result<Entry, ArchiveError> {
    let malformed = |found: String| ArchiveError::Malformed {
        path: path.to_path_buf(),
        entry: entry_no,
        found,
    };
    if body.len() < ENTRY_HEADER {
        let found = format!(
            "{} bytes, fewer than the {ENTRY_HEADER} of its header",
            body.len()
        );
        return Err(malformed(found));
    }
    let (head, episode) = body.split_at(ENTRY_HEADER);
    let u64_at = |at: usize| u64::from_le_bytes(head[at..at + 8].try_into().expect("8 bytes"));
    let digest_at = |at: usize| -> Digest64 { head[at..at + 64].try_into().expect("64 bytes") };
    let episode = Episode::from_canonical(episode)
        .map_err(|e| malformed(format!("an episode that does not decode ({e})")))?;
    Ok(Entry {
        index: u64_at(0),
        written_ms: u64_at(8),
        prev: digest_at(16),
        hash: digest_at(80),
        root: digest_at(144),
        episode,
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
    fn a_header_asking_for_a_huge_dictionary_is_corrupt_not_an_allocation() {
        // The fuzz input's first byte selects raw mode; the rest is the segment file, whose
        // xz block header asks for a 4 GiB dictionary.
        let input = include_bytes!("../../fuzz/corpus/segment_reader/xz-dict-4gib");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seg.xz");
        std::fs::write(&path, &input[1..]).unwrap();
        let mut r = SegmentReader::open(&path).unwrap();
        match r.next_frame() {
            Err(SegmentEnd::Corrupt { error, .. }) => {
                assert!(error.to_string().contains("memory"), "{error}");
            }
            other => panic!("{:?}", other.map(|f| f.len())),
        }
    }

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
    fn an_entry_parses_back_to_what_was_written() {
        let ep = episode(1, 2, &["a", "b"]);
        let (prev, hash, root) = ([1u8; 64], ep.content_hash(), [3u8; 64]);
        let canonical = ep.canonical();
        let frame = encode_entry(9, 1234, &prev, &hash, &root, &canonical);
        let len = u32::from_le_bytes(frame[..4].try_into().unwrap()) as usize;
        assert_eq!((len, frame.len()), (ENTRY_HEADER + canonical.len(), 4 + len));
        assert_eq!(episode_bytes(&frame[4..]), canonical);
        let e = parse_entry(Path::new("x"), 1, &frame[4..]).unwrap();
        assert_eq!(
            (e.index, e.written_ms, e.prev, e.hash, e.root),
            (9, 1234, prev, hash, root)
        );
        assert_eq!(e.episode, ep);

        let bad = parse_entry(Path::new("x"), 4, &frame[4..200]).unwrap_err();
        assert_eq!(
            bad.to_string(),
            "x entry 4: expected an episode entry, found 196 bytes, fewer than the 208 of its header"
        );
        let bad = parse_entry(Path::new("x"), 5, &frame[4..frame.len() - 1]).unwrap_err();
        let msg = bad.to_string();
        assert!(
            msg.starts_with(
                "x entry 5: expected an episode entry, found an episode that does not decode (byte "
            ),
            "{msg}"
        );
        assert!(msg.contains("(truncated)"), "{msg}");
    }

    /// A segment at `path` whose content is `content`, as one finished xz stream.
    fn segment_of(path: &Path, content: &[u8]) {
        let mut w = SegmentWriter::create(path.to_path_buf(), 0, 0, false).unwrap();
        w.append(content, false).unwrap();
        w.finish(false).unwrap();
    }

    fn frames(path: &Path) -> (Vec<Entry>, Option<String>) {
        let mut reader = SegmentReader::open(path).unwrap();
        let mut entries = Vec::new();
        while let Some(e) = reader.next_entry() {
            match e {
                Ok(e) => entries.push(e),
                Err(e) => return (entries, Some(e.to_string())),
            }
        }
        (entries, None)
    }

    #[test]
    fn frames_read_back_and_bad_framing_is_malformed_at_its_entry() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seg");
        let eps = [episode(0, 0, &["a"]), episode(0, 1, &["b", "c"])];
        let mut content = Vec::new();
        for (i, ep) in eps.iter().enumerate() {
            let c = ep.canonical();
            content.extend(encode_entry(
                i as u64,
                7,
                &[0; 64],
                &ep.content_hash(),
                &[1; 64],
                &c,
            ));
        }
        segment_of(&path, &content);
        let (entries, error) = frames(&path);
        assert_eq!(error, None);
        let back: Vec<&Episode> = entries.iter().map(|e| &e.episode).collect();
        assert_eq!(back, eps.iter().collect::<Vec<_>>());

        let p = path.display();
        // The stream ends inside the second entry's body, then inside its length prefix.
        for (cut, partial) in [
            (content.len() - 10, content.len() - 10 - entries_len(&content, 1)),
            (2, 2),
        ] {
            segment_of(&path, &content[..cut]);
            let (entries, error) = frames(&path);
            let n = entries.len();
            let expected = format!(
                "{p} entry {}: expected an episode entry, found the end of the xz stream after {partial} bytes of it",
                n + 1
            );
            assert_eq!(error, Some(expected), "cut at {cut}");
        }
        // A length prefix above the bound is refused, not allocated.
        let mut huge = content.clone();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        huge.extend_from_slice(&[0; 64]);
        segment_of(&path, &huge);
        let (entries, error) = frames(&path);
        assert_eq!(entries.len(), 2);
        let expected = format!(
            "{p} entry 3: expected an episode entry, found a length prefix of 4294967295 bytes (more than 268435456)"
        );
        assert_eq!(error, Some(expected));
        let mut reader = SegmentReader::open(&path).unwrap();
        while reader.next_entry().is_some_and(|e| e.is_ok()) {}
        assert!(reader.next_entry().is_none(), "nothing after a malformed frame");
    }

    /// Bytes of the first `n` frames of `content`.
    fn entries_len(content: &[u8], n: usize) -> usize {
        let mut at = 0;
        for _ in 0..n {
            at += 4 + u32::from_le_bytes(content[at..at + 4].try_into().unwrap()) as usize;
        }
        at
    }

    #[test]
    fn a_torn_stream_ends_inside_an_entry_with_its_partial_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seg");
        let ep = episode(0, 0, &["a"]);
        let frame = encode_entry(0, 7, &[0; 64], &ep.content_hash(), &[1; 64], &ep.canonical());
        let mut w = SegmentWriter::create(path.clone(), 0, 0, false).unwrap();
        w.append(&frame, false).unwrap();
        w.append(&frame[..100], false).unwrap(); // no stream end: as if killed
        let mut reader = SegmentReader::open(&path).unwrap();
        assert_eq!(reader.next_frame().unwrap(), frame[4..]);
        assert!(
            matches!(reader.next_frame(), Err(SegmentEnd::Torn { partial_bytes: 100 })),
            "torn"
        );
        assert_eq!(reader.entries, 1);
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
