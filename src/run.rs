//! `bizra run` in embedded mode: builds the decision dataflow on every timely worker, feeds
//! it from the generator or a reader thread, and hands output lines to writer threads. The
//! worker loop only moves data and steps the dataflow: it never blocks (bounded channels
//! are used with `try_send`/`try_recv`, and a full output queue or too many epochs in
//! flight simply stops feeding input until the dataflow catches up).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bizra_dataflows::dead_letter::ErrorKind;
use bizra_dataflows::ethics::Severity;
use bizra_dataflows::operators::commit::Output;
use bizra_dataflows::operators::{wall_ms, Structure};
use bizra_dataflows::pipeline::{self, PipelineConfig, RawRecord};
use bizra_dataflows::verdict::Decision;
use bizra_dataflows::verification::Tier;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::Exchange;
use timely::dataflow::operators::{Input, Probe};
use timely::dataflow::{InputHandle, ProbeHandle, StreamVec};

use crate::archive::{archived, ArchiveOutbox, Lanes};
use crate::config::PipelineSettings;
use crate::gen::Generator;
use crate::io::{spawn_reader, spawn_writer, ChunkReceiver, InputSpec, OutputSpec};
use crate::telemetry::{Telemetry, WorkerTelemetry};
use bizra_dataflows::stats::WindowStats;

/// Where records come from.
pub enum Source {
    Gen { count: u64, generator: Arc<Generator> },
    Lines(InputSpec),
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
}

