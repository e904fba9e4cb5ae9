//! `bizra verify --brokers`: feeds an [`Auditor`] the verdicts, rollbacks, checkpoints and
//! commitments topics from their beginning, every partition assigned by hand (no group
//! subscription, nothing committed). Without `--follow` it stops at the high watermarks seen at
//! start; with it, it keeps reading and judges, about once a second, what is older than the
//! grace period, printing each failure as it is found, until the `stop` flag is set, and
//! serves the auditor's metrics on `--http` (ready once caught up with the start watermarks).
//!
//! The watermarks are read verdicts first and commitments last: a checkpoint is published
//! only after the commitments it covers are durable, so every commitment a checkpoint read
//! here covers is read too. Partitions added to a topic after the start are not read. This
//! file blocks: it is the whole of the `verify` process.

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use bizra_dataflows::rollback::Rollback;
use bizra_dataflows::verdict::Verdict;
use bizra_dataflows::verification::commitment::Commitment;
use ed25519_dalek::VerifyingKey;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};

use super::{print_lines, AuditConfig, AuditMetrics, Auditor, Report, Seen};
use crate::decision_log::CheckpointRecord;
use crate::http::Ops;
use crate::kafka::KafkaConfig;

/// How often a follower judges what has grown old and prints what it found.
const TICK: Duration = Duration::from_secs(1);

/// What a topic holds.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Verdict,
    Rollback,
    Checkpoint,
    Commitment,
}

/// How `bizra verify --brokers` runs.
pub struct Options<'a> {
    /// Keep reading after the start watermarks, until SIGTERM/SIGINT.
    pub follow: bool,
    /// Serve `/metrics` (and `/healthz`, `/readyz`: ready once caught up) here.
    pub http: Option<&'a str>,
    /// Standard base64 of the node key, served at `/pubkey`.
    pub pubkey: String,
}

/// `bizra verify --brokers`: audits the topics of `cfg` against `pk` (following them with
/// `opts.follow`, serving metrics on `opts.http`) and returns the report.
pub fn verify(
    cfg: &KafkaConfig,
    pk: &VerifyingKey,
    audit_cfg: AuditConfig,
    opts: &Options,
    out: &mut dyn Write,
) -> anyhow::Result<Report> {
    let registry = prometheus::Registry::new();
    let metrics = AuditMetrics::register(&registry).context("registering the audit metrics")?;
    let mut auditor = Auditor::new(pk, audit_cfg, Some(metrics));
    let ops = Ops::new(registry, opts.pubkey.clone(), None, Default::default());
    if let Some(addr) = opts.http {
        crate::http::serve(addr, ops.clone())?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let follow = if opts.follow {
        for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
            signal_hook::flag::register(sig, stop.clone()).context("installing signal handlers")?;
        }
        Some(Follow {
            stop: &stop,
            ready: Some(&ops.ready),
        })
    } else {
        None
    };
    audit(cfg, &mut auditor, follow, out)?;
    Ok(auditor.finish(now_ms()))
}

/// How a follower runs.
pub struct Follow<'a> {
    /// Set by SIGTERM/SIGINT: stop reading and return.
    pub stop: &'a AtomicBool,
    /// Set once every partition has been read up to its start watermark (`/readyz`).
    pub ready: Option<&'a AtomicBool>,
}

