//! The built-in generator of realistic observations (`bizra gen`, `bizra run --gen`).
//! Record `i` depends only on (seed, i), so every worker can generate its own share of one
//! stream and any run with the same seed sees the same records. It writes JSON bytes — the
//! pipeline decodes them like any other input — and never scores anything itself.

use base64::Engine;
use ed25519_dalek::{Signer, SigningKey};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use sha2::{Digest, Sha256};

use bizra_dataflows::observation::Urgency;
use bizra_dataflows::verification::signature::observation_message;

/// What to generate.
#[derive(Clone, Debug)]
pub struct GenConfig {
    pub seed: u64,
    /// Fraction of records that are bad input (each becomes a dead letter).
    pub bad_fraction: f64,
    /// Fraction of good records that carry a signature.
    pub signed_fraction: f64,
    /// Every record gets this urgency instead of the realistic mix.
    pub urgency: Option<Urgency>,
    /// Fraction of good records that reuse a recent record's id (replays).
    pub replay_fraction: f64,
}

impl GenConfig {
    /// The realistic mix: half signed, all urgencies.
    pub fn new(seed: u64, bad_fraction: f64) -> GenConfig {
        GenConfig {
            seed,
            bad_fraction,
            signed_fraction: 0.5,
            urgency: None,
            replay_fraction: 0.002,
        }
    }
}

/// The generator: configuration plus the key it signs with.
pub struct Generator {
    cfg: GenConfig,
    key: SigningKey,
    key_id: String,
}

/// A second key that is in no keyring: its signatures are `unknown_key`.
const STRANGER_SEED: [u8; 32] = [7; 32];

#[derive(Serialize)]
struct Sig<'a> {
    key_id: &'a str,
    sig: String,
}

#[derive(Serialize, Default)]
struct Ctx {
    #[serde(skip_serializing_if = "Option::is_none")]
    stakeholders: Option<Vec<&'static str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    affected: Option<Vec<&'static str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    domain: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    potential_benefits: Option<Vec<&'static str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    potential_harms: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reversibility: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    intended_outcome: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    history: Option<Vec<u32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hidden_agenda: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cultural_context: Option<&'static str>,
}

#[derive(Serialize)]
struct Obs<'a> {
    id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data_b64: Option<String>,
    urgency: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    context: Option<Ctx>,
    #[serde(skip_serializing_if = "Option::is_none")]
    features: Option<Vec<f64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timestamp: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    attestation: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    digest: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    signature: Option<Sig<'a>>,
}

const WORDS: [&str; 16] = [
    "sensor", "reading", "order", "route", "patient", "triage", "invoice", "alert", "grid", "load",
    "summary", "request", "transfer", "score", "model", "update",
];
const PARTIES: [&str; 8] = [
    "system",
    "user",
    "operator",
    "customer",
    "regulator",
    "public",
    "patients",
    "staff",
];
const BENEFITS: [&str; 5] = [
    "Accurate response",
    "Value creation",
    "Faster service",
    "Lower cost",
    "Better safety",
];
const HARMS: [&str; 6] = [
    "Privacy loss",
    "Service outage",
    "Exploit of trust",
    "Degrade dignity",
    "Bias",
    "Humiliate user",
];
const DOMAINS: [&str; 6] = bizra_dataflows::stats::KNOWN_DOMAINS;
const SOURCES: [&str; 4] = ["edge-1", "edge-2", "gateway", "batch-loader"];

fn pick<T: Copy>(rng: &mut ChaCha8Rng, xs: &[T]) -> T {
    xs[rng.gen_range(0..xs.len())]
}

impl Generator {
    /// A generator whose signing key is derived from the seed unless one is given.
    pub fn new(cfg: GenConfig, key: Option<SigningKey>) -> Generator {
        let key = key.unwrap_or_else(|| {
            let seed: [u8; 32] = Sha256::digest(format!("bizra/gen/key/{}", cfg.seed)).into();
            SigningKey::from_bytes(&seed)
        });
        let key_id = bizra_dataflows::verification::signature::key_id(&key.verifying_key());
        Generator { cfg, key, key_id }
    }

