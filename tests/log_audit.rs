//! `bizra verify` over a whole history (issue 15, item 3): two embedded runs that continue
//! each shard's chain on one data directory pass it with their checkpoints; a deleted
//! commitment, a cut tail and an edited verdict each fail it with their own `FAIL` line. In
//! Kafka mode it reads the topics directly, once or following them with `/metrics`.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;
use serde_json::Value;

use crate::broker::Broker;
use crate::cli::{bizra, keygen, ok, read_jsonl};
use crate::common::{free_port, sampling_key, scrape, scrape_series};

/// The files a run writes.
struct History {
    verdicts: PathBuf,
    commitments: PathBuf,
    checkpoints: PathBuf,
}

fn history(dir: &Path, name: &str) -> History {
    History {
        verdicts: dir.join(format!("{name}.verdicts.jsonl")),
        commitments: dir.join(format!("{name}.commitments.jsonl")),
        checkpoints: dir.join(format!("{name}.checkpoints.jsonl")),
    }
}

/// `bizra run` on generated input (`seed`) with the test's keys and data directory.
fn run(dir: &Path, key: &Path, name: &str, seed: u64) -> History {
    let h = history(dir, name);
    ok(bizra()
        .args([
            "run",
            "-q",
            "-w",
            "2",
            "--gen",
            "2000",
            "--seed",
            &seed.to_string(),
        ])
        .arg("--signing-key")
        .arg(key)
        .arg("--sampling-key")
        .arg(sampling_key(dir))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--output")
        .arg(&h.verdicts)
        .arg("--commitments")
        .arg(&h.commitments)
        .arg("--checkpoints")
        .arg(&h.checkpoints)
        .output()
        .unwrap());
    h
}

fn concat(parts: &[&Path], to: &Path) {
    let text: String = parts
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    std::fs::write(to, text).unwrap();
}

fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn write_lines(p: &Path, lines: &[String]) {
    std::fs::write(p, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
}

/// `bizra verify` on `h` with `pubkey`: (exit success, stdout).
fn verify(h: &History, pubkey: &str) -> (bool, String) {
    let out = bizra()
        .arg("verify")
        .arg("--verdicts")
        .arg(&h.verdicts)
        .arg("--commitments")
        .arg(&h.commitments)
        .arg("--checkpoints")
        .arg(&h.checkpoints)
        .args(["--pubkey", pubkey])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn failing(h: &History, pubkey: &str, want: &str) -> String {
    let (success, text) = verify(h, pubkey);
    assert!(!success, "expected exit 1:\n{text}");
    assert!(
        text.lines().any(|l| l.starts_with("FAIL ") && l.contains(want)),
        "expected a FAIL line containing {want:?}:\n{text}"
    );
    text
}

#[test]
fn a_restarted_deployments_history_passes_and_each_cut_or_edit_fails() {
    let dir = tempfile::tempdir().unwrap();
    let (key, pubkey) = keygen(dir.path());
    let first = run(dir.path(), &key, "first", 1);
    let second = run(dir.path(), &key, "second", 2);
    let all = history(dir.path(), "all");
    concat(&[&first.verdicts, &second.verdicts], &all.verdicts);
    concat(&[&first.commitments, &second.commitments], &all.commitments);
    concat(&[&first.checkpoints, &second.checkpoints], &all.checkpoints);
    let cs = read_jsonl(&all.commitments);
    let second_starts = read_jsonl(&second.commitments)
        .iter()
        .map(|c| c["seq"].as_u64().unwrap())
        .min()
        .unwrap();
    assert!(second_starts > 0, "the second run continues the chains");

    let (success, text) = verify(&all, &pubkey);
    assert!(success, "{text}");
    let summary = text.lines().last().unwrap();
    assert!(
        summary.contains("4000 verdicts") && summary.ends_with(" 0 failures"),
        "{text}"
    );
    assert!(
        !summary.contains("(0 consistency checks)"),
        "the second run's checkpoints extend the first's: {summary}"
    );
    // The second run alone: its chains start past 0, as after a topic's retention. That
    // is noted, not failed, and its checkpoints cannot be checked.
    let (success, text) = verify(&second, &pubkey);
    assert!(
        success
            && text.contains(&format!("the log starts at seq {second_starts}"))
            && text.contains("cannot be checked against the log"),
        "{text}"
    );

    let pristine = lines(&all.commitments);
    // A commitment deleted from the middle of a chain.
    let mut cut = pristine.clone();
    let gone: Value = serde_json::from_str(&cut.remove(cs.len() / 3)).unwrap();
    write_lines(&all.commitments, &cut);
    failing(
        &all,
        &pubkey,
        &format!(
            "shard {}: commitments seq {}..={} (1) are missing: later commitments of this chain are present",
            gone["shard"], gone["seq"], gone["seq"]
        ),
    );
    failing(
        &all,
        &pubkey,
        &format!("no commitment for shard {} seq {}", gone["shard"], gone["seq"]),
    );

    // The last commitments cut: the last checkpoint names them.
    let mut cut = pristine.clone();
    cut.truncate(cut.len() - 2);
    write_lines(&all.commitments, &cut);
    failing(&all, &pubkey, "are missing: a signed checkpoint of size");
    // ... and the checkpoints of the second run cut too: its commitments are covered by none.
    let pristine_checkpoints = lines(&all.checkpoints);
    write_lines(&all.checkpoints, &lines(&first.checkpoints));
    failing(&all, &pubkey, "are not covered by a signed checkpoint");
    write_lines(&all.checkpoints, &pristine_checkpoints);
    write_lines(&all.commitments, &pristine);

    // A verdict's decision edited.
    let mut vs = lines(&all.verdicts);
    let i = vs
        .iter()
        .position(|l| l.contains("\"decision\":\"permit\""))
        .unwrap();
    vs[i] = vs[i].replacen("\"decision\":\"permit\"", "\"decision\":\"deny\"", 1);
    write_lines(&all.verdicts, &vs);
    let text = failing(
        &all,
        &pubkey,
        "decision \"deny\" does not follow from the committed fields",
    );
    assert!(text.contains(&format!("FAIL verdicts:{} (id ", i + 1)), "{text}");
    assert!(text.contains(" 1 failures"), "{text}");
}

/// `bizra verify --brokers` reads a Kafka deployment's topics: a clean history passes; a
/// forged commitment (a fork) fails; `--follow` serves its counts on `/metrics` and stops on
/// SIGTERM with the report.
#[test]
fn verify_reads_the_topics_once_or_following_them() {
    let broker = Broker::start();
    crate::kafka::topics(&broker, 2);
    let dir = tempfile::tempdir().unwrap();
    let pubkey = crate::kafka::keygen(dir.path());
    let lines = crate::kafka::generated(1_500, 0.0, false);
    crate::kafka::produce(&broker, &lines, 2);
    let mut run = crate::kafka::bizra(&broker, dir.path(), &["-w", "2"]);
    let (verdicts, _) = crate::kafka::wait_for_all(&broker, lines.len(), Duration::from_secs(120));
    assert!(crate::kafka::sigterm(&mut run).success());
    assert_eq!(verdicts.len(), lines.len());

    let once = |extra: &[&str]| -> Output {
        bizra()
            .args(["verify", "--brokers", &broker.addr(), "--pubkey", &pubkey])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = once(&[]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!("checked {} verdicts", lines.len())) && text.ends_with(" 0 failures\n"),
        "{text}"
    );
    // Another deployment name: no checkpoint verifies for its origins.
    let out = once(&["--deployment", "elsewhere"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        !out.status.success() && text.contains("not a checkpoint of elsewhere/bizra/shard/"),
        "{text}"
    );

    // Follow, with /metrics.
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut follower = bizra()
        .args(["verify", "--brokers", &broker.addr(), "--pubkey", &pubkey])
        .args(["--follow", "--grace-ms", "0", "--http", &addr])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(Instant::now() < deadline, "the follower does not serve --http");
        std::thread::sleep(Duration::from_millis(100));
    }
    let verdicts_read = "bizra_audit_records_total{kind=\"verdict\"}";
    let metrics = loop {
        let m = scrape_series(&addr);
        if m.get(verdicts_read).is_some_and(|n| *n as usize >= lines.len()) {
            break scrape(&addr);
        }
        assert!(Instant::now() < deadline, "the follower did not catch up: {m:?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        metrics.get("bizra_audit_failures_total"),
        Some(&0.0),
        "{metrics:?}"
    );
    // Caught up, it is ready; with no grace, its next judgement (about once a second) takes
    // in everything read: a clean history still has nothing to report.
    while !http_get(&addr, "/readyz").starts_with("HTTP/1.1 200") {
        assert!(Instant::now() < deadline, "the follower is not ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(2_500));
    let metrics = scrape(&addr);
    assert_eq!(
        metrics.get("bizra_audit_failures_total"),
        Some(&0.0),
        "{metrics:?}"
    );
    assert_eq!(metrics.get("bizra_audit_uncovered_commitments"), Some(&0.0));

    // A forged commitment arrives: a second, different commitment at a seq already taken.
    let commitments = crate::kafka::read_to_end(&broker, "bizra.commitments");
    let mut fork = commitments[0].clone();
    fork["leaves"][0] = Value::String("00".repeat(32));
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.addr())
        .create()
        .unwrap();
    let payload = fork.to_string();
    producer
        .send(BaseRecord::<(), str>::to("bizra.commitments").payload(&payload))
        .map_err(|(e, _)| e)
        .unwrap();
    producer.flush(Duration::from_secs(10)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while scrape(&addr)
        .get("bizra_audit_failures_total")
        .copied()
        .unwrap_or(0.0)
        == 0.0
    {
        assert!(Instant::now() < deadline, "the follower did not see the fork");
        std::thread::sleep(Duration::from_millis(200));
    }
    let status = crate::kafka::sigterm(&mut follower);
    let mut text = String::new();
    std::io::Read::read_to_string(follower.stdout.as_mut().unwrap(), &mut text).unwrap();
    assert_eq!(status.code(), Some(1), "{text}");
    assert!(
        text.contains("a fork: a second commitment with different content") && text.contains(" 1 forks"),
        "{text}"
    );
}

/// The raw HTTP response to `GET path`.
fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    raw
}
