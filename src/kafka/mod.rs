//! Kafka mode (`bizra run --brokers …`): the same decision dataflow between a Kafka source
//! and Kafka sinks, with at-least-once delivery (SPEC §4).
//!
//! Each timely worker owns one consumer, manually assigned the input partitions `p` with
//! `p mod workers = worker` (over all workers of all processes), and one idempotent
//! producer. Epochs are ticks of `kafka.tick_ms` of wall-clock time (Unix time / tick), the
//! same on every process. The sink holds a
//! capability for every tick whose records are not yet acknowledged by the broker, so the
//! frontier after the sink says "everything derived from earlier ticks is durable"; only then
//! are the offsets read in those ticks committed (`offsets.rs`).
//!
//! Nothing here blocks a worker: partition queues wake the worker through librdkafka's
//! non-empty callback, polls use a zero timeout, and `QueueFull` keeps records queued in
//! the outbox and pauses consumption.

pub mod breaker;
pub mod offsets;
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
    /// Ticks a worker may read ahead of the acknowledged output before it pauses.
    pub max_inflight_ticks: u64,
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
            start_offset: "earliest".into(),
            security_protocol: "plaintext".into(),
            sasl_mechanism: String::new(),
            sasl_username: String::new(),
            sasl_password: String::new(),
            ssl_ca_location: String::new(),
            connect_timeout_ms: 15_000,
            shutdown_timeout_ms: 30_000,
            tick_ms: 10,
            max_records_per_tick: 1024,
            max_inflight_ticks: 50,
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

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use bizra_dataflows::operators::Structure;
use bizra_dataflows::pipeline::{self, PipelineConfig, RawRecord};
use rdkafka::consumer::CommitMode;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::{Input, Probe};
use timely::dataflow::{InputHandle, ProbeHandle};

use crate::archive::{archived, ArchiveOutbox, Lanes};
use crate::run::{Cluster, Services, Summary};
use crate::telemetry::{Ready, Telemetry, WorkerTelemetry};
use breaker::Breaker;
use offsets::OffsetTracker;
use rdkafka::producer::Producer;

/// Runs the pipeline on Kafka until `shutdown` is set, then drains, flushes and commits.
pub fn run(
    cluster: Cluster,
    cfg: PipelineConfig,
    kafka: KafkaConfig,
    shutdown: Arc<AtomicBool>,
    ready: Ready,
    services: Services,
) -> anyhow::Result<Summary> {
    let Services {
        progress,
        telemetry,
        archive,
    } = services;
    let started = Instant::now();
    let partitions = source::partition_count(&kafka)?;
    let assigned = Arc::new(AtomicUsize::new(0));
    tracing::info!(brokers = %kafka.brokers, topic = %kafka.input_topic, partitions, group = %kafka.group_id, "kafka source");
    let timely_cfg = cluster.timely_config()?;
    let summaries = Arc::new(Mutex::new(Vec::<Summary>::new()));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let (worker_summaries, worker_errors) = (summaries.clone(), errors.clone());

    let guards = timely::execute(timely_cfg, move |worker| {
        let control = Control {
            shutdown: &shutdown,
            progress: &progress,
            telemetry: &telemetry,
            archive: archive.as_ref(),
            on_assigned: &|| {
                // Ready once every worker of this process has its partitions.
                if assigned.fetch_add(1, Ordering::Relaxed) + 1 == cluster.workers {
                    ready.store(true, Ordering::Relaxed);
                }
            },
        };
        let result = worker_loop(worker, &cfg, &kafka, partitions, &control);
        match result {
            Ok(s) => worker_summaries.lock().expect("summaries lock").push(s),
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "worker stopped");
                worker_errors.lock().expect("errors lock").push(format!("{e:#}"));
                // Let the others stop too: they cannot finish without this worker.
                shutdown.store(true, Ordering::Relaxed);
            }
        }
    })
    .map_err(|e| anyhow::anyhow!("starting timely: {e}"))?;
    drop(guards.join());
    if let Some(e) = errors.lock().expect("errors lock").first() {
        bail!("{e}");
    }
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
    /// Called once the worker's partitions are assigned.
    on_assigned: &'a dyn Fn(),
}

