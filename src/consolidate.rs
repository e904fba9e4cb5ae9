//! Working-memory (L2) consolidation: per tumbling window of event time, a worker's verdicts
//! are folded into one [`Summary`] (counts, means, top conditions, and novelty against the
//! worker's recent summaries) by a [`Consolidator`], and a background [`Compressor`] thread
//! xz-compresses each summary and keeps windowed statistics of ratio and time
//! ([`CompressionStats`]). It does not register metrics, load configuration, choose watermarks
//! or read the clock for windows: the runtime feeds each worker's [`Consolidator`] verdicts and
//! watermarks, hands the summaries it returns to a [`SummarySender`], and exports
//! [`CompressionStats::snapshot`].
//!
//! # Bounds
//! A [`Consolidator`] holds only open windows, at most `max_open_windows` of them. A verdict
//! whose window the watermark has closed is *late*; one that would open a window beyond the
//! bound is *early* if its window is newer than every open one and *late* otherwise. Both are
//! counted and dropped: they never reopen or force-close a window. (With a watermark of max
//! event time − lateness, about `lateness / window + 1` windows are open at once, hence the
//! bound's documented minimum.) Each window tracks at most `max_conditions` distinct
//! conditions, each keyed by at most [`MAX_CONDITION_BYTES`] of its text; occurrences of
//! further conditions are counted as untracked, part of "other". Novelty compares against a
//! ring of the last `recent` summaries' distributions, and the compressor keeps its last
//! `stats_window` measurements in a ring.
//!
//! # Novelty
//! A summary is read as four distributions: shares of decisions, severities, tiers, and
//! conditions (each listed top condition, "other" for the remaining occurrences, and "none"
//! for each verdict without conditions). Novelty is the mean over the four of the
//! Jensen–Shannon distance (√ of the base-2 JS divergence) between this window's distribution
//! and the mean distribution of the last `recent` summaries. Chosen over 1 − cosine because
//! it compares distributions as distributions: it is in [0, 1] by construction (0 for equal,
//! 1 for disjoint support), symmetric, a true metric, and needs no smoothing for outcomes
//! absent on one side, where cosine would be dominated by the largest share and ignore how
//! mass moved among small ones. The first window of a worker has nothing to compare with: its
//! novelty is 0 (no evidence of change, so a restart raises no alarm) and `compared_with` is
//! 0. Novelty is a function of the summaries alone, so it can be recomputed from the archive
//! of summaries.
//!
//! # Compression settings
//! Each summary becomes its own xz stream (JSON plus a newline), so the optional output file
//! is a concatenation of streams that `xz -dc` turns into JSON lines. A failed write is cut
//! back; a crash in the middle of one (a single `write` of ~1 KiB) leaves a torn stream that
//! is not repaired, after which `xz -dc` reports corruption. An encoder cannot be reset
//! through `xz2`, and a preset-6 easy encoder needs ~98 MB (mostly its 8 MiB dictionary's
//! match finder), measured at ~0.5–0.8 ms per 1.2 KiB summary, nearly all of it setup. A
//! summary is ~1–3 KiB, so a dictionary larger than the input buys nothing: the encoder keeps
//! the preset's settings but cuts the dictionary to the next power of two above the JSON
//! (4–256 KiB), which gave the same compressed size with ~1.5 MB and ~0.05–0.15 ms per
//! summary. Reusing one stream with a full flush per summary was measured
//! too: at preset 6 it is no faster (each block re-zeroes the 8 MiB dictionary's tables) and
//! leaves no self-contained stream per summary.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Instant;

use bizra_dataflows::ethics::Severity;
use bizra_dataflows::verdict::{Decision, Verdict};
use bizra_dataflows::verification::Tier;
use serde::{Deserialize, Serialize};
use xz2::stream::{Action, Check, Filters, LzmaOptions, Status, Stream};

/// Longest condition text used as a key (bytes, cut at a character boundary): conditions
/// quote caller-supplied harm names, so a key's size must not depend on the input.
pub const MAX_CONDITION_BYTES: usize = 160;

/// JS divergences at or below this are rounding of the shares, not a difference: without it
/// identical windows would score ~1e-8 after the square root.
const ROUNDING: f64 = 1e-12;

/// Smallest and largest dictionary the compressor uses (see the module doc): 4 KiB is
/// liblzma's minimum, 256 KiB is the smallest preset dictionary (preset 0).
const DICT_BYTES: (usize, usize) = (4 << 10, 256 << 10);

