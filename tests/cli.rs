//! End-to-end behaviour of the `bizra` binary in embedded mode: one output per input,
//! identical verdicts on any worker/process layout, commitments that verify, clear errors.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

pub(crate) fn bizra() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bizra"));
    c.env("RUST_LOG", "warn");
    c
}

pub(crate) fn ok(out: Output) -> Output {
    assert!(
        out.status.success(),
        "bizra failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub(crate) fn read_jsonl(p: &Path) -> Vec<Value> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

struct RunFiles {
    verdicts: PathBuf,
    commitments: PathBuf,
    dlq: PathBuf,
}

fn files(dir: &Path, name: &str) -> RunFiles {
    RunFiles {
        verdicts: dir.join(format!("{name}.verdicts.jsonl")),
        commitments: dir.join(format!("{name}.commitments.jsonl")),
        dlq: dir.join(format!("{name}.dlq.jsonl")),
    }
}

fn run_args(cmd: &mut Command, f: &RunFiles, key: &Path) {
    cmd.arg("run")
        .arg("--output")
        .arg(&f.verdicts)
        .arg("--commitments")
        .arg(&f.commitments)
        .arg("--dlq")
        .arg(&f.dlq)
        .arg("--signing-key")
        .arg(key)
        .arg("--sampling-key")
        .arg(crate::common::sampling_key(key.parent().unwrap()))
        .arg("-q");
}

pub(crate) fn keygen(dir: &Path) -> (PathBuf, String) {
    let key = dir.join("node.key");
    let out = ok(bizra().args(["keygen", "--out"]).arg(&key).output().unwrap());
    (key, String::from_utf8(out.stdout).unwrap().trim().to_owned())
}

fn verify(f: &RunFiles, pubkey: &str) -> String {
    let out = bizra()
        .arg("verify")
        .arg("--verdicts")
        .arg(&f.verdicts)
        .arg("--commitments")
        .arg(&f.commitments)
        .args(["--pubkey", pubkey])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "verify failed:\n{text}");
    text
}

fn comparable(v: &Value) -> (i64, Value) {
    (v["input"]["offset"].as_i64().unwrap(), crate::common::stable(v))
}

fn verdict_map(p: &Path) -> BTreeMap<i64, Value> {
    let mut m = BTreeMap::new();
    for v in read_jsonl(p) {
        let (k, v) = comparable(&v);
        assert!(m.insert(k, v).is_none(), "two verdicts for offset {k}");
    }
    m
}

#[test]
fn every_input_gets_exactly_one_verdict_or_dead_letter() {
    let dir = tempfile::tempdir().unwrap();
    let (key, pubkey) = keygen(dir.path());
    let input = dir.path().join("in.jsonl");
    let gen = ok(bizra()
        .args(["gen", "--count", "2000", "--seed", "9", "--bad-fraction", "0.1"])
        .output()
        .unwrap());
    // Add lines the generator does not make: blank lines are skipped, the rest count.
    let mut text = String::from_utf8(gen.stdout).unwrap();
    text.push_str("\n\n{\"id\":\"huge\",\"data\":\"");
    text.push_str(&"x".repeat(1_100_000));
    text.push_str("\"}\n\u{7f}\u{0}garbage\n{\"id\":\"last\",\"data\":\"ok\"}");
    std::fs::write(&input, &text).unwrap();
    let f = files(dir.path(), "one");
    let mut cmd = bizra();
    run_args(&mut cmd, &f, &key);
    ok(cmd.arg("--input").arg(&input).args(["-w", "2"]).output().unwrap());

    let verdicts = read_jsonl(&f.verdicts);
    let dead = read_jsonl(&f.dlq);
    let records = text.lines().filter(|l| !l.trim().is_empty()).count();
    assert_eq!(verdicts.len() + dead.len(), records);
    let mut offsets: Vec<i64> = verdicts
        .iter()
        .chain(dead.iter())
        .map(|v| v["input"]["offset"].as_i64().unwrap())
        .collect();
    offsets.sort();
    offsets.dedup();
    assert_eq!(offsets.len(), records, "each offset answered once");
    assert!(dead.iter().any(|d| d["error"] == "payload_too_large"));
    assert!(dead.iter().any(|d| d["error"] == "not_json"));
    assert!(verdicts.iter().any(|v| v["id"] == "last"));
    for d in &dead {
        assert!(d["message"].as_str().unwrap().len() > 5);
        assert!(d["raw_b64"].as_str().unwrap().len() <= 4 * 64 * 1024 / 3 + 4);
    }
    assert!(verify(&f, &pubkey).contains(" 0 failures"));
}

#[test]
fn verdicts_are_identical_on_1_and_4_workers_and_2_processes() {
    let dir = tempfile::tempdir().unwrap();
    let (key, pubkey) = keygen(dir.path());
    let n = "4000";
    let gen_args = ["--gen", n, "--seed", "5", "--bad-fraction", "0.05"];

    let one = files(dir.path(), "w1");
    let mut cmd = bizra();
    run_args(&mut cmd, &one, &key);
    ok(cmd.args(gen_args).args(["-w", "1"]).output().unwrap());

    let four = files(dir.path(), "w4");
    let mut cmd = bizra();
    run_args(&mut cmd, &four, &key);
    ok(cmd.args(gen_args).args(["-w", "4"]).output().unwrap());

    let hostfile = crate::common::two_process_hostfile(dir.path());
    let cluster = files(dir.path(), "n2");
    let mut children = Vec::new();
    for p in ["0", "1"] {
        let mut cmd = bizra();
        run_args(&mut cmd, &cluster, &key);
        cmd.args(gen_args)
            .args(["-w", "2", "-n", "2", "-p", p])
            .arg("--hostfile")
            .arg(&hostfile);
        children.push(cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap());
    }
    for c in children {
        ok(c.wait_with_output().unwrap());
    }

    let base = verdict_map(&one.verdicts);
    assert!(base.len() > 3500, "{} verdicts", base.len());
    for other in [&four, &cluster] {
        let m = verdict_map(&other.verdicts);
        assert_eq!(m.len(), base.len());
        for (k, v) in &base {
            assert_eq!(Some(v), m.get(k), "verdict for offset {k} differs");
        }
        assert_eq!(read_jsonl(&other.dlq), read_jsonl(&other.dlq));
        assert_eq!(read_jsonl(&other.dlq).len(), read_jsonl(&one.dlq).len());
    }
    for f in [&one, &four, &cluster] {
        assert!(verify(f, &pubkey).contains(" 0 failures"));
    }
}

#[test]
fn a_tampered_verdict_fails_verification() {
    let dir = tempfile::tempdir().unwrap();
    let (key, pubkey) = keygen(dir.path());
    let f = files(dir.path(), "t");
    let mut cmd = bizra();
    run_args(&mut cmd, &f, &key);
    ok(cmd.args(["--gen", "500", "--seed", "2"]).output().unwrap());
    let mut vs = read_jsonl(&f.verdicts);
    vs[3]["value"]["value"] = serde_json::json!(0.123);
    let text: String = vs.iter().map(|v| format!("{v}\n")).collect();
    std::fs::write(&f.verdicts, text).unwrap();
    let out = bizra()
        .arg("verify")
        .arg("--verdicts")
        .arg(&f.verdicts)
        .arg("--commitments")
        .arg(&f.commitments)
        .args(["--pubkey", &pubkey])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("FAIL") && text.contains(" 1 failures"), "{text}");
}

