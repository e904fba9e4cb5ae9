//! The per-shard verifier (SPEC §2.2): replay guard, the three tiers' checks, and the open
//! batch of each tier, sealed by size or by time. A plain state machine driven by the
//! `verify` operator; it never looks at a clock itself (`now_ms` is passed in) and never
//! computes Merkle trees (the `commit` operator does, once value and ethics are known).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::replay::ReplayGuard;
use super::sampling::{is_sampled, sample_fraction, sample_size, wilson_lower_bound};
use super::signature::{observation_message, verify_batch, verify_one, Keyring, SigCheck};
use super::{BatchRef, Checks, DigestCheck, SignatureCheck, Tier, Verification};
use crate::record::{BatchEvent, Checked, Scored, Seal};

/// Verification settings (config section `[verification]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VerifyConfig {
    /// Leaves per batch before it seals; never padded.
    pub batch_size: usize,
    /// Longest a batch of the incremental or full tier stays open.
    pub max_wait_ms: u64,
    /// Longest a statistical-tier (real_time) batch stays open.
    pub real_time_max_wait_ms: u64,
    /// When true an unsigned observation is invalid (`required_missing`).
    pub require_signatures: bool,
    /// Ids remembered by the replay guard (split evenly over 256 buckets).
    pub replay_window_ids: usize,
    /// Event-time age beyond which a repeated id is no longer a replay; 0 = no age limit.
    pub replay_window_ms: i64,
    /// Statistical tier: confidence `c` of the sample-size rule.
    pub statistical_confidence: f64,
    /// Statistical tier: largest defect rate `ε` the sample must detect.
    pub statistical_max_defect_rate: f64,
    /// Statistical tier: seed of the deterministic sample (`blake3(seed ‖ id)`).
    pub statistical_seed: String,
}

impl Default for VerifyConfig {
    fn default() -> Self {
        VerifyConfig {
            batch_size: 64,
            max_wait_ms: 100,
            real_time_max_wait_ms: 5,
            require_signatures: false,
            replay_window_ids: 1 << 20,
            replay_window_ms: 0,
            statistical_confidence: 0.95,
            statistical_max_defect_rate: 0.10,
            statistical_seed: "bizra/sample/v1".into(),
        }
    }
}

impl VerifyConfig {
    fn max_wait(&self, tier: Tier) -> u64 {
        match tier {
            Tier::Statistical => self.real_time_max_wait_ms,
            _ => self.max_wait_ms,
        }
    }
}

/// One open batch of one tier.
struct OpenBatch {
    seq: u64,
    opened_ms: u64,
    len: u32,
    /// Statistical tier: signatures checked in this batch, and how many passed.
    sampled_total: u64,
    sampled_passed: u64,
    /// Statistical tier: a sampled failure switched the batch to checking everything.
    escalated: bool,
    /// Full tier: items waiting for the batch signature check at seal.
    held: Vec<Checked>,
}

/// The verifier of one shard (= one global worker).
pub struct ShardVerifier {
    shard: u32,
    cfg: VerifyConfig,
    keyring: Arc<Keyring>,
    replay: ReplayGuard,
    fraction: f64,
    next_seq: u64,
    open: [Option<OpenBatch>; 3],
}

const CONF_INCREMENTAL: f64 = 0.85;

impl ShardVerifier {
    pub fn new(shard: u32, cfg: VerifyConfig, keyring: Arc<Keyring>) -> Self {
        let n = sample_size(cfg.statistical_confidence, cfg.statistical_max_defect_rate);
        ShardVerifier {
            shard,
            fraction: sample_fraction(n, cfg.batch_size.max(1)),
            replay: ReplayGuard::new(cfg.replay_window_ids, cfg.replay_window_ms),
            cfg,
            keyring,
            next_seq: 0,
            open: [None, None, None],
        }
    }

    /// Entries held by the replay guard (bounded by config).
    pub fn replay_len(&self) -> usize {
        self.replay.len()
    }

    /// Verifies the records of one complete epoch. Records are taken in `position` order so
    /// that the replay guard sees every bucket's ids in input order on any worker count.
    pub fn process(&mut self, mut items: Vec<Scored>, now_ms: u64, out: &mut Vec<BatchEvent<Checked>>) {
        items.sort_by_key(|s| s.decoded.origin.position);
        let mut by_tier: [Vec<(Scored, Checks)>; 3] = [Vec::new(), Vec::new(), Vec::new()];
        for s in items {
            let d = &s.decoded;
            let replay = self.replay.check_and_insert(d.id_hash, d.origin.event_ms);
            let digest = match d.obs.digest {
                None => DigestCheck::Absent,
                Some(claim) if claim == d.obs.payload_sha256 => DigestCheck::Ok,
                Some(_) => DigestCheck::Mismatch,
            };
            let signature = match (&d.obs.signature, self.cfg.require_signatures) {
                (None, false) => SignatureCheck::Absent,
                (None, true) => SignatureCheck::RequiredMissing,
                // Decided by the tier below.
                (Some(_), _) => SignatureCheck::SampledOut,
            };
            let tier = Tier::for_urgency(d.obs.urgency);
            by_tier[tier as usize].push((
                s,
                Checks {
                    digest,
                    signature,
                    replay,
                },
            ));
        }
        let [stat, incr, full] = by_tier;
        self.statistical(stat, now_ms, out);
        for (s, checks) in incr {
            self.incremental(s, checks, now_ms, out);
        }
        for (s, checks) in full {
            self.full(s, checks, now_ms, out);
        }
    }

