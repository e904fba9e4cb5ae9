//! Finds where each of this process's shards' commitment chains stands at start (SPEC §3.4):
//! reads `kafka.commitments_topic` backwards from its end, in growing steps over every
//! partition, until the newest commitment of this deployment (`run`) is found for each shard
//! (or the topic's start is reached: a shard never seen starts at seq 0). The log frontier
//! after each commitment travels in its `bizra.log` header (`sink.rs`), so nothing older is
//! needed. A chain signed by another key than this node's is fatal: a deployment's chains
//! continue under one key. A shard whose newest record cannot be read (a payload that is no
//! commitment under the shard's key, or this deployment's commitment without its header) is
//! a clear error: the chain would otherwise go on from an older commitment and fork. Only
//! `resume_past_unreadable` (`bizra run --resume-past-unreadable`, a one-time decision)
//! lets it go on from the newest readable one, logged. This file only reads, and blocks
//! (never call it on a worker).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bizra_dataflows::verification::commitment::{ChainStart, Commitment};
use bizra_dataflows::verification::signature::key_id;
use bizra_dataflows::verification::tlog::Frontier;
use ed25519_dalek::VerifyingKey;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};

use super::replay::topic_partitions;
use super::KafkaConfig;

/// The Kafka header that carries the log frontier after a commitment (`Frontier::to_bytes`).
pub const LOG_HEADER: &str = "bizra.log";

/// Records read per partition in the first step back from the end; each step doubles it.
const FIRST_STEP: i64 = 256;

/// The newest durable commitment of each shard in `shards` of deployment `run` (hex), with
/// the log frontier after it.
pub fn load(
    consumer: &BaseConsumer,
    cfg: &KafkaConfig,
    run: &str,
    shards: std::ops::Range<u32>,
    pk: &VerifyingKey,
    resume_past_unreadable: bool,
) -> anyhow::Result<BTreeMap<u32, ChainStart>> {
    let started = Instant::now();
    let timeout = Duration::from_millis(cfg.connect_timeout_ms);
    let topic = &cfg.commitments_topic;
    let Some(partitions) = topic_partitions(consumer, "kafka.commitments_topic", topic, timeout)? else {
        bail!("kafka.commitments_topic {topic} does not exist: create it with the other topics");
    };
    // Checkpoints go to their own topic: missing, they would be lost one by one.
    let cp = &cfg.checkpoints_topic;
    if topic_partitions(consumer, "kafka.checkpoints_topic", cp, timeout)?.is_none() {
        bail!("kafka.checkpoints_topic {cp} does not exist: create it with the other topics");
    }
    // Per partition: [low, next unread offset going back).
    let mut ranges = Vec::new();
    for p in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, *p, timeout)
            .with_context(|| format!("reading the offsets of {topic} partition {p}"))?;
        ranges.push((*p, low, high));
    }
    let mut found: BTreeMap<u32, (Commitment, Frontier, Place)> = BTreeMap::new();
    let wanted: BTreeSet<u32> = shards.collect();
    // Per shard, the newest record under its key that could not be read.
    let mut unreadable: BTreeMap<u32, Unreadable> = BTreeMap::new();
    let mut step = FIRST_STEP;
    let mut read = 0u64;
    while ranges.iter().any(|(_, low, to)| to > low) && !wanted.iter().all(|s| found.contains_key(s)) {
        for (p, low, to) in ranges.iter_mut() {
            let from = (*to - step).max(*low);
            for r in read_range(consumer, topic, *p, from, *to, run, timeout)? {
                read += 1;
                match r {
                    Read::Commitment(found_one) => {
                        let (c, log, at) = *found_one;
                        if found.get(&c.shard).is_none_or(|(f, _, _)| c.seq > f.seq) {
                            found.insert(c.shard, (c, log, at));
                        }
                    }
                    Read::Unreadable(shard, u) if wanted.contains(&shard) => {
                        if unreadable.get(&shard).is_none_or(|o| u.at.1 > o.at.1) {
                            unreadable.insert(shard, u);
                        }
                    }
                    Read::Unreadable(..) => {}
                }
            }
            *to = from;
        }
        step = step.saturating_mul(2);
        if started.elapsed() > Duration::from_secs(5) {
            // A shard not seen yet makes the search go back to the topic's start.
            tracing::info!(
                topic = %topic,
                records = read,
                missing = ?wanted.iter().filter(|s| !found.contains_key(s)).collect::<Vec<_>>(),
                "still looking for commitment chains"
            );
        }
    }
    // An unreadable record matters unless a readable commitment of the shard is newer (later
    // in the same partition: a shard's key keeps it in one partition).
    for (shard, u) in unreadable {
        let newer = found
            .get(&shard)
            .is_some_and(|(_, _, at)| at.0 == u.at.0 && at.1 > u.at.1);
        if newer {
            continue;
        }
        let resumes = match found.get(&shard) {
            Some((c, _, at)) => format!("seq {} (partition {} offset {})", c.seq + 1, at.0, at.1),
            None => "seq 0 (no readable commitment of it)".to_owned(),
        };
        if !resume_past_unreadable {
            bail!(
                "kafka.commitments_topic {topic} partition {} offset {}: shard {shard}'s newest record cannot be read ({}); its chain cannot continue from it. If that record is lost for good, `bizra run --resume-past-unreadable` continues the chain at {resumes}, which an auditor sees as a gap or fork there",
                u.at.0,
                u.at.1,
                u.why
            );
        }
        tracing::warn!(
            topic = %topic,
            shard,
            partition = u.at.0,
            offset = u.at.1,
            why = %u.why,
            resumes = %resumes,
            "--resume-past-unreadable: the chain goes on past a record that cannot be read"
        );
    }
    let mut out = BTreeMap::new();
    for (shard, (c, log, _)) in found.into_iter().filter(|(s, _)| wanted.contains(s)) {
        if c.key_id != key_id(pk) {
            bail!(
                "kafka.commitments_topic {topic}: shard {shard}'s chain (deployment run {run}) was signed by key_id {}, this node's key is {}: a deployment's chains continue under one key (keys.signing_key_path); to change keys, start a new deployment (log.deployment)",
                c.key_id,
                key_id(pk)
            );
        }
        let start = ChainStart::after(&c, log)
            .map_err(|e| anyhow::anyhow!("kafka.commitments_topic {topic}: {e}"))?;
        out.insert(shard, start);
    }
    tracing::info!(
        topic = %topic,
        records = read,
        chains = ?out.iter().map(|(s, c)| (*s, c.next_seq)).collect::<Vec<_>>(),
        ms = started.elapsed().as_millis() as u64,
        "commitment chains found"
    );
    Ok(out)
}

