//! `bizra run` in embedded mode: builds the decision dataflow on every timely worker, feeds
//! it from the generator or a reader thread, and hands output lines to writer threads. The
//! worker loop only moves data and steps the dataflow: it never blocks (bounded channels
//! are used with `try_send`/`try_recv`, and a full output queue or too many epochs in
//! flight simply stops feeding input until the dataflow catches up).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bizra_dataflows::bounds;
use bizra_dataflows::dead_letter::ErrorKind;
use bizra_dataflows::ethics::Severity;
use bizra_dataflows::operators::commit::Output;
use bizra_dataflows::operators::{wall_ms, Structure};
use bizra_dataflows::pipeline::{self, PipelineConfig, RawRecord};
use bizra_dataflows::verdict::{Decision, Verdict};
use bizra_dataflows::verification::Tier;
use bizra_dataflows::wire::write_output;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::core::OkErr;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::Exchange;
use timely::dataflow::operators::{Input, Inspect, Probe};
use timely::dataflow::{InputHandle, ProbeHandle, StreamVec};

use crate::archive::{archived, ArchiveOutbox, Lanes};
use crate::config::PipelineSettings;
use crate::decision_log::{CheckpointRecord, Checkpointer};
use crate::gen::Generator;
use crate::inflight::Inflight;
use crate::io::{spawn_reader, spawn_writer, ChunkReceiver, InputSpec, OutputSpec};
use crate::telemetry::{Telemetry, WorkerTelemetry};
use bizra_dataflows::stats::WindowStats;

/// Where records come from.
pub enum Source {
    Gen {
        count: u64,
        generator: Arc<Generator>,
    },
    Lines(InputSpec),
    /// Raw records from a reader of the caller's (`bizra audit replay`'s range of the input
    /// topic), read like `Lines` by worker 0 of process 0.
    Records(ChunkReceiver),
}

/// Timely's process layout.
#[derive(Clone, Debug)]
pub struct Cluster {
    pub workers: usize,
    pub processes: usize,
    pub process: usize,
    pub hostfile: Option<PathBuf>,
}

impl Cluster {
    /// One process of `workers` threads (at least one).
    pub fn local(workers: usize) -> Cluster {
        Cluster {
            workers: workers.max(1),
            processes: 1,
            process: 0,
            hostfile: None,
        }
    }

