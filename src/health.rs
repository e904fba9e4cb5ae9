//! The health monitor behind `/healthz` and the `bizra_health_status` gauge: it turns the
//! runtime's periodic [`Sample`]s into a [`Health`] (healthy, degraded, critical, recovering,
//! with readable reasons). Pure logic: time is passed in, and it does no I/O, spawns no thread
//! and holds no global state; the runtime feeds it (~every 100 ms) and the HTTP handler reads it.
//!
//! Rates are computed over a sliding time window from the counter deltas between the oldest
//! and the newest sample kept, so an error stops counting once it slides out of the window,
//! with or without traffic. The kept history is bounded in time and in length.
//!
//! ```
//! use bizra::health::{Circuit, HealthConfig, HealthMonitor, Sample, Status};
//!
//! let mut monitor = HealthMonitor::new(HealthConfig::default());
//! monitor.observe(Sample { now_ms: 0, ..Sample::default() });
//! let health = monitor.observe(Sample { now_ms: 100, circuit: Circuit::Open, ..Sample::default() });
//! assert_eq!(health.status, Status::Critical);
//! assert_eq!(health.http_status(), 503);
//! assert_eq!(health.reasons, ["circuit open"]);
//! ```

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// Most samples kept. Samples are thinned to one per `window_ms / (MAX_SAMPLES / 2)` so the
/// window stays fully covered however often the runtime reports; the cap is the hard bound.
pub const MAX_SAMPLES: usize = 256;

/// Health thresholds (config `[health]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// The sliding window of the rates and of the lag trend: long enough that a few errors
    /// are not a rate, short enough that the status follows the service within a minute.
    pub window_ms: u64,
    /// Error rate (dead letters and delivery failures per record out) above which the
    /// service is degraded ...
    pub error_rate_degraded: f64,
    /// ... and above which it is critical.
    pub error_rate_critical: f64,
    /// Share of verdicts whose verification failed above which the service is degraded
    /// (bad input or a bad keyring rather than a bad service, hence the higher thresholds) ...
    pub verify_failure_rate_degraded: f64,
    /// ... and above which it is critical.
    pub verify_failure_rate_critical: f64,
    /// p99 latency of the last latency window above which the service is degraded ...
    pub latency_degraded_ms: f64,
    /// ... and above which it is critical.
    pub latency_critical_ms: f64,
    /// Total consumer lag, in records, above which the service is critical (a lag that
    /// keeps growing over the whole window is only degraded: it may be a burst).
    pub lag_critical: u64,
    /// How long every condition must stay clear after a problem before the service is
    /// healthy again; in between it is recovering, so a flapping service is visible.
    pub recovery_ms: u64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            window_ms: 60_000,
            error_rate_degraded: 0.005,
            error_rate_critical: 0.01,
            verify_failure_rate_degraded: 0.05,
            verify_failure_rate_critical: 0.20,
            latency_degraded_ms: 500.0,
            latency_critical_ms: 1000.0,
            lag_critical: 1_000_000,
            recovery_ms: 30_000,
        }
    }
}

/// The producer's circuit breaker, as far as health is concerned.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Circuit {
    #[default]
    Closed,
    HalfOpen,
    Open,
}

/// One report from the runtime. Counters are cumulative since start, so a lost report loses
/// nothing; a counter that goes down (a restart) or a clock that goes back starts the
/// history afresh.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Sample {
    /// When the runtime took the sample; non-decreasing from one report to the next.
    pub now_ms: u64,
    /// Verdicts out: records that did not end as errors (not `Summary::observations()`,
    /// which already counts the dead letters).
    pub processed: u64,
    /// Dead letters plus delivery failures.
    pub errors: u64,
    /// Verdicts whose `verification.valid` is false (a subset of `processed`).
    pub verify_failures: u64,
    /// p99 latency of the last latency window; `None` when that window saw no record.
    pub latency_p99_ms: Option<f64>,
    /// Total consumer lag in records; `None` in embedded mode.
    pub lag: Option<u64>,
    /// The producer's circuit breaker.
    pub circuit: Circuit,
}

