//! Kafka mode (`bizra run --brokers …`): the same decision dataflow between a Kafka source
//! and Kafka sinks, with at-least-once delivery (SPEC §4).
//!
//! Each timely worker owns one consumer, manually assigned the input partitions `p` with
//! `p mod workers = worker` (over all workers of all processes; partitions added to the topic
//! later are found by a watcher thread and taken on the same way), and two idempotent
//! producers (outputs, and the replay guard's state; `sink.rs`). Before any worker runs, the
//! replay guard's state is read back from its topic (`replay.rs`). Epochs are logical: a
//! worker's input advances one epoch every `kafka.tick_ms`, or at once to the highest epoch
//! another worker has announced, but never more than `max_inflight_ticks` past the frontier
//! of the whole cluster, so the processes keep step however their clocks disagree
//! (`epochs.rs`). The sink holds a capability for every
//! epoch whose records are not yet acknowledged by the broker, so the frontier after the sink
//! says "everything derived from earlier epochs is durable"; only then are the offsets read
//! in those epochs committed, and only once the broker confirms a commit does it count
//! (`offsets.rs`).
//!
//! Nothing here blocks a worker: partition queues wake the worker through librdkafka's
//! non-empty callback, polls use a zero timeout, and `QueueFull` keeps records queued in
//! the outbox and pauses consumption.

pub mod breaker;
pub mod chains;
pub mod epochs;
pub mod offsets;
pub mod replay;
pub mod replay_input;
pub mod sink;
pub mod source;

use serde::{Deserialize, Serialize};

pub use breaker::BreakerConfig;

/// Kafka settings (config `[kafka]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers; empty = embedded mode. `--brokers` overrides.
    pub brokers: String,
    /// Consumer group whose committed offsets are the progress of this deployment.
    pub group_id: String,
    pub input_topic: String,
    pub verdicts_topic: String,
    pub commitments_topic: String,
    pub dlq_topic: String,
    /// Window statistics (SPEC §1.5).
    pub stats_topic: String,
    /// Rollbacks of statistical verdicts (SPEC §1.6).
    pub rollbacks_topic: String,
    /// The replay guard's persisted state, read back at every start.
    pub replay_topic: String,
    /// Signed checkpoints of each shard's decision log (SPEC §3.4).
    pub checkpoints_topic: String,
    /// Where a group with no committed offset starts: `earliest` or `latest`.
    pub start_offset: String,
    /// `plaintext`, `ssl`, `sasl_plaintext` or `sasl_ssl` (TLS via the system OpenSSL; SASL PLAIN/SCRAM).
    pub security_protocol: String,
    pub sasl_mechanism: String,
    pub sasl_username: String,
    pub sasl_password: String,
    pub ssl_ca_location: String,
    /// How long start-up waits for the broker (metadata of the input topic).
    pub connect_timeout_ms: u64,
    /// Longest a graceful shutdown may take to drain, flush and commit.
    pub shutdown_timeout_ms: u64,
    /// Length of an epoch.
    pub tick_ms: u64,
    /// Records a worker reads per tick at most.
    pub max_records_per_tick: usize,
    /// Epochs a worker's input may run ahead of the acknowledged output of the whole cluster.
    pub max_inflight_ticks: u64,
    /// How often to look for partitions added to the input topic (0: never).
    pub partition_discovery_ms: u64,
    pub breaker: BreakerConfig,
    /// Passed to librdkafka as given, to consumers and producers, e.g. `"socket.nagle.disable" = "true"`.
    pub options: std::collections::BTreeMap<String, String>,
    /// Passed to the consumers only, e.g. `"fetch.wait.max.ms" = "50"`.
    pub consumer_options: std::collections::BTreeMap<String, String>,
    /// Passed to the producers only, e.g. `"compression.type" = "zstd"`.
    pub producer_options: std::collections::BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: String::new(),
            group_id: "bizra".into(),
            input_topic: "bizra.observations".into(),
            verdicts_topic: "bizra.verdicts".into(),
            commitments_topic: "bizra.commitments".into(),
            dlq_topic: "bizra.dlq".into(),
            stats_topic: "bizra.stats".into(),
            rollbacks_topic: "bizra.rollbacks".into(),
            replay_topic: "bizra.replay".into(),
            checkpoints_topic: "bizra.checkpoints".into(),
            start_offset: "earliest".into(),
            security_protocol: "plaintext".into(),
            sasl_mechanism: String::new(),
            sasl_username: String::new(),
            sasl_password: String::new(),
            ssl_ca_location: String::new(),
            connect_timeout_ms: 15_000,
            shutdown_timeout_ms: 30_000,
            tick_ms: 2,
            max_records_per_tick: 1024,
            max_inflight_ticks: 250,
            partition_discovery_ms: 10_000,
            breaker: BreakerConfig::default(),
            options: Default::default(),
            consumer_options: Default::default(),
            producer_options: Default::default(),
        }
    }
}

