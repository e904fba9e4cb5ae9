//! The decision log's tree (SPEC §3.4): an append-only RFC 6962 log over SHA3-256 whose leaf `i`
//! is the §3.3 message of commitment `seq = i` (leaf hash = [`merkle::leaf_hash`] of it). It owns
//! the compact [`Frontier`] a writer persists, the stored [`LogTree`] that answers inclusion and
//! consistency proofs against any earlier size, and the RFC 9162 §2.1.3.2 / §2.1.4.2 checks. It
//! does not build the leaf messages (`commitment.rs`), sign tree heads (`checkpoint.rs`) nor
//! store anything.
//!
//! Both structures keep only perfect subtrees: `MTH(D[j·2^l : (j+1)·2^l])`. Any hash a proof needs
//! is `MTH(D[a:b])` with `a` aligned to the largest power of two ≤ b − a, which is the perfect
//! subtrees of b − a's set bits folded from the right: O(log n) reads and hashes, never O(n).

use super::merkle::{self, empty_root, largest_pow2_below, node_hash, Hash};

/// A proof that cannot be made, or a frontier that cannot be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TlogError {
    /// An inclusion proof for a leaf outside the tree it is asked against.
    #[error("inclusion proof: expected a leaf index below the tree size {tree_size}, found {index}")]
    IndexOutOfRange {
        /// The leaf asked for.
        index: u64,
        /// The size of the tree the proof is asked against.
        tree_size: u64,
    },
    /// A tree size the stored log has not reached yet.
    #[error("expected a tree size of at most {len} (the log's length), found {size}")]
    SizeBeyondLog {
        /// The size asked for.
        size: u64,
        /// Leaves stored.
        len: u64,
    },
    /// A consistency proof from a larger tree to a smaller one.
    #[error("consistency proof: expected old size <= new size, found {old_size} > {new_size}")]
    SizesOutOfOrder {
        /// The size of the older tree.
        old_size: u64,
        /// The size of the newer tree.
        new_size: u64,
    },
    /// Persisted frontier bytes of the wrong length for the size they start with.
    #[error(
        "frontier bytes: expected {expected} (u64be size, then 32 bytes per perfect subtree), found {found}"
    )]
    FrontierBytes {
        /// Length the size prefix calls for (8 when even the prefix is missing).
        expected: usize,
        /// Length given.
        found: usize,
    },
}

/// The compact range of a log: the roots of the perfect subtrees covering leaves [0, size), left
/// to right, one per set bit of `size`. Enough to append and to compute the root, so a writer
/// resumes a log from it without reading the leaves back.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frontier {
    /// Number of leaves covered.
    size: u64,
    /// `popcount(size)` hashes, the largest (leftmost) subtree first.
    hashes: Vec<Hash>,
}

impl Frontier {
    /// The frontier of the empty log.
    pub fn new() -> Frontier {
        Frontier::default()
    }

    /// A frontier from persisted parts; `None` unless there is one hash per set bit of `size`.
    pub fn from_parts(size: u64, hashes: Vec<Hash>) -> Option<Frontier> {
        (hashes.len() == size.count_ones() as usize).then_some(Frontier { size, hashes })
    }

    /// Number of leaves appended so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The perfect subtree roots, largest (leftmost) first.
    pub fn hashes(&self) -> &[Hash] {
        &self.hashes
    }

    /// Appends one leaf hash: merges it with the equal-sized subtrees it completes.
    ///
    /// # Panics
    /// If the log already holds `u64::MAX` leaves.
    pub fn push(&mut self, leaf: Hash) {
        let mut merged = leaf;
        let mut below = self.size;
        while below & 1 == 1 {
            let left = self.hashes.pop().expect("one hash per set bit of the size");
            merged = node_hash(&left, &merged);
            below >>= 1;
        }
        self.hashes.push(merged);
        self.size = self.size.checked_add(1).expect("a log of fewer than 2^64 leaves");
    }

    /// RFC 6962 MTH of all leaves appended so far; [`empty_root`] for none.
    pub fn root(&self) -> Hash {
        fold_right(&self.hashes).unwrap_or_else(empty_root)
    }