/// What consolidation can get wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConsolidateError {
    #[error("consolidate.{field}: expected a value in {min}..={max}, found {found}")]
    Config {
        field: &'static str,
        min: u64,
        max: u64,
        found: u64,
    },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("start the consolidation compressor thread: {0}")]
    Spawn(#[source] io::Error),
    #[error("xz compression of a summary: {0}")]
    Xz(#[from] xz2::stream::Error),
}

impl ConsolidateError {
    fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ConsolidateError + 'a {
        move |source| ConsolidateError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The `[consolidate]` section of the configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsolidateConfig {
    /// Length of a tumbling window of event time (ms): verdicts with event time in
    /// `[k·window_ms, (k+1)·window_ms)` make one summary per worker.
    pub window_ms: u64,
    /// Consecutive windows a worker may hold open. Must exceed
    /// `stats.lateness_ms / window_ms + 1`, or verdicts the watermark still accepts are dropped
    /// as early.
    pub max_open_windows: usize,
    /// Distinct conditions counted by name per window; further ones count as untracked, so
    /// caller-influenced text never grows the state.
    pub max_conditions: usize,
    /// Conditions listed by name in a summary, most frequent first; at most `max_conditions`.
    pub top_k: usize,
    /// Previous summaries of the same worker that novelty is measured against.
    pub recent: usize,
    /// xz preset (0–9) of the compressor; the dictionary is cut to the summary's size, so a
    /// high preset costs time, not memory.
    pub xz_preset: u32,
    /// Summaries waiting for the compressor; when the queue is full a summary is dropped and
    /// counted (summaries are derived data and can be recomputed, unlike episodes).
    pub queue_summaries: usize,
    /// Most recent compressions the exported ratio and time statistics cover.
    pub stats_window: usize,
    /// The summaries file rolls over to `<file>.1` at this size, so at most twice this is kept.
    pub file_max_bytes: u64,
}

impl Default for ConsolidateConfig {
    fn default() -> Self {
        ConsolidateConfig {
            window_ms: 60_000,
            max_open_windows: 4,
            max_conditions: 64,
            top_k: 10,
            recent: 8,
            xz_preset: 6,
            queue_summaries: 256,
            stats_window: 1_024,
            file_max_bytes: 64 << 20,
        }
    }
}

impl ConsolidateConfig {
    /// Checks every field against its range; `top_k` may not exceed `max_conditions`.
    pub fn validate(&self) -> Result<(), ConsolidateError> {
        let n = |x: usize| x as u64;
        let checks = [
            ("window_ms", self.window_ms, 1, i64::MAX as u64 / 2),
            ("max_open_windows", n(self.max_open_windows), 1, 64),
            ("max_conditions", n(self.max_conditions), 1, 4_096),
            ("top_k", n(self.top_k), 1, n(self.max_conditions)),
            ("recent", n(self.recent), 1, 1_024),
            ("xz_preset", u64::from(self.xz_preset), 0, 9),
            ("queue_summaries", n(self.queue_summaries), 1, 1 << 20),
            ("stats_window", n(self.stats_window), 1, 1 << 20),
            ("file_max_bytes", self.file_max_bytes, 4_096, u64::MAX),
        ];
        for (field, found, min, max) in checks {
            if !(min..=max).contains(&found) {
                return Err(ConsolidateError::Config {
                    field,
                    min,
                    max,
                    found,
                });
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// The summary record.

/// A condition and how often it occurred in the window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConditionCount {
    pub condition: String,
    pub count: u64,
}

/// One window of one worker's verdicts: the consolidated (L2) record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Inclusive start (ms of event time), a multiple of `window_ms`.
    pub window_start_ms: i64,
    /// Exclusive end (ms of event time).
    pub window_end_ms: i64,
    /// The timely worker that consolidated the window; each worker summarises its own verdicts.
    pub worker: u32,
    pub count: u64,
    /// Verdicts per decision; every decision is present, zero or not.
    pub decisions: BTreeMap<Decision, u64>,
    /// Verdicts per verification tier; every tier is present.
    pub tiers: BTreeMap<Tier, u64>,
    /// Verdicts per ethics severity; every severity is present.
    pub severities: BTreeMap<Severity, u64>,
    /// Verdicts whose verification failed.
    pub invalid: u64,
    pub mean_clarity: f64,
    pub mean_value: f64,
    /// Mean of the ethics `overall` score.
    pub mean_ethics: f64,
    /// The `top_k` most frequent conditions, most frequent first (ties by text).
    pub top_conditions: Vec<ConditionCount>,
    /// Condition occurrences not in `top_conditions`, untracked ones included.
    pub other_conditions: u64,
    /// Of `other_conditions`: occurrences of conditions beyond `max_conditions` distinct ones.
    pub untracked_conditions: u64,
    /// Verdicts with no condition.
    pub without_conditions: u64,
    /// In [0, 1]: how far this window's distributions are from the recent summaries' (see the
    /// module doc); 0 when there is nothing to compare with.
    pub novelty: f64,
    /// How many previous summaries `novelty` compared with (0 for a worker's first window).
    pub compared_with: u32,
}

// ---------------------------------------------------------------------------------------
// Per-worker consolidation.

/// One open window's running totals.
#[derive(Debug, Default)]
struct Window {
    count: u64,
    /// Indexed by `Decision as usize`.
    decisions: [u64; 3],
    /// Indexed by `Tier as usize`.
    tiers: [u64; 3],
    /// Indexed by `Severity as usize`.
    severities: [u64; 5],
    invalid: u64,
    /// Σ clarity, Σ value, Σ ethics overall.
    sums: [f64; 3],
    /// At most `max_conditions` keys, each at most `MAX_CONDITION_BYTES` long.
    conditions: HashMap<String, u64>,
    untracked: u64,
    without_conditions: u64,
}

impl Window {
    fn add(&mut self, v: &Verdict, max_conditions: usize) {
        self.count += 1;
        self.decisions[v.decision as usize] += 1;
        self.tiers[v.verification.tier as usize] += 1;
        self.severities[v.ethics.severity as usize] += 1;
        self.invalid += u64::from(!v.verification.valid);
        self.sums[0] += v.convergence.clarity;
        self.sums[1] += v.value.value;
        self.sums[2] += v.ethics.overall;
        self.without_conditions += u64::from(v.ethics.conditions.is_empty());
        for c in &v.ethics.conditions {
            self.add_condition(condition_key(c), max_conditions);
        }
    }

    fn add_condition(&mut self, key: &str, max_conditions: usize) {
        if let Some(n) = self.conditions.get_mut(key) {
            *n += 1;
        } else if self.conditions.len() < max_conditions {
            self.conditions.insert(key.to_owned(), 1);
        } else {
            self.untracked += 1;
        }
    }

    /// The summary of window `[start, end)`, novelty not yet set.
    fn summary(&self, start: i64, end: i64, worker: u32, top_k: usize) -> Summary {
        let n = self.count as f64;
        let top_conditions = top(&self.conditions, top_k);
        let listed: u64 = top_conditions.iter().map(|c| c.count).sum();
        let occurrences: u64 = self.conditions.values().sum::<u64>() + self.untracked;
        Summary {
            window_start_ms: start,
            window_end_ms: end,
            worker,
            count: self.count,
            decisions: Decision::ALL.into_iter().zip(self.decisions).collect(),
            tiers: Tier::ALL.into_iter().zip(self.tiers).collect(),
            severities: Severity::ALL.into_iter().zip(self.severities).collect(),
            invalid: self.invalid,
            mean_clarity: self.sums[0] / n,
            mean_value: self.sums[1] / n,
            mean_ethics: self.sums[2] / n,
            top_conditions,
            other_conditions: occurrences - listed,
            untracked_conditions: self.untracked,
            without_conditions: self.without_conditions,
            novelty: 0.0,
            compared_with: 0,
        }
    }
}

/// `c` cut to at most [`MAX_CONDITION_BYTES`] at a character boundary.
fn condition_key(c: &str) -> &str {
    let mut end = c.len().min(MAX_CONDITION_BYTES);
    while !c.is_char_boundary(end) {
        end -= 1;
    }
    &c[..end]
}

/// The `k` most frequent conditions, ties broken by text so the record is deterministic.
fn top(conditions: &HashMap<String, u64>, k: usize) -> Vec<ConditionCount> {
    let mut all: Vec<(&String, &u64)> = conditions.iter().collect();
    all.sort_unstable_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
    let top = all.into_iter().take(k);
    top.map(|(c, &count)| ConditionCount {
        condition: c.clone(),
        count,
    })
    .collect()
}

/// Consolidates one worker's verdicts into one [`Summary`] per tumbling window. Cheap enough
/// for a timely worker: `observe` is a few array updates and at most a handful of hash
/// lookups, `advance` sorts at most `max_conditions` counts per closed window.
#[derive(Debug)]
pub struct Consolidator {
    worker: u32,
    window_ms: i64,
    max_open_windows: usize,
    max_conditions: usize,
    top_k: usize,
    /// Open windows by start; see the module doc for the bound.
    open: BTreeMap<i64, Window>,
    /// The highest watermark seen: windows ending at or below it are closed.
    closed_until: Option<i64>,
    recent: Recent,
    late: u64,
    early: u64,
}

impl Consolidator {
    /// A consolidator for `worker`, after checking `cfg`.
    pub fn new(cfg: &ConsolidateConfig, worker: u32) -> Result<Consolidator, ConsolidateError> {
        cfg.validate()?;
        Ok(Consolidator {
            worker,
            window_ms: cfg.window_ms as i64,
            max_open_windows: cfg.max_open_windows,
            max_conditions: cfg.max_conditions,
            top_k: cfg.top_k,
            open: BTreeMap::new(),
            closed_until: None,
            recent: Recent::new(cfg.recent),
            late: 0,
            early: 0,
        })
    }

    /// Adds `v` to the window of its `event_ms`, or counts it as late or early.
    pub fn observe(&mut self, v: &Verdict) {
        let start = v.event_ms.saturating_sub(v.event_ms.rem_euclid(self.window_ms));
        if self.admit(start) {
            self.open.entry(start).or_default().add(v, self.max_conditions);
        }
    }

    /// Whether a verdict of the window starting at `start` may be counted; counts it as late
    /// or early if not.
    fn admit(&mut self, start: i64) -> bool {
        let closed = self
            .closed_until
            .is_some_and(|t| start.saturating_add(self.window_ms) <= t);
        let room = self.open.contains_key(&start) || self.open.len() < self.max_open_windows;
        if !closed && room {
            return true;
        }
        let newest = self.open.keys().next_back();
        if !closed && newest.is_some_and(|&newest| start > newest) {
            self.early += 1;
        } else {
            self.late += 1;
        }
        false
    }

    /// Closes every open window ending at or below `watermark_ms` (or an earlier watermark:
    /// the watermark never moves back) and returns their summaries, oldest first.
    pub fn advance(&mut self, watermark_ms: i64) -> Vec<Summary> {
        let closed_until = self.closed_until.map_or(watermark_ms, |t| t.max(watermark_ms));
        self.closed_until = Some(closed_until);
        let mut out = Vec::new();
        while let Some(entry) = self.open.first_entry() {
            let end = entry.key().saturating_add(self.window_ms);
            if end > closed_until {
                break;
            }
            let (start, window) = entry.remove_entry();
            out.push(self.close(start, end, &window));
        }
        out
    }

    fn close(&mut self, start: i64, end: i64, window: &Window) -> Summary {
        let mut summary = window.summary(start, end, self.worker, self.top_k);
        let profile = Profile::of(&summary);
        (summary.novelty, summary.compared_with) = self.recent.novelty(&profile);
        self.recent.push(profile);
        summary
    }

    /// Verdicts dropped because their window was closed, or was older than every open window
    /// when `max_open_windows` were open.
    pub fn late(&self) -> u64 {
        self.late
    }

    /// Verdicts dropped because their window was newer than every open window when
    /// `max_open_windows` were open.
    pub fn early(&self) -> u64 {
        self.early
    }

    /// Windows currently open (at most `max_open_windows`).
    pub fn open_windows(&self) -> usize {
        self.open.len()
    }
}

// ---------------------------------------------------------------------------------------
// Novelty.

/// What a distribution gives a share to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    Decision(Decision),
    Severity(Severity),
    Tier(Tier),
    Condition(String),
    OtherConditions,
    NoConditions,
}

/// Shares of outcomes; outcomes with no share are absent.
type Distribution = BTreeMap<Outcome, f64>;

/// A summary read as distributions: decisions, severities, tiers, conditions.
#[derive(Clone, Debug, Default, PartialEq)]
struct Profile([Distribution; 4]);

impl Profile {
    fn of(s: &Summary) -> Profile {
        let conditions = s.top_conditions.iter();
        let conditions = conditions.map(|c| (Outcome::Condition(c.condition.clone()), c.count));
        let rest = [
            (Outcome::OtherConditions, s.other_conditions),
            (Outcome::NoConditions, s.without_conditions),
        ];
        Profile([
            shares(s.decisions.iter().map(|(&d, &n)| (Outcome::Decision(d), n))),
            shares(s.severities.iter().map(|(&d, &n)| (Outcome::Severity(d), n))),
            shares(s.tiers.iter().map(|(&d, &n)| (Outcome::Tier(d), n))),
            shares(conditions.chain(rest)),
        ])
    }

    /// The outcome-wise mean of `profiles`.
    fn mean<'a>(profiles: impl ExactSizeIterator<Item = &'a Profile>) -> Profile {
        let n = profiles.len() as f64;
        let mut sum = Profile::default();
        for p in profiles {
            for (total, block) in sum.0.iter_mut().zip(&p.0) {
                for (outcome, share) in block {
                    *total.entry(outcome.clone()).or_default() += share;
                }
            }
        }
        sum.0
            .iter_mut()
            .flat_map(|b| b.values_mut())
            .for_each(|x| *x /= n);
        sum
    }
}

fn shares(counts: impl Iterator<Item = (Outcome, u64)>) -> Distribution {
    let counts: Vec<(Outcome, u64)> = counts.filter(|&(_, n)| n > 0).collect();
    let total = counts.iter().map(|&(_, n)| n).sum::<u64>() as f64;
    counts.into_iter().map(|(o, n)| (o, n as f64 / total)).collect()
}

/// The Jensen–Shannon distance of two distributions, in [0, 1].
fn js_distance(p: &Distribution, q: &Distribution) -> f64 {
    // ½ Σ a·log2(a/m) over a's outcomes, m the midpoint of a and b.
    let half = |a: &Distribution, b: &Distribution| -> f64 {
        let terms = a.iter().filter(|&(_, &x)| x > 0.0);
        let term = |(o, &x): (&Outcome, &f64)| x * (2.0 * x / (x + b.get(o).copied().unwrap_or(0.0))).log2();
        terms.map(term).sum::<f64>() / 2.0
    };
    let divergence = half(p, q) + half(q, p);
    if divergence <= ROUNDING {
        0.0
    } else {
        divergence.min(1.0).sqrt()
    }
}

/// The profiles of a worker's last summaries: a ring of fixed capacity.
#[derive(Debug)]
struct Recent {
    ring: VecDeque<Profile>,
    capacity: usize,
}

impl Recent {
    fn new(capacity: usize) -> Recent {
        Recent {
            ring: VecDeque::with_capacity(capacity),
            capacity,
        }
    }

    fn push(&mut self, p: Profile) {
        if self.ring.len() == self.capacity {
            self.ring.pop_front();
        }
        self.ring.push_back(p);
    }

    /// The novelty of `p` against the ring, and the number of profiles it compared with.
    fn novelty(&self, p: &Profile) -> (f64, u32) {
        if self.ring.is_empty() {
            return (0.0, 0);
        }
        let mean = Profile::mean(self.ring.iter());
        let distances = p.0.iter().zip(&mean.0).map(|(a, b)| js_distance(a, b));
        (distances.sum::<f64>() / p.0.len() as f64, self.ring.len() as u32)
    }
}

// ---------------------------------------------------------------------------------------
// Compression.

/// One compressed summary.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Measurement {
    /// JSON bytes / xz bytes.
    ratio: f64,
    /// Encoder setup and compression, JSON serialization and file writes excluded.
    seconds: f64,
}

/// The last `capacity` measurements; the oldest is overwritten.
#[derive(Debug)]
struct Ring {
    items: Vec<Measurement>,
    next: usize,
    capacity: usize,
}

/// The compressor's statistics, shared with whoever exports them.
#[derive(Debug)]
pub struct CompressionStats {
    /// Held only to push one measurement or to copy the ring out.
    window: Mutex<Ring>,
    compressed: AtomicU64,
    dropped: AtomicU64,
    errors: AtomicU64,
}

/// The windowed statistics at one moment; ratios and times are over the last `count`
/// compressions, the counters since the compressor started.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// Compressions in the window (at most `stats_window`); 0 leaves the figures below at 0.
    pub count: usize,
    pub mean_ratio: f64,
    pub max_ratio: f64,
    pub mean_seconds: f64,
    /// Nearest-rank 95th percentile.
    pub p95_seconds: f64,
    /// Summaries compressed since start.
    pub compressed: u64,
    /// Summaries dropped at a full queue (or after the compressor stopped).
    pub dropped: u64,
    /// Summaries that failed to compress or to be appended to the file (each is logged).
    pub errors: u64,
}

