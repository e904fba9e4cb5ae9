//! Proof costs of the decision log's tree (SPEC §3.4, `verification/tlog.rs`) at 10^6 leaves:
//! inclusion and consistency proofs read from the stored `LogTree`, against the full size and
//! against an older checkpoint, their RFC 9162 verification, and `root_at` an older size.
//! Run: `cargo bench --bench tlog`. Isolates the tree: the leaves are hashes of synthetic
//! 112-byte messages (a §3.3 commitment message's length), and hashing them and building the
//! tree happen before the measurement; both times are printed once, not measured by criterion.
//! Indices and sizes vary per iteration (a fixed LCG), so no single path is measured.
//! `BIZRA_BENCH_LOG_LEAVES` sets the log's length (default 1000000).

use std::time::Instant;

use bizra_dataflows::verification::merkle::{leaf_hash, Hash};
use bizra_dataflows::verification::tlog::{verify_consistency, verify_inclusion, LogTree};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

/// Length of a §3.3 commitment message: tag, 0x00, run, shard, seq, tree_size, root, prev.
const MESSAGE_LEN: usize = 19 + 1 + 8 + 4 + 8 + 8 + 32 + 32;

/// How many precomputed proofs the verification benches cycle through.
const PROOFS: usize = 1024;

fn leaves(n: u64) -> Vec<Hash> {
    (0..n)
        .map(|i| {
            let mut m = [0u8; MESSAGE_LEN];
            m[..19].copy_from_slice(b"bizra/commitment/v1");
            m[40..48].copy_from_slice(&i.to_be_bytes());
            leaf_hash(&m)
        })
        .collect()
}

/// A fixed pseudo-random sequence in [lo, hi).
fn lcg(seed: u64, lo: u64, hi: u64) -> impl FnMut() -> u64 {
    let mut x = seed;
    move || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        lo + (x >> 11) % (hi - lo)
    }
}

fn tlog(c: &mut Criterion) {
    let n: u64 = std::env::var("BIZRA_BENCH_LOG_LEAVES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let t = Instant::now();
    let d = leaves(n);
    let hashed = t.elapsed();
    let t = Instant::now();
    let tree = LogTree::from_leaves(d);
    let built = t.elapsed();
    let t = Instant::now();
    let mut pushed = LogTree::new();
    (0..n).for_each(|i| pushed.push(tree.leaf(i).expect("stored")));
    let appended = t.elapsed();
    assert_eq!(pushed.root(), tree.root());
    drop(pushed);
    println!(
        "tlog: {n} leaves hashed in {:.0} ms; LogTree::from_leaves {:.0} ms; {n} x push {:.0} ms",
        hashed.as_secs_f64() * 1e3,
        built.as_secs_f64() * 1e3,
        appended.as_secs_f64() * 1e3
    );
    let old = n - n / 4;
    let root = tree.root();
    let old_root = tree.root_at(old).expect("old <= n");

    let mut g = c.benchmark_group("tlog");
    g.throughput(Throughput::Elements(1));
    let mut index = lcg(1, 0, n);
    g.bench_function("inclusion_proof", |b| {
        b.iter(|| tree.inclusion_proof(index(), n).expect("index < n"))
    });
    let mut index = lcg(2, 0, old);
    g.bench_function("inclusion_proof_old_size", |b| {
        b.iter(|| tree.inclusion_proof(index(), old).expect("index < old"))
    });
    let mut index = lcg(3, 0, n);
    let inclusions: Vec<(u64, Vec<Hash>)> = (0..PROOFS)
        .map(|_| {
            let i = index();
            (i, tree.inclusion_proof(i, n).expect("index < n"))
        })
        .collect();
    let mut k = 0;
    g.bench_function("inclusion_verify", |b| {
        b.iter(|| {
            k = (k + 1) % PROOFS;
            let (i, proof) = &inclusions[k];
            let leaf = tree.leaf(*i).expect("stored");
            assert!(verify_inclusion(&leaf, *i, n, proof, &root));
        })
    });
    let mut size = lcg(4, 1, n);
    g.bench_function("consistency_proof", |b| {
        b.iter(|| tree.consistency_proof(size(), n).expect("sizes in order"))
    });
    let mut size = lcg(5, 1, old);
    g.bench_function("consistency_proof_old_size", |b| {
        b.iter(|| tree.consistency_proof(size(), old).expect("sizes in order"))
    });
    let mut size = lcg(6, 1, n);
    let consistencies: Vec<(u64, Hash, Vec<Hash>)> = (0..PROOFS)
        .map(|_| {
            let m = size();
            let old_root = tree.root_at(m).expect("m < n");
            (m, old_root, tree.consistency_proof(m, n).expect("sizes in order"))
        })
        .collect();
    g.bench_function("consistency_verify", |b| {
        b.iter(|| {
            k = (k + 1) % PROOFS;
            let (m, old_root, proof) = &consistencies[k];
            assert!(verify_consistency(*m, n, old_root, &root, proof));
        })
    });
    let mut size = lcg(7, 1, n);
    g.bench_function("root_at", |b| b.iter(|| tree.root_at(size()).expect("size <= n")));
    g.finish();
    assert!(verify_consistency(
        old,
        n,
        &old_root,
        &root,
        &tree.consistency_proof(old, n).expect("old <= n")
    ));
}

criterion_group!(benches, tlog);
criterion_main!(benches);