/// (partition, offset) of a record.
type Place = (i32, i64);

/// A record under a shard's key that is not a readable commitment.
struct Unreadable {
    at: Place,
    why: String,
}

/// One record of the commitments topic that concerns deployment `run`.
enum Read {
    Commitment(Box<(Commitment, Frontier, Place)>),
    /// Keyed by this shard (as bizra keys commitments), and not a readable commitment of
    /// another deployment.
    Unreadable(u32, Unreadable),
}

/// The records of deployment `run` at offsets `[from, to)` of one partition: its
/// commitments, each with the log frontier of its header, and what cannot be read. Other
/// deployments' commitments (and records under no shard key) are skipped: the topic may be
/// shared.
fn read_range(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    from: i64,
    to: i64,
    run: &str,
    timeout: Duration,
) -> anyhow::Result<Vec<Read>> {
    let mut out = Vec::new();
    super::replay::read_partition(consumer, topic, partition, from, to, timeout, |m| {
        let at = (partition, m.offset());
        let keyed = || std::str::from_utf8(m.key()?).ok()?.parse::<u32>().ok();
        let c = match serde_json::from_slice::<Commitment>(m.payload().unwrap_or_default()) {
            Ok(c) if c.run != run => return Ok(()),
            Ok(c) => c,
            Err(e) => {
                if let Some(shard) = keyed() {
                    let why = format!("not a commitment: {e}");
                    out.push(Read::Unreadable(shard, Unreadable { at, why }));
                }
                return Ok(());
            }
        };
        let header = m
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == LOG_HEADER))
            .and_then(|h| h.value);
        match header.map(Frontier::from_bytes) {
            Some(Ok(log)) => out.push(Read::Commitment(Box::new((c, log, at)))),
            bad => {
                let why = match bad {
                    Some(Err(e)) => format!("its {LOG_HEADER} header is not a log frontier: {e}"),
                    _ => format!("a commitment without its {LOG_HEADER} header"),
                };
                out.push(Read::Unreadable(c.shard, Unreadable { at, why }));
            }
        }
        Ok(())
    })?;
    Ok(out)
}