impl CompressionStats {
    fn new(capacity: usize) -> CompressionStats {
        CompressionStats {
            window: Mutex::new(Ring {
                items: Vec::with_capacity(capacity),
                next: 0,
                capacity,
            }),
            compressed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        }
    }

    fn record(&self, m: Measurement) {
        let mut ring = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        if ring.items.len() < ring.capacity {
            ring.items.push(m);
        } else {
            let i = ring.next;
            ring.items[i] = m;
        }
        ring.next = (ring.next + 1) % ring.capacity;
        drop(ring);
        self.compressed.fetch_add(1, Ordering::Relaxed);
    }

    /// The current windowed statistics; the lock is held only to copy the ring.
    pub fn snapshot(&self) -> Snapshot {
        let items = self
            .window
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .items
            .clone();
        let counters = Snapshot {
            compressed: self.compressed.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            ..Snapshot::default()
        };
        if items.is_empty() {
            return counters;
        }
        let n = items.len() as f64;
        let mut seconds: Vec<f64> = items.iter().map(|m| m.seconds).collect();
        seconds.sort_unstable_by(f64::total_cmp);
        Snapshot {
            count: items.len(),
            mean_ratio: items.iter().map(|m| m.ratio).sum::<f64>() / n,
            max_ratio: items.iter().map(|m| m.ratio).fold(0.0, f64::max),
            mean_seconds: seconds.iter().sum::<f64>() / n,
            p95_seconds: seconds[(items.len() * 95).div_ceil(100) - 1],
            ..counters
        }
    }
}

