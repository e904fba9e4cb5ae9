//! Convergence scoring (SPEC §2.1): an observation's neural and symbolic views → clarity, mutual
//! information, entropy, synergy, quantisation error and quality. Pure and allocation-free; it
//! does not decide anything (value, ethics and SNR read its output).
//!
//! Both paths feed one accumulator with pairs (neural_i, s_i), where s_i is the normalised
//! symbolic value, and one entropy over the symbol histogram. Sums run left to right and the
//! histogram is visited in first-occurrence order, exactly as the reference does, so the
//! payload path reproduces the original implementation bit for bit.

use serde::{Deserialize, Serialize};

use crate::observation::Observation;
use crate::policy::{ConvergencePolicy, QualityThresholds};

/// Convergence quality, graded by synergy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Quality {
    Optimal,
    Excellent,
    Good,
    Acceptable,
    Poor,
}

impl Quality {
    /// Every grade, best first.
    pub const ALL: [Quality; 5] = [
        Quality::Optimal,
        Quality::Excellent,
        Quality::Good,
        Quality::Acceptable,
        Quality::Poor,
    ];

    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Quality::Optimal => "optimal",
            Quality::Excellent => "excellent",
            Quality::Good => "good",
            Quality::Acceptable => "acceptable",
            Quality::Poor => "poor",
        }
    }

    /// The grade of a synergy value; every bound is strict (`>`).
    pub fn of_synergy(synergy: f64, t: &QualityThresholds) -> Quality {
        if synergy > t.optimal_above {
            Quality::Optimal
        } else if synergy > t.excellent_above {
            Quality::Excellent
        } else if synergy > t.good_above {
            Quality::Good
        } else if synergy > t.acceptable_above {
            Quality::Acceptable
        } else {
            Quality::Poor
        }
    }
}

/// The convergence of one observation (SPEC §1.2 `convergence`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Convergence {
    /// C(t) = clamp((α·MI − β·H + γ·synergy − δ·Qerr + 0.5)/1.5, 0, 1): the headline score
    /// every later stage builds on.
    pub clarity: f64,
    /// mean(neural_i · s_i): how much the two views carry together.
    pub mutual_information: f64,
    /// Shannon entropy of the symbols over its maximum (8 bits for bytes, 10 for codes), in
    /// [0, 1]: the noise floor's main term.
    pub entropy: f64,
    /// (cos(neural, s) + 1)/2, 0 if either vector is zero: alignment of the views.
    pub synergy: f64,
    /// mean|neural_i − s_i| · |fp_precision − q_step|: precision lost by quantising.
    pub quantization_error: f64,
    /// Grade of `synergy`.
    pub quality: Quality,
}

/// Scores an observation: from its `features` when present (and non-empty), else from the
/// SHA-256 of its payload.
pub fn converge(obs: &Observation, p: &ConvergencePolicy) -> Convergence {
    match obs.features.as_deref() {
        Some(x) if !x.is_empty() => from_features(x, p),
        _ => from_digest(&obs.payload_sha256, p),
    }
}

/// Payload path: neural_i = d_i/255, symbols d_i, s_i = d_i/255 (= neural_i exactly).
fn from_digest(d: &[u8; 32], p: &ConvergencePolicy) -> Convergence {
    let mut acc = Sums::default();
    for &b in d {
        let v = f64::from(b) / 255.0;
        acc.add(v, v);
    }
    let mut counts = [0u8; 256];
    for &b in d {
        counts[usize::from(b)] += 1;
    }
    let entropy = entropy_bits(d.iter().map(|&b| usize::from(b)), &mut counts, d.len()) / 8.0;
    acc.finish(entropy, p)
}

/// Features path: min-max normalise to neural_i, quantise to a 10-bit code_i, s_i = code_i/1023.
fn from_features(x: &[f64], p: &ConvergencePolicy) -> Convergence {
    let norm = MinMax::of(x);
    let mut acc = Sums::default();
    let mut counts = [0u16; 1024];
    for &xi in x {
        let n = norm.apply(xi);
        let code = code_of(n);
        acc.add(n, code as f64 / 1023.0);
        counts[code] = counts[code].saturating_add(1);
    }
    let codes = x.iter().map(|&xi| code_of(norm.apply(xi)));
    let entropy = entropy_bits(codes, &mut counts, x.len()) / 10.0;
    acc.finish(entropy, p)
}

/// The 10-bit code of a value in [0, 1]: floor(n·1023 + 0.5), kept in range for any input.
fn code_of(n: f64) -> usize {
    // `as` saturates (NaN → 0), and min keeps a malformed value from indexing out of range.
    ((n * 1023.0 + 0.5).floor() as usize).min(1023)
}

/// Min-max normalisation to [0, 1]; a constant vector maps to 0.5.
struct MinMax {
    lo: f64,
    range: f64,
    /// Halve both sides when hi − lo overflows, so extreme but finite inputs stay finite.
    scale: f64,
}

impl MinMax {
    fn of(x: &[f64]) -> MinMax {
        let lo = x.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let range = hi - lo;
        if range.is_finite() {
            MinMax {
                lo,
                range,
                scale: 1.0,
            }
        } else {
            MinMax {
                lo: lo * 0.5,
                range: hi * 0.5 - lo * 0.5,
                scale: 0.5,
            }
        }
    }

    fn apply(&self, xi: f64) -> f64 {
        if self.range == 0.0 {
            0.5
        } else {
            (xi * self.scale - self.lo) / self.range
        }
    }
}

