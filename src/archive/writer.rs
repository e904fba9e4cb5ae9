//! The writer pool: background threads that append episodes to their shards' segments, so no xz
//! runs on a timely worker. Shard `s` is written by thread `s % threads`, so each chain is
//! appended in submission order. Submitting never blocks: a full queue gives the episode back,
//! which is the caller's backpressure. Failed writes are reported, not retried.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender, TryIter, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use bizra_dataflows::episode::{chain, Digest64, Episode, ROOT_0};
use bizra_dataflows::operators::wall_ms;

use crate::recall::RecentEpisodes;
use sha3::{Digest, Sha3_512};

use super::idfilter::{id_key, IdFilter};
use super::retention;
use super::segment::{
    encode_entry, list_segments, parse_entry, read_checkpoint, segment_path, shard_dir, SegmentEnd,
    SegmentReader, SegmentWriter, ENTRY_HEADER, MAX_ENTRY_BYTES,
};
use super::{ArchiveConfig, ArchiveError};

/// Most episodes committed as one xz block.
const GROUP_EPISODES: usize = 32;

/// How often an idle writer applies retention (it also does after every roll).
const RETENTION_INTERVAL: Duration = Duration::from_secs(60);

/// Counters of the pool, for the metrics exporter.
#[derive(Debug, Default)]
pub struct ArchiveStats {
    /// Episodes written and acknowledged.
    pub episodes: AtomicU64,
    /// Content bytes appended: the entries, before compression.
    pub content_bytes: AtomicU64,
    /// Compressed bytes written to segment files; `content_bytes / xz_bytes` is the ratio.
    pub xz_bytes: AtomicU64,
    /// Failed writes, segment finishes and retention passes (each is also logged).
    pub errors: AtomicU64,
    /// Segments deleted by retention.
    pub segments_deleted: AtomicU64,
}

/// The outcome of one submitted episode.
#[derive(Debug)]
pub struct Ack {
    pub ticket: u64,
    pub shard: u32,
    /// The episode's index in its shard's chain, once its bytes are in the file.
    pub result: Result<u64, ArchiveError>,
}

/// One submitted episode: its ticket and where its acknowledgement goes.
type Job = (Episode, u64, Sender<Ack>);

/// A submitter's side of the pool: its own acknowledgements, so each timely worker sees only
/// the acks of what it submitted. Lanes are `Send`; make one per worker with
/// [`ArchiveHandle::lane`].
pub struct Lane {
    queues: Vec<SyncSender<Job>>,
    ack_tx: Sender<Ack>,
    acks: Receiver<Ack>,
    /// Set when a writer thread ends. While any lane exists that can only be a panic, after
    /// which the episodes queued to that thread are never acknowledged.
    stopped: Arc<AtomicBool>,
}

impl Lane {
    /// Queues `episode` for its shard's writer, or gives it back if that queue is full (or its
    /// thread is gone). Never blocks.
    #[allow(clippy::result_large_err)] // the `Err` is the episode moved back, not an error
    pub fn try_submit(&self, episode: Episode, ticket: u64) -> Result<(), Episode> {
        let queue = &self.queues[episode.shard as usize % self.queues.len()];
        queue
            .try_send((episode, ticket, self.ack_tx.clone()))
            .map_err(|e| match e {
                TrySendError::Full((episode, ..)) | TrySendError::Disconnected((episode, ..)) => episode,
            })
    }

    /// The acknowledgements of this lane available now, in write order per writer thread.
    pub fn try_acks(&self) -> TryIter<'_, Ack> {
        self.acks.try_iter()
    }

    /// True once a writer thread has ended: with this lane still alive, it died (a panic), and
    /// what it was given will never be acknowledged.
    pub fn writer_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// A lane whose writer thread is gone, for tests of what its users do then.
    #[cfg(test)]
    pub(crate) fn with_dead_writer() -> Lane {
        let (queue, _) = mpsc::sync_channel(1);
        let (ack_tx, acks) = mpsc::channel();
        Lane {
            queues: vec![queue],
            ack_tx,
            acks,
            stopped: Arc::new(AtomicBool::new(true)),
        }
    }
}

/// Marks its writer thread as stopped when dropped: at the end of `run`, or while a panic
/// unwinds it.
struct StopGuard(Arc<AtomicBool>);

