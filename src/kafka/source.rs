//! The Kafka source of one worker: a consumer of the partitions assigned to it, one queue
//! per partition whose non-empty callback wakes the worker, and conversion of messages to
//! raw records; offset commits and their answers; and the watcher that finds partitions
//! added to the input topic. Reading never blocks (`poll(0)`); the worker decides how much
//! to read.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bizra_dataflows::dead_letter::RAW_KEEP_BYTES;
use bizra_dataflows::observation::{InputRef, Text};
use bizra_dataflows::operators::wall_ms;
use bizra_dataflows::pipeline::RawRecord;
use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::ClientContext;
use rdkafka::{Offset, TopicPartitionList};

use super::sink::ClientEvents;
use super::KafkaConfig;
use crate::metrics::Metrics;

/// A client that only reads metadata, reporting its client errors to `events`.
pub struct MetadataClient {
    consumer: BaseConsumer<EventsContext>,
    events: Arc<ClientEvents>,
}

/// Reports a client's global errors to [`ClientEvents`].
pub struct EventsContext(Arc<ClientEvents>);

impl ClientContext for EventsContext {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(error = %error, reason, "kafka metadata client");
        self.0.record(&error, reason);
    }
}

impl ConsumerContext for EventsContext {}

impl MetadataClient {
    pub fn new(cfg: &KafkaConfig) -> anyhow::Result<MetadataClient> {
        let events = Arc::new(ClientEvents::default());
        let consumer = cfg
            .client_config()
            .set("group.id", &cfg.group_id)
            .create_with_context(EventsContext(events.clone()))
            .context("creating the Kafka metadata client")?;
        Ok(MetadataClient { consumer, events })
    }

    /// The number of partitions of the input topic, or why it is not known. Blocks for up to
    /// `timeout` (never call it on a worker).
    pub fn partitions(&self, cfg: &KafkaConfig, timeout: Duration) -> Result<i32, String> {
        let md = self
            .consumer
            .fetch_metadata(Some(&cfg.input_topic), timeout)
            .map_err(|e| e.to_string())?;
        match md.topics().iter().find(|t| t.name() == cfg.input_topic) {
            Some(t) if t.error().is_none() && !t.partitions().is_empty() => Ok(t.partitions().len() as i32),
            Some(t) => Err(format!(
                "topic {} has no partitions ({:?})",
                cfg.input_topic,
                t.error()
            )),
            None => Err(format!("topic {} is not in the metadata", cfg.input_topic)),
        }
    }
}

