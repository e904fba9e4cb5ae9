//! The decision log at run time (SPEC §3.4, `docs/FORMATS.md`): signed checkpoints of each
//! shard's log, made from the commitments that are durable (acknowledged by the broker in
//! Kafka mode, handed to the writer in embedded mode), and the data directory's record of
//! where each chain stands, so that the next start continues it. It does not seal batches
//! (`verification/commitment.rs`) nor read chains back from Kafka (`kafka/chains.rs`).
//!
//! The data dir keeps one file per shard, `DIR/log/shard-<k>.jsonl`: a line per commitment,
//! `{"shard","seq","message","log"}` (hex of the §3.3 message and of the log frontier after
//! it), appended by the worker that sealed it *before* the commitment is handed to its
//! writer. After a kill -9 the file may therefore be ahead of the commitments file (a gap
//! an auditor sees, for outputs that were lost), never behind it (a fork). The file is cut
//! back to its last line once it passes [`COMPACT_BYTES`].

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context};
use bizra_dataflows::verification::checkpoint::{self, Checkpoint};
use bizra_dataflows::verification::commitment::{ChainStart, Commitment};
use bizra_dataflows::verification::signature::key_id;
use bizra_dataflows::verification::tlog::Frontier;
use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

/// One signed checkpoint, as written to `kafka.checkpoints_topic` or `--checkpoints`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointRecord {
    pub shard: u32,
    pub tree_size: u64,
    /// The whole C2SP signed note: the tlog-checkpoint body, a blank line, the signature.
    pub note: String,
}

/// The latest checkpoint of each shard this process made, served at `/checkpoint`.
pub type Latest = Arc<Mutex<BTreeMap<u32, CheckpointRecord>>>;

/// Makes the checkpoints of the shards one worker writes.
pub struct Checkpointer {
    deployment: String,
    key: Arc<SigningKey>,
    interval_ms: u64,
    /// Each shard's log as far as it is durable.
    durable: BTreeMap<u32, Frontier>,
    /// Tree size of each shard's last checkpoint.
    published: BTreeMap<u32, u64>,
    /// When the last round of checkpoints was made.
    last_ms: Option<u64>,
    latest: Option<Latest>,
}

impl Checkpointer {
    pub fn new(deployment: &str, key: Arc<SigningKey>, interval_ms: u64, latest: Option<Latest>) -> Self {
        Checkpointer {
            deployment: deployment.to_owned(),
            key,
            interval_ms,
            durable: BTreeMap::new(),
            published: BTreeMap::new(),
            last_ms: None,
            latest,
        }
    }

    /// `shard`'s log was durable up to `log` before this start (its chain was continued from
    /// there): the next checkpoint covers it even if this run seals nothing, so that a log
    /// left without a checkpoint by a kill is covered at the next graceful stop.
    pub fn resume(&mut self, shard: u32, log: Frontier) {
        self.durable.insert(shard, log);
    }

    /// `c` is durable: its shard's log extends to it.
    pub fn durable(&mut self, c: &Commitment) {
        let Some(log) = c.log_frontier() else {
            return;
        };
        let entry = self.durable.entry(c.shard).or_default();
        if log.size() > entry.size() {
            *entry = log;
        }
    }

    /// The checkpoints due at `now_ms`: one per shard whose log grew since its last, once
    /// `interval_ms` has passed since the last round (at once with `all`, at a stop).
    pub fn due(&mut self, now_ms: u64, all: bool) -> Vec<CheckpointRecord> {
        match self.last_ms {
            Some(t) if !all && now_ms < t + self.interval_ms => return Vec::new(),
            None if !all => {
                // The first call starts the interval.
                self.last_ms = Some(now_ms);
                return Vec::new();
            }
            _ => self.last_ms = Some(now_ms),
        }
        let mut out = Vec::new();
        for (shard, log) in &self.durable {
            if self.published.get(shard) == Some(&log.size()) {
                continue;
            }
            out.push(sign(&self.deployment, *shard, log, &self.key));
        }
        for c in &out {
            self.published.insert(c.shard, c.tree_size);
            if let Some(latest) = &self.latest {
                latest
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(c.shard, c.clone());
            }
        }
        out
    }
}