/// A worker's handle to the compressor queue; cheap to clone, never blocks.
#[derive(Clone, Debug)]
pub struct SummarySender {
    tx: SyncSender<Summary>,
    stats: Arc<CompressionStats>,
}

impl SummarySender {
    /// Queues `summary` for compression. When the queue is full (or the compressor is gone)
    /// the summary is dropped, counted in [`Snapshot::dropped`], and `false` returned.
    pub fn try_send(&self, summary: Summary) -> bool {
        match self.tx.try_send(summary) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }
}

/// The background thread that compresses summaries, spawned once per process.
///
/// The thread ends when every [`SummarySender`] is dropped; [`Compressor::close`] (or
/// dropping the compressor) drops its own sender and waits for it, so close it after the
/// workers are done.
pub struct Compressor {
    /// `None` once stopping, so that the thread sees the queue close.
    sender: Option<SummarySender>,
    thread: Option<JoinHandle<()>>,
    stats: Arc<CompressionStats>,
}

impl Compressor {
    /// Checks `cfg`, opens `out` for appending if given (one xz stream per summary; without
    /// it summaries are only measured) and starts the thread.
    pub fn spawn(cfg: &ConsolidateConfig, out: Option<PathBuf>) -> Result<Compressor, ConsolidateError> {
        cfg.validate()?;
        let out = out.map(Appender::open).transpose()?;
        let stats = Arc::new(CompressionStats::new(cfg.stats_window));
        let (tx, rx) = mpsc::sync_channel(cfg.queue_summaries);
        let worker = CompressWorker {
            preset: cfg.xz_preset,
            stats: stats.clone(),
            out,
            max_file_bytes: cfg.file_max_bytes,
            json: Vec::with_capacity(4 << 10),
            xz: Vec::with_capacity(4 << 10),
        };
        let thread = std::thread::Builder::new()
            .name("bizra-consolidate".into())
            .spawn(move || worker.run(rx))
            .map_err(ConsolidateError::Spawn)?;
        Ok(Compressor {
            sender: Some(SummarySender {
                tx,
                stats: stats.clone(),
            }),
            thread: Some(thread),
            stats,
        })
    }