/// Number of partitions of `topic`, retried until `connect_timeout_ms` runs out; the error
/// says which broker and topic could not be reached. A connection the broker refuses for
/// good (TLS or SASL it does not accept, authorisation) fails at once, naming the cause.
pub fn partition_count(cfg: &KafkaConfig) -> anyhow::Result<i32> {
    let tls = cfg.security_protocol.ends_with("ssl");
    if let Some(addr) = cfg.brokers.split(',').map(str::trim).find(|a| !a.is_empty()) {
        if tls && speaks_plaintext(addr) {
            bail!(
                "cannot connect to Kafka at {} with security.protocol {}: the listener at {addr} speaks plaintext Kafka (it answered an unencrypted request), not TLS",
                cfg.brokers,
                cfg.security_protocol
            );
        }
    }
    let client = MetadataClient::new(cfg)?;
    let deadline = Instant::now() + Duration::from_millis(cfg.connect_timeout_ms);
    let mut last = String::new();
    while Instant::now() < deadline {
        match client.partitions(cfg, Duration::from_millis(500)) {
            Ok(n) => return Ok(n),
            Err(e) => last = e,
        }
        // Client errors (a refused SASL handshake, TLS failures) are delivered by polling.
        let _ = client.consumer.poll(Duration::ZERO);
        if let Some(fatal) = client.events.fatal() {
            bail!(
                "cannot connect to Kafka at {} with security.protocol {}: {fatal}",
                cfg.brokers,
                cfg.security_protocol
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!(
        "cannot reach Kafka at {} for topic {} within {} ms: {last}",
        cfg.brokers,
        cfg.input_topic,
        cfg.connect_timeout_ms
    )
}

/// Whether the listener at `addr` answers an unencrypted Kafka request (ApiVersions v0):
/// then TLS cannot work with it, and librdkafka would only say so after its handshake
/// timeout (30 s). A TLS listener does not answer it, and neither does an unreachable one.
fn speaks_plaintext(addr: &str) -> bool {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    let Some(sock) = addr.to_socket_addrs().ok().and_then(|mut a| a.next()) else {
        return false;
    };
    let timeout = Duration::from_secs(2);
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&sock, timeout) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(timeout));
    let _ = s.set_write_timeout(Some(timeout));
    const CORRELATION: i32 = 0x6269_7a72;
    let client = b"bizra-probe";
    let mut req = Vec::new();
    req.extend_from_slice(&18i16.to_be_bytes()); // ApiVersions
    req.extend_from_slice(&0i16.to_be_bytes()); // version 0
    req.extend_from_slice(&CORRELATION.to_be_bytes());
    req.extend_from_slice(&(client.len() as i16).to_be_bytes());
    req.extend_from_slice(client);
    let mut frame = (req.len() as i32).to_be_bytes().to_vec();
    frame.extend_from_slice(&req);
    let mut head = [0u8; 8];
    s.write_all(&frame).is_ok()
        && s.read_exact(&mut head).is_ok()
        && i32::from_be_bytes([head[4], head[5], head[6], head[7]]) == CORRELATION
}

/// Watches the input topic's partition count in a thread of its own (metadata requests
/// block), every `kafka.partition_discovery_ms`; the workers read the count and take on the
/// partitions that are new. A failed refresh is transient: tried again next time.
pub fn watch_partitions(cfg: &KafkaConfig, initial: i32) -> anyhow::Result<Arc<AtomicI32>> {
    let count = Arc::new(AtomicI32::new(initial));
    if cfg.partition_discovery_ms == 0 {
        return Ok(count);
    }
    let client = MetadataClient::new(cfg)?;
    let (cfg, shared) = (cfg.clone(), count.clone());
    std::thread::Builder::new()
        .name("bizra-partitions".into())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_millis(cfg.partition_discovery_ms));
            match client.partitions(&cfg, Duration::from_secs(10)) {
                Ok(n) if n > shared.load(Ordering::Relaxed) => {
                    tracing::info!(topic = %cfg.input_topic, partitions = n, "input partitions added");
                    shared.store(n, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "refreshing the input topic's partitions"),
            }
        })
        .context("starting the partition watcher")?;
    Ok(count)
}

/// The partitions worker `index` of `peers` reads.
pub fn assigned(partitions: i32, index: usize, peers: usize) -> Vec<i32> {
    (0..partitions).filter(|p| *p as usize % peers == index).collect()
}

/// A commit's answer: the offsets it carried and whether the broker took them.
pub type CommitAnswer = (Vec<(i32, i64)>, bool);

/// Consumer context: turns librdkafka's statistics (every second, when metrics are on) into
/// the per-partition consumer-lag gauges (high watermark − committed offset; before the first
/// commit, librdkafka's own lag estimate) and reports client errors.
pub struct SourceContext {
    metrics: Option<Arc<Metrics>>,
    topic: String,
    /// Partitions p with p mod peers = index are this worker's.
    index: usize,
    peers: usize,
    events: Arc<ClientEvents>,
}

impl ClientContext for SourceContext {
    fn stats(&self, s: Statistics) {
        let (Some(m), Some(t)) = (&self.metrics, s.topics.get(&self.topic)) else {
            return;
        };
        for p in t.partitions.values() {
            let mine = p.partition >= 0 && p.partition as usize % self.peers == self.index;
            if !mine || p.hi_offset < 0 {
                continue;
            }
            let lag = if p.committed_offset >= 0 {
                p.hi_offset - p.committed_offset
            } else if p.consumer_lag >= 0 {
                p.consumer_lag
            } else {
                continue;
            };
            m.consumer_lag
                .with_label_values(&[&p.partition.to_string()])
                .set(lag.max(0));
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(error = %error, reason, "kafka consumer");
        self.events.record(&error, reason);
    }
}

impl ConsumerContext for SourceContext {
    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        // Commits are synchronous, on the commit thread, which reports their answers.
        if let Err(e) = &result {
            tracing::warn!(error = %e, "offset commit failed");
        }
    }
}

