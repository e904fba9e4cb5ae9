//! Kafka mode against faults (issue 13): a broker that refuses records, a record that would
//! make a huge verdict, security settings the broker cannot accept, a broker that goes away
//! (the circuit breaker and `/readyz`), partitions added while running, processes whose
//! clocks disagree, and a worker slower than the others (issue 16).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;
use serde_json::Value;

use crate::broker::Broker;
use crate::common::free_port;
use crate::kafka::{
    bizra, bizra_with_env, by_input, committed, generated, keygen, produce, produce_paced, setup, sigterm,
    topics, wait_for_all,
};
use crate::proxy::Fault;

/// The HTTP status of `GET http://ADDR/PATH`, or 0 when nothing answers.
fn http_status(addr: &str, path: &str) -> u16 {
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return 0;
    };
    let _ = write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    raw.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

/// Waits until `f` holds, checking every 100 ms; false after `timeout`.
fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

fn circuit_state(http: &str) -> f64 {
    crate::common::scrape(http)
        .get("bizra_kafka_circuit_breaker_state")
        .copied()
        .unwrap_or(-1.0)
}

#[test]
fn a_record_the_broker_refuses_becomes_a_dead_letter_and_the_stream_goes_on() {
    // The broker refuses any batch holding a verdict whose id ends in "-refused": bizra must
    // find which record of the batch it was, and dead-letter only that one.
    let broker = Broker::proxied(Fault::Refuse(b"-refused\",\"input\""));
    topics(&broker, 2);
    let dir = tempfile::tempdir().unwrap();
    keygen(dir.path());
    let mut lines = generated(600, 0.0, false);
    lines.insert(
        100,
        br#"{"id":"x-refused","data":"one","urgency":"batch"}"#.to_vec(),
    );
    lines.insert(301, br#"{"id":"y-refused","data":"two"}"#.to_vec());
    // The record that once made a 1.2 MB verdict and stopped Kafka mode (its harms are over
    // the default text cap, raised below).
    let long = "h".repeat(600_000);
    lines.insert(
        450,
        format!(r#"{{"id":"long-harms","data":"x","context":{{"potential_harms":["{long}","{long}"],"reversibility":0}}}}"#)
            .into_bytes(),
    );
    let n = lines.len();
    produce(&broker, &lines, 2);
    // The text cap raised, to let the long harms in; verdicts uncompressed, for the proxy.
    let cfg = dir.path().join("long.toml");
    std::fs::write(
        &cfg,
        "[limits]\nmax_text_bytes = 1048576\n[kafka.producer_options]\n\"compression.type\" = \"none\"\n",
    )
    .unwrap();
    // The producer not idempotent: tansu 0.6 answers the sequence gap that a refused batch
    // leaves with UNKNOWN_SERVER_ERROR, where Apache Kafka answers
    // OUT_OF_ORDER_SEQUENCE_NUMBER and librdkafka bumps the epoch (src/faults.rs).
    let mut run = Command::new(env!("CARGO_BIN_EXE_bizra"))
        .env("RUST_LOG", "warn")
        .env("BIZRA_FAULTS", "producer_not_idempotent")
        .args(["run", "-q", "--brokers", &broker.addr(), "--signing-key"])
        .arg(dir.path().join("node.key"))
        .arg("--sampling-key")
        .arg(crate::common::sampling_key(dir.path()))
        .args(["-w", "2", "--config", cfg.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let (verdicts, dead) = wait_for_all(&broker, n, Duration::from_secs(120));
    assert_eq!(
        by_input(&verdicts).len() + by_input(&dead).len(),
        n,
        "every input answered"
    );
    let refused: Vec<&Value> = dead.iter().filter(|d| d["error"] == "produce_refused").collect();
    assert_eq!(refused.len(), 2, "{dead:?}");
    for d in &refused {
        let m = d["message"].as_str().unwrap();
        assert!(m.contains("-refused"), "{m}");
        assert!(d["input"]["topic"] == "bizra.observations" && d["input"]["offset"].is_i64());
    }
    assert!(verdicts
        .iter()
        .all(|v| !v["id"].as_str().unwrap().ends_with("-refused")));
    let long = verdicts
        .iter()
        .find(|v| v["id"] == "long-harms")
        .expect("its verdict");
    assert!(long.to_string().len() < 16 * 1024);
    let status = sigterm(&mut run);
    assert!(status.success(), "exit {status}");
    // Everything was committed: refused records do not hold back their partition.
    let c = committed(&broker, "bizra", 2);
    let total: i64 = c.values().sum();
    assert_eq!(total, n as i64, "{c:?}");
}

/// Security settings the broker cannot accept end start-up at once with a line naming the
/// cause, well before the connect timeout.
#[test]
fn tls_or_sasl_against_a_plaintext_listener_fails_fast_and_clearly() {
    let (broker, dir) = setup(1);
    for (protocol, extra) in [
        ("ssl", ""),
        (
            "sasl_plaintext",
            "sasl_mechanism = \"PLAIN\"\nsasl_username = \"u\"\nsasl_password = \"p\"\n",
        ),
    ] {
        let cfg = dir.path().join(format!("{protocol}.toml"));
        std::fs::write(
            &cfg,
            format!("[kafka]\nsecurity_protocol = \"{protocol}\"\nconnect_timeout_ms = 60000\n{extra}"),
        )
        .unwrap();
        let started = Instant::now();
        let mut child = bizra(&broker, dir.path(), &["--config", cfg.to_str().unwrap()]);
        let done = eventually(Duration::from_secs(30), || child.try_wait().unwrap().is_some());
        if !done {
            let _ = child.kill();
        }
        let out = child.wait_with_output().unwrap();
        assert!(done, "{protocol}: still running after 30 s");
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("bizra:")).collect();
        assert_eq!(lines.len(), 1, "{protocol}: {err}");
        assert!(lines[0].contains(protocol), "{protocol}: {}", lines[0]);
        assert!(started.elapsed() < Duration::from_secs(30));
    }
}

/// Produces one record every `every` until `stop`; counts them.
fn trickle(
    broker: &Broker,
    every: Duration,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
) -> std::thread::JoinHandle<()> {
    let addr = broker.addr();
    std::thread::spawn(move || {
        let p: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &addr)
            .set("message.timeout.ms", "0")
            .create()
            .unwrap();
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) {
            let line = format!(r#"{{"id":"trickle-{i}","data":"d{i}"}}"#);
            if p.send(BaseRecord::<(), str>::to("bizra.observations").payload(&line))
                .is_ok()
            {
                i += 1;
                sent.store(i, Ordering::Relaxed);
            }
            p.poll(every);
        }
        let _ = p.flush(Duration::from_secs(60));
    })
}

#[test]
fn the_breaker_opens_when_the_broker_goes_away_and_closes_when_it_is_back() {
    let (mut broker, dir) = setup(1);
    let cfg = dir.path().join("breaker.toml");
    std::fs::write(&cfg, "[kafka.breaker]\nopen_ms = 2000\nack_timeout_ms = 3000\n").unwrap();
    let http = format!("127.0.0.1:{}", free_port());
    let mut run = bizra(
        &broker,
        dir.path(),
        &["--config", cfg.to_str().unwrap(), "--http", &http],
    );
    assert!(eventually(Duration::from_secs(30), || http_status(
        &http, "/readyz"
    ) == 200));
    assert_eq!(circuit_state(&http), 0.0);
    let (stop, sent) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    let producer = trickle(&broker, Duration::from_millis(20), stop.clone(), sent.clone());
    assert!(eventually(Duration::from_secs(10), || sent
        .load(Ordering::Relaxed)
        > 20));

    broker.stop();
    assert!(
        eventually(Duration::from_secs(30), || circuit_state(&http) == 2.0),
        "the breaker opens during the outage"
    );
    assert_eq!(http_status(&http, "/readyz"), 503);
    assert!(run.try_wait().unwrap().is_none(), "bizra waits for the broker");

    broker.restart();
    assert!(
        eventually(Duration::from_secs(60), || circuit_state(&http) == 0.0),
        "the breaker closes once the broker is back"
    );
    assert!(eventually(Duration::from_secs(10), || http_status(
        &http, "/readyz"
    ) == 200));
    stop.store(true, Ordering::Relaxed);
    producer.join().unwrap();
    let n = sent.load(Ordering::Relaxed);
    let (verdicts, dead) = wait_for_all(&broker, n, Duration::from_secs(120));
    assert!(sigterm(&mut run).success());
    assert_eq!(
        by_input(&verdicts).len() + by_input(&dead).len(),
        n,
        "nothing lost"
    );
}

#[test]
fn partitions_added_to_the_input_topic_are_read_without_a_restart() {
    // The topic has three partitions, of which the proxy shows bizra only the first until
    // `visible` is raised (tansu 0.6 cannot add partitions).
    let visible = Arc::new(AtomicI32::new(1));
    let broker = Broker::proxied(Fault::HidePartitions {
        topic: "bizra.observations",
        client_id: "bizra-under-test",
        visible: visible.clone(),
    });
    topics(&broker, 3);
    let dir = tempfile::tempdir().unwrap();
    keygen(dir.path());
    let cfg = dir.path().join("discover.toml");
    std::fs::write(
        &cfg,
        "[kafka]\npartition_discovery_ms = 500\n[kafka.options]\n\"client.id\" = \"bizra-under-test\"\n",
    )
    .unwrap();
    let lines = generated(90, 0.0, false);
    produce(&broker, &lines, 3);
    let mut run = bizra(
        &broker,
        dir.path(),
        &["-w", "2", "--config", cfg.to_str().unwrap()],
    );
    let partitions = |b: &Broker| -> std::collections::BTreeMap<i64, usize> {
        let mut m = std::collections::BTreeMap::new();
        for v in crate::kafka::read_to_end(b, "bizra.verdicts") {
            *m.entry(v["input"]["partition"].as_i64().unwrap()).or_default() += 1;
        }
        m
    };
    assert!(
        eventually(Duration::from_secs(60), || partitions(&broker).get(&0)
            == Some(&30)),
        "partition 0 read: {:?}",
        partitions(&broker)
    );
    std::thread::sleep(Duration::from_secs(3)); // six discovery rounds
    assert_eq!(partitions(&broker).len(), 1, "hidden partitions were read");
    visible.store(3, Ordering::Relaxed);
    let all = eventually(Duration::from_secs(60), || {
        partitions(&broker).values().sum::<usize>() == 90
    });
    assert!(sigterm(&mut run).success());
    assert!(
        all,
        "records of the added partitions 1 and 2 got verdicts: {:?}",
        partitions(&broker)
    );
}

/// libfaketime shifts one process's wall clock (its monotonic clock is left alone).
fn faketime_lib() -> std::path::PathBuf {
    let lib = std::path::PathBuf::from("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1");
    assert!(
        lib.exists(),
        "libfaketime is needed (apt-get install faketime; scripts/test does it)"
    );
    lib
}

#[test]
fn a_cluster_whose_clocks_disagree_by_seconds_reads_every_partition() {
    let lib = faketime_lib();
    let (broker, dir) = setup(4);
    let lines = generated(2_000, 0.0, false);
    produce(&broker, &lines, 4);
    let hostfile = crate::common::two_process_hostfile(dir.path());
    // libfaketime shifts CLOCK_REALTIME, and librdkafka's timed waits (pthread_cond_timedwait
    // on an absolute realtime) then last the fake offset longer: each Kafka client the
    // skewed process closes at start takes seconds. Formation took 19-26 s of the default
    // 30 s here, so the cluster gets longer to form; what is tested is what comes after.
    let cfg = dir.path().join("bizra.toml");
    std::fs::write(&cfg, "[pipeline]\ncluster_timeout_ms = 120000\n").unwrap();
    let spawn = |p: &str, skew: Option<&str>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_bizra"));
        c.env("RUST_LOG", "warn")
            .args(["run", "-q", "--brokers", &broker.addr(), "--signing-key"])
            .arg(dir.path().join("node.key"))
            .arg("--sampling-key")
            .arg(crate::common::sampling_key(dir.path()))
            .args(["-w", "1", "-n", "2", "-p", p, "--hostfile"])
            .arg(&hostfile)
            .arg("--config")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(s) = skew {
            c.env("LD_PRELOAD", &lib)
                .env("FAKETIME", s)
                .env("DONT_FAKE_MONOTONIC", "1");
        }
        c.spawn().unwrap()
    };
    // Process 1 runs 8 s ahead: with wall-clock epochs it never read its partitions.
    let a = spawn("0", None);
    let b = spawn("1", Some("+8s"));
    let (verdicts, dead) = wait_for_all(&broker, 2_000, Duration::from_secs(90));
    let parts: HashMap<i64, usize> = verdicts.iter().fold(HashMap::new(), |mut m, v| {
        *m.entry(v["input"]["partition"].as_i64().unwrap()).or_default() += 1;
        m
    });
    for c in [&a, &b] {
        let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
    }
    let (oa, ob) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let (sa, sb) = (oa.status, ob.status);
    let logs = format!(
        "process 0: {}\nprocess 1: {}",
        String::from_utf8_lossy(&oa.stderr),
        String::from_utf8_lossy(&ob.stderr)
    );
    assert_eq!(
        by_input(&verdicts).len() + by_input(&dead).len(),
        2_000,
        "partitions: {parts:?}\n{logs}"
    );
    assert_eq!(parts.len(), 4);
    assert!(sa.success() && sb.success(), "{sa} {sb}");
}

#[test]
fn a_slow_worker_does_not_hold_back_the_records_of_a_fast_one() {
    // Worker 1 sleeps 5 ms after every pass (an injected fault); worker 0 reads partition 0
    // and ticks every 2 ms. Counting epochs each at its own pace, worker 0 ran up to the
    // read-ahead (250 epochs) past worker 1, and its records waited for worker 1 to count
    // up to them: ~1.2 s. Announced epochs keep them together.
    let (broker, dir) = setup(2);
    let http = format!("127.0.0.1:{}", free_port());
    let mut run = bizra_with_env(
        &broker,
        dir.path(),
        &["-w", "2", "--http", &http],
        &[("BIZRA_FAULTS", bizra::faults::SLOW_WORKER)],
    );
    assert!(eventually(Duration::from_secs(30), || http_status(
        &http, "/readyz"
    ) == 200));
    // 4 s of input, one record every 2 ms, alternating between the two partitions.
    let lines = generated(2000, 0.0, false);
    produce_paced(&broker, &lines, 2, Duration::from_millis(2));
    let (verdicts, dead) = wait_for_all(&broker, lines.len(), Duration::from_secs(120));
    assert!(sigterm(&mut run).success());
    assert!(dead.is_empty());
    // Inside bizra (read to committed) for the fast worker's partition, after the first second.
    let mut fast: Vec<f64> = verdicts
        .iter()
        .filter(|v| v["input"]["partition"] == 0 && v["input"]["offset"].as_i64().unwrap() >= 250)
        .map(|v| v["latency_ms"].as_f64().unwrap())
        .collect();
    fast.sort_by(f64::total_cmp);
    assert!(fast.len() >= 700, "{} verdicts of partition 0", fast.len());
    let p90 = fast[fast.len() * 9 / 10];
    assert!(
        p90 < 300.0,
        "the fast worker's verdicts waited for the slow one: p90 {p90} ms, max {} ms",
        fast.last().unwrap()
    );
}
