//! Pluralistic value (SPEC §2.3): five oracles each turn a [`Convergence`] into a value and a
//! confidence, and an accuracy-weighted ensemble combines them. Pure and allocation-free; it
//! keeps no history (the reference's weight learning and assessment log are deliberately left
//! out: verdicts must be a pure function of the observation and the policy).

use serde::{Deserialize, Serialize};

use crate::convergence::Convergence;
use crate::policy::ValuePolicy;

/// One of the five value oracles, in ensemble order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Oracle {
    Shapley,
    PredictionMarket,
    Reputation,
    FormalVerification,
    InformationTheoretic,
}

impl Oracle {
    /// Every oracle in ensemble (and output) order.
    pub const ALL: [Oracle; 5] = [
        Oracle::Shapley,
        Oracle::PredictionMarket,
        Oracle::Reputation,
        Oracle::FormalVerification,
        Oracle::InformationTheoretic,
    ];

    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Oracle::Shapley => "shapley",
            Oracle::PredictionMarket => "prediction_market",
            Oracle::Reputation => "reputation",
            Oracle::FormalVerification => "formal_verification",
            Oracle::InformationTheoretic => "information_theoretic",
        }
    }
}

/// One oracle's estimate.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct OracleSignal {
    /// Which oracle produced it.
    pub oracle: Oracle,
    /// Estimated value in [0, 1].
    pub value: f64,
    /// The oracle's confidence in its estimate; scales its weight in the ensemble.
    pub confidence: f64,
}

/// What the reputation oracle may trust about where an observation came from. Only presence
/// counts, as in the reference's metadata keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Provenance {
    /// The observation names its producer (`source`).
    pub source: bool,
    /// Its signature check came out `ok`.
    pub verified: bool,
    /// It carries an `attestation` reference.
    pub attestation: bool,
}

/// The ensemble's verdict on value (SPEC §1.2 `value`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ValueAssessment {
    /// Σw·c·v / Σw·c over the oracles (w = normalised accuracy, c = confidence).
    pub value: f64,
    /// min(0.99, Σw·c/Σw + 0.1·(1 − disagreement)): agreement earns a bonus.
    pub confidence: f64,
    /// min(1, popstd(v)/(mean(v) + 0.001)): how far the oracles are apart; feeds SNR noise.
    pub disagreement: f64,
    /// Every oracle's signal, in [`Oracle::ALL`] order.
    pub signals: [OracleSignal; 5],
}

/// Runs the five oracles and combines them.
pub fn assess(c: &Convergence, prov: Provenance, p: &ValuePolicy) -> ValueAssessment {
    let a = &p.accuracy;
    let accuracy = [
        a.shapley,
        a.prediction_market,
        a.reputation,
        a.formal_verification,
        a.information_theoretic,
    ];
    let (v0, c0) = shapley(c, accuracy[0]);
    let (v1, c1) = prediction_market(c, accuracy[1]);
    let (v2, c2) = reputation(c, prov, accuracy[2]);
    let (v3, c3) = formal_verification(c, accuracy[3]);
    let (v4, c4) = information_theoretic(c, accuracy[4]);
    let values = [v0, v1, v2, v3, v4];
    let confidences = [c0, c1, c2, c3, c4];
    let signals = [0, 1, 2, 3, 4].map(|i| OracleSignal {
        oracle: Oracle::ALL[i],
        value: values[i],
        confidence: confidences[i],
    });

    let total_accuracy: f64 = accuracy.iter().sum();
    let weights = accuracy.map(|acc| acc / total_accuracy);
    let (mut weighted_value, mut effective_total) = (0.0, 0.0);
    let (mut weighted_conf, mut weight_total) = (0.0, 0.0);
    for (s, w) in signals.iter().zip(weights) {
        let effective = w * s.confidence;
        weighted_value += s.value * effective;
        effective_total += effective;
        weighted_conf += s.confidence * w;
        weight_total += w;
    }
    let value = if effective_total > 0.0 {
        weighted_value / effective_total
    } else {
        0.0
    };
    let disagreement = coefficient_of_variation(&values);
    let base_confidence = if weight_total > 0.0 {
        weighted_conf / weight_total
    } else {
        0.0
    };
    ValueAssessment {
        value,
        confidence: (base_confidence + (1.0 - disagreement) * 0.1).min(0.99),
        disagreement,
        signals,
    }
}

/// min(1, popstd(v)/(mean(v) + 0.001)), summed left to right.
fn coefficient_of_variation(v: &[f64]) -> f64 {
    let len = v.len() as f64;
    let mean = v.iter().sum::<f64>() / len;
    let variance = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / len;
    (variance.sqrt() / (mean + 0.001)).min(1.0)
}

