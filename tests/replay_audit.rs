//! `bizra audit replay`: recomputing a run's verdicts from its input (a file, or a range of
//! the input topic) reproduces every committed leaf (up to the statistical tier's sampling,
//! judged exactly), refuses a policy of another version, and flags verdicts computed under
//! another policy, a forged signature left without its rollback, input that was never
//! decided, and replay flags no earlier sighting explains.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bizra_dataflows::policy::Policy;

use crate::cli::{bizra, keygen, ok, read_jsonl};

/// A run's files: its input, its outputs and the keys it ran with.
struct Deployment {
    dir: tempfile::TempDir,
    input: PathBuf,
    verdicts: PathBuf,
    commitments: PathBuf,
    rollbacks: PathBuf,
    dlq: PathBuf,
    keyring: PathBuf,
    sampling: PathBuf,
}

/// The reference policy with one severity bound moved (so some severities change), and its
/// version.
fn other_policy(dir: &Path) -> (PathBuf, String) {
    let text = Policy::DEFAULT_TOML.replace("acceptable_above = 0.3\n", "acceptable_above = 0.45\n");
    assert_ne!(text, Policy::DEFAULT_TOML);
    let path = dir.join("other-policy.toml");
    std::fs::write(&path, &text).unwrap();
    (path, Policy::from_toml(&text).unwrap().version())
}

/// `bizra gen --count N <gen>` signed by a producer key, run on 2 workers with `run`'s extra
/// arguments.
fn deploy(count: usize, gen: &[&str], run: &[&str]) -> Deployment {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let producer = d.join("producer.key");
    ok(bizra().args(["keygen", "--out"]).arg(&producer).output().unwrap());
    let (node, _) = keygen(d);
    let keyring = d.join("keyring.toml");
    let out = ok(bizra()
        .args(["gen", "--count", &count.to_string()])
        .args(gen)
        .arg("--sign-key")
        .arg(&producer)
        .arg("--keyring-out")
        .arg(&keyring)
        .output()
        .unwrap());
    let input = d.join("input.jsonl");
    std::fs::write(&input, out.stdout).unwrap();
    let dep = Deployment {
        input,
        verdicts: d.join("verdicts.jsonl"),
        commitments: d.join("commitments.jsonl"),
        rollbacks: d.join("rollbacks.jsonl"),
        dlq: d.join("dlq.jsonl"),
        keyring,
        sampling: crate::common::sampling_key(d),
        dir,
    };
    ok(bizra()
        .args(["run", "-q", "-w", "2", "--input"])
        .arg(&dep.input)
        .arg("--output")
        .arg(&dep.verdicts)
        .arg("--commitments")
        .arg(&dep.commitments)
        .arg("--rollbacks")
        .arg(&dep.rollbacks)
        .arg("--dlq")
        .arg(&dep.dlq)
        .arg("--keyring")
        .arg(&dep.keyring)
        .arg("--sampling-key")
        .arg(&dep.sampling)
        .arg("--signing-key")
        .arg(&node)
        .args(run)
        .output()
        .unwrap());
    dep
}

/// What an audit printed and how it exited.
struct Audit {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Audit {
    /// The summary line's counts.
    fn counts(&self) -> BTreeMap<String, u64> {
        let line = self
            .stdout
            .lines()
            .find(|l| l.starts_with("checked "))
            .unwrap_or_else(|| panic!("no summary in:\n{}\n{}", self.stdout, self.stderr));
        let words: Vec<&str> = line.split(' ').collect();
        words
            .chunks(2)
            .map(|kv| (kv[0].to_owned(), kv[1].parse().unwrap()))
            .collect()
    }

