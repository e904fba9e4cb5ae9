//! The Kafka sinks of one worker: verdicts (key = observation id), commitments and dead
//! letters (with provenance headers) through one idempotent producer. `QueueFull` and a
//! slow or absent broker are backpressure — records stay in the outbox and the worker
//! stops reading — never loss. The sink operator holds the capability of every tick with
//! unacknowledged records, so the frontier after it means "delivered".

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use bizra_dataflows::dead_letter::DeadLetter;
use bizra_dataflows::operators::commit::Output;
use bizra_dataflows::operators::held::{held, Acknowledged};
use bizra_dataflows::stats::WindowStats;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;
use timely::dataflow::StreamVec;
use timely::scheduling::Activator;

use super::breaker::Breaker;
use super::KafkaConfig;

/// One delivery report: the tick of the record and whether the broker acknowledged it.
pub type Ack = (u64, Result<(), String>);

/// Forwards delivery reports (run on the thread that polls the producer) to the worker.
pub struct DeliveryContext {
    acks: Mutex<Sender<Ack>>,
}

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, tick: usize) {
        let outcome = result.as_ref().map(|_| ()).map_err(|(e, _)| e.to_string());
        let _ = self
            .acks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send((tick as u64, outcome));
    }
}

/// bizra's producer settings, before `[kafka.options]` and `[kafka.producer_options]`.
/// Public so that the Kafka bench's passthrough baseline uses exactly these.
pub const PRODUCER_SETTINGS: &[(&str, &str)] = &[
    ("enable.idempotence", "true"),
    ("acks", "all"),
    // Never give up on a record: a lost broker is backpressure, not loss.
    ("message.timeout.ms", "0"),
    // An idempotent librdkafka producer keeps one produce request per partition in flight,
    // and its broker thread busy-polls while a batch is ready and that request is out. 20 ms
    // lets the next batch fill while the previous one is acknowledged (docs/DECISIONS.md).
    ("linger.ms", "20"),
    // Verdict JSON is ~2 KB and compresses ~4×: the broker's bytes are the bottleneck.
    ("compression.type", "lz4"),
    ("queue.buffering.max.messages", "100000"),
];

/// Creates the idempotent producer and the receiver of its delivery reports.
pub fn producer(cfg: &KafkaConfig) -> anyhow::Result<(BaseProducer<DeliveryContext>, Receiver<Ack>)> {
    let (tx, rx) = channel();
    let mut c = cfg.client_config();
    for (k, v) in PRODUCER_SETTINGS {
        c.set(*k, *v);
    }
    let p = cfg
        .with_options(c, true)
        .create_with_context(DeliveryContext { acks: Mutex::new(tx) })
        .context("creating the Kafka producer")?;
    Ok((p, rx))
}

/// A record waiting to be handed to the producer; serialized only when it is handed over,
/// into one reused buffer (librdkafka copies it).
pub struct Pending {
    tick: u64,
    out: Output,
}

const VERDICTS: usize = 0;
const COMMITMENTS: usize = 1;
const DLQ: usize = 2;
const STATS: usize = 3;
/// The delivery opaque of window-statistics records: they belong to no tick (their windows
/// are recomputed from the input after a restart), but are still flushed before exit.
const STATS_TICK: usize = usize::MAX;

/// Per-worker state shared by the sink operator and the worker loop.
pub struct Outbox {
    queue: VecDeque<Pending>,
    /// Unacknowledged records per tick (queued or in the producer).
    unacked: BTreeMap<u64, u64>,
    /// Window statistics waiting for the producer.
    stats: VecDeque<WindowStats>,
    /// Window statistics handed to the producer and not yet acknowledged.
    stats_unacked: u64,
    /// Serialization buffer, reused for every record.
    scratch: Vec<u8>,
    /// Wakes the sink operator when acknowledgements arrive.
    activator: Option<Activator>,
    /// A delivery failed definitely: stop, commit nothing more.
    pub fatal: Option<String>,
}

/// The provenance headers of a dead letter (SPEC §1.4).
fn dead_letter_headers(d: &DeadLetter) -> OwnedHeaders {
    let (t, p, off) = match &d.input {
        Some(i) => (i.topic.to_string(), i.partition.to_string(), i.offset.to_string()),
        None => (String::new(), String::new(), String::new()),
    };
    [
        ("bizra.error", d.error.as_str()),
        ("bizra.source.topic", &t),
        ("bizra.source.partition", &p),
        ("bizra.source.offset", &off),
    ]
    .into_iter()
    .fold(OwnedHeaders::new(), |h, (key, value)| {
        h.insert(Header {
            key,
            value: Some(value),
        })
    })
}

impl Outbox {
    pub fn new() -> Rc<RefCell<Outbox>> {
        Rc::new(RefCell::new(Outbox {
            queue: VecDeque::new(),
            unacked: BTreeMap::new(),
            stats: VecDeque::new(),
            stats_unacked: 0,
            scratch: Vec::with_capacity(4096),
            activator: None,
            fatal: None,
        }))
    }