/// Counts for the closing summary.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub verdicts: u64,
    pub decisions: [u64; 3],
    pub severities: [u64; 5],
    pub tiers: [u64; 3],
    pub invalid: u64,
    pub dead_letters: [u64; 6],
    pub commitments: u64,
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
        match o {
            Output::Verdict(v) => {
                self.verdicts += 1;
                self.decisions[v.decision as usize] += 1;
                self.severities[v.ethics.severity as usize] += 1;
                self.tiers[v.verification.tier as usize] += 1;
                self.invalid += u64::from(!v.verification.valid);
            }
            Output::Commitment(_) => self.commitments += 1,
            Output::DeadLetter(d) => self.dead_letters[d.error as usize] += 1,
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
            "processed {n} observations in {:.2} s ({:.0}/s): {} verdicts, {} dead letters, {} commitments\n",
            secs,
            n as f64 / secs,
            self.verdicts,
            self.dead_letters.iter().sum::<u64>(),
            self.commitments
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

/// Lines waiting for the writer threads, per worker.
struct Outbox {
    senders: [Option<SyncSender<Vec<u8>>>; 4],
    bufs: [Vec<u8>; 4],
    queued: VecDeque<(u8, Vec<u8>)>,
}

const FLUSH_BYTES: usize = 256 * 1024;

impl Outbox {
    fn push(&mut self, kind: u8, line: &[u8]) {
        if self.senders[kind as usize].is_none() {
            return;
        }
        self.bufs[kind as usize].extend_from_slice(line);
        self.end_line(kind);
    }

    /// Serializes one record straight into its output buffer.
    fn write(&mut self, o: &Output) {
        let kind = kind_of(o);
        if self.senders[kind as usize].is_none() {
            return;
        }
        let buf = &mut self.bufs[kind as usize];
        let written = match o {
            Output::Verdict(v) => {
                bizra_dataflows::wire::write_verdict(buf, v);
                Ok(())
            }
            Output::Commitment(c) => serde_json::to_writer(&mut *buf, c),
            Output::DeadLetter(d) => serde_json::to_writer(&mut *buf, d),
        };
        written.expect("output records serialize");
        self.end_line(kind);
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
        let buf = &mut self.bufs[kind as usize];
        buf.push(b'\n');
        if buf.len() >= FLUSH_BYTES {
            let full = std::mem::replace(buf, Vec::with_capacity(FLUSH_BYTES + 16 * 1024));
            self.queued.push_back((kind, full));
        }
    }

    /// Hands buffered lines to the writers; returns false if a writer is gone.
    fn flush(&mut self, all: bool) -> bool {
        if all {
            for kind in 0..4u8 {
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
        self.queued.is_empty()
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
}

/// Runs the pipeline to the end of its input.
pub fn run(
    cluster: Cluster,
    cfg: PipelineConfig,
    pacing: PipelineSettings,
    source: Source,
    outputs: Outputs,
    services: Services,
) -> anyhow::Result<Summary> {
    let Services {
        progress,
        telemetry,
        archive,
    } = services;
    let started = Instant::now();
    let (epoch_records, max_inflight) = (pacing.epoch_records, pacing.max_inflight_epochs);
    let timely_cfg = cluster.timely_config()?;
    let is_first_process = cluster.process == 0;
    let multi = cluster.processes > 1;

    // Outputs live in process 0; other processes route their lines there.
    let mut handles = Vec::new();
    let mut senders: [Option<SyncSender<Vec<u8>>>; 4] = [None, None, None, None];
    if is_first_process {
        for (i, spec) in [
            outputs.verdicts,
            outputs.commitments,
            outputs.dead_letters,
            outputs.stats,
        ]
        .into_iter()
        .enumerate()
        {
            let (tx, h) = spawn_writer(spec)?;
            senders[i] = tx;
            handles.extend(h);
        }
    }
    let (reader_rx, reader_handle) = match &source {
        Source::Lines(spec) if is_first_process => {
            let (rx, h) = spawn_reader(spec.clone(), cfg.max_message_bytes, epoch_records)?;
            (Some(rx), Some(h))
        }
        _ => (None, None),
    };
    let reader_rx = Arc::new(Mutex::new(reader_rx));
    let (count, generator) = match &source {
        Source::Gen { count, generator } => (Some(*count), Some(generator.clone())),
        Source::Lines(_) => (None, None),
    };
    let summaries = Arc::new(Mutex::new(Vec::<Summary>::new()));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let senders = Arc::new(Mutex::new(senders));

    let worker_summaries = summaries.clone();
    let worker_errors = errors.clone();
    let worker_progress = progress.clone();
    let guards = timely::execute(timely_cfg, move |worker| {
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
        }));
        let archive = archive.as_ref().map(ArchiveOutbox::from_lanes);
        let is_reader = generator.is_none() && index == 0;
        let tel = Rc::new(RefCell::new(WorkerTelemetry::new(worker, &telemetry)));
        let observer = tel.borrow().observer();

        worker.dataflow::<u64, _, _>(|scope| {
            let raw: StreamVec<u64, RawRecord> = scope.input_from(&mut input).container::<Vec<_>>();
            // Lines are read by worker 0: spread them so that every worker decodes.
            let raw = if generator.is_none() && peers > 1 {
                raw.exchange(|r: &RawRecord| r.position)
            } else {
                raw
            };
            let out = pipeline::build(raw, &cfg, observer);
            let counts = summary.clone();
            let tel = tel.clone();
            let out = out.map(move |o| {
                counts.borrow_mut().count(&o);
                tel.borrow_mut().output(&o);
                o
            });
            let out = archived(out, archive.as_ref(), &probe);
            if multi {
                // With several processes every line goes to a worker of process 0, which
                // writes; lines are encoded where they were made to spread the work.
                let encoded = out
                    .map(|o| encode(&o))
                    .exchange(move |e: &(u8, Vec<u8>)| (e.1.len() % threads.max(1)) as u64);
                sink(encoded, outbox.clone(), |ob, (kind, line)| ob.push(kind, &line)).probe_with(&probe);
            } else {
                sink(out, outbox.clone(), |ob, o| ob.write(&o)).probe_with(&probe);
            }
        });

        let mut input = Some(input);
        if !is_reader && generator.is_none() {
            input.take(); // only worker 0 reads lines
        }
        let mut epoch: u64 = 0;
        let mut next_rank: u64 = 0; // generator: records this worker has made / peers
        let mut reported = 0u64;
        let rx_guard = if is_reader {
            reader_rx.lock().expect("reader lock").take()
        } else {
            None
        };
        let rx: Option<ChunkReceiver> = rx_guard;
        loop {
            let mut fed = false;
            let room = !probe.less_than(&epoch.saturating_sub(max_inflight))
                && outbox.borrow().is_idle()
                && archive.as_ref().is_none_or(|a| a.borrow().queued() == 0);
            if let (Some(handle), true) = (input.as_mut(), room) {
                if let (Some(g), Some(n)) = (&generator, count) {
                    // Epoch k holds positions [k·E·P, (k+1)·E·P); this worker takes i ≡ index (mod P).
                    let now = wall_ms();
                    let before = next_rank;
                    for _ in 0..epoch_records {
                        let i = next_rank * peers as u64 + index as u64;
                        if i >= n {
                            break;
                        }
                        next_rank += 1;
                        handle.send(RawRecord {
                            bytes: g.record(i),
                            input: Some(bizra_dataflows::observation::InputRef {
                                topic: "gen".into(),
                                partition: 0,
                                offset: i as i64,
                            }),
                            position: i,
                            ingest_ms: now,
                            message_ms: None,
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
                    match rx.try_recv() {
                        Ok(Ok(chunk)) => {
                            tel.borrow().read(chunk.len());
                            for r in chunk {
                                handle.send(r);
                            }
                            epoch += 1;
                            handle.advance_to(epoch);
                            fed = true;
                        }
                        Ok(Err(e)) => {
                            worker_errors
                                .lock()
                                .expect("errors lock")
                                .push(format!("reading input: {e}"));
                            input.take();
                        }
                        Err(TryRecvError::Empty) => {}
                        Err(TryRecvError::Disconnected) => {
                            input.take();
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
                    worker_errors.lock().expect("errors lock").push(e);
                    break;
                }
            }
            let drained = input.is_none() && probe.done();
            tel.borrow()
                .state(Structure::SinkQueue, outbox.borrow().queued.len());
            for w in tel.borrow_mut().tick(drained) {
                outbox.borrow_mut().write_stats(&w);
            }
            let finished = drained && tel.borrow().done();
            if !outbox.borrow_mut().flush(finished) {
                worker_errors
                    .lock()
                    .expect("errors lock")
                    .push("an output writer stopped".into());
                break;
            }
            let out_now = summary.borrow().observations();
            worker_progress.fetch_add(out_now - reported, Ordering::Relaxed);
            reported = out_now;
            if finished {
                // Wait for the last chunks to be accepted by the writers.
                while !outbox.borrow().is_idle() {
                    std::thread::sleep(Duration::from_millis(1));
                    if !outbox.borrow_mut().flush(true) {
                        break;
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
    let errors = errors.lock().expect("errors lock");
    if let Some(e) = errors.first() {
        bail!("{e}");
    }
    let total = Summary::total(&summaries.lock().expect("summaries lock"), started.elapsed());
    Ok(total)
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
    }
}

fn encode(o: &Output) -> (u8, Vec<u8>) {
    let bytes = match o {
        Output::Verdict(v) => {
            let mut out = Vec::new();
            bizra_dataflows::wire::write_verdict(&mut out, v);
            Ok(out)
        }
        Output::Commitment(c) => serde_json::to_vec(c),
        Output::DeadLetter(d) => serde_json::to_vec(d),
    };
    (kind_of(o), bytes.expect("output records serialize"))
}
