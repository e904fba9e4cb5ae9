//! Prometheus metrics (SPEC §4, README "Metrics"). [`Metrics`] registers every family in a
//! registry the caller passes in, with every known label value at zero, so dashboards and
//! alerts never see a missing series. Timely workers never touch the shared atomics per
//! record: each keeps a [`WorkerMetrics`] of local counters and histograms and flushes it
//! every [`FLUSH_EVERY`].

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bizra_dataflows::dead_letter::ErrorKind;
use bizra_dataflows::ethics::Severity;
use bizra_dataflows::operators::commit::Output;
use bizra_dataflows::operators::{Stage, StageObserver, Structure};
use bizra_dataflows::rollback::Reason;
use bizra_dataflows::stats::WindowStats;
use bizra_dataflows::verdict::Decision;
use bizra_dataflows::verification::{SignatureCheck, Tier};
use prometheus::core::{AtomicF64, GenericCounter};
use prometheus::local::{LocalHistogram, LocalIntCounter};
use prometheus::{
    GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// How often a worker moves its local counts into the shared registry.
pub const FLUSH_EVERY: Duration = Duration::from_millis(250);

/// Latency buckets (seconds) that resolve 1 ms to 10 s.
const LATENCY_BUCKETS: [f64; 17] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 30.0,
];

/// Every metric family bizra exports.
pub struct Metrics {
    pub observations: IntCounter,
    pub verdicts: IntCounterVec,
    pub dead_letters: IntCounterVec,
    pub commitments: IntCounter,
    pub signature_checks: IntCounterVec,
    pub verify_failures: IntCounter,
    pub rollbacks: IntCounterVec,
    pub deferred_check_lag: Histogram,
    pub delivery_failures: IntCounter,
    pub commit_failures: IntCounter,
    pub inflight_bytes: IntGauge,
    pub late_samples: IntCounter,
    pub future_records: IntCounter,
    pub stage_latency: HistogramVec,
    pub end_to_end_latency: Histogram,
    pub batch_size: Histogram,
    pub seal_duration: Histogram,
    pub consumer_lag: IntGaugeVec,
    pub inflight_epochs: IntGauge,
    pub circuit_state: IntGauge,
    pub producer_queue: IntGauge,
    pub resident_memory: IntGauge,
    pub memory_limit: IntGauge,
    pub cpu_seconds: GenericCounter<AtomicF64>,
    pub health: IntGauge,
    pub window_observations: IntGaugeVec,
    pub window_decisions: IntGaugeVec,
    pub window_invalid: IntGaugeVec,
    pub window_clarity: GaugeVec,
    pub window_value: GaugeVec,
    pub window_latency: GaugeVec,
    pub info: IntGaugeVec,
    pub state_entries: IntGaugeVec,
    pub archive_episodes: IntCounter,
    pub archive_bytes: IntCounterVec,
    pub archive_errors: IntCounter,
    pub archive_segments_deleted: IntCounter,
    pub recall_episodes: IntGauge,
    pub summaries: IntCounterVec,
    pub summary_ratio: GaugeVec,
    pub summary_seconds: GaugeVec,
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help)
}

fn hist(name: &str, help: &str, buckets: Vec<f64>) -> HistogramOpts {
    HistogramOpts::new(name, help).buckets(buckets)
}