    /// u64be size ‖ the hashes, largest subtree first: `8 + 32·popcount(size)` bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + 32 * self.hashes.len());
        out.extend_from_slice(&self.size.to_be_bytes());
        for h in &self.hashes {
            out.extend_from_slice(h);
        }
        out
    }

    /// Reads [`Frontier::to_bytes`] back; the length must be exactly what the size calls for.
    pub fn from_bytes(bytes: &[u8]) -> Result<Frontier, TlogError> {
        let Some((size, rest)) = bytes.split_first_chunk::<8>() else {
            return Err(TlogError::FrontierBytes {
                expected: 8,
                found: bytes.len(),
            });
        };
        let size = u64::from_be_bytes(*size);
        let expected = 8 + 32 * size.count_ones() as usize;
        if bytes.len() != expected {
            return Err(TlogError::FrontierBytes {
                expected,
                found: bytes.len(),
            });
        }
        let hashes = rest
            .chunks_exact(32)
            .map(|c| c.try_into().expect("chunks of 32"))
            .collect();
        Ok(Frontier { size, hashes })
    }
}

/// A whole stored log, for answering proofs: every perfect subtree root, about 2n hashes.
/// Appending costs amortised one node hash; every proof and [`LogTree::root_at`] O(log n).
#[derive(Clone, Debug)]
pub struct LogTree {
    /// `levels[l][j]` = `MTH(D[j·2^l : (j+1)·2^l])`; `levels[0]` are the leaf hashes. Only complete
    /// subtrees are stored, so nothing is rewritten when the log grows. Never empty.
    levels: Vec<Vec<Hash>>,
}

impl Default for LogTree {
    fn default() -> LogTree {
        LogTree::new()
    }
}

impl LogTree {
    /// The empty log.
    pub fn new() -> LogTree {
        LogTree {
            levels: vec![Vec::new()],
        }
    }

    /// A log of these leaf hashes, built level by level (n − 1 node hashes at most).
    pub fn from_leaves(leaves: Vec<Hash>) -> LogTree {
        let mut levels = vec![leaves];
        while let Some(top) = levels.last().filter(|l| l.len() > 1) {
            let up = top.chunks_exact(2).map(|p| node_hash(&p[0], &p[1])).collect();
            levels.push(up);
        }
        LogTree { levels }
    }

    /// Appends one leaf hash and the subtree roots it completes.
    pub fn push(&mut self, leaf: Hash) {
        self.levels[0].push(leaf);
        let mut l = 0;
        while self.levels[l].len().is_multiple_of(2) {
            let n = self.levels[l].len();
            let up = node_hash(&self.levels[l][n - 2], &self.levels[l][n - 1]);
            if self.levels.len() == l + 1 {
                self.levels.push(Vec::new());
            }
            self.levels[l + 1].push(up);
            l += 1;
        }
    }

    /// Number of leaves.
    pub fn len(&self) -> u64 {
        self.levels[0].len() as u64
    }

    /// True for the log of no leaves.
    pub fn is_empty(&self) -> bool {
        self.levels[0].is_empty()
    }

    /// The leaf hash at `index`, if stored.
    pub fn leaf(&self, index: u64) -> Option<Hash> {
        self.levels[0].get(usize::try_from(index).ok()?).copied()
    }

    /// MTH of the whole log; [`empty_root`] for no leaves.
    pub fn root(&self) -> Hash {
        self.root_at(self.len()).expect("the log's own length")
    }

    /// `MTH(D[0:size])`: the root a checkpoint of `size` leaves carries.
    pub fn root_at(&self, size: u64) -> Result<Hash, TlogError> {
        let size = self.check_size(size)?;
        Ok(if size == 0 {
            empty_root()
        } else {
            self.range_hash(0, size)
        })
    }

    /// The [`Frontier`] of the first `size` leaves, as a writer that appended them holds it.
    pub fn frontier_at(&self, size: u64) -> Result<Frontier, TlogError> {
        let n = self.check_size(size)?;
        // One perfect subtree per set bit of n, the largest first.
        let mut pos = 0;
        let hashes = (0..usize::BITS as usize)
            .rev()
            .filter(|l| n >> l & 1 == 1)
            .map(|l| {
                let h = self.levels[l][pos >> l];
                pos += 1 << l;
                h
            })
            .collect();
        Ok(Frontier { size, hashes })
    }