    /// With several processes: a watchdog that halts the process if the cluster has not
    /// formed (every worker running) within `timeout_ms`. Timely connects the processes
    /// before any worker runs and waits for a missing peer for ever; the workers set the
    /// returned flag when they start.
    pub(crate) fn watch_formation(&self, timeout_ms: u64) -> Arc<AtomicBool> {
        let formed = Arc::new(AtomicBool::new(false));
        if self.processes > 1 {
            let (flag, processes) = (formed.clone(), self.processes);
            std::thread::Builder::new()
                .name("bizra-cluster-watch".into())
                .spawn(move || {
                    let deadline = Instant::now() + Duration::from_millis(timeout_ms);
                    while Instant::now() < deadline {
                        if flag.load(Ordering::Relaxed) {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    crate::fatal::halt(format_args!(
                        "the timely cluster did not form within pipeline.cluster_timeout_ms = {timeout_ms} ms: not all of the {processes} processes of --hostfile connected (one died or never started)"
                    ));
                })
                .expect("spawning the cluster watchdog");
        }
        formed
    }

    pub(crate) fn timely_config(&self) -> anyhow::Result<timely::Config> {
        let communication = if self.processes > 1 {
            let path = self
                .hostfile
                .as_ref()
                .context("-n > 1 needs --hostfile with one host:port per process")?;
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("{}: cannot read hostfile", path.display()))?;
            let addresses: Vec<String> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect();
            if addresses.len() < self.processes {
                bail!(
                    "{}: expected {} addresses, found {}",
                    path.display(),
                    self.processes,
                    addresses.len()
                );
            }
            if self.process >= self.processes {
                bail!("-p {} is out of range for -n {}", self.process, self.processes);
            }
            timely::CommunicationConfig::Cluster {
                threads: self.workers,
                process: self.process,
                addresses: addresses[..self.processes].to_vec(),
                report: false,
                zerocopy: false,
            }
        } else if self.workers > 1 {
            timely::CommunicationConfig::Process(self.workers)
        } else {
            timely::CommunicationConfig::Thread
        };
        Ok(timely::Config {
            communication,
            worker: Default::default(),
        })
    }
}

/// The outputs of embedded mode.
pub struct Outputs {
    pub verdicts: OutputSpec,
    pub commitments: OutputSpec,
    pub dead_letters: OutputSpec,
    /// Window statistics (SPEC §1.5), one JSON line per window and key.
    pub stats: OutputSpec,
    /// Rollbacks (SPEC §1.6), one JSON line each.
    pub rollbacks: OutputSpec,
    /// With `--data-dir`: the writer of the replay guard's state (`replay_state.rs`), in
    /// every process (each keeps its own shards').
    pub replay: Option<crate::replay_state::Writer>,
    /// Signed checkpoints of the decision log (SPEC §3.4), one JSON line each; every process
    /// writes its own shards'.
    pub checkpoints: OutputSpec,
    /// With `--data-dir`: where each shard's chain stands is kept there (`decision_log.rs`).
    pub data_dir: Option<PathBuf>,
    /// Verdicts handed over as values, in chunks, instead of written (`bizra audit replay`
    /// compares them): `verdicts` is then not used. Sizes are checked as for a written
    /// verdict, so the same verdicts become `output_too_large` dead letters. One process only.
    pub verdict_tap: Option<SyncSender<Vec<Verdict>>>,
}

impl Outputs {
    /// Every output counted, none written: start from this and set what is wanted.
    pub fn discard() -> Outputs {
        Outputs {
            verdicts: OutputSpec::Discard,
            commitments: OutputSpec::Discard,
            dead_letters: OutputSpec::Discard,
            stats: OutputSpec::Discard,
            rollbacks: OutputSpec::Discard,
            replay: None,
            checkpoints: OutputSpec::Discard,
            data_dir: None,
            verdict_tap: None,
        }
    }
}

/// Counts for the closing summary.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub verdicts: u64,
    pub decisions: [u64; 3],
    pub severities: [u64; 5],
    pub tiers: [u64; 3],
    pub invalid: u64,
    pub dead_letters: [u64; ErrorKind::ALL.len()],
    pub commitments: u64,
    pub rollbacks: u64,
    pub elapsed: Duration,
}

impl Summary {
    /// The sum of the workers' summaries, with the run's elapsed time.
    pub(crate) fn total(parts: &[Summary], elapsed: Duration) -> Summary {
        let mut total = Summary::default();
        for s in parts {
            total.add(s);
        }
        total.elapsed = elapsed;
        total
    }

    fn add(&mut self, o: &Summary) {
        self.verdicts += o.verdicts;
        self.invalid += o.invalid;
        self.commitments += o.commitments;
        self.rollbacks += o.rollbacks;
        for (a, b) in self.decisions.iter_mut().zip(o.decisions) {
            *a += b;
        }
        for (a, b) in self.severities.iter_mut().zip(o.severities) {
            *a += b;
        }
        for (a, b) in self.tiers.iter_mut().zip(o.tiers) {
            *a += b;
        }
        for (a, b) in self.dead_letters.iter_mut().zip(o.dead_letters) {
            *a += b;
        }
    }

    pub(crate) fn count(&mut self, o: &Output) {
        self.add_output(o, 1);
    }

    /// Takes back the count of an output its sink refused after counting it (the dead
    /// letter that replaces it is counted instead).
    pub(crate) fn uncount(&mut self, o: &Output) {
        self.add_output(o, u64::MAX);
    }