impl Metrics {
    /// Registers every family in `registry`. `domains` are the window-statistics domains
    /// (config `stats.domains` plus `other`); `policy_version` labels `bizra_info`.
    pub fn register(
        registry: &Registry,
        domains: &[String],
        policy_version: &str,
    ) -> prometheus::Result<Metrics> {
        let key = ["domain", "tier", "severity"];
        let m = Metrics {
            observations: IntCounter::with_opts(opts(
                "bizra_source_observations_total",
                "Records read from the source (good and bad).",
            ))?,
            verdicts: IntCounterVec::new(
                opts(
                    "bizra_sink_verdicts_total",
                    "Verdicts written, by decision and tier.",
                ),
                &["decision", "tier"],
            )?,
            dead_letters: IntCounterVec::new(
                opts(
                    "bizra_sink_dead_letters_total",
                    "Dead letters written, by error kind.",
                ),
                &["kind"],
            )?,
            commitments: IntCounter::with_opts(opts(
                "bizra_sink_commitments_total",
                "Signed batch commitments written.",
            ))?,
            signature_checks: IntCounterVec::new(
                opts(
                    "bizra_verify_signature_checks_total",
                    "Observation signature checks, by result.",
                ),
                &["result"],
            )?,
            verify_failures: IntCounter::with_opts(opts(
                "bizra_verify_failures_total",
                "Verdicts whose verification failed (valid = false).",
            ))?,
            rollbacks: IntCounterVec::new(
                opts(
                    "bizra_verify_rollbacks_total",
                    "Statistical verdicts emitted sampled_out whose later signature check failed, by reason.",
                ),
                &["reason"],
            )?,
            deferred_check_lag: Histogram::with_opts(hist(
                "bizra_verify_deferred_check_lag_seconds",
                "From a statistical verdict leaving sampled_out to its signature's later check.",
                LATENCY_BUCKETS.to_vec(),
            ))?,
            delivery_failures: IntCounter::with_opts(opts(
                "bizra_kafka_delivery_failures_total",
                "Records the Kafka producer failed to deliver.",
            ))?,
            commit_failures: IntCounter::with_opts(opts(
                "bizra_kafka_commit_failures_total",
                "Offset commits the broker did not confirm (each is retried with back-off).",
            ))?,
            inflight_bytes: IntGauge::with_opts(opts(
                "bizra_pipeline_inflight_bytes",
                "Input bytes read and not yet fully written, each record counted with its 4 KiB overhead (bounded by pipeline.max_inflight_bytes).",
            ))?,
            late_samples: IntCounter::with_opts(opts(
                "bizra_stats_late_samples_total",
                "Verdicts too late for their window statistics (event time behind the watermark).",
            ))?,
            future_records: IntCounter::with_opts(opts(
                "bizra_stats_future_records_total",
                "Verdicts whose claimed event time was more than stats.max_future_ms past their ingest time: windowed at ingest time, kept out of the watermark.",
            ))?,
            stage_latency: HistogramVec::new(
                hist(
                    "bizra_stage_latency_seconds",
                    "Time a batch of records spent in a stage of the dataflow.",
                    LATENCY_BUCKETS.to_vec(),
                ),
                &["stage"],
            )?,
            end_to_end_latency: Histogram::with_opts(hist(
                "bizra_pipeline_end_to_end_latency_seconds",
                "From a record entering bizra to its verdict leaving the dataflow.",
                LATENCY_BUCKETS.to_vec(),
            ))?,
            batch_size: Histogram::with_opts(hist(
                "bizra_verify_batch_size_records",
                "Leaves per sealed verification batch.",
                vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0],
            ))?,
            seal_duration: Histogram::with_opts(hist(
                "bizra_verify_seal_duration_seconds",
                "How long a verification batch stayed open before it was sealed.",
                LATENCY_BUCKETS.to_vec(),
            ))?,
            consumer_lag: IntGaugeVec::new(
                opts(
                    "bizra_kafka_consumer_lag_records",
                    "Input partition high watermark minus the committed offset.",
                ),
                &["partition"],
            )?,
            inflight_epochs: IntGauge::with_opts(opts(
                "bizra_pipeline_inflight_epochs",
                "Epochs read but not yet fully written (delivered, in Kafka mode).",
            ))?,
            circuit_state: IntGauge::with_opts(opts(
                "bizra_kafka_circuit_breaker_state",
                "Producer circuit breaker: 0 closed, 1 half-open, 2 open.",
            ))?,
            producer_queue: IntGauge::with_opts(opts(
                "bizra_kafka_producer_queue_records",
                "Records waiting for the broker: queued in bizra or in the producer.",
            ))?,
            resident_memory: IntGauge::with_opts(opts(
                "bizra_process_resident_memory_bytes",
                "Resident set size of the process.",
            ))?,
            memory_limit: IntGauge::with_opts(opts(
                "bizra_process_memory_limit_bytes",
                "Memory limit of the process's cgroup; 0 when unlimited.",
            ))?,
            cpu_seconds: GenericCounter::with_opts(opts(
                "bizra_process_cpu_seconds_total",
                "User and system CPU time of the process.",
            ))?,
            health: IntGauge::with_opts(opts(
                "bizra_health_status",
                "Health: 0 healthy, 1 degraded, 2 critical, 3 recovering.",
            ))?,
            window_observations: IntGaugeVec::new(
                opts(
                    "bizra_window_observations",
                    "Verdicts in the latest closed window.",
                ),
                &key,
            )?,
            window_decisions: IntGaugeVec::new(
                opts(
                    "bizra_window_decisions",
                    "Verdicts by decision in the latest closed window.",
                ),
                &["domain", "tier", "severity", "decision"],
            )?,
            window_invalid: IntGaugeVec::new(
                opts(
                    "bizra_window_invalid",
                    "Verdicts failing verification in the latest closed window.",
                ),
                &key,
            )?,
            window_clarity: GaugeVec::new(
                opts(
                    "bizra_window_clarity_mean",
                    "Mean clarity in the latest closed window.",
                ),
                &key,
            )?,
            window_value: GaugeVec::new(
                opts(
                    "bizra_window_value_mean",
                    "Mean value in the latest closed window.",
                ),
                &key,
            )?,
            window_latency: GaugeVec::new(
                opts(
                    "bizra_window_latency_seconds",
                    "Verdict latency quantiles in the latest closed window.",
                ),
                &["domain", "tier", "severity", "quantile"],
            )?,
            info: IntGaugeVec::new(
                opts(
                    "bizra_info",
                    "Constant 1, labelled with the version and policy version.",
                ),
                &["version", "policy_version"],
            )?,
            archive_episodes: IntCounter::with_opts(opts(
                "bizra_archive_episodes_total",
                "Episodes written to the archive.",
            ))?,
            archive_bytes: IntCounterVec::new(
                opts(
                    "bizra_archive_bytes_total",
                    "Archive bytes since start: binary episode entries in, xz out (their ratio is the compression).",
                ),
                &["form"],
            )?,
            archive_errors: IntCounter::with_opts(opts(
                "bizra_archive_errors_total",
                "Failed archive writes, segment finishes and retention passes.",
            ))?,
            archive_segments_deleted: IntCounter::with_opts(opts(
                "bizra_archive_segments_deleted_total",
                "Segments deleted by retention.",
            ))?,
            recall_episodes: IntGauge::with_opts(opts(
                "bizra_archive_recall_episodes",
                "Episodes held by the recall cache behind /episodes/{id}.",
            ))?,
            summaries: IntCounterVec::new(
                opts(
                    "bizra_memory_summaries_total",
                    "Window summaries (L2) by outcome: compressed, dropped (queue full), failed.",
                ),
                &["outcome"],
            )?,
            summary_ratio: GaugeVec::new(
                opts(
                    "bizra_memory_compression_ratio",
                    "JSON/xz size ratio of the last window summaries compressed (sliding window), mean and max.",
                ),
                &["stat"],
            )?,
            summary_seconds: GaugeVec::new(
                opts(
                    "bizra_memory_compression_seconds",
                    "Time to compress one window summary over the last ones (sliding window), mean and p95.",
                ),
                &["stat"],
            )?,
            state_entries: IntGaugeVec::new(
                opts(
                    "bizra_state_entries",
                    "Entries held by each bounded structure, summed over the workers of this process.",
                ),
                &["structure"],
            )?,
        };
        m.register_all(registry)?;
        m.info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), policy_version])
            .set(1);
        m.zero_known_labels(domains);
        Ok(m)
    }

    fn register_all(&self, r: &Registry) -> prometheus::Result<()> {
        r.register(Box::new(self.observations.clone()))?;
        r.register(Box::new(self.verdicts.clone()))?;
        r.register(Box::new(self.dead_letters.clone()))?;
        r.register(Box::new(self.commitments.clone()))?;
        r.register(Box::new(self.signature_checks.clone()))?;
        r.register(Box::new(self.verify_failures.clone()))?;
        r.register(Box::new(self.rollbacks.clone()))?;
        r.register(Box::new(self.deferred_check_lag.clone()))?;
        r.register(Box::new(self.delivery_failures.clone()))?;
        r.register(Box::new(self.late_samples.clone()))?;
        r.register(Box::new(self.future_records.clone()))?;
        r.register(Box::new(self.commit_failures.clone()))?;
        r.register(Box::new(self.inflight_bytes.clone()))?;
        r.register(Box::new(self.stage_latency.clone()))?;
        r.register(Box::new(self.end_to_end_latency.clone()))?;
        r.register(Box::new(self.batch_size.clone()))?;
        r.register(Box::new(self.seal_duration.clone()))?;
        r.register(Box::new(self.consumer_lag.clone()))?;
        r.register(Box::new(self.inflight_epochs.clone()))?;
        r.register(Box::new(self.circuit_state.clone()))?;
        r.register(Box::new(self.producer_queue.clone()))?;
        r.register(Box::new(self.resident_memory.clone()))?;
        r.register(Box::new(self.memory_limit.clone()))?;
        r.register(Box::new(self.cpu_seconds.clone()))?;
        r.register(Box::new(self.health.clone()))?;
        r.register(Box::new(self.window_observations.clone()))?;
        r.register(Box::new(self.window_decisions.clone()))?;
        r.register(Box::new(self.window_invalid.clone()))?;
        r.register(Box::new(self.window_clarity.clone()))?;
        r.register(Box::new(self.window_value.clone()))?;
        r.register(Box::new(self.window_latency.clone()))?;
        r.register(Box::new(self.info.clone()))?;
        r.register(Box::new(self.state_entries.clone()))?;
        r.register(Box::new(self.archive_episodes.clone()))?;
        r.register(Box::new(self.archive_bytes.clone()))?;
        r.register(Box::new(self.archive_errors.clone()))?;
        r.register(Box::new(self.archive_segments_deleted.clone()))?;
        r.register(Box::new(self.recall_episodes.clone()))?;
        r.register(Box::new(self.summaries.clone()))?;
        r.register(Box::new(self.summary_ratio.clone()))?;
        r.register(Box::new(self.summary_seconds.clone()))?;
        Ok(())
    }

    /// Creates every series whose label values are known in advance, at zero.
    fn zero_known_labels(&self, domains: &[String]) {
        for d in Decision::ALL {
            for t in Tier::ALL {
                self.verdicts.with_label_values(&[d.as_str(), t.as_str()]);
            }
        }
        for k in ErrorKind::ALL {
            self.dead_letters.with_label_values(&[k.as_str()]);
        }
        for r in SignatureCheck::ALL {
            self.signature_checks.with_label_values(&[r.as_str()]);
        }
        for r in Reason::ALL {
            self.rollbacks.with_label_values(&[r.as_str()]);
        }
        for s in Stage::ALL {
            self.stage_latency.with_label_values(&[s.name()]);
        }
        for s in Structure::ALL {
            self.state_entries.with_label_values(&[s.name()]);
        }
        for f in ["raw", "xz"] {
            self.archive_bytes.with_label_values(&[f]);
        }
        for o in ["compressed", "dropped", "failed"] {
            self.summaries.with_label_values(&[o]);
        }
        for s in ["mean", "max"] {
            self.summary_ratio.with_label_values(&[s]);
        }
        for s in ["mean", "p95"] {
            self.summary_seconds.with_label_values(&[s]);
        }
        for domain in domains {
            for t in Tier::ALL {
                for s in Severity::ALL {
                    let key = [domain.as_str(), t.as_str(), s.as_str()];
                    self.window_observations.with_label_values(&key);
                    self.window_invalid.with_label_values(&key);
                    self.window_clarity.with_label_values(&key);
                    self.window_value.with_label_values(&key);
                    for d in Decision::ALL {
                        self.window_decisions
                            .with_label_values(&[key[0], key[1], key[2], d.as_str()]);
                    }
                    for q in QUANTILES {
                        self.window_latency
                            .with_label_values(&[key[0], key[1], key[2], q]);
                    }
                }
            }
        }
    }

    /// Sets the window gauges from one closed window's record.
    pub fn window(&self, w: &WindowStats) {
        let key = [w.domain.as_str(), w.tier.as_str(), w.severity.as_str()];
        self.window_observations
            .with_label_values(&key)
            .set(w.count as i64);
        self.window_invalid.with_label_values(&key).set(w.invalid as i64);
        self.window_clarity.with_label_values(&key).set(w.mean_clarity);
        self.window_value.with_label_values(&key).set(w.mean_value);
        for (d, n) in Decision::ALL.iter().zip([w.permit, w.review, w.deny]) {
            self.window_decisions
                .with_label_values(&[key[0], key[1], key[2], d.as_str()])
                .set(n as i64);
        }
        let l = &w.latency_ms;
        for (q, ms) in QUANTILES.iter().zip([l.p50, l.p95, l.p99]) {
            self.window_latency
                .with_label_values(&[key[0], key[1], key[2], q])
                .set(ms / 1000.0);
        }
    }

    /// Copies the archive writers' counters and the recall cache's size.
    pub fn archive(&self, a: &crate::archive::ArchiveStats, recall: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        let n = |c: &std::sync::atomic::AtomicU64| c.load(Relaxed);
        catch_up(&self.archive_episodes, n(&a.episodes));
        catch_up(
            &self.archive_bytes.with_label_values(&["raw"]),
            n(&a.content_bytes),
        );
        catch_up(&self.archive_bytes.with_label_values(&["xz"]), n(&a.xz_bytes));
        catch_up(&self.archive_errors, n(&a.errors));
        catch_up(&self.archive_segments_deleted, n(&a.segments_deleted));
        self.recall_episodes.set(recall as i64);
    }

    /// Copies the summary compressor's windowed statistics.
    pub fn memory(&self, s: &crate::consolidate::Snapshot) {
        catch_up(&self.summaries.with_label_values(&["compressed"]), s.compressed);
        catch_up(&self.summaries.with_label_values(&["dropped"]), s.dropped);
        catch_up(&self.summaries.with_label_values(&["failed"]), s.errors);
        self.summary_ratio.with_label_values(&["mean"]).set(s.mean_ratio);
        self.summary_ratio.with_label_values(&["max"]).set(s.max_ratio);
        self.summary_seconds
            .with_label_values(&["mean"])
            .set(s.mean_seconds);
        self.summary_seconds
            .with_label_values(&["p95"])
            .set(s.p95_seconds);
    }

    /// Reads RSS, CPU time and the cgroup memory limit of this process (Linux; zero elsewhere).
    pub fn sample_process(&self) {
        let p = process_sample();
        self.resident_memory.set(p.rss_bytes as i64);
        self.memory_limit.set(p.limit_bytes as i64);
        let delta = p.cpu_seconds - self.cpu_seconds.get();
        if delta > 0.0 {
            self.cpu_seconds.inc_by(delta);
        }
    }
}