/// One worker's consumer and its partition queues.
pub struct Source {
    consumer: Arc<BaseConsumer<SourceContext>>,
    queues: Vec<(i32, PartitionQueue<SourceContext>)>,
    topic: Text,
    topic_name: String,
    max_message_bytes: usize,
    next: usize,
    wake: Arc<dyn Fn() + Send + Sync>,
    /// To the thread that makes this source's commits.
    committer: Sender<Vec<(i32, i64)>>,
    /// Answers to commits, from the commit thread.
    pub commits: Receiver<CommitAnswer>,
    /// Errors of the consumer client.
    pub events: Arc<ClientEvents>,
}

impl Source {
    /// Creates the consumer, assigns `partitions` from their committed offsets (or
    /// `start_offset`), and makes every queue call `wake` when it becomes non-empty. Each
    /// partition's prefetch queue holds at most `queue_bytes / partitions` (an explicit
    /// `queued.max.messages.kbytes` option wins).
    pub fn new(
        cfg: &KafkaConfig,
        (index, peers): (usize, usize),
        partitions: &[i32],
        max_message_bytes: usize,
        queue_bytes: usize,
        metrics: Option<Arc<Metrics>>,
        wake: impl Fn() + Send + Sync + 'static,
    ) -> anyhow::Result<Source> {
        let mut c = cfg.client_config();
        if metrics.is_some() {
            c.set("statistics.interval.ms", "1000");
        }
        let per_partition_kb = (queue_bytes / partitions.len().max(1) / 1024).max(64);
        c.set("group.id", &cfg.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", &cfg.start_offset)
            .set("enable.partition.eof", "false")
            .set("queued.max.messages.kbytes", per_partition_kb.to_string())
            // Return fetches promptly: the 500 ms default shows up as verdict latency
            // (p50 412 ms → 36 ms at half load, docs/BENCHMARKS.md).
            .set("fetch.wait.max.ms", "10");
        let (tx, commits) = channel();
        let events = Arc::new(ClientEvents::default());
        let context = SourceContext {
            metrics,
            topic: cfg.input_topic.clone(),
            index,
            peers,
            events: events.clone(),
        };
        let consumer: BaseConsumer<SourceContext> = cfg
            .with_options(c, false)
            .create_with_context(context)
            .context("creating the Kafka consumer")?;
        let consumer = Arc::new(consumer);
        let committer = spawn_committer(consumer.clone(), cfg.input_topic.clone(), index, tx)?;
        let mut source = Source {
            consumer,
            committer,
            queues: Vec::new(),
            topic: cfg.input_topic.as_str().into(),
            topic_name: cfg.input_topic.clone(),
            max_message_bytes,
            next: 0,
            wake: Arc::new(wake),
            commits,
            events,
        };
        source.add(partitions)?;
        Ok(source)
    }

    /// The partitions this source reads.
    pub fn partitions(&self) -> Vec<i32> {
        self.queues.iter().map(|(p, _)| *p).collect()
    }

    /// Starts reading `partitions` too, each from its committed offset (or `start_offset`).
    pub fn add(&mut self, partitions: &[i32]) -> anyhow::Result<()> {
        if partitions.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for &p in partitions {
            tpl.add_partition_offset(&self.topic_name, p, Offset::Stored)
                .context("building the partition assignment")?;
        }
        self.consumer
            .incremental_assign(&tpl)
            .context("assigning input partitions")?;
        for &p in partitions {
            let mut q = self
                .consumer
                .split_partition_queue(&self.topic_name, p)
                .with_context(|| format!("splitting the queue of partition {p}"))?;
            let wake = self.wake.clone();
            q.set_nonempty_callback(move || wake());
            self.queues.push((p, q));
        }
        Ok(())
    }

    /// Serves the consumer's own queue: client events and commit answers. Never blocks.
    pub fn serve(&self) {
        if let Some(Err(e)) = self.consumer.poll(Duration::ZERO) {
            tracing::warn!(error = %e, "kafka consumer");
        }
    }

    /// Reads up to `budget` records across the partitions, round-robin, while `out` says
    /// there is room (it is given each record); never blocks.
    pub fn read(&mut self, budget: usize, out: &mut impl FnMut(RawRecord) -> bool) -> usize {
        let mut n = 0;
        let mut idle = 0;
        // One clock read per call: the records of one read enter together.
        let now = wall_ms();
        while n < budget && idle < self.queues.len() {
            let i = self.next % self.queues.len();
            self.next += 1;
            let (p, q) = &self.queues[i];
            match q.poll(Duration::ZERO) {
                None => idle += 1,
                Some(Err(e)) => {
                    tracing::warn!(partition = p, error = %e, "kafka fetch");
                    idle += 1;
                }
                Some(Ok(m)) => {
                    idle = 0;
                    n += 1;
                    let bytes = m.payload().unwrap_or_default();
                    let oversize = (bytes.len() > self.max_message_bytes).then_some(bytes.len());
                    let kept = if oversize.is_some() {
                        &bytes[..RAW_KEEP_BYTES.min(bytes.len())]
                    } else {
                        bytes
                    };
                    let more = out(RawRecord {
                        bytes: kept.to_vec(),
                        input: Some(InputRef {
                            topic: self.topic.clone(),
                            partition: *p,
                            offset: m.offset(),
                        }),
                        position: ((*p as u64) << 40) | (m.offset() as u64 & ((1 << 40) - 1)),
                        ingest_ms: now,
                        message_ms: m.timestamp().to_millis(),
                        broker_ms: match m.timestamp() {
                            rdkafka::Timestamp::LogAppendTime(ms) => Some(ms),
                            _ => None,
                        },
                        oversize,
                    });
                    if !more {
                        break;
                    }
                }
            }
        }
        n
    }

    /// Commits `(partition, next offset)` pairs to the group: `Async` hands them to the
    /// commit thread and returns at once, the answer arrives on [`Source::commits`]; `Sync`
    /// waits for the broker's answer on this thread.
    pub fn commit(&self, offsets: &[(i32, i64)], mode: CommitMode) -> anyhow::Result<()> {
        if offsets.is_empty() {
            return Ok(());
        }
        if matches!(mode, CommitMode::Async) {
            return self
                .committer
                .send(offsets.to_vec())
                .map_err(|_| anyhow::anyhow!("the commit thread is gone"));
        }
        commit_now(&self.consumer, &self.topic_name, offsets)
    }
}

/// The commit thread of one source: makes each commit it is handed synchronously and
/// reports `(offsets, ok)`. An asynchronous librdkafka commit would answer through the
/// consumer queue, but with manual assignment and split partition queues its answer never
/// came (rdkafka 0.39, librdkafka 2.12: the commit succeeded, no event was served); a
/// synchronous commit's answer is certain, and on this thread it never holds up a worker.
fn spawn_committer(
    consumer: Arc<BaseConsumer<SourceContext>>,
    topic: String,
    index: usize,
    answers: Sender<CommitAnswer>,
) -> anyhow::Result<Sender<Vec<(i32, i64)>>> {
    let (tx, rx) = channel::<Vec<(i32, i64)>>();
    std::thread::Builder::new()
        .name(format!("bizra-commit-{index}"))
        .spawn(move || {
            for offsets in rx {
                let ok = match commit_now(&consumer, &topic, &offsets) {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), "offset commit failed; retrying");
                        false
                    }
                };
                if answers.send((offsets, ok)).is_err() {
                    return;
                }
            }
        })
        .context("starting the commit thread")?;
    Ok(tx)
}

fn commit_now(
    consumer: &BaseConsumer<SourceContext>,
    topic: &str,
    offsets: &[(i32, i64)],
) -> anyhow::Result<()> {
    let mut tpl = TopicPartitionList::new();
    for &(p, o) in offsets {
        tpl.add_partition_offset(topic, p, Offset::Offset(o))?;
    }
    consumer
        .commit(&tpl, CommitMode::Sync)
        .context("committing offsets")?;
    tracing::debug!(?offsets, "offsets committed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_partition_goes_to_exactly_one_worker() {
        let peers = 3;
        let mut all: Vec<i32> = (0..peers).flat_map(|w| assigned(8, w, peers)).collect();
        all.sort();
        assert_eq!(all, (0..8).collect::<Vec<_>>());
        assert_eq!(assigned(8, 1, 3), vec![1, 4, 7]);
    }
}