    /// RFC 9162 §2.1.3.1 `PATH(index, D[0:tree_size])`, from the leaf level upwards: the proof
    /// that leaf `index` is in the tree of the first `tree_size` leaves (any checkpoint so far).
    pub fn inclusion_proof(&self, index: u64, tree_size: u64) -> Result<Vec<Hash>, TlogError> {
        let n = self.check_size(tree_size)?;
        if index >= tree_size {
            return Err(TlogError::IndexOutOfRange { index, tree_size });
        }
        let mut proof = Vec::with_capacity(64);
        self.path(index as usize, 0, n, &mut proof);
        Ok(proof)
    }

    /// RFC 9162 §2.1.4.1 `PROOF(old_size, D[0:new_size])`: the proof that the tree of the first
    /// `new_size` leaves extends the tree of the first `old_size`. Empty when the sizes are
    /// equal or `old_size` is 0, where there is nothing to prove (see [`verify_consistency`]).
    pub fn consistency_proof(&self, old_size: u64, new_size: u64) -> Result<Vec<Hash>, TlogError> {
        let n = self.check_size(new_size)?;
        if old_size > new_size {
            return Err(TlogError::SizesOutOfOrder { old_size, new_size });
        }
        let mut proof = Vec::with_capacity(64);
        if old_size > 0 && old_size < new_size {
            self.subproof(old_size as usize, 0, n, true, &mut proof);
        }
        Ok(proof)
    }

    /// `size` as an index bound, if the log has reached it.
    fn check_size(&self, size: u64) -> Result<usize, TlogError> {
        if size > self.len() {
            return Err(TlogError::SizeBeyondLog {
                size,
                len: self.len(),
            });
        }
        Ok(size as usize)
    }

    /// `PATH(m, D[start:end])` with m relative to `start`, appended to `out` leaf level first.
    fn path(&self, m: usize, start: usize, end: usize, out: &mut Vec<Hash>) {
        let n = end - start;
        if n <= 1 {
            return;
        }
        let k = largest_pow2_below(n);
        if m < k {
            self.path(m, start, start + k, out);
            out.push(self.range_hash(start + k, end));
        } else {
            self.path(m - k, start + k, end, out);
            out.push(self.range_hash(start, start + k));
        }
    }

    /// `SUBPROOF(m, D[start:end], complete)` of RFC 9162 §2.1.4.1, for 0 < m <= end − start.
    fn subproof(&self, m: usize, start: usize, end: usize, complete: bool, out: &mut Vec<Hash>) {
        let n = end - start;
        if m == n {
            if !complete {
                out.push(self.range_hash(start, end));
            }
            return;
        }
        let k = largest_pow2_below(n);
        if m <= k {
            self.subproof(m, start, start + k, complete, out);
            out.push(self.range_hash(start + k, end));
        } else {
            self.subproof(m - k, start + k, end, false, out);
            out.push(self.range_hash(start, start + k));
        }
    }

    /// `MTH(D[start:end])` for a non-empty range whose start is aligned to the largest power of
    /// two ≤ its length — every range the RFC recursion visits is. Folds the stored perfect
    /// subtrees of the range from the right: at most 64 reads and 63 hashes.
    fn range_hash(&self, start: usize, end: usize) -> Hash {
        let (mut rest, mut pos) = (end - start, end);
        let mut acc: Option<Hash> = None;
        while rest != 0 {
            // The rightmost remaining part is the lowest set bit.
            let l = rest.trailing_zeros() as usize;
            rest &= rest - 1;
            pos -= 1 << l;
            let part = self.levels[l][pos >> l];
            acc = Some(match acc {
                None => part,
                Some(right) => node_hash(&part, &right),
            });
        }
        acc.expect("a non-empty range")
    }
}

/// Checks an inclusion proof per RFC 9162 §2.1.3.2: is `leaf` at `index` of the tree of
/// `tree_size` leaves whose root is `root`? The same check as [`merkle::verify_path`], named
/// for the log.
pub fn verify_inclusion(leaf: &Hash, index: u64, tree_size: u64, proof: &[Hash], root: &Hash) -> bool {
    merkle::verify_path(leaf, index, tree_size, proof, root)
}

