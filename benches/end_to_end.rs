//! End-to-end throughput of `bizra run --gen N` (generator → decode → … → verdict JSON) with
//! every output serialized and discarded, on 1 and 2 worker threads, unsigned and signed
//! full-tier observations. Run: `cargo bench --bench end_to_end`. The figures in
//! docs/BENCHMARKS.md come from the release binary timed the same way (see there).

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use bizra::config::Config;
use bizra::gen::{GenConfig, Generator};
use bizra::io::OutputSpec;
use bizra::run::{run, Cluster, Outputs, Source};
use bizra_dataflows::observation::Urgency;
use bizra_dataflows::policy::Policy;
use bizra_dataflows::verification::signature::Keyring;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn once(workers: usize, count: u64, gen: GenConfig) {
    let cfg = Config::default_config();
    let g = Generator::new(gen, None);
    let mut keyring = Keyring::new();
    keyring.insert(g.key_id().to_owned(), g.key().verifying_key());
    let pipeline = cfg.pipeline(
        Policy::reference(),
        keyring,
        ed25519_dalek::SigningKey::from_bytes(&[1; 32]),
        bizra_dataflows::testing::test_key(),
    );
    let outputs = Outputs {
        verdicts: OutputSpec::Null,
        commitments: OutputSpec::Null,
        dead_letters: OutputSpec::Null,
        stats: OutputSpec::Null,
        rollbacks: OutputSpec::Null,
        replay: None,
        checkpoints: OutputSpec::Null,
        data_dir: None,
        verdict_tap: None,
    };
    let cluster = Cluster::local(workers);
    let source = Source::Gen {
        count,
        generator: Arc::new(g),
    };
    let s = run(
        cluster,
        pipeline,
        cfg.pipeline.clone(),
        cfg.limits.max_output_bytes,
        source,
        outputs,
        bizra::run::Services {
            progress: Arc::new(AtomicU64::new(0)),
            telemetry: bizra::telemetry::Telemetry::new(None, cfg.stats.clone()),
            archive: None,
            log: cfg.log.clone(),
            checkpoints: Default::default(),
        },
    )
    .expect("run succeeds");
    assert_eq!(s.observations(), count);
}

fn end_to_end(c: &mut Criterion) {
    let n = 100_000;
    let mut g = c.benchmark_group("end_to_end");
    g.sample_size(10);
    g.throughput(Throughput::Elements(n));
    for w in [1, 2] {
        let unsigned = GenConfig {
            signed_fraction: 0.0,
            ..GenConfig::new(1, 0.0)
        };
        g.bench_function(format!("unsigned_w{w}"), |b| {
            b.iter(|| once(w, n, unsigned.clone()))
        });
    }
    g.finish();

    let n = 20_000;
    let mut g = c.benchmark_group("end_to_end_signed_full");
    g.sample_size(10);
    g.throughput(Throughput::Elements(n));
    let signed = GenConfig {
        signed_fraction: 1.0,
        urgency: Some(Urgency::Batch),
        ..GenConfig::new(1, 0.0)
    };
    g.bench_function("w2", |b| b.iter(|| once(2, n, signed.clone())));
    g.finish();
}

criterion_group!(benches, end_to_end);
criterion_main!(benches);