const QUANTILES: [&str; 3] = ["0.5", "0.95", "0.99"];

/// Raises a counter to `total`, a count kept elsewhere (by a background thread).
fn catch_up(c: &IntCounter, total: u64) {
    let now = c.get();
    if total > now {
        c.inc_by(total - now);
    }
}

/// One reading of the process's resources.
#[derive(Default)]
pub struct ProcessSample {
    pub rss_bytes: u64,
    pub cpu_seconds: f64,
    pub limit_bytes: u64,
}

/// Reads /proc/self/stat (CPU ticks, RSS pages) and the cgroup v2/v1 memory limit.
pub fn process_sample() -> ProcessSample {
    let mut out = ProcessSample::default();
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the parenthesised command name; utime, stime are 14, 15; rss is 24.
        if let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) {
            let f: Vec<&str> = rest.split_whitespace().collect();
            let num = |i: usize| f.get(i - 3).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
            out.cpu_seconds = (num(14) + num(15)) as f64 / 100.0;
            out.rss_bytes = num(24) * 4096;
        }
    }
    for path in [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ] {
        if let Ok(s) = std::fs::read_to_string(path) {
            // "max" (v2) or a huge number (v1) mean unlimited.
            out.limit_bytes = s.trim().parse::<u64>().ok().filter(|v| *v < 1 << 60).unwrap_or(0);
            break;
        }
    }
    out
}