/// Shannon entropy in bits of a histogram, summed over symbols in first-occurrence order
/// (`symbols` is the same sequence that filled `counts`; each count is zeroed once used).
fn entropy_bits<C>(symbols: impl Iterator<Item = usize>, counts: &mut [C], total: usize) -> f64
where
    C: Copy + Default + PartialEq + Into<f64>,
{
    let total = total as f64;
    let mut h = 0.0;
    for s in symbols {
        let c = std::mem::take(&mut counts[s]);
        if c != C::default() {
            let p = c.into() / total;
            h -= p * p.log2();
        }
    }
    h
}

/// Left-to-right sums over the (neural, symbolic) pairs.
#[derive(Default)]
struct Sums {
    n: usize,
    /// Σ neural·s (MI numerator and cosine dot product).
    dot: f64,
    /// Σ neural².
    nn: f64,
    /// Σ s².
    ss: f64,
    /// Σ |neural − s|.
    abs_err: f64,
}

impl Sums {
    fn add(&mut self, neural: f64, s: f64) {
        self.n += 1;
        self.dot += neural * s;
        self.nn += neural * neural;
        self.ss += s * s;
        self.abs_err += (neural - s).abs();
    }

    fn finish(self, entropy: f64, p: &ConvergencePolicy) -> Convergence {
        let len = self.n as f64;
        let mutual_information = self.dot / len;
        let (neural_norm, symbolic_norm) = (self.nn.sqrt(), self.ss.sqrt());
        let synergy = if neural_norm == 0.0 || symbolic_norm == 0.0 {
            0.0
        } else {
            (self.dot / (neural_norm * symbolic_norm) + 1.0) / 2.0
        };
        let quantization_error = self.abs_err / len * (p.fp_precision - p.q_step).abs();
        let raw = p.alpha * mutual_information - p.beta * entropy + p.gamma * synergy
            - p.delta * quantization_error;
        Convergence {
            clarity: ((raw + 0.5) / 1.5).clamp(0.0, 1.0),
            mutual_information,
            entropy,
            synergy,
            quantization_error,
            quality: Quality::of_synergy(synergy, &p.quality),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observation::{EthicsContext, Urgency};
    use crate::policy::Policy;
    use sha2::{Digest, Sha256};

    fn obs(payload: &[u8], features: Option<Vec<f64>>) -> Observation {
        Observation {
            id: "t".into(),
            payload_sha256: Sha256::digest(payload).into(),
            urgency: Urgency::NearRealTime,
            context: EthicsContext::default(),
            features,
            timestamp_ms: None,
            source: None,
            attestation: None,
            digest: None,
            signature: None,
        }
    }

    #[test]
    fn spec_line_one_hello_vector() {
        let c = converge(&obs(b"hello", None), &Policy::reference().convergence);
        assert_eq!(c.clarity, 0.7085169165705499);
        assert_eq!(c.mutual_information, 0.25027537485582474);
        assert_eq!(c.entropy, 0.625);
        assert_eq!(c.synergy, 1.0);
        assert_eq!(c.quantization_error, 0.0);
        assert_eq!(c.quality, Quality::Optimal);
    }

    #[test]
    fn quality_bounds_are_strict() {
        let t = Policy::reference().convergence.quality;
        assert_eq!(Quality::of_synergy(0.95, &t), Quality::Excellent);
        assert_eq!(Quality::of_synergy(0.950001, &t), Quality::Optimal);
        assert_eq!(Quality::of_synergy(0.85, &t), Quality::Good);
        assert_eq!(Quality::of_synergy(0.70, &t), Quality::Acceptable);
        assert_eq!(Quality::of_synergy(0.50, &t), Quality::Poor);
        assert_eq!(Quality::of_synergy(0.0, &t), Quality::Poor);
    }

    #[test]
    fn constant_features_map_to_one_code() {
        let c = converge(&obs(b"x", Some(vec![3.0; 8])), &Policy::reference().convergence);
        // neural = 0.5 everywhere, code 512, s = 512/1023: one symbol, zero entropy.
        assert_eq!(c.entropy, 0.0);
        assert_eq!(c.mutual_information, 0.5 * (512.0 / 1023.0));
        assert!((c.synergy - 1.0).abs() < 1e-12);
        assert!(c.quantization_error > 0.0);
    }

    #[test]
    fn features_entropy_is_normalised_by_ten_bits() {
        // Four distinct codes, equally likely: 2 bits of 10.
        let c = converge(
            &obs(b"x", Some(vec![0.0, 1.0, 2.0, 3.0])),
            &Policy::reference().convergence,
        );
        assert_eq!(c.entropy, 0.2);
    }

    #[test]
    fn extreme_features_stay_finite() {
        let c = converge(
            &obs(b"x", Some(vec![-f64::MAX, 0.0, f64::MAX])),
            &Policy::reference().convergence,
        );
        for v in [
            c.clarity,
            c.mutual_information,
            c.entropy,
            c.synergy,
            c.quantization_error,
        ] {
            assert!(v.is_finite(), "{c:?}");
        }
    }

    #[test]
    fn empty_features_fall_back_to_the_payload() {
        let p = Policy::reference().convergence;
        assert_eq!(
            converge(&obs(b"hello", Some(vec![])), &p),
            converge(&obs(b"hello", None), &p)
        );
    }
}