    /// Adds `n` (`u64::MAX` subtracts one, by wrapping) to the counts of `o`.
    fn add_output(&mut self, o: &Output, n: u64) {
        let add = |c: &mut u64| *c = c.wrapping_add(n);
        match o {
            Output::Verdict(v) => {
                add(&mut self.verdicts);
                add(&mut self.decisions[v.decision as usize]);
                add(&mut self.severities[v.ethics.severity as usize]);
                add(&mut self.tiers[v.verification.tier as usize]);
                if !v.verification.valid {
                    add(&mut self.invalid);
                }
            }
            Output::Commitment(_) => add(&mut self.commitments),
            Output::DeadLetter(d) => add(&mut self.dead_letters[d.error as usize]),
            Output::Rollback(_) => add(&mut self.rollbacks),
            Output::Replay(_) => {}
        }
    }

    /// Observations that came out (one verdict or dead letter each).
    pub fn observations(&self) -> u64 {
        self.verdicts + self.dead_letters.iter().sum::<u64>()
    }

    /// Human-readable closing summary.
    pub fn render(&self) -> String {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        let n = self.observations();
        let mut s = format!(
            "processed {n} observations in {:.2} s ({:.0}/s): {} verdicts, {} dead letters, {} commitments, {} rollbacks\n",
            secs,
            n as f64 / secs,
            self.verdicts,
            self.dead_letters.iter().sum::<u64>(),
            self.commitments,
            self.rollbacks
        );
        let join = |pairs: Vec<(&str, u64)>| {
            pairs
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        s += &format!(
            "  decisions:    {}\n",
            join(
                Decision::ALL
                    .iter()
                    .map(|d| (d.as_str(), self.decisions[*d as usize]))
                    .collect()
            )
        );
        s += &format!(
            "  severities:   {}\n",
            join(
                Severity::ALL
                    .iter()
                    .map(|d| (d.as_str(), self.severities[*d as usize]))
                    .collect()
            )
        );
        s += &format!(
            "  tiers:        {} invalid={}\n",
            join(
                Tier::ALL
                    .iter()
                    .map(|d| (d.as_str(), self.tiers[*d as usize]))
                    .collect()
            ),
            self.invalid
        );
        s += &format!(
            "  dead letters: {}\n",
            join(
                ErrorKind::ALL
                    .iter()
                    .map(|d| (d.as_str(), self.dead_letters[*d as usize]))
                    .collect()
            )
        );
        s
    }
}

/// Kind of an encoded output line (index into the writers).
const VERDICT: u8 = 0;
const COMMITMENT: u8 = 1;
const DEAD_LETTER: u8 = 2;
const STATS: u8 = 3;
const ROLLBACK: u8 = 4;
/// The replay guard's records: binary frames, not lines.
const REPLAY: u8 = 5;
/// Checkpoints, written by the process whose shards they are.
const CHECKPOINT: u8 = 6;
const KINDS: usize = 7;

/// Lines waiting for the writer threads, per worker.
struct Outbox {
    senders: [Option<SyncSender<Vec<u8>>>; KINDS],
    bufs: [Vec<u8>; KINDS],
    queued: VecDeque<(u8, Vec<u8>)>,
    /// `limits.max_output_bytes`: a longer verdict is written as an `output_too_large` dead
    /// letter instead.
    max_output_bytes: usize,
    tap: Option<Tap>,
}

/// [`Outputs::verdict_tap`] in a worker's outbox.
struct Tap {
    tx: SyncSender<Vec<Verdict>>,
    chunk: Vec<Verdict>,
    queued: VecDeque<Vec<Verdict>>,
    /// Where a verdict is serialized to learn its length.
    scratch: Vec<u8>,
}

/// Verdicts per chunk handed to the tap.
const TAP_CHUNK: usize = 512;

const FLUSH_BYTES: usize = 256 * 1024;

impl Outbox {
    fn push(&mut self, kind: u8, line: &[u8]) {
        if self.senders[kind as usize].is_none() {
            return;
        }
        self.bufs[kind as usize].extend_from_slice(line);
        self.end_line(kind);
    }

