//! No unbounded history (issue 4): a long generated stream runs through `bizra run --http`
//! while `bizra_state_entries{structure}` is sampled. Every structure must stay within its
//! configured bound, and the second half of the run must hold no more than the first (with
//! slack for queues that breathe); a structure that grew with the stream would hold tens of
//! thousands of entries more by the end.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::{bizra_gen, free_port, scrape_series};

/// Observations in the stream: long enough for the replay guard to fill 7 times over and
/// for ~100 statistics windows to close, short enough for a debug build.
const N: usize = 60_000;
const REPLAY_IDS: usize = 8192;

#[test]
fn state_sizes_stay_flat_over_a_long_stream() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bizra.toml");
    std::fs::write(
        &cfg,
        format!(
            "[verification]\nreplay_window_ids = {REPLAY_IDS}\n\
             [stats]\nwindow_ms = 1000\nslide_ms = 200\nlateness_ms = 200\n"
        ),
    )
    .unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut child = bizra_gen(N)
        .args(["--output", "/dev/null", "--http", &addr, "--config"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();

    // (observations so far, entries per structure), one per scrape while bizra runs.
    let mut samples: Vec<(f64, BTreeMap<String, f64>)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "bizra did not finish");
        std::thread::sleep(Duration::from_millis(300));
        if std::net::TcpStream::connect(&addr).is_err() {
            continue;
        }
        let series = std::panic::catch_unwind(|| scrape_series(&addr));
        let Ok(series) = series else { continue }; // bizra exited mid-scrape
        let observed = series["bizra_source_observations_total"];
        let entries = series
            .iter()
            .filter_map(|(k, v)| {
                let s = k.strip_prefix("bizra_state_entries{structure=\"")?;
                Some((s.trim_end_matches("\"}").to_owned(), *v))
            })
            .collect();
        samples.push((observed, entries));
    }
    assert!(child.wait().unwrap().success());

    // Samples from the first tenth of the stream are warm-up (the replay guard filling).
    let warm: Vec<_> = samples
        .iter()
        .filter(|(n, _)| *n >= N as f64 / 10.0 && *n < N as f64)
        .collect();
    assert!(
        warm.len() >= 6,
        "too few samples while running ({} of {})",
        warm.len(),
        samples.len()
    );
    let (first, second) = warm.split_at(warm.len() / 2);
    let max =
        |part: &[&(f64, BTreeMap<String, f64>)], s: &str| part.iter().map(|(_, e)| e[s]).fold(0.0, f64::max);
    let structures: Vec<String> = warm[0].1.keys().cloned().collect();
    for s in [
        "replay_guard",
        "verify_stash",
        "commit_batches",
        "stats_windows",
        "sink_queue",
        "health_history",
    ] {
        assert!(
            structures.iter().any(|x| x == s),
            "{s} is not exported: {structures:?}"
        );
    }
    for s in &structures {
        let (a, b) = (max(first, s), max(second, s));
        eprintln!("{s}: max {a} in the first half, {b} in the second");
        assert!(b <= 2.0 * a + 4096.0, "{s} grew: {a} → {b}");
    }
    // The guard is measured and capped: full, and never past its bound.
    assert_eq!(max(second, "replay_guard"), REPLAY_IDS as f64);
    assert!(max(&warm, "health_history") <= 256.0);
    assert!(max(second, "stats_windows") > 0.0, "no window state seen");
}
