//! What both drivers (embedded and Kafka) add around the decision dataflow on each worker:
//! metrics (only with `--http`) and the window statistics dataflow (always). The drivers
//! call [`WorkerTelemetry::output`] for every output record and [`WorkerTelemetry::tick`]
//! once per loop; neither blocks.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;

use bizra_dataflows::operators::commit::Output;
use bizra_dataflows::operators::{wall_ms, Observer, Structure};
use bizra_dataflows::stats::{self, Sample, StatsConfig, WindowStats, Windows};

use crate::consolidate::{ConsolidateConfig, Consolidator, SummarySender};
use crate::metrics::{Metrics, WorkerMetrics};

/// Process-wide telemetry settings and state, shared by the workers of one process.
#[derive(Clone)]
pub struct Telemetry {
    pub metrics: Option<Arc<Metrics>>,
    pub stats: StatsConfig,
    /// Working-memory (L2) consolidation, when on: its settings and the compressor's queue.
    pub consolidate: Option<(ConsolidateConfig, SummarySender)>,
    /// Highest event time any worker of this process has seen (`i64::MIN`: none yet).
    max_event_ms: Arc<AtomicI64>,
    /// When a worker of this process last read records (at first: when it started).
    last_read_ms: Arc<AtomicI64>,
}

impl Telemetry {
    pub fn new(metrics: Option<Arc<Metrics>>, stats: StatsConfig) -> Telemetry {
        Telemetry {
            metrics,
            stats,
            consolidate: None,
            max_event_ms: Arc::new(AtomicI64::new(i64::MIN)),
            last_read_ms: Arc::new(AtomicI64::new(wall_ms())),
        }
    }

    /// The event-time watermark of this process: the highest event time seen minus the
    /// allowed lateness. A process that has seen no verdict yet holds the windows while it
    /// has read records (their event times may be far behind the wall clock: a backlog), and
    /// once it has read nothing for `lateness_ms` it follows the wall clock, so that a process
    /// without input does not hold the cluster's windows back. One that has seen records and
    /// then idles holds them until it reads again or stops (as in other stream processors
    /// without idleness detection); stopping closes every window. Future-dated records
    /// never count (`Verdict::future_dated`), so the watermark stays below wall clock +
    /// `max_future_ms`.
    fn watermark_ms(&self) -> u64 {
        let max = self.max_event_ms.load(Ordering::Relaxed);
        if max != i64::MIN {
            return self.stats.watermark(max.max(0) as u64);
        }
        let now = wall_ms();
        let idle = now.saturating_sub(self.last_read_ms.load(Ordering::Relaxed));
        if idle >= self.stats.lateness_ms as i64 {
            self.stats.watermark(now.max(0) as u64)
        } else {
            0
        }
    }
}

/// One worker's telemetry.
pub struct WorkerTelemetry {
    shared: Telemetry,
    metrics: Option<Rc<RefCell<WorkerMetrics>>>,
    windows: Windows,
    consolidator: Option<Consolidator>,
    samples: Vec<Sample>,
    max_event_ms: i64,
    late_reported: u64,
    /// Future-dated verdicts seen since the last tick.
    future: u64,
    closed: bool,
}

impl WorkerTelemetry {
    /// Builds the window-statistics dataflow on `worker`; call before the decision dataflow.
    pub fn new(worker: &mut timely::worker::Worker, shared: &Telemetry) -> WorkerTelemetry {
        let consolidator = shared.consolidate.as_ref().map(|(cfg, _)| {
            Consolidator::new(cfg, worker.index() as u32).expect("consolidate config was validated at start")
        });
        WorkerTelemetry {
            windows: stats::windows(worker, &shared.stats),
            consolidator,
            metrics: shared
                .metrics
                .as_ref()
                .map(|m| Rc::new(RefCell::new(WorkerMetrics::new(m)))),
            shared: shared.clone(),
            samples: Vec::new(),
            max_event_ms: i64::MIN,
            late_reported: 0,
            future: 0,
            closed: false,
        }
    }

