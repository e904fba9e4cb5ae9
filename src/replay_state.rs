//! The replay guard's state in `--data-dir` (embedded mode): `DIR/replay/replay.log`, the
//! replay-log records of `verification::replay_log` framed one after another. At start it is
//! read back into the state the workers begin with; during the run a writer thread appends
//! every record the workers make, each chunk with one `write` (so a kill -9 loses at most the
//! records not yet handed to it, and a torn last frame is dropped on reading), and compacts the
//! file — rewrites it as the restored state, one snapshot per bucket — when it has grown past
//! four windows. It does not decide what is recorded (the verifier does) nor read Kafka
//! (`kafka/replay.rs` restores from the replay topic).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use anyhow::Context;
use bizra_dataflows::verification::batcher::Restored;
use bizra_dataflows::verification::replay::BUCKETS;
use bizra_dataflows::verification::replay_log::{restore, restore_start, unframe, ReplayRecord};
use bizra_dataflows::verification::sampling::SampleKey;

/// Where the replay state lives under a data directory.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("replay").join("replay.log")
}

/// The state a log of `records` describes (in `key`'s buckets, `per_bucket` each), read from
/// the latest point where every bucket was written whole (or from its start).
pub fn state_of(
    records: &[ReplayRecord],
    key: &SampleKey,
    per_bucket: usize,
) -> Vec<Vec<bizra_dataflows::verification::replay::Sighting>> {
    let positions: Vec<(u64, &ReplayRecord)> =
        records.iter().enumerate().map(|(i, r)| (i as u64, r)).collect();
    let start = restore_start(&positions).unwrap_or(0) as usize;
    restore(records[start..].iter().cloned(), key, per_bucket)
}

/// Reads `DIR/replay/replay.log` (creating the directory on first use) and returns the state
/// it holds, and the length of its intact prefix (where appending resumes; a frame torn by a
/// crash after it is cut off).
pub fn load(data_dir: &Path, key: &SampleKey, per_bucket: usize) -> anyhow::Result<(Restored, u64)> {
    let file = path(data_dir);
    let dir = file.parent().expect("a parent");
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let started = Instant::now();
    let bytes = match std::fs::read(&file) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", file.display())),
    };
    let (records, intact) = unframe(&bytes);
    if intact < bytes.len() {
        tracing::warn!(
            file = %file.display(),
            dropped_bytes = bytes.len() - intact,
            "the replay state ends in a torn record (a crash while writing it); dropping it"
        );
    }
    let state = state_of(&records, key, per_bucket);
    let sightings: usize = state.iter().map(Vec::len).sum();
    tracing::info!(
        file = %file.display(),
        records = records.len(),
        sightings,
        ms = started.elapsed().as_millis() as u64,
        "replay state restored"
    );
    Ok((Arc::new(state), intact as u64))
}

/// The writer thread of the replay state: appends the framed records it is sent to
/// `data_dir`'s log from `intact` on, compacting it when it passes `compact_bytes`. A write
/// error is fatal (like every output file's).
pub fn spawn_writer(
    data_dir: &Path,
    intact: u64,
    key: SampleKey,
    per_bucket: usize,
    compact_bytes: u64,
) -> anyhow::Result<Writer> {
    let file = path(data_dir);
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .read(true)
        .open(&file)
        .with_context(|| format!("cannot open {}", file.display()))?;
    f.set_len(intact)
        .with_context(|| format!("cannot cut {} to its intact records", file.display()))?;
    let mut log = Log {
        path: file,
        file: f,
        len: intact,
        key,
        per_bucket,
    };
    log.seek_end()?;
    let (tx, rx) = sync_channel::<Vec<u8>>(16);
    let handle = std::thread::Builder::new()
        .name("bizra-replay-log".into())
        .spawn(move || {
            for chunk in rx {
                let done = log.append(&chunk).and_then(|()| {
                    if log.len > compact_bytes {
                        log.compact()
                    } else {
                        Ok(())
                    }
                });
                if let Err(e) = done {
                    crate::fatal::halt(format_args!("writing {}: {e}", log.path.display()));
                }
            }
            Ok(())
        })?;
    Ok((tx, handle))
}

/// The writer thread's input and handle.
pub type Writer = (SyncSender<Vec<u8>>, JoinHandle<io::Result<()>>);

