//! Restores the replay guard's state from `kafka.replay_topic` at start (before any worker
//! runs): reads the topic's partition 0 backwards in growing steps from its end until the
//! records seen hold a whole snapshot of every bucket (or the topic's start is reached), then
//! rebuilds the state from there (`verification::replay_log`). The workers write to the topic
//! through their sinks; this file only reads it, and blocks (never call it on a worker).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bizra_dataflows::verification::batcher::Restored;
use bizra_dataflows::verification::replay_log::{restore, restore_start, ReplayRecord};
use bizra_dataflows::verification::sampling::SampleKey;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};

use super::KafkaConfig;

/// The client that reads bizra's own topics back at start (this file and `chains.rs`), by
/// `assign` only. One for both: every consumer's close costs round trips (and, under
/// libfaketime, realtime-based waits stretched by the fake offset).
pub fn restore_consumer(cfg: &KafkaConfig) -> anyhow::Result<BaseConsumer> {
    cfg.with_options(cfg.client_config(), false)
        .set("group.id", &cfg.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        // Large fetches: the replay state is tens of MB, and each fetch is a round trip.
        .set("max.partition.fetch.bytes", "16777216")
        .set("fetch.max.bytes", "67108864")
        .set("receive.message.max.bytes", "100000000")
        .create()
        .context("creating the Kafka client that restores the replay state and the chains")
}

/// The client of an offline reader (`bizra verify`, `bizra audit replay`): reads by `assign`
/// only, under a group of its own (`bizra-<tool>-<pid>`) that it never commits.
pub fn reader_consumer(cfg: &KafkaConfig, tool: &str) -> anyhow::Result<BaseConsumer> {
    cfg.with_options(cfg.client_config(), false)
        .set(
            "group.id",
            format!("bizra-{}-{}", tool.replace(' ', "-"), std::process::id()),
        )
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .with_context(|| format!("creating the Kafka client of bizra {tool}"))
}

/// The partitions of `topic` (config key `key`, for the error), or `None` if the broker does
/// not have it (no partitions, or an error for it).
pub fn topic_partitions(
    consumer: &BaseConsumer,
    key: &str,
    topic: &str,
    timeout: Duration,
) -> anyhow::Result<Option<Vec<i32>>> {
    let md = consumer
        .fetch_metadata(Some(topic), timeout)
        .with_context(|| format!("reading the metadata of {key} {topic}"))?;
    Ok(md
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
        .map(|t| t.partitions().iter().map(|p| p.id()).collect()))
}

/// Records read in the first step back from the end; each further step doubles it.
const FIRST_STEP: i64 = 1024;

/// The state the replay topic holds, in `key`'s buckets with `per_bucket` sightings each.
/// A missing topic is an error naming it (create it with the other topics).
pub fn load(
    consumer: &BaseConsumer,
    cfg: &KafkaConfig,
    key: &SampleKey,
    per_bucket: usize,
) -> anyhow::Result<Restored> {
    let started = Instant::now();
    let timeout = Duration::from_millis(cfg.connect_timeout_ms);
    let topic = &cfg.replay_topic;
    if topic_partitions(consumer, "kafka.replay_topic", topic, timeout)?.is_none() {
        bail!(
            "kafka.replay_topic {topic} does not exist: create it with the other topics (1 partition; size-based retention of at least 4 replay windows, see README)"
        );
    }
    let (low, high) = consumer
        .fetch_watermarks(topic, 0, timeout)
        .with_context(|| format!("reading the offsets of {topic}"))?;
    // Read back from the end, each step twice as far, until a restore point is in sight.
    let mut from = high;
    let mut records: Vec<(i64, ReplayRecord)> = Vec::new();
    let mut step = FIRST_STEP;
    let start = loop {
        let to = from;
        from = (to - step).max(low);
        let mut older = read_range(consumer, topic, from, to, timeout)?;
        older.append(&mut records);
        records = older;
        let tail: Vec<(u64, &ReplayRecord)> = records.iter().map(|(o, r)| (*o as u64, r)).collect();
        if let Some(at) = restore_start(&tail) {
            break at as i64;
        }
        if from == low {
            break low;
        }
        step *= 2;
    };
    let read_ms = started.elapsed().as_millis() as u64;
    let used = records.iter().filter(|(o, _)| *o >= start).count();
    let state = restore(
        records.into_iter().filter(|(o, _)| *o >= start).map(|(_, r)| r),
        key,
        per_bucket,
    );
    let sightings: usize = state.iter().map(Vec::len).sum();
    tracing::info!(
        topic = %topic,
        from = start,
        to = high,
        records = used,
        sightings,
        read_ms,
        ms = started.elapsed().as_millis() as u64,
        "replay state restored"
    );
    Ok(Arc::new(state))
}

/// The records at offsets `[from, to)` of partition 0 of `topic`, with their offsets. A
/// record that does not decode is an error: the topic is bizra's own.
fn read_range(
    consumer: &BaseConsumer,
    topic: &str,
    from: i64,
    to: i64,
    timeout: Duration,
) -> anyhow::Result<Vec<(i64, ReplayRecord)>> {
    let mut out = Vec::new();
    read_partition(consumer, topic, 0, from, to, timeout, |m| {
        let r = ReplayRecord::decode(m.payload().unwrap_or_default())
            .map_err(|e| anyhow::anyhow!("{topic} offset {}: not a replay-log record: {e}", m.offset()))?;
        out.push((m.offset(), r));
        Ok(())
    })?;
    Ok(out)
}

/// Hands each message at offsets `[from, to)` of one partition of `topic` to `each`, in
/// order; an error from `each` ends the read. No message for `timeout` is an error naming
/// the offset (a broker that stopped answering must not stall a start for ever).
pub fn read_partition(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    from: i64,
    to: i64,
    timeout: Duration,
    mut each: impl FnMut(&BorrowedMessage<'_>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    if from >= to {
        return Ok(());
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(from))?;
    consumer.assign(&tpl)?;
    let mut last_progress = Instant::now();
    let mut next = from;
    while next < to {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                last_progress = Instant::now();
                next = m.offset() + 1;
                if m.offset() >= to {
                    break;
                }
                each(&m)?;
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => break,
            Some(Err(e)) => return Err(e).with_context(|| format!("reading {topic}")),
            None if last_progress.elapsed() > timeout => {
                bail!(
                    "reading {topic} partition {partition} from offset {next}: no record within {} ms",
                    timeout.as_millis()
                )
            }
            None => {}
        }
    }
    Ok(())
}