fn worker_loop(
    worker: &mut timely::worker::Worker,
    cfg: &PipelineConfig,
    kafka: &KafkaConfig,
    partitions: i32,
    control: &Control<'_>,
) -> anyhow::Result<Summary> {
    let Control {
        shutdown,
        progress,
        telemetry,
        archive,
        on_assigned,
    } = *control;
    let archive = archive.map(ArchiveOutbox::from_lanes);
    let index = worker.index();
    let peers = worker.peers();
    let mine = source::assigned(partitions, index, peers);
    let thread = std::thread::current();
    let metrics = telemetry.metrics.clone();
    let mut src = source::Source::new(kafka, &mine, cfg.max_message_bytes, metrics.clone(), move || {
        thread.unpark()
    })?;
    let (producer, acks) = sink::producer(kafka)?;
    let breaker = Breaker::new(kafka.breaker.clone());
    let topics = [
        kafka.verdicts_topic.clone(),
        kafka.commitments_topic.clone(),
        kafka.dlq_topic.clone(),
        kafka.stats_topic.clone(),
    ];
    tracing::info!(worker = index, partitions = ?mine, "assigned");
    on_assigned();
    let tel = Rc::new(RefCell::new(WorkerTelemetry::new(worker, telemetry)));
    let observer = tel.borrow().observer();

    let mut input = InputHandle::<u64, timely::container::CapacityContainerBuilder<Vec<RawRecord>>>::new();
    let probe = ProbeHandle::new();
    let outbox = sink::Outbox::new();
    let summary = Rc::new(RefCell::new(Summary::default()));
    worker.dataflow::<u64, _, _>(|scope| {
        let raw = scope.input_from(&mut input).container::<Vec<_>>();
        let counts = summary.clone();
        let tel = tel.clone();
        let out = pipeline::build(raw, cfg, observer).map(move |o| {
            counts.borrow_mut().count(&o);
            tel.borrow_mut().output(&o);
            o
        });
        let out = archived(out, archive.as_ref(), &probe);
        sink::sink(out, outbox.clone()).probe_with(&probe);
    });

    let clock = Instant::now();
    let tick_ms = kafka.tick_ms.max(1);
    let mut input = Some(input);
    let mut tracker = OffsetTracker::default();
    let mut reported = 0u64;
    let mut shutdown_at: Option<Instant> = None;
    let mut last_tick = 0u64;
    loop {
        let now_ms = clock.elapsed().as_millis() as u64;
        // Ticks come from the wall clock so that every process of a cluster agrees on them
        // (a per-process clock would put a later-started process's epochs behind and stall
        // the others' in-flight limit); never backwards.
        let tick = last_tick.max(bizra_dataflows::operators::wall_ms().max(0) as u64 / tick_ms);
        last_tick = tick;
        if shutdown.load(Ordering::Relaxed) && input.is_some() {
            tracing::info!(worker = index, "stopping: draining in-flight epochs");
            input = None;
            shutdown_at = Some(Instant::now());
        }
        let mut read = 0;
        if let Some(h) = input.as_mut() {
            if tick > *h.time() {
                h.advance_to(tick);
            }
            let delivered = probe.with_frontier(|f| f.first().copied().unwrap_or(u64::MAX));
            let room = tick.saturating_sub(delivered) <= kafka.max_inflight_ticks
                && outbox.borrow().queued() < kafka.max_records_per_tick * 4
                && archive.as_ref().is_none_or(|a| a.borrow().queued() == 0)
                && breaker.allow(now_ms)
                && outbox.borrow().fatal.is_none();
            if room {
                let t = *h.time();
                read = src.read(kafka.max_records_per_tick, &mut |r: RawRecord| {
                    if let Some(i) = &r.input {
                        tracker.consumed(t, i.partition, i.offset);
                    }
                    h.send(r);
                })?;
                tel.borrow().read(read);
            }
        }
        let park = if read > 0 {
            Some(Duration::ZERO)
        } else {
            Some(Duration::from_millis(tick_ms))
        };
        worker.step_or_park(park);

        if let Some(a) = &archive {
            let mut a = a.borrow_mut();
            a.pump();
            tel.borrow().state(Structure::ArchiveQueue, a.queued());
            if let Some(e) = &a.failed {
                bail!("{e}; offsets after the last committed ones will be read again on restart");
            }
        }
        let drained = input.is_none() && probe.done();
        {
            let mut ob = outbox.borrow_mut();
            tel.borrow().state(Structure::SinkQueue, ob.queued());
            tel.borrow()
                .state(Structure::OffsetEpochs, tracker.pending_epochs());
            for w in tel.borrow_mut().tick(drained) {
                ob.push_stats(&w);
            }
            ob.flush(&producer, &topics, &breaker, now_ms);
            producer.poll(Duration::ZERO);
            let failed = ob.apply(&acks, &breaker, now_ms).1;
            if let Some(m) = &metrics {
                m.delivery_failures.inc_by(failed as u64);
                if index == 0 {
                    // Worker 0 reports the gauges as it sees them.
                    m.circuit_state.set(match breaker.state() {
                        breaker::State::Closed => 0,
                        breaker::State::HalfOpen => 1,
                        breaker::State::Open => 2,
                    });
                    let delivered = probe.with_frontier(|f| f.first().copied().unwrap_or(tick));
                    m.inflight_epochs.set(tick.saturating_sub(delivered) as i64);
                    m.producer_queue
                        .set((ob.queued() as i64) + i64::from(producer.in_flight_count()));
                }
            }
            if let Some(e) = &ob.fatal {
                bail!("{e}; offsets after the last committed ones will be read again on restart");
            }
        }
        let delivered = probe.with_frontier(|f| f.first().copied().unwrap_or(u64::MAX));
        let ready = tracker.ready(delivered);
        src.commit(&ready, CommitMode::Async)?;

        let out_now = summary.borrow().observations();
        progress.fetch_add(out_now - reported, Ordering::Relaxed);
        reported = out_now;

        if drained && tel.borrow().done() && outbox.borrow().is_empty() {
            break;
        }
        if let Some(at) = shutdown_at {
            if at.elapsed() > Duration::from_millis(kafka.shutdown_timeout_ms) {
                bail!(
                    "shutdown did not drain within {} ms; uncommitted input will be read again",
                    kafka.shutdown_timeout_ms
                );
            }
        }
    }
    sink::Outbox::drain(&producer, Duration::from_millis(kafka.shutdown_timeout_ms))?;
    let ready = tracker.ready(u64::MAX);
    src.commit(&ready, CommitMode::Sync)?;
    tracing::info!(worker = index, "stopped");
    let s = summary.borrow().clone();
    Ok(s)
}

use std::cell::RefCell;
use std::rc::Rc;
