//! The episodic audit archive (L3): every sealed batch's [`Episode`] appended to per-shard,
//! xz-compressed, hash-chained segment files, written off the timely workers; recovery after a
//! crash, retention, verification and lookup. It does not decide what to archive or when input
//! counts as done: the pipeline submits episodes and acts on the acknowledgements.
//!
//! # On-disk format
//! ```text
//! <dir>/shard-00003/seg-000000000000.xz   episodes 0.. of shard 3 (the name is the first index)
//! <dir>/shard-00003/seg-000000004096.xz   episodes 4096..
//! <dir>/shard-00003/checkpoint.json       {"first_index":4096,"prev":"<hex128>"} (after retention)
//! ```
//! A segment is one xz stream (CRC64 block checks). Its content is a sequence of entries, one
//! per episode, each a frame: the body's length (u32, little-endian), then the body
//! ```text
//! index u64 LE | written_ms u64 LE | prev [64] | hash [64] | root [64] | episode (canonical bytes)
//! ```
//! Entries are numbered from 1 in each segment (messages name a break by file and entry).
//! - `episode` is the episode's canonical binary form ([`Episode::canonical`], which documents
//!   the layout; it is read back with [`Episode::from_canonical`]) and `hash` is SHA3-512 of
//!   exactly those bytes ([`Episode::content_hash`]);
//! - `root` = SHA3-512(`prev` ‖ `hash`), and `prev` is the `root` of the shard's previous
//!   episode, [`ROOT_0`] (64 zero bytes) before index 0. One chain per shard, by position: a
//!   repeated observation id is just another episode;
//! - `index` counts a shard's episodes from 0, without gaps across segments;
//! - `written_ms` is the writer's wall clock. It orders [`find`] results across shards and is
//!   not covered by the chain.
//!
//! The writer takes whatever episodes are queued (up to 32, group commit), compresses them and
//! ends one xz block per shard with a full flush; the bytes are written to the file before any
//! episode of the group is acknowledged, so a file cut by a crash decodes up to its last
//! complete episode. A segment rolls after `segment_bytes` of content (uncompressed entries)
//! and at every start of a writer, which never appends to an existing segment: it recovers each
//! shard's tip (next index and root) from the shard's newest segment and starts the next
//! segment there. A segment without an xz stream end (the writer was killed, or is still
//! writing) is a torn tail, a warning and not a break, wherever in an entry (its length prefix
//! or its body) the file ends; the next segment must continue at its last complete episode. A
//! body shorter than its header or whose episode does not decode, a length prefix above
//! 256 MiB and a finished stream that ends inside an entry are malformed entries (breaks).
//!
//! Retention deletes whole segments, oldest first and never a shard's newest one: while the
//! segment files of the whole archive exceed `retention_bytes`, and when a segment's mtime (the
//! time of its last episode) is older than `retention_age_ms`. Before deleting it rewrites the
//! shard's checkpoint (temp file + rename) with the first index kept and the root before it,
//! which [`verify()`] replays from. The checkpoint is trusted: it anchors the chain after a cut.
//! The writer threads apply retention at start, after each roll and every minute.
//!
//! One writer per directory: two processes writing the same shard would interleave chains, so
//! `bizra run` holds `--data-dir`'s lock (`crate::data_dir`) while it runs. At start, a corrupt
//! or malformed newest segment is logged and counted in `ArchiveStats::errors`, and its shard's
//! chain goes on from the last good entry.
//!
//! # Layout
//! - `segment`: names, the xz segment writer and reader, the entry and checkpoint formats.
//! - `writer`: the background writer pool ([`ArchiveWriter::spawn`]) and its [`ArchiveHandle`].
//! - `retention`: deleting old segments behind a checkpoint.
//! - `verify`: replaying every chain into a [`VerifyReport`].
//! - `read`: iterating over stored episodes ([`episodes`]) and finding an id ([`find`]).
//! - `sink`: the timely operator that submits a worker's episodes and holds their ticks until
//!   they are written ([`archived`]).
//!
//! [`Episode`]: bizra_dataflows::episode::Episode
//! [`Episode::canonical`]: bizra_dataflows::episode::Episode::canonical
//! [`Episode::from_canonical`]: bizra_dataflows::episode::Episode::from_canonical
//! [`Episode::content_hash`]: bizra_dataflows::episode::Episode::content_hash
//! [`ROOT_0`]: bizra_dataflows::episode::ROOT_0

use std::io;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

mod idfilter;
mod progress;
mod read;
mod retention;
mod segment;
mod sink;
#[cfg(test)]
mod test_util;
mod verify;
mod writer;

pub use read::{episodes, find, Episodes, Stored};
pub use sink::{archived, ArchiveOutbox};
pub use verify::{verify, Break, Problem, ShardReport, VerifyReport, Warning};
pub use writer::{Ack, ArchiveHandle, ArchiveStats, ArchiveWriter, Lane};

/// One [`Lane`] per worker of this process, taken by the workers as they start.
pub type Lanes = std::sync::Arc<std::sync::Mutex<Vec<Lane>>>;

