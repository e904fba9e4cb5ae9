//! The statistical tier's arithmetic (SPEC §2.2): how many signatures to check at once per
//! batch, which items those are (a keyed hash under the deployment's secret, so no sender can
//! predict it), and the Wilson bound used as the confidence of the rest. Also the keyed
//! bucket of the replay guard, from the same secret. It does not decide escalation or assign
//! confidences to verdicts (`batcher.rs`).

use std::fmt;

/// The per-deployment secret (`verification.sampling_key_path`) and the two keys derived
/// from it: one ranks ids for the statistical sample, one places fingerprints in the replay
/// guard's buckets. Neither can be computed without the secret, so a sender can neither pick
/// ids that escape the sample nor ids that share a bucket.
#[derive(Clone)]
pub struct SampleKey {
    sample: [u8; 32],
    bucket: [u8; 32],
    id: [u8; 8],
}

impl SampleKey {
    /// The keys derived from a 32-byte secret (BLAKE3 `derive_key`, one context each).
    pub fn from_secret(secret: &[u8; 32]) -> SampleKey {
        let sample = blake3::derive_key("bizra 2026-12 statistical sample v1", secret);
        let bucket = blake3::derive_key("bizra 2026-12 replay bucket v1", secret);
        let mut id = [0u8; 8];
        id.copy_from_slice(&blake3::hash(&bucket).as_bytes()[..8]);
        SampleKey { sample, bucket, id }
    }

    /// The rank of `id` in the sample order: the first 8 bytes, little-endian, of the keyed
    /// BLAKE3 of the id. Uniform and unpredictable without the secret.
    pub fn rank(&self, id: &str) -> u64 {
        let h = blake3::keyed_hash(&self.sample, id.as_bytes());
        u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes"))
    }

    /// The replay-guard bucket of a fingerprint: the first byte of its keyed BLAKE3.
    pub fn bucket(&self, fingerprint: u64) -> u8 {
        blake3::keyed_hash(&self.bucket, &fingerprint.to_le_bytes()).as_bytes()[0]
    }

    /// A public name of the bucket key (BLAKE3 of it, 8 bytes), written beside persisted
    /// replay state so that a restore knows whether its buckets are still the same. It tells
    /// nothing about the secret.
    pub fn id(&self) -> [u8; 8] {
        self.id
    }
}

impl fmt::Debug for SampleKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SampleKey({})", crate::verification::to_hex(&self.id))
    }
}

impl PartialEq for SampleKey {
    fn eq(&self, other: &Self) -> bool {
        self.sample == other.sample && self.bucket == other.bucket
    }
}

/// How many items of a chunk (the items an epoch adds to one batch) to check at once so
/// that, whatever size N the batch ends with, exactly min(N, `target`) are checked: after
/// `placed` items of which `checked` were checked, a chunk of `chunk` more checks the rest of
/// the quota it can reach. Verdicts leave before the batch knows its size, and only this
/// prefix rule gives min(N, n) for every N.
pub fn chunk_quota(target: usize, placed: usize, checked: usize, chunk: usize) -> usize {
    target.min(placed + chunk).saturating_sub(checked)
}

/// The positions of the `quota` items of `ranks` with the least ranks (ties by position),
/// in position order: the keyed choice of which items of a chunk are checked at once.
pub fn least_ranked(ranks: &[u64], quota: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..ranks.len()).collect();
    if quota < ranks.len() {
        order.select_nth_unstable_by_key(quota, |&i| (ranks[i], i));
        order.truncate(quota);
    }
    order.sort_unstable();
    order
}

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
    fn the_chunk_quota_checks_the_first_n_of_every_batch() {
        // Target 29: a batch filled in one chunk of 64 checks 29 of them.
        assert_eq!(chunk_quota(29, 0, 0, 64), 29);
        // A batch that grows by small chunks checks everything until 29 are checked.
        assert_eq!(chunk_quota(29, 0, 0, 10), 10);
        assert_eq!(chunk_quota(29, 10, 10, 10), 10);
        assert_eq!(chunk_quota(29, 20, 20, 10), 9);
        assert_eq!(chunk_quota(29, 30, 29, 10), 0);
        // An escalated batch has checked more than its quota: never less than 0.
        assert_eq!(chunk_quota(29, 30, 30, 10), 0);
        // For every final size N, the checks made are min(N, n).
        for n in [0usize, 1, 29, 64] {
            for chunks in [vec![64usize], vec![1; 64], vec![10, 30, 24], vec![3, 61]] {
                let (mut placed, mut checked) = (0, 0);
                for c in chunks {
                    checked += chunk_quota(n, placed, checked, c);
                    placed += c;
                    assert_eq!(checked, n.min(placed));
                }
            }
        }
    }

    #[test]
    fn least_ranked_picks_the_smallest_ranks_in_position_order() {
        assert_eq!(least_ranked(&[5, 1, 9, 3], 2), vec![1, 3]);
        assert_eq!(least_ranked(&[5, 1, 9, 3], 0), Vec::<usize>::new());
        assert_eq!(least_ranked(&[5, 1, 9, 3], 9), vec![0, 1, 2, 3]);
        assert_eq!(least_ranked(&[7, 7, 7], 2), vec![0, 1], "ties by position");
    }

    #[test]
    fn the_keyed_rank_and_bucket_depend_on_the_secret_and_spread_evenly() {
        let a = SampleKey::from_secret(&[1; 32]);
        let b = SampleKey::from_secret(&[2; 32]);
        assert_ne!(a.rank("obs-1"), b.rank("obs-1"));
        assert_eq!(a.rank("obs-1"), SampleKey::from_secret(&[1; 32]).rank("obs-1"));
        assert_ne!(a.id(), b.id());
        assert_eq!(format!("{a:?}"), format!("SampleKey({})", hex::encode(a.id())));
        let mut per_bucket = [0u32; 256];
        for fp in 0..256_000u64 {
            per_bucket[usize::from(a.bucket(fp))] += 1;
        }
        // 1,000 expected per bucket; 6 sigma is about 190.
        assert!(
            per_bucket.iter().all(|&n| (800..1200).contains(&n)),
            "{per_bucket:?}"
        );
        let below = (0..10_000)
            .filter(|i| a.rank(&format!("id-{i}")) < u64::MAX / 4)
            .count();
        assert!((2_300..2_700).contains(&below), "{below}");
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