/// A worker's local view of the counters and histograms it updates; flushed into the
/// shared families every [`FLUSH_EVERY`] so that no per-record work touches an atomic.
pub struct WorkerMetrics {
    observations: LocalIntCounter,
    verdicts: Vec<LocalIntCounter>,
    dead_letters: Vec<LocalIntCounter>,
    commitments: LocalIntCounter,
    signature_checks: Vec<LocalIntCounter>,
    verify_failures: LocalIntCounter,
    rollbacks: Vec<LocalIntCounter>,
    end_to_end: LocalHistogram,
    batch_size: LocalHistogram,
    seal: LocalHistogram,
    stages: Rc<StageHistograms>,
    /// Per [`Structure`]: this worker's share of the gauge, as last flushed.
    state_flushed: Vec<i64>,
    state_gauges: Vec<IntGauge>,
    last_flush: Instant,
}

/// A worker's local stage-latency histograms, one per [`Stage`], and the latest size of each
/// bounded structure, one per [`Structure`]; the dataflow's operators report into them (see
/// [`bizra_dataflows::operators::StageObserver`]).
pub struct StageHistograms {
    latency: Vec<LocalHistogram>,
    state: Vec<Cell<usize>>,
    deferred_lag: LocalHistogram,
}

impl StageObserver for StageHistograms {
    fn observe(&self, stage: Stage, elapsed: Duration) {
        self.latency[stage as usize].observe(elapsed.as_secs_f64());
    }