    /// Serializes one record straight into its output buffer, and returns what was written:
    /// the record, or the `output_too_large` dead letter that replaces a verdict longer than
    /// `max_output_bytes`.
    fn write(&mut self, o: Output) -> Output {
        let kind = kind_of(&o);
        if let (VERDICT, Some(tap)) = (kind, &mut self.tap) {
            tap.scratch.clear();
            let len = write_output(&mut tap.scratch, &o);
            if len <= self.max_output_bytes {
                return o;
            }
            let dead = too_large(&o, len, self.max_output_bytes);
            return self.write(dead);
        }
        if self.senders[kind as usize].is_none() {
            return o;
        }
        if let Output::Replay(r) = &o {
            r.frame(&mut self.bufs[REPLAY as usize]);
            self.end_chunk(REPLAY);
            return o;
        }
        let buf = &mut self.bufs[kind as usize];
        let start = buf.len();
        let len = write_output(buf, &o);
        if len <= self.max_output_bytes {
            self.end_line(kind);
            return o;
        }
        buf.truncate(start);
        let dead = too_large(&o, len, self.max_output_bytes);
        self.write(dead)
    }

    /// Hands a verdict [`Outbox::write`] returned to the tap, if there is one.
    fn hand_over(&mut self, o: Output) {
        if let (Some(tap), Output::Verdict(v)) = (&mut self.tap, o) {
            tap.chunk.push(*v);
            if tap.chunk.len() >= TAP_CHUNK {
                let full = std::mem::replace(&mut tap.chunk, Vec::with_capacity(TAP_CHUNK));
                tap.queued.push_back(full);
            }
        }
    }

    /// Serializes one checkpoint into the checkpoints buffer.
    fn write_checkpoint(&mut self, c: &CheckpointRecord) {
        if self.senders[CHECKPOINT as usize].is_none() {
            return;
        }
        serde_json::to_writer(&mut self.bufs[CHECKPOINT as usize], c).expect("checkpoint serializes");
        self.end_line(CHECKPOINT);
    }

    /// Serializes one window-statistics record into the stats buffer.
    fn write_stats(&mut self, w: &WindowStats) {
        if self.senders[STATS as usize].is_none() {
            return;
        }
        serde_json::to_writer(&mut self.bufs[STATS as usize], w).expect("window stats serialize");
        self.end_line(STATS);
    }

    fn end_line(&mut self, kind: u8) {
        self.bufs[kind as usize].push(b'\n');
        self.end_chunk(kind);
    }

    /// Hands the buffer of `kind` to its writer's queue once it is large enough.
    fn end_chunk(&mut self, kind: u8) {
        let buf = &mut self.bufs[kind as usize];
        if buf.len() >= FLUSH_BYTES {
            let full = std::mem::replace(buf, Vec::with_capacity(FLUSH_BYTES + 16 * 1024));
            self.queued.push_back((kind, full));
        }
    }

    /// Hands buffered lines to the writers; returns false if a writer is gone.
    fn flush(&mut self, all: bool) -> bool {
        if let Some(tap) = &mut self.tap {
            if all && !tap.chunk.is_empty() {
                tap.queued.push_back(std::mem::take(&mut tap.chunk));
            }
            while let Some(chunk) = tap.queued.pop_front() {
                match tap.tx.try_send(chunk) {
                    Ok(()) => {}
                    Err(TrySendError::Full(chunk)) => {
                        tap.queued.push_front(chunk);
                        break;
                    }
                    Err(TrySendError::Disconnected(_)) => return false,
                }
            }
        }
        if all {
            for kind in 0..KINDS as u8 {
                let buf = std::mem::take(&mut self.bufs[kind as usize]);
                if !buf.is_empty() {
                    self.queued.push_back((kind, buf));
                }
            }
        }
        while let Some((kind, chunk)) = self.queued.pop_front() {
            let Some(tx) = &self.senders[kind as usize] else {
                continue;
            };
            match tx.try_send(chunk) {
                Ok(()) => {}
                Err(TrySendError::Full(chunk)) => {
                    self.queued.push_front((kind, chunk));
                    return true;
                }
                Err(TrySendError::Disconnected(_)) => return false,
            }
        }
        true
    }