/// Compaction threshold for a window of `window_ids`: four windows of records.
pub fn compact_bytes(window_ids: usize) -> u64 {
    let per_window = (window_ids.max(BUCKETS) * 26 + BUCKETS * 30) as u64;
    (4 * per_window).max(1 << 20)
}

struct Log {
    path: PathBuf,
    file: File,
    len: u64,
    key: SampleKey,
    per_bucket: usize,
}

impl Log {
    fn seek_end(&mut self) -> io::Result<()> {
        use std::io::Seek;
        self.file.seek(io::SeekFrom::Start(self.len)).map(|_| ())
    }

    fn append(&mut self, chunk: &[u8]) -> io::Result<()> {
        self.file.write_all(chunk)?;
        self.len += chunk.len() as u64;
        Ok(())
    }

    /// Rewrites the log as the state it describes (one snapshot per bucket), through a
    /// temporary file moved into place, so a crash leaves the old log or the new one.
    fn compact(&mut self) -> io::Result<()> {
        use std::io::Seek;
        let started = Instant::now();
        let mut bytes = Vec::with_capacity(self.len as usize);
        self.file.seek(io::SeekFrom::Start(0))?;
        (&self.file).take(self.len).read_to_end(&mut bytes)?;
        let (records, _) = unframe(&bytes);
        drop(bytes);
        let state = state_of(&records, &self.key, self.per_bucket);
        drop(records);
        let mut out = Vec::new();
        for (b, window) in state.iter().enumerate() {
            for r in ReplayRecord::snapshot(self.key.id(), 0, b as u8, window) {
                r.frame(&mut out);
            }
        }
        let tmp = self.path.with_extension("log.tmp");
        let mut t = File::create(&tmp)?;
        t.write_all(&out)?;
        t.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        let before = self.len;
        self.file = OpenOptions::new().read(true).write(true).open(&self.path)?;
        self.len = out.len() as u64;
        self.seek_end()?;
        tracing::debug!(
            before,
            after = self.len,
            ms = started.elapsed().as_millis() as u64,
            "replay state compacted"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bizra_dataflows::verification::replay::{provenance, Sighting};

    fn frames(records: &[ReplayRecord]) -> Vec<u8> {
        let mut out = Vec::new();
        for r in records {
            r.frame(&mut out);
        }
        out
    }

    #[test]
    fn what_the_writer_appends_loads_back_and_survives_compaction_and_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let key = SampleKey::from_secret(&[4; 32]);
        let (state, intact) = load(dir.path(), &key, 8).unwrap();
        assert_eq!(intact, 0);
        assert!(state.iter().all(Vec::is_empty));
        let sightings: Vec<(u8, Sighting)> = (0..3000u64)
            .map(|n| {
                let s = Sighting::new(n * 31, provenance(None, n, &[0; 32]), n as i64, false);
                (key.bucket(s.fp), s)
            })
            .collect();
        // A tiny threshold: the writer compacts after nearly every chunk.
        let (tx, handle) = spawn_writer(dir.path(), 0, key.clone(), 8, 4096).unwrap();
        for chunk in sightings.chunks(100) {
            tx.send(frames(&ReplayRecord::deltas(key.id(), 0, chunk.to_vec())))
                .unwrap();
        }
        drop(tx);
        handle.join().unwrap().unwrap();
        let (state, intact) = load(dir.path(), &key, 8).unwrap();
        let want = state_of(&ReplayRecord::deltas(key.id(), 0, sightings.clone()), &key, 8);
        assert_eq!(*state, want);
        assert!(state.iter().all(|w| w.len() <= 8) && state.iter().any(|w| w.len() == 8));
        // A torn frame at the end is cut off, and appending resumes at the intact prefix.
        let file = path(dir.path());
        let mut f = OpenOptions::new().append(true).open(&file).unwrap();
        f.write_all(&[9, 0, 0, 0, 1, 2]).unwrap();
        let (again, at) = load(dir.path(), &key, 8).unwrap();
        assert_eq!(at, intact);
        assert_eq!(*again, want);
        let (tx, handle) = spawn_writer(dir.path(), at, key.clone(), 8, u64::MAX).unwrap();
        drop(tx);
        handle.join().unwrap().unwrap();
        assert_eq!(std::fs::metadata(&file).unwrap().len(), intact);
    }
}