/// The `[archive]` configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveConfig {
    /// Directory of the archive: `<--data-dir>/archive`, created at start if its parent
    /// exists. Not a config key: the archive is on exactly when `--data-dir` is given.
    #[serde(skip)]
    pub dir: PathBuf,
    /// xz preset, 0 (fastest) to 9 (smallest). The encoder of each shard's open segment needs
    /// 3 MiB at 0, 32 MiB at 3, 94 MiB at 6 and 674 MiB at 9 (xz(1), "CompMem"). On the former
    /// JSON-lines content, 6 was about 4 times slower than 0 for files about 20 % smaller.
    pub preset: u32,
    /// xz match-finder depth; 0 leaves the preset's own. 1 (the default) made preset 0 about
    /// 20 % faster on archive content for 0.5 % more bytes (docs/BENCHMARKS.md); give 0 with a
    /// higher preset to get all of its compression.
    pub match_depth: u32,
    /// A segment rolls once this many bytes of content (uncompressed entries) were written to
    /// it; retention deletes whole segments, so this is also its granularity.
    pub segment_bytes: u64,
    /// Retention: the most bytes the segment files of all shards may take on disk.
    pub retention_bytes: u64,
    /// Retention: segments whose last episode is older than this are deleted.
    pub retention_age_ms: u64,
    /// Writer threads; shard `s` is written by thread `s % threads`.
    pub threads: usize,
    /// Episodes that may wait per writer thread; a full queue is backpressure.
    pub queue_episodes: usize,
    /// `fsync` each episode before acknowledging it (survives power loss, costs a disk flush).
    pub fsync: bool,
    /// Recall cache (`/episodes/{id}`): most recent episodes kept in memory, by count and by
    /// approximate bytes.
    pub recall_episodes: usize,
    pub recall_bytes: usize,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        ArchiveConfig {
            dir: PathBuf::from("data/archive"),
            preset: 0,
            match_depth: 1,
            segment_bytes: 8 << 20,
            retention_bytes: 10 << 30,
            retention_age_ms: 30 * 24 * 3600 * 1000,
            threads: 1,
            queue_episodes: 64,
            fsync: false,
            recall_episodes: 4096,
            recall_bytes: 64 << 20,
        }
    }
}

impl ArchiveConfig {
    /// Checks ranges; the message names the key, what was expected and what was found.
    pub fn validate(&self) -> Result<(), String> {
        if self.preset > 9 {
            return Err(format!("preset: expected 0 to 9, found {}", self.preset));
        }
        let sizes = [
            ("segment_bytes", self.segment_bytes),
            ("retention_bytes", self.retention_bytes),
            ("retention_age_ms", self.retention_age_ms),
            ("threads", self.threads as u64),
            ("queue_episodes", self.queue_episodes as u64),
        ];
        match sizes.iter().find(|(_, v)| *v == 0) {
            Some((key, _)) => Err(format!("{key}: expected at least 1, found 0")),
            None => Ok(()),
        }
    }
}

/// What went wrong reading or writing the archive; every variant names its file.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("archive config: {0}")]
    Config(String),
    #[error("{}: {what}: {source}", path.display())]
    Io {
        path: PathBuf,
        /// What was being done, e.g. "append episode".
        what: &'static str,
        source: io::Error,
    },
    /// Entry `entry` (1-based, in the decompressed segment) is not an episode entry.
    #[error("{} entry {entry}: expected an episode entry, found {found}", path.display())]
    Malformed {
        path: PathBuf,
        entry: u64,
        found: String,
    },
    #[error(
        "{}: expected an xz stream, decoding failed in entry {entry} at compressed byte {offset}: {source}",
        path.display()
    )]
    Decode {
        path: PathBuf,
        entry: u64,
        offset: u64,
        source: io::Error,
    },
    #[error("{}: expected a checkpoint {{\"first_index\":n,\"prev\":\"<hex128>\"}}, found {found}", path.display())]
    Checkpoint { path: PathBuf, found: String },
}

impl ArchiveError {
    /// A closure turning an I/O error on `path` into [`ArchiveError::Io`].
    fn io(path: &std::path::Path, what: &'static str) -> impl FnOnce(io::Error) -> ArchiveError {
        let path = path.to_path_buf();
        move |source| ArchiveError::Io { path, what, source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        assert_eq!(ArchiveConfig::default().validate(), Ok(()));
        let bad = ArchiveConfig {
            preset: 10,
            ..ArchiveConfig::default()
        };
        assert_eq!(bad.validate(), Err("preset: expected 0 to 9, found 10".into()));
        let bad = ArchiveConfig {
            queue_episodes: 0,
            ..ArchiveConfig::default()
        };
        assert_eq!(
            bad.validate(),
            Err("queue_episodes: expected at least 1, found 0".into())
        );
    }

    #[test]
    fn config_rejects_unknown_keys_and_fills_defaults() {
        let c: ArchiveConfig = toml::from_str("preset = 3").unwrap();
        assert_eq!((c.preset, c.threads), (3, 1));
        let e = toml::from_str::<ArchiveConfig>("segment_size = 1").unwrap_err();
        assert!(e.to_string().contains("segment_size"), "{e}");
        // The directory comes from --data-dir, never from the file.
        assert!(toml::from_str::<ArchiveConfig>("dir = \"/x\"").is_err());
    }
}
