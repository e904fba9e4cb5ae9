//! Embedded mode against a hostile producer and an unlucky operator (issue 13): a record
//! that would make a huge verdict, lists that would exhaust memory, a record dated in the
//! far future, a full disk, a writer thread that dies, a process of a cluster that is killed,
//! a data directory that does not exist yet, and key files that are not private.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn bizra() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bizra"));
    c.env("RUST_LOG", "warn");
    c
}

fn read_jsonl(p: &Path) -> Vec<Value> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn keygen(dir: &Path) -> PathBuf {
    let key = dir.join("node.key");
    let out = bizra().args(["keygen", "--out"]).arg(&key).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    key
}

/// Waits for `child` to exit within `timeout` (killing it and failing if it does not);
/// returns its status, its stderr and how long it ran.
fn finish(mut child: Child, started: Instant, timeout: Duration) -> (ExitStatus, String, Duration) {
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            return (status, err, started.elapsed());
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!("bizra still running after {timeout:?}: it hangs");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The one `bizra: fatal:` line of `stderr`, checked to be the only one.
fn fatal_line(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("bizra: fatal:"))
        .collect();
    assert_eq!(lines.len(), 1, "expected one fatal line, found:\n{stderr}");
    lines[0].to_owned()
}

/// One observation per line, `i` → id `h-i`.
fn observation(i: usize, context: &str) -> String {
    format!(r#"{{"id":"h-{i}","data":"payload {i}","urgency":"batch","context":{{{context}}}}}"#)
}

/// Runs bizra on `lines` (one verdict file, one dead-letter file) with `config`.
fn run_lines(dir: &Path, lines: &[String], config: &str) -> (Vec<String>, Vec<Value>) {
    let key = dir.join("node.key");
    if !key.exists() {
        keygen(dir);
    }
    let input = dir.join("in.jsonl");
    std::fs::write(&input, lines.join("\n")).unwrap();
    let cfg = dir.join("c.toml");
    std::fs::write(&cfg, config).unwrap();
    let (out, dlq) = (dir.join("v.jsonl"), dir.join("d.jsonl"));
    let st = bizra()
        .args(["run", "-q", "--input"])
        .arg(&input)
        .arg("--output")
        .arg(&out)
        .arg("--dlq")
        .arg(&dlq)
        .arg("--config")
        .arg(&cfg)
        .arg("--signing-key")
        .arg(&key)
        .output()
        .unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let verdicts = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    (verdicts, read_jsonl(&dlq))
}

#[test]
fn long_echoed_texts_are_clipped_so_a_verdict_stays_small() {
    let dir = tempfile::tempdir().unwrap();
    // Within the default caps: 8 harms of 4,000 bytes are listed in a condition.
    let harm = format!("\"{}\"", "h".repeat(4000));
    let harms = vec![harm; 8].join(",");
    let within = observation(1, &format!(r#""potential_harms":[{harms}],"reversibility":0"#));
    // The record that once made a 1.2 MB verdict, with the text cap raised to let it in.
    let long = "h".repeat(600_000);
    let raised = observation(
        2,
        &format!(r#""potential_harms":["{long}","{long}"],"reversibility":0"#),
    );
    for (record, config, length) in [
        (within, "", "4000"),
        (raised, "[limits]\nmax_text_bytes = 1048576\n", "600000"),
    ] {
        let (verdicts, dead) = run_lines(
            dir.path(),
            &[observation(0, ""), record, observation(3, "")],
            config,
        );
        assert!(dead.is_empty(), "{dead:?}");
        assert_eq!(verdicts.len(), 3, "one verdict per record");
        let big = verdicts
            .iter()
            .find(|l| l.contains("\"h-1\"") || l.contains("\"h-2\""))
            .unwrap();
        assert!(big.len() < 16 * 1024, "the verdict is {} bytes", big.len());
        let v: Value = serde_json::from_str(big).unwrap();
        let conditions = v["ethics"]["conditions"].to_string();
        assert!(
            conditions.contains(&format!("truncated, {length} bytes")),
            "{conditions}"
        );
    }
}

#[test]
fn oversized_context_lists_and_texts_are_dead_letters_naming_field_and_cap() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path());
    let many = vec!["\"a\""; 480_000].join(",");
    let wide = "w".repeat(5000);
    let input = dir.path().join("in.jsonl");
    std::fs::write(
        &input,
        [
            observation(0, &format!(r#""affected":[{many}]"#)),
            observation(1, &format!(r#""domain":"{wide}""#)),
            observation(2, ""),
        ]
        .join("\n"),
    )
    .unwrap();
    let (out, dlq) = (dir.path().join("v.jsonl"), dir.path().join("d.jsonl"));
    let st = bizra()
        .args(["run", "-q", "--input"])
        .arg(&input)
        .arg("--output")
        .arg(&out)
        .arg("--dlq")
        .arg(&dlq)
        .arg("--signing-key")
        .arg(&key)
        .output()
        .unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    assert_eq!(read_jsonl(&out).len(), 1);
    let dead = read_jsonl(&dlq);
    assert_eq!(dead.len(), 2);
    for d in &dead {
        assert_eq!(d["error"], "invalid_field", "{d}");
        assert!(d["input"]["offset"].is_i64());
    }
    let by_offset = |o: i64| dead.iter().find(|d| d["input"]["offset"] == o).unwrap()["message"].to_string();
    let m0 = by_offset(0);
    assert!(
        m0.contains("context.affected") && m0.contains("limits.max_context_items"),
        "{m0}"
    );
    let m1 = by_offset(1);
    assert!(
        m1.contains("context.domain") && m1.contains("limits.max_text_bytes"),
        "{m1}"
    );
}

/// Window statistics of `path` as comparable rows (the counts; latency varies run to run).
fn window_counts(path: &Path) -> Vec<String> {
    let mut rows: Vec<String> = read_jsonl(path)
        .iter()
        .map(|w| {
            let k = |f: &str| w[f].to_string();
            [
                "window_end_ms",
                "domain",
                "tier",
                "severity",
                "count",
                "permit",
                "review",
                "deny",
                "invalid",
            ]
            .map(k)
            .join(" ")
        })
        .collect();
    rows.sort();
    rows
}

#[test]
fn a_record_dated_far_in_the_future_does_not_blind_the_windows() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path());
    // 3,000 records an hour old, 200 ms apart, in order; then the same with one record
    // dated 9999-12-31 in the middle.
    let start = bizra_dataflows::operators::wall_ms() - 3_600_000;
    let dated = |i: usize| {
        let ts = bizra_dataflows::dead_letter::rfc3339_ms(start + i as i64 * 200);
        format!(r#"{{"id":"t-{i}","data":"payload {i}","timestamp":"{ts}"}}"#)
    };
    let plain: Vec<String> = (0..3000).map(dated).collect();
    let mut poisoned = plain.clone();
    poisoned.insert(
        1500,
        r#"{"id":"poison","data":"x","timestamp":"9999-12-31T23:59:59Z"}"#.into(),
    );
    let run = |name: &str, lines: &[String], config: &str| {
        let input = dir.path().join(format!("{name}.jsonl"));
        std::fs::write(&input, lines.join("\n")).unwrap();
        let cfg = dir.path().join(format!("{name}.toml"));
        std::fs::write(&cfg, config).unwrap();
        let stats = dir.path().join(format!("{name}.stats.jsonl"));
        let st = bizra()
            .args(["run", "-q", "-w", "1", "--output", "/dev/null", "--input"])
            .arg(&input)
            .arg("--stats")
            .arg(&stats)
            .arg("--config")
            .arg(&cfg)
            .arg("--signing-key")
            .arg(&key)
            .output()
            .unwrap();
        assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
        stats
    };
    // Epochs of 100 records, so that most records come after the poison's epoch.
    let small = "[pipeline]\nepoch_records = 100\n";
    let clean = window_counts(&run("clean", &plain, small));
    // Without the clamp the poison moves the watermark to the year 9999, and the records
    // after it are late: what this test guards against.
    let unclamped = run(
        "unclamped",
        &poisoned,
        &format!("{small}[stats]\nmax_future_ms = 9223372036854775807\n"),
    );
    let counted: i64 = read_jsonl(&unclamped)
        .iter()
        .map(|w| w["count"].as_i64().unwrap())
        .sum();
    assert!(
        counted < 6 * 2000,
        "without the clamp {counted} samples are counted"
    );
    let poisoned = run("poisoned", &poisoned, small);
    // Each record counts in window_ms / slide_ms = 6 windows; none may be late.
    let counted: i64 = read_jsonl(&poisoned)
        .iter()
        .map(|w| w["count"].as_i64().unwrap())
        .sum();
    assert_eq!(
        counted,
        6 * 3001,
        "every record of the poisoned run is counted, the poison once"
    );
    // The poison sits at its ingest time: every window before it is as in the clean run.
    let now = bizra_dataflows::operators::wall_ms() - 600_000;
    let old: Vec<String> = window_counts(&poisoned)
        .into_iter()
        .filter(|r| r.split(' ').next().unwrap().parse::<i64>().unwrap() < now)
        .collect();
    assert_eq!(old, clean);
}

#[test]
fn an_output_on_a_full_disk_ends_the_run_with_one_line() {
    let started = Instant::now();
    let child = bizra()
        .args([
            "run",
            "-q",
            "--gen",
            "20000000",
            "-w",
            "2",
            "--output",
            "/dev/full",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (status, stderr, took) = finish(child, started, Duration::from_secs(60));
    assert!(!status.success());
    let line = fatal_line(&stderr);
    assert!(
        line.contains("/dev/full") && line.contains("No space left"),
        "{line}"
    );
    assert!(took < Duration::from_secs(30), "took {took:?}");
}

/// A config with epochs of 64 records, so that the first batch is sealed and archived within
/// moments even in a debug build.
fn small_epochs(dir: &Path) -> PathBuf {
    let cfg = dir.join("small-epochs.toml");
    std::fs::write(&cfg, "[pipeline]\nepoch_records = 64\n").unwrap();
    cfg
}

/// A tmpfs of `kib` KiB at a new directory, unmounted when dropped. Needs root, or a user
/// namespace (`unshare`), which the machines we test on have.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn new(kib: u32) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={kib}k"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(
            st.success(),
            "mounting a small tmpfs needs root (the disk-full tests run as root)"
        );
        SmallDisk { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

#[test]
fn a_full_disk_under_the_data_dir_ends_the_run_within_seconds() {
    let disk = SmallDisk::new(64);
    let data = disk.path().join("data");
    let started = Instant::now();
    let child = bizra()
        .args([
            "run",
            "-q",
            "--gen",
            "20000000",
            "-w",
            "2",
            "--output",
            "/dev/null",
            "--data-dir",
        ])
        .arg(&data)
        .arg("--config")
        .arg(small_epochs(disk.path()))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (status, stderr, took) = finish(child, started, Duration::from_secs(90));
    assert!(!status.success());
    let line = fatal_line(&stderr);
    assert!(line.contains("No space left on device"), "{line}");
    assert!(took < Duration::from_secs(20), "took {took:?}");
}

#[test]
fn an_archive_writer_panic_ends_the_run_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let child = bizra()
        .env("BIZRA_FAULTS", "archive_writer_panic")
        .args([
            "run",
            "-q",
            "--gen",
            "20000000",
            "-w",
            "2",
            "--output",
            "/dev/null",
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .arg("--config")
        .arg(small_epochs(dir.path()))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (status, stderr, took) = finish(child, started, Duration::from_secs(60));
    assert!(!status.success());
    let line = fatal_line(&stderr);
    assert!(
        line.contains("panicked") && line.contains("archive_writer_panic"),
        "{line}"
    );
    assert!(took < Duration::from_secs(20), "took {took:?}");
}

#[test]
fn a_killed_process_of_a_cluster_ends_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let hostfile = crate::common::two_process_hostfile(dir.path());
    let spawn = |p: &str| {
        bizra()
            .args([
                "run",
                "-q",
                "--gen",
                "50000000",
                "-w",
                "1",
                "-n",
                "2",
                "-p",
                p,
                "--output",
                "/dev/null",
                "--hostfile",
            ])
            .arg(&hostfile)
            .arg("--sampling-key")
            .arg(crate::common::sampling_key(dir.path()))
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let first = spawn("0");
    let mut second = spawn("1");
    std::thread::sleep(Duration::from_secs(3));
    assert!(second.try_wait().unwrap().is_none(), "the cluster is running");
    second.kill().unwrap();
    second.wait().unwrap();
    let killed = Instant::now();
    let (status, stderr, took) = finish(first, killed, Duration::from_secs(30));
    assert!(!status.success());
    let line = fatal_line(&stderr);
    assert!(line.contains("cluster"), "{line}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

/// A peer that dies before the cluster forms (or never starts) must not leave the others
/// waiting for ever: they end after `pipeline.cluster_timeout_ms`.
#[test]
fn a_cluster_whose_peer_never_comes_ends_after_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let hostfile = crate::common::two_process_hostfile(dir.path());
    let cfg = dir.path().join("timeout.toml");
    std::fs::write(&cfg, "[pipeline]\ncluster_timeout_ms = 2000\n").unwrap();
    let started = Instant::now();
    let alone = bizra()
        .args([
            "run",
            "-q",
            "--gen",
            "1000",
            "-w",
            "1",
            "-n",
            "2",
            "-p",
            "0",
            "--output",
            "/dev/null",
        ])
        .arg("--hostfile")
        .arg(&hostfile)
        .arg("--config")
        .arg(&cfg)
        .arg("--sampling-key")
        .arg(crate::common::sampling_key(dir.path()))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (status, stderr, took) = finish(alone, started, Duration::from_secs(30));
    assert!(!status.success());
    let line = fatal_line(&stderr);
    assert!(line.contains("cluster_timeout_ms = 2000"), "{line}");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(10),
        "took {took:?}"
    );
}

#[test]
fn a_missing_data_dir_is_created_on_the_first_run() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let st = bizra()
        .current_dir(dir.path())
        .args([
            "run",
            "-q",
            "--gen",
            "200",
            "--output",
            "/dev/null",
            "--data-dir",
            "./data",
        ])
        .output()
        .unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    assert!(data.join("archive").is_dir());
    let st = bizra()
        .args(["run", "-q", "--gen", "10", "--output", "/dev/null", "--data-dir"])
        .arg(dir.path().join("no/such/data"))
        .output()
        .unwrap();
    assert_eq!(st.status.code(), Some(1));
    let err = String::from_utf8_lossy(&st.stderr);
    assert!(err.contains("parent directory does not exist"), "{err}");
}

#[cfg(unix)]
#[test]
fn keygen_writes_a_private_file_and_never_overwrites_or_follows_a_link() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("node.key");
    let gen = |force: bool| {
        let mut c = bizra();
        c.args(["keygen", "--out"]).arg(&key);
        if force {
            c.arg("--force");
        }
        c.output().unwrap()
    };
    let first = gen(false);
    assert!(first.status.success());
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let text = std::fs::read_to_string(&key).unwrap();
    let again = gen(false);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    assert_eq!(std::fs::read_to_string(&key).unwrap(), text, "the key is kept");
    assert!(gen(true).status.success());
    assert_ne!(
        std::fs::read_to_string(&key).unwrap(),
        text,
        "--force replaces it"
    );
    // A link is refused, with or without --force, and its target is untouched.
    let target = dir.path().join("target");
    std::fs::write(&target, "precious").unwrap();
    std::fs::remove_file(&key).unwrap();
    std::os::unix::fs::symlink(&target, &key).unwrap();
    for force in [false, true] {
        let out = gen(force);
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("symbolic link"));
    }
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious");
    // No temporary file is left behind.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("tmp"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[cfg(unix)]
#[test]
fn a_key_file_readable_by_others_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path());
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = bizra()
        .args([
            "run",
            "-q",
            "--gen",
            "10",
            "--output",
            "/dev/null",
            "--signing-key",
        ])
        .arg(&key)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("0644") && err.contains("chmod 600"), "{err}");
}

/// Peak resident memory of a running process (kB), from `/proc/PID/status`.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Runs bizra on `input` and returns its peak RSS in MiB.
pub fn peak_rss_mib(input: &Path, extra: &[&str]) -> u64 {
    let mut child = bizra()
        .args(["run", "-q", "-w", "2", "--output", "/dev/null", "--input"])
        .arg(input)
        .args(extra)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut peak = 0;
    let started = Instant::now();
    loop {
        if let Some(kib) = peak_rss_kib(child.id()) {
            peak = peak.max(kib);
        }
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success());
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(300), "still running");
        std::thread::sleep(Duration::from_millis(10));
    }
    peak / 1024
}

/// Writes `n` records of `items` harms of `item_bytes` each: lists within the caps when
/// `items` ≤ 1024 and items are ≤ 4096 bytes, past them otherwise.
pub fn hostile_input(path: &Path, n: usize, items: usize, item_bytes: usize) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let list = vec![format!("\"{}\"", "x".repeat(item_bytes)); items].join(",");
    for i in 0..n {
        writeln!(
            f,
            r#"{{"id":"m-{i}","data":"p{i}","urgency":"batch","context":{{"potential_harms":[{list}]}}}}"#
        )
        .unwrap();
    }
}

