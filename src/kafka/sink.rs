//! The Kafka sinks of one worker: verdicts and rollbacks (key = observation id), commitments
//! and dead letters (with provenance headers) through one idempotent producer, and the
//! replay guard's state through a second one that does not linger: a tick's records go to
//! the first only once the tick's replay records are acknowledged, so that no verdict is
//! durable before the replay answer it carries. The sink operator holds the capability of
//! every tick with unacknowledged records, so the frontier after it means "delivered".
//!
//! Every producer error is classified here, once (see `fatal.rs` for the whole list):
//! - **transient**: `QueueFull`, a slow or absent broker (the producer never gives up on a
//!   record, `message.timeout.ms = 0`), a record refused only because it shared a batch with a
//!   refused one (`_INVALID_DIFFERENT_RECORD`, resent). Records stay queued, the worker stops
//!   reading, and the breaker sees the outage.
//! - **per-record** ([`PER_RECORD`]): the broker refuses this record for good. Unless the
//!   record was sent on its own, the refusal may be its batch's fault (a broker that reports
//!   no record errors fails the whole batch), so it is resent alone first; refused alone,
//!   a verdict becomes a `produce_refused` dead letter. A verdict longer than
//!   `limits.max_output_bytes` becomes an `output_too_large` one before it is sent.
//! - **fatal**: every other code (authorisation, a deleted topic, the idempotent producer's
//!   fatal state, …), and a refused commitment or dead letter, which have no input to stand
//!   for: [`Outbox::fatal`] is set and the driver halts.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use bizra_dataflows::bounds;
use bizra_dataflows::dead_letter::{DeadLetter, ErrorKind};
use bizra_dataflows::operators::commit::Output;
use bizra_dataflows::operators::held::{held, Acknowledged};
use bizra_dataflows::operators::wall_ms;
use bizra_dataflows::stats::WindowStats;
use bizra_dataflows::wire::write_output;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;
use timely::dataflow::StreamVec;
use timely::scheduling::Activator;

use super::breaker::Breaker;
use super::chains::LOG_HEADER;
use super::KafkaConfig;
use crate::decision_log::{CheckpointRecord, Checkpointer};

/// One delivery report: the record's slot (or [`STATS_SLOT`]) and the broker's answer.
pub type Ack = (usize, Result<(), KafkaError>);

/// Broker error codes that refuse one record for good: its size, its content, its timestamp.
pub const PER_RECORD: &[RDKafkaErrorCode] = &[
    RDKafkaErrorCode::MessageSizeTooLarge,
    RDKafkaErrorCode::InvalidMessageSize,
    RDKafkaErrorCode::InvalidMessage,
    RDKafkaErrorCode::InvalidRecord,
    RDKafkaErrorCode::MessageBatchTooLarge,
    RDKafkaErrorCode::InvalidTimestamp,
    RDKafkaErrorCode::PolicyViolation,
];

/// How a producer error is handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Send the record again.
    Resend,
    /// This record is refused (see the module documentation).
    PerRecord,
    /// No record can cure it.
    Fatal,
}

/// The class of a delivery error. Transient errors never reach a delivery report (the
/// producer retries them for ever), so what is not resent or per-record is fatal.
pub fn classify(e: &KafkaError) -> Class {
    match e.rdkafka_error_code() {
        Some(RDKafkaErrorCode::InvalidDifferentRecord) => Class::Resend,
        Some(code) if PER_RECORD.contains(&code) => Class::PerRecord,
        _ => Class::Fatal,
    }
}

/// What the client callbacks (run on the thread that polls the producer) tell the worker.
#[derive(Default)]
pub struct ClientEvents {
    /// librdkafka reported all brokers down since the last look.
    pub all_down: AtomicBool,
    /// A broker connection failed since the last look.
    pub transport_failed: AtomicBool,
    /// An error no record can cure (the idempotent producer's fatal state, authentication, TLS).
    pub fatal: Mutex<Option<String>>,
}

