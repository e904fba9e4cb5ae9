//! How long a start takes to restore the replay guard's state (issue 14: "state restored within
//! seconds for the default window"). Writes a synthetic replay log as a run leaves it — every
//! bucket written whole at its start (a full default window, 4,096 sightings in each of the 256
//! buckets), then two windows of deltas — into a `--data-dir` and into a replay topic of the test
//! broker (sqlite storage), then times a start of the release binary on each: the `replay state
//! restored` line bizra logs carries the milliseconds.
//! Run: `cargo bench --bench restore` (needs `scripts/tansu`). `BIZRA_BENCH_WINDOW` sets the
//! window (ids, default 1048576).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bizra_dataflows::verification::replay::{per_bucket, provenance, Sighting, BUCKETS};
use bizra_dataflows::verification::replay_log::ReplayRecord;
use bizra_dataflows::verification::sampling::SampleKey;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;

#[path = "../tests/broker.rs"]
#[allow(dead_code)] // only `start`, `addr` and `create_topic` are used here
mod broker;
#[path = "../tests/proxy.rs"]
#[allow(dead_code)] // the bench uses no refusing broker
mod proxy;
use broker::Broker;

/// The log a deployment with `window` ids leaves: a start's snapshot of every full bucket, then
/// two windows of deltas in records of 1,024 sightings (an epoch's worth).
fn log(key: &SampleKey, window: usize) -> Vec<ReplayRecord> {
    let per = per_bucket(window);
    let mut n = 0u64;
    let mut sighting = || {
        n += 1;
        let fp = n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        Sighting::new(fp, provenance(None, n, &[n as u8; 32]), n as i64, false)
    };
    let mut out = Vec::new();
    let mut buckets: Vec<Vec<Sighting>> = vec![Vec::new(); BUCKETS];
    while buckets.iter().any(|b| b.len() < per) {
        let s = sighting();
        let b = &mut buckets[usize::from(key.bucket(s.fp))];
        if b.len() < per {
            b.push(s);
        }
    }
    for (b, w) in buckets.iter().enumerate() {
        out.extend(ReplayRecord::snapshot(key.id(), 0, b as u8, w));
    }
    let deltas: Vec<(u8, Sighting)> = (0..2 * window)
        .map(|_| {
            let s = sighting();
            (key.bucket(s.fp), s)
        })
        .collect();
    for chunk in deltas.chunks(1024) {
        out.extend(ReplayRecord::deltas(key.id(), 0, chunk.to_vec()));
    }
    out
}

/// Starts bizra with `args`, returns the restore's milliseconds from its log line, and stops it.
fn restore_ms(args: &[&str]) -> (u64, String) {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_bizra"))
        .env("RUST_LOG", "info")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    for line in stderr.lines() {
        let line = line.unwrap();
        if line.contains("replay state restored") {
            let ms = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("ms="))
                .and_then(|v| v.parse().ok())
                .unwrap();
            let _ = child.kill();
            let _ = child.wait();
            return (
                ms,
                format!("{line} (start to restored: {} ms)", started.elapsed().as_millis()),
            );
        }
    }
    panic!("bizra ended without restoring: {:?}", child.wait());
}

fn main() {
    let window: usize = std::env::var("BIZRA_BENCH_WINDOW")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1 << 20);
    let dir = tempfile::tempdir().unwrap();
    let secret = [0x33u8; 32];
    let key_file = dir.path().join("sampling.key");
    std::fs::write(
        &key_file,
        bizra_dataflows::verification::signature::signing_key_to_file_text(
            &ed25519_dalek::SigningKey::from_bytes(&secret),
        ),
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let key = SampleKey::from_secret(&secret);
    let records = log(&key, window);
    let sightings: usize = records.iter().map(|r| r.sightings.len()).sum();
    let mut framed = Vec::new();
    for r in &records {
        r.frame(&mut framed);
    }
    println!(
        "replay log: {} records, {sightings} sightings, {} MiB (window {window})",
        records.len(),
        framed.len() >> 20
    );

    // Embedded: a data directory holding that log.
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("replay")).unwrap();
    std::fs::write(data.join("replay").join("replay.log"), &framed).unwrap();
    let window_cfg = dir.path().join("window.toml");
    std::fs::write(
        &window_cfg,
        format!("[verification]\nreplay_window_ids = {window}\n"),
    )
    .unwrap();
    let key_arg = key_file.to_str().unwrap();
    let cfg_arg = window_cfg.to_str().unwrap();
    let (ms, line) = restore_ms(&[
        "run",
        "-q",
        "--gen",
        "1",
        "--output",
        "/dev/null",
        "--sampling-key",
        key_arg,
        "--config",
        cfg_arg,
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    println!("embedded restore: {ms} ms\n  {line}");

    // Kafka: the same records in a replay topic of the test broker (sqlite storage).
    let broker = Broker::start();
    broker.create_topic("bizra.observations", 1);
    broker.create_topic("bizra.replay", 1);
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.addr())
        .set("message.max.bytes", "2000000")
        .set("linger.ms", "20")
        .create()
        .unwrap();
    let mut buf = Vec::new();
    let started = Instant::now();
    for r in &records {
        buf.clear();
        r.encode(&mut buf);
        loop {
            match p.send(
                BaseRecord::<(), [u8]>::to("bizra.replay")
                    .partition(0)
                    .payload(&buf),
            ) {
                Ok(()) => break,
                Err(_) => {
                    p.poll(Duration::from_millis(10));
                }
            }
        }
        p.poll(Duration::ZERO);
    }
    p.flush(Duration::from_secs(300)).unwrap();
    println!(
        "produced the log into the test broker in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let addr = broker.addr();
    let (ms, line) = restore_ms(&[
        "run",
        "-q",
        "--brokers",
        &addr,
        "--sampling-key",
        key_arg,
        "--config",
        cfg_arg,
    ]);
    println!("kafka restore: {ms} ms\n  {line}");
    drop(p);
    drop(broker);
}