/// The byte budget bounds what is in flight: the same hostile stream (records of 240 KB,
/// within every cap) with a budget of 4 MiB stays far below the peak it reaches when the
/// budget is lifted and the reader runs ahead of the pipeline. (The figures at the defaults,
/// with maximum-size records, are in docs/BENCHMARKS.md: `scripts/hostile-memory`.)
#[test]
fn the_byte_budget_bounds_memory_for_large_records() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    hostile_input(&input, 240, 1000, 240);
    let cfg = |budget: usize| {
        let p = dir.path().join(format!("budget-{budget}.toml"));
        std::fs::write(&p, format!("[pipeline]\nmax_inflight_bytes = {budget}\n")).unwrap();
        p
    };
    let (small, lifted) = (cfg(5 << 20), cfg(1 << 34));
    // What the process holds anyway (the replay window, thread stacks, …), on tiny records.
    let tiny = dir.path().join("tiny.jsonl");
    std::fs::write(
        &tiny,
        (0..240)
            .map(|i| format!("{{\"id\":\"t-{i}\",\"data\":\"d\"}}\n"))
            .collect::<String>(),
    )
    .unwrap();
    let base = peak_rss_mib(&tiny, &[]);
    let bounded = peak_rss_mib(&input, &["--config", small.to_str().unwrap()]) - base;
    let unbounded = peak_rss_mib(&input, &["--config", lifted.to_str().unwrap()]) - base;
    assert!(
        bounded * 2 < unbounded && bounded < 48,
        "peak RSS above the {base} MiB base: {bounded} MiB with a 5 MiB budget, {unbounded} MiB without"
    );
}
