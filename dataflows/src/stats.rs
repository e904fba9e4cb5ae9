//! Sliding-window statistics (SPEC §1.5): one [`WindowStats`] per (window, domain, tier,
//! severity), computed by a separate differential dataflow whose time is event time. Owns the
//! window arithmetic, the aggregate [`Agg`] and its latency sketch. It does not read verdicts
//! off the decision dataflow, watch the clock, or publish anything: the runtime pushes
//! [`Sample`]s, advances the watermark and takes the records out.
//!
//! # Design
//! Time here is event time in ms. The window ending at `T` (a multiple of `slide_ms`) covers
//! event times `[T − window_ms, T)`. A sample with event time `ts` first falls in the window
//! ending at `T0 = (ts / slide_ms + 1) · slide_ms` and last in the one ending at
//! `T0 + window_ms − slide_ms`. So [`Windows::push`] enters its [`Agg`] at time `T0` and
//! retracts it at `T0 + window_ms`: the collection accumulated up to time `T` is exactly window
//! `T`, and a sample costs two updates however many windows it falls in.
//!
//! `count_total` (which exchanges by key, so every key lives on one worker) turns the updates
//! into the changes of each key's total. The thin `emit` operator keeps the current total of
//! each key and, each time the frontier passes a window end, reports every key with a nonzero
//! count — keys that did not change at that time included. A key whose total returns to zero
//! is dropped, nothing is kept for a window once it is reported, and `count_total` compacts
//! its arrangement as the frontier advances: state is bounded by the number of keys, not by
//! the length of the stream.
//!
//! Lateness: the caller advances the input to a watermark (max event time − `lateness_ms`),
//! which closes every window ending at or below it. A sample that would enter a closed window
//! is late: it is counted ([`Windows::late`]) and dropped, never reported in part.
//!
//! Labels stay bounded: a domain not in `domains` is reported as `"other"`, a missing one as
//! `"cognitive_processing"` (the SPEC §2.4 default).
//!
//! ```
//! use bizra_dataflows::ethics::Severity;
//! use bizra_dataflows::stats::{windows, Sample, StatsConfig};
//! use bizra_dataflows::verdict::Decision;
//! use bizra_dataflows::verification::Tier;
//!
//! timely::execute_directly(|worker| {
//!     let cfg = StatsConfig::default(); // 60 s windows every 10 s
//!     let mut w = windows(worker, &cfg);
//!     w.push(Sample {
//!         event_ms: 25_000,
//!         domain: "finance".into(),
//!         tier: Tier::Full,
//!         severity: Severity::Exemplary,
//!         decision: Decision::Permit,
//!         valid: true,
//!         clarity: 0.5,
//!         value: 0.25,
//!         latency_ms: 3.0,
//!     });
//!     w.finish();
//!     while !w.done() {
//!         worker.step();
//!     }
//!     // The windows ending at 30 s, 40 s, …, 80 s contain event time 25 s.
//!     let ends: Vec<i64> = w.take().iter().map(|s| s.window_end_ms).collect();
//!     assert_eq!(ends, [30_000, 40_000, 50_000, 60_000, 70_000, 80_000]);
//! });
//! ```

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use differential_dataflow::difference::{Abelian, IsZero, Monoid, Semigroup};
use differential_dataflow::input::{Input, InputSession};
use differential_dataflow::operators::CountTotal;
use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::{Capability, Inspect, Probe};
use timely::dataflow::{ProbeHandle, StreamVec};
use timely::worker::Worker;

use crate::ethics::Severity;
use crate::observation::Text;
use crate::verdict::{Decision, Verdict};
use crate::verification::Tier;

/// The domain of a verdict without `context.domain` (SPEC §2.4 default).
pub const DEFAULT_DOMAIN: &str = "cognitive_processing";
/// The domains reported by name by default, besides [`DEFAULT_DOMAIN`] (also the ones
/// `bizra gen` draws from).
pub const KNOWN_DOMAINS: [&str; 6] = [
    "finance",
    "healthcare",
    "logistics",
    "energy",
    "education",
    "retail",
];
/// The label of every domain not listed in [`StatsConfig::domains`].
pub const OTHER_DOMAIN: &str = "other";

/// The `[stats]` section of the configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StatsConfig {
    /// Length of a window in ms of event time; a positive multiple of `slide_ms`.
    pub window_ms: u64,
    /// How far windows advance (ms): every window ends at a multiple of it, and each record
    /// counts in `window_ms / slide_ms` windows.
    pub slide_ms: u64,
    /// How long to wait for stragglers: the watermark is max event time − `lateness_ms`, and
    /// a window closes when the watermark reaches its end.
    pub lateness_ms: u64,
    /// How far past its ingest time a record's event time may be. The sender chooses it (the
    /// observation's `timestamp`, the message's timestamp), so a record dated later is
    /// windowed at its ingest time, counted (`bizra_stats_future_records_total`) and kept out
    /// of the watermark: no single record can move the watermark past wall clock + this and
    /// make every later record late.
    pub max_future_ms: u64,
    /// Domains reported under their own name; any other is reported as `"other"`, so that a
    /// caller-controlled string never becomes an unbounded label set.
    pub domains: Vec<String>,
}