/// The overall status; `code()` is the value of the Prometheus gauge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Healthy,
    Degraded,
    Critical,
    Recovering,
}

impl Status {
    /// Gauge value: healthy 0, degraded 1, critical 2, recovering 3.
    pub fn code(self) -> u8 {
        match self {
            Status::Healthy => 0,
            Status::Degraded => 1,
            Status::Critical => 2,
            Status::Recovering => 3,
        }
    }
}

/// What `/healthz` serves.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Health {
    pub status: Status,
    /// Every condition that holds now, worst first, e.g. "error rate 1.4% > 1.0% over 60 s".
    pub reasons: Vec<String>,
    /// When `status` last changed (0 = since the monitor was created).
    pub since_ms: u64,
}

impl Health {
    /// 503 when critical (take this instance out of rotation), 200 otherwise.
    pub fn http_status(&self) -> u16 {
        match self.status {
            Status::Critical => 503,
            _ => 200,
        }
    }
}

/// Severity of one condition; the worst one sets the status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    Degraded,
    Critical,
}

/// Turns samples into a [`Health`]; see the module documentation.
#[derive(Clone, Debug)]
pub struct HealthMonitor {
    cfg: HealthConfig,
    /// Oldest first: at most one sample at or before the window's start (the baseline of the
    /// deltas), then the samples inside the window, thinned; the last is the newest report.
    history: VecDeque<Sample>,
    health: Health,
}

impl HealthMonitor {
    /// A monitor that is healthy until told otherwise.
    pub fn new(cfg: HealthConfig) -> HealthMonitor {
        HealthMonitor {
            cfg,
            history: VecDeque::with_capacity(MAX_SAMPLES),
            health: Health {
                status: Status::Healthy,
                reasons: Vec::new(),
                since_ms: 0,
            },
        }
    }

    /// Takes one report and returns the health it leads to.
    pub fn observe(&mut self, s: Sample) -> &Health {
        self.record(s);
        let mut conditions = self.conditions(&s);
        conditions.sort_by_key(|c| std::cmp::Reverse(c.0));
        let worst = conditions.first().map(|c| c.0);
        let status = self.next_status(worst, s.now_ms);
        if status != self.health.status {
            self.health.status = status;
            self.health.since_ms = s.now_ms;
        }
        self.health.reasons = conditions.into_iter().map(|c| c.1).collect();
        &self.health
    }

    /// The health after the last report.
    pub fn current(&self) -> &Health {
        &self.health
    }

    /// Samples kept (bounded by [`MAX_SAMPLES`]).
    pub fn samples(&self) -> usize {
        self.history.len()
    }

    fn record(&mut self, s: Sample) {
        if let Some(last) = self.history.back() {
            let went_back = s.now_ms < last.now_ms
                || s.processed < last.processed
                || s.errors < last.errors
                || s.verify_failures < last.verify_failures;
            if went_back {
                self.history.clear();
            }
        }
        // The newest slot is overwritten until it is `spacing` past its predecessor.
        let spacing = self.cfg.window_ms.div_ceil(MAX_SAMPLES as u64 / 2).max(1);
        let n = self.history.len();
        let sealed = n < 2 || self.history[n - 1].now_ms - self.history[n - 2].now_ms >= spacing;
        if !sealed {
            self.history.pop_back();
        }
        self.history.push_back(s);
        let start = s.now_ms.saturating_sub(self.cfg.window_ms);
        while self.history.len() > MAX_SAMPLES || self.history.get(1).is_some_and(|b| b.now_ms <= start) {
            self.history.pop_front();
        }
    }