/// The signed checkpoint of `shard`'s log `log`.
pub fn sign(deployment: &str, shard: u32, log: &Frontier, key: &SigningKey) -> CheckpointRecord {
    let note = Checkpoint {
        origin: checkpoint::origin(deployment, shard),
        size: log.size(),
        root: log.root(),
        extensions: Vec::new(),
    }
    .sign(key)
    .expect("log.deployment is checked at config load to make a valid key name");
    CheckpointRecord {
        shard,
        tree_size: log.size(),
        note,
    }
}

/// Bytes past which a shard's log-state file is cut back to its last line.
pub const COMPACT_BYTES: u64 = 1 << 20;

/// One line of a shard's log-state file.
#[derive(Serialize, Deserialize)]
struct StateLine {
    shard: u32,
    seq: u64,
    /// Hex of the commitment's §3.3 message.
    message: String,
    /// Hex of the log frontier after it (`Frontier::to_bytes`).
    log: String,
    /// The key it was signed with: a chain continues under one key.
    key_id: String,
}

/// The log-state directory under a data dir.
pub fn state_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("log")
}

fn shard_file(dir: &Path, shard: u32) -> PathBuf {
    dir.join(format!("shard-{shard}.jsonl"))
}

/// Where each shard's chain stands in the data dir (empty on a first run). A torn last line
/// (a kill during its write) is ignored; any other bad line is an error naming it, and so
/// is a chain signed by another key than `pk` (a chain continues under one key).
///
/// A line that cannot be read (other than a torn last one, whose commitment never reached
/// a writer) is an error naming it, unless `resume_past_unreadable`: then the chain goes on
/// from the newest readable line, logged.
pub fn load(
    data_dir: &Path,
    pk: &VerifyingKey,
    resume_past_unreadable: bool,
) -> anyhow::Result<BTreeMap<u32, ChainStart>> {
    let dir = state_dir(data_dir);
    let mut out = BTreeMap::new();
    if !dir.is_dir() {
        return Ok(out);
    }
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let Some(shard) = path.file_name().and_then(|n| n.to_str()).and_then(|n| {
            n.strip_prefix("shard-")?
                .strip_suffix(".jsonl")?
                .parse::<u32>()
                .ok()
        }) else {
            continue;
        };
        if let Some((start, key)) = load_shard(&path, shard, resume_past_unreadable)? {
            if key != key_id(pk) {
                bail!(
                    "{}: shard {shard}'s chain was signed by key_id {key}, this node's key is {}: a chain continues under one key (give --signing-key the same key, or start from an empty --data-dir)",
                    path.display(),
                    key_id(pk)
                );
            }
            out.insert(shard, start);
        }
    }
    Ok(out)
}

fn load_shard(
    path: &Path,
    shard: u32,
    resume_past_unreadable: bool,
) -> anyhow::Result<Option<(ChainStart, String)>> {
    let f = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let lines: Vec<String> = BufReader::new(f)
        .lines()
        .collect::<Result<_, _>>()
        .with_context(|| format!("{}: read error", path.display()))?;
    let mut last = None;
    for (i, line) in lines.iter().enumerate() {
        let parsed = serde_json::from_str::<StateLine>(line)
            .map_err(|e| e.to_string())
            .and_then(|l| start_of(&l, shard).map(|s| (l.seq, (s, l.key_id))));
        match parsed {
            Ok((seq, s)) if last.as_ref().is_none_or(|(q, _)| seq > *q) => last = Some((seq, s)),
            Ok(_) => {}
            Err(_) if i + 1 == lines.len() => {
                tracing::warn!(file = %path.display(), "ignoring a torn last line of the log state");
            }
            Err(e) if resume_past_unreadable => tracing::warn!(
                file = %path.display(),
                line = i + 1,
                error = %e,
                "--resume-past-unreadable: the chain goes on past a log-state line that cannot be read"
            ),
            Err(e) => bail!(
                "{}:{}: not a log-state line: {e}; shard {shard}'s chain cannot continue from it. If that line is lost for good, `bizra run --resume-past-unreadable` continues the chain from the newest readable line, which an auditor sees as a gap or fork after it",
                path.display(),
                i + 1
            ),
        }
    }
    Ok(last.map(|(_, s)| s))
}

