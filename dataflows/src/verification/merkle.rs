//! The RFC 6962 §2.1 Merkle tree over SHA3-256 (SPEC §3.1): leaf and node hashes, roots, audit
//! paths and their verification. It does not know what a leaf encodes (`leaf.rs`) nor what is
//! signed over the root (`commitment.rs`).
//!
//! A tree of n > 1 leaves splits at the largest power of two k < n; nothing is padded or
//! duplicated. Built bottom-up, that shape is "hash adjacent pairs, carry an odd last node up
//! unchanged", which is how [`Tree`] builds its levels: n − 1 node hashes for the root, then
//! every audit path is read off the stored levels without hashing.

use sha3::{Digest, Sha3_256};

/// A SHA3-256 digest: a leaf hash, a node hash or a root.
pub type Hash = [u8; 32];

/// Domain-separation byte prefixed to a leaf input before hashing (RFC 6962 §2.1).
pub const LEAF_PREFIX: u8 = 0x00;
/// Domain-separation byte prefixed to two child hashes before hashing (RFC 6962 §2.1).
pub const NODE_PREFIX: u8 = 0x01;

/// The root of the empty tree: SHA3-256 of the empty string. Batches are never empty, so this
/// only keeps [`root`] total.
pub fn empty_root() -> Hash {
    Sha3_256::digest(b"").into()
}

/// SHA3-256(0x00 ‖ input): the hash of one leaf input.
pub fn leaf_hash(input: &[u8]) -> Hash {
    let mut h = Sha3_256::new_with_prefix([LEAF_PREFIX]);
    h.update(input);
    h.finalize().into()
}

/// SHA3-256(0x01 ‖ left ‖ right): the hash of an interior node.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha3_256::new_with_prefix([NODE_PREFIX]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root over leaf hashes (RFC 6962 MTH); [`empty_root`] for no leaves.
///
/// Hashes in place level by level: n − 1 node hashes and one allocation.
pub fn root(leaves: &[Hash]) -> Hash {
    if leaves.is_empty() {
        return empty_root();
    }
    let mut level = leaves.to_vec();
    while level.len() > 1 {
        level = next_level(&level);
    }
    level[0]
}

/// RFC 6962 PATH(index, D[n]) over leaf hashes, listed from the leaf level upwards.
///
/// Builds the whole tree; to take several paths from one batch use [`Tree`].
///
/// # Panics
/// If `index >= leaves.len()`: there is no such leaf to prove.
pub fn audit_path(leaves: &[Hash], index: usize) -> Vec<Hash> {
    Tree::new(leaves.to_vec()).path(index)
}

