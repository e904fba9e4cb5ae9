//! Helpers shared by the test modules.

use serde_json::Value;

/// The fields of a verdict (or dead letter) that must be identical however often and on
/// whatever layout it is computed (SPEC §1.2). Removed: `batch`, `proof`, `latency_ms`, a dead
/// letter's `at`, and for the statistical tier what follows from which items share a batch
/// (the sampled signature outcome, `valid`, `confidence`, `reason`, and through `verified` the
/// value and everything computed from it).
pub fn stable(v: &Value) -> Value {
    let mut v = v.clone();
    let o = v.as_object_mut().expect("a JSON object");
    for k in ["batch", "proof", "latency_ms", "at"] {
        o.remove(k);
    }
    if o.get("verification").is_some_and(|x| x["tier"] == "statistical") {
        for k in ["value", "permitted", "decision", "snr", "consistency"] {
            o.remove(k);
        }
        let ver = o["verification"].as_object_mut().expect("verification object");
        for k in ["valid", "confidence", "reason"] {
            ver.remove(k);
        }
        ver["checks"]
            .as_object_mut()
            .expect("checks object")
            .remove("signature");
    }
    v
}

/// A TCP port that was free a moment ago (defined with the test broker, which the Kafka bench
/// shares).
pub use crate::broker::free_port;

/// `dir/sampling.key`, the deployment's sampling secret (`bizra keygen --sampling`), made on
/// first use: the processes of a cluster must share one, and runs that continue each other
/// keep their replay buckets with it.
pub fn sampling_key(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("sampling.key");
    if !path.exists() {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_bizra"))
            .args(["keygen", "--sampling", "--out"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    path
}

/// Writes `dir/hosts`, a hostfile for a two-process timely cluster on free local ports.
pub fn two_process_hostfile(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("hosts");
    std::fs::write(
        &path,
        format!("127.0.0.1:{}\n127.0.0.1:{}\n", free_port(), free_port()),
    )
    .unwrap();
    path
}

/// Scrapes `http://ADDR/metrics`, checks every line of the exposition parses (and with
/// `promtool check metrics`, when installed, that it lints clean), and returns each metric
/// name with the sum of its series.
pub fn scrape(addr: &str) -> std::collections::HashMap<String, f64> {
    let mut sums = std::collections::HashMap::new();
    for (series, value) in scrape_series(addr) {
        let name = series.split('{').next().unwrap().to_owned();
        *sums.entry(name).or_insert(0.0) += value;
    }
    sums
}

/// Scrapes `http://ADDR/metrics` as [`scrape`] does, and returns every series (name with
/// its labels, as exposed) with its value.
pub fn scrape_series(addr: &str) -> std::collections::HashMap<String, f64> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to --http");
    write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut out = std::collections::HashMap::new();
    for line in body.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') && name.starts_with("bizra_"),
            "bad name in {line:?}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            assert!(
                labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')),
                "bad labels in {line:?}"
            );
        }
        out.insert(series.to_owned(), value);
    }
    if let Ok(mut child) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        child.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        // promtool lints (e.g. on naming) exit 3; a parse error exits 1.
        assert_ne!(
            out.status.code(),
            Some(1),
            "promtool: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// Runs `bizra audit verify --data-dir DIR`, asserts that every chain verifies, and returns
/// how many episodes it verified (the sum of its per-shard lines).
pub fn audit_verified_episodes(data_dir: &std::path::Path) -> usize {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bizra"))
        .args(["audit", "verify", "--data-dir"])
        .arg(data_dir)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // "shard 00000: 43 episodes verified, index 0..43, root …: ok"
    report
        .lines()
        .filter_map(|l| l.strip_prefix("shard "))
        .map(|l| {
            let n = l.split(": ").nth(1).and_then(|r| r.split(' ').next());
            n.and_then(|n| n.parse::<usize>().ok())
                .unwrap_or_else(|| panic!("unexpected report line {l:?}"))
        })
        .sum()
}

/// `bizra run -q -w 2 --signed-fraction 0 --gen N` (quiet logs): the generated stream the
/// end-to-end tests build on; callers add outputs, `--data-dir`, `--config` and so on.
pub fn bizra_gen(n: usize) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_bizra"));
    c.args([
        "run",
        "-q",
        "-w",
        "2",
        "--signed-fraction",
        "0",
        "--gen",
        &n.to_string(),
    ])
    .env("RUST_LOG", "warn");
    c
}