    /// Queues one window-statistics record for the stats topic.
    pub fn push_stats(&mut self, w: &WindowStats) {
        self.stats.push_back(w.clone());
    }

    /// Records not yet handed to the producer.
    pub fn queued(&self) -> usize {
        self.queue.len() + self.stats.len()
    }

    /// True when nothing is queued or unacknowledged.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty() && self.unacked.is_empty() && self.stats.is_empty() && self.stats_unacked == 0
    }

    /// Hands queued records to the producer until it is full or the breaker says no.
    pub fn flush(
        &mut self,
        producer: &BaseProducer<DeliveryContext>,
        topics: &[String; 4],
        breaker: &Breaker,
        now_ms: u64,
    ) {
        // Outputs first (they hold back offset commits), then window statistics.
        // The breaker is asked once per record, as a half-open breaker counts its calls.
        while !(self.queue.is_empty() && self.stats.is_empty()) && breaker.allow(now_ms) {
            self.scratch.clear();
            let (topic, opaque, key, headers): (usize, usize, Option<Cow<'_, str>>, _) =
                if let Some(p) = self.queue.front() {
                    let tick = p.tick as usize;
                    match &p.out {
                        Output::Verdict(v) => {
                            bizra_dataflows::wire::write_verdict(&mut self.scratch, v);
                            (VERDICTS, tick, Some(Cow::Borrowed(v.id.as_str())), None)
                        }
                        Output::Commitment(c) => {
                            serde_json::to_writer(&mut self.scratch, c).expect("commitments serialize");
                            (COMMITMENTS, tick, None, None)
                        }
                        Output::DeadLetter(d) => {
                            serde_json::to_writer(&mut self.scratch, d).expect("dead letters serialize");
                            (DLQ, tick, None, Some(dead_letter_headers(d)))
                        }
                    }
                } else if let Some(w) = self.stats.front() {
                    serde_json::to_writer(&mut self.scratch, w).expect("window stats serialize");
                    let key = format!("{}/{}", w.domain, w.window_end_ms);
                    (STATS, STATS_TICK, Some(Cow::Owned(key)), None)
                } else {
                    return;
                };
            let mut rec = BaseRecord::with_opaque_to(&topics[topic], opaque).payload(&self.scratch);
            if let Some(k) = &key {
                rec = rec.key(k.as_ref());
            }
            if let Some(h) = headers {
                rec = rec.headers(h);
            }
            match producer.send(rec) {
                Ok(()) if topic == STATS => {
                    self.stats.pop_front();
                    self.stats_unacked += 1;
                }
                Ok(()) => {
                    self.queue.pop_front();
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => return,
                Err((e, _)) => {
                    // Not retriable by waiting (e.g. a record over the broker's size limit).
                    breaker.record_failure(now_ms);
                    self.fatal = Some(format!("producing to {}: {e}", topics[topic]));
                    return;
                }
            }
        }
    }

    /// Applies delivery reports; returns how many were acknowledged and how many failed.
    pub fn apply(&mut self, acks: &Receiver<Ack>, breaker: &Breaker, now_ms: u64) -> (usize, usize) {
        let (mut n, mut failed) = (0, 0);
        while let Ok((tick, outcome)) = acks.try_recv() {
            if tick == STATS_TICK as u64 {
                self.stats_unacked = self.stats_unacked.saturating_sub(1);
            }
            match outcome {
                Ok(()) => {
                    breaker.record_success();
                    n += 1;
                    if let Some(c) = self.unacked.get_mut(&tick) {
                        *c -= 1;
                        if *c == 0 {
                            self.unacked.remove(&tick);
                        }
                    }
                }
                Err(e) => {
                    failed += 1;
                    breaker.record_failure(now_ms);
                    self.fatal = Some(format!("delivery failed: {e}"));
                }
            }
        }
        if n > 0 {
            if let Some(a) = &self.activator {
                a.activate();
            }
        }
        (n, failed)
    }

    /// Waits (at shutdown only) for the producer to deliver everything handed to it.
    pub fn drain(producer: &BaseProducer<DeliveryContext>, timeout: Duration) -> anyhow::Result<()> {
        producer
            .flush(timeout)
            .context("flushing the producer at shutdown")
    }
}

impl Acknowledged<Output> for Outbox {
    fn push(&mut self, tick: u64, out: Output) {
        *self.unacked.entry(tick).or_default() += 1;
        self.queue.push_back(Pending { tick, out });
    }

    fn pending(&self, tick: u64) -> bool {
        self.unacked.contains_key(&tick)
    }

    fn set_activator(&mut self, activator: Activator) {
        self.activator = Some(activator);
    }
}

/// The sink operator: queues every output in the outbox under its tick and holds that
/// tick's capability until all of its records are acknowledged.
pub fn sink<'s>(stream: StreamVec<'s, u64, Output>, outbox: Rc<RefCell<Outbox>>) -> StreamVec<'s, u64, ()> {
    held(stream, "kafka-sink", outbox)
}
