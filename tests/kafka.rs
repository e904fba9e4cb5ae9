//! bizra against a real Kafka-compatible broker (tansu, sqlite storage): round trip with
//! bad records, offsets committed after delivery, restart after kill -9, several processes,
//! and a broker outage. Each test starts its own broker on a free port.
//!
//! The broker binary comes from `scripts/tansu` (run by `scripts/test`), found through
//! `BIZRA_TANSU` or `~/.cache/bizra/tansu/bin/tansu`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::Value;

fn tansu_bin() -> PathBuf {
    let p = std::env::var_os("BIZRA_TANSU")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/bizra/tansu/bin/tansu")
        });
    assert!(
        p.exists(),
        "tansu not found at {}: run scripts/tansu (scripts/test does)",
        p.display()
    );
    p
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A tansu broker with sqlite storage in a temporary directory.
pub struct Broker {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl Broker {
    pub fn start() -> Broker {
        let mut b = Broker {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
        };
        b.spawn();
        b
    }

    fn spawn(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let child = Command::new(tansu_bin())
            .current_dir(self.dir.path())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not listen on {}", self.port);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn create_topic(&self, name: &str, partitions: u32) {
        let out = Command::new(tansu_bin())
            .args(["topic", "create", name, "--partitions", &partitions.to_string()])
            .args(["--broker", &format!("tcp://127.0.0.1:{}", self.port)])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "topic create {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Kills the broker (its data stays on disk).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    #[allow(dead_code)] // used by the broker-outage test
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

fn topics(b: &Broker, input_partitions: u32) {
    b.create_topic("bizra.observations", input_partitions);
    for t in ["bizra.verdicts", "bizra.commitments", "bizra.dlq"] {
        b.create_topic(t, 1);
    }
}

/// Writes `lines` to the input topic, record i to partition i mod `partitions`.
fn produce(b: &Broker, lines: &[Vec<u8>], partitions: i32) {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", b.addr())
        .create()
        .unwrap();
    for (i, l) in lines.iter().enumerate() {
        let mut rec = BaseRecord::<(), [u8]>::to("bizra.observations")
            .payload(l.as_slice())
            .partition(i as i32 % partitions);
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((_, r)) => {
                    rec = r;
                    p.poll(Duration::from_millis(10));
                }
            }
        }
        p.poll(Duration::ZERO);
    }
    p.flush(Duration::from_secs(30)).unwrap();
}

fn generated(count: u64, bad: f64) -> Vec<Vec<u8>> {
    let out = Command::new(env!("CARGO_BIN_EXE_bizra"))
        .args([
            "gen",
            "--count",
            &count.to_string(),
            "--seed",
            "21",
            "--bad-fraction",
            &bad.to_string(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    out.stdout
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

/// Everything in `topic` (1 partition) from the start, as JSON, waiting until `until` holds.
fn read_all(b: &Broker, topic: &str, until: impl Fn(&[Value]) -> bool, timeout: Duration) -> Vec<Value> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", b.addr())
        .set("group.id", "bizra-test-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning).unwrap();
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline && !until(&out) {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            out.push(serde_json::from_slice(m.payload().unwrap()).unwrap());
        }
    }
    out
}

fn committed(b: &Broker, group: &str, partitions: i32) -> BTreeMap<i32, i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", b.addr())
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition("bizra.observations", p);
    }
    let got = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    got.elements()
        .iter()
        .map(|e| {
            (
                e.partition(),
                match e.offset() {
                    Offset::Offset(o) => o,
                    _ => -1,
                },
            )
        })
        .collect()
}

fn bizra(b: &Broker, dir: &Path, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_bizra"))
        .env("RUST_LOG", "warn")
        .args(["run", "-q", "--brokers", &b.addr(), "--signing-key"])
        .arg(dir.join("node.key"))
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn keygen(dir: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_bizra"))
        .args(["keygen", "--out"])
        .arg(dir.join("node.key"))
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn sigterm(c: &mut Child) -> std::process::ExitStatus {
    let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(s) = c.try_wait().unwrap() {
            return s;
        }
        assert!(Instant::now() < deadline, "bizra did not stop after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn key_of(v: &Value) -> (i64, i64) {
    (
        v["input"]["partition"].as_i64().unwrap(),
        v["input"]["offset"].as_i64().unwrap(),
    )
}

fn write_jsonl(path: &Path, vs: &[Value]) {
    std::fs::write(path, vs.iter().map(|v| format!("{v}\n")).collect::<String>()).unwrap();
}

fn verify(dir: &Path, pubkey: &str, verdicts: &[Value], commitments: &[Value]) {
    write_jsonl(&dir.join("v.jsonl"), verdicts);
    write_jsonl(&dir.join("c.jsonl"), commitments);
    let out = Command::new(env!("CARGO_BIN_EXE_bizra"))
        .arg("verify")
        .arg("--verdicts")
        .arg(dir.join("v.jsonl"))
        .arg("--commitments")
        .arg(dir.join("c.jsonl"))
        .args(["--pubkey", pubkey])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}

/// (a) + (e): 10,000 observations with 5 % bad over 8 partitions; SIGTERM at the end.
#[test]
fn round_trip_with_bad_records_and_graceful_stop() {
    let broker = Broker::start();
    topics(&broker, 8);
    let dir = tempfile::tempdir().unwrap();
    let pubkey = keygen(dir.path());
    let lines = generated(10_000, 0.05);
    produce(&broker, &lines, 8);

    let mut run = bizra(&broker, dir.path(), &["-w", "2"]);
    let expected_bad = lines
        .iter()
        .filter(|l| bizra_dataflows::decode::decode(l, &Default::default()).is_err())
        .count();
    let verdicts = read_all(
        &broker,
        "bizra.verdicts",
        |v| v.len() >= 10_000 - expected_bad,
        Duration::from_secs(120),
    );
    let dead = read_all(
        &broker,
        "bizra.dlq",
        |v| v.len() >= expected_bad,
        Duration::from_secs(30),
    );
    // Let the last epochs' offsets be committed, then stop.
    std::thread::sleep(Duration::from_secs(1));
    let status = sigterm(&mut run);
    let stderr = String::from_utf8_lossy(&run.wait_with_output().unwrap().stderr).into_owned();
    assert!(status.success(), "exit {status}: {stderr}");

    assert_eq!(verdicts.len() + dead.len(), 10_000, "one output per input");
    let mut seen: HashMap<(i64, i64), usize> = HashMap::new();
    for v in verdicts.iter().chain(&dead) {
        *seen.entry(key_of(v)).or_default() += 1;
    }
    assert_eq!(seen.len(), 10_000, "every (partition, offset) answered");
    assert!(seen.values().all(|n| *n == 1));
    assert_eq!(dead.len(), expected_bad);

    let commitments = read_all(&broker, "bizra.commitments", |_| false, Duration::from_secs(3));
    verify(dir.path(), &pubkey, &verdicts, &commitments);

    // (e) committed offsets = last offset + 1 = 1250 per partition.
    let c = committed(&broker, "bizra", 8);
    assert_eq!(c, (0..8).map(|p| (p, 1250)).collect::<BTreeMap<_, _>>());
}