fn start_of(l: &StateLine, shard: u32) -> Result<ChainStart, String> {
    if l.shard != shard {
        return Err(format!("expected shard {shard}, found {}", l.shard));
    }
    let msg = hex::decode(&l.message).map_err(|e| format!("message: {e}"))?;
    let log = hex::decode(&l.log)
        .ok()
        .and_then(|b| Frontier::from_bytes(&b).ok())
        .ok_or("log: expected the hex of a log frontier")?;
    ChainStart::from_message(&msg, log)
}

/// A shard's log-state file, appended by the worker that seals its commitments.
pub struct StateFile {
    dir: PathBuf,
    shard: u32,
    file: File,
    len: u64,
}

impl StateFile {
    /// Opens (creating) the file of `shard` under `data_dir`.
    pub fn open(data_dir: &Path, shard: u32) -> anyhow::Result<StateFile> {
        let dir = state_dir(data_dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = shard_file(&dir, shard);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("{}: cannot open", path.display()))?;
        let len = file.metadata()?.len();
        Ok(StateFile {
            dir,
            shard,
            file,
            len,
        })
    }

    /// Records `c` as its chain's newest commitment (a `write` to the page cache: a kill -9
    /// after it returns keeps it).
    pub fn append(&mut self, c: &Commitment) -> anyhow::Result<()> {
        let (Some(message), Some(log)) = (c.message(), c.log_frontier()) else {
            bail!(
                "commitment shard {} seq {}: no message or log frontier",
                c.shard,
                c.seq
            );
        };
        let mut line = serde_json::to_vec(&StateLine {
            shard: c.shard,
            seq: c.seq,
            message: hex::encode(message),
            log: hex::encode(log.to_bytes()),
            key_id: c.key_id.clone(),
        })?;
        line.push(b'\n');
        if self.len + line.len() as u64 > COMPACT_BYTES {
            // Cut back to this line alone: write it aside, then rename over the file.
            let path = shard_file(&self.dir, self.shard);
            let tmp = path.with_extension("jsonl.tmp");
            std::fs::write(&tmp, &line).with_context(|| format!("{}: cannot write", tmp.display()))?;
            std::fs::rename(&tmp, &path).with_context(|| format!("{}: cannot replace", path.display()))?;
            self.file = OpenOptions::new().append(true).open(&path)?;
            self.len = line.len() as u64;
            return Ok(());
        }
        self.file
            .write_all(&line)
            .with_context(|| format!("{}: cannot write", shard_file(&self.dir, self.shard).display()))?;
        self.len += line.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bizra_dataflows::verification::commitment::{deployment_run, Chain};
    use bizra_dataflows::verification::merkle::leaf_hash;

    fn sealed(n: u64) -> Vec<Commitment> {
        let key = SigningKey::from_bytes(&[5; 32]);
        let mut chain = Chain::new(deployment_run("t"), 2);
        (0..n)
            .map(|seq| chain.seal(seq, &[leaf_hash(&seq.to_be_bytes())], &key))
            .collect()
    }

    #[test]
    fn a_data_dir_continues_each_chain_after_its_last_recorded_commitment() {
        let dir = tempfile::tempdir().unwrap();
        let cs = sealed(5);
        let mut f = StateFile::open(dir.path(), 2).unwrap();
        for c in &cs {
            f.append(c).unwrap();
        }
        let pk = SigningKey::from_bytes(&[5; 32]).verifying_key();
        let starts = load(dir.path(), &pk, false).unwrap();
        let other = SigningKey::from_bytes(&[6; 32]).verifying_key();
        let err = load(dir.path(), &other, false).unwrap_err().to_string();
        assert!(err.contains("continues under one key"), "{err}");
        let s = &starts[&2];
        assert_eq!(s.next_seq, 5);
        assert_eq!(s.log.size(), 5);
        // The chain resumed from the file seals exactly what an unbroken chain seals next.
        let key = SigningKey::from_bytes(&[5; 32]);
        let mut unbroken = Chain::new(deployment_run("t"), 2);
        for c in &cs {
            unbroken.seal(c.seq, &[leaf_hash(&c.seq.to_be_bytes())], &key);
        }
        let mut resumed = Chain::resume(deployment_run("t"), 2, Some(s));
        let leaf = [leaf_hash(b"next")];
        assert_eq!(resumed.seal(5, &leaf, &key), unbroken.seal(5, &leaf, &key));
    }

    #[test]
    fn a_torn_last_line_is_ignored_and_a_bad_middle_line_is_an_error_unless_overridden() {
        let dir = tempfile::tempdir().unwrap();
        let cs = sealed(3);
        let mut f = StateFile::open(dir.path(), 2).unwrap();
        for c in &cs {
            f.append(c).unwrap();
        }
        let path = shard_file(&state_dir(dir.path()), 2);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("{\"shard\":2,\"seq\":3,\"mess");
        std::fs::write(&path, &text).unwrap();
        let pk = SigningKey::from_bytes(&[5; 32]).verifying_key();
        assert_eq!(load(dir.path(), &pk, false).unwrap()[&2].next_seq, 3);
        std::fs::write(&path, format!("garbage\n{text}")).unwrap();
        let err = load(dir.path(), &pk, false).unwrap_err().to_string();
        assert!(err.contains("shard-2.jsonl:1"), "{err}");
        assert!(err.contains("--resume-past-unreadable"), "{err}");
        // The override goes on from the newest line that can be read.
        std::fs::write(&path, format!("{text}\ngarbage\nmore garbage")).unwrap();
        assert!(load(dir.path(), &pk, false).is_err());
        assert_eq!(load(dir.path(), &pk, true).unwrap()[&2].next_seq, 3);
    }

    #[test]
    fn the_state_file_is_cut_back_past_its_bound_and_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let cs = sealed(3);
        let mut f = StateFile::open(dir.path(), 2).unwrap();
        f.len = COMPACT_BYTES; // as if full
        f.append(&cs[0]).unwrap();
        f.append(&cs[1]).unwrap();
        let path = shard_file(&state_dir(dir.path()), 2);
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 2);
        let pk = SigningKey::from_bytes(&[5; 32]).verifying_key();
        assert_eq!(load(dir.path(), &pk, false).unwrap()[&2].next_seq, 2);
    }

    #[test]
    fn checkpoints_are_made_once_per_interval_for_logs_that_grew_and_at_once_at_a_stop() {
        let key = Arc::new(SigningKey::from_bytes(&[5; 32]));
        let mut cp = Checkpointer::new("t", key.clone(), 1000, None);
        let cs = sealed(3);
        cp.durable(&cs[0]);
        assert!(cp.due(0, false).is_empty(), "the first call starts the interval");
        cp.durable(&cs[1]);
        assert!(cp.due(500, false).is_empty());
        let due = cp.due(1000, false);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].tree_size, 2);
        assert!(cp.due(2500, false).is_empty(), "the log did not grow");
        cp.durable(&cs[2]);
        let last = cp.due(2600, true);
        assert_eq!(last[0].tree_size, 3);
        let opened =
            checkpoint::open_note(&last[0].note, &checkpoint::origin("t", 2), &key.verifying_key()).unwrap();
        let mut log = Frontier::new();
        for c in &cs {
            log.push(leaf_hash(&c.message().unwrap()));
        }
        assert_eq!((opened.size, opened.root), (3, log.root()));
    }
}