    /// Seals every batch whose wait has run out.
    pub fn seal_due(&mut self, now_ms: u64, out: &mut Vec<BatchEvent<Checked>>) {
        for tier in Tier::ALL {
            let due = self.open[tier as usize]
                .as_ref()
                .is_some_and(|b| now_ms.saturating_sub(b.opened_ms) >= self.cfg.max_wait(tier));
            if due {
                self.seal(tier, out);
            }
        }
    }

    /// Seals every open batch (end of input, shutdown).
    pub fn seal_all(&mut self, out: &mut Vec<BatchEvent<Checked>>) {
        for tier in Tier::ALL {
            if self.open[tier as usize].is_some() {
                self.seal(tier, out);
            }
        }
    }

    /// When the earliest open batch must seal, if any batch is open.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        Tier::ALL
            .iter()
            .filter_map(|&t| {
                self.open[t as usize]
                    .as_ref()
                    .map(|b| b.opened_ms + self.cfg.max_wait(t))
            })
            .min()
    }

    /// The seq of `tier`'s open batch, if one is open.
    pub fn open_seq(&self, tier: Tier) -> Option<u64> {
        self.open[tier as usize].as_ref().map(|b| b.seq)
    }

    /// True while any batch is open (its leaves are not yet committed).
    pub fn has_open(&self) -> bool {
        self.open.iter().any(Option::is_some)
    }

    fn batch(&mut self, tier: Tier, now_ms: u64) -> &mut OpenBatch {
        let next_seq = &mut self.next_seq;
        self.open[tier as usize].get_or_insert_with(|| {
            let seq = *next_seq;
            *next_seq += 1;
            OpenBatch {
                seq,
                opened_ms: now_ms,
                len: 0,
                sampled_total: 0,
                sampled_passed: 0,
                escalated: false,
                held: Vec::new(),
            }
        })
    }

    /// Reserves the next leaf of `tier`'s open batch.
    fn place(&mut self, tier: Tier, now_ms: u64) -> BatchRef {
        let shard = self.shard;
        let b = self.batch(tier, now_ms);
        let r = BatchRef {
            shard,
            seq: b.seq,
            leaf_index: b.len,
        };
        b.len += 1;
        r
    }

    fn seal_if_full(&mut self, tier: Tier, out: &mut Vec<BatchEvent<Checked>>) {
        let full = self.open[tier as usize]
            .as_ref()
            .is_some_and(|b| b.len as usize >= self.cfg.batch_size);
        if full {
            self.seal(tier, out);
        }
    }

    fn seal(&mut self, tier: Tier, out: &mut Vec<BatchEvent<Checked>>) {
        let Some(mut b) = self.open[tier as usize].take() else {
            return;
        };
        if tier == Tier::Full {
            self.verify_held(&mut b.held);
            out.extend(b.held.drain(..).map(BatchEvent::Item));
        }
        out.push(BatchEvent::Seal(Seal {
            shard: self.shard,
            tier,
            seq: b.seq,
            size: b.len,
        }));
    }

    fn check_signature(&self, s: &Scored) -> SignatureCheck {
        let d = &s.decoded;
        match &d.obs.signature {
            None => SignatureCheck::Absent,
            Some(sig) => {
                let msg = observation_message(&d.obs.id, &d.obs.payload_sha256);
                from_sig_check(verify_one(&self.keyring, &sig.key_id, &msg, &sig.sig))
            }
        }
    }

    fn statistical(&mut self, items: Vec<(Scored, Checks)>, now_ms: u64, out: &mut Vec<BatchEvent<Checked>>) {
        let mut rest = items.into_iter().peekable();
        while rest.peek().is_some() {
            let room = self.cfg.batch_size.max(1) - self.batch(Tier::Statistical, now_ms).len as usize;
            let mut chunk: Vec<(Scored, Checks)> = rest.by_ref().take(room).collect();
            // First the sampled signatures (all of them once escalated) ...
            let escalated = self.batch(Tier::Statistical, now_ms).escalated;
            let mut failed = false;
            let (mut total, mut passed) = (0, 0);
            for (s, c) in chunk.iter_mut() {
                if c.signature == SignatureCheck::SampledOut
                    && (escalated
                        || is_sampled(
                            self.cfg.statistical_seed.as_bytes(),
                            &s.decoded.obs.id,
                            self.fraction,
                        ))
                {
                    c.signature = self.check_signature(s);
                    total += 1;
                    passed += u64::from(c.signature == SignatureCheck::Ok);
                    failed |= c.signature.failed();
                }
            }
            // ... then, if any failed, every other signature of the chunk.
            if failed {
                for (s, c) in chunk.iter_mut() {
                    if c.signature == SignatureCheck::SampledOut {
                        c.signature = self.check_signature(s);
                        total += 1;
                        passed += u64::from(c.signature == SignatureCheck::Ok);
                    }
                }
            }
            let b = self.batch(Tier::Statistical, now_ms);
            b.escalated |= failed;
            b.sampled_total += total;
            b.sampled_passed += passed;
            let wilson = wilson_lower_bound(b.sampled_passed, b.sampled_total);
            for (s, checks) in chunk {
                let batch = self.place(Tier::Statistical, now_ms);
                let unverified = checks.signature == SignatureCheck::SampledOut;
                let v = verification(Tier::Statistical, checks, if unverified { wilson } else { 1.0 });
                out.push(BatchEvent::Item(Checked {
                    scored: s,
                    verification: v,
                    batch,
                }));
            }
            self.seal_if_full(Tier::Statistical, out);
        }
    }

    fn incremental(
        &mut self,
        s: Scored,
        mut checks: Checks,
        now_ms: u64,
        out: &mut Vec<BatchEvent<Checked>>,
    ) {
        if checks.signature == SignatureCheck::SampledOut {
            checks.signature = self.check_signature(&s);
        }
        let batch = self.place(Tier::Incremental, now_ms);
        out.push(BatchEvent::Item(Checked {
            scored: s,
            verification: verification(Tier::Incremental, checks, CONF_INCREMENTAL),
            batch,
        }));
        self.seal_if_full(Tier::Incremental, out);
    }

    fn full(&mut self, s: Scored, checks: Checks, now_ms: u64, out: &mut Vec<BatchEvent<Checked>>) {
        let batch = self.place(Tier::Full, now_ms);
        // Signature outcome is filled in by `verify_held` at seal.
        let pending = Checked {
            scored: s,
            verification: verification(Tier::Full, checks, 1.0),
            batch,
        };
        self.batch(Tier::Full, now_ms).held.push(pending);
        self.seal_if_full(Tier::Full, out);
    }

    /// Batch-verifies the held full-tier signatures and settles each item's verification.
    fn verify_held(&self, held: &mut [Checked]) {
        let mut idx = Vec::new();
        let mut msgs = Vec::new();
        let mut keys = Vec::new();
        for (i, c) in held.iter_mut().enumerate() {
            if c.verification.checks.signature != SignatureCheck::SampledOut {
                continue;
            }
            let obs = &c.scored.decoded.obs;
            let sig = obs.signature.as_ref().expect("pending signature is present");
            match self.keyring.get(&sig.key_id) {
                None => c.verification.checks.signature = SignatureCheck::UnknownKey,
                Some(k) => {
                    idx.push(i);
                    keys.push(*k);
                    msgs.push(observation_message(&obs.id, &obs.payload_sha256));
                }
            }
        }
        if !idx.is_empty() {
            let batch: Vec<_> = idx
                .iter()
                .enumerate()
                .map(|(j, &i)| {
                    let sig = &held[i]
                        .scored
                        .decoded
                        .obs
                        .signature
                        .as_ref()
                        .expect("present")
                        .sig;
                    (&keys[j], msgs[j].as_slice(), sig)
                })
                .collect();
            let ok = verify_batch(&batch);
            drop(batch);
            for (j, &i) in idx.iter().enumerate() {
                held[i].verification.checks.signature = if ok[j] {
                    SignatureCheck::Ok
                } else {
                    SignatureCheck::Bad
                };
            }
        }
        for c in held.iter_mut() {
            c.verification = verification(Tier::Full, c.verification.checks, 1.0);
        }
    }
}

fn from_sig_check(c: SigCheck) -> SignatureCheck {
    match c {
        SigCheck::Ok => SignatureCheck::Ok,
        SigCheck::Bad => SignatureCheck::Bad,
        SigCheck::UnknownKey => SignatureCheck::UnknownKey,
    }
}

/// Builds the verification object: invalid → confidence 0, else the tier's confidence.
fn verification(tier: Tier, checks: Checks, confidence_if_valid: f64) -> Verification {
    let reason = checks.reason();
    let valid = reason.is_none();
    Verification {
        tier,
        valid,
        confidence: if valid { confidence_if_valid } else { 0.0 },
        checks,
        reason: reason.map(str::to_owned),
    }
}