impl KafkaConfig {
    /// Applies the `options` passthrough map last, so that it overrides bizra's defaults
    /// (the delivery-contract keys are rejected at config load, `PROTECTED_OPTIONS`).
    pub fn with_options(&self, mut c: rdkafka::ClientConfig, producer: bool) -> rdkafka::ClientConfig {
        let own = if producer {
            &self.producer_options
        } else {
            &self.consumer_options
        };
        for (k, v) in self.options.iter().chain(own) {
            c.set(k, v);
        }
        c
    }

    /// The first passthrough key that bizra does not let the options change, if any.
    pub fn protected_option(&self) -> Option<&str> {
        [&self.options, &self.consumer_options, &self.producer_options]
            .into_iter()
            .flat_map(|m| m.keys())
            .map(String::as_str)
            .find(|k| PROTECTED_OPTIONS.contains(k))
    }

    /// The librdkafka settings common to consumers and producers.
    pub fn client_config(&self) -> rdkafka::ClientConfig {
        let mut c = rdkafka::ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        c.set("security.protocol", &self.security_protocol);
        for (k, v) in [
            ("sasl.mechanism", &self.sasl_mechanism),
            ("sasl.username", &self.sasl_username),
            ("sasl.password", &self.sasl_password),
            ("ssl.ca.location", &self.ssl_ca_location),
        ] {
            if !v.is_empty() {
                c.set(k, v);
            }
        }
        c
    }
}

/// librdkafka settings the delivery contract depends on (SPEC §4): `[kafka.options]` may not
/// change them.
pub const PROTECTED_OPTIONS: &[&str] = &[
    "enable.idempotence",
    "acks",
    "request.required.acks",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "group.id",
    "bootstrap.servers",
];

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bizra_dataflows::operators::commit::Output;
use bizra_dataflows::operators::Structure;
use bizra_dataflows::pipeline::{self, PipelineConfig, RawRecord};
use rdkafka::consumer::CommitMode;
use timely::dataflow::operators::Input;
use timely::dataflow::operators::Probe;
use timely::dataflow::{InputHandle, ProbeHandle};

use crate::archive::{archived, ArchiveOutbox, Lanes};
use crate::config::{LimitsConfig, PipelineSettings};
use crate::fatal::halt;
use crate::inflight::Inflight;
use crate::run::{Cluster, Services, Summary};
use crate::telemetry::{Ready, Telemetry, WorkerTelemetry};
use breaker::Breaker;
use offsets::{Committer, OffsetTracker};
use sink::Written;

/// The bounds a Kafka run enforces, from `[pipeline]` and `[limits]`.
#[derive(Clone, Debug)]
pub struct Bounds {
    pub pacing: PipelineSettings,
    pub limits: LimitsConfig,
}

