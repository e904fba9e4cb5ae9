//! The Kafka sinks of one worker: verdicts (key = observation id), commitments and dead
//! letters (with provenance headers) through one idempotent producer. `QueueFull` and a
//! slow or absent broker are backpressure — records stay in the outbox and the worker
//! stops reading — never loss. The sink operator holds the capability of every tick with
//! unacknowledged records, so the frontier after it means "delivered".

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use bizra_dataflows::operators::commit::Output;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
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

/// Creates the idempotent producer and the receiver of its delivery reports.
pub fn producer(cfg: &KafkaConfig) -> anyhow::Result<(BaseProducer<DeliveryContext>, Receiver<Ack>)> {
    let (tx, rx) = channel();
    let p = cfg
        .client_config()
        .set("enable.idempotence", "true")
        .set("acks", "all")
        // Never give up on a record: a lost broker is backpressure, not loss.
        .set("message.timeout.ms", "0")
        .set("linger.ms", "5")
        // Verdict JSON is ~2 KB and compresses ~4×: the broker's bytes are the bottleneck.
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "100000")
        .create_with_context(DeliveryContext { acks: Mutex::new(tx) })
        .context("creating the Kafka producer")?;
    Ok((p, rx))
}

/// A record waiting to be handed to the producer.
pub struct Pending {
    tick: u64,
    topic: u8,
    key: Option<String>,
    payload: Vec<u8>,
    headers: Option<OwnedHeaders>,
}

const VERDICTS: u8 = 0;
const COMMITMENTS: u8 = 1;
const DLQ: u8 = 2;

/// Per-worker state shared by the sink operator and the worker loop.
pub struct Outbox {
    queue: VecDeque<Pending>,
    /// Unacknowledged records per tick (queued or in the producer).
    unacked: BTreeMap<u64, u64>,
    /// Wakes the sink operator when acknowledgements arrive.
    pub activator: Option<Activator>,
    /// A delivery failed definitely: stop, commit nothing more.
    pub fatal: Option<String>,
}

impl Outbox {
    pub fn new() -> Rc<RefCell<Outbox>> {
        Rc::new(RefCell::new(Outbox {
            queue: VecDeque::new(),
            unacked: BTreeMap::new(),
            activator: None,
            fatal: None,
        }))
    }

    fn push(&mut self, tick: u64, o: &Output) {
        let (topic, key, headers) = match o {
            Output::Verdict(v) => (VERDICTS, Some(v.id.clone()), None),
            Output::Commitment(_) => (COMMITMENTS, None, None),
            Output::DeadLetter(d) => {
                let (t, p, off) = match &d.input {
                    Some(i) => (i.topic.clone(), i.partition.to_string(), i.offset.to_string()),
                    None => (String::new(), String::new(), String::new()),
                };
                let h = OwnedHeaders::new()
                    .insert(Header {
                        key: "bizra.error",
                        value: Some(d.error.as_str()),
                    })
                    .insert(Header {
                        key: "bizra.source.topic",
                        value: Some(&t),
                    })
                    .insert(Header {
                        key: "bizra.source.partition",
                        value: Some(&p),
                    })
                    .insert(Header {
                        key: "bizra.source.offset",
                        value: Some(&off),
                    });
                (DLQ, None, Some(h))
            }
        };
        let payload = match o {
            Output::Verdict(v) => serde_json::to_vec(v),
            Output::Commitment(c) => serde_json::to_vec(c),
            Output::DeadLetter(d) => serde_json::to_vec(d),
        }
        .expect("output records serialize");
        *self.unacked.entry(tick).or_default() += 1;
        self.queue.push_back(Pending {
            tick,
            topic,
            key,
            payload,
            headers,
        });
    }

    /// Records not yet handed to the producer.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// True when nothing is queued or unacknowledged.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty() && self.unacked.is_empty()
    }

    /// Hands queued records to the producer until it is full or the breaker says no.
    pub fn flush(
        &mut self,
        producer: &BaseProducer<DeliveryContext>,
        topics: &[String; 3],
        breaker: &Breaker,
        now_ms: u64,
    ) {
        while let Some(p) = self.queue.front() {
            if !breaker.allow(now_ms) {
                return;
            }
            let mut rec =
                BaseRecord::with_opaque_to(&topics[p.topic as usize], p.tick as usize).payload(&p.payload);
            if let Some(k) = &p.key {
                rec = rec.key(k.as_str());
            }
            if let Some(h) = &p.headers {
                rec = rec.headers(h.clone());
            }
            match producer.send(rec) {
                Ok(()) => {
                    self.queue.pop_front();
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => return,
                Err((e, _)) => {
                    // Not retriable by waiting (e.g. a record over the broker's size limit).
                    breaker.record_failure(now_ms);
                    self.fatal = Some(format!("producing to {}: {e}", topics[p.topic as usize]));
                    return;
                }
            }
        }
    }

    /// Applies delivery reports; returns how many were acknowledged.
    pub fn apply(&mut self, acks: &Receiver<Ack>, breaker: &Breaker, now_ms: u64) -> usize {
        let mut n = 0;
        while let Ok((tick, outcome)) = acks.try_recv() {
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
        n
    }

    /// Waits (at shutdown only) for the producer to deliver everything handed to it.
    pub fn drain(producer: &BaseProducer<DeliveryContext>, timeout: Duration) -> anyhow::Result<()> {
        producer
            .flush(timeout)
            .context("flushing the producer at shutdown")
    }
}

/// The sink operator: queues every output in the outbox under its tick and holds that
/// tick's capability until all of its records are acknowledged.
pub fn sink<'s>(stream: StreamVec<'s, u64, Output>, outbox: Rc<RefCell<Outbox>>) -> StreamVec<'s, u64, ()> {
    let scope = stream.scope();
    stream.unary_frontier::<CapacityContainerBuilder<Vec<()>>, _, _, _>(
        Pipeline,
        "kafka-sink",
        move |cap, info| {
            drop(cap);
            outbox.borrow_mut().activator = Some(scope.activator_for(info.address.clone()));
            let mut held: BTreeMap<u64, Capability<u64>> = BTreeMap::new();
            move |(input, frontier), _output| {
                let mut ob = outbox.borrow_mut();
                input.for_each(|cap, data: &mut Vec<Output>| {
                    if let Some(cap) = cap.retain_least(0) {
                        let t = *cap.time();
                        for o in data.drain(..) {
                            ob.push(t, &o);
                        }
                        held.entry(t).or_insert(cap);
                    }
                });
                // A tick is delivered once no more records can come for it and none is unacked.
                held.retain(|t, _| frontier.frontier().less_equal(t) || ob.unacked.contains_key(t));
            }
        },
    )
}
