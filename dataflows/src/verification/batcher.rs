//! The per-shard verifier (SPEC §2.2): replay guard, the three tiers' checks, and the open
//! batch of each tier, sealed by size or by time. A plain state machine driven by the
//! `verify` operator; it never looks at a clock itself (`now_ms` is passed in) and never
//! computes Merkle trees (the `commit` operator does, once value and ethics are known).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::replay::ReplayGuard;
use super::sampling::{is_sampled, sample_fraction, sample_size, wilson_lower_bound};
use super::signature::{observation_message, s_is_canonical, verify_batch, verify_one, Keyring, SigCheck};
use super::{BatchRef, Checks, DigestCheck, SignatureCheck, Tier, Verification};
use crate::observation::SignatureRef;
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
    /// The latest `now_ms` seen, for how long a sealed batch stayed open.
    now_ms: u64,
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
            now_ms: 0,
        }
    }

    /// Entries held by the replay guard (bounded by config).
    pub fn replay_len(&self) -> usize {
        self.replay.len()
    }

    /// Verifies the records of one complete epoch. Records are taken in `position` order so
    /// that the replay guard sees every bucket's ids in input order on any worker count.
    pub fn process(&mut self, mut items: Vec<Scored>, now_ms: u64, out: &mut Vec<BatchEvent<Checked>>) {
        self.now_ms = self.now_ms.max(now_ms);
        items.sort_by_key(|s| s.decoded.origin.position);
        let mut by_tier: [Vec<(Scored, Checks)>; 3] = [Vec::new(), Vec::new(), Vec::new()];
        for s in items {
            let d = &s.decoded;
            // The age test uses the arrival time: the sender picks `timestamp`, not this.
            let replay = self.replay.check_and_insert(d.id_hash, d.origin.arrival_ms);
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
            open_ms: self.now_ms.saturating_sub(b.opened_ms),
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

/// The signature checks that cost no Ed25519 verification: a key id not in the keyring
/// (`UnknownKey`) and an `s` that is not reduced mod ℓ (`Bad`, it can never verify). Made on
/// every signed item in every tier, so that an item the statistical tier leaves unsampled
/// cannot pass with either. `SampledOut` means the signature still has to be verified.
fn cheap_signature_check(keyring: &Keyring, sig: &SignatureRef) -> SignatureCheck {
    if keyring.get(&sig.key_id).is_none() {
        SignatureCheck::UnknownKey
    } else if !s_is_canonical(&sig.sig) {
        SignatureCheck::Bad
    } else {
        SignatureCheck::SampledOut
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

    fn keyring() -> Arc<Keyring> {
        let mut k = Keyring::new();
        k.insert(key_id(&key().verifying_key()), key().verifying_key());
        Arc::new(k)
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
                id_hash: id_hash(id),
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
                BatchEvent::Seal(_) => None,
            })
            .collect()
    }

    fn seals(events: &[BatchEvent<Checked>]) -> Vec<Seal> {
        events
            .iter()
            .filter_map(|e| match e {
                BatchEvent::Seal(s) => Some(*s),
                BatchEvent::Item(_) => None,
            })
            .collect()
    }

    fn cfg(batch_size: usize) -> VerifyConfig {
        VerifyConfig {
            batch_size,
            ..VerifyConfig::default()
        }
    }

    #[test]
    fn full_tier_waits_for_the_seal_and_batch_checks_signatures() {
        let mut v = ShardVerifier::new(7, cfg(4), keyring());
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
        let sigs: Vec<_> = got.iter().map(|c| c.verification.checks.signature).collect();
        use SignatureCheck::*;
        assert_eq!(sigs, [Ok, Bad, Ok, Absent]);
        assert_eq!(got[1].verification.confidence, 0.0);
        assert_eq!(got[1].verification.reason.as_deref(), Some("bad_signature"));
        assert_eq!(got[0].verification.confidence, 1.0);
        let idx: Vec<_> = got.iter().map(|c| (c.batch.seq, c.batch.leaf_index)).collect();
        assert_eq!(idx, [(0, 0), (0, 1), (0, 2), (0, 3)]);
    }

    #[test]
    fn incremental_verdicts_leave_at_once_and_seal_by_time() {
        let mut v = ShardVerifier::new(0, cfg(64), keyring());
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
        let mut v = ShardVerifier::new(0, cfg(64), keyring());
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
        let mut v = ShardVerifier::new(0, cfg(64), keyring());
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

    #[test]
    fn statistical_tier_samples_and_escalates_on_a_sampled_failure() {
        let c = cfg(64);
        let fraction = sample_fraction(sample_size(0.95, 0.10), 64);
        assert!((fraction - 29.0 / 64.0).abs() < 1e-12);
        // Find ids that are (not) sampled under the default seed.
        let sampled = |id: &str| is_sampled(c.statistical_seed.as_bytes(), id, fraction);
        let ids: Vec<String> = (0..200).map(|i| format!("st{i}")).collect();
        let yes: Vec<&String> = ids.iter().filter(|i| sampled(i)).take(3).collect();
        let no: Vec<&String> = ids.iter().filter(|i| !sampled(i)).take(3).collect();

        // All good: unsampled ones are `sampled_out` with the Wilson bound of 3/3.
        let mut v = ShardVerifier::new(0, c.clone(), keyring());
        let mut out = Vec::new();
        let epoch = yes
            .iter()
            .chain(&no)
            .enumerate()
            .map(|(p, id)| scored(id, p as u64, Urgency::RealTime, Some(true)));
        v.process(epoch.collect(), 0, &mut out);
        let got = items(&out);
        let wilson = wilson_lower_bound(3, 3);
        for c in &got {
            let id = &c.scored.decoded.obs.id;
            if sampled(id) {
                assert_eq!(c.verification.checks.signature, SignatureCheck::Ok);
                assert_eq!(c.verification.confidence, 1.0);
            } else {
                assert_eq!(c.verification.checks.signature, SignatureCheck::SampledOut);
                assert!(c.verification.valid);
                assert_eq!(c.verification.confidence, wilson);
            }
        }

        // A bad sampled signature: everything in the batch gets checked, bad ones found.
        let mut v = ShardVerifier::new(0, c, keyring());
        let mut out = Vec::new();
        let mut epoch = vec![scored(yes[0], 0, Urgency::RealTime, Some(false))];
        epoch.push(scored(no[0], 1, Urgency::RealTime, Some(false)));
        epoch.push(scored(no[1], 2, Urgency::RealTime, Some(true)));
        v.process(epoch, 0, &mut out);
        let sigs: Vec<_> = items(&out)
            .iter()
            .map(|c| c.verification.checks.signature)
            .collect();
        assert_eq!(
            sigs,
            [SignatureCheck::Bad, SignatureCheck::Bad, SignatureCheck::Ok]
        );
        // Later epochs of the same batch are checked in full too.
        out.clear();
        v.process(vec![scored(no[2], 3, Urgency::RealTime, Some(true))], 1, &mut out);
        assert_eq!(items(&out)[0].verification.checks.signature, SignatureCheck::Ok);
    }

    /// `scored` with its signature under a key id that is not in the keyring, or with its
    /// `s` half replaced by ℓ (not reduced, so it can never verify).
    fn forged(id: &str, pos: u64, urgency: Urgency, unknown_key: bool) -> Scored {
        let mut s = scored(id, pos, urgency, Some(true));
        let sig = s.decoded.obs.signature.as_mut().unwrap();
        if unknown_key {
            sig.key_id = "00000000deadbeef".into();
        } else {
            sig.sig[32..].copy_from_slice(&crate::verification::signature::ORDER_LE);
        }
        s
    }

    #[test]
    fn unknown_keys_and_unreduced_signatures_are_invalid_in_every_tier_sampled_or_not() {
        // A sample of nothing: only the cheap checks run in the statistical tier.
        let c = VerifyConfig {
            statistical_confidence: 0.0,
            ..cfg(64)
        };
        for urgency in [Urgency::RealTime, Urgency::NearRealTime, Urgency::Batch] {
            let mut v = ShardVerifier::new(0, c.clone(), keyring());
            let mut out = Vec::new();
            let epoch = vec![
                scored("good", 0, urgency, Some(true)),
                forged("unknown", 1, urgency, true),
                forged("unreduced", 2, urgency, false),
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
                    (SignatureCheck::Bad, false)
                ],
                "{urgency:?}"
            );
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
            let mut v = ShardVerifier::new(0, c.clone(), keyring());
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
        let mut v = ShardVerifier::new(
            0,
            VerifyConfig {
                require_signatures: true,
                ..cfg(64)
            },
            keyring(),
        );
        let mut out = Vec::new();
        v.process(vec![scored("u", 0, Urgency::NearRealTime, None)], 0, &mut out);
        let c = items(&out)[0];
        assert_eq!(c.verification.checks.signature, SignatureCheck::RequiredMissing);
        assert!(!c.verification.valid);
        assert_eq!(c.verification.reason.as_deref(), Some("required_missing"));
    }
}