impl ClientEvents {
    /// Sorts one of librdkafka's global errors (the `error` callback of any client).
    pub fn record(&self, error: &KafkaError, reason: &str) {
        match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::AllBrokersDown) => self.all_down.store(true, Ordering::Relaxed),
            Some(RDKafkaErrorCode::BrokerTransportFailure | RDKafkaErrorCode::Resolve) => {
                self.transport_failed.store(true, Ordering::Relaxed)
            }
            Some(
                RDKafkaErrorCode::Fatal
                | RDKafkaErrorCode::Authentication
                | RDKafkaErrorCode::SaslAuthenticationFailed
                | RDKafkaErrorCode::SSL
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed,
            ) => {
                let mut f = self.fatal.lock().unwrap_or_else(|e| e.into_inner());
                f.get_or_insert_with(|| format!("{error}: {reason}"));
            }
            _ => {}
        }
    }

    /// The fatal error recorded, if any.
    pub fn fatal(&self) -> Option<String> {
        self.fatal.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Forwards delivery reports and client errors (run on the thread that polls the producer)
/// to the worker.
pub struct DeliveryContext {
    acks: Mutex<Sender<Ack>>,
    events: Arc<ClientEvents>,
}

impl ClientContext for DeliveryContext {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(error = %error, reason, "kafka producer");
        self.events.record(&error, reason);
    }
}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, slot: usize) {
        let outcome = result.as_ref().map(|_| ()).map_err(|(e, _)| e.clone());
        let _ = self
            .acks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send((slot, outcome));
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
    // Room for the largest output (limits.max_output_bytes, 1,000,000 by default) with its
    // key and headers; checked against the limit at start (`check_message_limit`).
    ("message.max.bytes", "1048576"),
];

/// Bytes a record needs beyond its value within `message.max.bytes`: the key (an id of at
/// most 256 bytes), the provenance headers, and librdkafka's per-message framing.
pub const RECORD_FRAMING_BYTES: usize = 16 * 1024;

/// The producer's `message.max.bytes` as configured (bizra's default, or an override).
pub fn message_max_bytes(cfg: &KafkaConfig) -> Result<usize, String> {
    let key = "message.max.bytes";
    let set = cfg.producer_options.get(key).or_else(|| cfg.options.get(key));
    let default = PRODUCER_SETTINGS.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
    let text = set.map(String::as_str).or(default).unwrap_or("1000000");
    text.parse()
        .map_err(|_| format!("kafka option \"{key}\": expected a number of bytes, found {text:?}"))
}

/// Start-up check: the producer takes every output bizra may write (`max_output_bytes`
/// plus key, headers and framing), so that a size refusal can only be the broker's.
pub fn check_message_limit(cfg: &KafkaConfig, max_output_bytes: usize) -> Result<(), String> {
    let limit = message_max_bytes(cfg)?;
    let needed = max_output_bytes + RECORD_FRAMING_BYTES;
    if limit < needed {
        return Err(format!(
            "kafka option \"message.max.bytes\" is {limit}: expected at least limits.max_output_bytes ({max_output_bytes}) + {RECORD_FRAMING_BYTES} for key, headers and framing = {needed}; raise it or lower limits.max_output_bytes"
        ));
    }
    Ok(())
}

/// The replay producer's settings over [`PRODUCER_SETTINGS`]: a tick's records wait for its
/// replay records' acknowledgement, so these must not linger. They are a few KB per tick per
/// worker, one request at a time, so the idempotent producer's busy-polling (the reason for
/// the main producer's 20 ms) has little to spin on.
pub const REPLAY_PRODUCER_SETTINGS: &[(&str, &str)] = &[("linger.ms", "0")];

/// bizra's two producers of one worker: the main one, and one for the replay state, whose
/// acknowledgements hold the main one's records back (see [`Outbox`]). Their delivery reports
/// share one channel; a record's slot says which it was.
pub struct Producers {
    pub main: BaseProducer<DeliveryContext>,
    pub replay: BaseProducer<DeliveryContext>,
    pub acks: Receiver<Ack>,
    pub events: [Arc<ClientEvents>; 2],
}

