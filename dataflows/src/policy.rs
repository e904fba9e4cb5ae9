//! The stage policy: every weight, threshold and keyword the scoring stages read (SPEC §2.1,
//! §2.3–§2.5), its reference values, its TOML form and its version hash. It does not score
//! anything and does not hold runtime knobs (batch sizes, topics, …; those are the runtime's
//! config).
//!
//! The reference policy lives in `dataflows/policy.toml`, embedded as [`Policy::DEFAULT_TOML`];
//! a unit test pins it to [`Policy::reference`].

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Everything the scoring stages are parameterised by. One value per run: its
/// [`version`](Policy::version) goes into every verdict, so a verdict names the policy that
/// produced it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Convergence scoring (SPEC §2.1).
    pub convergence: ConvergencePolicy,
    /// Pluralistic value oracles (SPEC §2.3).
    pub value: ValuePolicy,
    /// Consequential ethics (SPEC §2.4).
    pub ethics: EthicsPolicy,
    /// Signal-to-noise classification (SPEC §2.5).
    pub snr: SnrPolicy,
}

/// The convergence equation `raw = α·MI − β·H + γ·synergy − δ·Qerr` and the quality grades.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConvergencePolicy {
    /// Weight of mutual information: agreement between neural and symbolic views raises clarity.
    pub alpha: f64,
    /// Penalty on normalised symbol entropy: a more random symbol stream is less clear.
    pub beta: f64,
    /// Weight of synergy (cosine agreement), the second reward term.
    pub gamma: f64,
    /// Penalty on the quantisation error: how much precision loss is allowed to cost.
    pub delta: f64,
    /// Float32 precision (2^-23); with `q_step` it sets the scale of the quantisation error.
    pub fp_precision: f64,
    /// 10-bit quantisation step (1/1024); the error is scaled by |fp_precision − q_step|.
    pub q_step: f64,
    /// Synergy bounds of the quality grades.
    pub quality: QualityThresholds,
}

/// Synergy bounds of the convergence quality grades; each is strict (`synergy > bound`) and the
/// first match from the top wins, anything else is POOR.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QualityThresholds {
    /// Synergy above this is OPTIMAL: neural and symbolic views essentially coincide.
    pub optimal_above: f64,
    /// Synergy above this (and not OPTIMAL) is EXCELLENT.
    pub excellent_above: f64,
    /// Synergy above this (and not better) is GOOD.
    pub good_above: f64,
    /// Synergy above this (and not better) is ACCEPTABLE; at or below it, POOR.
    pub acceptable_above: f64,
}

/// The value oracle ensemble (SPEC §2.3).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValuePolicy {
    /// Historical accuracy of each oracle.
    pub accuracy: OracleAccuracies,
}

/// Historical accuracy per oracle, in (0, 1]. It is used twice, as in the reference: normalised,
/// it is the oracle's weight in the ensemble; raw, it scales the oracle's own confidence.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OracleAccuracies {
    /// Game-theoretic decomposition: accurate, but blind to provenance.
    pub shapley: f64,
    /// Simulated market price: informative but noisy.
    pub prediction_market: f64,
    /// Social proof from provenance metadata: subjective, hence the lowest.
    pub reputation: f64,
    /// Provable bounds: the most trusted signal.
    pub formal_verification: f64,
    /// Information balance of MI against entropy.
    pub information_theoretic: f64,
}

/// Consequential ethics (SPEC §2.4).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EthicsPolicy {
    /// When `context.potential_harms` is absent it defaults to `["Uncertainty risk"]` if clarity
    /// is at most this value and to `[]` above it: an unclear convergence is itself a risk.
    pub uncertainty_harm_max_clarity: f64,
    /// A potential harm containing one of these (case-insensitively, as a substring) violates
    /// dignity in the ihsan framework's karama dimension.
    pub dignity_harm_keywords: Vec<String>,
    /// Weight of each framework in the overall score.
    pub weights: FrameworkWeights,
    /// The severity ladder.
    pub severity: SeverityThresholds,
}

/// Weight of each ethical framework; the overall score is Σw·c·s / Σw·c (c = the framework's
/// confidence), so only their ratios matter.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrameworkWeights {
    /// Net benefit minus harm.
    pub utilitarian: f64,
    /// Universalisability, respect for persons, duties.
    pub deontological: f64,
    /// Character virtues.
    pub virtue: f64,
    /// Relationships, needs, context.
    pub care: f64,
    /// Excellence (ihsan): the primary framework, hence the largest weight.
    pub ihsan: f64,
}