impl Drop for StopGuard {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// The owner's side of the pool. Dropping it is [`ArchiveHandle::close`] without the acks.
pub struct ArchiveHandle {
    /// The handle's own lane, for a single submitter.
    lane: Option<Lane>,
    threads: Vec<JoinHandle<()>>,
    stats: Arc<ArchiveStats>,
}

impl ArchiveHandle {
    /// A new lane; the writers stop only once every lane is dropped and the handle closed.
    pub fn lane(&self) -> Lane {
        let (ack_tx, acks) = mpsc::channel();
        Lane {
            queues: self.own().queues.clone(),
            ack_tx,
            acks,
            stopped: self.own().stopped.clone(),
        }
    }

    fn own(&self) -> &Lane {
        self.lane.as_ref().expect("an open handle has its lane")
    }

    /// [`Lane::try_submit`] on the handle's own lane.
    #[allow(clippy::result_large_err)] // the `Err` is the episode moved back, not an error
    pub fn try_submit(&self, episode: Episode, ticket: u64) -> Result<(), Episode> {
        self.own().try_submit(episode, ticket)
    }

    /// [`Lane::try_acks`] on the handle's own lane.
    pub fn try_acks(&self) -> TryIter<'_, Ack> {
        self.own().try_acks()
    }

    pub fn stats(&self) -> &Arc<ArchiveStats> {
        &self.stats
    }

    /// Writes everything queued (by every lane, which must all be dropped by now), finishes the
    /// open segments and returns the acks of the handle's own lane not yet taken.
    pub fn close(mut self) -> Vec<Ack> {
        let lane = self.lane.take().expect("an open handle has its lane");
        let Lane { queues, acks, .. } = lane;
        drop(queues);
        self.stop();
        acks.try_iter().collect()
    }

    fn stop(&mut self) {
        self.lane = None;
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                tracing::error!("archive writer thread panicked");
            }
        }
    }
}

impl Drop for ArchiveHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The state of one writer thread: the shards it owns.
pub struct ArchiveWriter {
    cfg: Arc<ArchiveConfig>,
    shards: BTreeMap<u32, Shard>,
    stats: Arc<ArchiveStats>,
    /// The recall cache written episodes go into, if any.
    recent: Option<Arc<RecentEpisodes>>,
    /// Shards whose commit failed in the current group, with the file and the error.
    failed: HashMap<u32, (PathBuf, String)>,
    /// Retention passes of the pool's threads take turns.
    retention: Arc<Mutex<()>>,
    last_retention: Instant,
}

/// A shard's tip and open segment.
struct Shard {
    /// The tip as of the last commit: what the file holds.
    committed: (u64, Digest64),
    next_index: u64,
    root: Digest64,
    segment: Option<SegmentWriter>,
}

impl Shard {
    /// A shard whose file content ends at `next_index` with `root`, no segment open.
    fn at(next_index: u64, root: Digest64) -> Shard {
        Shard {
            committed: (next_index, root),
            next_index,
            root,
            segment: None,
        }
    }

    /// After a failed push or commit: cuts `segment` back to its last commit and returns the
    /// chain to it; the next episode starts a new segment there.
    fn rollback(&mut self, segment: SegmentWriter) {
        let path = segment.path.clone();
        if let Err(e) = segment.abandon() {
            tracing::warn!(path = %path.display(), error = %e, "cannot cut failed segment back");
        }
        (self.next_index, self.root) = self.committed;
    }
}

impl ArchiveWriter {
    /// Validates `cfg`, opens (or creates) the archive directory, recovers every shard's tip
    /// and starts the writer threads.
    pub fn spawn(cfg: ArchiveConfig) -> Result<ArchiveHandle, ArchiveError> {
        Self::spawn_with_recall(cfg, None)
    }

