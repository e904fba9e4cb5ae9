//! The circuit breaker around the producers of one process. States and defaults follow the
//! reference (5 failures / 3 successes / 30 s open / 3 half-open calls; failure rate 0.5
//! over at least 10 of the last 100 calls), with its defects fixed: a success in the closed
//! state resets the consecutive-failure count, closing clears the call history, and every
//! counter is an atomic so metrics can read them without a lock. Time is passed in, never
//! read here.
//!
//! What counts as a failure is what an outage looks like with a producer that never gives
//! up on a record (`message.timeout.ms = 0`): definite errors are rare, so the sink also
//! reports a broker connection that fails, and [`Breaker::trip`]s it open at once when all
//! brokers are down or when records have waited `ack_timeout_ms` without any
//! acknowledgement (queued in a full producer queue, or sent and not answered, as when the
//! broker is paused).

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
    /// Records waiting this long with no acknowledgement at all open the breaker.
    pub ack_timeout_ms: u64,
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
            ack_timeout_ms: 10_000,
        }
    }
}

/// Breaker state. Exported by [`State::code`] in `bizra_kafka_circuit_breaker_state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Closed,
    HalfOpen,
    Open,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }

    /// The exported value: 0 closed, 1 half-open, 2 open (the order of severity, which the
    /// health rule and the alert read).
    pub fn code(self) -> i64 {
        match self {
            State::Closed => 0,
            State::HalfOpen => 1,
            State::Open => 2,
        }
    }

    fn from_code(c: u8) -> State {
        match c {
            2 => State::Open,
            1 => State::HalfOpen,
            _ => State::Closed,
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
    /// Since when no failure was recorded, counted from the move to half-open at the
    /// earliest (for [`Breaker::idle`]).
    quiet_since_ms: AtomicU64,
    /// Outcomes of the last `window` calls (true = failure), oldest first.
    recent: Mutex<std::collections::VecDeque<bool>>,
}

impl Breaker {
    pub fn new(cfg: BreakerConfig) -> Breaker {
        Breaker {
            recent: Mutex::new(std::collections::VecDeque::with_capacity(cfg.window)),
            cfg,
            state: AtomicU8::new(State::Closed.code() as u8),
            consecutive_failures: AtomicU64::new(0),
            half_open_successes: AtomicU64::new(0),
            half_open_calls: AtomicU64::new(0),
            opened_at_ms: AtomicU64::new(0),
            quiet_since_ms: AtomicU64::new(0),
        }
    }

    pub fn state(&self) -> State {
        State::from_code(self.state.load(Ordering::Acquire))
    }

    fn set(&self, state: State) {
        self.state.store(state.code() as u8, Ordering::Release);
    }

    /// How long records may wait without any acknowledgement before [`Breaker::trip`].
    pub fn ack_timeout_ms(&self) -> u64 {
        self.cfg.ack_timeout_ms
    }

    /// Moves open → half-open once the wait is over; true if it did.
    fn refresh(&self, now_ms: u64) -> bool {
        let waited = now_ms.saturating_sub(self.opened_at_ms.load(Ordering::Acquire));
        if self.state() == State::Open && waited >= self.cfg.open_ms {
            self.half_open_successes.store(0, Ordering::Release);
            self.half_open_calls.store(0, Ordering::Release);
            self.quiet_since_ms.fetch_max(now_ms, Ordering::AcqRel);
            self.set(State::HalfOpen);
            tracing::info!(
                state = "half_open",
                "producer circuit breaker half-open; trying the broker"
            );
            return true;
        }
        false
    }

    /// May a call (one record handed to the producer) go through at `now_ms`? Moves open →
    /// half-open once the wait is over; half-open lets `half_open_max_calls` through.
    pub fn allow(&self, now_ms: u64) -> bool {
        self.refresh(now_ms);
        match self.state() {
            State::Closed => true,
            State::Open => false,
            State::HalfOpen => {
                self.half_open_calls.fetch_add(1, Ordering::AcqRel) < self.cfg.half_open_max_calls
            }
        }
    }

    /// May the sources read at `now_ms`? Not while open (the outputs have nowhere to go);
    /// half-open reads, so that there are records to try the broker with.
    pub fn reading_allowed(&self, now_ms: u64) -> bool {
        self.refresh(now_ms);
        self.state() != State::Open
    }

    /// Opens the breaker now, whatever the counts: the outage is certain (all brokers down,
    /// or nothing acknowledged for `ack_timeout_ms`).
    pub fn trip(&self, now_ms: u64) {
        if self.state() != State::Open {
            self.open(now_ms);
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

    /// Nothing is waiting for the broker at `now_ms`. A half-open breaker has then no call to
    /// judge by, so it closes once `ack_timeout_ms` passed without a failure (librdkafka
    /// reports every failed reconnection): an idle pipeline does not stay half-open forever.
    pub fn idle(&self, now_ms: u64) {
        let quiet = now_ms.saturating_sub(self.quiet_since_ms.load(Ordering::Acquire));
        if self.state() == State::HalfOpen && quiet >= self.cfg.ack_timeout_ms {
            self.close();
        }
    }

    pub fn record_failure(&self, now_ms: u64) {
        self.quiet_since_ms.fetch_max(now_ms, Ordering::AcqRel);
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
        self.set(State::Open);
        tracing::warn!(
            state = "open",
            "producer circuit breaker opened; consumption paused"
        );
    }

    fn close(&self) {
        self.consecutive_failures.store(0, Ordering::Release);
        self.recent.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.set(State::Closed);
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
    fn trip_opens_at_once_and_reading_waits_for_half_open() {
        let b = breaker();
        assert!(b.reading_allowed(0));
        b.trip(1_000);
        assert_eq!(b.state(), State::Open);
        assert!(!b.reading_allowed(30_999));
        assert!(
            b.reading_allowed(31_000),
            "half-open reads, to have records to try"
        );
        assert_eq!(b.state(), State::HalfOpen);
        // Reading does not use up the half-open calls.
        assert!(b.allow(31_000) && b.allow(31_000) && b.allow(31_000));
        assert!(!b.allow(31_000));
        b.record_success();
        b.record_success();
        b.record_success();
        assert_eq!(b.state(), State::Closed);
    }

    #[test]
    fn an_idle_half_open_breaker_closes_after_a_quiet_ack_timeout() {
        let b = breaker();
        b.trip(0);
        b.idle(5_000);
        assert_eq!(b.state(), State::Open, "open stays open");
        assert!(b.reading_allowed(30_000));
        b.idle(35_000);
        assert_eq!(b.state(), State::HalfOpen, "quiet for 5 s only");
        b.record_failure(39_000);
        assert_eq!(b.state(), State::Open, "a failure reopens it");
        assert!(b.reading_allowed(69_000));
        b.idle(78_999);
        assert_eq!(b.state(), State::HalfOpen);
        b.idle(79_000);
        assert_eq!(
            b.state(),
            State::Closed,
            "quiet for ack_timeout_ms since half-open"
        );
    }

    #[test]
    fn exported_codes_order_the_states_by_severity() {
        assert_eq!(
            [State::Closed, State::HalfOpen, State::Open].map(State::code),
            [0, 1, 2]
        );
        for s in [State::Closed, State::HalfOpen, State::Open] {
            assert_eq!(State::from_code(s.code() as u8), s);
        }
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