    fn is_idle(&self) -> bool {
        self.queued.is_empty() && self.tap.as_ref().is_none_or(|t| t.queued.is_empty())
    }
}

/// What a run reports to and writes beside its outputs, the same for both drivers.
#[derive(Clone)]
pub struct Services {
    /// Observations out, for the progress display.
    pub progress: Arc<AtomicU64>,
    pub telemetry: Telemetry,
    /// The episode archive's lanes, one per worker, when the archive is on (`--data-dir`).
    pub archive: Option<Lanes>,
    /// The decision log's settings (deployment name, checkpoint interval).
    pub log: crate::config::LogConfig,
    /// The latest checkpoint of each shard, for `/checkpoint`.
    pub checkpoints: crate::decision_log::Latest,
}

/// Runs the pipeline to the end of its input. A fatal error on the way (an input or output
/// that cannot be read or written, the archive failing) ends the process (`fatal.rs`).
pub fn run(
    cluster: Cluster,
    cfg: PipelineConfig,
    pacing: PipelineSettings,
    max_output_bytes: usize,
    source: Source,
    outputs: Outputs,
    services: Services,
) -> anyhow::Result<Summary> {
    let Services {
        progress,
        telemetry,
        archive,
        log,
        checkpoints,
    } = services;
    let started = Instant::now();
    let (epoch_records, max_inflight) = (pacing.epoch_records, pacing.max_inflight_epochs);
    let timely_cfg = cluster.timely_config()?;
    let is_first_process = cluster.process == 0;
    let multi = cluster.processes > 1;
    if multi && outputs.verdict_tap.is_some() {
        bail!("a verdict tap needs a single process");
    }
    // Lines are read by one worker, generated records by every worker: the readers of this
    // process share its byte budget.
    let readers = match &source {
        Source::Gen { .. } => cluster.workers,
        Source::Lines(_) | Source::Records(_) => 1,
    };
    let budget = pacing.max_inflight_bytes / readers;

    // Outputs live in process 0; other processes route their lines there. The replay
    // guard's state is each process's own (its data directory).
    let mut handles = Vec::new();
    let mut senders: [Option<SyncSender<Vec<u8>>>; KINDS] = Default::default();
    if is_first_process {
        for (i, spec) in [
            outputs.verdicts,
            outputs.commitments,
            outputs.dead_letters,
            outputs.stats,
            outputs.rollbacks,
        ]
        .into_iter()
        .enumerate()
        {
            let (tx, h) = spawn_writer(spec)?;
            senders[i] = tx;
            handles.extend(h);
        }
    }
    if let Some((tx, h)) = outputs.replay {
        senders[REPLAY as usize] = Some(tx);
        handles.push(h);
    }
    let (tx, h) = spawn_writer(outputs.checkpoints)?;
    senders[CHECKPOINT as usize] = tx;
    handles.extend(h);
    let data_dir = outputs.data_dir;
    let tap = Mutex::new(outputs.verdict_tap);
    let (count, generator) = match &source {
        Source::Gen { count, generator } => (Some(*count), Some(generator.clone())),
        Source::Lines(_) | Source::Records(_) => (None, None),
    };
    let (reader_rx, reader_handle) = match source {
        Source::Lines(spec) if is_first_process => {
            // A chunk is an epoch: a sixteenth of the budget lets several be in flight.
            let chunk_bytes = (budget / 16).max(1);
            let (rx, h) = spawn_reader(spec, cfg.max_message_bytes, epoch_records, chunk_bytes)?;
            (Some(rx), Some(h))
        }
        Source::Records(rx) if is_first_process => (Some(rx), None),
        _ => (None, None),
    };
    let reader_rx = Arc::new(Mutex::new(reader_rx));
    let summaries = Arc::new(Mutex::new(Vec::<Summary>::new()));
    let senders = Arc::new(Mutex::new(senders));

    let worker_summaries = summaries.clone();
    let worker_progress = progress.clone();
    let formed = cluster.watch_formation(pacing.cluster_timeout_ms);
    let guards = timely::execute(timely_cfg, move |worker| {
        formed.store(true, Ordering::Relaxed);
        let index = worker.index();
        let peers = worker.peers();
        let threads = cluster.workers;
        let mut input =
            InputHandle::<u64, timely::container::CapacityContainerBuilder<Vec<RawRecord>>>::new();
        let probe = ProbeHandle::new();
        let summary = Rc::new(RefCell::new(Summary::default()));
        let outbox = Rc::new(RefCell::new(Outbox {
            senders: senders.lock().expect("senders lock").clone(),
            bufs: Default::default(),
            queued: VecDeque::new(),
            max_output_bytes,
            tap: tap.lock().expect("tap lock").clone().map(|tx| Tap {
                tx,
                chunk: Vec::with_capacity(TAP_CHUNK),
                queued: VecDeque::new(),
                scratch: Vec::new(),
            }),
        }));
        let archive = archive.as_ref().map(ArchiveOutbox::from_lanes);
        let is_reader = generator.is_none() && index == 0;
        let tel = Rc::new(RefCell::new(WorkerTelemetry::new(worker, &telemetry)));
        let observer = tel.borrow().observer();
        // The decision log: where this shard's chain stands (with --data-dir), and its
        // checkpoints, from the commitments as they are handed to the writers.
        let mut state = data_dir.as_deref().map(|d| {
            crate::decision_log::StateFile::open(d, index as u32)
                .unwrap_or_else(|e| crate::fatal::halt(format_args!("--data-dir: {e:#}")))
        });
        let checkpointer = Rc::new(RefCell::new(Checkpointer::new(
            &log.deployment,
            cfg.signing_key.clone(),
            log.checkpoint_interval_ms,
            Some(checkpoints.clone()),
        )));

        worker.dataflow::<u64, _, _>(|scope| {
            let raw: StreamVec<u64, RawRecord> = scope.input_from(&mut input).container::<Vec<_>>();
            // Lines are read by worker 0: spread them so that every worker decodes.
            let raw = if generator.is_none() && peers > 1 {
                raw.exchange(|r: &RawRecord| r.position)
            } else {
                raw
            };
            let out = pipeline::build(raw, &cfg, observer);
            let out = archived(out, archive.as_ref(), &probe);
            let cp = checkpointer.clone();
            let out = out.inspect(move |o| {
                if let Output::Commitment(c) = o {
                    // Recorded before the commitment reaches its writer: after a kill the
                    // data dir may be ahead of the commitments file, never behind it.
                    if let Some(f) = &mut state {
                        if let Err(e) = f.append(c) {
                            crate::fatal::halt(format_args!("--data-dir: {e:#}"));
                        }
                    }
                    cp.borrow_mut().durable(c);
                }
            });
            // Outputs are counted as they are written, after the size check that may turn a
            // verdict into a dead letter.
            let counts = summary.clone();
            let tel = tel.clone();
            let count = move |o: &Output| {
                counts.borrow_mut().count(o);
                tel.borrow_mut().output(o);
            };
            if multi {
                // With several processes every line goes to a worker of process 0, which
                // writes; lines are encoded where they were made to spread the work. The
                // replay guard's records stay in the process whose shards made them.
                #[allow(clippy::result_large_err)] // two streams in one container, not an error
                let (replay, out) = out.ok_err(|o| match o {
                    Output::Replay(r) => Ok(r),
                    o => Err(o),
                });
                sink(replay, outbox.clone(), |ob, r| {
                    ob.write(Output::Replay(r));
                })
                .probe_with(&probe);
                let encoded = out
                    .map(move |o| {
                        let (o, kind, line) = encode(o, max_output_bytes);
                        count(&o);
                        (kind, line)
                    })
                    .exchange(move |e: &(u8, Vec<u8>)| (e.1.len() % threads.max(1)) as u64);
                sink(encoded, outbox.clone(), |ob, (kind, line)| ob.push(kind, &line)).probe_with(&probe);
            } else {
                sink(out, outbox.clone(), move |ob, o| {
                    let o = ob.write(o);
                    count(&o);
                    ob.hand_over(o);
                })
                .probe_with(&probe);
            }
        });

        let mut input = Some(input);
        if !is_reader && generator.is_none() {
            input.take(); // only worker 0 reads lines
        }
        let mut epoch: u64 = 0;
        let mut next_rank: u64 = 0; // generator: records this worker has made / peers
        let mut reported = 0u64;
        let mut inflight = Inflight::new(budget);
        let rx_guard = if is_reader {
            reader_rx.lock().expect("reader lock").take()
        } else {
            None
        };
        let rx: Option<ChunkReceiver> = rx_guard;
        // A chunk the reader sent that did not fit the byte budget yet.
        let mut waiting: Option<Vec<RawRecord>> = None;
        loop {
            let mut fed = false;
            inflight.complete(probe.with_frontier(|f| f.first().copied().unwrap_or(u64::MAX)));
            let room = !probe.less_than(&epoch.saturating_sub(max_inflight))
                && inflight.room()
                && outbox.borrow().is_idle()
                && archive.as_ref().is_none_or(|a| a.borrow().queued() == 0);
            if let (Some(handle), true) = (input.as_mut(), room) {
                if let (Some(g), Some(n)) = (&generator, count) {
                    // Epoch k holds positions [k·E·P, (k+1)·E·P); this worker takes i ≡ index (mod P).
                    let now = wall_ms();
                    let before = next_rank;
                    for _ in 0..epoch_records {
                        let i = next_rank * peers as u64 + index as u64;
                        // The budget is checked per epoch, not per record: epoch k must hold
                        // the same positions on every layout (see DECISIONS, determinism).
                        if i >= n {
                            break;
                        }
                        next_rank += 1;
                        let bytes = g.record(i);
                        inflight.read(epoch, bytes.len());
                        handle.send(RawRecord {
                            bytes,
                            input: Some(bizra_dataflows::observation::InputRef {
                                topic: "gen".into(),
                                partition: 0,
                                offset: i as i64,
                            }),
                            position: i,
                            ingest_ms: now,
                            message_ms: None,
                            broker_ms: None,
                            oversize: None,
                        });
                    }
                    tel.borrow().read((next_rank - before) as usize);
                    epoch += 1;
                    handle.advance_to(epoch);
                    fed = true;
                    if next_rank * peers as u64 + index as u64 >= n {
                        input.take();
                    }
                } else if let Some(rx) = &rx {
                    let chunk = match waiting.take() {
                        Some(chunk) => Some(chunk),
                        None => match rx.try_recv() {
                            Ok(Ok(chunk)) => Some(chunk),
                            Ok(Err(e)) => crate::fatal::halt(format_args!("reading input: {e}")),
                            Err(TryRecvError::Empty) => None,
                            Err(TryRecvError::Disconnected) => {
                                input.take();
                                None
                            }
                        },
                    };
                    if let (Some(chunk), Some(handle)) = (chunk, input.as_mut()) {
                        let len: usize = chunk.iter().map(|r| r.bytes.len()).sum();
                        if inflight.fits(len + chunk.len() * crate::config::RECORD_OVERHEAD_BYTES) {
                            tel.borrow().read(chunk.len());
                            for r in chunk {
                                inflight.read(epoch, r.bytes.len());
                                handle.send(r);
                            }
                            epoch += 1;
                            handle.advance_to(epoch);
                            fed = true;
                        } else {
                            waiting = Some(chunk);
                        }
                    }
                }
            }
            worker.step_or_park(if fed {
                Some(Duration::ZERO)
            } else {
                Some(Duration::from_millis(1))
            });
            if let Some(a) = &archive {
                let mut a = a.borrow_mut();
                a.pump();
                tel.borrow().state(Structure::ArchiveQueue, a.queued());
                if let Some(e) = a.failed.take() {
                    crate::fatal::halt(e);
                }
            }
            let drained = input.is_none() && probe.done();
            tel.borrow()
                .state(Structure::SinkQueue, outbox.borrow().queued.len());
            for w in tel.borrow_mut().tick(drained) {
                outbox.borrow_mut().write_stats(&w);
            }
            let finished = drained && tel.borrow().done();
            // At the end, a last checkpoint covers the whole log.
            for c in checkpointer.borrow_mut().due(wall_ms().max(0) as u64, finished) {
                outbox.borrow_mut().write_checkpoint(&c);
            }
            if !outbox.borrow_mut().flush(finished) {
                // The writer threads end the process themselves on a write error.
                crate::fatal::halt("an output writer stopped");
            }
            let out_now = summary.borrow().observations();
            worker_progress.fetch_add(out_now - reported, Ordering::Relaxed);
            reported = out_now;
            if finished {
                // Wait for the last chunks to be accepted by the writers.
                while !outbox.borrow().is_idle() {
                    std::thread::sleep(Duration::from_millis(1));
                    if !outbox.borrow_mut().flush(true) {
                        crate::fatal::halt("an output writer stopped");
                    }
                }
                break;
            }
        }
        worker_summaries
            .lock()
            .expect("summaries lock")
            .push(summary.borrow().clone());
        // Drop the shared originals so the writers see the end once every outbox is gone.
        *senders.lock().expect("senders lock") = Default::default();
        tap.lock().expect("tap lock").take();
    })
    .map_err(|e| anyhow::anyhow!("starting timely: {e}"))?;

    drop(guards.join());
    if let Some(h) = reader_handle {
        drop(h); // the reader ends on its own at end of input (or when stdin closes)
    }
    for h in handles {
        h.join()
            .map_err(|_| anyhow::anyhow!("writer thread panicked"))?
            .context("writing output")?;
    }
    let total = Summary::total(&summaries.lock().expect("summaries lock"), started.elapsed());
    Ok(total)
}

/// The `output_too_large` dead letter of an output of `len` bytes over the limit `max`; a
/// commitment or dead letter that long is fatal (the start-up checks rule it out).
fn too_large(o: &Output, len: usize, max: usize) -> Output {
    let why = format!("it is {len} bytes, more than limits.max_output_bytes ({max})");
    match bounds::refused(o, ErrorKind::OutputTooLarge, &why, wall_ms()) {
        Ok(dead) => Output::DeadLetter(dead),
        Err(fatal) => crate::fatal::halt(fatal),
    }
}

/// The last operator: hands each record to the worker's outbox.
fn sink<'s, D: 'static>(
    stream: StreamVec<'s, u64, D>,
    outbox: Rc<RefCell<Outbox>>,
    mut put: impl FnMut(&mut Outbox, D) + 'static,
) -> StreamVec<'s, u64, ()> {
    stream.unary::<timely::container::CapacityContainerBuilder<Vec<()>>, _, _, _>(
        Pipeline,
        "sink",
        move |cap, _| {
            drop(cap);
            move |input, _output| {
                input.for_each(|_cap, data: &mut Vec<D>| {
                    let mut ob = outbox.borrow_mut();
                    for d in data.drain(..) {
                        put(&mut ob, d);
                    }
                });
            }
        },
    )
}

fn kind_of(o: &Output) -> u8 {
    match o {
        Output::Verdict(_) => VERDICT,
        Output::Commitment(_) => COMMITMENT,
        Output::DeadLetter(_) => DEAD_LETTER,
        Output::Rollback(_) => ROLLBACK,
        Output::Replay(_) => REPLAY,
    }
}

/// Serializes `o` for the writer of process 0; returns what was written (the record, or the
/// `output_too_large` dead letter that replaces a verdict over `max` bytes), its kind and
/// its line.
fn encode(o: Output, max: usize) -> (Output, u8, Vec<u8>) {
    let mut line = Vec::new();
    let len = write_output(&mut line, &o);
    if len <= max {
        let kind = kind_of(&o);
        return (o, kind, line);
    }
    encode(too_large(&o, len, max), max)
}