impl Default for StatsConfig {
    fn default() -> Self {
        let domains = std::iter::once(DEFAULT_DOMAIN).chain(KNOWN_DOMAINS);
        StatsConfig {
            window_ms: 60_000,
            slide_ms: 10_000,
            lateness_ms: 5_000,
            max_future_ms: 60_000,
            domains: domains.map(String::from).collect(),
        }
    }
}

impl StatsConfig {
    /// Checks that windows tile: `slide_ms > 0` and `window_ms` a positive multiple of it.
    pub fn validate(&self) -> Result<(), String> {
        if self.slide_ms == 0 {
            return Err("stats.slide_ms: expected a positive number of ms, found 0".into());
        }
        if self.window_ms == 0 || !self.window_ms.is_multiple_of(self.slide_ms) {
            return Err(format!(
                "stats.window_ms: expected a positive multiple of stats.slide_ms ({}), found {}",
                self.slide_ms, self.window_ms
            ));
        }
        Ok(())
    }

    /// The watermark after seeing event times up to `max_event_ms`.
    pub fn watermark(&self, max_event_ms: u64) -> u64 {
        max_event_ms.saturating_sub(self.lateness_ms)
    }

    /// The bounded label of a verdict's domain.
    fn label(&self, domain: Option<&str>) -> Text {
        let domain = domain.unwrap_or(DEFAULT_DOMAIN);
        if self.domains.iter().any(|d| d == domain) {
            domain.into()
        } else {
            OTHER_DOMAIN.into()
        }
    }
}

/// What the statistics need of one verdict.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Event time in ms; a negative verdict event time counts as 0.
    pub event_ms: u64,
    /// The bounded domain label (see [`Sample::from_verdict`]).
    pub domain: Text,
    pub tier: Tier,
    pub severity: Severity,
    pub decision: Decision,
    pub valid: bool,
    pub clarity: f64,
    pub value: f64,
    pub latency_ms: f64,
}

impl Sample {
    /// Takes the fields of `v` that window statistics report, with its domain mapped to a
    /// bounded label: missing → `"cognitive_processing"`, not in `cfg.domains` → `"other"`.
    pub fn from_verdict(v: &Verdict, cfg: &StatsConfig) -> Sample {
        Sample {
            event_ms: u64::try_from(v.event_ms).unwrap_or(0),
            domain: cfg.label(v.domain.as_deref()),
            tier: v.verification.tier,
            severity: v.ethics.severity,
            decision: v.decision,
            valid: v.verification.valid,
            clarity: v.convergence.clarity,
            value: v.value.value,
            latency_ms: v.latency_ms,
        }
    }
}

/// What windows are grouped by: (domain, tier, severity).
pub type Key = (Text, Tier, Severity);

/// Upper bound of latency bucket 0 (ms).
pub const LATENCY_MIN_MS: f64 = 0.01;
/// Ratio of consecutive bucket bounds: each bucket is 5 % wide.
pub const LATENCY_BASE: f64 = 1.05;
/// Number of latency buckets: the last upper bound, 0.01 ms · 1.05^331 ≈ 103 s, covers 100 s.
pub const LATENCY_BUCKETS: usize = 332;

/// The upper bounds of the latency buckets (ms): `LATENCY_MIN_MS`, then each `LATENCY_BASE`
/// times the one before, multiplied once at compile time. Every build and platform reports
/// the same bytes: `powi`, used before, was constant-folded in a release build's test and
/// computed at run time in the operator, and the two differed in the last bit.
const BOUNDS: [f64; LATENCY_BUCKETS] = {
    let mut bounds = [0.0; LATENCY_BUCKETS];
    let mut bound = LATENCY_MIN_MS;
    let mut i = 0;
    while i < LATENCY_BUCKETS {
        bounds[i] = bound;
        bound *= LATENCY_BASE;
        i += 1;
    }
    bounds
};

/// The bucket of a latency: the first whose upper bound is not below it. 0 holds `[0, 0.01]`
/// ms, bucket `i ≥ 1` holds `(0.01·1.05^(i−1), 0.01·1.05^i]` ms; the last bucket also holds
/// anything longer (and bucket 0 anything negative or NaN).
pub fn latency_bucket(latency_ms: f64) -> usize {
    if latency_ms.is_nan() || latency_ms <= LATENCY_MIN_MS {
        return 0;
    }
    BOUNDS
        .partition_point(|b| *b < latency_ms)
        .min(LATENCY_BUCKETS - 1)
}

/// The upper bound of bucket `i` (ms): what a percentile falling in that bucket reports, so
/// a reported latency over-states the true one by less than 5 % and never under-states it
/// (except beyond the last bucket).
pub fn bucket_upper_ms(i: usize) -> f64 {
    BOUNDS[i.min(LATENCY_BUCKETS - 1)]
}