/// Severity by overall score, first match from the top; every bound is strict (`>`). Only
/// PROHIBITED (below every bound) forbids the action.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeverityThresholds {
    /// EXEMPLARY needs the overall score above this …
    pub exemplary_overall_above: f64,
    /// … and the frameworks' consensus above this: an excellent score the frameworks disagree
    /// on is only ACCEPTABLE.
    pub exemplary_consensus_above: f64,
    /// Overall above this is ACCEPTABLE.
    pub acceptable_above: f64,
    /// Overall above this is CONCERNING (permitted, review recommended).
    pub concerning_above: f64,
    /// Overall above this is PROBLEMATIC (permitted with conditions); at or below, PROHIBITED.
    pub problematic_above: f64,
}

/// SNR classification (SPEC §2.5).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnrPolicy {
    /// SNR strictly above this is HIGH, provided the ihsan metric allows it.
    pub high_above: f64,
    /// SNR at or above this (and not HIGH) is MEDIUM; below it, LOW.
    pub medium_at_least: f64,
    /// Ihsan metric a HIGH SNR needs; below it the level is downgraded to MEDIUM, so no
    /// breakthrough is reported without ethical excellence.
    pub min_ihsan_for_high: f64,
    /// Confidence below this makes the level UNKNOWN: too little evidence to classify.
    pub min_confidence: f64,
    /// Base confidence by convergence quality.
    pub quality_confidence: QualityConfidence,
}

/// Base SNR confidence per convergence quality grade: a worse convergence is weaker evidence.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QualityConfidence {
    /// Base confidence for OPTIMAL convergence.
    pub optimal: f64,
    /// Base confidence for EXCELLENT convergence.
    pub excellent: f64,
    /// Base confidence for GOOD convergence.
    pub good: f64,
    /// Base confidence for ACCEPTABLE convergence.
    pub acceptable: f64,
    /// Base confidence for POOR convergence.
    pub poor: f64,
}

/// Why a policy file was refused.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// Not TOML, or not the expected tables and keys (missing, unknown or mistyped).
    #[error("policy: expected TOML with exactly the tables and keys of dataflows/policy.toml: {0}")]
    Parse(#[from] toml::de::Error),
    /// Parsed, but a value is outside what the stages can use.
    #[error("policy: `{field}` must be {expected}, found {found}")]
    Invalid {
        /// Dotted path of the offending key.
        field: String,
        /// What the stages need.
        expected: &'static str,
        /// What the file says.
        found: String,
    },
}

impl Policy {
    /// The reference policy's TOML text (`dataflows/policy.toml`); parses to [`Policy::reference`].
    pub const DEFAULT_TOML: &'static str = include_str!("../policy.toml");

    /// The reference values: those of the original implementation, which the golden vectors
    /// were produced with.
    pub fn reference() -> Policy {
        Policy {
            convergence: ConvergencePolicy {
                alpha: 1.0,
                beta: 0.3,
                gamma: 0.5,
                delta: 10.0,
                fp_precision: 1.0 / 8_388_608.0,
                q_step: 1.0 / 1024.0,
                quality: QualityThresholds {
                    optimal_above: 0.95,
                    excellent_above: 0.85,
                    good_above: 0.70,
                    acceptable_above: 0.50,
                },
            },
            value: ValuePolicy {
                accuracy: OracleAccuracies {
                    shapley: 0.85,
                    prediction_market: 0.78,
                    reputation: 0.72,
                    formal_verification: 0.95,
                    information_theoretic: 0.88,
                },
            },
            ethics: EthicsPolicy {
                uncertainty_harm_max_clarity: 0.7,
                dignity_harm_keywords: ["degrade", "humiliate", "exploit"].map(String::from).to_vec(),
                weights: FrameworkWeights {
                    utilitarian: 0.20,
                    deontological: 0.20,
                    virtue: 0.15,
                    care: 0.15,
                    ihsan: 0.30,
                },
                severity: SeverityThresholds {
                    exemplary_overall_above: 0.7,
                    exemplary_consensus_above: 0.7,
                    acceptable_above: 0.3,
                    concerning_above: -0.2,
                    problematic_above: -0.6,
                },
            },
            snr: SnrPolicy {
                high_above: 0.8,
                medium_at_least: 0.5,
                min_ihsan_for_high: 0.95,
                min_confidence: 0.7,
                quality_confidence: QualityConfidence {
                    optimal: 0.95,
                    excellent: 0.90,
                    good: 0.80,
                    acceptable: 0.70,
                    poor: 0.50,
                },
            },
        }
    }