/// Checks a consistency proof per RFC 9162 §2.1.4.2: does the tree of `new_size` leaves with
/// root `new_root` extend the tree of `old_size` leaves with root `old_root`?
///
/// The RFC defines proofs for 0 < old_size < new_size only; the two trivial cases outside it
/// hold exactly with an empty proof: equal sizes with equal roots, and `old_size` 0 with the
/// empty tree's root ([`empty_root`]). A larger old size, or an empty proof otherwise, fails.
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> bool {
    if old_size > new_size {
        return false;
    }
    if old_size == new_size {
        return proof.is_empty() && old_root == new_root;
    }
    if old_size == 0 {
        return proof.is_empty() && *old_root == empty_root();
    }
    // 1. An empty path proves nothing.
    let Some((first, rest)) = proof.split_first() else {
        return false;
    };
    // 2. If old_size is a power of two, old_root is the path's implicit first element.
    let (seed, rest) = if old_size.is_power_of_two() {
        (old_root, proof)
    } else {
        (first, rest)
    };
    // 3.–5.
    let (mut fnode, mut snode) = (old_size - 1, new_size - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut fr, mut sr) = (*seed, *seed);
    // 6.
    for c in rest {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    // 7.
    fr == *old_root && sr == *new_root && snode == 0
}

/// Folds subtree roots, listed left to right, into the root over them: the RFC 6962 shape for
/// ranges that decompose into descending powers of two. `None` for no roots.
fn fold_right(parts: &[Hash]) -> Option<Hash> {
    parts
        .iter()
        .rev()
        .copied()
        .reduce(|right, left| node_hash(&left, &right))
}

#[cfg(test)]
mod tests {
    use super::*;
    use merkle::leaf_hash;
    use proptest::prelude::*;

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n)
            .map(|i| leaf_hash(format!("commitment-{i}").as_bytes()))
            .collect()
    }

    use merkle::rfc::{mth, path as rfc_path};

    /// RFC 9162 §2.1.4.1 SUBPROOF, recursively.
    fn rfc_subproof(m: usize, d: &[Hash], complete: bool) -> Vec<Hash> {
        let n = d.len();
        if m == n {
            return if complete { Vec::new() } else { vec![mth(d)] };
        }
        let k = largest_pow2_below(n);
        let (mut p, sibling) = if m <= k {
            (rfc_subproof(m, &d[..k], complete), mth(&d[k..]))
        } else {
            (rfc_subproof(m - k, &d[k..], false), mth(&d[..k]))
        };
        p.push(sibling);
        p
    }

    #[test]
    fn frontier_root_matches_merkle_root_for_every_size_to_300() {
        let d = leaves(300);
        let mut f = Frontier::new();
        assert_eq!(f.root(), empty_root());
        for n in 1..=300 {
            f.push(d[n - 1]);
            assert_eq!(f.size(), n as u64);
            assert_eq!(f.hashes().len(), n.count_ones() as usize, "n={n}");
            assert_eq!(f.root(), merkle::root(&d[..n]), "n={n}");
        }
    }

    proptest! {
        // Each case hashes its leaves twice in a debug build: 64 cases keep it near a second.
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn frontier_root_matches_merkle_root_for_random_leaves(
            inputs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..600)
        ) {
            let d: Vec<Hash> = inputs.iter().map(|i| leaf_hash(i)).collect();
            let mut f = Frontier::new();
            d.iter().for_each(|h| f.push(*h));
            prop_assert_eq!(f.root(), merkle::root(&d));
            prop_assert_eq!(Frontier::from_bytes(&f.to_bytes()), Ok(f));
        }
    }

    #[test]
    fn frontier_bytes_round_trip_and_reject_a_wrong_length() {
        let mut f = Frontier::new();
        assert_eq!(f.to_bytes(), vec![0; 8]);
        assert_eq!(Frontier::from_bytes(&[0; 8]), Ok(Frontier::new()));
        leaves(13).into_iter().for_each(|h| f.push(h));
        let bytes = f.to_bytes();
        assert_eq!(bytes.len(), 8 + 3 * 32, "13 = 8 + 4 + 1");
        assert_eq!(bytes[..8], 13u64.to_be_bytes());
        assert_eq!(Frontier::from_bytes(&bytes), Ok(f.clone()));
        assert_eq!(
            Frontier::from_bytes(&bytes[..bytes.len() - 1]),
            Err(TlogError::FrontierBytes {
                expected: 104,
                found: 103
            })
        );
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(
            Frontier::from_bytes(&long),
            Err(TlogError::FrontierBytes {
                expected: 104,
                found: 105
            })
        );
        assert_eq!(
            Frontier::from_bytes(&[0; 7]),
            Err(TlogError::FrontierBytes {
                expected: 8,
                found: 7
            })
        );
        let err = Frontier::from_bytes(&[0; 7]).unwrap_err().to_string();
        assert!(err.contains("expected 8") && err.contains("found 7"), "{err}");
    }

    #[test]
    fn frontier_from_parts_wants_one_hash_per_set_bit() {
        let f = LogTree::from_leaves(leaves(13)).frontier_at(13).unwrap();
        let parts = f.hashes().to_vec();
        assert_eq!(Frontier::from_parts(13, parts.clone()), Some(f.clone()));
        assert_eq!(Frontier::from_parts(12, parts.clone()), None);
        assert_eq!(Frontier::from_parts(13, parts[..2].to_vec()), None);
        assert_eq!(Frontier::from_parts(0, Vec::new()), Some(Frontier::new()));
        // A resumed frontier appends as the original would.
        let mut resumed = Frontier::from_parts(13, parts).unwrap();
        let mut d = leaves(20);
        resumed.push(d[13]);
        d.truncate(14);
        assert_eq!(resumed.root(), merkle::root(&d));
    }

    #[test]
    fn log_tree_roots_and_frontiers_match_for_every_prefix() {
        let d = leaves(100);
        let bulk = LogTree::from_leaves(d.clone());
        let mut pushed = LogTree::new();
        let mut f = Frontier::new();
        assert_eq!(bulk.root_at(0), Ok(empty_root()));
        assert!(LogTree::new().is_empty());
        assert_eq!(LogTree::new().root(), empty_root());
        for n in 1..=100 {
            pushed.push(d[n - 1]);
            f.push(d[n - 1]);
            assert_eq!(bulk.root_at(n as u64), Ok(merkle::root(&d[..n])), "n={n}");
            assert_eq!(pushed.root(), merkle::root(&d[..n]), "n={n}");
            assert_eq!(bulk.frontier_at(n as u64).as_ref(), Ok(&f), "n={n}");
            assert_eq!(pushed.frontier_at(n as u64).as_ref(), Ok(&f), "n={n}");
        }
        assert_eq!(
            pushed.levels, bulk.levels,
            "push and bulk build store the same subtrees"
        );
        assert_eq!(bulk.len(), 100);
        assert_eq!(bulk.leaf(99), Some(d[99]));
        assert_eq!(bulk.leaf(100), None);
        assert_eq!(
            bulk.root_at(101),
            Err(TlogError::SizeBeyondLog { size: 101, len: 100 })
        );
    }

    #[test]
    fn every_inclusion_proof_to_64_matches_the_rfc_and_verifies() {
        let d = leaves(64);
        let tree = LogTree::from_leaves(d.clone());
        for n in 1..=64 {
            let root = mth(&d[..n]);
            for m in 0..n {
                let proof = tree.inclusion_proof(m as u64, n as u64).unwrap();
                assert_eq!(proof, rfc_path(m, &d[..n]), "PATH({m}, D[{n}])");
                assert!(
                    verify_inclusion(&d[m], m as u64, n as u64, &proof, &root),
                    "m={m} n={n}"
                );
            }
        }
    }

    #[test]
    fn every_consistency_proof_to_64_matches_the_rfc_and_verifies() {
        let d = leaves(64);
        let tree = LogTree::from_leaves(d.clone());
        for n in 1..=64 {
            let new_root = mth(&d[..n]);
            for m in 1..=n {
                let proof = tree.consistency_proof(m as u64, n as u64).unwrap();
                let want = if m == n {
                    Vec::new()
                } else {
                    rfc_subproof(m, &d[..n], true)
                };
                assert_eq!(proof, want, "PROOF({m}, D[{n}])");
                assert!(
                    verify_consistency(m as u64, n as u64, &mth(&d[..m]), &new_root, &proof),
                    "{m}->{n}"
                );
            }
        }
    }

    #[test]
    fn tampered_consistency_proofs_roots_and_sizes_fail() {
        let d = leaves(40);
        let tree = LogTree::from_leaves(d.clone());
        for n in 2..=40u64 {
            let new_root = tree.root_at(n).unwrap();
            for m in 1..n {
                let old_root = tree.root_at(m).unwrap();
                let proof = tree.consistency_proof(m, n).unwrap();
                assert!(verify_consistency(m, n, &old_root, &new_root, &proof));
                for j in 0..proof.len() {
                    let mut bad = proof.clone();
                    bad[j][31] ^= 0x80;
                    assert!(
                        !verify_consistency(m, n, &old_root, &new_root, &bad),
                        "{m}->{n} flipped {j}"
                    );
                }
                let mut long = proof.clone();
                long.push(new_root);
                assert!(
                    !verify_consistency(m, n, &old_root, &new_root, &long),
                    "{m}->{n} extra"
                );
                let short = &proof[..proof.len() - 1];
                assert!(
                    !verify_consistency(m, n, &old_root, &new_root, short),
                    "{m}->{n} short"
                );
                assert!(
                    !verify_consistency(m, n, &new_root, &new_root, &proof),
                    "{m}->{n} old root"
                );
                assert!(
                    !verify_consistency(m, n, &old_root, &old_root, &proof),
                    "{m}->{n} new root"
                );
                assert!(
                    !verify_consistency(n, m, &new_root, &old_root, &proof),
                    "{m}->{n} swapped"
                );
                assert!(
                    !verify_consistency(m, n, &old_root, &new_root, &[]),
                    "{m}->{n} empty"
                );
                // As for audit paths, the roots bind the sizes: a size with the same proof
                // shape verifies alike (4 -> 7 and 4 -> 8 both read [MTH(D[4:])]), but
                // doubling the new size always needs one more level.
                assert!(
                    !verify_consistency(m, 2 * n, &old_root, &new_root, &proof),
                    "{m}->{n} size"
                );
            }
        }
    }

    #[test]
    fn tampered_inclusion_proofs_fail_against_an_older_checkpoint() {
        let d = leaves(30);
        let tree = LogTree::from_leaves(d.clone());
        let root = tree.root_at(21).unwrap();
        for m in 0..21u64 {
            let proof = tree.inclusion_proof(m, 21).unwrap();
            assert!(verify_inclusion(&d[m as usize], m, 21, &proof, &root));
            assert!(
                !verify_inclusion(&d[m as usize], m, 21, &proof, &tree.root()),
                "today's root"
            );
            assert!(
                !verify_inclusion(&d[m as usize + 1], m, 21, &proof, &root),
                "other leaf"
            );
            assert!(
                !verify_inclusion(&d[m as usize], m, 42, &proof, &root),
                "doubled size"
            );
            for j in 0..proof.len() {
                let mut bad = proof.clone();
                bad[j][0] ^= 1;
                assert!(
                    !verify_inclusion(&d[m as usize], m, 21, &bad, &root),
                    "m={m} flipped {j}"
                );
            }
        }
    }

    #[test]
    fn verify_consistency_edge_cases_follow_the_rfc() {
        let d = leaves(8);
        let tree = LogTree::from_leaves(d.clone());
        let r = |n| tree.root_at(n).unwrap();
        // Equal sizes: only the empty proof between equal roots.
        assert_eq!(tree.consistency_proof(5, 5), Ok(Vec::new()));
        assert!(verify_consistency(5, 5, &r(5), &r(5), &[]));
        assert!(!verify_consistency(5, 5, &r(5), &r(4), &[]));
        assert!(!verify_consistency(5, 5, &r(5), &r(5), &[r(5)]));
        // Old size 0: only the empty tree's root, only with the empty proof.
        assert_eq!(tree.consistency_proof(0, 8), Ok(Vec::new()));
        assert!(verify_consistency(0, 8, &empty_root(), &r(8), &[]));
        assert!(!verify_consistency(0, 8, &r(8), &r(8), &[]));
        assert!(!verify_consistency(0, 8, &empty_root(), &r(8), &[r(8)]));
        assert!(verify_consistency(0, 0, &empty_root(), &empty_root(), &[]));
        // A power-of-two old size: its root is implicit, and listing it breaks the proof.
        let proof = tree.consistency_proof(4, 7).unwrap();
        assert_eq!(proof, vec![mth(&d[4..7])]);
        assert!(verify_consistency(4, 7, &r(4), &r(7), &proof));
        assert!(!verify_consistency(4, 7, &r(4), &r(7), &[r(4), proof[0]]));
        // Size 1 to anything, and one short of a power of two.
        for n in 2..=8 {
            let p = tree.consistency_proof(1, n).unwrap();
            assert!(verify_consistency(1, n, &d[0], &r(n), &p), "1->{n}");
        }
        assert!(verify_consistency(
            7,
            8,
            &r(7),
            &r(8),
            &tree.consistency_proof(7, 8).unwrap()
        ));
    }

    #[test]
    fn rfc6962_seven_leaf_example_gives_the_published_paths_and_proofs() {
        // RFC 6962 §2.1.3 (RFC 9162 §2.1.5): leaves d0..d6; a..f, j the leaf hashes.
        let d = leaves(7);
        let (a, b, c, dd, e, f, j) = (d[0], d[1], d[2], d[3], d[4], d[5], d[6]);
        let (g, h, i) = (node_hash(&a, &b), node_hash(&c, &dd), node_hash(&e, &f));
        let (k, l) = (node_hash(&g, &h), node_hash(&i, &j));
        let tree = LogTree::from_leaves(d);
        assert_eq!(tree.root(), node_hash(&k, &l));
        assert_eq!(tree.root_at(4), Ok(k), "hash1 = k");
        let path = |m| tree.inclusion_proof(m, 7).unwrap();
        assert_eq!(path(0), vec![b, h, l]);
        assert_eq!(path(3), vec![c, g, l]);
        assert_eq!(path(4), vec![f, j, k]);
        assert_eq!(path(6), vec![i, k]);
        let proof = |m| tree.consistency_proof(m, 7).unwrap();
        assert_eq!(proof(3), vec![c, dd, g, l], "PROOF(3, D[7])");
        assert_eq!(proof(4), vec![l], "PROOF(4, D[7])");
        assert_eq!(proof(6), vec![i, j, k], "PROOF(6, D[7])");
    }

    #[test]
    fn proofs_against_a_size_do_not_change_as_the_log_grows() {
        let d = leaves(50);
        let mut tree = LogTree::from_leaves(d[..23].to_vec());
        let before = (
            tree.inclusion_proof(5, 23).unwrap(),
            tree.consistency_proof(9, 23).unwrap(),
        );
        d[23..].iter().for_each(|h| tree.push(*h));
        let after = (
            tree.inclusion_proof(5, 23).unwrap(),
            tree.consistency_proof(9, 23).unwrap(),
        );
        assert_eq!(before, after);
    }

    #[test]
    fn impossible_proofs_are_errors_that_name_the_bounds() {
        let tree = LogTree::from_leaves(leaves(10));
        assert_eq!(
            tree.inclusion_proof(10, 10),
            Err(TlogError::IndexOutOfRange {
                index: 10,
                tree_size: 10
            })
        );
        assert_eq!(
            tree.inclusion_proof(3, 11),
            Err(TlogError::SizeBeyondLog { size: 11, len: 10 })
        );
        assert_eq!(
            tree.inclusion_proof(0, 0),
            Err(TlogError::IndexOutOfRange {
                index: 0,
                tree_size: 0
            })
        );
        assert_eq!(
            tree.consistency_proof(6, 5),
            Err(TlogError::SizesOutOfOrder {
                old_size: 6,
                new_size: 5
            })
        );
        assert_eq!(
            tree.consistency_proof(3, 11),
            Err(TlogError::SizeBeyondLog { size: 11, len: 10 })
        );
        let msg = tree.consistency_proof(6, 5).unwrap_err().to_string();
        assert!(msg.contains("6 > 5"), "{msg}");
    }
}