/// Fixed-point scale of the clarity and value sums: integers add and cancel exactly, so a
/// retracted window leaves exact zeros behind and its state can be dropped.
const FIXED: f64 = 1e9;

fn fixed(x: f64) -> i64 {
    (x * FIXED).round() as i64
}

/// The aggregate of a set of samples, and differential's difference type: an abelian group
/// under `plus_equals`, so a sample enters as `+agg` and leaves as `−agg`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Agg {
    count: i64,
    /// Counts of permit, review and deny, indexed by `Decision as usize`.
    decisions: [i64; 3],
    /// Samples whose verification failed.
    invalid: i64,
    /// Σ clarity, fixed point (× 1e9).
    clarity_e9: i64,
    /// Σ value, fixed point (× 1e9).
    value_e9: i64,
    /// Latency sketch: count per [`latency_bucket`], always `LATENCY_BUCKETS` long.
    latency: Vec<i64>,
}

impl Agg {
    /// The aggregate of one sample.
    pub fn of(s: &Sample) -> Agg {
        let mut a = Agg::zero();
        a.add(s);
        a
    }

    /// Adds one sample in place.
    pub fn add(&mut self, s: &Sample) {
        self.count += 1;
        self.decisions[s.decision as usize] += 1;
        self.invalid += i64::from(!s.valid);
        self.clarity_e9 += fixed(s.clarity);
        self.value_e9 += fixed(s.value);
        self.latency[latency_bucket(s.latency_ms)] += 1;
    }

    pub fn count(&self) -> i64 {
        self.count
    }

    /// The `p`-th percentile (`p` in 1..=100) by nearest rank, as the upper bound of its
    /// bucket; 0 for an empty aggregate.
    pub fn percentile_ms(&self, p: u64) -> f64 {
        let rank = (p * self.count.max(0) as u64).div_ceil(100).max(1);
        let mut seen = 0u64;
        for (i, &n) in self.latency.iter().enumerate() {
            seen += n.max(0) as u64;
            if seen >= rank {
                return bucket_upper_ms(i);
            }
        }
        0.0
    }
}

impl IsZero for Agg {
    fn is_zero(&self) -> bool {
        self.count == 0
            && self.decisions == [0; 3]
            && self.invalid == 0
            && self.clarity_e9 == 0
            && self.value_e9 == 0
            && self.latency.iter().all(|&n| n == 0)
    }
}

impl Semigroup for Agg {
    fn plus_equals(&mut self, rhs: &Self) {
        self.count += rhs.count;
        for (a, b) in self.decisions.iter_mut().zip(rhs.decisions) {
            *a += b;
        }
        self.invalid += rhs.invalid;
        self.clarity_e9 += rhs.clarity_e9;
        self.value_e9 += rhs.value_e9;
        for (a, b) in self.latency.iter_mut().zip(&rhs.latency) {
            *a += b;
        }
    }
}

impl Monoid for Agg {
    fn zero() -> Self {
        Agg {
            count: 0,
            decisions: [0; 3],
            invalid: 0,
            clarity_e9: 0,
            value_e9: 0,
            latency: vec![0; LATENCY_BUCKETS],
        }
    }
}

impl Abelian for Agg {
    fn negate(&mut self) {
        self.count = -self.count;
        for n in &mut self.decisions {
            *n = -*n;
        }
        self.invalid = -self.invalid;
        self.clarity_e9 = -self.clarity_e9;
        self.value_e9 = -self.value_e9;
        for n in &mut self.latency {
            *n = -*n;
        }
    }
}

/// Latency percentiles of a window (ms), each the upper bound of its bucket.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

/// One window of one (domain, tier, severity): the `bizra.stats` wire record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WindowStats {
    /// Inclusive start (ms of event time); negative for the first windows of the epoch.
    pub window_start_ms: i64,
    /// Exclusive end (ms of event time), a multiple of `slide_ms`.
    pub window_end_ms: i64,
    pub domain: String,
    pub tier: Tier,
    pub severity: Severity,
    pub count: u64,
    pub permit: u64,
    pub review: u64,
    pub deny: u64,
    /// Verdicts whose verification failed.
    pub invalid: u64,
    pub mean_clarity: f64,
    pub mean_value: f64,
    pub latency_ms: Percentiles,
}

impl WindowStats {
    /// The record of window `[end − window_ms, end)` for `key`, whose samples add up to `agg`.
    pub fn new(end_ms: u64, window_ms: u64, key: &Key, agg: &Agg) -> WindowStats {
        let n = |x: i64| x.max(0) as u64;
        let mean = |sum: i64| sum as f64 / FIXED / agg.count as f64;
        WindowStats {
            window_start_ms: end_ms as i64 - window_ms as i64,
            window_end_ms: end_ms as i64,
            domain: key.0.to_string(),
            tier: key.1,
            severity: key.2,
            count: n(agg.count),
            permit: n(agg.decisions[Decision::Permit as usize]),
            review: n(agg.decisions[Decision::Review as usize]),
            deny: n(agg.decisions[Decision::Deny as usize]),
            invalid: n(agg.invalid),
            mean_clarity: mean(agg.clarity_e9),
            mean_value: mean(agg.value_e9),
            latency_ms: Percentiles {
                p50: agg.percentile_ms(50),
                p95: agg.percentile_ms(95),
                p99: agg.percentile_ms(99),
            },
        }
    }
}

