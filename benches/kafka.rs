//! End-to-end Kafka throughput against a passthrough baseline, and verdict latency at half
//! the maximum rate. Needs the test broker (`scripts/tansu`) and a release build of bizra.
//! Run: `cargo bench --bench kafka`. Environment:
//! - `BIZRA_BENCH_N`: observations, default 200000;
//! - `BIZRA_BENCH_ROUNDS=R`: R rounds of passthrough then bizra on one broker, with medians;
//! - `BIZRA_BENCH_COMPRESSION`: producer compression for both, default bizra's (lz4);
//! - `BIZRA_BENCH_LINGER`: producer `linger.ms` for both, default bizra's (20);
//! - `BIZRA_BENCH_WORKERS`: bizra's workers, default 2;
//! - `BIZRA_BENCH_LATENCY=0`: skips the latency phase;
//! - `BIZRA_BENCH_LATENCY_BIN=PATH`: runs the latency phase with another bizra binary;
//! - `BIZRA_BENCH_LIVE_RATE=R`: feeds the latency phase at R obs/s instead of half the
//!   measured rate (to compare builds at one rate);
//! - `BIZRA_BENCH_LIVE_SIGNED=1`: the latency phase reads the realistic mix (half signed,
//!   one signed real_time record in 50 forged) instead of the unsigned input, and reports
//!   how long after its verdict each rollback arrives;
//! - `BIZRA_BENCH_KAFKA`: extra `[kafka]` keys for bizra, `;`-separated;
//! - `BIZRA_BENCH_LOG`: bizra's `RUST_LOG` (default `warn`); `info` shows each worker's first
//!   read and first acknowledgement (`first time: ...`), `info,librdkafka=debug` with a
//!   `"debug"` client option shows librdkafka's own log;
//! - `BIZRA_BENCH_CONFIG`: more configuration (whole sections, `;`-separated lines) for this
//!   build only, not the compared one;
//! - `BIZRA_BENCH_COMPARE=PATH`: also times another bizra binary (e.g. the previous commit's)
//!   in every round, first in even rounds and second in odd ones;
//! - `BIZRA_BENCH_ARGS`: extra arguments for this build's bizra only; with
//!   `BIZRA_BENCH_COMPARE` set to this same binary, `BIZRA_BENCH_ARGS="--data-dir D"`
//!   measures the archive on against off.
//!
//! 1. A tansu broker with memory storage (fast; we only read from the start) on a free port
//!    (`tests/broker.rs`, shared with the Kafka tests).
//! 2. N generated observations are preloaded into an 8-partition topic.
//! 3. Passthrough: 2 threads, each consuming 4 partitions and producing every message to an
//!    output topic with bizra's producer settings (`PRODUCER_SETTINGS`), until all are
//!    acknowledged.
//! 4. bizra `-w 2` consumes the same topic and produces verdicts; timed from process start
//!    until its consumer group has committed every input offset (bizra commits an offset only
//!    when everything produced from it is acknowledged).
//! 5. Every run (3 and 4) writes a fresh 1-partition output topic, which is counted complete
//!    and deleted after the run: the broker slowed down run after run as it held more data.
//! 6. Latency: a fresh topic is fed at half of bizra's measured (median) rate for 20 s while
//!    bizra runs, writing its verdicts to a topic of their own; the latency of every verdict
//!    is its Kafka timestamp (set when produced; acks follow within `linger.ms`) minus its
//!    input's timestamp, recorded in an HDR histogram, also by tier, by half of the run and
//!    split at the verdict's own `latency_ms` (read to committed, inside bizra) and the rest.
//!    The feeder produces with `linger.ms = 5` (librdkafka's default), not bizra's 20: its
//!    own batching wait is no part of bizra's latency. Then the rollbacks of that phase: each one's Kafka timestamp minus its
//!    verdict's, in another histogram.
//! 7. The floor (`BIZRA_BENCH_FLOOR=0` skips it): a 2-thread consume->produce passthrough
//!    (bizra's `fetch.wait.max.ms`, producing at once) fed the same way; its latency is what
//!    the broker, the clients and the machine add without bizra.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use bizra::kafka::sink::PRODUCER_SETTINGS;