/// Checks an audit path per RFC 9162 §2.1.3.2: does `leaf` sit at `index` of the tree of
/// `tree_size` leaves whose root is `root`? False for an out-of-range index, a path of the
/// wrong length or any hash that does not chain to `root`.
pub fn verify_path(leaf: &Hash, index: u64, tree_size: u64, path: &[Hash], root: &Hash) -> bool {
    if index >= tree_size {
        return false;
    }
    let (mut fnode, mut snode) = (index, tree_size - 1);
    let mut r = *leaf;
    for p in path {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    snode == 0 && r == *root
}

/// One level up: hash adjacent pairs, carry an odd last node unchanged.
fn next_level(level: &[Hash]) -> Vec<Hash> {
    level
        .chunks(2)
        .map(|pair| match pair {
            [l, r] => node_hash(l, r),
            [single] => *single,
            _ => unreachable!("chunks(2) yields one or two items"),
        })
        .collect()
}

/// A Merkle tree built once per sealed batch, so the root and every audit path cost n − 1
/// hashes in total, and each path O(log n) copies.
#[derive(Clone, Debug)]
pub struct Tree {
    /// `levels[0]` are the leaf hashes, the last level holds only the root. Odd last nodes are
    /// carried up unchanged, so a node's sibling is always at `i ^ 1` of its level if it exists.
    levels: Vec<Vec<Hash>>,
}

impl Tree {
    /// Builds every level from the leaf hashes (which may be empty).
    pub fn new(leaves: Vec<Hash>) -> Tree {
        let mut levels = vec![leaves];
        while let Some(top) = levels.last().filter(|l| l.len() > 1) {
            let up = next_level(top);
            levels.push(up);
        }
        Tree { levels }
    }

    /// Number of leaves.
    pub fn len(&self) -> usize {
        self.levels[0].len()
    }

    /// True for the tree of no leaves.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The leaf hashes, in order.
    pub fn leaves(&self) -> &[Hash] {
        &self.levels[0]
    }

    /// The root; [`empty_root`] for no leaves.
    pub fn root(&self) -> Hash {
        match self.levels.last().and_then(|top| top.first()) {
            Some(root) => *root,
            None => empty_root(),
        }
    }

    /// RFC 6962 PATH(index, D[n]), from the leaf level upwards.
    ///
    /// # Panics
    /// If `index >= self.len()`: there is no such leaf to prove.
    pub fn path(&self, index: usize) -> Vec<Hash> {
        assert!(
            index < self.len(),
            "audit path: expected a leaf index below {}, found {index}",
            self.len()
        );
        let mut path = Vec::with_capacity(self.levels.len().saturating_sub(1));
        let mut i = index;
        for level in &self.levels[..self.levels.len() - 1] {
            if let Some(sibling) = level.get(i ^ 1) {
                path.push(*sibling);
            }
            i >>= 1;
        }
        path
    }
}

/// The largest power of two strictly below `n`, for n ≥ 2: RFC 6962's split point k.
pub(crate) fn largest_pow2_below(n: usize) -> usize {
    debug_assert!(n >= 2);
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

/// RFC 6962 MTH and PATH written recursively, straight from the RFC: the reference the
/// tests of this file and of `tlog.rs` compare the iterative code with.
#[cfg(test)]
pub(crate) mod rfc {
    use super::{empty_root, largest_pow2_below, node_hash, Hash};

    /// MTH(D[n]).
    pub(crate) fn mth(d: &[Hash]) -> Hash {
        match d.len() {
            0 => empty_root(),
            1 => d[0],
            n => {
                let k = largest_pow2_below(n);
                node_hash(&mth(&d[..k]), &mth(&d[k..]))
            }
        }
    }

    /// PATH(m, D[n]) (RFC 9162 §2.1.3.1).
    pub(crate) fn path(m: usize, d: &[Hash]) -> Vec<Hash> {
        if d.len() <= 1 {
            return Vec::new();
        }
        let k = largest_pow2_below(d.len());
        let (mut p, sibling) = if m < k {
            (path(m, &d[..k]), mth(&d[k..]))
        } else {
            (path(m - k, &d[k..]), mth(&d[..k]))
        };
        p.push(sibling);
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n)
            .map(|i| leaf_hash(format!("leaf-{i}").as_bytes()))
            .collect()
    }

    use super::rfc::{mth, path as rfc_path};

    #[test]
    fn empty_tree_root_is_sha3_of_empty_string() {
        assert_eq!(
            hex::encode(root(&[])),
            "a7ffc6f8bf1ed76651c14756a061d662f580ff4de43b49fa82d80a4b80f8434a"
        );
        assert_eq!(Tree::new(Vec::new()).root(), empty_root());
        assert!(Tree::new(Vec::new()).is_empty());
    }

    #[test]
    fn leaf_and_node_hashes_are_domain_separated() {
        let a = leaf_hash(b"a");
        let plain: Hash = Sha3_256::digest(b"a").into();
        assert_ne!(a, plain);
        let mut both = [0u8; 64];
        both[..32].copy_from_slice(&a);
        both[32..].copy_from_slice(&a);
        assert_ne!(node_hash(&a, &a), leaf_hash(&both));
    }

    #[test]
    fn iterative_root_and_paths_match_the_recursive_rfc_definition() {
        // Every shape up to 33 leaves, and both sides of 64 (debug-build SHA3 is slow).
        for n in (1..=33).chain([64, 65]) {
            let d = leaves(n);
            let tree = Tree::new(d.clone());
            assert_eq!(root(&d), mth(&d), "root n={n}");
            assert_eq!(tree.root(), mth(&d), "tree root n={n}");
            for m in 0..n {
                let path = tree.path(m);
                assert_eq!(path, rfc_path(m, &d), "path n={n} m={m}");
                assert_eq!(audit_path(&d, m), path);
                assert!(verify_path(&d[m], m as u64, n as u64, &path, &tree.root()));
            }
        }
    }

    #[test]
    fn verify_path_rejects_wrong_index_size_leaf_and_path() {
        let d = leaves(13);
        let tree = Tree::new(d.clone());
        let r = tree.root();
        for m in 0..13 {
            let path = tree.path(m);
            let i = m as u64;
            assert!(!verify_path(&d[m], i, 13, &path, &leaf_hash(b"other")));
            assert!(!verify_path(&d[m], i + 13, 13, &path, &r), "index out of range");
            assert!(!verify_path(&d[m], (i + 1) % 13, 13, &path, &r), "wrong index");
            assert!(!verify_path(&d[(m + 1) % 13], i, 13, &path, &r), "wrong leaf");
            // A size with the same proof shape (13 vs 14 for m < 8) verifies alike: the root,
            // not the path, binds the size. Doubling it always changes the shape.
            assert!(!verify_path(&d[m], i, 26, &path, &r), "wrong size");
            for j in 0..path.len() {
                let mut bad = path.clone();
                bad[j][0] ^= 1;
                assert!(!verify_path(&d[m], i, 13, &bad, &r), "flipped element {j}");
            }
            let mut long = path.clone();
            long.push(r);
            assert!(!verify_path(&d[m], i, 13, &long, &r), "extra element");
            assert!(!verify_path(&d[m], i, 13, &path[..path.len() - 1], &r), "short");
        }
    }

    #[test]
    fn single_leaf_tree_has_the_leaf_as_root_and_an_empty_path() {
        let d = leaves(1);
        let tree = Tree::new(d.clone());
        assert_eq!(tree.root(), d[0]);
        assert!(tree.path(0).is_empty());
        assert!(verify_path(&d[0], 0, 1, &[], &d[0]));
        assert!(!verify_path(&d[0], 0, 0, &[], &d[0]), "empty tree proves nothing");
    }

    #[test]
    #[should_panic(expected = "expected a leaf index below 3, found 3")]
    fn path_of_a_missing_leaf_panics_with_the_bound() {
        Tree::new(leaves(3)).path(3);
    }
}