    /// The key observations are signed with.
    pub fn key(&self) -> &SigningKey {
        &self.key
    }

    /// The keyring name of the signing key.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    fn rng(&self, i: u64) -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(self.cfg.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ i)
    }

    /// Record `i` as one JSON line without the newline.
    pub fn record(&self, i: u64) -> Vec<u8> {
        let mut rng = self.rng(i);
        if rng.gen_bool(self.cfg.bad_fraction.clamp(0.0, 1.0)) {
            return bad_record(&mut rng, i);
        }
        // A few ids repeat an earlier record's id: replays.
        let id_num = if i > 16 && rng.gen_bool(self.cfg.replay_fraction.clamp(0.0, 1.0)) {
            i - rng.gen_range(1..16)
        } else {
            i
        };
        let id = format!("obs-{}-{id_num}", self.cfg.seed);
        let mut text = String::with_capacity(160);
        for k in 0..rng.gen_range(4..24) {
            if k > 0 {
                text.push(' ');
            }
            text.push_str(pick(&mut rng, &WORDS));
            if rng.gen_bool(0.3) {
                text.push_str(&rng.gen_range(0..100_000).to_string());
            }
        }
        let payload_sha: [u8; 32] = Sha256::digest(text.as_bytes()).into();
        let (data, data_b64) = if rng.gen_bool(0.2) {
            (
                None,
                Some(base64::engine::general_purpose::STANDARD.encode(text.as_bytes())),
            )
        } else {
            (Some(text), None)
        };
        let roll = rng.gen_range(0..100);
        let urgency = match self.cfg.urgency {
            Some(u) => u.as_str(),
            None => match roll {
                0..=24 => "real_time",
                25..=59 => "near_real_time",
                60..=84 => "batch",
                _ => "deferred",
            },
        };
        let features = rng.gen_bool(0.2).then(|| {
            (0..rng.gen_range(8..64))
                .map(|_| rng.gen_range(-1.0..1.0))
                .collect()
        });
        let timestamp = rng
            .gen_bool(0.3)
            .then(|| bizra_dataflows::dead_letter::rfc3339_ms(1_790_000_000_000 + i as i64 * 10));
        let digest = rng.gen_bool(0.3).then(|| {
            let mut d = payload_sha;
            if rng.gen_bool(0.01) {
                d[0] ^= 1; // a corrupted digest: mismatch
            }
            format!("sha256:{}", hex::encode(d))
        });
        let signed = rng.gen_bool(self.cfg.signed_fraction.clamp(0.0, 1.0));
        let signature = signed.then(|| self.sign(&mut rng, &id, &payload_sha));
        let obs = Obs {
            context: rng.gen_bool(0.85).then(|| context(&mut rng)),
            source: rng.gen_bool(0.5).then(|| pick(&mut rng, &SOURCES)),
            attestation: rng
                .gen_bool(0.3)
                .then(|| format!("att-{}", rng.gen_range(0..1000))),
            id,
            data,
            data_b64,
            urgency,
            features,
            timestamp,
            digest,
            signature,
        };
        serde_json::to_vec(&obs).expect("generated observation serializes")
    }

    fn sign<'a>(&'a self, rng: &mut ChaCha8Rng, id: &str, payload_sha: &[u8; 32]) -> Sig<'a> {
        let msg = observation_message(id, payload_sha);
        let roll = rng.gen_range(0..1000);
        let mut sig = if roll < 5 {
            SigningKey::from_bytes(&STRANGER_SEED).sign(&msg).to_bytes()
        } else {
            self.key.sign(&msg).to_bytes()
        };
        if (5..15).contains(&roll) {
            sig[10] ^= 0x40; // a corrupted signature: bad
        }
        Sig {
            key_id: if roll < 5 { "stranger" } else { &self.key_id },
            sig: base64::engine::general_purpose::STANDARD.encode(sig),
        }
    }
}

