//! The fault campaign (issue 13): against the test broker with sqlite storage, while input
//! streams in, bizra is killed with SIGKILL at random moments (during start-up, mid-stream
//! and during a graceful stop), the broker is killed and restarted and paused (SIGSTOP), and
//! one process of a two-process cluster is killed. At the end every input offset must have
//! a verdict or dead letter, duplicates must be identical (but for `batch`, `proof` and
//! `latency_ms`), the final SIGTERM must exit 0, and no run may hang.
//!
//! This test is the short form (a few kill points, a 3 s pause). `scripts/chaos` runs the
//! long form with the release binary: `BIZRA_CHAOS_KILLS` kill points (default here 4),
//! `BIZRA_CHAOS_PAUSE_S` seconds of SIGSTOP (3), `BIZRA_CHAOS_INPUTS` records (3,000),
//! `BIZRA_CHAOS_SEED`, and `BIZRA_BIN` for the binary under test.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;

use crate::broker::Broker;
use crate::kafka::{by_input, generated, keygen, topics, wait_for_all};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn binary() -> PathBuf {
    std::env::var_os("BIZRA_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_bizra")))
}

const PARTITIONS: i32 = 4;

/// The campaign's processes: one bizra, or a two-process cluster.
struct Runs {
    bin: PathBuf,
    broker_addr: String,
    key: PathBuf,
    hostfile: PathBuf,
    /// The runs that did not end in time, by round and role.
    hangs: Vec<String>,
    /// Each run's stderr goes to `runs/<n>.log` here (the last one is shown on a failure).
    logs: PathBuf,
    started: usize,
}

impl Runs {
    fn spawn(&mut self, cluster: Option<&str>) -> Child {
        self.started += 1;
        let log = std::fs::File::create(self.logs.join(format!("{}.log", self.started))).unwrap();
        let mut c = Command::new(&self.bin);
        c.env("RUST_LOG", "error")
            .args(["run", "-q", "--brokers", &self.broker_addr, "--signing-key"])
            .arg(&self.key)
            .arg("--sampling-key")
            .arg(crate::common::sampling_key(self.key.parent().unwrap()))
            .stdout(Stdio::null())
            .stderr(log);
        match cluster {
            Some(p) => c
                .args(["-w", "1", "-n", "2", "-p", p, "--hostfile"])
                .arg(&self.hostfile),
            None => c.args(["-w", "2"]),
        };
        c.spawn().unwrap()
    }

    /// Waits for `child` to exit within `timeout`; a run that does not is a hang (killed).
    fn reap(
        &mut self,
        child: &mut Child,
        timeout: Duration,
        what: String,
    ) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return Some(s);
            }
            if Instant::now() > deadline {
                self.hangs.push(what);
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill").args([sig, &pid.to_string()]).status();
}

/// Streams `lines` into the input topic at a steady pace; counts what the broker took.
fn stream(
    addr: String,
    lines: Vec<Vec<u8>>,
    done: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let p: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &addr)
            .set("message.timeout.ms", "0")
            .set("enable.idempotence", "true")
            .create()
            .unwrap();
        for (i, l) in lines.iter().enumerate() {
            let mut rec = BaseRecord::<(), [u8]>::to("bizra.observations")
                .payload(l.as_slice())
                .partition(i as i32 % PARTITIONS);
            loop {
                match p.send(rec) {
                    Ok(()) => break,
                    Err((_, r)) => {
                        rec = r;
                        p.poll(Duration::from_millis(10));
                    }
                }
            }
            p.poll(Duration::from_millis(2));
        }
        while p.flush(Duration::from_secs(1)).is_err() {}
        sent.store(lines.len(), Ordering::Relaxed);
        done.store(true, Ordering::Relaxed);
    })
}

