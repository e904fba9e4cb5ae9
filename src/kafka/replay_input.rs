//! The input of `bizra audit replay --brokers`: a fixed range of the input topic, every
//! partition assigned by hand (no group subscription, nothing committed) from a start offset
//! (or the offset of a time) up to the high watermark seen when the range was fixed. A reader
//! thread turns its messages into chunks of raw records with their true provenance, as the
//! Kafka source does (`source.rs`), for `run.rs`'s `Source::Records`. It does not decide
//! anything about the records and does not follow the topic past the range.

use std::collections::BTreeMap;
use std::io;
use std::sync::mpsc::sync_channel;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bizra_dataflows::dead_letter::RAW_KEEP_BYTES;
use bizra_dataflows::observation::{InputRef, Text};
use bizra_dataflows::operators::wall_ms;
use bizra_dataflows::pipeline::RawRecord;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::io::{ChunkReceiver, READ_QUEUE};
use crate::kafka::KafkaConfig;

/// Where each partition's range starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// The earliest offset the topic still holds.
    Earliest,
    /// This offset on every partition (the earliest held, if that is later).
    Offset(i64),
    /// The first message at or after this time (ms since the Unix epoch), per partition.
    TimeMs(i64),
}

/// Partition → `[start, end)` offsets of the range.
pub type Ranges = BTreeMap<i32, (i64, i64)>;

/// A fixed range of the input topic and the client that reads it.
pub struct Plan {
    consumer: BaseConsumer,
    topic: String,
    ranges: Ranges,
    /// No record for this long while the range is not read: the read fails.
    timeout: Duration,
}

impl Plan {
    /// Connects, and fixes the range: each partition of `cfg.input_topic` from `start` to its
    /// high watermark now.
    pub fn resolve(cfg: &KafkaConfig, start: Start) -> anyhow::Result<Plan> {
        let consumer = super::replay::reader_consumer(cfg, "audit replay")?;
        let timeout = Duration::from_millis(cfg.connect_timeout_ms);
        let topic = cfg.input_topic.clone();
        let Some(partitions) =
            super::replay::topic_partitions(&consumer, "kafka.input_topic", &topic, timeout)?
        else {
            bail!("kafka.input_topic {topic} does not exist on {}", cfg.brokers);
        };
        let mut watermarks = BTreeMap::new();
        for &p in &partitions {
            let w = consumer
                .fetch_watermarks(&topic, p, timeout)
                .with_context(|| format!("reading the offsets of {topic} partition {p}"))?;
            watermarks.insert(p, w);
        }
        let at_time = match start {
            Start::TimeMs(ms) => Some(offsets_for_time(&consumer, &topic, &partitions, ms, timeout)?),
            _ => None,
        };
        let ranges = watermarks
            .iter()
            .map(|(&p, &(low, high))| {
                let from = match (start, &at_time) {
                    (Start::Earliest, _) => low,
                    (Start::Offset(n), _) => n.max(low),
                    (Start::TimeMs(_), Some(at)) => at.get(&p).copied().unwrap_or(high),
                    (Start::TimeMs(_), None) => unreachable!("offsets were looked up"),
                };
                (p, (from.min(high), high))
            })
            .collect();
        Ok(Plan {
            consumer,
            topic,
            ranges,
            timeout,
        })
    }

    /// The range, per partition.
    pub fn ranges(&self) -> &Ranges {
        &self.ranges
    }