    /// A sender for one worker.
    pub fn sender(&self) -> SummarySender {
        self.sender
            .clone()
            .expect("the sender is taken only when stopping")
    }

    /// The statistics, for the metrics exporter.
    pub fn stats(&self) -> &Arc<CompressionStats> {
        &self.stats
    }

    /// Compresses what is queued, stops the thread and returns the final statistics.
    pub fn close(mut self) -> Snapshot {
        self.stop();
        self.stats.snapshot()
    }

    fn stop(&mut self) {
        self.sender = None;
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("consolidation compressor thread panicked");
            }
        }
    }
}

impl Drop for Compressor {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The compressor thread's state; its buffers are reused from one summary to the next.
struct CompressWorker {
    preset: u32,
    stats: Arc<CompressionStats>,
    out: Option<Appender>,
    max_file_bytes: u64,
    json: Vec<u8>,
    xz: Vec<u8>,
}

impl CompressWorker {
    fn run(mut self, rx: Receiver<Summary>) {
        for summary in rx {
            if let Err(error) = self.handle(&summary) {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                let (worker, start_ms) = (summary.worker, summary.window_start_ms);
                tracing::warn!(worker, start_ms, %error, "summary compression failed");
            }
        }
    }

    fn handle(&mut self, summary: &Summary) -> Result<(), ConsolidateError> {
        self.json.clear();
        serde_json::to_writer(&mut self.json, summary).expect("a summary serializes to JSON");
        self.json.push(b'\n');
        let started = Instant::now();
        compress(self.preset, &self.json, &mut self.xz)?;
        self.stats.record(Measurement {
            ratio: self.json.len() as f64 / self.xz.len() as f64,
            seconds: started.elapsed().as_secs_f64(),
        });
        match &mut self.out {
            Some(out) => out.append(&self.xz, self.max_file_bytes),
            None => Ok(()),
        }
    }
}

/// Replaces `out` with `input` as one complete xz stream at `preset`, the dictionary cut to
/// the input's size (see the module doc).
fn compress(preset: u32, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), xz2::stream::Error> {
    let dict = input.len().clamp(DICT_BYTES.0, DICT_BYTES.1).next_power_of_two();
    let mut options = LzmaOptions::new_preset(preset)?;
    options.dict_size(dict as u32);
    let mut filters = Filters::new();
    filters.lzma2(&options);
    let mut xz = Stream::new_stream_encoder(&filters, Check::Crc64)?;
    out.clear();
    loop {
        if out.len() == out.capacity() {
            out.reserve(out.capacity().max(4 << 10));
        }
        let before = xz.total_in();
        let status = xz.process_vec(input, out, Action::Finish)?;
        input = &input[(xz.total_in() - before) as usize..];
        if status == Status::StreamEnd {
            return Ok(());
        }
    }
}

/// The optional file of compressed summaries.
struct Appender {
    path: PathBuf,
    file: File,
    /// File length after the last complete stream: where a failed write cuts back to.
    good_len: u64,
}

impl Appender {
    fn open(path: PathBuf) -> Result<Appender, ConsolidateError> {
        let file = OpenOptions::new().create(true).append(true).open(&path);
        let file = file.map_err(ConsolidateError::io("open summary file", &path))?;
        let good_len = file
            .metadata()
            .map_err(ConsolidateError::io("stat summary file", &path))?
            .len();
        Ok(Appender { path, file, good_len })
    }

    fn append(&mut self, stream: &[u8], max_bytes: u64) -> Result<(), ConsolidateError> {
        if self.good_len > 0 && self.good_len + stream.len() as u64 > max_bytes {
            self.rotate()?;
        }
        if let Err(e) = self.file.write_all(stream) {
            // Best effort: without the cut a torn stream would hide every later summary.
            let _ = self.file.set_len(self.good_len);
            return Err(ConsolidateError::io("append to summary file", &self.path)(e));
        }
        self.good_len += stream.len() as u64;
        Ok(())
    }