/// Runs the campaign; returns the summary line. Panics if anything was lost, conflicts or hung.
pub fn campaign(dir: &Path) -> String {
    let kills: usize = env_or("BIZRA_CHAOS_KILLS", 4);
    let pause_s: u64 = env_or("BIZRA_CHAOS_PAUSE_S", 3);
    let inputs: u64 = env_or("BIZRA_CHAOS_INPUTS", 3_000);
    let seed: u64 = env_or("BIZRA_CHAOS_SEED", u64::from(std::process::id()));
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut broker = Broker::start();
    topics(&broker, PARTITIONS as u32);
    let pubkey = keygen(dir);
    let hostfile = crate::common::two_process_hostfile(dir);
    let mut runs = Runs {
        bin: binary(),
        broker_addr: broker.addr(),
        key: dir.join("node.key"),
        hostfile,
        hangs: Vec::new(),
        logs: dir.join("runs"),
        started: 0,
    };
    std::fs::create_dir_all(&runs.logs).unwrap();
    // With repeated ids: the replay window survives the kills, so their verdicts must too.
    let lines = generated(inputs, 0.05, true);
    let (done, sent) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    let producer = stream(broker.addr(), lines, done.clone(), sent.clone());

    let (mut broker_kills, mut pauses, mut cluster_kills) = (0, 0, 0);
    for round in 0..kills {
        let mut run = runs.spawn(None);
        // Where this round's kill lands: during start-up, mid-stream, or in a graceful stop.
        match round % 3 {
            0 => std::thread::sleep(Duration::from_millis(rng.gen_range(0..400))),
            1 => std::thread::sleep(Duration::from_millis(rng.gen_range(500..4_000))),
            _ => {
                std::thread::sleep(Duration::from_millis(rng.gen_range(1_000..3_000)));
                signal(run.id(), "-TERM");
                std::thread::sleep(Duration::from_millis(rng.gen_range(0..300)));
            }
        }
        signal(run.id(), "-KILL");
        runs.reap(
            &mut run,
            Duration::from_secs(10),
            format!("round {round}: killed run"),
        );
        // The broker's own faults, while a bizra runs.
        if round % 4 == 1 || round % 4 == 3 {
            let mut run = runs.spawn(None);
            std::thread::sleep(Duration::from_millis(rng.gen_range(500..2_000)));
            if round % 4 == 1 {
                broker.stop();
                std::thread::sleep(Duration::from_millis(rng.gen_range(500..2_000)));
                broker.restart();
                broker_kills += 1;
            } else {
                broker.signal("-STOP");
                std::thread::sleep(Duration::from_secs(pause_s));
                broker.signal("-CONT");
                pauses += 1;
            }
            std::thread::sleep(Duration::from_millis(rng.gen_range(500..2_000)));
            signal(run.id(), "-KILL");
            runs.reap(
                &mut run,
                Duration::from_secs(10),
                format!("round {round}: killed run after a broker fault"),
            );
        }
        // A process of a cluster dies: the other must end by itself.
        if round % 4 == 2 {
            let mut a = runs.spawn(Some("0"));
            let mut b = runs.spawn(Some("1"));
            std::thread::sleep(Duration::from_millis(rng.gen_range(1_500..4_000)));
            signal(b.id(), "-KILL");
            runs.reap(
                &mut b,
                Duration::from_secs(10),
                format!("round {round}: killed cluster process"),
            );
            // Connected, it ends at once; killed before the cluster formed, after the 30 s
            // of pipeline.cluster_timeout_ms.
            runs.reap(
                &mut a,
                Duration::from_secs(45),
                format!("round {round}: cluster survivor"),
            );
            cluster_kills += 1;
        }
    }
    // The final run reads everything and stops gracefully.
    producer.join().unwrap();
    assert!(done.load(Ordering::Relaxed));
    let n = sent.load(Ordering::Relaxed);
    let mut last = runs.spawn(None);
    let (verdicts, dead) = wait_for_all(&broker, n, Duration::from_secs(300));
    signal(last.id(), "-TERM");
    let status = runs.reap(&mut last, Duration::from_secs(60), "final graceful stop".into());
    let graceful = status.is_some_and(|s| s.success());

    // The decision log survived it all: every chain, checkpoint, verdict and rollback in the
    // topics verifies (a verdict whose batch a kill left uncommitted must have a committed
    // copy).
    let audit = Command::new(&runs.bin)
        .args([
            "verify",
            "--grace-ms",
            "0",
            "--brokers",
            &broker.addr(),
            "--pubkey",
            &pubkey,
        ])
        .output()
        .unwrap();
    let audit_text = String::from_utf8_lossy(&audit.stdout).into_owned();
    let audit_line = audit_text.lines().last().unwrap_or_default().to_owned();
    let mut all = by_input(&verdicts);
    for (k, v) in by_input(&dead) {
        all.entry(k).or_default().extend(v);
    }
    let lost = n - all.len().min(n);
    let conflicts = all.values().filter(|vs| vs.iter().any(|v| v != &vs[0])).count();
    let duplicates: usize = all.values().map(|vs| vs.len() - 1).sum();
    let summary = format!(
        "chaos: seed {seed}, kill points {kills}, broker kills {broker_kills}, broker pauses {pauses} ({pause_s} s), cluster kills {cluster_kills}; inputs {n}, outputs {}, duplicates {duplicates}, lost {lost}, conflicting duplicates {conflicts}, hangs {} {:?}, final stop {}; verify: {audit_line}",
        verdicts.len() + dead.len(),
        runs.hangs.len(),
        runs.hangs,
        if graceful { "exit 0" } else { "FAILED" },
    );
    eprintln!("{summary}");
    let by_partition: HashMap<i64, usize> = all.keys().fold(HashMap::new(), |mut m, k| {
        *m.entry(k.0).or_default() += 1;
        m
    });
    let last_log =
        std::fs::read_to_string(runs.logs.join(format!("{}.log", runs.started))).unwrap_or_default();
    assert_eq!(
        lost, 0,
        "{summary} ({by_partition:?})\nlast run's stderr:\n{last_log}"
    );
    assert_eq!(conflicts, 0, "{summary}");
    assert!(runs.hangs.is_empty(), "{summary}");
    assert!(graceful, "{summary}");
    assert!(
        audit.status.success(),
        "{summary}\n{audit_text}{}",
        String::from_utf8_lossy(&audit.stderr)
    );
    summary
}

#[test]
fn a_short_fault_campaign_loses_nothing_and_never_hangs() {
    let dir = tempfile::tempdir().unwrap();
    campaign(dir.path());
}
