//! Signal-to-noise and interdisciplinary consistency (SPEC §2.5): how strongly the convergence,
//! value and ethics stages agree, and how much of the result is signal. Pure and
//! allocation-free; it does not rank or keep insights (the reference's batch ranking is left
//! out), and it never changes a decision: the level is informative.

use serde::{Deserialize, Serialize};

use crate::convergence::{Convergence, Quality};
use crate::policy::SnrPolicy;

/// Keeps SNR finite when every noise term is zero.
const NOISE_EPSILON: f64 = 1e-6;

/// SNR class, with the ethical constraint on HIGH.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnrLevel {
    High,
    Medium,
    Low,
    Unknown,
}

impl SnrLevel {
    /// Every level.
    pub const ALL: [SnrLevel; 4] = [SnrLevel::High, SnrLevel::Medium, SnrLevel::Low, SnrLevel::Unknown];

    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SnrLevel::High => "high",
            SnrLevel::Medium => "medium",
            SnrLevel::Low => "low",
            SnrLevel::Unknown => "unknown",
        }
    }
}

/// The SNR of one verdict (SPEC §1.2 `snr`, plus the confidence the level was decided with).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Snr {
    /// clarity·synergy·consistency / (entropy + Qerr + disagreement + 1e-6).
    pub score: f64,
    /// Class of `score`, given `ihsan` and `confidence`.
    pub level: SnrLevel,
    /// (IHSAN framework score + 1)/2, in [0, 1]: the ethical bar HIGH must clear.
    pub ihsan: f64,
    /// base(quality)·(0.5 + 0.5·consistency)·(1 − 0.3·Qerr), clamped to [0, 1]; below the
    /// policy minimum the level is UNKNOWN.
    pub confidence: f64,
}

/// max(0, 1 − popstd([clarity, value, (overall + 1)/2])): agreement of the mathematical,
/// economic and ethical signals, each in [0, 1] (overall is mapped from [−1, 1]).
pub fn consistency(clarity: f64, value: f64, overall: f64) -> f64 {
    let signals = [clarity, value, (overall + 1.0) / 2.0];
    let mean = signals.iter().sum::<f64>() / 3.0;
    let variance = signals.iter().map(|s| (s - mean) * (s - mean)).sum::<f64>() / 3.0;
    (1.0 - variance.sqrt()).max(0.0)
}

/// Scores and classifies. `ihsan_framework_score` is the IHSAN framework's score in [−1, 1]
/// ([`EthicsVerdict::ihsan_score`](crate::ethics::EthicsVerdict::ihsan_score)).
pub fn score(
    c: &Convergence,
    consistency: f64,
    disagreement: f64,
    ihsan_framework_score: f64,
    p: &SnrPolicy,
) -> Snr {
    let signal = c.clarity * c.synergy * consistency;
    let noise = c.entropy + c.quantization_error + disagreement + NOISE_EPSILON;
    let score = signal / noise;
    let ihsan = (ihsan_framework_score + 1.0) / 2.0;
    let confidence =
        (base_confidence(c.quality, p) * (0.5 + 0.5 * consistency) * (1.0 - 0.3 * c.quantization_error))
            .clamp(0.0, 1.0);
    Snr {
        score,
        level: classify(score, ihsan, confidence, p),
        ihsan,
        confidence,
    }
}

fn base_confidence(quality: Quality, p: &SnrPolicy) -> f64 {
    let q = &p.quality_confidence;
    match quality {
        Quality::Optimal => q.optimal,
        Quality::Excellent => q.excellent,
        Quality::Good => q.good,
        Quality::Acceptable => q.acceptable,
        Quality::Poor => q.poor,
    }
}

/// UNKNOWN below the confidence minimum; HIGH needs the ihsan bar too (else MEDIUM).
fn classify(score: f64, ihsan: f64, confidence: f64, p: &SnrPolicy) -> SnrLevel {
    if confidence < p.min_confidence {
        SnrLevel::Unknown
    } else if score > p.high_above {
        if ihsan >= p.min_ihsan_for_high {
            SnrLevel::High
        } else {
            SnrLevel::Medium
        }
    } else if score >= p.medium_at_least {
        SnrLevel::Medium
    } else {
        SnrLevel::Low
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policy;

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
        let k = consistency(0.7085169165705499, 0.703202178184872, 0.485692789968652);
        assert_eq!(k, 0.9824297490756164);
        let s = score(
            &hello(),
            k,
            0.1780744979876527,
            0.7306666666666666,
            &Policy::reference().snr,
        );
        assert_eq!(s.score, 0.8667529993212877);
        assert_eq!(s.level, SnrLevel::Medium);
        assert_eq!(s.ihsan, 0.8653333333333333);
        assert_eq!(s.confidence, 0.9416541308109178);
    }

    #[test]
    fn level_boundaries() {
        let p = Policy::reference().snr;
        assert_eq!(classify(0.81, 0.95, 0.7, &p), SnrLevel::High, "ihsan bound is ≥");
        assert_eq!(classify(0.81, 0.9499, 0.9, &p), SnrLevel::Medium, "downgraded");
        assert_eq!(
            classify(0.8, 1.0, 0.9, &p),
            SnrLevel::Medium,
            "high bound is strict"
        );
        assert_eq!(classify(0.5, 1.0, 0.9, &p), SnrLevel::Medium, "medium bound is ≥");
        assert_eq!(classify(0.4999, 1.0, 0.9, &p), SnrLevel::Low);
        assert_eq!(classify(5.0, 1.0, 0.6999, &p), SnrLevel::Unknown);
    }

    #[test]
    fn consistency_is_one_when_all_agree_and_never_negative() {
        assert_eq!(consistency(0.5, 0.5, 0.0), 1.0);
        assert_eq!(consistency(0.0, 1.0, -300.0), 0.0);
    }

    #[test]
    fn confidence_follows_quality() {
        let p = Policy::reference().snr;
        let poor = Convergence {
            quality: Quality::Poor,
            ..hello()
        };
        assert_eq!(score(&poor, 1.0, 0.0, 0.0, &p).confidence, 0.5);
        assert_eq!(score(&hello(), 1.0, 0.0, 0.0, &p).confidence, 0.95);
    }
}