    fn conditions(&self, s: &Sample) -> Vec<(Level, String)> {
        let cfg = &self.cfg;
        let (first, last) = (self.history[0], s);
        let over = seconds(last.now_ms - first.now_ms);
        let processed = last.processed - first.processed;
        let errors = last.errors - first.errors;
        let failures = last.verify_failures - first.verify_failures;
        let mut out = Vec::new();

        let error_rate = errors as f64 / (processed + errors).max(1) as f64;
        if let Some((level, limit)) = level(error_rate, cfg.error_rate_degraded, cfg.error_rate_critical) {
            let (rate, limit) = (percent(error_rate), percent(limit));
            out.push((level, format!("error rate {rate} > {limit} over {over}")));
        }
        let failure_rate = failures as f64 / processed.max(1) as f64;
        let (degraded, critical) = (cfg.verify_failure_rate_degraded, cfg.verify_failure_rate_critical);
        if let Some((level, limit)) = level(failure_rate, degraded, critical) {
            let (rate, limit) = (percent(failure_rate), percent(limit));
            out.push((
                level,
                format!("verification failure rate {rate} > {limit} over {over}"),
            ));
        }
        if let Some(p99) = s.latency_p99_ms {
            if let Some((level, limit)) = level(p99, cfg.latency_degraded_ms, cfg.latency_critical_ms) {
                out.push((level, format!("p99 latency {p99:.0} ms > {limit:.0} ms")));
            }
        }
        match s.circuit {
            Circuit::Closed => {}
            Circuit::HalfOpen => out.push((Level::Degraded, "circuit half-open".to_owned())),
            Circuit::Open => out.push((Level::Critical, "circuit open".to_owned())),
        }
        if let Some(lag) = s.lag.filter(|&lag| lag > cfg.lag_critical) {
            let text = format!("consumer lag {lag} records > {}", cfg.lag_critical);
            out.push((Level::Critical, text));
        }
        if let Some((early, late)) = self.lag_growth() {
            let text =
                format!("consumer lag grew over {over}: from at most {early} to at least {late} records");
            out.push((Level::Degraded, text));
        }
        out
    }

    /// The lag bounds `(highest early, lowest late)` when the lag grew over the whole window:
    /// the history covers the window and every lag in its last third is above every lag in
    /// its first third. A monotonic series is not asked for: the lag moves in a saw-tooth as
    /// fetches arrive in batches; a lag that only fluctuates never counts, and one that grows
    /// counts once a third of the window's growth exceeds the saw-tooth. Computed here from
    /// the samples already kept rather than supplied by the caller.
    fn lag_growth(&self) -> Option<(u64, u64)> {
        let (first, last) = (self.history.front()?, self.history.back()?);
        let window = self.cfg.window_ms;
        if last.now_ms - first.now_ms < window {
            return None;
        }
        let (early_end, late_start) = (last.now_ms - window * 2 / 3, last.now_ms - window / 3);
        let (mut early_max, mut late_min) = (0, u64::MAX);
        for s in &self.history {
            let lag = s.lag?;
            if s.now_ms <= early_end {
                early_max = early_max.max(lag);
            } else if s.now_ms >= late_start {
                late_min = late_min.min(lag);
            }
        }
        (late_min > early_max).then_some((early_max, late_min))
    }

    fn next_status(&self, worst: Option<Level>, now_ms: u64) -> Status {
        let current = self.health.status;
        let status = match worst {
            Some(Level::Critical) => Status::Critical,
            Some(Level::Degraded) => Status::Degraded,
            None if current == Status::Healthy => Status::Healthy,
            None => Status::Recovering,
        };
        // Recovering since `since_ms`, or from now when it starts now.
        let since = if current == Status::Recovering {
            self.health.since_ms
        } else {
            now_ms
        };
        if status == Status::Recovering && now_ms.saturating_sub(since) >= self.cfg.recovery_ms {
            Status::Healthy
        } else {
            status
        }
    }
}

/// The condition's level and the threshold it crossed, if any.
fn level(value: f64, degraded: f64, critical: f64) -> Option<(Level, f64)> {
    if value > critical {
        Some((Level::Critical, critical))
    } else if value > degraded {
        Some((Level::Degraded, degraded))
    } else {
        None
    }
}

fn percent(rate: f64) -> String {
    format!("{:.1}%", rate * 100.0)
}