    fn state(&self, structure: Structure, entries: usize) {
        self.state[structure as usize].set(entries);
    }

    fn deferred_check(&self, lag: Duration) {
        self.deferred_lag.observe(lag.as_secs_f64());
    }
}

impl WorkerMetrics {
    pub fn new(m: &Metrics) -> WorkerMetrics {
        let verdicts = Decision::ALL
            .iter()
            .flat_map(|d| Tier::ALL.iter().map(move |t| (*d, *t)))
            .map(|(d, t)| m.verdicts.with_label_values(&[d.as_str(), t.as_str()]).local())
            .collect();
        WorkerMetrics {
            observations: m.observations.local(),
            verdicts,
            dead_letters: ErrorKind::ALL
                .iter()
                .map(|k| m.dead_letters.with_label_values(&[k.as_str()]).local())
                .collect(),
            commitments: m.commitments.local(),
            signature_checks: SignatureCheck::ALL
                .iter()
                .map(|r| m.signature_checks.with_label_values(&[r.as_str()]).local())
                .collect(),
            verify_failures: m.verify_failures.local(),
            rollbacks: Reason::ALL
                .iter()
                .map(|r| m.rollbacks.with_label_values(&[r.as_str()]).local())
                .collect(),
            end_to_end: m.end_to_end_latency.local(),
            batch_size: m.batch_size.local(),
            seal: m.seal_duration.local(),
            stages: Rc::new(StageHistograms {
                latency: Stage::ALL
                    .iter()
                    .map(|s| m.stage_latency.with_label_values(&[s.name()]).local())
                    .collect(),
                state: Structure::ALL.iter().map(|_| Cell::new(0)).collect(),
                deferred_lag: m.deferred_check_lag.local(),
            }),
            state_flushed: vec![0; Structure::ALL.len()],
            state_gauges: Structure::ALL
                .iter()
                .map(|s| m.state_entries.with_label_values(&[s.name()]))
                .collect(),
            last_flush: Instant::now(),
        }
    }