/// Runs the pipeline on Kafka until `shutdown` is set, then drains, flushes and commits. A
/// fatal error on the way ends the process (`fatal.rs`).
pub fn run(
    cluster: Cluster,
    mut cfg: PipelineConfig,
    kafka: KafkaConfig,
    bounds: Bounds,
    shutdown: Arc<AtomicBool>,
    ready: Ready,
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
    sink::check_message_limit(&kafka, bounds.limits.max_output_bytes).map_err(|e| anyhow::anyhow!("{e}"))?;
    let initial = source::partition_count(&kafka)?;
    // The replay guard's window continues the last run's (SPEC §2.2).
    let per_bucket = bizra_dataflows::verification::replay::per_bucket(cfg.verify.replay_window_ids);
    let restorer = replay::restore_consumer(&kafka)?;
    cfg.replay = Some(replay::load(&restorer, &kafka, &cfg.sample_key, per_bucket)?);
    // Each shard's commitment chain continues from its last durable commitment (SPEC §3.4).
    let first = (cluster.process * cluster.workers) as u32;
    let run_hex = bizra_dataflows::verification::commitment::run_id_hex(&cfg.run);
    let pk = cfg.signing_key.verifying_key();
    cfg.chains = Arc::new(chains::load(
        &restorer,
        &kafka,
        &run_hex,
        first..first + cluster.workers as u32,
        &pk,
        log.resume_past_unreadable,
    )?);
    drop(restorer);
    let partitions = source::watch_partitions(&kafka, initial)?;
    let assigned = Arc::new(AtomicUsize::new(0));
    tracing::info!(brokers = %kafka.brokers, topic = %kafka.input_topic, partitions = initial, group = %kafka.group_id, "kafka source");
    let timely_cfg = cluster.timely_config()?;
    let summaries = Arc::new(Mutex::new(Vec::<Summary>::new()));
    let worker_summaries = summaries.clone();
    // One breaker for the process: an outage is the broker's, not one worker's.
    let breaker = Arc::new(Breaker::new(kafka.breaker.clone()));
    let clock = Instant::now();
    let formed = cluster.watch_formation(bounds.pacing.cluster_timeout_ms);

    let guards = timely::execute(timely_cfg, move |worker| {
        formed.store(true, Ordering::Relaxed);
        let control = Control {
            shutdown: &shutdown,
            progress: &progress,
            telemetry: &telemetry,
            archive: archive.as_ref(),
            log: &log,
            checkpoints: &checkpoints,
            partitions: &partitions,
            breaker: &breaker,
            clock,
            on_assigned: &|| {
                // Ready once every worker of this process has its partitions.
                if assigned.fetch_add(1, Ordering::Relaxed) + 1 == cluster.workers {
                    ready.store(true, Ordering::Relaxed);
                }
            },
        };
        match worker_loop(worker, &cfg, &kafka, &bounds, cluster.workers, &control) {
            Ok(s) => worker_summaries.lock().expect("summaries lock").push(s),
            Err(e) => halt(format_args!("{e:#}")),
        }
    })
    .map_err(|e| anyhow::anyhow!("starting timely: {e}"))?;
    drop(guards.join());
    let total = Summary::total(&summaries.lock().expect("summaries lock"), started.elapsed());
    Ok(total)
}

/// What a worker shares with the rest of the process.
struct Control<'a> {
    /// Set by SIGTERM/SIGINT.
    shutdown: &'a AtomicBool,
    /// Observations out, for the progress display.
    progress: &'a AtomicU64,
    telemetry: &'a Telemetry,
    /// The episode archive's lanes, one per worker, when the archive is on.
    archive: Option<&'a Lanes>,
    /// The decision log's settings.
    log: &'a crate::config::LogConfig,
    /// The latest checkpoint of each shard, for `/checkpoint`.
    checkpoints: &'a crate::decision_log::Latest,
    /// The input topic's partition count, kept current by the watcher thread.
    partitions: &'a AtomicI32,
    /// The producers' circuit breaker, shared by the workers of this process.
    breaker: &'a Breaker,
    /// The process's monotonic clock, which the breaker's times are read from.
    clock: Instant,
    /// Called once the worker's partitions are assigned.
    on_assigned: &'a dyn Fn(),
}

/// Counts every output as the sink hands it to the producer.
struct Counts<'a> {
    summary: &'a RefCell<Summary>,
    tel: &'a RefCell<WorkerTelemetry>,
}