    /// Parses and validates a policy file. Every key is required and unknown keys are refused,
    /// so a typo cannot silently fall back to a default.
    pub fn from_toml(text: &str) -> Result<Policy, PolicyError> {
        let policy: Policy = toml::from_str(text)?;
        policy.validate()?;
        Ok(policy)
    }

    /// `policy_version`: hex of the first 8 bytes of SHA-256 over the policy's JSON (fields in
    /// declaration order, floats in shortest round-trip form). Compute it once per run.
    pub fn version(&self) -> String {
        let json = serde_json::to_vec(self).expect("a policy of numbers and strings serialises");
        hex::encode(&Sha256::digest(&json)[..8])
    }

    /// Refuses values the stages cannot use: non-finite numbers, non-positive accuracies,
    /// negative or all-zero framework weights, empty keywords, ladders that are not descending.
    fn validate(&self) -> Result<(), PolicyError> {
        let c = &self.convergence;
        let q = &c.quality;
        let e = &self.ethics;
        let w = &e.weights;
        let s = &e.severity;
        let snr = &self.snr;
        let qc = &snr.quality_confidence;
        let a = &self.value.accuracy;
        let numbers = [
            ("convergence.alpha", c.alpha),
            ("convergence.beta", c.beta),
            ("convergence.gamma", c.gamma),
            ("convergence.delta", c.delta),
            ("convergence.fp_precision", c.fp_precision),
            ("convergence.q_step", c.q_step),
            ("convergence.quality.optimal_above", q.optimal_above),
            ("convergence.quality.excellent_above", q.excellent_above),
            ("convergence.quality.good_above", q.good_above),
            ("convergence.quality.acceptable_above", q.acceptable_above),
            (
                "ethics.uncertainty_harm_max_clarity",
                e.uncertainty_harm_max_clarity,
            ),
            (
                "ethics.severity.exemplary_overall_above",
                s.exemplary_overall_above,
            ),
            (
                "ethics.severity.exemplary_consensus_above",
                s.exemplary_consensus_above,
            ),
            ("ethics.severity.acceptable_above", s.acceptable_above),
            ("ethics.severity.concerning_above", s.concerning_above),
            ("ethics.severity.problematic_above", s.problematic_above),
            ("snr.high_above", snr.high_above),
            ("snr.medium_at_least", snr.medium_at_least),
            ("snr.min_ihsan_for_high", snr.min_ihsan_for_high),
            ("snr.min_confidence", snr.min_confidence),
            ("snr.quality_confidence.optimal", qc.optimal),
            ("snr.quality_confidence.excellent", qc.excellent),
            ("snr.quality_confidence.good", qc.good),
            ("snr.quality_confidence.acceptable", qc.acceptable),
            ("snr.quality_confidence.poor", qc.poor),
        ];
        for (field, v) in numbers {
            check(field, v, v.is_finite(), "a finite number")?;
        }
        let accuracies = [
            ("value.accuracy.shapley", a.shapley),
            ("value.accuracy.prediction_market", a.prediction_market),
            ("value.accuracy.reputation", a.reputation),
            ("value.accuracy.formal_verification", a.formal_verification),
            ("value.accuracy.information_theoretic", a.information_theoretic),
        ];
        for (field, v) in accuracies {
            check(field, v, v > 0.0 && v <= 1.0, "in (0, 1]")?;
        }
        let weights = [
            ("ethics.weights.utilitarian", w.utilitarian),
            ("ethics.weights.deontological", w.deontological),
            ("ethics.weights.virtue", w.virtue),
            ("ethics.weights.care", w.care),
            ("ethics.weights.ihsan", w.ihsan),
        ];
        for (field, v) in weights {
            check(field, v, v.is_finite() && v >= 0.0, "a finite number ≥ 0")?;
        }
        let total = w.utilitarian + w.deontological + w.virtue + w.care + w.ihsan;
        check(
            "ethics.weights",
            total,
            total > 0.0,
            "weights with a positive sum",
        )?;
        descending(
            "convergence.quality",
            &[
                q.optimal_above,
                q.excellent_above,
                q.good_above,
                q.acceptable_above,
            ],
        )?;
        descending(
            "ethics.severity",
            &[s.acceptable_above, s.concerning_above, s.problematic_above],
        )?;
        if let Some(k) = e.dignity_harm_keywords.iter().find(|k| k.is_empty()) {
            return Err(PolicyError::Invalid {
                field: "ethics.dignity_harm_keywords".into(),
                expected: "non-empty keywords (an empty one matches every harm)",
                found: format!("{k:?}"),
            });
        }
        Ok(())
    }
}

