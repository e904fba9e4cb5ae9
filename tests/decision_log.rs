//! The decision log (SPEC §3.4, issue 15): each shard's commitments form one chain across
//! restarts — embedded runs on one `--data-dir`, Kafka runs killed with -9 — and its signed
//! checkpoints, and `bizra audit prove`'s proofs, verify with an independent checker
//! (`tests/check_log.py`: Python's hashlib and `cryptography`, written from the formats only).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::broker::Broker;
use crate::common::sampling_key;
use crate::kafka::{keygen, produce, read_to_end, sigterm, topics, wait_for_all, write_jsonl};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_bizra"))
}

/// Runs the independent checker; returns (success, its output).
fn check_log(commitments: &Path, checkpoints: &Path, pubkey: &str, proofs: Option<&Path>) -> (bool, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/check_log.py");
    let mut c = Command::new("python3");
    c.arg(script)
        .arg(commitments)
        .arg(checkpoints)
        .arg(pubkey)
        .arg("bizra");
    if let Some(p) = proofs {
        c.arg(p);
    }
    let out = c.output().expect("python3 runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `bizra audit prove` over a commitments file: one JSON line.
fn prove(commitments: &Path, shard: u64, args: &[String]) -> String {
    let out = bin()
        .args(["audit", "prove", "--commitments"])
        .arg(commitments)
        .args(["--shard", &shard.to_string()])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Seqs of each shard, in file order.
fn seqs(commitments: &[Value]) -> BTreeMap<u64, Vec<u64>> {
    let mut m: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for c in commitments {
        m.entry(c["shard"].as_u64().unwrap())
            .or_default()
            .push(c["seq"].as_u64().unwrap());
    }
    m
}

/// Largest checkpointed tree size per shard.
fn checkpointed(checkpoints: &[Value]) -> BTreeMap<u64, Vec<u64>> {
    let mut m: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for c in checkpoints {
        m.entry(c["shard"].as_u64().unwrap())
            .or_default()
            .push(c["tree_size"].as_u64().unwrap());
    }
    m
}

/// Consistency proofs between each shard's consecutive checkpoint sizes, and an inclusion
/// proof of its first and last commitment in its last checkpoint, into `path`.
fn proofs_for(commitments: &Path, checkpoints: &[Value], path: &Path) -> usize {
    let mut lines = String::new();
    for (shard, sizes) in checkpointed(checkpoints) {
        for w in sizes.windows(2) {
            lines += &prove(
                commitments,
                shard,
                &[
                    "--old".into(),
                    w[0].to_string(),
                    "--size".into(),
                    w[1].to_string(),
                ],
            );
        }
        let last = *sizes.last().unwrap();
        for index in [0, last - 1] {
            lines += &prove(
                commitments,
                shard,
                &[
                    "--index".into(),
                    index.to_string(),
                    "--size".into(),
                    last.to_string(),
                ],
            );
        }
    }
    std::fs::write(path, &lines).unwrap();
    lines.lines().count()
}

/// One embedded run on `--data-dir data` writing `v<run>`, `c<run>` and `k<run>.jsonl`.
fn embedded(d: &Path, data: &Path, run: u32, workers: u32, seed: &str) {
    let out = bin()
        .args([
            "run",
            "-q",
            "-w",
            &workers.to_string(),
            "--gen",
            "3000",
            "--seed",
            seed,
        ])
        .arg("--signing-key")
        .arg(d.join("node.key"))
        .arg("--sampling-key")
        .arg(sampling_key(d))
        .arg("--data-dir")
        .arg(data)
        .arg("--output")
        .arg(d.join(format!("v{run}.jsonl")))
        .arg("--commitments")
        .arg(d.join(format!("c{run}.jsonl")))
        .arg("--checkpoints")
        .arg(d.join(format!("k{run}.jsonl")))
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Two embedded runs on one `--data-dir` with one node key: each shard's chain goes on where
/// the first run left it (no reset to seq 0, no gap), each run ends with a checkpoint, and the
/// checkpoints, the chains and the proofs between them verify independently. A deleted
/// commitment is caught by the same checker, so it can fail.
#[test]
fn embedded_runs_on_one_data_dir_continue_each_chain_and_their_checkpoints_verify() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pubkey = keygen(d);
    let data = d.join("data");
    for (run, seed) in [(1, "1"), (2, "2")] {
        embedded(d, &data, run, 2, seed);
    }
    let (c1, c2) = (jsonl(&d.join("c1.jsonl")), jsonl(&d.join("c2.jsonl")));
    let (s1, s2) = (seqs(&c1), seqs(&c2));
    assert_eq!(s1.keys().collect::<Vec<_>>(), vec![&0, &1], "two shards");
    for (shard, first) in &s1 {
        let second = &s2[shard];
        assert_eq!(first[0], 0, "shard {shard}: the first run starts the chain");
        assert_eq!(
            second.iter().min().unwrap(),
            &(first.iter().max().unwrap() + 1),
            "shard {shard}: the second run continues the chain"
        );
    }
    // Each run's last checkpoint covers its whole log.
    for (c, k) in [(&s1, "k1.jsonl"), (&s2, "k2.jsonl")] {
        let sizes = checkpointed(&jsonl(&d.join(k)));
        for (shard, s) in c {
            assert_eq!(
                *sizes[shard].last().unwrap(),
                s.iter().max().unwrap() + 1,
                "{k} shard {shard}"
            );
        }
    }
    let all_c = d.join("c.jsonl");
    let all_k = d.join("k.jsonl");
    write_jsonl(&all_c, &[c1, c2].concat());
    let checkpoints = [jsonl(&d.join("k1.jsonl")), jsonl(&d.join("k2.jsonl"))].concat();
    write_jsonl(&all_k, &checkpoints);
    let proofs = d.join("proofs.jsonl");
    assert!(proofs_for(&all_c, &checkpoints, &proofs) >= 6);
    let (ok, text) = check_log(&all_c, &all_k, &pubkey, Some(&proofs));
    assert!(ok, "{text}");
    assert!(text.contains("problems 0"), "{text}");

    // The same checker fails on a log with a commitment taken out.
    let mut cut = jsonl(&all_c);
    cut.remove(10);
    let cut_path = d.join("cut.jsonl");
    write_jsonl(&cut_path, &cut);
    let (ok, text) = check_log(&cut_path, &all_k, &pubkey, None);
    assert!(!ok && text.contains("missing (gap)"), "{text}");
}

/// The worker count changes between runs: with one worker, shard 1's chain pauses (nothing
/// is written for it, and its last checkpoint still covers it); with two again, it goes on
/// from where the first run left it, and the whole history verifies.
#[test]
fn a_chain_pauses_while_its_worker_is_absent_and_continues_when_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pubkey = keygen(d);
    let data = d.join("data");
    embedded(d, &data, 1, 2, "1");
    embedded(d, &data, 2, 1, "2");
    embedded(d, &data, 3, 2, "3");
    let c: Vec<Vec<Value>> = (1..=3).map(|r| jsonl(&d.join(format!("c{r}.jsonl")))).collect();
    let s: Vec<BTreeMap<u64, Vec<u64>>> = c.iter().map(|c| seqs(c)).collect();
    let last = |m: &BTreeMap<u64, Vec<u64>>, shard| *m[&shard].iter().max().unwrap();
    let first = |m: &BTreeMap<u64, Vec<u64>>, shard| *m[&shard].iter().min().unwrap();
    assert_eq!(
        s[1].keys().collect::<Vec<_>>(),
        vec![&0],
        "one worker: shard 0 only"
    );
    assert_eq!(first(&s[1], 0), last(&s[0], 0) + 1, "shard 0 goes on in run 2");
    assert_eq!(first(&s[2], 0), last(&s[1], 0) + 1, "shard 0 goes on in run 3");
    assert_eq!(
        first(&s[2], 1),
        last(&s[0], 1) + 1,
        "shard 1 resumes where run 1 left it"
    );
    let (all_c, all_k) = (d.join("c.jsonl"), d.join("k.jsonl"));
    write_jsonl(&all_c, &c.concat());
    let k: Vec<Value> = (1..=3)
        .flat_map(|r| jsonl(&d.join(format!("k{r}.jsonl"))))
        .collect();
    write_jsonl(&all_k, &k);
    let (ok, text) = check_log(&all_c, &all_k, &pubkey, None);
    assert!(ok, "{text}");
}

/// Kafka mode, kill -9 twice mid-stream, then a run to the end and a graceful stop: each
/// shard's commitments in the topic are one chain from seq 0 without a gap, a fork or a
/// second run id, and every checkpoint in the checkpoints topic (one every 300 ms while the
/// log grows, one at the stop) verifies and is consistent with the earlier ones, proofs included.
#[test]
fn kafka_runs_killed_with_9_continue_each_chain_and_keep_checkpoints_consistent() {
    let broker = Broker::start();
    topics(&broker, 4);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pubkey = keygen(d);
    let cfg = d.join("bizra.toml");
    std::fs::write(&cfg, "[log]\ncheckpoint_interval_ms = 300\n").unwrap();
    let lines = crate::kafka::generated(20_000, 0.02, false);
    produce(&broker, &lines, 4);
    let run = || crate::kafka::bizra(&broker, d, &["-w", "2", "--config", cfg.to_str().unwrap()]);
    for after_ms in [1_500u64, 3_000] {
        let mut r = run();
        std::thread::sleep(Duration::from_millis(after_ms));
        r.kill().unwrap();
        r.wait().unwrap();
    }
    let mut r = run();
    let _ = wait_for_all(&broker, lines.len(), Duration::from_secs(240));
    assert!(sigterm(&mut r).success());

    let commitments = read_to_end(&broker, "bizra.commitments");
    let checkpoints = read_to_end(&broker, "bizra.checkpoints");
    let by_shard = seqs(&commitments);
    assert_eq!(by_shard.len(), 2, "two shards");
    for (shard, s) in &by_shard {
        let max = *s.iter().max().unwrap();
        let distinct: std::collections::BTreeSet<u64> = s.iter().copied().collect();
        assert_eq!(
            distinct,
            (0..=max).collect(),
            "shard {shard}: every seq from 0 to {max} once"
        );
    }
    let sizes = checkpointed(&checkpoints);
    for (shard, s) in &sizes {
        assert!(s.len() >= 2, "shard {shard}: checkpoints {s:?}");
        assert_eq!(
            *s.last().unwrap(),
            by_shard[shard].iter().max().unwrap() + 1,
            "shard {shard}: the stop's checkpoint covers the whole chain"
        );
    }
    let (c_path, k_path) = (d.join("c.jsonl"), d.join("k.jsonl"));
    write_jsonl(&c_path, &commitments);
    write_jsonl(&k_path, &checkpoints);
    let proofs = d.join("proofs.jsonl");
    proofs_for(&c_path, &checkpoints, &proofs);
    let (ok, text) = check_log(&c_path, &k_path, &pubkey, Some(&proofs));
    assert!(ok, "{text}");
    eprintln!("{text}");
}

/// A run killed with -9 after all its input is committed but before its first checkpoint
/// leaves its commitments uncovered; the next run has nothing to seal, and its graceful stop
/// still publishes a checkpoint covering every chain it continued.
#[test]
fn a_log_left_uncovered_by_a_kill_is_covered_at_the_next_graceful_stop() {
    let broker = Broker::start();
    topics(&broker, 2);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pubkey = keygen(d);
    let cfg = d.join("bizra.toml");
    std::fs::write(&cfg, "[log]\ncheckpoint_interval_ms = 600000\n").unwrap();
    let lines = crate::kafka::generated(2_000, 0.0, false);
    produce(&broker, &lines, 2);
    let run = || crate::kafka::bizra(&broker, d, &["-w", "2", "--config", cfg.to_str().unwrap()]);
    let mut a = run();
    let _ = wait_for_all(&broker, lines.len(), Duration::from_secs(120));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while crate::kafka::committed(&broker, "bizra", 2).values().sum::<i64>() < lines.len() as i64 {
        assert!(std::time::Instant::now() < deadline, "offsets not committed");
        std::thread::sleep(Duration::from_millis(200));
    }
    a.kill().unwrap();
    a.wait().unwrap();
    assert!(
        read_to_end(&broker, "bizra.checkpoints").is_empty(),
        "no checkpoint before the kill"
    );
    let commitments = read_to_end(&broker, "bizra.commitments");

    let mut b = run();
    std::thread::sleep(Duration::from_secs(3));
    assert!(sigterm(&mut b).success());
    assert_eq!(
        read_to_end(&broker, "bizra.commitments").len(),
        commitments.len(),
        "the second run sealed nothing"
    );
    let checkpoints = read_to_end(&broker, "bizra.checkpoints");
    let sizes = checkpointed(&checkpoints);
    for (shard, s) in seqs(&commitments) {
        assert_eq!(
            sizes.get(&shard).and_then(|v| v.last()),
            Some(&(s.iter().max().unwrap() + 1)),
            "shard {shard}: {sizes:?}"
        );
    }
    let (c_path, k_path) = (d.join("c.jsonl"), d.join("k.jsonl"));
    write_jsonl(&c_path, &commitments);
    write_jsonl(&k_path, &checkpoints);
    let (ok, text) = check_log(&c_path, &k_path, &pubkey, None);
    assert!(ok, "{text}");
}

/// Writes one record with key `key` to `topic` (partition 0).
fn produce_one(broker: &Broker, topic: &str, key: &str, payload: &[u8]) {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let p: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", broker.addr())
        .create()
        .unwrap();
    p.send(BaseRecord::to(topic).key(key).payload(payload).partition(0))
        .map_err(|(e, _)| e)
        .unwrap();
    p.flush(Duration::from_secs(30)).unwrap();
}

/// Runs bizra on the broker until it stops by itself (a refused start) or `ms` pass (then
/// SIGTERM): its exit status and stderr.
fn run_for(broker: &Broker, d: &Path, key: &Path, extra: &[&str], ms: u64) -> (bool, String) {
    let mut c = bin()
        .env("RUST_LOG", "warn")
        .args([
            "run",
            "-q",
            "--brokers",
            &broker.addr(),
            "-w",
            "2",
            "--signing-key",
        ])
        .arg(key)
        .arg("--sampling-key")
        .arg(sampling_key(d))
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_millis(ms);
    let status = loop {
        if let Some(s) = c.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            break sigterm(&mut c);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(c.stderr.as_mut().unwrap(), &mut err).unwrap();
    (status.success(), err)
}

/// At start, a shard's newest record in the commitments topic that cannot be read stops
/// bizra with the record's place and the override; a chain signed by another key stops it
/// too; `--resume-past-unreadable` goes on from the newest readable commitment, logged.
#[test]
fn an_unreadable_newest_commitment_or_another_key_stops_start_up_unless_overridden() {
    let broker = Broker::start();
    topics(&broker, 2);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    keygen(d);
    let node = d.join("node.key");
    let lines = crate::kafka::generated(1_000, 0.0, false);
    produce(&broker, &lines, 2);
    let (ok, err) = run_for(&broker, d, &node, &[], 6_000);
    assert!(ok, "{err}");
    let before = read_to_end(&broker, "bizra.commitments");
    let last0 = seqs(&before)[&0].iter().copied().max().unwrap();

    // Another node key: refused, naming both keys.
    let other = d.join("other.key");
    bin().args(["keygen", "--out"]).arg(&other).output().unwrap();
    let (ok, err) = run_for(&broker, d, &other, &[], 60_000);
    assert!(!ok, "another key must be refused");
    assert!(err.contains("continue under one key"), "{err}");

    // A damaged record under shard 0's key, newer than its last commitment.
    // (JSON, so that this test's reader takes it; no commitment.)
    produce_one(&broker, "bizra.commitments", "0", b"{\"run\":\"damaged\"}");
    let (ok, err) = run_for(&broker, d, &node, &[], 60_000);
    assert!(!ok, "a damaged newest commitment must stop start-up");
    assert!(
        err.contains("shard 0's newest record cannot be read") && err.contains("--resume-past-unreadable"),
        "{err}"
    );
    assert_eq!(
        read_to_end(&broker, "bizra.commitments").len(),
        before.len() + 1,
        "nothing sealed"
    );

    // The override: the chain goes on after the newest readable commitment, with a warning.
    let more = crate::kafka::generated(1_200, 0.0, false)[1_000..].to_vec();
    produce(&broker, &more, 2);
    let (ok, err) = run_for(&broker, d, &node, &["--resume-past-unreadable"], 6_000);
    assert!(ok, "{err}");
    assert!(
        err.contains("--resume-past-unreadable"),
        "the override is logged: {err}"
    );
    let after: Vec<Value> = read_to_end(&broker, "bizra.commitments")
        .into_iter()
        .filter(|c| c.get("seq").is_some())
        .collect();
    let s0 = &seqs(&after)[&0];
    assert!(
        s0.contains(&(last0 + 1)),
        "shard 0 went on at {}: {s0:?}",
        last0 + 1
    );
    let distinct: std::collections::BTreeSet<u64> = s0.iter().copied().collect();
    assert_eq!(distinct.len(), s0.len(), "no seq of shard 0 twice: {s0:?}");
}
