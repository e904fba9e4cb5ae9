//! The per-shard verifier (SPEC §2.2): replay guard, the three tiers' checks, and the open
//! batch of each tier, sealed by size or by time. A plain state machine driven by the
//! `verify` operator; it never looks at a clock itself (`now_ms` is passed in), never
//! computes Merkle trees (the `commit` operator does, once value and ethics are known) and
//! does no I/O (the replay guard's changes leave as [`ReplayRecord`]s for the runtime to
//! persist).
//!
//! The statistical tier checks at once only a keyed sample of the Ed25519 signatures of each
//! batch (the first n = ⌈ln(1−c)/ln(1−ε)⌉ signed items of the batch, chosen within each chunk
//! by keyed rank, [`chunk_quota`]), and every other one when the batch seals: verdicts leave
//! at once, and a signature the later check finds bad becomes a [`Rollback`] leaf of the same
//! batch. Nothing downstream passes the batch's epoch before the seal, so offsets are committed
//! only once those checks are done.

use std::sync::Arc;

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

use super::replay::{fingerprint, provenance, ReplayGuard, Sighting, BUCKETS};
use super::replay_log::ReplayRecord;
use super::sampling::{chunk_quota, least_ranked, sample_size, wilson_lower_bound, SampleKey};
use super::signature::{observation_message, r_is_canonical, s_is_canonical, verify_batch, Keyring};
use super::{BatchRef, Checks, DigestCheck, SignatureCheck, Tier, Verification};
use crate::observation::{InputRef, SignatureRef, Text};
use crate::record::{BatchEvent, Checked, Scored, Seal};
use crate::rollback::{Reason, Rollback};

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
    /// Arrival-time age beyond which a repeated id is no longer a replay; 0 = no age limit.
    pub replay_window_ms: i64,
    /// Statistical tier: confidence `c` of the sample-size rule.
    pub statistical_confidence: f64,
    /// Statistical tier: largest defect rate `ε` the sample must detect.
    pub statistical_max_defect_rate: f64,
    /// The per-deployment secret of the statistical sample and the replay guard's buckets
    /// (made by `bizra keygen --sampling`); empty: a random key for this run, logged.
    pub sampling_key_path: String,
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
            sampling_key_path: String::new(),
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

/// A statistical-tier item emitted `sampled_out`, waiting for its batch's seal to be checked.
struct Deferred {
    id: Text,
    input: Option<InputRef>,
    payload_sha256: [u8; 32],
    key: VerifyingKey,
    sig: [u8; 64],
    batch: BatchRef,
    /// When its verdict was emitted (the verifier's clock), for the check's lag.
    emitted_ms: u64,
}

/// One open batch of one tier.
struct OpenBatch {
    seq: u64,
    opened_ms: u64,
    len: u32,
    /// Statistical tier: signed items placed whose signature needed an Ed25519 check, and how
    /// many of them were checked at once (the quota counts these).
    signed: usize,
    checked: usize,
    /// Statistical tier: signatures checked at once in this batch, and how many passed.
    sampled_total: u64,
    sampled_passed: u64,
    /// Statistical tier: a failed check switched the batch to checking everything at once.
    escalated: bool,
    /// Full tier: items waiting for the batch signature check at seal.
    held: Vec<Checked>,
    /// Statistical tier: items emitted `sampled_out`, checked at seal.
    deferred: Vec<Deferred>,
}

/// The verifier of one shard (= one global worker).
pub struct ShardVerifier {
    shard: u32,
    cfg: VerifyConfig,
    keyring: Arc<Keyring>,
    key: SampleKey,
    replay: ReplayGuard,
    /// n of the sample-size rule.
    target: usize,
    next_seq: u64,
    open: [Option<OpenBatch>; 3],
    /// The latest `now_ms` seen, for how long a sealed batch stayed open.
    now_ms: u64,
    /// Lags (ms) of the deferred checks made since the last [`ShardVerifier::take_check_lags`].
    check_lags: Vec<u64>,
    /// Persistence of the replay guard: the records not yet handed out.
    replay_out: Vec<ReplayRecord>,
}

const CONF_INCREMENTAL: f64 = 0.85;

/// The replay state to start from, when it is persisted (Kafka mode, `--data-dir`): each
/// bucket's sightings, oldest first. Every worker takes the buckets it owns.
pub type Restored = Arc<Vec<Vec<Sighting>>>;

