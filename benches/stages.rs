//! Per-stage costs, one record at a time, on generated observations (the realistic mix).
//! Run: `cargo bench --bench stages`. Isolates the pure stage functions from timely, I/O and
//! the generator: inputs are generated and decoded before the measurement.
//!
//! `verdict/json` (run: `cargo bench --bench stages -- verdict`) writes the verdicts of 1,024
//! assessed records, each with a 6-hash inclusion proof as a full-tier batch of 64 gives
//! them, as the sink writes them (SPEC §1.3 JSON, one line each).
//!
//! `explain/*` (run: `cargo bench --bench stages -- explain`) times the assess step with
//! `output.explain` off and in each style; the difference to `off` is the per-record cost of
//! the explanation. Its records carry a passed incremental-tier verification made up front
//! (the verify operator is not run), and the verdicts are dropped outside the measurement.

use std::sync::Arc;

use bizra::gen::{GenConfig, Generator};
use bizra_dataflows::convergence::converge;
use bizra_dataflows::decode::{decode, Limits};
use bizra_dataflows::ethics::evaluate;
use bizra_dataflows::explain::Style;
use bizra_dataflows::observation::{InputRef, Observation};
use bizra_dataflows::pipeline::assess_record;
use bizra_dataflows::policy::Policy;
use bizra_dataflows::record::Checked;
use bizra_dataflows::testing::{self, verification};
use bizra_dataflows::value::{assess, Provenance};
use bizra_dataflows::verdict::Proof;
use bizra_dataflows::verification::leaf::LeafFields;
use bizra_dataflows::verification::merkle::{Hash, Tree};
use bizra_dataflows::verification::signature::{observation_message, verify_batch};
use bizra_dataflows::verification::{BatchRef, Tier};
use bizra_dataflows::wire::write_verdict;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ed25519_dalek::Signer;

const N: usize = 1024;

fn inputs() -> (Vec<Vec<u8>>, Vec<Observation>) {
    let g = Generator::new(GenConfig::new(42, 0.0), None);
    let raw: Vec<Vec<u8>> = (0..N as u64).map(|i| g.record(i)).collect();
    let obs = raw
        .iter()
        .map(|r| decode(r, &Limits::default()).expect("generated record decodes"))
        .collect();
    (raw, obs)
}

fn stages(c: &mut Criterion) {
    let (raw, obs) = inputs();
    let policy = Policy::reference();
    let convs: Vec<_> = obs.iter().map(|o| converge(o, &policy.convergence)).collect();
    let mut g = c.benchmark_group("stage");
    g.throughput(Throughput::Elements(N as u64));

    g.bench_function("decode", |b| {
        b.iter(|| {
            raw.iter()
                .map(|r| decode(r, &Limits::default()).is_ok() as usize)
                .sum::<usize>()
        })
    });
    g.bench_function("convergence", |b| {
        b.iter(|| {
            obs.iter()
                .map(|o| converge(o, &policy.convergence).clarity)
                .sum::<f64>()
        })
    });
    g.bench_function("value", |b| {
        b.iter(|| {
            convs
                .iter()
                .map(|c| assess(c, Provenance::default(), &policy.value).value)
                .sum::<f64>()
        })
    });
    g.bench_function("ethics", |b| {
        b.iter(|| {
            obs.iter()
                .zip(&convs)
                .map(|(o, c)| evaluate(&o.context, c.clarity, &policy.ethics).overall)
                .sum::<f64>()
        })
    });
    g.bench_function("leaf_hash", |b| {
        b.iter(|| {
            obs.iter()
                .map(|o| {
                    LeafFields {
                        id: &o.id,
                        payload_sha256: &o.payload_sha256,
                        tier: 2,
                        valid: true,
                        severity: 1,
                        permitted: true,
                        overall: 0.5,
                        value: 0.5,
                        clarity: 0.5,
                    }
                    .hash()[0] as usize
                })
                .sum::<usize>()
        })
    });
    g.finish();

    let mut g = c.benchmark_group("batch64");
    g.throughput(Throughput::Elements(64));
    let leaves: Vec<Hash> = (0..64u8).map(|i| [i; 32]).collect();
    g.bench_function("merkle_tree_and_proofs", |b| {
        b.iter_batched(
            || leaves.clone(),
            |l| {
                let t = Tree::new(l);
                (0..64).map(|i| t.path(i).len()).sum::<usize>()
            },
            BatchSize::SmallInput,
        )
    });
    let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let vk = key.verifying_key();
    let msgs: Vec<Vec<u8>> = obs
        .iter()
        .take(64)
        .map(|o| observation_message(&o.id, &o.payload_sha256))
        .collect();
    let sigs: Vec<[u8; 64]> = msgs.iter().map(|m| key.sign(m).to_bytes()).collect();
    let items: Vec<_> = msgs
        .iter()
        .zip(&sigs)
        .map(|(m, s)| (&vk, m.as_slice(), s))
        .collect();
    g.bench_function("ed25519_verify_batch", |b| b.iter(|| verify_batch(&items).len()));
    g.bench_function("ed25519_verify_single", |b| {
        b.iter(|| {
            items
                .iter()
                .filter(|(k, m, s)| {
                    k.verify_strict(m, &ed25519_dalek::Signature::from_bytes(s))
                        .is_ok()
                })
                .count()
        })
    });
    let mut bad = sigs.clone();
    bad[17][5] ^= 1;
    let bad_items: Vec<_> = msgs
        .iter()
        .zip(&bad)
        .map(|(m, s)| (&vk, m.as_slice(), s))
        .collect();
    g.bench_function("ed25519_verify_batch_one_bad", |b| {
        b.iter(|| verify_batch(&bad_items).len())
    });
    g.finish();

    // A stream with one bad signature in a hundred, checked in calls of 64 as the full tier
    // does: the chunk size adapts to the share of bad ones after the first calls.
    let mut g = c.benchmark_group("stream");
    let stream_msgs: Vec<Vec<u8>> = (0..64 * 32)
        .map(|i| format!("observation {i}").into_bytes())
        .collect();
    let stream_sigs: Vec<[u8; 64]> = stream_msgs
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let mut s = key.sign(m).to_bytes();
            if i % 100 == 42 {
                s[5] ^= 1;
            }
            s
        })
        .collect();
    let stream: Vec<_> = stream_msgs
        .iter()
        .zip(&stream_sigs)
        .map(|(m, s)| (&vk, m.as_slice(), s))
        .collect();
    g.throughput(Throughput::Elements(stream.len() as u64));
    g.bench_function("ed25519_one_bad_in_100", |b| {
        b.iter(|| stream.chunks(64).map(|c| verify_batch(c).len()).sum::<usize>())
    });
    g.finish();
    drop(Arc::new(()));
}