    /// [`ArchiveWriter::spawn`], and every written episode also goes into `recent`.
    pub fn spawn_with_recall(
        cfg: ArchiveConfig,
        recent: Option<Arc<RecentEpisodes>>,
    ) -> Result<ArchiveHandle, ArchiveError> {
        cfg.validate().map_err(ArchiveError::Config)?;
        open_dir(&cfg.dir)?;
        let cfg = Arc::new(cfg);
        let stats = Arc::new(ArchiveStats::default());
        let retention = Arc::new(Mutex::new(()));
        let mut writers: Vec<ArchiveWriter> = (0..cfg.threads)
            .map(|_| ArchiveWriter {
                cfg: cfg.clone(),
                shards: BTreeMap::new(),
                stats: stats.clone(),
                recent: recent.clone(),
                failed: HashMap::new(),
                retention: retention.clone(),
                last_retention: Instant::now(),
            })
            .collect();
        for shard in super::segment::list_shards(&cfg.dir)? {
            let tip = recover(&shard_dir(&cfg.dir, shard), &stats)?;
            writers[shard as usize % cfg.threads].shards.insert(shard, tip);
        }
        let (ack_tx, acks) = mpsc::channel();
        let stopped = Arc::new(AtomicBool::new(false));
        let (mut queues, mut threads) = (Vec::new(), Vec::new());
        for (i, writer) in writers.into_iter().enumerate() {
            let (tx, rx) = mpsc::sync_channel(cfg.queue_episodes);
            let guard = StopGuard(stopped.clone());
            let thread = std::thread::Builder::new()
                .name(format!("bizra-archive-{i}"))
                .spawn(move || {
                    let _guard = guard;
                    writer.run(rx)
                })
                .map_err(ArchiveError::io(&cfg.dir, "start archive writer thread"))?;
            queues.push(tx);
            threads.push(thread);
        }
        Ok(ArchiveHandle {
            lane: Some(Lane {
                queues,
                ack_tx,
                acks,
                stopped,
            }),
            threads,
            stats,
        })
    }