/// A context drawn so that every severity occurs: mostly benign, some mixed, a few with
/// many harms and no way back.
fn context(rng: &mut ChaCha8Rng) -> Ctx {
    let mut c = Ctx::default();
    let profile = rng.gen_range(0..100);
    if rng.gen_bool(0.7) {
        c.stakeholders = Some((0..rng.gen_range(0..6)).map(|_| pick(rng, &PARTIES)).collect());
    }
    if rng.gen_bool(0.7) {
        c.affected = Some((0..rng.gen_range(0..8)).map(|_| pick(rng, &PARTIES)).collect());
    }
    if rng.gen_bool(0.5) {
        c.domain = Some(pick(rng, &DOMAINS));
    }
    if rng.gen_bool(0.6) {
        c.potential_benefits = Some((0..rng.gen_range(0..6)).map(|_| pick(rng, &BENEFITS)).collect());
    }
    let harms = match profile {
        0..=59 => None,
        60..=79 => Some(rng.gen_range(0..4)),
        80..=91 => Some(rng.gen_range(4..14)),
        92..=97 => Some(rng.gen_range(14..40)),
        _ => Some(rng.gen_range(40..120)),
    };
    c.potential_harms = harms.map(|n| (0..n).map(|k| format!("{} {k}", pick(rng, &HARMS))).collect());
    if rng.gen_bool(0.6) || profile >= 80 {
        c.reversibility = Some(if profile >= 80 {
            rng.gen_range(0.0..0.3)
        } else {
            rng.gen_range(0.0..1.0)
        });
    }
    if rng.gen_bool(0.5) {
        c.intended_outcome = Some(if rng.gen_bool(0.3) { "" } else { "Serve the user" });
    }
    if rng.gen_bool(0.3) {
        c.history = Some((0..rng.gen_range(0..3)).collect());
    }
    if rng.gen_bool(0.3) {
        c.hidden_agenda = Some(rng.gen_bool(0.3));
    }
    if rng.gen_bool(0.2) {
        c.cultural_context = Some(if rng.gen_bool(0.5) { "universal" } else { "gulf" });
    }
    c
}

/// One bad record of a random kind.
fn bad_record(rng: &mut ChaCha8Rng, i: u64) -> Vec<u8> {
    let s = match rng.gen_range(0..7) {
        0 => format!("not json {i} {{"),
        1 => format!("[{i}, 2, 3]"),
        2 => r#"{"data":"no id here"}"#.to_string(),
        3 => format!(r#"{{"id":"bad-{i}"}}"#),
        4 => format!(r#"{{"id":"bad-{i}","data":"x","urgency":"soon"}}"#),
        5 => format!(r#"{{"id":"bad-{i}","data_b64":"%%%"}}"#),
        _ => format!(r#"{{"id":"bad-{i}","data":"x","features":[]}}"#),
    };
    s.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_depend_only_on_seed_and_index() {
        let g = Generator::new(GenConfig::new(3, 0.1), None);
        let h = Generator::new(GenConfig::new(3, 0.1), None);
        for i in [0, 1, 17, 999] {
            assert_eq!(g.record(i), h.record(i));
        }
        let other = Generator::new(GenConfig::new(4, 0.1), None);
        assert_ne!(g.record(5), other.record(5));
    }

    #[test]
    fn bad_fraction_is_respected() {
        let g = Generator::new(GenConfig::new(1, 0.2), None);
        let limits = bizra_dataflows::decode::Limits::default();
        let bad = (0..5000)
            .filter(|&i| bizra_dataflows::decode::decode(&g.record(i), &limits).is_err())
            .count();
        assert!((800..1200).contains(&bad), "{bad} bad of 5000");
    }
}