#[test]
fn bad_config_or_keyring_exits_2_naming_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[verification]\nbatch_size = \"many\"\n").unwrap();
    let out = bizra()
        .args(["run", "--gen", "1", "-q", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml") && err.contains("batch_size"), "{err}");

    let ring = dir.path().join("ring.toml");
    std::fs::write(&ring, "[keys]\nalice = \"not base64!\"\n").unwrap();
    let out = bizra()
        .args(["run", "--gen", "1", "-q", "--keyring"])
        .arg(&ring)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ring.toml") && err.contains("alice"), "{err}");
}

#[test]
fn run_gen_reaches_every_severity_and_decision() {
    let out = ok(bizra()
        .args([
            "run", "--gen", "3000", "--seed", "11", "-w", "2", "--output", "-", "-q",
        ])
        .output()
        .unwrap());
    let text = String::from_utf8(out.stdout).unwrap();
    let vs: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(vs.len(), 3000);
    for sev in [
        "exemplary",
        "acceptable",
        "concerning",
        "problematic",
        "prohibited",
    ] {
        assert!(vs.iter().any(|v| v["ethics"]["severity"] == sev), "no {sev}");
    }
    for d in ["permit", "review", "deny"] {
        assert!(vs.iter().any(|v| v["decision"] == d), "no {d}");
    }
    for s in ["ok", "bad", "unknown_key", "absent", "sampled_out"] {
        assert!(
            vs.iter().any(|v| v["verification"]["checks"]["signature"] == s),
            "no signature {s}"
        );
    }
    assert!(vs.iter().any(|v| v["verification"]["checks"]["replay"] == true));
    assert!(vs
        .iter()
        .any(|v| v["verification"]["checks"]["digest"] == "mismatch"));
    for v in vs.iter().filter(|v| v["verification"]["tier"] == "full") {
        assert!(v["proof"].is_object());
    }
}