/// The window-statistics dataflow of one worker, driven by the worker loop.
pub struct Windows {
    /// `None` once finished. Its time is one past the end of the last closed window.
    input: Option<InputSession<u64, Key, Agg>>,
    window_ms: u64,
    slide_ms: u64,
    probe: ProbeHandle<u64>,
    /// Records emitted on this worker and not yet taken.
    out: Rc<RefCell<Vec<WindowStats>>>,
    /// Keys held by the `emit` operator, for [`Windows::state_size`].
    keys: Rc<Cell<usize>>,
    late: u64,
    /// Samples pushed since the last `advance`, added up per (key, entry time): the dataflow
    /// gets one update per key and slide instead of one per sample. Bounded by the keys
    /// times the slides a watermark step spans.
    pending: HashMap<(Key, u64), Agg>,
}

/// Builds the window-statistics dataflow on `worker`. Every worker of the cluster must
/// build it (in the same order as its other dataflows), even one that pushes nothing, and
/// keep advancing or finish it: a window closes when the smallest watermark of all workers
/// passes its end.
///
/// Panics if `cfg` is invalid: check it with [`StatsConfig::validate`] when loading it.
pub fn windows(worker: &mut Worker, cfg: &StatsConfig) -> Windows {
    if let Err(e) = cfg.validate() {
        panic!("invalid stats config: {e}");
    }
    let out = Rc::new(RefCell::new(Vec::new()));
    let keys = Rc::new(Cell::new(0));
    let probe = ProbeHandle::new();
    let input = worker.dataflow::<u64, _, _>(|scope| {
        let (input, samples) = scope.new_collection::<Key, Agg>();
        let sink = out.clone();
        emit(samples.count_total(), cfg, keys.clone())
            .inspect(move |s: &WindowStats| sink.borrow_mut().push(s.clone()))
            .probe_with(&probe);
        input
    });
    Windows {
        input: Some(input),
        window_ms: cfg.window_ms,
        slide_ms: cfg.slide_ms,
        probe,
        out,
        keys,
        late: 0,
        pending: HashMap::new(),
    }
}

impl Windows {
    /// Adds a sample to every window it falls in, or counts it as late if the first of them
    /// is already closed (or the input finished).
    pub fn push(&mut self, mut s: Sample) {
        let entry = (s.event_ms / self.slide_ms + 1) * self.slide_ms;
        if self.input.as_ref().is_none_or(|i| *i.time() > entry) {
            self.late += 1;
            return;
        }
        // The label moves into the key (the aggregate does not read it).
        let key = (std::mem::take(&mut s.domain), s.tier, s.severity);
        self.pending.entry((key, entry)).or_insert_with(Agg::zero).add(&s);
    }

    /// Sends the pending aggregates: each enters at its entry time and is retracted when the
    /// windows slide past it.
    fn send_pending(&mut self) {
        let Some(input) = self.input.as_mut() else {
            return;
        };
        for ((key, entry), agg) in self.pending.drain() {
            let mut retraction = agg.clone();
            retraction.negate();
            input.update_at(key.clone(), entry, agg);
            input.update_at(key, entry + self.window_ms, retraction);
        }
    }

    /// Closes every window ending at or below `watermark_ms` (never reopens one) and sends
    /// the pushed samples on. The input time becomes one past the last closed window end, so
    /// that the window is reported now rather than one slide later.
    pub fn advance(&mut self, watermark_ms: u64) {
        self.send_pending();
        if let Some(input) = self.input.as_mut() {
            let time = (watermark_ms - watermark_ms % self.slide_ms).saturating_add(1);
            if *input.time() < time {
                input.advance_to(time);
            }
            input.flush();
        }
    }

    /// Ends the input: every remaining window is reported once the worker has stepped until
    /// [`Windows::done`].
    pub fn finish(&mut self) {
        self.send_pending();
        self.input = None;
    }

    /// The records emitted on this worker since the last call.
    pub fn take(&mut self) -> Vec<WindowStats> {
        std::mem::take(&mut *self.out.borrow_mut())
    }

    /// Samples dropped because they arrived after their first window closed.
    pub fn late(&self) -> u64 {
        self.late
    }

    /// Whether every window closed by this worker's last [`Windows::advance`] has been
    /// reported, on every worker (so it also waits for the other workers' watermarks).
    pub fn caught_up(&self) -> bool {
        match &self.input {
            Some(input) => !self.probe.less_than(input.time()),
            None => self.probe.done(),
        }
    }

