//! The statistical tier's arithmetic (SPEC §2.2): how many signatures to sample per batch,
//! which items fall in the sample, and the Wilson bound used as the confidence of the rest.
//! It does not decide escalation or assign confidences to verdicts (`verification/mod.rs`).

/// z for a two-sided 95 % interval.
pub const Z_95: f64 = 1.959963984540054;

/// Sample size for acceptance sampling: the least n with (1 − ε)ⁿ ≤ 1 − c, computed as
/// ⌈ln(1 − c) / ln(1 − ε)⌉ in f64 (29 for c = 0.95, ε = 0.10). The caller caps it at the
/// batch size.
///
/// Config validation keeps both arguments in (0, 1). Outside it the answer leans to checking
/// more: NaN, c ≥ 1 or ε ≤ 0 give `usize::MAX` (check everything); c ≤ 0 or ε ≥ 1, where no
/// assurance is asked for, give 0.
pub fn sample_size(confidence: f64, max_defect_rate: f64) -> usize {
    let (c, eps) = (confidence, max_defect_rate);
    if c.is_nan() || eps.is_nan() {
        return usize::MAX;
    }
    if c <= 0.0 || eps >= 1.0 {
        return 0;
    }
    if c >= 1.0 || eps <= 0.0 {
        return usize::MAX;
    }
    // Finite and positive here; `as` saturates anyway.
    ((1.0 - c).ln() / (1.0 - eps).ln()).ceil() as usize
}

/// The fraction of a batch to sample: min(1, n / N); 1 for an empty batch.
pub fn sample_fraction(sample_size: usize, batch_size: usize) -> f64 {
    if batch_size == 0 {
        return 1.0;
    }
    (sample_size as f64 / batch_size as f64).min(1.0)
}

/// Whether `id` falls in the sample: the first 8 bytes of blake3(seed ‖ id), as a
/// little-endian u64 u, satisfy u / 2⁶⁴ < fraction. Always true for fraction ≥ 1, never for
/// fraction ≤ 0 or NaN. Deterministic, so every worker and every rerun samples alike.
pub fn is_sampled(seed: &[u8], id: &str, fraction: f64) -> bool {
    if fraction >= 1.0 {
        return true;
    }
    let mut h = blake3::Hasher::new();
    h.update(seed);
    h.update(id.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&h.finalize().as_bytes()[..8]);
    let u = u64::from_le_bytes(first);
    (u as f64) / 18_446_744_073_709_551_616.0 < fraction
}

/// Lower end of the 95 % Wilson score interval for `passed` of `total` (z = [`Z_95`]):
/// (p̂ + z²/2n − z·√(p̂(1−p̂)/n + z²/4n²)) / (1 + z²/n). 0 when `total` is 0; `passed` above
/// `total` counts as `total`.
pub fn wilson_lower_bound(passed: u64, total: u64) -> f64 {
    if total == 0 {
        return 0.0;
    }
    let n = total as f64;
    let p = passed.min(total) as f64 / n;
    let z2 = Z_95 * Z_95;
    let centre = p + z2 / (2.0 * n);
    let margin = Z_95 * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    ((centre - margin) / (1.0 + z2 / n)).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_size_matches_the_acceptance_sampling_formula() {
        assert_eq!(sample_size(0.95, 0.10), 29);
        assert_eq!(sample_size(0.99, 0.01), 459);
        assert_eq!(sample_size(0.90, 0.50), 4);
        // 29 is the least n with 0.9^n ≤ 0.05.
        assert!(0.9f64.powi(29) <= 0.05 && 0.9f64.powi(28) > 0.05);
    }

    #[test]
    fn sample_size_saturates_outside_the_open_unit_interval() {
        assert_eq!(sample_size(1.0, 0.1), usize::MAX);
        assert_eq!(sample_size(0.95, 0.0), usize::MAX);
        assert_eq!(sample_size(f64::NAN, 0.1), usize::MAX);
        assert_eq!(sample_size(0.95, f64::NAN), usize::MAX);
        assert_eq!(sample_size(0.0, 0.1), 0);
        assert_eq!(sample_size(0.95, 1.0), 0);
    }

    #[test]
    fn sample_fraction_is_capped_at_one() {
        assert_eq!(sample_fraction(29, 64), 29.0 / 64.0);
        assert_eq!(sample_fraction(29, 10), 1.0);
        assert_eq!(sample_fraction(29, 0), 1.0);
    }

    #[test]
    fn is_sampled_follows_the_blake3_rule() {
        let h = blake3::hash(b"seedobs-1");
        let u = u64::from_le_bytes(h.as_bytes()[..8].try_into().unwrap());
        let x = u as f64 / 2f64.powi(64);
        assert!(is_sampled(b"seed", "obs-1", x + 1e-9));
        assert!(!is_sampled(b"seed", "obs-1", x));
        assert!(is_sampled(b"seed", "obs-1", 1.0));
        assert!(!is_sampled(b"seed", "obs-1", 0.0));
        assert!(!is_sampled(b"seed", "obs-1", f64::NAN));
    }

    #[test]
    fn is_sampled_takes_about_the_asked_fraction() {
        let hits = (0..10_000)
            .filter(|i| is_sampled(b"s", &format!("id-{i}"), 0.25))
            .count();
        assert!((2_300..2_700).contains(&hits), "{hits}");
    }

    #[test]
    fn wilson_lower_bound_matches_known_values() {
        assert_eq!(wilson_lower_bound(0, 0), 0.0);
        assert_eq!(wilson_lower_bound(0, 10), 0.0);
        // 29/29: n / (n + z²).
        let z2 = Z_95 * Z_95;
        assert!((wilson_lower_bound(29, 29) - 29.0 / (29.0 + z2)).abs() < 1e-12);
        // 8/10 → 0.4901624… (standard tables).
        assert!((wilson_lower_bound(8, 10) - 0.490_162_472_523_837_6).abs() < 1e-9);
        assert_eq!(wilson_lower_bound(12, 10), wilson_lower_bound(10, 10));
        assert!(wilson_lower_bound(50, 100) < wilson_lower_bound(60, 100));
    }
}