    fn run(mut self, queue: Receiver<Job>) {
        self.retain();
        loop {
            match queue.recv_timeout(RETENTION_INTERVAL) {
                Ok(first) => {
                    // Group commit: whatever else is already queued goes into the same xz
                    // block, so the block's cost is shared when the writer is behind.
                    let mut group = vec![first];
                    while group.len() < GROUP_EPISODES {
                        match queue.try_recv() {
                            Ok(job) => group.push(job),
                            Err(_) => break,
                        }
                    }
                    self.write_group(group);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if self.last_retention.elapsed() >= RETENTION_INTERVAL {
                self.retain();
            }
        }
        let open: Vec<SegmentWriter> = self
            .shards
            .values_mut()
            .filter_map(|s| s.segment.take())
            .collect();
        for segment in open {
            self.finish(segment);
        }
    }

    /// Writes a group of episodes: stages each on its shard's chain, commits every shard
    /// touched (one xz block each), then acknowledges each episode — as written if its shard
    /// committed, else with the error (the shard's chain is rolled back to its last commit).
    fn write_group(&mut self, group: Vec<Job>) {
        if crate::faults::armed(crate::faults::ARCHIVE_WRITER_PANIC) {
            panic!("injected fault {}", crate::faults::ARCHIVE_WRITER_PANIC);
        }
        let staged: Vec<Result<u64, ArchiveError>> = group.iter().map(|(e, ..)| self.stage(e)).collect();
        self.commit_staged();
        let failed = std::mem::take(&mut self.failed);
        for ((episode, ticket, acks), mut result) in group.into_iter().zip(staged) {
            if let (Ok(_), Some(e)) = (&result, failed.get(&episode.shard)) {
                result = Err(ArchiveError::Io {
                    path: e.0.clone(),
                    what: "commit episodes",
                    source: std::io::Error::other(e.1.clone()),
                });
            }
            match &result {
                Ok(_) => {
                    self.stats.episodes.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(shard = episode.shard, seq = episode.seq, error = %e, "archive write failed");
                }
            }
            let shard = episode.shard;
            if let (Some(recent), Ok(_)) = (&self.recent, &result) {
                recent.insert(Arc::new(episode));
            }
            // A lane dropped before its acks arrived no longer wants them.
            let _ = acks.send(Ack {
                ticket,
                shard,
                result,
            });
        }
    }

    /// Commits every shard with staged episodes.
    fn commit_staged(&mut self) {
        let staged: Vec<u32> = self
            .shards
            .iter()
            .filter(|(_, s)| s.committed != (s.next_index, s.root))
            .map(|(&id, _)| id)
            .collect();
        for id in staged {
            self.commit(id);
        }
    }

    /// Commits shard `id`'s staged episodes as one xz block, and rolls its segment once it
    /// holds `segment_bytes`. A failure is kept in `failed` (every episode of the shard in
    /// this group is then reported failed) and the chain goes back to the last commit.
    fn commit(&mut self, id: u32) {
        let shard = self.shards.get_mut(&id).expect("a known shard");
        let Some(segment) = shard.segment.as_mut() else {
            return;
        };
        match segment.commit(self.cfg.fsync) {
            Ok(xz_bytes) => {
                self.stats.xz_bytes.fetch_add(xz_bytes, Ordering::Relaxed);
                shard.committed = (shard.next_index, shard.root);
                if segment.content_bytes >= self.cfg.segment_bytes {
                    let full = shard.segment.take().expect("the segment just committed");
                    self.finish(full);
                    self.retain();
                }
            }
            Err(e) => {
                let segment = shard.segment.take().expect("the segment just committed");
                self.failed.insert(id, (segment.path.clone(), e.to_string()));
                shard.rollback(segment);
            }
        }
    }

    /// Stages `episode` on its shard's chain (compressed into the open block, not yet in the
    /// file); returns its index.
    fn stage(&mut self, episode: &Episode) -> Result<u64, ArchiveError> {
        let segment_bytes = self.cfg.segment_bytes;
        let full = |s: &Shard| {
            s.segment
                .as_ref()
                .is_some_and(|g| g.content_bytes >= segment_bytes)
        };
        if self.shards.get(&episode.shard).is_some_and(full) {
            self.commit(episode.shard);
        }
        let cfg = &self.cfg;
        let shard = self.shards.entry(episode.shard).or_insert(Shard::at(0, ROOT_0));
        let segment = match &mut shard.segment {
            Some(segment) => segment,
            empty => {
                let path = segment_path(&cfg.dir, episode.shard, shard.next_index);
                empty.insert(SegmentWriter::create(
                    path,
                    cfg.preset,
                    cfg.match_depth,
                    cfg.fsync,
                )?)
            }
        };
        let canonical = episode.canonical();
        if canonical.len() + ENTRY_HEADER > MAX_ENTRY_BYTES as usize {
            // Readers refuse such an entry; nothing was pushed, the chain is unchanged.
            let source = std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "an episode of {} bytes, more than an entry may hold ({MAX_ENTRY_BYTES})",
                    canonical.len()
                ),
            );
            let (path, what) = (segment.path.clone(), "append episode");
            return Err(ArchiveError::Io { path, what, source });
        }
        let hash: Digest64 = Sha3_512::digest(&canonical).into();
        let root = chain(&shard.root, &hash);
        let entry = encode_entry(
            shard.next_index,
            wall_ms().max(0) as u64,
            &shard.root,
            &hash,
            &root,
            &canonical,
        );
        match segment.push(&entry) {
            Ok(()) => {
                self.stats
                    .content_bytes
                    .fetch_add(entry.len() as u64, Ordering::Relaxed);
                // Kept even if the block fails later: an extra id only makes a lookup scan.
                segment.ids.extend(episode.records.iter().map(|r| id_key(&r.id)));
            }
            Err(source) => {
                let segment = shard.segment.take().expect("the segment just pushed to");
                let path = segment.path.clone();
                shard.rollback(segment);
                // Episodes of this shard staged earlier in the group went with the block.
                self.failed
                    .insert(episode.shard, (path.clone(), source.to_string()));
                let what = "append episode";
                return Err(ArchiveError::Io { path, what, source });
            }
        }
        let index = shard.next_index;
        shard.next_index += 1;
        shard.root = root;
        Ok(index)
    }

    /// Ends a segment's xz stream and writes its id filter; a failure is logged and counted
    /// (its episodes stay readable; without a filter, lookups scan the segment).
    fn finish(&self, mut segment: SegmentWriter) {
        let path = segment.path.clone();
        let ids = std::mem::take(&mut segment.ids);
        let finished = segment.finish(self.cfg.fsync).and_then(|bytes| {
            self.stats.xz_bytes.fetch_add(bytes, Ordering::Relaxed);
            IdFilter::build(&ids).write(&path)
        });
        if let Err(e) = finished {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(path = %path.display(), error = %e, "cannot finish archive segment");
        }
    }