#[path = "../tests/broker.rs"]
mod broker;
#[path = "../tests/proxy.rs"]
#[allow(dead_code)] // the bench uses no refusing broker
mod proxy;
use broker::Broker;

const PARTITIONS: i32 = 8;

/// Overrides of bizra's producer settings for both sides, from `BIZRA_BENCH_COMPRESSION`
/// and `BIZRA_BENCH_LINGER`; unset means bizra's own (`PRODUCER_SETTINGS`).
fn overrides() -> Vec<(&'static str, String)> {
    [
        ("compression.type", "BIZRA_BENCH_COMPRESSION"),
        ("linger.ms", "BIZRA_BENCH_LINGER"),
    ]
    .into_iter()
    .filter_map(|(key, var)| std::env::var(var).ok().map(|v| (key, v)))
    .collect()
}

/// A producer with exactly bizra's settings (and the overrides), for preloading and for
/// the passthrough baseline.
fn producer(addr: &str) -> BaseProducer {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", addr);
    for (k, v) in PRODUCER_SETTINGS {
        c.set(*k, *v);
    }
    for (k, v) in overrides() {
        c.set(k, v);
    }
    c.create().unwrap()
}

fn send(p: &BaseProducer, topic: &str, partition: i32, payload: &[u8]) {
    let mut rec = BaseRecord::<(), [u8]>::to(topic)
        .payload(payload)
        .partition(partition);
    loop {
        match p.send(rec) {
            Ok(()) => return,
            Err((_, r)) => {
                rec = r;
                p.poll(Duration::from_millis(1));
            }
        }
    }
}

/// Counts the messages of a 1-partition topic as they arrive (watermarks are not reliable
/// with the memory storage engine, so we consume).
struct Counter {
    consumer: BaseConsumer,
    seen: usize,
}

impl Counter {
    fn new(addr: &str, topic: &str, from: i64) -> Counter {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", addr)
            .set("group.id", "bench-counter")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, 0, Offset::Offset(from)).unwrap();
        consumer.assign(&tpl).unwrap();
        Counter { consumer, seen: 0 }
    }

    /// Waits until `n` messages were seen; returns false on `timeout`.
    fn wait_for(&mut self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.seen < n {
            if Instant::now() > deadline {
                return false;
            }
            if let Some(Ok(_)) = self.consumer.poll(Duration::from_millis(100)) {
                self.seen += 1;
            }
        }
        true
    }
}

/// A consumer of the partitions `p` of `topic` with `p % 2 == t`, from their beginning: one
/// of the two threads of a passthrough.
fn half_consumer(addr: &str, group: &str, topic: &str, t: i32, options: &[(&str, &str)]) -> BaseConsumer {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", addr)
        .set("group.id", group)
        .set("enable.auto.commit", "false");
    for (k, v) in options {
        cfg.set(*k, *v);
    }
    let c: BaseConsumer = cfg.create().unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in (0..PARTITIONS).filter(|p| p % 2 == t) {
        tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
    }
    c.assign(&tpl).unwrap();
    c
}