/// Simplified Shapley decomposition of (clarity, MI, entropy, synergy): each component's share
/// plus an interaction bonus with the mean of the others; confidence falls with imbalance.
fn shapley(c: &Convergence, accuracy: f64) -> (f64, f64) {
    let parts = [c.clarity, c.mutual_information, c.entropy, c.synergy];
    let n = parts.len() as f64;
    let shares = [0, 1, 2, 3].map(|k| {
        let others = parts
            .iter()
            .enumerate()
            .filter(|&(j, _)| j != k)
            .map(|(_, v)| v)
            .sum::<f64>();
        parts[k] / n + parts[k] * (others / (n - 1.0)) * 0.1
    });
    let value = shares.iter().sum::<f64>().clamp(0.0, 1.0);
    let balance = 1.0 - coefficient_of_variation(&shares);
    (value, (accuracy * balance).min(0.95))
}

/// Simulated market: a price from clarity, synergy and MI less entropy, times a demand premium
/// by synergy; liquidity (from clarity) sets confidence.
fn prediction_market(c: &Convergence, accuracy: f64) -> (f64, f64) {
    let base = (0.4 * c.clarity + 0.3 * c.synergy + 0.2 * c.mutual_information - 0.1 * c.entropy).max(0.0);
    let demand = if c.synergy > 0.9 {
        1.5
    } else if c.synergy > 0.7 {
        1.2
    } else if c.synergy > 0.5 {
        1.0
    } else {
        0.8
    };
    let liquidity = (0.5 + c.clarity * 0.5).min(1.0);
    ((base * demand).clamp(0.0, 1.0), (accuracy * liquidity).min(0.90))
}

/// Social proof: consistency (synergy·clarity) and trust from provenance. With no reputation
/// history (bizra keeps none), its sample confidence is min(1, 0/100 + 0.5) = 0.5.
fn reputation(c: &Convergence, prov: Provenance, accuracy: f64) -> (f64, f64) {
    let consistency = c.synergy * c.clarity;
    let trust = (0.3 * flag(prov.source) + 0.4 * flag(prov.verified) + 0.3 * flag(prov.attestation) + 0.3)
        .clamp(0.0, 1.0);
    const SAMPLE_CONFIDENCE: f64 = 0.5;
    (
        (0.6 * consistency + 0.4 * trust).clamp(0.0, 1.0),
        accuracy * SAMPLE_CONFIDENCE,
    )
}

/// Provable bounds on value: the geometric mean of the bounds (half the upper bound when the
/// lower is zero); tighter bounds, more confidence.
fn formal_verification(c: &Convergence, accuracy: f64) -> (f64, f64) {
    let lower = (c.clarity * 0.5 - c.quantization_error * 10.0).max(0.0);
    let upper = (c.clarity + c.synergy * 0.2 + c.mutual_information * 0.1).min(1.0);
    let value = if lower > 0.0 {
        (lower * upper).sqrt()
    } else {
        upper / 2.0
    };
    let tightness = 1.0 - (upper - lower) / (upper + 0.001);
    (value.clamp(0.0, 1.0), accuracy * tightness.max(0.5))
}

/// Information value MI − 0.3·H + 0.5·synergy, normalised; balance of MI and H sets confidence.
fn information_theoretic(c: &Convergence, accuracy: f64) -> (f64, f64) {
    let info = 1.0 * c.mutual_information - 0.3 * c.entropy + 0.5 * c.synergy;
    let balance = 1.0 - (c.mutual_information - c.entropy).abs() / 2.0;
    (((info + 0.3) / 1.3).clamp(0.0, 1.0), accuracy * balance)
}

fn flag(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convergence::Quality;
    use crate::policy::Policy;

    /// SPEC line 1 (`data = "hello"`), as the convergence stage computes it.
    fn hello() -> Convergence {
        Convergence {
            clarity: 0.7085169165705499,
            mutual_information: 0.25027537485582474,
            entropy: 0.625,
            synergy: 1.0,
            quantization_error: 0.0,
            quality: Quality::Optimal,
        }
    }

    #[test]
    fn spec_line_one_hello_vector() {
        let v = assess(&hello(), Provenance::default(), &Policy::reference().value);
        assert_eq!(v.value, 0.703202178184872);
        assert_eq!(v.confidence, 0.6322599050984311);
        assert_eq!(v.disagreement, 0.1780744979876527);
        let expected = [
            (0.8033055268868767, 0.5174047909474636),
            (0.8564427623990774, 0.6663215974625145),
            (0.5451101499423299, 0.36),
            (0.5750791415402703, 0.475),
            (0.6636733652737112, 0.715121164936563),
        ];
        for ((s, (value, confidence)), oracle) in v.signals.iter().zip(expected).zip(Oracle::ALL) {
            assert_eq!(s.oracle, oracle);
            assert_eq!((s.value, s.confidence), (value, confidence), "{oracle:?}");
        }
    }

    #[test]
    fn provenance_raises_only_the_reputation_signal() {
        let p = Policy::reference().value;
        let bare = assess(&hello(), Provenance::default(), &p);
        let full = Provenance {
            source: true,
            verified: true,
            attestation: true,
        };
        let trusted = assess(&hello(), full, &p);
        assert!(trusted.signals[2].value > bare.signals[2].value);
        for i in [0, 1, 3, 4] {
            assert_eq!(trusted.signals[i], bare.signals[i]);
        }
    }
}