fn seconds(ms: u64) -> String {
    if ms.is_multiple_of(1000) {
        format!("{} s", ms / 1000)
    } else {
        format!("{:.1} s", ms as f64 / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STEP_MS: u64 = 100;

    /// Reports every 100 ms, like the runtime.
    struct Feed {
        monitor: HealthMonitor,
        sample: Sample,
    }

    impl Feed {
        fn new() -> Feed {
            Feed::with(HealthConfig::default())
        }

        fn with(cfg: HealthConfig) -> Feed {
            let mut monitor = HealthMonitor::new(cfg);
            monitor.observe(Sample::default());
            Feed {
                monitor,
                sample: Sample::default(),
            }
        }

        /// One report 100 ms after the last, changed by `f`.
        fn report(&mut self, f: impl Fn(&mut Sample)) -> Health {
            self.sample.now_ms += STEP_MS;
            f(&mut self.sample);
            self.monitor.observe(self.sample).clone()
        }

        /// Reports until `until_ms` inclusive; the health after the last one.
        fn until(&mut self, until_ms: u64, f: impl Fn(&mut Sample)) -> Health {
            while self.sample.now_ms < until_ms {
                self.report(&f);
            }
            self.monitor.current().clone()
        }
    }

    /// 100 records out per report (1000/s), no errors.
    fn clean(s: &mut Sample) {
        s.processed += 100;
    }

    fn idle(_: &mut Sample) {}

    #[test]
    fn healthy_by_default_and_under_clean_traffic() {
        let monitor = HealthMonitor::new(HealthConfig::default());
        let health = monitor.current();
        assert_eq!((health.status, health.since_ms), (Status::Healthy, 0));
        assert!(health.reasons.is_empty());
        assert_eq!((health.http_status(), health.status.code()), (200, 0));

        let mut feed = Feed::new();
        let health = feed.until(180_000, |s| {
            clean(s);
            s.latency_p99_ms = Some(20.0);
            s.lag = Some(50);
        });
        assert_eq!(health.status, Status::Healthy, "{health:?}");
        assert!(health.reasons.is_empty());
    }

    #[test]
    fn error_rate_above_thresholds_degrades_then_turns_critical() {
        let mut feed = Feed::new();
        let health = feed.until(60_000, |s| {
            s.processed += 994;
            s.errors += 6;
        });
        assert_eq!(health.status, Status::Degraded);
        assert_eq!(health.reasons, ["error rate 0.6% > 0.5% over 60 s"]);
        assert_eq!((health.http_status(), health.status.code()), (200, 1));

        let health = feed.until(180_000, |s| {
            s.processed += 986;
            s.errors += 14;
        });
        assert_eq!(health.status, Status::Critical);
        assert_eq!(health.reasons, ["error rate 1.4% > 1.0% over 60 s"]);
        assert_eq!((health.http_status(), health.status.code()), (503, 2));
    }

    #[test]
    fn error_rate_at_the_threshold_is_not_degraded() {
        let mut feed = Feed::new();
        let health = feed.until(120_000, |s| {
            s.processed += 995;
            s.errors += 5;
        });
        assert_eq!(health.status, Status::Healthy, "{health:?}");
    }

    #[test]
    fn verification_failures_and_latency_have_their_own_thresholds_worst_first() {
        let mut feed = Feed::new();
        let health = feed.until(60_000, |s| {
            s.processed += 100;
            s.verify_failures += 10;
            s.latency_p99_ms = Some(1200.0);
        });
        assert_eq!(health.status, Status::Critical);
        let expected = [
            "p99 latency 1200 ms > 1000 ms",
            "verification failure rate 10.0% > 5.0% over 60 s",
        ];
        assert_eq!(health.reasons, expected);

        let health = feed.until(180_000, |s| {
            s.processed += 100;
            s.verify_failures += 25;
            s.latency_p99_ms = Some(600.0);
        });
        let expected = [
            "verification failure rate 25.0% > 20.0% over 60 s",
            "p99 latency 600 ms > 500 ms",
        ];
        assert_eq!(health.status, Status::Critical);
        assert_eq!(health.reasons, expected);
    }

    #[test]
    fn a_single_error_decays_once_the_window_passes_with_traffic() {
        let mut feed = Feed::new();
        // One record a second, so one error among 60 is a critical rate.
        let slow = |s: &mut Sample| s.processed += u64::from(s.now_ms.is_multiple_of(1000));
        feed.until(10_000, slow);
        let health = feed.report(|s| s.errors += 1);
        assert_eq!(health.status, Status::Critical);
        assert!(health.reasons[0].starts_with("error rate "), "{health:?}");

        let health = feed.until(69_000, slow);
        assert_eq!(
            health.status,
            Status::Critical,
            "the error is still in the window"
        );
        let health = feed.until(71_000, slow);
        assert_eq!(health.status, Status::Recovering, "{health:?}");
        assert!(health.reasons.is_empty());
        let health = feed.until(71_000 + 30_000, slow);
        assert_eq!((health.status, health.reasons.len()), (Status::Healthy, 0));
    }

    #[test]
    fn a_single_error_decays_once_the_window_passes_without_traffic() {
        let mut feed = Feed::new();
        feed.until(5_000, idle);
        let health = feed.report(|s| s.errors += 1);
        assert_eq!(health.status, Status::Critical);
        assert_eq!(health.reasons, ["error rate 100.0% > 1.0% over 5.1 s"]);

        let health = feed.until(64_000, idle);
        assert_eq!(
            health.status,
            Status::Critical,
            "the error is still in the window"
        );
        let health = feed.until(66_000, idle);
        assert_eq!(health.status, Status::Recovering, "{health:?}");
        let health = feed.until(66_000 + 30_000, idle);
        assert_eq!(health.status, Status::Healthy);
    }

    #[test]
    fn recovering_lasts_recovery_ms_of_clear_reports_then_healthy() {
        let mut feed = Feed::new();
        feed.until(10_000, |s| s.circuit = Circuit::HalfOpen);
        let health = feed.monitor.current();
        assert_eq!((health.status, health.since_ms), (Status::Degraded, 100));
        assert_eq!(health.reasons, ["circuit half-open"]);

        let health = feed.report(|s| s.circuit = Circuit::Closed);
        assert_eq!((health.status, health.since_ms), (Status::Recovering, 10_100));
        assert_eq!((health.status.code(), health.http_status()), (3, 200));
        let health = feed.until(40_000, idle);
        assert_eq!((health.status, health.since_ms), (Status::Recovering, 10_100));
        let health = feed.report(idle);
        assert_eq!((health.status, health.since_ms), (Status::Healthy, 40_100));
    }

    #[test]
    fn a_condition_while_recovering_sets_the_status_back_and_restarts_recovery() {
        let mut feed = Feed::new();
        feed.until(10_000, |s| s.circuit = Circuit::Open);
        feed.until(30_000, |s| s.circuit = Circuit::Closed);
        assert_eq!(feed.monitor.current().status, Status::Recovering);
        let health = feed.report(|s| s.latency_p99_ms = Some(700.0));
        assert_eq!((health.status, health.since_ms), (Status::Degraded, 30_100));
        let health = feed.report(|s| s.latency_p99_ms = Some(100.0));
        assert_eq!((health.status, health.since_ms), (Status::Recovering, 30_200));
        let health = feed.until(60_100, idle);
        assert_eq!(health.status, Status::Recovering, "recovery starts over");
        let health = feed.until(60_200, idle);
        assert_eq!(health.status, Status::Healthy);
    }

    #[test]
    fn open_circuit_is_critical_and_served_as_503() {
        let mut feed = Feed::new();
        let health = feed.report(|s| s.circuit = Circuit::Open);
        assert_eq!(
            (health.status, health.http_status(), health.status.code()),
            (Status::Critical, 503, 2)
        );
        let json = serde_json::to_string(&health).unwrap();
        assert_eq!(
            json,
            r#"{"status":"critical","reasons":["circuit open"],"since_ms":100}"#
        );
    }

    #[test]
    fn lag_over_the_limit_is_critical() {
        let mut feed = Feed::new();
        let health = feed.report(|s| s.lag = Some(1_000_001));
        assert_eq!(health.status, Status::Critical);
        assert_eq!(health.reasons, ["consumer lag 1000001 records > 1000000"]);
        let health = feed.report(|s| s.lag = Some(1_000_000));
        assert_eq!(health.status, Status::Recovering);
    }

    /// A saw-tooth of amplitude 50 around `base + slope_per_s * t`.
    fn saw_tooth(base: u64, slope_per_s: u64) -> impl Fn(&mut Sample) {
        move |s| {
            let tooth = if s.now_ms % 200 == 0 { 50 } else { 0 };
            s.lag = Some(base + slope_per_s * s.now_ms / 1000 + tooth);
        }
    }

    #[test]
    fn lag_growing_over_the_whole_window_is_degraded() {
        let mut feed = Feed::new();
        let growing = saw_tooth(1000, 10);
        feed.report(&growing);
        let health = feed.until(59_900, &growing);
        assert_eq!(health.status, Status::Healthy, "the window is not covered yet");
        let health = feed.until(61_000, &growing);
        assert_eq!(health.status, Status::Degraded);
        let reason = &health.reasons[0];
        assert!(reason.starts_with("consumer lag grew over 60"), "{reason}");
        assert!(
            reason.contains(" from at most 1") && reason.contains(" to at least 1"),
            "{reason}"
        );
        while feed.sample.now_ms < 180_000 {
            let health = feed.report(&growing);
            assert_eq!(
                health.status,
                Status::Degraded,
                "no flapping on the saw-tooth: {health:?}"
            );
        }

        let health = feed.report(|s| s.lag = Some(0));
        assert_eq!(
            health.status,
            Status::Recovering,
            "a lag back below the start is not growing"
        );
        let health = feed.until(300_000, |s| s.lag = None);
        assert_eq!(
            health.status,
            Status::Healthy,
            "no lag (embedded mode) is no condition"
        );
    }

    #[test]
    fn a_lag_that_only_fluctuates_is_not_growing() {
        let mut feed = Feed::new();
        let flat = saw_tooth(5000, 0);
        feed.report(&flat);
        while feed.sample.now_ms < 300_000 {
            let health = feed.report(&flat);
            assert_eq!(health.status, Status::Healthy, "{health:?}");
        }
    }

    #[test]
    fn history_stays_bounded_and_covers_the_window_under_frequent_reports() {
        let cfg = HealthConfig {
            window_ms: 10_000,
            ..HealthConfig::default()
        };
        let mut monitor = HealthMonitor::new(cfg);
        let mut s = Sample::default();
        for i in 0..100_000u64 {
            // Every millisecond, and bursts of reports with the same timestamp.
            s.now_ms = i - i % 4;
            s.processed += 10;
            monitor.observe(s);
            assert!(monitor.samples() <= MAX_SAMPLES, "{} samples", monitor.samples());
            if s.now_ms >= 10_000 {
                let oldest = monitor.history[0].now_ms;
                assert!(s.now_ms - oldest >= 10_000, "the window is covered");
            }
        }
    }

    #[test]
    fn counters_going_back_restart_the_history() {
        let mut feed = Feed::new();
        feed.until(10_000, |s| s.errors += 1);
        assert_eq!(feed.monitor.current().status, Status::Critical);
        let restarted = Sample {
            now_ms: 10_100,
            ..Sample::default()
        };
        let health = feed.monitor.observe(restarted);
        assert_eq!(health.status, Status::Recovering);
        assert_eq!(feed.monitor.samples(), 1);
    }

    #[test]
    fn config_has_documented_defaults_and_rejects_unknown_keys() {
        let cfg: HealthConfig = toml::from_str("window_ms = 1000").unwrap();
        let expected = HealthConfig {
            window_ms: 1000,
            ..HealthConfig::default()
        };
        assert_eq!(cfg, expected);
        let err = toml::from_str::<HealthConfig>("window = 1000").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }
}