fn passthrough(addr: &str, n: usize, out: &str) -> Duration {
    let started = Instant::now();
    let threads: Vec<_> = (0..2)
        .map(|t| {
            let addr = addr.to_owned();
            let out = out.to_owned();
            std::thread::spawn(move || {
                let c = half_consumer(&addr, "passthrough", "bench.in", t, &[]);
                let p = producer(&addr);
                let want = n / 2;
                let mut got = 0;
                while got < want {
                    if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
                        send(&p, &out, 0, m.payload().unwrap_or_default());
                        got += 1;
                    }
                    p.poll(Duration::ZERO);
                }
                p.flush(Duration::from_secs(60)).unwrap();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    started.elapsed()
}

/// bizra's worker threads (`BIZRA_BENCH_WORKERS`, default 2).
fn workers() -> String {
    std::env::var("BIZRA_BENCH_WORKERS").unwrap_or_else(|_| "2".into())
}

/// This build's bizra, with the extra arguments of `BIZRA_BENCH_ARGS` (split at spaces).
fn bizra(addr: &str, group: &str, input: &str, verdicts: &str, more: &[&str]) -> Child {
    let extra = std::env::var("BIZRA_BENCH_ARGS").unwrap_or_default();
    let mut extra: Vec<&str> = extra.split_whitespace().collect();
    extra.extend(more);
    bizra_bin(
        env!("CARGO_BIN_EXE_bizra").as_ref(),
        addr,
        group,
        (input, verdicts),
        &extra,
    )
}

/// bizra `bin` reading `topics.0` and writing its verdicts to `topics.1`.
fn bizra_bin(
    bin: &std::path::Path,
    addr: &str,
    group: &str,
    topics: (&str, &str),
    extra_args: &[&str],
) -> Child {
    let (input, verdicts) = topics;
    let cfg = std::env::temp_dir().join(format!("bizra-bench-{group}.toml"));
    // A build with a replay-state topic gets a fresh one per run (made by the caller,
    // `replay_topic`): no run restores another's, and memory storage cannot read from inside
    // a record batch, which a restore does.
    let mut replay = if knows_replay_topic(bin) {
        format!("replay_topic = \"{}\"\n", replay_topic(group))
    } else {
        String::new()
    };
    // A build with a decision log gets a fresh commitments topic per run too: a chain
    // continues in its topic, and each run's node key is its own.
    if knows_decision_log(bin) {
        replay += &format!("commitments_topic = \"{}\"\n", commitments_topic(group));
    }
    // Extra `[kafka]` keys for experiments, e.g. BIZRA_BENCH_KAFKA='max_inflight_ticks = 200'.
    let extra = std::env::var("BIZRA_BENCH_KAFKA")
        .unwrap_or_default()
        .replace(';', "\n");
    let producer_options: String = overrides()
        .iter()
        .map(|(k, v)| format!("\"{k}\" = \"{v}\"\n"))
        .collect();
    // More configuration for this build only, e.g. BIZRA_BENCH_CONFIG='[pipeline];max_inflight_bytes = 268435456'.
    let own = if bin == std::path::Path::new(env!("CARGO_BIN_EXE_bizra")) {
        std::env::var("BIZRA_BENCH_CONFIG")
            .unwrap_or_default()
            .replace(';', "\n")
    } else {
        String::new()
    };
    std::fs::write(
        &cfg,
        format!("[kafka]\ninput_topic = \"{input}\"\nverdicts_topic = \"{verdicts}\"\n{replay}{extra}\n[kafka.producer_options]\n{producer_options}\n{own}\n"),
    )
    .unwrap();
    Command::new(bin)
        .args([
            "run",
            "-q",
            "-w",
            &workers(),
            "--brokers",
            addr,
            "--group",
            group,
            "--config",
        ])
        .arg(&cfg)
        .args(extra_args)
        // BIZRA_BENCH_LOG=info shows bizra's start-up milestones (`first time: ...`).
        .env(
            "RUST_LOG",
            std::env::var("BIZRA_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

/// The replay-state topic of the run of `group`.
fn replay_topic(group: &str) -> String {
    format!("bizra.replay.{group}")
}

/// The commitments topic of the run of `group`.
fn commitments_topic(group: &str) -> String {
    format!("bizra.commitments.{group}")
}

/// Whether `bin` continues commitment chains from their topic (builds since issue 15 do).
fn knows_decision_log(bin: &std::path::Path) -> bool {
    let out = Command::new(bin).args(["run", "--help"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).contains("--checkpoints")
}

/// Whether `bin` keeps its replay state in a topic (builds since issue 14 do).
fn knows_replay_topic(bin: &std::path::Path) -> bool {
    let out = Command::new(bin).args(["run", "--help"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).contains("--rollbacks")
}

/// User and system CPU seconds of process `pid` so far (`/proc/PID/stat`, 100 ticks/s).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line: 11 and 12 after the name (0 = state).
    let tick = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    (tick(11) + tick(12)) as f64 / 100.0
}

fn stop(mut c: Child) {
    let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
    let _ = c.wait();
}

fn main() {
    let n: usize = std::env::var("BIZRA_BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200_000);
    let broker = Broker::memory();
    let addr = broker.addr();
    broker.create_topic("bench.in", PARTITIONS as u32);
    broker.create_topic("bench.live", PARTITIONS as u32);
    broker.create_topic("bench.live.verdicts", 1);
    for t in [
        "bizra.commitments",
        "bizra.dlq",
        "bizra.stats",
        "bizra.rollbacks",
        "bizra.replay",
        "bizra.checkpoints",
    ] {
        broker.create_topic(t, 1);
    }

    let gen = Command::new(env!("CARGO_BIN_EXE_bizra"))
        .args([
            "gen",
            "--count",
            &n.to_string(),
            "--signed-fraction",
            "0",
            "--seed",
            "3",
        ])
        .output()
        .unwrap()
        .stdout;
    let lines: Vec<&[u8]> = gen.split(|b| *b == b'\n').filter(|l| !l.is_empty()).collect();
    let p = producer(&addr);
    for (i, l) in lines.iter().enumerate() {
        send(&p, "bench.in", i as i32 % PARTITIONS, l);
        p.poll(Duration::ZERO);
    }
    p.flush(Duration::from_secs(120)).unwrap();
    println!("preloaded {n} observations into 8 partitions");

    // Rounds alternate passthrough and bizra on the same broker, so that a drift of the machine
    // or of the broker (it slows as its topics fill) affects both; the median ratio is reported.
    let rounds: usize = std::env::var("BIZRA_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    // An A/B comparison on the same broker and input: the other binary runs in every round,
    // first in even rounds and second in odd ones.
    let compare = std::env::var_os("BIZRA_BENCH_COMPARE").map(PathBuf::from);
    // One bizra run: its rate, timed from process start until its group has committed every
    // input offset. bizra commits an offset only once every output derived from it is
    // acknowledged, so that is "the last verdict is acknowledged".
    let timed = |mut run: Child, group: &str| {
        let started = Instant::now();
        wait_committed(&addr, group, &mut run, n, Duration::from_secs(600));
        let took = started.elapsed();
        println!("  {group}: {:.2} CPU-s", cpu_seconds(run.id()));
        stop(run);
        (n as f64 / took.as_secs_f64(), took)
    };
    let (mut ratios, mut rates, mut compare_ratios) = (Vec::new(), Vec::new(), Vec::new());
    // Every run writes a fresh 1-partition topic, checked complete and deleted after the
    // run, so that no run pays for an earlier run's data in the broker.
    let fresh = |name: String| {
        broker.create_topic(&name, 1);
        name
    };
    let complete_and_delete = |name: &str| {
        let mut out = Counter::new(&addr, name, 0);
        assert!(
            out.wait_for(n, Duration::from_secs(120)),
            "{name} has {} of {n} records",
            out.seen
        );
        drop(out);
        broker.delete_topic(name);
    };
    for round in 0..rounds {
        let out = fresh(format!("bench.out.{round}"));
        let base = passthrough(&addr, n, &out);
        complete_and_delete(&out);
        let base_rate = n as f64 / base.as_secs_f64();
        println!(
            "round {round}: passthrough: {n} in {:.2} s = {base_rate:.0} msg/s",
            base.as_secs_f64()
        );
        for first in [true, false] {
            if let Some(bin) = compare.as_ref().filter(|_| first == (round % 2 == 0)) {
                let group = format!("bench-compare-{round}");
                let verdicts = fresh(format!("bizra.verdicts.{group}"));
                let replay = fresh(replay_topic(&group));
                let chains = fresh(commitments_topic(&group));
                let (rate, took) = timed(
                    bizra_bin(bin, &addr, &group, ("bench.in", &verdicts), &[]),
                    &group,
                );
                complete_and_delete(&verdicts);
                broker.delete_topic(&replay);
                broker.delete_topic(&chains);
                compare_ratios.push(rate / base_rate);
                println!(
                    "round {round}: compare {}: {n} in {:.2} s = {rate:.0} obs/s; ratio to passthrough {:.2}",
                    bin.display(),
                    took.as_secs_f64(),
                    rate / base_rate
                );
            }
            if first {
                let group = format!("bench-throughput-{round}");
                let verdicts = fresh(format!("bizra.verdicts.{group}"));
                let replay = fresh(replay_topic(&group));
                let chains = fresh(commitments_topic(&group));
                let (rate, took) = timed(bizra(&addr, &group, "bench.in", &verdicts, &[]), &group);
                complete_and_delete(&verdicts);
                broker.delete_topic(&replay);
                broker.delete_topic(&chains);
                rates.push(rate);
                ratios.push(rate / base_rate);
                println!(
                    "round {round}: bizra -w {}: {n} in {:.2} s = {rate:.0} obs/s; ratio to passthrough {:.2}",
                    workers(),
                    took.as_secs_f64(),
                    rate / base_rate
                );
            }
        }
    }
    let rate = median(&mut rates);
    if rounds > 1 {
        println!(
            "median over {rounds} rounds: bizra {rate:.0} obs/s, ratio to passthrough {:.2}",
            median(&mut ratios)
        );
        if compare.is_some() {
            println!(
                "median ratio of the compared binary: {:.2}",
                median(&mut compare_ratios)
            );
        }
    }

    if std::env::var("BIZRA_BENCH_LATENCY").as_deref() == Ok("0") {
        // Clients first: a client dropped after its broker is gone blocks on closing.
        drop(p);
        drop(broker);
        return;
    }

    // Latency at half the measured rate, for 20 s.
    let live_rate = std::env::var("BIZRA_BENCH_LIVE_RATE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(rate / 2.0);
    let live_n = (live_rate * 20.0) as usize;
    // Its own verdict topic, read from offset 0: with memory storage a fetch from an offset
    // inside a record batch returns nothing.
    broker.create_topic(&replay_topic("bench-latency"), 1);
    broker.create_topic(&commitments_topic("bench-latency"), 1);
    // With BIZRA_BENCH_LIVE_SIGNED=1 the live input is the generator's realistic mix (half
    // of it signed, under a key bizra is given), with forgeries, so that rollbacks happen.
    let signed = std::env::var("BIZRA_BENCH_LIVE_SIGNED").as_deref() == Ok("1");
    let keyring = std::env::temp_dir().join(format!("bizra-bench-keyring-{}.toml", std::process::id()));
    let live_lines: Vec<Vec<u8>> = if signed {
        let out = Command::new(env!("CARGO_BIN_EXE_bizra"))
            .args(["gen", "--count", "100000", "--seed", "9", "--keyring-out"])
            .arg(&keyring)
            .output()
            .unwrap()
            .stdout;
        out.split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(<[u8]>::to_vec)
            .collect()
    } else {
        lines.iter().map(|l| l.to_vec()).collect()
    };
    // Fed once bizra says it is ready (`/readyz`): its start-up is not latency.
    let http = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let mut extra = vec!["--http", http.as_str()];
    if signed {
        extra.extend(["--keyring", keyring.to_str().unwrap()]);
    }
    let extra = extra.as_slice();
    let run = match std::env::var_os("BIZRA_BENCH_LATENCY_BIN") {
        Some(bin) => bizra_bin(
            bin.as_ref(),
            &addr,
            "bench-latency",
            ("bench.live", "bench.live.verdicts"),
            extra,
        ),
        None => bizra(&addr, "bench-latency", "bench.live", "bench.live.verdicts", extra),
    };
    let launched = Instant::now();
    while !ready(&http) {
        assert!(
            launched.elapsed() < Duration::from_secs(60),
            "bizra not ready after 60 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    println!(
        "latency phase: bizra ready {:.2} s after its start",
        launched.elapsed().as_secs_f64()
    );
    // Some forgeries for the rollbacks: every 50th signed real_time record gets a signature
    // that fails (its R half changed, its s half left valid, so only Ed25519 finds it).
    let inputs: Vec<Vec<u8>> = live_lines
        .iter()
        .enumerate()
        .map(|(i, l)| if i % 50 == 0 { forge(l) } else { l.clone() })
        .collect();
    broker.create_topic("bench.warm", 1);
    let feeder = live_producer(&addr, "bench.warm");
    feed(&feeder, "bench.live", &inputs, live_rate, live_n);
    let mut live = Counter::new(&addr, "bench.live.verdicts", 0);
    assert!(
        live.wait_for(live_n, Duration::from_secs(120)),
        "bizra produced {} of {live_n} live verdicts",
        live.seen
    );
    stop(run);

    // Input timestamps by (partition, offset), then each live verdict's latency.
    let c = partition_0(&addr, "bench-latency", "bench.live.verdicts");
    let new_hist = || Histogram::<u64>::new_with_bounds(1, 60_000, 3).unwrap();
    let mut hist = new_hist();
    // The same, by verification tier and by half of the run, to see where a tail comes from.
    let mut by_tier = std::collections::BTreeMap::<String, Histogram<u64>>::new();
    let live_in = input_times(&addr, "bench.live", live_n);
    let mut by_half = [new_hist(), new_hist()];
    // And the p99 of each second of input, to tell a start-up transient from a steady tail.
    let mut by_second: Vec<Histogram<u64>> = Vec::new();
    let first_in = live_in.values().copied().min().unwrap_or(0);
    // Per hop: inside bizra (the verdict's own `latency_ms`, from its read to its commit)
    // and the rest (the feeder's linger, the broker, bizra's fetch, its sink).
    let (mut inside, mut before) = (new_hist(), new_hist());
    // The same split for the first second of input alone (a start-up transient's hop).
    let (mut inside_0, mut before_0) = (new_hist(), new_hist());
    let mut seen = 0;
    // Each verdict's broker timestamp, for the delay of a rollback that names it.
    let mut verdict_at = std::collections::HashMap::<(i32, i64), i64>::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen < live_n && Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_secs(1)) {
            seen += 1;
            let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
            let key = (
                v["input"]["partition"].as_i64().unwrap() as i32,
                v["input"]["offset"].as_i64().unwrap(),
            );
            if let (Some(t_in), Some(t_out)) = (live_in.get(&key), m.timestamp().to_millis()) {
                verdict_at.insert(key, t_out);
                let ms = (t_out - t_in).max(1) as u64;
                hist.record(ms).unwrap();
                let tier = v["verification"]["tier"].as_str().unwrap_or("?").to_owned();
                by_tier.entry(tier).or_insert_with(new_hist).record(ms).unwrap();
                let half = usize::from(seen > live_n / 2);
                by_half[half].record(ms).unwrap();
                let second = ((t_in - first_in) / 1000).max(0) as usize;
                if by_second.len() <= second {
                    by_second.resize_with(second + 1, new_hist);
                }
                by_second[second].record(ms).unwrap();
                if let Some(own) = v["latency_ms"].as_f64() {
                    let own = own.round() as u64;
                    inside.record(own.max(1)).unwrap();
                    before.record(ms.saturating_sub(own).max(1)).unwrap();
                    if second == 0 {
                        inside_0.record(own.max(1)).unwrap();
                        before_0.record(ms.saturating_sub(own).max(1)).unwrap();
                    }
                }
            }
        }
    }
    assert_eq!(
        hist.len() as usize,
        live_n,
        "every live verdict has its input's timestamp"
    );
    println!(
        "latency at {live_rate:.0} obs/s ({} verdicts): p50 {} ms, p95 {} ms, p99 {} ms, max {} ms",
        hist.len(),
        hist.value_at_quantile(0.50),
        hist.value_at_quantile(0.95),
        hist.value_at_quantile(0.99),
        hist.max()
    );
    let parts = by_tier
        .iter()
        .map(|(t, h)| (t.as_str(), h))
        .chain([("first half", &by_half[0]), ("second half", &by_half[1])])
        .chain([
            ("read to committed (latency_ms)", &inside),
            ("the rest: feeder, broker, fetch, sink", &before),
            ("first second, read to committed", &inside_0),
            ("first second, the rest", &before_0),
        ]);
    for (part, h) in parts {
        println!(
            "  {part}: {} verdicts, p50 {} ms, p95 {} ms, p99 {} ms",
            h.len(),
            h.value_at_quantile(0.50),
            h.value_at_quantile(0.95),
            h.value_at_quantile(0.99)
        );
    }
    let p99s: Vec<String> = by_second
        .iter()
        .map(|h| h.value_at_quantile(0.99).to_string())
        .collect();
    println!("  p99 by second of input (ms): {}", p99s.join(" "));
    rollback_delays(&addr, &verdict_at);
    if std::env::var("BIZRA_BENCH_FLOOR").as_deref() != Ok("0") {
        broker.create_topic("bench.floor", PARTITIONS as u32);
        broker.create_topic("bench.floor.out", 1);
        let h = passthrough_latency(&addr, &feeder, &inputs, live_rate, live_n);
        println!(
            "floor: a consume->produce passthrough fed the same way: p50 {} ms, p95 {} ms, p99 {} ms, max {} ms",
            h.value_at_quantile(0.50),
            h.value_at_quantile(0.95),
            h.value_at_quantile(0.99),
            h.max()
        );
    }
    drop((p, feeder, live, c));
    drop(broker);
}

/// Whether the bizra serving `addr` answers `/readyz` with 200.
fn ready(addr: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut c) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let _ = c.set_read_timeout(Some(Duration::from_secs(1)));
    if c.write_all(b"GET /readyz HTTP/1.0\r\nHost: bench\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    c.read_exact(&mut head).is_ok() && head.ends_with(b" 200")
}

/// The live phase's producer: bizra's settings but librdkafka's default `linger.ms` of 5
/// (bizra's 20 would follow each input's timestamp, taken when it is handed over, with up
/// to 20 ms of the feeder's own batching; 0 makes every message a request of its own, which
/// the test broker queues for seconds at these rates). It has delivered one record to `warm`
/// before it is returned: an idempotent producer holds its first records until it has a
/// producer id (up to 500 ms after its start), which would be charged to the first
/// verdicts' latency.
fn live_producer(addr: &str, warm: &str) -> BaseProducer {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", addr);
    for (k, v) in PRODUCER_SETTINGS {
        c.set(*k, *v);
    }
    c.set("linger.ms", "5");
    let p: BaseProducer = c.create().unwrap();
    p.send(BaseRecord::<(), [u8]>::to(warm).payload(b"warm"))
        .map_err(|(e, _)| e)
        .unwrap();
    p.flush(Duration::from_secs(30)).unwrap();
    p
}

/// Sends `n` of `lines` (cycled) to `topic` at `rate` per second, round-robin over its partitions.
fn feed(p: &BaseProducer, topic: &str, lines: &[Vec<u8>], rate: f64, n: usize) {
    // Connected and with the topic's metadata before the clock starts: a fresh producer's
    // first messages would otherwise wait for both after their timestamps were taken.
    p.client()
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let start = Instant::now();
    for (i, l) in lines.iter().cycle().take(n).enumerate() {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        while Instant::now() < due {
            p.poll(Duration::ZERO);
            std::thread::sleep(Duration::from_micros(200));
        }
        // Distinct ids are not needed for latency; replays are counted like any verdict.
        send(p, topic, i as i32 % PARTITIONS, l);
        p.poll(Duration::ZERO);
    }
    p.flush(Duration::from_secs(60)).unwrap();
}

/// The floor under bizra's latency on this broker and machine: two threads consuming
/// `bench.floor` (with bizra's `fetch.wait.max.ms`) and producing each message to
/// `bench.floor.out` at once, fed like the live phase; the latency from each input's
/// timestamp to its copy's, over all of them.
fn passthrough_latency(
    addr: &str,
    feeder: &BaseProducer,
    lines: &[Vec<u8>],
    rate: f64,
    n: usize,
) -> Histogram<u64> {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let threads: Vec<_> = (0..2)
        .map(|t| {
            let addr = addr.to_owned();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let c = half_consumer(
                    &addr,
                    "bench-floor",
                    "bench.floor",
                    t,
                    &[("fetch.wait.max.ms", "10")],
                );
                let p = producer(&addr);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if let Some(Ok(m)) = c.poll(Duration::from_millis(1)) {
                        let key = format!("{}:{}", m.partition(), m.offset());
                        let mut rec = BaseRecord::<str, [u8]>::to("bench.floor.out")
                            .key(key.as_str())
                            .payload(m.payload().unwrap_or_default())
                            .partition(0);
                        while let Err((_, r)) = p.send(rec) {
                            rec = r;
                            p.poll(Duration::from_millis(1));
                        }
                    }
                    p.poll(Duration::ZERO);
                }
                p.flush(Duration::from_secs(60)).unwrap();
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    feed(feeder, "bench.floor", lines, rate, n);
    let mut out = Counter::new(addr, "bench.floor.out", 0);
    assert!(
        out.wait_for(n, Duration::from_secs(120)),
        "passthrough copied {} of {n}",
        out.seen
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let input = input_times(addr, "bench.floor", n);
    let c = partition_0(addr, "bench-floor-read", "bench.floor.out");
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000, 3).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while (hist.len() as usize) < n && Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_secs(1)) {
            let key = std::str::from_utf8(m.key().unwrap()).unwrap();
            let (p, o) = key.split_once(':').unwrap();
            let t_in = input[&(p.parse().unwrap(), o.parse().unwrap())];
            let t_out = m.timestamp().to_millis().unwrap();
            hist.record((t_out - t_in).max(1) as u64).unwrap();
        }
    }
    assert_eq!(hist.len() as usize, n, "every copy read back");
    hist
}

/// A consumer of partition 0 of `topic` from its beginning.
fn partition_0(addr: &str, group: &str, topic: &str) -> BaseConsumer {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning).unwrap();
    c.assign(&tpl).unwrap();
    c
}

/// `line` with its signature's first character changed, if it is a signed real_time record.
fn forge(line: &[u8]) -> Vec<u8> {
    let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(line) else {
        return line.to_vec();
    };
    let sig = v["signature"]["sig"].as_str().map(str::to_owned);
    match (v["urgency"].as_str(), sig) {
        (Some("real_time"), Some(sig)) => {
            let first = if sig.starts_with('A') { "B" } else { "A" };
            v["signature"]["sig"] = serde_json::Value::String(format!("{first}{}", &sig[1..]));
            serde_json::to_vec(&v).unwrap()
        }
        _ => line.to_vec(),
    }
}

/// Reads the rollbacks of the live phase (the forged signatures that the statistical
/// sample missed) and prints how long after its verdict each one reached the
/// broker: the window in which a consumer sees a provisional verdict standing.
fn rollback_delays(addr: &str, verdict_at: &std::collections::HashMap<(i32, i64), i64>) {
    let c = partition_0(addr, "bench-rollbacks", "bizra.rollbacks");
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000, 3).unwrap();
    let mut idle = 0;
    while idle < 3 {
        match c.poll(Duration::from_secs(1)) {
            Some(Ok(m)) => {
                idle = 0;
                let r: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
                if r["input"]["topic"] != "bench.live" {
                    continue;
                }
                let key = (
                    r["input"]["partition"].as_i64().unwrap() as i32,
                    r["input"]["offset"].as_i64().unwrap(),
                );
                if let (Some(v), Some(t)) = (verdict_at.get(&key), m.timestamp().to_millis()) {
                    hist.record((t - v).max(1) as u64).unwrap();
                }
            }
            _ => idle += 1,
        }
    }
    if hist.is_empty() {
        println!("rollbacks: none in the live phase");
        return;
    }
    println!(
        "rollbacks after their verdicts ({}): p50 {} ms, p99 {} ms, max {} ms",
        hist.len(),
        hist.value_at_quantile(0.50),
        hist.value_at_quantile(0.99),
        hist.max()
    );
}

/// The median (the upper one for an even count).
fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Waits until `group` has committed `n` offsets of `bench.in`; fails at once if `run`, the
/// bizra that commits them, exits first (e.g. on a bad argument).
fn wait_committed(addr: &str, group: &str, run: &mut Child, n: usize, timeout: Duration) {
    let topic = "bench.in";
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(topic, p);
    }
    let deadline = Instant::now() + timeout;
    loop {
        let done: i64 = c
            .committed_offsets(tpl.clone(), Duration::from_secs(5))
            .map(|t| {
                t.elements()
                    .iter()
                    .map(|e| match e.offset() {
                        Offset::Offset(o) => o,
                        _ => 0,
                    })
                    .sum()
            })
            .unwrap_or(0);
        if done as usize >= n {
            return;
        }
        if let Some(status) = run.try_wait().unwrap() {
            panic!("bizra exited ({status}) after committing {done} of {n} offsets");
        }
        if Instant::now() > deadline {
            let _ = run.kill();
            panic!("bizra committed {done} of {n} offsets in {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The Kafka timestamps of the `n` messages of `topic`, by (partition, offset).
fn input_times(addr: &str, topic: &str, n: usize) -> std::collections::HashMap<(i32, i64), i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("group.id", "bench-input")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut out = std::collections::HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while out.len() < n && Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_secs(1)) {
            if let Some(t) = m.timestamp().to_millis() {
                out.insert((m.partition(), m.offset()), t);
            }
        }
    }
    assert_eq!(out.len(), n, "every live input read back");
    out
}
