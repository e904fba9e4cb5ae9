//! The circuit breaker around the producer. States and defaults follow the reference
//! (5 failures / 3 successes / 30 s open / 3 half-open calls; failure rate 0.5 over at least
//! 10 of the last 100 calls), with its defects fixed: a success in the closed state resets
//! the consecutive-failure count, closing clears the call history, and every counter is an
//! atomic so metrics can read them without a lock. Time is passed in, never read here.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// Breaker settings (config `[kafka.breaker]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker.
    pub failure_threshold: u64,
    /// Consecutive half-open successes that close it.
    pub success_threshold: u64,
    /// How long it stays open before trying again.
    pub open_ms: u64,
    /// Calls let through while half-open.
    pub half_open_max_calls: u64,
    /// Failure rate over the recent calls that opens it ...
    pub failure_rate: f64,
    /// ... once at least this many calls were seen ...
    pub min_calls: usize,
    /// ... among the last this many.
    pub window: usize,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 5,
            success_threshold: 3,
            open_ms: 30_000,
            half_open_max_calls: 3,
            failure_rate: 0.5,
            min_calls: 10,
            window: 100,
        }
    }
}

/// Breaker state, as exported (0 closed, 1 open, 2 half-open).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Closed = 0,
    Open = 1,
    HalfOpen = 2,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }
}

/// A circuit breaker; share it by reference.
pub struct Breaker {
    cfg: BreakerConfig,
    state: AtomicU8,
    consecutive_failures: AtomicU64,
    half_open_successes: AtomicU64,
    half_open_calls: AtomicU64,
    opened_at_ms: AtomicU64,
    /// Outcomes of the last `window` calls (true = failure), oldest first.
    recent: Mutex<std::collections::VecDeque<bool>>,
}

impl Breaker {
    pub fn new(cfg: BreakerConfig) -> Breaker {
        Breaker {
            recent: Mutex::new(std::collections::VecDeque::with_capacity(cfg.window)),
            cfg,
            state: AtomicU8::new(State::Closed as u8),
            consecutive_failures: AtomicU64::new(0),
            half_open_successes: AtomicU64::new(0),
            half_open_calls: AtomicU64::new(0),
            opened_at_ms: AtomicU64::new(0),
        }
    }

    pub fn state(&self) -> State {
        match self.state.load(Ordering::Acquire) {
            1 => State::Open,
            2 => State::HalfOpen,
            _ => State::Closed,
        }
    }

    /// May a call go through at `now_ms`? Moves open → half-open once the wait is over.
    pub fn allow(&self, now_ms: u64) -> bool {
        match self.state() {
            State::Closed => true,
            State::Open => {
                if now_ms.saturating_sub(self.opened_at_ms.load(Ordering::Acquire)) >= self.cfg.open_ms {
                    self.half_open_successes.store(0, Ordering::Release);
                    self.half_open_calls.store(1, Ordering::Release);
                    self.state.store(State::HalfOpen as u8, Ordering::Release);
                    true
                } else {
                    false
                }
            }
            State::HalfOpen => {
                self.half_open_calls.fetch_add(1, Ordering::AcqRel) < self.cfg.half_open_max_calls
            }
        }
    }

    pub fn record_success(&self) {
        match self.state() {
            State::Closed => {
                self.consecutive_failures.store(0, Ordering::Release);
                self.push(false);
            }
            State::HalfOpen => {
                if self.half_open_successes.fetch_add(1, Ordering::AcqRel) + 1 >= self.cfg.success_threshold {
                    self.close();
                }
            }
            State::Open => {}
        }
    }

    pub fn record_failure(&self, now_ms: u64) {
        match self.state() {
            State::Closed => {
                let n = self.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1;
                let rate_trips = self.push(true);
                if n >= self.cfg.failure_threshold || rate_trips {
                    self.open(now_ms);
                }
            }
            State::HalfOpen => self.open(now_ms),
            State::Open => {}
        }
    }

    /// Records an outcome; true when the failure rate calls for opening.
    fn push(&self, failed: bool) -> bool {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if recent.len() == self.cfg.window {
            recent.pop_front();
        }
        recent.push_back(failed);
        let n = recent.len();
        let failures = recent.iter().filter(|f| **f).count();
        n >= self.cfg.min_calls && failures as f64 / n as f64 >= self.cfg.failure_rate
    }

    fn open(&self, now_ms: u64) {
        self.opened_at_ms.store(now_ms, Ordering::Release);
        self.state.store(State::Open as u8, Ordering::Release);
        tracing::warn!(
            state = "open",
            "producer circuit breaker opened; consumption paused"
        );
    }

    fn close(&self) {
        self.consecutive_failures.store(0, Ordering::Release);
        self.recent.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.state.store(State::Closed as u8, Ordering::Release);
        tracing::info!(
            state = "closed",
            "producer circuit breaker closed; consumption resumes"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(BreakerConfig::default())
    }

    #[test]
    fn five_consecutive_failures_open_it() {
        let b = breaker();
        for _ in 0..4 {
            b.record_failure(0);
        }
        assert_eq!(b.state(), State::Closed);
        b.record_failure(0);
        assert_eq!(b.state(), State::Open);
        assert!(!b.allow(29_999));
    }

    #[test]
    fn a_success_resets_the_consecutive_count() {
        let b = breaker();
        for _ in 0..4 {
            b.record_failure(0);
        }
        b.record_success();
        for _ in 0..4 {
            b.record_failure(0);
        }
        // 8 failures in 9 calls, but fewer than min_calls and never 5 in a row.
        assert_eq!(b.state(), State::Closed);
    }

    #[test]
    fn failure_rate_over_the_window_opens_it() {
        let b = breaker();
        // The rate is judged when a failure is recorded: S F S F … ending on the 5th failure.
        for i in 0..10 {
            if i % 2 == 1 {
                b.record_failure(0);
            } else {
                b.record_success();
            }
            if i < 9 {
                assert_eq!(b.state(), State::Closed, "fewer than 10 calls after call {i}");
            }
        }
        assert_eq!(b.state(), State::Open, "5 failures of 10 is a rate of 0.5");
    }

    #[test]
    fn half_open_lets_three_calls_through_and_three_successes_close_it() {
        let b = breaker();
        for _ in 0..5 {
            b.record_failure(0);
        }
        assert!(b.allow(30_000));
        assert_eq!(b.state(), State::HalfOpen);
        assert!(b.allow(30_000));
        assert!(b.allow(30_000));
        assert!(!b.allow(30_000), "only 3 half-open calls");
        b.record_success();
        b.record_success();
        b.record_success();
        assert_eq!(b.state(), State::Closed);
        // Closing cleared the history: 4 failures do not reopen it.
        for _ in 0..4 {
            b.record_failure(40_000);
        }
        assert_eq!(b.state(), State::Closed);
    }

    #[test]
    fn a_half_open_failure_reopens_it() {
        let b = breaker();
        for _ in 0..5 {
            b.record_failure(0);
        }
        assert!(b.allow(30_000));
        b.record_failure(30_001);
        assert_eq!(b.state(), State::Open);
        assert!(!b.allow(59_000));
        assert!(b.allow(60_001));
    }
}