    /// Applies retention to the whole archive; failures are logged and counted.
    fn retain(&mut self) {
        self.last_retention = Instant::now();
        let _turn = self.retention.lock().unwrap_or_else(PoisonError::into_inner);
        let max_age = Duration::from_millis(self.cfg.retention_age_ms);
        match retention::enforce(
            &self.cfg.dir,
            self.cfg.retention_bytes,
            max_age,
            SystemTime::now(),
        ) {
            Ok(deleted) => {
                self.stats.segments_deleted.fetch_add(deleted, Ordering::Relaxed);
            }
            Err(e) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "archive retention failed");
            }
        }
    }
}

/// Creates `dir` if its parent exists and checks that files can be created in it.
fn open_dir(dir: &Path) -> Result<(), ArchiveError> {
    if !dir.is_dir() {
        fs::create_dir(dir).map_err(ArchiveError::io(dir, "create archive directory"))?;
    }
    let probe = dir.join(".write-probe");
    File::create(&probe)
        .and_then(|_| fs::remove_file(&probe))
        .map_err(ArchiveError::io(dir, "write in archive directory"))
}

/// A shard's tip from its newest segment with a complete episode (normally the newest one),
/// else from its checkpoint, else the chain's start. A writer never appends to a found segment.
/// The tip of a shard: after the last good entry of its newest segment that has one (else its
/// checkpoint, else the start). A torn tail (kill -9 while writing) is expected; a corrupt or
/// malformed entry is logged and counted in `stats.errors`, and the chain goes on from the
/// last good entry (`audit verify` will report the break).
fn recover(shard_dir: &Path, stats: &ArchiveStats) -> Result<Shard, ArchiveError> {
    for (_, path) in list_segments(shard_dir)?.iter().rev() {
        let mut reader = SegmentReader::open(path)?;
        let mut last = None;
        let bad = |problem: &dyn std::fmt::Display| {
            stats.errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(segment = %path.display(), %problem, "archive recovery: a damaged segment; the chain goes on from its last good entry");
        };
        loop {
            match reader.next_frame() {
                Ok(body) => match parse_entry(path, reader.entries, &body) {
                    Ok(entry) => last = Some(entry),
                    Err(e) => {
                        bad(&e);
                        break;
                    }
                },
                Err(SegmentEnd::Finished) => break,
                Err(SegmentEnd::Torn { partial_bytes }) => {
                    tracing::info!(segment = %path.display(), partial_bytes, "archive recovery: torn tail (the writer stopped mid-entry)");
                    break;
                }
                Err(SegmentEnd::Corrupt { offset, error }) => {
                    bad(&format_args!(
                        "xz decoding failed at compressed byte {offset}: {error}"
                    ));
                    break;
                }
                Err(SegmentEnd::Malformed(e)) => {
                    bad(&e);
                    break;
                }
            }
        }
        if let Some(e) = last {
            return Ok(Shard::at(e.index + 1, e.root));
        }
    }
    let (next_index, root) = match read_checkpoint(shard_dir)? {
        Some(cp) => (cp.first_index, cp.prev),
        None => (0, ROOT_0),
    };
    Ok(Shard::at(next_index, root))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::test_util::{config, episode, episodes, write};
    use crate::archive::{self, verify};

    fn stored(dir: &Path) -> Vec<archive::Stored> {
        archive::episodes(dir).unwrap().map(Result::unwrap).collect()
    }

    #[test]
    fn round_trip_on_two_shards_through_two_threads() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = ArchiveConfig {
            threads: 2,
            segment_bytes: 4000,
            ..config(dir.path())
        };
        let (a, b) = (episodes(0, 20), episodes(1, 20));
        let interleaved: Vec<Episode> = a
            .iter()
            .zip(&b)
            .flat_map(|(x, y)| [x.clone(), y.clone()])
            .collect();
        let acks = write(&cfg, interleaved);
        assert_eq!(acks.len(), 40);
        for (ticket, ack) in acks.iter().enumerate() {
            let index = *ack.result.as_ref().unwrap();
            assert_eq!((ack.shard, index), (ticket as u32 % 2, ticket as u64 / 2));
        }
        let back = stored(dir.path());
        assert_eq!(
            back.iter().map(|s| &s.episode).collect::<Vec<_>>(),
            a.iter().chain(&b).collect::<Vec<_>>()
        );
        assert!(
            list_segments(&shard_dir(dir.path(), 0)).unwrap().len() > 2,
            "rolled"
        );
        let report = verify(dir.path()).unwrap();
        assert!(report.is_ok(), "{report}");
        assert!(
            report
                .shards
                .iter()
                .all(|s| s.episodes == 20 && s.warnings.is_empty()),
            "{report}"
        );
    }

    #[test]
    fn repeated_ids_and_identical_episodes_extend_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let same = episode(0, 7, &["dup", "dup", "x"]);
        let acks = write(&config(dir.path()), vec![same.clone(), same.clone(), same]);
        let indexes: Vec<u64> = acks.into_iter().map(|a| a.result.unwrap()).collect();
        assert_eq!(indexes, [0, 1, 2]);
        let back = stored(dir.path());
        assert_ne!(back[0].root, back[1].root);
        let report = verify(dir.path()).unwrap();
        assert!(report.is_ok() && report.shards[0].episodes == 3, "{report}");
    }

    #[test]
    fn a_restart_starts_a_new_segment_that_continues_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let eps = episodes(3, 6);
        let cfg = ArchiveConfig {
            fsync: true,
            ..config(dir.path())
        };
        write(&cfg, eps[..4].to_vec());
        let acks = write(&cfg, eps[4..].to_vec());
        assert_eq!(
            acks.iter()
                .map(|a| *a.result.as_ref().unwrap())
                .collect::<Vec<_>>(),
            [4, 5]
        );
        let segments = list_segments(&shard_dir(dir.path(), 3)).unwrap();
        assert_eq!(segments.iter().map(|s| s.0).collect::<Vec<_>>(), [0, 4]);
        assert!(verify(dir.path()).unwrap().is_ok());
    }

    #[test]
    fn a_corrupt_newest_segment_is_counted_and_the_chain_goes_on_from_its_last_good_entry() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        let eps = episodes(0, 12);
        write(&cfg, eps[..10].to_vec());
        let seg = segment_path(dir.path(), 0, 0);
        let mut bytes = fs::read(&seg).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x55;
        fs::write(&seg, &bytes).unwrap();

        let handle = ArchiveWriter::spawn(cfg.clone()).unwrap();
        assert_eq!(handle.stats().errors.load(Ordering::Relaxed), 1);
        let mut good = 0;
        let mut reader = SegmentReader::open(&seg).unwrap();
        while let Some(Ok(_)) = reader.next_entry() {
            good += 1;
        }
        assert!(good < 10, "the flipped byte damaged some entry");
        for (ticket, ep) in eps[10..].iter().enumerate() {
            handle.try_submit(ep.clone(), ticket as u64).unwrap();
        }
        let acks = handle.close();
        let indexes: Vec<u64> = acks.into_iter().map(|a| a.result.unwrap()).collect();
        assert_eq!(
            indexes,
            [good, good + 1],
            "the chain continues after the last good entry"
        );
        let report = verify(dir.path()).unwrap();
        assert!(!report.is_ok(), "verify still reports the damage: {report}");
    }

    /// Compressed file length after each episode, from a writer of one segment.
    fn boundaries(path: &Path, eps: &[Episode]) -> Vec<u64> {
        let mut w = SegmentWriter::create(path.to_path_buf(), 0, 0, false).unwrap();
        let (mut root, mut lens, mut len) = (ROOT_0, Vec::new(), 0);
        for (i, ep) in eps.iter().enumerate() {
            let hash = ep.content_hash();
            let next = chain(&root, &hash);
            len += w
                .append(
                    &encode_entry(i as u64, 1, &root, &hash, &next, &ep.canonical()),
                    false,
                )
                .unwrap();
            lens.push(len);
            root = next;
        }
        lens // not finished: as if killed after the last flush
    }

    #[test]
    fn a_segment_cut_anywhere_verifies_to_its_last_complete_episode_and_the_chain_goes_on() {
        let eps = episodes(0, 8);
        for cut in [
            "at 0",
            "in header",
            "at episode 3",
            "inside episode 4",
            "at end",
            "near end",
        ] {
            let dir = tempfile::tempdir().unwrap();
            let path = segment_path(dir.path(), 0, 0);
            let ends = boundaries(&path, &eps[..5]);
            let (len, complete) = match cut {
                "at 0" => (0, 0),
                "in header" => (7, 0),
                "at episode 3" => (ends[2], 3),
                "inside episode 4" => ((ends[2] + ends[3]) / 2, 3),
                "at end" => (ends[4], 5),
                _ => (ends[4] - 20, 4),
            };
            File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_len(len)
                .unwrap();
            let report = verify(dir.path()).unwrap();
            assert!(report.is_ok(), "{cut}: {report}");
            assert_eq!(report.shards[0].episodes, complete, "{cut}: {report}");
            assert_eq!(
                report.shards[0].warnings.len(),
                1,
                "{cut}: torn tail is a warning: {report}"
            );

            let acks = write(&config(dir.path()), eps[complete as usize..].to_vec());
            assert_eq!(*acks[0].result.as_ref().unwrap(), complete, "{cut}");
            let report = verify(dir.path()).unwrap();
            assert!(
                report.is_ok() && report.shards[0].episodes == 8,
                "{cut}: {report}"
            );
            let back: Vec<Episode> = stored(dir.path()).into_iter().map(|s| s.episode).collect();
            assert_eq!(back, eps, "{cut}");
        }
    }

    #[test]
    fn a_writer_thread_that_panics_is_seen_as_stopped_by_the_lanes() {
        let stopped = Arc::new(AtomicBool::new(false));
        let guard = StopGuard(stopped.clone());
        let thread = std::thread::spawn(move || {
            let _guard = guard;
            panic!("a writer bug");
        });
        assert!(thread.join().is_err());
        assert!(stopped.load(Ordering::Acquire));
        // A live pool's lanes do not report it.
        let dir = tempfile::tempdir().unwrap();
        let handle = ArchiveWriter::spawn(config(dir.path())).unwrap();
        assert!(!handle.lane().writer_stopped());
    }

    #[test]
    fn a_full_queue_gives_the_episode_back() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = ArchiveConfig {
            preset: 3,
            queue_episodes: 1,
            ..config(dir.path())
        };
        let handle = ArchiveWriter::spawn(cfg).unwrap();
        let ids: Vec<String> = (0..256).map(|i| format!("id-{i}")).collect();
        let big = episode(0, 0, &ids.iter().map(String::as_str).collect::<Vec<_>>());
        let mut accepted = 0;
        let refused = loop {
            match handle.try_submit(big.clone(), accepted) {
                Ok(()) => accepted += 1,
                Err(back) => break back,
            }
            assert!(accepted < 1000, "a one-episode queue never filled");
        };
        assert_eq!(refused, big);
        let acks = handle.close();
        assert_eq!(acks.len() as u64, accepted);
        assert!(acks.iter().all(|a| a.result.is_ok()));
        assert_eq!(verify(dir.path()).unwrap().shards[0].episodes, accepted);
    }

    #[test]
    fn an_unusable_directory_is_a_clear_error_at_spawn() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain");
        fs::write(&file, b"x").unwrap();
        let Err(e) = ArchiveWriter::spawn(config(&file.join("archive"))) else {
            panic!("a directory under a regular file opened")
        };
        let msg = e.to_string();
        assert!(msg.contains("plain/archive: create archive directory"), "{msg}");
        let Err(e) = ArchiveWriter::spawn(config(&dir.path().join("no/such"))) else {
            panic!("a directory without a parent opened")
        };
        assert!(e.to_string().contains("no/such: create archive directory"), "{e}");
        let Err(e) = ArchiveWriter::spawn(ArchiveConfig {
            preset: 12,
            ..config(dir.path())
        }) else {
            panic!("preset 12 accepted")
        };
        assert_eq!(e.to_string(), "archive config: preset: expected 0 to 9, found 12");
    }

    #[test]
    fn counters_add_up() {
        let dir = tempfile::tempdir().unwrap();
        let handle = ArchiveWriter::spawn(config(dir.path())).unwrap();
        let stats = handle.stats().clone();
        for (t, ep) in episodes(0, 5).into_iter().enumerate() {
            handle.try_submit(ep, t as u64).unwrap();
        }
        handle.close();
        let on_disk = fs::metadata(segment_path(dir.path(), 0, 0)).unwrap().len();
        assert_eq!(stats.episodes.load(Ordering::Relaxed), 5);
        assert_eq!(stats.xz_bytes.load(Ordering::Relaxed), on_disk);
        assert!(stats.content_bytes.load(Ordering::Relaxed) > on_disk);
        assert_eq!(stats.errors.load(Ordering::Relaxed), 0);
    }
}