    /// Records read from the source.
    pub fn read(&mut self, n: usize) {
        self.observations.inc_by(n as u64);
    }

    /// Counts one output of the dataflow.
    pub fn output(&mut self, o: &Output) {
        match o {
            Output::Verdict(v) => {
                let (d, t) = (v.decision as usize, v.verification.tier as usize);
                self.verdicts[d * Tier::ALL.len() + t].inc();
                self.signature_checks[v.verification.checks.signature as usize].inc();
                if !v.verification.valid {
                    self.verify_failures.inc();
                }
                self.end_to_end.observe(v.latency_ms / 1000.0);
            }
            Output::Commitment(c) => {
                self.commitments.inc();
                self.batch_size.observe(c.tree_size as f64);
                self.seal.observe(c.open_ms as f64 / 1000.0);
            }
            Output::DeadLetter(d) => self.dead_letters[d.error as usize].inc(),
            Output::Rollback(r) => self.rollbacks[r.reason as usize].inc(),
            Output::Replay(_) => {}
        }
    }

    /// Moves the local counts into the shared families if [`FLUSH_EVERY`] has passed (or
    /// always, with `force`).
    pub fn flush(&mut self, force: bool) {
        if !force && self.last_flush.elapsed() < FLUSH_EVERY {
            return;
        }
        self.last_flush = Instant::now();
        self.observations.flush();
        self.commitments.flush();
        self.verify_failures.flush();
        self.end_to_end.flush();
        self.batch_size.flush();
        self.seal.flush();
        for c in self
            .verdicts
            .iter()
            .chain(&self.dead_letters)
            .chain(&self.signature_checks)
            .chain(&self.rollbacks)
        {
            c.flush();
        }
        for h in &self.stages.latency {
            h.flush();
        }
        self.stages.deferred_lag.flush();
        for ((now, flushed), gauge) in self
            .stages
            .state
            .iter()
            .zip(&mut self.state_flushed)
            .zip(&self.state_gauges)
        {
            let now = now.get() as i64;
            gauge.add(now - *flushed);
            *flushed = now;
        }
    }