    /// Whether the input is finished and every window has been reported.
    pub fn done(&self) -> bool {
        self.probe.done()
    }

    /// Keys with a nonzero total held by this worker's `emit` operator.
    pub fn state_size(&self) -> usize {
        self.keys.get()
    }

    /// Pre-aggregated (key, slide) totals not yet handed to differential.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }
}

type Changes = Vec<(Key, Agg, isize)>;

/// Keeps the current total of each key from `totals` (the changes of each key's accumulated
/// `Agg`) and, each time the frontier passes a window end, reports every key with a nonzero
/// count in that window.
fn emit<'s>(
    totals: VecCollection<'s, u64, (Key, Agg), isize>,
    cfg: &StatsConfig,
    keys: Rc<Cell<usize>>,
) -> StreamVec<'s, u64, WindowStats> {
    let (window_ms, slide_ms) = (cfg.window_ms, cfg.slide_ms);
    totals
        .inner
        .unary_frontier::<CapacityContainerBuilder<Vec<WindowStats>>, _, _, _>(
            Pipeline,
            "window-stats",
            move |initial, _info| {
                drop(initial);
                let mut current: BTreeMap<Key, Agg> = BTreeMap::new();
                // Changes not yet applied, by time, with a capability at that time.
                let mut pending: BTreeMap<u64, (Capability<u64>, Changes)> = BTreeMap::new();
                // A capability at or before `next_end`, held while some key has a total.
                let mut held: Option<Capability<u64>> = None;
                let mut next_end = slide_ms;

                move |(input, frontier), output| {
                    input.for_each(|cap, data| {
                        for ((key, agg), t, r) in data.drain(..) {
                            let entry = pending
                                .entry(t)
                                .or_insert_with(|| (cap.delayed(&t, 0), Vec::new()));
                            entry.1.push((key, agg, r));
                        }
                    });
                    loop {
                        if current.is_empty() {
                            // Nothing to report before the next change.
                            held = None;
                            match pending.keys().next() {
                                Some(&t) => next_end = next_end.max(t),
                                None => break,
                            }
                        }
                        if frontier.frontier().less_equal(&next_end) {
                            break; // window `next_end` may still change
                        }
                        while let Some(entry) = pending.first_entry().filter(|e| *e.key() <= next_end) {
                            let (cap, changes) = entry.remove();
                            apply(&mut current, changes);
                            held = Some(cap);
                        }
                        if let (Some(cap), false) = (held.as_mut(), current.is_empty()) {
                            cap.downgrade(&next_end);
                            let mut session = output.session(cap);
                            for (key, agg) in current.iter().filter(|(_, a)| a.count > 0) {
                                session.give(WindowStats::new(next_end, window_ms, key, agg));
                            }
                        }
                        next_end += slide_ms;
                        if let Some(cap) = held.as_mut() {
                            cap.downgrade(&next_end); // lets the probe see the window complete
                        }
                    }
                    keys.set(current.len());
                }
            },
        )
}