impl Producers {
    /// Both producers; the main one's queue is bounded by `queue_bytes`, the replay one's by
    /// a tenth of it (at least 8 MB, more than a start's snapshots need in flight at once).
    pub fn new(cfg: &KafkaConfig, queue_bytes: usize) -> anyhow::Result<Producers> {
        let (tx, acks) = channel();
        let (main, main_events) = producer_to(cfg, queue_bytes, tx.clone(), &[])?;
        let (replay, replay_events) =
            producer_to(cfg, (queue_bytes / 10).max(8 << 20), tx, REPLAY_PRODUCER_SETTINGS)?;
        // A broker that does not answer the first gets no more warm-ups: start-up waits at
        // most WARM_UP_TIMEOUT for it, and a stop signal is served soon after.
        if warm_up(&main, &cfg.verdicts_topic) {
            warm_up(&replay, &cfg.replay_topic);
        }
        Ok(Producers {
            main,
            replay,
            acks,
            events: [main_events, replay_events],
        })
    }

    /// Serves both producers' callbacks (delivery reports, errors).
    pub fn poll(&self) {
        self.main.poll(Duration::ZERO);
        self.replay.poll(Duration::ZERO);
    }

    /// An error no record can cure, reported by either producer.
    pub fn fatal(&self) -> Option<String> {
        self.events.iter().find_map(|e| e.fatal())
    }

    /// Whether either producer saw every broker down (`all`) or a transport failure since the
    /// last look; clears what it reports.
    pub fn take_down(&self) -> (bool, bool) {
        let take = |f: fn(&ClientEvents) -> &AtomicBool| {
            self.events
                .iter()
                .fold(false, |a, e| f(e).swap(false, Ordering::Relaxed) | a)
        };
        (take(|e| &e.all_down), take(|e| &e.transport_failed))
    }

    /// Records handed to either producer and not yet acknowledged.
    pub fn in_flight(&self) -> i32 {
        self.main.in_flight_count() + self.replay.in_flight_count()
    }

    /// Waits (at shutdown only) for both producers to deliver everything handed to them.
    pub fn drain(&self, timeout: Duration) -> anyhow::Result<()> {
        for p in [&self.main, &self.replay] {
            p.flush(timeout).context("flushing the producer at shutdown")?;
        }
        Ok(())
    }
}

/// Asks for `topic`'s metadata twice, waiting for each answer (at most 2 s), before the worker
/// says it is ready. An idempotent librdkafka producer asks for its producer id only once a
/// broker is up; if none is when it is created, it retries on a fixed 500 ms timer, or when a
/// metadata answer arrives. One answer was not always enough (in
/// `kafka::fresh_producers_deliver_their_first_record_without_the_id_timer`, two of three fresh
/// producers still waited 450 ms); the second, over a connection that is up by then, was in
/// every run. Without it every start held its first verdicts ~500 ms (BENCHMARKS, issue 16,
/// "The first second"). A broker that does not answer is not an error here: the producer
/// keeps trying on its own, as it would later in the run. Returns whether both were answered.
fn warm_up(producer: &BaseProducer<DeliveryContext>, topic: &str) -> bool {
    for _ in 0..2 {
        if let Err(e) = producer.client().fetch_metadata(Some(topic), WARM_UP_TIMEOUT) {
            tracing::debug!(error = %e, topic, "producer warm-up: no answer");
            return false;
        }
    }
    true
}

/// How long one warm-up request may wait for the broker's answer.
const WARM_UP_TIMEOUT: Duration = Duration::from_secs(2);

/// An idempotent producer with bizra's settings and `extra` over them, reporting deliveries
/// to `tx`, and what its client callbacks report. `queue_bytes` bounds librdkafka's queue in
/// bytes (an explicit `queue.buffering.max.kbytes` option wins).
fn producer_to(
    cfg: &KafkaConfig,
    queue_bytes: usize,
    tx: Sender<Ack>,
    extra: &[(&str, &str)],
) -> anyhow::Result<(BaseProducer<DeliveryContext>, Arc<ClientEvents>)> {
    let mut c = cfg.client_config();
    for (k, v) in PRODUCER_SETTINGS.iter().chain(extra) {
        c.set(*k, *v);
    }
    c.set(
        "queue.buffering.max.kbytes",
        (queue_bytes / 1024).max(1).to_string(),
    );
    if crate::faults::armed(crate::faults::PRODUCER_NOT_IDEMPOTENT) {
        c.set("enable.idempotence", "false");
    }
    let events = Arc::new(ClientEvents::default());
    let context = DeliveryContext {
        acks: Mutex::new(tx),
        events: events.clone(),
    };
    let p = cfg
        .with_options(c, true)
        .create_with_context(context)
        .context("creating the Kafka producer")?;
    Ok((p, events))
}