    /// Starts the reader thread: chunks of up to `chunk_records` records and (but for one
    /// record) `chunk_bytes` bytes; a partial chunk is sent whenever no message is waiting. A
    /// record longer than `max_message_bytes` is cut as the Kafka source cuts it. The
    /// channel closes at the end of the range; a read that stalls for the connect timeout
    /// sends its error instead.
    pub fn spawn(
        self,
        max_message_bytes: usize,
        chunk_records: usize,
        chunk_bytes: usize,
    ) -> io::Result<ChunkReceiver> {
        let mut tpl = TopicPartitionList::new();
        for (&p, &(from, end)) in &self.ranges {
            if from < end {
                tpl.add_partition_offset(&self.topic, p, Offset::Offset(from))
                    .map_err(io::Error::other)?;
            }
        }
        self.consumer.assign(&tpl).map_err(io::Error::other)?;
        let (tx, rx) = sync_channel(READ_QUEUE);
        std::thread::Builder::new()
            .name("bizra-replay-input".into())
            .spawn(move || {
                let Plan {
                    consumer,
                    topic,
                    ranges,
                    timeout,
                } = self;
                let topic_text: Text = topic.as_str().into();
                let mut next: BTreeMap<i32, i64> = ranges.iter().map(|(&p, &(from, _))| (p, from)).collect();
                let behind = |next: &BTreeMap<i32, i64>| next.iter().any(|(p, n)| *n < ranges[p].1);
                let mut chunk = Vec::with_capacity(chunk_records);
                let mut bytes = 0;
                let mut last = Instant::now();
                while behind(&next) {
                    let m = match consumer.poll(Duration::from_millis(100)) {
                        Some(Ok(m)) => m,
                        Some(Err(e)) if last.elapsed() > timeout => {
                            let _ = tx.send(Err(io::Error::other(format!("reading {topic}: {e}"))));
                            return;
                        }
                        None if last.elapsed() > timeout => {
                            let _ = tx.send(Err(io::Error::other(format!(
                                "reading {topic}: no record within {} ms, still behind the range",
                                timeout.as_millis()
                            ))));
                            return;
                        }
                        Some(Err(_)) | None => {
                            if !chunk.is_empty() {
                                bytes = 0;
                                if tx.send(Ok(std::mem::take(&mut chunk))).is_err() {
                                    return;
                                }
                            }
                            continue;
                        }
                    };
                    last = Instant::now();
                    let (p, offset) = (m.partition(), m.offset());
                    let Some(end) = ranges.get(&p).map(|r| r.1) else {
                        continue;
                    };
                    next.insert(p, offset + 1);
                    if offset >= end {
                        continue; // after the range
                    }
                    let payload = m.payload().unwrap_or_default();
                    let oversize = (payload.len() > max_message_bytes).then_some(payload.len());
                    let kept = match oversize {
                        Some(_) => &payload[..RAW_KEEP_BYTES.min(payload.len())],
                        None => payload,
                    };
                    bytes += kept.len();
                    chunk.push(RawRecord {
                        bytes: kept.to_vec(),
                        input: Some(InputRef {
                            topic: topic_text.clone(),
                            partition: p,
                            offset,
                        }),
                        position: ((p as u64) << 40) | (offset as u64 & ((1 << 40) - 1)),
                        ingest_ms: wall_ms(),
                        message_ms: m.timestamp().to_millis(),
                        broker_ms: match m.timestamp() {
                            rdkafka::Timestamp::LogAppendTime(ms) => Some(ms),
                            _ => None,
                        },
                        oversize,
                    });
                    if chunk.len() >= chunk_records || bytes >= chunk_bytes {
                        bytes = 0;
                        if tx.send(Ok(std::mem::take(&mut chunk))).is_err() {
                            return;
                        }
                    }
                }
                if !chunk.is_empty() {
                    let _ = tx.send(Ok(chunk));
                }
            })?;
        Ok(rx)
    }
}

/// Each partition's offset of the first message at or after `ms`; a partition with none is
/// left out.
fn offsets_for_time(
    consumer: &BaseConsumer,
    topic: &str,
    partitions: &[i32],
    ms: i64,
    timeout: Duration,
) -> anyhow::Result<BTreeMap<i32, i64>> {
    let mut tpl = TopicPartitionList::new();
    for &p in partitions {
        tpl.add_partition_offset(topic, p, Offset::Offset(ms))?;
    }
    let found = consumer
        .offsets_for_times(tpl, timeout)
        .with_context(|| format!("looking up the offsets of {topic} at {ms} ms"))?;
    Ok(found
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect())
}