    /// Records the size of a structure the runtime (not the dataflow) holds.
    pub fn state(&self, structure: Structure, entries: usize) {
        self.stages.state(structure, entries);
    }

    /// The stage observer to hand to the dataflow.
    pub fn stages(&self) -> Rc<StageHistograms> {
        self.stages.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::Encoder;

    #[test]
    fn every_family_is_exported_at_start_with_known_labels_at_zero() {
        let r = Registry::new();
        let _m = Metrics::register(&r, &["finance".into(), "other".into()], "p1").unwrap();
        let mut buf = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&r.gather(), &mut buf)
            .unwrap();
        let text = String::from_utf8(buf).unwrap();
        for line in [
            "bizra_sink_verdicts_total{decision=\"deny\",tier=\"full\"} 0",
            "bizra_sink_dead_letters_total{kind=\"message_too_large\"} 0",
            "bizra_verify_signature_checks_total{result=\"sampled_out\"} 0",
            "bizra_verify_rollbacks_total{reason=\"signature_bad\"} 0",
            "bizra_state_entries{structure=\"deferred_checks\"} 0",
            "bizra_verify_deferred_check_lag_seconds_count 0",
            "bizra_stage_latency_seconds_count{stage=\"verify\"} 0",
            "bizra_window_observations{domain=\"other\",severity=\"problematic\",tier=\"statistical\"} 0",
            "bizra_kafka_circuit_breaker_state 0",
            "bizra_pipeline_end_to_end_latency_seconds_bucket{le=\"0.001\"} 0",
        ] {
            assert!(text.contains(line), "missing {line}");
        }
        // Per-partition series wait for partitions.
        assert!(!text.contains("bizra_kafka_consumer_lag_records{"));
        // Every family is there, even without samples.
        for family in [
            "bizra_process_resident_memory_bytes",
            "bizra_process_cpu_seconds_total",
            "bizra_health_status",
            "bizra_info",
        ] {
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "missing family {family}"
            );
        }
    }

    #[test]
    fn process_sample_reads_this_process() {
        let p = process_sample();
        assert!(p.rss_bytes > 1 << 20, "rss {}", p.rss_bytes);
        assert!(p.cpu_seconds >= 0.0);
    }
}