impl ShardVerifier {
    /// A verifier for shard `shard` of `peers`. With `restored`, the replay guard persists:
    /// it starts from the buckets this shard owns (bucket `b` lives on worker `b mod peers`),
    /// and writes them whole at once (see [`ShardVerifier::take_replay_records`]).
    pub fn new(
        shard: u32,
        peers: usize,
        cfg: VerifyConfig,
        keyring: Arc<Keyring>,
        key: SampleKey,
        restored: Option<&Restored>,
    ) -> Self {
        let mut replay = ReplayGuard::new(cfg.replay_window_ids, cfg.replay_window_ms);
        let mut replay_out = Vec::new();
        if let Some(state) = restored {
            replay = replay.with_journal();
            for b in (0..BUCKETS).filter(|b| b % peers.max(1) == shard as usize) {
                let b = b as u8;
                if let Some(w) = state.get(usize::from(b)) {
                    replay.restore_bucket(b, w);
                }
                replay_out.extend(ReplayRecord::snapshot(
                    key.id(),
                    shard,
                    b,
                    &replay.bucket_sightings(b),
                ));
            }
        }
        ShardVerifier {
            shard,
            target: sample_size(cfg.statistical_confidence, cfg.statistical_max_defect_rate),
            replay,
            cfg,
            keyring,
            key,
            next_seq: 0,
            open: [None, None, None],
            now_ms: 0,
            check_lags: Vec::new(),
            replay_out,
        }
    }

    /// Numbers this shard's batches from `seq` on: the seq after the last durable commitment
    /// of its chain.
    pub fn starting_at(mut self, seq: u64) -> Self {
        self.next_seq = seq;
        self
    }

    /// Entries held by the replay guard (bounded by config).
    pub fn replay_len(&self) -> usize {
        self.replay.len()
    }

    /// Statistical-tier items emitted `sampled_out` whose check waits for their batch's seal.
    pub fn deferred_len(&self) -> usize {
        self.open[Tier::Statistical as usize]
            .as_ref()
            .map_or(0, |b| b.deferred.len())
    }