/// Reads the four topics of `cfg` into `auditor`: up to the watermarks seen at start, or
/// with `follow` until its stop flag is set, printing failures and notes to `out` as found.
pub fn audit(
    cfg: &KafkaConfig,
    auditor: &mut Auditor,
    follow: Option<Follow>,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let consumer = crate::kafka::replay::reader_consumer(cfg, "verify")?;
    let timeout = Duration::from_millis(cfg.connect_timeout_ms);
    let topics = [
        (Kind::Verdict, "kafka.verdicts_topic", &cfg.verdicts_topic),
        (Kind::Rollback, "kafka.rollbacks_topic", &cfg.rollbacks_topic),
        (
            Kind::Checkpoint,
            "kafka.checkpoints_topic",
            &cfg.checkpoints_topic,
        ),
        (
            Kind::Commitment,
            "kafka.commitments_topic",
            &cfg.commitments_topic,
        ),
    ];
    let mut kinds: HashMap<String, Kind> = HashMap::new();
    // (topic, partition) → (next offset to read, high watermark at start).
    let mut progress: HashMap<(String, i32), (i64, i64)> = HashMap::new();
    let mut tpl = TopicPartitionList::new();
    for (kind, key, topic) in topics {
        kinds.insert(topic.clone(), kind);
        for p in partitions(&consumer, key, topic, timeout)? {
            let (low, high) = consumer
                .fetch_watermarks(topic, p, timeout)
                .with_context(|| format!("reading the offsets of {topic} partition {p}"))?;
            progress.insert((topic.clone(), p), (low, high));
            tpl.add_partition_offset(topic, p, Offset::Beginning)?;
        }
    }
    consumer
        .assign(&tpl)
        .context("assigning the partitions to read")?;
    let mut behind = progress.values().filter(|(next, high)| next < high).count();
    let mut last_progress = Instant::now();
    let mut last_tick = Instant::now();
    loop {
        if behind == 0 {
            if let Some(r) = follow.as_ref().and_then(|f| f.ready) {
                r.store(true, Ordering::Relaxed);
            }
        }
        match &follow {
            None if behind == 0 => return Ok(()),
            Some(f) if f.stop.load(Ordering::Relaxed) => return Ok(()),
            Some(_) if behind == 0 && last_tick.elapsed() >= TICK => {
                last_tick = Instant::now();
                auditor.tick(now_ms());
                let (failures, notes) = auditor.take_lines();
                print_lines(&failures, &notes, out)?;
                out.flush()?;
            }
            _ => {}
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                last_progress = Instant::now();
                let key = (m.topic().to_owned(), m.partition());
                let Some((next, high)) = progress.get_mut(&key) else {
                    continue;
                };
                let was_behind = *next < *high;
                *next = m.offset() + 1;
                if was_behind && *next >= *high {
                    behind -= 1;
                }
                if follow.is_none() && m.offset() >= *high {
                    continue; // after the start: not part of this audit
                }
                if let Some(kind) = kinds.get(m.topic()) {
                    feed(auditor, *kind, &m);
                }
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "reading the topics");
                if follow.is_none() && last_progress.elapsed() > timeout {
                    return Err(e).context("reading the topics");
                }
            }
            None if follow.is_none() && last_progress.elapsed() > timeout => {
                let stuck: Vec<String> = progress
                    .iter()
                    .filter(|(_, (next, high))| next < high)
                    .map(|((t, p), (next, high))| format!("{t}/{p} at {next} of {high}"))
                    .collect();
                bail!(
                    "reading the topics: no record within {} ms, still behind: {}",
                    timeout.as_millis(),
                    stuck.join(", ")
                );
            }
            None => {}
        }
    }
}

/// The partitions of `topic`; a missing topic is an error naming its config key.
fn partitions(
    consumer: &BaseConsumer,
    key: &str,
    topic: &str,
    timeout: Duration,
) -> anyhow::Result<Vec<i32>> {
    match crate::kafka::replay::topic_partitions(consumer, key, topic, timeout)? {
        Some(partitions) => Ok(partitions),
        None => bail!("{key} {topic} does not exist: bizra verify reads it (create the topics before the first start, README \"Kafka mode\")"),
    }
}

/// Decodes one record and hands it to the auditor.
fn feed(auditor: &mut Auditor, kind: Kind, m: &BorrowedMessage) {
    let seen = Seen {
        at: format!("{}/{}@{}", m.topic(), m.partition(), m.offset()),
        ms: arrival_ms(m.timestamp().to_millis(), now_ms()),
    };
    let bytes = m.payload().unwrap_or_default();
    match kind {
        Kind::Verdict => match serde_json::from_slice::<Verdict>(bytes) {
            Ok(v) => auditor.verdict(&seen, &v),
            Err(e) => auditor.malformed(&seen, "verdict", &e),
        },
        Kind::Rollback => match serde_json::from_slice::<Rollback>(bytes) {
            Ok(r) => auditor.rollback(&seen, &r),
            Err(e) => auditor.malformed(&seen, "rollback", &e),
        },
        Kind::Checkpoint => match serde_json::from_slice::<CheckpointRecord>(bytes) {
            Ok(c) => auditor.checkpoint(&seen, &c),
            Err(e) => auditor.malformed(&seen, "checkpoint", &e),
        },
        Kind::Commitment => match serde_json::from_slice::<Commitment>(bytes) {
            Ok(c) => auditor.commitment(&seen, &c),
            Err(e) => auditor.malformed(&seen, "commitment", &e),
        },
    }
}

/// A record's arrival time: its Kafka timestamp, never later than `now` (a producer clock
/// running ahead must not keep it young, unjudged and never retired, for ever); `now` if it
/// has none or a negative one.
fn arrival_ms(timestamp: Option<i64>, now: u64) -> u64 {
    timestamp
        .and_then(|t| u64::try_from(t).ok())
        .map_or(now, |t| t.min(now))
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::arrival_ms;

    #[test]
    fn an_arrival_time_is_the_timestamp_clamped_to_now() {
        let now = 1_700_000_000_000;
        assert_eq!(arrival_ms(Some(1_600_000_000_000), now), 1_600_000_000_000);
        // Dated 9999-12-31 by a producer: it arrived now, not in the future.
        assert_eq!(arrival_ms(Some(253_402_300_799_000), now), now);
        assert_eq!(arrival_ms(Some(-5), now), now);
        assert_eq!(arrival_ms(None, now), now);
    }
}
