//! The replay guard across kill -9 and restart (issue 14, item 5), with input that repeats
//! ids: every verdict of the restarted runs — replay flag included — is the one an
//! uninterrupted run gives, and records read again after a restart get the verdicts their
//! first copies got. Embedded mode with `--data-dir`, and Kafka mode.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::broker::Broker;
use crate::cli::{bizra, ok};
use crate::common::{sampling_key, stable};
use crate::kafka::{by_input, keygen, produce, setup, sigterm, wait_for_all};

/// Generated input with a share of repeated ids (`bizra gen`, seed 33).
fn repeating(count: u64, replay_fraction: f64) -> Vec<Vec<u8>> {
    let out = ok(Command::new(env!("CARGO_BIN_EXE_bizra"))
        .args([
            "gen",
            "--count",
            &count.to_string(),
            "--seed",
            "33",
            "--bad-fraction",
            "0.02",
        ])
        .args(["--replay-fraction", &replay_fraction.to_string()])
        .output()
        .unwrap());
    out.stdout
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

/// Verdicts by input offset (embedded mode: the line number), in their stable form. A last
/// line cut by a kill is left out.
fn by_offset(path: &Path) -> BTreeMap<i64, Value> {
    let text = std::fs::read_to_string(path).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines
        .iter()
        .enumerate()
        .filter_map(|(i, l)| match serde_json::from_str::<Value>(l) {
            Ok(v) => Some(v),
            Err(e) if i + 1 == lines.len() && !text.ends_with('\n') => {
                eprintln!("left out a torn last line: {e}");
                None
            }
            Err(e) => panic!("{}: line {}: {e}", path.display(), i + 1),
        })
        .map(|v| (v["input"]["offset"].as_i64().unwrap(), stable(&v)))
        .collect()
}

fn embedded(dir: &Path, input: &Path, data: &Path, out: &Path) -> Command {
    let mut c = bizra();
    c.args(["run", "-q", "-w", "2", "--input"])
        .arg(input)
        .arg("--signing-key")
        .arg(dir.join("node.key"))
        .arg("--sampling-key")
        .arg(sampling_key(dir))
        .arg("--data-dir")
        .arg(data)
        .arg("--output")
        .arg(out)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

/// kill -9 at several moments (during start-up, early, late), restart on the same data
/// directory each time, and run to the end: the last run's verdicts, and every verdict the
/// killed runs wrote, equal an uninterrupted run's.
#[test]
fn embedded_runs_killed_and_restarted_on_one_data_dir_judge_as_an_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    keygen(dir.path());
    let lines = repeating(30_000, 0.05);
    let input = dir.path().join("in.jsonl");
    std::fs::write(
        &input,
        lines
            .iter()
            .flat_map(|l| [l.as_slice(), b"\n"].concat())
            .collect::<Vec<u8>>(),
    )
    .unwrap();

    let whole = dir.path().join("whole.jsonl");
    ok(
        embedded(dir.path(), &input, &dir.path().join("data-whole"), &whole)
            .output()
            .unwrap(),
    );
    let want = by_offset(&whole);
    let replays = want
        .values()
        .filter(|v| v["verification"]["checks"]["replay"] == true)
        .count();
    assert!(replays > 500, "the input repeats ids: {replays} replays");

    let data = dir.path().join("data");
    let log = data.join("replay").join("replay.log");
    let log_len = || std::fs::metadata(&log).map_or(0, |m| m.len());
    // Kill points: during start-up, then once the replay state on disk has grown past a
    // size (so that the restart reads back sightings of records it will read again).
    for (k, past) in [None, Some(100_000u64), Some(350_000)].into_iter().enumerate() {
        let out = dir.path().join(format!("killed-{k}.jsonl"));
        let mut child = embedded(dir.path(), &input, &data, &out).spawn().unwrap();
        match past {
            None => std::thread::sleep(Duration::from_millis(50)),
            Some(bytes) => {
                let deadline = std::time::Instant::now() + Duration::from_secs(120);
                while log_len() < bytes && child.try_wait().unwrap().is_none() {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "the replay state did not grow"
                    );
                    std::thread::sleep(Duration::from_millis(5));
                }
                assert!(child.try_wait().unwrap().is_none(), "killed before the end");
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();
        if out.exists() {
            for (offset, v) in by_offset(&out) {
                assert_eq!(Some(&v), want.get(&offset), "killed run {k}: offset {offset}");
            }
        }
    }
    let last = dir.path().join("last.jsonl");
    ok(embedded(dir.path(), &input, &data, &last).output().unwrap());
    assert_eq!(by_offset(&last), want);
}

fn kafka_run(b: &Broker, dir: &Path) -> Child {
    crate::kafka::bizra(b, dir, &["-w", "2"])
}

/// For each id, how many of its input offsets are flagged as replays; by the input, one
/// fewer than its occurrences (the window holds the whole input).
fn replay_counts(
    verdicts: &HashMap<(i64, i64), Vec<Value>>,
) -> (HashMap<String, usize>, HashMap<String, usize>) {
    let (mut seen, mut flagged) = (HashMap::new(), HashMap::new());
    for copies in verdicts.values() {
        let v = &copies[0];
        let id = v["id"].as_str().unwrap().to_owned();
        *seen.entry(id.clone()).or_insert(0) += 1;
        if v["verification"]["checks"]["replay"] == true {
            *flagged.entry(id).or_insert(0) += 1;
        }
    }
    (seen, flagged)
}

/// Kafka mode, input with repeated ids spread over 4 partitions: kill -9 at three moments,
/// restart each time, run to the end. Every copy of a verdict read again is identical to the
/// first (replay flag included), and every id is flagged as a replay exactly as often as it
/// repeats — which fails if the window forgets what was committed before a restart.
#[test]
fn kafka_runs_killed_and_restarted_keep_the_replay_window_and_repeat_their_verdicts() {
    let (broker, dir) = setup(4);
    let lines = repeating(6_000, 0.05);
    produce(&broker, &lines, 4);

    for after_ms in [300u64, 2_500, 5_000] {
        let mut run = kafka_run(&broker, dir.path());
        std::thread::sleep(Duration::from_millis(after_ms));
        run.kill().unwrap();
        run.wait().unwrap();
    }
    let mut run = kafka_run(&broker, dir.path());
    let (verdicts, dead) = wait_for_all(&broker, lines.len(), Duration::from_secs(240));
    assert!(sigterm(&mut run).success());
    let by = by_input(&verdicts);
    assert_eq!(
        by.len() + by_input(&dead).len(),
        lines.len(),
        "every input has an output"
    );
    let mut reread = 0;
    for (at, copies) in &by {
        reread += copies.len() - 1;
        for c in &copies[1..] {
            assert_eq!(
                c, &copies[0],
                "input {at:?}: a copy read again differs from the first"
            );
        }
    }
    let (seen, flagged) = replay_counts(&by);
    let repeated = seen.values().filter(|&&n| n > 1).count();
    assert!(repeated > 100, "the input repeats {repeated} ids");
    for (id, n) in &seen {
        assert_eq!(
            flagged.get(id).copied().unwrap_or(0),
            n - 1,
            "{id} occurs {n} times"
        );
    }
    eprintln!("{reread} verdicts read again after kills, all identical to their first copies");
}