impl Written for Counts<'_> {
    fn written(&mut self, o: &Output) {
        self.summary.borrow_mut().count(o);
        self.tel.borrow_mut().output(o);
    }

    fn replaced(&mut self, o: &Output, instead: &Output) {
        // The refused verdict stays in the metrics (it was written, then refused); the
        // summary counts each input once.
        self.summary.borrow_mut().uncount(o);
        self.written(instead);
    }
}

fn worker_loop(
    worker: &mut timely::worker::Worker,
    cfg: &PipelineConfig,
    kafka: &KafkaConfig,
    bounds: &Bounds,
    local_workers: usize,
    control: &Control<'_>,
) -> anyhow::Result<Summary> {
    let Control {
        shutdown,
        progress,
        telemetry,
        archive,
        log,
        checkpoints,
        partitions,
        breaker,
        clock,
        on_assigned,
    } = *control;
    let archive = archive.map(ArchiveOutbox::from_lanes);
    let index = worker.index();
    let peers = worker.peers();
    let mut known = partitions.load(Ordering::Relaxed);
    let mine = source::assigned(known, index, peers);
    let thread = std::thread::current();
    let metrics = telemetry.metrics.clone();
    // This worker's share of the process's byte budget: in flight through the dataflow, and
    // in librdkafka's prefetch and producer queues.
    let budget = bounds.pacing.max_inflight_bytes / local_workers.max(1);
    let max_output = bounds.limits.max_output_bytes;
    let producer_queue = budget.max(2 * (max_output + sink::RECORD_FRAMING_BYTES));
    let mut src = source::Source::new(
        kafka,
        (index, peers),
        &mine,
        cfg.max_message_bytes,
        budget / 4,
        metrics.clone(),
        move || thread.unpark(),
    )?;
    let producers = sink::Producers::new(kafka, producer_queue)?;
    let topics = [
        kafka.verdicts_topic.clone(),
        kafka.commitments_topic.clone(),
        kafka.dlq_topic.clone(),
        kafka.stats_topic.clone(),
        kafka.rollbacks_topic.clone(),
        kafka.replay_topic.clone(),
        kafka.checkpoints_topic.clone(),
    ];
    tracing::info!(worker = index, partitions = ?mine, after_ms = clock.elapsed().as_millis() as u64, "assigned");
    on_assigned();
    let tel = Rc::new(RefCell::new(WorkerTelemetry::new(worker, telemetry)));
    let observer = tel.borrow().observer();

    let mut input = InputHandle::<u64, timely::container::CapacityContainerBuilder<Vec<RawRecord>>>::new();
    let probe = ProbeHandle::new();
    let outbox = sink::Outbox::new(max_output);
    let mut checkpointer = crate::decision_log::Checkpointer::new(
        &log.deployment,
        cfg.signing_key.clone(),
        log.checkpoint_interval_ms,
        Some(checkpoints.clone()),
    );
    // The restored chain is in the topic already: durable.
    if let Some(start) = cfg.chains.get(&(index as u32)) {
        checkpointer.resume(index as u32, start.log.clone());
    }
    outbox.borrow_mut().checkpointer = Some(checkpointer);
    let summary = Rc::new(RefCell::new(Summary::default()));
    worker.dataflow::<u64, _, _>(|scope| {
        let raw = scope.input_from(&mut input).container::<Vec<_>>();
        let out = pipeline::build(raw, cfg, observer);
        let out = archived(out, archive.as_ref(), &probe);
        sink::sink(out, outbox.clone()).probe_with(&probe);
    });

    let mut announcements = epochs::Announcements::new(worker);
    let slow = index == 1 && crate::faults::armed(crate::faults::SLOW_WORKER);
    let tick = Duration::from_millis(kafka.tick_ms.max(1));
    let mut input = Some(input);
    let mut tracker = OffsetTracker::default();
    let mut committer = Committer::default();
    let mut inflight = Inflight::new(budget);
    let (mut reported, mut reported_bytes, mut reported_commit_failures) = (0u64, 0i64, 0u64);
    let mut shutdown_at: Option<Instant> = None;
    let mut final_checkpoints = false;
    let mut last_advance = Instant::now();
    let mut firsts = Firsts::default();
    loop {
        let now_ms = clock.elapsed().as_millis() as u64;
        if let Some(e) = producers.fatal().or_else(|| src.events.fatal()) {
            halt(format_args!("kafka: {e}"));
        }
        // Partitions added to the input topic: take on this worker's share.
        let count = partitions.load(Ordering::Relaxed);
        if count > known {
            let new: Vec<i32> = (known..count).filter(|p| *p as usize % peers == index).collect();
            tracing::info!(worker = index, partitions = ?new, "assigned new partitions");
            src.add(&new)?;
            known = count;
        }
        if shutdown.load(Ordering::Relaxed) && input.is_some() {
            tracing::info!(worker = index, "stopping: draining in-flight epochs");
            input = None;
            announcements.close();
            shutdown_at = Some(Instant::now());
        }
        let frontier = probe.with_frontier(|f| f.first().copied().unwrap_or(u64::MAX));
        inflight.complete(frontier);
        let mut read = 0;
        if let Some(h) = input.as_mut() {
            // Logical epochs, at most `max_inflight_ticks` ahead of the cluster's frontier,
            // kept together by announcing them (`epochs.rs`): no wall clock is compared
            // between processes.
            let due = last_advance.elapsed() >= tick;
            let next = epochs::next_epoch(
                *h.time(),
                announcements.highest(),
                frontier,
                kafka.max_inflight_ticks,
                due,
            );
            if let Some(next) = next {
                h.advance_to(next);
                announcements.announce(next);
                last_advance = Instant::now();
            }
            let room = inflight.room()
                && outbox.borrow().queued() < kafka.max_records_per_tick * 4
                && archive.as_ref().is_none_or(|a| a.borrow().queued() == 0)
                && breaker.reading_allowed(now_ms)
                && outbox.borrow().fatal.is_none();
            if room {
                let t = *h.time();
                read = src.read(kafka.max_records_per_tick, &mut |r: RawRecord| {
                    if let Some(i) = &r.input {
                        tracker.consumed(t, i.partition, i.offset);
                    }
                    inflight.read(t, r.bytes.len());
                    h.send(r);
                    inflight.room()
                });
                tel.borrow().read(read);
                first_time(&mut firsts.read, index, "read a record", read > 0, now_ms);
            }
        }
        src.serve();
        let park = if read > 0 {
            Some(Duration::ZERO)
        } else {
            Some(tick)
        };
        worker.step_or_park(park);
        if slow {
            std::thread::sleep(Duration::from_millis(5));
        }

        if let Some(a) = &archive {
            let mut a = a.borrow_mut();
            a.pump();
            tel.borrow().state(Structure::ArchiveQueue, a.queued());
            if let Some(e) = &a.failed {
                halt(format_args!(
                    "{e}; offsets after the last committed ones will be read again on restart"
                ));
            }
        }
        let (all_down, transport_failed) = producers.take_down();
        if all_down {
            breaker.trip(now_ms);
        }
        if transport_failed {
            breaker.record_failure(now_ms);
        }
        let drained = input.is_none() && probe.done();
        {
            let mut ob = outbox.borrow_mut();
            let mut counts = Counts {
                summary: &summary,
                tel: &tel,
            };
            tel.borrow().state(Structure::SinkQueue, ob.queued());
            tel.borrow()
                .state(Structure::OffsetEpochs, tracker.pending_epochs());
            for w in tel.borrow_mut().tick(drained) {
                ob.push_stats(&w);
            }
            ob.push_checkpoints(now_ms, false);
            ob.flush(&producers, &topics, breaker, now_ms, &mut counts);
            producers.poll();
            let (acked, failed) = ob.apply(&producers.acks, breaker, &mut counts);
            first_time(
                &mut firsts.acked,
                index,
                "acknowledged an output",
                acked > 0,
                now_ms,
            );
            if let Some(m) = &metrics {
                m.delivery_failures.inc_by(failed as u64);
                m.circuit_state.set(breaker.state().code());
                let bytes = inflight.bytes() as i64;
                m.inflight_bytes.add(bytes - reported_bytes);
                reported_bytes = bytes;
                m.commit_failures
                    .inc_by(committer.failures - reported_commit_failures);
                reported_commit_failures = committer.failures;
                if index == 0 {
                    // Worker 0 reports the gauges as it sees them.
                    let time = input.as_ref().map_or(frontier, |h| *h.time());
                    m.inflight_epochs.set(time.saturating_sub(frontier) as i64);
                    m.producer_queue
                        .set((ob.queued() as i64) + i64::from(producers.in_flight()));
                }
            }
            if let Some(e) = &ob.fatal {
                halt(format_args!(
                    "{e}; offsets after the last committed ones will be read again on restart"
                ));
            }
        }
        while let Ok((offsets, ok)) = src.commits.try_recv() {
            committer.answered(&mut tracker, &offsets, ok, now_ms);
        }
        let frontier = probe.with_frontier(|f| f.first().copied().unwrap_or(u64::MAX));
        tracker.complete(frontier);
        if let Some(offsets) = committer.next(&tracker, now_ms) {
            if let Err(e) = src.commit(&offsets, CommitMode::Async) {
                tracing::warn!(error = %format!("{e:#}"), "offset commit not sent; retrying");
                committer.answered(&mut tracker, &offsets, false, now_ms);
            }
        }

        let out_now = summary.borrow().observations();
        progress.fetch_add(out_now.saturating_sub(reported), Ordering::Relaxed);
        reported = out_now;

        if drained && tel.borrow().done() && outbox.borrow().is_empty() {
            if final_checkpoints {
                break;
            }
            // Everything is acknowledged: a last checkpoint covers the whole log.
            outbox.borrow_mut().push_checkpoints(now_ms, true);
            final_checkpoints = true;
        }
        if let Some(at) = shutdown_at {
            if at.elapsed() > Duration::from_millis(kafka.shutdown_timeout_ms) {
                halt(format_args!(
                    "the graceful stop did not drain within kafka.shutdown_timeout_ms ({} ms); uncommitted input will be read again",
                    kafka.shutdown_timeout_ms
                ));
            }
        }
    }
    if let Err(e) = producers.drain(Duration::from_millis(kafka.shutdown_timeout_ms)) {
        halt(format_args!("{e:#}; uncommitted input will be read again"));
    }
    final_commit(&src, &mut tracker, kafka, metrics.as_deref());
    tracing::info!(worker = index, "stopped");
    let s = summary.borrow().clone();
    Ok(s)
}