/// A record waiting to be handed to the producer; serialized only when it is handed over,
/// into one reused buffer (librdkafka copies it).
pub struct Pending {
    tick: u64,
    out: Output,
}

/// A record handed to the producer and not yet acknowledged.
struct Flight {
    pending: Pending,
    /// Sent while nothing else was in flight: a per-record refusal is this record's own.
    alone: bool,
}

const VERDICTS: usize = 0;
const COMMITMENTS: usize = 1;
const DLQ: usize = 2;
const STATS: usize = 3;
const ROLLBACKS: usize = 4;
const REPLAY: usize = 5;
const CHECKPOINTS: usize = 6;
/// The output topics, in the order of the indices above.
pub const TOPICS: usize = 7;
/// The delivery opaque of window-statistics records: they belong to no tick (their windows
/// are recomputed from the input after a restart) and hold no slot, but are still flushed
/// before exit.
pub const STATS_SLOT: usize = usize::MAX;
/// The delivery opaque of checkpoints: they hold no tick either (a checkpoint only covers
/// commitments already acknowledged), and are flushed before exit.
pub const CHECKPOINT_SLOT: usize = usize::MAX - 1;

/// What the sink tells the worker about the records it handled in one call.
pub trait Written {
    /// `o` was handed to the producer (after the size check that may have replaced it).
    fn written(&mut self, o: &Output);
    /// `o`, counted as written, was refused for good and replaced by `instead`.
    fn replaced(&mut self, o: &Output, instead: &Output);
}

/// Per-worker state shared by the sink operator and the worker loop.
pub struct Outbox {
    queue: VecDeque<Pending>,
    /// The replay guard's records, sent before anything else: a record of a tick goes only
    /// once every replay record of that tick and earlier is acknowledged, so that no verdict
    /// is durable before the replay state that gave its answer (after a crash the verdict is
    /// read again and must get the same answer; `replay.rs` in the dataflows).
    replay_queue: VecDeque<Pending>,
    /// Replay records not yet acknowledged, per tick.
    replay_unacked: BTreeMap<u64, u64>,
    /// Records refused with their batch: resent one at a time, alone, before anything else.
    suspects: VecDeque<Pending>,
    /// Records handed to the producer, by slot (the delivery opaque); `free` lists empty slots.
    flight: Vec<Option<Flight>>,
    free: Vec<usize>,
    in_flight: usize,
    /// Suspects in flight (at most one): nothing else goes until it is answered, so that its
    /// partition's batch holds it alone.
    alone_in_flight: usize,
    /// Unacknowledged records per tick (queued, suspected or in the producer).
    unacked: BTreeMap<u64, u64>,
    /// Window statistics waiting for the producer.
    stats: VecDeque<WindowStats>,
    /// Window statistics handed to the producer and not yet acknowledged.
    stats_unacked: u64,
    /// Makes the checkpoints of this worker's shard from its acknowledged commitments.
    pub checkpointer: Option<Checkpointer>,
    /// Checkpoints waiting for the producer.
    checkpoints: VecDeque<CheckpointRecord>,
    /// Checkpoints handed to the producer and not yet acknowledged.
    checkpoints_unacked: u64,
    /// Serialization buffer, reused for every record.
    scratch: Vec<u8>,
    /// `limits.max_output_bytes`.
    max_output_bytes: usize,
    /// Since when records have waited with no acknowledgement (`None`: nothing waits, or an
    /// acknowledgement came since).
    waiting_since_ms: Option<u64>,
    /// Wakes the sink operator when acknowledgements arrive.
    activator: Option<Activator>,
    /// An error no record can cure: the driver halts.
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

fn topic_of(o: &Output) -> usize {
    match o {
        Output::Verdict(_) => VERDICTS,
        Output::Commitment(_) => COMMITMENTS,
        Output::DeadLetter(_) => DLQ,
        Output::Rollback(_) => ROLLBACKS,
        Output::Replay(_) => REPLAY,
    }
}

impl Outbox {
    pub fn new(max_output_bytes: usize) -> Rc<RefCell<Outbox>> {
        Rc::new(RefCell::new(Outbox {
            queue: VecDeque::new(),
            replay_queue: VecDeque::new(),
            replay_unacked: BTreeMap::new(),
            suspects: VecDeque::new(),
            flight: Vec::new(),
            free: Vec::new(),
            in_flight: 0,
            alone_in_flight: 0,
            unacked: BTreeMap::new(),
            stats: VecDeque::new(),
            stats_unacked: 0,
            checkpointer: None,
            checkpoints: VecDeque::new(),
            checkpoints_unacked: 0,
            scratch: Vec::with_capacity(4096),
            max_output_bytes,
            waiting_since_ms: None,
            activator: None,
            fatal: None,
        }))
    }