    /// The stage observer for [`bizra_dataflows::pipeline::build`], if metrics are on.
    pub fn observer(&self) -> Observer {
        self.metrics
            .as_ref()
            .map(|m| m.borrow().stages() as Rc<dyn bizra_dataflows::operators::StageObserver>)
    }

    /// Records the size of a structure the driver holds (see [`Structure`]).
    pub fn state(&self, structure: Structure, entries: usize) {
        if let Some(m) = &self.metrics {
            m.borrow().state(structure, entries);
        }
    }

    /// Records read from the source.
    pub fn read(&self, n: usize) {
        if n > 0 {
            self.shared.last_read_ms.store(wall_ms(), Ordering::Relaxed);
        }
        if let Some(m) = &self.metrics {
            m.borrow_mut().read(n);
        }
    }

    /// Counts one output record and keeps its window sample.
    pub fn output(&mut self, o: &Output) {
        if let Some(m) = &self.metrics {
            m.borrow_mut().output(o);
        }
        if let Output::Verdict(v) = o {
            if let Some(c) = &mut self.consolidator {
                c.observe(v);
            }
            // A future-dated record sits at its ingest time, but must not move the
            // watermark: in a backlog that is hours behind wall clock, that alone would make
            // every record after it late.
            if v.future_dated {
                self.future += 1;
            } else {
                self.max_event_ms = self.max_event_ms.max(v.event_ms);
            }
            self.samples.push(Sample::from_verdict(v, &self.shared.stats));
        }
    }

    /// Feeds the window dataflow, advances its watermark (or ends it, once `finished`),
    /// flushes the metrics, and returns the windows closed since the last call.
    pub fn tick(&mut self, finished: bool) -> Vec<WindowStats> {
        if self.max_event_ms != i64::MIN {
            self.shared
                .max_event_ms
                .fetch_max(self.max_event_ms, Ordering::Relaxed);
        }
        for s in self.samples.drain(..) {
            self.windows.push(s);
        }
        // One reading of the watermark for both consumers; `u64::MAX` once finished.
        let watermark = if finished {
            u64::MAX
        } else {
            self.shared.watermark_ms()
        };
        if finished && !self.closed {
            self.windows.finish();
            self.closed = true;
        } else if !self.closed {
            self.windows.advance(watermark);
        }
        if let (Some(c), Some((_, tx))) = (&mut self.consolidator, &self.shared.consolidate) {
            for s in c.advance(watermark.min(i64::MAX as u64) as i64) {
                tx.try_send(s); // a full queue drops and counts (bizra_memory_summaries_total)
            }
        }
        let out = self.windows.take();
        if let Some(m) = &self.metrics {
            let mut m = m.borrow_mut();
            m.state(
                Structure::StatsWindows,
                self.windows.state_size() + self.windows.pending_len(),
            );
            m.flush(finished);
        }
        if let Some(m) = &self.shared.metrics {
            let late = self.windows.late();
            m.late_samples.inc_by(late - self.late_reported);
            self.late_reported = late;
            m.future_records.inc_by(std::mem::take(&mut self.future));
            for w in &out {
                m.window(w);
            }
        }
        out
    }

    /// True once the window dataflow has emitted everything (after `tick(true)`).
    pub fn done(&self) -> bool {
        self.closed && self.windows.done()
    }
}

/// The memory layers' own counters, read by the ops thread for the metrics.
#[derive(Clone, Default)]
pub struct MemoryStats {
    pub archive: Option<Arc<crate::archive::ArchiveStats>>,
    pub compression: Option<Arc<crate::consolidate::CompressionStats>>,
}

/// Set by the drivers, read by `/readyz`.
pub type Ready = Arc<AtomicBool>;

