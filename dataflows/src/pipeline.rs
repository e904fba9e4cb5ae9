//! The decision dataflow, wired once for every source and sink: raw records → decode (bad →
//! dead letters) → convergence → verify (exchanged by id bucket) → value, ethics, SNR and the
//! optional explanation → commit → [`Output`]. Sources and sinks are the runtime's business;
//! this file only connects stages.

use std::sync::Arc;

use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use timely::dataflow::operators::core::OkErr;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::Concat;
use timely::dataflow::StreamVec;

use crate::convergence::converge;
use crate::dead_letter::{DeadLetter, DecodeError, ErrorKind};
use crate::decode::{decode, Limits};
use crate::explain::{explain, Style};
use crate::observation::{InputRef, Origin};
use crate::operators::commit::{commit, Output};
use crate::operators::verify::verify;
use crate::operators::{timed_map, wall_ms, Observer, Stage};
use crate::policy::Policy;
use crate::record::{Assessed, Checked, Decoded, Scored};
use crate::verdict::assess;
use crate::verification::batcher::Restored;
use crate::verification::commitment::ChainStart;
use crate::verification::replay::{fingerprint, id_hash};
use crate::verification::sampling::SampleKey;
use crate::verification::signature::Keyring;
use crate::verification::VerifyConfig;

/// One input record as a source read it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RawRecord {
    pub bytes: Vec<u8>,
    pub input: Option<InputRef>,
    /// Input order (see [`Origin::position`]).
    pub position: u64,
    pub ingest_ms: i64,
    /// Kafka message timestamp, if any (the producer's CreateTime, or the broker's).
    pub message_ms: Option<i64>,
    /// The message timestamp when the broker set it (LogAppendTime), which no sender controls.
    pub broker_ms: Option<i64>,
    /// Set when the source cut the record at the message limit: its full length.
    pub oversize: Option<usize>,
}

/// Everything the dataflow needs, shared read-only by all workers of a process.
#[derive(Clone)]
pub struct PipelineConfig {
    pub limits: Limits,
    /// Largest record accepted (`limits.max_message_bytes`); sources cut longer ones.
    pub max_message_bytes: usize,
    /// How far past its ingest time an event time may be (`stats.max_future_ms`); a record
    /// dated later is placed at its ingest time (see [`decode_record`]).
    pub max_future_ms: u64,
    pub verify: VerifyConfig,
    /// The deployment's secret for the statistical sample and the replay guard's buckets.
    pub sample_key: SampleKey,
    /// The replay state to start from, when it persists (Kafka mode, `--data-dir`); `None`
    /// keeps it in memory only and writes no replay-log records.
    pub replay: Option<Restored>,
    pub policy: Arc<Policy>,
    pub keyring: Arc<Keyring>,
    pub signing_key: Arc<SigningKey>,
    /// The deployment's run id ([`deployment_run`]): commitment chains are per (run, shard).
    ///
    /// [`deployment_run`]: crate::verification::commitment::deployment_run
    pub run: [u8; 8],
    /// Where each shard's chain continues (its last durable commitment); a shard not listed
    /// starts a new chain at seq 0.
    pub chains: Arc<std::collections::BTreeMap<u32, ChainStart>>,
    /// Style of the verdicts' `explanation` (`output.explain`); `None` writes none and costs
    /// nothing, since it is formatting work per record on the hot path.
    pub explain: Option<Style>,
}

/// Decodes one raw record into a routed observation or a dead letter.
///
/// The event time is the observation's `timestamp`, else the message's, else the ingest time;
/// both timestamps are the sender's to choose, so one more than `max_future_ms` past the
/// ingest time is not believed: the record is placed at its ingest time and marked
/// [`Origin::future_dated`] (it is counted, and does not move the statistics' watermark).
pub fn decode_record(
    r: RawRecord,
    limits: &Limits,
    max_message_bytes: usize,
    max_future_ms: u64,
    key: &SampleKey,
) -> Result<Box<Decoded>, DeadLetter> {
    let result = match r.oversize {
        Some(len) => Err(DecodeError::new(
            ErrorKind::MessageTooLarge,
            format!("record is {len} bytes, the limit is {max_message_bytes} bytes"),
        )),
        None => decode(&r.bytes, limits),
    };
    match result {
        Ok(obs) => {
            let claimed = obs.timestamp_ms.or(r.message_ms).unwrap_or(r.ingest_ms);
            let latest = r.ingest_ms.saturating_add_unsigned(max_future_ms);
            let future_dated = claimed > latest;
            let event_ms = if future_dated { r.ingest_ms } else { claimed };
            let id_hash = id_hash(&obs.id);
            Ok(Box::new(Decoded {
                obs,
                origin: Origin {
                    input: r.input,
                    position: r.position,
                    ingest_ms: r.ingest_ms,
                    arrival_ms: r.broker_ms.unwrap_or(r.ingest_ms),
                    event_ms,
                    future_dated,
                },
                id_hash,
                bucket: key.bucket(fingerprint(id_hash)),
            }))
        }
        Err(e) => Err(DeadLetter::new(e, r.input, &r.bytes, wall_ms())),
    }
}

/// The assess step: the verdict of a verified record and, if `style` is set, its explanation.
pub fn assess_record(c: Checked, policy: &Policy, version: &str, style: Option<Style>) -> Assessed {
    let mut a = assess(c, policy, version);
    if let Some(style) = style {
        a.verdict.explanation = Some(explain(&a.verdict, style));
    }
    a
}

/// Builds the decision dataflow over `raw` and returns everything to write. `observer`, if
/// any, is told each stage's time per batch of records.
pub fn build<'s>(
    raw: StreamVec<'s, u64, RawRecord>,
    cfg: &PipelineConfig,
    observer: Observer,
) -> StreamVec<'s, u64, Output> {
    let limits = cfg.limits.clone();
    let max_message_bytes = cfg.max_message_bytes;
    let max_future_ms = cfg.max_future_ms;
    let key = cfg.sample_key.clone();
    let (decoded, dead): (StreamVec<'s, u64, Box<Decoded>>, StreamVec<'s, u64, DeadLetter>) =
        timed_map(raw, Stage::Decode, observer.clone(), move |r| {
            decode_record(r, &limits, max_message_bytes, max_future_ms, &key)
        })
        .ok_err(|r| r);

    let conv_policy = cfg.policy.convergence.clone();
    let scored = timed_map(decoded, Stage::Score, observer.clone(), move |d| {
        let convergence = converge(&d.obs, &conv_policy);
        Scored {
            decoded: d,
            convergence,
        }
    });

    let checked = verify(
        scored,
        cfg.verify.clone(),
        cfg.keyring.clone(),
        cfg.sample_key.clone(),
        cfg.replay.clone(),
        cfg.chains.clone(),
        observer.clone(),
    );

    let policy = cfg.policy.clone();
    let version: Arc<str> = policy.version().into();
    let style = cfg.explain;
    let assessed = timed_map(checked, Stage::Assess, observer.clone(), move |e| {
        e.map(|c| assess_record(c, &policy, &version, style))
    });

    commit(
        assessed,
        cfg.run,
        cfg.chains.clone(),
        cfg.signing_key.clone(),
        observer,
    )
    .concat(dead.map(Output::DeadLetter))
}