impl Default for Policy {
    fn default() -> Self {
        Policy::reference()
    }
}

fn check(field: &str, v: f64, ok: bool, expected: &'static str) -> Result<(), PolicyError> {
    if ok {
        return Ok(());
    }
    Err(PolicyError::Invalid {
        field: field.into(),
        expected,
        found: v.to_string(),
    })
}

fn descending(field: &str, bounds: &[f64]) -> Result<(), PolicyError> {
    if bounds.windows(2).all(|pair| pair[0] >= pair[1]) {
        return Ok(());
    }
    Err(PolicyError::Invalid {
        field: field.into(),
        expected: "bounds that do not increase from the best grade down",
        found: format!("{bounds:?}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_toml_parses_to_the_reference_policy() {
        let parsed = Policy::from_toml(Policy::DEFAULT_TOML).expect("default policy parses");
        assert_eq!(parsed, Policy::reference());
        assert_eq!(Policy::default(), Policy::reference());
    }

    #[test]
    fn unknown_key_is_rejected_naming_the_key() {
        let text = Policy::DEFAULT_TOML.replace("alpha = 1.0", "alpha = 1.0\nalpah = 2.0");
        let err = Policy::from_toml(&text).expect_err("unknown key must be refused");
        let msg = err.to_string();
        assert!(msg.contains("alpah"), "{msg}");
        assert!(msg.contains("expected"), "{msg}");
    }

    #[test]
    fn missing_key_is_rejected_naming_the_key() {
        let text = Policy::DEFAULT_TOML.replace("beta = 0.3\n", "");
        let msg = Policy::from_toml(&text).expect_err("missing key").to_string();
        assert!(msg.contains("beta"), "{msg}");
    }

    #[test]
    fn out_of_range_values_are_rejected_with_field_and_value() {
        let text = Policy::DEFAULT_TOML.replace("reputation = 0.72", "reputation = 0.0");
        let msg = Policy::from_toml(&text).expect_err("zero accuracy").to_string();
        assert!(msg.contains("value.accuracy.reputation"), "{msg}");
        assert!(msg.contains("found 0"), "{msg}");

        let text = Policy::DEFAULT_TOML.replace("alpha = 1.0", "alpha = nan");
        let msg = Policy::from_toml(&text).expect_err("nan").to_string();
        assert!(msg.contains("convergence.alpha"), "{msg}");

        let text = Policy::DEFAULT_TOML.replace("\"exploit\"", "\"\"");
        let msg = Policy::from_toml(&text).expect_err("empty keyword").to_string();
        assert!(msg.contains("dignity_harm_keywords"), "{msg}");

        let text = Policy::DEFAULT_TOML.replace("concerning_above = -0.2", "concerning_above = 0.5");
        let msg = Policy::from_toml(&text).expect_err("ladder").to_string();
        assert!(msg.contains("ethics.severity"), "{msg}");
    }

    #[test]
    fn version_is_16_hex_chars_and_tracks_every_weight() {
        let reference = Policy::reference();
        let v = reference.version();
        assert_eq!(v.len(), 16);
        assert!(v
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_eq!(v, Policy::reference().version(), "deterministic");

        let mut changed = Policy::reference();
        changed.ethics.weights.care = 0.16;
        assert_ne!(changed.version(), v);

        let mut changed = Policy::reference();
        changed.ethics.dignity_harm_keywords.push("coerce".into());
        assert_ne!(changed.version(), v);
    }
}