/// Adds changes to the current totals, dropping keys whose total becomes zero.
fn apply(current: &mut BTreeMap<Key, Agg>, changes: Changes) {
    for (key, mut agg, r) in changes {
        if r < 0 {
            agg.negate();
        }
        let total = current.entry(key.clone()).or_insert_with(Agg::zero);
        for _ in 0..r.unsigned_abs() {
            total.plus_equals(&agg);
        }
        if total.is_zero() {
            current.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    fn config(window_ms: u64, slide_ms: u64, lateness_ms: u64) -> StatsConfig {
        StatsConfig {
            window_ms,
            slide_ms,
            lateness_ms,
            ..StatsConfig::default()
        }
    }

    fn sample(event_ms: u64, domain: &str, latency_ms: f64) -> Sample {
        Sample {
            event_ms,
            domain: domain.into(),
            tier: Tier::Incremental,
            severity: Severity::Acceptable,
            decision: Decision::Permit,
            valid: true,
            clarity: 0.5,
            value: 0.5,
            latency_ms,
        }
    }

    /// `n` samples one `step_ms` apart, each moved back by up to `lateness_ms`: out of order,
    /// but never behind the watermark of the samples before it.
    fn samples(n: usize, seed: u64, step_ms: u64, cfg: &StatsConfig) -> Vec<Sample> {
        let mut rng = StdRng::seed_from_u64(seed);
        let domains = [
            None,
            Some("finance"),
            Some("healthcare"),
            Some("mars"),
            Some("retail"),
        ];
        (0..n as u64)
            .map(|k| Sample {
                event_ms: (k * step_ms).saturating_sub(rng.gen_range(0..=cfg.lateness_ms)),
                domain: cfg.label(domains[rng.gen_range(0..domains.len())]),
                tier: Tier::ALL[rng.gen_range(0..3)],
                severity: Severity::ALL[rng.gen_range(0..5)],
                decision: Decision::ALL[rng.gen_range(0..3)],
                valid: rng.gen_bool(0.9),
                clarity: rng.gen(),
                value: rng.gen(),
                // Log-uniform over 1 µs .. 1000 s: both ends fall outside the sketch's range.
                latency_ms: 10f64.powf(rng.gen_range(-3.0..6.0)),
            })
            .collect()
    }

    fn sort(records: &mut [WindowStats]) {
        records.sort_by(|a, b| {
            (a.window_end_ms, &a.domain, a.tier, a.severity).cmp(&(
                b.window_end_ms,
                &b.domain,
                b.tier,
                b.severity,
            ))
        });
    }

    /// Pushes `samples` round-robin over `workers` workers, advancing each worker's watermark
    /// as it goes; returns every worker's records, sorted, and the late count.
    fn run(samples: Vec<Sample>, cfg: StatsConfig, workers: usize) -> (Vec<WindowStats>, u64) {
        let samples = Arc::new(samples);
        let guards = timely::execute(timely::Config::process(workers), move |worker| {
            let mut w = windows(worker, &cfg);
            let (index, peers) = (worker.index(), worker.peers());
            let mut max_ms = 0;
            for (k, s) in samples.iter().enumerate().filter(|(k, _)| k % peers == index) {
                max_ms = s.event_ms.max(max_ms);
                w.push(s.clone());
                if k % 50 == 0 {
                    w.advance(cfg.watermark(max_ms));
                    worker.step();
                }
            }
            w.finish();
            while !w.done() {
                worker.step();
            }
            (w.take(), w.late())
        })
        .expect("timely starts");
        let mut records = Vec::new();
        let mut late = 0;
        for result in guards.join() {
            let (r, l) = result.expect("worker finishes");
            records.extend(r);
            late += l;
        }
        sort(&mut records);
        (records, late)
    }

    /// Windows computed the obvious way: for every window end, filter, group and add up.
    fn reference(samples: &[Sample], cfg: &StatsConfig) -> Vec<WindowStats> {
        let (window, slide) = (cfg.window_ms, cfg.slide_ms);
        let last = samples.iter().map(|s| s.event_ms).max().unwrap_or(0);
        let mut records = Vec::new();
        for end in (slide..=last + window).step_by(slide as usize) {
            let mut groups: BTreeMap<Key, Vec<&Sample>> = BTreeMap::new();
            for s in samples
                .iter()
                .filter(|s| s.event_ms + window >= end && s.event_ms < end)
            {
                groups
                    .entry((s.domain.clone(), s.tier, s.severity))
                    .or_default()
                    .push(s);
            }
            for ((domain, tier, severity), group) in groups {
                let n = group.len();
                let decided = |d: Decision| group.iter().filter(|s| s.decision == d).count() as u64;
                let mean = |f: fn(&Sample) -> f64| {
                    group.iter().map(|s| (f(s) * 1e9).round() as i64).sum::<i64>() as f64 / 1e9 / n as f64
                };
                let mut buckets: Vec<usize> = group.iter().map(|s| latency_bucket(s.latency_ms)).collect();
                buckets.sort_unstable();
                let percentile = |p: usize| bucket_upper_ms(buckets[(p * n).div_ceil(100).max(1) - 1]);
                records.push(WindowStats {
                    window_start_ms: end as i64 - window as i64,
                    window_end_ms: end as i64,
                    domain: domain.to_string(),
                    tier,
                    severity,
                    count: n as u64,
                    permit: decided(Decision::Permit),
                    review: decided(Decision::Review),
                    deny: decided(Decision::Deny),
                    invalid: group.iter().filter(|s| !s.valid).count() as u64,
                    mean_clarity: mean(|s| s.clarity),
                    mean_value: mean(|s| s.value),
                    latency_ms: Percentiles {
                        p50: percentile(50),
                        p95: percentile(95),
                        p99: percentile(99),
                    },
                });
            }
        }
        sort(&mut records);
        records
    }

    fn assert_same(got: &[WindowStats], want: &[WindowStats]) {
        for (g, w) in got.iter().zip(want) {
            assert_eq!(g, w);
        }
        assert_eq!(got.len(), want.len());
    }

    #[test]
    fn stats_match_the_reference_on_one_and_three_workers() {
        let cfg = config(6_000, 1_000, 700);
        let input = samples(4_000, 7, 9, &cfg); // ~36 s of event time, 36+6 windows
        let want = reference(&input, &cfg);
        let per_window = cfg.window_ms / cfg.slide_ms;
        assert_eq!(
            want.iter().map(|r| r.count).sum::<u64>(),
            input.len() as u64 * per_window
        );
        assert!(
            want.len() > 1_000,
            "{} records: the reference should have many",
            want.len()
        );
        for workers in [1, 3] {
            let (got, late) = run(input.clone(), cfg.clone(), workers);
            assert_eq!(late, 0, "{workers} workers");
            assert_same(&got, &want);
        }
    }

    #[test]
    fn late_sample_is_counted_and_left_out_of_every_window() {
        let cfg = config(3_000, 1_000, 0);
        timely::execute_directly(move |worker| {
            let mut w = windows(worker, &cfg);
            w.push(sample(5_500, "finance", 1.0));
            w.advance(5_500); // closes the windows ending at or below 5 000
            while !w.caught_up() {
                worker.step();
            }
            w.push(sample(4_999, "finance", 1.0)); // first window ends at 5 000: late
            w.push(sample(5_000, "finance", 1.0)); // first window ends at 6 000: on time
            w.finish();
            while !w.done() {
                worker.step();
            }
            assert_eq!(w.late(), 1);
            let got: Vec<(i64, u64)> = w.take().iter().map(|s| (s.window_end_ms, s.count)).collect();
            assert_eq!(got, [(6_000, 2), (7_000, 2), (8_000, 2)]);
        });
    }

    #[test]
    fn windows_are_reported_once_the_watermark_passes_their_end() {
        let cfg = config(3_000, 1_000, 0);
        timely::execute_directly(move |worker| {
            let mut w = windows(worker, &cfg);
            w.push(sample(1_500, "finance", 1.0));
            w.advance(3_999);
            while !w.caught_up() {
                worker.step();
            }
            let ends: Vec<i64> = w.take().iter().map(|s| s.window_end_ms).collect();
            assert_eq!(ends, [2_000, 3_000]);
            w.advance(4_000);
            while !w.caught_up() {
                worker.step();
            }
            let ends: Vec<i64> = w.take().iter().map(|s| s.window_end_ms).collect();
            assert_eq!(ends, [4_000]);
            assert_eq!(w.state_size(), 1);
            w.advance(5_000);
            while !w.caught_up() {
                worker.step();
            }
            assert!(w.take().is_empty());
            assert_eq!(
                w.state_size(),
                0,
                "the key is dropped once its last window is reported"
            );
        });
    }

    #[test]
    fn state_stays_bounded_by_the_keys_over_a_long_stream() {
        let cfg = StatsConfig::default();
        let n = 200_000;
        let input = samples(n, 11, 5, &cfg); // 1 000 s of event time: ~100 slides
        let keys = input
            .iter()
            .map(|s| (&s.domain, s.tier, s.severity))
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        timely::execute_directly(move |worker| {
            let mut w = windows(worker, &cfg);
            let (mut max_ms, mut largest, mut counted, mut records) = (0, 0, 0, 0);
            for (k, s) in input.into_iter().enumerate() {
                max_ms = s.event_ms.max(max_ms);
                w.push(s);
                if k % 1_000 == 0 {
                    w.advance(cfg.watermark(max_ms));
                    while !w.caught_up() {
                        worker.step();
                    }
                    largest = largest.max(w.state_size());
                    let out = w.take();
                    records += out.len();
                    counted += out.iter().map(|r| r.count).sum::<u64>();
                }
            }
            w.finish();
            while !w.done() {
                worker.step();
            }
            counted += w.take().iter().map(|r| r.count).sum::<u64>();
            assert!(largest <= keys, "{largest} keys held, only {keys} exist");
            assert!(
                records > 50 * keys,
                "{records} records: windows were reported as the stream went"
            );
            assert_eq!(w.state_size(), 0);
            assert_eq!(w.late(), 0);
            assert_eq!(counted, n as u64 * (cfg.window_ms / cfg.slide_ms));
        });
    }

    #[test]
    fn sample_takes_its_fields_and_a_bounded_domain_from_the_verdict() {
        use crate::policy::Policy;
        use crate::testing::{checked, verification};
        use crate::verification::BatchRef;

        let policy = Policy::reference();
        let batch = BatchRef {
            shard: 0,
            seq: 0,
            leaf_index: 0,
        };
        let json = br#"{"id":"a","data":"hello"}"#;
        let replay = verification(Tier::Full, false, 0.0, true);
        let checked = checked(json, None, 123_456, &policy, replay, batch);
        let mut v = *crate::verdict::assess(checked, &policy, &policy.version()).verdict;
        v.latency_ms = 12.5;
        let cfg = StatsConfig::default();
        let s = Sample::from_verdict(&v, &cfg);
        assert_eq!(
            s,
            Sample {
                event_ms: 123_456,
                domain: "cognitive_processing".into(),
                tier: Tier::Full,
                severity: v.ethics.severity,
                decision: v.decision,
                valid: false,
                clarity: v.convergence.clarity,
                value: v.value.value,
                latency_ms: 12.5,
            }
        );
        v.domain = Some("finance".into());
        assert_eq!(Sample::from_verdict(&v, &cfg).domain, "finance");
        v.domain = Some("a-new-domain-every-request".into());
        assert_eq!(Sample::from_verdict(&v, &cfg).domain, "other");
        v.event_ms = -5;
        assert_eq!(Sample::from_verdict(&v, &cfg).event_ms, 0);
    }

    #[test]
    fn config_rejects_windows_that_do_not_tile() {
        assert_eq!(StatsConfig::default().validate(), Ok(()));
        let e = config(60_000, 7_000, 0).validate().unwrap_err();
        assert!(
            e.contains("window_ms") && e.contains("7000") && e.contains("60000"),
            "{e}"
        );
        assert!(config(0, 1_000, 0).validate().unwrap_err().contains("window_ms"));
        assert!(config(1_000, 0, 0).validate().unwrap_err().contains("slide_ms"));
        let parsed: StatsConfig = toml::from_str("slide_ms = 5000").unwrap();
        assert_eq!((parsed.window_ms, parsed.slide_ms), (60_000, 5_000));
        let e = toml::from_str::<StatsConfig>("window = 5")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field"), "{e}");
    }

    #[test]
    fn window_stats_wire_record_has_the_spec_fields() {
        let s = sample(1_500, "finance", 3.0);
        let record = WindowStats::new(
            2_000,
            3_000,
            &(s.domain.clone(), s.tier, s.severity),
            &Agg::of(&s),
        );
        let json = serde_json::to_value(&record).unwrap();
        let keys: Vec<&str> = json.as_object().unwrap().keys().map(String::as_str).collect();
        let mut want = [
            "window_start_ms",
            "window_end_ms",
            "domain",
            "tier",
            "severity",
            "count",
            "permit",
            "review",
            "deny",
            "invalid",
            "mean_clarity",
            "mean_value",
            "latency_ms",
        ];
        want.sort_unstable();
        let mut keys = keys;
        keys.sort_unstable();
        assert_eq!(keys, want);
        assert_eq!(json["tier"], "incremental");
        assert_eq!(json["severity"], "acceptable");
        assert_eq!(json["window_start_ms"], -1_000);
        assert_eq!(json["latency_ms"]["p99"], json["latency_ms"]["p50"]);
        let back: WindowStats = serde_json::from_value(json).unwrap();
        assert_eq!(back, record);
    }

    #[test]
    fn percentiles_report_the_upper_bound_of_the_nearest_rank_bucket() {
        assert_eq!(latency_bucket(0.0), 0);
        assert_eq!(latency_bucket(f64::NAN), 0);
        assert_eq!(latency_bucket(1e9), LATENCY_BUCKETS - 1);
        assert!(bucket_upper_ms(LATENCY_BUCKETS - 1) >= 100_000.0);
        // A latency exactly at a bound is in that bound's bucket; just above it, the next.
        for i in [1, 17, 200, LATENCY_BUCKETS - 2] {
            assert_eq!(latency_bucket(bucket_upper_ms(i)), i);
            assert_eq!(latency_bucket(bucket_upper_ms(i) * (1.0 + 1e-15)), i + 1);
        }
        for ms in [0.02, 0.5, 3.0, 250.0, 99_999.0] {
            let upper = bucket_upper_ms(latency_bucket(ms));
            assert!(
                upper >= ms && upper < ms * LATENCY_BASE * 1.000_001,
                "{ms} → {upper}"
            );
        }
        let mut agg = Agg::zero();
        for ms in 1..=100 {
            agg.plus_equals(&Agg::of(&sample(0, "finance", f64::from(ms))));
        }
        assert_eq!(agg.percentile_ms(50), bucket_upper_ms(latency_bucket(50.0)));
        assert_eq!(agg.percentile_ms(95), bucket_upper_ms(latency_bucket(95.0)));
        assert_eq!(agg.percentile_ms(99), bucket_upper_ms(latency_bucket(99.0)));
    }

    fn arb_agg() -> impl Strategy<Value = Agg> {
        let one = (
            0u64..1_000_000,
            0usize..3,
            any::<bool>(),
            0.0..1.0f64,
            -10.0..10.0f64,
            0.0..2e5f64,
        );
        prop::collection::vec(one, 0..20).prop_map(|parts| {
            let mut agg = Agg::zero();
            for (ts, d, valid, clarity, value, latency_ms) in parts {
                let s = Sample {
                    decision: Decision::ALL[d],
                    valid,
                    clarity,
                    value,
                    latency_ms,
                    ..sample(ts, "finance", 0.0)
                };
                agg.plus_equals(&Agg::of(&s));
            }
            agg
        })
    }

    proptest! {
        #[test]
        fn agg_is_an_abelian_group(a in arb_agg(), b in arb_agg()) {
            let mut sum = a.clone();
            sum.plus_equals(&b);
            let mut other_way = b.clone();
            other_way.plus_equals(&a);
            prop_assert_eq!(&sum, &other_way);
            let mut minus_b = b.clone();
            minus_b.negate();
            sum.plus_equals(&minus_b);
            prop_assert_eq!(&sum, &a);
            let mut zero = a.clone();
            let mut minus_a = a.clone();
            minus_a.negate();
            zero.plus_equals(&minus_a);
            prop_assert!(zero.is_zero());
            prop_assert_eq!(zero, Agg::zero());
            prop_assert_eq!(a.is_zero(), a.count() == 0);
        }
    }
}