    /// Queues one window-statistics record for the stats topic.
    pub fn push_stats(&mut self, w: &WindowStats) {
        self.stats.push_back(w.clone());
    }

    /// Queues the checkpoints due at `now_ms` (all of them with `all`, at a stop).
    pub fn push_checkpoints(&mut self, now_ms: u64, all: bool) {
        if let Some(c) = &mut self.checkpointer {
            self.checkpoints.extend(c.due(now_ms, all));
        }
    }

    /// Records not yet handed to the producer.
    pub fn queued(&self) -> usize {
        self.queue.len()
            + self.replay_queue.len()
            + self.suspects.len()
            + self.stats.len()
            + self.checkpoints.len()
    }

    /// True when nothing is queued or unacknowledged.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
            && self.replay_queue.is_empty()
            && self.suspects.is_empty()
            && self.unacked.is_empty()
            && self.stats.is_empty()
            && self.stats_unacked == 0
            && self.checkpoints.is_empty()
            && self.checkpoints_unacked == 0
    }

    /// Hands queued records to the producer until it is full or the breaker says no. While
    /// records are suspected, only they go, one at a time.
    pub fn flush(
        &mut self,
        producers: &Producers,
        topics: &[String; TOPICS],
        breaker: &Breaker,
        now_ms: u64,
        counts: &mut impl Written,
    ) {
        self.watch(breaker, now_ms);
        loop {
            if self.fatal.is_some() {
                return;
            }
            let isolating = !self.suspects.is_empty();
            if self.alone_in_flight > 0 || (isolating && self.in_flight > 0) {
                // A suspect goes once everything else is answered, and nothing goes with it.
                break;
            }
            let source = if isolating {
                Source::Suspects
            } else if !self.replay_queue.is_empty() {
                Source::Replay
            } else {
                match self.queue.front() {
                    // Not before the replay state of its tick is durable.
                    Some(p) if self.replay_unacked.range(..=p.tick).next().is_some() => break,
                    _ => Source::Queue,
                }
            };
            let Some(p) = self.source(source).pop_front() else {
                break;
            };
            if !breaker.allow(now_ms) {
                self.source(source).push_front(p);
                return;
            }
            if let Some(p) = self.send(producers, topics, p, isolating, counts) {
                // QueueFull: back to where it was, and try again next time.
                self.source(source).push_front(p);
                return;
            }
        }
        // Then window statistics, which hold back no offset.
        while let Some(w) = self.stats.front() {
            if !breaker.allow(now_ms) {
                return;
            }
            self.scratch.clear();
            serde_json::to_writer(&mut self.scratch, w).expect("window stats serialize");
            let key = format!("{}/{}", w.domain, w.window_end_ms);
            let rec = BaseRecord::with_opaque_to(&topics[STATS], STATS_SLOT)
                .payload(&self.scratch)
                .key(&key);
            match producers.main.send(rec) {
                Ok(()) => {
                    self.stats.pop_front();
                    self.stats_unacked += 1;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => return,
                Err((e, _)) => {
                    tracing::warn!(error = %e, "window statistics not written");
                    self.stats.pop_front();
                }
            }
        }
        // And checkpoints, which cover acknowledged commitments only.
        while let Some(c) = self.checkpoints.front() {
            if !breaker.allow(now_ms) {
                return;
            }
            self.scratch.clear();
            serde_json::to_writer(&mut self.scratch, c).expect("checkpoint serializes");
            let key = c.shard.to_string();
            let rec = BaseRecord::with_opaque_to(&topics[CHECKPOINTS], CHECKPOINT_SLOT)
                .payload(&self.scratch)
                .key(&key);
            match producers.main.send(rec) {
                Ok(()) => {
                    self.checkpoints.pop_front();
                    self.checkpoints_unacked += 1;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => return,
                Err((e, _)) => {
                    self.checkpoints.pop_front();
                    self.checkpoint_failed(&e);
                }
            }
        }
    }

    fn source(&mut self, s: Source) -> &mut VecDeque<Pending> {
        match s {
            Source::Suspects => &mut self.suspects,
            Source::Replay => &mut self.replay_queue,
            Source::Queue => &mut self.queue,
        }
    }

    /// Puts a record to be sent again at the front of its queue.
    fn requeue(&mut self, p: Pending) {
        match p.out {
            Output::Replay(_) => self.replay_queue.push_front(p),
            _ => self.queue.push_front(p),
        }
    }

    /// Serializes `p` (replacing a verdict that is too long) and hands it to the producer;
    /// gives it back (`Some`) on `QueueFull`.
    fn send(
        &mut self,
        producers: &Producers,
        topics: &[String; TOPICS],
        mut p: Pending,
        alone: bool,
        counts: &mut impl Written,
    ) -> Option<Pending> {
        self.scratch.clear();
        let len = write_output(&mut self.scratch, &p.out);
        if len > self.max_output_bytes {
            let why = format!(
                "it is {len} bytes, more than limits.max_output_bytes ({})",
                self.max_output_bytes
            );
            match bounds::refused(&p.out, ErrorKind::OutputTooLarge, &why, wall_ms()) {
                Ok(dead) => {
                    p.out = Output::DeadLetter(dead);
                    self.scratch.clear();
                    write_output(&mut self.scratch, &p.out);
                }
                Err(fatal) => {
                    self.fatal = Some(fatal);
                    return None;
                }
            }
        }
        let slot = self.free.pop().unwrap_or_else(|| {
            self.flight.push(None);
            self.flight.len() - 1
        });
        let topic = topic_of(&p.out);
        let key: Option<Cow<'_, str>> = match &p.out {
            Output::Verdict(v) => Some(Cow::Borrowed(v.id.as_str())),
            Output::Rollback(r) => Some(Cow::Borrowed(r.id.as_str())),
            // One partition per chain keeps its commitments in seq order.
            Output::Commitment(c) => Some(Cow::Owned(c.shard.to_string())),
            _ => None,
        };
        let mut rec = BaseRecord::with_opaque_to(&topics[topic], slot).payload(&self.scratch);
        if let Some(k) = &key {
            rec = rec.key(k.as_ref());
        }
        let producer = if topic == REPLAY {
            // One partition keeps each shard's records in order (a restore replays them).
            rec = rec.partition(0);
            &producers.replay
        } else {
            &producers.main
        };
        if let Output::DeadLetter(d) = &p.out {
            rec = rec.headers(dead_letter_headers(d));
        }
        if let Output::Commitment(c) = &p.out {
            // The log frontier after it, which the next start resumes from (`chains.rs`).
            let log = c.log_frontier().map(|f| f.to_bytes()).unwrap_or_default();
            rec = rec.headers(OwnedHeaders::new().insert(Header {
                key: LOG_HEADER,
                value: Some(log.as_slice()),
            }));
        }
        match producer.send(rec) {
            Ok(()) => {
                counts.written(&p.out);
                self.flight[slot] = Some(Flight { pending: p, alone });
                self.in_flight += 1;
                self.alone_in_flight += usize::from(alone);
                None
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                self.free.push(slot);
                Some(p)
            }
            Err((e, _)) => {
                self.free.push(slot);
                // Refused before it left: the error is this record's own.
                let flight = Flight {
                    pending: p,
                    alone: true,
                };
                counts.written(&flight.pending.out);
                self.refuse(flight, &e, counts);
                None
            }
        }
    }

    /// Applies delivery reports: acknowledged records are done; refused ones are resent,
    /// suspected, replaced by a dead letter, or fatal (see the module documentation).
    /// Returns how many were acknowledged and how many failed.
    pub fn apply(
        &mut self,
        acks: &Receiver<Ack>,
        breaker: &Breaker,
        counts: &mut impl Written,
    ) -> (usize, usize) {
        let (mut n, mut failed) = (0, 0);
        let suspects_before = self.suspects.len();
        while let Ok((slot, outcome)) = acks.try_recv() {
            if outcome.is_ok() {
                breaker.record_success();
                n += 1;
                self.waiting_since_ms = None;
            }
            if slot == CHECKPOINT_SLOT {
                self.checkpoints_unacked = self.checkpoints_unacked.saturating_sub(1);
                if let Err(e) = outcome {
                    failed += 1;
                    self.checkpoint_failed(&e);
                }
                continue;
            }
            if slot == STATS_SLOT {
                self.stats_unacked = self.stats_unacked.saturating_sub(1);
                if let Err(e) = outcome {
                    failed += 1;
                    tracing::warn!(error = %e, "window statistics not written");
                }
                continue;
            }
            let Some(flight) = self.flight.get_mut(slot).and_then(Option::take) else {
                continue;
            };
            self.free.push(slot);
            self.in_flight -= 1;
            self.alone_in_flight -= usize::from(flight.alone);
            match outcome {
                Ok(()) => {
                    let tick = flight.pending.tick;
                    if let (Output::Commitment(c), Some(cp)) = (&flight.pending.out, &mut self.checkpointer) {
                        cp.durable(c);
                    }
                    decrement(&mut self.unacked, tick);
                    if matches!(flight.pending.out, Output::Replay(_)) {
                        decrement(&mut self.replay_unacked, tick);
                    }
                }
                Err(e) => {
                    failed += 1;
                    self.refuse(flight, &e, counts);
                }
            }
        }
        let suspected = self.suspects.len().saturating_sub(suspects_before);
        if suspected > 0 {
            tracing::warn!(
                records = suspected,
                "a batch was refused; resending its records one at a time to find the refused ones"
            );
        }
        if n > 0 {
            if let Some(a) = &self.activator {
                a.activate();
            }
        }
        (n, failed)
    }

    /// A checkpoint that was not written: fatal if nothing will cure it (a deleted topic, no
    /// authorisation); otherwise a later checkpoint covers everything this one did.
    fn checkpoint_failed(&mut self, e: &KafkaError) {
        match classify(e) {
            Class::Fatal => {
                self.fatal
                    .get_or_insert_with(|| format!("producing checkpoints: {e}"));
            }
            _ => tracing::warn!(error = %e, "checkpoint not written; the next one covers it"),
        }
    }

    /// Handles a record the producer or the broker refused with `e`.
    fn refuse(&mut self, flight: Flight, e: &KafkaError, counts: &mut impl Written) {
        let Flight { pending, alone } = flight;
        match classify(e) {
            Class::Resend => self.requeue(pending),
            Class::PerRecord if !alone => {
                tracing::debug!(error = %e, "record refused with its batch; resending it on its own");
                self.suspects.push_back(pending);
            }
            Class::PerRecord => {
                let why = format!("the broker refused it: {e}");
                match bounds::refused(&pending.out, ErrorKind::ProduceRefused, &why, wall_ms()) {
                    Ok(dead) => {
                        let instead = Output::DeadLetter(dead);
                        counts.replaced(&pending.out, &instead);
                        tracing::warn!(error = %e, "record refused; writing a dead letter instead");
                        // The dead letter takes the record's place, and its tick stays held.
                        self.queue.push_front(Pending {
                            tick: pending.tick,
                            out: instead,
                        });
                    }
                    Err(fatal) => {
                        self.fatal.get_or_insert(fatal);
                    }
                }
            }
            Class::Fatal => {
                let topic = [
                    "verdicts",
                    "commitments",
                    "dead letters",
                    "stats",
                    "rollbacks",
                    "replay state",
                    "checkpoints",
                ][topic_of(&pending.out)];
                self.fatal
                    .get_or_insert_with(|| format!("producing {topic}: {e}"));
            }
        }
    }

    /// Opens the breaker when records have waited `ack_timeout_ms` with no acknowledgement.
    fn watch(&mut self, breaker: &Breaker, now_ms: u64) {
        let waiting = !self.queue.is_empty()
            || !self.replay_queue.is_empty()
            || !self.suspects.is_empty()
            || self.in_flight > 0;
        if !waiting {
            self.waiting_since_ms = None;
            breaker.idle(now_ms);
            return;
        }
        let since = *self.waiting_since_ms.get_or_insert(now_ms);
        if now_ms.saturating_sub(since) >= breaker.ack_timeout_ms() {
            tracing::warn!(
                waited_ms = now_ms - since,
                "no delivery acknowledged; treating the broker as down"
            );
            breaker.trip(now_ms);
            self.waiting_since_ms = Some(now_ms);
        }
    }
}

/// Which queue a record is taken from.
#[derive(Clone, Copy)]
enum Source {
    Suspects,
    Replay,
    Queue,
}

/// Takes one from the count of `tick`, removing it at zero.
fn decrement(counts: &mut BTreeMap<u64, u64>, tick: u64) {
    if let Some(c) = counts.get_mut(&tick) {
        *c -= 1;
        if *c == 0 {
            counts.remove(&tick);
        }
    }
}

impl Acknowledged<Output> for Outbox {
    fn push(&mut self, tick: u64, out: Output) {
        *self.unacked.entry(tick).or_default() += 1;
        if matches!(out, Output::Replay(_)) {
            *self.replay_unacked.entry(tick).or_default() += 1;
            self.replay_queue.push_back(Pending { tick, out });
        } else {
            self.queue.push_back(Pending { tick, out });
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn err(code: RDKafkaErrorCode) -> KafkaError {
        KafkaError::MessageProduction(code)
    }

    #[test]
    fn errors_are_classified_once() {
        assert_eq!(
            classify(&err(RDKafkaErrorCode::InvalidDifferentRecord)),
            Class::Resend
        );
        for code in PER_RECORD {
            assert_eq!(classify(&err(*code)), Class::PerRecord, "{code:?}");
        }
        for code in [
            RDKafkaErrorCode::TopicAuthorizationFailed,
            RDKafkaErrorCode::UnknownTopicOrPartition,
            RDKafkaErrorCode::UnknownTopic,
            RDKafkaErrorCode::Fatal,
            RDKafkaErrorCode::OutOfOrderSequenceNumber,
        ] {
            assert_eq!(classify(&err(code)), Class::Fatal, "{code:?}");
        }
    }

    #[test]
    fn the_message_limit_must_hold_the_largest_output() {
        let mut cfg = KafkaConfig::default();
        assert_eq!(check_message_limit(&cfg, 1_000_000), Ok(()));
        cfg.producer_options
            .insert("message.max.bytes".into(), "500000".into());
        let e = check_message_limit(&cfg, 1_000_000).unwrap_err();
        assert!(
            e.contains("500000") && e.contains("limits.max_output_bytes"),
            "{e}"
        );
        assert_eq!(check_message_limit(&cfg, 400_000), Ok(()));
        cfg.producer_options
            .insert("message.max.bytes".into(), "lots".into());
        assert!(check_message_limit(&cfg, 1).unwrap_err().contains("lots"));
    }

    #[test]
    fn client_errors_are_sorted_into_down_and_fatal() {
        let ev = ClientEvents::default();
        ev.record(
            &KafkaError::Global(RDKafkaErrorCode::AllBrokersDown),
            "1/1 brokers are down",
        );
        assert!(ev.all_down.load(Ordering::Relaxed));
        assert_eq!(ev.fatal(), None);
        ev.record(&KafkaError::Global(RDKafkaErrorCode::SSL), "handshake failed");
        assert!(ev.fatal().unwrap().contains("handshake failed"));
    }
}