    /// Moves the full file to `<path>.1` (replacing the previous one) and starts an empty
    /// one, so the summaries on disk stay under twice the cap.
    fn rotate(&mut self) -> Result<(), ConsolidateError> {
        let mut old = self.path.clone().into_os_string();
        old.push(".1");
        std::fs::rename(&self.path, &old).map_err(ConsolidateError::io("rotate summary file", &self.path))?;
        *self = Appender::open(self.path.clone())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bizra_dataflows::policy::Policy;
    use bizra_dataflows::testing::{checked, verification};
    use bizra_dataflows::verification::BatchRef;
    use serde_json::json;

    use super::*;

    /// Contexts that land on each severity (from the ethics tests), so windows see them all.
    fn context(kind: usize) -> serde_json::Value {
        let harms = |n: usize| vec!["Data loss"; n];
        match kind % 5 {
            0 => json!({
                "stakeholders": ["a", "b", "c", "d", "e"],
                "affected": (0..10).map(|i| format!("p{i}")).collect::<Vec<_>>(),
                "potential_benefits": ["x", "y", "z"],
                "potential_harms": ["minor delay"],
                "reversibility": 1.0,
                "constraints": {"k": 1},
                "history": [1],
                "cultural_context": "local",
            }),
            1 => json!({}),
            2 => json!({"potential_harms": harms(4), "reversibility": 0.2}),
            3 => json!({"potential_harms": harms(30), "potential_benefits": [], "reversibility": 0.0}),
            _ => json!({"potential_harms": harms(200), "potential_benefits": [], "reversibility": 0.0}),
        }
    }

    /// A verdict made by the real stages: decode → converge → assess, with tier, validity
    /// and event time as given.
    fn verdict(i: usize, tier: Tier, valid: bool, event_ms: i64) -> Verdict {
        let obs = json!({"id": format!("o{i}"), "data": format!("reading {i} {}", i * i % 97), "context": context(i)});
        let policy = Policy::reference();
        let batch = BatchRef {
            shard: 0,
            seq: 0,
            leaf_index: 0,
        };
        let outcome = verification(tier, valid, 1.0, false);
        let checked = checked(
            obs.to_string().as_bytes(),
            None,
            event_ms,
            &policy,
            outcome,
            batch,
        );
        let mut v = *bizra_dataflows::verdict::assess(checked, &policy, &policy.version()).verdict;
        v.event_ms = event_ms;
        v
    }

    fn config(window_ms: u64) -> ConsolidateConfig {
        ConsolidateConfig {
            window_ms,
            ..ConsolidateConfig::default()
        }
    }

    /// The summary fields of `vs` (one window) computed directly, novelty left at 0.
    fn reference(vs: &[&Verdict], start: i64, end: i64, top_k: usize) -> Summary {
        let n = vs.len() as u64;
        let count = |f: &dyn Fn(&Verdict) -> bool| vs.iter().filter(|v| f(v)).count() as u64;
        let mean = |f: fn(&Verdict) -> f64| vs.iter().map(|v| f(v)).sum::<f64>() / n as f64;
        let mut conditions: BTreeMap<&str, u64> = BTreeMap::new();
        for c in vs.iter().flat_map(|v| &v.ethics.conditions) {
            *conditions.entry(c).or_default() += 1;
        }
        let mut ranked: Vec<(&str, u64)> = conditions.into_iter().collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let all: u64 = ranked.iter().map(|c| c.1).sum();
        ranked.truncate(top_k);
        let listed: u64 = ranked.iter().map(|c| c.1).sum();
        Summary {
            window_start_ms: start,
            window_end_ms: end,
            worker: 7,
            count: n,
            decisions: Decision::ALL.map(|d| (d, count(&|v| v.decision == d))).into(),
            tiers: Tier::ALL
                .map(|t| (t, count(&|v| v.verification.tier == t)))
                .into(),
            severities: Severity::ALL
                .map(|s| (s, count(&|v| v.ethics.severity == s)))
                .into(),
            invalid: count(&|v| !v.verification.valid),
            mean_clarity: mean(|v| v.convergence.clarity),
            mean_value: mean(|v| v.value.value),
            mean_ethics: mean(|v| v.ethics.overall),
            top_conditions: ranked
                .into_iter()
                .map(|(c, count)| ConditionCount {
                    condition: c.to_owned(),
                    count,
                })
                .collect(),
            other_conditions: all - listed,
            untracked_conditions: 0,
            without_conditions: count(&|v| v.ethics.conditions.is_empty()),
            novelty: 0.0,
            compared_with: 0,
        }
    }

    #[test]
    fn summary_counts_and_means_match_a_direct_computation() {
        let cfg = config(5_000);
        let verdicts: Vec<Verdict> = (0..700)
            .map(|i| verdict(i, Tier::ALL[i % 3], i % 7 != 0, (i as i64 * 37) - 1_000))
            .collect();
        let mut c = Consolidator::new(&cfg, 7).unwrap();
        let mut got = Vec::new();
        for (i, v) in verdicts.iter().enumerate() {
            c.observe(v);
            if i % 50 == 49 {
                got.extend(c.advance(v.event_ms - 2_000)); // a watermark with 2 s of lateness
            }
        }
        got.extend(c.advance(i64::MAX));
        assert_eq!(
            got.len(),
            6,
            "event times −1 000 … 24 863 ms span 6 windows of 5 s"
        );
        for (k, s) in got.iter().enumerate() {
            let start = -5_000 + 5_000 * k as i64;
            let window: Vec<&Verdict> = verdicts
                .iter()
                .filter(|v| (start..start + 5_000).contains(&v.event_ms))
                .collect();
            let want = reference(&window, start, start + 5_000, cfg.top_k);
            assert_eq!(
                (s.compared_with, k > 0),
                (k.min(cfg.recent) as u32, s.novelty > 0.0)
            );
            let without_novelty = Summary {
                novelty: 0.0,
                compared_with: 0,
                ..s.clone()
            };
            assert_eq!(without_novelty, want, "window {k}");
        }
        let severities = got[2].severities.values().filter(|&&n| n > 0).count();
        assert_eq!(
            severities, 5,
            "every severity occurs, so the comparison is not trivial"
        );
        assert!(got[2].top_conditions.len() == cfg.top_k && got[2].other_conditions > 0);
        assert_eq!((c.late(), c.early(), c.open_windows()), (0, 0, 0));
    }

    #[test]
    fn windows_close_at_the_watermark_and_late_verdicts_are_counted() {
        let mut c = Consolidator::new(&config(1_000), 0).unwrap();
        c.observe(&verdict(1, Tier::Full, true, 1_500));
        c.observe(&verdict(2, Tier::Full, true, 2_000));
        assert!(
            c.advance(1_999).is_empty(),
            "window [1000, 2000) ends after the watermark"
        );
        let closed = c.advance(2_000);
        assert_eq!(closed.len(), 1);
        assert_eq!(
            (
                closed[0].window_start_ms,
                closed[0].window_end_ms,
                closed[0].count
            ),
            (1_000, 2_000, 1)
        );
        c.observe(&verdict(3, Tier::Full, true, 1_999));
        assert_eq!(c.late(), 1, "its window is closed");
        assert!(c.advance(1_000).is_empty(), "the watermark never moves back");
        c.observe(&verdict(4, Tier::Full, true, 1_000));
        assert_eq!(c.late(), 2);
        let closed = c.advance(3_000);
        assert_eq!(
            closed
                .iter()
                .map(|s| (s.window_start_ms, s.count))
                .collect::<Vec<_>>(),
            [(2_000, 1)]
        );
        assert_eq!((c.open_windows(), c.early()), (0, 0));
    }

    #[test]
    fn open_windows_stay_bounded_and_the_rest_is_counted() {
        let cfg = config(1_000);
        let mut c = Consolidator::new(&cfg, 0).unwrap();
        let v = verdict(1, Tier::Full, true, 0);
        let at = |ms: i64| Verdict {
            event_ms: ms,
            ..v.clone()
        };
        for k in 0..cfg.max_open_windows as i64 {
            c.observe(&at(10_000 + k * 1_000));
        }
        c.observe(&at(99_000));
        c.observe(&at(5_000));
        c.observe(&at(10_500)); // an open window still takes verdicts
        assert_eq!(
            (c.open_windows(), c.early(), c.late()),
            (cfg.max_open_windows, 1, 1)
        );
        let counts: Vec<u64> = c.advance(i64::MAX).iter().map(|s| s.count).collect();
        assert_eq!(counts, [2, 1, 1, 1]);
    }

    #[test]
    fn condition_tracking_stays_bounded_with_many_distinct_conditions() {
        let cfg = config(1_000);
        let mut c = Consolidator::new(&cfg, 0).unwrap();
        let mut v = verdict(2, Tier::Full, true, 0);
        let long = "é".repeat(MAX_CONDITION_BYTES); // 2 bytes a character
        for i in 0..10_000 {
            v.ethics.conditions = vec![format!("condition {i}"), long.clone() + &i.to_string()];
            c.observe(&v);
        }
        let held: Vec<usize> = c.open.values().map(|w| w.conditions.len()).collect();
        assert_eq!(held, [cfg.max_conditions]);
        let longest = c
            .open
            .values()
            .flat_map(|w| w.conditions.keys())
            .map(String::len)
            .max();
        assert_eq!(longest, Some(MAX_CONDITION_BYTES));
        let s = c.advance(1_000).remove(0);
        assert_eq!(s.top_conditions[0].condition, "é".repeat(MAX_CONDITION_BYTES / 2));
        assert_eq!(
            s.top_conditions[0].count, 10_000,
            "long conditions share their first bytes"
        );
        assert_eq!(s.top_conditions.len(), cfg.top_k);
        assert_eq!(s.untracked_conditions, 10_000 - (cfg.max_conditions as u64 - 1));
        let listed: u64 = s.top_conditions.iter().map(|c| c.count).sum();
        assert_eq!(listed + s.other_conditions, 20_000);
    }

    /// Novelty of each window when every window holds `n` copies of the verdict `make(k)`.
    fn novelties(recent: usize, windows: usize, make: impl Fn(usize) -> Verdict) -> Vec<(f64, u32)> {
        let cfg = ConsolidateConfig {
            recent,
            ..config(1_000)
        };
        let mut c = Consolidator::new(&cfg, 0).unwrap();
        let mut out = Vec::new();
        for k in 0..windows {
            let v = Verdict {
                event_ms: k as i64 * 1_000,
                ..make(k)
            };
            (0..3).for_each(|_| c.observe(&v));
            out.extend(
                c.advance(v.event_ms + 1_000)
                    .iter()
                    .map(|s| (s.novelty, s.compared_with)),
            );
        }
        out
    }

    #[test]
    fn novelty_is_zero_for_a_first_window_and_for_identical_windows() {
        let v = verdict(2, Tier::Incremental, true, 0);
        let got = novelties(3, 6, |_| v.clone());
        assert_eq!(got, [(0.0, 0), (0.0, 1), (0.0, 2), (0.0, 3), (0.0, 3), (0.0, 3)]);
    }

    #[test]
    fn novelty_is_one_for_disjoint_windows() {
        let a = verdict(0, Tier::Full, true, 0);
        let b = verdict(4, Tier::Statistical, false, 0);
        assert_ne!((a.decision, a.ethics.severity), (b.decision, b.ethics.severity));
        assert!(a.ethics.conditions.is_empty() && !b.ethics.conditions.is_empty());
        let got = novelties(1, 4, |k| if k % 2 == 0 { a.clone() } else { b.clone() });
        assert_eq!(got[0], (0.0, 0));
        for &(novelty, compared) in &got[1..] {
            assert!((novelty - 1.0).abs() < 1e-12, "{novelty}");
            assert_eq!(compared, 1);
        }
    }

    #[test]
    fn novelty_of_a_partial_shift_lies_between_and_fades_as_it_repeats() {
        let usual = verdict(1, Tier::Full, true, 0);
        let shifted = verdict(3, Tier::Full, true, 0);
        let got = novelties(2, 6, |k| if k < 3 { usual.clone() } else { shifted.clone() });
        let n: Vec<f64> = got.iter().map(|g| g.0).collect();
        assert_eq!(n[..3], [0.0; 3]);
        assert!(0.0 < n[3] && n[3] < 1.0, "{n:?}");
        assert!(n[4] < n[3], "half the recent windows already look like it: {n:?}");
        assert_eq!(n[5], 0.0, "the ring of 2 has forgotten the old pattern: {n:?}");
    }

    #[test]
    fn js_distance_is_a_bounded_symmetric_distance() {
        let d = |pairs: &[(Decision, f64)]| -> Distribution {
            pairs.iter().map(|&(k, x)| (Outcome::Decision(k), x)).collect()
        };
        let p = d(&[(Decision::Permit, 0.5), (Decision::Deny, 0.5)]);
        let q = d(&[(Decision::Permit, 0.5), (Decision::Review, 0.5)]);
        assert_eq!(js_distance(&p, &p), 0.0);
        assert_eq!(js_distance(&p, &q), js_distance(&q, &p));
        assert!(
            (js_distance(&p, &q) - 0.5f64.sqrt()).abs() < 1e-12,
            "half the mass moved"
        );
        let r = d(&[(Decision::Review, 1.0)]);
        assert_eq!(js_distance(&d(&[(Decision::Permit, 1.0)]), &r), 1.0);
    }

    fn summary(k: usize) -> Summary {
        let mut c = Consolidator::new(&config(1_000), 3).unwrap();
        for i in 0..20 {
            c.observe(&verdict(k + i, Tier::ALL[i % 3], true, 0));
        }
        c.advance(1_000).remove(0)
    }

    #[test]
    fn summary_json_names_every_key_and_round_trips() {
        let s = summary(0);
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(
            json["decisions"],
            json!({"permit": s.decisions[&Decision::Permit], "review": s.decisions[&Decision::Review], "deny": s.decisions[&Decision::Deny]})
        );
        assert_eq!(json["tiers"].as_object().unwrap().len(), 3);
        assert_eq!(json["severities"].as_object().unwrap().len(), 5);
        assert!(json["severities"]["prohibited"].as_u64().unwrap() > 0);
        assert_eq!(serde_json::from_value::<Summary>(json).unwrap(), s);
    }

    #[test]
    fn compressor_stats_stay_bounded_over_ten_thousand_summaries() {
        let cfg = ConsolidateConfig {
            queue_summaries: 10_000,
            stats_window: 256,
            ..ConsolidateConfig::default()
        };
        let compressor = Compressor::spawn(&cfg, None).unwrap();
        let tx = compressor.sender();
        let base = summary(0);
        for k in 0..10_000 {
            let s = Summary {
                window_start_ms: k * 1_000,
                ..base.clone()
            };
            assert!(tx.try_send(s), "the queue holds all of them");
        }
        drop(tx);
        let stats = compressor.stats().clone();
        let snap = compressor.close();
        eprintln!(
            "10 000 summaries of ~{} JSON bytes, preset {}: {snap:?}",
            serde_json::to_vec(&base).unwrap().len(),
            cfg.xz_preset
        );
        assert_eq!((snap.compressed, snap.dropped, snap.errors), (10_000, 0, 0));
        assert_eq!(snap.count, 256);
        assert_eq!(stats.window.lock().unwrap().items.len(), 256);
        assert!(
            snap.mean_ratio > 1.0 && snap.max_ratio >= snap.mean_ratio,
            "{snap:?}"
        );
        assert!(
            snap.mean_seconds > 0.0 && snap.p95_seconds > 0.0 && snap.p95_seconds < 0.1,
            "{snap:?}"
        );
    }

    #[test]
    fn snapshot_covers_only_the_last_measurements() {
        let stats = CompressionStats::new(4);
        for k in 1..=10 {
            let x = f64::from(k);
            stats.record(Measurement {
                ratio: x,
                seconds: x / 1_000.0,
            });
        }
        let s = stats.snapshot();
        assert_eq!(
            (s.count, s.compressed, s.mean_ratio, s.max_ratio),
            (4, 10, 8.5, 10.0)
        );
        assert_eq!((s.mean_seconds, s.p95_seconds), (0.0085, 0.010));
        assert_eq!(CompressionStats::new(4).snapshot(), Snapshot::default());
    }

    #[test]
    fn full_queue_drops_and_counts_without_blocking() {
        let (tx, rx) = mpsc::sync_channel(2);
        let stats = Arc::new(CompressionStats::new(4));
        let sender = SummarySender {
            tx,
            stats: stats.clone(),
        };
        let s = summary(0);
        let started = Instant::now();
        let sent: Vec<bool> = (0..5).map(|_| sender.try_send(s.clone())).collect();
        assert_eq!(sent, [true, true, false, false, false]);
        assert!(started.elapsed() < Duration::from_secs(1));
        drop(rx);
        assert!(!sender.try_send(s), "a stopped compressor drops too");
        assert_eq!(stats.snapshot().dropped, 4);
    }

    #[test]
    fn appended_summaries_decode_to_json_lines() {
        use std::io::Read;

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("summaries.xz");
        for round in 0..2 {
            let compressor = Compressor::spawn(&ConsolidateConfig::default(), Some(path.clone())).unwrap();
            assert!(compressor.sender().try_send(summary(round)));
            assert!(compressor.sender().try_send(summary(round + 1)));
            assert_eq!(compressor.close().compressed, 2);
        }
        let mut text = String::new();
        let file = File::open(&path).unwrap();
        xz2::read::XzDecoder::new_multi_decoder(file)
            .read_to_string(&mut text)
            .unwrap();
        let got: Vec<Summary> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(got, [summary(0), summary(1), summary(1), summary(2)]);
    }

    #[test]
    fn the_summaries_file_rolls_over_at_its_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("summaries.xz");
        let cfg = ConsolidateConfig {
            file_max_bytes: 4_096,
            queue_summaries: 1_000,
            ..ConsolidateConfig::default()
        };
        let compressor = Compressor::spawn(&cfg, Some(path.clone())).unwrap();
        for k in 0..200 {
            assert!(compressor.sender().try_send(summary(k)));
        }
        assert_eq!(compressor.close().compressed, 200);
        let len = |p: &Path| std::fs::metadata(p).unwrap().len();
        assert!(len(&path) <= 4_096, "current file {}", len(&path));
        assert!(len(&dir.path().join("summaries.xz.1")) <= 4_096);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn config_rejects_out_of_range_values() {
        assert!(ConsolidateConfig::default().validate().is_ok());
        let bad = |cfg: ConsolidateConfig| cfg.validate().unwrap_err().to_string();
        let e = bad(ConsolidateConfig {
            top_k: 65,
            ..ConsolidateConfig::default()
        });
        assert_eq!(e, "consolidate.top_k: expected a value in 1..=64, found 65");
        assert!(bad(config(0)).contains("window_ms"));
        let e = bad(ConsolidateConfig {
            xz_preset: 10,
            ..ConsolidateConfig::default()
        });
        assert!(e.contains("xz_preset") && e.contains("found 10"), "{e}");
        let parsed: ConsolidateConfig = toml::from_str("window_ms = 5000").unwrap();
        assert_eq!((parsed.window_ms, parsed.top_k), (5_000, 10));
        let e = toml::from_str::<ConsolidateConfig>("window = 5")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field"), "{e}");
        assert!(Consolidator::new(&config(0), 0).is_err());
    }
}