    fn lines(&self, prefix: &str) -> Vec<&str> {
        self.stdout.lines().filter(|l| l.starts_with(prefix)).collect()
    }
}

/// `bizra audit replay` of `dep` (1 worker: another layout than the run's) with `args`.
fn audit(dep: &Deployment, args: &[&str]) -> Audit {
    let out = bizra()
        .args(["audit", "replay", "-q", "--commitments"])
        .arg(&dep.commitments)
        .arg("--verdicts")
        .arg(&dep.verdicts)
        .arg("--input")
        .arg(&dep.input)
        .arg("--keyring")
        .arg(&dep.keyring)
        .arg("--sampling-key")
        .arg(&dep.sampling)
        .args(args)
        .output()
        .unwrap();
    Audit {
        code: out.status.code(),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

fn arg(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Offset of the position a result line names (`… partition P offset O …`).
fn offset_of(line: &str) -> i64 {
    let rest = line.split(" offset ").nth(1).unwrap();
    rest.split(' ').next().unwrap().parse().unwrap()
}

#[test]
fn replay_audit_matches_an_uninterrupted_run() {
    let dep = deploy(3000, &["--bad-fraction", "0.02"], &[]);
    let verdicts = read_jsonl(&dep.verdicts);
    let dead = read_jsonl(&dep.dlq).len() as u64;
    let a = audit(
        &dep,
        &["--rollbacks", arg(&dep.rollbacks), "--dlq", arg(&dep.dlq)],
    );
    assert_eq!(a.code, Some(0), "{}\n{}", a.stdout, a.stderr);
    let n = a.counts();
    assert_eq!(n["checked"], 3000);
    assert_eq!(
        (n["differing"], n["missing"], n["history"], n["extra"]),
        (0, 0, 0, 0)
    );
    assert_eq!(n["matching"] + n["sampling"], verdicts.len() as u64);
    assert_eq!(n["dead_letters"], dead);
    assert!(a.lines("DIFF").is_empty() && a.lines("MISSING").is_empty());
    // Only the statistical tier's sample may differ, and only by its signature outcome.
    let tier: HashMap<i64, String> = verdicts
        .iter()
        .map(|v| {
            let tier = v["verification"]["tier"].as_str().unwrap().to_owned();
            (v["input"]["offset"].as_i64().unwrap(), tier)
        })
        .collect();
    let sampling = a.lines("SAMPLING");
    assert_eq!(sampling.len() as u64, n["sampling"]);
    for line in sampling {
        assert_eq!(tier[&offset_of(line)], "statistical", "{line}");
        assert!(line.contains("signature="), "{line}");
    }
    assert!(
        n["sampling"] * 10 < n["matching"],
        "sampling is the exception: {n:?}"
    );
}

#[test]
fn replay_audit_refuses_a_policy_of_another_version() {
    let dep = deploy(200, &[], &[]);
    let (policy, version) = other_policy(dep.dir.path());
    let a = audit(&dep, &["--policy", arg(&policy)]);
    assert_eq!(a.code, Some(2), "{}\n{}", a.stdout, a.stderr);
    let reference = Policy::reference().version();
    for needle in [reference.as_str(), version.as_str(), arg(&policy)] {
        assert!(a.stderr.contains(needle), "{needle} not in {}", a.stderr);
    }
    assert!(
        !a.stdout.contains("checked "),
        "nothing is recomputed: {}",
        a.stdout
    );
}

#[test]
fn replay_audit_flags_verdicts_computed_under_another_policy() {
    let dir = tempfile::tempdir().unwrap();
    let (policy, version) = other_policy(dir.path());
    let dep = deploy(1000, &[], &["--policy", arg(&policy)]);
    // The operator claims the reference policy: policy_version is not in the leaf.
    let reference = Policy::reference().version();
    let text = std::fs::read_to_string(&dep.verdicts).unwrap();
    assert!(text.contains(&version));
    std::fs::write(&dep.verdicts, text.replace(&version, &reference)).unwrap();
    let a = audit(&dep, &["--rollbacks", arg(&dep.rollbacks)]);
    assert_eq!(a.code, Some(1), "{}\n{}", a.stdout, a.stderr);
    let n = a.counts();
    let diffs = a.lines("DIFF");
    assert!(
        n["differing"] > 0 && diffs.len() as u64 == n["differing"],
        "{n:?}"
    );
    // The run's bound is higher: what it called concerning, the reference calls acceptable.
    for line in diffs {
        let (committed, recomputed) = line.split_once(" recomputed ").unwrap();
        assert!(committed.contains("severity=concerning"), "{line}");
        assert!(recomputed.contains("severity=acceptable"), "{line}");
    }
    // The verdicts whose severity the moved bound does not touch still match.
    assert!(n["matching"] > 0, "{n:?}");
}

#[test]
fn replay_audit_flags_a_forged_signature_left_without_its_rollback() {
    // All statistical and all signed: each batch of 64 checks 29 signatures at once, so
    // about half the forged ones go out sampled_out and are rolled back at the seal.
    let dep = deploy(3000, &["--urgency", "real_time", "--signed-fraction", "1"], &[]);
    let rollbacks = read_jsonl(&dep.rollbacks);
    assert!(!rollbacks.is_empty(), "the run rolled nothing back");
    let with = audit(&dep, &["--rollbacks", arg(&dep.rollbacks)]);
    assert_eq!(with.code, Some(0), "{}\n{}", with.stdout, with.stderr);
    let without = audit(&dep, &[]);
    assert_eq!(without.code, Some(1), "{}", without.stdout);
    let flagged: Vec<i64> = without
        .lines("DIFF")
        .into_iter()
        .filter(|l| l.contains("no committed rollback names this verdict"))
        .map(offset_of)
        .collect();
    let mut rolled: Vec<i64> = rollbacks
        .iter()
        .map(|r| r["input"]["offset"].as_i64().unwrap())
        .collect();
    rolled.sort();
    let mut flagged = flagged;
    flagged.sort();
    assert_eq!(flagged, rolled, "{}", without.stdout);
    assert_eq!(without.counts()["differing"], rolled.len() as u64);
}

#[test]
fn replay_audit_finds_input_that_was_never_decided() {
    let dep = deploy(500, &[], &[]);
    let lines: Vec<String> = std::fs::read_to_string(&dep.verdicts)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let (mut held, mut kept) = (Vec::new(), Vec::new());
    for (i, line) in lines.into_iter().enumerate() {
        if i % 97 == 5 {
            held.push(line)
        } else {
            kept.push(line)
        }
    }
    std::fs::write(&dep.verdicts, kept.join("\n") + "\n").unwrap();
    let a = audit(&dep, &["--dlq", arg(&dep.dlq)]);
    assert_eq!(a.code, Some(1), "{}\n{}", a.stdout, a.stderr);
    let mut missing: Vec<i64> = a.lines("MISSING").into_iter().map(offset_of).collect();
    missing.sort();
    let mut expected: Vec<i64> = held
        .iter()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["input"]["offset"]
                .as_i64()
                .unwrap()
        })
        .collect();
    expected.sort();
    assert_eq!(missing, expected);
    assert_eq!(a.counts()["missing"], expected.len() as u64);
}

#[test]
fn replay_audit_explains_a_replay_flag_only_by_an_earlier_sighting() {
    // Run 2 reads 100 records of run 1 again on the same --data-dir: they are replays there,
    // but the recomputation of run 2's input alone has not seen them.
    let first = deploy(400, &[], &[]);
    let d = first.dir.path();
    let (node, data) = (d.join("node.key"), d.join("data"));
    let second_input = d.join("second.jsonl");
    let mut text = String::from_utf8(
        ok(bizra()
            .args(["gen", "--count", "300", "--seed", "2"])
            .output()
            .unwrap())
        .stdout,
    )
    .unwrap();
    for line in std::fs::read_to_string(&first.input).unwrap().lines().take(100) {
        text += line;
        text.push('\n');
    }
    std::fs::write(&second_input, text).unwrap();
    let run = |input: &Path, name: &str| {
        let out = (
            d.join(format!("{name}.v.jsonl")),
            d.join(format!("{name}.c.jsonl")),
        );
        ok(bizra()
            .args(["run", "-q", "-w", "2", "--input"])
            .arg(input)
            .arg("--output")
            .arg(&out.0)
            .arg("--commitments")
            .arg(&out.1)
            .arg("--keyring")
            .arg(&first.keyring)
            .arg("--sampling-key")
            .arg(&first.sampling)
            .arg("--signing-key")
            .arg(&node)
            .arg("--data-dir")
            .arg(&data)
            .output()
            .unwrap());
        out
    };
    let one = run(&first.input, "one");
    let two = run(&second_input, "two");
    let replays = read_jsonl(&two.0)
        .iter()
        .filter(|v| v["verification"]["checks"]["replay"] == true)
        .count() as u64;
    assert!(replays >= 90, "{replays}");
    let concat = |a: &Path, b: &Path, name: &str| {
        let p = d.join(name);
        let text = std::fs::read_to_string(a).unwrap() + &std::fs::read_to_string(b).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    };
    let both = Deployment {
        dir: tempfile::tempdir().unwrap(),
        input: second_input.clone(),
        verdicts: concat(&one.0, &two.0, "both.v.jsonl"),
        commitments: concat(&one.1, &two.1, "both.c.jsonl"),
        rollbacks: first.rollbacks.clone(),
        dlq: first.dlq.clone(),
        keyring: first.keyring.clone(),
        sampling: first.sampling.clone(),
    };
    // Two inputs' verdicts in one file: the replayed one must be named.
    let a = audit(&both, &[]);
    assert_eq!(a.code, Some(2), "{}", a.stderr);
    assert!(a.stderr.contains("--topic"), "{}", a.stderr);
    // With run 1's verdicts, each replay flag has its earlier sighting.
    let a = audit(&both, &["--topic", arg(&second_input)]);
    assert_eq!(a.code, Some(0), "{}\n{}", a.stdout, a.stderr);
    let n = a.counts();
    assert!(n["history"] >= 90 && n["history"] <= replays, "{n:?}");
    assert_eq!(n["differing"], 0);
    // Without them, nothing explains the flags.
    let alone = Deployment {
        verdicts: two.0.clone(),
        commitments: two.1.clone(),
        ..both
    };
    let a = audit(&alone, &[]);
    assert_eq!(a.code, Some(1), "{}\n{}", a.stdout, a.stderr);
    let n = a.counts();
    assert_eq!(n["history"], 0);
    assert!(n["differing"] >= 90, "{n:?}");
    assert!(a.lines("DIFF").iter().all(|l| l.contains("replay=true")));
}

#[test]
fn replay_audit_reads_a_range_of_the_input_topic() {
    use crate::kafka::{produce, read_to_end, sigterm, topics, wait_for_all, write_jsonl};
    let broker = crate::broker::Broker::start();
    topics(&broker, 4);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    crate::kafka::keygen(d);
    let keyring = d.join("keyring.toml");
    // The generator's replays land in other partitions than their first sighting.
    let out = ok(bizra()
        .args(["gen", "--count", "2000", "--seed", "21", "--keyring-out"])
        .arg(&keyring)
        .output()
        .unwrap());
    let lines: Vec<Vec<u8>> = out
        .stdout
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    produce(&broker, &lines, 4);
    let mut run = crate::kafka::bizra(&broker, d, &["-w", "2", "--keyring", arg(&keyring)]);
    let (verdicts, dead) = wait_for_all(&broker, 2000, Duration::from_secs(120));
    assert!(sigterm(&mut run).success());
    let files = [
        ("v.jsonl", "bizra.verdicts"),
        ("c.jsonl", "bizra.commitments"),
        ("r.jsonl", "bizra.rollbacks"),
    ];
    for (file, topic) in files {
        write_jsonl(&d.join(file), &read_to_end(&broker, topic));
    }
    let audit = |from: &[&str]| {
        let out = bizra()
            .args(["audit", "replay", "-q", "-w", "2", "--brokers", &broker.addr()])
            .args(["--commitments", arg(&d.join("c.jsonl"))])
            .args(["--verdicts", arg(&d.join("v.jsonl"))])
            .args(["--rollbacks", arg(&d.join("r.jsonl"))])
            .args(["--keyring", arg(&keyring)])
            .arg("--sampling-key")
            .arg(crate::common::sampling_key(d))
            .args(from)
            .output()
            .unwrap();
        Audit {
            code: out.status.code(),
            stdout: String::from_utf8(out.stdout).unwrap(),
            stderr: String::from_utf8(out.stderr).unwrap(),
        }
    };
    let a = audit(&[]);
    assert_eq!(a.code, Some(0), "{}\n{}", a.stdout, a.stderr);
    let n = a.counts();
    assert_eq!(n["checked"], 2000);
    assert_eq!(
        n["matching"] + n["sampling"] + n["history"],
        verdicts.len() as u64
    );
    assert_eq!((n["dead_letters"], n["extra"]), (dead.len() as u64, 0));
    // From offset 250 of each partition: the verdicts before it are out of range, not extra,
    // and replays of ids first seen there are explained by them.
    let a = audit(&["--from-offset", "250"]);
    assert_eq!(a.code, Some(0), "{}\n{}", a.stdout, a.stderr);
    let n = a.counts();
    assert_eq!((n["checked"], n["extra"]), (1000, 0));
    assert_eq!(n["differing"] + n["missing"], 0);
}
