//! The episodic archive end to end (issue 5): `bizra run --data-dir` writes one episode per
//! commitment, `bizra audit` reads, verifies and searches it, tampering and kill -9 are found
//! or survived, and a bad data dir fails at start.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::common::{audit_verified_episodes, bizra_gen};

fn bizra() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bizra"));
    c.env("RUST_LOG", "warn");
    c
}

fn run_gen(dir: &Path, n: usize, extra_config: &str) -> Output {
    let cfg = dir.join("bizra.toml");
    std::fs::write(&cfg, extra_config).unwrap();
    bizra_gen(n)
        .arg("--data-dir")
        .arg(dir)
        .arg("--output")
        .arg(dir.join("verdicts.jsonl"))
        .arg("--commitments")
        .arg(dir.join("commitments.jsonl"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap()
}

fn audit(args: &[&str], dir: &Path) -> Output {
    bizra()
        .arg("audit")
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .output()
        .unwrap()
}

fn jsonl(p: &Path) -> Vec<Value> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Every commitment has exactly one stored episode, holding exactly its verdicts, and the
/// chains verify; `audit get` finds a verdict's episode and `audit similar` its neighbours.
/// A tiny writer queue exercises backpressure: nothing is dropped.
#[test]
fn every_sealed_batch_is_archived_once_and_the_archive_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_gen(dir.path(), 3000, "[archive]\nqueue_episodes = 1\npreset = 3\n");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let verdicts = jsonl(&dir.path().join("verdicts.jsonl"));
    let commitments = jsonl(&dir.path().join("commitments.jsonl"));

    assert_eq!(audit_verified_episodes(dir.path()), commitments.len());

    // Each verdict's episode: found by id, with the verdict's batch position and the root
    // of the commitment of that batch.
    let roots: HashMap<(u64, u64), &str> = commitments
        .iter()
        .map(|c| {
            (
                (c["shard"].as_u64().unwrap(), c["seq"].as_u64().unwrap()),
                c["root"].as_str().unwrap(),
            )
        })
        .collect();
    for v in verdicts.iter().step_by(97) {
        let id = v["id"].as_str().unwrap();
        let got = audit(&["get", id], dir.path());
        assert!(got.status.success(), "{id}: {}", text(&got.stderr));
        let found: Vec<Value> = text(&got.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let b = &v["batch"];
        let key = (b["shard"].as_u64().unwrap(), b["seq"].as_u64().unwrap());
        let e = found
            .iter()
            .map(|f| &f["episode"])
            .find(|e| (e["shard"].as_u64().unwrap(), e["seq"].as_u64().unwrap()) == key)
            .unwrap_or_else(|| panic!("{id}: no episode for batch {key:?}"));
        assert_eq!(e["root"].as_str().unwrap(), roots[&key]);
        // A record is an array: [id, input, payload_digest, tier, valid, severity, permitted,
        // overall, value, clarity, decision, conditions, leaf_index, features].
        let r = &e["records"][b["leaf_index"].as_u64().unwrap() as usize];
        assert_eq!(r[0], v["id"]);
        assert_eq!(r[2], v["payload_digest"]);
        let decision = ["permit", "review", "deny"][r[10].as_u64().unwrap() as usize];
        assert_eq!(decision, v["decision"]);
        assert_eq!(r[7].as_f64(), v["ethics"]["overall"].as_f64());
        let conditions: Vec<&Value> = r[11]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| &e["conditions"][i.as_u64().unwrap() as usize])
            .collect();
        let expected: Vec<&Value> = v["ethics"]["conditions"].as_array().unwrap().iter().collect();
        assert_eq!(conditions, expected);
    }
    let missing = audit(&["get", "no-such-id"], dir.path());
    assert!(!missing.status.success());

    // Similar: some record with features, and k neighbours that are not itself.
    let any = verdicts.iter().find_map(|v| {
        let id = v["id"].as_str().unwrap();
        let s = audit(&["similar", id, "-k", "3"], dir.path());
        s.status.success().then(|| (id.to_owned(), text(&s.stdout)))
    });
    let (id, lines) = any.expect("some record has features");
    let near: Vec<Value> = lines.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(near.len(), 3, "{lines}");
    assert!(near.iter().all(|n| n["id"] != id.as_str()));
}

/// One flipped byte in a segment is a break in that file; the exit status says so.
#[test]
fn a_flipped_byte_in_a_segment_is_reported_with_its_file() {
    let dir = tempfile::tempdir().unwrap();
    assert!(run_gen(dir.path(), 1500, "").status.success());
    let seg = dir.path().join("archive/shard-00001/seg-000000000000.xz");
    let mut bytes = std::fs::read(&seg).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(&seg, bytes).unwrap();
    let v = audit(&["verify"], dir.path());
    assert!(!v.status.success());
    let report = text(&v.stdout);
    assert!(report.contains("shard-00001/seg-000000000000.xz"), "{report}");
    assert!(
        report
            .lines()
            .any(|l| l.starts_with("shard 00000") && l.ends_with("ok")),
        "{report}"
    );
}

/// kill -9 while episodes are being written: the archive verifies (a torn tail is a
/// warning), and a restarted run continues the chains.
#[test]
fn kill_9_while_writing_leaves_an_archive_that_verifies_and_continues() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = bizra_gen(10_000_000)
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--output", "/dev/null"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let seg = dir.path().join("archive/shard-00000");
    for _ in 0..600 {
        std::thread::sleep(Duration::from_millis(50));
        let written = std::fs::read_dir(&seg)
            .map(|d| d.flatten().any(|f| f.metadata().is_ok_and(|m| m.len() > 20_000)))
            .unwrap_or(false);
        if written {
            break;
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let v = audit(&["verify"], dir.path());
    assert!(v.status.success(), "{}{}", text(&v.stdout), text(&v.stderr));

    assert!(run_gen(dir.path(), 500, "").status.success());
    let v = audit(&["verify"], dir.path());
    assert!(v.status.success(), "{}{}", text(&v.stdout), text(&v.stderr));
    let segments = std::fs::read_dir(&seg).unwrap().count();
    assert!(segments >= 2, "the restart starts a new segment");
}

#[test]
fn a_missing_or_unwritable_data_dir_fails_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    for bad in [dir.path().join("no/such/dir"), file] {
        let out = bizra()
            .args(["run", "-q", "--gen", "10", "--output", "/dev/null", "--data-dir"])
            .arg(&bad)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = text(&out.stderr);
        assert!(err.contains("--data-dir"), "{err}");
    }
    let out = audit(&["verify"], &dir.path().join("nothing-here"));
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("expected an archive"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_data_dir_in_use_by_another_process_fails_at_start() {
    let dir = tempfile::tempdir().unwrap();
    // Stand in for a running bizra: hold the lock the way it does.
    let lock = std::fs::File::create(dir.path().join("lock")).unwrap();
    lock.try_lock().unwrap();
    let run = || {
        bizra()
            .args(["run", "-q", "--gen", "10", "--output", "/dev/null", "--data-dir"])
            .arg(dir.path())
            .output()
            .unwrap()
    };
    let out = run();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("in use by another bizra process"), "{err}");
    assert!(!dir.path().join("archive").exists(), "nothing written: {err}");
    drop(lock);
    let out = run();
    assert!(out.status.success(), "{}", text(&out.stderr));
}