/// The generated records as the verify operator would pass them on: valid, incremental tier.
fn checked(raw: &[Vec<u8>], policy: &Policy) -> Vec<Checked> {
    raw.iter()
        .enumerate()
        .map(|(i, bytes)| {
            let input = InputRef {
                topic: "gen".into(),
                partition: 0,
                offset: i as i64,
            };
            let batch = BatchRef {
                shard: 0,
                seq: i as u64 / 64,
                leaf_index: (i % 64) as u32,
            };
            let passed = verification(Tier::Incremental, true, 0.85, false);
            testing::checked(bytes, Some(input), 0, policy, passed, batch)
        })
        .collect()
}

fn explain(c: &mut Criterion) {
    let (raw, _) = inputs();
    let policy = Policy::reference();
    let version = policy.version();
    let records = checked(&raw, &policy);
    let mut g = c.benchmark_group("explain");
    g.throughput(Throughput::Elements(N as u64));
    let styles = [
        None,
        Some(Style::Technical),
        Some(Style::Executive),
        Some(Style::Audit),
    ];
    for style in styles {
        g.bench_function(style.map_or("off", Style::as_str), |b| {
            b.iter_batched(
                || records.clone(),
                |records| {
                    records
                        .into_iter()
                        .map(|c| assess_record(c, &policy, &version, style))
                        .collect::<Vec<_>>()
                },
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

fn verdict(c: &mut Criterion) {
    let (raw, _) = inputs();
    let policy = Policy::reference();
    let version = policy.version();
    let hex = |i: usize| format!("{:064x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let verdicts: Vec<_> = checked(&raw, &policy)
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let mut v = assess_record(c, &policy, &version, None).verdict;
            v.proof = Some(Proof {
                tree_size: 64,
                root: hex(i / 64),
                path: (0..6).map(|k| hex(i * 8 + k)).collect(),
            });
            v
        })
        .collect();
    let mut g = c.benchmark_group("verdict");
    g.throughput(Throughput::Elements(N as u64));
    let mut out = Vec::with_capacity(N * 2600);
    g.bench_function("json", |b| {
        b.iter(|| {
            out.clear();
            for v in &verdicts {
                write_verdict(&mut out, v);
                out.push(b'\n');
            }
            out.len()
        })
    });
    g.finish();
}

criterion_group!(benches, stages, explain, verdict);
criterion_main!(benches);