/// Every half second: samples the process (RSS, CPU, memory limit), computes health from
/// the metrics, publishes it for `/healthz` and the gauge, and sets `/readyz` from
/// `started` (sources assigned) and the circuit breaker. Runs on its own thread.
pub fn spawn_ops_thread(
    ops: Arc<crate::http::Ops>,
    metrics: Arc<Metrics>,
    health: crate::health::HealthConfig,
    started: Ready,
    memory: MemoryStats,
) -> std::thread::JoinHandle<()> {
    use crate::health::{Circuit, HealthMonitor, Sample as HealthSample};
    use prometheus::core::Collector;
    std::thread::Builder::new()
        .name("bizra-ops".into())
        .spawn(move || {
            let mut monitor = HealthMonitor::new(health);
            let mut last_buckets = (Vec::new(), 0);
            let clock = std::time::Instant::now();
            loop {
                metrics.sample_process();
                if let Some(a) = &memory.archive {
                    metrics.archive(a, ops.recent.as_ref().map_or(0, |r| r.len()));
                }
                if let Some(c) = &memory.compression {
                    metrics.memory(&c.snapshot());
                }
                let verdicts = sum_of(&metrics.verdicts);
                let dead = sum_of(&metrics.dead_letters);
                let lag: Option<u64> = {
                    let fams = metrics.consumer_lag.collect();
                    let series: Vec<u64> = fams
                        .iter()
                        .flat_map(|f| f.get_metric())
                        .map(|m| m.get_gauge().get_value().max(0.0) as u64)
                        .collect();
                    (!series.is_empty()).then(|| series.iter().sum())
                };
                let circuit = match metrics.circuit_state.get() {
                    2 => Circuit::Open,
                    1 => Circuit::HalfOpen,
                    _ => Circuit::Closed,
                };
                let p99 = recent_p99_ms(&metrics.end_to_end_latency, &mut last_buckets);
                let h = monitor.observe(HealthSample {
                    now_ms: clock.elapsed().as_millis() as u64,
                    processed: verdicts,
                    errors: dead + metrics.delivery_failures.get(),
                    verify_failures: metrics.verify_failures.get(),
                    latency_p99_ms: p99,
                    lag,
                    circuit,
                });
                metrics.health.set(i64::from(h.status.code()));
                ops.set_health(
                    h.http_status(),
                    serde_json::to_string(h).unwrap_or_else(|_| "{}".into()),
                );
                metrics
                    .state_entries
                    .with_label_values(&[Structure::HealthHistory.name()])
                    .set(monitor.samples() as i64);
                ops.ready.store(
                    started.load(Ordering::Relaxed) && circuit != Circuit::Open,
                    Ordering::Relaxed,
                );
                std::thread::sleep(std::time::Duration::from_millis(500));
            }
        })
        .expect("spawning the ops thread")
}

/// The sum of every series of a labelled counter.
fn sum_of(v: &prometheus::IntCounterVec) -> u64 {
    use prometheus::core::Collector;
    v.collect()
        .iter()
        .flat_map(|f| f.get_metric())
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}

/// p99 (ms) of the end-to-end latencies observed since the previous call, from the
/// histogram's cumulative bucket counts (upper bound of the bucket holding the 99th
/// percentile; beyond the last bucket: infinity); `None` when nothing was observed.
fn recent_p99_ms(h: &prometheus::Histogram, last: &mut (Vec<u64>, u64)) -> Option<f64> {
    use prometheus::core::Collector;
    let fams = h.collect();
    let m = fams.first()?.get_metric().first()?.get_histogram().clone();
    let counts: Vec<u64> = m.get_bucket().iter().map(|b| b.cumulative_count()).collect();
    let total = m.get_sample_count();
    let (prev_counts, prev_total) = std::mem::replace(last, (counts.clone(), total));
    let delta = |i: usize| counts[i] - prev_counts.get(i).copied().unwrap_or(0);
    let n = total - prev_total;
    if n == 0 {
        return None;
    }
    let rank = (n as f64 * 0.99).ceil() as u64;
    let ms = (0..counts.len())
        .find(|&i| delta(i) >= rank)
        .map_or(f64::INFINITY, |i| m.get_bucket()[i].upper_bound() * 1000.0);
    Some(ms)
}