/// Whether a worker has read a record and had an output acknowledged yet: the first time of
/// each is logged with the milliseconds since the run started, which is what a slow first
/// second spends its time on.
#[derive(Default)]
struct Firsts {
    read: bool,
    acked: bool,
}

/// Logs `what` once, the first time it `happened`.
fn first_time(seen: &mut bool, worker: usize, what: &str, happened: bool, after_ms: u64) {
    if happened && !*seen {
        *seen = true;
        tracing::info!(worker, after_ms, "first time: {what}");
    }
}

/// Commits everything delivered, synchronously, retrying until `shutdown_timeout_ms`; a
/// commit that cannot be completed is fatal (the input after the last commit is read again).
fn final_commit(
    src: &source::Source,
    tracker: &mut OffsetTracker,
    kafka: &KafkaConfig,
    metrics: Option<&crate::metrics::Metrics>,
) {
    tracker.complete(u64::MAX);
    let deadline = Instant::now() + Duration::from_millis(kafka.shutdown_timeout_ms);
    let mut backoff = Duration::from_millis(100);
    loop {
        let offsets = tracker.uncommitted();
        match src.commit(&offsets, CommitMode::Sync) {
            Ok(()) => {
                tracker.confirmed(&offsets);
                return;
            }
            Err(e) => {
                if let Some(m) = metrics {
                    m.commit_failures.inc();
                }
                if Instant::now() + backoff > deadline {
                    halt(format_args!(
                        "the final offset commit failed until kafka.shutdown_timeout_ms ({} ms): {e:#}; uncommitted input will be read again",
                        kafka.shutdown_timeout_ms
                    ));
                }
                tracing::warn!(error = %format!("{e:#}"), "final offset commit failed; retrying");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}