    /// The lags (ms from emission to check) of the deferred checks made since the last call.
    pub fn take_check_lags(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.check_lags)
    }

    /// The replay-log records made since the last call: with persistence on, the whole window
    /// of each owned bucket at start, then after each epoch its new sightings and any bucket
    /// due to be written whole. They must be durable before the epoch's input is committed.
    pub fn take_replay_records(&mut self) -> Vec<ReplayRecord> {
        std::mem::take(&mut self.replay_out)
    }

    /// Verifies the records of one complete epoch. Records are taken in `position` order so
    /// that the replay guard sees every bucket's ids in input order on any worker count.
    pub fn process(&mut self, mut items: Vec<Scored>, now_ms: u64, out: &mut Vec<BatchEvent<Checked>>) {
        self.now_ms = self.now_ms.max(now_ms);
        items.sort_by_key(|s| s.decoded.origin.position);
        let mut by_tier: [Vec<(Scored, Checks)>; 3] = [Vec::new(), Vec::new(), Vec::new()];
        for s in items {
            let d = &s.decoded;
            let fp = fingerprint(d.id_hash);
            let tag = provenance(d.origin.input.as_ref(), d.origin.position, &d.obs.payload_sha256);
            // The age test uses the arrival time: the sender picks `timestamp`, not this.
            let replay = self.replay.check(d.bucket, fp, tag, d.origin.arrival_ms);
            let digest = match d.obs.digest {
                None => DigestCheck::Absent,
                Some(claim) if claim == d.obs.payload_sha256 => DigestCheck::Ok,
                Some(_) => DigestCheck::Mismatch,
            };
            let signature = match (&d.obs.signature, self.cfg.require_signatures) {
                (None, false) => SignatureCheck::Absent,
                (None, true) => SignatureCheck::RequiredMissing,
                // The cheap checks here, on every item of every tier; the Ed25519 check, if
                // these pass, by the tier below (`SampledOut` until then).
                (Some(sig), _) => cheap_signature_check(&self.keyring, sig),
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
        let [stat, mut incr, full] = by_tier;
        self.statistical(stat, now_ms, out);
        // The incremental tier checks every signature at once; its verdicts leave together at
        // the end of this call, so checking them as batches costs no latency.
        let pending: Vec<usize> = (0..incr.len())
            .filter(|&i| incr[i].1.signature == SignatureCheck::SampledOut)
            .collect();
        for chunk in pending.chunks(self.cfg.batch_size.max(1)) {
            self.verify_now(&mut incr, chunk);
        }
        for (s, checks) in incr {
            self.incremental(s, checks, now_ms, out);
        }
        for (s, checks) in full {
            self.full(s, checks, now_ms, out);
        }
        self.log_replay_changes();
    }

    /// With persistence on: the epoch's new sightings, then the buckets due to be written whole.
    fn log_replay_changes(&mut self) {
        let new = self.replay.drain_journal();
        if !new.is_empty() {
            self.replay_out
                .extend(ReplayRecord::deltas(self.key.id(), self.shard, new));
        }
        for b in self.replay.due_snapshots() {
            let window = self.replay.bucket_sightings(b);
            self.replay_out
                .extend(ReplayRecord::snapshot(self.key.id(), self.shard, b, &window));
        }
    }

    /// Seals every batch whose wait has run out.
    pub fn seal_due(&mut self, now_ms: u64, out: &mut Vec<BatchEvent<Checked>>) {
        self.now_ms = self.now_ms.max(now_ms);
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
                signed: 0,
                checked: 0,
                sampled_total: 0,
                sampled_passed: 0,
                escalated: false,
                held: Vec::new(),
                deferred: Vec::new(),
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
        match tier {
            Tier::Full => {
                self.verify_held(&mut b.held);
                out.extend(b.held.drain(..).map(BatchEvent::Item));
            }
            Tier::Statistical => self.check_deferred(&mut b, out),
            Tier::Incremental => {}
        }
        out.push(BatchEvent::Seal(Seal {
            shard: self.shard,
            tier,
            seq: b.seq,
            size: b.len,
            open_ms: self.now_ms.saturating_sub(b.opened_ms),
        }));
    }

    /// The statistical tier's later check: every signature the batch emitted `sampled_out`,
    /// batch-verified; each bad one becomes a rollback leaf appended to the batch.
    fn check_deferred(&mut self, b: &mut OpenBatch, out: &mut Vec<BatchEvent<Checked>>) {
        if b.deferred.is_empty() {
            return;
        }
        let msgs: Vec<Vec<u8>> = b
            .deferred
            .iter()
            .map(|d| observation_message(&d.id, &d.payload_sha256))
            .collect();
        let items: Vec<_> = b
            .deferred
            .iter()
            .zip(&msgs)
            .map(|(d, m)| (&d.key, m.as_slice(), &d.sig))
            .collect();
        let ok = verify_batch(&items);
        drop(items);
        let now = self.now_ms;
        for (d, ok) in b.deferred.drain(..).zip(ok) {
            self.check_lags.push(now.saturating_sub(d.emitted_ms));
            if ok {
                continue;
            }
            let batch = BatchRef {
                shard: self.shard,
                seq: b.seq,
                leaf_index: b.len,
            };
            b.len += 1;
            out.push(BatchEvent::Rollback(Box::new(Rollback {
                id: d.id,
                input: d.input,
                reason: Reason::SignatureBad,
                verdict_batch: d.batch,
                payload_digest: crate::verification::sha256_ref(&d.payload_sha256),
                batch,
                proof: None,
                at: String::new(),
            })));
        }
    }

    /// Ed25519-verifies the signatures of `items` at `idx` together (they passed the cheap
    /// checks, so their keys are known) and settles each as `Ok` or `Bad`; returns how many
    /// passed.
    fn verify_now(&self, items: &mut [(Scored, Checks)], idx: &[usize]) -> u64 {
        if idx.is_empty() {
            return 0;
        }
        let parts: Vec<(VerifyingKey, Vec<u8>, [u8; 64])> = idx
            .iter()
            .map(|&i| {
                let obs = &items[i].0.decoded.obs;
                let sig = obs.signature.as_ref().expect("a sampled_out item is signed");
                let key = *self
                    .keyring
                    .get(&sig.key_id)
                    .expect("the cheap check found the key");
                (key, observation_message(&obs.id, &obs.payload_sha256), sig.sig)
            })
            .collect();
        let batch: Vec<_> = parts.iter().map(|(k, m, s)| (k, m.as_slice(), s)).collect();
        let ok = verify_batch(&batch);
        let mut passed = 0;
        for (&i, ok) in idx.iter().zip(ok) {
            items[i].1.signature = if ok {
                SignatureCheck::Ok
            } else {
                SignatureCheck::Bad
            };
            passed += u64::from(ok);
        }
        passed
    }

    /// Which of a chunk's `pending` items (signed, still to be Ed25519-checked) the open
    /// statistical batch checks at once: its quota's share by keyed rank, or all of them
    /// once the batch has escalated.
    fn sample(&mut self, chunk: &[(Scored, Checks)], pending: &[usize], now_ms: u64) -> Vec<usize> {
        let b = self.batch(Tier::Statistical, now_ms);
        let (signed, checked, escalated) = (b.signed, b.checked, b.escalated);
        if escalated {
            return pending.to_vec();
        }
        let quota = chunk_quota(self.target, signed, checked, pending.len());
        let ranks: Vec<u64> = pending
            .iter()
            .map(|&i| self.key.rank(&chunk[i].0.decoded.obs.id))
            .collect();
        least_ranked(&ranks, quota)
            .into_iter()
            .map(|j| pending[j])
            .collect()
    }

    /// What the later check of an item emitted `sampled_out` at `batch` needs.
    fn deferred(&self, s: &Scored, batch: BatchRef, now_ms: u64) -> Deferred {
        let obs = &s.decoded.obs;
        let sig = obs.signature.as_ref().expect("a sampled_out item is signed");
        Deferred {
            id: obs.id.clone(),
            input: s.decoded.origin.input.clone(),
            payload_sha256: obs.payload_sha256,
            key: *self
                .keyring
                .get(&sig.key_id)
                .expect("the cheap check found the key"),
            sig: sig.sig,
            batch,
            emitted_ms: now_ms,
        }
    }

    fn statistical(&mut self, items: Vec<(Scored, Checks)>, now_ms: u64, out: &mut Vec<BatchEvent<Checked>>) {
        let mut rest = items.into_iter().peekable();
        while rest.peek().is_some() {
            let room = self.cfg.batch_size.max(1) - self.batch(Tier::Statistical, now_ms).len as usize;
            let mut chunk: Vec<(Scored, Checks)> = rest.by_ref().take(room).collect();
            let pending: Vec<usize> = (0..chunk.len())
                .filter(|&i| chunk[i].1.signature == SignatureCheck::SampledOut)
                .collect();
            let now = self.sample(&chunk, &pending, now_ms);
            let mut total = now.len() as u64;
            let mut passed = self.verify_now(&mut chunk, &now);
            // A failure escalates: the rest of the chunk now, and the rest of the batch.
            let failed = passed < total;
            if failed {
                let rest: Vec<usize> = pending
                    .iter()
                    .copied()
                    .filter(|&i| chunk[i].1.signature == SignatureCheck::SampledOut)
                    .collect();
                total += rest.len() as u64;
                passed += self.verify_now(&mut chunk, &rest);
            }
            let b = self.batch(Tier::Statistical, now_ms);
            b.signed += pending.len();
            b.checked += total as usize;
            b.escalated |= failed;
            b.sampled_total += total;
            b.sampled_passed += passed;
            let wilson = wilson_lower_bound(b.sampled_passed, b.sampled_total);
            for (s, checks) in chunk {
                let batch = self.place(Tier::Statistical, now_ms);
                let unverified = checks.signature == SignatureCheck::SampledOut;
                if unverified {
                    let deferred = self.deferred(&s, batch, now_ms);
                    self.batch(Tier::Statistical, now_ms).deferred.push(deferred);
                }
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

    fn incremental(&mut self, s: Scored, checks: Checks, now_ms: u64, out: &mut Vec<BatchEvent<Checked>>) {
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

/// The signature checks that cost no Ed25519 verification: a key id not in the keyring
/// (`UnknownKey`), and an `s` that is not reduced mod ℓ or an `R` that is not a canonical
/// point encoding (`Bad`: it can never verify). Made on every signed item in every tier, so
/// that an item the statistical tier leaves unsampled cannot pass with any of them.
/// `SampledOut` means the signature still has to be verified.
fn cheap_signature_check(keyring: &Keyring, sig: &SignatureRef) -> SignatureCheck {
    if keyring.get(&sig.key_id).is_none() {
        SignatureCheck::UnknownKey
    } else if !s_is_canonical(&sig.sig) || !r_is_canonical(&sig.sig) {
        SignatureCheck::Bad
    } else {
        SignatureCheck::SampledOut
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

#[cfg(test)]
mod tests {
    use ed25519_dalek::{Signer, SigningKey};
    use sha2::{Digest, Sha256};

    use super::*;
    use crate::convergence::{Convergence, Quality};
    use crate::observation::{EthicsContext, Observation, Origin, SignatureRef, Urgency};
    use crate::record::Decoded;
    use crate::verification::replay::id_hash;
    use crate::verification::signature::key_id;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[3; 32])
    }

    fn sample_key() -> SampleKey {
        SampleKey::from_secret(&[9; 32])
    }

    fn keyring() -> Arc<Keyring> {
        let mut k = Keyring::new();
        k.insert(key_id(&key().verifying_key()), key().verifying_key());
        Arc::new(k)
    }

    fn verifier(cfg: VerifyConfig) -> ShardVerifier {
        ShardVerifier::new(0, 1, cfg, keyring(), sample_key(), None)
    }

    /// An observation `id` at input position `pos`; `sig`: None, Some(true) good, Some(false) bad.
    fn scored(id: &str, pos: u64, urgency: Urgency, sig: Option<bool>) -> Scored {
        let payload: [u8; 32] = Sha256::digest(id.as_bytes()).into();
        let signature = sig.map(|good| {
            let mut s = key().sign(&observation_message(id, &payload)).to_bytes();
            if !good {
                s[3] ^= 1;
            }
            SignatureRef {
                key_id: key_id(&key().verifying_key()),
                sig: s,
            }
        });
        let h = id_hash(id);
        Scored {
            decoded: Box::new(Decoded {
                obs: Observation {
                    id: id.into(),
                    payload_sha256: payload,
                    urgency,
                    context: EthicsContext::default(),
                    features: None,
                    timestamp_ms: None,
                    source: None,
                    attestation: None,
                    digest: None,
                    signature,
                },
                origin: Origin {
                    input: None,
                    position: pos,
                    ingest_ms: 0,
                    event_ms: 0,
                    future_dated: false,
                    arrival_ms: 0,
                },
                id_hash: h,
                bucket: sample_key().bucket(fingerprint(h)),
            }),
            convergence: Convergence {
                clarity: 0.5,
                mutual_information: 0.5,
                entropy: 0.5,
                synergy: 1.0,
                quantization_error: 0.0,
                quality: Quality::Optimal,
            },
        }
    }

    fn items(events: &[BatchEvent<Checked>]) -> Vec<&Checked> {
        events
            .iter()
            .filter_map(|e| match e {
                BatchEvent::Item(c) => Some(c),
                _ => None,
            })
            .collect()
    }

    fn seals(events: &[BatchEvent<Checked>]) -> Vec<Seal> {
        events
            .iter()
            .filter_map(|e| match e {
                BatchEvent::Seal(s) => Some(*s),
                _ => None,
            })
            .collect()
    }

    fn rollbacks(events: &[BatchEvent<Checked>]) -> Vec<&Rollback> {
        events
            .iter()
            .filter_map(|e| match e {
                BatchEvent::Rollback(r) => Some(&**r),
                _ => None,
            })
            .collect()
    }

    fn cfg(batch_size: usize) -> VerifyConfig {
        VerifyConfig {
            batch_size,
            ..VerifyConfig::default()
        }
    }

    fn sigs(events: &[BatchEvent<Checked>]) -> Vec<SignatureCheck> {
        items(events)
            .iter()
            .map(|c| c.verification.checks.signature)
            .collect()
    }

    #[test]
    fn full_tier_waits_for_the_seal_and_batch_checks_signatures() {
        let mut v = ShardVerifier::new(7, 8, cfg(4), keyring(), sample_key(), None);
        let mut out = Vec::new();
        let batch: Vec<_> = (0..3)
            .map(|i| scored(&format!("f{i}"), i, Urgency::Batch, Some(i != 1)))
            .collect();
        v.process(batch, 0, &mut out);
        assert!(out.is_empty(), "full-tier verdicts wait for their batch");
        v.process(vec![scored("f3", 3, Urgency::Deferred, None)], 1, &mut out);
        let got = items(&out);
        assert_eq!(got.len(), 4);
        assert_eq!(
            seals(&out),
            vec![Seal {
                shard: 7,
                tier: Tier::Full,
                seq: 0,
                size: 4,
                open_ms: 1
            }]
        );
        assert!(
            matches!(out.last(), Some(BatchEvent::Seal(_))),
            "the seal comes after its items"
        );
        use SignatureCheck::*;
        assert_eq!(sigs(&out), [Ok, Bad, Ok, Absent]);
        assert_eq!(got[1].verification.confidence, 0.0);
        assert_eq!(got[1].verification.reason.as_deref(), Some("bad_signature"));
        assert_eq!(got[0].verification.confidence, 1.0);
        let idx: Vec<_> = got.iter().map(|c| (c.batch.seq, c.batch.leaf_index)).collect();
        assert_eq!(idx, [(0, 0), (0, 1), (0, 2), (0, 3)]);
    }

    #[test]
    fn incremental_verdicts_leave_at_once_and_seal_by_time() {
        let mut v = verifier(cfg(64));
        let mut out = Vec::new();
        v.process(
            vec![scored("a", 0, Urgency::NearRealTime, Some(true))],
            1000,
            &mut out,
        );
        let got = items(&out);
        assert_eq!(got[0].verification.confidence, 0.85);
        assert_eq!(got[0].verification.checks.signature, SignatureCheck::Ok);
        assert_eq!(v.next_deadline_ms(), Some(1100));
        out.clear();
        v.seal_due(1099, &mut out);
        assert!(out.is_empty());
        v.seal_due(1100, &mut out);
        assert_eq!(
            seals(&out),
            vec![Seal {
                shard: 0,
                tier: Tier::Incremental,
                seq: 0,
                size: 1,
                open_ms: 100
            }]
        );
        assert!(!v.has_open());
    }

    #[test]
    fn tiers_share_one_seq_counter_per_shard() {
        let mut v = verifier(cfg(64));
        let mut out = Vec::new();
        let epoch = vec![
            scored("s", 0, Urgency::RealTime, None),
            scored("i", 1, Urgency::NearRealTime, None),
            scored("f", 2, Urgency::Batch, None),
        ];
        v.process(epoch, 0, &mut out);
        v.seal_all(&mut out);
        let mut seqs: Vec<_> = seals(&out).iter().map(|s| (s.tier, s.seq)).collect();
        seqs.sort();
        assert_eq!(
            seqs,
            [(Tier::Statistical, 0), (Tier::Incremental, 1), (Tier::Full, 2)]
        );
    }

    #[test]
    fn a_repeated_id_is_a_replay_in_input_order() {
        let mut v = verifier(cfg(64));
        let mut out = Vec::new();
        // Delivered out of order within the epoch: position decides which one is first.
        v.process(
            vec![
                scored("dup", 5, Urgency::NearRealTime, None),
                scored("dup", 2, Urgency::NearRealTime, None),
            ],
            0,
            &mut out,
        );
        let got = items(&out);
        assert_eq!(got[0].scored.decoded.origin.position, 2);
        assert!(got[0].verification.valid);
        assert!(got[1].verification.checks.replay);
        assert_eq!(got[1].verification.reason.as_deref(), Some("replay"));
    }

    /// n = 29 for the defaults: of a batch filled in one epoch, exactly 29 signatures are
    /// checked at once, and which ones depends on the secret.
    #[test]
    fn a_full_batch_checks_exactly_n_signatures_at_once_chosen_by_the_secret() {
        let epoch = || -> Vec<Scored> {
            (0..64)
                .map(|i| scored(&format!("st{i}"), i, Urgency::RealTime, Some(true)))
                .collect()
        };
        let checked_ids = |secret: u8| {
            let mut v = ShardVerifier::new(
                0,
                1,
                cfg(64),
                keyring(),
                SampleKey::from_secret(&[secret; 32]),
                None,
            );
            let mut out = Vec::new();
            v.process(epoch(), 0, &mut out);
            let got = items(&out);
            let wilson = wilson_lower_bound(29, 29);
            for c in &got {
                let want = if c.verification.checks.signature == SignatureCheck::Ok {
                    1.0
                } else {
                    wilson
                };
                assert_eq!(c.verification.confidence, want);
            }
            got.iter()
                .filter(|c| c.verification.checks.signature == SignatureCheck::Ok)
                .map(|c| c.scored.decoded.obs.id.to_string())
                .collect::<Vec<_>>()
        };
        let a = checked_ids(1);
        let b = checked_ids(2);
        assert_eq!(a.len(), 29);
        assert_eq!(b.len(), 29);
        assert_ne!(a, b, "another secret, another sample");
        assert_eq!(a, checked_ids(1), "the same secret, the same sample");
    }

    #[test]
    fn a_batch_growing_in_small_chunks_checks_every_signature_until_n() {
        let mut v = verifier(cfg(64));
        let mut out = Vec::new();
        for i in 0..40u64 {
            v.process(
                vec![scored(&format!("s{i}"), i, Urgency::RealTime, Some(true))],
                i,
                &mut out,
            );
        }
        let s = sigs(&out);
        assert!(s[..29].iter().all(|c| *c == SignatureCheck::Ok), "{s:?}");
        assert!(s[29..].iter().all(|c| *c == SignatureCheck::SampledOut), "{s:?}");
        // A batch of 10 that seals by time has had all 10 checked: min(N, n).
        let mut v = verifier(cfg(64));
        let mut out = Vec::new();
        let ten: Vec<_> = (0..10)
            .map(|i| scored(&format!("t{i}"), i, Urgency::RealTime, Some(true)))
            .collect();
        v.process(ten, 0, &mut out);
        assert!(sigs(&out).iter().all(|c| *c == SignatureCheck::Ok));
    }

    #[test]
    fn a_failed_check_escalates_the_rest_of_the_chunk_and_the_batch() {
        // With n = 1 the sample is one item; make the sampled one bad.
        let c = VerifyConfig {
            statistical_confidence: 0.1,
            statistical_max_defect_rate: 0.5,
            ..cfg(64)
        };
        assert_eq!(sample_size(0.1, 0.5), 1);
        let ids: Vec<String> = (0..8).map(|i| format!("e{i}")).collect();
        let first = ids.iter().min_by_key(|id| sample_key().rank(id)).unwrap().clone();
        let mut v = verifier(c);
        let mut out = Vec::new();
        let epoch = ids
            .iter()
            .enumerate()
            .map(|(p, id)| scored(id, p as u64, Urgency::RealTime, Some(*id != first && p != 3)))
            .collect();
        v.process(epoch, 0, &mut out);
        let got = items(&out);
        for c in &got {
            let id = &c.scored.decoded.obs.id;
            let bad = *id == first || c.scored.decoded.origin.position == 3;
            let want = if bad {
                SignatureCheck::Bad
            } else {
                SignatureCheck::Ok
            };
            assert_eq!(c.verification.checks.signature, want, "{id}");
        }
        out.clear();
        v.process(
            vec![scored("later", 9, Urgency::RealTime, Some(true))],
            1,
            &mut out,
        );
        assert_eq!(
            sigs(&out),
            [SignatureCheck::Ok],
            "later chunks of the batch are checked too"
        );
    }

    /// Forged items the sample does not reach are emitted `sampled_out` and valid, then
    /// rolled back when the batch seals: each by its own leaf after the verdicts.
    #[test]
    fn every_sampled_out_signature_is_checked_at_seal_and_a_bad_one_is_rolled_back() {
        let ids: Vec<String> = (0..64).map(|i| format!("r{i}")).collect();
        // The five ids the keyed sample ranks last: it checks the 29 first.
        let mut by_rank = ids.clone();
        by_rank.sort_by_key(|id| sample_key().rank(id));
        let forged: Vec<&String> = by_rank[59..].iter().collect();
        let mut v = verifier(cfg(64));
        let mut out = Vec::new();
        let epoch: Vec<_> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| scored(id, i as u64, Urgency::RealTime, Some(!forged.contains(&id))))
            .collect();
        v.process(epoch, 0, &mut out);
        let got = items(&out);
        let emitted: Vec<_> = got
            .iter()
            .filter(|c| forged.contains(&&c.scored.decoded.obs.id.to_string()))
            .map(|c| {
                assert_eq!(c.verification.checks.signature, SignatureCheck::SampledOut);
                assert!(c.verification.valid, "provisionally valid: the sample missed it");
                (c.scored.decoded.obs.id.clone(), c.batch)
            })
            .collect();
        assert_eq!(emitted.len(), 5);
        // The batch filled and sealed in the same call: its rollbacks are already out.
        let rb = rollbacks(&out);
        assert_eq!(rb.len(), 5);
        let seal = seals(&out)[0];
        assert_eq!(seal.size, 64 + 5, "the rollback leaves are in the batch");
        for (k, (r, (id, batch))) in rb.iter().zip(&emitted).enumerate() {
            assert_eq!(&r.id, id);
            assert_eq!(r.verdict_batch, *batch);
            assert_eq!(r.batch.seq, batch.seq);
            assert_eq!(r.batch.leaf_index, 64 + k as u32);
            assert_eq!(r.reason, Reason::SignatureBad);
            assert_eq!(
                r.leaf(),
                Some(crate::rollback::leaf_hash(
                    id,
                    &Sha256::digest(id.as_bytes()).into(),
                    Reason::SignatureBad
                ))
            );
        }
        assert!(
            matches!(out.last(), Some(BatchEvent::Seal(_))),
            "rollbacks come before the seal"
        );
        assert_eq!(
            v.take_check_lags().len(),
            64 - 29,
            "every sampled_out signature was checked"
        );
        assert_eq!(v.deferred_len(), 0);
    }

    /// What is wrong with a signature in [`forged`].
    #[derive(Clone, Copy)]
    enum Forgery {
        /// Under a key id that is not in the keyring.
        UnknownKey,
        /// Its `s` half replaced by ℓ (not reduced).
        Unreduced,
        /// Its `R` half 32 bytes 0xff (y ≥ p: no canonical encoding).
        NonCanonicalR,
    }

    /// `scored` with a signature that can never verify, in the way `how` says.
    fn forged(id: &str, pos: u64, urgency: Urgency, how: Forgery) -> Scored {
        let mut s = scored(id, pos, urgency, Some(true));
        let sig = s.decoded.obs.signature.as_mut().unwrap();
        match how {
            Forgery::UnknownKey => sig.key_id = "00000000deadbeef".into(),
            Forgery::Unreduced => sig.sig[32..].copy_from_slice(&crate::verification::signature::ORDER_LE),
            Forgery::NonCanonicalR => sig.sig[..32].copy_from_slice(&[0xff; 32]),
        }
        s
    }

    #[test]
    fn unknown_keys_and_malformed_signatures_are_invalid_in_every_tier_sampled_or_not() {
        // A sample of nothing: only the cheap checks run at once in the statistical tier.
        let c = VerifyConfig {
            statistical_confidence: 0.0,
            ..cfg(64)
        };
        for urgency in [Urgency::RealTime, Urgency::NearRealTime, Urgency::Batch] {
            let mut v = verifier(c.clone());
            let mut out = Vec::new();
            let epoch = vec![
                scored("good", 0, urgency, Some(true)),
                forged("unknown", 1, urgency, Forgery::UnknownKey),
                forged("unreduced", 2, urgency, Forgery::Unreduced),
                forged("non-canonical-r", 3, urgency, Forgery::NonCanonicalR),
            ];
            v.process(epoch, 0, &mut out);
            v.seal_all(&mut out);
            let got: Vec<_> = items(&out)
                .iter()
                .map(|c| (c.verification.checks.signature, c.verification.valid))
                .collect();
            let good = if urgency == Urgency::RealTime {
                SignatureCheck::SampledOut
            } else {
                SignatureCheck::Ok
            };
            assert_eq!(
                got,
                [
                    (good, true),
                    (SignatureCheck::UnknownKey, false),
                    (SignatureCheck::Bad, false),
                    (SignatureCheck::Bad, false)
                ],
                "{urgency:?}"
            );
            assert!(rollbacks(&out).is_empty(), "the good one passes its later check");
        }
    }

    #[test]
    fn the_replay_age_test_uses_the_arrival_time_not_the_senders_timestamp() {
        let c = VerifyConfig {
            replay_window_ms: 1000,
            ..cfg(64)
        };
        let at = |pos: u64, event_ms: i64, arrival_ms: i64| {
            let mut s = scored("same-id", pos, Urgency::NearRealTime, None);
            s.decoded.origin.event_ms = event_ms;
            s.decoded.origin.arrival_ms = arrival_ms;
            s
        };
        let replays = |epoch: Vec<Scored>| {
            let mut v = verifier(c.clone());
            let mut out = Vec::new();
            v.process(epoch, 0, &mut out);
            items(&out)
                .iter()
                .map(|c| c.verification.checks.replay)
                .collect::<Vec<_>>()
        };
        // A copy dated a year later by its sender, arriving 10 ms after the first: a replay.
        let year = 365 * 24 * 3_600_000;
        assert_eq!(replays(vec![at(0, 0, 0), at(1, year, 10)]), [false, true]);
        // The same claimed time, arriving 2 s later: past the window, not a replay.
        assert_eq!(replays(vec![at(0, 0, 0), at(1, 0, 2000)]), [false, false]);
    }

    #[test]
    fn required_signatures_make_unsigned_invalid() {
        let mut v = verifier(VerifyConfig {
            require_signatures: true,
            ..cfg(64)
        });
        let mut out = Vec::new();
        v.process(vec![scored("u", 0, Urgency::NearRealTime, None)], 0, &mut out);
        let c = items(&out)[0];
        assert_eq!(c.verification.checks.signature, SignatureCheck::RequiredMissing);
        assert!(!c.verification.valid);
        assert_eq!(c.verification.reason.as_deref(), Some("required_missing"));
    }

    /// The attack of issue 14: ids chosen so that their public hash (the first byte of
    /// BLAKE3, the bucket before it was keyed) is the target's. At the default window, 100,000
    /// of them do not evict the target; under public buckets 4,096 did.
    #[test]
    fn ids_chosen_to_share_a_public_bucket_do_not_flush_the_replay_window() {
        let public = |id: &str| blake3::hash(id.as_bytes()).as_bytes()[0];
        let target = "target";
        let b = public(target);
        let mut flood: Vec<String> = Vec::with_capacity(100_000);
        let mut id = *b"f0000000000000000";
        for i in 0u64.. {
            hex::encode_to_slice(i.to_be_bytes(), &mut id[1..]).expect("16 digits");
            if blake3::hash(&id).as_bytes()[0] == b {
                flood.push(String::from_utf8(id.to_vec()).expect("ASCII"));
                if flood.len() == 100_000 {
                    break;
                }
            }
        }
        let mut v = verifier(cfg(64));
        let mut out = Vec::new();
        let mut pos = 0u64;
        let mut send = |v: &mut ShardVerifier, ids: &[&str], out: &mut Vec<BatchEvent<Checked>>| {
            let epoch = ids
                .iter()
                .map(|id| {
                    pos += 1;
                    scored(id, pos, Urgency::NearRealTime, None)
                })
                .collect();
            v.process(epoch, 0, out);
        };
        send(&mut v, &[target], &mut out);
        for half in flood.chunks(50_000) {
            for chunk in half.chunks(1024) {
                let ids: Vec<&str> = chunk.iter().map(String::as_str).collect();
                send(&mut v, &ids, &mut out);
            }
            out.clear();
            send(&mut v, &[target], &mut out);
            let last = items(&out).pop().unwrap();
            assert!(
                last.verification.checks.replay,
                "the target seen 50,000 flood ids earlier is a replay"
            );
        }
        // The control: the same flood against buckets a sender can compute evicts the target.
        let mut public_guard = ReplayGuard::new(VerifyConfig::default().replay_window_ids, 0);
        let fp = |id: &str| fingerprint(id_hash(id));
        public_guard.check(b, fp(target), 0, 0);
        for (i, id) in flood.iter().enumerate().take(5_000) {
            public_guard.check(b, fp(id), i as u64 * 2 + 2, 0);
        }
        assert!(
            !public_guard.check(b, fp(target), 1, 0),
            "under a public bucket the target is flushed"
        );
    }

    /// A verifier restarted from its replay log answers the rest of the stream as one that
    /// never stopped, and records read again get their first answers.
    #[test]
    fn a_verifier_restored_from_its_replay_log_continues_the_first() {
        use crate::verification::replay_log::{restore, restore_start};
        let stream: Vec<Scored> = (0..600u64)
            .map(|i| scored(&format!("id{}", i % 250), i, Urgency::NearRealTime, None))
            .collect();
        let replays = |v: &mut ShardVerifier, part: &[Scored], log: &mut Vec<ReplayRecord>| {
            let mut out = Vec::new();
            for (e, chunk) in part.chunks(50).enumerate() {
                v.process(chunk.to_vec(), e as u64, &mut out);
                log.extend(v.take_replay_records());
            }
            items(&out)
                .iter()
                .map(|c| c.verification.checks.replay)
                .collect::<Vec<_>>()
        };
        let empty: Restored = Arc::new(vec![Vec::new(); BUCKETS]);
        let mut whole = ShardVerifier::new(0, 1, cfg(64), keyring(), sample_key(), Some(&empty));
        let mut log_whole = Vec::new();
        let want = replays(&mut whole, &stream, &mut log_whole);

        let mut first = ShardVerifier::new(0, 1, cfg(64), keyring(), sample_key(), Some(&empty));
        let mut log = Vec::new();
        let a = replays(&mut first, &stream[..400], &mut log);
        // Restart: restore, then read again from position 300 (100 records processed twice).
        let positions: Vec<(u64, &ReplayRecord)> =
            log.iter().enumerate().map(|(i, r)| (i as u64, r)).collect();
        let start = restore_start(&positions).unwrap() as usize;
        let restored: Restored = Arc::new(restore(log[start..].iter().cloned(), &sample_key(), 1 << 12));
        let mut second = ShardVerifier::new(0, 1, cfg(64), keyring(), sample_key(), Some(&restored));
        let b = replays(&mut second, &stream[300..], &mut log);
        assert_eq!(a[..], want[..400]);
        assert_eq!(b[..], want[300..], "the re-read records get their first answers");
    }
}
